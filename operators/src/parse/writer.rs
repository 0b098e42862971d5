//! Writes one record's parsed fields into a batch as extension slots.
//!
//! Strings that are slices of the record's own payload are referenced in place (no copy);
//! everything else (unescaped strings, dotted paths of nested keys) is appended to the
//! batch heap. Nothing here allocates per field once the batch buffers have grown.

use ward_engine::batch::{raw_ref, Heap, HeapMark, Key, Raw, Slot, StrRef, Value};

pub struct FieldWriter<'a> {
    pub(crate) raw: Raw<'a>,
    pub(crate) heap: Heap<'a>,
    pub(crate) slots: &'a mut Vec<Slot>,
    /// Slots of the record being written start here (so a failed parse can be rolled back).
    pub(crate) row_start: usize,
    heap_start: HeapMark,
    /// Reused buffer for dotted key paths (JSON).
    pub(crate) path: String,
}

impl<'a> FieldWriter<'a> {
    pub fn new(raw: Raw<'a>, heap: Heap<'a>, slots: &'a mut Vec<Slot>) -> Self {
        let row_start = slots.len();
        let heap_start = heap.mark();
        FieldWriter { raw, heap, slots, row_start, heap_start, path: String::new() }
    }

    /// Starts a new record.
    pub fn begin(&mut self) {
        self.row_start = self.slots.len();
        self.heap_start = self.heap.mark();
    }

    /// Drops everything written since `begin` (the record is being quarantined); the slots
    /// referring to it go with it.
    pub fn rollback(&mut self) {
        self.slots.truncate(self.row_start);
        self.heap.rollback(self.heap_start);
    }

    pub fn written(&self) -> usize {
        self.slots.len() - self.row_start
    }

    #[inline]
    pub fn text(&mut self, s: &str) -> StrRef {
        match raw_ref(self.raw, s) {
            Some(r) => r,
            None => self.heap.push_str(s),
        }
    }

    #[inline]
    pub fn key(&mut self, k: &str) -> Key {
        Key::Ext(self.text(k))
    }

    #[inline]
    pub fn put(&mut self, key: &str, value: Value) {
        let key = self.key(key);
        self.slots.push(Slot { key, value });
    }

    #[inline]
    pub fn put_str(&mut self, key: &str, value: &str) {
        let v = self.text(value);
        self.put(key, Value::Str(v));
    }

    #[inline]
    pub fn put_keyed(&mut self, key: Key, value: Value) {
        self.slots.push(Slot { key, value });
    }

    /// Appends an owned or computed string to the heap (e.g. unescaped text).
    pub fn heap_str(&mut self, s: &str) -> StrRef {
        self.heap.push_str(s)
    }

    pub fn heap(&mut self) -> &mut Heap<'a> {
        &mut self.heap
    }
}
