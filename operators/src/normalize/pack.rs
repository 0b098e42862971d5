//! Normalization packs: declarative YAML mapping one input shape to ECS-lite.
//!
//! ```yaml
//! name: linux-auth
//! module: linux
//! when: [{ field: syslog.appname, equals: sshd }]     # which records the pack handles
//! timestamp_formats: [rfc3339]                          # defaults for timestamp fields
//! null_values: ["-", ""]                                # inputs treated as absent
//! required: ["@timestamp"]                              # else quarantined: missing_field
//! fields:                                               # input field -> ECS-lite field
//!   - { from: syslog.timestamp, to: "@timestamp" }
//!   - { from: syslog.hostname, to: host.name, lowercase: true }
//! rules:                                                # conditional, in order
//!   - when: [{ field: syslog.message, starts_with: "Failed password" }]
//!     set: { event.outcome: failure, event.category: authentication }
//!     extract:
//!       from: syslog.message
//!       pattern: 'for (invalid user )?(?P<user>\S+) from (?P<ip>\S+) port (?P<port>\d+)'
//!       fields: { user: user.name, ip: source.ip, port: source.port }
//! ```

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use ward_engine::fields::{FieldId, FieldType};

use super::coerce::TsFormat;

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PackFile {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Sets `event.module` on every event the pack handles.
    #[serde(default)]
    pub module: Option<String>,
    /// The pack handles a record when all these hold (always, when empty).
    #[serde(default)]
    pub when: Vec<ConditionSpec>,
    /// Default formats for timestamp fields.
    #[serde(default = "default_formats")]
    pub timestamp_formats: Vec<String>,
    /// Zone for timestamps without an offset.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Input values that mean "absent" (e.g. "-" in Windows and Zeek logs).
    #[serde(default)]
    pub null_values: Vec<String>,
    /// Core fields every event must have after mapping.
    #[serde(default)]
    pub required: Vec<String>,
    #[serde(default)]
    pub fields: Vec<MappingSpec>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Another built-in pack whose `fields` and `rules` apply after this pack's (and whose
    /// `module`, `null_values` and `required` apply unless this pack sets them): a shape adapter
    /// renames its input to the other pack's names and inherits the rest.
    #[serde(default)]
    pub extends: Option<String>,
    /// Input fields renamed before any mapping, by exact name (`winlog.channel:
    /// Event.System.Channel`).
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Input fields whose name starts with `from` are renamed to start with `to` instead: a
    /// shipper's raw event data (`winlog.event_data.Image`) lands where another shape keeps it
    /// (`Event.EventData.Image`), so mappings, rules and queries see one name.
    #[serde(default)]
    pub rename_prefixes: Vec<PrefixRename>,
    /// Every other input field moves under this prefix (flat shapes keep event data at the top
    /// level: `Image` becomes `Event.EventData.Image`).
    #[serde(default)]
    pub nest_unmapped: Option<String>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrefixRename {
    pub from: String,
    pub to: String,
}

fn default_formats() -> Vec<String> {
    vec!["rfc3339".into(), "epoch_s".into()]
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    /// Input field name (dotted path as parsed).
    pub from: String,
    /// ECS-lite field (or any other name, kept as an extension field).
    pub to: String,
    /// Keep the input field too (default: it is renamed).
    #[serde(default)]
    pub copy: bool,
    #[serde(default)]
    pub lowercase: bool,
    #[serde(default)]
    pub uppercase: bool,
    /// `basename`: the last path component (`C:\x\cmd.exe` → `cmd.exe`).
    #[serde(default)]
    pub transform: Option<Transform>,
    /// Timestamp formats for this field (overrides the pack's).
    #[serde(default)]
    pub formats: Option<Vec<String>>,
    /// A value that does not convert to the target's type (a host name where an address is
    /// expected) is not mapped, instead of quarantining the event; the input field stays.
    #[serde(default)]
    pub lenient: bool,
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    Basename,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    /// Input or ECS-lite field name.
    pub field: String,
    #[serde(default)]
    pub equals: Option<String>,
    #[serde(default)]
    pub one_of: Option<Vec<String>>,
    #[serde(default)]
    pub starts_with: Option<String>,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub matches: Option<String>,
    #[serde(default)]
    pub exists: Option<bool>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default)]
    pub when: Vec<ConditionSpec>,
    /// Constants to set (ECS-lite field → value).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Extra mappings applied only when the rule holds.
    #[serde(default)]
    pub fields: Vec<MappingSpec>,
    #[serde(default)]
    pub extract: Option<ExtractSpec>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractSpec {
    pub from: String,
    /// A regex with named groups.
    pub pattern: String,
    /// Group name → target field.
    pub fields: BTreeMap<String, String>,
}

