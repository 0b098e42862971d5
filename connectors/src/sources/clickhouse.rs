//! The `clickhouse` source: reads back the events table the `clickhouse` sink fills, as
//! normalized events, for installations that keep their history in ClickHouse.
//!
//! - **Time range:** `from`/`to` become a `WHERE` on `timestamp`, so the server prunes its
//!   daily partitions.
//! - **Order and paging:** the range is read hour by hour (the hours that hold rows, asked of
//!   the server first), each hour in pages of `page_rows` ordered by `(timestamp, ward_id)`,
//!   the table's sort key after its dataset: a page starts after the last key of the one
//!   before, so no page is read twice and a failed query resumes exactly where it stopped.
//!   Rows a replay stored twice (same `ward_id`, not yet merged away) are adjacent and read
//!   once.
//! - **Workers:** rows are dealt into 64 fixed shards by `ward_id % 64`, the shards round the
//!   workers; every worker reads the same hour at a time, so watermarks and correlation windows
//!   see the events in about the order they happened.
//! - **Positions:** a checkpoint holds, per shard, the last key read, so a stopped hunt or
//!   backfill resumes on any worker count.
//! - **Projection:** only the columns of `fields` (plus time, id and provenance) are selected.
//!
//! What the table cannot give back: the raw payload, the separate values of a multi-valued
//! field (only the first is stored), empty strings of core fields (stored as absent), and,
//! from ClickHouse 18.16's `DateTime`, the milliseconds of event times.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clickhouse_types::data_types::DataTypeNode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use ward_engine::batch::{EventBatch, Key, Slot, Value, BATCH_BYTES};
use ward_engine::component::{Source, SourceFactory, SourcePoll, StreamKind, WorkerContext};
use ward_engine::fields::{ids, FieldId, FieldType};
use ward_engine::quarantine::{QuarantineRecord, Reason};
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};

use super::history::{ext_wanted, wanted, TimeRange, Wanted};
use crate::sinks::clickhouse::{default_database, default_url};
use crate::sinks::clickhouse_rowbinary::parse_type;

/// Read events back from the events table the `clickhouse` sink fills.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseSourceConfig {
    /// HTTP endpoint of the server.
    #[serde(default = "default_url")]
    pub url: String,
    #[serde(default = "default_database")]
    pub database: String,
    /// The events table (as `pipelines/clickhouse/schema.sql` creates it).
    #[serde(default = "default_table")]
    pub table: String,
    #[serde(default)]
    pub user: Option<String>,
    /// Name of the environment variable that holds the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Only events at or after this time: RFC 3339 or a date (midnight UTC).
    #[serde(default)]
    pub from: Option<String>,
    /// Only events before this time (same forms).
    #[serde(default)]
    pub to: Option<String>,
    /// Only these fields (event time, `event.id` and provenance always come too); names that
    /// are no core field come from the extension map. Default: every column.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// Rows per query.
    #[serde(default = "default_page_rows")]
    pub page_rows: usize,
    /// Rows longer than this (as the server sends them) are quarantined as `oversize`.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
}

fn default_table() -> String {
    "events".into()
}
fn default_page_rows() -> usize {
    100_000
}
fn default_max_record_bytes() -> usize {
    4 << 20
}

/// Rows are dealt into this many shards by `ward_id`; positions are kept per shard, so they
/// mean the same on any worker count.
const SHARDS: u64 = 64;
const HOUR_MS: i64 = 3_600_000;

impl ComponentConfig for ClickHouseSourceConfig {
    const TYPE: &'static str = "clickhouse";
    const SECTION: Section = Section::Source;
    const DESCRIPTION: &'static str =
        "Read events back from the clickhouse sink's events table (time range, projection, paged by the sort key)";
    const ACCEPTS: &'static [StreamKind] = &[];
    const OUTPUT: Option<StreamKind> = Some(StreamKind::Events);

    fn build(self, _ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        anyhow::ensure!(
            self.url.starts_with("http://"),
            "url: only http:// endpoints are supported (got {:?})",
            self.url
        );
        ward_engine::limits::check_record_bytes(self.max_record_bytes)?;
        ward_engine::limits::check_range("page_rows", self.page_rows as u64, 1, 10_000_000)?;
        let range = TimeRange::of(self.from.as_deref(), self.to.as_deref())?;
        let password = match &self.password_env {
            Some(var) => Some(
                std::env::var(var)
                    .map_err(|_| anyhow::anyhow!("password_env: environment variable {var} is not set"))?,
            ),
            None => None,
        };
        let wanted = self.fields.as_ref().map(|f| wanted(f));
        Ok(Built::Source(Arc::new(ClickHouseFactory { config: self, password, range, wanted, plan: OnceLock::new() })))
    }
}

struct ClickHouseFactory {
    config: ClickHouseSourceConfig,
    password: Option<String>,
    range: TimeRange,
    wanted: Option<Wanted>,
    /// The table's columns and hours, asked once by the first worker.
    plan: OnceLock<Result<Arc<Plan>, String>>,
}

