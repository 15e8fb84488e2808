//! The whole journey as a customer makes it, every part a real process: `qleet dev` (the
//! management plane, running control planes with the process driver), a person signed in
//! through its sign-in, an organisation and a control plane, a registration token, the
//! `qleet-agent` binary dialling in through the gateway, moto as the customer's AWS account and
//! a loopback Kubernetes API server (the one stand-in: no real cluster can run here). Then the
//! control plane is stopped under the agent and started again, and the agent carries on.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::journey::{APP, agent_command, terminate};
use crate::support::{Moto, fresh_database};
use qleet_test_support::kube::ApiServer;

/// The `qleet` binary next to this test's own (`cargo test --workspace` builds it; after
/// changing the backend, `cargo test -p qleet-agent` alone does not rebuild it).
fn qleet_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("QLEET_BINARY") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join("qleet");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p qleet --bin qleet` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// `qleet dev` on a database of its own, with someone signed in.
pub struct Qleet {
    pub url: String,
    http: reqwest::Client,
    cookie: String,
    pub child: Child,
    pub data_dir: PathBuf,
    db: String,
    port: u16,
    env: Vec<(String, String)>,
}

impl Qleet {
    async fn start() -> Qleet {
        Qleet::start_with(&[]).await
    }

    /// `qleet dev` with extra environment (e.g. a short hibernation time).
    async fn start_with(env: &[(&str, &str)]) -> Qleet {
        Qleet::start_on(fresh_database().await, env).await
    }

    /// `qleet dev` on the management database `db`, with extra environment.
    pub async fn start_on(db: String, env: &[(&str, &str)]) -> Qleet {
        let data_dir = std::env::temp_dir().join(format!("qleet-journey-{}", Uuid::new_v4()));
        let port = qleet_test_support::free_port();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let child = Qleet::launch(&db, &data_dir, port, &env).await;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let signed_in = http
            .post(format!("{url}/auth/dev"))
            .form(&[("email", "ada@example.test"), ("name", "Ada")])
            .send()
            .await
            .expect("sign in");
        assert_eq!(signed_in.status(), 303);
        let cookie = signed_in
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| c.strip_prefix("qleet_session="))
            .and_then(|c| c.split(';').next())
            .expect("session cookie")
            .to_owned();
        Qleet {
            url,
            http,
            cookie,
            child,
            data_dir,
            db,
            port,
            env,
        }
    }

    /// Starts `qleet dev` and answers once it serves.
    async fn launch(db: &str, data_dir: &Path, port: u16, env: &[(String, String)]) -> Child {
        let mut child = Command::new(qleet_binary())
            .arg("dev")
            .env("DATABASE_URL", db)
            .env("QLEET_DATA_DIR", data_dir)
            .env("QLEET_LISTEN", format!("127.0.0.1:{port}"))
            .env("QLEET_CONTROL_PLANE_RETENTION_HOURS", "0")
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn qleet dev");
        qleet_test_support::qleet_dev_serving(&mut child).await;
        child
    }

    /// Starts it again (after it was killed) on the same database, data dir and port; the
    /// session stays valid.
    pub async fn restart(&mut self) {
        self.child = Qleet::launch(&self.db, &self.data_dir, self.port, &self.env).await;
    }

    /// GraphQL as the signed-in person: at `path` (`graphql`, or `cp/<id>/graphql` through
    /// the gateway). Panics on errors; answers `data`.
    pub async fn gql(&self, path: &str, query: &str, variables: Value) -> Value {
        match self.try_gql(path, query, variables).await {
            Ok(data) => data,
            Err(e) => panic!("{path}: {e}"),
        }
    }

    /// Like [`Qleet::gql`], but a failure (no answer, errors) is returned, for callers that
    /// expect the server to be briefly away.
    pub async fn try_gql(
        &self,
        path: &str,
        query: &str,
        variables: Value,
    ) -> Result<Value, String> {
        let response = self
            .http
            .post(format!("{}/{path}", self.url))
            .header("cookie", format!("qleet_session={}", self.cookie))
            .header("origin", &self.url)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("{status}: {e}"))?;
        if body.get("errors").is_some() {
            return Err(format!("{status}: {body:#}"));
        }
        Ok(body["data"].clone())
    }

    /// The organisation `shop` and its control plane `prod`, READY; answers its id.
    pub async fn organization_and_control_plane(&self) -> String {
        self.gql(
            "graphql",
            "mutation { createOrganization(slug: \"shop\", name: \"Shop\") { id } }",
            json!({}),
        )
        .await;
        let cp = self
            .gql(
                "graphql",
                "mutation { createControlPlane(org: \"shop\", name: \"prod\") { id } }",
                json!({}),
            )
            .await["createControlPlane"]["id"]
            .as_str()
            .expect("id")
            .to_owned();
        self.wait_control_plane(&cp, "READY").await;
        cp
    }

    /// A one-time registration token, through the gateway.
    pub async fn registration_token(&self, cp: &str) -> String {
        self.gql(
            &format!("cp/{cp}/graphql"),
            "mutation { createAgentRegistration(ttlMinutes: 30) { token } }",
            json!({}),
        )
        .await["createAgentRegistration"]["token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    pub async fn apply(&self, cp: &str, yaml: &str) {
        self.gql(
            &format!("cp/{cp}/graphql"),
            "mutation($y: String!) { apply(yaml: $y, dryRun: false, prune: false) { applied } }",
            json!({ "y": yaml }),
        )
        .await;
    }

    async fn delete_control_plane(self, cp: &str) {
        self.gql(
            "graphql",
            "mutation($id: UUID!) { deleteControlPlane(org: \"shop\", id: $id, confirmName: \"prod\") { status } }",
            json!({ "id": cp }),
        )
        .await;
        self.wait_control_plane(cp, "DELETED").await;
        self.stop().await;
    }

    async fn control_plane_status(&self, id: &str) -> String {
        self.gql(
            "graphql",
            "query($id: UUID!) { organization(slug: \"shop\") { controlPlane(id: $id) { status } } }",
            json!({ "id": id }),
        )
        .await["organization"]["controlPlane"]["status"]
            .as_str()
            .expect("status")
            .to_owned()
    }

    pub async fn wait_control_plane(&self, id: &str, want: &str) {
        for _ in 0..600 {
            if self.control_plane_status(id).await == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "control plane never {want}: {}",
            self.control_plane_status(id).await
        );
    }

    /// Objects by `Kind/name`, with phase and outputs, through the gateway.
    pub async fn objects(&self, cp: &str) -> serde_json::Map<String, Value> {
        match self.try_objects(cp).await {
            Ok(objects) => objects,
            Err(e) => panic!("objects: {e}"),
        }
    }

    /// Like [`Qleet::objects`], but a failure is returned.
    pub async fn try_objects(&self, cp: &str) -> Result<serde_json::Map<String, Value>, String> {
        let data = self
            .try_gql(
                &format!("cp/{cp}/graphql"),
                "{ objects { kind name phase message outputs } }",
                json!({}),
            )
            .await?;
        Ok(data["objects"]
            .as_array()
            .ok_or("no objects")?
            .iter()
            .map(|o| {
                (
                    format!(
                        "{}/{}",
                        o["kind"].as_str().unwrap_or_default(),
                        o["name"].as_str().unwrap_or_default()
                    ),
                    o.clone(),
                )
            })
            .collect())
    }

    /// Waits (120 s at most) until all `n` objects are READY; answers them.
    async fn wait_ready(&self, cp: &str, n: usize) -> serde_json::Map<String, Value> {
        for _ in 0..1200 {
            let objects = self.objects(cp).await;
            if objects.len() == n && objects.values().all(|o| o["phase"] == "READY") {
                return objects;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("never all READY: {:#?}", self.objects(cp).await);
    }

    async fn agent_status(&self, cp: &str) -> Value {
        self.gql(
            &format!("cp/{cp}/graphql"),
            "{ agents { name status version } }",
            json!({}),
        )
        .await["agents"][0]
            .clone()
    }

    /// SIGTERM, as an operator stops it: it stops its control planes and exits cleanly.
    pub async fn stop(mut self) {
        assert!(terminate(&mut self.child).await.success());
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A kubeconfig for the cluster `name` at `server`.
fn kubeconfig(dir: &Path, name: &str, server: &str) -> PathBuf {
    let path = dir.join(format!("{name}.kubeconfig"));
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster: {{server: \"{server}\"}}\nusers:\n- name: agent\n  user: {{token: agent-token}}\ncontexts:\n- name: {name}\n  context: {{cluster: {name}, user: agent}}\ncurrent-context: {name}\n"
    );
    std::fs::write(&path, yaml).expect("kubeconfig");
    path
}

#[tokio::test]
async fn sign_up_to_a_running_app_through_the_management_plane_with_the_agent_binary() {
    let qleet = Qleet::start().await;
    let moto = Moto::start().await;
    let (k8s_url, api) = ApiServer::serve().await;
    let dir = qleet.data_dir.join("agent");
    std::fs::create_dir_all(&dir).expect("agent dir");

    // An organisation and its control plane, as the UI makes them.
    let cp = qleet.organization_and_control_plane().await;
    let cp_graphql = format!("cp/{cp}/graphql");
    let token = qleet.registration_token(&cp).await;

    // The agent as the install page shows it: the gateway URL, the token once, a cluster.
    let agent_url = format!("{}/cp/{cp}", qleet.url);
    let cluster = kubeconfig(&dir, "prod-1", &k8s_url);
    let mut agent = agent_command(&agent_url, &moto.url, &dir.join("state.json"))
        .arg("--token")
        .arg(&token)
        .arg("--cluster")
        .arg(format!("prod-1={}", cluster.display()))
        .spawn()
        .expect("start qleet-agent");

    qleet.apply(&cp, APP).await;
    let objects = qleet.wait_ready(&cp, 5).await;
    let agent_seen = qleet.agent_status(&cp).await;
    assert_eq!(agent_seen["status"], "CONNECTED", "{agent_seen}");
    assert_eq!(agent_seen["version"], qleet_agent::VERSION);

    // In the customer's account, as moto has it: made under the assumed role, named and
    // tagged for this control plane and object, public access blocked.
    let sdk = moto.sdk("test", "test").await;
    let bucket = &objects["ObjectStorageBucket/assets"]["outputs"];
    let bucket_name = bucket["name"].as_str().expect("bucket name");
    assert!(bucket_name.starts_with("qleet-assets-"), "{bucket_name}");
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    let tags = s3
        .get_bucket_tagging()
        .bucket(bucket_name)
        .send()
        .await
        .expect("bucket tags");
    let tag = |k: &str| {
        tags.tag_set()
            .iter()
            .find(|t| t.key() == k)
            .map(|t| t.value().to_owned())
    };
    assert_eq!(tag("qleet:control-plane").as_deref(), Some(cp.as_str()));
    assert_eq!(
        tag("qleet:object").as_deref(),
        Some("ObjectStorageBucket/assets")
    );
    let pab = s3
        .get_public_access_block()
        .bucket(bucket_name)
        .send()
        .await
        .expect("public access block")
        .public_access_block_configuration()
        .cloned()
        .expect("configuration");
    assert_eq!(
        (
            pab.block_public_acls(),
            pab.ignore_public_acls(),
            pab.block_public_policy(),
            pab.restrict_public_buckets()
        ),
        (Some(true), Some(true), Some(true), Some(true))
    );
    let db = &objects["RelationalDatabase/db"]["outputs"];
    let instances = aws_sdk_rds::Client::new(&sdk)
        .describe_db_instances()
        .send()
        .await
        .expect("rds");
    let [instance] = instances.db_instances() else {
        panic!("one database: {instances:?}");
    };
    assert!(
        instance
            .tag_list()
            .iter()
            .any(|t| t.key() == Some("qleet:control-plane") && t.value() == Some(cp.as_str()))
    );
    assert_eq!(
        instance.endpoint().and_then(|e| e.address()),
        db["host"].as_str()
    );
    let secret_arn = db["password"]["secretRef"]["arn"]
        .as_str()
        .expect("only a reference to the password");
    let password = aws_sdk_secretsmanager::Client::new(&sdk)
        .get_secret_value()
        .secret_id(secret_arn)
        .send()
        .await
        .expect("secret")
        .secret_string()
        .expect("text")
        .to_owned();
    assert!(
        !Value::Object(objects.clone())
            .to_string()
            .contains(&password)
    );

    // On the cluster: server-side applied as qleet-agent, outputs wired in, the password from
    // a Secret the agent filled from Secrets Manager itself.
    let applied = api.applied("/apis/apps/v1/namespaces/shop/deployments/web");
    assert!(
        applied
            .iter()
            .all(|s| s.query.contains("fieldManager=qleet-agent")),
        "{applied:?}"
    );
    let dep = api
        .get("/apis/apps/v1/namespaces/shop/deployments/web")
        .expect("deployment applied");
    let container = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["args"][0],
        format!(
            "--database=postgres://{}:5432/db",
            db["host"].as_str().expect("host")
        )
    );
    let env = container["env"].as_array().expect("env");
    assert!(
        env.contains(&json!({"name": "BUCKET", "value": bucket_name})),
        "{env:?}"
    );
    let secret = api
        .get("/api/v1/namespaces/shop/secrets/web-qleet-secrets")
        .expect("secret applied");
    assert_eq!(
        secret["data"]["DB_PASSWORD"],
        base64::engine::general_purpose::STANDARD.encode(&password)
    );

    // The rollout, as the agent saw it, is among the workload's events.
    let events = qleet
        .gql(
            &cp_graphql,
            "{ object(kind: \"Workload\", name: \"web\") { events { type reason message } } }",
            json!({}),
        )
        .await["object"]["events"]
        .clone();
    assert!(
        events.as_array().expect("events").contains(&json!({
            "type": "Normal",
            "reason": "RolloutComplete",
            "message": "Deployment shop/web: 1 of 1 replicas available",
        })),
        "{events:#}"
    );

    // The control plane stops under the agent (suspended: its process ends) and comes back;
    // the agent, retrying with backoff meanwhile, carries on with new work.
    qleet
        .gql(
            "graphql",
            "mutation($id: UUID!) { suspendControlPlane(org: \"shop\", id: $id) { status } }",
            json!({ "id": cp }),
        )
        .await;
    qleet.wait_control_plane(&cp, "SUSPENDED").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        agent.try_wait().expect("status").is_none(),
        "the agent keeps running while its control plane is away"
    );
    qleet
        .gql(
            "graphql",
            "mutation($id: UUID!) { resumeControlPlane(org: \"shop\", id: $id) { status } }",
            json!({ "id": cp }),
        )
        .await;
    qleet.wait_control_plane(&cp, "READY").await;
    let more = format!(
        "{APP}---\nkind: ObjectStorageBucket\nmetadata: {{name: logs}}\nspec: {{account: AwsAccount/main}}\n"
    );
    qleet.apply(&cp, &more).await;
    let objects = qleet.wait_ready(&cp, 6).await;
    let logs = objects["ObjectStorageBucket/logs"]["outputs"]["name"]
        .as_str()
        .expect("logs bucket");
    s3.head_bucket()
        .bucket(logs)
        .send()
        .await
        .expect("made after the restart");
    assert_eq!(qleet.agent_status(&cp).await["status"], "CONNECTED");

    assert!(terminate(&mut agent).await.success());
    qleet.delete_control_plane(&cp).await;
}

#[tokio::test]
async fn an_agent_wakes_its_hibernated_control_plane_and_keeps_it_awake() {
    let qleet = Qleet::start_with(&[("QLEET_HIBERNATE_AFTER_SECS", "8")]).await;
    let moto = Moto::start().await;
    let cp = qleet.organization_and_control_plane().await;
    let token = qleet.registration_token(&cp).await;
    // Nobody uses it: it hibernates (its process stops).
    qleet.wait_control_plane(&cp, "HIBERNATED").await;

    // The agent's registration goes through the gateway, which wakes it.
    let dir = qleet.data_dir.join("agent");
    std::fs::create_dir_all(&dir).expect("agent dir");
    let mut agent = agent_command(
        &format!("{}/cp/{cp}", qleet.url),
        &moto.url,
        &dir.join("state.json"),
    )
    .arg("--token")
    .arg(&token)
    .spawn()
    .expect("start qleet-agent");
    qleet.wait_control_plane(&cp, "READY").await;
    qleet
        .apply(
            &cp,
            "kind: AwsAccount\nmetadata: {name: main}\nspec: {accountId: \"123456789012\", roleArn: \"arn:aws:iam::123456789012:role/qleet\", defaultRegion: eu-west-1}\n---\nkind: ObjectStorageBucket\nmetadata: {name: assets}\nspec: {account: AwsAccount/main}\n",
        )
        .await;
    qleet.wait_ready(&cp, 2).await;

    // While its agent polls, it is in use: past twice the idle time it is still awake.
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert_eq!(qleet.control_plane_status(&cp).await, "READY");
    assert_eq!(qleet.agent_status(&cp).await["status"], "CONNECTED");
    assert!(terminate(&mut agent).await.success());
    qleet.delete_control_plane(&cp).await;
}
