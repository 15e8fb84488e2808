//! The agent against a real control plane (standalone, in process, on its own database): it
//! registers with a one-time token, leases the example app's tasks, does them in moto and on
//! the Kubernetes mock, and the control plane wires the outputs into the workload. Then the
//! real `qleet-agent` binary does the same for an app's AWS part.

use std::collections::BTreeMap;
use std::time::Duration;

use qleet::config::{ControlPlaneAuth, ControlPlaneConfig, LogFormat};
use qleet_agent::agent::{self, Settings};
use qleet_agent::client::Client;
use qleet_agent::k8s::Clusters;
use qleet_agent::task::Context;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::kube::ApiServer;
use crate::support::{Moto, Recorder, fresh_database};

const ADMIN: &str = "test-admin-token-0123456789abcdef0123456789";

/// A standalone control plane in this process.
struct Cp {
    url: String,
    http: reqwest::Client,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Cp {
    async fn start() -> Cp {
        let db = fresh_database().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let config = ControlPlaneConfig {
            listen: listener.local_addr().expect("addr"),
            database_url: SecretString::from(db),
            id: Uuid::new_v4(),
            auth: ControlPlaneAuth::Standalone {
                admin_token_hash: qleet::identity::hash_secret(ADMIN),
            },
            log_format: LogFormat::Pretty,
            crash_at: None,
            poll_interval: None,
        };
        let app = qleet::control_plane::Application::build(config, listener)
            .await
            .expect("control plane");
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        Cp {
            url,
            http: reqwest::Client::new(),
            _shutdown: tx,
        }
    }

    async fn gql(&self, query: &str, variables: Value) -> Value {
        let body: Value = self
            .http
            .post(format!("{}/graphql", self.url))
            .bearer_auth(ADMIN)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("graphql")
            .json()
            .await
            .expect("json");
        assert!(body.get("errors").is_none(), "{body}");
        body["data"].clone()
    }

    async fn registration_token(&self) -> String {
        self.gql(
            "mutation { createAgentRegistration(ttlMinutes: 60) { token } }",
            json!({}),
        )
        .await["createAgentRegistration"]["token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    async fn apply(&self, yaml: &str) {
        self.gql(
            "mutation($y: String!) { apply(yaml: $y, dryRun: false, prune: false) { applied } }",
            json!({ "y": yaml }),
        )
        .await;
    }

    async fn object(&self, kind: &str, name: &str) -> Value {
        self.gql(
            "query($k: String!, $n: String!) { object(kind: $k, name: $n) { id phase message outputs rendered events { type reason message } } }",
            json!({ "k": kind, "n": name }),
        )
        .await["object"]
            .clone()
    }

    async fn phases(&self) -> BTreeMap<String, String> {
        let data = self.gql("{ objects { kind name phase } }", json!({})).await;
        data["objects"]
            .as_array()
            .expect("objects")
            .iter()
            .map(|o| {
                (
                    format!(
                        "{}/{}",
                        o["kind"].as_str().unwrap_or_default(),
                        o["name"].as_str().unwrap_or_default()
                    ),
                    o["phase"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Waits (90 s at most) until every object is READY.
    async fn wait_ready(&self, n: usize) -> BTreeMap<String, String> {
        for _ in 0..900 {
            let p = self.phases().await;
            if p.len() == n && p.values().all(|v| v == "READY") {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut detail = Vec::new();
        for (key, _) in self.phases().await {
            let (kind, name) = key.split_once('/').unwrap_or_default();
            detail.push(self.object(kind, name).await);
        }
        panic!("never all READY: {detail:#?}");
    }
}

const APP: &str = r#"
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

#[tokio::test]
async fn a_registered_agent_completes_the_example_app_in_moto_and_on_the_cluster() {
    let cp = Cp::start().await;
    let moto = Moto::start().await;
    let token = cp.registration_token().await;
    let base = url::Url::parse(&cp.url).expect("url");
    let registered = Client::new(base.clone(), None)
        .expect("client")
        .register(&SecretString::from(token), "test-agent")
        .await
        .expect("register");
    let client =
        Client::new(base, Some(SecretString::from(registered.credential))).expect("client");
    let (kube, api) = ApiServer::start();
    let ctx = Context {
        aws: moto.agent_aws(&moto.url, "ambient", "ambient").await,
        clusters: Clusters::from_clients([(
            "prod-1".to_owned(),
            kube,
            "https://k8s.test".to_owned(),
        )]),
        helm: "/nonexistent/helm".into(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(agent::run(
        client,
        ctx,
        Settings {
            concurrency: 4,
            lease_seconds: 30,
            wait_seconds: 2,
            shutdown_grace: Duration::from_secs(5),
        },
        async {
            let _ = stopped.await;
        },
    ));

    cp.apply(APP).await;
    cp.wait_ready(5).await;

    // The cloud side, as moto has it.
    let sdk = moto.sdk("test", "test").await;
    let bucket = cp.object("ObjectStorageBucket", "assets").await;
    let bucket_name = bucket["outputs"]["name"].as_str().expect("name").to_owned();
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    let tags = s3
        .get_bucket_tagging()
        .bucket(&bucket_name)
        .send()
        .await
        .expect("tags");
    assert!(
        tags.tag_set()
            .iter()
            .any(|t| t.key() == "qleet:object" && t.value() == "ObjectStorageBucket/assets")
    );
    let pab = s3
        .get_public_access_block()
        .bucket(&bucket_name)
        .send()
        .await
        .expect("pab");
    assert_eq!(
        pab.public_access_block_configuration()
            .and_then(|c| c.block_public_acls()),
        Some(true)
    );
    let db = cp.object("RelationalDatabase", "db").await;
    let secret_arn = db["outputs"]["password"]["secretRef"]["arn"]
        .as_str()
        .expect("secret arn")
        .to_owned();
    let password = aws_sdk_secretsmanager::Client::new(&sdk)
        .get_secret_value()
        .secret_id(&secret_arn)
        .send()
        .await
        .expect("secret")
        .secret_string()
        .expect("text")
        .to_owned();
    assert!(
        !db.to_string().contains(&password),
        "Qleet never holds the password"
    );
    let rds = aws_sdk_rds::Client::new(&sdk);
    assert_eq!(
        rds.describe_db_instances()
            .send()
            .await
            .expect("rds")
            .db_instances()
            .len(),
        1
    );

    // The workload, as the API server got it: outputs wired in, the password from a Secret
    // the agent filled itself.
    let dep = api
        .get("/apis/apps/v1/namespaces/shop/deployments/web")
        .expect("deployment applied");
    let container = &dep["spec"]["template"]["spec"]["containers"][0];
    let host = db["outputs"]["host"].as_str().expect("host");
    assert_eq!(
        container["args"][0],
        format!("--database=postgres://{host}:5432/db")
    );
    let env = container["env"].as_array().expect("env");
    assert!(
        env.contains(&json!({"name": "BUCKET", "value": bucket_name})),
        "{env:?}"
    );
    let secret = api
        .get("/api/v1/namespaces/shop/secrets/web-qleet-secrets")
        .expect("secret applied");
    use base64::Engine as _;
    assert_eq!(
        secret["data"]["DB_PASSWORD"],
        base64::engine::general_purpose::STANDARD.encode(&password)
    );

    let _ = stop.send(());
    running
        .await
        .expect("agent task")
        .expect("the agent stops cleanly");
}

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

fn agent_command(cp: &Cp, moto: &Moto, state: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_qleet-agent"));
    cmd.args(["--url", &cp.url, "--state-file"])
        .arg(state)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_ENDPOINT_URL", &moto.url)
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

async fn terminate(child: &mut tokio::process::Child) -> std::process::ExitStatus {
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

    let mut agent = agent_command(&cp, &moto, &state)
        .args(["--token", &token])
        .spawn()
        .expect("start qleet-agent");
    cp.apply(AWS_APP).await;
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
    let agents = cp.gql("{ agents { name version } }", json!({})).await;
    assert_eq!(agents["agents"][0]["version"], qleet_agent::VERSION);

    // Later runs use the state file; the token is not needed (nor usable) again. This one
    // goes through an HTTP proxy (the control plane here is plain http, so HTTP_PROXY; HTTPS
    // URLs take HTTPS_PROXY the same way).
    let proxy = Recorder::start(&cp.url).await;
    let mut again = agent_command(&cp, &moto, &state)
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
    let reused = agent_command(&cp, &moto, &other_state)
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
    let open = agent_command(&cp, &moto, &state)
        .output()
        .await
        .expect("run");
    assert_eq!(open.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&open.stderr).contains("chmod 600"));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