/// How one selected column becomes event fields.
#[derive(Clone, Debug)]
enum Column {
    Id,
    Time,
    Source,
    Partition,
    Offset,
    Core(FieldId, Kind),
    /// The extension map, as a JSON object.
    Ext,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Text; `nullable`: an empty string is a value (else it means absent).
    Str {
        nullable: bool,
    },
    Ip,
    Int,
    Float,
    Bool,
    /// Milliseconds (`DateTime64`) or seconds (`DateTime`) since the epoch.
    Time {
        seconds: bool,
    },
}

/// What a run reads: the select list, and the hours of the range that hold rows.
struct Plan {
    table: String,
    columns: Vec<Column>,
    select: String,
    /// Event time in ms, as SQL: the read order is by it, then `ward_id`.
    time: String,
    /// `timestamp` is a `DateTime` (seconds), not a `DateTime64(3)`.
    seconds: bool,
    /// (hour index since the epoch, rows), oldest first.
    hours: Vec<(i64, u64)>,
}

fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

fn unwrap_type(ty: &DataTypeNode) -> (&DataTypeNode, bool) {
    match ty {
        DataTypeNode::Nullable(t) => (unwrap_type(t).0, true),
        DataTypeNode::LowCardinality(t) => unwrap_type(t),
        t => (t, false),
    }
}

impl Plan {
    /// The plan for `table` (shown as it is named in SQL) described as `described`, without
    /// its hours yet.
    fn new(table: &str, described: &[(String, String)], wanted: Option<&Wanted>) -> anyhow::Result<Plan> {
        let (columns, select, seconds) = Plan::columns(table, described, wanted)?;
        Ok(Plan {
            table: table.to_string(),
            columns,
            time: select[1].clone(),
            select: select.join(", "),
            seconds,
            hours: Vec::new(),
        })
    }

    /// The columns to select from `(name, type)` as `system.columns` lists them.
    fn columns(
        table: &str,
        described: &[(String, String)],
        wanted: Option<&Wanted>,
    ) -> anyhow::Result<(Vec<Column>, Vec<String>, bool)> {
        // Returns the columns, their select expressions (event time second, in ms), and
        // whether `timestamp` has whole seconds.
        let core: BTreeMap<String, FieldId> =
            FieldId::all().map(|f| (f.name().trim_start_matches('@').replace('.', "_"), f)).collect();
        let types: HashMap<&str, DataTypeNode> =
            described.iter().filter_map(|(n, t)| Some((n.as_str(), parse_type(t).ok()?))).collect();
        let seconds = match types.get("timestamp").map(unwrap_type) {
            Some((DataTypeNode::DateTime64(..), _)) => false,
            Some((DataTypeNode::DateTime(_), _)) => true,
            _ => anyhow::bail!(
                "{table} has no `timestamp` DateTime column: not an events table of Ward's clickhouse sink"
            ),
        };
        let time_expr = |c: &str, seconds: bool| {
            if seconds {
                format!("toUInt32({c})")
            } else {
                format!("toUnixTimestamp64Milli({c})")
            }
        };
        let mut columns = vec![Column::Id, Column::Time, Column::Source, Column::Partition, Column::Offset];
        let mut select = vec!["ward_id".to_string(), event_time_expr(seconds, types.contains_key("timestamp_ms"))];
        for name in ["ward_source", "ward_partition", "ward_offset"] {
            anyhow::ensure!(
                types.contains_key(name) && types.contains_key("ward_id"),
                "{table} has no `{name}` or `ward_id` column: not an events table of Ward's clickhouse sink"
            );
            select.push(name.to_string());
        }
        for (name, _) in described {
            let Some(ty) = types.get(name.as_str()) else { continue };
            let (inner, nullable) = unwrap_type(ty);
            let q = quote_ident(name);
            if name == "ext" && wanted.is_none_or(|w| !w.ext.is_empty() || !w.ext_patterns.is_empty()) {
                match inner {
                    DataTypeNode::Map(_) => select.push(format!("toJSONString({q})")),
                    DataTypeNode::String => select.push(q),
                    _ => continue,
                }
                columns.push(Column::Ext);
                continue;
            }
            let Some(&id) = core.get(name.as_str()) else { continue };
            if id == ids::TIMESTAMP || wanted.is_some_and(|w| !w.core.contains(&id)) {
                continue;
            }
            let kind = match (id.field_type(), inner) {
                (FieldType::Timestamp, DataTypeNode::DateTime64(..)) => Kind::Time { seconds: false },
                (FieldType::Timestamp, DataTypeNode::DateTime(_)) => Kind::Time { seconds: true },
                (FieldType::Ip, DataTypeNode::IPv6) => {
                    select.push(format!("IPv6NumToString({q})"));
                    columns.push(Column::Core(id, Kind::Ip));
                    continue;
                }
                (FieldType::Ip, DataTypeNode::IPv4) => {
                    select.push(format!("IPv4NumToString({q})"));
                    columns.push(Column::Core(id, Kind::Ip));
                    continue;
                }
                (FieldType::Ip, DataTypeNode::String) => Kind::Ip,
                (FieldType::Str, DataTypeNode::String) => Kind::Str { nullable },
                (FieldType::Int, _) => Kind::Int,
                (FieldType::Float, _) => Kind::Float,
                (FieldType::Bool, _) => Kind::Bool,
                _ => anyhow::bail!("column {name} of {table}: type {ty} is not what Ward's clickhouse sink writes"),
            };
            select.push(match kind {
                Kind::Time { seconds } => time_expr(&q, seconds),
                _ => q,
            });
            columns.push(Column::Core(id, kind));
        }
        Ok((columns, select, seconds))
    }
}

