//! `ward validate`, `ward graph`, `ward schema`: every bad-spec case is reported with file,
//! line, column and a reason, and exit code 2.

mod common;

use common::*;

const GOOD: &str = r#"name: t
sources:
  - id: src
    type: generator
    count: 10
operators:
  - id: parse
    type: parse
    inputs: [src]
  - id: normalize
    type: normalize
    inputs: [parse]
    packs: [builtin:windows]
sinks:
  - id: out
    type: jsonl
    inputs: [normalize]
    path: out.jsonl
  - id: q
    type: jsonl
    inputs: [quarantine]
    path: q.jsonl
"#;

/// Validates `text`; returns the run and the spec's path.
fn validate(text: &str) -> (Run, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "spec.yaml", text);
    let r = ward(&["validate", &path]);
    (r, path)
}

/// Asserts a validation failure at `line:col` whose message contains `needle`.
fn assert_rejected(text: &str, line: usize, col: Option<usize>, needle: &str) {
    let (r, path) = validate(text);
    assert_eq!(r.code, 2, "exit code for {needle}: {}", r.stderr);
    let prefix = match col {
        Some(c) => format!("{path}:{line}:{c}: "),
        None => format!("{path}:{line}:"),
    };
    assert!(
        r.stderr.lines().any(|l| l.starts_with(&prefix) && l.contains(needle)),
        "expected `{prefix}...{needle}` in:\n{}",
        r.stderr
    );
}

#[test]
fn good_spec_validates() {
    let (r, _) = validate(GOOD);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("ok (5 components)"), "{}", r.stdout);
}

#[test]
fn unknown_type() {
    assert_rejected(&GOOD.replace("type: parse", "type: prase"), 8, Some(11), "unknown operator type `prase`");
    // A sink type under operators gets a hint.
    assert_rejected(&GOOD.replace("type: parse", "type: jsonl"), 8, Some(11), "belongs under `sinks`");
    assert_rejected(&GOOD.replace("type: parse", "type: parquet"), 8, Some(11), "belongs under `sources` or `sinks`");
    // The broken component is not reported again as a dangling input.
    let (r, _) = validate(&GOOD.replace("type: parse", "type: prase"));
    assert!(r.stderr.contains("1 problem(s)"), "{}", r.stderr);
}

#[test]
fn unknown_field() {
    assert_rejected(&GOOD.replace("    count: 10", "    count: 10\n    cuont: 5"), 6, Some(5), "unknown field `cuont`");
    assert_rejected(&format!("{GOOD}extra: 1\n"), 23, Some(1), "unknown top-level key `extra`");
}

#[test]
fn missing_fields() {
    assert_rejected(&GOOD.replace("  - id: parse\n", "  - ids: parse\n"), 7, None, "missing field `id`");
    assert_rejected(&GOOD.replace("    type: parse\n", ""), 7, None, "missing field `type`");
    assert_rejected(&GOOD.replace("    inputs: [src]\n", ""), 7, None, "missing field `inputs`");
    assert_rejected(&GOOD.replace("    path: out.jsonl\n", ""), 15, None, "missing field `path`");
}

#[test]
fn dangling_input() {
    assert_rejected(&GOOD.replace("inputs: [parse]", "inputs: [pasre]"), 12, Some(14), "input `pasre` does not exist");
}

#[test]
fn cycle() {
    let text = GOOD.replace("inputs: [src]", "inputs: [normalize]");
    let (r, _) = validate(&text);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("cycle"), "{}", r.stderr);
    assert!(r.stderr.contains("parse -> normalize") || r.stderr.contains("normalize -> parse"), "{}", r.stderr);
}

