//! A control plane's objects, as its own GraphQL API describes them: the list
//! (`.../control-planes/:id/objects`), one object (`.../objects/:kind/:name`), the dependency
//! graph (`.../graph`) and the apply page (`.../apply`), under a frame ([`ControlPlaneLayout`])
//! that names the control plane and links its pages (the agents page, [`super::agents`], too).
//!
//! Every call goes to the tenant control plane through the management gateway as the signed-in
//! user ([`crate::api::cp_gql`]); the control plane enforces roles, the pages only hide what a
//! role may not do. Once hydrated, pages follow the object stream (see [`live`]).

pub mod apply;
pub mod detail;
pub mod graph;
pub mod list;
pub mod live;
pub mod yaml;

use leptos::prelude::*;
use leptos_router::{
    components::{A, Outlet},
    hooks::use_params_map,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Status, detail_path, list_path};
use crate::{
    api::{Role, url_encode},
    orgs::OrgContext,
};

/// An object's phase: the GraphQL `Phase` value, such as `READY`. Kept as text so a phase
/// added later still shows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Phase(pub String);

impl Phase {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `READY` → `Ready`.
    pub fn label(&self) -> String {
        Status(self.0.clone()).label()
    }

    /// Fill and stroke colours for drawings (the badges use style.css).
    pub fn colours(&self) -> (&'static str, &'static str) {
        match self.as_str() {
            "READY" => ("#dcfae6", "#067647"),
            "PENDING" | "WAITING" => ("#eef0f6", "#4a5578"),
            "PROVISIONING" => ("#e0eaff", "#2349ad"),
            "DELETING" => ("#fdead7", "#b93815"),
            "FAILED" => ("#fee4e2", "#b42318"),
            _ => ("#f2f4f7", "#667085"),
        }
    }
}

/// `Kind/name`, as references and the graph name objects.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    pub kind: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// Another object, named (with its phase where the control plane gave it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub phase: Option<Phase>,
}

impl ObjectRef {
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.kind, &self.name)
    }
}

/// A row of the object list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectSummary {
    pub kind: String,
    pub name: String,
    pub phase: Phase,
    pub message: Option<String>,
    pub generation: i64,
    pub observed_generation: i64,
    pub owner: Option<ObjectRef>,
    pub deleting: bool,
    pub updated_at: String,
}

impl ObjectSummary {
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.kind, &self.name)
    }

    /// Its state as loaded, comparable with the stream's changes.
    pub fn snapshot(&self) -> ObjectChange {
        ObjectChange {
            kind: self.kind.clone(),
            name: self.name.clone(),
            phase: self.phase.clone(),
            message: self.message.clone(),
            generation: self.generation,
            observed_generation: self.observed_generation,
            deleted: false,
            at: self.updated_at.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
    pub last_transition_at: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectEvent {
    pub at: String,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub kind: String,
    pub reason: String,
    pub message: String,
}

/// Everything the object page shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectDetail {
    pub kind: String,
    pub name: String,
    pub phase: Phase,
    pub message: Option<String>,
    pub spec: Value,
    pub status: Value,
    pub outputs: Value,
    pub rendered: Option<Value>,
    pub generation: i64,
    pub observed_generation: i64,
    pub conditions: Vec<Condition>,
    pub events: Vec<ObjectEvent>,
    pub dependencies: Vec<ObjectRef>,
    pub dependents: Vec<ObjectRef>,
    pub owner: Option<ObjectRef>,
    pub deleting: bool,
    pub created_at: String,
    pub updated_at: String,
    /// Its last audit-trail entries, newest first (not part of `object`: read beside it).
    #[serde(default)]
    pub trail: Vec<super::trail::TrailEntry>,
}

impl ObjectDetail {
    pub fn snapshot(&self) -> ObjectChange {
        ObjectChange {
            kind: self.kind.clone(),
            name: self.name.clone(),
            phase: self.phase.clone(),
            message: self.message.clone(),
            generation: self.generation,
            observed_generation: self.observed_generation,
            deleted: false,
            at: self.updated_at.clone(),
        }
    }
}

/// One status change of an object; also what each `data:` line of the object stream holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectChange {
    pub kind: String,
    pub name: String,
    pub phase: Phase,
    #[serde(default)]
    pub message: Option<String>,
    pub generation: i64,
    pub observed_generation: i64,
    #[serde(default)]
    pub deleted: bool,
    pub at: String,
}

