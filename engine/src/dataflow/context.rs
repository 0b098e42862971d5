//! What every stage of a run's dataflow shares: the spec, metrics, the epoch clock, the stop
//! flag, one failure channel, and checkpointing (the checkpointer and the checkpoint the run
//! resumed from).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::checkpoint::{Checkpointer, Restored};
use crate::clock::EpochClock;
use crate::component::WorkerContext;
use crate::metrics::Metrics;
use crate::spec::{ComponentSpec, Spec};

pub(crate) struct RunContext {
    pub spec: Spec,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<EpochClock>,
    /// Set by signals or by a failure: sources stop reading, in-flight batches drain.
    stop: Arc<AtomicBool>,
    /// The first failure; the run reports it and exits non-zero.
    failure: Mutex<Option<String>>,
    checkpointer: Option<Checkpointer>,
    restored: Option<Restored>,
    /// Processes in the cluster (1: a single process).
    pub processes: usize,
    /// In a cluster: reloads agreed by every process.
    pub switches: Option<Arc<crate::switch::SwitchBoard>>,
}

impl RunContext {
    pub fn new(
        spec: Spec,
        metrics: Arc<Metrics>,
        stop: Arc<AtomicBool>,
        checkpointer: Option<Checkpointer>,
        restored: Option<Restored>,
    ) -> Self {
        let start_epoch = restored.as_ref().map_or(0, |r| r.manifest.epoch + 1);
        RunContext {
            spec,
            metrics,
            clock: Arc::new(EpochClock::starting_at(start_epoch)),
            stop,
            failure: Mutex::new(None),
            checkpointer,
            restored,
            processes: 1,
            switches: None,
        }
    }

    pub fn in_cluster_of(mut self, processes: usize) -> Self {
        self.processes = processes.max(1);
        if processes > 1 {
            self.switches = Some(crate::switch::SwitchBoard::new(self.clock.clone()));
        }
        self
    }

    /// A component failed (it could not start, read, write, checkpoint or restore): no later
    /// checkpoint may complete (it would claim what the failed part did not do), and the run
    /// stops and reports the first failure.
    pub fn fail(&self, what: String) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            tracing::error!("{what}; stopping");
            *f = Some(what);
        } else {
            tracing::debug!("{what}");
        }
        if let Some(ck) = &self.checkpointer {
            ck.abort();
        }
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the run as a signal does (in a cluster: another process was asked to stop).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The run was asked to stop (a signal or a failure).
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The input ends because the run was stopped to be resumed from a checkpoint, not because
    /// it was exhausted: watermarks must not jump to the end.
    pub fn stopping_to_resume(&self) -> bool {
        self.checkpointer.is_some() && self.stopping()
    }

    pub fn checkpointer(&self) -> Option<&Checkpointer> {
        self.checkpointer.as_ref()
    }

    pub fn restored(&self) -> Option<&Restored> {
        self.restored.as_ref()
    }

    pub fn resumed_from(&self) -> Option<u64> {
        self.restored.as_ref().map(|r| r.manifest.epoch)
    }

    /// The parts of every worker of participant `prefix` (e.g. `source.logs.w`) in the
    /// checkpoint the run resumed from.
    pub fn restored_parts(&self, prefix: &str) -> Vec<&[u8]> {
        self.restored.iter().flat_map(|r| r.parts_with_prefix(prefix).map(|(_, b)| b)).collect()
    }

    pub fn worker_context(&self, c: &ComponentSpec, index: usize, peers: usize) -> WorkerContext {
        WorkerContext {
            component_id: c.id.as_str().into(),
            worker_index: index,
            workers: peers,
            processes: self.processes,
            resources: self.spec.resources.clone(),
            metrics: self.metrics.component(&c.id),
            clock: self.clock.clone(),
            resumed_from: self.resumed_from(),
            checkpointing: self.checkpointer.is_some(),
            switches: self.switches.clone(),
        }
    }
}
