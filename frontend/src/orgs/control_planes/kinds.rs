//! `/orgs/:slug/control-planes/:id/kinds`: the field reference, as the control plane serves it
//! (`kinds { name schema fields outputs }`): every kind's spec fields with their description
//! (from the JSON Schema generated from the Rust types), what changing each one does, the
//! kind's outputs, and the schema itself.

use leptos::prelude::*;
use leptos_meta::Title;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::detail_path;
use super::objects::use_cp_id;
use crate::components::{ErrorBox, Loading, Refresh};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KindDoc {
    pub name: String,
    pub schema: Value,
    pub fields: Vec<FieldDoc>,
    pub outputs: Vec<OutputDoc>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldDoc {
    pub path: String,
    pub change: String,
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputDoc {
    pub name: String,
    pub secret: bool,
    pub observed: bool,
}

/// `.../control-planes/{id}/kinds`.
pub fn kinds_path(slug: &str, cp: &str) -> String {
    format!("{}/kinds", detail_path(slug, cp))
}

#[server(endpoint = "cp_kinds")]
pub async fn cp_kinds(cp: String) -> Result<Vec<KindDoc>, ServerFnError> {
    #[derive(Deserialize)]
    struct Data {
        kinds: Vec<KindDoc>,
    }
    super::check_id(&cp)?;
    let query = "query Kinds { kinds { name schema fields { path change note } \
                 outputs { name secret observed } } }";
    let data: Data = crate::api::cp_gql(&cp, query, serde_json::json!({}), None).await?;
    Ok(data.kinds)
}

/// How a change reads: `REPLACE` → `Replaced`.
pub fn change_label(change: &str) -> &'static str {
    match change {
        "IN_PLACE" => "Changed in place",
        "GROW_ONLY" => "In place when it grows; shrinking refused",
        "UPGRADE_ONLY" => "In place when it goes up; going down refused",
        "REPLACE" => "Replaced: a new resource, the old one deleted",
        "IMMUTABLE" => "Refused",
        _ => "See the note",
    }
}

/// `schema` with a local `$ref` (or a nullable `anyOf`/`allOf` of one) followed.
fn resolve<'a>(root: &'a Value, mut node: &'a Value) -> &'a Value {
    for _ in 0..16 {
        if let Some(name) = node["$ref"].as_str().and_then(|r| r.rsplit('/').next()) {
            let defs = if root["$defs"].is_object() {
                &root["$defs"]
            } else {
                &root["definitions"]
            };
            node = &defs[name];
            continue;
        }
        let one = ["anyOf", "allOf", "oneOf"].iter().find_map(|k| {
            node[*k]
                .as_array()
                .and_then(|v| v.iter().find(|s| s["type"] != "null"))
        });
        match one {
            Some(inner) if node["properties"].is_null() => node = inner,
            _ => return node,
        }
    }
    node
}

/// The schema's description of the spec field at `path` (`spec.a.b`, `spec.env[0]` read as
/// `spec.env`), if it has one.
pub fn describe(schema: &Value, path: &str) -> Option<String> {
    let mut node = resolve(schema, schema);
    for segment in path.split('.').skip(1) {
        let name = segment.split('[').next().unwrap_or(segment);
        let mut next = &resolve(schema, node)["properties"][name];
        if next.is_null() {
            // A list's items.
            next = &resolve(schema, &resolve(schema, node)["items"])["properties"][name];
        }
        if next.is_null() {
            return None;
        }
        node = next;
    }
    node["description"]
        .as_str()
        .or_else(|| resolve(schema, node)["description"].as_str())
        .map(str::to_owned)
}

#[component]
pub fn KindsPage() -> impl IntoView {
    let cp = use_cp_id();
    let kinds = Resource::new(
        move || (cp.get(), Refresh::generation()),
        |(cp, _)| cp_kinds(cp),
    );
    view! {
        <Title text="Field reference · Qleet"/>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                match kinds.await {
                    Ok(kinds) => {
                        let index = kinds
                            .iter()
                            .map(|k| {
                                let href = format!("#kind-{}", k.name);
                                view! {
                                    <li>
                                        <a href=href>{k.name.clone()}</a>
                                    </li>
                                }
                            })
                            .collect_view();
                        let cards = kinds.into_iter().map(kind_card).collect_view();
                        view! {
                            <section class="card">
                                <h2>"Field reference"</h2>
                                <p class="hint">
                                    "Every kind's spec fields and what changing each one does; outputs marked † are read back from the cloud by the agent."
                                </p>
                                <ul class="kind-index">{index}</ul>
                            </section>
                            {cards}
                        }
                            .into_any()
                    }
                    Err(error) => view! { <ErrorBox error/> }.into_any(),
                }
            })}
        </Transition>
    }
}

