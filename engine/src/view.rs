//! Views (docs/architecture.md §9): declarative aggregates over events and alerts, grouped by
//! fields and event-time windows, maintained incrementally with differential-dataflow.
//!
//! A view component is a keyed operator (its routers and keyed state are those of every
//! stateful operator: event time, watermarks, key groups, checkpoints) whose output is not
//! records but **updates** of a collection: `(key, input) ± 1`, where the key is the group and
//! window and the input the values the measures read. Differential-dataflow reduces that
//! collection to one row of measures per key ([`ViewLogic::measures`]), and, for a top-k view,
//! reduces the rows of each window to the k largest; the rows' changes, consolidated per epoch,
//! are the view's output ([`ViewChange`]).
//!
//! A window's inputs are retracted once the watermark has passed its end (differential then
//! forgets it); the retraction of its rows that follows is not a change of the view but the
//! end of its state, and is not emitted: a closed window's last row stays the view's row.

use std::fmt;
use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::keyed::KeyedOperatorFactory;

/// A value a view groups by or measures.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ViewValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(F64),
    /// Inline up to 24 bytes (host names, datasets, rule ids, addresses): a view reads and
    /// copies these for every record, without allocating. Serialized as a plain string.
    Str(CompactString),
}

/// An `f64` with a total order (`total_cmp`), so it can be a key.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct F64(pub f64);

impl PartialEq for F64 {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0).is_eq()
    }
}
impl Eq for F64 {}
impl PartialOrd for F64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for F64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl std::hash::Hash for F64 {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}

impl ViewValue {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ViewValue::Int(i) => Some(*i as f64),
            ViewValue::Float(f) => Some(f.0),
            ViewValue::Bool(b) => Some(*b as u8 as f64),
            ViewValue::Str(s) => s.trim().parse().ok(),
            ViewValue::Null => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ViewValue::Null => serde_json::Value::Null,
            ViewValue::Bool(b) => (*b).into(),
            ViewValue::Int(i) => (*i).into(),
            ViewValue::Float(f) => serde_json::Number::from_f64(f.0).map_or(serde_json::Value::Null, Into::into),
            ViewValue::Str(s) => s.as_str().into(),
        }
    }
}

impl fmt::Display for ViewValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ViewValue::Null => Ok(()),
            ViewValue::Bool(b) => write!(f, "{b}"),
            ViewValue::Int(i) => write!(f, "{i}"),
            ViewValue::Float(x) => write!(f, "{}", x.0),
            ViewValue::Str(s) => f.write_str(s),
        }
    }
}

/// The key of a view's row: its event-time window (`[start, end)` in ms, none for views
/// without a window) and its group's values. Windows first, so a window's rows sort together.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ViewKey {
    pub window: Option<(i64, i64)>,
    pub group: Vec<ViewValue>,
}

/// One update of a view's input collection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewUpdate {
    pub key: ViewKey,
    /// The values the measures read (one per measure field, in the view's order).
    pub input: Vec<ViewValue>,
    pub diff: i64,
}

/// What a view's keyed state hands differential-dataflow for one epoch: updates of its input
/// collection, and the keys whose window closed (their inputs are retracted in `updates` of the
/// same epoch, and the retraction of their rows is not a change of the view).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ViewDelta {
    pub updates: Vec<ViewUpdate>,
    pub closed: Vec<ViewKey>,
}

impl ViewDelta {
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty() && self.closed.is_empty()
    }
}

/// A view key's hash, stable across processes and runs (xxh3 of its values): its key group
/// for the keyed state, and the worker its changes are finished on.
pub fn key_hash(key: &ViewKey) -> u64 {
    key_hash_of(key.window, &key.group)
}

