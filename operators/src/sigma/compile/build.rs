//! Matcher building: the lowered rules' atoms interned across rules (equal tests shared),
//! literals into Aho-Corasick automata per field, the rest evaluated on demand, and each rule's
//! expression compiled to a program over atom ids.

use std::collections::HashMap;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use ward_engine::fields::FieldId;

use super::{AtomSpec, Expr, FieldRef, LoweredRule};
use crate::sigma::bounded_regex::BoundedRegex;
use crate::sigma::mapping::FieldKey;
use crate::sigma::matcher::{
    Atom, AtomId, CompiledRule, Cond, FieldIdx, FieldInfo, Hit, Lazy, Matcher, Scan, Selection, KEYWORDS, NO_VERIFY,
};
use crate::sigma::values::Anchor;

/// Interns lowered rules into one matcher.
#[derive(Default)]
pub struct MatcherBuilder {
    fields: Vec<FieldBuild>,
    field_ids: HashMap<Vec<FieldKey>, FieldIdx>,
    keywords: FieldBuild,
    atoms: Vec<Atom>,
    atom_ids: HashMap<String, AtomId>,
    eager: Vec<bool>,
    routes: Vec<Cond>,
    route_ids: HashMap<String, u32>,
    rules: Vec<CompiledRule>,
    triggers: Vec<Option<Vec<AtomId>>>,
    groups: Vec<Vec<AtomId>>,
    group_ids: HashMap<Vec<AtomId>, u32>,
    verify: Vec<Arc<BoundedRegex>>,
}

/// Value lists at least this long become one `AnyEager` group.
const GROUP_MIN: usize = 4;

#[derive(Default)]
struct FieldBuild {
    display: String,
    keys: Vec<FieldKey>,
    ci: Vec<Vec<u8>>,
    ci_ids: HashMap<Vec<u8>, usize>,
    ci_hits: Vec<Vec<Hit>>,
    cs: Vec<Vec<u8>>,
    cs_ids: HashMap<Vec<u8>, usize>,
    cs_hits: Vec<Vec<Hit>>,
    ci_eq: HashMap<Vec<u8>, Vec<AtomId>>,
    cs_eq: HashMap<Vec<u8>, Vec<AtomId>>,
}

impl FieldBuild {
    fn literal(&mut self, pattern: &[u8], cased: bool, hit: Hit) {
        let (pats, ids, hits) = if cased {
            (&mut self.cs, &mut self.cs_ids, &mut self.cs_hits)
        } else {
            (&mut self.ci, &mut self.ci_ids, &mut self.ci_hits)
        };
        let id = *ids.entry(pattern.to_vec()).or_insert_with(|| {
            pats.push(pattern.to_vec());
            hits.push(Vec::new());
            pats.len() - 1
        });
        hits[id].push(hit);
    }

    fn build(self) -> Result<Scan, String> {
        let ac = |pats: &[Vec<u8>], ci: bool| -> Result<Option<AhoCorasick>, String> {
            if pats.is_empty() {
                return Ok(None);
            }
            // The automaton kind is left to the crate: a full DFA for all SigmaHQ Windows rules
            // measured no faster and took 1 GB.
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::Standard)
                .ascii_case_insensitive(ci)
                .build(pats)
                .map(Some)
                .map_err(|e| e.to_string())
        };
        Ok(Scan {
            ci: ac(&self.ci, true)?,
            ci_hits: self.ci_hits,
            cs: ac(&self.cs, false)?,
            cs_hits: self.cs_hits,
            ci_eq: self.ci_eq.into_iter().map(|(k, v)| (k.into_boxed_slice(), v)).collect(),
            cs_eq: self.cs_eq.into_iter().map(|(k, v)| (k.into_boxed_slice(), v)).collect(),
        })
    }
}

impl MatcherBuilder {
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

    fn field_build(&mut self, f: FieldIdx) -> &mut FieldBuild {
        if f == KEYWORDS {
            &mut self.keywords
        } else {
            &mut self.fields[f as usize]
        }
    }

    fn atom(&mut self, spec: &AtomSpec) -> AtomId {
        let key = spec.dedup_key();
        if let Some(&a) = self.atom_ids.get(&key) {
            return a;
        }
        let a = self.atoms.len() as AtomId;
        let field = self.field(spec.field());
        let atom = match spec {
            AtomSpec::Literal { pattern, anchor, cased, .. } => {
                let fb = self.field_build(field);
                if *anchor == Anchor::Whole {
                    let table = if *cased { &mut fb.cs_eq } else { &mut fb.ci_eq };
                    table.entry(pattern.clone()).or_default().push(a);
                } else {
                    fb.literal(pattern, *cased, Hit { atom: a, anchor: *anchor, verify: NO_VERIFY });
                }
                Atom::Eager
            }
            AtomSpec::Glob { regex, gate: Some((g, cased)), .. } => {
                self.verify.push(regex.clone());
                let v = (self.verify.len() - 1) as u32;
                let fb = self.field_build(field);
                fb.literal(g, *cased, Hit { atom: a, anchor: Anchor::Anywhere, verify: v });
                Atom::Eager
            }
            AtomSpec::Glob { regex, gate: None, .. } | AtomSpec::Regex { regex, .. } => {
                Atom::Lazy(Lazy::Regex { field, re: regex.clone() })
            }
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
        self.atoms.push(atom);
        self.eager.push(spec.is_eager() && !keyword);
        self.atom_ids.insert(key, a);
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

    /// Eager atoms of which at least one must fire for `c` to hold (None: no such set).
    fn triggers(&self, c: &Cond) -> Option<Vec<AtomId>> {
        match c {
            Cond::False => Some(Vec::new()),
            Cond::True | Cond::Not(_) => None,
            Cond::Atom(a) => self.eager[*a as usize].then(|| vec![*a]),
            Cond::AnyEager(g) => Some(self.groups[*g as usize].clone()),
            Cond::And(xs) => xs.iter().filter_map(|x| self.triggers(x)).min_by_key(|t| t.len()),
            Cond::Or(xs) | Cond::AtLeast(_, xs) => {
                let mut all = Vec::new();
                for x in xs {
                    all.extend(self.triggers(x)?);
                }
                all.sort_unstable();
                all.dedup();
                Some(all)
            }
        }
    }

    pub fn add(&mut self, r: &LoweredRule) {
        let cond = self.cond(&r.cond);
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
        self.triggers.push(self.triggers(&cond));
        self.rules.push(CompiledRule { meta: r.meta.clone(), cond, route, selections });
    }

    pub fn build(self) -> Result<Matcher, String> {
        let mut atom_rules = vec![Vec::new(); self.atoms.len()];
        let mut always = Vec::new();
        for (r, t) in self.triggers.iter().enumerate() {
            match t {
                Some(atoms) => {
                    for &a in atoms {
                        atom_rules[a as usize].push(r as u32);
                    }
                }
                None => always.push(r as u32),
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
            fields.push(FieldInfo { display, keys, scan: fb.build()? });
        }
        Ok(Matcher {
            fields,
            core_lookup,
            ext_lookup,
            data_lookup,
            keywords: self.keywords.build()?,
            atoms: self.atoms,
            atom_rules,
            atom_groups,
            groups: self.groups.len(),
            routes: self.routes,
            rules: self.rules,
            always,
            verify: self.verify,
            budget: Default::default(),
        })
    }
}
