//! `sla`: cases and SLA timers (docs/architecture.md §6).
//!
//! Alerts open cases or join one: alerts with the same entity (the values of the `entity`
//! fields, default `host.name`) join the entity's open case when they come within
//! `join_within` of its last alert; otherwise they open a new case. A case's priority comes
//! from the highest score among its alerts (the policy's formula, `rules/sla/default.yaml`);
//! when a joining alert raises it, the shorter deadlines apply from the case's opening.
//!
//! Acknowledgements and containment updates arrive as events on their own input (any event
//! source), naming the case in `case.id` and the action (`acknowledged` or `contained`) in
//! `case.action`. Containment implies acknowledgement. The operator emits case records:
//! `case.opened`, `case.joined`, `case.acknowledged` (with TTA), `case.contained` (with TTC),
//! and per SLA clock `sla.warning` at the policy's warning fraction of a deadline,
//! `sla.breached` at the deadline and `sla.met` when the acknowledgement or containment came
//! in time (at the deadline counts as in time).
//!
//! Timers run on event time by default: alerts and updates are applied in event-time order
//! once the watermark passes them, and a deadline fires when the watermark passes it, so the
//! output is the same whatever the arrival order, worker count or restarts. With
//! `timers: processing_time` (live operation) records apply as they arrive and deadlines run
//! on the wall clock (read about once a second) from the moment a case opened.
//!
//! Case ids are `<entity key hash, 16 hex>-<opening alert hash, 8 hex>`: the entity hash routes
//! an update to the worker owning the case. A contained case is released; one never contained
//! is released `retention` after its last deadline and last alert; updates for a case Ward
//! does not hold go to quarantine (`unknown_case`).

pub mod policy;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use ward_engine::alert::Alert;
use ward_engine::batch::{value_to_json, EventBatch, Value};
use ward_engine::case::{CaseEventKind, CaseRecord, SlaKind};
use ward_engine::component::{OperatorOutput, StreamKind, WorkerContext};
use ward_engine::key_groups::{hash_key, split_by_group};
use ward_engine::keyed::{decode, encode, KeyedOperator, KeyedOperatorFactory, RecordRef, Route, Router};
use ward_engine::metrics::Families;
use ward_engine::quarantine::{QuarantineRecord, Reason};
use ward_engine::registry::{BuildContext, Built, ComponentConfig, Section};
use ward_engine::time::{event_time, EventTime, WATERMARK_MIN};

pub use policy::SlaPolicy;
use policy::{priority_name, Priority};

/// Open cases from alerts and track their acknowledge/contain deadlines.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlaConfig {
    /// SLA policy file (YAML, like `rules/sla/default.yaml`); default: that built-in policy.
    #[serde(default)]
    pub policy: Option<String>,
    /// Alert fields naming the entity a case is about (event fields such as `host.name`,
    /// correlation group-by fields, `rule.id`). Alerts with none of them form a case per rule.
    #[serde(default = "default_entity")]
    pub entity: Vec<String>,
    /// An alert joins its entity's open case when it comes within this time (event time) of
    /// the case's last alert; otherwise it opens a new case.
    #[serde(default = "default_join_within", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub join_within: Duration,
    /// `event_time` (deterministic: deadlines fire as the watermark passes them) or
    /// `processing_time` (deadlines on the wall clock, for live operation).
    #[serde(default)]
    pub timers: TimerMode,
    /// Field of an update event holding the case id.
    #[serde(default = "default_case_field")]
    pub case_field: String,
    /// Field of an update event holding the action: `acknowledged` or `contained`.
    #[serde(default = "default_action_field")]
    pub action_field: String,
    /// How long a case never contained is kept after its last deadline and its last alert
    /// (updates arriving later are quarantined as `unknown_case`).
    #[serde(default = "default_retention", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retention: Duration,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimerMode {
    #[default]
    EventTime,
    ProcessingTime,
}

fn default_entity() -> Vec<String> {
    vec!["host.name".into()]
}
fn default_join_within() -> Duration {
    Duration::from_secs(3600)
}
fn default_case_field() -> String {
    "case.id".into()
}
fn default_action_field() -> String {
    "case.action".into()
}
fn default_retention() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128 / 4) as i64
}

