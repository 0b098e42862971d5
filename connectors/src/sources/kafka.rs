//! The `kafka` source (docs/architecture.md §5): topics' partitions assigned deterministically across
//! workers — partition `i` of the sorted (topic, partition) list goes to worker `i mod W`, no
//! consumer-group rebalancing in the data path — read with librdkafka (rdkafka).
//!
//! Positions live in checkpoints (the next offset of each partition); a run without one starts
//! at `start` (`earliest`, `latest`, or an RFC 3339 time). After each complete checkpoint the
//! offsets it holds are also committed to the consumer group (`group_id`), so ordinary lag
//! tools work. With `stop_when_idle` the source ends once no partition has had a record for
//! that long (replays, tests, backfills). With `stop_at` a replay ends by itself: `end` once
//! every partition has been read past its end offset at start and nothing more is waiting (the
//! Tansu broker reports high watermarks per record batch, so "past the end at start" alone
//! could stop inside the last batch); a time once every partition has reached a record at or
//! after it, or caught up after that time.
//!
//! Each record's partition is `topic/partition` and its offset the Kafka offset, in provenance.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use ward_engine::batch::EventBatch;
use ward_engine::component::{Source, SourceFactory, SourcePoll, StreamKind, WorkerContext};
use ward_engine::quarantine::{QuarantineRecord, Reason};
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};

/// Read records from Kafka topics.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap servers (`host:port,...`).
    pub brokers: String,
    pub topics: Vec<String>,
    /// Consumer group offsets are committed to after each checkpoint (default `ward-<id>`).
    #[serde(default)]
    pub group_id: Option<String>,
    /// Where a run without a checkpoint starts: `earliest`, `latest` or an RFC 3339 time.
    #[serde(default = "default_start")]
    pub start: String,
    /// End the source once no record arrived for this long (default, or `never`: read forever).
    #[serde(default, deserialize_with = "duration_or_never")]
    #[schemars(with = "Option<String>")]
    pub stop_when_idle: Option<Duration>,
    /// End a replay by itself: `end` (every record in the topics when the source started, and
    /// whatever came meanwhile until it caught up), or an RFC 3339 time (a partition ends at its
    /// first record whose Kafka timestamp is at or after it). Default: read forever.
    #[serde(default)]
    pub stop_at: Option<String>,
    /// librdkafka properties passed through (TLS, SASL, fetch sizes...). Values are never logged.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Give each record's key, timestamp and headers to parse as `kafka.key`,
    /// `kafka.timestamp` and `kafka.header.<name>` fields.
    #[serde(default = "default_true")]
    pub metadata: bool,
}

fn default_true() -> bool {
    true
}

/// A duration, or `never` (so a spec can say "forever" through an environment variable).
fn duration_or_never<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    match text.as_deref().map(str::trim) {
        None | Some("never") => Ok(None),
        Some(t) => humantime::parse_duration(t).map(Some).map_err(|e| serde::de::Error::custom(format!("`{t}`: {e}"))),
    }
}

fn default_start() -> String {
    "earliest".into()
}

#[derive(Clone, Copy, Debug)]
enum Start {
    Earliest,
    Latest,
    Time(i64),
}

/// Where a replay ends (`stop_at`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum StopAt {
    End,
    Time(i64),
}

fn parse_stop_at(s: &str) -> anyhow::Result<StopAt> {
    match s {
        "end" => Ok(StopAt::End),
        t => chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| StopAt::Time(t.timestamp_millis()))
            .map_err(|e| anyhow::anyhow!("`stop_at` must be `end` or an RFC 3339 time: {e}")),
    }
}

fn parse_start(s: &str) -> anyhow::Result<Start> {
    match s {
        "earliest" => Ok(Start::Earliest),
        "latest" => Ok(Start::Latest),
        t => chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| Start::Time(t.timestamp_millis()))
            .map_err(|e| anyhow::anyhow!("`start` must be earliest, latest or an RFC 3339 time: {e}")),
    }
}

impl ComponentConfig for KafkaSourceConfig {
    const TYPE: &'static str = "kafka";
    const SECTION: Section = Section::Source;
    const DESCRIPTION: &'static str =
        "Read records from Kafka topics (partitions assigned to workers deterministically)";
    const ACCEPTS: &'static [StreamKind] = &[];
    const OUTPUT: Option<StreamKind> = Some(StreamKind::Records);

