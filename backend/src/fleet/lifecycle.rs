//! The lifecycle worker: drives each control plane's `status` towards what was asked for, one
//! idempotent step at a time, persisting every transition. A management plane that dies at any
//! point resumes where the database says it was: roles, databases and runtimes that already
//! exist are adopted, never duplicated.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

use super::driver::{ControlPlaneSpec, RuntimeStatus};
use super::{ControlPlane, Services, Status, query_control_planes, replicas, servers, transition};
use crate::error::ApiError;

/// How long a started control plane may take to answer its readiness check.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How many lifecycle workers a management-plane process runs: control planes are provisioned
/// (and suspended, resumed, deleted) this many at a time, each claimed by one worker.
pub const WORKERS: usize = 8;

/// Runs [`WORKERS`] workers until dropped (which stops them all); the first also sweeps.
pub async fn run(pool: PgPool, services: Arc<Services>) {
    let mut workers = tokio::task::JoinSet::new();
    for n in 0..WORKERS {
        workers.spawn(worker(pool.clone(), services.clone(), n == 0));
    }
    while workers.join_next().await.is_some() {}
}

/// One worker: steps whatever needs work, sleeps until woken or a second has passed, and (the
/// sweeper) every few seconds checks running control planes (restart after a management
/// restart, hibernation).
async fn worker(pool: PgPool, services: Arc<Services>, sweeper: bool) {
    let mut last_sweep = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        match step(&pool, &services).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "control-plane lifecycle step failed"),
        }
        if sweeper && last_sweep.elapsed() >= Duration::from_secs(2) {
            if let Err(e) = sweep(&pool, &services).await {
                tracing::warn!(error = %e, "control-plane sweep failed");
            }
            last_sweep = std::time::Instant::now();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), services.wake.notified()).await;
    }
}

/// How long a claim on a control plane lasts unless renewed (every third of it while its step
/// runs). Short, so that when the process holding it dies another (or the same one, restarted)
/// takes the work over within seconds.
pub const LEASE: Duration = Duration::from_secs(6);

/// Claims one control plane that needs work and moves it one step. Returns whether it did.
pub async fn step(pool: &PgPool, services: &Services) -> Result<bool, ApiError> {
    let claimed = query_control_planes!(
        "update control_planes set locked_until = now() + make_interval(secs => $1), locked_by = $2
         where id = (
             select id from control_planes
             where next_attempt_at <= now() and (locked_until is null or locked_until < now())
               and (status in ('pending', 'provisioning', 'deleting')
                    or (status in ('ready', 'hibernated') and desired = 'suspended')
                    or (status = 'suspended' and desired = 'running'))
             order by next_attempt_at limit 1
             for update skip locked)
         returning ",
        "",
        LEASE.as_secs_f64(),
        services.instance,
    )
    .fetch_optional(pool)
    .await?;
    let Some(cp) = claimed else { return Ok(false) };
    let span = tracing::info_span!("control_plane", control_plane.id = %cp.id, status = %cp.status);
    // The claim is renewed while the step runs, and no longer: one future, so a worker that is
    // stopped (shutdown) stops renewing too and its claim lapses.
    let result = tokio::select! {
        result = tracing::Instrument::instrument(advance(pool, services, &cp), span) => result,
        never = renew(pool.clone(), cp.id, services.instance) => match never {},
    };
    match result {
        Ok(()) => release(pool, cp.id, services.instance).await?,
        Err(e) => {
            // The operator-facing reason: the cause itself, not the generic API message.
            let reason = match &e {
                ApiError::Internal { source, .. } => format!("{source:#}"),
                other => other.to_string(),
            };
            tracing::warn!(control_plane.id = %cp.id, error = %reason, "control-plane step failed; will retry");
            // Live subscribers hear of the new reason through PostgreSQL.
            sqlx::query!(
                "update control_planes set locked_until = null, locked_by = null,
                     attempts = attempts + 1, status_reason = $2,
                     next_attempt_at = now() + least(interval '1 second' * power(2, attempts), interval '5 minutes'),
                     updated_at = now()
                 where id = $1",
                cp.id,
                &reason,
            )
            .execute(pool)
            .await?;
            let status = Status::parse(&cp.status)?;
            if matches!(status, Status::Pending | Status::Provisioning) {
                give_up(pool, services, &cp, &reason).await?;
            }
        }
    }
    Ok(true)
}

