//! The management plane's own install on Kubernetes: `qleet manifests [--values FILE]` prints
//! typed k8s-openapi objects as multi-document YAML for `kubectl apply -f -` (as `linkerd
//! install` does). The pods run `qleet serve` with the Kubernetes runtime driver, and the RBAC
//! is exactly [`fleet::kubernetes::required_access`](crate::fleet::kubernetes::required_access):
//! what the driver asks of the API server, nothing wider.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, LocalObjectReference, Namespace, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::fleet::kubernetes::required_access;

/// The version these manifests install, the default image tag.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The name of the ServiceAccount, Deployment, Service, PodDisruptionBudget and Ingress.
pub const NAME: &str = "qleet";
/// The port `qleet serve` listens on inside the pod.
pub const PORT: u16 = 8080;
/// The non-root user (and group) the container runs as.
pub const RUN_AS_USER: i64 = 65532;
/// Where `QLEET_DATA_DIR` is mounted (writable: deleted control planes' final exports).
pub const DATA_DIR: &str = "/var/lib/qleet";

/// Variables the manifests set themselves; `env` may not set them.
const MANAGED_ENV: [&str; 9] = [
    "QLEET_LISTEN",
    "QLEET_PUBLIC_URL",
    "QLEET_DATA_DIR",
    "QLEET_SITE_DIR",
    "QLEET_TRUST_PROXY_HEADERS",
    "QLEET_RUNTIME",
    "QLEET_K8S_IMAGE",
    "QLEET_K8S_GATEWAY_NAMESPACE",
    "QLEET_K8S_GATEWAY_POD_LABELS",
];

/// The install's settings, read from the values file; every field has a default.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Values {
    /// The namespace the management plane runs in (and the gateway namespace control planes
    /// admit traffic from).
    pub namespace: String,
    /// The management-plane image: `qleet` and `qleet-control-plane` on its `PATH`, the web UI
    /// at `siteDir`, `pg_dump`. The default names a tag that is not published: set it.
    pub image: String,
    /// Secrets holding registry credentials for `image`.
    pub image_pull_secrets: Vec<String>,
    /// Pods of `qleet serve` (two, so a rollout or a node drain keeps one serving).
    pub replicas: i32,
    /// `QLEET_PUBLIC_URL`: https, no path; its host is the Ingress host.
    pub public_url: String,
    /// The Ingress in front of the Service.
    pub ingress: IngressValues,
    /// Requests and limits of the `qleet` container.
    pub resources: ResourceValues,
    /// Where each secret setting comes from.
    pub secrets: SecretValues,
    /// `QLEET_K8S_IMAGE`: the image control-plane pods run (default: `image`).
    pub control_plane_image: Option<String>,
    /// `QLEET_SITE_DIR`: the built web UI inside the image.
    pub site_dir: String,
    /// A PersistentVolumeClaim for `QLEET_DATA_DIR` (ReadWriteMany with several replicas);
    /// unset, an emptyDir: deleted control planes' final exports go with the pod.
    pub data_volume_claim: Option<String>,
    /// `QLEET_TRUST_PROXY_HEADERS`: take client addresses from the Ingress's `X-Forwarded-For`.
    pub trust_proxy_headers: bool,
    /// More plain (non-secret) settings, e.g. `QLEET_STRIPE_PRICES`, `RUST_LOG`.
    pub env: BTreeMap<String, Scalar>,
}

