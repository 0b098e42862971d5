//! Sigma rules (as parsed by `rsigma-parser`) → the cross-rule [`Matcher`].
//!
//! Each rule is first lowered to an [`Expr`] whose leaves are fully validated [`AtomSpec`]s
//! (regexes compiled, modifiers checked). A rule that cannot be evaluated exactly stops there
//! with a reason naming the construct; only rules that lowered cleanly are interned into the
//! shared automata, so a rejected rule leaves no trace in the matcher.
//!
//! - [`lower`]: a rule (or filter, or logsource route) → [`Expr`] of validated atoms;
//! - [`build`]: lowered rules → the shared automata and per-rule programs of the [`Matcher`];
//! - [`explain`]: how `ward rules explain` renders atoms and expressions.
//!
//! [`Matcher`]: super::matcher::Matcher

mod build;
mod explain;
mod lower;

pub use build::MatcherBuilder;
pub use lower::{apply_filter, lower_rule, RouteCache};

use ahash::AHashMap as HashMap;
use std::collections::BTreeMap;
use std::sync::Arc;

use rsigma_parser::LogSource;

use super::bounded_regex::BoundedRegex;
use super::mapping::{FieldKey, FieldMapping, Logsources};
use super::matcher::{CmpOp, RuleMeta, TimePart};
use super::values::Anchor;

/// What to do with a rule whose logsource no routing entry covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unrouted {
    /// Run it on every event (the usual behaviour of Sigma backends for unmapped logsources).
    #[default]
    Any,
    /// Refuse it at load.
    Reject,
}

#[derive(Clone, Debug)]
pub struct CompileOptions {
    pub mapping: FieldMapping,
    pub logsources: Logsources,
    /// Values for `expand` placeholders (`%name%`).
    pub placeholders: HashMap<String, Vec<String>>,
    /// What a placeholder without configured values does.
    pub placeholders_missing: PlaceholdersMissing,
    pub unrouted: Unrouted,
}

/// What an `|expand` placeholder (`%name%`) without configured values does, as pySigma's
/// placeholder transformations offer. Under `match_nothing` and `wildcard` the rule loads and
/// its report carries a note naming the placeholder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlaceholdersMissing {
    /// The rule is rejected.
    Reject,
    /// The value holding the placeholder matches nothing (a selection of only such values
    /// never holds; a filter made of them never excludes).
    #[default]
    MatchNothing,
    /// The placeholder stands for any text (`*`).
    Wildcard,
}

impl PlaceholdersMissing {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reject" => Some(Self::Reject),
            "match_nothing" => Some(Self::MatchNothing),
            "wildcard" => Some(Self::Wildcard),
            _ => None,
        }
    }
}

impl CompileOptions {
    /// Everything about the options that changes how rules compile, as text to hash.
    pub fn fingerprint(&self) -> String {
        let mut placeholders: Vec<_> = self.placeholders.iter().collect();
        placeholders.sort();
        format!(
            "{:x}|{:x}|{:?}|{placeholders:?}|{:?}",
            self.mapping.fingerprint, self.logsources.fingerprint, self.unrouted, self.placeholders_missing
        )
    }
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            mapping: FieldMapping::builtin(),
            logsources: Logsources::builtin(),
            placeholders: HashMap::new(),
            placeholders_missing: PlaceholdersMissing::default(),
            unrouted: Unrouted::Any,
        }
    }
}

/// What makes two atoms the same test ([`AtomSpec::dedup_key`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct AtomKey {
    kind: &'static str,
    field: FieldRef,
    rest: String,
    pattern: Vec<u8>,
}

/// Which field an atom looks at, before interning.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FieldRef {
    Keys { display: String, keys: Vec<FieldKey> },
    Keywords,
}

impl FieldRef {
    fn display(&self) -> &str {
        match self {
            FieldRef::Keys { display, .. } => display,
            FieldRef::Keywords => "<keywords>",
        }
    }
}

/// A fully validated test on one field.
#[derive(Clone, Debug)]
pub enum AtomSpec {
    /// A literal (text or encoded bytes) at an anchor. `cased = false`: ASCII case-insensitive
    /// (only used when that equals full case folding for the pattern).
    Literal {
        field: FieldRef,
        pattern: Vec<u8>,
        anchor: Anchor,
        cased: bool,
    },
    /// A wildcard string as a regex, verified when `gate` (a literal fragment) occurs; without
    /// a gate it is evaluated lazily.
    Glob {
        field: FieldRef,
        regex: Arc<BoundedRegex>,
        gate: Option<(Vec<u8>, bool)>,
        shown: String,
    },
    Regex {
        field: FieldRef,
        regex: Arc<BoundedRegex>,
    },
    Cidr {
        field: FieldRef,
        net: ipnet::IpNet,
    },
    Compare {
        field: FieldRef,
        op: CmpOp,
        value: f64,
        part: Option<TimePart>,
    },
    Exists {
        field: FieldRef,
    },
    Null {
        field: FieldRef,
    },
    FieldRef {
        field: FieldRef,
        other: FieldRef,
        anchor: Anchor,
        cased: bool,
    },
}

