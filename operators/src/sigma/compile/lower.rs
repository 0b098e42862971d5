//! Lowering: a Sigma rule's detection, a filter, or a logsource route → an [`Expr`] whose
//! leaves are validated [`AtomSpec`]s. A construct Ward cannot evaluate exactly is an error
//! naming it; nothing of a rejected rule reaches the matcher.

use ahash::AHashMap as HashMap;
use std::collections::BTreeMap;
use std::sync::Arc;

use rsigma_parser::{
    ConditionExpr, Detection, DetectionItem, Detections, FilterRule, FilterRuleTarget, LogSource, Modifier, Quantifier,
    SelectorPattern, SigmaRule, SigmaString, SigmaValue, StringPart,
};
use ward_engine::text::escape_text;

use super::{AtomSpec, CompileOptions, Expr, FieldRef, LoweredRule, NamedSelection, PlaceholdersMissing, Unrouted};
use crate::sigma::bounded_regex::{BoundedRegex, Flags};
use crate::sigma::mapping::FieldKey;
use crate::sigma::matcher::{CmpOp, RuleMeta, TimePart};
use crate::sigma::values::{self, Anchor, Utf16};

/// Lowers one rule's detection (or a filter's, or a route's) to an [`Expr`].
struct Lowering<'a> {
    opts: &'a CompileOptions,
    product: Option<&'a str>,
    /// Sigma field name → the keys it resolved to, for `explain`.
    fields_seen: BTreeMap<String, Vec<FieldKey>>,
    /// What loaded differently from the rule as written (placeholders without values).
    notes: Vec<String>,
}

impl<'a> Lowering<'a> {
    fn new(opts: &'a CompileOptions, product: Option<&'a str>) -> Self {
        Lowering { opts, product, fields_seen: BTreeMap::new(), notes: Vec::new() }
    }

    fn field(&mut self, name: &str) -> FieldRef {
        let keys = self.opts.mapping.resolve(self.product, name);
        self.fields_seen.insert(name.to_string(), keys.clone());
        FieldRef::Keys { display: name.to_string(), keys }
    }

    fn detections(&mut self, d: &Detections) -> Result<(Expr, Vec<NamedSelection>), String> {
        if let Some(tf) = &d.timeframe {
            return Err(format!(
                "`timeframe: {tf}` (Sigma 1 aggregation) is not supported; express it as a correlation rule"
            ));
        }
        if d.conditions.is_empty() {
            return Err("the detection has no condition".into());
        }
        let mut named: BTreeMap<&str, (Expr, Vec<String>)> = BTreeMap::new();
        for (name, det) in &d.named {
            let mut fields = Vec::new();
            let e = self.detection(det, &mut fields).map_err(|e| format!("selection `{name}`: {e}"))?;
            named.insert(name.as_str(), (e, fields));
        }
        let mut conds = Vec::new();
        for c in &d.conditions {
            conds.push(condition(c, &named)?);
        }
        let selections = named.into_iter().map(|(n, (e, f))| (n.to_string(), e, f)).collect();
        Ok((Expr::or(conds), selections))
    }

    fn detection(&mut self, d: &Detection, fields: &mut Vec<String>) -> Result<Expr, String> {
        match d {
            Detection::AllOf(items) => {
                let mut xs = Vec::with_capacity(items.len());
                for it in items {
                    if let Some(n) = &it.field.name {
                        if !fields.contains(n) {
                            fields.push(n.clone());
                        }
                    }
                    xs.push(self.item(it)?);
                }
                Ok(Expr::and(xs))
            }
            Detection::AnyOf(ds) => {
                let xs = ds.iter().map(|d| self.detection(d, fields)).collect::<Result<Vec<_>, _>>()?;
                Ok(Expr::or(xs))
            }
            Detection::And(ds) => {
                let xs = ds.iter().map(|d| self.detection(d, fields)).collect::<Result<Vec<_>, _>>()?;
                Ok(Expr::and(xs))
            }
            Detection::Keywords(values) => {
                let item =
                    DetectionItem { field: rsigma_parser::FieldSpec::new(None, Vec::new()), values: values.clone() };
                self.item(&item)
            }
            Detection::ArrayMatch { field, .. } => {
                Err(format!("array matching on `{field}` (Sigma 2.1 `[any]`/`[all]` selectors) is not supported"))
            }
            Detection::Conditional { named, condition: c } => {
                let mut inner: BTreeMap<&str, (Expr, Vec<String>)> = BTreeMap::new();
                for (name, det) in named {
                    let mut f = Vec::new();
                    inner.insert(name.as_str(), (self.detection(det, &mut f)?, f));
                }
                condition(c, &inner)
            }
        }
    }

