//! Kubernetes work: a rendered Workload (or Gateway, DomainName, Observability) applied to its
//! runtime with server-side apply (field manager `qleet-agent`), every object labelled with the
//! Qleet object's id, what the new revision dropped pruned, secret references materialised into
//! a Secret from the customer's Secrets Manager first, Helm charts rendered by `helm template`.
//!
//! The runtime is a cluster the agent is configured with ([`clusters`]), or an EKS cluster
//! Qleet made, reached with a token from the runtime's assumed role ([`eks`]). A payload may
//! name a Service whose load balancer address is reported (a Gateway's
//! `loadBalancerHostname`); until the cloud has assigned one, the task fails to be retried.
//!
//! Drift is observed with a server-side apply dry run compared with the live objects
//! ([`observe`]).
//!
//! Pruning uses an inventory ConfigMap (`qleet-inventory-<object id>`) in the workload's
//! namespace listing what the last apply made; an object is deleted only when it is in the
//! inventory, not in the new revision, and still carries this object's label.

pub mod clusters;
pub mod eks;
pub mod helm;
mod kinds;

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub use clusters::Clusters;

use crate::aws::{Account, Actor};
use crate::task::{self, Context, Payload, TaskError};

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "qleet-agent";
/// The label naming the Qleet object an object belongs to.
pub const OBJECT_LABEL: &str = "qleet.dev/object-id";
/// On a namespace Qleet made: the object whose apply made it.
pub const CREATED_BY: &str = "qleet.dev/created-by";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "qleet");

/// `payload.resource` of a Workload-like kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplySpec {
    /// The runtime's outputs (`clusterName`, `endpoint`, ...).
    pub runtime: Value,
    pub namespace: String,
    #[serde(default)]
    pub manifests: Vec<Value>,
    #[serde(default)]
    pub helm: Option<Helm>,
    #[serde(default)]
    pub secrets: Vec<SecretBinding>,
    /// How to reach the runtime when it is an EKS cluster Qleet made; without it the runtime
    /// is one of the agent's configured clusters, by `runtime.clusterName`.
    #[serde(default)]
    pub access: Option<Access>,
    /// A Service whose load balancer address is reported as `loadBalancerHostname`.
    #[serde(default)]
    pub load_balancer: Option<ServiceRef>,
}

/// `payload.resource.access`
#[derive(Debug, Clone, Deserialize)]
pub struct Access {
    pub eks: eks::EksAccess,
}

/// A Service by namespace and name.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

/// The output a load balancer's address is reported as.
pub const LOAD_BALANCER_OUTPUT: &str = "loadBalancerHostname";

#[derive(Debug, Clone, Deserialize)]
pub struct Helm {
    #[serde(default)]
    pub releases: Vec<helm::Release>,
}

/// One key of a Kubernetes Secret the agent fills from a secret in the customer's account.
#[derive(Debug, Clone, Deserialize)]
pub struct SecretBinding {
    /// The Kubernetes Secret's name.
    pub name: String,
    pub key: String,
    /// The `secretRef` output: `{provider, arn, region, roleArn, externalId}`.
    pub from: SecretRef,
    /// The account to read it with, when the control plane sends it apart from the reference.
    #[serde(default)]
    pub account: Option<Account>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    #[serde(default)]
    pub provider: Option<String>,
    pub arn: String,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub role_arn: Option<String>,
    #[serde(default)]
    pub external_id: Option<String>,
}

/// One entry of the inventory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectKey {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

/// A Kubernetes API error as a task error.
pub fn kube_error(action: &str, e: kube::Error) -> TaskError {
    match e {
        kube::Error::Api(s) => {
            let code = s.code;
            let reason = if s.reason.is_empty() {
                format!("Http{code}")
            } else {
                s.reason.clone()
            };
            TaskError {
                code: reason,
                message: format!("{action}: {}", s.message),
                retryable: code >= 500 || code == 429 || code == 409,
            }
        }
        other => TaskError::retryable(
            "KubernetesUnreachable",
            format!("{action}: {}", crate::client::error_chain(&other)),
        ),
    }
}

fn split_api_version(api_version: &str) -> (&str, &str) {
    match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    }
}

