//! The control stream of a cluster of processes (docs/architecture.md §9): a small dataflow
//! beside the pipeline's in which each process's first worker reports to process 0 (the
//! leader) and the leader's decisions come back to every process's first worker.
//!
//! What travels on it:
//! - `Hello`: the process started and which checkpoint it resumed from; when every process
//!   said hello with the same one, the leader says `Ready` (pods become ready).
//! - `Parts`: every participant of the process wrote its part of checkpoint `c`; when every
//!   process reported `c`, the leader writes the manifest, then says `Committed(c)`, and only
//!   then do sinks commit `c`.
//! - `Retired`: every participant of the process retired (its sources ended or stopped); when
//!   all did, the leader names one closing epoch (`Close`), every process writes its closing
//!   parts, and the closing checkpoint completes like any other.
//! - `Stop` and `Failed`: a signal or a failure on one process stops every process, so that
//!   they end at the same cut (and a failure ends them all non-zero).
//! - `Beat`: heartbeats. A process that hears nothing from the leader for the peer timeout
//!   (or a leader that hears nothing from a process) says so and exits non-zero: a cut link
//!   gives no socket error for minutes, and a cluster cannot go on without one of its
//!   processes anyway.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Input;
use timely::dataflow::InputHandle;
use timely::worker::Worker;

use super::context::RunContext;
use crate::checkpoint::{PartInfo, PartsReport};
use crate::switch::{SwitchDecision, SwitchLeader, SwitchReport};

/// From a process to the leader.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Report {
    Hello {
        process: usize,
        resumed_from: Option<u64>,
    },
    Parts(PartsReport),
    Retired {
        process: usize,
        proposal: u64,
    },
    Stop {
        process: usize,
    },
    Failed {
        process: usize,
        why: String,
    },
    Beat {
        process: usize,
    },
    /// A cluster-wide reload (`switch`).
    Switch {
        process: usize,
        report: SwitchReport,
    },
}

/// From the leader to every process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Decision {
    Ready,
    Committed(u64),
    Close(u64),
    Stop { by: usize },
    Failed { process: usize, why: String },
    Beat,
    Switch(SwitchDecision),
}

/// The leader's bookkeeping: pure, so that its rules are unit-tested without a cluster.
pub(crate) struct Leader {
    processes: usize,
    hellos: BTreeMap<usize, Option<u64>>,
    parts: BTreeMap<u64, BTreeMap<usize, PartsReport>>,
    retired: BTreeMap<usize, u64>,
    /// The newest manifest written (+1).
    written: u64,
    closing: Option<u64>,
    stopped: bool,
    switches: SwitchLeader,
}

impl Leader {
    pub fn new(processes: usize, resumed_from: Option<u64>) -> Leader {
        Leader {
            processes,
            hellos: BTreeMap::new(),
            parts: BTreeMap::new(),
            retired: BTreeMap::new(),
            written: resumed_from.map_or(0, |e| e + 1),
            closing: None,
            stopped: false,
            switches: SwitchLeader::new(processes),
        }
    }

