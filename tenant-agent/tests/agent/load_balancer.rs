//! A Gateway's `loadBalancerHostname`: the payload the control plane renders for a Gateway is
//! applied (ingress-nginx rendered by a stand-in `helm`), then the ingress controller Service's
//! load balancer address is reported; until the cloud has assigned one the task fails to be
//! retried. The API server is the test-support in-memory one, plus the Service's status.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Service;
use qleet_agent::k8s::Clusters;
use qleet_agent::task::{self, Context};
use qleet_control_plane::objects::kinds::Builtin;
use qleet_control_plane::objects::refs::ObjKey;
use qleet_control_plane::objects::render::{Input, desired};
use qleet_protocol::TaskResult;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{Moto, TaskBuilder};
use qleet_test_support::kube::{ApiServer, mock_client};

const SERVICE: &str = "/api/v1/namespaces/qleet-gateway/services/ingress-nginx-controller";

/// The in-memory API server, which also serves cert-manager's API group for discovery and
/// answers the controller Service with `ingress` as its load balancer status once set (the
/// cloud's doing, never the agent's).
fn cluster(ingress: Arc<Mutex<Option<Value>>>) -> (kube::Client, ApiServer) {
    let api = ApiServer::default();
    let server = api.clone();
    let client = mock_client(move |parts, bytes| {
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(bytes).expect("request body is JSON")
        };
        let path = parts.uri.path();
        let (status, mut answer) = if path == "/apis/cert-manager.io/v1" {
            (
                200,
                json!({
                    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "cert-manager.io/v1",
                    "resources": [{ "name": "clusterissuers", "singularName": "clusterissuer", "namespaced": false,
                                    "kind": "ClusterIssuer", "verbs": ["get", "list", "create", "update", "patch", "delete"] }],
                }),
            )
        } else {
            server.answer(
                parts.method.as_str(),
                path,
                parts.uri.query().unwrap_or_default(),
                body,
            )
        };
        if parts.method == http::Method::GET
            && path == SERVICE
            && status == 200
            && let Some(i) = ingress.lock().expect("lock").clone()
        {
            answer["status"] = json!({ "loadBalancer": { "ingress": [i] } });
        }
        (status, serde_json::to_vec(&answer).expect("json"))
    });
    (client, api)
}

