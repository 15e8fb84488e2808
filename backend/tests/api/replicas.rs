//! Issue 14: two `qleet` instances (replicas) on one management database share the work. Each
//! provisioning, hibernation, Stripe event and usage sample happens once; the gateway and the
//! live streams work through either; when one stops, the other takes its control planes over.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::fleet::{create, processes_of, wait_for};
use crate::support::{Auth, Session, TestApp, spawn_app_with, spawn_replica, unlimited};

async fn through(app: &TestApp, who: &Session, id: Uuid) -> (u16, Value) {
    app.gateway(
        Auth::Session(who),
        id,
        "graphql",
        json!({ "query": "{ controlPlane { id } }" }),
    )
    .await
}

/// Every status a control plane went through, oldest first.
async fn history(app: &TestApp, id: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "select to_status from control_plane_events where control_plane_id = $1 order by id",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .expect("events")
}

/// No transition was made twice in a row (by two instances).
fn once_each(history: &[String]) {
    for pair in history.windows(2) {
        assert_ne!(pair[0], pair[1], "a transition happened twice: {history:?}");
    }
}

/// Reads server-sent events until one carries `want` (10 s at most).
async fn sse_until(resp: &mut reqwest::Response, want: &str) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no event with {want} in: {seen}"))
            .expect("stream")
            .expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if seen.contains(want) {
            return seen;
        }
    }
}

