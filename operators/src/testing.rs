//! Fixtures shared by the operators' unit tests.

use ward_engine::alert::{priority_for_level, Alert, AlertOrigin, AlertRule};

/// An alert of rule `rule` (its title too) at `level`, with event time `t`, id `id` as 32 hex
/// digits and source offset `id`; no event, no fields.
pub fn alert(id: u64, rule: &str, level: &str, t: i64) -> Alert {
    Alert {
        alert_id: format!("{id:032x}"),
        rule: AlertRule {
            id: rule.into(),
            title: rule.into(),
            level: level.into(),
            status: String::new(),
            tags: vec![],
            techniques: vec![],
        }
        .into(),
        priority: priority_for_level(level),
        ruleset_version: "v".into(),
        detector: "detect".into(),
        matches: vec![],
        event_id: None,
        event_time_ms: Some(t),
        origin: AlertOrigin { source: "s".into(), partition: "p".into(), offset: id },
        event: None,
        fields: vec![],
        correlation: None,
        suppression: None,
    }
}
