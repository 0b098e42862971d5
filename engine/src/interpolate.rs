//! Environment variables in pipeline specs: `${NAME}`, `${NAME:-default}` (the default when NAME
//! is unset or empty) and `${NAME-default}` (only when unset) are replaced before the YAML is read, so one spec file serves every environment (brokers, URLs and directories
//! from the pod's environment on Kubernetes, from the test harness in CI). `$$` is a literal `$`;
//! a `$` not followed by `{` or `$` stays as it is. Full-line comments are left alone.

/// A variable that could not be replaced: 1-based line and column of its `$`.
#[derive(Debug, PartialEq, Eq)]
pub struct InterpolationError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Replaces the variables in `text`, looking each up with `lookup`. One pass over the text;
/// values may not contain line breaks (they would move every later line of the spec and could
/// change its structure).
pub fn interpolate(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Vec<InterpolationError>> {
    if !text.contains('$') {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        let mut column = 1;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            column += rest[..at].chars().count();
            let tail = &rest[at..];
            let err = |message: String| InterpolationError { line: n + 1, column, message };
            if tail.starts_with("$$") {
                out.push('$');
                rest = &tail[2..];
                column += 2;
                continue;
            }
            if !tail.starts_with("${") {
                out.push('$');
                rest = &tail[1..];
                column += 1;
                continue;
            }
            let Some(end) = tail.find('}') else {
                errors.push(err("`${` without a closing `}`".into()));
                out.push_str(tail);
                break;
            };
            let body = &tail[2..end];
            let (name, default, empty_is_unset) = match body.split_once(":-") {
                Some((name, default)) => (name, Some(default), true),
                None => match body.split_once('-') {
                    Some((name, default)) => (name, Some(default), false),
                    None => (body, None, false),
                },
            };
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                errors.push(err(format!(
                    "`${{{}}}` is not a variable: write ${{NAME}} or ${{NAME:-default}} (NAME of letters, digits, _), \
                     or $$ for a literal $",
                    crate::text::escape_text(body)
                )));
            } else {
                match (lookup(name).filter(|v| !(empty_is_unset && v.is_empty())), default) {
                    (Some(v), _) if v.contains(['\n', '\r']) => {
                        errors.push(err(format!("environment variable {name} contains a line break")))
                    }
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => errors.push(err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                    ))),
                }
            }
            column += tail[..=end].chars().count();
            rest = &tail[end + 1..];
        }
        out.push_str(rest);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "BROKERS" => Some("127.0.0.1:9092".into()),
            "EMPTY" => Some(String::new()),
            "MULTI" => Some("a\nb: c".into()),
            _ => None,
        }
    }

    #[test]
    fn variables_defaults_and_literal_dollars() {
        let text = "a: ${BROKERS}\nb: ${MISSING:-out/x}\nc: ${EMPTY:-d}\n# ${NOT_SET} in a comment\ne: '^x$' $$5\n\
                    f: '${EMPTY-unset only}' ${MISSING-y} '${EMPTY}'\n";
        assert_eq!(
            interpolate(text, env).unwrap(),
            "a: 127.0.0.1:9092\nb: out/x\nc: d\n# ${NOT_SET} in a comment\ne: '^x$' $5\nf: '' y ''\n"
        );
        assert_eq!(interpolate("no variables", env).unwrap(), "no variables");
    }

    #[test]
    fn unset_malformed_and_multiline_values_are_errors_with_their_position() {
        let errors = interpolate("a: 1\nb: x ${NOPE} ${9x} ${MULTI}\nc: ${open\n", env).unwrap_err();
        let got: Vec<(usize, usize)> = errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(got, [(2, 6), (2, 14), (2, 20), (3, 4)], "{errors:?}");
        assert!(errors[0].message.contains("NOPE is not set"));
        assert!(errors[1].message.contains("not a variable"));
        assert!(errors[2].message.contains("line break"));
        assert!(errors[3].message.contains("closing"));
    }
}
