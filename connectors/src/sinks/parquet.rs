//! The `parquet` sink: ECS-lite columns, provenance and the extension map, zstd-compressed,
//! in `date=YYYY-MM-DD/hour=HH` directories by event time.
//!
//! `path` is a directory or an object-store location (`s3://bucket/events`; see
//! `ward_engine::storage`). Each worker writes its own files, named
//! `part-{sink}-w{worker}-{seq}.parquet`. A file is written under a hidden `.…inprogress` name
//! (in an object store: written to a local spool file, then uploaded under the hidden name)
//! and renamed when closed, so readers never see a partial file. Hidden names carry the
//! writing process's token, so two processes never write the same hidden object.
//!
//! With checkpoints the sink is exactly once: every checkpoint closes the open files, which stay
//! hidden until the checkpoint is durable and are then renamed to
//! `part-{sink}-r{run}-w{worker}-c{checkpoint}-{seq}.parquet` (`run`: the first epoch of the run
//! that wrote it; `cend` for files closed when a run ended). Before a run resumes, files the
//! checkpoint names are renamed if a crash came first, and files of later, uncommitted
//! checkpoints and hidden leftovers are removed, so each record is in exactly one visible file.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ward_engine::storage::Store;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, MapBuilder, StringBuilder, TimestampMillisecondBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use schemars::JsonSchema;
use serde::Deserialize;
use ward_engine::batch::{EventBatch, Key, Value};
use ward_engine::component::{Payload, Sink, SinkFactory, StreamKind, WorkerContext};
use ward_engine::fields::{ids, FieldId, FieldType, CORE_FIELDS};
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PartitionBy {
    /// `date=YYYY-MM-DD/hour=HH`
    #[default]
    Hour,
    /// `date=YYYY-MM-DD`
    Day,
    None,
}

/// Write events to Parquet files.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// Output directory (relative to the spec), or an object-store location such as
    /// `s3://bucket/events` (reached as `settings.storage` says).
    pub path: String,
    /// Rows per row group.
    #[serde(default = "default_row_group")]
    pub row_group_size: usize,
    /// zstd level (1-22).
    #[serde(default = "default_zstd")]
    pub zstd_level: i32,
    #[serde(default)]
    pub partition_by: PartitionBy,
    /// A file is closed (and a new one started) at the next epoch boundary after this many rows.
    #[serde(default = "default_file_rows")]
    pub max_file_rows: usize,
    /// A file that received no rows for this many epochs is closed (so a past hour's file
    /// becomes visible without waiting for the run to end).
    #[serde(default = "default_idle_epochs")]
    pub close_idle_after_epochs: u64,
    /// Min/max statistics for text columns too (by default only for time, number and flag
    /// columns: min/max of unsorted text prunes little and costs two comparisons per value).
    #[serde(default)]
    pub text_statistics: bool,
}

fn default_row_group() -> usize {
    65_536
}
/// Level 1: on Ward's events it writes files 0.5% larger than level 3 for 4% less CPU per
/// event in the whole ingest pipeline (`bench/perf.py`).
fn default_zstd() -> i32 {
    1
}
fn default_file_rows() -> usize {
    1_000_000
}
fn default_idle_epochs() -> u64 {
    60
}

impl ComponentConfig for ParquetSinkConfig {
    const TYPE: &'static str = "parquet";
    const SECTION: Section = Section::Sink;
    const DESCRIPTION: &'static str = "Write events to zstd Parquet files partitioned by date and hour";
    const ACCEPTS: &'static [StreamKind] = &[StreamKind::Events];
    const OUTPUT: Option<StreamKind> = None;

    fn build(self, ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        ZstdLevel::try_new(self.zstd_level).map_err(|e| anyhow::anyhow!("zstd_level: {e}"))?;
        use ward_engine::limits::check_range;
        check_range("row_group_size", self.row_group_size as u64, 1, 16 << 20)?;
        check_range("max_file_rows", self.max_file_rows as u64, 1, 1 << 32)?;
        check_range("close_idle_after_epochs", self.close_idle_after_epochs, 1, 1 << 20)?;
        let store = ward_engine::storage::open(&self.path, ctx.resources.base(), ctx.storage, None, ctx.component_id)?;
        if let Some(dir) = store.local_root() {
            ctx.writes_under(dir);
        }
        Ok(Built::Sink(Arc::new(ParquetFactory { config: self, store, sink_id: ctx.component_id.to_string() })))
    }
}

struct ParquetFactory {
    config: ParquetSinkConfig,
    store: Arc<dyn Store>,
    sink_id: String,
}

/// Files a checkpoint closed and holds hidden until it is durable: (hidden, final), relative
/// to the sink's directory.
type PreparedFiles = Vec<(String, String)>;

/// The checkpoint a committed file belongs to, from its name; `None` for files closed when a
/// run ended (`cend`), with the run.
fn checkpoint_of(name: &str, sink: &str) -> Option<(u64, Option<u64>)> {
    let rest = name.strip_prefix(&format!("part-{sink}-r"))?.strip_suffix(".parquet")?;
    let (run, rest) = rest.split_once("-w")?;
    let (_, rest) = rest.split_once("-c")?;
    let (c, _) = rest.split_once('-')?;
    let run = run.parse().ok()?;
    Some((run, if c == "end" { None } else { Some(c.parse().ok()?) }))
}

