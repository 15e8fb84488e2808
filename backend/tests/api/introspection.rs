//! Schema introspection on the management endpoint `/graphql` (issue 11, item 13): `qleet serve`
//! refuses it to anonymous callers by default (`QLEET_INTROSPECTION`), `qleet dev` allows it.

use qleet::config::Introspection;
use serde_json::json;

use crate::support::{Auth, error_code, spawn_app, spawn_app_with};

const SCHEMA: &str = "{ __schema { queryType { name } } }";

/// Ways to ask for the schema: plain, aliased, `__type`, and inside a fragment.
const ASKS: &[&str] = &[
    SCHEMA,
    "{ s: __schema { types { name } } }",
    "{ __type(name: \"Query\") { name fields { name } } }",
    "query { ...F } fragment F on Query { __schema { queryType { name } } }",
];

#[tokio::test]
async fn serve_refuses_introspection_to_anonymous_callers_with_a_stable_code() {
    let app = spawn_app_with(|c| c.introspection = Introspection::Authenticated).await;
    for query in ASKS {
        let body = app.gql(Auth::Anonymous, query, json!({})).await;
        assert_eq!(
            error_code(&body).as_deref(),
            Some("UNAUTHENTICATED"),
            "{query}: {body}"
        );
        assert!(
            body["data"].is_null(),
            "{query}: nothing of the schema: {body}"
        );
    }
    // Ordinary anonymous requests are unaffected.
    let body = app.gql(Auth::Anonymous, "{ __typename }", json!({})).await;
    assert_eq!(body["data"]["__typename"], "Query", "{body}");
    // Signed in, or with an API token, the schema is there.
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let token = app.create_token(&alice, "acme", "VIEWER").await;
    for auth in [Auth::Session(&alice), Auth::Token(&token)] {
        for query in ASKS {
            let body = app.gql(auth, query, json!({})).await;
            assert!(body.get("errors").is_none(), "{query}: {body}");
        }
        let body = app.gql(auth, SCHEMA, json!({})).await;
        assert_eq!(body["data"]["__schema"]["queryType"]["name"], "Query");
    }
}

#[tokio::test]
async fn introspection_can_be_turned_off_for_everyone() {
    let app = spawn_app_with(|c| c.introspection = Introspection::Off).await;
    let alice = app.sign_in("alice@example.test").await;
    let body = app.gql(Auth::Session(&alice), SCHEMA, json!({})).await;
    assert_eq!(error_code(&body).as_deref(), Some("FORBIDDEN"), "{body}");
    let body = app.gql(Auth::Anonymous, SCHEMA, json!({})).await;
    assert_eq!(error_code(&body).as_deref(), Some("FORBIDDEN"), "{body}");
}

#[tokio::test]
async fn dev_allows_anonymous_introspection() {
    // The test harness runs Qleet as `qleet dev` configures it.
    let app = spawn_app().await;
    let body = app.gql(Auth::Anonymous, SCHEMA, json!({})).await;
    assert_eq!(
        body["data"]["__schema"]["queryType"]["name"], "Query",
        "{body}"
    );
}
