//! The compiled, cross-rule matcher (docs/architecture.md §6).
//!
//! Every test a rule makes on a field is an *atom*. Literal atoms on one field share that
//! field's Aho-Corasick automata (ASCII-case-insensitive and cased) plus hash tables for
//! whole-value equality; wildcard atoms ride on a literal fragment (their *gate*) and are
//! verified by a regex only when the gate occurs, and so do regexes with a selective set of
//! prefix or suffix literals (run only where one occurs, or never when the literals are the
//! whole pattern). These *eager* atoms are decided in passes over the event's fields. The rest
//! (regexes without such literals, CIDR, numeric and time comparisons, exists/null, field
//! references) is *lazy*: decided on first use and memoized per event.
//!
//! A field's eager tests are split into *scan groups* by logsource route: the first pass scans
//! the tests of route conditions and of rules without a route; the routes those decide are
//! evaluated once; a second pass scans only the tests of the rules routed where the event is
//! admitted. A Sysmon process event thus never meets the literals of registry or firewall
//! rules, and a Zeek record none of the Windows rules'.
//!
//! A rule's condition is evaluated only when one of its *trigger* atoms (eager atoms without
//! which the condition cannot hold) fired in the pass; rules with no such atoms (pure negations,
//! regex-only) are evaluated for every event their logsource routes to. Cost per event thus
//! follows the fields and the patterns that occur, not the number of rules.
//!
//! Events are written by attackers, so every step is linear in the event's size: a gated regex
//! runs at most once per value however often its gate occurs, field references compare with a
//! linear substring search, and regexes are bounded (see `bounded_regex.rs`). On top of that each
//! event has a work [`MatchBudget`]: regex searches and field references are charged to it, and
//! those that do not fit are not run. Their atoms are then *unknown*, conditions are evaluated
//! in three-valued logic, a rule whose condition still holds alerts, and the others are counted
//! as undecided (never silently dropped: see `Scratch::undecided`).

use std::net::IpAddr;
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use ward_engine::batch::{write_value_text, Bytes, Key, Slot, Value};

use super::bounded_regex::BoundedRegex;
use super::values::Anchor;

pub type AtomId = u32;
pub type FieldIdx = u32;
pub type RuleIdx = u32;

/// The pseudo-field for keyword searches: every string value of the event.
pub const KEYWORDS: FieldIdx = FieldIdx::MAX;

/// Joins an event's string values for one keyword pass, when no keyword literal contains it
/// (`Literals::joinable`; else each value is scanned alone), so no occurrence spans two values.
pub const KEYWORD_SEPARATOR: char = '\0';

/// The text of a value keyword search looks at: every string of the input, not what Ward
/// derived itself (`event.id`, made from the record's provenance when the input has none, and
/// `ward.*` fields), which would make keyword matches depend on file names and offsets.
fn keyword_text(b: Bytes<'_>, slot: &Slot) -> Option<ward_engine::batch::StrRef> {
    let Value::Str(r) = slot.value else { return None };
    match slot.key {
        Key::Core(f) if f == ward_engine::fields::ids::EVENT_ID => None,
        Key::Ext(k) if b.str(k).starts_with("ward.") => None,
        _ => Some(r),
    }
}

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
        re: Arc<BoundedRegex>,
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
    /// first time any keyword atom is asked for, with the literals of the rules without a
    /// route and of each route that admits the event (keyword rules are few and routed).
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

/// An eager atom's part in a rule's trigger: the rule, and the bit of the clause the atom is in.
#[derive(Clone, Copy, Debug)]
pub struct Trigger {
    pub rule: RuleIdx,
    pub clause: u8,
}

/// What a literal occurrence in a field means.
#[derive(Clone, Copy, Debug)]
pub struct Hit {
    pub atom: AtomId,
    pub anchor: Anchor,
    /// Index into the matcher's verification regexes (gated wildcard atoms), or `NO_VERIFY`.
    pub verify: u32,
    /// For a cased literal: index of its bytes in [`Literals::exact`], which the occurrence
    /// must equal (the automaton reads the lowercased value); else `NO_EXACT`.
    pub exact: u32,
}
pub const NO_VERIFY: u32 = u32::MAX;
pub const NO_EXACT: u32 = u32::MAX;

/// Literals searched in one pass, and what an occurrence of each pattern means.
pub struct Literals {
    pub ac: AhoCorasick,
    pub hits: Vec<Vec<Hit>>,
    /// No literal contains [`KEYWORD_SEPARATOR`]: values joined by it can be scanned at once.
    pub joinable: bool,
    /// The cased literals as written (`Hit::exact`).
    pub exact: Vec<Box<[u8]>>,
    /// For keyword scans of up to 64 literals: a SIMD (Teddy) search for any of them, which
    /// skips the overlapping pass over an event's joined text when none occurs (the usual
    /// case: 20 ns instead of 300 ns for a Windows event and the 20 literals of the rule
    /// routed to every Windows event).
    pub any: Option<aho_corasick::packed::Searcher>,
}

