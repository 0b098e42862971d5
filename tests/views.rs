//! Views through the `ward` binary: replaying a view's change stream (+1 / −1 rows) gives
//! exactly the view recomputed from scratch — by ClickHouse's engine (chdb) over the events
//! Ward wrote to Parquet, and over the alerts it wrote — for 1 and 4 workers, and after
//! kill -9 and recovery onto another worker count.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn spec(dir: &Path) {
    let rules = repo().join("rules/sigma/ward");
    write(
        dir,
        "spec.yaml",
        &format!(
            r#"name: views
settings:
  epoch_interval_ms: 100
  admin_listen: ""
  checkpoint: {{dir: checkpoints, interval: 300ms, retain: 2}}
sources:
  - {{id: gen, type: generator, count: 30000, rate: 10000, seed: 11}}
operators:
  - {{id: parse, type: parse, inputs: [gen], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse], packs: [builtin:windows, builtin:linux-auth, builtin:zeek, builtin:fortigate, builtin:generic-json]}}
  - {{id: detect, type: sigma-match, inputs: [normalize], rules: ["{rules}"], watch: false, include_event: false}}
  - id: per_dataset
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
            rules = rules.display()
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

fn run(dir: &Path, workers: usize) {
    let r = ward(&["run", dir.join("spec.yaml").to_str().unwrap(), "--workers", &workers.to_string(), "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn replayed_view_changes_equal_the_views_recomputed_for_any_worker_count_and_through_kill_9() {
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

    // Killed at moments spread over the run on 2 workers, then run to the end on 3: the changes
    // the sinks hold replay to the same views (no change lost or repeated, no restored row
    // emitted twice).
    let dir = tempfile::tempdir().unwrap();
    spec(dir.path());
    let spec = dir.path().join("spec.yaml");
    for ms in [900, 1300, 700] {
        run_and_kill(&spec, 2, Duration::from_millis(ms));
    }
    let list = ward(&["checkpoint", "list", dir.path().join("checkpoints").to_str().unwrap()]);
    assert!(!list.stdout.trim().is_empty(), "the killed runs left checkpoints to resume from: {}", list.stderr);
    let partial = std::fs::read_to_string(dir.path().join("out/per_dataset.jsonl")).unwrap_or_default();
    assert!(!partial.is_empty(), "the killed runs committed view changes before the last run");
    run(dir.path(), 3);
    assert_eq!(check(dir.path()), reports[0], "after kill -9 and recovery");
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