/// The worker that wrote a file of this sink (hidden or not), from its name.
fn worker_of(name: &str, sink: &str) -> Option<usize> {
    let rest = name.strip_prefix('.').unwrap_or(name).strip_prefix(&format!("part-{sink}-r"))?;
    let (_, rest) = rest.split_once("-w")?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

impl SinkFactory for ParquetFactory {
    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Sink>> {
        if let Some(dir) = self.store.local_root() {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        }
        self.store.attach_metrics(&ctx.metrics.families, &ctx.component_id);
        let mut sink = ParquetSink::new(self.config.clone(), self.store.clone(), &ctx.component_id, ctx.worker_index)?;
        if ctx.checkpointing {
            sink.run = Some(ctx.resumed_from.map_or(0, |e| e + 1));
        }
        Ok(Box::new(sink))
    }

    fn restore(&self, retained: &[ward_engine::checkpoint::SinkCheckpoint<'_>]) -> anyhow::Result<()> {
        let resumed = retained.last().map(|c| c.manifest);
        let owner = retained.last().map(|c| c.owner);
        // Files the checkpoints cover: visible now, if the crash came before the rename.
        for (_, part) in retained.iter().flat_map(|c| c.parts.iter()).filter(|(_, p)| !p.is_empty()) {
            let files: PreparedFiles = ward_engine::keyed::decode(part)?;
            for (hidden, name) in files {
                self.store.rename(&hidden, &name)?;
            }
        }
        let hidden_prefix = format!(".part-{}-r", self.sink_id);
        for entry in self.store.list("")? {
            let name = entry.key.rsplit('/').next().unwrap_or(&entry.key);
            // In a cluster sharing the directory, each process settles its share of workers.
            if owner.is_some_and(|o| worker_of(name, &self.sink_id).is_some_and(|w| !o.owns(w))) {
                continue;
            }
            let stale = if name.starts_with(&hidden_prefix) {
                true
            } else {
                match (checkpoint_of(name, &self.sink_id), resumed) {
                    (None, _) => false,
                    // Closed at the end of a run: it belongs to that run's closing
                    // checkpoint (ends of earlier runs were settled when the run that
                    // wrote `m` started).
                    (Some((run, None)), Some(m)) => !(run < m.run || (m.closing && m.run == run)),
                    (Some((_, None)), None) => true,
                    (Some((_, Some(c))), Some(m)) => c > m.epoch,
                    (Some((_, Some(_))), None) => false,
                }
            };
            if stale {
                self.store.delete(&entry.key)?;
            }
        }
        Ok(())
    }
}

/// The Arrow schema of event files: core fields in table order, provenance, extension map.
pub fn event_schema() -> SchemaRef {
    let mut fields: Vec<Field> =
        CORE_FIELDS.iter().map(|(name, ty, _)| Field::new(*name, arrow_type(*ty), true)).collect();
    fields.push(Field::new("ward.source", DataType::Utf8, false));
    fields.push(Field::new("ward.partition", DataType::Utf8, false));
    fields.push(Field::new("ward.offset", DataType::UInt64, false));
    let entries = Field::new(
        "entries",
        DataType::Struct(
            vec![Field::new("key", DataType::Utf8, false), Field::new("value", DataType::Utf8, true)].into(),
        ),
        false,
    );
    fields.push(Field::new("ext", DataType::Map(Arc::new(entries), false), false));
    Arc::new(Schema::new(fields))
}

/// The Parquet column paths of the text leaves under `fields` (a map's entries included).
fn text_columns(fields: &arrow_schema::Fields, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    for f in fields {
        prefix.push(f.name().clone());
        match f.data_type() {
            DataType::Utf8 => out.push(prefix.clone()),
            DataType::Map(entries, _) => text_columns(&[entries.clone()].into(), prefix, out),
            DataType::Struct(children) => text_columns(children, prefix, out),
            _ => {}
        }
        prefix.pop();
    }
}

fn arrow_type(t: FieldType) -> DataType {
    match t {
        FieldType::Str | FieldType::Ip => DataType::Utf8,
        FieldType::Int => DataType::Int64,
        FieldType::Float => DataType::Float64,
        FieldType::Bool => DataType::Boolean,
        FieldType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
    }
}

const UNIQUE_COLUMNS: &[&str] = &["@timestamp", "event.id", "ward.offset", "process.command_line", "message"];

struct OpenFile {
    writer: ArrowWriter<File>,
    cols: Columns,
    /// Where the file is written (in place for a local store, else a spool file).
    local: PathBuf,
    /// Its hidden key and final key in the store.
    tmp: String,
    target: String,
    rows: usize,
    /// The number of completed epochs when the file last received rows.
    touched: u64,
}

pub struct ParquetSink {
    config: ParquetSinkConfig,
    store: Arc<dyn Store>,
    /// Where open files are written: the store's directory, or a local spool for an object
    /// store (files are uploaded when they close).
    spool: PathBuf,
    sink_id: String,
    worker: usize,
    schema: SchemaRef,
    props: WriterProperties,
    open: BTreeMap<Option<i64>, OpenFile>,
    seq: BTreeMap<Option<i64>, u64>,
    /// With checkpoints: the run's first epoch (files are held until their checkpoint commits).
    run: Option<u64>,
    /// Files closed by a checkpoint, hidden until it commits.
    prepared: Vec<(u64, PreparedFiles)>,
    /// Epochs completed so far (the sink's clock for closing idle files).
    epochs: u64,
    /// Where each row's core fields are (reused).
    index: CellIndex,
    text: String,
}

impl ParquetSink {
    pub fn new(config: ParquetSinkConfig, store: Arc<dyn Store>, sink_id: &str, worker: usize) -> anyhow::Result<Self> {
        let spool = match store.local_root() {
            Some(dir) => dir.to_path_buf(),
            None => ward_engine::storage::spool::dir()?.join(format!("{sink_id}-w{worker}")),
        };
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(config.zstd_level).unwrap_or_default()))
            .set_max_row_group_row_count(Some(config.row_group_size));
        // Columns that are (nearly) unique per row gain nothing from a dictionary but pay for it.
        for col in UNIQUE_COLUMNS {
            props = props.set_column_dictionary_enabled(ColumnPath::from(*col), false);
        }
        // Nor do the extension fields' values (command lines, hashes, paths): interning them
        // cost 1.5% of the ingest pipeline's instructions, and plain pages compress smaller.
        // Their keys (field names) repeat and keep the dictionary.
        props = props.set_column_dictionary_enabled(
            ColumnPath::new(vec!["ext".into(), "entries".into(), "value".into()]),
            false,
        );
        if !config.text_statistics {
            let mut text = Vec::new();
            text_columns(event_schema().fields(), &mut Vec::new(), &mut text);
            for path in text {
                props = props.set_column_statistics_enabled(ColumnPath::new(path), EnabledStatistics::None);
            }
        }
        let props = props.build();
        Ok(ParquetSink {
            config,
            store,
            spool,
            sink_id: sink_id.to_string(),
            worker,
            schema: event_schema(),
            props,
            open: BTreeMap::new(),
            seq: BTreeMap::new(),
            run: None,
            prepared: Vec::new(),
            epochs: 0,
            index: CellIndex::default(),
            text: String::new(),
        })
    }

    /// The partition of a row: hour or day bucket of its event time (None: no time).
    fn bucket(&self, b: &EventBatch, row: usize) -> Option<i64> {
        let Some(Value::Timestamp(ms)) = b.get(row, ids::TIMESTAMP) else {
            return None;
        };
        match self.config.partition_by {
            PartitionBy::Hour => Some(ms.div_euclid(3_600_000)),
            PartitionBy::Day => Some(ms.div_euclid(86_400_000) * 24),
            PartitionBy::None => Some(i64::MIN),
        }
    }

    /// The partition's directory under the sink's location (`""`: the top).
    fn partition_key(&self, bucket: Option<i64>) -> String {
        match bucket {
            None => "date=unknown".to_string(),
            Some(i64::MIN) => String::new(),
            Some(h) => {
                let t = chrono::DateTime::from_timestamp(h * 3600, 0).unwrap_or_default();
                let day = format!("date={}", t.format("%Y-%m-%d"));
                match self.config.partition_by {
                    PartitionBy::Hour => format!("{day}/hour={}", t.format("%H")),
                    _ => day,
                }
            }
        }
    }

    fn file_for(&mut self, bucket: Option<i64>) -> anyhow::Result<&mut OpenFile> {
        if !self.open.contains_key(&bucket) {
            let dir = self.partition_key(bucket);
            let seq = self.seq.entry(bucket).or_insert(0);
            let name = match self.run {
                // The checkpoint is set when the file closes (`{c}` below).
                Some(run) => format!("part-{}-r{run:012}-w{:03}-c{{c}}-{:06}.parquet", self.sink_id, self.worker, seq),
                None => format!("part-{}-w{:03}-{:06}.parquet", self.sink_id, self.worker, seq),
            };
            *seq += 1;
            let key = |n: &str| if dir.is_empty() { n.to_string() } else { format!("{dir}/{n}") };
            let target = key(&name);
            let tmp =
                key(&format!(".{}.{}.inprogress", name.replace("-c{c}", ""), ward_engine::storage::process_token()));
            let local = self.spool.join(&tmp);
            if let Some(parent) = local.parent() {
                std::fs::create_dir_all(parent).map_err(|e| anyhow::anyhow!("{}: {e}", parent.display()))?;
            }
            let file = File::create(&local).map_err(|e| anyhow::anyhow!("{}: {e}", local.display()))?;
            let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(self.props.clone()))?;
            self.open.insert(
                bucket,
                OpenFile { writer, cols: Columns::new(), local, tmp, target, rows: 0, touched: self.epochs },
            );
        }
        Ok(self.open.get_mut(&bucket).expect("inserted above"))
    }

    fn close(&self, f: OpenFile) -> anyhow::Result<()> {
        let (tmp, target) = self.close_hidden(f)?;
        self.store.rename(&tmp, &target)?;
        Ok(())
    }

    /// Completes a file (footer written, synced) under its hidden key in the store.
    fn close_hidden(&self, mut f: OpenFile) -> anyhow::Result<(String, String)> {
        Self::flush(&self.schema, &mut f)?;
        let file = f.writer.into_inner()?;
        if self.store.local_root().is_some() {
            file.sync_all()?;
        } else {
            drop(file);
            self.store.upload(&f.local, &f.tmp)?;
        }
        Ok((f.tmp, f.target))
    }

    /// Closes every open file for checkpoint `tag` (`end` when the run ends), hidden.
    fn close_all_hidden(&mut self, tag: &str) -> anyhow::Result<PreparedFiles> {
        let mut files = Vec::new();
        for (_, f) in std::mem::take(&mut self.open) {
            let (tmp, target) = self.close_hidden(f)?;
            files.push((tmp, target.replace("-c{c}-", &format!("-c{tag}-"))));
        }
        Ok(files)
    }

    fn publish(&self, files: &PreparedFiles) -> anyhow::Result<()> {
        for (hidden, name) in files {
            // Absent: a retried rename whose first attempt moved it already — or another
            // process settled this location, which must stop this run, not lose the file.
            if !self.store.rename(hidden, name)? && !self.store.exists(name)? {
                anyhow::bail!(
                    "{}: {hidden} vanished before its checkpoint committed (is another run writing to this location?)",
                    self.store.location()
                );
            }
        }
        Ok(())
    }

    /// Appends the given rows of a batch to a file's column builders: one pass over the rows
    /// to find each core field's first value (and append the extension map), then one pass per
    /// column over only the values found for it, so runs of nulls go in bulk and a column no
    /// row has costs one call.
    fn append(
        cols: &mut Columns,
        index: &mut CellIndex,
        text: &mut String,
        b: &EventBatch,
        rows: &[usize],
    ) -> anyhow::Result<()> {
        let bytes = b.bytes();
        index.cells.clear();
        for (n, &row) in rows.iter().enumerate() {
            let r = &b.rows()[row];
            let (mut seen, mut multi) = (0u128, 0u128);
            let row_cells = index.cells.len();
            for (i, s) in b.row_slots(row).iter().enumerate() {
                match s.key {
                    Key::Core(f) => {
                        let bit = 1u128 << f.0;
                        if seen & bit == 0 {
                            seen |= bit;
                            index.cells.push(Cell {
                                value: s.value,
                                field: f.0,
                                multi: false,
                                n: n as u32,
                                slot: r.slots_start + i as u32,
                            });
                        } else {
                            multi |= bit;
                        }
                    }
                    Key::Ext(k) => {
                        cols.ext.keys().append_value(bytes.str(k));
                        match s.value {
                            Value::Null => cols.ext.values().append_null(),
                            Value::Str(r) => cols.ext.values().append_value(bytes.str(r)),
                            v => {
                                // Text form without allocating.
                                text.clear();
                                ward_engine::batch::write_value_text(bytes, v, text);
                                cols.ext.values().append_value(&*text);
                            }
                        }
                    }
                }
            }
            if multi != 0 {
                for c in &mut index.cells[row_cells..] {
                    c.multi = multi >> c.field & 1 == 1;
                }
            }
            cols.ext.append(true)?;
            let o = &b.origins()[r.origin as usize];
            cols.source.append_value(&*o.source);
            cols.partition.append_value(&*o.partition);
            cols.offset.append_value(r.offset);
        }
        index.sort_by_field();
        for (f, col) in cols.core.iter_mut().enumerate() {
            // Rows appended to this column so far.
            let mut done = 0;
            for c in index.field(f) {
                // The value is copied into the cell: reading it from the batch's slots here would
                // take a cache miss per value.
                let v = c.value;
                if !col.accepts(&v) {
                    continue; // Written as null, with the gap before the next value.
                }
                let n = c.n as usize;
                if n > done {
                    col.append_nulls(n - done);
                }
                done = n + 1;
                let (multi, row, slot) = (c.multi, rows[n], c.slot);
                match (&mut *col, v) {
                    (Col::S(c), Value::Str(r)) if !multi => c.append_value(bytes.str(r)),
                    (Col::S(c), Value::Str(r)) => {
                        // A multi-valued field (e.g. DNS answers) is stored comma-joined.
                        let id = Key::Core(FieldId(f as u16));
                        let row = &b.rows()[row];
                        text.clear();
                        text.push_str(bytes.str(r));
                        for s in b.slots()[slot as usize + 1..row.slots_end as usize].iter().filter(|s| s.key == id) {
                            if let Value::Str(x) = s.value {
                                text.push(',');
                                text.push_str(bytes.str(x));
                            }
                        }
                        c.append_value(&*text);
                    }
                    (Col::S(c), Value::Ip(r)) => match bytes.ip(r) {
                        Some(ip) => {
                            text.clear();
                            ward_engine::batch::write_ip(text, ip);
                            c.append_value(&*text);
                        }
                        None => c.append_null(),
                    },
                    (Col::I(c), Value::Int(i)) => c.append_value(i),
                    (Col::F(c), Value::Float(x)) => c.append_value(x),
                    (Col::F(c), Value::Int(i)) => c.append_value(i as f64),
                    (Col::B(c), Value::Bool(x)) => c.append_value(x),
                    (Col::T(c), Value::Timestamp(ms)) => c.append_value(ms),
                    _ => unreachable!("filtered by Col::accepts"),
                }
            }
            if rows.len() > done {
                col.append_nulls(rows.len() - done);
            }
        }
        cols.rows += rows.len();
        Ok(())
    }

    /// Writes what the builders hold as one record batch.
    fn flush(schema: &SchemaRef, f: &mut OpenFile) -> anyhow::Result<()> {
        if f.cols.rows == 0 {
            return Ok(());
        }
        let next = f.cols.sized_like();
        let c = &mut std::mem::replace(&mut f.cols, next);
        let mut arrays: Vec<ArrayRef> = c
            .core
            .iter_mut()
            .map(|c| -> ArrayRef {
                match c {
                    Col::S(c) => Arc::new(c.finish()),
                    Col::I(c) => Arc::new(c.finish()),
                    Col::F(c) => Arc::new(c.finish()),
                    Col::B(c) => Arc::new(c.finish()),
                    Col::T(c) => Arc::new(c.finish()),
                }
            })
            .collect();
        arrays.push(Arc::new(c.source.finish()));
        arrays.push(Arc::new(c.partition.finish()));
        arrays.push(Arc::new(c.offset.finish()));
        arrays.push(Arc::new(c.ext.finish()));
        f.writer.write(&RecordBatch::try_new(schema.clone(), arrays)?)?;
        Ok(())
    }
}

