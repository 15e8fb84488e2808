#![cfg(feature = "kubernetes")]
//! The Kubernetes runtime driver. No API server can run on these machines, so: every manifest is
//! checked strictly against its k8s-openapi type; the driver's conversation with the API server
//! is checked request by request against a scripted one (kube's `tower-test` mock); and one test
//! runs against a real cluster when `KUBECONFIG` is set.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::client::Body;
use qleet::fleet::driver::{ControlPlaneSpec, Endpoint, RuntimeDriver, RuntimeStatus};
use qleet::fleet::kubernetes::{
    KubernetesDriver, KubernetesSettings, endpoint, manifests, namespace_name,
};
use qleet_test_support::kube::{expect_strictly, strictly};
use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;

const DATABASE_URL: &str = "postgres://qleet_cp_role:s3cret-pa55word@db.internal:5432/qleet_cp";
const VERIFYING_KEY: &str = "dGhpcy1pcy1hLXB1YmxpYy1rZXktb2YtMzItYnl0ZXM";

fn spec() -> ControlPlaneSpec {
    ControlPlaneSpec {
        id: Uuid::new_v4(),
        org_id: Uuid::new_v4(),
        database_url: SecretString::from(DATABASE_URL),
        verifying_key: VERIFYING_KEY.to_owned(),
    }
}

fn settings() -> KubernetesSettings {
    KubernetesSettings {
        image: "registry.example/qleet:1.2.3".into(),
        gateway_namespace: "qleet-system".into(),
        gateway_pod_labels: BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), "qleet".to_owned()),
            (
                "app.kubernetes.io/component".to_owned(),
                "gateway".to_owned(),
            ),
        ]),
        delete_poll_interval: Duration::from_millis(1),
        delete_poll_attempts: 5,
        ..KubernetesSettings::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests, strictly
// ---------------------------------------------------------------------------------------------

fn manifest_of_kind(manifests: &[Value], kind: &str) -> Value {
    manifests
        .iter()
        .find(|m| m["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} among the manifests"))
        .clone()
}

