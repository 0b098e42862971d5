//! The `file` source: lines (JSON lines or raw text) or concatenated JSON documents from one
//! file or a glob of files, plain or gzip. Files are spread over workers by their sorted
//! index; each file is read by one worker, in order, so positions (file, line) are stable
//! whatever the worker count.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use ward_engine::batch::EventBatch;
use ward_engine::component::{Built, Source, SourceFactory, SourcePoll, StreamKind, WorkerContext};
use ward_engine::quarantine::{QuarantineRecord, Reason};
use ward_engine::registry::{BuildContext, ComponentConfig, Section};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// One record per line (JSON lines, syslog, CSV, ...).
    #[default]
    Lines,
    /// A stream of JSON documents, possibly pretty-printed over many lines (EVTX exports).
    JsonDocuments,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// gzip when the file starts with the gzip magic bytes.
    #[default]
    Auto,
    None,
    Gzip,
}

/// Read records from files.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// A file or a glob (`logs/*.jsonl.gz`), relative to the spec.
    pub path: String,
    #[serde(default)]
    pub framing: Framing,
    #[serde(default)]
    pub compression: Compression,
    /// Lines longer than this are quarantined as `oversize` (and not held in memory whole).
    #[serde(default = "default_max_line")]
    pub max_record_bytes: usize,
}

fn default_max_line() -> usize {
    4 << 20
}

impl ComponentConfig for FileSourceConfig {
    const TYPE: &'static str = "file";
    const SECTION: Section = Section::Source;
    const DESCRIPTION: &'static str = "Read lines or JSON documents from files (glob, plain or gzip)";
    const ACCEPTS: &'static [StreamKind] = &[];
    const OUTPUT: Option<StreamKind> = Some(StreamKind::Records);

    fn build(self, ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        let pattern = ctx.resources.resolve(&self.path);
        let pattern_text = pattern.to_string_lossy().into_owned();
        let mut files: Vec<PathBuf> = glob::glob(&pattern_text)
            .map_err(|e| anyhow::anyhow!("path `{}`: {e}", self.path))?
            .filter_map(Result::ok)
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        if files.is_empty() {
            anyhow::bail!("path `{}` matches no file (looked for {pattern_text})", self.path);
        }
        Ok(Built::Source(Arc::new(FileSourceFactory { config: self, files })))
    }
}

struct FileSourceFactory {
    config: FileSourceConfig,
    files: Vec<PathBuf>,
}

impl SourceFactory for FileSourceFactory {
    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Source>> {
        let mine: Vec<PathBuf> = self
            .files
            .iter()
            .enumerate()
            .filter(|(i, _)| i % ctx.workers == ctx.worker_index)
            .map(|(_, p)| p.clone())
            .collect();
        Ok(Box::new(FileSource::new(ctx.component_id.clone(), self.config.clone(), mine)))
    }
}

pub struct FileSource {
    component: Arc<str>,
    config: FileSourceConfig,
    pending: std::collections::VecDeque<PathBuf>,
    current: Option<OpenFile>,
    line: Vec<u8>,
    /// Quarantined records read together with a batch, handed over at the next poll.
    deferred: Option<Vec<QuarantineRecord>>,
}

struct OpenFile {
    partition: Arc<str>,
    reader: Box<dyn BufRead>,
    /// Number of the next record (1-based line, or document index for JSON documents).
    next_offset: u64,
    /// For JSON documents: the documents of the whole file, split once.
    documents: Option<std::vec::IntoIter<(u64, Vec<u8>)>>,
}

impl FileSource {
    pub fn new(component: Arc<str>, config: FileSourceConfig, files: Vec<PathBuf>) -> Self {
        FileSource { component, config, pending: files.into(), current: None, line: Vec::new(), deferred: None }
    }

    fn open(&self, path: &PathBuf) -> std::io::Result<OpenFile> {
        let mut file = BufReader::with_capacity(256 * 1024, File::open(path)?);
        let gzip = match self.config.compression {
            Compression::Gzip => true,
            Compression::None => false,
            Compression::Auto => file.fill_buf()?.starts_with(&[0x1f, 0x8b]),
        };
        let reader: Box<dyn BufRead> = if gzip {
            Box::new(BufReader::with_capacity(256 * 1024, flate2::bufread::MultiGzDecoder::new(file)))
        } else {
            Box::new(file)
        };
        Ok(OpenFile { partition: path.to_string_lossy().into_owned().into(), reader, next_offset: 1, documents: None })
    }

