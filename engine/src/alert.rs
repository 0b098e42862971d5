//! Detection alerts: the typed stream that sigma-match and correlate emit and the
//! alert sinks accept. An alert is self-contained: it names the rule, the rule-set version, what
//! matched, and where the event came from, so it can be traced back without the rule files.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// An alert's copy of its event as JSON text, rendered once from the batch
/// ([`crate::batch::EventBatch::write_row_json`]) and shared by every alert of that event
/// (cloning is a reference count): sinks write it as it is, and only a lookup by field name
/// reads into it. (Alerts are only ever serialized as JSON: sinks, exchanges between processes
/// and operator state.)
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventJson(Arc<RawValue>);

impl EventJson {
    /// Row `row` of `batch`, as [`crate::batch::EventBatch::row_to_json`] gives it.
    pub fn of_row(batch: &crate::batch::EventBatch, row: usize) -> EventJson {
        thread_local! {
            // Written into, then copied out at its exact size (a growing vector reallocates,
            // and boxing it shrinks it once more); the shared `Arc` is one more copy.
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            batch.write_row_json(row, scratch);
            // The writer emits one valid JSON object in UTF-8.
            let text = match std::str::from_utf8(scratch) {
                Ok(text) => text.to_owned(),
                Err(_) => String::from_utf8_lossy(scratch).into_owned(),
            };
            if scratch.capacity() > 1 << 20 {
                *scratch = Vec::new();
            }
            EventJson(RawValue::from_string(text).unwrap_or_else(|_| Self::empty_object()).into())
        })
    }

    pub fn from_value(value: &serde_json::Value) -> EventJson {
        EventJson(serde_json::value::to_raw_value(value).unwrap_or_else(|_| Self::empty_object()).into())
    }

    fn empty_object() -> Box<RawValue> {
        RawValue::from_string("{}".into()).expect("valid JSON")
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.as_str()).unwrap_or(serde_json::Value::Null)
    }

    /// Field `name` of the event (a core field by dotted name, else an extension field), as
    /// [`Alert::field`] gives it; None when absent or null.
    fn field(&self, name: &str) -> Option<Cow<'_, str>> {
        // One walk over the event, and one over its extension fields if the name is not a
        // member of the event itself.
        let raw = match member_or_ext(self.as_str(), name) {
            Ok(raw) => raw,
            Err(ext) => member_or_ext(ext?.get(), name).ok()?,
        };
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'"') if !text.contains('\\') => Some(Cow::Borrowed(&text[1..text.len() - 1])),
            Some(b'"') => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
            Some(b'n') => None,
            _ => Some(Cow::Borrowed(text)),
        }
    }
}

impl PartialEq for EventJson {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// The raw value of member `name` of the JSON object `text` (its first; the writer never
/// repeats a key), read without building anything and no further than that member; failing
/// that, the raw value of its member `ext` (the extension fields), met on the same walk.
fn member_or_ext<'a>(text: &'a str, name: &str) -> Result<&'a RawValue, Option<&'a RawValue>> {
    use serde::de::{DeserializeSeed, Error, IgnoredAny, MapAccess, Visitor};
    use std::cell::Cell;
    enum Which {
        Name,
        Ext,
        Other,
    }
    struct IsName<'n>(&'n str);
    impl<'de> DeserializeSeed<'de> for IsName<'_> {
        type Value = Which;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Which, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl<'de> Visitor<'de> for IsName<'_> {
        type Value = Which;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a key")
        }
        fn visit_str<E>(self, v: &str) -> Result<Which, E> {
            Ok(match v {
                v if v == self.0 => Which::Name,
                "ext" => Which::Ext,
                _ => Which::Other,
            })
        }
    }
    struct Find<'n, 'c, 'de> {
        name: &'n str,
        found: &'c Cell<Option<&'de RawValue>>,
        ext: &'c Cell<Option<&'de RawValue>>,
    }
    impl<'de> Visitor<'de> for Find<'_, '_, 'de> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
            while let Some(which) = map.next_key_seed(IsName(self.name))? {
                match which {
                    Which::Name => {
                        self.found.set(Some(map.next_value::<&RawValue>()?));
                        // Stop reading here (the error only ends the walk).
                        return Err(M::Error::custom("found"));
                    }
                    Which::Ext if self.ext.get().is_none() => self.ext.set(Some(map.next_value::<&RawValue>()?)),
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(())
        }
    }
    let (found, ext) = (Cell::new(None), Cell::new(None));
    let mut de = serde_json::Deserializer::from_str(text);
    let _ = serde::Deserializer::deserialize_map(&mut de, Find { name, found: &found, ext: &ext });
    found.get().ok_or(ext.get())
}

/// The rule that raised an alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertRule {
    pub id: String,
    pub title: String,
    /// Sigma level: informational, low, medium, high, critical.
    pub level: String,
    pub status: String,
    pub tags: Vec<String>,
    /// ATT&CK technique ids from the tags (`attack.t1059.001` → `T1059.001`).
    pub techniques: Vec<String>,
}

