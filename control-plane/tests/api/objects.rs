//! Orchestration in a control plane: apply and plans, validation, output wiring, the
//! reconciler and the agent API (tasks completed here by a test agent speaking that API),
//! compositions, deletion order, crash safety with real process kills, and live status.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use qleet_test_support::cp::{ADMIN, APP, Cp, drain, kinds_of, observed_for, outputs_for};
use qleet_test_support::db::fresh_database;
use qleet_test_support::error_code;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn an_app_is_wired_from_its_dependencies_outputs_and_re_rolled_when_they_change() {
    let cp = Cp::start().await;
    let plan = cp.apply(APP, true, false).await;
    assert_eq!(
        plan["data"]["apply"]["summary"],
        json!({"create": 5, "update": 0, "replace": 0, "delete": 0, "unchanged": 0}),
        "{plan}"
    );
    assert_eq!(plan["data"]["apply"]["applied"], false);
    assert_eq!(cp.phases().await.len(), 0, "a dry run writes nothing");

    cp.apply_ok(APP).await;
    // Only what depends on nothing is handed to the agent first.
    cp.wait_until("the first tasks are queued", |p| {
        p["AwsAccount/main"] == "PROVISIONING" && p["Workload/web"] == "WAITING"
    })
    .await;
    let first = cp.lease_n(2).await;
    assert_eq!(
        kinds_of(&first),
        BTreeSet::from([
            "AwsAccount/main".to_owned(),
            "KubernetesRuntime/prod".to_owned()
        ])
    );
    let account = cp.object("AwsAccount", "main").await;
    let external_id = account["outputs"]["externalId"]
        .as_str()
        .expect("external id")
        .to_owned();
    assert!(external_id.starts_with("qleet-") && external_id.len() > 30);
    assert_eq!(
        first
            .iter()
            .find(|t| t["objectKind"] == "AwsAccount")
            .expect("account")["payload"]["resource"]["account"]["externalId"],
        external_id
    );
    let policy: Value =
        serde_json::from_str(account["outputs"]["trustPolicy"].as_str().expect("policy"))
            .expect("json");
    assert_eq!(
        policy["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"],
        external_id
    );
    assert!(
        account["outputs"]["cloudFormationTemplate"]
            .as_str()
            .expect("template")
            .contains("AWS::IAM::Role")
    );
    for t in &first {
        let (code, body) = cp
            .report(t, json!({"succeeded": {"outputs": outputs_for(t)}}))
            .await;
        assert_eq!(code, 200, "{body}");
    }
    // Then the bucket and the database, carrying the account's role and ExternalId.
    let second = cp.lease_n(2).await;
    assert_eq!(
        kinds_of(&second),
        BTreeSet::from([
            "ObjectStorageBucket/assets".to_owned(),
            "RelationalDatabase/db".to_owned()
        ])
    );
    let bucket_task = second
        .iter()
        .find(|t| t["objectKind"] == "ObjectStorageBucket")
        .expect("bucket");
    assert_eq!(
        bucket_task["payload"]["resource"]["account"]["roleArn"],
        "arn:aws:iam::123456789012:role/qleet"
    );
    assert_eq!(
        bucket_task["payload"]["resource"]["bucket"]["blockPublicAccess"],
        true
    );
    assert_eq!(
        bucket_task["payload"]["tags"]["qleet:object"],
        "ObjectStorageBucket/assets"
    );
    // A secret output must be a reference, never a value.
    let db_task = second
        .iter()
        .find(|t| t["objectKind"] == "RelationalDatabase")
        .expect("db");
    let (code, body) = cp
        .report(
            db_task,
            json!({"succeeded": {"outputs": {"host": "h", "port": 5432, "password": "hunter2"}}}),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["code"], "INVALID_INPUT");
    for t in &second {
        let (code, body) = cp
            .report(t, json!({"succeeded": {"outputs": outputs_for(t)}}))
            .await;
        assert_eq!(code, 200, "{body}");
    }
    // The workload is rendered from their outputs.
    let third = cp.lease_n(1).await;
    assert_eq!(
        kinds_of(&third),
        BTreeSet::from(["Workload/web".to_owned()])
    );
    let bucket_name = cp.object("ObjectStorageBucket", "assets").await["outputs"]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let db_host = cp.object("RelationalDatabase", "db").await["outputs"]["host"]
        .as_str()
        .expect("host")
        .to_owned();
    let resource = &third[0]["payload"]["resource"];
    let container = &resource["manifests"][0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["args"][0],
        format!("--database=postgres://{db_host}:5432/db")
    );
    assert_eq!(
        container["env"],
        json!([
            {"name": "BUCKET", "value": bucket_name},
            {"name": "BUCKET_ENDPOINT", "value": "https://s3.eu-west-1.amazonaws.com"},
            {"name": "DB_HOST", "value": db_host},
            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "web-qleet-secrets", "key": "DB_PASSWORD"}}},
        ])
    );
    assert_eq!(
        resource["secrets"][0]["from"]["arn"]
            .as_str()
            .map(|a| a.starts_with("arn:aws:secretsmanager:")),
        Some(true)
    );
    assert!(!resource.to_string().contains("hunter2"));
    assert_eq!(resource["manifests"][0]["metadata"]["namespace"], "shop");
    assert_eq!(cp.object("Workload", "web").await["rendered"], *resource);
    let (code, _) = cp.report(&third[0], json!({"succeeded": {}})).await;
    assert_eq!(code, 200);
    let phases = cp
        .wait_until("everything is ready", |p| p.values().all(|v| v == "READY"))
        .await;
    assert_eq!(phases.len(), 5);
    let web = cp.object("Workload", "web").await;
    assert_eq!(web["dependencies"].as_array().map(Vec::len), Some(3));
    assert_eq!(web["observedGeneration"], web["generation"]);

    // The bucket moves region: its new outputs re-render the workload and queue a new apply.
    let moved = APP.replace(
        "spec: {account: AwsAccount/main}",
        "spec: {account: AwsAccount/main, region: eu-central-1}",
    );
    let plan = cp.apply_ok(&moved).await;
    let changed: Vec<&Value> = plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["action"] != "UNCHANGED")
        .collect();
    assert_eq!(changed.len(), 1);
    assert_eq!(
        changed[0]["diffs"],
        json!([{"path": "spec.region", "before": null, "after": "eu-central-1"}])
    );
    let bucket_again = cp.lease_n(1).await;
    assert_eq!(
        kinds_of(&bucket_again),
        BTreeSet::from(["ObjectStorageBucket/assets".to_owned()])
    );
    assert_eq!(
        bucket_again[0]["payload"]["resource"]["account"]["region"],
        "eu-central-1"
    );
    cp.report(
        &bucket_again[0],
        json!({"succeeded": {"outputs": outputs_for(&bucket_again[0])}}),
    )
    .await;
    let reroll = cp.lease_n(1).await;
    assert_eq!(
        kinds_of(&reroll),
        BTreeSet::from(["Workload/web".to_owned()])
    );
    let env = &reroll[0]["payload"]["resource"]["manifests"][0]["spec"]["template"]["spec"]["containers"]
        [0]["env"];
    assert_eq!(
        env[1],
        json!({"name": "BUCKET_ENDPOINT", "value": "https://s3.eu-central-1.amazonaws.com"})
    );
    assert_ne!(
        reroll[0]["id"], third[0]["id"],
        "a new task, not the old one again"
    );
    assert_eq!(cp.sql_count("select count(*) from agent_tasks t join objects o on o.id = t.object_id where o.kind = 'Workload'").await, 2);
    cp.report(&reroll[0], json!({"succeeded": {}})).await;
    cp.wait_until("ready again", |p| p.values().all(|v| v == "READY"))
        .await;
    let events = cp.object("ObjectStorageBucket", "assets").await["events"].to_string();
    assert!(events.contains("OutputsChanged"), "{events}");
}

