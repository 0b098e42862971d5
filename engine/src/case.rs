//! Case and SLA records: what the `sla` operator emits when alerts open or join cases and
//! when their acknowledge/contain deadlines are warned about, breached or met.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum CaseEventKind {
    #[serde(rename = "case.opened")]
    Opened,
    #[serde(rename = "case.joined")]
    Joined,
    #[serde(rename = "case.acknowledged")]
    Acknowledged,
    #[serde(rename = "case.contained")]
    Contained,
    #[serde(rename = "sla.warning")]
    Warning,
    #[serde(rename = "sla.breached")]
    Breached,
    #[serde(rename = "sla.met")]
    Met,
}

impl CaseEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CaseEventKind::Opened => "case.opened",
            CaseEventKind::Joined => "case.joined",
            CaseEventKind::Acknowledged => "case.acknowledged",
            CaseEventKind::Contained => "case.contained",
            CaseEventKind::Warning => "sla.warning",
            CaseEventKind::Breached => "sla.breached",
            CaseEventKind::Met => "sla.met",
        }
    }
}

/// Which SLA clock a record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum SlaKind {
    /// Time to acknowledge.
    Acknowledge,
    /// Time to contain.
    Contain,
}

impl SlaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SlaKind::Acknowledge => "acknowledge",
            SlaKind::Contain => "contain",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaseRecord {
    pub kind: CaseEventKind,
    /// Deterministic: derived from the entity key and the opening alert.
    pub case_id: String,
    /// P1, P2 or P3.
    pub priority: String,
    /// The priority score the priority came from (see the `sla` operator).
    pub score: f64,
    /// The entity key values that group alerts into this case.
    pub entity: Vec<(String, String)>,
    /// Event time the case opened (its first alert).
    pub opened_ms: i64,
    /// Event time of this record: the alert, the acknowledgement, or the deadline reached.
    pub time_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<SlaKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
    /// Time to acknowledge, once acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tta_ms: Option<i64>,
    /// Time to contain, once contained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttc_ms: Option<i64>,
    /// The alert that opened or joined the case (for `case.*` records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    /// Number of alerts in the case so far.
    pub alerts: u64,
}

impl CaseRecord {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}
