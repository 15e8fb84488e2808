//! Billing: plans and their entitlements, Stripe Checkout and the Customer Portal, webhooks that
//! drive each organisation's subscription state, dunning (past due → grace → control planes
//! suspended → paid → resumed) and metered usage reported to Stripe.
//!
//! Without Stripe keys (development) every organisation has the default plan and nothing here
//! talks to Stripe.

pub mod graphql;
pub mod plans;
pub mod stripe;
pub mod usage;
pub mod webhook;
pub mod worker;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::config::BillingConfig;
use crate::error::ApiError;
use crate::internal_token::Limits;
use plans::{Plan, Plans, Resource};

/// Billing's configuration and its Stripe client, shared by the API, the gateway and the worker.
pub struct Billing {
    pub config: BillingConfig,
    /// `None` without Stripe keys.
    pub stripe: Option<stripe::StripeApi>,
    /// Wakes the billing worker's queues (a stored event, a queued cancellation).
    pub wake: tokio::sync::Notify,
}

impl Billing {
    pub fn new(config: BillingConfig) -> Self {
        Billing {
            stripe: config.stripe.as_ref().map(stripe::StripeApi::new),
            config,
            wake: tokio::sync::Notify::new(),
        }
    }

    pub fn plans(&self) -> &Plans {
        &self.config.plans
    }

    /// The Stripe client, or `BILLING_NOT_CONFIGURED`.
    pub fn stripe(&self) -> Result<&stripe::StripeApi, ApiError> {
        self.stripe.as_ref().ok_or_else(|| ApiError::Unavailable {
            code: "BILLING_NOT_CONFIGURED",
            message: "billing is not set up on this Qleet (no Stripe keys); every organisation has the default plan".into(),
        })
    }
}

/// Subscription statuses in which the subscription's plan applies.
pub(crate) const LIVE: [&str; 4] = ["active", "trialing", "past_due", "unpaid"];
/// Statuses that mean the organisation owes money.
const OWING: [&str; 2] = ["past_due", "unpaid"];

/// An organisation's billing row (absent until it first touches billing).
#[derive(Debug, Clone, Default)]
pub struct Account {
    pub stripe_customer_id: Option<String>,
    pub subscription_id: Option<String>,
    pub subscription_status: Option<String>,
    pub plan: Option<String>,
    pub past_due_since: Option<DateTime<Utc>>,
}

pub async fn account(
    executor: impl sqlx::PgExecutor<'_>,
    org_id: Uuid,
) -> Result<Account, ApiError> {
    Ok(sqlx::query_as!(
        Account,
        "select stripe_customer_id, subscription_id, subscription_status, plan, past_due_since
         from billing_accounts where org_id = $1",
        org_id,
    )
    .fetch_optional(executor)
    .await?
    .unwrap_or_default())
}

/// The plan in force for an organisation: its subscription's while that is live, else the
/// default plan (always the default without Stripe).
pub fn effective_plan<'a>(billing: &'a Billing, account: &Account) -> &'a Plan {
    let plans = billing.plans();
    if billing.stripe.is_none() {
        return plans.default_plan();
    }
    account
        .plan
        .as_deref()
        .and_then(|id| plans.get(id))
        .unwrap_or_else(|| plans.default_plan())
}

/// The plan of an organisation, read with one indexed query (none without Stripe). `executor`
/// is a pool or a connection; a pool is not asked for a connection when there is nothing to read.
pub async fn plan_of<'a>(
    executor: impl sqlx::PgExecutor<'_>,
    billing: &'a Billing,
    org_id: Uuid,
) -> Result<(&'a Plan, Account), ApiError> {
    if billing.stripe.is_none() {
        return Ok((billing.plans().default_plan(), Account::default()));
    }
    let account = account(executor, org_id).await?;
    Ok((effective_plan(billing, &account), account))
}

/// `QUOTA_EXCEEDED` unless one more `resource` fits the plan while `current` exist.
pub fn check_quota(
    plans: &Plans,
    plan: &Plan,
    resource: Resource,
    current: u64,
) -> Result<(), ApiError> {
    match plan.limit(resource) {
        Some(max) if current >= u64::from(max) => Err(ApiError::QuotaExceeded {
            limit: resource.as_str().to_owned(),
            max,
            plan: plan.id.clone(),
            upgrade_to: plans.upgrade_for(plan, resource).map(|p| p.id.clone()),
        }),
        _ => Ok(()),
    }
}

/// The limits a control plane enforces itself, for the gateway's token.
pub fn limits(plans: &Plans, plan: &Plan) -> Limits {
    let at = plans.all().iter().position(|p| p.id == plan.id);
    Limits {
        plan: plan.id.clone(),
        upgrade_to: at
            .and_then(|i| plans.all().get(i + 1))
            .map(|p| p.id.clone()),
        max_objects: plan.objects,
        max_agents: plan.agents,
    }
}