/// Marks a control plane FAILED, with `reason`, once its provisioning has been failing for
/// longer than the provisioning timeout (since it was last asked for: created or resumed), so
/// that none is left PROVISIONING indefinitely. Resuming it tries again. Answers whether it did.
async fn give_up(
    pool: &PgPool,
    services: &Services,
    cp: &ControlPlane,
    reason: &str,
) -> Result<bool, ApiError> {
    let overdue = sqlx::query_scalar!(
        r#"select coalesce(max(at), now()) < now() - make_interval(secs => $2) as "overdue!"
           from control_plane_events where control_plane_id = $1 and to_status = 'pending'"#,
        cp.id,
        services.provisioning_timeout.as_secs_f64(),
    )
    .fetch_one(pool)
    .await?;
    if !overdue {
        return Ok(false);
    }
    let message = format!(
        "provisioning did not finish within {} s: {reason}",
        services.provisioning_timeout.as_secs()
    );
    let mut tx = pool.begin().await?;
    let change = transition(
        &mut tx,
        cp.id,
        &[Status::Pending, Status::Provisioning],
        Status::Failed,
        &message,
    )
    .await?;
    sqlx::query!(
        "update control_planes set status_reason = $2 where id = $1",
        cp.id,
        &message,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::warn!(control_plane.id = %cp.id, %message, "giving up provisioning");
    services.publish(change);
    Ok(true)
}

/// Lets go of this instance's claim on `id` (not one another instance has taken since).
async fn release(pool: &PgPool, id: Uuid, instance: Uuid) -> sqlx::Result<()> {
    sqlx::query!(
        "update control_planes set locked_until = null, locked_by = null
                 where id = $1 and locked_by = $2",
        id,
        instance,
    )
    .execute(pool)
    .await
    .map(drop)
}

/// Keeps this instance's claim on `id` alive while its step runs; runs until dropped. A
/// renewal that fails is retried at the next tick; if the claim lapses meanwhile another
/// instance may take the step over, which is safe because every step is idempotent.
async fn renew(pool: PgPool, id: Uuid, instance: Uuid) -> std::convert::Infallible {
    let mut every = tokio::time::interval(LEASE / 3);
    every.tick().await;
    loop {
        every.tick().await;
        let renewed = sqlx::query!(
            "update control_planes set locked_until = now() + make_interval(secs => $3)
             where id = $1 and locked_by = $2",
            id,
            instance,
            LEASE.as_secs_f64(),
        )
        .execute(&pool)
        .await;
        if let Err(e) = renewed {
            tracing::warn!(control_plane.id = %id, error = %e, "could not renew the claim; retrying");
        }
    }
}

async fn move_to(
    pool: &PgPool,
    services: &Services,
    cp: &ControlPlane,
    from: Status,
    to: Status,
    message: &str,
) -> Result<(), ApiError> {
    let mut conn = pool.acquire().await?;
    let change = transition(&mut conn, cp.id, &[from], to, message).await?;
    services.publish(change);
    Ok(())
}

async fn advance(pool: &PgPool, services: &Services, cp: &ControlPlane) -> Result<(), ApiError> {
    let status = Status::parse(&cp.status)?;
    match (status, cp.desired.as_str()) {
        (Status::Pending, _) => {
            move_to(
                pool,
                services,
                cp,
                status,
                Status::Provisioning,
                "provisioning started",
            )
            .await
        }
        (Status::Provisioning, desired) => {
            let server_id = provision(pool, services, cp).await?;
            // Placed just now: the rest of the step uses where.
            let cp = &ControlPlane {
                server_id,
                ..cp.clone()
            };
            if desired == "suspended" {
                return move_to(
                    pool,
                    services,
                    cp,
                    status,
                    Status::Suspended,
                    "provisioned, suspended",
                )
                .await;
            }
            start_and_wait(pool, services, cp).await?;
            move_to(pool, services, cp, status, Status::Ready, "ready").await
        }
        (Status::Ready | Status::Hibernated, "suspended") => {
            services.driver.stop(cp.id).await.map_err(driver_error)?;
            replicas::release(pool, cp.id).await?;
            move_to(pool, services, cp, status, Status::Suspended, "suspended").await
        }
        (Status::Suspended, "running") => {
            start_and_wait(pool, services, cp).await?;
            move_to(pool, services, cp, status, Status::Ready, "resumed").await
        }
        (Status::Deleting, _) => delete(pool, services, cp).await,
        _ => Ok(()),
    }
}

fn driver_error(e: super::driver::DriverError) -> ApiError {
    crate::error::internal(anyhow::anyhow!("runtime: {e}"))
}

/// The spec a driver needs, with the decrypted database URL.
pub async fn spec(
    pool: &PgPool,
    services: &Services,
    cp: &ControlPlane,
) -> Result<ControlPlaneSpec, ApiError> {
    let admin_url = servers::admin_url(pool, services, cp.server_id).await?;
    Ok(ControlPlaneSpec {
        id: cp.id,
        org_id: cp.org_id,
        database_url: tenant_url(services, cp, &admin_url)?,
        verifying_key: services.keys.signer.public_key(),
    })
}

/// Places the control plane's database on a server (once), and makes it there. A server that
/// refuses the connection for want of room is noted, so that new control planes go elsewhere;
/// one placed on it just now is placed again at the next attempt.
/// Answers the server it is on.
async fn provision(
    pool: &PgPool,
    services: &Services,
    cp: &ControlPlane,
) -> Result<Option<Uuid>, ApiError> {
    let (server, placed_now) = servers::place(pool, cp.id).await?;
    let admin_url = servers::admin_url(pool, services, server).await?;
    let admin =
        match <sqlx::PgConnection as sqlx::Connection>::connect(admin_url.expose_secret()).await {
            Ok(admin) => admin,
            Err(e) if servers::is_full(&e) => {
                let full = match &e {
                    sqlx::Error::Database(d) => d.message().to_owned(),
                    other => other.to_string(),
                };
                let label = servers::label(pool, server).await;
                let next = match server {
                    Some(id) => {
                        servers::mark_full(pool, id, &full).await?;
                        if placed_now {
                            servers::unplace(pool, cp.id).await?;
                            "placing it on another server"
                        } else {
                            "retrying"
                        }
                    }
                    None => "retrying",
                };
                return Err(ApiError::Unavailable {
                    code: "DATABASE_SERVER_FULL",
                    message: format!("{label} has no room for another connection ({full}); {next}"),
                });
            }
            Err(e) => return Err(e.into()),
        };
    provision_database(services, cp, &admin_url, admin).await?;
    Ok(server)
}

/// The tenant role's password, decrypted.
fn password(services: &Services, cp: &ControlPlane) -> Result<String, ApiError> {
    let bytes = services
        .keys
        .decrypt(&cp.db_password_enc)
        .map_err(crate::error::internal)?;
    String::from_utf8(bytes).map_err(crate::error::internal)
}

/// The tenant's database URL: its server (`admin_url`'s), the tenant's own role and database.
fn tenant_url(
    services: &Services,
    cp: &ControlPlane,
    admin_url: &SecretString,
) -> Result<SecretString, ApiError> {
    let password = password(services, cp)?;
    let mut url = url::Url::parse(admin_url.expose_secret()).map_err(crate::error::internal)?;
    url.set_username(&cp.db_role)
        .map_err(|()| crate::error::internal(anyhow::anyhow!("bad database URL")))?;
    url.set_password(Some(&password))
        .map_err(|()| crate::error::internal(anyhow::anyhow!("bad database URL")))?;
    url.set_path(&cp.db_name);
    Ok(SecretString::from(url.to_string()))
}

/// Creates the tenant's login role and database (or adopts existing ones), the database as a
/// copy of the migrated template handed to the tenant's role, and closes it to everyone else.
async fn provision_database(
    services: &Services,
    cp: &ControlPlane,
    admin_url: &SecretString,
    mut admin: sqlx::PgConnection,
) -> Result<(), ApiError> {
    let password = password(services, cp)?;
    // Identifiers are `qleet_cp_<hex>` and the password base64url: nothing to escape.
    let safe = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if !safe(&cp.db_role) || !safe(&cp.db_name) || !safe(&password) {
        return Err(crate::error::internal(anyhow::anyhow!(
            "unexpected characters in tenant identifiers"
        )));
    }
    let role_exists = sqlx::query_scalar!(
        r#"select exists (select 1 from pg_roles where rolname = $1) as "exists!""#,
        &cp.db_role,
    )
    .fetch_one(&mut admin)
    .await?;
    // DDL on names and a password made here: it cannot take bind parameters, so it stays a
    // runtime string (the names are generated from the control plane's id, never user input).
    // An existing role (a retried step) only gets its password again: changing attributes
    // such as NOSUPERUSER takes a superuser, which the management role need not be.
    let ddl = if role_exists {
        format!(
            "alter role {} login password '{password}' connection limit 50",
            cp.db_role
        )
    } else {
        format!(
            "create role {} login password '{password}' nosuperuser nocreatedb nocreaterole connection limit 50",
            cp.db_role
        )
    };
    sqlx::query(sqlx::AssertSqlSafe(ddl))
        .execute(&mut admin)
        .await?;
    // The management role becomes a member of the tenant role: PostgreSQL requires that of a
    // role that is not a superuser (one with CREATEDB and CREATEROLE, as a production install
    // uses) to make it a database's owner, and, later, to drop that database and end its
    // connections. Granting it again is a no-op.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "grant {} to current_user",
        cp.db_role
    )))
    .execute(&mut admin)
    .await?;
    let db_exists = sqlx::query_scalar!(
        r#"select exists (select 1 from pg_database where datname = $1) as "exists!""#,
        &cp.db_name,
    )
    .fetch_one(&mut admin)
    .await?;
    // A copy of the pre-migrated template (see `template`), when it can be used here.
    let template = super::template::ensure(admin_url).await;
    if !db_exists {
        let from = template
            .as_deref()
            .map(|t| format!(" template {t}"))
            .unwrap_or_default();
        // Dynamic DDL (see above): runtime strings.
        let created = sqlx::query(sqlx::AssertSqlSafe(format!(
            "create database {} owner {}{from}",
            cp.db_name, cp.db_role
        )))
        .execute(&mut admin)
        .await;
        // A concurrent or earlier half-finished attempt may have made it: adopt it.
        if let Err(e) = created
            && !matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("42P04"))
        {
            return Err(e.into());
        }
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "revoke all on database {} from public",
        cp.db_name
    )))
    .execute(&mut admin)
    .await?;
    let _ = sqlx::Connection::close(admin).await;
    if template.is_some() {
        super::template::hand_over(admin_url, &cp.db_name, &cp.db_role).await?;
    }
    // The control plane applies its own migrations when it starts, as its database's owner
    // (none are left to apply in a copy of an up-to-date template).
    Ok(())
}

