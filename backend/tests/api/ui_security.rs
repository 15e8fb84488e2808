//! The web UI against hostile input (issue 11, items 1 and 7): every page, reached with a script
//! payload in each path segment and in every query parameter the pages read, signed in and
//! anonymous, must never echo it unescaped and must carry the security headers; server
//! functions answer a refusal with a 4xx.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt as _;
use reqwest::header;
use uuid::Uuid;

use crate::support::{Auth, Session, TestApp, spawn_app};

/// Every query parameter the pages (or the router, for no-JavaScript form errors) read. Kept in
/// step with the code by `the_payload_list_names_every_query_parameter_the_pages_read`.
const QUERY_PARAMS: &[&str] = &[
    "after",
    "error",
    "kind",
    "prune",
    "return_to",
    "yaml",
    "__err",
    "__path",
];

/// Payloads for path segments (a `/` would split the segment: the router decodes it first).
const PATH_PAYLOADS: &[&str] = &[
    "\"><img src=x onerror=alert(7)>",
    "'><svg onload=alert(7)>",
    "javascript:alert(7)",
];

/// Payloads for query values: they close the elements a value could land in.
const QUERY_PAYLOADS: &[&str] = &[
    "</textarea><script>alert(7)</script>",
    "</title><script>alert(7)</script>",
    "\"><img src=x onerror=alert(7)>",
    "javascript:alert(7)",
];

/// What a payload looks like once it has escaped into markup.
const TELLS: &[&str] = &[
    "<script>alert(7)",
    "<img src=x onerror=alert(7)>",
    "<svg onload=alert(7)>",
    "href=\"javascript:",
    "src=\"javascript:",
    "action=\"javascript:",
];

/// Percent-encodes every byte but the unreserved ones (one path segment or query value).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The name of a path parameter segment (`{slug}` or `:slug`), if it is one.
fn param_name(segment: &str) -> Option<&str> {
    segment
        .strip_prefix(':')
        .or_else(|| segment.strip_prefix('{')?.strip_suffix('}'))
}