#[test]
fn every_manifest_is_exactly_a_valid_kubernetes_object_in_apply_order() {
    let spec = spec();
    let all = manifests(&spec, &settings());
    let kinds: Vec<(&str, &str)> = all
        .iter()
        .map(|m| {
            (
                m["apiVersion"].as_str().unwrap_or(""),
                m["kind"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("v1", "Namespace"),
            ("v1", "ServiceAccount"),
            ("v1", "Secret"),
            ("networking.k8s.io/v1", "NetworkPolicy"),
            ("v1", "ResourceQuota"),
            ("v1", "LimitRange"),
            ("apps/v1", "Deployment"),
            ("v1", "Service"),
        ]
    );
    for manifest in &all {
        match manifest["kind"].as_str().unwrap_or("") {
            "Namespace" => drop(expect_strictly::<Namespace>(manifest)),
            "ServiceAccount" => drop(expect_strictly::<ServiceAccount>(manifest)),
            "Secret" => drop(expect_strictly::<Secret>(manifest)),
            "NetworkPolicy" => drop(expect_strictly::<NetworkPolicy>(manifest)),
            "ResourceQuota" => drop(expect_strictly::<ResourceQuota>(manifest)),
            "LimitRange" => drop(expect_strictly::<LimitRange>(manifest)),
            "Deployment" => drop(expect_strictly::<Deployment>(manifest)),
            "Service" => drop(expect_strictly::<Service>(manifest)),
            other => panic!("unexpected kind {other}"),
        }
    }
}

#[test]
fn the_strict_check_rejects_a_misspelt_field_and_a_wrong_kind() {
    let mut deployment = manifest_of_kind(&manifests(&spec(), &settings()), "Deployment");
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = json!({});
    let err = strictly::<Deployment>(&deployment).expect_err("a misspelt field must fail");
    assert!(err.contains("containers[0].readinesProbe"), "{err}");

    let service = manifest_of_kind(&manifests(&spec(), &settings()), "Service");
    assert!(strictly::<Deployment>(&service).is_err());
}

#[test]
fn every_object_is_labelled_with_its_control_plane_and_organisation_and_lives_in_its_namespace() {
    let spec = spec();
    let ns = namespace_name(spec.id);
    assert_eq!(ns, format!("qleet-cp-{}", spec.id));
    assert!(ns.len() <= 63, "{ns} is longer than a DNS label");
    for manifest in manifests(&spec, &settings()) {
        let what = format!("{} {}", manifest["kind"], manifest["metadata"]["name"]);
        let labels = &manifest["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/managed-by"], "qleet", "{what}");
        assert_eq!(
            labels["qleet.io/control-plane"],
            spec.id.to_string(),
            "{what}"
        );
        assert_eq!(
            labels["qleet.io/organization"],
            spec.org_id.to_string(),
            "{what}"
        );
        if manifest["kind"] == "Namespace" {
            assert_eq!(manifest["metadata"]["name"], ns.as_str());
            assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
        } else {
            assert_eq!(manifest["metadata"]["namespace"], ns.as_str(), "{what}");
        }
    }
}

#[test]
fn only_gateway_pods_from_the_gateway_namespace_may_reach_the_control_plane_port() {
    let settings = settings();
    let policy: NetworkPolicy = expect_strictly(&manifest_of_kind(
        &manifests(&spec(), &settings),
        "NetworkPolicy",
    ));
    let spec = policy.spec.expect("spec");
    // An empty selector: every pod of the tenant namespace is covered.
    assert_eq!(spec.pod_selector.unwrap_or_default(), Default::default());
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
    assert!(spec.egress.is_none());
    let ingress = spec.ingress.expect("ingress rules");
    assert_eq!(ingress.len(), 1, "one rule, or a second one could widen it");
    let from = ingress[0].from.as_ref().expect("peers");
    assert_eq!(from.len(), 1, "one peer: both selectors must hold at once");
    let peer = &from[0];
    assert!(peer.ip_block.is_none());
    let namespaces = peer
        .namespace_selector
        .as_ref()
        .expect("namespace selector");
    assert_eq!(
        namespaces.match_labels,
        Some(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            "qleet-system".to_owned()
        )]))
    );
    assert!(namespaces.match_expressions.is_none());
    let pods = peer.pod_selector.as_ref().expect("pod selector");
    assert_eq!(
        pods.match_labels.as_ref(),
        Some(&settings.gateway_pod_labels)
    );
    let ports = ingress[0].ports.as_ref().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    assert_eq!(
        ports[0].port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8090))
    );
    assert!(ports[0].end_port.is_none());
}

