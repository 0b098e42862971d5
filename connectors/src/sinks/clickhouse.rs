//! The `clickhouse` sink: batched RowBinary inserts over HTTP with the `clickhouse` crate.
//!
//! The sink reads the target table's columns from `system.columns` and fills each one from the
//! record, encoded into the column's own type (see `clickhouse_rowbinary`). Column names say
//! where values come from: for events, a core field with dots as underscores (`source_ip` ←
//! `source.ip`, `timestamp` ← `@timestamp`), `ward_source`, `ward_partition`, `ward_offset`,
//! `ext` (the extension map: `Map(String, String)` or JSON text), `raw` (the input record), a
//! time field's name with `_ms` (its milliseconds within the second, beside a `DateTime`);
//! for alerts, cases and quarantined records, a path into the record's JSON with `_` between
//! levels (`rule_title` ← `rule.title`; a time column `x` also takes `x_ms`) and `record` (the
//! whole record as JSON). `columns:` maps any other name. `ward_id` is a deterministic row id:
//! xxh3 of the event's provenance, or of the record's JSON.
//!
//! Exactly once (docs/architecture.md §5): every row of a checkpoint's epochs is inserted before the
//! checkpoint completes, and after a crash the replay from the checkpoint produces the same
//! rows with the same ids, so a `ReplacingMergeTree` ordered by the id keeps each once (read
//! with `FINAL`); on servers that have it, `insert_deduplication_token` also makes a replayed
//! identical block a no-op. An outage blocks the worker in retries with exponential backoff,
//! which back-pressures the whole dataflow (sources stop reading); nothing is dropped.
//! `ward_sink_circuit_state` shows the breaker: 0 closed, 1 open (failing), 2 half-open (probing).
//!
//! View changes (README, "Views") go to a `VersionedCollapsingMergeTree` table (`ward views
//! ddl`), where a duplicate row would not collapse away, so they are inserted differently:
//! with checkpoints, a worker's changes of a checkpoint's epochs go into the checkpoint (its
//! `prepare` part, with every block of older checkpoints not inserted yet) and are inserted as
//! one block when the checkpoint is committed; after a crash, and after the run's closing
//! checkpoint, each block the retained parts hold is inserted unless its first row's `ward_id`
//! is in the table already (a block into one partition is atomic). The ids are looked up in
//! `<table>_inserted`, a materialized view of every inserted change's id: collapsing removes
//! rows from the view's own table.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clickhouse_types::data_types::DataTypeNode;
use schemars::JsonSchema;
use serde::Deserialize;
use ward_engine::batch::{write_ext_object_json, EventBatch, Key, Value};
use ward_engine::component::{Payload, Sink, SinkFactory, StreamKind, WorkerContext};
use ward_engine::fields::{FieldId, CORE_FIELDS};
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};

use super::clickhouse_rowbinary::{self as rowbinary, Cell};

/// Insert events, alerts, cases or quarantined records into a ClickHouse table.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseSinkConfig {
    /// HTTP endpoint of the server.
    #[serde(default = "default_url")]
    pub url: String,
    #[serde(default = "default_database")]
    pub database: String,
    pub table: String,
    #[serde(default)]
    pub user: Option<String>,
    /// Name of the environment variable that holds the password (the password itself never
    /// appears in specs or logs).
    #[serde(default)]
    pub password_env: Option<String>,
    /// Column → source for columns whose name does not say it: an event field (`user.name`,
    /// an extension field's name, `ward.source`, `ward.partition`, `ward.offset`, `ext`, `raw`)
    /// or a record path (`rule.title`, `record`).
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Rows per insert (a worker inserts earlier at checkpoints and after `max_delay`).
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Longest a row waits in the worker's buffer before an insert.
    #[serde(default = "default_max_delay", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_delay: Duration,
    /// lz4-compress inserts.
    #[serde(default = "default_true")]
    pub compression: bool,
    #[serde(default)]
    pub retry: RetryConfig,
}

/// Retries of a failed insert: exponential backoff, for as long as the outage lasts.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub initial_backoff: Duration,
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
    /// Consecutive failures that open the circuit (inserts then wait a full backoff first).
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// Errors the server answers with (as opposed to a connection that fails) are retried
    /// this many times, then stop the run: they are usually a schema problem no wait fixes.
    #[serde(default = "default_server_error_retries")]
    pub server_error_retries: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            failure_threshold: default_failure_threshold(),
            server_error_retries: default_server_error_retries(),
        }
    }
}

/// The server's HTTP endpoint when a spec names none (the `clickhouse` source's too).
pub(crate) fn default_url() -> String {
    "http://127.0.0.1:8123".into()
}
pub(crate) fn default_database() -> String {
    "default".into()
}
fn default_batch_rows() -> usize {
    100_000
}
fn default_max_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_true() -> bool {
    true
}
fn default_initial_backoff() -> Duration {
    Duration::from_millis(200)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(10)
}
fn default_failure_threshold() -> u32 {
    3
}
fn default_server_error_retries() -> u32 {
    5
}

