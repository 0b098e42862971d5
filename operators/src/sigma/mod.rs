//! `sigma-match`: evaluates Sigma rules on normalized events and emits alerts (docs/architecture.md §6).
//!
//! Rules are parsed by `rsigma-parser`, lowered and compiled into one cross-rule [`Matcher`]
//! (see `matcher.rs`), and swapped on every worker at the same epoch when the rule files change
//! or `POST /rules/reload` is called. A new set that adds rejected rules is refused and the
//! running set stays.

pub mod bounded_regex;
pub mod carry;
pub mod compile;
pub mod correlation;
pub mod mapping;
pub mod matcher;
pub mod ruleset;
pub mod sigma1;
pub mod values;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use ward_engine::alert::{priority_for_level, Alert, AlertOrigin};
use ward_engine::batch::{EventBatch, Key, Value};
use ward_engine::component::{Operator, OperatorFactory, OperatorOutput, StreamKind, WorkerContext};
use ward_engine::fields::ids;
use ward_engine::metrics::ComponentMetrics;
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};
use ward_engine::reload::{ReloadHandle, ReloadSpec, Versioned};
use ward_engine::resources::Resources;

pub use compile::{CompileOptions, PlaceholdersMissing, Status, Unrouted};
pub use ruleset::{compile_files, read_rule_files, RuleFile, RuleSet};

use matcher::{RuleIdx, Scratch};

/// Match Sigma rules against normalized events; emits alerts.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SigmaMatchConfig {
    /// Rule directories and/or files (relative to the spec). Directories are read
    /// recursively (`*.yml`, `*.yaml`) and watched: a change recompiles the set.
    pub rules: Vec<String>,
    /// Sigma field names → Ward fields (default: the built-in `pipelines/sigma/field-mapping.yaml`).
    #[serde(default)]
    pub field_mapping: Option<String>,
    /// Logsource routing (default: the built-in `pipelines/sigma/logsources.yaml`).
    #[serde(default)]
    pub logsources: Option<String>,
    /// Values for `|expand` placeholders: `admins: [root, administrator]` for `%admins%`.
    #[serde(default)]
    pub placeholders: BTreeMap<String, Vec<String>>,
    /// What a placeholder without values does: `reject` (the rule), `match_nothing` (its values
    /// match nothing; the default) or `wildcard` (it stands for any text). Rules loaded under
    /// the last two are logged with their placeholders.
    #[serde(default)]
    pub placeholders_missing: PlaceholdersMissing,
    /// Rules whose logsource has no routing entry: `any` (run on every event) or `reject`.
    #[serde(default)]
    pub unrouted: Unrouted,
    /// Copy the normalized event into each alert.
    #[serde(default = "yes")]
    pub include_event: bool,
    /// Recompile when a rule file changes (`POST /rules/reload` works either way).
    #[serde(default = "yes")]
    pub watch: bool,
    /// Work an event may cost beyond the literal pass, in units (a byte through a DFA, or a byte
    /// × NFA state for a regex without one): `base` + `per_byte` × the event's bytes. Tests that
    /// do not fit are unknown; see the README's Security section.
    #[serde(default)]
    pub match_budget: MatchBudgetConfig,
}

/// [`matcher::MatchBudget`] as configured.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchBudgetConfig {
    #[serde(default = "default_budget_base")]
    pub base: u64,
    #[serde(default = "default_budget_per_byte")]
    pub per_byte: u64,
}

impl Default for MatchBudgetConfig {
    fn default() -> Self {
        MatchBudgetConfig { base: default_budget_base(), per_byte: default_budget_per_byte() }
    }
}

fn default_budget_base() -> u64 {
    matcher::DEFAULT_BUDGET_BASE
}
fn default_budget_per_byte() -> u64 {
    matcher::DEFAULT_BUDGET_PER_BYTE
}

fn yes() -> bool {
    true
}

impl SigmaMatchConfig {
    fn options(&self, resources: &Resources) -> anyhow::Result<CompileOptions> {
        let mapping = match &self.field_mapping {
            Some(p) => mapping::FieldMapping::parse(&resources.read_string(p)?, p)?,
            None => mapping::FieldMapping::builtin(),
        };
        let logsources = match &self.logsources {
            Some(p) => mapping::Logsources::parse(&resources.read_string(p)?, p)?,
            None => mapping::Logsources::builtin(),
        };
        Ok(CompileOptions {
            mapping,
            logsources,
            placeholders: self.placeholders.clone().into_iter().collect(),
            placeholders_missing: self.placeholders_missing,
            unrouted: self.unrouted,
        })
    }

