//! The trust boundary against hostile input and hostile pages (issue 11): cross-site WebSocket
//! and SSE, the gateway's agent
//! pass-through, what a wrong invitee learns, and text PostgreSQL cannot store.

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};
use uuid::Uuid;

use crate::support::{Auth, Session, TestApp, error_code, spawn_app};

const EVIL: &str = "http://evil.example";

/// Sends one raw HTTP/1.1 request (the path exactly as given: no client normalises `..` or
/// `%2e` away) and answers the status and body.
async fn raw(app: &TestApp, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let addr = app.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 2\r\nContent-Type: application/json\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n{}");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The `error.code` of a REST answer.
fn rest_code(body: &str) -> Option<String> {
    let value: Value = serde_json::from_str(body.trim()).ok()?;
    value["error"]["code"].as_str().map(str::to_owned)
}

async fn ready_control_plane(app: &TestApp, owner: &Session) -> Uuid {
    app.create_org(owner, "acme").await;
    let id = crate::fleet::create(app, owner, "acme", "prod").await;
    crate::fleet::wait_for(app, owner, "acme", id, "READY").await;
    id
}

#[tokio::test]
async fn a_websocket_or_event_stream_with_the_session_cookie_needs_qleets_origin() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    let id = ready_control_plane(&app, &alice).await;
    let ws_url = format!("{}/cp/{id}/graphql/ws", app.url.replacen("http", "ws", 1));
    let connect = |origin: Option<&str>| {
        let mut request = ws_url.as_str().into_client_request().expect("request");
        let headers = request.headers_mut();
        headers.insert(
            "cookie",
            format!("qleet_session={}", alice.cookie)
                .parse()
                .expect("header"),
        );
        headers.insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().expect("header"),
        );
        if let Some(origin) = origin {
            headers.insert("origin", origin.parse().expect("header"));
        }
        tokio_tungstenite::connect_async(request)
    };
    for origin in [Some(EVIL), None] {
        let refused = connect(origin).await.expect_err("a cross-site upgrade");
        assert!(refused.to_string().contains("403"), "{origin:?}: {refused}");
    }
    let (mut socket, _) = connect(Some(&app.url)).await.expect("same origin");
    socket
        .send(Message::text(
            json!({"type": "connection_init"}).to_string(),
        ))
        .await
        .expect("init");
    let ack = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("frame");
    let Message::Text(ack) = ack else {
        panic!("expected connection_ack, got {ack:?}")
    };
    assert!(ack.as_str().contains("connection_ack"), "{ack}");

    // The event streams: a page elsewhere cannot read them with the cookie either.
    for path in [
        "/orgs/acme/control-planes/events".to_owned(),
        format!("/orgs/acme/control-planes/{id}/objects/events"),
    ] {
        let resp = app
            .http
            .get(format!("{}{path}", app.url))
            .header("cookie", format!("qleet_session={}", alice.cookie))
            .header("origin", EVIL)
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("events");
        assert_eq!(resp.status(), 403, "{path}");
        let resp = app
            .http
            .get(format!("{}{path}", app.url))
            .header("cookie", format!("qleet_session={}", alice.cookie))
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("events");
        assert_eq!(resp.status(), 200, "{path} from our own page (no Origin)");
    }
}

#[tokio::test]
async fn the_gateway_refuses_dot_segments_however_they_are_spelt() {
    let app = spawn_app().await;
    let cp = Uuid::new_v4();
    for rest in [
        "agent/v1/../../graphql",
        "agent/v1/%2e%2e/%2e%2e/graphql",
        "agent/v1/%2E%2e/%2e%2E/graphql",
        "agent/v1/register/..%2f..%2f..%2fgraphql",
        "agent/v1/./heartbeat",
        "graphql/../graphql",
    ] {
        let (status, body) = raw(
            &app,
            "POST",
            &format!("/cp/{cp}/{rest}"),
            &[("authorization", "Bearer qleet_agent_x")],
        )
        .await;
        assert_eq!(status, 400, "{rest}: {body}");
        assert_eq!(rest_code(&body).as_deref(), Some("INVALID_INPUT"), "{rest}");
    }
}

