//! Sigma value modifiers that rewrite the values a rule looks for, before matching:
//! `windash`, `base64`, `base64offset`, `utf16le`/`wide`, `utf16be`, `utf16` and `expand`, and
//! the translation of wildcard strings into linear-time regexes.

use base64::Engine as _;
use rsigma_parser::{SigmaString, SpecialChar, StringPart};

/// Dash characters `windash` swaps for one another: hyphen-minus, slash, en dash, em dash,
/// horizontal bar (Sigma modifiers appendix).
const DASHES: [char; 5] = ['-', '/', '\u{2013}', '\u{2014}', '\u{2015}'];

/// More variants than this from one value is almost certainly a rule mistake.
pub const MAX_VARIANTS: usize = 4096;

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `windash`: every `-` or `/` that starts a word (pySigma's `\B[-/]\b`: preceded by a
/// non-word character or the start, followed by a word character) is replaced by each dash
/// character, in all combinations. Wildcards count as non-word neighbours.
pub fn windash(s: &SigmaString) -> Result<Vec<SigmaString>, String> {
    // Flatten to (char-or-wildcard) so neighbours across parts are seen.
    enum Item {
        C(char),
        W(SpecialChar),
    }
    let mut items = Vec::new();
    for p in &s.parts {
        match p {
            StringPart::Plain(t) => items.extend(t.chars().map(Item::C)),
            StringPart::Special(w) => items.push(Item::W(w.clone())),
        }
    }
    let mut positions = Vec::new();
    for (i, it) in items.iter().enumerate() {
        if let Item::C(c @ ('-' | '/')) = it {
            let _ = c;
            let before_is_word = i > 0 && matches!(items[i - 1], Item::C(p) if is_word(p));
            let after_is_word = matches!(items.get(i + 1), Some(Item::C(n)) if is_word(*n));
            if !before_is_word && after_is_word {
                positions.push(i);
            }
        }
    }
    let combos = u32::try_from(positions.len()).ok().and_then(|n| DASHES.len().checked_pow(n));
    let combos = match combos {
        Some(c) if c <= MAX_VARIANTS => c,
        Some(c) => {
            return Err(format!("windash on `{}` yields {c} variants (limit {MAX_VARIANTS})", s.original));
        }
        None => {
            return Err(format!(
                "windash on `{}` yields {}^{} variants (limit {MAX_VARIANTS})",
                s.original,
                DASHES.len(),
                positions.len()
            ))
        }
    };
    let mut out = Vec::with_capacity(combos);
    for mut k in 0..combos {
        let mut chosen = vec!['-'; items.len()];
        for &p in &positions {
            chosen[p] = DASHES[k % DASHES.len()];
            k /= DASHES.len();
        }
        let mut parts: Vec<StringPart> = Vec::new();
        let mut acc = String::new();
        for (i, it) in items.iter().enumerate() {
            match it {
                Item::C(c) => acc.push(if positions.contains(&i) { chosen[i] } else { *c }),
                Item::W(w) => {
                    if !acc.is_empty() {
                        parts.push(StringPart::Plain(std::mem::take(&mut acc)));
                    }
                    parts.push(StringPart::Special(w.clone()));
                }
            }
        }
        if !acc.is_empty() {
            parts.push(StringPart::Plain(acc));
        }
        out.push(SigmaString { parts, original: s.original.clone() });
    }
    Ok(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Utf16 {
    Le,
    Be,
    /// Little endian with a byte order mark, as pySigma's `utf16`.
    LeBom,
}

pub fn utf16(s: &str, how: Utf16) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 2 + 2);
    if how == Utf16::LeBom {
        out.extend_from_slice(&[0xFF, 0xFE]);
    }
    for u in s.encode_utf16() {
        match how {
            Utf16::Be => out.extend_from_slice(&u.to_be_bytes()),
            Utf16::Le | Utf16::LeBom => out.extend_from_slice(&u.to_le_bytes()),
        }
    }
    out
}

pub fn base64(bytes: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.encode(bytes).into_bytes()
}

/// `base64offset`: the three encodings of `bytes` at offsets 0, 1 and 2 within a larger
/// base64 text, cut to the characters that do not depend on the neighbouring bytes
/// (pySigma's start offsets 0, 2, 3 and end offsets by `(len + i) % 3`).
pub fn base64_offsets(bytes: &[u8]) -> Vec<Vec<u8>> {
    const START: [usize; 3] = [0, 2, 3];
    const END_CUT: [usize; 3] = [0, 3, 2];
    (0..3)
        .map(|i| {
            let mut shifted = vec![b' '; i];
            shifted.extend_from_slice(bytes);
            let enc = base64(&shifted);
            let end = enc.len() - END_CUT[(bytes.len() + i) % 3];
            enc[START[i].min(end)..end].to_vec()
        })
        .collect()
}

/// `expand`: replaces every `%name%` placeholder with each of its values (all combinations).
pub fn expand(original: &str, lookup: &dyn Fn(&str) -> Option<Vec<String>>) -> Result<Vec<String>, String> {
    let mut results = vec![String::new()];
    let mut rest = original;
    while let Some(start) = rest.find('%') {
        let Some(len) = rest[start + 1..].find('%') else { break };
        let name = &rest[start + 1..start + 1 + len];
        let prefix = &rest[..start];
        for r in &mut results {
            r.push_str(prefix);
        }
        if name.is_empty() || name.contains(char::is_whitespace) {
            // Not a placeholder: keep the text as written.
            for r in &mut results {
                r.push('%');
            }
            rest = &rest[start + 1..];
            continue;
        }
        let values = lookup(name).ok_or_else(|| format!("placeholder `%{name}%` has no values configured"))?;
        if values.is_empty() {
            return Err(format!("placeholder `%{name}%` has an empty value list"));
        }
        let mut next = Vec::with_capacity(results.len() * values.len());
        for r in &results {
            for v in &values {
                next.push(format!("{r}{v}"));
            }
        }
        if next.len() > MAX_VARIANTS {
            return Err(format!("expanding `{original}` yields more than {MAX_VARIANTS} values"));
        }
        results = next;
        rest = &rest[start + len + 2..];
    }
    for r in &mut results {
        r.push_str(rest);
    }
    Ok(results)
}

/// Where a literal must occur in a field's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Anchor {
    Anywhere,
    Start,
    End,
    Whole,
}

