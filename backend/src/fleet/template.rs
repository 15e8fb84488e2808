//! Tenant databases are copied from a pre-migrated template (`CREATE DATABASE … TEMPLATE`)
//! instead of being migrated one by one: one copy is a few milliseconds of file copying on the
//! server, where running every migration is dozens of statements per control plane.
//!
//! - There is one template per database server and set of control-plane migrations, named
//!   after a digest of the migrations (`qleet_template_cp_<digest>`), so a management plane of
//!   another version never copies a template of the wrong shape. It is built once, under an
//!   advisory lock (several processes may provision at once), as a database under a temporary
//!   name that is renamed only when every migration has applied, so a half-built template is
//!   never copied.
//! - Inside the template every object belongs to the `qleet_template_cp` role (no login); a
//!   copy is handed to its tenant's role with `REASSIGN OWNED`, so the tenant owns its schema
//!   exactly as if it had migrated the database itself.
//! - A control plane still applies its migrations when it starts: a copy of an up-to-date
//!   template has nothing to apply, and a database made by an older version is migrated then.

use secrecy::ExposeSecret as _;
use sha2::Digest as _;
use sqlx::Connection as _;

use crate::error::ApiError;

/// The control-plane migrations, as the control plane applies them.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/control-plane");

/// The role that owns the template's objects.
pub const OWNER: &str = "qleet_template_cp";

/// Any fixed key: the advisory lock that serialises building templates on a server.
const LOCK_KEY: i64 = 0x716c_6565_745f_7470;

/// The template's name for the migrations this binary carries.
pub fn name() -> String {
    let mut digest = sha2::Sha256::new();
    for migration in MIGRATOR.iter() {
        digest.update(migration.version.to_be_bytes());
        digest.update(&*migration.checksum);
    }
    format!(
        "qleet_template_cp_{}",
        &hex::encode(digest.finalize())[..16]
    )
}

/// `url` with another database.
fn on_database(url: &str, db: &str) -> Result<String, ApiError> {
    let mut url = url::Url::parse(url).map_err(crate::error::internal)?;
    url.set_path(db);
    Ok(url.to_string())
}

/// Makes sure the template exists on the server `admin_url` names (the management role's
/// connection) and that this role may hand its copies over; answers its name, or `None` when
/// it cannot be used here (then a tenant database is made empty and the control plane migrates
/// it itself, as it would without a template).
pub async fn ensure(admin_url: &secrecy::SecretString) -> Option<String> {
    match ensure_inner(admin_url).await {
        Ok(name) => Some(name),
        Err(e) => {
            tracing::warn!(error = %e, "cannot use a template database; migrating tenant databases one by one");
            None
        }
    }
}

async fn ensure_inner(admin_url: &secrecy::SecretString) -> Result<String, ApiError> {
    let name = name();
    let mut admin = sqlx::PgConnection::connect(admin_url.expose_secret()).await?;
    if !exists(&mut admin, &name).await? {
        sqlx::query("select pg_advisory_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut admin)
            .await?;
        let built = build(&mut admin, admin_url, &name).await;
        let _ = sqlx::query("select pg_advisory_unlock($1)")
            .bind(LOCK_KEY)
            .execute(&mut admin)
            .await;
        built?;
    }
    // Whoever built it, this role hands copies over with `REASSIGN OWNED`, which takes being a
    // member of the owner role (a no-op when it is one already).
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "grant {OWNER} to current_user"
    )))
    .execute(&mut admin)
    .await?;
    let _ = admin.close().await;
    Ok(name)
}

async fn exists(conn: &mut sqlx::PgConnection, db: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(db)
        .fetch_one(conn)
        .await
}

/// Builds the template under the advisory lock (unless another process just did).
async fn build(
    admin: &mut sqlx::PgConnection,
    admin_url: &secrecy::SecretString,
    name: &str,
) -> Result<(), ApiError> {
    if exists(admin, name).await? {
        return Ok(());
    }
    tracing::info!(
        template = name,
        "building the control planes' template database"
    );
    let building = format!("{name}_building");
    // DDL on names made here from fixed text and a hex digest: runtime strings (DDL takes no
    // bind parameters).
    let owner_exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
            .bind(OWNER)
            .fetch_one(&mut *admin)
            .await?;
    let mut ddl = Vec::new();
    if !owner_exists {
        ddl.push(format!("create role {OWNER} nologin"));
    }
    ddl.extend([
        format!("grant {OWNER} to current_user"),
        format!("drop database if exists {building} with (force)"),
        format!("create database {building}"),
        format!("grant create on database {building} to {OWNER}"),
    ]);
    for statement in ddl {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *admin)
            .await?;
    }
    let url = on_database(admin_url.expose_secret(), &building)?;
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "grant create on schema public to {OWNER}"
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    // Migrated as the template's role, so that it owns everything the migrations make.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query(sqlx::AssertSqlSafe(format!("set role {OWNER}")))
                    .execute(conn)
                    .await
                    .map(drop)
            })
        })
        .connect(&url)
        .await?;
    let migrated = MIGRATOR.run(&pool).await;
    pool.close().await;
    migrated.map_err(|e| crate::error::internal(anyhow::anyhow!("migrating the template: {e}")))?;
    // Renamed only now, complete; marked a template so that any role that may create databases
    // on this server (another management role) may copy it.
    for statement in [
        format!("alter database {building} rename to {name}"),
        format!("alter database {name} is_template true"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *admin)
            .await?;
    }
    Ok(())
}

/// Hands a copy's objects (and its public schema's grant) from the template's role to the
/// tenant's `role`; nothing to do for a database that was not copied. Idempotent.
pub async fn hand_over(
    admin_url: &secrecy::SecretString,
    db: &str,
    role: &str,
) -> Result<(), ApiError> {
    let mut conn =
        sqlx::PgConnection::connect(&on_database(admin_url.expose_secret(), db)?).await?;
    let mut tx = conn.begin().await?;
    // Schemas first: giving a table to a role takes that role's CREATE on the table's schema,
    // which a role that is not a superuser running this does not get otherwise.
    let schemas: Vec<String> = sqlx::query_scalar(
        "select nspname::text from pg_namespace where nspowner = $1::text::regrole",
    )
    .bind(OWNER)
    .fetch_all(&mut *tx)
    .await?;
    let mut statements: Vec<String> = schemas
        .iter()
        .map(|schema| format!("alter schema \"{schema}\" owner to {role}"))
        .collect();
    statements.extend([
        format!("reassign owned by {OWNER} to {role}"),
        format!("revoke all on schema public from {OWNER}"),
    ]);
    for statement in statements {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let _ = conn.close().await;
    Ok(())
}
