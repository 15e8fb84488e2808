//! `qleetctl login` through the management plane's own OpenID Connect sign-in (the real
//! `oidc-provider`), with the test playing the browser.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Stdio;

use qleet::config::OidcProviderConfig;
use secrecy::SecretString;
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::net::TcpListener;

use crate::support::oidc::{OidcProvider, authorize};
use crate::support::{TestApp, command, run, spawn_on};

async fn app_with_provider() -> (TestApp, OidcProvider) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let provider = OidcProvider::start(
        "qleet-test",
        "qleet-test-secret",
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
            client_id: "qleet-test".into(),
            client_secret: SecretString::from("qleet-test-secret".to_owned()),
        }];
    })
    .await;
    (app, provider)
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no Location on {}", resp.status()))
        .to_owned()
}

/// A browser: one cookie jar, redirects followed by hand.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Starts `qleetctl login --no-browser`; answers the running CLI and the URL it prints.
pub async fn start_cli_login(app: &TestApp) -> (tokio::process::Child, String) {
    let mut cli = command(&app.config_dir);
    cli.args([
        "login",
        "--url",
        &app.url,
        "--no-browser",
        "--timeout",
        "60",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cli.spawn().expect("spawn qleetctl login");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    while let Some(line) = stderr.next_line().await.expect("read") {
        if line.starts_with("http") {
            return (child, line);
        }
    }
    panic!("qleetctl login printed no sign-in URL");
}

/// Opens the CLI's sign-in URL `start` in `browser` and signs `user` in at the test OpenID
/// provider (id `test`); answers where Qleet sends the browser back to (the CLI page).
pub async fn sign_in(browser: &reqwest::Client, app: &TestApp, start: &str, user: &str) -> String {
    // Not signed in yet: Qleet's sign-in first, then back to the CLI page.
    let resp = browser.get(start).send().await.expect("cli page");
    assert_eq!(resp.status(), 303);
    let signin = location(&resp);
    assert!(
        signin.starts_with("/signin?return_to=%2Fauth%2Fcli"),
        "{signin}"
    );
    let return_to = signin.trim_start_matches("/signin?return_to=");
    let resp = browser
        .get(format!("{}/auth/login/test?return_to={return_to}", app.url))
        .send()
        .await
        .expect("login");
    assert_eq!(resp.status(), 303);
    let callback = authorize(
        &location(&resp),
        user,
        &format!("{}/auth/callback/test", app.url),
    )
    .await
    .expect("sign in at the provider");
    let resp = browser.get(callback).send().await.expect("callback");
    assert_eq!(resp.status(), 303);
    let back = location(&resp);
    assert!(back.starts_with("/auth/cli?port="), "{back}");
    back
}

/// Creates organisation `slug` in `browser`'s session.
pub async fn create_org(browser: &reqwest::Client, app: &TestApp, slug: &str) {
    let made: serde_json::Value = browser
        .post(format!("{}/graphql", app.url))
        .header("origin", &app.url)
        .json(&json!({
            "query": "mutation($s: String!) { createOrganization(slug: $s, name: $s) { slug } }",
            "variables": {"s": slug},
        }))
        .send()
        .await
        .expect("create org")
        .json()
        .await
        .expect("json");
    assert_eq!(made["data"]["createOrganization"]["slug"], slug, "{made}");
}

/// The hidden fields of the CLI page's confirmation form: csrf, port, state.
pub fn form_fields(html: &str) -> (String, String, String) {
    let field = |name: &str| -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let at = html
            .find(&marker)
            .unwrap_or_else(|| panic!("no {name} in {html}"))
            + marker.len();
        html[at..].split('"').next().expect("value").to_owned()
    };
    (field("csrf"), field("port"), field("state"))
}

/// Posts the CLI page's confirmation form for `org`; answers the response.
pub async fn confirm(
    browser: &reqwest::Client,
    app: &TestApp,
    (csrf, port, state): (&str, &str, &str),
    org: &str,
) -> reqwest::Response {
    browser
        .post(format!("{}/auth/cli", app.url))
        .header("origin", &app.url)
        .form(&[
            ("csrf", csrf),
            ("port", port),
            ("state", state),
            ("org", org),
        ])
        .send()
        .await
        .expect("confirm")
}

/// `qleetctl login` through the browser, start to end, as `user` of a new organisation `org`
/// (the test plays the browser). Answers what the CLI printed.
pub async fn login_through_the_browser(app: &TestApp, user: &str, org: &str) -> String {
    let browser = browser();
    let (child, start) = start_cli_login(app).await;
    let back = sign_in(&browser, app, &start, user).await;
    create_org(&browser, app, org).await;
    let html = browser
        .get(format!("{}{back}", app.url))
        .send()
        .await
        .expect("confirm page")
        .text()
        .await
        .expect("html");
    let (csrf, port, state) = form_fields(&html);
    let resp = confirm(&browser, app, (&csrf, &port, &state), org).await;
    assert_eq!(resp.status(), 303);
    let done = browser.get(location(&resp)).send().await.expect("hand-off");
    assert_eq!(done.status(), 200);
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("login finishes")
        .expect("output");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn login_through_the_browser_stores_a_private_token_for_the_chosen_organisation() {
    let (app, _provider) = app_with_provider().await;
    let browser = browser();
    let (child, start) = start_cli_login(&app).await;
    assert!(
        start.starts_with(&format!("{}/auth/cli?port=", app.url)),
        "{start}"
    );
    let back = sign_in(&browser, &app, &start, "alice").await;
    // Alice needs an organisation; she makes one in the same browser session.
    create_org(&browser, &app, "acme").await;

    let page = browser
        .get(format!("{}{back}", app.url))
        .send()
        .await
        .expect("confirm page");
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .expect("csp")
            .contains("default-src 'none'")
    );
    let html = page.text().await.expect("html");
    assert!(
        html.contains("alice@example.test") && html.contains("value=\"acme\""),
        "{html}"
    );
    let (csrf, port, state) = form_fields(&html);

    // A forged confirmation (wrong CSRF token) mints nothing.
    let forged = confirm(&browser, &app, ("nope", &port, &state), "acme").await;
    assert_eq!(forged.status(), 403);

    // A callback with another state is refused by the CLI, which keeps waiting.
    let wrong = reqwest::get(format!(
        "http://127.0.0.1:{port}/callback?state=wrong&org=acme&token=qleet_x"
    ))
    .await
    .expect("wrong state");
    assert_eq!(wrong.status(), 400);

    let resp = confirm(&browser, &app, (&csrf, &port, &state), "acme").await;
    assert_eq!(resp.status(), 303);
    let handoff = location(&resp);
    assert!(
        handoff.starts_with(&format!(
            "http://127.0.0.1:{port}/callback?state={state}&org=acme&token=qleet_"
        )),
        "{handoff}"
    );
    let done = browser.get(&handoff).send().await.expect("hand-off");
    assert_eq!(done.status(), 200);

    let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("login finishes")
        .expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("as alice@example.test (organisation acme)"),
        "{stdout}"
    );

    let file = app.config_dir.join("config.json");
    let mode = std::fs::metadata(&file)
        .expect("config")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    assert!(
        stored["token"]
            .as_str()
            .expect("token")
            .starts_with("qleet_")
    );

    let who = run(&app, &["whoami"]).await;
    assert!(
        who.ok().contains("alice@example.test") && who.stdout.contains("org acme"),
        "{who:?}"
    );
    let tokens = run(&app, &["token", "list", "-o", "json"]).await.json();
    assert_eq!(tokens[0]["name"], "qleetctl login", "{tokens}");

    // Logging out revokes the token; the next call is not signed in (exit 3).
    let out = run(&app, &["logout"]).await;
    assert!(out.ok().contains("the token was revoked"), "{out:?}");
    let out = run(&app, &["whoami", "--url", &app.url]).await;
    assert!(out.fails(3).contains("not signed in"), "{out:?}");
}
