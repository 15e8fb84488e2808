//! `/orgs/:slug/control-planes/:id/objects/:kind/:name`: one object — live phase, spec,
//! rendered spec, status and conditions, outputs, events, dependencies and dependents — and,
//! for admins, deleting it.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::hooks::use_params_map;
use serde_json::Value;

use super::{
    DeleteObject, ObjectChange, ObjectDetail, ObjectEvent, ObjectRef, Phase, RerunObject,
    can_change, get_object,
    live::{current, watch_objects},
    object_link, use_cp_id,
    yaml::to_yaml,
};
use crate::{
    api::format_time,
    components::{CsrfField, ErrorBox, Loading, Notice, Refresh, Submit, action_error, mutation},
    identity::use_session,
    orgs::{OrgContext, overview::regex_literal, tab_basics},
};

#[component]
pub fn ObjectPage() -> impl IntoView {
    let session = use_session();
    let ctx = expect_context::<OrgContext>();
    let cp = use_cp_id();
    let params = use_params_map();
    let kind = Memo::new(move |_| params.read().get("kind").unwrap_or_default());
    let name = Memo::new(move |_| params.read().get("name").unwrap_or_default());
    // Bumped when the stream reports this object, to load its new status, outputs and events.
    let reload = RwSignal::new(0usize);
    let object = Resource::new(
        move || {
            (
                cp.get(),
                kind.get(),
                name.get(),
                Refresh::generation(),
                reload.get(),
            )
        },
        |(cp, kind, name, _, _)| get_object(cp, kind, name),
    );
    // What the loaded object said, so that only real news reloads the page (the stream
    // repeats the current state on every (re)connection).
    let shown = StoredValue::new(None::<ObjectChange>);
    let live = watch_objects(ctx.slug, cp, move |change| {
        let ours = kind.with_untracked(|k| *k == change.kind)
            && name.with_untracked(|n| *n == change.name);
        if ours && shown.with_value(|shown| !shown.as_ref().is_some_and(|s| same_state(s, change)))
        {
            reload.update(|n| *n += 1);
        }
    });
    let delete = mutation::<DeleteObject>();
    let rerun = mutation::<RerunObject>();

    view! {
        // On the server the title is read after the page is rendered, when this page may have
        // been dropped (its control plane failed to load): then the memos are gone.
        <Title text=move || match (kind.try_get(), name.try_get()) {
            (Some(kind), Some(name)) => format!("{kind}/{name} · Qleet"),
            _ => "Object · Qleet".to_owned(),
        }/>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                let (csrf, org) = tab_basics(session, ctx).await?;
                let object = match object.await {
                    Ok(object) => object,
                    Err(error) => return Some(view! { <ErrorBox error/> }.into_any()),
                };
                shown.set_value(Some(object.snapshot()));
                let (slug, id) = (org.slug.clone(), cp.get_untracked());
                let deletion = if org.viewer_role.is_admin() {
                    delete_section(&object, &slug, &id, &csrf, delete)
                } else {
                    view! {
                        <Notice text="Only admins and owners can delete objects here; others change them by applying YAML."/>
                    }
                        .into_any()
                };
                let actions = if can_change(org.viewer_role) {
                    actions_card(&object, &slug, &id, &csrf, rerun)
                } else {
                    ().into_any()
                };
                let trail = crate::orgs::control_planes::trail::object_trail_card(
                    &slug,
                    &id,
                    &object.kind,
                    &object.name,
                    &object.trail,
                );
                Some(
                    view! {
                        {overview(&object, &slug, &id, live)}
                        {actions}
                        {documents(&object)}
                        {outputs_card(&object.outputs)}
                        {conditions_card(&object)}
                        {links_card(&object, &slug, &id)}
                        {events_card(&object.events)}
                        {trail}
                        {deletion}
                    }
                        .into_any(),
                )
            })}
        </Transition>
    }
}

