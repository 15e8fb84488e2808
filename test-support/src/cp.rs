//! A standalone control plane for tests and benchmarks: started in this process on a fresh
//! database, with helpers for its GraphQL API, its agent API (a well-behaved test agent) and
//! waiting for object phases.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use qleet_common::telemetry::LogFormat;
use qleet_control_plane::config::{ControlPlaneAuth, ControlPlaneConfig};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::db::fresh_database;

/// The standalone admin token every test control plane accepts.
pub const ADMIN: &str = "test-admin-token-0123456789abcdef0123456789";

/// A control plane under test: in process, or a real `qleet-control-plane` child process
/// reached at `url` ([`Cp::remote`]).
pub struct Cp {
    pub url: String,
    pub db: String,
    pub id: Uuid,
    pub http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Cp {
    /// A standalone control plane in this process, on a fresh database.
    pub async fn start() -> Cp {
        let db = fresh_database().await;
        Cp::start_on(db, Uuid::new_v4()).await
    }

    /// A control plane already serving at `url` (e.g. a child process), on database `db`.
    pub fn remote(url: String, db: &str, id: Uuid) -> Cp {
        Cp {
            url,
            db: db.to_owned(),
            id,
            http: reqwest::Client::new(),
            shutdown: None,
            server: None,
        }
    }

    /// A standalone control plane in this process, with id `id`, on database `db`.
    pub async fn start_on(db: String, id: Uuid) -> Cp {
        Cp::start_connecting(db.clone(), db, id).await
    }

    /// A standalone control plane on database `db` that connects to it with `connect` (the same
    /// database through a [`crate::proxy::TcpProxy`], say); helpers query `db` directly.
    pub async fn start_connecting(db: String, connect: String, id: Uuid) -> Cp {
        Cp::start_with(
            db,
            connect,
            id,
            qleet_control_plane::objects::drift::DEFAULT_INTERVAL,
        )
        .await
    }

    /// A standalone control plane on a fresh database that observes what the agent made for
    /// drift every `every` (instead of every ten minutes).
    pub async fn start_observing_every(every: std::time::Duration) -> Cp {
        let db = fresh_database().await;
        Cp::start_with(db.clone(), db, Uuid::new_v4(), every).await
    }

    async fn start_with(
        db: String,
        connect: String,
        id: Uuid,
        drift_interval: std::time::Duration,
    ) -> Cp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let config = ControlPlaneConfig {
            listen: listener.local_addr().expect("addr"),
            database_url: SecretString::from(connect),
            id,
            auth: ControlPlaneAuth::Standalone {
                admin_token_hash: qleet_common::secrets::hash_secret(ADMIN),
            },
            log_format: LogFormat::Pretty,
            crash_at: None,
            poll_interval: None,
            drift_interval,
            stop_on_stdin_eof: false,
        };
        let app = qleet_control_plane::Application::build(config, listener)
            .await
            .expect("control plane");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        Cp {
            url,
            db,
            id,
            http: reqwest::Client::new(),
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    /// Starts an in-process control plane's graceful shutdown, as SIGTERM does; the handle
    /// resolves once its server has stopped. `None` for a [`Cp::remote`] one.
    pub fn shut_down(&mut self) -> Option<tokio::task::JoinHandle<anyhow::Result<()>>> {
        let _ = self.shutdown.take()?.send(());
        self.server.take()
    }

    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        self.http
            .post(format!("{}/graphql", self.url))
            .bearer_auth(ADMIN)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("graphql")
            .json()
            .await
            .expect("json")
    }

    pub async fn gql_ok(&self, query: &str, variables: Value) -> Value {
        let body = self.gql(query, variables).await;
        assert!(body.get("errors").is_none(), "{body}");
        body["data"].clone()
    }

    /// Applies YAML; answers the whole GraphQL response.
    pub async fn apply(&self, yaml: &str, dry_run: bool, prune: bool) -> Value {
        self.gql(
            "mutation($y: String!, $d: Boolean!, $p: Boolean!) { apply(yaml: $y, dryRun: $d, prune: $p) {
               applied summary { create update replace delete unchanged }
               changes { action kind name owner { kind name } diffs { path before after }
                         replacement { fields what } } } }",
            json!({ "y": yaml, "d": dry_run, "p": prune }),
        )
        .await
    }

    pub async fn apply_ok(&self, yaml: &str) -> Value {
        let body = self.apply(yaml, false, false).await;
        assert!(body.get("errors").is_none(), "{body}");
        body["data"]["apply"].clone()
    }

    pub async fn object(&self, kind: &str, name: &str) -> Value {
        self.gql_ok(
            "query($k: String!, $n: String!) { object(kind: $k, name: $n) {
               id kind name phase message spec outputs rendered generation observedGeneration deleting
               conditions { type status reason message }
               events { type reason message }
               dependencies { kind name phase } dependents { kind name phase } owner { kind name } } }",
            json!({ "k": kind, "n": name }),
        )
        .await["object"]
            .clone()
    }

    pub async fn phases(&self) -> BTreeMap<String, String> {
        let data = self
            .gql_ok("{ objects { kind name phase } }", json!({}))
            .await;
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

    /// POSTs JSON to the agent API (or any path) as the admin; answers status and body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .expect("agent api");
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }

    /// Leases tasks as agent `agent`.
    pub async fn lease(&self, agent: &str, max: u32, wait: u32) -> Vec<Value> {
        let (code, body) = self
            .post(
                "/agent/v1/tasks/lease",
                json!({ "agent": agent, "max": max, "waitSeconds": wait }),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        body["tasks"].as_array().cloned().unwrap_or_default()
    }

    /// Leases until `n` tasks are in hand (failing after 30 s), then checks no more are due.
    pub async fn lease_n(&self, n: usize) -> Vec<Value> {
        let mut got = Vec::new();
        for _ in 0..30 {
            got.extend(self.lease("test-agent", 50, 1).await);
            if got.len() >= n {
                break;
            }
        }
        assert_eq!(got.len(), n, "tasks: {:?}", kinds_of(&got));
        let more = self.lease("test-agent", 50, 0).await;
        assert!(more.is_empty(), "unexpected tasks: {:?}", kinds_of(&more));
        got
    }

    pub async fn report(&self, task: &Value, result: Value) -> (u16, Value) {
        self.post(
            &format!(
                "/agent/v1/tasks/{}/report",
                task["id"].as_str().unwrap_or_default()
            ),
            json!({ "leaseId": task["leaseId"], "result": result }),
        )
        .await
    }

    /// Polls until `check` holds for the phases (60 s at most), answering them.
    pub async fn wait_until(
        &self,
        what: &str,
        check: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> BTreeMap<String, String> {
        for _ in 0..600 {
            let p = self.phases().await;
            if check(&p) {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("never reached: {what}: {:?}", self.phases().await);
    }

    /// Waits (90 s at most) until exactly `n` objects exist and every one is READY; on failure
    /// the panic shows each object's whole status.
    pub async fn wait_ready(&self, n: usize) -> BTreeMap<String, String> {
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

    /// A one-time agent registration token (valid an hour).
    pub async fn registration_token(&self) -> String {
        self.gql_ok(
            "mutation { createAgentRegistration(ttlMinutes: 60) { token } }",
            json!({}),
        )
        .await["createAgentRegistration"]["token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    /// The ids of the registered agents.
    pub async fn agent_ids(&self) -> Vec<String> {
        self.gql_ok("{ agents { id } }", json!({})).await["agents"]
            .as_array()
            .expect("agents")
            .iter()
            .map(|a| a["id"].as_str().expect("id").to_owned())
            .collect()
    }

    /// Runs a `select count(*) ...` against the control plane's database.
    pub async fn sql_count(&self, sql: &str) -> i64 {
        let pool = sqlx::PgPool::connect(&self.db).await.expect("db");
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&pool)
            .await
            .expect("count");
        pool.close().await;
        n
    }
}

/// What a well-behaved agent reports for a task, made from its payload alone.
pub fn outputs_for(task: &Value) -> Value {
    let r = &task["payload"]["resource"];
    let region = r["account"]["region"].as_str().unwrap_or("eu-west-1");
    match task["objectKind"].as_str().unwrap_or_default() {
        "ObjectStorageBucket" => {
            let name = r["bucket"]["name"].as_str().unwrap_or_default();
            json!({
                "name": name,
                "arn": format!("arn:aws:s3:::{name}"),
                "region": region,
                "endpoint": format!("https://s3.{region}.amazonaws.com"),
                "versioning": r["bucket"]["versioning"],
                "blockPublicAccess": r["bucket"]["blockPublicAccess"],
                "encryption": r["bucket"]["encryption"],
            })
        }
        "RelationalDatabase" => {
            let id = r["database"]["instanceIdentifier"]
                .as_str()
                .unwrap_or_default();
            let d = &r["database"];
            json!({
                "host": format!("{id}.abc123.{region}.rds.amazonaws.com"),
                "port": d["port"],
                "engine": d["engine"],
                "version": d["version"],
                "sizeClass": d["sizeClass"],
                "storageGb": d["storageGb"],
                "backupRetentionDays": d["backupRetentionDays"],
                "database": d["database"],
                "username": d["username"],
                "password": { "secretRef": {
                    "provider": "aws-secretsmanager",
                    "arn": format!("arn:aws:secretsmanager:{region}:123456789012:secret:{id}"),
                }},
            })
        }
        "KubernetesRuntime" => json!({
            "endpoint": "https://kubernetes.default.svc",
            "clusterName": r["existing"]["cluster"].as_str().or(r["eks"]["clusterName"].as_str()),
        }),
        _ => json!({}),
    }
}

/// The report body that completes `task` successfully (outputs from [`outputs_for`]).
pub fn success_report(task: &Value) -> Value {
    json!({ "leaseId": task["leaseId"], "result": success(task) })
}

/// What a well-behaved agent observes of `task`'s resource: exactly what its payload made.
pub fn observed_for(task: &Value) -> Value {
    let mut observed = qleet_control_plane::objects::drift::expected(
        task["objectKind"].as_str().unwrap_or_default(),
        &task["payload"],
    );
    observed.insert("found".into(), json!(true));
    Value::Object(observed)
}

/// The `result` of a successful report for `task`.
pub fn success(task: &Value) -> Value {
    if task["operation"] == "observe" {
        return json!({ "succeeded": { "outputs": observed_for(task) } });
    }
    if task["operation"] == "delete" {
        json!({ "succeeded": {} })
    } else {
        json!({ "succeeded": { "outputs": outputs_for(task) } })
    }
}

/// Completes every task that is (or becomes, within `wait` seconds) available; answers them.
pub async fn drain(cp: &Cp, wait: u32) -> Vec<Value> {
    let mut done = Vec::new();
    loop {
        let tasks = cp.lease("test-agent", 50, wait).await;
        if tasks.is_empty() {
            return done;
        }
        for t in tasks {
            let (code, body) = cp.report(&t, success(&t)).await;
            assert_eq!(code, 200, "{body}");
            done.push(t);
        }
    }
}

/// An application with every built-in kind the agent provisions, wired by references.
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
      template:
        spec:
          containers:
            - name: web
              image: shop:1
              args: ["--database=postgres://${RelationalDatabase/db.host}:${RelationalDatabase/db.port}/db"]
  env:
    - {name: BUCKET, valueFrom: {object: ObjectStorageBucket/assets, output: name}}
    - {name: BUCKET_ENDPOINT, valueFrom: {object: ObjectStorageBucket/assets, output: endpoint}}
    - {name: DB_HOST, valueFrom: {object: RelationalDatabase/db, output: host}}
    - {name: DB_PASSWORD, valueFrom: {object: RelationalDatabase/db, output: password}}
"#;

/// `Kind/name` of each task.
pub fn kinds_of(tasks: &[Value]) -> BTreeSet<String> {
    tasks
        .iter()
        .map(|t| {
            format!(
                "{}/{}",
                t["objectKind"].as_str().unwrap_or_default(),
                t["objectName"].as_str().unwrap_or_default()
            )
        })
        .collect()
}
