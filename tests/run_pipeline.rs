//! `ward run` and `ward demo` end to end: files of every shape (plain and gzip, malformed
//! lines included) through parse → normalize → enrich into JSONL and Parquet. Checks the
//! ledger, the quarantine reasons, identical output for 1 and 2 workers, Parquet read back
//! by pyarrow, and the metrics endpoint with `promtool`.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Input files: EVTX-JSON, sshd syslog, Zeek TSV, FortiGate kv (gzip), a corrupt gzip and
/// assorted formats. Returns the number of lines (records) written.
fn write_inputs(dir: &Path) -> usize {
    std::fs::create_dir_all(dir).unwrap();
    let mut lines = 0;
    let mut windows = String::new();
    for i in 0..500 {
        let (id, user) = if i % 7 == 0 { (4625, "svc-backup") } else { (4624, "alice") };
        windows.push_str(&format!(
            r##"{{"Event":{{"System":{{"EventID":{id},"TimeCreated":{{"#attributes":{{"SystemTime":"2026-01-05T08:{:02}:{:02}.000Z"}}}},"Channel":"Security","Computer":"dc1.corp.local"}},"EventData":{{"TargetUserName":"{user}","IpAddress":"45.155.205.{}","LogonType":3}}}}}}"##,
            i / 60 % 60,
            i % 60,
            230 + i % 5
        ));
        windows.push('\n');
    }
    windows.push_str(r##"{"Event":{"System":{"EventID":1,"TimeCreated":{"#attributes":{"SystemTime":"not a time"}},"Channel":"Security"}}}"##);
    windows.push_str("\n{\"Event\": {\"System\": \n");
    lines += 502;
    std::fs::write(dir.join("a-windows.jsonl"), windows).unwrap();

    let mut auth = String::new();
    for i in 0..400 {
        if i % 3 == 0 {
            auth.push_str(&format!("<38>Jan  5 09:{:02}:{:02} bastion sshd[{}]: Failed password for root from 185.220.101.{} port {} ssh2\n", i / 60, i % 60, 1000 + i, i % 250, 40000 + i));
        } else {
            auth.push_str(&format!(
                "<38>Jan  5 09:{:02}:{:02} web-01 sshd[{}]: Accepted publickey for bob from 10.0.0.{} port {} ssh2\n",
                i / 60,
                i % 60,
                1000 + i,
                i % 250,
                40000 + i
            ));
        }
    }
    auth.push_str("<38>Jan  5 09:0\n");
    lines += 401;
    std::fs::write(dir.join("b-auth.log"), auth).unwrap();

    let mut zeek = String::from("#separator \\x09\n#path\tconn\n#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\torig_bytes\tresp_bytes\tconn_state\n#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tcount\tcount\tstring\n");
    for i in 0..300 {
        zeek.push_str(&format!(
            "{}.{:06}\tC{i:05}\t10.0.0.{}\t{}\t198.51.100.{}\t443\ttcp\tssl\t{}\t{}\tSF\n",
            1767600000 + i,
            i,
            i % 200,
            50000 + i,
            i % 50,
            i * 10,
            i * 1000
        ));
    }
    zeek.push_str("1767600999.0\tCshort\t10.0.0.1\n");
    lines += 4 + 301;
    std::fs::write(dir.join("c-conn.log"), zeek).unwrap();

    let mut fw = Vec::new();
    {
        let mut gz = flate2::write::GzEncoder::new(&mut fw, flate2::Compression::default());
        for i in 0..300u64 {
            writeln!(
                gz,
                r#"<189>date=2026-01-05 time=10:00:00 devname="FGT-EDGE" devid="FG1" eventtime={} logid="0000000013" type="traffic" subtype="forward" srcip=10.1.1.{} srcport={} dstip=185.220.101.{} dstport=445 action="deny" policyid=7 sentbyte=0 rcvdbyte=0"#,
                1_767_607_200_000_000_000u64 + i * 1_000_000_000,
                i % 200,
                50000 + i,
                i % 250
            )
            .unwrap();
        }
        gz.finish().unwrap();
    }
    lines += 300;
    std::fs::write(dir.join("d-fw.log.gz"), &fw).unwrap();
    // The same data cut short: lines before the cut are read, then a read error.
    let cut = &fw[..fw.len() / 2];
    let readable = {
        use std::io::Read;
        let mut s = Vec::new();
        let _ = flate2::read::MultiGzDecoder::new(cut).read_to_end(&mut s);
        s.iter().filter(|b| **b == b'\n').count()
    };
    lines += readable + 1; // + the read_error record
    std::fs::write(dir.join("e-fw-truncated.log.gz"), cut).unwrap();

    let mut misc = Vec::new();
    misc.extend_from_slice(b"CEF:0|Vendor|IDS|1.0|100|Port scan|7|src=203.0.113.5 dst=10.0.0.9 dpt=22\n");
    misc.extend_from_slice(b"LEEF:1.0|Vendor|Proxy|1.0|42|src=10.0.0.3\tdst=185.220.101.3\tusrName=carol\n");
    misc.extend_from_slice(b"action=allow srcip=10.0.0.4 dstip=8.8.8.8\n");
    misc.extend_from_slice(b"\xff\xfe\xfd not text\n");
    misc.extend_from_slice(b"this line is in no known format\n");
    misc.extend_from_slice(b"\n");
    lines += 6;
    std::fs::write(dir.join("f-misc.log"), misc).unwrap();
    lines
}

fn spec(inputs: &Path, out: &Path) -> String {
    let rules = repo().join("rules");
    format!(
        r#"name: files
settings: {{ admin_listen: "" }}
sources:
  - {{ id: files, type: file, path: "{inputs}/*" }}
operators:
  - {{ id: parse, type: parse, inputs: [files], syslog_year: 2026 }}
  - {{ id: normalize, type: normalize, inputs: [parse], packs: [builtin:windows, builtin:linux-auth, builtin:zeek, builtin:fortigate, builtin:generic-json] }}
  - id: enrich
    type: enrich
    inputs: [normalize]
    threat_intel: [{{ path: {rules}/ti/demo-indicators.txt }}]
    geoip: {rules}/geo/ward-test-city.mmdb
    asn: {rules}/geo/ward-test-asn.mmdb
    assets: {rules}/assets/demo-assets.csv
sinks:
  - {{ id: events, type: jsonl, inputs: [enrich], path: {out}/events.jsonl }}
  - {{ id: lake, type: parquet, inputs: [enrich], path: {out}/parquet, row_group_size: 256 }}
  - {{ id: q, type: jsonl, inputs: [quarantine], path: {out}/quarantine.jsonl }}
"#,
        inputs = inputs.display(),
        out = out.display(),
        rules = rules.display()
    )
}

fn summary(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn component<'a>(s: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    s["components"].as_array().unwrap().iter().find(|c| c["id"] == id).unwrap()
}

#[test]
fn files_through_every_operator_same_output_for_one_and_two_workers() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("in");
    let lines = write_inputs(&inputs);
    let mut outs = Vec::new();
    for workers in [1, 2] {
        let out = dir.path().join(format!("out{workers}"));
        let spec_path = write(dir.path(), &format!("spec{workers}.yaml"), &spec(&inputs, &out));
        let summary_path = dir.path().join(format!("summary{workers}.json"));
        let r = ward(&[
            "run",
            &spec_path,
            "--workers",
            &workers.to_string(),
            "-q",
            "--summary-json",
            &summary_path.to_string_lossy(),
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        outs.push((out, summary(&summary_path)));
    }
    let (out1, s1) = &outs[0];
    let (out2, _) = &outs[1];

    // Same records, whatever the worker count.
    let events = sorted_lines(&out1.join("events.jsonl"));
    assert_eq!(events, sorted_lines(&out2.join("events.jsonl")));
    assert_eq!(sorted_lines(&out1.join("quarantine.jsonl")), sorted_lines(&out2.join("quarantine.jsonl")));

    // The ledger: every record read is an event, filtered (headers) or quarantined.
    for c in s1["components"].as_array().unwrap() {
        assert_eq!(c["ledger_ok"], true, "{c}");
    }
    let read = component(s1, "files")["in"].as_u64().unwrap();
    assert_eq!(read as usize, lines);
    let quarantined: u64 =
        s1["components"].as_array().unwrap().iter().map(|c| c["quarantined"].as_u64().unwrap()).sum();
    let filtered: u64 = s1["components"].as_array().unwrap().iter().map(|c| c["filtered"].as_u64().unwrap()).sum();
    assert_eq!(events.len() as u64 + quarantined + filtered, read);
    assert_eq!(filtered, 4, "Zeek header lines");
    let q = sorted_lines(&out1.join("quarantine.jsonl"));
    assert_eq!(q.len() as u64, quarantined);

    // Every malformed line is quarantined with its reason and position.
    let reasons: Vec<(String, String, u64)> = q
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let file = v["ward.partition"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
            (v["reason"].as_str().unwrap().to_string(), file, v["ward.offset"].as_u64().unwrap())
        })
        .collect();
    for expected in [
        ("invalid_timestamp", "a-windows.jsonl", 501),
        ("invalid_json", "a-windows.jsonl", 502),
        ("invalid_syslog", "b-auth.log", 401),
        ("invalid_zeek", "c-conn.log", 305),
        ("invalid_utf8", "f-misc.log", 4),
        ("unknown_format", "f-misc.log", 5),
        ("empty", "f-misc.log", 6),
    ] {
        assert!(
            reasons.iter().any(|(r, f, o)| r == expected.0 && f == expected.1 && *o == expected.2),
            "missing {expected:?} in {reasons:?}"
        );
    }
    assert!(reasons.iter().any(|(r, f, _)| r == "read_error" && f == "e-fw-truncated.log.gz"), "{reasons:?}");

    // Normalized and enriched content.
    let all: Vec<serde_json::Value> = events.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let by_dataset = |d: &str| all.iter().filter(|e| e["event.dataset"] == d).count();
    assert_eq!(by_dataset("windows.security"), 500);
    assert_eq!(by_dataset("linux.auth"), 400);
    assert_eq!(by_dataset("zeek.conn"), 300);
    assert!(by_dataset("fortigate.traffic") >= 300);
    let ti_hits = all.iter().filter(|e| e.get("threat.indicator.matched").is_some()).count();
    assert!(ti_hits > 500, "TI hits: {ti_hits}");

    // Parquet, read back by pyarrow: the same events with typed ECS-lite columns.
    let out = python(
        r#"
import sys, pyarrow.parquet as pq, pyarrow as pa
t = pq.read_table(sys.argv[1])
print(t.num_rows)
print(t.schema.field('@timestamp').type, t.schema.field('source.ip').type, t.schema.field('destination.port').type)
ds = t.column('event.dataset').to_pylist()
print(ds.count('zeek.conn'))
print(sorted(set(t.column('ward.source').to_pylist())))
"#,
        &[&out1.join("parquet").to_string_lossy()],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].parse::<usize>().unwrap(), events.len());
    assert_eq!(lines[1], "timestamp[ms, tz=UTC] string int64");
    assert_eq!(lines[2], "300");
    assert_eq!(lines[3], "['files']");
}

