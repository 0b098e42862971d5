//! The SLA policy: deadlines per priority, the warning threshold and the priority score
//! (`rules/sla/default.yaml` is the built-in policy and documents the formula).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use ward_engine::alert::Alert;

/// The built-in policy.
pub const DEFAULT_POLICY: &str = include_str!("../../../rules/sla/default.yaml");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaPolicy {
    /// Fraction of a deadline at which `sla.warning` is emitted (0 < warning < 1).
    pub warning: f64,
    pub priorities: Priorities,
    pub score: ScoreWeights,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Priorities {
    #[serde(rename = "P1")]
    pub p1: Deadlines,
    #[serde(rename = "P2")]
    pub p2: Deadlines,
    #[serde(rename = "P3")]
    pub p3: Deadlines,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deadlines {
    /// Time to acknowledge, from the case opening.
    #[serde(with = "humantime_serde")]
    pub acknowledge: Duration,
    /// Time to contain, from the case opening.
    #[serde(with = "humantime_serde")]
    pub contain: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreWeights {
    /// Points per Sigma level (`rule.level`); a level not listed scores 0.
    pub severity: BTreeMap<String, f64>,
    /// Multiplier of the alert's `ward.asset.criticality`.
    pub asset_criticality: f64,
    /// Points when the alert's event matched threat intel (`threat.indicator.matched`).
    pub threat_intel: f64,
    /// Lowest score of a P1 case.
    pub p1: f64,
    /// Lowest score of a P2 case; lower is P3.
    pub p2: f64,
}

/// Case priority: 1, 2 or 3.
pub type Priority = u8;

pub fn priority_name(p: Priority) -> &'static str {
    match p {
        1 => "P1",
        2 => "P2",
        _ => "P3",
    }
}

/// The alert fields the priority score reads: the asset's criticality and a threat-intel match.
pub const ALERT_FIELDS: [&str; 2] = ["ward.asset.criticality", "threat.indicator.matched"];

impl SlaPolicy {
    /// Parses and checks a policy; `name` prefixes errors (serde's carry line and column).
    pub fn parse(name: &str, text: &str) -> anyhow::Result<SlaPolicy> {
        let policy: SlaPolicy = yaml_serde::from_str(text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        if !(policy.warning > 0.0 && policy.warning < 1.0) {
            anyhow::bail!("{name}: `warning` must be a fraction between 0 and 1, not {}", policy.warning);
        }
        for (p, d) in [("P1", &policy.priorities.p1), ("P2", &policy.priorities.p2), ("P3", &policy.priorities.p3)] {
            if d.acknowledge.is_zero() || d.contain.is_zero() {
                anyhow::bail!("{name}: {p}: deadlines must be positive");
            }
        }
        if policy.score.p1 < policy.score.p2 {
            anyhow::bail!("{name}: score threshold p1 ({}) is below p2 ({})", policy.score.p1, policy.score.p2);
        }
        Ok(policy)
    }

    pub fn builtin() -> SlaPolicy {
        SlaPolicy::parse("rules/sla/default.yaml", DEFAULT_POLICY).expect("the built-in SLA policy is valid")
    }

    /// The priority score of an alert (see `rules/sla/default.yaml`).
    /// Reads the alert fields [`ALERT_FIELDS`] besides the rule level.
    pub fn score(&self, alert: &Alert) -> f64 {
        let w = &self.score;
        let severity = w.severity.get(alert.rule.level.to_ascii_lowercase().as_str()).copied().unwrap_or(0.0);
        let criticality = alert.field(ALERT_FIELDS[0]).parse::<f64>().unwrap_or(0.0);
        let ti = if alert.field(ALERT_FIELDS[1]).is_empty() { 0.0 } else { w.threat_intel };
        severity + w.asset_criticality * criticality + ti
    }

    pub fn priority(&self, score: f64) -> Priority {
        if score >= self.score.p1 {
            1
        } else if score >= self.score.p2 {
            2
        } else {
            3
        }
    }

    pub fn deadlines(&self, p: Priority) -> &Deadlines {
        match p {
            1 => &self.priorities.p1,
            2 => &self.priorities.p2,
            _ => &self.priorities.p3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_policy_has_the_documented_defaults() {
        let p = SlaPolicy::builtin();
        assert_eq!(p.warning, 0.8);
        assert_eq!(p.deadlines(1).acknowledge, Duration::from_secs(15 * 60));
        assert_eq!(p.deadlines(2).acknowledge, Duration::from_secs(3600));
        assert_eq!(p.deadlines(3).acknowledge, Duration::from_secs(4 * 3600));
        assert_eq!((p.priority(80.0), p.priority(79.9), p.priority(50.0), p.priority(49.0)), (1, 2, 2, 3));
    }

    #[test]
    fn bad_policies_are_refused_with_a_location() {
        let err = SlaPolicy::parse("p.yaml", &DEFAULT_POLICY.replace("warning: 0.8", "warning: 1.5")).unwrap_err();
        assert!(err.to_string().contains("between 0 and 1"), "{err}");
        let err = SlaPolicy::parse("p.yaml", &DEFAULT_POLICY.replace("acknowledge: 15m", "acknowledge: soon"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("p.yaml: ") && err.contains("line"), "{err}");
        let err = SlaPolicy::parse("p.yaml", &DEFAULT_POLICY.replace("  P3:", "  P4:")).unwrap_err().to_string();
        assert!(err.contains("P4"), "{err}");
    }
}
