//! Test peers: moto on loopback, a recording proxy, AWS clients that look at moto directly,
//! task payloads shaped like the control plane's, and a standalone control plane in process.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sts::config::Credentials;
use axum::body::Bytes;
use qleet_agent::aws::Aws;
use qleet_agent::k8s::Clusters;
use qleet_agent::task::Context;
use qleet_protocol::LeasedTask;
use serde_json::{Value, json};
use uuid::Uuid;

use qleet_test_support::moto::MotoServer;

/// The account moto pretends to be.
pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "eu-west-1";
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/qleet";

/// A moto server of its own (killed when dropped), with SDK clients for the checks.
pub struct Moto {
    pub url: String,
    server: MotoServer,
}

impl Moto {
    /// Moto as usual: everything allowed.
    pub async fn start() -> Moto {
        Moto::spawn(None).await
    }

    /// Moto evaluating IAM policies after the first `no_auth_calls` calls.
    pub async fn policy_checking(no_auth_calls: u32) -> Moto {
        Moto::spawn(Some(no_auth_calls)).await
    }

    async fn spawn(no_auth_calls: Option<u32>) -> Moto {
        let server = MotoServer::spawn(no_auth_calls).await;
        Moto {
            url: server.url.clone(),
            server,
        }
    }

    /// The S3 buckets this moto holds, by name.
    pub async fn bucket_names(&self) -> Vec<String> {
        self.server.bucket_names().await
    }

    /// An SDK configuration that talks to this moto with `key`/`secret`.
    pub async fn sdk(&self, key: &str, secret: &str) -> SdkConfig {
        loader(&self.url, key, secret).load().await
    }

    /// The agent's AWS side, with the given ambient credentials.
    pub async fn agent_aws(&self, endpoint: &str, key: &str, secret: &str) -> Aws {
        Aws::from_loader(loader(endpoint, key, secret)).await
    }
}

fn loader(endpoint: &str, key: &str, secret: &str) -> aws_config::ConfigLoader {
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(qleet_agent::aws::http_client())
        .endpoint_url(endpoint)
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(key, secret, None, None, "test"))
}

/// Sets up moto's policy-checking mode: a user for the agent (with a key), and the tenant's
/// role trusting exactly that user with `external_id`. Takes exactly
/// [`POLICY_SETUP_CALLS`] calls; answers the agent's access key.
pub async fn iam_setup(moto: &Moto, external_id: &str) -> (String, String) {
    let iam = aws_sdk_iam_like::Iam::new(&moto.url);
    iam.setup(external_id).await
}

pub const POLICY_SETUP_CALLS: u32 = 5;

/// A minimal IAM client (the agent needs no IAM SDK; moto's query API is simple enough).
mod aws_sdk_iam_like {
    use serde_json::json;

    pub struct Iam {
        url: String,
        http: reqwest::Client,
    }

    impl Iam {
        pub fn new(url: &str) -> Iam {
            Iam {
                url: url.to_owned(),
                http: reqwest::Client::new(),
            }
        }

        async fn call(&self, params: &[(&str, &str)]) -> String {
            let mut form: Vec<(&str, &str)> = vec![("Version", "2010-05-08")];
            form.extend_from_slice(params);
            let resp = self
                .http
                .post(format!("{}/", self.url))
                .header(
                    "Authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIASETUP/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
                )
                .form(&form)
                .send()
                .await
                .expect("iam call");
            let status = resp.status();
            let text = resp.text().await.expect("iam body");
            assert!(status.is_success(), "IAM {params:?}: {status} {text}");
            text
        }

        fn between<'a>(text: &'a str, tag: &str) -> &'a str {
            let open = format!("<{tag}>");
            let close = format!("</{tag}>");
            let start = text.find(&open).map(|i| i + open.len()).expect(tag);
            let end = text[start..].find(&close).expect(tag) + start;
            &text[start..end]
        }

        pub async fn setup(&self, external_id: &str) -> (String, String) {
            let user = self
                .call(&[("Action", "CreateUser"), ("UserName", "qleet-agent")])
                .await;
            let user_arn = Self::between(&user, "Arn").to_owned();
            let key = self
                .call(&[("Action", "CreateAccessKey"), ("UserName", "qleet-agent")])
                .await;
            let key_id = Self::between(&key, "AccessKeyId").to_owned();
            let secret = Self::between(&key, "SecretAccessKey").to_owned();
            let trust = json!({
                "Version": "2012-10-17",
                "Statement": [{
                    "Effect": "Allow",
                    "Principal": { "AWS": user_arn },
                    "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
                    "Condition": { "StringEquals": { "sts:ExternalId": external_id } }
                }]
            })
            .to_string();
            self.call(&[
                ("Action", "CreateRole"),
                ("RoleName", "qleet"),
                ("AssumeRolePolicyDocument", &trust),
            ])
            .await;
            let permissions = json!({
                "Version": "2012-10-17",
                "Statement": [{ "Effect": "Allow", "Action": ["s3:*", "rds:*", "secretsmanager:*", "eks:*"], "Resource": "*" }]
            })
            .to_string();
            self.call(&[
                ("Action", "PutRolePolicy"),
                ("RoleName", "qleet"),
                ("PolicyName", "qleet-managed"),
                ("PolicyDocument", &permissions),
            ])
            .await;
            let may_assume = json!({
                "Version": "2012-10-17",
                "Statement": [{ "Effect": "Allow", "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"], "Resource": "*" }]
            })
            .to_string();
            self.call(&[
                ("Action", "PutUserPolicy"),
                ("UserName", "qleet-agent"),
                ("PolicyName", "assume"),
                ("PolicyDocument", &may_assume),
            ])
            .await;
            (key_id, secret)
        }
    }
}