#[test]
fn the_control_plane_pod_runs_locked_down_with_bounded_resources() {
    let settings = settings();
    let all = manifests(&spec(), &settings);
    let deployment: Deployment = expect_strictly(&manifest_of_kind(&all, "Deployment"));
    let pod = deployment
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec");
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.service_account_name.as_deref(), Some("qleet-cp"));
    let pod_security = pod.security_context.expect("pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert!(pod_security.run_as_user.is_some_and(|uid| uid != 0));
    assert_eq!(
        pod_security.seccomp_profile.expect("seccomp").type_,
        "RuntimeDefault"
    );
    assert_eq!(pod.containers.len(), 1);
    let container = &pod.containers[0];
    let security = container
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert!(security.privileged.is_none());
    let capabilities = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(capabilities.drop, Some(vec!["ALL".to_owned()]));
    assert!(capabilities.add.is_none());
    let resources = container.resources.as_ref().expect("resources");
    let quantities = |map: Option<
        &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| {
        map.expect("quantities")
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        quantities(resources.limits.as_ref()),
        BTreeMap::from([
            ("cpu".to_owned(), settings.cpu_limit.clone()),
            ("memory".to_owned(), settings.memory_limit.clone())
        ])
    );
    assert_eq!(
        quantities(resources.requests.as_ref()),
        BTreeMap::from([
            ("cpu".to_owned(), settings.cpu_request.clone()),
            ("memory".to_owned(), settings.memory_request.clone())
        ])
    );

    let service_account: ServiceAccount =
        expect_strictly(&manifest_of_kind(&all, "ServiceAccount"));
    assert_eq!(service_account.automount_service_account_token, Some(false));

    let quota: ResourceQuota = expect_strictly(&manifest_of_kind(&all, "ResourceQuota"));
    let hard = quota.spec.expect("spec").hard.expect("hard");
    assert_eq!(hard["pods"].0, "2");
    assert_eq!(hard["limits.memory"].0, settings.quota_memory);
    assert_eq!(hard["services.loadbalancers"].0, "0");
    assert_eq!(hard["services.nodeports"].0, "0");

    let limits: LimitRange = expect_strictly(&manifest_of_kind(&all, "LimitRange"));
    let item = &limits.spec.expect("spec").limits[0];
    assert_eq!(item.type_, "Container");
    assert_eq!(
        item.max.as_ref().expect("max")["memory"].0,
        settings.memory_limit
    );
}

