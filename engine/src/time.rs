//! Event time and watermarks (docs/architecture.md §4).
//!
//! Event time travels in the records (`@timestamp` of events, `event_time_ms` of alerts); the
//! timely timestamp stays the checkpoint epoch. A watermark `w` promises that no more records
//! with event time `< w` will arrive, except late ones.
//!
//! In front of every stateful operator the runtime places a [`WatermarkTracker`] per worker
//! and input. For streams that come straight from sources it follows each source partition:
//! the partition's watermark is its newest event time minus the source's bounded
//! out-of-orderness, a record older than that is late (quarantined as `late_event`), and a
//! partition that produced nothing for the idle timeout stops holding the watermark back.
//! For streams that come out of another stateful operator it follows the watermark marks that
//! operator sends. The operator's own watermark is the minimum over every tracker on every
//! worker; it never moves backwards.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::batch::{EventBatch, Value};
use crate::fields::ids;

/// Event time in milliseconds since the Unix epoch.
pub type EventTime = i64;

/// No record has been seen: holds everything back.
pub const WATERMARK_MIN: EventTime = i64::MIN;
/// The input has ended: every window may close.
pub const WATERMARK_END: EventTime = i64::MAX;

/// A source's event-time settings (the optional `event_time:` block of a source).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTimeConfig {
    /// How far behind the newest event of its partition an event may be; older events are late
    /// and go to quarantine as `late_event`. Also how long windows wait for stragglers.
    #[serde(default = "default_out_of_orderness", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_out_of_orderness: Duration,
    /// A partition without records for this long stops holding the watermark back until it
    /// produces again (its records may then be late).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
}

fn default_out_of_orderness() -> Duration {
    Duration::from_secs(120)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

impl Default for EventTimeConfig {
    fn default() -> Self {
        EventTimeConfig { max_out_of_orderness: default_out_of_orderness(), idle_timeout: default_idle_timeout() }
    }
}

impl EventTimeConfig {
    pub fn out_of_orderness_ms(&self) -> i64 {
        self.max_out_of_orderness.as_millis().min(i64::MAX as u128) as i64
    }
}

/// The event time of row `row`: its `@timestamp`.
pub fn event_time(batch: &EventBatch, row: usize) -> Option<EventTime> {
    batch.row_slots(row).iter().find_map(|s| match (s.key, s.value) {
        (crate::batch::Key::Core(ids::TIMESTAMP), Value::Timestamp(t)) => Some(t),
        _ => None,
    })
}

struct Partition {
    newest: EventTime,
    last_active: Instant,
    out_of_orderness: i64,
    idle_timeout: Duration,
}

impl Partition {
    fn watermark(&self) -> EventTime {
        if self.newest == WATERMARK_MIN {
            WATERMARK_MIN
        } else {
            self.newest.saturating_sub(self.out_of_orderness)
        }
    }
}

/// What a tracker learned from one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    OnTime,
    /// Older than the watermark its partition (or this tracker) had already passed.
    Late {
        watermark: EventTime,
    },
}

/// Watermark bookkeeping of one input of a stateful operator on one worker.
pub struct WatermarkTracker {
    /// Event-time settings per source id.
    sources: HashMap<String, EventTimeConfig>,
    /// By hash of (source, partition): looked up per record without allocating.
    partitions: HashMap<u64, Partition>,
    /// Upstream stateful operators: their latest mark (`None` until the first).
    marks: Vec<(Arc<str>, Option<EventTime>)>,
    /// Highest watermark handed out; records behind it are late, and it never decreases.
    emitted: EventTime,
}

impl WatermarkTracker {
    /// `sources`: the event-time settings of the sources this input reads from directly;
    /// `upstream`: the stateful operators whose marks this input follows.
    pub fn new(sources: HashMap<String, EventTimeConfig>, upstream: Vec<Arc<str>>) -> Self {
        WatermarkTracker {
            sources,
            partitions: HashMap::new(),
            marks: upstream.into_iter().map(|u| (u, None)).collect(),
            emitted: WATERMARK_MIN,
        }
    }

    fn partition(&mut self, source: &str, partition: &str, now: Instant) -> &mut Partition {
        let key = crate::key_groups::hash_key([source.as_bytes(), partition.as_bytes()]);
        let sources = &self.sources;
        self.partitions.entry(key).or_insert_with(|| {
            let config = sources.get(source).cloned().unwrap_or_default();
            Partition {
                newest: WATERMARK_MIN,
                last_active: now,
                out_of_orderness: config.out_of_orderness_ms(),
                idle_timeout: config.idle_timeout,
            }
        })
    }

    /// A partition's newest event time from a checkpoint (the partition resumes where it was).
    pub fn restore_partition(&mut self, source: &str, partition: &str, newest: EventTime, now: Instant) {
        let p = self.partition(source, partition, now);
        p.newest = p.newest.max(newest);
    }

    /// A source announced a partition it will read: it holds the watermark until it produces
    /// or goes idle.
    pub fn announce(&mut self, source: &str, partition: &str, now: Instant) {
        self.partition(source, partition, now);
    }

