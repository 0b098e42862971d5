//! The `stdin` source: lines from standard input, read by worker 0 on a background thread so
//! that a slow producer never blocks the dataflow.

use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use ward_engine::batch::EventBatch;
use ward_engine::component::{Source, SourceFactory, SourcePoll, StreamKind, WorkerContext};
use ward_engine::quarantine::{QuarantineRecord, Reason};
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};

use super::file::read_line_bounded;

/// Read lines from standard input.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinSourceConfig {
    /// Longest line kept; longer ones are quarantined as `oversize` (their first bytes kept).
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
}

fn default_max_record_bytes() -> usize {
    4 << 20
}

/// Lines in flight between the reader thread and the worker (each at most max_record_bytes).
const CHANNEL_LINES: usize = 256;

impl ComponentConfig for StdinSourceConfig {
    const TYPE: &'static str = "stdin";
    const SECTION: Section = Section::Source;
    const DESCRIPTION: &'static str = "Read lines from standard input";
    const ACCEPTS: &'static [StreamKind] = &[];
    const OUTPUT: Option<StreamKind> = Some(StreamKind::Records);

    fn build(self, _ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        ward_engine::limits::check_record_bytes(self.max_record_bytes)?;
        Ok(Built::Source(Arc::new(StdinFactory { max_record_bytes: self.max_record_bytes })))
    }
}

struct StdinFactory {
    max_record_bytes: usize,
}

impl SourceFactory for StdinFactory {
    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Source>> {
        if ctx.worker_index != 0 {
            return Ok(Box::new(LineChannel {
                rx: None,
                component: ctx.component_id.clone(),
                partition: "stdin".into(),
                offset: 0,
                max_record_bytes: self.max_record_bytes,
            }));
        }
        let (tx, rx) = sync_channel::<(usize, Vec<u8>)>(CHANNEL_LINES);
        let max = self.max_record_bytes;
        std::thread::Builder::new().name("ward-stdin".into()).spawn(move || {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            let mut buf = Vec::new();
            // Lines are read with at most max_record_bytes kept, so one endless line cannot
            // take the memory.
            while let Ok((len, true)) = read_line_bounded(&mut lock, &mut buf, max) {
                if tx.send((len, std::mem::take(&mut buf))).is_err() {
                    break;
                }
            }
        })?;
        Ok(Box::new(LineChannel {
            rx: Some(rx),
            component: ctx.component_id.clone(),
            partition: "stdin".into(),
            offset: 0,
            max_record_bytes: max,
        }))
    }
}

/// Lines arriving on a channel from a reader thread.
pub struct LineChannel {
    /// (length of the line as read, its first max_record_bytes bytes).
    rx: Option<Receiver<(usize, Vec<u8>)>>,
    component: Arc<str>,
    partition: Arc<str>,
    offset: u64,
    max_record_bytes: usize,
}

impl Source for LineChannel {
    fn partitions(&self) -> Vec<Arc<str>> {
        if self.rx.is_some() {
            vec![self.partition.clone()]
        } else {
            Vec::new()
        }
    }

    fn poll(&mut self, max_rows: usize) -> anyhow::Result<SourcePoll> {
        let Some(rx) = &self.rx else {
            return Ok(SourcePoll::Done);
        };
        let mut batch = EventBatch::new();
        let mut oversize = Vec::new();
        let origin = batch.origin_index(&self.component, &self.partition);
        while batch.len() < max_rows && !batch.is_full() {
            match rx.try_recv() {
                Ok((len, line)) => {
                    self.offset += 1;
                    // Lines are cut at max_record_bytes (≤ MAX_RECORD_BYTES) and batches at
                    // BATCH_BYTES, so a kept line always fits.
                    if len > self.max_record_bytes || batch.push_raw(origin, self.offset, &line).is_err() {
                        oversize.push(QuarantineRecord {
                            reason: Reason::Oversize,
                            detail: format!("line of {len} bytes > max_record_bytes {}", self.max_record_bytes),
                            component: self.component.clone(),
                            source: self.component.clone(),
                            partition: self.partition.clone(),
                            offset: self.offset,
                            payload: line[..line.len().min(4096)].to_vec(),
                            payload_len: len,
                        });
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if batch.is_empty() && oversize.is_empty() {
                        return Ok(SourcePoll::Done);
                    }
                    break;
                }
            }
        }
        if !oversize.is_empty() {
            return Ok(SourcePoll::Both(batch, oversize));
        }
        if batch.is_empty() {
            Ok(SourcePoll::Pending(Duration::from_millis(20)))
        } else {
            Ok(SourcePoll::Batch(batch))
        }
    }
}
