//! Type coercion of input values into ECS-lite field types: numbers, booleans, addresses,
//! ports and timestamps in configurable formats and time zones.

use std::net::IpAddr;

use chrono::{NaiveDateTime, TimeZone};
use schemars::JsonSchema;
use serde::Deserialize;
use ward_engine::batch::{Heap, Value};
use ward_engine::fields::FieldType;
use ward_engine::quarantine::Reason;

/// A timestamp format: a name or a strftime pattern (`%Y-%m-%d %H:%M:%S%.f`).
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq)]
#[serde(transparent)]
pub struct TimestampFormat(pub String);

#[derive(Clone, Debug)]
pub enum TsFormat {
    Rfc3339,
    Rfc2822,
    EpochSeconds,
    EpochMillis,
    EpochMicros,
    EpochNanos,
    Pattern(String),
}

impl TsFormat {
    pub fn parse(f: &str) -> Result<TsFormat, String> {
        Ok(match f {
            "rfc3339" | "iso8601" => TsFormat::Rfc3339,
            "rfc2822" => TsFormat::Rfc2822,
            "epoch_s" | "unix" => TsFormat::EpochSeconds,
            "epoch_ms" | "unix_ms" => TsFormat::EpochMillis,
            "epoch_us" => TsFormat::EpochMicros,
            "epoch_ns" => TsFormat::EpochNanos,
            p if p.contains('%') => {
                // Validate the pattern once, at load time.
                let items: Vec<_> = chrono::format::StrftimeItems::new(p).collect();
                if items.iter().any(|i| matches!(i, chrono::format::Item::Error)) {
                    return Err(format!("invalid strftime pattern `{p}`"));
                }
                TsFormat::Pattern(p.to_string())
            }
            other => {
                return Err(format!(
                    "unknown timestamp format `{other}`: use rfc3339, rfc2822, epoch_s, epoch_ms, epoch_us, epoch_ns or a strftime pattern"
                ))
            }
        })
    }
}

/// A value read from an event, detached from the batch.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Timestamp(i64),
    Ip(IpAddr),
}

pub struct TsOptions<'a> {
    pub formats: &'a [TsFormat],
    pub timezone: chrono_tz::Tz,
}

pub type CoerceResult = Result<Value, (Reason, String)>;

pub fn coerce(ty: FieldType, input: Input<'_>, ts: &TsOptions<'_>, heap: &mut Heap<'_>) -> CoerceResult {
    let bad = |what: &str| Err((Reason::InvalidValue, what.to_string()));
    match (ty, input) {
        (_, Input::Null) => Ok(Value::Null),
        (FieldType::Str, Input::Str(s)) => Ok(Value::Str(heap.push_str(s))),
        (FieldType::Str, Input::Int(i)) => Ok(Value::Str(heap.push_str(itoa::Buffer::new().format(i)))),
        (FieldType::Str, Input::Float(f)) => Ok(Value::Str(heap.push_str(&f.to_string()))),
        (FieldType::Str, Input::Bool(b)) => Ok(Value::Str(heap.push_str(if b { "true" } else { "false" }))),
        (FieldType::Str, Input::Ip(ip)) => Ok(Value::Str(heap.push_str(&ip.to_string()))),
        (FieldType::Str, Input::Timestamp(ms)) => {
            Ok(Value::Str(heap.push_str(&ward_engine::batch::format_timestamp_ms(ms))))
        }
        (FieldType::Int, Input::Int(i)) => Ok(Value::Int(i)),
        (FieldType::Int, Input::Float(f)) if f.fract() == 0.0 && f.abs() < 9e15 => Ok(Value::Int(f as i64)),
        (FieldType::Int, Input::Str(s)) => {
            let t = s.trim();
            let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                Some(h) => i64::from_str_radix(h, 16).ok(),
                None => t.parse::<i64>().ok(),
            };
            parsed
                .map(Value::Int)
                .ok_or_else(|| (Reason::InvalidValue, format!("`{}` is not an integer", s.escape_debug())))
        }
        (FieldType::Int, Input::Bool(b)) => Ok(Value::Int(b as i64)),
        (FieldType::Float, Input::Float(f)) => Ok(Value::Float(f)),
        (FieldType::Float, Input::Int(i)) => Ok(Value::Float(i as f64)),
        (FieldType::Float, Input::Str(s)) => s
            .trim()
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| (Reason::InvalidValue, format!("`{}` is not a number", s.escape_debug()))),
        (FieldType::Bool, Input::Bool(b)) => Ok(Value::Bool(b)),
        (FieldType::Bool, Input::Int(i)) => Ok(Value::Bool(i != 0)),
        (FieldType::Bool, Input::Str(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" | "t" | "y" => Ok(Value::Bool(true)),
            "false" | "no" | "0" | "f" | "n" => Ok(Value::Bool(false)),
            _ => bad(&format!("`{}` is not a boolean", s.escape_debug())),
        },
        (FieldType::Ip, Input::Ip(ip)) => Ok(Value::Ip(heap.push_ip(ip))),
        (FieldType::Ip, Input::Str(s)) => {
            let t = s.trim();
            // Windows writes IPv4-mapped addresses as ::ffff:a.b.c.d; keep them as IPv4.
            match t.parse::<IpAddr>() {
                Ok(IpAddr::V6(v6)) => {
                    Ok(Value::Ip(heap.push_ip(v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)))))
                }
                Ok(ip) => Ok(Value::Ip(heap.push_ip(ip))),
                Err(_) => bad(&format!("`{}` is not an IP address", s.escape_debug())),
            }
        }
        (FieldType::Timestamp, Input::Timestamp(ms)) => Ok(Value::Timestamp(ms)),
        (FieldType::Timestamp, input) => parse_timestamp(input, ts).map(Value::Timestamp).ok_or_else(|| {
            (Reason::InvalidTimestamp, format!("{} matches none of the timestamp formats", describe(input)))
        }),
        (_, input) => bad(&format!("{} cannot become {:?}", describe(input), ty)),
    }
}

