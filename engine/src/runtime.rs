//! The planner and the run loop: turns a validated [`Spec`] into a timely dataflow on N
//! worker threads, runs it to completion (bounded sources) or until asked to stop, and
//! reports what happened.
//!
//! Time: the timely timestamp is the checkpoint epoch (`u64`), advanced by one clock for all
//! sources every `epoch_interval_ms`; event time travels inside the records (docs/architecture.md §4).
//! Sources hold a capability at the current epoch and downgrade it at batch boundaries, so
//! when every operator's input frontier passes `e`, epoch `e` is complete everywhere: the
//! point where participants write their checkpoint parts and sinks commit.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::Concatenate;
use timely::dataflow::{Scope, Stream};

use std::collections::BTreeSet;

use crate::admin::AdminServer;
use crate::batch::EventBatch;
use crate::checkpoint::{part_prefix, CheckpointConfig, Checkpointer, Restored, SinkCheckpoint};
use crate::clock::EpochClock;
use crate::component::{Operator, OperatorOutput, Payload, Progress, Sink, Source, SourcePoll, WorkerContext};
use crate::metrics::{ComponentMetrics, Metrics};
use crate::registry::{Built, Section};
use crate::spec::{ComponentSpec, InputRef, Port, Spec};

type Epoch = u64;
type PayloadStream<'s> = Stream<'s, Epoch, Vec<Payload>>;

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub workers: usize,
    /// Overrides the spec's admin address; `Some("")` disables the endpoint.
    pub admin_listen: Option<String>,
    /// Show a progress line on stderr (only when stderr is a terminal).
    pub progress: bool,
    /// Overrides the spec's checkpoint directory (checkpoints with the default settings if the
    /// spec has none).
    pub checkpoint_dir: Option<std::path::PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { workers: 1, admin_listen: None, progress: false, checkpoint_dir: None }
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

/// Shared state of one run, visible to every worker.
struct Shared {
    spec: Spec,
    metrics: Arc<Metrics>,
    epoch: Arc<EpochClock>,
    stop: Arc<AtomicBool>,
    failure: Mutex<Option<String>>,
    checkpoint: Option<Arc<Checkpointing>>,
}

/// Checkpointing of a run: where parts go, and the checkpoint it resumed from.
pub(crate) struct Checkpointing {
    pub checkpointer: Checkpointer,
    pub restored: Option<Restored>,
    /// The run's stop flag: a stopped run resumes later, so its input did not end.
    pub stop: Arc<AtomicBool>,
    /// Checkpoint or restore failures of stateful stages; the run stops and reports them.
    failures: Mutex<Vec<String>>,
}

