//! The role matrix: every organisation query and mutation, tried by every kind of principal.
//! Refusals leave the database exactly as it was.

use serde_json::{Value, json};

use crate::support::{Auth, Session, TestApp, error_code, spawn_app};

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Level {
    Viewer,
    Member,
    Admin,
    Owner,
}

fn role_name(l: Level) -> &'static str {
    match l {
        Level::Viewer => "VIEWER",
        Level::Member => "MEMBER",
        Level::Admin => "ADMIN",
        Level::Owner => "OWNER",
    }
}

/// Who tries.
enum Who {
    Anonymous,
    /// Owner of another organisation (session).
    Outsider,
    /// A token of the other organisation with the owner role.
    OutsiderToken,
    Member(Level),
    Token(Level),
}

impl Who {
    fn label(&self) -> String {
        match self {
            Who::Anonymous => "anonymous".into(),
            Who::Outsider => "member of another org".into(),
            Who::OutsiderToken => "token of another org".into(),
            Who::Member(l) => format!("{l:?} session"),
            Who::Token(l) => format!("{l:?} token"),
        }
    }
}

struct World {
    app: TestApp,
    owner: Session,
    members: Vec<(Level, Session)>,
    tokens: Vec<(Level, String)>,
    outsider: Session,
    outsider_token: String,
    target: String,
    counter: std::sync::atomic::AtomicUsize,
}

impl World {
    async fn new() -> World {
        let app = spawn_app().await;
        let owner = app.sign_in("owner@alpha.test").await;
        app.create_org(&owner, "alpha").await;
        let mut members = vec![(Level::Owner, owner.clone())];
        for (level, email) in [
            (Level::Admin, "admin@alpha.test"),
            (Level::Member, "member@alpha.test"),
            (Level::Viewer, "viewer@alpha.test"),
        ] {
            members.push((
                level,
                app.add_member(&owner, "alpha", email, role_name(level))
                    .await,
            ));
        }
        let mut tokens = Vec::new();
        for level in [Level::Owner, Level::Admin, Level::Member, Level::Viewer] {
            tokens.push((
                level,
                app.create_token(&owner, "alpha", role_name(level)).await,
            ));
        }
        let target_session = app
            .add_member(&owner, "alpha", "target@alpha.test", "MEMBER")
            .await;
        let target = user_id(&app, &target_session).await;
        let outsider = app.sign_in("owner@beta.test").await;
        app.create_org(&outsider, "beta").await;
        let outsider_token = app.create_token(&outsider, "beta", "OWNER").await;
        World {
            app,
            owner,
            members,
            tokens,
            outsider,
            outsider_token,
            target,
            counter: Default::default(),
        }
    }

    fn auth(&self, who: &Who) -> Auth<'_> {
        match who {
            Who::Anonymous => Auth::Anonymous,
            Who::Outsider => Auth::Session(&self.outsider),
            Who::OutsiderToken => Auth::Token(&self.outsider_token),
            Who::Member(l) => {
                Auth::Session(&self.members.iter().find(|(m, _)| m == l).expect("member").1)
            }
            Who::Token(l) => {
                Auth::Token(&self.tokens.iter().find(|(m, _)| m == l).expect("token").1)
            }
        }
    }

    fn unique(&self) -> usize {
        self.counter
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }
}

async fn user_id(app: &TestApp, s: &Session) -> String {
    app.gql_ok(Auth::Session(s), "{ me { id } }", json!({}))
        .await["me"]["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

fn everyone() -> Vec<Who> {
    let mut all = vec![Who::Anonymous, Who::Outsider, Who::OutsiderToken];
    for l in [Level::Viewer, Level::Member, Level::Admin, Level::Owner] {
        all.push(Who::Token(l));
        all.push(Who::Member(l));
    }
    all
}

/// What `who` should get for an operation needing `min` (and, if `user_only`, a person).
fn expected(who: &Who, min: Level, user_only: bool) -> Option<&'static str> {
    match who {
        Who::Anonymous => Some("UNAUTHENTICATED"),
        // Person-only operations refuse every token before looking at the organisation.
        Who::Token(_) | Who::OutsiderToken if user_only => Some("FORBIDDEN"),
        Who::Outsider | Who::OutsiderToken => Some("NOT_FOUND"),
        Who::Member(l) | Who::Token(l) if *l < min => Some("FORBIDDEN"),
        _ => None,
    }
}

/// Prepares one attempt (returns the variables) as the owner, so each try has a fresh target.
type Prepare =
    for<'a> fn(&'a World) -> std::pin::Pin<Box<dyn std::future::Future<Output = Value> + 'a>>;

