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
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    has_escape = true;
                    i += 1;
                }
                i += 1;
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

#[inline]
fn is_key_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-'
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
    }

    #[test]
    fn detection() {
        assert!(looks_like_kv("date=1 x=2"));
        assert!(!looks_like_kv("Failed password for x"));
        assert!(!looks_like_kv("=x"));
    }
}
