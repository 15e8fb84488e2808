//! The billing worker: applies stored Stripe events and cancels deleted organisations'
//! subscriptions as soon as it is woken (and retries both every interval, with backoff); holds
//! the control planes of organisations whose grace period ran out, resumes control planes held
//! over a plan limit once they fit, samples object counts and reports usage to Stripe, every
//! `QLEET_BILLING_INTERVAL_SECS`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;
use crate::fleet::Services;

/// Runs forever (only when Stripe is configured: without it nobody is ever past due).
pub async fn run(pool: PgPool, services: Arc<Services>) {
    if services.billing.stripe.is_none() {
        return;
    }
    // One future, so aborting the worker stops both loops.
    tokio::join!(queues(&pool, &services), ticks(&pool, &services));
}

/// The queues: stored events and cancellations, right after they are queued.
async fn queues(pool: &PgPool, services: &Services) {
    let billing = &services.billing;
    loop {
        if let Err(e) = super::webhook::process_events(pool, services).await {
            tracing::warn!(error = %e, "billing: applying Stripe events failed");
        }
        if let Err(e) = cancel_deleted(pool, services).await {
            tracing::warn!(error = %e, "billing: cancelling deleted organisations' subscriptions failed");
        }
        // Woken by a new event or cancellation, or when the next retry or lapsed claim (another
        // instance's that died) falls due; by the interval at the latest.
        let wait = match next_due(pool).await {
            Ok(Some(due)) => due.clamp(Duration::from_millis(100), billing.config.interval),
            Ok(None) => billing.config.interval,
            Err(e) => {
                tracing::warn!(error = %e, "billing: cannot look for due work");
                billing.config.interval
            }
        };
        let _ = tokio::time::timeout(wait, billing.wake.notified()).await;
    }
}

/// How long until the next unapplied event or unfinished cancellation is due (zero if one is).
async fn next_due(pool: &PgPool) -> Result<Option<Duration>, ApiError> {
    let secs = sqlx::query_scalar!(
        r#"select extract(epoch from least(
                   (select min(next_attempt_at) from stripe_events where applied_at is null),
                   (select min(next_attempt_at) from billing_cancellations where done_at is null)
               ) - now())::float8 as "secs""#,
    )
    .fetch_one(pool)
    .await?;
    Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
}

/// How long before the `attempts`-th failed try is retried: the worker's interval doubled per
/// attempt, at most an hour.
pub fn backoff(billing: &super::Billing, attempts: i32) -> chrono::Duration {
    let factor = 1u32 << attempts.clamp(0, 16);
    let delay = billing
        .config
        .interval
        .saturating_mul(factor)
        .min(std::time::Duration::from_secs(3600));
    chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1))
}

async fn ticks(pool: &PgPool, services: &Services) {
    let pool = pool.clone();
    let billing = services.billing.clone();
    let mut tick = tokio::time::interval(billing.config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sample: Option<Instant> = None;
    // The first tick of an interval is immediate; start one interval after boot instead, so a
    // restart storm does not sample and report in a burst.
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = suspend_overdue(&pool, services).await {
            tracing::warn!(error = %e, "billing: suspending overdue organisations failed");
        }
        if let Err(e) = refit_over_limit(&pool, services).await {
            tracing::warn!(error = %e, "billing: resuming control planes held over a limit failed");
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
            if let Err(e) = super::usage::sample_all(&pool, services).await {
                tracing::warn!(error = %e, "billing: sampling usage failed");
            }
        }
        if let Err(e) = super::usage::batch(&pool).await {
            tracing::warn!(error = %e, "billing: batching usage failed");
        }
        if let Err(e) = super::usage::report(&pool, &billing, services.instance).await {
            tracing::warn!(error = %e, "billing: reporting usage failed");
        }
    }
}

/// Suspends (with a billing hold) the running control planes of every organisation past due for
/// longer than the grace period. Their data stays; paying releases them.
pub async fn suspend_overdue(pool: &PgPool, services: &Services) -> Result<u64, ApiError> {
    let grace = services.billing.config.grace;
    let mut tx = pool.begin().await?;
    let held: Vec<(Uuid, Uuid)> = sqlx::query!(
        "update control_planes c set desired = 'suspended', billing_hold = true,
             billing_hold_reason = 'past_due', next_attempt_at = now(), updated_at = now()
         from billing_accounts b
         where b.org_id = c.org_id and b.past_due_since <= now() - make_interval(secs => $1)
           and c.desired = 'running' and not c.billing_hold
           and c.status not in ('deleting', 'deleted', 'failed')
         returning c.org_id, c.id",
        grace.as_secs_f64(),
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.org_id, r.id))
    .collect();
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
        services.wake_workers();
    }
    Ok(held.len() as u64)
}

/// Re-fits organisations with control planes held over their plan's limit: one may have been
/// deleted since, freeing a place. Organisations that owe money are left to dunning.
pub async fn refit_over_limit(pool: &PgPool, services: &Services) -> Result<u64, ApiError> {
    let billing = &services.billing;
    let orgs = sqlx::query_scalar!(
        "select distinct c.org_id from control_planes c
         left join billing_accounts b on b.org_id = c.org_id
         where c.billing_hold and c.billing_hold_reason = 'over_limit'
           and b.past_due_since is null",
    )
    .fetch_all(pool)
    .await?;
    let mut resumed = 0;
    for org in orgs {
        let mut tx = pool.begin().await?;
        let (plan, account) = super::plan_of(&mut *tx, billing, org).await?;
        if account.past_due_since.is_none() {
            resumed += super::enforce_limits(&mut tx, org, plan).await?.0;
        }
        tx.commit().await?;
    }
    if resumed > 0 {
        services.wake_workers();
    }
    Ok(resumed)
}