impl Checkpointing {
    /// A participant could not write or restore its state: the run must not go on as if it had.
    pub fn fail(&self, what: String) {
        tracing::error!("{what}; stopping");
        self.checkpointer.abort();
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).push(what);
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The input ends because the run was stopped (to be resumed), not because it was
    /// exhausted: watermarks must not jump to the end.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

impl Checkpointing {
    /// The parts of every worker of participant `prefix` (e.g. `source.logs.w`) in the checkpoint
    /// the run resumed from.
    pub fn restored_parts(&self, prefix: &str) -> Vec<&[u8]> {
        self.restored.iter().flat_map(|r| r.parts_with_prefix(prefix).map(|(_, b)| b)).collect()
    }
}

/// Every participant of a run: each writes a part of every checkpoint.
fn participants(spec: &Spec, workers: usize) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for c in &spec.components {
        for w in 0..workers {
            match &c.built {
                Built::Source(_) => {
                    names.insert(format!("{}{w}", part_prefix("source", &c.id, None)));
                }
                Built::Keyed(_) => {
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

impl Shared {
    fn fail(&self, what: String) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            tracing::error!("{what}; stopping");
            *f = Some(what);
        } else {
            tracing::debug!("{what}");
        }
        if let Some(ck) = &self.checkpoint {
            ck.checkpointer.abort();
        }
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Runs a pipeline to completion. `stop` ends it early (set by SIGINT/SIGTERM handlers):
/// sources stop reading, in-flight batches drain, sinks flush.
pub fn run(spec: &Spec, opts: &RunOptions, stop: Arc<AtomicBool>) -> anyhow::Result<RunSummary> {
    run_with_metrics(spec, opts, stop, Metrics::new())
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

    let checkpoint = match (&spec.settings.checkpoint, &opts.checkpoint_dir) {
        (None, None) => None,
        (config, dir) => {
            let config = config.clone().unwrap_or_else(|| CheckpointConfig::with_dir(""));
            let root = dir.clone().unwrap_or_else(|| spec.resources.resolve(&config.dir));
            let restored = Restored::latest(&root)?;
            let start = restored.as_ref().map_or(0, |r| r.manifest.epoch + 1);
            if let Some(r) = &restored {
                tracing::info!("resuming from checkpoint {} in {}", r.manifest.epoch, root.display());
            }
            let checkpointer = Checkpointer::new(
                root,
                &config,
                spec.settings.epoch_interval_ms,
                &spec.name,
                workers,
                participants(spec, workers),
                start,
            )?
            .with_metrics(metrics.checkpoint.clone())
            .with_rulesets({
                let m = metrics.clone();
                Arc::new(move || m.ruleset_versions())
            });
            Some(Arc::new(Checkpointing {
                checkpointer,
                restored,
                stop: stop.clone(),
                failures: Mutex::new(Vec::new()),
            }))
        }
    };
    if let Some(ck) = &checkpoint {
        // Sinks settle what the previous run left before anything runs.
        if let Some(latest) = &ck.restored {
            settle_sinks(
                spec,
                ck.checkpointer.root(),
                latest.manifest.epoch,
                "cannot resume from the checkpoint",
                |f, v| f.restore(v),
            )?;
        }
    }
    let start_epoch = checkpoint.as_ref().and_then(|c| c.restored.as_ref()).map_or(0, |r| r.manifest.epoch + 1);
    let shared = Arc::new(Shared {
        spec: spec.clone(),
        metrics: metrics.clone(),
        epoch: Arc::new(EpochClock::starting_at(start_epoch)),
        stop: stop.clone(),
        failure: Mutex::new(None),
        checkpoint,
    });
    let finished = Arc::new(AtomicBool::new(false));
    let clock = spawn_epoch_clock(shared.clone(), finished.clone());
    let monitor = spawn_monitor(shared.clone(), finished.clone(), opts.progress);

    let ready_workers = Arc::new(AtomicU64::new(0));
    let worker_shared = shared.clone();
    let ready = ready_workers.clone();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let shared = worker_shared.clone();
        worker.dataflow::<Epoch, _, _>(|scope| build_dataflow(scope, &shared));
        if ready.fetch_add(1, Ordering::SeqCst) + 1 == workers as u64 {
            shared.metrics.ready.set(1);
            warn_changed_rulesets(&shared);
        }
        while worker.step_or_park(Some(Duration::from_millis(20))) {}
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
    if let Some(f) = shared.failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        anyhow::bail!(f);
    }
    if let Some(ck) = &shared.checkpoint {
        if let Some(f) = ck.failures.lock().unwrap_or_else(|p| p.into_inner()).first() {
            anyhow::bail!("{f}");
        }
        // Every participant retired with its final state: one last checkpoint, so a restart
        // neither repeats nor loses anything.
        if ck.checkpointer.all_retired() {
            let exhausted = !stop.load(Ordering::SeqCst);
            ck.checkpointer.finish(shared.epoch.current() + 1, exhausted)?;
            settle_sinks(spec, ck.checkpointer.root(), u64::MAX, "closing", |f, v| f.closed(v))?;
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
        resumed_from: shared.checkpoint.as_ref().and_then(|c| c.restored.as_ref()).map(|r| r.manifest.epoch),
        last_checkpoint: shared.checkpoint.as_ref().and_then(|c| c.checkpointer.committed()),
    })
}

fn spawn_epoch_clock(shared: Arc<Shared>, finished: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let interval = Duration::from_millis(shared.spec.settings.epoch_interval_ms.max(1));
    std::thread::spawn(move || {
        let mut next = Instant::now() + interval;
        while !finished.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10).min(interval));
            if Instant::now() >= next {
                let e = shared.epoch.advance();
                shared.metrics.epoch.set(e as i64);
                next += interval;
            }
        }
    })
}

/// Updates the events/s gauge and, on a terminal, a progress line.
fn spawn_monitor(shared: Arc<Shared>, finished: Arc<AtomicBool>, progress: bool) -> std::thread::JoinHandle<()> {
    use std::io::IsTerminal;
    std::thread::spawn(move || {
        let sources: Vec<ComponentMetrics> = shared
            .spec
            .components
            .iter()
            .filter(|c| c.section() == Section::Source)
            .map(|c| shared.metrics.component(&c.id))
            .collect();
        let all: Vec<ComponentMetrics> =
            shared.spec.components.iter().map(|c| shared.metrics.component(&c.id)).collect();
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
                shared.metrics.events_per_second.set((read - last.1) as f64 / dt);
                last = (now, read);
            }
            if let Some(b) = &bar {
                let quarantined: u64 = all.iter().map(|m| m.quarantined_total()).sum();
                b.set_message(format!(
                    "{read} records read, {:.0} events/s, {quarantined} quarantined, epoch {}",
                    shared.metrics.events_per_second.get(),
                    shared.epoch.current()
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
    root: &std::path::Path,
    upto: u64,
    what: &str,
    settle: impl Fn(&dyn crate::component::SinkFactory, &[SinkCheckpoint<'_>]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let retained: Vec<Restored> = crate::checkpoint::list(root)?
        .into_iter()
        .filter(|m| m.epoch <= upto)
        .map(|m| Restored::load(root, m))
        .collect::<anyhow::Result<_>>()?;
    for c in spec.components.iter() {
        if let Built::Sink(factory) = &c.built {
            let views: Vec<SinkCheckpoint<'_>> = retained.iter().map(|r| SinkCheckpoint::of(r, &c.id)).collect();
            settle(factory.as_ref(), &views).map_err(|e| anyhow::anyhow!("sink `{}`: {what}: {e:#}", c.id))?;
        }
    }
    Ok(())
}

/// Records replayed from a checkpoint are matched with the rules running now; say so when they
/// differ from the rules that ran when the checkpoint was taken.
fn warn_changed_rulesets(shared: &Shared) {
    let Some(restored) = shared.checkpoint.as_ref().and_then(|c| c.restored.as_ref()) else { return };
    let now = shared.metrics.ruleset_versions();
    for (component, then) in &restored.manifest.rulesets {
        if let Some(current) = now.get(component).filter(|v| *v != then) {
            tracing::warn!(
                "rule set of `{component}` changed since checkpoint {} ({then} -> {current}): records replayed from it are matched with the new rules",
                restored.manifest.epoch
            );
        }
    }
}

fn worker_context(shared: &Shared, c: &ComponentSpec, index: usize, peers: usize) -> WorkerContext {
    WorkerContext {
        component_id: c.id.as_str().into(),
        worker_index: index,
        workers: peers,
        resources: shared.spec.resources.clone(),
        metrics: shared.metrics.component(&c.id),
        clock: shared.epoch.clone(),
        resumed_from: shared.checkpoint.as_ref().and_then(|c| c.restored.as_ref()).map(|r| r.manifest.epoch),
        checkpointing: shared.checkpoint.is_some(),
    }
}

fn build_dataflow<'s>(scope: Scope<'s, Epoch>, shared: &Arc<Shared>) {
    let mut main: HashMap<String, PayloadStream<'s>> = HashMap::new();
    let mut quarantine: HashMap<String, PayloadStream<'s>> = HashMap::new();
    // Sinks last, so that `quarantine` inputs see every producer.
    let order = shared
        .spec
        .components
        .iter()
        .filter(|c| c.section() != Section::Sink)
        .chain(shared.spec.components.iter().filter(|c| c.section() == Section::Sink));
    for c in order {
        let ctx = worker_context(shared, c, scope.index(), scope.peers());
        let metrics = shared.metrics.component(&c.id);
        match &c.built {
            Built::Source(factory) => {
                let source = factory.create(&ctx).unwrap_or_else(|e| {
                    shared.fail(format!("source `{}`: {e:#}", c.id));
                    Box::new(Exhausted)
                });
                let (m, q) = build_source(scope, shared.clone(), c, source, metrics);
                main.insert(c.id.clone(), m);
                quarantine.insert(c.id.clone(), q);
            }
            Built::Operator(factory) => {
                let input = inputs_of(scope, c, &main, &quarantine);
                let op = factory.create(&ctx).unwrap_or_else(|e| {
                    shared.fail(format!("operator `{}`: {e:#}", c.id));
                    Box::new(PassThrough)
                });
                let (m, q) = build_operator(input, c, op, metrics);
                main.insert(c.id.clone(), m);
                quarantine.insert(c.id.clone(), q);
            }
            Built::Keyed(factory) => {
                let inputs: Vec<_> = c
                    .inputs
                    .iter()
                    .map(|i| (stream_of(i, &main, &quarantine, scope), input_timing(&shared.spec, i)))
                    .collect();
                let parts = factory.router(&ctx).and_then(|r| Ok((r, factory.operator(&ctx)?)));
                let (router, op) = parts.unwrap_or_else(|e| {
                    shared.fail(format!("operator `{}`: {e:#}", c.id));
                    (
                        Box::new(DropAll) as Box<dyn crate::keyed::Router>,
                        Box::new(NoState) as Box<dyn crate::keyed::KeyedOperator>,
                    )
                });
                let (m, q) = crate::stateful::build(
                    inputs,
                    c.id.as_str().into(),
                    router,
                    op,
                    metrics,
                    shared.checkpoint.clone(),
                );
                main.insert(c.id.clone(), m);
                quarantine.insert(c.id.clone(), q);
            }
            Built::Sink(factory) => {
                let input = inputs_of(scope, c, &main, &quarantine);
                match factory.create(&ctx) {
                    Ok(sink) => build_sink(input, shared.clone(), c, sink, metrics),
                    Err(e) => {
                        shared.fail(format!("sink `{}`: {e:#}", c.id));
                        build_sink(input, shared.clone(), c, Box::new(Discard), metrics)
                    }
                }
            }
        }
    }
}

fn inputs_of<'s>(
    scope: Scope<'s, Epoch>,
    c: &ComponentSpec,
    main: &HashMap<String, PayloadStream<'s>>,
    quarantine: &HashMap<String, PayloadStream<'s>>,
) -> PayloadStream<'s> {
    let mut streams: Vec<_> = c.inputs.iter().map(|i| stream_of(i, main, quarantine, scope)).collect();
    if streams.len() == 1 {
        streams.pop().expect("one stream")
    } else {
        scope.concatenate(streams)
    }
}

fn stream_of<'s>(
    input: &InputRef,
    main: &HashMap<String, PayloadStream<'s>>,
    quarantine: &HashMap<String, PayloadStream<'s>>,
    scope: Scope<'s, Epoch>,
) -> PayloadStream<'s> {
    match input {
        InputRef::Component { id, port: Port::Main } => main[id].clone(),
        InputRef::Component { id, port: Port::Quarantine } => quarantine[id].clone(),
        InputRef::AllQuarantine => {
            let mut ids: Vec<_> = quarantine.keys().collect();
            ids.sort();
            scope.concatenate(ids.into_iter().map(|id| quarantine[id].clone()))
        }
    }
}

/// Where an input of a stateful operator gets its event time: the sources it reads through
/// stateless operators, and the stateful operators it reads from.
fn input_timing(spec: &Spec, input: &InputRef) -> crate::stateful::InputTiming {
    let mut timing = crate::stateful::InputTiming::default();
    let mut todo: Vec<&str> = match input {
        InputRef::Component { id, .. } => vec![id.as_str()],
        InputRef::AllQuarantine => spec.components.iter().map(|c| c.id.as_str()).collect(),
    };
    let mut seen = std::collections::HashSet::new();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(c) = spec.component(id) else { continue };
        match &c.built {
            Built::Source(_) => {
                timing.sources.insert(c.id.clone(), c.event_time.clone());
            }
            Built::Keyed(_) => timing.upstream.push(c.id.as_str().into()),
            _ => {
                for i in &c.inputs {
                    match i {
                        InputRef::Component { id, .. } => todo.push(id.as_str()),
                        InputRef::AllQuarantine => todo.extend(spec.components.iter().map(|c| c.id.as_str())),
                    }
                }
            }
        }
    }
    timing.upstream.sort();
    timing
}

fn build_source<'s>(
    scope: Scope<'s, Epoch>,
    shared: Arc<Shared>,
    c: &ComponentSpec,
    mut source: Box<dyn Source>,
    metrics: ComponentMetrics,
) -> (PayloadStream<'s>, PayloadStream<'s>) {
    let mut builder = OperatorBuilder::new(format!("source:{}", c.id), scope);
    let info = builder.operator_info();
    let (mut out, main) = builder.new_output::<Vec<Payload>>();
    let (mut qout, quarantine) = builder.new_output::<Vec<Payload>>();
    let activator = scope.activator_for(info.address.clone());
    let batch_size = shared.spec.settings.batch_size.max(1);
    let id = c.id.clone();
    let source_id: Arc<str> = c.id.as_str().into();
    let prefix = part_prefix("source", &c.id, None);
    let part = format!("{prefix}{}", scope.index());
    let checkpoint = shared.checkpoint.clone();
    if let Some(ck) = &checkpoint {
        if let Err(e) = source.restore(&ck.restored_parts(&prefix)) {
            shared.fail(format!("source `{id}`: cannot resume from the checkpoint: {e:#}"));
        }
    }
    // A source that stops reading hands its final position to the checkpointer.
    // (Its records so far are all at epochs up to `at`, its capability's time.)
    let retire = {
        let shared = shared.clone();
        let (checkpoint, part, id) = (checkpoint.clone(), part.clone(), id.clone());
        move |source: &dyn Source, at: Epoch| {
            if let Some(ck) = &checkpoint {
                if let Err(e) = source.checkpoint().and_then(|b| ck.checkpointer.retire(&part, b, at)) {
                    shared.fail(format!("source `{id}`: checkpoint: {e:#}"));
                }
            }
        }
    };
    builder.build(move |mut caps| {
        let mut caps = Some((caps.remove(0), caps.remove(0)));
        let mut announced = false;
        // The newest complete checkpoint the source was told about.
        let mut notified: Option<Epoch> = None;
        move |_frontiers| {
            let Some((cap, qcap)) = caps.as_mut() else {
                return;
            };
            if !announced {
                // At epoch 0, before any record: watermarks wait for these partitions.
                announced = true;
                let partitions = source.partitions();
                if !partitions.is_empty() {
                    let p = Progress::Partitions { source: source_id.clone(), partitions };
                    out.activate().give(&*cap, &mut vec![Payload::Progress(p)]);
                }
            }
            if shared.stop.load(Ordering::SeqCst) {
                retire(&*source, *cap.time());
                caps = None;
                return;
            }
            if let Some(done) = checkpoint.as_ref().and_then(|ck| ck.checkpointer.committed()) {
                if notified.is_none_or(|n| n < done) {
                    notified = Some(done);
                    source.checkpoint_complete(done);
                }
            }
            let epoch = shared.epoch.current();
            if *cap.time() < epoch {
                // Everything emitted so far belongs to epochs before `epoch`.
                if let Some(ck) = &checkpoint {
                    if let Some(c) = ck.checkpointer.due(*cap.time(), epoch) {
                        match source.checkpoint().and_then(|b| ck.checkpointer.write(c, &part, &b)) {
                            Ok(()) => source.checkpoint_written(c),
                            Err(e) => shared.fail(format!("source `{id}`: checkpoint {c}: {e:#}")),
                        }
                    }
                }
                cap.downgrade(&epoch);
                qcap.downgrade(&epoch);
            }
            // Produce for a bounded slice of time, then yield so other operators run.
            let budget = Instant::now() + Duration::from_millis(5);
            loop {
                let started = Instant::now();
                let (batch, records) = match source.poll(batch_size) {
                    Ok(SourcePoll::Batch(batch)) => (Some(batch), None),
                    Ok(SourcePoll::Quarantine(records)) => (None, Some(records)),
                    Ok(SourcePoll::Both(batch, records)) => (Some(batch), Some(records)),
                    Ok(SourcePoll::Pending(wait)) => {
                        activator.activate_after(wait.min(Duration::from_millis(100)));
                        return;
                    }
                    Ok(SourcePoll::Done) => {
                        retire(&*source, *cap.time());
                        caps = None;
                        return;
                    }
                    Err(e) => {
                        metrics.errors.inc();
                        shared.fail(format!("source `{id}`: {e:#}"));
                        caps = None;
                        return;
                    }
                };
                if let Some(batch) = batch {
                    metrics.records_in.inc_by(batch.len() as u64);
                    metrics.records_out.inc_by(batch.len() as u64);
                    metrics.bytes_in.inc_by(batch.raw_len() as u64);
                    metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
                    if !batch.is_empty() {
                        out.activate().give(&*cap, &mut vec![Payload::Events(batch)]);
                    }
                }
                if let Some(records) = records {
                    metrics.records_in.inc_by(records.len() as u64);
                    for r in &records {
                        metrics.quarantined(r.reason).inc();
                    }
                    qout.activate().give(&*qcap, &mut vec![Payload::Quarantine(records)]);
                }
                if Instant::now() >= budget {
                    activator.activate();
                    return;
                }
            }
        }
    });
    (main, quarantine)
}

