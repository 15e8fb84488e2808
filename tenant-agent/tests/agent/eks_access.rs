//! EKS runtimes reached without a kubeconfig: the token is a SigV4-presigned STS
//! `GetCallerIdentity` URL signed by the runtime's assumed role (moto answers the AssumeRole),
//! and what runs on the runtime is applied to its endpoint with that token as bearer (a
//! loopback HTTP server stands in for the cluster's API server).

use std::collections::BTreeMap;

use aws_credential_types::provider::ProvideCredentials;
use base64::Engine as _;
use qleet_agent::aws::{Account, Actor};
use qleet_agent::k8s::Clusters;
use qleet_agent::k8s::eks::{self, EksAccess};
use qleet_agent::task::{self, Context};
use qleet_protocol::TaskResult;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{ACCOUNT, Moto, REGION, ROLE_ARN, Recorder, TaskBuilder, account};
use qleet_test_support::kube::ApiServer;

/// The presigned URL inside a token.
fn decode(token: &str) -> url::Url {
    let encoded = token
        .strip_prefix("k8s-aws-v1.")
        .unwrap_or_else(|| panic!("not an EKS token: {token}"));
    assert!(!encoded.contains('='), "no padding: {encoded}");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .expect("base64url");
    url::Url::parse(&String::from_utf8(bytes).expect("utf-8")).expect("a URL")
}

fn query(url: &url::Url) -> BTreeMap<String, String> {
    url.query_pairs().into_owned().collect()
}

fn actor(object: &str) -> Actor {
    Actor {
        task: Uuid::new_v4(),
        control_plane: Uuid::new_v4().to_string(),
        object_id: Uuid::new_v4(),
        object: object.to_owned(),
        source_identity: None,
    }
}

/// A CA certificate in PEM, base64 as DescribeCluster answers it.
fn certificate_authority() -> String {
    let bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt")
        .expect("a CA bundle at /etc/ssl/certs/ca-certificates.crt (package ca-certificates)");
    let end = "-----END CERTIFICATE-----";
    let first = &bundle[..bundle.find(end).expect("a certificate") + end.len()];
    let pem = &first[first.find("-----BEGIN").expect("BEGIN")..];
    base64::engine::general_purpose::STANDARD.encode(format!("{pem}\n"))
}

fn access(endpoint: &str, external_id: &str) -> EksAccess {
    EksAccess {
        cluster_name: "qleet-eks-1a2b3c4d".into(),
        endpoint: endpoint.into(),
        certificate_authority: certificate_authority(),
        account: Account {
            account_id: Some(ACCOUNT.into()),
            role_arn: ROLE_ARN.into(),
            external_id: Some(external_id.into()),
            region: REGION.into(),
        },
    }
}

