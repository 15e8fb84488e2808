//! Object keys (`Kind/name`) and references to another object's output: `valueFrom: {object:
//! Kind/name, output: x}` (the whole value) and `${Kind/name.x}` inside a string.

use std::fmt;

use serde_json::Value;

/// An object's identity within a control plane: its kind and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ObjKey {
    pub kind: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(kind: impl Into<String>, name: impl Into<String>) -> Self {
        ObjKey {
            kind: kind.into(),
            name: name.into(),
        }
    }

    /// Parses `Kind/name`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (kind, name) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a reference of the form Kind/name"))?;
        if !is_kind_name(kind) {
            return Err(format!(
                "`{kind}` is not a kind (kinds are PascalCase, e.g. ObjectStorageBucket)"
            ));
        }
        check_name(name)?;
        Ok(ObjKey::new(kind, name))
    }
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// Kinds are PascalCase ASCII: `ObjectStorageBucket`, `WebApp`.
pub fn is_kind_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase())
        && s.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric())
}

/// Object names are DNS labels: lowercase letters, digits and `-`, 1 to 63 characters, starting
/// and ending with a letter or digit (they end up in cloud resource and Kubernetes names).
pub fn check_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a valid name (1-63 lowercase letters, digits or '-', starting and ending with a letter or digit)"
        ))
    }
}

/// One use of another object's output somewhere in a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub target: ObjKey,
    /// The output used; `None` for a plain dependency (e.g. `runtime: KubernetesRuntime/main`).
    pub output: Option<String>,
    /// Where in the document, e.g. `spec.env[0].valueFrom`.
    pub path: String,
    /// The kind the field requires, when it requires one.
    pub expected_kind: Option<&'static str>,
    /// Whether the value is spliced into a string (secrets may not be).
    pub interpolated: bool,
}

