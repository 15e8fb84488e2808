//! Agents through the management gateway: isolation between organisations. (Registration,
//! heartbeats, status and revocation are tested in the `qleet-control-plane` crate.)

use serde_json::json;
use uuid::Uuid;

use crate::support::{Auth, error_code};

const AGENTS: &str = "{ agents { id name version status running revokedAt lastSeenAt } }";

#[tokio::test]
async fn agents_of_one_organization_cannot_reach_another_through_the_gateway() {
    let app = crate::support::spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let member = app
        .add_member(&alice, "acme", "max@example.test", "MEMBER")
        .await;
    let bob = app.sign_in("bob@example.test").await;
    app.create_org(&bob, "bobco").await;
    let a = crate::fleet::create(&app, &alice, "acme", "prod").await;
    let b = crate::fleet::create(&app, &bob, "bobco", "prod").await;
    crate::fleet::wait_for(&app, &alice, "acme", a, "READY").await;
    crate::fleet::wait_for(&app, &bob, "bobco", b, "READY").await;
    let gql = |q: &str| json!({"query": q});

    // Members may list agents but not issue registrations; other organisations see nothing.
    let (_, body) = app
        .gateway(
            Auth::Session(&member),
            a,
            "graphql",
            gql("mutation { createAgentRegistration { token } }"),
        )
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("FORBIDDEN"), "{body}");
    let (_, body) = app
        .gateway(Auth::Session(&member), a, "graphql", gql(AGENTS))
        .await;
    assert_eq!(body["data"]["agents"], json!([]), "{body}");
    for q in [AGENTS, "mutation { createAgentRegistration { token } }"] {
        let (code, _) = app.gateway(Auth::Session(&bob), a, "graphql", gql(q)).await;
        assert_eq!(code, 404);
    }
    let (_, body) = app
        .gateway(
            Auth::Session(&alice),
            a,
            "graphql",
            gql("mutation { createAgentRegistration { token } }"),
        )
        .await;
    let token = body["data"]["createAgentRegistration"]["token"]
        .as_str()
        .expect("token")
        .to_owned();

    // Registration goes through the gateway without a session; the token only fits its own
    // control plane.
    let (code, _) = app
        .gateway(
            Auth::Anonymous,
            b,
            "agent/v1/register",
            json!({"token": token, "name": "x", "version": "1"}),
        )
        .await;
    assert_eq!(code, 401, "A's token at B");
    let (code, body) = app
        .gateway(
            Auth::Anonymous,
            a,
            "agent/v1/register",
            json!({"token": token, "name": "x", "version": "1"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let credential = body["credential"].as_str().expect("credential").to_owned();
    let (code, _) = app
        .gateway(
            Auth::Token(&credential),
            a,
            "agent/v1/heartbeat",
            json!({"version": "1"}),
        )
        .await;
    assert_eq!(code, 200);
    // A's agent cannot lease, renew or report B's tasks, nor anything at a made-up id.
    let (code, _) = app
        .gateway(
            Auth::Token(&credential),
            b,
            "agent/v1/tasks/lease",
            json!({"max": 1}),
        )
        .await;
    assert_eq!(code, 401);
    let path = format!("agent/v1/tasks/{}/report", Uuid::new_v4());
    let (code, _) = app
        .gateway(
            Auth::Token(&credential),
            b,
            &path,
            json!({"leaseId": Uuid::new_v4(), "result": {"succeeded": {}}}),
        )
        .await;
    assert_eq!(code, 401);
    let (code, _) = app
        .gateway(
            Auth::Token(&credential),
            Uuid::new_v4(),
            "agent/v1/tasks/lease",
            json!({}),
        )
        .await;
    assert_eq!(code, 404);
    // An agent credential is not a user's API token anywhere else.
    let (code, _) = app
        .gateway(Auth::Token(&credential), a, "graphql", gql(AGENTS))
        .await;
    assert_eq!(code, 401);
    let (_, body) = app
        .gateway(Auth::Session(&alice), a, "graphql", gql(AGENTS))
        .await;
    assert_eq!(body["data"]["agents"][0]["status"], "CONNECTED", "{body}");
}
