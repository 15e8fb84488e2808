//! Management-plane commands: organisations, members, invitations, API tokens, control planes
//! and the audit log, all through `/graphql`.

use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::{Value, json};

use crate::error::{Failure, Result};
use crate::output::{self, Column};
use crate::{Ctx, client, parse_duration};

#[derive(Subcommand, Debug)]
pub enum OrgCommand {
    /// Organisations you belong to.
    List,
    /// Create an organisation (needs a signed-in person; API tokens cannot).
    Create {
        slug: String,
        /// Display name (default: the slug).
        #[arg(long)]
        name: Option<String>,
    },
    /// Rename an organisation.
    Rename { slug: String, name: String },
    /// Delete an organisation and everything in it.
    Delete {
        slug: String,
        /// Repeat the slug to confirm.
        #[arg(long)]
        confirm: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Members and their roles.
    List,
    /// Invite someone by email; prints the link to pass on.
    Invite {
        email: String,
        #[arg(long, value_parser = ROLES, default_value = "member")]
        role: String,
    },
    /// Change a member's role (by email or user id).
    Role {
        member: String,
        #[arg(value_parser = ROLES)]
        role: String,
    },
    /// Remove a member (by email or user id).
    Remove { member: String },
}

#[derive(Subcommand, Debug)]
pub enum InvitationCommand {
    /// Open invitations.
    List,
    /// Revoke an invitation by id.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// API tokens (everyone's for admins, your own otherwise).
    List,
    /// Create an API token; prints its secret once.
    Create {
        name: String,
        #[arg(long, value_parser = ROLES, default_value = "member")]
        role: String,
        /// Expire after this many days.
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Revoke an API token by id.
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
pub enum CpCommand {
    /// Control planes of the organisation.
    List,
    /// One control plane with its history.
    Describe { control_plane: String },
    /// Create a control plane.
    Create {
        name: String,
        #[arg(long)]
        region: Option<String>,
        /// Wait until it is Ready (optionally at most this long, e.g. `--wait=5m`).
        #[arg(long, num_args = 0..=1, default_missing_value = "5m", require_equals = true, value_parser = parse_duration)]
        wait: Option<Duration>,
    },
    /// Suspend a control plane (its data is kept).
    Suspend {
        control_plane: String,
        #[arg(long, num_args = 0..=1, default_missing_value = "5m", require_equals = true, value_parser = parse_duration)]
        wait: Option<Duration>,
    },
    /// Resume a suspended control plane.
    Resume {
        control_plane: String,
        #[arg(long, num_args = 0..=1, default_missing_value = "5m", require_equals = true, value_parser = parse_duration)]
        wait: Option<Duration>,
    },
    /// Delete a control plane.
    Delete {
        control_plane: String,
        /// Repeat the control plane's name to confirm.
        #[arg(long)]
        confirm: String,
        #[arg(long, num_args = 0..=1, default_missing_value = "5m", require_equals = true, value_parser = parse_duration)]
        wait: Option<Duration>,
    },
}

const ROLES: [&str; 4] = ["owner", "admin", "member", "viewer"];

const ORG_COLUMNS: &[Column<'_>] = &[
    ("SLUG", "/organization/slug"),
    ("NAME", "/organization/name"),
    ("ROLE", "/role"),
];

pub async fn org(ctx: &Ctx, cmd: OrgCommand) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        OrgCommand::List => {
            let data = c
                .management(
                    "{ me { organizations { role organization { id slug name createdAt } } } }",
                    json!({}),
                )
                .await?;
            let rows = &data["me"]["organizations"];
            output::print(ctx.format, rows, rows, ORG_COLUMNS);
        }
        OrgCommand::Create { slug, name } => {
            let name = name.unwrap_or_else(|| slug.clone());
            let data = c
                .management(
                    "mutation($s: String!, $n: String!) { createOrganization(slug: $s, name: $n) { id slug name createdAt } }",
                    json!({ "s": slug, "n": name }),
                )
                .await?;
            let o = &data["createOrganization"];
            output::print_or(
                ctx.format,
                o,
                &format!("Created organisation {}.", output::cell(&o["slug"])),
            );
        }
        OrgCommand::Rename { slug, name } => {
            let data = c
                .management(
                    "mutation($s: String!, $n: String!) { renameOrganization(slug: $s, name: $n) { id slug name } }",
                    json!({ "s": slug, "n": name }),
                )
                .await?;
            let o = &data["renameOrganization"];
            output::print_or(
                ctx.format,
                o,
                &format!("Renamed {slug} to {}.", output::cell(&o["name"])),
            );
        }
        OrgCommand::Delete { slug, confirm } => {
            c.management(
                "mutation($s: String!, $c: String!) { deleteOrganization(slug: $s, confirmSlug: $c) }",
                json!({ "s": slug, "c": confirm }),
            )
            .await?;
            output::print_or(
                ctx.format,
                &json!({ "deleted": slug }),
                &format!("Deleted organisation {slug}."),
            );
        }
    }
    Ok(())
}

async fn members(ctx: &Ctx) -> Result<Value> {
    let data = ctx
        .client
        .management(
            "query($o: String!) { organization(slug: $o) { members { userId email displayName role joinedAt } } }",
            json!({ "o": ctx.org()? }),
        )
        .await?;
    Ok(data["organization"]["members"].clone())
}

/// A member's user id, from an email or an id.
async fn member_id(ctx: &Ctx, who: &str) -> Result<String> {
    if crate::is_uuid(who) {
        return Ok(who.to_owned());
    }
    let list = members(ctx).await?;
    list.as_array()
        .into_iter()
        .flatten()
        .find(|m| {
            m["email"]
                .as_str()
                .is_some_and(|e| e.eq_ignore_ascii_case(who))
        })
        .and_then(|m| m["userId"].as_str().map(str::to_owned))
        .ok_or_else(|| {
            Failure::failed(format!(
                "{who} is not a member of {}",
                ctx.org().unwrap_or("-")
            ))
        })
}

pub async fn member(ctx: &Ctx, cmd: MemberCommand) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        MemberCommand::List => {
            let rows = members(ctx).await?;
            output::print(
                ctx.format,
                &rows,
                &rows,
                &[
                    ("EMAIL", "/email"),
                    ("NAME", "/displayName"),
                    ("ROLE", "/role"),
                    ("JOINED", "/joinedAt"),
                    ("USER ID", "/userId"),
                ],
            );
        }
        MemberCommand::Invite { email, role } => {
            let data = c
                .management(
                    "mutation($o: String!, $e: String!, $r: Role!) { inviteMember(org: $o, email: $e, role: $r) { acceptUrl invitation { id email role expiresAt } } }",
                    json!({ "o": ctx.org()?, "e": email, "r": role.to_uppercase() }),
                )
                .await?;
            let inv = &data["inviteMember"];
            output::print_or(
                ctx.format,
                inv,
                &format!(
                    "Invited {email} as {role}. Pass on this link: {}",
                    output::cell(&inv["acceptUrl"])
                ),
            );
        }
        MemberCommand::Role { member, role } => {
            let id = member_id(ctx, &member).await?;
            let data = c
                .management(
                    "mutation($o: String!, $u: UUID!, $r: Role!) { changeMemberRole(org: $o, userId: $u, role: $r) { userId email role } }",
                    json!({ "o": ctx.org()?, "u": id, "r": role.to_uppercase() }),
                )
                .await?;
            let m = &data["changeMemberRole"];
            output::print_or(
                ctx.format,
                m,
                &format!("{} is now {role}.", output::cell(&m["email"])),
            );
        }
        MemberCommand::Remove { member } => {
            let id = member_id(ctx, &member).await?;
            c.management(
                "mutation($o: String!, $u: UUID!) { removeMember(org: $o, userId: $u) }",
                json!({ "o": ctx.org()?, "u": id }),
            )
            .await?;
            output::print_or(
                ctx.format,
                &json!({ "removed": id }),
                &format!("Removed {member}."),
            );
        }
    }
    Ok(())
}