    /// The event fields this detector's rules read (see [`RuleSet::fields_read`]), compiled
    /// as the detector compiles them.
    /// The set stays compiled for the detector that compiles the same files with the same
    /// options next, so a hunt compiles its rules once.
    pub fn fields_read(&self, resources: &Resources) -> anyhow::Result<Option<Vec<String>>> {
        let opts = self.options(resources)?;
        let files = read_rule_files(resources, &self.rules)?;
        let set = compile_files(&files, &opts, None)?;
        let fields = set.fields_read();
        *PRECOMPILED.lock().unwrap_or_else(|e| e.into_inner()) = Some((compile_key(&files, &opts), set));
        Ok(fields)
    }

    fn compile(&self, resources: &Resources) -> anyhow::Result<RuleSet> {
        self.compile_with(resources, &self.options(resources)?)
    }

    fn compile_with(&self, resources: &Resources, opts: &CompileOptions) -> anyhow::Result<RuleSet> {
        // Read through `resources` even when the set was compiled already: a checkpoint's
        // contexts record the files read.
        let files = read_rule_files(resources, &self.rules)?;
        let key = compile_key(&files, opts);
        let precompiled = {
            let mut p = PRECOMPILED.lock().unwrap_or_else(|e| e.into_inner());
            if p.as_ref().is_some_and(|(k, _)| *k == key) {
                p.take().map(|(_, set)| set)
            } else {
                None
            }
        };
        let mut set = match precompiled {
            Some(set) => set,
            None => compile_files(&files, opts, None)?,
        };
        set.matcher.budget =
            matcher::MatchBudget { base: self.match_budget.base, per_byte: self.match_budget.per_byte };
        Ok(set)
    }
}

/// A rule set compiled before a run (`SigmaMatchConfig::fields_read`), with the key of the
/// files and options it came from.
static PRECOMPILED: std::sync::Mutex<Option<(u64, RuleSet)>> = std::sync::Mutex::new(None);

/// What a compilation depends on: the options and every file's name, text and problem.
fn compile_key(files: &[ruleset::RuleFile], opts: &CompileOptions) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(opts.fingerprint().as_bytes());
    for f in files {
        for part in [f.path.as_str(), f.rel.as_str(), f.text.as_str(), f.problem.as_deref().unwrap_or("")] {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
    }
    h.digest()
}

impl ComponentConfig for SigmaMatchConfig {
    const TYPE: &'static str = "sigma-match";
    const SECTION: Section = Section::Operator;
    const DESCRIPTION: &'static str =
        "Match Sigma rules (compiled, hot-reloadable) against normalized events; emits alerts";
    const ACCEPTS: &'static [StreamKind] = &[StreamKind::Events];
    const OUTPUT: Option<StreamKind> = Some(StreamKind::Alerts);

    fn build(self, ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        if self.rules.is_empty() {
            anyhow::bail!("`rules` names no rule directory or file");
        }
        let opts = self.options(ctx.resources)?;
        let carry = carry::carried_fields(ctx.downstream_alert_keys, &opts.mapping).map_err(anyhow::Error::msg)?;
        let config = self.clone();
        let handle = ReloadHandle::load(
            ReloadSpec {
                component: ctx.component_id.to_string(),
                what: "rule set",
                resources: ctx.resources.clone(),
                paths: self.rules.clone(),
                watch: self.watch,
                load: Box::new(move |resources, running: Option<&RuleSet>| config.reload(resources, running)),
                summary: Box::new(|set: &RuleSet| {
                    let mut m = serde_json::Map::new();
                    m.insert("compiled".into(), set.compiled().into());
                    m.insert("rejected".into(), set.rejected().into());
                    m
                }),
                publish: Box::new(|m, previous, set| {
                    m.rules_compiled.set(set.compiled() as i64);
                    m.rules_rejected.set(set.rejected() as i64);
                    m.set_ruleset_version(previous.map(|p| p.version.as_str()), &set.version);
                }),
            },
            ctx.contexts,
        )?;
        let set = handle.current();
        tracing::info!(
            component = ctx.component_id,
            version = %set.version,
            compiled = set.compiled(),
            rejected = set.rejected(),
            "rule set loaded (`ward rules check` lists rejected rules)"
        );
        let notes = set.notes();
        if !notes.is_empty() {
            let listed: Vec<String> = notes.iter().take(20).map(|(_, id, n)| format!("{id}: {n}")).collect();
            tracing::warn!(
                component = ctx.component_id,
                rules = notes.len(),
                "rules loaded differently from what they say ({}{})",
                listed.join("; "),
                if notes.len() > listed.len() { "; ..." } else { "" }
            );
        }
        let h = handle.clone();
        ctx.admin.register("GET", "/rules", ctx.component_id, Arc::new(move |_| (200, describe(&h))));
        handle.register_reload_route(ctx.admin, "/rules/reload");
        Ok(Built::Operator(Arc::new(SigmaFactory {
            handle,
            include_event: self.include_event,
            carry: Arc::new(carry),
        })))
    }
}

