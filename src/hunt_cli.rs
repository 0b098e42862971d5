//! `ward hunt`: Sigma and correlation rules over the history the parquet sink kept.
//!
//! A hunt is an ordinary pipeline run, built from the arguments: the `parquet` source (time
//! range, projection, event-time order) → `dedup` on `event.id` as the live pipelines do →
//! `sigma-match` → `correlate` → alerts as JSON lines. The same operators as a live run, so a
//! hunt and a live run over the same events and rules cannot disagree. The summary per rule
//! comes from the alerts it wrote.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde_json::{json, Value};
use ward_engine::runtime::{self, RunOptions};
use ward_engine::spec::Spec;

#[derive(clap::Args)]
pub struct HuntArgs {
    /// Sigma rule files or directories (correlation rules among them are evaluated too).
    #[arg(long, required = true, num_args = 1..)]
    rules: Vec<String>,
    /// The events: the parquet sink's directory, or its object-store location
    /// (`s3://bucket/events`, reached with the standard AWS_* environment).
    #[arg(long, value_name = "DIR_OR_URL")]
    events: String,
    /// Only events at or after this time (RFC 3339, or a date: 2026-12-01).
    #[arg(long)]
    from: Option<String>,
    /// Only events before this time.
    #[arg(long)]
    to: Option<String>,
    /// Worker threads.
    #[arg(long, short, default_value_t = 1)]
    workers: usize,
    /// Write the alerts here (JSON lines, as the live pipeline's alerts sink writes them).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not drop repeated events (the same `event.id` within 10 minutes of event time), which
    /// live pipelines drop before detection.
    #[arg(long)]
    no_dedup: bool,
    /// Sigma field mapping (as `sigma-match`'s `mapping`; default: the built-in one).
    #[arg(long)]
    mapping: Option<String>,
    /// Compare with the alerts that fired live (an alerts JSON lines file, as the live alerts
    /// sink writes them): per rule, the alerts the hunt adds, removes and keeps, keyed by rule
    /// and event (a correlation: by rule, group and window). Live alerts outside `--from`/`--to`
    /// are left out.
    #[arg(long, value_name = "LIVE_ALERTS")]
    diff: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
}

/// The pipeline a hunt runs, as a spec (JSON is YAML).
fn hunt_spec(args: &HuntArgs, alerts: &Path) -> Value {
    let mut source = json!({ "id": "history", "type": "parquet", "path": args.events });
    if let Some(f) = &args.from {
        source["from"] = f.clone().into();
    }
    if let Some(t) = &args.to {
        source["to"] = t.clone().into();
    }
    let mut operators = Vec::new();
    let mut input = "history";
    if !args.no_dedup {
        operators.push(
            json!({ "id": "dedup", "type": "dedup", "inputs": ["history"], "key": ["event.id"], "horizon": "10m" }),
        );
        input = "dedup";
    }
    let mut detect =
        json!({ "id": "detect", "type": "sigma-match", "inputs": [input], "rules": args.rules, "watch": false });
    if let Some(m) = &args.mapping {
        detect["mapping"] = m.clone().into();
    }
    operators.push(detect);
    operators.push(
        json!({ "id": "correlate", "type": "correlate", "inputs": ["detect"], "rules": args.rules, "watch": false }),
    );
    json!({
        "name": "hunt",
        "settings": { "epoch_interval_ms": 1000, "admin_listen": "" },
        "sources": [source],
        "operators": operators,
        "sinks": [{ "id": "alerts", "type": "jsonl", "inputs": ["correlate"], "path": alerts.display().to_string() }],
    })
}

