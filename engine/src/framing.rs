//! Streaming split of concatenated JSON documents (`framing: json_documents`, e.g. EVTX
//! exports pretty-printed one after another) into records, with the limits of line framing.
//!
//! The reader finds where each top-level `{…}` or `[…]` ends by tracking nesting outside
//! strings, one pass over the bytes, keeping at most `max_record_bytes` of a record. It does
//! not validate JSON (parse does, per record), so one broken document costs only itself: text
//! between documents is reported as junk, a record longer than the limit as oversize, a
//! document cut off by the end of the file as truncated, and a line break inside a string
//! (never valid JSON, and what an unterminated string in JSON lines looks like) ends the
//! broken document at that line, so it cannot swallow the lines after it.
//!
//! With envelopes unwrapped, delivery envelopes become their records while streaming, never
//! held whole: `{"Records": [...]}` (CloudTrail log files) and `{"records": [...]}` (Azure
//! diagnostic logs) yield each element of the array as a record of its own; an EventBridge
//! event (`detail-type` before `detail`) yields its `detail` object. Other keys of an envelope
//! are skipped.

use std::io::BufRead;

/// What [`RecordReader::next`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// A balanced object or array: a document, or a record of an envelope.
    Document,
    /// Bytes that do not start a document (up to the next `{` or `[`), or a scalar element
    /// of an envelope's record array.
    Junk,
    /// A document the end of the input cut off.
    Truncated,
    /// A document with a raw line break inside a string, cut there (the next line is read
    /// as the start of a new document).
    BrokenString,
}

/// Where a record of an envelope came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Element {
    /// Byte offset of the envelope document.
    pub document_start: u64,
    /// 0-based index of the record in the envelope.
    pub index: u64,
}

/// One piece of the stream: its kind, its length (all of it, also beyond what was kept), the
/// byte offset it starts at, and for a record of an envelope, which one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub piece: Piece,
    pub len: usize,
    pub start: u64,
    pub element: Option<Element>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Envelope {
    /// `Records` / `records` holding an array: each element is a record.
    Records,
    /// EventBridge `detail` (after `detail-type`): the object is the record.
    Detail,
}

/// Position in the key/value structure of a top-level object (only tracked for envelopes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyAt {
    Key,
    InKey,
    Colon,
    Value,
    Other,
}

/// Keys longer than this are no envelope key (so the key buffer stays small).
const MAX_KEY: usize = 12;

/// Nesting state of a value being scanned, fed chunk by chunk.
#[derive(Clone, Debug)]
struct Scan {
    depth: usize,
    in_string: bool,
    escaped: bool,
    keys: Option<KeyTrack>,
}

#[derive(Clone, Debug)]
struct KeyTrack {
    at: KeyAt,
    key: [u8; MAX_KEY],
    key_len: usize,
    seen_detail_type: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The whole chunk belongs to the value.
    More,
    /// The value ends after this many bytes of the chunk.
    End(usize),
    /// A raw line break at this index of the chunk, inside a string.
    Broken(usize),
    /// An envelope's records start at this index of the chunk.
    Unwrap(usize, Envelope),
}

impl Scan {
    fn new(depth: usize, track_keys: bool) -> Scan {
        let keys =
            track_keys.then_some(KeyTrack { at: KeyAt::Other, key: [0; MAX_KEY], key_len: 0, seen_detail_type: false });
        Scan { depth, in_string: false, escaped: false, keys }
    }

