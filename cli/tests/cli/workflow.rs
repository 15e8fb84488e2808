//! A pipeline's day with a token: management commands, a control plane, plan / apply / get /
//! describe / delete against it, with the test playing the tenant agent through the agent API.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{owner_with_token, run, run_env, spawn_app};

/// The README's worked example.
pub const APP: &str = r#"kind: AwsAccount
metadata: {name: main}
spec: {accountId: "123456789012", roleArn: "arn:aws:iam::123456789012:role/qleet", defaultRegion: eu-west-1}
---
kind: KubernetesRuntime
metadata: {name: prod}
spec: {existing: {cluster: prod-1}}
---
kind: ObjectStorageBucket
metadata: {name: assets}
spec: {account: AwsAccount/main, versioning: true}
---
kind: RelationalDatabase
metadata: {name: db}
spec: {account: AwsAccount/main, engine: postgres, version: "16.4", sizeClass: db.t4g.micro}
---
kind: Workload
metadata: {name: web}
spec:
  runtime: KubernetesRuntime/prod
  namespace: shop
  manifests: |
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec:
          containers:
            - name: web
              image: ghcr.io/example/shop:1
              args: ["--database=postgres://${RelationalDatabase/db.host}:${RelationalDatabase/db.port}/db"]
  env:
    - {name: BUCKET, valueFrom: {object: ObjectStorageBucket/assets, output: name}}
    - {name: DB_PASSWORD, valueFrom: {object: RelationalDatabase/db, output: password}}
"#;

#[test]
fn the_tests_apply_the_readmes_worked_example_word_for_word() {
    let readme = include_str!("../../../README.md");
    assert!(
        readme.contains(&format!("```yaml\n{APP}```")),
        "README.md's worked example and cli/tests/cli/workflow.rs's APP differ"
    );
}

/// Completes every task the control plane queues, as a well-behaved agent would, until
/// `stop` is set.
async fn play_agent(
    url: String,
    cp: String,
    token: String,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let http = reqwest::Client::new();
    while !*stop.borrow() {
        let Ok(resp) = http
            .post(format!("{url}/cp/{cp}/agent/v1/tasks/lease"))
            .bearer_auth(&token)
            .json(&json!({"agent": "test-agent", "max": 10, "waitSeconds": 1}))
            .send()
            .await
        else {
            continue;
        };
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        for t in body["tasks"].as_array().into_iter().flatten() {
            let outputs = match t["objectKind"].as_str() {
                Some("ObjectStorageBucket") => {
                    json!({"name": "assets-1", "arn": "arn:aws:s3:::assets-1", "region": "eu-west-1", "endpoint": "https://s3.eu-west-1.amazonaws.com"})
                }
                Some("RelationalDatabase") => {
                    json!({"host": "db.example", "port": 5432, "database": "db", "username": "app", "engine": "postgres", "password": {"secretRef": {"provider": "aws-secretsmanager", "arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db"}}})
                }
                Some("KubernetesRuntime") => {
                    json!({"endpoint": "https://kubernetes.default.svc", "clusterName": "prod-1"})
                }
                _ => json!({}),
            };
            let result = if t["operation"] == "delete" {
                json!({"succeeded": {}})
            } else {
                json!({"succeeded": {"outputs": outputs}})
            };
            let _ = http
                .post(format!(
                    "{url}/cp/{cp}/agent/v1/tasks/{}/report",
                    t["id"].as_str().unwrap_or_default()
                ))
                .bearer_auth(&token)
                .json(&json!({"leaseId": t["leaseId"], "result": result}))
                .send()
                .await;
        }
    }
}