#[tokio::test]
async fn the_gateway_passes_an_agent_credential_only_to_the_agent_api_routes() {
    let app = spawn_app().await;
    let cp = Uuid::new_v4();
    let agent = [("authorization", "Bearer qleet_agent_x")];
    // Not an agent route: the gateway authenticates the bearer itself (and refuses it) rather
    // than pass it on.
    for rest in [
        "agent/v1/graphql",
        "agent/v1/objects",
        "agent/v1/tasks/not-a-task/report",
        "agent/v1/heartbeat/more",
    ] {
        let (status, body) = raw(&app, "POST", &format!("/cp/{cp}/{rest}"), &agent).await;
        assert_eq!(status, 401, "{rest}: {body}");
        assert_eq!(
            rest_code(&body).as_deref(),
            Some("UNAUTHENTICATED"),
            "{rest}"
        );
    }
    // The agent API's own routes go on towards the control plane (here: one that does not exist).
    let task = Uuid::new_v4();
    for rest in [
        "agent/v1/heartbeat".to_owned(),
        "agent/v1/tasks/lease".to_owned(),
        format!("agent/v1/tasks/{task}/renew"),
        format!("agent/v1/tasks/{task}/release"),
        format!("agent/v1/tasks/{task}/report"),
    ] {
        let (status, body) = raw(&app, "POST", &format!("/cp/{cp}/{rest}"), &agent).await;
        assert_eq!(status, 404, "{rest}: {body}");
    }
}

#[tokio::test]
async fn accepting_someone_elses_invitation_does_not_reveal_the_invited_address() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let data = app
        .gql_ok(
            Auth::Session(&alice),
            "mutation { inviteMember(org: \"acme\", email: \"secret.bob@example.test\", role: MEMBER) { acceptUrl } }",
            json!({}),
        )
        .await;
    let url = data["inviteMember"]["acceptUrl"].as_str().expect("url");
    let token = url.rsplit('/').next().expect("token");
    let mallory = app.sign_in("mallory@example.test").await;
    let body = app
        .gql(
            Auth::Session(&mallory),
            "mutation($t: String!) { acceptInvitation(token: $t) { slug } }",
            json!({ "t": token }),
        )
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("FORBIDDEN"), "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("for someone else"), "{message}");
    assert!(
        !body.to_string().to_lowercase().contains("secret.bob"),
        "{body}"
    );
}

#[tokio::test]
async fn a_nul_in_management_input_is_invalid_input_not_an_internal_error() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let nul = "a\u{0}b";
    // Slugs, as literals and as variables, in mutations and lookups.
    for (query, variables) in [
        (
            "mutation($s: String!) { createOrganization(slug: $s, name: \"x\") { slug } }",
            json!({ "s": nul }),
        ),
        (
            "mutation { createOrganization(slug: \"a\\u0000b\", name: \"x\") { slug } }",
            json!({}),
        ),
        (
            "query($s: String!) { organization(slug: $s) { slug } }",
            json!({ "s": nul }),
        ),
        (
            "mutation($n: String!) { createControlPlane(org: \"acme\", name: $n) { id } }",
            json!({ "n": nul }),
        ),
    ] {
        let body = app.gql(Auth::Session(&alice), query, variables).await;
        assert_eq!(
            error_code(&body).as_deref(),
            Some("INVALID_INPUT"),
            "{query}: {body}"
        );
    }
    // The development sign-in's name.
    let resp = app
        .http
        .post(format!("{}/auth/dev", app.url))
        .form(&[("email", "nul@example.test"), ("name", nul)])
        .send()
        .await
        .expect("dev sign-in");
    assert_eq!(resp.status(), 400);
    let body = resp.text().await.expect("body");
    assert_eq!(rest_code(&body).as_deref(), Some("INVALID_INPUT"), "{body}");
    // Path segments and queries of pages and the gateway.
    for path in [
        "/orgs/%00",
        "/orgs/%00/control-planes",
        "/orgs/acme/control-planes/%00/objects/Bucket/%00",
        "/orgs/acme/audit?actor=%00",
        "/invitations/%00",
    ] {
        for auth in [Auth::Anonymous, Auth::Session(&alice)] {
            let resp = app
                .authed(app.http.get(format!("{}{path}", app.url)), auth)
                .send()
                .await
                .expect("page");
            assert_eq!(resp.status(), 400, "{path}");
            let body = resp.text().await.expect("body");
            assert_eq!(rest_code(&body).as_deref(), Some("INVALID_INPUT"), "{path}");
        }
    }
}