#[test]
fn type_mismatch() {
    // Records straight into normalize (it needs parsed events).
    assert_rejected(&GOOD.replace("inputs: [parse]", "inputs: [src]"), 12, Some(14), "type mismatch");
    // An events sink fed by the quarantine stream.
    let text = GOOD.replace("    inputs: [quarantine]\n    path: q.jsonl", "    inputs: [quarantine]\n    path: q.jsonl\n  - id: pq\n    type: parquet\n    inputs: [parse.quarantine]\n    path: pq");
    assert_rejected(&text, 25, Some(14), "accepts events but input `parse.quarantine` is a quarantine stream");
}

#[test]
fn duplicate_ids_and_bad_ids() {
    assert_rejected(&GOOD.replace("  - id: normalize", "  - id: parse"), 10, None, "duplicate id `parse`");
    assert_rejected(&GOOD.replace("  - id: out\n", "  - id: quarantine\n"), 15, None, "reserved");
    assert_rejected(&GOOD.replace("  - id: out\n", "  - id: \"out put\"\n"), 15, None, "invalid id");
}

#[test]
fn output_nobody_reads() {
    let text = GOOD.replace("    inputs: [normalize]\n    path: out.jsonl", "    inputs: [parse]\n    path: out.jsonl");
    assert_rejected(&text, 10, None, "the output of `normalize` is not an input of any operator or sink");
}

#[test]
fn bad_values_and_files() {
    assert_rejected(&GOOD.replace("    count: 10", "    count: lots"), 5, None, "expected an integer");
    assert_rejected(&GOOD.replace("packs: [builtin:windows]", "packs: [packs/missing.yaml]"), 10, None, "missing.yaml");
    assert_rejected(
        &GOOD.replace("packs: [builtin:windows]", "packs: [builtin:nope]"),
        10,
        None,
        "unknown built-in pack",
    );
    assert_rejected(&format!("settings:\n  batch_size: many\n{GOOD}"), 2, None, "settings");
}

#[test]
fn invalid_yaml() {
    assert_rejected("sources:\n  - id: a\n    type: [unclosed\n", 4, None, "invalid YAML");
    let (r, _) = validate("- just\n- a list\n");
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("must be a YAML mapping"), "{}", r.stderr);
}

#[test]
fn all_problems_are_reported_at_once() {
    let text = GOOD.replace("type: parse", "type: prase").replace("path: out.jsonl", "path: out.jsonl\n    bogus: 1");
    let (r, _) = validate(&text);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("prase") && r.stderr.contains("bogus"), "{}", r.stderr);
}

#[test]
fn graph_mermaid_and_dot() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "spec.yaml", GOOD);
    let m = ward(&["graph", &path]);
    assert_eq!(m.code, 0, "{}", m.stderr);
    assert!(m.stdout.starts_with("flowchart LR"));
    assert!(m.stdout.contains("src -->|records| parse"), "{}", m.stdout);
    assert!(m.stdout.contains("normalize -->|events| out"), "{}", m.stdout);
    assert!(m.stdout.contains("parse -->|quarantine| q"), "{}", m.stdout);
    let d = ward(&["graph", &path, "--format", "dot"]);
    assert!(d.stdout.starts_with("digraph \"t\""));
    assert!(d.stdout.contains("\"parse\" -> \"normalize\" [label=\"events\"]"), "{}", d.stdout);
}

