//! Rows and the small writes every part of the engine shares: enqueueing a reconcile (the
//! outbox), recording events, telling listeners about changes.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::refs::ObjKey;

/// LISTEN/NOTIFY channels.
pub const RECONCILE_CHANNEL: &str = "qleet_reconcile";
pub const TASKS_CHANNEL: &str = "qleet_tasks";
pub const OBJECTS_CHANNEL: &str = "qleet_objects";

/// Where an object is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, async_graphql::Enum,
)]
pub enum Phase {
    /// Declared; not reconciled yet.
    Pending,
    /// Waiting for the objects it depends on to be Ready.
    Waiting,
    /// Work is queued for, or running in, the agent.
    Provisioning,
    Ready,
    Failed,
    Deleting,
}

impl Phase {
    pub fn parse(status: &Value) -> Phase {
        status
            .get("phase")
            .cloned()
            .and_then(|p| serde_json::from_value(p).ok())
            .unwrap_or(Phase::Pending)
    }
}

#[derive(Debug, Clone)]
pub struct ObjectRow {
    pub id: Uuid,
    pub kind: String,
    pub name: String,
    pub spec: Value,
    pub status: Value,
    pub outputs: Value,
    pub rendered: Option<Value>,
    pub generation: i64,
    pub observed_generation: i64,
    pub conditions: Value,
    pub owner_id: Option<Uuid>,
    pub deletion_requested_at: Option<chrono::DateTime<chrono::Utc>>,
    pub changed_by: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// `sqlx::query_as!` for [`ObjectRow`]s: every column of `objects` (aliased `o`), then the rest
/// of the query, which must stay a string literal so the macro checks it at compile time.
macro_rules! select_objects {
    ($rest:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            $crate::objects::store::ObjectRow,
            "select o.id, o.kind, o.name, o.spec, o.status, o.outputs, o.rendered, o.generation,
                    o.observed_generation, o.conditions, o.owner_id, o.deletion_requested_at,
                    o.changed_by, o.created_at, o.updated_at "
                + $rest
            $(, $arg)*
        )
    };
}
pub(crate) use select_objects;

impl ObjectRow {
    pub fn key(&self) -> ObjKey {
        ObjKey::new(self.kind.clone(), self.name.clone())
    }
    pub fn phase(&self) -> Phase {
        Phase::parse(&self.status)
    }
}

/// Asks for `ids` to be reconciled, in the caller's transaction: the change and the request
/// commit together or not at all. Wakes the workers at commit. Rows are locked in id order,
/// so concurrent enqueuers cannot deadlock on each other.
pub async fn enqueue(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "insert into reconcile_queue (object_id)
         select id from objects where id = any($1) order by id
         on conflict (object_id) do update
           set seq = reconcile_queue.seq + 1,
               not_before = least(reconcile_queue.not_before, now()),
               attempts = 0",
        ids,
    )
    .execute(&mut *conn)
    .await?;
    notify(&mut *conn, RECONCILE_CHANNEL, "").await
}

/// `NOTIFY channel, payload`, delivered at commit.
pub async fn notify(
    executor: impl sqlx::PgExecutor<'_>,
    channel: &str,
    payload: &str,
) -> sqlx::Result<()> {
    sqlx::query!("select pg_notify($1, $2)", channel, payload)
        .execute(executor)
        .await?;
    Ok(())
}

/// Records an event on an object.
pub async fn event(
    conn: &mut PgConnection,
    object: Uuid,
    warning: bool,
    reason: &str,
    message: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "insert into object_events (object_id, type, reason, message) values ($1, $2, $3, $4)",
        object,
        if warning { "Warning" } else { "Normal" },
        reason,
        message,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Tells subscribers (at commit) that an object's status changed or it is gone.
pub async fn announce(
    conn: &mut PgConnection,
    key: &ObjKey,
    status: &Value,
    generation: i64,
    observed_generation: i64,
    deleted: bool,
) -> sqlx::Result<()> {
    let payload = serde_json::json!({
        "kind": key.kind,
        "name": key.name,
        "phase": Phase::parse(status),
        "message": status.get("message"),
        "generation": generation,
        "observedGeneration": observed_generation,
        "deleted": deleted,
        "at": chrono::Utc::now(),
    });
    notify(&mut *conn, OBJECTS_CHANNEL, &payload.to_string()).await
}

/// Aborts the process at a named point when `QLEET_CRASH_AT` names it: the crash-safety tests
/// kill the control plane between "object changed" and "reconciled" this way.
pub fn crash_point(name: &str) {
    if CRASH_AT.get().is_some_and(|at| at == name) {
        tracing::error!(point = name, "crashing on purpose (QLEET_CRASH_AT)");
        std::process::abort();
    }
}

/// Set once at start from the control plane's configuration.
pub static CRASH_AT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