/// The rule sets of one sigma-match component, shared by its worker instances.
pub type RuleHandle = ReloadHandle<RuleSet>;

impl Versioned for RuleSet {
    fn version(&self) -> &str {
        &self.version
    }
}

impl SigmaMatchConfig {
    /// A rule set from the files, refused if it does not compile or (given the running set)
    /// rejects rules the running set did not.
    fn reload(&self, resources: &Resources, running: Option<&RuleSet>) -> Result<RuleSet, Vec<serde_json::Value>> {
        let new = self.compile(resources).map_err(|e| vec![serde_json::json!({ "reason": format!("{e:#}") })])?;
        let Some(running) = running else { return Ok(new) };
        let old: std::collections::HashSet<_> = running.rejections().into_iter().collect();
        let added: Vec<serde_json::Value> = new
            .rejections()
            .into_iter()
            .filter(|r| !old.contains(r))
            .map(|(p, id, why)| serde_json::json!({"path": p, "id": id, "reason": why}))
            .collect();
        if added.is_empty() {
            Ok(new)
        } else {
            Err(added)
        }
    }
}

fn describe(handle: &RuleHandle) -> serde_json::Value {
    let (since, set) = handle.current_since();
    serde_json::json!({
        "component": handle.component(),
        "version": set.version,
        "since_epoch": since,
        "files": set.files,
        "compiled": set.compiled(),
        "rejected": set.rejected(),
        "correlations": set.correlations.rules.len(),
        "rejections": set.rejections().iter().map(|(p, id, why)| serde_json::json!({"path": p, "id": id, "reason": why})).collect::<Vec<_>>(),
        "last_refusal": handle.last_refusal(),
    })
}

struct SigmaFactory {
    handle: Arc<RuleHandle>,
    include_event: bool,
    carry: Arc<carry::Carried>,
}

