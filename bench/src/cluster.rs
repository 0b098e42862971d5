//! `ward-bench cluster`: the `ward` binary as processes on 127.0.0.1.
//!
//! - Throughput of one pipeline (generator → parse → normalize → sigma-match → correlate →
//!   JSONL) as 1 process × 2 workers and as 2 processes × 1 worker: the same 2 worker threads,
//!   with the exchange over TCP in the second (goal: within 15%).
//! - Restart to first output: 3 processes with checkpoints run an endless stream; one is
//!   killed (kill -9), the others exit on their own; all three start again; the time until the
//!   sinks grow again, and how much of it was restore (goal: ≤ 10 s).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_ports(n: usize) -> Vec<u16> {
    let l: Vec<std::net::TcpListener> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    l.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn spawn(ward: &Path, spec: &Path, processes: usize, workers: usize) -> Vec<Child> {
    let peers: Vec<String> = free_ports(processes).iter().map(|p| format!("127.0.0.1:{p}")).collect();
    (0..processes)
        .map(|i| {
            let mut c = Command::new(ward);
            c.args(["run", spec.to_str().unwrap(), "-q", "--workers", &workers.to_string()]);
            if processes > 1 {
                c.env("WARD_PROCESS", i.to_string()).env("WARD_PEERS", peers.join(","));
            }
            c.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("the ward binary")
        })
        .collect()
}

fn wait(children: Vec<Child>) -> anyhow::Result<()> {
    for mut c in children {
        let s = c.wait()?;
        anyhow::ensure!(s.success(), "a process exited with {s}");
    }
    Ok(())
}

fn lines(dir: &Path, stem: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(stem)))
                .filter_map(|p| std::fs::read(p).ok())
                .map(|b| b.iter().filter(|c| **c == b'\n').count())
                .sum()
        })
        .unwrap_or(0)
}

pub fn run(ward: PathBuf, count: u64, repeat: usize) -> anyhow::Result<()> {
    let rules = super::repo().join("rules/sigma/ward");
    let dir = tempfile::tempdir()?;
    let spec = dir.path().join("spec.yaml");
    std::fs::write(
        &spec,
        format!(
            r#"name: cluster-bench
settings: {{admin_listen: ""}}
sources:
  - {{id: gen, type: generator, count: {count}, seed: 9}}
operators:
  - {{id: parse, type: parse, inputs: [gen], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse]}}
  - {{id: detect, type: sigma-match, inputs: [normalize], rules: ["{r}"], watch: false}}
  - {{id: correlate, type: correlate, inputs: [detect], rules: ["{r}"], watch: false}}
sinks:
  - {{id: alerts, type: jsonl, inputs: [correlate], path: alerts.jsonl}}
  - {{id: rejected, type: jsonl, inputs: [quarantine], path: quarantine.jsonl}}
"#,
            r = rules.display()
        ),
    )?;
    println!(
        "cluster: generator ({count} records) -> parse -> normalize -> sigma-match -> correlate -> JSONL, {}",
        ward.display()
    );
    let mut best = Vec::new();
    for (processes, workers) in [(1, 2), (2, 1)] {
        let mut times = Vec::new();
        for _ in 0..repeat {
            let started = Instant::now();
            wait(spawn(&ward, &spec, processes, workers))?;
            times.push(started.elapsed().as_secs_f64());
        }
        let t = times.iter().cloned().fold(f64::INFINITY, f64::min);
        println!(
            "  {processes} process(es) x {workers} worker(s): best {t:.2}s = {:.0} records/s (runs: {})",
            count as f64 / t,
            times.iter().map(|t| format!("{t:.2}s")).collect::<Vec<_>>().join(", ")
        );
        best.push(t);
    }
    println!("  2x1 vs 1x2: {:+.1}% time", (best[1] / best[0] - 1.0) * 100.0);

    // Restart to first output after a kill.
    let dir = tempfile::tempdir()?;
    let spec = dir.path().join("spec.yaml");
    std::fs::write(
        &spec,
        format!(
            r#"name: cluster-restart
settings: {{admin_listen: "", epoch_interval_ms: 100, checkpoint: {{dir: checkpoints, interval: 1s}}}}
sources:
  - {{id: gen, type: generator, count: 0, rate: 20000, seed: 9}}
operators:
  - {{id: parse, type: parse, inputs: [gen], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse]}}
  - {{id: detect, type: sigma-match, inputs: [normalize], rules: ["{r}"], watch: false}}
  - {{id: correlate, type: correlate, inputs: [detect], rules: ["{r}"], watch: false}}
sinks:
  - {{id: events, type: jsonl, inputs: [normalize], path: events.jsonl}}
  - {{id: alerts, type: jsonl, inputs: [correlate], path: alerts.jsonl}}
  - {{id: rejected, type: jsonl, inputs: [quarantine], path: quarantine.jsonl}}
"#,
            r = rules.display()
        ),
    )?;
    let mut cluster = spawn(&ward, &spec, 3, 1);
    std::thread::sleep(Duration::from_secs(8));
    cluster[1].kill()?;
    let killed = Instant::now();
    for c in cluster.iter_mut() {
        let _ = c.wait();
    }
    let all_down = killed.elapsed();
    let before = lines(dir.path(), "events");
    let restarted = Instant::now();
    let mut cluster = spawn(&ward, &spec, 3, 1);
    let first = loop {
        if lines(dir.path(), "events") > before {
            break restarted.elapsed();
        }
        anyhow::ensure!(restarted.elapsed() < Duration::from_secs(120), "no output after the restart");
        std::thread::sleep(Duration::from_millis(20));
    };
    for c in cluster.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    println!(
        "restart: 3 processes x 1 worker, checkpoints every 1s, 20,000 records/s; after kill -9 of one, the others were down in {:.2}s; restarted, the first new output (committed with the first checkpoint after the restore) {:.2}s after the start",
        all_down.as_secs_f64(),
        first.as_secs_f64()
    );
    Ok(())
}
