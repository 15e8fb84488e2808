//! The Kubernetes runtime driver: each tenant's control plane runs as one pod in a namespace of
//! its own (`qleet-cp-<id>`), reachable only from the management plane's gateway pods. Every
//! object is written by server-side apply under the field manager `qleet`, so `start` is
//! idempotent and converges after a crash at any step; `delete` removes the namespace and waits
//! until the API server no longer knows it. The manifests come from the pure function
//! [`manifests`], which the tests check against the k8s-openapi types field by field.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, ValidationDirective,
};
use kube::core::Status;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::driver::{
    BoxFuture, ControlPlaneSpec, DriverError, Endpoint, RuntimeDriver, RuntimeStatus,
};

/// The field manager every apply and patch is made under.
pub const FIELD_MANAGER: &str = "qleet";
/// The port the control plane listens on inside its pod, and the Service's port.
pub const PORT: u16 = 8090;
/// The name of every namespaced object the driver makes (there is one of each kind).
pub const OBJECT_NAME: &str = "qleet-cp";
/// The NetworkPolicy's name.
pub const NETWORK_POLICY_NAME: &str = "qleet-cp-gateway-only";

const CONTAINER_NAME: &str = "control-plane";
const APP_NAME: &str = "qleet-control-plane";
/// The control-plane binary the image has on its `PATH`.
const CONTROL_PLANE_COMMAND: &str = "qleet-control-plane";

/// How control planes are run in the cluster. Quantities are Kubernetes quantity strings
/// (`"500m"`, `"256Mi"`); the API server rejects a malformed one when `start` applies it.
#[derive(Debug, Clone)]
pub struct KubernetesSettings {
    /// The image the control-plane pods run (it has `qleet-control-plane` on its `PATH`); pin a
    /// tag or digest.
    pub image: String,
    /// The namespace the management plane's gateway pods run in.
    pub gateway_namespace: String,
    /// Labels selecting the gateway pods in `gateway_namespace`: the only pods allowed to reach a
    /// control plane. Empty means every pod of that namespace.
    pub gateway_pod_labels: BTreeMap<String, String>,
    /// The non-root user id the container runs as (the image's own user may be root or a name,
    /// which `runAsNonRoot` alone cannot check).
    pub run_as_user: i64,
    /// CPU the control-plane container requests.
    pub cpu_request: String,
    /// CPU the control-plane container may use at most.
    pub cpu_limit: String,
    /// Memory the control-plane container requests.
    pub memory_request: String,
    /// Memory the control-plane container may use at most (it is killed above it).
    pub memory_limit: String,
    /// Pods the tenant namespace may hold at once (2 leaves room for a rolling update).
    pub quota_pods: u32,
    /// Total CPU (requests and limits) of all pods in the tenant namespace.
    pub quota_cpu: String,
    /// Total memory (requests and limits) of all pods in the tenant namespace.
    pub quota_memory: String,
    /// How long `delete` waits between checks that the namespace is gone.
    pub delete_poll_interval: Duration,
    /// How many times `delete` checks before it gives up with an error (a later call resumes).
    pub delete_poll_attempts: u32,
}

impl Default for KubernetesSettings {
    fn default() -> Self {
        Self {
            // What `scripts/build-images.sh` tags by default.
            image: concat!(
                "ghcr.io/qleet/qleet-control-plane:",
                env!("CARGO_PKG_VERSION")
            )
            .into(),
            gateway_namespace: "qleet".into(),
            gateway_pod_labels: BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "qleet".to_owned(),
            )]),
            run_as_user: 65532,
            cpu_request: "100m".into(),
            cpu_limit: "500m".into(),
            memory_request: "128Mi".into(),
            memory_limit: "256Mi".into(),
            quota_pods: 2,
            quota_cpu: "1".into(),
            quota_memory: "512Mi".into(),
            delete_poll_interval: Duration::from_secs(2),
            // Two minutes at the default interval: namespace finalisation usually takes seconds.
            delete_poll_attempts: 60,
        }
    }
}

/// The namespace a control plane runs in: `qleet-cp-<id>` (45 characters, within the 63 allowed).
pub fn namespace_name(id: Uuid) -> String {
    format!("qleet-cp-{}", id.hyphenated())
}

/// Where the gateway reaches a control plane: its Service's cluster DNS name.
pub fn endpoint(id: Uuid) -> Endpoint {
    Endpoint(format!(
        "http://{OBJECT_NAME}.{}.svc:{PORT}",
        namespace_name(id)
    ))
}

