//! Checkpoints (docs/architecture.md §4): consistent cuts of a running pipeline, written to a
//! directory or an object store ([`crate::storage`]) and restored on start.
//!
//! Checkpoint `c` holds, for every *participant* (a source, route stage, stateful operator or
//! sink instance on one worker), its state after exactly the records of epochs ≤ `c`. Every
//! participant writes its part when its input frontier (or, for sources, its capability) passes
//! `c`; the checkpoint is complete when every expected participant has written, and only then
//! is its manifest written — last, atomically. Sinks commit epoch `c` once `c` is complete.
//!
//! Layout (version 1):
//!
//! ```text
//! LOCATION/chk-000000000042/parts/<participant>.<writer>.bin   one object per participant
//! LOCATION/chk-000000000042/MANIFEST.json                      created last, only if absent
//! ```
//!
//! Parts are immutable and every object is written once: `<writer>` is a token of the process
//! that wrote it and a sequence number within that process (`<token>-<n>`), so no object is ever
//! overwritten — not by another writer, and not by a request of this writer's that a frozen
//! store applies late, after the checkpoint was committed (a timed-out PUT can land seconds after
//! its client gave up). The manifest names the objects it vouches for (with size and checksum). The manifest is created with a conditional put (create-if-absent: S3's
//! `If-None-Match: *`, a hard link on a filesystem), so no rename is needed and two runs that
//! share a location by mistake can never both commit an epoch: the second finds the first's
//! manifest and stops with an error. A checkpoint without a manifest is incomplete and is
//! ignored (and removed once a later checkpoint completes). The newest `retain` complete
//! checkpoints are kept; pruning removes a manifest before its parts.
//! Participants are named `<kind>.<component>[.i<input>].w<worker>` (kinds: `source`, `route`,
//! `keyed`, `sink`; see [`part_prefix`]), with the worker's index in the whole cluster; keyed
//! state is one part per worker holding its key groups, so a checkpoint written by N workers
//! restores onto M.
//!
//! In a cluster of processes the directory is shared. Each process's checkpointer sees only its
//! own participants: when they all wrote their parts of `c`, it does not write a manifest but
//! hands a [`PartsReport`] to the cluster's control stream (`dataflow::control`); process 0
//! writes the manifest once every process reported, and only when that news comes back through
//! the control stream ([`Checkpointer::mark_committed`]) do sinks commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::contexts::{ContextNames, Contexts};
use crate::storage::Store;

pub const LAYOUT_VERSION: u32 = 1;
const MANIFEST: &str = "MANIFEST.json";

/// `settings.checkpoint` in a spec.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Directory for checkpoints (relative to the spec), or an object-store URL like `url`.
    /// `ward run --checkpoint-dir` overrides it.
    #[serde(default)]
    pub dir: String,
    /// An object store for checkpoints: `s3://bucket/prefix` (also `gs://`, `az://`,
    /// `file:///path`), reached as `settings.storage` says, with credentials from the
    /// environment.
    #[serde(default)]
    pub url: Option<String>,
    /// How often a checkpoint is taken (rounded to whole epochs).
    #[serde(default = "default_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// Complete checkpoints kept.
    #[serde(default = "default_retain")]
    pub retain: usize,
}

impl CheckpointConfig {
    /// Default interval and retention.
    pub fn with_dir(dir: &str) -> Self {
        CheckpointConfig { dir: dir.to_string(), url: None, interval: default_interval(), retain: default_retain() }
    }

