//! Kubernetes without a cluster: kube's `tower-test` mock behind a real `kube::Client`, a small
//! in-memory API server ([`ApiServer`]) that stores what is applied and records every request,
//! and strict schema checks of manifests against their k8s-openapi types ([`strictly`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::request::Parts;
use http::{Request, Response};
use kube::client::Body;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use uuid::Uuid;

/// A `kube::Client` whose requests are answered by `respond(request head, body bytes)` with a
/// status and a JSON body, in a task of this runtime.
pub fn mock_client(
    respond: impl Fn(&Parts, &[u8]) -> (u16, Vec<u8>) + Send + 'static,
) -> kube::Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, reply)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.expect("request body");
            let (status, answer) = respond(&parts, &bytes);
            reply.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(answer))
                    .expect("response"),
            );
        }
    });
    kube::Client::new(service, "default")
}

/// A Kubernetes `Status` failure body.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code })
}

/// One request the API server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
    /// The `Content-Type` header (`application/apply-patch+yaml` for a server-side apply).
    pub content_type: Option<String>,
    /// The `Authorization` header (over HTTP only; the mock has no transport).
    pub authorization: Option<String>,
}

/// An API server in memory behind kube's mock service: applies store what was sent, reads
/// answer it, deletes remove it.
#[derive(Clone, Default)]
pub struct ApiServer {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub store: Arc<Mutex<BTreeMap<String, Value>>>,
    /// Deployments applied while set never get a replica available (a pod that cannot start).
    pub stuck_rollouts: Arc<std::sync::atomic::AtomicBool>,
}

impl ApiServer {
    /// The API server behind a `kube::Client` (kube's tower-test mock; no network).
    pub fn start() -> (kube::Client, ApiServer) {
        let api = ApiServer::default();
        let server = api.clone();
        let client = mock_client(move |parts, bytes| {
            server.respond(&parts.method, &parts.uri, &parts.headers, bytes)
        });
        (client, api)
    }

    /// The same API server on a loopback port, for a `qleet-agent` process: answers its URL
    /// (a kubeconfig's `server:`) and the server.
    pub async fn serve() -> (String, ApiServer) {
        let api = ApiServer::default();
        let server = api.clone();
        let app = axum::Router::new().fallback(
            move |method: http::Method,
                  uri: http::Uri,
                  headers: http::HeaderMap,
                  body: axum::body::Bytes| {
                let server = server.clone();
                async move {
                    let (status, answer) = server.respond(&method, &uri, &headers, &body);
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(axum::body::Body::from(answer))
                        .expect("response")
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, api)
    }

    fn respond(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        bytes: &[u8],
    ) -> (u16, Vec<u8>) {
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(bytes).expect("request body is JSON")
        };
        let seen = Seen {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().unwrap_or_default().to_owned(),
            body,
            content_type: headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            authorization: headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        let (status, answer) = self.reply(seen);
        (status, serde_json::to_vec(&answer).expect("json"))
    }

    /// Records a request and answers it.
    pub fn answer(&self, method: &str, path: &str, query: &str, body: Value) -> (u16, Value) {
        self.reply(Seen {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            body,
            content_type: None,
            authorization: None,
        })
    }

    fn reply(&self, seen: Seen) -> (u16, Value) {
        self.seen.lock().expect("lock").push(seen.clone());
        let Seen {
            method,
            path,
            body,
            query,
            ..
        } = seen;
        let (method, path) = (method.as_str(), path.as_str());
        let mut store = self.store.lock().expect("lock");
        let not_found = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{path} not found"), "reason": "NotFound", "code": 404,
        });
        match method {
            "GET" if path == "/version" => (
                200,
                json!({
                    "major": "1", "minor": "33", "gitVersion": "v1.33.1", "gitCommit": "abc",
                    "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
                }),
            ),
            "PATCH" => {
                let mut stored = body;
                stored["metadata"]["uid"] = json!(Uuid::new_v4().to_string());
                stored["metadata"]["resourceVersion"] = json!("1");
                if stored["kind"] == "Deployment" {
                    let replicas = stored["spec"]["replicas"].as_i64().unwrap_or(1);
                    let available = if self
                        .stuck_rollouts
                        .load(std::sync::atomic::Ordering::SeqCst)
                    {
                        0
                    } else {
                        replicas
                    };
                    stored["metadata"]["generation"] = json!(1);
                    stored["status"] = json!({
                        "observedGeneration": 1, "replicas": replicas, "availableReplicas": available,
                    });
                }
                // A dry run answers what would be stored, and stores nothing.
                if !query.split('&').any(|kv| kv == "dryRun=All") {
                    store.insert(path.to_owned(), stored.clone());
                }
                (200, stored)
            }
            "GET" => match store.get(path) {
                Some(v) => (200, v.clone()),
                // A collection (`.../configmaps`): its items, filtered by `labelSelector`.
                None if is_collection(path) => {
                    let selector = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("labelSelector="))
                        .map(|s| {
                            s.replace("%3D", "=")
                                .replace("%2F", "/")
                                .replace("%2C", ",")
                        })
                        .unwrap_or_default();
                    let wanted: Vec<(&str, &str)> = selector
                        .split(',')
                        .filter_map(|kv| kv.split_once('='))
                        .collect();
                    let items: Vec<Value> = store
                        .iter()
                        .filter(|(k, _)| {
                            k.strip_prefix(path)
                                .and_then(|rest| rest.strip_prefix('/'))
                                .is_some_and(|name| !name.contains('/'))
                        })
                        .map(|(_, v)| v.clone())
                        .filter(|v| {
                            wanted
                                .iter()
                                .all(|(k, val)| v["metadata"]["labels"][*k] == json!(val))
                        })
                        .collect();
                    (
                        200,
                        json!({ "apiVersion": "v1", "kind": "List", "metadata": { "resourceVersion": "1" }, "items": items }),
                    )
                }
                None => (404, not_found),
            },
            "DELETE" => match store.remove(path) {
                Some(_) => (
                    200,
                    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success" }),
                ),
                None => (404, not_found),
            },
            _ => (404, not_found),
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    pub fn applied(&self, path: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.method == "PATCH" && s.path == path)
            .collect()
    }