fn overview(object: &ObjectDetail, slug: &str, cp: &str, live: super::live::ObjectLive) -> AnyView {
    let now = current(live, object.snapshot());
    let phase = Memo::new(move |_| now.with(|c| c.phase.clone()));
    let message = move || {
        now.with(|c| c.message.clone())
            .filter(|m| !m.is_empty())
            .map(|message| {
                view! {
                    <p id="object-message" class="reason">
                        {message}
                    </p>
                }
            })
    };
    let owner = object.owner.as_ref().map(|owner| {
        view! {
            <dt>"Owner"</dt>
            <dd id="object-owner">{object_link(slug, cp, owner)}</dd>
        }
    });
    let deleting = object
        .deleting
        .then(|| view! { <span class="badge">"Being deleted"</span> });
    view! {
        <section class="card">
            <div class="card-head">
                <h2 id="object-title">{format!("{}/{}", object.kind, object.name)}</h2>
                <span
                    id="object-phase"
                    class="badge phase"
                    data-phase=move || phase.with(|p| p.as_str().to_owned())
                >
                    {move || phase.with(Phase::label)}
                </span>
                {deleting}
            </div>
            {message}
            <dl class="facts">
                <dt>"Kind"</dt>
                <dd>{object.kind.clone()}</dd>
                <dt>"Generation"</dt>
                <dd id="object-generation">
                    {move || {
                        now.with(|c| {
                            format!(
                                "{} (observed {})",
                                c.generation,
                                c.observed_generation,
                            )
                        })
                    }}
                </dd>
                {owner}
                <dt>"Created"</dt>
                <dd>{format_time(&object.created_at)}</dd>
                <dt>"Updated"</dt>
                <dd>{move || now.with(|c| format_time(&c.at))}</dd>
            </dl>
        </section>
    }
    .into_any()
}

/// Spec, rendered spec and status, as YAML.
fn documents(object: &ObjectDetail) -> AnyView {
    let rendered = object
        .rendered
        .as_ref()
        .filter(|r| !r.is_null())
        .map(|rendered| {
            view! {
                <h3>"Rendered"</h3>
                <p class="hint">"The spec with every reference resolved, as it is deployed."</p>
                <pre class="document" id="object-rendered"><code>{to_yaml(rendered)}</code></pre>
            }
        });
    let pending = (object.rendered.as_ref().is_none_or(Value::is_null)
        && object.kind == "Workload")
        .then(|| {
            view! {
                <p class="muted" id="object-rendered-pending">
                    "Not rendered yet: it waits for the outputs it references."
                </p>
            }
        });
    view! {
        <section class="card">
            <h2>"Spec"</h2>
            <pre class="document" id="object-spec"><code>{to_yaml(&object.spec)}</code></pre>
            {rendered}
            {pending}
            <h3>"Status"</h3>
            <pre class="document" id="object-status"><code>{to_yaml(&object.status)}</code></pre>
        </section>
    }
    .into_any()
}

/// Whether two states of an object would show the same (times aside).
fn same_state(a: &ObjectChange, b: &ObjectChange) -> bool {
    a.phase == b.phase
        && a.message == b.message
        && a.generation == b.generation
        && a.observed_generation == b.observed_generation
        && a.deleted == b.deleted
}

/// How an output value reads: its text, and whether it is a secret reference (whose value is
/// never shown, only where it is kept).
pub fn output_text(value: &Value) -> (String, bool) {
    match value {
        Value::Object(map) if map.len() == 1 && map.contains_key("secretRef") => {
            (compact(&map["secretRef"]), true)
        }
        Value::String(s) => (s.clone(), false),
        other => (compact(other), false),
    }
}

/// One-line JSON, or `—` for nothing.
pub fn compact(value: &Value) -> String {
    match value {
        Value::Null => "—".to_owned(),
        other => other.to_string(),
    }
}

fn outputs_card(outputs: &Value) -> AnyView {
    let rows: Vec<(String, Value)> = match outputs {
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Value::Null => Vec::new(),
        other => vec![("value".to_owned(), other.clone())],
    };
    let body = if rows.is_empty() {
        view! { <p class="muted">"No outputs yet."</p> }.into_any()
    } else {
        let rows = rows
            .into_iter()
            .map(|(name, value)| {
                let (text, secret) = output_text(&value);
                let shown = if secret {
                    view! {
                        <span class="badge secret-ref">"secret reference"</span>
                        " "
                        <code>{text}</code>
                    }
                    .into_any()
                } else {
                    view! { <code>{text}</code> }.into_any()
                };
                let key = name.clone();
                view! {
                    <tr class="output" data-name=key data-secret=secret.to_string()>
                        <th scope="row">{name}</th>
                        <td>{shown}</td>
                    </tr>
                }
            })
            .collect_view();
        view! {
            <table id="object-outputs" class="outputs">
                <tbody>{rows}</tbody>
            </table>
        }
        .into_any()
    };
    view! {
        <section class="card">
            <h2>"Outputs"</h2>
            <p class="hint">"What other objects can reference, e.g. ${Kind/name.output}."</p>
            {body}
        </section>
    }
    .into_any()
}

