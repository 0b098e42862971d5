//! Retro-hunts (`ward hunt`, the `parquet` source): the demo pipeline runs live, then a hunt
//! over the Parquet it wrote, with the same rules, raises exactly the live detection and
//! correlation alerts, on 1 and 2 workers.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::*;

/// A copy of the demo (its spec, packs, rules and enrichment files) in `dir`, generating
/// `count` records, without an admin endpoint.
fn demo_in(dir: &Path, count: u64) -> String {
    for d in ["pipelines", "rules/sigma/ward", "rules/ti", "rules/geo", "rules/assets", "rules/sla"] {
        std::fs::create_dir_all(dir.join(d).parent().unwrap()).unwrap();
        let ok = Command::new("cp").arg("-r").arg(repo().join(d)).arg(dir.join(d)).status().unwrap();
        assert!(ok.success());
    }
    let spec = dir.join("pipelines/demo.yaml");
    let text = std::fs::read_to_string(&spec).unwrap();
    let text = text
        .replace("count: 100000", &format!("count: {count}"))
        .replace("admin_listen: \"127.0.0.1:9464\"", "admin_listen: \"\"");
    assert!(text.contains(&format!("count: {count}")) && text.contains("admin_listen: \"\""));
    std::fs::write(&spec, text).unwrap();
    spec.to_string_lossy().into_owned()
}

/// What identifies an alert whatever ran it: its id, rule, event, origin, matches and, for a
/// correlation, its group and window.
fn alerts(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let a: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = serde_json::json!([
            a["alert_id"],
            a["rule"]["id"],
            a["event_id"],
            a["origin"],
            a["matches"],
            a["correlation"],
            a["ruleset_version"]
        ]);
        assert!(out.insert(key.to_string()), "an alert twice: {key}");
    }
    out
}

/// `ward hunt` over the demo's Parquet with its rules, and `args`.
fn hunt_demo(dir: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--rules", "rules/sigma/ward", "--events", "out/demo/events"];
    all.extend_from_slice(args);
    hunt(dir, &all)
}

