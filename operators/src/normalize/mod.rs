//! The `normalize` operator: maps parsed fields to ECS-lite with declarative packs
//! (see [`pack`]). The first pack whose `when` holds handles a record; fields no mapping
//! names stay as extension fields, so nothing in the input is lost.

pub mod builtin;
pub mod coerce;
pub mod pack;
mod select;

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use ward_engine::batch::{Bytes, EventBatch, Heap, Key, Raw, Slot, Value};
use ward_engine::component::{Operator, OperatorFactory, OperatorOutput, StreamKind, WorkerContext};
use ward_engine::fields::{ids, FieldId, FieldType};
use ward_engine::quarantine::Reason;
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};
use ward_engine::resources::Resources;

use self::coerce::{coerce, Input, TsOptions};
use self::pack::{Condition, Const, Mapping, Pack, Target, Test, Transform};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unmatched {
    /// Keep the record with its fields as extension fields (plus event.id and event.kind).
    #[default]
    Keep,
    /// Quarantine records no pack handles (reason `unknown_format`).
    Quarantine,
}

/// Map parsed fields to ECS-lite with normalization packs.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NormalizeConfig {
    /// Pack files (relative to the spec) or built-in packs (`builtin:windows`,
    /// `builtin:aws-cloudtrail`, ...: `ward packs list`). The first pack whose `when` holds
    /// handles a record. Default: every built-in pack, in their precedence order.
    #[serde(default = "builtin::all_refs")]
    pub packs: Vec<String>,
    #[serde(default)]
    pub unmatched: Unmatched,
    /// Copy the raw record into `event.original`.
    #[serde(default)]
    pub keep_original: bool,
}

impl ComponentConfig for NormalizeConfig {
    const TYPE: &'static str = "normalize";
    const SECTION: Section = Section::Operator;
    const DESCRIPTION: &'static str = "Map parsed fields to ECS-lite with declarative packs";
    const ACCEPTS: &'static [StreamKind] = &[StreamKind::Events];
    const OUTPUT: Option<StreamKind> = Some(StreamKind::Events);

    fn build(self, ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        if self.packs.is_empty() {
            anyhow::bail!("`packs` must name at least one pack");
        }
        let packs = load_packs(&self.packs, ctx.resources)?;
        Ok(Built::Operator(Arc::new(NormalizeFactory {
            packs: Arc::new(packs),
            unmatched: self.unmatched,
            keep_original: self.keep_original,
        })))
    }
}

/// Loads packs by file name or `builtin:` name.
pub fn load_packs(names: &[String], resources: &Resources) -> anyhow::Result<Vec<Pack>> {
    names
        .iter()
        .map(|name| {
            let text = match name.strip_prefix("builtin:") {
                Some(b) => builtin::get(b)
                    .ok_or_else(|| {
                        anyhow::anyhow!("unknown built-in pack `{b}`; built-in packs: {}", builtin::names().join(", "))
                    })?
                    .to_string(),
                None => resources.read_string(name)?,
            };
            Pack::from_yaml(name, &text).map_err(|e| anyhow::anyhow!(e))
        })
        .collect()
}

struct NormalizeFactory {
    packs: Arc<Vec<Pack>>,
    unmatched: Unmatched,
    keep_original: bool,
}

impl OperatorFactory for NormalizeFactory {
    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Operator>> {
        Ok(Box::new(Normalizer::new(ctx.component_id.clone(), self.packs.clone(), self.unmatched, self.keep_original)))
    }
}

pub struct Normalizer {
    component: Arc<str>,
    packs: Arc<Vec<Pack>>,
    selector: select::PackSelector,
    unmatched: Unmatched,
    keep_original: bool,
    /// Reused between batches: the rewritten slots, and a string for values read from the heap.
    spare_slots: Vec<Slot>,
    /// Heap bytes added per row in the last batch (reserved at once for the next).
    heap_per_row: usize,
    /// Slots per row in the last batch's output (likewise).
    slots_per_row: usize,
    scratch: String,
    locs: Vec<Option<regex::CaptureLocations>>,
    /// The current event's values of its pack's gated fields ([`pack::RuleGates`]).
    gate_values: Vec<GateValue>,
}

/// A gated field's values in one event.
#[derive(Clone, Copy)]
enum GateValue {
    Absent,
    One(Value),
    /// Several: the rule's conditions are evaluated in full.
    Many,
}

impl Normalizer {
    pub fn new(component: Arc<str>, packs: Arc<Vec<Pack>>, unmatched: Unmatched, keep_original: bool) -> Self {
        Normalizer {
            component,
            selector: select::PackSelector::new(&packs),
            packs,
            unmatched,
            keep_original,
            spare_slots: Vec::new(),
            heap_per_row: 0,
            slots_per_row: 0,
            scratch: String::new(),
            locs: Vec::new(),
            gate_values: Vec::new(),
        }
    }
}

