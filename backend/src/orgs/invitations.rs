//! Invitations: a single-use, expiring link for one email address and role.

use sqlx::PgPool;
use uuid::Uuid;

use super::{OrgAccess, Permission, Role, authorize, require_user};
use crate::audit;
use crate::config::Config;
use crate::error::{ApiError, is_unique_violation};
use crate::identity::{Actor, hash_secret, random_secret};

/// An open invitation.
#[derive(Debug, Clone, async_graphql::SimpleObject)]
pub struct Invitation {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub invited_by: String,
}

struct InvitationRow {
    id: Uuid,
    email: String,
    role: String,
    created_at: chrono::DateTime<chrono::Utc>,
    expires_at: chrono::DateTime<chrono::Utc>,
    invited_by: String,
}

fn from_row(r: InvitationRow) -> Result<Invitation, ApiError> {
    Ok(Invitation {
        id: r.id,
        email: r.email,
        role: Role::parse(&r.role)?,
        created_at: r.created_at,
        expires_at: r.expires_at,
        invited_by: r.invited_by,
    })
}

/// A checked email address (one `@`, something on each side, no spaces, at most 254 bytes).
pub fn parse_email(input: &str) -> Result<String, ApiError> {
    let s = input.trim();
    let ok = s.len() <= 254
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(s.split_once('@'), Some((local, domain)) if !local.is_empty() && domain.contains('.') && !domain.contains('@') && !domain.starts_with('.') && !domain.ends_with('.'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(ApiError::invalid("email", "is not an email address"))
    }
}

/// Open invitations of an organisation (admins).
pub async fn list(pool: &PgPool, org_id: Uuid) -> Result<Vec<Invitation>, ApiError> {
    let rows = sqlx::query_as!(
        InvitationRow,
        "select i.id, i.email, i.role, i.created_at, i.expires_at, u.email as invited_by
         from invitations i join users u on u.id = i.invited_by
         where i.org_id = $1 and i.accepted_at is null and i.revoked_at is null and i.expires_at > now()
         order by i.created_at desc",
        org_id,
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(from_row).collect()
}

/// Invites `email` with `role`; returns the invitation and its accept link (shown to the
/// inviter to pass on; the link carries the only copy of the token).
pub async fn invite(
    pool: &PgPool,
    config: &Config,
    actor: &Actor,
    slug: &str,
    email: &str,
    role: Role,
) -> Result<(Invitation, String), ApiError> {
    let inviter = require_user(&actor.principal, "invite members")?;
    let access = authorize(pool, &actor.principal, slug, Permission::ManageInvitations).await?;
    if role == Role::Owner && access.role != Role::Owner {
        return Err(ApiError::forbidden(
            "only an owner can invite another owner",
        ));
    }
    let email = parse_email(email)?;
    let already = sqlx::query_scalar!(
        r#"select exists (select 1 from memberships m join users u on u.id = m.user_id
                        where m.org_id = $1 and lower(u.email) = lower($2)) as "exists!""#,
        access.org.id,
        &email,
    )
    .fetch_one(pool)
    .await?;
    if already {
        return Err(ApiError::Conflict(format!("{email} is already a member")));
    }
    let token = random_secret();
    let mut tx = pool.begin().await?;
    // An expired invitation for the same address must not block a new one.
    sqlx::query!(
        "update invitations set revoked_at = now()
         where org_id = $1 and lower(email) = lower($2) and accepted_at is null
           and revoked_at is null and expires_at <= now()",
        access.org.id,
        &email,
    )
    .execute(&mut *tx)
    .await?;
    let id = Uuid::new_v4();
    let created = sqlx::query!(
        "insert into invitations (id, org_id, email, role, token_hash, invited_by, expires_at)
         values ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))
         returning created_at, expires_at",
        id,
        access.org.id,
        &email,
        role.as_str(),
        hash_secret(&token),
        inviter,
        config.invitation_ttl.as_secs_f64(),
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        if is_unique_violation(&e, "invitations_open_email_idx") {
            ApiError::Conflict(format!(
                "{email} already has an open invitation; revoke it first"
            ))
        } else {
            e.into()
        }
    })?;
    let changes = serde_json::json!({ "invitationId": id, "email": email, "role": { "after": role.as_str() } });
    audit::record(
        &mut tx,
        Some(access.org.id),
        actor,
        "invitation.create",
        changes,
    )
    .await?;
    tx.commit().await?;
    let invitation = Invitation {
        id,
        email,
        role,
        created_at: created.created_at,
        expires_at: created.expires_at,
        invited_by: actor.principal.label(),
    };
    Ok((invitation, config.url(&format!("/invitations/{token}"))))
}