    /// A record of `source`/`partition` with event time `t`.
    pub fn observe(&mut self, source: &str, partition: &str, t: EventTime, now: Instant) -> Observed {
        let emitted = self.emitted;
        let p = self.partition(source, partition, now);
        p.last_active = now;
        let watermark = p.watermark().max(emitted);
        if t < watermark {
            return Observed::Late { watermark };
        }
        p.newest = p.newest.max(t);
        Observed::OnTime
    }

    /// A record that came through an upstream stateful operator: late only if behind what this
    /// tracker already handed out (the upstream's marks guarantee order otherwise).
    pub fn observe_forwarded(&self, t: EventTime) -> Observed {
        if t < self.emitted {
            Observed::Late { watermark: self.emitted }
        } else {
            Observed::OnTime
        }
    }

    /// A watermark mark from upstream stateful operator `from`.
    pub fn mark(&mut self, from: &str, t: EventTime) {
        if let Some((_, m)) = self.marks.iter_mut().find(|(u, _)| &**u == from) {
            *m = Some(m.map_or(t, |old| old.max(t)));
        }
    }

    /// The current watermark of this input (monotone). `None` when nothing constrains it yet
    /// and nothing has been seen: an input without partitions or upstream operators on this
    /// worker does not hold the operator back.
    pub fn watermark(&mut self, now: Instant) -> EventTime {
        let mut w = WATERMARK_END;
        let mut any_active = self.partitions.is_empty();
        for p in self.partitions.values() {
            if now.duration_since(p.last_active) >= p.idle_timeout {
                continue;
            }
            any_active = true;
            w = w.min(p.watermark());
        }
        if !any_active {
            // Every partition is idle: hold where we are rather than jump to the end.
            w = self.emitted;
        }
        for (_, m) in &self.marks {
            w = w.min(m.unwrap_or(WATERMARK_MIN));
        }
        self.emitted = self.emitted.max(w);
        self.emitted
    }

    /// The input has ended: everything may close.
    pub fn finish(&mut self) -> EventTime {
        self.emitted = WATERMARK_END;
        WATERMARK_END
    }

    pub fn emitted(&self) -> EventTime {
        self.emitted
    }
}

/// Renders a watermark for logs and metrics.
pub fn describe(t: EventTime) -> String {
    match t {
        WATERMARK_MIN => "-inf".to_string(),
        WATERMARK_END => "end".to_string(),
        t => crate::batch::format_timestamp_ms(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> WatermarkTracker {
        let mut sources = HashMap::new();
        sources.insert(
            "s".to_string(),
            EventTimeConfig { max_out_of_orderness: Duration::from_secs(10), idle_timeout: Duration::from_secs(5) },
        );
        WatermarkTracker::new(sources, vec![])
    }

    #[test]
    fn watermark_is_newest_minus_bound_and_min_over_partitions() {
        let mut t = tracker();
        let (s, a, b) = ("s", "a", "b");
        let now = Instant::now();
        t.announce(s, b, now);
        assert_eq!(t.observe(s, a, 100_000, now), Observed::OnTime);
        // `b` announced but silent: it holds the watermark.
        assert_eq!(t.watermark(now), WATERMARK_MIN);
        assert_eq!(t.observe(s, b, 50_000, now), Observed::OnTime);
        assert_eq!(t.watermark(now), 40_000);
        // Within the bound on its own partition: on time, even though `a` is far ahead.
        assert_eq!(t.observe(s, b, 45_000, now), Observed::OnTime);
        // Behind its partition's watermark: late.
        assert_eq!(t.observe(s, a, 80_000, now), Observed::Late { watermark: 90_000 });
    }

    #[test]
    fn idle_partitions_stop_holding_back_and_watermark_never_regresses() {
        let mut t = tracker();
        let (s, a, b) = ("s", "a", "b");
        let start = Instant::now();
        t.observe(s, a, 100_000, start);
        t.observe(s, b, 20_000, start);
        assert_eq!(t.watermark(start), 10_000);
        let later = start + Duration::from_secs(6);
        t.observe(s, a, 101_000, later);
        // `b` idle: only `a` counts.
        assert_eq!(t.watermark(later), 91_000);
        // `b` resumes behind the handed-out watermark: late, and the watermark holds.
        assert_eq!(t.observe(s, b, 30_000, later), Observed::Late { watermark: 91_000 });
        assert_eq!(t.watermark(later), 91_000);
    }

    #[test]
    fn marks_of_upstream_operators_bound_the_watermark() {
        let mut t = WatermarkTracker::new(HashMap::new(), vec![Arc::from("up")]);
        let now = Instant::now();
        assert_eq!(t.watermark(now), WATERMARK_MIN);
        t.mark("up", 5_000);
        assert_eq!(t.watermark(now), 5_000);
        assert_eq!(t.observe_forwarded(4_000), Observed::Late { watermark: 5_000 });
        assert_eq!(t.observe_forwarded(5_000), Observed::OnTime);
    }

    #[test]
    fn an_input_without_partitions_does_not_hold_back() {
        let mut t = tracker();
        assert_eq!(t.watermark(Instant::now()), WATERMARK_END);
    }

    #[test]
    fn config_parses_human_durations() {
        let c: EventTimeConfig = serde_json::from_str(r#"{"max_out_of_orderness":"2m","idle_timeout":"30s"}"#).unwrap();
        assert_eq!(c.out_of_orderness_ms(), 120_000);
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
    }
}
