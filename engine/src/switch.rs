//! Reloads switched across a cluster at one epoch (docs/architecture.md §9).
//!
//! In one process a reload switches at the first epoch no batch carries yet ([`EpochClock`]).
//! Across processes each has its own clock, so the switch is agreed on the control stream:
//!
//! 1. a process that sees a change (a file watcher, `POST /rules/reload`) proposes it;
//! 2. the leader asks every process to prepare: each loads the files (off the dataflow's
//!    threads), holds its clock still, and reports the version it got (or why it refuses it)
//!    with its current epoch;
//! 3. if every process got the same new version, the leader names the switch epoch, one past
//!    the newest current epoch; each process installs the version at it and says so; only when
//!    all did does the leader release the clocks. No batch of that epoch exists anywhere before
//!    every process has installed the version, so no worker matches it with the old rules.
//!    If any process refuses or sees other files, no process switches, and every process
//!    records why.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::clock::EpochClock;

/// What one component's reload handle does for the switch board.
pub trait Switchable: Send + Sync {
    /// Loads the files and keeps the result: `Some(version)` if it differs from the running
    /// version, `None` if not; `Err` with the reasons to refuse it.
    fn prepare(&self) -> Result<Option<String>, Vec<Value>>;
    /// Installs the prepared version at `epoch`; what to tell the caller about it.
    fn switch_at(&self, epoch: u64) -> Value;
    /// The prepared version is not switched to (`why`).
    fn cancel(&self, why: &Value);
}

/// How a round ended, as the reload answer says it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Reloaded { epoch: u64 },
    Unchanged,
    Refused { why: String },
}

/// From a process to the leader (carried by the control stream).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SwitchReport {
    Propose { component: String },
    Prepared { round: u64, component: String, version: Result<Option<String>, String>, epoch: u64 },
    Installed { round: u64, component: String },
}

#[derive(Default)]
struct Rounds {
    /// The newest round started for each component (as the leader announced it).
    started: BTreeMap<String, u64>,
    /// Outcomes of finished rounds by component: (round, outcome, answer).
    finished: BTreeMap<String, (u64, Outcome, Value)>,
    /// What installing a round's version said, until the round ends.
    installed: BTreeMap<String, (u64, Value)>,
}

/// A process's side of cluster-wide switches.
pub struct SwitchBoard {
    clock: Arc<EpochClock>,
    members: Mutex<BTreeMap<String, Arc<dyn Switchable>>>,
    outbox: Mutex<Vec<SwitchReport>>,
    rounds: Mutex<Rounds>,
    changed: Condvar,
    /// Held while a round is prepared and until it is released.
    holds: Mutex<BTreeMap<u64, ()>>,
}

