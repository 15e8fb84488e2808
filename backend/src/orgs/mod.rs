//! Organisations, their members and roles, and invitations. Every permission decision about an
//! organisation is made by [`require`], in this one place.

pub mod graphql;
pub mod invitations;
pub mod members;
mod slug;
pub mod store;

pub use slug::{Slug, parse_name};

use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;
use crate::identity::Principal;

pub use qleet_protocol::Role;

/// Something one may do in an organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// See the organisation and its members.
    Read,
    /// Rename the organisation.
    Rename,
    /// Delete the organisation.
    Delete,
    /// Change roles and remove other members.
    ManageMembers,
    /// Invite people and see or revoke invitations.
    ManageInvitations,
    /// Read the audit log.
    ReadAuditLog,
    /// Create API tokens (at most one's own role).
    CreateTokens,
    /// See and revoke everyone's API tokens.
    ManageTokens,
    /// Create, suspend, resume and delete control planes.
    ManageControlPlanes,
    /// See the plan and usage, start Checkout, open the billing portal.
    ManageBilling,
}

impl Permission {
    /// The least role that has this permission.
    pub fn min_role(self) -> Role {
        match self {
            Permission::Read | Permission::CreateTokens => Role::Viewer,
            Permission::Rename
            | Permission::ManageMembers
            | Permission::ManageInvitations
            | Permission::ReadAuditLog
            | Permission::ManageTokens
            | Permission::ManageControlPlanes
            | Permission::ManageBilling => Role::Admin,
            Permission::Delete => Role::Owner,
        }
    }
}

/// An organisation row.
#[derive(Debug, Clone)]
pub struct Org {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// An organisation as one principal sees it: with that principal's role in it.
#[derive(Debug, Clone)]
pub struct OrgAccess {
    pub org: Org,
    pub role: Role,
}

/// The organisation `slug` and the principal's role in it. An organisation the principal does
/// not belong to answers `NOT_FOUND`, exactly like one that does not exist.
pub async fn access(
    pool: &PgPool,
    principal: &Principal,
    slug: &str,
) -> Result<OrgAccess, ApiError> {
    let not_found = || ApiError::NotFound(format!("organization {slug:?}"));
    match principal {
        Principal::User { user_id, .. } => {
            let row = sqlx::query!(
                "select o.id, o.slug, o.name, o.created_at, m.role
                 from organizations o join memberships m on m.org_id = o.id
                 where o.slug = $1 and m.user_id = $2",
                slug,
                user_id,
            )
            .fetch_optional(pool)
            .await?
            .ok_or_else(not_found)?;
            Ok(OrgAccess {
                org: Org {
                    id: row.id,
                    slug: row.slug,
                    name: row.name,
                    created_at: row.created_at,
                },
                role: Role::parse(&row.role)?,
            })
        }
        Principal::Token { org_id, role, .. } => {
            let org = sqlx::query_as!(
                Org,
                "select id, slug, name, created_at from organizations where slug = $1 and id = $2",
                slug,
                org_id,
            )
            .fetch_optional(pool)
            .await?
            .ok_or_else(not_found)?;
            Ok(OrgAccess { org, role: *role })
        }
    }
}

/// Refuses with `FORBIDDEN` unless the role allows `permission`.
pub fn require(access: &OrgAccess, permission: Permission) -> Result<(), ApiError> {
    if access.role.at_least(permission.min_role()) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "your role in {} ({}) does not allow this; it needs {}",
            access.org.slug,
            access.role.as_str(),
            permission.min_role().as_str()
        )))
    }
}

/// Access plus a permission check, the usual start of a mutation.
pub async fn authorize(
    pool: &PgPool,
    principal: &Principal,
    slug: &str,
    permission: Permission,
) -> Result<OrgAccess, ApiError> {
    let access = access(pool, principal, slug).await?;
    require(&access, permission)?;
    Ok(access)
}

/// Refuses API tokens for things only a person may do.
pub fn require_user(principal: &Principal, what: &str) -> Result<Uuid, ApiError> {
    match principal {
        Principal::User { user_id, .. } => Ok(*user_id),
        Principal::Token { .. } => Err(ApiError::forbidden(format!("API tokens cannot {what}"))),
    }
}