fn build_operator<'s>(
    input: PayloadStream<'s>,
    c: &ComponentSpec,
    mut op: Box<dyn Operator>,
    metrics: ComponentMetrics,
) -> (PayloadStream<'s>, PayloadStream<'s>) {
    let mut builder = OperatorBuilder::new(format!("operator:{}", c.id), input.scope());
    let mut input = builder.new_input(input, Pipeline);
    let (mut out, main) = builder.new_output::<Vec<Payload>>();
    let (mut qout, quarantine) = builder.new_output::<Vec<Payload>>();
    let mut result = OperatorOutput::default();
    builder.build(move |_caps| {
        move |_frontiers| {
            input.for_each(|cap, data| {
                for payload in data.drain(..) {
                    let batch = match payload {
                        Payload::Events(batch) => batch,
                        // Event-time progress passes stateless operators unchanged.
                        p @ Payload::Progress(_) => {
                            out.activate().give(&cap, &mut vec![p]);
                            continue;
                        }
                        // The spec checker only connects event streams to operators.
                        _ => continue,
                    };
                    let started = Instant::now();
                    let n = batch.len() as u64;
                    metrics.records_in.inc_by(n);
                    op.process(batch, cap.least().copied().unwrap_or(0), &mut result);
                    metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
                    metrics.records_out.inc_by(result.out_len() as u64);
                    metrics.filtered.inc_by(result.filtered);
                    result.filtered = 0;
                    result.consumed = 0;
                    if !result.alerts.is_empty() {
                        let alerts = std::mem::take(&mut result.alerts);
                        out.activate().give(&cap, &mut vec![Payload::Alerts(alerts)]);
                    }
                    if !result.events.is_empty() {
                        let mut msg: Vec<Payload> =
                            result.events.drain(..).filter(|b| !b.is_empty()).map(Payload::Events).collect();
                        out.activate().give(&cap, &mut msg);
                    }
                    if !result.quarantine.is_empty() {
                        for r in &result.quarantine {
                            metrics.quarantined(r.reason).inc();
                        }
                        let records = std::mem::take(&mut result.quarantine);
                        qout.activate().give(&cap, &mut vec![Payload::Quarantine(records)]);
                    }
                }
            });
        }
    });
    (main, quarantine)
}

