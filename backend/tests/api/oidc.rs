//! Sign-in with a real OpenID provider (npm `oidc-provider` on loopback), and every way a
//! sign-in must be refused without creating a session.

use qleet::config::OidcProviderConfig;
use reqwest::header;
use secrecy::SecretString;
use serde_json::json;
use tokio::net::TcpListener;

use crate::support::oidc::{self, OidcProvider, authorize};
use crate::support::{Auth, Session, TestApp, session_cookie, spawn_on};

pub const CLIENT_ID: &str = "qleet-test";
pub const CLIENT_SECRET: &str = "qleet-test-secret";

/// Qleet with one provider, `test`, backed by a real `oidc-provider`.
pub async fn app_with_provider() -> (TestApp, OidcProvider) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let provider = OidcProvider::start(
        CLIENT_ID,
        CLIENT_SECRET,
        &format!("{url}/auth/callback/test"),
    )
    .await
    .expect("start the OpenID provider (scripts/test.sh installs it)");
    let issuer = provider.issuer.clone();
    let app = spawn_on(listener, move |c| {
        c.dev_sign_in = false;
        c.oidc_providers = vec![OidcProviderConfig {
            id: "test".into(),
            name: "Test IdP".into(),
            issuer,
            client_id: CLIENT_ID.into(),
            client_secret: SecretString::from(CLIENT_SECRET.to_owned()),
        }];
    })
    .await;
    (app, provider)
}

/// Starts a sign-in at Qleet: returns the `qleet_login` cookie and the provider URL.
async fn begin(app: &TestApp) -> (String, String) {
    oidc::begin(&app.http, &app.url, "test").await
}

/// Brings the provider's answer back to Qleet's callback.
async fn finish(app: &TestApp, login_cookie: &str, callback: &url::Url) -> reqwest::Response {
    oidc::finish(&app.http, &app.url, login_cookie, callback).await
}

fn callback_prefix(app: &TestApp) -> String {
    format!("{}/auth/callback/test", app.url)
}

async fn sessions(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from sessions")
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

/// Asserts a refused sign-in: back to the sign-in page with a readable reason, no session.
async fn assert_refused(app: &TestApp, resp: reqwest::Response, reason: &str) {
    assert_eq!(resp.status(), 303);
    assert!(
        session_cookie(&resp).is_none(),
        "no session cookie on a refused sign-in"
    );
    let location = resp.headers()[header::LOCATION]
        .to_str()
        .expect("location")
        .to_owned();
    let decoded: String = url::form_urlencoded::parse(
        location
            .split_once('?')
            .map(|x| x.1)
            .unwrap_or("")
            .as_bytes(),
    )
    .find(|(k, _)| k == "error")
    .map(|(_, v)| v.into_owned())
    .unwrap_or_default();
    assert!(location.starts_with("/signin?error="), "{location}");
    assert!(
        decoded.to_lowercase().contains(reason),
        "expected {reason:?} in {decoded:?}"
    );
    assert_eq!(sessions(app).await, 0, "no session stored");
}

#[tokio::test]
async fn signing_in_creates_the_user_once_and_a_working_session() {
    let (app, _provider) = app_with_provider().await;
    for _ in 0..2 {
        let (cookie, auth_url) = begin(&app).await;
        assert!(
            auth_url.contains("code_challenge_method=S256") && auth_url.contains("nonce="),
            "{auth_url}"
        );
        let callback = authorize(&auth_url, "alice", &callback_prefix(&app))
            .await
            .expect("authorize");
        let resp = finish(&app, &cookie, &callback).await;
        assert_eq!(resp.status(), 303);
        assert_eq!(resp.headers()[header::LOCATION], "/orgs");
        let set_cookies: Vec<_> = resp
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().expect("ascii").to_owned())
            .collect();
        let session_header = set_cookies
            .iter()
            .find(|c| c.starts_with("qleet_session="))
            .expect("session cookie");
        assert!(
            session_header.contains("HttpOnly") && session_header.contains("SameSite=Lax"),
            "{session_header}"
        );
        let raw = session_cookie(&resp).expect("session");
        let stored: bool =
            sqlx::query_scalar("select exists (select 1 from sessions where id_hash = $1)")
                .bind(qleet::identity::hash_secret(&raw))
                .fetch_one(&app.pool)
                .await
                .expect("query");
        assert!(stored, "the session is stored by hash");
        let session = Session {
            email: "alice@example.test".into(),
            csrf: qleet::identity::session::csrf_for(&raw),
            cookie: raw,
        };
        let me = app
            .gql_ok(
                Auth::Session(&session),
                "{ me { email emailVerified } }",
                json!({}),
            )
            .await;
        assert_eq!(me["me"]["email"], "alice@example.test");
        assert_eq!(me["me"]["emailVerified"], true);
    }
    let (users, identities): (i64, i64) =
        sqlx::query_as("select (select count(*) from users), (select count(*) from identities)")
            .fetch_one(&app.pool)
            .await
            .expect("counts");
    assert_eq!(
        (users, identities),
        (1, 1),
        "the second sign-in links to the same user"
    );
}