/// A one-connection pool on the management server with the management role (which creates
/// tenant roles and databases).
async fn admin_pool(admin_url: &SecretString) -> sqlx::Result<PgPool> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(admin_url.expose_secret())
        .await
}

async fn start_and_wait(
    pool: &PgPool,
    services: &Services,
    cp: &ControlPlane,
) -> Result<(), ApiError> {
    run_here(pool, services, cp).await?;
    let admin_url = servers::admin_url(pool, services, cp.server_id).await?;
    protect_audit_trail(cp, &admin_url).await
}

/// Starts the control plane's runtime (here, for a local driver: this instance becomes its
/// holder) and waits until it answers; answers where.
pub async fn run_here(
    pool: &PgPool,
    services: &Services,
    cp: &ControlPlane,
) -> Result<String, ApiError> {
    let local = services.driver.is_local();
    if local {
        replicas::hold(pool, cp.id, services.instance).await?;
    }
    let spec = spec(pool, services, cp).await?;
    services.driver.start(&spec).await.map_err(driver_error)?;
    let endpoint = services
        .driver
        .wait_ready(cp.id, READY_TIMEOUT)
        .await
        .map_err(driver_error)?;
    if local {
        replicas::record_endpoint(pool, cp.id, services.instance, &endpoint.0).await?;
    }
    Ok(endpoint.0)
}

