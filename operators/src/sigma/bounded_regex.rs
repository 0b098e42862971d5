//! Regexes whose cost per event is bounded and deterministic (docs/architecture.md §10).
//!
//! A rule's regex (and every wildcard pattern, which becomes one) is compiled two ways:
//! - a **dense DFA**, fully determinized within [`DFA_SIZE_LIMIT`]: one table step per byte
//!   whatever the input, no cache to thrash. Most Sigma patterns fit. It is determinized on the
//!   pattern's first search, not at load: determinizing every SigmaHQ pattern took 40% of the
//!   rule set's compile time, and many patterns never run (an exact literal gate decides them,
//!   or their gate never occurs). Whether the DFA exists depends on the pattern alone, so the
//!   charges below are the same whenever it is built.
//! - the regex crate's engines (lazy DFA falling back to the PikeVM) for patterns whose DFA is
//!   larger, and for inputs a DFA must quit on (non-ASCII bytes around a Unicode `\b`). Their
//!   worst case is the PikeVM, O(states × bytes), so their NFA is limited to
//!   [`NFA_SIZE_LIMIT`] and a regex over it is rejected at load with the reason.
//!
//! Every search is charged to the event's [`budget`](crate::sigma::matcher) before it runs:
//! bytes for the DFA, bytes × NFA states for the fallback. Charges depend on the pattern and the
//! value only (never on cache state or time), so whether a search runs is the same on every
//! worker and in every replay.

use std::sync::OnceLock;

use regex::{Regex, RegexBuilder};
use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::util::prefilter::Prefilter;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind};

/// Largest compiled NFA of one pattern. The PikeVM's cost per byte grows with the NFA; this
/// keeps its worst case linear with a bounded constant. (SigmaHQ's largest, `\w{1,64}` with
/// Unicode classes, needs about a quarter of it.)
pub const NFA_SIZE_LIMIT: usize = 4 << 20;
/// Largest dense DFA built for one pattern (larger ones use the fallback engines).
pub const DFA_SIZE_LIMIT: usize = 4 << 20;
/// Cache of the regex crate's lazy DFA, per pattern and thread.
const LAZY_DFA_CACHE: usize = 256 * 1024;

/// The flags a pattern is compiled with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    pub case_insensitive: bool,
    pub multi_line: bool,
    pub dot_matches_new_line: bool,
}

pub struct BoundedRegex {
    source: String,
    flags: Flags,
    /// Built on first use from `nfa` and `dfa_config` (None: too large for the limit).
    dfa: OnceLock<Option<dense::DFA<Vec<u32>>>>,
    nfa: thompson::NFA,
    dfa_config: dense::Config,
    /// The pattern can only match at the start (`\A…`): DFA searches are anchored, so a
    /// value that does not start right is rejected at its first bytes.
    anchored: bool,
    /// The regex crate's engines, built on first use: most patterns never need them (their
    /// DFA decides), and building them took a tenth of a rule set's load time. None: the
    /// build failed, which the checks at load make all but impossible (the same syntax and size
    /// limit, on an NFA without capture states); its searches are then undecided, the same on
    /// every worker.
    fallback: OnceLock<Option<Regex>>,
    /// NFA states: the fallback's worst-case cost per byte.
    states: u64,
    gate: Option<Gate>,
}

/// Literals of which one occurs in every value the pattern matches (its prefixes or suffixes,
/// as regex-syntax extracts them for the regex crate's own prefilters), so the matcher can
/// find them with its shared automata and run the pattern only where one occurs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gate {
    pub literals: Vec<Vec<u8>>,
    /// The pattern matches exactly where one of the literals occurs: no need to run it.
    pub exact: bool,
}

/// More literals than this make a poor gate (case-insensitive words expand to many).
const GATE_MAX_LITERALS: usize = 64;

/// Parts of a pattern's top-level sequence searched for inner literals (the first ones: a
/// longer sequence costs its square to extract).
const INNER_MAX_PARTS: usize = 16;

