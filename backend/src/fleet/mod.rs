//! Tenant control planes as the management plane sees them: the registry, their lifecycle
//! (a persisted state machine driven by [`lifecycle`]), the runtime drivers that run them, and
//! the gateway that forwards an organisation's requests to its own control plane.

pub mod driver;
pub mod gateway;
pub mod graphql;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod lifecycle;
pub mod live;
pub mod object_events;
pub mod process;
pub mod replicas;
pub mod servers;
pub mod template;

use async_graphql::Enum;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::audit;
use crate::error::{ApiError, is_unique_violation};
use crate::identity::{Actor, random_secret};
use crate::keys::Keys;
use crate::orgs::{OrgAccess, Permission, access, require};

/// Where a control plane is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pending,
    Provisioning,
    Ready,
    Hibernated,
    Suspended,
    Deleting,
    Deleted,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Provisioning => "provisioning",
            Status::Ready => "ready",
            Status::Hibernated => "hibernated",
            Status::Suspended => "suspended",
            Status::Deleting => "deleting",
            Status::Deleted => "deleted",
            Status::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Result<Status, ApiError> {
        [
            Status::Pending,
            Status::Provisioning,
            Status::Ready,
            Status::Hibernated,
            Status::Suspended,
            Status::Deleting,
            Status::Deleted,
            Status::Failed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| crate::error::internal(anyhow::anyhow!("unknown status {s:?}")))
    }
}

/// A control plane row.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub region: Option<String>,
    pub status: String,
    pub status_reason: Option<String>,
    pub desired: String,
    pub db_name: String,
    pub db_role: String,
    pub db_password_enc: Vec<u8>,
    pub version: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub delete_after: Option<DateTime<Utc>>,
    /// Suspended by billing (past due after the grace period), not by a person.
    pub billing_hold: bool,
    /// The database server its database is on (`None`: the management database's).
    pub server_id: Option<Uuid>,
    /// The process runtime: the instance that runs it, and where it answers.
    pub runtime_holder: Option<Uuid>,
    pub runtime_endpoint: Option<String>,
}

/// `sqlx::query_as!` for [`ControlPlane`] rows: `$before`, the row's columns, `$after`. Both
/// parts are literals, so the macro checks the whole statement at compile time.
macro_rules! query_control_planes {
    ($before:literal, $after:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            $crate::fleet::ControlPlane,
            $before
                + "id, org_id, name, region, status, status_reason, desired, db_name, db_role,
                   db_password_enc, version, created_at, updated_at, delete_after, billing_hold,
                   server_id, runtime_holder, runtime_endpoint"
                + $after
            $(, $arg)*
        )
    };
}
pub(crate) use query_control_planes;

/// A change of state, broadcast to live UIs.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    #[serde(skip)]
    pub org_id: Uuid,
    pub id: Uuid,
    pub status: Status,
    pub status_reason: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// A control-plane name: 3 to 40 of `a-z`, `0-9`, `-`, starting with a letter.
fn parse_name(input: &str) -> Result<String, ApiError> {
    crate::orgs::Slug::parse(input)
        .map(|s| s.as_str().to_owned())
        .map_err(|e| match e {
            ApiError::InvalidInput { message, .. } => ApiError::invalid("name", message),
            other => other,
        })
}

fn parse_region(input: Option<&str>) -> Result<Option<String>, ApiError> {
    match input.map(str::trim).filter(|r| !r.is_empty()) {
        None => Ok(None),
        Some(r)
            if r.len() <= 32
                && r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            Ok(Some(r.to_owned()))
        }
        Some(_) => Err(ApiError::invalid("region", "must be like eu-west-1")),
    }
}

/// Records a state change (row, event, broadcast) inside `tx`, only if the control plane is
/// still in `from` (so concurrent changes never overwrite each other). Returns whether it moved.
pub async fn transition(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
    from: &[Status],
    to: Status,
    message: &str,
) -> Result<Option<Change>, ApiError> {
    let from_names: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    let row = sqlx::query!(
        r#"with old as (select status from control_planes where id = $1 for update)
         update control_planes c set status = $3, status_reason = null, updated_at = now(), attempts = 0
         from old where c.id = $1 and old.status = any($2)
         returning c.org_id, old.status as "old!", c.updated_at"#,
        id,
        &from_names as &[&str],
        to.as_str(),
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (org_id, old, updated_at) = (row.org_id, row.old, row.updated_at);
    sqlx::query!(
        "insert into control_plane_events (control_plane_id, from_status, to_status, message)
         values ($1, $2, $3, $4)",
        id,
        &old,
        to.as_str(),
        message,
    )
    .execute(&mut *conn)
    .await?;
    let changes = serde_json::json!({
        "controlPlaneId": id, "status": { "before": old, "after": to.as_str() }, "message": message,
    });
    audit::record_system(&mut *conn, org_id, "control_plane.transition", changes).await?;
    Ok(Some(Change {
        org_id,
        id,
        status: to,
        status_reason: None,
        updated_at,
    }))
}

pub async fn list(pool: &PgPool, org_id: Uuid) -> Result<Vec<ControlPlane>, ApiError> {
    Ok(query_control_planes!(
        "select ",
        " from control_planes where org_id = $1 and status <> 'deleted' order by name",
        org_id,
    )
    .fetch_all(pool)
    .await?)
}

/// A control plane of the organisation (including deleted ones, for their history).
pub async fn get(pool: &PgPool, org_id: Uuid, id: Uuid) -> Result<ControlPlane, ApiError> {
    query_control_planes!(
        "select ",
        " from control_planes where org_id = $1 and id = $2",
        org_id,
        id,
    )
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ApiError::NotFound("control plane".into()))
}

