//! The ClickHouse sink against real servers: the shipped schema is generated from the field
//! list and runs on modern ClickHouse (chdb); Debian's 18.16 server receives a pipeline's
//! events, alerts, cases and quarantined records exactly once (after FINAL) through kill -9
//! crashes and through a 30-second server outage.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use ward_connectors::sinks::clickhouse_ddl::{schema, statements, Dialect};

const MODERN: &str = "pipelines/clickhouse/schema.sql";
const V18: &str = "pipelines/clickhouse/schema-18.16.sql";

#[test]
fn shipped_schema_files_are_generated_from_the_field_list() {
    for (path, dialect) in [(MODERN, Dialect::Modern), (V18, Dialect::V18)] {
        let generated = schema(dialect, "ward");
        let file = repo().join(path);
        if std::env::var_os("WARD_UPDATE_SCHEMA").is_some() {
            std::fs::write(&file, &generated).unwrap();
        }
        let shipped = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(shipped == generated, "{path} is stale: run WARD_UPDATE_SCHEMA=1 cargo test --test clickhouse");
    }
}

#[test]
fn modern_schema_runs_on_modern_clickhouse() {
    // chdb embeds a current ClickHouse: create every table, insert a replayed row, read FINAL.
    let sql = std::fs::read_to_string(repo().join(MODERN)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = python(
        r#"
import sys, json
from chdb import session
s = session.Session(sys.argv[2])
for stmt in json.loads(sys.argv[1]):
    s.query(stmt)
# Recent enough to outlive the tables' TTL.
row = "(1, toDateTime64('2026-11-20 08:00:00.123', 3, 'UTC'), 'windows.security', '10.0.0.1', map('k','v'), 'gen', 'gen/0', 7)"
for _ in range(2):
    s.query("INSERT INTO ward.events (ward_id, timestamp, event_dataset, source_ip, ext, ward_source, ward_partition, ward_offset) VALUES " + row)
s.query("INSERT INTO ward.cases (ward_id, case_id, kind, time) VALUES (5, 'c1', 'sla.breached', now64(3)), (6, 'c1', 'case.opened', now64(3))")
print(s.query("SELECT count(), any(toString(source_ip)), any(ext['k']), any(toString(timestamp)) FROM ward.events FINAL", "TSV").data().strip())
print(s.query("SELECT groupArray(kind) FROM ward.sla", "TSV").data().strip())
print(s.query("SELECT name, type FROM system.columns WHERE database = 'ward' AND table = 'events' AND name IN ('timestamp', 'source_ip', 'event_kind', 'ext') ORDER BY name", "TSV").data().strip())
"#,
        &[&serde_json::to_string(&statements(&sql)).unwrap(), &dir.path().to_string_lossy()],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1\t::ffff:10.0.0.1\tv\t2026-11-20 08:00:00.123", "{out}");
    assert_eq!(lines[1], "['sla.breached']", "{out}");
    assert_eq!(
        &lines[2..],
        [
            "event_kind\tLowCardinality(String)",
            "ext\tMap(String, String)",
            "source_ip\tNullable(IPv6)",
            "timestamp\tDateTime64(3, \\'UTC\\')" // TSV escapes quotes
        ],
        "{out}"
    );
}

#[test]
fn the_clickhouse_sources_queries_run_on_modern_clickhouse() {
    // The source's SQL for a DateTime64(3)/IPv6/Map events table, run by chdb's current
    // ClickHouse: rows of shards 0 and 1 of one hour, shard 1 after a key, in read order.
    let sql = std::fs::read_to_string(repo().join(MODERN)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let described = python(
        r#"
import sys, json
from chdb import session
s = session.Session(sys.argv[2])
for stmt in json.loads(sys.argv[1]):
    s.query(stmt)
rows = [(64, '.123', '10.0.0.1'), (65, '.456', '10.0.0.2'), (66, '.500', '10.0.0.3'), (129, '.789', '2001:db8::1')]
for id, ms, ip in rows:
    s.query(f"INSERT INTO ward.events (ward_id, timestamp, event_dataset, source_ip, ext, ward_source, ward_partition, ward_offset) VALUES ({id}, toDateTime64('2026-11-20 08:00:00{ms}', 3, 'UTC'), 'windows.security', '{ip}', map('k', 'v\tw'), 'gen', 'gen/0', {id})")
print(s.query("SELECT name, type FROM system.columns WHERE database = 'ward' AND table = 'events'", "JSONCompact").data())
"#,
        &[&serde_json::to_string(&statements(&sql)).unwrap(), &dir.path().to_string_lossy()],
    );
    let described: Vec<(String, String)> = serde_json::from_str::<serde_json::Value>(&described).unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_str().unwrap().to_string()))
        .collect();
    let t0 = 1_795_161_600_000i64; // 2026-11-20T08:00:00Z
    let [hours, page] =
        ward_connectors::sources::clickhouse::first_queries("ward.events", &described, t0 / 3_600_000, (t0 + 456, 65))
            .unwrap();
    let out = python(
        r#"
import sys
from chdb import session
s = session.Session(sys.argv[1])
print(s.query(sys.argv[2], "TSV").data().strip())
print("--")
print(s.query(sys.argv[3], "TSV").data().strip())
"#,
        &[&dir.path().to_string_lossy(), &hours, &page],
    );
    let (hours, page) = out.split_once("\n--\n").unwrap();
    assert_eq!(hours, format!("{}\t4", t0 / 3_600_000), "{out}");
    let rows: Vec<Vec<&str>> = page.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2, "shard 0's row and shard 1's row after the key: {out}");
    assert_eq!(&rows[0][..5], ["64", &(t0 + 123).to_string(), "gen", "gen/0", "64"], "{out}");
    assert_eq!(&rows[1][..2], ["129", &(t0 + 789).to_string()], "{out}");
    assert!(rows[0].contains(&"::ffff:10.0.0.1") && rows[1].contains(&"2001:db8::1"), "{out}");
    assert!(rows[0].contains(&r#"{"k":"v\\tw"}"#), "the extension map as escaped JSON: {out}");
}

fn spec(dir: &Path, url: &str, count: u64, rate: u64) -> String {
    let rules = repo().join("rules/sigma/ward");
    write(
        dir,
        "spec.yaml",
        &format!(
            r#"name: to-clickhouse
settings:
  epoch_interval_ms: 100
  admin_listen: ""
  checkpoint: {{dir: checkpoints, interval: 300ms, retain: 2}}
sources:
  - {{id: gen, type: generator, count: {count}, rate: {rate}, seed: 11, malformed_every: 2500}}
operators:
  - {{id: parse, type: parse, inputs: [gen], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse], packs: [builtin:windows, builtin:linux-auth, builtin:zeek, builtin:fortigate, builtin:generic-json]}}
  - {{id: detect, type: sigma-match, inputs: [normalize], rules: ["{rules}"], watch: false, include_event: false}}
  - {{id: sla, type: sla, inputs: [detect]}}
sinks:
  - {{id: ch_events, type: clickhouse, inputs: [normalize], url: "{url}", database: ward, table: events, batch_rows: 5000, retry: {{max_backoff: 1s}}}}
  - {{id: ch_alerts, type: clickhouse, inputs: [detect], url: "{url}", database: ward, table: alerts}}
  - {{id: ch_cases, type: clickhouse, inputs: [sla], url: "{url}", database: ward, table: cases}}
  - {{id: ch_quarantine, type: clickhouse, inputs: [quarantine], url: "{url}", database: ward, table: quarantine}}
  - {{id: alerts, type: jsonl, inputs: [detect], path: out/alerts.jsonl}}
  - {{id: cases, type: jsonl, inputs: [sla], path: out/cases.jsonl}}
"#,
            rules = rules.display()
        ),
    )
}

fn run_to_end(dir: &Path, workers: usize) -> String {
    let out = std::process::Command::new(ward_bin())
        .args(["run", dir.join("spec.yaml").to_str().unwrap(), "--workers", &workers.to_string(), "-q"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    stderr
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().lines().count()
}

/// (rows after FINAL, distinct ids, rows as stored) of a table.
fn counts(ch: &ClickHouse, table: &str) -> (u64, u64, u64) {
    let q = |sql: String| ch.query(&sql).trim().parse::<u64>().unwrap();
    (
        q(format!("SELECT count() FROM ward.{table} FINAL")),
        q(format!("SELECT uniqExact(ward_id) FROM ward.{table}")),
        q(format!("SELECT count() FROM ward.{table}")),
    )
}

#[test]
fn crashed_runs_leave_every_record_once_in_clickhouse_18_16() {
    let ch = ClickHouse::start();
    ch.apply(&std::fs::read_to_string(repo().join(V18)).unwrap());
    let dir = tempfile::tempdir().unwrap();
    spec(dir.path(), &ch.url(), 20000, 8000);
    for ms in [700, 1300] {
        run_and_kill(&dir.path().join("spec.yaml"), 2, Duration::from_millis(ms));
    }
    run_to_end(dir.path(), 3);

    // 20,000 records, one in 2,500 malformed: 8 quarantined, the rest events.
    let (events, ids, _) = counts(&ch, "events");
    assert_eq!((events, ids), (19992, 19992));
    let offsets = ch.query("SELECT uniqExact(ward_partition, ward_offset), min(timestamp) > toDateTime('2026-01-01 00:00:00') FROM ward.events");
    assert_eq!(offsets.trim(), "19992\t1");
    assert_eq!(counts(&ch, "quarantine").0, 8);
    // Alerts and cases: exactly the records the exactly-once JSONL sinks hold.
    let alerts = lines(&dir.path().join("out/alerts.jsonl")) as u64;
    let cases = lines(&dir.path().join("out/cases.jsonl")) as u64;
    assert!(alerts > 100 && cases > 10, "{alerts} alerts, {cases} cases");
    assert_eq!(counts(&ch, "alerts").0, alerts);
    assert_eq!(counts(&ch, "cases").0, cases);
    let mut jsonl_ids: Vec<String> = std::fs::read_to_string(dir.path().join("out/alerts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["alert_id"].as_str().unwrap().to_string())
        .collect();
    jsonl_ids.sort();
    let ch_ids: Vec<String> =
        ch.query("SELECT alert_id FROM ward.alerts FINAL ORDER BY alert_id").lines().map(str::to_string).collect();
    assert_eq!(ch_ids, jsonl_ids);
    // Typed columns came through: the rule's tags as an array, a level, an event time.
    let sample = ch.query("SELECT count() FROM ward.alerts FINAL WHERE length(rule_tags) > 0 AND rule_level != '' AND event_time > toDateTime('2026-01-01 00:00:00')");
    assert_eq!(sample.trim().parse::<u64>().unwrap(), alerts);
}

#[test]
fn a_clickhouse_outage_delays_rows_but_loses_and_repeats_none() {
    let mut ch = ClickHouse::start();
    ch.apply(&std::fs::read_to_string(repo().join(V18)).unwrap());
    let dir = tempfile::tempdir().unwrap();
    // About 4 s of input at 5,000 records/s; the server is down for 30 s from second 1.
    spec(dir.path(), &ch.url(), 20000, 5000);
    let child = std::process::Command::new(ward_bin())
        .args(["run", dir.path().join("spec.yaml").to_str().unwrap(), "--workers", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    ch.stop();
    let down = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(30));
    ch.resume();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(down.elapsed() >= Duration::from_secs(30));
    assert!(stderr.contains("circuit open"), "the outage was noticed: {stderr}");
    let (events, ids, stored) = counts(&ch, "events");
    assert_eq!((events, ids), (19992, 19992), "{stored} rows stored");
    assert_eq!(counts(&ch, "alerts").0, lines(&dir.path().join("out/alerts.jsonl")) as u64);
    assert_eq!(counts(&ch, "cases").0, lines(&dir.path().join("out/cases.jsonl")) as u64);
}
