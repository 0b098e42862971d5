//! Zeek TSV logs: `#separator`, `#fields`, `#unset_field` ... header lines set up the
//! columns for the rows that follow in the same file. Zeek JSON logs are plain JSON.

use super::writer::FieldWriter;

/// Column layout of one Zeek log file, from its header lines.
#[derive(Clone, Debug)]
pub struct ZeekHeader {
    separator: String,
    unset: String,
    empty: String,
    path: Option<String>,
    fields: Vec<String>,
}

impl Default for ZeekHeader {
    fn default() -> Self {
        ZeekHeader {
            separator: "\t".into(),
            unset: "-".into(),
            empty: "(empty)".into(),
            path: None,
            fields: Vec::new(),
        }
    }
}

impl ZeekHeader {
    pub fn has_fields(&self) -> bool {
        !self.fields.is_empty()
    }

    /// Applies a `#...` header line. Returns an error for a directive with no value.
    pub fn apply(&mut self, line: &str) -> Result<(), String> {
        let body = &line[1..];
        let (directive, value) = match body.split_once(['\t', ' ']) {
            Some((d, v)) => (d, v),
            None => (body, ""),
        };
        match directive {
            "separator" => {
                self.separator = unescape_hex(value.trim());
                if self.separator.is_empty() {
                    return Err("empty #separator".into());
                }
            }
            "unset_field" => self.unset = value.to_string(),
            "empty_field" => self.empty = value.to_string(),
            "path" => self.path = Some(value.to_string()),
            "fields" => {
                self.fields = value.split(self.separator.as_str()).map(str::to_string).collect();
                if self.fields.iter().any(String::is_empty) {
                    return Err("#fields has an empty name".into());
                }
            }
            // #set_separator, #types, #open, #close carry nothing the parser needs.
            _ => {}
        }
        Ok(())
    }

    pub fn parse_row(&self, line: &str, w: &mut FieldWriter<'_>) -> Result<(), String> {
        if self.fields.is_empty() {
            return Err("row before any #fields header".into());
        }
        let mut n = 0;
        for (i, value) in line.split(self.separator.as_str()).enumerate() {
            let Some(name) = self.fields.get(i) else {
                return Err(format!("row has more than the {} columns of #fields", self.fields.len()));
            };
            n += 1;
            if value == self.unset {
                continue;
            }
            if value == self.empty {
                w.put_str(name, "");
            } else {
                w.put_str(name, value);
            }
        }
        if n != self.fields.len() {
            return Err(format!("row has {n} columns, #fields has {}", self.fields.len()));
        }
        if let Some(p) = &self.path {
            w.put_str("_path", p);
        }
        Ok(())
    }
}

/// `\x09` → tab, as Zeek writes its separator.
fn unescape_hex(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("\\x") {
        out.push_str(&rest[..i]);
        let hex = rest.get(i + 2..i + 4).and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(b) => {
                out.push(b as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push_str("\\x");
                rest = &rest[i + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse_with;
    use super::*;

    fn header() -> ZeekHeader {
        let mut h = ZeekHeader::default();
        for l in [
            "#separator \\x09",
            "#path\tconn",
            "#fields\tts\tuid\tid.orig_h\tid.orig_p\tservice",
            "#types\ttime\tstring\taddr\tport\tstring",
        ] {
            h.apply(l).unwrap();
        }
        h
    }

    #[test]
    fn rows_follow_the_header() {
        let h = header();
        let j = parse_with("1700000000.5\tCx1\t10.0.0.1\t5353\t-", |t, w| h.parse_row(t, w)).unwrap();
        assert_eq!(j["ts"], "1700000000.5");
        assert_eq!(j["id.orig_h"], "10.0.0.1");
        assert!(j.get("service").is_none(), "unset fields are absent");
        assert_eq!(j["_path"], "conn");
    }

    #[test]
    fn wrong_column_count_or_no_header_fails() {
        let h = header();
        assert!(parse_with("1\t2", |t, w| h.parse_row(t, w)).unwrap_err().contains("2 columns"));
        assert!(parse_with("1\t2\t3\t4\t5\t6", |t, w| h.parse_row(t, w)).is_err());
        let empty = ZeekHeader::default();
        assert!(parse_with("1\t2", |t, w| empty.parse_row(t, w)).unwrap_err().contains("before any #fields"));
    }
}