/// The eager tests on one field (of one scan group).
#[derive(Default)]
pub struct Scan {
    /// Literals, found with one overlapping pass of an automaton of ASCII-lowercased patterns
    /// over the lowercased value; cased ones are checked byte for byte where they occur (one
    /// pass per value, not two).
    pub literals: Option<Literals>,
    /// Whole-value equality, keyed by the ASCII-lowercased value.
    pub ci_eq: ahash::HashMap<Box<[u8]>, Vec<AtomId>>,
    pub cs_eq: ahash::HashMap<Box<[u8]>, Vec<AtomId>>,
}

pub struct FieldInfo {
    /// How the field is shown (the Sigma field name as first resolved).
    pub display: String,
    pub keys: Vec<super::mapping::FieldKey>,
    /// The field's eager tests scanned on every event (route conditions, rules without a
    /// route).
    pub always: Option<Scan>,
    /// Per route whose rules test the field, their tests (scanned only on events the route
    /// admits).
    pub routed: Vec<(u32, Scan)>,
}

/// A selection of a rule, for the alert's "matched" section.
pub struct Selection {
    pub name: String,
    pub cond: Cond,
    pub fields: Vec<(String, FieldIdx)>,
}

/// A compiled rule's identity: what its alerts carry, and the file it came from.
pub struct RuleMeta {
    pub rule: std::sync::Arc<ward_engine::alert::AlertRule>,
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
    /// Fields under `Event.EventData.`, by the name after it: Windows event data kept under
    /// `Event.UserData.<Element>.` or spelled with spaces is found through these.
    pub data_lookup: ahash::HashMap<Box<str>, Vec<FieldIdx>>,
    /// Keyword literals of rules without a route, scanned whenever a keyword is asked for.
    pub keywords: Scan,
    /// Per route whose rules search keywords, their literals: scanned only where the route
    /// admits the event (a Security event does not meet an Application rule's keywords).
    pub keywords_routed: Vec<(u32, Scan)>,
    pub atoms: Vec<Atom>,
    /// Eager atom → the rules it triggers, each with the bit of the trigger clause it is in.
    pub atom_rules: Vec<Vec<Trigger>>,
    /// Per rule, a bit per trigger clause: a rule is a candidate once an atom of each fired.
    pub rule_clauses: Vec<u8>,
    /// Eager atom → the `AnyEager` groups it belongs to.
    pub atom_groups: Vec<Vec<u32>>,
    pub groups: usize,
    pub routes: Vec<Cond>,
    /// Eager atom → the routes it triggers (as `atom_rules` for rules).
    pub atom_routes: Vec<Vec<u32>>,
    /// Routes without trigger atoms, evaluated on every event.
    pub always_routes: Vec<u32>,
    pub rules: Vec<CompiledRule>,
    /// Rules without trigger atoms, evaluated on every event their route admits.
    pub always: Vec<RuleIdx>,
    /// The regexes that verify gated wildcard atoms (`Hit::verify`).
    pub verify: Vec<Arc<BoundedRegex>>,
    pub budget: MatchBudget,
}

/// The work one event may cost beyond the automata pass: `base + per_byte × event bytes`
/// units, where a regex search costs its bytes (dense DFA) or bytes × NFA states (fallback
/// engines) and a field reference the bytes it compares. Units are counted, not timed, so the
/// outcome is the same on every worker and in every replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatchBudget {
    pub base: u64,
    pub per_byte: u64,
}

impl Default for MatchBudget {
    fn default() -> Self {
        MatchBudget { base: DEFAULT_BUDGET_BASE, per_byte: DEFAULT_BUDGET_PER_BYTE }
    }
}

pub const DEFAULT_BUDGET_BASE: u64 = 16 << 20;
pub const DEFAULT_BUDGET_PER_BYTE: u64 = 64;

impl MatchBudget {
    fn for_event(self, bytes: usize) -> u64 {
        self.base.saturating_add(self.per_byte.saturating_mul(bytes as u64))
    }
}

/// Three-valued truth: an atom whose test did not fit in the budget is `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tri {
    False,
    True,
    Unknown,
}

impl Tri {
    fn not(self) -> Tri {
        match self {
            Tri::False => Tri::True,
            Tri::True => Tri::False,
            Tri::Unknown => Tri::Unknown,
        }
    }
    fn from_option(v: Option<bool>) -> Tri {
        match v {
            Some(true) => Tri::True,
            Some(false) => Tri::False,
            None => Tri::Unknown,
        }
    }
}

