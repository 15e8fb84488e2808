//! Who is calling: users and their sign-in identities, browser sessions, API tokens, and the
//! [`Principal`] every request is authenticated as.

pub mod cache;
pub mod cli;
pub mod dev;
pub mod graphql;
pub mod oidc;
pub mod revocation;
pub mod session;
pub mod tokens;

use axum::http::HeaderMap;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;
use crate::orgs::Role;

/// The caller of a request, established once at the edge.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A person signed in through a browser session.
    User {
        user_id: Uuid,
        email: String,
        /// The CSRF token bound to this session.
        csrf: String,
    },
    /// An API token; it acts in one organisation with at most its role (and never more than its
    /// creator currently holds there).
    Token {
        token_id: Uuid,
        org_id: Uuid,
        role: Role,
        name: String,
        /// The user who created the token.
        user_id: Uuid,
        email: String,
    },
}

impl Principal {
    /// The user behind this principal (a token's creator for tokens).
    pub fn user_id(&self) -> Uuid {
        match self {
            Principal::User { user_id, .. } | Principal::Token { user_id, .. } => *user_id,
        }
    }

    /// How the audit log names this principal.
    pub fn label(&self) -> String {
        match self {
            Principal::User { email, .. } => email.clone(),
            Principal::Token { name, email, .. } => format!("token \"{name}\" of {email}"),
        }
    }

    pub fn token_id(&self) -> Option<Uuid> {
        match self {
            Principal::Token { token_id, .. } => Some(*token_id),
            Principal::User { .. } => None,
        }
    }
}

/// A principal plus where the request came from; what every mutation needs for the audit log.
#[derive(Debug, Clone)]
pub struct Actor {
    pub principal: Principal,
    pub ip: Option<String>,
}

pub use qleet_common::secrets::{hash_secret, random_secret};

/// Resolves the principal of a request: `Authorization: Bearer qleet_...` first (a bad token is
/// an error, never anonymous), then the session cookie (a stale cookie is simply anonymous).
/// Known credentials are answered from `cache` (see [`cache`] for why that is as current as
/// the database).
pub async fn authenticate(
    pool: &PgPool,
    cache: &cache::AccessCache,
    headers: &HeaderMap,
) -> Result<Option<Principal>, ApiError> {
    if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
        let token = auth.to_str().ok().and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
        let Some(token) = token else {
            crate::limits::note_failed_authentication();
            return Err(ApiError::Unauthenticated);
        };
        let token = token.trim();
        let hash = hash_secret(token);
        if let Some((principal, touch)) = cache.principal(&hash) {
            if touch && let Some(id) = principal.token_id() {
                tokens::touch(pool, id).await?;
            }
            return Ok(Some(principal));
        }
        let ticket = cache.ticket();
        let principal = tokens::authenticate_until(pool, token).await;
        if matches!(principal, Err(ApiError::Unauthenticated)) {
            crate::limits::note_failed_authentication();
        }
        let (principal, expires_at) = principal?;
        cache.put_principal(ticket, hash, principal.clone(), expires_at);
        return Ok(Some(principal));
    }
    let Some(raw) = session::cookie_value(headers) else {
        return Ok(None);
    };
    let hash = hash_secret(&raw);
    if let Some((principal, _)) = cache.principal(&hash) {
        return Ok(Some(principal));
    }
    let ticket = cache.ticket();
    let found = session::authenticate_until(pool, &raw).await?;
    Ok(found.map(|(principal, expires_at)| {
        cache.put_principal(ticket, hash, principal.clone(), Some(expires_at));
        principal
    }))
}

/// The stored user record.
#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub email_verified: bool,
    pub display_name: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

pub async fn find_user(pool: &PgPool, id: Uuid) -> Result<User, ApiError> {
    sqlx::query_as!(
        User,
        "select id, email, email_verified, display_name, created_at from users where id = $1",
        id,
    )
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ApiError::NotFound("user".into()))
}

/// Finds the user linked to `(issuer, subject)`, creating user and link on first sign-in.
/// The email is refreshed on every sign-in, since the provider owns it.
pub async fn upsert_identity(
    pool: &PgPool,
    issuer: &str,
    subject: &str,
    email: &str,
    email_verified: bool,
    display_name: Option<&str>,
) -> Result<Uuid, ApiError> {
    let mut tx = pool.begin().await?;
    let existing = sqlx::query_scalar!(
        "update identities set email = $3, last_sign_in_at = now()
         where issuer = $1 and subject = $2 returning user_id",
        issuer,
        subject,
        email,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let user_id = match existing {
        Some(id) => {
            sqlx::query!(
                "update users set email = $2, email_verified = $3,
                 display_name = coalesce($4, display_name) where id = $1",
                id,
                email,
                email_verified,
                display_name,
            )
            .execute(&mut *tx)
            .await?;
            id
        }
        None => {
            let id = Uuid::new_v4();
            sqlx::query!(
                "insert into users (id, email, email_verified, display_name) values ($1, $2, $3, $4)",
                id,
                email,
                email_verified,
                display_name,
            )
            .execute(&mut *tx)
            .await?;
            // A concurrent first sign-in of the same identity loses here and retries as existing.
            sqlx::query!(
                "insert into identities (issuer, subject, user_id, email) values ($1, $2, $3, $4)",
                issuer,
                subject,
                id,
                email,
            )
            .execute(&mut *tx)
            .await?;
            id
        }
    };
    tx.commit().await?;
    Ok(user_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_and_distinct_and_hashes_are_stable() {
        let a = random_secret();
        let b = random_secret();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert_eq!(hash_secret(&a), hash_secret(&a));
        assert_ne!(hash_secret(&a), hash_secret(&b));
    }
}
