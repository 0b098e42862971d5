//! The packs shipped in `pipelines/packs/`, compiled into the binary so that the demo runs
//! anywhere. A spec names them as `builtin:NAME`.

const PACKS: &[(&str, &str)] = &[
    ("windows", include_str!("../../../pipelines/packs/windows.yaml")),
    ("winlogbeat", include_str!("../../../pipelines/packs/winlogbeat.yaml")),
    ("nxlog", include_str!("../../../pipelines/packs/nxlog.yaml")),
    ("windows-flat", include_str!("../../../pipelines/packs/windows-flat.yaml")),
    ("linux-auth", include_str!("../../../pipelines/packs/linux-auth.yaml")),
    ("zeek", include_str!("../../../pipelines/packs/zeek.yaml")),
    ("fortigate", include_str!("../../../pipelines/packs/fortigate.yaml")),
    ("generic-json", include_str!("../../../pipelines/packs/generic-json.yaml")),
];

pub fn get(name: &str) -> Option<&'static str> {
    PACKS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

pub fn names() -> Vec<&'static str> {
    PACKS.iter().map(|(n, _)| *n).collect()
}

/// All built-in packs in precedence order: where two could claim an event, the first does
/// (EVTX-JSON, then Winlogbeat, NXLog and the flat Windows shape, the other products, and
/// generic JSON last).
pub fn all_refs() -> Vec<String> {
    names().into_iter().map(|n| format!("builtin:{n}")).collect()
}
