#![cfg(feature = "kubernetes")]
//! `qleet manifests`: the management plane's install on Kubernetes. The real binary renders it;
//! every document is read back strictly into its k8s-openapi type; the wiring (labels, ports,
//! secrets, probes) is checked object against object; and the RBAC is checked against the
//! requests the Kubernetes runtime driver really makes to a scripted API server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use qleet::fleet::driver::{ControlPlaneSpec, RuntimeDriver, RuntimeStatus};
use qleet::fleet::kubernetes::{KubernetesDriver, KubernetesSettings, namespace_name};
use qleet_test_support::kube::{ApiServer, Seen, expect_strictly};
use secrecy::SecretString;
use serde_json::Value;
use uuid::Uuid;

/// What `qleet manifests` renders, in apply order.
const KINDS: [&str; 8] = [
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "Ingress",
];

fn qleet(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_qleet"))
        .args(args)
        .output()
        .expect("run qleet")
}

fn example_values() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/values.example.yaml")
}

/// A values file in a fresh temporary directory.
fn values_file(yaml: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("qleet-manifests-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("values.yaml");
    std::fs::write(&file, yaml).expect("write values");
    (dir, file)
}

/// The install, every document strictly of its type.
struct Install {
    kinds: Vec<String>,
    namespace: Namespace,
    service_account: ServiceAccount,
    cluster_role: ClusterRole,
    binding: ClusterRoleBinding,
    service: Service,
    deployment: Deployment,
    budget: PodDisruptionBudget,
    ingress: Option<Ingress>,
}

fn render(args: &[&str]) -> Install {
    let mut argv = vec!["manifests"];
    argv.extend_from_slice(args);
    let out = qleet(&argv);
    assert!(
        out.status.success(),
        "qleet manifests failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).expect("utf-8");
    let documents: Vec<Value> = serde_saphyr::from_multiple(&yaml).expect("multi-document YAML");
    let one =
        |kind: &str| -> Vec<&Value> { documents.iter().filter(|d| d["kind"] == kind).collect() };
    let single = |kind: &str| -> &Value {
        let found = one(kind);
        assert_eq!(found.len(), 1, "one {kind} in:\n{yaml}");
        found[0]
    };
    for document in &documents {
        let kind = document["kind"].as_str().unwrap_or_default();
        assert!(
            KINDS.contains(&kind),
            "unexpected document {kind:?} in:\n{yaml}"
        );
    }
    Install {
        kinds: documents
            .iter()
            .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
            .collect(),
        namespace: expect_strictly(single("Namespace")),
        service_account: expect_strictly(single("ServiceAccount")),
        cluster_role: expect_strictly(single("ClusterRole")),
        binding: expect_strictly(single("ClusterRoleBinding")),
        service: expect_strictly(single("Service")),
        deployment: expect_strictly(single("Deployment")),
        budget: expect_strictly(single("PodDisruptionBudget")),
        ingress: one("Ingress").first().map(|d| expect_strictly(d)),
    }
}

impl Install {
    fn container(&self) -> &Container {
        let pod = self.pod_spec();
        assert_eq!(pod.containers.len(), 1);
        &pod.containers[0]
    }

    fn pod_spec(&self) -> &k8s_openapi::api::core::v1::PodSpec {
        self.deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
    }

    fn pod_labels(&self) -> BTreeMap<String, String> {
        self.deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .expect("pod labels")
    }

    /// Each variable as where its value comes from: `value X` or `secret NAME/KEY[?]` (`?`:
    /// optional).
    fn env(&self) -> BTreeMap<String, String> {
        self.container()
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
                    (None, Some(key)) => format!(
                        "secret {}/{}{}",
                        key.name,
                        key.key,
                        if key.optional == Some(true) { "?" } else { "" }
                    ),
                    other => format!("{other:?}"),
                };
                (var.name.clone(), source)
            })
            .collect()
    }
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// ---------------------------------------------------------------------------------------------
// What is rendered
// ---------------------------------------------------------------------------------------------

