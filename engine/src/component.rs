//! The contracts between the engine and the components it runs.
//!
//! A component kind (registered in [`crate::registry`]) turns its validated config into a
//! factory once; the planner asks the factory for one instance per worker. Instances live on
//! their worker thread, so they need not be `Send`.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::alert::Alert;
use crate::batch::EventBatch;
use crate::case::CaseRecord;
use crate::clock::EpochClock;
use crate::quarantine::QuarantineRecord;
use crate::resources::Resources;

/// What flows on an edge of the pipeline graph. Checked when a spec is validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// Unparsed records as sources read them.
    Records,
    /// Parsed or normalized events.
    Events,
    /// Quarantined records.
    Quarantine,
    /// Detection alerts.
    Alerts,
    /// Case and SLA records.
    Cases,
    /// Changes of a view's rows (+1 / −1).
    Views,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Records => "records",
            StreamKind::Events => "events",
            StreamKind::Quarantine => "quarantine",
            StreamKind::Alerts => "alerts",
            StreamKind::Cases => "cases",
            StreamKind::Views => "views",
        }
    }
}

/// The data of one timely message. Records and events share a representation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Payload {
    /// Shared, so a stream read by several consumers is not copied for each (timely's fan-out
    /// clones a message for every consumer but the last); an operator that changes a batch
    /// copies it only if another consumer still holds it.
    Events(Arc<EventBatch>),
    Quarantine(Vec<QuarantineRecord>),
    /// Shared like events: a stream of alerts read by several consumers (correlation, views,
    /// sinks) is not copied for each.
    Alerts(Arc<Vec<Alert>>),
    Cases(Vec<CaseRecord>),
    /// A view's input updates and closed keys, from its keyed state to differential-dataflow
    /// (never leaves the view's own stages).
    #[serde(skip)]
    ViewDelta(crate::view::ViewDelta),
    /// A view's changes, consolidated per epoch.
    #[serde(skip)]
    ViewChanges(Vec<crate::view::ViewChange>),
    /// Event-time progress travelling with the data (not records: sinks skip it).
    Progress(Progress),
}

/// Event-time progress marks (see [`crate::time`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Progress {
    /// A source instance will read these partitions; each holds the watermark back until it
    /// produces or goes idle.
    Partitions { source: Arc<str>, partitions: Vec<Arc<str>> },
    /// The watermark of stateful operator `from` on this worker.
    Watermark { from: Arc<str>, time: crate::time::EventTime },
}

