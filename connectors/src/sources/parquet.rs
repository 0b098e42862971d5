//! The `parquet` source: reads back the event files the `parquet` sink wrote (a directory or an
//! object-store location), as normalized events, for retro-hunts and backfills.
//!
//! - **Time range:** `from`/`to` on event time prune whole `date=/hour=` partitions by their
//!   names and row groups by their `@timestamp` statistics; rows outside the range are skipped.
//! - **Projection:** only the columns of `fields` (plus event time, id and provenance) are
//!   decoded.
//! - **Order:** partitions are read oldest first; the files of one partition are spread over the
//!   workers, and each worker merges its files of a partition by event time, so watermarks and
//!   correlation windows see the events in about the order they happened.
//! - **Provenance:** every event keeps the source, partition and offset it had when the live
//!   pipeline read it (`ward.source`, `ward.partition`, `ward.offset`), so alerts raised over
//!   history carry the same origins and ids as live ones.
//! - **Positions:** a checkpoint holds, per file, the rows consumed (or that it was read to the
//!   end), so a stopped hunt or backfill resumes, on any worker count.
//!
//! What the sink's columns cannot give back: the raw payload (events come back without it),
//! the types of extension fields (their text is read back as strings), and the separate values
//! of a multi-valued core field (stored comma-joined).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMillisecondType, UInt64Type};
use arrow_array::{Array, BooleanArray, Float64Array, Int64Array, MapArray, RecordBatch, StringArray};
use arrow_array::{PrimitiveArray, UInt64Array};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use parquet::file::statistics::Statistics;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use ward_engine::batch::{EventBatch, Key, Slot, Value, BATCH_BYTES};
use ward_engine::component::{Source, SourceFactory, SourcePoll, StreamKind, WorkerContext};
use ward_engine::fields::{ids, FieldId, FieldType};
use ward_engine::quarantine::{QuarantineRecord, Reason};
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};
use ward_engine::storage::Store;

pub use super::history::parse_time;
use super::history::{ext_wanted, wanted, TimeRange, Wanted, PROVENANCE};

/// Read events back from the Parquet files the `parquet` sink wrote.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParquetSourceConfig {
    /// The sink's directory (relative to the spec) or object-store location
    /// (`s3://bucket/events`, reached as `settings.storage` says).
    pub path: String,
    /// Only events at or after this time: RFC 3339 (`2026-12-01T00:00:00Z`) or a date
    /// (`2026-12-01`, midnight UTC).
    #[serde(default)]
    pub from: Option<String>,
    /// Only events before this time (same forms).
    #[serde(default)]
    pub to: Option<String>,
    /// Only these fields (event time, `event.id` and provenance always come too); names that
    /// are no core field come from the extension map. Default: every column.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// Events larger than this (the text of their fields) are quarantined as `oversize`.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
}

fn default_max_record_bytes() -> usize {
    4 << 20
}

impl ComponentConfig for ParquetSourceConfig {
    const TYPE: &'static str = "parquet";
    const SECTION: Section = Section::Source;
    const DESCRIPTION: &'static str =
        "Read events back from the parquet sink's files (time range, projection, event-time order per partition)";
    const ACCEPTS: &'static [StreamKind] = &[];
    const OUTPUT: Option<StreamKind> = Some(StreamKind::Events);

    fn build(self, ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        ward_engine::limits::check_record_bytes(self.max_record_bytes)?;
        let range = TimeRange::of(self.from.as_deref(), self.to.as_deref())?;
        let store = ward_engine::storage::open(&self.path, ctx.resources.base(), ctx.storage, None, ctx.component_id)?;
        if let Some(dir) = store.local_root() {
            ctx.reads(dir);
        }
        let files = event_files(store.as_ref(), range)?;
        if files.is_empty() {
            let within = if range.bounded() { " in the time range" } else { "" };
            anyhow::bail!("no event files (`*.parquet` written by the parquet sink){within} in {}", store.location());
        }
        let fields = self.fields.as_ref().map(|f| Arc::new(wanted(f)));
        Ok(Built::Source(Arc::new(ParquetFactory {
            store,
            files: Arc::new(files),
            range,
            fields,
            max_record_bytes: self.max_record_bytes,
        })))
    }
}