#[test]
fn the_default_install_is_strictly_valid_kubernetes_objects_in_apply_order() {
    let install = render(&[]);
    assert_eq!(install.kinds, KINDS);
    let ns = install.namespace.metadata.name.as_deref();
    assert_eq!(ns, Some("qleet"));
    let labels = install.namespace.metadata.labels.clone().expect("labels");
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
    for namespaced in [
        &install.service_account.metadata,
        &install.service.metadata,
        &install.deployment.metadata,
        &install.budget.metadata,
        &install.ingress.as_ref().expect("ingress").metadata,
    ] {
        assert_eq!(namespaced.namespace.as_deref(), ns, "{:?}", namespaced.name);
    }
    let dspec = install.deployment.spec.as_ref().expect("spec");
    assert_eq!(dspec.replicas, Some(2));
    let container = install.container();
    assert_eq!(
        container.image.as_deref(),
        Some(format!("ghcr.io/qleet/qleet:{}", env!("CARGO_PKG_VERSION")).as_str())
    );
    assert_eq!(container.command, Some(vec!["qleet".to_owned()]));
    assert_eq!(container.args, Some(vec!["serve".to_owned()]));
}

#[test]
fn the_pods_run_qleet_serve_locked_down_with_the_kubernetes_driver_and_probes() {
    let install = render(&[]);
    let pod = install.pod_spec();
    assert_eq!(pod.service_account_name.as_deref(), Some("qleet"));
    assert_eq!(
        install.service_account.metadata.name.as_deref(),
        Some("qleet")
    );
    // The driver talks to the API server with the pod's service-account token.
    assert_eq!(pod.automount_service_account_token, Some(true));
    let pod_security = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert!(pod_security.run_as_user.is_some_and(|uid| uid != 0));
    assert_eq!(
        pod_security
            .seccomp_profile
            .as_ref()
            .expect("seccomp")
            .type_,
        "RuntimeDefault"
    );

    let container = install.container();
    let security = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert!(security.privileged.is_none());
    let capabilities = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(capabilities.drop, Some(vec!["ALL".to_owned()]));
    assert!(capabilities.add.is_none());
    let limits = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .expect("limits");
    assert!(limits.contains_key("memory"));
    // A read-only root: everything written goes to a mounted volume.
    let mounts: BTreeSet<&str> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert_eq!(mounts, BTreeSet::from(["/tmp", "/var/lib/qleet"]));

    let port = container.ports.as_ref().expect("ports")[0].clone();
    assert_eq!(port.name.as_deref(), Some("http"));
    let probe = |probe: Option<&k8s_openapi::api::core::v1::Probe>| {
        let get = probe
            .and_then(|p| p.http_get.clone())
            .expect("httpGet probe");
        (get.path.unwrap_or_default(), get.port)
    };
    let http = IntOrString::String("http".into());
    assert_eq!(
        probe(container.liveness_probe.as_ref()),
        ("/healthz".to_owned(), http.clone())
    );
    assert_eq!(
        probe(container.readiness_probe.as_ref()),
        ("/readyz".to_owned(), http.clone())
    );
    assert_eq!(
        probe(container.startup_probe.as_ref()),
        ("/healthz".to_owned(), http)
    );

    let env = install.env();
    assert_eq!(
        env["QLEET_LISTEN"],
        format!("value 0.0.0.0:{}", port.container_port)
    );
    assert_eq!(env["QLEET_RUNTIME"], "value kubernetes");
    assert_eq!(env["QLEET_PUBLIC_URL"], "value https://qleet.example.com");
    assert_eq!(env["QLEET_DATA_DIR"], "value /var/lib/qleet");
    assert_eq!(
        env["QLEET_K8S_IMAGE"],
        format!("value {}", container.image.as_deref().expect("image"))
    );
    // Each control plane's NetworkPolicy admits exactly these pods from this namespace.
    assert_eq!(env["QLEET_K8S_GATEWAY_NAMESPACE"], "value qleet");
    let gateway_labels: BTreeMap<String, String> = env["QLEET_K8S_GATEWAY_POD_LABELS"]
        .trim_start_matches("value ")
        .split(',')
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("k=v");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    assert!(
        selects(&gateway_labels, &install.pod_labels()),
        "{gateway_labels:?}"
    );
    // Secrets only by reference; the two `serve` cannot start without are not optional.
    assert_eq!(env["QLEET_SECRET_KEY"], "secret qleet/QLEET_SECRET_KEY");
    assert_eq!(env["DATABASE_URL"], "secret qleet/DATABASE_URL");
    assert_eq!(
        env["QLEET_OIDC_PROVIDERS"],
        "secret qleet/QLEET_OIDC_PROVIDERS?"
    );
    assert_eq!(
        env["QLEET_STRIPE_SECRET_KEY"],
        "secret qleet/QLEET_STRIPE_SECRET_KEY?"
    );
    assert_eq!(
        env["QLEET_STRIPE_WEBHOOK_SECRET"],
        "secret qleet/QLEET_STRIPE_WEBHOOK_SECRET?"
    );
}

