//! `correlate`: Sigma correlation rules over alerts, with exact sliding windows on event time
//! (docs/architecture.md §6).
//!
//! Alerts of the rules a correlation references are routed by the hash of their group-by
//! values to the worker owning that key group; windows live there (see `window.rs`) and are
//! evaluated when the watermark passes them. Alerts no correlation absorbs (`generate: true`,
//! or rules no correlation references) pass through unchanged. Correlation rules are read
//! from the same files as the detection rules and reload with them, switching at an epoch.

pub mod window;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use ward_engine::alert::Alert;
use ward_engine::component::{OperatorOutput, StreamKind, WorkerContext};
use ward_engine::key_groups::{owned_groups, KEY_GROUPS};
use ward_engine::keyed::{KeyedOperator, KeyedOperatorFactory, RecordRef, Route, Router};
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};
use ward_engine::reload::{ReloadHandle, ReloadSpec, Versioned};
use ward_engine::resources::Resources;
use ward_engine::time::EventTime;
use xxhash_rust::xxh3::Xxh3;

use crate::sigma::correlation::{self, CorrelationSet};
use crate::sigma::{read_rule_files, RuleFile};
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
            let text = crate::sigma::sigma1::as_sigma2(&f.text);
            let Ok(collection) = rsigma_parser::parse_sigma_yaml(&text) else { continue };
            for r in &collection.rules {
                detections.push((r.id.clone().unwrap_or_else(|| r.title.clone()), r.name.clone()));
            }
            for c in collection.correlations {
                correlations.push((f.path.clone(), c));
            }
        }
        CorrelationRules {
            set: Arc::new(correlation::compile(&detections, &correlations)),
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
        let paths = self.rules.clone();
        let handle = ReloadHandle::load(
            ReloadSpec {
                component: ctx.component_id.to_string(),
                what: "correlation rules",
                resources: ctx.resources.clone(),
                paths: self.rules.clone(),
                watch: self.watch,
                load: Box::new(move |resources, _running: Option<&CorrelationRules>| reload(resources, &paths)),
                summary: Box::new(|r: &CorrelationRules| {
                    let mut m = serde_json::Map::new();
                    m.insert("correlations".into(), r.set.rules.len().into());
                    m
                }),
                publish: Box::new(|m, previous, r| m.set_ruleset_version(previous.map(|p| &*p.version), &r.version)),
            },
            ctx.contexts,
        )
        .map_err(|e| anyhow::anyhow!("cannot load the correlation rules: {e:#}"))?;
        let loaded = handle.current();
        tracing::info!(
            component = ctx.component_id,
            version = %loaded.version,
            correlations = loaded.set.rules.len(),
            "correlation rules loaded"
        );
        let h = handle.clone();
        ctx.admin.register("GET", "/correlations", ctx.component_id, Arc::new(move |_| (200, describe(&h))));
        handle.register_reload_route(ctx.admin, "/rules/reload");
        Ok(Built::Keyed(Arc::new(CorrelateFactory { handle })))
    }
}

/// The correlation rule sets of one component, shared by its workers.
pub type CorrelationHandle = ReloadHandle<CorrelationRules>;

impl Versioned for CorrelationRules {
    fn version(&self) -> &str {
        &self.version
    }
}

/// The rule files again, refused unless every correlation compiles.
fn reload(resources: &Resources, paths: &[String]) -> Result<CorrelationRules, Vec<serde_json::Value>> {
    let files =
        read_rule_files(resources, paths).map_err(|e| vec![serde_json::json!({ "reason": format!("{e:#}") })])?;
    let new = CorrelationRules::load(&files);
    if new.set.rejected.is_empty() {
        Ok(new)
    } else {
        Err(new
            .set
            .rejected
            .iter()
            .map(|(p, id, _, why)| serde_json::json!({"path": p, "id": id, "reason": why}))
            .collect())
    }
}

fn describe(handle: &CorrelationHandle) -> serde_json::Value {
    let (since, r) = handle.current_since();
    serde_json::json!({
        "component": handle.component(),
        "version": &*r.version,
        "since_epoch": since,
        "correlations": r.set.rules.iter().map(|c| serde_json::json!({
            "id": c.rule.id, "title": c.rule.title, "type": c.kind.name(), "group_by": c.group_by,
            "timespan_ms": c.timespan_ms, "condition": c.condition, "generate": c.generate,
            "rules": c.inputs.iter().map(|i| &i.rule_id).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

struct CorrelateFactory {
    handle: Arc<CorrelationHandle>,
}

impl KeyedOperatorFactory for CorrelateFactory {
    fn router(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn Router>> {
        self.handle.start(ctx);
        Ok(Box::new(CorrelateRouter {
            handle: self.handle.clone(),
            rules: self.handle.current(),
            scratch: String::new(),
        }))
    }

    fn operator(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn KeyedOperator>> {
        let rules = self.handle.current();
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
        self.rules = self.handle.for_epoch(epoch);
    }

    fn route(&mut self, record: RecordRef<'_>, keys: &mut Vec<u64>) -> Route {
        let RecordRef::Alert(alert) = record else { return Route::PassThrough };
        route_alert(&self.rules.set, alert, keys, &mut self.scratch)
    }

    /// Windows keep an alert's rule, id, time and group-by `fields` only.
    fn keyed_alert_summary(&self) -> bool {
        true
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
        let rules = self.handle.for_epoch(epoch);
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

    fn snapshot_groups(&self, groups: &[u16]) -> anyhow::Result<Vec<(u16, Vec<u8>)>> {
        self.windows.snapshot_groups(groups)
    }

    fn restore(&mut self, group: u16, bytes: &[u8]) -> anyhow::Result<()> {
        self.windows.restore(group, bytes)
    }

    fn live_keys(&self) -> usize {
        self.windows.live_keys()
    }
}
