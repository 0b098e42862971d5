//! Hot reload on a running pipeline: a rule added (file watcher), a rule changed
//! (`POST /rules/reload`), a broken set refused; then the accounting: no event skipped, none
//! evaluated twice, every worker switching at one point of its stream.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const FAILED_LOGON: &str =
    "title: Failed Logon\nid: rule-a\nlevel: low\nlogsource: { product: windows, service: security }\n\
detection:\n  selection:\n    EventID: 4625\n  condition: selection\n";
const LOGON: &str =
    "title: Logon\nid: rule-b\nlevel: informational\nlogsource: { product: windows, service: security }\n\
detection:\n  selection:\n    EventID: 4624\n  condition: selection\n";
const BROKEN: &str = "title: Broken\nid: rule-c\nlogsource: { product: windows }\n\
detection:\n  selection:\n    CommandLine|re: '(?<=cmd)x'\n  condition: selection\n";

const WORKERS: u64 = 2;

fn spec(dir: &Path, count: u64, rate: u64, rules: &str, alerts: &str) -> String {
    format!(
        r#"name: reload
settings: {{ epoch_interval_ms: 100, batch_size: 256 }}
sources:
  - {{ id: gen, type: generator, count: {count}, rate: {rate}, seed: 7, interval_ms: 10 }}
operators:
  - {{ id: parse, type: parse, inputs: [gen] }}
  - {{ id: normalize, type: normalize, inputs: [parse], packs: [builtin:windows, builtin:linux-auth, builtin:zeek, builtin:fortigate, builtin:generic-json] }}
  - {{ id: detect, type: sigma-match, inputs: [normalize], rules: [{rules}], include_event: false }}
sinks:
  - {{ id: alerts, type: jsonl, inputs: [detect], path: {alerts} }}
  - {{ id: q, type: jsonl, inputs: [quarantine], path: {dir}/q.jsonl }}
"#,
        dir = dir.display()
    )
}

