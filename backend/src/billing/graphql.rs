//! GraphQL: an organisation's billing (plan, usage against limits, dunning state), Checkout and
//! the Customer Portal. Owners and admins only.

use std::sync::Arc;

use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::plans::Plan;
use super::{Billing, LIVE};
use crate::error::{ApiError, GqlResult as _};
use crate::graphql::{actor, config, pool};
use crate::identity::Actor;
use crate::orgs::graphql::Organization;
use crate::orgs::{OrgAccess, Permission, authorize, require};

fn billing<'a>(ctx: &Context<'a>) -> &'a Billing {
    &ctx.data_unchecked::<Arc<crate::fleet::Services>>().billing
}

/// Wakes the billing worker (e.g. a deleted organisation's cancellation was queued).
pub fn wake_worker(ctx: &Context<'_>) {
    billing(ctx).wake.notify_one();
}

/// A plan and what it allows (`null`: unlimited).
#[derive(SimpleObject, Clone)]
#[graphql(name = "Plan")]
pub struct PlanObject {
    id: String,
    name: String,
    control_planes: Option<u32>,
    agents: Option<u32>,
    objects: Option<u32>,
    /// Whether it can be bought with Checkout.
    purchasable: bool,
}

impl PlanObject {
    fn new(plan: &Plan, stripe: bool) -> Self {
        PlanObject {
            id: plan.id.clone(),
            name: plan.name.clone(),
            control_planes: plan.control_planes,
            agents: plan.agents,
            objects: plan.objects,
            purchasable: stripe && plan.stripe_price.is_some(),
        }
    }
}

/// Current use of what the plan limits.
#[derive(SimpleObject)]
pub struct Usage {
    control_planes: u32,
    /// Objects at the latest count (null until the control planes were first counted).
    objects: Option<u32>,
    /// Object-hours reported to Stripe since the start of this calendar month.
    object_hours_this_month: i64,
}

/// An organisation's billing.
#[derive(SimpleObject)]
#[graphql(name = "Billing")]
pub struct BillingObject {
    plan: PlanObject,
    /// Every plan, smallest first.
    plans: Vec<PlanObject>,
    /// Whether this Qleet bills through Stripe (false in development: the default plan for all).
    stripe_enabled: bool,
    /// The Stripe subscription's status (`active`, `past_due`, ...), if there is one.
    subscription_status: Option<String>,
    /// Whether a Stripe customer exists (then the Customer Portal can be opened).
    has_customer: bool,
    past_due: bool,
    past_due_since: Option<DateTime<Utc>>,
    /// When the control planes are (or were) suspended unless the organisation pays.
    suspend_after: Option<DateTime<Utc>>,
    /// Control planes are suspended for non-payment.
    suspended: bool,
    /// Control planes billing holds (suspended, data kept), and why.
    held_control_planes: Vec<HeldControlPlane>,
    usage: Usage,
}

/// Why billing holds a control plane.
#[derive(async_graphql::Enum, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    /// The subscription is unpaid past its grace period.
    PastDue,
    /// It is beyond the plan's control-plane limit (the newest ones are held).
    OverLimit,
}

/// A control plane billing holds: it runs again once the organisation pays or its plan allows it.
#[derive(SimpleObject)]
pub struct HeldControlPlane {
    id: uuid::Uuid,
    name: String,
    reason: HoldReason,
}

/// The `billing` field of [`Organization`].
pub async fn summary(
    ctx: &Context<'_>,
    org: &Organization,
) -> async_graphql::Result<BillingObject> {
    require(&org.0, Permission::ManageBilling).gql()?;
    load(pool(ctx), billing(ctx), &org.0).await.gql()
}