/// One event file: its key in the store and the partition it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFile {
    pub key: String,
    /// The partition directory (`date=2026-12-01/hour=10`; `""` when not partitioned).
    pub partition: String,
    /// The event times the partition holds, `[start, end)` (unbounded when unknown).
    pub start: i64,
    pub end: i64,
}

/// The visible event files of a store whose partition can hold events of `range`, oldest
/// partition first (files without a time, `date=unknown`, first), by key within one.
pub fn event_files(store: &dyn Store, range: TimeRange) -> anyhow::Result<Vec<EventFile>> {
    let mut files = Vec::new();
    for e in store.list("")? {
        let hidden = e.key.split('/').any(|s| s.starts_with('.'));
        if hidden || !e.key.ends_with(".parquet") {
            continue;
        }
        let partition = e.key.rsplit_once('/').map_or("", |(dir, _)| dir).to_string();
        let (start, end) = partition_times(&partition);
        let unknown = partition.split('/').any(|s| s == "date=unknown");
        if unknown && range.bounded() {
            continue; // events without a time are in no range
        }
        if !unknown && !range.overlaps(start, end) {
            continue;
        }
        files.push(EventFile { key: e.key, partition, start: if unknown { i64::MIN } else { start }, end });
    }
    files.sort_by(|a, b| (a.start, &a.partition, &a.key).cmp(&(b.start, &b.partition, &b.key)));
    Ok(files)
}

/// The event times a `date=YYYY-MM-DD[/hour=HH]` directory holds (unbounded when it names none).
fn partition_times(dir: &str) -> (i64, i64) {
    let mut day = None;
    let mut hour = None;
    for s in dir.split('/') {
        if let Some(d) = s.strip_prefix("date=") {
            day = chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok();
        } else if let Some(h) = s.strip_prefix("hour=") {
            hour = h.parse::<i64>().ok().filter(|h| (0..24).contains(h));
        }
    }
    let Some(day) = day else { return (i64::MIN, i64::MAX) };
    let midnight = day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc().timestamp_millis();
    match hour {
        Some(h) => (midnight + h * 3_600_000, midnight + (h + 1) * 3_600_000),
        None => (midnight, midnight + 86_400_000),
    }
}

struct ParquetFactory {
    store: Arc<dyn Store>,
    files: Arc<Vec<EventFile>>,
    range: TimeRange,
    fields: Option<Arc<Wanted>>,
    max_record_bytes: usize,
}

impl SourceFactory for ParquetFactory {
    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Source>> {
        let source = self.source(ctx.component_id.clone(), ctx.worker_index, ctx.workers);
        // For the progress line's share and ETA: the rows of this worker's files in the range
        // (their footers; local files only, an object store would be read twice).
        ctx.metrics.records_expected.add(source.expected_rows() as i64);
        Ok(Box::new(source))
    }
}

impl ParquetFactory {
    /// Worker `worker`'s instance: the files of each partition are dealt round the workers,
    /// and a worker reads its partitions in time order.
    fn source(&self, component: Arc<str>, worker: usize, workers: usize) -> ParquetSource {
        let mut groups: VecDeque<Vec<String>> = VecDeque::new();
        let mut at = 0;
        for (i, f) in self.files.iter().enumerate() {
            if i == 0 || f.partition != self.files[i - 1].partition {
                at = 0;
                groups.push_back(Vec::new());
            }
            if at % workers == worker {
                groups.back_mut().expect("pushed above").push(f.key.clone());
            }
            at += 1;
        }
        groups.retain(|g| !g.is_empty());
        ParquetSource {
            component,
            store: self.store.clone(),
            groups,
            merge: None,
            done: Vec::new(),
            resume: HashMap::new(),
            range: self.range,
            wanted: self.fields.clone(),
            max_record_bytes: self.max_record_bytes,
            origins: Interner::default(),
        }
    }
}