impl AtomSpec {
    /// A key that is equal for atoms that test the same thing (for sharing across rules).
    /// Literals, nearly all atoms, are keyed by their parts as they are: formatting their
    /// pattern bytes with `Debug` was 3.5% of a detection pipeline's start-up.
    pub(super) fn dedup_key(&self) -> AtomKey {
        let (kind, rest) = match self {
            AtomSpec::Literal { pattern, anchor, cased, .. } => {
                return AtomKey {
                    kind: "lit",
                    field: self.field().clone(),
                    rest: format!("{anchor:?}|{cased}"),
                    pattern: pattern.clone(),
                }
            }
            AtomSpec::Glob { regex, .. } => ("glob", format!("{:?}|{}", regex.flags(), regex.as_str())),
            AtomSpec::Regex { regex, .. } => ("re", format!("{:?}|{}", regex.flags(), regex.as_str())),
            AtomSpec::Cidr { net, .. } => ("cidr", net.to_string()),
            AtomSpec::Compare { op, value, part, .. } => ("cmp", format!("{op:?}|{value}|{part:?}")),
            AtomSpec::Exists { .. } => ("exists", String::new()),
            AtomSpec::Null { .. } => ("null", String::new()),
            AtomSpec::FieldRef { other, anchor, cased, .. } => ("ref", format!("{other:?}|{anchor:?}|{cased}")),
        };
        AtomKey { kind, field: self.field().clone(), rest, pattern: Vec::new() }
    }

    pub(super) fn field(&self) -> &FieldRef {
        match self {
            AtomSpec::Literal { field, .. }
            | AtomSpec::Glob { field, .. }
            | AtomSpec::Regex { field, .. }
            | AtomSpec::Cidr { field, .. }
            | AtomSpec::Compare { field, .. }
            | AtomSpec::Exists { field }
            | AtomSpec::Null { field }
            | AtomSpec::FieldRef { field, .. } => field,
        }
    }
}

/// A rule's logic before interning.
#[derive(Clone, Debug)]
pub enum Expr {
    True,
    False,
    Atom(Box<AtomSpec>),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    AtLeast(usize, Vec<Expr>),
}

impl Expr {
    pub(super) fn or(mut xs: Vec<Expr>) -> Expr {
        if xs.len() == 1 {
            xs.pop().unwrap_or(Expr::False)
        } else {
            Expr::Or(xs)
        }
    }
    pub(super) fn and(mut xs: Vec<Expr>) -> Expr {
        if xs.len() == 1 {
            xs.pop().unwrap_or(Expr::True)
        } else {
            Expr::And(xs)
        }
    }
}

/// A named selection: its name, its logic and the Sigma fields it tests.
pub type NamedSelection = (String, Expr, Vec<String>);

/// How a rule was handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Compiled,
    Rejected(String),
    /// A correlation rule: loaded with the set, evaluated by the correlation operator.
    Correlation,
    /// A filter rule, applied to its target rules.
    Filter,
}

#[derive(Clone, Debug)]
pub struct RuleReport {
    pub path: String,
    pub id: String,
    pub title: String,
    pub status: Status,
    /// How the rule loaded differently from what it says (e.g. placeholders without values).
    pub notes: Vec<String>,
}

/// A lowered rule, kept for `explain`.
pub struct LoweredRule {
    pub meta: Arc<RuleMeta>,
    /// The rule's `name` (correlations may reference rules by it).
    pub name: Option<String>,
    pub logsource: LogSource,
    pub route: Option<Expr>,
    pub cond: Expr,
    pub selections: Vec<NamedSelection>,
    pub fields: BTreeMap<String, Vec<FieldKey>>,
    pub filters: Vec<String>,
    /// How the rule loaded differently from what it says (shown by `explain`).
    pub notes: Vec<String>,
    /// Whether a routing entry specific to the rule's logsource covered it (else it runs on
    /// every event of its product, or every event).
    pub routed: bool,
}
