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
