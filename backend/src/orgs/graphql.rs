//! GraphQL: organisations, members, invitations and the audit log.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::invitations::{self, Invitation};
use super::members::{self, Member};
use super::{OrgAccess, Permission, Role, access, require, store};
use crate::audit;
use crate::error::{ApiError, GqlResult as _};
use crate::graphql::{actor, config, pool, principal};
use crate::identity::tokens::{self, ApiToken};

/// An organisation, as the caller sees it.
pub struct Organization(pub OrgAccess);

#[Object]
impl Organization {
    async fn id(&self) -> Uuid {
        self.0.org.id
    }
    async fn slug(&self) -> &str {
        &self.0.org.slug
    }
    async fn name(&self) -> &str {
        &self.0.org.name
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.org.created_at
    }
    /// The caller's role in this organisation.
    async fn viewer_role(&self) -> Role {
        self.0.role
    }
    async fn members(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Member>> {
        require(&self.0, Permission::Read).gql()?;
        members::list(pool(ctx), self.0.org.id).await.gql()
    }
    /// Open invitations (admins and owners).
    async fn invitations(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Invitation>> {
        require(&self.0, Permission::ManageInvitations).gql()?;
        invitations::list(pool(ctx), self.0.org.id).await.gql()
    }
    /// API tokens: everyone's for admins and owners, your own otherwise.
    async fn api_tokens(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ApiToken>> {
        tokens::list(pool(ctx), principal(ctx).gql()?, &self.0.org.slug)
            .await
            .gql()
    }
    /// Its control planes (not the deleted ones).
    async fn control_planes(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<crate::fleet::graphql::ControlPlaneObject>> {
        crate::fleet::graphql::list(ctx, self).await
    }

    /// One of its control planes, by id.
    async fn control_plane(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<crate::fleet::graphql::ControlPlaneObject> {
        crate::fleet::graphql::one(ctx, self, id).await
    }

    /// Plan, usage against its limits, and payment state (admins and owners).
    async fn billing(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<crate::billing::graphql::BillingObject> {
        crate::billing::graphql::summary(ctx, self).await
    }

    /// The audit log, newest first (admins and owners). `after` is the cursor of the last entry
    /// of the previous page.
    #[graphql(complexity = "first.unwrap_or(50).clamp(1, 200) as usize * child_complexity")]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, AuditEntry>> {
        require(&self.0, Permission::ReadAuditLog).gql()?;
        let limit = i64::from(first.unwrap_or(50).clamp(1, 200));
        let before = after
            .map(|c| {
                c.parse::<i64>()
                    .map_err(|_| ApiError::invalid("after", "is not a cursor from this log"))
            })
            .transpose()
            .gql()?;
        let (rows, more) = audit::page(pool(ctx), self.0.org.id, before, limit)
            .await
            .gql()?;
        let mut connection = Connection::new(before.is_some(), more);
        connection.edges.extend(
            rows.into_iter()
                .map(|e| Edge::new(e.id.to_string(), AuditEntry(e))),
        );
        Ok(connection)
    }
}

/// One audit-log entry.
pub struct AuditEntry(audit::Entry);

#[Object]
impl AuditEntry {
    async fn id(&self) -> String {
        self.0.id.to_string()
    }
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
    /// Who: an email, or a token and its creator.
    async fn actor(&self) -> &str {
        &self.0.actor
    }
    /// `user` or `token`.
    async fn actor_kind(&self) -> &str {
        if self.0.actor_token_id.is_some() {
            "token"
        } else {
            "user"
        }
    }
    /// What, e.g. `organization.rename`.
    async fn action(&self) -> &str {
        &self.0.action
    }
    async fn ip(&self) -> Option<&str> {
        self.0.ip.as_deref()
    }
    /// Before/after of each changed field.
    async fn changes(&self) -> Json<serde_json::Value> {
        Json(self.0.changes.clone())
    }
}

#[derive(Default)]
pub struct OrgQuery;

#[Object]
impl OrgQuery {
    /// An organisation you belong to, by slug.
    async fn organization(
        &self,
        ctx: &Context<'_>,
        slug: String,
    ) -> async_graphql::Result<Organization> {
        let principal = principal(ctx).gql()?;
        Ok(Organization(
            access(pool(ctx), principal, &slug).await.gql()?,
        ))
    }
}

/// A new invitation and the link to pass on to the invitee.
#[derive(SimpleObject)]
pub struct CreatedInvitation {
    invitation: Invitation,
    accept_url: String,
}

#[derive(Default)]
pub struct OrgMutation;

#[Object]
impl OrgMutation {
    async fn create_organization(
        &self,
        ctx: &Context<'_>,
        slug: String,
        name: String,
    ) -> async_graphql::Result<Organization> {
        let actor = actor(ctx).gql()?;
        Ok(Organization(
            store::create(pool(ctx), &actor, &slug, &name).await.gql()?,
        ))
    }

    async fn rename_organization(
        &self,
        ctx: &Context<'_>,
        slug: String,
        name: String,
    ) -> async_graphql::Result<Organization> {
        let actor = actor(ctx).gql()?;
        Ok(Organization(
            store::rename(pool(ctx), &actor, &slug, &name).await.gql()?,
        ))
    }

    /// Deletes the organisation and everything in it; `confirmSlug` must repeat its slug.
    async fn delete_organization(
        &self,
        ctx: &Context<'_>,
        slug: String,
        confirm_slug: String,
    ) -> async_graphql::Result<bool> {
        let actor = actor(ctx).gql()?;
        store::delete(pool(ctx), &actor, &slug, &confirm_slug)
            .await
            .gql()?;
        crate::billing::graphql::wake_worker(ctx);
        Ok(true)
    }

    async fn invite_member(
        &self,
        ctx: &Context<'_>,
        org: String,
        email: String,
        role: Role,
    ) -> async_graphql::Result<CreatedInvitation> {
        let actor = actor(ctx).gql()?;
        let (invitation, accept_url) =
            invitations::invite(pool(ctx), config(ctx), &actor, &org, &email, role)
                .await
                .gql()?;
        Ok(CreatedInvitation {
            invitation,
            accept_url,
        })
    }

    async fn revoke_invitation(
        &self,
        ctx: &Context<'_>,
        org: String,
        id: Uuid,
    ) -> async_graphql::Result<bool> {
        let actor = actor(ctx).gql()?;
        invitations::revoke(pool(ctx), &actor, &org, id)
            .await
            .gql()?;
        Ok(true)
    }

    /// Joins the organisation of an invitation sent to your (verified) email address.
    async fn accept_invitation(
        &self,
        ctx: &Context<'_>,
        token: String,
    ) -> async_graphql::Result<Organization> {
        let actor = actor(ctx).gql()?;
        Ok(Organization(
            invitations::accept(pool(ctx), &actor, &token).await.gql()?,
        ))
    }

    async fn change_member_role(
        &self,
        ctx: &Context<'_>,
        org: String,
        user_id: Uuid,
        role: Role,
    ) -> async_graphql::Result<Member> {
        let actor = actor(ctx).gql()?;
        members::change_role(pool(ctx), &actor, &org, user_id, role)
            .await
            .gql()
    }

    /// Removes a member; anyone may remove themselves (leave).
    async fn remove_member(
        &self,
        ctx: &Context<'_>,
        org: String,
        user_id: Uuid,
    ) -> async_graphql::Result<bool> {
        let actor = actor(ctx).gql()?;
        members::remove(pool(ctx), &actor, &org, user_id)
            .await
            .gql()?;
        Ok(true)
    }
}
