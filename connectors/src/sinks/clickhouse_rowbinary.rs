//! RowBinary encoding of Ward values into a ClickHouse table's own column types.
//!
//! The `clickhouse` sink reads the target table's columns and encodes each value into the
//! column's type, converting where that is lossless or conventional: integers into any integer
//! width, Ward timestamps (milliseconds) into `DateTime`, `DateTime64(p)` or `Date`, addresses
//! into `IPv4`/`IPv6` or text, anything into `String` as text. `LowCardinality` is transparent
//! in RowBinary; `Nullable` columns get NULL for a missing value, other columns their type's
//! zero value. Types are parsed with `clickhouse-types`, the client library's own parser.

use std::net::IpAddr;

use clickhouse_types::data_types::{DataTypeNode, DateTimePrecision, EnumType};

/// A value to encode, borrowed from an event batch or a JSON record.
#[derive(Clone, Copy, Debug)]
pub enum Cell<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a str),
    /// Milliseconds since the Unix epoch, UTC.
    TimeMs(i64),
    Ip(IpAddr),
    /// A JSON value (arrays and objects: for `Array`, `Map` and text columns).
    Json(&'a serde_json::Value),
}

/// Parses a column type as `system.columns` reports it.
pub fn parse_type(text: &str) -> Result<DataTypeNode, String> {
    DataTypeNode::new(text).map_err(|e| e.to_string())
}

/// Whether Ward can encode values of this type (checked once, when the sink starts).
pub fn supported(ty: &DataTypeNode) -> bool {
    use DataTypeNode::*;
    match ty {
        Bool | UInt8 | UInt16 | UInt32 | UInt64 | Int8 | Int16 | Int32 | Int64 | Float32 | Float64 | String
        | FixedString(_) | Date | DateTime(_) | DateTime64(..) | IPv4 | IPv6 | Enum(..) => true,
        Nullable(t) | LowCardinality(t) | Array(t) => supported(t),
        Map([k, v]) => supported(k) && supported(v),
        _ => false,
    }
}

pub fn put_varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_str(s: &[u8], out: &mut Vec<u8>) {
    put_varint(s.len() as u64, out);
    out.extend_from_slice(s);
}