fn conditions_card(object: &ObjectDetail) -> AnyView {
    if object.conditions.is_empty() {
        return ().into_any();
    }
    let rows = object
        .conditions
        .iter()
        .map(|c| {
            view! {
                <tr class="condition" data-type=c.kind.clone() data-status=c.status.to_string()>
                    <td>{c.kind.clone()}</td>
                    <td>{if c.status { "True" } else { "False" }}</td>
                    <td>{c.reason.clone()}</td>
                    <td>{c.message.clone()}</td>
                    <td class="nowrap">{format_time(&c.last_transition_at)}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <section class="card">
            <h2>"Conditions"</h2>
            <table class="conditions">
                <thead>
                    <tr>
                        <th scope="col">"Type"</th>
                        <th scope="col">"Status"</th>
                        <th scope="col">"Reason"</th>
                        <th scope="col">"Message"</th>
                        <th scope="col">"Since"</th>
                    </tr>
                </thead>
                <tbody>{rows}</tbody>
            </table>
        </section>
    }
    .into_any()
}

fn ref_list(
    id: &'static str,
    refs: &[ObjectRef],
    slug: &str,
    cp: &str,
    none: &'static str,
) -> AnyView {
    if refs.is_empty() {
        return view! { <p class="muted">{none}</p> }.into_any();
    }
    let items = refs
        .iter()
        .map(|r| view! { <li>{object_link(slug, cp, r)}</li> })
        .collect_view();
    view! { <ul id=id class="refs">{items}</ul> }.into_any()
}

fn links_card(object: &ObjectDetail, slug: &str, cp: &str) -> AnyView {
    view! {
        <section class="card">
            <h2>"Dependencies"</h2>
            <p class="hint">"What this object uses; it waits until they are ready."</p>
            {ref_list("object-dependencies", &object.dependencies, slug, cp, "None.")}
            <h2>"Dependents"</h2>
            <p class="hint">"What uses this object's outputs."</p>
            {ref_list("object-dependents", &object.dependents, slug, cp, "None.")}
        </section>
    }
    .into_any()
}

fn events_card(events: &[ObjectEvent]) -> AnyView {
    let body = if events.is_empty() {
        view! { <p class="muted">"No events yet."</p> }.into_any()
    } else {
        let items = events
            .iter()
            .map(|e| {
                view! {
                    <li class="object-event" data-type=e.kind.clone()>
                        <span class="when nowrap">{format_time(&e.at)}</span>
                        <span class="reason-code">{e.reason.clone()}</span>
                        <span class="message">{e.message.clone()}</span>
                    </li>
                }
            })
            .collect_view();
        view! { <ol id="object-events" class="cp-events">{items}</ol> }.into_any()
    };
    view! {
        <section class="card">
            <h2>"Events"</h2>
            {body}
        </section>
    }
    .into_any()
}

/// Retry (a FAILED object) and check against the cloud (a READY or FAILED one), for those who
/// may change objects.
fn actions_card(
    object: &ObjectDetail,
    slug: &str,
    cp: &str,
    csrf: &str,
    rerun: ServerAction<RerunObject>,
) -> AnyView {
    let phase = object.phase.as_str();
    if object.deleting || !matches!(phase, "FAILED" | "READY") {
        return ().into_any();
    }
    let form = |which: &'static str, label: &'static str, id: &'static str, class: &'static str| {
        let (csrf, slug, cp) = (csrf.to_owned(), slug.to_owned(), cp.to_owned());
        let (kind, name) = (object.kind.clone(), object.name.clone());
        view! {
            <ActionForm action=rerun>
                <CsrfField csrf/>
                <input type="hidden" name="org" value=slug/>
                <input type="hidden" name="cp" value=cp/>
                <input type="hidden" name="kind" value=kind/>
                <input type="hidden" name="name" value=name/>
                <input type="hidden" name="which" value=which/>
                <Submit id=id class=class label=label pending=rerun.pending()/>
            </ActionForm>
        }
    };
    let retry = (phase == "FAILED").then(|| {
        view! {
            <p>"Its work failed. Retry it now, from the first attempt:"</p>
            {form("retry", "Retry now", "object-retry", "")}
        }
    });
    let refresh = (object.kind != "Composition").then(|| {
        view! {
            <p>
                "Have the agent check it against the cloud: what was changed or deleted behind Qleet's back is shown as drift (and put back, unless its driftPolicy is Report)."
            </p>
            {form("refresh", "Check against the cloud", "object-refresh", "secondary")}
        }
    });
    view! {
        <section class="card" id="object-actions">
            <h2>"Actions"</h2>
            {retry}
            {refresh}
            {action_error(rerun)}
        </section>
    }
    .into_any()
}

fn delete_section(
    object: &ObjectDetail,
    slug: &str,
    cp: &str,
    csrf: &str,
    delete: ServerAction<DeleteObject>,
) -> AnyView {
    if object.deleting {
        return ().into_any();
    }
    let owned = object.owner.as_ref().map(|owner| {
        view! {
            <p>
                "It belongs to " <code>{owner.key().to_string()}</code>
                ", which may create it again; change or delete that instead."
            </p>
        }
    });
    let (slug, cp, csrf) = (slug.to_owned(), cp.to_owned(), csrf.to_owned());
    let (kind, name) = (object.kind.clone(), object.name.clone());
    let pattern = regex_literal(&name);
    view! {
        <section class="card danger">
            <h2>"Delete object"</h2>
            <p>
                "This deletes " <code>{format!("{}/{}", object.kind, object.name)}</code>
                " and what it created, once nothing depends on it. Type its name "
                <code>{name.clone()}</code> " to confirm."
            </p>
            {owned}
            <ActionForm action=delete>
                <CsrfField csrf/>
                <input type="hidden" name="org" value=slug/>
                <input type="hidden" name="cp" value=cp/>
                <input type="hidden" name="kind" value=kind/>
                <input type="hidden" name="name" value=name/>
                <label for="object-delete-confirm">"Name"</label>
                <div class="inline">
                    <input
                        id="object-delete-confirm"
                        name="confirm_name"
                        type="text"
                        required
                        autocomplete="off"
                        pattern=pattern
                        title="Type the object's name exactly"
                    />
                    <Submit
                        id="object-delete-submit"
                        class="danger"
                        label="Delete object"
                        pending=delete.pending()
                    />
                </div>
                {action_error(delete)}
            </ActionForm>
        </section>
    }
    .into_any()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_repeated_state_is_no_news() {
        let a = ObjectChange {
            kind: "Workload".into(),
            name: "web".into(),
            phase: Phase("READY".into()),
            message: None,
            generation: 2,
            observed_generation: 2,
            deleted: false,
            at: "2026-01-01T00:00:00Z".into(),
        };
        let later = ObjectChange {
            at: "2026-01-01T00:00:05Z".into(),
            ..a.clone()
        };
        assert!(same_state(&a, &later));
        let failed = ObjectChange {
            phase: Phase("FAILED".into()),
            ..a.clone()
        };
        assert!(!same_state(&a, &failed));
    }

    #[test]
    fn secret_outputs_show_only_their_reference() {
        let (text, secret) =
            output_text(&json!({"secretRef": {"name": "db-password", "key": "password"}}));
        assert!(secret);
        assert!(text.contains("db-password"));
        assert_eq!(
            output_text(&json!("db.example")),
            ("db.example".into(), false)
        );
        assert_eq!(output_text(&json!(5432)), ("5432".into(), false));
        // Only a lone `secretRef` is a reference.
        assert!(!output_text(&json!({"secretRef": 1, "x": 2})).1);
        assert_eq!(compact(&Value::Null), "—");
    }
}
