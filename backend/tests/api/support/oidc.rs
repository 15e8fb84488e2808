//! A real OpenID provider for API tests: `tests/oidc/provider.mjs` (the `oidc-provider` npm
//! package) run by Node on a loopback port, plus a browser-less driver of its login forms.
//!
//! ```ignore
//! let idp = OidcProvider::start("qleet", "s3cret", "http://127.0.0.1:PORT/auth/callback").await?;
//! // configure the backend with issuer = idp.issuer, then ask it to start a sign-in:
//! let callback = oidc::authorize(&auth_url_from_backend, "alice", "http://127.0.0.1:PORT/auth/callback").await?;
//! // request `callback` with the backend's client (it carries `code`, `state` and `iss`)
//! idp.set_mode("expired").await?; // next ID tokens are expired (see `set_mode`)
//! ```
//!
//! Needs `node` (20+) on PATH (or `NODE=/path/to/node`) and `npm ci` run in `tests/`
//! (scripts/test.sh does both). `QLEET_TESTS_DIR` overrides where `tests/` is.
#![allow(dead_code)] // not every test binary uses every helper

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use url::Url;

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_LOGIN_STEPS: usize = 20;

/// The ID-token tampering modes `tests/oidc/provider.mjs` knows.
pub const MODES: &[&str] = &[
    "normal",
    "wrong_audience",
    "expired",
    "bad_signature",
    "wrong_issuer",
    "wrong_nonce",
];

/// A running `tests/oidc/provider.mjs`. The Node process is killed when this is dropped (and it
/// also exits by itself when its stdin, held here, closes).
pub struct OidcProvider {
    /// `http://127.0.0.1:PORT`, no trailing slash; discovery is at
    /// `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    child: Child,
    stderr: Arc<Mutex<String>>,
    http: reqwest::Client,
}

impl OidcProvider {
    /// Starts `tests/oidc/provider.mjs` on a free loopback port with one confidential client
    /// (token endpoint auth `client_secret_basic`, oidc-provider's default; grant types
    /// `authorization_code` and `refresh_token`; PKCE S256 required), and waits (10 s at most)
    /// for its `READY` line. Errors clearly if `node` or `tests/node_modules` is missing.
    pub async fn start(
        client_id: &str,
        client_secret: &str,
        redirect_uri: &str,
    ) -> anyhow::Result<Self> {
        let clients = serde_json::json!([{
            "client_id": client_id,
            "client_secret": client_secret,
            "redirect_uris": [redirect_uri],
        }]);
        Self::start_with_clients(&clients).await
    }

    /// Like [`OidcProvider::start`], with `clients` passed as-is as `OIDC_CLIENTS` (a JSON array
    /// of oidc-provider client metadata: `client_id`, `client_secret`, `redirect_uris`, and e.g.
    /// `token_endpoint_auth_method` or `post_logout_redirect_uris`).
    pub async fn start_with_clients(clients: &serde_json::Value) -> anyhow::Result<Self> {
        let tests_dir = tests_dir();
        let script = tests_dir.join("oidc").join("provider.mjs");
        if !script.is_file() {
            bail!(
                "OIDC test provider script not found at {}",
                script.display()
            );
        }
        let package = tests_dir
            .join("node_modules")
            .join("oidc-provider")
            .join("package.json");
        if !package.is_file() {
            bail!(
                "{} is missing: the OIDC test provider needs its npm packages; run scripts/test.sh \
                 (or `npm ci` in {})",
                package.display(),
                tests_dir.display()
            );
        }
        let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());

