//! `ward rules check|test|explain`: the detection engineer's commands. They use the same
//! parse → normalize → sigma-match code as a running pipeline.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use ward_engine::text::escape_text;

use clap::{Args, Subcommand};
use ward_engine::alert::Alert;
use ward_engine::batch::EventBatch;
use ward_engine::component::{Operator, OperatorOutput};

use crate::events_file;
use ward_engine::resources::Resources;
use ward_engine::time::WATERMARK_END;
use ward_operators::correlate::window::Windows;
use ward_operators::normalize::{load_packs, Normalizer, Unmatched};
use ward_operators::parse::{Format, Parser};
use ward_operators::sigma::compile::LoweredRule;
use ward_operators::sigma::{
    compile_files, read_rule_files, CompileOptions, Detector, PlaceholdersMissing, RuleSet, Status, Unrouted,
};

#[derive(Subcommand)]
pub enum RulesCommand {
    /// Compile rule files and directories; print counts by status and why each rejected rule
    /// was rejected.
    Check {
        /// Rule files and/or directories (read recursively).
        #[arg(required = true)]
        rules: Vec<PathBuf>,
        #[command(flatten)]
        compile: CompileArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run events through parse → normalize → sigma-match and print one JSON line per alert.
    Test {
        /// Rule files and/or directories.
        #[arg(required = true)]
        rules: Vec<PathBuf>,
        /// Events: JSON lines, concatenated JSON documents (as SigmaHQ regression data), or
        /// raw log lines.
        #[arg(long)]
        events: PathBuf,
        /// Normalization pack (`windows`, `builtin:zeek` or a pack file); detected per event
        /// when omitted.
        #[arg(long)]
        pack: Option<String>,
        /// Expected alerts: YAML or JSON mapping rule id → list of 0-based event indices.
        /// Any difference is printed and exits 1.
        #[arg(long)]
        expect: Option<PathBuf>,
        /// Include the normalized event in each alert line.
        #[arg(long)]
        with_event: bool,
        #[command(flatten)]
        compile: CompileArgs,
    },
    /// Show how rules were compiled: field mapping, logsource routing, patterns, condition.
    Explain {
        /// A rule file.
        rule: PathBuf,
        #[command(flatten)]
        compile: CompileArgs,
    },
}

#[derive(Args, Clone)]
pub struct CompileArgs {
    /// Field mapping file (default: the built-in pipelines/sigma/field-mapping.yaml).
    #[arg(long)]
    field_mapping: Option<PathBuf>,
    /// Logsource routing file (default: the built-in pipelines/sigma/logsources.yaml).
    #[arg(long)]
    logsources: Option<PathBuf>,
    /// Placeholder values for `|expand`: NAME=V1,V2 (repeatable).
    #[arg(long = "placeholder", value_name = "NAME=VALUES")]
    placeholders: Vec<String>,
    /// What a placeholder without values does: reject (the rule), match_nothing (its values
    /// match nothing) or wildcard (it stands for any text).
    #[arg(long, value_name = "POLICY", default_value = "match_nothing", value_parser = ["reject", "match_nothing", "wildcard"])]
    placeholders_missing: String,
    /// Refuse rules whose logsource has no routing entry instead of running them on every event.
    #[arg(long)]
    reject_unrouted: bool,
}

impl CompileArgs {
    fn options(&self) -> anyhow::Result<CompileOptions> {
        use ward_operators::sigma::mapping::{FieldMapping, Logsources};
        let read = |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()));
        let mut opts = CompileOptions::default();
        if let Some(p) = &self.field_mapping {
            opts.mapping = FieldMapping::parse(&read(p)?, &p.display().to_string())?;
        }
        if let Some(p) = &self.logsources {
            opts.logsources = Logsources::parse(&read(p)?, &p.display().to_string())?;
        }
        for p in &self.placeholders {
            let (name, values) =
                p.split_once('=').ok_or_else(|| anyhow::anyhow!("--placeholder {p}: expected NAME=V1,V2"))?;
            opts.placeholders.insert(name.to_string(), values.split(',').map(str::to_string).collect());
        }
        if self.reject_unrouted {
            opts.unrouted = Unrouted::Reject;
        }
        opts.placeholders_missing = PlaceholdersMissing::parse(&self.placeholders_missing).ok_or_else(|| {
            anyhow::anyhow!("--placeholders-missing {}: reject, match_nothing or wildcard", self.placeholders_missing)
        })?;
        Ok(opts)
    }
}

