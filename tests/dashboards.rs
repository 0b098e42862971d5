//! The shipped Grafana dashboards (helm/ward/dashboards) against real data. The detection
//! pipeline (pipelines/detection.yaml, with an input of case acknowledgements added) reads a
//! generated stream from Kafka (Tansu) into ClickHouse 18.16 while a real Prometheus scrapes
//! it; every Prometheus query of every panel must return series, and every ClickHouse query must
//! return rows on the modern engine (chdb) created from the shipped schema and filled with what
//! the run wrote. A panel naming a metric, table or column that does not exist fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Debian's Prometheus server on a free 127.0.0.1 port with a temporary data directory,
/// scraping one target every second; stopped on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(job: &str, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = write(
            dir.path(),
            "prometheus.yml",
            &format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: {job}\n    static_configs: [{{targets: ['{target}']}}]\n"
            ),
        );
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={config}"))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (scripts/test.sh installs Debian's package)");
        let p = Prometheus { child, port, _dir: dir };
        let started = Instant::now();
        while !http_get(port, "/-/ready").is_some_and(|(code, _)| code == 200) {
            assert!(started.elapsed() < Duration::from_secs(30), "Prometheus not ready after 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dashboards_dir() -> PathBuf {
    repo().join("helm/ward/dashboards")
}

/// Runs tests/dashboards/check.py; its report on failure.
fn check(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(repo().join("tests/dashboards/check.py"))
        .args(args)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("0 failure(s)"), "{stdout}");
    stdout
}

#[test]
fn dashboards_are_generated_and_follow_grafanas_conventions() {
    let r = Command::new("python3").arg(repo().join("scripts/dashboards.py")).arg("--check").output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let report = check(&["conventions", dashboards_dir().to_str().unwrap()]);
    assert!(report.matches("ok   ").count() > 50, "{report}");
}

/// pipelines/detection.yaml with its relative paths made absolute and a second input to the
/// `sla` operator: case acknowledgements and containments from `updates` (JSON lines).
fn detection_with_updates(dir: &Path, updates: &Path) -> String {
    let text = std::fs::read_to_string(repo().join("pipelines/detection.yaml")).unwrap();
    let text = text.replace("../rules/", &format!("{}/rules/", repo().display()));
    let sla = "  - id: sla\n    type: sla\n    inputs: [correlate]\n";
    assert!(text.contains(sla) && text.contains("\noperators:\n"));
    let text = text
        .replacen(
            "\noperators:\n",
            &format!(
                "  - {{id: case_updates, type: file, path: \"{}\"}}\n\noperators:\n  \
                 - {{id: parse_updates, type: parse, inputs: [case_updates], format: json}}\n  \
                 - {{id: normalize_updates, type: normalize, inputs: [parse_updates], packs: [\"builtin:generic-json\"]}}\n",
                updates.display()
            ),
            1,
        )
        .replace(sla, "  - id: sla\n    type: sla\n    inputs: [correlate, normalize_updates]\n");
    write(dir, "detection.yaml", &text)
}

