//! `qleet-control-plane`: its own database, and it trusts only the management plane's signed
//! tokens (or, standalone, its admin token).

use chrono::{Duration, Utc};
use qleet_common::telemetry::LogFormat;
use qleet_control_plane::config::{ControlPlaneAuth, ControlPlaneConfig};
use qleet_protocol::Role;
use qleet_protocol::internal_token::{Claims, Signer, SubjectKind, Verifier};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use uuid::Uuid;

use qleet_test_support::db::fresh_database;
use qleet_test_support::error_code;

struct ControlPlane {
    url: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

async fn start(id: Uuid, db: &str, auth: ControlPlaneAuth) -> anyhow::Result<ControlPlane> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let config = ControlPlaneConfig {
        listen: listener.local_addr()?,
        database_url: SecretString::from(db.to_owned()),
        id,
        auth,
        log_format: LogFormat::Pretty,
        crash_at: None,
        poll_interval: None,
        drift_interval: qleet_control_plane::objects::drift::DEFAULT_INTERVAL,
        stop_on_stdin_eof: false,
    };
    let app = qleet_control_plane::Application::build(config, listener).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    Ok(ControlPlane { url, _shutdown: tx })
}

async fn ask(cp: &ControlPlane, bearer: Option<&str>) -> Value {
    let mut req = reqwest::Client::new()
        .post(format!("{}/graphql", cp.url))
        .json(&json!({ "query": "{ controlPlane { id version viewer { kind subject organization role } } }" }));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    req.send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn a_control_plane_answers_only_tokens_signed_for_it() {
    let signer = Signer::generate();
    let id = Uuid::new_v4();
    let db = fresh_database().await;
    let verifier = Verifier::new(&signer.public_key(), id).expect("key");
    let cp = start(id, &db, ControlPlaneAuth::Gateway(verifier))
        .await
        .expect("start");

    let (user, org) = (Uuid::new_v4(), Uuid::new_v4());
    let token = signer.mint(
        SubjectKind::User,
        user,
        org,
        id,
        Role::Member,
        Duration::minutes(1),
    );
    let body = ask(&cp, Some(&token)).await;
    assert!(body.get("errors").is_none(), "{body}");
    let info = &body["data"]["controlPlane"];
    assert_eq!(info["id"], id.to_string());
    assert_eq!(
        info["viewer"],
        json!({ "kind": "user", "subject": user, "organization": org, "role": "MEMBER" })
    );

    let forged = Signer::generate().mint(
        SubjectKind::User,
        user,
        org,
        id,
        Role::Owner,
        Duration::minutes(1),
    );
    let expired = signer.sign(&Claims {
        sub_kind: SubjectKind::User,
        sub: user,
        org,
        cp: id,
        role: Role::Owner,
        iat: Utc::now() - Duration::minutes(10),
        exp: Utc::now() - Duration::minutes(5),
        limits: None,
    });
    let elsewhere = signer.mint(
        SubjectKind::User,
        user,
        org,
        Uuid::new_v4(),
        Role::Owner,
        Duration::minutes(1),
    );
    for (what, bearer) in [
        ("no token", None),
        ("a token signed by another key", Some(forged.as_str())),
        ("an expired token", Some(expired.as_str())),
        (
            "a token for another control plane",
            Some(elsewhere.as_str()),
        ),
        ("garbage", Some("v1.garbage.garbage")),
    ] {
        let body = ask(&cp, bearer).await;
        assert_eq!(
            error_code(&body).as_deref(),
            Some("UNAUTHENTICATED"),
            "{what}: {body}"
        );
        assert!(body["data"].is_null(), "{what}: nothing is answered");
    }
}

#[tokio::test]
async fn a_standalone_control_plane_uses_its_admin_token() {
    let id = Uuid::new_v4();
    let db = fresh_database().await;
    let admin = "a-very-long-standalone-admin-token-0123456789";
    let auth = ControlPlaneAuth::Standalone {
        admin_token_hash: qleet_common::secrets::hash_secret(admin),
    };
    let cp = start(id, &db, auth).await.expect("start");
    let body = ask(&cp, Some(admin)).await;
    assert_eq!(
        body["data"]["controlPlane"]["viewer"]["kind"], "admin",
        "{body}"
    );
    let body = ask(&cp, Some("a-very-long-standalone-admin-token-0123456780")).await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("UNAUTHENTICATED"),
        "{body}"
    );
}

