//! The `parse` operator: turns raw records into fields, in one of the supported formats or
//! by detecting the format per record. Records that do not parse are quarantined with a
//! reason and their position; header lines (Zeek `#...`, the CSV header) are consumed and
//! counted as filtered.

pub mod cef;
pub mod csv;
pub mod json;
pub mod kv;
pub mod leef;
pub mod syslog;
pub mod vpc_flow;
pub mod writer;
pub mod zeek;

use std::collections::HashMap;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use ward_engine::batch::{EventBatch, Origin};
use ward_engine::component::{Operator, OperatorFactory, OperatorOutput, StreamKind, WorkerContext};
use ward_engine::quarantine::Reason;
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};

use self::writer::FieldWriter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Detect per record: JSON, syslog (with CEF/LEEF/kv messages), CEF, LEEF, Zeek TSV, key=value.
    #[default]
    Auto,
    Json,
    Syslog,
    Cef,
    Leef,
    Kv,
    /// Zeek TSV logs with `#fields` headers.
    ZeekTsv,
    /// CSV whose first line is a header.
    Csv,
    /// Amazon VPC flow logs in the text format (default v2 fields, or those a header names).
    VpcFlow,
}

/// Parse raw records into fields.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParseConfig {
    /// Record format; `auto` detects it per record (CSV must be named explicitly).
    #[serde(default)]
    pub format: Format,
    /// Records longer than this many bytes are quarantined as `oversize`.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// IANA zone for syslog timestamps without an offset (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Year for RFC 3164 syslog timestamps (default: the current year).
    #[serde(default)]
    pub syslog_year: Option<i32>,
}

fn default_max_record_bytes() -> usize {
    1 << 20
}

impl ComponentConfig for ParseConfig {
    const TYPE: &'static str = "parse";
    const SECTION: Section = Section::Operator;
    const DESCRIPTION: &'static str =
        "Parse raw records (JSON, syslog 3164/5424, CEF, LEEF, Zeek TSV/JSON, key=value, CSV) into fields";
    const ACCEPTS: &'static [StreamKind] = &[StreamKind::Records];
    const OUTPUT: Option<StreamKind> = Some(StreamKind::Events);

    fn build(self, _ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        let timezone = match &self.timezone {
            Some(z) => z.parse::<chrono_tz::Tz>().map_err(|e| anyhow::anyhow!("timezone `{z}`: {e}"))?,
            None => chrono_tz::UTC,
        };
        ward_engine::limits::check_record_bytes(self.max_record_bytes)?;
        Ok(Built::Operator(Arc::new(ParseFactory {
            format: self.format,
            max_record_bytes: self.max_record_bytes,
            syslog: syslog::SyslogOptions { timezone, year: self.syslog_year, parse_message: true },
        })))
    }
}

struct ParseFactory {
    format: Format,
    max_record_bytes: usize,
    syslog: syslog::SyslogOptions,
}

impl OperatorFactory for ParseFactory {
    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Operator>> {
        Ok(Box::new(Parser::new(ctx.component_id.clone(), self.format, self.max_record_bytes, self.syslog)))
    }
}

/// Per-file state of the header-driven formats.
#[derive(Default)]
struct PartitionState {
    zeek: zeek::ZeekHeader,
    csv: csv::CsvState,
    vpc_flow: vpc_flow::VpcFlowState,
}

pub struct Parser {
    component: Arc<str>,
    format: Format,
    max_record_bytes: usize,
    syslog: syslog::SyslogOptions,
    partitions: HashMap<(Arc<str>, Arc<str>), PartitionState>,
    /// Slots and heap bytes per record in the last batch: the next batch's are reserved once
    /// from them instead of growing by doubling (each growth copies everything so far).
    slots_per_row: usize,
    heap_per_row: usize,
}

/// What became of one record.
enum Outcome {
    Event(&'static str),
    Header,
    Rejected(Reason, String),
}

impl Parser {
    pub fn new(component: Arc<str>, format: Format, max_record_bytes: usize, syslog: syslog::SyslogOptions) -> Self {
        Parser {
            component,
            format,
            max_record_bytes,
            syslog,
            partitions: HashMap::new(),
            slots_per_row: 0,
            heap_per_row: 0,
        }
    }