/// (rule id, ruleset version, offset) of every alert.
fn read_alerts(path: &Path) -> Vec<(String, String, u64, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let a: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                a["rule"]["id"].as_str().unwrap().to_string(),
                a["ruleset_version"].as_str().unwrap().to_string(),
                a["origin"]["offset"].as_u64().unwrap(),
                a["alert_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn rules_version(port: u16) -> Option<String> {
    let (status, body) = http_get(port, "/rules")?;
    (status == 200).then(|| serde_json::from_str::<serde_json::Value>(&body).ok())??["version"]
        .as_str()
        .map(String::from)
}

fn wait_for_new_version(port: u16, old: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(v) = rules_version(port) {
            if v != old {
                return v;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the rule set version never changed from {old}");
}

#[test]
fn rules_reload_on_a_running_pipeline_without_loss_or_double_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    write(&rules, "a.yml", FAILED_LOGON);
    let count = 120_000;
    let live_alerts = dir.path().join("live.jsonl");
    let spec_path = write(
        dir.path(),
        "live.yaml",
        &spec(dir.path(), count, 12_000, &rules.to_string_lossy(), &live_alerts.to_string_lossy()),
    );
    let port = free_port();
    let summary_path = dir.path().join("summary.json");
    let mut child = std::process::Command::new(ward_bin())
        .args(["run", &spec_path, "--workers", &WORKERS.to_string(), "--quiet"])
        .args(["--admin", &format!("127.0.0.1:{port}"), "--summary-json", &summary_path.to_string_lossy()])
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let v1 = loop {
        if let Some(v) = rules_version(port) {
            break v;
        }
        assert!(Instant::now() < deadline, "admin endpoint never answered /rules");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(1500));

    // 1. A new rule file: the watcher reloads.
    write(&rules, "b.yml", LOGON);
    let v2 = wait_for_new_version(port, &v1);
    std::thread::sleep(Duration::from_millis(1500));

    // 2. A changed rule, reloaded through the admin endpoint.
    write(&rules, "a.yml", &FAILED_LOGON.replace("level: low", "level: medium"));
    let (status, body) = http(port, "POST", "/rules/reload").unwrap();
    assert_eq!(status, 200, "{body}");
    // (The watcher may have seen the edit first; the endpoint then reports it unchanged.)
    let v3 = wait_for_new_version(port, &v2);
    std::thread::sleep(Duration::from_millis(1000));

    // 3. A broken rule: refused with the reason; the running set stays.
    write(&rules, "c.yml", BROKEN);
    let (status, body) = http(port, "POST", "/rules/reload").unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("c.yml") && body.contains("linear-time"), "{body}");
    assert!(body.contains("refused"), "{body}");
    assert_eq!(rules_version(port).as_deref(), Some(v3.as_str()));
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert!(metrics.contains(&format!("ward_ruleset_info{{component=\"detect\",version=\"{v3}\"}} 1")), "{metrics}");
    assert!(!metrics.contains(&format!("version=\"{v1}\"")), "the old version is no longer reported");
    assert!(metrics.contains("ward_rules_loaded{component=\"detect\",status=\"compiled\"} 2"), "{metrics}");
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("ward_resource_reload_failures_total{component=\"detect\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(failures >= 1, "{metrics}");

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the run did not end");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    let comps = summary["components"].as_array().unwrap();
    let detect = comps.iter().find(|c| c["id"] == "detect").unwrap();
    let normalize = comps.iter().find(|c| c["id"] == "normalize").unwrap();
    assert_eq!(detect["records_in"], normalize["records_out"], "every normalized event reached the detector");
    assert_eq!(detect["records_in"], detect["records_out"], "every event was evaluated");

    let live = read_alerts(&live_alerts);
    let ids: BTreeSet<&String> = live.iter().map(|a| &a.3).collect();
    assert_eq!(ids.len(), live.len(), "no event matched twice by one rule");
    let versions: BTreeSet<&str> = live.iter().map(|a| a.1.as_str()).collect();
    assert_eq!(versions, [v1.as_str(), v2.as_str(), v3.as_str()].into(), "alerts from every version");

    // The same input without reloads, with both rules from the start: what each rule matches.
    let offline_rules = dir.path().join("offline-rules");
    write(&offline_rules, "a.yml", FAILED_LOGON);
    write(&offline_rules, "b.yml", LOGON);
    let offline_alerts = dir.path().join("offline.jsonl");
    let offline_spec = write(
        dir.path(),
        "offline.yaml",
        &spec(dir.path(), count, 0, &offline_rules.to_string_lossy(), &offline_alerts.to_string_lossy()),
    );
    let r = ward(&["run", &offline_spec, "--workers", "1", "--quiet", "--admin", ""]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let offline = read_alerts(&offline_alerts);
    let matching = |rule: &str, alerts: &[(String, String, u64, String)]| -> BTreeSet<u64> {
        alerts.iter().filter(|a| a.0 == rule).map(|a| a.2).collect()
    };

    // Rule A ran through every switch: exactly the events it matches, each once.
    assert_eq!(matching("rule-a", &live), matching("rule-a", &offline), "rule A: no event skipped or repeated");

    // Per worker stream (generator record k goes to worker k mod W), versions follow one
    // another without overlap, and rule B covers exactly the matching events from its switch on.
    for w in 0..WORKERS {
        let mine: Vec<&(String, String, u64, String)> = live.iter().filter(|a| a.2 % WORKERS == w).collect();
        let mut spans: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for a in &mine {
            let s = spans.entry(a.1.as_str()).or_insert((u64::MAX, 0));
            s.0 = s.0.min(a.2);
            s.1 = s.1.max(a.2);
        }
        let (s1, s2, s3) = (spans[v1.as_str()], spans[v2.as_str()], spans[v3.as_str()]);
        assert!(s1.1 < s2.0 && s2.1 < s3.0, "worker {w}: version spans overlap: {spans:?}");
        let b_live: BTreeSet<u64> = mine.iter().filter(|a| a.0 == "rule-b").map(|a| a.2).collect();
        let first_b = *b_live.iter().next().expect("rule B raised alerts after it was added");
        // From the first event version 2 evaluated, every event rule B matches has its alert.
        let switch = s2.0.min(first_b);
        let b_expected: BTreeSet<u64> =
            matching("rule-b", &offline).into_iter().filter(|o| o % WORKERS == w && *o >= switch).collect();
        assert_eq!(b_live, b_expected, "worker {w}: rule B matched every event from its switch on");
        assert!(first_b > s1.1, "worker {w}: rule B started with version 2");
    }
}
