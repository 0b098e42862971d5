//! Exact sliding windows on event time, per (correlation rule, group).
//!
//! Every contributing alert is an entry `(event time, alert id, aux)` in its group, kept in
//! event-time order (ties by alert id). When the watermark passes an entry, the entry is
//! evaluated as a window end: the window is `(t - timespan, t]` over the group's entries, so a
//! burst that straddles any bucket edge is seen whole. When the condition holds the rule fires
//! and the window's entries are consumed (the next alert needs a fresh set). Entries no future
//! window can reach are released, and with them the group.
//!
//! Evaluation waits for the watermark, so the outputs depend only on the set of inputs within
//! the lateness bound, not on their arrival order, epoch boundaries or the worker count.
//!
//! Memory: with a million live groups the hash table's power-of-two sizing dominates, so the
//! table maps a key to a slot (12 bytes a bucket) in a dense slab of groups, a group keeps up
//! to two entries inline, and each group has exactly one live timer.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use ward_engine::alert::{priority_for_level, Alert, AlertOrigin, CorrelationInfo};
use ward_engine::component::OperatorOutput;
use ward_engine::key_groups::{hash_key, key_group, KEY_GROUPS};
use ward_engine::time::{EventTime, WATERMARK_MIN};

use crate::sigma::correlation::{Correlation, CorrelationSet, Kind};

/// Contributing alerts listed in a correlation alert, at most.
pub const MAX_CONTRIBUTING: usize = 1000;

/// The group-by values separator in a group's key text.
const SEP: char = '\u{1f}';

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    t: EventTime,
    /// The alert id (128 bits).
    id: [u64; 2],
    /// Input slot (temporal), value hash (value_count) or value bits (value_sum/avg/percentile).
    aux: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Group {
    /// Group-by values joined by U+001F (inline up to 24 bytes).
    values: CompactString,
    /// Sorted by (t, id).
    entries: SmallVec<[Entry; 2]>,
    /// `entries[..processed]` were evaluated as window ends.
    processed: u32,
    /// When the group's timer is due; other timers for it are stale.
    #[serde(skip, default = "no_timer")]
    due: EventTime,
}

fn no_timer() -> EventTime {
    EventTime::MAX
}

impl Group {
    fn pending(&self) -> Option<EventTime> {
        self.entries.get(self.processed as usize).map(|e| e.t)
    }
}

/// A rule set's correlations, the windows of the key groups one worker owns, and timers.
pub struct Windows {
    set: Arc<CorrelationSet>,
    version: Arc<str>,
    component: Arc<str>,
    /// Owned key groups (all of them outside a dataflow).
    owned: Vec<bool>,
    /// Per correlation: group key → slot in `slab`.
    index: Vec<HashMap<u64, u32>>,
    slab: Vec<Group>,
    /// Free slots of `slab`.
    free: Vec<u32>,
    /// Per correlation: (due, key), due when the watermark passes `due`.
    timers: Vec<BinaryHeap<Reverse<(EventTime, u64)>>>,
    /// Correlations by level (chains after the correlations they reference).
    by_level: Vec<Vec<u32>>,
    watermark: EventTime,
    values: String,
    scratch: Vec<u64>,
    emit_absorbed: bool,
}

/// Parses an alert id (32 hex digits) into 128 bits; other ids are hashed.
fn id_bits(id: &str) -> [u64; 2] {
    match u128::from_str_radix(id, 16) {
        Ok(v) if id.len() == 32 => [(v >> 64) as u64, v as u64],
        _ => {
            let v = xxhash_rust::xxh3::xxh3_128(id.as_bytes());
            [(v >> 64) as u64, v as u64]
        }
    }
}

fn id_text(id: [u64; 2]) -> String {
    format!("{:016x}{:016x}", id[0], id[1])
}

/// Writes the group-by values of `alert` for `fields` into `out` (joined by U+001F) and returns
/// the key, or `None` if a field is missing.
pub fn group_key(alert: &Alert, fields: &[String], out: &mut String) -> Option<u64> {
    out.clear();
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (i, f) in fields.iter().enumerate() {
        let v = alert.fields.iter().find(|(n, _)| n == f)?;
        if i > 0 {
            out.push(SEP);
        }
        out.push_str(&v.1);
        h.update(v.1.as_bytes());
        h.update(&[0x1f]);
    }
    Some(h.digest())
}