#[tokio::test]
async fn names_with_bidi_controls_or_invisible_characters_are_refused() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let mut sneaky: Vec<String> = ('\u{202A}'..='\u{202E}')
        .chain('\u{2066}'..='\u{2069}')
        .map(|c| format!("Acme{c}Corp"))
        .collect();
    sneaky.extend(["Ac\u{200B}me".to_owned(), "\u{FEFF}Acme".to_owned()]);
    for name in &sneaky {
        for query in [
            "mutation($n: String!) { createOrganization(slug: \"bidi\", name: $n) { slug } }",
            "mutation($n: String!) { renameOrganization(slug: \"acme\", name: $n) { slug } }",
            "mutation($n: String!) { createApiToken(org: \"acme\", name: $n, role: VIEWER) { apiToken { id } } }",
            "mutation($n: String!) { createControlPlane(org: \"acme\", name: $n) { id } }",
        ] {
            let body = app
                .gql(Auth::Session(&alice), query, json!({ "n": name }))
                .await;
            assert_eq!(
                error_code(&body).as_deref(),
                Some("INVALID_INPUT"),
                "{query} with {name:?}: {body}"
            );
        }
    }
    // Nothing was stored under any of them.
    let body = app
        .gql(
            Auth::Session(&alice),
            "{ organization(slug: \"acme\") { name } }",
            json!({}),
        )
        .await;
    assert_eq!(body["data"]["organization"]["name"], "Org acme", "{body}");
}

#[tokio::test]
async fn a_nul_in_objects_or_the_agent_api_is_invalid_input_not_an_internal_error() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    let id = ready_control_plane(&app, &alice).await;
    let owner = Auth::Session(&alice);

    // Kinds and object names: in YAML (which can spell a NUL), and in lookups.
    let apply = "mutation($y: String!) { apply(yaml: $y, dryRun: true) { changes { action } } }";
    for yaml in [
        "kind: \"Bucket\\0\"\nmetadata: {name: a}\nspec: {}\n",
        "kind: Bucket\nmetadata: {name: \"a\\0b\"}\nspec: {}\n",
        "kind: Bucket\nmetadata: {name: a}\nspec: {note: \"x\\0\"}\n",
        "kind: Bucket\u{0}\nmetadata: {name: a}\nspec: {}\n",
    ] {
        let (_, body) = app
            .gateway(
                owner,
                id,
                "graphql",
                json!({"query": apply, "variables": {"y": yaml}}),
            )
            .await;
        assert_eq!(
            error_code(&body).as_deref(),
            Some("INVALID_INPUT"),
            "{yaml:?}: {body}"
        );
    }
    let lookup = "query($k: String!, $n: String!) { object(kind: $k, name: $n) { name } }";
    for (kind, name) in [("Bucket\u{0}", "a"), ("Bucket", "a\u{0}")] {
        let (_, body) = app
            .gateway(
                owner,
                id,
                "graphql",
                json!({"query": lookup, "variables": {"k": kind, "n": name}}),
            )
            .await;
        assert_eq!(
            error_code(&body).as_deref(),
            Some("INVALID_INPUT"),
            "{body}"
        );
    }

    // The agent API: a heartbeat's version, a lease's agent name.
    let (_, body) = app
        .gateway(
            owner,
            id,
            "graphql",
            json!({"query": "mutation { createAgentRegistration { token } }"}),
        )
        .await;
    let token = body["data"]["createAgentRegistration"]["token"]
        .as_str()
        .expect("token");
    let (code, body) = app
        .gateway(
            Auth::Anonymous,
            id,
            "agent/v1/register",
            json!({"token": token, "name": "a", "version": "1"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let credential = body["credential"].as_str().expect("credential").to_owned();
    let (code, body) = app
        .gateway(
            Auth::Token(&credential),
            id,
            "agent/v1/heartbeat",
            json!({"version": "1\u{0}"}),
        )
        .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("INVALID_INPUT")),
        "{body}"
    );
    let (code, body) = app
        .gateway(
            owner,
            id,
            "agent/v1/tasks/lease",
            json!({"agent": "x\u{0}", "max": 1}),
        )
        .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("INVALID_INPUT")),
        "{body}"
    );
}