/// The first value of a core field in a row being appended.
#[derive(Clone, Copy)]
struct Cell {
    value: Value,
    field: u16,
    /// The row has more values of the field (stored comma-joined).
    multi: bool,
    /// The row's position among the rows appended.
    n: u32,
    slot: u32,
}

// A row's fields are tracked in a `u128` bit set.
const _: () = assert!(CORE_FIELDS.len() <= 128);

/// The cells of the rows being appended, then grouped by field (in row order within a field).
#[derive(Default)]
struct CellIndex {
    cells: Vec<Cell>,
    by_field: Vec<Cell>,
    /// Where each field's cells start in `by_field` (one more entry than fields).
    starts: Vec<usize>,
}

impl CellIndex {
    /// A counting sort of `cells` by field, stable so each field's cells stay in row order.
    fn sort_by_field(&mut self) {
        self.starts.clear();
        self.starts.resize(CORE_FIELDS.len() + 1, 0);
        for c in &self.cells {
            self.starts[c.field as usize + 1] += 1;
        }
        for f in 0..CORE_FIELDS.len() {
            self.starts[f + 1] += self.starts[f];
        }
        self.by_field.clear();
        self.by_field.resize(self.cells.len(), Cell { value: Value::Null, field: 0, multi: false, n: 0, slot: 0 });
        // Each field's start is its write cursor; once every cell is placed, it has moved to
        // the next field's start, so shifting by one restores the starts.
        for c in &self.cells {
            let at = &mut self.starts[c.field as usize];
            self.by_field[*at] = *c;
            *at += 1;
        }
        self.starts.copy_within(0..CORE_FIELDS.len(), 1);
        self.starts[0] = 0;
    }

