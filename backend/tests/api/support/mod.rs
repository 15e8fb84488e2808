//! Test harness: the real server on port 0 against its own fresh PostgreSQL database.

#![allow(dead_code)]

pub mod oidc;
pub mod stripe;

use std::time::Duration;

use qleet::config::{Config, Database, LogFormat, Mode};
use qleet::startup::Application;
use reqwest::header;
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;
use url::Url;

pub use qleet_test_support::db::fresh_database;
pub use qleet_test_support::error_code;

/// A running Qleet.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Qleet's data directory (pid files of control planes live under `run/`).
    pub data_dir: std::path::PathBuf,
    secret_key: SecretString,
    pub pool: PgPool,
    pub db_url: String,
    pub http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Someone signed in through the development sign-in.
#[derive(Clone, Debug)]
pub struct Session {
    pub email: String,
    pub cookie: String,
    pub csrf: String,
}

/// How a request authenticates.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    Anonymous,
    Session(&'a Session),
    Token(&'a str),
}

/// A config for tests: dev mode with the dev sign-in, no providers.
pub fn test_config(url: &str, db_url: &str) -> Config {
    Config {
        mode: Mode::Dev,
        listen: "127.0.0.1:0".parse().expect("addr"),
        public_url: Url::parse(url).expect("url"),
        database: Database::Url(SecretString::from(db_url.to_owned())),
        data_dir: std::env::temp_dir()
            .join(format!("qleet-test-{}", uuid::Uuid::new_v4().simple())),
        site_dir: std::path::PathBuf::from(
            std::env::var("QLEET_SITE_DIR").unwrap_or_else(|_| "../target/site".to_owned()),
        ),
        oidc_providers: Vec::new(),
        session_ttl: Duration::from_secs(3600),
        invitation_ttl: Duration::from_secs(3600),
        trust_proxy_headers: false,
        // Suites sign many people in and try many bad tokens from one address; the limits have
        // their own test with small budgets.
        rate_limits: qleet::limits::RateLimits {
            sign_ins_per_minute: 100_000,
            failed_authentications_per_minute: 100_000,
            agent_registrations_per_minute: 100_000,
        },
        log_format: LogFormat::Pretty,
        dev_sign_in: true,
        secret_key: SecretString::from(qleet::keys::Keys::generate_secret()),
        control_plane_binary: qleet_test_support::control_plane_binary(),
        billing: qleet::config::BillingConfig::dev_default(),
        hibernate_after: None,
        control_plane_retention: Duration::ZERO,
        provisioning_timeout: Duration::from_secs(900),
        runtime: qleet::config::Runtime::Process,
        introspection: qleet::config::Introspection::Anonymous,
    }
}

/// No plan limits: for tests that make many control planes.
pub fn unlimited(c: &mut Config) {
    c.billing.plans = qleet::billing::plans::Plans::from_config(
        Some(r#"[{"id":"big","name":"Big","control_planes":null,"agents":null,"objects":null}]"#),
        None,
        "big",
    )
    .expect("plans");
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(customize: impl FnOnce(&mut Config)) -> TestApp {
    spawn_on(
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        customize,
    )
    .await
}

/// Starts Qleet on an already bound listener (when a peer must know the URL first).
pub async fn spawn_on(listener: TcpListener, customize: impl FnOnce(&mut Config)) -> TestApp {
    let db_url = fresh_database().await;
    spawn_with_database(listener, db_url, customize).await
}

/// Starts another instance (replica) of `other`: the same management database and master
/// secret, its own address and data directory.
pub async fn spawn_replica(other: &TestApp, customize: impl FnOnce(&mut Config)) -> TestApp {
    let secret = other.secret_key.clone();
    spawn_with_database(
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        other.db_url.clone(),
        |c| {
            c.secret_key = secret;
            customize(c);
        },
    )
    .await
}

async fn spawn_with_database(
    listener: TcpListener,
    db_url: String,
    customize: impl FnOnce(&mut Config),
) -> TestApp {
    qleet::telemetry::init_logging(LogFormat::Pretty);
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let mut config = test_config(&url, &db_url);
    customize(&mut config);
    let data_dir = config.data_dir.clone();
    let secret_key = config.secret_key.clone();
    let app = Application::build(config, listener)
        .await
        .expect("build app");
    let pool = app.pool().clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    TestApp {
        url,
        data_dir,
        secret_key,
        pool,
        db_url,
        http,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    /// This app's master secret.
    pub fn secret(&self) -> String {
        use secrecy::ExposeSecret as _;
        self.secret_key.expose_secret().to_owned()
    }

    /// The keys derived from this app's master secret.
    pub fn keys(&self) -> qleet::keys::Keys {
        qleet::keys::Keys::from_secret(&self.secret_key).expect("keys")
    }

    /// Signs in through the development sign-in.
    pub async fn sign_in(&self, email: &str) -> Session {
        let resp = self
            .http
            .post(format!("{}/auth/dev", self.url))
            .form(&[("email", email), ("name", "")])
            .send()
            .await
            .expect("dev sign-in");
        assert_eq!(resp.status(), 303, "dev sign-in should redirect");
        let cookie = session_cookie(&resp).expect("session cookie");
        Session {
            email: email.to_owned(),
            csrf: qleet::identity::session::csrf_for(&cookie),
            cookie,
        }
    }

    /// Adds `auth` to a request to this app: the session cookie (with a same-origin `Origin`) or
    /// the bearer token.
    pub fn authed(&self, req: reqwest::RequestBuilder, auth: Auth<'_>) -> reqwest::RequestBuilder {
        match auth {
            Auth::Anonymous => req,
            Auth::Session(s) => req
                .header(header::COOKIE, format!("qleet_session={}", s.cookie))
                .header(header::ORIGIN, &self.url),
            Auth::Token(t) => req.bearer_auth(t),
        }
    }

    /// Sends a GraphQL request; returns the whole response body.
    pub async fn gql(&self, auth: Auth<'_>, query: &str, variables: Value) -> Value {
        let req = self
            .http
            .post(format!("{}/graphql", self.url))
            .json(&json!({ "query": query, "variables": variables }));
        self.authed(req, auth)
            .send()
            .await
            .expect("graphql request")
            .json()
            .await
            .expect("graphql json")
    }

    /// POSTs `body` to `path` of control plane `cp` through the management gateway
    /// (`/cp/{cp}/{path}`); returns the status and the JSON body (`null` if there is none).
    pub async fn gateway(
        &self,
        auth: Auth<'_>,
        cp: impl std::fmt::Display,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        let req = self
            .http
            .post(format!("{}/cp/{cp}/{path}", self.url))
            .json(&body);
        let resp = self.authed(req, auth).send().await.expect("gateway");
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }

    /// Like [`TestApp::gql`], but panics on errors and returns `data`.
    pub async fn gql_ok(&self, auth: Auth<'_>, query: &str, variables: Value) -> Value {
        let body = self.gql(auth, query, variables).await;
        assert!(body.get("errors").is_none(), "unexpected errors: {body:#}");
        body["data"].clone()
    }

    /// Creates an organisation owned by `owner`.
    pub async fn create_org(&self, owner: &Session, slug: &str) -> Value {
        self.gql_ok(
            Auth::Session(owner),
            "mutation($s: String!, $n: String!) { createOrganization(slug: $s, name: $n) { id slug } }",
            json!({ "s": slug, "n": format!("Org {slug}") }),
        )
        .await["createOrganization"]
            .clone()
    }

    /// Adds `email` to `org` with `role` through a real invitation.
    pub async fn add_member(&self, owner: &Session, org: &str, email: &str, role: &str) -> Session {
        let data = self
            .gql_ok(
                Auth::Session(owner),
                "mutation($o: String!, $e: String!, $r: Role!) { inviteMember(org: $o, email: $e, role: $r) { acceptUrl } }",
                json!({ "o": org, "e": email, "r": role }),
            )
            .await;
        let url = data["inviteMember"]["acceptUrl"]
            .as_str()
            .expect("acceptUrl")
            .to_owned();
        let token = url.rsplit('/').next().expect("token").to_owned();
        let member = self.sign_in(email).await;
        self.gql_ok(
            Auth::Session(&member),
            "mutation($t: String!) { acceptInvitation(token: $t) { slug } }",
            json!({ "t": token }),
        )
        .await;
        member
    }

    /// Creates an API token in `org` and returns its secret.
    pub async fn create_token(&self, user: &Session, org: &str, role: &str) -> String {
        let data = self
            .gql_ok(
                Auth::Session(user),
                "mutation($o: String!, $r: Role!) { createApiToken(org: $o, name: \"t\", role: $r) { token } }",
                json!({ "o": org, "r": role }),
            )
            .await;
        data["createApiToken"]["token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    /// A snapshot of the tables a refused mutation must leave untouched.
    pub async fn snapshot(&self) -> Value {
        let mut out = serde_json::Map::new();
        for table in [
            "organizations",
            "memberships",
            "invitations",
            "api_tokens",
            "audit_log",
        ] {
            let rows: Vec<(Value,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "select r from (select to_jsonb(t) - 'last_used_at' as r from {table} t) s order by r::text"
            )))
            .fetch_all(&self.pool)
            .await
            .expect("snapshot");
            out.insert(
                table.to_owned(),
                Value::Array(rows.into_iter().map(|r| r.0).collect()),
            );
        }
        Value::Object(out)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The session id a response sets, if any.
pub fn session_cookie(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.strip_prefix("qleet_session="))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
        .find(|v| !v.is_empty())
}

/// A GraphQL request at `url` + `path` with one credential header, same-origin; answers
/// `data`, failing on any error.
pub async fn graphql(
    url: &str,
    path: &str,
    (header, value): (&str, String),
    query: &str,
    variables: Value,
) -> Value {
    let body: Value = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .header(header, value)
        .header("origin", url)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .expect("graphql")
        .json()
        .await
        .expect("json");
    assert!(body.get("errors").is_none(), "{query}: {body:#}");
    body["data"].clone()
}
