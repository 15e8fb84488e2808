//! Kubernetes work against kube's `tower-test` mock: a small in-memory API server answers the
//! agent's requests and records them; every object the agent applies is also checked strictly
//! against its k8s-openapi type.

use std::path::PathBuf;

use base64::Engine as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use qleet_agent::k8s::Clusters;
use qleet_agent::task::{self, Context};
use qleet_protocol::TaskResult;
use serde_json::{Value, json};
use uuid::Uuid;

use qleet_test_support::kube::{ApiServer, Seen, expect_strictly};

use crate::support::{Moto, REGION, ROLE_ARN, TaskBuilder};

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "web", "namespace": "shop" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{
                    "name": "web",
                    "image": "shop:1",
                    "env": [
                        { "name": "BUCKET", "value": "qleet-assets-1234" },
                        { "name": "DB_PASSWORD", "valueFrom": { "secretKeyRef": { "name": "web-qleet-secrets", "key": "DB_PASSWORD" } } },
                    ],
                }]},
            },
        },
    })
}

fn config_map(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": name, "namespace": "shop" },
        "data": { "a": "b" },
    })
}

async fn context_with_cluster(moto: &Moto, helm: PathBuf) -> (Context, ApiServer) {
    let (client, api) = ApiServer::start();
    let ctx = Context {
        aws: moto.agent_aws(&moto.url, "ambient", "ambient").await,
        clusters: Clusters::from_clients([(
            "prod-1".to_owned(),
            client,
            "https://k8s.test".to_owned(),
        )]),
        helm,
        rollout_wait: std::time::Duration::from_secs(5),
    };
    (ctx, api)
}

fn workload(manifests: Vec<Value>, secrets: Value) -> Value {
    json!({
        "runtime": { "clusterName": "prod-1", "endpoint": "https://k8s.test" },
        "namespace": "shop",
        "manifests": manifests,
        "secrets": secrets,
    })
}

fn expect_ok(r: TaskResult) {
    if let TaskResult::Failed { code, message, .. } = r {
        panic!("task failed: {code}: {message}");
    }
}

#[tokio::test]
async fn a_workload_is_applied_server_side_labelled_with_its_secret_materialised_first() {
    let moto = Moto::start().await;
    let sm = aws_sdk_secretsmanager::Client::new(&moto.sdk("test", "test").await);
    let arn = sm
        .create_secret()
        .name("qleet/db/password")
        .secret_string("s3cret-value-from-the-account")
        .send()
        .await
        .expect("secret")
        .arn()
        .expect("arn")
        .to_owned();
    let (ctx, api) = context_with_cluster(&moto, PathBuf::from("/nonexistent/helm")).await;
    let w = TaskBuilder::new("Workload", "web");
    let secrets = json!([{
        "name": "web-qleet-secrets",
        "key": "DB_PASSWORD",
        "from": { "provider": "aws-secretsmanager", "arn": arn, "region": REGION, "roleArn": ROLE_ARN, "externalId": "x" },
    }]);
    let t = w.task(
        "ensure",
        workload(vec![deployment(), config_map("settings")], secrets),
    );
    let result = task::run(&ctx, &t).await;
    assert!(
        !serde_json::to_string(&result)
            .expect("json")
            .contains("s3cret-value"),
        "the secret value is not reported"
    );
    expect_ok(result);

    let applies: Vec<Seen> = api
        .requests()
        .into_iter()
        .filter(|s| s.method == "PATCH")
        .collect();
    let order: Vec<&str> = applies.iter().map(|s| s.path.as_str()).collect();
    let inventory = format!(
        "/api/v1/namespaces/shop/configmaps/qleet-inventory-{}",
        w.object_id
    );
    assert_eq!(
        order,
        [
            "/api/v1/namespaces/shop",
            inventory.as_str(),
            "/api/v1/namespaces/shop/secrets/web-qleet-secrets",
            "/apis/apps/v1/namespaces/shop/deployments/web",
            "/api/v1/namespaces/shop/configmaps/settings",
        ]
    );
    for s in &applies {
        let mut q: Vec<&str> = s.query.split('&').filter(|p| !p.is_empty()).collect();
        q.sort();
        assert_eq!(
            q,
            [
                "fieldManager=qleet-agent",
                "fieldValidation=Strict",
                "force=true"
            ],
            "{}",
            s.path
        );
    }
    let id = w.object_id.to_string();
    let secret: Secret = expect_strictly(&applies[2].body);
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("qleet.dev/object-id"), Some(&id));
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get("DB_PASSWORD"))
        .expect("key");
    assert_eq!(value.0, b"s3cret-value-from-the-account");
    assert_eq!(
        applies[2].body["data"]["DB_PASSWORD"],
        base64::engine::general_purpose::STANDARD.encode("s3cret-value-from-the-account")
    );

    let dep: Deployment = expect_strictly(&applies[3].body);
    assert_eq!(
        dep.metadata
            .labels
            .unwrap_or_default()
            .get("qleet.dev/object-id"),
        Some(&id)
    );
    let _: ConfigMap = expect_strictly(&applies[4].body);
    let ns: Namespace = expect_strictly(&applies[0].body);
    assert!(
        !ns.metadata
            .labels
            .unwrap_or_default()
            .contains_key("qleet.dev/object-id"),
        "a namespace is never the object's, so never pruned"
    );
    let inv: ConfigMap = expect_strictly(&applies[1].body);
    let listed: Value = serde_json::from_str(
        inv.data
            .unwrap_or_default()
            .get("objects")
            .expect("objects"),
    )
    .expect("inventory json");
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
}