    fn field(&self, f: usize) -> &[Cell] {
        &self.by_field[self.starts[f]..self.starts[f + 1]]
    }
}

enum Col {
    S(StringBuilder),
    I(Int64Builder),
    F(Float64Builder),
    B(BooleanBuilder),
    T(TimestampMillisecondBuilder),
}

impl Col {
    /// Whether a value of this type goes into the column (else it is written as null).
    fn accepts(&self, v: &Value) -> bool {
        matches!(
            (self, v),
            (Col::S(_), Value::Str(_) | Value::Ip(_))
                | (Col::I(_), Value::Int(_))
                | (Col::F(_), Value::Float(_) | Value::Int(_))
                | (Col::B(_), Value::Bool(_))
                | (Col::T(_), Value::Timestamp(_))
        )
    }

    fn append_nulls(&mut self, n: usize) {
        match self {
            Col::S(c) => c.append_nulls(n),
            Col::I(c) => c.append_nulls(n),
            Col::F(c) => c.append_nulls(n),
            Col::B(c) => c.append_nulls(n),
            Col::T(c) => c.append_nulls(n),
        }
    }
}

/// Column builders of one open file; flushed as a record batch every `FLUSH_ROWS` rows, so
/// the per-write overhead of ~80 columns is paid rarely.
struct Columns {
    core: Vec<Col>,
    source: StringBuilder,
    partition: StringBuilder,
    offset: UInt64Builder,
    ext: MapBuilder<StringBuilder, StringBuilder>,
    rows: usize,
}

