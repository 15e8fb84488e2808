//! `--state-secret`: the agent's identity in a Kubernetes Secret. A small in-memory API server
//! for Secrets behind kube's `tower-test` mock (and, for the binary, on loopback HTTP) and a
//! real control plane in process to register with. Every Secret the agent writes is checked
//! strictly against k8s-openapi's `Secret`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use clap::Parser as _;
use k8s_openapi::api::core::v1::Secret;
use qleet_agent::config::{Cli, Config};
use qleet_agent::state::Store;
use qleet_agent::{StartError, identity};
use qleet_test_support::cp::Cp;
use qleet_test_support::kube::{expect_strictly, mock_client, status};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use uuid::Uuid;

const NAMESPACE: &str = "qleet-agent";
const NAME: &str = "agent-state";
const PATH: &str = "/api/v1/namespaces/qleet-agent/secrets/agent-state";

/// One request the API server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: Value,
}

/// Secrets in memory: GET, POST (create) and PUT (replace, with the resource version
/// checked), as a real API server answers them.
#[derive(Clone, Default)]
struct Secrets {
    seen: Arc<Mutex<Vec<Seen>>>,
    store: Arc<Mutex<BTreeMap<String, Value>>>,
    /// Answer every request 403, like a service account without the Role.
    forbidden: Arc<Mutex<bool>>,
}

impl Secrets {
    fn start() -> (kube::Client, Secrets) {
        let api = Secrets::default();
        let server = api.clone();
        let client = mock_client(move |parts, bytes| {
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(bytes).expect("request body is JSON")
            };
            let (code, answer) = server.answer(parts.method.as_str(), parts.uri.path(), body);
            (code, serde_json::to_vec(&answer).expect("json"))
        });
        (client, api)
    }

    fn answer(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        self.seen.lock().expect("lock").push(Seen {
            method: method.to_owned(),
            path: path.to_owned(),
            body: body.clone(),
        });
        if *self.forbidden.lock().expect("lock") {
            return (
                403,
                status(
                    403,
                    "Forbidden",
                    "secrets \"agent-state\" is forbidden: User \"system:serviceaccount:qleet-agent:default\" cannot get resource \"secrets\"",
                ),
            );
        }
        let mut store = self.store.lock().expect("lock");
        let not_found = status(404, "NotFound", "secrets \"agent-state\" not found");
        match method {
            "GET" => match store.get(path) {
                Some(v) => (200, v.clone()),
                None => (404, not_found),
            },
            "POST" => {
                let name = body["metadata"]["name"].as_str().unwrap_or_default();
                let at = format!("{path}/{name}");
                if store.contains_key(&at) {
                    return (409, status(409, "AlreadyExists", "already exists"));
                }
                let mut stored = body;
                stored["metadata"]["resourceVersion"] = json!("1");
                store.insert(at, stored.clone());
                (201, stored)
            }
            "PUT" => {
                let Some(current) = store.get(path) else {
                    return (404, not_found);
                };
                if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    return (409, status(409, "Conflict", "the object has been modified"));
                }
                let mut stored = body;
                stored["metadata"]["resourceVersion"] = json!("2");
                store.insert(path.to_owned(), stored.clone());
                (200, stored)
            }
            _ => (405, status(405, "MethodNotAllowed", method)),
        }
    }

    fn requests(&self) -> Vec<(String, String)> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .map(|s| (s.method.clone(), s.path.clone()))
            .collect()
    }

    fn put(&self, secret: Value) {
        self.store
            .lock()
            .expect("lock")
            .insert(PATH.to_owned(), secret);
    }

    fn get(&self) -> Option<Value> {
        self.store.lock().expect("lock").get(PATH).cloned()
    }
}

fn config(args: &[&str]) -> Config {
    let mut all = vec!["qleet-agent", "--state-secret", "qleet-agent/agent-state"];
    all.extend_from_slice(args);
    Config::try_from(Cli::try_parse_from(all).expect("flags")).expect("config")
}

fn data(secret: &Secret, key: &str) -> String {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .unwrap_or_else(|| panic!("no {key}"));
    String::from_utf8(bytes.0.clone()).expect("utf-8")
}