/// Hands the control plane's audit trail (schema `qleet_audit`, which its migrations made as
/// the tenant role) to the management role and leaves the tenant role only reading and
/// appending: it can then neither change, delete, truncate nor drop an entry, nor disable the
/// triggers that refuse those. Run on every start, after the control plane has migrated;
/// idempotent.
async fn protect_audit_trail(cp: &ControlPlane, admin_url: &SecretString) -> Result<(), ApiError> {
    let mut url = url::Url::parse(admin_url.expose_secret()).map_err(crate::error::internal)?;
    url.set_path(&cp.db_name);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url.as_str()).await?;
    let role = &cp.db_role;
    // Dynamic DDL on names generated from the control plane's id (checked when the role was
    // made): runtime strings.
    let steps = [
        "alter schema qleet_audit owner to current_user".to_owned(),
        "alter table qleet_audit.entries owner to current_user".to_owned(),
        "alter function qleet_audit.refuse_change() owner to current_user".to_owned(),
        format!("revoke all on schema qleet_audit from {role}"),
        format!("revoke all on qleet_audit.entries from {role}"),
        format!("grant usage on schema qleet_audit to {role}"),
        format!("grant select, insert on qleet_audit.entries to {role}"),
        // Read only (its last value): what the export before a deletion (pg_dump, as the
        // tenant) reads. Inserting needs nothing on it: the id is an identity column.
        format!("grant select on sequence qleet_audit.entries_id_seq to {role}"),
    ];
    let mut tx = sqlx::Connection::begin(&mut conn).await?;
    for step in steps {
        sqlx::query(sqlx::AssertSqlSafe(step))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let _ = sqlx::Connection::close(conn).await;
    Ok(())
}