impl ComponentConfig for ClickHouseSinkConfig {
    const TYPE: &'static str = "clickhouse";
    const SECTION: Section = Section::Sink;
    const DESCRIPTION: &'static str =
        "Insert events, alerts, cases or quarantined records into a ClickHouse table (exactly once with checkpoints)";
    const ACCEPTS: &'static [StreamKind] =
        &[StreamKind::Events, StreamKind::Quarantine, StreamKind::Alerts, StreamKind::Cases, StreamKind::Views];
    const OUTPUT: Option<StreamKind> = None;

    fn build(self, _ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        anyhow::ensure!(
            self.url.starts_with("http://"),
            "url: only http:// endpoints are supported (got {:?})",
            self.url
        );
        anyhow::ensure!(!self.table.is_empty(), "table: must not be empty");
        use ward_engine::limits::check_range;
        check_range("batch_rows", self.batch_rows as u64, 1, 1 << 20)?;
        check_range("retry.failure_threshold", self.retry.failure_threshold as u64, 1, 1_000_000)?;
        check_range("retry.server_error_retries", self.retry.server_error_retries as u64, 0, 1_000_000)?;
        let password = match &self.password_env {
            Some(var) => Some(
                std::env::var(var)
                    .map_err(|_| anyhow::anyhow!("password_env: environment variable {var} is not set"))?,
            ),
            None => None,
        };
        Ok(Built::Sink(Arc::new(ClickHouseFactory { config: self, password, table: OnceLock::new() })))
    }
}

/// A column of the target table as the server describes it.
#[derive(Clone, Debug)]
struct TableColumn {
    name: String,
    ty: DataTypeNode,
    /// `DEFAULT`, `MATERIALIZED`, `ALIAS` or empty.
    default_kind: String,
}

struct ClickHouseFactory {
    config: ClickHouseSinkConfig,
    password: Option<String>,
    /// The table's columns, read once by the first worker.
    table: OnceLock<Result<Arc<TableInfo>, String>>,
}

struct TableInfo {
    columns: Vec<TableColumn>,
    /// The server takes `insert_deduplication_token` (22.2 and later).
    dedup_token: bool,
}

impl ClickHouseFactory {
    fn client(&self) -> clickhouse::Client {
        let mut c = clickhouse::Client::default()
            .with_url(&self.config.url)
            .with_database(&self.config.database)
            // Schema validation sends settings old servers reject; the sink checks types itself.
            .with_validation(false)
            .with_compression(if self.config.compression {
                clickhouse::Compression::Lz4
            } else {
                clickhouse::Compression::None
            });
        if let Some(u) = &self.config.user {
            c = c.with_user(u);
        }
        if let Some(p) = &self.password {
            c = c.with_password(p);
        }
        c
    }

    /// Reads the table's columns, waiting (with backoff) while the server is unreachable.
    fn describe(&self, rt: &tokio::runtime::Runtime, breaker: &Breaker) -> anyhow::Result<TableInfo> {
        let client = self.client();
        let (db, table) = (&self.config.database, &self.config.table);
        let mut failures = 0u32;
        loop {
            let result: Result<_, clickhouse::error::Error> = rt.block_on(async {
                let version = client.query("SELECT version()").fetch_one::<String>().await?;
                let cols = client
                    .query("SELECT name, type, default_kind FROM system.columns WHERE database = ? AND table = ? ORDER BY position")
                    .bind(db.as_str())
                    .bind(table.as_str())
                    .fetch_all::<(String, String, String)>()
                    .await;
                // 18.16 has no `position` column: fall back to the table's own order.
                let cols = match cols {
                    Ok(c) => c,
                    Err(_) => {
                        client
                            .query("SELECT name, type, default_kind FROM system.columns WHERE database = ? AND table = ?")
                            .bind(db.as_str())
                            .bind(table.as_str())
                            .fetch_all::<(String, String, String)>()
                            .await?
                    }
                };
                Ok::<(String, Vec<(String, String, String)>), clickhouse::error::Error>((version, cols))
            });
            match result {
                Ok((version, cols)) => {
                    breaker.succeeded();
                    anyhow::ensure!(!cols.is_empty(), "table {db}.{table} does not exist on {}", self.config.url);
                    let mut columns = Vec::with_capacity(cols.len());
                    for (name, ty, default_kind) in cols {
                        let ty = rowbinary::parse_type(&ty)
                            .map_err(|e| anyhow::anyhow!("column {name} of {db}.{table}: {e}"))?;
                        columns.push(TableColumn { name, ty, default_kind });
                    }
                    return Ok(TableInfo { columns, dedup_token: version_at_least(&version, 22, 2) });
                }
                Err(e) if is_connection_error(&e) => {
                    failures += 1;
                    breaker.failed(failures, &e);
                    std::thread::sleep(backoff(&self.config.retry, failures));
                }
                Err(e) => anyhow::bail!("reading the columns of {db}.{table} on {}: {e}", self.config.url),
            }
        }
    }
}