impl Default for Values {
    fn default() -> Self {
        Self {
            namespace: "qleet".into(),
            image: format!("ghcr.io/qleet/qleet:{VERSION}"),
            image_pull_secrets: Vec::new(),
            replicas: 2,
            public_url: "https://qleet.example.com".into(),
            ingress: IngressValues::default(),
            resources: ResourceValues::default(),
            secrets: SecretValues::default(),
            control_plane_image: None,
            site_dir: "/usr/share/qleet/site".into(),
            data_volume_claim: None,
            trust_proxy_headers: true,
            env: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct IngressValues {
    /// Render the Ingress at all (off: route to the Service your own way).
    pub enabled: bool,
    /// `spec.ingressClassName` (unset: the cluster's default class).
    pub class_name: Option<String>,
    /// The Secret with the certificate for the public host (`null`: no TLS at the Ingress).
    pub tls_secret_name: Option<String>,
    /// Annotations for the controller (timeouts for WebSockets and event streams, cert-manager).
    pub annotations: BTreeMap<String, String>,
}

impl Default for IngressValues {
    fn default() -> Self {
        Self {
            enabled: true,
            class_name: None,
            tls_secret_name: Some("qleet-tls".into()),
            annotations: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceValues {
    pub requests: BTreeMap<String, Scalar>,
    pub limits: BTreeMap<String, Scalar>,
}

impl Default for ResourceValues {
    fn default() -> Self {
        let q = |s: &str| Scalar(s.to_owned());
        Self {
            requests: BTreeMap::from([("cpu".into(), q("250m")), ("memory".into(), q("256Mi"))]),
            limits: BTreeMap::from([("memory".into(), q("512Mi"))]),
        }
    }
}

/// A value written as a string, a number or a boolean, kept as the string Kubernetes wants
/// (a quantity such as `250m`, an environment variable's value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Where each secret setting comes from: a key of a Secret in `namespace`, never a value in the
/// manifests. The defaults all read Secret `qleet`, keys named as the variables; the optional
/// ones are left unset when their key is absent.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SecretValues {
    /// `QLEET_SECRET_KEY` (required).
    pub secret_key: SecretRef,
    /// `DATABASE_URL` (required).
    pub database_url: SecretRef,
    /// `QLEET_OIDC_PROVIDERS` (its JSON holds client secrets).
    pub oidc_providers: SecretRef,
    /// `QLEET_STRIPE_SECRET_KEY`.
    pub stripe_secret_key: SecretRef,
    /// `QLEET_STRIPE_WEBHOOK_SECRET`.
    pub stripe_webhook_secret: SecretRef,
}

impl Default for SecretValues {
    fn default() -> Self {
        let key = |key: &str| SecretRef {
            name: NAME.into(),
            key: key.into(),
        };
        Self {
            secret_key: key("QLEET_SECRET_KEY"),
            database_url: key("DATABASE_URL"),
            oidc_providers: key("QLEET_OIDC_PROVIDERS"),
            stripe_secret_key: key("QLEET_STRIPE_SECRET_KEY"),
            stripe_webhook_secret: key("QLEET_STRIPE_WEBHOOK_SECRET"),
        }
    }
}

impl SecretValues {
    /// Each variable, where it comes from, and whether the pod needs the key to start.
    fn variables(&self) -> [(&'static str, &'static str, &SecretRef, bool); 5] {
        [
            (
                "QLEET_SECRET_KEY",
                "secrets.secretKey",
                &self.secret_key,
                true,
            ),
            (
                "DATABASE_URL",
                "secrets.databaseUrl",
                &self.database_url,
                true,
            ),
            (
                "QLEET_OIDC_PROVIDERS",
                "secrets.oidcProviders",
                &self.oidc_providers,
                false,
            ),
            (
                "QLEET_STRIPE_SECRET_KEY",
                "secrets.stripeSecretKey",
                &self.stripe_secret_key,
                false,
            ),
            (
                "QLEET_STRIPE_WEBHOOK_SECRET",
                "secrets.stripeWebhookSecret",
                &self.stripe_webhook_secret,
                false,
            ),
        ]
    }
}

/// A key of a Secret in the install's namespace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub name: String,
    pub key: String,
}

/// A values file that cannot be used, with a one-line reason naming the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ValuesError(pub String);

fn invalid(field: &str, problem: impl fmt::Display) -> ValuesError {
    ValuesError(format!("{field}: {problem}"))
}

impl Values {
    /// Parses a values file (YAML; empty means all defaults) and checks every value.
    pub fn parse(yaml: &str) -> Result<Self, ValuesError> {
        let document: serde_json::Value = serde_saphyr::from_str(yaml).map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("unreadable");
            ValuesError(format!(
                "not valid YAML: {}",
                first.trim_start_matches("error: ")
            ))
        })?;
        let document = match document {
            serde_json::Value::Null => serde_json::json!({}),
            other => other,
        };
        let values: Values = serde_path_to_error::deserialize(document).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            match path.as_str() {
                "." | "" => ValuesError(inner),
                path => ValuesError(format!("{path}: {inner}")),
            }
        })?;
        values.check()?;
        Ok(values)
    }