/// A selection (named detection) that held for the event, with the field values it tested.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatchedSelection {
    pub selection: String,
    /// (Sigma field name, the event's value) for every field the selection tests that the
    /// event has.
    pub fields: Vec<(String, String)>,
}

/// Where the matched event came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertOrigin {
    pub source: String,
    pub partition: String,
    pub offset: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic: a hash of the rule id and the event's provenance, so a replay of the same
    /// input produces the same ids (sinks deduplicate on it).
    pub alert_id: String,
    /// Shared by every alert of the rule (alerts are cloned into several sinks and states).
    pub rule: Arc<AlertRule>,
    /// 1 (critical) … 5 (informational); see [`priority_for_level`].
    pub priority: u8,
    /// Content hash of the rule set that matched.
    pub ruleset_version: String,
    /// The component that raised the alert.
    pub detector: String,
    pub matches: Vec<MatchedSelection>,
    /// The event's `event.id`, when it has one.
    pub event_id: Option<String>,
    /// The event's `@timestamp` in milliseconds since the epoch, when it has one.
    pub event_time_ms: Option<i64>,
    pub origin: AlertOrigin,
    /// A copy of the normalized event (omitted when the detector is configured so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventJson>,
    /// Values of the fields correlation rules group or aggregate this rule's alerts by
    /// (Sigma field name, value); for correlation alerts, their group-by values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<(String, String)>,
    /// Set on alerts raised by a correlation rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<CorrelationInfo>,
    /// Set on alerts that stand for a suppressed series of equal alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppression: Option<Suppression>,
}

impl Alert {
    /// The alert without its event and matches: what a consumer that reads only the rule,
    /// ids, time, origin and `fields` (a correlation) needs across an exchange.
    pub fn summary(&self) -> Alert {
        Alert {
            alert_id: self.alert_id.clone(),
            rule: self.rule.clone(),
            priority: self.priority,
            ruleset_version: self.ruleset_version.clone(),
            detector: self.detector.clone(),
            matches: Vec::new(),
            event_id: self.event_id.clone(),
            event_time_ms: self.event_time_ms,
            origin: self.origin.clone(),
            event: None,
            fields: self.fields.clone(),
            correlation: self.correlation.clone(),
            suppression: self.suppression.clone(),
        }
    }

    /// The alert reduced to what `field` gives for `names` (kept in `fields`), without its
    /// event, matches or correlation details: what crosses an exchange to a consumer that
    /// reads a few fields (a view).
    pub fn projected(&self, names: &[String]) -> Alert {
        Alert {
            alert_id: self.alert_id.clone(),
            rule: self.rule.clone(),
            priority: self.priority,
            ruleset_version: String::new(),
            detector: self.detector.clone(),
            matches: Vec::new(),
            event_id: None,
            event_time_ms: self.event_time_ms,
            origin: self.origin.clone(),
            event: None,
            fields: names
                .iter()
                .filter(|n| !matches!(n.as_str(), "rule.id" | "rule.level" | "detector"))
                .filter_map(|n| {
                    let v = self.field(n);
                    (!v.is_empty()).then(|| (n.clone(), v.into_owned()))
                })
                .collect(),
            correlation: None,
            suppression: None,
        }
    }

    /// The value of a field of the alert, for keys and scores: `rule.id`, `rule.level`,
    /// `detector`, a correlation field, or a field of the alert's event (core by dotted name,
    /// then extension). Empty when absent; non-string values as their JSON text.
    pub fn field(&self, name: &str) -> Cow<'_, str> {
        match name {
            "rule.id" => Cow::Borrowed(&self.rule.id),
            "rule.level" => Cow::Borrowed(&self.rule.level),
            "detector" => Cow::Borrowed(&self.detector),
            _ => {
                if let Some((_, v)) = self.fields.iter().find(|(n, _)| n == name) {
                    return Cow::Borrowed(v);
                }
                self.event.as_ref().and_then(|e| e.field(name)).unwrap_or(Cow::Borrowed(""))
            }
        }
    }
}

/// What made a correlation rule fire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CorrelationInfo {
    /// `event_count`, `value_count`, `temporal`, `temporal_ordered`, `value_sum`, ...
    pub kind: String,
    /// (group-by field, value).
    pub group_by: Vec<(String, String)>,
    /// Event time of the earliest contributing alert and of the one that completed the window.
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// The aggregated value that met the condition (count, distinct count, sum, average,
    /// percentile, or number of distinct rules for temporal types).
    pub value: f64,
    /// The condition, e.g. `gte 5`.
    pub condition: String,
    /// Ids of the contributing alerts, in event-time order.
    pub contributing: Vec<String>,
}

