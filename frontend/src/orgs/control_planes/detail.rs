//! `/orgs/:slug/control-planes/:id`: one control plane — status, endpoint, events — and, for
//! admins, suspending, resuming and deleting it.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;

use super::{
    ControlPlane, ControlPlaneEvent, DeleteControlPlane, ResumeControlPlane, Status, StatusUpdate,
    SuspendControlPlane, control_plane_events, detail_path, get_control_plane,
    live::{latest, watch_statuses},
    status_badge,
};
use crate::{
    api::{format_time, url_encode},
    components::{CsrfField, ErrorBox, Loading, Notice, Refresh, Submit, action_error, mutation},
    identity::use_session,
    orgs::{OrgContext, overview::regex_literal, tab_basics},
};

#[component]
pub fn ControlPlanePage() -> impl IntoView {
    let session = use_session();
    let ctx = expect_context::<OrgContext>();
    let params = use_params_map();
    let id = Memo::new(move |_| params.read().get("id").unwrap_or_default());
    let plane = Resource::new(
        move || (ctx.slug.get(), id.get(), Refresh::generation()),
        |(slug, id, _)| get_control_plane(slug, id),
    );
    // Bumped when the shown status changes, to load the event that says why.
    let new_events = RwSignal::new(0usize);
    let events = Resource::new(
        move || {
            (
                ctx.slug.get(),
                id.get(),
                Refresh::generation(),
                new_events.get(),
            )
        },
        |(slug, id, _, _)| control_plane_events(slug, id),
    );
    let live = watch_statuses(ctx.slug, |_| {});
    let suspend = mutation::<SuspendControlPlane>();
    let resume = mutation::<ResumeControlPlane>();
    let delete = mutation::<DeleteControlPlane>();

    view! {
        <Title text="Control plane · Qleet"/>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                let (csrf, org) = tab_basics(session, ctx).await?;
                let cp = match plane.await {
                    Ok(cp) => cp,
                    Err(error) => return Some(view! { <ErrorBox error/> }.into_any()),
                };
                let loaded = cp.snapshot();
                let current = Memo::new(move |_| {
                    live.with(|heard| latest(&loaded, heard.get(&loaded.id)).clone())
                });
                let status = Memo::new(move |_| current.with(|c| c.status.clone()));
                Effect::new(move |shown: Option<Status>| {
                    let now = status.get();
                    if shown.is_some_and(|shown| shown != now) {
                        new_events.update(|n| *n += 1);
                    }
                    now
                });
                let admin = org.viewer_role.is_admin();
                let lifecycle = if admin {
                    lifecycle_forms(&cp, &org.slug, &csrf, status, suspend, resume).into_any()
                } else {
                    view! {
                        <Notice text="Only admins and owners can suspend, resume or delete control planes."/>
                    }
                        .into_any()
                };
                let deletion = admin
                    .then(|| delete_section(&cp, &org.slug, &csrf, status, delete).into_any());
                // Pieces erased to `AnyView`: one nested type for the whole page is too deep
                // for the compiler.
                Some(
                    view! {
                        {overview(&cp, &org.slug, current, status)}
                        <section class="card">
                            <h2>"Lifecycle"</h2>
                            {action_error(suspend)}
                            {action_error(resume)}
                            {lifecycle}
                        </section>
                        {events_card(events)}
                        {deletion}
                    }
                        .into_any(),
                )
            })}
        </Transition>
    }
}

/// Name, live status, endpoint and facts, and how to call it.
fn overview(
    cp: &ControlPlane,
    org: &str,
    current: Memo<StatusUpdate>,
    status: Memo<Status>,
) -> AnyView {
    let tokens = format!("/orgs/{}/tokens", url_encode(org));
    let here = detail_path(org, &cp.id);
    let reason = move || {
        current.with(|c| c.status_reason.clone()).map(|reason| {
            view! {
                <p id="cp-status-reason" class="reason">
                    {reason}
                </p>
            }
        })
    };
    view! {
        <section class="card">
            <div class="card-head">
                <h2 id="cp-title">{cp.name.clone()}</h2>
                <span
                    id="cp-status"
                    class="badge status"
                    data-status=move || status.with(|s| s.as_str().to_owned())
                >
                    {move || status.with(Status::label)}
                </span>
                <a id="cp-refresh" href=here rel="external">
                    "Refresh"
                </a>
            </div>
            {reason}
            <dl class="facts">
                <dt>"Endpoint"</dt>
                <dd>
                    <Endpoint url=cp.endpoint.clone()/>
                </dd>
                <dt>"Version"</dt>
                <dd id="cp-version">
                    <code>{cp.version.clone()}</code>
                </dd>
                <dt>"Region"</dt>
                <dd id="cp-region">{cp.region.clone().unwrap_or_else(|| "default".to_owned())}</dd>
                <dt>"Created"</dt>
                <dd>{format_time(&cp.created_at)}</dd>
                <dt>"Updated"</dt>
                <dd>{move || current.with(|c| format_time(&c.updated_at))}</dd>
                <dt>"ID"</dt>
                <dd>
                    <code>{cp.id.clone()}</code>
                </dd>
            </dl>
            <h3>"Try it"</h3>
            <p>"Call its GraphQL API with an " <a href=tokens>"API token"</a> " of this organisation:"</p>
            <pre class="example"><code id="cp-curl">{curl_example(&cp.endpoint)}</code></pre>
        </section>
    }
    .into_any()
}