/// One request that passed the recording proxy.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: String,
}

impl Recorded {
    /// The form fields of a query-protocol call (STS, RDS, IAM).
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }
    pub fn field(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
    pub fn action(&self) -> Option<String> {
        self.field("Action")
    }
}

/// A loopback proxy in front of moto that records every request the agent sends, for what
/// moto itself does not check (a missing ExternalId, the session's name and tags).
pub struct Recorder {
    pub url: String,
    seen: Arc<Mutex<Vec<Recorded>>>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Recorder {
    pub async fn start(upstream: &str) -> Recorder {
        Recorder::holding(upstream, |_| false).await
    }

    /// A recorder that passes requests matching `hold` on upstream but never answers them:
    /// the work is done, the caller never learns it (as when it dies at that moment).
    pub async fn holding(upstream: &str, hold: fn(&Recorded) -> bool) -> Recorder {
        Recorder::spawn(upstream, hold, Duration::ZERO).await
    }

    /// A recorder that passes every request on only after `delay`: a slow cloud, so that the
    /// agent's work takes long enough to be interrupted in the middle.
    pub async fn slow(upstream: &str, delay: Duration) -> Recorder {
        Recorder::spawn(upstream, |_| false, delay).await
    }

    async fn spawn(upstream: &str, hold: fn(&Recorded) -> bool, delay: Duration) -> Recorder {
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let http = reqwest::Client::new();
        let upstream = upstream.to_owned();
        let record = seen.clone();
        let app = axum::Router::new().fallback(
            move |method: http::Method, uri: http::Uri, headers: http::HeaderMap, body: Bytes| {
                let (http, upstream, record) = (http.clone(), upstream.clone(), record.clone());
                async move {
                    let recorded = Recorded {
                        method: method.to_string(),
                        path: uri.path().to_owned(),
                        query: uri.query().unwrap_or_default().to_owned(),
                        body: String::from_utf8_lossy(&body).into_owned(),
                    };
                    let held = hold(&recorded);
                    record.lock().expect("lock").push(recorded);
                    tokio::time::sleep(delay).await;
                    let target = format!(
                        "{upstream}{}",
                        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
                    );
                    let mut req = http.request(method, target).body(body);
                    for (k, v) in &headers {
                        if k != http::header::HOST && k != http::header::CONTENT_LENGTH {
                            req = req.header(k, v);
                        }
                    }
                    let resp = req.send().await.expect("moto answers");
                    let status = resp.status();
                    let resp_headers = resp.headers().clone();
                    let bytes = resp.bytes().await.expect("moto body");
                    if held {
                        std::future::pending::<()>().await;
                    }
                    let mut out = http::Response::builder().status(status);
                    for (k, v) in &resp_headers {
                        if k != http::header::CONTENT_LENGTH && k != http::header::TRANSFER_ENCODING
                        {
                            out = out.header(k, v);
                        }
                    }
                    out.body(axum::body::Body::from(bytes)).expect("response")
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Recorder {
            url,
            seen,
            _shutdown: tx,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().expect("lock").clone()
    }

    /// The query-protocol calls of one action (e.g. `AssumeRole`).
    pub fn calls(&self, action: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.action().as_deref() == Some(action))
            .collect()
    }

    /// S3 calls: method, path and exact query (`""` for CreateBucket's `PUT /bucket/`).
    pub fn s3_calls(&self, method: &str, path: &str, query: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path == path && r.query == query)
            .count()
    }
}

/// A task as the control plane would lease it (payload shaped like `objects::render`).
pub struct TaskBuilder {
    pub object_id: Uuid,
    pub control_plane: Uuid,
    pub kind: String,
    pub name: String,
}

impl TaskBuilder {
    pub fn new(kind: &str, name: &str) -> TaskBuilder {
        TaskBuilder {
            object_id: Uuid::new_v4(),
            control_plane: Uuid::new_v4(),
            kind: kind.to_owned(),
            name: name.to_owned(),
        }
    }

    /// `qleet-NAME-ID8`, as the control plane names cloud resources.
    pub fn cloud_name(&self) -> String {
        format!(
            "qleet-{}-{}",
            self.name,
            &self.object_id.simple().to_string()[..8]
        )
    }

    pub fn tags(&self) -> Value {
        json!({
            "qleet:managed": "true",
            "qleet:control-plane": self.control_plane.to_string(),
            "qleet:object-id": self.object_id.to_string(),
            "qleet:object": format!("{}/{}", self.kind, self.name),
        })
    }

    pub fn task(&self, operation: &str, resource: Value) -> LeasedTask {
        LeasedTask {
            id: Uuid::new_v4(),
            operation: operation.to_owned(),
            object_id: self.object_id,
            object_kind: self.kind.clone(),
            object_name: self.name.clone(),
            generation: 1,
            payload: json!({
                "controlPlane": self.control_plane,
                "object": { "id": self.object_id, "kind": self.kind, "name": self.name },
                "tags": self.tags(),
                "resource": resource,
            }),
            lease_id: Uuid::new_v4(),
            lease_expires_at: chrono::Utc::now() + chrono::Duration::seconds(60),
            attempt: 1,
        }
    }
}

pub fn account(external_id: Option<&str>) -> Value {
    json!({
        "accountId": ACCOUNT,
        "roleArn": ROLE_ARN,
        "externalId": external_id,
        "region": REGION,
    })
}

/// A context with the given AWS side and no clusters.
pub fn context(aws: Aws) -> Context {
    Context {
        aws,
        clusters: Clusters::default(),
        helm: PathBuf::from("/nonexistent/helm"),
        rollout_wait: Duration::from_secs(5),
    }
}

pub use qleet_test_support::db::fresh_database;