#[tokio::test]
async fn a_new_revision_prunes_what_it_dropped_but_only_objects_still_labelled_as_its_own() {
    let moto = Moto::start().await;
    let (ctx, api) = context_with_cluster(&moto, PathBuf::from("/nonexistent/helm")).await;
    let w = TaskBuilder::new("Workload", "web");
    let first = w.task(
        "ensure",
        workload(
            vec![deployment(), config_map("settings"), config_map("extra")],
            json!([]),
        ),
    );
    expect_ok(task::run(&ctx, &first).await);
    // Someone else took `settings` over since.
    api.set_label(
        "/api/v1/namespaces/shop/configmaps/settings",
        "qleet.dev/object-id",
        "someone-else",
    );

    let second = w.task("ensure", workload(vec![deployment()], json!([])));
    expect_ok(task::run(&ctx, &second).await);
    assert_eq!(api.deleted(), ["/api/v1/namespaces/shop/configmaps/extra"]);
    assert!(
        api.get("/api/v1/namespaces/shop/configmaps/settings")
            .is_some()
    );
    let inventory = api
        .get(&format!(
            "/api/v1/namespaces/shop/configmaps/qleet-inventory-{}",
            w.object_id
        ))
        .expect("inventory");
    let listed: Value =
        serde_json::from_str(inventory["data"]["objects"].as_str().expect("objects"))
            .expect("json");
    assert_eq!(
        listed,
        json!([{ "apiVersion": "apps/v1", "kind": "Deployment", "namespace": "shop", "name": "web" }])
    );

    // Deleting the workload removes what it made, its inventory, and the namespace its
    // first apply made.
    let del = w.task("delete", workload(vec![], json!([])));
    expect_ok(task::run(&ctx, &del).await);
    let deleted = api.deleted();
    assert!(deleted.contains(&"/apis/apps/v1/namespaces/shop/deployments/web".to_owned()));
    assert!(deleted.iter().any(|p| p.contains("qleet-inventory-")));
    assert_eq!(
        deleted.last().map(String::as_str),
        Some("/api/v1/namespaces/shop")
    );
}

