//! The detection engineer's CLI on the real SigmaHQ corpus: compile goal, regression samples,
//! expectations, explain.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;

fn sigma() -> PathBuf {
    sigmahq_dir()
}

fn check_json(dirs: &[&Path]) -> serde_json::Value {
    let mut args = vec!["rules", "check", "--json"];
    let owned: Vec<String> = dirs.iter().map(|d| d.to_string_lossy().into_owned()).collect();
    args.extend(owned.iter().map(String::as_str));
    let r = ward(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap()
}

#[test]
fn sigmahq_rules_meet_the_compile_goal() {
    let report = check_json(&[&sigma().join("rules")]);
    let compiled = report["compiled"].as_u64().unwrap();
    let rejected = report["rejected"].as_u64().unwrap();
    let pct = report["compiled_percent"].as_f64().unwrap();
    eprintln!("SigmaHQ rules/: {compiled} compiled, {rejected} rejected ({pct:.2}%)");
    assert!(compiled > 3000, "the snapshot has over 3,000 rules: {compiled}");
    assert!(pct >= 99.0, "compile goal is 99%: {pct:.2}%");
    for r in report["rejections"].as_array().unwrap() {
        assert!(r["reason"].as_str().unwrap().len() > 10, "every rejection has a reason: {r}");
    }
}

#[test]
fn every_sigmahq_detection_rule_loads_under_the_default_placeholder_policy() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(sigma())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("rules"))
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 4, "{dirs:?}");
    for dir in &dirs {
        let report = check_json(&[dir]);
        assert_eq!(report["rejected"], 0, "{}: {}", dir.display(), report["rejections"]);
        assert_eq!(report["compiled_percent"].as_f64(), Some(100.0), "{}", dir.display());
    }
    // The placeholder rules load with a note naming each placeholder left without values...
    let placeholders = sigma().join("rules-placeholder");
    let report = check_json(&[&placeholders]);
    let notes = report["notes"].as_array().unwrap();
    assert!(report["compiled"].as_u64().unwrap() >= 20, "{report}");
    let noted: std::collections::BTreeSet<&str> = notes.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(noted.len() as u64, report["compiled"].as_u64().unwrap(), "every placeholder rule has a note");
    assert!(notes.iter().all(|n| n["note"].as_str().unwrap().contains("placeholder `%")), "{notes:?}");
    // ...and under `reject`, each is rejected naming it.
    let r = ward(&["rules", "check", "--json", "--placeholders-missing", "reject", &placeholders.to_string_lossy()]);
    let strict: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(strict["rejected"], report["compiled"], "{}", r.stdout);
    assert_eq!(strict["compiled"], 0, "{}", r.stdout);
}

#[test]
fn unsupported_rules_convert_or_are_rejected_naming_the_construct() {
    let report = check_json(&[&sigma().join("unsupported")]);
    // Sigma 1 `count()/count(f)/sum(f) [by g] > N` with a timeframe become correlations over
    // generated detection rules, each with a note on both.
    let correlations = report["correlations"].as_u64().unwrap();
    assert!(correlations >= 35, "converted aggregations: {report}");
    let notes = report["notes"].as_array().unwrap();
    let converted = notes.iter().filter(|n| n["note"].as_str().unwrap().contains("converted from the Sigma 1")).count();
    assert_eq!(converted as u64, correlations, "every converted rule has a note");
    // The rest (`near`, no timeframe) are rejected with the reason.
    let rejections = report["rejections"].as_array().unwrap();
    let aggregations =
        rejections.iter().filter(|r| r["reason"].as_str().unwrap().contains("Sigma 1 aggregation")).count();
    assert!(aggregations >= 15, "aggregations named as such: {aggregations}");
    assert!(
        rejections.iter().any(|r| r["reason"].as_str().unwrap().contains("`near` has no exact Sigma 2 equivalent")),
        "{rejections:?}"
    );
    // Human output groups reasons and gives counts.
    let r = ward(&["rules", "check", &sigma().join("unsupported").to_string_lossy()]);
    assert!(r.stdout.contains("rejected") && r.stdout.contains("Sigma 1 aggregation"), "{}", r.stdout);
}