fn version_at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

fn is_connection_error(e: &clickhouse::error::Error) -> bool {
    use clickhouse::error::Error as E;
    matches!(e, E::Network(_) | E::TimedOut)
}

fn backoff(retry: &RetryConfig, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    retry.initial_backoff.saturating_mul(factor).min(retry.max_backoff)
}

/// The circuit breaker's state, as a metric and in the log.
struct Breaker {
    state: prometheus::IntGauge,
    retries: prometheus::IntCounter,
    threshold: u32,
    sink: Arc<str>,
}

impl Breaker {
    fn failed(&self, failures: u32, e: &dyn std::fmt::Display) {
        self.retries.inc();
        if failures == self.threshold {
            self.state.set(1);
            tracing::warn!(sink = %self.sink, "ClickHouse unreachable, circuit open, retrying with backoff: {e}");
        } else if failures < self.threshold {
            tracing::info!(sink = %self.sink, "ClickHouse insert failed (attempt {failures}), retrying: {e}");
        } else {
            self.state.set(2);
        }
    }
    fn succeeded(&self) {
        if self.state.get() != 0 {
            tracing::info!(sink = %self.sink, "ClickHouse reachable again, circuit closed");
        }
        self.state.set(0);
    }
}

impl SinkFactory for ClickHouseFactory {
    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Sink>> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let breaker = Breaker {
            state: ctx
                .metrics
                .families
                .gauge_vec(
                    "ward_sink_circuit_state",
                    "A sink's circuit breaker: 0 closed, 1 open (writes failing), 2 half-open (probing)",
                    &["component"],
                )
                .with_label_values(&[&*ctx.component_id]),
            retries: ctx
                .metrics
                .families
                .counter_vec("ward_sink_retries_total", "Sink writes that failed and were retried", &["component"])
                .with_label_values(&[&*ctx.component_id]),
            threshold: self.config.retry.failure_threshold.max(1),
            sink: ctx.component_id.clone(),
        };
        self.sink(rt, breaker, ctx.checkpointing).map(|s| Box::new(s) as Box<dyn Sink>)
    }

    fn restore(&self, retained: &[ward_engine::checkpoint::SinkCheckpoint<'_>]) -> anyhow::Result<()> {
        self.settle_views(retained)
    }

    fn closed(&self, retained: &[ward_engine::checkpoint::SinkCheckpoint<'_>]) -> anyhow::Result<()> {
        self.settle_views(retained)
    }
}

impl ClickHouseFactory {
    /// A sink instance; the first one reads the table's columns.
    fn sink(
        &self,
        rt: tokio::runtime::Runtime,
        breaker: Breaker,
        checkpointing: bool,
    ) -> anyhow::Result<ClickHouseSink> {
        let table = self
            .table
            .get_or_init(|| self.describe(&rt, &breaker).map(Arc::new).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(ClickHouseSink {
            client: self.client(),
            rt,
            config: self.config.clone(),
            table,
            breaker,
            plan: None,
            buf: Vec::new(),
            rows: 0,
            ids: xxhash_rust::xxh3::Xxh3::new(),
            oldest: None,
            first: vec![NONE; CORE_FIELDS.len()],
            text: String::new(),
            json: Vec::new(),
            order: Vec::new(),
            checkpointing,
            views: BTreeMap::new(),
            prepared: BTreeMap::new(),
        })
    }

    /// Inserts the view changes the retained checkpoints' parts hold, block by block, unless a
    /// block is in the table already (its first row's `ward_id` is).
    fn settle_views(&self, retained: &[ward_engine::checkpoint::SinkCheckpoint<'_>]) -> anyhow::Result<()> {
        let mut blocks: Vec<Vec<serde_json::Value>> = Vec::new();
        for bytes in retained.iter().flat_map(|c| c.parts.iter().map(|(_, bytes)| *bytes)).filter(|b| !b.is_empty()) {
            let part: Vec<Vec<serde_json::Value>> =
                serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("a checkpoint part of this sink: {e}"))?;
            blocks.extend(part);
        }
        // A block in several parts (prepared before both checkpoints, committed after) once.
        blocks.sort_by_cached_key(|b| b.first().map(|r| r.to_string()));
        blocks.dedup();
        if blocks.iter().all(Vec::is_empty) {
            return Ok(());
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let breaker = Breaker {
            state: prometheus::IntGauge::new("settle_state", "unregistered").expect("valid name"),
            retries: prometheus::IntCounter::new("settle_retries", "unregistered").expect("valid name"),
            threshold: self.config.retry.failure_threshold.max(1),
            sink: "settle".into(),
        };
        let mut sink = self.sink(rt, breaker, true)?;
        let (db, t) = (&self.config.database, &self.config.table);
        for block in blocks.into_iter().filter(|b| !b.is_empty()) {
            let id = xxhash_rust::xxh3::xxh3_64(block[0].to_string().as_bytes());
            // Not the view's table: collapsing removes rows, so a block can leave no row there.
            let inserted = super::clickhouse_ddl::INSERTED_SUFFIX;
            let sql = format!("SELECT count() FROM {db}.{t}{inserted} WHERE ward_id = {id}");
            let there: u64 = sink
                .rt
                .block_on(sink.client.query(&sql).fetch_one::<u64>())
                .map_err(|e| {
                    anyhow::anyhow!(
                        "checking {db}.{t}{inserted} for view changes of a checkpoint: {e} (create the view's tables with `ward views ddl`)"
                    )
                })?;
            if there == 0 {
                sink.encode_records(block.into_iter())?;
                sink.flush()?;
            }
        }
        Ok(())
    }
}

/// Where a column's values come from.
#[derive(Clone, Debug, PartialEq)]
enum ColumnSource {
    Id,
    Core(FieldId),
    /// The milliseconds within the second of a time field (`timestamp_ms` beside an 18.16
    /// `DateTime`, which has whole seconds).
    Millis(FieldId),
    Source,
    Partition,
    Offset,
    Ext,
    ExtField(String),
    Raw,
    /// Alerts, cases, quarantine: a path of normalized names into the JSON record.
    Path(String),
    Record,
}

/// The columns an insert names, with their sources.
struct Plan {
    events: bool,
    columns: Vec<(DataTypeNode, ColumnSource)>,
    sql: String,
}

/// `user.target.name` → `user_target_name`, `@timestamp` → `timestamp`.
fn normalize(name: &str) -> String {
    name.trim_start_matches('@').replace('.', "_")
}

impl Plan {
    fn new(config: &ClickHouseSinkConfig, table: &TableInfo, events: bool) -> anyhow::Result<Plan> {
        let core: BTreeMap<String, FieldId> = FieldId::all().map(|f| (normalize(f.name()), f)).collect();
        let mut columns = Vec::new();
        let mut names = Vec::new();
        for col in &table.columns {
            let mapped = config.columns.get(&col.name);
            if matches!(col.default_kind.as_str(), "MATERIALIZED" | "ALIAS")
                || (!col.default_kind.is_empty() && mapped.is_none())
            {
                continue; // the server computes it
            }
            anyhow::ensure!(
                rowbinary::supported(&col.ty),
                "column {} of {}.{}: type {} is not supported",
                col.name,
                config.database,
                config.table,
                col.ty
            );
            let key = mapped.map(|m| normalize(m)).unwrap_or_else(|| col.name.clone());
            let source = match key.as_str() {
                "ward_id" => ColumnSource::Id,
                "record" if !events => ColumnSource::Record,
                _ if !events => ColumnSource::Path(key),
                "ward_source" => ColumnSource::Source,
                "ward_partition" => ColumnSource::Partition,
                "ward_offset" => ColumnSource::Offset,
                "ext" => ColumnSource::Ext,
                "raw" => ColumnSource::Raw,
                k => match core.get(k) {
                    Some(f) => ColumnSource::Core(*f),
                    None if k.strip_suffix("_ms").and_then(|t| core.get(t)).is_some_and(|f| {
                        f.field_type() == ward_engine::fields::FieldType::Timestamp
                    }) =>
                    {
                        ColumnSource::Millis(core[k.strip_suffix("_ms").expect("checked")])
                    }
                    None => match mapped {
                        // An extension field, as the input names it.
                        Some(m) => ColumnSource::ExtField(m.clone()),
                        None if matches!(col.ty, DataTypeNode::Nullable(_)) => continue,
                        None => anyhow::bail!(
                            "column {} of {}.{}: no event field is named so; map it with `columns: {{{}: <field>}}` or give it a DEFAULT",
                            col.name,
                            config.database,
                            config.table,
                            col.name
                        ),
                    },
                },
            };
            names.push(format!("`{}`", col.name.replace('`', "\\`")));
            columns.push((col.ty.clone(), source));
        }
        anyhow::ensure!(!columns.is_empty(), "{}.{}: no column to fill", config.database, config.table);
        let sql = format!(
            "INSERT INTO `{}`.`{}` ({}) FORMAT RowBinary",
            config.database.replace('`', "\\`"),
            config.table.replace('`', "\\`"),
            names.join(", ")
        );
        Ok(Plan { events, columns, sql })
    }
}

const NONE: u32 = u32::MAX;

pub struct ClickHouseSink {
    client: clickhouse::Client,
    rt: tokio::runtime::Runtime,
    config: ClickHouseSinkConfig,
    table: Arc<TableInfo>,
    breaker: Breaker,
    plan: Option<Plan>,
    /// Encoded rows not yet inserted.
    buf: Vec<u8>,
    rows: usize,
    /// Hash of the buffered rows' ids: the block's deduplication token.
    ids: xxhash_rust::xxh3::Xxh3,
    /// When the oldest buffered row arrived.
    oldest: Option<Instant>,
    /// Per core field, the row's first slot holding it (reused across rows).
    first: Vec<u32>,
    text: String,
    /// The `ext` column's JSON text of the current row, and its key order (reused across rows).
    json: Vec<u8>,
    order: Vec<usize>,
    /// The run takes checkpoints: view changes wait for theirs.
    checkpointing: bool,
    /// View changes by epoch, not yet in a checkpoint.
    views: BTreeMap<u64, Vec<serde_json::Value>>,
    /// View changes in checkpoint `c`, inserted when it is committed.
    prepared: BTreeMap<u64, Vec<serde_json::Value>>,
}

fn event_id(b: &EventBatch, row: usize) -> u64 {
    let r = &b.rows()[row];
    let o = &b.origins()[r.origin as usize];
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(o.source.as_bytes());
    h.update(&[0]);
    h.update(o.partition.as_bytes());
    h.update(&[0]);
    h.update(&r.offset.to_le_bytes());
    h.digest()
}

fn cell<'a>(bytes: ward_engine::batch::Bytes<'a>, v: Value) -> Cell<'a> {
    match v {
        Value::Null => Cell::Null,
        Value::Bool(b) => Cell::Bool(b),
        Value::Int(i) => Cell::Int(i),
        Value::Float(f) => Cell::Float(f),
        Value::Str(r) => Cell::Str(bytes.str(r)),
        Value::Timestamp(t) => Cell::TimeMs(t),
        Value::Ip(r) => match bytes.ip(r) {
            Some(ip) => Cell::Ip(ip),
            None => Cell::Null,
        },
    }
}

/// Text of a value (extension map values are text; nothing for null).
fn value_text(bytes: ward_engine::batch::Bytes<'_>, v: Value, out: &mut String) {
    out.clear();
    ward_engine::batch::write_value_text(bytes, v, out);
}

/// Looks a column name up in a JSON record: keys compared normalized, `_` between levels.
fn find<'a>(v: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    let serde_json::Value::Object(map) = v else { return None };
    for (k, child) in map {
        let k = k.trim_start_matches('@');
        let matches_key = |rest: &str| {
            k.len() <= rest.len() && k.chars().zip(rest.chars()).all(|(a, b)| a == b || (a == '.' && b == '_'))
        };
        if !matches_key(name) {
            continue;
        }
        let rest = &name[k.len()..];
        if rest.is_empty() {
            return Some(child);
        }
        if let Some(rest) = rest.strip_prefix('_') {
            if let Some(found) = find(child, rest) {
                return Some(found);
            }
        }
    }
    None
}

