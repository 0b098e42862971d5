//! The `file` source: lines (JSON lines or raw text) or concatenated JSON documents from one
//! file or a glob of files, plain or gzip. Files are spread over workers by their sorted
//! index; each file is read by one worker, in order, so positions (file, line) are stable
//! whatever the worker count.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
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
    /// Files read to the end (or that could not be opened).
    done: Vec<Arc<str>>,
    /// Positions restored from a checkpoint, applied when a file opens: path → next record.
    resume: std::collections::HashMap<String, u64>,
}

/// A file's position in a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct FilePosition {
    path: String,
    /// Number of the next record (1-based line or document); `None`: read to the end.
    next: Option<u64>,
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
        FileSource {
            component,
            config,
            pending: files.into(),
            current: None,
            line: Vec::new(),
            done: Vec::new(),
            resume: std::collections::HashMap::new(),
        }
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

    /// Skips the records before record `next` of a file being resumed.
    fn skip_to(&mut self, f: &mut OpenFile, next: u64) -> std::io::Result<()> {
        if self.config.framing == Framing::JsonDocuments {
            // Documents are split when the file is first read; skip them there.
            f.next_offset = next;
            return Ok(());
        }
        while f.next_offset < next {
            if !read_line_bounded(&mut *f.reader, &mut self.line, 0)?.1 {
                break;
            }
            f.next_offset += 1;
        }
        Ok(())
    }

    fn read_error(&self, partition: &Arc<str>, offset: u64, e: impl std::fmt::Display) -> SourcePoll {
        SourcePoll::Quarantine(vec![self.rejected(Reason::ReadError, e.to_string(), partition, offset, &[], 0)])
    }
}