#[tokio::test]
async fn a_stale_report_is_ignored_and_a_lost_lease_is_refused() {
    let cp = Cp::start().await;
    cp.apply_ok(APP).await;
    let first = cp.lease_n(2).await;
    let account = first
        .iter()
        .find(|t| t["objectKind"] == "AwsAccount")
        .expect("account")
        .clone();
    // New inputs supersede the leased task: its report is accepted but ignored.
    cp.apply_ok(&APP.replace("defaultRegion: eu-west-1", "defaultRegion: us-east-1"))
        .await;
    for _ in 0..600 {
        if cp
            .sql_count("select count(*) from agent_tasks where state = 'superseded'")
            .await
            == 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, body) = cp.report(&account, json!({"succeeded": {}})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["accepted"], false, "{body}");
    assert!(
        body["reason"]
            .as_str()
            .expect("reason")
            .starts_with("superseded")
    );
    // Someone else's lease id.
    let next = cp.lease_n(1).await;
    let t = next
        .iter()
        .find(|t| t["objectKind"] == "AwsAccount")
        .expect("new account task");
    assert_eq!(t["payload"]["resource"]["account"]["region"], "us-east-1");
    let mut forged = t.clone();
    forged["leaseId"] = json!(Uuid::new_v4());
    let (code, body) = cp.report(&forged, json!({"succeeded": {}})).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (503, Some("LEASE_LOST"))
    );
    // A failure is surfaced in the object's status with the provider's code.
    let (code, _) = cp.report(t, json!({"failed": {"code": "AccessDenied", "message": "not authorized to perform sts:AssumeRole", "retryable": false}})).await;
    assert_eq!(code, 200);
    cp.wait_until("the account failed", |p| p["AwsAccount/main"] == "FAILED")
        .await;
    let account = cp.object("AwsAccount", "main").await;
    assert_eq!(
        account["message"],
        "AccessDenied: not authorized to perform sts:AssumeRole"
    );
    assert_eq!(
        account["conditions"][0],
        json!({"type": "Ready", "status": false, "reason": "Failed", "message": "AccessDenied: not authorized to perform sts:AssumeRole"})
    );
}