fn is_time(ty: &DataTypeNode) -> bool {
    match ty {
        DataTypeNode::Nullable(t) | DataTypeNode::LowCardinality(t) => is_time(t),
        DataTypeNode::DateTime(_) | DataTypeNode::DateTime64(..) | DataTypeNode::Date => true,
        _ => false,
    }
}

fn is_array(ty: &DataTypeNode) -> bool {
    matches!(ty.remove_low_cardinality(), DataTypeNode::Array(_))
}

impl ClickHouseSink {
    fn plan(&mut self, events: bool) -> anyhow::Result<&Plan> {
        if self.plan.as_ref().is_some_and(|p| p.events != events) {
            // One sink reads one stream kind; a second kind would need its own table.
            anyhow::bail!("a clickhouse sink takes one kind of stream");
        }
        if self.plan.is_none() {
            self.plan = Some(Plan::new(&self.config, &self.table, events)?);
        }
        Ok(self.plan.as_ref().expect("set above"))
    }

    fn encode_events(&mut self, b: &EventBatch) -> anyhow::Result<()> {
        self.plan(true)?;
        let plan = self.plan.as_ref().expect("planned");
        let bytes = b.bytes();
        for row in 0..b.len() {
            let slots = b.row_slots(row);
            let start = b.rows()[row].slots_start;
            for (i, s) in slots.iter().enumerate() {
                if let Key::Core(f) = s.key {
                    if self.first[f.0 as usize] == NONE {
                        self.first[f.0 as usize] = start + i as u32;
                    }
                }
            }
            let id = event_id(b, row);
            self.ids.update(&id.to_le_bytes());
            let r = &b.rows()[row];
            let origin = &b.origins()[r.origin as usize];
            for (ty, source) in &plan.columns {
                let result = match source {
                    ColumnSource::Id => rowbinary::encode(ty, Cell::UInt(id), &mut self.buf),
                    ColumnSource::Source => rowbinary::encode(ty, Cell::Str(&origin.source), &mut self.buf),
                    ColumnSource::Partition => rowbinary::encode(ty, Cell::Str(&origin.partition), &mut self.buf),
                    ColumnSource::Offset => rowbinary::encode(ty, Cell::UInt(r.offset), &mut self.buf),
                    ColumnSource::Raw => {
                        rowbinary::encode(ty, Cell::Str(&String::from_utf8_lossy(b.raw_payload(row))), &mut self.buf)
                    }
                    ColumnSource::Core(f) if is_array(ty) => {
                        let values: Vec<serde_json::Value> = slots
                            .iter()
                            .filter(|s| s.key == Key::Core(*f))
                            .map(|s| ward_engine::batch::value_to_json(bytes, s.value))
                            .collect();
                        rowbinary::encode(ty, Cell::Json(&serde_json::Value::Array(values)), &mut self.buf)
                    }
                    ColumnSource::Core(f) => {
                        let at = self.first[f.0 as usize];
                        let v = if at == NONE { Value::Null } else { b.slots()[at as usize].value };
                        rowbinary::encode(ty, cell(bytes, v), &mut self.buf)
                    }
                    ColumnSource::Millis(f) => {
                        let at = self.first[f.0 as usize];
                        let ms = match (at != NONE).then(|| b.slots()[at as usize].value) {
                            Some(Value::Timestamp(t)) => t.rem_euclid(1000) as u64,
                            _ => 0,
                        };
                        rowbinary::encode(ty, Cell::UInt(ms), &mut self.buf)
                    }
                    ColumnSource::ExtField(name) => {
                        let v = slots
                            .iter()
                            .find(|s| matches!(s.key, Key::Ext(k) if bytes.str(k) == name))
                            .map_or(Value::Null, |s| s.value);
                        rowbinary::encode(ty, cell(bytes, v), &mut self.buf)
                    }
                    ColumnSource::Ext => {
                        if let DataTypeNode::Map([k, v]) = ty.remove_low_cardinality() {
                            let n = slots.iter().filter(|s| matches!(s.key, Key::Ext(_))).count();
                            rowbinary::put_varint(n as u64, &mut self.buf);
                            slots.iter().try_for_each(|s| {
                                let Key::Ext(name) = s.key else { return Ok(()) };
                                rowbinary::encode(k, Cell::Str(bytes.str(name)), &mut self.buf)?;
                                value_text(bytes, s.value, &mut self.text);
                                rowbinary::encode(v, Cell::Str(&self.text), &mut self.buf)
                            })
                        } else {
                            // JSON text, written straight from the batch (no map of owned values).
                            self.json.clear();
                            write_ext_object_json(bytes, slots, &mut self.order, &mut self.json);
                            match std::str::from_utf8(&self.json) {
                                Ok(text) => rowbinary::encode(ty, Cell::Str(text), &mut self.buf),
                                Err(e) => Err(format!("ext: {e}")),
                            }
                        }
                    }
                    ColumnSource::Path(_) | ColumnSource::Record => unreachable!("event plans have no record paths"),
                };
                if let Err(e) = result {
                    self.first.fill(NONE);
                    anyhow::bail!("{}.{}: {e}", self.config.database, self.config.table);
                }
            }
            for s in slots {
                if let Key::Core(f) = s.key {
                    self.first[f.0 as usize] = NONE;
                }
            }
            self.rows += 1;
        }
        Ok(())
    }