/// The status changes, newest first; reloaded when the live status changes.
fn events_card(events: Resource<Result<Vec<ControlPlaneEvent>, ServerFnError>>) -> AnyView {
    view! {
        <section class="card">
            <h2>"Events"</h2>
            <Transition fallback=Loading>
                {move || Suspend::new(async move {
                    match events.await {
                        Ok(events) => event_list(events),
                        Err(error) => view! { <ErrorBox error/> }.into_any(),
                    }
                })}
            </Transition>
        </section>
    }
    .into_any()
}

/// The endpoint, selectable as text; once hydrated, with a copy button when the browser allows
/// writing to the clipboard.
#[component]
fn Endpoint(url: String) -> impl IntoView {
    // Stays false on the server and during hydration, so both render the same.
    let can_copy = RwSignal::new(false);
    let copied = RwSignal::new(false);
    Effect::new(move |_| can_copy.set(clipboard::available()));
    let copy = {
        let url = url.clone();
        move |_| clipboard::copy(url.clone(), copied)
    };
    view! {
        <div class="inline endpoint">
            <label for="cp-endpoint" class="visually-hidden">
                "Endpoint"
            </label>
            <input id="cp-endpoint" class="copy" type="text" readonly value=url/>
            {move || {
                let copy = copy.clone();
                can_copy
                    .get()
                    .then(|| {
                        view! {
                            <button type="button" id="cp-endpoint-copy" class="secondary" on:click=copy>
                                {move || if copied.get() { "Copied" } else { "Copy" }}
                            </button>
                        }
                    })
            }}
        </div>
    }
}

mod clipboard {
    use leptos::prelude::*;

    pub fn available() -> bool {
        #[cfg(feature = "hydrate")]
        {
            use wasm_bindgen::JsValue;
            // `navigator.clipboard` is missing outside secure contexts.
            web_sys::window().is_some_and(|window| {
                let clipboard = JsValue::from(window.navigator().clipboard());
                !clipboard.is_undefined() && !clipboard.is_null()
            })
        }
        #[cfg(not(feature = "hydrate"))]
        false
    }