fn build_sink<'s>(
    input: PayloadStream<'s>,
    shared: Arc<Shared>,
    c: &ComponentSpec,
    sink: Box<dyn Sink>,
    metrics: ComponentMetrics,
) {
    let worker = input.scope().index();
    let mut builder = OperatorBuilder::new(format!("sink:{}", c.id), input.scope());
    let mut input = builder.new_input(input, Pipeline);
    builder.set_notify_for(0, timely::progress::operate::FrontierInterest::Always);
    let id = c.id.clone();
    let mut sink = Some(sink);
    let part = format!("{}{worker}", part_prefix("sink", &c.id, None));
    let checkpoint = shared.checkpoint.clone();
    builder.build(move |_caps| {
        let mut completed: Option<Epoch> = None;
        // Checkpoints prepared and not yet committed; the frontier last seen.
        let mut prepared: Vec<Epoch> = Vec::new();
        let mut seen: Epoch = 0;
        // The newest epoch of a record received or a checkpoint prepared: the final part
        // stands in for checkpoints from there on only.
        let mut newest: Epoch = 0;
        // Records arrive ahead of their epoch's completion; they reach the sink only once
        // their epoch is complete, so a checkpoint's part holds exactly its epochs' records.
        let mut pending: BTreeMap<Epoch, Vec<Payload>> = BTreeMap::new();
        move |frontiers| {
            let Some(s) = sink.as_mut() else {
                input.for_each(|_, data| data.clear());
                return;
            };
            input.for_each(|cap, data| {
                let epoch = cap.least().copied().unwrap_or_default();
                newest = newest.max(epoch);
                let stash = pending.entry(epoch).or_default();
                stash.extend(data.drain(..).filter(|p| !matches!(p, Payload::Progress(_))));
            });
            let frontier = frontiers[0].frontier();
            let mut write_upto = |s: &mut Box<dyn Sink>, upto: Option<Epoch>| {
                while let Some(entry) = pending.first_entry() {
                    if upto.is_some_and(|u| *entry.key() > u) {
                        break;
                    }
                    for payload in entry.remove() {
                        let started = Instant::now();
                        let n = payload.len() as u64;
                        metrics.records_in.inc_by(n);
                        match write_payload(s.as_mut(), &payload) {
                            Ok(()) => metrics.records_out.inc_by(n),
                            Err(e) => {
                                metrics.errors.inc();
                                shared.fail(format!("sink `{id}`: {e:#}"));
                            }
                        }
                        metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
                    }
                }
            };
            let f = frontier.iter().next().copied();
            if let Some(ck) = &checkpoint {
                let mut step = || -> anyhow::Result<()> {
                    match f {
                        Some(f) => {
                            if let Some(c) = ck.checkpointer.due(seen, f) {
                                write_upto(s, Some(c));
                                let bytes = s.prepare(c)?;
                                ck.checkpointer.write(c, &part, &bytes)?;
                                prepared.push(c);
                                newest = newest.max(c);
                            }
                            seen = seen.max(f);
                        }
                        None => {
                            write_upto(s, None);
                            let bytes = s.retire_part(newest)?;
                            ck.checkpointer.retire(&part, bytes, newest)?;
                        }
                    }
                    if let Some(done) = ck.checkpointer.committed() {
                        for c in prepared.iter().filter(|c| **c <= done) {
                            fail::fail_point!("sink-commit");
                            s.commit(*c)?;
                        }
                        prepared.retain(|c| *c > done);
                    }
                    Ok(())
                };
                if let Err(e) = step() {
                    metrics.errors.inc();
                    shared.fail(format!("sink `{id}`: checkpoint: {e:#}"));
                }
            }
            // Everything of complete epochs goes to the sink.
            match f {
                None => write_upto(s, None),
                Some(0) => {}
                Some(f) => write_upto(s, Some(f - 1)),
            }
            match f {
                None => {
                    if let Err(e) = s.finish() {
                        metrics.errors.inc();
                        shared.fail(format!("sink `{id}`: {e:#}"));
                    }
                    sink = None;
                }
                Some(f) if f > 0 && completed.is_none_or(|c| c < f - 1) => {
                    completed = Some(f - 1);
                    if let Err(e) = s.epoch_complete(f - 1) {
                        metrics.errors.inc();
                        shared.fail(format!("sink `{id}`: {e:#}"));
                    }
                }
                Some(_) => {}
            }
        }
    });
}