    fn check(&self) -> Result<(), ValuesError> {
        dns_label("namespace", &self.namespace)?;
        image("image", &self.image)?;
        if let Some(cp) = &self.control_plane_image {
            image("controlPlaneImage", cp)?;
        }
        for (i, name) in self.image_pull_secrets.iter().enumerate() {
            dns_subdomain(&format!("imagePullSecrets[{i}]"), name)?;
        }
        if self.replicas < 1 {
            return Err(invalid(
                "replicas",
                format!("must be at least 1 (got {})", self.replicas),
            ));
        }
        self.host()?;
        if let Some(class) = &self.ingress.class_name {
            dns_subdomain("ingress.className", class)?;
        }
        if let Some(secret) = &self.ingress.tls_secret_name {
            dns_subdomain("ingress.tlsSecretName", secret)?;
        }
        for (section, map) in [
            ("resources.requests", &self.resources.requests),
            ("resources.limits", &self.resources.limits),
        ] {
            for (name, quantity) in map {
                if !["cpu", "memory", "ephemeral-storage"].contains(&name.as_str()) {
                    return Err(invalid(
                        &format!("{section}.{name}"),
                        "unknown resource (cpu, memory or ephemeral-storage)",
                    ));
                }
                if !is_quantity(&quantity.0) {
                    return Err(invalid(
                        &format!("{section}.{name}"),
                        format!("{:?} is not a Kubernetes quantity", quantity.0),
                    ));
                }
            }
        }
        for (_, field, secret, _) in self.secrets.variables() {
            dns_subdomain(&format!("{field}.name"), &secret.name)?;
            let key_ok = !secret.key.is_empty()
                && secret.key.len() <= 253
                && secret
                    .key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            if !key_ok {
                return Err(invalid(
                    &format!("{field}.key"),
                    format!(
                        "{:?} is not a Secret key (letters, digits, -, _, .)",
                        secret.key
                    ),
                ));
            }
        }
        if self.site_dir.is_empty() || !self.site_dir.starts_with('/') {
            return Err(invalid("siteDir", "must be an absolute path in the image"));
        }
        if let Some(claim) = &self.data_volume_claim {
            dns_subdomain("dataVolumeClaim", claim)?;
        }
        for name in self.env.keys() {
            let field = format!("env.{name}");
            let name_ok = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !name_ok {
                return Err(invalid(&field, "is not an environment variable name"));
            }
            if MANAGED_ENV.contains(&name.as_str()) {
                return Err(invalid(&field, "is set by the manifests themselves"));
            }
            if let Some((_, secret_field, ..)) = self
                .secrets
                .variables()
                .into_iter()
                .find(|(var, ..)| var == name)
            {
                return Err(invalid(
                    &field,
                    format!("is a secret: name its Secret in {secret_field}"),
                ));
            }
        }
        Ok(())
    }

    /// The public URL's host, once checked: https, a host, no path, query or fragment.
    fn host(&self) -> Result<String, ValuesError> {
        let url = Url::parse(&self.public_url).map_err(|e| {
            invalid(
                "publicUrl",
                format!("{:?} is not a URL ({e})", self.public_url),
            )
        })?;
        if url.scheme() != "https" {
            return Err(invalid(
                "publicUrl",
                format!("{} must use https", self.public_url),
            ));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(invalid(
                "publicUrl",
                format!("{} must be an origin only (no path)", self.public_url),
            ));
        }
        match url.host() {
            Some(url::Host::Domain(host)) => Ok(host.to_owned()),
            _ => Err(invalid(
                "publicUrl",
                format!(
                    "{} must name a host (an Ingress cannot route an IP address)",
                    self.public_url
                ),
            )),
        }
    }
}

fn dns_label(field: &str, value: &str) -> Result<(), ValuesError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{value:?} is not a DNS label (1-63 of a-z, 0-9, -)"),
        ))
    }
}

fn dns_subdomain(field: &str, value: &str) -> Result<(), ValuesError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|part| dns_label(field, part).is_ok());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{value:?} is not a Kubernetes name (a-z, 0-9, -, .)"),
        ))
    }
}

fn image(field: &str, value: &str) -> Result<(), ValuesError> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            field,
            format!("{value:?} is not an image reference"),
        ));
    }
    Ok(())
}

/// Whether `s` is a Kubernetes quantity: a decimal number with an optional binary (`Ki`..`Ei`),
/// decimal (`n`, `u`, `m`, `k`, `M`..`E`) or exponent suffix.
fn is_quantity(s: &str) -> bool {
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let digits_end = unsigned
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(digits_end);
    let number_ok = !number.is_empty() && number != "." && number.matches('.').count() <= 1;
    let suffix_ok = match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T"
        | "P" | "E" => true,
        exponent => exponent
            .strip_prefix(['e', 'E'])
            .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
            .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())),
    };
    number_ok && suffix_ok
}

/// One rendered object.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
#[expect(
    clippy::large_enum_variant,
    reason = "a handful of objects, rendered once by a command"
)]
pub enum Manifest {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Service(Service),
    Deployment(Deployment),
    PodDisruptionBudget(PodDisruptionBudget),
    Ingress(Ingress),
}