    pub fn deleted(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|s| s.method == "DELETE")
            .map(|s| s.path)
            .collect()
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.store.lock().expect("lock").get(path).cloned()
    }

    pub fn set_label(&self, path: &str, key: &str, value: &str) {
        if let Some(v) = self.store.lock().expect("lock").get_mut(path) {
            v["metadata"]["labels"][key] = json!(value);
        }
    }
}

/// Whether `path` names a collection (`/api/v1/namespaces/x/configmaps`, `/api/v1/namespaces`)
/// rather than one object: after the `/api/v1` or `/apis/GROUP/VERSION` prefix, a collection
/// has an odd number of segments.
fn is_collection(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let prefix = match segments.first() {
        Some(&"api") => 2,
        Some(&"apis") => 3,
        _ => return false,
    };
    segments.len() > prefix && (segments.len() - prefix) % 2 == 1
}

/// Deserialises `manifest` into `K` and serialises it back: k8s-openapi ignores unknown fields
/// when deserialising, so any field that does not survive the round trip is unknown or misspelt.
pub fn strictly<K: DeserializeOwned + Serialize>(manifest: &Value) -> Result<K, String> {
    let typed: K = serde_path_to_error::deserialize(manifest)
        .map_err(|e| format!("at {}: {}", e.path(), e.inner()))?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut differences = Vec::new();
    diff(manifest, &back, "", &mut differences);
    if differences.is_empty() {
        Ok(typed)
    } else {
        Err(format!(
            "not kept by the round trip: {}",
            differences.join(", ")
        ))
    }
}

fn diff(sent: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => diff(value, other, &here, out),
                    None => out.push(here),
                }
            }
            out.extend(
                b.keys()
                    .filter(|k| !a.contains_key(*k))
                    .map(|k| format!("{path}.{k} (added)")),
            );
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a != b => out.push(format!("{path} ({a} became {b})")),
        _ => {}
    }
}

pub fn expect_strictly<K: DeserializeOwned + Serialize>(manifest: &Value) -> K {
    strictly(manifest)
        .unwrap_or_else(|e| panic!("{} {}: {e}", manifest["kind"], manifest["metadata"]["name"]))
}