impl ClickHouseFactory {
    fn client(&self) -> clickhouse::Client {
        let mut c = clickhouse::Client::default()
            .with_url(&self.config.url)
            .with_database(&self.config.database)
            .with_validation(false);
        if let Some(u) = &self.config.user {
            c = c.with_user(u);
        }
        if let Some(p) = &self.password {
            c = c.with_password(p);
        }
        c
    }

    fn table(&self) -> String {
        format!("{}.{}", quote_ident(&self.config.database), quote_ident(&self.config.table))
    }

    fn plan(&self, rt: &tokio::runtime::Runtime) -> anyhow::Result<Arc<Plan>> {
        let client = self.client();
        let (db, table) = (&self.config.database, &self.config.table);
        let shown = format!("{db}.{table} on {}", self.config.url);
        let described: Vec<(String, String)> = rt
            .block_on(
                client
                    .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
                    .bind(db.as_str())
                    .bind(table.as_str())
                    .fetch_all::<(String, String)>(),
            )
            .map_err(|e| anyhow::anyhow!("reading the columns of {shown}: {e}"))?;
        anyhow::ensure!(!described.is_empty(), "table {shown} does not exist");
        let mut plan =
            Plan::new(&self.table(), &described, self.wanted.as_ref()).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
        let sql = hours_query(&plan.table, self.range, plan.seconds);
        let hours: Vec<(i64, u64)> = rt
            .block_on(client.query(&sql).fetch_all::<(i64, u64)>())
            .map_err(|e| anyhow::anyhow!("counting the events of {shown} by hour: {e}"))?;
        plan.hours = hours;
        Ok(Arc::new(plan))
    }
}

/// The hours of the range that hold rows, with their rows.
fn hours_query(table: &str, range: TimeRange, seconds: bool) -> String {
    let hour = if seconds {
        "intDiv(toUInt32(timestamp), 3600)"
    } else {
        "intDiv(toUnixTimestamp64Milli(timestamp), 3600000)"
    };
    format!(
        "SELECT toInt64({hour}) AS h, count() FROM {table} WHERE {} GROUP BY h ORDER BY h",
        range_condition(range, seconds)
    )
}

/// The SQL a run starts with on a table that `system.columns` describes as `described`: the
/// hours query, then the first page of `hour` for shards 0 and 1, the second read from after
/// the key `after` — for checking them against a server's dialect (tests).
pub fn first_queries(
    table: &str,
    described: &[(String, String)],
    hour: i64,
    after: (i64, u64),
) -> anyhow::Result<[String; 2]> {
    let plan = Plan::new(table, described, None)?;
    let seconds = plan.seconds;
    let range = TimeRange { from: hour * HOUR_MS, to: (hour + 1) * HOUR_MS };
    let page = page_query(&plan, range, &[(0, START), (1, after)], 1000, hour)
        .ok_or_else(|| anyhow::anyhow!("nothing to read in hour {hour}"))?;
    Ok([hours_query(table, range, seconds), page])
}

/// The query for the next page of `hour` for shards at `positions` (the last key read of
/// each), or `None` when they have read it all.
fn page_query(
    plan: &Plan,
    range: TimeRange,
    positions: &[(u64, RowKey)],
    page_rows: usize,
    hour: i64,
) -> Option<String> {
    let (start, end) = (hour * HOUR_MS, (hour + 1) * HOUR_MS);
    let seconds = plan.seconds;
    let done: RowKey = (end - 1, u64::MAX);
    let mut groups: BTreeMap<RowKey, Vec<u64>> = BTreeMap::new();
    for (shard, at) in positions {
        if *at < done {
            groups.entry(*at).or_default().push(*shard);
        }
    }
    if groups.is_empty() {
        return None;
    }
    let ts = |ms: i64| time_literal(ms, seconds);
    let time = &plan.time;
    let shards: Vec<String> = groups
        .iter()
        .map(|((t, id), shards)| {
            let list: Vec<String> = shards.iter().map(u64::to_string).collect();
            let mut c = format!("ward_id % {SHARDS} IN ({})", list.join(", "));
            if (*t, *id) != START && *t >= start {
                c.push_str(&format!(" AND ({time} > {t} OR ({time} = {t} AND ward_id > {id}))"));
            }
            format!("({c})")
        })
        .collect();
    Some(format!(
        "SELECT {} FROM {} WHERE timestamp >= {} AND timestamp < {} AND {} AND ({}) ORDER BY {time}, ward_id LIMIT {page_rows}",
        plan.select,
        plan.table,
        ts(start),
        ts(end),
        range_condition(range, seconds),
        shards.join(" OR "),
    ))
}