#[test]
fn the_service_ingress_and_disruption_budget_reach_the_deployments_pods() {
    let install = render(&[]);
    let pod_labels = install.pod_labels();
    let dspec = install.deployment.spec.as_ref().expect("spec");
    let deployment_selector = dspec.selector.match_labels.clone().expect("selector");
    assert!(selects(&deployment_selector, &pod_labels));

    let sspec = install.service.spec.as_ref().expect("service spec");
    assert_eq!(sspec.type_.as_deref(), Some("ClusterIP"));
    assert!(selects(
        sspec.selector.as_ref().expect("selector"),
        &pod_labels
    ));
    let service_port = sspec.ports.as_ref().expect("ports")[0].clone();
    let container_ports: Vec<_> = install.container().ports.clone().expect("ports");
    let target = service_port.target_port.clone().expect("targetPort");
    assert!(
        container_ports.iter().any(|p| match &target {
            IntOrString::String(name) => p.name.as_ref() == Some(name),
            IntOrString::Int(n) => p.container_port == *n,
        }),
        "{target:?} is none of {container_ports:?}"
    );

    let ingress = install.ingress.as_ref().expect("ingress");
    let ispec = ingress.spec.as_ref().expect("ingress spec");
    let rules = ispec.rules.as_ref().expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].host.as_deref(), Some("qleet.example.com"));
    let paths = &rules[0].http.as_ref().expect("http").paths;
    assert_eq!(paths.len(), 1);
    assert_eq!(paths[0].path.as_deref(), Some("/"));
    assert_eq!(paths[0].path_type, "Prefix");
    let backend = paths[0].backend.service.as_ref().expect("service backend");
    assert_eq!(Some(&backend.name), install.service.metadata.name.as_ref());
    let port = backend.port.as_ref().expect("port");
    assert_eq!(port.name, service_port.name);
    let tls = ispec.tls.as_ref().expect("tls");
    assert_eq!(tls[0].hosts, Some(vec!["qleet.example.com".to_owned()]));
    assert_eq!(tls[0].secret_name.as_deref(), Some("qleet-tls"));

    let bspec = install.budget.spec.as_ref().expect("budget spec");
    assert_eq!(bspec.max_unavailable, Some(IntOrString::Int(1)));
    assert!(bspec.min_available.is_none());
    let budget_selector = bspec
        .selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .expect("selector");
    assert!(selects(&budget_selector, &pod_labels));
}

#[test]
fn the_example_values_file_renders_with_its_settings() {
    let path = example_values();
    let install = render(&["--values", path.to_str().expect("utf-8 path")]);
    let env = install.env();
    assert_eq!(
        install.container().image.as_deref(),
        Some("registry.example.com/qleet/qleet:0.1.0")
    );
    assert_eq!(
        env["QLEET_K8S_IMAGE"],
        "value registry.example.com/qleet/qleet-control-plane:0.1.0"
    );
    assert_eq!(
        env["QLEET_STRIPE_PRICES"],
        "value team=price_123,business=price_456"
    );
    assert_eq!(env["QLEET_HIBERNATE_AFTER_SECS"], "value 1800");
    let pod = install.pod_spec();
    assert_eq!(
        pod.image_pull_secrets.as_ref().expect("pull secrets")[0].name,
        "registry-credentials"
    );
    let data = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "data")
        .expect("data volume");
    assert_eq!(
        data.persistent_volume_claim
            .as_ref()
            .expect("claim")
            .claim_name,
        "qleet-exports"
    );
    let ingress = install.ingress.expect("ingress");
    assert_eq!(
        ingress
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref()),
        Some("nginx")
    );
    let annotations = ingress.metadata.annotations.expect("annotations");
    assert_eq!(annotations["cert-manager.io/cluster-issuer"], "letsencrypt");
}

#[test]
fn values_choose_the_namespace_replicas_host_secrets_and_no_ingress() {
    let (dir, file) = values_file(
        "namespace: qleet-prod\nreplicas: 3\npublicUrl: https://cloud.acme.test\n\
         ingress: {enabled: false}\n\
         secrets:\n  databaseUrl: {name: qleet-db, key: url}\n",
    );
    let install = render(&["--values", file.to_str().expect("utf-8 path")]);
    std::fs::remove_dir_all(dir).ok();
    assert!(install.ingress.is_none());
    assert_eq!(
        install.namespace.metadata.name.as_deref(),
        Some("qleet-prod")
    );
    assert_eq!(
        install.deployment.spec.as_ref().and_then(|s| s.replicas),
        Some(3)
    );
    let env = install.env();
    assert_eq!(env["DATABASE_URL"], "secret qleet-db/url");
    assert_eq!(env["QLEET_PUBLIC_URL"], "value https://cloud.acme.test");
    assert_eq!(env["QLEET_K8S_GATEWAY_NAMESPACE"], "value qleet-prod");
    let subjects = install.binding.subjects.clone().expect("subjects");
    assert_eq!(subjects[0].namespace.as_deref(), Some("qleet-prod"));
}