    fn encode_records(&mut self, records: impl Iterator<Item = serde_json::Value>) -> anyhow::Result<()> {
        self.plan(false)?;
        let plan = self.plan.as_ref().expect("planned");
        for record in records {
            let text = record.to_string();
            let id = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
            self.ids.update(&id.to_le_bytes());
            for (ty, source) in &plan.columns {
                let result = match source {
                    ColumnSource::Id => rowbinary::encode(ty, Cell::UInt(id), &mut self.buf),
                    ColumnSource::Record => rowbinary::encode(ty, Cell::Str(&text), &mut self.buf),
                    ColumnSource::Path(path) => {
                        let v = find(&record, path).or_else(|| {
                            if is_time(ty) {
                                find(&record, &format!("{path}_ms"))
                            } else {
                                None
                            }
                        });
                        rowbinary::encode(ty, v.map_or(Cell::Null, Cell::Json), &mut self.buf)
                    }
                    _ => unreachable!("record plans have paths"),
                };
                result.map_err(|e| anyhow::anyhow!("{}.{}: {e}", self.config.database, self.config.table))?;
            }
            self.rows += 1;
        }
        Ok(())
    }

    /// Inserts the buffered rows, retrying until the server takes them.
    fn flush(&mut self) -> anyhow::Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let Some(plan) = &self.plan else { return Ok(()) };
        let data = bytes::Bytes::from(std::mem::take(&mut self.buf));
        let token = format!("ward-{:016x}-{}", self.ids.digest(), self.rows);
        let (mut failures, mut server_errors) = (0u32, 0u32);
        loop {
            let mut insert = self.client.insert_formatted_with(plan.sql.clone());
            if self.table.dedup_token {
                insert = insert.with_setting("insert_deduplication_token", token.clone());
            }
            let result = self.rt.block_on(async {
                insert.send(data.clone()).await?;
                insert.end().await
            });
            match result {
                Ok(()) => {
                    self.breaker.succeeded();
                    break;
                }
                Err(e) => {
                    failures += 1;
                    if !is_connection_error(&e) {
                        server_errors += 1;
                        if server_errors > self.config.retry.server_error_retries {
                            // The rows stay buffered: nothing is dropped on the way out, and the
                            // run's failure keeps any later checkpoint from claiming them.
                            self.buf = Vec::from(data);
                            anyhow::bail!("inserting into {}.{}: {e}", self.config.database, self.config.table);
                        }
                    }
                    self.breaker.failed(failures, &e);
                    std::thread::sleep(backoff(&self.config.retry, failures));
                }
            }
        }
        let mut buf = Vec::from(data);
        buf.clear();
        self.buf = buf;
        self.rows = 0;
        self.ids.reset();
        self.oldest = None;
        Ok(())
    }
}

