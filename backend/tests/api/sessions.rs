//! Browser sessions: sign-out, expiry, and the GraphiQL page.

use serde_json::json;

use crate::support::{Auth, error_code, spawn_app};

#[tokio::test]
async fn signing_out_needs_the_csrf_token_and_ends_the_session() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    let logout = |csrf: &str| {
        app.http
            .post(format!("{}/auth/logout", app.url))
            .header("cookie", format!("qleet_session={}", alice.cookie))
            .header("origin", &app.url)
            .form(&[("csrf", csrf.to_owned())])
            .send()
    };
    let refused = logout("forged").await.expect("logout");
    assert_eq!(refused.status(), 403);
    app.gql_ok(Auth::Session(&alice), "{ me { email } }", json!({}))
        .await;

    let done = logout(&alice.csrf).await.expect("logout");
    assert_eq!(done.status(), 303);
    let cleared = done.headers()["set-cookie"].to_str().expect("ascii");
    assert!(
        cleared.starts_with("qleet_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let body = app
        .gql(Auth::Session(&alice), "{ me { email } }", json!({}))
        .await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("UNAUTHENTICATED"),
        "{body}"
    );
    let left: i64 = sqlx::query_scalar("select count(*) from sessions")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(left, 0);
}

#[tokio::test]
async fn an_expired_session_is_anonymous() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    sqlx::query("update sessions set expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .expect("expire");
    let body = app
        .gql(Auth::Session(&alice), "{ me { email } }", json!({}))
        .await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("UNAUTHENTICATED"),
        "{body}"
    );
}

#[tokio::test]
async fn graphiql_is_served_to_browsers_and_get_never_executes() {
    let app = spawn_app().await;
    let page = app
        .http
        .get(format!("{}/graphql", app.url))
        .send()
        .await
        .expect("get");
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .expect("html")
            .to_lowercase()
            .contains("graphiql")
    );
    let mutation_by_get = app
        .http
        .get(format!(
            "{}/graphql?query=mutation%7BcreateOrganization(slug:%22x%22,name:%22x%22)%7Bid%7D%7D",
            app.url
        ))
        .send()
        .await
        .expect("get");
    assert!(
        mutation_by_get
            .text()
            .await
            .expect("body")
            .to_lowercase()
            .contains("graphiql")
    );
    let orgs: i64 = sqlx::query_scalar("select count(*) from organizations")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(orgs, 0);
}

#[tokio::test]
async fn ui_forms_need_the_sessions_csrf_token() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    let post = |csrf: &str| {
        app.http
            .post(format!("{}/api/create_organization", app.url))
            .header("cookie", format!("qleet_session={}", alice.cookie))
            .header("origin", &app.url)
            .header("accept", "application/json")
            .form(&[("csrf", csrf), ("slug", "acme"), ("name", "Acme")])
            .send()
    };
    let forged = post("forged").await.expect("post");
    assert!(!forged.status().is_success(), "{}", forged.status());
    let text = forged.text().await.expect("body");
    assert!(
        text.contains("CSRF") || text.to_lowercase().contains("reload"),
        "{text}"
    );
    let orgs: i64 = sqlx::query_scalar("select count(*) from organizations")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(orgs, 0);
    let ok = post(&alice.csrf).await.expect("post");
    assert!(
        ok.status().is_success() || ok.status().is_redirection(),
        "{}",
        ok.status()
    );
    let orgs: i64 = sqlx::query_scalar("select count(*) from organizations")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(orgs, 1);
}

#[tokio::test]
async fn the_development_sign_in_does_not_exist_when_disabled() {
    let app = crate::support::spawn_app_with(|c| c.dev_sign_in = false).await;
    let resp = app
        .http
        .post(format!("{}/auth/dev", app.url))
        .form(&[("email", "x@example.test")])
        .send()
        .await
        .expect("post");
    assert!(
        resp.status() == 404 || resp.status() == 405,
        "{}",
        resp.status()
    );
    let users: i64 = sqlx::query_scalar("select count(*) from users")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(users, 0);
    let page = app
        .http
        .get(format!("{}/signin", app.url))
        .send()
        .await
        .expect("signin");
    assert!(
        !page
            .text()
            .await
            .expect("html")
            .contains("signin-dev-email")
    );
}
