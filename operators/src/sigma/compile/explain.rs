//! How `ward rules explain` shows a lowered rule: one line per atom, an indented tree per
//! expression.

use super::{AtomSpec, Expr};
use crate::sigma::values::Anchor;

impl AtomSpec {
    /// One line for `ward rules explain`.
    pub fn describe(&self) -> String {
        let f = self.field().display();
        let case = |cased: &bool| if *cased { "cased" } else { "any case" };
        match self {
            AtomSpec::Literal { pattern, anchor, cased, .. } => {
                let how = match anchor {
                    Anchor::Whole => "equals",
                    Anchor::Start => "starts with",
                    Anchor::End => "ends with",
                    Anchor::Anywhere => "contains",
                };
                format!("{f} {how} {} ({}, automaton)", show_bytes(pattern), case(cased))
            }
            AtomSpec::Glob { shown, gate, .. } => match gate {
                Some((g, cased)) => {
                    format!("{f} matches {shown} (regex, checked when {} occurs, {})", show_bytes(g), case(cased))
                }
                None => format!("{f} matches {shown} (regex, evaluated on demand)"),
            },
            AtomSpec::Regex { regex, .. } => {
                format!("{f} matches regex {:?} (on demand; {})", regex.as_str(), regex.engine())
            }
            AtomSpec::Cidr { net, .. } => format!("{f} in {net}"),
            AtomSpec::Compare { op, value, part, .. } => match part {
                Some(p) => format!("{p:?}({f}) {op:?} {value}"),
                None => format!("{f} {op:?} {value}"),
            },
            AtomSpec::Exists { .. } => format!("{f} exists"),
            AtomSpec::Null { .. } => format!("{f} is absent or empty"),
            AtomSpec::FieldRef { other, anchor, cased, .. } => {
                format!("{f} {anchor:?} the value of {} ({})", other.display(), case(cased))
            }
        }
    }
}

impl Expr {
    /// An indented tree for `ward rules explain`.
    pub fn render(&self, indent: usize, out: &mut String) {
        let pad = "  ".repeat(indent);
        match self {
            Expr::True => out.push_str(&format!("{pad}true\n")),
            Expr::False => out.push_str(&format!("{pad}false\n")),
            Expr::Atom(a) => out.push_str(&format!("{pad}{}\n", a.describe())),
            Expr::Not(x) => {
                out.push_str(&format!("{pad}not\n"));
                x.render(indent + 1, out);
            }
            Expr::And(xs) | Expr::Or(xs) | Expr::AtLeast(_, xs) => {
                let name = match self {
                    Expr::And(_) => "all of".to_string(),
                    Expr::Or(_) => "any of".to_string(),
                    Expr::AtLeast(n, _) => format!("at least {n} of"),
                    _ => unreachable!(),
                };
                out.push_str(&format!("{pad}{name}\n"));
                for x in xs {
                    x.render(indent + 1, out);
                }
            }
        }
    }
}

fn show_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("0x{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
    }
}