pub async fn get_by_id(pool: &PgPool, id: Uuid) -> Result<Option<ControlPlane>, ApiError> {
    Ok(
        query_control_planes!("select ", " from control_planes where id = $1", id)
            .fetch_optional(pool)
            .await?,
    )
}

/// One entry of a control plane's history.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub from_status: Option<String>,
    pub to_status: String,
    pub message: String,
}

pub async fn events(pool: &PgPool, id: Uuid) -> Result<Vec<Event>, ApiError> {
    Ok(sqlx::query_as!(
        Event,
        "select at, from_status, to_status, message from control_plane_events
         where control_plane_id = $1 order by id desc limit 200",
        id,
    )
    .fetch_all(pool)
    .await?)
}

/// The gateway and the live status streams (control planes, objects).
pub fn router() -> axum::Router<crate::state::AppState> {
    gateway::router()
        .merge(live::router())
        .merge(object_events::router())
}

/// Everything the lifecycle needs besides the database.
pub struct Services {
    pub keys: Keys,
    pub driver: Box<dyn driver::RuntimeDriver>,
    /// Wakes the lifecycle workers.
    pub wake: tokio::sync::Notify,
    /// Live state changes.
    pub changes: tokio::sync::broadcast::Sender<Change>,
    /// Plans, entitlements and Stripe.
    pub billing: std::sync::Arc<crate::billing::Billing>,
    pub retention: std::time::Duration,
    pub hibernate_after: Option<std::time::Duration>,
    /// How long provisioning may take before the control plane is marked FAILED.
    pub provisioning_timeout: std::time::Duration,
    /// Connection URL of the management database; tenants get databases on the same server.
    pub admin_url: secrecy::SecretString,
    /// Where a deleted control plane's database is exported (`pg_dump`) before it is dropped.
    pub export_dir: std::path::PathBuf,
    /// This management-plane process, as the holder of worker leases.
    pub instance: Uuid,
    /// The gateway's memory between requests (minted tokens, request times).
    pub gateway: gateway::Memo,
    /// The management-plane instances last seen alive (replicas).
    pub instances: std::sync::Arc<replicas::Instances>,
}

impl Services {
    /// Wakes every idle lifecycle worker (and the next one to wait, if all are busy).
    pub fn wake_workers(&self) {
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    /// After a transition: wakes the workers. Live subscribers hear of it through PostgreSQL
    /// (every instance's, see [`replicas`]).
    pub fn publish(&self, change: Option<Change>) {
        if change.is_some() {
            self.wake_workers();
        }
    }
}

/// Asks for a new control plane; the lifecycle worker provisions it.
pub async fn create(
    pool: &PgPool,
    services: &Services,
    actor: &Actor,
    slug: &str,
    name: &str,
    region: Option<&str>,
) -> Result<ControlPlane, ApiError> {
    let access = access(pool, &actor.principal, slug).await?;
    require(&access, Permission::ManageControlPlanes)?;
    let name = parse_name(name)?;
    let region = parse_region(region)?;
    let mut tx = pool.begin().await?;
    // Serialise creations per organisation so the quota check cannot be raced.
    sqlx::query!(
        "select id from organizations where id = $1 for update",
        access.org.id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let count = sqlx::query_scalar!(
        r#"select count(*) as "count!" from control_planes
         where org_id = $1 and status not in ('deleting', 'deleted')"#,
        access.org.id,
    )
    .fetch_one(&mut *tx)
    .await?;
    let billing = &services.billing;
    let (plan, account) = crate::billing::plan_of(&mut *tx, billing, access.org.id).await?;
    if crate::billing::grace_over(billing, &account) {
        return Err(crate::billing::past_due_error());
    }
    crate::billing::check_quota(
        billing.plans(),
        plan,
        crate::billing::plans::Resource::ControlPlanes,
        u64::try_from(count).unwrap_or(0),
    )?;
    let id = Uuid::new_v4();
    let simple = id.simple().to_string();
    let password = random_secret();
    let cp = query_control_planes!(
        "insert into control_planes (id, org_id, name, region, db_name, db_role, db_password_enc, version)
         values ($1, $2, $3, $4, $5, $6, $7, $8) returning ",
        "",
        id,
        access.org.id,
        &name,
        region.as_deref(),
        format!("qleet_cp_{simple}"),
        format!("qleet_cp_{simple}"),
        services.keys.encrypt(password.as_bytes()),
        env!("CARGO_PKG_VERSION"),
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e, "control_planes_org_name_idx") {
            ApiError::Conflict(format!("a control plane called {name:?} already exists"))
        } else {
            e.into()
        }
    })?;
    sqlx::query!(
        "insert into control_plane_events (control_plane_id, to_status, message) values ($1, 'pending', 'requested')",
        id,
    )
    .execute(&mut *tx)
    .await?;
    let changes = serde_json::json!({ "controlPlaneId": id, "name": name, "region": region });
    audit::record(
        &mut tx,
        Some(access.org.id),
        actor,
        "control_plane.create",
        changes,
    )
    .await?;
    tx.commit().await?;
    services.publish(Some(Change {
        org_id: cp.org_id,
        id: cp.id,
        status: Status::Pending,
        status_reason: None,
        updated_at: cp.updated_at,
    }));
    Ok(cp)
}

