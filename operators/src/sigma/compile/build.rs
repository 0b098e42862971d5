//! Matcher building: the lowered rules' atoms interned across rules (equal tests shared),
//! literals into Aho-Corasick automata per field, the rest evaluated on demand, and each rule's
//! expression compiled to a program over atom ids.

use ahash::AHashMap as HashMap;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use ward_engine::fields::FieldId;

use super::{AtomSpec, Expr, FieldRef, LoweredRule};
use crate::sigma::bounded_regex::{BoundedRegex, Flags};
use crate::sigma::mapping::FieldKey;
use crate::sigma::matcher::{
    Atom, AtomId, CompiledRule, Cond, FieldIdx, FieldInfo, Hit, Lazy, Literals, Matcher, RuleIdx, Scan, Selection,
    Trigger, KEYWORDS, KEYWORD_SEPARATOR, NO_EXACT, NO_VERIFY,
};
use crate::sigma::values::Anchor;

/// Interns lowered rules into one matcher.
#[derive(Default)]
pub struct MatcherBuilder {
    fields: Vec<FieldBuild>,
    field_ids: HashMap<Vec<FieldKey>, FieldIdx>,
    keywords: FieldBuild,
    atoms: Vec<Atom>,
    atom_ids: HashMap<super::AtomKey, AtomId>,
    eager: Vec<bool>,
    routes: Vec<Cond>,
    route_ids: HashMap<String, u32>,
    rules: Vec<CompiledRule>,
    groups: Vec<Vec<AtomId>>,
    group_ids: HashMap<Vec<AtomId>, u32>,
    verify: Vec<Arc<BoundedRegex>>,
    /// Per atom: its places in a field's scans (eager atoms only).
    placements: Vec<Option<(FieldIdx, Vec<Placement>)>>,
    /// (atom, scan group) pairs already placed.
    placed: ahash::AHashSet<(AtomId, Option<u32>)>,
    /// The scan group the atoms being interned belong to: `None` while compiling a route's
    /// condition or a rule without a route, else the rule's route.
    current: Option<u32>,
    /// Per atom: how often conditions and selections refer to it (how rare a trigger it is).
    uses: Vec<u32>,
    /// One compiled regex per (pattern, flags), whichever rules and fields use it: its DFA is
    /// determinized once (SigmaHQ's Windows rules repeat a fifth of theirs).
    regexes: HashMap<(String, Flags), Arc<BoundedRegex>>,
}

/// Literal lists of up to this many bytes are tried as a DFA. Measured on SigmaHQ's Windows
/// rules: longer lists almost never fit `DFA_MAX_BYTES` (one did, of all lists of up to 1,000
/// patterns), and few shorter ones miss it.
const DFA_MAX_PATTERN_BYTES: usize = 4096;
/// Largest Aho-Corasick DFA kept (about a core's L2 cache; larger tables measured slower).
const DFA_MAX_BYTES: usize = 1 << 20;

/// Trigger clauses kept per rule (the rarest; a clause left out only admits more candidates).
const MAX_CLAUSES: usize = 8;

/// Value lists at least this long become one `AnyEager` group.
const GROUP_MIN: usize = 4;

/// The literals of one field that share a search: their patterns (deduplicated) and what an
/// occurrence of each means.
#[derive(Default)]
struct LiteralsBuild {
    patterns: Vec<Vec<u8>>,
    ids: HashMap<Vec<u8>, usize>,
    hits: Vec<Vec<Hit>>,
    exact: Vec<Vec<u8>>,
}

impl LiteralsBuild {
    /// Patterns are kept ASCII-lowercased: the automaton is case-sensitive and runs over the
    /// lowercased value, which builds in a fraction of the time of the crate's
    /// case-insensitive mode (its failure links then need a visited set).
    fn add(&mut self, mut pattern: Vec<u8>, hit: Hit) {
        pattern.make_ascii_lowercase();
        let id = match self.ids.get(&pattern) {
            Some(&id) => id,
            None => {
                self.patterns.push(pattern.clone());
                self.hits.push(Vec::new());
                self.ids.insert(pattern, self.patterns.len() - 1);
                self.patterns.len() - 1
            }
        };
        self.hits[id].push(hit);
    }