/// Reads a value for coercion. Heap strings are copied into `scratch` first, because
/// coercion may append to the heap.
fn input<'a>(v: Value, raw: Raw<'a>, heap: &Heap<'_>, scratch: &'a mut String) -> Input<'a> {
    match v {
        Value::Null => Input::Null,
        Value::Bool(b) => Input::Bool(b),
        Value::Int(i) => Input::Int(i),
        Value::Float(f) => Input::Float(f),
        Value::Timestamp(t) => Input::Timestamp(t),
        Value::Ip(r) => heap.bytes(raw).ip(r).map(Input::Ip).unwrap_or(Input::Null),
        Value::Str(r) => match raw.str(r) {
            Some(text) => Input::Str(text),
            None => {
                scratch.clear();
                scratch.push_str(heap.bytes(raw).str(r));
                Input::Str(scratch.as_str())
            }
        },
    }
}

fn key_matches(b: Bytes<'_>, key: Key, target: &Target) -> bool {
    match (key, target) {
        (Key::Core(a), Target::Core(t)) => a == *t,
        (Key::Ext(k), Target::Ext(name)) => b.eq(k, name),
        _ => false,
    }
}

fn value_text<'a>(b: Bytes<'a>, v: Value, buf: &'a mut String) -> Option<&'a str> {
    match v {
        Value::Str(r) => Some(b.str(r)),
        Value::Int(i) => {
            buf.clear();
            buf.push_str(itoa::Buffer::new().format(i));
            Some(buf.as_str())
        }
        Value::Bool(x) => Some(if x { "true" } else { "false" }),
        Value::Ip(r) => {
            buf.clear();
            ward_engine::batch::write_ip(buf, b.ip(r)?);
            Some(buf.as_str())
        }
        _ => None,
    }
}

fn holds(b: Bytes<'_>, slots: &[Slot], c: &Condition) -> bool {
    // One loop per kind of field: a core field is a small integer compare per slot.
    match &c.field {
        Target::Core(id) => {
            let key = Key::Core(*id);
            holds_for(b, slots.iter().filter(|s| s.key == key), c)
        }
        Target::Ext(name) => holds_for(b, slots.iter().filter(|s| matches!(s.key, Key::Ext(k) if b.eq(k, name))), c),
    }
}

/// Whether `c` holds for a field whose values are `values`.
fn holds_for<'s>(b: Bytes<'_>, values: impl Iterator<Item = &'s Slot>, c: &Condition) -> bool {
    let mut buf = String::new();
    let mut found = false;
    for s in values {
        found = true;
        if let Test::Exists(want) = c.test {
            return want;
        }
        let Some(text) = value_text(b, s.value, &mut buf) else {
            continue;
        };
        let ok = match &c.test {
            Test::Equals(v) => text == v,
            Test::OneOf(vs) => vs.iter().any(|v| v == text),
            Test::StartsWith(p) => text.starts_with(p.as_str()),
            Test::Contains(p) => text.contains(p.as_str()),
            Test::Matches(r) => r.is_match(text),
            Test::Exists(_) => unreachable!("handled above"),
        };
        if ok {
            return true;
        }
    }
    matches!(c.test, Test::Exists(false)) && !found
}

/// Why a pack did not claim an event: how many of its `when` conditions held, and the first
/// that did not.
#[derive(Clone, Debug, PartialEq)]
pub struct Miss {
    pub pack: usize,
    pub held: usize,
    pub failed: String,
}

/// The pack that claims row `row` of a parsed batch (the first in order whose `when` holds,
/// as the normalize operator picks), or why each pack did not.
pub fn claim(packs: &[Pack], batch: &EventBatch, row: usize) -> Result<usize, Vec<Miss>> {
    let (b, slots) = (batch.bytes(), batch.row_slots(row));
    let mut misses = Vec::new();
    for (i, p) in packs.iter().enumerate() {
        match p.when.iter().position(|c| !holds(b, slots, c)) {
            None => return Ok(i),
            Some(k) => {
                let held = k + p.when[k + 1..].iter().filter(|c| holds(b, slots, c)).count();
                misses.push(Miss { pack: i, held, failed: describe(&p.when[k]) })
            }
        }
    }
    Err(misses)
}

