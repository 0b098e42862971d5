//! Sigma semantics, one test per modifier and condition form, on events parsed from JSON (rules
//! without a product see the event's own field names).

use std::sync::Arc;

use ward_engine::batch::EventBatch;
use ward_engine::component::{Operator, OperatorOutput};

use super::*;
use crate::parse::{Format, Parser};

fn options() -> CompileOptions {
    let mut o = CompileOptions::default();
    o.placeholders.insert("admins".into(), vec!["root".into(), "admin*".into()]);
    o
}

fn set(rules: &str) -> RuleSet {
    let files = vec![RuleFile::new("t.yml", "t.yml", rules)];
    compile_files(&files, &options(), None).unwrap()
}

fn batch(events: &[&str]) -> EventBatch {
    let mut b = EventBatch::new();
    let o = b.origin_index(&"test".into(), &"p".into());
    for (i, e) in events.iter().enumerate() {
        b.push_raw(o, i as u64, e.as_bytes()).expect("small test records fit");
    }
    let mut p = Parser::new("parse".into(), Format::Json, 1 << 20, Default::default());
    let mut out = OperatorOutput::default();
    p.process(b, 0, &mut out);
    assert!(out.quarantine.is_empty(), "test events must parse");
    out.events.pop().unwrap()
}

/// Indices of the events the single rule in `detection` matches.
fn hits(detection: &str, events: &[&str]) -> Vec<u64> {
    let rule = format!("title: t\nid: r1\nlogsource: {{ category: test }}\ndetection:\n{detection}");
    let s = set(&rule);
    assert_eq!(s.rejected(), 0, "rule rejected: {:?}", s.rejections());
    let mut alerts = Vec::new();
    Detector::new(Arc::from("sigma"), false).detect(&s, &batch(events), &mut alerts);
    alerts.iter().map(|a| a.origin.offset).collect()
}

fn rejection(detection: &str) -> String {
    let rule = format!("title: t\nid: r1\nlogsource: {{ category: test }}\ndetection:\n{detection}");
    let s = set(&rule);
    s.rejections().first().map(|(_, _, why)| why.to_string()).unwrap_or_default()
}