impl Sink for ClickHouseSink {
    fn write(&mut self, payload: &Payload) -> anyhow::Result<()> {
        if payload.is_empty() {
            return Ok(());
        }
        match payload {
            Payload::Events(b) => self.encode_events(b)?,
            Payload::Alerts(a) => self.encode_records(a.iter().map(|a| serde_json::to_value(a).unwrap_or_default()))?,
            Payload::Cases(c) => self.encode_records(c.iter().map(|c| c.to_json()))?,
            Payload::Quarantine(q) => self.encode_records(q.iter().map(|r| r.to_json()))?,
            Payload::ViewChanges(changes) if self.checkpointing => {
                for c in changes {
                    self.views.entry(c.epoch).or_default().push(c.to_row_json());
                }
                return Ok(());
            }
            Payload::ViewChanges(changes) => self.encode_records(changes.iter().map(|c| c.to_row_json()))?,
            Payload::ViewDelta(_) | Payload::Progress(_) => {}
        }
        self.oldest.get_or_insert_with(Instant::now);
        if self.rows >= self.config.batch_rows {
            self.flush()?;
        }
        Ok(())
    }

    fn epoch_complete(&mut self, _epoch: u64) -> anyhow::Result<()> {
        if self.oldest.is_some_and(|t| t.elapsed() >= self.config.max_delay) {
            self.flush()?;
        }
        Ok(())
    }