/// Resolves a kind to its API resource and scope: the built-in kinds from a table, anything
/// else (custom resources) through discovery.
async fn resolve(
    client: &kube::Client,
    cache: &mut BTreeMap<(String, String), (ApiResource, bool)>,
    api_version: &str,
    kind: &str,
) -> Result<(ApiResource, bool), TaskError> {
    let key = (api_version.to_owned(), kind.to_owned());
    if let Some(hit) = cache.get(&key) {
        return Ok(hit.clone());
    }
    let found = match kinds::known(api_version, kind) {
        Some(k) => k,
        None => {
            let (group, version) = split_api_version(api_version);
            let gvk = GroupVersionKind::gvk(group, version, kind);
            let (ar, caps) =
                kube::discovery::pinned_kind(client, &gvk)
                    .await
                    .map_err(|e| match e {
                        kube::Error::Discovery(_) => TaskError::permanent(
                            "UnknownKind",
                            format!("the cluster does not serve {api_version} {kind}"),
                        ),
                        other => kube_error(&format!("discovering {api_version} {kind}"), other),
                    })?;
            (ar, matches!(caps.scope, kube::discovery::Scope::Namespaced))
        }
    };
    cache.insert(key, found.clone());
    Ok(found)
}

fn api(client: &kube::Client, ar: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER)
        .force()
        .validation_strict()
}

fn inventory_name(payload: &Payload) -> String {
    format!("qleet-inventory-{}", payload.object.id)
}

/// Puts `doc` in `namespace` when its kind is namespaced and it names none, adds the Qleet
/// labels, and answers its inventory key.
fn prepare(
    doc: &mut Value,
    namespaced: bool,
    namespace: &str,
    object_id: &str,
) -> Result<ObjectKey, TaskError> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_owned();
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    let meta = doc
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| {
            TaskError::permanent("InvalidManifest", format!("{kind} without metadata"))
        })?;
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| TaskError::permanent("InvalidManifest", format!("{kind} without a name")))?
        .to_owned();
    let ns = if namespaced {
        let ns = meta
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or(namespace)
            .to_owned();
        meta.insert("namespace".into(), json!(ns));
        Some(ns)
    } else {
        meta.remove("namespace");
        None
    };
    let labels = meta
        .entry("labels")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| {
            TaskError::permanent(
                "InvalidManifest",
                format!("{kind}/{name}: labels is not a map"),
            )
        })?;
    labels.insert(OBJECT_LABEL.into(), json!(object_id));
    labels.insert(MANAGED_BY.0.into(), json!(MANAGED_BY.1));
    Ok(ObjectKey {
        api_version,
        kind,
        namespace: ns,
        name,
    })
}

/// Reads the secrets the workload needs from the customer's account and answers them as
/// Secret manifests (one per name).
async fn materialise_secrets(
    ctx: &Context,
    spec: &ApplySpec,
    actor: &Actor,
) -> Result<Vec<Value>, TaskError> {
    let mut by_name: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for b in &spec.secrets {
        if b.from.provider.as_deref().unwrap_or("aws-secretsmanager") != "aws-secretsmanager" {
            return Err(TaskError::permanent(
                "UnknownSecretProvider",
                format!(
                    "secret provider `{}` is not supported",
                    b.from.provider.as_deref().unwrap_or_default()
                ),
            ));
        }
        let account = match &b.account {
            Some(a) => a.clone(),
            None => Account {
                account_id: None,
                role_arn: b.from.role_arn.clone().ok_or_else(|| {
                    TaskError::permanent(
                        "InvalidPayload",
                        format!("secret `{}` names no role to read it with", b.name),
                    )
                })?,
                external_id: b.from.external_id.clone(),
                region: b
                    .from
                    .region
                    .clone()
                    .or_else(|| b.from.arn.split(':').nth(3).map(str::to_owned))
                    .unwrap_or_default(),
            },
        };
        let cfg = ctx.aws.session(&account, actor).await?;
        let value = crate::aws::secrets::Secrets::new(&cfg)
            .read(&b.from.arn)
            .await?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(value.expose_secret());
        by_name
            .entry(b.name.as_str())
            .or_default()
            .insert(b.key.clone(), json!(encoded));
    }
    Ok(by_name
        .into_iter()
        .map(|(name, data)| {
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": { "name": name, "namespace": spec.namespace },
                "type": "Opaque",
                "data": data,
            })
        })
        .collect())
}