fn gate_of(hir: &regex_syntax::hir::Hir) -> Option<Gate> {
    use regex_syntax::hir::literal::ExtractKind;
    use regex_syntax::hir::{Hir, HirKind};
    // Assertions (`\b`, `^`) extract as empty exact literals: a match is then more than its
    // literals.
    let no_looks = hir.properties().look_set().is_empty();
    let ends = best_gate([(ExtractKind::Prefix, hir), (ExtractKind::Suffix, hir)], no_looks);
    if ends.as_ref().is_some_and(|g| shortest(g) >= STRONG_GATE_LEN) {
        return ends;
    }
    // Where the pattern is a sequence, every match holds a match of each of its tails, so the
    // prefix literals of a tail gate it as well (`\w+`x`\w` has no prefix or suffix literal
    // but always holds a backtick). Such a gate is never exact. Tried only where the ends give
    // none or a weak one: each tail costs an extraction at load.
    let mut top = hir;
    while let HirKind::Capture(c) = top.kind() {
        top = &c.sub;
    }
    let HirKind::Concat(parts) = top.kind() else { return ends };
    let tails: Vec<Hir> = (1..parts.len().min(INNER_MAX_PARTS)).map(|i| Hir::concat(parts[i..].to_vec())).collect();
    match (ends, best_gate(tails.iter().map(|t| (ExtractKind::Prefix, t)), false)) {
        (Some(e), Some(i)) if shortest(&i) > shortest(&e) => Some(i),
        (Some(e), _) => Some(e),
        (None, inner) => inner,
    }
}

/// A gate whose literals are all at least this long is kept without looking for inner ones.
const STRONG_GATE_LEN: usize = 3;

/// The length of a gate's shortest literal (how selective it is).
fn shortest(g: &Gate) -> usize {
    g.literals.iter().map(Vec::len).min().unwrap_or(0)
}

/// Of the literal sets extracted from `candidates`, the one whose shortest literal is longest
/// (the first such); exact where `exact_allowed` and the extraction is.
fn best_gate<'h>(
    candidates: impl IntoIterator<Item = (regex_syntax::hir::literal::ExtractKind, &'h regex_syntax::hir::Hir)>,
    exact_allowed: bool,
) -> Option<Gate> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let mut best: Option<Gate> = None;
    for (kind, hir) in candidates {
        let mut seq = Extractor::new().kind(kind.clone()).extract(hir);
        // Trims literals the way the regex crate does for its prefilters, and gives up on
        // sets too short to be selective (the sequence becomes infinite).
        match kind {
            ExtractKind::Prefix => seq.optimize_for_prefix_by_preference(),
            _ => seq.optimize_for_suffix_by_preference(),
        }
        let Some(lits) = seq.literals() else { continue };
        if lits.is_empty() || lits.len() > GATE_MAX_LITERALS || lits.iter().any(|l| l.as_bytes().is_empty()) {
            continue;
        }
        let gate = Gate {
            literals: lits.iter().map(|l| l.as_bytes().to_vec()).collect(),
            exact: exact_allowed && seq.is_exact(),
        };
        if best.as_ref().is_none_or(|b| shortest(&gate) > shortest(b)) {
            best = Some(gate);
        }
    }
    best
}

impl std::fmt::Debug for BoundedRegex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedRegex").field("source", &self.source).field("engine", &self.engine()).finish()
    }
}

