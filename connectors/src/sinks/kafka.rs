//! The `kafka` sink: alerts (or cases, quarantined records, events) as JSON records on a topic.
//!
//! With checkpoints it is exactly once for `read_committed` consumers (DESIGN.md §5): each
//! worker has a transactional producer with a stable `transactional.id` (`<prefix>-w<worker>`).
//! A worker's records since the last checkpoint go into that checkpoint's part, so they survive
//! a crash, and are produced in one transaction once the checkpoint is durable. Every record
//! carries the checkpoint in the `ward-epoch` header. The same transaction moves a marker — the
//! consumer-group offset of group `<transactional.id>` on partition 0 of the topic, set to the
//! checkpoint's epoch — so whether a transaction committed is read back atomically with it.
//!
//! Recovery (before a run starts, and once the run's closing checkpoint is durable): for every
//! worker that wrote parts of the retained checkpoints, the sink reads its marker and re-sends,
//! under that worker's transactional id (which also fences a zombie and aborts its open
//! transaction), exactly the checkpoints the marker does not cover. librdkafka cannot resume a
//! prepared transaction, so the parts are the source of truth for what a transaction held.
//!
//! Without checkpoints the sink produces as it goes (idempotent producer): at least once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use ward_engine::checkpoint::SinkCheckpoint;
use ward_engine::component::{Built, Payload, Sink, SinkFactory, StreamKind, WorkerContext};
use ward_engine::registry::{BuildContext, ComponentConfig, Section};

/// Write alerts, cases, quarantined records or events as JSON records to a Kafka topic.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap servers (`host:port,...`).
    pub brokers: String,
    pub topic: String,
    /// Prefix of the workers' transactional ids (`<prefix>-w<worker>`); must be unique to this
    /// sink of this pipeline among everything writing to the cluster (default `ward-<id>`).
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// How long a transaction may wait for the broker before the run stops with an error.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// librdkafka properties passed through (TLS, SASL, compression, linger...). Values are
    /// never logged.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Properties the sink sets itself.
const RESERVED: &[&str] = &["bootstrap.servers", "transactional.id", "enable.idempotence", "group.id"];

impl ComponentConfig for KafkaSinkConfig {
    const TYPE: &'static str = "kafka";
    const SECTION: Section = Section::Sink;
    const DESCRIPTION: &'static str =
        "Write alerts, cases, quarantined records or events as JSON to a Kafka topic (transactional, exactly once with checkpoints)";
    const ACCEPTS: &'static [StreamKind] =
        &[StreamKind::Alerts, StreamKind::Cases, StreamKind::Quarantine, StreamKind::Events];
    const OUTPUT: Option<StreamKind> = None;

    fn build(self, ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        anyhow::ensure!(!self.topic.is_empty(), "`topic` must not be empty");
        for key in RESERVED {
            anyhow::ensure!(!self.properties.contains_key(*key), "`properties` may not set `{key}`: Ward sets it");
        }
        let prefix = self.transactional_id.clone().unwrap_or_else(|| format!("ward-{}", ctx.component_id));
        Ok(Built::Sink(Arc::new(KafkaSinkFactory { config: self, prefix })))
    }
}

/// One record as a checkpoint part holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    key: String,
    value: Vec<u8>,
}

struct KafkaSinkFactory {
    config: KafkaSinkConfig,
    prefix: String,
}

type TxProducer = ThreadedProducer<DefaultProducerContext>;

