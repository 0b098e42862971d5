//! A cluster of `ward run` processes over timely's networking on 127.0.0.1: the same outputs
//! as one process with one worker, whatever the split of workers over processes.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn free_ports(n: usize) -> Vec<u16> {
    // Bound together so they differ; released just before the cluster binds them.
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Sorted lines of every `<stem>-*.jsonl` in `dir`.
fn lines_of(dir: &std::path::Path, stem: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(&format!("{stem}-")) && name.ends_with(".jsonl") {
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
  - {{id: events, type: jsonl, inputs: [normalize], path: "events-${{WARD_PROCESS:-single}}.jsonl"}}
  - {{id: alerts, type: jsonl, inputs: [correlate], path: "alerts-${{WARD_PROCESS:-single}}.jsonl"}}
  - {{id: q, type: jsonl, inputs: [quarantine], path: "quarantine-${{WARD_PROCESS:-single}}.jsonl"}}
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
            let n = std::fs::read_to_string(dir.path().join(format!("events-{p}.jsonl"))).unwrap().lines().count();
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
    let with_checkpoints = write(
        dir.path(),
        "ck.yaml",
        &std::fs::read_to_string(&spec)
            .unwrap()
            .replace("admin_listen: \"\"", "admin_listen: \"\", checkpoint: {dir: ck}"),
    );
    let r = ward(&["run", &with_checkpoints, "--process", "0", "--peers", "127.0.0.1:1"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("not supported in a cluster yet"), "{}", r.stderr);
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