/// Every refusal of the GraphQL library itself (parse, validation, limits, a value of the wrong
/// type, a body that is no GraphQL request) carries a stable `extensions.code`, on the
/// management endpoint and on a control plane's (through the gateway).
#[tokio::test]
async fn the_graphql_librarys_own_errors_carry_stable_codes_on_both_endpoints() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    let cp = ready_control_plane(&app, &alice).await;
    let nested_fragments = format!(
        "{{ {}__typename{} }}",
        "... on Query { ".repeat(40),
        " }".repeat(40)
    );
    let nested_fields = format!(
        "{{ __schema {{ types {{ fields {{ type {{ {}name{} }} }} }} }} }}",
        "ofType { ".repeat(7),
        " }".repeat(7)
    );
    let aliases: String = (0..40).map(|i| format!("a{i}: __typename ")).collect();
    let directives = format!("{{ __typename {} }}", "@include(if: true) ".repeat(12));
    let common: Vec<(String, Value, &str)> = vec![
        ("{ __typename ".into(), json!({}), "GRAPHQL_PARSE_FAILED"),
        (
            "{ noSuchField }".into(),
            json!({}),
            "GRAPHQL_VALIDATION_FAILED",
        ),
        (nested_fragments.clone(), json!({}), "QUERY_TOO_DEEP"),
        (nested_fields, json!({}), "QUERY_TOO_DEEP"),
        (format!("{{ {aliases} }}"), json!({}), "QUERY_TOO_LARGE"),
        (directives, json!({}), "QUERY_TOO_LARGE"),
    ];
    let management: Vec<(String, Value, &str)> = vec![
        (
            "query($id: UUID!) { organization(slug: \"acme\") { controlPlane(id: $id) { id } } }".into(),
            json!({ "id": "not-a-uuid" }),
            "INVALID_INPUT",
        ),
        (
            "{ organization(slug: \"acme\") { controlPlane(id: \"not-a-uuid\") { id } } }".into(),
            json!({}),
            "INVALID_INPUT",
        ),
        (
            "mutation($at: DateTime) { createApiToken(org: \"acme\", name: \"t\", role: VIEWER, expiresAt: $at) { token } }".into(),
            json!({ "at": "next tuesday" }),
            "INVALID_INPUT",
        ),
    ];
    let control_plane: Vec<(String, Value, &str)> = vec![(
        "mutation($id: UUID!) { revokeAgent(id: $id) { id } }".into(),
        json!({ "id": "not-a-uuid" }),
        "INVALID_INPUT",
    )];
    for (query, variables, code) in common.iter().chain(&management) {
        let body = app
            .gql(Auth::Session(&alice), query, variables.clone())
            .await;
        assert_eq!(
            error_code(&body).as_deref(),
            Some(*code),
            "management {query}: {body}"
        );
    }
    for (query, variables, code) in common.iter().chain(&control_plane) {
        let (_, body) = app
            .gateway(
                Auth::Session(&alice),
                cp,
                "graphql",
                json!({ "query": query, "variables": variables }),
            )
            .await;
        assert_eq!(
            error_code(&body).as_deref(),
            Some(*code),
            "control plane {query}: {body}"
        );
    }
    // A body that is no GraphQL request.
    for path in ["/graphql".to_owned(), format!("/cp/{cp}/graphql")] {
        let resp = app
            .authed(
                app.http
                    .post(format!("{}{path}", app.url))
                    .header("content-type", "application/json")
                    .body("{\"query\": 42"),
                Auth::Session(&alice),
            )
            .send()
            .await
            .expect("post");
        assert_eq!(resp.status(), 400, "{path}");
        let body: Value = resp.json().await.expect("a JSON answer");
        assert_eq!(
            error_code(&body).as_deref(),
            Some("BAD_REQUEST"),
            "{path}: {body}"
        );
    }
}

