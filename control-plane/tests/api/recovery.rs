//! Recovery: an agent gets back a lease whose answer it never received at once; the database
//! going away is `UNAVAILABLE` (retry), never `INTERNAL`, and work resumes when it is back; a
//! shutdown answers agents' long-polls at once instead of waiting them out; a reconcile's claim
//! is short and renewed while it runs.

use std::time::Duration;

use qleet_test_support::cp::{APP, Cp};
use qleet_test_support::db::fresh_database;
use qleet_test_support::error_code;
use qleet_test_support::proxy::TcpProxy;
use serde_json::{Value, json};
use uuid::Uuid;

/// A lease call as agent `agent`, with `holding` (absent: an agent that does not send it).
async fn lease(cp: &Cp, agent: &str, holding: Option<Vec<&Value>>) -> Vec<Value> {
    let mut body = json!({ "agent": agent, "max": 50, "waitSeconds": 0 });
    if let Some(held) = holding {
        body["holding"] = json!(held.iter().map(|t| &t["id"]).collect::<Vec<_>>());
    }
    let (code, answer) = cp.post("/agent/v1/tasks/lease", body).await;
    assert_eq!(code, 200, "{answer}");
    answer["tasks"].as_array().cloned().unwrap_or_default()
}

fn ids(tasks: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = tasks
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_lease_whose_answer_was_lost_comes_back_to_its_agent_at_once_and_to_no_one_else() {
    let cp = Cp::start().await;
    cp.apply_ok(APP).await;
    // The app's first tasks (its account and its runtime) are queued by the reconcile, each in
    // its own time: wait for both, so that nothing new is queued while the test leases.
    let mut queued = 0;
    for _ in 0..600 {
        queued = cp
            .sql_count("select count(*) from agent_tasks where state = 'queued'")
            .await;
        if queued == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queued, 2, "the app's first two tasks were never queued");
    // Agent `a` leases them, and (say) never hears the answer.
    let lost = lease(&cp, "a", Some(vec![])).await;
    assert_eq!(lost.len(), 2, "{lost:?}");

    // Another agent does not get them while the leases are live, nor does `a` when it says it
    // is working on them, nor an older agent that does not say what it holds.
    assert!(lease(&cp, "b", Some(vec![])).await.is_empty());
    assert!(
        lease(&cp, "a", Some(lost.iter().collect()))
            .await
            .is_empty()
    );
    assert!(lease(&cp, "a", None).await.is_empty());

    // `a` asks again holding nothing: the same tasks, at once, under new leases, same attempt.
    let back = lease(&cp, "a", Some(vec![])).await;
    assert_eq!(ids(&back), ids(&lost));
    for t in &back {
        let before = lost.iter().find(|l| l["id"] == t["id"]).expect("same task");
        assert_ne!(t["leaseId"], before["leaseId"], "a new lease");
        assert_eq!(t["attempt"], before["attempt"], "the same attempt, resumed");
    }
    // The lost answer's lease is void: a stale worker holding it cannot renew or report.
    let stale = &lost[0];
    let (code, body) = cp
        .post(
            &format!(
                "/agent/v1/tasks/{}/renew",
                stale["id"].as_str().expect("id")
            ),
            json!({ "leaseId": stale["leaseId"] }),
        )
        .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (503, Some("LEASE_LOST"))
    );
    // The resumed lease works.
    let fresh = back
        .iter()
        .find(|t| t["id"] == stale["id"])
        .expect("resumed");
    let (code, body) = cp
        .report(fresh, qleet_test_support::cp::success(fresh))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["accepted"], true, "{body}");

    // Too long a list is refused clearly.
    let many: Vec<Uuid> = (0..201).map(|_| Uuid::new_v4()).collect();
    let (code, body) = cp
        .post(
            "/agent/v1/tasks/lease",
            json!({ "agent": "a", "holding": many }),
        )
        .await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (400, Some("INVALID_INPUT"))
    );
}

#[tokio::test]
async fn the_database_going_away_is_unavailable_with_retry_after_and_work_resumes_when_it_is_back()
{
    let db = fresh_database().await;
    let proxy = TcpProxy::in_front_of(&db).await;
    let cp = Cp::start_connecting(db.clone(), proxy.database_url(&db), Uuid::new_v4()).await;
    cp.apply_ok(APP).await;

    proxy.cut();
    // The agent API: 503, `Retry-After`, code UNAVAILABLE.
    let resp = cp
        .http
        .post(format!("{}/agent/v1/tasks/lease", cp.url))
        .bearer_auth(qleet_test_support::cp::ADMIN)
        .json(&json!({ "agent": "a", "max": 5 }))
        .send()
        .await
        .expect("lease");
    assert_eq!(resp.status().as_u16(), 503);
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    assert!(retry_after.is_some_and(|s| s >= 1), "{:?}", resp.headers());
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "UNAVAILABLE", "{body}");
    // GraphQL, a read and a write: UNAVAILABLE with a hint when to retry, never INTERNAL.
    let read = cp.gql("{ objects { kind name phase } }", json!({})).await;
    assert_eq!(error_code(&read).as_deref(), Some("UNAVAILABLE"), "{read}");
    assert_eq!(read["errors"][0]["extensions"]["retryAfterSeconds"], 1);
    let write = cp.apply(APP, false, false).await;
    assert_eq!(
        error_code(&write).as_deref(),
        Some("UNAVAILABLE"),
        "{write}"
    );
    // Readiness says so too.
    let ready = cp
        .http
        .get(format!("{}/readyz", cp.url))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 503);

    // Back: the same process answers again and the work moves on to Ready.
    proxy.restore();
    let mut phases = serde_json::Map::new();
    for _ in 0..100 {
        let body = cp.gql("{ objects { kind name phase } }", json!({})).await;
        if body.get("errors").is_none() {
            phases = body["data"].as_object().cloned().unwrap_or_default();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!phases.is_empty(), "the control plane did not come back");
    // A test agent completes the work as it falls due, until everything is Ready.
    for _ in 0..60 {
        let phases = cp.phases().await;
        if phases.len() == 5 && phases.values().all(|p| p == "READY") {
            return;
        }
        qleet_test_support::cp::drain(&cp, 1).await;
    }
    panic!(
        "not all Ready after the database came back: {:?}",
        cp.phases().await
    );
}