/// Per-worker evaluation state, reused across events (no allocation per event once warm).
#[derive(Default)]
pub struct Scratch {
    generation: u32,
    atom_gen: Vec<u32>,
    atom_val: Vec<Tri>,
    rule_gen: Vec<u32>,
    /// The trigger clauses of each rule that fired for the current event (valid where
    /// `rule_gen` is current).
    rule_fired: Vec<u8>,
    group_gen: Vec<u32>,
    /// Groups with an unknown member (and no true one, which `group_gen` records).
    group_unknown_gen: Vec<u32>,
    route_gen: Vec<u32>,
    route_val: Vec<Tri>,
    /// Routes triggered by the current event's first pass (each once: `route_cand_gen`).
    route_candidates: Vec<u32>,
    route_cand_gen: Vec<u32>,
    /// Per value scanned: which verification regexes already ran on it, and their result.
    value_gen: u32,
    verify_gen: Vec<u32>,
    verify_val: Vec<Tri>,
    /// Work units left for the current event.
    budget: u64,
    /// Whether the current event ran out of budget (some test was not run).
    pub over_budget: bool,
    /// Rules whose condition was undecided for the current event (neither true nor false
    /// because a test did not fit in the budget), in rule order.
    pub undecided: Vec<RuleIdx>,
    lower_ref: Vec<u8>,
    /// The text of the current scan, ASCII-lowercased (what the literal automata read).
    lowered_text: Vec<u8>,
    /// The event's keyword text: its string values joined by [`KEYWORD_SEPARATOR`], and where
    /// each ends.
    keyword_text: String,
    keyword_ends: Vec<usize>,
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
    /// Automaton passes over a value, and the bytes they read.
    pub passes: u64,
    pub scanned_bytes: u64,
    /// Rule conditions evaluated.
    pub evaluated: u64,
    /// Bytes given to regex searches (wildcard verification and regex atoms).
    pub searched_bytes: u64,
    /// Events that ran out of budget.
    pub over_budget: u64,
    /// Rule evaluations left undecided by the budget.
    pub undecided: u64,
}

/// The text of a value as Sigma compares it (`None` for null and unreadable addresses).
pub(crate) fn text<'a>(b: Bytes<'a>, v: Value, buf: &'a mut String) -> Option<&'a str> {
    match v {
        Value::Str(r) => Some(b.str(r)),
        Value::Bool(x) => Some(if x { "true" } else { "false" }),
        v => {
            buf.clear();
            write_value_text(b, v, buf).then_some(buf.as_str())
        }
    }
}

/// Whether `AnyEager` group `g` holds: set while scanning.
fn any_eager(g: u32, s: &Scratch) -> Tri {
    let g = g as usize;
    if s.group_gen[g] == s.generation {
        Tri::True
    } else if s.group_unknown_gen[g] == s.generation {
        Tri::Unknown
    } else {
        Tri::False
    }
}

/// Where value `i` of a scan's joined text lies: values end at `ends` and are separated by
/// one byte ([`KEYWORD_SEPARATOR`]).
fn value_bounds(ends: &[usize], i: usize) -> (usize, usize) {
    (if i == 0 { 0 } else { ends[i - 1] + 1 }, ends[i])
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
            self.atom_val = vec![Tri::False; m.atoms.len()];
        }
        if self.group_gen.len() != m.groups {
            self.group_gen = vec![0; m.groups];
            self.group_unknown_gen = vec![0; m.groups];
        }
        if self.rule_gen.len() != m.rules.len() {
            self.rule_gen = vec![0; m.rules.len()];
            self.rule_fired = vec![0; m.rules.len()];
        }
        if self.route_gen.len() != m.routes.len() {
            self.route_gen = vec![0; m.routes.len()];
            self.route_val = vec![Tri::False; m.routes.len()];
            self.route_cand_gen = vec![0; m.routes.len()];
        }
        if self.verify_gen.len() != m.verify.len() {
            self.verify_gen = vec![0; m.verify.len()];
            self.verify_val = vec![Tri::False; m.verify.len()];
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            // Wrapped: stale stamps could collide, so clear them once every 4 billion events.
            self.atom_gen.iter_mut().for_each(|g| *g = 0);
            self.rule_gen.iter_mut().for_each(|g| *g = 0);
            self.group_gen.iter_mut().for_each(|g| *g = 0);
            self.group_unknown_gen.iter_mut().for_each(|g| *g = 0);
            self.route_gen.iter_mut().for_each(|g| *g = 0);
            self.route_cand_gen.iter_mut().for_each(|g| *g = 0);
            self.keywords_gen = 0;
            self.generation = 1;
        }
        self.present.clear();
        self.candidates.clear();
        self.route_candidates.clear();
        self.undecided.clear();
        self.over_budget = false;
    }

    /// Starts scanning `n` new values, numbered from the generation returned (verification
    /// results are per value).
    fn next_values(&mut self, n: usize) -> u32 {
        let n = n.max(1) as u32;
        match self.value_gen.checked_add(n) {
            Some(last) => {
                let first = self.value_gen + 1;
                self.value_gen = last;
                first
            }
            None => {
                // Wrapped: clear the stamps once every 4 billion values.
                self.verify_gen.iter_mut().for_each(|g| *g = 0);
                self.value_gen = n;
                1
            }
        }
    }

    /// Charges `cost` units if they fit; else marks the event over budget.
    fn charge(&mut self, cost: u64) -> bool {
        if cost <= self.budget {
            self.budget -= cost;
            true
        } else {
            self.over_budget = true;
            false
        }
    }

    /// Runs `re` on `hay` within the event's budget.
    fn search(&mut self, re: &BoundedRegex, hay: &str) -> Tri {
        let v = Tri::from_option(re.is_match(hay, &mut self.budget));
        if v == Tri::Unknown {
            self.over_budget = true;
        } else {
            self.stats.searched_bytes += hay.len() as u64;
        }
        v
    }
}

