//! An organisation's control planes: the list and create form (`/orgs/:slug/control-planes`)
//! and one control plane (`/orgs/:slug/control-planes/:id`) with its lifecycle actions.
//!
//! Pages show the state at load time and a "Refresh" link; once hydrated they follow the
//! organisation's status stream (see [`live`]).

pub mod agents;
pub mod detail;
pub mod kinds;
pub mod list;
pub mod live;
pub mod objects;
pub mod trail;

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::api::Access;

/// A control plane's state: the GraphQL `ControlPlaneStatus` value, such as `READY`. Kept as
/// text so a state added later still shows (as its name) instead of failing the page.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Status(pub String);

impl Status {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `READY` → `Ready`, `SOME_STATE` → `Some state`.
    pub fn label(&self) -> String {
        let mut out = String::with_capacity(self.0.len());
        for (i, c) in self.0.chars().enumerate() {
            match c {
                '_' => out.push(' '),
                c if i == 0 => out.extend(c.to_uppercase()),
                c => out.extend(c.to_lowercase()),
            }
        }
        out
    }

    fn is(&self, states: &[&str]) -> bool {
        states.contains(&self.as_str())
    }

    /// Whether to offer "Suspend" (the backend has the last word).
    pub fn can_suspend(&self) -> bool {
        self.is(&["PENDING", "PROVISIONING", "READY", "HIBERNATED"])
    }

    /// Whether to offer "Resume".
    pub fn can_resume(&self) -> bool {
        self.is(&["SUSPENDED"])
    }

