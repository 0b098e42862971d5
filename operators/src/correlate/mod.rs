//! `correlate`: Sigma correlation rules over alerts, with exact sliding windows on event time
//! (docs/architecture.md §6).
//!
//! Alerts of the rules a correlation references are routed by the hash of their group-by
//! values to the worker owning that key group; windows live there (see `window.rs`) and are
//! evaluated when the watermark passes them. Alerts no correlation absorbs (`generate: true`,
//! or rules no correlation references) pass through unchanged. Correlation rules are read
//! from the same files as the detection rules and reload with them, switching at an epoch.

pub mod rules;
pub mod window;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, OnceLock};

use schemars::JsonSchema;
use serde::Deserialize;
use ward_engine::alert::Alert;
use ward_engine::clock::{EpochClock, Versions};
use ward_engine::coalesce::Coalescer;
use ward_engine::component::{OperatorOutput, StreamKind, WorkerContext};
use ward_engine::key_groups::{owned_groups, KEY_GROUPS};
use ward_engine::keyed::{KeyedOperator, KeyedOperatorFactory, RecordRef, Route, Router};
use ward_engine::metrics::ComponentMetrics;
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};
use ward_engine::resources::{Resources, WatchGuard};
use ward_engine::time::EventTime;
use xxhash_rust::xxh3::Xxh3;

use crate::sigma::{read_rule_files, RuleFile};
use rules::CorrelationSet;
use window::Windows;

/// Evaluate Sigma correlation rules (event_count, value_count, temporal, temporal_ordered,
/// value_sum/avg/percentile) over alerts with exact sliding windows on event time.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorrelateConfig {
    /// Rule directories and/or files (relative to the spec), usually the same as the
    /// sigma-match component's: correlation rules are read from them, detection rules only
    /// for their ids and names.
    pub rules: Vec<String>,
    /// Reload when a rule file changes (`POST /rules/reload` works either way).
    #[serde(default = "yes")]
    pub watch: bool,
}

fn yes() -> bool {
    true
}

/// A loaded set of correlation rules.
pub struct CorrelationRules {
    pub set: Arc<CorrelationSet>,
    /// Content hash of the rule files (16 hex digits).
    pub version: Arc<str>,
}

impl CorrelationRules {
    /// Parses `files` and compiles their correlation rules against the detection rules they hold.
    pub fn load(files: &[RuleFile]) -> CorrelationRules {
        let mut hasher = Xxh3::new();
        let mut detections = Vec::new();
        let mut correlations = Vec::new();
        for f in files {
            hasher.update(f.rel.as_bytes());
            hasher.update(&[0]);
            hasher.update(f.text.as_bytes());
            hasher.update(&[0]);
            // Unusable files are rejected by sigma-match (`ward rules check` reports them).
            if f.problem.is_some() || ward_engine::limits::check_yaml_depth(&f.text).is_err() {
                continue;
            }
            let Ok(collection) = rsigma_parser::parse_sigma_yaml(&f.text) else { continue };
            for r in &collection.rules {
                detections.push((r.id.clone().unwrap_or_else(|| r.title.clone()), r.name.clone()));
            }
            for c in collection.correlations {
                correlations.push((f.path.clone(), c));
            }
        }
        CorrelationRules {
            set: Arc::new(rules::compile(&detections, &correlations)),
            version: format!("{:016x}", hasher.digest()).into(),
        }
    }
}

impl ComponentConfig for CorrelateConfig {
    const TYPE: &'static str = "correlate";
    const SECTION: Section = Section::Operator;
    const DESCRIPTION: &'static str =
        "Evaluate Sigma correlation rules over alerts with exact sliding event-time windows (keyed state)";
    const ACCEPTS: &'static [StreamKind] = &[StreamKind::Alerts];
    const OUTPUT: Option<StreamKind> = Some(StreamKind::Alerts);

