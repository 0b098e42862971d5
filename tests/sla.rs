//! Cases and SLA timers through the `ward` binary: alerts from sigma-match open cases per host,
//! acknowledgements and containment arrive on their own file source, and the case records are
//! the same for 1, 2 and 4 workers.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

fn security(event_id: u32, t: &str, record: u64, computer: &str) -> String {
    let data = r#""TargetUserName":"Administrators","MemberName":"CN=eve","SubjectUserName":"eve""#;
    security_event(event_id, t, record, computer, data)
}

fn spec(dir: &Path) {
    write(
        dir,
        "spec.yaml",
        r#"name: sla
settings: {epoch_interval_ms: 50, batch_size: 2, admin_listen: ""}
sources:
  - {id: logs, type: file, path: logs.jsonl}
  - {id: acks, type: file, path: acks.jsonl}
operators:
  - {id: parse, type: parse, inputs: [logs], format: json}
  - {id: normalize, type: normalize, inputs: [parse], packs: ["builtin:windows"]}
  - {id: detect, type: sigma-match, inputs: [normalize], rules: [rules.yml], watch: false}
  - {id: parse_acks, type: parse, inputs: [acks], format: json}
  - {id: normalize_acks, type: normalize, inputs: [parse_acks], packs: ["builtin:generic-json"]}
  - {id: sla, type: sla, inputs: [detect, normalize_acks], entity: [host.name]}
sinks:
  - {id: cases, type: jsonl, inputs: [sla], path: cases.jsonl}
  - {id: q, type: jsonl, inputs: [quarantine], path: q.jsonl}
"#,
    );
}

/// Runs the spec; returns the case records and the quarantine reasons.
fn run(dir: &Path, workers: &str) -> (Vec<serde_json::Value>, Vec<String>) {
    let r = ward(&["run", dir.join("spec.yaml").to_str().unwrap(), "--workers", workers, "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let read = |name: &str| -> Vec<serde_json::Value> {
        let v = std::fs::read_to_string(dir.join(name))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let _ = std::fs::remove_file(dir.join(name));
        v
    };
    let q = read("q.jsonl").iter().map(|v| v["reason"].as_str().unwrap().to_string()).collect();
    (read("cases.jsonl"), q)
}

/// `host kind sla hh:mm tta ttc` per record, sorted.
fn summary(cases: &[serde_json::Value]) -> Vec<String> {
    let mut v: Vec<String> = cases
        .iter()
        .map(|c| {
            let t = chrono::DateTime::from_timestamp_millis(c["time_ms"].as_i64().unwrap()).unwrap();
            format!(
                "{} {} {} {} {} {} {}",
                c["entity"][0][1].as_str().unwrap(),
                c["priority"].as_str().unwrap(),
                c["kind"].as_str().unwrap(),
                c["sla"].as_str().unwrap_or("-"),
                t.format("%d %H:%M"),
                c["tta_ms"].as_i64().map_or("-".into(), |ms| format!("tta={}m", ms / 60_000)),
                c["ttc_ms"].as_i64().map_or("-".into(), |ms| format!("ttc={}m", ms / 60_000)),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn cases_open_from_alerts_and_acknowledgements_meet_or_miss_their_deadlines() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "rules.yml", &windows_rules("critical"));
    // a and c: critical alerts (P2: acknowledge within 1 h); b: a low one (P3: 4 h), joined by a
    // second alert 10 minutes later.
    let logs = [
        security(4732, "2026-03-01T09:00:00.000Z", 1, "a"),
        security(4625, "2026-03-01T09:00:00.000Z", 2, "b"),
        security(4732, "2026-03-01T09:00:00.000Z", 3, "c"),
        security(4625, "2026-03-01T09:10:00.000Z", 4, "b"),
    ];
    write(dir.path(), "logs.jsonl", &logs.join("\n"));
    write(dir.path(), "acks.jsonl", "");
    spec(dir.path());

    // Without acknowledgements, the cases' ids (and every deadline passing at the end of input).
    let (cases, q) = run(dir.path(), "1");
    assert!(q.is_empty(), "{q:?}");
    let ids: BTreeMap<String, String> = cases
        .iter()
        .filter(|c| c["kind"] == "case.opened")
        .map(|c| (c["entity"][0][1].as_str().unwrap().to_string(), c["case_id"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(ids.len(), 3, "{cases:#?}");
    let never = summary(&cases);
    assert!(never.contains(&"b P3 case.joined - 01 09:10 - -".to_string()), "{never:#?}");
    assert!(never.contains(&"a P2 sla.breached acknowledge 01 10:00 - -".to_string()), "{never:#?}");
    assert!(never.contains(&"b P3 sla.warning acknowledge 01 12:12 - -".to_string()), "{never:#?}");

    // a: acknowledged after 30 min and contained after 1 h; c: acknowledged 90 min late;
    // an update for a case that does not exist.
    let ack = |t: &str, id: &str, action: &str| {
        format!(r#"{{"@timestamp":"2026-03-01T{t}:00Z","case":{{"id":"{id}","action":"{action}"}}}}"#)
    };
    let acks = [
        ack("09:30", &ids["a"], "acknowledged"),
        ack("10:00", &ids["a"], "contained"),
        ack("10:30", &ids["c"], "acknowledged"),
        ack("10:31", "0123456789abcdef-01234567", "acknowledged"),
    ];
    write(dir.path(), "acks.jsonl", &acks.join("\n"));
    let (cases, q) = run(dir.path(), "1");
    assert_eq!(q, vec!["unknown_case"]);
    let got = summary(&cases);
    let expected = [
        "a P2 case.acknowledged acknowledge 01 09:30 tta=30m -",
        "a P2 case.contained contain 01 10:00 tta=30m ttc=60m",
        "a P2 case.opened - 01 09:00 - -",
        "a P2 sla.met acknowledge 01 09:30 tta=30m -",
        "a P2 sla.met contain 01 10:00 tta=30m ttc=60m",
        "b P3 case.joined - 01 09:10 - -",
        "b P3 case.opened - 01 09:00 - -",
        "b P3 sla.breached acknowledge 01 13:00 - -",
        "b P3 sla.breached contain 04 09:00 - -",
        "b P3 sla.warning acknowledge 01 12:12 - -",
        "b P3 sla.warning contain 03 18:36 - -",
        "c P2 case.acknowledged acknowledge 01 10:30 tta=90m -",
        "c P2 case.opened - 01 09:00 - -",
        "c P2 sla.breached acknowledge 01 10:00 - -",
        "c P2 sla.breached contain 02 09:00 tta=90m -",
        "c P2 sla.warning acknowledge 01 09:48 - -",
        "c P2 sla.warning contain 02 04:12 tta=90m -",
    ];
    assert_eq!(got, expected, "{got:#?}");
    for workers in ["2", "4"] {
        let (cases, q) = run(dir.path(), workers);
        assert_eq!(summary(&cases), got, "{workers} workers");
        assert_eq!(q, vec!["unknown_case"]);
    }
}