fn describe(input: Input<'_>) -> String {
    match input {
        Input::Str(s) => format!("`{}`", s.escape_debug()),
        Input::Int(i) => i.to_string(),
        Input::Float(f) => f.to_string(),
        Input::Bool(b) => b.to_string(),
        Input::Null => "null".into(),
        Input::Timestamp(ms) => ms.to_string(),
        Input::Ip(ip) => ip.to_string(),
    }
}

/// Milliseconds since the epoch, trying each format in order.
pub fn parse_timestamp(input: Input<'_>, opts: &TsOptions<'_>) -> Option<i64> {
    for f in opts.formats {
        let got = match (f, input) {
            (TsFormat::EpochSeconds, Input::Int(i)) => i.checked_mul(1000),
            (TsFormat::EpochSeconds, Input::Float(x)) => Some((x * 1000.0).round() as i64),
            (TsFormat::EpochMillis, Input::Int(i)) => Some(i),
            (TsFormat::EpochMicros, Input::Int(i)) => Some(i.div_euclid(1000)),
            (TsFormat::EpochNanos, Input::Int(i)) => Some(i.div_euclid(1_000_000)),
            (TsFormat::EpochSeconds, Input::Str(s)) => {
                s.trim().parse::<f64>().ok().filter(|x| x.is_finite()).map(|x| (x * 1000.0).round() as i64)
            }
            (TsFormat::EpochMillis, Input::Str(s)) => s.trim().parse::<i64>().ok(),
            (TsFormat::EpochMicros, Input::Str(s)) => s.trim().parse::<i64>().ok().map(|i| i.div_euclid(1000)),
            (TsFormat::EpochNanos, Input::Str(s)) => s.trim().parse::<i64>().ok().map(|i| i.div_euclid(1_000_000)),
            (TsFormat::Rfc3339, Input::Str(s)) => {
                chrono::DateTime::parse_from_rfc3339(s.trim()).ok().map(|t| t.timestamp_millis())
            }
            (TsFormat::Rfc2822, Input::Str(s)) => {
                chrono::DateTime::parse_from_rfc2822(s.trim()).ok().map(|t| t.timestamp_millis())
            }
            (TsFormat::Pattern(p), Input::Str(s)) => parse_pattern(s.trim(), p, opts.timezone),
            _ => None,
        };
        // Reject the absurd (before 1970 or after 2200): a wrong unit, not a real time.
        if let Some(ms) = got.filter(|ms| (0..7_258_118_400_000).contains(ms)) {
            return Some(ms);
        }
    }
    None
}

