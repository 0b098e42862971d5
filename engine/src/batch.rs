//! Event batches: the unit operators exchange.
//!
//! A batch stores many events in a few flat vectors, so building, filtering and shipping a
//! batch costs a handful of allocations however many events it holds (docs/architecture.md §3):
//! - `raw`: the payloads as the source read them; never changed after the source, so parsers
//!   can point into it instead of copying (borrowed strings);
//! - `heap`: bytes that operators derive (unescaped strings, lower-cased values, addresses);
//! - `slots`: every event's fields, `(key, value)`, each event owning a contiguous range;
//! - `rows`: per event, its slot range, raw payload and provenance.
//!
//! - `ips`: addresses, referenced by index (`IpRef`), so no address bytes ever sit among text.
//!
//! Strings are `StrRef`s into `raw` or `heap`. Invariant: every `Value::Str` and every
//! extension key refers to valid UTF-8 on character boundaries. It holds by construction: the
//! fields are private, and the only ways to make a reference are [`raw_ref`] and
//! [`Heap::push_str`], which take `&str`, and [`EventBatch::push_row_from`], which copies
//! existing ones. `raw` only grows; `heap` holds nothing but whole `&str`s (a rollback cuts it
//! back to an earlier length), so it is valid UTF-8 as a whole and [`Bytes::str`] checks the
//! two ends of a heap reference in O(1). Row payloads ([`PayloadRef`]) are bytes and may be
//! anything until parse validates them; they have their own reference type, so they cannot be
//! read as text by mistake. Deserialized batches are checked in full ([`EventBatch::validate`]).
//!
//! Offsets are 31 bits (the top bit tells raw from heap), so each buffer holds less than
//! 2 GiB: [`EventBatch::push_raw`] refuses a payload that would overflow it, and sources start
//! a new batch once one holds [`BATCH_BYTES`] (records themselves are bounded by
//! `max_record_bytes`, at most [`MAX_RECORD_BYTES`]).

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::fields::FieldId;

/// A range of text in a batch's `raw` (high bit clear) or `heap` (high bit set) buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct StrRef {
    off: u32,
    len: u32,
}

/// A row's payload: bytes in `raw`, not known to be text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct PayloadRef {
    off: u32,
    len: u32,
}

impl PayloadRef {
    #[inline]
    pub fn len(self) -> usize {
        self.len as usize
    }
    #[inline]
    pub fn is_empty(self) -> bool {
        self.len == 0
    }
}

/// An address in a batch's address table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpRef(u32);

const HEAP_BIT: u32 = 1 << 31;

/// Largest `raw` or `heap` buffer of one batch (offsets are 31 bits).
pub const MAX_BUFFER_BYTES: usize = (HEAP_BIT - 1) as usize;
/// Sources start a new batch once the current one holds this many payload bytes, whatever
/// `batch_size` says (4 MiB records × 1,024 would otherwise overflow the offsets).
pub const BATCH_BYTES: usize = 64 << 20;
/// Upper bound for every `max_record_bytes` setting: far below [`MAX_BUFFER_BYTES`], so that a
/// batch's buffers cannot overflow even when operators derive several times a record's size.
pub const MAX_RECORD_BYTES: usize = 256 << 20;

/// A payload that does not fit in the batch (it would overflow the 31-bit offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchFull;

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
    /// An address in the batch's address table.
    Ip(IpRef),
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    pub key: Key,
    pub value: Value,
}

/// A slot vector for a batch's rewritten slots: `spare` emptied, or a fresh vector if it cannot
/// hold `need` (growing the emptied one would have `realloc` copy its old capacity). The room
/// is `need` plus an eighth, at most [`BATCH_BYTES`] worth: operators estimate `need` from the
/// last batch, and a batch a little fuller than that must not double the vector (each growth
/// copies every slot so far).
pub fn slots_with_room(mut spare: Vec<Slot>, need: usize) -> Vec<Slot> {
    let room = slot_room(need);
    spare.clear();
    if spare.capacity() < room {
        spare = Vec::with_capacity(room);
    }
    spare
}

/// Room in `slots` for `more` slots plus an eighth (bounded as [`slots_with_room`]).
pub fn reserve_slots(slots: &mut Vec<Slot>, more: usize) {
    let room = slot_room(more);
    if slots.is_empty() && slots.capacity() < room {
        *slots = Vec::with_capacity(room);
    } else {
        slots.reserve(room);
    }
}

/// `n` slots plus an eighth, at most [`BATCH_BYTES`] worth.
fn slot_room(n: usize) -> usize {
    (n + n / 8).min(BATCH_BYTES / std::mem::size_of::<Slot>())
}

/// What a batch holds: rows, slots, and bytes of payload and heap (see [`EventBatch::size`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchSize {
    pub rows: usize,
    pub slots: usize,
    pub raw: usize,
    pub heap: usize,
}

/// Where a batch's events came from: a source component and one of its partitions
/// (a file path, a Kafka topic-partition, a generator instance).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub source: Arc<str>,
    pub partition: Arc<str>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub slots_start: u32,
    pub slots_end: u32,
    pub raw: PayloadRef,
    /// Index into the batch's origins.
    pub origin: u32,
    /// Position within the origin partition: 1-based line number for files, offset for Kafka.
    pub offset: u64,
}

impl Row {
    /// Where the row's payload lies in the batch's `raw` bytes.
    #[inline]
    pub fn payload_range(&self) -> std::ops::Range<usize> {
        self.raw.off as usize..self.raw.off as usize + self.raw.len as usize
    }
}

/// Provenance of one event: source, partition and position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub source: Arc<str>,
    pub partition: Arc<str>,
    pub offset: u64,
}

/// The wire form of a batch: checked in full before it becomes an [`EventBatch`].
#[derive(Deserialize)]
struct BatchData {
    raw: Vec<u8>,
    heap: Vec<u8>,
    ips: Vec<IpAddr>,
    slots: Vec<Slot>,
    rows: Vec<Row>,
    origins: Vec<Origin>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(try_from = "BatchData")]
pub struct EventBatch {
    raw: Vec<u8>,
    heap: Vec<u8>,
    ips: Vec<IpAddr>,
    slots: Vec<Slot>,
    rows: Vec<Row>,
    origins: Vec<Origin>,
}

