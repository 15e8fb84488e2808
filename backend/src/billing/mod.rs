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
}

impl Billing {
    pub fn new(config: BillingConfig) -> Self {
        Billing {
            stripe: config.stripe.as_ref().map(stripe::StripeApi::new),
            config,
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
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct Account {
    pub stripe_customer_id: Option<String>,
    pub subscription_id: Option<String>,
    pub subscription_status: Option<String>,
    pub plan: Option<String>,
    pub past_due_since: Option<DateTime<Utc>>,
}

const ACCOUNT_COLUMNS: &str =
    "stripe_customer_id, subscription_id, subscription_status, plan, past_due_since";

pub async fn account(
    executor: impl sqlx::PgExecutor<'_>,
    org_id: Uuid,
) -> Result<Account, ApiError> {
    Ok(sqlx::query_as::<_, Account>(sqlx::AssertSqlSafe(format!(
        "select {ACCOUNT_COLUMNS} from billing_accounts where org_id = $1"
    )))
    .bind(org_id)
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

/// The organisation's Stripe customer id, creating the customer once (the row is locked while
/// it is made, so concurrent callers wait for the one customer).
pub async fn ensure_customer(
    pool: &PgPool,
    billing: &Billing,
    org: &crate::orgs::Org,
) -> Result<String, ApiError> {
    let stripe = billing.stripe()?;
    let mut tx = pool.begin().await?;
    sqlx::query("insert into billing_accounts (org_id) values ($1) on conflict do nothing")
        .bind(org.id)
        .execute(&mut *tx)
        .await?;
    let existing: Option<String> = sqlx::query_scalar(
        "select stripe_customer_id from billing_accounts where org_id = $1 for update",
    )
    .bind(org.id)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(id) = existing {
        return Ok(id);
    }
    let id = stripe.create_customer(org.id, &org.slug, &org.name).await?;
    sqlx::query(
        "update billing_accounts set stripe_customer_id = $2, updated_at = now() where org_id = $1",
    )
    .bind(org.id)
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    crate::audit::record_system(
        &mut tx,
        org.id,
        "billing.customer_created",
        serde_json::json!({ "stripeCustomerId": id }),
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// What applying a subscription's state did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Changed,
    /// A subscription that is over while another one is live: ignored.
    Stale,
}

/// Applies a subscription as Stripe has it now to the organisation (inside the webhook's
/// transaction): its plan, whether it owes money, and releasing held control planes once it
/// does not.
pub async fn apply_subscription(
    conn: &mut PgConnection,
    billing: &Billing,
    org_id: Uuid,
    sub: &stripe::Subscription,
) -> Result<Applied, ApiError> {
    let current = account(&mut *conn, org_id).await?;
    let live = LIVE.contains(&sub.status.as_str());
    let other_live = current
        .subscription_id
        .as_deref()
        .is_some_and(|id| id != sub.id)
        && current
            .subscription_status
            .as_deref()
            .is_some_and(|s| LIVE.contains(&s));
    if !live && other_live {
        return Ok(Applied::Stale);
    }
    let price = sub.price_id();
    let plan = if live {
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
    let owing = OWING.contains(&sub.status.as_str());
    sqlx::query(
        "update billing_accounts set subscription_id = $2, subscription_status = $3, price_id = $4,
             plan = $5,
             past_due_since = case when $6 then coalesce(past_due_since, now()) else null end,
             updated_at = now()
         where org_id = $1",
    )
    .bind(org_id)
    .bind(&sub.id)
    .bind(&sub.status)
    .bind(price)
    .bind(&plan)
    .bind(owing)
    .execute(&mut *conn)
    .await?;
    let changes = serde_json::json!({
        "subscription": sub.id, "status": sub.status,
        "plan": { "before": current.plan, "after": plan },
    });
    crate::audit::record_system(&mut *conn, org_id, "billing.subscription", changes).await?;
    if !owing {
        release_holds(&mut *conn, org_id).await?;
    }
    Ok(Applied::Changed)
}

/// Asks the lifecycle to resume every control plane billing suspended.
pub async fn release_holds(conn: &mut PgConnection, org_id: Uuid) -> Result<u64, ApiError> {
    let released = sqlx::query(
        "update control_planes set desired = 'running', billing_hold = false,
             next_attempt_at = now(), updated_at = now()
         where org_id = $1 and billing_hold",
    )
    .bind(org_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if released > 0 {
        crate::audit::record_system(
            conn,
            org_id,
            "billing.resume",
            serde_json::json!({ "controlPlanes": released }),
        )
        .await?;
    }
    Ok(released)
}
