//! Windows events as shippers deliver them. SigmaHQ's regression records (EVTX-JSON exports)
//! are converted here into the Winlogbeat 8, NXLog (`im_msvistalog` + `to_json()`) and flat
//! Sigma shapes; with no `--pack`, `ward rules test` must pick the right pack per event and
//! raise exactly the same (rule, event) alerts in every shape as on the export itself.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::*;
use serde_json::{json, Map, Value};

/// Every record of every JSON regression sample, in a stable order.
fn regression_records() -> Vec<Value> {
    let mut files = Vec::new();
    let mut stack = vec![sigmahq_dir().join("regression_data")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().and_then(|e| e.to_str()) == Some("json") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in ward_engine::batch::split_json_documents(&text).unwrap() {
            out.push(serde_json::from_str(doc).unwrap());
        }
    }
    out
}

/// What every shape carries: the System fields and the event data (EventData, or UserData's
/// single element, as Winlogbeat flattens it).
struct Windows {
    time: String,
    event_id: i64,
    channel: String,
    provider: String,
    guid: Value,
    computer: String,
    record_id: Value,
    data: Map<String, Value>,
}

fn windows(record: &Value) -> Windows {
    let system = &record["Event"]["System"];
    let text = |v: &Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let mut data = Map::new();
    if let Some(d) = record["Event"]["EventData"].as_object() {
        data.extend(d.clone());
    }
    if let Some(u) = record["Event"]["UserData"].as_object() {
        for element in u.values().filter_map(Value::as_object) {
            data.extend(element.iter().filter(|(k, _)| !k.starts_with('#')).map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    Windows {
        time: text(&system["TimeCreated"]["#attributes"]["SystemTime"]),
        event_id: system["EventID"].as_i64().or_else(|| system["EventID"]["#text"].as_i64()).unwrap_or_default(),
        channel: text(&system["Channel"]),
        provider: text(&system["Provider"]["#attributes"]["Name"]),
        guid: system["Provider"]["#attributes"]["Guid"].clone(),
        computer: text(&system["Computer"]),
        record_id: system["EventRecordID"].clone(),
        data,
    }
}

/// Winlogbeat 8: ECS fields plus `winlog.*`, the event id as a string.
fn winlogbeat(w: &Windows) -> Value {
    json!({
        "@timestamp": w.time,
        "event": {"code": w.event_id.to_string(), "provider": w.provider, "kind": "event"},
        "host": {"name": w.computer},
        "agent": {"type": "winlogbeat", "version": "8.15.0"},
        "winlog": {
            "event_id": w.event_id.to_string(),
            "channel": w.channel,
            "provider_name": w.provider,
            "provider_guid": w.guid,
            "computer_name": w.computer,
            "record_id": w.record_id,
            "event_data": w.data,
        },
    })
}

/// NXLog `im_msvistalog` with `to_json()`: flat, NXLog's names, local time without a zone.
fn nxlog(w: &Windows) -> Value {
    let mut r = Map::new();
    let time = w.time.replace('T', " ");
    let time = time.split('.').next().unwrap().trim_end_matches('Z').to_string();
    r.insert("EventTime".into(), time.clone().into());
    r.insert("EventReceivedTime".into(), time.into());
    r.insert("Hostname".into(), w.computer.clone().into());
    r.insert("EventID".into(), w.event_id.into());
    r.insert("SourceName".into(), w.provider.clone().into());
    r.insert("ProviderGuid".into(), w.guid.clone());
    r.insert("Channel".into(), w.channel.clone().into());
    r.insert("RecordNumber".into(), w.record_id.clone());
    r.insert("Severity".into(), "INFO".into());
    r.insert("SeverityValue".into(), 2.into());
    r.insert("EventType".into(), "INFO".into());
    r.insert("SourceModuleName".into(), "eventlog".into());
    r.insert("SourceModuleType".into(), "im_msvistalog".into());
    // An event data field named like one of NXLog's (Sysmon's EventType) holds the event's value.
    r.extend(w.data.clone());
    Value::Object(r)
}

/// The flat Sigma convention (evtx tools, Hayabusa, Chainsaw, THOR).
fn flat(w: &Windows) -> Value {
    let mut r = Map::new();
    r.insert("EventID".into(), w.event_id.into());
    r.insert("Channel".into(), w.channel.clone().into());
    r.insert("Provider_Name".into(), w.provider.clone().into());
    r.insert("Computer".into(), w.computer.clone().into());
    r.insert("EventRecordID".into(), w.record_id.clone());
    r.insert("TimeCreated".into(), w.time.clone().into());
    for (k, v) in &w.data {
        r.entry(k.clone()).or_insert_with(|| v.clone());
    }
    Value::Object(r)
}

/// (rule id, event index) of every alert `ward rules test` raises on `lines`.
fn alerts(dir: &std::path::Path, name: &str, lines: &[Value]) -> BTreeSet<(String, u64)> {
    let text: Vec<String> = lines.iter().map(|v| v.to_string()).collect();
    let events = write(dir, name, &text.join("\n"));
    let rules: Vec<PathBuf> =
        ["rules", "rules-emerging-threats", "rules-threat-hunting"].iter().map(|d| sigmahq_dir().join(d)).collect();
    let mut args: Vec<String> = vec!["rules".into(), "test".into()];
    args.extend(rules.iter().map(|d| d.to_string_lossy().into_owned()));
    args.extend(["--events".into(), events]);
    let r = ward(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|a| (a["rule"]["id"].as_str().unwrap().to_string(), a["event_index"].as_u64().unwrap()))
        .collect()
}

#[test]
fn regression_records_raise_the_same_alerts_in_every_shippers_shape() {
    let records = regression_records();
    assert!(records.len() >= 40, "regression records: {}", records.len());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exported = alerts(dir, "evtx.jsonl", &records);
    assert!(exported.len() >= records.len() / 2, "the exports raise their rules: {}", exported.len());
    let converted: Vec<Windows> = records.iter().map(windows).collect();
    for (shape, convert) in [("winlogbeat", winlogbeat as fn(&Windows) -> Value), ("nxlog", nxlog), ("flat", flat)] {
        let lines: Vec<Value> = converted.iter().map(convert).collect();
        let got = alerts(dir, &format!("{shape}.jsonl"), &lines);
        let missing: Vec<_> = exported.difference(&got).take(10).collect();
        let extra: Vec<_> = got.difference(&exported).take(10).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{shape}: {} alerts of the export missing (first: {missing:?}), {} more (first: {extra:?})",
            exported.difference(&got).count(),
            got.difference(&exported).count()
        );
    }
}

/// The generator's Windows events in every shape (`windows_shape`) raise the same alerts, at
/// the same positions, through the pipeline with every built-in pack, and normalize to the
/// same core fields.
#[test]
fn generator_events_raise_the_same_alerts_in_every_windows_shape() {
    let run = |shape: &str| {
        let dir = tempfile::tempdir().unwrap();
        let rules = repo().join("rules/sigma/ward");
        let spec = write(
            dir.path(),
            "spec.yaml",
            &format!(
                r#"name: shapes
settings: {{admin_listen: ""}}
sources:
  - {{id: gen, type: generator, count: 6000, seed: 3, windows_shape: {shape}}}
operators:
  - {{id: parse, type: parse, inputs: [gen], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse], packs: [builtin:windows, builtin:winlogbeat, builtin:nxlog, builtin:windows-flat, builtin:linux-auth, builtin:zeek, builtin:fortigate, builtin:generic-json]}}
  - {{id: detect, type: sigma-match, inputs: [normalize], rules: ["{rules}"], watch: false}}
sinks:
  - {{id: alerts, type: jsonl, inputs: [detect], path: alerts.jsonl}}
  - {{id: events, type: jsonl, inputs: [normalize], path: events.jsonl}}
  - {{id: q, type: jsonl, inputs: [quarantine], path: q.jsonl}}
"#,
                rules = rules.display()
            ),
        );
        let r = ward(&["run", &spec, "-q"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let alerts: BTreeSet<(String, u64)> = sorted_lines(&dir.path().join("alerts.jsonl"))
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|a| (a["rule"]["id"].as_str().unwrap().to_string(), a["origin"]["offset"].as_u64().unwrap()))
            .collect();
        // Core fields of the Windows events (the extension map differs only in shippers' extras).
        let core: BTreeSet<String> = sorted_lines(&dir.path().join("events.jsonl"))
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["event.module"] == "windows")
            .map(|mut e| {
                e.as_object_mut().unwrap().retain(|k, _| k != "ext" && !k.starts_with("ward."));
                e.to_string()
            })
            .collect();
        (alerts, core)
    };
    let (alerts, core) = run("evtx-json");
    assert!(alerts.len() >= 5, "{alerts:?}");
    assert!(core.len() > 1000, "{}", core.len());
    for shape in ["winlogbeat", "nxlog", "flat"] {
        let (a, c) = run(shape);
        assert_eq!(a, alerts, "{shape}: alerts");
        let differ: Vec<_> = c.symmetric_difference(&core).take(2).collect();
        assert!(differ.is_empty(), "{shape}: core fields differ: {differ:?}");
    }
}
