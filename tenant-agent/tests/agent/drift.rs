//! Drift against moto, with the agent binary: resources deleted or altered behind Qleet's back
//! are found on the next observation (here asked for with `refresh`), shown as a `Drifted`
//! condition, and put back under `Remediate` or left as they are under `Report`.

use std::time::Duration;

use qleet_test_support::cp::Cp;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::journey::{agent_command, terminate};
use crate::support::Moto;

const APP: &str = r#"
kind: AwsAccount
metadata: {name: main}
spec: {accountId: "123456789012", roleArn: "arn:aws:iam::123456789012:role/qleet", defaultRegion: eu-west-1}
---
kind: ObjectStorageBucket
metadata: {name: assets}
spec: {account: AwsAccount/main, tags: {team: shop}}
---
kind: RelationalDatabase
metadata: {name: db}
spec: {account: AwsAccount/main, engine: postgres, version: "16.4", sizeClass: db.t4g.micro, driftPolicy: Report}
"#;

async fn refresh(cp: &Cp, kind: &str, name: &str) {
    cp.gql_ok(
        "mutation($k: String!, $n: String!) { refresh(kind: $k, name: $n) { phase } }",
        json!({ "k": kind, "n": name }),
    )
    .await;
}

/// How many of the object's events have `reason`.
fn count(o: &Value, reason: &str) -> usize {
    o["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["reason"] == reason)
        .count()
}

/// Waits until the object's `Drifted` condition has `reason`, it is READY and it has at least
/// `remediated` DriftRemediated events; answers it.
async fn settles(cp: &Cp, kind: &str, name: &str, reason: &str, remediated: usize) -> Value {
    for _ in 0..600 {
        let o = cp.object(kind, name).await;
        let c = o["conditions"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["type"] == "Drifted"))
            .cloned()
            .unwrap_or_default();
        if c["reason"] == reason
            && o["phase"] == "READY"
            && count(&o, "DriftRemediated") >= remediated
        {
            return o;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{kind}/{name} never {reason}: {:#}",
        cp.object(kind, name).await
    );
}

#[tokio::test]
async fn drift_behind_qleets_back_is_put_back_or_reported() {
    let cp = Cp::start().await;
    let moto = Moto::start().await;
    let sdk = moto.sdk("test", "test").await;
    let dir = std::env::temp_dir().join(format!("qleet-agent-drift-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let token = cp.registration_token().await;
    let mut agent = agent_command(&cp.url, &moto.url, &dir.join("agent.json"))
        .args(["--token", &token])
        .spawn()
        .expect("start qleet-agent");
    cp.apply_ok(APP).await;
    cp.wait_ready(3).await;
    let bucket = cp.object("ObjectStorageBucket", "assets").await["outputs"]["name"]
        .as_str()
        .expect("bucket")
        .to_owned();
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );

    // Nothing changed: an observation finds it in sync.
    refresh(&cp, "ObjectStorageBucket", "assets").await;
    settles(&cp, "ObjectStorageBucket", "assets", "InSync", 0).await;

    // The bucket deleted behind Qleet's back (Remediate, the default): made again.
    s3.delete_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("delete");
    assert!(!moto.bucket_names().await.contains(&bucket));
    refresh(&cp, "ObjectStorageBucket", "assets").await;
    let o = settles(&cp, "ObjectStorageBucket", "assets", "InSync", 1).await;
    assert!(moto.bucket_names().await.contains(&bucket), "made again");
    let events = o["events"].to_string();
    assert!(
        events.contains("DriftDetected") && events.contains("DriftRemediated"),
        "{events}"
    );
    assert!(events.contains("deleted outside Qleet"), "{events}");

    // A tag changed behind its back (Qleet's own left in place): put back.
    let mut tampered: Vec<aws_sdk_s3::types::Tag> = s3
        .get_bucket_tagging()
        .bucket(&bucket)
        .send()
        .await
        .expect("tags")
        .tag_set()
        .iter()
        .filter(|t| t.key() != "team")
        .cloned()
        .collect();
    tampered.push(
        aws_sdk_s3::types::Tag::builder()
            .key("team")
            .value("intruder")
            .build()
            .expect("tag"),
    );
    s3.put_bucket_tagging()
        .bucket(&bucket)
        .tagging(
            aws_sdk_s3::types::Tagging::builder()
                .set_tag_set(Some(tampered))
                .build()
                .expect("tagging"),
        )
        .send()
        .await
        .expect("tag");
    refresh(&cp, "ObjectStorageBucket", "assets").await;
    settles(&cp, "ObjectStorageBucket", "assets", "InSync", 2).await;
    let tags = s3
        .get_bucket_tagging()
        .bucket(&bucket)
        .send()
        .await
        .expect("tags");
    let team: Vec<&str> = tags
        .tag_set()
        .iter()
        .filter(|t| t.key() == "team")
        .map(|t| t.value())
        .collect();
    assert_eq!(team, ["shop"]);

    // The database's backups changed behind its back (Report): shown, left as it is.
    let rds = aws_sdk_rds::Client::new(&sdk);
    let id =
        cp.object("RelationalDatabase", "db").await["rendered"]["database"]["instanceIdentifier"]
            .as_str()
            .expect("id")
            .to_owned();
    rds.modify_db_instance()
        .db_instance_identifier(&id)
        .backup_retention_period(1)
        .apply_immediately(true)
        .send()
        .await
        .expect("modify");
    refresh(&cp, "RelationalDatabase", "db").await;
    let o = settles(&cp, "RelationalDatabase", "db", "Drifted", 0).await;
    let c = o["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == "Drifted"))
        .cloned()
        .expect("Drifted");
    assert_eq!(c["status"], true);
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.backupRetentionDays is 1 (expected 7)"),
        "{c}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let retention = rds
        .describe_db_instances()
        .db_instance_identifier(&id)
        .send()
        .await
        .expect("describe")
        .db_instances()[0]
        .backup_retention_period();
    assert_eq!(retention, Some(1), "Report leaves it as it is");

    assert!(terminate(&mut agent).await.success());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