impl Matcher {
    /// Whether a rule searches keywords (any string value of an event, whatever its field).
    pub fn reads_keywords(&self) -> bool {
        let mut scans = std::iter::once(&self.keywords).chain(self.keywords_routed.iter().map(|(_, scan)| scan));
        scans.any(|scan| scan.literals.is_some() || !scan.ci_eq.is_empty() || !scan.cs_eq.is_empty())
            || self.atoms.iter().any(|a| match a {
                Atom::Lazy(Lazy::Keyword) => true,
                Atom::Lazy(
                    Lazy::Regex { field, .. }
                    | Lazy::Cidr { field, .. }
                    | Lazy::Compare { field, .. }
                    | Lazy::Exists { field }
                    | Lazy::Null { field },
                ) => *field == KEYWORDS,
                Atom::Lazy(Lazy::FieldRef { field, other, .. }) => *field == KEYWORDS || *other == KEYWORDS,
                Atom::Eager => false,
            })
    }

    fn fields_for(&self, b: Bytes<'_>, key: Key) -> &[FieldIdx] {
        match key {
            Key::Core(f) => self.core_lookup.get(f.0 as usize).map(Vec::as_slice).unwrap_or(&[]),
            Key::Ext(r) => {
                let name = b.str(r);
                if let Some(fields) = self.ext_lookup.get(name) {
                    return fields;
                }
                if self.data_lookup.is_empty() {
                    return &[];
                }
                let mut buf = [0u8; super::mapping::DATA_NAME_MAX];
                super::mapping::windows_data_name(name, &mut buf)
                    .and_then(|n| self.data_lookup.get(n))
                    .map_or(&[], Vec::as_slice)
            }
        }
    }

    /// Records that eager atom `atom` holds (`Tri::True`) or may hold (`Tri::Unknown`: its
    /// verification did not fit in the budget) and makes its rules candidates.
    fn fire(&self, s: &mut Scratch, atom: AtomId, trigger: bool, value: Tri) {
        let g = s.generation;
        let a = atom as usize;
        if s.atom_gen[a] == g && (s.atom_val[a] == Tri::True || s.atom_val[a] == value) {
            return;
        }
        s.atom_gen[a] = g;
        s.atom_val[a] = value;
        for &grp in &self.atom_groups[a] {
            if value == Tri::True {
                s.group_gen[grp as usize] = g;
            } else {
                s.group_unknown_gen[grp as usize] = g;
            }
        }
        if !trigger {
            return;
        }
        for &r in &self.atom_routes[a] {
            if s.route_cand_gen[r as usize] != g {
                s.route_cand_gen[r as usize] = g;
                s.route_candidates.push(r);
            }
        }
        for t in &self.atom_rules[a] {
            let r = t.rule as usize;
            if s.rule_gen[r] != g {
                s.rule_gen[r] = g;
                s.rule_fired[r] = 0;
            }
            let fired = s.rule_fired[r] | t.clause;
            if fired != s.rule_fired[r] {
                s.rule_fired[r] = fired;
                if fired == self.rule_clauses[r] {
                    s.candidates.push(t.rule);
                }
            }
        }
    }

    fn scan(&self, scan: &Scan, s: &mut Scratch, value: &str, trigger: bool) {
        self.scan_values(scan, s, value, &[value.len()], trigger);
    }