    /// Writes `text` to the clipboard and says "Copied" for a moment once it is there.
    pub fn copy(text: String, copied: RwSignal<bool>) {
        #[cfg(feature = "hydrate")]
        {
            let Some(window) = web_sys::window() else {
                return;
            };
            let promise = window.navigator().clipboard().write_text(&text);
            leptos::task::spawn_local(async move {
                if wasm_bindgen_futures::JsFuture::from(promise).await.is_ok() {
                    copied.set(true);
                    set_timeout(move || copied.set(false), std::time::Duration::from_secs(2));
                }
            });
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = (text, copied);
    }
}

/// A shell command calling the endpoint with a token placeholder.
fn curl_example(endpoint: &str) -> String {
    let quoted = format!("'{}'", endpoint.replace('\'', r"'\''"));
    format!(
        "curl {quoted} \\\n  -H 'Authorization: Bearer qleet_...' \\\n  \
         -H 'Content-Type: application/json' \\\n  -d '{{\"query\": \"{{ __typename }}\"}}'"
    )
}

/// Suspend and Resume, as the current status allows; they follow the live status.
fn lifecycle_forms(
    cp: &ControlPlane,
    org: &str,
    csrf: &str,
    status: Memo<Status>,
    suspend: ServerAction<SuspendControlPlane>,
    resume: ServerAction<ResumeControlPlane>,
) -> impl IntoView + use<> {
    let (org, csrf, id) = (org.to_owned(), csrf.to_owned(), cp.id.clone());
    move || {
        let status = status.get();
        let (org, csrf, id) = (org.clone(), csrf.clone(), id.clone());
        let (org2, csrf2, id2) = (org.clone(), csrf.clone(), id.clone());
        let suspend_form = status.can_suspend().then(move || {
            view! {
                <ActionForm action=suspend>
                    <CsrfField csrf/>
                    <input type="hidden" name="org" value=org/>
                    <input type="hidden" name="id" value=id/>
                    <Submit id="cp-suspend" label="Suspend" pending=suspend.pending()/>
                </ActionForm>
            }
        });
        let resume_form = status.can_resume().then(move || {
            view! {
                <ActionForm action=resume>
                    <CsrfField csrf=csrf2/>
                    <input type="hidden" name="org" value=org2/>
                    <input type="hidden" name="id" value=id2/>
                    <Submit id="cp-resume" label="Resume" pending=resume.pending()/>
                </ActionForm>
            }
        });
        let none = (suspend_form.is_none() && resume_form.is_none()).then(|| {
            view! {
                <p class="muted">
                    "Nothing to do while it is " {status.label().to_lowercase()} "."
                </p>
            }
        });
        view! {
            <p class="hint">
                "Suspending stops the control plane and keeps its data; resuming starts it again."
            </p>
            <div class="inline lifecycle">{suspend_form}{resume_form}</div>
            {none}
        }
    }
}

/// Deleting, after typing the name; hidden once deletion has begun.
fn delete_section(
    cp: &ControlPlane,
    org: &str,
    csrf: &str,
    status: Memo<Status>,
    delete: ServerAction<DeleteControlPlane>,
) -> impl IntoView + use<> {
    let deletable = Memo::new(move |_| status.with(Status::can_delete));
    let (org, csrf, id, name) = (
        org.to_owned(),
        csrf.to_owned(),
        cp.id.clone(),
        cp.name.clone(),
    );
    move || {
        let (org, csrf, id, name) = (org.clone(), csrf.clone(), id.clone(), name.clone());
        deletable.get().then(move || {
            let pattern = regex_literal(&name);
            view! {
                <section class="card danger">
                    <h2>"Delete control plane"</h2>
                    <p>
                        "This deletes the control plane and all its data. It cannot be undone. "
                        "Type its name " <code>{name}</code> " to confirm."
                    </p>
                    <ActionForm action=delete>
                        <CsrfField csrf/>
                        <input type="hidden" name="org" value=org/>
                        <input type="hidden" name="id" value=id/>
                        <label for="cp-delete-confirm">"Name"</label>
                        <div class="inline">
                            <input
                                id="cp-delete-confirm"
                                name="confirm_name"
                                type="text"
                                required
                                autocomplete="off"
                                pattern=pattern
                                title="Type the control plane's name exactly"
                            />
                            <Submit
                                id="cp-delete-submit"
                                class="danger"
                                label="Delete control plane"
                                pending=delete.pending()
                            />
                        </div>
                        {action_error(delete)}
                    </ActionForm>
                </section>
            }
        })
    }
}

fn event_list(events: Vec<ControlPlaneEvent>) -> AnyView {
    if events.is_empty() {
        return view! { <p class="muted">"No events yet."</p> }.into_any();
    }
    let items = events
        .into_iter()
        .map(|event| {
            let from = event
                .from
                .as_ref()
                .map(|from| view! { {status_badge(from)} " → " });
            view! {
                <li class="cp-event" data-to=event.to.as_str().to_owned()>
                    <span class="when nowrap">{format_time(&event.at)}</span>
                    <span class="change">{from} {status_badge(&event.to)}</span>
                    <span class="message">{event.message}</span>
                </li>
            }
        })
        .collect_view();
    view! { <ol id="cp-events" class="cp-events">{items}</ol> }.into_any()
}

#[cfg(test)]
mod tests {
    use super::curl_example;

    #[test]
    fn curl_example_quotes_the_endpoint() {
        let example = curl_example("https://q.example/cp/1/graphql");
        assert!(example.starts_with("curl 'https://q.example/cp/1/graphql' \\\n"));
        assert!(example.contains("Authorization: Bearer qleet_..."));
        assert!(curl_example("a'b").starts_with(r"curl 'a'\''b'"));
    }
}
