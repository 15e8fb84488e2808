//! Revocation reaches live connections (issue 11, item 2): after each way access ends (member
//! removed, role lowered, token revoked, its creator removed, sign-out, session or token
//! expiry), every kind of live connection the caller held ends within a second: a GraphQL
//! WebSocket subscription through the gateway, an idle WebSocket whose next mutation is
//! refused, and both Server-Sent Events streams.

use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};
use uuid::Uuid;

use crate::support::{Auth, Session, TestApp, spawn_app};

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a test waits for a connection to end: the guarantee is 1 s; the slack is for a
/// loaded test machine. The measured times are printed.
const BOUND: Duration = Duration::from_secs(5);

const ACCOUNT: &str = "kind: AwsAccount\nmetadata: {name: main}\nspec: {accountId: \"123456789012\", roleArn: \"arn:aws:iam::123456789012:role/qleet\", defaultRegion: eu-west-1}\n";

/// An organisation `acme` with a ready control plane, its owner and a member, Bob.
struct Scene {
    app: TestApp,
    owner: Session,
    bob: Session,
    bob_id: Uuid,
    cp: Uuid,
}

async fn scene() -> Scene {
    let app = spawn_app().await;
    let owner = app.sign_in("owner@example.test").await;
    app.create_org(&owner, "acme").await;
    let bob = app
        .add_member(&owner, "acme", "bob@example.test", "MEMBER")
        .await;
    let bob_id: Uuid = sqlx::query_scalar("select id from users where email = $1")
        .bind("bob@example.test")
        .fetch_one(&app.pool)
        .await
        .expect("bob");
    let cp = crate::objects_ui::ready_control_plane(&app, &owner, "acme", "prod").await;
    Scene {
        app,
        owner,
        bob,
        bob_id,
        cp,
    }
}

