//! The `jsonl` sink: one JSON object per line, to a file or standard output. Accepts events,
//! quarantined records and alerts. Workers share one writer and write whole batches at a time.
//!
//! In a cluster of processes each process writes its own file, `NAME.p<I>.EXT` beside `path`
//! (processes never share a writer), and a process that resumes settles the files of the former
//! processes it took over (see `checkpoint::Ownership`), so the files together hold every line
//! exactly once whatever the cluster's shape before and after.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use schemars::JsonSchema;
use serde::Deserialize;
use ward_engine::checkpoint::SinkCheckpoint;
use ward_engine::component::{Payload, Sink, SinkFactory, StreamKind, WorkerContext};

use super::jsonl_committed::{self, CommittedFile};
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};

/// Write events, quarantined records or alerts as JSON lines.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlSinkConfig {
    /// File path relative to the spec, or `-` for standard output.
    pub path: String,
    /// Append to an existing file instead of replacing it.
    #[serde(default)]
    pub append: bool,
}

impl ComponentConfig for JsonlSinkConfig {
    const TYPE: &'static str = "jsonl";
    const SECTION: Section = Section::Sink;
    const DESCRIPTION: &'static str =
        "Write events, quarantined records, alerts, cases or view changes as JSON lines to a file or stdout";
    const ACCEPTS: &'static [StreamKind] =
        &[StreamKind::Events, StreamKind::Quarantine, StreamKind::Alerts, StreamKind::Cases, StreamKind::Views];
    const OUTPUT: Option<StreamKind> = None;

    fn build(self, ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        anyhow::ensure!(
            !ward_engine::storage::is_remote(&self.path),
            "`path` must be a file: JSONL is appended, which object stores cannot do (send these records to a \
             `kafka` sink, or events to a `parquet` sink, which write to object stores)"
        );
        let path = if self.path == "-" { None } else { Some(ctx.resources.resolve(&self.path)) };
        if let Some(p) = &path {
            ctx.writes(p);
        }
        Ok(Built::Sink(Arc::new(JsonlFactory {
            path,
            append: self.append,
            writer: OnceLock::new(),
            committed: OnceLock::new(),
        })))
    }
}

type SharedWriter = Arc<Mutex<Box<dyn Write + Send>>>;

struct JsonlFactory {
    path: Option<std::path::PathBuf>,
    append: bool,
    writer: OnceLock<Result<SharedWriter, String>>,
    /// Under checkpoints (to a file): exactly once.
    committed: OnceLock<Result<Arc<Mutex<CommittedFile>>, String>>,
}

/// The file process `process` of `processes` writes: `path` itself for a single process.
pub fn process_file(path: &Path, process: usize, processes: usize) -> PathBuf {
    if processes <= 1 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.p{process}.{}", ext.to_string_lossy()),
        None => format!("{stem}.p{process}"),
    };
    path.with_file_name(name)
}

