//! GraphQL: `me`, and the API-token mutations.

use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::tokens::{self, ApiToken};
use crate::error::GqlResult as _;
use crate::graphql::{actor, pool, principal};
use crate::orgs::Role;
use crate::orgs::graphql::Organization;

/// A person using Qleet.
pub struct UserObject(super::User);

#[Object(name = "User")]
impl UserObject {
    async fn id(&self) -> Uuid {
        self.0.id
    }
    async fn email(&self) -> &str {
        &self.0.email
    }
    async fn email_verified(&self) -> bool {
        self.0.email_verified
    }
    async fn display_name(&self) -> Option<&str> {
        self.0.display_name.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// The organisations the caller can act in (an API token: only its own).
    async fn organizations(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Membership>> {
        let principal = principal(ctx).gql()?;
        let orgs = crate::orgs::store::list_for(pool(ctx), principal)
            .await
            .gql()?;
        Ok(orgs
            .into_iter()
            .map(|a| Membership {
                role: a.role,
                organization: Organization(a),
            })
            .collect())
    }
}

/// An organisation the caller belongs to, with the caller's role there.
#[derive(SimpleObject)]
pub struct Membership {
    role: Role,
    organization: Organization,
}

#[derive(Default)]
pub struct IdentityQuery;

#[Object]
impl IdentityQuery {
    /// The signed-in user (for an API token: the person who created it).
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<UserObject> {
        let principal = principal(ctx).gql()?;
        Ok(UserObject(
            super::find_user(pool(ctx), principal.user_id())
                .await
                .gql()?,
        ))
    }
}

/// A freshly created API token. `token` is shown this once and never again.
#[derive(SimpleObject)]
pub struct CreatedApiToken {
    token: String,
    api_token: ApiToken,
}

#[derive(Default)]
pub struct TokenMutation;

#[Object]
impl TokenMutation {
    /// Creates an API token for organisation `org` with at most your role there.
    async fn create_api_token(
        &self,
        ctx: &Context<'_>,
        org: String,
        name: String,
        role: Role,
        expires_at: Option<DateTime<Utc>>,
    ) -> async_graphql::Result<CreatedApiToken> {
        let actor = actor(ctx).gql()?;
        let (api_token, token) = tokens::create(pool(ctx), &actor, &org, &name, role, expires_at)
            .await
            .gql()?;
        Ok(CreatedApiToken { token, api_token })
    }

    /// Revokes an API token (your own, or anyone's for admins).
    async fn revoke_api_token(
        &self,
        ctx: &Context<'_>,
        org: String,
        id: Uuid,
    ) -> async_graphql::Result<ApiToken> {
        let actor = actor(ctx).gql()?;
        tokens::revoke(pool(ctx), &actor, &org, id).await.gql()
    }
}