    fn parse_one(&mut self, text: &str, origin: &Origin, w: &mut FieldWriter<'_>) -> Outcome {
        let t = text.trim_end_matches(['\r', '\n']);
        match self.format {
            Format::Json => run(json::parse_json(t, w), "json", Reason::InvalidJson),
            Format::Syslog => run(syslog::parse_syslog(t, &self.syslog, w), "syslog", Reason::InvalidSyslog),
            Format::Cef => run(cef::parse_cef(t.trim_start(), w), "cef", Reason::InvalidCef),
            Format::Leef => run(leef::parse_leef(t.trim_start(), w), "leef", Reason::InvalidLeef),
            Format::Kv => run(kv::parse_kv(t, w).map(|_| ()), "kv", Reason::InvalidKv),
            Format::ZeekTsv => self.zeek(t, origin, w),
            Format::Csv => {
                let state = self.partitions.entry(partition_key(origin)).or_default();
                match state.csv.parse_line(t, w) {
                    Ok(true) => Outcome::Event("csv"),
                    Ok(false) => Outcome::Header,
                    Err(e) => Outcome::Rejected(Reason::InvalidCsv, e),
                }
            }
            Format::VpcFlow => self.vpc_flow(t, origin, w),
            Format::Auto => {
                let s = t.trim_start();
                match s.as_bytes().first() {
                    Some(b'{') => run(json::parse_json(s, w), "json", Reason::InvalidJson),
                    Some(b'<') => run(syslog::parse_syslog(s, &self.syslog, w), "syslog", Reason::InvalidSyslog),
                    Some(b'#') => self.zeek(t, origin, w),
                    _ if s.starts_with("CEF:") => run(cef::parse_cef(s, w), "cef", Reason::InvalidCef),
                    _ if s.starts_with("LEEF:") => run(leef::parse_leef(s, w), "leef", Reason::InvalidLeef),
                    _ if t.contains('\t')
                        && self.partitions.get(&partition_key(origin)).is_some_and(|p| p.zeek.has_fields()) =>
                    {
                        self.zeek(t, origin, w)
                    }
                    _ if vpc_flow::is_header(s) || vpc_flow::looks_like_default_row(s) => self.vpc_flow(s, origin, w),
                    _ if self.partitions.get(&partition_key(origin)).is_some_and(|p| p.vpc_flow.has_header()) => {
                        self.vpc_flow(s, origin, w)
                    }
                    _ if kv::looks_like_kv(s) => run(kv::parse_kv(s, w).map(|_| ()), "kv", Reason::InvalidKv),
                    _ => Outcome::Rejected(Reason::UnknownFormat, "no format matched (auto-detection)".into()),
                }
            }
        }
    }

    fn vpc_flow(&mut self, t: &str, origin: &Origin, w: &mut FieldWriter<'_>) -> Outcome {
        let state = self.partitions.entry(partition_key(origin)).or_default();
        match state.vpc_flow.parse_line(t, w) {
            Ok(true) => Outcome::Event("vpc_flow"),
            Ok(false) => Outcome::Header,
            Err(e) => Outcome::Rejected(Reason::InvalidVpcFlow, e),
        }
    }