/// Every object of one control plane, in the order `start` applies them: the namespace and the
/// guard rails (NetworkPolicy, ResourceQuota, LimitRange) before the pod exists, so it is never
/// reachable by other pods nor unbounded, not even between two steps of a crashed `start`.
pub fn manifests(spec: &ControlPlaneSpec, settings: &KubernetesSettings) -> Vec<Value> {
    let ns = namespace_name(spec.id);
    let labels = json!({
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        "qleet.io/control-plane": spec.id.to_string(),
        "qleet.io/organization": spec.org_id.to_string(),
    });
    let selector = json!({
        "app.kubernetes.io/name": APP_NAME,
        "qleet.io/control-plane": spec.id.to_string(),
    });
    let meta = |name: &str| json!({ "name": name, "namespace": ns, "labels": labels });

    let mut namespace_labels = labels.clone();
    // Admission refuses any pod in the namespace that is not locked down like ours.
    namespace_labels["pod-security.kubernetes.io/enforce"] = json!("restricted");
    let namespace = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": ns, "labels": namespace_labels },
    });

    let service_account = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(OBJECT_NAME),
        "automountServiceAccountToken": false,
    });

    let database_url = spec.database_url.expose_secret();
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(OBJECT_NAME),
        "type": "Opaque",
        "data": {
            "DATABASE_URL": BASE64.encode(database_url),
            "QLEET_CP_VERIFYING_KEY": BASE64.encode(&spec.verifying_key),
        },
    });

    let network_policy = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(NETWORK_POLICY_NAME),
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress"],
            "ingress": [{
                // One peer with both selectors: gateway pods AND in the gateway namespace.
                "from": [{
                    "namespaceSelector": {
                        "matchLabels": { "kubernetes.io/metadata.name": settings.gateway_namespace },
                    },
                    "podSelector": { "matchLabels": settings.gateway_pod_labels },
                }],
                "ports": [{ "protocol": "TCP", "port": PORT }],
            }],
        },
    });

    let resource_quota = json!({
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": meta(OBJECT_NAME),
        "spec": {
            "hard": {
                "pods": settings.quota_pods.to_string(),
                "requests.cpu": settings.quota_cpu,
                "requests.memory": settings.quota_memory,
                "limits.cpu": settings.quota_cpu,
                "limits.memory": settings.quota_memory,
                "persistentvolumeclaims": "0",
                "services.loadbalancers": "0",
                "services.nodeports": "0",
            },
        },
    });

    let limit_range = json!({
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": meta(OBJECT_NAME),
        "spec": {
            "limits": [{
                "type": "Container",
                "default": { "cpu": settings.cpu_limit, "memory": settings.memory_limit },
                "defaultRequest": { "cpu": settings.cpu_request, "memory": settings.memory_request },
                "max": { "cpu": settings.cpu_limit, "memory": settings.memory_limit },
            }],
        },
    });

    let secret_env = |name: &str| {
        json!({
            "name": name,
            "valueFrom": { "secretKeyRef": { "name": OBJECT_NAME, "key": name } },
        })
    };
    let mut pod_labels = labels.clone();
    pod_labels["app.kubernetes.io/component"] = json!("control-plane");
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(OBJECT_NAME),
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 2,
            "selector": { "matchLabels": selector },
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    // Pods read the Secret only at start: a new value must roll them.
                    "annotations": { "qleet.io/config-hash": config_hash(spec) },
                },
                "spec": {
                    "serviceAccountName": OBJECT_NAME,
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": settings.run_as_user,
                        "runAsGroup": settings.run_as_user,
                        "seccompProfile": { "type": "RuntimeDefault" },
                    },
                    "containers": [{
                        "name": CONTAINER_NAME,
                        "image": settings.image,
                        "command": [CONTROL_PLANE_COMMAND],
                        "env": [
                            { "name": "QLEET_CP_ID", "value": spec.id.to_string() },
                            secret_env("QLEET_CP_VERIFYING_KEY"),
                            { "name": "QLEET_CP_LISTEN", "value": format!("0.0.0.0:{PORT}") },
                            secret_env("DATABASE_URL"),
                        ],
                        "ports": [{ "name": "http", "containerPort": PORT, "protocol": "TCP" }],
                        "readinessProbe": {
                            "httpGet": { "path": "/readyz", "port": PORT },
                            "periodSeconds": 5,
                        },
                        "livenessProbe": {
                            "httpGet": { "path": "/healthz", "port": PORT },
                            "initialDelaySeconds": 10,
                            "periodSeconds": 10,
                        },
                        "resources": {
                            "requests": { "cpu": settings.cpu_request, "memory": settings.memory_request },
                            "limits": { "cpu": settings.cpu_limit, "memory": settings.memory_limit },
                        },
                        "securityContext": {
                            "runAsNonRoot": true,
                            "readOnlyRootFilesystem": true,
                            "allowPrivilegeEscalation": false,
                            "capabilities": { "drop": ["ALL"] },
                        },
                        // The root filesystem is read-only; libraries may still want a /tmp.
                        "volumeMounts": [{ "name": "tmp", "mountPath": "/tmp" }],
                    }],
                    "volumes": [{ "name": "tmp", "emptyDir": { "sizeLimit": "64Mi" } }],
                },
            },
        },
    });

    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(OBJECT_NAME),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{ "name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP" }],
        },
    });

    vec![
        namespace,
        service_account,
        secret,
        network_policy,
        resource_quota,
        limit_range,
        deployment,
        service,
    ]
}

