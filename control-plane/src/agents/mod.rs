//! Tenant agents, as their control plane knows them: one-time registration tokens, agent
//! identities with hashed credentials, heartbeats and the Connected / Unknown / Disconnected
//! status, revocation. The agent's own code is the `qleet-agent` crate; the wire types are in
//! `qleet-protocol`.

pub mod graphql;

use chrono::{DateTime, Duration, Utc};
use qleet_protocol::{CREDENTIAL_PREFIX, REGISTRATION_PREFIX, RegisterRequest, RegisterResponse};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;
use crate::internal_token::Limits;
use qleet_common::secrets::{hash_secret, random_secret};

/// How often agents are asked to send a heartbeat.
pub const HEARTBEAT_SECS: u32 = 10;
/// Missed heartbeats for this long: Unknown.
const UNKNOWN_AFTER_SECS: i64 = 30;
/// Silent for this long: Disconnected.
const DISCONNECTED_AFTER_SECS: i64 = 120;

/// An agent's connection state, from its last heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum, serde::Serialize)]
pub enum AgentStatus {
    /// Heard from within the last 30 s.
    Connected,
    /// Missed heartbeats (30 s to 2 min).
    Unknown,
    /// Silent for over 2 min, or never connected.
    Disconnected,
    /// Its credential was revoked; it can no longer call.
    Revoked,
}

pub fn status(last_seen: Option<DateTime<Utc>>, revoked: bool, now: DateTime<Utc>) -> AgentStatus {
    if revoked {
        return AgentStatus::Revoked;
    }
    match last_seen {
        Some(t) if now - t <= Duration::seconds(UNKNOWN_AFTER_SECS) => AgentStatus::Connected,
        Some(t) if now - t <= Duration::seconds(DISCONNECTED_AFTER_SECS) => AgentStatus::Unknown,
        _ => AgentStatus::Disconnected,
    }
}

/// A new one-time registration token (shown once), valid for `ttl`.
pub async fn create_registration(
    pool: &PgPool,
    created_by: &str,
    ttl: Duration,
    limits: Option<&Limits>,
) -> Result<(String, DateTime<Utc>), ApiError> {
    if let Some(limits) = limits {
        limits.check_agents(active_agents(pool).await?)?;
    }
    let token = format!("{REGISTRATION_PREFIX}{}", random_secret());
    let mut tx = pool.begin().await?;
    let expires_at = sqlx::query_scalar!(
        "insert into agent_registrations (id, token_hash, created_by, expires_at, limits)
         values ($1, $2, $3, now() + make_interval(secs => $4), $5) returning expires_at",
        Uuid::new_v4(),
        hash_secret(&token),
        created_by,
        ttl.num_seconds() as f64,
        limits.map(sqlx::types::Json) as _,
    )
    .fetch_one(&mut *tx)
    .await?;
    crate::audit::record(
        &mut tx,
        crate::audit::Record {
            actor: created_by,
            action: "agent.registration",
            object: None,
            detail: &format!("a one-time agent registration token, valid until {expires_at}"),
            diff: serde_json::json!([]),
        },
    )
    .await?;
    tx.commit().await?;
    Ok((token, expires_at))
}

async fn active_agents(pool: &PgPool) -> Result<u64, ApiError> {
    Ok(count_active(pool).await? as u64)
}

