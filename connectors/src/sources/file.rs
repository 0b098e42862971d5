//! The `file` source: lines (JSON lines or raw text) or concatenated JSON documents from one
//! file or a glob of files, plain or gzip. Files are spread over workers by their sorted
//! index; each file is read by one worker, in order, so positions (file, line) are stable
//! whatever the worker count.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use ward_engine::batch::EventBatch;
use ward_engine::component::{Source, SourceFactory, SourcePoll, StreamKind, WorkerContext};
use ward_engine::quarantine::{QuarantineRecord, Reason};
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};

use ward_engine::framing::{Piece, RecordReader};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// One record per line (JSON lines, syslog, CSV, ...).
    #[default]
    Lines,
    /// A stream of JSON documents, possibly pretty-printed over many lines (EVTX exports), or
    /// JSON lines; delivery envelopes (CloudTrail `Records`, Azure `records`, EventBridge
    /// `detail`) are split into their records unless `unwrap_envelopes: false`.
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
    /// With `json_documents`: a `{"Records": [...]}` or `{"records": [...]}` document yields one
    /// record per element, an EventBridge event its `detail` (default true).
    #[serde(default = "default_true")]
    pub unwrap_envelopes: bool,
}

fn default_true() -> bool {
    true
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
        ward_engine::limits::check_record_bytes(self.max_record_bytes)?;
        let files = expand_path(ctx.resources, &self.path)?;
        for f in &files {
            ctx.reads(f);
        }
        Ok(Built::Source(Arc::new(FileSourceFactory { config: self, files })))
    }
}