fn value_of<'a>(alert: &'a Alert, field: &Option<String>) -> Option<&'a str> {
    let f = field.as_ref()?;
    alert.fields.iter().find(|(n, _)| n == f).map(|(_, v)| v.as_str())
}

impl Windows {
    pub fn new(set: Arc<CorrelationSet>, version: Arc<str>, component: Arc<str>, owned: Vec<bool>) -> Self {
        let correlations = set.rules.len();
        let by_level = levels_of(&set);
        Windows {
            set,
            version,
            component,
            owned,
            index: (0..correlations).map(|_| HashMap::new()).collect(),
            slab: Vec::new(),
            free: Vec::new(),
            timers: (0..correlations).map(|_| BinaryHeap::new()).collect(),
            by_level,
            watermark: WATERMARK_MIN,
            values: String::new(),
            scratch: Vec::new(),
            emit_absorbed: false,
        }
    }

    /// Every key group (single process, tests, `ward rules test`).
    pub fn all_groups() -> Vec<bool> {
        vec![true; KEY_GROUPS as usize]
    }

    /// Also emit the alerts of correlations that only feed `generate: false` chains
    /// (`ward rules test` shows every correlation that fired).
    pub fn emit_absorbed(&mut self, yes: bool) {
        self.emit_absorbed = yes;
    }

    pub fn set(&self) -> &Arc<CorrelationSet> {
        &self.set
    }

    pub fn live_keys(&self) -> usize {
        self.index.iter().map(|m| m.len()).sum()
    }

    pub fn watermark(&self) -> EventTime {
        self.watermark
    }

    /// Adds an alert to the windows of every correlation it feeds whose group this worker
    /// owns. Returns whether it fed any.
    pub fn add(&mut self, alert: &Alert) -> bool {
        let set = self.set.clone();
        let Some(feeds) = set.inputs_of.get(&alert.rule.id) else { return false };
        let Some(t) = alert.event_time_ms else { return false };
        let id = id_bits(&alert.alert_id);
        let mut fed = false;
        for &(ci, si) in feeds {
            let c = &set.rules[ci as usize];
            let input = &c.inputs[si as usize];
            let mut values = std::mem::take(&mut self.values);
            let Some(key) = group_key(alert, &input.group_fields, &mut values) else {
                self.values = values;
                continue;
            };
            if self.owned[key_group(key) as usize] {
                if let Some(aux) = aux_for(c, si, value_of(alert, &input.value_field)) {
                    self.insert(ci, key, &values, Entry { t, id, aux });
                    fed = true;
                }
            }
            self.values = values;
        }
        fed
    }

