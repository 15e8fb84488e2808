//! Several management-plane processes (replicas) on one management database share the work
//! (migration `0011_replicas`).
//!
//! - Each step of a control plane's lifecycle, each Stripe event, usage report and hibernation
//!   is claimed by one instance with a short lease (see [`super::lifecycle`] and
//!   [`crate::billing`]), so each happens once, and an instance that dies has its claims taken
//!   over within seconds.
//! - Each instance says it is alive every [`HEARTBEAT`] (`management_instances`); one not seen
//!   for [`GONE_AFTER`] is gone.
//! - With the process runtime a control plane runs as a child of one instance, its *holder*,
//!   recorded with the endpoint it answers at. Every instance's gateway forwards there; when the
//!   holder is gone, the first instance that needs it (a request, or its sweep) takes it over
//!   and starts it itself. A child whose control plane is no longer held by its instance, or
//!   should not run, is stopped by that instance's sweep.
//! - Live status changes reach every instance's subscribers through PostgreSQL
//!   (`qleet_changes`), whichever instance made them.

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;

/// How often an instance says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// An instance not seen for this long is gone.
pub const GONE_AFTER: Duration = Duration::from_secs(10);

/// The instances this one last saw alive (itself included), refreshed every heartbeat, so the
/// gateway asks no question of the database to know whether a holder is alive.
#[derive(Default)]
pub struct Instances {
    alive: RwLock<HashSet<Uuid>>,
}

impl Instances {
    pub fn is_alive(&self, id: Uuid) -> bool {
        self.alive
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
    }

    fn set(&self, alive: HashSet<Uuid>) {
        *self.alive.write().unwrap_or_else(|e| e.into_inner()) = alive;
    }
}

/// Says this instance is alive, and learns which others are, every [`HEARTBEAT`], for as long
/// as it runs.
pub async fn heartbeat(pool: PgPool, instance: Uuid, instances: std::sync::Arc<Instances>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match beat(&pool, instance).await {
            Ok(alive) => instances.set(alive),
            Err(e) => tracing::warn!(error = %e, "cannot record this instance's heartbeat"),
        }
    }
}

async fn beat(pool: &PgPool, instance: Uuid) -> sqlx::Result<HashSet<Uuid>> {
    sqlx::query!(
        "insert into management_instances (id) values ($1)
         on conflict (id) do update set seen_at = now()",
        instance,
    )
    .execute(pool)
    .await?;
    let alive = sqlx::query_scalar!(
        "select id from management_instances where seen_at > now() - make_interval(secs => $1)",
        GONE_AFTER.as_secs_f64(),
    )
    .fetch_all(pool)
    .await?;
    // Long gone instances are forgotten.
    sqlx::query!("delete from management_instances where seen_at < now() - interval '1 day'")
        .execute(pool)
        .await?;
    Ok(alive.into_iter().collect())
}

/// This instance stops: it is gone at once, and the control planes it ran are free to be taken
/// over without waiting for [`GONE_AFTER`].
pub async fn leave(pool: &PgPool, instance: Uuid) {
    let left = async {
        sqlx::query!(
            "update control_planes set runtime_holder = null, runtime_endpoint = null
             where runtime_holder = $1",
            instance,
        )
        .execute(pool)
        .await?;
        sqlx::query!("delete from management_instances where id = $1", instance)
            .execute(pool)
            .await
    };
    if let Err(e) = left.await {
        tracing::warn!(error = %e, "cannot record that this instance stops");
    }
}

/// Makes this instance the holder of a control plane's runtime, whoever held it: used by the
/// instance that holds the control plane's lifecycle claim (provisioning, resuming, waking), so
/// the former holder's sweep stops its child.
pub async fn hold(pool: &PgPool, id: Uuid, instance: Uuid) -> Result<(), ApiError> {
    sqlx::query!(
        "update control_planes set runtime_holder = $2,
             runtime_endpoint = case when runtime_holder = $2 then runtime_endpoint end
         where id = $1",
        id,
        instance,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Takes a control plane's runtime over when no live instance holds it; answers whether this
/// instance holds it now.
pub async fn take_over(pool: &PgPool, id: Uuid, instance: Uuid) -> Result<bool, ApiError> {
    let taken = sqlx::query!(
        "update control_planes set runtime_holder = $2,
             runtime_endpoint = case when runtime_holder = $2 then runtime_endpoint end
         where id = $1 and (runtime_holder is null or runtime_holder = $2 or not exists (
             select 1 from management_instances i
             where i.id = control_planes.runtime_holder
               and i.seen_at > now() - make_interval(secs => $3)))",
        id,
        instance,
        GONE_AFTER.as_secs_f64(),
    )
    .execute(pool)
    .await?
    .rows_affected();
    Ok(taken > 0)
}

/// Records where this instance's child answers (once it is ready).
pub async fn record_endpoint(
    pool: &PgPool,
    id: Uuid,
    instance: Uuid,
    endpoint: &str,
) -> Result<(), ApiError> {
    sqlx::query!(
        "update control_planes set runtime_endpoint = $3 where id = $1 and runtime_holder = $2",
        id,
        instance,
        endpoint,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The control plane no longer runs anywhere (suspended, hibernated, deleted).
pub async fn release(pool: &PgPool, id: Uuid) -> Result<(), ApiError> {
    sqlx::query!(
        "update control_planes set runtime_holder = null, runtime_endpoint = null where id = $1",
        id,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Where a control plane's runtime answers and who holds it, read now (not from any cache).
pub async fn runtime_of(
    pool: &PgPool,
    id: Uuid,
) -> Result<(Option<Uuid>, Option<String>), ApiError> {
    let row = sqlx::query!(
        "select runtime_holder, runtime_endpoint from control_planes where id = $1",
        id
    )
    .fetch_one(pool)
    .await?;
    Ok((row.runtime_holder, row.runtime_endpoint))
}

/// A live status change as PostgreSQL announces it on `qleet_changes`.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Announced {
    org_id: Uuid,
    id: Uuid,
    status: String,
    status_reason: Option<String>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

/// The channel live status changes are announced on.
pub const CHANGES_CHANNEL: &str = "qleet_changes";

/// Reads an announcement of [`CHANGES_CHANNEL`].
pub fn change_of(payload: &str) -> Option<super::Change> {
    let a: Announced = serde_json::from_str(payload).ok()?;
    Some(super::Change {
        org_id: a.org_id,
        id: a.id,
        status: super::Status::parse(&a.status).ok()?,
        status_reason: a.status_reason,
        updated_at: a.updated_at,
    })
}