/// `qleet serve` takes the rendered environment: with the secrets filled in and a database
/// that is not there, it gets past its configuration and stops at the database.
#[test]
fn qleet_serve_accepts_the_rendered_environment() {
    let install = render(&[]);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_qleet"));
    command.arg("serve").env_clear();
    for var in install.container().env.iter().flatten() {
        if let Some(value) = &var.value {
            command.env(&var.name, value);
        }
    }
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    command
        .env("QLEET_SECRET_KEY", qleet::keys::Keys::generate_secret())
        .env(
            "DATABASE_URL",
            format!("postgres://qleet@127.0.0.1:{closed_port}/qleet"),
        );
    let out = command.output().expect("run qleet serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("configuration"), "{stderr}");
    assert!(
        stderr.contains("cannot connect to the management database"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// RBAC against the driver's real requests
// ---------------------------------------------------------------------------------------------

/// What RBAC authorises for one request: group, resource (with subresource), verbs.
#[derive(Debug)]
struct Authorised {
    group: String,
    resource: String,
    namespace: Option<String>,
    verbs: Vec<&'static str>,
}

fn authorised(seen: &Seen) -> Authorised {
    let segments: Vec<&str> = seen.path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
        _ => panic!("not a resource path: {}", seen.path),
    };
    let (namespace, resource, name) = match rest {
        ["namespaces", ns] => (None, "namespaces".to_owned(), Some(*ns)),
        ["namespaces", ns, resource] => (Some(*ns), (*resource).to_owned(), None),
        ["namespaces", ns, resource, name] => (Some(*ns), (*resource).to_owned(), Some(*name)),
        ["namespaces", ns, resource, name, sub] => {
            (Some(*ns), format!("{resource}/{sub}"), Some(*name))
        }
        [resource] => (None, (*resource).to_owned(), None),
        [resource, name] => (None, (*resource).to_owned(), Some(*name)),
        other => panic!("unexpected path {other:?}"),
    };
    let verbs = match (seen.method.as_str(), name) {
        ("GET", Some(_)) => vec!["get"],
        ("GET", None) if seen.query.contains("watch=true") => vec!["watch"],
        ("GET", None) => vec!["list"],
        ("POST", _) => vec!["create"],
        ("PUT", _) => vec!["update"],
        // Server-side apply creates what does not exist yet: authorised as both.
        ("PATCH", _) if seen.content_type.as_deref() == Some("application/apply-patch+yaml") => {
            vec!["patch", "create"]
        }
        ("PATCH", _) => vec!["patch"],
        ("DELETE", Some(_)) => vec!["delete"],
        ("DELETE", None) => vec!["deletecollection"],
        (method, _) => panic!("unexpected method {method}"),
    };
    Authorised {
        group,
        resource,
        namespace: namespace.map(str::to_owned),
        verbs,
    }
}

fn spec() -> ControlPlaneSpec {
    ControlPlaneSpec {
        id: Uuid::new_v4(),
        org_id: Uuid::new_v4(),
        database_url: SecretString::from("postgres://qleet_cp_x:pw@db.internal:5432/qleet_cp_x"),
        verifying_key: "dGhpcy1pcy1hLXB1YmxpYy1rZXktb2YtMzItYnl0ZXM".to_owned(),
    }
}

/// Drives the driver through a control plane's whole life: start (creating), status, start
/// again (converging), stop, status, delete.
async fn the_drivers_requests() -> Vec<Seen> {
    let (client, api) = ApiServer::start();
    let driver = KubernetesDriver::new(
        client,
        KubernetesSettings {
            delete_poll_interval: Duration::from_millis(1),
            ..KubernetesSettings::default()
        },
    );
    let spec = spec();
    driver.start(&spec).await.expect("start");
    assert!(matches!(
        driver.status(spec.id).await.expect("status"),
        RuntimeStatus::Ready(_)
    ));
    driver.start(&spec).await.expect("start again");
    driver.stop(spec.id).await.expect("stop");
    driver.status(spec.id).await.expect("status after stop");
    driver.delete(spec.id).await.expect("delete");
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.method == "DELETE" && r.path.ends_with(&namespace_name(spec.id))),
        "the namespace was deleted"
    );
    requests
}

#[tokio::test]
async fn the_rbac_allows_exactly_what_the_kubernetes_driver_asks_of_the_api_server() {
    let install = render(&[]);
    let rules = install.cluster_role.rules.clone().expect("rules");
    // Every grant as (group, resource, verb), refusing wildcards and anything but plain rules.
    let mut granted: BTreeSet<(String, String, String)> = BTreeSet::new();
    for rule in &rules {
        assert!(rule.non_resource_urls.is_none() && rule.resource_names.is_none());
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    for word in [group, resource, verb] {
                        assert!(!word.contains('*'), "wildcard in {rule:?}");
                    }
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    // Bound cluster-wide (tenant namespaces are made at run time) to our service account only.
    let binding = &install.binding;
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        binding.role_ref.name.as_str(),
        install.cluster_role.metadata.name.as_deref().expect("name")
    );
    let subjects = binding.subjects.clone().expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(
        Some(&subjects[0].name),
        install.service_account.metadata.name.as_ref()
    );
    assert_eq!(subjects[0].namespace, install.namespace.metadata.name);

    let mut used: BTreeSet<(String, String, String)> = BTreeSet::new();
    for seen in the_drivers_requests().await {
        let wanted = authorised(&seen);
        if let Some(ns) = &wanted.namespace {
            assert!(ns.starts_with("qleet-cp-"), "{} {}", seen.method, seen.path);
        }
        for verb in &wanted.verbs {
            let grant = (
                wanted.group.clone(),
                wanted.resource.clone(),
                (*verb).to_owned(),
            );
            assert!(
                granted.contains(&grant),
                "{} {} needs {grant:?}, which the ClusterRole does not grant",
                seen.method,
                seen.path
            );
            used.insert(grant);
        }
    }
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(unused.is_empty(), "granted but never requested: {unused:?}");
}

// ---------------------------------------------------------------------------------------------
// Refused input
// ---------------------------------------------------------------------------------------------

/// `qleet manifests --values FILE` with `yaml` in FILE: fails with one line naming the problem
/// and prints no manifests.
fn refused(yaml: Option<&str>) -> String {
    let (dir, file) = values_file(yaml.unwrap_or(""));
    if yaml.is_none() {
        std::fs::remove_file(&file).expect("remove");
    }
    let out = qleet(&["manifests", "--values", file.to_str().expect("utf-8 path")]);
    std::fs::remove_dir_all(dir).ok();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("qleet: "), "{stderr}");
    assert!(stderr.contains("values.yaml"), "names the file: {stderr}");
    stderr
}