/// The decoded columns of one record batch.
struct Columns {
    rows: usize,
    time: Option<PrimitiveArray<TimestampMillisecondType>>,
    core: Vec<(FieldId, CoreColumn)>,
    source: StringArray,
    partition: StringArray,
    offset: UInt64Array,
    ext: Option<MapArray>,
}

enum CoreColumn {
    Str(StringArray, bool),
    Int(Int64Array),
    Float(Float64Array),
    Bool(BooleanArray),
    Time(PrimitiveArray<TimestampMillisecondType>),
}

impl Columns {
    fn of(batch: &RecordBatch) -> anyhow::Result<Columns> {
        let schema = batch.schema();
        let col = |name: &str| schema.index_of(name).ok().map(|i| batch.column(i).clone());
        let text = |name: &str| -> anyhow::Result<StringArray> {
            let c =
                col(name).ok_or_else(|| anyhow::anyhow!("no `{name}` column: not a file of Ward's parquet sink"))?;
            Ok(c.as_string_opt::<i32>().ok_or_else(|| anyhow::anyhow!("`{name}` is not text"))?.clone())
        };
        let mut core = Vec::new();
        let mut time = None;
        for (i, field) in schema.fields().iter().enumerate() {
            let Some(id) = FieldId::lookup(field.name()) else { continue };
            let c = batch.column(i);
            if c.null_count() == c.len() && id != ids::TIMESTAMP {
                continue; // wide and sparse: most columns are empty in most batches
            }
            let column = match (id.field_type(), c.data_type()) {
                (FieldType::Str, DataType::Utf8) => CoreColumn::Str(c.as_string::<i32>().clone(), false),
                (FieldType::Ip, DataType::Utf8) => CoreColumn::Str(c.as_string::<i32>().clone(), true),
                (FieldType::Int, DataType::Int64) => CoreColumn::Int(c.as_primitive::<Int64Type>().clone()),
                (FieldType::Float, DataType::Float64) => CoreColumn::Float(c.as_primitive::<Float64Type>().clone()),
                (FieldType::Bool, DataType::Boolean) => CoreColumn::Bool(c.as_boolean().clone()),
                (FieldType::Timestamp, DataType::Timestamp(arrow_schema::TimeUnit::Millisecond, _)) => {
                    let t = c.as_primitive::<TimestampMillisecondType>().clone();
                    if id == ids::TIMESTAMP {
                        time = Some(t.clone());
                    }
                    CoreColumn::Time(t)
                }
                (_, other) => {
                    anyhow::bail!("column `{}` is {other}, not what Ward's parquet sink writes", field.name())
                }
            };
            core.push((id, column));
        }
        let offset = col("ward.offset").ok_or_else(|| anyhow::anyhow!("no `ward.offset` column"))?;
        let offset =
            offset.as_primitive_opt::<UInt64Type>().ok_or_else(|| anyhow::anyhow!("`ward.offset` is not u64"))?;
        Ok(Columns {
            rows: batch.num_rows(),
            time,
            core,
            source: text("ward.source")?,
            partition: text("ward.partition")?,
            offset: offset.clone(),
            ext: col("ext").and_then(|c| c.as_map_opt().cloned()),
        })
    }

    fn time(&self, row: usize) -> i64 {
        match &self.time {
            Some(t) if t.is_valid(row) => t.value(row),
            _ => i64::MIN,
        }
    }