/// The error a held control plane (or a creation in a held organisation) answers.
pub fn past_due_error() -> ApiError {
    ApiError::SubscriptionPastDue(
        "the organisation's subscription is past due and its grace period is over; its control \
         planes are suspended (nothing was deleted) until an owner or admin pays under Billing"
            .into(),
    )
}

/// Whether the organisation is past due beyond its grace period.
pub fn grace_over(billing: &Billing, account: &Account) -> bool {
    let grace = chrono::Duration::from_std(billing.config.grace).unwrap_or(chrono::Duration::MAX);
    billing.stripe.is_some()
        && account
            .past_due_since
            .is_some_and(|since| since + grace <= Utc::now())
}

/// The organisation's Stripe customer id, creating the customer once. Stripe is called with no
/// database connection held: the idempotency key is derived from the organisation, so concurrent
/// callers get the same customer, and the first to store it wins.
pub async fn ensure_customer(
    pool: &PgPool,
    billing: &Billing,
    org: &crate::orgs::Org,
) -> Result<String, ApiError> {
    let stripe = billing.stripe()?;
    sqlx::query!(
        "insert into billing_accounts (org_id) values ($1) on conflict do nothing",
        org.id,
    )
    .execute(pool)
    .await?;
    let existing = sqlx::query_scalar!(
        "select stripe_customer_id from billing_accounts where org_id = $1",
        org.id,
    )
    .fetch_one(pool)
    .await?;
    if let Some(id) = existing {
        return Ok(id);
    }
    let id = stripe.create_customer(org.id, &org.slug, &org.name).await?;
    let mut tx = pool.begin().await?;
    let stored = sqlx::query_scalar!(
        "update billing_accounts set stripe_customer_id = coalesce(stripe_customer_id, $2),
             updated_at = now()
         where org_id = $1 returning stripe_customer_id",
        org.id,
        &id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let stored = stored
        .flatten()
        .ok_or_else(|| ApiError::NotFound(format!("organization {:?}", org.slug)))?;
    if stored == id {
        crate::audit::record_system(
            &mut tx,
            org.id,
            "billing.customer_created",
            serde_json::json!({ "stripeCustomerId": id }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(stored)
}

/// What applying Stripe's state did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Changed,
    Unchanged,
    /// A newer read of Stripe was applied already: this older one is dropped.
    Stale,
}

/// Statuses in which a subscription is over for good.
const ENDED: [&str; 2] = ["canceled", "incomplete_expired"];

/// The subscription an organisation's plan comes from, out of all its customer's subscriptions:
/// the live one with the largest plan, one in good standing before an owing one on the same
/// plan, then the newest; with none live, the newest (to show its status).
pub fn primary<'a>(
    plans: &Plans,
    subscriptions: &'a [stripe::Subscription],
) -> Option<&'a stripe::Subscription> {
    let rank = |s: &stripe::Subscription| {
        let plan = s.price_id().and_then(|p| {
            plans
                .all()
                .iter()
                .position(|plan| plan.stripe_price.as_deref() == Some(p))
        });
        (plan, !OWING.contains(&s.status.as_str()), s.created)
    };
    subscriptions
        .iter()
        .filter(|s| LIVE.contains(&s.status.as_str()))
        .max_by_key(|s| rank(s))
        .or_else(|| subscriptions.iter().max_by_key(|s| s.created))
}

/// Applies the customer's subscriptions as Stripe had them when the read started (`read_at`)
/// to the organisation: its plan (from all live subscriptions, not from one event's), whether it
/// owes money, and which control planes run. Takes the organisation's billing row lock; makes
/// no call to Stripe.
pub async fn apply_subscriptions(
    conn: &mut PgConnection,
    billing: &Billing,
    org_id: Uuid,
    subscriptions: &[stripe::Subscription],
    read_at: DateTime<Utc>,
) -> Result<Applied, ApiError> {
    sqlx::query!(
        "insert into billing_accounts (org_id) values ($1) on conflict do nothing",
        org_id,
    )
    .execute(&mut *conn)
    .await?;
    let last_read = sqlx::query_scalar!(
        "select stripe_read_at from billing_accounts where org_id = $1 for update",
        org_id,
    )
    .fetch_one(&mut *conn)
    .await?;
    if last_read.is_some_and(|last| last > read_at) {
        return Ok(Applied::Stale);
    }
    let current = account(&mut *conn, org_id).await?;
    let sub = primary(billing.plans(), subscriptions);
    let live: Vec<&str> = subscriptions
        .iter()
        .filter(|s| LIVE.contains(&s.status.as_str()))
        .map(|s| s.id.as_str())
        .collect();
    if live.len() > 1 {
        tracing::warn!(org.id = %org_id, subscriptions = ?live, "the organisation has several live subscriptions; the largest plan applies");
    }
    let is_live = sub.is_some_and(|s| LIVE.contains(&s.status.as_str()));
    let price = sub.and_then(stripe::Subscription::price_id);
    let plan = if is_live {
        match price.and_then(|p| billing.plans().by_price(p)) {
            Some(plan) => Some(plan.id.clone()),
            None => {
                tracing::warn!(org.id = %org_id, price = ?price, "subscription price maps to no plan; the default plan applies");
                None
            }
        }
    } else {
        None
    };
    let status = sub.map(|s| s.status.clone());
    let owing = sub.is_some_and(|s| OWING.contains(&s.status.as_str()));
    sqlx::query!(
        "update billing_accounts set subscription_id = $2, subscription_status = $3, price_id = $4,
             plan = $5,
             past_due_since = case when $6 then coalesce(past_due_since, now()) else null end,
             stripe_read_at = $7, updated_at = now()
         where org_id = $1",
        org_id,
        sub.map(|s| s.id.as_str()),
        status.as_deref(),
        price,
        plan.as_deref(),
        owing,
        read_at,
    )
    .execute(&mut *conn)
    .await?;
    let changed = current.subscription_id.as_deref() != sub.map(|s| s.id.as_str())
        || current.subscription_status != status
        || current.plan != plan;
    if changed {
        let changes = serde_json::json!({
            "subscription": sub.map(|s| &s.id), "status": status,
            "plan": { "before": current.plan, "after": plan },
            "liveSubscriptions": live,
        });
        crate::audit::record_system(&mut *conn, org_id, "billing.subscription", changes).await?;
    }
    if !owing {
        let plan = plan
            .as_deref()
            .and_then(|id| billing.plans().get(id))
            .unwrap_or_else(|| billing.plans().default_plan());
        enforce_limits(&mut *conn, org_id, plan).await?;
    }
    Ok(if changed {
        Applied::Changed
    } else {
        Applied::Unchanged
    })
}

/// Makes the organisation's running control planes fit its plan (while it does not owe money):
/// ranked by creation, the oldest up to the plan's limit run — those billing held are resumed —
/// and the newer ones are held (suspended, data kept) with the reason `over_limit`. Control
/// planes a person suspended stay suspended. Returns (resumed, held).
pub async fn enforce_limits(
    conn: &mut PgConnection,
    org_id: Uuid,
    plan: &Plan,
) -> Result<(u64, u64), ApiError> {
    let max = plan.control_planes.map(i64::from);
    // Both statements rank the same way (`ranked`): by creation, live control planes only.
    let resumed = sqlx::query!(
        "with ranked as (
             select id, row_number() over (order by created_at, id) as n from control_planes
             where org_id = $1 and status not in ('deleting', 'deleted'))
         update control_planes c set desired = 'running', billing_hold = false,
             billing_hold_reason = null, next_attempt_at = now(), updated_at = now()
         from ranked r
         where c.id = r.id and c.billing_hold and ($2::bigint is null or r.n <= $2)",
        org_id,
        max,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let held = sqlx::query_scalar!(
        "with ranked as (
             select id, row_number() over (order by created_at, id) as n from control_planes
             where org_id = $1 and status not in ('deleting', 'deleted'))
         update control_planes c set desired = 'suspended', billing_hold = true,
             billing_hold_reason = 'over_limit', next_attempt_at = now(), updated_at = now()
         from ranked r
         where c.id = r.id and $2::bigint is not null and r.n > $2 and c.status <> 'failed'
           and ((c.billing_hold and c.billing_hold_reason is distinct from 'over_limit')
                or (not c.billing_hold and c.desired = 'running'))
         returning c.id",
        org_id,
        max,
    )
    .fetch_all(&mut *conn)
    .await?;
    if resumed > 0 {
        crate::audit::record_system(
            &mut *conn,
            org_id,
            "billing.resume",
            serde_json::json!({ "controlPlanes": resumed }),
        )
        .await?;
    }
    if !held.is_empty() {
        crate::audit::record_system(
            &mut *conn,
            org_id,
            "billing.hold_over_limit",
            serde_json::json!({ "plan": plan.id, "max": plan.control_planes, "controlPlanes": held }),
        )
        .await?;
    }
    Ok((resumed, held.len() as u64))
}