    /// The slot of a new group.
    fn allocate(&mut self, g: Group) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                self.slab[slot as usize] = g;
                slot
            }
            None => {
                self.slab.push(g);
                (self.slab.len() - 1) as u32
            }
        }
    }

    fn release(&mut self, ci: u32, key: u64) {
        if let Some(slot) = self.index[ci as usize].remove(&key) {
            let g = &mut self.slab[slot as usize];
            g.entries = SmallVec::new();
            g.values = CompactString::default();
            self.free.push(slot);
        }
    }

    /// Makes the group's timer due at `due` (if earlier than the one it has).
    fn schedule(&mut self, ci: u32, key: u64, slot: u32, due: EventTime) {
        let g = &mut self.slab[slot as usize];
        if due < g.due {
            g.due = due;
            self.timers[ci as usize].push(Reverse((due, key)));
        }
    }

    fn insert(&mut self, ci: u32, key: u64, values: &str, e: Entry) {
        let slot = match self.index[ci as usize].get(&key) {
            Some(&slot) => slot,
            None => {
                let g = Group {
                    values: CompactString::new(values),
                    entries: SmallVec::new(),
                    processed: 0,
                    due: no_timer(),
                };
                let slot = self.allocate(g);
                self.index[ci as usize].insert(key, slot);
                slot
            }
        };
        let g = &mut self.slab[slot as usize];
        let pos = g.entries.iter().rposition(|x| (x.t, x.id) <= (e.t, e.id)).map_or(0, |p| p + 1);
        let pos = pos.max(g.processed as usize);
        g.entries.insert(pos, e);
        let pending = g.pending().unwrap_or(e.t);
        self.schedule(ci, key, slot, pending);
    }

    /// The watermark passed `watermark`: evaluates every window that ends before it, level by
    /// level so that chained correlations see the alerts of the ones they reference.
    pub fn advance(&mut self, watermark: EventTime, out: &mut OperatorOutput) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        for level in 0..self.by_level.len() {
            for i in 0..self.by_level[level].len() {
                self.fire(self.by_level[level][i], watermark, out);
            }
        }
    }

    /// Evaluates the groups of correlation `ci` whose timers are due.
    fn fire(&mut self, ci: u32, watermark: EventTime, out: &mut OperatorOutput) {
        while let Some(Reverse((due, key))) = self.timers[ci as usize].peek().copied() {
            if due >= watermark {
                break;
            }
            self.timers[ci as usize].pop();
            let Some(&slot) = self.index[ci as usize].get(&key) else { continue };
            if self.slab[slot as usize].due != due {
                continue; // superseded by an earlier timer
            }
            self.slab[slot as usize].due = no_timer();
            self.evaluate(ci, key, slot, out);
        }
    }

    fn evaluate(&mut self, ci: u32, key: u64, slot: u32, out: &mut OperatorOutput) {
        let set = self.set.clone();
        let c = &set.rules[ci as usize];
        let wm = self.watermark;
        let g = &mut self.slab[slot as usize];
        let mut fired: Vec<Alert> = Vec::new();
        while (g.processed as usize) < g.entries.len() && g.entries[g.processed as usize].t < wm {
            let i = g.processed as usize;
            let t = g.entries[i].t;
            let start = g.entries[..=i].partition_point(|e| e.t <= t - c.timespan_ms);
            g.processed += 1;
            let window = &g.entries[start..=i];
            let Some((value, used)) = evaluate_window(c, window, &mut self.scratch) else { continue };
            fired.push(alert_of(&self.version, &self.component, c, &g.values, window, &used, value));
            // The window's entries are spent: the next alert needs a fresh set.
            g.entries.drain(..=i);
            g.processed = 0;
        }
        // Entries no later window can reach: windows end at or after the watermark.
        let keep_after = wm.saturating_sub(c.timespan_ms);
        let expired = g.entries[..g.processed as usize].iter().take_while(|e| e.t <= keep_after).count();
        if expired > 0 {
            g.entries.drain(..expired);
            g.processed -= expired as u32;
        }
        if g.entries.is_empty() {
            self.release(ci, key);
        } else {
            let due = due_of(g, c.timespan_ms, wm);
            self.schedule(ci, key, slot, due.max(wm));
        }
        for a in fired {
            self.chain(&a);
            if self.emit_absorbed || !self.set.absorbed.contains(&a.rule.id) {
                out.alerts.push(a);
            }
        }
    }

    /// A correlation alert feeds the correlations that reference its rule (same group key).
    fn chain(&mut self, a: &Alert) {
        if self.set.inputs_of.contains_key(&a.rule.id) {
            self.add(a);
        }
    }
}

/// Correlation indices grouped by level.
fn levels_of(set: &CorrelationSet) -> Vec<Vec<u32>> {
    let mut levels = vec![Vec::new(); set.max_level() + 1];
    for (ci, c) in set.rules.iter().enumerate() {
        levels[c.level].push(ci as u32);
    }
    levels
}

/// When a group's timer is due: its first entry not yet evaluated, else when no window can
/// reach its newest entry (release).
fn due_of(g: &Group, timespan_ms: i64, otherwise: EventTime) -> EventTime {
    match g.pending() {
        Some(t) => t,
        None => g.entries.last().map(|e| e.t + timespan_ms - 1).unwrap_or(otherwise),
    }
}

