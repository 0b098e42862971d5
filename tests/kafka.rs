//! The `kafka` source against a real broker (Tansu on 127.0.0.1): partitions spread over
//! workers, every record read once with its topic/partition and offset as provenance, runs
//! resuming from checkpoints read only what is new, and offsets reach the consumer group; the
//! record's key and timestamp reach parse. The `kafka` sink: exactly once for read_committed
//! consumers through kill -9.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::TopicPartitionList;

/// Produces `n` JSON records numbered from `from`, spread over partitions by key.
fn produce(brokers: &str, topic: &str, from: u64, n: u64) {
    produce_with(brokers, topic, from..from + n, None, |i| {
        format!(r#"{{"@timestamp":"2026-03-01T09:00:{:02}.000Z","n":{i},"host":"h{}"}}"#, i % 60, i % 7)
    });
}

/// Produces a record per number, keyed by it, with `payload(n)` and (given `t0`) the Kafka
/// timestamp `t0 + n` ms.
fn produce_with(
    brokers: &str,
    topic: &str,
    numbers: std::ops::Range<u64>,
    t0: Option<i64>,
    payload: impl Fn(u64) -> String,
) {
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").create().expect("producer");
    for i in numbers {
        let (payload, key) = (payload(i), i.to_string());
        let mut record = BaseRecord::to(topic).payload(&payload).key(&key);
        if let Some(t0) = t0 {
            record = record.timestamp(t0 + i as i64);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

fn spec(dir: &Path, brokers: &str) {
    write(
        dir,
        "spec.yaml",
        &format!(
            r#"name: from-kafka
settings:
  epoch_interval_ms: 100
  admin_listen: ""
  checkpoint: {{dir: checkpoints, interval: 200ms}}
sources:
  - {{id: in, type: kafka, brokers: "{brokers}", topics: [events], group_id: ward-test, stop_when_idle: 1500ms}}
operators:
  - {{id: parse, type: parse, inputs: [in], format: json}}
sinks:
  - {{id: out, type: jsonl, inputs: [parse], path: out.jsonl}}
"#
        ),
    );
}

/// (n, partition, offset) of every output record.
fn read(dir: &Path) -> Vec<(u64, String, u64)> {
    std::fs::read_to_string(dir.join("out.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let n = v["ext"]["n"].as_u64().unwrap();
            // The record's Kafka key and timestamp reach parse and stay with the event.
            assert_eq!(v["ext"]["kafka.key"].as_str(), Some(n.to_string().as_str()), "{l}");
            assert!(v["ext"]["kafka.timestamp"].as_str().is_some_and(|t| t.starts_with("20")), "{l}");
            (n, v["ward.partition"].as_str().unwrap().to_string(), v["ward.offset"].as_u64().unwrap())
        })
        .collect()
}

#[test]
fn kafka_partitions_are_read_once_across_workers_and_runs() {
    let broker = Tansu::start();
    let brokers = broker.address.as_str();
    create_topic(brokers, "events", 4);
    produce(brokers, "events", 0, 2000);

    let dir = tempfile::tempdir().unwrap();
    spec(dir.path(), brokers);
    let r = ward(&["run", dir.path().join("spec.yaml").to_str().unwrap(), "--workers", "3", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got = read(dir.path());
    let ns: BTreeSet<u64> = got.iter().map(|r| r.0).collect();
    assert_eq!((got.len(), ns.len()), (2000, 2000), "every record once");
    let partitions: BTreeSet<&str> = got.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(partitions.into_iter().collect::<Vec<_>>(), ["events/0", "events/1", "events/2", "events/3"]);

    // More records; the next run (2 workers) resumes from the checkpoint: only the new ones.
    produce(brokers, "events", 2000, 500);
    let r = ward(&["run", dir.path().join("spec.yaml").to_str().unwrap(), "--workers", "2", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got = read(dir.path());
    let ns: BTreeSet<u64> = got.iter().map(|r| r.0).collect();
    assert_eq!((got.len(), ns.len()), (2500, 2500), "the second run read only the new records");
    let mut positions: BTreeSet<(String, u64)> = BTreeSet::new();
    for (_, p, o) in &got {
        assert!(positions.insert((p.clone(), *o)), "{p}@{o} twice");
    }

    // The consumer group holds the offsets of the last checkpoint (for lag tools).
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", "ward-test").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition("events", p);
    }
    let mut committed = 0i64;
    for _ in 0..50 {
        let c = consumer.committed_offsets(tpl.clone(), Duration::from_secs(5)).unwrap();
        committed = c.elements().iter().filter_map(|e| e.offset().to_raw()).filter(|o| *o > 0).sum();
        if committed == 2500 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(committed, 2500, "committed offsets add up to every record read");
}

/// Every record on `topic` a read_committed consumer sees (until the topic is quiet for 3 s):
/// (key, value, `ward-epoch` header).
fn read_committed(brokers: &str, topic: &str, partitions: i32) -> Vec<(String, String, Option<String>)> {
    read_topic(brokers, topic, partitions, "read_committed")
}

fn read_topic(brokers: &str, topic: &str, partitions: i32, isolation: &str) -> Vec<(String, String, Option<String>)> {
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "ward-test-reader")
        .set("isolation.level", isolation)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut quiet = std::time::Instant::now();
    let started = std::time::Instant::now();
    // Quiet for 10 s ends the read: under load the broker can pause longer than a fetch between
    // batches, and stopping early would look like lost records.
    while quiet.elapsed() < Duration::from_secs(10) && started.elapsed() < Duration::from_secs(120) {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.unwrap();
            let epoch = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "ward-epoch")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).to_string())
            });
            out.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).to_string(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string(),
                epoch,
            ));
            quiet = std::time::Instant::now();
        }
    }
    out
}