/// A stand-in with helm's CLI contract that renders ingress-nginx's controller Service for the
/// `ingress-nginx` release and nothing for the others.
fn fake_helm(dir: &Path) -> PathBuf {
    let helm = dir.join("helm");
    std::fs::write(
        &helm,
        "#!/bin/sh\ncat > /dev/null\nif [ \"$2\" = ingress-nginx ]; then\nprintf 'apiVersion: v1\\nkind: Service\\nmetadata:\\n  name: ingress-nginx-controller\\nspec:\\n  type: LoadBalancer\\n  ports:\\n  - name: http\\n    port: 80\\n    targetPort: http\\n  selector:\\n    app.kubernetes.io/name: ingress-nginx\\n'\nfi\n",
    )
    .expect("script");
    std::fs::set_permissions(&helm, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    helm
}

/// The Gateway's payload exactly as the control plane renders it.
fn gateway_resource(g: &TaskBuilder) -> Value {
    let key = ObjKey::new("Gateway", g.name.clone());
    let spec = json!({ "runtime": "KubernetesRuntime/prod", "host": "shop.example.com", "tls": { "issuer": "selfsigned" } });
    let outputs = BTreeMap::from([(
        ObjKey::new("KubernetesRuntime", "prod"),
        json!({ "clusterName": "prod-1", "endpoint": "https://k8s.test" }),
    )]);
    let input = Input {
        control_plane: g.control_plane,
        id: g.object_id,
        key: &key,
        spec: &spec,
        outputs: &outputs,
        own_outputs: &json!({}),
        changed_by: None,
        incarnation: 0,
    };
    desired(Builtin::Gateway, &input).expect("render").payload["resource"].clone()
}

fn failed(r: TaskResult) -> (String, String, bool) {
    match r {
        TaskResult::Failed {
            code,
            message,
            retryable,
        } => (code, message, retryable),
        TaskResult::Succeeded { outputs } => panic!("succeeded: {outputs:?}"),
    }
}

#[tokio::test]
async fn a_gateway_reports_its_load_balancer_address_and_fails_to_be_retried_until_it_has_one() {
    let moto = Moto::start().await;
    let dir = std::env::temp_dir().join(format!("qleet-agent-lb-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ingress: Arc<Mutex<Option<Value>>> = Arc::default();
    let (client, api) = cluster(ingress.clone());
    let ctx = Context {
        aws: moto.agent_aws(&moto.url, "ambient", "ambient").await,
        clusters: Clusters::from_clients([(
            "prod-1".to_owned(),
            client,
            "https://k8s.test".to_owned(),
        )]),
        helm: fake_helm(&dir),
        rollout_wait: std::time::Duration::from_secs(5),
    };
    let g = TaskBuilder::new("Gateway", "web");
    let resource = gateway_resource(&g);

    // Applied, but the cloud has not given the load balancer an address yet.
    let (code, message, retryable) =
        failed(task::run(&ctx, &g.task("ensure", resource.clone())).await);
    assert_eq!((code.as_str(), retryable), ("LoadBalancerPending", true));
    assert_eq!(
        message,
        "Service qleet-gateway/ingress-nginx-controller has no load balancer address yet (status.loadBalancer.ingress is empty); the cloud may still be creating it"
    );
    let applied = api.applied(SERVICE);
    assert_eq!(applied.len(), 1);
    let svc: Service = serde_json::from_value(applied[0].body.clone()).expect("a Service");
    assert_eq!(
        svc.spec.and_then(|s| s.type_).as_deref(),
        Some("LoadBalancer")
    );

    // An AWS load balancer: a host name.
    *ingress.lock().expect("lock") =
        Some(json!({ "hostname": "a1b2c3-123.eu-west-1.elb.amazonaws.com" }));
    match task::run(&ctx, &g.task("ensure", resource.clone())).await {
        TaskResult::Succeeded { outputs } => assert_eq!(
            Value::Object(outputs),
            json!({ "loadBalancerHostname": "a1b2c3-123.eu-west-1.elb.amazonaws.com" })
        ),
        other => panic!("{other:?}"),
    }

    // A load balancer known by its IP only.
    *ingress.lock().expect("lock") = Some(json!({ "ip": "203.0.113.7" }));
    match task::run(&ctx, &g.task("ensure", resource)).await {
        TaskResult::Succeeded { outputs } => assert_eq!(
            Value::Object(outputs),
            json!({ "loadBalancerHostname": "203.0.113.7" })
        ),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[tokio::test]
async fn a_load_balancer_service_the_apply_did_not_make_is_a_permanent_error() {
    let moto = Moto::start().await;
    let (client, _api) = cluster(Arc::default());
    let ctx = Context {
        aws: moto.agent_aws(&moto.url, "ambient", "ambient").await,
        clusters: Clusters::from_clients([(
            "prod-1".to_owned(),
            client,
            "https://k8s.test".to_owned(),
        )]),
        helm: "/nonexistent/helm".into(),
        rollout_wait: std::time::Duration::from_secs(5),
    };
    let g = TaskBuilder::new("Gateway", "web");
    let resource = json!({
        "runtime": { "clusterName": "prod-1" },
        "namespace": "qleet-gateway",
        "manifests": [],
        "secrets": [],
        "loadBalancer": { "namespace": "qleet-gateway", "name": "ingress-nginx-controller" },
    });
    let (code, message, retryable) = failed(task::run(&ctx, &g.task("ensure", resource)).await);
    assert_eq!(
        (code.as_str(), retryable),
        ("LoadBalancerServiceMissing", false)
    );
    assert!(message.contains("ingress-nginx-controller"), "{message}");
}