/// Cancels, at once, every live subscription of each deleted organisation's Stripe customer
/// that is due. Stripe is called with no database connection held; a failure is retried with
/// backoff. Returns how many customers are done.
pub async fn cancel_deleted(pool: &PgPool, services: &Services) -> Result<u64, ApiError> {
    // Nothing is claimed while billing is not configured.
    services.billing.stripe()?;
    let due = sqlx::query!(
        "update billing_cancellations set attempts = attempts + 1,
             next_attempt_at = now() + make_interval(secs => $1), claimed_by = $2
         where stripe_customer_id in (select stripe_customer_id from billing_cancellations
                                      where done_at is null and next_attempt_at <= now()
                                      limit 20 for update skip locked)
         returning stripe_customer_id, org_id, attempts",
        super::webhook::LEASE.as_secs_f64(),
        services.instance,
    )
    .fetch_all(pool)
    .await?;
    let due: Vec<(String, Uuid, i32)> = due
        .into_iter()
        .map(|d| (d.stripe_customer_id, d.org_id, d.attempts))
        .collect();
    let working = Claims::new(due.iter().map(|(customer, ..)| customer.clone()));
    let lease = super::webhook::LEASE;
    working
        .hold(
            cancel_claimed(pool, services, due, &working),
            |customers| async move {
                sqlx::query!(
                    "update billing_cancellations set next_attempt_at = now() + make_interval(secs => $2)
                     where stripe_customer_id = any($1) and done_at is null and claimed_by = $3",
                    &customers,
                    lease.as_secs_f64(),
                    services.instance,
                )
                .execute(pool)
                .await
                .map(drop)
            },
        )
        .await
}

/// Cancels the claimed customers' subscriptions, one customer after another.
async fn cancel_claimed(
    pool: &PgPool,
    services: &Services,
    due: Vec<(String, Uuid, i32)>,
    working: &Claims,
) -> Result<u64, ApiError> {
    let billing = &services.billing;
    let stripe = billing.stripe()?;
    let mut done = 0;
    for (customer, org, attempts) in due {
        let result = async {
            let mut cancelled = Vec::new();
            for sub in stripe.subscriptions_of(&customer).await? {
                if !super::ENDED.contains(&sub.status.as_str()) {
                    stripe.cancel_subscription(&sub.id).await?;
                    cancelled.push(sub.id);
                }
            }
            Ok::<_, ApiError>(cancelled)
        }
        .await;
        // Done with this customer (about to be marked done or given a retry time).
        working.finish(std::slice::from_ref(&customer));
        match result {
            Ok(cancelled) => {
                tracing::info!(org.id = %org, customer, subscriptions = ?cancelled, "billing: cancelled a deleted organisation's subscriptions");
                sqlx::query!(
                    "update billing_cancellations set done_at = now(), last_error = null
                     where stripe_customer_id = $1",
                    &customer,
                )
                .execute(pool)
                .await?;
                done += 1;
            }
            Err(e) => {
                tracing::warn!(org.id = %org, customer, error = %e, "billing: cancelling a deleted organisation's subscriptions failed; retrying");
                sqlx::query!(
                    "update billing_cancellations set last_error = $2,
                         next_attempt_at = now() + make_interval(secs => $3)
                     where stripe_customer_id = $1",
                    &customer,
                    e.to_string(),
                    backoff(billing, attempts).as_seconds_f64(),
                )
                .execute(pool)
                .await?;
            }
        }
    }
    Ok(done)
}

/// The claims a worker is still working on, shared with the task that renews them.
#[derive(Clone)]
pub(super) struct Claims(Arc<std::sync::Mutex<std::collections::HashSet<String>>>);

impl Claims {
    pub(super) fn new(ids: impl IntoIterator<Item = String>) -> Claims {
        Claims(Arc::new(std::sync::Mutex::new(ids.into_iter().collect())))
    }

    /// Stops renewing `ids` (the worker is done with them).
    pub(super) fn finish(&self, ids: &[String]) {
        let mut held = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in ids {
            held.remove(id);
        }
    }

    /// What is still held.
    fn held(&self) -> Vec<String> {
        let held = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.iter().cloned().collect()
    }

    /// Runs `work` while renewing, every third of the lease, the claims it still holds with
    /// `renew` (one update of the held keys). One future: the renewal ends with the work, and a
    /// worker that is stopped stops renewing too, so its claims lapse.
    pub(super) async fn hold<T, R>(
        &self,
        work: impl std::future::Future<Output = T>,
        renew: impl Fn(Vec<String>) -> R,
    ) -> T
    where
        R: std::future::Future<Output = sqlx::Result<()>>,
    {
        let renewing = async {
            let mut every = tokio::time::interval(super::webhook::LEASE / 3);
            every.tick().await;
            loop {
                every.tick().await;
                let held = self.held();
                if held.is_empty() {
                    continue;
                }
                if let Err(e) = renew(held).await {
                    tracing::warn!(error = %e, "billing: could not renew a claim; retrying");
                }
            }
        };
        tokio::select! {
            done = work => done,
            never = renewing => match never {},
        }
    }
}
