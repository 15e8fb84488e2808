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

type TokenRow = (
    Uuid,
    String,
    String,
    String,
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// The listing query, completed by a `where` clause (kept a literal so SQL is never built at
/// run time).
macro_rules! select_tokens {
    ($rest:literal) => {
        concat!(
            "select t.id, t.name, t.prefix, t.role, u.email, t.created_at, t.expires_at,
             t.last_used_at, t.revoked_at from api_tokens t join users u on u.id = t.created_by ",
            $rest
        )
    };
}

fn from_row(r: TokenRow) -> Result<ApiToken, ApiError> {
    Ok(ApiToken {
        id: r.0,
        name: r.1,
        prefix: r.2,
        role: Role::parse(&r.3)?,
        created_by: r.4,
        created_at: r.5,
        expires_at: r.6,
        last_used_at: r.7,
        revoked_at: r.8,
    })
}

/// Resolves a bearer token. Unknown, revoked and expired tokens, and tokens whose creator has
/// left the organisation, are refused alike. The effective role is the lower of the token's
/// and its creator's current one.
pub async fn authenticate(pool: &PgPool, token: &str) -> Result<Principal, ApiError> {
    if !token.starts_with(PREFIX) || token.len() > 100 {
        return Err(ApiError::Unauthenticated);
    }
    type Row = (Uuid, Uuid, String, String, Uuid, String, String, bool);
    let row: Option<Row> = sqlx::query_as(
        "select t.id, t.org_id, t.role, t.name, u.id, u.email, m.role,
                t.last_used_at is null or t.last_used_at < now() - interval '1 minute'
         from api_tokens t
         join users u on u.id = t.created_by
         join memberships m on m.org_id = t.org_id and m.user_id = t.created_by
         where t.token_hash = $1 and t.revoked_at is null
           and (t.expires_at is null or t.expires_at > now())",
    )
    .bind(hash_secret(token))
    .fetch_optional(pool)
    .await?;
    let (token_id, org_id, role, name, user_id, email, creator_role, stale) =
        row.ok_or(ApiError::Unauthenticated)?;
    if stale {
        // Recorded at most once a minute, so hot tokens do not write on every request.
        sqlx::query("update api_tokens set last_used_at = now() where id = $1")
            .bind(token_id)
            .execute(pool)
            .await?;
    }
    let role = Role::parse(&role)?.min(Role::parse(&creator_role)?);
    Ok(Principal::Token {
        token_id,
        org_id,
        role,
        name,
        user_id,
        email,
    })
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
    let rows: Vec<TokenRow> = sqlx::query_as(select_tokens!(
        "where t.org_id = $1 and ($2 or (t.created_by = $3 and $4::uuid is null) or t.id = $4)
         order by t.created_at desc"
    ))
    .bind(access.org.id)
    .bind(all)
    .bind(principal.user_id())
    .bind(principal.token_id())
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
    sqlx::query(
        "insert into api_tokens (id, org_id, name, prefix, token_hash, role, created_by, expires_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(access.org.id)
    .bind(&name)
    .bind(&prefix)
    .bind(hash_secret(&secret))
    .bind(role.as_str())
    .bind(user_id)
    .bind(expires_at)
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
    let row: TokenRow = sqlx::query_as(select_tokens!("where t.id = $1"))
        .bind(id)
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
    let owner: Option<(Uuid, bool)> = sqlx::query_as(
        "select created_by, revoked_at is not null from api_tokens where id = $1 and org_id = $2 for update",
    )
    .bind(id)
    .bind(access.org.id)
    .fetch_optional(&mut *tx)
    .await?;
    let (created_by, revoked) = owner.ok_or_else(|| ApiError::NotFound("API token".into()))?;
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
        sqlx::query("update api_tokens set revoked_at = now() where id = $1")
            .bind(id)
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
    let row: TokenRow = sqlx::query_as(select_tokens!("where t.id = $1"))
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    from_row(row)
}
