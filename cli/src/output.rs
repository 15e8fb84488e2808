//! Output: human tables by default, `-o json` / `-o yaml` for machines (the same data either
//! way, as the API returned it), colour only on a terminal and without `NO_COLOR`.

use std::io::IsTerminal as _;

use serde_json::Value;

/// `-o table|json|yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// A column: its header and where its value is in each row (a JSON pointer).
pub type Column<'a> = (&'a str, &'a str);

/// Prints `value` in `format`; a table has a row per element of `rows` (an array inside
/// `value`, or `value` itself).
pub fn print(format: Format, value: &Value, rows: &Value, columns: &[Column<'_>]) {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Format::Yaml => print!("{}", yaml(value)),
        Format::Table => print!("{}", table(rows, columns)),
    }
}

/// Prints a machine-readable `value`, or `human` for a table.
pub fn print_or(format: Format, value: &Value, human: &str) {
    match format {
        Format::Table => {
            if !human.is_empty() {
                println!("{human}");
            }
        }
        _ => print(format, value, &Value::Null, &[]),
    }
}

/// A cell: strings as they are, null as `-`, anything else as compact JSON.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An aligned text table; an empty list prints `No resources found.`-style nothing-line.
pub fn table(rows: &Value, columns: &[Column<'_>]) -> String {
    let rows: Vec<&Value> = match rows {
        Value::Array(a) => a.iter().collect(),
        Value::Null => Vec::new(),
        other => vec![other],
    };
    let mut grid: Vec<Vec<String>> = vec![columns.iter().map(|c| c.0.to_owned()).collect()];
    for row in &rows {
        grid.push(
            columns
                .iter()
                .map(|(_, ptr)| cell(row.pointer(ptr).unwrap_or(&Value::Null)))
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| grid.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &grid {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == row.len() {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    out
}

/// YAML for a JSON value: block style, strings quoted when plain YAML would misread them,
/// multi-line strings as `|` blocks.
pub fn yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(m) if !m.is_empty() => yaml_map(m, 0, &mut out),
        Value::Array(a) if !a.is_empty() => yaml_seq(a, 0, &mut out),
        other => {
            out.push_str(&scalar(other, 0));
            out.push('\n');
        }
    }
    out
}

fn yaml_map(m: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    for (k, v) in m {
        out.push_str(&" ".repeat(indent));
        out.push_str(&key(k));
        out.push(':');
        yaml_child(v, indent, out);
    }
}

fn yaml_seq(a: &[Value], indent: usize, out: &mut String) {
    for v in a {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match v {
            Value::Object(m) if !m.is_empty() => {
                // The first key shares the dash's line.
                let mut inner = String::new();
                yaml_map(m, indent + 2, &mut inner);
                out.push(' ');
                out.push_str(&inner[indent + 2..]);
            }
            _ => yaml_child(v, indent, out),
        }
    }
}

fn yaml_child(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            yaml_map(m, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            yaml_seq(a, indent + 2, out);
        }
        other => {
            out.push(' ');
            out.push_str(&scalar(other, indent + 2));
            out.push('\n');
        }
    }
}

fn key(k: &str) -> String {
    if plain_ok(k) {
        k.to_owned()
    } else {
        serde_json::to_string(k).unwrap_or_default()
    }
}

fn scalar(v: &Value, indent: usize) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        Value::String(s) if s.contains('\n') && !s.contains('\r') => {
            let chomp = if s.ends_with('\n') { "" } else { "-" };
            let pad = " ".repeat(indent);
            let body: Vec<String> = s
                .trim_end_matches('\n')
                .split('\n')
                .map(|l| {
                    if l.is_empty() {
                        String::new()
                    } else {
                        format!("{pad}{l}")
                    }
                })
                .collect();
            if s.starts_with(' ') {
                serde_json::to_string(s).unwrap_or_default()
            } else {
                format!("|{chomp}\n{}", body.join("\n"))
            }
        }
        Value::String(s) if plain_ok(s) => s.clone(),
        Value::String(s) => serde_json::to_string(s).unwrap_or_default(),
        other => other.to_string(),
    }
}

/// Whether a string can be written unquoted and read back as the same string.
fn plain_ok(s: &str) -> bool {
    let reserved = [
        "", "~", "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE", "yes",
        "Yes", "no", "No", "on", "On", "off", "Off", "y", "n", "Y", "N",
    ];
    if reserved.contains(&s) || s.parse::<f64>().is_ok() || s.starts_with(['0', '+', '.']) {
        return false;
    }
    let first_ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '/');
    first_ok
        && !s.ends_with(' ')
        && !s.contains(": ")
        && !s.contains(" #")
        && s.chars().all(|c| {
            c.is_alphanumeric() || " _-./@:()=+,".contains(c) || (!c.is_ascii() && !c.is_control())
        })
}

/// Whether to colour stdout: a terminal, and no `NO_COLOR`.
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Wraps `s` in an ANSI colour when `on`.
pub fn paint(on: bool, code: &str, s: &str) -> String {
    if on {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_owned()
    }
}

/// A line diff of `before` → `after` (`similar`'s Myers diff, which gives up on finding the
/// smallest diff after a second on pathological input): ` ` kept, `-` gone, `+` new; a changed
/// line reads as its old version, then its new one.
pub fn line_diff(before: &str, after: &str) -> Vec<(char, String)> {
    let diff = similar::TextDiff::configure()
        .timeout(std::time::Duration::from_secs(1))
        .diff_lines(before, after);
    diff.iter_all_changes()
        .map(|change| {
            let sign = match change.tag() {
                similar::ChangeTag::Equal => ' ',
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
            };
            let line = change.value();
            let line = line.strip_suffix('\n').unwrap_or(line);
            (sign, line.strip_suffix('\r').unwrap_or(line).to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_and_show_missing_values_as_dashes() {
        let rows = json!([{"name": "acme", "role": "OWNER"}, {"name": "b", "role": null}]);
        assert_eq!(
            table(&rows, &[("NAME", "/name"), ("ROLE", "/role")]),
            "NAME  ROLE\nacme  OWNER\nb     -\n"
        );
        assert_eq!(table(&json!([]), &[("NAME", "/name")]), "NAME\n(none)\n");
    }

    #[test]
    fn yaml_quotes_what_would_be_misread_and_reads_back_the_same() {
        let v = json!({
            "name": "web", "accountId": "123456789012", "flag": "true", "n": 3, "none": null,
            "list": [{"a": 1, "b": "x: y"}, "plain"], "empty": {}, "text": "line 1\nline 2\n",
            "colon": "a:b",
        });
        let text = yaml(&v);
        assert!(text.contains("accountId: \"123456789012\""), "{text}");
        assert!(text.contains("flag: \"true\""), "{text}");
        assert!(text.contains("text: |\n  line 1\n  line 2\n"), "{text}");
        let back: Value = serde_saphyr::from_str(&text).expect("valid yaml");
        assert_eq!(back, v, "{text}");
    }

    #[test]
    fn line_diffs_keep_common_lines() {
        let d = line_diff("a\nb\nc\n", "a\nx\nc\n");
        assert_eq!(
            d,
            vec![
                (' ', "a".into()),
                ('-', "b".into()),
                ('+', "x".into()),
                (' ', "c".into())
            ]
        );
    }
}