impl BoundedRegex {
    pub fn new(pattern: &str, flags: Flags) -> Result<BoundedRegex, String> {
        let syntax = syntax::Config::new()
            .case_insensitive(flags.case_insensitive)
            .multi_line(flags.multi_line)
            .dot_matches_new_line(flags.dot_matches_new_line);
        let hir = match syntax::parse_with(pattern, &syntax) {
            Ok(hir) => hir,
            // The regex crate words syntax errors best (and names look-around as such).
            Err(e) => {
                return Err(match fallback(pattern, flags) {
                    Err(e) => syntax_error(&e),
                    Ok(_) => format!("regex: {e}"),
                })
            }
        };
        let anchored = hir.properties().look_set_prefix().contains(regex_syntax::hir::Look::Start);
        let nfa = thompson::Compiler::new()
            .configure(thompson::Config::new().nfa_size_limit(Some(NFA_SIZE_LIMIT)).which_captures(WhichCaptures::None))
            .build_from_hir(&hir)
            .map_err(|e| match e.size_limit() {
                Some(_) => too_big(),
                None => format!("regex: {e}"),
            })?;
        let states = nfa.states().len().max(1) as u64;
        // A literal prefix (e.g. the text before a wildcard) lets the search skip to its
        // occurrences with memchr-speed scanning, as the regex crate does.
        let prefilter = if anchored { None } else { Prefilter::from_hir_prefix(MatchKind::LeftmostFirst, &hir) };
        let dfa_config = dense::Config::new()
            .prefilter(prefilter)
            .start_kind(if anchored { StartKind::Anchored } else { StartKind::Unanchored })
            .unicode_word_boundary(true)
            .dfa_size_limit(Some(DFA_SIZE_LIMIT))
            .determinize_size_limit(Some(2 * DFA_SIZE_LIMIT));
        let gate = gate_of(&hir);
        Ok(BoundedRegex {
            source: pattern.to_string(),
            flags,
            dfa: OnceLock::new(),
            nfa,
            dfa_config,
            anchored,
            fallback: OnceLock::new(),
            states,
            gate,
        })
    }

    fn dfa(&self) -> Option<&dense::DFA<Vec<u32>>> {
        self.dfa
            .get_or_init(|| {
                let config = self.dfa_config.clone();
                dense::Builder::new().configure(config.clone()).build_from_nfa(&self.nfa).ok().or_else(|| {
                    // Large Unicode classes (`\w{1,64}`) blow the DFA up; one that quits on the
                    // first non-ASCII byte stays small and decides ASCII values, the fallback
                    // the rest.
                    let ascii = (0x80..=0xFF).fold(config, |c, b| c.quit(b, true));
                    dense::Builder::new().configure(ascii).build_from_nfa(&self.nfa).ok()
                })
            })
            .as_ref()
    }

    /// Literals one of which every match contains (None: no selective set).
    pub fn gate(&self) -> Option<&Gate> {
        self.gate.as_ref()
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn flags(&self) -> Flags {
        self.flags
    }

    /// How the pattern is matched, for `ward rules explain`.
    pub fn engine(&self) -> String {
        match self.dfa() {
            Some(d) => format!("dense DFA, {} bytes", d.memory_usage()),
            None => format!("NFA of {} states, {}× cost per byte", self.states, self.states),
        }
    }

    /// The charge for the fallback engine on `len` bytes.
    fn fallback_cost(&self, len: usize) -> u64 {
        (len as u64 + 1).saturating_mul(self.states)
    }

    /// Whether the pattern matches somewhere in `hay`, if the search fits in `budget` (which is
    /// charged). `None`: not searched, because it would cost more than is left.
    pub fn is_match(&self, hay: &str, budget: &mut u64) -> Option<bool> {
        if let Some(dfa) = self.dfa() {
            let cost = hay.len() as u64 + 1;
            if cost > *budget {
                return None;
            }
            *budget -= cost;
            let anchored = if self.anchored { Anchored::Yes } else { Anchored::No };
            match dfa.try_search_fwd(&Input::new(hay).earliest(true).anchored(anchored)) {
                Ok(m) => return Some(m.is_some()),
                // Quit on a non-ASCII byte (Unicode word boundary): the fallback decides.
                Err(_) => {}
            }
        }
        let cost = self.fallback_cost(hay.len());
        if cost > *budget {
            return None;
        }
        *budget -= cost;
        self.fallback().map(|re| re.is_match(hay))
    }

    fn fallback(&self) -> Option<&Regex> {
        self.fallback.get_or_init(|| fallback(&self.source, self.flags).ok()).as_ref()
    }

    /// Unbounded, for tools that evaluate one rule at a time (tests, `rules explain`).
    pub fn is_match_unbounded(&self, hay: &str) -> bool {
        self.fallback().is_some_and(|re| re.is_match(hay))
    }
}

/// The regex crate's engines for `pattern`, within the limits that keep them linear.
fn fallback(pattern: &str, flags: Flags) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .case_insensitive(flags.case_insensitive)
        .multi_line(flags.multi_line)
        .dot_matches_new_line(flags.dot_matches_new_line)
        .size_limit(NFA_SIZE_LIMIT)
        .dfa_size_limit(LAZY_DFA_CACHE)
        .build()
}

