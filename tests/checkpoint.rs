//! Checkpoints through the `ward` binary: a run stopped with SIGTERM and resumed from its
//! checkpoint — with another worker count — produces exactly what an uninterrupted run does
//! (events, alerts, correlation alerts and SLA records: source positions, keyed state by key
//! group and partitions' watermarks all carried over); `ward checkpoint list|inspect`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;

fn spec(dir: &Path) -> String {
    let rules = repo().join("rules/sigma/ward");
    write(
        dir,
        "spec.yaml",
        &format!(
            r#"name: resumable
settings:
  epoch_interval_ms: 100
  admin_listen: ""
  checkpoint: {{dir: checkpoints, interval: 300ms, retain: 2}}
sources:
  # 30,000 records over about 3 seconds, with the generator's attack scenarios.
  - {{id: gen, type: generator, count: 30000, rate: 10000, seed: 7, malformed_every: 3000}}
operators:
  - {{id: parse, type: parse, inputs: [gen], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse], packs: [builtin:windows, builtin:linux-auth, builtin:zeek, builtin:fortigate, builtin:generic-json]}}
  - {{id: dedup, type: dedup, inputs: [normalize]}}
  - {{id: detect, type: sigma-match, inputs: [dedup], rules: ["{rules}"], watch: false, include_event: false}}
  - {{id: correlate, type: correlate, inputs: [detect], rules: ["{rules}"], watch: false}}
  - {{id: sla, type: sla, inputs: [correlate]}}
sinks:
  - {{id: events, type: jsonl, inputs: [dedup], path: out/events.jsonl}}
  - {{id: alerts, type: jsonl, inputs: [correlate], path: out/alerts.jsonl}}
  - {{id: cases, type: jsonl, inputs: [sla], path: out/cases.jsonl}}
  - {{id: q, type: jsonl, inputs: [quarantine], path: out/quarantine.jsonl}}
"#,
            rules = rules.display()
        ),
    )
}

/// Every output line, counted (the order across workers is free).
fn outputs(dir: &Path) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut all = BTreeMap::new();
    for name in ["events", "alerts", "cases", "quarantine"] {
        let mut lines = BTreeMap::new();
        for l in std::fs::read_to_string(dir.join(format!("out/{name}.jsonl"))).unwrap_or_default().lines() {
            *lines.entry(l.to_string()).or_insert(0) += 1;
        }
        all.insert(name.to_string(), lines);
    }
    all
}