#[test]
fn demo_runs_on_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let r = ward(&["demo", "--out", &out.to_string_lossy(), "--count", "30000", "--workers", "2", "--admin", ""]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("30000 records read"), "{}", r.stderr);
    assert!(!r.stderr.contains("MISMATCH"), "{}", r.stderr);
    let py = python(
        r#"
import sys, json, collections, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1] + '/out/demo/events')
cols = set(t.column_names)
need = {'@timestamp', 'event.dataset', 'host.name', 'user.name', 'source.ip', 'destination.ip', 'process.command_line', 'ward.risk_score', 'threat.indicator.matched', 'ext'}
print(t.num_rows, sorted(need - cols))
q = [json.loads(l) for l in open(sys.argv[1] + '/out/demo/quarantine.jsonl')]
print(sorted(collections.Counter(r['reason'] for r in q).items()))
c = [json.loads(l) for l in open(sys.argv[1] + '/out/demo/cases.jsonl')]
print(json.dumps(sorted(collections.Counter(r['kind'] for r in c).items())))
v = [json.loads(l) for l in open(sys.argv[1] + '/out/demo/views.jsonl')]
print(json.dumps(sorted(collections.Counter(r['view'] for r in v if r['diff'] == 1))))
"#,
        &[&out.to_string_lossy()],
    );
    let mut lines = py.lines();
    let first = lines.next().unwrap();
    assert!(first.ends_with(" []"), "missing ECS-lite columns: {first}");
    let rows: usize = first.split(' ').next().unwrap().parse().unwrap();
    assert!(rows > 29_900 && rows < 30_000, "{rows}");
    let reasons = lines.next().unwrap();
    for r in ["invalid_json", "invalid_syslog", "invalid_utf8", "invalid_timestamp", "unknown_format"] {
        assert!(reasons.contains(r), "{reasons}");
    }
    // Cases: opened by the alerts, joined per host, and with nobody acknowledging, every
    // opened case is warned about and breaches its acknowledge deadline by the end of input.
    let kinds: std::collections::BTreeMap<String, u64> =
        serde_json::from_str::<Vec<(String, u64)>>(lines.next().unwrap()).unwrap().into_iter().collect();
    let opened = kinds.get("case.opened").copied().unwrap_or(0);
    assert!(opened > 0, "{kinds:?}");
    assert!(kinds.get("case.joined").copied().unwrap_or(0) > 0, "{kinds:?}");
    assert_eq!(kinds.get("sla.breached").copied(), Some(2 * opened), "acknowledge and contain: {kinds:?}");
    assert_eq!(kinds.get("sla.warning").copied(), Some(2 * opened), "{kinds:?}");
    // The demo's views write their changes.
    let views: Vec<String> = serde_json::from_str(lines.next().unwrap()).unwrap();
    for v in [
        "alerts_per_rule_hour",
        "events_per_source_minute",
        "risk_per_host_5m",
        "source_ips_per_rule_day",
        "top_hosts_by_alerts",
    ] {
        assert!(views.iter().any(|x| x == v), "{v}: {views:?}");
    }
}

