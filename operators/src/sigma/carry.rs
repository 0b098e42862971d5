//! Alert fields that components downstream of a detector read (suppress keys, the SLA entity,
//! the asset criticality and threat-intel fields the SLA priority uses): the detector copies
//! them into every alert, so they are there even when the alert does not carry its event
//! (`include_event: false`), and alerts of different hosts are never merged for want of a key.

use ward_engine::fields::FieldId;
use ward_engine::registry::AlertKey;

use super::mapping::{FieldKey, FieldMapping};

/// What an alert knows about itself (see `Alert::field`): never copied from the event.
pub const ALERT_ATTRIBUTES: [&str; 3] = ["rule.id", "rule.level", "detector"];

/// Fields to copy into each alert, with the keys each may be found under in an event.
pub type Carried = Vec<(String, Vec<FieldKey>)>;

/// Resolves the fields downstream components read; a field no alert could ever carry (a
/// dotted name that is neither a Ward field nor a Sigma field of the mapping, e.g. a typo of
/// `host.name`) is an error naming the component that reads it.
pub fn carried_fields(keys: &[AlertKey], mapping: &FieldMapping) -> Result<Carried, String> {
    let mut out: Carried = Vec::new();
    let mut problems = Vec::new();
    for AlertKey { reader, field } in keys {
        if ALERT_ATTRIBUTES.contains(&field.as_str()) || out.iter().any(|(n, _)| n == field) {
            continue;
        }
        let keys = if let Some(core) = FieldId::lookup(field) {
            vec![FieldKey::Core(core)]
        } else if let Some(name) = field.strip_prefix("ext.") {
            vec![FieldKey::Ext(name.to_string())]
        } else if mapping.knows(field) || !field.contains('.') {
            // A Sigma field name, or a raw input field (generic JSON keeps unknown keys under
            // their own name; Windows event data under `Event.EventData.<Name>`).
            mapping.resolve_any(field)
        } else {
            problems.push(format!(
                "`{reader}` reads alert field `{field}`, which no alert can carry: it is neither an alert attribute \
                 ({}), a Ward field (`ward fields` lists them), a Sigma field of the field mapping, nor an extension \
                 field (`ext.NAME`)",
                ALERT_ATTRIBUTES.join(", ")
            ));
            continue;
        };
        out.push((field.clone(), keys));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(reader: &str, field: &str) -> AlertKey {
        AlertKey { reader: reader.into(), field: field.into() }
    }

    #[test]
    fn ward_sigma_and_extension_fields_resolve_and_typos_are_refused() {
        let m = FieldMapping::builtin();
        let got = carried_fields(
            &[
                key("suppress", "rule.id"),
                key("suppress", "host.id"),
                key("sla", "host.id"),
                key("sla", "ext.src_user"),
                key("sla", "TargetUserName"),
                key("sla", "src_user"),
            ],
            &m,
        )
        .unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["host.id", "ext.src_user", "TargetUserName", "src_user"]);
        assert_eq!(got[0].1, [FieldKey::Core(FieldId::lookup("host.id").unwrap())]);
        assert_eq!(got[1].1, [FieldKey::Ext("src_user".into())]);
        assert!(got[2].1.contains(&FieldKey::Ext("Event.EventData.TargetUserName".into())), "{:?}", got[2].1);
        assert!(got[3].1.contains(&FieldKey::Ext("src_user".into())), "{:?}", got[3].1);
        let err = carried_fields(&[key("suppress", "hostt.name")], &m).unwrap_err();
        assert!(err.contains("`suppress` reads alert field `hostt.name`"), "{err}");
    }
}