#[tokio::test]
async fn an_eks_token_is_a_presigned_get_caller_identity_url_naming_the_cluster_signed_by_the_assumed_role()
 {
    let moto = Moto::start().await;
    let aws = moto.agent_aws(&moto.url, "ambient", "ambient").await;
    let access = access("https://ABC.gr7.eu-west-1.eks.amazonaws.com", "qleet-ext-1");
    let session = aws
        .session(&access.account, &actor("Workload/web"))
        .await
        .expect("assumed");
    let assumed = session
        .credentials_provider()
        .expect("provider")
        .provide_credentials()
        .await
        .expect("credentials");
    // What moto's AssumeRole answered, not the ambient key.
    assert!(assumed.access_key_id().starts_with("ASIA"), "{assumed:?}");

    let (token, use_until) = eks::token_for(&session, &access).await.expect("token");
    // Used for ten minutes: the session's credentials last an hour.
    let ttl = use_until
        .duration_since(std::time::SystemTime::now())
        .expect("in the future");
    assert!(
        ttl > std::time::Duration::from_secs(590) && ttl <= eks::CLIENT_TTL,
        "{ttl:?}"
    );
    let url = decode(&token);
    assert_eq!(url.scheme(), "https");
    assert_eq!(url.host_str(), Some("sts.eu-west-1.amazonaws.com"));
    assert_eq!(url.path(), "/");
    let q = query(&url);
    assert_eq!(q["Action"], "GetCallerIdentity");
    assert_eq!(q["Version"], "2011-06-15");
    assert_eq!(q["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
    assert_eq!(q["X-Amz-Expires"], "60");
    let signed: Vec<&str> = q["X-Amz-SignedHeaders"].split(';').collect();
    assert_eq!(signed, ["host", "x-k8s-aws-id"]);
    let credential: Vec<&str> = q["X-Amz-Credential"].split('/').collect();
    assert_eq!(credential.len(), 5, "{credential:?}");
    assert_eq!(credential[0], assumed.access_key_id());
    assert_eq!(credential[1], &q["X-Amz-Date"][..8]);
    assert_eq!(&credential[2..], ["eu-west-1", "sts", "aws4_request"]);
    assert_eq!(
        q.get("X-Amz-Security-Token").map(String::as_str),
        assumed.session_token()
    );
    let signature = &q["X-Amz-Signature"];
    assert_eq!(signature.len(), 64);
    assert!(signature.chars().all(|c| c.is_ascii_hexdigit()));

    // The cluster's name is part of what is signed: another cluster, another signature.
    let now = std::time::SystemTime::now();
    let a = eks::token(assumed.clone(), REGION, "qleet-eks-1a2b3c4d", now).expect("a");
    let b = eks::token(assumed, REGION, "qleet-eks-other", now).expect("b");
    assert_ne!(
        query(&decode(&a))["X-Amz-Signature"],
        query(&decode(&b))["X-Amz-Signature"]
    );
}

/// One request the stand-in API server saw.
fn eks_workload(endpoint: &str, ca: &str) -> Value {
    json!({
        "runtime": { "clusterName": "qleet-eks-1a2b3c4d", "endpoint": endpoint, "certificateAuthority": ca },
        "access": { "eks": {
            "clusterName": "qleet-eks-1a2b3c4d",
            "endpoint": endpoint,
            "certificateAuthority": ca,
            "account": account(Some("qleet-ext-eks")),
        }},
        "namespace": "shop",
        "manifests": [{
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "settings", "namespace": "shop" },
            "data": { "a": "b" },
        }],
        "secrets": [],
    })
}

#[tokio::test]
async fn a_workload_on_an_eks_runtime_is_applied_to_its_endpoint_with_a_token_from_the_runtimes_role()
 {
    let moto = Moto::start().await;
    let proxy = Recorder::start(&moto.url).await;
    // A loopback API server in the place of the EKS cluster's.
    let (endpoint, api) = ApiServer::serve().await;
    // No configured clusters at all: no kubeconfig is needed for an EKS runtime.
    let ctx = Context {
        aws: moto.agent_aws(&proxy.url, "ambient", "ambient").await,
        clusters: Clusters::default(),
        helm: "/nonexistent/helm".into(),
        rollout_wait: std::time::Duration::from_secs(5),
    };
    let w = TaskBuilder::new("Workload", "web");
    let ca = certificate_authority();
    let first = w.task("ensure", eks_workload(&endpoint, &ca));
    match task::run(&ctx, &first).await {
        TaskResult::Succeeded { outputs } => assert!(outputs.is_empty(), "{outputs:?}"),
        TaskResult::Failed { code, message, .. } => panic!("{code}: {message}"),
    }

    let seen = api.requests();
    let paths: Vec<(&str, &str)> = seen
        .iter()
        .map(|h| (h.method.as_str(), h.path.as_str()))
        .collect();
    let inventory = format!(
        "/api/v1/namespaces/shop/configmaps/qleet-inventory-{}",
        w.object_id
    );
    assert_eq!(
        paths,
        [
            ("GET", "/api/v1/namespaces/shop"),
            ("PATCH", "/api/v1/namespaces/shop"),
            ("GET", inventory.as_str()),
            ("PATCH", inventory.as_str()),
            ("PATCH", "/api/v1/namespaces/shop/configmaps/settings"),
        ]
    );
    let bearer = seen[0]
        .authorization
        .clone()
        .expect("an Authorization header");
    let token = bearer.strip_prefix("Bearer ").expect("a bearer token");
    assert!(token.starts_with("k8s-aws-v1."), "{token}");
    assert!(
        seen.iter()
            .all(|h| h.authorization.as_deref() == Some(&*bearer)),
        "every request carries the token"
    );
    let q = query(&decode(token));
    assert_eq!(q["Action"], "GetCallerIdentity");
    assert!(q["X-Amz-SignedHeaders"].contains("x-k8s-aws-id"));

    // Signed by the runtime's role, assumed with its ExternalId, in a session naming the task.
    let assumed = proxy.calls("AssumeRole");
    assert_eq!(assumed.len(), 1);
    assert_eq!(assumed[0].field("RoleArn").as_deref(), Some(ROLE_ARN));
    assert_eq!(
        assumed[0].field("ExternalId").as_deref(),
        Some("qleet-ext-eks")
    );
    assert_eq!(
        assumed[0].field("RoleSessionName"),
        Some(format!("qleet-{}", first.id.simple()))
    );
    assert!(!q["X-Amz-Credential"].starts_with("ambient/"));

    // The next task within the token's lifetime reuses the client and its token.
    let before = api.requests().len();
    let second = w.task("delete", eks_workload(&endpoint, &ca));
    match task::run(&ctx, &second).await {
        TaskResult::Succeeded { .. } => {}
        TaskResult::Failed { code, message, .. } => panic!("{code}: {message}"),
    }
    let after = api.requests();
    assert!(after.len() > before);
    assert!(
        after[before..]
            .iter()
            .all(|h| h.authorization.as_deref() == Some(&*bearer))
    );
}

#[tokio::test]
async fn an_eks_runtime_whose_certificate_authority_is_not_pem_is_a_clear_permanent_error() {
    let moto = Moto::start().await;
    // A loopback API server in the place of the EKS cluster's.
    let (endpoint, api) = ApiServer::serve().await;
    let ctx = Context {
        aws: moto.agent_aws(&moto.url, "ambient", "ambient").await,
        clusters: Clusters::default(),
        helm: "/nonexistent/helm".into(),
        rollout_wait: std::time::Duration::from_secs(5),
    };
    let w = TaskBuilder::new("Workload", "web");
    let bad = base64::engine::general_purpose::STANDARD.encode("not a certificate");
    match task::run(&ctx, &w.task("ensure", eks_workload(&endpoint, &bad))).await {
        TaskResult::Failed {
            code,
            message,
            retryable,
        } => {
            assert_eq!((code.as_str(), retryable), ("ClusterConfig", false));
            assert!(message.contains("qleet-eks-1a2b3c4d"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(api.requests().is_empty());
}
