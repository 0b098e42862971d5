//! Bounds on every size and count a spec can set (docs/architecture.md §10): a value outside them fails
//! validation with the setting's name and the allowed range, instead of aborting on an
//! allocation or overflowing an offset at run time.

use crate::batch::MAX_RECORD_BYTES;

/// Checks that `value` lies in `min..=max`.
pub fn check_range(name: &str, value: u64, min: u64, max: u64) -> anyhow::Result<()> {
    if value < min || value > max {
        anyhow::bail!("`{name}` is {value}; it must be between {min} and {max}");
    }
    Ok(())
}

/// A `max_record_bytes` setting: 1 byte to [`MAX_RECORD_BYTES`] (256 MiB).
pub fn check_record_bytes(value: usize) -> anyhow::Result<()> {
    check_range("max_record_bytes", value as u64, 1, MAX_RECORD_BYTES as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_values_name_the_setting_and_the_range() {
        assert!(check_record_bytes(4 << 20).is_ok());
        let e = check_record_bytes(1 << 40).unwrap_err().to_string();
        assert!(e.contains("max_record_bytes") && e.contains("268435456"), "{e}");
        assert!(check_record_bytes(0).is_err());
    }
}

/// Deepest YAML nesting accepted in specs, packs and rule files (real ones nest under 20; a
/// 30,000-level document would overflow the parser's stack).
pub const MAX_YAML_DEPTH: usize = 128;

/// An upper bound of the nesting depth of a YAML text, found in one pass without parsing:
/// block nesting (indentation columns plus compact `- ` / `? ` markers at the start of a line)
/// plus flow nesting (`[` and `{` where a value can start, outside quotes and comments).
/// It may overestimate (one level per indentation column), never underestimate.
pub fn yaml_depth_bound(text: &str) -> usize {
    let mut flow: usize = 0;
    let mut worst: usize = 0;
    for line in text.lines() {
        let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
        let mut rest = &line[indent..];
        let mut markers = 0;
        while let Some(r) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("? ")) {
            markers += 1;
            rest = r.trim_start_matches(' ');
        }
        // Where a flow collection may open: at the start, or after `:`/`-`/`[`/`{`/`,`.
        let mut value_start = true;
        let mut quote: Option<u8> = None;
        let mut escaped = false;
        let mut prev_space = true;
        for &c in rest.as_bytes() {
            if let Some(q) = quote {
                if escaped {
                    escaped = false;
                } else if q == b'"' && c == b'\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                    value_start = false;
                }
                continue;
            }
            match c {
                b'#' if prev_space => break,
                b'\'' | b'"' if value_start => quote = Some(c),
                b'[' | b'{' if value_start || flow > 0 => {
                    flow += 1;
                    value_start = true;
                }
                b']' | b'}' if flow > 0 => {
                    flow -= 1;
                    value_start = false;
                }
                b':' | b',' | b'-' | b'?' => value_start = true,
                b' ' | b'\t' => {}
                _ => value_start = false,
            }
            prev_space = c == b' ' || c == b'\t';
            worst = worst.max(indent + markers + flow);
        }
        worst = worst.max(indent + markers + flow);
    }
    worst
}

/// Refuses a YAML text nested deeper than [`MAX_YAML_DEPTH`] (by [`yaml_depth_bound`]).
pub fn check_yaml_depth(text: &str) -> Result<(), String> {
    let d = yaml_depth_bound(text);
    if d > MAX_YAML_DEPTH {
        return Err(format!("YAML nested deeper than {MAX_YAML_DEPTH} levels (about {d}); refused before parsing"));
    }
    Ok(())
}

#[cfg(test)]
mod yaml_tests {
    use super::*;

    #[test]
    fn depth_bound_sees_flow_block_and_compact_nesting() {
        assert!(yaml_depth_bound("a: 1\nb:\n  c: [1, {d: 2}]\n") <= 6);
        assert!(yaml_depth_bound(&"[".repeat(30_000)) >= 30_000);
        assert!(yaml_depth_bound(&"- ".repeat(30_000)) >= 30_000);
        let deep_blocks: String = (0..300).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
        assert!(yaml_depth_bound(&deep_blocks) >= 299);
        // Brackets inside quotes, comments and plain scalars do not count.
        assert!(yaml_depth_bound("re: '[[[[[['\nx: \"{{{{\" # [[[[\ny: a[b[c[d\n") <= 2);
        assert!(check_yaml_depth(&"[".repeat(200)).unwrap_err().contains("deeper than 128"));
    }
}