/// Finds every `valueFrom` and `${...}` reference in `value` (paths start at `path`).
pub fn collect(value: &Value, path: &str, out: &mut Vec<Reference>) -> Result<(), String> {
    match value {
        Value::String(s) => {
            for (target, output) in interpolations(s).map_err(|e| format!("{path}: {e}"))? {
                out.push(Reference {
                    target,
                    output: Some(output),
                    path: path.to_owned(),
                    expected_kind: None,
                    interpolated: true,
                });
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect(item, &format!("{path}[{i}]"), out)?;
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let here = format!("{path}.{k}");
                if k == "valueFrom" {
                    let (target, output) = value_from(v).map_err(|e| format!("{here}: {e}"))?;
                    out.push(Reference {
                        target,
                        output: Some(output),
                        path: here,
                        expected_kind: None,
                        interpolated: false,
                    });
                } else {
                    collect(v, &here, out)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Parses `{object: Kind/name, output: x}`.
pub fn value_from(v: &Value) -> Result<(ObjKey, String), String> {
    let map = v
        .as_object()
        .ok_or("expected {object: Kind/name, output: NAME}")?;
    if let Some(extra) = map.keys().find(|k| *k != "object" && *k != "output") {
        return Err(format!(
            "unknown field `{extra}`, expected `object` and `output`"
        ));
    }
    let object = map
        .get("object")
        .and_then(Value::as_str)
        .ok_or("missing `object` (Kind/name)")?;
    let output = map
        .get("output")
        .and_then(Value::as_str)
        .ok_or("missing `output`")?;
    check_output_name(output)?;
    Ok((ObjKey::parse(object)?, output.to_owned()))
}

fn check_output_name(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    if matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric())
    {
        Ok(())
    } else {
        Err(format!("`{s}` is not an output name"))
    }
}

/// The `${Kind/name.output}` references in a string. `${params.x}` and `${instance.name}` are
/// composition parameters, expanded earlier, and not references.
pub fn interpolations(s: &str) -> Result<Vec<(ObjKey, String)>, String> {
    let mut found = Vec::new();
    placeholders(s, |inner| {
        if !(inner.starts_with("params.") || inner.starts_with("instance.")) {
            found.push(parse_interpolation(inner)?);
        }
        Ok(None)
    })?;
    Ok(found)
}

/// Rewrites each `${...}` in `s` with what `f` answers for its inside (`None` keeps it as it
/// is). The one scanner for references and composition parameters.
pub fn placeholders(
    s: &str,
    mut f: impl FnMut(&str) -> Result<Option<String>, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in `{s}`"))?;
        let inner = &after[..end];
        match f(inner)? {
            Some(v) => out.push_str(&v),
            None => {
                out.push_str("${");
                out.push_str(inner);
                out.push('}');
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn parse_interpolation(inner: &str) -> Result<(ObjKey, String), String> {
    let (object, output) = inner.rsplit_once('.').ok_or_else(|| {
        format!("`${{{inner}}}` is not a reference of the form ${{Kind/name.output}}")
    })?;
    check_output_name(output)?;
    Ok((ObjKey::parse(object)?, output.to_owned()))
}

/// Replaces every reference in `value` with the output `lookup` finds. A whole `{valueFrom:
/// ...}` object becomes the output value itself; `${...}` splices the output as text.
pub fn render(
    value: &Value,
    lookup: &dyn Fn(&ObjKey, &str) -> Option<Value>,
) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => Value::String(splice(s, lookup)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render(v, lookup))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) if map.len() == 1 && map.contains_key("valueFrom") => {
            let (target, output) = value_from(&map["valueFrom"])?;
            lookup(&target, &output)
                .ok_or_else(|| format!("{target} has no output `{output}` yet"))?
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render(v, lookup)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn splice(s: &str, lookup: &dyn Fn(&ObjKey, &str) -> Option<Value>) -> Result<String, String> {
    placeholders(s, |inner| {
        let (target, output) = parse_interpolation(inner)?;
        match lookup(&target, &output) {
            Some(Value::String(v)) => Ok(Some(v)),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(_) => Err(format!("{target}.{output} is not text")),
            None => Err(format!("{target} has no output `{output}` yet")),
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn keys_parse_and_refuse_bad_ones() {
        assert_eq!(
            ObjKey::parse("ObjectStorageBucket/assets"),
            Ok(ObjKey::new("ObjectStorageBucket", "assets"))
        );
        assert!(ObjKey::parse("bucket/assets").is_err());
        assert!(ObjKey::parse("ObjectStorageBucket/Assets").is_err());
        assert!(ObjKey::parse("ObjectStorageBucket").is_err());
        assert!(ObjKey::parse("ObjectStorageBucket/-a").is_err());
    }

    #[test]
    fn references_are_collected_with_their_paths() {
        let spec = json!({
            "env": [{"name": "B", "valueFrom": {"object": "ObjectStorageBucket/assets", "output": "name"}}],
            "manifests": "host: ${RelationalDatabase/db.host}:${RelationalDatabase/db.port} ${params.x}",
        });
        let mut refs = Vec::new();
        collect(&spec, "spec", &mut refs).expect("collect");
        let found: Vec<_> = refs
            .iter()
            .map(|r| {
                (
                    r.target.to_string(),
                    r.output.clone().unwrap_or_default(),
                    r.path.clone(),
                    r.interpolated,
                )
            })
            .collect();
        assert_eq!(
            found,
            vec![
                (
                    "ObjectStorageBucket/assets".into(),
                    "name".into(),
                    "spec.env[0].valueFrom".into(),
                    false
                ),
                (
                    "RelationalDatabase/db".into(),
                    "host".into(),
                    "spec.manifests".into(),
                    true
                ),
                (
                    "RelationalDatabase/db".into(),
                    "port".into(),
                    "spec.manifests".into(),
                    true
                ),
            ]
        );
    }

    #[test]
    fn malformed_references_say_where() {
        let mut refs = Vec::new();
        let err = collect(&json!({"a": "${oops"}), "spec", &mut refs).expect_err("bad");
        assert!(err.starts_with("spec.a: unterminated"), "{err}");
        let err = collect(
            &json!({"a": {"valueFrom": {"object": "X/y"}}}),
            "spec",
            &mut refs,
        )
        .expect_err("bad");
        assert_eq!(err, "spec.a.valueFrom: missing `output`");
    }

    #[test]
    fn render_splices_text_and_replaces_whole_values() {
        let lookup = |k: &ObjKey, o: &str| match (k.to_string().as_str(), o) {
            ("RelationalDatabase/db", "host") => Some(json!("db.internal")),
            ("RelationalDatabase/db", "port") => Some(json!(5432)),
            _ => None,
        };
        let out = render(
            &json!({"url": "pg://${RelationalDatabase/db.host}:${RelationalDatabase/db.port}/x",
                    "port": {"valueFrom": {"object": "RelationalDatabase/db", "output": "port"}}}),
            &lookup,
        )
        .expect("render");
        assert_eq!(out, json!({"url": "pg://db.internal:5432/x", "port": 5432}));
        assert!(render(&json!("${RelationalDatabase/db.user}"), &lookup).is_err());
    }
}