impl TryFrom<BatchData> for EventBatch {
    type Error = String;
    fn try_from(d: BatchData) -> Result<Self, String> {
        let b = EventBatch { raw: d.raw, heap: d.heap, ips: d.ips, slots: d.slots, rows: d.rows, origins: d.origins };
        b.validate()?;
        Ok(b)
    }
}

/// Read access to string bytes of a batch, detached from `slots`/`rows` so that operators can
/// read values while writing new slots.
#[derive(Clone, Copy)]
pub struct Bytes<'a> {
    raw: &'a [u8],
    heap: &'a [u8],
    ips: &'a [IpAddr],
}

#[inline]
fn is_continuation(b: u8) -> bool {
    b & 0xC0 == 0x80
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
        let buf = if r.in_heap() { self.heap } else { self.raw };
        let (start, end) = (r.start(), r.start() + r.len());
        let b = &buf[start..end];
        if r.in_heap() {
            // The heap is text as a whole, so a slice with both ends on character boundaries
            // is valid UTF-8 (a stale reference after a rollback could miss them).
            let bounded =
                (start == end || !is_continuation(buf[start])) && buf.get(end).is_none_or(|&c| !is_continuation(c));
            assert!(bounded, "heap string reference off a character boundary");
        }
        debug_assert!(std::str::from_utf8(b).is_ok(), "StrRef to invalid UTF-8");
        // SAFETY: references are made only from `&str` into these buffers (module invariant);
        // `raw` is never changed after a payload is appended, and heap references were checked
        // to start and end on character boundaries of all-text bytes.
        unsafe { std::str::from_utf8_unchecked(b) }
    }

    /// A row payload's bytes.
    #[inline]
    pub fn payload(&self, r: PayloadRef) -> &'a [u8] {
        &self.raw[r.off as usize..r.off as usize + r.len as usize]
    }
    /// A row payload as text, if it is valid UTF-8 (payloads are not validated by sources).
    pub fn payload_str(&self, r: PayloadRef) -> Option<&'a str> {
        simdutf8::basic::from_utf8(self.payload(r)).ok()
    }
    /// Compares without UTF-8 validation (hot path of lookups by name).
    #[inline]
    pub fn eq(&self, r: StrRef, s: &str) -> bool {
        // Lengths first: most comparisons (field names against a wanted one) differ there.
        r.len() == s.len() && self.bytes(r) == s.as_bytes()
    }
    pub fn ip(&self, r: IpRef) -> Option<IpAddr> {
        self.ips.get(r.0 as usize).copied()
    }
    pub fn key_name(&self, k: Key) -> &'a str {
        match k {
            Key::Core(id) => id.name(),
            Key::Ext(r) => self.str(r),
        }
    }
}

/// A field's name with its core field id looked up once (see [`EventBatch::get_field`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldName {
    core: Option<FieldId>,
    name: String,
}

impl FieldName {
    pub fn new(name: impl Into<String>) -> FieldName {
        let name = name.into();
        FieldName { core: FieldId::lookup(&name), name }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl AsRef<str> for FieldName {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

/// The fields a consumer of rows reads (see [`EventBatch::push_row_projected`]); `@timestamp`
/// always, for event time.
#[derive(Clone, Debug, Default)]
pub struct Projection {
    core: Vec<bool>,
    ext: Vec<String>,
    /// Bit `min(len, 63)` set for each name's length: most extension fields of a row are
    /// rejected by their length, without reading their name.
    ext_lengths: u64,
}

impl Projection {
    pub fn of<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Projection {
        let mut p = Projection { core: vec![false; FieldId::all().count()], ext: Vec::new(), ext_lengths: 0 };
        p.core[crate::fields::ids::TIMESTAMP.0 as usize] = true;
        for name in names {
            let name = name.as_ref();
            if let Some(id) = FieldId::lookup(name) {
                p.core[id.0 as usize] = true;
            }
            // An extension field may carry a core name too (`get_by_name` falls back to it).
            if !p.ext.iter().any(|e| e == name) {
                p.ext.push(name.to_string());
                p.ext_lengths |= Self::length_bit(name.len());
            }
        }
        p
    }

    /// Every name asked for.
    pub fn names(&self) -> &[String] {
        &self.ext
    }

    #[inline]
    fn keeps(&self, b: &Bytes<'_>, key: Key) -> bool {
        match key {
            Key::Core(id) => self.core.get(id.0 as usize).copied().unwrap_or(false),
            Key::Ext(r) => {
                if self.ext_lengths & Self::length_bit(r.len()) == 0 {
                    return false;
                }
                let name = b.str(r);
                self.ext.iter().any(|e| e == name)
            }
        }
    }

    fn length_bit(len: usize) -> u64 {
        1 << len.min(63)
    }
}

/// Appends derived text and addresses to a batch.
pub struct Heap<'a> {
    heap: &'a mut Vec<u8>,
    ips: &'a mut Vec<IpAddr>,
}

/// A length of the heap and address table to roll back to.
#[derive(Clone, Copy, Debug)]
pub struct HeapMark {
    heap: usize,
    ips: usize,
}

impl Heap<'_> {
    /// Copies of existing string bytes (whole strings, so the heap stays text).
    #[inline]
    fn push_text_bytes(&mut self, b: &[u8]) -> StrRef {
        let off = self.heap.len();
        // Unreachable within the limits (records ≤ MAX_RECORD_BYTES, batches cut at
        // BATCH_BYTES); a hard stop rather than a wrapped offset if a bug ever got here.
        assert!(off + b.len() <= MAX_BUFFER_BYTES, "batch heap over {MAX_BUFFER_BYTES} bytes");
        self.heap.extend_from_slice(b);
        StrRef { off: off as u32 | HEAP_BIT, len: b.len() as u32 }
    }
    #[inline]
    pub fn push_str(&mut self, s: &str) -> StrRef {
        self.push_text_bytes(s.as_bytes())
    }
    pub fn push_ip(&mut self, ip: IpAddr) -> IpRef {
        assert!(self.ips.len() < u32::MAX as usize, "batch address table full");
        self.ips.push(ip);
        IpRef((self.ips.len() - 1) as u32)
    }
    pub fn mark(&self) -> HeapMark {
        HeapMark { heap: self.heap.len(), ips: self.ips.len() }
    }
    /// Bytes in the heap.
    pub fn len(&self) -> usize {
        self.heap.len()
    }
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
    /// Room for `bytes` more at once: operators that add to every row reserve from what the
    /// last batch added, instead of growing by doubling (each growth copies the heap so far).
    /// At most [`BATCH_BYTES`]: an estimate from one batch of huge records must not make a
    /// batch of small ones allocate far more than it uses.
    pub fn reserve(&mut self, bytes: usize) {
        self.heap.reserve(bytes.min(BATCH_BYTES));
    }
    /// Drops what was pushed since `mark` (a record being quarantined). References made since
    /// must be dropped with it.
    pub fn rollback(&mut self, mark: HeapMark) {
        self.heap.truncate(mark.heap);
        self.ips.truncate(mark.ips);
    }
}

/// A batch's payload bytes, as only the batch hands them out (so references made from them
/// are references into that batch).
#[derive(Clone, Copy)]
pub struct Raw<'a>(&'a [u8]);