fn small_limits(config: &mut qleet::config::Config) {
    config.rate_limits = qleet::limits::RateLimits {
        sign_ins_per_minute: 3,
        failed_authentications_per_minute: 3,
        agent_registrations_per_minute: 2,
    };
    // Lets the test speak from several addresses.
    config.trust_proxy_headers = true;
}

fn assert_rate_limited(status: u16, retry_after: Option<&str>, body: &Value, what: &str) {
    assert_eq!(status, 429, "{what}: {body}");
    let secs: u64 = retry_after
        .unwrap_or_else(|| panic!("{what}: Retry-After"))
        .parse()
        .expect("whole seconds");
    assert!((1..=60).contains(&secs), "{what}: Retry-After {secs}");
    assert_eq!(body["error"]["code"], "RATE_LIMITED", "{what}: {body}");
    assert_eq!(
        error_code(body).as_deref(),
        Some("RATE_LIMITED"),
        "{what}: {body}"
    );
}

async fn post_from(app: &TestApp, address: &str, path: &str) -> reqwest::RequestBuilder {
    app.http
        .post(format!("{}{path}", app.url))
        .header("x-forwarded-for", address)
}

/// Guessing tokens from one address stops after a few failures: even a valid token from that
/// address is refused (429, Retry-After) before it is looked at, while other addresses and
/// session cookies go on working.
#[tokio::test]
async fn failed_token_authentications_are_rate_limited_per_address() {
    let app = crate::support::spawn_app_with(small_limits).await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let token = app
        .gql_ok(
            Auth::Session(&alice),
            "mutation { createApiToken(org: \"acme\", name: \"ci\", role: VIEWER) { token } }",
            json!({}),
        )
        .await["createApiToken"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let query = json!({ "query": "{ me { email } }" });
    let send = |address: &'static str, bearer: String| {
        let app = &app;
        let query = query.clone();
        async move {
            let resp = post_from(app, address, "/graphql")
                .await
                .bearer_auth(bearer)
                .json(&query)
                .send()
                .await
                .expect("graphql");
            let status = resp.status().as_u16();
            let retry = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (status, retry, body)
        }
    };
    for i in 0..4 {
        let (_, _, body) = send("203.0.113.7", format!("qleet_guess{i}")).await;
        assert_eq!(
            error_code(&body).as_deref(),
            Some("UNAUTHENTICATED"),
            "{body}"
        );
    }
    let (status, retry, body) = send("203.0.113.7", token.clone()).await;
    assert_rate_limited(
        status,
        retry.as_deref(),
        &body,
        "a valid token after the failures",
    );
    let (status, _, body) = send("203.0.113.8", token.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["me"]["email"], "alice@example.test", "{body}");
    // A session cookie carries no token to guess: not limited.
    let resp = app
        .authed(
            post_from(&app, "203.0.113.7", "/graphql")
                .await
                .json(&query),
            Auth::Session(&alice),
        )
        .send()
        .await
        .expect("graphql");
    assert_eq!(resp.status(), 200);
}