    /// Where checkpoints go: the URL, else the directory.
    pub fn location(&self) -> &str {
        self.url.as_deref().unwrap_or(&self.dir)
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_retain() -> usize {
    3
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartInfo {
    pub name: String,
    /// The part's object under `chk-…/parts/` (empty in checkpoints of earlier versions: `<name>.bin`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
    pub bytes: u64,
    /// xxh3-64 of the part's bytes, hex.
    pub xxh3: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub layout_version: u32,
    pub pipeline: String,
    /// Records of epochs ≤ this are in the checkpoint.
    pub epoch: u64,
    /// Workers per process of the run that wrote it (any count can restore it).
    pub workers: usize,
    /// Processes of the run that wrote it (1: a single process).
    #[serde(default = "one")]
    pub processes: usize,
    pub created_ms: i64,
    /// Written at the end of a bounded run: every source was exhausted.
    pub final_checkpoint: bool,
    /// Written when the run ended (stopped or exhausted), after every participant retired:
    /// what sinks made visible at their end belongs to it.
    #[serde(default)]
    pub closing: bool,
    /// The first epoch of the run that wrote it (0 for a run that did not resume).
    #[serde(default)]
    pub run: u64,
    /// Rule-set version (content hash) each detector was running when the checkpoint completed.
    #[serde(default)]
    pub rulesets: BTreeMap<String, String>,
    /// The versions of every reloadable component's context (rule sets, enrichment data) in
    /// effect after `epoch`, whose files are stored under `contexts/`: a resumed run rebuilds
    /// them from there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contexts: ContextNames,
    /// The token of the process that wrote the manifest (parts carry their writers' tokens).
    #[serde(default)]
    pub writer: String,
    pub parts: Vec<PartInfo>,
}

fn one() -> usize {
    1
}

/// What one process of a cluster holds of a checkpoint: every part its participants wrote
/// (`closing`: the run's closing checkpoint, with whether every local source was exhausted).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartsReport {
    pub epoch: u64,
    pub process: usize,
    pub closing: Option<bool>,
    pub parts: Vec<PartInfo>,
}

/// Which former workers' leftovers (parts, files, transactions) this process settles when a run
/// resumes or closes: each former worker belongs to one process of the run now, so processes
/// that share storage never settle the same thing twice. A former worker's process in the run
/// that wrote the checkpoint is `worker / workers_per_process`; it is settled by that process's
/// index modulo the processes now (the same process when the cluster keeps its shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ownership {
    pub process: usize,
    pub processes: usize,
    /// Workers per process of the run that wrote the checkpoints.
    pub workers_per_process: usize,
}

impl Ownership {
    /// A single process settles everything.
    pub const SINGLE: Ownership = Ownership { process: 0, processes: 1, workers_per_process: 1 };

    pub fn owns(&self, worker: usize) -> bool {
        (worker / self.workers_per_process.max(1)) % self.processes.max(1) == self.process
    }
}

/// Reads the detectors' running rule-set versions (component → version).
pub type RulesetVersions = Arc<dyn Fn() -> BTreeMap<String, String> + Send + Sync>;

fn checkpoint_key(epoch: u64) -> String {
    format!("chk-{epoch:012}")
}

fn manifest_key(epoch: u64) -> String {
    format!("{}/{MANIFEST}", checkpoint_key(epoch))
}

fn part_key(epoch: u64, part: &PartInfo) -> String {
    match part.file.as_str() {
        "" => format!("{}/parts/{}.bin", checkpoint_key(epoch), part.name),
        file => format!("{}/parts/{file}", checkpoint_key(epoch)),
    }
}

/// Every object of every checkpoint (complete or not) in `store`, by epoch.
fn objects(store: &dyn Store) -> anyhow::Result<BTreeMap<u64, Vec<String>>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for e in store.list("")? {
        let Some(epoch) = e.key.strip_prefix("chk-").and_then(|r| r.split('/').next()).and_then(|n| n.parse().ok())
        else {
            continue;
        };
        out.entry(epoch).or_default().push(e.key);
    }
    Ok(out)
}

/// The complete checkpoints in `store`, oldest first.
pub fn list(store: &dyn Store) -> anyhow::Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for (epoch, keys) in objects(store)? {
        let key = manifest_key(epoch);
        if !keys.contains(&key) {
            continue;
        }
        // Pruned since the listing: no longer complete.
        let Some(bytes) = store.get(&key)? else { continue };
        let m: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("{}/{key}: {e}", store.location()))?;
        out.push(m);
    }
    out.sort_by_key(|m| m.epoch);
    Ok(out)
}

/// Removes the objects in the `complete` checkpoints (as [`list`] gives them) that their
/// manifests do not name: parts of a failed attempt, or requests a frozen store applied after
/// their writer had given up (a run prunes such leftovers only in the checkpoints it completes
/// itself). Run at start, before this run writes anything.
pub fn remove_strays(store: &dyn Store, complete: &[Manifest]) -> anyhow::Result<usize> {
    let all = objects(store)?;
    let mut removed = crate::contexts::remove_unnamed(store, complete.iter().map(|m| &m.contexts))?.len();
    for m in complete {
        if let Some(keys) = all.get(&m.epoch) {
            removed += delete_unnamed(store, m.epoch, keys, &m.parts)?;
        }
    }
    Ok(removed)
}

/// Deletes the objects of checkpoint `epoch` (`keys`) that are neither its manifest nor one
/// of the `named` parts; how many.
fn delete_unnamed(store: &dyn Store, epoch: u64, keys: &[String], named: &[PartInfo]) -> anyhow::Result<usize> {
    let manifest = manifest_key(epoch);
    let named: BTreeSet<String> = named.iter().map(|p| part_key(epoch, p)).collect();
    let mut removed = 0;
    for k in keys.iter().filter(|k| **k != manifest && !named.contains(*k)) {
        store.delete(k)?;
        removed += 1;
    }
    Ok(removed)
}

