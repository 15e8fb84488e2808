//! `/orgs/:slug/audit`: the organisation's audit log, newest first, a page at a time
//! (`?after=CURSOR` for older entries).

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_query_map;
use serde::{Deserialize, Serialize};

use crate::{
    api::{Access, format_time, url_encode},
    components::{ErrorBox, Loading, Notice, Refresh},
    identity::use_session,
    orgs::{OrgContext, tab_basics},
};

/// Entries per page.
#[cfg_attr(not(feature = "ssr"), allow(dead_code))]
const PAGE_SIZE: i32 = 50;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: String,
    pub at: String,
    pub actor: String,
    pub actor_kind: String,
    pub action: String,
    pub ip: Option<String>,
    /// The `changes` JSON, already printed on the server.
    pub changes: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Where the next (older) page starts, if there is one.
    pub older: Option<String>,
}

#[server(endpoint = "audit_log")]
pub async fn audit_log(
    org: String,
    after: Option<String>,
) -> Result<Access<AuditPage>, ServerFnError> {
    #[derive(Deserialize)]
    struct Data {
        organization: Org,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Org {
        audit_log: Connection,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Connection {
        edges: Vec<Edge>,
        page_info: PageInfo,
    }
    #[derive(Deserialize)]
    struct Edge {
        node: Node,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct PageInfo {
        has_next_page: bool,
        end_cursor: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Node {
        id: String,
        at: String,
        actor: String,
        actor_kind: String,
        action: String,
        ip: Option<String>,
        changes: Option<serde_json::Value>,
    }

    let query = "query AuditLog($slug: String!, $first: Int, $after: String) \
                 { organization(slug: $slug) { auditLog(first: $first, after: $after) { \
                 edges { node { id at actor actorKind action ip changes } } \
                 pageInfo { hasNextPage endCursor } } } }";
    let variables = serde_json::json!({
        "slug": org,
        "first": PAGE_SIZE,
        "after": after.filter(|cursor| !cursor.is_empty()),
    });
    let access: Access<Data> = crate::api::gql_access(query, variables).await?;
    let log = match access {
        Access::Allowed(data) => data.organization.audit_log,
        Access::Denied(reason) => return Ok(Access::Denied(reason)),
    };
    let entries = log
        .edges
        .into_iter()
        .map(|edge| {
            let node = edge.node;
            AuditEntry {
                id: node.id,
                at: node.at,
                actor: node.actor,
                actor_kind: node.actor_kind,
                action: node.action,
                ip: node.ip,
                changes: node.changes.filter(|c| !c.is_null()).map(|c| c.to_string()),
            }
        })
        .collect();
    let older = log
        .page_info
        .has_next_page
        .then_some(log.page_info.end_cursor)
        .flatten();
    Ok(Access::Allowed(AuditPage { entries, older }))
}

#[component]
pub fn AuditPage() -> impl IntoView {
    let session = use_session();
    let ctx = expect_context::<OrgContext>();
    let query = use_query_map();
    let after = Memo::new(move |_| query.read().get("after"));
    let page = Resource::new(
        move || (ctx.slug.get(), after.get(), Refresh::generation()),
        |(slug, after, _)| audit_log(slug, after),
    );

    view! {
        <Title text="Audit log · Qleet"/>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                let (_, org) = tab_basics(session, ctx).await?;
                let body = match page.await {
                    Ok(Access::Allowed(page)) => {
                        let base = format!("/orgs/{}/audit", org.slug);
                        let newest = after
                            .get_untracked()
                            .is_some()
                            .then(|| view! { <a href=base.clone()>"Newest"</a> });
                        let older = page.older.map(|cursor| {
                            let href = format!("{base}?after={}", url_encode(&cursor));
                            view! {
                                <a id="audit-older" href=href>
                                    "Older"
                                </a>
                            }
                        });
                        view! {
                            {audit_table(page.entries)}
                            <nav class="pager" aria-label="Audit log pages">
                                {newest}
                                {older}
                            </nav>
                        }
                            .into_any()
                    }
                    Ok(Access::Denied(reason)) => view! { <Notice text=reason/> }.into_any(),
                    Err(error) => view! { <ErrorBox error/> }.into_any(),
                };
                Some(
                    view! {
                        <section class="card">
                            <h2>"Audit log"</h2>
                            {body}
                        </section>
                    },
                )
            })}
        </Transition>
    }
}

fn audit_table(entries: Vec<AuditEntry>) -> impl IntoView {
    if entries.is_empty() {
        return view! { <p class="muted">"No entries."</p> }.into_any();
    }
    let rows = entries
        .into_iter()
        .map(|entry| {
            view! {
                <tr>
                    <td class="nowrap">{format_time(&entry.at)}</td>
                    <td>
                        {entry.actor} " " <span class="muted">"(" {entry.actor_kind} ")"</span>
                    </td>
                    <td>
                        <code>{entry.action}</code>
                    </td>
                    <td>{entry.ip.unwrap_or_default()}</td>
                    <td class="changes">
                        {entry.changes.map(|changes| view! { <code>{changes}</code> })}
                    </td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table class="audit">
            <thead>
                <tr>
                    <th scope="col">"When"</th>
                    <th scope="col">"Who"</th>
                    <th scope="col">"Action"</th>
                    <th scope="col">"IP"</th>
                    <th scope="col">"Changes"</th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}
