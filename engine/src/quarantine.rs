//! Quarantine: records Ward could not process, with a reason from a fixed taxonomy, the
//! component that rejected them, their source position and the payload, escaped.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::batch::EventBatch;

/// Why a record was quarantined. The snake_case names are the `reason` label of
/// `ward_quarantined_total` and the `reason` field of quarantine records; documented in the README.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The payload is not valid UTF-8.
    InvalidUtf8,
    /// The payload is longer than the source's `max_record_bytes`.
    Oversize,
    /// The payload is empty or only white space.
    Empty,
    /// The input could not be decompressed or read (corrupt gzip, I/O error mid-file).
    ReadError,
    /// No configured format recognised the record (auto-detection failed).
    UnknownFormat,
    /// JSON that does not parse, or is not an object.
    InvalidJson,
    /// Syslog without a valid `<PRI>` header, timestamp or host, or cut short.
    InvalidSyslog,
    /// CEF header with fewer than 7 pipe-separated fields, or a bad extension.
    InvalidCef,
    /// LEEF header with fewer than 5 fields, or a bad attribute list.
    InvalidLeef,
    /// key=value text with no pair, or an unterminated quote.
    InvalidKv,
    /// A CSV row whose field count differs from the header, or bad quoting.
    InvalidCsv,
    /// A Zeek TSV row before any `#fields` header, or with the wrong field count.
    InvalidZeek,
    /// A timestamp field that no configured format parses.
    InvalidTimestamp,
    /// A value that cannot be coerced to its field's type (bad IP, port, number).
    InvalidValue,
    /// A field the pack requires is missing.
    MissingField,
    /// An event older than the allowed lateness behind the watermark.
    LateEvent,
    /// A stateful operator needs an event time and the record has none.
    MissingEventTime,
    /// An acknowledgement or containment update for a case the `sla` operator does not hold
    /// (never opened, already contained, or past its retention).
    UnknownCase,
    /// A VPC flow log record whose field count differs from its format.
    InvalidVpcFlow,
}

impl Reason {
    pub const ALL: &'static [Reason] = &[
        Reason::InvalidUtf8,
        Reason::Oversize,
        Reason::Empty,
        Reason::ReadError,
        Reason::UnknownFormat,
        Reason::InvalidJson,
        Reason::InvalidSyslog,
        Reason::InvalidCef,
        Reason::InvalidLeef,
        Reason::InvalidKv,
        Reason::InvalidCsv,
        Reason::InvalidZeek,
        Reason::InvalidTimestamp,
        Reason::InvalidValue,
        Reason::MissingField,
        Reason::LateEvent,
        Reason::MissingEventTime,
        Reason::UnknownCase,
        Reason::InvalidVpcFlow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::Oversize => "oversize",
            Reason::Empty => "empty",
            Reason::ReadError => "read_error",
            Reason::UnknownFormat => "unknown_format",
            Reason::InvalidJson => "invalid_json",
            Reason::InvalidSyslog => "invalid_syslog",
            Reason::InvalidCef => "invalid_cef",
            Reason::InvalidLeef => "invalid_leef",
            Reason::InvalidKv => "invalid_kv",
            Reason::InvalidCsv => "invalid_csv",
            Reason::InvalidZeek => "invalid_zeek",
            Reason::InvalidTimestamp => "invalid_timestamp",
            Reason::InvalidValue => "invalid_value",
            Reason::MissingField => "missing_field",
            Reason::LateEvent => "late_event",
            Reason::MissingEventTime => "missing_event_time",
            Reason::UnknownCase => "unknown_case",
            Reason::InvalidVpcFlow => "invalid_vpc_flow",
        }
    }
}

/// Payloads longer than this are cut in quarantine records (the length is kept).
pub const MAX_QUARANTINED_PAYLOAD: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    pub reason: Reason,
    /// Human-readable detail, e.g. the parser's message.
    pub detail: String,
    /// The component that rejected the record.
    pub component: Arc<str>,
    pub source: Arc<str>,
    pub partition: Arc<str>,
    pub offset: u64,
    pub payload: Vec<u8>,
    pub payload_len: usize,
}

