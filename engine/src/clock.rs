//! The run's epoch clock: one counter for all sources and workers (docs/architecture.md §4).
//!
//! Sources stamp batches with [`EpochClock::current`]. Something that must take effect at the
//! same epoch on every worker (a rule-set switch) calls [`EpochClock::schedule`], which names
//! an epoch no batch has been stamped with yet: the clock cannot advance while it runs, and a
//! batch of that epoch reaches an operator only through channels that order it after the
//! scheduling.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct EpochClock {
    current: AtomicU64,
    advancing: Mutex<()>,
    /// Holds in place (a cluster-wide switch is being agreed): the clock does not advance.
    held: std::sync::atomic::AtomicUsize,
}

impl EpochClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock resuming at `epoch` (after a checkpoint).
    pub fn starting_at(epoch: u64) -> Self {
        EpochClock { current: AtomicU64::new(epoch), advancing: Mutex::new(()), held: Default::default() }
    }

    pub fn current(&self) -> u64 {
        self.current.load(Ordering::SeqCst)
    }

    /// Moves to the next epoch and returns it (stays, while held).
    pub fn advance(&self) -> u64 {
        let _guard = self.advancing.lock().unwrap_or_else(|p| p.into_inner());
        if self.held.load(Ordering::SeqCst) > 0 {
            return self.current.load(Ordering::SeqCst);
        }
        self.current.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Keeps the clock where it is until as many [`EpochClock::release`]s: records go on
    /// flowing at the current epoch; no later epoch begins.
    pub fn hold(&self) {
        let _guard = self.advancing.lock().unwrap_or_else(|p| p.into_inner());
        self.held.fetch_add(1, Ordering::SeqCst);
    }

    pub fn release(&self) {
        let _ = self.held.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| h.checked_sub(1));
    }

    /// Runs `publish` with the first epoch no batch can carry yet (current + 1), holding the
    /// clock still meanwhile. Whatever `publish` stores is visible to every operator that
    /// processes a batch of that epoch or later.
    pub fn schedule<R>(&self, publish: impl FnOnce(u64) -> R) -> R {
        let _guard = self.advancing.lock().unwrap_or_else(|p| p.into_inner());
        publish(self.current.load(Ordering::SeqCst) + 1)
    }
}

/// Versions of something that switches at an epoch on every worker (a rule set): workers pick
/// the newest version whose first epoch is at or before the epoch at hand.
pub struct Versions<T> {
    history: arc_swap::ArcSwap<Vec<(u64, std::sync::Arc<T>)>>,
}

/// How many superseded versions stay reachable for batches of older epochs still in flight.
const HISTORY: usize = 8;

impl<T> Versions<T> {
    pub fn new(first: T) -> Self {
        Versions { history: arc_swap::ArcSwap::from_pointee(vec![(0, std::sync::Arc::new(first))]) }
    }

    pub fn current(&self) -> std::sync::Arc<T> {
        self.history.load().last().map(|(_, s)| s.clone()).expect("a version is always installed")
    }

    /// The current version and the epoch it took effect.
    pub fn current_since(&self) -> (u64, std::sync::Arc<T>) {
        self.history.load().last().cloned().expect("a version is always installed")
    }

    pub fn for_epoch(&self, epoch: u64) -> std::sync::Arc<T> {
        let h = self.history.load();
        h.iter().rev().find(|(first, _)| *first <= epoch).or(h.first()).map(|(_, s)| s.clone()).expect("non-empty")
    }

    /// Every version still reachable with its first epoch, oldest first.
    pub fn history(&self) -> Vec<(u64, std::sync::Arc<T>)> {
        self.history.load().as_ref().clone()
    }

    /// Replaces every version (a restore from a checkpoint, before any batch flows).
    pub fn replace(&self, history: Vec<(u64, std::sync::Arc<T>)>) {
        assert!(!history.is_empty(), "a version is always installed");
        self.history.store(std::sync::Arc::new(history));
    }

    /// Installs `next` from epoch `first` on: the caller makes sure no batch carries `first`
    /// yet (a cluster-wide switch holds every process's clock below it).
    pub fn install_at(&self, first: u64, next: std::sync::Arc<T>) {
        let mut h: Vec<(u64, std::sync::Arc<T>)> = self.history.load().as_ref().clone();
        h.push((first, next));
        if h.len() > HISTORY {
            h.remove(0);
        }
        self.history.store(std::sync::Arc::new(h));
    }

    /// Installs `next` at the first epoch no batch carries yet (epoch 0 without a clock).
    /// Returns that epoch.
    pub fn install(&self, clock: Option<&EpochClock>, next: std::sync::Arc<T>) -> u64 {
        let install = |first: u64| {
            let mut h: Vec<(u64, std::sync::Arc<T>)> = self.history.load().as_ref().clone();
            h.push((first, next.clone()));
            if h.len() > HISTORY {
                h.remove(0);
            }
            self.history.store(std::sync::Arc::new(h));
            first
        };
        match clock {
            Some(c) => c.schedule(install),
            None => install(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_switch_at_their_epoch() {
        let c = EpochClock::new();
        let v = Versions::new("a");
        c.advance();
        assert_eq!(v.install(Some(&c), std::sync::Arc::new("b")), 2);
        assert_eq!(*v.for_epoch(1), "a");
        assert_eq!(*v.for_epoch(2), "b");
        assert_eq!(*v.current(), "b");
    }

    #[test]
    fn schedule_names_the_next_epoch() {
        let c = EpochClock::new();
        assert_eq!(c.current(), 0);
        assert_eq!(c.schedule(|e| e), 1);
        assert_eq!(c.advance(), 1);
        assert_eq!(c.schedule(|e| e), 2);
    }
}