impl KafkaSinkFactory {
    fn transactional_id(&self, worker: usize) -> String {
        format!("{}-w{worker}", self.prefix)
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.config.brokers);
        for (k, v) in &self.config.properties {
            c.set(k, v);
        }
        c
    }

    /// A transactional producer for `worker`'s id, initialized: a previous holder of the id is
    /// fenced and its open transaction aborted.
    fn producer(&self, worker: usize) -> anyhow::Result<(TxProducer, BaseConsumer)> {
        let id = self.transactional_id(worker);
        let producer: TxProducer = self
            .client_config()
            .set("transactional.id", &id)
            .set("enable.idempotence", "true")
            .create()
            .map_err(|e| anyhow::anyhow!("kafka producer for {}: {e}", self.config.brokers))?;
        producer
            .init_transactions(self.config.timeout)
            .map_err(|e| anyhow::anyhow!("kafka: initializing transactions of {id}: {e}"))?;
        Ok((producer, self.marker_consumer(worker)?))
    }

    /// A consumer of the marker group: it only reads and names the group.
    fn marker_consumer(&self, worker: usize) -> anyhow::Result<BaseConsumer> {
        self.client_config()
            .set("group.id", self.transactional_id(worker))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(|e| anyhow::anyhow!("kafka consumer for {}: {e}", self.config.brokers))
    }

    /// The last checkpoint whose transaction `worker`'s id committed (its marker), if any.
    fn committed_epoch(&self, consumer: &BaseConsumer) -> anyhow::Result<Option<u64>> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.topic, 0);
        let found = consumer
            .committed_offsets(tpl, self.config.timeout)
            .map_err(|e| anyhow::anyhow!("kafka: reading the commit marker of {}: {e}", self.config.topic))?;
        Ok(match found.find_partition(&self.config.topic, 0).map(|e| e.offset()) {
            Some(Offset::Offset(o)) if o >= 0 => Some(o as u64),
            _ => None,
        })
    }

    /// Produces `records` in one transaction that also moves the marker to `epoch`.
    fn transaction(
        &self,
        producer: &TxProducer,
        marker: &BaseConsumer,
        epoch: u64,
        records: &[Record],
    ) -> anyhow::Result<()> {
        let timeout = self.config.timeout;
        producer.begin_transaction().map_err(|e| anyhow::anyhow!("kafka begin transaction: {e}"))?;
        let epoch_text = epoch.to_string();
        for r in records {
            let headers = OwnedHeaders::new().insert(Header { key: "ward-epoch", value: Some(epoch_text.as_bytes()) });
            let mut record =
                BaseRecord::to(&self.config.topic).key(r.key.as_bytes()).payload(&r.value).headers(headers);
            // A full queue: let deliveries drain, then retry (bounded by the timeout).
            let started = std::time::Instant::now();
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, back)) => {
                        if started.elapsed() > timeout {
                            anyhow::bail!("kafka produce to {}: {e}", self.config.topic);
                        }
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(&self.config.topic, 0, Offset::Offset(epoch as i64))?;
        let group = marker.group_metadata().ok_or_else(|| anyhow::anyhow!("kafka: no group metadata"))?;
        producer
            .send_offsets_to_transaction(&offsets, &group, timeout)
            .map_err(|e| anyhow::anyhow!("kafka: moving the commit marker: {e}"))?;
        producer.commit_transaction(timeout).map_err(|e| anyhow::anyhow!("kafka commit transaction: {e}"))?;
        Ok(())
    }

    /// Sends, for every worker of `retained`, the checkpoints its marker does not cover.
    fn settle(&self, retained: &[SinkCheckpoint<'_>]) -> anyhow::Result<()> {
        let mut by_worker: BTreeMap<usize, Vec<(u64, &[u8])>> = BTreeMap::new();
        for c in retained {
            for (worker, bytes) in &c.parts {
                by_worker.entry(*worker).or_default().push((c.manifest.epoch, bytes));
            }
        }
        for (worker, mut parts) in by_worker {
            parts.sort_by_key(|(epoch, _)| *epoch);
            let (producer, marker) = self.producer(worker)?;
            let done = self.committed_epoch(&marker)?;
            let missing: Vec<_> = parts.into_iter().filter(|(epoch, _)| done.is_none_or(|d| *epoch > d)).collect();
            for (epoch, bytes) in missing {
                let records: Vec<Record> = ward_engine::keyed::decode(bytes)?;
                tracing::info!(
                    sink = %self.prefix,
                    "re-sending checkpoint {epoch} of worker {worker}: {} records the topic does not hold",
                    records.len()
                );
                self.transaction(&producer, &marker, epoch, &records)?;
            }
        }
        Ok(())
    }
}