/// Waits until the control plane answers its readiness check (how is the driver's business).
pub async fn wait_ready(services: &Services, id: Uuid) -> Result<(), ApiError> {
    services
        .driver
        .wait_ready(id, READY_TIMEOUT)
        .await
        .map(drop)
        .map_err(driver_error)
}

/// Stops the runtime at once; drops database and role once the retention period has passed.
async fn delete(pool: &PgPool, services: &Services, cp: &ControlPlane) -> Result<(), ApiError> {
    services.driver.delete(cp.id).await.map_err(driver_error)?;
    replicas::release(pool, cp.id).await?;
    if let Some(after) = cp.delete_after
        && after > chrono::Utc::now()
    {
        sqlx::query!(
            "update control_planes set next_attempt_at = $2, status_reason = $3 where id = $1",
            cp.id,
            after,
            format!(
                "stopped; its database is kept until {}",
                after.format("%Y-%m-%d %H:%M UTC")
            ),
        )
        .execute(pool)
        .await?;
        return Ok(());
    }
    let admin_url = servers::admin_url(pool, services, cp.server_id).await?;
    export(services, cp, &admin_url).await?;
    let admin = admin_pool(&admin_url).await?;
    // Dynamic DDL on generated names: runtime strings (no bind parameters in DDL).
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database if exists {} with (force)",
        cp.db_name
    )))
    .execute(&admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop role if exists {}",
        cp.db_role
    )))
    .execute(&admin)
    .await?;
    admin.close().await;
    move_to(
        pool,
        services,
        cp,
        Status::Deleting,
        Status::Deleted,
        "deleted: runtime, database and role removed",
    )
    .await
}