    /// One `field|modifiers: values` entry.
    fn item(&mut self, item: &DetectionItem) -> Result<Expr, String> {
        let m = Mods::parse(&item.field.modifiers)?;
        let field = match &item.field.name {
            Some(n) => self.field(n),
            None => FieldRef::Keywords,
        };
        let shown = item.field.name.as_deref().unwrap_or("keywords");
        if item.values.is_empty() {
            return Err(format!("`{shown}` has an empty value list"));
        }
        let mut xs = Vec::with_capacity(item.values.len());
        for v in &item.values {
            xs.push(self.value(&m, &field, v).map_err(|e| format!("`{shown}`: {e}"))?);
        }
        let combined = if m.all { Expr::and(xs) } else { Expr::or(xs) };
        Ok(if m.neq { Expr::Not(Box::new(combined)) } else { combined })
    }

    fn value(&mut self, m: &Mods, field: &FieldRef, v: &SigmaValue) -> Result<Expr, String> {
        let keyword = *field == FieldRef::Keywords;
        if m.exists {
            let SigmaValue::Bool(want) = v else {
                return Err("`exists` takes true or false".into());
            };
            if keyword {
                return Err("`exists` needs a field".into());
            }
            let e = Expr::Atom(Box::new(AtomSpec::Exists { field: field.clone() }));
            return Ok(if *want { e } else { Expr::Not(Box::new(e)) });
        }
        if let Some(op) = m.compare {
            let value = match v {
                SigmaValue::Integer(i) => *i as f64,
                SigmaValue::Float(f) => *f,
                SigmaValue::String(s) => s
                    .as_plain()
                    .and_then(|p| p.trim().parse::<f64>().ok())
                    .ok_or_else(|| format!("`{op:?}` needs a number, got `{}`", s.original))?,
                other => return Err(format!("`{op:?}` needs a number, got `{other}`")),
            };
            return Ok(Expr::Atom(Box::new(AtomSpec::Compare { field: field.clone(), op, value, part: m.time })));
        }
        if let Some(part) = m.time {
            let value = match v {
                SigmaValue::Integer(i) => *i as f64,
                _ => return Err(format!("`{part:?}` needs an integer, got `{v}`")),
            };
            return Ok(Expr::Atom(Box::new(AtomSpec::Compare {
                field: field.clone(),
                op: CmpOp::Eq,
                value,
                part: Some(part),
            })));
        }
        if matches!(v, SigmaValue::Null) {
            if m.any_value_modifier() {
                return Err("null cannot be combined with value modifiers".into());
            }
            if keyword {
                return Err("a null keyword".into());
            }
            return Ok(Expr::Atom(Box::new(AtomSpec::Null { field: field.clone() })));
        }
        let text = match v {
            SigmaValue::String(s) => s.clone(),
            SigmaValue::Integer(i) => SigmaString::from_raw(&i.to_string()),
            SigmaValue::Float(f) => SigmaString::from_raw(&f.to_string()),
            SigmaValue::Bool(b) => SigmaString::from_raw(if *b { "true" } else { "false" }),
            SigmaValue::Null => unreachable!("handled above"),
        };
        if m.re {
            let src = text.original.clone();
            let flags = Flags { case_insensitive: m.re_i, multi_line: m.re_m, dot_matches_new_line: m.re_s };
            let re = BoundedRegex::new(&src, flags).map_err(|e| format!("{e} (in {})", escape_text(&src)))?;
            return Ok(Expr::Atom(Box::new(AtomSpec::Regex { field: field.clone(), regex: Arc::new(re) })));
        }
        if m.cidr {
            let s = text.as_plain().ok_or("`cidr` value has wildcards")?;
            let net = s
                .parse::<ipnet::IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("`{s}` is not a CIDR network"))?;
            return Ok(Expr::Atom(Box::new(AtomSpec::Cidr { field: field.clone(), net })));
        }
        // An explicit anchor; keywords search anywhere.
        let anchor = match (m.anchor, keyword) {
            (Some(a), _) => a,
            (None, true) => Anchor::Anywhere,
            (None, false) => Anchor::Whole,
        };
        if m.fieldref {
            if keyword {
                return Err("`fieldref` needs a field".into());
            }
            let other_name = text.as_plain().ok_or("`fieldref` value must be a field name")?;
            let other = self.field(&other_name);
            return Ok(Expr::Atom(Box::new(AtomSpec::FieldRef {
                field: field.clone(),
                other,
                anchor,
                cased: m.cased,
            })));
        }
        // Value transformations, in the order written.
        let mut strings: Vec<SigmaString> = vec![text];
        let mut encoded: Option<Vec<Vec<u8>>> = None;
        for t in &m.transforms {
            match t {
                Modifier::Expand => {
                    let missing = std::cell::RefCell::new(Vec::new());
                    let policy = self.opts.placeholders_missing;
                    let lookup = |name: &str| match self.opts.placeholders.get(name) {
                        Some(v) => Some(v.clone()),
                        None if policy == PlaceholdersMissing::Reject => None,
                        None => {
                            missing.borrow_mut().push(name.to_string());
                            Some(if policy == PlaceholdersMissing::Wildcard { vec!["*".into()] } else { Vec::new() })
                        }
                    };
                    let mut next = Vec::new();
                    for s in &strings {
                        match values::expand(&s.original, &lookup) {
                            Ok(xs) => next.extend(xs.iter().map(|x| SigmaString::new(x))),
                            // An unconfigured placeholder under `match_nothing`: no value.
                            Err(_) if policy == PlaceholdersMissing::MatchNothing && !missing.borrow().is_empty() => {}
                            Err(e) => return Err(e),
                        }
                    }
                    for name in missing.into_inner() {
                        let note = match policy {
                            PlaceholdersMissing::Wildcard => {
                                format!("placeholder `%{name}%` has no values: replaced by `*`")
                            }
                            _ => format!("placeholder `%{name}%` has no values: its values match nothing"),
                        };
                        if !self.notes.contains(&note) {
                            self.notes.push(note);
                        }
                    }
                    strings = next;
                }
                Modifier::WindAsh => {
                    if encoded.is_some() {
                        return Err("`windash` after an encoding modifier".into());
                    }
                    let mut next = Vec::new();
                    for s in &strings {
                        next.extend(values::windash(s)?);
                    }
                    strings = next;
                }
                Modifier::Wide | Modifier::Utf16be | Modifier::Utf16 => {
                    let how = match t {
                        Modifier::Wide => Utf16::Le,
                        Modifier::Utf16be => Utf16::Be,
                        _ => Utf16::LeBom,
                    };
                    if encoded.is_some() {
                        return Err("utf16 after another encoding modifier".into());
                    }
                    encoded = Some(
                        strings
                            .iter()
                            .map(|s| plain(s, "utf16").map(|p| values::utf16(&p, how)))
                            .collect::<Result<_, _>>()?,
                    );
                }
                Modifier::Base64 | Modifier::Base64Offset => {
                    let inputs: Vec<Vec<u8>> = match encoded.take() {
                        Some(e) => e,
                        None => strings
                            .iter()
                            .map(|s| plain(s, "base64").map(String::into_bytes))
                            .collect::<Result<_, _>>()?,
                    };
                    let mut out = Vec::new();
                    for i in inputs {
                        if *t == Modifier::Base64 {
                            out.push(values::base64(&i));
                        } else {
                            out.extend(values::base64_offsets(&i));
                        }
                    }
                    if *t == Modifier::Base64Offset && anchor != Anchor::Anywhere {
                        return Err("`base64offset` is only meaningful with `contains`".into());
                    }
                    encoded = Some(out);
                }
                _ => unreachable!("only transforms are collected"),
            }
        }
        let mut xs = Vec::new();
        match encoded {
            Some(patterns) => {
                for p in patterns {
                    xs.push(Expr::Atom(Box::new(AtomSpec::Literal {
                        field: field.clone(),
                        pattern: if m.cased { p } else { p.to_ascii_lowercase() },
                        anchor,
                        cased: m.cased,
                    })));
                }
            }
            None => {
                for s in strings {
                    xs.push(Expr::Atom(Box::new(string_atom(field, &s, anchor, m.cased)?)));
                }
            }
        }
        Ok(Expr::or(xs))
    }
}