    /// A cased literal: searched ASCII-lowercased with the others, and checked as written
    /// where it occurs.
    fn add_cased(&mut self, pattern: &[u8], hit: Hit) {
        self.exact.push(pattern.to_vec());
        let exact = (self.exact.len() - 1) as u32;
        self.add(pattern.to_vec(), Hit { exact, ..hit });
    }

    /// `any_check`: also build the SIMD any-literal check (keyword scans, whose joined text is
    /// long and rarely holds a literal; a field's values are short and often do).
    fn build(self, automata: &mut Automata, any_check: bool) -> Result<Option<Literals>, String> {
        if self.patterns.is_empty() {
            return Ok(None);
        }
        let separator = KEYWORD_SEPARATOR as u8;
        let joinable = !self.patterns.iter().any(|p| p.contains(&separator));
        // None where the packed searcher cannot take the list (more than 64 literals).
        let any =
            if any_check { aho_corasick::packed::Config::new().builder().extend(&self.patterns).build() } else { None };
        let ac = match automata.entry(self.patterns) {
            std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let ac = automaton(e.key().as_slice())?;
                e.insert(ac).clone()
            }
        };
        let exact = self.exact.into_iter().map(Vec::into_boxed_slice).collect();
        Ok(Some(Literals { ac, hits: self.hits, joinable, exact, any }))
    }
}

/// Automata built so far, by pattern list: several fields and routes search the same
/// literals (an `AhoCorasick` clone shares its automaton).
type Automata = HashMap<Vec<Vec<u8>>, AhoCorasick>;

/// The automaton of one ASCII-lowercased literal list (matched against lowercased values).
fn automaton(patterns: &[Vec<u8>]) -> Result<AhoCorasick, String> {
    let build = |kind| {
        AhoCorasickBuilder::new()
            .kind(kind)
            .match_kind(MatchKind::Standard)
            .ascii_case_insensitive(false)
            .build(patterns)
            .map_err(|e| e.to_string())
    };
    // A DFA reads one table entry per byte where the crate's default for more than 100
    // patterns, a contiguous NFA, follows failure links. It is kept where its table stays
    // small enough to live in cache (one for every field of every SigmaHQ Windows rule
    // measured no faster in earlier runs and took 1 GB). Long lists are not tried: their DFA
    // would almost always be built only to be dropped.
    if patterns.iter().map(Vec::len).sum::<usize>() <= DFA_MAX_PATTERN_BYTES {
        let dfa = build(Some(AhoCorasickKind::DFA))?;
        if dfa.memory_usage() <= DFA_MAX_BYTES {
            return Ok(dfa);
        }
    }
    build(None)
}

/// One scan group's eager literals on a field.
#[derive(Default)]
struct ScanBuild {
    literals: LiteralsBuild,
    ci_eq: HashMap<Vec<u8>, Vec<AtomId>>,
    cs_eq: HashMap<Vec<u8>, Vec<AtomId>>,
}

/// Where an eager atom's test lives in a field's scans, kept so that every scan group whose
/// rules use the atom gets its own copy.
#[derive(Clone)]
enum Placement {
    Equal { pattern: Vec<u8>, cased: bool, atom: AtomId },
    Literal { pattern: Vec<u8>, cased: bool, hit: Hit },
}

/// A field and its scan groups: `None` holds the literals of route conditions and of rules
/// without a route (scanned on every event), `Some(route)` those of the rules routed there
/// (scanned only on events the route admits).
#[derive(Default)]
struct FieldBuild {
    display: String,
    keys: Vec<FieldKey>,
    by_route: std::collections::BTreeMap<Option<u32>, ScanBuild>,
}

