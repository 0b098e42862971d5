//! `view`: a live aggregate over events, alerts or case records, by group and event-time window, maintained
//! with differential-dataflow (docs/architecture.md §9; the engine side is `ward_engine::view`).
//!
//! ```yaml
//! - id: alerts_per_rule_hour
//!   type: view
//!   inputs: [detect]
//!   group_by: [rule.id]
//!   window: {size: 1h}                  # tumbling; {size: 1h, slide: 5m} sliding; none: all time
//!   measures:
//!     - {name: alerts, fn: count}
//!     - {name: hosts, fn: count_distinct, field: host.name}
//!   top: {k: 10, by: alerts}            # optional: the k largest groups per window
//!   where: {rule.level: [high, critical]}  # optional: only records with these values
//! ```
//!
//! The keyed state holds, per open window and group, the measures' inputs with their
//! multiplicities (a count needs none: one entry per group). A window closes when the
//! watermark has passed its end and one more watermark step has gone by (so that the epoch
//! that closes it holds no record of it): its inputs are retracted and its last row stays the
//! view's row. Views without a window keep one row per group for the whole run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use compact_str::ToCompactString;
use schemars::JsonSchema;
use serde::Deserialize;
use ward_engine::alert::Alert;
use ward_engine::batch::{EventBatch, FieldName, Value};
use ward_engine::case::CaseRecord;
use ward_engine::component::{OperatorOutput, StreamKind, WorkerContext};
use ward_engine::key_groups::{key_group, owned_groups, KEY_GROUPS};
use ward_engine::keyed::{decode, encode, KeyedOperator, KeyedOperatorFactory, RecordRef, Route, Router};
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};
use ward_engine::time::{event_time, EventTime, WATERMARK_MIN};
use ward_engine::view::{key_hash_of, ViewFactory, ViewKey, ViewLogic, ViewShape, ViewUpdate, ViewValue, F64};

/// At most this many windows hold one event (`size / slide` of a sliding window).
const MAX_WINDOWS_PER_EVENT: i64 = 1_000;
const MAX_GROUP_FIELDS: usize = 16;
const MAX_TOP_K: usize = 10_000;

/// A live aggregate by group and event-time window (differential-dataflow).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ViewConfig {
    /// Fields whose values group the rows: ECS-lite or extension fields of events; for alerts
    /// `rule.id`, `rule.level`, `detector`, a correlation field or a field of the alert's event.
    /// A field an event lacks groups as null (events: its first value).
    #[serde(default)]
    pub group_by: Vec<String>,
    /// Event-time window: tumbling with `size`, sliding with `size` and `slide`. None: one row
    /// per group over the whole run.
    #[serde(default)]
    pub window: Option<WindowConfig>,
    /// What each row holds.
    pub measures: Vec<MeasureConfig>,
    /// Keep only the `k` largest groups of each window by one measure.
    #[serde(default)]
    pub top: Option<TopConfig>,
    /// Only records whose fields have these values (one value or a list of them per field;
    /// every field must match). The others are counted as filtered.
    #[serde(default, rename = "where")]
    pub filter: BTreeMap<String, OneOrMany>,
    /// A field holding each record's difference: 1 adds the record, -1 removes one added
    /// before (osquery's differential results, through the `osquery` pack's `ward.diff`), so
    /// a view without a window is the current state. Records without an integer there are
    /// counted as filtered. Default: every record adds.
    #[serde(default)]
    pub diff: Option<String>,
}

