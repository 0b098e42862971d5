//! Streaming split of concatenated JSON documents (`framing: json_documents`, e.g. EVTX
//! exports pretty-printed one after another), with the limits of line framing.
//!
//! The reader finds where each top-level `{…}` or `[…]` ends by tracking nesting outside
//! strings, one pass over the bytes, keeping at most `max_record_bytes` of a document. It does
//! not validate JSON (parse does, per record), so one broken document costs only itself: text
//! between documents is reported as junk, a document longer than the limit as oversize, a
//! document cut off by the end of the file as truncated, and reading goes on with the next.

use std::io::BufRead;

/// What [`read_document`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// A balanced top-level object or array.
    Document,
    /// Bytes that do not start a document (up to the next `{` or `[`).
    Junk,
    /// A document the end of the input cut off.
    Truncated,
}

/// One piece of the stream: its kind, its length (all of it, also beyond what was kept) and
/// the byte offset it starts at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    pub piece: Piece,
    pub len: usize,
    pub start: u64,
}

/// Reads the next piece into `buf` (at most `max` bytes of it kept); `pos` is the byte offset
/// in the stream, advanced past what was read. `None` at the end of the input.
pub fn read_document(
    r: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    max: usize,
    pos: &mut u64,
) -> std::io::Result<Option<Found>> {
    buf.clear();
    // Skip white space (and a UTF-8 byte-order mark) between documents.
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(None);
        }
        let n = chunk.len();
        let skip = chunk.iter().take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0xEF | 0xBB | 0xBF)).count();
        r.consume(skip);
        *pos += skip as u64;
        if skip < n {
            break;
        }
    }
    let start = *pos;
    let first = r.fill_buf()?[0];
    let mut len = 0usize;
    let keep = |buf: &mut Vec<u8>, bytes: &[u8]| {
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    };
    if first != b'{' && first != b'[' {
        // Junk: up to (not including) the next byte that could start a document.
        loop {
            let chunk = r.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            let from = if len == 0 { 1 } else { 0 };
            let end = chunk[from..].iter().position(|b| *b == b'{' || *b == b'[').map(|i| i + from);
            let take = end.unwrap_or(chunk.len());
            keep(buf, &chunk[..take]);
            len += take;
            r.consume(take);
            *pos += take as u64;
            if end.is_some() {
                break;
            }
        }
        return Ok(Some(Found { piece: Piece::Junk, len, start }));
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(Some(Found { piece: Piece::Truncated, len, start }));
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
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = Some(i + 1);
                        break;
                    }
                }
                _ => {}
            }
        }
        let take = end.unwrap_or(chunk.len());
        keep(buf, &chunk[..take]);
        len += take;
        r.consume(take);
        *pos += take as u64;
        if end.is_some() {
            return Ok(Some(Found { piece: Piece::Document, len, start }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], max: usize) -> Vec<(Piece, String, usize, u64)> {
        // A small buffer so pieces straddle reads.
        let mut r = std::io::BufReader::with_capacity(3, input);
        let (mut buf, mut pos, mut out) = (Vec::new(), 0u64, Vec::new());
        while let Some(f) = read_document(&mut r, &mut buf, max, &mut pos).unwrap() {
            out.push((f.piece, String::from_utf8_lossy(&buf).into_owned(), f.len, f.start));
        }
        assert_eq!(pos as usize, input.len(), "every byte accounted for");
        out
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
    fn oversize_documents_are_measured_not_held() {
        let big = format!("{{\"a\":\"{}\"}}{{\"b\":1}}", "x".repeat(10_000));
        let got = all(big.as_bytes(), 100);
        assert_eq!(got[0].1.len(), 100);
        assert_eq!(got[0].2, 10_008);
        assert_eq!(got[1].1, "{\"b\":1}");
    }
}