#[tokio::test]
async fn a_namespace_qleet_made_goes_with_its_last_workload_and_one_it_did_not_make_stays() {
    let moto = Moto::start().await;
    let (ctx, api) = context_with_cluster(&moto, PathBuf::from("/nonexistent/helm")).await;
    let ns = "/api/v1/namespaces/shop";
    // Two workloads share the namespace the first one's apply made.
    let (a, b) = (
        TaskBuilder::new("Workload", "web"),
        TaskBuilder::new("Workload", "worker"),
    );
    let cm = |name: &str| workload(vec![config_map(name)], json!([]));
    expect_ok(task::run(&ctx, &a.task("ensure", cm("a"))).await);
    expect_ok(task::run(&ctx, &b.task("ensure", cm("b"))).await);
    let made = api.get(ns).expect("namespace");
    assert_eq!(
        made["metadata"]["annotations"]["qleet.dev/created-by"],
        a.object_id.to_string(),
        "{made}"
    );
    // Applied again by the other workload, the mark stays.
    expect_ok(task::run(&ctx, &b.task("ensure", cm("b"))).await);
    assert_eq!(
        api.get(ns).expect("namespace")["metadata"]["annotations"]["qleet.dev/created-by"],
        a.object_id.to_string()
    );
    // The maker goes first: the namespace stays while the other still has things there.
    expect_ok(task::run(&ctx, &a.task("delete", cm("a"))).await);
    assert!(api.get(ns).is_some(), "still used by {}", b.object_id);
    assert!(api.get("/api/v1/namespaces/shop/configmaps/b").is_some());
    // The last one out removes it.
    expect_ok(task::run(&ctx, &b.task("delete", cm("b"))).await);
    assert!(api.get(ns).is_none(), "the namespace Qleet made is gone");

    // A namespace that was there before Qleet is never marked, nor removed.
    api.answer(
        "PATCH",
        ns,
        "",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "shop"}}}),
    );
    expect_ok(task::run(&ctx, &a.task("ensure", cm("a"))).await);
    assert!(
        api.get(ns).expect("namespace")["metadata"]["annotations"]
            .get("qleet.dev/created-by")
            .is_none()
    );
    expect_ok(task::run(&ctx, &a.task("delete", cm("a"))).await);
    assert!(api.get(ns).is_some(), "the customer's namespace stays");
}