    /// Scans several values in one pass of each automaton: `text` holds them joined by
    /// [`KEYWORD_SEPARATOR`] (which no literal contains, so no occurrence spans two), and
    /// `ends` where each value ends. Anchors, verification and equality apply per value, so the
    /// outcome is that of scanning each value alone; a pass costs a fixed setup besides its
    /// bytes, which dominates for an event's many short values.
    fn scan_values(&self, scan: &Scan, s: &mut Scratch, text: &str, ends: &[usize], trigger: bool) {
        let bytes = text.as_bytes();
        let bounds = |i: usize| value_bounds(ends, i);
        let first_value = s.next_values(ends.len());
        // Lowercased once: the automaton and the case-insensitive equality table both read it.
        let mut lowered = std::mem::take(&mut s.lowered_text);
        lowered.clear();
        if scan.literals.is_some() || !scan.ci_eq.is_empty() {
            lowered.extend(bytes.iter().map(u8::to_ascii_lowercase));
        }
        let skip = |lits: &Literals| lits.any.as_ref().is_some_and(|any| any.find(&lowered).is_none());
        if let Some(lits) = scan.literals.as_ref().filter(|lits| !skip(lits)) {
            s.stats.passes += 1;
            s.stats.scanned_bytes += bytes.len() as u64;
            // Occurrences come in order of their end, so the value they lie in only advances.
            let mut value = 0;
            for m in lits.ac.find_overlapping_iter(lowered.as_slice()) {
                s.stats.occurrences += 1;
                while ends[value] < m.end() {
                    value += 1;
                }
                let (start, end) = bounds(value);
                for h in &lits.hits[m.pattern().as_usize()] {
                    let a = h.atom as usize;
                    if s.atom_gen[a] == s.generation && s.atom_val[a] == Tri::True {
                        continue; // Already holds: nothing to verify again.
                    }
                    if !anchored(h.anchor, m.start() - start, m.end() - start, end - start) {
                        continue;
                    }
                    if h.exact != NO_EXACT && bytes[m.start()..m.end()] != *lits.exact[h.exact as usize] {
                        continue;
                    }
                    let v = if h.verify == NO_VERIFY {
                        Tri::True
                    } else {
                        self.verify(s, h.verify, &text[start..end], first_value + value as u32)
                    };
                    if v != Tri::False {
                        self.fire(s, h.atom, trigger, v);
                    }
                }
            }
        }
        if !scan.ci_eq.is_empty() || !scan.cs_eq.is_empty() {
            self.equal_values(scan, s, bytes, &lowered, ends, trigger);
        }
        s.lowered_text = lowered;
    }

    /// One keyword scan group over the event's string values (`joined` at `ends`): in one pass
    /// when no literal contains the separator, else value by value.
    fn scan_keywords(&self, scan: &Scan, s: &mut Scratch, joined: &str, ends: &[usize]) {
        if scan.literals.iter().all(|l| l.joinable) {
            if !ends.is_empty() {
                self.scan_values(scan, s, joined, ends, false);
            }
        } else {
            let mut start = 0;
            for &end in ends {
                self.scan(scan, s, &joined[start..end], false);
                start = end + 1;
            }
        }
    }

    /// Whole-value equality of each value of a scan (`bytes` split at `ends`, as in
    /// [`Self::scan_values`]), the case-insensitive table looked up with the lowercased text.
    fn equal_values(&self, scan: &Scan, s: &mut Scratch, bytes: &[u8], lowered: &[u8], ends: &[usize], trigger: bool) {
        for value in 0..ends.len() {
            let (start, end) = value_bounds(ends, value);
            let bytes = &bytes[start..end];
            if !scan.ci_eq.is_empty() {
                if let Some(atoms) = scan.ci_eq.get(&lowered[start..end]) {
                    for &a in atoms {
                        self.fire(s, a, trigger, Tri::True);
                    }
                }
            }
            if let Some(atoms) = scan.cs_eq.get(bytes) {
                for &a in atoms {
                    self.fire(s, a, trigger, Tri::True);
                }
            }
        }
    }

    /// A gated wildcard's regex on value number `value_gen` of the scan: run once per value,
    /// however often its gate occurs in it (an attacker can repeat the gate to make
    /// verification quadratic).
    fn verify(&self, s: &mut Scratch, verify: u32, value: &str, value_gen: u32) -> Tri {
        let i = verify as usize;
        if s.verify_gen[i] != value_gen {
            s.verify_gen[i] = value_gen;
            s.verify_val[i] = s.search(&self.verify[i], value);
        }
        s.verify_val[i]
    }

    /// Evaluates the event in `slots` and appends the indices of the rules it matches, in rule
    /// order.
    ///
    /// Rules whose condition is undecided because a test did not fit in the event's budget are
    /// listed in `s.undecided` (and `s.over_budget` is set) until the next call.
    pub fn match_event(&self, s: &mut Scratch, b: Bytes<'_>, slots: &[Slot], matched: &mut Vec<RuleIdx>) {
        self.match_rules(s, b, slots, matched, false);
    }

    /// [`Self::match_event`] evaluating every rule, not only the candidates its triggers chose.
    /// The outcome must be the same (the triggers only skip rules that cannot hold): this is
    /// how tests and `ward-bench sigma` check them.
    pub fn match_event_every_rule(&self, s: &mut Scratch, b: Bytes<'_>, slots: &[Slot], matched: &mut Vec<RuleIdx>) {
        self.match_rules(s, b, slots, matched, true);
    }