struct Case {
    name: &'static str,
    query: &'static str,
    min: Level,
    user_only: bool,
    prepare: Prepare,
}

fn no_vars(_: &World) -> std::pin::Pin<Box<dyn std::future::Future<Output = Value> + '_>> {
    Box::pin(async { json!({}) })
}

fn fresh_email(w: &World) -> std::pin::Pin<Box<dyn std::future::Future<Output = Value> + '_>> {
    Box::pin(async move { json!({ "e": format!("new{}@alpha.test", w.unique()) }) })
}

fn fresh_invitation(w: &World) -> std::pin::Pin<Box<dyn std::future::Future<Output = Value> + '_>> {
    Box::pin(async move {
        let data = w
            .app
            .gql_ok(
                Auth::Session(&w.owner),
                "mutation($e: String!) { inviteMember(org: \"alpha\", email: $e, role: MEMBER) { invitation { id } } }",
                json!({ "e": format!("inv{}@alpha.test", w.unique()) }),
            )
            .await;
        json!({ "id": data["inviteMember"]["invitation"]["id"] })
    })
}

fn target(w: &World) -> std::pin::Pin<Box<dyn std::future::Future<Output = Value> + '_>> {
    Box::pin(async move { json!({ "u": w.target }) })
}

fn fresh_member(w: &World) -> std::pin::Pin<Box<dyn std::future::Future<Output = Value> + '_>> {
    Box::pin(async move {
        let s = w
            .app
            .add_member(
                &w.owner,
                "alpha",
                &format!("leaver{}@alpha.test", w.unique()),
                "VIEWER",
            )
            .await;
        json!({ "u": user_id(&w.app, &s).await })
    })
}

fn fresh_owner_token(
    w: &World,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Value> + '_>> {
    Box::pin(async move {
        let data = w
            .app
            .gql_ok(
                Auth::Session(&w.owner),
                "mutation { createApiToken(org: \"alpha\", name: \"victim\", role: VIEWER) { apiToken { id } } }",
                json!({}),
            )
            .await;
        json!({ "id": data["createApiToken"]["apiToken"]["id"] })
    })
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "organization",
            query: "{ organization(slug: \"alpha\") { name viewerRole } }",
            min: Level::Viewer,
            user_only: false,
            prepare: no_vars,
        },
        Case {
            name: "members",
            query: "{ organization(slug: \"alpha\") { members { email role } } }",
            min: Level::Viewer,
            user_only: false,
            prepare: no_vars,
        },
        Case {
            name: "apiTokens",
            query: "{ organization(slug: \"alpha\") { apiTokens { id } } }",
            min: Level::Viewer,
            user_only: false,
            prepare: no_vars,
        },
        Case {
            name: "invitations",
            query: "{ organization(slug: \"alpha\") { invitations { email } } }",
            min: Level::Admin,
            user_only: false,
            prepare: no_vars,
        },
        Case {
            name: "auditLog",
            query: "{ organization(slug: \"alpha\") { auditLog(first: 5) { edges { node { action } } } } }",
            min: Level::Admin,
            user_only: false,
            prepare: no_vars,
        },
        Case {
            name: "billing",
            query: "{ organization(slug: \"alpha\") { billing { plan { id } pastDue usage { controlPlanes } } } }",
            min: Level::Admin,
            user_only: false,
            prepare: no_vars,
        },
        Case {
            name: "renameOrganization",
            query: "mutation { renameOrganization(slug: \"alpha\", name: \"Renamed\") { name } }",
            min: Level::Admin,
            user_only: false,
            prepare: no_vars,
        },
        Case {
            name: "inviteMember",
            query: "mutation($e: String!) { inviteMember(org: \"alpha\", email: $e, role: VIEWER) { acceptUrl } }",
            min: Level::Admin,
            user_only: true,
            prepare: fresh_email,
        },
        Case {
            name: "revokeInvitation",
            query: "mutation($id: UUID!) { revokeInvitation(org: \"alpha\", id: $id) }",
            min: Level::Admin,
            user_only: false,
            prepare: fresh_invitation,
        },
        Case {
            name: "changeMemberRole",
            query: "mutation($u: UUID!) { changeMemberRole(org: \"alpha\", userId: $u, role: VIEWER) { role } }",
            min: Level::Admin,
            user_only: false,
            prepare: target,
        },
        Case {
            name: "removeMember",
            query: "mutation($u: UUID!) { removeMember(org: \"alpha\", userId: $u) }",
            min: Level::Admin,
            user_only: false,
            prepare: fresh_member,
        },
        Case {
            name: "createApiToken",
            query: "mutation { createApiToken(org: \"alpha\", name: \"n\", role: VIEWER) { token } }",
            min: Level::Viewer,
            user_only: true,
            prepare: no_vars,
        },
        Case {
            name: "revokeApiToken (someone else's)",
            query: "mutation($id: UUID!) { revokeApiToken(org: \"alpha\", id: $id) { revokedAt } }",
            min: Level::Admin,
            user_only: false,
            prepare: fresh_owner_token,
        },
    ]
}