#[tokio::test]
async fn bad_documents_are_refused_with_field_paths_and_nothing_is_written() {
    let cp = Cp::start().await;
    let base = r#"
kind: AwsAccount
metadata: {name: main}
spec: {accountId: "123456789012", roleArn: "arn:aws:iam::123456789012:role/qleet", defaultRegion: eu-west-1}
---
kind: KubernetesRuntime
metadata: {name: prod}
spec: {existing: {cluster: prod-1}}
"#;
    let cases: [(&str, &str); 9] = [
        (
            "kind: RelationalDatabase\nmetadata: {name: db}\nspec: {account: AwsAccount/main, engine: oracle, version: '1', sizeClass: db.t4g.micro}",
            "RelationalDatabase/db:spec.engine: unknown variant `oracle`, expected `postgres` or `mysql`",
        ),
        (
            "kind: ObjectStorageBucket\nmetadata: {name: assets}\nspec: {account: AwsAccount/nope}",
            "ObjectStorageBucket/assets:spec.account: AwsAccount/nope does not exist",
        ),
        (
            "kind: ObjectStorageBucket\nmetadata: {name: assets}\nspec: {account: KubernetesRuntime/prod}",
            "ObjectStorageBucket/assets:spec.account: must name a AwsAccount (`AwsAccount/NAME`), not a KubernetesRuntime",
        ),
        (
            "kind: Workload\nmetadata: {name: a}\nspec:\n  runtime: KubernetesRuntime/prod\n  namespace: a\n  manifests: |\n    apiVersion: v1\n    kind: ConfigMap\n    metadata: {name: a}\n    data: {b: \"${Workload/b.revision}\"}\n---\nkind: Workload\nmetadata: {name: b}\nspec:\n  runtime: KubernetesRuntime/prod\n  namespace: b\n  manifests: |\n    apiVersion: v1\n    kind: ConfigMap\n    metadata: {name: b}\n    data: {a: \"${Workload/a.revision}\"}",
            "yaml: dependency cycle: Workload/a → Workload/b → Workload/a",
        ),
        (
            "kind: Workload\nmetadata: {name: a}\nspec: {runtime: KubernetesRuntime/prod, namespace: a, manifests: 'kind: ConfigMap\n\napiVersion: v1\n\nmetadata: {name: a}', env: [{name: X, valueFrom: {object: AwsAccount/main, output: host}}]}",
            "Workload/a:spec.env[0].valueFrom: AwsAccount/main has no output `host` (it has: accountId, roleArn, region, externalId, trustPolicy, cloudFormationTemplate)",
        ),
        (
            "kind: RelationalDatabase\nmetadata: {name: db}\nspec: {account: AwsAccount/main, engine: postgres, version: '16', sizeClass: db.t4g.micro}\n---\nkind: Workload\nmetadata: {name: a}\nspec:\n  runtime: KubernetesRuntime/prod\n  namespace: a\n  manifests: |\n    apiVersion: v1\n    kind: ConfigMap\n    metadata: {name: a}\n    data: {p: \"${RelationalDatabase/db.password}\"}",
            "Workload/a:spec.manifests: RelationalDatabase/db.password is a secret; bind it through a Workload's spec.env valueFrom, which gives the container a Kubernetes Secret reference",
        ),
        (
            "kind: Widget\nmetadata: {name: w}\nspec: {}",
            "Widget/w: unknown kind Widget",
        ),
        (
            "kind: KubernetesRuntime\nmetadata: {name: k}\nspec: {eks: {account: AwsAccount/main, version: '1.31', nodeGroup: {min: 1, max: 3, desired: 9}}}",
            "KubernetesRuntime/k:spec.eks.nodeGroup: need min <= desired <= max (got 1 <= 9 <= 3)",
        ),
        (
            "kind: AwsAccount\nmetadata: {name: other}\nspec: {accountId: '123456789012', roleArn: 'arn:aws:iam::123456789012:role/q', defaultRegion: eu-west-1, externalId: mine}",
            "AwsAccount/other:spec.externalId: unknown field `externalId`",
        ),
    ];
    for (doc, want) in cases {
        let yaml = format!("{base}---\n{doc}");
        for dry_run in [true, false] {
            let body = cp.apply(&yaml, dry_run, false).await;
            assert_eq!(
                error_code(&body).as_deref(),
                Some("INVALID_INPUT"),
                "{body}"
            );
            let message = body["errors"][0]["message"].as_str().expect("message");
            assert!(message.starts_with(want), "got {message:?}\nwant {want:?}");
            // `extensions.field` names what is at fault: the object and its field path.
            let field = want.split_once(": ").map(|(f, _)| f);
            assert_eq!(
                body["errors"][0]["extensions"]["field"].as_str(),
                field,
                "{body}"
            );
        }
        assert_eq!(cp.phases().await.len(), 0, "nothing written for {want}");
    }
    let body = cp.apply("kind: [", false, false).await;
    assert_eq!(error_code(&body).as_deref(), Some("INVALID_INPUT"));
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .expect("m")
            .starts_with("yaml: not valid YAML")
    );
    // Deleting something still in use is refused too.
    cp.apply_ok(&format!("{base}---\nkind: ObjectStorageBucket\nmetadata: {{name: assets}}\nspec: {{account: AwsAccount/main}}")).await;
    let body = cp
        .gql(
            "mutation { delete(kind: \"AwsAccount\", name: \"main\") { applied } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("INVALID_INPUT"));
    assert_eq!(
        body["errors"][0]["message"],
        "yaml: AwsAccount/main is used by ObjectStorageBucket/assets (spec.account); delete or change ObjectStorageBucket/assets too"
    );
    assert_eq!(cp.phases().await.len(), 3);
}

#[tokio::test]
async fn the_plan_says_exactly_what_will_be_created_updated_deleted_and_left_alone() {
    let cp = Cp::start().await;
    let v1 = r#"
kind: AwsAccount
metadata: {name: main}
spec: {accountId: "123456789012", roleArn: "arn:aws:iam::123456789012:role/qleet", defaultRegion: eu-west-1}
---
kind: ObjectStorageBucket
metadata: {name: assets}
spec: {account: AwsAccount/main}
---
kind: ObjectStorageBucket
metadata: {name: logs}
spec: {account: AwsAccount/main}
"#;
    cp.apply_ok(v1).await;
    let v2 = r#"
kind: AwsAccount
metadata: {name: main}
spec: {accountId: "123456789012", roleArn: "arn:aws:iam::123456789012:role/qleet", defaultRegion: eu-west-1}
---
kind: ObjectStorageBucket
metadata: {name: assets}
spec: {account: AwsAccount/main, versioning: true, blockPublicAccess: false}
---
kind: ObjectStorageBucket
metadata: {name: backups}
spec: {account: AwsAccount/main}
"#;
    let plan = cp.apply(v2, true, true).await;
    assert_eq!(
        plan["data"]["apply"],
        json!({
            "applied": false,
            "summary": {"create": 1, "update": 1, "replace": 0, "delete": 1, "unchanged": 1},
            "changes": [
                {"action": "UNCHANGED", "kind": "AwsAccount", "name": "main", "owner": null, "diffs": [], "replacement": null},
                {"action": "UPDATE", "kind": "ObjectStorageBucket", "name": "assets", "owner": null, "diffs": [
                    {"path": "spec.blockPublicAccess", "before": true, "after": false},
                    {"path": "spec.versioning", "before": false, "after": true},
                ], "replacement": null},
                {"action": "CREATE", "kind": "ObjectStorageBucket", "name": "backups", "owner": null, "diffs": [
                    {"path": "spec.account", "before": null, "after": "AwsAccount/main"},
                    {"path": "spec.blockPublicAccess", "before": null, "after": true},
                    {"path": "spec.encryption", "before": null, "after": "AES256"},
                    {"path": "spec.versioning", "before": null, "after": false},
                ], "replacement": null},
                {"action": "DELETE", "kind": "ObjectStorageBucket", "name": "logs", "owner": null, "diffs": [
                    {"path": "spec.account", "before": "AwsAccount/main", "after": null},
                    {"path": "spec.blockPublicAccess", "before": true, "after": null},
                    {"path": "spec.encryption", "before": "AES256", "after": null},
                    {"path": "spec.versioning", "before": false, "after": null},
                ], "replacement": null},
            ],
        })
    );
    // Applying the same plan does what it said; then everything is unchanged.
    let applied = cp.apply(v2, false, true).await;
    assert_eq!(
        applied["data"]["apply"]["changes"],
        plan["data"]["apply"]["changes"]
    );
    assert_eq!(applied["data"]["apply"]["applied"], true);
    let again = cp.apply(v2, true, true).await;
    assert_eq!(
        again["data"]["apply"]["summary"],
        json!({"create": 0, "update": 0, "replace": 0, "delete": 0, "unchanged": 3})
    );
    assert_eq!(
        cp.object("ObjectStorageBucket", "assets").await["generation"],
        2
    );
    // Nothing was ever made for it in the cloud, so it goes without waiting for the agent.
    cp.wait_until("logs is gone", |p| {
        !p.contains_key("ObjectStorageBucket/logs")
    })
    .await;
}

