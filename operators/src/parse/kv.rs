//! key=value text (FortiGate, many firewalls): pairs separated by white space, values
//! optionally in double quotes with `\"` and `\\` escapes.

use super::writer::FieldWriter;

/// Parses `text` as key=value pairs. Returns the number of pairs.
pub fn parse_kv(text: &str, w: &mut FieldWriter<'_>) -> Result<usize, String> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut pairs = 0;
    let mut unescaped = String::new();
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let key_start = i;
        while i < b.len() && is_key_byte(b[i]) {
            i += 1;
        }
        if i == key_start || i >= b.len() || b[i] != b'=' {
            return Err(format!("expected key=value at byte {key_start}"));
        }
        let key = &text[key_start..i];
        i += 1; // '='
        if i < b.len() && b[i] == b'"' {
            i += 1;
            let start = i;
            let mut has_escape = false;
            // Jump from quote or backslash to the next (memchr2 scans many bytes at a time).
            loop {
                let Some(at) = memchr::memchr2(b'"', b'\\', &b[i..]) else {
                    i = b.len();
                    break;
                };
                i += at;
                if b[i] == b'"' {
                    break;
                }
                // A backslash takes the byte after it (a trailing one leaves the value open).
                if i + 1 >= b.len() {
                    i = b.len();
                    break;
                }
                has_escape = true;
                i += 2;
            }
            if i >= b.len() {
                return Err(format!("unterminated quoted value for key `{key}`"));
            }
            let value = &text[start..i];
            i += 1; // closing quote
            if has_escape {
                unescaped.clear();
                let mut chars = value.chars();
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        if let Some(n) = chars.next() {
                            unescaped.push(n);
                        }
                    } else {
                        unescaped.push(c);
                    }
                }
                let v = w.heap_str(&unescaped);
                let k = w.key(key);
                w.put_keyed(k, ward_engine::batch::Value::Str(v));
            } else {
                w.put_str(key, value);
            }
        } else {
            let start = i;
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            w.put_str(key, &text[start..i]);
        }
        pairs += 1;
    }
    if pairs == 0 {
        return Err("no key=value pairs".into());
    }
    Ok(pairs)
}

/// Bytes of a key: ASCII letters, digits, `_`, `.` and `-` (one table read per byte).
const KEY_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-';
        c += 1;
    }
    t
};

#[inline]
fn is_key_byte(c: u8) -> bool {
    KEY_BYTES[c as usize]
}

/// Cheap test used by format auto-detection: does the text start with `key=`?
pub fn looks_like_kv(text: &str) -> bool {
    let b = text.as_bytes();
    let n = b.iter().take_while(|c| is_key_byte(**c)).count();
    n > 0 && b.get(n) == Some(&b'=')
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse_with;
    use super::*;

    #[test]
    fn parses_plain_and_quoted_values() {
        let j = parse_with(r#"date=2024-01-02 devname="FGT 60" srcip=10.0.0.1 msg="said \"hi\"""#, |t, w| {
            parse_kv(t, w).map(|_| ())
        })
        .unwrap();
        assert_eq!(j["date"], "2024-01-02");
        assert_eq!(j["devname"], "FGT 60");
        assert_eq!(j["srcip"], "10.0.0.1");
        assert_eq!(j["msg"], "said \"hi\"");
    }

    #[test]
    fn rejects_malformed() {
        assert!(parse_with(r#"a="open"#, |t, w| parse_kv(t, w).map(|_| ())).unwrap_err().contains("unterminated"));
        assert!(parse_with("just words", |t, w| parse_kv(t, w).map(|_| ())).is_err());
        assert!(parse_with("   ", |t, w| parse_kv(t, w).map(|_| ())).is_err());
        // A backslash at the end, or escaping the closing quote, leaves the value open.
        for open in [r#"a="x\"#, r#"a="x\""#, r#"a=""#, r#"a="\\\""#] {
            let e = parse_with(open, |t, w| parse_kv(t, w).map(|_| ())).unwrap_err();
            assert!(e.contains("unterminated"), "{open}: {e}");
        }
    }

    #[test]
    fn escapes_take_the_next_character_whatever_it_is() {
        let parse = |t: &str| parse_with(t, |t, w| parse_kv(t, w).map(|_| ())).unwrap();
        let j = parse(r#"a="x\\" b="\é\"" c="" d="q\\\"r""#);
        assert_eq!(j["a"], "x\\");
        assert_eq!(j["b"], "é\"");
        assert_eq!(j["c"], "");
        assert_eq!(j["d"], "q\\\"r");
    }

    #[test]
    fn detection() {
        assert!(looks_like_kv("date=1 x=2"));
        assert!(!looks_like_kv("Failed password for x"));
        assert!(!looks_like_kv("=x"));
    }
}
