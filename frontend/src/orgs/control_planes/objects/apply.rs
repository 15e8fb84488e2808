//! `/orgs/:slug/control-planes/:id/apply[?yaml=...&prune=true]`: paste multi-document YAML,
//! see the plan (a dry run), then apply exactly the text that was planned.
//!
//! "Plan" is a GET form, so the plan is a page of its own that works without JavaScript (and
//! can be reloaded); "Apply" is a POST form carrying the planned text, and goes to the object
//! list once applied. Validation errors come back as the control plane words them, with the
//! field path in the message.

use leptos::prelude::*;
use leptos_meta::Title;
use leptos_router::{components::Form, hooks::use_query_map};
use serde_json::Value;

use super::{
    ApplyObjects, FieldDiff, Plan, PlannedChange, apply_path, can_change, plan_objects, use_cp_id,
};
use crate::{
    components::{
        CsrfField, ErrorBox, Loading, Notice, Submit, action_error, mutation, raw_text_element,
    },
    identity::use_session,
    orgs::{OrgContext, tab_basics},
};

const EXAMPLE: &str = "kind: ObjectStorageBucket
metadata: {name: assets}
spec: {account: AwsAccount/main, region: eu-west-1}
---
kind: Workload
metadata: {name: web}
spec:
  ...";

#[component]
pub fn ApplyPage() -> impl IntoView {
    let session = use_session();
    let ctx = expect_context::<OrgContext>();
    let cp = use_cp_id();
    let query = use_query_map();
    let yaml = Memo::new(move |_| query.read().get("yaml").unwrap_or_default());
    let prune = Memo::new(move |_| {
        query
            .read()
            .get("prune")
            .is_some_and(|p| matches!(p.as_str(), "true" | "on"))
    });
    let plan = Resource::new(
        move || (cp.get(), yaml.get(), prune.get()),
        |(cp, yaml, prune)| async move {
            if yaml.trim().is_empty() {
                None
            } else {
                Some(plan_objects(cp, yaml, prune).await)
            }
        },
    );
    let apply = mutation::<ApplyObjects>();

    view! {
        <Title text="Apply · Qleet"/>
        <section class="card">
            <h2>"Apply YAML"</h2>
            <p class="hint">
                "One or more objects, separated by " <code>"---"</code>
                ". Plan first: it shows what would change, without changing anything."
            </p>
            <Form method="GET" action=move || apply_path(&ctx.slug.get(), &cp.get())>
                <label for="apply-yaml">"Objects (YAML)"</label>
                <textarea
                    id="apply-yaml"
                    name="yaml"
                    rows="18"
                    spellcheck="false"
                    autocomplete="off"
                    placeholder=EXAMPLE
                    prop:value=move || yaml.get()
                >
                    {raw_text_element(yaml.get_untracked())}
                </textarea>
                <div class="inline">
                    <label class="check">
                        <input
                            type="checkbox"
                            id="apply-prune"
                            name="prune"
                            value="true"
                            prop:checked=move || prune.get()
                            checked=prune.get_untracked()
                        />
                        " Prune: delete objects that are not in this text"
                    </label>
                    <button type="submit" id="apply-plan">
                        "Plan"
                    </button>
                </div>
            </Form>
        </section>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                let (csrf, org) = tab_basics(session, ctx).await?;
                let plan = plan.await?;
                let slug = org.slug.clone();
                let id = cp.get_untracked();
                let body = match plan {
                    Ok(plan) => {
                        let form = if !plan.summary.has_changes() {
                            view! { <p class="muted">"Nothing to apply: every object is as declared."</p> }
                                .into_any()
                        } else if can_change(org.viewer_role) {
                            let (slug, id) = (slug.clone(), id.clone());
                            view! {
                                <ActionForm action=apply>
                                    <CsrfField csrf/>
                                    <input type="hidden" name="org" value=slug/>
                                    <input type="hidden" name="cp" value=id/>
                                    <input type="hidden" name="yaml" value=yaml.get_untracked()/>
                                    {prune
                                        .get_untracked()
                                        .then(|| view! { <input type="hidden" name="prune" value="true"/> })}
                                    <p class="hint">"Applies exactly the text planned above."</p>
                                    <Submit id="apply-submit" label="Apply" pending=apply.pending()/>
                                    {action_error(apply)}
                                </ActionForm>
                            }
                                .into_any()
                        } else {
                            view! { <Notice text="Viewers can plan but not apply; ask a member."/> }
                                .into_any()
                        };
                        view! {
                            {plan_view(&plan, &slug, &id)}
                            {form}
                        }
                            .into_any()
                    }
                    Err(error) => view! { <div id="plan-error"><ErrorBox error/></div> }.into_any(),
                };
                Some(
                    view! {
                        <section class="card">
                            <h2>"Plan"</h2>
                            {body}
                        </section>
                    }
                        .into_any(),
                )
            })}
        </Transition>
    }
}