    /// Appends row `row` to `batch` with origin `origin`; the text bytes of its fields (its
    /// size as a record).
    fn push(&self, row: usize, origin: u32, batch: &mut EventBatch, wanted: Option<&Wanted>) -> usize {
        let _ = batch.push_raw(origin, self.offset.value(row), b"");
        let mut size = self.source.value(row).len() + self.partition.value(row).len();
        for (id, c) in &self.core {
            let key = Key::Core(*id);
            let value = match c {
                _ if !c.is_valid(row) => continue,
                CoreColumn::Str(a, ip) => {
                    let s = a.value(row);
                    size += s.len();
                    match ip.then(|| s.parse::<IpAddr>().ok()).flatten() {
                        Some(addr) => Value::Ip(batch.heap().push_ip(addr)),
                        None => Value::Str(batch.heap().push_str(s)),
                    }
                }
                CoreColumn::Int(a) => Value::Int(a.value(row)),
                CoreColumn::Float(a) => Value::Float(a.value(row)),
                CoreColumn::Bool(a) => Value::Bool(a.value(row)),
                CoreColumn::Time(a) => Value::Timestamp(a.value(row)),
            };
            batch.push_slot(Slot { key, value });
        }
        if let Some(m) = &self.ext {
            let (keys, values) = (m.keys().as_string::<i32>(), m.values().as_string::<i32>());
            let offsets = m.value_offsets();
            for i in offsets[row] as usize..offsets[row + 1] as usize {
                let k = keys.value(i);
                if !ext_wanted(wanted, k) {
                    continue;
                }
                let key = Key::Ext(batch.heap().push_str(k));
                size += k.len();
                let value = if values.is_valid(i) {
                    size += values.value(i).len();
                    Value::Str(batch.heap().push_str(values.value(i)))
                } else {
                    Value::Null
                };
                batch.push_slot(Slot { key, value });
            }
        }
        size
    }
}

impl CoreColumn {
    fn is_valid(&self, row: usize) -> bool {
        match self {
            CoreColumn::Str(a, _) => a.is_valid(row),
            CoreColumn::Int(a) => a.is_valid(row),
            CoreColumn::Float(a) => a.is_valid(row),
            CoreColumn::Bool(a) => a.is_valid(row),
            CoreColumn::Time(a) => a.is_valid(row),
        }
    }
}

/// One file being read: its decoded batch and the row reached.
struct Cursor {
    key: String,
    reader: ParquetRecordBatchReader,
    columns: Columns,
    row: usize,
    /// Rows of the file consumed so far (emitted, quarantined or outside the range), in the
    /// order the reader gives them.
    consumed: u64,
}

impl Cursor {
    /// Moves to the next row; `false` at the end of the file.
    fn advance(&mut self) -> anyhow::Result<bool> {
        self.row += 1;
        self.consumed += 1;
        while self.row >= self.columns.rows {
            match self.reader.next() {
                None => return Ok(false),
                Some(b) => {
                    self.columns = Columns::of(&b?)?;
                    self.row = 0;
                }
            }
        }
        Ok(true)
    }
}

/// The files of one partition, merged by event time.
struct Merge {
    cursors: Vec<Cursor>,
    /// (event time, cursor): the next row of every cursor not at its end.
    heads: BinaryHeap<Reverse<(i64, usize)>>,
}

/// A file's position in a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct FilePosition {
    key: String,
    /// Rows consumed; `None`: read to the end.
    consumed: Option<u64>,
}

pub struct ParquetSource {
    component: Arc<str>,
    store: Arc<dyn Store>,
    /// This worker's files, by partition, oldest partition first.
    groups: VecDeque<Vec<String>>,
    merge: Option<Merge>,
    done: Vec<String>,
    /// Positions restored from a checkpoint: file → rows consumed.
    resume: HashMap<String, Option<u64>>,
    range: TimeRange,
    wanted: Option<Arc<Wanted>>,
    max_record_bytes: usize,
    /// The live pipeline's sources and partitions, interned.
    origins: Interner,
}

#[derive(Default)]
struct Interner(HashMap<String, Arc<str>>);

impl Interner {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = s.into();
        self.0.insert(s.to_string(), a.clone());
        a
    }
}

impl ParquetSource {
    /// The rows of this instance's files whose row groups can hold events of the range, from
    /// their footers (0 for an object store).
    fn expected_rows(&self) -> u64 {
        let Some(root) = self.store.local_root() else { return 0 };
        let mut rows = 0u64;
        for key in self.groups.iter().flatten() {
            let Ok(file) = std::fs::File::open(root.join(key)) else { continue };
            let Ok(builder) = ParquetRecordBatchReaderBuilder::try_new(file) else { continue };
            let time = builder.parquet_schema().columns().iter().position(|c| c.path().parts() == ["@timestamp"]);
            for rg in builder.metadata().row_groups() {
                let inside = match (time.map(|t| rg.column(t).statistics()), self.range.bounded()) {
                    (Some(Some(Statistics::Int64(s))), true) => match (s.min_opt(), s.max_opt()) {
                        (Some(min), Some(max)) => self.range.overlaps(*min, max.saturating_add(1)),
                        _ => true,
                    },
                    _ => true,
                };
                if inside {
                    rows += rg.num_rows().max(0) as u64;
                }
            }
        }
        rows
    }

