//! The PostgreSQL servers tenant databases are placed on (migration `0010_database_servers`).
//!
//! - Operators register servers with `qleet database-servers add NAME --url URL --capacity N`:
//!   a URL of a role there that may create roles and databases, and how many control planes the
//!   server takes.
//! - A new control plane goes, when it is first provisioned, to the least loaded server (control
//!   planes over capacity) that has room, is not draining and has not just refused a
//!   connection. It stays there for its whole life.
//! - Draining a server stops new placements on it; the control planes already there stay.
//! - With no server registered, tenant databases go to the management database's own server,
//!   as they always did.
//! - A server that refuses a connection for want of room (`too many connections`) is skipped
//!   for [`UNAVAILABLE_FOR`]; a control plane placed on it in the same step (nothing made there
//!   yet) is placed again elsewhere. Otherwise the control plane's status says which server is
//!   full, and the step is retried.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

use super::Services;
use crate::error::ApiError;

/// How long a server that refused a connection for want of room gets no new control plane.
pub const UNAVAILABLE_FOR: Duration = Duration::from_secs(30);

/// Any fixed key: the advisory lock that serialises placements, so two workers cannot both
/// take a server's last place.
const PLACEMENT_LOCK: i64 = 0x716c_6565_745f_706c;

/// A registered server and how many control planes it holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Server {
    pub id: Uuid,
    pub name: String,
    pub capacity: i32,
    pub draining: bool,
    pub unavailable_until: Option<DateTime<Utc>>,
    pub unavailable_reason: Option<String>,
    /// Control planes placed there and not deleted.
    pub control_planes: i64,
}

fn parse_name(name: &str) -> Result<&str, ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(name)
    } else {
        Err(ApiError::invalid(
            "name",
            "lower-case letters, digits and '-', starting with a letter or digit, at most 63",
        ))
    }
}

/// Every registered server, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<Server>, ApiError> {
    Ok(sqlx::query_as!(
        Server,
        r#"select s.id, s.name, s.capacity, s.draining, s.unavailable_until, s.unavailable_reason,
                  count(c.id) as "control_planes!"
           from database_servers s
           left join control_planes c on c.server_id = s.id and c.status <> 'deleted'
           group by s.id order by s.name"#,
    )
    .fetch_all(pool)
    .await?)
}

/// Registers a server after checking that its URL connects as a role that may create roles
/// and databases.
pub async fn add(
    pool: &PgPool,
    keys: &crate::keys::Keys,
    name: &str,
    url: &SecretString,
    capacity: i32,
) -> Result<Server, ApiError> {
    let name = parse_name(name)?;
    if capacity < 0 {
        return Err(ApiError::invalid("capacity", "must be 0 or more"));
    }
    let parsed = url::Url::parse(url.expose_secret())
        .ok()
        .filter(|u| matches!(u.scheme(), "postgres" | "postgresql"))
        .ok_or_else(|| ApiError::invalid("url", "not a postgres:// URL"))?;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(parsed.as_str())
        .await
        .map_err(|e| ApiError::invalid("url", format!("cannot connect: {e}")))?;
    let may: bool = sqlx::query_scalar(
        "select rolsuper or (rolcreatedb and rolcreaterole) from pg_roles where rolname = current_user",
    )
    .fetch_one(&mut conn)
    .await?;
    let _ = sqlx::Connection::close(conn).await;
    if !may {
        return Err(ApiError::invalid(
            "url",
            "its role may not create roles and databases (needs CREATEDB and CREATEROLE)",
        ));
    }
    let id = Uuid::new_v4();
    sqlx::query!(
        "insert into database_servers (id, name, admin_url_enc, capacity) values ($1, $2, $3, $4)",
        id,
        name,
        keys.encrypt(url.expose_secret().as_bytes()),
        capacity,
    )
    .execute(pool)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            ApiError::Conflict(format!("a database server called {name:?} exists already"))
        }
        _ => e.into(),
    })?;
    find(pool, name).await
}

/// The server called `name`.
pub async fn find(pool: &PgPool, name: &str) -> Result<Server, ApiError> {
    list(pool)
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("database server {name:?}")))
}

/// Drains a server (no new control planes) or takes it back into use.
pub async fn set_draining(pool: &PgPool, name: &str, draining: bool) -> Result<Server, ApiError> {
    let updated = sqlx::query!(
        "update database_servers set draining = $2 where name = $1",
        name,
        draining,
    )
    .execute(pool)
    .await?;
    changed(pool, name, updated).await
}

/// Changes how many control planes a server takes (those already there stay, even over it).
pub async fn set_capacity(pool: &PgPool, name: &str, capacity: i32) -> Result<Server, ApiError> {
    if capacity < 0 {
        return Err(ApiError::invalid("capacity", "must be 0 or more"));
    }
    let updated = sqlx::query!(
        "update database_servers set capacity = $2 where name = $1",
        name,
        capacity,
    )
    .execute(pool)
    .await?;
    changed(pool, name, updated).await
}

