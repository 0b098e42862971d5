//! `ward demo`: the demo pipeline and the files it reads, compiled into the binary and
//! written out in the repository's layout, so the demo runs anywhere.

use std::path::{Path, PathBuf};

const FILES: &[(&str, &[u8])] = &[
    ("pipelines/demo.yaml", include_bytes!("../pipelines/demo.yaml")),
    ("rules/ti/demo-indicators.txt", include_bytes!("../rules/ti/demo-indicators.txt")),
    ("rules/assets/demo-assets.csv", include_bytes!("../rules/assets/demo-assets.csv")),
    ("rules/sla/default.yaml", include_bytes!("../rules/sla/default.yaml")),
    ("rules/geo/ward-test-city.mmdb", include_bytes!("../rules/geo/ward-test-city.mmdb")),
    ("rules/geo/ward-test-asn.mmdb", include_bytes!("../rules/geo/ward-test-asn.mmdb")),
    (
        "rules/sigma/ward/proc_creation_encoded_powershell.yml",
        include_bytes!("../rules/sigma/ward/proc_creation_encoded_powershell.yml"),
    ),
    (
        "rules/sigma/ward/win_security_member_added_to_admins.yml",
        include_bytes!("../rules/sigma/ward/win_security_member_added_to_admins.yml"),
    ),
    (
        "rules/sigma/ward/win_security_failed_logon.yml",
        include_bytes!("../rules/sigma/ward/win_security_failed_logon.yml"),
    ),
    ("rules/sigma/ward/lnx_usermod_sudo_group.yml", include_bytes!("../rules/sigma/ward/lnx_usermod_sudo_group.yml")),
    (
        "rules/sigma/ward/corr_win_brute_force_then_admin_group.yml",
        include_bytes!("../rules/sigma/ward/corr_win_brute_force_then_admin_group.yml"),
    ),
];

/// Writes the demo files under `out` and returns the spec's path.
pub fn materialize(out: &Path, count: Option<u64>) -> anyhow::Result<PathBuf> {
    for (rel, bytes) in FILES {
        let path = out.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut data = bytes.to_vec();
        if let (Some(n), true) = (count, rel.ends_with("demo.yaml")) {
            let text = String::from_utf8(data)?;
            data = text.replacen("    count: 100000", &format!("    count: {n}"), 1).into_bytes();
        }
        std::fs::write(&path, data)?;
    }
    let events = out.join("out/demo/events");
    if events.exists() {
        // A fresh run: earlier output would mix with this one.
        std::fs::remove_dir_all(&events)?;
    }
    Ok(out.join("pipelines/demo.yaml"))
}