fn plain(s: &SigmaString, what: &str) -> Result<String, String> {
    s.as_plain().ok_or_else(|| format!("wildcards in `{}` cannot be {what}-encoded", s.original))
}

/// A text value at an anchor: a literal for the automata when possible, else a regex.
fn string_atom(field: &FieldRef, s: &SigmaString, anchor: Anchor, cased: bool) -> Result<AtomSpec, String> {
    if let Some(p) = s.as_plain() {
        if cased || values::ascii_case_folding_suffices(&p) {
            let pattern = if cased { p.into_bytes() } else { p.to_ascii_lowercase().into_bytes() };
            return Ok(AtomSpec::Literal { field: field.clone(), pattern, anchor, cased });
        }
    }
    let src = values::glob_regex(s, anchor, !cased);
    let regex =
        BoundedRegex::new(&src, Flags::default()).map_err(|e| format!("pattern {}: {e}", escape_text(&s.original)))?;
    let regex = Arc::new(regex);
    // The longest fragment that ASCII case folding handles exactly gates the regex.
    let gate = s
        .parts
        .iter()
        .filter_map(|p| match p {
            StringPart::Plain(t) if cased || values::ascii_case_folding_suffices(t) => Some(t),
            _ => None,
        })
        .max_by_key(|t| t.len())
        .map(|t| if cased { (t.clone().into_bytes(), true) } else { (t.to_ascii_lowercase().into_bytes(), false) });
    Ok(AtomSpec::Glob { field: field.clone(), regex, gate, shown: format!("{:?} {anchor:?}", s.original) })
}

