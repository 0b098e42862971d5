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
    ("aws-cloudtrail", include_str!("../../../pipelines/packs/aws-cloudtrail.yaml")),
    ("aws-guardduty", include_str!("../../../pipelines/packs/aws-guardduty.yaml")),
    ("aws-vpcflow", include_str!("../../../pipelines/packs/aws-vpcflow.yaml")),
    ("suricata", include_str!("../../../pipelines/packs/suricata.yaml")),
    ("okta", include_str!("../../../pipelines/packs/okta.yaml")),
    ("azure", include_str!("../../../pipelines/packs/azure.yaml")),
    ("m365", include_str!("../../../pipelines/packs/m365.yaml")),
    ("gcp-audit", include_str!("../../../pipelines/packs/gcp-audit.yaml")),
    ("osquery", include_str!("../../../pipelines/packs/osquery.yaml")),
    ("cowrie", include_str!("../../../pipelines/packs/cowrie.yaml")),
    ("generic-json", include_str!("../../../pipelines/packs/generic-json.yaml")),
];

pub fn get(name: &str) -> Option<&'static str> {
    PACKS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

pub fn names() -> Vec<&'static str> {
    PACKS.iter().map(|(n, _)| *n).collect()
}

/// All built-in packs in precedence order: where two could claim an event, the first does
/// (EVTX-JSON, then Winlogbeat, NXLog and the flat Windows shape, the other products in the
/// order of this table, and generic JSON last). The cloud and network packs claim events by
/// fields no other pack's shape has, so their order among themselves rarely matters.
pub fn all_refs() -> Vec<String> {
    names().into_iter().map(|n| format!("builtin:{n}")).collect()
}

/// The `module` each built-in pack sets (its Sigma logsource product), by pack name.
pub fn modules() -> Vec<(&'static str, String)> {
    PACKS
        .iter()
        .filter_map(|(name, _)| {
            let pack = super::pack::Pack::from_yaml(name, get(name)?).ok()?;
            Some((*name, pack.module?))
        })
        .collect()
}