/// Reads one line into `buf` (without the newline), keeping at most `max` bytes.
/// Returns (bytes in the line, whether anything was read).
pub(crate) fn read_line_bounded(r: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<(usize, bool)> {
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

    fn checkpoint(&self) -> anyhow::Result<Vec<u8>> {
        let mut positions: Vec<FilePosition> =
            self.done.iter().map(|p| FilePosition { path: p.to_string(), next: None }).collect();
        if let Some(f) = &self.current {
            positions.push(FilePosition { path: f.partition.to_string(), next: Some(f.next_offset) });
        }
        ward_engine::keyed::encode(&positions)
    }

    fn restore(&mut self, parts: &[&[u8]]) -> anyhow::Result<()> {
        let mut known: std::collections::HashMap<String, Option<u64>> = std::collections::HashMap::new();
        for part in parts.iter().filter(|p| !p.is_empty()) {
            let positions: Vec<FilePosition> = ward_engine::keyed::decode(part)?;
            known.extend(positions.into_iter().map(|p| (p.path, p.next)));
        }
        let mut pending = std::collections::VecDeque::new();
        for path in self.pending.drain(..) {
            let key = path.to_string_lossy().into_owned();
            match known.get(&key) {
                Some(None) => self.done.push(key.into()),
                Some(Some(next)) => {
                    self.resume.insert(key, *next);
                    pending.push_back(path);
                }
                None => pending.push_back(path),
            }
        }
        self.pending = pending;
        Ok(())
    }

    fn poll(&mut self, max_rows: usize) -> anyhow::Result<SourcePoll> {
        loop {
            if self.current.is_none() {
                let Some(path) = self.pending.pop_front() else {
                    return Ok(SourcePoll::Done);
                };
                let partition: Arc<str> = path.to_string_lossy().into_owned().into();
                match self.open(&path) {
                    Ok(mut f) => {
                        if let Some(next) = self.resume.remove(&*partition) {
                            if let Err(e) = self.skip_to(&mut f, next) {
                                self.done.push(partition.clone());
                                return Ok(self.read_error(&partition, next, format!("cannot resume: {e}")));
                            }
                        }
                        self.current = Some(f);
                    }
                    Err(e) => {
                        self.done.push(partition.clone());
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
                    let skip = (f.next_offset.saturating_sub(1) as usize).min(docs.len());
                    f.documents = Some(docs.into_iter().skip(skip).collect::<Vec<_>>().into_iter());
                }
                let docs = f.documents.as_mut().expect("split above");
                while batch.len() < max_rows && !batch.is_full() {
                    let Some((offset, doc)) = docs.next() else { break };
                    if batch.push_raw(origin, offset, &doc).is_err() {
                        quarantined.push(self.rejected(
                            Reason::Oversize,
                            "document does not fit in a batch".into(),
                            &f.partition,
                            offset,
                            &doc,
                            doc.len(),
                        ));
                    }
                    f.next_offset = offset + 1;
                }
                finished = docs.len() == 0;
            } else {
                // Cut at BATCH_BYTES too: 4 MiB lines × batch_size would overflow a batch.
                while batch.len() < max_rows && !batch.is_full() {
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
                            } else if batch.push_raw(origin, offset, &self.line).is_err() {
                                let detail = format!("line of {len} bytes does not fit in a batch");
                                quarantined.push(self.rejected(
                                    Reason::Oversize,
                                    detail,
                                    &f.partition,
                                    offset,
                                    &self.line,
                                    len,
                                ));
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
            if finished {
                self.done.push(f.partition.clone());
            } else {
                self.current = Some(f);
            }
            match (batch.is_empty(), quarantined.is_empty()) {
                (true, true) => {}
                (true, false) => return Ok(SourcePoll::Quarantine(quarantined)),
                (false, true) => return Ok(SourcePoll::Batch(batch)),
                (false, false) => return Ok(SourcePoll::Both(batch, quarantined)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn config(framing: Framing) -> FileSourceConfig {
        FileSourceConfig { path: String::new(), framing, compression: Compression::Auto, max_record_bytes: 64 }
    }

    /// (partition, offset, payload) of every record and quarantined record a source yields.
    fn drain(s: &mut FileSource, limit: usize) -> Vec<(String, u64, String)> {
        let mut out = Vec::new();
        while out.len() < limit {
            match s.poll(2).unwrap() {
                SourcePoll::Batch(b) => push_batch(&mut out, &b),
                SourcePoll::Both(b, q) => {
                    push_batch(&mut out, &b);
                    out.extend(q.iter().map(|r| (r.partition.to_string(), r.offset, "<quarantined>".to_string())));
                }
                SourcePoll::Quarantine(q) => {
                    out.extend(q.iter().map(|r| (r.partition.to_string(), r.offset, "<quarantined>".to_string())))
                }
                SourcePoll::Pending(_) => {}
                SourcePoll::Done => break,
            }
        }
        out
    }

    fn push_batch(out: &mut Vec<(String, u64, String)>, b: &EventBatch) {
        for r in 0..b.len() {
            let p = b.provenance(r);
            out.push((p.partition.to_string(), p.offset, String::from_utf8_lossy(b.raw_payload(r)).into_owned()));
        }
    }

    #[test]
    fn positions_resume_lines_gzip_and_documents_on_any_instance_count() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.log");
        std::fs::write(
            &plain,
            (0..7).map(|i| format!("line {i}\n")).collect::<String>() + &"x".repeat(100) + "\nlast\n",
        )
        .unwrap();
        let gz = dir.path().join("b.log.gz");
        let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
        enc.write_all((0..5).map(|i| format!("gz {i}\n")).collect::<String>().as_bytes()).unwrap();
        enc.finish().unwrap();
        let files = vec![plain, gz];
        let source = |files: Vec<PathBuf>| FileSource::new("f".into(), config(Framing::Lines), files);

        let all = drain(&mut source(files.clone()), usize::MAX);
        assert_eq!(all.len(), 7 + 1 + 1 + 5, "the oversize line is quarantined, not lost");
        for stop in [1, 3, 8, 10] {
            let mut first = source(files.clone());
            let mut got = drain(&mut first, stop);
            let part = first.checkpoint().unwrap();
            // Resume on two instances, each with one of the files.
            for mine in [vec![files[0].clone()], vec![files[1].clone()]] {
                let mut next = source(mine);
                next.restore(&[&part]).unwrap();
                got.extend(drain(&mut next, usize::MAX));
            }
            got.sort();
            let mut want = all.clone();
            want.sort();
            assert_eq!(got, want, "stopped after {stop}");
        }

        let docs = dir.path().join("c.json");
        std::fs::write(&docs, "{\"a\": 1}\n{\"a\":\n 2}\n{\"a\": 3}").unwrap();
        let doc_source = || FileSource::new("f".into(), config(Framing::JsonDocuments), vec![docs.clone()]);
        let mut first = doc_source();
        let mut got = drain(&mut first, 2);
        let mut next = doc_source();
        next.restore(&[&first.checkpoint().unwrap()]).unwrap();
        got.extend(drain(&mut next, usize::MAX));
        assert_eq!(got.iter().map(|r| r.1).collect::<Vec<_>>(), vec![1, 2, 3]);
    }
}