async fn load(
    pool: &PgPool,
    billing: &Billing,
    access: &OrgAccess,
) -> Result<BillingObject, ApiError> {
    let org_id = access.org.id;
    let mut conn = pool.acquire().await?;
    let account = super::account(&mut *conn, org_id).await?;
    let plan = super::effective_plan(billing, &account);
    let stripe = billing.stripe.is_some();
    let control_planes = sqlx::query_scalar!(
        r#"select count(*) as "count!" from control_planes
         where org_id = $1 and status not in ('deleting', 'deleted')"#,
        org_id,
    )
    .fetch_one(&mut *conn)
    .await?;
    let objects = sqlx::query_scalar!(
        "select sum(objects)::bigint from (
             select distinct on (s.control_plane_id) s.objects from usage_samples s
             join control_planes c on c.id = s.control_plane_id
             where s.org_id = $1 and c.status not in ('deleting', 'deleted')
             order by s.control_plane_id, s.sampled_at desc) latest",
        org_id,
    )
    .fetch_one(&mut *conn)
    .await?;
    let hours = sqlx::query_scalar!(
        "select sum(object_hours)::bigint from usage_reports
         where org_id = $1 and period_end >= date_trunc('month', now())",
        org_id,
    )
    .fetch_one(&mut *conn)
    .await?;
    let held = sqlx::query!(
        "select id, name, billing_hold_reason from control_planes
         where org_id = $1 and billing_hold order by created_at, id",
        org_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    let past_due_since = account.past_due_since.filter(|_| stripe);
    let grace = chrono::Duration::from_std(billing.config.grace).unwrap_or(chrono::Duration::MAX);
    Ok(BillingObject {
        plan: PlanObject::new(plan, stripe),
        plans: billing
            .plans()
            .all()
            .iter()
            .map(|p| PlanObject::new(p, stripe))
            .collect(),
        stripe_enabled: stripe,
        subscription_status: account.subscription_status.clone().filter(|_| stripe),
        has_customer: stripe && account.stripe_customer_id.is_some(),
        past_due: past_due_since.is_some(),
        past_due_since,
        suspend_after: past_due_since.and_then(|s| s.checked_add_signed(grace)),
        suspended: super::grace_over(billing, &account),
        held_control_planes: held
            .into_iter()
            .map(|h| HeldControlPlane {
                id: h.id,
                name: h.name,
                reason: match h.billing_hold_reason.as_deref() {
                    Some("over_limit") => HoldReason::OverLimit,
                    _ => HoldReason::PastDue,
                },
            })
            .collect(),
        usage: Usage {
            control_planes: u32::try_from(control_planes).unwrap_or(u32::MAX),
            objects: objects.and_then(|n| u32::try_from(n).ok()),
            object_hours_this_month: hours.unwrap_or(0),
        },
    })
}