#[test]
fn the_deployment_runs_the_control_plane_command_with_probes_and_its_identity() {
    let spec = spec();
    let all = manifests(&spec, &settings());
    let deployment: Deployment = expect_strictly(&manifest_of_kind(&all, "Deployment"));
    let dspec = deployment.spec.expect("spec");
    assert_eq!(dspec.replicas, Some(1));
    let selector = dspec.selector.match_labels.expect("selector");
    let pod_labels = dspec
        .template
        .metadata
        .expect("template metadata")
        .labels
        .expect("labels");
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
    let container = &dspec.template.spec.expect("pod").containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("registry.example/qleet:1.2.3")
    );
    assert_eq!(
        container.command,
        Some(vec!["qleet-control-plane".to_owned()])
    );
    assert_eq!(container.args, None);
    // Each variable as where its value comes from: `value X` or `secret NAME/KEY`.
    let env: BTreeMap<String, String> = container
        .env
        .as_ref()
        .expect("env")
        .iter()
        .map(|var| {
            let secret = var
                .value_from
                .as_ref()
                .and_then(|from| from.secret_key_ref.as_ref());
            let source = match (&var.value, secret) {
                (Some(value), None) => format!("value {value}"),
                (None, Some(key)) => format!("secret {}/{}", key.name, key.key),
                other => format!("{other:?}"),
            };
            (var.name.clone(), source)
        })
        .collect();
    assert_eq!(env["QLEET_CP_ID"], format!("value {}", spec.id));
    assert_eq!(env["QLEET_CP_LISTEN"], "value 0.0.0.0:8090");
    assert_eq!(env["DATABASE_URL"], "secret qleet-cp/DATABASE_URL");
    assert_eq!(
        env["QLEET_CP_VERIFYING_KEY"],
        "secret qleet-cp/QLEET_CP_VERIFYING_KEY"
    );
    let probe_path = |probe: Option<&k8s_openapi::api::core::v1::Probe>| {
        let get = probe
            .and_then(|p| p.http_get.clone())
            .expect("httpGet probe");
        (get.path.unwrap_or_default(), get.port)
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    assert_eq!(
        probe_path(container.readiness_probe.as_ref()),
        ("/readyz".to_owned(), IntOrString::Int(8090))
    );
    assert_eq!(
        probe_path(container.liveness_probe.as_ref()),
        ("/healthz".to_owned(), IntOrString::Int(8090))
    );

    let service: Service = expect_strictly(&manifest_of_kind(&all, "Service"));
    let sspec = service.spec.expect("spec");
    assert_eq!(sspec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(sspec.selector.as_ref(), Some(&selector));
    assert_eq!(sspec.ports.expect("ports")[0].port, 8090);
    assert_eq!(
        endpoint(spec.id),
        Endpoint(format!("http://qleet-cp.qleet-cp-{}.svc:8090", spec.id))
    );
}

#[test]
fn the_database_url_is_in_the_secret_and_never_inline_in_the_deployment() {
    let all = manifests(&spec(), &settings());
    let secret: Secret = expect_strictly(&manifest_of_kind(&all, "Secret"));
    let data = secret.data.expect("data");
    assert_eq!(data["DATABASE_URL"].0, DATABASE_URL.as_bytes());
    assert_eq!(data["QLEET_CP_VERIFYING_KEY"].0, VERIFYING_KEY.as_bytes());
    assert!(secret.string_data.is_none());

    for manifest in all.iter().filter(|m| m["kind"] != "Secret") {
        let text = manifest.to_string();
        assert!(
            !text.contains("s3cret-pa55word"),
            "{} carries the password",
            manifest["kind"]
        );
        assert!(
            !text.contains("db.internal"),
            "{} carries the database URL",
            manifest["kind"]
        );
    }
}

#[test]
fn a_new_database_url_rolls_the_pods() {
    let mut spec = spec();
    let hash = |spec: &ControlPlaneSpec| {
        manifest_of_kind(&manifests(spec, &settings()), "Deployment")["spec"]["template"]["metadata"]
            ["annotations"]
            .clone()
    };
    let before = hash(&spec);
    assert_eq!(
        before,
        hash(&spec),
        "the same spec gives the same pod template"
    );
    spec.database_url = SecretString::from("postgres://qleet_cp_role:rotated@db.internal/qleet_cp");
    assert_ne!(before, hash(&spec));
}

// ---------------------------------------------------------------------------------------------
// The conversation with a scripted API server
// ---------------------------------------------------------------------------------------------

type ApiServer = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Reply = tower_test::mock::SendResponse<Response<Body>>;

fn mock_driver(settings: KubernetesSettings) -> (KubernetesDriver, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (KubernetesDriver::new(client, settings), handle)
}

/// One request the driver made, as the API server saw it.
struct Seen {
    content_type: Option<String>,
    body: Value,
    reply: Reply,
}

/// Takes the next request and checks its method, path and query (the pairs in any order).
async fn expect_request(
    api: &mut ApiServer,
    method: Method,
    path: &str,
    query: &[(&str, &str)],
) -> Seen {
    let (request, reply) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .unwrap_or_else(|_| panic!("expected {method} {path}, but no request came"))
        .unwrap_or_else(|| panic!("expected {method} {path}, but the client went away"));
    let (parts, body) = request.into_parts();
    let mut got_query: Vec<(String, String)> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    got_query.sort();
    let mut want_query: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    want_query.sort();
    assert_eq!(
        (&parts.method, parts.uri.path(), &got_query),
        (&method, path, &want_query),
        "unexpected request {} {}",
        parts.method,
        parts.uri
    );
    let bytes = body.collect_bytes().await.expect("request body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("request body is JSON")
    };
    Seen {
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body,
        reply,
    }
}

fn respond(reply: Reply, status: u16, body: &Value) {
    let response = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response");
    reply.send_response(response);
}

/// What the API server answers for a missing object.
fn not_found(plural: &str, name: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{plural} \"{name}\" not found"), "reason": "NotFound",
        "details": { "name": name, "kind": plural }, "code": 404,
    })
}

/// The stored object an apply returns: what was sent plus the server's metadata.
fn stored(mut object: Value) -> Value {
    let meta = &mut object["metadata"];
    meta["uid"] = json!(Uuid::new_v4().to_string());
    meta["resourceVersion"] = json!("4711");
    meta["creationTimestamp"] = json!("2026-11-26T10:00:00Z");
    object
}

