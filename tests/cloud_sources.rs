//! Cloud, identity and network sources as they are delivered (CloudTrail log files, Azure
//! diagnostic-log documents, EventBridge envelopes, VPC flow text, Suricata EVE, Okta, M365 and
//! GCP audit records in `rules/samples/`): each is split into its records, claimed by its
//! built-in pack without `--pack`, routed to its product's rules, and the SigmaHQ rules (or
//! Ward's own, for products SigmaHQ has none for) raise exactly the expected alerts.

mod common;

use std::collections::BTreeSet;

use common::*;

/// (sample file, expected (event index, rule id) pairs).
const SAMPLES: &[(&str, &[(u64, &str)])] = &[
    // Records 1 (StopLogging) and 3 (DeleteTrail, denied): "AWS CloudTrail Important Change".
    (
        "aws-cloudtrail.json.gz",
        &[(1, "4db60cc0-36fb-42b7-9b58-a5b53019fb74"), (3, "4db60cc0-36fb-42b7-9b58-a5b53019fb74")],
    ),
    // EventBridge envelopes unwrapped: only the severity-8 finding.
    ("aws-guardduty-eventbridge.json", &[(1, "6b1e2c3d-4f5a-4b6c-8d7e-9f0a1b2c3d41")]),
    // Header line 0; REJECTs to 22 and 3389 (lines 2 and 4); the NODATA record has no address.
    ("aws-vpcflow.log", &[(2, "6b1e2c3d-4f5a-4b6c-8d7e-9f0a1b2c3d43"), (4, "6b1e2c3d-4f5a-4b6c-8d7e-9f0a1b2c3d43")]),
    // One `{"records": [...]}` document: sign-in, failed sign-in, NSG rule write, risk event.
    (
        "azure-diagnostic-logs.json",
        &[
            (0, "5afa454e-030c-4ab4-9253-a90aa7fcc581"),
            (2, "d22b4df4-5a67-4859-a578-8c9a0b5af9df"),
            (3, "e3393cba-31f0-4207-831e-aef90ab17a8c"),
        ],
    ),
    ("gcp-audit.json", &[(0, "234f9f48-904b-4736-a34c-55d23919e4b7"), (1, "ee2803f0-71c8-4831-b48b-a1fc57601ee4")]),
    ("m365-audit.json", &[(1, "2e669ed8-742e-4fe5-b3c4-5a59b486c2ee")]),
    ("okta-system-log.json", &[(1, "19951c21-229d-4ccb-8774-b993c3ff3c5c")]),
    // The severity-1 alert that was allowed; the blocked one (5) is filtered.
    ("suricata-eve.json", &[(1, "6b1e2c3d-4f5a-4b6c-8d7e-9f0a1b2c3d42")]),
];

#[test]
fn every_sample_source_raises_exactly_its_expected_alerts_without_flags() {
    // Not `rules/network`: its Cisco keyword rules have no routing (no pack) and so run on
    // every event, where `username` matches CloudTrail's userName.
    let rules =
        [sigmahq_dir().join("rules/cloud"), sigmahq_dir().join("rules/identity"), repo().join("rules/sigma/ward")];
    let rules: Vec<String> = rules.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    for (file, expected) in SAMPLES {
        let events = repo().join("rules/samples").join(file).to_string_lossy().into_owned();
        let mut args: Vec<&str> = vec!["rules", "test"];
        args.extend(rules.iter().map(String::as_str));
        args.extend(["--events", &events]);
        let r = ward(&args);
        assert_eq!(r.code, 0, "{file}: {}", r.stderr);
        assert!(!r.stderr.contains("not normalized") && !r.stderr.contains("not read"), "{file}: {}", r.stderr);
        let got: BTreeSet<(u64, String)> = r
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|a| (a["event_index"].as_u64().unwrap(), a["rule"]["id"].as_str().unwrap().to_string()))
            .collect();
        let want: BTreeSet<(u64, String)> = expected.iter().map(|(i, id)| (*i, id.to_string())).collect();
        assert_eq!(got, want, "{file}");
    }
}

