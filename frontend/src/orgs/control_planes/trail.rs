//! A control plane's audit trail: `/orgs/:slug/control-planes/:id/audit` (every entry, newest
//! first, a page at a time with `?after=CURSOR`, and the whole trail as JSON lines), and the
//! last entries of one object on its page.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;
use serde::{Deserialize, Serialize};

use super::detail_path;
use super::objects::use_cp_id;
use crate::{
    api::{format_time, url_encode},
    components::{ErrorBox, Loading, Refresh},
    identity::use_session,
    orgs::{OrgContext, tab_basics},
};

/// Entries per page.
#[cfg_attr(not(feature = "ssr"), allow(dead_code))]
const PAGE_SIZE: i32 = 50;

/// One entry, as the page shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrailEntry {
    pub id: String,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub object: Option<String>,
    pub detail: String,
    /// `path: before → after`, one per changed field.
    pub changes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrailPage {
    pub entries: Vec<TrailEntry>,
    /// Where the next (older) page starts, if there is one.
    pub older: Option<String>,
}

/// `.../control-planes/{id}/audit`.
pub fn audit_path(slug: &str, cp: &str) -> String {
    format!("{}/audit", detail_path(slug, cp))
}

/// The gateway's JSON-lines export of the trail (the session cookie authenticates it).
pub fn export_path(cp: &str, object: Option<&str>) -> String {
    match object {
        Some(object) => format!("/cp/{cp}/audit.jsonl?object={}", url_encode(object)),
        None => format!("/cp/{cp}/audit.jsonl"),
    }
}

/// How one field diff reads: `spec.sizeClass: "db.t4g.micro" → "db.t4g.small"`.
#[cfg_attr(not(feature = "ssr"), allow(dead_code))]
pub fn change_line(diff: &serde_json::Value) -> String {
    let side = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "—".to_owned(),
        other => other.to_string(),
    };
    format!(
        "{}: {} → {}",
        diff["path"].as_str().unwrap_or_default(),
        side(&diff["before"]),
        side(&diff["after"])
    )
}

/// The fields of an `auditLog` connection the UI reads.
#[cfg_attr(not(feature = "ssr"), allow(dead_code))]
pub const TRAIL_FIELDS: &str =
    "edges { node { id at actor action object detail diff } } pageInfo { hasNextPage endCursor }";

/// A page read from an `auditLog` connection (as JSON).
#[cfg_attr(not(feature = "ssr"), allow(dead_code))]
pub fn page_of(connection: &serde_json::Value) -> TrailPage {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let entries = connection["edges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|edge| {
            let node = &edge["node"];
            TrailEntry {
                id: text(&node["id"]),
                at: text(&node["at"]),
                actor: text(&node["actor"]),
                action: text(&node["action"]),
                object: node["object"].as_str().map(str::to_owned),
                detail: text(&node["detail"]),
                changes: node["diff"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(change_line)
                    .collect(),
            }
        })
        .collect();
    let info = &connection["pageInfo"];
    let older = (info["hasNextPage"] == true)
        .then(|| info["endCursor"].as_str().map(str::to_owned))
        .flatten();
    TrailPage { entries, older }
}

/// A page of control plane `cp`'s trail, newest first, older than `after` when given.
#[server(endpoint = "cp_audit")]
pub async fn cp_audit(cp: String, after: Option<String>) -> Result<TrailPage, ServerFnError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        audit_log: serde_json::Value,
    }
    super::check_id(&cp)?;
    let query = format!(
        "query Trail($first: Int, $after: String) {{ auditLog(first: $first, after: $after) {{ {TRAIL_FIELDS} }} }}"
    );
    let variables = serde_json::json!({
        "first": PAGE_SIZE,
        "after": after.filter(|cursor| !cursor.is_empty()),
    });
    let data: Data = crate::api::cp_gql(&cp, &query, variables, None).await?;
    Ok(page_of(&data.audit_log))
}

