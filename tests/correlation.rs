//! Event time and correlation through the `ward` binary: `ward rules test` with correlation
//! rules, and running pipelines whose correlation output must not depend on the worker count,
//! the interleaving of the input within the lateness bound, late input or idle partitions.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;

fn security(event_id: u32, t: &str, record: u64, data: &str) -> String {
    security_event(event_id, t, record, "dc1.corp.local", data)
}

fn failed(t: &str, record: u64, user: &str) -> String {
    security(4625, t, record, &format!(r#""TargetUserName":"{user}","IpAddress":"10.0.0.9","LogonType":3"#))
}

fn group_add(t: &str, record: u64, user: &str) -> String {
    security(
        4732,
        t,
        record,
        &format!(r#""MemberName":"CN={user}","TargetUserName":"Administrators","SubjectUserName":"{user}""#),
    )
}

fn rules() -> String {
    windows_rules("medium") + CORRELATIONS
}

const CORRELATIONS: &str = r#"---
title: Brute Force
id: brute-force
name: brute_force
correlation:
  type: event_count
  rules: [failed-logon]
  group-by: [TargetUserName]
  timespan: 10m
  condition: {gte: 5}
level: high
---
title: Brute Force Then Admin Group Change
id: bf-then-admin
correlation:
  type: temporal_ordered
  rules: [brute_force, admin-add]
  group-by: [TargetUserName]
  aliases:
    TargetUserName: {brute_force: TargetUserName, admin-add: SubjectUserName}
  timespan: 15m
level: critical
"#;

fn ts(minute: u32, second: u32) -> String {
    format!("2026-03-01T09:{minute:02}:{second:02}.000Z")
}

/// Five failures for `svc` straddling 10:00 (09:58:30 … 10:00:30), a group change by `svc` at
/// 10:06; four failures for `bob` only. As lines, in time order.
fn scenario() -> Vec<String> {
    let mut v = Vec::new();
    let times = [(58, 30), (59, 0), (59, 30), (59, 50)];
    for (i, (m, s)) in times.iter().enumerate() {
        v.push(failed(&ts(*m, *s), i as u64 + 1, "svc"));
        v.push(failed(&ts(*m, *s + 1), i as u64 + 100, "bob"));
    }
    v.push(failed("2026-03-01T10:00:30.000Z", 5, "svc"));
    v.push(group_add("2026-03-01T10:06:00.000Z", 6, "svc"));
    v
}

#[test]
fn rules_test_evaluates_correlations_with_event_indices() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yml", &rules());
    let events = write(dir.path(), "events.jsonl", &scenario().join("\n"));
    let r = ward(&["rules", "test", &rules, "--events", &events, "--pack", "windows"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<serde_json::Value> = r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |id: &str| lines.iter().filter(|l| l["rule"]["id"] == id).cloned().collect::<Vec<_>>();
    assert_eq!(of("failed-logon").len(), 9);
    let bf = of("brute-force");
    assert_eq!(bf.len(), 1, "{}", r.stdout);
    assert_eq!(bf[0]["group_by"]["TargetUserName"], "svc");
    assert_eq!(bf[0]["event_index"], serde_json::json!([0, 2, 4, 6, 8]));
    assert_eq!(bf[0]["window"]["start"], "2026-03-01T09:58:30.000Z");
    assert_eq!(bf[0]["window"]["end"], "2026-03-01T10:00:30.000Z");
    assert_eq!(bf[0]["value"], 5.0);
    let seq = of("bf-then-admin");
    assert_eq!(seq.len(), 1, "{}", r.stdout);
    assert_eq!(seq[0]["event_index"], serde_json::json!([0, 2, 4, 6, 8, 9]));
    assert!(r.stderr.contains("2 correlation alerts"), "{}", r.stderr);

    // Expectations cover correlation rules too.
    let expect = write(
        dir.path(),
        "expect.yml",
        "failed-logon: [0, 1, 2, 3, 4, 5, 6, 7, 8]\nadmin-add: [9]\nbrute-force: [0, 2, 4, 6, 8]\nbf-then-admin: [0, 2, 4, 6, 8, 9]\n",
    );
    let r = ward(&["rules", "test", &rules, "--events", &events, "--pack", "windows", "--expect", &expect]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

fn spec(dir: &Path, files: &str, out: &str) -> String {
    write(
        dir,
        "spec.yaml",
        &format!(
            r#"name: corr
settings: {{epoch_interval_ms: 50, batch_size: 3, admin_listen: ""}}
sources:
  - id: logs
    type: file
    path: "{files}"
    event_time: {{max_out_of_orderness: 2m, idle_timeout: 30s}}
operators:
  - {{id: parse, type: parse, inputs: [logs], format: json}}
  - {{id: normalize, type: normalize, inputs: [parse], packs: ["builtin:windows"]}}
  # Windows events carry no event id of their own (normalize derives one from provenance), so
  # copies are recognised by computer and record number.
  - {{id: dedup, type: dedup, inputs: [normalize], key: [host.name, Event.System.EventRecordID]}}
  - {{id: detect, type: sigma-match, inputs: [dedup], rules: [rules.yml], watch: false, include_event: false}}
  - {{id: correlate, type: correlate, inputs: [detect], rules: [rules.yml], watch: false}}
sinks:
  - {{id: alerts, type: jsonl, inputs: [correlate], path: "{out}"}}
  - {{id: q, type: jsonl, inputs: [quarantine], path: q.jsonl}}
"#
        ),
    )
}

/// Runs the spec and returns (sorted alert lines, quarantine reasons).
fn run(dir: &Path, workers: &str) -> (Vec<String>, Vec<String>) {
    run_as(dir, workers, |v| format!("{} {} {}", v["rule"]["id"], v["alert_id"], v["correlation"]))
}

/// What a correlation alert says, without ids (which hash the input's provenance).
fn content(v: &serde_json::Value) -> String {
    let c = &v["correlation"];
    format!(
        "{} {} {}..{} value {} from {}",
        v["rule"]["id"],
        c["group_by"],
        c["window_start_ms"],
        c["window_end_ms"],
        c["value"],
        c["contributing"].as_array().map_or(0, |a| a.len())
    )
}

fn run_as(dir: &Path, workers: &str, render: fn(&serde_json::Value) -> String) -> (Vec<String>, Vec<String>) {
    let spec_path = dir.join("spec.yaml");
    let r = ward(&["run", spec_path.to_str().unwrap(), "--workers", workers, "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut alerts: Vec<String> = std::fs::read_to_string(dir.join("alerts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| render(&serde_json::from_str(l).unwrap()))
        .collect();
    alerts.sort();
    let q: Vec<String> = std::fs::read_to_string(dir.join("q.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"].as_str().unwrap().to_string())
        .collect();
    let _ = std::fs::remove_file(dir.join("alerts.jsonl"));
    let _ = std::fs::remove_file(dir.join("q.jsonl"));
    (alerts, q)
}

/// Many users across three files (partitions); each user with 4–7 failures, some followed by
/// a group change. Returns the lines per file.
fn corpus() -> Vec<Vec<String>> {
    let mut files = vec![Vec::new(), Vec::new(), Vec::new()];
    let mut record = 0;
    for u in 0..30u32 {
        let user = format!("user{u}");
        let base = u * 20; // seconds
        for i in 0..(4 + u % 4) {
            record += 1;
            let s = base + i * 40;
            let t = format!("2026-03-01T09:{:02}:{:02}.000Z", s / 60, s % 60);
            files[(u + i) as usize % 3].push(failed(&t, record, &user));
        }
        if u % 2 == 0 {
            record += 1;
            let s = base + 300;
            let t = format!("2026-03-01T09:{:02}:{:02}.000Z", s / 60, s % 60);
            files[u as usize % 3].push(group_add(&t, record, &user));
        }
    }
    for f in &mut files {
        f.sort_by_key(|l| l[l.find("SystemTime").unwrap()..].to_string());
    }
    files
}

#[test]
fn pipeline_correlation_is_the_same_for_any_worker_count_and_interleaving() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "rules.yml", &rules());
    let files = corpus();
    for (i, f) in files.iter().enumerate() {
        write(dir.path(), &format!("part{i}.jsonl"), &f.join("\n"));
    }
    spec(dir.path(), "part*.jsonl", "alerts.jsonl");
    let (one, q) = run(dir.path(), "1");
    assert!(q.is_empty(), "{q:?}");
    let bf = one.iter().filter(|l| l.starts_with("\"brute-force\"")).count();
    let seq = one.iter().filter(|l| l.starts_with("\"bf-then-admin\"")).count();
    // Users u ≡ 2 (mod 4) have 6 failures and a group change: 7 sequences. Brute-force alerts
    // only feed the sequence (no `generate`), so they are absorbed.
    assert_eq!((bf, seq), (0, 7), "{one:#?}");
    assert_eq!(run(dir.path(), "2").0, one, "2 workers");
    assert_eq!(run(dir.path(), "4").0, one, "4 workers");
    // Epochs of a millisecond: records and watermark marks of a route stage land in many
    // epochs, so a mark sent at an earlier epoch than records routed before it would let the
    // watermark overtake them (a race this once lost).
    let fast = std::fs::read_to_string(dir.path().join("spec.yaml"))
        .unwrap()
        .replace("epoch_interval_ms: 50", "epoch_interval_ms: 1");
    write(dir.path(), "spec.yaml", &fast);
    for _ in 0..3 {
        assert_eq!(run(dir.path(), "4").0, one, "4 workers, 1 ms epochs");
    }
    spec(dir.path(), "part*.jsonl", "alerts.jsonl");
    let one_content = run_as(dir.path(), "1", content).0;

    // The same events, shuffled within each partition by up to a minute (inside the 2-minute
    // bound), and with every record duplicated (dedup removes the copies). Positions in the
    // files change, and with them the provenance-based alert ids: the content must not.
    for (i, f) in files.iter().enumerate() {
        let mut lines: Vec<String> = Vec::new();
        for chunk in f.chunks(3) {
            let mut c = chunk.to_vec();
            c.reverse();
            lines.extend(c.iter().cloned());
        }
        let doubled: Vec<String> = lines.iter().flat_map(|l| [l.clone(), l.clone()]).collect();
        write(dir.path(), &format!("part{i}.jsonl"), &doubled.join("\n"));
    }
    let (shuffled, q) = run_as(dir.path(), "2", content);
    assert!(q.is_empty(), "{q:?}");
    assert_eq!(shuffled, one_content, "different interleaving within the lateness bound");
}

#[test]
fn late_records_are_quarantined_and_an_idle_partition_does_not_hold_back_forever() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "rules.yml", &rules());
    let mut lines = scenario();
    // 20 minutes later, then a record 5 minutes behind that: beyond the 2-minute bound.
    lines.push(failed("2026-03-01T10:26:00.000Z", 50, "carol"));
    lines.push(failed("2026-03-01T10:21:00.000Z", 51, "carol"));
    write(dir.path(), "part0.jsonl", &lines.join("\n"));
    // A second partition with one old event only: it holds the watermark while it is active,
    // and the end of input closes everything anyway.
    write(dir.path(), "part1.jsonl", &failed("2026-03-01T09:00:00.000Z", 60, "dave"));
    spec(dir.path(), "part*.jsonl", "alerts.jsonl");
    let (alerts, q) = run(dir.path(), "1");
    assert_eq!(q, vec!["late_event".to_string()], "one late record");
    let rules: BTreeSet<String> = alerts.iter().map(|l| l.split(' ').next().unwrap().to_string()).collect();
    assert!(rules.contains("\"bf-then-admin\""), "{alerts:#?}");
}

/// The brute-force rule above in Sigma 1 form: an aggregation with a timeframe.
const SIGMA1_BRUTE_FORCE: &str = "title: Brute Force (Sigma 1)\nid: bf-sigma1\nlevel: high\n\
    logsource: {product: windows, service: security}\n\
    detection:\n  selection: {EventID: 4625}\n  timeframe: 10m\n  \
    condition: selection | count() by TargetUserName >= 5\n";

/// A Sigma 1 aggregation (`| count() by … >= N` with `timeframe`) loads as its Sigma 2
/// equivalent: the same alert as the hand-written event_count correlation, under the Sigma 1
/// rule's id, and `rules explain` / `rules check` say what was converted.
#[test]
fn sigma1_count_by_with_timeframe_fires_like_its_correlation() {
    let dir = tempfile::tempdir().unwrap();
    let sigma1 = SIGMA1_BRUTE_FORCE;
    let rules = write(dir.path(), "rules.yml", &(rules() + "---\n" + sigma1));
    let events = write(dir.path(), "events.jsonl", &scenario().join("\n"));
    let r = ward(&["rules", "test", &rules, "--events", &events, "--pack", "windows"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<serde_json::Value> = r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |id: &str| lines.iter().filter(|l| l["rule"]["id"] == id).cloned().collect::<Vec<_>>();
    let (converted, written) = (of("bf-sigma1"), of("brute-force"));
    assert_eq!(converted.len(), 1, "{}", r.stdout);
    for k in ["group_by", "event_index", "window", "value"] {
        assert_eq!(converted[0][k], written[0][k], "{k}");
    }
    assert_eq!(converted[0]["rule"]["title"], "Brute Force (Sigma 1)");

    let sigma1_file = write(dir.path(), "sigma1.yml", sigma1);
    let explain = ward(&["rules", "explain", &sigma1_file]);
    assert_eq!(explain.code, 0, "{}", explain.stderr);
    assert!(
        explain.stdout.contains("rule      Brute Force (Sigma 1) (events) (bf-sigma1-events)"),
        "{}",
        explain.stdout
    );
    assert!(explain.stdout.contains("feed the event_count correlation bf-sigma1"), "{}", explain.stdout);
    let check = ward(&["rules", "check", "--json", &sigma1_file]);
    let report: serde_json::Value = serde_json::from_str(&check.stdout).unwrap();
    assert_eq!((report["compiled"].as_u64(), report["correlations"].as_u64()), (Some(1), Some(1)), "{report}");
    assert!(report["notes"]
        .to_string()
        .contains("converted from the Sigma 1 aggregation `count() by TargetUserName >= 5`"));
}

/// In a running pipeline the converted Sigma 1 rule raises its correlation alert from the
/// correlate operator, and the generated detection rule's own matches are absorbed.
#[test]
fn pipeline_runs_a_converted_sigma1_aggregation() {
    let dir = tempfile::tempdir().unwrap();
    let sigma1 = SIGMA1_BRUTE_FORCE;
    write(dir.path(), "rules.yml", sigma1);
    write(dir.path(), "events.jsonl", &scenario().join("\n"));
    spec(dir.path(), "events.jsonl", "alerts.jsonl");
    let (alerts, q) = run_as(dir.path(), "2", |v| format!("{} {}", v["rule"]["id"], v["correlation"]["group_by"]));
    assert!(q.is_empty(), "{q:?}");
    assert_eq!(alerts, [r#""bf-sigma1" [["TargetUserName","svc"]]"#], "one correlation alert, no events-rule alerts");
}