fn compile(rules: &[PathBuf], args: &CompileArgs, lowered: Option<&mut Vec<LoweredRule>>) -> anyhow::Result<RuleSet> {
    let opts = args.options()?;
    let paths: Vec<String> = rules.iter().map(|p| p.display().to_string()).collect();
    let files = read_rule_files(&Resources::new(""), &paths)?;
    let progress = indicatif::ProgressBar::new_spinner();
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        progress.set_message(format!("compiling {} rule files…", files.len()));
        progress.enable_steady_tick(std::time::Duration::from_millis(120));
    }
    let set = compile_files(&files, &opts, lowered);
    progress.finish_and_clear();
    set
}

pub fn run(cmd: RulesCommand) -> ExitCode {
    let result = match cmd {
        RulesCommand::Check { rules, compile: c, json } => check(&rules, &c, json),
        RulesCommand::Test { rules, events, pack, expect, with_event, compile: c } => {
            test(&rules, &events, pack.as_deref(), expect.as_ref(), with_event, &c)
        }
        RulesCommand::Explain { rule, compile: c } => explain(&rule, &c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn check(rules: &[PathBuf], args: &CompileArgs, json: bool) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let set = compile(rules, args, None)?;
    let detection = set.compiled() + set.rejected();
    let pct = if detection == 0 { 100.0 } else { 100.0 * set.compiled() as f64 / detection as f64 };
    let filters = set.count(|s| *s == Status::Filter);
    if json {
        let out = serde_json::json!({
            "version": set.version,
            "files": set.files,
            "compiled": set.compiled(),
            "rejected": set.rejected(),
            "compiled_percent": pct,
            "correlations": set.correlations.rules.len(),
            "filters": filters,
            "unrouted": set.unrouted,
            "routing": set.routing.iter().map(|(product, (routed, unrouted))| serde_json::json!({
                "product": product, "routed": routed, "unrouted": unrouted, "packs": packs_for(product),
            })).collect::<Vec<_>>(),
            "notes": set.notes().iter().map(|(p, id, note)| serde_json::json!({"path": p, "id": id, "note": note})).collect::<Vec<_>>(),
            "rejections": set.rejections().iter().map(|(p, id, why)| serde_json::json!({"path": p, "id": id, "reason": why})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (path, id, note) in set.notes() {
        println!("note      {}  {}: {}", escape_text(path), escape_text(id), escape_text(note));
    }
    for (path, id, why) in set.rejections() {
        println!("rejected  {}  {}: {}", escape_text(path), escape_text(id), escape_text(why));
    }
    // Rejections grouped by construct, most common first.
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, why) in set.rejections() {
        *by_reason.entry(reason_class(why)).or_default() += 1;
    }
    let mut classes: Vec<_> = by_reason.into_iter().collect();
    classes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    println!();
    println!("rule set {}: {} files in {:.1}s", set.version, set.files, started.elapsed().as_secs_f64());
    println!("  compiled      {:>6}  ({pct:.2}% of detection rules)", set.compiled());
    println!("  rejected      {:>6}", set.rejected());
    for (class, n) in classes {
        println!("      {n:>6}  {class}");
    }
    println!("  correlations  {:>6}  (loaded for the correlation operator)", set.correlations.rules.len());
    println!("  filters       {:>6}", filters);
    println!("  unrouted      {:>6}  (compiled; no logsource entry narrows them)", set.unrouted);
    println!("  routing by logsource product (compiled rules with a routing entry / without; packs):");
    for (product, (routed, unrouted)) in &set.routing {
        let packs = packs_for(product);
        let packs = if packs.is_empty() { "no built-in pack".to_string() } else { packs.join(", ") };
        println!("      {product:<14} {routed:>5} / {unrouted:<5} {packs}");
    }
    let noted = set.reports.iter().filter(|r| !r.notes.is_empty()).count();
    if noted > 0 {
        println!("  with notes    {noted:>6}  (compiled differently from what they say: see `note` lines)");
    }
    Ok(ExitCode::SUCCESS)
}

/// The built-in packs whose events a rule of `product` runs on.
fn packs_for(product: &str) -> Vec<&'static str> {
    ward_operators::normalize::builtin::modules()
        .into_iter()
        .filter(|(_, module)| module == product)
        .map(|(name, _)| name)
        .collect()
}

/// The construct a rejection names, for the summary.
fn reason_class(why: &str) -> String {
    const CLASSES: &[(&str, &str)] = &[
        ("aggregation", "Sigma 1 aggregation in the condition (use a correlation rule)"),
        ("timeframe", "Sigma 1 aggregation (`timeframe`; use a correlation rule)"),
        ("placeholder", "`expand` placeholder without configured values"),
        ("linear-time regex", "regex outside the linear-time syntax (look-around, backreferences)"),
        ("array matching", "array matching (`[any]`/`[all]`)"),
        ("duplicate rule id", "duplicate rule id"),
        ("matches no selection", "condition selector matches no selection"),
        ("unknown selection", "condition names an unknown selection"),
        ("logsource routing", "no logsource routing (--reject-unrouted)"),
        ("cannot parse", "rule does not parse"),
    ];
    CLASSES
        .iter()
        .find(|(needle, _)| why.contains(needle))
        .map(|(_, class)| class.to_string())
        .unwrap_or_else(|| why.chars().take(80).collect())
}

fn explain(rule: &PathBuf, args: &CompileArgs) -> anyhow::Result<ExitCode> {
    let mut lowered = Vec::new();
    let set = compile(std::slice::from_ref(rule), args, Some(&mut lowered))?;
    for (path, id, why) in set.rejections() {
        println!("REJECTED {} {}: {}\n", escape_text(path), escape_text(id), escape_text(why));
    }
    for l in &lowered {
        let m = &l.meta.rule;
        println!("rule      {} ({})", escape_text(&m.title), escape_text(&m.id));
        println!("level     {}  status {}  techniques {}", m.level, m.status, m.techniques.join(", "));
        let ls = &l.logsource;
        println!(
            "logsource product={} category={} service={}",
            ls.product.as_deref().unwrap_or("-"),
            ls.category.as_deref().unwrap_or("-"),
            ls.service.as_deref().unwrap_or("-")
        );
        match &l.route {
            Some(r) => {
                let mut s = String::new();
                r.render(2, &mut s);
                println!("routing{}", if l.routed { "" } else { " (product only)" });
                print!("{s}");
            }
            None => println!("routing   none: runs on every event"),
        }
        println!("fields");
        for (sigma, keys) in &l.fields {
            let names: Vec<&str> = keys.iter().map(|k| k.name()).collect();
            println!("  {sigma} → {}", names.join(" | "));
        }
        println!("condition");
        let mut s = String::new();
        l.cond.render(2, &mut s);
        print!("{s}");
        for n in &l.notes {
            println!("note      {}", escape_text(n));
        }
        if !l.filters.is_empty() {
            println!("filters   {}", l.filters.join(", "));
        }
        println!();
    }
    println!("rule set version {}", set.version);
    Ok(ExitCode::SUCCESS)
}

/// Runs the rule set's correlation rules over the detection alerts on their event time; at the
/// end the watermark passes every window. Returns each correlation alert with the indices of
/// the input events behind it (through chains).
fn correlate(set: &RuleSet, alerts: &[Alert]) -> Vec<(Alert, Vec<u64>)> {
    if set.correlations.rules.is_empty() {
        return Vec::new();
    }
    let mut windows =
        Windows::new(set.correlations.clone(), set.version.as_str().into(), "rules-test".into(), Windows::all_groups());
    // Show every correlation that fired, also those a chain absorbs.
    windows.emit_absorbed(true);
    let mut by_time: Vec<&Alert> = alerts.iter().filter(|a| a.event_time_ms.is_some()).collect();
    if by_time.len() < alerts.len() {
        eprintln!(
            "warning: {} alert(s) without an event time are left out of correlation",
            alerts.len() - by_time.len()
        );
    }
    by_time.sort_by_key(|a| (a.event_time_ms, a.origin.offset));
    for a in by_time {
        windows.add(a);
    }
    let mut out = OperatorOutput::default();
    windows.advance(WATERMARK_END, &mut out);
    // Level by level: a chained alert comes after the ones it references.
    let mut events_of: HashMap<String, Vec<u64>> =
        alerts.iter().map(|a| (a.alert_id.clone(), vec![event_index(a)])).collect();
    let mut result = Vec::new();
    for a in out.alerts {
        let mut idx: Vec<u64> = a
            .correlation
            .iter()
            .flat_map(|c| c.contributing.iter())
            .flat_map(|id| events_of.get(id).cloned().unwrap_or_default())
            .collect();
        idx.sort_unstable();
        idx.dedup();
        events_of.insert(a.alert_id.clone(), idx.clone());
        result.push((a, idx));
    }
    result.sort_by(|a, b| {
        a.0.correlation
            .as_ref()
            .map(|c| c.window_end_ms)
            .cmp(&b.0.correlation.as_ref().map(|c| c.window_end_ms))
            .then(a.0.rule.id.cmp(&b.0.rule.id))
    });
    result
}

/// The 0-based index in the events file of the event behind an alert (positions are 1-based).
fn event_index(a: &Alert) -> u64 {
    a.origin.offset.saturating_sub(1)
}

/// The state of `ward rules test` while it streams the events file.
struct TestRun {
    parser: Parser,
    normalizer: Normalizer,
    detector: Detector,
    source: Arc<str>,
    partition: Arc<str>,
    events: u64,
    /// Alerts of the current batch (printed and dropped after it).
    alerts: Vec<Alert>,
    alerts_printed: u64,
    /// Alerts of rules that feed correlation rules, kept for correlating at the end.
    for_correlation: Vec<Alert>,
    /// With `--expect`: rule id → event indices alerted on.
    actual: BTreeMap<String, BTreeSet<u64>>,
    track_actual: bool,
}

impl TestRun {
    /// parse → normalize → detect for one batch of records; records no parser understands
    /// are searched as plain messages (Sigma keyword rules).
    fn batch(&mut self, set: &RuleSet, batch: EventBatch) {
        let parsed = events_file::parse(&mut self.parser, batch, &self.source, &self.partition);
        self.events += parsed.events;
        for (index, note) in &parsed.notes {
            eprintln!("warning: event {index} {note}");
        }
        let batches = parsed.batches;
        for b in batches {
            let mut out = OperatorOutput::default();
            self.normalizer.process(b, 0, &mut out);
            for q in &out.quarantine {
                let index = q.offset.saturating_sub(1);
                eprintln!("warning: event {index} not normalized ({}): {}", q.reason.as_str(), q.detail);
            }
            for nb in &out.events {
                self.detector.detect(set, nb, &mut self.alerts);
            }
        }
        // Batches come in file order: sorting each one prints every alert in order.
        self.alerts.sort_by(|a, b| a.origin.offset.cmp(&b.origin.offset).then(a.rule.id.cmp(&b.rule.id)));
        for a in self.alerts.drain(..) {
            if self.track_actual {
                self.actual.entry(a.rule.id.clone()).or_default().insert(event_index(&a));
            }
            let mut line = serde_json::json!({
                "rule": { "id": a.rule.id, "title": a.rule.title, "level": a.rule.level },
                "event_index": event_index(&a),
                "alert_id": a.alert_id,
                "matches": a.matches,
                "ruleset_version": a.ruleset_version,
            });
            if let Some(e) = &a.event {
                line["event"] = e.to_value();
            }
            println!("{line}");
            self.alerts_printed += 1;
            if set.correlations.inputs_of.contains_key(&a.rule.id) {
                self.for_correlation.push(a);
            }
        }
    }
}

fn test(
    rules: &[PathBuf],
    events: &std::path::Path,
    pack: Option<&str>,
    expect: Option<&PathBuf>,
    with_event: bool,
    args: &CompileArgs,
) -> anyhow::Result<ExitCode> {
    let set = compile(rules, args, None)?;
    for (path, id, why) in set.rejections() {
        eprintln!("warning: rule rejected: {} {}: {}", escape_text(path), escape_text(id), escape_text(why));
    }
    let pack_refs = match pack {
        Some(p) if p.contains(':') || p.ends_with(".yaml") || p.ends_with(".yml") => vec![p.to_string()],
        Some(p) => vec![format!("builtin:{p}")],
        None => ward_operators::normalize::builtin::all_refs(),
    };
    let packs = Arc::new(load_packs(&pack_refs, &Resources::new("."))?);
    let component: Arc<str> = "rules-test".into();
    let mut run = TestRun {
        parser: Parser::new(component.clone(), Format::Auto, events_file::MAX_RECORD, Default::default()),
        normalizer: Normalizer::new(component.clone(), packs, Unmatched::Keep, false),
        detector: Detector::new(component, with_event),
        source: "events".into(),
        partition: events.display().to_string().into(),
        events: 0,
        alerts: Vec::new(),
        alerts_printed: 0,
        for_correlation: Vec::new(),
        actual: BTreeMap::new(),
        track_actual: expect.is_some(),
    };
    // Streamed: one batch in memory at a time, whatever the file size.
    let mut reader = events_file::EventsFile::open(events, run.source.clone())?;
    let progress = indicatif::ProgressBar::new_spinner();
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        progress.enable_steady_tick(std::time::Duration::from_millis(200));
    }
    while let Some((batch, rejected)) = reader.next()? {
        for q in rejected {
            eprintln!("warning: event {} not read ({}): {}", q.offset.saturating_sub(1), q.reason.as_str(), q.detail);
        }
        if let Some(b) = batch {
            run.batch(&set, b);
        }
        progress.set_message(format!("{} events, {} alerts", run.events, run.alerts_printed));
    }
    progress.finish_and_clear();
    let TestRun { events: event_count, alerts_printed, for_correlation, mut actual, .. } = run;
    let correlations = correlate(&set, &for_correlation);
    for (a, indices) in &correlations {
        actual.entry(a.rule.id.clone()).or_default().extend(indices.iter().copied());
        let c = a.correlation.as_ref().expect("correlation alerts carry their correlation");
        let line = serde_json::json!({
            "rule": { "id": a.rule.id, "title": a.rule.title, "level": a.rule.level },
            "correlation": c.kind,
            "group_by": c.group_by.iter().map(|(k, v)| (k.clone(), serde_json::Value::from(v.clone()))).collect::<serde_json::Map<_, _>>(),
            "window": { "start": ward_engine::batch::format_timestamp_ms(c.window_start_ms), "end": ward_engine::batch::format_timestamp_ms(c.window_end_ms) },
            "value": c.value,
            "condition": c.condition,
            "event_index": indices,
            "alert_id": a.alert_id,
            "contributing": c.contributing,
        });
        println!("{line}");
    }
    eprintln!(
        "{} events, {} alerts, {} correlation alerts, rule set {} ({} rules, {} correlations)",
        event_count,
        alerts_printed,
        correlations.len(),
        set.version,
        set.compiled(),
        set.correlations.rules.len()
    );

    let Some(expect) = expect else { return Ok(ExitCode::SUCCESS) };
    let text = std::fs::read_to_string(expect).map_err(|e| anyhow::anyhow!("{}: {e}", expect.display()))?;
    let wanted: BTreeMap<String, Vec<u64>> =
        yaml_serde::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", expect.display()))?;
    let mut problems = 0;
    let ids: BTreeSet<&String> = wanted.keys().chain(actual.keys()).collect();
    for id in ids {
        let want: BTreeSet<u64> = wanted.get(id).map(|v| v.iter().copied().collect()).unwrap_or_default();
        let got = actual.get(id).cloned().unwrap_or_default();
        if want == got {
            continue;
        }
        problems += 1;
        let missing: Vec<_> = want.difference(&got).collect();
        let extra: Vec<_> = got.difference(&want).collect();
        eprintln!("MISMATCH rule {id}");
        if !missing.is_empty() {
            eprintln!("  - expected alerts for events {missing:?}, none raised");
        }
        if !extra.is_empty() {
            eprintln!("  + unexpected alerts for events {extra:?}");
        }
    }
    if problems == 0 {
        eprintln!("expectations met ({} rules)", wanted.len());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{problems} rule(s) differ from {}", expect.display());
        Ok(ExitCode::from(1))
    }
}
