//! Changes the cloud cannot make in place: the plan shows a replacement (the fields that force
//! it, what happens to the data) or refuses the change with the object and field named; a
//! replacement makes the new resource beside the old, re-rolls the dependents onto it, and only
//! then has the agent delete the old one, so nothing is left behind unrecorded, also when the
//! object is deleted half-way.

use qleet_test_support::cp::{APP, Cp, drain, success};
use qleet_test_support::error_code;
use serde_json::{Value, json};

/// The app, all Ready.
async fn ready_app() -> Cp {
    let cp = Cp::start().await;
    cp.apply_ok(APP).await;
    while !drain(&cp, 1).await.is_empty() {}
    cp.wait_ready(5).await;
    cp
}

fn db_in(region: &str) -> String {
    APP.replace(
        "engine: postgres, version: \"16.4\", sizeClass: db.t4g.micro}",
        &format!(
            "engine: postgres, version: \"16.4\", sizeClass: db.t4g.micro, region: {region}}}"
        ),
    )
}

/// Leases everything due now (waiting up to a second for the first), without answering.
async fn due(cp: &Cp) -> Vec<Value> {
    cp.lease("test-agent", 50, 1).await
}

fn the<'a>(tasks: &'a [Value], kind: &str, operation: &str) -> &'a Value {
    tasks
        .iter()
        .find(|t| t["objectKind"] == kind && t["operation"] == operation)
        .unwrap_or_else(|| panic!("no {operation} of a {kind} in {tasks:#?}"))
}

async fn answer(cp: &Cp, task: &Value) {
    let (code, body) = cp.report(task, success(task)).await;
    assert_eq!((code, &body["accepted"]), (200, &json!(true)), "{body}");
}

fn identifier(task: &Value) -> &str {
    task["payload"]["resource"]["database"]["instanceIdentifier"]
        .as_str()
        .expect("identifier")
}

