//! JSON values shown as YAML, the language objects are written in. Block style, two-space
//! indent; strings are quoted (as JSON, which YAML reads) whenever a plain scalar could be
//! misread, and multi-line strings (manifests, scripts) become literal blocks.

use serde_json::Value;

/// `value` as a YAML document (no leading `---`, ends with a newline unless empty).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => write_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_seq(&mut out, items, 0),
        scalar => {
            write_scalar(&mut out, scalar, 0);
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, level: usize) {
    out.extend(std::iter::repeat_n(' ', level * 2));
}

fn write_map(out: &mut String, map: &serde_json::Map<String, Value>, level: usize) {
    for (i, (key, value)) in map.iter().enumerate() {
        // The first key of a map inside a sequence item follows the `- ` already written.
        if i > 0 || !out.ends_with("- ") {
            indent(out, level);
        }
        out.push_str(&scalar_text(key));
        out.push(':');
        write_value_after_key(out, value, level);
    }
}

fn write_seq(out: &mut String, items: &[Value], level: usize) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 || !out.ends_with("- ") {
            indent(out, level);
        }
        out.push_str("- ");
        match item {
            Value::Object(map) if !map.is_empty() => write_map(out, map, level + 1),
            Value::Array(inner) if !inner.is_empty() => write_seq(out, inner, level + 1),
            scalar => {
                write_scalar(out, scalar, level + 1);
                out.push('\n');
            }
        }
    }
}

fn write_value_after_key(out: &mut String, value: &Value, level: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_map(out, map, level + 1);
        }
        // Sequences under a key are not indented further, as kubectl writes them.
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_seq(out, items, level);
        }
        scalar => {
            out.push(' ');
            write_scalar(out, scalar, level + 1);
            out.push('\n');
        }
    }
}

/// A scalar (or empty collection); multi-line strings as a literal block indented at `level`.
fn write_scalar(out: &mut String, value: &Value, level: usize) {
    match value {
        Value::String(s) if is_block(s) => {
            let body = s.strip_suffix('\n').unwrap_or(s);
            out.push_str(if s.ends_with('\n') { "|" } else { "|-" });
            for line in body.split('\n') {
                out.push('\n');
                if !line.is_empty() {
                    indent(out, level);
                    out.push_str(line);
                }
            }
        }
        Value::String(s) => out.push_str(&scalar_text(s)),
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
        other => out.push_str(&other.to_string()),
    }
}

/// Whether a string reads back exactly from a literal block.
fn is_block(s: &str) -> bool {
    s.contains('\n')
        && !s.ends_with("\n\n")
        && !s.starts_with([' ', '\n'])
        && !s.chars().any(|c| c.is_control() && c != '\n')
        && !s.split('\n').any(|line| line.ends_with(' '))
}

/// A string as a plain scalar when that reads back as the same string, else JSON-quoted.
fn scalar_text(s: &str) -> String {
    if is_plain(s) {
        s.to_owned()
    } else {
        Value::String(s.to_owned()).to_string()
    }
}

fn is_plain(s: &str) -> bool {
    const RESERVED: &[&str] = &[
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~",
    ];
    let Some(first) = s.chars().next() else {
        return false;
    };
    !RESERVED.contains(&s.to_ascii_lowercase().as_str())
        && !s.starts_with(|c: char| c.is_ascii_digit() || "-+.?:,[]{}#&*!|>'\"%@` ".contains(c))
        && !s.ends_with([' ', ':'])
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.chars().any(|c| c.is_control())
        && first != '\u{feff}'
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn maps_and_sequences_nest_in_block_style() {
        // Keys in order: serde_json may or may not keep insertion order.
        let value = json!({
            "account": "AwsAccount/main",
            "empty": {},
            "env": [{"name": "BUCKET", "valueFrom": {"object": "ObjectStorageBucket/assets", "output": "name"}}],
            "none": null,
            "size": 20,
            "tags": ["a", "b"],
            "versioning": true
        });
        assert_eq!(
            to_yaml(&value),
            "account: AwsAccount/main\n\
             empty: {}\n\
             env:\n\
             - name: BUCKET\n  \
               valueFrom:\n    \
                 object: ObjectStorageBucket/assets\n    \
                 output: name\n\
             none: null\n\
             size: 20\n\
             tags:\n\
             - a\n\
             - b\n\
             versioning: true\n"
        );
    }

    #[test]
    fn strings_that_would_read_as_something_else_are_quoted() {
        assert_eq!(to_yaml(&json!({"v": "true"})), "v: \"true\"\n");
        assert_eq!(to_yaml(&json!({"v": "15"})), "v: \"15\"\n");
        assert_eq!(to_yaml(&json!({"v": ""})), "v: \"\"\n");
        assert_eq!(to_yaml(&json!({"v": "a: b"})), "v: \"a: b\"\n");
        assert_eq!(
            to_yaml(&json!({"v": "${ObjectStorageBucket/assets.name}"})),
            "v: ${ObjectStorageBucket/assets.name}\n"
        );
        assert_eq!(to_yaml(&json!({"a key": 1})), "a key: 1\n");
        assert_eq!(to_yaml(&json!({"-x": 1})), "\"-x\": 1\n");
    }

    #[test]
    fn multi_line_strings_become_literal_blocks() {
        let value = json!({"manifests": "kind: Service\nmetadata:\n  name: web\n"});
        assert_eq!(
            to_yaml(&value),
            "manifests: |\n  kind: Service\n  metadata:\n    name: web\n"
        );
        assert_eq!(to_yaml(&json!({"s": "a\n\nb"})), "s: |-\n  a\n\n  b\n");
        // Trailing spaces would be lost in a block: quoted instead.
        assert_eq!(to_yaml(&json!({"s": "a \nb"})), "s: \"a \\nb\"\n");
    }

    #[test]
    fn scalars_and_empty_documents() {
        assert_eq!(to_yaml(&json!(null)), "null\n");
        assert_eq!(to_yaml(&json!({})), "{}\n");
        assert_eq!(to_yaml(&json!([[1, 2], []])), "- - 1\n  - 2\n- []\n");
    }
}
