//! `suppress`: collapses equal alerts into one per key and event-time bucket (docs/architecture.md §6).
//!
//! Alerts with the same key (default: rule id, host.id, user.name) in the same event-time
//! bucket (default 5 minutes, aligned to the epoch) collapse into one representative: the
//! earliest (by event time, then alert id). It is emitted once, **when the bucket closes**
//! (the watermark passes its end), carrying `suppression` with the number of collapsed repeats
//! and first/last seen. Waiting for the bucket makes the output independent of arrival order
//! (the same representative whatever the interleaving or worker count); the price is latency
//! of up to the bucket length plus the allowed out-of-orderness. The operator holds back its
//! output watermark to the oldest open bucket, so stateful operators downstream (sla) never see
//! its alerts as late.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use ward_engine::alert::{Alert, Suppression};
use ward_engine::component::{OperatorOutput, StreamKind, WorkerContext};
use ward_engine::key_groups::split_by_group;
use ward_engine::keyed::{decode, encode, KeyedOperator, KeyedOperatorFactory, RecordRef, Route, Router};
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};
use ward_engine::time::{EventTime, WATERMARK_MIN};

/// Collapse equal alerts (same key, same event-time bucket) into one with a repeat count.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SuppressConfig {
    /// What makes alerts equal: `rule.id`, `rule.level`, `detector`, or a field of the alert's
    /// event (`host.id`, `user.name`, ...) or of its correlation fields.
    #[serde(default = "default_key")]
    pub key: Vec<String>,
    /// Event-time bucket length.
    #[serde(default = "default_window", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub window: Duration,
}

fn default_key() -> Vec<String> {
    vec!["rule.id".into(), "host.id".into(), "user.name".into()]
}
fn default_window() -> Duration {
    Duration::from_secs(300)
}

impl ComponentConfig for SuppressConfig {
    const TYPE: &'static str = "suppress";
    const SECTION: Section = Section::Operator;
    const DESCRIPTION: &'static str =
        "Collapse equal alerts per key and event-time bucket into one with the repeat count (keyed state)";
    const ACCEPTS: &'static [StreamKind] = &[StreamKind::Alerts];
    const OUTPUT: Option<StreamKind> = Some(StreamKind::Alerts);

    fn build(self, _ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        if self.key.is_empty() {
            anyhow::bail!("`key` names no field");
        }
        let window_ms = self.window.as_millis().min(i64::MAX as u128) as i64;
        if window_ms <= 0 {
            anyhow::bail!("`window` must be positive");
        }
        Ok(Built::Keyed(Arc::new(SuppressFactory { key: Arc::new(self.key), window_ms })))
    }

    fn alert_keys(&self) -> Vec<String> {
        self.key.clone()
    }
}

/// (key hash of the fields and bucket, rendered key, bucket start) of an alert.
fn key_of(fields: &[String], window_ms: i64, alert: &Alert) -> (u64, String, EventTime) {
    let t = alert.event_time_ms.unwrap_or_default();
    let bucket = t.div_euclid(window_ms) * window_ms;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut text = String::new();
    for f in fields {
        let v = alert.field(f);
        h.update(v.as_bytes());
        h.update(&[0x1f]);
        if !text.is_empty() {
            text.push('|');
        }
        text.push_str(f);
        text.push('=');
        text.push_str(&v);
    }
    h.update(&bucket.to_le_bytes());
    (h.digest(), text, bucket)
}

struct SuppressFactory {
    key: Arc<Vec<String>>,
    window_ms: i64,
}

impl KeyedOperatorFactory for SuppressFactory {
    fn router(&self, _ctx: &WorkerContext) -> anyhow::Result<Box<dyn Router>> {
        Ok(Box::new(SuppressRouter { key: self.key.clone(), window_ms: self.window_ms }))
    }
    fn operator(&self, _ctx: &WorkerContext) -> anyhow::Result<Box<dyn KeyedOperator>> {
        Ok(Box::new(Suppress::new(self.key.clone(), self.window_ms)))
    }
}

