//! The `stdin` source: lines from standard input, read by worker 0 on a background thread so
//! that a slow producer never blocks the dataflow.

use std::io::BufRead;
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use ward_engine::batch::EventBatch;
use ward_engine::component::{Built, Source, SourceFactory, SourcePoll, StreamKind, WorkerContext};
use ward_engine::registry::{BuildContext, ComponentConfig, Section};

/// Read lines from standard input.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinSourceConfig {}

impl ComponentConfig for StdinSourceConfig {
    const TYPE: &'static str = "stdin";
    const SECTION: Section = Section::Source;
    const DESCRIPTION: &'static str = "Read lines from standard input";
    const ACCEPTS: &'static [StreamKind] = &[];
    const OUTPUT: Option<StreamKind> = Some(StreamKind::Records);

    fn build(self, _ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        Ok(Built::Source(Arc::new(StdinFactory)))
    }
}

struct StdinFactory;

impl SourceFactory for StdinFactory {
    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Source>> {
        if ctx.worker_index != 0 {
            return Ok(Box::new(LineChannel {
                rx: None,
                component: ctx.component_id.clone(),
                partition: "stdin".into(),
                offset: 0,
            }));
        }
        let (tx, rx) = sync_channel::<Vec<u8>>(64 * 1024);
        std::thread::Builder::new().name("ward-stdin".into()).spawn(move || {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match lock.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        while matches!(buf.last(), Some(b'\n' | b'\r')) {
                            buf.pop();
                        }
                        if tx.send(std::mem::take(&mut buf)).is_err() {
                            break;
                        }
                    }
                }
            }
        })?;
        Ok(Box::new(LineChannel {
            rx: Some(rx),
            component: ctx.component_id.clone(),
            partition: "stdin".into(),
            offset: 0,
        }))
    }
}

/// Lines arriving on a channel from a reader thread.
pub struct LineChannel {
    rx: Option<Receiver<Vec<u8>>>,
    component: Arc<str>,
    partition: Arc<str>,
    offset: u64,
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
        let origin = batch.origin_index(&self.component, &self.partition);
        while batch.len() < max_rows {
            match rx.try_recv() {
                Ok(line) => {
                    self.offset += 1;
                    batch.push_raw(origin, self.offset, &line);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if batch.is_empty() {
                        return Ok(SourcePoll::Done);
                    }
                    break;
                }
            }
        }
        if batch.is_empty() {
            Ok(SourcePoll::Pending(Duration::from_millis(20)))
        } else {
            Ok(SourcePoll::Batch(batch))
        }
    }
}
