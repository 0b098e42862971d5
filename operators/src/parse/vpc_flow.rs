//! Amazon VPC flow log records in the text format: space-separated fields, named by the
//! header line each log file starts with (`version account-id interface-id srcaddr ...`), or,
//! with no header seen, the default version 2 format. Custom formats work through their header.

use super::writer::FieldWriter;

/// Every field name the flow log format defines (versions 2 to 8); a header is a line of these.
/// The first 14 are the default (version 2) format, used until a header names another.
const KNOWN_FIELDS: &[&str] = &[
    "version",
    "account-id",
    "interface-id",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "protocol",
    "packets",
    "bytes",
    "start",
    "end",
    "action",
    "log-status",
    // Versions 3 and later.
    "vpc-id",
    "subnet-id",
    "instance-id",
    "tcp-flags",
    "type",
    "pkt-srcaddr",
    "pkt-dstaddr",
    "region",
    "az-id",
    "sublocation-type",
    "sublocation-id",
    "pkt-src-aws-service",
    "pkt-dst-aws-service",
    "flow-direction",
    "traffic-path",
    "ecs-cluster-arn",
    "ecs-cluster-name",
    "ecs-container-instance-arn",
    "ecs-container-instance-id",
    "ecs-container-id",
    "ecs-second-container-id",
    "ecs-service-name",
    "ecs-task-definition-arn",
    "ecs-task-arn",
    "ecs-task-id",
    "reject-reason",
    "resource-id",
    "encryption-status",
];

/// The default (version 2) format.
pub const DEFAULT_FIELDS: &[&str] = KNOWN_FIELDS.split_at(14).0;

/// Column layout of one flow log file.
#[derive(Clone, Debug, Default)]
pub struct VpcFlowState {
    header: Option<Vec<String>>,
}

/// A header line: every token a flow log field name (at least two, `srcaddr` or `dstaddr` among
/// them, so a one-word line is no header).
pub fn is_header(line: &str) -> bool {
    let mut n = 0;
    let mut addr = false;
    for t in line.split_ascii_whitespace() {
        if !KNOWN_FIELDS.contains(&t) {
            return false;
        }
        addr |= t == "srcaddr" || t == "dstaddr";
        n += 1;
    }
    n >= 2 && addr
}

/// A row of the default format: 14 fields, a numeric version, an interface id, and the
/// action and log status where v2 puts them.
pub fn looks_like_default_row(line: &str) -> bool {
    let t: Vec<&str> = line.split_ascii_whitespace().take(15).collect();
    t.len() == 14
        && t[0].bytes().all(|b| b.is_ascii_digit())
        && (t[2].starts_with("eni-") || t[2] == "-")
        && matches!(t[12], "ACCEPT" | "REJECT" | "-")
        && matches!(t[13], "OK" | "NODATA" | "SKIPDATA")
}

impl VpcFlowState {
    pub fn has_header(&self) -> bool {
        self.header.is_some()
    }

    /// Consumes a line: a header (`Ok(false)`) or a record (`Ok(true)`).
    pub fn parse_line(&mut self, line: &str, w: &mut FieldWriter<'_>) -> Result<bool, String> {
        if is_header(line) {
            self.header = Some(line.split_ascii_whitespace().map(str::to_string).collect());
            return Ok(false);
        }
        let names: &[String] = self.header.as_deref().unwrap_or(&[]);
        let expected = if names.is_empty() { DEFAULT_FIELDS.len() } else { names.len() };
        let n = line.split_ascii_whitespace().count();
        if n != expected {
            return Err(format!("flow log record has {n} fields, the format has {expected}"));
        }
        for (i, value) in line.split_ascii_whitespace().enumerate() {
            let name = match names.get(i) {
                Some(n) => n.as_str(),
                None => DEFAULT_FIELDS[i],
            };
            w.put_str(name, value);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse_with;
    use super::*;

    #[test]
    fn default_format_without_a_header() {
        let mut s = VpcFlowState::default();
        let line = "2 123456789012 eni-0a1b2c3d 10.0.1.5 203.0.113.9 49152 22 6 10 840 1764547200 1764547260 REJECT OK";
        assert!(looks_like_default_row(line));
        let j = parse_with(line, |t, w| s.parse_line(t, w).map(|_| ())).unwrap();
        assert_eq!(j["srcaddr"], "10.0.1.5");
        assert_eq!(j["dstport"], "22");
        assert_eq!(j["action"], "REJECT");
        assert_eq!(j["log-status"], "OK");
    }

    #[test]
    fn a_custom_format_is_read_through_its_header() {
        let mut s = VpcFlowState::default();
        let header = "version vpc-id srcaddr dstaddr dstport action flow-direction";
        assert!(is_header(header));
        assert!(!is_header("version 2"), "a data-looking token is no header");
        parse_with(header, |t, w| s.parse_line(t, w).map(|_| ())).unwrap();
        assert!(s.has_header());
        let j =
            parse_with("5 vpc-1 10.0.0.1 10.0.0.2 443 ACCEPT egress", |t, w| s.parse_line(t, w).map(|_| ())).unwrap();
        assert_eq!(j["vpc-id"], "vpc-1");
        assert_eq!(j["flow-direction"], "egress");
        let e = parse_with("5 vpc-1 10.0.0.1", |t, w| s.parse_line(t, w).map(|_| ())).unwrap_err();
        assert!(e.contains("3 fields"), "{e}");
    }
}