impl SwitchBoard {
    pub fn new(clock: Arc<EpochClock>) -> Arc<SwitchBoard> {
        Arc::new(SwitchBoard {
            clock,
            members: Mutex::new(BTreeMap::new()),
            outbox: Mutex::new(Vec::new()),
            rounds: Mutex::new(Rounds::default()),
            changed: Condvar::new(),
            holds: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn join(&self, component: &str, member: Arc<dyn Switchable>) {
        self.members.lock().unwrap_or_else(|e| e.into_inner()).insert(component.to_string(), member);
    }

    /// Reports for the leader, oldest first.
    pub fn take_reports(&self) -> Vec<SwitchReport> {
        std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn send(&self, r: SwitchReport) {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }

    /// Proposes a reload of `component` and waits (up to `timeout`) for a round that started
    /// after the proposal to end; its answer.
    pub fn propose(&self, component: &str, timeout: Duration) -> Result<Value, Value> {
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        let seen = rounds.started.get(component).copied().unwrap_or(0);
        self.send(SwitchReport::Propose { component: component.to_string() });
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((round, outcome, answer)) = rounds.finished.get(component) {
                if *round > seen {
                    return match outcome {
                        Outcome::Refused { .. } => Err(answer.clone()),
                        _ => Ok(answer.clone()),
                    };
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(json!({"status": "refused", "errors": [{"reason": format!(
                    "the cluster did not agree on the reload within {timeout:?} (a process is busy or unreachable)"
                )}]}));
            }
            rounds = self.changed.wait_timeout(rounds, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// The leader asks for round `round` of `component`: load off the dataflow's threads,
    /// hold the clock, report.
    pub fn prepare(self: &Arc<Self>, round: u64, component: &str) {
        self.rounds.lock().unwrap_or_else(|e| e.into_inner()).started.insert(component.to_string(), round);
        let member = self.members.lock().unwrap_or_else(|e| e.into_inner()).get(component).cloned();
        let board = self.clone();
        let component = component.to_string();
        std::thread::spawn(move || {
            let version = match &member {
                Some(m) => m.prepare().map_err(|reasons| Value::Array(reasons).to_string()),
                None => Err(format!("no component `{component}` in this process")),
            };
            board.clock.hold();
            board.holds.lock().unwrap_or_else(|e| e.into_inner()).insert(round, ());
            let epoch = board.clock.current();
            board.send(SwitchReport::Prepared { round, component, version, epoch });
        });
    }

    /// Round `round` switches at `epoch`.
    pub fn switch(&self, round: u64, component: &str, epoch: u64) {
        let member = self.members.lock().unwrap_or_else(|e| e.into_inner()).get(component).cloned();
        let answer = member.map(|m| m.switch_at(epoch)).unwrap_or(Value::Null);
        self.rounds.lock().unwrap_or_else(|e| e.into_inner()).installed.insert(component.to_string(), (round, answer));
        self.send(SwitchReport::Installed { round, component: component.to_string() });
    }

    /// Round `round` ended: every process installed its version (or none switches).
    pub fn end(&self, round: u64, component: &str, outcome: Outcome) {
        if self.holds.lock().unwrap_or_else(|e| e.into_inner()).remove(&round).is_some() {
            self.clock.release();
        }
        let member = self.members.lock().unwrap_or_else(|e| e.into_inner()).get(component).cloned();
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        let answer = match &outcome {
            Outcome::Reloaded { .. } => {
                rounds.installed.remove(component).filter(|(r, _)| *r == round).map(|(_, a)| a).unwrap_or_default()
            }
            Outcome::Unchanged => json!({"status": "unchanged"}),
            Outcome::Refused { why } => {
                let answer = json!({"status": "refused", "errors": [{"reason": why}]});
                if let Some(m) = member {
                    m.cancel(&answer);
                }
                answer
            }
        };
        rounds.finished.insert(component.to_string(), (round, outcome, answer));
        self.changed.notify_all();
    }
}

/// The leader's side: rounds by component.
#[derive(Default)]
pub struct SwitchLeader {
    processes: usize,
    next_round: u64,
    active: BTreeMap<String, ActiveRound>,
    /// A change was proposed while a round of the component was on.
    again: std::collections::BTreeSet<String>,
}

struct ActiveRound {
    round: u64,
    prepared: BTreeMap<usize, (Result<Option<String>, String>, u64)>,
    epoch: Option<u64>,
    installed: usize,
}

/// What the leader decides (carried by the control stream to every process).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SwitchDecision {
    Prepare { round: u64, component: String },
    Switch { round: u64, component: String, epoch: u64 },
    End { round: u64, component: String, outcome: Outcome },
}

impl SwitchLeader {
    pub fn new(processes: usize) -> Self {
        SwitchLeader { processes, ..Default::default() }
    }

    pub fn handle(&mut self, process: usize, report: SwitchReport) -> Vec<SwitchDecision> {
        match report {
            SwitchReport::Propose { component } => {
                if self.active.contains_key(&component) {
                    self.again.insert(component);
                    return Vec::new();
                }
                vec![self.start(component)]
            }
            SwitchReport::Prepared { round, component, version, epoch } => {
                let Some(a) = self.active.get_mut(&component).filter(|a| a.round == round) else { return Vec::new() };
                a.prepared.insert(process, (version, epoch));
                if a.prepared.len() < self.processes {
                    return Vec::new();
                }
                let refusals: Vec<String> = a
                    .prepared
                    .iter()
                    .filter_map(|(p, (v, _))| v.as_ref().err().map(|why| format!("process {p}: {why}")))
                    .collect();
                let versions: std::collections::BTreeSet<Option<&String>> =
                    a.prepared.values().filter_map(|(v, _)| v.as_ref().ok().map(Option::as_ref)).collect();
                let outcome = if !refusals.is_empty() {
                    Some(Outcome::Refused { why: refusals.join("; ") })
                } else if versions.len() > 1 {
                    let seen: Vec<String> = a
                        .prepared
                        .iter()
                        .map(|(p, (v, _))| {
                            format!(
                                "process {p}: {}",
                                v.as_ref().ok().and_then(|v| v.as_deref()).unwrap_or("unchanged")
                            )
                        })
                        .collect();
                    Some(Outcome::Refused {
                        why: format!(
                            "the processes see different files ({}); retried when they change",
                            seen.join(", ")
                        ),
                    })
                } else if versions.contains(&None) {
                    Some(Outcome::Unchanged)
                } else {
                    None
                };
                match outcome {
                    Some(outcome) => self.finish(component, round, outcome),
                    None => {
                        let epoch = a.prepared.values().map(|(_, e)| *e).max().unwrap_or(0) + 1;
                        a.epoch = Some(epoch);
                        vec![SwitchDecision::Switch { round, component, epoch }]
                    }
                }
            }
            SwitchReport::Installed { round, component } => {
                let Some(a) = self.active.get_mut(&component).filter(|a| a.round == round) else { return Vec::new() };
                a.installed += 1;
                if a.installed < self.processes {
                    return Vec::new();
                }
                let epoch = a.epoch.unwrap_or_default();
                self.finish(component, round, Outcome::Reloaded { epoch })
            }
        }
    }

    fn start(&mut self, component: String) -> SwitchDecision {
        self.next_round += 1;
        let round = self.next_round;
        self.active
            .insert(component.clone(), ActiveRound { round, prepared: BTreeMap::new(), epoch: None, installed: 0 });
        SwitchDecision::Prepare { round, component }
    }

    fn finish(&mut self, component: String, round: u64, outcome: Outcome) -> Vec<SwitchDecision> {
        self.active.remove(&component);
        let mut out = vec![SwitchDecision::End { round, component: component.clone(), outcome }];
        if self.again.remove(&component) {
            out.push(self.start(component));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(round: u64, v: Result<Option<&str>, &str>, epoch: u64) -> SwitchReport {
        SwitchReport::Prepared {
            round,
            component: "detect".into(),
            version: v.map(|v| v.map(str::to_string)).map_err(str::to_string),
            epoch,
        }
    }

    #[test]
    fn every_process_switches_at_one_epoch_after_the_newest_clock_and_only_when_all_agree() {
        let mut l = SwitchLeader::new(2);
        let propose = || SwitchReport::Propose { component: "detect".into() };
        assert_eq!(l.handle(1, propose()), vec![SwitchDecision::Prepare { round: 1, component: "detect".into() }]);
        assert!(l.handle(0, propose()).is_empty(), "a round is on: another follows it");
        assert!(l.handle(0, prepared(1, Ok(Some("v2")), 40)).is_empty());
        let d = l.handle(1, prepared(1, Ok(Some("v2")), 43));
        assert_eq!(d, vec![SwitchDecision::Switch { round: 1, component: "detect".into(), epoch: 44 }]);
        assert!(l.handle(0, SwitchReport::Installed { round: 1, component: "detect".into() }).is_empty());
        let d = l.handle(1, SwitchReport::Installed { round: 1, component: "detect".into() });
        assert_eq!(
            d,
            vec![
                SwitchDecision::End { round: 1, component: "detect".into(), outcome: Outcome::Reloaded { epoch: 44 } },
                SwitchDecision::Prepare { round: 2, component: "detect".into() },
            ]
        );
        // Different files on the processes, then a refusal: nobody switches.
        l.handle(0, prepared(2, Ok(Some("v3")), 50));
        let d = l.handle(1, prepared(2, Ok(None), 50));
        assert!(
            matches!(&d[..], [SwitchDecision::End { outcome: Outcome::Refused { why }, .. }] if why.contains("different files")),
            "{d:?}"
        );
        l.handle(1, propose());
        l.handle(0, prepared(3, Err("rule x does not compile"), 60));
        let d = l.handle(1, prepared(3, Ok(Some("v3")), 60));
        assert!(
            matches!(&d[..], [SwitchDecision::End { outcome: Outcome::Refused { why }, .. }] if why.contains("process 0: rule x")),
            "{d:?}"
        );
        l.handle(1, propose());
        l.handle(0, prepared(4, Ok(None), 61));
        let d = l.handle(1, prepared(4, Ok(None), 61));
        assert!(matches!(&d[..], [SwitchDecision::End { outcome: Outcome::Unchanged, .. }]), "{d:?}");
    }

    #[test]
    fn a_held_clock_does_not_advance_until_the_round_ends() {
        let clock = Arc::new(EpochClock::starting_at(7));
        let board = SwitchBoard::new(clock.clone());
        board.prepare(1, "missing");
        let started = Instant::now();
        while board.outbox.lock().unwrap().is_empty() {
            assert!(started.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(clock.advance(), 7, "held");
        board.end(1, "missing", Outcome::Refused { why: "x".into() });
        assert_eq!(clock.advance(), 8);
        let r = board.take_reports();
        assert!(
            matches!(&r[..], [SwitchReport::Prepared { version: Err(why), epoch: 7, .. }] if why.contains("no component"))
        );
    }
}