/// `route` with each parameter from `values` (percent-encoded).
fn fill(route: &str, values: &BTreeMap<&str, String>) -> String {
    route
        .split('/')
        .map(|segment| match param_name(segment) {
            Some(name) => encode(
                values
                    .get(name)
                    .unwrap_or_else(|| panic!("no value for {{{name}}} in {route}")),
            ),
            None => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every query parameter set to `payload`.
fn hostile_query(payload: &str) -> String {
    QUERY_PARAMS
        .iter()
        .map(|name| format!("{name}={}", encode(payload)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The nonce a page's Content-Security-Policy allows scripts by.
fn policy_nonce(policy: &str) -> Option<&str> {
    let start = policy.find("'nonce-")? + "'nonce-".len();
    let len = policy[start..].find('\'')?;
    Some(&policy[start..start + len])
}

/// Checks one answer; returns what is wrong with it, if anything.
async fn check(app: &TestApp, path: &str, auth: Auth<'_>) -> Vec<String> {
    let url = format!("{}{path}", app.url);
    let response = app
        .authed(app.http.get(&url), auth)
        .send()
        .await
        .expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.expect("body");
    let mut problems = Vec::new();
    let mut problem = |what: String| problems.push(format!("GET {path}: {what}"));
    if status.is_server_error() {
        problem(format!("answered {status}"));
    }
    let header_value = |name: header::HeaderName| {
        headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if header_value(header::X_CONTENT_TYPE_OPTIONS).as_deref() != Some("nosniff") {
        problem("no X-Content-Type-Options: nosniff".into());
    }
    if header_value(header::X_FRAME_OPTIONS).as_deref() != Some("DENY") {
        problem("no X-Frame-Options: DENY".into());
    }
    if header_value(header::REFERRER_POLICY).is_none() {
        problem("no Referrer-Policy".into());
    }
    let policy = header_value(header::CONTENT_SECURITY_POLICY).unwrap_or_default();
    for directive in [
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
    ] {
        if !policy.contains(directive) {
            problem(format!(
                "Content-Security-Policy {policy:?} lacks {directive}"
            ));
        }
    }
    // Scripts: `script-src`, or `default-src` without one.
    let directive = |name: &str| {
        policy
            .split(';')
            .map(str::trim)
            .find(|d| d.split_whitespace().next() == Some(name))
            .map(str::to_owned)
    };
    let script_src = directive("script-src")
        .or_else(|| directive("default-src"))
        .unwrap_or_default();
    let nonce = policy_nonce(&policy);
    let allowed = |source: &str| {
        matches!(
            source,
            "script-src"
                | "default-src"
                | "'self'"
                | "'none'"
                | "'wasm-unsafe-eval'"
                | "'strict-dynamic'"
        ) || nonce.is_some_and(|n| source == format!("'nonce-{n}'"))
    };
    if script_src.is_empty() || !script_src.split_whitespace().all(allowed) {
        problem(format!(
            "scripts are not limited to this origin and the nonce: {policy:?}"
        ));
    }
    let html = header_value(header::CONTENT_TYPE).is_some_and(|t| t.starts_with("text/html"));
    let page =
        html && status.is_success() && !path.starts_with("/graphql") && !path.starts_with("/auth/");
    if page && !(script_src.contains("'self'") && nonce.is_some()) {
        problem(format!(
            "a UI page without `script-src 'self' 'nonce-…'`: {policy:?}"
        ));
    }
    // Every script element carries the nonce: none came from the request.
    let want = nonce.map(|n| format!("nonce=\"{n}\""));
    for (at, _) in body.match_indices("<script") {
        let tag_end = body[at..].find('>').map_or(body.len(), |end| at + end);
        if !want
            .as_ref()
            .is_some_and(|w| body[at..tag_end].contains(w.as_str()))
        {
            let shown: String = body[at..].chars().take(80).collect();
            problem(format!("a <script> without the nonce: {shown}"));
        }
    }
    for tell in TELLS {
        if let Some(at) = body.find(tell) {
            let from = body[..at]
                .char_indices()
                .rev()
                .nth(60)
                .map_or(0, |(i, _)| i);
            let shown: String = body[from..].chars().take(140).collect();
            problem(format!("the payload came back unescaped: …{shown}…"));
        }
    }
    problems
}

/// Everything needed to reach every page: an organisation with a Ready control plane.
struct World {
    app: TestApp,
    alice: Session,
    valid: BTreeMap<&'static str, String>,
}

async fn world() -> World {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let cp = crate::objects_ui::ready_control_plane(&app, &alice, "acme", "prod").await;
    let valid = BTreeMap::from([
        ("slug", "acme".to_owned()),
        ("id", cp.to_string()),
        ("kind", "AwsAccount".to_owned()),
        ("name", "main".to_owned()),
        ("token", "qleet_inv_unknown".to_owned()),
    ]);
    World { app, alice, valid }
}

/// Every page path with hostile segments: each parameter in turn, then all at once, each time
/// with a query payload in every query parameter.
fn hostile_paths(routes: &[String], valid: &BTreeMap<&str, String>) -> Vec<String> {
    let mut paths = Vec::new();
    let mut n = 0;
    let mut query = || {
        n += 1;
        hostile_query(QUERY_PAYLOADS[n % QUERY_PAYLOADS.len()])
    };
    for route in routes {
        let params: Vec<&str> = route.split('/').filter_map(param_name).collect();
        let valid_values: BTreeMap<&str, String> = params
            .iter()
            .map(|p| {
                let v = valid.get(p).unwrap_or_else(|| {
                    panic!("the test has no valid value for {{{p}}} of {route}")
                });
                (*p, v.clone())
            })
            .collect();
        paths.push(format!("{}?{}", fill(route, &valid_values), query()));
        for payload in PATH_PAYLOADS {
            for param in &params {
                let mut values = valid_values.clone();
                values.insert(param, (*payload).to_owned());
                paths.push(format!("{}?{}", fill(route, &values), query()));
            }
            if params.len() > 1 {
                let values = params.iter().map(|p| (*p, (*payload).to_owned())).collect();
                paths.push(format!("{}?{}", fill(route, &values), query()));
            }
        }
    }
    // An unknown page (the 404) and the pages outside the Leptos router.
    for payload in PATH_PAYLOADS {
        paths.push(format!("/no-such-page/{}?{}", encode(payload), query()));
    }
    paths.push(format!("/graphql?{}", query()));
    paths.push(format!(
        "/auth/cli?port=40000&state=abcdefghijklmnop0123&org={}",
        encode(PATH_PAYLOADS[0])
    ));
    paths.push("/pkg/qleet.css".to_owned());
    paths
}

#[tokio::test]
async fn every_page_escapes_a_script_payload_and_carries_the_security_headers() {
    let World { app, alice, valid } = world().await;
    let routes = qleet::ui::page_paths();
    // The router really lists the pages (a broken enumeration would test nothing).
    for page in [
        "/orgs/{slug}/control-planes/{id}/apply",
        "/orgs/{slug}/control-planes/{id}/objects/{kind}/{name}",
        "/signin",
    ] {
        let page_colon = page.replace('{', ":").replace('}', "");
        assert!(
            routes.iter().any(|r| r == page || *r == page_colon),
            "{page} missing from {routes:?}"
        );
    }
    let paths = hostile_paths(&routes, &valid);
    let app = &app;
    let checks = paths.iter().flat_map(|path| {
        [Auth::Anonymous, Auth::Session(&alice)]
            .into_iter()
            .map(move |auth| async move {
                // A request that never answers is a finding with its path, not a hung suite.
                tokio::time::timeout(std::time::Duration::from_secs(60), check(app, path, auth))
                    .await
                    .unwrap_or_else(|_| vec![format!("GET {path}: no answer within 60 s")])
            })
    });
    let problems: BTreeSet<String> = futures::stream::iter(checks)
        .buffer_unordered(6)
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    assert!(
        problems.is_empty(),
        "{} problems in {} requests:\n{}",
        problems.len(),
        paths.len() * 2,
        problems.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test]
async fn each_page_gets_a_fresh_nonce() {
    let app = spawn_app().await;
    let mut nonces = BTreeSet::new();
    for _ in 0..3 {
        let response = app
            .http
            .get(format!("{}/signin", app.url))
            .send()
            .await
            .expect("page");
        let policy = response
            .headers()
            .get(header::CONTENT_SECURITY_POLICY)
            .and_then(|v| v.to_str().ok())
            .expect("a policy")
            .to_owned();
        let nonce = policy_nonce(&policy).expect("a nonce").to_owned();
        assert!(nonce.len() >= 16, "{nonce}");
        let body = response.text().await.expect("body");
        assert!(
            body.contains(&format!("<script type=\"module\" nonce=\"{nonce}\"")),
            "the hydration script carries the nonce"
        );
        nonces.insert(nonce);
    }
    assert_eq!(nonces.len(), 3, "{nonces:?}");
}

/// The query parameters read in `frontend/src` (`.get("…")` in a file that calls
/// `use_query_map`), without the path parameters.
#[tokio::test]
async fn the_payload_list_names_every_query_parameter_the_pages_read() {
    fn walk(dir: &std::path::Path, files: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read frontend/src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(std::fs::read_to_string(&path).expect("read source"));
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../frontend/src"),
        &mut files,
    );
    let path_params: BTreeSet<String> = qleet::ui::page_paths()
        .iter()
        .flat_map(|r| {
            r.split('/')
                .filter_map(param_name)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut read = BTreeSet::new();
    for source in files.iter().filter(|s| s.contains("use_query_map")) {
        for (at, _) in source.match_indices(".get(\"") {
            let rest = &source[at + ".get(\"".len()..];
            if let Some(end) = rest.find('"') {
                read.insert(rest[..end].to_owned());
            }
        }
    }
    assert!(
        read.contains("yaml"),
        "the scan finds query reads: {read:?}"
    );
    let missing: Vec<_> = read
        .iter()
        .filter(|name| !path_params.contains(*name) && !QUERY_PARAMS.contains(&name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "add {missing:?} to QUERY_PARAMS so the payload test covers them"
    );
}

// -------------------------------------------------------------------------------------------
// Item 7: server functions answer a refusal with a 4xx.

/// Calls the server function at `/api/{endpoint}` as a script would (form-encoded arguments).
async fn server_fn(
    app: &TestApp,
    auth: Auth<'_>,
    endpoint: &str,
    args: &[(&str, &str)],
) -> (u16, String) {
    let response = app
        .authed(
            app.http
                .post(format!("{}/api/{endpoint}", app.url))
                .form(args),
            auth,
        )
        .send()
        .await
        .expect("server function");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// What is refused, by whom, the server function and its arguments, and the status wanted.
type Refused<'a> = (&'a str, Auth<'a>, &'a str, Vec<(&'a str, &'a str)>, u16);

#[tokio::test]
async fn server_functions_answer_refusals_with_a_4xx_not_500() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let viewer = app
        .add_member(&alice, "acme", "vera@example.test", "VIEWER")
        .await;

    let (status, body) = server_fn(
        &app,
        Auth::Session(&alice),
        "organization",
        &[("slug", "acme")],
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let refusals: Vec<Refused<'_>> = vec![
        (
            "signed out",
            Auth::Anonymous,
            "organization",
            vec![("slug", "acme")],
            401,
        ),
        (
            "no such organisation",
            Auth::Session(&alice),
            "organization",
            vec![("slug", "nope")],
            404,
        ),
        (
            "not a control plane id",
            Auth::Session(&alice),
            "control_plane",
            vec![("org", "acme"), ("id", "not-a-uuid")],
            404,
        ),
        (
            "a viewer renames",
            Auth::Session(&viewer),
            "rename_organization",
            vec![
                ("csrf", viewer.csrf.as_str()),
                ("org", "acme"),
                ("name", "Mine"),
            ],
            403,
        ),
        (
            "a form of another session",
            Auth::Session(&alice),
            "rename_organization",
            vec![("csrf", "forged"), ("org", "acme"), ("name", "Mine")],
            403,
        ),
        (
            "a bad slug",
            Auth::Session(&alice),
            "create_organization",
            vec![
                ("csrf", alice.csrf.as_str()),
                ("slug", "Bad Slug!"),
                ("name", "Bad"),
            ],
            400,
        ),
        (
            "missing arguments",
            Auth::Session(&alice),
            "organization",
            vec![],
            400,
        ),
    ];
    for (what, auth, endpoint, args, want) in refusals {
        let (status, body) = server_fn(&app, auth, endpoint, &args).await;
        assert_eq!(status, want, "{what}: {body}");
        assert!(!body.trim().is_empty(), "{what}: the reason is in the body");
    }
    // A random control plane id is someone else's or nobody's: not found, by the gateway.
    let other = Uuid::new_v4().to_string();
    let (status, body) =
        server_fn(&app, Auth::Session(&alice), "cp_agents", &[("cp", &other)]).await;
    assert_eq!(status, 404, "{body}");
}

// -------------------------------------------------------------------------------------------
// In a real browser: the page hydrates under its policy, and the payload stays text.

/// Waits (30 s at most) until `css` has `attr` = `want`.
async fn wait_attr(client: &fantoccini::Client, css: &str, attr: &str, want: &str) {
    let mut last = None;
    for _ in 0..300 {
        if let Ok(el) = client.find(fantoccini::Locator::Css(css)).await {
            last = el.attr(attr).await.ok().flatten();
            if last.as_deref() == Some(want) {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{css}[{attr}] is {last:?}, not {want:?}");
}

#[tokio::test]
async fn pages_hydrate_under_their_policy_and_a_payload_stays_text_in_chromium() {
    let World { app, valid, .. } = world().await;
    let cp = &valid["id"];
    let driver = crate::browser::Driver::start().await;
    let client = driver.browser(true).await;
    crate::browser::sign_in_browser(&client, &app, "alice@example.test").await;

    // The agents page marks itself live once the WebAssembly bundle runs and its first poll of
    // a server function came back: the policy lets the bundle load, compile and fetch.
    client
        .goto(&format!("{}/orgs/acme/control-planes/{cp}/agents", app.url))
        .await
        .expect("agents page");
    wait_attr(&client, "#agents-card", "data-live", "true").await;

    // The reported attack: the query closes the textarea and adds a script and a handler.
    let payload = "</textarea><script>window.__xss = 1</script>\
                   <img src=x onerror=\"window.__xss = 2\">";
    client
        .goto(&format!(
            "{}/orgs/acme/control-planes/{cp}/apply?yaml={}",
            app.url,
            encode(payload)
        ))
        .await
        .expect("apply page");
    crate::browser::text_of(&client, "#plan-error").await;
    let value = client
        .execute("return document.getElementById('apply-yaml').value", vec![])
        .await
        .expect("read the field");
    assert_eq!(
        value,
        serde_json::json!(payload),
        "the field holds the text"
    );
    let ran = client
        .execute(
            "return window.__xss === undefined ? null : window.__xss",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(ran, serde_json::Value::Null, "the payload did not run");
    let images = client
        .execute(
            "return document.querySelectorAll('img[src=x]').length",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(
        images,
        serde_json::json!(0),
        "no element came from the query"
    );
    client.close().await.expect("close");
}
