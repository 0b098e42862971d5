//! A cluster of `ward run` processes over timely's networking on 127.0.0.1: the same outputs
//! as one process with one worker, whatever the split of workers over processes.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}

/// Sorted lines of `<stem>.jsonl` and of every process's `<stem>.p<I>.jsonl` in `dir`.
fn lines_of(dir: &std::path::Path, stem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if (name == format!("{stem}.jsonl") || name.starts_with(&format!("{stem}.p"))) && name.ends_with(".jsonl") {
            out.extend(std::fs::read_to_string(&path).unwrap().lines().map(str::to_string));
        }
    }
    out.sort();
    out
}

fn spec(dir: &std::path::Path) -> String {
    let rules = repo().join("rules/sigma/ward");
    let text = format!(
        r#"name: cluster
settings: {{admin_listen: ""}}
sources:
  - {{id: gen, type: generator, count: 12000, seed: 9, malformed_every: 500, cloud: true}}
operators:
  - {{id: parse, type: parse, inputs: [gen], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse]}}
  - {{id: detect, type: sigma-match, inputs: [normalize], rules: ["{rules}"], watch: false}}
  - {{id: correlate, type: correlate, inputs: [detect], rules: ["{rules}"], watch: false}}
sinks:
  - {{id: events, type: jsonl, inputs: [normalize], path: events.jsonl}}
  - {{id: alerts, type: jsonl, inputs: [correlate], path: alerts.jsonl}}
  - {{id: q, type: jsonl, inputs: [quarantine], path: quarantine.jsonl}}
"#,
        rules = rules.display()
    );
    write(dir, "spec.yaml", &text)
}

