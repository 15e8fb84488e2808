//! Members of an organisation: listing, role changes, removal; at least one owner always remains.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{OrgAccess, Permission, Role, access, require};
use crate::audit;
use crate::error::ApiError;
use crate::identity::Actor;

/// A member as listed.
#[derive(Debug, Clone, async_graphql::SimpleObject)]
pub struct Member {
    pub user_id: Uuid,
    pub email: String,
    pub display_name: Option<String>,
    pub role: Role,
    pub joined_at: chrono::DateTime<chrono::Utc>,
}

struct MemberRow {
    user_id: Uuid,
    email: String,
    display_name: Option<String>,
    role: String,
    joined_at: chrono::DateTime<chrono::Utc>,
}

fn from_row(r: MemberRow) -> Result<Member, ApiError> {
    Ok(Member {
        user_id: r.user_id,
        email: r.email,
        display_name: r.display_name,
        role: Role::parse(&r.role)?,
        joined_at: r.joined_at,
    })
}

pub async fn list(pool: &PgPool, org_id: Uuid) -> Result<Vec<Member>, ApiError> {
    let rows = sqlx::query_as!(
        MemberRow,
        "select u.id as user_id, u.email, u.display_name, m.role, m.created_at as joined_at
         from memberships m join users u on u.id = m.user_id
         where m.org_id = $1 order by u.email",
        org_id,
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(from_row).collect()
}

/// Locks the organisation's memberships and returns the role of `user_id`, so that the
/// "one owner remains" check and the change happen atomically.
async fn lock_member(
    conn: &mut PgConnection,
    org_id: Uuid,
    user_id: Uuid,
) -> Result<(Role, i64), ApiError> {
    let rows = sqlx::query!(
        "select user_id, role from memberships where org_id = $1 for update",
        org_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    let owners = rows.iter().filter(|r| r.role == "owner").count() as i64;
    let role = rows
        .iter()
        .find(|r| r.user_id == user_id)
        .map(|r| Role::parse(&r.role))
        .transpose()?
        .ok_or_else(|| ApiError::NotFound("member".into()))?;
    Ok((role, owners))
}

/// Only an owner may grant, take away or touch the owner role.
fn check_owner_rules(access: &OrgAccess, current: Role, new: Option<Role>) -> Result<(), ApiError> {
    let touches_owner = current == Role::Owner || new == Some(Role::Owner);
    if touches_owner && access.role != Role::Owner {
        return Err(ApiError::forbidden(
            "only an owner can grant or change the owner role",
        ));
    }
    Ok(())
}

pub async fn change_role(
    pool: &PgPool,
    actor: &Actor,
    slug: &str,
    user_id: Uuid,
    role: Role,
) -> Result<Member, ApiError> {
    let access = access(pool, &actor.principal, slug).await?;
    require(&access, Permission::ManageMembers)?;
    let mut tx = pool.begin().await?;
    let (current, owners) = lock_member(&mut tx, access.org.id, user_id).await?;
    check_owner_rules(&access, current, Some(role))?;
    if current == Role::Owner && role != Role::Owner && owners <= 1 {
        return Err(ApiError::Conflict(
            "an organization needs at least one owner; make someone else owner first".into(),
        ));
    }
    sqlx::query!(
        "update memberships set role = $3 where org_id = $1 and user_id = $2",
        access.org.id,
        user_id,
        role.as_str(),
    )
    .execute(&mut *tx)
    .await?;
    let mut changes = audit::change("role", current.as_str(), role.as_str());
    changes["userId"] = serde_json::json!(user_id);
    audit::record(
        &mut tx,
        Some(access.org.id),
        actor,
        "member.change_role",
        changes,
    )
    .await?;
    let row = sqlx::query_as!(
        MemberRow,
        "select u.id as user_id, u.email, u.display_name, m.role, m.created_at as joined_at
         from memberships m join users u on u.id = m.user_id
         where m.org_id = $1 and m.user_id = $2",
        access.org.id,
        user_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    from_row(row)
}

/// Removes a member (admins; owners for owners); anyone may remove themselves.
pub async fn remove(
    pool: &PgPool,
    actor: &Actor,
    slug: &str,
    user_id: Uuid,
) -> Result<(), ApiError> {
    let access = access(pool, &actor.principal, slug).await?;
    let leaving_self = matches!(&actor.principal, crate::identity::Principal::User { user_id: me, .. } if *me == user_id);
    if !leaving_self {
        require(&access, Permission::ManageMembers)?;
    }
    let mut tx = pool.begin().await?;
    let (current, owners) = lock_member(&mut tx, access.org.id, user_id).await?;
    if !leaving_self {
        check_owner_rules(&access, current, None)?;
    }
    if current == Role::Owner && owners <= 1 {
        return Err(ApiError::Conflict(
            "an organization needs at least one owner; make someone else owner first".into(),
        ));
    }
    let email = sqlx::query_scalar!("select email from users where id = $1", user_id)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query!(
        "delete from memberships where org_id = $1 and user_id = $2",
        access.org.id,
        user_id,
    )
    .execute(&mut *tx)
    .await?;
    let changes = serde_json::json!({ "userId": user_id, "email": email, "role": { "before": current.as_str() } });
    audit::record(
        &mut tx,
        Some(access.org.id),
        actor,
        "member.remove",
        changes,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