/// Event time in milliseconds: `timestamp`'s, with `timestamp_ms` beside a whole-second one.
fn event_time_expr(seconds: bool, millis: bool) -> String {
    match (seconds, millis) {
        (false, _) => "toUnixTimestamp64Milli(timestamp)".into(),
        (true, false) => "toUInt64(toUInt32(timestamp)) * 1000".into(),
        (true, true) => "toUInt64(toUInt32(timestamp)) * 1000 + timestamp_ms".into(),
    }
}

/// A time literal comparable with `timestamp`.
fn time_literal(ms: i64, seconds: bool) -> String {
    if seconds {
        // The second holding `ms`: rows are then filtered by their exact event time.
        format!("toDateTime({})", ms.div_euclid(1000))
    } else {
        format!("fromUnixTimestamp64Milli(toInt64({ms}))")
    }
}

fn range_condition(range: TimeRange, seconds: bool) -> String {
    let mut c = vec!["1".to_string()];
    if range.from != i64::MIN {
        c.push(format!("timestamp >= {}", time_literal(range.from.max(0), seconds)));
    }
    if range.to != i64::MAX {
        // `to` within a second: that second still holds events of the range.
        let to = if seconds { range.to.max(0) + 999 } else { range.to.max(0) };
        c.push(format!("timestamp < {}", time_literal(to, seconds)));
    }
    c.join(" AND ")
}

impl SourceFactory for ClickHouseFactory {
    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Source>> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let plan = self
            .plan
            .get_or_init(|| self.plan(&rt).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| anyhow::anyhow!(e))?;
        let shards: Vec<u64> = (0..SHARDS).filter(|s| *s as usize % ctx.workers == ctx.worker_index).collect();
        // For the progress line: this worker's share of the rows.
        let rows: u64 = plan.hours.iter().map(|h| h.1).sum();
        ctx.metrics.records_expected.add((rows * shards.len() as u64 / SHARDS) as i64);
        let mut source = ClickHouseSource::new(ctx.component_id.clone(), self.client(), rt, plan, self.range, &shards);
        source.page_rows = self.config.page_rows;
        source.max_record_bytes = self.config.max_record_bytes;
        source.wanted = self.wanted.clone();
        Ok(Box::new(source))
    }
}

/// A row's place in the read order: (event time in ms, `ward_id`).
type RowKey = (i64, u64);
/// Nothing read yet.
const START: RowKey = (i64::MIN, 0);

/// One query's rows as they arrive.
struct Page {
    cursor: clickhouse::query::BytesCursor,
    hour: i64,
    /// The part of the last chunk not yet split into lines.
    chunk: bytes::Bytes,
    /// The line being assembled across chunks (at most `max_record_bytes` of it).
    line: Vec<u8>,
    /// The current line is longer than `max_record_bytes`: how long.
    overflow: Option<usize>,
    rows: usize,
    /// The last row read (every shard of the query has been read up to it).
    last: Option<RowKey>,
}

pub struct ClickHouseSource {
    component: Arc<str>,
    client: clickhouse::Client,
    rt: tokio::runtime::Runtime,
    plan: Arc<Plan>,
    hours: VecDeque<i64>,
    range: TimeRange,
    /// This worker's shards, each with the last key read of it.
    positions: Vec<(u64, RowKey)>,
    page: Option<Page>,
    page_rows: usize,
    max_record_bytes: usize,
    wanted: Option<Wanted>,
    origins: HashMap<(String, String), (Arc<str>, Arc<str>)>,
    last_origin: Option<(Arc<str>, Arc<str>)>,
    /// Reused buffers: the current row's fields' places, its unescaped text.
    ranges: Vec<(usize, usize)>,
    text: String,
    source_text: String,
    partition_text: String,
    /// Consecutive failed queries.
    failures: u32,
}

/// A shard's position in a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct ShardPosition {
    shard: u64,
    time: i64,
    id: u64,
}

impl ClickHouseSource {
    /// An instance reading `shards` of `plan`'s hours from the start, every column, in pages
    /// of the default size.
    fn new(
        component: Arc<str>,
        client: clickhouse::Client,
        rt: tokio::runtime::Runtime,
        plan: Arc<Plan>,
        range: TimeRange,
        shards: &[u64],
    ) -> ClickHouseSource {
        ClickHouseSource {
            component,
            client,
            rt,
            hours: plan.hours.iter().map(|h| h.0).collect(),
            plan,
            range,
            positions: shards.iter().map(|s| (*s, START)).collect(),
            page: None,
            page_rows: default_page_rows(),
            max_record_bytes: default_max_record_bytes(),
            wanted: None,
            origins: HashMap::new(),
            last_origin: None,
            ranges: Vec::new(),
            text: String::new(),
            source_text: String::new(),
            partition_text: String::new(),
            failures: 0,
        }
    }