/// [`key_hash`] of the key a window and a group would make, without making it. The key's
/// bytes are laid out in a buffer (on the stack for usual keys) and hashed in one call: xxh3
/// of the same bytes a streaming hasher would be given, so the same hash.
pub fn key_hash_of(window: Option<(i64, i64)>, group: &[ViewValue]) -> u64 {
    fn put(buf: &mut [u8], at: &mut usize, bytes: &[u8]) {
        buf[*at..*at + bytes.len()].copy_from_slice(bytes);
        *at += bytes.len();
    }
    let len = if window.is_some() { 16 } else { 0 }
        + group
            .iter()
            .map(|v| match v {
                ViewValue::Null => 1,
                ViewValue::Bool(_) => 2,
                ViewValue::Int(_) | ViewValue::Float(_) => 9,
                ViewValue::Str(s) => 9 + s.len(),
            })
            .sum::<usize>();
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let buf: &mut [u8] = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    let mut at = 0;
    if let Some((start, end)) = window {
        put(buf, &mut at, &start.to_le_bytes());
        put(buf, &mut at, &end.to_le_bytes());
    }
    for v in group {
        match v {
            ViewValue::Null => put(buf, &mut at, &[0]),
            ViewValue::Bool(b) => put(buf, &mut at, &[1, *b as u8]),
            ViewValue::Int(i) => {
                put(buf, &mut at, &[2]);
                put(buf, &mut at, &i.to_le_bytes());
            }
            ViewValue::Float(f) => {
                put(buf, &mut at, &[3]);
                put(buf, &mut at, &f.0.to_bits().to_le_bytes());
            }
            ViewValue::Str(s) => {
                put(buf, &mut at, &[4]);
                put(buf, &mut at, &(s.len() as u64).to_le_bytes());
                put(buf, &mut at, s.as_bytes());
            }
        }
    }
    xxhash_rust::xxh3::xxh3_64(buf)
}

/// The names a view's rows are made of, for sinks and table definitions.
#[derive(Debug, PartialEq, Eq)]
pub struct ViewShape {
    pub view: String,
    pub group_by: Vec<String>,
    pub measures: Vec<String>,
    /// Per measure: its function (`count`, `count_distinct`, `sum`, `avg`, `min`, `max`) and
    /// the field it reads.
    pub measure_fns: Vec<(String, Option<String>)>,
    pub windowed: bool,
}

/// Names a view's measures cannot take: the columns every view table has.
pub const RESERVED_COLUMNS: &[&str] =
    &["view", "epoch", "version", "sign", "diff", "window_start", "window_end", "ward_id", "group", "measures"];

/// A change of a view: a row inserted (`diff` +1) or retracted (−1) at checkpoint epoch `epoch`.
/// `version` is the epoch the row was inserted at, on its insertion and on its retraction: the
/// pair cancels out in a ClickHouse `VersionedCollapsingMergeTree` (sign, version).
#[derive(Clone, Debug, PartialEq)]
pub struct ViewChange {
    pub shape: Arc<ViewShape>,
    pub epoch: u64,
    pub version: u64,
    pub key: ViewKey,
    pub measures: Vec<ViewValue>,
    pub diff: i64,
}

impl ViewChange {
    /// `{"view", "epoch", "diff", "window_start", "window_end", "group": {...}, "measures": {...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut o = serde_json::Map::new();
        o.insert("view".into(), self.shape.view.clone().into());
        o.insert("epoch".into(), self.epoch.into());
        o.insert("version".into(), self.version.into());
        o.insert("diff".into(), self.diff.into());
        if let Some((start, end)) = self.key.window {
            o.insert("window_start".into(), crate::batch::format_timestamp_ms(start).into());
            o.insert("window_end".into(), crate::batch::format_timestamp_ms(end).into());
        }
        let group = self.shape.group_by.iter().zip(&self.key.group).map(|(n, v)| (n.clone(), v.to_json()));
        o.insert("group".into(), serde_json::Value::Object(group.collect()));
        let measures = self.shape.measures.iter().zip(&self.measures).map(|(n, v)| (n.clone(), v.to_json()));
        o.insert("measures".into(), serde_json::Value::Object(measures.collect()));
        serde_json::Value::Object(o)
    }
}

impl ViewChange {
    /// The change as one flat record for a table: the group's fields and the measures by name,
    /// `sign` (the difference), `version`, `epoch`, `view`, and the window's bounds in ms.
    pub fn to_row_json(&self) -> serde_json::Value {
        let mut o = serde_json::Map::new();
        o.insert("view".into(), self.shape.view.clone().into());
        o.insert("epoch".into(), self.epoch.into());
        o.insert("version".into(), self.version.into());
        o.insert("sign".into(), self.diff.into());
        if let Some((start, end)) = self.key.window {
            o.insert("window_start_ms".into(), start.into());
            o.insert("window_end_ms".into(), end.into());
        }
        for (n, v) in self.shape.group_by.iter().zip(&self.key.group) {
            o.insert(n.clone(), v.to_json());
        }
        for (n, v) in self.shape.measures.iter().zip(&self.measures) {
            o.insert(n.clone(), v.to_json());
        }
        serde_json::Value::Object(o)
    }
}