/// Encodes `cell` as a value of `ty`. A value that cannot be converted is an error naming both.
pub fn encode(ty: &DataTypeNode, cell: Cell<'_>, out: &mut Vec<u8>) -> Result<(), String> {
    use DataTypeNode as T;
    if let Cell::Json(serde_json::Value::Null) = cell {
        return encode(ty, Cell::Null, out);
    }
    match ty {
        T::Nullable(inner) => {
            if matches!(cell, Cell::Null) {
                out.push(1);
                Ok(())
            } else {
                out.push(0);
                encode(inner, cell, out)
            }
        }
        T::LowCardinality(inner) => encode(inner, cell, out),
        _ if matches!(cell, Cell::Null) => {
            encode_default(ty, out);
            Ok(())
        }
        T::String => {
            text_of(cell, |s| put_str(s.as_bytes(), out));
            Ok(())
        }
        T::FixedString(n) => {
            let mut bytes = Vec::new();
            text_of(cell, |s| bytes.extend_from_slice(s.as_bytes()));
            bytes.resize(*n, 0);
            out.extend_from_slice(&bytes);
            Ok(())
        }
        T::Bool => {
            out.push(as_int(cell).ok_or_else(|| mismatch(ty, cell))? as u8 & 1);
            Ok(())
        }
        T::UInt8 | T::UInt16 | T::UInt32 | T::UInt64 | T::Int8 | T::Int16 | T::Int32 | T::Int64 => {
            let v = as_int(cell).ok_or_else(|| mismatch(ty, cell))?;
            put_int(ty, v, out);
            Ok(())
        }
        T::Float32 => {
            out.extend_from_slice(&(as_float(cell).ok_or_else(|| mismatch(ty, cell))? as f32).to_le_bytes());
            Ok(())
        }
        T::Float64 => {
            out.extend_from_slice(&as_float(cell).ok_or_else(|| mismatch(ty, cell))?.to_le_bytes());
            Ok(())
        }
        T::Date => {
            let ms = as_time_ms(cell).ok_or_else(|| mismatch(ty, cell))?;
            out.extend_from_slice(&(ms.div_euclid(86_400_000).clamp(0, u16::MAX as i64) as u16).to_le_bytes());
            Ok(())
        }
        T::DateTime(_) => {
            let ms = as_time_ms(cell).ok_or_else(|| mismatch(ty, cell))?;
            out.extend_from_slice(&(ms.div_euclid(1000).clamp(0, u32::MAX as i64) as u32).to_le_bytes());
            Ok(())
        }
        T::DateTime64(p, _) => {
            let ms = as_time_ms(cell).ok_or_else(|| mismatch(ty, cell))?;
            let digits = precision_digits(p);
            let v = if digits >= 3 {
                ms.saturating_mul(10i64.pow(digits - 3))
            } else {
                ms.div_euclid(10i64.pow(3 - digits))
            };
            out.extend_from_slice(&v.to_le_bytes());
            Ok(())
        }
        T::IPv4 => match as_ip(cell) {
            Some(IpAddr::V4(a)) => {
                out.extend_from_slice(&u32::from(a).to_le_bytes());
                Ok(())
            }
            Some(IpAddr::V6(a)) => match a.to_ipv4_mapped() {
                Some(v4) => {
                    out.extend_from_slice(&u32::from(v4).to_le_bytes());
                    Ok(())
                }
                None => Err(mismatch(ty, cell)),
            },
            None => Err(mismatch(ty, cell)),
        },
        T::IPv6 => {
            let ip = as_ip(cell).ok_or_else(|| mismatch(ty, cell))?;
            let v6 = match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            out.extend_from_slice(&v6.octets());
            Ok(())
        }
        T::Enum(kind, values) => {
            let name = match cell {
                Cell::Str(s) => Some(s),
                Cell::Json(serde_json::Value::String(s)) => Some(s.as_str()),
                _ => None,
            };
            let code = match name {
                Some(s) => values.iter().find(|(_, name)| name.as_str() == s).map(|(code, _)| *code),
                None => as_int(cell).and_then(|i| i16::try_from(i).ok()).filter(|c| values.contains_key(c)),
            }
            .ok_or_else(|| mismatch(ty, cell))?;
            match kind {
                EnumType::Enum8 => out.push(code as i8 as u8),
                EnumType::Enum16 => out.extend_from_slice(&code.to_le_bytes()),
            }
            Ok(())
        }
        T::Array(inner) => match cell {
            Cell::Json(serde_json::Value::Array(items)) => {
                put_varint(items.len() as u64, out);
                items.iter().try_for_each(|v| encode(inner, Cell::Json(v), out))
            }
            // A single value is an array of one.
            other => {
                put_varint(1, out);
                encode(inner, other, out)
            }
        },
        T::Map([k, v]) => match cell {
            Cell::Json(serde_json::Value::Object(m)) => {
                put_varint(m.len() as u64, out);
                m.iter().try_for_each(|(key, value)| {
                    encode(k, Cell::Str(key), out)?;
                    encode(v, Cell::Json(value), out)
                })
            }
            // Ward's `[[key, value], ...]` lists (group-by values, entities).
            Cell::Json(serde_json::Value::Array(pairs))
                if pairs.iter().all(|p| p.as_array().is_some_and(|a| a.len() == 2)) =>
            {
                put_varint(pairs.len() as u64, out);
                pairs.iter().try_for_each(|p| {
                    encode(k, Cell::Json(&p[0]), out)?;
                    encode(v, Cell::Json(&p[1]), out)
                })
            }
            other => Err(mismatch(ty, other)),
        },
        _ => Err(format!("column type {} is not supported", ty)),
    }
}

/// The zero value of a non-nullable type: what a missing value becomes.
pub fn encode_default(ty: &DataTypeNode, out: &mut Vec<u8>) {
    use DataTypeNode as T;
    match ty {
        T::Nullable(_) => out.push(1),
        T::LowCardinality(inner) => encode_default(inner, out),
        T::String | T::Array(_) | T::Map(_) => out.push(0),
        T::FixedString(n) => out.resize(out.len() + n, 0),
        T::Bool | T::UInt8 | T::Int8 => out.push(0),
        T::UInt16 | T::Int16 | T::Date => out.extend_from_slice(&[0; 2]),
        T::UInt32 | T::Int32 | T::Float32 | T::DateTime(_) | T::IPv4 => out.extend_from_slice(&[0; 4]),
        T::IPv6 => out.extend_from_slice(&[0; 16]),
        T::Enum(kind, values) => {
            // The smallest code: ClickHouse's own default for an enum.
            let code = values.keys().min().copied().unwrap_or(0);
            match kind {
                EnumType::Enum8 => out.push(code as i8 as u8),
                EnumType::Enum16 => out.extend_from_slice(&code.to_le_bytes()),
            }
        }
        _ => out.extend_from_slice(&[0; 8]),
    }
}

