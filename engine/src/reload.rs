//! One hot-reload mechanism for what a component rebuilds from files while the pipeline runs
//! (a Sigma rule set, correlation rules): compiled off the hot path, refused if it is worse than
//! the running version, else switched on every worker at one epoch (docs/architecture.md §6).
//!
//! A component kind supplies how to load a new version (and when to refuse it) and how to
//! describe one; the handle does the rest: concurrent requests coalesce into one load, the
//! switch epoch comes from the run's clock, reloads and refusals are counted and logged, the
//! rule-set version is published as a metric, and a file watcher triggers reloads.

use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Map, Value};

use crate::clock::{EpochClock, Versions};
use crate::coalesce::Coalescer;
use crate::component::WorkerContext;
use crate::metrics::ComponentMetrics;
use crate::resources::{Resources, WatchGuard};
use crate::switch::{SwitchBoard, Switchable};

/// How long a reload waits for the cluster to agree.
const CLUSTER_ROUND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Something a [`ReloadHandle`] switches between.
pub trait Versioned: Send + Sync + 'static {
    /// Content hash: equal versions are not switched.
    fn version(&self) -> &str;
}

/// Builds a new version from the files, given the running one; `Err` refuses it with the
/// reasons (one JSON object each).
pub type Loader<T> = Box<dyn Fn(&Resources, &T) -> Result<T, Vec<Value>> + Send + Sync>;
/// Fields describing a version in the reload answer (counts of rules, ...).
pub type Summary<T> = Box<dyn Fn(&T) -> Map<String, Value> + Send + Sync>;
/// Publishes metrics of a newly running version (`None` on start).
pub type Publish<T> = Box<dyn Fn(&ComponentMetrics, Option<&T>, &T) + Send + Sync>;

/// What a component kind tells the handle.
pub struct ReloadSpec<T> {
    pub component: String,
    /// What is reloaded, for logs: "rule set", "correlation rules".
    pub what: &'static str,
    pub resources: Resources,
    /// Files and directories the versions are built from (watched when `watch`).
    pub paths: Vec<String>,
    pub watch: bool,
    pub load: Loader<T>,
    pub summary: Summary<T>,
    pub publish: Publish<T>,
}

/// The versions of one component, shared by its worker instances.
pub struct ReloadHandle<T> {
    spec: ReloadSpec<T>,
    /// Workers use the newest version whose first epoch is at or before the batch's epoch.
    versions: Versions<T>,
    clock: OnceLock<Arc<EpochClock>>,
    /// In a cluster: where every process agrees on a switch.
    board: OnceLock<Arc<SwitchBoard>>,
    /// A version loaded for a cluster-wide switch, until it is switched to or dropped.
    pending: Mutex<Option<Arc<T>>>,
    /// Why the last reload was refused (for `/rules`).
    last_refusal: Mutex<Option<Value>>,
    metrics: OnceLock<ComponentMetrics>,
    /// Concurrent reload requests share one load.
    reloads: Coalescer<Result<Value, Value>>,
    watch: Mutex<Option<WatchGuard>>,
}

impl<T: Versioned> ReloadHandle<T> {
    pub fn new(spec: ReloadSpec<T>, first: T) -> Arc<Self> {
        Arc::new(ReloadHandle {
            spec,
            versions: Versions::new(first),
            clock: OnceLock::new(),
            board: OnceLock::new(),
            pending: Mutex::new(None),
            last_refusal: Mutex::new(None),
            metrics: OnceLock::new(),
            reloads: Coalescer::new(),
            watch: Mutex::new(None),
        })
    }

    pub fn current(&self) -> Arc<T> {
        self.versions.current()
    }

    /// The current version and the epoch it took effect.
    pub fn current_since(&self) -> (u64, Arc<T>) {
        self.versions.current_since()
    }

    pub fn for_epoch(&self, epoch: u64) -> Arc<T> {
        self.versions.for_epoch(epoch)
    }

    pub fn component(&self) -> &str {
        &self.spec.component
    }

    /// Loads the files again and, if the result is acceptable, schedules the switch. The JSON
    /// describes the outcome either way (`status`: reloaded, unchanged or refused).
    pub fn reload(&self) -> Result<Value, Value> {
        self.reloads.run(|| self.reload_now())
    }