impl FieldBuild {
    /// The scan of every event, and the scans per route (`any_check`: see
    /// [`LiteralsBuild::build`]).
    fn build(self, automata: &mut Automata, any_check: bool) -> Result<(Option<Scan>, Vec<(u32, Scan)>), String> {
        let (mut always, mut routed) = (None, Vec::new());
        for (group, b) in self.by_route {
            match group {
                None => always = Some(b.build(automata, any_check)?),
                Some(route) => routed.push((route, b.build(automata, any_check)?)),
            }
        }
        Ok((always, routed))
    }
}

impl ScanBuild {
    fn place(&mut self, p: &Placement) {
        match p {
            Placement::Equal { pattern, cased, atom } => {
                let table = if *cased { &mut self.cs_eq } else { &mut self.ci_eq };
                table.entry(pattern.clone()).or_default().push(*atom);
            }
            Placement::Literal { pattern, cased, hit } => self.literal(pattern, *cased, *hit),
        }
    }

    /// A literal that must occur at `hit.anchor` (not `Whole`: those are table lookups).
    /// Anchored literals share the overlapping pass with the others and are checked where they
    /// occur: separate anchored automata measured slower (one more pass per value, and common
    /// path prefixes keep an anchored search going most of the way).
    fn literal(&mut self, pattern: &[u8], cased: bool, hit: Hit) {
        if cased {
            self.literals.add_cased(pattern, hit);
        } else {
            self.literals.add(pattern.to_vec(), hit);
        }
    }

    fn build(self, automata: &mut Automata, any_check: bool) -> Result<Scan, String> {
        Ok(Scan {
            literals: self.literals.build(automata, any_check)?,
            ci_eq: self.ci_eq.into_iter().map(|(k, v)| (k.into_boxed_slice(), v)).collect(),
            cs_eq: self.cs_eq.into_iter().map(|(k, v)| (k.into_boxed_slice(), v)).collect(),
        })
    }
}

impl MatcherBuilder {
    /// The regex already compiled with `re`'s pattern and flags, if any, else `re`.
    fn shared(&mut self, re: &Arc<BoundedRegex>) -> Arc<BoundedRegex> {
        self.regexes.entry((re.as_str().to_string(), re.flags())).or_insert_with(|| re.clone()).clone()
    }

    fn field(&mut self, f: &FieldRef) -> FieldIdx {
        match f {
            FieldRef::Keywords => KEYWORDS,
            FieldRef::Keys { display, keys } => {
                if let Some(&i) = self.field_ids.get(keys) {
                    return i;
                }
                let i = self.fields.len() as FieldIdx;
                self.fields.push(FieldBuild { display: display.clone(), keys: keys.clone(), ..Default::default() });
                self.field_ids.insert(keys.clone(), i);
                i
            }
        }
    }

    /// Puts eager atom `a`'s test into the current scan group of its field (keywords have
    /// groups per route as fields do).
    fn place(&mut self, a: AtomId) {
        let Some((field, places)) = &self.placements[a as usize] else { return };
        let group = self.current;
        if !self.placed.insert((a, group)) {
            return;
        }
        let fb = if *field == KEYWORDS { &mut self.keywords } else { &mut self.fields[*field as usize] };
        let scan = fb.by_route.entry(group).or_default();
        places.iter().for_each(|p| scan.place(p));
    }