/// What a lifecycle request changes.
#[derive(Debug, Clone, Copy)]
pub enum Request {
    Suspend,
    Resume,
    Delete,
}

/// Suspends, resumes or deletes a control plane (admins and owners).
pub async fn request(
    pool: &PgPool,
    services: &Services,
    actor: &Actor,
    slug: &str,
    id: Uuid,
    request: Request,
    confirm_name: Option<&str>,
) -> Result<ControlPlane, ApiError> {
    let access: OrgAccess = access(pool, &actor.principal, slug).await?;
    require(&access, Permission::ManageControlPlanes)?;
    let cp = get(pool, access.org.id, id).await?;
    let mut tx = pool.begin().await?;
    // The status as of now, and held: the lifecycle worker's transitions wait for this request,
    // so a step finishing meanwhile (say provisioning → ready) cannot make the transition below
    // miss and the request be lost.
    let status = sqlx::query_scalar!(
        "select status from control_planes where id = $1 for update",
        id
    )
    .fetch_one(&mut *tx)
    .await?;
    let status = Status::parse(&status)?;
    let (desired, change, action) = match request {
        Request::Suspend => {
            if !matches!(
                status,
                Status::Ready | Status::Hibernated | Status::Provisioning | Status::Pending
            ) {
                return Err(ApiError::Conflict(format!(
                    "a {} control plane cannot be suspended",
                    status.as_str()
                )));
            }
            ("suspended", None, "control_plane.suspend")
        }
        Request::Resume => {
            crate::billing::resume_check(pool, &services.billing, cp.org_id, id, cp.billing_hold)
                .await?;
            match status {
                Status::Suspended => ("running", None, "control_plane.resume"),
                // Provisioning gave up: try again from the start (it is asked for anew).
                Status::Failed => {
                    let change = transition(
                        &mut tx,
                        id,
                        &[Status::Failed],
                        Status::Pending,
                        &format!("provisioning tried again by {}", actor.principal.label()),
                    )
                    .await?;
                    ("running", change, "control_plane.resume")
                }
                _ => {
                    return Err(ApiError::Conflict(format!(
                        "only a suspended or failed control plane can be resumed (this one is {})",
                        status.as_str()
                    )));
                }
            }
        }
        Request::Delete => {
            if confirm_name.map(str::trim) != Some(cp.name.as_str()) {
                return Err(ApiError::invalid(
                    "confirmName",
                    format!("type the control plane's name ({}) to confirm", cp.name),
                ));
            }
            if matches!(status, Status::Deleting | Status::Deleted) {
                return Err(ApiError::Conflict(
                    "this control plane is already being deleted".into(),
                ));
            }
            let change = transition(
                &mut tx,
                id,
                &[status],
                Status::Deleting,
                &format!("deletion requested by {}", actor.principal.label()),
            )
            .await?;
            if change.is_none() {
                return Err(ApiError::Conflict(
                    "the control plane changed state meanwhile; try again".into(),
                ));
            }
            sqlx::query!(
                "update control_planes set delete_after = now() + make_interval(secs => $2)
                 where id = $1",
                id,
                services.retention.as_secs_f64(),
            )
            .execute(&mut *tx)
            .await?;
            ("deleted", change, "control_plane.delete")
        }
    };
    sqlx::query!(
        "update control_planes set desired = $2, next_attempt_at = now(), updated_at = now() where id = $1",
        id,
        desired,
    )
    .execute(&mut *tx)
    .await?;
    let changes = serde_json::json!({ "controlPlaneId": id, "desired": { "before": cp.desired, "after": desired } });
    audit::record(&mut tx, Some(access.org.id), actor, action, changes).await?;
    tx.commit().await?;
    services.publish(change);
    services.wake_workers();
    get(pool, access.org.id, id).await
}
