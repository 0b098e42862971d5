//! Event batches: the unit operators exchange.
//!
//! A batch stores many events in a few flat vectors, so building, filtering and shipping a
//! batch costs a handful of allocations however many events it holds (DESIGN.md §3):
//! - `raw`: the payloads as the source read them; never changed after the source, so parsers
//!   can point into it instead of copying (borrowed strings);
//! - `heap`: bytes that operators derive (unescaped strings, lower-cased values, addresses);
//! - `slots`: every event's fields, `(key, value)`, each event owning a contiguous range;
//! - `rows`: per event, its slot range, raw payload and provenance.
//!
//! Strings are `StrRef`s into `raw` or `heap`. Invariant: every `Value::Str` and every
//! extension key refers to valid UTF-8 on character boundaries. It holds by construction: the
//! only ways to make such a reference are [`raw_ref`] and [`Heap::push_str`], which take
//! `&str`, and [`EventBatch::push_row_from`], which copies existing ones. (Row payloads,
//! `Row::raw`, are bytes and may be anything until parse validates them; `Value::Ip` points at
//! address bytes.) Batches are deserialized only from Ward's own serialization (timely
//! exchange between Ward processes).

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::fields::FieldId;

/// A range of bytes in a batch's `raw` (high bit clear) or `heap` (high bit set) buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct StrRef {
    off: u32,
    len: u32,
}

const HEAP_BIT: u32 = 1 << 31;

impl StrRef {
    #[inline]
    pub fn len(self) -> usize {
        self.len as usize
    }
    #[inline]
    pub fn is_empty(self) -> bool {
        self.len == 0
    }
    /// Whether the bytes live in the heap (else in the immutable raw payloads).
    #[inline]
    pub fn in_heap(self) -> bool {
        self.off & HEAP_BIT != 0
    }
    #[inline]
    fn start(self) -> usize {
        (self.off & !HEAP_BIT) as usize
    }
}

/// A field key: one of the ECS-lite core fields, or an extension field named by the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Key {
    Core(FieldId),
    Ext(StrRef),
}

/// A field value. Strings and addresses live in the batch's buffers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(StrRef),
    /// Milliseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// 4 or 16 address bytes in the heap.
    Ip(StrRef),
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    pub key: Key,
    pub value: Value,
}

/// Where a batch's events came from: a source component and one of its partitions
/// (a file path now, a Kafka topic-partition later).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub source: Arc<str>,
    pub partition: Arc<str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub slots_start: u32,
    pub slots_end: u32,
    pub raw: StrRef,
    /// Index into the batch's origins.
    pub origin: u32,
    /// Position within the origin partition: 1-based line number for files, offset for Kafka.
    pub offset: u64,
}

/// Provenance of one event: source, partition and position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub source: Arc<str>,
    pub partition: Arc<str>,
    pub offset: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EventBatch {
    pub raw: Vec<u8>,
    pub heap: Vec<u8>,
    pub slots: Vec<Slot>,
    pub rows: Vec<Row>,
    pub origins: Vec<Origin>,
}

/// Read access to string bytes of a batch, detached from `slots`/`rows` so that operators can
/// read values while writing new slots.
#[derive(Clone, Copy)]
pub struct Bytes<'a> {
    pub raw: &'a [u8],
    pub heap: &'a [u8],
}

impl<'a> Bytes<'a> {
    #[inline]
    pub fn bytes(&self, r: StrRef) -> &'a [u8] {
        let buf = if r.in_heap() { self.heap } else { self.raw };
        let start = r.start();
        &buf[start..start + r.len()]
    }
    /// The string a `Value::Str` or extension key refers to.
    #[inline]
    pub fn str(&self, r: StrRef) -> &'a str {
        let b = self.bytes(r);
        debug_assert!(std::str::from_utf8(b).is_ok(), "StrRef to invalid UTF-8");
        // SAFETY: string references are created only from `&str` (module invariant above),
        // and the bytes they cover are never modified afterwards (buffers only grow).
        unsafe { std::str::from_utf8_unchecked(b) }
    }

    /// A row payload as text, if it is valid UTF-8 (payloads are not validated by sources).
    pub fn payload_str(&self, r: StrRef) -> Option<&'a str> {
        simdutf8::basic::from_utf8(self.bytes(r)).ok()
    }
    /// Compares without UTF-8 validation (hot path of lookups by name).
    #[inline]
    pub fn eq(&self, r: StrRef, s: &str) -> bool {
        self.bytes(r) == s.as_bytes()
    }
    pub fn ip(&self, r: StrRef) -> Option<IpAddr> {
        let b = self.bytes(r);
        match b.len() {
            4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
            16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
            _ => None,
        }
    }
    pub fn key_name(&self, k: Key) -> &'a str {
        match k {
            Key::Core(id) => id.name(),
            Key::Ext(r) => self.str(r),
        }
    }
}