const FLUSH_ROWS: usize = 16 * 1024;

impl Columns {
    fn new() -> Self {
        let n = FLUSH_ROWS;
        Columns {
            core: CORE_FIELDS
                .iter()
                .map(|(_, t, _)| match t {
                    FieldType::Str | FieldType::Ip => Col::S(StringBuilder::with_capacity(n, n * 8)),
                    FieldType::Int => Col::I(Int64Builder::with_capacity(n)),
                    FieldType::Float => Col::F(Float64Builder::with_capacity(n)),
                    FieldType::Bool => Col::B(BooleanBuilder::with_capacity(n)),
                    FieldType::Timestamp => Col::T(TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC")),
                })
                .collect(),
            source: StringBuilder::with_capacity(n, n * 8),
            partition: StringBuilder::with_capacity(n, n * 16),
            offset: UInt64Builder::with_capacity(n),
            ext: MapBuilder::new(
                None,
                StringBuilder::with_capacity(n * 16, n * 256),
                StringBuilder::with_capacity(n * 16, n * 512),
            ),
            rows: 0,
        }
    }

    /// Empty builders with room for what these hold plus an eighth: `finish` hands a builder's
    /// buffers to the array and leaves it with none, and growing them again by doubling would
    /// copy every buffer several times per flush.
    fn sized_like(&mut self) -> Self {
        let room = |n: usize| n + n / 8 + 64;
        let text = |b: &StringBuilder| {
            StringBuilder::with_capacity(room(arrow_array::builder::ArrayBuilder::len(b)), room(b.values_slice().len()))
        };
        let n = room(self.rows);
        Columns {
            core: self
                .core
                .iter()
                .map(|c| match c {
                    Col::S(b) => Col::S(text(b)),
                    Col::I(_) => Col::I(Int64Builder::with_capacity(n)),
                    Col::F(_) => Col::F(Float64Builder::with_capacity(n)),
                    Col::B(_) => Col::B(BooleanBuilder::with_capacity(n)),
                    Col::T(_) => Col::T(TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC")),
                })
                .collect(),
            source: text(&self.source),
            partition: text(&self.partition),
            offset: UInt64Builder::with_capacity(n),
            ext: {
                let (keys, values) = self.ext.entries();
                MapBuilder::with_capacity(None, text(keys), text(values), n)
            },
            rows: 0,
        }
    }
}

impl Sink for ParquetSink {
    fn write(&mut self, payload: &Payload) -> anyhow::Result<()> {
        let Payload::Events(b) = payload else {
            return Ok(());
        };
        // Group rows by partition, keeping their order within each.
        let mut groups: BTreeMap<Option<i64>, Vec<usize>> = BTreeMap::new();
        for row in 0..b.len() {
            groups.entry(self.bucket(b, row)).or_default().push(row);
        }
        for (bucket, rows) in groups {
            let schema = self.schema.clone();
            let epochs = self.epochs;
            let (mut index, mut text) = (std::mem::take(&mut self.index), std::mem::take(&mut self.text));
            let f = self.file_for(bucket)?;
            let result = Self::append(&mut f.cols, &mut index, &mut text, b, &rows);
            f.rows += rows.len();
            f.touched = epochs;
            if f.cols.rows >= FLUSH_ROWS {
                Self::flush(&schema, f)?;
            }
            (self.index, self.text) = (index, text);
            result?;
        }
        Ok(())
    }

    fn epoch_complete(&mut self, _epoch: u64) -> anyhow::Result<()> {
        self.epochs += 1;
        if self.run.is_some() {
            // Files close at checkpoints.
            return Ok(());
        }
        let (now, idle) = (self.epochs, self.config.close_idle_after_epochs.max(1));
        let done: Vec<_> = self
            .open
            .iter()
            .filter(|(_, f)| f.rows >= self.config.max_file_rows || now - f.touched >= idle)
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            if let Some(f) = self.open.remove(&k) {
                self.close(f)?;
            }
        }
        Ok(())
    }

    fn prepare(&mut self, epoch: u64) -> anyhow::Result<Vec<u8>> {
        // (`run` is set whenever the run takes checkpoints, the only time this is called.)
        let files = self.close_all_hidden(&format!("{epoch:012}"))?;
        self.prepared.push((epoch, files));
        // Every file not yet published: those of a checkpoint that never completed stay
        // covered by the next one.
        let all: PreparedFiles = self.prepared.iter().flat_map(|(_, f)| f.iter().cloned()).collect();
        ward_engine::keyed::encode(&all)
    }

    fn commit(&mut self, epoch: u64) -> anyhow::Result<()> {
        let (now, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.prepared).into_iter().partition(|(c, _)| *c <= epoch);
        self.prepared = later;
        for (_, files) in now {
            self.publish(&files)?;
        }
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        if self.run.is_some() {
            // The run's closing checkpoint covers these (a restart from an earlier one
            // removes them).
            for (_, files) in std::mem::take(&mut self.prepared) {
                self.publish(&files)?;
            }
            let files = self.close_all_hidden("end")?;
            return self.publish(&files);
        }
        for (_, f) in std::mem::take(&mut self.open) {
            self.close(f)?;
        }
        Ok(())
    }
}

/// Lists the finished Parquet files under `dir` (for tests and tools).
pub fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet")
                && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_engine::batch::Slot;

