//! EKS clusters reached without a kubeconfig: the agent assumes the runtime's account role
//! (the same session the AWS tasks use), signs an STS `GetCallerIdentity` URL that names the
//! cluster (`x-k8s-aws-id`), and presents it as a bearer token, as `aws eks get-token` does;
//! the cluster's endpoint and CA come from the runtime's outputs (DescribeCluster).

use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningParams, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine as _;
use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};
use secrecy::SecretString;
use serde::Deserialize;

use crate::aws::Account;
use crate::task::TaskError;

/// What every EKS token starts with.
pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";
/// The header naming the cluster in the signed request.
pub const CLUSTER_ID_HEADER: &str = "x-k8s-aws-id";
/// How long the presigned URL is valid for signing purposes (what `aws eks get-token` uses;
/// EKS itself accepts a token for about 15 minutes).
pub const TOKEN_EXPIRES: Duration = Duration::from_secs(60);
/// How long a client built with one token is used before a new token is made: well inside the
/// ~15 minutes EKS accepts it, so a task that starts just before still has minutes left.
pub const CLIENT_TTL: Duration = Duration::from_secs(10 * 60);

/// `payload.resource.access.eks`: how to reach an EKS runtime without a kubeconfig.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EksAccess {
    pub cluster_name: String,
    /// The API server's URL.
    pub endpoint: String,
    /// The cluster CA: base64 of PEM, as DescribeCluster answers it.
    pub certificate_authority: String,
    /// The runtime's account: its role is assumed to sign the token.
    pub account: Account,
}

/// A bearer token for `cluster` signed with `credentials`, valid from `now`.
pub fn token(
    credentials: Credentials,
    region: &str,
    cluster: &str,
    now: SystemTime,
) -> Result<String, TaskError> {
    let failed = |e: &dyn std::fmt::Display| {
        TaskError::permanent("EksTokenFailed", format!("signing the EKS token: {e}"))
    };
    let identity = Identity::from(credentials);
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_EXPIRES);
    let params: SigningParams = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| failed(&e))?
        .into();
    let host = format!("sts.{region}.amazonaws.com");
    let url = format!("https://{host}/?Action=GetCallerIdentity&Version=2011-06-15");
    let headers = [("host", host.as_str()), (CLUSTER_ID_HEADER, cluster)];
    let signable = SignableRequest::new(
        "GET",
        url.as_str(),
        headers.into_iter(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| failed(&e))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| failed(&e))?
        .into_parts();
    let mut request = http::Request::builder()
        .uri(url.as_str())
        .body(())
        .map_err(|e| failed(&e))?;
    instructions.apply_to_request_http1x(&mut request);
    Ok(format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(request.uri().to_string())
    ))
}

/// A token for `access`'s cluster from an assumed-role session, and until when a client may
/// use it: [`CLIENT_TTL`], or less when the session's credentials expire sooner (a token
/// signed by expired credentials is refused).
pub async fn token_for(
    session: &SdkConfig,
    access: &EksAccess,
) -> Result<(String, SystemTime), TaskError> {
    let provider = session.credentials_provider().ok_or_else(|| {
        TaskError::permanent("EksTokenFailed", "the assumed session has no credentials")
    })?;
    let credentials = provider.provide_credentials().await.map_err(|e| {
        TaskError::retryable(
            "EksTokenFailed",
            format!("credentials for the EKS token: {e}"),
        )
    })?;
    let now = SystemTime::now();
    let use_until = use_until(now, credentials.expiry());
    let token = token(
        credentials,
        &access.account.region,
        &access.cluster_name,
        now,
    )?;
    Ok((token, use_until))
}

/// [`CLIENT_TTL`] from `now`, but no later than a minute before the signing credentials expire.
fn use_until(now: SystemTime, expiry: Option<SystemTime>) -> SystemTime {
    let ttl = now + CLIENT_TTL;
    match expiry.and_then(|e| e.checked_sub(Duration::from_secs(60))) {
        Some(last) => ttl.min(last),
        None => ttl,
    }
}

/// The client configuration for `access` with `token`: the cluster's endpoint, its CA, and the
/// token as bearer.
pub async fn config(access: &EksAccess, token: String) -> Result<kube::Config, TaskError> {
    let invalid = |e: &dyn std::fmt::Display| {
        TaskError::permanent(
            "ClusterConfig",
            format!("EKS cluster {}: {e}", access.cluster_name),
        )
    };
    if access.endpoint.is_empty() || access.certificate_authority.is_empty() {
        return Err(invalid(
            &"the runtime reports no endpoint or certificate authority",
        ));
    }
    let name = access.cluster_name.clone();
    let kc = Kubeconfig {
        clusters: vec![NamedCluster {
            name: name.clone(),
            cluster: Some(Cluster {
                server: Some(access.endpoint.clone()),
                certificate_authority_data: Some(access.certificate_authority.clone()),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "qleet-agent".into(),
            auth_info: Some(AuthInfo {
                token: Some(SecretString::from(token)),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: name.clone(),
            context: Some(Context {
                cluster: name.clone(),
                user: Some("qleet-agent".into()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(name),
        ..Kubeconfig::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| invalid(&e))?;
    // kube skips what is not a PEM certificate; a cluster trusted by nothing is refused here
    // rather than at the first TLS handshake.
    if config.root_cert.as_ref().is_none_or(Vec::is_empty) {
        return Err(invalid(
            &"the certificate authority holds no PEM certificate",
        ));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_used_ten_minutes_or_until_just_before_its_credentials_expire() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(use_until(now, None), now + CLIENT_TTL);
        let in_an_hour = now + Duration::from_secs(3600);
        assert_eq!(use_until(now, Some(in_an_hour)), now + CLIENT_TTL);
        let in_five_minutes = now + Duration::from_secs(300);
        assert_eq!(
            use_until(now, Some(in_five_minutes)),
            now + Duration::from_secs(240)
        );
    }
}