/// Appends derived bytes to a batch's heap.
pub struct Heap<'a>(pub &'a mut Vec<u8>);

impl Heap<'_> {
    /// Raw bytes (addresses, copies of existing strings): not a string reference by itself.
    #[inline]
    fn push_bytes(&mut self, b: &[u8]) -> StrRef {
        let off = self.0.len();
        self.0.extend_from_slice(b);
        StrRef { off: off as u32 | HEAP_BIT, len: b.len() as u32 }
    }
    #[inline]
    pub fn push_str(&mut self, s: &str) -> StrRef {
        self.push_bytes(s.as_bytes())
    }
    pub fn push_ip(&mut self, ip: IpAddr) -> StrRef {
        match ip {
            IpAddr::V4(v4) => self.push_bytes(&v4.octets()),
            IpAddr::V6(v6) => self.push_bytes(&v6.octets()),
        }
    }
}

/// A reference to a substring of `raw` if `s` points into it, found by address.
#[inline]
pub fn raw_ref(raw: &[u8], s: &str) -> Option<StrRef> {
    let base = raw.as_ptr() as usize;
    let p = s.as_ptr() as usize;
    if p >= base && p + s.len() <= base + raw.len() {
        Some(StrRef { off: (p - base) as u32, len: s.len() as u32 })
    } else {
        None
    }
}

impl EventBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(rows: usize, raw_bytes: usize) -> Self {
        EventBatch {
            raw: Vec::with_capacity(raw_bytes),
            heap: Vec::new(),
            slots: Vec::with_capacity(rows * 16),
            rows: Vec::with_capacity(rows),
            origins: Vec::new(),
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn bytes(&self) -> Bytes<'_> {
        Bytes { raw: &self.raw, heap: &self.heap }
    }

    /// Index of an origin, added if new. Sources add one per partition and batch.
    pub fn origin_index(&mut self, source: &Arc<str>, partition: &Arc<str>) -> u32 {
        if let Some(i) =
            self.origins.iter().rposition(|o| Arc::ptr_eq(&o.source, source) && Arc::ptr_eq(&o.partition, partition))
        {
            return i as u32;
        }
        self.origins.push(Origin { source: source.clone(), partition: partition.clone() });
        (self.origins.len() - 1) as u32
    }

    /// Appends an unparsed record (what sources produce).
    pub fn push_raw(&mut self, origin: u32, offset: u64, payload: &[u8]) {
        let off = self.raw.len();
        self.raw.extend_from_slice(payload);
        let at = self.slots.len() as u32;
        self.rows.push(Row {
            slots_start: at,
            slots_end: at,
            raw: StrRef { off: off as u32, len: payload.len() as u32 },
            origin,
            offset,
        });
    }

    pub fn raw_payload(&self, row: usize) -> &[u8] {
        self.bytes().bytes(self.rows[row].raw)
    }

    pub fn row_slots(&self, row: usize) -> &[Slot] {
        let r = &self.rows[row];
        &self.slots[r.slots_start as usize..r.slots_end as usize]
    }

    pub fn provenance(&self, row: usize) -> Provenance {
        let r = &self.rows[row];
        let o = &self.origins[r.origin as usize];
        Provenance { source: o.source.clone(), partition: o.partition.clone(), offset: r.offset }
    }