/// Runs `processes` × `workers` in `dir`; every process must exit 0 within the bound.
fn run_cluster(dir: &std::path::Path, processes: usize, workers: usize) {
    let spec = spec(dir);
    let peers: Vec<String> = free_ports(processes).iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut children = Vec::new();
    for i in 0..processes {
        let mut cmd = Command::new(ward_bin());
        cmd.args(["run", &spec, "-q", "--workers", &workers.to_string()])
            .env("WARD_PROCESS", i.to_string())
            .env("WARD_PEERS", peers.join(","))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        children.push(cmd.spawn().unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for (i, mut c) in children.into_iter().enumerate() {
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(c.stderr.as_mut().unwrap(), &mut err).unwrap();
                assert!(status.success(), "process {i} of {processes}: {status}: {err}");
                break;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("process {i} of {processes} did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_cluster_of_processes_gives_the_outputs_of_one_process_with_one_worker() {
    let single = tempfile::tempdir().unwrap();
    let r = ward(&["run", &spec(single.path()), "-q", "--workers", "1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let want: Vec<Vec<String>> =
        ["events", "alerts", "quarantine"].iter().map(|s| lines_of(single.path(), s)).collect();
    assert!(
        want[0].len() > 11_000 && want[1].len() > 40 && !want[2].is_empty(),
        "{:?}",
        want.iter().map(Vec::len).collect::<Vec<_>>()
    );
    for (processes, workers) in [(3, 1), (2, 2)] {
        let dir = tempfile::tempdir().unwrap();
        run_cluster(dir.path(), processes, workers);
        for (i, stem) in ["events", "alerts", "quarantine"].iter().enumerate() {
            let got = lines_of(dir.path(), stem);
            assert_eq!(got.len(), want[i].len(), "{processes}×{workers}: {stem}");
            assert!(got == want[i], "{processes}×{workers}: {stem} differ");
        }
        // Every process did part of the work.
        for p in 0..processes {
            let n = std::fs::read_to_string(dir.path().join(format!("events.p{p}.jsonl"))).unwrap().lines().count();
            assert!(n > 1000, "process {p} wrote {n} events");
        }
    }
}

#[test]
fn cluster_settings_are_checked_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path());
    let r = ward(&["run", &spec, "--process", "3", "--peers", "127.0.0.1:1,127.0.0.1:2"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not below the number of peers"), "{}", r.stderr);
    let r = ward(&["run", &spec, "--process", "0"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("need --peers"), "{}", r.stderr);
    let r = ward(&["run", &spec, "--process", "0", "--peers", "127.0.0.1:1", "--peer-timeout", "100ms"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("at least 1s"), "{}", r.stderr);
}

/// A cluster cannot go on without one of its processes: when one is killed, the others say so
/// and exit non-zero within seconds, so an orchestrator restarts them.
#[test]
fn the_other_processes_exit_non_zero_soon_after_one_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write(
        dir.path(),
        "endless.yaml",
        &std::fs::read_to_string(spec(dir.path())).unwrap().replace("count: 12000", "count: 0, rate: 2000"),
    );
    let peers: Vec<String> = free_ports(3).iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut children: Vec<std::process::Child> = (0..3)
        .map(|i| {
            Command::new(ward_bin())
                .args(["run", &spec, "-q"])
                .env("WARD_PROCESS", i.to_string())
                .env("WARD_PEERS", peers.join(","))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Running: the alerts of every process grow.
    let started = Instant::now();
    while lines_of(dir.path(), "events").len() < 2_000 {
        assert!(started.elapsed() < Duration::from_secs(60), "the cluster does not run");
        std::thread::sleep(Duration::from_millis(100));
    }
    children[1].kill().unwrap();
    let _ = children[1].wait();
    let killed = Instant::now();
    for i in [0, 2] {
        let status = loop {
            if let Some(s) = children[i].try_wait().unwrap() {
                break s;
            }
            if killed.elapsed() > Duration::from_secs(15) {
                let _ = children[i].kill();
                panic!("process {i} still runs 15 s after its peer was killed");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(children[i].stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(1), "process {i}: {err}");
        assert!(err.contains("lost a peer of the cluster"), "process {i}: {err}");
        assert!(!err.contains("stack backtrace"), "a clear error, not a panic: {err}");
    }
}

/// Where the checkpointed test keeps its checkpoints and Parquet events: a directory shared by
/// the processes, or an S3 store (SeaweedFS) with no shared directory for them.
struct Storage<'a> {
    s3: Option<&'a SeaweedS3>,
    dir: &'a std::path::Path,
}

impl Storage<'_> {
    fn checkpoints(&self) -> String {
        match self.s3 {
            Some(_) => format!("s3://ward/{}/checkpoints", self.prefix()),
            None => self.dir.join("checkpoints").display().to_string(),
        }
    }

    fn events(&self) -> String {
        match self.s3 {
            Some(_) => format!("s3://ward/{}/events", self.prefix()),
            None => self.dir.join("out/events").display().to_string(),
        }
    }

    /// A prefix of the bucket of its own per test directory.
    fn prefix(&self) -> String {
        self.dir.file_name().unwrap().to_string_lossy().trim_start_matches('.').to_string()
    }

    fn env(&self, cmd: &mut Command) {
        if let Some(s3) = self.s3 {
            cmd.envs(s3.env());
        }
    }
}

/// `rate` is records per second (0: as fast as it goes); the outputs do not depend on it.
fn checkpointed_spec(at: &Storage<'_>, rate: u64) -> String {
    let rules = repo().join("rules/sigma/ward");
    let text = format!(
        r#"name: cluster-checkpoints
settings:
  epoch_interval_ms: 100
  admin_listen: ""
  checkpoint: {{dir: "{checkpoints}", interval: 300ms, retain: 2}}
sources:
  # 40,000 records with the generator's attack scenarios.
  - {{id: gen, type: generator, count: 40000, rate: {rate}, seed: 11, malformed_every: 2000}}
operators:
  - {{id: parse, type: parse, inputs: [gen], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse]}}
  - {{id: dedup, type: dedup, inputs: [normalize]}}
  - {{id: detect, type: sigma-match, inputs: [dedup], rules: ["{rules}"], watch: false, include_event: false}}
  - {{id: correlate, type: correlate, inputs: [detect], rules: ["{rules}"], watch: false}}
  - {{id: sla, type: sla, inputs: [correlate]}}
sinks:
  - {{id: events, type: parquet, inputs: [dedup], path: "{events}", partition_by: hour}}
  - {{id: alerts, type: jsonl, inputs: [correlate], path: out/alerts.jsonl}}
  - {{id: cases, type: jsonl, inputs: [sla], path: out/cases.jsonl}}
  - {{id: q, type: jsonl, inputs: [quarantine], path: out/quarantine.jsonl}}
"#,
        rules = rules.display(),
        checkpoints = at.checkpoints(),
        events = at.events(),
    );
    write(at.dir, "spec.yaml", &text)
}

/// Every output of `checkpointed_spec`: (rows, distinct records, most copies) of the Parquet
/// events read by pyarrow (from the directory or through its S3 filesystem) with a digest of
/// their keys, and the sorted JSON lines of the rest.
fn checkpointed_outputs(at: &Storage<'_>) -> Vec<(String, Vec<String>)> {
    let script = r#"
import sys, collections, hashlib, pyarrow.parquet as pq, pyarrow.fs as pafs
path = sys.argv[1]
fs = None
if path.startswith('s3://'):
    fs = pafs.S3FileSystem(access_key=sys.argv[2], secret_key=sys.argv[3], endpoint_override=sys.argv[4], scheme='http', region='us-east-1')
    path = path[len('s3://'):]
t = pq.read_table(path, filesystem=fs)
keys = collections.Counter(zip(t.column('ward.partition').to_pylist(), t.column('ward.offset').to_pylist()))
digest = hashlib.sha256(repr(sorted(keys)).encode()).hexdigest()[:16]
print(t.num_rows, len(keys), max(keys.values()), digest)
"#;
    let events = match at.s3 {
        Some(s3) => {
            let endpoint = format!("127.0.0.1:{}", s3.port);
            python(script, &[&at.events(), S3_ACCESS_KEY, S3_SECRET_KEY, &endpoint])
        }
        None => python(script, &[&at.events()]),
    };
    let mut all = vec![("events".to_string(), vec![events.trim().to_string()])];
    for stem in ["alerts", "cases", "quarantine"] {
        all.push((stem.to_string(), lines_of(&at.dir.join("out"), stem)));
    }
    all
}

/// Starts `processes` × `workers` of `spec` (one process: no peers).
fn start(at: &Storage<'_>, spec: &str, processes: usize, workers: usize) -> Vec<std::process::Child> {
    let peers: Vec<String> = free_ports(processes).iter().map(|p| format!("127.0.0.1:{p}")).collect();
    (0..processes)
        .map(|i| {
            let mut cmd = Command::new(ward_bin());
            cmd.args(["run", spec, "-q", "--workers", &workers.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            at.env(&mut cmd);
            if processes > 1 {
                cmd.env("WARD_PROCESS", i.to_string()).env("WARD_PEERS", peers.join(","));
            }
            cmd.spawn().unwrap()
        })
        .collect()
}

/// The newest complete checkpoint's manifest, as `ward checkpoint list --json` reads it.
fn newest_manifest(at: &Storage<'_>) -> Option<serde_json::Value> {
    let mut cmd = Command::new(ward_bin());
    cmd.args(["checkpoint", "list", "--json", &at.checkpoints()]);
    at.env(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().last().map(|l| serde_json::from_str(l).unwrap())
}

/// Waits until a checkpoint newer than `after` is complete.
fn wait_for_checkpoint(at: &Storage<'_>, after: u64) -> u64 {
    let started = Instant::now();
    loop {
        if let Some(e) = newest_manifest(at).and_then(|m| m["epoch"].as_u64()).filter(|e| *e > after) {
            return e;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no checkpoint after {after}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The cluster's checkpoints are one cut across its processes: a cluster killed (kill -9 of
/// one process) resumes from them, a cluster stopped by a signal to one process stops as a
/// whole with a closing checkpoint, and a checkpoint of 2×2 restores onto 3×1 and onto 1×2 —
/// with exactly the outputs of one uninterrupted process.
fn cluster_checkpoints_survive_kill_9_and_rescale(s3: Option<&SeaweedS3>) {
    let reference = tempfile::tempdir().unwrap();
    let at = Storage { s3: None, dir: reference.path() };
    let spec = checkpointed_spec(&at, 0);
    let r = wait_all(&mut start(&at, &spec, 1, 1), Duration::from_secs(120));
    assert_eq!(r[0].0, Some(0), "{}", r[0].1);
    let want = checkpointed_outputs(&at);
    // 40,000 records less the malformed ones the parser quarantines, each once.
    assert!(want[0].1[0].starts_with("39980 39980 1 "), "{:?}", want[0]);
    assert!(
        want[1].1.len() > 20 && want[2].1.len() > 5 && !want[3].1.is_empty(),
        "{:?}",
        want.iter().map(|(n, l)| (n, l.len())).collect::<Vec<_>>()
    );

    let dir = tempfile::tempdir().unwrap();
    let at = Storage { s3, dir: dir.path() };
    // About 16 s of input: the kill and the stop below must land before its end, even when
    // a loaded machine (or a slow S3 store) makes checkpoints take seconds.
    let spec = checkpointed_spec(&at, 2500);
    // 2×2, one process killed after a few checkpoints: the other exits non-zero.
    let mut cluster = start(&at, &spec, 2, 2);
    let first = wait_for_checkpoint(&at, 0);
    wait_for_checkpoint(&at, first + 1);
    let m = newest_manifest(&at).unwrap();
    assert_eq!((m["processes"].as_u64(), m["workers"].as_u64()), (Some(2), Some(2)), "{m}");
    let parts: Vec<&str> = m["parts"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(
        parts.contains(&"keyed.correlate.w3") && parts.contains(&"sink.events.w0"),
        "parts of every process: {parts:?}"
    );
    cluster[1].kill().unwrap();
    let r = wait_all(&mut cluster, Duration::from_secs(15));
    assert_eq!(r[0].0, Some(1), "the survivor exits non-zero: {}", r[0].1);

    // 3×1 from the 2×2 checkpoint; a SIGTERM to one process stops the whole cluster cleanly.
    // The killed cluster may have committed more after `first`: the signal waits for a
    // checkpoint of the new cluster (one sent before its handlers exist kills the process, and
    // the others then wait for their peer until the connect timeout).
    let resumed = newest_manifest(&at).and_then(|m| m["epoch"].as_u64()).unwrap();
    let killed_at = lines_of(&dir.path().join("out"), "alerts").len();
    assert!(killed_at < want[1].1.len(), "the 2×2 cluster had written all {killed_at} alerts before its kill");
    let mut cluster = start(&at, &spec, 3, 1);
    // Stopped at its first checkpoint: on two busy cores a few more can take as long as the
    // rest of the input.
    wait_for_checkpoint(&at, resumed);
    let _ = Command::new("kill").args(["-TERM", &cluster[2].id().to_string()]).status();
    for (i, (code, err)) in wait_all(&mut cluster, Duration::from_secs(30)).iter().enumerate() {
        assert_eq!(*code, Some(0), "process {i} stops cleanly: {err}");
    }
    let m = newest_manifest(&at).unwrap();
    assert_eq!((m["closing"].as_bool(), m["final_checkpoint"].as_bool()), (Some(true), Some(false)), "{m}");
    let partial = lines_of(&dir.path().join("out"), "alerts").len();
    assert!(partial < want[1].1.len(), "stopped in the middle: {partial} alerts");

    // 1×2 to the end.
    let r = wait_all(&mut start(&at, &spec, 1, 2), Duration::from_secs(120));
    assert_eq!(r[0].0, Some(0), "{}", r[0].1);
    let got = checkpointed_outputs(&at);
    for ((name, w), (_, g)) in want.iter().zip(&got) {
        assert_eq!(g.len(), w.len(), "{name}: {:?}", if name == "events" { g.clone() } else { Vec::new() });
        assert!(g == w, "{name} differ");
    }
    assert_eq!(newest_manifest(&at).unwrap()["final_checkpoint"].as_bool(), Some(true));
    if let Some(s3) = s3 {
        // Nothing hidden is left in the bucket once the run ended, and the checkpoints hold
        // only what their manifests name.
        let events = s3.keys("ward", &format!("{}/events/", at.prefix()));
        assert!(events.iter().all(|k| !k.rsplit('/').next().unwrap().starts_with('.')), "{events:?}");
        assert!(!events.is_empty());
    }
}

#[test]
fn cluster_checkpoints_survive_kill_9_and_rescale_with_the_outputs_of_one_process() {
    cluster_checkpoints_survive_kill_9_and_rescale(None);
}

/// The same with checkpoints and Parquet in an S3 store (SeaweedFS): no shared directory
/// holds them.
#[test]
fn a_cluster_checkpoints_to_s3_and_rescales_from_it() {
    let s3 = SeaweedS3::start();
    s3.create_bucket("ward");
    cluster_checkpoints_survive_kill_9_and_rescale(Some(&s3));
}

/// Every value under `key` anywhere in `v`.
fn all_of<'v>(v: &'v serde_json::Value, key: &str, out: &mut Vec<&'v serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == key {
                    out.push(x);
                }
                all_of(x, key, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| all_of(x, key, out)),
        _ => {}
    }
}

fn rules_of(port: u16) -> serde_json::Value {
    let (status, body) = http_get(port, "/rules").expect("the admin endpoint answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A rule reload asked of one process of three is compiled by every process and switched at
/// one epoch for the whole cluster; a broken one is refused on every process, which says why.
#[test]
fn a_rule_reload_on_one_process_switches_every_process_at_one_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    let late = "proc_creation_encoded_powershell.yml";
    for e in std::fs::read_dir(repo().join("rules/sigma/ward")).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap() != late {
            std::fs::copy(&p, rules.join(p.file_name().unwrap())).unwrap();
        }
    }
    let spec = write(
        dir.path(),
        "spec.yaml",
        r#"name: cluster-reload
settings: {epoch_interval_ms: 100}
sources:
  - {id: gen, type: generator, count: 0, rate: 3000, seed: 9}
operators:
  - {id: parse, type: parse, inputs: [gen], syslog_year: 2026}
  - {id: normalize, type: normalize, inputs: [parse]}
  - {id: detect, type: sigma-match, inputs: [normalize], rules: [rules], watch: false, include_event: false}
sinks:
  - {id: alerts, type: jsonl, inputs: [detect], path: alerts.jsonl}
"#,
    );
    let peers: Vec<String> = free_ports(3).iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let admin: Vec<u16> = free_ports(3);
    let mut cluster: Vec<std::process::Child> = (0..3)
        .map(|i| {
            Command::new(ward_bin())
                .args(["run", &spec, "-q", "--admin", &format!("127.0.0.1:{}", admin[i])])
                .env("WARD_PROCESS", i.to_string())
                .env("WARD_PEERS", peers.join(","))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let started = Instant::now();
    while !admin.iter().all(|p| http_get(*p, "/readyz").is_some_and(|(s, _)| s == 200)) {
        assert!(started.elapsed() < Duration::from_secs(60), "the cluster is not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let version = |port: u16| {
        let r = rules_of(port);
        let mut v = Vec::new();
        all_of(&r, "version", &mut v);
        let mut e = Vec::new();
        all_of(&r, "since_epoch", &mut e);
        (v[0].as_str().unwrap().to_string(), e[0].as_u64().unwrap())
    };
    let (v1, _) = version(admin[0]);
    std::thread::sleep(Duration::from_millis(1500));

    // Asked of process 1: every process switches at the epoch the answer names.
    std::fs::copy(repo().join("rules/sigma/ward").join(late), rules.join(late)).unwrap();
    let (status, body) = http(admin[1], "POST", "/rules/reload").unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut first = Vec::new();
    all_of(&answer, "first_epoch", &mut first);
    let epoch = first[0].as_u64().unwrap();
    let v2 = {
        let mut v = Vec::new();
        all_of(&answer, "version", &mut v);
        v[0].as_str().unwrap().to_string()
    };
    assert_ne!(v1, v2);
    for (i, port) in admin.iter().enumerate() {
        assert_eq!(version(*port), (v2.clone(), epoch), "process {i} runs the new rules from the same epoch");
    }
    std::thread::sleep(Duration::from_millis(1500));

    // A broken rule, asked of process 2: refused everywhere; every process says why.
    std::fs::write(
        rules.join("broken.yml"),
        "title: broken\nlogsource: {product: windows}\ndetection: {condition: nope}\n",
    )
    .unwrap();
    let (status, body) = http(admin[2], "POST", "/rules/reload").unwrap();
    assert_eq!(status, 422, "{body}");
    for (i, port) in admin.iter().enumerate() {
        assert_eq!(version(*port).0, v2, "process {i} keeps the running rules");
        // The refusal reaches the other processes with the leader's decision, which may come a
        // moment after the proposer's answer: wait a bounded while for each to say why.
        let started = std::time::Instant::now();
        loop {
            let r = rules_of(*port);
            let mut why = Vec::new();
            all_of(&r, "last_refusal", &mut why);
            if why.iter().any(|w| w.to_string().contains("broken")) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "process {i}: {r}");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(version(*port).0, v2, "process {i} still keeps the running rules");
    }

    let _ = Command::new("kill").args(["-TERM", &cluster[0].id().to_string()]).status();
    for (i, (code, err)) in wait_all(&mut cluster, Duration::from_secs(30)).iter().enumerate() {
        assert_eq!(*code, Some(0), "process {i}: {err}");
    }
    // Alerts of the added rule come only from the new rule set, and both sets alerted.
    let mut versions = std::collections::BTreeMap::new();
    for line in lines_of(dir.path(), "alerts") {
        let a: serde_json::Value = serde_json::from_str(&line).unwrap();
        let (rule, v) =
            (a["rule"]["id"].as_str().unwrap().to_string(), a["ruleset_version"].as_str().unwrap().to_string());
        if rule == "6e2a1c55-3f4b-4b7e-9a51-1f0d8c3b7a01" {
            assert_eq!(v, v2, "the added rule alerts only under the new rule set");
        }
        *versions.entry(v).or_insert(0) += 1;
    }
    assert!(versions.contains_key(&v1) && versions.contains_key(&v2), "{versions:?}");
}