impl ComponentConfig for SlaConfig {
    const TYPE: &'static str = "sla";
    const SECTION: Section = Section::Operator;
    const DESCRIPTION: &'static str =
        "Open cases from alerts, apply acknowledgements/containment, emit SLA warning/breached/met (keyed state)";
    const ACCEPTS: &'static [StreamKind] = &[StreamKind::Alerts, StreamKind::Events];
    const OUTPUT: Option<StreamKind> = Some(StreamKind::Cases);

    fn build(self, ctx: &BuildContext<'_>) -> anyhow::Result<Built> {
        let policy = match &self.policy {
            None => SlaPolicy::builtin(),
            Some(path) => {
                let text = ctx.resources.read_string(path)?;
                SlaPolicy::parse(&ctx.resources.resolve(path).display().to_string(), &text)?
            }
        };
        if self.entity.is_empty() {
            anyhow::bail!("`entity` names no field");
        }
        Ok(Built::Keyed(Arc::new(SlaFactory {
            settings: Arc::new(Settings {
                policy,
                entity: self.entity,
                join_within_ms: millis(self.join_within),
                mode: self.timers,
                case_field: self.case_field,
                action_field: self.action_field,
                retention_ms: millis(self.retention),
            }),
        })))
    }

    /// The entity, and what the priority formula reads (`policy::Priority`).
    fn alert_keys(&self) -> Vec<String> {
        let mut keys = self.entity.clone();
        keys.extend(policy::ALERT_FIELDS.iter().map(|f| f.to_string()));
        keys
    }
}

/// The validated configuration, shared by a component's routers and operators.
#[derive(Debug)]
pub struct Settings {
    pub policy: SlaPolicy,
    pub entity: Vec<String>,
    pub join_within_ms: i64,
    pub mode: TimerMode,
    pub case_field: String,
    pub action_field: String,
    pub retention_ms: i64,
}

impl Settings {
    pub fn new(policy: SlaPolicy, mode: TimerMode) -> Settings {
        Settings {
            policy,
            entity: default_entity(),
            join_within_ms: millis(default_join_within()),
            mode,
            case_field: default_case_field(),
            action_field: default_action_field(),
            retention_ms: millis(default_retention()),
        }
    }

    /// The entity of an alert: (field, value) of the entity fields it has, or its rule.
    /// Borrowed from the alert: routing needs only its key.
    fn entity<'a>(&'a self, alert: &'a Alert) -> Vec<(&'a str, std::borrow::Cow<'a, str>)> {
        let values: Vec<_> =
            self.entity.iter().map(|f| (f.as_str(), alert.field(f))).filter(|(_, v)| !v.is_empty()).collect();
        if values.is_empty() {
            vec![("rule.id", alert.rule.id.as_str().into())]
        } else {
            values
        }
    }

    fn entity_key(&self, alert: &Alert) -> u64 {
        entity_key(&self.entity(alert))
    }
}

fn entity_key<F: AsRef<str>, V: AsRef<str>>(entity: &[(F, V)]) -> u64 {
    hash_key(entity.iter().flat_map(|(f, v)| [f.as_ref().as_bytes(), v.as_ref().as_bytes()]))
}

/// A case's serial among its entity's cases: a hash of the alert that opened it.
fn serial_of(alert_id: &str) -> u32 {
    hash_key([alert_id.as_bytes()]) as u32
}

/// `<entity key>-<serial>`: the first part routes updates to the case's owner.
fn case_id(entity_key: u64, serial: u32) -> String {
    format!("{entity_key:016x}-{serial:08x}")
}

/// The entity key and serial a case id names, if it is well formed.
fn parse_case_id(id: &str) -> Option<(u64, u32)> {
    let (key, serial) = id.split_once('-')?;
    if key.len() != 16 || serial.len() != 8 {
        return None;
    }
    Some((u64::from_str_radix(key, 16).ok()?, u32::from_str_radix(serial, 16).ok()?))
}