    fn match_rules(&self, s: &mut Scratch, b: Bytes<'_>, slots: &[Slot], matched: &mut Vec<RuleIdx>, every: bool) {
        s.begin(self);
        let event_bytes: usize = slots
            .iter()
            .map(|sl| {
                let k = if let Key::Ext(r) = sl.key { r.len() } else { 0 };
                k + if let Value::Str(r) = sl.value { r.len() } else { 8 }
            })
            .sum();
        s.budget = self.budget.for_event(event_bytes);
        let mut fmt = std::mem::take(&mut s.fmt);
        // First pass: every slot's fields, and the tests scanned on every event (route
        // conditions, rules without a route).
        let mut routed = false;
        for slot in slots {
            let fields = self.fields_for(b, slot.key);
            if fields.is_empty() {
                continue;
            }
            let mut scanned = false;
            for &f in fields {
                s.present.push((f, slot.value));
                let info = &self.fields[f as usize];
                scanned |= info.always.is_some();
                routed |= !info.routed.is_empty();
            }
            if !scanned {
                continue;
            }
            let Some(t) = text(b, slot.value, &mut fmt) else { continue };
            for &f in fields {
                if let Some(scan) = &self.fields[f as usize].always {
                    self.scan(scan, s, t, true);
                }
            }
        }
        // The routes that admit the event (decided once, then reused by every rule), and a
        // second pass with only their rules' tests: an event meets the literals of the rules
        // routed to it, not those of every rule.
        if routed && !self.routes.is_empty() {
            let mut admitted = false;
            let candidates = std::mem::take(&mut s.route_candidates);
            for &r in candidates.iter().chain(&self.always_routes) {
                admitted |= self.route_holds(r, s, b, slots) != Tri::False;
            }
            s.route_candidates = candidates;
            if admitted {
                let present = std::mem::take(&mut s.present);
                for &(f, v) in &present {
                    let routed = &self.fields[f as usize].routed;
                    if routed.is_empty() {
                        continue;
                    }
                    let Some(t) = text(b, v, &mut fmt) else { continue };
                    for (route, scan) in routed {
                        let r = *route as usize;
                        if s.route_gen[r] == s.generation && s.route_val[r] != Tri::False {
                            self.scan(scan, s, t, true);
                        }
                    }
                }
                s.present = present;
            }
        }
        s.fmt = fmt;
        let first = matched.len();
        let mut candidates = std::mem::take(&mut s.candidates);
        if every {
            candidates.clear();
            candidates.extend(0..self.rules.len() as RuleIdx);
        }
        let always: &[RuleIdx] = if every { &[] } else { &self.always };
        s.stats.events += 1;
        s.stats.evaluated += (candidates.len() + always.len()) as u64;
        for &r in candidates.iter().chain(always) {
            match self.rule_holds(r, s, b, slots) {
                Tri::True => matched.push(r),
                Tri::False => {}
                Tri::Unknown => s.undecided.push(r),
            }
        }
        s.candidates = candidates;
        matched[first..].sort_unstable();
        s.undecided.sort_unstable();
        s.stats.undecided += s.undecided.len() as u64;
        s.stats.over_budget += s.over_budget as u64;
    }

    fn rule_holds(&self, r: RuleIdx, s: &mut Scratch, b: Bytes<'_>, slots: &[Slot]) -> Tri {
        let rule = &self.rules[r as usize];
        let mut route_val = Tri::True;
        if let Some(route) = rule.route {
            route_val = self.route_holds(route, s, b, slots);
            if route_val == Tri::False {
                return Tri::False;
            }
        }
        match (route_val, self.eval(&rule.cond, s, b, slots)) {
            (_, Tri::False) => Tri::False,
            (Tri::True, v) => v,
            _ => Tri::Unknown,
        }
    }

    /// Whether route `r` admits the event (evaluated once per event).
    fn route_holds(&self, r: u32, s: &mut Scratch, b: Bytes<'_>, slots: &[Slot]) -> Tri {
        let i = r as usize;
        if s.route_gen[i] != s.generation {
            let v = self.eval(&self.routes[i], s, b, slots);
            s.route_gen[i] = s.generation;
            s.route_val[i] = v;
        }
        s.route_val[i]
    }