        let mut child = Command::new(&node)
            .arg(&script)
            .current_dir(&tests_dir)
            .env("OIDC_PORT", "0")
            .env("OIDC_CLIENTS", clients.to_string())
            .env_remove("OIDC_IGNORE_STDIN")
            .env_remove("NODE_OPTIONS")
            .stdin(Stdio::piped()) // kept open in `child`; the provider exits when it closes
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    anyhow!(
                        "`{}` not found: the OIDC test provider needs Node.js 20+ on PATH (or \
                         NODE=/path/to/node); run scripts/test.sh",
                        node.to_string_lossy()
                    )
                } else {
                    anyhow!(e).context(format!(
                        "spawning {} {}",
                        node.to_string_lossy(),
                        script.display()
                    ))
                }
            })?;

        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_task =
            collect_lines(child.stderr.take().context("child stderr")?, stderr.clone());
        let stdout = child.stdout.take().context("child stdout")?;

        let mut lines = BufReader::new(stdout).lines();
        let waited = tokio::time::timeout(READY_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(issuer) = line.strip_prefix("READY ") {
                    return Ok(Some(issuer.trim().to_owned()));
                }
                // Not expected (the script keeps stdout for READY alone); keep it for errors.
                push_line(&stderr, &format!("[stdout] {line}"));
            }
            Ok::<_, std::io::Error>(None)
        })
        .await;

        let failure = match waited {
            Ok(Ok(Some(issuer))) => {
                // Keep draining stdout so the child can never block on a full pipe.
                let sink = stderr.clone();
                tokio::spawn(async move {
                    while let Ok(Some(line)) = lines.next_line().await {
                        push_line(&sink, &format!("[stdout] {line}"));
                    }
                });
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()?;
                return Ok(Self {
                    issuer,
                    child,
                    stderr,
                    http,
                });
            }
            Ok(Ok(None)) => "exited before printing READY".to_owned(),
            Ok(Err(e)) => format!("reading its stdout failed: {e}"),
            Err(_) => format!("printed no READY line within {READY_TIMEOUT:?}"),
        };
        let _ = child.start_kill();
        let status = tokio::time::timeout(Duration::from_secs(3), child.wait()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), stderr_task).await;
        let status = match status {
            Ok(Ok(s)) => s.to_string(),
            _ => "exit status unknown".to_owned(),
        };
        let log = lock(&stderr).clone();
        bail!(
            "OIDC test provider ({} {}) {failure} ({status}); its stderr:\n{log}",
            node.to_string_lossy(),
            script.display()
        )
    }

    /// Sets how the token endpoint alters the `id_token` it returns, until changed:
    /// `normal` (untouched), `wrong_audience` (aud = "someone-else"), `expired`
    /// (exp = now-600, iat = now-1200), `bad_signature` (signed by another key under the same
    /// kid), `wrong_issuer` (iss = "http://evil.test"), `wrong_nonce` (nonce =
    /// "not-the-nonce-you-sent"). Altered tokens are otherwise real and re-signed with the
    /// provider's own key, so exactly one check fails in each mode.
    pub async fn set_mode(&self, mode: &str) -> anyhow::Result<()> {
        let url = format!("{}/__test/mode", self.issuer);
        let res = self
            .http
            .post(&url)
            .json(&serde_json::json!({ "mode": mode }))
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = res.status();
        if !status.is_success() {
            let body = res.text().await.unwrap_or_default();
            bail!("POST {url} (mode {mode:?}) → {status}: {body}");
        }
        Ok(())
    }

    /// `{issuer}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// What the provider wrote to stderr so far (oidc-provider's warnings, `grant.error` and
    /// `authorization.error` lines, mode changes): useful in assertion messages.
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// Whether the Node process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Drives a login through the provider's development interactions without a browser.
///
/// Starting at `auth_url` (the authorization URL the relying party redirected to), follows
/// `/auth` → `/interaction/UID` (login form: POST `prompt=login&login=LOGIN&password=x`) →
/// `/auth/UID` → `/interaction/UID2` (consent form: POST `prompt=consent`) → `/auth/UID2` → …
/// until a redirect whose target starts with `redirect_uri_prefix`, and returns that target
/// (with `code`, `state` and `iss`, or `error` if the provider refused) WITHOUT requesting it.
///
/// Each call uses a fresh cookie jar, i.e. a new browser session: no single sign-on carries over
/// from an earlier call.
pub async fn authorize(
    auth_url: &str,
    login: &str,
    redirect_uri_prefix: &str,
) -> anyhow::Result<Url> {
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()?;

    let mut url =
        Url::parse(auth_url).with_context(|| format!("authorization URL {auth_url:?}"))?;
    let mut form: Option<Vec<(&str, &str)>> = None; // POST this to `url` instead of GET
    let mut trail: Vec<String> = Vec::new();

    for _ in 0..MAX_LOGIN_STEPS {
        let req = match form.take() {
            Some(fields) => {
                trail.push(format!("POST {url} ({})", fields[0].1));
                http.post(url.clone()).form(&fields)
            }
            None => {
                trail.push(format!("GET {url}"));
                http.get(url.clone())
            }
        };
        let res = req
            .send()
            .await
            .with_context(|| format!("login step {}", trail.join(" → ")))?;
        let status = res.status();

        if status.is_redirection() {
            let location = res
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .with_context(|| {
                    format!(
                        "{status} without a Location header after {}",
                        trail.join(" → ")
                    )
                })?;
            let next = url
                .join(location)
                .with_context(|| format!("bad Location {location:?}"))?;
            if next.as_str().starts_with(redirect_uri_prefix) {
                return Ok(next);
            }
            url = next;
            continue;
        }

        let body = res.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!(
                "OIDC login: {status} after {}: {}",
                trail.join(" → "),
                page_text(&body)
            );
        }
        // A 200 page: one of the development interaction forms.
        if let Some(action) = form_action(&body) {
            if url
                .join(&action)
                .map(|a| a.as_str().starts_with(redirect_uri_prefix))
                .unwrap_or(false)
            {
                bail!(
                    "OIDC login: the provider answers with a form_post to the redirect URI; \
                     authorize() supports response_mode=query only"
                );
            }
            let target = url
                .join(&action)
                .with_context(|| format!("bad form action {action:?}"))?;
            if body.contains(r#"name="prompt" value="login""#) {
                form = Some(vec![
                    ("prompt", "login"),
                    ("login", login),
                    ("password", "x"),
                ]);
            } else if body.contains(r#"name="prompt" value="consent""#) {
                form = Some(vec![("prompt", "consent")]);
            } else {
                bail!(
                    "OIDC login: unexpected form after {}: {}",
                    trail.join(" → "),
                    page_text(&body)
                );
            }
            url = target;
            continue;
        }
        bail!(
            "OIDC login: page without a form after {}: {}",
            trail.join(" → "),
            page_text(&body)
        );
    }
    bail!(
        "OIDC login: no redirect to {redirect_uri_prefix} after {MAX_LOGIN_STEPS} steps: {}",
        trail.join(" → ")
    )
}