/// Exports the tenant database with `pg_dump` (custom format) to `EXPORT_DIR/<id>.dump`, the
/// last copy of its objects once the database is dropped. Skipped when the database is gone
/// already (a retried deletion).
async fn export(
    services: &Services,
    cp: &ControlPlane,
    admin_url: &SecretString,
) -> Result<(), ApiError> {
    let admin = admin_pool(admin_url).await?;
    let exists = sqlx::query_scalar!(
        r#"select exists (select 1 from pg_database where datname = $1) as "exists!""#,
        &cp.db_name,
    )
    .fetch_one(&admin)
    .await?;
    admin.close().await;
    if !exists {
        return Ok(());
    }
    let pg_dump = crate::embedded_pg::find_tools(&["pg_dump"])
        .map(|d| d.join("pg_dump"))
        .map_err(|_| {
            crate::error::internal(anyhow::anyhow!(
                "pg_dump not found: install the PostgreSQL client tools"
            ))
        })?;
    std::fs::create_dir_all(&services.export_dir).map_err(crate::error::internal)?;
    let file = services.export_dir.join(format!("{}.dump", cp.id));
    let url = tenant_url(services, cp, admin_url)?;
    let out = tokio::process::Command::new(pg_dump)
        .args(["--format=custom", "--no-owner", "--file"])
        .arg(&file)
        .arg(format!("--dbname={}", url.expose_secret()))
        .output()
        .await
        .map_err(crate::error::internal)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(crate::error::internal(anyhow::anyhow!(
            "pg_dump failed: {}",
            stderr.trim()
        )));
    }
    tracing::info!(control_plane.id = %cp.id, file = %file.display(), "exported the control plane's database");
    Ok(())
}

/// Checks Ready control planes: hibernates idle ones, and restarts any the runtime no longer
/// runs (after a management restart or a crash it could not recover). With a local runtime it
/// also takes over those whose holder is gone, records where its own answer, and stops its
/// children that should no longer run here (see [`replicas`]). A few queries whatever the
/// number of control planes.
async fn sweep(pool: &PgPool, services: &Services) -> Result<(), ApiError> {
    let me = services.instance;
    let local = services.driver.is_local();
    // Idle: no request for `hibernate_after` (never, without it).
    let idle_secs = services.hibernate_after.map(|after| after.as_secs_f64());
    let ready = sqlx::query!(
        r#"select id, runtime_holder, runtime_endpoint, $1::float8 is not null
                  and coalesce(last_request_at, updated_at) < now() - make_interval(secs => $1)
                  as "idle!"
           from control_planes
           where status = 'ready' and (locked_until is null or locked_until < now())"#,
        idle_secs,
    )
    .fetch_all(pool)
    .await?;
    let mut idle = Vec::new();
    let mut restart = Vec::new();
    for row in ready {
        if row.idle {
            // With a local runtime the instance that runs it hibernates it (stopping its own
            // child before saying so); one whose holder is gone, anyone.
            let holder_alive = row
                .runtime_holder
                .is_some_and(|h| h == me || services.instances.is_alive(h));
            if !local || row.runtime_holder == Some(me) || !holder_alive {
                idle.push(row.id);
            }
            continue;
        }
        if local && row.runtime_holder != Some(me) {
            let elsewhere = row
                .runtime_holder
                .is_some_and(|h| services.instances.is_alive(h));
            if !elsewhere && replicas::take_over(pool, row.id, me).await? {
                tracing::info!(control_plane.id = %row.id, "taking over a control plane whose instance is gone");
                restart.push(row.id);
            }
            continue;
        }
        match services.driver.status(row.id).await.map_err(driver_error)? {
            RuntimeStatus::Stopped => restart.push(row.id),
            RuntimeStatus::Ready(endpoint)
                if local && row.runtime_endpoint.as_deref() != Some(endpoint.0.as_str()) =>
            {
                replicas::record_endpoint(pool, row.id, me, &endpoint.0).await?;
            }
            _ => {}
        }
    }
    if local {
        stop_strays(pool, services).await?;
    }
    if idle.is_empty() && restart.is_empty() {
        return Ok(());
    }
    let rows = query_control_planes!(
        "select ",
        " from control_planes where id = any($1) or id = any($2)",
        &idle,
        &restart,
    )
    .fetch_all(pool)
    .await?;
    for cp in rows {
        if idle.contains(&cp.id) {
            hibernate(pool, services, &cp).await?;
        } else {
            tracing::info!(control_plane.id = %cp.id, "runtime not running; starting it again");
            // Where it answers is recorded by a later sweep, once it does.
            services
                .driver
                .start(&spec(pool, services, &cp).await?)
                .await
                .map_err(driver_error)?;
        }
    }
    Ok(())
}