/// The cluster a payload's runtime names.
fn cluster_name(spec: &ApplySpec) -> Result<&str, TaskError> {
    spec.runtime
        .get("clusterName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| TaskError::permanent("InvalidPayload", "the runtime has no clusterName"))
}

/// The client for the payload's runtime.
async fn client_for(
    ctx: &Context,
    spec: &ApplySpec,
    actor: &Actor,
) -> Result<kube::Client, TaskError> {
    match &spec.access {
        Some(Access { eks }) => ctx.clusters.eks_client(&ctx.aws, eks, actor).await,
        None => ctx.clusters.client(cluster_name(spec)?).await,
    }
}

/// The address the cloud gave `service`'s load balancer: its first ingress's host name, or
/// its IP. Not assigned yet is a retryable failure, so the control plane asks again later.
async fn load_balancer_address(
    client: &kube::Client,
    service: &ServiceRef,
) -> Result<String, TaskError> {
    let shown = format!("Service {}/{}", service.namespace, service.name);
    let api: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), &service.namespace);
    let found = api
        .get_opt(&service.name)
        .await
        .map_err(|e| kube_error(&format!("reading {shown}"), e))?
        .ok_or_else(|| {
            TaskError::permanent(
                "LoadBalancerServiceMissing",
                format!("{shown} does not exist after the apply; its load balancer address cannot be reported"),
            )
        })?;
    let address = found
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default()
        .into_iter()
        .find_map(|i| {
            i.hostname
                .filter(|h| !h.is_empty())
                .or(i.ip.filter(|ip| !ip.is_empty()))
        });
    address.ok_or_else(|| {
        TaskError::retryable(
            "LoadBalancerPending",
            format!("{shown} has no load balancer address yet (status.loadBalancer.ingress is empty); the cloud may still be creating it"),
        )
    })
}

/// The namespaces the apply writes to: the workload's and every Helm release's.
fn namespaces(spec: &ApplySpec) -> BTreeSet<String> {
    let mut out = BTreeSet::from([spec.namespace.clone()]);
    if let Some(h) = &spec.helm {
        out.extend(h.releases.iter().map(|r| r.namespace.clone()));
    }
    out
}

async fn read_inventory(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<BTreeSet<ObjectKey>, TaskError> {
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), namespace);
    let cm = cms
        .get_opt(name)
        .await
        .map_err(|e| kube_error("reading the inventory", e))?;
    let Some(text) = cm
        .as_ref()
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get("objects"))
    else {
        return Ok(BTreeSet::new());
    };
    serde_json::from_str(text)
        .map_err(|e| TaskError::permanent("InvalidInventory", format!("{namespace}/{name}: {e}")))
}

async fn write_inventory(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    object_id: &str,
    keys: &BTreeSet<ObjectKey>,
) -> Result<(), TaskError> {
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), namespace);
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": { OBJECT_LABEL: object_id, MANAGED_BY.0: MANAGED_BY.1 },
        },
        "data": { "objects": serde_json::to_string(keys).unwrap_or_else(|_| "[]".into()) },
    });
    cms.patch(name, &apply_params(), &Patch::Apply(&body))
        .await
        .map_err(|e| kube_error("writing the inventory", e))?;
    Ok(())
}

/// Deletes `key` if it still carries this object's label.
async fn delete_if_ours(
    client: &kube::Client,
    cache: &mut BTreeMap<(String, String), (ApiResource, bool)>,
    key: &ObjectKey,
    object_id: &str,
) -> Result<(), TaskError> {
    let (ar, _) = match resolve(client, cache, &key.api_version, &key.kind).await {
        Ok(r) => r,
        // A kind the cluster no longer serves has nothing left to delete.
        Err(e) if e.code == "UnknownKind" => return Ok(()),
        Err(e) => return Err(e),
    };
    let api = api(client, &ar, key.namespace.as_deref());
    let what = format!("{} {}", key.kind, key.name);
    let Some(current) = api
        .get_opt(&key.name)
        .await
        .map_err(|e| kube_error(&format!("reading {what}"), e))?
    else {
        return Ok(());
    };
    if current
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(OBJECT_LABEL))
        .map(String::as_str)
        != Some(object_id)
    {
        tracing::warn!(object = %what, "not pruned: no longer labelled as this object's");
        return Ok(());
    }
    match api.delete(&key.name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(kube_error(&format!("deleting {what}"), e)),
    }
}