/// `QUOTA_EXCEEDED` for a control plane beyond the plan's control-plane limit.
async fn over_limit_error(
    pool: &PgPool,
    billing: &Billing,
    org_id: Uuid,
) -> Result<ApiError, ApiError> {
    let (plan, _) = plan_of(pool, billing, org_id).await?;
    Ok(ApiError::QuotaExceeded {
        limit: Resource::ControlPlanes.as_str().to_owned(),
        max: plan.control_planes.unwrap_or(0),
        plan: plan.id.clone(),
        upgrade_to: billing
            .plans()
            .upgrade_for(plan, Resource::ControlPlanes)
            .map(|p| p.id.clone()),
    })
}

/// Why a control plane billing holds may not be reached or resumed: `QUOTA_EXCEEDED` when it is
/// beyond the plan's limit, `SUBSCRIPTION_PAST_DUE` when the organisation has not paid. `Ok` when
/// it is not held (`held` is the control plane's `billing_hold`; nothing is read then).
pub async fn hold_error(
    pool: &PgPool,
    billing: &Billing,
    org_id: Uuid,
    control_plane_id: Uuid,
    held: bool,
) -> Result<(), ApiError> {
    if !held {
        return Ok(());
    }
    let reason = sqlx::query_scalar!(
        "select billing_hold_reason from control_planes where id = $1",
        control_plane_id,
    )
    .fetch_optional(pool)
    .await?
    .flatten();
    match reason.as_deref() {
        Some("over_limit") => Err(over_limit_error(pool, billing, org_id).await?),
        _ => Err(past_due_error()),
    }
}