#[test]
fn schema_validates_the_shipped_specs_and_rejects_bad_ones() {
    let s = ward(&["schema"]);
    assert_eq!(s.code, 0);
    let schema: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
    let types: Vec<&str> = schema["properties"]["operators"]["items"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["properties"]["type"]["const"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["correlate", "dedup", "enrich", "normalize", "parse", "sigma-match", "sla", "suppress", "view"]);
    let dir = tempfile::tempdir().unwrap();
    let schema_path = write(dir.path(), "schema.json", &s.stdout);
    let bad = write(dir.path(), "bad.yaml", &GOOD.replace("    count: 10", "    count: 10\n    cuont: 5"));
    // An independent validator (Python jsonschema) agrees with `ward validate`.
    let out = python(
        r#"
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
v = jsonschema.Draft202012Validator(schema)
for path in sys.argv[2:]:
    errors = list(v.iter_errors(yaml.safe_load(open(path))))
    print(path.rsplit('/', 1)[-1], len(errors))
"#,
        &[&schema_path, &repo().join("pipelines/demo.yaml").to_string_lossy(), &bad],
    );
    assert!(out.contains("demo.yaml 0"), "{out}");
    assert!(!out.contains("bad.yaml 0"), "{out}");
}

#[test]
fn fields_table_lists_ecs_lite() {
    let f = ward(&["fields"]);
    assert!(f.stdout.contains("| `source.ip` | Ip |"));
    assert!(f.stdout.contains("| `@timestamp` | Timestamp |"));
}

// Hostile specs (docs/architecture.md §10): each is refused with a reason, never a crash or an abort.

#[test]
fn each_cycle_is_reported_with_its_own_members() {
    // Two separate cycles (a self-loop and parse <-> normalize) and a sink fed by one of them.
    let text = GOOD
        .replace("inputs: [src]", "inputs: [src, normalize]")
        .replace("  - id: normalize\n", "  - id: loop\n    type: parse\n    inputs: [loop]\n  - id: normalize\n");
    let (r, _) = validate(&text);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("the cycle loop -> loop"), "{}", r.stderr);
    assert!(r.stderr.contains("the cycle parse -> normalize -> parse"), "{}", r.stderr);
    assert!(!r.stderr.contains("`out` is part"), "a sink downstream of a cycle is not in it:\n{}", r.stderr);
    assert!(!r.stderr.contains("loop -> parse") && !r.stderr.contains("normalize -> loop"), "{}", r.stderr);
}

#[test]
fn deep_nesting_is_refused_before_parsing() {
    for deep in [format!("name: t\nx: {}", "[".repeat(30_000)), format!("name: t\nx:\n{}", "- ".repeat(30_000))] {
        let (r, _) = validate(&deep);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains("nested deeper than 128"), "{}", r.stderr);
    }
}

#[test]
fn sizes_and_addresses_are_bounded_in_validation() {
    let with_settings = |s: &str| GOOD.replace("name: t\n", &format!("name: t\nsettings:\n  {s}\n"));
    assert_rejected(&with_settings("batch_size: 1099511627776"), 3, None, "`batch_size` is 1099511627776");
    assert_rejected(&with_settings("admin_listen: not-an-address"), 3, None, "not an address to listen on");
    assert_rejected(&with_settings("epoch_interval_ms: 0"), 3, None, "`epoch_interval_ms` is 0");
    // At the line of the setting, not of the block's first.
    let second = with_settings("batch_size: 512\n  admin_listen: \"\"\n  epoch_interval_ms: 0");
    assert_rejected(&second, 5, Some(22), "`epoch_interval_ms` is 0");
    let checkpoint = with_settings("batch_size: 512\n  checkpoint: {dir: ck, retain: 0}");
    assert_rejected(&checkpoint, 4, None, "`checkpoint.retain` is 0");
    let (r, _) = validate(&with_settings("admin_listen: \"localhost:0\""));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let big = GOOD.replace("    inputs: [src]\n", "    inputs: [src]\n    max_record_bytes: 1099511627776\n");
    let (r, _) = validate(&big);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("`max_record_bytes` is 1099511627776"), "{}", r.stderr);
    let parquet = GOOD.replace(
        "    type: jsonl\n    inputs: [normalize]\n    path: out.jsonl",
        "    type: parquet\n    inputs: [normalize]\n    path: out\n    row_group_size: 1099511627776",
    );
    assert_ne!(parquet, GOOD);
    let (r, _) = validate(&parquet);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("`row_group_size` is 1099511627776"), "{}", r.stderr);
}

#[test]
fn control_characters_from_the_spec_are_escaped_in_errors() {
    let text = GOOD.replace("id: parse", "id: \"evil\\u202Etxt.exe\"");
    let (r, _) = validate(&text);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("evil\\u{202E}txt.exe"), "{}", r.stderr);
    assert!(!r.stderr.contains('\u{202E}'), "raw bidi override echoed:\n{}", r.stderr);
}