    /// Every row of the checkpoint's epochs is in the table before the checkpoint completes;
    /// the checkpoint itself holds nothing of this sink.
    fn prepare(&mut self, epoch: u64) -> anyhow::Result<Vec<u8>> {
        self.flush()?;
        // View changes of epochs up to `epoch` go into the checkpoint, to be inserted at commit.
        let later = self.views.split_off(&(epoch + 1));
        let block: Vec<serde_json::Value> = std::mem::replace(&mut self.views, later).into_values().flatten().collect();
        if !block.is_empty() {
            self.prepared.insert(epoch, block);
        }
        if self.prepared.is_empty() {
            return Ok(Vec::new());
        }
        // Every block not inserted yet, not only this checkpoint's: an older checkpoint can be
        // pruned before its commit reaches this sink, and a crash then must not lose its block.
        let blocks: Vec<&Vec<serde_json::Value>> = self.prepared.values().collect();
        Ok(serde_json::to_vec(&blocks)?)
    }

    fn commit(&mut self, epoch: u64) -> anyhow::Result<()> {
        let later = self.prepared.split_off(&(epoch + 1));
        for (_, block) in std::mem::replace(&mut self.prepared, later) {
            self.encode_records(block.into_iter())?;
            self.flush()?;
        }
        Ok(())
    }