    /// Handles one report; `write` writes a manifest from every process's parts.
    pub fn handle(
        &mut self,
        report: Report,
        write: &mut dyn FnMut(u64, Vec<PartInfo>, Option<bool>) -> anyhow::Result<()>,
    ) -> Vec<Decision> {
        match report {
            Report::Hello { process, resumed_from } => {
                self.hellos.insert(process, resumed_from);
                if self.hellos.len() < self.processes {
                    return Vec::new();
                }
                let first = self.hellos.values().next().copied().flatten();
                if self.hellos.values().all(|r| *r == first) {
                    vec![Decision::Ready]
                } else {
                    let why = format!(
                        "the processes resumed from different checkpoints ({}); restart them all",
                        self.hellos
                            .iter()
                            .map(|(p, r)| format!("process {p}: {}", r.map_or("none".into(), |e| e.to_string())))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    vec![Decision::Failed { process: 0, why }]
                }
            }
            Report::Parts(r) => {
                let epoch = r.epoch;
                if epoch < self.written {
                    return Vec::new();
                }
                let reports = self.parts.entry(epoch).or_default();
                reports.insert(r.process, r);
                if reports.len() < self.processes {
                    return Vec::new();
                }
                let reports = self.parts.remove(&epoch).unwrap_or_default();
                // Older checkpoints can no longer complete usefully.
                self.parts.retain(|e, _| *e > epoch);
                let closing = if reports.values().any(|r| r.closing.is_some()) {
                    Some(reports.values().all(|r| r.closing == Some(true)))
                } else {
                    None
                };
                let parts: Vec<PartInfo> = reports.into_values().flat_map(|r| r.parts).collect();
                match write(epoch, parts, closing) {
                    Ok(()) => {
                        self.written = epoch + 1;
                        vec![Decision::Committed(epoch)]
                    }
                    Err(e) => vec![Decision::Failed { process: 0, why: format!("checkpoint {epoch}: {e:#}") }],
                }
            }
            Report::Retired { process, proposal } => {
                self.retired.insert(process, proposal);
                if self.retired.len() < self.processes || self.closing.is_some() {
                    return Vec::new();
                }
                let epoch = self.retired.values().copied().max().unwrap_or(0).max(self.written);
                self.closing = Some(epoch);
                vec![Decision::Close(epoch)]
            }
            Report::Stop { process } => {
                if std::mem::replace(&mut self.stopped, true) {
                    return Vec::new();
                }
                vec![Decision::Stop { by: process }]
            }
            Report::Failed { process, why } => vec![Decision::Failed { process, why }],
            Report::Switch { process, report } => {
                self.switches.handle(process, report).into_iter().map(Decision::Switch).collect()
            }
            Report::Beat { process } => {
                // The leader's own heartbeat paces the answers.
                if process == 0 {
                    vec![Decision::Beat]
                } else {
                    Vec::new()
                }
            }
        }
    }
}

/// What a process's first worker learns from the leader, shared with the run loop.
#[derive(Default)]
pub(crate) struct ControlState {
    ready: AtomicBool,
    /// The closing checkpoint's epoch, once the leader named it.
    closing: Mutex<Option<u64>>,
    /// The run's end is agreed (closing checkpoint complete, or closed without checkpoints).
    done: AtomicBool,
    /// A failure came from another process (not to be reported back).
    peer_failed: AtomicBool,
    /// When the leader was last heard from (on the leader: when each process was).
    heard: Mutex<BTreeMap<usize, Instant>>,
}

impl ControlState {
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn closed(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    fn heard_from(&self, process: usize) {
        self.heard.lock().unwrap_or_else(|e| e.into_inner()).insert(process, Instant::now());
    }

    /// The first process of `expected` not heard from for `timeout`; one never heard from yet
    /// (still building its dataflow or restoring) has `startup` from `since`.
    fn silent(
        &self,
        mut expected: std::ops::Range<usize>,
        since: Instant,
        timeout: Duration,
        startup: Duration,
    ) -> Option<(usize, Duration)> {
        let heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        expected.find_map(|p| match heard.get(&p) {
            Some(t) => Some((p, t.elapsed())).filter(|(_, quiet)| *quiet > timeout),
            None => Some((p, since.elapsed())).filter(|(_, quiet)| *quiet > startup),
        })
    }
}

/// This process's end of the control stream: its reports go in here.
pub(crate) struct ControlPlane {
    /// Only on the process's first worker (the others drop theirs at once).
    input: Option<InputHandle<u64, CapacityContainerBuilder<Vec<Report>>>>,
    time: u64,
    process: usize,
    processes: usize,
    run: Arc<RunContext>,
    state: Arc<ControlState>,
    started: Instant,
    peer_timeout: Duration,
    /// For a process not heard from at all yet (still building or restoring).
    connect_timeout: Duration,
    last_beat: Instant,
    sent_hello: bool,
    sent_stop: bool,
    sent_failure: bool,
    sent_retired: bool,
}

/// Builds the control dataflow on `worker` (every worker, after the pipeline's dataflow).
pub(crate) fn build_control(
    worker: &mut Worker,
    run: Arc<RunContext>,
    state: Arc<ControlState>,
    processes: usize,
    peer_timeout: Duration,
    connect_timeout: Duration,
) -> ControlPlane {
    let workers_per_process = (worker.peers() / processes.max(1)).max(1);
    let process = worker.index() / workers_per_process;
    let first = worker.index().is_multiple_of(workers_per_process);
    let mut input = InputHandle::new();
    let (leader_run, apply_run, apply_state, leader_state) = (run.clone(), run.clone(), state.clone(), state.clone());
    worker.dataflow::<u64, _, _>(|scope| {
        let mut leader = Leader::new(processes, run.resumed_from());
        scope
            .input_from(&mut input)
            .unary(Exchange::new(|_: &Report| 0), "control:leader", move |_, _| {
                move |input, output| {
                    input.for_each_stamp(|cap, data| {
                        let mut session = output.session(&cap);
                        for reports in data {
                            for report in reports.drain(..) {
                                if let Report::Beat { process } | Report::Hello { process, .. } = &report {
                                    leader_state.heard_from(*process);
                                }
                                let mut write = |epoch, parts, closing| match leader_run.checkpointer() {
                                    Some(ck) => ck.write_cluster_manifest(epoch, parts, closing),
                                    None => Ok(()),
                                };
                                for d in leader.handle(report, &mut write) {
                                    if let Decision::Failed { process: 0, why } = &d {
                                        // The leader's own finding fails its process too.
                                        leader_run.fail(why.clone());
                                    }
                                    for p in 0..processes {
                                        session.give((p * workers_per_process, d.clone()));
                                    }
                                }
                            }
                        }
                    });
                }
            })
            .sink(Exchange::new(|(w, _): &(usize, Decision)| *w as u64), "control:apply", move |(input, _)| {
                input.for_each(|_, data| {
                    for (_, d) in data.drain(..) {
                        apply(&apply_run, &apply_state, process, d);
                    }
                });
            });
    });
    let input = if first { Some(input) } else { None };
    ControlPlane {
        input,
        time: 0,
        process,
        processes,
        run,
        state,
        started: Instant::now(),
        peer_timeout,
        connect_timeout,
        last_beat: Instant::now(),
        sent_hello: false,
        sent_stop: false,
        sent_failure: false,
        sent_retired: false,
    }
}

fn apply(run: &RunContext, state: &ControlState, process: usize, d: Decision) {
    state.heard_from(0);
    match d {
        Decision::Ready => {
            state.ready.store(true, Ordering::SeqCst);
            run.metrics.ready.set(1);
            tracing::info!("process {process}: every process of the cluster is connected and restored");
        }
        Decision::Committed(epoch) => {
            if let Some(ck) = run.checkpointer() {
                ck.mark_committed(epoch);
            }
            if *state.closing.lock().unwrap_or_else(|e| e.into_inner()) == Some(epoch) {
                state.done.store(true, Ordering::SeqCst);
            }
        }
        Decision::Close(epoch) => {
            *state.closing.lock().unwrap_or_else(|e| e.into_inner()) = Some(epoch);
            match run.checkpointer() {
                Some(ck) => {
                    if let Err(e) = ck.finish(epoch, !run.stopping()) {
                        run.fail(format!("closing checkpoint: {e:#}"));
                    }
                }
                None => state.done.store(true, Ordering::SeqCst),
            }
        }
        Decision::Stop { by } => {
            if !run.stopping() {
                tracing::info!("process {process}: stopping, as process {by} was asked to");
            }
            run.request_stop();
        }
        Decision::Failed { process: from, why } => {
            if from != process {
                state.peer_failed.store(true, Ordering::SeqCst);
                run.fail(format!("process {from} of the cluster failed: {why}"));
            }
        }
        Decision::Beat => {}
        Decision::Switch(d) => {
            let Some(board) = &run.switches else { return };
            match d {
                SwitchDecision::Prepare { round, component } => board.prepare(round, &component),
                SwitchDecision::Switch { round, component, epoch } => board.switch(round, &component, epoch),
                SwitchDecision::End { round, component, outcome } => board.end(round, &component, outcome),
            }
        }
    }
}

impl ControlPlane {
    /// Sends what this process has to report (called after every step of the first worker);
    /// `pipeline_done`: the pipeline's dataflow has completed on this worker.
    pub fn pump(&mut self, pipeline_done: bool) {
        let Some(input) = self.input.as_mut() else { return };
        let run = &self.run;
        let mut out = Vec::new();
        if !self.sent_hello {
            self.sent_hello = true;
            out.push(Report::Hello { process: self.process, resumed_from: run.resumed_from() });
        }
        if let Some(ck) = run.checkpointer() {
            out.extend(ck.take_reports().into_iter().map(Report::Parts));
        }
        if let Some(board) = &run.switches {
            out.extend(board.take_reports().into_iter().map(|report| Report::Switch { process: self.process, report }));
        }
        match run.failure() {
            Some(why) => {
                if !std::mem::replace(&mut self.sent_failure, true) && !self.state.peer_failed.load(Ordering::SeqCst) {
                    out.push(Report::Failed { process: self.process, why });
                }
            }
            None if run.stopping() && !self.sent_stop => {
                self.sent_stop = true;
                out.push(Report::Stop { process: self.process });
            }
            None => {}
        }
        let failed = run.failure().is_some();
        if pipeline_done && !failed && !self.sent_retired && run.checkpointer().is_none_or(|ck| ck.all_retired()) {
            self.sent_retired = true;
            let next = run.clock.current() + 1;
            let proposal = run.checkpointer().map_or(next, |ck| ck.closing_epoch(next));
            out.push(Report::Retired { process: self.process, proposal });
        }
        if self.last_beat.elapsed() >= self.peer_timeout / 4 {
            self.last_beat = Instant::now();
            out.push(Report::Beat { process: self.process });
        }
        if !out.is_empty() {
            for r in out {
                input.send(r);
            }
            self.time += 1;
            input.advance_to(self.time);
        }
        self.check_peers();
        if pipeline_done && (failed || self.state.closed()) {
            // The last word: the control dataflow completes once every process said it.
            self.input = None;
        }
    }

