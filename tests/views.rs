//! Views through the `ward` binary: replaying a view's change stream (+1 / −1 rows) gives
//! exactly the view recomputed from scratch — by ClickHouse's engine (chdb) over the events
//! Ward wrote to Parquet, and over the alerts it wrote — for 1 and 4 workers, at checkpoints
//! where runs were stopped, and after kill -9 and recovery onto another worker count; and
//! ClickHouse receives view changes exactly once.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;

/// Settings, the generator and parse → normalize → detect, shared by the specs below.
fn head() -> String {
    format!(
        r#"settings:
  epoch_interval_ms: 100
  admin_listen: ""
  checkpoint: {{dir: checkpoints, interval: 300ms, retain: 2}}
sources:
  - {{id: gen, type: generator, count: 30000, rate: 10000, seed: 11}}
operators:
  - {{id: parse, type: parse, inputs: [gen], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse], packs: [builtin:windows, builtin:linux-auth, builtin:zeek, builtin:fortigate, builtin:generic-json]}}
  - {{id: detect, type: sigma-match, inputs: [normalize], rules: ["{rules}"], watch: false, include_event: false}}
"#,
        rules = repo().join("rules/sigma/ward").display()
    )
}

fn spec(dir: &Path) {
    write(
        dir,
        "spec.yaml",
        &format!(
            r#"name: views
{head}  - id: per_dataset
    type: view
    inputs: [normalize]
    group_by: [event.dataset]
    window: {{size: 1m}}
    measures:
      - {{name: events, fn: count}}
      - {{name: hosts, fn: count_distinct, field: host.name}}
  - id: bytes_sliding
    type: view
    inputs: [normalize]
    group_by: [host.name]
    window: {{size: 3m, slide: 1m}}
    measures:
      - {{name: total, fn: sum, field: network.bytes}}
      - {{name: mean, fn: avg, field: network.bytes}}
      - {{name: least, fn: min, field: network.bytes}}
      - {{name: most, fn: max, field: network.bytes}}
  - id: top_users
    type: view
    inputs: [normalize]
    group_by: [user.name]
    measures: [{{name: events, fn: count}}]
    top: {{k: 3, by: events}}
  - id: alerts_per_rule
    type: view
    inputs: [detect]
    group_by: [rule.id]
    window: {{size: 1m}}
    measures: [{{name: alerts, fn: count}}]
sinks:
  - {{id: events, type: parquet, inputs: [normalize], path: out/events}}
  - {{id: alerts, type: jsonl, inputs: [detect], path: out/alerts.jsonl}}
  - {{id: v1, type: jsonl, inputs: [per_dataset], path: out/per_dataset.jsonl}}
  - {{id: v2, type: jsonl, inputs: [bytes_sliding], path: out/bytes_sliding.jsonl}}
  - {{id: v3, type: jsonl, inputs: [top_users], path: out/top_users.jsonl}}
  - {{id: v4, type: jsonl, inputs: [alerts_per_rule], path: out/alerts_per_rule.jsonl}}
  - {{id: q, type: jsonl, inputs: [quarantine], path: out/quarantine.jsonl}}
"#,
            head = head()
        ),
    );
}

/// Replays every view's changes and compares them with the views recomputed by chdb over the
/// run's Parquet events and by Python over its alerts; prints one line per view.
const CHECK: &str = r#"
import sys, json, collections, glob, chdb
out = sys.argv[1]

def replay(name):
    rows = collections.Counter()
    version = {}
    changes = [json.loads(line) for line in open(f"{out}/{name}.jsonl")]
    changes.sort(key=lambda c: (c["epoch"], c["diff"]))
    for c in changes:
        assert c["view"] == name and c["diff"] in (1, -1), c
        key = (c.get("window_start", "")[:19], tuple(c["group"].values()))
        row = (key, tuple(sorted(c["measures"].items())))
        # A row's insertion carries its epoch as version, its retraction the same version.
        if c["diff"] == 1:
            assert c["version"] == c["epoch"], c
            version[row] = c["version"]
        else:
            assert version.get(row) == c["version"], (c, version.get(row))
        rows[row] += c["diff"]
    bad = [r for r, n in rows.items() if n not in (0, 1)]
    assert not bad, f"{name}: a row inserted twice or retracted without insert: {bad[:3]}"
    live = [r for r, n in rows.items() if n == 1]
    keys = collections.Counter(k for k, _ in live)
    assert max(keys.values(), default=1) == 1, f"{name}: two live rows for one key"
    return {k: dict(m) for k, m in live}

