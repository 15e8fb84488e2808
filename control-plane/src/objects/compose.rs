//! Compositions: a tenant-defined kind declared as data. An instance's parameters are checked
//! against the composition, then its template expands to ordinary objects the instance owns.

use serde_json::{Map, Value};

use super::kinds::CompositionSpec;
use super::refs::ObjKey;

/// One object an instance expands to.
#[derive(Debug, Clone, PartialEq)]
pub struct Expanded {
    pub key: ObjKey,
    pub spec: Value,
}

/// Checks an instance's parameters, filling in defaults. Errors name the field.
pub fn parameters(def: &CompositionSpec, spec: &Value) -> Result<Map<String, Value>, String> {
    let given = match spec {
        Value::Null => Map::new(),
        Value::Object(m) => m.clone(),
        _ => return Err("spec: must be a map of parameters".into()),
    };
    if let Some(unknown) = given.keys().find(|k| !def.parameters.contains_key(*k)) {
        let known: Vec<&str> = def.parameters.keys().map(String::as_str).collect();
        return Err(format!(
            "spec.{unknown}: unknown parameter ({} takes: {})",
            def.kind,
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ));
    }
    let mut out = Map::new();
    for (name, p) in &def.parameters {
        let value = match (given.get(name), &p.default) {
            (Some(v), _) => v.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => return Err(format!("spec.{name}: required ({})", p.ty.name())),
        };
        if !p.ty.accepts(&value) {
            return Err(format!("spec.{name}: expected a {}", p.ty.name()));
        }
        out.insert(name.clone(), value);
    }
    Ok(out)
}

/// Expands an instance named `instance` with checked `params`.
pub fn expand(
    def: &CompositionSpec,
    instance: &str,
    params: &Map<String, Value>,
) -> Result<Vec<Expanded>, String> {
    let mut out = Vec::new();
    for (i, r) in def.resources.iter().enumerate() {
        let at = format!("spec.resources[{i}]");
        let name = match substitute(&Value::String(r.name.clone()), instance, params)
            .map_err(|e| format!("{at}.name: {e}"))?
        {
            Value::String(s) => s,
            _ => return Err(format!("{at}.name: must expand to text")),
        };
        super::refs::check_name(&name).map_err(|e| format!("{at}.name: {e}"))?;
        let spec = substitute(&r.spec, instance, params).map_err(|e| format!("{at}.spec: {e}"))?;
        let key = ObjKey::new(r.kind.clone(), name);
        if out.iter().any(|e: &Expanded| e.key == key) {
            return Err(format!("{at}: {key} appears twice in the expansion"));
        }
        out.push(Expanded { key, spec });
    }
    Ok(out)
}

/// The instance's outputs from its owned objects' outputs.
pub fn outputs(
    def: &CompositionSpec,
    instance: &str,
    params: &Map<String, Value>,
    lookup: &dyn Fn(&ObjKey, &str) -> Option<Value>,
) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (name, template) in &def.outputs {
        let t = substitute(&Value::String(template.clone()), instance, params)?;
        out.insert(name.clone(), super::refs::render(&t, lookup)?);
    }
    Ok(out)
}

/// Replaces `${instance.name}` and `${params.x}`. A string that is exactly one `${params.x}`
/// takes the parameter's type (so `replicas: ${params.replicas}` stays a number).
fn substitute(v: &Value, instance: &str, params: &Map<String, Value>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => {
            if let Some(name) = s
                .strip_prefix("${params.")
                .and_then(|r| r.strip_suffix('}'))
                .filter(|n| !n.contains('}'))
            {
                return params
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("`${{params.{name}}}` is not a parameter"));
            }
            Value::String(splice(s, instance, params)?)
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| substitute(x, instance, params))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| Ok((k.clone(), substitute(x, instance, params)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn splice(s: &str, instance: &str, params: &Map<String, Value>) -> Result<String, String> {
    // First, so it may sit inside a reference: `${Kind/${instance.name}-db.host}`.
    let s = s.replace("${instance.name}", instance);
    super::refs::placeholders(&s, |inner| {
        if let Some(p) = inner.strip_prefix("params.") {
            match params.get(p) {
                Some(Value::String(v)) => Ok(Some(v.clone())),
                Some(other) => Ok(Some(other.to_string())),
                None => Err(format!("`${{params.{p}}}` is not a parameter")),
            }
        } else if let Some(other) = inner.strip_prefix("instance.") {
            Err(format!(
                "`${{instance.{other}}}` is unknown (only instance.name)"
            ))
        } else {
            // An object reference, resolved when the owned object is reconciled.
            Ok(None)
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::objects::kinds::parse_spec;

    fn webapp() -> CompositionSpec {
        parse_spec(&json!({
            "kind": "WebApp",
            "parameters": {
                "image": {"type": "string"},
                "replicas": {"type": "integer", "default": 2},
            },
            "resources": [
                {"kind": "ObjectStorageBucket", "name": "${instance.name}-assets", "spec": {"account": "AwsAccount/main"}},
                {"kind": "Workload", "name": "${instance.name}", "spec": {
                    "runtime": "KubernetesRuntime/main", "namespace": "${instance.name}",
                    "manifests": "image: ${params.image}\nreplicas: ${params.replicas}",
                    "env": [{"name": "BUCKET", "valueFrom": {"object": "ObjectStorageBucket/${instance.name}-assets", "output": "name"}}],
                    "replicas": "${params.replicas}",
                }},
            ],
            "outputs": {"bucket": "${ObjectStorageBucket/${instance.name}-assets.name}"},
        }))
        .expect("composition")
    }

    #[test]
    fn parameters_are_typed_defaulted_and_named_in_errors() {
        let def = webapp();
        let p = parameters(&def, &json!({"image": "shop:1"})).expect("ok");
        assert_eq!(p["replicas"], json!(2));
        assert_eq!(
            parameters(&def, &json!({})),
            Err("spec.image: required (string)".into())
        );
        assert_eq!(
            parameters(&def, &json!({"image": 3})),
            Err("spec.image: expected a string".into())
        );
        assert_eq!(
            parameters(&def, &json!({"image": "x", "size": 1})),
            Err("spec.size: unknown parameter (WebApp takes: image, replicas)".into())
        );
    }

    #[test]
    fn an_instance_expands_to_named_objects_with_typed_parameters() {
        let def = webapp();
        let p = parameters(&def, &json!({"image": "shop:1", "replicas": 3})).expect("ok");
        let objs = expand(&def, "shop", &p).expect("expand");
        assert_eq!(
            objs[0].key,
            ObjKey::new("ObjectStorageBucket", "shop-assets")
        );
        assert_eq!(objs[1].key, ObjKey::new("Workload", "shop"));
        assert_eq!(objs[1].spec["replicas"], json!(3));
        assert_eq!(
            objs[1].spec["manifests"],
            json!("image: shop:1\nreplicas: 3")
        );
        assert_eq!(
            objs[1].spec["env"][0]["valueFrom"]["object"],
            json!("ObjectStorageBucket/shop-assets")
        );
    }
}