fn env_for(run: &mut Command, broker: &Tansu, ch: &ClickHouse, dir: &Path, database: &str, alerts: &str) {
    run.env("WARD_KAFKA_BROKERS", &broker.address)
        .env("WARD_INPUT_TOPIC", "input")
        .env("WARD_STOP_WHEN_IDLE", "4s")
        .env("WARD_WATCH_RULES", "false")
        .env("WARD_CLICKHOUSE_URL", ch.url())
        .env("WARD_CLICKHOUSE_DATABASE", database)
        .env("WARD_ALERTS_TOPIC", alerts)
        .env("WARD_CHECKPOINT_DIR", dir.join("checkpoints"))
        .env("WARD_PARQUET", dir.join("parquet"))
        .env("WARD_OUT", dir);
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_run() {
    let broker = Tansu::start();
    let ch = ClickHouse::start();
    for (topic, partitions) in [("input", 4), ("alerts", 3), ("alerts_scratch", 1)] {
        create_topic(&broker.address, topic, partitions);
    }
    for db in ["ward", "scratch"] {
        for file in ["schema-18.16.sql", "views-18.16.sql"] {
            let sql = std::fs::read_to_string(repo().join("pipelines/clickhouse").join(file)).unwrap();
            ch.apply(&sql.replace("ward.", &format!("{db}.")).replace("EXISTS ward;", &format!("EXISTS {db};")));
        }
    }
    let mut dir = tempfile::tempdir().unwrap();
    if std::env::var_os("WARD_KEEP_WORK").is_some() {
        eprintln!("work dir kept: {}", dir.path().display());
        dir.disable_cleanup(true);
    }
    write(
        dir.path(),
        "produce.yaml",
        &format!(
            r#"name: producer
settings: {{admin_listen: "", epoch_interval_ms: 200}}
sources:
  - {{id: gen, type: generator, count: 30000, seed: 16, malformed_every: 5000, hosts: true, start_time: "{start}"}}
sinks:
  - {{id: input, type: kafka, inputs: [gen], brokers: "{brokers}", topic: input, format: raw}}
"#,
            brokers = broker.address,
            // Recent events, as a dashboard shows them (the tables' TTL drops events older than 90 days).
            start =
                (chrono::Utc::now() - chrono::Duration::hours(3)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
    );
    let r = ward(&["run", dir.path().join("produce.yaml").to_str().unwrap(), "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // 1. A first run learns the cases' ids (into a scratch database).
    let updates = dir.path().join("updates.jsonl");
    std::fs::write(&updates, "").unwrap();
    let spec = detection_with_updates(dir.path(), &updates);
    let first = dir.path().join("first");
    let mut run = Command::new(ward_bin());
    run.args(["run", &spec, "--workers", "2", "-q"]).env("WARD_ADMIN_LISTEN", "");
    env_for(&mut run, &broker, &ch, &first, "scratch", "alerts_scratch");
    let out = run.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let opened: Vec<serde_json::Value> = std::fs::read_to_string(first.join("cases.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|c| c["kind"] == "case.opened")
        .collect();
    assert!(opened.len() >= 4, "cases opened: {}", opened.len());
    // Half the cases acknowledged 20 minutes after they opened, a quarter also contained after 90.
    let mut lines = Vec::new();
    for (i, c) in opened.iter().enumerate() {
        let at = |minutes: i64| {
            chrono::DateTime::from_timestamp_millis(c["opened_ms"].as_i64().unwrap() + minutes * 60_000)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let id = c["case_id"].as_str().unwrap();
        if i % 2 == 0 {
            lines.push(format!(r#"{{"@timestamp":"{}","case":{{"id":"{id}","action":"acknowledged"}}}}"#, at(20)));
        }
        if i % 4 == 0 {
            lines.push(format!(r#"{{"@timestamp":"{}","case":{{"id":"{id}","action":"contained"}}}}"#, at(90)));
        }
    }
    std::fs::write(&updates, lines.join("\n") + "\n").unwrap();

    // 2. The run the dashboards read, scraped by Prometheus every second.
    let admin = free_port();
    let prometheus = Prometheus::start("ward", &format!("127.0.0.1:{admin}"));
    let second = dir.path().join("second");
    let mut run = Command::new(ward_bin());
    run.args(["run", &spec, "--workers", "2", "-q"]).env("WARD_ADMIN_LISTEN", format!("127.0.0.1:{admin}"));
    env_for(&mut run, &broker, &ch, &second, "ward", "alerts");
    // Idle long enough after the input for a dozen scrapes, however slow the machine: rates
    // need two samples in their window.
    run.env("WARD_STOP_WHEN_IDLE", "12s");
    let out = run.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let acknowledged = ch.query("SELECT count() FROM ward.cases FINAL WHERE kind = 'case.acknowledged'");
    assert!(acknowledged.trim().parse::<u64>().unwrap() > 0, "no acknowledgement reached ClickHouse");

    let report = check(&["prometheus", dashboards_dir().to_str().unwrap(), &prometheus.port.to_string(), "ward"]);
    assert!(report.matches("ok   ").count() > 20, "{report}");

    // 3. The same tables on the modern engine, from the shipped schema.
    let mut statements = Vec::new();
    for file in ["schema.sql", "views.sql"] {
        let sql = std::fs::read_to_string(repo().join("pipelines/clickhouse").join(file)).unwrap();
        statements.extend(ward_connectors::sinks::clickhouse_ddl::statements(&sql));
    }
    let json = write(dir.path(), "statements.json", &serde_json::to_string(&statements).unwrap());
    let report = check(&[
        "clickhouse",
        dashboards_dir().to_str().unwrap(),
        &ch.http_port.to_string(),
        &json,
        dir.path().to_str().unwrap(),
    ]);
    assert!(report.matches("ok   ").count() > 20, "{report}");
}