def sql(q):
    res = chdb.query(q.replace("EVENTS", f"file('{out}/events/**/*.parquet', Parquet)"), "JSONCompact")
    return json.loads(res.bytes())["data"] if res.bytes() else []

def same(name, got, want):
    def norm(m):
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in m.items()}
    got = {k: norm(m) for k, m in got.items()}
    want = {k: norm(m) for k, m in want.items()}
    if got != want:
        diff = [(k, got.get(k), want.get(k)) for k in sorted(set(got) | set(want), key=str) if got.get(k) != want.get(k)]
        print(f"{name}: MISMATCH {len(diff)} of {len(want)}: {diff[:4]}")
    else:
        print(f"{name}: ok {len(want)}")

ts = "formatDateTime(w, '%Y-%m-%dT%H:%i:%S', 'UTC')"
want = {}
for w, d, n, h in sql(f"SELECT {ts}, `event.dataset`, count(), uniqExact(`host.name`) FROM (SELECT toStartOfMinute(`@timestamp`) w, * FROM EVENTS) GROUP BY w, `event.dataset`"):
    want[(w, (d,))] = {"events": int(n), "hosts": int(h)}
same("per_dataset", replay("per_dataset"), want)

want = {}
for w, host, total, mean, least, most in sql(f"""
    SELECT {ts}, `host.name`, sum(`network.bytes`), avg(`network.bytes`), min(`network.bytes`), max(`network.bytes`)
    FROM (SELECT toStartOfMinute(`@timestamp`) - toIntervalMinute(arrayJoin([0, 1, 2])) w, * FROM EVENTS)
    GROUP BY w, `host.name`"""):
    want[(w, (host,))] = {"total": int(total or 0), "mean": None if mean is None or mean != mean else float(mean),
                          "least": None if least is None else int(least), "most": None if most is None else int(most)}
same("bytes_sliding", replay("bytes_sliding"), want)

counts = sql("SELECT `user.name`, count() c FROM EVENTS GROUP BY `user.name` ORDER BY c DESC, `user.name` ASC NULLS FIRST LIMIT 3")
same("top_users", replay("top_users"), {("", (u,)): {"events": int(c)} for u, c in counts})

per_rule = collections.Counter()
for line in open(f"{out}/alerts.jsonl"):
    a = json.loads(line)
    t = a["event_time_ms"] // 60000 * 60
    import datetime
    w = datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    per_rule[(w, (a["rule"]["id"],))] += 1
same("alerts_per_rule", replay("alerts_per_rule"), {k: {"alerts": n} for k, n in per_rule.items()})
"#;

fn check(dir: &Path) -> String {
    let report = python(CHECK, &[&dir.join("out").to_string_lossy()]);
    assert_eq!(report.lines().count(), 4, "{report}");
    assert!(!report.contains("MISMATCH"), "{report}");
    report
}