impl OperatorFactory for SigmaFactory {
    fn create(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Operator>> {
        self.handle.start(ctx);
        Ok(Box::new(SigmaOperator {
            handle: self.handle.clone(),
            detector: Detector::new(ctx.component_id.clone(), self.include_event).carrying(self.carry.clone()),
            metrics: ctx.metrics.clone(),
        }))
    }
}

/// The values of `wanted` ((Sigma name, keys it may live under)) in row `row`, as text.
fn extract_fields(
    batch: &EventBatch,
    row: usize,
    wanted: &[(String, Vec<mapping::FieldKey>)],
) -> Vec<(String, String)> {
    let b = batch.bytes();
    let slots = batch.row_slots(row);
    let mut out = Vec::new();
    let mut buf = String::new();
    for (name, keys) in wanted {
        let found = keys.iter().find_map(|k| {
            slots.iter().find(|s| match (k, s.key) {
                (mapping::FieldKey::Core(id), Key::Core(c)) => *id == c,
                (mapping::FieldKey::Ext(n), Key::Ext(_)) => {
                    let name = b.key_name(s.key);
                    name == n || {
                        let mut buf = [0u8; mapping::DATA_NAME_MAX];
                        let data = n.strip_prefix(mapping::EVENT_DATA);
                        data.is_some() && mapping::windows_data_name(name, &mut buf) == data
                    }
                }
                _ => false,
            })
        });
        if let Some(s) = found {
            if let Some(t) = matcher::text(b, s.value, &mut buf) {
                out.push((name.clone(), t.to_string()));
            }
        }
    }
    out
}

struct SigmaOperator {
    handle: Arc<RuleHandle>,
    detector: Detector,
    metrics: ComponentMetrics,
}

impl Operator for SigmaOperator {
    fn process(&mut self, batch: EventBatch, epoch: u64, out: &mut OperatorOutput) {
        let set = self.handle.for_epoch(epoch);
        let stats = self.detector.stats();
        // Alerts are counted where the stage emits them (`ward_alerts_total`).
        self.detector.detect(&set, &batch, &mut out.alerts);
        let after = self.detector.stats();
        self.metrics.match_over_budget.inc_by(after.over_budget - stats.over_budget);
        self.metrics.match_undecided.inc_by(after.undecided - stats.undecided);
        out.consumed += batch.len() as u64;
    }
}

/// Runs a rule set over batches and builds alerts; one per worker (it owns the scratch state).
pub struct Detector {
    component: Arc<str>,
    include_event: bool,
    /// Fields downstream components read, copied into every alert.
    carry: Arc<carry::Carried>,
    scratch: Scratch,
    matched: Vec<RuleIdx>,
    /// Events over the match budget, with the rules they left undecided (when kept).
    over_budget: Option<Vec<OverBudget>>,
    last_warning: Option<std::time::Instant>,
}

/// An event whose evaluation ran out of budget: some rules could be neither confirmed nor
/// ruled out (`undecided`, rule ids), so no alert was raised for them.
#[derive(Clone, Debug)]
pub struct OverBudget {
    pub row: usize,
    pub undecided: Vec<String>,
}

impl Detector {
    /// What correlation rules need of this rule's alerts, then what downstream keys read.
    fn alert_fields(&self, set: &RuleSet, rule_id: &str, batch: &EventBatch, row: usize) -> Vec<(String, String)> {
        let mut fields = set.extract.get(rule_id).map(|wanted| extract_fields(batch, row, wanted)).unwrap_or_default();
        if !self.carry.is_empty() {
            for (name, value) in extract_fields(batch, row, &self.carry) {
                if !fields.iter().any(|(n, _)| *n == name) {
                    fields.push((name, value));
                }
            }
        }
        fields
    }
}

/// Warnings about events over budget, at most this often per worker.
const OVER_BUDGET_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl Detector {
    pub fn new(component: Arc<str>, include_event: bool) -> Self {
        Detector {
            component,
            include_event,
            carry: Arc::default(),
            scratch: Scratch::default(),
            matched: Vec::new(),
            over_budget: None,
            last_warning: None,
        }
    }

    /// Copies `fields` (found under their keys) into every alert.
    pub fn carrying(mut self, fields: Arc<carry::Carried>) -> Self {
        self.carry = fields;
        self
    }

    /// Keeps a record of every event over budget (for `ward rules test`), taken by
    /// [`Self::take_over_budget`].
    pub fn record_over_budget(&mut self) {
        self.over_budget.get_or_insert_with(Vec::new);
    }

    pub fn take_over_budget(&mut self) -> Vec<OverBudget> {
        self.over_budget.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Logs (rate-limited) and records an event that ran out of budget.
    fn note_over_budget(&mut self, set: &RuleSet, batch: &EventBatch, row: usize) {
        let undecided = || -> Vec<String> {
            self.scratch.undecided.iter().map(|&r| set.matcher.rules[r as usize].meta.rule.id.clone()).collect()
        };
        if let Some(list) = &mut self.over_budget {
            let u = undecided();
            list.push(OverBudget { row, undecided: u });
        }
        let now = std::time::Instant::now();
        if self.last_warning.is_none_or(|t| now.duration_since(t) >= OVER_BUDGET_WARNING_EVERY) {
            self.last_warning = Some(now);
            let p = batch.provenance(row);
            tracing::warn!(
                component = %self.component,
                source = %p.source,
                partition = %ward_engine::text::escape_text(&p.partition),
                offset = p.offset,
                bytes = batch.rows()[row].raw.len(),
                undecided = ?undecided(),
                "event over the match budget: its cheap tests ran, some regex tests did not; the rules they \
                 decide raised no alert (ward_sigma_undecided_total; further such events are counted, not logged, \
                 for 10 s)"
            );
        }
    }

    /// Appends an alert per (event, matching rule), in event order then rule order.
    pub fn detect(&mut self, set: &RuleSet, batch: &EventBatch, alerts: &mut Vec<Alert>) {
        let b = batch.bytes();
        let m = &set.matcher;
        for row in 0..batch.len() {
            let slots = batch.row_slots(row);
            self.matched.clear();
            m.match_event(&mut self.scratch, b, slots, &mut self.matched);
            if self.scratch.over_budget {
                self.note_over_budget(set, batch, row);
            }
            // The event's JSON is rendered once and shared by its alerts (a third of the
            // generator's alerting events raise two or more).
            let mut event = None;
            for i in 0..self.matched.len() {
                let r = self.matched[i];
                let matches = m.explain_match(r, &mut self.scratch, b, slots);
                if self.include_event && event.is_none() {
                    event = Some(ward_engine::alert::EventJson::of_row(batch, row));
                }
                alerts.push(self.alert(set, batch, row, r, matches, event.clone()));
            }
        }
    }

    pub fn stats(&self) -> matcher::MatchStats {
        self.scratch.stats
    }

    /// Checks the matcher's triggers on `batch`: each row must match the same rules whether only
    /// the candidates its triggers chose or every rule is evaluated. The number of matches, or
    /// the first row that differs and how.
    pub fn check_triggers(&mut self, set: &RuleSet, batch: &EventBatch) -> Result<usize, String> {
        let b = batch.bytes();
        let (mut every, mut n) = (Vec::new(), 0);
        for row in 0..batch.len() {
            self.matched.clear();
            every.clear();
            set.matcher.match_event(&mut self.scratch, b, batch.row_slots(row), &mut self.matched);
            set.matcher.match_event_every_rule(&mut self.scratch, b, batch.row_slots(row), &mut every);
            if self.matched != every {
                let ids = |rules: &[matcher::RuleIdx]| -> Vec<String> {
                    rules.iter().map(|&r| set.matcher.rules[r as usize].meta.rule.id.clone()).collect()
                };
                return Err(format!(
                    "row {row}: the triggered candidates match {:?}, every rule evaluated matches {:?}",
                    ids(&self.matched),
                    ids(&every)
                ));
            }
            n += every.len();
        }
        Ok(n)
    }

    /// Counts matches only (for benchmarks): no alerts are built.
    pub fn count(&mut self, set: &RuleSet, batch: &EventBatch) -> usize {
        let b = batch.bytes();
        let mut n = 0;
        for row in 0..batch.len() {
            self.matched.clear();
            set.matcher.match_event(&mut self.scratch, b, batch.row_slots(row), &mut self.matched);
            n += self.matched.len();
        }
        n
    }

    fn alert(
        &self,
        set: &RuleSet,
        batch: &EventBatch,
        row: usize,
        r: RuleIdx,
        matches: Vec<ward_engine::alert::MatchedSelection>,
        event: Option<ward_engine::alert::EventJson>,
    ) -> Alert {
        let meta = &set.matcher.rules[r as usize].meta;
        let id = &meta.rule.id;
        let p = batch.provenance(row);
        let b = batch.bytes();
        let mut event_id = None;
        let mut event_time_ms = None;
        for s in batch.row_slots(row) {
            match (s.key, s.value) {
                (Key::Core(ids::EVENT_ID), Value::Str(v)) => event_id = Some(b.str(v).to_string()),
                (Key::Core(ids::TIMESTAMP), Value::Timestamp(t)) => event_time_ms = Some(t),
                _ => {}
            }
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in [id.as_bytes(), p.source.as_bytes(), p.partition.as_bytes(), &p.offset.to_le_bytes()] {
            h.update(part);
            h.update(&[0]);
        }
        Alert {
            alert_id: format!("{:032x}", h.digest128()),
            rule: meta.rule.clone(),
            priority: priority_for_level(&meta.rule.level),
            ruleset_version: set.version.clone(),
            detector: self.component.to_string(),
            matches,
            event_id,
            event_time_ms,
            origin: AlertOrigin { source: p.source.to_string(), partition: p.partition.to_string(), offset: p.offset },
            event,
            fields: self.alert_fields(set, id, batch, row),
            correlation: None,
            suppression: None,
        }
    }
}