pub async fn invitation(ctx: &Ctx, cmd: InvitationCommand) -> Result<()> {
    match cmd {
        InvitationCommand::List => {
            let data = ctx
                .client
                .management(
                    "query($o: String!) { organization(slug: $o) { invitations { id email role invitedBy createdAt expiresAt } } }",
                    json!({ "o": ctx.org()? }),
                )
                .await?;
            let rows = &data["organization"]["invitations"];
            output::print(
                ctx.format,
                rows,
                rows,
                &[
                    ("ID", "/id"),
                    ("EMAIL", "/email"),
                    ("ROLE", "/role"),
                    ("INVITED BY", "/invitedBy"),
                    ("EXPIRES", "/expiresAt"),
                ],
            );
        }
        InvitationCommand::Revoke { id } => {
            uuid_arg(&id, "invitation id")?;
            ctx.client
                .management(
                    "mutation($o: String!, $id: UUID!) { revokeInvitation(org: $o, id: $id) }",
                    json!({ "o": ctx.org()?, "id": id }),
                )
                .await?;
            output::print_or(
                ctx.format,
                &json!({ "revoked": id }),
                &format!("Revoked invitation {id}."),
            );
        }
    }
    Ok(())
}

fn uuid_arg(s: &str, what: &str) -> Result<()> {
    if crate::is_uuid(s) {
        Ok(())
    } else {
        Err(Failure::usage(format!(
            "{s:?} is not a valid {what} (a UUID)"
        )))
    }
}