#[test]
fn metrics_endpoint_passes_promtool_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = dir.path().join("events.jsonl");
    let spec_path = write(
        dir.path(),
        "spec.yaml",
        &format!(
            r#"name: live
sources:
  - {{ id: gen, type: generator, count: 0, rate: 4000, malformed_every: 100 }}
operators:
  - {{ id: parse, type: parse, inputs: [gen] }}
  - {{ id: normalize, type: normalize, inputs: [parse] }}
  - {{ id: top_users, type: view, inputs: [normalize], group_by: [user.name], measures: [{{name: events, fn: count}}], top: {{k: 3, by: events}} }}
  - {{ id: per_dataset, type: view, inputs: [normalize], group_by: [event.dataset], window: {{size: 1m}}, measures: [{{name: events, fn: count}}, {{name: hosts, fn: count_distinct, field: host.name}}] }}
sinks:
  - {{ id: out, type: jsonl, inputs: [parse], path: {out} }}
  - {{ id: q, type: jsonl, inputs: [quarantine], path: {dir}/q.jsonl }}
  - {{ id: gauges, type: metrics, inputs: [top_users, per_dataset] }}
"#,
            out = out.display(),
            dir = dir.path().display()
        ),
    );
    let summary_path = dir.path().join("summary.json");
    let mut child = std::process::Command::new(ward_bin())
        .args([
            "run",
            &spec_path,
            "--admin",
            &format!("127.0.0.1:{port}"),
            "--summary-json",
            &summary_path.to_string_lossy(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ready = false;
    while Instant::now() < deadline {
        if let Some((200, _)) = http_get(port, "/readyz") {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ready, "readyz never became 200");
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    std::thread::sleep(Duration::from_millis(1500));
    let (status, body) = http_get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    for family in [
        "ward_records_in_total{component=\"gen\"}",
        "ward_records_out_total{component=\"parse\"}",
        "ward_records_quarantined_total{component=\"parse\",reason=\"invalid_json\"}",
        "ward_batch_duration_seconds_bucket{component=\"parse\"",
        "ward_events_per_second",
        "ward_epoch",
    ] {
        assert!(body.contains(family), "{family} missing from:\n{body}");
    }
    // Views as gauges: the top 3 users, and the newest minute's rows per dataset.
    let top = body.lines().filter(|l| l.starts_with("ward_view_top_users{")).count();
    assert!((1..=3).contains(&top), "{top} top_users series in:\n{body}");
    assert!(body.contains("ward_view_per_dataset{event_dataset=\""), "{body}");
    assert!(body.contains("measure=\"hosts\""), "{body}");
    let metrics_file = write(dir.path(), "metrics.txt", &body);
    let check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&metrics_file).unwrap())
        .output()
        .expect("promtool is installed by the test command");
    assert!(
        check.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // SIGTERM: sources stop, in-flight batches drain, sinks flush, exit 0.
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "ward did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    let s = summary(&summary_path);
    let written = std::fs::read_to_string(&out).unwrap().lines().count() as u64;
    assert_eq!(component(&s, "out")["out"].as_u64().unwrap(), written, "everything counted was flushed");
    assert!(written > 1000);
    assert_eq!(component(&s, "gen")["in"], component(&s, "parse")["in"], "nothing in flight was lost");
}

#[test]
fn stdin_source_to_stdout_sink() {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = write(
        dir.path(),
        "spec.yaml",
        r#"name: pipe
settings: { admin_listen: "" }
sources:
  - { id: in, type: stdin }
operators:
  - { id: parse, type: parse, inputs: [in] }
  - { id: normalize, type: normalize, inputs: [parse], packs: [builtin:linux-auth, builtin:generic-json] }
sinks:
  - { id: out, type: jsonl, inputs: [normalize], path: "-" }
  - { id: q, type: jsonl, inputs: [quarantine], path: "-" }
"#,
    );
    let mut child = std::process::Command::new(ward_bin())
        .args(["run", &spec_path, "--workers", "2", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "<38>Jan  5 09:00:00 web-01 sshd[7]: Failed password for root from 203.0.113.9 port 4000 ssh2")
            .unwrap();
        writeln!(stdin, r#"{{"time":"2026-01-05T09:00:01Z","user":"bob","msg":"hi"}}"#).unwrap();
        writeln!(stdin, "not parseable at all").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().any(|e| e["user.name"] == "root" && e["source.ip"] == "203.0.113.9" && e["ward.offset"] == 1));
    assert!(lines.iter().any(|e| e["user.name"] == "bob" && e["@timestamp"] == "2026-01-05T09:00:01.000Z"));
    assert!(lines
        .iter()
        .any(|e| e["reason"] == "unknown_format" && e["ward.partition"] == "stdin" && e["ward.offset"] == 3));
}

#[test]
fn sigint_while_a_sink_hangs_is_acknowledged_and_the_drain_is_bounded() {
    // The events sink is a FIFO nobody reads: its writes block, as in an outage.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("stuck.jsonl");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let spec = write(
        dir.path(),
        "spec.yaml",
        &format!(
            "name: stuck\nsettings: {{ admin_listen: \"\", shutdown_timeout: 2s }}\nsources:\n  - {{ id: gen, type: generator, count: 0, rate: 1000 }}\noperators:\n  - {{ id: parse, type: parse, inputs: [gen] }}\nsinks:\n  - {{ id: out, type: jsonl, inputs: [parse], path: {} }}\n  - {{ id: q, type: jsonl, inputs: [quarantine], path: {}/q.jsonl }}\n",
            fifo.display(),
            dir.path().display()
        ),
    );
    let mut child = std::process::Command::new(ward_bin())
        .args(["run", &spec, "--quiet"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let sent = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let signalled = Instant::now();
    let deadline = signalled + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < deadline, "ward kept waiting on the stuck sink after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    let waited = signalled.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("signal received: sources stopped"), "{stderr}");
    assert!(stderr.contains("did not finish within 2s"), "{stderr}");
    assert!(waited >= Duration::from_secs(2), "exited before the shutdown timeout: {waited:?}");
}

/// Suppression and SLA read host and user fields of alerts. Without the event in the alert
/// (`include_event: false`) sigma-match copies those fields into the alert, so both give the
/// same suppressed alerts and the same cases as with the event.
#[test]
fn alerts_without_their_event_carry_the_fields_suppress_and_sla_read() {
    let run = |include_event: bool| {
        let dir = tempfile::tempdir().unwrap();
        let rules = repo().join("rules");
        let spec = write(
            dir.path(),
            "spec.yaml",
            &format!(
                r#"name: keys
settings: {{admin_listen: ""}}
sources:
  - {{id: gen, type: generator, count: 20000, seed: 7}}
operators:
  - {{id: parse, type: parse, inputs: [gen], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse], packs: [builtin:windows, builtin:linux-auth, builtin:zeek, builtin:fortigate, builtin:generic-json]}}
  - {{id: enrich, type: enrich, inputs: [normalize], assets: {rules}/assets/demo-assets.csv, watch: false}}
  - {{id: detect, type: sigma-match, inputs: [enrich], rules: [{rules}/sigma/ward], watch: false, include_event: {include_event}}}
  - {{id: suppress, type: suppress, inputs: [detect], window: 1h}}
  - {{id: sla, type: sla, inputs: [suppress]}}
sinks:
  - {{id: alerts, type: jsonl, inputs: [suppress], path: alerts.jsonl}}
  - {{id: cases, type: jsonl, inputs: [sla], path: cases.jsonl}}
  - {{id: q, type: jsonl, inputs: [quarantine], path: q.jsonl}}
"#,
                rules = rules.display()
            ),
        );
        let r = ward(&["run", &spec, "-q"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let alerts: Vec<String> = sorted_lines(&dir.path().join("alerts.jsonl"))
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!("{} {} {}", v["alert_id"], v["rule"]["id"], v["suppression"]["count"])
            })
            .collect();
        (alerts, sorted_lines(&dir.path().join("cases.jsonl")))
    };
    let (with_event, cases_with_event) = run(true);
    let (without, cases_without) = run(false);
    let rules: std::collections::BTreeSet<&str> = with_event.iter().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert!(with_event.len() > rules.len(), "suppression keeps alerts of different hosts apart: {with_event:?}");
    assert_eq!(without, with_event, "the same alerts survive suppression");
    assert!(!cases_with_event.is_empty());
    assert_eq!(cases_without, cases_with_event, "the same cases, entities and priorities");
}
