//! The run's epoch clock: one counter for all sources and workers (DESIGN.md §4).
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
}

impl EpochClock {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn current(&self) -> u64 {
        self.current.load(Ordering::SeqCst)
    }

    /// Moves to the next epoch and returns it.
    pub fn advance(&self) -> u64 {
        let _guard = self.advancing.lock().unwrap_or_else(|p| p.into_inner());
        self.current.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Runs `publish` with the first epoch no batch can carry yet (current + 1), holding the
    /// clock still meanwhile. Whatever `publish` stores is visible to every operator that
    /// processes a batch of that epoch or later.
    pub fn schedule<R>(&self, publish: impl FnOnce(u64) -> R) -> R {
        let _guard = self.advancing.lock().unwrap_or_else(|p| p.into_inner());
        publish(self.current.load(Ordering::SeqCst) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_names_the_next_epoch() {
        let c = EpochClock::new();
        assert_eq!(c.current(), 0);
        assert_eq!(c.schedule(|e| e), 1);
        assert_eq!(c.advance(), 1);
        assert_eq!(c.schedule(|e| e), 2);
    }
}