#[tokio::test]
async fn helm_charts_are_rendered_by_the_helm_cli_and_applied_like_manifests() {
    let moto = Moto::start().await;
    let dir = std::env::temp_dir().join(format!("qleet-agent-helm-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let helm = dir.join("helm");
    // A stand-in with helm's CLI contract: arguments in, values on stdin, YAML out.
    std::fs::write(
        &helm,
        format!(
            "#!/bin/sh\necho \"$@\" > {dir}/args\ncat > {dir}/values\nprintf 'apiVersion: v1\\nkind: ConfigMap\\nmetadata:\\n  name: %s-rendered\\ndata:\\n  chart: %s\\n---\\n' \"$2\" \"$3\"\n",
            dir = dir.display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&helm, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let (ctx, api) = context_with_cluster(&moto, helm).await;
    let w = TaskBuilder::new("Workload", "shop");
    let resource = json!({
        "runtime": { "clusterName": "prod-1" },
        "namespace": "shop",
        "helm": { "releases": [{
            "name": "shop", "namespace": "shop", "repo": "https://charts.example",
            "chart": "webapp", "version": "1.2.3", "values": { "replicas": 3 },
        }]},
        "secrets": [],
    });
    expect_ok(task::run(&ctx, &w.task("ensure", resource.clone())).await);
    let args = std::fs::read_to_string(dir.join("args")).expect("args");
    assert_eq!(
        args.trim(),
        "template shop webapp --version 1.2.3 --namespace shop --include-crds --values - --repo https://charts.example"
    );
    let values: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("values")).expect("values"))
            .expect("json");
    assert_eq!(values, json!({ "replicas": 3 }));
    let applied = api.applied("/api/v1/namespaces/shop/configmaps/shop-rendered");
    assert_eq!(applied.len(), 1);
    let cm: ConfigMap = expect_strictly(&applied[0].body);
    assert_eq!(
        cm.metadata
            .labels
            .unwrap_or_default()
            .get("qleet.dev/object-id"),
        Some(&w.object_id.to_string())
    );

    // Without the helm binary, a clear permanent error.
    let (ctx, _api) = context_with_cluster(&moto, dir.join("missing-helm")).await;
    match task::run(&ctx, &w.task("ensure", resource)).await {
        TaskResult::Failed {
            code, retryable, ..
        } => assert_eq!((code.as_str(), retryable), ("HelmUnavailable", false)),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test]
async fn an_existing_cluster_is_checked_by_its_name_and_an_unknown_one_is_refused() {
    let moto = Moto::start().await;
    let (ctx, api) = context_with_cluster(&moto, PathBuf::from("/nonexistent/helm")).await;
    let r = TaskBuilder::new("KubernetesRuntime", "prod");
    match task::run(
        &ctx,
        &r.task("ensure", json!({ "existing": { "cluster": "prod-1" } })),
    )
    .await
    {
        TaskResult::Succeeded { outputs } => assert_eq!(
            Value::Object(outputs),
            json!({ "endpoint": "https://k8s.test", "clusterName": "prod-1" })
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(api.requests()[0].path, "/version");
    match task::run(
        &ctx,
        &r.task("ensure", json!({ "existing": { "cluster": "staging" } })),
    )
    .await
    {
        TaskResult::Failed {
            code,
            message,
            retryable,
        } => {
            assert_eq!((code.as_str(), retryable), ("UnknownCluster", false));
            assert!(message.contains("prod-1"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_rollout_is_reported_as_events_and_one_that_does_not_complete_is_pending_with_the_clusters_warnings()
 {
    let moto = Moto::start().await;
    let (ctx, api) = context_with_cluster(&moto, PathBuf::from("/nonexistent/helm")).await;
    let w = TaskBuilder::new("Workload", "web");
    let (result, events) = task::run_with_events(
        &ctx,
        &w.task("ensure", workload(vec![deployment()], json!([]))),
    )
    .await;
    expect_ok(result);
    assert_eq!(
        events,
        vec![qleet_protocol::TaskEvent {
            warning: false,
            reason: "RolloutComplete".into(),
            message: "Deployment shop/web: 2 of 2 replicas available".into(),
        }]
    );

    // The next revision's pods cannot start; the cluster says why.
    api.stuck_rollouts
        .store(true, std::sync::atomic::Ordering::SeqCst);
    api.store.lock().expect("lock").insert(
        "/api/v1/namespaces/shop/events".into(),
        json!({
            "apiVersion": "v1", "kind": "EventList", "metadata": {},
            "items": [
                {
                    "metadata": { "name": "web-1", "namespace": "shop" },
                    "involvedObject": { "kind": "Pod", "name": "web-5d8f-x1" },
                    "reason": "BackOff", "type": "Warning",
                    "message": "Back-off pulling image \"shop:2\"",
                    "lastTimestamp": "2026-11-26T10:00:00Z",
                },
                {
                    "metadata": { "name": "web-2", "namespace": "shop" },
                    "involvedObject": { "kind": "Pod", "name": "web-5d8f-x1" },
                    "reason": "Failed", "type": "Warning",
                    "message": "Failed to pull image \"shop:2\": not found",
                    "lastTimestamp": "2026-11-26T10:00:05Z",
                },
            ],
        }),
    );
    let mut next = deployment();
    next["spec"]["template"]["spec"]["containers"][0]["image"] = json!("shop:2");
    let (result, events) =
        task::run_with_events(&ctx, &w.task("ensure", workload(vec![next], json!([])))).await;
    match result {
        TaskResult::Failed {
            code,
            message,
            retryable,
        } => {
            assert_eq!((code.as_str(), retryable), ("RolloutPending", true));
            assert_eq!(
                message,
                "Deployment shop/web: 0 of 2 replicas available after 5 s"
            );
        }
        other => panic!("{other:?}"),
    }
    let warnings: Vec<(bool, &str, &str)> = events
        .iter()
        .map(|e| (e.warning, e.reason.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        warnings,
        [
            (
                true,
                "Failed",
                "Pod/web-5d8f-x1: Failed to pull image \"shop:2\": not found"
            ),
            (
                true,
                "BackOff",
                "Pod/web-5d8f-x1: Back-off pulling image \"shop:2\""
            ),
        ],
        "newest first"
    );
    let listed = api
        .requests()
        .into_iter()
        .find(|s| s.path == "/api/v1/namespaces/shop/events")
        .expect("the namespace's events were read");
    assert!(
        listed.query.contains("fieldSelector=type%3DWarning"),
        "{}",
        listed.query
    );
}

/// Runs only with `KUBECONFIG` set (no API server can run on this machine): the same apply,
/// rollout and delete against that kubeconfig's current cluster, in a namespace of its own
/// (deleted at the end). The Deployment runs `QLEET_TEST_K8S_PAUSE_IMAGE`
/// (default `registry.k8s.io/pause:3.10`), so the cluster must be able to pull it.
#[tokio::test]
async fn a_workload_is_applied_rolled_out_and_deleted_in_a_real_cluster_when_kubeconfig_is_set() {
    let Some(path) = std::env::var_os("KUBECONFIG") else {
        println!(
            "skipping: KUBECONFIG is not set (no Kubernetes API server can run on this machine)"
        );
        return;
    };
    let moto = Moto::start().await;
    let clusters = Clusters::new(Default::default(), Some(std::path::Path::new(&path)))
        .expect("the kubeconfig's current cluster");
    let name = clusters
        .names()
        .await
        .into_iter()
        .next()
        .expect("a cluster");
    let client = clusters.client(&name).await.expect("a client");
    let ctx = Context {
        aws: moto.agent_aws(&moto.url, "ambient", "ambient").await,
        clusters,
        helm: PathBuf::from("/nonexistent/helm"),
        rollout_wait: std::time::Duration::from_secs(120),
    };
    let ns = format!(
        "qleet-agent-test-{}",
        &Uuid::new_v4().simple().to_string()[..8]
    );
    let mut dep = deployment();
    dep["metadata"]["namespace"] = json!(ns);
    dep["spec"]["replicas"] = json!(1);
    dep["spec"]["template"]["spec"]["containers"][0] = json!({
        "name": "web",
        "image": std::env::var("QLEET_TEST_K8S_PAUSE_IMAGE")
            .unwrap_or_else(|_| "registry.k8s.io/pause:3.10".into()),
    });
    let mut cm = config_map("settings");
    cm["metadata"]["namespace"] = json!(ns);
    let mut payload = workload(vec![dep, cm], json!([]));
    payload["runtime"] = json!({ "clusterName": name });
    payload["namespace"] = json!(ns);
    let w = TaskBuilder::new("Workload", "web");

    let (applied, events) = task::run_with_events(&ctx, &w.task("ensure", payload.clone())).await;
    let maps: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), &ns);
    let seen = maps.get_opt("settings").await;
    let (deleted, _) = task::run_with_events(&ctx, &w.task("delete", payload)).await;
    let after = maps.get_opt("settings").await;
    let namespaces: kube::Api<Namespace> = kube::Api::all(client);
    let _ = namespaces.delete(&ns, &Default::default()).await;

    expect_ok(applied);
    assert!(
        events.iter().any(|e| e.reason == "RolloutComplete"),
        "{events:?}"
    );
    let seen = seen.expect("read").expect("the ConfigMap was applied");
    assert!(
        seen.metadata
            .managed_fields
            .unwrap_or_default()
            .iter()
            .any(|f| f.manager.as_deref() == Some("qleet-agent")),
        "applied server-side by qleet-agent"
    );
    expect_ok(deleted);
    assert!(after.expect("read").is_none(), "deleted with its workload");
}

/// What an observation reports: `found` and the differences' fields.
fn observed(r: TaskResult) -> (bool, Vec<String>, Vec<Value>) {
    match r {
        TaskResult::Succeeded { outputs } => {
            let diffs = outputs["differences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            (
                outputs["found"] == true,
                diffs
                    .iter()
                    .map(|d| d["field"].as_str().unwrap_or_default().to_owned())
                    .collect(),
                diffs,
            )
        }
        TaskResult::Failed { code, message, .. } => panic!("observe failed: {code}: {message}"),
    }
}

#[tokio::test]
async fn a_workload_changed_or_deleted_behind_qleets_back_is_observed_by_a_dry_run() {
    let moto = Moto::start().await;
    let (ctx, api) = context_with_cluster(&moto, PathBuf::from("/nonexistent/helm")).await;
    let w = TaskBuilder::new("Workload", "web");
    let mut secret = config_map("creds");
    secret["kind"] = json!("Secret");
    secret["data"] = json!({ "token": "c2VjcmV0" });
    let resource = workload(
        vec![deployment(), config_map("settings"), secret],
        json!([]),
    );
    expect_ok(task::run(&ctx, &w.task("ensure", resource.clone())).await);
    let patches = || {
        api.requests()
            .iter()
            .filter(|s| s.method == "PATCH" && !s.query.contains("dryRun=All"))
            .count()
    };
    let applied = patches();

    // As applied: in sync, and the observation changed nothing.
    let (found, fields, _) = observed(task::run(&ctx, &w.task("observe", resource.clone())).await);
    assert!(found);
    assert_eq!(fields, Vec::<String>::new());
    assert_eq!(patches(), applied, "an observation only dry-runs");

    // Edited behind Qleet's back: each changed field is named, with both values; a Secret's
    // values are never shown.
    let path = "/api/v1/namespaces/shop/configmaps/settings";
    let mut edited = api.get(path).expect("settings");
    edited["data"]["a"] = json!("edited");
    api.answer("PATCH", path, "", edited);
    let deployment_path = "/apis/apps/v1/namespaces/shop/deployments/web";
    let mut scaled = api.get(deployment_path).expect("web");
    scaled["spec"]["replicas"] = json!(5);
    api.answer("PATCH", deployment_path, "", scaled);
    let secret_path = "/api/v1/namespaces/shop/secrets/creds";
    let mut leaked = api.get(secret_path).expect("creds");
    leaked["data"]["token"] = json!("b3RoZXI=");
    api.answer("PATCH", secret_path, "", leaked);
    let (found, fields, diffs) =
        observed(task::run(&ctx, &w.task("observe", resource.clone())).await);
    assert!(found);
    assert_eq!(
        fields,
        [
            "Deployment shop/web: spec.replicas",
            "ConfigMap shop/settings: data.a",
            "Secret shop/creds: data.token",
        ]
    );
    assert_eq!(
        (&diffs[0]["expected"], &diffs[0]["observed"]),
        (&json!(2), &json!(5))
    );
    assert_eq!(
        (&diffs[1]["expected"], &diffs[1]["observed"]),
        (&json!("b"), &json!("edited"))
    );
    assert!(!diffs[2].to_string().contains("b3RoZXI="), "{}", diffs[2]);
    assert!(!diffs[2].to_string().contains("c2VjcmV0"), "{}", diffs[2]);

    // One deleted: reported missing; everything deleted: not found.
    api.answer("DELETE", path, "", Value::Null);
    let (found, fields, _) = observed(task::run(&ctx, &w.task("observe", resource.clone())).await);
    assert!(found);
    assert!(
        fields.contains(&"ConfigMap shop/settings".to_owned()),
        "{fields:?}"
    );
    api.answer("DELETE", deployment_path, "", Value::Null);
    api.answer("DELETE", secret_path, "", Value::Null);
    let (found, _, _) = observed(task::run(&ctx, &w.task("observe", resource.clone())).await);
    assert!(!found, "nothing of it is left");

    // Put back by the ensure: in sync again.
    expect_ok(task::run(&ctx, &w.task("ensure", resource.clone())).await);
    let (found, fields, _) = observed(task::run(&ctx, &w.task("observe", resource)).await);
    assert!(found);
    assert_eq!(fields, Vec::<String>::new());
}

#[tokio::test]
async fn a_helm_releases_own_namespace_goes_with_the_last_workload_that_uses_it() {
    let moto = Moto::start().await;
    let dir = std::env::temp_dir().join(format!("qleet-agent-helm-ns-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let helm = dir.join("helm");
    // A stand-in with helm's CLI contract: one ConfigMap named after the release.
    std::fs::write(
        &helm,
        "#!/bin/sh\ncat > /dev/null\nprintf 'apiVersion: v1\\nkind: ConfigMap\\nmetadata:\\n  name: %s-rendered\\ndata:\\n  chart: %s\\n' \"$2\" \"$3\"\n",
    )
    .expect("script");
    std::fs::set_permissions(&helm, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let (ctx, api) = context_with_cluster(&moto, helm).await;
    // Two workloads, each in its own namespace, each with a release in the shared `charts`.
    let with_release = |ns: &str, release: &str| {
        json!({
            "runtime": { "clusterName": "prod-1" },
            "namespace": ns,
            "helm": { "releases": [{
                "name": release, "namespace": "charts", "repo": "https://charts.example",
                "chart": "webapp", "version": "1.2.3", "values": {},
            }]},
            "secrets": [],
        })
    };
    let (a, b) = (
        TaskBuilder::new("Workload", "a"),
        TaskBuilder::new("Workload", "b"),
    );
    let (ra, rb) = (with_release("team-a", "a"), with_release("team-b", "b"));
    expect_ok(task::run(&ctx, &a.task("ensure", ra.clone())).await);
    expect_ok(task::run(&ctx, &b.task("ensure", rb.clone())).await);
    let charts = "/api/v1/namespaces/charts";
    assert!(api.get(charts).is_some());
    assert!(
        api.get("/api/v1/namespaces/charts/configmaps/a-rendered")
            .is_some()
    );

    // The first one out leaves `charts` to the other; the last one out removes it, and each
    // its own namespace.
    expect_ok(task::run(&ctx, &a.task("delete", ra)).await);
    assert!(api.get("/api/v1/namespaces/team-a").is_none());
    assert!(api.get(charts).is_some(), "still used by b");
    assert!(
        api.get("/api/v1/namespaces/charts/configmaps/a-rendered")
            .is_none()
    );
    expect_ok(task::run(&ctx, &b.task("delete", rb)).await);
    assert!(
        api.get(charts).is_none(),
        "the release namespace Qleet made is gone"
    );
    assert!(api.get("/api/v1/namespaces/team-b").is_none());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