#[tokio::test]
async fn a_tampered_or_foreign_state_is_refused() {
    let (app, _provider) = app_with_provider().await;
    let (cookie, auth_url) = begin(&app).await;
    let callback = authorize(&auth_url, "alice", &callback_prefix(&app))
        .await
        .expect("authorize");
    let mut tampered = callback.clone();
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .map(|(k, v)| {
            if k == "state" {
                (k.into_owned(), format!("{v}x"))
            } else {
                (k.into_owned(), v.into_owned())
            }
        })
        .collect();
    tampered.query_pairs_mut().clear().extend_pairs(pairs);
    assert_refused(&app, finish(&app, &cookie, &tampered).await, "state").await;
    // The right state, but from a browser that did not start the sign-in.
    assert_refused(
        &app,
        finish(&app, "someone-elses", &callback).await,
        "state",
    )
    .await;
}

#[tokio::test]
async fn a_replayed_callback_or_code_is_refused() {
    let (app, _provider) = app_with_provider().await;
    let (cookie, auth_url) = begin(&app).await;
    let callback = authorize(&auth_url, "alice", &callback_prefix(&app))
        .await
        .expect("authorize");
    let first = finish(&app, &cookie, &callback).await;
    assert!(session_cookie(&first).is_some());
    sqlx::query("delete from sessions")
        .execute(&app.pool)
        .await
        .expect("reset");
    // The same callback again: the state is single use.
    assert_refused(&app, finish(&app, &cookie, &callback).await, "already used").await;
    // The old code under a fresh, valid state: the provider refuses the spent code.
    let (cookie2, auth_url2) = begin(&app).await;
    let callback2 = authorize(&auth_url2, "alice", &callback_prefix(&app))
        .await
        .expect("authorize");
    let mut replay = callback2.clone();
    let code = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .expect("code")
        .1
        .into_owned();
    let pairs: Vec<(String, String)> = callback2
        .query_pairs()
        .map(|(k, v)| {
            if k == "code" {
                (k.into_owned(), code.clone())
            } else {
                (k.into_owned(), v.into_owned())
            }
        })
        .collect();
    replay.query_pairs_mut().clear().extend_pairs(pairs);
    assert_refused(
        &app,
        finish(&app, &cookie2, &replay).await,
        "did not accept",
    )
    .await;
}

#[tokio::test]
async fn a_wrong_nonce_is_refused() {
    let (app, _provider) = app_with_provider().await;
    let (cookie, auth_url) = begin(&app).await;
    let callback = authorize(&auth_url, "alice", &callback_prefix(&app))
        .await
        .expect("authorize");
    sqlx::query("update oidc_logins set nonce = 'not-the-nonce-we-sent'")
        .execute(&app.pool)
        .await
        .expect("update");
    assert_refused(&app, finish(&app, &cookie, &callback).await, "nonce").await;
}

#[tokio::test]
async fn forged_id_tokens_are_refused() {
    let (app, provider) = app_with_provider().await;
    for (mode, reason) in [
        ("wrong_audience", "audience"),
        ("expired", "expired"),
        ("bad_signature", "signature"),
        ("wrong_issuer", "issuer"),
    ] {
        provider.set_mode(mode).await.expect("set mode");
        let (cookie, auth_url) = begin(&app).await;
        let callback = authorize(&auth_url, "alice", &callback_prefix(&app))
            .await
            .expect("authorize");
        let resp = finish(&app, &cookie, &callback).await;
        assert_refused(&app, resp, reason).await;
    }
    let users: i64 = sqlx::query_scalar("select count(*) from users")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(users, 0);
}

#[tokio::test]
async fn the_provider_refusing_is_reported_readably() {
    let (app, _provider) = app_with_provider().await;
    let (cookie, _) = begin(&app).await;
    let url = url::Url::parse(&format!(
        "{}/auth/callback/test?error=access_denied&error_description=User+cancelled&state=x",
        app.url
    ))
    .expect("url");
    assert_refused(&app, finish(&app, &cookie, &url).await, "access_denied").await;
}

#[tokio::test]
async fn an_unknown_provider_gets_a_readable_error() {
    let (app, _provider) = app_with_provider().await;
    let resp = app
        .http
        .get(format!("{}/auth/login/nope", app.url))
        .send()
        .await
        .expect("login");
    assert_refused(&app, resp, "no sign-in provider").await;
}