    fn batch(hour: i64, n: usize) -> EventBatch {
        let mut b = EventBatch::new();
        let o = b.origin_index(&"src".into(), &"f".into());
        for i in 0..n {
            b.push_raw(o, i as u64, b"x").expect("small test records fit");
            let ms = hour * 3_600_000 + i as i64;
            b.push_slot(Slot { key: Key::Core(ids::TIMESTAMP), value: Value::Timestamp(ms) });
            let k = b.heap().push_str("extra");
            let v = b.heap().push_str("value");
            b.push_slot(Slot { key: Key::Ext(k), value: Value::Str(v) });
        }
        b
    }

    /// A small unpartitioned sink's settings; tests change what they exercise.
    fn test_config() -> ParquetSinkConfig {
        ParquetSinkConfig {
            path: "x".into(),
            row_group_size: 100,
            zstd_level: 1,
            partition_by: PartitionBy::None,
            max_file_rows: 1_000_000,
            close_idle_after_epochs: 60,
            text_statistics: false,
        }
    }

    /// Sink "s", worker 0, writing into `dir`.
    fn local_sink(dir: &Path, config: ParquetSinkConfig) -> ParquetSink {
        let store = Arc::new(ward_engine::storage::LocalStore::new(dir.to_path_buf()));
        ParquetSink::new(config, store, "s", 0).unwrap()
    }