    fn zeek(&mut self, t: &str, origin: &Origin, w: &mut FieldWriter<'_>) -> Outcome {
        let state = self.partitions.entry(partition_key(origin)).or_default();
        if t.starts_with('#') {
            return match state.zeek.apply(t) {
                Ok(()) => Outcome::Header,
                Err(e) => Outcome::Rejected(Reason::InvalidZeek, e),
            };
        }
        run(state.zeek.parse_row(t, w), "zeek_tsv", Reason::InvalidZeek)
    }
}

/// Room for `more` slots; an empty vector too small is replaced rather than grown (realloc
/// would copy its whole old allocation).
/// Header state is per (source, partition); the key is built only by the stateful formats.
fn partition_key(o: &Origin) -> (Arc<str>, Arc<str>) {
    (o.source.clone(), o.partition.clone())
}

fn run(r: Result<(), String>, format: &'static str, reason: Reason) -> Outcome {
    match r {
        Ok(()) => Outcome::Event(format),
        Err(e) => Outcome::Rejected(reason, e),
    }
}

impl Operator for Parser {
    fn process(&mut self, mut batch: EventBatch, _epoch: u64, out: &mut OperatorOutput) {
        let mut keep = vec![true; batch.len()];
        let mut rejected: Vec<(usize, Reason, String)> = Vec::new();
        {
            let parts = batch.parts();
            let (raw, origins) = (parts.raw, parts.origins);
            let (before, rows) = (parts.slots.len(), parts.rows.len());
            ward_engine::batch::reserve_slots(parts.slots, rows * self.slots_per_row);
            let mut heap = parts.heap;
            let heap_before = heap.len();
            heap.reserve(rows * self.heap_per_row);
            let mut w = FieldWriter::new(raw, heap, parts.slots);
            for (i, row) in parts.rows.iter_mut().enumerate() {
                w.begin();
                // Fields the source gave the record (e.g. Kafka key and headers) come first.
                for k in row.slots_start..row.slots_end {
                    let slot = w.slots[k as usize];
                    w.slots.push(slot);
                }
                let payload = raw.payload(row.raw);
                let outcome = if payload.len() > self.max_record_bytes {
                    Outcome::Rejected(
                        Reason::Oversize,
                        format!("{} bytes > max_record_bytes {}", payload.len(), self.max_record_bytes),
                    )
                } else {
                    match simdutf8::compat::from_utf8(payload) {
                        Err(e) => Outcome::Rejected(Reason::InvalidUtf8, e.to_string()),
                        Ok(text) if text.trim().is_empty() => Outcome::Rejected(Reason::Empty, "empty record".into()),
                        Ok(text) => self.parse_one(text, &origins[row.origin as usize], &mut w),
                    }
                };
                match outcome {
                    Outcome::Event(format) => {
                        w.put_str("ward.parser", format);
                        row.slots_start = w.row_start as u32;
                        row.slots_end = w.slots.len() as u32;
                    }
                    Outcome::Header => {
                        w.rollback();
                        keep[i] = false;
                        out.filtered += 1;
                    }
                    Outcome::Rejected(reason, detail) => {
                        w.rollback();
                        keep[i] = false;
                        rejected.push((i, reason, detail));
                    }
                }
            }
            self.slots_per_row = (w.slots.len() - before).div_ceil(rows.max(1));
            self.heap_per_row = (w.heap.len() - heap_before).div_ceil(rows.max(1));
        }
        out.emit(batch, &keep, rejected, &self.component);
    }
}

/// Everything parsed from one record, as JSON (test helper shared by the parser modules).
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ward_engine::quarantine::QuarantineRecord;