const WEBAPP: &str = r#"
kind: AwsAccount
metadata: {name: main}
spec: {accountId: "123456789012", roleArn: "arn:aws:iam::123456789012:role/qleet", defaultRegion: eu-west-1}
---
kind: KubernetesRuntime
metadata: {name: prod}
spec: {existing: {cluster: prod-1}}
---
kind: Composition
metadata: {name: webapp}
spec:
  kind: WebApp
  parameters:
    image: {type: string}
    replicas: {type: integer, default: 2}
  resources:
    - kind: ObjectStorageBucket
      name: ${instance.name}-assets
      spec: {account: AwsAccount/main}
    - kind: Workload
      name: ${instance.name}
      spec:
        runtime: KubernetesRuntime/prod
        namespace: ${instance.name}
        manifests: |
          apiVersion: apps/v1
          kind: Deployment
          metadata: {name: app}
          spec:
            replicas: ${params.replicas}
            template:
              spec:
                containers: [{name: app, image: "${params.image}"}]
        env:
          - {name: BUCKET, valueFrom: {object: "ObjectStorageBucket/${instance.name}-assets", output: name}}
  outputs:
    bucket: ${ObjectStorageBucket/${instance.name}-assets.name}
"#;

#[tokio::test]
async fn composition_instances_expand_update_and_delete_as_a_unit() {
    let cp = Cp::start().await;
    let two = format!(
        "{WEBAPP}---\nkind: WebApp\nmetadata: {{name: shop}}\nspec: {{image: 'shop:1'}}\n---\nkind: WebApp\nmetadata: {{name: blog}}\nspec: {{image: 'blog:7', replicas: 1}}\n"
    );
    let plan = cp.apply_ok(&two).await;
    assert_eq!(plan["summary"]["create"], 9);
    let owned: Vec<(String, String)> = plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| !c["owner"].is_null())
        .map(|c| {
            (
                format!(
                    "{}/{}",
                    c["kind"].as_str().unwrap_or_default(),
                    c["name"].as_str().unwrap_or_default()
                ),
                c["owner"]["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        owned,
        vec![
            (
                "ObjectStorageBucket/shop-assets".to_owned(),
                "shop".to_owned()
            ),
            ("Workload/shop".to_owned(), "shop".to_owned()),
            (
                "ObjectStorageBucket/blog-assets".to_owned(),
                "blog".to_owned()
            ),
            ("Workload/blog".to_owned(), "blog".to_owned()),
        ]
    );
    drain(&cp, 3).await;
    let phases = cp
        .wait_until("all ready", |p| {
            p.len() == 9 && p.values().all(|v| v == "READY")
        })
        .await;
    assert_eq!(phases["WebApp/shop"], "READY");
    let shop = cp.object("WebApp", "shop").await;
    let bucket = cp.object("ObjectStorageBucket", "shop-assets").await;
    assert_eq!(shop["outputs"]["bucket"], bucket["outputs"]["name"]);
    assert_eq!(bucket["owner"], json!({"kind": "WebApp", "name": "shop"}));
    let blog = cp.object("Workload", "blog").await;
    assert_eq!(blog["rendered"]["manifests"][0]["spec"]["replicas"], 1);
    assert_eq!(
        blog["rendered"]["manifests"][0]["spec"]["template"]["spec"]["containers"][0]["image"],
        "blog:7"
    );

    // Owned objects cannot be changed directly.
    let body = cp.apply("kind: ObjectStorageBucket\nmetadata: {name: shop-assets}\nspec: {account: AwsAccount/main, versioning: true}", false, false).await;
    assert_eq!(
        body["errors"][0]["message"],
        "yaml: ObjectStorageBucket/shop-assets: owned by WebApp/shop; change WebApp/shop instead"
    );

    // Update one instance: only its workload changes.
    let updated = two.replace(
        "spec: {image: 'shop:1'}",
        "spec: {image: 'shop:2', replicas: 3}",
    );
    let plan = cp.apply_ok(&updated).await;
    let changed: Vec<String> = plan["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter(|c| c["action"] == "UPDATE")
        .map(|c| {
            format!(
                "{}/{}",
                c["kind"].as_str().unwrap_or_default(),
                c["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(changed, vec!["WebApp/shop", "Workload/shop"]);
    drain(&cp, 3).await;
    cp.wait_until("shop re-rolled", |p| p.values().all(|v| v == "READY"))
        .await;
    let shop_wl = cp.object("Workload", "shop").await;
    assert_eq!(shop_wl["rendered"]["manifests"][0]["spec"]["replicas"], 3);

    // Delete the other: its objects go with it, the shop's stay.
    let body = cp.gql("mutation { delete(kind: \"WebApp\", name: \"blog\") { summary { delete } changes { action kind name } } }", json!({})).await;
    assert_eq!(body["data"]["delete"]["summary"]["delete"], 3, "{body}");
    drain(&cp, 3).await;
    let phases = cp.wait_until("blog gone", |p| p.len() == 6).await;
    assert!(!phases.keys().any(|k| k.contains("blog")), "{phases:?}");
    assert!(phases.contains_key("Workload/shop"));
    // Cleanup tasks went to the agent for what it had made.
    assert_eq!(
        cp.sql_count("select count(*) from agent_tasks where operation = 'delete'")
            .await,
        0,
        "rows go with their objects"
    );
}

#[tokio::test]
async fn deletion_goes_in_reverse_dependency_order_and_waits_for_cleanup() {
    let cp = Cp::start().await;
    cp.apply_ok(APP).await;
    drain(&cp, 3).await;
    cp.wait_until("ready", |p| {
        p.len() == 5 && p.values().all(|v| v == "READY")
    })
    .await;
    let plan = cp.apply("", false, true).await;
    assert_eq!(plan["data"]["apply"]["summary"]["delete"], 5, "{plan}");
    // First only the workload (nothing uses it) is cleaned up; the rest wait for dependents.
    let first = cp.lease_n(1).await;
    assert_eq!(
        kinds_of(&first),
        BTreeSet::from(["Workload/web".to_owned()])
    );
    assert_eq!(first[0]["operation"], "delete");
    let mut db = cp.object("RelationalDatabase", "db").await;
    for _ in 0..300 {
        if db["message"] != "deletion requested" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        db = cp.object("RelationalDatabase", "db").await;
    }
    assert_eq!(db["phase"], "DELETING");
    assert_eq!(db["message"], "waiting for dependents to go: Workload/web");
    cp.report(&first[0], json!({"succeeded": {}})).await;
    let second = cp.lease_n(3).await;
    assert_eq!(
        kinds_of(&second),
        BTreeSet::from([
            "KubernetesRuntime/prod".to_owned(),
            "ObjectStorageBucket/assets".to_owned(),
            "RelationalDatabase/db".to_owned()
        ])
    );
    for t in &second {
        cp.report(t, json!({"succeeded": {}})).await;
    }
    let last = cp.lease_n(1).await;
    assert_eq!(
        kinds_of(&last),
        BTreeSet::from(["AwsAccount/main".to_owned()])
    );
    cp.report(&last[0], json!({"succeeded": {}})).await;
    cp.wait_until("all gone", |p| p.is_empty()).await;
}

// ---------------------------------------------------------------------------------------------
// Crash safety: a real `qleet-control-plane` process, killed on purpose between "object
// changed" and "reconciled", then restarted.

struct Process {
    child: tokio::process::Child,
}

async fn spawn_process(db: &str, id: Uuid, port: u16, crash_at: Option<&str>) -> Process {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_qleet-control-plane"));
    cmd.env("QLEET_CP_LISTEN", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", db)
        .env("QLEET_CP_ID", id.to_string())
        .env("QLEET_CP_ADMIN_TOKEN", ADMIN)
        .env("QLEET_LOG_FORMAT", "pretty")
        .env_remove("QLEET_CP_VERIFYING_KEY")
        .env_remove("QLEET_CRASH_AT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(point) = crash_at {
        cmd.env("QLEET_CRASH_AT", point);
    }
    let child = cmd.spawn().expect("spawn qleet-control-plane");
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Process { child };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the control plane did not become ready");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Process {
    /// Waits for the process to abort at its crash point.
    async fn crashed(mut self) {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the control plane should have crashed")
            .expect("wait");
        assert!(!status.success(), "exited by the crash point, not cleanly");
    }
}

fn remote(port: u16, db: &str, id: Uuid) -> Cp {
    Cp::remote(format!("http://127.0.0.1:{port}"), db, id)
}

#[tokio::test]
async fn killed_between_change_and_reconcile_the_control_plane_converges_without_duplicate_work() {
    for point in [
        "apply-before-commit",
        "reconcile-before-commit",
        "reconcile-after-commit",
        "report-before-commit",
    ] {
        let db = fresh_database().await;
        let id = Uuid::new_v4();
        let port = free_port();
        let cp = remote(port, &db, id);
        let mut agent_work: Vec<Value> = Vec::new();
        let dying = spawn_process(&db, id, port, Some(point)).await;
        match point {
            "apply-before-commit" => {
                // The apply dies before commit: nothing was written; applying again works.
                let _ = cp.http.post(format!("{}/graphql", cp.url)).bearer_auth(ADMIN)
                    .json(&json!({"query": "mutation($y: String!) { apply(yaml: $y) { applied } }", "variables": {"y": APP}}))
                    .send().await;
                dying.crashed().await;
                let _p = spawn_process(&db, id, port, None).await;
                assert_eq!(
                    cp.phases().await.len(),
                    0,
                    "{point}: a half-made apply left nothing"
                );
                cp.apply_ok(APP).await;
                agent_work.extend(drain(&cp, 3).await);
                converge(&cp, point, &agent_work).await;
            }
            "reconcile-before-commit" | "reconcile-after-commit" => {
                // The answer may or may not arrive before the worker dies; the apply committed.
                let _ = cp.http.post(format!("{}/graphql", cp.url)).bearer_auth(ADMIN)
                    .json(&json!({"query": "mutation($y: String!) { apply(yaml: $y) { applied } }", "variables": {"y": APP}}))
                    .send().await;
                dying.crashed().await;
                let _p = spawn_process(&db, id, port, None).await;
                agent_work.extend(drain(&cp, 3).await);
                converge(&cp, point, &agent_work).await;
            }
            _ => {
                // The agent's report dies before commit; the agent sends it again.
                cp.apply_ok(APP).await;
                let tasks = cp.lease("test-agent", 50, 5).await;
                let t = &tasks[0];
                let result = json!({"succeeded": {"outputs": outputs_for(t)}});
                let _ = cp
                    .http
                    .post(format!(
                        "{}/agent/v1/tasks/{}/report",
                        cp.url,
                        t["id"].as_str().unwrap_or_default()
                    ))
                    .bearer_auth(ADMIN)
                    .json(&json!({ "leaseId": t["leaseId"], "result": result }))
                    .send()
                    .await;
                dying.crashed().await;
                let _p = spawn_process(&db, id, port, None).await;
                for t in &tasks {
                    let (code, body) = cp
                        .report(t, json!({"succeeded": {"outputs": outputs_for(t)}}))
                        .await;
                    assert_eq!(code, 200, "{point}: {body}");
                    assert_eq!(body["accepted"], true, "{point}: {body}");
                }
                agent_work.extend(tasks);
                agent_work.extend(drain(&cp, 3).await);
                converge(&cp, point, &agent_work).await;
            }
        }
    }
}

/// Every object ends Ready, and every piece of agent work happened once.
async fn converge(cp: &Cp, point: &str, work: &[Value]) {
    cp.wait_until(point, |p| p.len() == 5 && p.values().all(|v| v == "READY"))
        .await;
    let per_object: BTreeMap<String, usize> = work.iter().fold(BTreeMap::new(), |mut m, t| {
        *m.entry(format!(
            "{}/{}",
            t["objectKind"].as_str().unwrap_or_default(),
            t["objectName"].as_str().unwrap_or_default()
        ))
        .or_default() += 1;
        m
    });
    assert_eq!(per_object.len(), 5, "{point}: {per_object:?}");
    assert!(
        per_object.values().all(|n| *n == 1),
        "{point}: each object's work was handed out once: {per_object:?}"
    );
    assert_eq!(
        cp.sql_count("select count(*) from agent_tasks where state <> 'succeeded'")
            .await,
        0,
        "{point}"
    );
    assert_eq!(
        cp.sql_count("select count(*) from reconcile_queue").await,
        0,
        "{point}: nothing left to do"
    );
}

#[tokio::test]
async fn object_status_changes_stream_to_subscribers() {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};
    let cp = Cp::start().await;
    let mut request = format!("{}/graphql/ws", cp.url.replacen("http", "ws", 1))
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {ADMIN}").parse().expect("header"),
    );
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    socket
        .send(Message::text(
            json!({"type": "connection_init"}).to_string(),
        ))
        .await
        .expect("init");
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut subscribed = false;
    // Follow the bucket only: Pending → Waiting → Provisioning → Ready.
    while !seen.iter().any(|(_, p)| p == "READY") {
        let msg = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("frame");
        let Message::Text(text) = msg else { continue };
        let value: Value = serde_json::from_str(text.as_str()).expect("json");
        match value["type"].as_str() {
            Some("connection_ack") => {
                socket
                    .send(Message::text(
                        json!({"id": "1", "type": "subscribe", "payload": {"query":
                            "subscription { objectChanges(kind: \"ObjectStorageBucket\") { kind name phase message deleted } }"}})
                        .to_string(),
                    ))
                    .await
                    .expect("subscribe");
                subscribed = true;
                // Give the subscription a moment to be registered, then make changes.
                tokio::time::sleep(Duration::from_millis(200)).await;
                cp.apply_ok(APP).await;
                tokio::spawn({
                    let cp = Cp::remote(cp.url.clone(), &cp.db, cp.id);
                    async move {
                        drain(&cp, 5).await;
                    }
                });
            }
            Some("next") => {
                let c = &value["payload"]["data"]["objectChanges"];
                assert_eq!(c["kind"], "ObjectStorageBucket", "{value}");
                seen.push((
                    c["name"].as_str().unwrap_or_default().to_owned(),
                    c["phase"].as_str().unwrap_or_default().to_owned(),
                ));
            }
            other => panic!("unexpected {other:?}: {value}"),
        }
    }
    assert!(subscribed);
    let phases: Vec<&str> = seen.iter().map(|(_, p)| p.as_str()).collect();
    assert!(
        phases.contains(&"WAITING") && phases.contains(&"PROVISIONING"),
        "{phases:?}"
    );
    assert!(seen.iter().all(|(n, _)| n == "assets"));
}

#[tokio::test]
async fn one_queued_task_wakes_one_of_many_waiting_agents_and_an_expired_lease_reaches_a_waiting_one()
 {
    let cp = Cp::start().await;
    const ACCOUNT: &str = "kind: AwsAccount\nmetadata: {name: main}\nspec: {accountId: \"123456789012\", roleArn: \"arn:aws:iam::123456789012:role/qleet\", defaultRegion: eu-west-1}\n";
    // A long-poll for one task with a 10 s lease.
    let lease = |agent: String, wait: u32| {
        let cp = &cp;
        async move {
            let (code, body) = cp
                .post(
                    "/agent/v1/tasks/lease",
                    json!({ "agent": agent, "max": 1, "waitSeconds": wait, "leaseSeconds": 10 }),
                )
                .await;
            assert_eq!(code, 200, "{body}");
            body["tasks"].as_array().cloned().unwrap_or_default()
        }
    };
    // Eight agents wait; one task is queued. Exactly one of them gets it.
    let waiting = futures::future::join_all((0..8).map(|i| lease(format!("agent-{i}"), 8)));
    let (leased, ()) = tokio::join!(waiting, async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cp.apply_ok(ACCOUNT).await;
    });
    let leased: Vec<Value> = leased.into_iter().flatten().collect();
    assert_eq!(leased.len(), 1, "{leased:?}");
    assert_eq!(leased[0]["attempt"], 1);

    // Its agent vanishes (no renewal, no report). No notification says so; an agent already
    // waiting gets the task once the lease has run out.
    let again = lease("agent-late".into(), 25).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0]["id"], leased[0]["id"]);
    assert_eq!(again[0]["attempt"], 2);
    // When: from the two leases' server-side expiry times (both 10 s leases), the second was
    // taken just after the first ran out (the due-task watcher looks every second), not when
    // the waiting agent's 25 s were up (about 32 s after the first, when a wait with nothing to
    // wake it would have looked again).
    let expiry = |t: &Value| {
        chrono::DateTime::parse_from_rfc3339(t["leaseExpiresAt"].as_str().expect("expiry"))
            .expect("rfc3339")
    };
    let gap = expiry(&again[0]) - expiry(&leased[0]);
    assert!(
        gap >= chrono::TimeDelta::seconds(10) && gap < chrono::TimeDelta::seconds(20),
        "leased again {gap} after the first"
    );
    let (code, body) = cp.report(&leased[0], json!({"succeeded": {}})).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (503, Some("LEASE_LOST"))
    );
}

/// One Workload document whose manifests text is `manifests`, plus whatever `extra` spec lines.
fn workload(name: &str, manifests: &str, extra: &str) -> String {
    format!(
        "kind: Workload\nmetadata: {{name: {name}}}\nspec:\n  runtime: KubernetesRuntime/prod\n  namespace: shop\n  manifests: {manifests}\n{extra}"
    )
}

#[tokio::test]
async fn an_apply_that_aliases_expand_past_its_limits_is_refused_before_it_is_built() {
    let cp = Cp::start().await;
    // The reported attack: one 586 KB anchor named by 99 aliases (57 MB expanded).
    let anchor = format!("&big \"{}\"", "x".repeat(586 * 1024));
    let aliases: String = (0..99).map(|i| format!("  a{i}: *big\n")).collect();
    let yaml = workload("bomb", &anchor, &aliases);
    let started = std::time::Instant::now();
    let body = cp.apply(&yaml, true, false).await;
    let took = started.elapsed();
    assert_eq!(
        error_code(&body).as_deref(),
        Some("INPUT_TOO_LARGE"),
        "{body:.300}"
    );
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("document 1") && message.contains("1024 KiB"),
        "{message}"
    );
    assert!(body.to_string().len() < 4096, "the refusal is short");
    println!("refused the 586 KB x 99 alias apply in {took:?}");

    // Billion laughs: nested aliases, tiny text.
    let mut laughs = String::from(
        "kind: Workload\nmetadata: {name: lol}\nspec:\n  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..10 {
        let refs = vec![format!("*l{}", i - 1); 9].join(", ");
        laughs.push_str(&format!("  l{i}: &l{i} [{refs}]\n"));
    }
    let body = cp.apply(&laughs, false, false).await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("INPUT_TOO_LARGE"),
        "{body:.300}"
    );

    // Objects each under the per-object limit, but over the per-apply limit together.
    let anchor = format!("&m \"{}\"", "y".repeat(100 * 1024));
    let docs: Vec<String> = (0..5)
        .map(|i| {
            workload(
                &format!("w{i}"),
                &anchor,
                "  x: [*m, *m, *m, *m, *m, *m, *m, *m]\n",
            )
        })
        .collect();
    let body = cp.apply(&docs.join("---\n"), true, false).await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("INPUT_TOO_LARGE"),
        "{body:.300}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("4 MiB"),
        "{body:.300}"
    );
    assert_eq!(cp.phases().await.len(), 0, "nothing was written");
}