#[tokio::test]
async fn the_first_run_registers_and_creates_the_state_secret_and_the_next_run_reads_it_without_registering()
 {
    let cp = Cp::start().await;
    let token = cp.registration_token().await;
    let (client, api) = Secrets::start();
    let store = Store::secret(client, NAMESPACE, NAME);

    let first = config(&["--url", &cp.url, "--token", &token]);
    let (url, credential) = identity(&first, &store).await.expect("registered");
    assert_eq!(url.as_str().trim_end_matches('/'), cp.url);
    assert_eq!(
        api.requests(),
        [
            ("GET".to_owned(), PATH.to_owned()),
            (
                "POST".to_owned(),
                "/api/v1/namespaces/qleet-agent/secrets".to_owned()
            ),
        ]
    );
    let created = api.seen.lock().expect("lock")[1].body.clone();
    let secret: Secret = expect_strictly(&created);
    assert_eq!(secret.metadata.name.as_deref(), Some(NAME));
    assert_eq!(secret.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(
        secret.metadata.labels,
        Some(BTreeMap::from([(
            "app.kubernetes.io/managed-by".to_owned(),
            "qleet-agent".to_owned()
        )]))
    );
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let keys: Vec<&String> = secret.data.as_ref().expect("data").keys().collect();
    assert_eq!(keys, ["agentId", "controlPlane", "credential", "url"]);
    assert_eq!(data(&secret, "credential"), credential.expose_secret());
    assert!(credential.expose_secret().starts_with("qleet_agent_"));
    assert_eq!(data(&secret, "url"), url.as_str());
    let agent_id = data(&secret, "agentId");
    assert_eq!(cp.agent_ids().await, std::slice::from_ref(&agent_id));
    Uuid::parse_str(&data(&secret, "controlPlane")).expect("control plane id");
    // What is stored is base64 of exactly those values.
    assert_eq!(
        created["data"]["credential"],
        base64::engine::general_purpose::STANDARD.encode(credential.expose_secret())
    );
    // The credential works.
    qleet_agent::client::Client::new(url.clone(), Some(credential.clone()))
        .expect("client")
        .heartbeat(0)
        .await
        .expect("heartbeat with the saved credential");

    // A restart (the pod rescheduled, the spent token still in its environment) reads the
    // Secret and registers nothing; without a token or URL too.
    api.seen.lock().expect("lock").clear();
    for args in [vec!["--url", cp.url.as_str(), "--token", &token], vec![]] {
        let (again_url, again) = identity(&config(&args), &store).await.expect("read back");
        assert_eq!(again.expose_secret(), credential.expose_secret());
        assert_eq!(again_url, url);
    }
    assert_eq!(
        api.requests(),
        [
            ("GET".to_owned(), PATH.to_owned()),
            ("GET".to_owned(), PATH.to_owned())
        ]
    );
    assert_eq!(cp.agent_ids().await, [agent_id]);

    // A Secret of another control plane is refused, naming the flag to change.
    let err = identity(
        &config(&["--url", "https://elsewhere.example/cp/x"]),
        &store,
    )
    .await
    .expect_err("another control plane");
    assert!(
        err.to_string()
            .contains("Secret qleet-agent/agent-state belongs to"),
        "{err}"
    );
    assert!(err.to_string().contains("--state-secret"), "{err}");
}

#[tokio::test]
async fn an_empty_placeholder_secret_is_filled_in_with_an_update_keeping_its_labels() {
    let cp = Cp::start().await;
    let token = cp.registration_token().await;
    let (client, api) = Secrets::start();
    api.put(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": NAME, "namespace": NAMESPACE, "resourceVersion": "7",
            "labels": { "app.kubernetes.io/managed-by": "Helm" },
            "annotations": { "helm.sh/resource-policy": "keep" },
        },
        "type": "Opaque",
    }));
    let store = Store::secret(client, NAMESPACE, NAME);
    let (_, credential) = identity(&config(&["--url", &cp.url, "--token", &token]), &store)
        .await
        .expect("registered");
    let methods: Vec<String> = api.requests().into_iter().map(|(m, _)| m).collect();
    assert_eq!(methods, ["GET", "POST", "GET", "PUT"]);
    let replaced = api.seen.lock().expect("lock")[3].body.clone();
    let secret: Secret = expect_strictly(&replaced);
    assert_eq!(secret.metadata.resource_version.as_deref(), Some("7"));
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("Helm")
    );
    assert!(
        secret
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .contains_key("helm.sh/resource-policy")
    );
    assert_eq!(data(&secret, "credential"), credential.expose_secret());
    assert!(api.get().expect("stored")["data"]["agentId"].is_string());
}