/// Refuses to resume a control plane that billing holds, or one that would run beyond the
/// plan's control-plane limit (the oldest up to the limit may run).
pub async fn resume_check(
    pool: &PgPool,
    billing: &Billing,
    org_id: Uuid,
    control_plane_id: Uuid,
    held: bool,
) -> Result<(), ApiError> {
    hold_error(pool, billing, org_id, control_plane_id, held).await?;
    let (plan, _) = plan_of(pool, billing, org_id).await?;
    let Some(max) = plan.control_planes else {
        return Ok(());
    };
    let rank = sqlx::query_scalar!(
        "select n from (select id, row_number() over (order by created_at, id) as n
             from control_planes where org_id = $1 and status not in ('deleting', 'deleted')) r
         where id = $2",
        org_id,
        control_plane_id,
    )
    .fetch_optional(pool)
    .await?
    .flatten();
    if rank.is_some_and(|n| n > i64::from(max)) {
        return Err(over_limit_error(pool, billing, org_id).await?);
    }
    Ok(())
}

/// Queues the cancellation of every subscription of a deleted organisation's Stripe customer
/// (in the deletion's transaction, so it cannot be lost); the billing worker does it.
pub async fn queue_cancellation(
    conn: &mut PgConnection,
    org_id: Uuid,
    org_slug: &str,
) -> Result<bool, ApiError> {
    Ok(sqlx::query!(
        "insert into billing_cancellations (stripe_customer_id, org_id, org_slug)
         select stripe_customer_id, org_id, $2 from billing_accounts
         where org_id = $1 and stripe_customer_id is not null
         on conflict (stripe_customer_id) do update
             set done_at = null, next_attempt_at = now(), requested_at = now()",
        org_id,
        org_slug,
    )
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: &str, price: &str, status: &str, created: i64) -> stripe::Subscription {
        serde_json::from_value(serde_json::json!({
            "id": id, "customer": "cus_1", "status": status, "created": created,
            "items": { "data": [ { "price": { "id": price } } ] },
        }))
        .expect("subscription")
    }

    #[test]
    fn the_plan_comes_from_the_largest_live_subscription_whatever_the_order() {
        let plans =
            Plans::from_config(None, Some("team=price_t,business=price_b"), "free").expect("plans");
        let id = |subs: &[stripe::Subscription]| primary(&plans, subs).map(|s| s.id.clone());
        let team = sub("sub_team", "price_t", "active", 1);
        let business_gone = sub("sub_business", "price_b", "canceled", 2);
        assert_eq!(
            id(&[team.clone(), business_gone.clone()]),
            Some("sub_team".into())
        );
        assert_eq!(
            id(&[business_gone.clone(), team.clone()]),
            Some("sub_team".into())
        );
        let business = sub("sub_business", "price_b", "active", 2);
        assert_eq!(id(&[team.clone(), business]), Some("sub_business".into()));
        // Same plan: the one in good standing before the owing one.
        let owing = sub("sub_owing", "price_t", "past_due", 3);
        assert_eq!(id(&[owing.clone(), team.clone()]), Some("sub_team".into()));
        // None live: the newest, for its status.
        let old = sub("sub_old", "price_t", "canceled", 1);
        assert_eq!(id(&[old, business_gone]), Some("sub_business".into()));
        assert_eq!(id(&[]), None);
    }
}
