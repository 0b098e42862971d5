//! The run loop: starts the admin endpoint, checkpointing and the epoch clock, builds the
//! dataflow ([`crate::dataflow`]) on N worker threads, runs it to completion (bounded sources)
//! or until asked to stop, and reports what happened.
//!
//! Time: the timely timestamp is the checkpoint epoch (`u64`), advanced by one clock for all
//! sources every `epoch_interval_ms`; event time travels inside the records (docs/architecture.md §4).
//! Sources hold a capability at the current epoch and downgrade it at batch boundaries, so
//! when every operator's input frontier passes `e`, epoch `e` is complete everywhere: the
//! point where participants write their checkpoint parts and sinks commit.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin::AdminServer;
use crate::checkpoint::{part_prefix, CheckpointConfig, Checkpointer, Ownership, Restored, SinkCheckpoint};
use crate::dataflow::{build_control, build_dataflow, ControlState, Epoch, RunContext};
use crate::metrics::{ComponentMetrics, Metrics};
use crate::registry::{Built, Section};
use crate::spec::{ComponentSpec, Spec};

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub workers: usize,
    /// This process's place in a cluster of processes (none: a single process).
    pub cluster: Option<Cluster>,
    /// Overrides the spec's admin address; `Some("")` disables the endpoint.
    pub admin_listen: Option<String>,
    /// Show a progress line on stderr (only when stderr is a terminal).
    pub progress: bool,
    /// Checkpoint location (a directory or an object-store URL), overriding the spec's
    /// (checkpoints with the default settings if the spec has none).
    pub checkpoint_dir: Option<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { workers: 1, cluster: None, admin_listen: None, progress: false, checkpoint_dir: None }
    }
}

/// Per-component figures at the end of a run.
#[derive(Clone, Debug)]
pub struct ComponentSummary {
    pub id: String,
    pub type_name: &'static str,
    pub section: Section,
    pub records_in: u64,
    pub records_out: u64,
    pub filtered: u64,
    pub quarantined: u64,
    pub quarantined_by_reason: Vec<(crate::quarantine::Reason, u64)>,
    pub errors: u64,
    pub bytes_in: u64,
}

