//! The audit log: every mutation appends who, what, where from and the before/after of what it
//! changed, in the same transaction as the change itself.

use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::error::ApiError;
use crate::identity::{Actor, Principal};

/// `{"field": {"before": .., "after": ..}}` for one changed field.
pub fn change(field: &str, before: impl Into<Value>, after: impl Into<Value>) -> Value {
    json!({ field: { "before": before.into(), "after": after.into() } })
}

/// Appends one entry.
pub async fn record(
    conn: &mut PgConnection,
    org_id: Option<Uuid>,
    actor: &Actor,
    action: &str,
    changes: Value,
) -> Result<(), ApiError> {
    let (user_id, token_id) = match &actor.principal {
        Principal::User { user_id, .. } => (Some(*user_id), None),
        Principal::Token {
            token_id, user_id, ..
        } => (Some(*user_id), Some(*token_id)),
    };
    sqlx::query!(
        "insert into audit_log (org_id, actor_user_id, actor_token_id, actor, action, ip, changes)
         values ($1, $2, $3, $4, $5, $6, $7)",
        org_id,
        user_id,
        token_id,
        actor.principal.label(),
        action,
        actor.ip.as_deref(),
        changes,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Appends an entry made by Qleet itself (e.g. the control-plane lifecycle worker).
pub async fn record_system(
    conn: &mut PgConnection,
    org_id: Uuid,
    action: &str,
    changes: Value,
) -> Result<(), ApiError> {
    sqlx::query!(
        "insert into audit_log (org_id, actor, action, changes) values ($1, 'qleet', $2, $3)",
        org_id,
        action,
        changes,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// One audit-log entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: i64,
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    pub actor_token_id: Option<Uuid>,
    pub action: String,
    pub ip: Option<String>,
    pub changes: Value,
}

/// Up to `limit` entries of an organisation, newest first, older than entry `before` if given.
/// Returns one extra row's worth of knowledge: whether more remain.
pub async fn page(
    pool: &PgPool,
    org_id: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<(Vec<Entry>, bool), ApiError> {
    let mut rows = sqlx::query_as!(
        Entry,
        "select id, at, actor, actor_token_id, action, ip, changes from audit_log
         where org_id = $1 and ($2::bigint is null or id < $2)
         order by id desc limit $3",
        org_id,
        before,
        limit + 1,
    )
    .fetch_all(pool)
    .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Ok((rows, more))
}