    fn retire_part(&mut self, last: u64) -> anyhow::Result<Vec<u8>> {
        self.prepare(last)
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(cols: &[(&str, &str, &str)]) -> TableInfo {
        TableInfo {
            columns: cols
                .iter()
                .map(|(n, t, d)| TableColumn {
                    name: n.to_string(),
                    ty: rowbinary::parse_type(t).unwrap(),
                    default_kind: d.to_string(),
                })
                .collect(),
            dedup_token: false,
        }
    }

    fn config(columns: &[(&str, &str)]) -> ClickHouseSinkConfig {
        let columns: serde_json::Map<String, serde_json::Value> =
            columns.iter().map(|(a, b)| (a.to_string(), serde_json::Value::from(*b))).collect();
        serde_json::from_value(serde_json::json!({"table": "events", "columns": columns})).unwrap()
    }

    #[test]
    fn event_columns_resolve_by_name_and_mapping() {
        let t = table(&[
            ("ward_id", "UInt64", ""),
            ("timestamp", "DateTime64(3, 'UTC')", ""),
            ("user_target_name", "LowCardinality(Nullable(String))", ""),
            ("src", "Nullable(IPv6)", ""),
            ("ward_offset", "UInt64", ""),
            ("ext", "Map(String, String)", ""),
            ("day", "Date", "DEFAULT"),
            ("ingested", "DateTime", "MATERIALIZED"),
            ("unknown_nullable", "Nullable(String)", ""),
        ]);
        let plan = Plan::new(&config(&[("src", "source.ip")]), &t, true).unwrap();
        let sources: Vec<_> = plan.columns.iter().map(|(_, s)| s.clone()).collect();
        assert_eq!(
            sources,
            vec![
                ColumnSource::Id,
                ColumnSource::Core(FieldId::lookup("@timestamp").unwrap()),
                ColumnSource::Core(FieldId::lookup("user.target.name").unwrap()),
                ColumnSource::Core(FieldId::lookup("source.ip").unwrap()),
                ColumnSource::Offset,
                ColumnSource::Ext,
            ]
        );
        assert_eq!(
            plan.sql,
            "INSERT INTO `default`.`events` (`ward_id`, `timestamp`, `user_target_name`, `src`, `ward_offset`, `ext`) FORMAT RowBinary"
        );
    }

    #[test]
    fn an_unfillable_column_is_a_clear_error() {
        let t = table(&[("ward_id", "UInt64", ""), ("tenant", "String", "")]);
        let e = Plan::new(&config(&[]), &t, true).err().unwrap().to_string();
        assert!(e.contains("column tenant") && e.contains("columns:"), "{e}");
        let t = table(&[("shape", "Tuple(UInt8, UInt8)", "")]);
        assert!(Plan::new(&config(&[]), &t, true).err().unwrap().to_string().contains("not supported"));
    }

    #[test]
    fn core_field_names_normalize_uniquely() {
        let names: std::collections::BTreeSet<_> = FieldId::all().map(|f| normalize(f.name())).collect();
        assert_eq!(names.len(), CORE_FIELDS.len());
        for special in ["ward_id", "ward_source", "ward_partition", "ward_offset", "ext", "raw", "record"] {
            assert!(!names.contains(special), "{special} collides with a core field");
        }
    }

    #[test]
    fn record_paths_walk_nested_keys() {
        let alert = serde_json::json!({
            "alert_id": "a1", "rule": {"id": "r", "title": "T", "tags": ["x"]},
            "origin": {"offset": 7}, "event_time_ms": 1000, "ward.source": "gen"
        });
        assert_eq!(find(&alert, "alert_id"), Some(&serde_json::json!("a1")));
        assert_eq!(find(&alert, "rule_title"), Some(&serde_json::json!("T")));
        assert_eq!(find(&alert, "origin_offset"), Some(&serde_json::json!(7)));
        assert_eq!(find(&alert, "ward_source"), Some(&serde_json::json!("gen")));
        assert_eq!(find(&alert, "rule_missing"), None);
        assert_eq!(find(&alert, "event_time_ms"), Some(&serde_json::json!(1000)));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = RetryConfig::default();
        assert_eq!(backoff(&r, 1), Duration::from_millis(200));
        assert_eq!(backoff(&r, 3), Duration::from_millis(800));
        assert_eq!(backoff(&r, 30), Duration::from_secs(10));
        assert!(version_at_least("24.8.1.1", 22, 2) && !version_at_least("18.16.1", 22, 2));
    }

    /// A row's id is the hash of its JSON text, and a checkpoint holds rows as JSON text: the
    /// text must come back the same after parsing (serde_json's `float_roundtrip`), or a row
    /// settled after a crash gets another id and goes in twice.
    #[test]
    fn floats_survive_a_round_trip_through_json_text() {
        let mut x = 10.0f64;
        for i in 0..200_000u64 {
            x = (x * 1.000_000_7 + (i as f64) / 99.0).fract() * 100.0 + 1e-9 * i as f64;
            let v = serde_json::json!({"risk_avg": x, "r": x / 3.0});
            let text = v.to_string();
            let back: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(back.to_string(), text, "{x:?}");
        }
    }
}