struct SuppressRouter {
    key: Arc<Vec<String>>,
    window_ms: i64,
}

impl Router for SuppressRouter {
    fn route(&mut self, record: RecordRef<'_>, keys: &mut Vec<u64>) -> Route {
        match record {
            RecordRef::Alert(a) => {
                keys.push(key_of(&self.key, self.window_ms, a).0);
                Route::Keyed
            }
            RecordRef::Event { .. } | RecordRef::Case(_) => Route::PassThrough,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Bucket {
    representative: Alert,
    key: String,
    start: EventTime,
    count: u64,
    first: EventTime,
    last: EventTime,
}

/// Open buckets of the key groups one worker owns.
pub struct Suppress {
    key: Arc<Vec<String>>,
    window_ms: i64,
    open: HashMap<u64, Bucket>,
    /// (bucket end, key): due when the watermark reaches the end.
    timers: BinaryHeap<Reverse<(EventTime, u64)>>,
    /// Open buckets by start (the watermark hold).
    starts: BTreeMap<EventTime, usize>,
    watermark: EventTime,
}

impl Suppress {
    fn new(key: Arc<Vec<String>>, window_ms: i64) -> Self {
        Suppress {
            key,
            window_ms,
            open: HashMap::new(),
            timers: BinaryHeap::new(),
            starts: BTreeMap::new(),
            watermark: WATERMARK_MIN,
        }
    }

    fn open_bucket(&mut self, k: u64, b: Bucket) {
        self.timers.push(Reverse((b.start + self.window_ms, k)));
        *self.starts.entry(b.start).or_default() += 1;
        self.open.insert(k, b);
    }
}

impl KeyedOperator for Suppress {
    fn process_alert(&mut self, alert: Alert, _primary: bool, out: &mut OperatorOutput) {
        let (k, text, start) = key_of(&self.key, self.window_ms, &alert);
        let t = alert.event_time_ms.unwrap_or_default();
        match self.open.get_mut(&k) {
            Some(b) => {
                b.count += 1;
                b.first = b.first.min(t);
                b.last = b.last.max(t);
                let cur = &b.representative;
                if (t, &alert.alert_id) < (cur.event_time_ms.unwrap_or_default(), &cur.alert_id) {
                    b.representative = alert;
                }
                out.filtered += 1;
            }
            None => {
                self.open_bucket(k, Bucket { representative: alert, key: text, start, count: 1, first: t, last: t });
                out.consumed += 1;
            }
        }
    }

    fn advance(&mut self, watermark: EventTime, out: &mut OperatorOutput) {
        self.watermark = self.watermark.max(watermark);
        while let Some(Reverse((end, k))) = self.timers.peek().copied() {
            if end > self.watermark {
                break;
            }
            self.timers.pop();
            let Some(b) = self.open.remove(&k) else { continue };
            if let Some(n) = self.starts.get_mut(&b.start) {
                *n -= 1;
                if *n == 0 {
                    self.starts.remove(&b.start);
                }
            }
            let mut a = b.representative;
            a.suppression = Some(Suppression {
                key: b.key,
                suppressed: b.count - 1,
                first_seen_ms: b.first,
                last_seen_ms: b.last,
                bucket_start_ms: b.start,
                bucket_end_ms: b.start + self.window_ms,
            });
            out.alerts.push(a);
        }
    }

    fn hold(&self) -> Option<EventTime> {
        self.starts.keys().next().copied()
    }

    fn snapshot_groups(&self, groups: &[u16]) -> anyhow::Result<Vec<(u16, Vec<u8>)>> {
        let mut out = Vec::new();
        for (g, mut items) in split_by_group(self.open.iter().map(|(k, b)| (*k, b)), groups) {
            items.sort_by_key(|(k, _)| *k);
            // JSON: alerts carry serde_json values, which compact binary formats cannot encode.
            let json = serde_json::to_vec(&items)?;
            out.push((g, encode(&(self.watermark, json))?));
        }
        Ok(out)
    }

    fn restore(&mut self, _group: u16, bytes: &[u8]) -> anyhow::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let (watermark, json): (EventTime, Vec<u8>) = decode(bytes)?;
        self.watermark = self.watermark.max(watermark);
        let items: Vec<(u64, Bucket)> = serde_json::from_slice(&json)?;
        for (k, b) in items {
            self.open_bucket(k, b);
        }
        Ok(())
    }

    fn live_keys(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_engine::key_groups::KEY_GROUPS;

    fn alert(n: u64, rule: &str, host: &str, t: EventTime) -> Alert {
        let mut a = crate::testing::alert(n, rule, "high", t);
        a.event =
            Some(ward_engine::alert::EventJson::from_value(&serde_json::json!({"host.id": host, "user.name": "u"})));
        a
    }

    fn run(alerts: &[Alert], split: Option<usize>) -> (Vec<Alert>, u64, u64) {
        let mut s = Suppress::new(Arc::new(default_key()), 300_000);
        let mut out = OperatorOutput::default();
        for (i, a) in alerts.iter().enumerate() {
            if Some(i) == split {
                let snaps: Vec<Vec<u8>> = (0..KEY_GROUPS).map(|g| s.snapshot(g).unwrap()).collect();
                let wm = s.watermark;
                s = Suppress::new(Arc::new(default_key()), 300_000);
                for (g, b) in snaps.iter().enumerate() {
                    s.restore(g as u16, b).unwrap();
                }
                s.advance(wm, &mut out);
            }
            s.process_alert(a.clone(), true, &mut out);
            s.advance(a.event_time_ms.unwrap() - 60_000, &mut out);
        }
        s.advance(i64::MAX, &mut out);
        assert_eq!(s.live_keys(), 0);
        assert_eq!(s.hold(), None);
        let mut v = out.alerts;
        v.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        (v, out.consumed, out.filtered)
    }

    #[test]
    fn repeats_collapse_into_the_earliest_with_count_and_bounds() {
        // 400 alerts of one rule on one host within 5 minutes, arriving shuffled, plus another host.
        let base = 1_767_261_600_000; // a bucket start
        let mut alerts: Vec<Alert> =
            (0..400).map(|i| alert(i, "r", "h1", base + (i as i64 * 7919) % 299_000)).collect();
        alerts.push(alert(999, "r", "h2", base + 10));
        alerts.push(alert(1000, "r", "h1", base + 300_000)); // the next bucket
        let (out, consumed, filtered) = run(&alerts, None);
        assert_eq!(out.len(), 3);
        assert_eq!(consumed + filtered, 402);
        let h1 = out.iter().find(|a| a.alert_id == format!("{:032x}", 0)).unwrap();
        let s = h1.suppression.as_ref().unwrap();
        assert_eq!(s.suppressed, 399);
        assert_eq!(s.first_seen_ms, base);
        assert_eq!(s.bucket_end_ms, base + 300_000);
        assert!(s.key.contains("host.id=h1"));
        // Order-independent, and unchanged across a snapshot/restore.
        let mut reversed = alerts.clone();
        reversed.reverse();
        assert_eq!(run(&reversed, None).0, out);
        assert_eq!(run(&alerts, Some(150)).0, out);
    }

    #[test]
    fn the_hold_is_the_oldest_open_bucket() {
        let mut s = Suppress::new(Arc::new(default_key()), 300_000);
        let mut out = OperatorOutput::default();
        s.process_alert(alert(1, "r", "h", 600_100), true, &mut out);
        s.process_alert(alert(2, "q", "h", 900_100), true, &mut out);
        assert_eq!(s.hold(), Some(600_000));
        s.advance(900_000, &mut out);
        assert_eq!(out.alerts.len(), 1);
        assert_eq!(s.hold(), Some(900_000));
    }
}