/// Runs the spec and stops it with SIGTERM after `after` (the run finishes by itself if the
/// input ends first).
fn stop_after(dir: &Path, workers: usize, after: Duration) {
    let child = std::process::Command::new(ward_bin())
        .args(["run", dir.join("spec.yaml").to_str().unwrap(), "--workers", &workers.to_string(), "-q"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn run(dir: &Path, workers: usize) {
    let r = ward(&["run", dir.join("spec.yaml").to_str().unwrap(), "--workers", &workers.to_string(), "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn replayed_view_changes_equal_the_views_recomputed_for_any_worker_count_at_stops_and_through_kill_9() {
    let mut reports = Vec::new();
    for workers in [1, 4] {
        let dir = tempfile::tempdir().unwrap();
        spec(dir.path());
        run(dir.path(), workers);
        reports.push(check(dir.path()));
        // Windows close as the watermark passes: retractions happened, and only the rows of
        // closed windows' last state remain.
        let changes = std::fs::read_to_string(dir.path().join("out/per_dataset.jsonl")).unwrap();
        assert!(changes.contains(r#""diff":-1"#), "rows are updated by retraction");
    }
    assert_eq!(reports[0], reports[1], "1 and 4 workers");
    // Views hold rows: the check above compared at least this many.
    for (view, least) in [("per_dataset", 10), ("bytes_sliding", 10), ("top_users", 3), ("alerts_per_rule", 5)] {
        let n: usize = reports[0]
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{view}: ok ")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(n >= least, "{view}: {n} rows: {}", reports[0]);
    }

    // Stopped (SIGTERM: the run writes a closing checkpoint, not at the end of the input) at
    // moments spread over the run, each time resumed: at every stop, the changes the sinks
    // hold replay to the views of exactly the events they hold.
    let dir = tempfile::tempdir().unwrap();
    spec(dir.path());
    let mut stops = Vec::new();
    for ms in [900, 1200, 1500] {
        stop_after(dir.path(), 2, Duration::from_millis(ms));
        let report = check(dir.path());
        let events: usize =
            report.lines().find_map(|l| l.strip_prefix("per_dataset: ok ")).and_then(|n| n.parse().ok()).unwrap_or(0);
        stops.push(events);
    }
    let all: usize =
        reports[0].lines().find_map(|l| l.strip_prefix("per_dataset: ok ")).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(stops[2] > 0 && stops[0] < all, "stops in the middle of the input: {stops:?} of {all} rows");
    run(dir.path(), 4);
    assert_eq!(check(dir.path()), reports[0], "stopped three times, then to the end on 4 workers");

    // Killed at moments spread over the run on 2 workers, then run to the end on 3: the changes
    // the sinks hold replay to the same views (no change lost or repeated, no restored row
    // emitted twice).
    let dir = tempfile::tempdir().unwrap();
    spec(dir.path());
    let spec = dir.path().join("spec.yaml");
    for ms in [200, 600, 0] {
        run_past_a_checkpoint_and_kill(&spec, 2, &dir.path().join("checkpoints"), Duration::from_millis(ms));
    }
    let list = ward(&["checkpoint", "list", dir.path().join("checkpoints").to_str().unwrap()]);
    assert!(!list.stdout.trim().is_empty(), "the killed runs left checkpoints to resume from: {}", list.stderr);
    let partial = std::fs::read_to_string(dir.path().join("out/per_dataset.jsonl")).unwrap_or_default();
    assert!(!partial.is_empty(), "the killed runs committed view changes before the last run");
    run(dir.path(), 3);
    assert_eq!(check(dir.path()), reports[0], "after kill -9 and recovery");
}

/// Sums each row's diffs over a view's change stream: the rows left (non-zero), as
/// `group values | measures` with their sum.
fn replay_rows(path: &Path) -> BTreeMap<String, i64> {
    let mut rows: BTreeMap<String, i64> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let c: serde_json::Value = serde_json::from_str(line).unwrap();
        *rows.entry(format!("{} | {}", c["group"], c["measures"])).or_default() += c["diff"].as_i64().unwrap();
    }
    rows.retain(|_, n| *n != 0);
    rows
}

#[test]
fn a_view_of_cases_whose_deadlines_passed_while_stopped_replays_to_the_cases() {
    // Processing-time SLA deadlines that pass while the pipeline is stopped fire as the resumed
    // run starts. Their case records must come after the restored state's re-feed (a later
    // epoch than the checkpoint), or the view would update its rows from nothing and leave the
    // rows of before the stop un-retracted.
    let dir = tempfile::tempdir().unwrap();
    let policy = std::fs::read_to_string(repo().join("rules/sla/default.yaml")).unwrap();
    let short = policy
        .replace("warning: 0.8", "warning: 0.95")
        .replace("acknowledge: 15m", "acknowledge: 2s")
        .replace("acknowledge: 1h", "acknowledge: 2s")
        .replace("acknowledge: 4h", "acknowledge: 2s")
        .replace("contain: 4h", "contain: 3s")
        .replace("contain: 24h", "contain: 3s")
        .replace("contain: 72h", "contain: 3s");
    assert_eq!(short.matches(": 2s").count() + short.matches(": 3s").count(), 6, "{short}");
    write(dir.path(), "policy.yaml", &short);
    write(
        dir.path(),
        "spec.yaml",
        &format!(
            r#"name: resumed-cases
{head}  - {{id: sla, type: sla, inputs: [detect], policy: policy.yaml, timers: processing_time}}
  - {{id: per_priority, type: view, inputs: [sla], group_by: [priority], measures: [{{name: records, fn: count}}]}}
sinks:
  - {{id: cases, type: jsonl, inputs: [sla], path: out/cases.jsonl}}
  - {{id: changes, type: jsonl, inputs: [per_priority], path: out/per_priority.jsonl}}
"#,
            head = head()
        ),
    );
    stop_after(dir.path(), 2, Duration::from_millis(1200));
    let cases = |kind: Option<&str>| -> BTreeMap<String, i64> {
        let mut n: BTreeMap<String, i64> = BTreeMap::new();
        for line in std::fs::read_to_string(dir.path().join("out/cases.jsonl")).unwrap_or_default().lines() {
            let c: serde_json::Value = serde_json::from_str(line).unwrap();
            if kind.map_or(true, |k| c["kind"] == k) {
                *n.entry(c["priority"].as_str().unwrap().to_string()).or_default() += 1;
            }
        }
        n
    };
    let before = cases(None);
    assert!(!before.is_empty(), "the first run opened cases");
    assert!(cases(Some("sla.breached")).is_empty(), "no deadline passed before the stop: {before:?}");
    // Past every deadline of the cases opened before the stop.
    std::thread::sleep(Duration::from_secs(4));
    run(dir.path(), 2);
    assert!(!cases(Some("sla.breached")).is_empty(), "deadlines fired in the resumed run");
    let want: BTreeMap<String, i64> =
        cases(None).into_iter().map(|(p, n)| (format!(r#"{{"priority":"{p}"}} | {{"records":{n}}}"#), 1)).collect();
    assert_eq!(replay_rows(&dir.path().join("out/per_priority.jsonl")), want);
}

#[test]
fn a_bad_view_is_refused_with_its_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    for (bad, reason) in [
        ("measures: []", "`measures` is empty"),
        ("measures: [{name: n, fn: sum}]", "needs a `field`"),
        ("measures: [{name: n, fn: count}]\n    window: {size: 5m, slide: 2m}", "`slide` must divide `size`"),
        ("measures: [{name: n, fn: count}]\n    top: {k: 3, by: nope}", "no measure is named `nope`"),
        ("measures: [{name: n, fn: median}]", "median"),
    ] {
        write(
            dir.path(),
            "spec.yaml",
            &format!(
                "name: bad\nsources:\n  - {{id: gen, type: generator, count: 10}}\noperators:\n  - {{id: parse, type: parse, inputs: [gen]}}\n  - id: v\n    type: view\n    inputs: [parse]\n    {bad}\nsinks:\n  - {{id: out, type: jsonl, inputs: [v], path: out.jsonl}}\n"
            ),
        );
        let r = ward(&["validate", dir.path().join("spec.yaml").to_str().unwrap()]);
        assert_eq!(r.code, 2, "{bad}: {}", r.stdout);
        let text = format!("{}{}", r.stdout, r.stderr);
        assert!(text.contains("spec.yaml:6:") || text.contains("spec.yaml:9:"), "{bad}: {text}");
        assert!(text.contains(reason), "{bad}: {text}");
    }
    // A view's changes go to sinks that take them; ClickHouse events tables do not.
    write(
        dir.path(),
        "spec.yaml",
        "name: bad\nsources:\n  - {id: gen, type: generator, count: 10}\noperators:\n  - {id: parse, type: parse, inputs: [gen]}\n  - {id: v, type: view, inputs: [parse], measures: [{name: n, fn: count}]}\nsinks:\n  - {id: out, type: parquet, inputs: [v], path: out}\n",
    );
    let r = ward(&["validate", dir.path().join("spec.yaml").to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(format!("{}{}", r.stdout, r.stderr).contains("views"), "{}{}", r.stdout, r.stderr);
}

/// A spec whose views go to ClickHouse tables (and to JSONL, the reference).
fn clickhouse_spec(dir: &Path, url: &str) {
    let mut sinks = String::new();
    for v in ["per_dataset", "top_users", "alerts_per_rule"] {
        sinks.push_str(&format!(
            "  - {{id: ch_{v}, type: clickhouse, inputs: [{v}], url: \"{url}\", database: ward, table: view_{v}, compression: false}}\n  - {{id: j_{v}, type: jsonl, inputs: [{v}], path: out/{v}.jsonl}}\n"
        ));
    }
    write(
        dir,
        "spec.yaml",
        &format!(
            r#"name: views-ch
{head}  - {{id: per_dataset, type: view, inputs: [normalize], group_by: [event.dataset], window: {{size: 1m}}, measures: [{{name: events, fn: count}}, {{name: hosts, fn: count_distinct, field: host.name}}]}}
  - {{id: top_users, type: view, inputs: [normalize], group_by: [user.name], measures: [{{name: events, fn: count}}], top: {{k: 3, by: events}}}}
  - {{id: alerts_per_rule, type: view, inputs: [detect], group_by: [rule.id], window: {{size: 1m}}, measures: [{{name: alerts, fn: count}}]}}
sinks:
{sinks}"#,
            head = head()
        ),
    );
}

/// The live rows a JSONL change stream replays to, as sorted TSV lines `key… measures…`.
fn replayed(path: &Path, columns: &[&str]) -> Vec<String> {
    let mut rows: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for l in std::fs::read_to_string(path).unwrap().lines() {
        let c: serde_json::Value = serde_json::from_str(l).unwrap();
        let mut cells = Vec::new();
        if let Some(w) = c["window_start"].as_str() {
            cells.push(w[..19].replace('T', " "));
        }
        for col in columns {
            let v = c["group"].get(*col).or_else(|| c["measures"].get(*col)).cloned().unwrap_or_default();
            cells.push(match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => String::new(),
                v => v.to_string(),
            });
        }
        *rows.entry(cells.join("\t")).or_default() += c["diff"].as_i64().unwrap();
    }
    assert!(rows.values().all(|n| *n == 0 || *n == 1), "{path:?}: a row inserted twice");
    rows.into_iter().filter(|(_, n)| *n == 1).map(|(r, _)| r).collect()
}

#[test]
fn clickhouse_receives_view_changes_exactly_once_through_kill_9() {
    let ch = ClickHouse::start();
    let dir = tempfile::tempdir().unwrap();
    clickhouse_spec(dir.path(), &ch.url());
    let spec = dir.path().join("spec.yaml");
    let ddl = ward(&["views", "ddl", spec.to_str().unwrap(), "--dialect", "18.16"]);
    assert_eq!(ddl.code, 0, "{}", ddl.stderr);
    ch.apply(&format!("CREATE DATABASE IF NOT EXISTS ward;\n{}", ddl.stdout));
    for ms in [1000, 1500, 800] {
        run_and_kill(&spec, 2, Duration::from_millis(ms));
    }
    run(dir.path(), 3);
    for (view, cols, windowed) in [
        ("per_dataset", vec!["event.dataset", "events", "hosts"], true),
        ("top_users", vec!["user.name", "events"], false),
        ("alerts_per_rule", vec!["rule.id", "alerts"], true),
    ] {
        let want = replayed(&dir.path().join(format!("out/{view}.jsonl")), &cols);
        assert!(want.len() >= 3, "{view}: {want:?}");
        let select: Vec<String> = cols.iter().map(|c| format!("`{}`", c.replace('.', "_"))).collect();
        let window = if windowed { "toString(window_start), " } else { "" };
        // Every insertion met its retraction (same version) but the live rows: summing the
        // signs per key and measures leaves exactly the replayed rows, each once.
        let sql = format!(
            "SELECT {window}{cols} FROM ward.view_{view} GROUP BY {window}{cols} HAVING sum(sign) = 1 ORDER BY {window}{cols}",
            cols = select.join(", ")
        );
        // TSV escapes backslashes (`CORP\\bob`).
        let mut got: Vec<String> = ch.query(&sql).lines().map(|l| l.replace("\\\\", "\\")).collect();
        got.sort();
        assert_eq!(got, want, "{view}: ClickHouse vs the JSONL changes");
        let bad = ch.query(&format!(
            "SELECT count() FROM (SELECT {window}{cols} FROM ward.view_{view} GROUP BY {window}{cols} HAVING sum(sign) NOT IN (0, 1))",
            cols = select.join(", ")
        ));
        assert_eq!(bad.trim(), "0", "{view}: a row inserted twice or retracted twice");
        let dupes = ch.query(&format!(
            "SELECT count() FROM (SELECT ward_id FROM ward.view_{view} GROUP BY ward_id HAVING count() > 1)"
        ));
        assert_eq!(dupes.trim(), "0", "{view}: a change inserted twice");
    }
}

#[test]
fn view_tables_run_on_modern_clickhouse_and_collapse_retracted_rows() {
    // chdb embeds a current ClickHouse: create the shipped view tables (those of the detection
    // pipeline, which the dashboards read), insert a row, its retraction and its successor,
    // and read the view with FINAL.
    let spec = repo().join("pipelines/detection.yaml");
    for (dialect, file) in [("modern", "views.sql"), ("18.16", "views-18.16.sql")] {
        let ddl = ward(&["views", "ddl", spec.to_str().unwrap(), "--dialect", dialect]);
        assert_eq!(ddl.code, 0, "{}", ddl.stderr);
        let shipped = std::fs::read_to_string(repo().join("pipelines/clickhouse").join(file)).unwrap();
        let body: String = shipped.split_inclusive('\n').skip(3).collect();
        assert!(
            body == ddl.stdout,
            "pipelines/clickhouse/{file} is not what `ward views ddl pipelines/detection.yaml --dialect {dialect}` prints: regenerate it"
        );
    }
    let ddl = ward(&["views", "ddl", spec.to_str().unwrap()]);
    assert_eq!(ddl.stdout.matches("VersionedCollapsingMergeTree(sign, version)").count(), 13, "{}", ddl.stdout);
    let statements = ward_connectors::sinks::clickhouse_ddl::statements(&ddl.stdout);
    let dir = tempfile::tempdir().unwrap();
    let out = python(
        r#"
import sys, json
from chdb import session
s = session.Session(sys.argv[2])
s.query("CREATE DATABASE IF NOT EXISTS ward")
for stmt in json.loads(sys.argv[1]):
    s.query(stmt)
t = "ward.view_alerts_per_rule_hour"
cols = "(window_start, window_end, rule_id, rule_level, alerts, sign, version, epoch, ward_id)"
w = "toDateTime64('2026-01-05 08:00:00', 3, 'UTC'), toDateTime64('2026-01-05 09:00:00', 3, 'UTC')"
s.query(f"INSERT INTO {t} {cols} VALUES ({w}, 'r1', 'high', 4, 1, 3, 3, 1)")
s.query(f"INSERT INTO {t} {cols} VALUES ({w}, 'r1', 'high', 4, -1, 3, 5, 2), ({w}, 'r1', 'high', 5, 1, 5, 5, 3)")
print(s.query(f"SELECT rule_id, alerts, toString(window_start) FROM {t} FINAL", "TSV").data().strip())
print(s.query(f"SELECT count() FROM {t}_inserted", "TSV").data().strip())
print(s.query("SELECT name, type FROM system.columns WHERE database = 'ward' AND table = 'view_risk_per_host_5m' ORDER BY name", "TSV").data().strip())
"#,
        &[&serde_json::to_string(&statements).unwrap(), &dir.path().to_string_lossy()],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "r1\t5\t2026-01-05 08:00:00.000", "{out}");
    assert_eq!(lines[1], "3", "{out}");
    for col in
        ["host_name\tLowCardinality(String)", "risk_avg\tNullable(Float64)", "risk_max\tNullable(Int64)", "sign\tInt8"]
    {
        assert!(lines.contains(&col), "{col}: {out}");
    }
}