// ---- compiled form ----

#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Core(FieldId),
    Ext(String),
}

impl Target {
    pub fn parse(name: &str) -> Target {
        match FieldId::lookup(name) {
            Some(id) => Target::Core(id),
            None => Target::Ext(name.to_string()),
        }
    }
    pub fn field_type(&self) -> FieldType {
        match self {
            Target::Core(id) => id.field_type(),
            Target::Ext(_) => FieldType::Str,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Mapping {
    pub to: Target,
    pub copy: bool,
    pub lowercase: bool,
    pub uppercase: bool,
    pub transform: Option<Transform>,
    pub formats: Option<Vec<TsFormat>>,
    pub lenient: bool,
}

#[derive(Clone, Debug)]
pub enum Test {
    Equals(String),
    OneOf(Vec<String>),
    StartsWith(String),
    Contains(String),
    Matches(regex::Regex),
    Exists(bool),
}

#[derive(Clone, Debug)]
pub struct Condition {
    pub field: Target,
    pub test: Test,
}

#[derive(Clone, Debug)]
pub struct Extract {
    pub from: Target,
    pub regex: regex::Regex,
    /// (capture group index, target)
    pub groups: Vec<(usize, Target)>,
}

/// A `set` value, coerced to its field's type when the pack is compiled.
#[derive(Clone, Debug, PartialEq)]
pub enum Const {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Ip(std::net::IpAddr),
    Timestamp(i64),
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub when: Vec<Condition>,
    pub set: Vec<(Target, Const)>,
    pub fields: Vec<(String, Mapping)>,
    pub extract: Option<Extract>,
}

#[derive(Clone, Debug)]
pub struct Pack {
    pub name: String,
    pub module: Option<String>,
    pub when: Vec<Condition>,
    pub formats: Vec<TsFormat>,
    pub timezone: chrono_tz::Tz,
    pub null_values: Vec<String>,
    pub required: Vec<FieldId>,
    /// Input name (bytes, so lookups skip UTF-8 checks) → mappings; looked up once per
    /// input field per event.
    pub mappings: ahash::AHashMap<Box<[u8]>, Vec<Mapping>>,
    pub rules: Vec<Rule>,
    /// Input names renamed before mapping: exact names, then (from, to) prefixes in order,
    /// then everything else under `nest_unmapped`.
    pub rename: ahash::AHashMap<Box<[u8]>, String>,
    pub rename_prefixes: Vec<(String, String)>,
    pub nest_unmapped: Option<String>,
    /// Per rule, a condition the normalizer can decide from values found once per event.
    pub gates: RuleGates,
}

/// Gates for a pack's rules. Each rule runs only if all of its `when` holds; a rule with an
/// `equals` or `one_of` condition on a core field that no rule of the pack writes can be
/// rejected by that condition alone, and that field has the same values for every rule of an
/// event. So the normalizer finds the gated fields' values in one pass per event, and skips a
/// rule whose gate fails without reading the event's fields again (the Windows pack's rules
/// are mostly `event.code` gates).
#[derive(Clone, Debug, Default)]
pub struct RuleGates {
    /// The gated fields (at most [`MAX_GATED_FIELDS`]).
    pub fields: Vec<FieldId>,
    /// Per rule: its gate's field (an index into `fields`) and condition (into `when`).
    pub by_rule: Vec<Option<(usize, usize)>>,
}

/// Gated fields per pack: each costs a compare per event field.
pub const MAX_GATED_FIELDS: usize = 4;

impl RuleGates {
    pub fn of(rules: &[Rule]) -> RuleGates {
        let written: Vec<FieldId> = rules
            .iter()
            .flat_map(|r| {
                let set = r.set.iter().map(|(t, _)| t);
                let fields = r.fields.iter().map(|(_, m)| &m.to);
                let extract = r.extract.iter().flat_map(|x| x.groups.iter().map(|(_, t)| t));
                set.chain(fields).chain(extract)
            })
            .filter_map(|t| match t {
                Target::Core(id) => Some(*id),
                Target::Ext(_) => None,
            })
            .collect();
        let mut gates = RuleGates::default();
        for r in rules {
            let gate = r.when.iter().enumerate().find_map(|(ci, c)| {
                let Target::Core(id) = c.field else { return None };
                if !matches!(c.test, Test::Equals(_) | Test::OneOf(_)) || written.contains(&id) {
                    return None;
                }
                let fi = match gates.fields.iter().position(|f| *f == id) {
                    Some(fi) => fi,
                    None if gates.fields.len() < MAX_GATED_FIELDS => {
                        gates.fields.push(id);
                        gates.fields.len() - 1
                    }
                    None => return None,
                };
                Some((fi, ci))
            });
            gates.by_rule.push(gate);
        }
        gates
    }
}

impl Pack {
    /// Whether the pack renames input fields at all (most do not: no work per field).
    pub fn renames(&self) -> bool {
        !self.rename.is_empty() || !self.rename_prefixes.is_empty() || self.nest_unmapped.is_some()
    }
}

fn compile_mapping(m: &MappingSpec) -> Result<Mapping, String> {
    let to = Target::parse(&m.to);
    let formats = match &m.formats {
        Some(f) => Some(f.iter().map(|s| TsFormat::parse(s)).collect::<Result<Vec<_>, _>>()?),
        None => None,
    };
    if (m.lowercase || m.uppercase || m.transform.is_some()) && to.field_type() != FieldType::Str {
        return Err(format!("mapping {} -> {}: lowercase/uppercase/transform need a string field", m.from, m.to));
    }
    Ok(Mapping {
        to,
        copy: m.copy,
        lowercase: m.lowercase,
        uppercase: m.uppercase,
        transform: m.transform,
        formats,
        lenient: m.lenient,
    })
}

fn compile_condition(c: &ConditionSpec) -> Result<Condition, String> {
    let mut tests = Vec::new();
    if let Some(v) = &c.equals {
        tests.push(Test::Equals(v.clone()));
    }
    if let Some(v) = &c.one_of {
        tests.push(Test::OneOf(v.clone()));
    }
    if let Some(v) = &c.starts_with {
        tests.push(Test::StartsWith(v.clone()));
    }
    if let Some(v) = &c.contains {
        tests.push(Test::Contains(v.clone()));
    }
    if let Some(v) = &c.matches {
        tests.push(Test::Matches(regex::Regex::new(v).map_err(|e| format!("condition on {}: {e}", c.field))?));
    }
    if let Some(v) = c.exists {
        tests.push(Test::Exists(v));
    }
    if tests.len() != 1 {
        return Err(format!(
            "condition on `{}` needs exactly one of equals, one_of, starts_with, contains, matches, exists",
            c.field
        ));
    }
    Ok(Condition { field: Target::parse(&c.field), test: tests.pop().expect("one test") })
}

fn constant(ty: FieldType, v: &str, formats: &[TsFormat], timezone: chrono_tz::Tz) -> Result<Const, String> {
    use super::coerce::{coerce, Input, TsOptions};
    use ward_engine::batch::{EventBatch, Value};
    let mut scratch = EventBatch::new();
    let value = coerce(ty, Input::Str(v), &TsOptions { formats, timezone }, &mut scratch.heap()).map_err(|e| e.1)?;
    let b = scratch.bytes();
    Ok(match value {
        Value::Str(r) => Const::Str(b.str(r).to_string()),
        Value::Int(i) => Const::Int(i),
        Value::Float(f) => Const::Float(f),
        Value::Bool(x) => Const::Bool(x),
        Value::Ip(r) => Const::Ip(b.ip(r).ok_or("bad address")?),
        Value::Timestamp(t) => Const::Timestamp(t),
        Value::Null => return Err("null constant".into()),
    })
}

impl Pack {
    pub fn compile(file: &PackFile) -> Result<Pack, String> {
        let formats = file.timestamp_formats.iter().map(|s| TsFormat::parse(s)).collect::<Result<Vec<_>, _>>()?;
        let timezone = match &file.timezone {
            Some(z) => z.parse::<chrono_tz::Tz>().map_err(|e| format!("timezone `{z}`: {e}"))?,
            None => chrono_tz::UTC,
        };
        let mut mappings: ahash::AHashMap<Box<[u8]>, Vec<Mapping>> = ahash::AHashMap::new();
        for m in &file.fields {
            mappings.entry(m.from.as_bytes().into()).or_default().push(compile_mapping(m)?);
        }
        let required = file
            .required
            .iter()
            .map(|r| FieldId::lookup(r).ok_or_else(|| format!("required field `{r}` is not an ECS-lite field")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut rules = Vec::new();
        for r in &file.rules {
            let extract = match &r.extract {
                None => None,
                Some(x) => {
                    let regex = regex::Regex::new(&x.pattern).map_err(|e| format!("extract pattern: {e}"))?;
                    let mut groups = Vec::new();
                    for (group, to) in &x.fields {
                        let idx = regex
                            .capture_names()
                            .position(|n| n == Some(group.as_str()))
                            .ok_or_else(|| format!("extract: the pattern has no group named `{group}`"))?;
                        groups.push((idx, Target::parse(to)));
                    }
                    Some(Extract { from: Target::parse(&x.from), regex, groups })
                }
            };
            let mut set = Vec::new();
            for (k, v) in &r.set {
                let t = Target::parse(k);
                let c = constant(t.field_type(), v, &formats, timezone).map_err(|e| format!("set {k}: {e}"))?;
                set.push((t, c));
            }
            rules.push(Rule {
                when: r.when.iter().map(compile_condition).collect::<Result<_, _>>()?,
                set,
                fields: r
                    .fields
                    .iter()
                    .map(|m| compile_mapping(m).map(|c| (m.from.clone(), c)))
                    .collect::<Result<_, _>>()?,
                extract,
            });
        }
        Ok(Pack {
            name: file.name.clone(),
            module: file.module.clone(),
            when: file.when.iter().map(compile_condition).collect::<Result<_, _>>()?,
            formats,
            timezone,
            null_values: file.null_values.clone(),
            required,
            mappings,
            rename: file.rename.iter().map(|(k, v)| (k.as_bytes().into(), v.clone())).collect(),
            rename_prefixes: file.rename_prefixes.iter().map(|r| (r.from.clone(), r.to.clone())).collect(),
            nest_unmapped: file.nest_unmapped.clone(),
            gates: RuleGates::of(&rules),
            rules,
        })
    }

    /// Parses and compiles a pack file; errors carry line and column.
    pub fn from_yaml(name: &str, text: &str) -> Result<Pack, String> {
        let mut file = parse_file(name, text)?;
        if let Some(base_name) = file.extends.clone() {
            let short = base_name.strip_prefix("builtin:").unwrap_or(&base_name);
            let base_text = super::builtin::get(short)
                .ok_or_else(|| format!("{name}: `extends: {base_name}` names no built-in pack"))?;
            let base = parse_file(&base_name, base_text)?;
            if base.extends.is_some() {
                return Err(format!("{name}: `{base_name}` extends another pack itself; extend the pack it extends"));
            }
            file = file.extending(base);
        }
        Pack::compile(&file).map_err(|e| format!("{name}: {e}"))
    }
}

fn parse_file(name: &str, text: &str) -> Result<PackFile, String> {
    marked_yaml::from_yaml_with_options(0, text, marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true))
        .map_err(|e| match &e {
            marked_yaml::FromYamlError::FromNode(n) => match n.start_mark() {
                Some(m) => format!("{name}:{}:{}: {n}", m.line(), m.column()),
                None => format!("{name}: {n}"),
            },
            marked_yaml::FromYamlError::ParseYaml(p) => format!("{name}: {p}"),
        })
}

impl PackFile {
    /// This pack on top of `base`: its renames and `when`, then its own mappings and the base's;
    /// the base's rules, then its own; the base's settings where it sets none.
    fn extending(mut self, base: PackFile) -> PackFile {
        self.fields.extend(base.fields);
        let own_rules = std::mem::take(&mut self.rules);
        self.rules = base.rules.into_iter().chain(own_rules).collect();
        self.module = self.module.or(base.module);
        self.timezone = self.timezone.or(base.timezone);
        if self.timestamp_formats == default_formats() {
            self.timestamp_formats = base.timestamp_formats;
        }
        if self.null_values.is_empty() {
            self.null_values = base.null_values;
        }
        if self.required.is_empty() {
            self.required = base.required;
        }
        self.extends = None;
        self
    }
}