pub fn run(args: HuntArgs, registry: &ward_engine::registry::Registry) -> ExitCode {
    match hunt(&args, registry) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn hunt(args: &HuntArgs, registry: &ward_engine::registry::Registry) -> anyhow::Result<ExitCode> {
    let scratch = tempfile::tempdir()?;
    let alerts = match &args.out {
        Some(p) => std::path::absolute(p)?,
        None => scratch.path().join("alerts.jsonl"),
    };
    if alerts.exists() {
        // The jsonl sink appends; a hunt's output is its own.
        std::fs::remove_file(&alerts).map_err(|e| anyhow::anyhow!("{}: {e}", alerts.display()))?;
    }
    let text = serde_json::to_string_pretty(&hunt_spec(args, &alerts))?;
    let cwd = std::env::current_dir()?;
    let spec = Spec::parse(Path::new("ward hunt"), &text, ward_engine::resources::Resources::new(&cwd), registry)
        .map_err(|errors| {
            // The spec is made from the arguments: its problems are theirs.
            let reasons: Vec<String> = errors.0.iter().map(|e| e.message.clone()).collect();
            anyhow::anyhow!("{}", reasons.join("\n"))
        })?;
    let opts = RunOptions {
        workers: args.workers,
        cluster: None,
        admin_listen: Some(String::new()),
        progress: !args.quiet,
        checkpoint_dir: None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone());
    let summary = runtime::run(&spec, &opts, stop)?;
    let rules = summarize(&alerts)?;
    let events = summary.components.iter().find(|c| c.id == "history").map_or(0, |c| c.records_out);
    let diff = match &args.diff {
        Some(live) => {
            let range = |t: &Option<String>, name, default| {
                t.as_deref()
                    .map(|t| ward_connectors::sources::parquet::parse_time(name, t))
                    .transpose()
                    .map(|t| t.unwrap_or(default))
            };
            let range = (range(&args.from, "from", i64::MIN)?, range(&args.to, "to", i64::MAX)?);
            Some(diff_alerts(&read_alerts(live, range)?, &read_alerts(&alerts, (i64::MIN, i64::MAX))?))
        }
        None => None,
    };
    if args.json {
        let mut out = json!({
            "events": events,
            "elapsed_seconds": summary.elapsed.as_secs_f64(),
            "alerts": rules.values().map(|r| r.alerts).sum::<u64>(),
            "rules": rules.values().map(RuleSummary::to_json).collect::<Vec<_>>(),
            "out": args.out.as_ref().map(|p| p.display().to_string()),
        });
        if let Some(d) = &diff {
            out["diff"] = diff_json(d);
        }
        crate::emit(&format!("{}\n", serde_json::to_string_pretty(&out)?));
    } else {
        let mut text = render(&rules, events, summary.elapsed);
        if let Some(p) = &args.out {
            text.push_str(&format!("alerts written to {}\n", p.display()));
        }
        if let (Some(d), Some(live)) = (&diff, &args.diff) {
            text.push_str(&render_diff(d, live));
        }
        crate::emit(&text);
    }
    Ok(ExitCode::SUCCESS)
}

/// What one rule found.
#[derive(Default)]
struct RuleSummary {
    id: String,
    title: String,
    level: String,
    alerts: u64,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
    hosts: BTreeMap<String, u64>,
}

impl RuleSummary {
    fn top_hosts(&self, n: usize) -> Vec<(&str, u64)> {
        let mut h: Vec<(&str, u64)> = self.hosts.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        h.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        h.truncate(n);
        h
    }

    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "title": self.title,
            "level": self.level,
            "alerts": self.alerts,
            "first_seen": self.first_ms.map(ward_engine::batch::format_timestamp_ms),
            "last_seen": self.last_ms.map(ward_engine::batch::format_timestamp_ms),
            "top_hosts": self.top_hosts(5).iter().map(|(h, n)| json!({"host": h, "alerts": n})).collect::<Vec<_>>(),
        })
    }
}

/// The host an alert is about: its event's, or the one it carries.
fn host_of(a: &Value) -> Option<String> {
    if let Some(h) = a["event"]["host.name"].as_str() {
        return Some(h.to_string());
    }
    a["fields"].as_array()?.iter().find(|f| f[0] == "host.name").and_then(|f| f[1].as_str()).map(str::to_string)
}

fn summarize(alerts: &Path) -> anyhow::Result<BTreeMap<String, RuleSummary>> {
    let mut rules: BTreeMap<String, RuleSummary> = BTreeMap::new();
    let file = match std::fs::File::open(alerts) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(rules),
        Err(e) => anyhow::bail!("{}: {e}", alerts.display()),
    };
    for line in std::io::BufReader::new(file).lines() {
        let a: Value = serde_json::from_str(&line?)?;
        let id = a["rule"]["id"].as_str().unwrap_or_default().to_string();
        let r = rules.entry(id.clone()).or_default();
        r.id = id;
        r.title = a["rule"]["title"].as_str().unwrap_or_default().to_string();
        r.level = a["rule"]["level"].as_str().unwrap_or_default().to_string();
        r.alerts += 1;
        if let Some(t) = a["event_time_ms"].as_i64() {
            r.first_ms = Some(r.first_ms.map_or(t, |f| f.min(t)));
            r.last_ms = Some(r.last_ms.map_or(t, |l| l.max(t)));
        }
        if let Some(h) = host_of(&a) {
            *r.hosts.entry(h).or_insert(0) += 1;
        }
    }
    Ok(rules)
}

fn render(rules: &BTreeMap<String, RuleSummary>, events: u64, elapsed: std::time::Duration) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let total: u64 = rules.values().map(|r| r.alerts).sum();
    let _ = writeln!(
        out,
        "hunted {events} events in {:.1}s: {total} alerts from {} rules",
        elapsed.as_secs_f64(),
        rules.len()
    );
    if rules.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "{:<48} {:<8} {:>7}  {:<24} {:<24} top hosts",
        "rule", "level", "alerts", "first seen", "last seen"
    );
    let mut sorted: Vec<&RuleSummary> = rules.values().collect();
    sorted.sort_by(|a, b| b.alerts.cmp(&a.alerts).then(a.title.cmp(&b.title)));
    for r in sorted {
        let title = short(&r.title, 47);
        let time = |t: Option<i64>| t.map(ward_engine::batch::format_timestamp_ms).unwrap_or_default();
        let hosts: Vec<String> = r.top_hosts(3).iter().map(|(h, n)| format!("{h} ({n})")).collect();
        let _ = writeln!(
            out,
            "{title:<48} {:<8} {:>7}  {:<24} {:<24} {}",
            r.level,
            r.alerts,
            time(r.first_ms),
            time(r.last_ms),
            hosts.join(", ")
        );
    }
    out
}

