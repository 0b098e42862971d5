//! Showing untrusted text (ids, rule values, event data) in errors and logs.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` could disguise or reorder what a terminal shows: C0/C1 controls and the Unicode
/// bidirectional and invisible formatting characters (e.g. U+202E RIGHT-TO-LEFT OVERRIDE).
fn is_deceptive(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// `s` with every control or bidi/invisible formatting character written as `\u{XXXX}` (and
/// backslashes as `\\` when something was escaped, so the result reads back unambiguously).
pub fn escape_text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_deceptive) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_deceptive(c) {
            let _ = write!(out, "\\u{{{:04X}}}", c as u32);
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_bidi_overrides_only() {
        assert!(matches!(escape_text("plain-id_1 é"), Cow::Borrowed(_)));
        assert_eq!(escape_text("evil\u{202E}txt.exe"), "evil\\u{202E}txt.exe");
        assert_eq!(escape_text("a\nb\x1b[31m"), "a\\u{000A}b\\u{001B}[31m");
        assert_eq!(escape_text("C:\\x\u{7}"), "C:\\\\x\\u{0007}");
    }
}