/// Once the driver is dropped, the API server must not have any request left.
async fn assert_no_more_requests(driver: KubernetesDriver, mut api: ApiServer) {
    drop(driver);
    let next = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .expect("the client is gone once the driver is dropped");
    if let Some((request, _)) = next {
        panic!(
            "unexpected extra request {} {}",
            request.method(),
            request.uri()
        );
    }
}

const APPLY_QUERY: [(&str, &str); 3] = [
    ("fieldManager", "qleet"),
    ("force", "true"),
    ("fieldValidation", "Strict"),
];

#[tokio::test]
async fn start_applies_every_object_server_side_in_order() {
    let spec = spec();
    let settings = settings();
    let ns = namespace_name(spec.id);
    let expected = [
        ("Namespace", format!("/api/v1/namespaces/{ns}")),
        (
            "ServiceAccount",
            format!("/api/v1/namespaces/{ns}/serviceaccounts/qleet-cp"),
        ),
        (
            "Secret",
            format!("/api/v1/namespaces/{ns}/secrets/qleet-cp"),
        ),
        (
            "NetworkPolicy",
            format!(
                "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/qleet-cp-gateway-only"
            ),
        ),
        (
            "ResourceQuota",
            format!("/api/v1/namespaces/{ns}/resourcequotas/qleet-cp"),
        ),
        (
            "LimitRange",
            format!("/api/v1/namespaces/{ns}/limitranges/qleet-cp"),
        ),
        (
            "Deployment",
            format!("/apis/apps/v1/namespaces/{ns}/deployments/qleet-cp"),
        ),
        (
            "Service",
            format!("/api/v1/namespaces/{ns}/services/qleet-cp"),
        ),
    ];
    let wanted_bodies = manifests(&spec, &settings);
    let (driver, mut api) = mock_driver(settings);
    let server = async {
        for ((kind, path), wanted) in expected.iter().zip(&wanted_bodies) {
            let seen = expect_request(&mut api, Method::PATCH, path, &APPLY_QUERY).await;
            assert_eq!(
                seen.content_type.as_deref(),
                Some("application/apply-patch+yaml"),
                "{kind}"
            );
            assert_eq!(seen.body["kind"], *kind);
            assert_eq!(
                &seen.body, wanted,
                "{kind} is applied as `manifests` builds it"
            );
            respond(
                seen.reply,
                if *kind == "Namespace" { 201 } else { 200 },
                &stored(seen.body),
            );
        }
    };
    let (started, ()) = tokio::join!(driver.start(&spec), server);
    started.expect("start");
    assert_no_more_requests(driver, api).await;
}

#[tokio::test]
async fn start_names_the_object_the_api_server_refused_and_stops_there() {
    let spec = spec();
    let ns = namespace_name(spec.id);
    let (driver, mut api) = mock_driver(settings());
    let server = async {
        let seen = expect_request(
            &mut api,
            Method::PATCH,
            &format!("/api/v1/namespaces/{ns}"),
            &APPLY_QUERY,
        )
        .await;
        respond(seen.reply, 200, &stored(seen.body));
        let seen = expect_request(
            &mut api,
            Method::PATCH,
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/qleet-cp"),
            &APPLY_QUERY,
        )
        .await;
        let message = format!(
            "serviceaccounts \"qleet-cp\" is forbidden: User \"system:serviceaccount:qleet:qleet\" \
             cannot patch resource \"serviceaccounts\" in the namespace \"{ns}\""
        );
        respond(
            seen.reply,
            403,
            &json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "message": message, "reason": "Forbidden", "code": 403 }),
        );
    };
    let (started, ()) = tokio::join!(driver.start(&spec), server);
    let err = started
        .expect_err("a refused apply fails start")
        .to_string();
    assert!(
        err.starts_with(&format!("applying ServiceAccount {ns}/qleet-cp: ")),
        "{err}"
    );
    assert!(
        err.contains("cannot patch resource \"serviceaccounts\""),
        "{err}"
    );
    assert!(err.contains("HTTP 403 Forbidden"), "{err}");
    assert_no_more_requests(driver, api).await;
}