#[tokio::test]
async fn a_pipeline_with_a_token_manages_the_organisation_and_applies_the_example_app() {
    let app = spawn_app().await;
    let token = owner_with_token(&app, "owner@example.test", "acme").await;
    let out = run(&app, &["login", "--url", &app.url, "--token", &token]).await;
    assert!(
        out.ok()
            .contains("as owner@example.test (organisation acme)"),
        "{out:?}"
    );

    // Management.
    let orgs = run(&app, &["org", "list", "-o", "json"]).await.json();
    assert_eq!(orgs[0]["organization"]["slug"], "acme");
    assert_eq!(orgs[0]["role"], "OWNER");
    let table = run(&app, &["org", "list"]).await;
    assert_eq!(table.ok(), "SLUG  NAME  ROLE\nacme  acme  OWNER\n");
    let yaml = run(&app, &["org", "list", "-o", "yaml"]).await;
    let text = yaml.ok();
    let masked: String = text
        .lines()
        .map(|l| match l.split_once(": ") {
            Some((k, _)) if k.trim() == "id" || k.trim() == "createdAt" => format!("{k}: *\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    assert_eq!(
        masked,
        "- organization:\n    createdAt: *\n    id: *\n    name: acme\n    slug: acme\n  role: OWNER\n"
    );
    // Tokens act within their organisation but cannot invite or mint tokens: refused by the
    // server, exit 3 with its code (the browser or a person's session does those).
    let out = run(
        &app,
        &["member", "invite", "bob@example.test", "--role", "viewer"],
    )
    .await;
    assert!(
        out.fails(3)
            .contains("FORBIDDEN: API tokens cannot invite members"),
        "{out:?}"
    );
    let invitations = run(&app, &["invitation", "list", "-o", "yaml"]).await;
    assert_eq!(invitations.ok(), "[]\n");
    let members = run(&app, &["member", "list"]).await;
    assert!(
        members.ok().contains("owner@example.test") && members.stdout.contains("OWNER"),
        "{members:?}"
    );
    let out = run(&app, &["token", "create", "another", "--role", "viewer"]).await;
    assert!(out.fails(3).contains("FORBIDDEN"), "{out:?}");
    let tokens = run(&app, &["token", "list", "-o", "json"]).await.json();
    assert_eq!(tokens.as_array().map(Vec::len), Some(1), "{tokens}");

    // Nothing to act on yet: a usage error saying how to choose.
    let out = run(&app, &["get"]).await;
    assert!(out.fails(2).contains("no control plane chosen"), "{out:?}");

    // A control plane, waited for until Ready; a second one is over the free plan's quota.
    let cp = run(&app, &["cp", "create", "prod", "--wait=90s", "-o", "json"])
        .await
        .json();
    assert_eq!(cp["status"], "READY", "{cp}");
    let cp_id = cp["id"].as_str().expect("id").to_owned();
    let out = run(&app, &["cp", "create", "second"]).await;
    let line = out.fails(1);
    assert!(
        line.contains("QUOTA_EXCEEDED") && line.contains("upgrade to the team plan"),
        "{line}"
    );
    let out = run(&app, &["use", "acme", "prod"]).await;
    assert!(out.ok().contains("control plane prod"), "{out:?}");

    // Plan, then apply with a wait that cannot be met without an agent: exit 1, live progress.
    let dir = app.config_dir.parent().expect("dir").join("work");
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("app.yaml");
    std::fs::write(&file, APP).expect("write");
    let file = file.to_str().expect("path");
    let plan = run(&app, &["plan", "-f", file]).await;
    let text = plan.ok();
    assert!(text.contains("+ AwsAccount/main  create"), "{text}");
    assert!(text.contains("+ Workload/web  create"), "{text}");
    assert!(
        text.contains("Plan: 5 to create, 0 to update, 0 to delete, 0 unchanged."),
        "{text}"
    );
    let json_plan = run(&app, &["plan", "-f", file, "-o", "json"]).await.json();
    assert_eq!(json_plan["applied"], false);
    assert_eq!(json_plan["summary"]["create"], 5);
    let objects = run(&app, &["get", "-o", "json"]).await.json();
    assert_eq!(objects, json!([]), "a plan writes nothing");

    let out = run(&app, &["apply", "-f", file, "--wait=3s"]).await;
    let line = out.fails(1).to_owned();
    assert!(line.contains("timed out after 3 s waiting for"), "{line}");
    assert!(out.stdout.contains("Applied: 5 to create"), "{out:?}");
    assert!(
        out.stdout.contains("AwsAccount/main  "),
        "progress lines: {out:?}"
    );

    // The test plays the agent: now `wait` and a re-apply with --wait succeed.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn(play_agent(
        app.url.clone(),
        cp_id.clone(),
        token.clone(),
        stop_rx,
    ));
    let out = run(&app, &["wait", "AwsAccount/main", "--timeout", "60s"]).await;
    assert!(out.ok().contains("Done: everything is Ready."), "{out:?}");
    assert!(!out.stderr.contains("no live updates"), "{out:?}");
    // `watch` follows the same subscription until its timeout.
    let watch = run(&app, &["watch", "--timeout", "2s", "-o", "json"]).await;
    assert_eq!(watch.code, 0, "{watch:?}");
    let out = run(&app, &["apply", "-f", file, "--wait=90s"]).await;
    let text = out.ok();
    assert!(text.contains("5 unchanged"), "{text}");
    assert!(text.contains("Done: everything is Ready."), "{text}");

    let table = run(&app, &["get"]).await;
    let text = table.ok();
    assert!(text.starts_with("KIND"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.contains("READY")).count(),
        5,
        "{text}"
    );
    // Every output format, pinned (snapshots/).
    crate::snapshots::outputs(&app, APP, &dir).await;
    let db = run(&app, &["get", "RelationalDatabase/db", "-o", "json"])
        .await
        .json();
    assert_eq!(db["phase"], "READY");
    // Secrets only as references.
    assert!(
        db["outputs"]["password"]["secretRef"]["arn"].is_string(),
        "{db}"
    );
    let described = run(&app, &["describe", "Workload/web"]).await;
    let text = described.ok();
    for part in [
        "Object:       Workload/web",
        "Phase:        READY",
        "Dependencies: ",
        "RelationalDatabase/db (READY)",
        "Spec:",
        "Outputs:",
        "Conditions:",
        "Events:",
    ] {
        assert!(text.contains(part), "{part} missing from {text}");
    }
    let described = run(&app, &["describe", "Workload", "web", "-o", "yaml"]).await;
    assert!(described.ok().contains("kind: Workload\n"), "{described:?}");
    let events = run(&app, &["events", "AwsAccount/main", "-o", "json"])
        .await
        .json();
    assert!(events.as_array().is_some_and(|e| !e.is_empty()), "{events}");
    let dot = run(&app, &["graph", "--dot"]).await;
    assert!(
        dot.ok()
            .contains("\"Workload/web\" -> \"RelationalDatabase/db\";"),
        "{dot:?}"
    );
    let tree = run(&app, &["graph"]).await;
    assert!(tree.ok().starts_with("Workload/web (READY)\n"), "{tree:?}");

    // Retry is for FAILED objects only: one line with the code, exit 1. Refresh has the
    // agent check the workload again; --wait follows it back to READY.
    let out = run(&app, &["retry", "Workload/web"]).await;
    assert!(
        out.fails(1)
            .contains("CONFLICT: only a FAILED object can be retried; Workload/web is READY"),
        "{out:?}"
    );
    let out = run(&app, &["refresh", "Workload/web", "--wait=60s"]).await;
    let text = out.ok();
    // A workload is checked against its cluster (a dry run compared with the live objects).
    assert!(
        text.starts_with(
            "Workload/web: checking it against the cloud (refresh requested by token:"
        ),
        "{out:?}"
    );
    assert!(text.contains("Workload/web  READY"), "{out:?}");
    let out = run(&app, &["refresh", "Workload/nope"]).await;
    assert!(out.fails(1).contains("NOT_FOUND"), "{out:?}");

    // Agents.
    let reg = run(&app, &["agent", "token"]).await;
    assert!(
        reg.ok().contains(&format!(
            "qleet-agent --url '{}/cp/{cp_id}' --token 'qleet_",
            app.url
        )),
        "{reg:?}"
    );
    let agents = run(&app, &["agent", "list", "-o", "json"]).await.json();
    assert_eq!(agents, json!([]));

    // Delete with --wait: the workload goes (the agent cleans up).
    let out = run(&app, &["delete", "Workload/web", "--wait=60s"]).await;
    assert!(out.ok().contains("Workload/web  DELETED"), "{out:?}");
    let out = run(&app, &["get", "Workload/web"]).await;
    assert!(out.fails(1).contains("NOT_FOUND"), "{out:?}");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;

    // The audit log, and the control plane's life cycle with --wait.
    let audit = run(&app, &["audit", "-o", "json"]).await.json();
    let actions: Vec<&str> = audit
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.iter().any(|a| a.starts_with("control_plane")),
        "{actions:?}"
    );
    // The control plane's own trail: the workload's life, with the token as its actor.
    let trail = run(&app, &["audit", "--object", "Workload/web", "-o", "json"])
        .await
        .json();
    let web: Vec<(&str, &str)> = trail
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["action"].as_str()?, e["actor"].as_str()?)))
        .collect();
    for action in ["object.create", "object.refresh", "object.delete"] {
        assert!(
            web.iter()
                .any(|(a, actor)| *a == action && actor.starts_with("token:")),
            "{action}: {web:?}"
        );
    }
    assert!(web.iter().any(|(a, _)| *a == "agent.report"), "{web:?}");
    let table = run(&app, &["audit", "--trail"]).await;
    assert!(table.ok().contains("object.delete"), "{table:?}");
    let out = run(&app, &["audit", "--jsonl"]).await;
    let lines: Vec<Value> = out
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(lines.len() > web.len(), "{out:?}");
    assert!(
        lines
            .windows(2)
            .all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64()),
        "oldest first"
    );
    let out = run(&app, &["audit", "--jsonl", "--object", "Workload/web"]).await;
    assert_eq!(out.ok().lines().count(), web.len(), "{out:?}");
    let out = run(&app, &["audit", "--object", "web"]).await;
    assert!(out.fails(2).contains("KIND/NAME"), "{out:?}");
    let cp = run(&app, &["cp", "suspend", "prod", "--wait=60s", "-o", "json"])
        .await
        .json();
    assert_eq!(cp["status"], "SUSPENDED");
    let out = run(&app, &["get"]).await;
    assert!(out.fails(1).contains("CONTROL_PLANE_SUSPENDED"), "{out:?}");
    let cp = run(&app, &["cp", "resume", "prod", "--wait=90s", "-o", "json"])
        .await
        .json();
    assert_eq!(cp["status"], "READY");
    let out = run(
        &app,
        &["cp", "delete", "prod", "--confirm", "prod", "--wait=60s"],
    )
    .await;
    assert!(out.ok().contains("DELETED"), "{out:?}");

    // CI: the environment instead of a stored login.
    let out = run_env(
        &app.config_dir.join("elsewhere"),
        &[
            ("QLEET_URL", &app.url),
            ("QLEET_TOKEN", &token),
            ("QLEET_ORG", "acme"),
        ],
        &["cp", "list", "-o", "json"],
    )
    .await;
    assert_eq!(out.json(), json!([]));
}
