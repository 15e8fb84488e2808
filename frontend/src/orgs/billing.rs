//! `/orgs/:slug/billing`: the plan, usage against its limits, Upgrade (Stripe Checkout), Manage
//! (the Stripe Customer Portal); and the past-due banner every organisation page shows its
//! owners and admins.

use leptos::prelude::*;
use leptos_meta::Title;
use serde::{Deserialize, Serialize};

use crate::{
    api::{Access, format_time, url_encode},
    components::{CsrfField, ErrorBox, Loading, Notice, Refresh, Submit, action_error, mutation},
    identity::use_session,
    orgs::{OrgContext, tab_basics},
};

/// A plan and its limits (`None`: unlimited).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub id: String,
    pub name: String,
    pub control_planes: Option<u32>,
    pub agents: Option<u32>,
    pub objects: Option<u32>,
    pub purchasable: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub control_planes: u32,
    pub objects: Option<u32>,
    pub object_hours_this_month: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Billing {
    pub plan: Plan,
    pub plans: Vec<Plan>,
    pub stripe_enabled: bool,
    pub subscription_status: Option<String>,
    pub has_customer: bool,
    pub past_due: bool,
    pub past_due_since: Option<String>,
    pub suspend_after: Option<String>,
    pub suspended: bool,
    /// Control planes billing holds (suspended, data kept) and why.
    #[serde(default)]
    pub held_control_planes: Vec<HeldControlPlane>,
    pub usage: Usage,
}

/// A control plane billing holds: `reason` is `PAST_DUE` or `OVER_LIMIT`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldControlPlane {
    pub id: String,
    pub name: String,
    pub reason: String,
}

#[server(endpoint = "billing")]
pub async fn get_billing(org: String) -> Result<Access<Billing>, ServerFnError> {
    #[derive(Deserialize)]
    struct Data {
        organization: Org,
    }
    #[derive(Deserialize)]
    struct Org {
        billing: Billing,
    }
    const BILLING_FIELDS: &str = "plan { id name controlPlanes agents objects purchasable } \
        plans { id name controlPlanes agents objects purchasable } stripeEnabled subscriptionStatus \
        hasCustomer pastDue pastDueSince suspendAfter suspended \
        heldControlPlanes { id name reason } \
        usage { controlPlanes objects objectHoursThisMonth }";
    let query = format!(
        "query Billing($org: String!) {{ organization(slug: $org) {{ billing {{ {BILLING_FIELDS} }} }} }}"
    );
    let access: Access<Data> =
        crate::api::gql_access(&query, serde_json::json!({ "org": org })).await?;
    Ok(match access {
        Access::Allowed(data) => Access::Allowed(data.organization.billing),
        Access::Denied(reason) => Access::Denied(reason),
    })
}

/// The banner's facts: `Some` only for owners and admins of a past-due organisation, or of one
/// with control planes held over its plan's limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PastDue {
    pub past_due: bool,
    pub suspend_after: Option<String>,
    pub suspended: bool,
    /// Names of the control planes held because the plan allows fewer.
    pub over_limit: Vec<String>,
}

#[server(endpoint = "billing_alert")]
pub async fn billing_alert(org: String) -> Result<Option<PastDue>, ServerFnError> {
    #[derive(Deserialize)]
    struct Data {
        organization: Org,
    }
    #[derive(Deserialize)]
    struct Org {
        billing: Alert,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Alert {
        past_due: bool,
        suspend_after: Option<String>,
        suspended: bool,
        held_control_planes: Vec<HeldControlPlane>,
    }
    let query = "query BillingAlert($org: String!) { organization(slug: $org) \
                 { billing { pastDue suspendAfter suspended heldControlPlanes { id name reason } } } }";
    match crate::api::gql_raw::<Data>(query, serde_json::json!({ "org": org }), None).await {
        Ok(data) => {
            let alert = data.organization.billing;
            let over_limit: Vec<String> = alert
                .held_control_planes
                .into_iter()
                .filter(|h| h.reason == "OVER_LIMIT")
                .map(|h| h.name)
                .collect();
            Ok(
                (alert.past_due || !over_limit.is_empty()).then_some(PastDue {
                    past_due: alert.past_due,
                    suspend_after: alert.suspend_after,
                    suspended: alert.suspended,
                    over_limit,
                }),
            )
        }
        // Lower roles are not told; the page itself shows other errors.
        Err(_) => Ok(None),
    }
}

/// Starts Stripe Checkout for `plan` and sends the browser there.
#[server(endpoint = "start_checkout")]
pub async fn start_checkout(csrf: String, org: String, plan: String) -> Result<(), ServerFnError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        start_checkout: String,
    }
    let query = "mutation StartCheckout($org: String!, $plan: String!) \
                 { startCheckout(org: $org, plan: $plan) }";
    let data: Data = crate::api::gql(
        query,
        serde_json::json!({ "org": org, "plan": plan }),
        Some(csrf),
    )
    .await?;
    leptos_axum::redirect(&data.start_checkout);
    Ok(())
}