    fn build(self, ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        if self.rules.is_empty() {
            anyhow::bail!("`rules` names no rule directory or file");
        }
        let loaded = CorrelationRules::load(&read_rule_files(ctx.resources, &self.rules)?);
        if let Some((path, id, _, why)) = loaded.set.rejected.first() {
            anyhow::bail!("{} correlation rule(s) rejected; first: {path} ({id}): {why}", loaded.set.rejected.len());
        }
        tracing::info!(
            component = ctx.component_id,
            version = %loaded.version,
            correlations = loaded.set.rules.len(),
            "correlation rules loaded"
        );
        let handle = Arc::new(CorrelationHandle {
            component: ctx.component_id.to_string(),
            resources: ctx.resources.clone(),
            config: self,
            versions: Versions::new(loaded),
            clock: OnceLock::new(),
            metrics: OnceLock::new(),
            reloads: Coalescer::new(),
            watch: Mutex::new(None),
        });
        let h = handle.clone();
        ctx.admin.register("GET", "/correlations", ctx.component_id, Arc::new(move |_| (200, h.describe())));
        let h = handle.clone();
        ctx.admin.register(
            "POST",
            "/rules/reload",
            ctx.component_id,
            Arc::new(move |_| match h.reload() {
                Ok(v) => (200, v),
                Err(v) => (422, v),
            }),
        );
        Ok(Built::Keyed(Arc::new(CorrelateFactory { handle })))
    }
}

/// The correlation rule sets of one component, shared by its workers.
pub struct CorrelationHandle {
    component: String,
    resources: Resources,
    config: CorrelateConfig,
    versions: Versions<CorrelationRules>,
    clock: OnceLock<Arc<EpochClock>>,
    metrics: OnceLock<ComponentMetrics>,
    /// Concurrent reload requests share one recompile.
    reloads: Coalescer<Result<serde_json::Value, serde_json::Value>>,
    watch: Mutex<Option<WatchGuard>>,
}

