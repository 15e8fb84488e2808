//! API tokens: `qleet_` + 256 random bits, shown once, stored as a hash, scoped to one
//! organisation and a role no higher than their creator's.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Actor, Principal, hash_secret, random_secret};
use crate::audit;
use crate::error::ApiError;
use crate::orgs::{Permission, Role, access, require, require_user};

/// Every token starts with this, so secret scanners can find leaked ones.
pub const PREFIX: &str = "qleet_";

/// A token as listed (never its secret).
#[derive(Debug, Clone, async_graphql::SimpleObject)]
pub struct ApiToken {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub role: Role,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

struct TokenRow {
    id: Uuid,
    name: String,
    prefix: String,
    role: String,
    email: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

/// The listing query (`sqlx::query_as!` into [`TokenRow`]), completed by a `where` clause: a
/// literal, so the macro checks the whole query at compile time.
macro_rules! select_tokens {
    ($rest:literal $(, $arg:expr)* $(,)?) => {
        sqlx::query_as!(
            TokenRow,
            "select t.id, t.name, t.prefix, t.role, u.email, t.created_at, t.expires_at,
             t.last_used_at, t.revoked_at from api_tokens t join users u on u.id = t.created_by "
                + $rest
            $(, $arg)*
        )
    };
}

fn from_row(r: TokenRow) -> Result<ApiToken, ApiError> {
    Ok(ApiToken {
        id: r.id,
        name: r.name,
        prefix: r.prefix,
        role: Role::parse(&r.role)?,
        created_by: r.email,
        created_at: r.created_at,
        expires_at: r.expires_at,
        last_used_at: r.last_used_at,
        revoked_at: r.revoked_at,
    })
}

/// Resolves a bearer token. Unknown, revoked and expired tokens, and tokens whose creator has
/// left the organisation, are refused alike. The effective role is the lower of the token's
/// and its creator's current one.
pub async fn authenticate(pool: &PgPool, token: &str) -> Result<Principal, ApiError> {
    authenticate_until(pool, token).await.map(|(p, _)| p)
}

/// [`authenticate`], also answering when the token expires (if ever).
pub async fn authenticate_until(
    pool: &PgPool,
    token: &str,
) -> Result<(Principal, Option<chrono::DateTime<chrono::Utc>>), ApiError> {
    if !token.starts_with(PREFIX) || token.len() > 100 {
        return Err(ApiError::Unauthenticated);
    }
    let row = sqlx::query!(
        r#"select t.id, t.org_id, t.role, t.name, t.expires_at, u.id as user_id, u.email,
                m.role as creator_role,
                t.last_used_at is null or t.last_used_at < now() - interval '1 minute' as "stale!"
         from api_tokens t
         join users u on u.id = t.created_by
         join memberships m on m.org_id = t.org_id and m.user_id = t.created_by
         where t.token_hash = $1 and t.revoked_at is null
           and (t.expires_at is null or t.expires_at > now())"#,
        hash_secret(token),
    )
    .fetch_optional(pool)
    .await?
    .ok_or(ApiError::Unauthenticated)?;
    if row.stale {
        // Recorded at most once a minute, so hot tokens do not write on every request.
        sqlx::query!(
            "update api_tokens set last_used_at = now() where id = $1",
            row.id
        )
        .execute(pool)
        .await?;
    }
    let role = Role::parse(&row.role)?.min(Role::parse(&row.creator_role)?);
    let principal = Principal::Token {
        token_id: row.id,
        org_id: row.org_id,
        role,
        name: row.name,
        user_id: row.user_id,
        email: row.email,
    };
    Ok((principal, row.expires_at))
}

/// Records that a token was used (the cached path, at most once a minute per token).
pub async fn touch(pool: &PgPool, token_id: uuid::Uuid) -> Result<(), ApiError> {
    sqlx::query!(
        "update api_tokens set last_used_at = now() where id = $1",
        token_id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Tokens of an organisation: all of them for admins, one's own for everyone else.
pub async fn list(
    pool: &PgPool,
    principal: &Principal,
    slug: &str,
) -> Result<Vec<ApiToken>, ApiError> {
    let access = access(pool, principal, slug).await?;
    let all = access.role.at_least(Permission::ManageTokens.min_role());
    // A person sees the tokens they made; a token sees itself.
    let rows = select_tokens!(
        "where t.org_id = $1 and ($2 or (t.created_by = $3 and $4::uuid is null) or t.id = $4)
         order by t.created_at desc",
        access.org.id,
        all,
        principal.user_id(),
        principal.token_id(),
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(from_row).collect()
}

/// Creates a token; returns it with its secret, which is never shown again.
pub async fn create(
    pool: &PgPool,
    actor: &Actor,
    slug: &str,
    name: &str,
    role: Role,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(ApiToken, String), ApiError> {
    let user_id = require_user(&actor.principal, "create API tokens")?;
    let access = access(pool, &actor.principal, slug).await?;
    require(&access, Permission::CreateTokens)?;
    if !access.role.at_least(role) {
        return Err(ApiError::forbidden(format!(
            "a token cannot have a higher role ({}) than yours ({})",
            role.as_str(),
            access.role.as_str()
        )));
    }
    let name = crate::orgs::parse_name("name", name)?;
    if let Some(at) = expires_at
        && at <= Utc::now()
    {
        return Err(ApiError::invalid("expiresAt", "must be in the future"));
    }
    let secret = format!("{PREFIX}{}", random_secret());
    let prefix: String = secret.chars().take(PREFIX.len() + 6).collect();
    let id = Uuid::new_v4();
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "insert into api_tokens (id, org_id, name, prefix, token_hash, role, created_by, expires_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
        id,
        access.org.id,
        &name,
        &prefix,
        hash_secret(&secret),
        role.as_str(),
        user_id,
        expires_at,
    )
    .execute(&mut *tx)
    .await?;
    let changes = serde_json::json!({
        "tokenId": id, "name": name, "role": { "after": role.as_str() }, "expiresAt": expires_at,
    });
    audit::record(
        &mut tx,
        Some(access.org.id),
        actor,
        "api_token.create",
        changes,
    )
    .await?;
    let row = select_tokens!("where t.id = $1", id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((from_row(row)?, secret))
}

/// Revokes a token: one's own, or any in the organisation for admins.
pub async fn revoke(
    pool: &PgPool,
    actor: &Actor,
    slug: &str,
    id: Uuid,
) -> Result<ApiToken, ApiError> {
    let access = access(pool, &actor.principal, slug).await?;
    let all = access.role.at_least(Permission::ManageTokens.min_role());
    let mut tx = pool.begin().await?;
    let owner = sqlx::query!(
        r#"select created_by, revoked_at is not null as "revoked!" from api_tokens
         where id = $1 and org_id = $2 for update"#,
        id,
        access.org.id,
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::NotFound("API token".into()))?;
    let (created_by, revoked) = (owner.created_by, owner.revoked);
    let own = match &actor.principal {
        Principal::User { user_id, .. } => created_by == *user_id,
        Principal::Token { token_id, .. } => *token_id == id,
    };
    if !own && !all {
        return Err(ApiError::forbidden(
            "only admins can revoke other people's tokens",
        ));
    }
    if !revoked {
        sqlx::query!("update api_tokens set revoked_at = now() where id = $1", id)
            .execute(&mut *tx)
            .await?;
        audit::record(
            &mut tx,
            Some(access.org.id),
            actor,
            "api_token.revoke",
            serde_json::json!({ "tokenId": id }),
        )
        .await?;
    }
    let row = select_tokens!("where t.id = $1", id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    from_row(row)
}