#[test]
fn a_sink_on_a_source_input_or_two_sinks_on_one_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "in/a.log", "x\n");
    let spec = |sink_a: &str, sink_b: &str| {
        format!(
            "name: t\nsources:\n  - {{ id: src, type: file, path: 'in/*.log' }}\noperators:\n  - {{ id: parse, type: parse, inputs: [src] }}\nsinks:\n  - {{ id: a, type: jsonl, inputs: [parse], path: '{sink_a}' }}\n  - {{ id: b, type: jsonl, inputs: [quarantine], path: '{sink_b}' }}\n"
        )
    };
    // Through `..` and a glob: the same file.
    let p = write(dir.path(), "spec.yaml", &spec("in/../in/a.log", "q.jsonl"));
    let r = ward(&["validate", &p]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("which source `src` reads"), "{}", r.stderr);
    let p = write(dir.path(), "spec.yaml", &spec("out.jsonl", "./out.jsonl"));
    let r = ward(&["validate", &p]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("sinks `a` and `b` both write"), "{}", r.stderr);
    let p = write(dir.path(), "spec.yaml", &spec("out.jsonl", "q.jsonl"));
    assert_eq!(ward(&["validate", &p]).code, 0);
    // The input survives: validation refused to run the truncating spec.
    assert_eq!(std::fs::read_to_string(dir.path().join("in/a.log")).unwrap(), "x\n");
}

/// A suppress key or SLA entity that no alert can carry (a typo of a Ward field) is refused at
/// the detector upstream, naming the component that reads it; Ward fields, Sigma names and
/// extension fields pass.
#[test]
fn alert_keys_that_no_alert_can_carry_are_rejected() {
    let rules = repo().join("rules/sigma/ward");
    let spec = |suppress_key: &str, entity: &str| {
        GOOD.replace(
            "sinks:\n",
            &format!(
                "  - {{ id: detect, type: sigma-match, inputs: [normalize], rules: ['{}'], watch: false, include_event: false }}\n  \
                 - {{ id: suppress, type: suppress, inputs: [detect], key: [rule.id, {suppress_key}] }}\n  \
                 - {{ id: sla, type: sla, inputs: [suppress], entity: [{entity}] }}\n\
                 sinks:\n  - {{ id: cases, type: jsonl, inputs: [sla], path: cases.jsonl }}\n",
                rules.display()
            ),
        )
    };
    let (ok, _) = validate(&spec("host.id", "TargetUserName"));
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let (ok, _) = validate(&spec("ext.src_user", "src_user"));
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert_rejected(
        &spec("hostt.id", "host.name"),
        14,
        Some(5),
        "`suppress` reads alert field `hostt.id`, which no alert can carry",
    );
    assert_rejected(&spec("host.id", "user.nmae"), 14, Some(5), "`sla` reads alert field `user.nmae`");
}

/// `${NAME}` and `${NAME:-default}` come from the environment; an unset variable without a
/// default is reported at its line and column.
#[test]
fn environment_variables_fill_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let text = GOOD
        .replace("    count: 10\n", "    count: ${WARD_TEST_COUNT}\n")
        .replace("path: out.jsonl", "path: ${WARD_TEST_OUT:-out.jsonl}");
    let path = write(dir.path(), "spec.yaml", &text);
    let validate = |env: &[(&str, &str)]| {
        let out = std::process::Command::new(ward_bin())
            .args(["validate", &path])
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = validate(&[("WARD_TEST_COUNT", "25")]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = validate(&[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains(&format!("{path}:5:12: environment variable WARD_TEST_COUNT is not set")), "{stderr}");
    let (code, stderr) = validate(&[("WARD_TEST_COUNT", "many")]);
    assert_eq!(code, Some(2), "a value is validated like written text: {stderr}");
}