pub async fn revoke(pool: &PgPool, actor: &Actor, slug: &str, id: Uuid) -> Result<(), ApiError> {
    let access = authorize(pool, &actor.principal, slug, Permission::ManageInvitations).await?;
    let mut tx = pool.begin().await?;
    let email = sqlx::query_scalar!(
        "update invitations set revoked_at = now()
         where id = $1 and org_id = $2 and accepted_at is null and revoked_at is null returning email",
        id,
        access.org.id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let email = email.ok_or_else(|| ApiError::NotFound("open invitation".into()))?;
    audit::record(
        &mut tx,
        Some(access.org.id),
        actor,
        "invitation.revoke",
        serde_json::json!({ "invitationId": id, "email": email }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Accepts an invitation as the signed-in user, whose verified email must be the invited one.
pub async fn accept(pool: &PgPool, actor: &Actor, token: &str) -> Result<OrgAccess, ApiError> {
    let user_id = require_user(&actor.principal, "accept invitations")?;
    let mut tx = pool.begin().await?;
    let row = sqlx::query!(
        r#"select id, org_id, email, role, accepted_at is not null as "accepted!",
                revoked_at is not null as "revoked!", expires_at <= now() as "expired!"
         from invitations where token_hash = $1 for update"#,
        hash_secret(token),
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::NotFound("invitation".into()))?;
    let (id, org_id, email, role) = (row.id, row.org_id, row.email, row.role);
    let (accepted, revoked, expired) = (row.accepted, row.revoked, row.expired);
    if accepted {
        return Err(ApiError::Conflict(
            "this invitation has already been used".into(),
        ));
    }
    if revoked {
        return Err(ApiError::Conflict("this invitation was revoked".into()));
    }
    if expired {
        return Err(ApiError::Conflict(
            "this invitation has expired; ask for a new one".into(),
        ));
    }
    let user = sqlx::query!(
        "select email, email_verified from users where id = $1",
        user_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    let verified = user.email_verified;
    if !user.email.eq_ignore_ascii_case(&email) {
        // The address stays unsaid: whoever holds the link learns nothing about the invitee.
        return Err(ApiError::forbidden(
            "this invitation is for someone else; sign in with the invited account to accept it",
        ));
    }
    if !verified {
        return Err(ApiError::forbidden(
            "your identity provider has not verified your email address",
        ));
    }
    let inserted = sqlx::query!(
        "insert into memberships (org_id, user_id, role) values ($1, $2, $3) on conflict do nothing",
        org_id,
        user_id,
        &role,
    )
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError::Conflict(
            "you are already a member of this organization".into(),
        ));
    }
    sqlx::query!(
        "update invitations set accepted_at = now(), accepted_by = $2 where id = $1",
        id,
        user_id,
    )
    .execute(&mut *tx)
    .await?;
    let changes =
        serde_json::json!({ "invitationId": id, "userId": user_id, "role": { "after": role } });
    audit::record(&mut tx, Some(org_id), actor, "invitation.accept", changes).await?;
    let org = sqlx::query_as!(
        super::Org,
        "select id, slug, name, created_at from organizations where id = $1",
        org_id,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(OrgAccess {
        org,
        role: Role::parse(&role)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked() {
        assert_eq!(
            parse_email(" bob@example.com ").expect("valid"),
            "bob@example.com"
        );
        for bad in [
            "",
            "bob",
            "@example.com",
            "bob@",
            "bob@localhost",
            "b ob@x.com",
            "a@b@c.com",
            "bob@.com",
        ] {
            assert!(parse_email(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