#[component]
pub fn ControlPlaneAuditPage() -> impl IntoView {
    let session = use_session();
    let ctx = expect_context::<OrgContext>();
    let cp = use_cp_id();
    let query = use_query_map();
    let after = Memo::new(move |_| query.read().get("after"));
    let page = Resource::new(
        move || (cp.get(), after.get(), Refresh::generation()),
        |(cp, after, _)| cp_audit(cp, after),
    );
    view! {
        <Title text="Audit trail · Qleet"/>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                let (_, org) = tab_basics(session, ctx).await?;
                let id = cp.get_untracked();
                let body = match page.await {
                    Ok(page) => {
                        let base = audit_path(&org.slug, &id);
                        let newest = after
                            .get_untracked()
                            .is_some()
                            .then(|| view! { <a href=base.clone()>"Newest"</a> });
                        let older = page.older.map(|cursor| {
                            let href = format!("{base}?after={}", url_encode(&cursor));
                            view! {
                                <a id="trail-older" href=href>
                                    "Older"
                                </a>
                            }
                        });
                        view! {
                            {trail_table(page.entries, true)}
                            <nav class="pager" aria-label="Audit trail pages">
                                {newest}
                                {older}
                            </nav>
                        }
                            .into_any()
                    }
                    Err(error) => view! { <ErrorBox error/> }.into_any(),
                };
                Some(
                    view! {
                        <section class="card">
                            <div class="card-head">
                                <h2>"Audit trail"</h2>
                                <a
                                    id="trail-export"
                                    class="button secondary"
                                    href=export_path(&id, None)
                                    rel="external"
                                    download="audit.jsonl"
                                >
                                    "Download (JSON lines)"
                                </a>
                            </div>
                            <p class="hint">
                                "Every apply, delete, retry and refresh with who asked, every agent registration and report, with the fields each changed. Entries are never changed or removed."
                            </p>
                            {body}
                        </section>
                    },
                )
            })}
        </Transition>
    }
}

/// The last entries of one object, for its page (loaded with the object).
pub fn object_trail_card(
    slug: &str,
    cp: &str,
    kind: &str,
    name: &str,
    trail: &[TrailEntry],
) -> AnyView {
    let all = audit_path(slug, cp);
    let export = export_path(cp, Some(&format!("{kind}/{name}")));
    view! {
        <section class="card" id="object-trail">
            <div class="card-head">
                <h2>"Audit trail"</h2>
                <a href=export rel="external" download="audit.jsonl">
                    "Download (JSON lines)"
                </a>
                <a href=all>"The whole control plane's"</a>
            </div>
            {trail_table(trail.to_vec(), false)}
        </section>
    }
    .into_any()
}

fn trail_table(entries: Vec<TrailEntry>, with_object: bool) -> AnyView {
    if entries.is_empty() {
        return view! { <p class="muted">"No entries."</p> }.into_any();
    }
    let rows = entries
        .into_iter()
        .map(|entry| {
            let object = with_object.then(|| view! { <td>{entry.object.unwrap_or_default()}</td> });
            let changes = entry
                .changes
                .into_iter()
                .map(|c| view! { <li><code>{c}</code></li> })
                .collect_view();
            let action = entry.action.clone();
            view! {
                <tr class="trail-entry" data-action=action>
                    <td class="nowrap">{format_time(&entry.at)}</td>
                    <td class="actor">{entry.actor}</td>
                    <td>
                        <code>{entry.action}</code>
                    </td>
                    {object}
                    <td>
                        {entry.detail}
                        <ul class="changes">{changes}</ul>
                    </td>
                </tr>
            }
        })
        .collect_view();
    let object_head = with_object.then(|| view! { <th scope="col">"Object"</th> });
    view! {
        <table class="audit trail">
            <thead>
                <tr>
                    <th scope="col">"When"</th>
                    <th scope="col">"Who"</th>
                    <th scope="col">"Action"</th>
                    {object_head}
                    <th scope="col">"What"</th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_field_change_reads_before_and_after() {
        assert_eq!(
            change_line(&json!({"path": "spec.sizeClass", "before": "a", "after": "b"})),
            r#"spec.sizeClass: "a" → "b""#
        );
        assert_eq!(
            change_line(&json!({"path": "spec.tags", "before": null, "after": {"x": 1}})),
            r#"spec.tags: — → {"x":1}"#
        );
        assert_eq!(
            export_path("abc", Some("Workload/web")),
            "/cp/abc/audit.jsonl?object=Workload%2Fweb"
        );
    }
}