fn precision_digits(p: &DateTimePrecision) -> u32 {
    use DateTimePrecision::*;
    match p {
        Precision0 => 0,
        Precision1 => 1,
        Precision2 => 2,
        Precision3 => 3,
        Precision4 => 4,
        Precision5 => 5,
        Precision6 => 6,
        Precision7 => 7,
        Precision8 => 8,
        Precision9 => 9,
    }
}

fn put_int(ty: &DataTypeNode, v: i64, out: &mut Vec<u8>) {
    use DataTypeNode as T;
    match ty {
        T::UInt8 | T::Int8 => out.push(v as u8),
        T::UInt16 | T::Int16 => out.extend_from_slice(&(v as u16).to_le_bytes()),
        T::UInt32 | T::Int32 => out.extend_from_slice(&(v as u32).to_le_bytes()),
        _ => out.extend_from_slice(&v.to_le_bytes()),
    }
}

fn mismatch(ty: &DataTypeNode, cell: Cell<'_>) -> String {
    let shown = match cell {
        Cell::Null => "null".to_string(),
        Cell::Bool(b) => b.to_string(),
        Cell::Int(i) => i.to_string(),
        Cell::UInt(i) => i.to_string(),
        Cell::Float(f) => f.to_string(),
        Cell::Str(s) => format!("{s:?}"),
        Cell::TimeMs(t) => format!("time {t} ms"),
        Cell::Ip(ip) => ip.to_string(),
        Cell::Json(v) => v.to_string(),
    };
    let mut shown: String = shown.chars().take(80).collect();
    if shown.len() == 80 {
        shown.push('…');
    }
    format!("{shown} does not fit column type {ty}")
}

/// Calls `f` with the value's text form (JSON for arrays and objects, RFC 3339 for times).
fn text_of(cell: Cell<'_>, f: impl FnOnce(&str)) {
    match cell {
        Cell::Str(s) => f(s),
        Cell::Json(serde_json::Value::String(s)) => f(s),
        Cell::Json(v) => f(&v.to_string()),
        Cell::Null => f(""),
        Cell::Bool(b) => f(if b { "true" } else { "false" }),
        Cell::Int(i) => f(&i.to_string()),
        Cell::UInt(i) => f(&i.to_string()),
        Cell::Float(x) => f(&x.to_string()),
        Cell::TimeMs(t) => f(&ward_engine::batch::format_timestamp_ms(t)),
        Cell::Ip(ip) => f(&ip.to_string()),
    }
}

