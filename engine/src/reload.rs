//! One hot-reload mechanism for what a component rebuilds from files while the pipeline runs
//! (a Sigma rule set, correlation rules): compiled off the hot path, refused if it is worse than
//! the running version, else switched on every worker at one epoch (docs/architecture.md §6).
//!
//! A component kind supplies how to load a new version (and when to refuse it) and how to
//! describe one; the handle does the rest: concurrent requests coalesce into one load, the
//! switch epoch comes from the run's clock, reloads and refusals are counted and logged, the
//! rule-set version is published as a metric, and a file watcher triggers reloads. The files
//! every version was built from are recorded, so checkpoints can keep them (see `contexts`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Map, Value};

use crate::clock::{EpochClock, Versions};
use crate::coalesce::Coalescer;
use crate::component::WorkerContext;
use crate::contexts::{Context, Contexts};
use crate::metrics::ComponentMetrics;
use crate::resources::{FileSet, Resources, WatchGuard};
use crate::switch::{SwitchBoard, Switchable};

/// How long a reload waits for the cluster to agree.
const CLUSTER_ROUND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Something a [`ReloadHandle`] switches between.
pub trait Versioned: Send + Sync + 'static {
    /// Content hash: equal versions are not switched.
    fn version(&self) -> &str;
}

/// Builds a version from the files, given the running one (none for the first version and for
/// versions rebuilt from a checkpoint, which are never refused); `Err` refuses it with the
/// reasons (one JSON object each, with a `reason`).
pub type Loader<T> = Box<dyn Fn(&Resources, Option<&T>) -> Result<T, Vec<Value>> + Send + Sync>;
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
    /// The files each version was built from (by version), until a checkpoint stored them.
    files: Mutex<BTreeMap<String, Arc<FileSet>>>,
    keep_files: AtomicBool,
    /// Restored from a checkpoint while the files on disk built another version: reload once
    /// the run has started.
    reload_on_start: AtomicBool,
}

impl<T: Versioned> ReloadHandle<T> {
    /// Loads the first version from the files and registers the handle with the pipeline's
    /// contexts (so checkpoints keep its versions' files).
    pub fn load(spec: ReloadSpec<T>, contexts: &Contexts) -> anyhow::Result<Arc<Self>> {
        let (first, files) = load_recorded(&spec, None).map_err(|e| anyhow::anyhow!(reasons(&e)))?;
        let handle = Arc::new(ReloadHandle {
            files: Mutex::new(BTreeMap::from([(first.version().to_string(), Arc::new(files))])),
            spec,
            versions: Versions::new(first),
            clock: OnceLock::new(),
            board: OnceLock::new(),
            pending: Mutex::new(None),
            last_refusal: Mutex::new(None),
            metrics: OnceLock::new(),
            reloads: Coalescer::new(),
            watch: Mutex::new(None),
            keep_files: AtomicBool::new(true),
            reload_on_start: AtomicBool::new(false),
        });
        contexts.register(handle.clone());
        Ok(handle)
    }

