//! The README matches the code: the ECS-lite table, the quarantine reasons, the component types.

mod common;

use common::*;

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).unwrap()
}

#[test]
fn ecs_lite_table_is_the_fields_output() {
    let fields = ward(&["fields"]).stdout;
    let text = readme();
    let start = text.find("| field | type | description |").expect("table in README");
    let table: String = text[start..].lines().take_while(|l| l.starts_with('|')).map(|l| format!("{l}\n")).collect();
    assert_eq!(table, fields, "README's ECS-lite table is stale: paste `ward fields`");
}

#[test]
fn every_quarantine_reason_is_documented() {
    let text = readme();
    for r in ward_engine::quarantine::Reason::ALL {
        assert!(text.contains(&format!("| `{}` |", r.as_str())), "reason {} missing from README", r.as_str());
    }
}

#[test]
fn every_component_type_is_documented() {
    let text = readme();
    let schema: serde_json::Value = serde_json::from_str(&ward(&["schema"]).stdout).unwrap();
    for section in ["sources", "operators", "sinks"] {
        for v in schema["properties"][section]["items"]["oneOf"].as_array().unwrap() {
            let t = v["properties"]["type"]["const"].as_str().unwrap();
            assert!(text.contains(&format!("| `{t}` |")), "{section} type {t} missing from README");
        }
    }
}

/// The repository documents itself: no file of Ward names a path outside it (the SigmaHQ
/// snapshot it tests with is inside, under `rules/sigmahq/`, whose own files are SigmaHQ's).
#[test]
fn no_file_points_outside_the_repository() {
    let files = std::process::Command::new("git").args(["ls-files", "-z"]).current_dir(repo()).output().unwrap();
    assert!(files.status.success());
    let mut offenders = Vec::new();
    for path in files.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()) {
        let path = String::from_utf8_lossy(path).into_owned();
        if path.starts_with("rules/sigmahq/") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(repo().join(&path)) else { continue };
        // Spelled in pieces, so this file does not name them itself.
        for needle in [["..", "/shared"].concat(), ["/wo", "rk/"].concat()] {
            if text.contains(&needle) {
                offenders.push(format!("{path}: {needle}"));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:?}");
}