/// A `when` condition in words (`winlog.event_id` exists, `event_type` = "alert", ...).
pub fn describe(c: &Condition) -> String {
    let field = match &c.field {
        Target::Core(id) => id.name().to_string(),
        Target::Ext(n) => n.clone(),
    };
    match &c.test {
        Test::Exists(true) => format!("`{field}` exists"),
        Test::Exists(false) => format!("`{field}` is absent"),
        Test::Equals(v) => format!("`{field}` = {v:?}"),
        Test::OneOf(vs) => format!("`{field}` one of {vs:?}"),
        Test::StartsWith(v) => format!("`{field}` starts with {v:?}"),
        Test::Contains(v) => format!("`{field}` contains {v:?}"),
        Test::Matches(r) => format!("`{field}` matches /{}/", r.as_str()),
    }
}

fn target_key(heap: &mut Heap<'_>, t: &Target) -> Key {
    match t {
        Target::Core(id) => Key::Core(*id),
        Target::Ext(name) => Key::Ext(heap.push_str(name)),
    }
}

/// Applies one mapping to a value, pushing the resulting slot.
#[allow(clippy::too_many_arguments)]
fn apply_mapping(
    m: &Mapping,
    pack: &Pack,
    v: Value,
    raw: Raw<'_>,
    heap: &mut Heap<'_>,
    scratch: &mut String,
    out: &mut Vec<Slot>,
) -> Result<(), (Reason, String)> {
    let ty = m.to.field_type();
    let value = match (ty, v) {
        // A plain string rename references the same bytes.
        (FieldType::Str, Value::Str(r)) if !m.lowercase && !m.uppercase && m.transform.is_none() => Value::Str(r),
        (FieldType::Str, Value::Str(r)) => {
            scratch.clear();
            let text = heap.bytes(raw).str(r);
            let text = match m.transform {
                Some(Transform::Basename) => text.rsplit(['\\', '/']).next().unwrap_or(text),
                None => text,
            };
            scratch.push_str(text);
            if m.lowercase {
                scratch.make_ascii_lowercase();
            }
            if m.uppercase {
                scratch.make_ascii_uppercase();
            }
            Value::Str(heap.push_str(scratch))
        }
        _ => {
            let mut local = String::new();
            let inp = input(v, raw, heap, &mut local);
            let formats = m.formats.as_deref().unwrap_or(&pack.formats);
            match coerce(ty, inp, &TsOptions { formats, timezone: pack.timezone }, heap) {
                Ok(v) => v,
                // A lenient mapping leaves a value of the wrong shape where it was.
                Err(_) if m.lenient => return Ok(()),
                Err((r, d)) => return Err((r, format!("{}: {d}", target_name(&m.to)))),
            }
        }
    };
    let key = target_key(heap, &m.to);
    out.push(Slot { key, value });
    Ok(())
}

fn is_null_marker(pack: &Pack, b: Bytes<'_>, v: Value) -> bool {
    match v {
        Value::Null => true,
        Value::Str(r) => !pack.null_values.is_empty() && pack.null_values.iter().any(|n| b.eq(r, n)),
        _ => false,
    }
}

/// An input field under the name the pack gives it (`rename`, `rename_prefixes`,
/// `nest_unmapped`), before any mapping; unchanged when the pack renames nothing.
fn rename_input(pack: &Pack, s: Slot, raw: Raw<'_>, heap: &mut Heap<'_>, scratch: &mut String) -> Slot {
    let Key::Ext(k) = s.key else { return s };
    if !pack.renames() {
        return s;
    }
    let b = heap.bytes(raw);
    let name = b.str(k);
    // Ward's own fields (`ward.parser`, ...) are not the input's.
    if name.starts_with("ward.") {
        return s;
    }
    scratch.clear();
    if let Some(to) = pack.rename.get(name.as_bytes()) {
        scratch.push_str(to);
    } else if let Some((from, to)) = pack.rename_prefixes.iter().find(|(from, _)| name.starts_with(from.as_str())) {
        scratch.push_str(to);
        scratch.push_str(&name[from.len()..]);
    } else if let Some(under) = pack.nest_unmapped.as_deref().filter(|u| !name.starts_with(*u)) {
        scratch.push_str(under);
        scratch.push_str(name);
    } else {
        return s;
    }
    Slot { key: Key::Ext(heap.push_str(scratch)), value: s.value }
}