/// A complete checkpoint read back for a restore.
#[derive(Debug)]
pub struct Restored {
    pub manifest: Manifest,
    parts: BTreeMap<String, Vec<u8>>,
}

impl Restored {
    /// The newest complete checkpoint in `store`, its parts verified against the manifest.
    pub fn latest(store: &dyn Store) -> anyhow::Result<Option<Restored>> {
        let Some(manifest) = list(store)?.pop() else { return Ok(None) };
        Restored::load(store, manifest).map(Some)
    }

    pub fn load(store: &dyn Store, manifest: Manifest) -> anyhow::Result<Restored> {
        let mut parts = BTreeMap::new();
        for p in &manifest.parts {
            let key = part_key(manifest.epoch, p);
            let shown = || format!("{}/{key}", store.location());
            let bytes =
                store.get(&key)?.ok_or_else(|| anyhow::anyhow!("{}: missing (named by the manifest)", shown()))?;
            let hash = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes));
            if bytes.len() as u64 != p.bytes || hash != p.xxh3 {
                anyhow::bail!("{}: does not match the manifest (size or checksum)", shown());
            }
            parts.insert(p.name.clone(), bytes);
        }
        Ok(Restored { manifest, parts })
    }

    pub fn part(&self, name: &str) -> Option<&[u8]> {
        self.parts.get(name).map(Vec::as_slice)
    }

    /// Parts whose name starts with `prefix` (e.g. every worker's part of one component).
    pub fn parts_with_prefix(&self, prefix: &str) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let prefix = prefix.to_string();
        self.parts
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

/// The name of every worker's part of one participant without the worker number:
/// `<kind>.<component>[.i<input>].w`; a worker's part is this followed by its index.
pub fn part_prefix(kind: &str, component: &str, input: Option<usize>) -> String {
    match input {
        Some(i) => format!("{kind}.{component}.i{i}.w"),
        None => format!("{kind}.{component}.w"),
    }
}

/// One retained checkpoint as a sink sees it when a run resumes.
pub struct SinkCheckpoint<'a> {
    pub manifest: &'a Manifest,
    /// (worker that wrote it, its `prepare` bytes), of the workers this process settles.
    pub parts: Vec<(usize, &'a [u8])>,
    /// The former workers this process settles (for what a sink finds beyond its parts).
    pub owner: Ownership,
}

impl<'a> SinkCheckpoint<'a> {
    /// The parts of sink `id` in `restored` that `owner`'s process settles.
    pub fn of(restored: &'a Restored, id: &str, owner: Ownership) -> SinkCheckpoint<'a> {
        let prefix = part_prefix("sink", id, None);
        let parts = restored
            .parts_with_prefix(&prefix)
            .filter_map(|(name, bytes)| Some((name.strip_prefix(&prefix)?.parse().ok()?, bytes)))
            .filter(|(worker, _)| owner.owns(*worker))
            .collect();
        SinkCheckpoint { manifest: &restored.manifest, parts, owner }
    }
}

/// A participant's final part, and the first checkpoint it may stand in for: the state after
/// every epoch it saw (records of later epochs than a checkpoint must not be in its part).
struct Retired {
    bytes: Vec<u8>,
    from: u64,
}

impl Retired {
    fn covers(&self, epoch: u64) -> bool {
        epoch >= self.from
    }
}

#[derive(Default)]
struct Progress {
    /// Parts written per pending checkpoint.
    pending: BTreeMap<u64, BTreeMap<String, PartInfo>>,
    /// When each pending checkpoint's first part was written.
    started: BTreeMap<u64, std::time::Instant>,
    /// Participants that will write no more parts, with their final part.
    retired: BTreeMap<String, Retired>,
}

/// Collects the parts of checkpoints as participants write them and completes checkpoints.
pub struct Checkpointer {
    store: Arc<dyn Store>,
    /// This process's token, in the names of the parts it writes and in its manifests.
    writer: String,
    /// Part objects written so far: each write gets an object of its own.
    part_writes: AtomicU64,
    pipeline: String,
    workers: usize,
    interval_epochs: u64,
    retain: usize,
    expected: BTreeSet<String>,
    progress: Mutex<Progress>,
    /// Newest complete checkpoint + 1 (0: none yet).
    committed: AtomicU64,
    /// Set when the run failed: records of the failed epochs may be missing from a sink or a
    /// participant's state, so no checkpoint may complete from then on (the next run resumes
    /// from the last checkpoint before the failure and repeats the rest).
    aborted: std::sync::atomic::AtomicBool,
    /// The epoch the run resumed from (checkpoints below it are not taken again).
    start_epoch: u64,
    metrics: Option<crate::metrics::CheckpointMetrics>,
    /// The detectors' running rule-set versions, for the manifest.
    rulesets: Option<RulesetVersions>,
    /// The pipeline's contexts, whose versions manifests name (and whose files they store).
    contexts: Option<Contexts>,
    named_contexts: Mutex<NamedContexts>,
    /// In a cluster: this process's place, and the reports of its complete local parts not yet
    /// sent on the control stream.
    cluster: Option<ClusterPlace>,
}

/// What the manifests of retained checkpoints name of the contexts (by epoch), and the stored
/// versions they named when unnamed ones were last removed.
#[derive(Default)]
struct NamedContexts {
    by_epoch: BTreeMap<u64, ContextNames>,
    removed_against: Option<BTreeSet<String>>,
}

struct ClusterPlace {
    process: usize,
    processes: usize,
    outbox: Mutex<Vec<PartsReport>>,
}

impl Checkpointer {
    /// `expected`: every participant of the run, known before any worker starts.
    pub fn new(
        store: Arc<dyn Store>,
        config: &CheckpointConfig,
        epoch_ms: u64,
        pipeline: &str,
        workers: usize,
        expected: BTreeSet<String>,
        start_epoch: u64,
    ) -> anyhow::Result<Checkpointer> {
        let interval_epochs = (config.interval.as_millis() as u64 / epoch_ms.max(1)).max(1);
        Ok(Checkpointer {
            store,
            writer: crate::storage::process_token().to_string(),
            part_writes: AtomicU64::new(0),
            pipeline: pipeline.to_string(),
            workers,
            interval_epochs,
            retain: config.retain.max(1),
            expected,
            progress: Mutex::new(Progress::default()),
            committed: AtomicU64::new(start_epoch),
            aborted: std::sync::atomic::AtomicBool::new(false),
            start_epoch,
            metrics: None,
            rulesets: None,
            contexts: None,
            named_contexts: Mutex::default(),
            cluster: None,
        })
    }