impl SinkFactory for JsonlFactory {
    fn restore(&self, retained: &[SinkCheckpoint<'_>]) -> anyhow::Result<()> {
        let (Some(path), Some(last)) = (&self.path, retained.last()) else { return Ok(()) };
        // Each former process wrote its own file with its own workers' lines: settle every
        // file this process took over with the parts of that process's workers.
        let (before, workers) = (last.manifest.processes.max(1), last.manifest.workers.max(1));
        for q in (0..before).filter(|q| q % last.owner.processes.max(1) == last.owner.process) {
            let of_q: Vec<SinkCheckpoint<'_>> = retained
                .iter()
                .map(|c| SinkCheckpoint {
                    manifest: c.manifest,
                    parts: c.parts.iter().filter(|(w, _)| w / workers == q).copied().collect(),
                    owner: c.owner,
                })
                .collect();
            jsonl_committed::restore(&process_file(path, q, before), &of_q)?;
        }
        Ok(())
    }

    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Sink>> {
        let file = self.path.as_ref().map(|p| process_file(p, ctx.process(), ctx.processes));
        if let (true, Some(path)) = (ctx.checkpointing, &file) {
            let file = self
                .committed
                .get_or_init(|| {
                    CommittedFile::open(path, ctx.resumed_from.is_none())
                        .map(|f| Arc::new(Mutex::new(f)))
                        .map_err(|e| format!("{}: {e}", path.display()))
                })
                .clone()
                .map_err(|e| anyhow::anyhow!(e))?;
            let committed = Committed {
                file,
                worker: ctx.worker_index,
                run: ctx.resumed_from.map_or(0, |e| e + 1),
                prepared: Vec::new(),
            };
            return Ok(Box::new(JsonlSink { writer: None, buf: Vec::new(), committed: Some(committed) }));
        }
        // A run resuming from a checkpoint continues the file.
        let append = self.append || ctx.resumed_from.is_some();
        let writer = self
            .writer
            .get_or_init(|| {
                let w: Box<dyn Write + Send> = match &file {
                    None => Box::new(BufWriter::new(std::io::stdout())),
                    Some(p) => {
                        if let Some(dir) = p.parent() {
                            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                        }
                        let f =
                            if append { File::options().create(true).append(true).open(p) } else { File::create(p) };
                        Box::new(BufWriter::with_capacity(1 << 20, f.map_err(|e| format!("{}: {e}", p.display()))?))
                    }
                };
                Ok(Arc::new(Mutex::new(w)))
            })
            .clone()
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(Box::new(JsonlSink { writer: Some(writer), buf: Vec::new(), committed: None }))
    }
}

/// Exactly-once state of one worker's sink (see `jsonl_committed`).
struct Committed {
    file: Arc<Mutex<CommittedFile>>,
    worker: usize,
    /// The run's first epoch.
    run: u64,
    /// Lines a checkpoint holds, appended once it is durable.
    prepared: Vec<(u64, Vec<u8>)>,
}

impl Committed {
    fn append(&mut self, upto: u64) -> anyhow::Result<()> {
        let mut file = self.file.lock().map_err(|_| anyhow::anyhow!("file lock poisoned"))?;
        while self.prepared.first().is_some_and(|(c, _)| *c <= upto) {
            let (c, data) = self.prepared.remove(0);
            file.commit(c, self.worker, &data)?;
        }
        Ok(())
    }
}

pub struct JsonlSink {
    /// Without checkpoints: the shared writer.
    writer: Option<SharedWriter>,
    buf: Vec<u8>,
    committed: Option<Committed>,
}

impl JsonlSink {
    fn flush(&mut self) -> anyhow::Result<()> {
        let Some(writer) = &self.writer else { return Ok(()) };
        let mut w = writer.lock().map_err(|_| anyhow::anyhow!("writer lock poisoned"))?;
        w.write_all(&self.buf)?;
        w.flush()?;
        self.buf.clear();
        Ok(())
    }
}

impl Sink for JsonlSink {
    fn write(&mut self, payload: &Payload) -> anyhow::Result<()> {
        match payload {
            Payload::Events(b) => {
                for i in 0..b.len() {
                    b.write_row_json(i, &mut self.buf);
                    self.buf.push(b'\n');
                }
            }
            Payload::Quarantine(q) => {
                for r in q {
                    serde_json::to_writer(&mut self.buf, &r.to_json())?;
                    self.buf.push(b'\n');
                }
            }
            Payload::Alerts(alerts) => {
                for a in alerts.iter() {
                    serde_json::to_writer(&mut self.buf, a)?;
                    self.buf.push(b'\n');
                }
            }
            Payload::Cases(cases) => {
                for c in cases {
                    serde_json::to_writer(&mut self.buf, c)?;
                    self.buf.push(b'\n');
                }
            }
            Payload::ViewChanges(changes) => {
                for c in changes {
                    serde_json::to_writer(&mut self.buf, &c.to_json())?;
                    self.buf.push(b'\n');
                }
            }
            Payload::Progress(_) | Payload::ViewDelta(_) => {}
        }
        if let (Some(writer), true) = (&self.writer, self.buf.len() > 1 << 20) {
            let mut w = writer.lock().map_err(|_| anyhow::anyhow!("writer lock poisoned"))?;
            w.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn epoch_complete(&mut self, _epoch: u64) -> anyhow::Result<()> {
        self.flush()
    }

    fn prepare(&mut self, epoch: u64) -> anyhow::Result<Vec<u8>> {
        let Some(c) = &mut self.committed else {
            self.flush()?;
            return Ok(Vec::new());
        };
        c.prepared.push((epoch, std::mem::take(&mut self.buf)));
        jsonl_committed::encode_segments(&c.prepared)
    }

    fn commit(&mut self, epoch: u64) -> anyhow::Result<()> {
        match &mut self.committed {
            Some(c) => c.append(epoch),
            None => Ok(()),
        }
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        let Some(c) = &mut self.committed else { return self.flush() };
        c.append(u64::MAX)?;
        let data = std::mem::take(&mut self.buf);
        let mut file = c.file.lock().map_err(|_| anyhow::anyhow!("file lock poisoned"))?;
        file.commit_end(c.run, c.worker, &data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_process_of_a_cluster_has_its_own_file() {
        let p = Path::new("out/alerts.jsonl");
        assert_eq!(process_file(p, 0, 1), p);
        assert_eq!(process_file(p, 2, 3), Path::new("out/alerts.p2.jsonl"));
        assert_eq!(process_file(Path::new("alerts"), 1, 2), Path::new("alerts.p1"));
    }
}