#[tokio::test]
async fn a_shutdown_answers_waiting_long_polls_at_once() {
    let mut cp = Cp::start().await;
    let url = format!("{}/agent/v1/tasks/lease", cp.url);
    let http = cp.http.clone();
    // Nothing is queued: this long-poll would wait its full 30 s.
    let poll = tokio::spawn(async move {
        http.post(url)
            .bearer_auth(qleet_test_support::cp::ADMIN)
            .json(&json!({ "agent": "a", "waitSeconds": 30 }))
            .send()
            .await
    });
    // Give the request time to reach the server and start waiting (nothing observable marks
    // that moment; if it arrived after the shutdown began it would fail below, not pass).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped = cp.shut_down().expect("in-process control plane");
    // Well inside the poll's 30 s: the answer, empty, and then the server has stopped.
    let answer = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long-poll was answered before its wait ran out")
        .expect("join")
        .expect("an answer, not a dropped connection");
    assert_eq!(answer.status().as_u16(), 200);
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["tasks"], json!([]));
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the server stopped once the long-poll was answered")
        .expect("join")
        .expect("served");
}

#[tokio::test]
async fn a_reconcile_claim_is_short_named_and_renewed_while_its_work_runs() {
    let cp = Cp::start().await;
    cp.apply_ok(APP).await;
    let pool = sqlx::PgPool::connect(&cp.db).await.expect("db");
    // The workload: nothing depends on it, so once the first reconciles have settled no other
    // object's reconcile touches its queue row.
    let id: Uuid = sqlx::query_scalar("select id from objects where name = 'web'")
        .fetch_one(&pool)
        .await
        .expect("object");
    let settled = tokio::time::Instant::now() + Duration::from_secs(20);
    while cp
        .sql_count("select count(*) from reconcile_queue where not_before <= now() or claimed_until is not null")
        .await
        > 0
    {
        assert!(tokio::time::Instant::now() < settled, "never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A reconcile of it is asked for while the test holds its row (`no key update`, so the
    // queue's foreign key can still be checked), so the reconcile waits on the lock, as a slow
    // one would, holding its claim meanwhile. (Bounded waits: a lock the test did not foresee
    // fails the test instead of hanging it.)
    let mut slow = pool.begin().await.expect("tx");
    let bounded = Duration::from_secs(10);
    tokio::time::timeout(
        bounded,
        sqlx::query("select id from objects where id = $1 for no key update")
            .bind(id)
            .execute(&mut *slow),
    )
    .await
    .expect("lock in time")
    .expect("lock");
    tokio::time::timeout(
        bounded,
        sqlx::query(
            "insert into reconcile_queue (object_id) values ($1)
             on conflict (object_id) do update set not_before = now(), seq = reconcile_queue.seq + 1",
        )
        .bind(id)
        .execute(&pool),
    )
    .await
    .expect("enqueued in time")
    .expect("enqueue");
    // As every enqueue does (nothing polls the queue).
    sqlx::query("select pg_notify('qleet_reconcile', '')")
        .execute(&pool)
        .await
        .expect("notify");
    let claim = || async {
        sqlx::query_as::<_, (Option<Uuid>, Option<f64>)>(
            "select claimed_by, extract(epoch from claimed_until - now())::float8
             from reconcile_queue where object_id = $1",
        )
        .bind(id)
        .fetch_optional(&pool)
        .await
        .expect("claim")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (holder, left) = loop {
        if let Some((Some(holder), Some(left))) = claim().await {
            break (holder, left);
        }
        assert!(tokio::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let length = qleet_control_plane::objects::reconcile::CLAIM.as_secs_f64();
    assert!(left <= length + 0.5, "a short claim: {left} s left");

    // For more than twice its length the claim stays held by the same process and never comes
    // near lapsing: renewed while the work runs (every third of its length), so no worker, of
    // this process or another, takes the object meanwhile. (A claim let lapse and taken again
    // would show as time left falling to zero first.)
    let watch_until = tokio::time::Instant::now() + Duration::from_secs_f64(2.0 * length + 1.0);
    let mut least = f64::MAX;
    while tokio::time::Instant::now() < watch_until {
        let (by, left) = claim().await.expect("still queued");
        assert_eq!(by, Some(holder));
        least = least.min(left.expect("claimed"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        least > length / 6.0,
        "renewed before it could lapse: at least {least} s left"
    );

    // The work goes on once the row is free, and the claim is let go with it.
    slow.rollback().await.expect("unlock");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while claim().await.is_some_and(|(by, _)| by == Some(holder)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the claim was never let go"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