    /// Process `process` of `processes`: complete local parts are reported
    /// ([`Checkpointer::take_reports`]), manifests are written by process 0 from every report.
    pub fn in_cluster(mut self, process: usize, processes: usize) -> Self {
        self.cluster = Some(ClusterPlace { process, processes, outbox: Mutex::new(Vec::new()) });
        self
    }

    /// Reports of checkpoints whose local parts are all written, oldest first.
    pub fn take_reports(&self) -> Vec<PartsReport> {
        self.cluster
            .as_ref()
            .map(|c| std::mem::take(&mut *c.outbox.lock().unwrap_or_else(|e| e.into_inner())))
            .unwrap_or_default()
    }

    /// Process 0 of a cluster: every process reported its parts of `epoch`; `parts` are all of
    /// them. Writes the manifest (the checkpoint is complete from here on) and prunes.
    pub fn write_cluster_manifest(
        &self,
        epoch: u64,
        parts: Vec<PartInfo>,
        closing: Option<bool>,
    ) -> anyhow::Result<()> {
        let _p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        if self.aborted() {
            anyhow::bail!("the run failed: checkpoint {epoch} does not complete");
        }
        let processes = self.cluster.as_ref().map_or(1, |c| c.processes);
        self.write_manifest(epoch, parts.clone(), closing, processes)?;
        self.prune(epoch, &parts)
    }

    /// The cluster's checkpoint `epoch` is complete (its manifest is written): sinks may
    /// commit up to it.
    pub fn mark_committed(&self, epoch: u64) {
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        if self.committed.fetch_max(epoch + 1, Ordering::SeqCst) > epoch {
            return;
        }
        if let Some(m) = &self.metrics {
            if let Some(started) = p.started.get(&epoch) {
                m.duration.observe(started.elapsed().as_secs_f64());
            }
            m.completed.inc();
            m.epoch.set(epoch as i64);
            m.timestamp.set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        }
        p.started.retain(|e, _| *e > epoch);
    }