fn as_int(cell: Cell<'_>) -> Option<i64> {
    match cell {
        Cell::Int(i) | Cell::TimeMs(i) => Some(i),
        // Bit-preserving: a UInt64 column gets the same bytes back.
        Cell::UInt(u) => Some(u as i64),
        Cell::Bool(b) => Some(b as i64),
        Cell::Float(f) if f.fract() == 0.0 => Some(f as i64),
        Cell::Str(s) => s.trim().parse().ok(),
        Cell::Json(serde_json::Value::Number(n)) => n.as_i64().or_else(|| n.as_u64().map(|u| u as i64)),
        Cell::Json(serde_json::Value::Bool(b)) => Some(*b as i64),
        Cell::Json(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_float(cell: Cell<'_>) -> Option<f64> {
    match cell {
        Cell::Float(f) => Some(f),
        Cell::Str(s) => s.trim().parse().ok(),
        Cell::Json(serde_json::Value::Number(n)) => n.as_f64(),
        Cell::Json(serde_json::Value::String(s)) => s.trim().parse().ok(),
        other => as_int(other).map(|i| i as f64),
    }
}

/// Times: Ward timestamps, integers as milliseconds since the epoch, RFC 3339 text.
fn as_time_ms(cell: Cell<'_>) -> Option<i64> {
    let text = |s: &str| chrono::DateTime::parse_from_rfc3339(s.trim()).ok().map(|t| t.timestamp_millis());
    match cell {
        Cell::Str(s) => text(s),
        Cell::Json(serde_json::Value::String(s)) => text(s),
        other => as_int(other),
    }
}

fn as_ip(cell: Cell<'_>) -> Option<IpAddr> {
    match cell {
        Cell::Ip(ip) => Some(ip),
        Cell::Str(s) => s.trim().parse().ok(),
        Cell::Json(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(ty: &str, cell: Cell<'_>) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        encode(&parse_type(ty).unwrap(), cell, &mut out)?;
        Ok(out)
    }

    #[test]
    fn scalars_take_the_columns_width() {
        assert_eq!(enc("UInt16", Cell::Int(513)).unwrap(), vec![1, 2]);
        assert_eq!(enc("Int64", Cell::Str("-2")).unwrap(), (-2i64).to_le_bytes());
        assert_eq!(enc("Float32", Cell::Int(2)).unwrap(), 2f32.to_le_bytes());
        assert_eq!(enc("String", Cell::Int(42)).unwrap(), b"\x0242");
        assert_eq!(enc("LowCardinality(String)", Cell::Str("ab")).unwrap(), b"\x02ab");
        assert_eq!(enc("FixedString(3)", Cell::Str("a")).unwrap(), b"a\0\0");
        assert_eq!(enc("Bool", Cell::Bool(true)).unwrap(), vec![1]);
    }

    #[test]
    fn times_follow_the_column_precision() {
        let ms = 1_767_600_000_123i64;
        assert_eq!(enc("DateTime", Cell::TimeMs(ms)).unwrap(), ((ms / 1000) as u32).to_le_bytes());
        assert_eq!(enc("DateTime('UTC')", Cell::TimeMs(ms)).unwrap(), ((ms / 1000) as u32).to_le_bytes());
        assert_eq!(enc("DateTime64(3, 'UTC')", Cell::TimeMs(ms)).unwrap(), ms.to_le_bytes());
        assert_eq!(enc("DateTime64(6)", Cell::TimeMs(ms)).unwrap(), (ms * 1000).to_le_bytes());
        assert_eq!(enc("Date", Cell::TimeMs(ms)).unwrap(), ((ms / 86_400_000) as u16).to_le_bytes());
        assert_eq!(
            enc("DateTime64(3)", Cell::Str("2026-01-05T08:00:00.5Z")).unwrap(),
            1_767_600_000_500i64.to_le_bytes()
        );
    }

    #[test]
    fn addresses_fit_both_families() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(enc("IPv4", Cell::Ip(v4)).unwrap(), 0x0a010203u32.to_le_bytes());
        let mapped = enc("IPv6", Cell::Ip(v4)).unwrap();
        assert_eq!(&mapped[10..], &[0xff, 0xff, 10, 1, 2, 3]);
        assert!(enc("IPv4", Cell::Str("2001:db8::1")).is_err());
        assert_eq!(enc("String", Cell::Ip(v4)).unwrap(), b"\x0810.1.2.3");
    }

    #[test]
    fn nullable_missing_and_defaults() {
        assert_eq!(enc("Nullable(String)", Cell::Null).unwrap(), vec![1]);
        assert_eq!(enc("Nullable(String)", Cell::Str("x")).unwrap(), vec![0, 1, b'x']);
        assert_eq!(enc("LowCardinality(Nullable(String))", Cell::Null).unwrap(), vec![1]);
        assert_eq!(enc("UInt32", Cell::Null).unwrap(), vec![0; 4]);
        assert_eq!(enc("IPv6", Cell::Null).unwrap(), vec![0; 16]);
    }

    #[test]
    fn arrays_maps_and_enums_from_json() {
        let tags = serde_json::json!(["a", "bc"]);
        assert_eq!(enc("Array(String)", Cell::Json(&tags)).unwrap(), b"\x02\x01a\x02bc");
        let pairs = serde_json::json!([["user", "bob"]]);
        assert_eq!(enc("Map(String, String)", Cell::Json(&pairs)).unwrap(), b"\x01\x04user\x03bob");
        let obj = serde_json::json!({"k": 1});
        assert_eq!(enc("Map(String, String)", Cell::Json(&obj)).unwrap(), b"\x01\x01k\x011");
        assert_eq!(enc("String", Cell::Json(&obj)).unwrap(), b"\x07{\"k\":1}");
        assert_eq!(enc("Enum8('low' = 1, 'high' = 2)", Cell::Str("high")).unwrap(), vec![2]);
        assert!(enc("Enum8('low' = 1, 'high' = 2)", Cell::Str("mid")).is_err());
    }

    #[test]
    fn wrong_values_are_named_in_the_error() {
        let e = enc("UInt8", Cell::Str("abc")).unwrap_err();
        assert!(e.contains("\"abc\"") && e.contains("UInt8"), "{e}");
        assert!(!supported(&parse_type("Tuple(String, UInt8)").unwrap()));
        assert!(supported(&parse_type("Array(LowCardinality(String))").unwrap()));
    }
}