/// Sign-ins are limited per address and, for the development sign-in, per account; agent
/// registrations per address and per control plane.
#[tokio::test]
async fn sign_ins_and_agent_registrations_are_rate_limited() {
    let app = crate::support::spawn_app_with(small_limits).await;
    let sign_in = |address: &'static str, email: &'static str| {
        let app = &app;
        async move {
            let resp = post_from(app, address, "/auth/dev")
                .await
                .form(&[("email", email), ("name", "")])
                .send()
                .await
                .expect("sign-in");
            let status = resp.status().as_u16();
            let retry = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (
                status,
                retry,
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    for email in ["a@example.test", "b@example.test", "c@example.test"] {
        assert_eq!(sign_in("198.51.100.1", email).await.0, 303, "{email}");
    }
    let (status, retry, body) = sign_in("198.51.100.1", "d@example.test").await;
    assert_rate_limited(
        status,
        retry.as_deref(),
        &body,
        "a fourth sign-in from one address",
    );
    // One account from many addresses.
    for address in ["198.51.100.2", "198.51.100.3"] {
        assert_eq!(sign_in(address, "a@example.test").await.0, 303, "{address}");
    }
    let (status, retry, body) = sign_in("198.51.100.4", "a@example.test").await;
    assert_rate_limited(
        status,
        retry.as_deref(),
        &body,
        "a fourth sign-in of one account",
    );
    assert_eq!(sign_in("198.51.100.4", "e@example.test").await.0, 303);

    let register = |address: &'static str, cp: Uuid| {
        let app = &app;
        async move {
            let resp = post_from(app, address, &format!("/cp/{cp}/agent/v1/register"))
                .await
                .json(&json!({ "token": "qleet_reg_guess", "name": "x" }))
                .send()
                .await
                .expect("register");
            let status = resp.status().as_u16();
            let retry = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (
                status,
                retry,
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let cp = Uuid::new_v4();
    for _ in 0..2 {
        assert_ne!(register("192.0.2.1", cp).await.0, 429);
    }
    let (status, retry, body) = register("192.0.2.1", Uuid::new_v4()).await;
    assert_rate_limited(
        status,
        retry.as_deref(),
        &body,
        "a third registration from one address",
    );
    let (status, retry, body) = register("192.0.2.2", cp).await;
    assert_rate_limited(
        status,
        retry.as_deref(),
        &body,
        "a third registration with one control plane",
    );
    assert_ne!(register("192.0.2.3", Uuid::new_v4()).await.0, 429);
}

/// One WebSocket holds at most so many open operations: one more is answered with an `error`
/// for its id (code `TOO_MANY_SUBSCRIPTIONS`) and never reaches the control plane; completing
/// one makes room again.
#[tokio::test]
async fn a_websocket_holds_a_bounded_number_of_subscriptions() {
    use crate::revocation::{next_json, open_ws, send};
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    let cp = ready_control_plane(&app, &alice).await;
    let mut ws = open_ws(&app, Auth::Session(&alice), cp).await;
    let quiet = json!({ "query": "subscription { heartbeat(everyMs: 60000) }" });
    for i in 0..qleet::fleet::gateway::MAX_OPERATIONS_PER_SOCKET {
        send(
            &mut ws,
            json!({ "id": format!("s{i}"), "type": "subscribe", "payload": quiet }),
        )
        .await;
    }
    send(
        &mut ws,
        json!({ "id": "over", "type": "subscribe", "payload": quiet }),
    )
    .await;
    let refused = next_json(&mut ws).await.expect("an answer");
    assert_eq!(refused["id"], "over", "{refused}");
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"], "TOO_MANY_SUBSCRIPTIONS",
        "{refused}"
    );
    send(&mut ws, json!({ "id": "s0", "type": "complete" })).await;
    send(
        &mut ws,
        json!({ "id": "again", "type": "subscribe",
                "payload": { "query": "subscription { heartbeat(everyMs: 100) }" } }),
    )
    .await;
    // The control plane may first confirm the completed one.
    let beat = loop {
        let msg = next_json(&mut ws).await.expect("a heartbeat");
        if msg["id"] != "s0" {
            break msg;
        }
    };
    assert_eq!(beat["id"], "again", "{beat}");
    assert_eq!(beat["type"], "next", "{beat}");
}
