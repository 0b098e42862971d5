//! Sigma 1 aggregations, converted at load into their exact Sigma 2 form.
//!
//! A Sigma 1 rule `condition: selection | count(f) by g > N` with `detection.timeframe: T`
//! raises one alert when, within T, more than N matching events (or distinct values of `f`)
//! share a value of `g`. Sigma 2 says the same with a correlation rule over a detection rule:
//! the detection without the aggregation becomes a generated rule (id `<id>-events`), and the
//! rule's own id, title and level go to an `event_count` (`count()`), `value_count`
//! (`count(f)`: distinct values), `value_sum` (`sum(f)`) or `value_avg` (`avg(f)`) correlation
//! with `group-by: [g]`, `timespan: T` and the comparison as its condition; `generate: false`,
//! so only the correlation alerts, as the Sigma 1 rule did. `near`, `min`/`max` and aggregations
//! without a timeframe have no exact equivalent and are left to the parser, which rejects them
//! with the reason.

use std::sync::OnceLock;

use regex::Regex;
use yaml_serde::{Mapping, Value};

/// The file's text with every convertible document replaced by its two Sigma 2 documents, and
/// a note per rule id it touched (the generated detection rule and the correlation).
pub struct Converted {
    pub text: String,
    pub notes: Vec<(String, String)>,
}

/// Suffix of the id of a generated detection rule.
pub const EVENTS_SUFFIX: &str = "-events";

/// Keys of a rule's metadata the correlation keeps.
const METADATA: [&str; 10] =
    ["title", "status", "description", "references", "author", "date", "modified", "tags", "falsepositives", "level"];

/// The text to parse for a rule file: converted when it holds a convertible aggregation.
/// sigma-match and correlate both parse through this, so they see the same rules.
pub fn as_sigma2(text: &str) -> std::borrow::Cow<'_, str> {
    match convert(text) {
        Some(c) => std::borrow::Cow::Owned(c.text),
        None => std::borrow::Cow::Borrowed(text),
    }
}

/// `None` when the file holds no convertible aggregation (it is then parsed as it is).
pub fn convert(text: &str) -> Option<Converted> {
    if !text.contains("timeframe") || !text.contains('|') {
        return None;
    }
    use serde::Deserialize;
    let mut docs = Vec::new();
    for doc in yaml_serde::Deserializer::from_str(text) {
        // Anything the YAML reader refuses is the parser's to report.
        docs.push(Value::deserialize(doc).ok()?);
    }
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for doc in docs {
        match convert_rule(&doc) {
            Some((detection, correlation, rule_notes)) => {
                out.push(detection);
                out.push(correlation);
                notes.extend(rule_notes);
            }
            None => out.push(doc),
        }
    }
    if notes.is_empty() {
        return None;
    }
    let mut text = String::new();
    for doc in &out {
        text.push_str("---\n");
        text.push_str(&yaml_serde::to_string(doc).ok()?);
    }
    Some(Converted { text, notes })
}

/// An aggregation at the end of a condition: function, field, group-by field, operator, number.
fn aggregation() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^(count|sum|avg)\(\s*([\w.\-]*)\s*\)\s*(?:by\s+([\w.\-]+)\s*)?(>=|<=|==|=|>|<)\s*(\d+(?:\.\d+)?)$")
            .expect("valid regex")
    })
}