struct Sample {
    rule_id: String,
    match_count: usize,
    file: PathBuf,
}

fn samples() -> Vec<Sample> {
    let mut out = Vec::new();
    let mut stack = vec![sigma().join("regression_data")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() == "info.yml" {
                let info: serde_json::Value = serde_json::to_value(
                    yaml_serde::from_str::<yaml_serde::Value>(&std::fs::read_to_string(&p).unwrap()).unwrap(),
                )
                .unwrap();
                let rule_id = info["rule_metadata"][0]["id"].as_str().unwrap().to_string();
                let match_count = info["regression_tests_info"][0]["match_count"].as_u64().unwrap_or(1) as usize;
                for f in std::fs::read_dir(&d).unwrap() {
                    let f = f.unwrap().path();
                    if matches!(f.extension().and_then(|e| e.to_str()), Some("json" | "raw")) {
                        out.push(Sample { rule_id: rule_id.clone(), match_count, file: f });
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

fn alerts(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn every_regression_sample_raises_its_rule_with_the_whole_rule_set() {
    let samples = samples();
    assert!(samples.len() >= 40, "regression samples: {}", samples.len());
    let tmp = tempfile::tempdir().unwrap();
    // All JSON samples in one stream of concatenated documents, evaluated once against every
    // rule directory; raw log samples one by one.
    let mut stream = String::new();
    let mut ranges = Vec::new();
    let mut next = 0usize;
    for s in samples.iter().filter(|s| s.file.extension().unwrap() == "json") {
        let text = std::fs::read_to_string(&s.file).unwrap();
        let n = ward_engine::batch::split_json_documents(&text).unwrap().len();
        ranges.push((s, next..next + n));
        next += n;
        stream.push_str(&text);
        stream.push('\n');
    }
    let events = write(tmp.path(), "all.json", &stream);
    let dirs = ["rules", "rules-emerging-threats", "rules-threat-hunting"].map(|d| sigma().join(d));
    let mut args = vec!["rules".to_string(), "test".to_string()];
    args.extend(dirs.iter().map(|d| d.to_string_lossy().into_owned()));
    args.extend(["--events".to_string(), events]);
    let r = ward(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let all = alerts(&r.stdout);
    let mut failures = Vec::new();
    for (s, range) in &ranges {
        let n = all
            .iter()
            .filter(|a| a["rule"]["id"] == s.rule_id.as_str())
            .filter(|a| range.contains(&(a["event_index"].as_u64().unwrap() as usize)))
            .count();
        if n < s.match_count {
            failures.push(format!("{}: rule {} raised {n} times, want {}", s.file.display(), s.rule_id, s.match_count));
        }
    }
    for s in samples.iter().filter(|s| s.file.extension().unwrap() == "raw") {
        let r = ward(&["rules", "test", &dirs[0].to_string_lossy(), "--events", &s.file.to_string_lossy()]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let n = alerts(&r.stdout).iter().filter(|a| a["rule"]["id"] == s.rule_id.as_str()).count();
        if n < s.match_count {
            failures.push(format!("{}: rule {} raised {n} times, want {}", s.file.display(), s.rule_id, s.match_count));
        }
    }
    assert!(failures.is_empty(), "{} of {} samples failed:\n{}", failures.len(), samples.len(), failures.join("\n"));
}

#[test]
fn rules_test_prints_alert_lines_and_checks_expectations() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = repo().join("rules/sigma/ward");
    // Three EVTX-JSON documents: encoded PowerShell, a failed logon, something benign.
    let evtx = |channel: &str, id: u32, data: &str| {
        format!(
            r##"{{"Event":{{"System":{{"Provider":{{"#attributes":{{"Name":"p"}}}},"EventID":{id},"Channel":"{channel}","Computer":"ws1","TimeCreated":{{"#attributes":{{"SystemTime":"2026-01-05T08:00:00Z"}}}}}},"EventData":{{{data}}}}}}}"##
        )
    };
    let events = [
        evtx(
            "Microsoft-Windows-Sysmon/Operational",
            1,
            r#""Image":"C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe","CommandLine":"powershell.exe -NoProfile -WindowStyle Hidden -EncodedCommand SQBFAFgA""#,
        ),
        evtx("Security", 4625, r#""TargetUserName":"bob""#),
        evtx(
            "Microsoft-Windows-Sysmon/Operational",
            1,
            r#""Image":"C:\\Windows\\notepad.exe","CommandLine":"notepad""#,
        ),
    ];
    let file = write(tmp.path(), "events.json", &events.join("\n"));
    let r = ward(&["rules", "test", &rules.to_string_lossy(), "--events", &file]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got: Vec<(String, u64)> = alerts(&r.stdout)
        .iter()
        .map(|a| (a["rule"]["title"].as_str().unwrap().to_string(), a["event_index"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![("Hidden PowerShell With Encoded Command".to_string(), 0), ("Failed Logon".to_string(), 1)],
        "{}\n{}",
        r.stderr,
        std::fs::read_to_string(&file).unwrap()
    );
    let first = &alerts(&r.stdout)[0];
    assert_eq!(first["rule"]["id"], "6e2a1c55-3f4b-4b7e-9a51-1f0d8c3b7a01");
    assert!(first["matches"].as_array().unwrap().len() == 3, "three selections matched: {first}");

    let good = write(
        tmp.path(),
        "expect.yml",
        "6e2a1c55-3f4b-4b7e-9a51-1f0d8c3b7a01: [0]\n5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e03: [1]\n",
    );
    let r = ward(&["rules", "test", &rules.to_string_lossy(), "--events", &file, "--expect", &good]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("expectations met"), "{}", r.stderr);

    let bad = write(tmp.path(), "bad.yml", "6e2a1c55-3f4b-4b7e-9a51-1f0d8c3b7a01: [0, 2]\n");
    let r = ward(&["rules", "test", &rules.to_string_lossy(), "--events", &file, "--expect", &bad]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("expected alerts for events [2]"), "{}", r.stderr);
    assert!(r.stderr.contains("MISMATCH rule 5c4d3e2f-1a0b-4c9d-8e7f-6a5b4c3d2e03"), "{}", r.stderr);
    assert!(r.stderr.contains("unexpected alerts for events [1]"), "{}", r.stderr);
}

#[test]
fn explain_shows_mapping_routing_and_condition() {
    let rule = repo().join("rules/sigma/ward/proc_creation_encoded_powershell.yml");
    let r = ward(&["rules", "explain", &rule.to_string_lossy()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for needle in [
        "Image → process.executable | Event.EventData.Image",
        "CommandLine → process.command_line",
        "Channel equals \"microsoft-windows-sysmon/operational\"",
        "Image ends with \"\\\\powershell.exe\"",
        "all of",
        "techniques T1059.001, T1027",
    ] {
        assert!(r.stdout.contains(needle), "missing {needle:?} in:\n{}", r.stdout);
    }
}

#[test]
fn rules_check_reports_a_broken_file_and_keeps_going() {
    let tmp = tempfile::tempdir().unwrap();
    write(
        tmp.path(),
        "ok.yml",
        "title: ok\nid: a\nlogsource: {product: x}\ndetection:\n  s:\n    f: 1\n  condition: s\n",
    );
    write(
        tmp.path(),
        "bad.yml",
        "title: bad\nid: b\nlogsource: {product: x}\ndetection:\n  s:\n    f|re: '(?<=x)y'\n  condition: s\n",
    );
    let r = ward(&["rules", "check", &tmp.path().to_string_lossy()]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("compiled           1"), "{}", r.stdout);
    assert!(r.stdout.contains("bad.yml  b: selection `s`: `f`: regex"), "{}", r.stdout);
    let counts: BTreeMap<String, u64> = serde_json::from_str::<serde_json::Value>(
        &ward(&["rules", "check", "--json", &tmp.path().to_string_lossy()]).stdout,
    )
    .map(|v| {
        [
            ("compiled".to_string(), v["compiled"].as_u64().unwrap()),
            ("rejected".to_string(), v["rejected"].as_u64().unwrap()),
        ]
        .into()
    })
    .unwrap();
    assert_eq!(counts, [("compiled".to_string(), 1), ("rejected".to_string(), 1)].into());
}

#[test]
fn hostile_rule_files_are_rejected_alone_and_fast() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "good.yml", &windows_rules("high"));
    std::fs::write(dir.path().join("latin1.yml"), b"title: caf\xe9\nid: x\n").unwrap();
    write(dir.path(), "brackets.yml", &"[".repeat(200_000));
    let started = std::time::Instant::now();
    let report = check_json(&[dir.path()]);
    assert!(started.elapsed().as_secs() < 20, "took {:?}", started.elapsed());
    assert_eq!(report["compiled"], 2, "{report}");
    let reasons: Vec<String> =
        report["rejections"].as_array().unwrap().iter().map(|r| format!("{} {}", r["path"], r["reason"])).collect();
    assert!(reasons.iter().any(|r| r.contains("latin1.yml") && r.contains("not UTF-8")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("brackets.yml") && r.contains("nested deeper")), "{reasons:?}");
}

#[test]
fn rules_test_reports_a_non_utf8_line_and_counts_blank_lines() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "r.yml", &windows_rules("high"));
    let event = security_event(4625, "2026-01-05T08:00:00Z", 1, "dc1", r#""TargetUserName":"bob""#);
    let mut text = Vec::new();
    text.extend_from_slice(b"\n");
    text.extend_from_slice(b"not \xff utf-8\n");
    text.extend_from_slice(event.as_bytes());
    text.extend_from_slice(b"\n");
    std::fs::write(dir.path().join("events.jsonl"), &text).unwrap();
    let events = dir.path().join("events.jsonl");
    let r = ward(&["rules", "test", &rules, "--events", &events.to_string_lossy()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("event 1 is not valid UTF-8"), "{}", r.stderr);
    let alert: serde_json::Value = serde_json::from_str(r.stdout.lines().next().expect("one alert")).unwrap();
    assert_eq!(alert["event_index"], 2, "the line number, blank line counted: {alert}");
}

/// Ward's own rules (rules/sigma/ward) all compile, and each detection rule fires on the
/// generator's attack scenarios (with its cloud and host-state sources on).
#[test]
fn every_shipped_ward_rule_compiles_and_fires_on_the_generators_scenarios() {
    let rules = repo().join("rules/sigma/ward");
    let r = ward(&["rules", "check", rules.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("REJECTED") && !r.stderr.contains("REJECTED"), "{}{}", r.stdout, r.stderr);
    let dir = tempfile::tempdir().unwrap();
    let spec = write(
        dir.path(),
        "spec.yaml",
        &format!(
            r#"name: ward-rules
settings: {{admin_listen: ""}}
sources:
  - {{id: gen, type: generator, count: 4000, cloud: true, hosts: true}}
operators:
  - {{id: parse, type: parse, inputs: [gen], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse]}}
  - {{id: detect, type: sigma-match, inputs: [normalize], rules: ["{}"], watch: false, include_event: false}}
sinks:
  - {{id: alerts, type: jsonl, inputs: [detect], path: alerts.jsonl}}
"#,
            rules.display()
        ),
    );
    let r = ward(&["run", &spec, "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let fired: std::collections::BTreeSet<String> = std::fs::read_to_string(dir.path().join("alerts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["rule"]["id"].as_str().unwrap().to_string())
        .collect();
    for entry in std::fs::read_dir(&rules).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        if text.contains("\ncorrelation:") {
            continue; // correlation rules (several documents) have their own tests
        }
        let doc: serde_json::Value = yaml_serde::from_str(&text).unwrap();
        let id = doc["id"].as_str().unwrap();
        assert!(fired.contains(id), "rule `{}` ({id}) raised no alert", doc["title"]);
    }
}
