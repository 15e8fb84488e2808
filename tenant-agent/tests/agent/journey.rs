//! The `qleet-agent` binary against a real control plane (standalone, in process, on its own
//! database) and moto: registration once, its identity kept private, the way through an HTTP
//! proxy, tasks of an agent killed half-way finished by another without duplicates, and resumed
//! at once by the same agent started again. (The whole journey through the management plane is
//! in `managed.rs`.)

use std::time::Duration;

use qleet_test_support::cp::Cp;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{Moto, Recorded, Recorder};

pub const APP: &str = r#"
kind: AwsAccount
metadata: {name: main}
spec: {accountId: "123456789012", roleArn: "arn:aws:iam::123456789012:role/qleet", defaultRegion: eu-west-1}
---
kind: KubernetesRuntime
metadata: {name: prod}
spec: {existing: {cluster: prod-1}}
---
kind: ObjectStorageBucket
metadata: {name: assets}
spec: {account: AwsAccount/main}
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
              image: shop:1
              args: ["--database=postgres://${RelationalDatabase/db.host}:${RelationalDatabase/db.port}/db"]
  env:
    - {name: BUCKET, valueFrom: {object: ObjectStorageBucket/assets, output: name}}
    - {name: DB_PASSWORD, valueFrom: {object: RelationalDatabase/db, output: password}}
"#;

const AWS_APP: &str = r#"
kind: AwsAccount
metadata: {name: main}
spec: {accountId: "123456789012", roleArn: "arn:aws:iam::123456789012:role/qleet", defaultRegion: eu-west-1}
---
kind: ObjectStorageBucket
metadata: {name: assets}
spec: {account: AwsAccount/main}
---
kind: RelationalDatabase
metadata: {name: db}
spec: {account: AwsAccount/main, engine: postgres, version: "16.4", sizeClass: db.t4g.micro}
"#;

/// The `qleet-agent` binary for the control plane at `url`, its AWS calls going to
/// `aws_endpoint` (moto, or a proxy in front of it).
pub fn agent_command(
    url: &str,
    aws_endpoint: &str,
    state: &std::path::Path,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_qleet-agent"));
    cmd.args(["--url", url, "--state-file"])
        .arg(state)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_ENDPOINT_URL", aws_endpoint)
        .env("AWS_ACCESS_KEY_ID", "ambient")
        .env("AWS_SECRET_ACCESS_KEY", "ambient")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("QLEET_AGENT_WAIT_SECONDS", "2")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

pub async fn terminate(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    let pid = child.id().expect("running");
    let sent = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .expect("kill");
    assert!(sent.success());
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("stops within the grace period")
        .expect("exit status")
}

#[tokio::test]
async fn the_agent_binary_registers_once_keeps_its_identity_private_and_does_the_aws_work() {
    let cp = Cp::start().await;
    let moto = Moto::start().await;
    let dir = std::env::temp_dir().join(format!("qleet-agent-bin-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let state = dir.join("agent.json");
    let token = cp.registration_token().await;

    let mut agent = agent_command(&cp.url, &moto.url, &state)
        .args(["--token", &token])
        .spawn()
        .expect("start qleet-agent");
    cp.apply_ok(AWS_APP).await;
    cp.wait_ready(3).await;
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&state).expect("state file").permissions(),
    ) & 0o777;
    assert_eq!(mode, 0o600);
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(&state).expect("read")).expect("json");
    assert!(
        saved["credential"]
            .as_str()
            .expect("credential")
            .starts_with("qleet_agent_")
    );
    assert!(
        terminate(&mut agent).await.success(),
        "SIGTERM is a clean stop"
    );

    // The agent shows up with its version.
    let agents = cp.gql_ok("{ agents { name version } }", json!({})).await;
    assert_eq!(agents["agents"][0]["version"], qleet_agent::VERSION);

    // Later runs use the state file; the token is not needed (nor usable) again. This one
    // goes through an HTTP proxy (the control plane here is plain http, so HTTP_PROXY; HTTPS
    // URLs take HTTPS_PROXY the same way).
    let proxy = Recorder::start(&cp.url).await;
    let mut again = agent_command(&cp.url, &moto.url, &state)
        .env("HTTP_PROXY", &proxy.url)
        .spawn()
        .expect("restart");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(again.try_wait().expect("status").is_none(), "still running");
    assert!(terminate(&mut again).await.success());
    let through_proxy: Vec<String> = proxy.requests().into_iter().map(|r| r.path).collect();
    assert!(
        through_proxy.contains(&"/agent/v1/heartbeat".to_owned())
            && through_proxy.contains(&"/agent/v1/tasks/lease".to_owned()),
        "{through_proxy:?}"
    );

    let other_state = dir.join("second.json");
    let reused = agent_command(&cp.url, &moto.url, &other_state)
        .args(["--token", &token])
        .output()
        .await
        .expect("run");
    assert!(!reused.status.success());
    let stderr = String::from_utf8_lossy(&reused.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("qleet-agent: registration failed"),
        "{stderr}"
    );
    assert!(!other_state.exists());

    // A state file others may read is refused.
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let open = agent_command(&cp.url, &moto.url, &state)
        .output()
        .await
        .expect("run");
    assert_eq!(open.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&open.stderr).contains("chmod 600"));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Moto calls that make something: a bucket (`PUT /bucket`, no query) or a database instance.