/// An alert as a diff sees it: its rule and what it is about.
struct Keyed {
    rule: String,
    title: String,
    /// The event (detections) or the group and window (correlations).
    key: String,
}

/// What an alert is about, whatever raised it: the event (its id, else its origin) of a
/// detection; the group and window of a correlation.
fn alert_key(a: &Value) -> String {
    let c = &a["correlation"];
    if !c.is_null() {
        return format!("group {} window {}..{}", c["group_by"], c["window_start_ms"], c["window_end_ms"]);
    }
    match a["event_id"].as_str() {
        Some(id) => format!("event {id}"),
        None => format!("origin {}", a["origin"]),
    }
}

/// The alerts of a JSON lines file whose event time is in `[from, to)`.
fn read_alerts(path: &Path, (from, to): (i64, i64)) -> anyhow::Result<Vec<Keyed>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !path.exists() => return Ok(Vec::new()),
        Err(e) => anyhow::bail!("{}: {e}", path.display()),
    };
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let a: Value = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: not an alert: {e}", path.display(), n + 1))?;
        if a["event_time_ms"].as_i64().is_some_and(|t| t < from || t >= to) {
            continue;
        }
        out.push(Keyed {
            rule: a["rule"]["id"].as_str().unwrap_or_default().to_string(),
            title: a["rule"]["title"].as_str().unwrap_or_default().to_string(),
            key: alert_key(&a),
        });
    }
    Ok(out)
}

/// Per rule: what the hunt adds, removes and keeps compared with the live alerts.
#[derive(Default)]
struct RuleDiff {
    title: String,
    live: u64,
    hunt: u64,
    unchanged: u64,
    added: Vec<String>,
    removed: Vec<String>,
}

fn diff_alerts(live: &[Keyed], hunt: &[Keyed]) -> BTreeMap<String, RuleDiff> {
    use std::collections::BTreeSet;
    let set = |alerts: &[Keyed]| -> BTreeSet<(String, String)> {
        alerts.iter().map(|a| (a.rule.clone(), a.key.clone())).collect()
    };
    let (l, h) = (set(live), set(hunt));
    let mut rules: BTreeMap<String, RuleDiff> = BTreeMap::new();
    for a in live.iter().chain(hunt) {
        let r = rules.entry(a.rule.clone()).or_default();
        if r.title.is_empty() {
            r.title = a.title.clone();
        }
    }
    for (rule, key) in &l {
        let r = rules.get_mut(rule).expect("every rule is in");
        r.live += 1;
        if h.contains(&(rule.clone(), key.clone())) {
            r.unchanged += 1;
        } else {
            r.removed.push(key.clone());
        }
    }
    for (rule, key) in &h {
        let r = rules.get_mut(rule).expect("every rule is in");
        r.hunt += 1;
        if !l.contains(&(rule.clone(), key.clone())) {
            r.added.push(key.clone());
        }
    }
    rules
}

fn diff_json(d: &BTreeMap<String, RuleDiff>) -> Value {
    json!({
        "added": d.values().map(|r| r.added.len()).sum::<usize>(),
        "removed": d.values().map(|r| r.removed.len()).sum::<usize>(),
        "unchanged": d.values().map(|r| r.unchanged).sum::<u64>(),
        "rules": d.iter().map(|(id, r)| json!({
            "id": id,
            "title": r.title,
            "live": r.live,
            "hunt": r.hunt,
            "unchanged": r.unchanged,
            "added": r.added,
            "removed": r.removed,
        })).collect::<Vec<_>>(),
    })
}

fn render_diff(d: &BTreeMap<String, RuleDiff>, live: &Path) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let (added, removed): (usize, usize) =
        d.values().fold((0, 0), |(a, r), x| (a + x.added.len(), r + x.removed.len()));
    let _ = writeln!(out, "\ncompared with the live alerts in {}: {added} added, {removed} removed", live.display());
    let _ =
        writeln!(out, "{:<48} {:>7} {:>7} {:>7} {:>7} {:>9}", "rule", "live", "hunt", "added", "removed", "unchanged");
    for r in d.values() {
        let title = short(&r.title, 47);
        let _ = writeln!(
            out,
            "{title:<48} {:>7} {:>7} {:>7} {:>7} {:>9}",
            r.live,
            r.hunt,
            r.added.len(),
            r.removed.len(),
            r.unchanged
        );
    }
    out
}

/// `text` cut to `width` characters (with an ellipsis).
fn short(text: &str, width: usize) -> String {
    if text.chars().count() > width {
        text.chars().take(width - 1).chain(std::iter::once('…')).collect()
    } else {
        text.to_string()
    }
}
