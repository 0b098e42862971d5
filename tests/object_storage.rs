//! Checkpoints and Parquet in an object store: a real S3 API (SeaweedFS, started here on
//! 127.0.0.1), read back with independent clients (boto3, pyarrow's S3 filesystem).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Generator → parse → normalize → Parquet on S3, checkpoints on S3 (both under `prefix` of
/// bucket `ward`), quarantine to a local JSONL file; `extra` settings lines are appended.
fn spec(dir: &std::path::Path, prefix: &str, count: u64, rate: u64, storage: &str) -> String {
    let text = format!(
        r#"name: s3-{prefix}
settings:
  epoch_interval_ms: 100
  admin_listen: ""
  checkpoint: {{url: "s3://ward/{prefix}/checkpoints", interval: 300ms, retain: 2}}
  storage: {{{storage}}}
sources:
  - {{id: gen, type: generator, count: {count}, rate: {rate}, seed: 5, malformed_every: 1000}}
operators:
  - {{id: parse, type: parse, inputs: [gen], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse]}}
sinks:
  - {{id: events, type: parquet, inputs: [normalize], path: "s3://ward/{prefix}/events", partition_by: hour}}
  - {{id: q, type: jsonl, inputs: [quarantine], path: quarantine.jsonl}}
"#
    );
    write(dir, "spec.yaml", &text)
}