/// Runs the spec with `workers`, stopping it with SIGTERM after `after` (if given).
fn run(dir: &Path, workers: usize, after: Option<Duration>) {
    let spec = dir.join("spec.yaml");
    let child = std::process::Command::new(ward_bin())
        .args(["run", spec.to_str().unwrap(), "--workers", &workers.to_string(), "-q"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(after) = after {
        std::thread::sleep(after);
        let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn summary(o: &BTreeMap<String, BTreeMap<String, usize>>) -> String {
    o.iter().map(|(k, v)| format!("{k}: {}", v.values().sum::<usize>())).collect::<Vec<_>>().join(", ")
}

#[test]
fn stopped_runs_resume_on_other_worker_counts_with_the_same_output() {
    let reference = tempfile::tempdir().unwrap();
    spec(reference.path());
    run(reference.path(), 2, None);
    let expected = outputs(reference.path());
    assert!(expected["alerts"].len() > 10 && expected["cases"].len() > 10, "{}", summary(&expected));
    assert!(expected["events"].len() > 29_000);

    for resume_with in [1, 4] {
        let dir = tempfile::tempdir().unwrap();
        spec(dir.path());
        // Stopped twice in the middle, then run to the end.
        run(dir.path(), 2, Some(Duration::from_millis(1000)));
        let first = outputs(dir.path());
        let partial = first["events"].values().sum::<usize>();
        assert!(partial > 0 && partial < 29_000, "stopped in the middle: {}", summary(&first));
        let list = ward(&["checkpoint", "list", dir.path().join("checkpoints").to_str().unwrap()]);
        assert!(list.stdout.lines().count() >= 2, "{}", list.stdout);
        run(dir.path(), resume_with, Some(Duration::from_millis(700)));
        run(dir.path(), resume_with, None);
        let got = outputs(dir.path());
        assert!(got == expected, "2 then {resume_with} workers: {} vs {}", summary(&got), summary(&expected));

        // The last checkpoint says every source was exhausted: running again adds nothing.
        let inspect = ward(&["checkpoint", "inspect", dir.path().join("checkpoints").to_str().unwrap()]);
        assert!(inspect.stdout.contains("final (every source exhausted)"), "{}", inspect.stdout);
        assert!(inspect.stdout.contains("every part matches the manifest"), "{}", inspect.stdout);
        assert!(inspect.stdout.contains(&format!("keyed.correlate.w{}", resume_with - 1)), "{}", inspect.stdout);
        // The manifest names the rule-set version each detector ran.
        let root = dir.path().join("checkpoints");
        let newest = root.join(format!("chk-{:012}", newest_checkpoint(&root)));
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(newest.join("MANIFEST.json")).unwrap()).unwrap();
        for detector in ["detect", "correlate"] {
            let v = manifest["rulesets"][detector].as_str().unwrap_or_default();
            assert!(v.len() >= 8 && v.chars().all(|c| c.is_ascii_hexdigit()), "{detector}: {manifest}");
        }
        run(dir.path(), 3, None);
        assert!(outputs(dir.path()) == expected, "a finished pipeline run again adds nothing");
    }
}

#[test]
fn a_damaged_checkpoint_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    spec(dir.path());
    let text = std::fs::read_to_string(dir.path().join("spec.yaml")).unwrap().replace("count: 30000", "count: 300");
    write(dir.path(), "spec.yaml", &text);
    run(dir.path(), 1, None);
    let root = dir.path().join("checkpoints");
    let newest = root.join(format!("chk-{:012}", newest_checkpoint(&root)));
    // Parts are named `<participant>.<writer token>.bin`.
    let part = std::fs::read_dir(newest.join("parts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("source.gen.w0."))
        .unwrap();
    std::fs::write(part, b"garbage").unwrap();
    let r = ward(&["checkpoint", "inspect", root.to_str().unwrap()]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("does not match the manifest"), "{}", r.stderr);
    let r = ward(&["run", dir.path().join("spec.yaml").to_str().unwrap(), "-q"]);
    assert_ne!(r.code, 0, "a run does not start from a damaged checkpoint");
    assert!(r.stderr.contains("does not match the manifest"), "{}", r.stderr);
}

#[test]
fn parquet_and_jsonl_hold_every_event_exactly_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "spec.yaml",
        r#"name: crashy
settings:
  epoch_interval_ms: 100
  admin_listen: ""
  checkpoint: {dir: checkpoints, interval: 300ms, retain: 2}
sources:
  - {id: gen, type: generator, count: 30000, rate: 10000, seed: 3}
operators:
  - {id: parse, type: parse, inputs: [gen], syslog_year: 2026}
  - {id: normalize, type: normalize, inputs: [parse], packs: [builtin:windows, builtin:linux-auth, builtin:zeek, builtin:fortigate, builtin:generic-json]}
  - {id: dedup, type: dedup, inputs: [normalize]}
sinks:
  - {id: events, type: parquet, inputs: [dedup], path: out/events, partition_by: hour}
  - {id: lines, type: jsonl, inputs: [dedup], path: out/events.jsonl}
"#,
    );
    let spec = dir.path().join("spec.yaml");
    // Killed at moments spread over the run (checkpoints every 300 ms: some kills fall between
    // a checkpoint's parts, its manifest and the sinks' renames and appends), once stopped
    // gracefully instead, on 2 workers, then to the end on 3.
    for (ms, graceful) in [(700, false), (450, false), (800, true), (620, false), (1100, false)] {
        if graceful {
            run(dir.path(), 2, Some(Duration::from_millis(ms)));
            continue;
        }
        run_and_kill(&spec, 2, Duration::from_millis(ms));
    }
    run(dir.path(), 3, None);
    let counts = python(
        r#"
import sys, collections, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
keys = collections.Counter(zip(t.column('ward.partition').to_pylist(), t.column('ward.offset').to_pylist()))
print(t.num_rows, len(keys), max(keys.values()))
"#,
        &[&dir.path().join("out/events").to_string_lossy()],
    );
    assert_eq!(counts.trim(), "30000 30000 1", "rows, distinct records, most copies of one record");
    let mut lines = std::collections::BTreeMap::new();
    for l in std::fs::read_to_string(dir.path().join("out/events.jsonl")).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        *lines.entry(v["ward.offset"].as_u64().unwrap()).or_insert(0) += 1;
    }
    assert_eq!((lines.len(), lines.values().max().copied()), (30000, Some(1)), "JSONL: every event once");
    let hidden: Vec<_> = walk(&dir.path().join("out/events")).into_iter().filter(|n| n.starts_with('.')).collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    out
}

#[test]
fn a_failed_sink_write_completes_no_later_checkpoint_so_the_next_run_loses_nothing() {
    // One sink write fails half way through a checkpointed run (a failpoint standing for a
    // server that rejects an insert): the run exits with the error, and because no checkpoint
    // completes after the failure, the next run repeats the failed records instead of
    // skipping them.
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "spec.yaml",
        r#"name: failing-sink
settings:
  epoch_interval_ms: 50
  admin_listen: ""
  checkpoint: {dir: checkpoints, interval: 100ms, retain: 2}
sources:
  - {id: gen, type: generator, count: 20000, rate: 10000, seed: 5}
operators:
  - {id: parse, type: parse, inputs: [gen], syslog_year: 2026}
sinks:
  - {id: lines, type: jsonl, inputs: [parse], path: out/events.jsonl}
"#,
    );
    let spec = dir.path().join("spec.yaml");
    let failed = std::process::Command::new(ward_bin())
        .args(["run", spec.to_str().unwrap(), "--workers", "2", "-q"])
        .env("FAILPOINTS", "sink-write=40*off->1*return->off")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success() && stderr.contains("failpoint sink-write"), "{stderr}");
    let partial = std::fs::read_to_string(dir.path().join("out/events.jsonl")).unwrap_or_default().lines().count();
    assert!(partial < 20000, "the failure came before the end: {partial} lines");
    run(dir.path(), 2, None);
    let mut offsets = std::collections::BTreeMap::new();
    for l in std::fs::read_to_string(dir.path().join("out/events.jsonl")).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        *offsets.entry(v["ward.offset"].as_u64().unwrap()).or_insert(0) += 1;
    }
    assert_eq!((offsets.len(), offsets.values().max().copied()), (20000, Some(1)), "every record once");
}