    fn feed(&mut self, chunk: &[u8]) -> Step {
        for (i, &b) in chunk.iter().enumerate() {
            let top = self.depth == 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                    if let Some(k) = self.keys.as_mut().filter(|k| top && k.at == KeyAt::InKey) {
                        k.at = KeyAt::Colon;
                    }
                    continue;
                } else if b == b'\n' {
                    return Step::Broken(i);
                }
                if let Some(k) = self.keys.as_mut().filter(|k| top && k.at == KeyAt::InKey) {
                    if k.key_len < MAX_KEY {
                        k.key[k.key_len] = b;
                    }
                    k.key_len += 1;
                }
                continue;
            }
            if let Some(k) = self.keys.as_mut().filter(|_| top) {
                match k.at {
                    KeyAt::Key if b == b'"' => {
                        k.at = KeyAt::InKey;
                        k.key_len = 0;
                    }
                    KeyAt::Colon if b == b':' => k.at = KeyAt::Value,
                    KeyAt::Value if !b.is_ascii_whitespace() => {
                        let key = &k.key[..k.key_len.min(MAX_KEY)];
                        let exact = k.key_len <= MAX_KEY;
                        if exact && b == b'[' && (key == b"Records" || key == b"records") {
                            return Step::Unwrap(i, Envelope::Records);
                        }
                        if exact && b == b'{' && key == b"detail" && k.seen_detail_type {
                            return Step::Unwrap(i, Envelope::Detail);
                        }
                        if exact && key == b"detail-type" {
                            k.seen_detail_type = true;
                        }
                        k.at = KeyAt::Other;
                    }
                    KeyAt::Other if b == b',' => k.at = KeyAt::Key,
                    _ => {}
                }
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    self.depth += 1;
                    if self.depth == 1 && b == b'{' {
                        if let Some(k) = self.keys.as_mut() {
                            k.at = KeyAt::Key;
                        }
                    }
                }
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Step::End(i + 1);
                    }
                }
                _ => {}
            }
        }
        Step::More
    }
}

enum State {
    /// Between documents.
    Top,
    /// Inside an envelope's record array, before the next record.
    Records { document_start: u64, index: u64 },
    /// After an envelope's records: the rest of the envelope object is skipped.
    RestOfEnvelope,
}

/// How a scan over the input ended.
enum Outcome {
    End,
    Broken,
    Truncated,
    Unwrap(Envelope),
}

/// Splits a byte stream into records (see the module docs). Memory: at most `max` bytes of a
/// record, whatever the size of a document or envelope.
pub struct RecordReader {
    unwrap: bool,
    state: State,
    pos: u64,
}

fn is_space(b: u8) -> bool {
    // White space between documents, and a UTF-8 byte-order mark.
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0xEF | 0xBB | 0xBF)
}

impl RecordReader {
    /// `unwrap`: split envelopes into their records (else every document is one record).
    pub fn new(unwrap: bool) -> RecordReader {
        RecordReader { unwrap, state: State::Top, pos: 0 }
    }

    /// Bytes of the input consumed so far.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Skips bytes while `skip` holds; the next byte, or `None` at the end of the input.
    fn skip_while(&mut self, r: &mut dyn BufRead, skip: impl Fn(u8) -> bool) -> std::io::Result<Option<u8>> {
        loop {
            let chunk = r.fill_buf()?;
            if chunk.is_empty() {
                return Ok(None);
            }
            let n = chunk.iter().take_while(|b| skip(**b)).count();
            if n < chunk.len() {
                let next = chunk[n];
                r.consume(n);
                self.pos += n as u64;
                return Ok(Some(next));
            }
            let all = chunk.len();
            r.consume(all);
            self.pos += all as u64;
        }
    }