/// The alert a correlation raises for a window.
fn alert_of(
    version: &str,
    component: &str,
    c: &Correlation,
    values: &str,
    window: &[Entry],
    used: &[usize],
    value: f64,
) -> Alert {
    {
        let end = window.last().map(|e| e.t).unwrap_or_default();
        let start = used.first().map(|&i| window[i].t).unwrap_or(end);
        let contributing: Vec<String> = used.iter().take(MAX_CONTRIBUTING).map(|&i| id_text(window[i].id)).collect();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in [c.rule.id.as_bytes(), values.as_bytes(), &end.to_le_bytes(), contributing[0].as_bytes()] {
            h.update(part);
            h.update(&[0]);
        }
        let group_by: Vec<(String, String)> =
            c.group_by.iter().cloned().zip(values.split(SEP).map(str::to_string)).collect();
        Alert {
            alert_id: format!("{:032x}", h.digest128()),
            rule: c.rule.clone(),
            priority: priority_for_level(&c.rule.level),
            ruleset_version: version.to_string(),
            detector: component.to_string(),
            matches: Vec::new(),
            event_id: None,
            event_time_ms: Some(end),
            origin: AlertOrigin { source: component.to_string(), partition: c.rule.id.clone(), offset: end as u64 },
            event: None,
            fields: group_by.clone(),
            correlation: Some(CorrelationInfo {
                kind: c.kind.name().to_string(),
                group_by,
                window_start_ms: start,
                window_end_ms: end,
                value,
                condition: c.condition.clone(),
                contributing,
            }),
            suppression: None,
        }
    }
}

impl Windows {
    /// The state of each of `groups` holding any, reading the windows once.
    pub fn snapshot_groups(&self, groups: &[u16]) -> anyhow::Result<Vec<(u16, Vec<u8>)>> {
        let all = self.index.iter().enumerate().flat_map(|(ci, index)| {
            let fingerprint = self.set.rules[ci].fingerprint;
            index.iter().map(move |(key, slot)| (*key, (fingerprint, &self.slab[*slot as usize])))
        });
        let mut out = Vec::new();
        for (g, items) in ward_engine::key_groups::split_by_group(all, groups) {
            let mut items: Vec<(u64, u64, &Group)> = items.into_iter().map(|(k, (f, w))| (f, k, w)).collect();
            items.sort_by_key(|(f, k, _)| (*f, *k));
            out.push((g, ward_engine::keyed::encode(&(self.watermark, items))?));
        }
        Ok(out)
    }

