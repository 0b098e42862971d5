//! The two editable YAML files that connect Sigma's view of events to Ward's: the field mapping
//! (Sigma field names → ECS-lite or extension fields, per product) and the logsource routing
//! (a rule's `logsource` → a condition on normalized events). Both ship built in
//! (`pipelines/sigma/*.yaml`) and can be replaced by files named in the spec.

use std::collections::HashMap;

use serde::Deserialize;
use ward_engine::fields::FieldId;

pub const BUILTIN_FIELD_MAPPING: &str = include_str!("../../../pipelines/sigma/field-mapping.yaml");
pub const BUILTIN_LOGSOURCES: &str = include_str!("../../../pipelines/sigma/logsources.yaml");

/// A place a value may live in a normalized event.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FieldKey {
    Core(FieldId),
    Ext(String),
}

impl FieldKey {
    pub fn name(&self) -> &str {
        match self {
            FieldKey::Core(f) => f.name(),
            FieldKey::Ext(s) => s,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductFields {
    #[serde(default)]
    raw_prefixes: Vec<String>,
    #[serde(default)]
    fields: HashMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldMappingFile {
    #[serde(default)]
    products: HashMap<String, ProductFields>,
}

#[derive(Clone, Debug)]
pub struct FieldMapping {
    products: HashMap<String, ProductFields>,
    default: ProductFields,
    /// Hash of the source text (part of the rule-set version).
    pub fingerprint: u64,
}

impl FieldMapping {
    pub fn parse(text: &str, name: &str) -> anyhow::Result<FieldMapping> {
        let mut file: FieldMappingFile = yaml_serde::from_str(text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let default = file.products.remove("default").unwrap_or_default();
        Ok(FieldMapping { products: file.products, default, fingerprint: xxhash_rust::xxh3::xxh3_64(text.as_bytes()) })
    }

    pub fn builtin() -> FieldMapping {
        Self::parse(BUILTIN_FIELD_MAPPING, "builtin field mapping").expect("the built-in field mapping is valid")
    }

    /// Whether some product's mapping lists `sigma_field`.
    pub fn knows(&self, sigma_field: &str) -> bool {
        self.products.values().chain([&self.default]).any(|p| p.fields.contains_key(sigma_field))
    }

    /// Every key `sigma_field` may be found under for any product (products in name order,
    /// then the default), without repeats.
    pub fn resolve_any(&self, sigma_field: &str) -> Vec<FieldKey> {
        let mut products: Vec<&str> = self.products.keys().map(String::as_str).collect();
        products.sort_unstable();
        let mut out = Vec::new();
        for p in products.into_iter().map(Some).chain([None]) {
            for k in self.resolve(p, sigma_field) {
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
        out
    }

    /// Every key a Sigma field of a rule of `product` may be found under, most specific first.
    pub fn resolve(&self, product: Option<&str>, sigma_field: &str) -> Vec<FieldKey> {
        if let Some(core) = FieldId::lookup(sigma_field) {
            return vec![FieldKey::Core(core)];
        }
        let p = product.and_then(|p| self.products.get(p)).unwrap_or(&self.default);
        let mut keys = Vec::new();
        if let Some(target) = p.fields.get(sigma_field) {
            keys.push(match FieldId::lookup(target) {
                Some(core) => FieldKey::Core(core),
                None => FieldKey::Ext(target.clone()),
            });
        }
        if p.raw_prefixes.is_empty() {
            keys.push(FieldKey::Ext(sigma_field.to_string()));
        } else {
            keys.extend(p.raw_prefixes.iter().map(|pre| FieldKey::Ext(format!("{pre}{sigma_field}"))));
        }
        keys.dedup();
        keys
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogsourceKeys {
    pub product: Option<String>,
    pub category: Option<String>,
    pub service: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteEntry {
    logsource: LogsourceKeys,
    conditions: yaml_serde::Value,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsourcesFile {
    logsources: Vec<RouteEntry>,
}

/// One routing entry: the logsource keys it applies to and its condition as a Sigma
/// detection (compiled like a rule's).
#[derive(Clone, Debug)]
pub struct Route {
    pub keys: LogsourceKeys,
    pub detection: yaml_serde::Value,
}

#[derive(Clone, Debug)]
pub struct Logsources {
    pub routes: Vec<Route>,
    /// Hash of the source text (part of the rule-set version).
    pub fingerprint: u64,
}

impl Logsources {
    pub fn parse(text: &str, name: &str) -> anyhow::Result<Logsources> {
        let file: LogsourcesFile = yaml_serde::from_str(text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let mut routes = Vec::new();
        for (i, e) in file.logsources.into_iter().enumerate() {
            let k = &e.logsource;
            if k.product.is_none() && k.category.is_none() && k.service.is_none() {
                anyhow::bail!("{name}: entry {} names no product, category or service", i + 1);
            }
            if !matches!(e.conditions, yaml_serde::Value::Mapping(_) | yaml_serde::Value::Sequence(_)) {
                anyhow::bail!("{name}: entry {}: `conditions` must be a map or a list of maps", i + 1);
            }
            routes.push(Route { keys: e.logsource, detection: e.conditions });
        }
        Ok(Logsources { routes, fingerprint: xxhash_rust::xxh3::xxh3_64(text.as_bytes()) })
    }

    pub fn builtin() -> Logsources {
        Self::parse(BUILTIN_LOGSOURCES, "builtin logsources").expect("the built-in logsources are valid")
    }

    /// The entries that apply to a rule's logsource: every key an entry names equals the
    /// rule's (case-insensitively, as Sigma logsource values are lowercase by convention).
    pub fn applicable(&self, product: Option<&str>, category: Option<&str>, service: Option<&str>) -> Vec<&Route> {
        let eq = |want: &Option<String>, have: Option<&str>| match want {
            None => true,
            Some(w) => have.is_some_and(|h| h.eq_ignore_ascii_case(w)),
        };
        self.routes
            .iter()
            .filter(|r| eq(&r.keys.product, product) && eq(&r.keys.category, category) && eq(&r.keys.service, service))
            .collect()
    }
}

/// Where EVTX-JSON keeps Windows event data fields.
pub const EVENT_DATA: &str = "Event.EventData.";
pub const USER_DATA: &str = "Event.UserData.";
/// Longest event data name [`windows_data_name`] rewrites (longer names are left as they are).
pub const DATA_NAME_MAX: usize = 128;

/// The name Sigma rules use for a Windows event data field that EVTX-JSON keeps elsewhere or
/// spells otherwise, as SigmaHQ's conventions do: `Event.UserData.<Element>.<Name>` (WMI-Activity,
/// some Security and application channels) is `<Name>`, and names with spaces (Microsoft
/// Defender's `Threat Name`) lose them (`ThreatName`). `None` for any other key. Written into
/// `buf`, so the hot path does not allocate.
pub fn windows_data_name<'a>(key: &str, buf: &'a mut [u8; DATA_NAME_MAX]) -> Option<&'a str> {
    let name = if let Some(rest) = key.strip_prefix(USER_DATA) {
        rest.split_once('.')?.1
    } else {
        let rest = key.strip_prefix(EVENT_DATA)?;
        if !rest.contains(' ') {
            return None;
        }
        rest
    };
    let mut n = 0;
    for &c in name.as_bytes().iter().filter(|c| **c != b' ') {
        *buf.get_mut(n)? = c;
        n += 1;
    }
    // Only ASCII spaces were removed: still UTF-8.
    std::str::from_utf8(&buf[..n]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_fields_map_to_ecs_then_raw() {
        let m = FieldMapping::builtin();
        assert_eq!(
            m.resolve(Some("windows"), "Image"),
            vec![
                FieldKey::Core(FieldId::lookup("process.executable").unwrap()),
                FieldKey::Ext("Event.EventData.Image".into())
            ]
        );
        assert_eq!(
            m.resolve(Some("windows"), "OriginalFileName"),
            vec![FieldKey::Ext("Event.EventData.OriginalFileName".into())]
        );
        assert_eq!(m.resolve(Some("aws"), "eventName"), vec![FieldKey::Ext("eventName".into())]);
        assert_eq!(
            m.resolve(None, "process.command_line"),
            vec![FieldKey::Core(FieldId::lookup("process.command_line").unwrap())]
        );
    }

    #[test]
    fn user_data_and_spaced_names_take_the_sigma_names() {
        let mut buf = [0u8; DATA_NAME_MAX];
        assert_eq!(
            windows_data_name("Event.UserData.Operation_ClientFailure.ClientProcessId", &mut buf),
            Some("ClientProcessId")
        );
        assert_eq!(windows_data_name("Event.EventData.Threat Name", &mut buf), Some("ThreatName"));
        assert_eq!(windows_data_name("Event.EventData.Image", &mut buf), None, "already the Sigma name");
        assert_eq!(windows_data_name("Event.UserData.NoElement", &mut buf), None);
        assert_eq!(windows_data_name("Event.System.Computer", &mut buf), None);
        let long = format!("Event.EventData.{}", "a b".repeat(100));
        assert_eq!(windows_data_name(&long, &mut buf), None, "too long to be a real name");
    }

    #[test]
    fn routes_apply_by_subset_of_keys() {
        let l = Logsources::builtin();
        let r = l.applicable(Some("windows"), Some("process_creation"), None);
        assert_eq!(r.len(), 2, "product entry and category entry");
        assert_eq!(l.applicable(Some("aws"), None, Some("cloudtrail")).len(), 2);
        assert!(l.applicable(Some("onelogin"), None, Some("onelogin.events")).is_empty());
        assert_eq!(l.applicable(Some("windows"), None, Some("security")).len(), 2);
    }

    #[test]
    fn bad_files_are_reported_with_their_name() {
        let e = Logsources::parse("logsources:\n  - logsource: {}\n    conditions: {a: 1}\n", "x.yaml").unwrap_err();
        assert!(e.to_string().contains("x.yaml: entry 1"), "{e}");
        let e = FieldMapping::parse("products: [1]", "m.yaml").unwrap_err();
        assert!(e.to_string().starts_with("m.yaml:"), "{e}");
    }
}