#[test]
fn the_alerts_topic_holds_each_alert_once_through_kill_9() {
    let broker = Tansu::start();
    create_topic(&broker.address, "alerts", 3);
    let dir = tempfile::tempdir().unwrap();
    let rules = repo().join("rules/sigma/ward");
    write(
        dir.path(),
        "spec.yaml",
        &format!(
            r#"name: alerts-to-kafka
settings:
  epoch_interval_ms: 100
  admin_listen: ""
  checkpoint: {{dir: checkpoints, interval: 300ms, retain: 2}}
sources:
  - {{id: gen, type: generator, count: 20000, rate: 8000, seed: 5}}
operators:
  - {{id: parse, type: parse, inputs: [gen], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse], packs: [builtin:windows, builtin:linux-auth, builtin:zeek, builtin:fortigate, builtin:generic-json]}}
  - {{id: detect, type: sigma-match, inputs: [normalize], rules: ["{rules}"], watch: false, include_event: false}}
sinks:
  - {{id: topic, type: kafka, inputs: [detect], brokers: "{brokers}", topic: alerts}}
  - {{id: file, type: jsonl, inputs: [detect], path: out/alerts.jsonl}}
"#,
            rules = rules.display(),
            brokers = broker.address
        ),
    );
    for ms in [900, 1500] {
        run_and_kill(&dir.path().join("spec.yaml"), 2, Duration::from_millis(ms));
    }
    let out = std::process::Command::new(ward_bin())
        .args(["run", dir.path().join("spec.yaml").to_str().unwrap(), "--workers", "3", "-q"])
        .env("WARD_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");

    let mut expected: Vec<String> = std::fs::read_to_string(dir.path().join("out/alerts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["alert_id"].as_str().unwrap().to_string())
        .collect();
    expected.sort();
    let records = read_committed(&broker.address, "alerts", 3);
    let mut got: Vec<String> = records.iter().map(|(k, _, _)| k.clone()).collect();
    got.sort();
    assert!(expected.len() > 100, "{} alerts", expected.len());
    if got != expected {
        // Say which kind of failure this is: records missing from the log, or records the
        // broker holds but does not show read_committed consumers (a transaction left open or
        // not applied), and which checkpoints of which worker they belong to.
        let in_log: Vec<(String, String, Option<String>)> =
            read_topic(&broker.address, "alerts", 3, "read_uncommitted");
        let seen: std::collections::HashSet<&String> = got.iter().collect();
        let missing: Vec<&String> = expected.iter().filter(|k| !seen.contains(k)).collect();
        let uncommitted: std::collections::HashSet<&String> = in_log.iter().map(|(k, _, _)| k).collect();
        let hidden = missing.iter().filter(|k| uncommitted.contains(*k)).count();
        let missing_set: std::collections::HashSet<&String> = missing.iter().copied().collect();
        let hidden_epochs: std::collections::BTreeSet<&Option<String>> =
            in_log.iter().filter(|(k, _, _)| missing_set.contains(k)).map(|(_, _, e)| e).collect();
        let mut duplicates = got.clone();
        duplicates.dedup();
        panic!(
            "the topic shows {} alerts, the exactly-once file {}: {} missing ({hidden} of them in the log, \
             not visible read_committed, from checkpoints {hidden_epochs:?}; {} records in the log), {} duplicates; \
             first missing: {:?}\n\
             last run's log:\n{}",
            got.len(),
            expected.len(),
            missing.len(),
            in_log.len(),
            got.len() - duplicates.len(),
            missing.iter().take(5).collect::<Vec<_>>(),
            log.lines()
                .filter(|l| l.contains("kafka") || l.contains("topic") || l.contains("checkpoint"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    for (key, value, epoch) in &records {
        let v: serde_json::Value = serde_json::from_str(value).unwrap();
        assert_eq!(v["alert_id"].as_str(), Some(key.as_str()));
        assert!(epoch.as_deref().is_some_and(|e| e.parse::<u64>().is_ok()), "ward-epoch header: {epoch:?}");
    }
}

#[test]
fn a_frozen_broker_delays_the_pipeline_but_loses_and_repeats_nothing() {
    let broker = Tansu::start();
    create_topic(&broker.address, "raw", 2);
    create_topic(&broker.address, "alerts", 2);
    let dir = tempfile::tempdir().unwrap();
    let rules = repo().join("rules/sigma/ward");
    let admin = free_port();
    // A producer pipeline (generator -> the `raw` topic) and the pipeline under test (`raw` ->
    // detection -> the alerts topic, plus exactly-once JSONL files to compare with).
    write(
        dir.path(),
        "produce.yaml",
        &format!(
            r#"name: producer
settings: {{admin_listen: "", epoch_interval_ms: 100}}
sources:
  - {{id: gen, type: generator, count: 20000, rate: 4000, seed: 9}}
sinks:
  - {{id: raw, type: kafka, inputs: [gen], brokers: "{brokers}", topic: raw, format: raw}}
"#,
            brokers = broker.address
        ),
    );
    write(
        dir.path(),
        "spec.yaml",
        &format!(
            r#"name: through-an-outage
settings:
  epoch_interval_ms: 100
  admin_listen: "127.0.0.1:{admin}"
  checkpoint: {{dir: checkpoints, interval: 500ms}}
sources:
  - {{id: raw, type: kafka, brokers: "{brokers}", topics: [raw], stop_when_idle: 12s}}
operators:
  - {{id: parse, type: parse, inputs: [raw], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse], packs: [builtin:windows, builtin:linux-auth, builtin:zeek, builtin:fortigate, builtin:generic-json]}}
  - {{id: detect, type: sigma-match, inputs: [normalize], rules: ["{rules}"], watch: false, include_event: false}}
sinks:
  - {{id: topic, type: kafka, inputs: [detect], brokers: "{brokers}", topic: alerts, timeout: 60s}}
  - {{id: alerts, type: jsonl, inputs: [detect], path: out/alerts.jsonl}}
  - {{id: events, type: jsonl, inputs: [normalize], path: out/events.jsonl}}
"#,
            brokers = broker.address,
            rules = rules.display(),
            admin = admin
        ),
    );
    let producer = std::process::Command::new(ward_bin())
        .args(["run", dir.path().join("produce.yaml").to_str().unwrap(), "-q"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pipeline = std::process::Command::new(ward_bin())
        .args(["run", dir.path().join("spec.yaml").to_str().unwrap(), "--workers", "2", "-q"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Freeze the broker for 8 s in the middle of both (memory storage would not survive a
    // restart, so an outage is SIGSTOP ... SIGCONT).
    std::thread::sleep(Duration::from_secs(2));
    let pid = broker.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_secs(8));
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    // Per-partition figures of the source, from librdkafka's statistics (reported every second).
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = http_get(admin, "/metrics").map(|(_, body)| body).unwrap_or_default();
        if metrics.contains("ward_kafka_fetched_records_total{component=\"raw\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let fetched: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("ward_kafka_fetched_records_total{component=\"raw\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(fetched > 0, "{metrics}");
    assert!(metrics.contains("ward_kafka_consumer_lag{component=\"raw\",partition=\"raw/"), "{metrics}");
    let produced = producer.wait_with_output().unwrap();
    assert!(produced.status.success());
    let out = pipeline.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Every record once (the generator's 20,000 are all well-formed: no quarantine here).
    let events: BTreeSet<(String, u64)> = std::fs::read_to_string(dir.path().join("out/events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["ward.partition"].as_str().unwrap().to_string(), v["ward.offset"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(events.len(), 20000);
    let mut expected: Vec<String> = std::fs::read_to_string(dir.path().join("out/alerts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["alert_id"].as_str().unwrap().to_string())
        .collect();
    expected.sort();
    let mut got: Vec<String> = read_committed(&broker.address, "alerts", 2).into_iter().map(|(k, _, _)| k).collect();
    got.sort();
    assert!(expected.len() > 100, "{} alerts", expected.len());
    assert_eq!(got, expected, "the alerts topic holds each alert once");
}

/// Produces `n` records numbered from `from` with Kafka timestamps `t0 + n` ms.
fn produce_at(brokers: &str, topic: &str, from: u64, n: u64, t0: i64) {
    produce_with(brokers, topic, from..from + n, Some(t0), |i| format!(r#"{{"n":{i}}}"#));
}

fn numbers(dir: &Path) -> Vec<u64> {
    let mut ns: Vec<u64> = std::fs::read_to_string(dir.join("out.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["ext"]["n"].as_u64().unwrap())
        .collect();
    ns.sort();
    ns
}

/// `stop_at` ends a replay by itself: `end` after every record that was there at start (while
/// a producer keeps writing), a time at the first record of each partition at or after it.
#[test]
fn a_replay_with_stop_at_ends_by_itself() {
    let broker = Tansu::start();
    let brokers = broker.address.clone();
    create_topic(&brokers, "replay", 3);
    let t0 = 1_767_600_000_000i64;
    produce_at(&brokers, "replay", 0, 1000, t0);
    let run = |dir: &Path, stop_at: &str| {
        write(
            dir,
            "spec.yaml",
            &format!(
                r#"name: replay
settings: {{epoch_interval_ms: 100, admin_listen: ""}}
sources:
  - {{id: in, type: kafka, brokers: "{brokers}", topics: [replay], stop_at: "{stop_at}"}}
operators:
  - {{id: parse, type: parse, inputs: [in], format: json}}
sinks:
  - {{id: out, type: jsonl, inputs: [parse], path: out.jsonl}}
"#
            ),
        );
        let mut child = std::process::Command::new(ward_bin())
            .args(["run", dir.join("spec.yaml").to_str().unwrap(), "-q", "--workers", "2"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let r = wait_all(std::slice::from_mut(&mut child), Duration::from_secs(60));
        assert_eq!(r[0].0, Some(0), "{}", r[0].1);
    };

    // To the end, while more records keep coming.
    let writing = {
        let brokers = brokers.clone();
        std::thread::spawn(move || {
            for k in 0..40 {
                produce_at(&brokers, "replay", 10_000 + k * 10, 10, t0 + 100_000);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), "end");
    writing.join().unwrap();
    let got = numbers(dir.path());
    assert!(got.windows(2).all(|w| w[0] < w[1]), "every record once");
    assert_eq!(got.iter().filter(|n| **n < 1000).count(), 1000, "every record there at start");

    // To a time: records 0..300 have earlier timestamps.
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), &ward_engine_time(t0 + 300));
    assert_eq!(numbers(dir.path()), (0..300).collect::<Vec<u64>>());
}

/// RFC 3339 of a millisecond time.
fn ward_engine_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