/// The modifiers of one detection item, checked for combinations Sigma allows.
#[derive(Default)]
struct Mods {
    anchor: Option<Anchor>,
    all: bool,
    cased: bool,
    neq: bool,
    re: bool,
    re_i: bool,
    re_m: bool,
    re_s: bool,
    cidr: bool,
    exists: bool,
    fieldref: bool,
    compare: Option<CmpOp>,
    time: Option<TimePart>,
    transforms: Vec<Modifier>,
}

impl Mods {
    fn parse(mods: &[Modifier]) -> Result<Mods, String> {
        let mut m = Mods::default();
        for x in mods {
            match x {
                Modifier::Contains | Modifier::StartsWith | Modifier::EndsWith => {
                    if m.anchor.is_some() {
                        return Err("more than one of contains/startswith/endswith".into());
                    }
                    m.anchor = Some(match x {
                        Modifier::Contains => Anchor::Anywhere,
                        Modifier::StartsWith => Anchor::Start,
                        _ => Anchor::End,
                    });
                }
                Modifier::All => m.all = true,
                Modifier::Cased => m.cased = true,
                Modifier::Neq => m.neq = true,
                Modifier::Re => m.re = true,
                Modifier::IgnoreCase => m.re_i = true,
                Modifier::Multiline => m.re_m = true,
                Modifier::DotAll => m.re_s = true,
                Modifier::Cidr => m.cidr = true,
                Modifier::Exists => m.exists = true,
                Modifier::FieldRef => m.fieldref = true,
                Modifier::Gt | Modifier::Gte | Modifier::Lt | Modifier::Lte => {
                    if m.compare.is_some() {
                        return Err("more than one numeric comparison".into());
                    }
                    m.compare = Some(match x {
                        Modifier::Gt => CmpOp::Gt,
                        Modifier::Gte => CmpOp::Gte,
                        Modifier::Lt => CmpOp::Lt,
                        _ => CmpOp::Lte,
                    });
                }
                Modifier::Minute
                | Modifier::Hour
                | Modifier::Day
                | Modifier::Week
                | Modifier::Month
                | Modifier::Year => {
                    if m.time.is_some() {
                        return Err("more than one time modifier".into());
                    }
                    m.time = Some(match x {
                        Modifier::Minute => TimePart::Minute,
                        Modifier::Hour => TimePart::Hour,
                        Modifier::Day => TimePart::Day,
                        Modifier::Week => TimePart::Week,
                        Modifier::Month => TimePart::Month,
                        _ => TimePart::Year,
                    });
                }
                Modifier::Expand
                | Modifier::WindAsh
                | Modifier::Base64
                | Modifier::Base64Offset
                | Modifier::Wide
                | Modifier::Utf16be
                | Modifier::Utf16 => m.transforms.push(*x),
            }
        }
        let sub_re = m.re_i || m.re_m || m.re_s;
        if sub_re && !m.re {
            return Err("regex flags i/m/s without `re`".into());
        }
        let special = [m.re, m.cidr, m.exists, m.compare.is_some() || m.time.is_some(), m.fieldref];
        if special.iter().filter(|b| **b).count() > 1 {
            return Err("incompatible modifiers (re, cidr, exists, comparisons and fieldref exclude each other)".into());
        }
        let shapes_text = m.anchor.is_some() || !m.transforms.is_empty() || m.cased;
        if (m.re || m.cidr || m.exists || m.compare.is_some() || m.time.is_some()) && shapes_text {
            let what = if m.re {
                "re"
            } else if m.cidr {
                "cidr"
            } else if m.exists {
                "exists"
            } else {
                "numeric/time comparison"
            };
            return Err(format!("`{what}` cannot be combined with contains/startswith/endswith, cased or encodings"));
        }
        if m.fieldref && !m.transforms.is_empty() {
            return Err("`fieldref` cannot be combined with encodings".into());
        }
        Ok(m)
    }