/// A representative alert for a run of equal alerts collapsed by suppression.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Suppression {
    /// The suppression key (rendered).
    pub key: String,
    /// Alerts collapsed into this one, itself not included.
    pub suppressed: u64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// The event-time bucket `[start, end)` the alerts fell in.
    pub bucket_start_ms: i64,
    pub bucket_end_ms: i64,
}

/// Sigma level → priority: critical 1, high 2, medium 3, low 4, informational (or none) 5.
pub fn priority_for_level(level: &str) -> u8 {
    match level {
        "critical" => 1,
        "high" => 2,
        "medium" => 3,
        "low" => 4,
        _ => 5,
    }
}

/// ATT&CK technique ids from Sigma tags: `attack.t1059` and `attack.t1059.001` (any case).
pub fn attack_techniques(tags: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for t in tags {
        let Some(rest) = t.strip_prefix("attack.").or_else(|| t.strip_prefix("ATTACK.")) else { continue };
        let b = rest.as_bytes();
        let is_technique = b.len() >= 5
            && (b[0] == b't' || b[0] == b'T')
            && b[1..5].iter().all(u8::is_ascii_digit)
            && (b.len() == 5 || (b.len() == 9 && b[5] == b'.' && b[6..].iter().all(u8::is_ascii_digit)));
        if is_technique {
            let id = rest.to_ascii_uppercase();
            if !out.contains(&id) {
                out.push(id);
            }
        }
    }
    out
}

impl Alert {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn techniques_are_parsed_from_tags() {
        let tags: Vec<String> = ["attack.execution", "attack.t1059.001", "attack.T1027", "attack.t10", "cve.2021-1"]
            .map(String::from)
            .into();
        assert_eq!(attack_techniques(&tags), vec!["T1059.001", "T1027"]);
    }

    #[test]
    fn a_projected_alert_gives_the_same_fields_and_nothing_else() {
        let alert: Alert = serde_json::from_value(serde_json::json!({
            "alert_id": "a1", "priority": 3, "ruleset_version": "v", "detector": "d", "matches": [],
            "event_id": "e", "event_time_ms": 5,
            "rule": {"id": "r", "title": "t", "level": "high", "status": "test", "tags": [], "techniques": []},
            "origin": {"source": "s", "partition": "p", "offset": 7},
            "event": {"host.name": "web-1", "network.bytes": 42, "ext": {"session": "s1"}, "message": "long text"},
            "fields": [["TargetUserName", "bob"]],
        }))
        .unwrap();
        let names: Vec<String> =
            ["rule.id", "rule.level", "host.name", "network.bytes", "session", "TargetUserName", "absent"]
                .map(String::from)
                .into();
        let slim = alert.projected(&names);
        for n in &names {
            assert_eq!(slim.field(n), alert.field(n), "{n}");
        }
        assert!(slim.event.is_none() && slim.field("message").is_empty());
        assert_eq!((slim.event_time_ms, slim.origin.offset), (Some(5), 7));

        // A summary keeps everything but the event and matches.
        let mut summary = alert.summary();
        assert!(summary.event.is_none() && summary.matches.is_empty());
        summary.event = alert.event.clone();
        summary.matches = alert.matches.clone();
        assert_eq!(summary, alert);
    }

    #[test]
    fn event_fields_are_read_from_the_json_text() {
        let event = serde_json::json!({
            "host.name": "web-1",
            "user.name": "a \"quoted\" \\ name",
            "network.bytes": 12,
            "flag": true,
            "gone": null,
            "dns.answers": ["a", "b"],
            "ext": {"session": "s1", "host.name": "shadowed", "n": 1.5, "gone": "ext value"},
        });
        let e = EventJson::from_value(&event);
        assert_eq!(e.to_value(), event);
        let field = |name: &str| e.field(name).map(|c| c.into_owned());
        assert_eq!(field("host.name").as_deref(), Some("web-1"), "top level first");
        assert_eq!(field("user.name").as_deref(), Some("a \"quoted\" \\ name"), "escapes undone");
        assert_eq!(field("network.bytes").as_deref(), Some("12"));
        assert_eq!(field("flag").as_deref(), Some("true"));
        assert_eq!(field("dns.answers").as_deref(), Some(r#"["a","b"]"#));
        assert_eq!(field("session").as_deref(), Some("s1"), "then the extension fields");
        assert_eq!(field("n").as_deref(), Some("1.5"));
        assert_eq!(field("gone"), None, "a null is absent, as before");
        assert_eq!(field("absent"), None);
        // An alert serializes its event as the same JSON, and reads it back.
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(text, event.to_string());
        assert_eq!(serde_json::from_str::<EventJson>(&text).unwrap(), e);
    }

    #[test]
    fn priority_follows_level() {
        assert_eq!(priority_for_level("critical"), 1);
        assert_eq!(priority_for_level("medium"), 3);
        assert_eq!(priority_for_level(""), 5);
    }
}