    /// Where shard `s` stands, counting the page being read.
    fn position(&self, s: usize) -> RowKey {
        let (_, at) = self.positions[s];
        match self.page.as_ref().and_then(|p| p.last) {
            Some(last) => at.max(last),
            None => at,
        }
    }

    /// The query for the next page of `hour`, or `None` when this worker has read it all.
    fn query(&self, hour: i64) -> Option<String> {
        let positions: Vec<(u64, RowKey)> =
            (0..self.positions.len()).map(|i| (self.positions[i].0, self.position(i))).collect();
        page_query(&self.plan, self.range, &positions, self.page_rows, hour)
    }

    /// Starts the next page: of the current hour, else of the next hour this worker has rows
    /// in. `false` when everything is read.
    fn next_page(&mut self) -> anyhow::Result<bool> {
        while let Some(&hour) = self.hours.front() {
            let Some(sql) = self.query(hour) else {
                self.hours.pop_front();
                continue;
            };
            let cursor = self
                .client
                .query(&sql)
                .fetch_bytes("TabSeparated")
                .map_err(|e| anyhow::anyhow!("{}: {e}", self.plan.table))?;
            self.page = Some(Page {
                cursor,
                hour,
                chunk: bytes::Bytes::new(),
                line: Vec::new(),
                overflow: None,
                rows: 0,
                last: None,
            });
            return Ok(true);
        }
        Ok(false)
    }

    /// The page ended: its rows count as read; a short page ends its hour.
    fn end_page(&mut self) {
        let Some(page) = self.page.take() else { return };
        let end = (page.hour + 1) * HOUR_MS;
        let upto = if page.rows < self.page_rows { Some((end - 1, u64::MAX)) } else { page.last };
        if let Some(upto) = upto {
            for (_, at) in &mut self.positions {
                *at = (*at).max(upto);
            }
        }
        if page.rows < self.page_rows {
            self.hours.retain(|h| *h != page.hour);
        }
    }

    /// The next complete line of the page (`Ok(None)` at its end). An oversize line comes
    /// back cut to `max_record_bytes`, with its full length.
    fn next_line(&mut self) -> anyhow::Result<Option<Option<usize>>> {
        let max = self.max_record_bytes;
        let page = self.page.as_mut().expect("a page is open");
        page.line.clear();
        page.overflow = None;
        loop {
            if page.chunk.is_empty() {
                match self.rt.block_on(page.cursor.next()) {
                    Ok(Some(c)) => page.chunk = c,
                    Ok(None) if page.line.is_empty() && page.overflow.is_none() => return Ok(None),
                    Ok(None) => anyhow::bail!("the server's answer ends in the middle of a row"),
                    Err(e) => return Err(e.into()),
                }
                continue;
            }
            let (part, complete) = match memchr::memchr(b'\n', &page.chunk) {
                Some(i) => (page.chunk.split_to(i + 1), true),
                None => (page.chunk.split_to(page.chunk.len()), false),
            };
            let part = if complete { &part[..part.len() - 1] } else { &part[..] };
            let room = max.saturating_sub(page.line.len());
            if part.len() > room || page.overflow.is_some() {
                let so_far = page.overflow.unwrap_or(page.line.len());
                page.overflow = Some(so_far + part.len());
            }
            page.line.extend_from_slice(&part[..part.len().min(room)]);
            if complete {
                return Ok(Some(page.overflow));
            }
        }
    }

    fn origin(&mut self, source: &str, partition: &str) -> (Arc<str>, Arc<str>) {
        // Borrowed lookups would need a raw-entry API; origins are few and repeat.
        if let Some(o) = self.origins.get(&(source.to_string(), partition.to_string())) {
            return o.clone();
        }
        let o: (Arc<str>, Arc<str>) = (source.into(), partition.into());
        self.origins.insert((source.to_string(), partition.to_string()), o.clone());
        o
    }
}

/// ClickHouse's TabSeparated escaping undone: `\N` is NULL (`None`).
fn unescape<'a>(field: &'a [u8], out: &'a mut String) -> Option<&'a str> {
    if field == b"\\N" {
        return None;
    }
    out.clear();
    if !field.contains(&b'\\') {
        out.push_str(&String::from_utf8_lossy(field));
        return Some(out.as_str());
    }
    let mut bytes = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 1 < field.len() {
            bytes.push(match field[i + 1] {
                b'n' => b'\n',
                b't' => b'\t',
                b'r' => b'\r',
                b'0' => 0,
                b'b' => 8,
                b'f' => 12,
                other => other,
            });
            i += 2;
        } else {
            bytes.push(field[i]);
            i += 1;
        }
    }
    out.push_str(&String::from_utf8_lossy(&bytes));
    Some(out.as_str())
}

/// A row that cannot be read: why, its provenance, and its key when it was read.
struct BadRow {
    why: String,
    source: String,
    partition: String,
    offset: u64,
    key: Option<RowKey>,
}

