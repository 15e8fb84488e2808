//! Metering: object-hours per organisation. Each Ready control plane is asked for its object
//! count every sample interval; a sample covers the seconds since the control plane's previous
//! one. Unbatched samples are summed per organisation into a report (whole object-hours; the
//! remainder carries over) in one transaction that also marks them batched, so no sample is
//! counted twice. Reports are sent to Stripe's billing meter with the report id as both the
//! meter event `identifier` and the `Idempotency-Key`, so a retry after a crash between sending
//! and marking it sent is not counted again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::Billing;
use crate::error::ApiError;
use crate::fleet::Services;
use crate::fleet::driver::RuntimeStatus;
use crate::internal_token::SubjectKind;
use crate::orgs::Role;

/// Records one object count of a control plane at `at`. The sample covers the time since the
/// previous sample, at most `max_gap` (a longer silence, e.g. while the management plane was
/// down, is not billed). The first sample only starts the clock.
pub async fn record_sample(
    pool: &PgPool,
    org_id: Uuid,
    control_plane_id: Uuid,
    objects: u32,
    at: DateTime<Utc>,
    max_gap: Duration,
) -> Result<(), ApiError> {
    let mut tx = pool.begin().await?;
    // One sampler at a time per control plane.
    sqlx::query!(
        "select id from control_planes where id = $1 for update",
        control_plane_id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let previous = sqlx::query_scalar!(
        "select max(sampled_at) from usage_samples where control_plane_id = $1",
        control_plane_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    let seconds = match previous {
        // Sampled less than half an interval ago (another instance sampled it this round):
        // one sample an interval is enough.
        Some(prev) if at - prev < chrono::Duration::from_std(max_gap / 4).unwrap_or_default() => {
            return Ok(());
        }
        Some(prev) => (at - prev).num_seconds().min(max_gap.as_secs() as i64),
        None => 0,
    };
    sqlx::query!(
        "insert into usage_samples (org_id, control_plane_id, sampled_at, objects, object_seconds)
         values ($1, $2, $3, $4, $5)",
        org_id,
        control_plane_id,
        at,
        objects as i32,
        i64::from(objects) * seconds,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Asks every Ready control plane of a paying organisation for its object count and records it.
/// A control plane that cannot tell (not answering, or a version without `objectCount`) is
/// skipped this round.
pub async fn sample_all(pool: &PgPool, services: &Services) -> Result<(), ApiError> {
    let rows = sqlx::query!(
        "select c.id, c.org_id from control_planes c
         join billing_accounts b on b.org_id = c.org_id
         where c.status = 'ready' and b.stripe_customer_id is not null",
    )
    .fetch_all(pool)
    .await?;
    let max_gap = services.billing.config.usage_sample_interval * 2;
    let http = reqwest::Client::new();
    for (cp, org) in rows.into_iter().map(|r| (r.id, r.org_id)) {
        match object_count(services, &http, cp, org).await {
            Ok(Some(n)) => record_sample(pool, org, cp, n, Utc::now(), max_gap).await?,
            Ok(None) => {}
            Err(e) => tracing::debug!(control_plane.id = %cp, error = %e, "no object count"),
        }
    }
    Ok(())
}

/// `{ controlPlane { objectCount } }` on the control plane, as a system viewer.
async fn object_count(
    services: &Services,
    http: &reqwest::Client,
    cp: Uuid,
    org: Uuid,
) -> anyhow::Result<Option<u32>> {
    let RuntimeStatus::Ready(endpoint) = services.driver.status(cp).await? else {
        return Ok(None);
    };
    let token = services.keys.signer.mint(
        SubjectKind::Token,
        Uuid::nil(),
        org,
        cp,
        Role::Viewer,
        chrono::Duration::seconds(60),
    );
    let body: serde_json::Value = http
        .post(format!("{}/graphql", endpoint.0))
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .json(&json!({ "query": "{ controlPlane { objectCount } }" }))
        .send()
        .await?
        .json()
        .await?;
    Ok(body["data"]["controlPlane"]["objectCount"]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok()))
}

/// Turns unbatched samples into reports, one per organisation with a Stripe customer.
/// Returns how many reports were made.
pub async fn batch(pool: &PgPool) -> Result<u64, ApiError> {
    let mut tx = pool.begin().await?;
    let orgs = sqlx::query!(
        r#"select b.org_id, b.stripe_customer_id as "stripe_customer_id!", b.usage_carry_seconds
         from billing_accounts b
         where b.stripe_customer_id is not null
           and exists (select 1 from usage_samples s where s.org_id = b.org_id and not s.batched)
         for update of b skip locked"#,
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut made = 0;
    for o in orgs {
        let (org, customer, carry) = (o.org_id, o.stripe_customer_id, o.usage_carry_seconds);
        let taken = sqlx::query!(
            "with taken as (
                 update usage_samples set batched = true
                 where org_id = $1 and not batched
                 returning object_seconds, sampled_at)
             select sum(object_seconds)::bigint as seconds, min(sampled_at) as start,
                    max(sampled_at) as end
             from taken",
            org,
        )
        .fetch_one(&mut *tx)
        .await?;
        let (seconds, start, end) = (taken.seconds, taken.start, taken.end);
        let total = carry + seconds.unwrap_or(0);
        let hours = total / 3600;
        sqlx::query!(
            "update billing_accounts set usage_carry_seconds = $2, updated_at = now() where org_id = $1",
            org,
            total % 3600,
        )
        .execute(&mut *tx)
        .await?;
        if let (true, Some(start), Some(end)) = (hours > 0, start, end) {
            sqlx::query!(
                "insert into usage_reports (id, org_id, stripe_customer_id, object_hours, period_start, period_end)
                 values ($1, $2, $3, $4, $5, $6)",
                Uuid::new_v4(),
                org,
                &customer,
                hours,
                start,
                end,
            )
            .execute(&mut *tx)
            .await?;
            made += 1;
        }
    }
    tx.commit().await?;
    Ok(made)
}

/// Sends every unsent report to Stripe's meter; marks each sent once Stripe accepted it.
/// Returns how many were sent.
pub async fn report(pool: &PgPool, billing: &Billing, instance: Uuid) -> Result<u64, ApiError> {
    let stripe = billing.stripe()?;
    let Some(event_name) = billing
        .config
        .stripe
        .as_ref()
        .and_then(|s| s.meter_event.as_deref())
    else {
        return Ok(0);
    };
    // Claimed for a while by this instance, so another sends none of them meanwhile (Stripe
    // would not count one twice anyway: the report id is the event's identifier).
    let pending = sqlx::query!(
        "update usage_reports set claimed_by = $1, claimed_until = now() + interval '1 minute'
         where id in (
             select id from usage_reports
             where reported_at is null and (claimed_until is null or claimed_until < now())
             order by created_at limit 100
             for update skip locked)
         returning id, stripe_customer_id, object_hours, period_end",
        instance,
    )
    .fetch_all(pool)
    .await?;
    let mut sent = 0;
    for p in pending {
        let (id, customer, hours, end) = (p.id, p.stripe_customer_id, p.object_hours, p.period_end);
        let result = stripe
            .meter_event(
                event_name,
                &customer,
                hours,
                &id.to_string(),
                end.timestamp(),
            )
            .await;
        match result {
            Ok(()) => {
                sqlx::query!(
                    "update usage_reports set reported_at = now(), attempts = attempts + 1, last_error = null,
                         claimed_by = null, claimed_until = null
                     where id = $1",
                    id,
                )
                .execute(pool)
                .await?;
                sent += 1;
            }
            Err(e) => {
                sqlx::query!(
                    "update usage_reports set attempts = attempts + 1, last_error = $2,
                         claimed_by = null, claimed_until = null
                     where id = $1",
                    id,
                    e.to_string(),
                )
                .execute(pool)
                .await?;
            }
        }
    }
    Ok(sent)
}