/// Starts Checkout for `plan`; returns the Stripe-hosted page to send the person to.
pub async fn start_checkout(
    pool: &PgPool,
    billing: &Billing,
    config: &crate::config::Config,
    actor: &Actor,
    slug: &str,
    plan: &str,
) -> Result<String, ApiError> {
    let access = authorize(pool, &actor.principal, slug, Permission::ManageBilling).await?;
    let stripe = billing.stripe()?;
    let target = billing
        .plans()
        .get(plan.trim())
        .ok_or_else(|| ApiError::invalid("plan", format!("there is no plan {plan:?}")))?;
    let price = target.stripe_price.as_deref().ok_or_else(|| {
        ApiError::invalid(
            "plan",
            format!("the {} plan is not sold through Checkout", target.id),
        )
    })?;
    let customer = super::ensure_customer(pool, billing, &access.org).await?;
    // One Checkout at a time: claim it (a short transaction), then call Stripe with no
    // connection held. Stripe keeps a session open at least 30 minutes.
    let expires_at = Utc::now() + chrono::Duration::minutes(31);
    let mut tx = pool.begin().await?;
    let (status, open_plan, open_url, open_until): (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<DateTime<Utc>>,
    ) = sqlx::query!(
        "select subscription_status, checkout_plan, checkout_url, checkout_expires_at
         from billing_accounts where org_id = $1 for update",
        access.org.id,
    )
    .fetch_one(&mut *tx)
    .await
    .map(|r| {
        (
            r.subscription_status,
            r.checkout_plan,
            r.checkout_url,
            r.checkout_expires_at,
        )
    })?;
    if status.as_deref().is_some_and(|s| LIVE.contains(&s)) {
        return Err(ApiError::Conflict(
            "this organisation already has a subscription; change its plan in the billing portal (Manage billing)".into(),
        ));
    }
    if let Some(until) = open_until.filter(|t| *t > Utc::now()) {
        if let (Some(url), Some(open)) = (open_url, open_plan.as_deref())
            && open == target.id
        {
            // The same Checkout again (a second click, another tab): the open session.
            return Ok(url);
        }
        return Err(ApiError::Conflict(format!(
            "a Checkout for the {} plan is already open (until {} UTC); finish it, or start another after it expires",
            open_plan.as_deref().unwrap_or("?"),
            until.format("%H:%M")
        )));
    }
    sqlx::query!(
        "update billing_accounts set checkout_session_id = null, checkout_url = null,
             checkout_plan = $2, checkout_expires_at = $3
         where org_id = $1",
        access.org.id,
        &target.id,
        expires_at,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let page = format!("/orgs/{}/billing", access.org.slug);
    let usage_price = billing
        .config
        .stripe
        .as_ref()
        .and_then(|s| s.usage_price.as_deref());
    let session = stripe
        .checkout(
            access.org.id,
            &customer,
            price,
            usage_price,
            &config.url(&format!("{page}?checkout=success")),
            &config.url(&format!("{page}?checkout=cancelled")),
            expires_at.timestamp(),
        )
        .await;
    // Record the session, or give the claim up; only if it is still this call's claim.
    let (id, url) = match &session {
        Ok(s) => (Some(s.id.as_str()), Some(s.url.as_str())),
        Err(_) => (None, None),
    };
    sqlx::query!(
        "update billing_accounts set checkout_session_id = $3, checkout_url = $4,
             checkout_expires_at = case when $3::text is null then null else checkout_expires_at end
         where org_id = $1 and checkout_expires_at = $2",
        access.org.id,
        expires_at,
        id,
        url,
    )
    .execute(pool)
    .await?;
    let url = session?.url;
    let mut tx = pool.begin().await?;
    crate::audit::record(
        &mut tx,
        Some(access.org.id),
        actor,
        "billing.checkout_started",
        serde_json::json!({ "plan": target.id }),
    )
    .await?;
    tx.commit().await?;
    Ok(url)
}

/// A Customer Portal session; returns its URL.
pub async fn portal_url(
    pool: &PgPool,
    billing: &Billing,
    config: &crate::config::Config,
    actor: &Actor,
    slug: &str,
) -> Result<String, ApiError> {
    let access = authorize(pool, &actor.principal, slug, Permission::ManageBilling).await?;
    let stripe = billing.stripe()?;
    let customer = super::ensure_customer(pool, billing, &access.org).await?;
    let url = stripe
        .portal(
            &customer,
            &config.url(&format!("/orgs/{}/billing", access.org.slug)),
        )
        .await?;
    let mut tx = pool.begin().await?;
    crate::audit::record(
        &mut tx,
        Some(access.org.id),
        actor,
        "billing.portal_opened",
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(url)
}

#[derive(Default)]
pub struct BillingMutation;

#[Object]
impl BillingMutation {
    /// Starts Stripe Checkout to subscribe the organisation to `plan`; returns the Checkout URL
    /// (owners and admins).
    async fn start_checkout(
        &self,
        ctx: &Context<'_>,
        org: String,
        plan: String,
    ) -> async_graphql::Result<String> {
        let actor = actor(ctx).gql()?;
        start_checkout(pool(ctx), billing(ctx), config(ctx), &actor, &org, &plan)
            .await
            .gql()
    }

    /// Opens the Stripe Customer Portal (change plan, payment method, invoices); returns its URL
    /// (owners and admins).
    async fn billing_portal_url(
        &self,
        ctx: &Context<'_>,
        org: String,
    ) -> async_graphql::Result<String> {
        let actor = actor(ctx).gql()?;
        portal_url(pool(ctx), billing(ctx), config(ctx), &actor, &org)
            .await
            .gql()
    }
}
