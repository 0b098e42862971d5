//! The compiled, cross-rule matcher (DESIGN.md §6).
//!
//! Every test a rule makes on a field is an *atom*. Literal atoms of all rules on one field share
//! that field's Aho-Corasick automata (one ASCII-case-insensitive, one cased) plus hash tables
//! for whole-value equality; wildcard atoms ride on a literal fragment (their *gate*) and are
//! verified by a regex only when the gate occurs. These *eager* atoms are decided in one pass
//! over the event's fields. Everything else (regexes, CIDR, numeric and time comparisons,
//! exists/null, field references) is *lazy*: decided on first use and memoized per event.
//!
//! A rule's condition is evaluated only when one of its *trigger* atoms (eager atoms without
//! which the condition cannot hold) fired in the pass; rules with no such atoms (pure negations,
//! regex-only) are evaluated for every event their logsource routes to. Cost per event thus
//! follows the fields and the patterns that occur, not the number of rules.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use regex::Regex;
use ward_engine::batch::{format_timestamp_ms, Bytes, Key, Slot, Value};

use super::values::Anchor;

pub type AtomId = u32;
pub type FieldIdx = u32;
pub type RuleIdx = u32;

/// The pseudo-field for keyword searches: every string value of the event.
pub const KEYWORDS: FieldIdx = FieldIdx::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Lt,
    Lte,
    Gt,
    Gte,
    Eq,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimePart {
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

/// Atoms decided on demand.
#[derive(Debug)]
pub enum Lazy {
    Regex {
        field: FieldIdx,
        re: Regex,
    },
    Cidr {
        field: FieldIdx,
        net: ipnet::IpNet,
    },
    Compare {
        field: FieldIdx,
        op: CmpOp,
        value: f64,
        part: Option<TimePart>,
    },
    /// The field is present (whatever its value).
    Exists {
        field: FieldIdx,
    },
    /// The field is absent, null or empty.
    Null {
        field: FieldIdx,
    },
    FieldRef {
        field: FieldIdx,
        other: FieldIdx,
        anchor: Anchor,
        cased: bool,
    },
    /// A keyword literal: decided by one scan of every string value of the event, run the
    /// first time any keyword atom is asked for (keyword rules are few and routed).
    Keyword,
}

#[derive(Debug)]
pub enum Atom {
    Eager,
    Lazy(Lazy),
}

#[derive(Clone, Debug)]
pub enum Cond {
    True,
    False,
    Atom(AtomId),
    Not(Box<Cond>),
    And(Vec<Cond>),
    Or(Vec<Cond>),
    AtLeast(usize, Vec<Cond>),
    /// Any of a group of eager atoms (a long value list): set while scanning, so evaluating
    /// it costs one lookup however long the list.
    AnyEager(u32),
}

/// What a literal occurrence in a field means.
#[derive(Clone, Copy, Debug)]
pub struct Hit {
    pub atom: AtomId,
    pub anchor: Anchor,
    /// Index into the field's verification regexes (gated wildcard atoms), or `NO_VERIFY`.
    pub verify: u32,
}
pub const NO_VERIFY: u32 = u32::MAX;

/// The eager tests on one field.
#[derive(Default)]
pub struct Scan {
    pub ci: Option<AhoCorasick>,
    pub ci_hits: Vec<Vec<Hit>>,
    pub cs: Option<AhoCorasick>,
    pub cs_hits: Vec<Vec<Hit>>,
    /// Whole-value equality, keyed by the ASCII-lowercased value.
    pub ci_eq: ahash::HashMap<Box<[u8]>, Vec<AtomId>>,
    pub cs_eq: ahash::HashMap<Box<[u8]>, Vec<AtomId>>,
    pub verify: Vec<Regex>,
}

impl Scan {
    pub fn is_empty(&self) -> bool {
        self.ci.is_none() && self.cs.is_none() && self.ci_eq.is_empty() && self.cs_eq.is_empty()
    }
}

pub struct FieldInfo {
    /// How the field is shown (the Sigma field name as first resolved).
    pub display: String,
    pub keys: Vec<super::mapping::FieldKey>,
    pub scan: Scan,
}

/// A selection of a rule, for the alert's "matched" section.
pub struct Selection {
    pub name: String,
    pub cond: Cond,
    pub fields: Vec<(String, FieldIdx)>,
}

/// A compiled rule's identity: what its alerts carry, and the file it came from.
pub struct RuleMeta {
    pub rule: ward_engine::alert::AlertRule,
    pub path: String,
}

pub struct CompiledRule {
    pub meta: Arc<RuleMeta>,
    pub cond: Cond,
    pub route: Option<u32>,
    pub selections: Vec<Selection>,
}

pub struct Matcher {
    pub fields: Vec<FieldInfo>,
    pub core_lookup: Vec<Vec<FieldIdx>>,
    pub ext_lookup: ahash::HashMap<Box<str>, Vec<FieldIdx>>,
    pub keywords: Scan,
    pub atoms: Vec<Atom>,
    pub atom_rules: Vec<Vec<RuleIdx>>,
    /// Eager atom → the `AnyEager` groups it belongs to.
    pub atom_groups: Vec<Vec<u32>>,
    pub groups: usize,
    pub routes: Vec<Cond>,
    pub rules: Vec<CompiledRule>,
    /// Rules without trigger atoms, evaluated on every event their route admits.
    pub always: Vec<RuleIdx>,
}

/// Per-worker evaluation state, reused across events (no allocation per event once warm).
#[derive(Default)]
pub struct Scratch {
    generation: u32,
    atom_gen: Vec<u32>,
    atom_val: Vec<bool>,
    rule_gen: Vec<u32>,
    group_gen: Vec<u32>,
    route_gen: Vec<u32>,
    route_val: Vec<bool>,
    candidates: Vec<RuleIdx>,
    present: Vec<(FieldIdx, Value)>,
    lower: Vec<u8>,
    fmt: String,
    fmt2: String,
    ref_ends: Vec<usize>,
    keywords_gen: u32,
    /// Work counters, for benchmarks and tuning.
    pub stats: MatchStats,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct MatchStats {
    pub events: u64,
    /// Literal occurrences found by the automata.
    pub occurrences: u64,
    /// Rule conditions evaluated.
    pub evaluated: u64,
}

/// The text of a value as Sigma compares it (`None` for null and unreadable addresses).
pub(crate) fn text<'a>(b: Bytes<'a>, v: Value, buf: &'a mut String) -> Option<&'a str> {
    match v {
        Value::Str(r) => Some(b.str(r)),
        Value::Null => None,
        Value::Bool(x) => Some(if x { "true" } else { "false" }),
        Value::Int(i) => {
            buf.clear();
            let _ = write!(buf, "{i}");
            Some(buf)
        }
        Value::Float(f) => {
            buf.clear();
            let _ = write!(buf, "{f}");
            Some(buf)
        }
        Value::Timestamp(ms) => {
            buf.clear();
            buf.push_str(&format_timestamp_ms(ms));
            Some(buf)
        }
        Value::Ip(r) => {
            let ip = b.ip(r)?;
            buf.clear();
            let _ = write!(buf, "{ip}");
            Some(buf)
        }
    }
}

fn anchored(anchor: Anchor, start: usize, end: usize, len: usize) -> bool {
    match anchor {
        Anchor::Anywhere => true,
        Anchor::Start => start == 0,
        Anchor::End => end == len,
        Anchor::Whole => start == 0 && end == len,
    }
}

impl Scratch {
    /// Sizes the state for `m` (after a rule-set switch) and starts a new event.
    fn begin(&mut self, m: &Matcher) {
        if self.atom_gen.len() != m.atoms.len() {
            self.atom_gen = vec![0; m.atoms.len()];
            self.atom_val = vec![false; m.atoms.len()];
        }
        if self.group_gen.len() != m.groups {
            self.group_gen = vec![0; m.groups];
        }
        if self.rule_gen.len() != m.rules.len() {
            self.rule_gen = vec![0; m.rules.len()];
        }
        if self.route_gen.len() != m.routes.len() {
            self.route_gen = vec![0; m.routes.len()];
            self.route_val = vec![false; m.routes.len()];
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Wrapped: stale stamps could collide, so clear them once every 4 billion events.
            self.atom_gen.iter_mut().for_each(|g| *g = 0);
            self.rule_gen.iter_mut().for_each(|g| *g = 0);
            self.group_gen.iter_mut().for_each(|g| *g = 0);
            self.route_gen.iter_mut().for_each(|g| *g = 0);
            self.generation = 1;
        }
        self.present.clear();
        self.candidates.clear();
    }
}

impl Matcher {
    fn fields_for(&self, b: Bytes<'_>, key: Key) -> &[FieldIdx] {
        match key {
            Key::Core(f) => self.core_lookup.get(f.0 as usize).map(Vec::as_slice).unwrap_or(&[]),
            Key::Ext(r) => self.ext_lookup.get(b.str(r)).map(Vec::as_slice).unwrap_or(&[]),
        }
    }

    fn fire(&self, s: &mut Scratch, atom: AtomId, trigger: bool) {
        let g = s.generation;
        let a = atom as usize;
        if s.atom_gen[a] == g && s.atom_val[a] {
            return;
        }
        s.atom_gen[a] = g;
        s.atom_val[a] = true;
        for &grp in &self.atom_groups[a] {
            s.group_gen[grp as usize] = g;
        }
        if !trigger {
            return;
        }
        for &r in &self.atom_rules[a] {
            if s.rule_gen[r as usize] != g {
                s.rule_gen[r as usize] = g;
                s.candidates.push(r);
            }
        }
    }

    fn scan(&self, scan: &Scan, s: &mut Scratch, value: &str, trigger: bool) {
        let bytes = value.as_bytes();
        let len = bytes.len();
        for (ac, hits) in [(&scan.ci, &scan.ci_hits), (&scan.cs, &scan.cs_hits)] {
            let Some(ac) = ac else { continue };
            for m in ac.find_overlapping_iter(bytes) {
                s.stats.occurrences += 1;
                for h in &hits[m.pattern().as_usize()] {
                    if anchored(h.anchor, m.start(), m.end(), len)
                        && (h.verify == NO_VERIFY || scan.verify[h.verify as usize].is_match(value))
                    {
                        self.fire(s, h.atom, trigger);
                    }
                }
            }
        }
        if !scan.ci_eq.is_empty() {
            s.lower.clear();
            s.lower.extend(bytes.iter().map(u8::to_ascii_lowercase));
            if let Some(atoms) = scan.ci_eq.get(s.lower.as_slice()) {
                for &a in atoms {
                    self.fire(s, a, trigger);
                }
            }
        }
        if let Some(atoms) = scan.cs_eq.get(bytes) {
            for &a in atoms {
                self.fire(s, a, trigger);
            }
        }
    }

    /// Evaluates the event in `slots` and appends the indices of the rules it matches, in rule
    /// order.
    pub fn match_event(&self, s: &mut Scratch, b: Bytes<'_>, slots: &[Slot], matched: &mut Vec<RuleIdx>) {
        s.begin(self);
        let mut fmt = std::mem::take(&mut s.fmt);
        for slot in slots {
            let fields = self.fields_for(b, slot.key);
            if fields.is_empty() {
                continue;
            }
            let mut scanned = false;
            for &f in fields {
                s.present.push((f, slot.value));
                scanned |= !self.fields[f as usize].scan.is_empty();
            }
            if !scanned {
                continue;
            }
            let Some(t) = text(b, slot.value, &mut fmt) else { continue };
            for &f in fields {
                let scan = &self.fields[f as usize].scan;
                if !scan.is_empty() {
                    self.scan(scan, s, t, true);
                }
            }
        }
        s.fmt = fmt;
        let first = matched.len();
        let candidates = std::mem::take(&mut s.candidates);
        s.stats.events += 1;
        s.stats.evaluated += (candidates.len() + self.always.len()) as u64;
        for &r in candidates.iter().chain(&self.always) {
            if self.rule_holds(r, s, b, slots) {
                matched.push(r);
            }
        }
        s.candidates = candidates;
        matched[first..].sort_unstable();
    }

    fn rule_holds(&self, r: RuleIdx, s: &mut Scratch, b: Bytes<'_>, slots: &[Slot]) -> bool {
        let rule = &self.rules[r as usize];
        if let Some(route) = rule.route {
            let g = s.generation;
            let i = route as usize;
            if s.route_gen[i] != g {
                let v = self.eval(&self.routes[i], s, b, slots);
                s.route_gen[i] = g;
                s.route_val[i] = v;
            }
            if !s.route_val[i] {
                return false;
            }
        }
        self.eval(&rule.cond, s, b, slots)
    }

    pub fn eval(&self, c: &Cond, s: &mut Scratch, b: Bytes<'_>, slots: &[Slot]) -> bool {
        match c {
            Cond::True => true,
            Cond::False => false,
            Cond::Atom(a) => self.atom(*a, s, b, slots),
            Cond::AnyEager(g) => s.group_gen[*g as usize] == s.generation,
            Cond::Not(x) => !self.eval(x, s, b, slots),
            Cond::And(xs) => xs.iter().all(|x| self.eval(x, s, b, slots)),
            Cond::Or(xs) => xs.iter().any(|x| self.eval(x, s, b, slots)),
            Cond::AtLeast(n, xs) => {
                let mut k = 0;
                for x in xs {
                    if self.eval(x, s, b, slots) {
                        k += 1;
                        if k >= *n {
                            return true;
                        }
                    }
                }
                false
            }
        }
    }

    fn atom(&self, a: AtomId, s: &mut Scratch, b: Bytes<'_>, slots: &[Slot]) -> bool {
        let i = a as usize;
        if s.atom_gen[i] == s.generation {
            return s.atom_val[i];
        }
        let v = match &self.atoms[i] {
            Atom::Eager => false,
            Atom::Lazy(l) => self.lazy(l, s, b, slots),
        };
        if s.atom_gen[i] == s.generation {
            // Decided while evaluating (a keyword scan sets every keyword atom at once).
            return s.atom_val[i];
        }
        s.atom_gen[i] = s.generation;
        s.atom_val[i] = v;
        v
    }

    /// Calls `f` with the text of every value of `field` (every string value for keywords)
    /// until it returns true.
    fn any_value(
        &self,
        field: FieldIdx,
        s: &mut Scratch,
        b: Bytes<'_>,
        slots: &[Slot],
        mut f: impl FnMut(Value, &str) -> bool,
    ) -> bool {
        let mut buf = std::mem::take(&mut s.fmt);
        let mut found = false;
        if field == KEYWORDS {
            for slot in slots {
                if let Value::Str(r) = slot.value {
                    if f(slot.value, b.str(r)) {
                        found = true;
                        break;
                    }
                }
            }
        } else {
            for &(fi, v) in &s.present {
                if fi != field {
                    continue;
                }
                if let Some(t) = text(b, v, &mut buf) {
                    if f(v, t) {
                        found = true;
                        break;
                    }
                }
            }
        }
        s.fmt = buf;
        found
    }

    fn lazy(&self, l: &Lazy, s: &mut Scratch, b: Bytes<'_>, slots: &[Slot]) -> bool {
        match l {
            Lazy::Regex { field, re } => self.any_value(*field, s, b, slots, |_, t| re.is_match(t)),
            Lazy::Cidr { field, net } => self.any_value(*field, s, b, slots, |v, t| {
                let ip = match v {
                    Value::Ip(r) => b.ip(r),
                    _ => t.trim().parse::<IpAddr>().ok(),
                };
                ip.is_some_and(|ip| net.contains(&ip))
            }),
            Lazy::Compare { field, op, value, part } => self.any_value(*field, s, b, slots, |v, t| {
                let x = match part {
                    None => match v {
                        Value::Int(i) => Some(i as f64),
                        Value::Float(f) => Some(f),
                        _ => t.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
                    },
                    Some(p) => time_part(v, t, *p).map(|n| n as f64),
                };
                x.is_some_and(|x| match op {
                    CmpOp::Lt => x < *value,
                    CmpOp::Lte => x <= *value,
                    CmpOp::Gt => x > *value,
                    CmpOp::Gte => x >= *value,
                    CmpOp::Eq => x == *value,
                })
            }),
            Lazy::Keyword => {
                if s.keywords_gen != s.generation {
                    s.keywords_gen = s.generation;
                    for slot in slots {
                        if let Value::Str(r) = slot.value {
                            self.scan(&self.keywords, s, b.str(r), false);
                        }
                    }
                }
                false // The scan set the keyword atoms that hold; this one did not.
            }
            Lazy::Exists { field } => s.present.iter().any(|(f, _)| f == field),
            Lazy::Null { field } => {
                let mut buf = std::mem::take(&mut s.fmt);
                let non_empty =
                    s.present.iter().any(|&(f, v)| f == *field && text(b, v, &mut buf).is_some_and(|t| !t.is_empty()));
                s.fmt = buf;
                !non_empty
            }
            Lazy::FieldRef { field, other, anchor, cased } => {
                // Collect the referenced values first (the closure below borrows the buffer).
                let mut refs = std::mem::take(&mut s.fmt2);
                let mut ends = std::mem::take(&mut s.ref_ends);
                let mut buf = std::mem::take(&mut s.fmt);
                refs.clear();
                ends.clear();
                for &(f, v) in &s.present {
                    if f == *other {
                        if let Some(t) = text(b, v, &mut buf) {
                            refs.push_str(t);
                            ends.push(refs.len());
                        }
                    }
                }
                s.fmt = buf;
                let found = self.any_value(*field, s, b, slots, |_, t| {
                    let mut start = 0;
                    ends.iter().any(|&end| {
                        let r = &refs[start..end];
                        start = end;
                        fieldref_matches(t, r, *anchor, *cased)
                    })
                });
                s.fmt2 = refs;
                s.ref_ends = ends;
                found
            }
        }
    }

    /// For alerts: the selections that hold for the event and the values of their fields.
    pub fn explain_match(
        &self,
        r: RuleIdx,
        s: &mut Scratch,
        b: Bytes<'_>,
        slots: &[Slot],
    ) -> Vec<ward_engine::alert::MatchedSelection> {
        let rule = &self.rules[r as usize];
        let mut out = Vec::new();
        for sel in &rule.selections {
            if !self.eval(&sel.cond, s, b, slots) {
                continue;
            }
            let mut fields = Vec::new();
            for (name, f) in &sel.fields {
                let mut buf = String::new();
                if let Some(t) = s.present.iter().find(|(fi, _)| fi == f).and_then(|&(_, v)| text(b, v, &mut buf)) {
                    fields.push((name.clone(), t.to_string()));
                }
            }
            out.push(ward_engine::alert::MatchedSelection { selection: sel.name.clone(), fields });
        }
        out
    }
}

fn fieldref_matches(value: &str, reference: &str, anchor: Anchor, cased: bool) -> bool {
    let (v, r) = (value.as_bytes(), reference.as_bytes());
    let eq = |a: &[u8], b: &[u8]| if cased { a == b } else { a.eq_ignore_ascii_case(b) };
    match anchor {
        Anchor::Whole => eq(v, r),
        Anchor::Start => v.len() >= r.len() && eq(&v[..r.len()], r),
        Anchor::End => v.len() >= r.len() && eq(&v[v.len() - r.len()..], r),
        Anchor::Anywhere => r.is_empty() || (v.len() >= r.len() && v.windows(r.len()).any(|w| eq(w, r))),
    }
}

/// A part of a date: from a timestamp value, or a string in RFC 3339 or
/// `YYYY-MM-DD HH:MM:SS[.fff]` form (read as UTC; Sigma's time modifiers do no zone conversion).
fn time_part(v: Value, t: &str, part: TimePart) -> Option<i64> {
    use chrono::{Datelike, NaiveDateTime, Timelike};
    let dt: NaiveDateTime = match v {
        Value::Timestamp(ms) => chrono::DateTime::from_timestamp_millis(ms)?.naive_utc(),
        _ => {
            let t = t.trim();
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|d| d.naive_local())
                .ok()
                .or_else(|| NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f").ok())
                .or_else(|| NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f").ok())?
        }
    };
    Some(match part {
        TimePart::Minute => dt.minute() as i64,
        TimePart::Hour => dt.hour() as i64,
        TimePart::Day => dt.day() as i64,
        TimePart::Week => dt.iso_week().week() as i64,
        TimePart::Month => dt.month() as i64,
        TimePart::Year => dt.year() as i64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fieldref_anchors() {
        assert!(fieldref_matches("C:\\x\\a.exe", "a.exe", Anchor::End, false));
        assert!(fieldref_matches("abc", "ABC", Anchor::Whole, false));
        assert!(!fieldref_matches("abc", "ABC", Anchor::Whole, true));
        assert!(fieldref_matches("xxabcxx", "abc", Anchor::Anywhere, true));
    }

    #[test]
    fn time_parts_from_strings_and_timestamps() {
        assert_eq!(time_part(Value::Null, "2024-03-05T22:10:00Z", TimePart::Hour), Some(22));
        assert_eq!(time_part(Value::Null, "2024-03-05 22:10:00.123", TimePart::Minute), Some(10));
        assert_eq!(time_part(Value::Timestamp(0), "", TimePart::Year), Some(1970));
        assert_eq!(time_part(Value::Null, "yesterday", TimePart::Year), None);
    }
}
