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
use ward_connectors::records::ClickHouseTable;
use ward_engine::runtime::{self, RunOptions};
use ward_engine::spec::Spec;

#[derive(clap::Args)]
pub struct HuntArgs {
    /// Sigma rule files or directories (correlation rules among them are evaluated too).
    #[arg(long, required = true, num_args = 1..)]
    rules: Vec<String>,
    /// The events: the parquet sink's directory, its object-store location
    /// (`s3://bucket/events`, reached with the standard AWS_* environment), or the clickhouse
    /// sink's events table (`clickhouse://[user@]host:8123/database[/table]`, table `events`
    /// by default; the password from WARD_CLICKHOUSE_PASSWORD).
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
    /// Sigma field mapping (as `sigma-match`'s `field_mapping`; default: the built-in one).
    #[arg(long)]
    mapping: Option<String>,
    /// Read every field of the events. By default only the fields the rules read (and
    /// `host.name`) are read, which is faster; the events in the alerts then hold only those.
    #[arg(long)]
    all_fields: bool,
    /// Compare with the alerts that fired live: an alerts JSON lines file (as the jsonl sink
    /// writes them), the alerts topic (`kafka://host:9092/topic`) or the ClickHouse alerts
    /// table (`clickhouse://host:8123/database/alerts`). Per rule, the alerts the hunt adds,
    /// removes and keeps, keyed by rule and event (a correlation: by rule, group and window).
    /// Live alerts outside `--from`/`--to` are left out.
    #[arg(long, value_name = "LIVE_ALERTS")]
    diff: Option<String>,
    /// Keep checkpoints here (a directory or an object-store URL): a hunt stopped (Ctrl-C, a
    /// crash) and started again with the same arguments goes on where it stopped. Needs
    /// `--out`, which then keeps every alert exactly once.
    #[arg(long, value_name = "DIR_OR_URL", requires = "out")]
    checkpoint_dir: Option<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
}

/// The pipeline a hunt runs, as a spec (JSON is YAML).
fn hunt_spec(args: &HuntArgs, alerts: &Path) -> anyhow::Result<Value> {
    let mut source = match args.events.strip_prefix("clickhouse://") {
        Some(_) => {
            let t = ClickHouseTable::parse(&args.events)?;
            let mut s = json!({
                "id": "history",
                "type": "clickhouse",
                "url": t.url,
                "database": t.database,
                "table": t.table.unwrap_or_else(|| "events".into()),
            });
            if let Some(u) = t.user {
                s["user"] = u.into();
            }
            if std::env::var_os(PASSWORD_ENV).is_some() {
                s["password_env"] = PASSWORD_ENV.into();
            }
            s
        }
        None => json!({ "id": "history", "type": "parquet", "path": args.events }),
    };
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
            json!({ "id": "dedup", "type": "dedup", "inputs": ["history"], "key": ["event.id"], "horizon": DEDUP_HORIZON }),
        );
        input = "dedup";
    }
    let mut detect =
        json!({ "id": "detect", "type": "sigma-match", "inputs": [input], "rules": args.rules, "watch": false });
    if let Some(m) = &args.mapping {
        detect["field_mapping"] = m.clone().into();
    }
    if !args.all_fields {
        // Only what the rules read: the detector's own compilation says what that is.
        let mut own = detect.clone();
        for common in ["id", "type", "inputs"] {
            own.as_object_mut().expect("an object").remove(common);
        }
        // Rules that do not compile are reported with the rest of the spec's problems below.
        let resources = ward_engine::resources::Resources::new(&std::env::current_dir()?);
        let fields = serde_json::from_value::<ward_operators::sigma::SigmaMatchConfig>(own)
            .ok()
            .and_then(|config| config.fields_read(&resources).ok().flatten());
        if let Some(mut fields) = fields {
            fields.push("host.name".into());
            source["fields"] = fields.into();
        }
    }
    operators.push(detect);
    operators.push(
        json!({ "id": "correlate", "type": "correlate", "inputs": ["detect"], "rules": args.rules, "watch": false }),
    );
    Ok(json!({
        "name": "hunt",
        "settings": { "epoch_interval_ms": 1000, "admin_listen": "" },
        "sources": [source],
        "operators": operators,
        "sinks": [{ "id": "alerts", "type": "jsonl", "inputs": ["correlate"], "path": alerts.display().to_string() }],
    }))
}

/// How long a hunt's dedup remembers an `event.id`, as the live pipelines do.
const DEDUP_HORIZON: &str = "10m";