    fn reload_now(&self) -> Result<Value, Value> {
        let running = self.current();
        if let Some(board) = self.board.get() {
            // In a cluster every process loads the files and all switch at one epoch.
            return board.propose(&self.spec.component, CLUSTER_ROUND_TIMEOUT);
        }
        let new = match (self.spec.load)(&self.spec.resources, &running) {
            Ok(new) => new,
            Err(errors) => {
                if let Some(m) = self.metrics.get() {
                    m.reload_failures.inc();
                }
                tracing::warn!(component = %self.spec.component, ?errors, "{} reload refused; the running version stays", self.spec.what);
                let answer = json!({ "status": "refused", "running_version": running.version(), "errors": errors });
                *self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(answer.clone());
                return Err(answer);
            }
        };
        if new.version() == running.version() {
            return Ok(json!({ "status": "unchanged", "version": running.version() }));
        }
        let new = Arc::new(new);
        let first = self.versions.install(self.clock.get().map(|c| &**c), new.clone());
        if let Some(m) = self.metrics.get() {
            m.reloads.inc();
            (self.spec.publish)(m, Some(&running), &new);
        }
        tracing::info!(component = %self.spec.component, version = %new.version(), first_epoch = first, "{} reloaded", self.spec.what);
        Ok(self.answer(&running, &new, first))
    }

    /// Called by every worker instance; the first one connects the handle to the run (its
    /// clock, the component's metrics) and starts watching the files.
    pub fn start(self: &Arc<Self>, ctx: &WorkerContext) {
        let _ = self.clock.set(ctx.clock.clone());
        if self.metrics.set(ctx.metrics.clone()).is_err() {
            return;
        }
        if let Some(board) = &ctx.switches {
            let _ = self.board.set(board.clone());
            board.join(&self.spec.component, Arc::new(Member(Arc::downgrade(self))));
        }
        (self.spec.publish)(&ctx.metrics, None, &self.current());
        if !self.spec.watch {
            return;
        }

        let weak = Arc::downgrade(self);
        match self.spec.resources.watch(&self.spec.paths, move || {
            if let Some(h) = weak.upgrade() {
                let _ = h.reload();
            }
        }) {
            Ok(g) => *self.watch.lock().unwrap_or_else(|p| p.into_inner()) = Some(g),
            Err(e) => {
                tracing::warn!(component = %self.spec.component, error = %e, "cannot watch the files of the {}", self.spec.what)
            }
        }
    }

    /// Why the last reload was refused, if it was.
    pub fn last_refusal(&self) -> Option<Value> {
        self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What the reload answer says about a newly running version.
    fn answer(&self, previous: &T, new: &T, first: u64) -> Value {
        let mut out = Map::new();
        out.insert("status".into(), "reloaded".into());
        out.insert("version".into(), new.version().into());
        out.insert("previous_version".into(), previous.version().into());
        out.insert("first_epoch".into(), first.into());
        out.extend((self.spec.summary)(new));
        Value::Object(out)
    }

    /// Registers `POST <path>` (e.g. `/rules/reload`) for this component on the admin endpoint.
    pub fn register_reload_route(self: &Arc<Self>, admin: &crate::admin::AdminRoutes, path: &str) {
        let h = self.clone();
        admin.register(
            "POST",
            path,
            &self.spec.component,
            Arc::new(move |_| match h.reload() {
                Ok(v) => (200, v),
                Err(v) => (422, v),
            }),
        );
    }
}

/// A handle as a member of the cluster's switch board.
struct Member<T>(std::sync::Weak<ReloadHandle<T>>);

impl<T: Versioned> Switchable for Member<T> {
    fn prepare(&self) -> Result<Option<String>, Vec<Value>> {
        let Some(h) = self.0.upgrade() else { return Ok(None) };
        let running = h.current();
        match (h.spec.load)(&h.spec.resources, &running) {
            Ok(new) if new.version() == running.version() => Ok(None),
            Ok(new) => {
                let version = new.version().to_string();
                *h.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(new));
                Ok(Some(version))
            }
            Err(errors) => {
                if let Some(m) = h.metrics.get() {
                    m.reload_failures.inc();
                }
                Err(errors)
            }
        }
    }

    fn switch_at(&self, epoch: u64) -> Value {
        let Some(h) = self.0.upgrade() else { return Value::Null };
        let Some(new) = h.pending.lock().unwrap_or_else(|p| p.into_inner()).take() else { return Value::Null };
        let running = h.current();
        h.versions.install_at(epoch, new.clone());
        if let Some(m) = h.metrics.get() {
            m.reloads.inc();
            (h.spec.publish)(m, Some(&running), &new);
        }
        tracing::info!(component = %h.spec.component, version = %new.version(), first_epoch = epoch, "{} reloaded on every process of the cluster", h.spec.what);
        h.answer(&running, &new, epoch)
    }