#[test]
fn rules_check_reports_every_rule_of_a_product_with_a_pack_as_routed() {
    let r = ward(&["rules", "check", "--json", &sigmahq_dir().join("rules").to_string_lossy()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let routing = report["routing"].as_array().unwrap();
    let mut with_packs = 0;
    for p in routing {
        let has_pack = !p["packs"].as_array().unwrap().is_empty();
        if has_pack {
            with_packs += 1;
            assert_eq!(p["unrouted"], 0, "rules of a product Ward has a pack for lack a routing entry: {p}");
            assert!(p["routed"].as_u64().unwrap() > 0, "{p}");
        }
    }
    let product = |name: &str| routing.iter().find(|p| p["product"] == name).cloned().unwrap_or_default();
    for name in ["aws", "azure", "gcp", "m365", "okta", "windows", "linux", "zeek"] {
        assert!(product(name)["routed"].as_u64().unwrap_or(0) > 0, "{name}: {}", product(name));
    }
    assert!(with_packs >= 9, "{routing:?}");
    assert!(product("macos")["packs"].as_array().unwrap().is_empty(), "no macOS pack yet");
}

#[test]
fn packs_detect_counts_claims_and_explains_what_no_product_pack_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mixed.jsonl");
    std::fs::write(
        &file,
        concat!(
            "{\"foo\":1}\n",
            "{\"eventSource\":\"s3.amazonaws.com\",\"eventName\":\"GetObject\"}\n",
            "{\"Event\":{\"System\":{\"EventID\":4625}}}\n",
            "{\"uuid\":\"u1\",\"eventType\":\"user.session.start\",\"published\":\"2026-12-01T10:00:00Z\"}\n",
        ),
    )
    .unwrap();
    let r = ward(&["packs", "detect", "--json", &file.to_string_lossy()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let pack = |name: &str| j["packs"].as_array().unwrap().iter().find(|p| p["pack"] == name).cloned().unwrap();
    assert_eq!(j["events"], 4);
    assert_eq!(pack("okta")["normalized"], 1);
    assert_eq!(pack("windows")["events"], 1);
    assert_eq!(pack("windows")["quarantined"]["missing_field"]["count"], 1, "no timestamp: {}", pack("windows"));
    assert_eq!(pack("generic-json")["events"], 2);
    assert_eq!(j["generic_only"], 2);
    let cloudtrail = &j["generic_only_examples"][1];
    assert_eq!(cloudtrail["event_index"], 1);
    assert_eq!(cloudtrail["closest"][0]["pack"], "aws-cloudtrail");
    assert_eq!(cloudtrail["closest"][0]["conditions_held"], 2);
    assert!(cloudtrail["closest"][0]["missed"].as_str().unwrap().contains("eventVersion"), "{cloudtrail}");
    // Every sample delivery is claimed by its own pack, whole.
    for (file, pack_name, n) in [
        ("aws-cloudtrail.json.gz", "aws-cloudtrail", 4),
        ("azure-diagnostic-logs.json", "azure", 4),
        ("aws-vpcflow.log", "aws-vpcflow", 4),
        ("suricata-eve.json", "suricata", 6),
    ] {
        let path = repo().join("rules/samples").join(file);
        let r = ward(&["packs", "detect", "--json", &path.to_string_lossy()]);
        let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        let p = j["packs"].as_array().unwrap().iter().find(|p| p["pack"] == pack_name).cloned().unwrap();
        assert_eq!((p["events"].as_u64(), p["normalized"].as_u64()), (Some(n), Some(n)), "{file}: {j}");
        assert_eq!(j["generic_only"], 0, "{file}");
    }
}

/// The generator's cloud sources (`cloud: true`) through the pipeline with every built-in
/// pack: each block's eight attacks raise exactly their rule's alert, and the benign cloud
/// background (a fifth of the stream) raises none.
#[test]
fn generator_cloud_attacks_raise_their_alerts_and_nothing_else_does() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("ward-cloud");
    std::fs::create_dir(&rules).unwrap();
    for f in [
        "aws_guardduty_high_severity_finding.yml",
        "suricata_high_severity_alert.yml",
        "aws_vpcflow_rejected_admin_ports.yml",
    ] {
        std::fs::copy(repo().join("rules/sigma/ward").join(f), rules.join(f)).unwrap();
    }
    let spec = dir.path().join("spec.yaml");
    std::fs::write(
        &spec,
        format!(
            r#"name: cloud
settings: {{admin_listen: ""}}
sources:
  - {{id: gen, type: generator, count: 3000, seed: 5, cloud: true}}
operators:
  - {{id: parse, type: parse, inputs: [gen], syslog_year: 2026}}
  - {{id: normalize, type: normalize, inputs: [parse]}}
  - {{id: detect, type: sigma-match, inputs: [normalize], rules: ["{cloud}", "{identity}", "{ward}"], watch: false}}
sinks:
  - {{id: alerts, type: jsonl, inputs: [detect], path: alerts.jsonl}}
  - {{id: q, type: jsonl, inputs: [quarantine], path: q.jsonl}}
"#,
            cloud = sigmahq_dir().join("rules/cloud").display(),
            identity = sigmahq_dir().join("rules/identity").display(),
            ward = rules.display(),
        ),
    )
    .unwrap();
    let r = ward(&["run", &spec.to_string_lossy(), "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(dir.path().join("alerts.jsonl")).unwrap();
    let got: BTreeSet<(u64, String)> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|a| (a["origin"]["offset"].as_u64().unwrap(), a["rule"]["id"].as_str().unwrap().to_string()))
        .collect();
    let attacks = [
        "4db60cc0-36fb-42b7-9b58-a5b53019fb74", // CloudTrail StopLogging
        "19951c21-229d-4ccb-8774-b993c3ff3c5c", // Okta API token created
        "d22b4df4-5a67-4859-a578-8c9a0b5af9df", // Azure NSG rule written
        "6b1e2c3d-4f5a-4b6c-8d7e-9f0a1b2c3d41", // GuardDuty severity 8
        "6b1e2c3d-4f5a-4b6c-8d7e-9f0a1b2c3d42", // Suricata severity 1
        "6b1e2c3d-4f5a-4b6c-8d7e-9f0a1b2c3d43", // VPC flow REJECT to 3389
        "2e669ed8-742e-4fe5-b3c4-5a59b486c2ee", // M365 activity by terminated user
        "234f9f48-904b-4736-a34c-55d23919e4b7", // GCP DLP re-identification
    ];
    let want: BTreeSet<(u64, String)> = (0..3u64)
        .flat_map(|block| {
            attacks.iter().enumerate().map(move |(i, id)| (block * 1000 + 500 + i as u64, id.to_string()))
        })
        .collect();
    assert_eq!(got, want, "alerts (offset, rule)");
    let quarantined = std::fs::read_to_string(dir.path().join("q.jsonl")).unwrap_or_default();
    assert!(quarantined.is_empty(), "nothing quarantined: {}", quarantined.lines().next().unwrap_or(""));
}
