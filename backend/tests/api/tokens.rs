//! API tokens: shown once, bearer auth, revocation, expiry, role ceiling, hashed storage.

use serde_json::json;

use crate::support::{Auth, error_code, spawn_app};

#[tokio::test]
async fn a_token_is_shown_once_works_as_bearer_and_is_stored_only_hashed() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let data = app
        .gql_ok(
            Auth::Session(&alice),
            "mutation { createApiToken(org: \"acme\", name: \"ci\", role: MEMBER) { token apiToken { id prefix role } } }",
            json!({}),
        )
        .await;
    let token = data["createApiToken"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert!(token.starts_with("qleet_") && token.len() > 40, "{token}");
    assert!(
        token.starts_with(
            data["createApiToken"]["apiToken"]["prefix"]
                .as_str()
                .expect("prefix")
        )
    );

    // The database holds a hash, never the secret.
    let (hash, prefix): (Vec<u8>, String) =
        sqlx::query_as("select token_hash, prefix from api_tokens")
            .fetch_one(&app.pool)
            .await
            .expect("row");
    assert_eq!(hash, qleet::identity::hash_secret(&token));
    assert!(token.len() > prefix.len() + 20);
    let leaked: bool = sqlx::query_scalar(
        "select exists (select 1 from api_tokens t where to_jsonb(t)::text like '%' || $1 || '%')",
    )
    .bind(&token["qleet_".len()..])
    .fetch_one(&app.pool)
    .await
    .expect("query");
    assert!(!leaked, "the token secret is stored in clear");

    // Listing never shows it again.
    let listed = app
        .gql(
            Auth::Session(&alice),
            "{ organization(slug: \"acme\") { apiTokens { name prefix } } }",
            json!({}),
        )
        .await;
    assert!(!listed.to_string().contains(&token));

    // Works as a bearer, with the token's role.
    let me = app
        .gql_ok(
            Auth::Token(&token),
            "{ me { email organizations { role organization { slug } } } }",
            json!({}),
        )
        .await;
    assert_eq!(me["me"]["email"], "alice@example.test");
    assert_eq!(me["me"]["organizations"][0]["role"], "MEMBER");
    assert_eq!(me["me"]["organizations"][0]["organization"]["slug"], "acme");
    let used: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("select last_used_at from api_tokens")
            .fetch_one(&app.pool)
            .await
            .expect("row");
    assert!(used.is_some(), "last used time is recorded");

    // Revoked: refused.
    let id = data["createApiToken"]["apiToken"]["id"].clone();
    app.gql_ok(
        Auth::Session(&alice),
        "mutation($id: UUID!) { revokeApiToken(org: \"acme\", id: $id) { revokedAt } }",
        json!({ "id": id }),
    )
    .await;
    let body = app
        .gql(Auth::Token(&token), "{ me { email } }", json!({}))
        .await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("UNAUTHENTICATED"),
        "{body}"
    );
}

#[tokio::test]
async fn expired_malformed_and_unknown_tokens_are_refused() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let token = app.create_token(&alice, "acme", "VIEWER").await;
    sqlx::query("update api_tokens set expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .expect("expire");
    for bad in [token.as_str(), "qleet_nope", "not-a-token", ""] {
        let body = app
            .gql(Auth::Token(bad), "{ me { email } }", json!({}))
            .await;
        assert_eq!(
            error_code(&body).as_deref(),
            Some("UNAUTHENTICATED"),
            "{bad:?}: {body}"
        );
    }
    // An expiry in the past is refused at creation.
    let body = app
        .gql(
            Auth::Session(&alice),
            "mutation { createApiToken(org: \"acme\", name: \"old\", role: VIEWER, expiresAt: \"2001-01-01T00:00:00Z\") { token } }",
            json!({}),
        )
        .await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("INVALID_INPUT"),
        "{body}"
    );
}

#[tokio::test]
async fn a_token_cannot_exceed_its_creators_role_even_after_a_demotion() {
    let app = spawn_app().await;
    let owner = app.sign_in("owner@example.test").await;
    app.create_org(&owner, "acme").await;
    let member = app
        .add_member(&owner, "acme", "member@example.test", "MEMBER")
        .await;
    let body = app
        .gql(
            Auth::Session(&member),
            "mutation { createApiToken(org: \"acme\", name: \"x\", role: ADMIN) { token } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("FORBIDDEN"), "{body}");

    let admin = app
        .add_member(&owner, "acme", "admin@example.test", "ADMIN")
        .await;
    let token = app.create_token(&admin, "acme", "ADMIN").await;
    let rename = "mutation { renameOrganization(slug: \"acme\", name: \"Acme 2\") { name } }";
    app.gql_ok(Auth::Token(&token), rename, json!({})).await;
    // The admin is demoted to viewer: their token drops to viewer too.
    let admin_id = app
        .gql_ok(Auth::Session(&admin), "{ me { id } }", json!({}))
        .await["me"]["id"]
        .clone();
    app.gql_ok(
        Auth::Session(&owner),
        "mutation($u: UUID!) { changeMemberRole(org: \"acme\", userId: $u, role: VIEWER) { role } }",
        json!({ "u": admin_id }),
    )
    .await;
    let body = app.gql(Auth::Token(&token), rename, json!({})).await;
    assert_eq!(error_code(&body).as_deref(), Some("FORBIDDEN"), "{body}");
    // Removed from the organisation: the token stops working.
    app.gql_ok(
        Auth::Session(&owner),
        "mutation($u: UUID!) { removeMember(org: \"acme\", userId: $u) }",
        json!({ "u": admin_id }),
    )
    .await;
    let body = app
        .gql(Auth::Token(&token), "{ me { email } }", json!({}))
        .await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("UNAUTHENTICATED"),
        "{body}"
    );
}

#[tokio::test]
async fn tokens_cannot_create_organizations_or_tokens() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let token = app.create_token(&alice, "acme", "OWNER").await;
    for q in [
        "mutation { createOrganization(slug: \"other\", name: \"Other\") { id } }",
        "mutation { createApiToken(org: \"acme\", name: \"child\", role: VIEWER) { token } }",
    ] {
        let body = app.gql(Auth::Token(&token), q, json!({})).await;
        assert_eq!(
            error_code(&body).as_deref(),
            Some("FORBIDDEN"),
            "{q}: {body}"
        );
    }
}