/// A digest of what the pods read from the Secret, so that changing it rolls the Deployment.
fn config_hash(spec: &ControlPlaneSpec) -> String {
    let mut hasher = Sha256::new();
    hasher.update(spec.database_url.expose_secret().as_bytes());
    hasher.update([0]);
    hasher.update(spec.verifying_key.as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Runs control planes in a Kubernetes cluster through its API server.
#[derive(Clone)]
pub struct KubernetesDriver {
    client: kube::Client,
    settings: KubernetesSettings,
}

impl KubernetesDriver {
    /// A driver acting through `client` (e.g. `kube::Client::try_default()`: in-cluster service
    /// account or `KUBECONFIG`). It needs the RBAC [`required_access`] lists (`qleet manifests`
    /// renders it as a ClusterRole).
    pub fn new(client: kube::Client, settings: KubernetesSettings) -> Self {
        Self { client, settings }
    }

    /// The settings the driver runs control planes with.
    pub fn settings(&self) -> &KubernetesSettings {
        &self.settings
    }

    #[tracing::instrument(skip_all, fields(control_plane.id = %spec.id, org.id = %spec.org_id), err)]
    async fn start_inner(&self, spec: &ControlPlaneSpec) -> Result<(), DriverError> {
        let ns = namespace_name(spec.id);
        let params = PatchParams::apply(FIELD_MANAGER)
            .force()
            .validation(ValidationDirective::Strict);
        for manifest in manifests(spec, &self.settings) {
            let kind = manifest["kind"].as_str().unwrap_or_default();
            let name = manifest["metadata"]["name"].as_str().unwrap_or_default();
            let (resource, namespaced) = api_resource(kind)?;
            let api: Api<DynamicObject> = if namespaced {
                Api::namespaced_with(self.client.clone(), &ns, &resource)
            } else {
                Api::all_with(self.client.clone(), &resource)
            };
            api.patch(name, &params, &Patch::Apply(&manifest))
                .await
                .map_err(|err| api_error("applying", kind, &ns, name, err))?;
        }
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(control_plane.id = %id), err)]
    async fn status_inner(&self, id: Uuid) -> Result<RuntimeStatus, DriverError> {
        let ns = namespace_name(id);
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
        let deployment = deployments
            .get_opt(OBJECT_NAME)
            .await
            .map_err(|err| api_error("reading", "Deployment", &ns, OBJECT_NAME, err))?;
        Ok(match deployment {
            None => RuntimeStatus::Stopped,
            Some(deployment) => deployment_status(id, &deployment),
        })
    }

    #[tracing::instrument(skip_all, fields(control_plane.id = %id), err)]
    async fn stop_inner(&self, id: Uuid) -> Result<(), DriverError> {
        let ns = namespace_name(id);
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
        // The scale subresource, not an apply: an apply of `replicas` alone under `qleet` would
        // drop every other field `qleet` owns. The next `start` takes `replicas` back by force.
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let patch = Patch::Merge(json!({ "spec": { "replicas": 0 } }));
        match deployments.patch_scale(OBJECT_NAME, &params, &patch).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(err) => Err(api_error(
                "scaling to 0",
                "Deployment",
                &ns,
                OBJECT_NAME,
                err,
            )),
        }
    }

    #[tracing::instrument(skip_all, fields(control_plane.id = %id), err)]
    async fn delete_inner(&self, id: Uuid) -> Result<(), DriverError> {
        let ns = namespace_name(id);
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        match namespaces.delete(&ns, &DeleteParams::foreground()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(()),
            Err(err) => return Err(api_error("deleting", "Namespace", "", &ns, err)),
        }
        for attempt in 1..=self.settings.delete_poll_attempts {
            let found = namespaces
                .get_opt(&ns)
                .await
                .map_err(|err| api_error("reading", "Namespace", "", &ns, err))?;
            if found.is_none() {
                return Ok(());
            }
            if attempt < self.settings.delete_poll_attempts {
                tokio::time::sleep(self.settings.delete_poll_interval).await;
            }
        }
        Err(DriverError(format!(
            "Namespace {ns} is still terminating after {} checks {:?} apart",
            self.settings.delete_poll_attempts, self.settings.delete_poll_interval
        )))
    }
}