#[test]
fn plain_values_are_case_insensitive_and_whole() {
    let d = "  sel:\n    Image: 'C:\\Windows\\cmd.exe'\n  condition: sel\n";
    let ev = [r#"{"Image":"c:\\windows\\CMD.EXE"}"#, r#"{"Image":"c:\\windows\\cmd.exe.bak"}"#, r#"{"Other":"x"}"#];
    assert_eq!(hits(d, &ev), vec![0]);
}

#[test]
fn cased_is_case_sensitive() {
    let d = "  sel:\n    Image|cased: 'Cmd.exe'\n  condition: sel\n";
    assert_eq!(hits(d, &[r#"{"Image":"Cmd.exe"}"#, r#"{"Image":"cmd.exe"}"#]), vec![0]);
}

#[test]
fn wildcards_and_escapes() {
    let d = "  sel:\n    a: 'x*y?z'\n  condition: sel\n";
    assert_eq!(hits(d, &[r#"{"a":"xAAyBz"}"#, r#"{"a":"xyz"}"#, r#"{"a":"XyQZ"}"#]), vec![0, 2]);
    let escaped = "  sel:\n    a: 'star\\*q\\?'\n  condition: sel\n";
    assert_eq!(hits(escaped, &[r#"{"a":"star*q?"}"#, r#"{"a":"starXqY"}"#]), vec![0]);
    // A lone backslash before another character is a literal backslash.
    let bs = "  sel:\n    a: 'C:\\dir'\n  condition: sel\n";
    assert_eq!(hits(bs, &[r#"{"a":"c:\\dir"}"#]), vec![0]);
}

#[test]
fn contains_startswith_endswith() {
    let ev = [r#"{"c":"powershell -enc AAA"}"#, r#"{"c":"-enc powershell"}"#];
    assert_eq!(hits("  s:\n    c|contains: 'shell -ENC'\n  condition: s\n", &ev), vec![0]);
    assert_eq!(hits("  s:\n    c|startswith: 'POWER'\n  condition: s\n", &ev), vec![0]);
    assert_eq!(hits("  s:\n    c|endswith: 'shell'\n  condition: s\n", &ev), vec![1]);
    // Wildcards inside an anchored value.
    assert_eq!(hits("  s:\n    c|startswith: 'power*-enc'\n  condition: s\n", &ev), vec![0]);
}

#[test]
fn lists_or_maps_and_all() {
    let ev = [r#"{"c":"a b","d":"1"}"#, r#"{"c":"a","d":"1"}"#, r#"{"c":"b","d":"2"}"#];
    assert_eq!(hits("  s:\n    c|contains: [a, b]\n    d: 1\n  condition: s\n", &ev), vec![0, 1]);
    assert_eq!(hits("  s:\n    c|contains|all: [a, b]\n  condition: s\n", &ev), vec![0]);
    // A list of maps is OR.
    assert_eq!(hits("  s:\n    - c: a\n    - d: 2\n  condition: s\n", &ev), vec![1, 2]);
}

#[test]
fn regex_with_flags() {
    let ev = [r#"{"c":"Line1\nline2"}"#, r#"{"c":"line1"}"#];
    assert_eq!(hits("  s:\n    c|re: '^line\\d$'\n  condition: s\n", &ev), vec![1]);
    assert_eq!(hits("  s:\n    c|re|i: '^LINE1'\n  condition: s\n", &ev), vec![0, 1]);
    assert_eq!(hits("  s:\n    c|re|m: '^line2$'\n  condition: s\n", &ev), vec![0]);
    assert_eq!(hits("  s:\n    c|re|s: 'Line1.line2'\n  condition: s\n", &ev), vec![0]);
    // Unanchored search, case-sensitive by default.
    assert_eq!(hits("  s:\n    c|re: 'ine1'\n  condition: s\n", &ev), vec![0, 1]);
    assert!(rejection("  s:\n    c|re: '(?<=a)b'\n  condition: s\n").contains("linear-time"));
    // The same pattern with and without a flag are two tests, not one shared.
    let both = "  a:\n    c|re: '^LINE1'\n  b:\n    c|re|i: '^LINE1'\n  condition: a and b\n";
    assert_eq!(hits(both, &ev), Vec::<u64>::new());
    let either = "  a:\n    c|re|i: '^LINE1'\n  b:\n    c|re: '^LINE1'\n  condition: a and not b\n";
    assert_eq!(hits(either, &ev), vec![0, 1]);
}

#[test]
fn a_regex_used_by_several_rules_and_fields_is_compiled_once() {
    let rules = "title: a\nid: a\nlogsource: { category: test }\ndetection:\n  s:\n    c|re: 'x+y'\n  condition: s\n---\n\
                 title: b\nid: b\nlogsource: { category: test }\ndetection:\n  s:\n    d|re: 'x+y'\n  condition: s\n---\n\
                 title: c\nid: c\nlogsource: { category: test }\ndetection:\n  s:\n    d|re|i: 'x+y'\n  condition: s\n";
    let s = set(rules);
    assert_eq!(s.rejected(), 0, "{:?}", s.rejections());
    // Gated regexes (run where their literal occurs) and ungated ones.
    let lazy = s.matcher.atoms.iter().filter_map(|a| match a {
        crate::sigma::matcher::Atom::Lazy(crate::sigma::matcher::Lazy::Regex { re, .. }) => Some(re),
        _ => None,
    });
    let regexes: Vec<&Arc<crate::sigma::bounded_regex::BoundedRegex>> = s.matcher.verify.iter().chain(lazy).collect();
    assert_eq!(regexes.len(), 3, "three tests (two fields, two flag sets)");
    assert!(Arc::ptr_eq(regexes[0], regexes[1]), "same pattern and flags: one regex");
    assert!(!Arc::ptr_eq(regexes[1], regexes[2]), "other flags: another regex");
    let mut alerts = Vec::new();
    Detector::new(Arc::from("sigma"), false).detect(&s, &batch(&[r#"{"c":"xxy","d":"XY"}"#]), &mut alerts);
    let mut fired: Vec<&str> = alerts.iter().map(|a| a.rule.id.as_str()).collect();
    fired.sort_unstable();
    assert_eq!(fired, ["a", "c"]);
}

#[test]
fn base64_and_base64offset_at_every_alignment() {
    use base64::Engine as _;
    let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ev: Vec<String> =
        ["", "x", "xy"].iter().map(|pre| format!(r#"{{"c":"{}"}}"#, enc(&format!("{pre}/bin/sh -i;")))).collect();
    let refs: Vec<&str> = ev.iter().map(String::as_str).collect();
    assert_eq!(hits("  s:\n    c|base64offset|contains: '/bin/sh'\n  condition: s\n", &refs), vec![0, 1, 2]);
    // Plain base64 encodes the whole value.
    let exact = [r#"{"c":"L2Jpbi9zaA=="}"#, refs[0]];
    assert_eq!(hits("  s:\n    c|base64: '/bin/sh'\n  condition: s\n", &exact), vec![0]);
    assert!(rejection("  s:\n    c|base64offset: 'x'\n  condition: s\n").contains("contains"));
}

#[test]
fn utf16_encodings_with_base64() {
    use base64::Engine as _;
    let enc = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let le: Vec<u8> = "IEX (New-Object".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let be: Vec<u8> = "IEX (New-Object".encode_utf16().flat_map(u16::to_be_bytes).collect();
    let other: Vec<u8> = "Get-ChildItem".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let ev = [enc(&le), enc(&be), enc(&other)].map(|e| format!(r#"{{"c":"{e}"}}"#));
    let refs: Vec<&str> = ev.iter().map(String::as_str).collect();
    // base64offset keeps only the alignment-independent middle of the encoding, so a short
    // pattern can also occur in the other byte order's text (as with pySigma); never in
    // unrelated text.
    for (m, want) in [("wide", 0), ("utf16le", 0), ("utf16be", 1)] {
        let got = hits(&format!("  s:\n    c|{m}|base64offset|contains: 'IEX (New'\n  condition: s\n"), &refs);
        assert!(got.contains(&want) && !got.contains(&2), "{m}: {got:?}");
    }
    let bom = [&[0xFFu8, 0xFE][..], &le].concat();
    let ev = [format!(r#"{{"c":"{}"}}"#, enc(&bom))];
    let refs: Vec<&str> = ev.iter().map(String::as_str).collect();
    assert_eq!(hits("  s:\n    c|utf16|base64offset|contains: 'IEX (New'\n  condition: s\n", &refs), vec![0]);
}

#[test]
fn windash_variants() {
    let ev = [
        r#"{"c":"x.exe -decode"}"#,
        r#"{"c":"x.exe /decode"}"#,
        "{\"c\":\"x.exe \u{2013}decode\"}",
        "{\"c\":\"x.exe \u{2014}decode\"}",
        "{\"c\":\"x.exe \u{2015}decode\"}",
        r#"{"c":"x.exe decode"}"#,
    ];
    assert_eq!(hits("  s:\n    c|windash|contains: ' -decode'\n  condition: s\n", &ev), vec![0, 1, 2, 3, 4]);
}

#[test]
fn cidr_v4_and_v6() {
    let ev = [r#"{"ip":"10.1.2.3"}"#, r#"{"ip":"11.0.0.1"}"#, r#"{"ip":"fd00::1"}"#, r#"{"ip":"not an ip"}"#];
    assert_eq!(hits("  s:\n    ip|cidr: 10.0.0.0/8\n  condition: s\n", &ev), vec![0]);
    assert_eq!(hits("  s:\n    ip|cidr: ['fc00::/7', '11.0.0.0/24']\n  condition: s\n", &ev), vec![1, 2]);
    assert!(rejection("  s:\n    ip|cidr: 10.0.0.0/33\n  condition: s\n").contains("not a CIDR"));
}

#[test]
fn numeric_comparisons_on_numbers_and_strings() {
    let ev = [r#"{"n":5}"#, r#"{"n":"15"}"#, r#"{"n":"abc"}"#, r#"{"n":10.5}"#];
    assert_eq!(hits("  s:\n    n|gt: 10\n  condition: s\n", &ev), vec![1, 3]);
    assert_eq!(hits("  s:\n    n|gte: 15\n  condition: s\n", &ev), vec![1]);
    assert_eq!(hits("  s:\n    n|lt: 10\n  condition: s\n", &ev), vec![0]);
    assert_eq!(hits("  s:\n    n|lte: 5\n  condition: s\n", &ev), vec![0]);
    assert!(rejection("  s:\n    n|gt: abc\n  condition: s\n").contains("needs a number"));
}

#[test]
fn null_and_exists() {
    let ev = [r#"{"a":"x"}"#, r#"{"a":""}"#, r#"{"b":"y"}"#, r#"{"a":null}"#];
    assert_eq!(hits("  s:\n    a: null\n  condition: s\n", &ev), vec![1, 2, 3]);
    assert_eq!(hits("  s:\n    a|exists: true\n  condition: s\n", &ev), vec![0, 1, 3]);
    assert_eq!(hits("  s:\n    a|exists: false\n  condition: s\n", &ev), vec![2]);
    assert_eq!(hits("  s:\n    a: ''\n  condition: s\n", &ev), vec![1]);
}

#[test]
fn expand_placeholders() {
    let ev = [r#"{"u":"root"}"#, r#"{"u":"administrator"}"#, r#"{"u":"bob"}"#];
    assert_eq!(hits("  s:\n    u|expand: '%admins%'\n  condition: s\n", &ev), vec![0, 1]);
    // Without values, under the default policy (`match_nothing`; see the test below).
    assert_eq!(hits("  s:\n    u|expand: '%nobody%'\n  condition: s\n", &ev), Vec::<u64>::new());
}

#[test]
fn fieldref_and_neq() {
    let ev = [r#"{"a":"X","b":"x"}"#, r#"{"a":"x","b":"y"}"#];
    assert_eq!(hits("  s:\n    a|fieldref: b\n  condition: s\n", &ev), vec![0]);
    assert_eq!(hits("  s:\n    a|fieldref|cased: b\n  condition: s\n", &ev), Vec::<u64>::new());
    assert_eq!(hits("  s:\n    a|neq: X\n  condition: s\n", &ev), Vec::<u64>::new());
    assert_eq!(hits("  s:\n    b|neq: [x, z]\n  condition: s\n", &ev), vec![1]);
}

#[test]
fn time_modifiers() {
    let ev = [r#"{"t":"2024-03-05T22:10:00Z"}"#, r#"{"t":"2024-03-05T08:10:00Z"}"#];
    assert_eq!(hits("  s:\n    t|hour: 22\n  condition: s\n", &ev), vec![0]);
    assert_eq!(hits("  s:\n    t|month: 3\n  condition: s\n", &ev), vec![0, 1]);
}

/// Keywords are searched in all of an event's values in one pass, yet each value is matched
/// alone: nothing spans two values, wildcards hold within one value, and a keyword
/// that contains the separator the pass joins values with is searched value by value.
#[test]
fn keywords_match_within_one_value_at_a_time() {
    let kw = |k: &str| format!("  keywords:\n    - {k}\n  condition: keywords\n");
    let ev = [r#"{"a":"xab","b":"cdy"}"#, r#"{"a":"xabcdy"}"#];
    assert_eq!(hits(&kw("abcd"), &ev), vec![1]);
    let ev = [r#"{"a":"x start","b":"start here"}"#, r#"{"a":"x start"}"#, r#"{"a":"restart","b":"here","c":"z"}"#];
    assert_eq!(hits(&kw("'sta*here'"), &ev), vec![0]);
    let ev = [r#"{"a":"aa only","b":"then aa and bb"}"#, r#"{"a":"aa only","b":"bb only"}"#];
    assert_eq!(hits(&kw("'*aa*bb*'"), &ev), vec![0]);
    let ev = [r#"{"a":"a\u0000b"}"#, r#"{"a":"a","b":"b"}"#];
    assert_eq!(hits(&kw("\"a\\0b\""), &ev), vec![0]);
}

#[test]
fn keywords_search_every_text_field() {
    let ev =
        [r#"{"a":"nothing","b":"has MIMIKATZ inside"}"#, r#"{"a":"clean"}"#, r#"{"m":"sekurlsa::logonpasswords"}"#];
    assert_eq!(hits("  keywords:\n    - mimikatz\n    - 'sekurlsa::*'\n  condition: keywords\n", &ev), vec![0, 2]);
    assert_eq!(hits("  keywords:\n    '|all': [has, inside]\n  condition: keywords\n", &ev), vec![0]);
    // What Ward adds itself (`ward.parser: json`, a provenance-derived `event.id`) is not searched.
    assert_eq!(hits("  keywords:\n    - json\n  condition: keywords\n", &ev), Vec::<u64>::new());
}

/// Keyword rules are routed like the others, and a keyword literal that rules of two routes
/// share holds wherever either route admits the event.
#[test]
fn keyword_rules_match_only_events_their_route_admits() {
    let rule = |id: &str, logsource: &str, keywords: &str| {
        format!("title: {id}\nid: {id}\nlogsource: {{ {logsource} }}\ndetection:\n  keywords: [{keywords}]\n  condition: keywords\n")
    };
    let rules = [
        rule("sec", "product: windows, service: security", "mimikatz"),
        rule("sys", "product: windows, service: system", "mimikatz, psexec"),
        rule("any", "product: windows", "sekurlsa"),
    ]
    .join("---\n");
    let ev = |channel: &str, text: &str| {
        format!(
            r##"{{"Event":{{"System":{{"EventID":7,"Channel":"{channel}","TimeCreated":{{"#attributes":{{"SystemTime":"2024-01-01T00:00:00Z"}}}}}},"EventData":{{"Data":"{text}"}}}}}}"##
        )
    };
    let events = [
        ev("Security", "mimikatz psexec sekurlsa"),
        ev("System", "psexec"),
        ev("System", "mimikatz"),
        ev("Application", "mimikatz psexec"),
        ev("Security", "psexec"),
    ];
    let (_, alerts) = windows_hits(&rules, &events);
    let mut got: Vec<(u64, String)> = alerts.iter().map(|a| (a.origin.offset, a.rule.id.to_string())).collect();
    got.sort();
    let want = [(0, "any"), (0, "sec"), (1, "sys"), (2, "sys")];
    assert_eq!(got, want.map(|(o, id)| (o, id.to_string())));
    // A Security event meets only the keywords of the routes that admit it: `psexec` (the
    // System rule's) is not searched in it, and when none of its routes' keywords occurs the
    // SIMD check skips the overlapping pass altogether.
    let (_, alerts, stats) = windows_run(&rules, &[ev("Security", "psexec")]);
    assert!(alerts.is_empty());
    assert_eq!((stats.occurrences, stats.passes), (0, 0), "{stats:?}");
    let (_, _, stats) = windows_run(&rules, &[ev("System", "psexec")]);
    assert_eq!((stats.occurrences, stats.passes), (1, 1), "{stats:?}");
}

#[test]
fn condition_forms() {
    let ev = [r#"{"a":"1","b":"1"}"#, r#"{"a":"1"}"#, r#"{"b":"1"}"#, r#"{"c":"1"}"#];
    let d =
        |c: &str| format!("  selection_a:\n    a: 1\n  selection_b:\n    b: 1\n  _x:\n    c: 1\n  condition: {c}\n");
    assert_eq!(hits(&d("1 of selection_*"), &ev), vec![0, 1, 2]);
    assert_eq!(hits(&d("all of selection_*"), &ev), vec![0]);
    // `them` leaves out `_`-prefixed identifiers.
    assert_eq!(hits(&d("all of them"), &ev), vec![0]);
    assert_eq!(hits(&d("1 of them"), &ev), vec![0, 1, 2]);
    assert_eq!(hits(&d("selection_a and not selection_b"), &ev), vec![1]);
    assert_eq!(hits(&d("not (selection_a or selection_b)"), &ev), vec![3]);
    assert_eq!(hits(&d("_x or (selection_a and selection_b)"), &ev), vec![0, 3]);
    assert!(rejection(&d("1 of nothing_*")).contains("matches no selection"));
    assert!(rejection(&d("selection_z")).contains("unknown selection"));
}

#[test]
fn unicode_case_folding_uses_regex() {
    let ev = ["{\"a\":\"ÜBER\"}", "{\"a\":\"über\"}", "{\"a\":\"uber\"}"];
    assert_eq!(hits("  s:\n    a: 'über'\n  condition: s\n", &ev), vec![0, 1]);
}

#[test]
fn multi_valued_fields_match_any_element() {
    let ev = [r#"{"tags":["a","evil","c"]}"#, r#"{"tags":["a"]}"#];
    assert_eq!(hits("  s:\n    tags: evil\n  condition: s\n", &ev), vec![0]);
}

#[test]
fn filters_apply_to_their_target_rules() {
    let rules = "title: rule\nid: r1\nlogsource: { product: x }\ndetection:\n  s:\n    a: 1\n  condition: s\n\
---\ntitle: other\nid: r2\nlogsource: { product: x }\ndetection:\n  s:\n    a: 1\n  condition: s\n\
---\ntitle: tuning\nid: f1\nlogsource: { product: x }\nfilter:\n  rules: [r1]\n  selection:\n    u: svc\n  condition: selection\n";
    let s = set(rules);
    assert_eq!(s.count(|st| *st == Status::Filter), 1, "{:?}", s.rejections());
    let mut alerts = Vec::new();
    Detector::new("sigma".into(), false).detect(
        &s,
        &batch(&[r#"{"a":"1","u":"svc"}"#, r#"{"a":"1","u":"bob"}"#]),
        &mut alerts,
    );
    let got: Vec<(String, u64)> = alerts.iter().map(|a| (a.rule.id.clone(), a.origin.offset)).collect();
    assert_eq!(got, vec![("r2".into(), 0), ("r1".into(), 1), ("r2".into(), 1)]);
}

#[test]
fn alerts_carry_rule_match_and_provenance() {
    let rules = "title: Encoded PowerShell\nid: 11111111-2222-3333-4444-555555555555\nstatus: test\nlevel: high\n\
tags: [attack.execution, attack.t1059.001]\nlogsource: { category: test }\ndetection:\n  sel:\n    c|contains: ' -enc '\n  condition: sel\n";
    let s = set(rules);
    let mut alerts = Vec::new();
    Detector::new("sigma".into(), true).detect(&s, &batch(&[r#"{"c":"powershell -enc AAAA"}"#]), &mut alerts);
    let a = &alerts[0];
    assert_eq!(a.rule.level, "high");
    assert_eq!(a.priority, 2);
    assert_eq!(a.rule.techniques, vec!["T1059.001"]);
    assert_eq!(a.matches[0].selection, "sel");
    assert_eq!(a.matches[0].fields, vec![("c".to_string(), "powershell -enc AAAA".to_string())]);
    assert_eq!(a.ruleset_version, s.version);
    assert_eq!((a.origin.source.as_str(), a.origin.offset), ("test", 0));
    assert!(a.event.is_some());
    // Deterministic id: the same rule and event give the same id.
    let mut again = Vec::new();
    Detector::new("sigma".into(), true).detect(&s, &batch(&[r#"{"c":"powershell -enc AAAA"}"#]), &mut again);
    assert_eq!(again[0].alert_id, a.alert_id);
}

#[test]
fn logsource_routing_selects_events() {
    // A Windows process_creation rule sees Sysmon 1 and Security 4688, not Sysmon 3.
    let rules = "title: whoami\nid: w1\nlogsource: { product: windows, category: process_creation }\n\
detection:\n  sel:\n    Image|endswith: '\\whoami.exe'\n  condition: sel\n";
    let s = set(rules);
    let ev = |channel: &str, id: u32, field: &str| {
        format!(
            r##"{{"Event":{{"System":{{"EventID":{id},"Channel":"{channel}","TimeCreated":{{"#attributes":{{"SystemTime":"2024-01-01T00:00:00Z"}}}}}},"EventData":{{"{field}":"C:\\Windows\\System32\\whoami.exe"}}}}}}"##
        )
    };
    let events = [
        ev("Microsoft-Windows-Sysmon/Operational", 1, "Image"),
        ev("Security", 4688, "NewProcessName"),
        ev("Microsoft-Windows-Sysmon/Operational", 3, "Image"),
    ];
    let refs: Vec<&str> = events.iter().map(String::as_str).collect();
    let parsed = batch(&refs);
    let packs = Arc::new(crate::normalize::load_packs(&["builtin:windows".into()], &Resources::new(".")).unwrap());
    let mut norm = crate::normalize::Normalizer::new("n".into(), packs, crate::normalize::Unmatched::Keep, false);
    let mut out = OperatorOutput::default();
    norm.process(parsed, 0, &mut out);
    let mut alerts = Vec::new();
    Detector::new("sigma".into(), false).detect(&s, &out.events[0], &mut alerts);
    assert_eq!(alerts.iter().map(|a| a.origin.offset).collect::<Vec<_>>(), vec![0, 1]);
}

#[test]
fn unsupported_constructs_are_rejected_with_reasons() {
    assert!(rejection("  s:\n    a|re|contains: x\n  condition: s\n").contains("cannot be combined"));
    let tf = "  s:\n    a: 1\n  timeframe: 5m\n  condition: s\n";
    assert!(rejection(tf).contains("timeframe"));
}

// Hostile input (docs/architecture.md §10): rule forms that a naive matcher makes quadratic, on values an
// attacker writes. Work is counted (bytes given to regex searches), so the bounds are exact.

/// The set, the detector after one event, and the alerts.
fn run_one(rules: &[&str], event: &str) -> (RuleSet, Detector, Vec<ward_engine::alert::Alert>) {
    run_one_with(rules, event, None)
}

fn run_one_with(
    rules: &[&str],
    event: &str,
    budget: Option<matcher::MatchBudget>,
) -> (RuleSet, Detector, Vec<ward_engine::alert::Alert>) {
    let text = rules
        .iter()
        .enumerate()
        .map(|(i, d)| format!("title: t{i}\nid: r{i}\nlogsource: {{ category: test }}\ndetection:\n{d}"))
        .collect::<Vec<_>>()
        .join("---\n");
    let mut s = set(&text);
    assert_eq!(s.rejected(), 0, "rule rejected: {:?}", s.rejections());
    if let Some(b) = budget {
        s.matcher.budget = b;
    }
    let mut det = Detector::new(Arc::from("sigma"), false);
    det.record_over_budget();
    let mut alerts = Vec::new();
    let mut b = EventBatch::new();
    let o = b.origin_index(&"test".into(), &"p".into());
    b.push_raw(o, 0, event.as_bytes()).expect("small test records fit");
    let mut p = Parser::new("parse".into(), Format::Json, 8 << 20, Default::default());
    let mut out = OperatorOutput::default();
    p.process(b, 0, &mut out);
    det.detect(&s, &out.events.pop().unwrap(), &mut alerts);
    (s, det, alerts)
}

#[test]
fn a_repeated_wildcard_gate_is_verified_once_per_value() {
    // 1 MB of sshd text with the gate "failed password for " 17,000 times and no " port ":
    // verification per gate occurrence read 17,000 × 1 MB.
    let line = "Failed password for invalid user admin from 203.0.113.9 ".repeat(17_000);
    let event = serde_json::json!({ "logline": line }).to_string();
    let started = std::time::Instant::now();
    let (_, det, alerts) =
        run_one(&["  s:\n    logline: 'Failed password for * from * port *'\n  condition: s\n"], &event);
    assert!(alerts.is_empty());
    let st = det.stats();
    assert!(
        st.searched_bytes <= line.len() as u64,
        "searched {} bytes of a {}-byte value",
        st.searched_bytes,
        line.len()
    );
    assert_eq!(st.over_budget, 0);
    assert!(started.elapsed().as_secs() < 20, "took {:?}", started.elapsed());
    // The same rule still matches a real line.
    let (_, _, alerts) = run_one(
        &["  s:\n    logline: 'Failed password for * from * port *'\n  condition: s\n"],
        r#"{"logline":"Failed password for root from 10.0.0.1 port 22 ssh2"}"#,
    );
    assert_eq!(alerts.len(), 1);
}

#[test]
fn overlapping_gates_on_a_run_of_one_character_stay_linear() {
    let value = "a".repeat(100_000);
    let event = serde_json::json!({ "logline": value }).to_string();
    let (_, det, alerts) = run_one(&["  s:\n    logline: '*aa*aa*b*'\n  condition: s\n"], &event);
    assert!(alerts.is_empty());
    assert!(det.stats().searched_bytes <= value.len() as u64, "{}", det.stats().searched_bytes);
    // Keywords take the same path.
    let (_, det, _) = run_one(&["  keywords:\n    - '*aa*aa*b*'\n  condition: keywords\n"], &event);
    assert!(det.stats().searched_bytes <= value.len() as u64, "{}", det.stats().searched_bytes);
}

#[test]
fn field_references_compare_in_linear_time() {
    let n = 400_000;
    let event = serde_json::json!({ "logline": "a".repeat(n), "other": format!("{}b", "a".repeat(n / 2)) }).to_string();
    let started = std::time::Instant::now();
    let (_, _, alerts) = run_one(&["  s:\n    logline|fieldref|contains: other\n  condition: s\n"], &event);
    assert!(alerts.is_empty());
    assert!(started.elapsed().as_secs() < 20, "took {:?}", started.elapsed());
    let (_, _, alerts) = run_one(
        &["  s:\n    logline|fieldref|contains: other\n  condition: s\n"],
        r#"{"logline":"xxABCxx","other":"abc"}"#,
    );
    assert_eq!(alerts.len(), 1);
}

#[test]
fn oversized_regexes_are_rejected_at_load_with_the_reason() {
    let why = rejection("  s:\n    c|re: '\\w{5000}'\n  condition: s\n");
    assert!(why.contains("KiB") && why.contains("linear"), "{why}");
}

#[test]
fn regexes_run_only_where_their_literals_occur() {
    let rules = [
        "  s:\n    logline|re: 'route\\s+print'\n  condition: s\n",
        // A non-ASCII literal compared case-insensitively is a regex too; its case variants are
        // the whole pattern, so it is decided by the automata alone.
        "  s:\n    logline|contains: '\u{0399}'\n  condition: s\n",
    ];
    let long = "x".repeat(10_000);
    let (_, det, alerts) = run_one(&rules, &serde_json::json!({ "logline": long }).to_string());
    assert!(alerts.is_empty());
    assert_eq!(det.stats().searched_bytes, 0, "no literal, no search");
    // Gates are found case-insensitively (one pass per value); the cased regex then decides.
    let value = "ROUTE print \u{03B9}";
    let (_, det, alerts) = run_one(&rules, &serde_json::json!({ "logline": value }).to_string());
    assert_eq!(alerts.iter().map(|a| a.rule.id.as_str()).collect::<Vec<_>>(), vec!["r1"], "the regex is cased");
    assert_eq!(det.stats().searched_bytes, value.len() as u64);
    let (_, det, alerts) = run_one(&rules, &serde_json::json!({ "logline": "route  print" }).to_string());
    assert_eq!(alerts.iter().map(|a| a.rule.id.as_str()).collect::<Vec<_>>(), vec!["r0"]);
    assert_eq!(det.stats().searched_bytes, "route  print".len() as u64);
}

#[test]
fn over_budget_events_are_evaluated_by_cheap_tests_and_counted() {
    // The budget runs out on a long value: the literal rule still alerts, the regex rules are
    // reported undecided, and a negated undecided test never alerts.
    let rules = [
        "  s:\n    logline|re: 'a[ab]{30}z'\n  condition: s\n",
        "  s:\n    logline|re: 'b[ab]{30}z'\n  condition: not s\n",
        "  s:\n    logline|contains: 'needle'\n  condition: s\n",
        "  s:\n    logline|contains: 'needle'\n  f:\n    logline|re: 'a[ab]{30}q'\n  condition: s and not f\n",
    ];
    let value = format!("needle{}", "ab".repeat(50_000));
    let event = serde_json::json!({ "logline": value }).to_string();
    let tight = matcher::MatchBudget { base: 10_000, per_byte: 0 };
    let (_, mut det, alerts) = run_one_with(&rules, &event, Some(tight));
    assert_eq!(alerts.iter().map(|a| a.rule.id.as_str()).collect::<Vec<_>>(), vec!["r2"]);
    let st = det.stats();
    assert_eq!(st.over_budget, 1, "{st:?}");
    assert_eq!(st.undecided, 3, "{st:?}");
    let over = det.take_over_budget();
    assert_eq!(over.len(), 1);
    assert_eq!(over[0].undecided, vec!["r0", "r1", "r3"]);
    // With the default budget the same event is decided in full.
    let (_, det, alerts) = run_one(&rules, &event);
    assert_eq!(det.stats().over_budget, 0);
    assert_eq!(alerts.iter().map(|a| a.rule.id.as_str()).collect::<Vec<_>>(), vec!["r1", "r2", "r3"]);
}

/// Runs Windows EVTX-JSON events through the built-in Windows pack and `rules`; the offsets of
/// the events that raised an alert, and the alerts.
fn windows_hits(rules: &str, events: &[String]) -> (Vec<u64>, Vec<ward_engine::alert::Alert>) {
    let (offsets, alerts, _) = windows_run(rules, events);
    (offsets, alerts)
}

/// [`windows_hits`], with the matcher's work counters.
fn windows_run(rules: &str, events: &[String]) -> (Vec<u64>, Vec<ward_engine::alert::Alert>, matcher::MatchStats) {
    let s = set(rules);
    assert_eq!(s.rejected(), 0, "rule rejected: {:?}", s.rejections());
    let refs: Vec<&str> = events.iter().map(String::as_str).collect();
    let packs = Arc::new(crate::normalize::load_packs(&["builtin:windows".into()], &Resources::new(".")).unwrap());
    let mut norm = crate::normalize::Normalizer::new("n".into(), packs, crate::normalize::Unmatched::Keep, false);
    let mut out = OperatorOutput::default();
    norm.process(batch(&refs), 0, &mut out);
    let mut alerts = Vec::new();
    let mut det = Detector::new("sigma".into(), false);
    det.detect(&s, &out.events[0], &mut alerts);
    (alerts.iter().map(|a| a.origin.offset).collect(), alerts, det.stats())
}

#[test]
fn an_event_meets_only_the_literals_of_the_rules_routed_to_it() {
    let rule = |id: &str, category: &str| {
        format!(
            "title: {id}\nid: {id}\nlogsource: {{ product: windows, category: {category} }}\n\
detection:\n  sel:\n    Image|endswith: '\\whoami.exe'\n  condition: sel\n"
        )
    };
    let sysmon = "Microsoft-Windows-Sysmon/Operational";
    let provider = "Microsoft-Windows-Sysmon";
    let data = r#""EventData":{"Image":"C:\\Windows\\System32\\whoami.exe"}"#;
    let process = windows_event(sysmon, provider, 1, data);
    let registry = windows_event(sysmon, provider, 13, data);
    // The registry rule's literal is not scanned on a process event, nor the process rule's on
    // a registry event: no occurrence, no evaluation.
    let (offsets, _, st) = windows_run(&rule("reg", "registry_set"), std::slice::from_ref(&process));
    assert!(offsets.is_empty());
    assert_eq!((st.occurrences, st.evaluated), (0, 0), "{st:?}");
    let (offsets, _, st) = windows_run(&rule("proc", "process_creation"), std::slice::from_ref(&registry));
    assert!(offsets.is_empty());
    assert_eq!((st.occurrences, st.evaluated), (0, 0), "{st:?}");
    // Where the route admits the event, the same literal is found and the rule alerts.
    let both = format!("{}---\n{}", rule("proc", "process_creation"), rule("reg", "registry_set"));
    let (offsets, alerts, st) = windows_run(&both, &[process, registry]);
    assert_eq!(offsets, vec![0, 1]);
    assert_eq!(alerts.iter().map(|a| a.rule.id.as_str()).collect::<Vec<_>>(), vec!["proc", "reg"]);
    assert_eq!(st.occurrences, 2, "{st:?}");
}

fn windows_event(channel: &str, provider: &str, id: u32, data: &str) -> String {
    format!(
        r##"{{"Event":{{"System":{{"Provider":{{"#attributes":{{"Name":"{provider}"}}}},"EventID":{id},"Channel":"{channel}","Computer":"ws-1","TimeCreated":{{"#attributes":{{"SystemTime":"2024-01-01T00:00:00Z"}}}}}},{data}}}}}"##
    )
}

#[test]
fn event_data_under_user_data_matches_the_sigma_field_names() {
    // WMI-Activity keeps its fields under Event.UserData.<Element>, as exported.
    let rules = "title: wmi consumer\nid: wmi1\nlogsource: { product: windows, service: wmi }\n\
detection:\n  sel:\n    EventID: 5861\n    PossibleCause|contains: 'CommandLineEventConsumer'\n  condition: sel\n";
    let wmi = "Microsoft-Windows-WMI-Activity/Operational";
    let provider = "Microsoft-Windows-WMI-Activity";
    let events = [
        windows_event(
            wmi,
            provider,
            5861,
            r#""UserData":{"Operation_ESStoConsumerBinding":{"Namespace":"//./root/subscription","ESS":"evil","CONSUMER":"CommandLineEventConsumer=\"evil\"","PossibleCause":"Binding EventFilter: instance of CommandLineEventConsumer"}}"#,
        ),
        windows_event(
            wmi,
            provider,
            5861,
            r#""UserData":{"Operation_ESStoConsumerBinding":{"PossibleCause":"Binding EventFilter: instance of LogFileEventConsumer"}}"#,
        ),
        // The same data under EventData still matches; another channel does not.
        windows_event(wmi, provider, 5861, r#""EventData":{"PossibleCause":"CommandLineEventConsumer"}"#),
        windows_event(
            "Application",
            provider,
            5861,
            r#""UserData":{"X":{"PossibleCause":"CommandLineEventConsumer"}}"#,
        ),
    ];
    let (offsets, alerts) = windows_hits(rules, &events);
    assert_eq!(offsets, vec![0, 2]);
    // The alert shows the value it matched, under the Sigma name.
    let fields: Vec<&(String, String)> = alerts[0].matches.iter().flat_map(|m| &m.fields).collect();
    assert!(fields.iter().any(|(n, v)| n == "PossibleCause" && v.contains("CommandLineEventConsumer")), "{fields:?}");
}

#[test]
fn event_data_names_with_spaces_match_the_names_without() {
    // Microsoft Defender writes `Threat Name`, `Process Name`; Sigma rules say ThreatName.
    let rules = "title: defender\nid: def1\nlogsource: { product: windows, service: windefend }\n\
detection:\n  sel:\n    EventID: 1116\n    ThreatName|contains: 'Mimikatz'\n    ProcessName|endswith: '\\powershell.exe'\n  condition: sel\n";
    let channel = "Microsoft-Windows-Windows Defender/Operational";
    let provider = "Microsoft-Windows-Windows Defender";
    let events = [
        windows_event(
            channel,
            provider,
            1116,
            r#""EventData":{"Threat Name":"HackTool:Win32/Mimikatz!MTB","Process Name":"C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe","Source Name":"Real-Time Protection"}"#,
        ),
        windows_event(
            channel,
            provider,
            1116,
            r#""EventData":{"Threat Name":"Trojan:Win32/Other","Process Name":"C:\\x\\powershell.exe"}"#,
        ),
        windows_event(
            channel,
            provider,
            1116,
            r#""EventData":{"ThreatName":"HackTool:Win32/Mimikatz","ProcessName":"C:\\powershell.exe"}"#,
        ),
    ];
    assert_eq!(windows_hits(rules, &events).0, vec![0, 2]);
}

#[test]
fn placeholders_without_values_follow_the_policy() {
    let rule = "title: t\nid: p1\nlogsource: { category: test }\ndetection:\n  sel:\n    User|expand: '%unknown%'\n  other:\n    Image: a\n  condition: sel or other\n";
    let ev = [r#"{"User":"anyone"}"#, r#"{"Image":"a"}"#, r#"{"User":"%unknown%"}"#];
    for (policy, want) in [
        (PlaceholdersMissing::Reject, None),
        (PlaceholdersMissing::MatchNothing, Some(vec![1])),
        (PlaceholdersMissing::Wildcard, Some(vec![0, 1, 2])),
    ] {
        let mut o = options();
        o.placeholders_missing = policy;
        let s = compile_files(&[RuleFile::new("t.yml", "t.yml", rule)], &o, None).unwrap();
        let Some(want) = want else {
            let why = s.rejections().first().map(|r| r.2.to_string()).unwrap_or_default();
            assert!(why.contains("placeholder `%unknown%` has no values"), "{policy:?}: {why}");
            continue;
        };
        assert_eq!(s.rejected(), 0, "{policy:?}: {:?}", s.rejections());
        let notes = s.notes();
        assert!(notes.len() == 1 && notes[0].2.contains("%unknown%"), "{policy:?}: {notes:?}");
        let mut alerts = Vec::new();
        Detector::new(Arc::from("sigma"), false).detect(&s, &batch(&ev), &mut alerts);
        assert_eq!(alerts.iter().map(|a| a.origin.offset).collect::<Vec<_>>(), want, "{policy:?}");
    }
    // A configured placeholder is expanded whatever the policy, without a note.
    let s = set("title: t\nid: p2\nlogsource: { category: test }\ndetection:\n  sel:\n    User|expand: '%admins%'\n  condition: sel\n");
    assert!(s.notes().is_empty() && s.rejected() == 0);
}

#[test]
fn a_conjunction_is_evaluated_only_once_each_of_its_parts_occurred() {
    let rules = [
        "title: whoami all",
        "id: w1",
        "logsource: { product: windows, category: process_creation }",
        "detection:",
        "  image:",
        "    Image|endswith: '\\whoami.exe'",
        "  args:",
        "    CommandLine|contains: [' /all', ' /groups']",
        "  filter:",
        "    User: 'SYSTEM'",
        "  condition: image and args and not filter",
    ]
    .join("\n");
    let rules = rules.as_str();
    let sysmon = "Microsoft-Windows-Sysmon/Operational";
    let provider = "Microsoft-Windows-Sysmon";
    let event = |cmd: &str| {
        let data = format!(
            r#""EventData":{{"Image":"C:\\Windows\\System32\\whoami.exe","CommandLine":"{cmd}","User":"alice"}}"#
        );
        windows_event(sysmon, provider, 1, &data)
    };
    // The image occurs without the arguments: the rule cannot hold and is not evaluated.
    let (offsets, _, st) = windows_run(rules, &[event("whoami /priv")]);
    assert!(offsets.is_empty());
    assert_eq!((st.occurrences, st.evaluated), (1, 0), "{st:?}");
    // Both parts occur: evaluated once, and it alerts.
    let (offsets, _, st) = windows_run(rules, &[event("whoami /priv"), event("whoami /groups")]);
    assert_eq!(offsets, vec![1]);
    assert_eq!(st.evaluated, 1, "{st:?}");
}

/// Cased literals share the field's one automaton pass with the others and are checked as
/// written where they occur, also when a case-insensitive literal has the same letters.
#[test]
fn cased_literals_share_the_pass_and_keep_their_case() {
    let rule = |id: &str, detection: &str| {
        format!(
            "title: {id}\nid: {id}\nlogsource: {{ category: test }}\ndetection:\n  sel:\n{detection}  condition: sel\n"
        )
    };
    let rules = [
        rule("cased", "    c|contains|cased: 'ABC'\n"),
        rule("any-case", "    c|contains: 'abc'\n"),
        rule("other", "    c|contains: 'xyz'\n"),
        rule("cased-start", "    c|startswith|cased: 'Run'\n"),
    ]
    .join("---\n");
    let s = set(&rules);
    assert_eq!(s.rejected(), 0, "{:?}", s.rejections());
    let events =
        [r#"{"c":"xx abc"}"#, r#"{"c":"xx ABC"}"#, r#"{"c":"xYz aBc"}"#, r#"{"c":"Run ABC"}"#, r#"{"c":"run it"}"#];
    let mut alerts = Vec::new();
    let mut det = Detector::new(Arc::from("sigma"), false);
    det.detect(&s, &batch(&events), &mut alerts);
    let got: Vec<(u64, &str)> = alerts.iter().map(|a| (a.origin.offset, a.rule.id.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (0, "any-case"),
            (1, "cased"),
            (1, "any-case"),
            (2, "any-case"),
            (2, "other"),
            (3, "cased"),
            (3, "any-case"),
            (3, "cased-start"),
        ]
    );
    assert_eq!(det.stats().passes, events.len() as u64, "one pass per value");
}
