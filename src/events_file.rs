//! Events files for the detection engineer's commands (`ward rules test`, `ward packs
//! detect`): read as the pipeline's file source reads them (plain or gzip, envelopes split,
//! bounded records), one batch at a time, and parsed as the parse operator parses them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use ward_connectors::sources::file::{FileSource, FileSourceConfig, Framing};
use ward_engine::batch::EventBatch;
use ward_engine::component::{Operator, OperatorOutput, Source, SourcePoll};
use ward_engine::quarantine::QuarantineRecord;
use ward_operators::parse::Parser;

/// Records longer than this are reported and skipped.
pub const MAX_RECORD: usize = 16 << 20;

/// How an events file is read (plain or gzip): JSON lines and raw lines by
/// line (index = 0-based line number; blank lines count but are no events); pretty-printed
/// JSON documents and delivery envelopes (`{"Records": [...]}`, `{"records": [...]}`,
/// EventBridge `detail`) by record (index = 0-based record number). Decided from the first
/// line: a complete JSON object that is no envelope means JSON lines.
pub fn framing(path: &Path) -> anyhow::Result<Framing> {
    use std::io::{BufRead, Read};
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut head = std::io::BufReader::new(file);
    let gzip = head.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> =
        if gzip { Box::new(flate2::bufread::MultiGzDecoder::new(head)) } else { Box::new(head) };
    // The first line, up to 1 MiB: longer ones are envelopes or single documents anyway.
    let mut first = Vec::new();
    std::io::BufReader::new(reader.take(1 << 20)).read_until(b'\n', &mut first)?;
    let text = String::from_utf8_lossy(&first);
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if !trimmed.starts_with('{') && !trimmed.starts_with('[') {
        return Ok(Framing::Lines);
    }
    Ok(match serde_json::from_str::<serde_json::Value>(trimmed) {
        Ok(serde_json::Value::Object(o))
            if !(o.get("Records").or(o.get("records")).is_some_and(|v| v.is_array())
                || (o.contains_key("detail-type") && o.get("detail").is_some_and(|v| v.is_object()))) =>
        {
            Framing::Lines
        }
        _ => Framing::JsonDocuments,
    })
}

/// An events file being read, one batch at a time.
pub struct EventsFile {
    reader: FileSource,
    pub framing: Framing,
}

impl EventsFile {
    pub fn open(path: &Path, source: Arc<str>) -> anyhow::Result<EventsFile> {
        let framing = framing(path)?;
        let config = FileSourceConfig {
            path: path.display().to_string(),
            framing,
            compression: Default::default(),
            max_record_bytes: MAX_RECORD,
            unwrap_envelopes: true,
        };
        Ok(EventsFile { reader: FileSource::new(source, config, vec![path.to_path_buf()]), framing })
    }

    /// The next batch of records and the records that could not be read; `None` at the end.
    pub fn next(&mut self) -> anyhow::Result<Option<(Option<EventBatch>, Vec<QuarantineRecord>)>> {
        loop {
            return Ok(Some(match self.reader.poll(1024)? {
                SourcePoll::Batch(b) => (Some(b), Vec::new()),
                SourcePoll::Both(b, q) => (Some(b), q),
                SourcePoll::Quarantine(q) => (None, q),
                SourcePoll::Pending(_) => continue,
                SourcePoll::Done => return Ok(None),
            }));
        }
    }
}

/// A batch of records, parsed.
pub struct Parsed {
    /// Non-blank records.
    pub events: u64,
    pub batches: Vec<EventBatch>,
    /// Records no parser understood and are searched as plain messages (Sigma keyword rules),
    /// or skipped: (0-based index, what happened).
    pub notes: Vec<(u64, String)>,
    /// Indices of the records parsed as plain messages.
    pub plain: Vec<u64>,
}

/// Parses a batch of records (positions are 1-based; indices in notes 0-based). Records no
/// parser understands become `{"message": <the record>}`.
pub fn parse(parser: &mut Parser, mut batch: EventBatch, source: &Arc<str>, partition: &Arc<str>) -> Parsed {
    let blank: Vec<bool> =
        (0..batch.len()).map(|r| batch.raw_payload(r).iter().all(|b| b.is_ascii_whitespace())).collect();
    batch.retain_rows(|r| !blank[r]);
    let events = batch.len() as u64;
    // The records as read, for those no parser understands (one copy per batch, not per record).
    let raws = batch.clone();
    let row_of: HashMap<u64, usize> = (0..raws.len()).map(|r| (raws.provenance(r).offset, r)).collect();
    let mut parsed = OperatorOutput::default();
    parser.process(batch, 0, &mut parsed);
    let mut batches = std::mem::take(&mut parsed.events);
    let mut notes = Vec::new();
    let mut plain_indices = Vec::new();
    if !parsed.quarantine.is_empty() {
        let mut plain = EventBatch::new();
        let o = plain.origin_index(source, partition);
        for q in &parsed.quarantine {
            let index = q.offset.saturating_sub(1);
            let Some(&row) = row_of.get(&q.offset) else { continue };
            let raw = raws.raw_payload(row);
            let Ok(text) = std::str::from_utf8(raw) else {
                notes.push((index, "is not valid UTF-8; skipped".to_string()));
                continue;
            };
            if text.trim_start().starts_with('{') {
                notes.push((index, format!("is not valid JSON ({}); searched as a plain message", q.detail)));
            }
            if plain.push_raw(o, q.offset, serde_json::json!({ "message": text }).to_string().as_bytes()).is_err() {
                notes.push((index, "does not fit in a batch; skipped".to_string()));
                continue;
            }
            plain_indices.push(index);
        }
        let mut out = OperatorOutput::default();
        parser.process(plain, 0, &mut out);
        batches.extend(out.events);
    }
    Parsed { events, batches, notes, plain: plain_indices }
}