    /// Opens a file at the rows it had consumed: `None` when there is nothing (left) to read.
    fn open(&self, key: &str, skip: u64) -> anyhow::Result<Option<Cursor>> {
        let shown = || format!("{}/{key}", self.store.location());
        let builder = match self.store.local_root() {
            Some(root) => {
                let file = std::fs::File::open(root.join(key)).map_err(|e| anyhow::anyhow!("{}: {e}", shown()))?;
                Reader::File(ParquetRecordBatchReaderBuilder::try_new(file)?)
            }
            None => {
                let bytes = self.store.get(key)?.ok_or_else(|| anyhow::anyhow!("{}: gone", shown()))?;
                Reader::Bytes(ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))?)
            }
        };
        let mut reader = match builder {
            Reader::File(b) => self.configure(b)?,
            Reader::Bytes(b) => self.configure(b)?,
        };
        // Whole batches are skipped without looking at their rows.
        let mut consumed = 0u64;
        loop {
            let Some(batch) = reader.next() else { return Ok(None) };
            let batch = batch?;
            let rows = batch.num_rows() as u64;
            if consumed + rows <= skip {
                consumed += rows;
                continue;
            }
            let row = (skip - consumed) as usize;
            let columns = Columns::of(&batch)?;
            return Ok(Some(Cursor { key: key.to_string(), reader, columns, row, consumed: skip }));
        }
    }

    fn configure<T: parquet::file::reader::ChunkReader + 'static>(
        &self,
        builder: ParquetRecordBatchReaderBuilder<T>,
    ) -> anyhow::Result<ParquetRecordBatchReader> {
        let time_leaf = builder.parquet_schema().columns().iter().position(|c| c.path().parts() == ["@timestamp"]);
        // Row groups whose event times lie outside the range are not read at all.
        let mut builder = builder;
        if self.range.bounded() {
            if let Some(t) = time_leaf {
                let keep: Vec<usize> = builder
                    .metadata()
                    .row_groups()
                    .iter()
                    .enumerate()
                    .filter(|(_, rg)| match rg.column(t).statistics() {
                        Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
                            (Some(min), Some(max)) => self.range.overlaps(*min, max.saturating_add(1)),
                            _ => true,
                        },
                        _ => true,
                    })
                    .map(|(i, _)| i)
                    .collect();
                builder = builder.with_row_groups(keep);
            }
        }
        if let Some(w) = &self.wanted {
            let arrow = builder.schema().clone();
            let roots: Vec<usize> = arrow
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| {
                    let name = f.name().as_str();
                    PROVENANCE.contains(&name)
                        || (name == "ext" && (!w.ext.is_empty() || !w.ext_patterns.is_empty()))
                        || FieldId::lookup(name).is_some_and(|id| w.core.contains(&id))
                })
                .map(|(i, _)| i)
                .collect();
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
            builder = builder.with_projection(mask);
        }
        Ok(builder.with_batch_size(8192).build()?)
    }

    /// Opens the next partition's files (skipping those a checkpoint says are read).
    fn next_merge(&mut self) -> anyhow::Result<Option<Merge>> {
        while let Some(group) = self.groups.pop_front() {
            let mut cursors = Vec::new();
            for key in group {
                let skip = match self.resume.get(&key) {
                    Some(None) => {
                        self.done.push(key);
                        continue;
                    }
                    Some(Some(n)) => *n,
                    None => 0,
                };
                match self.open(&key, skip)? {
                    Some(c) => cursors.push(c),
                    None => self.done.push(key),
                }
            }
            if cursors.is_empty() {
                continue;
            }
            let heads = cursors.iter().enumerate().map(|(i, c)| Reverse((c.columns.time(c.row), i))).collect();
            return Ok(Some(Merge { cursors, heads }));
        }
        Ok(None)
    }
}

