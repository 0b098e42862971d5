//! Which pack claims a record, fast: with many packs enabled most of them fail on a field
//! their `when` needs and the record lacks. One pass over the record's fields marks which of
//! the fields any pack's `when` names are present (a length/first-byte filter before a hash
//! lookup, so most fields cost two loads); a pack whose required fields are not all present is
//! skipped without evaluating a condition. Same result as trying every pack in order.

use ward_engine::batch::{Bytes, Key, Slot};
use ward_engine::fields::FieldId;

use super::pack::{Pack, Target, Test};

/// Field names longer than this are looked up without the quick filter's help.
const QUICK_LEN: usize = 64;

pub struct PackSelector {
    /// Extension field name → bit.
    ext: ahash::AHashMap<Box<[u8]>, u8>,
    /// Core field id → bit (255: not named by any `when`).
    core: Vec<u8>,
    /// Bit `b % 64` of `quick[len][b / 64]` is set when some named field of that length starts
    /// with byte `b`.
    quick: Vec<[u64; 4]>,
    /// Fields each pack's `when` needs present (its positive conditions).
    required: Vec<u64>,
    /// More than 64 distinct names: no filtering, every pack is tried.
    disabled: bool,
}

impl PackSelector {
    pub fn new(packs: &[Pack]) -> PackSelector {
        let mut ext: ahash::AHashMap<Box<[u8]>, u8> = ahash::AHashMap::new();
        let mut core = vec![255u8; FieldId::all().count()];
        let mut quick = vec![[0u64; 4]; QUICK_LEN + 1];
        let mut required = Vec::with_capacity(packs.len());
        let mut next = 0usize;
        let mut disabled = false;
        for p in packs {
            let mut mask = 0u64;
            for c in &p.when {
                if matches!(c.test, Test::Exists(false)) {
                    continue;
                }
                let bit = match &c.field {
                    Target::Core(id) => {
                        let slot = &mut core[id.0 as usize];
                        if *slot == 255 {
                            *slot = next as u8;
                            next += 1;
                        }
                        *slot
                    }
                    Target::Ext(name) => match ext.get(name.as_bytes()) {
                        Some(b) => *b,
                        None => {
                            let b = next as u8;
                            next += 1;
                            ext.insert(name.as_bytes().into(), b);
                            let bytes = name.as_bytes();
                            let len = bytes.len().min(QUICK_LEN);
                            let first = bytes.first().copied().unwrap_or(0) as usize;
                            quick[len][first / 64] |= 1 << (first % 64);
                            b
                        }
                    },
                };
                if next > 64 {
                    disabled = true;
                }
                mask |= 1u64.checked_shl(bit as u32).unwrap_or(0);
            }
            required.push(mask);
        }
        PackSelector { ext, core, quick, required, disabled }
    }

    /// Bits of the named fields present in a record's slots.
    fn present(&self, b: Bytes<'_>, slots: &[Slot]) -> u64 {
        let mut present = 0u64;
        for s in slots {
            match s.key {
                Key::Core(id) => {
                    if let Some(&bit) = self.core.get(id.0 as usize).filter(|b| **b != 255) {
                        present |= 1 << bit;
                    }
                }
                Key::Ext(r) => {
                    let name = b.bytes(r);
                    let first = name.first().copied().unwrap_or(0) as usize;
                    if self.quick[name.len().min(QUICK_LEN)][first / 64] & (1 << (first % 64)) == 0 {
                        continue;
                    }
                    if let Some(&bit) = self.ext.get(name) {
                        present |= 1 << bit;
                    }
                }
            }
        }
        present
    }

    /// The packs that may claim the record, in order (a superset of those whose `when` holds).
    pub fn candidates<'a>(&'a self, b: Bytes<'_>, slots: &[Slot]) -> impl Iterator<Item = usize> + 'a {
        let present = if self.disabled { u64::MAX } else { self.present(b, slots) };
        let disabled = self.disabled;
        self.required.iter().enumerate().filter(move |(_, m)| disabled || present & **m == **m).map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use ward_engine::batch::EventBatch;
    use ward_engine::component::{Operator, OperatorOutput};
    use ward_engine::resources::Resources;

    #[test]
    fn the_selected_pack_is_the_first_whose_when_holds() {
        let packs = super::super::load_packs(&super::super::builtin::all_refs(), &Resources::new(".")).unwrap();
        let records = [
            r#"{"Event":{"System":{"EventID":1}}}"#,
            r#"{"winlog":{"event_id":"4624"},"@timestamp":"2026-01-01T00:00:00Z"}"#,
            r#"{"EventID":4624,"Channel":"Security"}"#,
            r#"{"eventVersion":"1.09","eventSource":"s3.amazonaws.com","eventName":"GetObject"}"#,
            r#"{"eventSource":"s3.amazonaws.com","eventName":"GetObject"}"#,
            r#"{"event_type":"dns","flow_id":1}"#,
            r#"{"schemaVersion":"2.0","service":{"serviceName":"guardduty"}}"#,
            r#"{"schemaVersion":"2.0","service":{"serviceName":"other"}}"#,
            r#"{"uuid":"u","eventType":"x","published":"2026-01-01T00:00:00Z"}"#,
            r#"{"foo":1}"#,
            "<13>Jan  5 08:00:00 host sshd[1]: Accepted password for a from 10.0.0.1 port 22 ssh2",
            "not parsed at all by anything",
        ];
        let mut batch = EventBatch::new();
        let o = batch.origin_index(&"s".into(), &"p".into());
        for (i, r) in records.iter().enumerate() {
            batch.push_raw(o, i as u64 + 1, r.as_bytes()).unwrap();
        }
        let mut parser =
            crate::parse::Parser::new(Arc::from("p"), crate::parse::Format::Auto, 1 << 20, Default::default());
        let mut out = OperatorOutput::default();
        parser.process(batch, 0, &mut out);
        let selector = PackSelector::new(&packs);
        let mut seen = 0;
        for b in &out.events {
            for row in 0..b.len() {
                let slots = b.row_slots(row);
                let linear = super::super::claim(&packs, b, row).ok();
                let selected = selector
                    .candidates(b.bytes(), slots)
                    .find(|&i| packs[i].when.iter().all(|c| super::super::holds(b.bytes(), slots, c)));
                assert_eq!(selected, linear, "record {}", b.provenance(row).offset);
                seen += 1;
            }
        }
        assert_eq!(seen, records.len() - 1, "all but the unparsable line");
    }
}