    /// First value of a core field in a row.
    pub fn get(&self, row: usize, field: FieldId) -> Option<Value> {
        self.row_slots(row).iter().find(|s| s.key == Key::Core(field)).map(|s| s.value)
    }

    /// First value of a field in a row by name: an ECS-lite core field, else an extension field.
    pub fn get_by_name(&self, row: usize, name: &str) -> Option<Value> {
        if let Some(id) = FieldId::lookup(name) {
            if let Some(v) = self.get(row, id) {
                return Some(v);
            }
        }
        let b = self.bytes();
        self.row_slots(row).iter().find(|s| matches!(s.key, Key::Ext(_)) && b.key_name(s.key) == name).map(|s| s.value)
    }

    /// Keeps the rows for which `keep` is true, in order. Slots of dropped rows stay in the
    /// buffers until the batch is dropped: cheaper than compacting.
    pub fn retain_rows(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let mut i = 0;
        self.rows.retain(|_| {
            let k = keep(i);
            i += 1;
            k
        });
    }

    /// Copies one row of `other` into this batch (used to regroup rows, e.g. on exchange).
    pub fn push_row_from(&mut self, other: &EventBatch, row: usize) {
        let src = &other.rows[row];
        let o = &other.origins[src.origin as usize];
        let origin = self.origin_index(&o.source, &o.partition);
        let ob = other.bytes();
        let raw_bytes = ob.bytes(src.raw);
        let raw_off = self.raw.len();
        self.raw.extend_from_slice(raw_bytes);
        // Re-home every string the row uses into this batch's heap; the raw payload goes to raw.
        let start = self.slots.len() as u32;
        for s in other.row_slots(row) {
            let key = match s.key {
                Key::Core(f) => Key::Core(f),
                Key::Ext(r) => Key::Ext(Heap(&mut self.heap).push_bytes(ob.bytes(r))),
            };
            let value = match s.value {
                Value::Str(r) => Value::Str(Heap(&mut self.heap).push_bytes(ob.bytes(r))),
                Value::Ip(r) => Value::Ip(Heap(&mut self.heap).push_bytes(ob.bytes(r))),
                v => v,
            };
            self.slots.push(Slot { key, value });
        }
        self.rows.push(Row {
            slots_start: start,
            slots_end: self.slots.len() as u32,
            raw: StrRef { off: raw_off as u32, len: raw_bytes.len() as u32 },
            origin,
            offset: src.offset,
        });
    }

    /// Approximate payload size, for MB/s figures.
    pub fn raw_len(&self) -> usize {
        self.rows.iter().map(|r| r.raw.len()).sum()
    }

    /// A row's fields as a JSON object: core fields by dotted name, extension fields under
    /// `ext`, provenance under `ward.*`. Used by the JSONL sink, alerts and tests.
    pub fn row_to_json(&self, row: usize) -> serde_json::Value {
        use serde_json::{Map, Value as J};
        let b = self.bytes();
        let mut core = Map::new();
        let mut ext = Map::new();
        for s in self.row_slots(row) {
            let v = value_to_json(b, s.value);
            match s.key {
                Key::Core(f) => insert_multi(&mut core, f.name(), v),
                Key::Ext(k) => insert_multi(&mut ext, b.str(k), v),
            }
        }
        let p = self.provenance(row);
        core.insert("ward.source".into(), J::from(&*p.source));
        core.insert("ward.partition".into(), J::from(&*p.partition));
        core.insert("ward.offset".into(), J::from(p.offset));
        if !ext.is_empty() {
            core.insert("ext".into(), J::Object(ext));
        }
        J::Object(core)
    }
}

fn insert_multi(map: &mut serde_json::Map<String, serde_json::Value>, k: &str, v: serde_json::Value) {
    use serde_json::Value as J;
    match map.get_mut(k) {
        None => {
            map.insert(k.to_owned(), v);
        }
        Some(J::Array(a)) => a.push(v),
        Some(prev) => {
            let first = prev.take();
            *prev = J::Array(vec![first, v]);
        }
    }
}