    /// A file's record batches, read back by the parquet crate's Arrow reader.
    fn read_batches(path: &Path) -> Vec<RecordBatch> {
        let f = File::open(path).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap();
        reader.map(Result::unwrap).collect()
    }

    fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
        batch.column_by_name(name).unwrap().as_any().downcast_ref::<T>().unwrap()
    }

    fn rows_in(path: &Path) -> usize {
        let f = File::open(path).unwrap();
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum()
    }

    #[test]
    fn idle_partitions_close_and_only_finished_files_are_visible() {
        let dir = tempfile::tempdir().unwrap();
        let config = ParquetSinkConfig {
            zstd_level: 3,
            partition_by: PartitionBy::Hour,
            close_idle_after_epochs: 2,
            ..test_config()
        };
        let mut sink = local_sink(dir.path(), config);
        let hour = 491_000;
        sink.write(&Payload::Events(batch(hour, 10).into())).unwrap();
        sink.epoch_complete(0).unwrap();
        sink.write(&Payload::Events(batch(hour + 1, 5).into())).unwrap();
        assert!(list_files(dir.path()).is_empty(), "open files are hidden");
        sink.epoch_complete(1).unwrap();
        // The first hour got nothing for two epochs: closed and visible.
        let files = list_files(dir.path());
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].to_string_lossy().contains("hour="), "{files:?}");
        assert_eq!(rows_in(&files[0]), 10);
        sink.finish().unwrap();
        let files = list_files(dir.path());
        assert_eq!(files.len(), 2);
        assert_eq!(files.iter().map(|f| rows_in(f)).sum::<usize>(), 15);
    }

    /// Rows over several flushes (builders refilled at the size the last flush used) read back
    /// whole and in order, with text of every length; the extension values are written
    /// without a dictionary, their keys and repeating core text with one.
    #[test]
    fn flushes_keep_every_value_and_dictionaries_go_where_values_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let config = ParquetSinkConfig { row_group_size: 1_000_000, max_file_rows: 10_000_000, ..test_config() };
        let mut sink = local_sink(dir.path(), config);
        let total = FLUSH_ROWS * 3 + 77;
        let text = |i: usize| "v".repeat(i % 300);
        let mut i = 0;
        while i < total {
            // Batches of growing size, so later flushes hold more text than earlier ones.
            let n = (1 + i / 10).min(total - i).min(9_000);
            let mut b = EventBatch::new();
            let o = b.origin_index(&"src".into(), &"f".into());
            for j in i..i + n {
                b.push_raw(o, j as u64, b"x").unwrap();
                b.push_slot(Slot { key: Key::Core(ids::TIMESTAMP), value: Value::Timestamp(j as i64) });
                let host = b.heap().push_str(["a", "b", "c"][j % 3]);
                b.push_slot(Slot { key: Key::Core(ids::HOST_NAME), value: Value::Str(host) });
                let (k, v) = (b.heap().push_str("extra"), b.heap().push_str(&text(j)));
                b.push_slot(Slot { key: Key::Ext(k), value: Value::Str(v) });
            }
            sink.write(&Payload::Events(b.into())).unwrap();
            i += n;
        }
        sink.finish().unwrap();
        let path = &list_files(dir.path())[0];
        let mut row = 0;
        for batch in read_batches(path) {
            let offsets = column::<arrow_array::UInt64Array>(&batch, "ward.offset");
            let ext = column::<arrow_array::MapArray>(&batch, "ext");
            for r in 0..batch.num_rows() {
                assert_eq!(offsets.value(r), row as u64);
                let entry = ext.value(r);
                let values = entry.column(1).as_any().downcast_ref::<arrow_array::StringArray>().unwrap();
                assert_eq!(values.value(0), text(row), "row {row}");
                row += 1;
            }
        }
        assert_eq!(row, total);
        let reader = parquet::file::reader::SerializedFileReader::new(File::open(path).unwrap()).unwrap();
        let group = parquet::file::reader::FileReader::metadata(&reader).row_group(0).clone();
        let dictionary = |path: &str| {
            let c = group.columns().iter().find(|c| c.column_path().string() == path).unwrap();
            c.dictionary_page_offset().is_some()
        };
        assert!(!dictionary("ext.entries.value"));
        assert!(dictionary("ext.entries.key"));
        assert!(dictionary("host.name"));
        assert!(!dictionary("event.id"));
    }

    /// Core fields present in some rows only, in any slot order, repeated (comma-joined) or
    /// of another type than their column (null) land in their own rows, whatever the mix.
    #[test]
    fn core_values_land_in_their_rows_and_columns() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = local_sink(dir.path(), test_config());
        let mut b = EventBatch::new();
        let o = b.origin_index(&"src".into(), &"f".into());
        let mut expect = Vec::new();
        for i in 0..500u64 {
            b.push_raw(o, i, b"x").unwrap();
            let mut slots = vec![Slot { key: Key::Core(ids::TIMESTAMP), value: Value::Timestamp(i as i64) }];
            let (mut user, mut port) = (None, None);
            if i % 3 == 0 {
                let r = b.heap().push_str(&format!("u{i}"));
                slots.push(Slot { key: Key::Core(ids::USER_NAME), value: Value::Str(r) });
                user = Some(format!("u{i}"));
                if i % 9 == 0 {
                    let r = b.heap().push_str("again");
                    slots.push(Slot { key: Key::Core(ids::USER_NAME), value: Value::Str(r) });
                    user = Some(format!("u{i},again"));
                }
            }
            if i % 5 == 0 {
                slots.push(Slot { key: Key::Core(ids::SOURCE_PORT), value: Value::Int(i as i64) });
                port = Some(i as i64);
            } else if i % 7 == 0 {
                let r = b.heap().push_str("not a port");
                slots.push(Slot { key: Key::Core(ids::SOURCE_PORT), value: Value::Str(r) });
            }
            if i % 2 == 0 {
                // Values of one field join in slot order.
                slots.reverse();
                user = user.map(|u| u.split(',').rev().collect::<Vec<_>>().join(","));
            }
            slots.into_iter().for_each(|s| b.push_slot(s));
            expect.push((user, port));
        }
        sink.write(&Payload::Events(b.into())).unwrap();
        sink.finish().unwrap();
        let mut got = Vec::new();
        for batch in read_batches(&list_files(dir.path())[0]) {
            use arrow_array::Array;
            let users = column::<arrow_array::StringArray>(&batch, "user.name");
            let ports = column::<arrow_array::Int64Array>(&batch, "source.port");
            for r in 0..batch.num_rows() {
                let user = users.is_valid(r).then(|| users.value(r).to_string());
                got.push((user, ports.is_valid(r).then(|| ports.value(r))));
            }
        }
        assert_eq!(got, expect);
    }

    #[test]
    fn text_columns_get_statistics_only_when_asked() {
        for text_statistics in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut sink = local_sink(dir.path(), ParquetSinkConfig { text_statistics, ..test_config() });
            sink.write(&Payload::Events(batch(491_000, 10).into())).unwrap();
            sink.finish().unwrap();
            let file = File::open(&list_files(dir.path())[0]).unwrap();
            let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
            let group = parquet::file::reader::FileReader::metadata(&reader).row_group(0).clone();
            let stats = |path: &str| {
                let c = group.columns().iter().find(|c| c.column_path().string() == path).unwrap();
                c.statistics().is_some()
            };
            // Event time keeps its statistics (readers prune row groups by it).
            assert!(stats("@timestamp"));
            for text in ["host.name", "ward.source", "ext.entries.key", "ext.entries.value"] {
                assert_eq!(stats(text), text_statistics, "{text}");
            }
        }
    }

    #[test]
    fn committed_file_names_carry_their_checkpoint() {
        assert_eq!(
            checkpoint_of("part-events-r000000000004-w001-c000000000009-000001.parquet", "events"),
            Some((4, Some(9)))
        );
        assert_eq!(checkpoint_of("part-events-r000000000013-w000-cend-000002.parquet", "events"), Some((13, None)));
        assert_eq!(checkpoint_of("part-events-w000-000000.parquet", "events"), None, "written without checkpoints");
        assert_eq!(checkpoint_of("part-other-r000000000004-w001-c000000000009-000001.parquet", "events"), None);
        assert_eq!(worker_of(".part-events-r000000000004-w012-c000000000009-000001.parquet", "events"), Some(12));
        assert_eq!(worker_of("part-events-r000000000004-w001-cend-000001.parquet", "events"), Some(1));
        assert_eq!(worker_of("part-other-r000000000004-w001-cend-000001.parquet", "events"), None);
    }
}