/// Opens the gateway's GraphQL WebSocket as `auth` and completes the handshake.
pub(crate) async fn open_ws(app: &TestApp, auth: Auth<'_>, cp: Uuid) -> Ws {
    let url = format!("{}/cp/{cp}/graphql/ws", app.url.replacen("http", "ws", 1));
    let mut request = url.into_client_request().expect("request");
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    match auth {
        Auth::Session(s) => {
            let cookie = format!("qleet_session={}", s.cookie);
            headers.insert("cookie", cookie.parse().expect("header"));
            headers.insert("origin", app.url.parse().expect("header"));
        }
        Auth::Token(t) => {
            let bearer = format!("Bearer {t}");
            headers.insert("authorization", bearer.parse().expect("header"));
        }
        Auth::Anonymous => {}
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket through the gateway");
    send(&mut ws, json!({"type": "connection_init"})).await;
    let ack = next_json(&mut ws).await.expect("connection_ack");
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws
}

pub(crate) async fn send(ws: &mut Ws, message: Value) {
    ws.send(Message::text(message.to_string()))
        .await
        .expect("send");
}

/// The next JSON message; `None` once the socket closes.
pub(crate) async fn next_json(ws: &mut Ws) -> Option<Value> {
    loop {
        let msg = tokio::time::timeout(BOUND, ws.next())
            .await
            .expect("a message in time")?;
        match msg {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(t.as_str()).expect("json")),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Subscribes to the control plane's heartbeat and waits for the first beat.
async fn subscribe_heartbeat(ws: &mut Ws) {
    send(
        ws,
        json!({"id": "hb", "type": "subscribe",
               "payload": {"query": "subscription { heartbeat(everyMs: 100) }"}}),
    )
    .await;
    let beat = next_json(ws).await.expect("a heartbeat");
    assert_eq!(beat["type"], "next", "{beat}");
}

/// Reads until the socket closes (within [`BOUND`]); answers the close code, if any, and
/// whether anything the caller asked for was answered meanwhile with data.
async fn ws_closed(ws: &mut Ws) -> (Option<u16>, Vec<Value>) {
    let mut answered = Vec::new();
    loop {
        let msg = tokio::time::timeout(BOUND, ws.next())
            .await
            .expect("the WebSocket was not closed in time");
        match msg {
            Some(Ok(Message::Close(frame))) => {
                return (frame.map(|f| u16::from(f.code)), answered);
            }
            Some(Ok(Message::Text(t))) => {
                let value: Value = serde_json::from_str(t.as_str()).expect("json");
                if value["id"] != "hb" {
                    answered.push(value);
                }
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return (None, answered),
        }
    }
}

/// Opens an event stream as `auth`; answers the response to read on.
async fn open_sse(app: &TestApp, auth: Auth<'_>, path: &str) -> reqwest::Response {
    let req = app
        .http
        .get(format!("{}{path}", app.url))
        .header("accept", "text/event-stream");
    let resp = app.authed(req, auth).send().await.expect("event stream");
    assert_eq!(resp.status(), 200, "{path}");
    resp
}

/// Reads the stream until it ends (within [`BOUND`]).
async fn sse_ended(mut resp: reqwest::Response) {
    loop {
        match tokio::time::timeout(BOUND, resp.chunk())
            .await
            .expect("the event stream did not end in time")
        {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

/// Every kind of live connection `auth` can hold on the scene's control plane.
struct Live {
    subscription: Ws,
    idle: Ws,
    control_planes: reqwest::Response,
    objects: reqwest::Response,
}

async fn open_all(s: &Scene, auth: Auth<'_>) -> Live {
    let mut subscription = open_ws(&s.app, auth, s.cp).await;
    subscribe_heartbeat(&mut subscription).await;
    Live {
        subscription,
        idle: open_ws(&s.app, auth, s.cp).await,
        control_planes: open_sse(&s.app, auth, "/orgs/acme/control-planes/events").await,
        objects: open_sse(
            &s.app,
            auth,
            &format!("/orgs/acme/control-planes/{}/objects/events", s.cp),
        )
        .await,
    }
}

/// After a revocation at `revoked`: a mutation sent at once on the idle socket is refused
/// (the socket closes with `code` and nothing is created), the subscription closes with
/// `code`, and both event streams end. Prints how long each took.
async fn all_end(s: &Scene, live: Live, revoked: Instant, code: u16, what: &str) {
    let Live {
        mut subscription,
        mut idle,
        control_planes,
        objects,
    } = live;
    // Sent at once; the socket may already be closing, so a failed send is fine too.
    let mutation = json!({"id": "m", "type": "subscribe", "payload": {
        "query": "mutation($y: String!) { apply(yaml: $y, dryRun: false) { applied } }",
        "variables": {"y": ACCOUNT}}});
    let _ = idle.send(Message::text(mutation.to_string())).await;
    let (mutation_close, answered) = ws_closed(&mut idle).await;
    let ws_idle = revoked.elapsed();
    assert_eq!(mutation_close, Some(code), "{what}: the idle socket");
    assert!(
        answered
            .iter()
            .all(|m| m["payload"]["data"]["apply"].is_null()),
        "{what}: the mutation ran: {answered:?}"
    );
    let (closed, _) = ws_closed(&mut subscription).await;
    let ws_sub = revoked.elapsed();
    assert_eq!(closed, Some(code), "{what}: the subscription");
    sse_ended(control_planes).await;
    let sse_cp = revoked.elapsed();
    sse_ended(objects).await;
    let sse_obj = revoked.elapsed();
    println!(
        "{what}: idle socket refused and closed after {ws_idle:?}; subscription closed after \
         {ws_sub:?}; control-plane events ended after {sse_cp:?}; object events after {sse_obj:?}"
    );
    // Nothing was created by the refused mutation.
    let (status, body) = s
        .app
        .gateway(
            Auth::Session(&s.owner),
            s.cp,
            "graphql",
            json!({"query": "{ objects { name } }"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["objects"], json!([]), "{what}: {body}");
}

async fn member_mutation(s: &Scene, query: &str, role: Option<&str>) {
    let mut vars = json!({ "o": "acme", "u": s.bob_id });
    if let Some(role) = role {
        vars["r"] = json!(role);
    }
    s.app.gql_ok(Auth::Session(&s.owner), query, vars).await;
}

#[tokio::test]
async fn removing_a_member_ends_their_live_connections() {
    let s = scene().await;
    let live = open_all(&s, Auth::Session(&s.bob)).await;
    member_mutation(
        &s,
        "mutation($o: String!, $u: UUID!) { removeMember(org: $o, userId: $u) }",
        None,
    )
    .await;
    all_end(&s, live, Instant::now(), 4403, "removeMember").await;
}

#[tokio::test]
async fn lowering_a_members_role_to_viewer_ends_their_live_connections() {
    let s = scene().await;
    let live = open_all(&s, Auth::Session(&s.bob)).await;
    member_mutation(
        &s,
        "mutation($o: String!, $u: UUID!, $r: Role!) { changeMemberRole(org: $o, userId: $u, role: $r) { role } }",
        Some("VIEWER"),
    )
    .await;
    all_end(&s, live, Instant::now(), 4403, "role lowered to viewer").await;
}

#[tokio::test]
async fn raising_a_members_role_keeps_their_connections() {
    let s = scene().await;
    let mut ws = open_ws(&s.app, Auth::Session(&s.bob), s.cp).await;
    subscribe_heartbeat(&mut ws).await;
    member_mutation(
        &s,
        "mutation($o: String!, $u: UUID!, $r: Role!) { changeMemberRole(org: $o, userId: $u, role: $r) { role } }",
        Some("ADMIN"),
    )
    .await;
    // A query sent afterwards is re-checked, passes, and is answered on the same socket.
    send(
        &mut ws,
        json!({"id": "q", "type": "subscribe",
               "payload": {"query": "{ controlPlane { viewer { role } } }"}}),
    )
    .await;
    loop {
        let msg = next_json(&mut ws).await.expect("still open");
        if msg["id"] == "q" {
            assert_eq!(msg["type"], "next", "{msg}");
            break;
        }
    }
}

#[tokio::test]
async fn revoking_an_api_token_ends_its_live_connections() {
    let s = scene().await;
    let token = s.app.create_token(&s.bob, "acme", "MEMBER").await;
    let live = open_all(&s, Auth::Token(&token)).await;
    let id: Uuid = sqlx::query_scalar("select id from api_tokens")
        .fetch_one(&s.app.pool)
        .await
        .expect("token id");
    s.app
        .gql_ok(
            Auth::Session(&s.bob),
            "mutation($o: String!, $id: UUID!) { revokeApiToken(org: $o, id: $id) { revokedAt } }",
            json!({ "o": "acme", "id": id }),
        )
        .await;
    all_end(&s, live, Instant::now(), 4401, "revokeApiToken").await;
}

#[tokio::test]
async fn removing_a_tokens_creator_ends_the_tokens_live_connections() {
    let s = scene().await;
    let token = s.app.create_token(&s.bob, "acme", "MEMBER").await;
    let live = open_all(&s, Auth::Token(&token)).await;
    member_mutation(
        &s,
        "mutation($o: String!, $u: UUID!) { removeMember(org: $o, userId: $u) }",
        None,
    )
    .await;
    all_end(&s, live, Instant::now(), 4401, "token creator removed").await;
}

#[tokio::test]
async fn signing_out_ends_the_sessions_live_connections() {
    let s = scene().await;
    let live = open_all(&s, Auth::Session(&s.bob)).await;
    let resp = s
        .app
        .http
        .post(format!("{}/auth/logout", s.app.url))
        .header("cookie", format!("qleet_session={}", s.bob.cookie))
        .header("origin", &s.app.url)
        .form(&[("csrf", s.bob.csrf.as_str())])
        .send()
        .await
        .expect("sign out");
    assert_eq!(resp.status(), 303);
    all_end(&s, live, Instant::now(), 4401, "sign-out").await;
}

/// Waits until `at` has passed by the database's clock (which decides expiry).
async fn until_db_time_passes(app: &TestApp, at: chrono::DateTime<chrono::Utc>) {
    loop {
        let passed: bool = sqlx::query_scalar("select now() > $1")
            .bind(at)
            .fetch_one(&app.pool)
            .await
            .expect("now");
        if passed {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_session_that_expires_ends_its_live_connections() {
    let s = scene().await;
    let live = open_all(&s, Auth::Session(&s.bob)).await;
    // The session is shortened while the connections are open (as an administrator might).
    let expires_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "update sessions set expires_at = now() + interval '2 seconds'
         where id_hash = $1 returning expires_at",
    )
    .bind(qleet::identity::hash_secret(&s.bob.cookie))
    .fetch_one(&s.app.pool)
    .await
    .expect("shorten the session");
    until_db_time_passes(&s.app, expires_at).await;
    all_end(&s, live, Instant::now(), 4401, "session expiry").await;
}

#[tokio::test]
async fn an_api_token_that_expires_ends_its_live_connections() {
    let s = scene().await;
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(4);
    let data = s
        .app
        .gql_ok(
            Auth::Session(&s.bob),
            "mutation($o: String!, $e: DateTime!) { createApiToken(org: $o, name: \"short\", role: MEMBER, expiresAt: $e) { token } }",
            json!({ "o": "acme", "e": expires_at }),
        )
        .await;
    let token = data["createApiToken"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let live = open_all(&s, Auth::Token(&token)).await;
    until_db_time_passes(&s.app, expires_at).await;
    all_end(&s, live, Instant::now(), 4401, "API token expiry").await;
}

#[tokio::test]
async fn another_members_revocation_leaves_a_connection_open() {
    let s = scene().await;
    let carol = s
        .app
        .add_member(&s.owner, "acme", "carol@example.test", "MEMBER")
        .await;
    let mut ws = open_ws(&s.app, Auth::Session(&carol), s.cp).await;
    subscribe_heartbeat(&mut ws).await;
    member_mutation(
        &s,
        "mutation($o: String!, $u: UUID!) { removeMember(org: $o, userId: $u) }",
        None,
    )
    .await;
    // Carol's mutation, sent after Bob's removal, runs.
    send(
        &mut ws,
        json!({"id": "m", "type": "subscribe", "payload": {
            "query": "mutation($y: String!) { apply(yaml: $y, dryRun: false) { applied } }",
            "variables": {"y": ACCOUNT}}}),
    )
    .await;
    loop {
        let msg = next_json(&mut ws).await.expect("still open");
        if msg["id"] == "m" {
            assert_eq!(msg["payload"]["data"]["apply"]["applied"], true, "{msg}");
            break;
        }
    }
}