impl ComponentSummary {
    /// in = out + filtered + quarantined, for operators; sources read = emitted + quarantined.
    pub fn ledger_balances(&self) -> bool {
        match self.section {
            Section::Source | Section::Operator => {
                self.records_in == self.records_out + self.filtered + self.quarantined
            }
            Section::Sink => self.records_in == self.records_out,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunSummary {
    pub pipeline: String,
    pub workers: usize,
    pub elapsed: Duration,
    pub components: Vec<ComponentSummary>,
    pub stopped_by_signal: bool,
    pub admin_addr: Option<std::net::SocketAddr>,
    /// The checkpoint the run resumed from, and the last one it completed.
    pub resumed_from: Option<u64>,
    pub last_checkpoint: Option<u64>,
}

impl RunSummary {
    pub fn records_read(&self) -> u64 {
        self.components.iter().filter(|c| c.section == Section::Source).map(|c| c.records_in).sum()
    }
    pub fn bytes_read(&self) -> u64 {
        self.components.iter().filter(|c| c.section == Section::Source).map(|c| c.bytes_in).sum()
    }
    pub fn events_per_second(&self) -> f64 {
        self.records_read() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn component(&self, id: &str) -> Option<&ComponentSummary> {
        self.components.iter().find(|c| c.id == id)
    }

    /// The one-screen summary printed at the end of `ward run`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let how = if self.stopped_by_signal { "stopped" } else { "finished" };
        s.push_str(&format!(
            "pipeline {} {how} in {:.2}s with {} worker(s): {} records read, {:.0} events/s, {:.1} MB/s\n",
            self.pipeline,
            self.elapsed.as_secs_f64(),
            self.workers,
            self.records_read(),
            self.events_per_second(),
            self.bytes_read() as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9),
        ));
        s.push_str(&format!(
            "{:<20} {:<12} {:>12} {:>12} {:>10} {:>12}  ledger\n",
            "component", "type", "in", "out", "filtered", "quarantined"
        ));
        for c in &self.components {
            s.push_str(&format!(
                "{:<20} {:<12} {:>12} {:>12} {:>10} {:>12}  {}\n",
                c.id,
                c.type_name,
                c.records_in,
                c.records_out,
                c.filtered,
                c.quarantined,
                if c.ledger_balances() { "ok" } else { "MISMATCH" }
            ));
            for (reason, n) in &c.quarantined_by_reason {
                s.push_str(&format!("{:<20}   quarantined {:<22} {:>10}\n", "", reason.as_str(), n));
            }
        }
        s
    }
}

/// Every participant of a run: each writes a part of every checkpoint.
fn participants(spec: &Spec, workers: std::ops::Range<usize>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for c in &spec.components {
        for w in workers.clone() {
            match &c.built {
                Built::Source(_) => {
                    names.insert(format!("{}{w}", part_prefix("source", &c.id, None)));
                }
                Built::Keyed(_) | Built::View(_) => {
                    if matches!(c.built, Built::View(_)) {
                        names.insert(format!("{}{w}", part_prefix("view", &c.id, None)));
                    }
                    names.insert(format!("{}{w}", part_prefix("keyed", &c.id, None)));
                    for i in 0..c.inputs.len() {
                        names.insert(format!("{}{w}", part_prefix("route", &c.id, Some(i))));
                    }
                }
                Built::Sink(_) => {
                    names.insert(format!("{}{w}", part_prefix("sink", &c.id, None)));
                }
                Built::Operator(_) => {}
            }
        }
    }
    names
}

/// Runs a pipeline to completion. `stop` ends it early (set by SIGINT/SIGTERM handlers):
/// sources stop reading, in-flight batches drain, sinks flush.
pub fn run(spec: &Spec, opts: &RunOptions, stop: Arc<AtomicBool>) -> anyhow::Result<RunSummary> {
    let metrics = match &opts.cluster {
        Some(c) => Metrics::for_process(c.process),
        None => Metrics::new(),
    };
    run_with_metrics(spec, opts, stop, metrics)
}

/// Process `process` of a cluster whose processes listen on `peers` (the same list, in the same
/// order, on every process), each with the same number of workers, over timely's networking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub process: usize,
    pub peers: Vec<String>,
    /// A peer silent this long is taken for lost (see `dataflow::control`).
    pub peer_timeout: Duration,
    /// All processes must be connected and restored this long after start.
    pub connect_timeout: Duration,
}

impl Cluster {
    /// Checks the process index against the peer list.
    pub fn new(process: usize, peers: Vec<String>) -> anyhow::Result<Cluster> {
        if peers.is_empty() {
            anyhow::bail!("a cluster needs its peer list (--peers HOST:PORT,HOST:PORT,...)");
        }
        if process >= peers.len() {
            anyhow::bail!("process index {process} is not below the number of peers ({})", peers.len());
        }
        if let Some(bad) = peers.iter().find(|p| !p.contains(':')) {
            anyhow::bail!("peer `{bad}` is not HOST:PORT");
        }
        Ok(Cluster { process, peers, peer_timeout: Duration::from_secs(10), connect_timeout: Duration::from_secs(120) })
    }

    pub fn with_timeouts(mut self, peer: Duration, connect: Duration) -> anyhow::Result<Cluster> {
        if peer < Duration::from_secs(1) {
            anyhow::bail!("the peer timeout must be at least 1s (heartbeats go every quarter of it)");
        }
        self.peer_timeout = peer;
        self.connect_timeout = connect.max(peer);
        Ok(self)
    }

    /// The global indices of this process's workers.
    pub fn workers_of(&self, workers: usize) -> std::ops::Range<usize> {
        self.process * workers..(self.process + 1) * workers
    }

    /// The process index in a StatefulSet pod's host name (`ward-3` → 3).
    pub fn process_from_hostname(hostname: &str) -> anyhow::Result<usize> {
        let host = hostname.split('.').next().unwrap_or(hostname);
        host.rsplit_once('-').and_then(|(_, n)| n.parse().ok()).ok_or_else(|| {
            anyhow::anyhow!("host name `{hostname}` does not end in -<ordinal> (as StatefulSet pods do)")
        })
    }
}

/// A timely cluster cannot go on without one of its processes: its network threads panic when
/// a peer's connection breaks. Say so plainly and exit non-zero (the orchestrator restarts the
/// processes, which resume from the newest checkpoint) instead of a panic and a backtrace.
fn exit_when_a_peer_is_lost(cluster: &Cluster) {
    let (process, peers) = (cluster.process, cluster.peers.len());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("timely communication error") || message.contains("MergeQueue poisoned") {
            let thread = std::thread::current().name().unwrap_or("?").to_string();
            eprintln!(
                "error: process {process} of {peers}: lost a peer of the cluster ({message}, in {thread}); exiting so that all processes restart and resume"
            );
            std::process::exit(1);
        }
        previous(info);
    }));
}

