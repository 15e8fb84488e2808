//! Organisations, members and invitations: the happy paths and bad input.

use serde_json::json;

use crate::support::{Auth, error_code, spawn_app};

#[tokio::test]
async fn bad_slugs_and_names_are_refused_and_nothing_is_written() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let before = app.snapshot().await;
    let long = "a".repeat(41);
    let cases = [
        ("", "Name", "INVALID_INPUT"),
        ("ab", "Name", "INVALID_INPUT"),
        (long.as_str(), "Name", "INVALID_INPUT"),
        ("аcme", "Cyrillic a", "INVALID_INPUT"),
        ("ACME", "Upper", "INVALID_INPUT"),
        ("acme", "Duplicate", "CONFLICT"),
        ("fine-slug", "   ", "INVALID_INPUT"),
    ];
    for (slug, name, code) in cases {
        let body = app
            .gql(
                Auth::Session(&alice),
                "mutation($s: String!, $n: String!) { createOrganization(slug: $s, name: $n) { id } }",
                json!({ "s": slug, "n": name }),
            )
            .await;
        assert_eq!(error_code(&body).as_deref(), Some(code), "{slug:?}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or("");
        assert!(
            !message.is_empty() && !message.contains("internal"),
            "{message}"
        );
    }
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn the_last_owner_cannot_leave_or_be_demoted() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let alice_id = app
        .gql_ok(Auth::Session(&alice), "{ me { id } }", json!({}))
        .await["me"]["id"]
        .clone();
    let before = app.snapshot().await;
    for q in [
        "mutation($u: UUID!) { removeMember(org: \"acme\", userId: $u) }",
        "mutation($u: UUID!) { changeMemberRole(org: \"acme\", userId: $u, role: ADMIN) { role } }",
    ] {
        let body = app
            .gql(Auth::Session(&alice), q, json!({ "u": alice_id }))
            .await;
        assert_eq!(error_code(&body).as_deref(), Some("CONFLICT"), "{body}");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap_or("")
                .contains("at least one owner")
        );
    }
    assert_eq!(app.snapshot().await, before);
    // With a second owner, the first may step down.
    let bob = app
        .add_member(&alice, "acme", "bob@example.test", "OWNER")
        .await;
    app.gql_ok(
        Auth::Session(&alice),
        "mutation($u: UUID!) { changeMemberRole(org: \"acme\", userId: $u, role: ADMIN) { role } }",
        json!({ "u": alice_id }),
    )
    .await;
    let bob_id = app
        .gql_ok(Auth::Session(&bob), "{ me { id } }", json!({}))
        .await["me"]["id"]
        .clone();
    let body = app
        .gql(
            Auth::Session(&bob),
            "mutation($u: UUID!) { removeMember(org: \"acme\", userId: $u) }",
            json!({ "u": bob_id }),
        )
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("CONFLICT"), "{body}");
}

#[tokio::test]
async fn an_invitation_is_single_use_and_only_for_its_address() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let data = app
        .gql_ok(
            Auth::Session(&alice),
            "mutation { inviteMember(org: \"acme\", email: \"Bob@Example.test\", role: MEMBER) { acceptUrl invitation { email role expiresAt } } }",
            json!({}),
        )
        .await;
    let url = data["inviteMember"]["acceptUrl"]
        .as_str()
        .expect("url")
        .to_owned();
    assert!(
        url.starts_with(&format!("{}/invitations/", app.url)),
        "{url}"
    );
    let token = url.rsplit('/').next().expect("token").to_owned();
    let accept = "mutation($t: String!) { acceptInvitation(token: $t) { slug viewerRole } }";

    // Someone else's invitation: refused, nothing changes.
    let mallory = app.sign_in("mallory@example.test").await;
    let before = app.snapshot().await;
    let body = app
        .gql(Auth::Session(&mallory), accept, json!({ "t": token }))
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("FORBIDDEN"), "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("for someone else")
    );
    assert_eq!(app.snapshot().await, before);

    // A second invitation to the same address while one is open: refused.
    let body = app
        .gql(Auth::Session(&alice), "mutation { inviteMember(org: \"acme\", email: \"bob@example.test\", role: VIEWER) { acceptUrl } }", json!({}))
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("CONFLICT"), "{body}");

    // The invitee (email matched case-insensitively) joins with the invited role.
    let bob = app.sign_in("bob@example.test").await;
    let joined = app
        .gql_ok(Auth::Session(&bob), accept, json!({ "t": token }))
        .await;
    assert_eq!(joined["acceptInvitation"]["viewerRole"], "MEMBER");
    // Single use.
    let body = app
        .gql(Auth::Session(&bob), accept, json!({ "t": token }))
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("CONFLICT"), "{body}");
    // Unknown token.
    let body = app
        .gql(Auth::Session(&bob), accept, json!({ "t": "nope" }))
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("NOT_FOUND"), "{body}");
    // Invitations to existing members are refused.
    let body = app
        .gql(Auth::Session(&alice), "mutation { inviteMember(org: \"acme\", email: \"bob@example.test\", role: VIEWER) { acceptUrl } }", json!({}))
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("CONFLICT"), "{body}");
}