/// Applies the payload to its cluster and prunes what the new revision dropped.
pub async fn ensure(
    ctx: &Context,
    spec: &ApplySpec,
    payload: &Payload,
    actor: &Actor,
) -> Result<Map<String, Value>, TaskError> {
    let client = client_for(ctx, spec, actor).await?;
    let object_id = payload.object.id.to_string();

    // Everything is rendered (and every secret read) before anything is written; Secrets go
    // first so that pods referring to them start with them.
    let mut docs: Vec<(Value, String)> = materialise_secrets(ctx, spec, actor)
        .await?
        .into_iter()
        .map(|s| (s, spec.namespace.clone()))
        .collect();
    for m in &spec.manifests {
        docs.push((m.clone(), spec.namespace.clone()));
    }
    if let Some(h) = &spec.helm {
        for release in &h.releases {
            for d in helm::template(&ctx.helm, release).await? {
                docs.push((d, release.namespace.clone()));
            }
        }
    }

    let mut cache = BTreeMap::new();
    let mut prepared = Vec::new();
    let mut keys = BTreeSet::new();
    for (mut doc, ns) in docs {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        if api_version.is_empty() || kind.is_empty() {
            return Err(TaskError::permanent(
                "InvalidManifest",
                "a manifest without apiVersion or kind",
            ));
        }
        let (ar, namespaced) = resolve(&client, &mut cache, &api_version, &kind).await?;
        let key = prepare(&mut doc, namespaced, &ns, &object_id)?;
        if !keys.insert(key.clone()) {
            return Err(TaskError::permanent(
                "DuplicateManifest",
                format!("{kind} {} appears twice", key.name),
            ));
        }
        prepared.push((ar, key, doc));
    }

    // Namespaces first; they carry no object label, so no workload's prune ever deletes one.
    // One Qleet makes is marked so (`qleet.dev/created-by`), and the mark is kept on every
    // later apply: only such a namespace is ever removed (see `remove_namespace_if_unused`).
    for ns in namespaces(spec) {
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let existing = nss
            .get_opt(&ns)
            .await
            .map_err(|e| kube_error(&format!("reading Namespace {ns}"), e))?;
        let created_by = match &existing {
            None => Some(object_id.clone()),
            Some(n) => n
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CREATED_BY))
                .cloned(),
        };
        let mut metadata = json!({ "name": ns, "labels": { MANAGED_BY.0: MANAGED_BY.1 } });
        if let Some(by) = created_by {
            metadata["annotations"] = json!({ CREATED_BY: by });
        }
        let body = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": metadata });
        nss.patch(&ns, &apply_params(), &Patch::Apply(&body))
            .await
            .map_err(|e| kube_error(&format!("applying Namespace {ns}"), e))?;
    }

    // In a Helm release's own namespace, a marker says this object uses it: the namespace is
    // removed only when no Qleet object uses it any more (see `remove_namespace_if_unused`).
    for ns in namespaces(spec)
        .into_iter()
        .filter(|ns| *ns != spec.namespace)
    {
        write_marker(&client, &ns, payload, &object_id).await?;
    }

    let inventory = inventory_name(payload);
    let before = read_inventory(&client, &spec.namespace, &inventory).await?;
    // Record the union first: a crash mid-apply still leaves every object findable.
    let union: BTreeSet<ObjectKey> = before.union(&keys).cloned().collect();
    if union != before {
        write_inventory(&client, &spec.namespace, &inventory, &object_id, &union).await?;
    }

    let mut deployments = Vec::new();
    for (ar, key, doc) in &prepared {
        api(&client, ar, key.namespace.as_deref())
            .patch(&key.name, &apply_params(), &Patch::Apply(doc))
            .await
            .map_err(|e| kube_error(&format!("applying {} {}", key.kind, key.name), e))?;
        if key.kind == "Deployment" {
            deployments.push(key.clone());
        }
    }
    for stale in before.difference(&keys) {
        delete_if_ours(&client, &mut cache, stale, &object_id).await?;
    }
    if union != keys {
        write_inventory(&client, &spec.namespace, &inventory, &object_id, &keys).await?;
    }

    rollout(&client, &deployments, ctx.rollout_wait).await?;
    let mut outputs = Map::new();
    if let Some(service) = &spec.load_balancer {
        let address = load_balancer_address(&client, service).await?;
        outputs.insert(LOAD_BALANCER_OUTPUT.into(), json!(address));
    }
    Ok(outputs)
}