    /// Feeds the input to `scan` until it ends, keeping at most `max` bytes in `buf` when
    /// `keep`; a line break in a string is consumed with it. Returns how it ended and the
    /// length scanned.
    fn scan(
        &mut self,
        r: &mut dyn BufRead,
        scan: &mut Scan,
        buf: &mut Vec<u8>,
        max: usize,
        keep: bool,
    ) -> std::io::Result<(Outcome, usize)> {
        let mut len = 0usize;
        loop {
            let chunk = r.fill_buf()?;
            if chunk.is_empty() {
                return Ok((Outcome::Truncated, len));
            }
            let step = scan.feed(chunk);
            let (take, consume, outcome) = match step {
                Step::More => (chunk.len(), chunk.len(), None),
                Step::End(k) => (k, k, Some(Outcome::End)),
                Step::Broken(k) => (k, k + 1, Some(Outcome::Broken)),
                Step::Unwrap(k, e) => (k, k, Some(Outcome::Unwrap(e))),
            };
            if keep {
                let room = max.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..take.min(room)]);
            }
            len += take;
            r.consume(consume);
            self.pos += consume as u64;
            if let Some(o) = outcome {
                return Ok((o, len));
            }
        }
    }

    /// Reads a balanced value starting at the next byte (`{` or `[`) into `buf`.
    fn value(&mut self, r: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<(Piece, usize)> {
        let (outcome, len) = self.scan(r, &mut Scan::new(0, false), buf, max, true)?;
        Ok((piece_of(outcome), len))
    }

    /// Reads the next record into `buf` (at most `max` bytes of it kept). `None` at the end
    /// of the input.
    pub fn next(&mut self, r: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Option<Found>> {
        buf.clear();
        loop {
            match self.state {
                State::Top => return self.top(r, buf, max),
                State::Records { document_start, index } => {
                    let Some(b) = self.skip_while(r, |b| is_space(b) || b == b',')? else {
                        self.state = State::Top;
                        let element = Some(Element { document_start, index });
                        return Ok(Some(Found { piece: Piece::Truncated, len: 0, start: self.pos, element }));
                    };
                    if b == b']' {
                        r.consume(1);
                        self.pos += 1;
                        self.state = State::RestOfEnvelope;
                        continue;
                    }
                    let start = self.pos;
                    let element = Some(Element { document_start, index });
                    self.state = State::Records { document_start, index: index + 1 };
                    let (piece, len) = if b == b'{' || b == b'[' {
                        self.value(r, buf, max)?
                    } else {
                        (Piece::Junk, self.scalar(r, buf, max)?)
                    };
                    if matches!(piece, Piece::BrokenString | Piece::Truncated) {
                        // The envelope is broken: resynchronise at the next document.
                        self.state = State::Top;
                    }
                    return Ok(Some(Found { piece, len, start, element }));
                }
                State::RestOfEnvelope => {
                    self.scan(r, &mut Scan::new(1, false), buf, 0, false)?;
                    self.state = State::Top;
                }
            }
        }
    }

    /// A scalar element of a record array, up to the `,` or `]` after it.
    fn scalar(&mut self, r: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<usize> {
        let mut len = 0;
        let mut in_string = false;
        let mut escaped = false;
        loop {
            let chunk = r.fill_buf()?;
            if chunk.is_empty() {
                return Ok(len);
            }
            let mut end = None;
            for (i, &b) in chunk.iter().enumerate() {
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        in_string = false;
                    } else if b == b'\n' {
                        end = Some(i);
                        break;
                    }
                } else if b == b'"' {
                    in_string = true;
                } else if b == b',' || b == b']' || b == b'\n' {
                    end = Some(i);
                    break;
                }
            }
            let take = end.unwrap_or(chunk.len());
            let room = max.saturating_sub(buf.len());
            buf.extend_from_slice(&chunk[..take.min(room)]);
            len += take;
            r.consume(take);
            self.pos += take as u64;
            if end.is_some() {
                return Ok(len);
            }
        }
    }

    fn top(&mut self, r: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Option<Found>> {
        let Some(first) = self.skip_while(r, is_space)? else {
            return Ok(None);
        };
        let start = self.pos;
        if first != b'{' && first != b'[' {
            // Junk: up to (not including) the next byte that could start a document.
            let mut len = 0usize;
            loop {
                let chunk = r.fill_buf()?;
                if chunk.is_empty() {
                    break;
                }
                let from = usize::from(len == 0);
                let end = chunk[from..].iter().position(|b| *b == b'{' || *b == b'[').map(|i| i + from);
                let take = end.unwrap_or(chunk.len());
                let room = max.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..take.min(room)]);
                len += take;
                r.consume(take);
                self.pos += take as u64;
                if end.is_some() {
                    break;
                }
            }
            return Ok(Some(Found { piece: Piece::Junk, len, start, element: None }));
        }
        let mut scan = Scan::new(0, self.unwrap && first == b'{');
        let (outcome, len) = self.scan(r, &mut scan, buf, max, true)?;
        match outcome {
            Outcome::Unwrap(Envelope::Records) => {
                // Past the `[`: the records follow.
                r.consume(1);
                self.pos += 1;
                self.state = State::Records { document_start: start, index: 0 };
                self.next(r, buf, max)
            }
            Outcome::Unwrap(Envelope::Detail) => {
                buf.clear();
                let at = self.pos;
                let (piece, len) = self.value(r, buf, max)?;
                self.state = if piece == Piece::Document { State::RestOfEnvelope } else { State::Top };
                let element = Some(Element { document_start: start, index: 0 });
                Ok(Some(Found { piece, len, start: at, element }))
            }
            o => Ok(Some(Found { piece: piece_of(o), len, start, element: None })),
        }
    }
}

