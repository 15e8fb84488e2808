//! Starting Qleet for a test, and running `qleetctl` against it.

#![allow(dead_code)]

#[path = "../../../backend/tests/api/support/oidc.rs"]
pub mod oidc;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use qleet::config::{Config, Database, LogFormat, Mode};
use qleet::startup::Application;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use url::Url;

/// A running Qleet plus a private config directory for `qleetctl`.
pub struct TestApp {
    pub url: String,
    pub config_dir: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_dir_all(&self.config_dir);
    }
}

impl TestApp {
    /// A Qleet running elsewhere (e.g. a `qleet dev` child process) at `url`, with `config_dir`
    /// for `qleetctl`.
    pub fn external(url: String, config_dir: PathBuf) -> TestApp {
        TestApp {
            url,
            config_dir,
            shutdown: None,
        }
    }
}

/// Starts Qleet (dev mode, process driver) on `listener`, customised by `customize`.
pub async fn spawn_on(listener: TcpListener, customize: impl FnOnce(&mut Config)) -> TestApp {
    qleet::telemetry::init_logging(LogFormat::Pretty);
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let db = qleet_test_support::db::fresh_database().await;
    let scratch =
        std::env::temp_dir().join(format!("qleetctl-test-{}", uuid::Uuid::new_v4().simple()));
    let mut config = Config {
        mode: Mode::Dev,
        listen: "127.0.0.1:0".parse().expect("addr"),
        public_url: Url::parse(&url).expect("url"),
        database: Database::Url(SecretString::from(db)),
        data_dir: scratch.join("data"),
        site_dir: PathBuf::from("../target/site"),
        oidc_providers: Vec::new(),
        session_ttl: Duration::from_secs(3600),
        invitation_ttl: Duration::from_secs(3600),
        trust_proxy_headers: false,
        rate_limits: qleet::limits::RateLimits::default(),
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
    };
    customize(&mut config);
    let app = Application::build(config, listener)
        .await
        .expect("build app");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    let config_dir = scratch.join("config");
    TestApp {
        url,
        config_dir,
        shutdown: Some(tx),
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_on(
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        |_| {},
    )
    .await
}

/// What a `qleetctl` run gave.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts success and answers stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "qleetctl failed: {self:#?}");
        &self.stdout
    }

    /// Asserts exit `code` with a one-line error on stderr; answers that line.
    #[track_caller]
    pub fn fails(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "unexpected exit: {self:#?}");
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "one error line expected: {self:#?}");
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        errors[0]
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }
}

/// A `qleetctl` command with a clean environment pointing at `config_dir`.
pub fn command(config_dir: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_qleetctl"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("QLEET_CONFIG_DIR", config_dir)
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    cmd
}

/// Runs `qleetctl args` (with `env`) to completion (2 minutes at most).
pub async fn run_env(config_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = command(config_dir);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("qleetctl {args:?} did not finish"))
        .expect("run qleetctl");
    Run::from(out)
}

pub async fn run(app: &TestApp, args: &[&str]) -> Run {
    run_env(&app.config_dir, &[], args).await
}

/// A development sign-in: the session cookie.
pub async fn dev_session(app: &TestApp, email: &str) -> String {
    qleet_test_support::dev_session(&app.url, email).await
}

/// GraphQL with a session cookie (same-origin), panicking on errors; answers `data`.
pub async fn gql_session(app: &TestApp, cookie: &str, query: &str, variables: Value) -> Value {
    let body: Value = reqwest::Client::new()
        .post(format!("{}/graphql", app.url))
        .header("cookie", format!("qleet_session={cookie}"))
        .header("origin", &app.url)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .expect("graphql")
        .json()
        .await
        .expect("json");
    assert!(body.get("errors").is_none(), "{body:#}");
    body["data"].clone()
}

/// A person with an organisation `org` they own, and an owner API token for it.
pub async fn owner_with_token(app: &TestApp, email: &str, org: &str) -> String {
    let cookie = dev_session(app, email).await;
    gql_session(
        app,
        &cookie,
        "mutation($s: String!) { createOrganization(slug: $s, name: $s) { id } }",
        json!({ "s": org }),
    )
    .await;
    let data = gql_session(
        app,
        &cookie,
        "mutation($o: String!) { createApiToken(org: $o, name: \"ci\", role: OWNER) { token } }",
        json!({ "o": org }),
    )
    .await;
    data["createApiToken"]["token"]
        .as_str()
        .expect("token")
        .to_owned()
}
