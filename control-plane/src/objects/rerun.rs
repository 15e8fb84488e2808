//! Asking for an object's work to run again: `retry` (a FAILED object gets a fresh attempt) and
//! `refresh` (the agent re-checks what it made against the cloud and repairs or re-reads it).
//!
//! Re-applying a FAILED object's unchanged spec retries it too ([`restart`] from apply).
//!
//! Both set aside the object's finished agent work for its current inputs and ask for a
//! reconcile, in one transaction; the reconciler then queues the same work again (attempts from
//! zero). The object is PROVISIONING from the same commit until the agent reports; an event
//! records who asked.

use qleet_common::error::{ApiError, internal};
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use super::kinds::Builtin;
use super::refs::ObjKey;
use super::store::{self, ObjectRow, Phase, select_objects};

/// Which re-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rerun {
    /// A FAILED object tries again from the first attempt.
    Retry,
    /// A READY (or FAILED) object's cloud resources are checked again by the agent: re-made if
    /// they were deleted behind Qleet's back, their outputs read back.
    Refresh,
}

impl Rerun {
    fn verb(self) -> &'static str {
        match self {
            Rerun::Retry => "retried",
            Rerun::Refresh => "refreshed",
        }
    }
}

/// Re-runs `key`'s work as `actor`; answers the object as it stands after the request.
pub async fn rerun(
    pool: &PgPool,
    key: &ObjKey,
    which: Rerun,
    actor: &str,
) -> Result<ObjectRow, ApiError> {
    let mut tx = pool.begin().await.map_err(ApiError::from)?;
    let row = select_objects!(
        "from objects o where o.kind = $1 and o.name = $2 for update",
        key.kind,
        key.name,
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(ApiError::from)?
    .ok_or_else(|| ApiError::NotFound(format!("object {key}")))?;
    if row.deletion_requested_at.is_some() {
        return Err(ApiError::Conflict(format!(
            "{key} is being deleted; it cannot be {}",
            which.verb()
        )));
    }
    let phase = row.phase();
    let allowed = match which {
        Rerun::Retry => phase == Phase::Failed,
        Rerun::Refresh => matches!(phase, Phase::Ready | Phase::Failed),
    };
    if !allowed {
        let expected = match which {
            Rerun::Retry => "only a FAILED object can be retried",
            Rerun::Refresh => "only a READY or FAILED object can be refreshed",
        };
        return Err(ApiError::Conflict(format!(
            "{expected}; {key} is {}",
            format!("{phase:?}").to_uppercase()
        )));
    }
    if which == Rerun::Refresh && !Builtin::parse(&row.kind).is_some_and(Builtin::needs_agent) {
        return Err(ApiError::invalid(
            "kind",
            format!(
                "{key} has nothing of its own in the cloud to refresh (its outputs are computed by the control plane)"
            ),
        ));
    }
    let (reason, message) = match which {
        Rerun::Retry => ("RetryRequested", format!("retry requested by {actor}")),
        Rerun::Refresh => ("RefreshRequested", format!("refresh requested by {actor}")),
    };
    let key = row.key();
    crate::audit::record(
        &mut tx,
        crate::audit::Record {
            actor,
            action: match which {
                Rerun::Retry => "object.retry",
                Rerun::Refresh => "object.refresh",
            },
            object: Some((row.id, &key)),
            detail: &format!("{} was {}", key, format!("{phase:?}").to_uppercase()),
            diff: json!([]),
        },
    )
    .await
    .map_err(ApiError::from)?;
    // A READY resource the agent can observe is observed and compared (see `drift`); what
    // differs is then put back or reported, by its drift policy.
    if which == Rerun::Refresh && phase == Phase::Ready {
        let queued = super::drift::queue_observe(&mut tx, row.id)
            .await
            .map_err(internal)?;
        if queued {
            sqlx::query!(
                "update objects set observe_requested_at = now() where id = $1",
                row.id,
            )
            .execute(&mut *tx)
            .await
            .map_err(ApiError::from)?;
            let row = restart_as(
                &mut tx,
                row,
                reason,
                &message,
                &format!("checking it against the cloud ({message})"),
            )
            .await
            .map_err(internal)?;
            tx.commit().await.map_err(ApiError::from)?;
            return Ok(row);
        }
    }
    let row = restart(&mut tx, row, reason, &message)
        .await
        .map_err(internal)?;
    tx.commit().await.map_err(ApiError::from)?;
    Ok(row)
}

/// Sets aside `row`'s finished agent work, records `reason`/`message` as an event, makes it
/// PROVISIONING (so a caller waiting for READY does not read the old phase) and asks for a
/// reconcile, in `conn`'s transaction. Answers the row as written.
pub async fn restart(
    conn: &mut PgConnection,
    row: ObjectRow,
    reason: &str,
    message: &str,
) -> sqlx::Result<ObjectRow> {
    // The reconciler queues work only when no unfinished or finished work for the current
    // inputs is on record; setting the finished work aside makes it queue it again.
    sqlx::query!(
        "update agent_tasks set state = 'superseded', lease_id = null
         where object_id = $1 and operation = 'ensure' and state in ('succeeded', 'failed')",
        row.id,
    )
    .execute(&mut *conn)
    .await?;
    restart_as(conn, row, reason, message, message).await
}

/// Records `reason`/`message` as an event, shows the object PROVISIONING with `status` and
/// asks for a reconcile, in `conn`'s transaction.
async fn restart_as(
    conn: &mut PgConnection,
    mut row: ObjectRow,
    reason: &str,
    message: &str,
    status: &str,
) -> sqlx::Result<ObjectRow> {
    store::event(&mut *conn, row.id, false, reason, message).await?;
    row.status = json!({ "phase": Phase::Provisioning, "message": status });
    sqlx::query!(
        "update objects set status = $2, updated_at = now() where id = $1",
        row.id,
        &row.status,
    )
    .execute(&mut *conn)
    .await?;
    store::announce(
        &mut *conn,
        &row.key(),
        &row.status,
        row.generation,
        row.observed_generation,
        false,
    )
    .await?;
    store::enqueue(&mut *conn, &[row.id]).await?;
    Ok(row)
}