/// A value in a diff: one-line JSON, `(none)` when absent.
pub fn diff_value(value: &Option<Value>) -> String {
    match value {
        None | Some(Value::Null) => "(none)".to_owned(),
        Some(Value::String(s)) if !s.contains('\n') => format!("{s:?}"),
        Some(other) => other.to_string(),
    }
}

/// `create` for `CREATE`; unknown actions as they come.
pub fn action_label(action: &str) -> String {
    action.to_lowercase()
}

fn plan_view(plan: &Plan, slug: &str, cp: &str) -> AnyView {
    let rows = plan
        .changes
        .iter()
        .map(|change| change_row(change, slug, cp))
        .collect_view();
    view! {
        <p id="plan-summary" class="plan-summary">{plan.summary.text()}</p>
        <table id="plan" class="plan">
            <thead>
                <tr>
                    <th scope="col">"Action"</th>
                    <th scope="col">"Object"</th>
                    <th scope="col">"Changes"</th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}

fn change_row(change: &PlannedChange, slug: &str, cp: &str) -> AnyView {
    let key = format!("{}/{}", change.kind, change.name);
    // New objects have no page yet.
    let object = if change.action == "CREATE" {
        view! { <code>{key.clone()}</code> }.into_any()
    } else {
        view! {
            <a href=super::object_path(slug, cp, &change.kind, &change.name)>
                <code>{key.clone()}</code>
            </a>
        }
        .into_any()
    };
    let owner = change.owner.as_ref().map(|owner| {
        view! { <div class="hint">"owned by " <code>{owner.key().to_string()}</code></div> }
    });
    let diffs = if change.diffs.is_empty() {
        ().into_any()
    } else {
        let items = change.diffs.iter().map(diff_item).collect_view();
        view! { <ul class="diffs">{items}</ul> }.into_any()
    };
    view! {
        <tr class="plan-change" data-action=change.action.clone() data-key=key>
            <td>
                <span class="badge action" data-action=change.action.clone()>
                    {action_label(&change.action)}
                </span>
            </td>
            <td>{object} {owner}</td>
            <td>{diffs}</td>
        </tr>
    }
    .into_any()
}

fn diff_item(diff: &FieldDiff) -> impl IntoView + use<> {
    view! {
        <li class="diff" data-path=diff.path.clone()>
            <code class="path">{diff.path.clone()}</code>
            ": "
            <code class="before">{diff_value(&diff.before)}</code>
            " → "
            <code class="after">{diff_value(&diff.after)}</code>
        </li>
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_values_read_on_one_line() {
        assert_eq!(diff_value(&None), "(none)");
        assert_eq!(diff_value(&Some(Value::Null)), "(none)");
        assert_eq!(diff_value(&Some(json!("eu-west-1"))), "\"eu-west-1\"");
        assert_eq!(diff_value(&Some(json!(true))), "true");
        assert_eq!(diff_value(&Some(json!({"min": 1}))), r#"{"min":1}"#);
        assert_eq!(diff_value(&Some(json!("a\nb"))), r#""a\nb""#);
        assert_eq!(action_label("UNCHANGED"), "unchanged");
    }
}