fn piece_of(o: Outcome) -> Piece {
    match o {
        Outcome::End => Piece::Document,
        Outcome::Broken => Piece::BrokenString,
        // Unwrap is not asked for when scanning a plain value.
        Outcome::Truncated | Outcome::Unwrap(_) => Piece::Truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_with(input: &[u8], max: usize, unwrap: bool) -> Vec<(Piece, String, usize, u64, Option<Element>)> {
        // A small buffer so pieces straddle reads.
        let mut r = std::io::BufReader::with_capacity(3, input);
        let mut reader = RecordReader::new(unwrap);
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        while let Some(f) = reader.next(&mut r, &mut buf, max).unwrap() {
            assert!(buf.len() <= max && buf.len() <= f.len);
            out.push((f.piece, String::from_utf8_lossy(&buf).into_owned(), f.len, f.start, f.element));
        }
        assert_eq!(reader.pos() as usize, input.len(), "every byte accounted for");
        out
    }

    fn all(input: &[u8], max: usize) -> Vec<(Piece, String, usize, u64, Option<Element>)> {
        all_with(input, max, false)
    }

    #[test]
    fn splits_pretty_printed_documents_and_strings_with_braces() {
        let input = "{\n \"a\": \"}{\\\"\",\n \"b\": [1, {\"c\": 2}]\n}\n[1,2]{\"x\":1}";
        let got = all(input.as_bytes(), 1 << 20);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0, Piece::Document);
        assert_eq!(got[0].1, "{\n \"a\": \"}{\\\"\",\n \"b\": [1, {\"c\": 2}]\n}");
        assert_eq!((got[1].1.as_str(), got[1].3), ("[1,2]", input.find("[1,2]").unwrap() as u64));
        assert_eq!(got[2].1, "{\"x\":1}");
    }

    #[test]
    fn a_bad_document_costs_only_itself() {
        let got = all(b"{\"a\":1}\ngarbage here\n{\"b\":2}\n}{\"c\":3}\n{\"d\":", 1 << 20);
        let kinds: Vec<Piece> = got.iter().map(|g| g.0).collect();
        use Piece::*;
        assert_eq!(kinds, vec![Document, Junk, Document, Junk, Document, Truncated]);
        assert_eq!(got[1].1, "garbage here\n");
        assert_eq!(got[1].3, 8, "junk reported at its byte offset");
        assert_eq!(got[4].1, "{\"c\":3}");
    }

    #[test]
    fn an_unterminated_string_costs_only_its_line() {
        // In JSON lines, a string left open would otherwise swallow every line after it.
        let got = all(b"{\"a\":\"open}\n{\"b\":2}\n{\"c\":\"x\\\"\"}\n", 1 << 20);
        let kinds: Vec<Piece> = got.iter().map(|g| g.0).collect();
        assert_eq!(kinds, vec![Piece::BrokenString, Piece::Document, Piece::Document]);
        assert_eq!(got[0].1, "{\"a\":\"open}");
        assert_eq!(got[1].1, "{\"b\":2}");
    }

    #[test]
    fn oversize_documents_are_measured_not_held() {
        let big = format!("{{\"a\":\"{}\"}}{{\"b\":1}}", "x".repeat(10_000));
        let got = all(big.as_bytes(), 100);
        assert_eq!(got[0].1.len(), 100);
        assert_eq!(got[0].2, 10_008);
        assert_eq!(got[1].1, "{\"b\":1}");
    }

    #[test]
    fn record_envelopes_yield_each_record_with_its_index() {
        let input = br#"{"Records": [{"eventName":"A"}, {"eventName":"B","x":[1,{"y":"]"}]}, 7, {"eventName":"C"}], "other": {"Records": []}}
{"records":[{"operationName":"D"}]}
{"not":"an envelope","Records":"scalar"}"#;
        let got = all_with(input, 1 << 20, true);
        let texts: Vec<&str> = got.iter().map(|g| g.1.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                r#"{"eventName":"A"}"#,
                r#"{"eventName":"B","x":[1,{"y":"]"}]}"#,
                "7",
                r#"{"eventName":"C"}"#,
                r#"{"operationName":"D"}"#,
                r#"{"not":"an envelope","Records":"scalar"}"#,
            ]
        );
        let idx: Vec<Option<u64>> = got.iter().map(|g| g.4.map(|e| e.index)).collect();
        assert_eq!(idx, vec![Some(0), Some(1), Some(2), Some(3), Some(0), None]);
        assert_eq!(got[2].0, Piece::Junk, "a scalar record is no document");
        assert_eq!(got[1].4.unwrap().document_start, 0);
        assert_eq!(got[4].4.unwrap().document_start, input.iter().position(|b| *b == b'\n').unwrap() as u64 + 1);
        let b_at = input.windows(16).position(|w| w == br#"{"eventName":"B""#).unwrap();
        assert_eq!(got[1].3 as usize, b_at, "a record's start is its own byte offset");
        // Without unwrapping, each document is one record.
        assert_eq!(all_with(input, 1 << 20, false).len(), 3);
    }

    #[test]
    fn nested_records_keys_are_not_envelopes() {
        let input = br#"{"a": {"Records": [{"x":1},{"x":2}]}, "b": "Records"}"#;
        let got = all_with(input, 1 << 20, true);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.as_bytes(), input);
    }

    #[test]
    fn eventbridge_events_yield_their_detail() {
        let input = br#"{"version":"0","detail-type":"GuardDuty Finding","source":"aws.guardduty","detail":{"type":"Recon:EC2/PortProbeUnprotectedPort","severity":2},"region":"eu-west-1"}
{"detail":{"x":1},"detail-type":"later"}"#;
        let got = all_with(input, 1 << 20, true);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, r#"{"type":"Recon:EC2/PortProbeUnprotectedPort","severity":2}"#);
        assert_eq!(got[0].4, Some(Element { document_start: 0, index: 0 }));
        // `detail` before `detail-type`: not recognised while streaming, kept whole.
        assert!(got[1].1.starts_with(r#"{"detail":"#) && got[1].4.is_none());
    }

    #[test]
    fn a_large_envelope_streams_with_bounded_memory() {
        let mut input = String::from(r#"{"Records":["#);
        for i in 0..5_000 {
            input.push_str(&format!(r#"{{"eventName":"E{i}","pad":"{}"}},"#, "p".repeat(100)));
        }
        input.push_str(r#"{"eventName":"last"}]}"#);
        let got = all_with(input.as_bytes(), 256, true);
        assert_eq!(got.len(), 5_001);
        assert!(got.iter().all(|g| g.0 == Piece::Document && g.1.len() <= 256));
        assert_eq!(got[4_999].4.unwrap().index, 4_999);
        // One record beyond the limit: measured, cut, and the next one is whole.
        let input = format!(r#"{{"Records":[{{"big":"{}"}},{{"small":1}}]}}"#, "x".repeat(1_000));
        let got = all_with(input.as_bytes(), 64, true);
        assert_eq!((got[0].1.len(), got[0].2), (64, 1_010));
        assert_eq!(got[1].1, r#"{"small":1}"#);
    }

    #[test]
    fn a_cut_envelope_reports_where() {
        let got = all_with(br#"{"Records":[{"a":1},{"b":"#, 1 << 20, true);
        let kinds: Vec<Piece> = got.iter().map(|g| g.0).collect();
        assert_eq!(kinds, vec![Piece::Document, Piece::Truncated]);
        assert_eq!(got[1].4.unwrap().index, 1);
    }
}