#[tokio::test]
async fn every_principal_gets_exactly_what_its_role_allows() {
    let world = World::new().await;
    let mut failures = Vec::new();
    for case in cases() {
        for who in everyone() {
            let vars = (case.prepare)(&world).await;
            let before = world.app.snapshot().await;
            let body = world.app.gql(world.auth(&who), case.query, vars).await;
            let want = expected(&who, case.min, case.user_only);
            let got = error_code(&body);
            if got.as_deref() != want {
                failures.push(format!(
                    "{} by {}: expected {want:?}, got {body}",
                    case.name,
                    who.label()
                ));
            }
            if want.is_some() && world.app.snapshot().await != before {
                failures.push(format!(
                    "{} by {}: refused but the database changed",
                    case.name,
                    who.label()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "role matrix mismatches:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn only_an_owner_can_delete_an_organization_and_only_with_confirmation() {
    let world = World::new().await;
    let delete = "mutation($c: String!) { deleteOrganization(slug: \"alpha\", confirmSlug: $c) }";
    for who in everyone() {
        if matches!(who, Who::Member(Level::Owner) | Who::Token(Level::Owner)) {
            continue;
        }
        let before = world.app.snapshot().await;
        let body = world
            .app
            .gql(world.auth(&who), delete, json!({ "c": "alpha" }))
            .await;
        assert_eq!(
            error_code(&body).as_deref(),
            expected(&who, Level::Owner, false),
            "{} got {body}",
            who.label()
        );
        assert_eq!(
            world.app.snapshot().await,
            before,
            "{}: database changed",
            who.label()
        );
    }
    let body = world
        .app
        .gql(
            Auth::Session(&world.owner),
            delete,
            json!({ "c": "alphaa" }),
        )
        .await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("INVALID_INPUT"),
        "{body}"
    );
    let data = world
        .app
        .gql_ok(Auth::Session(&world.owner), delete, json!({ "c": "alpha" }))
        .await;
    assert_eq!(data["deleteOrganization"], true);
    let body = world
        .app
        .gql(
            Auth::Session(&world.owner),
            "{ organization(slug: \"alpha\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("NOT_FOUND"));
    // The deletion itself is on record.
    let actions: Vec<String> =
        sqlx::query_scalar("select action from audit_log where action = 'organization.delete'")
            .fetch_all(&world.app.pool)
            .await
            .expect("audit");
    assert_eq!(actions.len(), 1);
}

#[tokio::test]
async fn an_admin_cannot_touch_owners_or_grant_ownership() {
    let world = World::new().await;
    let admin = world.auth(&Who::Member(Level::Admin));
    let owner_id = user_id(&world.app, &world.owner).await;
    let before = world.app.snapshot().await;
    for (query, vars) in [
        (
            "mutation($u: UUID!) { changeMemberRole(org: \"alpha\", userId: $u, role: MEMBER) { role } }",
            json!({ "u": owner_id }),
        ),
        (
            "mutation($u: UUID!) { removeMember(org: \"alpha\", userId: $u) }",
            json!({ "u": owner_id }),
        ),
        (
            "mutation($u: UUID!) { changeMemberRole(org: \"alpha\", userId: $u, role: OWNER) { role } }",
            json!({ "u": world.target }),
        ),
        (
            "mutation { inviteMember(org: \"alpha\", email: \"boss@alpha.test\", role: OWNER) { acceptUrl } }",
            json!({}),
        ),
        (
            "mutation { createApiToken(org: \"alpha\", name: \"up\", role: OWNER) { token } }",
            json!({}),
        ),
    ] {
        let body = world.app.gql(admin, query, vars).await;
        assert_eq!(
            error_code(&body).as_deref(),
            Some("FORBIDDEN"),
            "{query}: {body}"
        );
    }
    assert_eq!(world.app.snapshot().await, before);
}