impl Normalizer {
    /// Rewrites one row's slots into `out`. Returns Err to quarantine the row.
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        pack: &Pack,
        old: &[Slot],
        raw: Raw<'_>,
        heap: &mut Heap<'_>,
        out: &mut Vec<Slot>,
        start: usize,
    ) -> Result<(), (Reason, String)> {
        // Field mappings, on the names the pack gives its input.
        for s in old {
            let s = &rename_input(pack, *s, raw, heap, &mut self.scratch);
            let mapped = match s.key {
                Key::Ext(k) => {
                    let b = heap.bytes(raw);
                    pack.mappings.get(b.bytes(k)).filter(|_| !is_null_marker(pack, b, s.value))
                }
                Key::Core(_) => None,
            };
            match mapped {
                None => out.push(*s),
                Some(ms) => {
                    for m in ms {
                        apply_mapping(m, pack, s.value, raw, heap, &mut self.scratch, out)?;
                    }
                    if ms.iter().any(|m| m.copy || m.lenient) {
                        out.push(*s);
                    }
                }
            }
        }
        // The gated fields' values: no rule writes them, so they hold for every rule.
        let gates = &pack.gates;
        self.gate_values.clear();
        self.gate_values.resize(gates.fields.len(), GateValue::Absent);
        if !gates.fields.is_empty() {
            for s in &out[start..] {
                let Key::Core(id) = s.key else { continue };
                if let Some(i) = gates.fields.iter().position(|f| *f == id) {
                    self.gate_values[i] = match self.gate_values[i] {
                        GateValue::Absent => GateValue::One(s.value),
                        _ => GateValue::Many,
                    };
                }
            }
        }
        // Rules, in order, each seeing what the ones before it did.
        for (ri, rule) in pack.rules.iter().enumerate() {
            if let Some((field, cond)) = gates.by_rule[ri] {
                let open = match self.gate_values[field] {
                    GateValue::Absent => false,
                    GateValue::One(value) => {
                        let slot = Slot { key: Key::Core(gates.fields[field]), value };
                        holds_for(heap.bytes(raw), std::iter::once(&slot), &rule.when[cond])
                    }
                    GateValue::Many => true,
                };
                if !open {
                    continue;
                }
            }
            let ok = rule.when.iter().all(|c| holds(heap.bytes(raw), &out[start..], c));
            if !ok {
                continue;
            }
            for (t, c) in &rule.set {
                let value = match c {
                    Const::Str(x) => Value::Str(heap.push_str(x)),
                    Const::Int(i) => Value::Int(*i),
                    Const::Float(f) => Value::Float(*f),
                    Const::Bool(b) => Value::Bool(*b),
                    Const::Ip(ip) => Value::Ip(heap.push_ip(*ip)),
                    Const::Timestamp(ms) => Value::Timestamp(*ms),
                };
                let key = target_key(heap, t);
                remove_key(out, start, key, heap.bytes(raw));
                out.push(Slot { key, value });
            }
            for (from, m) in &rule.fields {
                let found = out[start..]
                    .iter()
                    .find(|s| matches!(s.key, Key::Ext(k) if heap.bytes(raw).eq(k, from)))
                    .map(|s| s.value);
                if let Some(v) = found {
                    if !is_null_marker(pack, heap.bytes(raw), v) {
                        apply_mapping(m, pack, v, raw, heap, &mut self.scratch, out)?;
                    }
                }
            }
            if let Some(x) = &rule.extract {
                let src = out[start..].iter().find(|s| key_matches(heap.bytes(raw), s.key, &x.from)).map(|s| s.value);
                if let Some(Value::Str(r)) = src {
                    if self.locs.len() <= ri {
                        self.locs.resize_with(ri + 1, || None);
                    }
                    let locs = self.locs[ri].get_or_insert_with(|| x.regex.capture_locations());
                    self.scratch.clear();
                    self.scratch.push_str(heap.bytes(raw).str(r));
                    if x.regex.captures_read(locs, &self.scratch).is_some() {
                        let text = std::mem::take(&mut self.scratch);
                        for (group, target) in &x.groups {
                            if let Some((a, b)) = locs.get(*group) {
                                let ts = TsOptions { formats: &pack.formats, timezone: pack.timezone };
                                let value = coerce(target.field_type(), Input::Str(&text[a..b]), &ts, heap)
                                    .map_err(|(r, d)| (r, format!("{}: {d}", target_name(target))))?;
                                let key = target_key(heap, target);
                                out.push(Slot { key, value });
                            }
                        }
                        self.scratch = text;
                    }
                }
            }
        }
        if let Some(module) = &pack.module {
            if !out[start..].iter().any(|s| s.key == Key::Core(ids::EVENT_MODULE)) {
                let r = heap.push_str(module);
                out.push(Slot { key: Key::Core(ids::EVENT_MODULE), value: Value::Str(r) });
            }
        }
        for req in &pack.required {
            if !out[start..].iter().any(|s| s.key == Key::Core(*req)) {
                return Err((
                    Reason::MissingField,
                    format!("pack {}: required field {} is missing", pack.name, req.name()),
                ));
            }
        }
        Ok(())
    }
}

