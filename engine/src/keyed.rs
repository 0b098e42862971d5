//! Keyed, stateful operators (docs/architecture.md, "Keyed state").
//!
//! A stateful operator's state is a map from keys to per-key state. Keys hash into key groups
//! ([`crate::key_groups`]); records travel to the worker owning their key's group (timely
//! exchange). State is snapshotted and restored per key group, so a checkpoint written by N
//! workers can be restored onto M.
//!
//! An operator comes in two halves, both created per worker: a [`Router`] that runs before the
//! exchange and names the keys a record touches, and the [`KeyedOperator`] that owns the state
//! of its key groups, receives the records of its keys and is told when the watermark
//! advances. Outputs must not depend on the order records arrive in within the lateness bound:
//! operators buffer by event time and decide when the watermark passes.

use serde::{Deserialize, Serialize};

use crate::alert::Alert;
use crate::batch::EventBatch;
use crate::case::CaseRecord;
use crate::component::{OperatorOutput, WorkerContext};
use crate::time::EventTime;

/// A record as a router sees it.
#[derive(Clone, Copy)]
pub enum RecordRef<'a> {
    Event { batch: &'a EventBatch, row: usize },
    Alert(&'a Alert),
    Case(&'a CaseRecord),
}

/// What happens to a record besides going to the workers of its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// To the owners of the keys only.
    Keyed,
    /// Also straight to the operator's output, unchanged (e.g. alerts a correlation does not
    /// absorb); with no keys, only that.
    PassThrough,
    /// Neither: dropped on purpose (counted as filtered).
    Drop,
}

/// The pre-exchange half of a stateful operator.
pub trait Router {
    /// The records that follow belong to checkpoint epoch `epoch` (rule sets switch by epoch).
    fn begin_epoch(&mut self, _epoch: u64) {}
    /// Pushes the key hashes `record` touches into `keys` (empty on entry).
    fn route(&mut self, record: RecordRef<'_>, keys: &mut Vec<u64>) -> Route;
    /// The only fields the keyed half reads from events, if it reads few: events cross the
    /// exchange with just those (and their provenance), not whole. None: whole events.
    /// `route` too must read no other field: it is given alerts already projected.
    fn projection(&self) -> Option<crate::batch::Projection> {
        None
    }
    /// Whether the keyed half reads only an alert's summary ([`Alert::summary`]): alerts then
    /// cross the exchange without their event and matches (ignored when `projection` is set).
    fn keyed_alert_summary(&self) -> bool {
        false
    }
}

/// The stateful half, owning the key groups of its worker.
pub trait KeyedOperator {
    /// The records and watermark that follow belong to checkpoint epoch `epoch`.
    fn begin_epoch(&mut self, _epoch: u64) {}
    /// Events with a key this worker owns (every row has a valid event time not behind the
    /// watermark). An event with several keys goes to each of their owners; the owner of its
    /// first key counts it in the ledger.
    fn process_events(&mut self, _batch: EventBatch, _out: &mut OperatorOutput) {}
    /// An alert with at least one key this worker owns. `primary`: this worker received the
    /// copy that counts in the ledger (an alert routed to several workers arrives once each).
    fn process_alert(&mut self, _alert: Alert, _primary: bool, _out: &mut OperatorOutput) {}
    /// A case record with at least one key this worker owns (`primary` as for alerts).
    fn process_case(&mut self, _case: CaseRecord, _primary: bool, _out: &mut OperatorOutput) {}
    /// The watermark passed `watermark`: no more records with an earlier event time arrive.
    fn advance(&mut self, watermark: EventTime, out: &mut OperatorOutput);
    /// The earliest event time the operator may still emit (state it holds back), if any; the
    /// watermark it forwards downstream is at most this.
    fn hold(&self) -> Option<EventTime> {
        None
    }
    /// Called about once a second on processing time, for operators configured with
    /// processing-time timers.
    fn tick(&mut self, _now_ms: i64, _out: &mut OperatorOutput) {}
    /// The state of each of `groups` (a worker's share, written at every checkpoint), each
    /// serialized on its own so any worker count can restore it; groups holding nothing left
    /// out. Read in one pass over the operator's state, not once per group (a dedup table
    /// filtered for each of 128 groups was read 128 times per checkpoint):
    /// [`crate::key_groups::split_by_group`] splits state kept in one table.
    fn snapshot_groups(&self, groups: &[u16]) -> anyhow::Result<Vec<(u16, Vec<u8>)>>;
    /// The state of one key group, serialized. Empty when the group holds nothing.
    fn snapshot(&self, group: u16) -> anyhow::Result<Vec<u8>> {
        Ok(self.snapshot_groups(&[group])?.pop().map(|(_, bytes)| bytes).unwrap_or_default())
    }
    /// Loads a key group's state written by [`KeyedOperator::snapshot`] (possibly by another
    /// worker count), then [`KeyedOperator::advance`] is called with the checkpoint's watermark.
    fn restore(&mut self, group: u16, bytes: &[u8]) -> anyhow::Result<()>;
    /// Keys with live state (for metrics and the memory benchmark).
    fn live_keys(&self) -> usize;
    /// Called once after a restore, before any record: what it emits goes out at the epoch of
    /// the checkpoint restored (before every epoch of the run). Views re-feed their state this
    /// way; other operators emit nothing.
    fn restored(&mut self, _out: &mut OperatorOutput) {}
}

pub trait KeyedOperatorFactory: Send + Sync {
    fn router(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Router>>;
    fn operator(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn KeyedOperator>>;
}

/// What crosses the exchange between a router and the keyed operators.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Routed {
    /// Index of the receiving worker.
    pub target: u32,
    pub body: RoutedBody,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum RoutedBody {
    Events(EventBatch),
    /// As JSON text between processes: an alert's serde form (optional fields left out, an
    /// embedded JSON event) suits JSON, not the binary encoding of timely's networking.
    #[serde(with = "json_text")]
    Alerts(Vec<(Alert, bool)>),
    /// As JSON text, like alerts (optional fields left out).
    #[serde(with = "json_text")]
    Cases(Vec<(CaseRecord, bool)>),
    /// Input `input` of the operator on worker `worker` has watermark `time`.
    Watermark {
        input: u32,
        worker: u32,
        time: EventTime,
    },
}

/// Records as JSON text inside the binary encoding.
mod json_text {
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(records: &T, s: S) -> Result<S::Ok, S::Error> {
        let text = serde_json::to_string(records).map_err(serde::ser::Error::custom)?;
        text.serialize(s)
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let text = String::deserialize(d)?;
        serde_json::from_str(&text).map_err(serde::de::Error::custom)
    }
}

/// Serializes state for snapshots (compact, stable for a given type).
pub fn encode<T: Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| anyhow::anyhow!("cannot encode state: {e}"))
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> anyhow::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| anyhow::anyhow!("cannot decode state: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_cross_processes_in_a_binary_encoding_without_loss() {
        // Binary encodings (timely's bincode, postcard) cannot skip optional fields or decode a
        // JSON value; the alerts travel as JSON text inside them.
        let alert: Alert = serde_json::from_value(serde_json::json!({
            "alert_id": "a1", "priority": 3, "ruleset_version": "v", "detector": "d", "matches": [],
            "event_id": null, "event_time_ms": 5,
            "rule": {"id": "r", "title": "t", "level": "high", "status": "test", "tags": [], "techniques": []},
            "origin": {"source": "s", "partition": "p", "offset": 7},
            "event": {"process.name": "cmd.exe", "n": [1, {"x": null}]},
            "fields": [["TargetUserName", "bob"]],
        }))
        .unwrap();
        let routed = Routed { target: 2, body: RoutedBody::Alerts(vec![(alert.clone(), true)]) };
        let bytes = encode(&routed).unwrap();
        let back: Routed = decode(&bytes).unwrap();
        match back.body {
            RoutedBody::Alerts(a) => assert_eq!(a, vec![(alert, true)]),
            other => panic!("{other:?}"),
        }
    }
}