impl ObjectChange {
    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.kind, &self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphEdge {
    /// The dependent.
    pub from: ObjectRef,
    /// The dependency.
    pub to: ObjectRef,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub nodes: Vec<ObjectRef>,
    pub edges: Vec<GraphEdge>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldDiff {
    /// Such as `spec.versioning`.
    pub path: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedChange {
    /// `CREATE`, `UPDATE`, `DELETE` or `UNCHANGED`.
    pub action: String,
    pub kind: String,
    pub name: String,
    pub owner: Option<ObjectRef>,
    pub diffs: Vec<FieldDiff>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanSummary {
    pub create: i64,
    pub update: i64,
    pub delete: i64,
    pub unchanged: i64,
}

impl PlanSummary {
    /// `2 to create, 1 to update, 0 to delete, 3 unchanged`.
    pub fn text(&self) -> String {
        format!(
            "{} to create, {} to update, {} to delete, {} unchanged",
            self.create, self.update, self.delete, self.unchanged
        )
    }

    /// Whether applying would change anything.
    pub fn has_changes(&self) -> bool {
        self.create + self.update + self.delete > 0
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub applied: bool,
    pub changes: Vec<PlannedChange>,
    pub summary: PlanSummary,
}

/// Whether a role may apply and delete objects (the control plane has the last word).
pub fn can_change(role: Role) -> bool {
    role != Role::Viewer
}

/// `.../control-planes/{id}/objects`.
pub fn objects_path(slug: &str, cp: &str) -> String {
    format!("{}/objects", detail_path(slug, cp))
}

/// `.../control-planes/{id}/objects/{kind}/{name}`.
pub fn object_path(slug: &str, cp: &str, kind: &str, name: &str) -> String {
    format!(
        "{}/{}/{}",
        objects_path(slug, cp),
        url_encode(kind),
        url_encode(name)
    )
}

/// `.../control-planes/{id}/graph`.
pub fn graph_path(slug: &str, cp: &str) -> String {
    format!("{}/graph", detail_path(slug, cp))
}

/// `.../control-planes/{id}/apply`.
pub fn apply_path(slug: &str, cp: &str) -> String {
    format!("{}/apply", detail_path(slug, cp))
}

/// A phase badge, coloured through its `data-phase` (see style.css).
pub fn phase_badge(phase: &Phase) -> impl IntoView + use<> {
    view! {
        <span class="badge phase" data-phase=phase.as_str().to_owned()>
            {phase.label()}
        </span>
    }
}

/// A link to an object's page, with its phase when known.
pub fn object_link(slug: &str, cp: &str, object: &ObjectRef) -> impl IntoView + use<> {
    let href = object_path(slug, cp, &object.kind, &object.name);
    let badge = object.phase.as_ref().map(phase_badge);
    view! {
        <a class="object-link" href=href>
            {object.key().to_string()}
        </a>
        {badge.map(|badge| view! { " " {badge} })}
    }
}

/// The control plane id from the URL.
pub fn use_cp_id() -> Memo<String> {
    let params = use_params_map();
    Memo::new(move |_| params.read().get("id").unwrap_or_default())
}

/// The frame of `/orgs/:slug/control-planes/:id/...`: the way back and the control plane's
/// pages.
#[component]
pub fn ControlPlaneLayout() -> impl IntoView {
    let ctx = expect_context::<OrgContext>();
    let id = use_cp_id();
    let base = move || detail_path(&ctx.slug.get(), &id.get());
    view! {
        <p class="breadcrumb">
            <a href=move || list_path(&ctx.slug.get())>"← All control planes"</a>
        </p>
        <nav class="tabs subtabs" aria-label="Control plane">
            <A href=base exact=true>
                "Overview"
            </A>
            <A href=move || objects_path(&ctx.slug.get(), &id.get())>"Objects"</A>
            <A href=move || graph_path(&ctx.slug.get(), &id.get())>"Graph"</A>
            <A href=move || apply_path(&ctx.slug.get(), &id.get())>"Apply"</A>
            <A href=move || {
                super::agents::agents_path(&ctx.slug.get(), &id.get())
            }>"Agents"</A>
            <A href=move || {
                super::trail::audit_path(&ctx.slug.get(), &id.get())
            }>"Audit trail"</A>
            <A href=move || {
                super::kinds::kinds_path(&ctx.slug.get(), &id.get())
            }>"Reference"</A>
        </nav>
        <Outlet/>
    }
}

#[cfg_attr(not(feature = "ssr"), allow(dead_code))]
const SUMMARY_FIELDS: &str = "kind name phase message generation observedGeneration \
                              owner { kind name phase } deleting updatedAt";

/// The objects of control plane `cp` (of `kind` only, when given and not empty), sorted by
/// kind and name, and every kind present.
#[server(endpoint = "cp_objects")]
pub async fn list_objects(
    cp: String,
    kind: Option<String>,
) -> Result<(Vec<ObjectSummary>, Vec<String>), ServerFnError> {
    #[derive(Deserialize)]
    struct Data {
        objects: Vec<ObjectSummary>,
        graph: KindsOnly,
    }
    #[derive(Deserialize)]
    struct KindsOnly {
        nodes: Vec<ObjectRef>,
    }
    super::check_id(&cp)?;
    let kind = kind.filter(|kind| !kind.trim().is_empty());
    let query = format!(
        "query Objects($kind: String) {{ objects(kind: $kind) {{ {SUMMARY_FIELDS} }} \
         graph {{ nodes {{ kind name }} }} }}"
    );
    let data: Data =
        crate::api::cp_gql(&cp, &query, serde_json::json!({ "kind": kind }), None).await?;
    let mut kinds: Vec<String> = data.graph.nodes.into_iter().map(|n| n.kind).collect();
    kinds.sort();
    kinds.dedup();
    Ok((data.objects, kinds))
}

/// The current state of every object; the browser merges it in when the object stream
/// (re)connects, to cover what changed while it was not listening.
#[server(endpoint = "cp_object_states")]
pub async fn object_states(cp: String) -> Result<Vec<ObjectChange>, ServerFnError> {
    #[derive(Deserialize)]
    struct Data {
        objects: Vec<ObjectSummary>,
    }
    super::check_id(&cp)?;
    let query = format!("query ObjectStates {{ objects {{ {SUMMARY_FIELDS} }} }}");
    let data: Data = crate::api::cp_gql(&cp, &query, serde_json::json!({}), None).await?;
    Ok(data.objects.iter().map(ObjectSummary::snapshot).collect())
}

#[server(endpoint = "cp_object")]
pub async fn get_object(
    cp: String,
    kind: String,
    name: String,
) -> Result<ObjectDetail, ServerFnError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        object: Option<ObjectDetail>,
        audit_log: Value,
    }
    super::check_id(&cp)?;
    let query = format!(
        "query Object($kind: String!, $name: String!, $key: String!) {{ object(kind: $kind, name: $name) \
         {{ kind name phase message spec status outputs rendered generation \
         observedGeneration conditions {{ type status reason message lastTransitionAt }} \
         events(last: 50) {{ at type reason message }} \
         dependencies {{ kind name phase }} dependents {{ kind name phase }} \
         owner {{ kind name phase }} deleting createdAt updatedAt }} \
         auditLog(first: 20, object: $key) {{ {} }} }}",
        super::trail::TRAIL_FIELDS
    );
    let variables =
        serde_json::json!({ "kind": kind, "name": name, "key": format!("{kind}/{name}") });
    let data: Data = crate::api::cp_gql(&cp, &query, variables, None).await?;
    let mut object = data.object.ok_or_else(|| {
        crate::api::refusal("NOT_FOUND", format!("There is no object {kind}/{name}."))
    })?;
    object.trail = super::trail::page_of(&data.audit_log).entries;
    Ok(object)
}

#[server(endpoint = "cp_graph")]
pub async fn get_graph(cp: String) -> Result<Graph, ServerFnError> {
    #[derive(Deserialize)]
    struct Data {
        graph: Graph,
    }
    super::check_id(&cp)?;
    let query = "query Graph { graph { nodes { kind name phase } \
                 edges { from { kind name } to { kind name } } } }";
    let data: Data = crate::api::cp_gql(&cp, query, serde_json::json!({}), None).await?;
    Ok(data.graph)
}

/// The plan for applying `yaml` (a dry run: nothing is written).
///
/// It runs when the apply page is opened with `?yaml=...` (a GET, so it works without
/// JavaScript), hence without a form's CSRF field: the session's own token is used, which is
/// safe only because a dry run changes nothing.
#[server(endpoint = "cp_plan")]
pub async fn plan_objects(cp: String, yaml: String, prune: bool) -> Result<Plan, ServerFnError> {
    super::check_id(&cp)?;
    let (backend, parts) = crate::backend::current().map_err(ServerFnError::new)?;
    let csrf = backend.0.csrf_token(&parts);
    let data: ApplyData = crate::api::cp_gql(
        &cp,
        APPLY,
        serde_json::json!({ "yaml": yaml, "dryRun": true, "prune": prune }),
        csrf,
    )
    .await?;
    Ok(data.apply)
}

/// Applies `yaml` and goes to the object list. Works as a plain form post without JavaScript.
#[server(endpoint = "cp_apply")]
pub async fn apply_objects(
    csrf: String,
    org: String,
    cp: String,
    yaml: String,
    prune: Option<String>,
) -> Result<Plan, ServerFnError> {
    super::check_id(&cp)?;
    let prune = prune.is_some_and(|p| matches!(p.as_str(), "true" | "on"));
    let data: ApplyData = crate::api::cp_gql(
        &cp,
        APPLY,
        serde_json::json!({ "yaml": yaml, "dryRun": false, "prune": prune }),
        Some(csrf),
    )
    .await?;
    leptos_axum::redirect(&objects_path(&org, &cp));
    Ok(data.apply)
}

/// Deletes an object once `confirm_name` equals its name, then goes to the object list.
#[server(endpoint = "cp_delete_object")]
pub async fn delete_object(
    csrf: String,
    org: String,
    cp: String,
    kind: String,
    name: String,
    confirm_name: String,
) -> Result<(), ServerFnError> {
    super::check_id(&cp)?;
    if confirm_name.trim() != name {
        return Err(crate::api::refusal(
            "INVALID_INPUT",
            format!("Type the object's name, {name}, to confirm."),
        ));
    }
    let query = "mutation Delete($kind: String!, $name: String!) \
                 { delete(kind: $kind, name: $name) { applied } }";
    let variables = serde_json::json!({ "kind": kind, "name": name });
    crate::api::cp_gql::<Value>(&cp, query, variables, Some(csrf)).await?;
    leptos_axum::redirect(&objects_path(&org, &cp));
    Ok(())
}

/// Retries a FAILED object (`which` = `retry`) or has the agent check it against the cloud
/// (`refresh`), then comes back to its page. Works as a plain form post without JavaScript.
#[server(endpoint = "cp_rerun_object")]
pub async fn rerun_object(
    csrf: String,
    org: String,
    cp: String,
    kind: String,
    name: String,
    which: String,
) -> Result<(), ServerFnError> {
    super::check_id(&cp)?;
    let query = match which.as_str() {
        "retry" => {
            "mutation Retry($kind: String!, $name: String!) \
                    { retry(kind: $kind, name: $name) { phase } }"
        }
        "refresh" => {
            "mutation Refresh($kind: String!, $name: String!) \
                      { refresh(kind: $kind, name: $name) { phase } }"
        }
        _ => {
            return Err(crate::api::refusal(
                "INVALID_INPUT",
                "Choose retry or refresh.".to_owned(),
            ));
        }
    };
    let variables = serde_json::json!({ "kind": kind, "name": name });
    crate::api::cp_gql::<Value>(&cp, query, variables, Some(csrf)).await?;
    leptos_axum::redirect(&object_path(&org, &cp, &kind, &name));
    Ok(())
}

#[cfg_attr(not(feature = "ssr"), allow(dead_code))]
const APPLY: &str = "mutation Apply($yaml: String!, $dryRun: Boolean, $prune: Boolean) \
                     { apply(yaml: $yaml, dryRun: $dryRun, prune: $prune) { applied \
                     changes { action kind name owner { kind name } \
                     diffs { path before after } } \
                     summary { create update delete unchanged } } }";

#[cfg(feature = "ssr")]
#[derive(Deserialize)]
struct ApplyData {
    apply: Plan,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_are_encoded() {
        assert_eq!(
            object_path("acme", "cp1", "Workload", "web app"),
            "/orgs/acme/control-planes/cp1/objects/Workload/web%20app"
        );
        assert_eq!(graph_path("a", "b"), "/orgs/a/control-planes/b/graph");
        assert_eq!(apply_path("a", "b"), "/orgs/a/control-planes/b/apply");
    }

    #[test]
    fn the_contract_shapes_decode() {
        let detail: ObjectDetail = serde_json::from_value(serde_json::json!({
            "id": "0b6f2d4e-8c1a-4f3e-9a7b-2c5d8e1f0a93",
            "kind": "ObjectStorageBucket", "name": "assets", "phase": "READY", "message": null,
            "spec": {"region": "eu-west-1"}, "status": {}, "outputs": {"name": "b"},
            "rendered": null, "generation": 2, "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": true, "reason": "Done", "message": "",
                            "lastTransitionAt": "2026-01-01T00:00:00Z"}],
            "events": [{"at": "2026-01-01T00:00:00Z", "type": "Normal", "reason": "Created",
                        "message": "m"}],
            "dependencies": [{"kind": "AwsAccount", "name": "main", "phase": "READY"}],
            "dependents": [], "owner": null, "deleting": false,
            "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:01Z"
        }))
        .unwrap();
        assert_eq!(detail.conditions[0].kind, "Ready");
        assert_eq!(detail.dependencies[0].key().to_string(), "AwsAccount/main");
        let change: ObjectChange = serde_json::from_str(
            r#"{"kind":"Workload","name":"web","phase":"FAILED","message":"x","generation":3,
                "observedGeneration":3,"deleted":false,"at":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(change.key(), ObjectKey::new("Workload", "web"));
    }

    #[test]
    fn plan_summaries_read_as_a_sentence() {
        let summary = PlanSummary {
            create: 2,
            update: 1,
            delete: 0,
            unchanged: 3,
        };
        assert_eq!(
            summary.text(),
            "2 to create, 1 to update, 0 to delete, 3 unchanged"
        );
        assert!(summary.has_changes());
        assert!(!PlanSummary::default().has_changes());
    }

    #[test]
    fn viewers_may_not_change_objects() {
        assert!(!can_change(Role::Viewer));
        assert!(can_change(Role::Member) && can_change(Role::Owner));
    }
}
