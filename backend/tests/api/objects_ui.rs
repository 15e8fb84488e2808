//! The objects UI's own server side: the live object stream at
//! `/orgs/{slug}/control-planes/{id}/objects/events`.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{Auth, Session, TestApp, spawn_app};

/// Creates a control plane in `org` and waits until it is Ready.
pub async fn ready_control_plane(app: &TestApp, who: &Session, org: &str, name: &str) -> Uuid {
    let data = app
        .gql_ok(
            Auth::Session(who),
            "mutation($o: String!, $n: String!) { createControlPlane(org: $o, name: $n) { id } }",
            json!({ "o": org, "n": name }),
        )
        .await;
    let id: Uuid = data["createControlPlane"]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    for _ in 0..600 {
        let data = app
            .gql_ok(
                Auth::Session(who),
                "query($o: String!, $id: UUID!) { organization(slug: $o) { controlPlane(id: $id) { status } } }",
                json!({ "o": org, "id": id }),
            )
            .await;
        if data["organization"]["controlPlane"]["status"] == "READY" {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("control plane {name} never became ready");
}

/// Opens the object stream; its status, content type and (the response, to read on).
async fn open_stream(
    app: &TestApp,
    who: Option<&Session>,
    org: &str,
    id: Uuid,
) -> (u16, String, reqwest::Response) {
    let mut req = app
        .http
        .get(format!(
            "{}/orgs/{org}/control-planes/{id}/objects/events",
            app.url
        ))
        .header("accept", "text/event-stream");
    if let Some(who) = who {
        req = req.header("cookie", format!("qleet_session={}", who.cookie));
    }
    let resp = req.send().await.expect("stream request");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, content_type, resp)
}

#[tokio::test]
async fn another_organisations_member_cannot_follow_a_control_planes_objects() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let id = ready_control_plane(&app, &alice, "acme", "prod").await;
    let bob = app.sign_in("bob@example.test").await;
    app.create_org(&bob, "other").await;

    // The owner is let in: an event stream.
    let (status, content_type, _open) = open_stream(&app, Some(&alice), "acme", id).await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");

    // Someone of another organisation: as if it did not exist, under either slug.
    for org in ["acme", "other"] {
        let (status, _, resp) = open_stream(&app, Some(&bob), org, id).await;
        assert_eq!(status, 404, "bob under {org}");
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(!body.to_string().contains("prod"), "{body}");
    }
    // A member reaching their control plane under another organisation's address is refused too.
    let (status, _, _) = open_stream(&app, Some(&alice), "other", id).await;
    assert_eq!(status, 404);
    // Nobody signed in.
    let (status, _, _) = open_stream(&app, None, "acme", id).await;
    assert_eq!(status, 401);
    // An id that is no control plane.
    let (status, _, _) = open_stream(&app, Some(&alice), "acme", Uuid::new_v4()).await;
    assert_eq!(status, 404);
}
