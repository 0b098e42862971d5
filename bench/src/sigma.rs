//! `ward-bench sigma`: Ward's compiled matcher against rsigma-eval and sigma-rust on the same
//! events and the same rules, and Ward alone with growing rule counts.
//!
//! Events are the generator's telemetry (Sysmon, Security, syslog, Zeek, FortiGate), parsed and
//! normalized as in a pipeline. Ward matches the normalized events (with logsource routing and
//! the ECS field mapping); the other evaluators get each event as a flat JSON object under
//! Sigma's field names (`Image`, `CommandLine`, `EventID`, ...), the shape they expect.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use ward_engine::batch::{value_to_json, EventBatch, Key};
use ward_engine::component::{Operator, OperatorOutput, Source, SourcePoll};
use ward_engine::resources::Resources;
use ward_operators::normalize::{builtin, load_packs, Normalizer, Unmatched};
use ward_operators::parse::{syslog::SyslogOptions, Format, Parser as RecordParser};
use ward_operators::sigma::{compile_files, read_rule_files, CompileOptions, Detector, RuleFile};

pub struct Args {
    pub rules: String,
    pub count: u64,
    pub competitor_count: u64,
    pub sizes: Vec<String>,
    pub repeat: usize,
    pub sigma_rust: bool,
}

/// A `--sizes` entry: a rule count or `all`, checked when the arguments are read.
pub fn parse_rule_count(s: &str) -> Result<String, String> {
    if s == "all" || s.parse::<usize>().is_ok_and(|n| n > 0) {
        Ok(s.to_string())
    } else {
        Err(format!("`{s}` is neither a positive rule count nor `all` (separate sizes by commas: 100,1000,all)"))
    }
}

/// Generator batches, parsed; and normalized.
fn events(count: u64) -> anyhow::Result<(Vec<EventBatch>, Vec<EventBatch>)> {
    let mut generator = crate::bench_generator(count);
    let mut parser = RecordParser::new(
        "parse".into(),
        Format::Auto,
        1 << 20,
        SyslogOptions { year: Some(2026), ..Default::default() },
    );
    let packs = load_packs(&builtin::all_refs(), &Resources::new("."))?;
    let mut norm = Normalizer::new("normalize".into(), Arc::new(packs), Unmatched::Keep, false);
    let (mut parsed, mut normalized) = (Vec::new(), Vec::new());
    while let Ok(SourcePoll::Batch(b)) = generator.poll(1024) {
        let mut p = OperatorOutput::default();
        parser.process(b, 0, &mut p);
        for b in p.events {
            let mut n = OperatorOutput::default();
            norm.process(b.clone(), 0, &mut n);
            parsed.push(b);
            normalized.extend(n.events);
        }
    }
    Ok((parsed, normalized))
}

/// A parsed event as the flat JSON object other Sigma evaluators expect.
fn sigma_shaped(b: &EventBatch, row: usize) -> serde_json::Value {
    let bytes = b.bytes();
    let mut m = serde_json::Map::new();
    for s in b.row_slots(row) {
        let Key::Ext(k) = s.key else { continue };
        let k = bytes.str(k);
        let name = if k == "Event.System.Provider.#attributes.Name" {
            "Provider_Name"
        } else if let Some(n) = k.strip_prefix("Event.EventData.").or_else(|| k.strip_prefix("Event.System.")) {
            n
        } else {
            k
        };
        m.insert(name.to_string(), value_to_json(bytes, s.value));
    }
    serde_json::Value::Object(m)
}

/// `n` files spread evenly over the sorted list (all of them for `n >= len`).
fn pick(files: &[RuleFile], n: usize) -> Vec<&RuleFile> {
    if n >= files.len() {
        return files.iter().collect();
    }
    (0..n).map(|i| &files[i * files.len() / n]).collect()
}

