//! `/orgs/:slug/control-planes`: the organisation's control planes and, for admins, the create
//! form.

use std::collections::HashSet;

use leptos::prelude::*;
use leptos_meta::Title;

use super::{
    ControlPlane, CreateControlPlane, detail_path, list_control_planes, list_path,
    live::{Live, latest, watch_statuses},
};
use crate::{
    api::{Access, format_time},
    components::{CsrfField, ErrorBox, Loading, Notice, Refresh, Submit, action_error, mutation},
    identity::use_session,
    orgs::{OrgContext, tab_basics},
};

#[component]
pub fn ControlPlanesPage() -> impl IntoView {
    let session = use_session();
    let ctx = expect_context::<OrgContext>();
    // Bumped when the stream names a control plane the table does not show (created elsewhere).
    let reload = RwSignal::new(0usize);
    let planes = Resource::new(
        move || (ctx.slug.get(), Refresh::generation(), reload.get()),
        |(slug, _, _)| list_control_planes(slug),
    );
    // The ids in the table, once it has loaded (kept apart: the stream's handler must not read
    // the resource outside a Suspense).
    let shown = StoredValue::new(None::<HashSet<String>>);
    let live = watch_statuses(ctx.slug, move |update| {
        let unknown =
            shown.with_value(|ids| ids.as_ref().is_some_and(|ids| !ids.contains(&update.id)));
        if unknown {
            shown.set_value(None);
            reload.update(|n| *n += 1);
        }
    });
    let create = mutation::<CreateControlPlane>();

    view! {
        <Title text="Control planes · Qleet"/>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                let (_, org) = tab_basics(session, ctx).await?;
                let body = match planes.await {
                    Ok(Access::Allowed(planes)) => {
                        shown.set_value(Some(planes.iter().map(|cp| cp.id.clone()).collect()));
                        plane_table(planes, &org.slug, live).into_any()
                    }
                    Ok(Access::Denied(reason)) => view! { <Notice text=reason/> }.into_any(),
                    Err(error) => view! { <ErrorBox error/> }.into_any(),
                };
                Some(
                    view! {
                        <section class="card">
                            <div class="card-head">
                                <h2>"Control planes"</h2>
                                // A full reload: the way to see changes without JavaScript.
                                <a id="cp-refresh" href=list_path(&org.slug) rel="external">
                                    "Refresh"
                                </a>
                            </div>
                            {body}
                        </section>
                    },
                )
            })}
        </Transition>
        // Apart from the table, so a reload of the table keeps what is being typed here.
        <Transition>
            {move || Suspend::new(async move {
                let (csrf, org) = tab_basics(session, ctx).await?;
                let body = if org.viewer_role.is_admin() {
                    view! {
                        <ActionForm action=create>
                            <CsrfField csrf/>
                            <input type="hidden" name="org" value=org.slug/>
                            <div class="inline">
                                <div>
                                    <label for="cp-create-name">"Name"</label>
                                    <input
                                        id="cp-create-name"
                                        name="name"
                                        type="text"
                                        required
                                        autocomplete="off"
                                    />
                                </div>
                                <div>
                                    <label for="cp-create-region">"Region (optional)"</label>
                                    <input
                                        id="cp-create-region"
                                        name="region"
                                        type="text"
                                        autocomplete="off"
                                        aria-describedby="cp-create-region-hint"
                                    />
                                </div>
                                <Submit
                                    id="cp-create-submit"
                                    label="Create control plane"
                                    pending=create.pending()
                                />
                            </div>
                            <p id="cp-create-region-hint" class="hint">
                                "Leave the region empty for the default."
                            </p>
                            {action_error(create)}
                        </ActionForm>
                    }
                        .into_any()
                } else {
                    let text = format!(
                        "Only admins and owners can create control planes; your role is {}.",
                        org.viewer_role.label(),
                    );
                    view! { <Notice text/> }.into_any()
                };
                Some(
                    view! {
                        <section class="card">
                            <h2>"Create a control plane"</h2>
                            {body}
                        </section>
                    },
                )
            })}
        </Transition>
    }
}

fn plane_table(planes: Vec<ControlPlane>, slug: &str, live: Live) -> impl IntoView + use<> {
    if planes.is_empty() {
        return view! { <p class="muted">"No control planes yet."</p> }.into_any();
    }
    let rows = planes
        .into_iter()
        .map(|cp| {
            let href = detail_path(slug, &cp.id);
            let loaded = cp.snapshot();
            let current = Memo::new(move |_| {
                live.with(|heard| latest(&loaded, heard.get(&loaded.id)).clone())
            });
            let status = move || current.with(|c| c.status.as_str().to_owned());
            let label = move || current.with(|c| c.status.label());
            let reason = move || current.with(|c| c.status_reason.clone());
            view! {
                <tr class="cp-row" data-id=cp.id.clone()>
                    <td>
                        <a class="cp-link" href=href.clone()>
                            {cp.name.clone()}
                        </a>
                    </td>
                    <td class="cp-status" data-status=status>
                        <span class="badge status" data-status=status title=reason>
                            {label}
                        </span>
                    </td>
                    <td>
                        {cp
                            .region
                            .clone()
                            .map_or_else(
                                || view! { <span class="muted">"default"</span> }.into_any(),
                                |region| region.into_any(),
                            )}
                    </td>
                    <td class="nowrap">{format_time(&cp.created_at)}</td>
                    <td class="actions">
                        <a href=href aria-label=format!("Details of {}", cp.name)>
                            "Details"
                        </a>
                    </td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table class="control-planes">
            <thead>
                <tr>
                    <th scope="col">"Name"</th>
                    <th scope="col">"Status"</th>
                    <th scope="col">"Region"</th>
                    <th scope="col">"Created"</th>
                    <th scope="col">
                        <span class="visually-hidden">"Link"</span>
                    </th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}