    fn atom(&mut self, spec: &AtomSpec) -> AtomId {
        let key = spec.dedup_key();
        if let Some(&a) = self.atom_ids.get(&key) {
            self.uses[a as usize] += 1;
            self.place(a);
            return a;
        }
        let a = self.atoms.len() as AtomId;
        let field = self.field(spec.field());
        let mut placement = None;
        let atom = match spec {
            AtomSpec::Literal { pattern, anchor, cased, .. } => {
                placement = Some(vec![if *anchor == Anchor::Whole {
                    Placement::Equal { pattern: pattern.clone(), cased: *cased, atom: a }
                } else {
                    let hit = Hit { atom: a, anchor: *anchor, verify: NO_VERIFY, exact: NO_EXACT };
                    Placement::Literal { pattern: pattern.clone(), cased: *cased, hit }
                }]);
                Atom::Eager
            }
            AtomSpec::Glob { regex, gate: Some((g, cased)), .. } => {
                let regex = self.shared(regex);
                self.verify.push(regex);
                let v = (self.verify.len() - 1) as u32;
                let hit = Hit { atom: a, anchor: Anchor::Anywhere, verify: v, exact: NO_EXACT };
                placement = Some(vec![Placement::Literal { pattern: g.clone(), cased: *cased, hit }]);
                Atom::Eager
            }
            // A regex with a selective literal set is gated like a wildcard: found by the
            // field's automata, run only on values that hold a literal (or not at all when
            // the literals are the whole pattern).
            AtomSpec::Glob { regex, gate: None, .. } | AtomSpec::Regex { regex, .. } => match regex.gate() {
                Some(gate) => {
                    let verify = if gate.exact {
                        NO_VERIFY
                    } else {
                        let regex = self.shared(regex);
                        self.verify.push(regex);
                        (self.verify.len() - 1) as u32
                    };
                    let hit = Hit { atom: a, anchor: Anchor::Anywhere, verify, exact: NO_EXACT };
                    // A verified gate may match more than the pattern: its literals are
                    // lowercased (fewer patterns than their case variants). An exact gate
                    // must keep their case: its literals are cased (compared as written).
                    let mut literals = gate.literals.clone();
                    if !gate.exact {
                        literals.iter_mut().for_each(|l| l.make_ascii_lowercase());
                        literals.sort_unstable();
                        literals.dedup();
                    }
                    let places = literals
                        .into_iter()
                        .map(|pattern| Placement::Literal { pattern, cased: gate.exact, hit })
                        .collect();
                    placement = Some(places);
                    Atom::Eager
                }
                None => Atom::Lazy(Lazy::Regex { field, re: self.shared(regex) }),
            },
            AtomSpec::Cidr { net, .. } => Atom::Lazy(Lazy::Cidr { field, net: *net }),
            AtomSpec::Compare { op, value, part, .. } => {
                Atom::Lazy(Lazy::Compare { field, op: *op, value: *value, part: *part })
            }
            AtomSpec::Exists { .. } => Atom::Lazy(Lazy::Exists { field }),
            AtomSpec::Null { .. } => Atom::Lazy(Lazy::Null { field }),
            AtomSpec::FieldRef { other, anchor, cased, .. } => {
                let other = self.field(other);
                Atom::Lazy(Lazy::FieldRef { field, other, anchor: *anchor, cased: *cased })
            }
        };
        // Keyword literals are scanned on demand (see `Lazy::Keyword`), so they trigger nothing.
        let keyword = field == KEYWORDS && matches!(atom, Atom::Eager);
        let atom = if keyword { Atom::Lazy(Lazy::Keyword) } else { atom };
        self.eager.push(matches!(atom, Atom::Eager));
        self.atoms.push(atom);
        self.atom_ids.insert(key, a);
        self.placements.push(placement.map(|p| (field, p)));
        self.uses.push(1);
        self.place(a);
        a
    }