    fn build(self, ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        if self.topics.is_empty() {
            anyhow::bail!("`topics` names no topic");
        }
        let start = parse_start(&self.start)?;
        let stop_at = self.stop_at.as_deref().map(parse_stop_at).transpose()?;
        crate::check_kafka_properties(&self.properties)?;
        for key in ["bootstrap.servers", "group.id", "enable.auto.commit", "enable.auto.offset.store"] {
            if self.properties.contains_key(key) {
                anyhow::bail!("`properties` may not set `{key}`: Ward sets it");
            }
        }
        let group = self.group_id.clone().unwrap_or_else(|| format!("ward-{}", ctx.component_id));
        Ok(Built::Source(Arc::new(KafkaFactory { config: self, start, stop_at, group })))
    }
}

struct KafkaFactory {
    config: KafkaSourceConfig,
    start: Start,
    stop_at: Option<StopAt>,
    group: String,
}

impl KafkaFactory {
    fn consumer_with(&self, stats: Stats) -> anyhow::Result<BaseConsumer<Stats>> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.config.brokers)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // Per-partition lag, high watermark and fetch counts for the metrics.
            .set("statistics.interval.ms", "1000");
        for (k, v) in &self.config.properties {
            c.set(k, v);
        }
        c.create_with_context(stats).map_err(|e| anyhow::anyhow!("kafka consumer for {}: {e}", self.config.brokers))
    }
}

/// Turns librdkafka's statistics (every second, served by `poll`) into per-partition metrics
/// for the partitions this worker reads.
/// Per-partition families of the Kafka source, labelled (component, `topic/partition`).
#[derive(Clone)]
struct PartitionMetrics {
    lag: prometheus::IntGaugeVec,
    high_watermark: prometheus::IntGaugeVec,
    fetched: prometheus::IntCounterVec,
}

impl PartitionMetrics {
    fn register(families: &ward_engine::metrics::Families) -> Self {
        let labels = &["component", "partition"];
        PartitionMetrics {
            lag: families.gauge_vec(
                "ward_kafka_consumer_lag",
                "Kafka source: records of a partition not yet read (librdkafka's consumer_lag; -1 unknown)",
                labels,
            ),
            high_watermark: families.gauge_vec(
                "ward_kafka_high_watermark_offset",
                "Kafka source: a partition's high watermark offset as the broker reports it",
                labels,
            ),
            fetched: families.counter_vec(
                "ward_kafka_fetched_records_total",
                "Kafka source: records fetched from a partition (rate() gives the fetch rate)",
                labels,
            ),
        }
    }
}

#[derive(Default)]
struct Stats {
    metrics: Option<(Arc<str>, PartitionMetrics)>,
    /// Records fetched per partition at the last report (the counter grows by the difference).
    fetched: std::sync::Mutex<HashMap<(String, i32), u64>>,
}

impl ClientContext for Stats {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some((component, m)) = &self.metrics else { return };
        let mut fetched = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
        for (topic, t) in &statistics.topics {
            for (p, s) in t.partitions.iter().filter(|(p, _)| **p >= 0) {
                let label = format!("{topic}/{p}");
                let labels = [&**component, label.as_str()];
                // Only partitions this consumer reads report positions.
                if s.consumer_lag >= 0 || s.rxmsgs > 0 {
                    m.lag.with_label_values(&labels).set(s.consumer_lag);
                    m.high_watermark.with_label_values(&labels).set(s.hi_offset);
                }
                let before = fetched.insert((topic.clone(), *p), s.rxmsgs).unwrap_or(0);
                if s.rxmsgs > before {
                    m.fetched.with_label_values(&labels).inc_by(s.rxmsgs - before);
                }
            }
        }
    }
}

impl ConsumerContext for Stats {}