impl QuarantineRecord {
    /// Quarantines row `row` of `batch`.
    pub fn from_row(
        batch: &EventBatch,
        row: usize,
        component: &Arc<str>,
        reason: Reason,
        detail: impl Into<String>,
    ) -> Self {
        let p = batch.provenance(row);
        let payload = batch.raw_payload(row);
        QuarantineRecord {
            reason,
            detail: detail.into(),
            component: component.clone(),
            source: p.source,
            partition: p.partition,
            offset: p.offset,
            payload: payload[..payload.len().min(MAX_QUARANTINED_PAYLOAD)].to_vec(),
            payload_len: payload.len(),
        }
    }

    /// Quarantines an alert (its JSON is the payload).
    pub fn from_alert(
        alert: &crate::alert::Alert,
        component: &Arc<str>,
        reason: Reason,
        detail: impl Into<String>,
    ) -> Self {
        let position =
            (alert.origin.source.as_str().into(), alert.origin.partition.as_str().into(), alert.origin.offset);
        Self::from_json(alert, position, component, reason, detail.into())
    }

    /// Quarantines a case record (its JSON is the payload; its position is the case and the
    /// number of alerts it held).
    pub fn from_case(
        case: &crate::case::CaseRecord,
        component: &Arc<str>,
        reason: Reason,
        detail: impl Into<String>,
    ) -> Self {
        Self::from_json(
            case,
            ("cases".into(), case.case_id.as_str().into(), case.alerts),
            component,
            reason,
            detail.into(),
        )
    }

    fn from_json(
        record: &impl serde::Serialize,
        (source, partition, offset): (Arc<str>, Arc<str>, u64),
        component: &Arc<str>,
        reason: Reason,
        detail: String,
    ) -> Self {
        let payload = serde_json::to_vec(record).unwrap_or_default();
        QuarantineRecord {
            reason,
            detail,
            component: component.clone(),
            source,
            partition,
            offset,
            payload_len: payload.len(),
            payload: payload[..payload.len().min(MAX_QUARANTINED_PAYLOAD)].to_vec(),
        }
    }

    /// The record as one JSON object. The payload is escaped byte by byte (printable ASCII
    /// kept, everything else as `\n`, `\t`, `\xNN`), so it is safe in any terminal or log
    /// and the exact bytes can be recovered.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "reason": self.reason.as_str(),
            "detail": self.detail,
            "component": &*self.component,
            "ward.source": &*self.source,
            "ward.partition": &*self.partition,
            "ward.offset": self.offset,
            "payload_escaped": escape_payload(&self.payload),
            "payload_len": self.payload_len,
            "payload_truncated": self.payload_len > self.payload.len(),
        })
    }
}

/// Valid UTF-8 text stays readable; control characters, backslashes and invalid bytes are
/// escaped (`\n`, `\\`, `\u{1b}`, `\xff`), so the output is safe to print and lossless.
pub fn escape_payload(payload: &[u8]) -> String {
    let mut out = String::with_capacity(payload.len());
    for chunk in payload.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' || c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_escaped_losslessly() {
        let mut b = EventBatch::new();
        let o = b.origin_index(&"s".into(), &"f".into());
        b.push_raw(o, 3, "bad \"q\" \\ é \x1b[31m\n".as_bytes()).expect("small test records fit");
        b.push_raw(o, 4, b"\xff\xfe").expect("small test records fit");
        let q = QuarantineRecord::from_row(&b, 0, &"parse".into(), Reason::InvalidUtf8, "x");
        let j = q.to_json();
        assert_eq!(j["payload_escaped"], "bad \"q\" \\\\ é \\u{1b}[31m\\n");
        let q = QuarantineRecord::from_row(&b, 1, &"parse".into(), Reason::InvalidUtf8, "x");
        assert_eq!(q.to_json()["payload_escaped"], "\\xff\\xfe");
        assert_eq!(j["reason"], "invalid_utf8");
        assert_eq!(j["ward.offset"], 3);
    }

    #[test]
    fn reason_names_match_serde() {
        for r in Reason::ALL {
            let s = serde_json::to_value(r).unwrap();
            assert_eq!(s, r.as_str());
        }
    }
}