/// The processes of a cluster wait for each other on start (timely's networking retries its
/// connections for ever): bound that wait, with a clear error.
fn exit_unless_connected_in_time(cluster: &Cluster, state: Arc<ControlState>, finished: Arc<AtomicBool>) {
    let (process, peers, timeout) = (cluster.process, cluster.peers.clone(), cluster.connect_timeout);
    std::thread::spawn(move || {
        let started = Instant::now();
        while !state.ready() && !finished.load(Ordering::SeqCst) {
            if started.elapsed() > timeout {
                eprintln!(
                    "error: process {process} of {}: the cluster did not form within {timeout:.0?} (peers {}; connection errors are printed above); exiting",
                    peers.len(),
                    peers.join(",")
                );
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

pub fn run_with_metrics(
    spec: &Spec,
    opts: &RunOptions,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<RunSummary> {
    let workers = opts.workers.max(1);
    let started = Instant::now();
    metrics.workers.set(workers as i64);
    let listen = opts.admin_listen.clone().unwrap_or_else(|| spec.settings.admin_listen.clone());
    let admin = if listen.is_empty() {
        None
    } else {
        Some(AdminServer::start(&listen, metrics.clone(), spec.admin_routes.clone(), spec.settings.admin_options())?)
    };
    if let Some(a) = &admin {
        tracing::info!("admin endpoint on http://{}/metrics", a.local_addr);
    }

    let (process, processes) = opts.cluster.as_ref().map_or((0, 1), |c| (c.process, c.peers.len()));
    let local_workers = opts.cluster.as_ref().map_or(0..workers, |c| c.workers_of(workers));
    let checkpoint = match (&spec.settings.checkpoint, &opts.checkpoint_dir) {
        (None, None) => {
            spec.contexts.discard_files();
            (None, None)
        }
        (config, dir) => {
            let config = config.clone().unwrap_or_else(|| CheckpointConfig::with_dir(""));
            let location = dir.clone().unwrap_or_else(|| config.location().to_string());
            let store = crate::storage::open(
                &location,
                spec.resources.base(),
                &spec.settings.storage,
                Some(&metrics.families),
                "checkpoint",
            )
            .map_err(|e| anyhow::anyhow!("checkpoint location: {e:#}"))?;
            let complete = crate::checkpoint::list(store.as_ref())?;
            let restored = complete.last().cloned().map(|m| Restored::load(store.as_ref(), m)).transpose()?;
            if process == 0 {
                let strays = crate::checkpoint::remove_strays(store.as_ref(), &complete)?;
                if strays > 0 {
                    tracing::info!("removed {strays} object(s) no checkpoint manifest names from {}", store.location());
                }
            }
            let start = restored.as_ref().map_or(0, |r| r.manifest.epoch + 1);
            if let Some(r) = &restored {
                tracing::info!("resuming from checkpoint {} in {}", r.manifest.epoch, store.location());
            }
            let mut checkpointer = Checkpointer::new(
                store,
                &config,
                spec.settings.epoch_interval_ms,
                &spec.name,
                workers,
                participants(spec, local_workers.clone()),
                start,
            )?
            .with_metrics(metrics.checkpoint.clone())
            .with_rulesets({
                let m = metrics.clone();
                Arc::new(move || m.ruleset_versions())
            });
            if process == 0 {
                checkpointer = checkpointer.with_contexts(spec.contexts.clone());
            } else {
                // Process 0 writes the manifests, and with them the contexts' files.
                spec.contexts.discard_files();
            }
            if opts.cluster.is_some() {
                checkpointer = checkpointer.in_cluster(process, processes);
            }
            // Sinks settle what the previous run left before anything runs (in a cluster, each
            // process what its share of the former workers left: the run cannot start before
            // every process has connected, so all of this is done before anything is written).
            if let Some(latest) = &restored {
                let owner = Ownership { process, processes, workers_per_process: latest.manifest.workers };
                settle_sinks(
                    spec,
                    checkpointer.store().as_ref(),
                    latest.manifest.epoch,
                    owner,
                    "cannot resume from the checkpoint",
                    |f, v| f.restore(v),
                )?;
                // Records replayed from the checkpoint meet the rule sets and enrichment data of
                // the first run, rebuilt from the files the checkpoint kept.
                spec.contexts.restore(
                    checkpointer.store().as_ref(),
                    &latest.manifest.contexts,
                    latest.manifest.epoch,
                )?;
            }
            (Some(checkpointer), restored)
        }
    };
    let (checkpointer, restored) = checkpoint;
    let run = Arc::new(
        RunContext::new(spec.clone(), metrics.clone(), stop.clone(), checkpointer, restored).in_cluster_of(processes),
    );
    let finished = Arc::new(AtomicBool::new(false));
    let clock = spawn_epoch_clock(run.clone(), finished.clone());
    let monitor = spawn_monitor(run.clone(), finished.clone(), opts.progress);

    let ready_workers = Arc::new(AtomicU64::new(0));
    let worker_run = run.clone();
    let ready = ready_workers.clone();
    let control_state = Arc::new(ControlState::default());
    let control =
        opts.cluster.as_ref().map(|c| (control_state.clone(), c.peers.len(), c.peer_timeout, c.connect_timeout));
    let config = match &opts.cluster {
        None => timely::Config::process(workers),
        Some(c) => {
            exit_when_a_peer_is_lost(c);
            exit_unless_connected_in_time(c, control_state.clone(), finished.clone());
            tracing::info!(
                "process {} of {} ({} workers each), waiting for peers {}",
                c.process,
                c.peers.len(),
                workers,
                c.peers.join(",")
            );
            timely::Config {
                communication: timely::CommunicationConfig::Cluster {
                    threads: workers,
                    process: c.process,
                    addresses: c.peers.clone(),
                    report: false,
                    zerocopy: false,
                },
                worker: timely::WorkerConfig::default(),
            }
        }
    };
    let guards = timely::execute(config, move |worker| {
        let run = worker_run.clone();
        let pipeline = worker.next_dataflow_index();
        worker.dataflow::<Epoch, _, _>(|scope| build_dataflow(scope, &run));
        // In a cluster, the control stream beside it (every worker builds the same dataflows).
        let mut control = control.clone().map(|(state, processes, peer, connect)| {
            build_control(worker, run.clone(), state, processes, peer, connect)
        });
        if ready.fetch_add(1, Ordering::SeqCst) + 1 == workers as u64 {
            // In a cluster, ready once every process is (the control stream says so).
            if control.is_none() {
                run.metrics.ready.set(1);
            }
        }
        match control.as_mut() {
            None => while worker.step_or_park(Some(Duration::from_millis(20))) {},
            Some(control) => loop {
                let more = worker.step_or_park(Some(Duration::from_millis(20)));
                control.pump(!worker.installed_dataflows().contains(&pipeline));
                if !more && control.finished() {
                    break;
                }
            },
        }
    })
    .map_err(|e| anyhow::anyhow!("cannot start workers: {e}"))?;
    let results = guards.join();
    finished.store(true, Ordering::SeqCst);
    let _ = clock.join();
    let _ = monitor.join();
    metrics.ready.set(0);
    for r in results {
        r.map_err(|e| anyhow::anyhow!("worker failed: {e}"))?;
    }
    if let Some(f) = run.failure() {
        anyhow::bail!(f);
    }
    if let Some(ck) = run.checkpointer() {
        // Every participant retired with its final state: one last checkpoint, so a restart
        // neither repeats nor loses anything (in a cluster it was agreed on the control stream).
        let owner = Ownership { process, processes, workers_per_process: workers };
        if opts.cluster.is_some() {
            if control_state.closed() {
                settle_sinks(spec, ck.store().as_ref(), u64::MAX, owner, "closing", |f, v| f.closed(v))?;
            }
        } else if ck.all_retired() {
            let exhausted = !stop.load(Ordering::SeqCst);
            ck.finish(run.clock.current() + 1, exhausted)?;
            settle_sinks(spec, ck.store().as_ref(), u64::MAX, owner, "closing", |f, v| f.closed(v))?;
        }
    }

    let mut ordered: Vec<&ComponentSpec> = spec.components.iter().collect();
    ordered.sort_by_key(|c| c.section());
    let components = ordered
        .into_iter()
        .map(|c| {
            let m = metrics.component(&c.id);
            ComponentSummary {
                id: c.id.clone(),
                type_name: c.kind.type_name,
                section: c.section(),
                records_in: m.records_in.get(),
                records_out: m.records_out.get(),
                filtered: m.filtered.get(),
                quarantined: m.quarantined_total(),
                quarantined_by_reason: m.quarantined_by_reason(),
                errors: m.errors.get(),
                bytes_in: m.bytes_in.get(),
            }
        })
        .collect();
    Ok(RunSummary {
        pipeline: spec.name.clone(),
        workers,
        elapsed: started.elapsed(),
        components,
        stopped_by_signal: stop.load(Ordering::SeqCst),
        admin_addr: admin.as_ref().map(|a| a.local_addr),
        resumed_from: run.resumed_from(),
        last_checkpoint: run.checkpointer().and_then(|c| c.committed()),
    })
}

fn spawn_epoch_clock(run: Arc<RunContext>, finished: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let interval = Duration::from_millis(run.spec.settings.epoch_interval_ms.max(1));
    std::thread::spawn(move || {
        let mut next = Instant::now() + interval;
        while !finished.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10).min(interval));
            if Instant::now() >= next {
                let e = run.clock.advance();
                run.metrics.epoch.set(e as i64);
                next += interval;
            }
        }
    })
}

/// Updates the events/s gauge and, on a terminal, a progress line.
fn spawn_monitor(run: Arc<RunContext>, finished: Arc<AtomicBool>, progress: bool) -> std::thread::JoinHandle<()> {
    use std::io::IsTerminal;
    std::thread::spawn(move || {
        let sources: Vec<ComponentMetrics> = run
            .spec
            .components
            .iter()
            .filter(|c| c.section() == Section::Source)
            .map(|c| run.metrics.component(&c.id))
            .collect();
        let all: Vec<ComponentMetrics> = run.spec.components.iter().map(|c| run.metrics.component(&c.id)).collect();
        let bar = if progress && std::io::stderr().is_terminal() {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}").expect("valid template"),
            );
            Some(b)
        } else {
            None
        };
        let mut last = (Instant::now(), 0u64);
        while !finished.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(250));
            let read: u64 = sources.iter().map(|m| m.records_in.get()).sum();
            let now = Instant::now();
            let dt = now.duration_since(last.0).as_secs_f64();
            if dt >= 1.0 {
                run.metrics.events_per_second.set((read - last.1) as f64 / dt);
                last = (now, read);
            }
            if let Some(b) = &bar {
                let quarantined: u64 = all.iter().map(|m| m.quarantined_total()).sum();
                let eps = run.metrics.events_per_second.get();
                // Bounded sources that know their size (a hunt, a replay): share done and ETA.
                let expected: i64 = sources.iter().map(|m| m.records_expected.get()).sum();
                let share = if expected > 0 {
                    let left = (expected - read as i64).max(0) as f64;
                    let eta = match eps > 0.0 || left == 0.0 {
                        true => {
                            humantime_serde::re::humantime::format_duration(Duration::from_secs((left / eps) as u64))
                                .to_string()
                        }
                        false => "?".into(),
                    };
                    format!(" of {expected} ({:.0}%, ETA {eta})", 100.0 * read as f64 / expected as f64)
                } else {
                    String::new()
                };
                // How far event time got: the stateful operators' newest watermark.
                let reached = all.iter().map(|m| m.watermark.get()).filter(|t| *t < 4.1e9).fold(0.0f64, f64::max);
                let time = if reached > 0.0 {
                    format!(", event time {}", crate::batch::format_timestamp_ms((reached * 1000.0) as i64))
                } else {
                    String::new()
                };
                b.set_message(format!(
                    "{read} records read{share}, {eps:.0} events/s{time}, {quarantined} quarantined, epoch {}",
                    run.clock.current()
                ));
                b.tick();
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
    })
}

/// Hands every sink the complete checkpoints up to `upto` (oldest first) through `settle`.
fn settle_sinks(
    spec: &Spec,
    store: &dyn crate::storage::Store,
    upto: u64,
    owner: Ownership,
    what: &str,
    settle: impl Fn(&dyn crate::component::SinkFactory, &[SinkCheckpoint<'_>]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let retained: Vec<Restored> = crate::checkpoint::list(store)?
        .into_iter()
        .filter(|m| m.epoch <= upto)
        .map(|m| Restored::load(store, m))
        .collect::<anyhow::Result<_>>()?;
    for c in spec.components.iter() {
        if let Built::Sink(factory) = &c.built {
            let views: Vec<SinkCheckpoint<'_>> = retained.iter().map(|r| SinkCheckpoint::of(r, &c.id, owner)).collect();
            settle(factory.as_ref(), &views).map_err(|e| anyhow::anyhow!("sink `{}`: {what}: {e:#}", c.id))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Cluster;

    #[test]
    fn cluster_settings() {
        assert_eq!(Cluster::process_from_hostname("ward-3").unwrap(), 3);
        assert_eq!(Cluster::process_from_hostname("ward-detection-12.ward-headless.ns.svc").unwrap(), 12);
        assert!(Cluster::process_from_hostname("laptop").is_err());
        assert!(Cluster::new(2, vec!["a:1".into(), "b:2".into()]).is_err());
        assert!(Cluster::new(0, vec!["nocolon".into()]).is_err());
        assert_eq!(Cluster::new(1, vec!["a:1".into(), "b:2".into()]).unwrap().process, 1);
    }
}
