//! Orchestration through the management gateway: roles and tenant isolation for every object
//! query, mutation and agent endpoint. (The orchestration itself is tested in the
//! `qleet-control-plane` crate.)

use qleet_test_support::cp::{APP, outputs_for};
use serde_json::json;

use crate::support::error_code;

// ---------------------------------------------------------------------------------------------
// Through the management gateway: roles and tenant isolation for every new query and endpoint.

#[tokio::test]
async fn other_organizations_cannot_see_or_change_objects_or_take_tasks_through_the_gateway() {
    use crate::support::Auth;
    let app = crate::support::spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let viewer = app
        .add_member(&alice, "acme", "vera@example.test", "VIEWER")
        .await;
    let member = app
        .add_member(&alice, "acme", "max@example.test", "MEMBER")
        .await;
    let bob = app.sign_in("bob@example.test").await;
    app.create_org(&bob, "bobco").await;
    let bob_token = app.create_token(&bob, "bobco", "OWNER").await;
    let cp = crate::fleet::create(&app, &alice, "acme", "prod").await;
    crate::fleet::wait_for(&app, &alice, "acme", cp, "READY").await;

    let apply = |dry: bool| json!({"query": "mutation($y: String!, $d: Boolean!) { apply(yaml: $y, dryRun: $d) { applied summary { create } } }", "variables": {"y": APP, "d": dry}});
    let (code, body) = app
        .gateway(Auth::Session(&member), cp, "graphql", apply(false))
        .await;
    assert_eq!(code, 200);
    assert_eq!(body["data"]["apply"]["summary"]["create"], 5, "{body}");

    let reads = [
        json!({"query": "{ objects { kind name phase } }"}),
        json!({"query": "{ object(kind: \"AwsAccount\", name: \"main\") { outputs } }"}),
        json!({"query": "{ graph { nodes { kind name } edges { from { name } to { name } } } }"}),
    ];
    for q in &reads {
        // Members of the organisation, down to viewers, read.
        let (code, body) = app
            .gateway(Auth::Session(&viewer), cp, "graphql", q.clone())
            .await;
        assert_eq!(code, 200);
        assert!(body.get("errors").is_none(), "{body}");
        // Another organisation's member and token: as if the control plane did not exist.
        for auth in [Auth::Session(&bob), Auth::Token(&bob_token)] {
            let (code, body) = app.gateway(auth, cp, "graphql", q.clone()).await;
            assert_eq!(code, 404, "{body}");
            assert_eq!(body["error"]["code"], "NOT_FOUND");
        }
        let (code, _) = app.gateway(Auth::Anonymous, cp, "graphql", q.clone()).await;
        assert_eq!(code, 401);
    }
    // Viewers may plan but not apply or delete.
    let (_, body) = app
        .gateway(Auth::Session(&viewer), cp, "graphql", apply(true))
        .await;
    assert_eq!(body["data"]["apply"]["applied"], false, "{body}");
    let (_, body) = app
        .gateway(Auth::Session(&viewer), cp, "graphql", apply(false))
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("FORBIDDEN"), "{body}");
    let delete =
        json!({"query": "mutation { delete(kind: \"Workload\", name: \"web\") { applied } }"});
    let (_, body) = app
        .gateway(Auth::Session(&viewer), cp, "graphql", delete.clone())
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("FORBIDDEN"), "{body}");
    for auth in [Auth::Session(&bob), Auth::Token(&bob_token)] {
        let (code, _) = app.gateway(auth, cp, "graphql", apply(false)).await;
        assert_eq!(code, 404);
        let (code, _) = app.gateway(auth, cp, "graphql", delete.clone()).await;
        assert_eq!(code, 404);
    }

    // The agent API: the organisation's admins (until agents have credentials); nobody else.
    let lease = json!({"agent": "a1", "max": 10, "waitSeconds": 5});
    for auth in [Auth::Session(&bob), Auth::Token(&bob_token)] {
        let (code, _) = app
            .gateway(auth, cp, "agent/v1/tasks/lease", lease.clone())
            .await;
        assert_eq!(code, 404);
    }
    let (code, body) = app
        .gateway(
            Auth::Session(&member),
            cp,
            "agent/v1/tasks/lease",
            lease.clone(),
        )
        .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "{body}"
    );
    let (code, body) = app
        .gateway(
            Auth::Session(&alice),
            cp,
            "agent/v1/tasks/lease",
            lease.clone(),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let task = body["tasks"][0].clone();
    assert!(task["id"].is_string(), "{body}");
    // Who applied travels with the work, for the customer's CloudTrail (AWS SourceIdentity).
    let who = task["payload"]["sourceIdentity"]
        .as_str()
        .unwrap_or_default();
    assert!(who.starts_with("qleet-user-") && who.len() <= 64, "{task}");
    // Bob cannot report on Alice's task even knowing its id and lease.
    let report = json!({"leaseId": task["leaseId"], "result": {"succeeded": {"outputs": outputs_for(&task)}}});
    let path = format!(
        "agent/v1/tasks/{}/report",
        task["id"].as_str().unwrap_or_default()
    );
    let (code, _) = app
        .gateway(Auth::Token(&bob_token), cp, &path, report.clone())
        .await;
    assert_eq!(code, 404);
    let (code, body) = app.gateway(Auth::Session(&alice), cp, &path, report).await;
    assert_eq!(
        (code, body["accepted"].as_bool()),
        (200, Some(true)),
        "{body}"
    );
    // Bob's own control plane has none of Alice's objects.
    let theirs = crate::fleet::create(&app, &bob, "bobco", "prod").await;
    crate::fleet::wait_for(&app, &bob, "bobco", theirs, "READY").await;
    let (_, body) = app
        .gateway(Auth::Token(&bob_token), theirs, "graphql", reads[0].clone())
        .await;
    assert_eq!(body["data"]["objects"], json!([]), "{body}");
}