enum Reader {
    File(ParquetRecordBatchReaderBuilder<std::fs::File>),
    Bytes(ParquetRecordBatchReaderBuilder<bytes::Bytes>),
}

impl Source for ParquetSource {
    fn poll(&mut self, max_rows: usize) -> anyhow::Result<SourcePoll> {
        let mut batch = EventBatch::with_capacity(max_rows.min(8192), 0);
        let mut quarantine = Vec::new();
        let mut last_origin: Option<(String, String, u32)> = None;
        while batch.len() < max_rows && batch.heap_bytes() < BATCH_BYTES {
            if self.merge.is_none() {
                self.merge = self.next_merge()?;
                if self.merge.is_none() {
                    break;
                }
            }
            let ParquetSource { merge, origins, range, wanted, max_record_bytes, component, store, done, .. } = self;
            let m = merge.as_mut().expect("set above");
            let Some(Reverse((time, i))) = m.heads.pop() else {
                done.extend(merge.take().expect("set above").cursors.into_iter().map(|c| c.key));
                continue;
            };
            let cursor = &mut m.cursors[i];
            if !range.bounded() || range.contains(time) {
                let (columns, row) = (&cursor.columns, cursor.row);
                let (source, partition) = (columns.source.value(row), columns.partition.value(row));
                // Rows of one file mostly share their origin: no lookup for those.
                let origin = match &last_origin {
                    Some((s, p, o)) if s == source && p == partition => *o,
                    _ => {
                        let o = batch.origin_index(&origins.intern(source), &origins.intern(partition));
                        last_origin = Some((source.to_string(), partition.to_string(), o));
                        o
                    }
                };
                let mark = batch.heap().mark();
                let size = columns.push(row, origin, &mut batch, wanted.as_deref());
                if size > *max_record_bytes {
                    batch.pop_row(mark);
                    quarantine.push(QuarantineRecord {
                        reason: Reason::Oversize,
                        detail: format!(
                            "{size} bytes of fields (max_record_bytes {max_record_bytes}) in {}",
                            cursor.key
                        ),
                        component: component.clone(),
                        source: origins.intern(source),
                        partition: origins.intern(partition),
                        offset: columns.offset.value(row),
                        payload: Vec::new(),
                        payload_len: size,
                    });
                }
            }
            match cursor.advance() {
                Ok(true) => m.heads.push(Reverse((cursor.columns.time(cursor.row), i))),
                Ok(false) => {}
                Err(e) => return Err(e.context(format!("{}/{}", store.location(), cursor.key))),
            }
        }
        match (batch.is_empty(), quarantine.is_empty()) {
            (true, true) => Ok(SourcePoll::Done),
            (false, true) => Ok(SourcePoll::Batch(batch)),
            (true, false) => Ok(SourcePoll::Quarantine(quarantine)),
            (false, false) => Ok(SourcePoll::Both(batch, quarantine)),
        }
    }

    fn checkpoint(&self) -> anyhow::Result<Vec<u8>> {
        let mut positions: Vec<FilePosition> =
            self.done.iter().map(|k| FilePosition { key: k.clone(), consumed: None }).collect();
        if let Some(m) = &self.merge {
            positions.extend(m.cursors.iter().map(|c| FilePosition { key: c.key.clone(), consumed: Some(c.consumed) }));
        }
        ward_engine::keyed::encode(&positions)
    }