impl<'a> Raw<'a> {
    pub fn as_bytes(self) -> &'a [u8] {
        self.0
    }
    /// A row payload's bytes.
    pub fn payload(self, r: PayloadRef) -> &'a [u8] {
        &self.0[r.off as usize..r.off as usize + r.len as usize]
    }
    /// The text of a reference into the payloads (`None` for a heap reference).
    pub fn str(self, r: StrRef) -> Option<&'a str> {
        (!r.in_heap()).then(|| Bytes { raw: self.0, heap: &[], ips: &[] }.str(r))
    }
}

impl Heap<'_> {
    /// Read access to the batch's strings together with its payloads.
    pub fn bytes<'b>(&'b self, raw: Raw<'b>) -> Bytes<'b> {
        Bytes { raw: raw.0, heap: self.heap, ips: self.ips }
    }
}

/// A reference to a substring of `raw` if `s` points into it, found by address.
#[inline]
pub fn raw_ref(raw: Raw<'_>, s: &str) -> Option<StrRef> {
    let raw = raw.0;
    let base = raw.as_ptr() as usize;
    let p = s.as_ptr() as usize;
    if p >= base && p + s.len() <= base + raw.len() {
        Some(StrRef { off: (p - base) as u32, len: s.len() as u32 })
    } else {
        None
    }
}

/// Mutable access to a batch's parts at once, for operators that rewrite every row's fields:
/// payloads to read, the heap to append to, the slots and the rows' slot ranges.
pub struct BatchParts<'a> {
    pub raw: Raw<'a>,
    pub heap: Heap<'a>,
    pub slots: &'a mut Vec<Slot>,
    pub rows: &'a mut [Row],
    pub origins: &'a [Origin],
}

impl BatchParts<'_> {
    /// Read access to the strings (not kept across pushes to the heap).
    pub fn bytes(&self) -> Bytes<'_> {
        Bytes { raw: self.raw.0, heap: self.heap.heap, ips: self.heap.ips }
    }
}