    fn cond(&mut self, e: &Expr) -> Cond {
        match e {
            Expr::True => Cond::True,
            Expr::False => Cond::False,
            Expr::Atom(a) => Cond::Atom(self.atom(a)),
            Expr::Not(x) => Cond::Not(Box::new(self.cond(x))),
            Expr::And(xs) => Cond::And(xs.iter().map(|x| self.cond(x)).collect()),
            Expr::Or(xs) => {
                let mut flat = Vec::new();
                for x in xs {
                    match self.cond(x) {
                        Cond::Or(inner) => flat.extend(inner),
                        c => flat.push(c),
                    }
                }
                let eager: Vec<AtomId> = flat
                    .iter()
                    .filter_map(|c| match c {
                        Cond::Atom(a) if self.eager[*a as usize] => Some(*a),
                        _ => None,
                    })
                    .collect();
                if eager.len() >= GROUP_MIN {
                    let mut key = eager.clone();
                    key.sort_unstable();
                    key.dedup();
                    let g = match self.group_ids.get(&key) {
                        Some(&g) => g,
                        None => {
                            self.groups.push(key.clone());
                            let g = (self.groups.len() - 1) as u32;
                            self.group_ids.insert(key, g);
                            g
                        }
                    };
                    flat.retain(|c| !matches!(c, Cond::Atom(a) if self.eager[*a as usize]));
                    flat.insert(0, Cond::AnyEager(g));
                }
                if flat.len() == 1 {
                    flat.pop().expect("one element")
                } else {
                    Cond::Or(flat)
                }
            }
            Expr::AtLeast(n, xs) => Cond::AtLeast(*n, xs.iter().map(|x| self.cond(x)).collect()),
        }
    }

    /// Trigger clauses of `c`: sets of eager atoms such that `c` can hold (or be unknown) only
    /// if an atom of every set fires. None: no such set, `c` must be evaluated regardless.
    ///
    /// A conjunction keeps the clauses of all its conjuncts: a rule `a and b and not c` becomes
    /// a candidate only once an atom of `a` and one of `b` fired, not on every event where the
    /// commoner of the two occurs.
    fn clauses(&self, c: &Cond) -> Vec<Vec<AtomId>> {
        match c {
            Cond::False => vec![Vec::new()],
            Cond::True | Cond::Not(_) | Cond::AtLeast(0, _) => Vec::new(),
            Cond::Atom(a) if self.eager[*a as usize] => vec![vec![*a]],
            Cond::Atom(_) => Vec::new(),
            Cond::AnyEager(g) => vec![self.groups[*g as usize].clone()],
            Cond::And(xs) => xs.iter().flat_map(|x| self.clauses(x)).collect(),
            // Any child may make it hold: one clause, the union of one clause per child.
            Cond::Or(xs) | Cond::AtLeast(_, xs) => {
                let mut all = Vec::new();
                for x in xs {
                    match self.rarest(self.clauses(x)) {
                        Some(clause) => all.extend(clause),
                        None => return Vec::new(),
                    }
                }
                all.sort_unstable();
                all.dedup();
                vec![all]
            }
        }
    }

    /// How common a clause is: the references to its atoms across all conditions (a stand-in
    /// for how often they occur), then its size.
    fn commonness(&self, clause: &[AtomId]) -> (u64, usize) {
        (clause.iter().map(|&a| self.uses[a as usize] as u64).sum(), clause.len())
    }

    fn rarest(&self, clauses: Vec<Vec<AtomId>>) -> Option<Vec<AtomId>> {
        clauses.into_iter().min_by_key(|c| self.commonness(c))
    }

    /// A rule's trigger clauses, rarest first and at most [`MAX_CLAUSES`] (empty: evaluated on
    /// every event its route admits).
    fn rule_clauses(&self, c: &Cond) -> Vec<Vec<AtomId>> {
        let mut clauses = self.clauses(c);
        clauses.iter_mut().for_each(|c| {
            c.sort_unstable();
            c.dedup();
        });
        clauses.sort_by_cached_key(|c| (self.commonness(c), c.clone()));
        clauses.dedup();
        clauses.truncate(MAX_CLAUSES);
        clauses
    }