/// Renders a value as JSON (timestamps as RFC 3339 with milliseconds).
pub fn value_to_json(b: Bytes<'_>, v: Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(x) => J::Bool(x),
        Value::Int(x) => J::from(x),
        Value::Float(x) => serde_json::Number::from_f64(x).map(J::Number).unwrap_or(J::Null),
        Value::Str(r) => J::from(b.str(r)),
        Value::Timestamp(ms) => J::from(format_timestamp_ms(ms)),
        Value::Ip(r) => b.ip(r).map(|ip| J::from(ip.to_string())).unwrap_or(J::Null),
    }
}

/// Splits a stream of JSON documents (JSON lines, or pretty-printed documents one after
/// another, as in EVTX exports) into the text of each document.
pub fn split_json_documents(text: &str) -> Result<Vec<&str>, String> {
    let mut docs = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<serde::de::IgnoredAny>();
    let mut start = 0;
    while let Some(item) = stream.next() {
        item.map_err(|e| e.to_string())?;
        let end = stream.byte_offset();
        docs.push(text[start..end].trim());
        start = end;
    }
    Ok(docs)
}

pub fn format_timestamp_ms(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::ids;

    #[test]
    fn raw_refs_borrow_and_heap_refs_copy() {
        let mut b = EventBatch::new();
        let src: Arc<str> = "s".into();
        let part: Arc<str> = "p".into();
        let o = b.origin_index(&src, &part);
        b.push_raw(o, 1, b"hello world");
        let raw = b.raw.clone();
        let text = std::str::from_utf8(&b.raw).unwrap();
        let r = raw_ref(&b.raw, &text[6..11]).unwrap();
        assert_eq!(b.bytes().str(r), "world");
        assert!(raw_ref(&b.raw, std::str::from_utf8(&raw[0..2]).unwrap()).is_none(), "a copy elsewhere is not in raw");
        let h = Heap(&mut b.heap).push_str("derived");
        assert_eq!(b.bytes().str(h), "derived");
        assert_eq!(b.bytes().str(r), "world");
    }

    #[test]
    fn push_row_from_rehomes_strings_and_origin() {
        let mut a = EventBatch::new();
        let o = a.origin_index(&"src".into(), &"f.log".into());
        a.push_raw(o, 7, b"{\"x\":1}");
        let k = Heap(&mut a.heap).push_str("x");
        let v = Heap(&mut a.heap).push_str("value");
        let ip = Heap(&mut a.heap).push_ip("10.1.2.3".parse().unwrap());
        a.slots.push(Slot { key: Key::Ext(k), value: Value::Str(v) });
        a.slots.push(Slot { key: Key::Core(ids::SOURCE_IP), value: Value::Ip(ip) });
        a.rows[0].slots_end = 2;

        let mut b = EventBatch::new();
        let o2 = b.origin_index(&"other".into(), &"g".into());
        b.push_raw(o2, 1, b"zzz");
        b.push_row_from(&a, 0);
        assert_eq!(b.len(), 2);
        assert_eq!(b.raw_payload(1), b"{\"x\":1}");
        let j = b.row_to_json(1);
        assert_eq!(j["ext"]["x"], "value");
        assert_eq!(j["source.ip"], "10.1.2.3");
        assert_eq!(j["ward.partition"], "f.log");
        assert_eq!(j["ward.offset"], 7);
    }

    #[test]
    fn splits_concatenated_documents() {
        let docs = split_json_documents("{\"a\":1}\n{\n \"b\": {\"c\": 2}\n}\n").unwrap();
        assert_eq!(docs, vec!["{\"a\":1}", "{\n \"b\": {\"c\": 2}\n}"]);
        assert!(split_json_documents("{\"a\":1} {\"b\"").is_err());
    }

    #[test]
    fn retain_rows_keeps_order() {
        let mut b = EventBatch::new();
        let o = b.origin_index(&"s".into(), &"p".into());
        for i in 0..5u64 {
            b.push_raw(o, i, format!("r{i}").as_bytes());
        }
        b.retain_rows(|i| i % 2 == 0);
        let got: Vec<_> = (0..b.len()).map(|i| b.rows[i].offset).collect();
        assert_eq!(got, vec![0, 2, 4]);
    }
}