impl ClickHouseSource {
    /// Decodes one TabSeparated row into `batch`; `Ok(key)` of the row, or why it is bad
    /// (with the provenance read so far).
    fn push_row(
        &mut self,
        line: &[u8],
        batch: &mut EventBatch,
        last: Option<RowKey>,
    ) -> Result<Option<RowKey>, BadRow> {
        let plan = self.plan.clone();
        // The fields' places in the line (reused: no allocation per row).
        self.ranges.clear();
        let mut start = 0;
        for (i, b) in line.iter().enumerate() {
            if *b == b'\t' {
                self.ranges.push((start, i));
                start = i + 1;
            }
        }
        self.ranges.push((start, line.len()));
        let field = |i: usize| self.ranges.get(i).map_or(&b"\\N"[..], |&(a, b)| &line[a..b]);
        let (raw_id, raw_time, raw_offset) = (field(0), field(1), field(4));
        let mut source = std::mem::take(&mut self.source_text);
        let mut partition = std::mem::take(&mut self.partition_text);
        let source_ok = unescape(field(2), &mut source).is_some();
        let partition_ok = unescape(field(3), &mut partition).is_some();
        let result = self.push_fields(&plan, line, batch, last, (raw_id, raw_time, raw_offset), (&source, &partition));
        let result = result.map_err(|(why, key)| BadRow {
            why: if source_ok && partition_ok { why } else { format!("{why} (no provenance)") },
            source: source.clone(),
            partition: partition.clone(),
            offset: std::str::from_utf8(raw_offset).ok().and_then(|o| o.parse().ok()).unwrap_or(0),
            key,
        });
        (self.source_text, self.partition_text) = (source, partition);
        result
    }

    /// [`Self::push_row`] once the provenance is read.
    fn push_fields(
        &mut self,
        plan: &Plan,
        line: &[u8],
        batch: &mut EventBatch,
        last: Option<RowKey>,
        (raw_id, raw_time, raw_offset): (&[u8], &[u8], &[u8]),
        (source, partition): (&str, &str),
    ) -> Result<Option<RowKey>, (String, Option<RowKey>)> {
        let parse_u64 = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<u64>().ok();
        let parse_i64 = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<i64>().ok();
        let id = parse_u64(raw_id).ok_or_else(|| ("ward_id is not a number".to_string(), None))?;
        let time = parse_i64(raw_time).ok_or_else(|| ("timestamp is not a time".to_string(), None))?;
        let key = (time, id);
        if last == Some(key) {
            return Ok(None); // a replayed copy not yet merged away
        }
        if !self.range.contains(time) {
            return Ok(Some(key));
        }
        let offset = parse_u64(raw_offset).ok_or_else(|| ("ward_offset is not a number".to_string(), Some(key)))?;
        // Rows of one origin follow each other: no lookup for those.
        let (source, partition) = match &self.last_origin {
            Some((s, p)) if &**s == source && &**p == partition => (s.clone(), p.clone()),
            _ => {
                let o = self.origin(source, partition);
                self.last_origin = Some(o.clone());
                o
            }
        };
        let origin = batch.origin_index(&source, &partition);
        let mark = batch.heap().mark();
        let _ = batch.push_raw(origin, offset, b"");
        batch.push_slot(Slot { key: Key::Core(ids::TIMESTAMP), value: Value::Timestamp(time) });
        let bad = |what: &str, batch: &mut EventBatch| {
            batch.pop_row(mark);
            (what.to_string(), Some(key))
        };
        for (i, col) in plan.columns.iter().enumerate().skip(5) {
            let field = self.ranges.get(i).map_or(&b"\\N"[..], |&(a, b)| &line[a..b]);
            let Some(text) = unescape(field, &mut self.text) else { continue };
            let value = match col {
                Column::Core(id, kind) => {
                    let v = match kind {
                        Kind::Str { nullable } if text.is_empty() && !nullable => continue,
                        Kind::Str { .. } => Value::Str(batch.heap().push_str(text)),
                        Kind::Ip if text.is_empty() => continue,
                        Kind::Ip => match text.parse::<IpAddr>() {
                            Ok(ip) => Value::Ip(batch.heap().push_ip(ip.to_canonical())),
                            Err(_) => Value::Str(batch.heap().push_str(text)),
                        },
                        Kind::Int => match text.parse() {
                            Ok(i) => Value::Int(i),
                            Err(_) => return Err(bad(&format!("{} is not an integer", id.name()), batch)),
                        },
                        Kind::Float => match text.parse() {
                            Ok(f) => Value::Float(f),
                            Err(_) => return Err(bad(&format!("{} is not a number", id.name()), batch)),
                        },
                        Kind::Bool => Value::Bool(matches!(text, "1" | "true")),
                        Kind::Time { seconds } => match text.parse::<i64>() {
                            Ok(t) => Value::Timestamp(if *seconds { t.saturating_mul(1000) } else { t }),
                            Err(_) => return Err(bad(&format!("{} is not a time", id.name()), batch)),
                        },
                    };
                    Slot { key: Key::Core(*id), value: v }
                }
                Column::Ext => {
                    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(text) else {
                        if text.is_empty() {
                            continue;
                        }
                        return Err(bad("ext is not a JSON object", batch));
                    };
                    for (k, v) in map {
                        if !ext_wanted(self.wanted.as_ref(), &k) {
                            continue;
                        }
                        let key = Key::Ext(batch.heap().push_str(&k));
                        let value = match v {
                            serde_json::Value::Null => Value::Null,
                            serde_json::Value::Bool(b) => Value::Bool(b),
                            serde_json::Value::Number(n) => match n.as_i64() {
                                Some(i) => Value::Int(i),
                                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
                            },
                            serde_json::Value::String(s) => Value::Str(batch.heap().push_str(&s)),
                            other => Value::Str(batch.heap().push_str(&other.to_string())),
                        };
                        batch.push_slot(Slot { key, value });
                    }
                    continue;
                }
                Column::Id | Column::Time | Column::Source | Column::Partition | Column::Offset => continue,
            };
            batch.push_slot(value);
        }
        Ok(Some(key))
    }
}

