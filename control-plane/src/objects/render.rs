//! From a validated spec and its dependencies' outputs to what the agent is told to do (the
//! task payload) and the outputs the control plane computes itself. Pure functions: the same
//! inputs always give the same payload, so its hash says whether anything changed.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::kinds::{self, Builtin, parse_spec};
use super::refs::{self, ObjKey};

/// What reconciling an object wants.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// What the agent is asked to make true (null when no agent work is needed).
    pub payload: Value,
    /// Outputs the control plane computes from the spec.
    pub computed: Map<String, Value>,
}

/// The object being rendered and everything it may read.
pub struct Input<'a> {
    pub control_plane: Uuid,
    pub id: Uuid,
    pub key: &'a ObjKey,
    pub spec: &'a Value,
    /// Outputs of the objects it depends on.
    pub outputs: &'a BTreeMap<ObjKey, Value>,
    /// Outputs it already has (keeps the generated ExternalId).
    pub own_outputs: &'a Value,
    /// Who last changed it, passed to AWS as the role session's SourceIdentity.
    pub changed_by: Option<&'a str>,
    /// How many times it was replaced: each incarnation's cloud resources are named apart.
    pub incarnation: i32,
}

impl Input<'_> {
    fn lookup(&self) -> impl Fn(&ObjKey, &str) -> Option<Value> + '_ {
        |key, output| {
            self.outputs
                .get(key)
                .and_then(|o| o.get(output))
                .filter(|v| !v.is_null())
                .cloned()
        }
    }

    fn outputs_of(&self, reference: &str) -> Result<&Value, String> {
        let key = ObjKey::parse(reference)?;
        self.outputs
            .get(&key)
            .ok_or_else(|| format!("{key} is not ready"))
    }

    /// The outputs of the runtime `reference` names, and for an EKS runtime (the only kind
    /// with an account, see [`eks_account_outputs`]) the `access` block the agent reaches it
    /// with: endpoint, CA and the account whose role signs its token. An existing cluster has
    /// none: the agent knows it by `clusterName`.
    fn runtime(&self, reference: &str) -> Result<(Value, Option<Value>), String> {
        let outputs = self.outputs_of(reference)?;
        if outputs.get("roleArn").is_none_or(Value::is_null) {
            return Ok((outputs.clone(), None));
        }
        let field = |name: &str| {
            outputs
                .get(name)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("{reference} has no output `{name}` yet"))
        };
        let access = json!({ "eks": {
            "clusterName": field("clusterName")?,
            "endpoint": field("endpoint")?,
            "certificateAuthority": field("certificateAuthority")?,
            "account": {
                "accountId": outputs.get("accountId"),
                "roleArn": field("roleArn")?,
                "externalId": field("externalId")?,
                "region": field("region")?,
            },
        }});
        Ok((outputs.clone(), Some(access)))
    }

    /// A deterministic cloud name: `qleet-NAME-ID8`, from the object id so a retried create
    /// finds what an earlier try made; a replacement's is `qleet-NAME-ID8-rN`, so the new
    /// resource can exist beside the one it replaces.
    fn cloud_name(&self, max: usize) -> String {
        let id = self.id.simple().to_string();
        let mut suffix = id[..8].to_owned();
        if self.incarnation > 0 {
            suffix = format!("{suffix}-r{}", self.incarnation);
        }
        let room = max.saturating_sub("qleet-".len() + 1 + suffix.len());
        let name: String = self.key.name.chars().take(room).collect();
        format!("qleet-{}-{suffix}", name.trim_end_matches('-'))
    }

    /// Where the agent keeps a database's password: one secret per incarnation, so deleting a
    /// replaced instance's secret leaves the new one's alone.
    fn password_secret_name(&self) -> String {
        match self.incarnation {
            0 => format!("qleet/{}/{}/password", self.control_plane, self.id),
            n => format!("qleet/{}/{}/r{n}/password", self.control_plane, self.id),
        }
    }

    /// The tags of what the agent makes: the customer's own (`spec.tags`) and Qleet's, which
    /// cannot be overridden (validation refuses the `qleet:` prefix; they go last here too).
    fn tags(&self, own: &BTreeMap<String, String>) -> Value {
        let mut tags: Map<String, Value> = own.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        for (k, v) in [
            ("qleet:managed", "true".to_owned()),
            ("qleet:control-plane", self.control_plane.to_string()),
            ("qleet:object-id", self.id.to_string()),
            ("qleet:object", self.key.to_string()),
        ] {
            tags.insert(k.to_owned(), json!(v));
        }
        Value::Object(tags)
    }

    /// The account block an AWS task carries: the role to assume and how.
    fn account(&self, reference: &str, region: Option<&str>) -> Result<Value, String> {
        let a = self.outputs_of(reference)?;
        let region = region
            .map(str::to_owned)
            .or_else(|| a.get("region").and_then(Value::as_str).map(str::to_owned))
            .ok_or_else(|| format!("{reference} has no region"))?;
        Ok(json!({
            "accountId": a.get("accountId"),
            "roleArn": a.get("roleArn"),
            "externalId": a.get("externalId"),
            "region": region,
        }))
    }
}