/// The rule-set and enrichment versions a checkpoint names (`contexts` in its manifest).
fn contexts_of(checkpoints: &Path) -> BTreeMap<String, Vec<String>> {
    let m =
        std::fs::read(checkpoints.join(format!("chk-{:012}/MANIFEST.json", newest_checkpoint(checkpoints)))).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
    m["contexts"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(c, v)| {
            (c.clone(), v.as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap().into()).collect())
        })
        .collect()
}

/// A checkpoint keeps the files its rule sets and enrichment data were built from; a run that
/// resumes after they changed on disk rebuilds the checkpoint's versions for the records it
/// replays, says so, and switches to the files on disk at a fresh epoch; stored versions no
/// retained checkpoint names any more are removed.
#[test]
fn a_resumed_run_rebuilds_the_rule_sets_and_enrichment_data_its_checkpoint_kept() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    for e in std::fs::read_dir(repo().join("rules/sigma/ward")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, rules.join(p.file_name().unwrap())).unwrap();
    }
    write(dir.path(), "intel.txt", "45.155.205.233,ward-demo\n");
    let spec = write(
        dir.path(),
        "spec.yaml",
        r#"name: contexts
settings:
  epoch_interval_ms: 100
  admin_listen: ""
  checkpoint: {dir: checkpoints, interval: 300ms, retain: 2}
sources:
  - {id: gen, type: generator, count: 30000, rate: 5000, seed: 5}
operators:
  - {id: parse, type: parse, inputs: [gen], syslog_year: 2026}
  - {id: normalize, type: normalize, inputs: [parse]}
  - {id: enrich, type: enrich, inputs: [normalize], threat_intel: [{path: intel.txt}], watch: false}
  - {id: detect, type: sigma-match, inputs: [enrich], rules: [rules], watch: false, include_event: false}
  - {id: correlate, type: correlate, inputs: [detect], rules: [rules], watch: false}
sinks:
  - {id: alerts, type: jsonl, inputs: [correlate], path: out/alerts.jsonl}
"#,
    );
    let checkpoints = dir.path().join("checkpoints");
    run_past_a_checkpoint_and_kill(Path::new(&spec), 2, &checkpoints, Duration::from_millis(200));
    let before = contexts_of(&checkpoints);
    assert_eq!(before.keys().collect::<Vec<_>>(), ["correlate", "detect", "enrich"], "{before:?}");
    assert!(before.values().all(|v| v.len() == 1), "{before:?}");
    let inspected = ward(&["checkpoint", "inspect", checkpoints.to_str().unwrap()]);
    assert_eq!(inspected.code, 0, "{}", inspected.stderr);
    // `<component> <version> (from epoch N)  <bytes>  <files>`: 13 rule files, 1 intel list.
    let files = |component: &str| -> Option<u32> {
        let line = inspected.stdout.lines().find(|l| l.starts_with(&format!("{component} ")))?;
        line.split_whitespace().last()?.parse().ok()
    };
    assert_eq!((files("detect"), files("enrich")), (Some(13), Some(1)), "{}", inspected.stdout);

    // Changed on disk while the pipeline was down: a rule is gone, the intel list grew.
    std::fs::remove_file(rules.join("aws_vpcflow_rejected_admin_ports.yml")).unwrap();
    write(dir.path(), "intel.txt", "45.155.205.233,ward-demo\n185.220.101.0/24,tor-exit-nodes\n");
    let out = std::process::Command::new(ward_bin()).args(["run", &spec, "--workers", "2", "-q"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for component in ["detect", "enrich"] {
        let said = stderr.lines().find(|l| l.contains("the files changed since checkpoint") && l.contains(component));
        let said = said.unwrap_or_else(|| panic!("{component}: {stderr}"));
        assert!(said.contains(&before[component][0]), "names the version kept: {said}");
    }
    let after = contexts_of(&checkpoints);
    for component in ["detect", "enrich"] {
        assert_eq!(after[component].len(), 1);
        assert_ne!(after[component], before[component], "{component} runs the files on disk in the end");
    }
    // Alerts of both rule sets: the kept one before the switch, the disk's after it.
    let versions: BTreeMap<String, usize> = std::fs::read_to_string(dir.path().join("out/alerts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|a| a["detector"] == "detect")
        .fold(BTreeMap::new(), |mut m, a| {
            *m.entry(a["ruleset_version"].as_str().unwrap().to_string()).or_insert(0) += 1;
            m
        });
    assert_eq!(
        versions.keys().collect::<Vec<_>>(),
        {
            let mut v = vec![&before["detect"][0], &after["detect"][0]];
            v.sort();
            v
        },
        "{versions:?}"
    );
    // Only what the retained manifests name is stored.
    let mut stored: Vec<String> = walk(&checkpoints.join("contexts"));
    stored.sort();
    let mut named: Vec<String> = after.values().map(|v| format!("{}.files", v[0])).collect();
    named.sort();
    assert!(stored.len() >= named.len() && named.iter().all(|n| stored.contains(n)), "{stored:?} {named:?}");
    assert!(stored.len() <= 2 * named.len(), "old versions are removed: {stored:?}");
}