/// The driver's `status` when the API server answers the Deployment GET with `status`/`body`.
async fn status_when_the_deployment_is(code: u16, body: Value, id: Uuid) -> RuntimeStatus {
    let ns = namespace_name(id);
    let (driver, mut api) = mock_driver(settings());
    let server = async {
        let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/qleet-cp");
        let seen = expect_request(&mut api, Method::GET, &path, &[]).await;
        respond(seen.reply, code, &body);
    };
    let (status, ()) = tokio::join!(driver.status(id), server);
    assert_no_more_requests(driver, api).await;
    status.expect("status")
}

/// A stored Deployment as `start` made it, with `replicas` and the given `status`.
fn deployment(spec: &ControlPlaneSpec, replicas: i32, status: Value) -> Value {
    let mut object = stored(manifest_of_kind(
        &manifests(spec, &settings()),
        "Deployment",
    ));
    object["spec"]["replicas"] = json!(replicas);
    object["status"] = status;
    object
}

#[tokio::test]
async fn status_is_ready_at_the_service_address_once_a_replica_is_available() {
    let spec = spec();
    let body = deployment(
        &spec,
        1,
        json!({ "observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1,
                "updatedReplicas": 1 }),
    );
    let status = status_when_the_deployment_is(200, body, spec.id).await;
    assert_eq!(
        status,
        RuntimeStatus::Ready(Endpoint(format!(
            "http://qleet-cp.qleet-cp-{}.svc:8090",
            spec.id
        )))
    );
}

#[tokio::test]
async fn status_is_starting_while_no_replica_is_available() {
    let spec = spec();
    let body = deployment(
        &spec,
        1,
        json!({ "observedGeneration": 1, "replicas": 1, "unavailableReplicas": 1,
                "conditions": [{ "type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                                 "message": "ReplicaSet \"qleet-cp-5d9c\" is progressing." }] }),
    );
    assert_eq!(
        status_when_the_deployment_is(200, body, spec.id).await,
        RuntimeStatus::Starting
    );
}

