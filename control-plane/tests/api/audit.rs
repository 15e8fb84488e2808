//! The audit trail: every apply, delete, retry, refresh, agent registration and agent report is
//! recorded with its actor, time and diff; read a page at a time with cursors, per object, and
//! exported as JSON lines; the database refuses to change or remove an entry. (Who the gateway
//! names, and that the tenant's own database role cannot rewrite it, are tested in the
//! management plane's crate.)

use std::collections::BTreeSet;

use qleet_test_support::cp::{ADMIN, APP, Cp, drain};
use qleet_test_support::error_code;
use serde_json::{Value, json};

const LOG: &str = "query($f: Int, $a: String, $o: String) {
  auditLog(first: $f, after: $a, object: $o) {
    edges { cursor node { id at actor action object detail diff } }
    pageInfo { hasNextPage endCursor }
  } }";

/// Every entry (of `object`), newest first, read `page` at a time through the cursors.
async fn all_entries(cp: &Cp, object: Option<&str>, page: i32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let data = cp
            .gql_ok(LOG, json!({ "f": page, "a": after, "o": object }))
            .await;
        let log = &data["auditLog"];
        let edges = log["edges"].as_array().expect("edges");
        assert!(edges.len() <= page as usize);
        for e in edges {
            assert_eq!(e["cursor"], e["node"]["id"]);
            out.push(e["node"].clone());
        }
        if log["pageInfo"]["hasNextPage"] != true {
            return out;
        }
        after = Some(
            log["pageInfo"]["endCursor"]
                .as_str()
                .expect("a cursor when there is a next page")
                .to_owned(),
        );
    }
}