#[tokio::test]
async fn a_large_legitimate_apply_still_succeeds() {
    let cp = Cp::start().await;
    // A 600 KB ConfigMap in a Workload whose env shares one value by alias, and 100 buckets.
    let data: String = (0..6000)
        .map(|i| format!("      k{i}: \"{}\"\n", "v".repeat(90)))
        .collect();
    let manifests = format!(
        "|\n    apiVersion: v1\n    kind: ConfigMap\n    metadata: {{name: big}}\n    data:\n{data}"
    );
    let mut yaml = String::from(APP);
    yaml.push_str("---\n");
    let env = "  env:\n    - {name: A, value: &v shared-value}\n    - {name: B, value: *v}\n";
    yaml.push_str(&workload("big", &manifests, env));
    for i in 0..100 {
        yaml.push_str(&format!(
            "---\nkind: ObjectStorageBucket\nmetadata: {{name: b{i}}}\nspec: {{account: AwsAccount/main}}\n"
        ));
    }
    assert!(yaml.len() > 600 * 1024, "{}", yaml.len());
    let plan = cp.apply_ok(&yaml).await;
    assert_eq!(plan["applied"], true);
    assert_eq!(plan["summary"]["create"], 106, "{:.300}", plan.to_string());
}

const BUCKET_APP: &str = r#"
kind: AwsAccount
metadata: {name: main}
spec: {accountId: "123456789012", roleArn: "arn:aws:iam::123456789012:role/qleet", defaultRegion: eu-west-1}
---
kind: ObjectStorageBucket
metadata: {name: assets}
spec: {account: AwsAccount/main}
"#;