    /// Exits the process when the leader (or, on the leader, a process) has been silent for
    /// longer than the peer timeout: its link is cut or it hangs.
    fn check_peers(&self) {
        // The leader listens to every process; the others to the leader.
        let expected = if self.process == 0 { 0..self.processes } else { 0..1 };
        let startup = self.peer_timeout.max(self.connect_timeout);
        if let Some((peer, quiet)) = self.state.silent(expected, self.started, self.peer_timeout, startup) {
            eprintln!(
                "error: process {} of {}: no word from process {peer} for {:.1}s (peer timeout {:.0?}): its link is cut or it hangs; exiting so that all processes restart and resume",
                self.process,
                self.processes,
                quiet.as_secs_f64(),
                self.peer_timeout
            );
            std::process::exit(1);
        }
    }

    /// This worker has nothing more to report.
    pub fn finished(&self) -> bool {
        self.input.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(epoch: u64, process: usize, closing: Option<bool>) -> Report {
        let parts = vec![PartInfo { name: format!("p{process}"), file: String::new(), bytes: 1, xxh3: "0".into() }];
        Report::Parts(PartsReport { epoch, process, closing, parts })
    }

    #[test]
    fn a_checkpoint_completes_once_every_process_reported_and_the_manifest_is_written() {
        let mut leader = Leader::new(2, None);
        let mut written = Vec::new();
        let mut write = |e: u64, parts: Vec<PartInfo>, closing: Option<bool>| {
            written.push((e, parts.len(), closing));
            Ok(())
        };
        assert!(leader.handle(report(4, 1, None), &mut write).is_empty());
        assert_eq!(leader.handle(report(4, 0, None), &mut write), vec![Decision::Committed(4)]);
        // An older checkpoint's late report is ignored; a newer one drops older pending ones.
        assert!(leader.handle(report(2, 0, None), &mut write).is_empty());
        assert!(leader.handle(report(6, 0, None), &mut write).is_empty());
        assert!(leader.handle(report(8, 0, None), &mut write).is_empty());
        assert_eq!(leader.handle(report(8, 1, None), &mut write), vec![Decision::Committed(8)]);
        assert!(leader.handle(report(6, 1, None), &mut write).is_empty());
        // Closing: one epoch for all, at or after every proposal and every manifest.
        assert!(leader.handle(Report::Retired { process: 0, proposal: 5 }, &mut write).is_empty());
        assert_eq!(leader.handle(Report::Retired { process: 1, proposal: 7 }, &mut write), vec![Decision::Close(9)]);
        assert!(leader.handle(report(9, 0, Some(true)), &mut write).is_empty());
        assert_eq!(leader.handle(report(9, 1, Some(false)), &mut write), vec![Decision::Committed(9)]);
        assert_eq!(written, vec![(4, 2, None), (8, 2, None), (9, 2, Some(false))]);
    }

    #[test]
    fn a_failed_manifest_fails_the_cluster_and_processes_must_resume_alike() {
        let mut leader = Leader::new(2, Some(3));
        let mut fail = |_: u64, _: Vec<PartInfo>, _: Option<bool>| Err(anyhow::anyhow!("disk full"));
        leader.handle(report(4, 0, None), &mut fail);
        let d = leader.handle(report(4, 1, None), &mut fail);
        assert!(matches!(&d[..], [Decision::Failed { process: 0, why }] if why.contains("disk full")), "{d:?}");
        let mut ok = |_: u64, _: Vec<PartInfo>, _: Option<bool>| Ok(());
        leader.handle(Report::Hello { process: 1, resumed_from: Some(3) }, &mut ok);
        let d = leader.handle(Report::Hello { process: 0, resumed_from: None }, &mut ok);
        assert!(matches!(&d[..], [Decision::Failed { why, .. }] if why.contains("different checkpoints")), "{d:?}");
        let mut leader = Leader::new(2, None);
        leader.handle(Report::Hello { process: 1, resumed_from: None }, &mut ok);
        assert_eq!(leader.handle(Report::Hello { process: 0, resumed_from: None }, &mut ok), vec![Decision::Ready]);
        assert_eq!(leader.handle(Report::Stop { process: 1 }, &mut ok), vec![Decision::Stop { by: 1 }]);
        assert!(leader.handle(Report::Stop { process: 0 }, &mut ok).is_empty(), "one stop is enough");
    }
}