fn text_of(batch: &EventBatch, row: usize, name: &str) -> Option<String> {
    match batch.get_by_name(row, name)? {
        Value::Str(r) => Some(batch.bytes().str(r).to_string()),
        v => match value_to_json(batch.bytes(), v) {
            serde_json::Value::Null => None,
            j => Some(j.to_string()),
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Action {
    Acknowledge,
    Contain,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        match s.trim().to_ascii_lowercase().as_str() {
            "acknowledged" | "acknowledge" | "ack" | "acked" => Some(Action::Acknowledge),
            "contained" | "contain" | "resolved" | "closed" => Some(Action::Contain),
            _ => None,
        }
    }
}

struct SlaFactory {
    settings: Arc<Settings>,
}

/// The SLA operator's own families: times to acknowledge and contain, and breaches.
#[derive(Clone)]
pub struct SlaMetrics {
    component: Arc<str>,
    tta: prometheus::HistogramVec,
    ttc: prometheus::HistogramVec,
    breaches: prometheus::IntCounterVec,
}

impl SlaMetrics {
    pub fn register(families: &Families, component: &Arc<str>) -> Self {
        // 1 minute … about 2 days.
        let buckets = vec![60.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0];
        let labels = &["component", "priority"];
        SlaMetrics {
            component: component.clone(),
            tta: families.histogram_vec(
                "ward_sla_tta_seconds",
                "Time to acknowledge of cases, by priority",
                labels,
                buckets.clone(),
            ),
            ttc: families.histogram_vec(
                "ward_sla_ttc_seconds",
                "Time to contain of cases, by priority",
                labels,
                buckets,
            ),
            breaches: families.counter_vec(
                "ward_sla_breaches_total",
                "SLA deadlines breached, by priority and SLA (acknowledge, contain)",
                &["component", "priority", "sla"],
            ),
        }
    }
}

impl KeyedOperatorFactory for SlaFactory {
    fn router(&self, _ctx: &WorkerContext) -> anyhow::Result<Box<dyn Router>> {
        Ok(Box::new(SlaRouter { settings: self.settings.clone() }))
    }
    fn operator(&self, ctx: &WorkerContext) -> anyhow::Result<Box<dyn KeyedOperator>> {
        let mut sla = Sla::new(self.settings.clone(), ctx.component_id.clone());
        sla.metrics = Some(SlaMetrics::register(&ctx.metrics.families, &ctx.component_id));
        Ok(Box::new(sla))
    }
}

struct SlaRouter {
    settings: Arc<Settings>,
}

/// The key of an update event: its case's entity key; a malformed one goes to some worker by
/// its text (or payload), which quarantines it.
fn update_key(settings: &Settings, batch: &EventBatch, row: usize) -> u64 {
    match text_of(batch, row, &settings.case_field) {
        Some(id) => parse_case_id(&id).map_or_else(|| hash_key([id.as_bytes()]), |(key, _)| key),
        None => hash_key([batch.raw_payload(row)]),
    }
}

impl Router for SlaRouter {
    fn route(&mut self, record: RecordRef<'_>, keys: &mut Vec<u64>) -> Route {
        keys.push(match record {
            RecordRef::Alert(a) => self.settings.entity_key(a),
            RecordRef::Event { batch, row } => update_key(&self.settings, batch, row),
            // Not an input of this operator (its ACCEPTS).
            RecordRef::Case(_) => return Route::PassThrough,
        });
        Route::Keyed
    }
}

/// One SLA clock of a case.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Clock {
    /// When the acknowledgement/containment came (clock time).
    done: Option<i64>,
    warned: bool,
    breached: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Case {
    /// With the entity key, the case id.
    serial: u32,
    entity: Vec<(String, String)>,
    /// Event time of the first alert.
    opened_ms: i64,
    /// Where the SLA clocks start: `opened_ms` on event time, the wall clock at opening on
    /// processing time.
    start_ms: i64,
    last_alert_ms: i64,
    score: f64,
    priority: Priority,
    alerts: u64,
    acknowledge: Clock,
    contain: Clock,
    /// The pending timer (the earliest threshold still ahead), if any.
    next_timer: Option<i64>,
}

impl Case {
    fn clock(&self, sla: SlaKind) -> &Clock {
        match sla {
            SlaKind::Acknowledge => &self.acknowledge,
            SlaKind::Contain => &self.contain,
        }
    }
    fn clock_mut(&mut self, sla: SlaKind) -> &mut Clock {
        match sla {
            SlaKind::Acknowledge => &mut self.acknowledge,
            SlaKind::Contain => &mut self.contain,
        }
    }
}

/// An input waiting for the watermark (event-time mode).
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Pending {
    Alert { key: u64, alert: Box<Alert> },
    Update { key: u64, case_id: String, action: Action, record: Box<QuarantineRecord> },
}

impl Pending {
    fn key(&self) -> u64 {
        match self {
            Pending::Alert { key, .. } | Pending::Update { key, .. } => *key,
        }
    }
}

/// (event time, alerts before updates, tie-break) orders pending inputs.
type PendingKey = (EventTime, u8, String);

/// The snapshot of one key group.
#[derive(Serialize, Deserialize)]
struct GroupState {
    watermark: EventTime,
    now_ms: i64,
    cases: Vec<(u64, Vec<Case>)>,
    pending: Vec<(PendingKey, Pending)>,
}

/// Cases of the key groups one worker owns.
pub struct Sla {
    settings: Arc<Settings>,
    component: Arc<str>,
    metrics: Option<SlaMetrics>,
    /// Entity key → its cases (the last is the one alerts may join).
    cases: HashMap<u64, Vec<Case>>,
    /// (threshold, entity key, case serial): wake-ups; stale ones are skipped.
    timers: BinaryHeap<Reverse<(i64, u64, u32)>>,
    pending: BTreeMap<PendingKey, Pending>,
    watermark: EventTime,
    /// Processing time as of the last tick.
    now_ms: i64,
}

impl Sla {
    pub fn new(settings: Arc<Settings>, component: Arc<str>) -> Sla {
        Sla {
            settings,
            component,
            metrics: None,
            cases: HashMap::new(),
            timers: BinaryHeap::new(),
            pending: BTreeMap::new(),
            watermark: WATERMARK_MIN,
            now_ms: chrono::Utc::now().timestamp_millis(),
        }
    }

    fn processing(&self) -> bool {
        self.settings.mode == TimerMode::ProcessingTime
    }

    fn record(&self, kind: CaseEventKind, key: u64, case: &Case, time_ms: i64) -> CaseRecord {
        CaseRecord {
            kind,
            case_id: case_id(key, case.serial),
            priority: priority_name(case.priority).into(),
            score: case.score,
            entity: case.entity.clone(),
            opened_ms: case.opened_ms,
            time_ms,
            sla: None,
            deadline_ms: None,
            tta_ms: case.acknowledge.done.map(|t| t - case.start_ms),
            ttc_ms: case.contain.done.map(|t| t - case.start_ms),
            alert_id: None,
            rule_id: None,
            alerts: case.alerts,
        }
    }

    fn deadline(&self, case: &Case, sla: SlaKind) -> i64 {
        let d = self.settings.policy.deadlines(case.priority);
        case.start_ms + millis(if sla == SlaKind::Acknowledge { d.acknowledge } else { d.contain })
    }

    fn warn_at(&self, case: &Case, sla: SlaKind) -> i64 {
        let span = self.deadline(case, sla) - case.start_ms;
        case.start_ms + (span as f64 * self.settings.policy.warning) as i64
    }

    /// When a case never contained may be released.
    fn expiry(&self, case: &Case) -> i64 {
        let last = self.deadline(case, SlaKind::Contain).max(case.last_alert_ms + self.settings.join_within_ms);
        last.saturating_add(self.settings.retention_ms)
    }

    /// The earliest threshold of `case` after `after`: a warning, a deadline or its expiry.
    fn next_threshold(&self, case: &Case, after: i64) -> Option<i64> {
        let mut next: Option<i64> = None;
        for sla in [SlaKind::Acknowledge, SlaKind::Contain] {
            let c = case.clock(sla);
            if c.done.is_some() {
                continue;
            }
            for (t, done) in [(self.warn_at(case, sla), c.warned), (self.deadline(case, sla), c.breached)] {
                if !done {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
        }
        if case.contain.done.is_none() {
            let e = self.expiry(case);
            if e > after {
                next = Some(next.map_or(e, |n| n.min(e)));
            }
        }
        next
    }

    fn schedule(&mut self, key: u64, case_index: usize, after: i64) {
        let Some(case) = self.cases.get(&key).and_then(|v| v.get(case_index)) else { return };
        let next = self.next_threshold(case, after);
        if next != case.next_timer {
            if let Some(t) = next {
                self.timers.push(Reverse((t, key, case.serial)));
            }
            if let Some(case) = self.cases.get_mut(&key).and_then(|v| v.get_mut(case_index)) {
                case.next_timer = next;
            }
        }
    }

    fn apply_alert(&mut self, key: u64, alert: Alert, clock: i64, out: &mut OperatorOutput) {
        let t = alert.event_time_ms.unwrap_or(clock);
        let score = self.settings.policy.score(&alert);
        let priority = self.settings.policy.priority(score);
        let join_within = self.settings.join_within_ms;
        let cases = self.cases.entry(key).or_insert_with(|| Vec::with_capacity(1));
        let joinable = cases
            .last()
            .is_some_and(|c| c.contain.done.is_none() && t >= c.opened_ms && t - c.last_alert_ms <= join_within);
        let (index, kind) = if joinable {
            let i = cases.len() - 1;
            let c = &mut cases[i];
            c.alerts += 1;
            c.last_alert_ms = c.last_alert_ms.max(t);
            if score > c.score {
                c.score = score;
                c.priority = c.priority.min(priority);
            }
            (i, CaseEventKind::Joined)
        } else {
            let entity: Vec<(String, String)> =
                self.settings.entity(&alert).into_iter().map(|(f, v)| (f.to_string(), v.into_owned())).collect();
            cases.push(Case {
                serial: serial_of(&alert.alert_id),
                entity,
                opened_ms: t,
                start_ms: clock,
                last_alert_ms: t,
                score,
                priority,
                alerts: 1,
                acknowledge: Clock::default(),
                contain: Clock::default(),
                next_timer: None,
            });
            (cases.len() - 1, CaseEventKind::Opened)
        };
        let case = &self.cases[&key][index];
        let mut r = self.record(kind, key, case, t);
        r.alert_id = Some(alert.alert_id);
        r.rule_id = Some(alert.rule.id.clone());
        out.cases.push(r);
        out.consumed += 1;
        self.schedule(key, index, clock);
        // A raised priority may have moved deadlines into the past.
        if self.processing() {
            self.fire_due(self.now_ms, out);
        }
    }

    fn apply_update(
        &mut self,
        key: u64,
        case_id: &str,
        action: Action,
        clock: i64,
        record: QuarantineRecord,
        out: &mut OperatorOutput,
    ) {
        let serial = parse_case_id(case_id).map(|(_, serial)| serial);
        let found = self.cases.get(&key).and_then(|v| v.iter().position(|c| Some(c.serial) == serial));
        let Some(index) = found else {
            let mut q = record;
            q.reason = Reason::UnknownCase;
            q.detail = format!("no open case `{case_id}` (never opened, already contained, or past retention)");
            out.quarantine.push(q);
            return;
        };
        let clocks: &[SlaKind] = match action {
            Action::Acknowledge => &[SlaKind::Acknowledge],
            Action::Contain => &[SlaKind::Acknowledge, SlaKind::Contain],
        };
        let mut changed = false;
        for &sla in clocks {
            let deadline = self.deadline(&self.cases[&key][index], sla);
            let case = &mut self.cases.get_mut(&key).expect("found above")[index];
            if case.clock(sla).done.is_some() {
                continue;
            }
            changed = true;
            case.clock_mut(sla).done = Some(clock);
            let case = &self.cases[&key][index];
            let (kind, took) = match sla {
                SlaKind::Acknowledge => (CaseEventKind::Acknowledged, clock - case.start_ms),
                SlaKind::Contain => (CaseEventKind::Contained, clock - case.start_ms),
            };
            let prio = priority_name(case.priority);
            if let Some(m) = &self.metrics {
                match sla {
                    SlaKind::Acknowledge => {
                        m.tta.with_label_values(&[&*m.component, prio]).observe(took as f64 / 1000.0)
                    }
                    SlaKind::Contain => m.ttc.with_label_values(&[&*m.component, prio]).observe(took as f64 / 1000.0),
                }
            }
            let mut r = self.record(kind, key, case, clock);
            r.sla = Some(sla);
            r.deadline_ms = Some(deadline);
            out.cases.push(r.clone());
            if !case.clock(sla).breached {
                r.kind = CaseEventKind::Met;
                out.cases.push(r);
            }
        }
        if !changed {
            // A repeated update: nothing new to say.
            out.filtered += 1;
            return;
        }
        out.consumed += 1;
        let contained = self.cases[&key][index].contain.done.is_some();
        if contained {
            let cases = self.cases.get_mut(&key).expect("found above");
            cases.remove(index);
            if cases.is_empty() {
                self.cases.remove(&key);
            }
        } else {
            self.schedule(key, index, clock);
        }
    }

    /// Fires the thresholds of one case due at `t` (its timer), then schedules the next.
    fn fire(&mut self, t: i64, key: u64, serial: u32, out: &mut OperatorOutput) {
        let Some(index) = self.cases.get(&key).and_then(|v| v.iter().position(|c| c.serial == serial)) else { return };
        if self.cases[&key][index].next_timer != Some(t) {
            return; // superseded
        }
        let mut due = Vec::new();
        {
            let case = &self.cases[&key][index];
            for sla in [SlaKind::Acknowledge, SlaKind::Contain] {
                let c = case.clock(sla);
                if c.done.is_some() {
                    continue;
                }
                if !c.warned && self.warn_at(case, sla) <= t {
                    due.push((self.warn_at(case, sla), CaseEventKind::Warning, sla));
                }
                if !c.breached && self.deadline(case, sla) <= t {
                    due.push((self.deadline(case, sla), CaseEventKind::Breached, sla));
                }
            }
        }
        due.sort_by_key(|(at, kind, sla)| (*at, *kind, *sla));
        for (at, kind, sla) in due {
            let deadline = self.deadline(&self.cases[&key][index], sla);
            let case = &mut self.cases.get_mut(&key).expect("found above")[index];
            let c = case.clock_mut(sla);
            if kind == CaseEventKind::Warning {
                c.warned = true;
            } else {
                c.breached = true;
            }
            let case = &self.cases[&key][index];
            if kind == CaseEventKind::Breached {
                if let Some(m) = &self.metrics {
                    m.breaches.with_label_values(&[&*m.component, priority_name(case.priority), sla_name(sla)]).inc();
                }
            }
            let mut r = self.record(kind, key, case, at);
            r.sla = Some(sla);
            r.deadline_ms = Some(deadline);
            out.cases.push(r);
        }
        let case = &self.cases[&key][index];
        if case.contain.done.is_none() && self.expiry(case) <= t {
            let cases = self.cases.get_mut(&key).expect("found above");
            cases.remove(index);
            if cases.is_empty() {
                self.cases.remove(&key);
            }
            return;
        }
        self.cases.get_mut(&key).expect("found above")[index].next_timer = None;
        self.schedule(key, index, t);
    }

    /// Fires every timer due at or before `t`.
    fn fire_due(&mut self, t: i64, out: &mut OperatorOutput) {
        while let Some(Reverse((at, key, serial))) = self.timers.peek().copied() {
            if at > t {
                break;
            }
            self.timers.pop();
            self.fire(at, key, serial, out);
        }
    }

    fn apply(&mut self, p: Pending, clock: i64, out: &mut OperatorOutput) {
        match p {
            Pending::Alert { key, alert } => self.apply_alert(key, *alert, clock, out),
            Pending::Update { key, case_id, action, record } => {
                self.apply_update(key, &case_id, action, clock, *record, out)
            }
        }
    }

    /// An input: applied now (processing time) or when the watermark passes it (event time).
    fn accept(&mut self, at: PendingKey, p: Pending, out: &mut OperatorOutput) {
        if self.processing() {
            self.apply(p, self.now_ms, out);
        } else {
            self.pending.insert(at, p);
        }
    }
}

fn sla_name(sla: SlaKind) -> &'static str {
    match sla {
        SlaKind::Acknowledge => "acknowledge",
        SlaKind::Contain => "contain",
    }
}

impl KeyedOperator for Sla {
    fn process_alert(&mut self, alert: Alert, _primary: bool, out: &mut OperatorOutput) {
        let key = self.settings.entity_key(&alert);
        let t = alert.event_time_ms.unwrap_or(self.watermark);
        let at = (t, 0, alert.alert_id.clone());
        self.accept(at, Pending::Alert { key, alert: Box::new(alert) }, out);
    }

    fn process_events(&mut self, batch: EventBatch, out: &mut OperatorOutput) {
        for row in 0..batch.len() {
            let quarantine =
                |reason, detail: String| QuarantineRecord::from_row(&batch, row, &self.component, reason, detail);
            let Some(case_id) = text_of(&batch, row, &self.settings.case_field) else {
                let detail = format!("an SLA update needs the case id in `{}`", self.settings.case_field);
                out.quarantine.push(quarantine(Reason::MissingField, detail));
                continue;
            };
            let action_text = text_of(&batch, row, &self.settings.action_field).unwrap_or_default();
            let Some(action) = Action::parse(&action_text) else {
                let detail = format!(
                    "`{}` is `{action_text}`; expected `acknowledged` or `contained`",
                    self.settings.action_field
                );
                out.quarantine.push(quarantine(Reason::InvalidValue, detail));
                continue;
            };
            let key = update_key(&self.settings, &batch, row);
            let record = Box::new(quarantine(Reason::UnknownCase, String::new()));
            let p = batch.provenance(row);
            let t = event_time(&batch, row).unwrap_or(self.watermark);
            let at = (t, 1, format!("{}\u{1f}{}\u{1f}{:020}", p.source, p.partition, p.offset));
            self.accept(at, Pending::Update { key, case_id, action, record }, out);
        }
    }

    fn advance(&mut self, watermark: EventTime, out: &mut OperatorOutput) {
        self.watermark = self.watermark.max(watermark);
        if self.processing() {
            return;
        }
        // Inputs and deadlines in event-time order; an input at a deadline comes first (in time).
        loop {
            let input = self.pending.first_key_value().map(|(k, _)| k.0).filter(|t| *t <= self.watermark);
            let timer = self.timers.peek().map(|Reverse((t, _, _))| *t).filter(|t| *t <= self.watermark);
            match (input, timer) {
                (Some(i), Some(t)) if t < i => self.fire_due(t, out),
                (Some(i), _) => {
                    let (_, p) = self.pending.pop_first().expect("peeked");
                    self.apply(p, i, out);
                }
                (None, Some(t)) => self.fire_due(t, out),
                (None, None) => break,
            }
        }
    }

    fn tick(&mut self, now_ms: i64, out: &mut OperatorOutput) {
        self.now_ms = self.now_ms.max(now_ms);
        if self.processing() {
            self.fire_due(self.now_ms, out);
        }
    }

    fn snapshot_groups(&self, groups: &[u16]) -> anyhow::Result<Vec<(u16, Vec<u8>)>> {
        let mut cases = split_by_group(self.cases.iter().map(|(k, v)| (*k, v)), groups).into_iter().peekable();
        let mut pending =
            split_by_group(self.pending.iter().map(|(k, p)| (p.key(), (k, p))), groups).into_iter().peekable();
        let mut out = Vec::new();
        for &g in groups {
            let c = cases.next_if(|(cg, _)| *cg == g).map(|(_, c)| c).unwrap_or_default();
            let p = pending.next_if(|(pg, _)| *pg == g).map(|(_, p)| p).unwrap_or_default();
            if c.is_empty() && p.is_empty() {
                continue;
            }
            let mut cases: Vec<(u64, Vec<Case>)> = c.into_iter().map(|(k, v)| (k, v.clone())).collect();
            cases.sort_by_key(|(k, _)| *k);
            let pending: Vec<(PendingKey, Pending)> = p.into_iter().map(|(_, (k, p))| (k.clone(), p.clone())).collect();
            let state = GroupState { watermark: self.watermark, now_ms: self.now_ms, cases, pending };
            // JSON inside: alerts carry serde_json values, which compact binary formats cannot encode.
            out.push((g, encode(&serde_json::to_vec(&state)?)?));
        }
        Ok(out)
    }

    fn restore(&mut self, _group: u16, bytes: &[u8]) -> anyhow::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let json: Vec<u8> = decode(bytes)?;
        let state: GroupState = serde_json::from_slice(&json)?;
        self.watermark = self.watermark.max(state.watermark);
        self.now_ms = self.now_ms.max(state.now_ms);
        for (key, cases) in state.cases {
            for c in &cases {
                if let Some(t) = c.next_timer {
                    self.timers.push(Reverse((t, key, c.serial)));
                }
            }
            self.cases.insert(key, cases);
        }
        self.pending.extend(state.pending);
        Ok(())
    }

    fn live_keys(&self) -> usize {
        self.cases.len()
    }
}

#[cfg(test)]
mod tests;