    /// Evaluates a condition in three-valued (Kleene) logic.
    pub fn eval(&self, c: &Cond, s: &mut Scratch, b: Bytes<'_>, slots: &[Slot]) -> Tri {
        match c {
            Cond::True => Tri::True,
            Cond::False => Tri::False,
            Cond::Atom(a) => self.atom(*a, s, b, slots),
            Cond::AnyEager(g) => any_eager(*g, s),
            Cond::Not(x) => self.eval(x, s, b, slots).not(),
            Cond::And(xs) => {
                let mut out = Tri::True;
                for x in xs {
                    match self.eval_child(x, s, b, slots) {
                        Tri::False => return Tri::False,
                        Tri::Unknown => out = Tri::Unknown,
                        Tri::True => {}
                    }
                }
                out
            }
            Cond::Or(xs) => {
                let mut out = Tri::False;
                for x in xs {
                    match self.eval_child(x, s, b, slots) {
                        Tri::True => return Tri::True,
                        Tri::Unknown => out = Tri::Unknown,
                        Tri::False => {}
                    }
                }
                out
            }
            Cond::AtLeast(n, xs) => {
                let (mut yes, mut maybe) = (0, 0);
                for x in xs {
                    match self.eval_child(x, s, b, slots) {
                        Tri::True => {
                            yes += 1;
                            if yes >= *n {
                                return Tri::True;
                            }
                        }
                        Tri::Unknown => maybe += 1,
                        Tri::False => {}
                    }
                }
                if yes + maybe >= *n {
                    Tri::Unknown
                } else {
                    Tri::False
                }
            }
        }
    }

    /// A child of `And`, `Or` or `AtLeast`: most are atoms or groups, decided here without
    /// another frame of the recursive `eval` (whose entry and exit cost more than they do).
    #[inline(always)]
    fn eval_child(&self, c: &Cond, s: &mut Scratch, b: Bytes<'_>, slots: &[Slot]) -> Tri {
        match c {
            Cond::Atom(a) => self.atom(*a, s, b, slots),
            Cond::AnyEager(g) => any_eager(*g, s),
            c => self.eval(c, s, b, slots),
        }
    }

    /// An atom's value: eager atoms were set by the scans (unset is false), lazy ones are
    /// decided on first use.
    #[inline(always)]
    fn atom(&self, a: AtomId, s: &mut Scratch, b: Bytes<'_>, slots: &[Slot]) -> Tri {
        let i = a as usize;
        if s.atom_gen[i] == s.generation {
            return s.atom_val[i];
        }
        match &self.atoms[i] {
            Atom::Eager => Tri::False,
            Atom::Lazy(l) => self.decide_lazy(i, l, s, b, slots),
        }
    }

    fn decide_lazy(&self, i: usize, l: &Lazy, s: &mut Scratch, b: Bytes<'_>, slots: &[Slot]) -> Tri {
        let v = self.lazy(l, s, b, slots);
        if s.atom_gen[i] == s.generation {
            // Decided while evaluating (a keyword scan sets every keyword atom at once).
            return s.atom_val[i];
        }
        s.atom_gen[i] = s.generation;
        s.atom_val[i] = v;
        v
    }

    /// Calls `f` with the text of every value of `field` (every string value for keywords):
    /// true as soon as one holds, unknown if none holds but one was unknown.
    fn any_value_tri(
        &self,
        field: FieldIdx,
        s: &mut Scratch,
        b: Bytes<'_>,
        slots: &[Slot],
        mut f: impl FnMut(&mut Scratch, Value, &str) -> Tri,
    ) -> Tri {
        let mut buf = std::mem::take(&mut s.fmt);
        let present = std::mem::take(&mut s.present);
        let mut out = Tri::False;
        let mut consider = |s: &mut Scratch, v: Value, t: &str| match f(s, v, t) {
            Tri::True => true,
            Tri::Unknown => {
                out = Tri::Unknown;
                false
            }
            Tri::False => false,
        };
        let mut found = false;
        if field == KEYWORDS {
            for slot in slots {
                if let Some(r) = keyword_text(b, slot) {
                    if consider(s, slot.value, b.str(r)) {
                        found = true;
                        break;
                    }
                }
            }
        } else {
            for &(fi, v) in &present {
                if fi != field {
                    continue;
                }
                if let Some(t) = text(b, v, &mut buf) {
                    if consider(s, v, t) {
                        found = true;
                        break;
                    }
                }
            }
        }
        s.fmt = buf;
        s.present = present;
        if found {
            Tri::True
        } else {
            out
        }
    }

    /// [`Self::any_value_tri`] for tests that always decide (linear and cheap).
    fn any_value(
        &self,
        field: FieldIdx,
        s: &mut Scratch,
        b: Bytes<'_>,
        slots: &[Slot],
        mut f: impl FnMut(Value, &str) -> bool,
    ) -> Tri {
        self.any_value_tri(field, s, b, slots, |_, v, t| if f(v, t) { Tri::True } else { Tri::False })
    }