#[tokio::test]
async fn a_control_plane_refuses_another_control_planes_database() {
    let db = fresh_database().await;
    let auth = || ControlPlaneAuth::Standalone {
        admin_token_hash: vec![0; 32],
    };
    let first = Uuid::new_v4();
    let _cp = start(first, &db, auth()).await.expect("first start");
    // Restarting the same control plane on its database is fine.
    start(first, &db, auth()).await.expect("restart");
    let err = start(Uuid::new_v4(), &db, auth())
        .await
        .err()
        .expect("must refuse");
    assert!(
        err.to_string()
            .contains(&format!("belongs to control plane {first}")),
        "{err}"
    );
}

#[test]
fn qleet_control_plane_needs_exactly_one_way_to_authenticate() {
    for extra in [
        vec![],
        vec![("QLEET_CP_ADMIN_TOKEN", "short")],
        vec![("QLEET_CP_VERIFYING_KEY", "not-a-key")],
        vec![
            ("QLEET_CP_VERIFYING_KEY", "x"),
            ("QLEET_CP_ADMIN_TOKEN", "y"),
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_qleet-control-plane"))
            .env_clear()
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
            .env("QLEET_CP_ID", Uuid::new_v4().to_string())
            .envs(extra.iter().copied())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?}");
        assert!(stderr.contains("QLEET_CP_"), "{extra:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
}

#[tokio::test]
async fn a_websocket_closes_when_the_gateway_token_that_opened_it_expires() {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};
    let signer = Signer::generate();
    let id = Uuid::new_v4();
    let db = fresh_database().await;
    let verifier = Verifier::new(&signer.public_key(), id).expect("key");
    let cp = start(id, &db, ControlPlaneAuth::Gateway(verifier))
        .await
        .expect("start");
    let ttl = Duration::seconds(2);
    let token = signer.mint(
        SubjectKind::User,
        Uuid::new_v4(),
        Uuid::new_v4(),
        id,
        Role::Member,
        ttl,
    );
    let expires_at = Utc::now() + ttl;
    let mut request = format!("{}/graphql/ws", cp.url.replacen("http", "ws", 1))
        .into_client_request()
        .expect("request");
    let headers = request.headers_mut();
    headers.insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    headers.insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    socket
        .send(Message::text(
            json!({"type": "connection_init"}).to_string(),
        ))
        .await
        .expect("init");
    socket
        .send(Message::text(
            json!({"id": "1", "type": "subscribe",
                   "payload": {"query": "subscription { heartbeat(everyMs: 100) }"}})
            .to_string(),
        ))
        .await
        .expect("subscribe");
    // Heartbeats flow until the token expires; then the control plane closes with 4401.
    let mut beats = 0;
    let close = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let msg = socket
                .next()
                .await
                .expect("a close frame before the end")
                .expect("frame");
            match msg {
                Message::Text(t) if t.as_str().contains("heartbeat") => beats += 1,
                Message::Close(frame) => break frame,
                _ => {}
            }
        }
    })
    .await
    .expect("the socket closes within 10 s");
    let closed_at = Utc::now();
    let frame = close.expect("a close frame with a code");
    assert_eq!(u16::from(frame.code), 4401, "{frame:?}");
    assert!(beats > 0, "the subscription ran while the token was valid");
    assert!(
        closed_at >= expires_at && closed_at - expires_at < Duration::seconds(1),
        "closed at {closed_at}, token expired at {expires_at}"
    );
}
