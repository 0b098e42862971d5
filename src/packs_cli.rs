//! `ward packs list|detect`: which normalization pack claims which events, so that "no
//! alerts" always has an explanation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;
use ward_engine::batch::{EventBatch, Value};
use ward_engine::component::{Operator, OperatorOutput};
use ward_engine::resources::Resources;
use ward_engine::text::escape_text;
use ward_operators::normalize::pack::Pack;
use ward_operators::normalize::{claim, load_packs, Normalizer, Unmatched};
use ward_operators::parse::{Format, Parser};

use crate::events_file;

#[derive(Subcommand)]
pub enum PacksCommand {
    /// List the built-in packs in precedence order (the first whose `when` holds claims an
    /// event) with their conditions.
    List,
    /// Read an events file as `ward rules test` does and report which pack claimed how many
    /// events, what normalizing them quarantined, and examples of events no pack claimed with
    /// the condition each closest pack missed.
    Detect {
        /// Events: JSON lines, JSON documents or envelopes (CloudTrail, Azure, EventBridge),
        /// raw log lines; plain or gzip.
        file: PathBuf,
        /// Packs to try, in order (`windows`, `builtin:zeek` or a pack file; repeatable);
        /// default: every built-in pack.
        #[arg(long = "pack")]
        packs: Vec<String>,
        /// Examples to show per unclaimed or quarantined group.
        #[arg(long, default_value_t = 3)]
        examples: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: PacksCommand) -> ExitCode {
    let result = match cmd {
        PacksCommand::List => list(),
        PacksCommand::Detect { file, packs, examples, json } => detect(&file, &packs, examples, json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn pack_refs(packs: &[String]) -> Vec<String> {
    if packs.is_empty() {
        return ward_operators::normalize::builtin::all_refs();
    }
    packs
        .iter()
        .map(|p| {
            if p.contains(':') || p.ends_with(".yaml") || p.ends_with(".yml") {
                p.clone()
            } else {
                format!("builtin:{p}")
            }
        })
        .collect()
}

fn list() -> anyhow::Result<ExitCode> {
    let packs = load_packs(&pack_refs(&[]), &Resources::new("."))?;
    for (i, p) in packs.iter().enumerate() {
        let when: Vec<String> = p.when.iter().map(ward_operators::normalize::describe).collect();
        let module = p.module.as_deref().unwrap_or("-");
        println!("{:>2}. {:<15} module {:<10} when {}", i + 1, p.name, module, when.join(" and "));
    }
    Ok(ExitCode::SUCCESS)
}

/// What became of the events one pack claimed.
#[derive(Default)]
struct Claimed {
    events: u64,
    normalized: u64,
    /// reason → (count, examples: (index, detail)).
    quarantined: BTreeMap<String, (u64, Vec<(u64, String)>)>,
}

/// An event no pack claimed.
struct Unclaimed {
    index: u64,
    snippet: String,
    fields: Vec<String>,
    /// The packs that came closest: (pack, conditions held of all, first failed condition).
    closest: Vec<(String, usize, usize, String)>,
}

fn detect(file: &std::path::Path, packs: &[String], examples: usize, json: bool) -> anyhow::Result<ExitCode> {
    let packs: Arc<Vec<Pack>> = Arc::new(load_packs(&pack_refs(packs), &Resources::new("."))?);
    let component: Arc<str> = "packs-detect".into();
    let source: Arc<str> = "events".into();
    let partition: Arc<str> = file.display().to_string().into();
    let mut parser = Parser::new(component.clone(), Format::Auto, events_file::MAX_RECORD, Default::default());
    let mut normalizer = Normalizer::new(component, packs.clone(), Unmatched::Keep, false);
    let mut reader = events_file::EventsFile::open(file, source.clone())?;

    let mut events = 0u64;
    let mut formats: BTreeMap<String, u64> = BTreeMap::new();
    let mut not_read: Vec<(u64, String)> = Vec::new();
    let mut not_read_count = 0u64;
    let mut plain = 0u64;
    let mut claimed: Vec<Claimed> = (0..packs.len()).map(|_| Claimed::default()).collect();
    let mut unclaimed_count = 0u64;
    let mut unclaimed: Vec<Unclaimed> = Vec::new();
    let mut generic_count = 0u64;
    let mut generic: Vec<Unclaimed> = Vec::new();
    let progress = indicatif::ProgressBar::new_spinner();
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        progress.enable_steady_tick(std::time::Duration::from_millis(200));
    }
    while let Some((batch, rejected)) = reader.next()? {
        for q in rejected {
            not_read_count += 1;
            if not_read.len() < examples {
                not_read.push((q.offset.saturating_sub(1), format!("{}: {}", q.reason.as_str(), q.detail)));
            }
        }
        let Some(batch) = batch else { continue };
        let parsed = events_file::parse(&mut parser, batch, &source, &partition);
        events += parsed.events;
        plain += parsed.plain.len() as u64;
        for b in parsed.batches {
            // offset → pack index, for attributing the normalizer's quarantines.
            let mut owner: BTreeMap<u64, usize> = BTreeMap::new();
            for row in 0..b.len() {
                let index = b.provenance(row).offset.saturating_sub(1);
                let format = match b.get_by_name(row, "ward.parser") {
                    Some(Value::Str(r)) => b.bytes().str(r),
                    _ => "?",
                };
                match formats.get_mut(format) {
                    Some(n) => *n += 1,
                    None => {
                        formats.insert(format.to_string(), 1);
                    }
                }
                match claim(&packs, &b, row) {
                    Ok(p) => {
                        claimed[p].events += 1;
                        owner.insert(index + 1, p);
                        // The catch-all pack claimed it: say which product pack came closest.
                        if packs[p].module.as_deref() == Some("generic") {
                            generic_count += 1;
                            if generic.len() < examples {
                                if let Err(misses) = claim(&packs[..p], &b, row) {
                                    generic.push(describe_unclaimed(&packs, &b, row, index, misses));
                                }
                            }
                        }
                    }
                    Err(misses) => {
                        unclaimed_count += 1;
                        if unclaimed.len() < examples {
                            unclaimed.push(describe_unclaimed(&packs, &b, row, index, misses));
                        }
                    }
                }
            }
            let mut out = OperatorOutput::default();
            normalizer.process(b, 0, &mut out);
            let mut quarantined = std::collections::HashSet::new();
            for q in &out.quarantine {
                let Some(&p) = owner.get(&q.offset) else { continue };
                quarantined.insert(q.offset);
                let entry = claimed[p].quarantined.entry(q.reason.as_str().to_string()).or_default();
                entry.0 += 1;
                if entry.1.len() < examples {
                    entry.1.push((q.offset.saturating_sub(1), q.detail.clone()));
                }
            }
            for (offset, p) in owner {
                if !quarantined.contains(&offset) {
                    claimed[p].normalized += 1;
                }
            }
        }
        progress.set_message(format!("{events} events"));
    }
    progress.finish_and_clear();

    if json {
        let report = serde_json::json!({
            "file": file.display().to_string(),
            "framing": format!("{:?}", reader.framing),
            "events": events,
            "not_read": not_read_count,
            "parsed_as": formats,
            "plain_messages": plain,
            "packs": packs.iter().zip(&claimed).map(|(p, c)| serde_json::json!({
                "pack": p.name, "events": c.events, "normalized": c.normalized,
                "quarantined": c.quarantined.iter().map(|(r, (n, ex))| (r.clone(), serde_json::json!({
                    "count": n, "examples": ex.iter().map(|(i, d)| serde_json::json!({"event_index": i, "detail": d})).collect::<Vec<_>>(),
                }))).collect::<serde_json::Map<_, _>>(),
            })).collect::<Vec<_>>(),
            "unclaimed": unclaimed_count,
            "unclaimed_examples": unclaimed.iter().map(example_json).collect::<Vec<_>>(),
            "generic_only": generic_count,
            "generic_only_examples": generic.iter().map(example_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }

    println!("{}: {events} records ({:?} framing)", escape_text(&file.display().to_string()), reader.framing);
    let formats: Vec<String> = formats.iter().map(|(f, n)| format!("{f} {n}")).collect();
    println!("  parsed as       {}", if formats.is_empty() { "-".to_string() } else { formats.join(", ") });
    if plain > 0 {
        println!("  plain messages  {plain} (no parser understood them: searched as `message`)");
    }
    if not_read_count > 0 {
        println!("  not read        {not_read_count}");
        for (i, d) in &not_read {
            println!("      event {i}: {}", escape_text(d));
        }
    }
    println!();
    println!("  {:<16} {:>9} {:>11} {:>12}", "pack", "claimed", "normalized", "quarantined");
    for (p, c) in packs.iter().zip(&claimed) {
        if c.events == 0 {
            continue;
        }
        let q: u64 = c.quarantined.values().map(|(n, _)| n).sum();
        println!("  {:<16} {:>9} {:>11} {:>12}", p.name, c.events, c.normalized, q);
        for (reason, (n, ex)) in &c.quarantined {
            println!("      {n} × {reason}");
            for (i, d) in ex {
                println!("        event {i}: {}", escape_text(d));
            }
        }
    }
    println!("  {:<16} {:>9}", "(no pack)", unclaimed_count);
    if unclaimed_count > 0 {
        println!();
        println!("events no pack claimed (they keep their fields, but rules of a product never see them):");
        print_examples(&unclaimed);
    }
    if generic_count > 0 {
        println!();
        println!("events only a generic pack claimed ({generic_count}; rules of a product never see them):");
        print_examples(&generic);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_examples(examples: &[Unclaimed]) {
    for u in examples {
        println!("  event {}: {}", u.index, escape_text(&u.snippet));
        println!("    fields: {}", escape_text(&u.fields.join(", ")));
        for (p, held, of, failed) in &u.closest {
            println!("    {p}: {held} of {of} conditions hold; missing: {}", escape_text(failed));
        }
        if u.closest.is_empty() {
            println!("    no pack's conditions hold even in part: a shape no pack knows (`ward packs list`)");
        }
    }
}

fn example_json(u: &Unclaimed) -> serde_json::Value {
    serde_json::json!({
        "event_index": u.index, "snippet": u.snippet, "fields": u.fields,
        "closest": u.closest.iter().map(|(p, held, of, failed)| serde_json::json!({
            "pack": p, "conditions_held": held, "conditions": of, "missed": failed,
        })).collect::<Vec<_>>(),
    })
}

fn describe_unclaimed(
    packs: &[Pack],
    b: &EventBatch,
    row: usize,
    index: u64,
    mut misses: Vec<ward_operators::normalize::Miss>,
) -> Unclaimed {
    let raw = String::from_utf8_lossy(b.raw_payload(row));
    let mut snippet: String = raw.chars().take(160).collect();
    if raw.chars().count() > 160 {
        snippet.push('…');
    }
    let bytes = b.bytes();
    let mut fields: Vec<String> = Vec::new();
    for s in b.row_slots(row) {
        let name = bytes.key_name(s.key).to_string();
        if !name.starts_with("ward.") && !fields.contains(&name) && fields.len() < 12 {
            fields.push(name);
        }
    }
    // Closest first: the most conditions held, then precedence.
    misses.sort_by(|a, b| b.held.cmp(&a.held).then(a.pack.cmp(&b.pack)));
    let closest = misses
        .iter()
        .filter(|m| m.held > 0)
        .take(3)
        .map(|m| (packs[m.pack].name.clone(), m.held, packs[m.pack].when.len(), m.failed.clone()))
        .collect();
    Unclaimed { index, snippet, fields, closest }
}