    /// Loads a key group's state; groups of correlations the running set no longer has (or
    /// defines differently) are dropped.
    pub fn restore(&mut self, group: u16, bytes: &[u8]) -> anyhow::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let (watermark, items): (EventTime, Vec<(u64, u64, Group)>) = ward_engine::keyed::decode(bytes)?;
        self.watermark = self.watermark.max(watermark);
        let by_fingerprint: HashMap<u64, u32> =
            self.set.rules.iter().enumerate().map(|(i, c)| (c.fingerprint, i as u32)).collect();
        for (fingerprint, key, g) in items {
            if key_group(key) != group {
                anyhow::bail!("key group {group} holds a key of group {}", key_group(key));
            }
            let Some(&ci) = by_fingerprint.get(&fingerprint) else { continue };
            self.adopt(ci, key, g);
        }
        Ok(())
    }

    /// Takes in a group (restored or carried over a rule-set switch) and schedules it.
    fn adopt(&mut self, ci: u32, key: u64, mut g: Group) {
        let c = &self.set.rules[ci as usize];
        let due = due_of(&g, c.timespan_ms, self.watermark);
        g.due = no_timer();
        let slot = self.allocate(g);
        self.index[ci as usize].insert(key, slot);
        self.schedule(ci, key, slot, due);
    }

    /// Switches to a new rule set, keeping the windows of correlations it defines unchanged.
    pub fn replace_set(&mut self, set: Arc<CorrelationSet>, version: Arc<str>) {
        let old = std::mem::replace(&mut self.set, set);
        self.version = version;
        let by_fingerprint: HashMap<u64, u32> =
            self.set.rules.iter().enumerate().map(|(i, c)| (c.fingerprint, i as u32)).collect();
        let index = std::mem::replace(&mut self.index, (0..self.set.rules.len()).map(|_| HashMap::new()).collect());
        let mut slab = std::mem::take(&mut self.slab);
        self.free.clear();
        self.timers = (0..self.set.rules.len()).map(|_| BinaryHeap::new()).collect();
        self.by_level = levels_of(&self.set);
        for (ci, groups) in index.into_iter().enumerate() {
            let Some(&new) = by_fingerprint.get(&old.rules[ci].fingerprint) else { continue };
            for (key, slot) in groups {
                let g = std::mem::replace(
                    &mut slab[slot as usize],
                    Group { values: CompactString::default(), entries: SmallVec::new(), processed: 0, due: no_timer() },
                );
                self.adopt(new, key, g);
            }
        }
    }

    /// The key hashes an alert touches (for routing).
    pub fn keys_of(set: &CorrelationSet, alert: &Alert, keys: &mut Vec<u64>, scratch: &mut String) {
        let Some(feeds) = set.inputs_of.get(&alert.rule.id) else { return };
        for &(ci, si) in feeds {
            let input = &set.rules[ci as usize].inputs[si as usize];
            if let Some(k) = group_key(alert, &input.group_fields, scratch) {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
    }

    /// Test helper: the key of group-by values.
    pub fn key_of(values: &[&str]) -> u64 {
        hash_key(values.iter().map(|v| v.as_bytes()))
    }
}

/// The per-entry datum a correlation keeps; `None` when the alert lacks a usable value.
fn aux_for(c: &Correlation, slot: u8, value: Option<&str>) -> Option<u64> {
    match c.kind {
        Kind::EventCount => Some(0),
        Kind::Temporal(_) | Kind::TemporalOrdered => Some(slot as u64),
        Kind::ValueCount => Some(xxhash_rust::xxh3::xxh3_64(value?.as_bytes())),
        Kind::ValueSum | Kind::ValueAvg | Kind::ValuePercentile(_) => {
            let v: f64 = value?.trim().parse().ok()?;
            v.is_finite().then(|| v.to_bits())
        }
    }
}

/// Whether the window (ending at its last entry) meets the condition: the value and the
/// indices of the entries that made it.
fn evaluate_window(c: &Correlation, window: &[Entry], scratch: &mut Vec<u64>) -> Option<(f64, Vec<usize>)> {
    let all = || (0..window.len()).collect::<Vec<_>>();
    match &c.kind {
        Kind::EventCount => {
            let n = window.len() as f64;
            c.holds(n).then(|| (n, all()))
        }
        Kind::ValueCount => {
            scratch.clear();
            scratch.extend(window.iter().map(|e| e.aux));
            scratch.sort_unstable();
            scratch.dedup();
            let n = scratch.len() as f64;
            c.holds(n).then(|| (n, all()))
        }
        Kind::ValueSum | Kind::ValueAvg | Kind::ValuePercentile(_) => {
            let values = window.iter().map(|e| f64::from_bits(e.aux));
            let v = match c.kind {
                Kind::ValueSum => values.sum(),
                Kind::ValueAvg => values.sum::<f64>() / window.len() as f64,
                Kind::ValuePercentile(p) => {
                    let mut xs: Vec<f64> = values.collect();
                    xs.sort_by(f64::total_cmp);
                    // Nearest rank.
                    let rank = ((p / 100.0) * xs.len() as f64).ceil().max(1.0) as usize;
                    xs[rank.min(xs.len()) - 1]
                }
                _ => unreachable!(),
            };
            c.holds(v).then(|| (v, all()))
        }
        Kind::Temporal(presence) => {
            let present = window.iter().fold(0u64, |m, e| m | (1 << e.aux));
            let n = present.count_ones() as f64;
            let every = if c.inputs.len() == 64 { u64::MAX } else { (1u64 << c.inputs.len()) - 1 };
            let ok = match presence {
                Some(p) => p.eval(present),
                None if c.predicates.is_empty() => present == every,
                None => c.holds(n),
            };
            ok.then(|| (n, all()))
        }
        Kind::TemporalOrdered => {
            // Greedy earliest match of the steps in order; the window's last entry must
            // complete it (an earlier completion fired already).
            let steps = c.inputs.len() as u64;
            let mut next = 0u64;
            let mut used = Vec::new();
            for (i, e) in window.iter().enumerate() {
                if e.aux == next {
                    used.push(i);
                    next += 1;
                    if next == steps {
                        break;
                    }
                }
            }
            (next == steps && used.last() == Some(&(window.len() - 1))).then_some((steps as f64, used))
        }
    }
}