const TOKEN_COLUMNS: &[Column<'_>] = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("PREFIX", "/prefix"),
    ("ROLE", "/role"),
    ("CREATED BY", "/createdBy"),
    ("EXPIRES", "/expiresAt"),
    ("LAST USED", "/lastUsedAt"),
    ("REVOKED", "/revokedAt"),
];

pub async fn token(ctx: &Ctx, cmd: TokenCommand) -> Result<()> {
    let c = &ctx.client;
    match cmd {
        TokenCommand::List => {
            let data = c
                .management(
                    "query($o: String!) { organization(slug: $o) { apiTokens { id name prefix role createdBy createdAt expiresAt lastUsedAt revokedAt } } }",
                    json!({ "o": ctx.org()? }),
                )
                .await?;
            let rows = &data["organization"]["apiTokens"];
            output::print(ctx.format, rows, rows, TOKEN_COLUMNS);
        }
        TokenCommand::Create {
            name,
            role,
            expires_in_days,
        } => {
            let expires = expires_in_days.map(|d| {
                let at = std::time::SystemTime::now() + Duration::from_secs(u64::from(d) * 86_400);
                rfc3339(at)
            });
            let data = c
                .management(
                    "mutation($o: String!, $n: String!, $r: Role!, $e: DateTime) { createApiToken(org: $o, name: $n, role: $r, expiresAt: $e) { token apiToken { id name prefix role expiresAt } } }",
                    json!({ "o": ctx.org()?, "n": name, "r": role.to_uppercase(), "e": expires }),
                )
                .await?;
            let t = &data["createApiToken"];
            output::print_or(
                ctx.format,
                t,
                &format!(
                    "{}\n(shown once: store it now; id {})",
                    output::cell(&t["token"]),
                    output::cell(&t["apiToken"]["id"])
                ),
            );
        }
        TokenCommand::Revoke { id } => {
            uuid_arg(&id, "token id")?;
            let data = c
                .management(
                    "mutation($o: String!, $id: UUID!) { revokeApiToken(org: $o, id: $id) { id name revokedAt } }",
                    json!({ "o": ctx.org()?, "id": id }),
                )
                .await?;
            output::print_or(
                ctx.format,
                &data["revokeApiToken"],
                &format!("Revoked token {id}."),
            );
        }
    }
    Ok(())
}

/// Revokes the token `token` itself (found by its prefix); false if that was not possible.
pub async fn revoke_own_token(client: &client::Client, org: &str, token: &str) -> bool {
    let prefix: String = token.chars().take(12).collect();
    let Ok(data) = client
        .management(
            "query($o: String!) { organization(slug: $o) { apiTokens { id prefix revokedAt } } }",
            json!({ "o": org }),
        )
        .await
    else {
        return false;
    };
    let Some(id) = data["organization"]["apiTokens"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["prefix"] == prefix.as_str() && t["revokedAt"].is_null())
        .and_then(|t| t["id"].as_str())
    else {
        return false;
    };
    client
        .management(
            "mutation($o: String!, $id: UUID!) { revokeApiToken(org: $o, id: $id) { id } }",
            json!({ "o": org, "id": id }),
        )
        .await
        .is_ok()
}