impl SourceFactory for KafkaFactory {
    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Source>> {
        let consumer = self.consumer_with(Stats {
            metrics: Some((ctx.component_id.clone(), PartitionMetrics::register(&ctx.metrics.families))),
            fetched: Default::default(),
        })?;
        let mut all = Vec::new();
        for topic in &self.config.topics {
            let md = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .map_err(|e| anyhow::anyhow!("kafka metadata of `{topic}`: {e}"))?;
            for t in md.topics() {
                if let Some(e) = t.error() {
                    anyhow::bail!("kafka topic `{topic}`: {e:?}");
                }
                all.extend(t.partitions().iter().map(|p| (t.name().to_string(), p.id())));
            }
        }
        all.sort();
        let mine: Vec<(String, i32)> =
            all.into_iter().enumerate().filter(|(i, _)| i % ctx.workers == ctx.worker_index).map(|(_, p)| p).collect();
        Ok(Box::new(KafkaSource {
            component: ctx.component_id.clone(),
            consumer,
            start: self.start,
            stop_at: self.stop_at,
            stop_when_idle: self.config.stop_when_idle,
            idle: Duration::ZERO,
            last_poll: std::time::Instant::now(),
            partitions: mine
                .into_iter()
                .map(|(t, p)| {
                    let name: Arc<str> = format!("{t}/{p}").into();
                    ((t, p), PartitionState { name, next: None, from: 0, end: None, done: false })
                })
                .collect(),
            assigned: false,
            committed: BTreeMap::new(),
            metadata: self.config.metadata,
            header_name: String::new(),
            expected: ctx.metrics.records_expected.clone(),
        }))
    }
}

struct PartitionState {
    /// `topic/partition`, the provenance partition.
    name: Arc<str>,
    /// The next offset to read (known once read from or restored).
    next: Option<i64>,
    /// With `stop_at`: where reading started and the end offset (high watermark) at start.
    from: i64,
    end: Option<i64>,
    /// With `stop_at`: the partition's replay has ended (its later records are left alone).
    done: bool,
}

/// A partition's position in a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct Position {
    topic: String,
    partition: i32,
    next: i64,
}

pub struct KafkaSource {
    component: Arc<str>,
    consumer: BaseConsumer<Stats>,
    start: Start,
    stop_at: Option<StopAt>,
    stop_when_idle: Option<Duration>,
    /// How long polls have found nothing, counting at most 100 ms between two polls: time
    /// the worker spent elsewhere (a sink waiting out an outage) is not idleness of the topic.
    idle: Duration,
    last_poll: std::time::Instant,
    partitions: BTreeMap<(String, i32), PartitionState>,
    assigned: bool,
    /// Positions of checkpoints not yet committed to the consumer group, by epoch.
    committed: BTreeMap<u64, Vec<Position>>,
    metadata: bool,
    /// Reused buffer for `kafka.header.<name>` keys.
    header_name: String,
    /// With `stop_at`: the records the replay has to read (`ward_source_records_expected`).
    expected: prometheus::IntGauge,
}

/// The record's Kafka key, timestamp and headers as the row's first fields (`kafka.key`,
/// `kafka.timestamp`, `kafka.header.<name>`): parse keeps them beside what it reads from the
/// payload, so packs and rules can use them and sinks keep them with the event.
fn push_metadata(batch: &mut EventBatch, msg: &rdkafka::message::BorrowedMessage<'_>, name: &mut String) {
    use rdkafka::message::Headers;
    use ward_engine::batch::{Key, Slot, Value};
    // Valid UTF-8 borrows (no allocation); anything else is replaced lossily.
    let text = |batch: &mut EventBatch, b: &[u8]| Value::Str(batch.heap().push_str(&String::from_utf8_lossy(b)));
    let push = |batch: &mut EventBatch, key: &str, value: Value| {
        let key = Key::Ext(batch.heap().push_str(key));
        batch.push_slot(Slot { key, value });
    };
    if let Some(k) = msg.key() {
        let v = text(batch, k);
        push(batch, "kafka.key", v);
    }
    if let Some(ms) = msg.timestamp().to_millis() {
        push(batch, "kafka.timestamp", Value::Timestamp(ms));
    }
    if let Some(headers) = msg.headers() {
        for h in headers.iter() {
            name.clear();
            name.push_str("kafka.header.");
            name.push_str(h.key);
            let v = text(batch, h.value.unwrap_or_default());
            push(batch, name, v);
        }
    }
}