impl Payload {
    /// Number of records (progress marks count as none).
    pub fn len(&self) -> usize {
        match self {
            Payload::Events(b) => b.len(),
            Payload::Quarantine(q) => q.len(),
            Payload::Alerts(a) => a.len(),
            Payload::Cases(c) => c.len(),
            Payload::ViewDelta(d) => d.updates.len(),
            Payload::ViewChanges(c) => c.len(),
            Payload::Progress(_) => 0,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Facts a component instance may need about where it runs.
#[derive(Clone)]
pub struct WorkerContext {
    pub component_id: Arc<str>,
    /// The worker's index in the whole cluster, and the number of workers in it.
    pub worker_index: usize,
    pub workers: usize,
    /// Processes in the cluster (1: a single process); each has `workers / processes` workers.
    pub processes: usize,
    pub resources: Resources,
    /// The component's counters (shared by its instances on all workers).
    pub metrics: crate::metrics::ComponentMetrics,
    /// The run's epoch clock, for components that must act at the same epoch on every worker.
    pub clock: Arc<EpochClock>,
    /// The checkpoint this run resumed from: file sinks append to, rather than replace, what
    /// earlier runs wrote.
    pub resumed_from: Option<u64>,
    /// The run takes checkpoints: sinks hold back what `prepare` covers until `commit`.
    pub checkpointing: bool,
    /// In a cluster: where reloads are agreed by every process (see `switch`).
    pub switches: Option<Arc<crate::switch::SwitchBoard>>,
}

impl WorkerContext {
    /// The process this worker runs in.
    pub fn process(&self) -> usize {
        self.worker_index / (self.workers / self.processes.max(1)).max(1)
    }
}

/// What a source's poll produced.
pub enum SourcePoll {
    /// A batch of records.
    Batch(EventBatch),
    /// A batch and records rejected while reading it (handed over together, so a checkpoint
    /// taken after this poll covers both).
    Both(EventBatch, Vec<QuarantineRecord>),
    /// Records that could not be read as records at all (I/O or decompression errors).
    Quarantine(Vec<QuarantineRecord>),
    /// Nothing now; poll again after about this long.
    Pending(Duration),
    /// The source is exhausted (bounded sources only).
    Done,
}

pub trait Source {
    /// Produces at most `max_rows` records.
    fn poll(&mut self, max_rows: usize) -> anyhow::Result<SourcePoll>;
    /// The partitions this instance will read (announced before its first record so that
    /// event-time watermarks wait for partitions that have not produced yet).
    fn partitions(&self) -> Vec<Arc<str>> {
        Vec::new()
    }
    /// This instance's read positions, for a checkpoint: everything emitted so far is before
    /// them. Opaque to the engine; empty for sources that cannot resume.
    fn checkpoint(&self) -> anyhow::Result<Vec<u8>> {
        Ok(Vec::new())
    }
    /// Resumes after the positions in a checkpoint. `parts` holds the [`Source::checkpoint`]
    /// bytes of every instance of this source in the run that wrote it, whose worker count may
    /// differ: each instance takes the positions of the partitions it reads.
    fn restore(&mut self, _parts: &[&[u8]]) -> anyhow::Result<()> {
        Ok(())
    }
    /// This instance's [`Source::checkpoint`] went into checkpoint `epoch`.
    fn checkpoint_written(&mut self, _epoch: u64) {}
    /// Checkpoint `epoch` is complete and durable (e.g. commit offsets to a consumer group).
    fn checkpoint_complete(&mut self, _epoch: u64) {}
}

/// Where an operator puts its results for one input batch.
#[derive(Default)]
pub struct OperatorOutput {
    pub events: Vec<EventBatch>,
    pub quarantine: Vec<QuarantineRecord>,
    /// Records dropped on purpose (filters, duplicates), counted for the ledger.
    pub filtered: u64,
    /// Alerts raised (operators whose output stream is alerts).
    pub alerts: Vec<Alert>,
    /// Case and SLA records (the `sla` operator).
    pub cases: Vec<CaseRecord>,
    /// A view's input updates and closed keys (the `view` operator).
    pub view: crate::view::ViewDelta,
    /// Input events fully handled without being passed on (a matcher evaluated them); they
    /// count as the operator's output in the ledger.
    pub consumed: u64,
}

impl OperatorOutput {
    pub fn out_len(&self) -> usize {
        self.events.iter().map(|b| b.len()).sum::<usize>() + self.consumed as usize
    }

    /// Hands over a processed batch: the rows listed in `rejected` go to quarantine, rows whose
    /// `keep` flag is false leave the batch (rejected, or counted as filtered by the caller),
    /// and the rest go out as events.
    pub fn emit(
        &mut self,
        mut batch: EventBatch,
        keep: &[bool],
        rejected: Vec<(usize, crate::quarantine::Reason, String)>,
        component: &Arc<str>,
    ) {
        for (i, reason, detail) in rejected {
            self.quarantine.push(QuarantineRecord::from_row(&batch, i, component, reason, detail));
        }
        batch.retain_rows(|i| keep[i]);
        if !batch.is_empty() {
            self.events.push(batch);
        }
    }
}

pub trait Operator {
    /// Processes one batch of checkpoint epoch `epoch`. Rows that cannot be processed go to
    /// `out.quarantine`; every input row must end in exactly one of `events`, `quarantine`,
    /// `filtered` or `consumed`.
    fn process(&mut self, batch: EventBatch, epoch: u64, out: &mut OperatorOutput);
}

pub trait Sink {
    fn write(&mut self, payload: &Payload) -> anyhow::Result<()>;
    /// Every record of epochs up to `epoch` has been written: a natural flush point.
    fn epoch_complete(&mut self, _epoch: u64) -> anyhow::Result<()> {
        Ok(())
    }
    /// Checkpoint `epoch` is being taken: every record of epochs ≤ `epoch` has been written.
    /// Returns this instance's part of the checkpoint. By default it flushes, and a restart
    /// from the checkpoint may repeat what was written after it (at least once).
    fn prepare(&mut self, epoch: u64) -> anyhow::Result<Vec<u8>> {
        self.epoch_complete(epoch)?;
        Ok(Vec::new())
    }
    /// Checkpoint `epoch` is durable: what `prepare` held back may become visible.
    fn commit(&mut self, _epoch: u64) -> anyhow::Result<()> {
        Ok(())
    }
    /// The input ended (after epoch `last`): this instance's part of the run's closing
    /// checkpoint; [`Sink::finish`] follows.
    fn retire_part(&mut self, last: u64) -> anyhow::Result<Vec<u8>> {
        self.prepare(last)
    }
    /// The input is closed; flush and close everything.
    fn finish(&mut self) -> anyhow::Result<()>;
}

pub trait SourceFactory: Send + Sync {
    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Source>>;
}
pub trait OperatorFactory: Send + Sync {
    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Operator>>;
}
pub trait SinkFactory: Send + Sync {
    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Sink>>;
    /// Once, before a run with checkpoints starts (no worker runs yet): finish committing what
    /// the checkpoint it resumes from holds and remove what later, uncommitted epochs left
    /// behind. `retained`: the complete checkpoints kept, oldest first; the last is the one
    /// the run resumes from (empty: none).
    fn restore(&self, _retained: &[crate::checkpoint::SinkCheckpoint<'_>]) -> anyhow::Result<()> {
        Ok(())
    }
    /// Once, after every worker finished and the run's closing checkpoint is durable (the last
    /// of `retained`): commit what the workers' parts hold that they could not commit before
    /// the checkpoint was written.
    fn closed(&self, _retained: &[crate::checkpoint::SinkCheckpoint<'_>]) -> anyhow::Result<()> {
        Ok(())
    }
}