    /// Reports completed checkpoints in these metrics.
    pub fn with_metrics(mut self, metrics: crate::metrics::CheckpointMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn with_rulesets(mut self, versions: RulesetVersions) -> Self {
        self.rulesets = Some(versions);
        self
    }

    /// Manifests name the versions of these contexts, and checkpoints keep their files.
    pub fn with_contexts(mut self, contexts: Contexts) -> Self {
        self.contexts = Some(contexts);
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The newest checkpoint epoch `c` with `from ≤ c < to`: what a participant whose frontier
    /// moved from `from` to `to` must write.
    pub fn due(&self, from: u64, to: u64) -> Option<u64> {
        if to == 0 {
            return None;
        }
        let c = (to - 1) / self.interval_epochs * self.interval_epochs;
        (c >= from && c >= self.start_epoch && c > 0).then_some(c)
    }

    /// The newest complete checkpoint, if any (sinks commit up to it).
    pub fn committed(&self) -> Option<u64> {
        self.committed.load(Ordering::SeqCst).checked_sub(1)
    }

    /// Writes `participant`'s part of checkpoint `epoch`; completes the checkpoint if it was
    /// the last one missing.
    pub fn write(&self, epoch: u64, participant: &str, bytes: &[u8]) -> anyhow::Result<()> {
        // A newer checkpoint completed first (participants on other threads ran ahead): this
        // one can no longer complete usefully, and its directory may be pruned under us.
        let obsolete = || self.committed.load(Ordering::SeqCst) > epoch;
        // A failed run completes no checkpoint: its parts would only be litter.
        if self.aborted() {
            return Ok(());
        }
        let info = match self.write_part(epoch, participant, bytes) {
            Ok(info) => info,
            Err(_) if obsolete() => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        if obsolete() {
            return Ok(());
        }
        p.started.entry(epoch).or_insert_with(std::time::Instant::now);
        p.pending.entry(epoch).or_default().insert(participant.to_string(), info);
        self.complete_ready(&mut p)
    }

    /// `participant` will write no more parts: `bytes` stands for it in every checkpoint from
    /// `from` on, the newest epoch its state reflects. Checkpoints before `from` it did not
    /// write a part for stay incomplete: its final state holds records of later epochs.
    pub fn retire(&self, participant: &str, bytes: Vec<u8>, from: u64) -> anyhow::Result<()> {
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        p.retired.insert(participant.to_string(), Retired { bytes, from });
        self.complete_ready(&mut p)
    }

    /// The run failed: no checkpoint completes any more (a part being written now is never
    /// named by a manifest; no part is written after this).
    pub fn abort(&self) {
        // Under the progress lock, so that no checkpoint is half way through completing.
        let _p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        self.aborted.store(true, Ordering::SeqCst);
    }

    pub fn aborted(&self) -> bool {
        self.aborted.load(Ordering::SeqCst)
    }

    /// Every participant retired: the run is over.
    pub fn all_retired(&self) -> bool {
        let p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        self.expected.iter().all(|n| p.retired.contains_key(n))
    }

    /// The epoch of the last checkpoint of a run that ends now, `next` or later: after every
    /// checkpoint begun and every epoch a participant's final state reflects.
    pub fn closing_epoch(&self, next: u64) -> u64 {
        let p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        next.max(p.pending.keys().next_back().map_or(0, |e| e + 1))
            .max(self.committed.load(Ordering::SeqCst))
            .max(p.retired.values().map(|r| r.from).max().unwrap_or(0))
    }

    /// Writes the last checkpoint of a run after `epoch`, once every participant retired;
    /// `exhausted`: every source was read to its end. In a cluster, `epoch` is the one closing
    /// epoch process 0 chose, and this process's parts are reported instead.
    pub fn finish(&self, epoch: u64, exhausted: bool) -> anyhow::Result<()> {
        let epoch = match self.cluster {
            Some(_) => epoch,
            None => self.closing_epoch(epoch),
        };
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        if self.aborted() {
            anyhow::bail!("the run failed: no closing checkpoint");
        }
        if !self.expected.iter().all(|n| p.retired.contains_key(n)) {
            anyhow::bail!("the run ended before every participant retired");
        }
        let mut parts = BTreeMap::new();
        self.complete(epoch, &mut parts, &p.retired, Some(exhausted))?;
        p.pending.clear();
        Ok(())
    }

    fn write_part(&self, epoch: u64, participant: &str, bytes: &[u8]) -> anyhow::Result<PartInfo> {
        let n = self.part_writes.fetch_add(1, Ordering::Relaxed);
        let info = PartInfo {
            name: participant.to_string(),
            file: format!("{participant}.{}-{n}.bin", self.writer),
            bytes: bytes.len() as u64,
            xxh3: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(bytes)),
        };
        fail::fail_point!("checkpoint-part");
        // Durable with the others once the checkpoint completes (`complete`).
        self.store.put_new(&part_key(epoch, &info), bytes)?;
        Ok(info)
    }

    fn complete_ready(&self, p: &mut Progress) -> anyhow::Result<()> {
        if self.aborted() {
            return Ok(());
        }
        let ready: Vec<u64> = p
            .pending
            .iter()
            .filter(|(e, parts)| {
                self.expected.iter().all(|n| parts.contains_key(n) || p.retired.get(n).is_some_and(|r| r.covers(**e)))
            })
            .map(|(e, _)| *e)
            .collect();
        for epoch in ready {
            let mut parts = p.pending.remove(&epoch).unwrap_or_default();
            self.complete(epoch, &mut parts, &p.retired, None)?;
            // Older pending checkpoints can no longer complete usefully.
            p.pending.retain(|e, _| *e > epoch);
            if self.cluster.is_none() {
                if let (Some(m), Some(started)) = (&self.metrics, p.started.get(&epoch)) {
                    m.duration.observe(started.elapsed().as_secs_f64());
                }
                p.started.retain(|e, _| *e > epoch);
            }
        }
        Ok(())
    }

    fn complete(
        &self,
        epoch: u64,
        parts: &mut BTreeMap<String, PartInfo>,
        retired: &BTreeMap<String, Retired>,
        closing: Option<bool>,
    ) -> anyhow::Result<()> {
        for name in &self.expected {
            if !parts.contains_key(name) {
                let bytes = retired.get(name).map(|r| r.bytes.as_slice()).unwrap_or_default();
                let info = self.write_part(epoch, name, bytes)?;
                parts.insert(name.clone(), info);
            }
        }
        // Every part's name is durable before a manifest (or a report to the process writing
        // it) names it: one directory sync per checkpoint instead of one per part.
        self.store.sync_dir(&format!("{}/parts", checkpoint_key(epoch)))?;
        if let Some(c) = &self.cluster {
            let report = PartsReport { epoch, process: c.process, closing, parts: parts.values().cloned().collect() };
            c.outbox.lock().unwrap_or_else(|e| e.into_inner()).push(report);
            return Ok(());
        }
        let parts: Vec<PartInfo> = parts.values().cloned().collect();
        self.write_manifest(epoch, parts.clone(), closing, 1)?;
        self.committed.fetch_max(epoch + 1, Ordering::SeqCst);
        if let Some(m) = &self.metrics {
            m.completed.inc();
            m.epoch.set(epoch as i64);
        }
        self.prune(epoch, &parts)
    }

    fn write_manifest(
        &self,
        epoch: u64,
        parts: Vec<PartInfo>,
        closing: Option<bool>,
        processes: usize,
    ) -> anyhow::Result<()> {
        let manifest = Manifest {
            layout_version: LAYOUT_VERSION,
            pipeline: self.pipeline.clone(),
            epoch,
            workers: self.workers,
            processes,
            created_ms: chrono::Utc::now().timestamp_millis(),
            final_checkpoint: closing == Some(true),
            closing: closing.is_some(),
            run: self.start_epoch,
            rulesets: self.rulesets.as_ref().map(|f| f()).unwrap_or_default(),
            contexts: match &self.contexts {
                Some(c) => c.record(self.store.as_ref(), epoch)?,
                None => BTreeMap::new(),
            },
            writer: self.writer.clone(),
            parts,
        };
        let bytes = serde_json::to_vec_pretty(&manifest)?;
        let parts_bytes = manifest.parts.iter().map(|p| p.bytes).sum::<u64>();
        let key = manifest_key(epoch);
        fail::fail_point!("checkpoint-manifest");
        self.store.create(&key, &bytes)?;
        // What the store holds decides, whatever the create answered: ours (also when a retried
        // request had created it already), or another run's — which also catches a store whose
        // conditional put is not atomic under a race (SeaweedFS let two simultaneous creates
        // succeed). Never both commit.
        let stored = self.store.get(&key)?;
        if stored.as_deref() != Some(&bytes[..]) {
            let writer = stored
                .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
                .map_or_else(|| "unknown".to_string(), |m| m.writer);
            self.aborted.store(true, Ordering::SeqCst);
            anyhow::bail!(
                "checkpoint {epoch} in {} was committed by another writer ({writer}, this one is {}): \
                 two runs are using the same checkpoint location; this one stops",
                self.store.location(),
                self.writer
            );
        }
        if self.contexts.is_some() {
            self.named_contexts.lock().unwrap_or_else(|e| e.into_inner()).by_epoch.insert(epoch, manifest.contexts);
        }
        if let Some(m) = &self.metrics {
            m.bytes.set(parts_bytes as i64);
            m.timestamp.set(manifest.created_ms as f64 / 1000.0);
        }
        tracing::debug!("checkpoint {epoch} complete");
        Ok(())
    }

    /// Keeps the newest `retain` complete checkpoints; removes incomplete ones older than `epoch`,
    /// and the objects in `epoch`'s checkpoint its manifest does not name (parts an earlier,
    /// crashed attempt at the same epoch left).
    fn prune(&self, epoch: u64, named: &[PartInfo]) -> anyhow::Result<()> {
        let all = objects(self.store.as_ref())?;
        let complete: Vec<u64> =
            all.iter().filter(|(e, keys)| keys.contains(&manifest_key(**e))).map(|(e, _)| *e).collect();
        // A newer complete checkpoint than the one just made: another run, ahead of this one,
        // commits to the same location (its older manifests may be pruned already, so the
        // conditional create alone would not notice).
        if let Some(newer) = complete.iter().find(|e| **e > epoch) {
            self.aborted.store(true, Ordering::SeqCst);
            anyhow::bail!(
                "a newer checkpoint ({newer}) than this run's {epoch} is in {}: two runs are using the same \
                 checkpoint location; this one stops",
                self.store.location()
            );
        }
        let keep: BTreeSet<u64> = complete.iter().rev().take(self.retain).copied().collect();
        for (e, keys) in &all {
            let complete_here = complete.contains(e);
            if complete_here && !keep.contains(e) {
                // The manifest goes first: a crash midway leaves an incomplete checkpoint (ignored,
                // removed later), never a complete one with parts missing.
                let manifest = manifest_key(*e);
                self.store.delete(&manifest)?;
                fail::fail_point!("checkpoint-prune");
                for k in keys.iter().filter(|k| **k != manifest) {
                    self.store.delete(k)?;
                }
            } else if !complete_here && *e < epoch {
                for k in keys {
                    self.store.delete(k)?;
                }
            } else if *e == epoch {
                delete_unnamed(self.store.as_ref(), epoch, keys, named)?;
            }
        }
        self.prune_contexts(&keep)
    }

    /// Removes the stored context versions no retained manifest names, when that set changed.
    fn prune_contexts(&self, retained: &BTreeSet<u64>) -> anyhow::Result<()> {
        let Some(contexts) = &self.contexts else { return Ok(()) };
        let mut named = self.named_contexts.lock().unwrap_or_else(|e| e.into_inner());
        named.by_epoch.retain(|e, _| retained.contains(e));
        for e in retained {
            if !named.by_epoch.contains_key(e) {
                // A manifest of an earlier run.
                let m = self.store.get(&manifest_key(*e))?.and_then(|b| serde_json::from_slice::<Manifest>(&b).ok());
                named.by_epoch.insert(*e, m.map(|m| m.contexts).unwrap_or_default());
            }
        }
        let keys: BTreeSet<String> =
            named.by_epoch.values().flat_map(|m| m.values().flatten().map(|v| v.key.clone())).collect();
        if named.removed_against.as_ref() != Some(&keys) {
            contexts.remove_unnamed(self.store.as_ref(), named.by_epoch.values())?;
            named.removed_against = Some(keys);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::storage::LocalStore;
    use std::path::Path;

    fn store(dir: &Path) -> Arc<dyn Store> {
        Arc::new(LocalStore::new(dir.to_path_buf()))
    }

    fn checkpointer(dir: &Path, expected: &[&str], start: u64) -> Checkpointer {
        let config = CheckpointConfig { dir: String::new(), url: None, interval: Duration::from_secs(2), retain: 2 };
        Checkpointer::new(store(dir), &config, 1000, "p", 2, expected.iter().map(|s| s.to_string()).collect(), start)
            .unwrap()
    }

    #[test]
    fn a_checkpoint_completes_when_every_participant_wrote_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = crate::metrics::Metrics::new();
        let c = checkpointer(dir.path(), &["a-w0", "b-w0"], 0).with_metrics(metrics.checkpoint.clone());
        assert_eq!((c.due(0, 1), c.due(0, 3), c.due(3, 5), c.due(5, 9)), (None, Some(2), Some(4), Some(8)));
        c.write(2, "a-w0", b"a2").unwrap();
        assert_eq!(c.committed(), None);
        assert!(list(store(dir.path()).as_ref()).unwrap().is_empty(), "no manifest before every part is in");
        c.write(2, "b-w0", b"b2").unwrap();
        assert_eq!(c.committed(), Some(2));
        for e in [4, 6] {
            c.write(e, "a-w0", b"a").unwrap();
            c.write(e, "b-w0", b"b").unwrap();
        }
        // Incomplete checkpoints, then b retires with the state after epoch 8: its final part
        // completes 8 but cannot stand in for 7, whose epochs it has passed.
        c.write(7, "a-w0", b"a7").unwrap();
        c.write(8, "a-w0", b"a8").unwrap();
        c.retire("b-w0", b"final".to_vec(), 8).unwrap();
        let epochs: Vec<u64> = list(store(dir.path()).as_ref()).unwrap().iter().map(|m| m.epoch).collect();
        assert_eq!(epochs, vec![6, 8], "two kept");
        assert_eq!((metrics.checkpoint.completed.get(), metrics.checkpoint.epoch.get()), (4, 8));
        assert_eq!(metrics.checkpoint.bytes.get(), 7, "a8 + final");
        assert!(metrics.render().contains("ward_checkpoint_duration_seconds_count 4"));
        let r = Restored::latest(store(dir.path()).as_ref()).unwrap().unwrap();
        assert_eq!((r.part("a-w0"), r.part("b-w0")), (Some(&b"a8"[..]), Some(&b"final"[..])));
        assert_eq!(r.parts_with_prefix("b-").count(), 1);
    }

    #[test]
    fn of_two_writers_racing_for_one_epoch_exactly_one_commits_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = checkpointer(dir.path(), &["a-w0"], 0);
        let mut b = checkpointer(dir.path(), &["a-w0"], 0);
        (a.writer, b.writer) = ("aaaa".into(), "bbbb".into());
        a.write(2, "a-w0", b"from a").unwrap();
        let err = b.write(2, "a-w0", b"from b").unwrap_err().to_string();
        assert!(err.contains("committed by another writer (aaaa, this one is bbbb)"), "{err}");
        assert!(b.aborted() && b.committed().is_none());
        // The winner's checkpoint reads back whole: the loser's part is another object.
        let r = Restored::latest(store(dir.path()).as_ref()).unwrap().unwrap();
        assert_eq!(r.part("a-w0"), Some(&b"from a"[..]));
        // Its next checkpoint removes the loser's leftovers of epoch 2's attempt at 4.
        b.writer = "cccc".into();
        let _ = b.write_part(4, "a-w0", b"stray");
        a.write(4, "a-w0", b"a4").unwrap();
        let parts: Vec<String> = std::fs::read_dir(dir.path().join("chk-000000000004/parts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(parts, vec!["a-w0.aaaa-1.bin"]);
    }

    #[test]
    fn after_a_failure_no_checkpoint_completes() {
        let dir = tempfile::tempdir().unwrap();
        let c = checkpointer(dir.path(), &["a-w0", "b-w0"], 0);
        c.write(2, "a-w0", b"a2").unwrap();
        c.abort();
        c.write(2, "b-w0", b"b2").unwrap();
        c.retire("a-w0", Vec::new(), 2).unwrap();
        c.retire("b-w0", Vec::new(), 2).unwrap();
        assert_eq!(c.committed(), None);
        assert!(c.finish(3, true).is_err());
        assert!(list(store(dir.path()).as_ref()).unwrap().is_empty());
    }

    #[test]
    fn a_tampered_part_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = checkpointer(dir.path(), &["a-w0"], 0);
        c.write(2, "a-w0", b"state").unwrap();
        let m = list(store(dir.path()).as_ref()).unwrap().pop().unwrap();
        std::fs::write(dir.path().join("chk-000000000002/parts").join(&m.parts[0].file), b"other").unwrap();
        let err = Restored::latest(store(dir.path()).as_ref()).unwrap_err().to_string();
        assert!(err.contains("does not match the manifest"), "{err}");
    }

    #[test]
    fn a_late_second_write_of_a_committed_part_changes_nothing_and_is_removed_at_start() {
        // A participant whose write's manifest step failed prepares the same epoch again, and a
        // frozen store may apply that request after the first attempt's manifest: it must land
        // in an object of its own, which the next run's start removes.
        let dir = tempfile::tempdir().unwrap();
        let c = checkpointer(dir.path(), &["a-w0"], 0);
        c.write(2, "a-w0", b"state").unwrap();
        c.write_part(2, "a-w0", b"other state").unwrap();
        let parts = || std::fs::read_dir(dir.path().join("chk-000000000002/parts")).unwrap().count();
        assert_eq!(parts(), 2);
        let r = Restored::latest(store(dir.path()).as_ref()).unwrap().unwrap();
        assert_eq!(r.part("a-w0"), Some(&b"state"[..]));
        let complete = list(store(dir.path()).as_ref()).unwrap();
        assert_eq!(remove_strays(store(dir.path()).as_ref(), &complete).unwrap(), 1);
        assert_eq!(parts(), 1);
        let r = Restored::latest(store(dir.path()).as_ref()).unwrap().unwrap();
        assert_eq!(r.part("a-w0"), Some(&b"state"[..]));
    }

    #[test]
    fn an_aborted_run_writes_no_more_parts() {
        let dir = tempfile::tempdir().unwrap();
        let c = checkpointer(dir.path(), &["a-w0", "b-w0"], 0);
        c.abort();
        c.write(2, "a-w0", b"a2").unwrap();
        assert!(!dir.path().join("chk-000000000002").exists());
    }

    #[test]
    fn a_resumed_run_does_not_retake_checkpoints_below_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let c = checkpointer(dir.path(), &["a-w0"], 6);
        assert_eq!((c.due(0, 5), c.due(0, 7), c.committed()), (None, Some(6), Some(5)));
    }
}