/// Runs `spec`; its spool for files on their way to S3 goes under `tmp`.
fn start(s3: &SeaweedS3, spec: &str, failpoints: &str, tmp: &std::path::Path) -> std::process::Child {
    Command::new(ward_bin())
        .args(["run", spec, "-q", "--workers", "2"])
        .envs(s3.env())
        .env("TMPDIR", tmp)
        .env("FAILPOINTS", failpoints)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Every event row under `s3://ward/PREFIX/events` as pyarrow reads it, one JSON line each
/// (all columns), sorted; with the number of hidden (`.`) objects left there.
fn events(s3: &SeaweedS3, prefix: &str) -> (Vec<String>, usize) {
    let out = python(
        r#"
import sys, json, pyarrow.dataset as ds, pyarrow.fs as pafs
fs = pafs.S3FileSystem(access_key=sys.argv[1], secret_key=sys.argv[2], endpoint_override=sys.argv[3], scheme='http', region='us-east-1')
root = 'ward/' + sys.argv[4] + '/events'
infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
files = [i.path for i in infos if i.type == pafs.FileType.File]
hidden = [f for f in files if f.rsplit('/', 1)[-1].startswith('.')]
t = ds.dataset(root, filesystem=fs, format='parquet', ignore_prefixes=['.', '_']).to_table()
rows = sorted(json.dumps(r, sort_keys=True, default=str) for r in t.to_pylist())
print(json.dumps({'hidden': len(hidden), 'rows': rows}))
"#,
        &[S3_ACCESS_KEY, S3_SECRET_KEY, &format!("127.0.0.1:{}", s3.port), prefix],
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let rows = v["rows"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
    (rows, v["hidden"].as_u64().unwrap() as usize)
}

/// The newest complete checkpoint's epoch, as `ward checkpoint list` reads the store.
fn newest_checkpoint(s3: &SeaweedS3, prefix: &str) -> Option<u64> {
    let out = Command::new(ward_bin())
        .args(["checkpoint", "list", "--json", &format!("s3://ward/{prefix}/checkpoints")])
        .envs(s3.env())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().last().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"].as_u64().unwrap())
}

fn wait_for_checkpoint(s3: &SeaweedS3, prefix: &str, after: Option<u64>, child: &mut std::process::Child) -> u64 {
    let started = Instant::now();
    loop {
        if let Some(e) = newest_checkpoint(s3, prefix).filter(|e| Some(*e) > after) {
            return e;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before a checkpoint after {after:?}");
        assert!(started.elapsed() < Duration::from_secs(60), "no checkpoint after {after:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// kill -9 during checkpoint and Parquet commits, a freeze of the store shorter than the retry
/// budget (the run waits and goes on), and one longer than it (the run stops with an error):
/// after the final run, the Parquet files on S3 hold exactly the rows of an uninterrupted run,
/// nothing hidden is left, and the checkpoints hold only what their manifests name.
#[test]
fn checkpoints_and_parquet_on_s3_are_exactly_once_through_kill_9_and_store_outages() {
    let s3 = SeaweedS3::start();
    s3.create_bucket("ward");
    let storage = "retry_budget: 4s, request_timeout: 1s";
    let tmp = tempfile::tempdir().unwrap();
    let spools = || std::fs::read_dir(tmp.path()).unwrap().count();

    let reference = tempfile::tempdir().unwrap();
    let spec_ref = spec(reference.path(), "reference", 24_000, 100_000, storage);
    let mut child = start(&s3, &spec_ref, "", tmp.path());
    let r = wait_all(std::slice::from_mut(&mut child), Duration::from_secs(120));
    assert_eq!(r[0].0, Some(0), "{}", r[0].1);
    let (want, hidden) = events(&s3, "reference");
    assert_eq!((want.len(), hidden), (24_000 - 24, 0), "every record but the malformed ones, nothing hidden");
    assert_eq!(spools(), 0, "a run that ends removes its spool");

    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "chaos", 24_000, 3_000, storage);
    // Held open a moment, so the kills land inside manifest writes and sink commits.
    let failpoints = "checkpoint-manifest=30%sleep(200);sink-commit=30%sleep(200);checkpoint-prune=30%sleep(100)";
    let mut last = None;
    for kill in 0..3 {
        let mut child = start(&s3, &spec, failpoints, tmp.path());
        let c = wait_for_checkpoint(&s3, "chaos", last, &mut child);
        std::thread::sleep(Duration::from_millis(300 + 450 * kill));
        child.kill().unwrap();
        child.wait().unwrap();
        last = newest_checkpoint(&s3, "chaos").or(Some(c));
        // A killed run cannot remove its spool; the next run removes it.
        assert_eq!(spools(), 1, "one spool: the killed run's");
    }

    // A freeze shorter than the budget: requests time out and are retried, the run goes on.
    let mut child = start(&s3, &spec, "", tmp.path());
    last = Some(wait_for_checkpoint(&s3, "chaos", last, &mut child));
    s3.freeze();
    std::thread::sleep(Duration::from_millis(2500));
    s3.thaw();
    let after_short = wait_for_checkpoint(&s3, "chaos", last, &mut child);
    assert!(child.try_wait().unwrap().is_none(), "the run survives an outage shorter than its retry budget");

    // One longer than the budget: the run stops with an error naming the store, and commits
    // nothing more.
    s3.freeze();
    let r = wait_all(std::slice::from_mut(&mut child), Duration::from_secs(60));
    s3.thaw();
    assert_ne!(r[0].0, Some(0), "an outage beyond the retry budget stops the run");
    assert!(r[0].1.contains("s3://ward/chaos"), "the error names the store: {}", r[0].1);
    assert!(newest_checkpoint(&s3, "chaos").unwrap() >= after_short);

    // To the end.
    let mut child = start(&s3, &spec, "", tmp.path());
    let r = wait_all(std::slice::from_mut(&mut child), Duration::from_secs(120));
    assert_eq!(r[0].0, Some(0), "{}", r[0].1);
    let (got, hidden) = events(&s3, "chaos");
    assert_eq!(hidden, 0, "no hidden object left");
    assert_eq!(spools(), 0, "no spool left, not even those of killed runs");
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the rows of an uninterrupted run, each once");

    // History on S3 read back by `ward hunt` (the parquet source on the store): the killed
    // run's events and the uninterrupted run's raise the same alerts, every event read once.
    let rules = repo().join("rules/sigma/ward");
    let mut alerts = Vec::new();
    for (prefix, workers) in [("reference", "1"), ("chaos", "2")] {
        let out = dir.path().join(format!("hunt-{prefix}.jsonl"));
        let summary = ward_with(
            &s3,
            &[
                "hunt",
                "--rules",
                &rules.to_string_lossy(),
                "--events",
                &format!("s3://ward/{prefix}/events"),
                "-w",
                workers,
                "--out",
                &out.to_string_lossy(),
                "--json",
                "-q",
            ],
        );
        let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
        assert_eq!(summary["events"].as_u64(), Some(want.len() as u64), "{prefix}: {summary}");
        let mut ids: Vec<String> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["alert_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        alerts.push(ids);
    }
    assert!(!alerts[0].is_empty(), "the hunt raised alerts");
    assert_eq!(alerts[0], alerts[1]);

    // The checkpoints: every object belongs to a complete checkpoint and is named by its manifest.
    let keys = s3.keys("ward", "chaos/checkpoints/");
    let out = ward_with(&s3, &["checkpoint", "list", "--json", "s3://ward/chaos/checkpoints"]);
    let manifests: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(manifests.len(), 2, "retain: 2");
    let mut named = Vec::new();
    for m in &manifests {
        let chk = format!("chaos/checkpoints/chk-{:012}", m["epoch"].as_u64().unwrap());
        named.push(format!("{chk}/MANIFEST.json"));
        for p in m["parts"].as_array().unwrap() {
            named.push(format!("{chk}/parts/{}", p["file"].as_str().unwrap()));
        }
    }
    named.sort();
    assert_eq!(keys, named, "only what the manifests name");
}

fn ward_with(s3: &SeaweedS3, args: &[&str]) -> String {
    let out = Command::new(ward_bin()).args(args).envs(s3.env()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two runs wrongly sharing one checkpoint location (a split brain made by hand): the second
/// starts from the first's checkpoint, a little behind it. A manifest is created only if absent,
/// and a run that finds a newer checkpoint than the one it just made stops, so the second never
/// commits over the first: it notices and exits non-zero, the first goes on to the end, and every checkpoint reads back
/// whole. (Their other outputs go to files of their own, so only the checkpoints are shared.)
#[test]
fn two_runs_racing_for_one_checkpoint_location_never_both_commit_an_epoch() {
    let s3 = SeaweedS3::start();
    s3.create_bucket("ward");
    let dir = tempfile::tempdir().unwrap();
    let text = r#"name: race
settings:
  epoch_interval_ms: 100
  admin_listen: ""
  checkpoint: {url: "s3://ward/race/checkpoints", interval: 300ms, retain: 2}
sources:
  - {id: gen, type: generator, count: 30000, rate: 5000, seed: 5}
operators:
  - {id: parse, type: parse, inputs: [gen], syslog_year: 2026}
sinks:
  - {id: events, type: jsonl, inputs: [parse], path: "${RACE_OUT}/events.jsonl"}
  - {id: q, type: jsonl, inputs: [quarantine], path: "${RACE_OUT}/quarantine.jsonl"}
"#;
    let spec = write(dir.path(), "spec.yaml", text);
    let run = |out: &str| {
        std::fs::create_dir_all(dir.path().join(out)).unwrap();
        Command::new(ward_bin())
            .args(["run", &spec, "-q"])
            .envs(s3.env())
            .env("RACE_OUT", dir.path().join(out))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = run("a");
    wait_for_checkpoint(&s3, "race", None, &mut first);
    let second = run("b");
    let mut both = vec![first, second];
    let r = wait_all(&mut both, Duration::from_secs(120));
    let codes: Vec<Option<i32>> = r.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes, vec![Some(0), Some(1)], "the first goes on, the second stops: {r:?}");
    assert!(r[1].1.contains("two runs are using the same checkpoint location"), "{}", r[1].1);
    assert!(!r[1].1.contains("panicked"), "{}", r[1].1);
    let out = ward_with(&s3, &["checkpoint", "inspect", "s3://ward/race/checkpoints"]);
    assert!(out.contains("every part matches the manifest") && out.contains("final"), "{out}");
}

/// A wrong secret is refused with a message that names the bucket and never the secret; a
/// plain-HTTP endpoint beyond loopback is refused before anything is sent.
#[test]
fn wrong_credentials_and_plain_http_endpoints_fail_clearly_without_leaking_secrets() {
    let s3 = SeaweedS3::start();
    s3.create_bucket("ward");
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), "creds", 100, 100_000, "retry_budget: 2s");
    let secret = "not-the-right-secret-71c2";
    let out = Command::new(ward_bin())
        .args(["run", &spec, "-q"])
        .envs(s3.env())
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("s3://ward/creds/checkpoints"), "names the bucket: {err}");
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(!err.contains(secret) && !err.contains(S3_SECRET_KEY), "never the secret: {err}");

    // 192.0.2.0/24 is TEST-NET-1: never routed, and refused before any connection.
    let out = Command::new(ward_bin())
        .args(["run", &spec, "-q"])
        .envs(s3.env())
        .env("AWS_ENDPOINT_URL", "http://192.0.2.10:9000")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("plain HTTP to a host that is not loopback: refused"), "{err}");
    // In the spec, validation already refuses it, with the file and line.
    let text =
        std::fs::read_to_string(&spec).unwrap().replace("retry_budget: 2s", "endpoint: \"http://192.0.2.10:9000\"");
    let bad_spec = write(dir.path(), "bad.yaml", &text);
    let r = ward(&["validate", &bad_spec]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("bad.yaml:") && r.stderr.contains("not loopback: refused"), "{}", r.stderr);
    // JSONL is appended: it cannot go to an object store, and validation says so.
    let text = std::fs::read_to_string(&spec).unwrap().replace("path: quarantine.jsonl", "path: \"s3://ward/q.jsonl\"");
    let r = ward(&["validate", &write(dir.path(), "jsonl.yaml", &text)]);
    assert!(r.code != 0 && r.stderr.contains("JSONL is appended"), "{}", r.stderr);
    // Allowed explicitly, it validates.
    let text = std::fs::read_to_string(&bad_spec).unwrap().replace("endpoint:", "allow_http: true, endpoint:");
    std::fs::write(&bad_spec, text).unwrap();
    let r = ward(&["validate", &bad_spec]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}