/// A regex (for the `regex` crate) equivalent to a wildcard string under `anchor`.
pub fn glob_regex(s: &SigmaString, anchor: Anchor, case_insensitive: bool) -> String {
    let mut re = String::from(if case_insensitive { "(?si)" } else { "(?s)" });
    if matches!(anchor, Anchor::Start | Anchor::Whole) {
        re.push_str(r"\A");
    }
    for p in &s.parts {
        match p {
            StringPart::Plain(t) => re.push_str(&regex::escape(t)),
            StringPart::Special(SpecialChar::WildcardMulti) => re.push_str(".*"),
            StringPart::Special(SpecialChar::WildcardSingle) => re.push('.'),
        }
    }
    if matches!(anchor, Anchor::End | Anchor::Whole) {
        re.push_str(r"\z");
    }
    re
}

/// Whether ASCII-only case folding gives the same result as full Unicode case folding for `s`
/// (true when no character outside ASCII has a case).
pub fn ascii_case_folding_suffices(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii() || (c.to_lowercase().eq([c]) && c.to_uppercase().eq([c])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(ss: &[SigmaString]) -> Vec<String> {
        ss.iter()
            .map(|s| {
                s.parts
                    .iter()
                    .map(|p| match p {
                        StringPart::Plain(t) => t.clone(),
                        StringPart::Special(SpecialChar::WildcardMulti) => "*".into(),
                        StringPart::Special(SpecialChar::WildcardSingle) => "?".into(),
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn windash_swaps_leading_dashes_only() {
        let v = plain(&windash(&SigmaString::new(" -enc ")).unwrap());
        assert_eq!(v, vec![" -enc ", " /enc ", " \u{2013}enc ", " \u{2014}enc ", " \u{2015}enc "]);
        // A dash inside a word (`a-b`) is not a flag.
        assert_eq!(plain(&windash(&SigmaString::new("a-b")).unwrap()), vec!["a-b"]);
        // Two flags: 25 combinations.
        assert_eq!(windash(&SigmaString::new("-a -b")).unwrap().len(), 25);
        // After a wildcard the dash still counts as a flag start.
        assert_eq!(windash(&SigmaString::new("*-exec")).unwrap().len(), 5);
        // Far past the limit: the count is reported, not a saturated 18446744073709551615.
        let e = windash(&SigmaString::new(&" -a".repeat(40))).unwrap_err();
        assert!(e.contains("5^40") && !e.contains("18446744073709551615"), "{e}");
    }

    #[test]
    fn base64_offsets_match_pysigma() {
        // pySigma: base64offset("/bin/sh") = ["L2Jpbi9za", "9iaW4vc2", "vYmluL3No"]
        let v: Vec<String> = base64_offsets(b"/bin/sh").into_iter().map(|b| String::from_utf8(b).unwrap()).collect();
        assert_eq!(v, vec!["L2Jpbi9za", "9iaW4vc2", "vYmluL3No"]);
        // Each variant occurs in the encoding of the value at that offset.
        for (i, pre) in ["", "x", "xy"].iter().enumerate() {
            let whole = String::from_utf8(base64(format!("{pre}/bin/sh;").as_bytes())).unwrap();
            assert!(whole.contains(&v[i]), "{whole} should contain {}", v[i]);
        }
    }

    #[test]
    fn utf16_variants() {
        assert_eq!(utf16("cmd", Utf16::Le), b"c\0m\0d\0");
        assert_eq!(utf16("cmd", Utf16::Be), b"\0c\0m\0d");
        assert_eq!(utf16("cmd", Utf16::LeBom), b"\xFF\xFEc\0m\0d\0");
        // pySigma: utf16le + base64 of "ping" = "cABpAG4AZwA="
        assert_eq!(base64(&utf16("ping", Utf16::Le)), b"cABpAG4AZwA=");
    }

    #[test]
    fn expand_substitutes_every_combination() {
        let lookup = |n: &str| match n {
            "admins" => Some(vec!["root".to_string(), "admin".to_string()]),
            _ => None,
        };
        assert_eq!(expand("user=%admins%", &lookup).unwrap(), vec!["user=root", "user=admin"]);
        assert!(expand("%nope%", &lookup).unwrap_err().contains("%nope%"));
        assert_eq!(expand("50% off", &lookup).unwrap(), vec!["50% off"]);
    }

    #[test]
    fn globs_become_anchored_regexes() {
        let re = regex::Regex::new(&glob_regex(&SigmaString::new(r"C:\Win*\\?md.exe"), Anchor::Whole, true)).unwrap();
        assert!(re.is_match(r"c:\windows\cmd.exe"));
        assert!(!re.is_match(r"c:\windows\cmd.exe.bak"));
        let escaped = regex::Regex::new(&glob_regex(&SigmaString::new(r"a\*b"), Anchor::Whole, false)).unwrap();
        assert!(escaped.is_match("a*b"));
        assert!(!escaped.is_match("axb"));
    }

    #[test]
    fn ascii_folding_check() {
        assert!(ascii_case_folding_suffices("cmd.exe /c"));
        assert!(ascii_case_folding_suffices("→ 中文"));
        assert!(!ascii_case_folding_suffices("Über"));
    }
}