impl EventBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(rows: usize, raw_bytes: usize) -> Self {
        EventBatch {
            raw: Vec::with_capacity(raw_bytes.min(BATCH_BYTES)),
            heap: Vec::new(),
            ips: Vec::new(),
            slots: Vec::with_capacity(rows * 16),
            rows: Vec::with_capacity(rows),
            origins: Vec::new(),
        }
    }

    /// How much the batch holds: a hint to size the next batch filled the same way.
    pub fn size(&self) -> BatchSize {
        BatchSize { rows: self.rows.len(), slots: self.slots.len(), raw: self.raw.len(), heap: self.heap.len() }
    }

    /// Room for as much as `size` says at once, each part at most [`BATCH_BYTES`] worth: a batch
    /// filled row by row (regrouped for an exchange) would otherwise grow by doubling, each
    /// growth copying what it holds so far.
    pub fn reserve_like(&mut self, size: BatchSize) {
        // `reserve` does nothing when the room is there already.
        self.rows.reserve(size.rows.min(BATCH_BYTES / std::mem::size_of::<Row>()));
        self.slots.reserve(size.slots.min(BATCH_BYTES / std::mem::size_of::<Slot>()));
        self.raw.reserve(size.raw.min(BATCH_BYTES));
        self.heap.reserve(size.heap.min(BATCH_BYTES));
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }
    pub fn origins(&self) -> &[Origin] {
        &self.origins
    }
    /// Every row's slots (each row owns a range: [`Row::slots_start`]..[`Row::slots_end`]).
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }
    /// Payload bytes held (sources start a new batch past [`BATCH_BYTES`]).
    pub fn raw_bytes(&self) -> usize {
        self.raw.len()
    }
    /// Derived text held (sources that build events themselves start a new batch past
    /// [`BATCH_BYTES`] of it).
    pub fn heap_bytes(&self) -> usize {
        self.heap.len()
    }
    /// Whether a source should start a new batch before adding more records.
    pub fn is_full(&self) -> bool {
        self.raw.len() >= BATCH_BYTES
    }

    pub fn parts(&mut self) -> BatchParts<'_> {
        BatchParts {
            raw: Raw(&self.raw),
            heap: Heap { heap: &mut self.heap, ips: &mut self.ips },
            slots: &mut self.slots,
            rows: &mut self.rows,
            origins: &self.origins,
        }
    }

    /// The heap, for building the fields of the last row (tests, sources adding metadata).
    pub fn heap(&mut self) -> Heap<'_> {
        Heap { heap: &mut self.heap, ips: &mut self.ips }
    }

    /// Drops the last row (found bad while its fields were added) and what the heap took
    /// since `mark`; its raw payload stays (`raw` only grows).
    pub fn pop_row(&mut self, mark: HeapMark) {
        if let Some(r) = self.rows.pop() {
            self.slots.truncate(r.slots_start as usize);
        }
        self.heap().rollback(mark);
    }

    /// Appends a field to the last row (moving that row's fields to the end first if another
    /// row's were added after them).
    pub fn push_slot(&mut self, slot: Slot) {
        let n = self.slots.len() as u32;
        let Some(row) = self.rows.last_mut() else { return };
        if row.slots_end != n {
            let (s, e) = (row.slots_start as usize, row.slots_end as usize);
            self.slots.extend_from_within(s..e);
            row.slots_start = n;
            row.slots_end = self.slots.len() as u32;
        }
        self.slots.push(slot);
        row.slots_end += 1;
    }

    /// Checks every reference against the buffers (for batches read from outside: exchange
    /// between processes, checkpoints). Linear in the batch's size.
    pub fn validate(&self) -> Result<(), String> {
        let heap_text = std::str::from_utf8(&self.heap).is_ok();
        if !heap_text {
            return Err("batch heap is not UTF-8".into());
        }
        if self.raw.len() > MAX_BUFFER_BYTES || self.heap.len() > MAX_BUFFER_BYTES {
            return Err("batch buffer over the offset limit".into());
        }
        let check_str = |r: StrRef| -> Result<(), String> {
            let buf = if r.in_heap() { &self.heap } else { &self.raw };
            let b = buf.get(r.start()..r.start() + r.len()).ok_or("string reference out of range")?;
            let ok = std::str::from_utf8(b).is_ok()
                && buf.get(r.start() + r.len()).is_none_or(|&c| !is_continuation(c))
                && (r.is_empty() || !is_continuation(buf[r.start()]));
            if ok {
                Ok(())
            } else {
                Err("string reference to invalid UTF-8".into())
            }
        };
        for s in &self.slots {
            if let Key::Ext(r) = s.key {
                check_str(r)?;
            }
            match s.value {
                Value::Str(r) => check_str(r)?,
                Value::Ip(IpRef(i)) if i as usize >= self.ips.len() => {
                    return Err("address reference out of range".into())
                }
                _ => {}
            }
        }
        for r in &self.rows {
            if r.slots_start > r.slots_end || r.slots_end as usize > self.slots.len() {
                return Err("row slot range out of bounds".into());
            }
            if r.raw.off as usize + r.raw.len as usize > self.raw.len() {
                return Err("row payload out of range".into());
            }
            if r.origin as usize >= self.origins.len() {
                return Err("row origin out of range".into());
            }
        }
        Ok(())
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
        Bytes { raw: &self.raw, heap: &self.heap, ips: &self.ips }
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

    /// Appends an unparsed record (what sources produce). Refused when the payload would
    /// overflow the batch's offsets: start a new batch (or quarantine the record as oversize).
    pub fn push_raw(&mut self, origin: u32, offset: u64, payload: &[u8]) -> Result<(), BatchFull> {
        let off = self.raw.len();
        if off + payload.len() > MAX_BUFFER_BYTES {
            return Err(BatchFull);
        }
        self.raw.extend_from_slice(payload);
        let at = self.slots.len() as u32;
        self.rows.push(Row {
            slots_start: at,
            slots_end: at,
            raw: PayloadRef { off: off as u32, len: payload.len() as u32 },
            origin,
            offset,
        });
        Ok(())
    }

    pub fn raw_payload(&self, row: usize) -> &[u8] {
        self.bytes().payload(self.rows[row].raw)
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
        self.get_named(row, FieldId::lookup(name), name)
    }

    /// [`Self::get_by_name`] with the name resolved once, for lookups row after row.
    pub fn get_field(&self, row: usize, field: &FieldName) -> Option<Value> {
        self.get_named(row, field.core, &field.name)
    }

    fn get_named(&self, row: usize, core: Option<FieldId>, name: &str) -> Option<Value> {
        if let Some(id) = core {
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
        self.push_row_with(other, row, None);
    }

    /// Copies the fields `projection` names of one row of `other`, with its provenance but
    /// without its raw payload: what crosses an exchange to a consumer that reads a few fields.
    pub fn push_row_projected(&mut self, other: &EventBatch, row: usize, projection: &Projection) {
        self.push_row_with(other, row, Some(projection));
    }

    fn push_row_with(&mut self, other: &EventBatch, row: usize, projection: Option<&Projection>) {
        let src = &other.rows[row];
        let o = &other.origins[src.origin as usize];
        let origin = self.origin_index(&o.source, &o.partition);
        let ob = other.bytes();
        let raw_bytes = if projection.is_some() { &[][..] } else { ob.payload(src.raw) };
        let raw_off = self.raw.len();
        assert!(raw_off + raw_bytes.len() <= MAX_BUFFER_BYTES, "regrouped batch over the offset limit");
        self.raw.extend_from_slice(raw_bytes);
        // The row's slots are copied as they are, then their references rebased: strings
        // within the row's payload (parse's zero-copy references) point into the payload's
        // copy, every other string and address is re-homed into this batch's buffers.
        let start = self.slots.len() as u32;
        match projection {
            None => self.slots.extend_from_slice(other.row_slots(row)),
            Some(p) => {
                for s in other.row_slots(row) {
                    if p.keeps(&ob, s.key) {
                        self.slots.push(*s);
                    }
                }
            }
        }
        let payload = src.raw.off as usize..src.raw.off as usize + raw_bytes.len();
        let mut heap = Heap { heap: &mut self.heap, ips: &mut self.ips };
        #[inline(always)]
        fn rehome(heap: &mut Heap, ob: &Bytes, payload: &std::ops::Range<usize>, raw_off: usize, r: &mut StrRef) {
            if !r.in_heap() && r.start() >= payload.start && r.start() + r.len() <= payload.end {
                r.off = (raw_off + r.start() - payload.start) as u32;
            } else {
                *r = heap.push_str(ob.str(*r));
            }
        }
        for s in &mut self.slots[start as usize..] {
            if let Key::Ext(r) = &mut s.key {
                rehome(&mut heap, &ob, &payload, raw_off, r);
            }
            match &mut s.value {
                Value::Str(r) => rehome(&mut heap, &ob, &payload, raw_off, r),
                Value::Ip(r) => {
                    s.value = match ob.ip(*r) {
                        Some(ip) => Value::Ip(heap.push_ip(ip)),
                        None => Value::Null,
                    }
                }
                _ => {}
            }
        }
        self.rows.push(Row {
            slots_start: start,
            slots_end: self.slots.len() as u32,
            raw: PayloadRef { off: raw_off as u32, len: raw_bytes.len() as u32 },
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

    /// Appends the row as compact JSON text to `out`: exactly what serializing
    /// [`Self::row_to_json`] writes (keys in the same sorted order, a repeated key's values as
    /// an array), without building the value tree.
    pub fn write_row_json(&self, row: usize, out: &mut Vec<u8>) {
        let b = self.bytes();
        let slots = self.row_slots(row);
        let p = &self.rows[row];
        let origin = &self.origins[p.origin as usize];
        let order = JsonMemberOrder::get();
        // Members in name order: core fields and provenance by their precomputed rank (a
        // repeated field keeps its values in slot order), extension fields by name.
        // On the stack for usual events (the JSONL sink writes every event this way).
        // (rank or name, slot index): a row may have more than 65,536 slots.
        let mut top: smallvec::SmallVec<[(u16, u32); 64]> = smallvec::SmallVec::new();
        let mut ext: smallvec::SmallVec<[(&str, u32); 32]> = smallvec::SmallVec::new();
        for (i, s) in slots.iter().enumerate() {
            match s.key {
                // Provenance and `ext` replace a core field of the same name, as in `row_to_json`.
                Key::Core(f) if order.reserved(f) => {}
                Key::Core(f) => top.push((order.rank(f), i as u32)),
                Key::Ext(k) => ext.push((b.str(k), i as u32)),
            }
        }
        top.extend([(order.source, 0), (order.partition, 0), (order.offset, 0)]);
        if !ext.is_empty() {
            top.push((order.ext, 0));
        }
        top.sort_unstable();
        // Stable: a repeated key keeps its values in slot order.
        ext.sort_by(|x, y| x.0.cmp(y.0));
        out.push(b'{');
        for (n, run) in top.chunk_by(|x, y| x.0 == y.0).enumerate() {
            if n > 0 {
                out.push(b',');
            }
            let rank = run[0].0;
            out.extend_from_slice(order.member(rank));
            if rank == order.source {
                write_json_str(&origin.source, out);
            } else if rank == order.partition {
                write_json_str(&origin.partition, out);
            } else if rank == order.offset {
                out.extend_from_slice(itoa::Buffer::new().format(p.offset).as_bytes());
            } else if rank == order.ext {
                write_members(b, slots, &ext, out);
            } else {
                write_run(b, slots, run, out);
            }
        }
        out.push(b'}');
    }
}

/// The extension object of [`EventBatch::write_row_json`]: `members` (name, slot) sorted by
/// name, a repeated name's values as an array.
fn write_members(b: Bytes<'_>, slots: &[Slot], members: &[(&str, u32)], out: &mut Vec<u8>) {
    out.push(b'{');
    for (n, run) in members.chunk_by(|x, y| x.0 == y.0).enumerate() {
        if n > 0 {
            out.push(b',');
        }
        write_json_str(run[0].0, out);
        out.push(b':');
        write_run(b, slots, run, out);
    }
    out.push(b'}');
}

/// The values of a run of members with one name (keyed, then a slot index): the value, or
/// an array of them if the name repeats.
fn write_run<K>(b: Bytes<'_>, slots: &[Slot], run: &[(K, u32)], out: &mut Vec<u8>) {
    if let [(_, i)] = run {
        return write_value_json(b, slots[*i as usize].value, out);
    }
    out.push(b'[');
    for (n, (_, i)) in run.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        write_value_json(b, slots[*i as usize].value, out);
    }
    out.push(b']');
}

/// The order of an event's top-level JSON members: core field names and the provenance and
/// `ext` members, ranked by name once, so rows sort their members by a number.
struct JsonMemberOrder {
    /// Per core field: its rank, or `u16::MAX` if provenance or `ext` takes its name.
    rank: Vec<u16>,
    /// Per rank: `"name":`.
    members: Vec<Vec<u8>>,
    source: u16,
    partition: u16,
    offset: u16,
    ext: u16,
}

impl JsonMemberOrder {
    const RESERVED: [&'static str; 4] = ["ward.source", "ward.partition", "ward.offset", "ext"];

    fn get() -> &'static JsonMemberOrder {
        static ORDER: std::sync::OnceLock<JsonMemberOrder> = std::sync::OnceLock::new();
        ORDER.get_or_init(|| {
            let mut names: Vec<&str> = FieldId::all().map(FieldId::name).chain(Self::RESERVED).collect();
            names.sort_unstable();
            names.dedup();
            let rank_of = |name: &str| names.binary_search(&name).expect("a listed name") as u16;
            JsonMemberOrder {
                rank: FieldId::all()
                    .map(|f| if Self::RESERVED.contains(&f.name()) { u16::MAX } else { rank_of(f.name()) })
                    .collect(),
                members: names
                    .iter()
                    .map(|n| {
                        let mut m = serde_json::to_vec(n).expect("a string serializes");
                        m.push(b':');
                        m
                    })
                    .collect(),
                source: rank_of("ward.source"),
                partition: rank_of("ward.partition"),
                offset: rank_of("ward.offset"),
                ext: rank_of("ext"),
            }
        })
    }
    #[inline]
    fn reserved(&self, f: FieldId) -> bool {
        self.rank[f.0 as usize] == u16::MAX
    }
    #[inline]
    fn rank(&self, f: FieldId) -> u16 {
        self.rank[f.0 as usize]
    }
    #[inline]
    fn member(&self, rank: u16) -> &[u8] {
        &self.members[rank as usize]
    }
}

/// Appends `s` as a JSON string, as `serde_json` writes it: text without quotes, backslashes
/// or control characters (nearly all of it) is copied in one piece after a scan the compiler
/// vectorizes; any other goes through `serde_json`'s escaping.
#[inline]
pub fn write_json_str(s: &str, out: &mut Vec<u8>) {
    #[inline]
    fn plain(b: &[u8]) -> bool {
        let special = |c: u8| c < 0x20 || c == b'"' || c == b'\\';
        let mut chunks = b.chunks_exact(16);
        for chunk in &mut chunks {
            // No early exit within a chunk, so the loop becomes vector compares.
            if chunk.iter().fold(false, |hit, &c| hit | special(c)) {
                return false;
            }
        }
        !chunks.remainder().iter().any(|&c| special(c))
    }
    if plain(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
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

/// Appends `v` as JSON text to `out`: what serializing [`value_to_json`] writes, without
/// building the value (strings go straight from the batch).
pub fn write_value_json(b: Bytes<'_>, v: Value, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = match v {
        Value::Str(r) => {
            write_json_str(b.str(r), out);
            Ok(())
        }
        Value::Null => serde_json::to_writer(&mut *out, &()),
        Value::Bool(x) => serde_json::to_writer(&mut *out, &x),
        Value::Int(x) => serde_json::to_writer(&mut *out, &x),
        Value::Ip(r) if let Some(ip) = b.ip(r) => {
            // An address's text needs no escaping.
            out.push(b'"');
            ip_text(ip, |s| out.extend_from_slice(s.as_bytes()));
            out.push(b'"');
            Ok(())
        }
        Value::Timestamp(ms) if let Some(text) = timestamp_ms_ascii(ms) => {
            out.push(b'"');
            out.extend_from_slice(&text);
            out.push(b'"');
            Ok(())
        }
        v => serde_json::to_writer(&mut *out, &value_to_json(b, v)),
    };
}

/// Appends the extension fields of `slots` as one JSON object to `out`: the text of a
/// `serde_json::Map` collected from them (keys in byte order, a repeated key's last value),
/// without building the map. `order` is scratch space.
pub fn write_ext_object_json(b: Bytes<'_>, slots: &[Slot], order: &mut Vec<usize>, out: &mut Vec<u8>) {
    order.clear();
    order.extend(slots.iter().enumerate().filter(|(_, s)| matches!(s.key, Key::Ext(_))).map(|(i, _)| i));
    // Stable: of a repeated key, the last slot is the one kept.
    let key = |i: usize| b.key_name(slots[i].key);
    order.sort_by(|&x, &y| key(x).cmp(key(y)));
    out.push(b'{');
    let mut first = true;
    for (n, &i) in order.iter().enumerate() {
        let name = key(i);
        if order.get(n + 1).is_some_and(|&next| key(next) == name) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        let _ = serde_json::to_writer(&mut *out, name);
        out.push(b':');
        write_value_json(b, slots[i].value, out);
    }
    out.push(b'}');
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
    let mut s = String::with_capacity(24);
    write_timestamp_ms(&mut s, ms);
    s
}

/// [`format_timestamp_ms`] appended to `out` (no allocation once `out` has room).
pub fn write_timestamp_ms(out: &mut String, ms: i64) {
    use std::fmt::Write as _;
    let _ = match (timestamp_ms_ascii(ms), chrono::DateTime::from_timestamp_millis(ms)) {
        (Some(d), _) => {
            out.push_str(std::str::from_utf8(&d).expect("ASCII digits"));
            Ok(())
        }
        (None, Some(t)) => write!(out, "{}", t.format("%Y-%m-%dT%H:%M:%S%.3fZ")),
        (None, None) => write!(out, "{ms}"),
    };
}

/// [`format_timestamp_ms`]'s text as bytes, for years 0 to 9999 (None otherwise). Digits by
/// hand: chrono's `format` parses its pattern on every call, and this runs for every time a
/// sink or rule shows as text and every Windows record the generator writes.
pub fn timestamp_ms_ascii(ms: i64) -> Option<[u8; 24]> {
    use chrono::{Datelike, Timelike};
    let t = chrono::DateTime::from_timestamp_millis(ms).filter(|t| (0..=9999).contains(&t.year()))?;
    let mut d = *b"0000-00-00T00:00:00.000Z";
    for (at, width, value) in [
        (0, 4, t.year() as u32),
        (5, 2, t.month()),
        (8, 2, t.day()),
        (11, 2, t.hour()),
        (14, 2, t.minute()),
        (17, 2, t.second()),
        (20, 3, t.timestamp_subsec_millis()),
    ] {
        let mut v = value;
        for digit in d[at..at + width].iter_mut().rev() {
            *digit = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    Some(d)
}

/// `ip` appended to `out` as `Display` writes it (IPv4 without the formatting machinery).
pub fn write_ip(out: &mut String, ip: IpAddr) {
    ip_text(ip, |s| out.push_str(s));
}

/// `ip` as `Display` writes it, in pieces to `push`.
fn ip_text(ip: IpAddr, mut push: impl FnMut(&str)) {
    match ip {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    push(".");
                }
                push(digits.format(octet));
            }
        }
        IpAddr::V6(v6) => {
            struct Pieces<F>(F);
            impl<F: FnMut(&str)> std::fmt::Write for Pieces<F> {
                fn write_str(&mut self, s: &str) -> std::fmt::Result {
                    (self.0)(s);
                    Ok(())
                }
            }
            use std::fmt::Write as _;
            let _ = write!(Pieces(push), "{v6}");
        }
    }
}

/// The text form of `v` appended to `out`, as sinks store and rules compare non-string
/// values: numbers and flags as Rust shows them, times as RFC 3339 with milliseconds,
/// addresses as usual. False (nothing written) for null and unreadable addresses.
pub fn write_value_text(b: Bytes<'_>, v: Value, out: &mut String) -> bool {
    match v {
        Value::Null => return false,
        Value::Str(r) => out.push_str(b.str(r)),
        Value::Bool(x) => out.push_str(if x { "true" } else { "false" }),
        Value::Int(i) => out.push_str(itoa::Buffer::new().format(i)),
        Value::Float(f) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{f}");
        }
        Value::Timestamp(ms) => write_timestamp_ms(out, ms),
        Value::Ip(r) => match b.ip(r) {
            Some(ip) => write_ip(out, ip),
            None => return false,
        },
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::ids;

    #[test]
    fn timestamps_and_addresses_are_written_as_chrono_and_display_write_them() {
        let by_chrono = |ms: i64| match chrono::DateTime::from_timestamp_millis(ms) {
            Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            None => ms.to_string(),
        };
        let mut samples = vec![0, 1, -1, 999, 1_767_600_000_123, -62_135_596_800_000, 253_402_300_799_999];
        samples.extend([-62_135_596_800_001, 253_402_300_800_000, i64::MIN, i64::MAX]);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push((x % 400_000_000_000_000) as i64 - 100_000_000_000_000);
        }
        for ms in samples {
            assert_eq!(format_timestamp_ms(ms), by_chrono(ms), "{ms}");
        }
        for ip in ["0.0.0.0", "10.1.2.3", "255.255.255.255", "192.168.100.9", "::1", "2001:db8::5", "::ffff:1.2.3.4"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::from("x");
            write_ip(&mut out, ip);
            assert_eq!(out, format!("x{ip}"));
        }
    }

    #[test]
    fn raw_refs_borrow_and_heap_refs_copy() {
        let mut b = EventBatch::new();
        let src: Arc<str> = "s".into();
        let part: Arc<str> = "p".into();
        let o = b.origin_index(&src, &part);
        b.push_raw(o, 1, b"hello world").unwrap();
        let raw = b.raw.clone();
        let text = std::str::from_utf8(&b.raw).unwrap();
        let r = raw_ref(Raw(&b.raw), &text[6..11]).unwrap();
        assert_eq!(b.bytes().str(r), "world");
        assert!(
            raw_ref(Raw(&b.raw), std::str::from_utf8(&raw[0..2]).unwrap()).is_none(),
            "a copy elsewhere is not in raw"
        );
        let h = b.heap().push_str("derived");
        assert_eq!(b.bytes().str(h), "derived");
        assert_eq!(b.bytes().str(r), "world");
    }

    #[test]
    fn push_row_from_rehomes_strings_and_origin() {
        let mut a = EventBatch::new();
        let o = a.origin_index(&"src".into(), &"f.log".into());
        a.push_raw(o, 7, b"{\"x\":1}").unwrap();
        let k = a.heap().push_str("x");
        let v = a.heap().push_str("value");
        let ip = a.heap().push_ip("10.1.2.3".parse().unwrap());
        a.push_slot(Slot { key: Key::Ext(k), value: Value::Str(v) });
        a.push_slot(Slot { key: Key::Core(ids::SOURCE_IP), value: Value::Ip(ip) });

        let mut b = EventBatch::new();
        let o2 = b.origin_index(&"other".into(), &"g".into());
        b.push_raw(o2, 1, b"zzz").unwrap();
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
    fn regrouped_rows_point_into_their_payload_copy() {
        let mut a = EventBatch::new();
        let o = a.origin_index(&"src".into(), &"f.log".into());
        a.push_raw(o, 1, b"{\"user\":\"alice\"}").unwrap();
        a.push_raw(o, 2, b"{\"user\":\"bob\"}").unwrap();
        let (first, second) = (a.rows[0].raw, a.rows[1].raw);
        let text = std::str::from_utf8(&a.raw).unwrap().to_string();
        // Row 1: its own key and value by reference, plus a value from row 0's payload
        // (not its own, so it must be copied).
        let at = |s: &str, from: usize| {
            let i = text[from..].find(s).unwrap() + from;
            raw_ref(Raw(&a.raw), &std::str::from_utf8(&a.raw).unwrap()[i..i + s.len()]).unwrap()
        };
        let (key, bob, alice) =
            (at("user", second.off as usize), at("bob", second.off as usize), at("alice", first.off as usize));
        a.push_slot(Slot { key: Key::Ext(key), value: Value::Str(bob) });
        a.push_slot(Slot { key: Key::Core(ids::USER_NAME), value: Value::Str(alice) });

        let mut b = EventBatch::new();
        b.push_raw(o, 9, b"padding").unwrap();
        b.push_row_from(&a, 1);
        let text_of = |v: Value| match v {
            Value::Str(r) => r,
            v => panic!("not a string: {v:?}"),
        };
        assert_eq!(b.bytes().str(text_of(b.slots[0].value)), "bob");
        assert_eq!(b.bytes().key_name(b.slots[0].key), "user");
        assert_eq!(b.bytes().str(text_of(b.slots[1].value)), "alice");
        assert!(!text_of(b.slots[0].value).in_heap(), "a string of the row's own payload is not copied");
        assert_eq!(b.heap, b"alice", "only the string from elsewhere is copied");
        b.validate().unwrap();
        assert_eq!(b.row_to_json(1)["ext"]["user"], "bob");
    }

    #[test]
    fn projected_rows_keep_only_the_named_fields_and_their_provenance() {
        let mut a = EventBatch::new();
        let o = a.origin_index(&"src".into(), &"f.log".into());
        a.push_raw(o, 7, b"{\"a long raw payload\":1}").unwrap();
        // `sessioN`: as long as a projected name, so only its name tells it apart.
        for (k, v) in [("session", "s1"), ("other", "o"), ("sessioN", "n"), ("host.name", "ext host")] {
            let k = a.heap().push_str(k);
            let v = a.heap().push_str(v);
            a.push_slot(Slot { key: Key::Ext(k), value: Value::Str(v) });
        }
        let ip = a.heap().push_ip("10.1.2.3".parse().unwrap());
        a.push_slot(Slot { key: Key::Core(ids::SOURCE_IP), value: Value::Ip(ip) });
        let h = a.heap().push_str("web-1");
        a.push_slot(Slot { key: Key::Core(ids::HOST_NAME), value: Value::Str(h) });
        a.push_slot(Slot { key: Key::Core(ids::TIMESTAMP), value: Value::Timestamp(5) });

        let mut b = EventBatch::new();
        b.push_row_projected(&a, 0, &Projection::of(["session", "source.ip"]));
        assert_eq!(b.raw_payload(0), b"", "no raw payload");
        let j = b.row_to_json(0);
        assert_eq!(j["ext"]["session"], "s1");
        assert_eq!(j["source.ip"], "10.1.2.3");
        assert_eq!(j["@timestamp"], "1970-01-01T00:00:00.005Z", "event time always");
        assert!(j.get("host.name").is_none() && j["ext"].get("other").is_none(), "{j}");
        assert!(j["ext"].get("sessioN").is_none() && j["ext"].get("host.name").is_none(), "{j}");
        assert_eq!((j["ward.partition"].as_str(), j["ward.offset"].as_u64()), (Some("f.log"), Some(7)));

        // A name resolved once reads what the name reads: core first, then extension fields.
        for name in ["host.name", "session", "source.ip", "other", "user.name", "absent"] {
            assert_eq!(a.get_field(0, &FieldName::new(name)), a.get_by_name(0, name), "{name}");
        }
        assert!(
            matches!(a.get_field(0, &FieldName::new("host.name")), Some(Value::Str(r)) if a.bytes().str(r) == "web-1")
        );
        assert!(a.get_field(0, &FieldName::new("absent")).is_none());
    }

    #[test]
    fn row_json_text_is_the_serialized_row_value() {
        let mut a = EventBatch::new();
        let o = a.origin_index(&"src \"q\"".into(), &"f.log".into());
        a.push_raw(o, 7, b"x").unwrap();
        let str_slot = |a: &mut EventBatch, key: Key, v: &str| {
            let v = a.heap().push_str(v);
            a.push_slot(Slot { key, value: Value::Str(v) });
        };
        // Long values too: escapes within the first 16 bytes, in a later 16-byte chunk, in the
        // tail after the last whole chunk, and none.
        let long = [
            "a plain value that is longer than sixteen bytes",
            "\"quoted\" value, longer than sixteen bytes",
            "a value with a backslash \\ past sixteen bytes",
            "a value with a tab at the very end of it\t",
        ];
        for (k, v) in [("zeta", "1"), ("a\"b", "esc\u{1}\n"), ("zeta", "2"), ("Ünï", "ü"), ("zeta", "3")]
            .into_iter()
            .chain(long.map(|v| ("long", v)))
        {
            let k = a.heap().push_str(k);
            str_slot(&mut a, Key::Ext(k), v);
        }
        str_slot(&mut a, Key::Core(ids::HOST_NAME), "web-1");
        str_slot(&mut a, Key::Core(ids::USER_NAME), "a");
        str_slot(&mut a, Key::Core(ids::USER_NAME), "b");
        let ip = a.heap().push_ip("2001:db8::1".parse().unwrap());
        a.push_slot(Slot { key: Key::Core(ids::SOURCE_IP), value: Value::Ip(ip) });
        a.push_slot(Slot { key: Key::Core(ids::TIMESTAMP), value: Value::Timestamp(1_700_000_000_123) });
        let k = a.heap().push_str("n");
        for value in [Value::Int(-3), Value::Float(0.1), Value::Float(f64::NAN), Value::Bool(true), Value::Null] {
            a.push_slot(Slot { key: Key::Ext(k), value });
        }
        let (t, at) = (a.heap().push_str("t"), a.heap().push_str("at"));
        a.push_slot(Slot { key: Key::Ext(t), value: Value::Timestamp(-1) });
        a.push_slot(Slot { key: Key::Ext(at), value: Value::Ip(ip) });
        // A row with no extension fields, and an empty one.
        a.push_raw(o, 8, b"y").unwrap();
        str_slot(&mut a, Key::Core(ids::HOST_NAME), "web-2");
        a.push_raw(o, 9, b"z").unwrap();
        for row in 0..a.len() {
            let mut text = Vec::new();
            a.write_row_json(row, &mut text);
            assert_eq!(
                String::from_utf8(text).unwrap(),
                serde_json::to_string(&a.row_to_json(row)).unwrap(),
                "row {row}"
            );
            // The extension fields as one object: what a map collected from them serializes to.
            let (b, slots) = (a.bytes(), a.row_slots(row));
            let map: serde_json::Map<String, serde_json::Value> = slots
                .iter()
                .filter_map(|s| match s.key {
                    Key::Ext(k) => Some((b.str(k).to_string(), value_to_json(b, s.value))),
                    Key::Core(_) => None,
                })
                .collect();
            let mut text = Vec::new();
            write_ext_object_json(b, slots, &mut Vec::new(), &mut text);
            assert_eq!(String::from_utf8(text).unwrap(), serde_json::Value::Object(map).to_string(), "row {row}");
        }
    }

    #[test]
    fn row_json_text_of_a_row_with_more_slots_than_a_u16_counts() {
        let mut a = EventBatch::new();
        let o = a.origin_index(&"src".into(), &"f.log".into());
        a.push_raw(o, 1, b"x").unwrap();
        // Names sort in slot order, and the values past slot 65,535 differ from those
        // 65,536 slots before them.
        for i in 0..70_000u32 {
            let k = a.heap().push_str(&format!("f{i:06}"));
            a.push_slot(Slot { key: Key::Ext(k), value: Value::Int(i64::from(i)) });
        }
        let u = a.heap().push_str("last");
        a.push_slot(Slot { key: Key::Core(ids::USER_NAME), value: Value::Str(u) });
        let mut text = Vec::new();
        a.write_row_json(0, &mut text);
        assert_eq!(String::from_utf8(text).unwrap(), serde_json::to_string(&a.row_to_json(0)).unwrap());
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
            b.push_raw(o, i, format!("r{i}").as_bytes()).unwrap();
        }
        b.retain_rows(|i| i % 2 == 0);
        let got: Vec<_> = (0..b.len()).map(|i| b.rows[i].offset).collect();
        assert_eq!(got, vec![0, 2, 4]);
    }

    #[test]
    fn payloads_past_the_offset_limit_are_refused_not_wrapped() {
        // 4 MiB records × 1,024 would pass 2 GiB: the batch refuses the payload that would
        // overflow (sources cut batches long before, at BATCH_BYTES).
        let record = vec![b'x'; 256 << 20];
        let mut b = EventBatch::new();
        let o = b.origin_index(&"s".into(), &"p".into());
        let mut pushed = 0;
        while b.push_raw(o, pushed, &record).is_ok() {
            pushed += 1;
            assert!(b.is_full());
        }
        assert_eq!(pushed, 7, "7 × 256 MiB fit below 2 GiB, the 8th does not");
        assert_eq!(b.len(), 7);
        assert_eq!(b.raw_payload(6).len(), record.len());
        // Offsets stayed exact: the last payload is read back from where it was written.
        assert_eq!(b.rows[6].raw.off as usize, 6 * record.len());
        assert!(b.validate().is_ok());
    }

    #[test]
    fn addresses_have_their_own_table() {
        let mut b = EventBatch::new();
        let o = b.origin_index(&"s".into(), &"p".into());
        b.push_raw(o, 1, b"x").unwrap();
        let ip = b.heap().push_ip("2001:db8::1".parse().unwrap());
        let s = b.heap().push_str("after");
        b.push_slot(Slot { key: Key::Core(ids::SOURCE_IP), value: Value::Ip(ip) });
        assert_eq!(b.bytes().ip(ip), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(b.bytes().str(s), "after");
        assert!(std::str::from_utf8(&b.heap).is_ok(), "no address bytes among the text");
    }

    #[test]
    fn deserialized_batches_are_checked() {
        let mut b = EventBatch::new();
        let o = b.origin_index(&"s".into(), &"p".into());
        b.push_raw(o, 1, "é".as_bytes()).unwrap();
        let text = std::str::from_utf8(&b.raw).unwrap();
        let r = raw_ref(Raw(&b.raw), text).unwrap();
        b.push_slot(Slot { key: Key::Core(ids::EVENT_ORIGINAL), value: Value::Str(r) });
        let json = serde_json::to_string(&b).unwrap();
        let back: EventBatch = serde_json::from_str(&json).unwrap();
        assert_eq!(back.row_to_json(0)["event.original"], "é");
        // A reference into the middle of the character, as a corrupt or forged batch might hold.
        let forged = json.replace("\"len\":2}}}", "\"len\":1}}}");
        assert_ne!(forged, json);
        let err = serde_json::from_str::<EventBatch>(&forged).unwrap_err().to_string();
        assert!(err.contains("invalid UTF-8"), "{err}");
    }
}