impl RuntimeDriver for KubernetesDriver {
    fn start<'a>(&'a self, spec: &'a ControlPlaneSpec) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(self.start_inner(spec))
    }

    fn status(&self, id: Uuid) -> BoxFuture<'_, Result<RuntimeStatus, DriverError>> {
        Box::pin(self.status_inner(id))
    }

    fn stop(&self, id: Uuid) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(self.stop_inner(id))
    }

    fn delete(&self, id: Uuid) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(self.delete_inner(id))
    }
}

/// What a Deployment says about its control plane. A pod that serves wins over a failed
/// rollout: the gateway can still reach the old pod.
fn deployment_status(id: Uuid, deployment: &Deployment) -> RuntimeStatus {
    let spec_replicas = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1);
    if spec_replicas == 0 {
        return RuntimeStatus::Stopped;
    }
    let status = deployment.status.as_ref();
    if status.and_then(|s| s.available_replicas).unwrap_or(0) >= 1 {
        return RuntimeStatus::Ready(endpoint(id));
    }
    let deadline_exceeded = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| {
            c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        });
    match deadline_exceeded {
        Some(condition) => RuntimeStatus::Failed(format!(
            "ProgressDeadlineExceeded: {}",
            condition.message.as_deref().unwrap_or("no message")
        )),
        None => RuntimeStatus::Starting,
    }
}

/// The API resource of each kind [`manifests`] makes, and whether it lives in a namespace: how
/// `start` addresses each object, and (through [`required_access`]) what the driver's RBAC
/// grants. A kind missing here fails `start` (and the tests) rather than going unauthorised.
fn applied_kinds() -> [(ApiResource, bool); 8] {
    [
        (ApiResource::erase::<Namespace>(&()), false),
        (ApiResource::erase::<ServiceAccount>(&()), true),
        (ApiResource::erase::<Secret>(&()), true),
        (ApiResource::erase::<NetworkPolicy>(&()), true),
        (ApiResource::erase::<ResourceQuota>(&()), true),
        (ApiResource::erase::<LimitRange>(&()), true),
        (ApiResource::erase::<Deployment>(&()), true),
        (ApiResource::erase::<Service>(&()), true),
    ]
}

fn api_resource(kind: &str) -> Result<(ApiResource, bool), DriverError> {
    applied_kinds()
        .into_iter()
        .find(|(resource, _)| resource.kind == kind)
        .ok_or_else(|| DriverError(format!("no API resource known for kind {kind:?}")))
}

/// Verbs the driver needs on one API resource (`group` is empty for the core group; `resource`
/// may name a subresource, `deployments/scale`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub group: String,
    pub resource: String,
    pub verbs: Vec<&'static str>,
}

/// Everything the driver asks of the API server, and nothing else: the RBAC `qleet manifests`
/// grants the management plane. Server-side apply is authorised as `patch`, and as `create` too
/// when the object does not exist yet; `status` reads the Deployment, `stop` patches its scale,
/// `delete` deletes the namespace and reads it until it is gone.
pub fn required_access() -> Vec<Access> {
    let mut access: Vec<Access> = Vec::new();
    let mut grant = |group: &str, resource: &str, verb: &'static str| match access
        .iter_mut()
        .find(|a| a.group == group && a.resource == resource)
    {
        Some(a) if a.verbs.contains(&verb) => {}
        Some(a) => a.verbs.push(verb),
        None => access.push(Access {
            group: group.to_owned(),
            resource: resource.to_owned(),
            verbs: vec![verb],
        }),
    };
    for (resource, _) in applied_kinds() {
        grant(&resource.group, &resource.plural, "create");
        grant(&resource.group, &resource.plural, "patch");
    }
    let deployments = ApiResource::erase::<Deployment>(&());
    grant(&deployments.group, &deployments.plural, "get");
    grant(
        &deployments.group,
        &format!("{}/scale", deployments.plural),
        "patch",
    );
    let namespaces = ApiResource::erase::<Namespace>(&());
    grant(&namespaces.group, &namespaces.plural, "delete");
    grant(&namespaces.group, &namespaces.plural, "get");
    access
}

/// A readable error naming what was being done to which object, e.g.
/// `applying Deployment qleet-cp-…/qleet-cp: <API server's message> (HTTP 422 Invalid)`.
fn api_error(
    action: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    err: kube::Error,
) -> DriverError {
    let object = if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    };
    let cause = match &err {
        kube::Error::Api(status) => describe_status(status),
        other => other.to_string(),
    };
    DriverError(format!("{action} {kind} {object}: {cause}"))
}

fn describe_status(status: &Status) -> String {
    let message = if status.message.is_empty() {
        "the API server refused the request"
    } else {
        status.message.as_str()
    };
    match (status.code, status.reason.as_str()) {
        (0, "") => message.to_owned(),
        (code, "") => format!("{message} (HTTP {code})"),
        (code, reason) => format!("{message} (HTTP {code} {reason})"),
    }
}
