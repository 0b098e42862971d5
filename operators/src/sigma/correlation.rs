//! Sigma correlation rules, compiled for the `correlate` operator: references resolved to rule
//! ids, aliases resolved per input rule, conditions as predicates, and an evaluation order in
//! which every rule comes after the correlation rules it references (chains).
//!
//! A correlation that references another correlation must group by the same fields in the
//! same order: the key of a group is the hash of its group-by values, so the chained alert
//! lands on the worker that holds the dependent group.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rsigma_parser::ast::{ConditionExpr, ConditionOperator, CorrelationCondition, CorrelationType, WindowMode};
use rsigma_parser::CorrelationRule;
use ward_engine::alert::{attack_techniques, AlertRule};

/// How a window's contributions are aggregated.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    EventCount,
    ValueCount,
    ValueSum,
    ValueAvg,
    /// The given percentile (0–100) of the values, nearest-rank.
    ValuePercentile(f64),
    /// Every referenced rule (or the boolean condition over them) within the window.
    Temporal(Option<Presence>),
    /// The referenced rules in the listed order within the window.
    TemporalOrdered,
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::EventCount => "event_count",
            Kind::ValueCount => "value_count",
            Kind::ValueSum => "value_sum",
            Kind::ValueAvg => "value_avg",
            Kind::ValuePercentile(_) => "value_percentile",
            Kind::Temporal(_) => "temporal",
            Kind::TemporalOrdered => "temporal_ordered",
        }
    }
    pub fn needs_value(&self) -> bool {
        matches!(self, Kind::ValueCount | Kind::ValueSum | Kind::ValueAvg | Kind::ValuePercentile(_))
    }
}

/// A boolean condition over which input rules occurred in a window (temporal rules).
#[derive(Clone, Debug, PartialEq)]
pub enum Presence {
    Slot(u8),
    And(Vec<Presence>),
    Or(Vec<Presence>),
    Not(Box<Presence>),
}

impl Presence {
    pub fn eval(&self, present: u64) -> bool {
        match self {
            Presence::Slot(s) => present & (1 << s) != 0,
            Presence::And(xs) => xs.iter().all(|x| x.eval(present)),
            Presence::Or(xs) => xs.iter().any(|x| x.eval(present)),
            Presence::Not(x) => !x.eval(present),
        }
    }
}

/// One referenced rule of a correlation: where its alerts' group-by and value fields are.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub rule_id: String,
    /// Field to read for each group-by entry (aliases resolved).
    pub group_fields: Vec<String>,
    pub value_field: Option<String>,
    /// The input is itself a correlation rule (its alerts are chained in).
    pub chained: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Correlation {
    pub rule: Arc<AlertRule>,
    pub kind: Kind,
    pub group_by: Vec<String>,
    pub inputs: Vec<Input>,
    pub timespan_ms: i64,
    /// All must hold.
    pub predicates: Vec<(ConditionOperator, f64)>,
    pub condition: String,
    pub generate: bool,
    /// 0 for correlations over detection rules only; 1 + the highest level it references.
    pub level: usize,
    /// Identity of the definition: state survives a reload only if this is unchanged.
    pub fingerprint: u64,
}

impl Correlation {
    pub fn holds(&self, value: f64) -> bool {
        self.predicates.iter().all(|(op, x)| match op {
            ConditionOperator::Lt => value < *x,
            ConditionOperator::Lte => value <= *x,
            ConditionOperator::Gt => value > *x,
            ConditionOperator::Gte => value >= *x,
            ConditionOperator::Eq => value == *x,
            ConditionOperator::Neq => value != *x,
        })
    }
}

/// The compiled correlation rules of a rule set.
#[derive(Clone, Debug, Default)]
pub struct CorrelationSet {
    /// In evaluation order (by level).
    pub rules: Vec<Correlation>,
    /// Alerts of rule id `x` feed `(correlation index, input index)`.
    pub inputs_of: HashMap<String, Vec<(u32, u8)>>,
    /// Rule ids whose alerts only feed correlations with `generate: false`: the correlation
    /// absorbs them instead of passing them on.
    pub absorbed: HashSet<String>,
    /// Sigma fields the alerts of each detection rule must carry (for sigma-match).
    pub needed_fields: HashMap<String, Vec<String>>,
    /// (path, id, title, rejection reason) of correlation rules that could not be compiled.
    pub rejected: Vec<(String, String, String, String)>,
}

