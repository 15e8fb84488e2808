//! `/orgs/:slug/control-planes/:id/objects[?kind=K]`: the control plane's objects with their
//! live phase, filtered by kind.

use std::collections::HashSet;

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::{components::Form, hooks::use_query_map};

use super::{
    ObjectKey, ObjectSummary, apply_path, can_change, list_objects,
    live::{ObjectLive, current, watch_objects},
    object_link, object_path, objects_path, use_cp_id,
};
use crate::{
    components::{ErrorBox, Loading, Refresh},
    identity::use_session,
    orgs::{OrgContext, tab_basics},
};

#[component]
pub fn ObjectsPage() -> impl IntoView {
    let session = use_session();
    let ctx = expect_context::<OrgContext>();
    let cp = use_cp_id();
    let query = use_query_map();
    let kind = Memo::new(move |_| query.read().get("kind").filter(|k| !k.is_empty()));
    let reload = RwSignal::new(0usize);
    let objects = Resource::new(
        move || (cp.get(), kind.get(), Refresh::generation(), reload.get()),
        |(cp, kind, _, _)| list_objects(cp, kind),
    );
    // The rows shown, to reload when the stream names another object or a deletion.
    let shown = StoredValue::new(None::<HashSet<ObjectKey>>);
    let live = watch_objects(ctx.slug, cp, move |change| {
        let filtered_out = kind.with_untracked(|k| k.as_ref().is_some_and(|k| *k != change.kind));
        let unknown = shown.with_value(|keys| {
            keys.as_ref()
                .is_some_and(|keys| change.deleted || !keys.contains(&change.key()))
        });
        if unknown && !filtered_out {
            shown.set_value(None);
            reload.update(|n| *n += 1);
        }
    });

    view! {
        <Title text="Objects · Qleet"/>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                let (_, org) = tab_basics(session, ctx).await?;
                let (slug, id) = (org.slug.clone(), cp.get_untracked());
                let here = objects_path(&slug, &id);
                let body = match objects.await {
                    Ok((objects, kinds)) => {
                        shown.set_value(Some(objects.iter().map(ObjectSummary::key).collect()));
                        view! {
                            {kind_filter(&here, kinds, kind.get_untracked())}
                            {object_table(objects, &slug, &id, live)}
                        }
                            .into_any()
                    }
                    Err(error) => view! { <ErrorBox error/> }.into_any(),
                };
                let apply = can_change(org.viewer_role)
                    .then(|| {
                        view! {
                            <a id="objects-apply" class="button" href=apply_path(&slug, &id)>
                                "Apply YAML…"
                            </a>
                        }
                    });
                Some(
                    view! {
                        <section class="card">
                            <div class="card-head">
                                <h2>"Objects"</h2>
                                {apply}
                                <a id="objects-refresh" class="refresh" href=here rel="external">
                                    "Refresh"
                                </a>
                            </div>
                            {body}
                        </section>
                    }
                        .into_any(),
                )
            })}
        </Transition>
    }
}

/// A GET form: works the same with and without JavaScript.
fn kind_filter(action: &str, kinds: Vec<String>, selected: Option<String>) -> AnyView {
    if kinds.is_empty() {
        return ().into_any();
    }
    let options = kinds
        .into_iter()
        .map(|kind| {
            let is = selected.as_deref() == Some(kind.as_str());
            view! {
                <option value=kind.clone() selected=is>
                    {kind.clone()}
                </option>
            }
        })
        .collect_view();
    view! {
        <Form method="GET" action=action.to_owned() attr:class="inline filter">
            <div>
                <label for="objects-kind">"Kind"</label>
                <select id="objects-kind" name="kind">
                    <option value="" selected=selected.is_none()>
                        "All kinds"
                    </option>
                    {options}
                </select>
            </div>
            <button type="submit" id="objects-filter" class="secondary">
                "Filter"
            </button>
        </Form>
    }
    .into_any()
}

fn object_table(objects: Vec<ObjectSummary>, slug: &str, cp: &str, live: ObjectLive) -> AnyView {
    if objects.is_empty() {
        return view! {
            <p class="muted" id="objects-empty">
                "No objects. Declare some on the "
                <a href=apply_path(slug, cp)>"apply page"</a>
                "."
            </p>
        }
        .into_any();
    }
    let rows = objects
        .into_iter()
        .map(|object| {
            let now = current(live, object.snapshot());
            let phase = move || now.with(|c| c.phase.as_str().to_owned());
            let label = move || now.with(|c| c.phase.label());
            let message = move || now.with(|c| c.message.clone().unwrap_or_default());
            let generations =
                move || now.with(|c| format!("{} / {}", c.observed_generation, c.generation));
            let behind = move || now.with(|c| c.observed_generation < c.generation);
            let href = object_path(slug, cp, &object.kind, &object.name);
            let owner = object
                .owner
                .as_ref()
                .map(|owner| object_link(slug, cp, owner).into_any());
            let deleting = object
                .deleting
                .then(|| view! { " " <span class="badge">"deleting"</span> });
            view! {
                <tr class="object-row" data-key=object.key().to_string() data-phase=phase>
                    <td>{object.kind.clone()}</td>
                    <td>
                        <a class="object-name" href=href>
                            {object.name.clone()}
                        </a>
                        {deleting}
                    </td>
                    <td class="object-phase">
                        <span class="badge phase" data-phase=phase>
                            {label}
                        </span>
                    </td>
                    <td class="nowrap" title="observed / desired generation" class:behind=behind>
                        {generations}
                    </td>
                    <td class="object-message">{message}</td>
                    <td>{owner}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table id="objects" class="objects">
            <thead>
                <tr>
                    <th scope="col">"Kind"</th>
                    <th scope="col">"Name"</th>
                    <th scope="col">"Phase"</th>
                    <th scope="col">"Generation"</th>
                    <th scope="col">"Message"</th>
                    <th scope="col">"Owner"</th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}