fn parse_pattern(s: &str, pattern: &str, tz: chrono_tz::Tz) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_str(s, pattern) {
        return Some(t.timestamp_millis());
    }
    let naive = NaiveDateTime::parse_from_str(s, pattern)
        .ok()
        .or_else(|| chrono::NaiveDate::parse_from_str(s, pattern).ok().and_then(|d| d.and_hms_opt(0, 0, 0)))?;
    tz.from_local_datetime(&naive).earliest().map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(input: Input<'_>, formats: &[&str], tz: chrono_tz::Tz) -> Option<i64> {
        let f: Vec<_> = formats.iter().map(|f| TsFormat::parse(f).unwrap()).collect();
        parse_timestamp(input, &TsOptions { formats: &f, timezone: tz })
    }

    #[test]
    fn timestamp_formats_and_zones() {
        assert_eq!(ts(Input::Str("2024-03-05T10:00:01.1234567Z"), &["rfc3339"], chrono_tz::UTC), Some(1709632801123));
        assert_eq!(ts(Input::Str("1700000000.5"), &["epoch_s"], chrono_tz::UTC), Some(1700000000500));
        assert_eq!(ts(Input::Int(1700000000000), &["epoch_ms"], chrono_tz::UTC), Some(1700000000000));
        assert_eq!(ts(Input::Int(1700000000000000000), &["epoch_ns"], chrono_tz::UTC), Some(1700000000000));
        assert_eq!(ts(Input::Str("2024-01-02 03:04:05"), &["%Y-%m-%d %H:%M:%S"], chrono_tz::UTC), Some(1704164645000));
        // Same wall time in Berlin is an hour earlier in UTC.
        assert_eq!(
            ts(Input::Str("2024-01-02 03:04:05"), &["%Y-%m-%d %H:%M:%S"], chrono_tz::Europe::Berlin),
            Some(1704164645000 - 3_600_000)
        );
        // First matching format wins.
        assert_eq!(
            ts(Input::Str("2024-01-02 03:04:05.250"), &["rfc3339", "%Y-%m-%d %H:%M:%S%.f"], chrono_tz::UTC),
            Some(1704164645250)
        );
        assert_eq!(ts(Input::Str("yesterday"), &["rfc3339", "epoch_s"], chrono_tz::UTC), None);
        assert_eq!(ts(Input::Int(99999999999999999), &["epoch_s"], chrono_tz::UTC), None);
        assert!(TsFormat::parse("bogus").is_err());
    }

    #[test]
    fn coercions() {
        let mut batch = ward_engine::batch::EventBatch::new();
        let opts = TsOptions { formats: &[], timezone: chrono_tz::UTC };
        let mut heap = batch.heap();
        assert_eq!(coerce(FieldType::Int, Input::Str(" 445 "), &opts, &mut heap), Ok(Value::Int(445)));
        assert_eq!(coerce(FieldType::Int, Input::Str("0x1F"), &opts, &mut heap), Ok(Value::Int(31)));
        assert_eq!(coerce(FieldType::Int, Input::Str("abc"), &opts, &mut heap).unwrap_err().0, Reason::InvalidValue);
        assert_eq!(coerce(FieldType::Bool, Input::Str("Yes"), &opts, &mut heap), Ok(Value::Bool(true)));
        let v = coerce(FieldType::Ip, Input::Str("::ffff:10.1.2.3"), &opts, &mut heap).unwrap();
        let Value::Ip(r) = v else { panic!() };
        assert_eq!(batch.bytes().ip(r), Some("10.1.2.3".parse().unwrap()));
        let mut heap = batch.heap();
        assert!(coerce(FieldType::Ip, Input::Str("999.1.1.1"), &opts, &mut heap).is_err());
        assert_eq!(
            coerce(FieldType::Timestamp, Input::Str("x"), &opts, &mut heap).unwrap_err().0,
            Reason::InvalidTimestamp
        );
    }
}