/// Stops this instance's children whose control plane it no longer holds, or that should not
/// run (suspended, failed, being deleted): another instance's step changed that.
async fn stop_strays(pool: &PgPool, services: &Services) -> Result<(), ApiError> {
    let here = services.driver.local_ids().await;
    if here.is_empty() {
        return Ok(());
    }
    let keep = sqlx::query_scalar!(
        "select id from control_planes
         where id = any($1) and runtime_holder = $2
           and status not in ('deleting', 'deleted', 'failed')
           and not (status = 'suspended' and desired <> 'running')",
        &here,
        services.instance,
    )
    .fetch_all(pool)
    .await?;
    for id in here.into_iter().filter(|id| !keep.contains(id)) {
        tracing::info!(control_plane.id = %id, "stopping a control plane this instance no longer runs");
        services.driver.stop(id).await.map_err(driver_error)?;
    }
    Ok(())
}

/// Hibernates an idle control plane: a step like the others, under this instance's claim
/// (renewed while it runs), so no other instance or step acts on it meanwhile. Skipped when
/// another holds it.
async fn hibernate(pool: &PgPool, services: &Services, cp: &ControlPlane) -> Result<(), ApiError> {
    let claimed = sqlx::query!(
        "update control_planes set locked_until = now() + make_interval(secs => $2), locked_by = $3
         where id = $1 and status = 'ready' and (locked_until is null or locked_until < now())",
        cp.id,
        LEASE.as_secs_f64(),
        services.instance,
    )
    .execute(pool)
    .await?
    .rows_affected();
    if claimed == 0 {
        return Ok(());
    }
    let hibernating = async {
        services.driver.stop(cp.id).await.map_err(driver_error)?;
        replicas::release(pool, cp.id).await?;
        move_to(
            pool,
            services,
            cp,
            Status::Ready,
            Status::Hibernated,
            "hibernated after being idle",
        )
        .await
    };
    let result = tokio::select! {
        result = hibernating => result,
        never = renew(pool.clone(), cp.id, services.instance) => match never {},
    };
    release(pool, cp.id, services.instance).await?;
    result
}

/// Wakes a hibernated control plane for a request: starts it, waits until it answers, marks it
/// Ready. Concurrent wakers all wait for the same start.
pub async fn wake(pool: &PgPool, services: &Services, cp: &ControlPlane) -> Result<(), ApiError> {
    run_here(pool, services, cp).await?;
    let mut conn = pool.acquire().await?;
    let change = transition(
        &mut conn,
        cp.id,
        &[Status::Hibernated],
        Status::Ready,
        "woken by a request",
    )
    .await?;
    services.publish(change);
    Ok(())
}