#[tokio::test]
async fn status_is_failed_with_the_reason_when_the_rollout_deadline_passed() {
    let spec = spec();
    let message = "ReplicaSet \"qleet-cp-5d9c\" has timed out progressing.";
    let body = deployment(
        &spec,
        1,
        json!({ "observedGeneration": 1, "replicas": 1, "unavailableReplicas": 1,
                "conditions": [
                    { "type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                      "message": "Deployment does not have minimum availability." },
                    { "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                      "message": message },
                ] }),
    );
    let status = status_when_the_deployment_is(200, body, spec.id).await;
    assert_eq!(
        status,
        RuntimeStatus::Failed(format!("ProgressDeadlineExceeded: {message}"))
    );
}

#[tokio::test]
async fn status_is_stopped_when_scaled_to_zero_or_never_started() {
    let spec = spec();
    let body = deployment(&spec, 0, json!({ "observedGeneration": 2 }));
    assert_eq!(
        status_when_the_deployment_is(200, body, spec.id).await,
        RuntimeStatus::Stopped
    );
    let missing = not_found("deployments.apps", "qleet-cp");
    assert_eq!(
        status_when_the_deployment_is(404, missing, spec.id).await,
        RuntimeStatus::Stopped
    );
}

#[tokio::test]
async fn status_reports_an_api_server_failure_as_a_driver_error() {
    let id = Uuid::new_v4();
    let ns = namespace_name(id);
    let (driver, mut api) = mock_driver(settings());
    let server = async {
        let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/qleet-cp");
        let seen = expect_request(&mut api, Method::GET, &path, &[]).await;
        respond(
            seen.reply,
            500,
            &json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure",
                     "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500 }),
        );
    };
    let (status, ()) = tokio::join!(driver.status(id), server);
    let err = status.expect_err("a 500 is an error").to_string();
    assert_eq!(
        err,
        format!(
            "reading Deployment {ns}/qleet-cp: etcdserver: request timed out (HTTP 500 InternalError)"
        )
    );
}

#[tokio::test]
async fn stop_scales_the_deployment_to_zero_through_its_scale_subresource() {
    let id = Uuid::new_v4();
    let ns = namespace_name(id);
    let (driver, mut api) = mock_driver(settings());
    let server = async {
        let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/qleet-cp/scale");
        let seen =
            expect_request(&mut api, Method::PATCH, &path, &[("fieldManager", "qleet")]).await;
        assert_eq!(
            seen.content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        assert_eq!(seen.body, json!({ "spec": { "replicas": 0 } }));
        respond(
            seen.reply,
            200,
            &json!({ "kind": "Scale", "apiVersion": "autoscaling/v1",
                     "metadata": { "name": "qleet-cp", "namespace": ns, "resourceVersion": "4712" },
                     "spec": { "replicas": 0 },
                     "status": { "replicas": 1, "selector": "app.kubernetes.io/name=qleet-control-plane" } }),
        );
    };
    let (stopped, ()) = tokio::join!(driver.stop(id), server);
    stopped.expect("stop");
    assert_no_more_requests(driver, api).await;
}

#[tokio::test]
async fn stop_of_a_control_plane_that_is_not_there_succeeds() {
    let id = Uuid::new_v4();
    let ns = namespace_name(id);
    let (driver, mut api) = mock_driver(settings());
    let server = async {
        let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/qleet-cp/scale");
        let seen =
            expect_request(&mut api, Method::PATCH, &path, &[("fieldManager", "qleet")]).await;
        respond(seen.reply, 404, &not_found("deployments.apps", "qleet-cp"));
    };
    let (stopped, ()) = tokio::join!(driver.stop(id), server);
    stopped.expect("stopping nothing is done");
    assert_no_more_requests(driver, api).await;
}

fn terminating_namespace(ns: &str) -> Value {
    json!({
        "kind": "Namespace", "apiVersion": "v1",
        "metadata": { "name": ns, "uid": "2c4d", "resourceVersion": "4713",
                      "deletionTimestamp": "2026-11-26T10:05:00Z",
                      "labels": { "kubernetes.io/metadata.name": ns } },
        "spec": { "finalizers": ["kubernetes"] },
        "status": { "phase": "Terminating" },
    })
}

#[tokio::test]
async fn delete_removes_the_namespace_in_the_foreground_and_waits_until_it_is_gone() {
    let id = Uuid::new_v4();
    let ns = namespace_name(id);
    let path = format!("/api/v1/namespaces/{ns}");
    let (driver, mut api) = mock_driver(settings());
    let server = async {
        let seen = expect_request(&mut api, Method::DELETE, &path, &[]).await;
        assert_eq!(seen.body["propagationPolicy"], "Foreground");
        respond(seen.reply, 200, &terminating_namespace(&ns));
        let seen = expect_request(&mut api, Method::GET, &path, &[]).await;
        respond(seen.reply, 200, &terminating_namespace(&ns));
        let seen = expect_request(&mut api, Method::GET, &path, &[]).await;
        respond(seen.reply, 404, &not_found("namespaces", &ns));
    };
    let (deleted, ()) = tokio::join!(driver.delete(id), server);
    deleted.expect("delete");
    assert_no_more_requests(driver, api).await;
}

#[tokio::test]
async fn delete_of_a_namespace_that_is_already_gone_succeeds_at_once() {
    let id = Uuid::new_v4();
    let ns = namespace_name(id);
    let (driver, mut api) = mock_driver(settings());
    let server = async {
        let seen = expect_request(
            &mut api,
            Method::DELETE,
            &format!("/api/v1/namespaces/{ns}"),
            &[],
        )
        .await;
        respond(seen.reply, 404, &not_found("namespaces", &ns));
    };
    let (deleted, ()) = tokio::join!(driver.delete(id), server);
    deleted.expect("deleting nothing is done");
    assert_no_more_requests(driver, api).await;
}

#[tokio::test]
async fn delete_gives_up_when_the_namespace_stays_terminating() {
    let id = Uuid::new_v4();
    let ns = namespace_name(id);
    let path = format!("/api/v1/namespaces/{ns}");
    let settings = KubernetesSettings {
        delete_poll_attempts: 3,
        ..settings()
    };
    let (driver, mut api) = mock_driver(settings);
    let server = async {
        let seen = expect_request(&mut api, Method::DELETE, &path, &[]).await;
        respond(seen.reply, 200, &terminating_namespace(&ns));
        for _ in 0..3 {
            let seen = expect_request(&mut api, Method::GET, &path, &[]).await;
            respond(seen.reply, 200, &terminating_namespace(&ns));
        }
    };
    let (deleted, ()) = tokio::join!(driver.delete(id), server);
    let err = deleted
        .expect_err("a namespace that never goes is an error")
        .to_string();
    assert!(
        err.contains(&format!(
            "Namespace {ns} is still terminating after 3 checks"
        )),
        "{err}"
    );
    assert_no_more_requests(driver, api).await;
}

// ---------------------------------------------------------------------------------------------
// A real cluster, when there is one
// ---------------------------------------------------------------------------------------------

/// Runs only with `KUBECONFIG` set. The pod becomes Ready only if the cluster can pull
/// `QLEET_TEST_K8S_IMAGE` and reach `QLEET_TEST_K8S_DATABASE_URL`; the namespace is deleted
/// whatever the outcome.
#[tokio::test]
async fn a_control_plane_starts_and_is_deleted_in_a_real_cluster_when_kubeconfig_is_set() {
    if std::env::var_os("KUBECONFIG").is_none() {
        println!(
            "skipping: KUBECONFIG is not set (no Kubernetes API server can run on this machine)"
        );
        return;
    }
    let client = kube::Client::try_default()
        .await
        .expect("a client from KUBECONFIG");
    let mut settings = KubernetesSettings {
        delete_poll_interval: Duration::from_secs(2),
        delete_poll_attempts: 90,
        ..KubernetesSettings::default()
    };
    if let Ok(image) = std::env::var("QLEET_TEST_K8S_IMAGE") {
        settings.image = image;
    }
    let ready_within = Duration::from_secs(
        std::env::var("QLEET_TEST_K8S_READY_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(180),
    );
    let spec = ControlPlaneSpec {
        database_url: SecretString::from(
            std::env::var("QLEET_TEST_K8S_DATABASE_URL")
                .unwrap_or_else(|_| DATABASE_URL.to_owned()),
        ),
        ..spec()
    };
    let driver = KubernetesDriver::new(client, settings);

    let started = driver.start(&spec).await;
    let mut last = None;
    if started.is_ok() {
        let deadline = tokio::time::Instant::now() + ready_within;
        while tokio::time::Instant::now() < deadline {
            let status = driver.status(spec.id).await;
            let done = matches!(
                status,
                Ok(RuntimeStatus::Ready(_) | RuntimeStatus::Failed(_))
            );
            last = Some(status);
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    // Clean up before judging, so a failed run leaves nothing behind.
    let deleted = driver.delete(spec.id).await;
    started.expect("start");
    match last {
        Some(Ok(RuntimeStatus::Ready(endpoint))) => {
            assert_eq!(endpoint, qleet::fleet::kubernetes::endpoint(spec.id))
        }
        other => panic!("not Ready within {ready_within:?}: last status {other:?}"),
    }
    deleted.expect("delete");
    assert_eq!(
        driver.status(spec.id).await.expect("status"),
        RuntimeStatus::Stopped
    );
}