/// (generated detection rule, correlation rule, notes) for one rule document.
fn convert_rule(doc: &Value) -> Option<(Value, Value, Vec<(String, String)>)> {
    let rule = doc.as_mapping()?;
    let id = rule.get("id")?.as_str()?.to_string();
    let detection = rule.get("detection")?.as_mapping()?;
    let timeframe = detection.get("timeframe")?.as_str()?.to_string();
    let condition = detection.get("condition")?.as_str()?.trim().to_string();
    let (expr, agg) = condition.rsplit_once('|')?;
    let caps = aggregation().captures(agg.trim())?;
    let (function, field, group, op, number) =
        (&caps[1], caps.get(2).map_or("", |m| m.as_str()), caps.get(3).map(|m| m.as_str()), &caps[4], &caps[5]);
    let kind = match (function, field.is_empty()) {
        ("count", true) => "event_count",
        ("count", false) => "value_count",
        ("sum", false) => "value_sum",
        ("avg", false) => "value_avg",
        _ => return None,
    };
    let op = match op {
        ">" => "gt",
        ">=" => "gte",
        "<" => "lt",
        "<=" => "lte",
        _ => "eq",
    };
    let number: Value = match number.parse::<u64>() {
        Ok(n) => n.into(),
        Err(_) => number.parse::<f64>().ok()?.into(),
    };
    let events_id = format!("{id}{EVENTS_SUFFIX}");

    let mut generated = rule.clone();
    let mut generated_detection = detection.clone();
    generated_detection.remove("timeframe");
    generated_detection.insert("condition".into(), expr.trim().into());
    generated.insert("detection".into(), Value::Mapping(generated_detection));
    generated.insert("id".into(), events_id.clone().into());
    if let Some(title) = rule.get("title").and_then(Value::as_str) {
        generated.insert("title".into(), format!("{title} (events)").into());
    }

    let mut correlation = Mapping::new();
    for key in METADATA {
        if let Some(v) = rule.get(key) {
            correlation.insert(key.into(), v.clone());
        }
    }
    correlation.insert("id".into(), id.clone().into());
    let mut body = Mapping::new();
    body.insert("type".into(), kind.into());
    body.insert("rules".into(), Value::Sequence(vec![events_id.clone().into()]));
    if let Some(g) = group {
        body.insert("group-by".into(), Value::Sequence(vec![g.into()]));
    }
    body.insert("timespan".into(), timeframe.clone().into());
    let mut cond = Mapping::new();
    cond.insert(op.into(), number);
    if !field.is_empty() {
        cond.insert("field".into(), field.into());
    }
    body.insert("condition".into(), Value::Mapping(cond));
    body.insert("generate".into(), false.into());
    correlation.insert("correlation".into(), Value::Mapping(body));

    let aggregation = agg.trim();
    let notes = vec![
        (
            id.clone(),
            format!(
                "converted from the Sigma 1 aggregation `{aggregation}` (timeframe {timeframe}) into a {kind} \
                 correlation over the generated detection rule {events_id}"
            ),
        ),
        (
            events_id,
            format!(
                "generated from rule {id} (the detection without its Sigma 1 aggregation `{aggregation}`): its matches \
                 feed the {kind} correlation {id} and raise no alert of their own"
            ),
        ),
    ];
    Some((Value::Mapping(generated), Value::Mapping(correlation), notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: &str = "title: Failing logons\nid: r1\nlevel: medium\ntags: [attack.t1110]\n\
        logsource: {product: windows, service: security}\n\
        detection:\n  selection: {EventID: 4625}\n  filter: {ProcessName: '-'}\n  timeframe: 24h\n  \
        condition: selection and not filter | count(TargetUserName) by ProcessName > 10\n";

    #[test]
    fn count_by_becomes_a_value_count_correlation_over_a_generated_rule() {
        let c = convert(RULE).unwrap();
        let docs: Vec<Value> = {
            use serde::Deserialize;
            yaml_serde::Deserializer::from_str(&c.text).map(|d| Value::deserialize(d).unwrap()).collect()
        };
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["id"].as_str(), Some("r1-events"));
        assert_eq!(docs[0]["detection"]["condition"].as_str(), Some("selection and not filter"));
        assert!(docs[0]["detection"].get("timeframe").is_none());
        let corr = &docs[1]["correlation"];
        assert_eq!((docs[1]["id"].as_str(), docs[1]["level"].as_str()), (Some("r1"), Some("medium")));
        assert_eq!(corr["type"].as_str(), Some("value_count"));
        assert_eq!(corr["rules"][0].as_str(), Some("r1-events"));
        assert_eq!(corr["group-by"][0].as_str(), Some("ProcessName"));
        assert_eq!(corr["timespan"].as_str(), Some("24h"));
        assert_eq!(corr["condition"]["gt"].as_u64(), Some(10));
        assert_eq!(corr["condition"]["field"].as_str(), Some("TargetUserName"));
        assert_eq!(corr["generate"].as_bool(), Some(false));
        assert_eq!(c.notes.len(), 2);
        assert!(c.notes[0].1.contains("value_count correlation"), "{:?}", c.notes);
    }

    #[test]
    fn operators_functions_and_what_stays_unconverted() {
        let with =
            |cond: &str| RULE.replace("selection and not filter | count(TargetUserName) by ProcessName > 10", cond);
        let corr = |cond: &str| {
            let c = convert(&with(cond)).unwrap();
            let docs: Vec<Value> = {
                use serde::Deserialize;
                yaml_serde::Deserializer::from_str(&c.text).map(|d| Value::deserialize(d).unwrap()).collect()
            };
            docs[1]["correlation"].clone()
        };
        let c = corr("selection | count() > 5");
        assert_eq!((c["type"].as_str(), c["condition"]["gt"].as_u64()), (Some("event_count"), Some(5)));
        assert!(c.get("group-by").is_none());
        assert_eq!(corr("selection | count() by TaskName < 5")["condition"]["lt"].as_u64(), Some(5));
        assert_eq!(corr("selection | sum(bytes) by src_ip >= 300000")["type"].as_str(), Some("value_sum"));
        for unconverted in
            ["selection | near filter", "selection | max(bytes) by src_ip > 3", "selection and not filter"]
        {
            assert!(convert(&with(unconverted)).is_none(), "{unconverted}");
        }
        assert!(convert(&RULE.replace("  timeframe: 24h\n", "")).is_none(), "no window, no equivalent");
    }
}
