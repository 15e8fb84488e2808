//! Browser sessions: a random id in an HttpOnly cookie, only its hash in the database.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Principal, hash_secret, random_secret};
use crate::config::Config;
use crate::error::ApiError;

/// Name of the session cookie.
pub const COOKIE: &str = "qleet_session";

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

pub fn cookie_value(headers: &HeaderMap) -> Option<String> {
    read_cookie(headers, COOKIE)
}

/// The CSRF token bound to a session: derived from the secret session id, so only a page that
/// can read the session can know it, and nothing needs storing.
pub fn csrf_for(raw_session: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"qleet-csrf\0");
    h.update(raw_session.as_bytes());
    URL_SAFE_NO_PAD.encode(h.finalize())
}

/// Starts a session for `user_id`; returns the raw id for the cookie.
pub async fn create(
    pool: &PgPool,
    user_id: Uuid,
    ttl: Duration,
    ip: Option<&str>,
    user_agent: Option<&str>,
) -> Result<String, ApiError> {
    let raw = random_secret();
    sqlx::query!(
        "insert into sessions (id_hash, user_id, expires_at, ip, user_agent)
         values ($1, $2, now() + make_interval(secs => $3), $4, $5)",
        hash_secret(&raw),
        user_id,
        ttl.as_secs_f64(),
        ip,
        user_agent.map(|ua| ua.chars().take(256).collect::<String>()),
    )
    .execute(pool)
    .await?;
    Ok(raw)
}

/// The principal of a live session, or `None` for an unknown or expired one.
pub async fn authenticate(pool: &PgPool, raw: &str) -> Result<Option<Principal>, ApiError> {
    Ok(authenticate_until(pool, raw).await?.map(|(p, _)| p))
}

/// [`authenticate`], also answering when the session expires.
pub async fn authenticate_until(
    pool: &PgPool,
    raw: &str,
) -> Result<Option<(Principal, chrono::DateTime<chrono::Utc>)>, ApiError> {
    let row = sqlx::query!(
        "select u.id, u.email, s.expires_at from sessions s join users u on u.id = s.user_id
         where s.id_hash = $1 and s.expires_at > now()",
        hash_secret(raw),
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| {
        let principal = Principal::User {
            user_id: r.id,
            email: r.email,
            csrf: csrf_for(raw),
        };
        (principal, r.expires_at)
    }))
}

/// Ends a session.
pub async fn delete(pool: &PgPool, raw: &str) -> Result<(), ApiError> {
    sqlx::query!("delete from sessions where id_hash = $1", hash_secret(raw))
        .execute(pool)
        .await?;
    Ok(())
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(config: &Config, raw: &str) -> HeaderValue {
    cookie_header(config, COOKIE, raw, config.session_ttl.as_secs())
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(config: &Config) -> HeaderValue {
    cookie_header(config, COOKIE, "", 0)
}

/// An HttpOnly, SameSite=Lax cookie, `Secure` unless Qleet runs on plain-http loopback.
pub fn cookie_header(config: &Config, name: &str, value: &str, max_age: u64) -> HeaderValue {
    let secure = if config.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    let cookie =
        format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}");
    // Names and values are base64url or fixed strings, so this cannot fail.
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_named_cookie_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; qleet_session=abc; b=2"),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("abc"));
        assert_eq!(read_cookie(&h, "b").as_deref(), Some("2"));
        assert_eq!(read_cookie(&h, "c"), None);
    }

    #[test]
    fn csrf_token_depends_on_the_session() {
        assert_ne!(csrf_for("one"), csrf_for("two"));
        assert_eq!(csrf_for("one"), csrf_for("one"));
    }
}