/// `tests/` of the repository (where `package.json` and `node_modules/` live).
fn tests_dir() -> PathBuf {
    match std::env::var_os("QLEET_TESTS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("tests"),
    }
}

fn lock(log: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn push_line(log: &Mutex<String>, line: &str) {
    let mut log = lock(log);
    // Bounded: keep the first 64 KiB, which holds the start-up errors that matter.
    if log.len() < 64 * 1024 {
        log.push_str(line);
        log.push('\n');
    }
}

fn collect_lines<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
    log: Arc<Mutex<String>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            push_line(&log, &line);
        }
    })
}

/// The `action` of the first `<form>` in `html`.
fn form_action(html: &str) -> Option<String> {
    let form = &html[html.find("<form")?..];
    let form = &form[..form.find('>')?];
    let start = form.find("action=\"")? + "action=\"".len();
    let end = form[start..].find('"')? + start;
    Some(form[start..end].replace("&amp;", "&"))
}

/// The visible text of an HTML page (oidc-provider's error pages name the error there), short.
fn page_text(html: &str) -> String {
    let html = match (html.find("<body"), html.rfind("</body>")) {
        (Some(s), Some(e)) if s < e => &html[s..e],
        _ => html,
    };
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = text
        .replace("&#39;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    text.chars().take(600).collect()
}

/// Starts a sign-in at the Qleet at `url` with its provider `provider`: answers the
/// `qleet_login` cookie and the provider URL it redirects to.
pub async fn begin(http: &reqwest::Client, url: &str, provider: &str) -> (String, String) {
    let resp = http
        .get(format!("{url}/auth/login/{provider}?return_to=/orgs"))
        .send()
        .await
        .expect("login");
    assert_eq!(resp.status(), 303, "login redirects to the provider");
    let cookie = resp
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("qleet_login="))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
        .expect("login cookie");
    let location = resp.headers()[reqwest::header::LOCATION]
        .to_str()
        .expect("location")
        .to_owned();
    (cookie, location)
}

/// Brings the provider's answer (`callback`) back to the callback of the Qleet at `url`.
pub async fn finish(
    http: &reqwest::Client,
    url: &str,
    login_cookie: &str,
    callback: &Url,
) -> reqwest::Response {
    let path = &callback[url::Position::BeforePath..];
    http.get(format!("{url}{path}"))
        .header(
            reqwest::header::COOKIE,
            format!("qleet_login={login_cookie}"),
        )
        .send()
        .await
        .expect("callback")
}