/// Deletes everything the last apply made, then the workload's namespace and its Helm
/// releases' namespaces, each when Qleet made it and no other Qleet object still uses it.
pub async fn delete(
    ctx: &Context,
    spec: &ApplySpec,
    payload: &Payload,
    actor: &Actor,
) -> Result<(), TaskError> {
    let client = client_for(ctx, spec, actor).await?;
    let object_id = payload.object.id.to_string();
    let inventory = inventory_name(payload);
    let before = read_inventory(&client, &spec.namespace, &inventory).await?;
    let mut cache = BTreeMap::new();
    for key in &before {
        delete_if_ours(&client, &mut cache, key, &object_id).await?;
    }
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &spec.namespace);
    match cms.delete(&inventory, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(kube_error("deleting the inventory", e)),
    }
    for ns in namespaces(spec) {
        if ns != spec.namespace {
            let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
                Api::namespaced(client.clone(), &ns);
            match cms
                .delete(&marker_name(&object_id), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(kube_error(&format!("deleting the marker in {ns}"), e)),
            }
        }
    }
    for ns in namespaces(spec) {
        remove_namespace_if_unused(&client, &ns).await?;
    }
    Ok(())
}

/// The marker a Workload leaves in a Helm release's namespace other than its own.
fn marker_name(object_id: &str) -> String {
    format!("qleet-uses-{object_id}")
}

async fn write_marker(
    client: &kube::Client,
    namespace: &str,
    payload: &Payload,
    object_id: &str,
) -> Result<(), TaskError> {
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), namespace);
    let name = marker_name(object_id);
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": { OBJECT_LABEL: object_id, MANAGED_BY.0: MANAGED_BY.1 },
        },
        "data": { "object": format!("{}/{}", payload.object.kind, payload.object.name) },
    });
    cms.patch(&name, &apply_params(), &Patch::Apply(&body))
        .await
        .map_err(|e| kube_error(&format!("marking {namespace} as used"), e))?;
    Ok(())
}

/// How many differences one observation reports at most.
const MAX_DIFFERENCES: usize = 50;

/// Metadata the API server keeps for itself: never a difference.
const SERVER_METADATA: [&str; 6] = [
    "resourceVersion",
    "managedFields",
    "generation",
    "creationTimestamp",
    "uid",
    "selfLink",
];