/// The labels selecting the management-plane pods; also `QLEET_K8S_GATEWAY_POD_LABELS`, so
/// each control plane's NetworkPolicy admits exactly these pods.
pub fn pod_selector() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), NAME.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            "management-plane".to_owned(),
        ),
    ])
}

fn labels() -> BTreeMap<String, String> {
    let mut labels = pod_selector();
    labels.insert("app.kubernetes.io/part-of".into(), NAME.into());
    labels.insert("app.kubernetes.io/version".into(), VERSION.into());
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "qleet-manifests".into(),
    );
    labels
}

/// The name of the ClusterRole and ClusterRoleBinding (cluster-wide, so named after the
/// namespace: two installs in one cluster do not collide).
pub fn cluster_role_name(namespace: &str) -> String {
    format!("{namespace}-runtime-driver")
}

/// Every object of the install, in the order `kubectl apply` should create them.
pub fn render(values: &Values) -> Result<Vec<Manifest>, ValuesError> {
    values.check()?;
    let ns = values.namespace.as_str();
    let meta = |name: &str, namespaced: bool| ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespaced.then(|| ns.to_owned()),
        labels: Some(labels()),
        ..ObjectMeta::default()
    };

    let mut namespace_meta = meta(ns, false);
    // Admission refuses any pod here that is not locked down like ours.
    namespace_meta.labels.get_or_insert_default().insert(
        "pod-security.kubernetes.io/enforce".into(),
        "restricted".into(),
    );
    let namespace = Namespace {
        metadata: namespace_meta,
        ..Namespace::default()
    };

    let service_account = ServiceAccount {
        metadata: meta(NAME, true),
        // The driver reaches the API server with this account's token.
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    };

    let role_name = cluster_role_name(ns);
    let cluster_role = ClusterRole {
        metadata: meta(&role_name, false),
        rules: Some(
            required_access()
                .into_iter()
                .map(|access| {
                    let mut verbs: Vec<String> =
                        access.verbs.iter().map(|v| (*v).to_owned()).collect();
                    verbs.sort();
                    PolicyRule {
                        api_groups: Some(vec![access.group]),
                        resources: Some(vec![access.resource]),
                        verbs,
                        ..PolicyRule::default()
                    }
                })
                .collect(),
        ),
        ..ClusterRole::default()
    };
    let cluster_role_binding = ClusterRoleBinding {
        metadata: meta(&role_name, false),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role_name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: NAME.into(),
            namespace: Some(ns.to_owned()),
            ..Subject::default()
        }]),
    };

    let service = Service {
        metadata: meta(NAME, true),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(pod_selector()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };

    let pod_disruption_budget = PodDisruptionBudget {
        metadata: meta(NAME, true),
        spec: Some(PodDisruptionBudgetSpec {
            // Voluntary evictions take one pod at a time, whatever `replicas` is.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(pod_selector()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };

    let mut manifests = vec![
        Manifest::Namespace(namespace),
        Manifest::ServiceAccount(service_account),
        Manifest::ClusterRole(cluster_role),
        Manifest::ClusterRoleBinding(cluster_role_binding),
        Manifest::Service(service),
        Manifest::Deployment(deployment(values)?),
        Manifest::PodDisruptionBudget(pod_disruption_budget),
    ];
    if values.ingress.enabled {
        manifests.push(Manifest::Ingress(ingress(values, meta(NAME, true))?));
    }
    Ok(manifests)
}

fn deployment(values: &Values) -> Result<Deployment, ValuesError> {
    let ns = values.namespace.as_str();
    let plain = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    };
    let gateway_labels = pod_selector()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut env = vec![
        plain("QLEET_LISTEN", format!("0.0.0.0:{PORT}")),
        plain("QLEET_PUBLIC_URL", values.public_url.clone()),
        plain("QLEET_DATA_DIR", DATA_DIR.to_owned()),
        plain("QLEET_SITE_DIR", values.site_dir.clone()),
        plain(
            "QLEET_TRUST_PROXY_HEADERS",
            values.trust_proxy_headers.to_string(),
        ),
        plain("QLEET_RUNTIME", "kubernetes".to_owned()),
        plain(
            "QLEET_K8S_IMAGE",
            values
                .control_plane_image
                .clone()
                .unwrap_or_else(|| values.image.clone()),
        ),
        plain("QLEET_K8S_GATEWAY_NAMESPACE", ns.to_owned()),
        plain("QLEET_K8S_GATEWAY_POD_LABELS", gateway_labels),
    ];
    for (name, _, secret, required) in values.secrets.variables() {
        env.push(EnvVar {
            name: name.to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                    optional: (!required).then_some(true),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    env.extend(
        values
            .env
            .iter()
            .map(|(name, value)| plain(name, value.0.clone())),
    );

    let quantities = |map: &BTreeMap<String, Scalar>| {
        (!map.is_empty()).then(|| {
            map.iter()
                .map(|(k, v)| (k.clone(), Quantity(v.0.clone())))
                .collect::<BTreeMap<_, _>>()
        })
    };
    let http_probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    let data_volume = match &values.data_volume_claim {
        Some(claim) => Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                ..PersistentVolumeClaimVolumeSource::default()
            }),
            ..Volume::default()
        },
        None => Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    };
    let selector = LabelSelector {
        match_labels: Some(pod_selector()),
        ..LabelSelector::default()
    };

    let container = Container {
        name: NAME.into(),
        image: Some(values.image.clone()),
        command: Some(vec!["qleet".into()]),
        args: Some(vec!["serve".into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: i32::from(PORT),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // `qleet serve` migrates the database before it answers: up to five minutes to start.
        startup_probe: Some(http_probe("/healthz", 5, 60)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        resources: Some(ResourceRequirements {
            requests: quantities(&values.resources.requests),
            limits: quantities(&values.resources.limits),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".into(),
                mount_path: DATA_DIR.into(),
                ..VolumeMount::default()
            },
            // The root filesystem is read-only; pg_dump and libraries may want a /tmp.
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };

    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            namespace: Some(ns.to_owned()),
            labels: Some(labels()),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(values.replicas),
            revision_history_limit: Some(5),
            selector: selector.clone(),
            // A new pod serves before an old one stops.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(NAME.into()),
                    automount_service_account_token: Some(true),
                    enable_service_links: Some(false),
                    image_pull_secrets: (!values.image_pull_secrets.is_empty()).then(|| {
                        values
                            .image_pull_secrets
                            .iter()
                            .map(|name| LocalObjectReference { name: name.clone() })
                            .collect()
                    }),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS_USER),
                        run_as_group: Some(RUN_AS_USER),
                        fs_group: Some(RUN_AS_USER),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    // Replicas on different nodes where the cluster can.
                    topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                        max_skew: 1,
                        topology_key: "kubernetes.io/hostname".into(),
                        when_unsatisfiable: "ScheduleAnyway".into(),
                        label_selector: Some(selector),
                        ..TopologySpreadConstraint::default()
                    }]),
                    containers: vec![container],
                    volumes: Some(vec![
                        data_volume,
                        Volume {
                            name: "tmp".into(),
                            empty_dir: Some(EmptyDirVolumeSource {
                                size_limit: Some(Quantity("256Mi".into())),
                                ..EmptyDirVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

fn ingress(values: &Values, mut metadata: ObjectMeta) -> Result<Ingress, ValuesError> {
    let host = values.host()?;
    if !values.ingress.annotations.is_empty() {
        metadata.annotations = Some(values.ingress.annotations.clone());
    }
    Ok(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: values.ingress.class_name.clone(),
            tls: values.ingress.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(host),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: NAME.into(),
                                port: Some(ServiceBackendPort {
                                    name: Some("http".into()),
                                    ..ServiceBackendPort::default()
                                }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    })
}

/// The manifests as multi-document YAML.
pub fn to_yaml(manifests: &[Manifest]) -> Result<String, ValuesError> {
    serde_saphyr::to_string_multiple(manifests)
        .map_err(|e| ValuesError(format!("cannot write the manifests as YAML: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_recognised() {
        for ok in [
            "250m", "1", "0.5", "512Mi", "1Gi", "1e3", "2E-2", "+1", "100k", ".5",
        ] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "1.2.3", "12MB", "1 Gi", "Mi", "1e", "."] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn an_empty_values_file_means_the_defaults() {
        let values = Values::parse("").expect("defaults");
        assert_eq!(values.replicas, 2);
        assert_eq!(values.namespace, "qleet");
        assert_eq!(Values::parse("# nothing\n").expect("defaults").replicas, 2);
    }

    #[test]
    fn a_nested_unknown_field_is_named_with_its_path() {
        let err = Values::parse("ingress:\n  clasName: nginx\n").expect_err("unknown field");
        assert!(
            err.0
                .starts_with("ingress.clasName: unknown field `clasName`"),
            "{err}"
        );
    }
}