    fn restore(&mut self, parts: &[&[u8]]) -> anyhow::Result<()> {
        for part in parts.iter().filter(|p| !p.is_empty()) {
            let positions: Vec<FilePosition> = ward_engine::keyed::decode(part)?;
            for p in positions {
                // A file another instance finished stays finished.
                let e = self.resume.entry(p.key).or_insert(p.consumed);
                if p.consumed.is_none() {
                    *e = None;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::parquet::{ParquetSink, ParquetSinkConfig, PartitionBy};
    use ward_engine::component::{Payload, Sink};
    use ward_engine::storage::LocalStore;

    const HOUR: i64 = 3_600_000;
    const T0: i64 = 1_780_000_000_000 / HOUR * HOUR;

    /// Events `first..first+n` of partition `p`, one every `step` ms from `t`, with a host, an
    /// address and an extension field.
    fn events(p: &str, first: u64, n: u64, t: i64, step: i64) -> EventBatch {
        let mut b = EventBatch::new();
        let o = b.origin_index(&"kafka".into(), &p.into());
        for i in 0..n {
            b.push_raw(o, first + i, b"{}").unwrap();
            b.push_slot(Slot { key: Key::Core(ids::TIMESTAMP), value: Value::Timestamp(t + i as i64 * step) });
            let id = b.heap().push_str(&format!("{p}-{}", first + i));
            b.push_slot(Slot { key: Key::Core(FieldId::lookup("event.id").unwrap()), value: Value::Str(id) });
            let host = b.heap().push_str("web-1");
            b.push_slot(Slot { key: Key::Core(FieldId::lookup("host.name").unwrap()), value: Value::Str(host) });
            let ip = b.heap().push_ip("10.0.0.7".parse().unwrap());
            b.push_slot(Slot { key: Key::Core(FieldId::lookup("source.ip").unwrap()), value: Value::Ip(ip) });
            let (k, v) = (b.heap().push_str("team"), b.heap().push_str("red"));
            b.push_slot(Slot { key: Key::Ext(k), value: Value::Str(v) });
        }
        b
    }

    /// Two sink workers' files over two hours: worker 0 has partition a, worker 1 partition b.
    fn written(dir: &std::path::Path) -> Arc<dyn Store> {
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.to_path_buf()));
        for (w, p) in [(0, "a"), (1, "b")] {
            let config = ParquetSinkConfig {
                path: "x".into(),
                row_group_size: 100,
                zstd_level: 1,
                partition_by: PartitionBy::Hour,
                max_file_rows: 1_000_000,
                close_idle_after_epochs: 60,
                text_statistics: false,
            };
            let mut sink = ParquetSink::new(config, store.clone(), "events", w).unwrap();
            // 2,000 events per partition, one every 3.6 s (w=1 offset by 1 ms): two hours.
            sink.write(&Payload::Events(events(p, 0, 2000, T0 + w as i64, 3600).into())).unwrap();
            sink.finish().unwrap();
        }
        store
    }

    fn source(
        store: &Arc<dyn Store>,
        range: TimeRange,
        fields: Option<&[&str]>,
        worker: usize,
        workers: usize,
    ) -> ParquetSource {
        let factory = ParquetFactory {
            store: store.clone(),
            files: Arc::new(event_files(store.as_ref(), range).unwrap()),
            range,
            fields: fields.map(|f| Arc::new(wanted(&f.iter().map(|s| s.to_string()).collect::<Vec<_>>()))),
            max_record_bytes: 4 << 20,
        };
        factory.source("pq".into(), worker, workers)
    }

    /// Every event a source gives until it is done (or `limit` events): (event time, event id,
    /// origin partition, offset, host, source.ip, ext team).
    fn drain(s: &mut ParquetSource, limit: usize) -> Vec<(i64, String, String, u64, String, String, String)> {
        let mut out = Vec::new();
        while out.len() < limit {
            let SourcePoll::Batch(b) = s.poll(limit.min(700)).unwrap() else { break };
            for r in 0..b.len() {
                let text = |name: &str| match b.get_by_name(r, name) {
                    Some(Value::Str(x)) => b.bytes().str(x).to_string(),
                    Some(Value::Ip(x)) => format!("ip:{}", b.bytes().ip(x).unwrap()),
                    Some(other) => format!("{other:?}"),
                    None => String::new(),
                };
                let Some(Value::Timestamp(t)) = b.get(r, ids::TIMESTAMP) else { panic!("no time") };
                let p = b.provenance(r);
                out.push((
                    t,
                    text("event.id"),
                    p.partition.to_string(),
                    p.offset,
                    text("host.name"),
                    text("source.ip"),
                    text("team"),
                ));
            }
        }
        out
    }

    #[test]
    fn reads_back_what_the_sink_wrote_in_event_time_order_with_provenance_and_types() {
        let dir = tempfile::tempdir().unwrap();
        let store = written(dir.path());
        let files = event_files(store.as_ref(), TimeRange::ALL).unwrap();
        assert_eq!(files.len(), 4, "{files:?}");
        assert!(files[0].partition.ends_with(&format!("hour={:02}", (T0 / HOUR) % 24)), "{files:?}");
        let got = drain(&mut source(&store, TimeRange::ALL, None, 0, 1), usize::MAX);
        assert_eq!(got.len(), 4000);
        assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "merged by event time");
        assert_eq!(got[0], (T0, "a-0".into(), "a".into(), 0, "web-1".into(), "ip:10.0.0.7".into(), "red".into()));
        assert_eq!(got[1].1, "b-0");
    }

    #[test]
    fn a_time_range_prunes_partitions_and_rows_and_a_projection_leaves_other_fields_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = written(dir.path());
        let range = TimeRange { from: T0 + HOUR, to: T0 + HOUR + 36_000 };
        assert_eq!(event_files(store.as_ref(), range).unwrap().len(), 2, "one hour's files");
        let got = drain(&mut source(&store, range, Some(&["host.name"]), 0, 1), usize::MAX);
        // Events every 3.6 s per partition: 10 of each in 36 s.
        assert_eq!(got.len(), 20);
        assert!(got.iter().all(|e| range.contains(e.0)));
        assert!(got.iter().all(|e| e.4 == "web-1" && e.5.is_empty() && e.6.is_empty()), "{:?}", got[0]);
        let with_ext = drain(&mut source(&store, range, Some(&["team"]), 0, 1), usize::MAX);
        assert!(with_ext.iter().all(|e| e.4.is_empty() && e.6 == "red"));
    }