impl CorrelationHandle {
    fn describe(&self) -> serde_json::Value {
        let (since, r) = self.versions.current_since();
        serde_json::json!({
            "component": self.component,
            "version": &*r.version,
            "since_epoch": since,
            "correlations": r.set.rules.iter().map(|c| serde_json::json!({
                "id": c.rule.id, "title": c.rule.title, "type": c.kind.name(), "group_by": c.group_by,
                "timespan_ms": c.timespan_ms, "condition": c.condition, "generate": c.generate,
                "rules": c.inputs.iter().map(|i| &i.rule_id).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    /// Reads the rule files again and, if every correlation compiles, schedules the switch.
    pub fn reload(&self) -> Result<serde_json::Value, serde_json::Value> {
        self.reloads.run(|| self.reload_now())
    }

    fn reload_now(&self) -> Result<serde_json::Value, serde_json::Value> {
        let running = self.versions.current();
        let refuse = |errors: Vec<serde_json::Value>| {
            if let Some(m) = self.metrics.get() {
                m.reload_failures.inc();
            }
            tracing::warn!(component = %self.component, ?errors, "correlation reload refused; the running set stays");
            Err(serde_json::json!({ "status": "refused", "running_version": &*running.version, "errors": errors }))
        };
        let files = match read_rule_files(&self.resources, &self.config.rules) {
            Ok(f) => f,
            Err(e) => return refuse(vec![serde_json::json!({ "reason": format!("{e:#}") })]),
        };
        let new = CorrelationRules::load(&files);
        if !new.set.rejected.is_empty() {
            return refuse(
                new.set
                    .rejected
                    .iter()
                    .map(|(p, id, _, why)| serde_json::json!({"path": p, "id": id, "reason": why}))
                    .collect(),
            );
        }
        if new.version == running.version {
            return Ok(serde_json::json!({ "status": "unchanged", "version": &*running.version }));
        }
        let (version, count) = (new.version.clone(), new.set.rules.len());
        let first = self.versions.install(self.clock.get().map(|c| &**c), Arc::new(new));
        if let Some(m) = self.metrics.get() {
            m.reloads.inc();
            m.set_ruleset_version(Some(&running.version), &version);
        }
        tracing::info!(component = %self.component, version = %version, first_epoch = first, "correlation rules reloaded");
        Ok(serde_json::json!({
            "status": "reloaded", "version": &*version, "previous_version": &*running.version,
            "first_epoch": first, "correlations": count,
        }))
    }

    fn start(self: &Arc<Self>, ctx: &WorkerContext) {
        let _ = self.clock.set(ctx.clock.clone());
        if self.metrics.set(ctx.metrics.clone()).is_ok() {
            ctx.metrics.set_ruleset_version(None, &self.versions.current().version);
            if self.config.watch {
                let weak = Arc::downgrade(self);
                match self.resources.watch(&self.config.rules, move || {
                    if let Some(h) = weak.upgrade() {
                        let _ = h.reload();
                    }
                }) {
                    Ok(g) => *self.watch.lock().unwrap_or_else(|p| p.into_inner()) = Some(g),
                    Err(e) => tracing::warn!(component = %self.component, error = %e, "cannot watch the rule files"),
                }
            }
        }
    }
}

struct CorrelateFactory {
    handle: Arc<CorrelationHandle>,
}

impl KeyedOperatorFactory for CorrelateFactory {
    fn router(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Router>> {
        self.handle.start(ctx);
        Ok(Box::new(CorrelateRouter {
            handle: self.handle.clone(),
            rules: self.handle.versions.current(),
            scratch: String::new(),
        }))
    }

    fn operator(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn KeyedOperator>> {
        let rules = self.handle.versions.current();
        let mut owned = vec![false; KEY_GROUPS as usize];
        for g in owned_groups(ctx.worker_index, ctx.workers) {
            owned[g as usize] = true;
        }
        Ok(Box::new(CorrelateOperator {
            handle: self.handle.clone(),
            windows: Windows::new(rules.set.clone(), rules.version.clone(), ctx.component_id.clone(), owned),
        }))
    }
}

struct CorrelateRouter {
    handle: Arc<CorrelationHandle>,
    rules: Arc<CorrelationRules>,
    scratch: String,
}

impl Router for CorrelateRouter {
    fn begin_epoch(&mut self, epoch: u64) {
        self.rules = self.handle.versions.for_epoch(epoch);
    }

    fn route(&mut self, record: RecordRef<'_>, keys: &mut Vec<u64>) -> Route {
        let RecordRef::Alert(alert) = record else { return Route::PassThrough };
        route_alert(&self.rules.set, alert, keys, &mut self.scratch)
    }
}

/// Keys of the groups an alert feeds; absorbed alerts go only there, others pass through too.
pub fn route_alert(set: &CorrelationSet, alert: &Alert, keys: &mut Vec<u64>, scratch: &mut String) -> Route {
    Windows::keys_of(set, alert, keys, scratch);
    if !keys.is_empty() && set.absorbed.contains(&alert.rule.id) {
        Route::Keyed
    } else {
        // Including absorbed alerts without the group-by fields: they cannot be correlated,
        // and dropping them would lose them.
        Route::PassThrough
    }
}

struct CorrelateOperator {
    handle: Arc<CorrelationHandle>,
    windows: Windows,
}

impl KeyedOperator for CorrelateOperator {
    fn begin_epoch(&mut self, epoch: u64) {
        let rules = self.handle.versions.for_epoch(epoch);
        if !Arc::ptr_eq(&rules.set, self.windows.set()) {
            self.windows.replace_set(rules.set.clone(), rules.version.clone());
        }
    }

    fn process_alert(&mut self, alert: Alert, primary: bool, out: &mut OperatorOutput) {
        self.windows.add(&alert);
        if primary {
            out.consumed += 1;
        }
    }

    fn advance(&mut self, watermark: EventTime, out: &mut OperatorOutput) {
        self.windows.advance(watermark, out);
    }

    fn snapshot(&self, group: u16) -> anyhow::Result<Vec<u8>> {
        self.windows.snapshot(group)
    }

    fn restore(&mut self, group: u16, bytes: &[u8]) -> anyhow::Result<()> {
        self.windows.restore(group, bytes)
    }

    fn live_keys(&self) -> usize {
        self.windows.live_keys()
    }
}