/// Reads what the last apply made as it is now, changing nothing (a drift check). Each
/// manifest (and Helm template) is applied as a server-side **dry run** and the answer, which
/// is the object as Qleet's apply would leave it, normalised by the API server, is compared
/// with the live object: every field that differs is reported as `Kind namespace/name:
/// path`, with what Qleet's apply would make it and what it is. An object that is gone is
/// reported missing; `found: false` when nothing of it is left. Secrets made from the
/// customer's Secrets Manager are checked only for being there (their values are never read
/// back or reported).
pub async fn observe(
    ctx: &Context,
    spec: &ApplySpec,
    payload: &Payload,
    actor: &Actor,
) -> Result<Map<String, Value>, TaskError> {
    let client = client_for(ctx, spec, actor).await?;
    let object_id = payload.object.id.to_string();
    let mut docs: Vec<(Value, String)> = spec
        .manifests
        .iter()
        .map(|m| (m.clone(), spec.namespace.clone()))
        .collect();
    if let Some(h) = &spec.helm {
        for release in &h.releases {
            for d in helm::template(&ctx.helm, release).await? {
                docs.push((d, release.namespace.clone()));
            }
        }
    }
    let mut cache = BTreeMap::new();
    let mut differences: Vec<Value> = Vec::new();
    let (mut present, mut expected) = (0usize, 0usize);
    let dry_run = PatchParams {
        dry_run: true,
        ..apply_params()
    };
    let mut seen = BTreeSet::new();
    for (mut doc, ns) in docs {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let (ar, namespaced) = resolve(&client, &mut cache, &api_version, &kind).await?;
        let key = prepare(&mut doc, namespaced, &ns, &object_id)?;
        seen.insert(key.clone());
        let label = match &key.namespace {
            Some(ns) => format!("{} {ns}/{}", key.kind, key.name),
            None => format!("{} {}", key.kind, key.name),
        };
        expected += 1;
        let api = api(&client, &ar, key.namespace.as_deref());
        let Some(live) = api
            .get_opt(&key.name)
            .await
            .map_err(|e| kube_error(&format!("reading {label}"), e))?
        else {
            differences
                .push(json!({ "field": label, "expected": "present", "observed": "missing" }));
            continue;
        };
        present += 1;
        let wanted = api
            .patch(&key.name, &dry_run, &Patch::Apply(&doc))
            .await
            .map_err(|e| kube_error(&format!("checking {label} (dry run)"), e))?;
        let (wanted, live) = (
            serde_json::to_value(wanted).unwrap_or_default(),
            serde_json::to_value(live).unwrap_or_default(),
        );
        let mut found = Vec::new();
        compare_live("", &wanted, &live, &mut found);
        let secret = key.kind == "Secret";
        differences.extend(found.into_iter().map(|(path, want, have)| {
            json!({
                "field": format!("{label}: {path}"),
                "expected": brief(want, secret),
                "observed": brief(have, secret),
            })
        }));
    }
    // The Secrets the last apply made from the customer's account: there, or not.
    let inventory = read_inventory(&client, &spec.namespace, &inventory_name(payload)).await?;
    for key in inventory
        .iter()
        .filter(|k| k.kind == "Secret" && !seen.contains(*k))
    {
        let ns = key.namespace.as_deref().unwrap_or(&spec.namespace);
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
        let label = format!("Secret {ns}/{}", key.name);
        expected += 1;
        if secrets
            .get_opt(&key.name)
            .await
            .map_err(|e| kube_error(&format!("reading {label}"), e))?
            .is_some()
        {
            present += 1;
        } else {
            differences
                .push(json!({ "field": label, "expected": "present", "observed": "missing" }));
        }
    }
    differences.truncate(MAX_DIFFERENCES);
    let mut out = Map::new();
    out.insert("found".into(), json!(expected == 0 || present > 0));
    out.insert("differences".into(), Value::Array(differences));
    Ok(out)
}

/// A value as a difference shows it: a Secret's never, a long one cut short.
fn brief(value: Value, secret: bool) -> Value {
    if secret && !value.is_null() {
        return json!("(a Secret's value, not shown)");
    }
    let text = value.to_string();
    if text.len() > 300 {
        json!(format!(
            "{}… ({} bytes)",
            text.chars().take(200).collect::<String>(),
            text.len()
        ))
    } else {
        value
    }
}

