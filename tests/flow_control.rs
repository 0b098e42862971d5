//! Flow control through the `ward` binary: the sink of one worker is slowed down (a failpoint
//! sleeps before each of its writes) while the sources of both workers produce as fast as they
//! can, and the keyed stage sends half of every worker's events to the slow one. Resident
//! memory, sampled during the run, stays bounded by `max_in_flight_bytes`, and every record
//! comes out once.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const EVENTS: u64 = 1_000_000;

fn spec(dir: &Path, max_in_flight: u64) -> String {
    write(
        dir,
        "spec.yaml",
        &format!(
            r#"name: flow
settings:
  admin_listen: ""
  epoch_interval_ms: 200
  max_in_flight_bytes: {max_in_flight}
sources:
  - {{id: gen, type: generator, count: {EVENTS}, seed: 3}}
operators:
  - {{id: parse, type: parse, inputs: [gen], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse], packs: [builtin:windows, builtin:linux-auth, builtin:zeek, builtin:fortigate, builtin:generic-json]}}
  - {{id: dedup, type: dedup, inputs: [normalize]}}
sinks:
  - {{id: events, type: jsonl, inputs: [dedup], path: out/events.jsonl}}
  - {{id: q, type: jsonl, inputs: [quarantine], path: out/quarantine.jsonl}}
"#
        ),
    )
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `ward run spec --workers N` with `failpoints`, calling `sample` with its pid every
/// `every` until it exits (within 5 minutes); the instant it exited and its standard error.
fn run_sampling(
    dir: &Path,
    spec: &str,
    workers: &str,
    failpoints: &str,
    every: Duration,
    mut sample: impl FnMut(u32),
) -> (Instant, String) {
    let mut child = Command::new(ward_bin())
        .args(["run", spec, "--workers", workers])
        .current_dir(dir)
        .env("FAILPOINTS", failpoints)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the run did not end within 5 minutes");
        sample(pid);
        std::thread::sleep(every);
    }
    let ended = Instant::now();
    let status = child.wait().unwrap();
    let err = reader.join().unwrap();
    assert!(status.success(), "ward failed: {err}");
    (ended, err)
}

/// Runs the spec with worker 0's sinks sleeping `stall_ms` before every write; the peak RSS
/// (KiB) seen while it ran and its standard error.
fn run_with_slow_worker(dir: &Path, spec: &str, stall_ms: u64) -> (u64, String) {
    let mut peak = 0;
    let failpoints = format!("sink-write-worker-0=sleep({stall_ms})");
    let (_, err) = run_sampling(dir, spec, "2", &failpoints, Duration::from_millis(20), |pid| {
        if let Some(kib) = rss_kib(pid) {
            peak = peak.max(kib);
        }
    });
    (peak, err)
}

/// The `in` and `out` columns of component `id` in the run summary.
fn ledger(summary: &str, id: &str) -> (u64, u64) {
    let row = summary
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no `{id}` row in {summary}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols.last(), Some(&"ok"), "ledger of `{id}`: {row}");
    (cols[2].parse().unwrap(), cols[3].parse().unwrap())
}

#[test]
fn a_slow_sink_on_one_worker_holds_memory_at_the_in_flight_bound_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), 8 << 20);
    let (peak_kib, summary) = run_with_slow_worker(dir.path(), &spec, 6);
    let (read, _) = ledger(&summary, "gen");
    let (_, passed) = ledger(&summary, "dedup");
    let (written, _) = ledger(&summary, "events");
    assert_eq!(read, EVENTS, "{summary}");
    assert_eq!(written, passed, "{summary}");
    let lines = std::fs::read_to_string(dir.path().join("out/events.jsonl")).unwrap().lines().count() as u64;
    let quarantined =
        std::fs::read_to_string(dir.path().join("out/quarantine.jsonl")).unwrap_or_default().lines().count() as u64;
    assert_eq!(lines, written, "{summary}");
    // The generator's events have distinct ids: dedup passes them all, and none is malformed.
    assert_eq!(lines + quarantined, EVENTS, "every record once: {summary}");
    assert_eq!(quarantined, 0, "{summary}");
    // 8 MiB of records in flight (as read; parsed batches, their copies in the exchange and
    // the pending epochs of the sinks are a few times that) plus the process itself.
    eprintln!("peak RSS {} MiB", peak_kib / 1024);
    assert!(peak_kib < 160 * 1024, "peak RSS {} MiB with 8 MiB in flight allowed", peak_kib / 1024);
}

/// With one epoch for the whole run, a sink still writes as records arrive: the oldest open
/// epoch's batches go to the sink at once instead of waiting in memory for the epoch's end.
#[test]
fn a_sink_writes_the_open_epoch_as_its_records_arrive() {
    const COUNT: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let spec = write(
        dir.path(),
        "spec.yaml",
        &format!(
            r#"name: open-epoch
settings:
  admin_listen: ""
  epoch_interval_ms: 3600000
  batch_size: 200
sources:
  - {{id: gen, type: generator, count: {COUNT}, seed: 5}}
operators:
  - {{id: parse, type: parse, inputs: [gen], syslog_year: 2026}}
sinks:
  - {{id: events, type: jsonl, inputs: [parse], path: out/events.jsonl}}
  - {{id: q, type: jsonl, inputs: [quarantine], path: out/quarantine.jsonl}}
"#
        ),
    );
    let out = dir.path().join("out/events.jsonl");
    // 100 polls 50 ms apart: the run's single epoch stays open for at least 5 s.
    let mut first_written: Option<Instant> = None;
    let (ended, err) = run_sampling(dir.path(), &spec, "1", "source-poll=sleep(50)", Duration::from_millis(10), |_| {
        if first_written.is_none() && std::fs::metadata(&out).is_ok_and(|m| m.len() > 0) {
            first_written = Some(Instant::now());
        }
    });
    let lines = std::fs::read_to_string(&out).unwrap().lines().count() as u64;
    let quarantined =
        std::fs::read_to_string(dir.path().join("out/quarantine.jsonl")).unwrap_or_default().lines().count() as u64;
    assert_eq!(lines + quarantined, COUNT, "every record once: {err}");
    let first = first_written.expect("the sink wrote nothing while the run went on");
    let ahead = ended - first;
    assert!(ahead > Duration::from_secs(2), "the first lines appeared only {ahead:?} before the run ended");
}