    pub fn parse_with(
        text: &str,
        mut f: impl FnMut(&str, &mut FieldWriter<'_>) -> Result<(), String>,
    ) -> Result<serde_json::Value, String> {
        let mut b = EventBatch::new();
        let o = b.origin_index(&"s".into(), &"p".into());
        b.push_raw(o, 1, text.as_bytes()).expect("small test records fit");
        {
            let parts = b.parts();
            let t = std::str::from_utf8(parts.raw.as_bytes()).unwrap();
            let mut w = FieldWriter::new(parts.raw, parts.heap, parts.slots);
            w.begin();
            f(t, &mut w)?;
            parts.rows[0].slots_end = w.slots.len() as u32;
        }
        Ok(b.row_to_json(0).get("ext").cloned().unwrap_or(serde_json::json!({})))
    }

    fn run_parser(format: Format, lines: &[&[u8]]) -> (Vec<serde_json::Value>, Vec<QuarantineRecord>, u64) {
        let mut p =
            Parser::new("parse".into(), format, 200, syslog::SyslogOptions { year: Some(2024), ..Default::default() });
        let mut b = EventBatch::new();
        let o = b.origin_index(&"src".into(), &"file.log".into());
        for (i, l) in lines.iter().enumerate() {
            b.push_raw(o, i as u64 + 1, l).expect("small test records fit");
        }
        let mut out = OperatorOutput::default();
        p.process(b, 0, &mut out);
        let events = out.events.iter().flat_map(|b| (0..b.len()).map(move |i| b.row_to_json(i))).collect();
        (events, out.quarantine, out.filtered)
    }

    #[test]
    fn auto_detects_each_format_and_accounts_for_every_record() {
        let lines: Vec<&[u8]> = vec![
            br#"{"a":1}"#,
            b"<38>Mar  5 10:00:01 web-01 sshd[1]: Accepted publickey for bob from 10.0.0.1 port 22 ssh2",
            b"CEF:0|V|P|1|100|n|5|src=10.0.0.1",
            b"LEEF:1.0|V|P|1|42|src=10.0.0.2",
            b"action=allow srcip=10.0.0.3",
            b"#separator \\x09",
            b"#fields\tts\tuid",
            b"1700000000.1\tC1",
            b"{\"broken\": ",
            b"\xff\xfe not utf8",
            b"",
            b"plain words nobody understands",
            &[b'x'; 300],
        ];
        let (events, q, filtered) = run_parser(Format::Auto, &lines);
        let parsers: Vec<_> = events.iter().map(|e| e["ext"]["ward.parser"].as_str().unwrap().to_string()).collect();
        assert_eq!(parsers, ["json", "syslog", "cef", "leef", "kv", "zeek_tsv"]);
        assert_eq!(filtered, 2, "two Zeek header lines");
        let reasons: Vec<_> = q.iter().map(|r| (r.reason, r.offset)).collect();
        assert_eq!(
            reasons,
            [
                (Reason::InvalidJson, 9),
                (Reason::InvalidUtf8, 10),
                (Reason::Empty, 11),
                (Reason::UnknownFormat, 12),
                (Reason::Oversize, 13)
            ]
        );
        assert_eq!(events.len() as u64 + filtered + q.len() as u64, lines.len() as u64, "ledger");
        assert_eq!(events[0]["ward.offset"], 1);
        assert_eq!(q[0].partition.as_ref(), "file.log");
    }

    #[test]
    fn csv_needs_its_header_per_file() {
        let (events, q, filtered) = run_parser(Format::Csv, &[b"host,crit", b"dc1,30", b"web,1,extra"]);
        assert_eq!(filtered, 1);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["ext"]["host"], "dc1");
        assert_eq!(q[0].reason, Reason::InvalidCsv);
    }

    #[test]
    fn explicit_format_rejects_other_shapes() {
        let (events, q, _) = run_parser(Format::Json, &[b"<38>Mar  5 10:00:01 h a: b"]);
        assert!(events.is_empty());
        assert_eq!(q[0].reason, Reason::InvalidJson);
        let (_, q, _) = run_parser(Format::Syslog, &[b"<38>Mar  5 10:0"]);
        assert_eq!(q[0].reason, Reason::InvalidSyslog);
        let (_, q, _) = run_parser(Format::Cef, &[b"CEF:0|only"]);
        assert_eq!(q[0].reason, Reason::InvalidCef);
        let (_, q, _) = run_parser(Format::Leef, &[b"LEEF:1.0"]);
        assert_eq!(q[0].reason, Reason::InvalidLeef);
        let (_, q, _) = run_parser(Format::Kv, &[b"x=\"open"]);
        assert_eq!(q[0].reason, Reason::InvalidKv);
        let (_, q, _) = run_parser(Format::ZeekTsv, &[b"1\t2"]);
        assert_eq!(q[0].reason, Reason::InvalidZeek);
    }

    #[test]
    fn json_values_reference_the_payload() {
        let (events, _, _) = run_parser(Format::Json, &[br#"{"user":"alice","n":3}"#]);
        assert_eq!(events[0]["ext"]["user"], "alice");
        assert_eq!(events[0]["ext"]["n"], 3);
    }
}