/// What the agent says about the Secret, as its one-line reason.
async fn refusal(secret: Option<Value>, forbidden: bool) -> String {
    let (client, api) = Secrets::start();
    if let Some(s) = secret {
        api.put(s);
    }
    *api.forbidden.lock().expect("lock") = forbidden;
    let store = Store::secret(client, NAMESPACE, NAME);
    let err = identity(
        &config(&[
            "--url",
            "https://qleet.example/cp/x",
            "--token",
            "qleet_reg_x",
        ]),
        &store,
    )
    .await
    .expect_err("refused");
    assert!(matches!(err, StartError::State(_)), "{err:?}");
    assert!(
        !api.requests().iter().any(|(m, _)| m != "GET"),
        "nothing is written: {:?}",
        api.requests()
    );
    let line = err.to_string();
    assert!(!line.contains('\n'), "{line}");
    line
}

fn secret_with(data: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": NAME, "namespace": NAMESPACE, "resourceVersion": "3" },
        "type": "Opaque",
        "data": data,
    })
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn a_malformed_or_unreadable_state_secret_is_refused_with_a_clear_reason() {
    let id = Uuid::new_v4().to_string();
    let good_url = b64("https://qleet.example/cp/x");
    let line = refusal(
        Some(secret_with(json!({
            "url": good_url, "agentId": b64("not-a-uuid"), "credential": b64("qleet_agent_a_b"),
        }))),
        false,
    )
    .await;
    assert_eq!(
        line,
        "Secret qleet-agent/agent-state: not an agent state file: `agentId` is not an agent id"
    );
    let line = refusal(
        Some(secret_with(json!({ "url": good_url, "agentId": b64(&id) }))),
        false,
    )
    .await;
    assert!(line.ends_with("no `credential` key"), "{line}");
    let line = refusal(
        Some(secret_with(json!({
            "url": good_url, "agentId": b64(&id), "credential": b64("hunter2"),
        }))),
        false,
    )
    .await;
    assert!(
        line.ends_with("`credential` is not an agent credential"),
        "{line}"
    );
    let line = refusal(None, true).await;
    assert!(
        line.starts_with(
            "Secret qleet-agent/agent-state: cannot read it: secrets \"agent-state\" is forbidden"
        ),
        "{line}"
    );
    assert!(line.ends_with("(403)"), "{line}");
}

/// A loopback API server that answers every Secret read with `secret`, reached through a
/// kubeconfig as the binary would be outside a pod.
async fn kubeconfig_for(secret: Value, dir: &std::path::Path) -> std::path::PathBuf {
    let app = axum::Router::new().fallback(move || {
        let secret = secret.clone();
        async move { axum::Json(secret) }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: test\n  cluster: {{server: '{url}'}}\nusers:\n- name: test\n  user: {{token: test}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\n"
        ),
    )
    .expect("kubeconfig");
    path
}

fn run_agent(args: &[&str], env: &[(&str, &std::path::Path)]) -> (i32, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_qleet-agent"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run qleet-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_binary_refuses_a_bad_state_secret_with_one_line_and_a_non_zero_exit() {
    let dir = std::env::temp_dir().join(format!("qleet-agent-state-secret-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (code, err) = run_agent(
        &[
            "--state-secret",
            "qleet-agent/agent-state",
            "--state-file",
            "/tmp/x.json",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err,
        "qleet-agent: --state-file and --state-secret exclude each other: the identity is kept in one place\n"
    );

    // Outside a pod and without a kubeconfig there is no API server to ask.
    let (code, err) = run_agent(&["--state-secret", "qleet-agent/agent-state"], &[]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("not running in a pod") && err.contains("KUBECONFIG"),
        "{err}"
    );

    // Through KUBECONFIG, a malformed Secret.
    let kubeconfig = kubeconfig_for(
        secret_with(json!({ "url": b64("https://qleet.example/cp/x"), "agentId": b64("x"), "credential": b64("qleet_agent_a") })),
        &dir,
    )
    .await;
    let (code, err) = tokio::task::spawn_blocking(move || {
        run_agent(
            &["--state-secret", "qleet-agent/agent-state"],
            &[("KUBECONFIG", &kubeconfig)],
        )
    })
    .await
    .expect("join");
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        err,
        "qleet-agent: Secret qleet-agent/agent-state: not an agent state file: `agentId` is not an agent id\n"
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