/// One scalar or a list of them.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(Scalar),
    Many(Vec<Scalar>),
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Str(s) => s.clone(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub size: Duration,
    /// Sliding windows start every `slide` (a divisor of `size`); default: `size` (tumbling).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub slide: Option<Duration>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeasureConfig {
    /// The column's name in the view's rows.
    pub name: String,
    #[serde(rename = "fn")]
    pub function: MeasureFn,
    /// The field measured (every function but `count`).
    #[serde(default)]
    pub field: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MeasureFn {
    /// Records in the group.
    Count,
    /// Distinct non-null values of `field`.
    CountDistinct,
    /// Sum of `field`'s numeric values.
    Sum,
    /// Average of `field`'s numeric values.
    Avg,
    /// Smallest non-null value of `field`.
    Min,
    /// Largest non-null value of `field`.
    Max,
}

impl MeasureFn {
    pub fn as_str(self) -> &'static str {
        match self {
            MeasureFn::Count => "count",
            MeasureFn::CountDistinct => "count_distinct",
            MeasureFn::Sum => "sum",
            MeasureFn::Avg => "avg",
            MeasureFn::Min => "min",
            MeasureFn::Max => "max",
        }
    }
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopConfig {
    pub k: usize,
    /// The measure ranking the groups (largest first; ties by group values).
    pub by: String,
}

impl ComponentConfig for ViewConfig {
    const TYPE: &'static str = "view";
    const SECTION: Section = Section::Operator;
    const DESCRIPTION: &'static str =
        "Live aggregate by group and event-time window (count, distinct, sum, avg, min, max, top-k), as a change stream";
    const ACCEPTS: &'static [StreamKind] = &[StreamKind::Events, StreamKind::Alerts, StreamKind::Cases];
    const OUTPUT: Option<StreamKind> = Some(StreamKind::Views);

    fn build(self, ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        Ok(Built::View(Arc::new(ViewFactoryImpl { spec: Arc::new(self.compile(ctx.component_id)?) })))
    }
}

/// A validated view.
#[derive(Debug)]
struct ViewSpec {
    group_by: Vec<FieldName>,
    /// (size, slide) in ms.
    window: Option<(i64, i64)>,
    /// The distinct fields the measures read, in the order of a key's input values.
    fields: Vec<FieldName>,
    /// Per measure: its function and the index of its field in `fields`.
    measures: Vec<(MeasureFn, Option<usize>)>,
    top: Option<(usize, usize)>,
    /// `where`: per field, the values (as text) a record must have one of.
    filter: Vec<(FieldName, Vec<String>)>,
    /// `diff`: the field holding a record's difference.
    diff: Option<FieldName>,
    shape: Arc<ViewShape>,
}

impl ViewConfig {
    fn compile(self, id: &str) -> anyhow::Result<ViewSpec> {
        if self.measures.is_empty() {
            anyhow::bail!("`measures` is empty: a view needs at least one (e.g. {{name: events, fn: count}})");
        }
        if self.group_by.len() > MAX_GROUP_FIELDS {
            anyhow::bail!("`group_by` has {} fields; at most {MAX_GROUP_FIELDS}", self.group_by.len());
        }
        let window = match &self.window {
            None => None,
            Some(w) => {
                let size = w.size.as_millis().min(i64::MAX as u128) as i64;
                let slide = w.slide.map_or(size, |s| s.as_millis().min(i64::MAX as u128) as i64);
                if size <= 0 || slide <= 0 {
                    anyhow::bail!("`window`: `size` and `slide` must be at least 1ms");
                }
                if slide > size || size % slide != 0 {
                    anyhow::bail!("`window`: `slide` must divide `size` (size {size}ms, slide {slide}ms)");
                }
                if size / slide > MAX_WINDOWS_PER_EVENT {
                    anyhow::bail!(
                        "`window`: size / slide is {}: an event would be in that many windows (at most {MAX_WINDOWS_PER_EVENT})",
                        size / slide
                    );
                }
                Some((size, slide))
            }
        };
        let mut names = BTreeSet::new();
        for m in &self.measures {
            let column = |n: &str| n.trim_start_matches('@').replace('.', "_");
            if ward_engine::view::RESERVED_COLUMNS.contains(&m.name.as_str()) {
                anyhow::bail!("measure `{}`: the name is taken by a column every view has", m.name);
            }
            if self.group_by.iter().any(|g| column(g) == column(&m.name)) {
                anyhow::bail!("measure `{}`: the name is a `group_by` field's", m.name);
            }
        }
        let mut fields: Vec<String> = Vec::new();
        let mut measures = Vec::new();
        for m in &self.measures {
            if m.name.is_empty() || !names.insert(m.name.as_str()) {
                anyhow::bail!("measure `{}`: names must be non-empty and unique", m.name);
            }
            let field = match (m.function, &m.field) {
                (MeasureFn::Count, None) => None,
                (MeasureFn::Count, Some(_)) => {
                    anyhow::bail!("measure `{}`: `count` counts records and takes no `field`", m.name)
                }
                (f, None) => anyhow::bail!("measure `{}`: `{f:?}` needs a `field`", m.name),
                (_, Some(name)) => Some(match fields.iter().position(|f| f == name) {
                    Some(i) => i,
                    None => {
                        fields.push(name.clone());
                        fields.len() - 1
                    }
                }),
            };
            measures.push((m.function, field));
        }
        let top = match &self.top {
            None => None,
            Some(t) => {
                if t.k == 0 || t.k > MAX_TOP_K {
                    anyhow::bail!("`top.k` must be between 1 and {MAX_TOP_K}");
                }
                let Some(by) = self.measures.iter().position(|m| m.name == t.by) else {
                    anyhow::bail!("`top.by`: no measure is named `{}`", t.by);
                };
                Some((t.k, by))
            }
        };
        let shape = Arc::new(ViewShape {
            view: id.to_string(),
            group_by: self.group_by.clone(),
            measures: self.measures.iter().map(|m| m.name.clone()).collect(),
            measure_fns: self.measures.iter().map(|m| (m.function.as_str().to_string(), m.field.clone())).collect(),
            windowed: window.is_some(),
        });
        let mut filter = Vec::new();
        for (field, values) in self.filter {
            let values: Vec<String> = match values {
                OneOrMany::One(v) => vec![v.text()],
                OneOrMany::Many(v) => v.iter().map(Scalar::text).collect(),
            };
            if values.is_empty() {
                anyhow::bail!("`where.{field}`: the list of values is empty (no record would pass)");
            }
            filter.push((FieldName::new(field), values));
        }
        if self.diff.as_deref() == Some("") {
            anyhow::bail!("`diff` names no field");
        }
        Ok(ViewSpec {
            group_by: self.group_by.into_iter().map(FieldName::new).collect(),
            window,
            fields: fields.into_iter().map(FieldName::new).collect(),
            measures,
            top,
            filter,
            diff: self.diff.map(FieldName::new),
            shape,
        })
    }
}

impl ViewSpec {
    /// The windows holding event time `t`, oldest first.
    fn windows(&self, t: i64, out: &mut Vec<Option<(i64, i64)>>) {
        out.clear();
        match self.window {
            None => out.push(None),
            Some((size, slide)) => {
                // The last window starting at or before t, back to the first that still holds t.
                let last = t.div_euclid(slide) * slide;
                let mut start = last.saturating_sub(size - slide);
                while start <= last {
                    out.push(Some((start, start.saturating_add(size))));
                    start += slide;
                }
            }
        }
    }
}

fn from_event(v: Option<Value>, batch: &EventBatch) -> ViewValue {
    let b = batch.bytes();
    match v {
        None | Some(Value::Null) => ViewValue::Null,
        Some(Value::Bool(x)) => ViewValue::Bool(x),
        Some(Value::Int(i)) => ViewValue::Int(i),
        Some(Value::Float(f)) => ViewValue::Float(F64(f)),
        Some(Value::Str(r)) => ViewValue::Str(b.str(r).into()),
        Some(Value::Timestamp(ms)) => ViewValue::Int(ms),
        Some(Value::Ip(r)) => b.ip(r).map_or(ViewValue::Null, |ip| ViewValue::Str(ip.to_compact_string())),
    }
}

/// A case record's field: its own (`kind`, `priority`, `tta_ms`, ...) or an entity key's value
/// (`host.name`, ...).
fn from_case(case: &CaseRecord, name: &str) -> ViewValue {
    let text = |s: &str| ViewValue::Str(s.into());
    let int = |v: Option<i64>| v.map_or(ViewValue::Null, ViewValue::Int);
    match name {
        "kind" => text(case.kind.as_str()),
        "case_id" => text(&case.case_id),
        "priority" => text(&case.priority),
        "score" => ViewValue::Float(F64(case.score)),
        "opened_ms" => ViewValue::Int(case.opened_ms),
        "time_ms" => ViewValue::Int(case.time_ms),
        "deadline_ms" => int(case.deadline_ms),
        "tta_ms" => int(case.tta_ms),
        "ttc_ms" => int(case.ttc_ms),
        "alerts" => ViewValue::Int(case.alerts as i64),
        "sla" => case.sla.map_or(ViewValue::Null, |k| text(k.as_str())),
        "alert_id" => case.alert_id.as_deref().map_or(ViewValue::Null, text),
        "rule_id" | "rule.id" => case.rule_id.as_deref().map_or(ViewValue::Null, text),
        _ => case.entity.iter().find(|(n, _)| n == name).map_or(ViewValue::Null, |(_, v)| text(v)),
    }
}

fn from_alert(alert: &Alert, name: &str) -> ViewValue {
    match alert.field(name) {
        s if s.is_empty() => ViewValue::Null,
        s => ViewValue::Str(s.into()),
    }
}

/// The values of `fields` in a record.
fn values(fields: &[FieldName], record: RecordRef<'_>) -> Vec<ViewValue> {
    fields.iter().map(|f| value(f, record)).collect()
}

/// The value of one field in a record.
fn value(field: &FieldName, record: RecordRef<'_>) -> ViewValue {
    match record {
        RecordRef::Event { batch, row } => from_event(batch.get_field(row, field), batch),
        RecordRef::Alert(alert) => from_alert(alert, field.as_str()),
        RecordRef::Case(case) => from_case(case, field.as_str()),
    }
}

/// Whether `record` passes the view's `where` (strings compared without copying them).
fn passes(filter: &[(FieldName, Vec<String>)], record: RecordRef<'_>) -> bool {
    let text_of = |v: ViewValue| match v {
        ViewValue::Str(s) => s,
        other => other.to_compact_string(),
    };
    filter.iter().all(|(field, allowed)| match record {
        RecordRef::Event { batch, row } => match batch.get_field(row, field) {
            Some(Value::Str(r)) => {
                let s = batch.bytes().str(r);
                allowed.iter().any(|a| a == s)
            }
            other => {
                let t = text_of(from_event(other, batch));
                allowed.iter().any(|a| a.as_str() == t.as_str())
            }
        },
        RecordRef::Alert(alert) => {
            let v = alert.field(field.as_str());
            allowed.iter().any(|a| *a == v)
        }
        RecordRef::Case(case) => {
            let t = text_of(from_case(case, field.as_str()));
            allowed.iter().any(|a| a.as_str() == t.as_str())
        }
    })
}

/// Largest difference one record may carry.
const MAX_DIFF: i64 = 1_000_000;

/// A record's difference: 1, or the integer in its `diff` field (None: not an integer in
/// ±MAX_DIFF, or 0).
fn diff_of(spec: &ViewSpec, record: RecordRef<'_>) -> Option<i64> {
    let Some(field) = &spec.diff else { return Some(1) };
    let d = match value(field, record) {
        ViewValue::Int(i) => i,
        ViewValue::Str(s) => s.trim().parse().ok()?,
        ViewValue::Float(f) if f.0.fract() == 0.0 && f.0.abs() <= MAX_DIFF as f64 => f.0 as i64,
        _ => return None,
    };
    (d != 0 && d.abs() <= MAX_DIFF).then_some(d)
}

/// A record's event time and difference, its group's values into `group` (None: no event
/// time, `where` leaves it out, or it has no difference).
fn read(spec: &ViewSpec, record: RecordRef<'_>, group: &mut Vec<ViewValue>) -> Option<(EventTime, i64)> {
    let time = match record {
        RecordRef::Event { batch, row } => event_time(batch, row)?,
        RecordRef::Alert(alert) => alert.event_time_ms?,
        RecordRef::Case(case) => case.time_ms,
    };
    if !passes(&spec.filter, record) {
        return None;
    }
    let d = diff_of(spec, record)?;
    group.clear();
    group.extend(spec.group_by.iter().map(|f| value(f, record)));
    Some((time, d))
}

struct ViewFactoryImpl {
    spec: Arc<ViewSpec>,
}

impl KeyedOperatorFactory for ViewFactoryImpl {
    fn router(&self, _ctx: &WorkerContext) -> anyhow::Result<Box<dyn Router>> {
        Ok(Box::new(ViewRouter { spec: self.spec.clone(), windows: Vec::new(), group: Vec::new() }))
    }
    fn operator(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn KeyedOperator>> {
        let mut owned = vec![false; KEY_GROUPS as usize];
        for g in owned_groups(ctx.worker_index, ctx.workers) {
            owned[g as usize] = true;
        }
        Ok(Box::new(View {
            spec: self.spec.clone(),
            owned,
            state: HashMap::new(),
            watermark: WATERMARK_MIN,
            epoch_updates: HashMap::default(),
            windows: Vec::new(),
        }))
    }
}

impl ViewFactory for ViewFactoryImpl {
    fn logic(&self) -> Arc<dyn ViewLogic> {
        self.spec.clone()
    }
}

struct ViewRouter {
    spec: Arc<ViewSpec>,
    windows: Vec<Option<(i64, i64)>>,
    /// The routed record's group, reused: routing only hashes it.
    group: Vec<ViewValue>,
}

impl Router for ViewRouter {
    fn projection(&self) -> Option<ward_engine::batch::Projection> {
        // What `read`, `diff_of`, `passes` and the measures' inputs read.
        let s = &self.spec;
        let names = s.group_by.iter().chain(&s.fields).chain(s.diff.iter()).chain(s.filter.iter().map(|(f, _)| f));
        Some(ward_engine::batch::Projection::of(names))
    }

    fn route(&mut self, record: RecordRef<'_>, keys: &mut Vec<u64>) -> Route {
        let Some((time, _)) = read(&self.spec, record, &mut self.group) else {
            // Left out by `where`, or no difference (records without an event time are
            // quarantined by the route stage before it asks).
            return Route::Drop;
        };
        self.spec.windows(time, &mut self.windows);
        keys.extend(self.windows.iter().map(|w| key_hash_of(*w, &self.group)));
        Route::Keyed
    }
}

/// One key group's open keys: per key, its inputs and their multiplicities.
type Groups = HashMap<u16, BTreeMap<ViewKey, BTreeMap<Vec<ViewValue>, i64>>>;

struct View {
    spec: Arc<ViewSpec>,
    owned: Vec<bool>,
    state: Groups,
    /// The watermark as of the last step.
    watermark: EventTime,
    /// This epoch's updates by key and input hash: their index in the output.
    epoch_updates: HashMap<u64, usize, ahash::RandomState>,
    windows: Vec<Option<(i64, i64)>>,
}

impl View {
    fn add(&mut self, record: RecordRef<'_>, out: &mut OperatorOutput) -> bool {
        let mut group = Vec::with_capacity(self.spec.group_by.len());
        let Some((time, d)) = read(&self.spec, record, &mut group) else { return false };
        let input = values(&self.spec.fields, record);
        self.spec.windows(time, &mut self.windows);
        // The keyed stage hands the epoch's updates on when the epoch ends: an empty list is a
        // new epoch.
        if out.view.updates.is_empty() {
            self.epoch_updates.clear();
        }
        // Fixed seeds: a slot's hash only has to be the same within the process.
        let input_hash = ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(&input);
        let mut primary = false;
        let last = self.windows.len().saturating_sub(1);
        for (i, w) in self.windows.iter().enumerate() {
            let hash = key_hash_of(*w, &group);
            let g = key_group(hash);
            if !self.owned[g as usize] {
                continue;
            }
            primary |= i == 0;
            // The group is copied for every window but the last, which takes it.
            let group = if i == last { std::mem::take(&mut group) } else { group.clone() };
            let key = ViewKey { window: *w, group };
            let keys = self.state.entry(g).or_default();
            match keys.get_mut(&key) {
                Some(inputs) => match inputs.get_mut(&input) {
                    Some(n) => {
                        *n += d;
                        if *n == 0 {
                            // A removal met its addition: nothing of it is left to hold.
                            inputs.remove(&input);
                            if inputs.is_empty() {
                                keys.remove(&key);
                            }
                        }
                    }
                    None => {
                        inputs.insert(input.clone(), d);
                    }
                },
                None => {
                    keys.insert(key.clone(), BTreeMap::from([(input.clone(), d)]));
                }
            }
            // One update per key and input per epoch, however many records: differential's
            // work is per update.
            let slot = self.epoch_updates.entry(hash ^ input_hash.rotate_left(17)).or_insert(usize::MAX);
            match out.view.updates.get_mut(*slot) {
                Some(u) if u.key == key && u.input == input => u.diff += d,
                _ => {
                    *slot = out.view.updates.len();
                    out.view.updates.push(ViewUpdate { key, input: input.clone(), diff: d });
                }
            }
        }
        primary
    }

    /// Retracts the inputs of windows that end at or before `upto`.
    fn close(&mut self, upto: EventTime, out: &mut OperatorOutput) {
        if self.spec.window.is_none() {
            return;
        }
        for keys in self.state.values_mut() {
            while let Some(entry) = keys.first_entry() {
                match entry.key().window {
                    Some((_, end)) if end <= upto => {}
                    _ => break,
                }
                let (key, inputs) = entry.remove_entry();
                for (input, n) in inputs {
                    out.view.updates.push(ViewUpdate { key: key.clone(), input, diff: -n });
                }
                out.view.closed.push(key);
            }
        }
        self.state.retain(|_, keys| !keys.is_empty());
    }
}

impl KeyedOperator for View {
    fn process_events(&mut self, batch: EventBatch, out: &mut OperatorOutput) {
        for row in 0..batch.len() {
            if self.add(RecordRef::Event { batch: &batch, row }, out) {
                out.consumed += 1;
            }
        }
    }

    fn process_alert(&mut self, alert: Alert, primary: bool, out: &mut OperatorOutput) {
        self.add(RecordRef::Alert(&alert), out);
        if primary {
            out.consumed += 1;
        }
    }

    fn process_case(&mut self, case: CaseRecord, primary: bool, out: &mut OperatorOutput) {
        self.add(RecordRef::Case(&case), out);
        if primary {
            out.consumed += 1;
        }
    }

    fn advance(&mut self, watermark: EventTime, out: &mut OperatorOutput) {
        // Windows that ended by the previous step close now: every record of this epoch was
        // at or after that watermark, so none of them is in such a window.
        self.close(self.watermark, out);
        self.watermark = watermark;
    }

    fn snapshot_groups(&self, groups: &[u16]) -> anyhow::Result<Vec<(u16, Vec<u8>)>> {
        // State is kept by key group already.
        let mut out = Vec::new();
        for &g in groups {
            if let Some(keys) = self.state.get(&g) {
                let entries: Vec<(&ViewKey, Vec<(&Vec<ViewValue>, i64)>)> =
                    keys.iter().map(|(k, inputs)| (k, inputs.iter().map(|(i, n)| (i, *n)).collect())).collect();
                out.push((g, encode(&(self.watermark, entries))?));
            }
        }
        Ok(out)
    }

    fn restore(&mut self, group: u16, bytes: &[u8]) -> anyhow::Result<()> {
        let (watermark, entries): (EventTime, Vec<(ViewKey, Vec<(Vec<ViewValue>, i64)>)>) = decode(bytes)?;
        self.watermark = self.watermark.max(watermark);
        let keys = self.state.entry(group).or_default();
        for (k, inputs) in entries {
            keys.insert(k, inputs.into_iter().collect());
        }
        Ok(())
    }

    fn restored(&mut self, out: &mut OperatorOutput) {
        for keys in self.state.values() {
            for (key, inputs) in keys {
                for (input, n) in inputs {
                    out.view.updates.push(ViewUpdate { key: key.clone(), input: input.clone(), diff: *n });
                }
            }
        }
    }

    fn live_keys(&self) -> usize {
        self.state.values().map(BTreeMap::len).sum()
    }
}

impl ViewLogic for ViewSpec {
    fn shape(&self) -> Arc<ViewShape> {
        self.shape.clone()
    }

    fn measures(&self, _key: &ViewKey, inputs: &[(&Vec<ViewValue>, isize)]) -> Vec<ViewValue> {
        self.measures.iter().map(|(f, field)| measure(*f, *field, inputs)).collect()
    }

    fn top(&self) -> Option<(usize, usize)> {
        self.top
    }
}

/// One measure of a key from its inputs; `field`: the index of the measured value in an input
/// (`count` has none).
fn measure(f: MeasureFn, field: Option<usize>, inputs: &[(&Vec<ViewValue>, isize)]) -> ViewValue {
    let records = || ViewValue::Int(inputs.iter().map(|(_, n)| *n as i64).sum());
    let Some(i) = field else { return records() };
    // A value removed more often than added (a removal seen before its addition) holds none.
    let values = inputs
        .iter()
        .filter(|(_, n)| *n > 0)
        .filter_map(|(v, n)| v.get(i).filter(|v| **v != ViewValue::Null).map(|v| (v, *n as i64)));
    match f {
        MeasureFn::Count => records(),
        MeasureFn::CountDistinct => ViewValue::Int(values.map(|(v, _)| v).collect::<BTreeSet<_>>().len() as i64),
        MeasureFn::Min => values.map(|(v, _)| v).min().cloned().unwrap_or(ViewValue::Null),
        MeasureFn::Max => values.map(|(v, _)| v).max().cloned().unwrap_or(ViewValue::Null),
        MeasureFn::Sum | MeasureFn::Avg => {
            let (mut int_sum, mut float_sum, mut all_int, mut count) = (0i64, 0f64, true, 0i64);
            for (v, n) in values {
                let Some(x) = v.as_f64() else { continue };
                count += n;
                match v {
                    ViewValue::Int(i) if all_int => match i.checked_mul(n).and_then(|p| int_sum.checked_add(p)) {
                        Some(s) => int_sum = s,
                        None => all_int = false,
                    },
                    _ => all_int = false,
                }
                float_sum += x * n as f64;
            }
            match (f, count) {
                (MeasureFn::Avg, 0) => ViewValue::Null,
                (MeasureFn::Avg, c) => ViewValue::Float(F64(float_sum / c as f64)),
                (_, _) if all_int => ViewValue::Int(int_sum),
                _ => ViewValue::Float(F64(float_sum)),
            }
        }
    }
}

#[cfg(test)]
mod tests;