/// The server `name` as an update of it left it; `NOT_FOUND` when the update found none.
async fn changed(
    pool: &PgPool,
    name: &str,
    updated: sqlx::postgres::PgQueryResult,
) -> Result<Server, ApiError> {
    if updated.rows_affected() == 0 {
        return Err(ApiError::NotFound(format!("database server {name:?}")));
    }
    find(pool, name).await
}

/// Forgets a server that holds no control plane (deleted ones aside).
pub async fn remove(pool: &PgPool, name: &str) -> Result<(), ApiError> {
    let server = find(pool, name).await?;
    if server.control_planes > 0 {
        return Err(ApiError::Conflict(format!(
            "database server {name:?} still holds {} control plane(s); drain it and delete them first",
            server.control_planes
        )));
    }
    let mut tx = pool.begin().await?;
    // Deleted control planes keep their history; they just forget where their database was.
    sqlx::query!(
        "update control_planes set server_id = null where server_id = $1 and status = 'deleted'",
        server.id,
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!("delete from database_servers where id = $1", server.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The admin URL of a control plane's server (the management database's own without one).
pub async fn admin_url(
    pool: &PgPool,
    services: &Services,
    server_id: Option<Uuid>,
) -> Result<SecretString, ApiError> {
    let Some(id) = server_id else {
        return Ok(services.admin_url.clone());
    };
    let enc = sqlx::query_scalar!(
        "select admin_url_enc from database_servers where id = $1",
        id
    )
    .fetch_one(pool)
    .await?;
    let bytes = services
        .keys
        .decrypt(&enc)
        .map_err(crate::error::internal)?;
    Ok(SecretString::from(
        String::from_utf8(bytes).map_err(crate::error::internal)?,
    ))
}

/// Where a control plane's database is: the server it was placed on, or (not placed yet) the
/// least loaded one with room, recorded now. `Ok((server, true))` when placed by this call.
/// `None` is the management database's server (no server registered).
pub async fn place(pool: &PgPool, cp_id: Uuid) -> Result<(Option<Uuid>, bool), ApiError> {
    let mut tx = pool.begin().await?;
    let current = sqlx::query_scalar!(
        "select server_id from control_planes where id = $1 for update",
        cp_id
    )
    .fetch_one(&mut *tx)
    .await?;
    if current.is_some() {
        return Ok((current, false));
    }
    let registered = sqlx::query_scalar!(r#"select count(*) as "n!" from database_servers"#)
        .fetch_one(&mut *tx)
        .await?;
    if registered == 0 {
        return Ok((None, false));
    }
    sqlx::query!("select pg_advisory_xact_lock($1)", PLACEMENT_LOCK)
        .execute(&mut *tx)
        .await?;
    let chosen = sqlx::query_scalar!(
        r#"select s.id from database_servers s
           left join control_planes c on c.server_id = s.id and c.status <> 'deleted'
           where not s.draining and (s.unavailable_until is null or s.unavailable_until < now())
           group by s.id
           having count(c.id) < s.capacity
           order by count(c.id)::float8 / s.capacity, s.name
           limit 1"#,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(server) = chosen else {
        let servers = list(pool).await?;
        let why: Vec<String> = servers
            .iter()
            .map(|s| {
                let state = if s.draining {
                    "draining".to_owned()
                } else if s.unavailable_until.is_some_and(|t| t > Utc::now()) {
                    format!(
                        "refusing connections: {}",
                        s.unavailable_reason.as_deref().unwrap_or("full")
                    )
                } else {
                    format!("full, {}/{}", s.control_planes, s.capacity)
                };
                format!("{} ({state})", s.name)
            })
            .collect();
        return Err(ApiError::Unavailable {
            code: "NO_DATABASE_SERVER",
            message: format!(
                "no database server has room for this control plane: {}; waiting for room",
                why.join(", ")
            ),
        });
    };
    sqlx::query!(
        "update control_planes set server_id = $2 where id = $1",
        cp_id,
        server
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((Some(server), true))
}

/// Undoes a placement made in the same step, before anything was made on the server.
pub async fn unplace(pool: &PgPool, cp_id: Uuid) -> Result<(), ApiError> {
    sqlx::query!(
        "update control_planes set server_id = null where id = $1",
        cp_id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether an error is a server refusing a connection for want of room.
pub fn is_full(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("53")))
}

/// Notes that a server refused a connection for want of room: no new control plane for
/// [`UNAVAILABLE_FOR`].
pub async fn mark_full(pool: &PgPool, server_id: Uuid, reason: &str) -> Result<(), ApiError> {
    sqlx::query!(
        "update database_servers set unavailable_until = now() + make_interval(secs => $2),
             unavailable_reason = $3
         where id = $1",
        server_id,
        UNAVAILABLE_FOR.as_secs_f64(),
        reason,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The name a control plane's status gives its server.
pub async fn label(pool: &PgPool, server_id: Option<Uuid>) -> String {
    let Some(id) = server_id else {
        return "the management database's server".to_owned();
    };
    match sqlx::query_scalar!("select name from database_servers where id = $1", id)
        .fetch_optional(pool)
        .await
    {
        Ok(Some(name)) => format!("database server {name:?}"),
        _ => format!("database server {id}"),
    }
}