pub fn creates(r: &Recorded) -> bool {
    let bucket = r.method == "PUT" && r.query.is_empty() && !r.path.trim_matches('/').contains('/');
    bucket || r.action().as_deref() == Some("CreateDBInstance")
}

/// Waits (60 s at most) until the bucket's and the database's creates have reached the black
/// hole (which never answers them), then kills `agent` with SIGKILL: it gives no lease back.
async fn kill_once_both_creates_hang(black_hole: &Recorder, agent: &mut tokio::process::Child) {
    let mut made = 0;
    for _ in 0..600 {
        made = black_hole.requests().iter().filter(|r| creates(r)).count();
        if made == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(made, 2, "{:#?}", black_hole.requests());
    agent.start_kill().expect("kill");
    agent.wait().await.expect("killed");
}

#[tokio::test]
async fn tasks_of_an_agent_killed_mid_way_are_finished_by_another_without_duplicates() {
    let cp = Cp::start().await;
    let moto = Moto::start().await;
    let dir = std::env::temp_dir().join(format!("qleet-agent-kill-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");

    // The first agent's creates reach moto, but their answers never come back: the bucket
    // and the database exist, and the agent is still waiting when it is killed (SIGKILL, so
    // it gives no lease back).
    let black_hole = Recorder::holding(&moto.url, creates).await;
    let token = cp.registration_token().await;
    let mut first = agent_command(&cp.url, &black_hole.url, &dir.join("first.json"))
        .args(["--token", &token, "--lease-seconds", "10"])
        .spawn()
        .expect("start the first agent");
    cp.apply_ok(AWS_APP).await;
    kill_once_both_creates_hang(&black_hole, &mut first).await;
    let phases = cp.phases().await;
    assert_eq!(
        phases["ObjectStorageBucket/assets"], "PROVISIONING",
        "{phases:?}"
    );

    // A second agent gets the tasks once the dead one's leases expire, finds what the first
    // made by its deterministic names and adopts it.
    let token = cp.registration_token().await;
    let mut second = agent_command(&cp.url, &moto.url, &dir.join("second.json"))
        .args(["--token", &token])
        .spawn()
        .expect("start the second agent");
    cp.wait_ready(3).await;
    assert!(terminate(&mut second).await.success());

    let sdk = moto.sdk("test", "test").await;
    let bucket = cp.object("ObjectStorageBucket", "assets").await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    let buckets: Vec<String> = s3
        .list_buckets()
        .send()
        .await
        .expect("buckets")
        .buckets()
        .iter()
        .filter_map(|b| b.name().map(str::to_owned))
        .collect();
    assert_eq!(
        buckets,
        vec![bucket["outputs"]["name"].as_str().expect("name").to_owned()]
    );
    let tags = s3
        .get_bucket_tagging()
        .bucket(&buckets[0])
        .send()
        .await
        .expect("the adopted bucket is tagged now");
    assert!(
        tags.tag_set()
            .iter()
            .any(|t| t.key() == "qleet:object-id" && Some(t.value()) == bucket["id"].as_str())
    );
    let instances = aws_sdk_rds::Client::new(&sdk)
        .describe_db_instances()
        .send()
        .await
        .expect("rds");
    assert_eq!(instances.db_instances().len(), 1);
    let secrets = aws_sdk_secretsmanager::Client::new(&sdk)
        .list_secrets()
        .send()
        .await
        .expect("secrets");
    assert_eq!(
        secrets.secret_list().len(),
        1,
        "one password, made once and reused"
    );
    let db = cp.object("RelationalDatabase", "db").await;
    assert_eq!(
        db["outputs"]["password"]["secretRef"]["arn"].as_str(),
        secrets.secret_list()[0].arn()
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test]
async fn an_agent_killed_mid_task_and_started_again_resumes_its_own_leases_at_once() {
    let cp = Cp::start().await;
    let moto = Moto::start().await;
    let dir = std::env::temp_dir().join(format!("qleet-agent-resume-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let state = dir.join("agent.json");

    // Its creates reach moto but their answers never come back, and its leases last the
    // longest an agent may ask (600 s): only leases handed back to it at once, not expired
    // ones, can let the work finish inside this test's wait.
    let black_hole = Recorder::holding(&moto.url, creates).await;
    let token = cp.registration_token().await;
    let mut first = agent_command(&cp.url, &black_hole.url, &state)
        .args(["--token", &token, "--lease-seconds", "600"])
        .spawn()
        .expect("start the agent");
    cp.apply_ok(AWS_APP).await;
    kill_once_both_creates_hang(&black_hole, &mut first).await;
    assert_eq!(
        cp.sql_count("select count(*) from agent_tasks where state = 'leased' and lease_expires_at > now() + interval '500 seconds'")
            .await,
        2,
        "both tasks are still leased to the dead process"
    );

    // The same agent (its state file, no new registration), started again.
    let mut again = agent_command(&cp.url, &moto.url, &state)
        .args(["--lease-seconds", "600"])
        .spawn()
        .expect("start the agent again");
    cp.wait_ready(3).await;
    assert!(terminate(&mut again).await.success());
    assert_eq!(cp.agent_ids().await.len(), 1, "one agent, registered once");

    // What the first process had started is adopted, not made twice.
    assert_eq!(moto.bucket_names().await.len(), 1);
    let sdk = moto.sdk("test", "test").await;
    let instances = aws_sdk_rds::Client::new(&sdk)
        .describe_db_instances()
        .send()
        .await
        .expect("rds");
    assert_eq!(instances.db_instances().len(), 1);
}