fn kind_card(kind: KindDoc) -> impl IntoView {
    let fields = kind
        .fields
        .iter()
        .map(|f| {
            let description = describe(&kind.schema, &f.path).unwrap_or_default();
            view! {
                <tr class="kind-field" data-path=f.path.clone() data-change=f.change.clone()>
                    <td>
                        <code>{f.path.clone()}</code>
                    </td>
                    <td>{description}</td>
                    <td>{change_label(&f.change)}</td>
                    <td>{f.note.clone().unwrap_or_default()}</td>
                </tr>
            }
        })
        .collect_view();
    let outputs = kind
        .outputs
        .iter()
        .map(|o| {
            let mut marks = Vec::new();
            if o.observed {
                marks.push("† read back from the cloud");
            }
            if o.secret {
                marks.push("a secret reference, never the value");
            }
            view! {
                <li class="kind-output" data-name=o.name.clone()>
                    <code>{o.name.clone()}</code>
                    {(!marks.is_empty()).then(|| format!(" ({})", marks.join("; ")))}
                </li>
            }
        })
        .collect_view();
    let schema = serde_json::to_string_pretty(&kind.schema).unwrap_or_default();
    let id = format!("kind-{}", kind.name);
    view! {
        <section class="card kind" id=id>
            <h2>{kind.name.clone()}</h2>
            <table class="kind-fields">
                <thead>
                    <tr>
                        <th scope="col">"Field"</th>
                        <th scope="col">"What it is"</th>
                        <th scope="col">"When it changes"</th>
                        <th scope="col">"Note"</th>
                    </tr>
                </thead>
                <tbody>{fields}</tbody>
            </table>
            <h3>"Outputs"</h3>
            <ul class="kind-outputs">{outputs}</ul>
            <details>
                <summary>"JSON Schema"</summary>
                <pre class="document"><code>{schema}</code></pre>
            </details>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn descriptions_follow_refs_options_and_lists() {
        let schema = json!({
            "type": "object",
            "properties": {
                "region": { "description": "Where it runs.", "type": ["string", "null"] },
                "nodeGroup": { "anyOf": [{ "$ref": "#/$defs/NodeGroup" }, { "type": "null" }] },
                "env": { "type": "array", "items": { "$ref": "#/$defs/Env" } }
            },
            "$defs": {
                "NodeGroup": { "type": "object", "properties": {
                    "min": { "description": "Fewest nodes.", "type": "integer" } } },
                "Env": { "type": "object", "properties": {
                    "name": { "description": "The variable.", "type": "string" } } }
            }
        });
        assert_eq!(
            describe(&schema, "spec.region").as_deref(),
            Some("Where it runs.")
        );
        assert_eq!(
            describe(&schema, "spec.nodeGroup.min").as_deref(),
            Some("Fewest nodes.")
        );
        assert_eq!(
            describe(&schema, "spec.env[0].name").as_deref(),
            Some("The variable.")
        );
        assert_eq!(describe(&schema, "spec.nope"), None);
        assert_eq!(
            change_label("REPLACE"),
            "Replaced: a new resource, the old one deleted"
        );
    }
}