/// The account block of an EKS runtime's payload, published as the runtime's computed outputs
/// so that what runs on it can reach it with the same role (and is re-rendered when it
/// changes).
const EKS_ACCOUNT_OUTPUTS: [&str; 4] = ["accountId", "roleArn", "externalId", "region"];

fn eks_account_outputs(account: &Value, computed: &mut Map<String, Value>) {
    for name in EKS_ACCOUNT_OUTPUTS {
        computed.insert(name.into(), account[name].clone());
    }
}

/// Puts the runtime's outputs (and its `access` block, for EKS) into a payload.
fn with_runtime(mut body: Value, runtime: (Value, Option<Value>)) -> Value {
    body["runtime"] = runtime.0;
    if let Some(access) = runtime.1 {
        body["access"] = access;
    }
    body
}

/// A short stable hash of a JSON value (serde_json keeps map keys sorted).
pub fn hash(value: &Value) -> String {
    let digest = Sha256::digest(value.to_string().as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Computes what `input` wants. Errors are for the object's status (e.g. an output that a
/// dependency has not published).
pub fn desired(kind: Builtin, input: &Input<'_>) -> Result<Desired, String> {
    let rendered = refs::render(input.spec, &input.lookup())?;
    let mut computed = Map::new();
    let mut own_tags = BTreeMap::new();
    let resource = match kind {
        Builtin::AwsAccount => {
            let spec: kinds::AwsAccountSpec = parse_spec(&rendered)?;
            let external_id = input
                .own_outputs
                .get("externalId")
                .and_then(Value::as_str)
                .ok_or("the ExternalId has not been generated")?
                .to_owned();
            computed.insert("accountId".into(), json!(spec.account_id));
            computed.insert("roleArn".into(), json!(spec.role_arn));
            computed.insert("region".into(), json!(spec.default_region));
            computed.insert("externalId".into(), json!(external_id));
            computed.insert(
                "trustPolicy".into(),
                json!(spec.trust_policy(&external_id).to_string()),
            );
            computed.insert(
                "cloudFormationTemplate".into(),
                json!(
                    serde_json::to_string_pretty(&spec.cloudformation_template(&external_id))
                        .unwrap_or_default()
                ),
            );
            // The agent proves the role can be assumed with this ExternalId.
            json!({
                "account": {
                    "accountId": spec.account_id,
                    "roleArn": spec.role_arn,
                    "externalId": external_id,
                    "region": spec.default_region,
                },
            })
        }
        Builtin::KubernetesRuntime => {
            let spec: kinds::KubernetesRuntimeSpec = parse_spec(&rendered)?;
            match (spec.eks, spec.existing) {
                (Some(eks), _) => {
                    own_tags = eks.tags.clone();
                    let account = input.account(&eks.account, eks.region.as_deref())?;
                    eks_account_outputs(&account, &mut computed);
                    json!({
                        "account": account,
                        "eks": {
                            "clusterName": input.cloud_name(100),
                            "version": eks.version,
                            "nodeGroup": eks.node_group,
                        },
                    })
                }
                (None, Some(existing)) => json!({ "existing": { "cluster": existing.cluster } }),
                (None, None) => return Err("spec: set exactly one of `eks` or `existing`".into()),
            }
        }
        Builtin::ObjectStorageBucket => {
            let spec: kinds::BucketSpec = parse_spec(&rendered)?;
            own_tags = spec.tags.clone();
            json!({
                "account": input.account(&spec.account, spec.region.as_deref())?,
                "bucket": {
                    "name": input.cloud_name(63),
                    "versioning": spec.versioning,
                    "blockPublicAccess": spec.block_public_access,
                    "encryption": spec.encryption,
                },
            })
        }
        Builtin::RelationalDatabase => {
            let spec: kinds::DatabaseSpec = parse_spec(&rendered)?;
            own_tags = spec.tags.clone();
            let database = spec
                .database
                .clone()
                .unwrap_or_else(|| input.key.name.replace('-', "_"));
            let mut body = json!({
                "account": input.account(&spec.account, spec.region.as_deref())?,
                "database": {
                    "instanceIdentifier": input.cloud_name(63),
                    "engine": spec.engine.name(),
                    "version": spec.version,
                    "sizeClass": spec.size_class,
                    "storageGb": spec.storage_gb,
                    "backupRetentionDays": spec.backups.retention_days,
                    "database": database,
                    "username": spec.username,
                    "port": spec.engine.port(),
                    "passwordSecretName": input.password_secret_name(),
                },
            });
            // Only when it is not the agent's default, so existing instances' inputs stay the
            // same.
            if !spec.apply_immediately {
                body["database"]["applyImmediately"] = json!(false);
            }
            body
        }
        Builtin::Workload => {
            // Render from the spec as declared: env bindings need to know which outputs are
            // secrets, which the rendered value no longer shows.
            let spec: kinds::WorkloadSpec = parse_spec(input.spec)?;
            let mut body = with_runtime(
                json!({ "namespace": spec.namespace }),
                input.runtime(&spec.runtime)?,
            );
            let mut secrets = Vec::new();
            if let Some(manifests) = &spec.manifests {
                let docs = parse_manifests(manifests)?;
                let docs = docs
                    .iter()
                    .map(|d| refs::render(d, &input.lookup()))
                    .collect::<Result<Vec<_>, _>>()?;
                let env = render_env(input, &spec, &mut secrets)?;
                let docs = docs
                    .into_iter()
                    .map(|d| place(d, &spec.namespace, &env))
                    .collect::<Result<Vec<_>, _>>()?;
                body["manifests"] = Value::Array(docs);
            }
            if let Some(helm) = &spec.helm {
                let values = refs::render(&helm.values, &input.lookup())?;
                body["helm"] = json!({
                    "releases": [{
                        "name": input.key.name,
                        "namespace": spec.namespace,
                        "repo": helm.repo,
                        "chart": helm.chart,
                        "version": helm.version,
                        "values": if values.is_null() { json!({}) } else { values },
                    }]
                });
            }
            body["secrets"] = Value::Array(secrets);
            let revision = hash(&body)[..12].to_owned();
            computed.insert("namespace".into(), json!(spec.namespace));
            computed.insert("revision".into(), json!(revision));
            body
        }
        Builtin::Gateway => {
            let spec: kinds::GatewaySpec = parse_spec(&rendered)?;
            let issuer = match spec.tls.issuer {
                kinds::Issuer::Letsencrypt => "qleet-letsencrypt",
                kinds::Issuer::LetsencryptStaging => "qleet-letsencrypt-staging",
                kinds::Issuer::Selfsigned => "qleet-selfsigned",
            };
            let issuer_spec = match spec.tls.issuer {
                kinds::Issuer::Selfsigned => json!({ "selfSigned": {} }),
                other => json!({ "acme": {
                    "server": if matches!(other, kinds::Issuer::Letsencrypt) {
                        "https://acme-v02.api.letsencrypt.org/directory"
                    } else {
                        "https://acme-staging-v02.api.letsencrypt.org/directory"
                    },
                    "email": spec.tls.email,
                    "privateKeySecretRef": { "name": issuer },
                    "solvers": [{ "http01": { "ingress": { "ingressClassName": spec.ingress_class } } }],
                }}),
            };
            computed.insert("url".into(), json!(format!("https://{}", spec.host)));
            computed.insert("host".into(), json!(spec.host));
            computed.insert("ingressClass".into(), json!(spec.ingress_class));
            computed.insert("clusterIssuer".into(), json!(issuer));
            let body = json!({
                "namespace": "qleet-gateway",
                "helm": { "releases": [
                    {
                        "name": "ingress-nginx", "namespace": "qleet-gateway",
                        "repo": "https://kubernetes.github.io/ingress-nginx",
                        "chart": "ingress-nginx", "version": "4.11.3",
                        "values": { "controller": { "ingressClassResource": { "name": spec.ingress_class } } },
                    },
                    {
                        "name": "cert-manager", "namespace": "cert-manager",
                        "repo": "https://charts.jetstack.io",
                        "chart": "cert-manager", "version": "v1.16.2",
                        "values": { "crds": { "enabled": true } },
                    },
                ]},
                "manifests": [{
                    "apiVersion": "cert-manager.io/v1",
                    "kind": "ClusterIssuer",
                    "metadata": { "name": issuer },
                    "spec": issuer_spec,
                }],
                "secrets": [],
                // ingress-nginx's controller Service (`<release>-controller`): its load
                // balancer's address is the Gateway's `loadBalancerHostname`.
                "loadBalancer": { "namespace": "qleet-gateway", "name": "ingress-nginx-controller" },
            });
            with_runtime(body, input.runtime(&spec.runtime)?)
        }
        Builtin::DomainName => {
            let spec: kinds::DomainNameSpec = parse_spec(&rendered)?;
            computed.insert("fqdn".into(), json!(spec.name));
            computed.insert("target".into(), json!(spec.target));
            let body = json!({
                "account": input.account(&spec.account, None)?,
                "namespace": "qleet-dns",
                "helm": { "releases": [{
                    "name": "external-dns", "namespace": "qleet-dns",
                    "repo": "https://kubernetes-sigs.github.io/external-dns",
                    "chart": "external-dns", "version": "1.15.0",
                    "values": {
                        "provider": { "name": "aws" },
                        "domainFilters": [spec.zone],
                        "policy": "upsert-only",
                        "txtOwnerId": format!("qleet-{}", input.control_plane),
                        "sources": ["crd", "ingress", "service"],
                        "crd": { "create": true },
                    },
                }]},
                "manifests": [{
                    "apiVersion": "externaldns.k8s.io/v1alpha1",
                    "kind": "DNSEndpoint",
                    "metadata": { "name": input.key.name, "namespace": "qleet-dns" },
                    "spec": { "endpoints": [{
                        "dnsName": spec.name,
                        "recordType": "CNAME",
                        "recordTTL": spec.ttl,
                        "targets": [spec.target],
                    }]},
                }],
                "secrets": [],
            });
            with_runtime(body, input.runtime(&spec.runtime)?)
        }
        Builtin::Observability => {
            let spec: kinds::ObservabilitySpec = parse_spec(&rendered)?;
            let ns = "qleet-observability";
            computed.insert(
                "prometheusUrl".into(),
                json!(format!(
                    "http://kube-prometheus-stack-prometheus.{ns}.svc:9090"
                )),
            );
            computed.insert(
                "grafanaUrl".into(),
                json!(format!("http://kube-prometheus-stack-grafana.{ns}.svc:80")),
            );
            let mut releases = vec![json!({
                "name": "kube-prometheus-stack", "namespace": ns,
                "repo": "https://prometheus-community.github.io/helm-charts",
                "chart": "kube-prometheus-stack", "version": "65.5.0",
                "values": { "prometheus": { "prometheusSpec": { "retention": format!("{}d", spec.retention_days) } } },
            })];
            if spec.logs {
                computed.insert(
                    "lokiUrl".into(),
                    json!(format!("http://loki-gateway.{ns}.svc:80")),
                );
                releases.push(json!({
                    "name": "loki", "namespace": ns,
                    "repo": "https://grafana.github.io/helm-charts",
                    "chart": "loki", "version": "6.18.0",
                    "values": {
                        "deploymentMode": "SingleBinary",
                        "loki": { "limits_config": { "retention_period": format!("{}h", u32::from(spec.retention_days) * 24) } },
                    },
                }));
            }
            let body = json!({
                "namespace": ns,
                "helm": { "releases": releases },
                "manifests": [],
                "secrets": [],
            });
            with_runtime(body, input.runtime(&spec.runtime)?)
        }
        Builtin::Composition => {
            return Ok(Desired {
                payload: Value::Null,
                computed,
            });
        }
    };
    let payload = json!({
        "controlPlane": input.control_plane,
        "object": { "id": input.id, "kind": input.key.kind, "name": input.key.name },
        "tags": input.tags(&own_tags),
        "resource": resource,
    });
    let mut payload = payload;
    if let Some(who) = input.changed_by {
        // SourceIdentity allows 2-64 characters of [\w+=,.@-]: `user:<uuid>` → `qleet-user-<uuid>`.
        let identity: String = format!("qleet-{}", who.replace(':', "-"))
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(*c))
            .take(64)
            .collect();
        payload["sourceIdentity"] = json!(identity);
    }
    Ok(Desired { payload, computed })
}

/// The env entries for containers, turning secret outputs into Secret references the agent
/// materialises (the value never reaches Qleet).
fn render_env(
    input: &Input<'_>,
    spec: &kinds::WorkloadSpec,
    secrets: &mut Vec<Value>,
) -> Result<Vec<Value>, String> {
    let secret_name = format!("{}-qleet-secrets", input.key.name);
    let mut env = Vec::new();
    for binding in &spec.env {
        match (&binding.value, &binding.value_from) {
            (Some(v), _) => {
                let v = refs::render(&json!(v), &input.lookup())?;
                env.push(json!({ "name": binding.name, "value": v }));
            }
            (None, Some(from)) => {
                let key = ObjKey::parse(&from.object)?;
                let value = (input.lookup())(&key, &from.output)
                    .ok_or_else(|| format!("{key} has no output `{}` yet", from.output))?;
                if let Some(reference) = value.get("secretRef") {
                    secrets.push(json!({
                        "name": secret_name,
                        "key": binding.name,
                        "from": reference,
                    }));
                    env.push(json!({
                        "name": binding.name,
                        "valueFrom": { "secretKeyRef": { "name": secret_name, "key": binding.name } },
                    }));
                } else {
                    let text = match value {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    env.push(json!({ "name": binding.name, "value": text }));
                }
            }
            (None, None) => return Err(format!("spec.env: `{}` has no value", binding.name)),
        }
    }
    Ok(env)
}

const CLUSTER_SCOPED: [&str; 10] = [
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "StorageClass",
    "PersistentVolume",
    "PriorityClass",
    "IngressClass",
    "ClusterIssuer",
    "ValidatingWebhookConfiguration",
];

/// Puts a manifest into the workload's namespace and adds the env bindings to its containers.
fn place(mut doc: Value, namespace: &str, env: &[Value]) -> Result<Value, String> {
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    if !CLUSTER_SCOPED.contains(&kind.as_str()) {
        let meta = doc["metadata"]
            .as_object_mut()
            .ok_or("manifest without metadata")?;
        match meta.get("namespace").and_then(Value::as_str) {
            Some(ns) if ns != namespace => {
                return Err(format!(
                    "{kind}/{}: namespace `{ns}` differs from the workload's `{namespace}`",
                    meta.get("name").and_then(Value::as_str).unwrap_or("?")
                ));
            }
            _ => {
                meta.insert("namespace".into(), json!(namespace));
            }
        }
    }
    if env.is_empty() {
        return Ok(doc);
    }
    let pod_spec = match kind.as_str() {
        "Pod" => doc.get_mut("spec"),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => doc
            .get_mut("spec")
            .and_then(|s| s.get_mut("template"))
            .and_then(|t| t.get_mut("spec")),
        "CronJob" => doc.pointer_mut("/spec/jobTemplate/spec/template/spec"),
        _ => None,
    };
    if let Some(pod_spec) = pod_spec {
        for field in ["containers", "initContainers"] {
            if let Some(Value::Array(containers)) = pod_spec.get_mut(field) {
                for c in containers {
                    let list = c
                        .as_object_mut()
                        .ok_or("container is not a map")?
                        .entry("env")
                        .or_insert_with(|| json!([]));
                    let list = list.as_array_mut().ok_or("container env is not a list")?;
                    // Bindings win over a same-named entry in the manifest.
                    list.retain(|e| {
                        !env.iter()
                            .any(|b| b.get("name").is_some() && b.get("name") == e.get("name"))
                    });
                    list.extend(env.iter().cloned());
                }
            }
        }
    }
    Ok(doc)
}

/// Parses multi-document YAML of Kubernetes objects; each needs apiVersion, kind and
/// metadata.name.
pub fn parse_manifests(text: &str) -> Result<Vec<Value>, String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        let msg = e.to_string();
        msg.lines().next().unwrap_or("invalid YAML").to_owned()
    })?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let at = format!("document {}", i + 1);
        let map = doc.as_object().ok_or(format!("{at}: not a map"))?;
        for field in ["apiVersion", "kind"] {
            if !map.get(field).is_some_and(Value::is_string) {
                return Err(format!("{at}: `{field}` is required"));
            }
        }
        let name = doc.pointer("/metadata/name").and_then(Value::as_str);
        if name.is_none_or(str::is_empty) {
            return Err(format!("{at}: `metadata.name` is required"));
        }
        out.push(doc);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs() -> BTreeMap<ObjKey, Value> {
        let mut o = BTreeMap::new();
        o.insert(
            ObjKey::new("KubernetesRuntime", "main"),
            json!({"clusterName": "prod", "endpoint": "https://k8s"}),
        );
        o.insert(
            ObjKey::new("ObjectStorageBucket", "assets"),
            json!({"name": "qleet-assets-1234", "region": "eu-west-1"}),
        );
        o.insert(
            ObjKey::new("RelationalDatabase", "db"),
            json!({"host": "db.example", "port": 5432, "password": {"secretRef": {"arn": "arn:aws:secretsmanager:x"}}}),
        );
        o
    }

    #[test]
    fn a_workload_gets_outputs_and_only_a_reference_to_the_password() {
        let spec = json!({
            "runtime": "KubernetesRuntime/main",
            "namespace": "shop",
            "manifests": "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n        - name: web\n          image: nginx\n          args: [\"--db=${RelationalDatabase/db.host}\"]\n",
            "env": [
                {"name": "BUCKET", "valueFrom": {"object": "ObjectStorageBucket/assets", "output": "name"}},
                {"name": "DB_PASSWORD", "valueFrom": {"object": "RelationalDatabase/db", "output": "password"}},
            ],
        });
        let key = ObjKey::new("Workload", "web");
        let outputs = outputs();
        let input = Input {
            control_plane: Uuid::nil(),
            id: Uuid::nil(),
            key: &key,
            spec: &spec,
            outputs: &outputs,
            own_outputs: &json!({}),
            changed_by: None,
            incarnation: 0,
        };
        let d = desired(Builtin::Workload, &input).expect("render");
        let deployment = &d.payload["resource"]["manifests"][0];
        assert_eq!(deployment["metadata"]["namespace"], "shop");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["args"][0], "--db=db.example");
        assert_eq!(
            container["env"],
            json!([
                {"name": "BUCKET", "value": "qleet-assets-1234"},
                {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "web-qleet-secrets", "key": "DB_PASSWORD"}}},
            ])
        );
        assert_eq!(
            d.payload["resource"]["secrets"],
            json!([{"name": "web-qleet-secrets", "key": "DB_PASSWORD", "from": {"arn": "arn:aws:secretsmanager:x"}}])
        );
        // Same inputs, same payload; a changed output changes it.
        assert_eq!(desired(Builtin::Workload, &input).expect("again"), d);
        let mut changed = outputs.clone();
        changed.insert(
            ObjKey::new("ObjectStorageBucket", "assets"),
            json!({"name": "other"}),
        );
        let input2 = Input {
            outputs: &changed,
            ..input
        };
        assert_ne!(
            hash(&desired(Builtin::Workload, &input2).expect("render").payload),
            hash(&d.payload)
        );
    }

    /// The outputs an EKS runtime has once its task is done: what the control plane computes
    /// from its spec plus what the agent reports (tenant-agent/src/aws/eks.rs).
    fn eks_runtime_outputs() -> Value {
        let key = ObjKey::new("KubernetesRuntime", "eks");
        let spec = json!({"eks": {"account": "AwsAccount/main", "region": "us-east-2", "version": "1.31", "nodeGroup": {"min": 1, "max": 3, "desired": 2}}});
        let mut deps = BTreeMap::new();
        deps.insert(
            ObjKey::new("AwsAccount", "main"),
            json!({"accountId": "123456789012", "roleArn": "arn:aws:iam::123456789012:role/qleet", "externalId": "qleet-ext-1", "region": "eu-west-1"}),
        );
        let input = Input {
            control_plane: Uuid::nil(),
            id: Uuid::nil(),
            key: &key,
            spec: &spec,
            outputs: &deps,
            own_outputs: &json!({}),
            changed_by: None,
            incarnation: 0,
        };
        let d = desired(Builtin::KubernetesRuntime, &input).expect("render runtime");
        // The runtime's own payload and its published account are the same block.
        for name in EKS_ACCOUNT_OUTPUTS {
            assert_eq!(
                d.computed[name], d.payload["resource"]["account"][name],
                "{name}"
            );
        }
        let mut outputs = d.computed;
        outputs.insert("clusterName".into(), json!("qleet-eks-00000000"));
        outputs.insert(
            "endpoint".into(),
            json!("https://ABC.gr7.us-east-2.eks.amazonaws.com"),
        );
        outputs.insert("certificateAuthority".into(), json!("LS0tLS1CRUdJTg=="));
        Value::Object(outputs)
    }

    fn on_runtime(kind: Builtin, runtime: Value, spec: Value) -> Result<Desired, String> {
        let mut deps = outputs();
        deps.insert(ObjKey::new("KubernetesRuntime", "main"), runtime);
        deps.insert(
            ObjKey::new("AwsAccount", "dns"),
            json!({"accountId": "123456789012", "roleArn": "arn:aws:iam::123456789012:role/dns", "externalId": "qleet-ext-2", "region": "eu-west-1"}),
        );
        let key = ObjKey::new(kind.name(), "x");
        let input = Input {
            control_plane: Uuid::nil(),
            id: Uuid::nil(),
            key: &key,
            spec: &spec,
            outputs: &deps,
            own_outputs: &json!({}),
            changed_by: None,
            incarnation: 0,
        };
        desired(kind, &input)
    }

    #[test]
    fn what_runs_on_an_eks_runtime_carries_its_access_block_and_on_an_existing_runtime_does_not() {
        let workload = json!({"runtime": "KubernetesRuntime/main", "namespace": "shop", "manifests": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"});
        let existing = json!({"clusterName": "prod", "endpoint": "https://k8s"});
        let on_existing = on_runtime(Builtin::Workload, existing.clone(), workload.clone())
            .expect("render on existing");
        assert_eq!(on_existing.payload["resource"]["runtime"], existing);
        assert!(on_existing.payload["resource"].get("access").is_none());

        let eks = eks_runtime_outputs();
        let on_eks = on_runtime(Builtin::Workload, eks.clone(), workload.clone()).expect("render");
        assert_eq!(on_eks.payload["resource"]["runtime"], eks);
        assert_eq!(
            on_eks.payload["resource"]["access"],
            json!({"eks": {
                "clusterName": "qleet-eks-00000000",
                "endpoint": "https://ABC.gr7.us-east-2.eks.amazonaws.com",
                "certificateAuthority": "LS0tLS1CRUdJTg==",
                "account": {
                    "accountId": "123456789012",
                    "roleArn": "arn:aws:iam::123456789012:role/qleet",
                    "externalId": "qleet-ext-1",
                    "region": "us-east-2",
                },
            }})
        );
        assert_ne!(
            on_eks.computed["revision"],
            on_existing.computed["revision"]
        );

        // The other kinds that apply to a runtime get the same block.
        let specs = [
            (
                Builtin::Gateway,
                json!({"runtime": "KubernetesRuntime/main", "host": "shop.example.com", "tls": {"issuer": "selfsigned"}}),
            ),
            (
                Builtin::DomainName,
                json!({"runtime": "KubernetesRuntime/main", "account": "AwsAccount/dns", "zone": "example.com", "name": "shop.example.com", "target": "lb.example.com"}),
            ),
            (
                Builtin::Observability,
                json!({"runtime": "KubernetesRuntime/main"}),
            ),
        ];
        for (kind, spec) in specs {
            let d = on_runtime(kind, eks.clone(), spec.clone()).expect("render on eks");
            assert_eq!(
                d.payload["resource"]["access"], on_eks.payload["resource"]["access"],
                "{kind:?}"
            );
            let d = on_runtime(kind, existing.clone(), spec).expect("render on existing");
            assert!(d.payload["resource"].get("access").is_none(), "{kind:?}");
        }

        // An EKS runtime without the cluster's CA cannot be reached: the dependent waits.
        let mut no_ca = eks;
        no_ca["certificateAuthority"] = Value::Null;
        assert_eq!(
            on_runtime(Builtin::Workload, no_ca, workload),
            Err("KubernetesRuntime/main has no output `certificateAuthority` yet".into())
        );
    }

    #[test]
    fn a_gateway_asks_the_agent_for_its_ingress_controllers_load_balancer() {
        let spec = json!({"runtime": "KubernetesRuntime/main", "host": "shop.example.com", "tls": {"issuer": "selfsigned"}});
        let d = on_runtime(Builtin::Gateway, json!({"clusterName": "prod"}), spec).expect("render");
        let r = &d.payload["resource"];
        assert_eq!(
            r["loadBalancer"],
            json!({"namespace": "qleet-gateway", "name": "ingress-nginx-controller"})
        );
        // The Service is the one ingress-nginx's chart makes for a release of that name.
        assert_eq!(r["helm"]["releases"][0]["name"], "ingress-nginx");
        assert_eq!(r["helm"]["releases"][0]["namespace"], "qleet-gateway");
        assert!(
            Builtin::Gateway
                .outputs()
                .iter()
                .any(|o| o.name == "loadBalancerHostname" && o.from_agent)
        );
    }

    #[test]
    fn cloud_names_are_deterministic_and_bounded() {
        let key = ObjKey::new("ObjectStorageBucket", "a".repeat(63));
        let id = Uuid::new_v4();
        let outputs = BTreeMap::new();
        let input = Input {
            control_plane: Uuid::nil(),
            id,
            key: &key,
            spec: &Value::Null,
            outputs: &outputs,
            own_outputs: &json!({}),
            changed_by: None,
            incarnation: 0,
        };
        let name = input.cloud_name(63);
        assert_eq!(name.len(), 63);
        assert_eq!(name, input.cloud_name(63));
        assert!(name.ends_with(&id.simple().to_string()[..8]));
        // A replacement's resources are named apart, within the same bound.
        let replaced = Input {
            incarnation: 12,
            ..input
        };
        let name = replaced.cloud_name(63);
        assert_eq!(name.len(), 63);
        assert!(name.ends_with(&format!("{}-r12", &id.simple().to_string()[..8])));
        assert_ne!(
            replaced.password_secret_name(),
            input.password_secret_name()
        );
    }

    #[test]
    fn manifests_need_kind_and_name() {
        assert!(
            parse_manifests("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n").is_ok()
        );
        assert_eq!(
            parse_manifests("apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n"),
            Err("document 1: `metadata.name` is required".into())
        );
        assert!(parse_manifests("a: [").is_err());
    }
}