    fn lazy(&self, l: &Lazy, s: &mut Scratch, b: Bytes<'_>, slots: &[Slot]) -> Tri {
        match l {
            Lazy::Regex { field, re } => self.any_value_tri(*field, s, b, slots, |s, _, t| s.search(re, t)),
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
                    let (mut joined, mut ends) =
                        (std::mem::take(&mut s.keyword_text), std::mem::take(&mut s.keyword_ends));
                    joined.clear();
                    ends.clear();
                    for slot in slots {
                        if let Some(r) = keyword_text(b, slot) {
                            if !ends.is_empty() {
                                joined.push(KEYWORD_SEPARATOR);
                            }
                            joined.push_str(b.str(r));
                            ends.push(joined.len());
                        }
                    }
                    self.scan_keywords(&self.keywords, s, &joined, &ends);
                    for (route, scan) in &self.keywords_routed {
                        // Decided here if the route phase did not (routes are memoized).
                        if self.route_holds(*route, s, b, slots) != Tri::False {
                            self.scan_keywords(scan, s, &joined, &ends);
                        }
                    }
                    (s.keyword_text, s.keyword_ends) = (joined, ends);
                }
                Tri::False // The scan set the keyword atoms that hold; this one did not.
            }
            Lazy::Exists { field } => bool_tri(s.present.iter().any(|(f, _)| f == field)),
            Lazy::Null { field } => {
                let mut buf = std::mem::take(&mut s.fmt);
                let non_empty =
                    s.present.iter().any(|&(f, v)| f == *field && text(b, v, &mut buf).is_some_and(|t| !t.is_empty()));
                s.fmt = buf;
                bool_tri(!non_empty)
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
                let mut lower_v = std::mem::take(&mut s.lower);
                let mut lower_r = std::mem::take(&mut s.lower_ref);
                let found = self.any_value_tri(*field, s, b, slots, |s, _, t| {
                    let mut start = 0;
                    let mut out = Tri::False;
                    for &end in &ends {
                        let r = &refs[start..end];
                        start = end;
                        // Linear in both lengths; charged, since values × references can grow.
                        if !s.charge((t.len() + r.len()) as u64 + 1) {
                            out = Tri::Unknown;
                            continue;
                        }
                        if fieldref_matches(t, r, *anchor, *cased, &mut lower_v, &mut lower_r) {
                            return Tri::True;
                        }
                    }
                    out
                });
                s.lower = lower_v;
                s.lower_ref = lower_r;
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
            if self.eval(&sel.cond, s, b, slots) != Tri::True {
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

fn bool_tri(b: bool) -> Tri {
    if b {
        Tri::True
    } else {
        Tri::False
    }
}

/// Whether `value` holds `reference` at `anchor`, in time linear in both (a substring search,
/// not a comparison at every offset). The buffers hold lower-cased copies when not `cased`.
fn fieldref_matches(
    value: &str,
    reference: &str,
    anchor: Anchor,
    cased: bool,
    lower_v: &mut Vec<u8>,
    lower_r: &mut Vec<u8>,
) -> bool {
    let (v, r) = (value.as_bytes(), reference.as_bytes());
    let eq = |a: &[u8], b: &[u8]| if cased { a == b } else { a.eq_ignore_ascii_case(b) };
    match anchor {
        Anchor::Whole => eq(v, r),
        Anchor::Start => v.len() >= r.len() && eq(&v[..r.len()], r),
        Anchor::End => v.len() >= r.len() && eq(&v[v.len() - r.len()..], r),
        Anchor::Anywhere if r.is_empty() => true,
        Anchor::Anywhere if v.len() < r.len() => false,
        Anchor::Anywhere if cased => memchr::memmem::find(v, r).is_some(),
        Anchor::Anywhere => {
            lower_v.clear();
            lower_v.extend(v.iter().map(u8::to_ascii_lowercase));
            lower_r.clear();
            lower_r.extend(r.iter().map(u8::to_ascii_lowercase));
            memchr::memmem::find(lower_v, lower_r).is_some()
        }
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
        let m = |v: &str, r: &str, a: Anchor, cased: bool| fieldref_matches(v, r, a, cased, &mut vec![], &mut vec![]);
        assert!(m("C:\\x\\a.exe", "a.exe", Anchor::End, false));
        assert!(m("abc", "ABC", Anchor::Whole, false));
        assert!(!m("abc", "ABC", Anchor::Whole, true));
        assert!(m("xxabcxx", "abc", Anchor::Anywhere, true));
        assert!(m("xxABcxx", "abC", Anchor::Anywhere, false));
        assert!(!m("xxABcxx", "abC", Anchor::Anywhere, true));
    }

    #[test]
    fn time_parts_from_strings_and_timestamps() {
        assert_eq!(time_part(Value::Null, "2024-03-05T22:10:00Z", TimePart::Hour), Some(22));
        assert_eq!(time_part(Value::Null, "2024-03-05 22:10:00.123", TimePart::Minute), Some(10));
        assert_eq!(time_part(Value::Timestamp(0), "", TimePart::Year), Some(1970));
        assert_eq!(time_part(Value::Null, "yesterday", TimePart::Year), None);
    }
}