/// The regular files `path` (a file or a glob, relative to the spec) names, sorted, each real
/// file once: a `**` through a symlink loop or two links to one file would otherwise read it
/// again under other names (each with its own event ids, so dedup could not help). Every
/// directory, FIFO, socket, dangling link or repeat the glob matched is logged as skipped.
pub fn expand_path(resources: &ward_engine::resources::Resources, path: &str) -> anyhow::Result<Vec<PathBuf>> {
    let pattern = resources.resolve(path);
    let pattern_text = pattern.to_string_lossy().into_owned();
    let mut matched: Vec<PathBuf> = Vec::new();
    for entry in glob::glob(&pattern_text).map_err(|e| anyhow::anyhow!("path `{path}`: {e}"))? {
        match entry {
            Ok(p) => matched.push(p),
            Err(e) => {
                tracing::warn!(path = %e.path().display(), error = %e.error(), "file source: skipped (unreadable)")
            }
        }
    }
    matched.sort();
    let mut seen: std::collections::HashMap<PathBuf, PathBuf> = std::collections::HashMap::new();
    let mut files = Vec::new();
    for p in matched {
        let meta = match std::fs::metadata(&p) {
            Ok(m) => m,
            Err(e) => {
                let why = if std::fs::symlink_metadata(&p).is_ok() { "dangling or looping link" } else { "unreadable" };
                tracing::warn!(path = %p.display(), error = %e, "file source: skipped ({why})");
                continue;
            }
        };
        if !meta.is_file() {
            let kind = if meta.is_dir() { "a directory" } else { "not a regular file (FIFO, socket or device)" };
            tracing::warn!(path = %p.display(), "file source: skipped ({kind})");
            continue;
        }
        let real = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
        if let Some(first) = seen.get(&real) {
            tracing::warn!(path = %p.display(), same_as = %first.display(), "file source: skipped (the same file again, e.g. through a symlink loop)");
            continue;
        }
        seen.insert(real, p.clone());
        files.push(p);
    }
    if files.is_empty() {
        anyhow::bail!("path `{path}` matches no regular file (looked for {pattern_text})");
    }
    Ok(files)
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
    /// For JSON documents: the splitter, which knows the byte offset reached in the
    /// (decompressed) stream.
    records: RecordReader,
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
        let records = RecordReader::new(self.config.unwrap_envelopes);
        Ok(OpenFile { partition: path.to_string_lossy().into_owned().into(), reader, next_offset: 1, records })
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

    /// Appends the record in `self.line` to `batch`, or quarantines it as oversize if it would
    /// overflow the batch (unreachable with records ≤ MAX_RECORD_BYTES and batches cut at
    /// BATCH_BYTES; refused rather than wrapped if it ever happened).
    fn push_record(
        &self,
        batch: &mut EventBatch,
        origin: u32,
        partition: &Arc<str>,
        offset: u64,
        len: usize,
        quarantined: &mut Vec<QuarantineRecord>,
    ) {
        if batch.push_raw(origin, offset, &self.line).is_err() {
            let detail = format!("record of {len} bytes does not fit in a batch");
            quarantined.push(self.rejected(Reason::Oversize, detail, partition, offset, &self.line, len));
        }
    }

    /// Skips the records before record `next` of a file being resumed.
    fn skip_to(&mut self, f: &mut OpenFile, next: u64) -> std::io::Result<()> {
        if self.config.framing == Framing::JsonDocuments {
            while f.next_offset < next {
                if f.records.next(&mut *f.reader, &mut self.line, 0)?.is_none() {
                    break;
                }
                f.next_offset += 1;
            }
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
                // One document at a time, bounded like lines; a bad one is quarantined alone.
                while batch.len() < max_rows && !batch.is_full() {
                    let found = match f.records.next(&mut *f.reader, &mut self.line, max) {
                        Ok(Some(found)) => found,
                        Ok(None) => {
                            finished = true;
                            break;
                        }
                        Err(e) => {
                            let offset = f.next_offset;
                            let detail = format!("read error at byte {}: {e}", f.records.pos());
                            quarantined.push(self.rejected(Reason::ReadError, detail, &f.partition, offset, &[], 0));
                            finished = true;
                            break;
                        }
                    };
                    let offset = f.next_offset;
                    f.next_offset += 1;
                    let (len, at) = (found.len, found.start);
                    // A record of an envelope says which one, so it can be found in the file.
                    let what = match found.element {
                        Some(e) => format!("record {} of the document at byte {}", e.index, e.document_start),
                        None => "document".to_string(),
                    };
                    let problem = match found.piece {
                        Piece::Junk => Some((
                            Reason::InvalidJson,
                            format!("{len} bytes at byte {at} ({what}) are not a JSON document"),
                        )),
                        Piece::Truncated => Some((
                            Reason::InvalidJson,
                            format!("JSON {what} at byte {at} cut off by the end of the file"),
                        )),
                        Piece::BrokenString => Some((
                            Reason::InvalidJson,
                            format!("JSON {what} at byte {at} has a line break inside a string (cut at that line)"),
                        )),
                        Piece::Document if len > max => Some((
                            Reason::Oversize,
                            format!("{what} of {len} bytes at byte {at} > max_record_bytes {max}"),
                        )),
                        Piece::Document => None,
                    };
                    match problem {
                        Some((reason, detail)) => {
                            quarantined.push(self.rejected(reason, detail, &f.partition, offset, &self.line, len))
                        }
                        None => self.push_record(&mut batch, origin, &f.partition, offset, len, &mut quarantined),
                    }
                }
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
                            } else {
                                self.push_record(&mut batch, origin, &f.partition, offset, len, &mut quarantined);
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
        FileSourceConfig {
            path: String::new(),
            framing,
            compression: Compression::Auto,
            max_record_bytes: 64,
            unwrap_envelopes: true,
        }
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

    #[test]
    fn json_documents_quarantine_a_bad_document_alone_and_stream_with_bounded_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docs.json");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"{\n \"a\": 1\n}\nnot json at all\n{\"b\": \"\xff\"}\n").unwrap();
        f.write_all(format!("{{\"big\": \"{}\"}}\n{{\"c\": 3}}\n{{\"cut\":", "x".repeat(200)).as_bytes()).unwrap();
        drop(f);
        let mut s = FileSource::new("src".into(), config(Framing::JsonDocuments), vec![path.clone()]);
        let mut records = Vec::new();
        let mut quarantined = Vec::new();
        loop {
            match s.poll(1024).unwrap() {
                SourcePoll::Batch(b) => push_batch(&mut records, &b),
                SourcePoll::Both(b, q) => {
                    push_batch(&mut records, &b);
                    quarantined.extend(q);
                }
                SourcePoll::Quarantine(q) => quarantined.extend(q),
                SourcePoll::Pending(_) => {}
                SourcePoll::Done => break,
            }
        }
        let offsets: Vec<u64> = records.iter().map(|r| r.1).collect();
        assert_eq!(offsets, vec![1, 3, 5], "documents 1, 3 (bytes kept as they are; parse checks UTF-8) and 5");
        assert!(records[1].2.contains('\u{FFFD}'), "the invalid byte reached the record unreplaced");
        let q: Vec<(u64, &str, &str)> =
            quarantined.iter().map(|r| (r.offset, r.reason.as_str(), r.detail.as_str())).collect();
        assert_eq!(q.len(), 3, "{q:?}");
        assert_eq!((q[0].0, q[0].1), (2, "invalid_json"));
        assert!(q[0].2.contains("at byte 12"), "{q:?}");
        assert_eq!((q[1].0, q[1].1), (4, "oversize"));
        assert_eq!((q[2].0, q[2].1), (6, "invalid_json"));
        assert!(q[2].2.contains("cut off"), "{q:?}");
    }

    #[test]
    fn a_gzip_bomb_of_one_endless_document_is_read_in_bounded_memory() {
        use flate2::write::GzEncoder;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.json.gz");
        let mut gz = GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::best());
        gz.write_all(b"{\"a\": \"").unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..200 {
            gz.write_all(&chunk).unwrap(); // 200 MB of one string, never closed
        }
        gz.finish().unwrap();
        let mut s = FileSource::new("src".into(), config(Framing::JsonDocuments), vec![path]);
        let mut quarantined = Vec::new();
        loop {
            match s.poll(1024).unwrap() {
                SourcePoll::Both(_, q) | SourcePoll::Quarantine(q) => quarantined.extend(q),
                SourcePoll::Batch(b) => assert!(b.is_empty()),
                SourcePoll::Pending(_) => {}
                SourcePoll::Done => break,
            }
        }
        assert_eq!(quarantined.len(), 1);
        assert!(quarantined[0].payload.len() <= 64, "no more than max_record_bytes kept");
        assert_eq!(quarantined[0].payload_len, 200 * (1 << 20) + 7);
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

    #[test]
    fn a_gzipped_cloudtrail_file_yields_one_record_per_element_and_resumes_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("123456789012_CloudTrail_eu-west-1_20261201T0000Z_x.json.gz");
        let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
        let records: Vec<String> = (0..6).map(|i| format!("{{\"eventName\":\"E{i}\"}}")).collect();
        let mut body = records[..3].join(",");
        body.push_str(&format!(",{{\"eventName\":\"{}\"}},", "x".repeat(100)));
        body.push_str(&records[3..].join(","));
        enc.write_all(format!("{{\"Records\":[{body}]}}").as_bytes()).unwrap();
        enc.finish().unwrap();
        let source = || FileSource::new("ct".into(), config(Framing::JsonDocuments), vec![path.clone()]);
        let mut all = drain(&mut source(), usize::MAX);
        all.sort();
        let offsets: Vec<u64> = all.iter().map(|r| r.1).collect();
        assert_eq!(offsets, vec![1, 2, 3, 4, 5, 6, 7], "every record has its own position");
        assert_eq!(all[3].2, "<quarantined>", "the oversize record alone is quarantined");
        assert_eq!(all[6].2, records[5]);
        for stop in [1, 4, 5] {
            let mut first = source();
            let mut got = drain(&mut first, stop);
            let mut next = source();
            next.restore(&[&first.checkpoint().unwrap()]).unwrap();
            got.extend(drain(&mut next, usize::MAX));
            got.sort();
            assert_eq!(got, all, "stopped after {stop}");
        }
        // Unwrapping off: the file is one (oversize) document.
        let mut whole = config(Framing::JsonDocuments);
        whole.unwrap_envelopes = false;
        let mut s = FileSource::new("ct".into(), whole, vec![path.clone()]);
        assert_eq!(drain(&mut s, usize::MAX).len(), 1);
    }
}

#[cfg(test)]
mod glob_tests {
    use super::*;

    #[test]
    fn a_symlink_loop_fifos_and_dangling_links_are_skipped_each_real_file_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("logs");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/a.log"), "x\n").unwrap();
        // `sub/loop` points back at `logs`: `**` would walk logs/sub/loop/sub/loop/... .
        std::os::unix::fs::symlink(&d, d.join("sub/loop")).unwrap();
        std::os::unix::fs::symlink(d.join("missing.log"), d.join("dangling.log")).unwrap();
        assert!(std::process::Command::new("mkfifo").arg(d.join("pipe.log")).status().unwrap().success());
        std::fs::create_dir(d.join("dir.log")).unwrap();
        let resources = ward_engine::resources::Resources::new(dir.path());
        let files = expand_path(&resources, "logs/**/*.log").unwrap();
        assert_eq!(files, vec![d.join("sub/a.log")], "one real file, read once");
        assert!(expand_path(&resources, "logs/*.log").unwrap_err().to_string().contains("no regular file"));
    }
}