    /// A record rejected while reading (before any payload became a batch row).
    fn rejected(
        &self,
        reason: Reason,
        detail: String,
        partition: &Arc<str>,
        offset: u64,
        payload: &[u8],
        len: usize,
    ) -> QuarantineRecord {
        QuarantineRecord {
            reason,
            detail,
            component: self.component.clone(),
            source: self.component.clone(),
            partition: partition.clone(),
            offset,
            payload: payload[..payload.len().min(ward_engine::quarantine::MAX_QUARANTINED_PAYLOAD)].to_vec(),
            payload_len: len,
        }
    }

    fn read_error(&self, partition: &Arc<str>, offset: u64, e: impl std::fmt::Display) -> SourcePoll {
        SourcePoll::Quarantine(vec![self.rejected(Reason::ReadError, e.to_string(), partition, offset, &[], 0)])
    }
}

/// Reads one line into `buf` (without the newline), keeping at most `max` bytes.
/// Returns (bytes in the line, whether anything was read).
fn read_line_bounded(r: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<(usize, bool)> {
    buf.clear();
    let mut total = 0;
    let mut any = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok((total, any));
        }
        any = true;
        let (take, done) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        total += take;
        r.consume(if done { take + 1 } else { take });
        if done {
            if buf.last() == Some(&b'\r') {
                buf.pop();
                total -= 1;
            }
            return Ok((total, any));
        }
    }
}

impl Source for FileSource {
    fn partitions(&self) -> Vec<Arc<str>> {
        let mut p: Vec<Arc<str>> = self.current.iter().map(|f| f.partition.clone()).collect();
        p.extend(self.pending.iter().map(|path| path.to_string_lossy().into_owned().into()));
        p
    }

    fn poll(&mut self, max_rows: usize) -> anyhow::Result<SourcePoll> {
        if let Some(q) = self.deferred.take() {
            return Ok(SourcePoll::Quarantine(q));
        }
        loop {
            if self.current.is_none() {
                let Some(path) = self.pending.pop_front() else {
                    return Ok(SourcePoll::Done);
                };
                match self.open(&path) {
                    Ok(f) => self.current = Some(f),
                    Err(e) => {
                        let partition: Arc<str> = path.to_string_lossy().into_owned().into();
                        return Ok(self.read_error(&partition, 0, format!("cannot open: {e}")));
                    }
                }
            }
            let max = self.config.max_record_bytes;
            let mut f = self.current.take().expect("opened above");
            let mut batch = EventBatch::with_capacity(max_rows, max_rows * 512);
            let origin = batch.origin_index(&self.component, &f.partition);
            let mut quarantined = Vec::new();
            let mut finished = false;
            if self.config.framing == Framing::JsonDocuments {
                if f.documents.is_none() {
                    let mut all = Vec::new();
                    if let Err(e) = f.reader.read_to_end(&mut all) {
                        return Ok(self.read_error(&f.partition, 0, e));
                    }
                    let text = String::from_utf8_lossy(&all);
                    let docs = match ward_engine::batch::split_json_documents(&text) {
                        Ok(d) => d
                            .into_iter()
                            .enumerate()
                            .map(|(i, d)| (i as u64 + 1, d.as_bytes().to_vec()))
                            .collect::<Vec<_>>(),
                        Err(e) => {
                            return Ok(self.read_error(&f.partition, 0, format!("not a stream of JSON documents: {e}")))
                        }
                    };
                    f.documents = Some(docs.into_iter());
                }
                let docs = f.documents.as_mut().expect("split above");
                for (offset, doc) in docs.by_ref().take(max_rows) {
                    batch.push_raw(origin, offset, &doc);
                }
                finished = docs.len() == 0;
            } else {
                while batch.len() < max_rows {
                    match read_line_bounded(&mut *f.reader, &mut self.line, max) {
                        Ok((_, false)) => {
                            finished = true;
                            break;
                        }
                        Ok((len, true)) => {
                            let offset = f.next_offset;
                            f.next_offset += 1;
                            if len > max {
                                let detail = format!("line of {len} bytes > max_record_bytes {max}");
                                quarantined.push(self.rejected(
                                    Reason::Oversize,
                                    detail,
                                    &f.partition,
                                    offset,
                                    &self.line,
                                    len,
                                ));
                            } else {
                                batch.push_raw(origin, offset, &self.line);
                            }
                        }
                        Err(e) => {
                            // A corrupt or truncated file: report where, then go on with the next file.
                            let offset = f.next_offset;
                            let detail = format!("read error: {e}");
                            quarantined.push(self.rejected(Reason::ReadError, detail, &f.partition, offset, &[], 0));
                            finished = true;
                            break;
                        }
                    }
                }
            }
            if !finished {
                self.current = Some(f);
            }
            if !quarantined.is_empty() {
                if batch.is_empty() {
                    return Ok(SourcePoll::Quarantine(quarantined));
                }
                self.deferred = Some(quarantined);
            }
            if !batch.is_empty() {
                return Ok(SourcePoll::Batch(batch));
            }
        }
    }
}