const RETRY: &str =
    "mutation($k: String!, $n: String!) { retry(kind: $k, name: $n) { kind name phase message } }";
const REFRESH: &str = "mutation($k: String!, $n: String!) { refresh(kind: $k, name: $n) { kind name phase message } }";

/// The one task leased next (waiting up to 30 s for it), which must be for `key`.
async fn next_task(cp: &Cp, key: &str) -> Value {
    let tasks = cp.lease_n(1).await;
    assert_eq!(kinds_of(&tasks), BTreeSet::from([key.to_owned()]));
    tasks[0].clone()
}

#[tokio::test]
async fn a_failed_object_is_retried_and_a_ready_one_refreshed_against_the_cloud() {
    let cp = Cp::start().await;
    cp.apply_ok(BUCKET_APP).await;
    let account = next_task(&cp, "AwsAccount/main").await;
    let (code, _) = cp
        .report(
            &account,
            json!({"succeeded": {"outputs": outputs_for(&account)}}),
        )
        .await;
    assert_eq!(code, 200);
    let bucket = next_task(&cp, "ObjectStorageBucket/assets").await;
    let failure = json!({"failed": {"code": "AccessDenied", "message": "s3:CreateBucket denied", "retryable": false}});
    assert_eq!(cp.report(&bucket, failure.clone()).await.0, 200);
    cp.wait_until("the bucket failed", |p| {
        p["ObjectStorageBucket/assets"] == "FAILED"
    })
    .await;
    // A FAILED object stays failed: nothing more is handed out on its own.
    assert!(cp.lease("test-agent", 50, 0).await.is_empty());

    // Refusals: unknown object, wrong phase, bad name; nothing is queued by them.
    let vars = |k: &str, n: &str| json!({"k": k, "n": n});
    let body = cp.gql(RETRY, vars("ObjectStorageBucket", "nope")).await;
    assert_eq!(error_code(&body).as_deref(), Some("NOT_FOUND"), "{body}");
    let body = cp.gql(RETRY, vars("AwsAccount", "main")).await;
    assert_eq!(error_code(&body).as_deref(), Some("CONFLICT"), "{body}");
    assert_eq!(
        body["errors"][0]["message"],
        "only a FAILED object can be retried; AwsAccount/main is READY"
    );
    let body = cp.gql(RETRY, vars("ObjectStorageBucket", "")).await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("INVALID_INPUT"),
        "{body}"
    );
    assert!(cp.lease("test-agent", 50, 0).await.is_empty());

    // Re-applying the unchanged spec of a FAILED object retries it too (how a pipeline asks).
    cp.apply_ok(BUCKET_APP).await;
    let reapplied = next_task(&cp, "ObjectStorageBucket/assets").await;
    assert_eq!(reapplied["attempt"], 1, "{reapplied}");
    assert_eq!(reapplied["payload"], bucket["payload"], "the same inputs");
    assert_eq!(cp.report(&reapplied, failure.clone()).await.0, 200);
    cp.wait_until("the bucket failed again", |p| {
        p["ObjectStorageBucket/assets"] == "FAILED"
    })
    .await;

    // Retry: the same work again, from the first attempt, and this time it works.
    let retried = cp
        .gql_ok(RETRY, vars("ObjectStorageBucket", "assets"))
        .await;
    assert_eq!(retried["retry"]["name"], "assets");
    assert_eq!(retried["retry"]["phase"], "PROVISIONING", "{retried}");
    let again = next_task(&cp, "ObjectStorageBucket/assets").await;
    assert_eq!(again["attempt"], 1, "{again}");
    assert_eq!(again["payload"], bucket["payload"], "the same inputs");
    assert_eq!(again["generation"], bucket["generation"]);
    assert_eq!(
        cp.report(
            &again,
            json!({"succeeded": {"outputs": outputs_for(&again)}})
        )
        .await
        .0,
        200
    );
    cp.wait_until("the bucket is ready", |p| {
        p["ObjectStorageBucket/assets"] == "READY"
    })
    .await;

    // Refresh: the agent is asked to observe it in the cloud; it is PROVISIONING until the
    // observation is answered, then READY and in sync (drift is tested in `drift.rs`).
    let refreshed = cp
        .gql_ok(REFRESH, vars("ObjectStorageBucket", "assets"))
        .await;
    assert_eq!(refreshed["refresh"]["name"], "assets");
    assert_eq!(refreshed["refresh"]["phase"], "PROVISIONING", "{refreshed}");
    let check = next_task(&cp, "ObjectStorageBucket/assets").await;
    assert_eq!(check["operation"], "observe", "{check}");
    assert_eq!(
        check["payload"], again["payload"],
        "what was made is observed"
    );
    assert_eq!(
        cp.report(
            &check,
            json!({"succeeded": {"outputs": observed_for(&check)}})
        )
        .await
        .0,
        200
    );
    cp.wait_until("the bucket is ready again", |p| {
        p["ObjectStorageBucket/assets"] == "READY"
    })
    .await;
    let o = cp.object("ObjectStorageBucket", "assets").await;
    let drifted = o["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == "Drifted"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&drifted["status"], &drifted["reason"]),
        (&json!(false), &json!("InSync")),
        "{o}"
    );
    // A refresh of the account it uses: handed out too, and it all settles READY.
    let body = cp.gql(REFRESH, vars("AwsAccount", "main")).await;
    assert!(body.get("errors").is_none(), "{body}");
    let account_again = next_task(&cp, "AwsAccount/main").await;
    assert_eq!(
        cp.report(
            &account_again,
            json!({"succeeded": {"outputs": outputs_for(&account_again)}})
        )
        .await
        .0,
        200
    );
    cp.wait_ready(2).await;
    let reasons: Vec<&str> = o["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"RetryRequested"), "{reasons:?}");
    assert!(reasons.contains(&"RefreshRequested"), "{reasons:?}");
    let messages = o["events"].to_string();
    assert!(messages.contains("retry requested by admin"), "{messages}");
    assert!(messages.contains("(re-applied unchanged)"), "{messages}");

    // A refresh of an object on its way out is refused.
    cp.gql_ok(
        "mutation { delete(kind: \"ObjectStorageBucket\", name: \"assets\") { applied } }",
        json!({}),
    )
    .await;
    let body = cp.gql(REFRESH, vars("ObjectStorageBucket", "assets")).await;
    assert_eq!(error_code(&body).as_deref(), Some("CONFLICT"), "{body}");
}