/// Opens the Stripe Customer Portal.
#[server(endpoint = "open_billing_portal")]
pub async fn open_billing_portal(csrf: String, org: String) -> Result<(), ServerFnError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        billing_portal_url: String,
    }
    let query = "mutation BillingPortal($org: String!) { billingPortalUrl(org: $org) }";
    let data: Data = crate::api::gql(query, serde_json::json!({ "org": org }), Some(csrf)).await?;
    leptos_axum::redirect(&data.billing_portal_url);
    Ok(())
}

fn limit_text(used: Option<u32>, limit: Option<u32>) -> String {
    let used = used.map_or_else(|| "not counted yet".to_owned(), |n| n.to_string());
    match limit {
        Some(max) => format!("{used} of {max}"),
        None => format!("{used} (unlimited)"),
    }
}

#[component]
pub fn BillingPage() -> impl IntoView {
    let session = use_session();
    let ctx = expect_context::<OrgContext>();
    let billing = Resource::new(
        move || (ctx.slug.get(), Refresh::generation()),
        |(slug, _)| get_billing(slug),
    );
    let checkout = mutation::<StartCheckout>();
    let portal = mutation::<OpenBillingPortal>();

    view! {
        <Title text="Billing · Qleet"/>
        <Transition fallback=Loading>
            {move || Suspend::new(async move {
                let (csrf, org) = tab_basics(session, ctx).await?;
                let body = match billing.await {
                    Ok(Access::Allowed(b)) => {
                        billing_view(b, csrf, org.slug.clone(), checkout, portal).into_any()
                    }
                    Ok(Access::Denied(reason)) => view! { <Notice text=reason/> }.into_any(),
                    Err(error) => view! { <ErrorBox error/> }.into_any(),
                };
                Some(body)
            })}
        </Transition>
    }
}