#[tokio::test]
async fn a_change_the_cloud_cannot_make_in_place_is_a_replacement_or_a_refusal() {
    let cp = ready_app().await;
    let before = cp.object("RelationalDatabase", "db").await;

    // The plan shows a replacement, the field that forces it and what happens to the data.
    let plan = cp.apply(&db_in("us-east-2"), true, false).await;
    let change = plan["data"]["apply"]["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["kind"] == "RelationalDatabase")
        .cloned()
        .expect("the database changes");
    assert_eq!(change["action"], "REPLACE", "{plan}");
    assert_eq!(change["replacement"]["fields"], json!(["spec.region"]));
    let what = change["replacement"]["what"].as_str().expect("what");
    assert!(
        what.contains("final snapshot") && what.contains("not copied"),
        "{what}"
    );
    assert_eq!(plan["data"]["apply"]["summary"]["replace"], 1);

    // Refusals name the object and the field; nothing is written.
    let refused = [
        (
            APP.replace("version: \"16.4\"", "version: \"15.8\""),
            "RelationalDatabase/db:spec.version",
            "cannot downgrade",
        ),
        (
            APP.replace(
                "sizeClass: db.t4g.micro}",
                "sizeClass: db.t4g.micro, storageGb: 10}",
            ),
            "RelationalDatabase/db:spec.storageGb",
            "must be between",
        ),
        (
            APP.replace("cluster: prod-1", "cluster: prod-2"),
            "KubernetesRuntime/prod:spec.existing.cluster",
            "stay on the old cluster",
        ),
    ];
    for (yaml, field, says) in refused {
        for dry_run in [true, false] {
            let body = cp.apply(&yaml, dry_run, false).await;
            assert_eq!(
                error_code(&body).as_deref(),
                Some("INVALID_INPUT"),
                "{body}"
            );
            assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body}");
            let message = body["errors"][0]["message"].as_str().unwrap_or_default();
            assert!(message.contains(says), "{message}");
        }
    }
    // A new default region moves what does not set its own: each one is a replacement.
    let plan = cp
        .apply(
            &APP.replace("defaultRegion: eu-west-1", "defaultRegion: us-east-1"),
            true,
            false,
        )
        .await;
    let actions: Vec<(String, Value)> = plan["data"]["apply"]["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["action"] != "UNCHANGED")
        .map(|c| {
            (
                format!(
                    "{}/{} {}",
                    c["kind"].as_str().unwrap_or_default(),
                    c["name"].as_str().unwrap_or_default(),
                    c["action"].as_str().unwrap_or_default()
                ),
                c["replacement"]["fields"].clone(),
            )
        })
        .collect();
    let moved = json!(["spec.region (its account's defaultRegion)"]);
    assert_eq!(
        actions,
        vec![
            ("AwsAccount/main UPDATE".to_owned(), Value::Null),
            (
                "ObjectStorageBucket/assets REPLACE".to_owned(),
                moved.clone()
            ),
            ("RelationalDatabase/db REPLACE".to_owned(), moved),
        ],
        "{plan}"
    );
    // Setting `region` to where it already is moves nothing.
    let plan = cp.apply(&db_in("eu-west-1"), true, false).await;
    let db = plan["data"]["apply"]["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["kind"] == "RelationalDatabase")
        .cloned()
        .expect("db");
    assert_eq!(
        (&db["action"], &db["replacement"]),
        (&json!("UPDATE"), &Value::Null),
        "{plan}"
    );

    let storage_up = APP.replace(
        "sizeClass: db.t4g.micro}",
        "sizeClass: db.t4g.micro, storageGb: 30}",
    );
    let storage_down = storage_up.replace("storageGb: 30", "storageGb: 25");
    cp.apply_ok(&storage_up).await;
    let body = cp.apply(&storage_down, false, false).await;
    assert_eq!(
        body["errors"][0]["extensions"]["field"], "RelationalDatabase/db:spec.storageGb",
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot shrink"),
        "{body}"
    );
    let after = cp.object("RelationalDatabase", "db").await;
    assert_eq!(
        after["generation"],
        before["generation"].as_i64().unwrap_or(0) + 1,
        "only the growth was applied"
    );
    let grown = due(&cp).await;
    answer(&cp, the(&grown, "RelationalDatabase", "ensure")).await;
    while !drain(&cp, 1).await.is_empty() {}
    cp.wait_ready(5).await;
}

#[tokio::test]
async fn a_replacement_makes_the_new_resource_re_rolls_dependents_then_deletes_the_old() {
    let cp = ready_app().await;
    let old_ensure = cp
        .gql_ok(
            "{ object(kind: \"RelationalDatabase\", name: \"db\") { rendered } }",
            json!({}),
        )
        .await["object"]["rendered"]
        .clone();
    let old_id = old_ensure["database"]["instanceIdentifier"]
        .as_str()
        .expect("id")
        .to_owned();

    let plan = cp.apply_ok(&db_in("us-east-2")).await;
    assert_eq!(plan["summary"]["replace"], 1, "{plan}");

    // The new instance: named apart, in the new region, with a password secret of its own.
    let tasks = due(&cp).await;
    assert_eq!(tasks.len(), 1, "only the new instance is due: {tasks:#?}");
    let new = the(&tasks, "RelationalDatabase", "ensure");
    assert_eq!(identifier(new), format!("{old_id}-r1"));
    assert_eq!(new["payload"]["resource"]["account"]["region"], "us-east-2");
    assert_ne!(
        new["payload"]["resource"]["database"]["passwordSecretName"],
        old_ensure["database"]["passwordSecretName"]
    );
    answer(&cp, new).await;

    // The workload is re-rolled onto it; the old instance stays until that is done.
    let tasks = due(&cp).await;
    let web = the(&tasks, "Workload", "ensure").clone();
    assert!(
        !tasks.iter().any(|t| t["operation"] == "delete"),
        "nothing is deleted before the dependents re-roll: {tasks:#?}"
    );
    let db = cp.object("RelationalDatabase", "db").await;
    assert_eq!(db["phase"], "READY", "{db}");
    assert!(
        db["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Workload/web"),
        "{db}"
    );
    assert!(
        web.to_string().contains(&format!("{old_id}-r1")),
        "the workload points at the new instance"
    );
    answer(&cp, &web).await;

    // Then the old instance, as it was made, is deleted.
    let tasks = due(&cp).await;
    assert_eq!(tasks.len(), 1, "{tasks:#?}");
    let gone = the(&tasks, "RelationalDatabase", "delete");
    assert_eq!(identifier(gone), old_id);
    assert_eq!(
        gone["payload"]["resource"]["account"]["region"],
        "eu-west-1"
    );
    answer(&cp, gone).await;
    let mut recorded = 0;
    for _ in 0..100 {
        recorded = cp
            .sql_count("select count(*) from retired_resources where deleted_at is not null")
            .await;
        if recorded == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(recorded, 1);
    let db = cp.object("RelationalDatabase", "db").await;
    assert_eq!(db["message"], "ready", "{db}");
    let reasons: Vec<&str> = db["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    for reason in ["ReplacementStarted", "ReplacedResourceDeleted"] {
        assert!(reasons.contains(&reason), "{reasons:?}");
    }
    assert!(due(&cp).await.is_empty());
}

#[tokio::test]
async fn deleting_an_object_mid_replacement_deletes_the_old_and_the_new_resource() {
    let cp = ready_app().await;
    cp.apply_ok(&db_in("us-east-2")).await;
    let tasks = due(&cp).await;
    let new = the(&tasks, "RelationalDatabase", "ensure").clone();
    answer(&cp, &new).await;
    // The workload is not re-rolled yet: both instances exist. Delete the workload and the
    // database.
    let _web = due(&cp).await;
    for (kind, name) in [("Workload", "web"), ("RelationalDatabase", "db")] {
        cp.gql_ok(
            "mutation($k: String!, $n: String!) { delete(kind: $k, name: $n) { applied } }",
            json!({ "k": kind, "n": name }),
        )
        .await;
    }
    let mut deletes = Vec::new();
    for _ in 0..10 {
        for t in due(&cp).await {
            if t["operation"] == "delete" {
                deletes.push(t.clone());
            }
            answer(&cp, &t).await;
        }
        if deletes
            .iter()
            .filter(|t| t["objectKind"] == "RelationalDatabase")
            .count()
            >= 2
        {
            break;
        }
    }
    let mut ids: Vec<&str> = deletes
        .iter()
        .filter(|t| t["objectKind"] == "RelationalDatabase")
        .map(identifier)
        .collect();
    ids.sort();
    let new_id = identifier(&new).to_owned();
    let old_id = new_id.trim_end_matches("-r1").to_owned();
    assert_eq!(ids, vec![old_id.as_str(), new_id.as_str()], "{deletes:#?}");
    cp.wait_until("the database is gone", |p| {
        !p.contains_key("RelationalDatabase/db")
    })
    .await;
}
