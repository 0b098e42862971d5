//! CSV with a header row: the first record of each file names the columns. Parsed with
//! `csv-core` into reused buffers (no allocation per row).

use super::writer::FieldWriter;

#[derive(Default)]
pub struct CsvState {
    header: Option<Vec<String>>,
    out: Vec<u8>,
    ends: Vec<usize>,
}

impl CsvState {
    pub fn has_header(&self) -> bool {
        self.header.is_some()
    }

    fn split(&mut self, line: &str) -> Result<usize, String> {
        let mut reader = csv_core::Reader::new();
        self.out.clear();
        self.out.resize(line.len() + 1, 0);
        if self.ends.len() < 64 {
            self.ends.resize(64, 0);
        }
        let mut input = line.as_bytes();
        let (mut nout, mut nend) = (0, 0);
        loop {
            let (res, nin, o, e) = reader.read_record(input, &mut self.out[nout..], &mut self.ends[nend..]);
            input = &input[nin..];
            nout += o;
            nend += e;
            match res {
                csv_core::ReadRecordResult::InputEmpty => {
                    if input.is_empty() {
                        // Signal end of input to flush the last field.
                        let (res, _, o, e) = reader.read_record(&[], &mut self.out[nout..], &mut self.ends[nend..]);
                        nout += o;
                        nend += e;
                        if let csv_core::ReadRecordResult::OutputEndsFull = res {
                            self.ends.resize(self.ends.len() * 2, 0);
                            continue;
                        }
                        return Ok(nend);
                    }
                }
                csv_core::ReadRecordResult::OutputFull => {
                    let len = self.out.len();
                    self.out.resize(len * 2, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    let len = self.ends.len();
                    self.ends.resize(len * 2, 0);
                }
                csv_core::ReadRecordResult::Record | csv_core::ReadRecordResult::End => return Ok(nend),
            }
        }
    }

    fn field(&self, i: usize) -> Result<&str, String> {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        std::str::from_utf8(&self.out[start..self.ends[i]]).map_err(|_| "field is not UTF-8".to_string())
    }

    /// Consumes a line: the header (returns `Ok(false)`) or a data row (`Ok(true)`).
    pub fn parse_line(&mut self, line: &str, w: &mut FieldWriter<'_>) -> Result<bool, String> {
        let n = self.split(line)?;
        match &self.header {
            None => {
                let names = (0..n).map(|i| self.field(i).map(str::to_string)).collect::<Result<Vec<_>, _>>()?;
                if names.iter().any(String::is_empty) {
                    return Err("header has an empty column name".into());
                }
                self.header = Some(names);
                Ok(false)
            }
            Some(h) => {
                if n != h.len() {
                    return Err(format!("row has {n} fields, header has {}", h.len()));
                }
                for i in 0..n {
                    let value = self.field(i)?;
                    let v = w.text(value);
                    let name = &self.header.as_ref().expect("header")[i];
                    let k = w.key(name);
                    w.put_keyed(k, ward_engine::batch::Value::Str(v));
                }
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse_with;
    use super::*;

    #[test]
    fn header_then_rows_with_quotes() {
        let mut s = CsvState::default();
        let hdr = parse_with("host,owner,note", |t, w| s.parse_line(t, w).map(|_| ()));
        assert!(hdr.is_ok());
        assert!(s.has_header());
        let j = parse_with(r#"dc1,"Smith, J","say ""hi""""#, |t, w| s.parse_line(t, w).map(|_| ())).unwrap();
        assert_eq!(j["host"], "dc1");
        assert_eq!(j["owner"], "Smith, J");
        assert_eq!(j["note"], "say \"hi\"");
    }

    #[test]
    fn wrong_field_count_fails() {
        let mut s = CsvState::default();
        parse_with("a,b", |t, w| s.parse_line(t, w).map(|_| ())).unwrap();
        assert!(parse_with("1,2,3", |t, w| s.parse_line(t, w).map(|_| ())).unwrap_err().contains("3 fields"));
    }
}
