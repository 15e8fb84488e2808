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
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );

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

/// Waits until `css` has attribute `attr` equal to `want` (60 s at most).
async fn wait_attr(client: &fantoccini::Client, css: &str, attr: &str, want: &str) {
    let mut seen = None;
    for _ in 0..600 {
        if let Ok(el) = client.find(fantoccini::Locator::Css(css)).await {
            seen = el.attr(attr).await.ok().flatten();
            if seen.as_deref() == Some(want) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} never had {attr}={want} (last seen {seen:?})");
}

/// Waits until `css` reads `want` (pages keep the previous content while the next loads).
async fn wait_text(client: &fantoccini::Client, css: &str, want: &str) {
    let mut seen = None;
    for _ in 0..200 {
        if let Ok(el) = client.find(fantoccini::Locator::Css(css)).await {
            seen = el.text().await.ok();
            if seen.as_deref() == Some(want) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} never read {want:?} (last {seen:?})");
}

async fn count(client: &fantoccini::Client, css: &str) -> usize {
    client
        .find_all(fantoccini::Locator::Css(css))
        .await
        .map(|els| els.len())
        .unwrap_or(0)
}

/// An agent completing the control plane's tasks through the gateway (agent API, admin token);
/// answers how many it completed.
async fn complete_tasks(app: &TestApp, token: &str, id: Uuid) -> usize {
    let mut done = 0;
    loop {
        let leased: Value = app
            .http
            .post(format!("{}/cp/{id}/agent/v1/tasks/lease", app.url))
            .bearer_auth(token)
            .json(&json!({ "agent": "browser-test", "max": 50, "waitSeconds": 2 }))
            .send()
            .await
            .expect("lease")
            .json()
            .await
            .expect("lease json");
        let tasks = leased["tasks"].as_array().cloned().unwrap_or_default();
        if tasks.is_empty() {
            return done;
        }
        for task in tasks {
            let result = if task["operation"] == "delete" {
                json!({ "succeeded": {} })
            } else {
                json!({ "succeeded": { "outputs": qleet_test_support::cp::outputs_for(&task) } })
            };
            let resp = app
                .http
                .post(format!(
                    "{}/cp/{id}/agent/v1/tasks/{}/report",
                    app.url,
                    task["id"].as_str().unwrap_or_default()
                ))
                .bearer_auth(token)
                .json(&json!({ "leaseId": task["leaseId"], "result": result }))
                .send()
                .await
                .expect("report");
            assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
            done += 1;
        }
    }
}

#[tokio::test]
async fn a_member_plans_applies_and_follows_an_app_in_the_browser() {
    use crate::browser::{
        Driver, click, create_org_in_browser, fill, sign_in_browser, text_of, wait_status,
    };

    let app = spawn_app().await;
    let driver = Driver::start().await;
    let client = driver.browser(true).await;
    sign_in_browser(&client, &app, "ops@example.test").await;
    create_org_in_browser(&client, "acme", "Acme").await;
    client
        .goto(&format!("{}/orgs/acme/control-planes", app.url))
        .await
        .expect("list");
    fill(&client, "#cp-create-name", "prod").await;
    click(&client, "#cp-create-submit").await;
    wait_status(&client, "#cp-status", "READY").await;
    let here = client.current_url().await.expect("url");
    let id: Uuid = here
        .path_segments()
        .and_then(|mut s| s.next_back())
        .and_then(|s| s.parse().ok())
        .expect("control plane id in the address");
    let base = format!("{}/orgs/acme/control-planes/{id}", app.url);

    // A bad reference: the plan names the field and the missing object, and nothing is written.
    click(&client, "nav.subtabs a[href$='/apply']").await;
    let bad = "kind: AwsAccount\nmetadata: {name: main}\nspec: {accountId: \"123456789012\", roleArn: \"arn:aws:iam::123456789012:role/qleet\", defaultRegion: eu-west-1}\n---\nkind: ObjectStorageBucket\nmetadata: {name: assets}\nspec: {account: AwsAccount/nope}\n";
    set_yaml(&client, bad).await;
    click(&client, "#apply-plan").await;
    let error = text_of(&client, "#plan-error").await;
    assert!(
        error.contains("spec.account") && error.contains("AwsAccount/nope"),
        "{error}"
    );

    // The plan of the app, then applying exactly that.
    set_yaml(&client, qleet_test_support::cp::APP).await;
    click(&client, "#apply-plan").await;
    let summary = text_of(&client, "#plan-summary").await;
    assert_eq!(
        summary,
        "5 to create, 0 to update, 0 to delete, 0 unchanged"
    );
    wait_attr(
        &client,
        "tr.plan-change[data-key='Workload/web']",
        "data-action",
        "CREATE",
    )
    .await;
    assert!(
        count(&client, "tr.plan-change[data-key='Workload/web'] li.diff").await > 0,
        "a created object lists its fields"
    );
    click(&client, "#apply-submit").await;
    wait_attr(
        &client,
        "tr.object-row[data-key='Workload/web']",
        "data-key",
        "Workload/web",
    )
    .await;
    assert_eq!(count(&client, "tr.object-row").await, 5);
    let bucket_row = "tr.object-row[data-key='ObjectStorageBucket/assets']";
    let phase = client
        .find(fantoccini::Locator::Css(bucket_row))
        .await
        .expect("bucket row")
        .attr("data-phase")
        .await
        .expect("attr")
        .unwrap_or_default();
    assert_ne!(phase, "READY", "nothing is ready before the agent works");

    // The agent does the work; the list follows without a reload.
    client
        .execute("window.__stillHere = true; return true", vec![])
        .await
        .expect("mark the page");
    let owner = app.sign_in("ops@example.test").await;
    let token = app.create_token(&owner, "acme", "ADMIN").await;
    let mut completed = 0;
    for _ in 0..10 {
        completed += complete_tasks(&app, &token, id).await;
        let rows = client
            .find_all(fantoccini::Locator::Css(
                "tr.object-row[data-phase='READY']",
            ))
            .await
            .map(|r| r.len())
            .unwrap_or(0);
        if rows == 5 {
            break;
        }
    }
    assert!(completed >= 4, "tasks completed: {completed}");
    wait_attr(&client, bucket_row, "data-phase", "READY").await;
    wait_attr(
        &client,
        "tr.object-row[data-key='Workload/web']",
        "data-phase",
        "READY",
    )
    .await;
    let still_here = client
        .execute("return window.__stillHere === true", vec![])
        .await
        .expect("script");
    assert_eq!(
        still_here,
        json!(true),
        "the phases changed live, not by a reload"
    );

    // Filtering by kind.
    client
        .goto(&format!("{base}/objects?kind=Workload"))
        .await
        .expect("filtered list");
    text_of(&client, "tr.object-row[data-key='Workload/web']").await;
    assert_eq!(count(&client, "tr.object-row").await, 1);

    // The workload's page: its rendered spec carries the bucket's name and the database host,
    // the password only as a reference; its dependencies link to their pages.
    click(
        &client,
        "tr.object-row[data-key='Workload/web'] a.object-name",
    )
    .await;
    assert_eq!(text_of(&client, "#object-title").await, "Workload/web");
    wait_attr(&client, "#object-phase", "data-phase", "READY").await;
    let rendered = text_of(&client, "#object-rendered").await;
    assert!(
        rendered.contains(".abc123.eu-west-1.rds.amazonaws.com"),
        "{rendered}"
    );
    assert!(rendered.contains("secretKeyRef"), "{rendered}");
    assert!(rendered.contains("qleet-assets-"), "{rendered}");
    assert!(
        text_of(&client, "#object-spec")
            .await
            .contains("namespace: shop")
    );
    click(
        &client,
        "#object-dependencies a[href$='/RelationalDatabase/db']",
    )
    .await;
    wait_text(&client, "#object-title", "RelationalDatabase/db").await;
    wait_attr(
        &client,
        "#object-outputs tr.output[data-name='password']",
        "data-secret",
        "true",
    )
    .await;
    assert!(
        text_of(&client, "#object-dependents")
            .await
            .contains("Workload/web")
    );

    // The graph: one node per object, coloured by phase, one edge per dependency.
    click(&client, "nav.subtabs a[href$='/graph']").await;
    text_of(&client, "#object-graph").await;
    assert_eq!(count(&client, "#object-graph g.node").await, 5);
    assert_eq!(count(&client, "#object-graph path.edge").await, 5);
    wait_attr(
        &client,
        "#object-graph g.node[data-key='Workload/web'] rect",
        "fill",
        "#dcfae6",
    )
    .await;
    let column = |key: &'static str| {
        let client = client.clone();
        async move {
            client
                .find(fantoccini::Locator::Css(&format!(
                    "#object-graph g.node[data-key='{key}'] rect"
                )))
                .await
                .expect("node")
                .attr("x")
                .await
                .expect("x")
                .and_then(|x| x.parse::<f64>().ok())
                .expect("numeric x")
        }
    };
    assert!(column("AwsAccount/main").await < column("ObjectStorageBucket/assets").await);
    assert!(column("ObjectStorageBucket/assets").await < column("Workload/web").await);
    click(&client, "#object-graph g.node[data-key='Workload/web'] a").await;
    wait_text(&client, "#object-title", "Workload/web").await;

    // Deleting it (owner: admin and above), confirmed by name; the agent cleans up.
    fill(&client, "#object-delete-confirm", "web").await;
    click(&client, "#object-delete-submit").await;
    text_of(&client, "tr.object-row").await;
    complete_tasks(&app, &token, id).await;
    for _ in 0..600 {
        if count(&client, "tr.object-row[data-key='Workload/web']").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        count(&client, "tr.object-row[data-key='Workload/web']").await,
        0,
        "the deleted workload leaves the list"
    );
    client.close().await.expect("close");
}

/// Replaces the apply page's text (typing it would be slow and auto-indent nothing).
async fn set_yaml(client: &fantoccini::Client, yaml: &str) {
    crate::browser::text_of(client, "#apply-yaml").await;
    client
        .execute(
            "document.getElementById('apply-yaml').value = arguments[0]; return true",
            vec![json!(yaml)],
        )
        .await
        .expect("set the YAML");
}

const ACCOUNT: &str = "kind: AwsAccount\nmetadata: {name: main}\nspec: {accountId: \"123456789012\", roleArn: \"arn:aws:iam::123456789012:role/qleet\", defaultRegion: eu-west-1}\n";

/// A page as the server renders it for `who`.
async fn page(app: &TestApp, who: &Session, path: &str) -> String {
    app.http
        .get(format!("{}{path}", app.url))
        .header("cookie", format!("qleet_session={}", who.cookie))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html")
}

#[tokio::test]
async fn planning_and_applying_work_without_javascript_and_viewers_only_plan() {
    use crate::browser::{Driver, click, fill, sign_in_browser, text_of};

    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let id = ready_control_plane(&app, &alice, "acme", "prod").await;
    let base = format!("/orgs/acme/control-planes/{id}");

    let driver = Driver::start().await;
    let client = driver.browser(false).await;
    sign_in_browser(&client, &app, "alice@example.test").await;
    client
        .goto(&format!("{}{base}/apply", app.url))
        .await
        .expect("apply page");
    fill(&client, "#apply-yaml", ACCOUNT).await;
    click(&client, "#apply-plan").await;
    assert_eq!(
        text_of(&client, "#plan-summary").await,
        "1 to create, 0 to update, 0 to delete, 0 unchanged"
    );
    // Planning wrote nothing.
    let before = page(&app, &alice, &format!("{base}/objects")).await;
    assert!(before.contains("objects-empty"), "{before}");
    click(&client, "#apply-submit").await;
    text_of(&client, "tr.object-row[data-key='AwsAccount/main']").await;
    let url = client.current_url().await.expect("url");
    assert!(url.path().ends_with("/objects"), "{url}");
    client.close().await.expect("close");

    // A viewer sees the objects and may plan, but is offered neither applying nor deleting.
    let viewer = app
        .add_member(&alice, "acme", "viewer@example.test", "VIEWER")
        .await;
    let list = page(&app, &viewer, &format!("{base}/objects")).await;
    assert!(list.contains("AwsAccount/main"), "{list}");
    assert!(!list.contains("objects-apply"));
    let plan = page(
        &app,
        &viewer,
        &format!("{base}/apply?yaml={}", url_encode(ACCOUNT)),
    )
    .await;
    assert!(
        plan.contains("0 to create, 0 to update, 0 to delete, 1 unchanged"),
        "{plan}"
    );
    let changed = ACCOUNT.replace("eu-west-1", "eu-central-1");
    let plan = page(
        &app,
        &viewer,
        &format!("{base}/apply?yaml={}", url_encode(&changed)),
    )
    .await;
    assert!(plan.contains("1 to update"), "{plan}");
    assert!(plan.contains("Viewers can plan but not apply"), "{plan}");
    assert!(!plan.contains("apply-submit"));
    let object = page(&app, &viewer, &format!("{base}/objects/AwsAccount/main")).await;
    assert!(object.contains("object-spec"), "{object}");
    assert!(!object.contains("object-delete-submit"));
}

fn url_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Leases the tasks due (waiting up to `wait` seconds) as the browser test's agent.
async fn lease(app: &TestApp, token: &str, id: Uuid, wait: u32) -> Vec<Value> {
    let leased: Value = app
        .http
        .post(format!("{}/cp/{id}/agent/v1/tasks/lease", app.url))
        .bearer_auth(token)
        .json(&json!({ "agent": "browser-test", "max": 50, "waitSeconds": wait }))
        .send()
        .await
        .expect("lease")
        .json()
        .await
        .expect("lease json");
    leased["tasks"].as_array().cloned().unwrap_or_default()
}

async fn report(app: &TestApp, token: &str, id: Uuid, task: &Value, result: Value) {
    let resp = app
        .http
        .post(format!(
            "{}/cp/{id}/agent/v1/tasks/{}/report",
            app.url,
            task["id"].as_str().unwrap_or_default()
        ))
        .bearer_auth(token)
        .json(&json!({ "leaseId": task["leaseId"], "result": result }))
        .send()
        .await
        .expect("report");
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
}

#[tokio::test]
async fn a_failed_object_is_retried_and_drift_is_shown_in_the_browser() {
    use crate::browser::{Driver, click, create_org_in_browser, sign_in_browser, text_of};

    let app = spawn_app().await;
    let driver = Driver::start().await;
    let client = driver.browser(true).await;
    sign_in_browser(&client, &app, "ops@example.test").await;
    create_org_in_browser(&client, "acme", "Acme").await;
    let owner = app.sign_in("ops@example.test").await;
    let id = ready_control_plane(&app, &owner, "acme", "prod").await;
    let token = app.create_token(&owner, "acme", "ADMIN").await;
    let base = format!("{}/orgs/acme/control-planes/{id}", app.url);

    // Two buckets; the agent is refused one of them for good.
    let yaml = format!(
        "{ACCOUNT}---\nkind: ObjectStorageBucket\nmetadata: {{name: assets}}\nspec: {{account: AwsAccount/main, driftPolicy: Report}}\n---\nkind: ObjectStorageBucket\nmetadata: {{name: logs}}\nspec: {{account: AwsAccount/main}}\n"
    );
    let (code, body) = app
        .gateway(
            Auth::Token(&token),
            id,
            "graphql",
            json!({ "query": "mutation($y: String!) { apply(yaml: $y) { applied } }", "variables": { "y": yaml } }),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");
    let mut refused = false;
    for _ in 0..10 {
        let tasks = lease(&app, &token, id, 2).await;
        for task in &tasks {
            let result = if task["objectName"] == "logs" && !refused {
                refused = true;
                json!({"failed": {"code": "AccessDenied", "message": "s3:CreateBucket denied", "retryable": false}})
            } else {
                json!({ "succeeded": { "outputs": qleet_test_support::cp::outputs_for(task) } })
            };
            report(&app, &token, id, task, result).await;
        }
        if tasks.is_empty() && refused {
            break;
        }
    }
    assert!(refused, "the logs bucket's work was leased");

    // The failed bucket's page says why and offers a retry; the retry runs its work again.
    client
        .goto(&format!("{base}/objects/ObjectStorageBucket/logs"))
        .await
        .expect("object page");
    wait_attr(&client, "#object-phase", "data-phase", "FAILED").await;
    click(&client, "#object-retry").await;
    wait_attr(&client, "#object-phase", "data-phase", "PROVISIONING").await;
    assert!(complete_tasks(&app, &token, id).await >= 1);
    wait_attr(&client, "#object-phase", "data-phase", "READY").await;
    client.refresh().await.expect("reload");
    wait_attr(
        &client,
        "#object-trail tr.trail-entry[data-action='object.retry']",
        "data-action",
        "object.retry",
    )
    .await;
    let me = app
        .gql_ok(Auth::Session(&owner), "{ me { id } }", json!({}))
        .await;
    let retried_by = text_of(
        &client,
        "#object-trail tr.trail-entry[data-action='object.retry'] td.actor",
    )
    .await;
    assert_eq!(
        retried_by,
        format!("user:{}", me["me"]["id"].as_str().unwrap_or_default())
    );
    assert!(
        count(
            &client,
            "#object-trail tr.trail-entry[data-action='agent.report']"
        )
        .await
            >= 2,
        "the agent's failure and success are on record"
    );

    // Drift: the other bucket's versioning was turned on behind Qleet's back; checked from its
    // page, it shows as Drifted with the field (reported only, by its policy).
    client
        .goto(&format!("{base}/objects/ObjectStorageBucket/assets"))
        .await
        .expect("object page");
    wait_attr(&client, "#object-phase", "data-phase", "READY").await;
    click(&client, "#object-refresh").await;
    let mut observed = false;
    for _ in 0..10 {
        for task in lease(&app, &token, id, 2).await {
            assert_eq!(task["operation"], "observe", "{task}");
            let mut seen = qleet_test_support::cp::observed_for(&task);
            seen["versioning"] = json!(true);
            report(
                &app,
                &token,
                id,
                &task,
                json!({ "succeeded": { "outputs": seen } }),
            )
            .await;
            observed = true;
        }
        if observed {
            break;
        }
    }
    assert!(
        observed,
        "the refresh asked the agent to observe the bucket"
    );
    // The comparison is the reconciler's, after the report: wait for it, then read the page.
    let query = json!({ "query": "{ object(kind: \"ObjectStorageBucket\", name: \"assets\") { phase conditions { type status } } }" });
    for _ in 0..300 {
        let (_, body) = app
            .gateway(Auth::Token(&token), id, "graphql", query.clone())
            .await;
        let o = &body["data"]["object"];
        let drifted = o["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Drifted" && c["status"] == true);
        if drifted && o["phase"] == "READY" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.refresh().await.expect("reload");
    wait_attr(&client, "#object-phase", "data-phase", "READY").await;
    wait_attr(
        &client,
        "tr.condition[data-type='Drifted']",
        "data-status",
        "true",
    )
    .await;
    let drift = text_of(&client, "tr.condition[data-type='Drifted']").await;
    assert!(
        drift.contains("spec.versioning is true (expected false)"),
        "{drift}"
    );
    let events = text_of(&client, "#object-events").await;
    assert!(events.contains("DriftDetected"), "{events}");

    // The control plane's whole trail, and the field reference.
    client.goto(&format!("{base}/audit")).await.expect("trail");
    wait_attr(
        &client,
        "tr.trail-entry[data-action='object.refresh']",
        "data-action",
        "object.refresh",
    )
    .await;
    assert!(count(&client, "tr.trail-entry[data-action='object.create']").await >= 3);
    let export = client
        .find(fantoccini::Locator::Css("#trail-export"))
        .await
        .expect("export link")
        .attr("href")
        .await
        .expect("href")
        .unwrap_or_default();
    assert_eq!(export, format!("/cp/{id}/audit.jsonl"));
    let lines = app
        .http
        .get(format!("{}{export}", app.url))
        .header("cookie", format!("qleet_session={}", owner.cookie))
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("body");
    assert!(
        lines
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "{lines}"
    );
    assert!(lines.contains("\"object.retry\""), "{lines}");
    client
        .goto(&format!("{base}/kinds"))
        .await
        .expect("reference");
    wait_attr(
        &client,
        "#kind-RelationalDatabase tr.kind-field[data-path='spec.engine']",
        "data-change",
        "REPLACE",
    )
    .await;
    wait_attr(
        &client,
        "#kind-AwsAccount tr.kind-field[data-path='spec.accountId']",
        "data-change",
        "IMMUTABLE",
    )
    .await;
    client.close().await.expect("close");
}
