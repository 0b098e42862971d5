//! The `kafka` sink: alerts (or cases, quarantined records, events) as JSON records on a topic.
//!
//! With checkpoints it is exactly once for `read_committed` consumers (docs/architecture.md §5): each
//! worker has a transactional producer with a stable `transactional.id` (`<prefix>-w<worker>`).
//! A worker's records since the last checkpoint go into that checkpoint's part, so they survive
//! a crash, and are produced in one transaction once the checkpoint is durable. Every record
//! carries the checkpoint in the `ward-epoch` header. The same transaction moves a marker — the
//! consumer-group offset of group `<transactional.id>` on partition 0 of the topic, set to the
//! checkpoint's epoch — so whether a transaction committed is read back atomically with it.
//!
//! Recovery (before a run starts): for every worker that wrote parts of the retained
//! checkpoints, the sink takes over that worker's transactional id (fencing a zombie), ends the
//! transaction a crash may have left open, and reads its marker. After a crash every retained
//! checkpoint is in doubt, the marker's and older ones included: a crash mid-transaction leaves
//! records whose fate depends on the broker (Kafka aborts them; the Tansu broker makes them
//! visible when the id's next transaction ends, and applies the marker's offset commit before
//! the transaction ends, so the marker can run ahead of what is visible). So the sink reads the
//! topic (read_committed, from shortly before the oldest retained checkpoint,
//! records identified by their `ward-worker`, `ward-epoch` and `ward-seq` headers) and re-sends
//! only what it does not hold, moving the marker with each. librdkafka cannot resume a prepared
//! transaction, so the parts are the source of truth for what a transaction held. Once a run's
//! closing checkpoint is durable, the same is done without the read (nothing is in doubt). What
//! recovery or closing sent is read back and waited for (a bounded time), never sent twice: the
//! Tansu broker can hold a committed transaction's records back until another transaction on the
//! same partition ends, and a second copy would show beside the first.
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
use ward_engine::component::{Payload, Sink, SinkFactory, StreamKind, WorkerContext};
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};

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
    /// `json` (records as JSON objects) or `raw` (a records stream's bytes as read: to feed
    /// another pipeline, or replay a source into Kafka).
    #[serde(default)]
    pub format: Format,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Json,
    Raw,
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
    const ACCEPTS: &'static [StreamKind] = &[
        StreamKind::Alerts,
        StreamKind::Cases,
        StreamKind::Quarantine,
        StreamKind::Events,
        StreamKind::Records,
        StreamKind::Views,
    ];
    const OUTPUT: Option<StreamKind> = None;

    fn build(self, ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        anyhow::ensure!(!self.topic.is_empty(), "`topic` must not be empty");
        crate::check_kafka_properties(&self.properties)?;
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

#[derive(Clone)]
struct KafkaSinkFactory {
    config: KafkaSinkConfig,
    prefix: String,
}

type TxProducer = ThreadedProducer<DefaultProducerContext>;

/// How long recovery and the closing step wait for what they sent to become visible.
const VISIBILITY_WAIT: Duration = Duration::from_secs(10);

/// Held while a transaction of this process ends. The Tansu broker's dynostore engine decides
/// whether an ending transaction commits from the state of every other transaction on the same
/// partitions, read and written in separate steps; two ends at once on the same partitions can
/// each see the other unfinished and both stay invisible until a third transaction ends there.
/// Ends are once per checkpoint and worker, so taking turns costs nothing measurable.
static ENDING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Producers this process holds between owners, by transactional id: the sink instances hand
/// theirs over when they finish (the run's closing step commits the closing checkpoint with
/// them), and the settling before a run leaves its own for the run's sink instances. An id is
/// never taken over within a process: with the Tansu broker, the records of a new producer's
/// transactions committed just after the id's previous producer closed were seen (about one
/// close in six) to stay invisible to read_committed consumers, re-sent ones too.
static HANDED_OVER: std::sync::Mutex<BTreeMap<String, (TxProducer, BaseConsumer)>> =
    std::sync::Mutex::new(BTreeMap::new());

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
    /// fenced and its open transaction aborted. If this process already holds one (handed over
    /// by the run's sink instance at its close, or left by the settling before the run), that
    /// one is used instead (nothing to fence).
    fn producer(&self, worker: usize) -> anyhow::Result<(TxProducer, BaseConsumer)> {
        let id = self.transactional_id(worker);
        if let Some(handed) = HANDED_OVER.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
            return Ok(handed);
        }
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
    /// The marker offset is the epoch plus one (0: nothing yet).
    fn committed_epoch(&self, consumer: &BaseConsumer) -> anyhow::Result<Option<u64>> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.topic, 0);
        let found = consumer
            .committed_offsets(tpl, self.config.timeout)
            .map_err(|e| anyhow::anyhow!("kafka: reading the commit marker of {}: {e}", self.config.topic))?;
        Ok(match found.find_partition(&self.config.topic, 0).map(|e| e.offset()) {
            Some(Offset::Offset(o)) if o > 0 => Some(o as u64 - 1),
            _ => None,
        })
    }

    /// Produces `records` (with their index in the checkpoint's part) in one transaction that
    /// also moves `worker`'s marker to `epoch` (`None`: leaves it at `marker_epoch`).
    fn transaction<'r>(
        &self,
        producer: &TxProducer,
        marker: &BaseConsumer,
        worker: usize,
        epoch: Option<u64>,
        marker_epoch: Option<u64>,
        records: impl Iterator<Item = (usize, &'r Record)>,
    ) -> anyhow::Result<()> {
        let timeout = self.config.timeout;
        producer.begin_transaction().map_err(|e| anyhow::anyhow!("kafka begin transaction: {e}"))?;
        let (epoch_text, worker_text) = (epoch.unwrap_or_default().to_string(), worker.to_string());
        for (seq, r) in records {
            let seq_text = seq.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header { key: "ward-epoch", value: Some(epoch_text.as_bytes()) })
                .insert(Header { key: "ward-worker", value: Some(worker_text.as_bytes()) })
                .insert(Header { key: "ward-seq", value: Some(seq_text.as_bytes()) });
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
        // Every record acknowledged before the marker moves: a broker that applies a
        // transaction's offset commit before its end (Tansu does) would otherwise hold a moved
        // marker after a crash while the records were still in the producer's queue — a loss
        // recovery cannot see.
        producer.flush(timeout).map_err(|e| anyhow::anyhow!("kafka produce to {}: {e}", self.config.topic))?;
        let mark = epoch.or(marker_epoch).map_or(0, |e| e as i64 + 1);
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(&self.config.topic, 0, Offset::Offset(mark))?;
        let group = marker.group_metadata().ok_or_else(|| anyhow::anyhow!("kafka: no group metadata"))?;
        producer
            .send_offsets_to_transaction(&offsets, &group, timeout)
            .map_err(|e| anyhow::anyhow!("kafka: moving the commit marker: {e}"))?;
        let _turn = ENDING.lock().unwrap_or_else(|e| e.into_inner());
        producer.commit_transaction(timeout).map_err(|e| anyhow::anyhow!("kafka commit transaction: {e}"))?;
        Ok(())
    }

    /// (worker, epoch, seq) of every record of this sink a read_committed consumer sees from
    /// `since_ms` on, until the topic has been quiet for a moment.
    fn scan(&self, since_ms: i64) -> anyhow::Result<std::collections::HashSet<(usize, u64, usize)>> {
        use rdkafka::message::{Headers, Message};
        let consumer: BaseConsumer = self
            .client_config()
            .set("group.id", format!("{}-recovery", self.prefix))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.wait.max.ms", "100")
            .create()
            .map_err(|e| anyhow::anyhow!("kafka consumer for {}: {e}", self.config.brokers))?;
        let md = consumer
            .fetch_metadata(Some(&self.config.topic), self.config.timeout)
            .map_err(|e| anyhow::anyhow!("kafka metadata of `{}`: {e}", self.config.topic))?;
        let mut at = TopicPartitionList::new();
        for t in md.topics() {
            for p in t.partitions() {
                at.add_partition_offset(t.name(), p.id(), Offset::Offset(since_ms))?;
            }
        }
        let start = consumer
            .offsets_for_times(at, self.config.timeout)
            .map_err(|e| anyhow::anyhow!("kafka: offsets of {} by time: {e}", self.config.topic))?;
        let mut assign = TopicPartitionList::new();
        for e in start.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::End,
            };
            assign.add_partition_offset(e.topic(), e.partition(), offset)?;
        }
        consumer.assign(&assign).map_err(|e| anyhow::anyhow!("kafka assign: {e}"))?;
        let header = |m: &rdkafka::message::BorrowedMessage<'_>, key: &str| -> Option<u64> {
            let h = m.headers()?;
            let v = h.iter().find(|h| h.key == key)?.value?;
            std::str::from_utf8(v).ok()?.parse().ok()
        };
        let mut present = std::collections::HashSet::new();
        // Tansu reports high watermarks per record batch, so the end is where records stop.
        let (quiet, started) = (Duration::from_millis(1500), std::time::Instant::now());
        let mut last = std::time::Instant::now();
        while last.elapsed() < quiet && started.elapsed() < self.config.timeout {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    last = std::time::Instant::now();
                    if let (Some(w), Some(e), Some(seq)) =
                        (header(&m, "ward-worker"), header(&m, "ward-epoch"), header(&m, "ward-seq"))
                    {
                        present.insert((w as usize, e, seq as usize));
                    }
                }
                Some(Err(e)) => tracing::debug!("kafka recovery scan: {e}"),
                None => {}
            }
        }
        Ok(present)
    }

    /// Makes the topic hold every record of `retained`'s parts exactly once (see the module
    /// docs). `in_doubt`: a crash may have left transactions whose outcome is unknown, so the
    /// topic is read for what they delivered; at a clean close nothing is in doubt.
    fn settle(&self, retained: &[SinkCheckpoint<'_>], in_doubt: bool) -> anyhow::Result<()> {
        // Per former worker, its segments (the records one checkpoint prepared) by epoch, with
        // when the first checkpoint holding them completed. A part holds every segment its
        // worker had not committed, so one segment can be in several parts.
        type Segments = BTreeMap<u64, (i64, Vec<Record>)>;
        let mut by_worker: BTreeMap<usize, Segments> = BTreeMap::new();
        for c in retained {
            for (worker, bytes) in &c.parts {
                // A worker that held nothing still had an id: a crash may have left its
                // transaction open (an empty one, moving only its marker), and the Tansu broker
                // was seen to hide every later transaction of that id that carried records when
                // the first of them came from a new producer (CI39, chaos: both sends of a
                // closing checkpoint invisible). Ended here like the others, the run's sink
                // instance takes the producer over instead of opening a new one.
                let mine = by_worker.entry(*worker).or_default();
                if bytes.is_empty() {
                    continue;
                }
                let segments: Vec<(u64, Vec<Record>)> = ward_engine::keyed::decode(bytes)?;
                for (epoch, records) in segments {
                    mine.entry(epoch).or_insert((c.manifest.created_ms, records));
                }
            }
        }
        // Every former worker's id first: fence it and end whatever transaction a crash left
        // open (Kafka aborts it; the Tansu broker makes its records visible at the next end).
        let mut pending = Vec::new();
        for (worker, segments) in by_worker {
            let (producer, marker) = self.producer(worker)?;
            let done = self.committed_epoch(&marker)?;
            if in_doubt {
                self.transaction(&producer, &marker, worker, None, done, std::iter::empty())?;
            }
            // In doubt, every retained checkpoint is checked against the topic, the marker's
            // and older ones too: a broker that applies the offset commit before the
            // transaction ends (Tansu) can hold a moved marker of a transaction whose records a
            // crash then lost, and a run killed again before its next checkpoint leaves that
            // older transaction behind the marker.
            let todo: Vec<(u64, i64, Vec<Record>)> = segments
                .into_iter()
                .filter(|(epoch, _)| in_doubt || done.is_none_or(|d| *epoch > d))
                .map(|(epoch, (created, records))| (epoch, created, records))
                .collect();
            pending.push((worker, producer, marker, todo));
        }
        let since = pending
            .iter()
            .flat_map(|(_, _, _, t)| t.iter().filter(|(_, _, r)| !r.is_empty()).map(|(_, c, _)| *c))
            .min();
        let present = match (in_doubt, since) {
            // Transactions start after their checkpoint completed: read from a little before.
            (true, Some(since)) => self.scan(since - 60_000)?,
            _ => Default::default(),
        };
        let mut sent = Vec::new();
        for (worker, producer, marker, todo) in &pending {
            for (epoch, _, records) in todo {
                let missing: Vec<(usize, &Record)> =
                    records.iter().enumerate().filter(|(seq, _)| !present.contains(&(*worker, *epoch, *seq))).collect();
                if !records.is_empty() {
                    tracing::info!(
                        sink = %self.prefix,
                        "checkpoint {epoch} of worker {worker}: re-sending {} of {} records (the topic holds the rest)",
                        missing.len(),
                        records.len()
                    );
                }
                sent.extend(missing.iter().map(|(seq, _)| (*worker, *epoch, *seq)));
                self.transaction(producer, marker, *worker, Some(*epoch), None, missing.into_iter())?;
            }
        }
        // Read back what was sent. Every record was acknowledged before its transaction committed,
        // so none is lost, but the Tansu broker can keep a committed transaction's records from
        // read_committed consumers until another transaction on the same partition ends (its
        // dynostore engine resolves a commit only when every earlier overlapping transaction is
        // prepared). Sending them again would duplicate them once the first copy shows (CI run of
        // stop 34: three alerts twice), so the sink waits for them, a bounded time, and says so.
        if let Some(since) = since.filter(|_| !sent.is_empty()) {
            let started = std::time::Instant::now();
            loop {
                let present = self.scan(since - 60_000)?;
                let unseen = sent.iter().filter(|k| !present.contains(k)).count();
                if unseen == 0 {
                    break;
                }
                if started.elapsed() >= VISIBILITY_WAIT {
                    tracing::warn!(
                        sink = %self.prefix,
                        "{unseen} records committed on {} are not yet visible to read_committed consumers after {:?} (the broker holds them back; they are not sent again, which would duplicate them)",
                        self.config.topic,
                        VISIBILITY_WAIT
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        hand_over(self, pending);
        Ok(())
    }
}

/// Leaves the producers `settle` used with the process for the ids' next transactions (the run's
/// sink instances after a restore) instead of closing them: with the Tansu broker, a new
/// producer's transaction committed shortly after the id's previous producer closed was seen to
/// stay invisible to read_committed consumers (see [`HANDED_OVER`]), and nothing reads the run's
/// own transactions back. A producer left for an id this process does not run is fenced by
/// the process that does, and replaced here when this process's own sink hands one over.
fn hand_over(factory: &KafkaSinkFactory, pending: Vec<(usize, TxProducer, BaseConsumer, impl Sized)>) {
    let mut handed = HANDED_OVER.lock().unwrap_or_else(|e| e.into_inner());
    for (worker, producer, marker, _) in pending {
        handed.insert(factory.transactional_id(worker), (producer, marker));
    }
}

impl SinkFactory for KafkaSinkFactory {
    fn restore(&self, retained: &[SinkCheckpoint<'_>]) -> anyhow::Result<()> {
        self.settle(retained, true)
    }

    fn closed(&self, retained: &[SinkCheckpoint<'_>]) -> anyhow::Result<()> {
        self.settle(retained, false)
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
        Ok(Box::new(KafkaSink { worker: ctx.worker_index, factory: self.clone(), mode, buf: Vec::new() }))
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
    /// Finished: the producer was handed over to the run's closing step.
    Finished,
}

pub struct KafkaSink {
    worker: usize,
    /// The factory's config and id prefix (transactions are its methods).
    factory: KafkaSinkFactory,
    mode: Mode,
    /// Records since the last checkpoint (or flush).
    buf: Vec<Record>,
}

fn to_records(payload: &Payload, format: Format, out: &mut Vec<Record>) -> anyhow::Result<()> {
    match payload {
        Payload::ViewChanges(changes) => {
            for c in changes {
                // Keyed by view, window and group: a row's changes stay in one partition, in order.
                let mut key = c.shape.view.clone();
                if let Some((start, _)) = c.key.window {
                    key.push_str(&format!("|{start}"));
                }
                for v in &c.key.group {
                    key.push_str(&format!("|{v}"));
                }
                out.push(Record { key, value: serde_json::to_vec(&c.to_json())? });
            }
        }
        Payload::ViewDelta(_) => {}
        Payload::Alerts(alerts) => {
            for a in alerts.iter() {
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
                let value = match format {
                    Format::Json => serde_json::to_vec(&b.row_to_json(row))?,
                    Format::Raw => b.raw_payload(row).to_vec(),
                };
                out.push(Record { key: format!("{}/{}/{}", p.source, p.partition, p.offset), value });
            }
        }
        Payload::Progress(_) => {}
    }
    Ok(())
}

impl Sink for KafkaSink {
    fn write(&mut self, payload: &Payload) -> anyhow::Result<()> {
        to_records(payload, self.factory.config.format, &mut self.buf)?;
        if let Mode::AtLeastOnce { producer } = &self.mode {
            for r in self.buf.drain(..) {
                let mut record = BaseRecord::to(&self.factory.config.topic).key(r.key.as_bytes()).payload(&r.value);
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
        match &mut self.mode {
            Mode::Transactional { held, .. } => {
                held.push((epoch, records));
                // Every segment not yet committed: a checkpoint that never completes leaves
                // its records to the next one.
                ward_engine::keyed::encode(held)
            }
            Mode::AtLeastOnce { .. } => Ok(Vec::new()),
            Mode::Finished => anyhow::bail!("kafka sink: a checkpoint after the input ended"),
        }
    }

    fn commit(&mut self, epoch: u64) -> anyhow::Result<()> {
        let (factory, worker) = (&self.factory, self.worker);
        let Mode::Transactional { producer, marker, held } = &mut self.mode else { return Ok(()) };
        while held.first().is_some_and(|(c, _)| *c <= epoch) {
            let (c, records) = held.remove(0);
            factory.transaction(producer, marker, worker, Some(c), None, records.iter().enumerate())?;
        }
        Ok(())
    }

    fn retire_part(&mut self, last: u64) -> anyhow::Result<Vec<u8>> {
        // The closing checkpoint's part: produced once that checkpoint is durable (`closed`).
        self.prepare(last)
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        match &self.mode {
            Mode::AtLeastOnce { producer } => producer
                .flush(self.factory.config.timeout)
                .map_err(|e| anyhow::anyhow!("kafka flush to {}: {e}", self.factory.config.topic)),
            // Held checkpoints not committed yet are settled by `closed` (or the next run),
            // with this producer.
            Mode::Transactional { .. } => {
                if let Mode::Transactional { producer, marker, .. } = std::mem::replace(&mut self.mode, Mode::Finished)
                {
                    let id = self.factory.transactional_id(self.worker);
                    HANDED_OVER.lock().unwrap_or_else(|e| e.into_inner()).insert(id, (producer, marker));
                }
                Ok(())
            }
            Mode::Finished => Ok(()),
        }
    }
}