fn too_big() -> String {
    format!(
        "regex compiles to more than {} KiB (the limit that keeps matching linear in the event's size)",
        NFA_SIZE_LIMIT / 1024
    )
}

/// A syntax error in the regex crate's words, or the constructs it refuses (look-around,
/// backreferences) named as such.
fn syntax_error(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(&text).trim().to_string();
    if text.contains("look-around") || text.contains("backreferences") {
        format!("regex uses look-around or backreferences, which linear-time matching cannot support: {last}")
    } else {
        format!("regex syntax error: {last}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn re(p: &str) -> BoundedRegex {
        BoundedRegex::new(p, Flags::default()).unwrap()
    }

    #[test]
    fn small_patterns_get_a_dfa_and_match_like_the_regex_crate() {
        let r = re(r"(?si)\A.*failed password for .* from .* port .*\z");
        assert!(r.dfa().is_some(), "{}", r.engine());
        let mut budget = u64::MAX;
        assert_eq!(r.is_match("Failed password for root from 1.2.3.4 port 22", &mut budget), Some(true));
        assert_eq!(r.is_match("Accepted password for root", &mut budget), Some(false));
    }

    #[test]
    fn unicode_word_boundaries_fall_back_on_non_ascii_input() {
        let r = re(r"\bcmd\b");
        let mut budget = u64::MAX;
        assert_eq!(r.is_match("run cmd now", &mut budget), Some(true));
        assert_eq!(r.is_match("é cmd é", &mut budget), Some(true));
        assert_eq!(r.is_match("écmdé", &mut budget), Some(false));
    }

    #[test]
    fn gates_are_literals_every_match_contains() {
        let g = re("(?si)\u{0399}").gate().cloned().expect("a gate");
        assert!(g.exact, "a lone literal is its own gate");
        assert!(g.literals.contains(&"\u{03B9}".as_bytes().to_vec()), "case variants: {g:?}");
        let g = re(r"route\s+print").gate().cloned().expect("a gate");
        assert!(!g.exact && g.literals == vec![b"route".to_vec()], "{g:?}");
        let g = re(r"\bcmd\b").gate().cloned().expect("a gate");
        assert!(!g.exact, "an assertion is more than its literals");
        assert!(re(r"\w+").gate().is_none());
        // A literal inside the sequence gates it when neither end has one.
        let g = re(r"\w+`(?:\w+|-|.)`[\w+|\s]").gate().cloned().expect("a gate");
        assert!(!g.exact && g.literals.iter().all(|l| l.starts_with(b"`")), "{g:?}");
        // A longer inner literal is preferred to a weak (two-byte) prefix.
        let g = re(r"ab\w+powershell\w+").gate().cloned().expect("a gate");
        assert!(!g.exact && g.literals == vec![b"powershell".to_vec()], "{g:?}");
        let g = re(r"\d+\s+password=\S+").gate().cloned().expect("a gate");
        assert!(!g.exact && g.literals.iter().any(|l| l.windows(8).any(|w| w == b"password")), "{g:?}");
        assert!(re(r"(?s).*").gate().is_none());
    }

    #[test]
    fn huge_patterns_are_rejected_with_the_reason() {
        let e = BoundedRegex::new(r"\w{5000}", Flags::default()).unwrap_err();
        assert!(e.contains("more than 4096 KiB"), "{e}");
    }

    #[test]
    fn searches_over_budget_do_not_run() {
        let r = re("(a|b|c|d){300}x");
        let hay = "a".repeat(10_000);
        let mut budget = 100;
        assert_eq!(r.is_match(&hay, &mut budget), None);
        assert_eq!(budget, 100, "nothing charged for a search that did not run");
        let mut budget = u64::MAX;
        assert_eq!(r.is_match(&hay, &mut budget), Some(false));
        assert!(budget < u64::MAX);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        assert!(BoundedRegex::new("[unclosed", Flags::default()).unwrap_err().starts_with("regex syntax error"));
        assert!(BoundedRegex::new("(?=x)", Flags::default()).unwrap_err().contains("look-around"));
    }
}