    fn cancel(&self, why: &Value) {
        let Some(h) = self.0.upgrade() else { return };
        h.pending.lock().unwrap_or_else(|p| p.into_inner()).take();
        tracing::warn!(component = %h.spec.component, %why, "{} reload refused by the cluster; the running version stays", h.spec.what);
        *h.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Text(String);
    impl Versioned for Text {
        fn version(&self) -> &str {
            &self.0
        }
    }

    fn handle(dir: &std::path::Path) -> Arc<ReloadHandle<Text>> {
        let spec = ReloadSpec {
            component: "c".into(),
            what: "text",
            resources: Resources::new(dir),
            paths: vec!["v.txt".into()],
            watch: false,
            load: Box::new(|res, _running| {
                let t = res.read_string("v.txt").map_err(|e| vec![json!({ "reason": e.to_string() })])?;
                if t.contains("bad") {
                    return Err(vec![json!({ "reason": "bad" })]);
                }
                Ok(Text(t.trim().to_string()))
            }),
            summary: Box::new(|t| {
                let mut m = Map::new();
                m.insert("length".into(), t.0.len().into());
                m
            }),
            publish: Box::new(|m, previous, new| m.set_ruleset_version(previous.map(|p| p.version()), new.version())),
        };
        ReloadHandle::new(spec, Text("v1".into()))
    }

    #[test]
    fn reloads_switch_at_the_next_epoch_and_refusals_keep_the_running_version() {
        let dir = tempfile::tempdir().unwrap();
        let h = handle(dir.path());
        let clock = Arc::new(EpochClock::starting_at(5));
        let metrics = crate::metrics::Metrics::new();
        let ctx = WorkerContext {
            component_id: "c".into(),
            worker_index: 0,
            workers: 1,
            processes: 1,
            resources: Resources::new(dir.path()),
            metrics: metrics.component("c"),
            clock: clock.clone(),
            resumed_from: None,
            checkpointing: false,
            switches: None,
        };
        h.start(&ctx);
        std::fs::write(dir.path().join("v.txt"), "v1").unwrap();
        assert_eq!(h.reload().unwrap()["status"], "unchanged");
        std::fs::write(dir.path().join("v.txt"), "v2").unwrap();
        let r = h.reload().unwrap();
        assert_eq!(
            (r["status"].as_str(), r["first_epoch"].as_u64(), r["length"].as_u64()),
            (Some("reloaded"), Some(6), Some(2))
        );
        assert_eq!((h.for_epoch(5).0.as_str(), h.for_epoch(6).0.as_str()), ("v1", "v2"));
        std::fs::write(dir.path().join("v.txt"), "bad").unwrap();
        let refused = h.reload().unwrap_err();
        assert_eq!((refused["status"].as_str(), refused["running_version"].as_str()), (Some("refused"), Some("v2")));
        assert_eq!(h.current().0, "v2");
        let c = metrics.component("c");
        assert_eq!((c.reloads.get(), c.reload_failures.get()), (1, 1));
        assert!(metrics.render().contains(r#"ward_ruleset_info{component="c",version="v2"} 1"#));
    }

    #[test]
    fn in_a_cluster_a_reload_waits_for_the_cluster_and_switches_at_the_agreed_epoch() {
        use crate::switch::{Outcome, SwitchReport};
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("v.txt"), "v1").unwrap();
        let h = handle(dir.path());
        let clock = Arc::new(EpochClock::starting_at(5));
        let board = crate::switch::SwitchBoard::new(clock.clone());
        let metrics = crate::metrics::Metrics::new();
        let ctx = WorkerContext {
            component_id: "c".into(),
            worker_index: 2,
            workers: 4,
            processes: 2,
            resources: Resources::new(dir.path()),
            metrics: metrics.component("c"),
            clock: clock.clone(),
            resumed_from: None,
            checkpointing: false,
            switches: Some(board.clone()),
        };
        h.start(&ctx);
        std::fs::write(dir.path().join("v.txt"), "v2").unwrap();
        // The leader's part, played here: prepare, switch at 9, end.
        let leader = {
            let board = board.clone();
            std::thread::spawn(move || {
                let wait = |board: &crate::switch::SwitchBoard| loop {
                    let r = board.take_reports();
                    if !r.is_empty() {
                        return r;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                };
                assert!(matches!(&wait(&board)[..], [SwitchReport::Propose { .. }]));
                board.prepare(1, "c");
                assert!(
                    matches!(&wait(&board)[..], [SwitchReport::Prepared { version: Ok(Some(v)), epoch: 5, .. }] if v == "v2")
                );
                board.switch(1, "c", 9);
                board.end(1, "c", Outcome::Reloaded { epoch: 9 });
            })
        };
        let answer = h.reload().unwrap();
        leader.join().unwrap();
        assert_eq!((answer["status"].as_str(), answer["first_epoch"].as_u64()), (Some("reloaded"), Some(9)));
        assert_eq!((h.for_epoch(8).0.as_str(), h.for_epoch(9).0.as_str()), ("v1", "v2"));
        assert_eq!(clock.advance(), 6, "released after the round");
    }
}