/// A sink write; the `sink-write` failpoint makes it fail for the tests of failed runs.
fn write_payload(sink: &mut dyn Sink, payload: &Payload) -> anyhow::Result<()> {
    fail::fail_point!("sink-write", |_| Err(anyhow::anyhow!("failpoint sink-write")));
    sink.write(payload)
}

/// Stand-ins that keep the dataflow's shape identical on every worker when a component
/// fails to start; the run then stops and reports the failure.
struct Exhausted;
impl Source for Exhausted {
    fn poll(&mut self, _: usize) -> anyhow::Result<SourcePoll> {
        Ok(SourcePoll::Done)
    }
}
struct PassThrough;
impl Operator for PassThrough {
    fn process(&mut self, batch: EventBatch, _epoch: u64, out: &mut OperatorOutput) {
        out.events.push(batch);
    }
}
struct DropAll;
impl crate::keyed::Router for DropAll {
    fn route(&mut self, _: crate::keyed::RecordRef<'_>, _: &mut Vec<u64>) -> crate::keyed::Route {
        crate::keyed::Route::Drop
    }
}
struct NoState;
impl crate::keyed::KeyedOperator for NoState {
    fn advance(&mut self, _: i64, _: &mut OperatorOutput) {}
    fn snapshot(&self, _: u16) -> anyhow::Result<Vec<u8>> {
        Ok(Vec::new())
    }
    fn restore(&mut self, _: u16, _: &[u8]) -> anyhow::Result<()> {
        Ok(())
    }
    fn live_keys(&self) -> usize {
        0
    }
}
struct Discard;
impl Sink for Discard {
    fn write(&mut self, _: &Payload) -> anyhow::Result<()> {
        Ok(())
    }
    fn finish(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}