fn best<T>(repeat: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::MAX;
    let mut out = None;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(r);
    }
    (best, out.expect("ran at least once"))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let all_files = read_rule_files(&Resources::new(""), std::slice::from_ref(&args.rules))?;
    let opts = CompileOptions::default();
    // Only rules Ward compiles take part (all engines get the same files).
    let full = compile_files(&all_files, &opts, None)?;
    let rejected: std::collections::HashSet<&str> = full.rejections().iter().map(|r| r.0).collect();
    let files: Vec<RuleFile> = all_files.iter().filter(|f| !rejected.contains(f.path.as_str())).cloned().collect();
    println!("rules: {} ({} files compile, {} rejected)", args.rules, files.len(), full.rejected());
    let (parsed, normalized) = events(args.count)?;
    let n_events: usize = normalized.iter().map(EventBatch::len).sum();
    println!("events: {n_events} normalized generator events (Sysmon, Security, syslog, Zeek, FortiGate)\n");

    println!("Ward matcher alone, one thread:");
    println!("{:>8} {:>12} {:>14} {:>12} {:>10}", "rules", "compile s", "events/s", "ns/event", "matches");
    let mut per_event = Vec::new();
    for size in &args.sizes {
        let n = if size == "all" { files.len() } else { size.parse()? };
        let subset: Vec<RuleFile> = pick(&files, n).into_iter().cloned().collect();
        let t = Instant::now();
        let set = compile_files(&subset, &opts, None)?;
        let compile_s = t.elapsed().as_secs_f64();
        let mut det = Detector::new("bench".into(), false);
        let (secs, matches) = best(args.repeat, || normalized.iter().map(|b| det.count(&set, b)).sum::<usize>());
        let ns = secs * 1e9 / n_events as f64;
        let st = det.stats();
        eprintln!(
            "  per event: {:.1} automaton passes over {:.0} bytes, {:.1} literal occurrences, {:.1} rule conditions \
             evaluated, {:.0} bytes searched by regexes; {} events over the match budget",
            st.passes as f64 / st.events as f64,
            st.scanned_bytes as f64 / st.events as f64,
            st.occurrences as f64 / st.events as f64,
            st.evaluated as f64 / st.events as f64,
            st.searched_bytes as f64 / st.events as f64,
            st.over_budget
        );
        per_event.push((set.compiled(), ns));
        println!(
            "{:>8} {:>12.2} {:>14.0} {:>12.1} {:>10}",
            set.compiled(),
            compile_s,
            n_events as f64 / secs,
            ns,
            matches
        );
    }
    if let (Some(first), Some(last)) = (per_event.first(), per_event.last()) {
        println!("time per event, {} rules vs {} rules: {:.2}x\n", last.0, first.0, last.1 / first.1);
    }

    // Side by side on the same (smaller) event sample and all the compilable rules.
    let sample_rows = args.competitor_count.min(n_events as u64) as usize;
    let mut sample_norm = Vec::new();
    let mut taken = 0;
    for b in &normalized {
        if taken >= sample_rows {
            break;
        }
        sample_norm.push(b.clone());
        taken += b.len();
    }
    let mut shaped = Vec::new();
    for b in &parsed {
        for r in 0..b.len() {
            if shaped.len() < taken {
                shaped.push(sigma_shaped(b, r));
            }
        }
    }
    let n = shaped.len();
    println!("side by side: {} rules, {n} events, one thread", files.len());
    println!("{:<14} {:>10} {:>14} {:>12} {:>10}", "evaluator", "rules", "events/s", "ns/event", "matches");
    let set = compile_files(&files, &opts, None)?;
    let mut det = Detector::new("bench".into(), false);
    let (ward_s, ward_m) = best(args.repeat, || sample_norm.iter().map(|b| det.count(&set, b)).sum::<usize>());
    println!(
        "{:<14} {:>10} {:>14.0} {:>12.1} {:>10}",
        "ward",
        set.compiled(),
        n as f64 / ward_s,
        ward_s * 1e9 / n as f64,
        ward_m
    );

    // The triggers only skip rules that cannot hold: evaluating every rule must agree.
    let checked: usize =
        sample_norm.iter().map(|b| det.check_triggers(&set, b)).sum::<Result<_, _>>().map_err(anyhow::Error::msg)?;
    println!("{:<14} {:>10} (every rule evaluated on every event: the same {checked} matches)", "", "");

    let mut engine = rsigma_eval::Engine::new();
    let mut rs_rules = 0;
    for f in &files {
        if let Ok(c) = rsigma_parser::parse_sigma_yaml(&f.text) {
            for r in &c.rules {
                if engine.add_rule(r).is_ok() {
                    rs_rules += 1;
                }
            }
        }
    }
    let events: Vec<rsigma_eval::JsonEvent> = shaped.iter().map(rsigma_eval::JsonEvent::borrow).collect();
    let (rs_s, rs_m) = best(1, || events.iter().map(|e| engine.evaluate(e).len()).sum::<usize>());
    println!(
        "{:<14} {:>10} {:>14.0} {:>12.1} {:>10}",
        "rsigma-eval",
        rs_rules,
        n as f64 / rs_s,
        rs_s * 1e9 / n as f64,
        rs_m
    );

    let mut ratios = format!("ward / rsigma-eval: {:.1}x", rs_s / ward_s);
    if args.sigma_rust {
        let sr_rules: Vec<sigma_rust::Rule> =
            files.iter().filter_map(|f| sigma_rust::rule_from_yaml(&f.text).ok()).collect();
        let sr_events: Vec<sigma_rust::Event> =
            shaped.iter().filter_map(|e| sigma_rust::event_from_json(&e.to_string()).ok()).collect();
        let (sr_s, sr_m) =
            best(1, || sr_events.iter().map(|e| sr_rules.iter().filter(|r| r.is_match(e)).count()).sum::<usize>());
        println!(
            "{:<14} {:>10} {:>14.0} {:>12.1} {:>10}",
            "sigma-rust",
            sr_rules.len(),
            sr_events.len() as f64 / sr_s,
            sr_s * 1e9 / sr_events.len() as f64,
            sr_m
        );
        let _ = write!(ratios, "   ward / sigma-rust: {:.1}x", (sr_s / sr_events.len() as f64) / (ward_s / n as f64));
    }
    println!("\n{ratios}");
    println!("(match counts differ by design: Ward routes by logsource and maps fields to ECS-lite; the others see flat Sigma fields without logsource)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The matcher's triggers choose which rules to evaluate: on SigmaHQ's Windows rules and the
    /// generator's events, they must lose no match that evaluating every rule finds.
    #[test]
    fn triggers_lose_no_match_of_the_sigmahq_windows_rules() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/sigmahq/rules/windows").to_string();
        let files = read_rule_files(&Resources::new(""), &[dir]).unwrap();
        let set = compile_files(&files, &CompileOptions::default(), None).unwrap();
        assert!(set.compiled() > 2000, "{} rules compiled", set.compiled());
        let (_, normalized) = events(4000).unwrap();
        let mut det = Detector::new("check".into(), false);
        let matches: usize = normalized.iter().map(|b| det.check_triggers(&set, b)).sum::<Result<_, _>>().unwrap();
        // The generator's attack scenarios raise SigmaHQ alerts: the check compared real matches.
        assert!(matches > 100, "{matches} matches");
    }
}
