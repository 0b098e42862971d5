//! `dedup`: drops duplicate events within an event-time horizon (docs/architecture.md §6).
//!
//! Events are keyed by the values of the configured fields (default `event.id`; an event with
//! none of them is keyed by its raw payload) and routed by key to the worker owning the key's
//! group. The first copy passes, later copies within the horizon are dropped (counted as
//! filtered). A key's state is released once the watermark passes its event time plus the
//! horizon, so memory stays bounded on an endless stream. Which copy passes follows arrival
//! order; copies are equal by key, so the content is the same.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use ward_engine::batch::{EventBatch, Key};
use ward_engine::component::{OperatorOutput, StreamKind, WorkerContext};
use ward_engine::fields::FieldId;
use ward_engine::key_groups::{split_by_group, KEY_GROUPS};
use ward_engine::keyed::{decode, encode, KeyedOperator, KeyedOperatorFactory, RecordRef, Route, Router};
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};
use ward_engine::time::{event_time, EventTime, WATERMARK_MIN};

/// Drop duplicate events (same key fields) within an event-time horizon.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// Fields whose values identify an event (ECS-lite names or extension field names).
    #[serde(default = "default_key")]
    pub key: Vec<String>,
    /// How long after an event (in event time) its duplicates are still recognised.
    #[serde(default = "default_horizon", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub horizon: Duration,
}

fn default_key() -> Vec<String> {
    vec!["event.id".into()]
}
fn default_horizon() -> Duration {
    Duration::from_secs(600)
}

impl ComponentConfig for DedupConfig {
    const TYPE: &'static str = "dedup";
    const SECTION: Section = Section::Operator;
    const DESCRIPTION: &'static str = "Drop duplicate events by key within an event-time horizon (keyed state)";
    const ACCEPTS: &'static [StreamKind] = &[StreamKind::Events];
    const OUTPUT: Option<StreamKind> = Some(StreamKind::Events);

    fn build(self, _ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        if self.key.is_empty() {
            anyhow::bail!("`key` names no field");
        }
        if self.horizon.is_zero() {
            anyhow::bail!("`horizon` must be positive");
        }
        let key = self
            .key
            .iter()
            .map(|k| match FieldId::lookup(k) {
                Some(id) => KeyField::Core(id),
                None => KeyField::Ext(k.clone()),
            })
            .collect();
        Ok(Built::Keyed(Arc::new(DedupFactory {
            key: Arc::new(key),
            horizon_ms: self.horizon.as_millis().min(i64::MAX as u128) as i64,
        })))
    }
}

#[derive(Clone, Debug)]
enum KeyField {
    Core(FieldId),
    Ext(String),
}

/// The dedup key of a row: its key fields' values (as JSON text, written into `text`), or its
/// raw payload if it has none.
fn key_of(fields: &[KeyField], batch: &EventBatch, row: usize, text: &mut Vec<u8>) -> u64 {
    let b = batch.bytes();
    let slots = batch.row_slots(row);
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut any = false;
    for f in fields {
        let found = slots.iter().find(|s| match (f, s.key) {
            (KeyField::Core(id), Key::Core(k)) => *id == k,
            (KeyField::Ext(n), Key::Ext(_)) => b.key_name(s.key) == n,
            _ => false,
        });
        h.update(&[0x1f]);
        if let Some(s) = found {
            any = true;
            text.clear();
            ward_engine::batch::write_value_json(b, s.value, text);
            h.update(text);
        }
    }
    if !any {
        h.update(batch.raw_payload(row));
    }
    h.digest()
}

struct DedupFactory {
    key: Arc<Vec<KeyField>>,
    horizon_ms: i64,
}

impl KeyedOperatorFactory for DedupFactory {
    fn router(&self, _ctx: &WorkerContext) -> anyhow::Result<Box<dyn Router>> {
        Ok(Box::new(DedupRouter { key: self.key.clone(), text: Vec::new() }))
    }
    fn operator(&self, _ctx: &WorkerContext) -> anyhow::Result<Box<dyn KeyedOperator>> {
        Ok(Box::new(Dedup::new(self.key.clone(), self.horizon_ms)))
    }
}

struct DedupRouter {
    key: Arc<Vec<KeyField>>,
    text: Vec<u8>,
}