/// Where a ClickHouse password comes from (never from arguments, which `ps` shows).
const PASSWORD_ENV: &str = "WARD_CLICKHOUSE_PASSWORD";

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
    let resuming = args.checkpoint_dir.as_ref().is_some_and(|d| {
        // A local checkpoint directory with something in it (an object store: the run knows).
        std::fs::read_dir(d).map_or(d.contains("://"), |mut e| e.next().is_some())
    });
    if alerts.exists() && !resuming {
        // The jsonl sink appends; a hunt's output is its own (a resumed one goes on with it).
        std::fs::remove_file(&alerts).map_err(|e| anyhow::anyhow!("{}: {e}", alerts.display()))?;
    }
    let text = serde_json::to_string_pretty(&hunt_spec(args, &alerts)?)?;
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
        checkpoint_dir: args.checkpoint_dir.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone());
    let summary = runtime::run(&spec, &opts, stop)?;
    let rules = summarize(&alerts)?;
    let events = summary.components.iter().find(|c| c.id == "history").map_or(0, |c| c.records_out);
    // What did not reach the rules: repeated events dedup dropped, and records set aside (late
    // behind the watermark, oversize, unreadable) by reason.
    let repeated = summary.components.iter().find(|c| c.id == "dedup").map_or(0, |c| c.filtered);
    let mut quarantined: BTreeMap<&'static str, u64> = BTreeMap::new();
    for c in &summary.components {
        for (reason, n) in &c.quarantined_by_reason {
            *quarantined.entry(reason.as_str()).or_insert(0) += n;
        }
    }
    let diff = match &args.diff {
        Some(live) => {
            let range = |t: &Option<String>, name, default| {
                t.as_deref()
                    .map(|t| ward_connectors::sources::history::parse_time(name, t))
                    .transpose()
                    .map(|t| t.unwrap_or(default))
            };
            let range = (range(&args.from, "from", i64::MIN)?, range(&args.to, "to", i64::MAX)?);
            let hunted = read_alerts(&alerts.to_string_lossy(), (i64::MIN, i64::MAX))?;
            Some(diff_alerts(&read_alerts(live, range)?, &hunted))
        }
        None => None,
    };
    if args.json {
        let mut out = json!({
            "events": events,
            "repeated_events_dropped": repeated,
            "quarantined": quarantined,
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
        if repeated > 0 {
            text.push_str(&format!(
                "{repeated} repeated events (same event.id within {DEDUP_HORIZON}) were dropped before the rules\n"
            ));
        }
        if !quarantined.is_empty() {
            let reasons: Vec<String> = quarantined.iter().map(|(r, n)| format!("{r} {n}")).collect();
            text.push_str(&format!("quarantined, not hunted: {}\n", reasons.join(", ")));
        }
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

/// The parts of an alert the summary and the diff read: parsed without building the rest
/// (the event an alert carries is most of its bytes).
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct AlertDigest {
    rule: RuleDigest,
    event_time_ms: Option<i64>,
    event_id: Option<String>,
    ruleset_version: String,
    origin: Value,
    correlation: Value,
    event: Option<EventHost>,
    fields: Value,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct RuleDigest {
    id: String,
    title: String,
    level: String,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct EventHost {
    #[serde(rename = "host.name")]
    host: Option<String>,
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
fn host_of(a: &AlertDigest) -> Option<String> {
    if let Some(h) = a.event.as_ref().and_then(|e| e.host.clone()) {
        return Some(h);
    }
    a.fields.as_array()?.iter().find(|f| f[0] == "host.name").and_then(|f| f[1].as_str()).map(str::to_string)
}

fn summarize(alerts: &Path) -> anyhow::Result<BTreeMap<String, RuleSummary>> {
    let mut rules: BTreeMap<String, RuleSummary> = BTreeMap::new();
    let file = match std::fs::File::open(alerts) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(rules),
        Err(e) => anyhow::bail!("{}: {e}", alerts.display()),
    };
    for line in std::io::BufReader::new(file).lines() {
        let a: AlertDigest = serde_json::from_str(&line?)?;
        let r = rules.entry(a.rule.id.clone()).or_default();
        r.id = a.rule.id.clone();
        r.title = a.rule.title.clone();
        r.level = a.rule.level.clone();
        r.alerts += 1;
        if let Some(t) = a.event_time_ms {
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
    /// The rule set that raised it.
    ruleset: String,
}

/// What an alert is about, whatever raised it: the event (its id, else its origin) of a
/// detection; the group and window of a correlation.
fn alert_key(a: &AlertDigest) -> String {
    let c = &a.correlation;
    if !c.is_null() {
        return format!("group {} window {}..{}", c["group_by"], c["window_start_ms"], c["window_end_ms"]);
    }
    match &a.event_id {
        Some(id) => format!("event {id}"),
        None => format!("origin {}", a.origin),
    }
}

/// The alerts whose event time is in `[from, to)`, from a JSON lines file, an alerts topic
/// (`kafka://host:port/topic`) or a ClickHouse alerts table
/// (`clickhouse://host:port/database/table`, its `record` column).
fn read_alerts(location: &str, (from, to): (i64, i64)) -> anyhow::Result<Vec<Keyed>> {
    let mut out = Vec::new();
    let mut take = |text: &str, at: &dyn Fn() -> String| -> anyhow::Result<()> {
        if text.trim().is_empty() {
            return Ok(());
        }
        let a: AlertDigest = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{}: not an alert: {e}", at()))?;
        if a.event_time_ms.is_some_and(|t| t < from || t >= to) {
            return Ok(());
        }
        let key = alert_key(&a);
        out.push(Keyed { rule: a.rule.id, title: a.rule.title, key, ruleset: a.ruleset_version });
        Ok(())
    };
    if let Some(rest) = location.strip_prefix("kafka://") {
        let (brokers, topic) =
            rest.split_once('/').ok_or_else(|| anyhow::anyhow!("`{location}`: no topic (kafka://host:9092/topic)"))?;
        let mut n = 0u64;
        ward_connectors::records::each_kafka_value(brokers, topic, |v| {
            n += 1;
            take(&String::from_utf8_lossy(v), &|| format!("{location}: record {n}"))
        })?;
        return Ok(out);
    }
    if location.starts_with("clickhouse://") {
        let mut table = ClickHouseTable::parse(location)?;
        table.table.get_or_insert_with(|| "alerts".into());
        // Whole seconds around the range (18.16 has no DateTime64); the exact range is above.
        let mut condition = vec!["1".to_string()];
        if from != i64::MIN {
            condition.push(format!("event_time >= toDateTime({})", from.div_euclid(1000).max(0)));
        }
        if to != i64::MAX {
            condition.push(format!("event_time < toDateTime({})", to.div_euclid(1000).max(0) + 1));
        }
        let password = std::env::var(PASSWORD_ENV).ok();
        table.each_text(password.as_deref(), "record", &condition.join(" AND "), |record| {
            take(record, &|| location.to_string())
        })?;
        return Ok(out);
    }
    let path = Path::new(location);
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !path.exists() => return Ok(Vec::new()),
        Err(e) => anyhow::bail!("{location}: {e}"),
    };
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| anyhow::anyhow!("{location}: {e}"))?;
        take(&line, &|| format!("{location}:{}", n + 1))?;
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

/// A hunt's alerts against the live ones.
struct Diff {
    rules: BTreeMap<String, RuleDiff>,
    /// The rule-set versions the live alerts name, with their alerts.
    live_rulesets: BTreeMap<String, u64>,
}

fn diff_alerts(live: &[Keyed], hunt: &[Keyed]) -> Diff {
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
    let mut live_rulesets = BTreeMap::new();
    for a in live {
        *live_rulesets.entry(a.ruleset.clone()).or_insert(0) += 1;
    }
    Diff { rules, live_rulesets }
}

fn diff_json(diff: &Diff) -> Value {
    let d = &diff.rules;
    json!({
        "live_ruleset_versions": diff.live_rulesets,
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

fn render_diff(diff: &Diff, live: &str) -> String {
    use std::fmt::Write;
    let d = &diff.rules;
    let mut out = String::new();
    let (added, removed): (usize, usize) =
        d.values().fold((0, 0), |(a, r), x| (a + x.added.len(), r + x.removed.len()));
    let _ = writeln!(out, "\ncompared with the live alerts in {live}: {added} added, {removed} removed");
    let versions: Vec<String> = diff
        .live_rulesets
        .iter()
        .map(|(v, n)| format!("{} ({n})", if v.is_empty() { "none recorded" } else { v }))
        .collect();
    if !versions.is_empty() {
        let _ = writeln!(out, "live alerts by rule-set version: {}", versions.join(", "));
    }
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
