//! Syslog, RFC 5424 and RFC 3164 (via `syslog_loose`), checked more strictly than that crate
//! alone: a record must start with a valid `<PRI>` and carry a timestamp and a host, or it is
//! quarantined as `invalid_syslog`. A PRI followed directly by key=value pairs (FortiGate and
//! similar firewalls) is read as such. The message may itself be CEF, LEEF or key=value.

use chrono::Datelike;
use ward_engine::batch::Value;

use super::writer::FieldWriter;
use super::{cef, kv, leef};

#[derive(Clone, Copy, Debug)]
pub struct SyslogOptions {
    /// Zone for timestamps without an offset (RFC 3164).
    pub timezone: chrono_tz::Tz,
    /// Year for RFC 3164 timestamps, which have none; the current year when unset.
    pub year: Option<i32>,
    /// Parse CEF, LEEF or key=value messages into fields.
    pub parse_message: bool,
}

impl Default for SyslogOptions {
    fn default() -> Self {
        SyslogOptions { timezone: chrono_tz::UTC, year: None, parse_message: true }
    }
}

/// Splits `<PRI>` off the front. Returns (pri, rest).
pub fn split_pri(text: &str) -> Option<(u8, &str)> {
    let rest = text.strip_prefix('<')?;
    let end = rest.find('>')?;
    if end == 0 || end > 3 || !rest[..end].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let pri: u16 = rest[..end].parse().ok()?;
    if pri > 191 {
        return None;
    }
    Some((pri as u8, &rest[end + 1..]))
}

pub fn parse_syslog(text: &str, opts: &SyslogOptions, w: &mut FieldWriter<'_>) -> Result<(), String> {
    let (pri, rest) = split_pri(text).ok_or("missing or invalid <PRI> header")?;
    w.put("syslog.facility", Value::Int((pri >> 3) as i64));
    w.put("syslog.severity", Value::Int((pri & 7) as i64));
    if kv::looks_like_kv(rest) {
        kv::parse_kv(rest, w)?;
        return Ok(());
    }
    // CEF and LEEF behind a syslog header: the header has no app name, and syslog_loose
    // would take `CEF` for one. Parse the header alone, then the payload.
    let embedded = [" CEF:", " LEEF:"].iter().filter_map(|m| rest.find(m)).min();
    let (header, payload) = match embedded {
        Some(i) if opts.parse_message => (&text[..text.len() - rest.len() + i], Some(&rest[i + 1..])),
        _ => (text, None),
    };
    let year = opts.year.unwrap_or_else(|| chrono::Utc::now().year());
    let msg = syslog_loose::parse_message_with_year_exact_tz(
        header,
        move |_| year,
        Some(opts.timezone),
        syslog_loose::Variant::Either,
    )?;
    let ts = msg.timestamp.ok_or("no timestamp (truncated record?)")?;
    let host = msg.hostname.ok_or("no host name (truncated record?)")?;
    w.put("syslog.timestamp", Value::Timestamp(ts.timestamp_millis()));
    w.put_str("syslog.hostname", host);
    if let Some(app) = msg.appname {
        w.put_str("syslog.appname", app);
    }
    match msg.procid {
        Some(syslog_loose::ProcId::PID(p)) => w.put("syslog.procid", Value::Int(p as i64)),
        Some(syslog_loose::ProcId::Name(n)) => w.put_str("syslog.procid", n),
        None => {}
    }
    if let Some(id) = msg.msgid {
        w.put_str("syslog.msgid", id);
    }
    let mut key = String::new();
    for sd in &msg.structured_data {
        for (name, value) in &sd.params {
            key.clear();
            key.push_str("syslog.sd.");
            key.push_str(sd.id);
            key.push('.');
            key.push_str(name);
            w.put_str(&key, value);
        }
    }
    let body = payload.unwrap_or(msg.msg).trim_end();
    w.put_str("syslog.message", body);
    if opts.parse_message {
        if body.starts_with("CEF:") {
            cef::parse_cef(body, w)?;
        } else if body.starts_with("LEEF:") {
            leef::parse_leef(body, w)?;
        } else if kv::looks_like_kv(body) {
            // A message that merely starts like key=value but isn't stays a plain message.
            let mark = w.written();
            if kv::parse_kv(body, w).is_err() {
                w.slots.truncate(w.row_start + mark);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse_with;
    use super::*;

    fn p(t: &str) -> Result<serde_json::Value, String> {
        let o = SyslogOptions { year: Some(2024), ..Default::default() };
        parse_with(t, |t, w| parse_syslog(t, &o, w))
    }

    #[test]
    fn rfc3164_sshd() {
        let j = p("<38>Mar  5 10:00:01 web-01 sshd[4242]: Failed password for invalid user admin from 203.0.113.9 port 52211 ssh2").unwrap();
        assert_eq!(j["syslog.hostname"], "web-01");
        assert_eq!(j["syslog.appname"], "sshd");
        assert_eq!(j["syslog.procid"], 4242);
        assert_eq!(j["syslog.facility"], 4);
        assert_eq!(j["syslog.severity"], 6);
        assert_eq!(j["syslog.timestamp"], "2024-03-05T10:00:01.000Z");
        assert!(j["syslog.message"].as_str().unwrap().starts_with("Failed password"));
    }

    #[test]
    fn rfc5424_with_structured_data() {
        let j = p(r#"<165>1 2024-08-24T05:14:15.003Z mymachine.example.com evntslog 99 ID47 [exampleSDID@32473 iut="3" eventSource="Application"] An application event"#).unwrap();
        assert_eq!(j["syslog.hostname"], "mymachine.example.com");
        assert_eq!(j["syslog.msgid"], "ID47");
        assert_eq!(j["syslog.sd.exampleSDID@32473.iut"], "3");
        assert_eq!(j["syslog.message"], "An application event");
        assert_eq!(j["syslog.timestamp"], "2024-08-24T05:14:15.003Z");
    }

    #[test]
    fn pri_then_key_values() {
        let j = p(r#"<189>date=2024-01-02 time=03:04:05 devname="FGT" srcip=10.0.0.5 dstport=445"#).unwrap();
        assert_eq!(j["devname"], "FGT");
        assert_eq!(j["dstport"], "445");
        assert_eq!(j["syslog.facility"], 23);
    }

    #[test]
    fn cef_inside_syslog() {
        let j = p("<134>Feb 14 19:04:54 fw01 CEF:0|Vendor|Prod|1.0|100|Blocked|5|src=10.0.0.1 dst=10.0.0.2").unwrap();
        assert_eq!(j["cef.name"], "Blocked");
        assert_eq!(j["dst"], "10.0.0.2");
    }

    #[test]
    fn truncated_and_headerless_fail() {
        assert!(p("<38>Mar  5 10:0").is_err());
        assert!(p("Mar  5 10:00:01 web-01 sshd: hi").unwrap_err().contains("PRI"));
        assert!(p("<999>x").is_err());
        assert!(p("<38>").is_err());
    }
}