fn actions(entries: &[Value]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_owned(),
                e["object"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn has(entries: &[Value], action: &str, object: &str) -> bool {
    entries
        .iter()
        .any(|e| e["action"] == action && e["object"].as_str().unwrap_or_default() == object)
}

#[tokio::test]
async fn every_change_is_recorded_with_its_actor_time_and_diff_and_read_by_cursor() {
    let cp = Cp::start().await;
    let started = chrono::Utc::now();

    // Agent registration (by the admin) and the agent's own registration.
    let token = cp.registration_token().await;
    let (code, body) = cp
        .post(
            "/agent/v1/register",
            json!({ "token": token, "name": "agent-1", "version": "0.1.0" }),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let agent = body["agentId"].as_str().expect("agentId").to_owned();

    cp.apply_ok(APP).await;
    while !drain(&cp, 1).await.is_empty() {}
    cp.wait_ready(5).await;

    // An update: the diff names the field, before and after.
    let changed = APP.replace("sizeClass: db.t4g.micro", "sizeClass: db.t4g.small");
    cp.apply_ok(&changed).await;
    // An apply that changes nothing is recorded too.
    cp.apply_ok(&changed).await;
    while !drain(&cp, 1).await.is_empty() {}
    cp.wait_ready(5).await;

    // A refresh; a failure reported by the agent and its retry.
    cp.gql_ok(
        "mutation { refresh(kind: \"ObjectStorageBucket\", name: \"assets\") { phase } }",
        json!({}),
    )
    .await;
    while !drain(&cp, 1).await.is_empty() {}
    let logs = format!(
        "{changed}---\nkind: ObjectStorageBucket\nmetadata: {{name: logs}}\nspec: {{account: AwsAccount/main}}\n"
    );
    cp.apply_ok(&logs).await;
    let tasks = cp.lease_n(1).await;
    let (code, body) = cp
        .report(
            &tasks[0],
            json!({"failed": {"code": "AccessDenied", "message": "s3:CreateBucket denied", "retryable": false}}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    cp.wait_until("logs FAILED", |p| {
        p.get("ObjectStorageBucket/logs").map(String::as_str) == Some("FAILED")
    })
    .await;
    cp.gql_ok(
        "mutation { retry(kind: \"ObjectStorageBucket\", name: \"logs\") { phase } }",
        json!({}),
    )
    .await;
    while !drain(&cp, 1).await.is_empty() {}
    cp.wait_ready(6).await;

    // A delete, and the agent revoked.
    cp.gql_ok(
        "mutation { delete(kind: \"Workload\", name: \"web\") { applied } }",
        json!({}),
    )
    .await;
    while !drain(&cp, 1).await.is_empty() {}
    cp.gql_ok(
        "mutation($id: UUID!) { revokeAgent(id: $id) { id } }",
        json!({ "id": agent }),
    )
    .await;

    let entries = all_entries(&cp, None, 3).await;
    let ids: Vec<i64> = entries
        .iter()
        .map(|e| e["id"].as_str().expect("id").parse().expect("number"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "newest first, each once: {ids:?}"
    );
    let total = cp
        .sql_count("select count(*) from qleet_audit.entries")
        .await;
    assert_eq!(ids.len() as i64, total, "the cursors reach every entry");
    for e in &entries {
        let at: chrono::DateTime<chrono::Utc> =
            e["at"].as_str().expect("at").parse().expect("a time");
        assert!(at >= started && at <= chrono::Utc::now(), "{e}");
        assert!(e["diff"].is_array(), "{e}");
    }
    for kind_name in [
        "AwsAccount/main",
        "KubernetesRuntime/prod",
        "ObjectStorageBucket/assets",
        "RelationalDatabase/db",
        "Workload/web",
    ] {
        assert!(
            has(&entries, "object.create", kind_name),
            "{kind_name}: {:?}",
            actions(&entries)
        );
    }
    for kind_name in [
        "ObjectStorageBucket/assets",
        "RelationalDatabase/db",
        "Workload/web",
    ] {
        assert!(
            has(&entries, "agent.report", kind_name),
            "{kind_name}: {:?}",
            actions(&entries)
        );
    }
    let by_admin = |action: &str, object: &str| {
        entries
            .iter()
            .find(|e| e["action"] == action && e["object"].as_str().unwrap_or_default() == object)
            .unwrap_or_else(|| panic!("no {action} of {object}: {:?}", actions(&entries)))
            .clone()
    };
    let update = by_admin("object.update", "RelationalDatabase/db");
    assert_eq!(update["actor"], "admin");
    assert_eq!(
        update["diff"],
        json!([{ "path": "spec.sizeClass", "before": "db.t4g.micro", "after": "db.t4g.small" }])
    );
    let create = by_admin("object.create", "RelationalDatabase/db");
    assert!(
        create["diff"]
            .as_array()
            .expect("diff")
            .iter()
            .any(|d| d["path"] == "spec.engine"
                && d["after"] == "postgres"
                && d["before"].is_null()),
        "{create}"
    );
    assert_eq!(by_admin("object.delete", "Workload/web")["actor"], "admin");
    assert_eq!(
        by_admin("object.refresh", "ObjectStorageBucket/assets")["actor"],
        "admin"
    );
    assert_eq!(
        by_admin("object.retry", "ObjectStorageBucket/logs")["actor"],
        "admin"
    );
    assert_eq!(by_admin("agent.registration", "")["actor"], "admin");
    assert_eq!(
        by_admin("agent.register", "")["actor"],
        format!("agent:{agent}")
    );
    assert_eq!(by_admin("agent.revoke", "")["actor"], "admin");
    assert!(
        by_admin("apply", "")["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("nothing changed")
    );
    // Agent reports name the agent, what it did and, on success, the outputs it read back.
    let failed = entries
        .iter()
        .find(|e| {
            e["action"] == "agent.report"
                && e["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("AccessDenied: s3:CreateBucket denied")
        })
        .expect("the failure report");
    assert_eq!(failed["actor"], "agent:test-agent");
    assert_eq!(failed["object"], "ObjectStorageBucket/logs");
    let made = entries
        .iter()
        .rev()
        .find(|e| e["action"] == "agent.report" && e["object"] == "RelationalDatabase/db")
        .expect("the database's first report");
    assert!(
        made["diff"]
            .as_array()
            .expect("diff")
            .iter()
            .any(|d| d["path"] == "outputs.host"),
        "{made}"
    );

    // One object's trail: only its entries, all of them.
    let db = all_entries(&cp, Some("RelationalDatabase/db"), 2).await;
    assert!(!db.is_empty());
    assert!(db.iter().all(|e| e["object"] == "RelationalDatabase/db"));
    let expected = entries
        .iter()
        .filter(|e| e["object"] == "RelationalDatabase/db")
        .count();
    assert_eq!(db.len(), expected);

    // Bad cursors and object names are refused with their field.
    for (vars, field) in [
        (json!({ "a": "nope" }), "after"),
        (json!({ "o": "no-slash" }), "object"),
    ] {
        let body = cp.gql(LOG, vars).await;
        assert_eq!(
            error_code(&body).as_deref(),
            Some("INVALID_INPUT"),
            "{body}"
        );
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
    }

    // Exported whole as JSON lines, oldest first; and per object.
    let export = |query: &'static str| {
        let http = cp.http.clone();
        let url = format!("{}/audit.jsonl{query}", cp.url);
        async move {
            let resp = http
                .get(url)
                .bearer_auth(ADMIN)
                .send()
                .await
                .expect("export");
            assert_eq!(resp.status(), 200);
            assert!(
                resp.headers()[reqwest::header::CONTENT_TYPE]
                    .to_str()
                    .unwrap_or_default()
                    .starts_with("application/jsonl")
            );
            let text = resp.text().await.expect("body");
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("one JSON object per line"))
                .collect::<Vec<_>>()
        }
    };
    let lines = export("").await;
    let exported: Vec<i64> = lines
        .iter()
        .map(|l| l["id"].as_i64().expect("id"))
        .collect();
    let mut newest_first = exported.clone();
    newest_first.reverse();
    assert_eq!(newest_first, ids);
    assert_eq!(lines[0]["action"], "agent.registration");
    let only_db = export("?object=RelationalDatabase/db").await;
    assert_eq!(only_db.len(), expected);
    let resp = cp
        .http
        .get(format!("{}/audit.jsonl", cp.url))
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status(), 401, "the export needs a caller");
    let resp = cp
        .http
        .get(format!("{}/audit.jsonl?object=bad", cp.url))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn the_database_refuses_to_change_or_remove_an_entry() {
    let cp = Cp::start().await;
    cp.apply_ok(APP).await;
    let before = cp
        .sql_count("select count(*) from qleet_audit.entries")
        .await;
    assert!(before >= 5);
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&cp.db)
        .await
        .expect("db");
    for sql in [
        "update qleet_audit.entries set actor = 'someone-else'",
        "delete from qleet_audit.entries",
        "truncate qleet_audit.entries",
    ] {
        let err = sqlx::query(sql)
            .execute(&mut db)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    let after = cp
        .sql_count("select count(*) from qleet_audit.entries where actor = 'admin'")
        .await;
    assert_eq!(after, before);
    let names: BTreeSet<String> = sqlx::query_scalar(
        "select object_kind || '/' || object_name from qleet_audit.entries where action = 'object.create'",
    )
    .fetch_all(&mut db)
    .await
    .expect("names")
    .into_iter()
    .collect();
    assert_eq!(names.len(), 5, "{names:?}");
}