    fn any_value_modifier(&self) -> bool {
        self.anchor.is_some() || !self.transforms.is_empty() || self.cased || self.re || self.cidr || self.fieldref
    }
}

/// A condition expression over named selections.
fn condition(c: &ConditionExpr, named: &BTreeMap<&str, (Expr, Vec<String>)>) -> Result<Expr, String> {
    Ok(match c {
        ConditionExpr::And(xs) => Expr::And(xs.iter().map(|x| condition(x, named)).collect::<Result<_, _>>()?),
        ConditionExpr::Or(xs) => Expr::Or(xs.iter().map(|x| condition(x, named)).collect::<Result<_, _>>()?),
        ConditionExpr::Not(x) => Expr::Not(Box::new(condition(x, named)?)),
        ConditionExpr::Identifier(id) => named
            .get(id.as_str())
            .map(|(e, _)| e.clone())
            .ok_or_else(|| format!("condition names unknown selection `{id}`"))?,
        ConditionExpr::Selector { quantifier, pattern } => {
            let picked: Vec<Expr> = named
                .iter()
                .filter(|(n, _)| match pattern {
                    // `them` leaves out identifiers starting with `_` (Sigma specification).
                    SelectorPattern::Them => !n.starts_with('_'),
                    SelectorPattern::Pattern(p) => rsigma_parser::detection_name_matches(p, n),
                })
                .map(|(_, (e, _))| e.clone())
                .collect();
            if picked.is_empty() {
                return Err(format!("`{quantifier} of {pattern}` matches no selection"));
            }
            match quantifier {
                Quantifier::Any => Expr::Or(picked),
                Quantifier::All => Expr::And(picked),
                Quantifier::Count(n) => Expr::AtLeast(*n as usize, picked),
            }
        }
    })
}

/// The rule's routing condition, and whether a category/service-specific entry covered it.
fn route_for(opts: &CompileOptions, ls: &LogSource) -> Result<(Option<Expr>, bool), String> {
    let (p, c, s) = (ls.product.as_deref(), ls.category.as_deref(), ls.service.as_deref());
    let routes = opts.logsources.applicable(p, c, s);
    let specific = routes.iter().any(|r| r.keys.category.is_some() || r.keys.service.is_some());
    let covered = !routes.is_empty() && (specific || (c.is_none() && s.is_none()));
    if !covered && opts.unrouted == Unrouted::Reject {
        return Err(format!(
            "no logsource routing for product={} category={} service={}",
            p.unwrap_or("-"),
            c.unwrap_or("-"),
            s.unwrap_or("-")
        ));
    }
    if routes.is_empty() {
        return Ok((None, false));
    }
    Ok((Some(route_exprs(opts, p, &routes)?), covered))
}

fn route_exprs(
    opts: &CompileOptions,
    product: Option<&str>,
    routes: &[&crate::sigma::mapping::Route],
) -> Result<Expr, String> {
    let mut xs = Vec::new();
    for r in routes {
        // Reuse the Sigma parser for the condition: a detection named `route`.
        let mut detection = yaml_serde::Mapping::new();
        detection.insert("route".into(), r.detection.clone());
        detection.insert("condition".into(), "route".into());
        let mut doc = yaml_serde::Mapping::new();
        doc.insert("title".into(), "route".into());
        doc.insert("logsource".into(), yaml_serde::Value::Mapping(yaml_serde::Mapping::new()));
        doc.insert("detection".into(), yaml_serde::Value::Mapping(detection));
        let text = yaml_serde::to_string(&doc).map_err(|e| e.to_string())?;
        let parsed = rsigma_parser::parse_sigma_yaml(&text).map_err(|e| e.to_string())?;
        let rule = parsed.rules.first().ok_or_else(|| format!("logsource route {:?}: {:?}", r.keys, parsed.errors))?;
        let mut l = Lowering::new(opts, product);
        let (e, _) = l.detections(&rule.detection).map_err(|e| format!("logsource route {:?}: {e}", r.keys))?;
        xs.push(e);
    }
    Ok(Expr::and(xs))
}