impl Router for DedupRouter {
    fn route(&mut self, record: RecordRef<'_>, keys: &mut Vec<u64>) -> Route {
        match record {
            RecordRef::Event { batch, row } => {
                keys.push(key_of(&self.key, batch, row, &mut self.text));
                Route::Keyed
            }
            RecordRef::Alert(_) | RecordRef::Case(_) => Route::PassThrough,
        }
    }
}

/// Seen keys and when they expire.
pub struct Dedup {
    key: Arc<Vec<KeyField>>,
    horizon_ms: i64,
    /// key → event time after which the key is forgotten. (Keys are hashes of event fields an
    /// attacker may choose, so the table keeps a seeded hasher; ahash's is the fast one.)
    seen: ahash::AHashMap<u64, EventTime>,
    expiry: BinaryHeap<Reverse<(EventTime, u64)>>,
    watermark: EventTime,
    text: Vec<u8>,
}

impl Dedup {
    fn new(key: Arc<Vec<KeyField>>, horizon_ms: i64) -> Self {
        Dedup {
            key,
            horizon_ms,
            seen: ahash::AHashMap::new(),
            expiry: BinaryHeap::new(),
            watermark: WATERMARK_MIN,
            text: Vec::new(),
        }
    }
}

impl KeyedOperator for Dedup {
    fn process_events(&mut self, mut batch: EventBatch, out: &mut OperatorOutput) {
        let mut keep = vec![true; batch.len()];
        for (row, k) in keep.iter_mut().enumerate() {
            let key = key_of(&self.key, &batch, row, &mut self.text);
            let t = event_time(&batch, row).unwrap_or(self.watermark);
            match self.seen.entry(key) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    *k = false;
                    out.filtered += 1;
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    let until = t.saturating_add(self.horizon_ms);
                    v.insert(until);
                    self.expiry.push(Reverse((until, key)));
                }
            }
        }
        batch.retain_rows(|i| keep[i]);
        if !batch.is_empty() {
            out.events.push(batch);
        }
    }

    fn advance(&mut self, watermark: EventTime, _out: &mut OperatorOutput) {
        self.watermark = self.watermark.max(watermark);
        while let Some(Reverse((until, key))) = self.expiry.peek().copied() {
            if until >= self.watermark {
                break;
            }
            self.expiry.pop();
            if self.seen.get(&key) == Some(&until) {
                self.seen.remove(&key);
            }
        }
    }

    fn snapshot_groups(&self, groups: &[u16]) -> anyhow::Result<Vec<(u16, Vec<u8>)>> {
        split_by_group(self.seen.iter().map(|(k, t)| (*k, *t)), groups)
            .into_iter()
            .map(|(g, mut items)| {
                items.sort_unstable();
                encode(&(self.watermark, items)).map(|bytes| (g, bytes))
            })
            .collect()
    }

    fn restore(&mut self, group: u16, bytes: &[u8]) -> anyhow::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let (watermark, items): (EventTime, Vec<(u64, EventTime)>) = decode(bytes)?;
        anyhow::ensure!(group < KEY_GROUPS, "no key group {group}");
        self.watermark = self.watermark.max(watermark);
        for (k, until) in items {
            self.seen.insert(k, until);
            self.expiry.push(Reverse((until, k)));
        }
        Ok(())
    }

    fn live_keys(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_engine::batch::{Slot, Value};
    use ward_engine::fields::ids;

    fn batch(events: &[(&str, i64)]) -> EventBatch {
        let mut b = EventBatch::new();
        let o = b.origin_index(&"s".into(), &"p".into());
        for (i, (id, t)) in events.iter().enumerate() {
            b.push_raw(o, i as u64, format!("{id}@{t}").as_bytes()).expect("small test records fit");
            let r = b.heap().push_str(id);
            b.push_slot(Slot { key: Key::Core(ids::EVENT_ID), value: Value::Str(r) });
            b.push_slot(Slot { key: Key::Core(ids::TIMESTAMP), value: Value::Timestamp(*t) });
        }
        b
    }

    fn ids_of(out: &OperatorOutput) -> Vec<String> {
        let mut v = Vec::new();
        for b in &out.events {
            for r in 0..b.len() {
                v.push(String::from_utf8_lossy(b.raw_payload(r)).into_owned());
            }
        }
        v
    }

    fn dedup() -> Dedup {
        Dedup::new(Arc::new(vec![KeyField::Core(ids::EVENT_ID)]), 60_000)
    }

    /// Keys are kept in checkpoints: the key of a value must stay the hash of its
    /// `value_to_json` text, as it was when keys were made that way.
    #[test]
    fn keys_are_the_hash_of_the_values_json_text() {
        let mut b = EventBatch::new();
        let o = b.origin_index(&"s".into(), &"p".into());
        let s = b.heap().push_str("a \"quoted\" \\ path\u{1}é");
        let ip = b.heap().push_ip("2001:db8::1".parse().unwrap());
        let values = [
            Value::Str(s),
            Value::Int(-42),
            Value::Float(1.5),
            Value::Float(f64::NAN),
            Value::Bool(true),
            Value::Null,
            Value::Timestamp(1_700_000_000_123),
            Value::Ip(ip),
        ];
        for (i, v) in values.iter().enumerate() {
            b.push_raw(o, i as u64, b"x").expect("small test records fit");
            b.push_slot(Slot { key: Key::Core(ids::EVENT_ID), value: *v });
        }
        let fields = [KeyField::Core(ids::EVENT_ID)];
        for (row, v) in values.iter().enumerate() {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(&[0x1f]);
            h.update(ward_engine::batch::value_to_json(b.bytes(), *v).to_string().as_bytes());
            assert_eq!(key_of(&fields, &b, row, &mut Vec::new()), h.digest(), "{v:?}");
        }
    }

    /// A checkpoint writes each owned group's state as `snapshot` gives it, read in one pass.
    #[test]
    fn a_workers_groups_snapshot_at_once_as_one_by_one() {
        let mut d = dedup();
        let mut out = OperatorOutput::default();
        let events: Vec<(String, i64)> = (0..500).map(|i| (format!("e{i}"), 1000 + i)).collect();
        let refs: Vec<(&str, i64)> = events.iter().map(|(s, t)| (s.as_str(), *t)).collect();
        d.process_events(batch(&refs), &mut out);
        let owned: Vec<u16> = ward_engine::key_groups::owned_groups(1, 2).collect();
        let at_once = d.snapshot_groups(&owned).unwrap();
        let one_by_one: Vec<(u16, Vec<u8>)> =
            owned.iter().map(|g| (*g, d.snapshot(*g).unwrap())).filter(|(_, b)| !b.is_empty()).collect();
        assert!(at_once.len() > 50, "500 keys fill most of the 128 groups: {}", at_once.len());
        assert_eq!(at_once, one_by_one);
        let mut restored = dedup();
        for (g, bytes) in &at_once {
            restored.restore(*g, bytes).unwrap();
        }
        assert!((1..500).contains(&restored.live_keys()), "worker 1's share of the keys: {}", restored.live_keys());
        let all: Vec<u16> = (0..KEY_GROUPS).collect();
        let mut whole = dedup();
        for (g, bytes) in d.snapshot_groups(&all).unwrap() {
            whole.restore(g, &bytes).unwrap();
        }
        assert_eq!(whole.live_keys(), 500);
    }

    #[test]
    fn duplicates_within_the_horizon_are_dropped_and_state_is_released() {
        let mut d = dedup();
        let mut out = OperatorOutput::default();
        d.process_events(batch(&[("a", 1000), ("b", 2000), ("a", 3000)]), &mut out);
        assert_eq!(ids_of(&out), vec!["a@1000", "b@2000"]);
        assert_eq!(out.filtered, 1);
        d.advance(30_000, &mut out);
        assert_eq!(d.live_keys(), 2);
        d.advance(62_500, &mut out);
        assert_eq!(d.live_keys(), 0, "released once the watermark passes t + horizon");
    }

    #[test]
    fn snapshot_and_restore_keep_what_was_seen() {
        let mut d = dedup();
        let mut out = OperatorOutput::default();
        d.process_events(batch(&[("a", 1000), ("b", 2000), ("c", 2500)]), &mut out);
        d.advance(2000, &mut out);
        let snaps: Vec<Vec<u8>> = (0..KEY_GROUPS).map(|g| d.snapshot(g).unwrap()).collect();
        let mut fresh = dedup();
        for (g, s) in snaps.iter().enumerate() {
            fresh.restore(g as u16, s).unwrap();
        }
        let mut a = OperatorOutput::default();
        let mut b = OperatorOutput::default();
        let more = [("a", 5000), ("d", 5000), ("c", 6000)];
        d.process_events(batch(&more), &mut a);
        fresh.process_events(batch(&more), &mut b);
        assert_eq!(ids_of(&a), ids_of(&b));
        assert_eq!(ids_of(&a), vec!["d@5000"]);
        assert_eq!(fresh.live_keys(), d.live_keys());
    }
}