#[tokio::test]
async fn two_replicas_provision_and_hibernate_once_and_either_reaches_every_control_plane() {
    let idle = |c: &mut qleet::config::Config| {
        unlimited(c);
        c.hibernate_after = Some(Duration::from_secs(4));
    };
    let a = spawn_app_with(idle).await;
    let b = spawn_replica(&a, idle).await;
    let alice = a.sign_in("alice@example.test").await;
    a.create_org(&alice, "acme").await;

    // Asked for through both; each provisioned once, by one of them, as one process.
    let mut ids = Vec::new();
    for (n, app) in [("one", &a), ("two", &b), ("three", &a), ("four", &b)] {
        ids.push(create(app, &alice, "acme", n).await);
    }
    for id in &ids {
        wait_for(&b, &alice, "acme", *id, "READY").await;
        assert_eq!(processes_of(*id), 1, "{id}");
        let h = history(&a, *id).await;
        assert_eq!(h, ["pending", "provisioning", "ready"], "{id}");
    }
    let held: Vec<(Uuid, Option<Uuid>)> =
        sqlx::query_as("select id, runtime_holder from control_planes")
            .fetch_all(&a.pool)
            .await
            .expect("holders");
    let holders: std::collections::HashSet<_> = held.iter().map(|(_, h)| *h).collect();
    assert!(held.iter().all(|(_, h)| h.is_some()), "{held:?}");
    assert!(holders.len() <= 2, "{held:?}");

    // The gateway and the live stream work through either, whoever runs the control plane.
    for id in &ids {
        for app in [&a, &b] {
            let (code, body) = through(app, &alice, *id).await;
            assert_eq!(code, 200, "{body}");
            assert_eq!(body["data"]["controlPlane"]["id"], id.to_string());
        }
    }
    let mut stream = b
        .authed(
            b.http
                .get(format!("{}/orgs/acme/control-planes/events", b.url))
                .header("accept", "text/event-stream"),
            Auth::Session(&alice),
        )
        .send()
        .await
        .expect("events");
    assert_eq!(stream.status(), 200);
    let suspend =
        "mutation($o: String!, $id: UUID!) { suspendControlPlane(org: $o, id: $id) { status } }";
    a.gql_ok(
        Auth::Session(&alice),
        suspend,
        json!({ "o": "acme", "id": ids[0] }),
    )
    .await;
    let seen = sse_until(&mut stream, "SUSPENDED").await;
    assert!(seen.contains(&ids[0].to_string()), "{seen}");
    wait_for(&a, &alice, "acme", ids[0], "SUSPENDED").await;
    // Whichever instance ran it stops it.
    for _ in 0..100 {
        if processes_of(ids[0]) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(processes_of(ids[0]), 0);

    // Left alone, each hibernates (once: never twice in a row); a request through either wakes it, as one process.
    for id in &ids[1..] {
        wait_for(&a, &alice, "acme", *id, "HIBERNATED").await;
    }
    for (id, app) in ids[1..].iter().zip([&b, &a, &b]) {
        let (code, body) = through(app, &alice, *id).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(processes_of(*id), 1, "{id}");
        let h = history(&a, *id).await;
        once_each(&h);
        assert!(h.contains(&"hibernated".to_owned()), "{h:?}");
    }
}

#[tokio::test]
async fn when_a_replica_stops_the_other_takes_its_control_planes_over() {
    let a = spawn_app_with(unlimited).await;
    let b = spawn_replica(&a, unlimited).await;
    let alice = a.sign_in("alice@example.test").await;
    a.create_org(&alice, "acme").await;
    let mut ids = Vec::new();
    for n in ["one", "two", "three"] {
        ids.push(create(&a, &alice, "acme", n).await);
    }
    for id in &ids {
        wait_for(&a, &alice, "acme", *id, "READY").await;
    }
    let a_instance: Vec<Uuid> = sqlx::query_scalar(
        "select distinct runtime_holder from control_planes where runtime_holder is not null",
    )
    .fetch_all(&a.pool)
    .await
    .expect("holders");
    assert!(!a_instance.is_empty());
    let pool = b.pool.clone();
    a.stop().await;
    // Every control plane answers through the survivor, each as exactly one process.
    for id in &ids {
        let (code, body) = through(&b, &alice, *id).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(processes_of(*id), 1, "{id}");
    }
    let left: i64 =
        sqlx::query_scalar("select count(*) from control_planes where runtime_holder = any($1)")
            .bind(&a_instance)
            .fetch_one(&pool)
            .await
            .expect("holders");
    // Those the stopped instance held are held by the survivor now (it may have held none).
    let survivor: i64 = sqlx::query_scalar(
        "select count(*) from control_planes c join management_instances i on i.id = c.runtime_holder",
    )
    .fetch_one(&pool)
    .await
    .expect("holders");
    assert_eq!(survivor, 3, "{left} still held by the stopped instance");
}

#[tokio::test]
async fn two_replicas_apply_a_stripe_event_once_and_sample_usage_once_an_interval() {
    use crate::billing::{count, customer_in_localstripe, deliver, event, sign, wait_applied};
    use crate::support::stripe::LocalStripe;
    let ls = LocalStripe::start().await;
    ls.catalogue().await;
    let url = ls.url.clone();
    let settings = move |c: &mut qleet::config::Config| {
        crate::billing::use_stripe(c, &url);
        if let Some(s) = c.billing.stripe.as_mut() {
            s.meter_event = Some("qleet_object_hours".into());
        }
        c.billing.usage_sample_interval = Duration::from_secs(1);
        c.billing.interval = Duration::from_millis(250);
    };
    let a = spawn_app_with(settings.clone()).await;
    let b = spawn_replica(&a, settings).await;
    let alice = a.sign_in("alice@example.test").await;
    a.create_org(&alice, "acme").await;
    let customer = customer_in_localstripe(&a, &ls, &alice, "acme").await;
    let sub = ls.subscribe(&customer, "price_team").await;
    let body = event(
        "evt_both",
        "customer.subscription.updated",
        chrono::Utc::now().timestamp(),
        json!({ "id": sub["id"], "object": "subscription", "customer": customer, "status": "active" }),
    );
    // Stripe delivers it to both at once (a retry racing the first delivery).
    let signature = sign(&body);
    let (first, second) = tokio::join!(
        deliver(&a, &body, &signature),
        deliver(&b, &body, &signature)
    );
    assert_eq!((first.0, second.0), (200, 200), "{first:?} {second:?}");
    assert_eq!(wait_applied(&a, "evt_both").await, None);
    assert_eq!(count(&a, "select count(*) from stripe_events").await, 1);
    assert_eq!(
        count(
            &a,
            "select count(*) from audit_log where action = 'billing.subscription'"
        )
        .await,
        1
    );

    // Metering: both instances' workers run; each control plane is sampled once an interval.
    let id = create(&a, &alice, "acme", "prod").await;
    wait_for(&a, &alice, "acme", id, "READY").await;
    let mut samples: Vec<chrono::DateTime<chrono::Utc>> = Vec::new();
    for _ in 0..100 {
        samples = sqlx::query_scalar(
            "select sampled_at from usage_samples where control_plane_id = $1 order by sampled_at",
        )
        .bind(id)
        .fetch_all(&a.pool)
        .await
        .expect("samples");
        if samples.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(samples.len() >= 4, "{samples:?}");
    for pair in samples.windows(2) {
        assert!(
            pair[1] - pair[0] >= chrono::Duration::milliseconds(500),
            "sampled twice in one interval: {samples:?}"
        );
    }
}
