//! `ward-bench hostile`: Sigma matching time per byte on attacker-shaped events (docs/architecture.md §10).
//!
//! Each shape pairs a rule form with a value written to make a naive matcher quadratic (or
//! worse), at growing sizes. Matching is linear when the time per byte stays flat.

use std::sync::Arc;
use std::time::Instant;

use ward_engine::batch::EventBatch;
use ward_engine::component::{Operator, OperatorOutput};
use ward_operators::parse::{Format, Parser as RecordParser};
use ward_operators::sigma::{compile_files, CompileOptions, Detector, RuleFile};

struct Shape {
    name: &'static str,
    /// Detection sections, one rule each.
    rules: Vec<String>,
    /// The event's JSON for a value size.
    event: fn(usize) -> String,
}

fn repeat_to(unit: &str, size: usize) -> String {
    unit.repeat(size / unit.len() + 1)[..size].to_string()
}

/// Pseudo-random a/b text: every 41-byte window differs, so a lazy DFA keeps building states.
fn random_ab(n: usize) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x & 1 == 0 {
                'a'
            } else {
                'b'
            }
        })
        .collect()
}

fn shapes() -> Vec<Shape> {
    vec![
        Shape {
            name: "wildcards, gate repeated (sshd)",
            rules: vec!["  s:\n    logline: 'Failed password for * from * port *'\n  condition: s\n".into()],
            event: |n| {
                let v = repeat_to("Failed password for invalid user admin from 203.0.113.9 ", n);
                serde_json::json!({ "logline": v }).to_string()
            },
        },
        Shape {
            name: "wildcards *aa*aa*b* on a…a",
            rules: vec!["  s:\n    logline: '*aa*aa*b*'\n  condition: s\n".into()],
            event: |n| serde_json::json!({ "logline": "a".repeat(n) }).to_string(),
        },
        Shape {
            name: "20 regexes (a|b|c|d){1000}",
            rules: (0..20)
                .map(|i| format!("  s:\n    logline|re: '(a|b|c|d){{1000}}z{i}'\n  condition: s\n"))
                .collect(),
            event: |n| serde_json::json!({ "logline": repeat_to("abcd", n) }).to_string(),
        },
        Shape {
            name: "20 regexes a[ab]{40}z (no DFA: budget)",
            rules: (0..20).map(|i| format!("  s:\n    logline|re: 'a[ab]{{40}}z{i}'\n  condition: s\n")).collect(),
            event: |n| serde_json::json!({ "logline": random_ab(n) }).to_string(),
        },
        Shape {
            name: "regex \\w{5000} (Unicode classes)",
            rules: vec!["  s:\n    logline|re: '\\w{5000}'\n  condition: s\n".into()],
            event: |n| serde_json::json!({ "logline": "a".repeat(n) }).to_string(),
        },
        Shape {
            name: "fieldref contains, long reference",
            rules: vec!["  s:\n    logline|fieldref|contains: other\n  condition: s\n".into()],
            event: |n| {
                let other = format!("{}b", "a".repeat(n / 2));
                serde_json::json!({ "logline": "a".repeat(n), "other": other }).to_string()
            },
        },
        Shape {
            name: "keyword *aa*aa*b*",
            rules: vec!["  keywords:\n    - '*aa*aa*b*'\n  condition: keywords\n".into()],
            event: |n| serde_json::json!({ "logline": "a".repeat(n) }).to_string(),
        },
    ]
}

fn batch(json: &str) -> EventBatch {
    let mut b = EventBatch::new();
    let o = b.origin_index(&"bench".into(), &"hostile".into());
    b.push_raw(o, 1, json.as_bytes()).expect("small test records fit");
    let mut p = RecordParser::new("parse".into(), Format::Json, 8 << 20, Default::default());
    let mut out = OperatorOutput::default();
    p.process(b, 0, &mut out);
    out.events.pop().expect("the event parses")
}

pub fn run(sizes: &[usize], repeat: usize) -> anyhow::Result<()> {
    println!("| shape | value bytes | ms/event | ns/byte | over budget | alerts |");
    println!("|---|---|---|---|---|---|");
    for shape in shapes() {
        let text = shape
            .rules
            .iter()
            .enumerate()
            .map(|(i, d)| format!("title: t{i}\nid: hostile-{i}\nlogsource: {{ category: test }}\ndetection:\n{d}"))
            .collect::<Vec<_>>()
            .join("---\n");
        let files = vec![RuleFile::new("hostile.yml", "hostile.yml", text)];
        let set = compile_files(&files, &CompileOptions::default(), None)?;
        if set.compiled() == 0 {
            let why = set.rejections().first().map(|(_, _, w)| w.to_string()).unwrap_or_default();
            println!("| {} | – | rejected at load: {why} | | | |", shape.name);
            continue;
        }
        for &size in sizes {
            let b = batch(&(shape.event)(size));
            let mut det = Detector::new(Arc::from("bench"), false);
            let mut best = f64::MAX;
            let mut alerts = Vec::new();
            for _ in 0..repeat {
                alerts.clear();
                let t = Instant::now();
                det.detect(&set, &b, &mut alerts);
                best = best.min(t.elapsed().as_secs_f64());
            }
            let st = det.stats();
            println!(
                "| {} | {size} | {:.3} | {:.2} | {} of {} | {} |",
                shape.name,
                best * 1e3,
                best * 1e9 / size as f64,
                st.over_budget,
                st.events,
                alerts.len()
            );
        }
    }
    Ok(())
}