    #[test]
    fn oversize_rows_are_quarantined_with_their_origin_and_leave_nothing_in_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = written(dir.path());
        let mut s = source(&store, TimeRange::ALL, None, 0, 1);
        s.max_record_bytes = 20; // every row has about 30 bytes of text
        let (mut rows, mut quarantined) = (0, Vec::new());
        loop {
            match s.poll(500).unwrap() {
                SourcePoll::Done => break,
                SourcePoll::Batch(b) => rows += b.len(),
                SourcePoll::Both(b, q) => {
                    rows += b.len();
                    quarantined.extend(q);
                }
                SourcePoll::Quarantine(q) => quarantined.extend(q),
                SourcePoll::Pending(_) => {}
            }
        }
        assert_eq!((rows, quarantined.len()), (0, 4000));
        let q = &quarantined[0];
        assert_eq!((q.reason, &*q.source, &*q.partition, q.offset), (Reason::Oversize, "kafka", "a", 0));
        assert!(q.detail.contains("max_record_bytes 20"), "{}", q.detail);
    }

    #[test]
    fn a_stopped_read_resumes_on_another_worker_count_with_every_event_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = written(dir.path());
        let all = drain(&mut source(&store, TimeRange::ALL, None, 0, 1), usize::MAX);
        // Two workers read part of it and checkpoint.
        let mut first = Vec::new();
        let mut parts = Vec::new();
        for w in 0..2 {
            let mut s = source(&store, TimeRange::ALL, None, w, 2);
            first.extend(drain(&mut s, 1400 + 700 * w));
            parts.push(s.checkpoint().unwrap());
        }
        // Three workers go on from there.
        let mut rest = Vec::new();
        for w in 0..3 {
            let mut s = source(&store, TimeRange::ALL, None, w, 3);
            s.restore(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
            rest.extend(drain(&mut s, usize::MAX));
        }
        let mut got: Vec<_> = first.into_iter().chain(rest).collect();
        got.sort();
        let mut want = all;
        want.sort();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "every event once");
    }
}