/// What differential-dataflow runs for a view.
pub trait ViewLogic: Send + Sync {
    fn shape(&self) -> Arc<ViewShape>;
    /// The measures of one key from its inputs (sorted, each with its positive multiplicity).
    fn measures(&self, key: &ViewKey, inputs: &[(&Vec<ViewValue>, isize)]) -> Vec<ViewValue>;
    /// Top-k: keep, per window, the `k` rows largest by measure `by` (ties by group).
    fn top(&self) -> Option<(usize, usize)>;
}

/// A view component: the keyed halves (router and keyed state emitting [`ViewUpdate`]s) and
/// the logic differential-dataflow runs on them.
pub trait ViewFactory: KeyedOperatorFactory {
    fn logic(&self) -> Arc<dyn ViewLogic>;
}

/// Orders rows for top-k: larger measure first, then group (so ties are deterministic).
pub fn top_order(a: (&ViewValue, &[ViewValue]), b: (&ViewValue, &[ViewValue])) -> std::cmp::Ordering {
    b.0.cmp(a.0).then_with(|| a.1.cmp(b.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_are_those_of_the_streaming_hasher_checkpoints_were_keyed_by() {
        // The key groups of checkpointed view state come from these hashes: they must not
        // change. The reference is the streaming form the hash was first written in.
        fn streaming(key: &ViewKey) -> u64 {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            if let Some((start, end)) = key.window {
                h.update(&start.to_le_bytes());
                h.update(&end.to_le_bytes());
            }
            for v in &key.group {
                match v {
                    ViewValue::Null => h.update(&[0]),
                    ViewValue::Bool(b) => h.update(&[1, *b as u8]),
                    ViewValue::Int(i) => {
                        h.update(&[2]);
                        h.update(&i.to_le_bytes());
                    }
                    ViewValue::Float(f) => {
                        h.update(&[3]);
                        h.update(&f.0.to_bits().to_le_bytes());
                    }
                    ViewValue::Str(s) => {
                        h.update(&[4]);
                        h.update(&(s.len() as u64).to_le_bytes());
                        h.update(s.as_bytes());
                    }
                }
            }
            h.digest()
        }
        let long = "x".repeat(5_000);
        let groups = [
            vec![],
            vec![ViewValue::Str("web-1".into())],
            vec![ViewValue::Null, ViewValue::Bool(true), ViewValue::Int(-7), ViewValue::Float(F64(2.5))],
            vec![ViewValue::Str("windows.sysmon".into()), ViewValue::Str(long.as_str().into())],
        ];
        for group in groups {
            for window in [None, Some((60_000, 120_000)), Some((i64::MIN, i64::MAX))] {
                let key = ViewKey { window, group: group.clone() };
                assert_eq!(key_hash(&key), streaming(&key), "{key:?}");
            }
        }
        assert_eq!(key_hash(&ViewKey { window: None, group: vec![] }), xxhash_rust::xxh3::xxh3_64(b""));
    }

    #[test]
    fn values_order_totally_and_render_as_json() {
        let mut v =
            vec![ViewValue::Float(F64(f64::NAN)), ViewValue::Int(3), ViewValue::Null, ViewValue::Float(F64(-0.5))];
        v.sort();
        assert_eq!(v[0], ViewValue::Null);
        assert_eq!(ViewValue::Float(F64(1.5)).to_json(), serde_json::json!(1.5));
        assert_eq!(ViewValue::Float(F64(f64::NAN)).to_json(), serde_json::Value::Null);
        assert_eq!(ViewValue::Str(" 4.5 ".into()).as_f64(), Some(4.5));
    }

    #[test]
    fn changes_render_with_their_names() {
        let shape = Arc::new(ViewShape {
            view: "per_host".into(),
            group_by: vec!["host.name".into()],
            measures: vec!["events".into()],
            measure_fns: vec![("count".into(), None)],
            windowed: true,
        });
        let c = ViewChange {
            shape,
            epoch: 7,
            version: 5,
            key: ViewKey { window: Some((0, 60_000)), group: vec![ViewValue::Str("h1".into())] },
            measures: vec![ViewValue::Int(3)],
            diff: -1,
        };
        assert_eq!(
            c.to_json(),
            serde_json::json!({"view": "per_host", "epoch": 7, "version": 5, "diff": -1,
                "window_start": "1970-01-01T00:00:00.000Z", "window_end": "1970-01-01T00:01:00.000Z",
                "group": {"host.name": "h1"}, "measures": {"events": 3}})
        );
    }
}