    /// Whether to offer "Delete": not once deletion has begun.
    pub fn can_delete(&self) -> bool {
        !self.is(&["DELETING", "DELETED"])
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlane {
    pub id: String,
    pub name: String,
    pub region: Option<String>,
    pub status: Status,
    pub status_reason: Option<String>,
    pub version: String,
    /// The gateway URL of its GraphQL API.
    pub endpoint: String,
    pub created_at: String,
    pub updated_at: String,
}

impl ControlPlane {
    /// Its status as loaded, comparable with the stream's updates.
    pub fn snapshot(&self) -> StatusUpdate {
        StatusUpdate {
            id: self.id.clone(),
            status: self.status.clone(),
            status_reason: self.status_reason.clone(),
            updated_at: self.updated_at.clone(),
        }
    }
}

/// One status change; also what each `data:` line of the status stream holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusUpdate {
    pub id: String,
    pub status: Status,
    #[serde(default)]
    pub status_reason: Option<String>,
    pub updated_at: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlPlaneEvent {
    pub at: String,
    pub from: Option<Status>,
    pub to: Status,
    pub message: String,
}

#[cfg_attr(not(feature = "ssr"), allow(dead_code))]
const FIELDS: &str = "id name region status statusReason version endpoint createdAt updatedAt";

/// `/orgs/{slug}/control-planes`.
pub fn list_path(slug: &str) -> String {
    format!("/orgs/{}/control-planes", crate::api::url_encode(slug))
}

/// `/orgs/{slug}/control-planes/{id}`.
pub fn detail_path(slug: &str, id: &str) -> String {
    format!("{}/{}", list_path(slug), crate::api::url_encode(id))
}

/// Whether `id` has the shape of a UUID, so a mistyped address reads as "not found" rather
/// than as a GraphQL type error.
#[cfg_attr(not(feature = "ssr"), allow(dead_code))]
fn is_uuid(id: &str) -> bool {
    let hex = id.bytes().filter(u8::is_ascii_hexdigit).count();
    id.len() == 36
        && hex == 32
        && id
            .char_indices()
            .all(|(i, c)| matches!(i, 8 | 13 | 18 | 23) == (c == '-'))
}

/// Fails with "not found" unless `id` looks like a control plane id.
#[cfg(feature = "ssr")]
fn check_id(id: &str) -> Result<(), ServerFnError> {
    if is_uuid(id) {
        Ok(())
    } else {
        Err(crate::api::refusal(
            "NOT_FOUND",
            "There is no such control plane in this organisation.",
        ))
    }
}

#[server(endpoint = "control_planes")]
pub async fn list_control_planes(org: String) -> Result<Access<Vec<ControlPlane>>, ServerFnError> {
    #[derive(Deserialize)]
    struct Data {
        organization: Org,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Org {
        control_planes: Vec<ControlPlane>,
    }
    let query = format!(
        "query ControlPlanes($slug: String!) {{ organization(slug: $slug) \
         {{ controlPlanes {{ {FIELDS} }} }} }}"
    );
    let access: Access<Data> =
        crate::api::gql_access(&query, serde_json::json!({ "slug": org })).await?;
    Ok(match access {
        Access::Allowed(data) => Access::Allowed(data.organization.control_planes),
        Access::Denied(reason) => Access::Denied(reason),
    })
}

/// The current status of every control plane of `org`; the browser merges it in when the
/// status stream (re)connects, to cover what changed while it was not listening.
#[server(endpoint = "control_plane_statuses")]
pub async fn control_plane_statuses(org: String) -> Result<Vec<StatusUpdate>, ServerFnError> {
    #[derive(Deserialize)]
    struct Data {
        organization: Org,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Org {
        control_planes: Vec<StatusUpdate>,
    }
    let query = "query ControlPlaneStatuses($slug: String!) { organization(slug: $slug) \
                 { controlPlanes { id status statusReason updatedAt } } }";
    let data: Data = crate::api::gql(query, serde_json::json!({ "slug": org }), None).await?;
    Ok(data.organization.control_planes)
}

#[server(endpoint = "control_plane")]
pub async fn get_control_plane(org: String, id: String) -> Result<ControlPlane, ServerFnError> {
    #[derive(Deserialize)]
    struct Data {
        organization: Org,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Org {
        control_plane: ControlPlane,
    }
    check_id(&id)?;
    let query = format!(
        "query ControlPlane($slug: String!, $id: UUID!) {{ organization(slug: $slug) \
         {{ controlPlane(id: $id) {{ {FIELDS} }} }} }}"
    );
    let variables = serde_json::json!({ "slug": org, "id": id });
    let data: Data = crate::api::gql(&query, variables, None).await?;
    Ok(data.organization.control_plane)
}

/// The control plane's status changes, newest first.
#[server(endpoint = "control_plane_events")]
pub async fn control_plane_events(
    org: String,
    id: String,
) -> Result<Vec<ControlPlaneEvent>, ServerFnError> {
    #[derive(Deserialize)]
    struct Data {
        organization: Org,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Org {
        control_plane: Events,
    }
    #[derive(Deserialize)]
    struct Events {
        events: Vec<ControlPlaneEvent>,
    }
    check_id(&id)?;
    let query = "query ControlPlaneEvents($slug: String!, $id: UUID!) \
                 { organization(slug: $slug) { controlPlane(id: $id) \
                 { events { at from to message } } } }";
    let variables = serde_json::json!({ "slug": org, "id": id });
    let data: Data = crate::api::gql(query, variables, None).await?;
    let mut events = data.organization.control_plane.events;
    // Newest first whatever order the backend keeps; unreadable times go last.
    events.sort_by_key(|event| std::cmp::Reverse(live::instant(&event.at)));
    Ok(events)
}

/// Creates a control plane and goes to its page. Works as a plain form post without JavaScript.
#[server(endpoint = "create_control_plane")]
pub async fn create_control_plane(
    csrf: String,
    org: String,
    name: String,
    region: String,
) -> Result<(), ServerFnError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        create_control_plane: Created,
    }
    #[derive(Deserialize)]
    struct Created {
        id: String,
    }
    let region = Some(region.trim()).filter(|region| !region.is_empty());
    let query = "mutation CreateControlPlane($org: String!, $name: String!, $region: String) \
                 { createControlPlane(org: $org, name: $name, region: $region) { id } }";
    let variables = serde_json::json!({ "org": org, "name": name.trim(), "region": region });
    let data: Data = crate::api::gql(query, variables, Some(csrf)).await?;
    leptos_axum::redirect(&detail_path(&org, &data.create_control_plane.id));
    Ok(())
}

#[server(endpoint = "suspend_control_plane")]
pub async fn suspend_control_plane(
    csrf: String,
    org: String,
    id: String,
) -> Result<(), ServerFnError> {
    let query = "mutation SuspendControlPlane($org: String!, $id: UUID!) \
                 { suspendControlPlane(org: $org, id: $id) { id status } }";
    let variables = serde_json::json!({ "org": org, "id": id });
    crate::api::gql::<serde_json::Value>(query, variables, Some(csrf)).await?;
    Ok(())
}

#[server(endpoint = "resume_control_plane")]
pub async fn resume_control_plane(
    csrf: String,
    org: String,
    id: String,
) -> Result<(), ServerFnError> {
    let query = "mutation ResumeControlPlane($org: String!, $id: UUID!) \
                 { resumeControlPlane(org: $org, id: $id) { id status } }";
    let variables = serde_json::json!({ "org": org, "id": id });
    crate::api::gql::<serde_json::Value>(query, variables, Some(csrf)).await?;
    Ok(())
}

/// Starts deleting the control plane once `confirm_name` matches its name (the backend
/// checks), then goes back to the list, where its deletion can be followed.
#[server(endpoint = "delete_control_plane")]
pub async fn delete_control_plane(
    csrf: String,
    org: String,
    id: String,
    confirm_name: String,
) -> Result<(), ServerFnError> {
    let query = "mutation DeleteControlPlane($org: String!, $id: UUID!, $confirmName: String!) \
                 { deleteControlPlane(org: $org, id: $id, confirmName: $confirmName) \
                 { id status } }";
    let variables = serde_json::json!({ "org": org, "id": id, "confirmName": confirm_name.trim() });
    crate::api::gql::<serde_json::Value>(query, variables, Some(csrf)).await?;
    leptos_axum::redirect(&list_path(&org));
    Ok(())
}

/// A status badge, coloured by state through its `data-status` (see style.css).
pub fn status_badge(status: &Status) -> impl IntoView + use<> {
    view! {
        <span class="badge status" data-status=status.as_str().to_owned()>
            {status.label()}
        </span>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_in_title_case() {
        assert_eq!(Status("READY".into()).label(), "Ready");
        assert_eq!(Status("PROVISIONING".into()).label(), "Provisioning");
        assert_eq!(Status("SOME_NEW_STATE".into()).label(), "Some new state");
    }

    #[test]
    fn actions_follow_the_status() {
        let ready = Status("READY".into());
        let suspended = Status("SUSPENDED".into());
        let deleting = Status("DELETING".into());
        assert!(ready.can_suspend() && !ready.can_resume() && ready.can_delete());
        assert!(!suspended.can_suspend() && suspended.can_resume());
        assert!(!deleting.can_suspend() && !deleting.can_resume() && !deleting.can_delete());
    }

    #[test]
    fn only_uuids_are_asked_for() {
        assert!(is_uuid("0b6f2d4e-8c1a-4f3e-9a7b-2c5d8e1f0a93"));
        assert!(!is_uuid("0b6f2d4e8c1a4f3e9a7b2c5d8e1f0a93"));
        assert!(!is_uuid("events"));
        assert!(!is_uuid("0b6f2d4e-8c1a-4f3e-9a7b-2c5d8e1f0a9z"));
    }

    #[test]
    fn stream_lines_decode() {
        let update: StatusUpdate = serde_json::from_str(
            r#"{"id":"a","status":"READY","statusReason":null,"updatedAt":"2026-01-01T00:00:00Z"}"#,
        )
        .expect("decode");
        assert_eq!(update.status.as_str(), "READY");
        assert_eq!(update.status_reason, None);
    }

    #[test]
    fn paths_are_encoded() {
        assert_eq!(
            detail_path("acme", "x y"),
            "/orgs/acme/control-planes/x%20y"
        );
    }
}