/// The routes lowered so far for one set of options, by logsource (product, category,
/// service): rules share a few dozen logsources, and lowering a route parses its condition.
#[derive(Default)]
pub struct RouteCache(RouteMap);

type RouteMap = std::collections::HashMap<[Option<String>; 3], Result<(Option<Expr>, bool), String>>;

impl RouteCache {
    fn route_for(&mut self, opts: &CompileOptions, ls: &LogSource) -> Result<(Option<Expr>, bool), String> {
        let key = [ls.product.clone(), ls.category.clone(), ls.service.clone()];
        self.0.entry(key).or_insert_with(|| route_for(opts, ls)).clone()
    }
}

/// Lowers one rule; the error is the rejection reason. `routes` must only ever see `opts`.
pub fn lower_rule(
    opts: &CompileOptions,
    routes: &mut RouteCache,
    rule: &SigmaRule,
    path: &str,
) -> Result<LoweredRule, String> {
    let mut l = Lowering::new(opts, rule.logsource.product.as_deref());
    let (cond, selections) = l.detections(&rule.detection)?;
    let (route, routed) = routes.route_for(opts, &rule.logsource)?;
    let level = rule.level.map(|x| x.as_str().to_string()).unwrap_or_default();
    let status = rule.status.map(|s| format!("{s:?}").to_lowercase()).unwrap_or_default();
    let meta = Arc::new(RuleMeta {
        rule: Arc::new(ward_engine::alert::AlertRule {
            id: rule.id.clone().unwrap_or_else(|| rule.title.clone()),
            title: rule.title.clone(),
            level,
            status,
            tags: rule.tags.clone(),
            techniques: ward_engine::alert::attack_techniques(&rule.tags),
        }),
        path: path.to_string(),
    });
    Ok(LoweredRule {
        meta,
        name: rule.name.clone(),
        logsource: rule.logsource.clone(),
        route,
        cond,
        selections,
        fields: l.fields_seen,
        filters: Vec::new(),
        notes: l.notes,
        routed,
    })
}

fn logsource_covers(filter: &LogSource, rule: &LogSource) -> bool {
    let eq = |f: &Option<String>, r: &Option<String>| match f {
        None => true,
        Some(f) => r.as_deref().is_some_and(|r| r.eq_ignore_ascii_case(f)),
    };
    eq(&filter.product, &rule.product) && eq(&filter.category, &rule.category) && eq(&filter.service, &rule.service)
}

/// Applies a Sigma filter to the rules it targets: `rule and not filter`.
pub fn apply_filter(
    opts: &CompileOptions,
    filter: &FilterRule,
    rules: &mut [LoweredRule],
    names: &HashMap<String, usize>,
) -> Result<usize, String> {
    let targets: Vec<usize> = match &filter.rules {
        FilterRuleTarget::Any => (0..rules.len()).collect(),
        FilterRuleTarget::Specific(ids) => ids.iter().filter_map(|id| names.get(id).copied()).collect(),
    };
    let mut applied = 0;
    for i in targets {
        let r = &mut rules[i];
        if let Some(ls) = &filter.logsource {
            if !logsource_covers(ls, &r.logsource) {
                continue;
            }
        }
        let mut l = Lowering::new(opts, r.logsource.product.as_deref());
        let (f, _) = l.detections(&filter.detection).map_err(|e| format!("filter `{}`: {e}", filter.title))?;
        r.notes.extend(l.notes.into_iter().map(|n| format!("filter `{}`: {n}", filter.title)));
        let cond = std::mem::replace(&mut r.cond, Expr::True);
        r.cond = Expr::And(vec![cond, Expr::Not(Box::new(f))]);
        r.filters.push(filter.id.clone().unwrap_or_else(|| filter.title.clone()));
        applied += 1;
    }
    Ok(applied)
}