fn billing_view(
    b: Billing,
    csrf: String,
    slug: String,
    checkout: ServerAction<StartCheckout>,
    portal: ServerAction<OpenBillingPortal>,
) -> impl IntoView {
    let status = b
        .subscription_status
        .clone()
        .unwrap_or_else(|| "none".into());
    let rows = vec![
        (
            "Control planes",
            limit_text(Some(b.usage.control_planes), b.plan.control_planes),
        ),
        ("Objects", limit_text(b.usage.objects, b.plan.objects)),
        ("Agents", limit_text(None, b.plan.agents)),
    ];
    let at = b.plans.iter().position(|p| p.id == b.plan.id).unwrap_or(0);
    let upgrades: Vec<Plan> = b
        .plans
        .iter()
        .skip(at + 1)
        .filter(|p| p.purchasable)
        .cloned()
        .collect();
    let subscribed = matches!(
        b.subscription_status.as_deref(),
        Some("active" | "trialing" | "past_due" | "unpaid")
    );
    let dev_note = (!b.stripe_enabled).then(|| {
        view! {
            <Notice text="Billing is not set up on this Qleet (no Stripe keys): every organisation has the default plan."/>
        }
    });
    let upgrade_forms = (!subscribed && !upgrades.is_empty()).then(|| {
        let forms = upgrades
            .into_iter()
            .map(|p| {
                let csrf = csrf.clone();
                let slug = slug.clone();
                view! {
                    <ActionForm action=checkout attr:class="inline-form">
                        <CsrfField csrf/>
                        <input type="hidden" name="org" value=slug/>
                        <input type="hidden" name="plan" value=p.id.clone()/>
                        <Submit
                            id=format!("upgrade-{}", p.id)
                            label=format!("Upgrade to {}", p.name)
                            pending=checkout.pending()
                        />
                    </ActionForm>
                }
            })
            .collect_view();
        view! {
            <section class="card">
                <h2>"Upgrade"</h2>
                <p class="hint">"You will pay on Stripe's secure page and come back here."</p>
                {forms}
                {action_error(checkout)}
            </section>
        }
    });
    let manage = b.has_customer.then(|| {
        view! {
            <section class="card">
                <h2>"Manage billing"</h2>
                <p class="hint">
                    "Change plan, update the payment method, see invoices — on Stripe's portal."
                </p>
                <ActionForm action=portal>
                    <CsrfField csrf=csrf.clone()/>
                    <input type="hidden" name="org" value=slug.clone()/>
                    <Submit id="billing-portal" label="Manage billing" pending=portal.pending()/>
                </ActionForm>
                {action_error(portal)}
            </section>
        }
    });
    let held = (!b.held_control_planes.is_empty()).then(|| {
        let items = b
            .held_control_planes
            .iter()
            .map(|h| {
                let why = if h.reason == "OVER_LIMIT" {
                    format!(
                        "beyond the {} plan's limit of {} — upgrade, or delete another control plane, to run it again",
                        b.plan.name,
                        b.plan
                            .control_planes
                            .map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
                    )
                } else {
                    "the subscription is unpaid past its grace period — pay to run it again".to_owned()
                };
                view! {
                    <li>
                        <strong>{h.name.clone()}</strong>
                        {format!(": suspended, data kept; {why}.")}
                    </li>
                }
            })
            .collect_view();
        view! {
            <section class="card" id="billing-held">
                <h2>"Held control planes"</h2>
                <p class="hint">
                    "The oldest control planes, up to the plan's limit, run; newer ones are held."
                </p>
                <ul>{items}</ul>
            </section>
        }
    });
    let plans = b
        .plans
        .iter()
        .map(|p| {
            let limit =
                |n: Option<u32>| n.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
            view! {
                <tr class:current=p.id == b.plan.id>
                    <td>{p.name.clone()}</td>
                    <td>{limit(p.control_planes)}</td>
                    <td>{limit(p.agents)}</td>
                    <td>{limit(p.objects)}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        {dev_note}
        <section class="card" id="billing-plan">
            <h2>"Plan: " <span id="billing-plan-name">{b.plan.name.clone()}</span></h2>
            <p>"Subscription: " <span id="billing-status">{status}</span></p>
            <table class="usage">
                <thead>
                    <tr>
                        <th scope="col">"What"</th>
                        <th scope="col">"Used / allowed"</th>
                    </tr>
                </thead>
                <tbody>
                    {rows
                        .into_iter()
                        .map(|(what, text)| view! { <tr><td>{what}</td><td>{text}</td></tr> })
                        .collect_view()}
                </tbody>
            </table>
            <p class="muted">
                {format!("Object-hours reported this month: {}", b.usage.object_hours_this_month)}
            </p>
        </section>
        {held}
        {upgrade_forms}
        {manage}
        <section class="card">
            <h2>"Plans"</h2>
            <table class="plans">
                <thead>
                    <tr>
                        <th scope="col">"Plan"</th>
                        <th scope="col">"Control planes"</th>
                        <th scope="col">"Agents"</th>
                        <th scope="col">"Objects"</th>
                    </tr>
                </thead>
                <tbody>{plans}</tbody>
            </table>
        </section>
    }
}

/// The past-due banner on every organisation page, for owners and admins (lower roles are not
/// asked; the backend would not tell them either).
///
/// [`OrgLayout`](super::OrgLayout) creates it in its own body, never inside a `Suspend`: the
/// server and the hydrating browser must create resources and `Transition`s in the same order,
/// as both number them in creation order and the browser finds each resource's server-sent value
/// by that number. Created after an `.await`, the banner's resource was numbered when the
/// organisation arrived — before the tab page's resources in the browser, after them (or
/// several times) on the server — so the page read the wrong values, hydration failed and the
/// page stayed dead (no live status).
#[component]
pub fn PastDueBanner() -> impl IntoView {
    let ctx = expect_context::<OrgContext>();
    let alert = Resource::new(
        move || (ctx.slug.get(), Refresh::generation()),
        move |(slug, _)| async move {
            match ctx.org.await {
                Ok(org) if org.viewer_role.is_admin() => billing_alert(slug).await,
                _ => Ok(None),
            }
        },
    );
    view! {
        <Transition>
            {move || {
                let href = format!("/orgs/{}/billing", url_encode(&ctx.slug.get_untracked()));
                Suspend::new(async move {
                    let alert = alert.await.ok().flatten()?;
                    let when = alert.suspend_after.as_deref().map(format_time);
                    let text = if !alert.past_due {
                        format!(
                            "This organisation has more control planes than its plan allows: {} stay suspended (nothing was deleted) until you upgrade or delete others.",
                            alert.over_limit.join(", "),
                        )
                    } else if alert.suspended {
                        "Payment failed and the grace period is over: this organisation's control planes are suspended (nothing was deleted). Pay to resume them.".to_owned()
                    } else {
                        format!(
                            "Payment failed: update the payment method before {} or this organisation's control planes will be suspended.",
                            when.unwrap_or_else(|| "the grace period ends".into()),
                        )
                    };
                    Some(
                        view! {
                            <div id="past-due-banner" class="banner warning" role="alert">
                                <p>{text} " " <a href=href>"Go to billing"</a></p>
                            </div>
                        },
                    )
                })
            }}
        </Transition>
    }
}