fn target_name(t: &Target) -> &str {
    match t {
        Target::Core(id) => id.name(),
        Target::Ext(n) => n,
    }
}

fn remove_key(out: &mut Vec<Slot>, start: usize, key: Key, b: Bytes<'_>) {
    let mut i = start;
    while i < out.len() {
        let same = match (out[i].key, key) {
            (Key::Core(a), Key::Core(c)) => a == c,
            (Key::Ext(a), Key::Ext(c)) => a.len() == c.len() && b.bytes(a) == b.bytes(c),
            _ => false,
        };
        if same {
            out.remove(i);
        } else {
            i += 1;
        }
    }
}

/// A stable id from provenance, for events whose source gives none.
pub fn provenance_id(source: &str, partition: &str, offset: u64) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(source.as_bytes());
    h.update(&[0]);
    h.update(partition.as_bytes());
    h.update(&[0]);
    h.update(&offset.to_le_bytes());
    h.digest()
}

impl Operator for Normalizer {
    fn process(&mut self, mut batch: EventBatch, _epoch: u64, out: &mut OperatorOutput) {
        let packs = self.packs.clone();
        let need = (batch.slots().len() + batch.len() * 4).max(batch.len() * self.slots_per_row);
        let mut new_slots = ward_engine::batch::slots_with_room(std::mem::take(&mut self.spare_slots), need);
        let mut rejected: Vec<(usize, Reason, String)> = Vec::new();
        let mut keep = vec![true; batch.len()];
        let parts = batch.parts();
        let (raw, mut heap, slots, rows, origins) = (parts.raw, parts.heap, parts.slots, parts.rows, parts.origins);
        let heap_before = heap.len();
        heap.reserve(rows.len() * self.heap_per_row);
        for (i, kept) in keep.iter_mut().enumerate() {
            let row = rows[i];
            let old = &slots[row.slots_start as usize..row.slots_end as usize];
            let start = new_slots.len();
            let b = heap.bytes(raw);
            let pack =
                self.selector.candidates(b, old).map(|i| &packs[i]).find(|p| p.when.iter().all(|c| holds(b, old, c)));
            let result = match pack {
                Some(p) => self.row(p, old, raw, &mut heap, &mut new_slots, start),
                None if self.unmatched == Unmatched::Quarantine => {
                    Err((Reason::UnknownFormat, "no normalization pack handles this record".into()))
                }
                None => {
                    new_slots.extend_from_slice(old);
                    Ok(())
                }
            };
            if let Err((reason, detail)) = result {
                new_slots.truncate(start);
                *kept = false;
                rejected.push((i, reason, detail));
                continue;
            }
            let has = |f: FieldId, s: &[Slot]| s.iter().any(|x| x.key == Key::Core(f));
            if !has(ids::EVENT_ID, &new_slots[start..]) {
                let o = &origins[row.origin as usize];
                let id = provenance_id(&o.source, &o.partition, row.offset);
                let mut hex = [0u8; 16];
                for (j, byte) in id.to_be_bytes().iter().enumerate() {
                    const DIGITS: &[u8; 16] = b"0123456789abcdef";
                    hex[2 * j] = DIGITS[(byte >> 4) as usize];
                    hex[2 * j + 1] = DIGITS[(byte & 15) as usize];
                }
                let r = heap.push_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"));
                new_slots.push(Slot { key: Key::Core(ids::EVENT_ID), value: Value::Str(r) });
            }
            if !has(ids::EVENT_KIND, &new_slots[start..]) {
                let r = heap.push_str("event");
                new_slots.push(Slot { key: Key::Core(ids::EVENT_KIND), value: Value::Str(r) });
            }
            if self.keep_original {
                // The payload is bytes until shown to be text (parse has, for surviving rows).
                if let Ok(text) = simdutf8::basic::from_utf8(raw.payload(row.raw)) {
                    let r = ward_engine::batch::raw_ref(raw, text).expect("payload lies in raw");
                    new_slots.push(Slot { key: Key::Core(ids::EVENT_ORIGINAL), value: Value::Str(r) });
                }
            }
            let r = &mut rows[i];
            r.slots_start = start as u32;
            r.slots_end = new_slots.len() as u32;
        }
        self.heap_per_row = (heap.len() - heap_before).div_ceil(rows.len().max(1));
        self.slots_per_row = new_slots.len().div_ceil(rows.len().max(1));
        self.spare_slots = std::mem::replace(slots, new_slots);
        out.emit(batch, &keep, rejected, &self.component);
    }
}

#[cfg(test)]
mod tests;