impl KafkaSource {
    fn assign(&mut self) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        let mut offsets = Vec::new();
        for ((t, p), s) in &self.partitions {
            let offset = match (s.next, self.start) {
                (Some(n), _) => Offset::Offset(n),
                (None, Start::Earliest) => Offset::Beginning,
                (None, Start::Latest) => Offset::End,
                (None, Start::Time(ms)) => {
                    let mut q = TopicPartitionList::new();
                    q.add_partition_offset(t, *p, Offset::Offset(ms))?;
                    let found = self
                        .consumer
                        .offsets_for_times(q, Duration::from_secs(10))
                        .map_err(|e| anyhow::anyhow!("kafka offset of {t}/{p} at the start time: {e}"))?;
                    found.find_partition(t, *p).map_or(Offset::End, |e| e.offset())
                }
            };
            tpl.add_partition_offset(t, *p, offset)?;
            offsets.push(offset);
        }
        self.consumer.assign(&tpl).map_err(|e| anyhow::anyhow!("kafka assign: {e}"))?;
        self.assigned = true;
        if self.stop_at.is_some() {
            self.measure_replay(&offsets)?;
        }
        Ok(())
    }

    /// With `stop_at`: each partition's watermarks at start, and the records left to read.
    /// `offsets`: where each partition was assigned to start, in the partitions' order.
    fn measure_replay(&mut self, offsets: &[Offset]) -> anyhow::Result<()> {
        let mut left = 0i64;
        for (((t, p), s), offset) in self.partitions.iter_mut().zip(offsets) {
            let (low, high) = self
                .consumer
                .fetch_watermarks(t, *p, Duration::from_secs(10))
                .map_err(|e| anyhow::anyhow!("kafka watermarks of {t}/{p}: {e}"))?;
            s.end = Some(high);
            s.from = match offset {
                Offset::Offset(n) => *n,
                Offset::End => high,
                _ => low,
            };
            left += (high - s.from).max(0);
        }
        // The progress line's share done and ETA.
        self.expected.add(left);
        tracing::info!(
            source = %self.component,
            partitions = self.partitions.len(),
            records = left,
            "replay until {}: about {left} records to read",
            match self.stop_at {
                Some(StopAt::Time(ms)) => ward_engine::batch::format_timestamp_ms(ms),
                _ => "the end".to_string(),
            }
        );
        Ok(())
    }

    /// Nothing was waiting: partitions read past their end at start are done (with a time,
    /// only once that time has passed).
    fn caught_up(&mut self) {
        let past = match self.stop_at {
            None => return,
            Some(StopAt::End) => true,
            Some(StopAt::Time(ms)) => chrono::Utc::now().timestamp_millis() >= ms,
        };
        for s in self.partitions.values_mut().filter(|s| !s.done) {
            if past && s.end.is_some_and(|end| s.next.unwrap_or(s.from) >= end) {
                s.done = true;
            }
        }
    }

    /// The next offset of every partition read from or restored.
    fn positions(&self) -> Vec<Position> {
        self.partitions
            .iter()
            .filter_map(|((t, p), s)| s.next.map(|next| Position { topic: t.clone(), partition: *p, next }))
            .collect()
    }

    fn at_end(&self) -> bool {
        self.stop_when_idle.is_some_and(|idle| self.idle >= idle)
            || (self.stop_at.is_some() && self.partitions.values().all(|s| s.done))
    }
}

impl Source for KafkaSource {
    fn partitions(&self) -> Vec<Arc<str>> {
        self.partitions.values().map(|s| s.name.clone()).collect()
    }

    fn checkpoint(&self) -> anyhow::Result<Vec<u8>> {
        ward_engine::keyed::encode(&self.positions())
    }

    fn restore(&mut self, parts: &[&[u8]]) -> anyhow::Result<()> {
        let mut known: HashMap<(String, i32), i64> = HashMap::new();
        for part in parts.iter().filter(|p| !p.is_empty()) {
            let positions: Vec<Position> = ward_engine::keyed::decode(part)?;
            known.extend(positions.into_iter().map(|p| ((p.topic, p.partition), p.next)));
        }
        for (k, s) in &mut self.partitions {
            if let Some(next) = known.get(k) {
                s.next = Some(*next);
            }
        }
        Ok(())
    }

    fn checkpoint_written(&mut self, epoch: u64) {
        let positions = self.positions();
        self.committed.insert(epoch, positions);
    }

