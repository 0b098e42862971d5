//! IBM QRadar LEEF 1.0 (`LEEF:1.0|Vendor|Product|Version|EventID|k=v<TAB>k=v`) and LEEF 2.0
//! (`LEEF:2.0|Vendor|Product|Version|EventID|Delimiter|k=v<D>k=v`; the delimiter may be a
//! character or a hex code such as `x5E` or `0x5E`).

use super::cef::split_header;
use super::writer::FieldWriter;

pub fn parse_leef(text: &str, w: &mut FieldWriter<'_>) -> Result<(), String> {
    let body = text.strip_prefix("LEEF:").ok_or("missing `LEEF:` prefix")?;
    let version_end = body.find('|').ok_or("header has no fields")?;
    let version = &body[..version_end];
    let v2 = version.starts_with('2');
    let (headers, rest) = split_header(body, if v2 { 6 } else { 5 })?;
    for (name, value) in
        ["leef.version", "leef.vendor", "leef.product", "leef.product_version", "leef.event_id"].iter().zip(&headers)
    {
        w.put_str(name, value);
    }
    let delimiter = if v2 { parse_delimiter(headers[5])? } else { '\t' };
    for attr in rest.split(delimiter) {
        if attr.trim().is_empty() {
            continue;
        }
        let (k, v) =
            attr.split_once('=').ok_or_else(|| format!("attribute `{}` is not key=value", attr.escape_debug()))?;
        if k.is_empty() {
            return Err("attribute with an empty key".into());
        }
        w.put_str(k, v);
    }
    Ok(())
}

fn parse_delimiter(d: &str) -> Result<char, String> {
    if d.is_empty() {
        return Ok('\t');
    }
    let hex = d.strip_prefix("0x").or_else(|| d.strip_prefix("x")).or_else(|| d.strip_prefix("X"));
    match hex {
        Some(h) if !h.is_empty() => {
            u32::from_str_radix(h, 16).ok().and_then(char::from_u32).ok_or_else(|| format!("bad LEEF delimiter `{d}`"))
        }
        _ if d.chars().count() == 1 => Ok(d.chars().next().expect("one char")),
        _ => Err(format!("bad LEEF delimiter `{d}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse_with;
    use super::*;

    #[test]
    fn leef1_tab_attributes() {
        let j = parse_with(
            "LEEF:1.0|Microsoft|MSExchange|4.0 SP1|15345|src=192.0.2.0\tdst=172.50.123.1\tusrName=joe",
            parse_leef,
        )
        .unwrap();
        assert_eq!(j["leef.vendor"], "Microsoft");
        assert_eq!(j["leef.event_id"], "15345");
        assert_eq!(j["usrName"], "joe");
    }

    #[test]
    fn leef2_custom_delimiter() {
        let j =
            parse_with("LEEF:2.0|Lancope|StealthWatch|1.0|41|^|src=10.0.1.8^dst=10.0.0.5^sev=5", parse_leef).unwrap();
        assert_eq!(j["dst"], "10.0.0.5");
        let j = parse_with("LEEF:2.0|V|P|1|id|x5E|a=1^b=2", parse_leef).unwrap();
        assert_eq!(j["b"], "2");
    }

    #[test]
    fn rejects_malformed() {
        assert!(parse_with("LEEF:1.0|V|P", parse_leef).is_err());
        assert!(parse_with("LEEF:1.0|V|P|1|id|novalue", parse_leef).is_err());
    }
}
