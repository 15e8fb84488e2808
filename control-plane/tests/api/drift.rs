//! Drift: what the agent made is observed (on demand with `refresh`, and periodically), compared
//! with what Qleet made it, and a difference shows as a `Drifted` condition with its fields and
//! an event; under `Remediate` (the default) it is put back, under `Report` only shown.

use std::time::Duration;

use qleet_test_support::cp::{APP, Cp, drain, observed_for, success};
use serde_json::{Value, json};

async fn ready(cp: &Cp, yaml: &str) {
    cp.apply_ok(yaml).await;
    while !drain(cp, 1).await.is_empty() {}
    cp.wait_ready(5).await;
}

async fn refresh(cp: &Cp, kind: &str, name: &str) -> Value {
    cp.gql_ok(
        "mutation($k: String!, $n: String!) { refresh(kind: $k, name: $n) { phase } }",
        json!({ "k": kind, "n": name }),
    )
    .await["refresh"]
        .clone()
}

async fn answer(cp: &Cp, task: &Value, result: Value) {
    let (code, body) = cp.report(task, result).await;
    assert_eq!((code, &body["accepted"]), (200, &json!(true)), "{body}");
}

/// The object's `Drifted` condition, once it reads `reason`.
async fn drifted(cp: &Cp, kind: &str, name: &str, reason: &str) -> Value {
    for _ in 0..300 {
        let o = cp.object(kind, name).await;
        if let Some(c) = o["conditions"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["type"] == "Drifted"))
            && c["reason"] == reason
        {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{kind}/{name} never {reason}: {:#}",
        cp.object(kind, name).await
    );
}

fn condition(o: &Value) -> &Value {
    o["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == "Drifted"))
        .expect("Drifted")
}

fn reasons(o: &Value) -> Vec<String> {
    o["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_refresh_observes_the_cloud_and_drift_is_put_back_or_reported_by_policy() {
    let cp = Cp::start().await;
    let app = APP.replace(
        "sizeClass: db.t4g.micro}",
        "sizeClass: db.t4g.micro, driftPolicy: Report}",
    );
    ready(&cp, &app).await;

    // Remediate (the default): the bucket's versioning was turned on behind Qleet's back.
    let asked = refresh(&cp, "ObjectStorageBucket", "assets").await;
    assert_eq!(
        asked["phase"], "PROVISIONING",
        "until the observation is answered"
    );
    let tasks = cp.lease("test-agent", 50, 1).await;
    assert_eq!(tasks.len(), 1, "{tasks:#?}");
    let observe = &tasks[0];
    assert_eq!(observe["operation"], "observe");
    let mut seen = observed_for(observe);
    seen["versioning"] = json!(true);
    answer(&cp, observe, json!({ "succeeded": { "outputs": seen } })).await;
    let o = drifted(&cp, "ObjectStorageBucket", "assets", "Remediating").await;
    assert_eq!(condition(&o)["status"], true);
    let message = condition(&o)["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("spec.versioning is true (expected false)"),
        "{message}"
    );
    assert_eq!(o["phase"], "PROVISIONING", "{o:#}");
    // The agent is asked to make it as declared again.
    let put_back = cp.lease("test-agent", 50, 1).await;
    assert_eq!(put_back.len(), 1, "{put_back:#?}");
    assert_eq!(
        (&put_back[0]["operation"], &put_back[0]["objectKind"]),
        (&json!("ensure"), &json!("ObjectStorageBucket"))
    );
    answer(&cp, &put_back[0], success(&put_back[0])).await;
    let o = drifted(&cp, "ObjectStorageBucket", "assets", "InSync").await;
    assert_eq!(condition(&o)["status"], false);
    assert_eq!(o["phase"], "READY");
    let r = reasons(&o);
    assert!(
        r.contains(&"DriftDetected".to_owned()) && r.contains(&"DriftRemediated".to_owned()),
        "{r:?}"
    );

    // Report: the database was deleted behind Qleet's back; it is shown, not made again.
    refresh(&cp, "RelationalDatabase", "db").await;
    let tasks = cp.lease("test-agent", 50, 1).await;
    assert_eq!(tasks.len(), 1, "{tasks:#?}");
    answer(
        &cp,
        &tasks[0],
        json!({ "succeeded": { "outputs": { "found": false } } }),
    )
    .await;
    let o = drifted(&cp, "RelationalDatabase", "db", "Missing").await;
    assert_eq!(condition(&o)["status"], true);
    assert_eq!(o["phase"], "READY", "reported only: {o:#}");
    assert!(
        cp.lease("test-agent", 50, 1).await.is_empty(),
        "nothing is made again under Report"
    );
    // Back as it was (restored by hand): the next observation clears it.
    refresh(&cp, "RelationalDatabase", "db").await;
    let tasks = cp.lease("test-agent", 50, 1).await;
    answer(&cp, &tasks[0], success(&tasks[0])).await;
    let o = drifted(&cp, "RelationalDatabase", "db", "InSync").await;
    assert!(reasons(&o).contains(&"DriftResolved".to_owned()), "{o:#}");

    // Kinds with nothing the agent observes keep refreshing by re-running their work.
    let runtime = refresh(&cp, "KubernetesRuntime", "prod").await;
    assert_eq!(runtime["phase"], "PROVISIONING");
    let tasks = cp.lease("test-agent", 50, 1).await;
    assert_eq!(tasks[0]["operation"], "ensure");
}

#[tokio::test]
async fn what_the_agent_made_is_observed_periodically() {
    let cp = Cp::start_observing_every(Duration::from_secs(1)).await;
    let app = format!(
        "{APP}---\nkind: KubernetesRuntime\nmetadata: {{name: eks}}\nspec: {{eks: {{account: AwsAccount/main, version: \"1.31\", nodeGroup: {{min: 1, max: 3, desired: 2}}}}}}\n"
    );
    cp.apply_ok(&app).await;
    // No refresh: once made, each observed kind's resource is looked at within seconds (the
    // agent here answers everything as made and as observed); a cluster Qleet did not make
    // (`existing`) is not.
    let mut observed = std::collections::BTreeSet::new();
    for _ in 0..60 {
        for t in cp.lease("test-agent", 50, 1).await {
            if t["operation"] == "observe" {
                observed.insert(format!(
                    "{}/{}",
                    t["objectKind"].as_str().unwrap_or_default(),
                    t["objectName"].as_str().unwrap_or_default()
                ));
            }
            answer(&cp, &t, success(&t)).await;
        }
        if observed.len() == 4 {
            break;
        }
    }
    assert_eq!(
        observed.into_iter().collect::<Vec<_>>(),
        [
            "KubernetesRuntime/eks",
            "ObjectStorageBucket/assets",
            "RelationalDatabase/db",
            "Workload/web"
        ]
    );
    // One more round: the existing cluster is still not observed.
    for t in cp.lease("test-agent", 50, 2).await {
        assert!(
            !(t["operation"] == "observe" && t["objectName"] == "prod"),
            "{t}"
        );
        answer(&cp, &t, success(&t)).await;
    }
    // An EKS cluster resized behind Qleet's back is found on refresh, by its spec path.
    refresh(&cp, "KubernetesRuntime", "eks").await;
    let mut resized = false;
    for _ in 0..20 {
        for t in cp.lease("test-agent", 50, 1).await {
            if t["operation"] == "observe" && t["objectName"] == "eks" && !resized {
                let mut seen = observed_for(&t);
                seen["nodeGroup"]["desired"] = json!(3);
                answer(&cp, &t, json!({ "succeeded": { "outputs": seen } })).await;
                resized = true;
            } else {
                answer(&cp, &t, success(&t)).await;
            }
        }
        if resized {
            break;
        }
    }
    assert!(resized);
    let o = drifted(&cp, "KubernetesRuntime", "eks", "Remediating").await;
    let message = condition(&o)["message"].as_str().unwrap_or_default();
    assert!(message.contains("spec.eks.nodeGroup is"), "{message}");

    // A workload's objects are compared by the agent itself (a server-side apply dry run
    // against the live objects): its differences are shown as it reports them.
    refresh(&cp, "Workload", "web").await;
    let mut reported = false;
    for _ in 0..20 {
        for t in cp.lease("test-agent", 50, 1).await {
            if t["operation"] == "observe" && t["objectName"] == "web" && !reported {
                let seen = json!({ "found": true, "differences": [
                    { "field": "Deployment shop/web: spec.replicas", "expected": 2, "observed": 5 },
                ] });
                answer(&cp, &t, json!({ "succeeded": { "outputs": seen } })).await;
                reported = true;
            } else {
                answer(&cp, &t, success(&t)).await;
            }
        }
        if reported {
            break;
        }
    }
    assert!(reported);
    let o = drifted(&cp, "Workload", "web", "Remediating").await;
    let message = condition(&o)["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Deployment shop/web: spec.replicas is 5 (expected 2)"),
        "{message}"
    );
    let o = drifted(&cp, "ObjectStorageBucket", "assets", "InSync").await;
    assert_eq!(o["phase"], "READY");
}