impl Source for ClickHouseSource {
    fn poll(&mut self, max_rows: usize) -> anyhow::Result<SourcePoll> {
        let mut batch = EventBatch::with_capacity(max_rows.min(8192), 0);
        let mut quarantine = Vec::new();
        while batch.len() < max_rows && batch.heap_bytes() < BATCH_BYTES {
            if self.page.is_none() && !self.next_page()? {
                break;
            }
            let line = match self.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => {
                    self.failures = 0;
                    self.end_page();
                    continue;
                }
                Err(e) => {
                    // The next query starts after the last row read: nothing twice, nothing lost.
                    self.failures += 1;
                    anyhow::ensure!(self.failures <= 10, "{}: {e:#} (10 attempts)", self.plan.table);
                    tracing::warn!("{}: {e:#}; reading again from the last row in a moment", self.plan.table);
                    let page = self.page.take().expect("a page is open");
                    if let Some(last) = page.last {
                        for (_, at) in &mut self.positions {
                            *at = (*at).max(last);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200 << self.failures.min(5)));
                    continue;
                }
            };
            let page = self.page.as_mut().expect("a page is open");
            page.rows += 1;
            let text = std::mem::take(&mut page.line);
            let last = page.last;
            let result = match line {
                Some(len) => {
                    // Provenance comes first in the row, so the cut line still has it.
                    let mut f = text.split(|b| *b == b'\t').skip(2);
                    let mut next = || String::from_utf8_lossy(f.next().unwrap_or_default()).into_owned();
                    let (source, partition, offset) = (next(), next(), next());
                    Err(BadRow {
                        why: format!("a row of {len} bytes (max_record_bytes {})", self.max_record_bytes),
                        source,
                        partition,
                        offset: offset.parse().unwrap_or(0),
                        key: None,
                    })
                }
                None => self.push_row(&text, &mut batch, last),
            };
            let page = self.page.as_mut().expect("a page is open");
            match result {
                Ok(key) => page.last = key.or(page.last),
                Err(bad) => {
                    let len = line.unwrap_or(text.len());
                    let reason = if line.is_some() { Reason::Oversize } else { Reason::InvalidValue };
                    // Past the bad row when its key is known (else the next good row moves past it).
                    page.last = bad.key.or(page.last);
                    quarantine.push(QuarantineRecord {
                        reason,
                        detail: format!("{} in {}", bad.why, self.plan.table),
                        component: self.component.clone(),
                        source: bad.source.into(),
                        partition: bad.partition.into(),
                        offset: bad.offset,
                        payload: text[..text.len().min(1024)].to_vec(),
                        payload_len: len,
                    });
                }
            }
            let page = self.page.as_mut().expect("a page is open");
            page.line = text;
        }
        match (batch.is_empty(), quarantine.is_empty()) {
            (true, true) if self.page.is_none() && self.hours.is_empty() => Ok(SourcePoll::Done),
            (true, true) => Ok(SourcePoll::Batch(batch)),
            (false, true) => Ok(SourcePoll::Batch(batch)),
            (true, false) => Ok(SourcePoll::Quarantine(quarantine)),
            (false, false) => Ok(SourcePoll::Both(batch, quarantine)),
        }
    }

    fn checkpoint(&self) -> anyhow::Result<Vec<u8>> {
        let positions: Vec<ShardPosition> = (0..self.positions.len())
            .map(|i| {
                let (time, id) = self.position(i);
                ShardPosition { shard: self.positions[i].0, time, id }
            })
            .collect();
        ward_engine::keyed::encode(&positions)
    }

    fn restore(&mut self, parts: &[&[u8]]) -> anyhow::Result<()> {
        let mut at: HashMap<u64, RowKey> = HashMap::new();
        for part in parts.iter().filter(|p| !p.is_empty()) {
            for p in ward_engine::keyed::decode::<Vec<ShardPosition>>(part)? {
                let e = at.entry(p.shard).or_insert(START);
                *e = (*e).max((p.time, p.id));
            }
        }
        for (shard, key) in &mut self.positions {
            if let Some(k) = at.get(shard) {
                *key = *k;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn described() -> Vec<(String, String)> {
        [
            ("ward_id", "UInt64"),
            ("timestamp", "DateTime"),
            ("event_id", "String"),
            ("host_name", "String"),
            ("source_ip", "Nullable(String)"),
            ("source_port", "Nullable(Int64)"),
            ("event_created", "Nullable(DateTime)"),
            ("ward_source", "String"),
            ("ward_partition", "String"),
            ("ward_offset", "UInt64"),
            ("ext", "String"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    #[test]
    fn the_select_list_follows_the_table_and_the_projection() {
        let (columns, select, seconds) = Plan::columns("t", &described(), None).unwrap();
        assert!(seconds);
        assert_eq!(
            &select[..5],
            ["ward_id", "toUInt64(toUInt32(timestamp)) * 1000", "ward_source", "ward_partition", "ward_offset"]
        );
        assert!(select.contains(&"toUInt32(`event_created`)".to_string()), "{select:?}");
        assert_eq!(columns.len(), select.len());
        let w = wanted(&["host.name".into()]);
        let (_, select, _) = Plan::columns("t", &described(), Some(&w)).unwrap();
        assert_eq!(&select[5..], ["`event_id`", "`host_name`"], "no ext, no other field");
        let bad = vec![("timestamp".to_string(), "String".to_string())];
        assert!(Plan::columns("t", &bad, None).unwrap_err().to_string().contains("not an events table"));
    }

    fn source_for(described: &[(String, String)]) -> ClickHouseSource {
        let plan = Arc::new(Plan::new("t", described, None).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        ClickHouseSource::new("ch".into(), clickhouse::Client::default(), rt, plan, TimeRange::ALL, &[0])
    }

    #[test]
    fn rows_become_events_and_a_bad_value_quarantines_its_row_alone_with_its_key() {
        // ward_id, time (ms), source, partition, offset, then the table's order: event_id,
        // host_name, source_ip, source_port, event_created, ext.
        let mut s = source_for(&described());
        let mut b = EventBatch::new();
        let good = b"7\t1000\tkafka\tevents/0\t42\te-1\tweb\\t1\t10.0.0.1\t443\t2\t{\"team\":\"red\",\"n\":3}";
        assert_eq!(s.push_row(good, &mut b, None).ok(), Some(Some((1000, 7))));
        assert_eq!(b.len(), 1);
        let p = b.provenance(0);
        assert_eq!((&*p.source, &*p.partition, p.offset), ("kafka", "events/0", 42));
        let text = |name: &str| match b.get_by_name(0, name) {
            Some(Value::Str(r)) => b.bytes().str(r).to_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(text("host.name"), "web\t1");
        match b.get_by_name(0, "source.ip") {
            Some(Value::Ip(r)) => assert_eq!(b.bytes().ip(r), Some("10.0.0.1".parse().unwrap())),
            other => panic!("source.ip: {other:?}"),
        }
        assert_eq!(b.get_by_name(0, "source.port"), Some(Value::Int(443)));
        assert_eq!(b.get_by_name(0, "event.created"), Some(Value::Timestamp(2000)));
        assert_eq!(b.get_by_name(0, "n"), Some(Value::Int(3)));
        assert_eq!(text("team"), "red");
        // The same key again: a replayed copy, skipped.
        assert_eq!(s.push_row(good, &mut b, Some((1000, 7))).ok(), Some(None));
        // A port that is no number: the row alone is quarantined, with its provenance and key.
        let bad = b"8\t1001\tkafka\tevents/0\t43\te-2\tweb\t\\N\tx\t\\N\t{}";
        let Err(e) = s.push_row(bad, &mut b, None) else { panic!("a bad row") };
        assert_eq!(
            (e.source.as_str(), e.partition.as_str(), e.offset, e.key),
            ("kafka", "events/0", 43, Some((1001, 8)))
        );
        assert!(e.why.contains("source.port is not an integer"), "{}", e.why);
        assert_eq!(b.len(), 1, "nothing of the bad row stays");
        assert!(b.validate().is_ok());
    }

    #[test]
    fn tab_separated_escapes_are_undone() {
        let mut s = String::new();
        assert_eq!(unescape(b"a\\tb\\\\c\\nd\\'", &mut s), Some("a\tb\\c\nd'"));
        assert_eq!(unescape(b"\\N", &mut s), None);
        assert_eq!(unescape(b"", &mut s), Some(""));
    }

    #[test]
    fn time_literals_round_up_to_whole_seconds_for_datetime() {
        assert_eq!(time_literal(1_000, true), "toDateTime(1)");
        assert_eq!(time_literal(1_999, true), "toDateTime(1)");
        assert_eq!(time_literal(1_001, false), "fromUnixTimestamp64Milli(toInt64(1001))");
        let r = TimeRange { from: 5_500, to: 7_001 };
        assert_eq!(range_condition(r, true), "1 AND timestamp >= toDateTime(5) AND timestamp < toDateTime(8)");
    }
}