async fn count_active(executor: impl sqlx::PgExecutor<'_>) -> sqlx::Result<i64> {
    sqlx::query_scalar!(r#"select count(*) as "count!" from agents where revoked_at is null"#)
        .fetch_one(executor)
        .await
}

/// Trades a registration token for an agent identity. The token works once; an expired,
/// revoked or spent token is refused the same way, without saying which.
pub async fn register(
    pool: &PgPool,
    control_plane: Uuid,
    req: RegisterRequest,
) -> Result<RegisterResponse, ApiError> {
    let name = req.name.trim();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name",
            "must be 1 to 200 printable characters",
        ));
    }
    if req.version.is_empty() || req.version.len() > 64 {
        return Err(ApiError::invalid("version", "must be 1 to 64 characters"));
    }
    let mut tx = pool.begin().await?;
    let registration = sqlx::query!(
        r#"update agent_registrations set used_at = now()
         where token_hash = $1 and used_at is null and revoked_at is null and expires_at > now()
         returning id, limits as "limits: sqlx::types::Json<Limits>""#,
        hash_secret(&req.token),
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(registration) = registration else {
        return Err(ApiError::Unauthenticated);
    };
    if let Some(sqlx::types::Json(limits)) = registration.limits {
        // Serialise registrations so two cannot both take the last place.
        sqlx::query!("select pg_advisory_xact_lock(7411002)")
            .execute(&mut *tx)
            .await?;
        let active = count_active(&mut *tx).await?;
        limits.check_agents(active as u64)?;
    }
    let id = Uuid::new_v4();
    let credential = format!("{CREDENTIAL_PREFIX}{}_{}", id.simple(), random_secret());
    sqlx::query!(
        "insert into agents (id, name, credential_hash, version, registration_id, last_seen_at)
         values ($1, $2, $3, $4, $5, now())",
        id,
        name,
        hash_secret(&credential),
        &req.version,
        registration.id,
    )
    .execute(&mut *tx)
    .await?;
    crate::audit::record(
        &mut tx,
        crate::audit::Record {
            actor: &format!("agent:{id}"),
            action: "agent.register",
            object: None,
            detail: &format!("agent {name:?} (version {}) registered", req.version),
            diff: serde_json::json!([]),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(RegisterResponse {
        agent_id: id,
        credential,
        control_plane,
    })
}

/// The agent a credential names, if it is valid and not revoked. Records that it was seen.
pub async fn authenticate(pool: &PgPool, credential: &str) -> Result<Uuid, ApiError> {
    let id = credential
        .strip_prefix(CREDENTIAL_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .and_then(|(id, _)| Uuid::parse_str(id).ok())
        .ok_or(ApiError::Unauthenticated)?;
    let found = sqlx::query_scalar!(
        "update agents set last_seen_at = now()
         where id = $1 and credential_hash = $2 and revoked_at is null
         returning id",
        id,
        hash_secret(credential),
    )
    .fetch_optional(pool)
    .await?;
    found.ok_or(ApiError::Unauthenticated)
}

/// Records a heartbeat.
pub async fn heartbeat(
    pool: &PgPool,
    agent: Uuid,
    beat: &qleet_protocol::Heartbeat,
) -> Result<(), ApiError> {
    if beat.version.is_empty() || beat.version.len() > 64 {
        return Err(ApiError::invalid("version", "must be 1 to 64 characters"));
    }
    sqlx::query!(
        "update agents set last_seen_at = now(), version = $2, running = $3 where id = $1",
        agent,
        &beat.version,
        beat.running.min(100_000) as i32,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Revokes an agent: its credential stops working at once and its leases go back to the
/// queue for another agent.
/// Revokes `agent` as `actor`; false when it was not an active agent.
pub async fn revoke(pool: &PgPool, agent: Uuid, actor: &str) -> Result<bool, ApiError> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query!(
        "update agents set revoked_at = now() where id = $1 and revoked_at is null",
        agent,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if done > 0 {
        crate::audit::record(
            &mut tx,
            crate::audit::Record {
                actor,
                action: "agent.revoke",
                object: None,
                detail: &format!("agent:{agent} revoked"),
                diff: serde_json::json!([]),
            },
        )
        .await?;
    }
    sqlx::query!(
        "update agent_tasks set state = 'queued', lease_id = null, lease_holder = null,
           lease_expires_at = null, not_before = now()
         where state = 'leased' and lease_holder = $1",
        agent.to_string(),
    )
    .execute(&mut *tx)
    .await?;
    crate::objects::store::notify(&mut *tx, crate::objects::store::TASKS_CHANNEL, "").await?;
    tx.commit().await?;
    Ok(done > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_heartbeats() {
        let now = Utc::now();
        assert_eq!(status(Some(now), false, now), AgentStatus::Connected);
        assert_eq!(
            status(Some(now - Duration::seconds(45)), false, now),
            AgentStatus::Unknown
        );
        assert_eq!(
            status(Some(now - Duration::seconds(600)), false, now),
            AgentStatus::Disconnected
        );
        assert_eq!(status(None, false, now), AgentStatus::Disconnected);
        assert_eq!(status(Some(now), true, now), AgentStatus::Revoked);
    }
}