#[test]
fn an_unknown_field_is_refused_by_name() {
    let err = refused(Some("replica: 3\n"));
    assert!(err.contains("unknown field `replica`"), "{err}");
    let err = refused(Some("ingress:\n  tlsSecret: x\n"));
    assert!(
        err.contains("ingress.tlsSecret: unknown field `tlsSecret`"),
        "{err}"
    );
}

#[test]
fn invalid_values_are_refused_naming_the_field() {
    for (yaml, field, why) in [
        ("replicas: 0\n", "replicas:", "at least 1"),
        ("replicas: two\n", "replicas:", "invalid type"),
        ("publicUrl: not a url\n", "publicUrl:", "not a URL"),
        (
            "publicUrl: http://qleet.example.com\n",
            "publicUrl:",
            "https",
        ),
        (
            "publicUrl: https://qleet.example.com/app\n",
            "publicUrl:",
            "no path",
        ),
        ("namespace: Qleet_Prod\n", "namespace:", "DNS label"),
        (
            "resources: {limits: {memory: 12MB}}\n",
            "resources.limits.memory:",
            "quantity",
        ),
        (
            "env: {QLEET_SECRET_KEY: x}\n",
            "env.QLEET_SECRET_KEY:",
            "secrets.secretKey",
        ),
        (
            "env: {QLEET_RUNTIME: process}\n",
            "env.QLEET_RUNTIME:",
            "set by the manifests",
        ),
        (
            "secrets: {databaseUrl: {name: db}}\n",
            "secrets.databaseUrl",
            "missing field `key`",
        ),
        (
            "replicas: [1\n",
            "not valid YAML: line 1",
            "unclosed bracket",
        ),
    ] {
        let err = refused(Some(yaml));
        assert!(err.contains(field) && err.contains(why), "{yaml:?}: {err}");
    }
}

#[test]
fn a_missing_values_file_is_refused() {
    let err = refused(None);
    assert!(err.contains("cannot read"), "{err}");
    assert!(err.contains("No such file"), "{err}");
}
