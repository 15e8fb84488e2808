//! Creating, renaming, deleting and listing organisations.

use sqlx::PgPool;
use uuid::Uuid;

use super::slug::parse_name;
use super::{Org, OrgAccess, Permission, Role, Slug, authorize, require_user};
use crate::audit;
use crate::error::{ApiError, is_unique_violation};
use crate::identity::{Actor, Principal};

/// Creates an organisation with the caller as its owner.
pub async fn create(
    pool: &PgPool,
    actor: &Actor,
    slug: &str,
    name: &str,
) -> Result<OrgAccess, ApiError> {
    let user_id = require_user(&actor.principal, "create organizations")?;
    let slug = Slug::parse(slug)?;
    let name = parse_name("name", name)?;
    let mut tx = pool.begin().await?;
    let org = sqlx::query_as!(
        Org,
        "insert into organizations (id, slug, name) values ($1, $2, $3)
         returning id, slug, name, created_at",
        Uuid::new_v4(),
        slug.as_str(),
        &name,
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e, "organizations_slug_key") {
            ApiError::Conflict(format!("the slug {:?} is taken", slug.as_str()))
        } else {
            e.into()
        }
    })?;
    sqlx::query!(
        "insert into memberships (org_id, user_id, role) values ($1, $2, 'owner')",
        org.id,
        user_id,
    )
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        Some(org.id),
        actor,
        "organization.create",
        serde_json::json!({ "slug": { "after": org.slug }, "name": { "after": org.name } }),
    )
    .await?;
    tx.commit().await?;
    Ok(OrgAccess {
        org,
        role: Role::Owner,
    })
}

/// Renames an organisation (admins and owners).
pub async fn rename(
    pool: &PgPool,
    actor: &Actor,
    slug: &str,
    name: &str,
) -> Result<OrgAccess, ApiError> {
    let mut access = authorize(pool, &actor.principal, slug, Permission::Rename).await?;
    let name = parse_name("name", name)?;
    let mut tx = pool.begin().await?;
    let before = sqlx::query_scalar!(
        "select name from organizations where id = $1 for update",
        access.org.id,
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!(
        "update organizations set name = $2 where id = $1",
        access.org.id,
        &name,
    )
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        Some(access.org.id),
        actor,
        "organization.rename",
        audit::change("name", before, name.clone()),
    )
    .await?;
    tx.commit().await?;
    access.org.name = name;
    Ok(access)
}

/// Deletes an organisation with everything in it (owners only; `confirm` must repeat the slug).
/// Its Stripe subscriptions are queued for cancellation; wake the billing worker after.
pub async fn delete(
    pool: &PgPool,
    actor: &Actor,
    slug: &str,
    confirm: &str,
) -> Result<(), ApiError> {
    let access = authorize(pool, &actor.principal, slug, Permission::Delete).await?;
    if confirm.trim() != access.org.slug {
        return Err(ApiError::invalid(
            "confirmSlug",
            format!(
                "type the organization's slug ({}) to confirm deletion",
                access.org.slug
            ),
        ));
    }
    let live = sqlx::query_scalar!(
        r#"select count(*) as "count!" from control_planes where org_id = $1 and status <> 'deleted'"#,
        access.org.id,
    )
    .fetch_one(pool)
    .await?;
    if live > 0 {
        return Err(ApiError::Conflict(format!(
            "delete the organization's {live} control plane(s) first"
        )));
    }
    let mut tx = pool.begin().await?;
    audit::record(
        &mut tx,
        Some(access.org.id),
        actor,
        "organization.delete",
        serde_json::json!({ "slug": { "before": access.org.slug }, "name": { "before": access.org.name } }),
    )
    .await?;
    // Its Stripe subscriptions are cancelled by the billing worker, from a queue written in
    // this transaction: never lost, even while Stripe is unreachable.
    crate::billing::queue_cancellation(&mut tx, access.org.id, &access.org.slug).await?;
    sqlx::query!("delete from organizations where id = $1", access.org.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The organisations a principal can see, each with its role there.
pub async fn list_for(pool: &PgPool, principal: &Principal) -> Result<Vec<OrgAccess>, ApiError> {
    match principal {
        Principal::User { user_id, .. } => sqlx::query!(
            "select o.id, o.slug, o.name, o.created_at, m.role
             from organizations o join memberships m on m.org_id = o.id
             where m.user_id = $1 order by o.slug",
            user_id,
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|r| {
            Ok(OrgAccess {
                org: Org {
                    id: r.id,
                    slug: r.slug,
                    name: r.name,
                    created_at: r.created_at,
                },
                role: Role::parse(&r.role)?,
            })
        })
        .collect(),
        Principal::Token { org_id, role, .. } => Ok(sqlx::query_as!(
            Org,
            "select id, slug, name, created_at from organizations where id = $1",
            org_id,
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|org| OrgAccess { org, role: *role })
        .collect()),
    }
}
