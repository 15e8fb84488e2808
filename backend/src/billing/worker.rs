//! The billing worker: holds the control planes of organisations whose grace period ran out,
//! samples object counts and reports usage to Stripe, every `QLEET_BILLING_INTERVAL_SECS`.

use std::sync::Arc;
use std::time::Instant;

use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;
use crate::fleet::Services;

/// Runs forever (only when Stripe is configured: without it nobody is ever past due).
pub async fn run(pool: PgPool, services: Arc<Services>) {
    let billing = services.billing.clone();
    if billing.stripe.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(billing.config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sample: Option<Instant> = None;
    // The first tick of an interval is immediate; start one interval after boot instead, so a
    // restart storm does not sample and report in a burst.
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = suspend_overdue(&pool, &services).await {
            tracing::warn!(error = %e, "billing: suspending overdue organisations failed");
        }
        let metering = billing
            .config
            .stripe
            .as_ref()
            .is_some_and(|s| s.meter_event.is_some());
        if !metering {
            continue;
        }
        if last_sample.is_none_or(|t| t.elapsed() >= billing.config.usage_sample_interval) {
            last_sample = Some(Instant::now());
            if let Err(e) = super::usage::sample_all(&pool, &services).await {
                tracing::warn!(error = %e, "billing: sampling usage failed");
            }
        }
        if let Err(e) = super::usage::batch(&pool).await {
            tracing::warn!(error = %e, "billing: batching usage failed");
        }
        if let Err(e) = super::usage::report(&pool, &billing).await {
            tracing::warn!(error = %e, "billing: reporting usage failed");
        }
    }
}

/// Suspends (with a billing hold) the running control planes of every organisation past due for
/// longer than the grace period. Their data stays; paying releases them.
pub async fn suspend_overdue(pool: &PgPool, services: &Services) -> Result<u64, ApiError> {
    let grace = chrono::Duration::from_std(services.billing.config.grace)
        .map_err(crate::error::internal)?;
    let mut tx = pool.begin().await?;
    let held: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "update control_planes c set desired = 'suspended', billing_hold = true,
             next_attempt_at = now(), updated_at = now()
         from billing_accounts b
         where b.org_id = c.org_id and b.past_due_since <= now() - $1
           and c.desired = 'running' and not c.billing_hold
           and c.status not in ('deleting', 'deleted', 'failed')
         returning c.org_id, c.id",
    )
    .bind(grace)
    .fetch_all(&mut *tx)
    .await?;
    let mut orgs: Vec<Uuid> = held.iter().map(|(org, _)| *org).collect();
    orgs.sort();
    orgs.dedup();
    for org in &orgs {
        let ids: Vec<Uuid> = held
            .iter()
            .filter(|(o, _)| o == org)
            .map(|(_, id)| *id)
            .collect();
        crate::audit::record_system(
            &mut tx,
            *org,
            "billing.suspend",
            serde_json::json!({ "reason": "subscription past due after the grace period", "controlPlanes": ids }),
        )
        .await?;
    }
    tx.commit().await?;
    if !held.is_empty() {
        tracing::info!(
            control_planes = held.len(),
            "billing: suspended control planes of past-due organisations"
        );
        services.wake.notify_one();
    }
    Ok(held.len() as u64)
}