#[tokio::test]
async fn expired_and_revoked_invitations_cannot_be_accepted() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let invite = "mutation($e: String!) { inviteMember(org: \"acme\", email: $e, role: MEMBER) { acceptUrl invitation { id } } }";
    let accept = "mutation($t: String!) { acceptInvitation(token: $t) { slug } }";
    let token_of = |v: &serde_json::Value| {
        v["inviteMember"]["acceptUrl"]
            .as_str()
            .expect("url")
            .rsplit('/')
            .next()
            .expect("t")
            .to_owned()
    };

    let expired = app
        .gql_ok(
            Auth::Session(&alice),
            invite,
            json!({ "e": "carol@example.test" }),
        )
        .await;
    sqlx::query("update invitations set expires_at = now() - interval '1 minute'")
        .execute(&app.pool)
        .await
        .expect("expire");
    let carol = app.sign_in("carol@example.test").await;
    let body = app
        .gql(
            Auth::Session(&carol),
            accept,
            json!({ "t": token_of(&expired) }),
        )
        .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("expired"),
        "{body}"
    );

    // Expired invitations do not block a new one; a revoked one cannot be used.
    let fresh = app
        .gql_ok(
            Auth::Session(&alice),
            invite,
            json!({ "e": "carol@example.test" }),
        )
        .await;
    app.gql_ok(
        Auth::Session(&alice),
        "mutation($id: UUID!) { revokeInvitation(org: \"acme\", id: $id) }",
        json!({ "id": fresh["inviteMember"]["invitation"]["id"] }),
    )
    .await;
    let body = app
        .gql(
            Auth::Session(&carol),
            accept,
            json!({ "t": token_of(&fresh) }),
        )
        .await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("revoked"),
        "{body}"
    );
    let members: i64 = sqlx::query_scalar("select count(*) from memberships")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(members, 1);
}

#[tokio::test]
async fn bad_emails_are_refused() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    for email in ["", "bob", "bob@", "bob @example.test"] {
        let body = app
            .gql(Auth::Session(&alice), "mutation($e: String!) { inviteMember(org: \"acme\", email: $e, role: MEMBER) { acceptUrl } }", json!({ "e": email }))
            .await;
        assert_eq!(
            error_code(&body).as_deref(),
            Some("INVALID_INPUT"),
            "{email:?}: {body}"
        );
        assert_eq!(body["errors"][0]["extensions"]["field"], "email");
    }
}

#[tokio::test]
async fn a_cross_site_post_with_the_session_cookie_is_refused() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    let resp = app
        .http
        .post(format!("{}/graphql", app.url))
        .header("cookie", format!("qleet_session={}", alice.cookie))
        .header("origin", "https://evil.example")
        .json(&json!({ "query": "mutation { createOrganization(slug: \"evil\", name: \"Evil\") { id } }" }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "CSRF");
    let orgs: i64 = sqlx::query_scalar("select count(*) from organizations")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(orgs, 0);
}

#[tokio::test]
async fn expensive_queries_are_refused_before_they_run() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let normal = "{ me { organizations { organization { members { email } } } } }";
    app.gql_ok(Auth::Session(&alice), normal, json!({})).await;
    let aliased = |n: usize| {
        let fields: String = (0..n)
            .map(|i| {
                format!("a{i}: auditLog(first: 200) {{ edges {{ node {{ action changes }} }} }} ")
            })
            .collect();
        format!("{{ organization(slug: \"acme\") {{ {fields} }} }}")
    };
    // Within the alias limit, but each alias asks for 200 entries: too complex.
    let body = app
        .gql(Auth::Session(&alice), &aliased(20), json!({}))
        .await;
    let msg = body["errors"][0]["message"].as_str().unwrap_or("");
    assert!(msg.contains("complex"), "{body}");
    assert_eq!(
        error_code(&body).as_deref(),
        Some("QUERY_TOO_COMPLEX"),
        "{body}"
    );
    // Past the alias limit: refused on its size before its complexity is even counted.
    let body = app
        .gql(Auth::Session(&alice), &aliased(40), json!({}))
        .await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("QUERY_TOO_LARGE"),
        "{body}"
    );
}