    /// Keeps the files `version` was built from, for the next checkpoint.
    fn keep(&self, version: &str, files: FileSet) {
        if self.keep_files.load(Ordering::SeqCst) {
            self.files.lock().unwrap_or_else(|p| p.into_inner()).insert(version.to_string(), Arc::new(files));
        }
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
        let new = match load_recorded(&self.spec, Some(&running)) {
            Ok((new, files)) => {
                if new.version() != running.version() {
                    self.keep(new.version(), files);
                }
                new
            }
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
        if self.reload_on_start.swap(false, Ordering::SeqCst) {
            // Restored from a checkpoint while the files on disk changed: they take effect at a
            // fresh epoch, like any reload (in a cluster, agreed with the other processes).
            let weak = Arc::downgrade(self);
            let _ = std::thread::Builder::new().name("ward-reload".into()).spawn(move || {
                if let Some(h) = weak.upgrade() {
                    let _ = h.reload();
                }
            });
        }
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

/// Loads a version through recording resources: the version and the files it was built from.
fn load_recorded<T>(spec: &ReloadSpec<T>, running: Option<&T>) -> Result<(T, FileSet), Vec<Value>> {
    let resources = spec.resources.recording();
    let new = (spec.load)(&resources, running)?;
    Ok((new, resources.recorded()))
}

/// Refusal reasons as one line.
fn reasons(errors: &[Value]) -> String {
    let one = |e: &Value| match (e["path"].as_str(), e["id"].as_str(), e["reason"].as_str()) {
        (Some(p), Some(id), Some(r)) => format!("{p} ({id}): {r}"),
        (Some(p), None, Some(r)) => format!("{p}: {r}"),
        (None, _, Some(r)) => r.to_string(),
        _ => e.to_string(),
    };
    errors.iter().map(one).collect::<Vec<_>>().join("; ")
}

impl<T: Versioned> Context for ReloadHandle<T> {
    fn component(&self) -> &str {
        &self.spec.component
    }

    fn timeline(&self, epoch: u64) -> Vec<(u64, String)> {
        let history = self.versions.history();
        let from = history.iter().rposition(|(first, _)| *first <= epoch).unwrap_or(0);
        history[from..].iter().map(|(first, v)| (*first, v.version().to_string())).collect()
    }

    fn files(&self, version: &str) -> Option<Arc<FileSet>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner()).get(version).cloned()
    }

    fn keep_files(&self, keep: bool) {
        self.keep_files.store(keep, Ordering::SeqCst);
        if !keep {
            self.files.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    fn stored(&self, version: &str) {
        self.files.lock().unwrap_or_else(|p| p.into_inner()).remove(version);
    }

    fn restore(&self, versions: Vec<(u64, String, FileSet)>) -> anyhow::Result<bool> {
        let disk = self.current();
        let mut history = Vec::new();
        for (first, version, files) in versions {
            if version == disk.version() {
                history.push((first, disk.clone()));
                continue;
            }
            let rebuilt = (self.spec.load)(&self.spec.resources.replaying(files), None)
                .map_err(|e| anyhow::anyhow!("version {version}: {}", reasons(&e)))?;
            anyhow::ensure!(
                rebuilt.version() == version,
                "version {version} rebuilt from its files is version {} (built differently by this version of Ward)",
                rebuilt.version()
            );
            history.push((first, Arc::new(rebuilt)));
        }
        let Some((_, newest)) = history.last() else { return Ok(false) };
        if history.len() == 1 && newest.version() == disk.version() {
            return Ok(false);
        }
        self.reload_on_start.store(newest.version() != disk.version(), Ordering::SeqCst);
        self.versions.replace(history);
        Ok(true)
    }
}

/// A handle as a member of the cluster's switch board.
struct Member<T>(std::sync::Weak<ReloadHandle<T>>);

impl<T: Versioned> Switchable for Member<T> {
    fn prepare(&self) -> Result<Option<String>, Vec<Value>> {
        let Some(h) = self.0.upgrade() else { return Ok(None) };
        let running = h.current();
        match load_recorded(&h.spec, Some(&running)) {
            Ok((new, _)) if new.version() == running.version() => Ok(None),
            Ok((new, files)) => {
                let version = new.version().to_string();
                h.keep(&version, files);
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
        handle_in(dir, &Contexts::default())
    }

    fn handle_in(dir: &std::path::Path, contexts: &Contexts) -> Arc<ReloadHandle<Text>> {
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
        if !dir.join("v.txt").exists() {
            std::fs::write(dir.join("v.txt"), "v1").unwrap();
        }
        ReloadHandle::load(spec, contexts).unwrap()
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

    fn worker_context(dir: &std::path::Path, clock: Arc<EpochClock>) -> WorkerContext {
        WorkerContext {
            component_id: "c".into(),
            worker_index: 0,
            workers: 1,
            processes: 1,
            resources: Resources::new(dir),
            metrics: crate::metrics::Metrics::new().component("c"),
            clock,
            resumed_from: None,
            checkpointing: true,
            switches: None,
        }
    }

    /// A checkpoint names the versions in effect after its epoch and stores their files once; a
    /// resumed run rebuilds those versions from the stored files (not from the disk, changed
    /// since), and switches to the disk's version at a fresh epoch.
    #[test]
    fn checkpoints_keep_the_versions_in_effect_and_a_resume_rebuilds_them_from_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::storage::LocalStore::new(dir.path().join("ck"));
        let contexts = Contexts::default();
        let h = handle_in(dir.path(), &contexts);
        h.start(&worker_context(dir.path(), Arc::new(EpochClock::starting_at(5))));
        std::fs::write(dir.path().join("v.txt"), "v2").unwrap();
        assert_eq!(h.reload().unwrap()["first_epoch"], 6);

        let at = |named: &crate::contexts::ContextNames| -> Vec<(u64, String)> {
            named["c"].iter().map(|v| (v.first_epoch, v.version.clone())).collect()
        };
        let at5 = contexts.record(&store, 5).unwrap();
        assert_eq!(at(&at5), [(0, "v1".to_string()), (6, "v2".to_string())]);
        assert!(h.files.lock().unwrap().is_empty(), "stored files are not kept in memory");
        let at7 = contexts.record(&store, 7).unwrap();
        assert_eq!(at(&at7), [(6, "v2".to_string())]);
        assert_eq!(at7["c"][0].key, at5["c"][1].key, "stored once");

        // A new run over changed files, resuming from checkpoint 5.
        std::fs::write(dir.path().join("v.txt"), "v3").unwrap();
        let resumed = Contexts::default();
        let h2 = handle_in(dir.path(), &resumed);
        assert_eq!(h2.current().0, "v3");
        resumed.restore(&store, &at5, 5).unwrap();
        assert_eq!((h2.for_epoch(5).0.as_str(), h2.for_epoch(6).0.as_str()), ("v1", "v2"));
        h2.start(&worker_context(dir.path(), Arc::new(EpochClock::starting_at(8))));
        let started = std::time::Instant::now();
        while h2.current().0 != "v3" {
            assert!(started.elapsed() < std::time::Duration::from_secs(10), "the disk's version is switched to");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!((h2.for_epoch(8).0.as_str(), h2.for_epoch(9).0.as_str()), ("v2", "v3"));

        // Versions no retained manifest names are removed from the store.
        assert_eq!(contexts.remove_unnamed(&store, [&at7]).unwrap(), 1);
        assert!(crate::contexts::read_version(&store, &at5["c"][0]).is_err());
        assert_eq!(crate::contexts::read_version(&store, &at7["c"][0]).unwrap().files().count(), 1);
        // A version whose files are missing is not restored: the disk's version stays.
        let third = Contexts::default();
        let h3 = handle_in(dir.path(), &third);
        third.restore(&store, &at5, 5).unwrap();
        assert_eq!(h3.for_epoch(6).0, "v3");
    }
}