    fn checkpoint_complete(&mut self, epoch: u64) {
        // Commit the newest complete checkpoint's offsets to the group (for lag tooling only:
        // positions come from checkpoints).
        let mut newest = None;
        while let Some(entry) = self.committed.first_entry() {
            if *entry.key() > epoch {
                break;
            }
            newest = Some(entry.remove());
        }
        let Some(positions) = newest else { return };
        let mut tpl = TopicPartitionList::new();
        for p in &positions {
            let _ = tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next));
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::warn!("source `{}`: committing offsets to the consumer group: {e}", self.component);
        }
    }

    fn poll(&mut self, max_rows: usize) -> anyhow::Result<SourcePoll> {
        if !self.assigned {
            self.assign()?;
            self.idle = Duration::ZERO;
            self.last_poll = std::time::Instant::now();
        }
        if self.at_end() {
            return Ok(SourcePoll::Done);
        }
        let mut batch = EventBatch::with_capacity(max_rows, max_rows * 512);
        let mut too_big = Vec::new();
        let mut timeout = Duration::from_millis(0);
        while batch.len() < max_rows && !batch.is_full() {
            let Some(msg) = self.consumer.poll(timeout) else { break };
            let msg = msg.map_err(|e| anyhow::anyhow!("kafka: {e}"))?;
            timeout = Duration::ZERO;
            // A linear look-up over this worker's few partitions: no key allocated per record.
            let (topic, partition) = (msg.topic(), msg.partition());
            let Some((_, state)) = self.partitions.iter_mut().find(|((t, p), _)| *p == partition && t == topic) else {
                continue;
            };
            if state.done {
                continue; // past the replay's end: left for the next run
            }
            if let Some(StopAt::Time(ms)) = self.stop_at {
                if msg.timestamp().to_millis().is_some_and(|t| t >= ms) {
                    state.done = true;
                    continue;
                }
            }
            state.next = Some(msg.offset() + 1);
            let name = state.name.clone();
            let origin = batch.origin_index(&self.component, &name);
            let payload = msg.payload().unwrap_or_default();
            if batch.push_raw(origin, msg.offset() as u64, payload).is_err() {
                // Unreachable with librdkafka's 1 GB message limit and batches cut at 64 MiB.
                too_big.push(QuarantineRecord {
                    reason: Reason::Oversize,
                    detail: format!("record of {} bytes does not fit in a batch", payload.len()),
                    component: self.component.clone(),
                    source: self.component.clone(),
                    partition: name,
                    offset: msg.offset() as u64,
                    payload: payload[..payload.len().min(4096)].to_vec(),
                    payload_len: payload.len(),
                });
                continue;
            }
            if self.metadata {
                push_metadata(&mut batch, &msg, &mut self.header_name);
            }
        }
        if !too_big.is_empty() {
            return Ok(SourcePoll::Both(batch, too_big));
        }
        let since = std::mem::replace(&mut self.last_poll, std::time::Instant::now()).elapsed();
        if batch.is_empty() {
            self.idle += since.min(Duration::from_millis(100));
            self.caught_up();
            if self.at_end() {
                return Ok(SourcePoll::Done);
            }
            return Ok(SourcePoll::Pending(Duration::from_millis(10)));
        }
        self.idle = Duration::ZERO;
        Ok(SourcePoll::Batch(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factory(properties: &[(&str, &str)]) -> KafkaFactory {
        let config: KafkaSourceConfig = serde_json::from_value(serde_json::json!({
            "brokers": "127.0.0.1:1",
            "topics": ["t"],
            "properties": properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        }))
        .unwrap();
        KafkaFactory { config, start: Start::Earliest, stop_at: None, group: "g".into() }
    }

    #[test]
    fn tls_and_sasl_properties_are_accepted() {
        // librdkafka is built with OpenSSL: TLS and SASL PLAIN/SCRAM clients can be created
        // (nothing connects here).
        let secret = "s3cr3t-value";
        let f = factory(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "ward"),
            ("sasl.password", secret),
            ("ssl.endpoint.identification.algorithm", "https"),
        ]);
        assert!(f.consumer_with(Stats::default()).is_ok());
        // A bad setting is an error that names the property, not the secret.
        let e = factory(&[("sasl.password", secret), ("security.protocol", "bogus")])
            .consumer_with(Stats::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("security.protocol") && !e.to_string().contains(secret), "{e}");
    }
}