/// The fields where `live` differs from `wanted` (what Qleet's apply would make it), as
/// `(path, wanted, live)`; the object's `status` and the server's own metadata aside.
fn compare_live(path: &str, wanted: &Value, live: &Value, out: &mut Vec<(String, Value, Value)>) {
    match (wanted, live) {
        (Value::Object(w), Value::Object(l)) => {
            let keys: BTreeSet<&String> = w.keys().chain(l.keys()).collect();
            for k in keys {
                if path.is_empty() && k == "status" {
                    continue;
                }
                if path == "metadata" && SERVER_METADATA.contains(&k.as_str()) {
                    continue;
                }
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                compare_live(
                    &sub,
                    w.get(k).unwrap_or(&Value::Null),
                    l.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(w), Value::Array(l)) if w.len() == l.len() => {
            for (i, (a, b)) in w.iter().zip(l).enumerate() {
                compare_live(&format!("{path}[{i}]"), a, b, out);
            }
        }
        (w, l) if w != l => out.push((path.to_owned(), w.clone(), l.clone())),
        _ => {}
    }
}

/// Removes `namespace` if Qleet created it (`qleet.dev/created-by`) and no Qleet inventory is
/// left in it (another workload of this or another control plane still uses it). A namespace
/// Qleet did not create is never removed.
async fn remove_namespace_if_unused(
    client: &kube::Client,
    namespace: &str,
) -> Result<(), TaskError> {
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let Some(ns) = nss
        .get_opt(namespace)
        .await
        .map_err(|e| kube_error(&format!("reading Namespace {namespace}"), e))?
    else {
        return Ok(());
    };
    let made_by_qleet = ns
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CREATED_BY));
    if !made_by_qleet {
        return Ok(());
    }
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), namespace);
    let listed = cms
        .list(
            &kube::api::ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)),
        )
        .await
        .map_err(|e| kube_error(&format!("listing Qleet inventories in {namespace}"), e))?;
    let in_use = listed.items.iter().any(|c| {
        c.metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("qleet-inventory-") || n.starts_with("qleet-uses-"))
    });
    if in_use {
        return Ok(());
    }
    match nss.delete(namespace, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(kube_error(&format!("deleting Namespace {namespace}"), e)),
    }
}

/// Waits (up to `wait`) for every applied Deployment to have its replicas available, and
/// records the outcome among the task's events. One still short is a retryable
/// `RolloutPending`, with the namespace's recent Warning events (an image that cannot be
/// pulled, a crash loop) recorded so they show on the object.
async fn rollout(
    client: &kube::Client,
    deployments: &[ObjectKey],
    wait: std::time::Duration,
) -> Result<(), TaskError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut short = Vec::new();
    loop {
        short.clear();
        for d in deployments {
            let ns = d.namespace.clone().unwrap_or_default();
            let api: Api<k8s_openapi::api::apps::v1::Deployment> =
                Api::namespaced(client.clone(), &ns);
            let Some(dep) = api
                .get_opt(&d.name)
                .await
                .map_err(|e| kube_error(&format!("reading Deployment {ns}/{}", d.name), e))?
            else {
                continue;
            };
            let want = dep.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let status = dep.status.unwrap_or_default();
            let available = status.available_replicas.unwrap_or(0);
            // The controller has seen this revision (when the server reports generations).
            let observed = match (dep.metadata.generation, status.observed_generation) {
                (Some(g), Some(o)) => o >= g,
                (Some(_), None) => false,
                _ => true,
            };
            let line = format!(
                "Deployment {ns}/{}: {available} of {want} replicas available",
                d.name
            );
            if observed && available >= want {
                task::record(false, "RolloutComplete", line);
            } else {
                short.push((ns, line));
            }
        }
        if short.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(2).min(wait)).await;
    }
    let Some((ns, first)) = short.first() else {
        return Ok(());
    };
    warnings(client, ns).await;
    Err(TaskError::retryable(
        "RolloutPending",
        format!(
            "{first}{} after {} s",
            if short.len() > 1 {
                format!(" (and {} more short)", short.len() - 1)
            } else {
                String::new()
            },
            wait.as_secs()
        ),
    ))
}

/// Records the newest Warning events of `ns` (at most five) for the task's report.
async fn warnings(client: &kube::Client, ns: &str) {
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let listed = match api
        .list(&kube::api::ListParams::default().fields("type=Warning"))
        .await
    {
        Ok(l) => l.items,
        Err(e) => {
            tracing::warn!(namespace = ns, error = %e, "could not read the namespace's events");
            return;
        }
    };
    let mut events: Vec<_> = listed
        .into_iter()
        .map(|e| {
            let at = e
                .last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or(e.event_time.as_ref().map(|t| t.0));
            (at, e)
        })
        .collect();
    events.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, e) in events.into_iter().take(5) {
        let on = e.involved_object;
        task::record(
            true,
            e.reason.as_deref().unwrap_or("Warning"),
            format!(
                "{}/{}: {}",
                on.kind.unwrap_or_default(),
                on.name.unwrap_or_default(),
                e.message.unwrap_or_default()
            ),
        );
    }
}