impl CorrelationSet {
    pub fn max_level(&self) -> usize {
        self.rules.iter().map(|c| c.level).max().unwrap_or(0)
    }
}

fn op_name(op: ConditionOperator) -> &'static str {
    match op {
        ConditionOperator::Lt => "lt",
        ConditionOperator::Lte => "lte",
        ConditionOperator::Gt => "gt",
        ConditionOperator::Gte => "gte",
        ConditionOperator::Eq => "eq",
        ConditionOperator::Neq => "neq",
    }
}

/// Compiles `correlations` ((path, rule)) against the detection rules `detections`
/// ((id, name)).
pub fn compile(detections: &[(String, Option<String>)], correlations: &[(String, CorrelationRule)]) -> CorrelationSet {
    // Every reference (id or name) → rule id.
    let mut refs: HashMap<String, String> = HashMap::new();
    for (id, name) in detections {
        refs.insert(id.clone(), id.clone());
        if let Some(n) = name {
            refs.insert(n.clone(), id.clone());
        }
    }
    let corr_id = |c: &CorrelationRule| c.id.clone().or_else(|| c.name.clone()).unwrap_or_else(|| c.title.clone());
    let mut corr_index: HashMap<String, usize> = HashMap::new();
    for (i, (_, c)) in correlations.iter().enumerate() {
        let id = corr_id(c);
        corr_index.insert(id.clone(), i);
        refs.insert(id.clone(), id.clone());
        if let Some(n) = &c.name {
            corr_index.insert(n.clone(), i);
            refs.insert(n.clone(), id.clone());
        }
    }
    let detection_ids: HashSet<&str> = detections.iter().map(|(id, _)| id.as_str()).collect();

    let mut set = CorrelationSet::default();
    let mut compiled: Vec<Option<Correlation>> = vec![None; correlations.len()];
    let mut failed: HashMap<usize, String> = HashMap::new();
    // Levels by repeated relaxation; a cycle never settles.
    let mut level: Vec<Option<usize>> = vec![None; correlations.len()];
    for _ in 0..=correlations.len() {
        for (i, (_, c)) in correlations.iter().enumerate() {
            if level[i].is_some() {
                continue;
            }
            let mut l = 0;
            let mut ready = true;
            for r in &c.rules {
                if let Some(&j) = corr_index.get(r.as_str()) {
                    match level[j] {
                        Some(lj) => l = l.max(lj + 1),
                        None => ready = false,
                    }
                }
            }
            if ready {
                level[i] = Some(l);
            }
        }
    }
    for (i, (path, c)) in correlations.iter().enumerate() {
        let Some(l) = level[i] else {
            failed.insert(i, "correlation rules reference each other in a cycle".into());
            let _ = path;
            continue;
        };
        match compile_one(c, l, &refs, &detection_ids, &corr_index, correlations) {
            Ok(x) => compiled[i] = Some(x),
            Err(why) => {
                failed.insert(i, why);
            }
        }
    }
    // A correlation over a rejected correlation is rejected too.
    loop {
        let mut changed = false;
        for (i, c) in compiled.iter_mut().enumerate() {
            let Some(x) = c else { continue };
            if let Some(bad) = x
                .inputs
                .iter()
                .find(|inp| inp.chained && corr_index.get(&inp.rule_id).is_some_and(|j| failed.contains_key(j)))
            {
                failed.insert(i, format!("references correlation `{}`, which was rejected", bad.rule_id));
                *c = None;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for (i, (path, c)) in correlations.iter().enumerate() {
        if let Some(why) = failed.get(&i) {
            set.rejected.push((path.clone(), corr_id(c), c.title.clone(), why.clone()));
        }
    }
    let mut rules: Vec<Correlation> = compiled.into_iter().flatten().collect();
    rules.sort_by_key(|c| c.level);
    let mut generated: HashSet<String> = HashSet::new();
    let mut referenced: HashSet<String> = HashSet::new();
    for (ci, c) in rules.iter().enumerate() {
        for (si, input) in c.inputs.iter().enumerate() {
            set.inputs_of.entry(input.rule_id.clone()).or_default().push((ci as u32, si as u8));
            referenced.insert(input.rule_id.clone());
            if c.generate {
                generated.insert(input.rule_id.clone());
            }
            if !input.chained {
                let needed = set.needed_fields.entry(input.rule_id.clone()).or_default();
                for f in input.group_fields.iter().chain(input.value_field.iter()) {
                    if !needed.contains(f) {
                        needed.push(f.clone());
                    }
                }
            }
        }
    }
    set.absorbed = referenced.difference(&generated).cloned().collect();
    set.rules = rules;
    set
}

fn compile_one(
    c: &CorrelationRule,
    level: usize,
    refs: &HashMap<String, String>,
    detection_ids: &HashSet<&str>,
    corr_index: &HashMap<String, usize>,
    all: &[(String, CorrelationRule)],
) -> Result<Correlation, String> {
    if c.window != WindowMode::Sliding {
        return Err(format!("`window: {}` is not supported: Ward evaluates exact sliding windows", c.window.as_str()));
    }
    if c.rules.is_empty() {
        return Err("`rules` is empty".into());
    }
    if c.rules.len() > 64 {
        return Err("more than 64 referenced rules".into());
    }
    let timespan_ms = (c.timespan.seconds as i64).saturating_mul(1000);
    if timespan_ms <= 0 {
        return Err("`timespan` must be positive".into());
    }
    let (predicates, field, percentile, presence) = match &c.condition {
        CorrelationCondition::Threshold { predicates, field, percentile } => {
            (predicates.iter().map(|(op, v)| (*op, *v as f64)).collect::<Vec<_>>(), field.clone(), *percentile, None)
        }
        CorrelationCondition::Extended(expr) => (Vec::new(), None, None, Some(expr.clone())),
    };
    let kind = match c.correlation_type {
        CorrelationType::EventCount => Kind::EventCount,
        CorrelationType::ValueCount => Kind::ValueCount,
        CorrelationType::ValueSum => Kind::ValueSum,
        CorrelationType::ValueAvg => Kind::ValueAvg,
        CorrelationType::ValuePercentile => Kind::ValuePercentile(percentile.unwrap_or(50) as f64),
        CorrelationType::ValueMedian => Kind::ValuePercentile(50.0),
        CorrelationType::Temporal => Kind::Temporal(match &presence {
            Some(e) => Some(presence_of(e, &c.rules, refs)?),
            None => None,
        }),
        CorrelationType::TemporalOrdered => {
            if presence.is_some() {
                return Err("temporal_ordered takes no boolean condition: the order of `rules` is the condition".into());
            }
            Kind::TemporalOrdered
        }
    };
    let temporal = matches!(kind, Kind::Temporal(_) | Kind::TemporalOrdered);
    // The parser reads an absent temporal condition as `gte: 1`; for temporal rules that
    // means "all rules" (the specification's default), and temporal_ordered's condition is
    // always the full order.
    let predicates =
        if matches!(kind, Kind::TemporalOrdered) || (temporal && predicates == [(ConditionOperator::Gte, 1.0)]) {
            Vec::new()
        } else {
            predicates
        };
    if !temporal && presence.is_some() {
        return Err(format!("{} needs a threshold condition (gt, gte, lt, lte, eq)", kind.name()));
    }
    if !temporal && predicates.is_empty() {
        return Err(format!("{} needs a condition such as `gte: 5`", kind.name()));
    }
    let value_name = match (&kind, field.as_deref()) {
        (k, Some([f, ..])) if k.needs_value() => Some(f.clone()),
        (k, _) if k.needs_value() => return Err(format!("{} needs `condition.field`", k.name())),
        _ => None,
    };
    let mut inputs = Vec::new();
    for r in &c.rules {
        let Some(id) = refs.get(r.as_str()) else {
            return Err(format!("references `{r}`, which is no loaded rule (by id or name)"));
        };
        let chained = !detection_ids.contains(id.as_str());
        let field_for = |name: &str| -> Result<String, String> {
            match c.aliases.iter().find(|a| a.alias == name) {
                Some(a) => a
                    .mapping
                    .get(r)
                    .or_else(|| a.mapping.get(id))
                    .cloned()
                    .ok_or_else(|| format!("alias `{name}` names no field for rule `{r}`")),
                None => Ok(name.to_string()),
            }
        };
        let group_fields = c.group_by.iter().map(|g| field_for(g)).collect::<Result<Vec<_>, _>>()?;
        let value_field = value_name.as_deref().map(field_for).transpose()?;
        if chained {
            let j = corr_index[id];
            let upstream = &all[j].1;
            if group_fields != upstream.group_by {
                return Err(format!(
                    "references correlation `{r}` but groups by [{}] where it groups by [{}]: chained correlations must group by the same fields",
                    group_fields.join(", "),
                    upstream.group_by.join(", ")
                ));
            }
            if value_field.is_some() {
                return Err(format!(
                    "aggregates a value of correlation `{r}`, whose alerts carry only group-by values"
                ));
            }
        }
        inputs.push(Input { rule_id: id.clone(), group_fields, value_field, chained });
    }
    let level_name = c.level.map(|l| l.as_str().to_string()).unwrap_or_default();
    let id = c.id.clone().or_else(|| c.name.clone()).unwrap_or_else(|| c.title.clone());
    let condition = if predicates.is_empty() {
        match &presence {
            Some(_) => "boolean condition over rules".to_string(),
            None if matches!(kind, Kind::TemporalOrdered) => "all rules, in order".into(),
            None => "all rules".into(),
        }
    } else {
        predicates.iter().map(|(op, v)| format!("{} {v}", op_name(*op))).collect::<Vec<_>>().join(" and ")
    };
    // Canonical JSON (object keys sorted): a `Debug` rendering would follow hash-map order,
    // which differs between processes, and restored state would not find its rule.
    let canonical = serde_json::to_value(c).map(|v| v.to_string()).unwrap_or_else(|_| format!("{c:?}"));
    let fingerprint = xxhash_rust::xxh3::xxh3_64(canonical.as_bytes());
    Ok(Correlation {
        rule: Arc::new(AlertRule {
            id,
            title: c.title.clone(),
            level: level_name,
            status: c.status.map(|s| format!("{s:?}").to_lowercase()).unwrap_or_default(),
            tags: c.tags.clone(),
            techniques: attack_techniques(&c.tags),
        }),
        kind,
        group_by: c.group_by.clone(),
        inputs,
        timespan_ms,
        predicates,
        condition,
        generate: c.generate,
        level,
        fingerprint,
    })
}

fn presence_of(e: &ConditionExpr, rules: &[String], refs: &HashMap<String, String>) -> Result<Presence, String> {
    Ok(match e {
        ConditionExpr::And(xs) => {
            Presence::And(xs.iter().map(|x| presence_of(x, rules, refs)).collect::<Result<_, _>>()?)
        }
        ConditionExpr::Or(xs) => {
            Presence::Or(xs.iter().map(|x| presence_of(x, rules, refs)).collect::<Result<_, _>>()?)
        }
        ConditionExpr::Not(x) => Presence::Not(Box::new(presence_of(x, rules, refs)?)),
        ConditionExpr::Identifier(name) => {
            let target = refs.get(name.as_str());
            let slot = rules
                .iter()
                .position(|r| r == name || (target.is_some() && refs.get(r.as_str()) == target))
                .ok_or_else(|| format!("condition names `{name}`, which is not among `rules`"))?;
            Presence::Slot(slot as u8)
        }
        ConditionExpr::Selector { .. } => {
            return Err("`1 of`/`all of` in a temporal condition is not supported; name the rules".into())
        }
    })
}
