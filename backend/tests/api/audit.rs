//! The audit log records who did what, from where, with before/after, and pages by cursor.

use serde_json::json;

use crate::support::{Auth, spawn_app};

#[tokio::test]
async fn mutations_are_recorded_with_actor_ip_and_changes() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    app.gql_ok(
        Auth::Session(&alice),
        "mutation { renameOrganization(slug: \"acme\", name: \"Acme Ltd\") { name } }",
        json!({}),
    )
    .await;
    let token = app.create_token(&alice, "acme", "ADMIN").await;
    app.gql_ok(
        Auth::Token(&token),
        "mutation { renameOrganization(slug: \"acme\", name: \"Acme Inc\") { name } }",
        json!({}),
    )
    .await;

    let log = app
        .gql_ok(
            Auth::Session(&alice),
            "{ organization(slug: \"acme\") { auditLog(first: 10) { edges { node { actor actorKind action ip changes } } } } }",
            json!({}),
        )
        .await;
    let entries: Vec<_> = log["organization"]["auditLog"]["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| e["node"].clone())
        .collect();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        [
            "organization.rename",
            "api_token.create",
            "organization.rename",
            "organization.create"
        ]
    );
    let by_token = &entries[0];
    assert_eq!(by_token["actorKind"], "token");
    assert!(
        by_token["actor"]
            .as_str()
            .expect("actor")
            .contains("alice@example.test")
    );
    assert_eq!(
        by_token["changes"]["name"],
        json!({ "before": "Acme Ltd", "after": "Acme Inc" })
    );
    assert_eq!(by_token["ip"], "127.0.0.1");
    assert_eq!(entries[2]["actorKind"], "user");
    assert_eq!(entries[2]["actor"], "alice@example.test");
    assert_eq!(
        entries[2]["changes"]["name"],
        json!({ "before": "Org acme", "after": "Acme Ltd" })
    );
}

#[tokio::test]
async fn the_log_pages_by_cursor_without_gaps_or_repeats() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    for i in 0..11 {
        app.gql_ok(
            Auth::Session(&alice),
            "mutation($n: String!) { renameOrganization(slug: \"acme\", name: $n) { name } }",
            json!({ "n": format!("Name {i}") }),
        )
        .await;
    }
    let page = "query($a: String) { organization(slug: \"acme\") { auditLog(first: 5, after: $a) { edges { cursor node { id } } pageInfo { hasNextPage endCursor } } } }";
    let mut after = serde_json::Value::Null;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let data = app
            .gql_ok(Auth::Session(&alice), page, json!({ "a": after }))
            .await;
        let conn = &data["organization"]["auditLog"];
        for e in conn["edges"].as_array().expect("edges") {
            seen.push(
                e["node"]["id"]
                    .as_str()
                    .expect("id")
                    .parse::<i64>()
                    .expect("number"),
            );
        }
        pages += 1;
        if !conn["pageInfo"]["hasNextPage"].as_bool().expect("bool") {
            break;
        }
        after = conn["pageInfo"]["endCursor"].clone();
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 12);
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first, no repeats: {seen:?}"
    );
}