fn hunt(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(ward_bin()).current_dir(dir).arg("hunt").args(args).output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_hunt_over_the_demos_parquet_raises_exactly_the_live_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let spec = demo_in(dir.path(), 30_000);
    let live = Command::new(ward_bin()).args(["run", &spec, "-q", "--workers", "2"]).output().unwrap();
    assert!(live.status.success(), "{}", String::from_utf8_lossy(&live.stderr));
    let want = alerts(&dir.path().join("out/demo/alerts.jsonl"));
    let correlations = std::fs::read_to_string(dir.path().join("out/demo/alerts.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !serde_json::from_str::<serde_json::Value>(l).unwrap()["correlation"].is_null())
        .count();
    assert!(want.len() > 30, "{} live alerts", want.len());
    assert!(correlations > 0 && correlations < want.len(), "detections and correlations: {correlations}");

    let mut all_events = 0;
    for workers in ["1", "2"] {
        let out = format!("hunt-{workers}.jsonl");
        let r = hunt_demo(dir.path(), &["-w", workers, "--out", &out, "-q"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let got = alerts(&dir.path().join(&out));
        let missing: Vec<_> = want.difference(&got).take(3).collect();
        let extra: Vec<_> = got.difference(&want).take(3).collect();
        assert!(missing.is_empty() && extra.is_empty(), "{workers} worker(s): missing {missing:?}, extra {extra:?}");
        let d = hunt_demo(dir.path(), &["-w", workers, "--diff", "out/demo/alerts.jsonl", "--json", "-q"]);
        assert_eq!(d.code, 0, "{}", d.stderr);
        let d: serde_json::Value = serde_json::from_str(&d.stdout).unwrap();
        assert_eq!((d["diff"]["added"].as_u64(), d["diff"]["removed"].as_u64()), (Some(0), Some(0)), "{}", d["diff"]);
        assert_eq!(d["diff"]["unchanged"].as_u64(), Some(want.len() as u64));
        assert_eq!(d["quarantined"], serde_json::json!({}), "nothing late or unreadable");
        all_events = d["events"].as_u64().unwrap();
        // The summary: every rule that fired live, with its count.
        assert!(r.stdout.contains(&format!("{} alerts from", want.len())), "{}", r.stdout);
        assert!(r.stdout.contains("Hidden PowerShell With Encoded Command"), "{}", r.stdout);
    }

    // With checkpoints: a hunt killed part way and started again with the same arguments
    // ends with exactly the live alerts, each once.
    let args = ["--rules", "rules/sigma/ward", "--events", "out/demo/events", "--out", "resumed.jsonl"];
    let mut first = Command::new(ward_bin())
        .current_dir(dir.path())
        .arg("hunt")
        .args(args)
        .args(["--checkpoint-dir", "hunt-checkpoints", "-q"])
        // Slow reads: the hunt outlasts its first checkpoint (every 5 s), so the kill leaves
        // some to do.
        .env("FAILPOINTS", "source-poll=sleep(500)")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&dir.path().join("hunt-checkpoints"), 0);
    let _ = first.kill();
    first.wait().unwrap();
    // The killed run stopped part way: its committed output lacks some alerts.
    let partial = std::fs::read_to_string(dir.path().join("resumed.jsonl")).unwrap_or_default().lines().count();
    assert!(partial < want.len(), "the killed hunt already wrote all {partial} alerts");
    let r = hunt(dir.path(), &[&args[..], &["--checkpoint-dir", "hunt-checkpoints", "--json", "-q"]].concat());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(alerts(&dir.path().join("resumed.jsonl")), want);
    // ... and the second run went on from its checkpoint instead of reading everything again.
    let resumed: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let read_again = resumed["events"].as_u64().unwrap();
    assert!(read_again < all_events, "the resumed hunt read {read_again} of {all_events} events");

    // Rules without keyword searches: only the fields they read are read, so the alerts'
    // events hold a part of the live ones; with --all-fields, all of them (less the raw
    // payload; extension values come back as text).
    let events = |path: &str| -> std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>> {
        std::fs::read_to_string(dir.path().join(path))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|a| a["event"].is_object())
            .map(|a| (a["alert_id"].as_str().unwrap().to_string(), a["event"].as_object().unwrap().clone()))
            .collect()
    };
    let two = [
        "rules/sigma/ward/proc_creation_encoded_powershell.yml",
        "rules/sigma/ward/win_security_member_added_to_admins.yml",
    ];
    for (out, extra) in [("two.jsonl", None), ("two-all.jsonl", Some("--all-fields"))] {
        let mut args = vec!["--rules", two[0], two[1], "--events", "out/demo/events", "--out", out, "-q"];
        args.extend(extra);
        let r = hunt(dir.path(), &args);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let live = events("out/demo/alerts.jsonl");
    let (projected, all) = (events("two.jsonl"), events("two-all.jsonl"));
    assert!(projected.len() >= 10 && projected.keys().eq(all.keys()), "{} alerts", projected.len());
    let text = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
    let same = |a: &serde_json::Map<String, serde_json::Value>, b: &serde_json::Map<String, serde_json::Value>| {
        a.iter().all(|(k, v)| match (v, b.get(k)) {
            (serde_json::Value::Object(x), Some(serde_json::Value::Object(y))) => {
                x.iter().all(|(k, v)| y.get(k).is_some_and(|w| text(v) == text(w)))
            }
            (v, w) => w == Some(v),
        })
    };
    for (id, p) in &projected {
        let (event, full) = (&live[id], &all[id]);
        assert!(same(p, event) && p.len() < event.len(), "{id}: {p:?} is not a part of {event:?}");
        assert!(same(full, event) && same(event, full) || event.contains_key("event.original"), "{id}: {full:?}");
    }

    // A time range: only the alerts of events inside it.
    let r = hunt_demo(dir.path(), &["--from", "2026-01-05T08:01:00Z", "--to", "2026-01-05T08:02:00Z", "--json", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let summary: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let events = summary["events"].as_u64().unwrap();
    assert!((5990..=6000).contains(&events), "one minute of events every 10 ms: {summary}");
    for rule in summary["rules"].as_array().unwrap() {
        for t in [&rule["first_seen"], &rule["last_seen"]] {
            assert!(t.as_str().unwrap().starts_with("2026-01-05T08:01:"), "{rule}");
        }
    }
}

#[test]
fn a_hunt_explains_what_is_wrong_with_its_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let r = hunt(dir.path(), &["--rules", "nowhere", "--events", "none"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("nowhere: No such file"), "{}", r.stderr);
    assert!(r.stderr.contains("no event files (`*.parquet` written by the parquet sink) in"), "{}", r.stderr);
    std::fs::create_dir_all(dir.path().join("events")).unwrap();
    let r = hunt(
        dir.path(),
        &["--rules", &repo().join("rules/sigma/ward").to_string_lossy(), "--events", "events", "--from", "yesterday"],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("`from`: `yesterday` is neither an RFC 3339 time"), "{}", r.stderr);
}

/// The live alerts of one rule, as the diff names them (`event <id>`).
fn live_events_of(dir: &Path, rule: &str) -> BTreeSet<String> {
    std::fs::read_to_string(dir.join("out/demo/alerts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|a| a["rule"]["id"] == rule)
        .map(|a| format!("event {}", a["event_id"].as_str().unwrap()))
        .collect()
}

fn strings(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

/// A changed rule and a new one: the diff against the live alerts lists exactly the events the
/// change removes and the new rule adds, and nothing else.
#[test]
fn the_diff_lists_exactly_what_a_rule_change_adds_and_removes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = demo_in(dir.path(), 20_000);
    let live = Command::new(ward_bin()).args(["run", &spec, "-q"]).output().unwrap();
    assert!(live.status.success(), "{}", String::from_utf8_lossy(&live.stderr));
    let powershell = "6e2a1c55-3f4b-4b7e-9a51-1f0d8c3b7a01";
    let admins = "0b8f7c3e-5d1a-4c2e-8f6b-2a9d4e7c1b02";
    let removed = live_events_of(dir.path(), powershell);
    let added = live_events_of(dir.path(), admins);
    assert!(!removed.is_empty() && !added.is_empty());

    // The PowerShell rule now leaves the one host it fired on out; a new rule (a copy of the
    // Administrators group rule under another id) fires where that one did.
    let rules = dir.path().join("rules/sigma/ward");
    let text = std::fs::read_to_string(rules.join("proc_creation_encoded_powershell.yml")).unwrap();
    let text = text.replace(
        "    condition: all of selection_*",
        "    filter_lab:\n        Computer: ws-07.corp.local\n    condition: all of selection_* and not filter_lab",
    );
    std::fs::write(rules.join("proc_creation_encoded_powershell.yml"), text).unwrap();
    let copy = std::fs::read_to_string(rules.join("win_security_member_added_to_admins.yml"))
        .unwrap()
        .replace(admins, "9d3c2b1a-0000-4000-8000-00000000beef")
        .replace("title: Account Added To The Local Administrators Group", "title: Administrators Group Change (copy)");
    std::fs::write(rules.join("win_admins_copy.yml"), copy).unwrap();

    let r = hunt_demo(dir.path(), &["--diff", "out/demo/alerts.jsonl", "--json", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let d = &serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["diff"];
    assert_eq!(d["removed"].as_u64(), Some(removed.len() as u64), "{d}");
    assert_eq!(d["added"].as_u64(), Some(added.len() as u64), "{d}");
    for rule in d["rules"].as_array().unwrap() {
        let (a, rm) = (strings(&rule["added"]), strings(&rule["removed"]));
        match rule["id"].as_str().unwrap() {
            id if id == powershell => assert!(a.is_empty() && rm == removed && rule["hunt"] == 0, "{rule}"),
            "9d3c2b1a-0000-4000-8000-00000000beef" => {
                assert!(rm.is_empty() && a == added && rule["live"] == 0, "{rule}")
            }
            _ => assert!(a.is_empty() && rm.is_empty() && rule["unchanged"] == rule["live"], "{rule}"),
        }
    }
    // The table says the same.
    let r = hunt_demo(dir.path(), &["--diff", "out/demo/alerts.jsonl", "-q"]);
    assert!(r.stdout.contains(&format!("{} added, {} removed", added.len(), removed.len())), "{}", r.stdout);
}

/// History kept in ClickHouse (Debian's 18.16, whose `DateTime` has whole seconds: the events
/// table keeps the milliseconds beside it): the demo writes its events and alerts there and
/// its alerts to a Kafka topic too. A hunt over the events table raises exactly the live
/// detection and correlation alerts; a hunt over the Parquet diffed against the alerts table
/// and against the topic reports no change.
#[test]
fn a_hunt_over_clickhouse_history_matches_the_live_alerts_in_the_table_and_the_topic() {
    let ch = ClickHouse::start();
    ch.apply(&std::fs::read_to_string(repo().join("pipelines/clickhouse/schema-18.16.sql")).unwrap());
    let broker = Tansu::start();
    create_topic(&broker.address, "alerts", 2);
    let dir = tempfile::tempdir().unwrap();
    let spec = demo_in(dir.path(), 20_000);
    let text = std::fs::read_to_string(&spec).unwrap().replace(
        "  epoch_interval_ms: 1000\n",
        "  epoch_interval_ms: 1000\n  checkpoint: {dir: ../checkpoints, interval: 1s}\n",
    );
    let url = ch.url();
    let text = format!(
        "{text}\n  - {{id: ch_events, type: clickhouse, inputs: [enrich], url: \"{url}\", database: ward, table: events}}\n  \
         - {{id: ch_alerts, type: clickhouse, inputs: [correlate], url: \"{url}\", database: ward, table: alerts}}\n  \
         - {{id: topic, type: kafka, inputs: [correlate], brokers: \"{}\", topic: alerts}}\n",
        broker.address
    );
    std::fs::write(&spec, text).unwrap();
    let live = Command::new(ward_bin()).args(["run", &spec, "-q", "--workers", "2"]).output().unwrap();
    assert!(live.status.success(), "{}", String::from_utf8_lossy(&live.stderr));
    let want = alerts(&dir.path().join("out/demo/alerts.jsonl"));
    let correlations = want.iter().filter(|a| a.contains("window_start_ms")).count();
    assert!(want.len() > 20 && correlations > 0, "{} live alerts, {correlations} correlations", want.len());

    let location = url.replace("http://", "clickhouse://");
    let events = format!("{location}/ward");
    let r = hunt(
        dir.path(),
        &["--rules", "rules/sigma/ward", "--events", &events, "-w", "2", "--out", "hunt-ch.jsonl", "--json", "-q"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got = alerts(&dir.path().join("hunt-ch.jsonl"));
    let missing: Vec<_> = want.difference(&got).take(3).collect();
    let extra: Vec<_> = got.difference(&want).take(3).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, extra {extra:?}");
    let d: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(d["events"].as_u64(), Some(19_996), "20,000 records, 4 malformed: {}", d["events"]);

    // A hunt over the Parquet, against the alerts table and against the alerts topic.
    let table = format!("{location}/ward/alerts");
    let topic = format!("kafka://{}/alerts", broker.address);
    for live in [&table, &topic] {
        let r = hunt_demo(dir.path(), &["-w", "2", "--diff", live, "--json", "-q"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let d = &serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["diff"];
        assert_eq!((d["added"].as_u64(), d["removed"].as_u64()), (Some(0), Some(0)), "{live}: {d}");
        assert_eq!(d["unchanged"].as_u64(), Some(want.len() as u64), "{live}: {d}");
        // Detections and correlations each name their rule set's version.
        let versions = d["live_ruleset_versions"].as_object().unwrap();
        assert_eq!(versions.len(), 2, "{d}");
        assert_eq!(versions.values().map(|n| n.as_u64().unwrap()).sum::<u64>(), want.len() as u64, "{d}");
    }

    // The source in a spec of its own, paged (700 rows a query), slowed by its sink and
    // killed after a checkpoint: resumed on 3 workers, it writes every event exactly once.
    let backfill = write(
        dir.path(),
        "backfill.yaml",
        &format!(
            r#"name: backfill
settings: {{epoch_interval_ms: 100, batch_size: 200, max_in_flight_bytes: 1048576, admin_listen: "", checkpoint: {{dir: bf-checkpoints, interval: 300ms}}}}
sources:
  - {{id: history, type: clickhouse, url: "{url}", database: ward, page_rows: 700, fields: [host.name]}}
sinks:
  - {{id: out, type: jsonl, inputs: [history], path: bf/events.jsonl}}
"#
        ),
    );
    let mut first = Command::new(ward_bin())
        .args(["run", &backfill, "--workers", "2", "-q"])
        .env("FAILPOINTS", "sink-write=sleep(100)")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once its first rows are committed.
    let out = dir.path().join("bf/events.jsonl");
    let started = std::time::Instant::now();
    while std::fs::metadata(&out).map_or(true, |m| m.len() == 0) && started.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let before = std::fs::read_to_string(dir.path().join("bf/events.jsonl")).unwrap_or_default().lines().count();
    assert!(before < 19_996, "the first run was stopped part way ({before} events)");
    let second = Command::new(ward_bin()).args(["run", &backfill, "--workers", "3", "-q"]).output().unwrap();
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let (mut seen, mut hosts) = (BTreeSet::new(), 0);
    for line in std::fs::read_to_string(dir.path().join("bf/events.jsonl")).unwrap().lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let only = ["@timestamp", "event.id", "host.name", "ward.source", "ward.partition", "ward.offset"];
        assert!(e.as_object().unwrap().keys().all(|k| only.contains(&k.as_str())), "projected: {e}");
        hosts += usize::from(e["host.name"].is_string());
        assert!(seen.insert((e["ward.partition"].to_string(), e["ward.offset"].as_u64().unwrap())), "twice: {e}");
    }
    assert_eq!(seen.len(), 19_996);
    assert!(hosts > 10_000, "{hosts} events with a host");

    // A time range on ClickHouse: one minute of events, one every 10 ms.
    let r = hunt(
        dir.path(),
        &[
            "--rules",
            "rules/sigma/ward",
            "--events",
            &events,
            "--from",
            "2026-01-05T08:01:00Z",
            "--to",
            "2026-01-05T08:02:00Z",
            "--json",
            "-q",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let events = serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["events"].as_u64().unwrap();
    assert!((5990..=6000).contains(&events), "{events} events in the minute");
}
