//! Agents as their control plane knows them: one-time registration, credentials, heartbeats
//! and status, revocation. (Isolation between organisations through the gateway is tested in
//! the management plane's crate.)

use serde_json::{Value, json};

use qleet_test_support::cp::{APP, Cp};
use qleet_test_support::error_code;

const REGISTER: &str = "mutation($t: Int! = 60) { createAgentRegistration(ttlMinutes: $t) { token expiresAt controlPlane } }";
const AGENTS: &str = "{ agents { id name version status running revokedAt lastSeenAt } }";

async fn post(
    http: &reqwest::Client,
    url: &str,
    bearer: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut req = http.post(url).json(&body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.expect("request");
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn an_agent_registers_once_heartbeats_leases_and_is_revoked() {
    let cp = Cp::start().await;
    let reg = cp.gql_ok(REGISTER, json!({})).await["createAgentRegistration"].clone();
    let token = reg["token"].as_str().expect("token").to_owned();
    assert!(token.starts_with("qleet_reg_"));
    let url = |p: &str| format!("{}/agent/v1/{p}", cp.url);
    let (code, body) = post(
        &cp.http,
        &url("register"),
        None,
        json!({"token": token, "name": "agent-1", "version": "0.1.0"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let credential = body["credential"].as_str().expect("credential").to_owned();
    assert!(credential.starts_with("qleet_agent_"));
    assert_eq!(body["controlPlane"], reg["controlPlane"]);
    // Only a hash is stored.
    assert_eq!(
        cp.sql_count(&format!(
            "select count(*) from agents where credential_hash::text like '%{}%'",
            &credential[12..40]
        ))
        .await,
        0
    );
    // The token works once.
    let (code, body) = post(
        &cp.http,
        &url("register"),
        None,
        json!({"token": token, "name": "agent-2", "version": "0.1.0"}),
    )
    .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (401, Some("UNAUTHENTICATED")),
        "{body}"
    );

    let (code, body) = post(
        &cp.http,
        &url("heartbeat"),
        Some(&credential),
        json!({"version": "0.1.1", "running": 2}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["intervalSeconds"], 10);
    let agents = cp.gql_ok(AGENTS, json!({})).await["agents"].clone();
    assert_eq!(agents.as_array().map(Vec::len), Some(1));
    assert_eq!(agents[0]["status"], "CONNECTED");
    assert_eq!(agents[0]["version"], "0.1.1");
    assert_eq!(agents[0]["running"], 2);

    // It leases with its credential; the lease names it.
    cp.apply_ok(APP).await;
    let (code, body) = post(
        &cp.http,
        &url("tasks/lease"),
        Some(&credential),
        json!({"max": 10, "waitSeconds": 5}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let leased = body["tasks"].as_array().cloned().unwrap_or_default();
    assert!(!leased.is_empty());
    let agent_id = agents[0]["id"].as_str().expect("id");
    assert_eq!(
        cp.sql_count(&format!(
            "select count(*) from agent_tasks where lease_holder = '{agent_id}'"
        ))
        .await,
        leased.len() as i64
    );

    // A made-up or tampered credential is refused.
    let tampered = format!("{}x", &credential[..credential.len() - 1]);
    for bad in [
        tampered.as_str(),
        "qleet_agent_nope",
        "qleet_agent_00000000000000000000000000000000_abc",
    ] {
        let (code, _) = post(
            &cp.http,
            &url("heartbeat"),
            Some(bad),
            json!({"version": "1"}),
        )
        .await;
        assert_eq!(code, 401, "{bad}");
    }

    // Revoked: refused at once, and its leases go back to the queue.
    let revoked = cp
        .gql_ok(
            "mutation($id: UUID!) { revokeAgent(id: $id) { status revokedAt } }",
            json!({"id": agent_id}),
        )
        .await;
    assert_eq!(revoked["revokeAgent"]["status"], "REVOKED");
    let (code, _) = post(
        &cp.http,
        &url("tasks/lease"),
        Some(&credential),
        json!({"max": 10}),
    )
    .await;
    assert_eq!(code, 401);
    let (code, _) = post(
        &cp.http,
        &url("heartbeat"),
        Some(&credential),
        json!({"version": "1"}),
    )
    .await;
    assert_eq!(code, 401);
    assert_eq!(
        cp.sql_count("select count(*) from agent_tasks where state = 'leased'")
            .await,
        0
    );
    let again = cp.lease_n(2).await;
    for t in &leased {
        assert!(
            again.iter().any(|a| a["id"] == t["id"]),
            "the revoked agent's task {} went to another agent",
            t["id"]
        );
    }
}

#[tokio::test]
async fn expired_and_malformed_registrations_are_refused() {
    let cp = Cp::start().await;
    let token = cp.gql_ok(REGISTER, json!({"t": 5})).await["createAgentRegistration"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let pool = sqlx::PgPool::connect(&cp.db).await.expect("db");
    sqlx::query("update agent_registrations set expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .expect("expire");
    let url = format!("{}/agent/v1/register", cp.url);
    let (code, _) = post(
        &cp.http,
        &url,
        None,
        json!({"token": token, "name": "a", "version": "1"}),
    )
    .await;
    assert_eq!(code, 401);
    let (code, body) = post(&cp.http, &url, None, json!({"token": "x", "name": ""})).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("INVALID_INPUT")),
        "{body}"
    );
    let body = cp.gql(REGISTER, json!({"t": 100000})).await;
    assert_eq!(error_code(&body).as_deref(), Some("INVALID_INPUT"));
    assert_eq!(cp.sql_count("select count(*) from agents").await, 0);
}