impl SinkFactory for KafkaSinkFactory {
    fn restore(&self, retained: &[SinkCheckpoint<'_>]) -> anyhow::Result<()> {
        self.settle(retained)
    }

    fn closed(&self, retained: &[SinkCheckpoint<'_>]) -> anyhow::Result<()> {
        self.settle(retained)
    }

    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Sink>> {
        let mode = if ctx.checkpointing {
            let (producer, marker) = self.producer(ctx.worker_index)?;
            Mode::Transactional { producer, marker, held: Vec::new() }
        } else {
            let producer: TxProducer = self
                .client_config()
                .set("enable.idempotence", "true")
                .create()
                .map_err(|e| anyhow::anyhow!("kafka producer for {}: {e}", self.config.brokers))?;
            Mode::AtLeastOnce { producer }
        };
        Ok(Box::new(KafkaSink { factory: self.config.clone(), prefix: self.prefix.clone(), mode, buf: Vec::new() }))
    }
}

enum Mode {
    /// With checkpoints: records held per checkpoint until it is durable.
    Transactional {
        producer: TxProducer,
        marker: BaseConsumer,
        held: Vec<(u64, Vec<Record>)>,
    },
    AtLeastOnce {
        producer: TxProducer,
    },
}

pub struct KafkaSink {
    factory: KafkaSinkConfig,
    prefix: String,
    mode: Mode,
    /// Records since the last checkpoint (or flush).
    buf: Vec<Record>,
}

fn json_records(payload: &Payload, out: &mut Vec<Record>) -> anyhow::Result<()> {
    match payload {
        Payload::Alerts(alerts) => {
            for a in alerts {
                out.push(Record { key: a.alert_id.clone(), value: serde_json::to_vec(a)? });
            }
        }
        Payload::Cases(cases) => {
            for c in cases {
                out.push(Record { key: c.case_id.clone(), value: serde_json::to_vec(c)? });
            }
        }
        Payload::Quarantine(q) => {
            for r in q {
                out.push(Record {
                    key: format!("{}/{}/{}", r.source, r.partition, r.offset),
                    value: serde_json::to_vec(&r.to_json())?,
                });
            }
        }
        Payload::Events(b) => {
            for row in 0..b.len() {
                let p = b.provenance(row);
                out.push(Record {
                    key: format!("{}/{}/{}", p.source, p.partition, p.offset),
                    value: serde_json::to_vec(&b.row_to_json(row))?,
                });
            }
        }
        Payload::Progress(_) => {}
    }
    Ok(())
}

impl KafkaSink {
    fn factory(&self) -> KafkaSinkFactory {
        KafkaSinkFactory { config: self.factory.clone(), prefix: self.prefix.clone() }
    }
}

impl Sink for KafkaSink {
    fn write(&mut self, payload: &Payload) -> anyhow::Result<()> {
        json_records(payload, &mut self.buf)?;
        if let Mode::AtLeastOnce { producer } = &self.mode {
            for r in self.buf.drain(..) {
                let mut record = BaseRecord::to(&self.factory.topic).key(r.key.as_bytes()).payload(&r.value);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((_, back)) => {
                            record = back;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn prepare(&mut self, epoch: u64) -> anyhow::Result<Vec<u8>> {
        let records = std::mem::take(&mut self.buf);
        let bytes = ward_engine::keyed::encode(&records)?;
        if let Mode::Transactional { held, .. } = &mut self.mode {
            held.push((epoch, records));
        }
        Ok(bytes)
    }

    fn commit(&mut self, epoch: u64) -> anyhow::Result<()> {
        let factory = self.factory();
        let Mode::Transactional { producer, marker, held } = &mut self.mode else { return Ok(()) };
        while held.first().is_some_and(|(c, _)| *c <= epoch) {
            let (c, records) = held.remove(0);
            factory.transaction(producer, marker, c, &records)?;
        }
        Ok(())
    }

    fn retire_part(&mut self, _last: u64) -> anyhow::Result<Vec<u8>> {
        // The closing checkpoint's part: produced once that checkpoint is durable (`closed`).
        ward_engine::keyed::encode(&std::mem::take(&mut self.buf))
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        match &self.mode {
            Mode::AtLeastOnce { producer } => producer
                .flush(self.factory.timeout)
                .map_err(|e| anyhow::anyhow!("kafka flush to {}: {e}", self.factory.topic)),
            // Held checkpoints not committed yet are settled by `closed` (or the next run).
            Mode::Transactional { .. } => Ok(()),
        }
    }
}
