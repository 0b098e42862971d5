//! ArcSight CEF: `CEF:Version|Vendor|Product|Version|SignatureID|Name|Severity|Extension`.
//! Header fields escape `\|` and `\\`; the extension is `key=value` pairs where a value runs
//! to the next ` key=`, with `\=`, `\\`, `\n` and `\r` escapes.

use ward_engine::batch::Value;

use super::writer::FieldWriter;

const HEADER: [&str; 7] = [
    "cef.version",
    "cef.device_vendor",
    "cef.device_product",
    "cef.device_version",
    "cef.signature_id",
    "cef.name",
    "cef.severity",
];

pub fn parse_cef(text: &str, w: &mut FieldWriter<'_>) -> Result<(), String> {
    let body = text.strip_prefix("CEF:").ok_or("missing `CEF:` prefix")?;
    let (headers, extension) = split_header(body, 7)?;
    for (name, value) in HEADER.iter().zip(headers) {
        put_unescaped(w, name, value, b'|');
    }
    parse_extension(extension, w)
}

/// Splits `n` pipe-separated header fields (honouring `\|`) off `body`.
pub(crate) fn split_header(body: &str, n: usize) -> Result<(Vec<&str>, &str), String> {
    let b = body.as_bytes();
    let mut fields = Vec::with_capacity(n);
    let mut start = 0;
    let mut i = 0;
    while fields.len() < n {
        if i >= b.len() {
            return Err(format!("header has {} of {n} pipe-separated fields", fields.len()));
        }
        match b[i] {
            b'\\' => i += 2,
            b'|' => {
                fields.push(&body[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    Ok((fields, &body[start.min(body.len())..]))
}

fn put_unescaped(w: &mut FieldWriter<'_>, key: &str, value: &str, special: u8) {
    if !value.as_bytes().contains(&b'\\') {
        w.put_str(key, value);
        return;
    }
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(x) if x as u32 == special as u32 || x == '\\' || x == '=' => out.push(x),
                Some(x) => {
                    out.push('\\');
                    out.push(x)
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    let r = w.heap_str(&out);
    let k = w.key(key);
    w.put_keyed(k, Value::Str(r));
}

/// `k1=v1 k2=v two k3=v3`: a value ends where the next unescaped ` key=` starts.
fn parse_extension(ext: &str, w: &mut FieldWriter<'_>) -> Result<(), String> {
    let b = ext.as_bytes();
    // Positions of every unescaped '=' that ends a key.
    let mut keys: Vec<(usize, usize)> = Vec::new(); // (key_start, eq_pos)
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'=' => {
                let mut k = i;
                while k > 0
                    && (b[k - 1].is_ascii_alphanumeric() || b[k - 1] == b'_' || b[k - 1] == b'.' || b[k - 1] == b'-')
                {
                    k -= 1;
                }
                if k == i {
                    return Err(format!("extension: `=` without a key at byte {i}"));
                }
                if k == 0 || b[k - 1] == b' ' {
                    keys.push((k, i));
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    if keys.is_empty() {
        if ext.trim().is_empty() {
            return Ok(());
        }
        return Err("extension is not key=value pairs".into());
    }
    if ext[..keys[0].0].trim() != "" {
        return Err("extension starts with text that is not key=value".into());
    }
    for (n, &(k, eq)) in keys.iter().enumerate() {
        let end = keys.get(n + 1).map(|&(next, _)| next).unwrap_or(b.len());
        let value = ext[eq + 1..end].trim_end_matches(' ');
        put_unescaped(w, &ext[k..eq], value, b'=');
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse_with;
    use super::*;

    #[test]
    fn parses_header_and_extension() {
        let j = parse_with(
            r"CEF:0|Security|threatmanager|1.0|100|worm successfully stopped|10|src=10.0.0.1 dst=2.1.2.2 spt=1232 msg=Detected a threat. No action needed act=blocked a \= b",
            parse_cef,
        )
        .unwrap();
        assert_eq!(j["cef.device_vendor"], "Security");
        assert_eq!(j["cef.name"], "worm successfully stopped");
        assert_eq!(j["cef.severity"], "10");
        assert_eq!(j["src"], "10.0.0.1");
        assert_eq!(j["msg"], "Detected a threat. No action needed");
        assert_eq!(j["act"], "blocked a = b");
    }

    #[test]
    fn escaped_pipes_in_header() {
        let j = parse_with(r"CEF:0|V|P\|x|1|sig|name|5|", parse_cef).unwrap();
        assert_eq!(j["cef.device_product"], "P|x");
    }

    #[test]
    fn rejects_short_header() {
        assert!(parse_with("CEF:0|V|P|1.0", parse_cef).unwrap_err().contains("of 7"));
        assert!(parse_with("CEF:0|V|P|1|s|n|5|=novalue", parse_cef).is_err());
    }
}