    pub fn add(&mut self, r: &LoweredRule) {
        // A route's atoms are scanned on every event (they decide which routes hold); a rule's
        // in the scan group of its route, scanned only on events the route admits.
        self.current = None;
        let route = r.route.as_ref().map(|e| {
            let key = format!("{:?}|{:?}|{:?}", r.logsource.product, r.logsource.category, r.logsource.service);
            if let Some(&id) = self.route_ids.get(&key) {
                return id;
            }
            let c = self.cond(e);
            self.routes.push(c);
            let id = (self.routes.len() - 1) as u32;
            self.route_ids.insert(key, id);
            id
        });
        self.current = route;
        let cond = self.cond(&r.cond);
        let selections = r
            .selections
            .iter()
            .map(|(name, e, fields)| {
                let cond = self.cond(e);
                let fields = fields
                    .iter()
                    .filter_map(|f| r.fields.get(f).map(|keys| (f.clone(), keys)))
                    .map(|(f, keys)| {
                        let idx = self.field(&FieldRef::Keys { display: f.clone(), keys: keys.clone() });
                        (f, idx)
                    })
                    .collect();
                Selection { name: name.clone(), cond, fields }
            })
            .collect();
        self.rules.push(CompiledRule { meta: r.meta.clone(), cond, route, selections });
    }

    pub fn build(self) -> Result<Matcher, String> {
        // Triggers are chosen once every rule is in, when the atoms' reference counts are known.
        let mut atom_rules = vec![Vec::new(); self.atoms.len()];
        let mut rule_clauses = Vec::with_capacity(self.rules.len());
        let mut always = Vec::new();
        for (r, rule) in self.rules.iter().enumerate() {
            let clauses = self.rule_clauses(&rule.cond);
            if clauses.is_empty() {
                always.push(r as RuleIdx);
            }
            for (i, clause) in clauses.iter().enumerate() {
                for &a in clause {
                    atom_rules[a as usize].push(Trigger { rule: r as RuleIdx, clause: 1 << i });
                }
            }
            rule_clauses.push(((1u16 << clauses.len()) - 1) as u8);
        }
        // Routes are decided once per event and cheaply: one clause (the rarest) is enough.
        let mut atom_routes = vec![Vec::new(); self.atoms.len()];
        let mut always_routes = Vec::new();
        for (i, c) in self.routes.iter().enumerate() {
            match self.rarest(self.clauses(c)) {
                Some(atoms) => atoms.iter().for_each(|&a| atom_routes[a as usize].push(i as u32)),
                None => always_routes.push(i as u32),
            }
        }
        let mut atom_groups = vec![Vec::new(); self.atoms.len()];
        for (g, atoms) in self.groups.iter().enumerate() {
            for &a in atoms {
                atom_groups[a as usize].push(g as u32);
            }
        }
        let mut core_lookup: Vec<Vec<FieldIdx>> = vec![Vec::new(); FieldId::all().count()];
        let mut ext_lookup: ahash::HashMap<Box<str>, Vec<FieldIdx>> = Default::default();
        let mut data_lookup: ahash::HashMap<Box<str>, Vec<FieldIdx>> = Default::default();
        let mut fields = Vec::with_capacity(self.fields.len());
        let mut automata = Automata::default();
        for (i, fb) in self.fields.into_iter().enumerate() {
            for k in &fb.keys {
                match k {
                    FieldKey::Core(id) => core_lookup[id.0 as usize].push(i as FieldIdx),
                    FieldKey::Ext(name) => {
                        ext_lookup.entry(name.as_str().into()).or_default().push(i as FieldIdx);
                        if let Some(data) = name.strip_prefix(crate::sigma::mapping::EVENT_DATA) {
                            data_lookup.entry(data.into()).or_default().push(i as FieldIdx);
                        }
                    }
                }
            }
            let display = fb.display.clone();
            let keys = fb.keys.clone();
            let (always, routed) = fb.build(&mut automata, false)?;
            fields.push(FieldInfo { display, keys, always, routed });
        }
        let (keywords, keywords_routed) = self.keywords.build(&mut automata, true)?;
        Ok(Matcher {
            fields,
            core_lookup,
            ext_lookup,
            data_lookup,
            keywords: keywords.unwrap_or_default(),
            keywords_routed,
            atoms: self.atoms,
            atom_rules,
            rule_clauses,
            atom_groups,
            groups: self.groups.len(),
            routes: self.routes,
            atom_routes,
            always_routes,
            rules: self.rules,
            always,
            verify: self.verify,
            budget: Default::default(),
        })
    }
}