/// `SystemTime` as RFC 3339 UTC (no date crate needed for this one use).
fn rfc3339(at: std::time::SystemTime) -> String {
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

const CP_FIELDS: &str = "id name region status statusReason version endpoint createdAt updatedAt";
const CP_COLUMNS: &[Column<'_>] = &[
    ("NAME", "/name"),
    ("ID", "/id"),
    ("STATUS", "/status"),
    ("REGION", "/region"),
    ("VERSION", "/version"),
    ("REASON", "/statusReason"),
];

async fn control_planes(ctx: &Ctx) -> Result<Value> {
    let data = ctx
        .client
        .management(
            &format!("query($o: String!) {{ organization(slug: $o) {{ controlPlanes {{ {CP_FIELDS} }} }} }}"),
            json!({ "o": ctx.org()? }),
        )
        .await?;
    Ok(data["organization"]["controlPlanes"].clone())
}

/// A control plane of the current organisation by name or id (a usage error if none).
/// Runs `mutation` (`suspendControlPlane`, `resumeControlPlane`) on the named control plane;
/// answers the control plane as it now is.
async fn transition(ctx: &Ctx, mutation: &str, control_plane: &str) -> Result<Value> {
    let id = find_control_plane(ctx, control_plane).await?["id"].clone();
    let data = ctx
        .client
        .management(
            &format!("mutation($o: String!, $id: UUID!) {{ {mutation}(org: $o, id: $id) {{ {CP_FIELDS} }} }}"),
            json!({ "o": ctx.org()?, "id": id }),
        )
        .await?;
    Ok(data[mutation].clone())
}

pub async fn find_control_plane(ctx: &Ctx, name_or_id: &str) -> Result<Value> {
    let list = control_planes(ctx).await?;
    list.as_array()
        .into_iter()
        .flatten()
        .find(|cp| cp["id"] == name_or_id || cp["name"] == name_or_id)
        .cloned()
        .ok_or_else(|| {
            Failure::usage(format!(
                "no control plane {name_or_id:?} in organisation {} (see `qleetctl cp list`)",
                ctx.org().unwrap_or("-")
            ))
        })
}

async fn status(ctx: &Ctx, id: &str) -> Result<Value> {
    let data = ctx
        .client
        .management(
            &format!("query($o: String!, $id: UUID!) {{ organization(slug: $o) {{ controlPlane(id: $id) {{ {CP_FIELDS} events {{ at from to message }} }} }} }}"),
            json!({ "o": ctx.org()?, "id": id }),
        )
        .await?;
    Ok(data["organization"]["controlPlane"].clone())
}

/// Polls until the control plane reaches `want` (FAILED ends the wait with exit 1).
async fn wait_status(ctx: &Ctx, id: &str, want: &str, timeout: Duration) -> Result<Value> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let cp = match status(ctx, id).await {
            Ok(cp) => cp,
            Err(f) if want == "DELETED" && f.message.starts_with("NOT_FOUND") => {
                return Ok(json!({ "id": id, "status": "DELETED" }));
            }
            Err(f) => return Err(f),
        };
        let now = cp["status"].as_str().unwrap_or("").to_owned();
        if now != last {
            eprintln!("{}  {now}", output::cell(&cp["name"]));
            last = now.clone();
        }
        if now == want {
            return Ok(cp);
        }
        if now == "FAILED" {
            return Err(Failure::failed(format!(
                "control plane {} FAILED: {}",
                output::cell(&cp["name"]),
                output::cell(&cp["statusReason"])
            )));
        }
        if start.elapsed() >= timeout {
            return Err(Failure::failed(format!(
                "timed out after {} s: control plane {} is {now}, not {want}",
                timeout.as_secs(),
                output::cell(&cp["name"])
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn control_plane(ctx: &Ctx, cmd: CpCommand) -> Result<()> {
    let c = &ctx.client;
    let (mut cp, wait, want) = match cmd {
        CpCommand::List => {
            let rows = control_planes(ctx).await?;
            output::print(ctx.format, &rows, &rows, CP_COLUMNS);
            return Ok(());
        }
        CpCommand::Describe { control_plane } => {
            let id = find_control_plane(ctx, &control_plane).await?["id"].clone();
            let cp = status(ctx, id.as_str().unwrap_or_default()).await?;
            if ctx.format == output::Format::Table {
                print!("{}", output::table(&cp, CP_COLUMNS));
                println!("\nEndpoint: {}\n\nEvents:", output::cell(&cp["endpoint"]));
                print!(
                    "{}",
                    output::table(
                        &cp["events"],
                        &[
                            ("AT", "/at"),
                            ("FROM", "/from"),
                            ("TO", "/to"),
                            ("MESSAGE", "/message")
                        ]
                    )
                );
            } else {
                output::print(ctx.format, &cp, &cp, &[]);
            }
            return Ok(());
        }
        CpCommand::Create { name, region, wait } => {
            let data = c
                .management(
                    &format!("mutation($o: String!, $n: String!, $r: String) {{ createControlPlane(org: $o, name: $n, region: $r) {{ {CP_FIELDS} }} }}"),
                    json!({ "o": ctx.org()?, "n": name, "r": region }),
                )
                .await?;
            (data["createControlPlane"].clone(), wait, "READY")
        }
        CpCommand::Suspend {
            control_plane,
            wait,
        } => (
            transition(ctx, "suspendControlPlane", &control_plane).await?,
            wait,
            "SUSPENDED",
        ),
        CpCommand::Resume {
            control_plane,
            wait,
        } => (
            transition(ctx, "resumeControlPlane", &control_plane).await?,
            wait,
            "READY",
        ),
        CpCommand::Delete {
            control_plane,
            confirm,
            wait,
        } => {
            let id = find_control_plane(ctx, &control_plane).await?["id"].clone();
            let data = c
                .management(
                    &format!("mutation($o: String!, $id: UUID!, $c: String!) {{ deleteControlPlane(org: $o, id: $id, confirmName: $c) {{ {CP_FIELDS} }} }}"),
                    json!({ "o": ctx.org()?, "id": id, "c": confirm }),
                )
                .await?;
            (data["deleteControlPlane"].clone(), wait, "DELETED")
        }
    };
    if let Some(timeout) = wait {
        let id = cp["id"].as_str().unwrap_or_default().to_owned();
        cp = wait_status(ctx, &id, want, timeout).await?;
    }
    output::print(ctx.format, &cp, &cp, CP_COLUMNS);
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// How many entries.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// The current control plane's audit trail (objects and agents) instead of the
    /// organisation's log.
    #[arg(long)]
    trail: bool,
    /// Only this object's entries (`KIND/NAME`) of the control plane's trail.
    #[arg(long, value_name = "KIND/NAME")]
    object: Option<String>,
    /// The control plane's whole trail (or the object's), oldest first, as JSON lines.
    #[arg(long)]
    jsonl: bool,
}

pub async fn audit(ctx: &Ctx, args: AuditArgs) -> Result<()> {
    if args.trail || args.object.is_some() || args.jsonl {
        return control_plane_audit(ctx, args).await;
    }
    let limit = args.limit;
    let data = ctx
        .client
        .management(
            "query($o: String!, $n: Int) { organization(slug: $o) { auditLog(first: $n) { nodes { id at actor actorKind action ip changes } } } }",
            json!({ "o": ctx.org()?, "n": limit }),
        )
        .await?;
    let rows = &data["organization"]["auditLog"]["nodes"];
    output::print(
        ctx.format,
        rows,
        rows,
        &[
            ("AT", "/at"),
            ("ACTOR", "/actor"),
            ("ACTION", "/action"),
            ("IP", "/ip"),
            ("CHANGES", "/changes"),
        ],
    );
    Ok(())
}

async fn control_plane_audit(ctx: &Ctx, args: AuditArgs) -> Result<()> {
    if let Some(object) = &args.object
        && !object.contains('/')
    {
        return Err(Failure::usage(format!(
            "--object {object:?} is not of the form KIND/NAME"
        )));
    }
    let cp = ctx.control_plane().await?;
    if args.jsonl {
        let path = match &args.object {
            Some(object) => format!(
                "audit.jsonl?object={}",
                url::form_urlencoded::byte_serialize(object.as_bytes()).collect::<String>()
            ),
            None => "audit.jsonl".to_owned(),
        };
        return ctx
            .client
            .download(&cp, &path, &mut tokio::io::stdout())
            .await;
    }
    let data = ctx
        .client
        .control_plane(
            &cp,
            "query($n: Int, $o: String) { auditLog(first: $n, object: $o) { nodes { id at actor action object detail diff } } }",
            json!({ "n": args.limit.clamp(1, 200), "o": args.object }),
        )
        .await?;
    let rows = &data["auditLog"]["nodes"];
    output::print(
        ctx.format,
        rows,
        rows,
        &[
            ("AT", "/at"),
            ("ACTOR", "/actor"),
            ("ACTION", "/action"),
            ("OBJECT", "/object"),
            ("DETAIL", "/detail"),
        ],
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        let at = std::time::UNIX_EPOCH + Duration::from_secs(1_764_937_845);
        assert_eq!(rfc3339(at), "2025-12-05T12:30:45Z");
        assert_eq!(rfc3339(std::time::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
