//! AWS work in the customer's account: the agent's ambient credentials (the SDK's default
//! chain) assume the tenant's role with the control plane's ExternalId, then the service SDKs
//! create, adopt, update and delete what a task describes.

pub mod eks;
pub mod rds;
pub mod s3;
pub mod secrets;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sts::config::{Credentials, SharedCredentialsProvider, SharedHttpClient};
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::types::Tag;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_http_client::{Builder as HttpBuilder, ConnectorBuilder};
use serde::Deserialize;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::task::TaskError;

/// Assumed-role credentials are used until this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// How long an assumed session lasts (the AWS default; roles allow at least this).
const SESSION_SECONDS: i32 = 3600;

/// The account block of an AWS task payload: which role to assume, and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    #[serde(default)]
    pub account_id: Option<String>,
    pub role_arn: String,
    /// Required: a task without one is refused before any AWS call (moto cannot check this).
    #[serde(default)]
    pub external_id: Option<String>,
    pub region: String,
}

/// Who is acting, for the session's name and tags (what the customer's CloudTrail shows).
#[derive(Debug, Clone)]
pub struct Actor {
    pub task: Uuid,
    pub control_plane: String,
    pub object_id: Uuid,
    /// `Kind/name`.
    pub object: String,
    /// The Qleet user who made the change, when the control plane says.
    pub source_identity: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    role_arn: String,
    external_id: String,
    region: String,
    object_id: Uuid,
    source_identity: Option<String>,
}

struct Cached {
    config: SdkConfig,
    expires: SystemTime,
}

/// The agent's AWS side: ambient configuration plus a cache of assumed-role sessions.
#[derive(Clone)]
pub struct Aws {
    base: SdkConfig,
    sessions: Arc<Mutex<HashMap<SessionKey, Cached>>>,
}

/// The HTTPS client every AWS SDK client uses: rustls with ring (no aws-lc build), proxies from
/// `HTTPS_PROXY`/`NO_PROXY`.
pub fn http_client() -> SharedHttpClient {
    HttpBuilder::new().build_with_connector_fn(|settings, components| {
        let mut conn =
            ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(CryptoMode::Ring));
        conn.set_connector_settings(settings.cloned());
        if let Some(c) = components {
            conn.set_sleep_impl(c.sleep_impl());
        }
        conn.set_proxy_config(Some(ProxyConfig::from_env()));
        conn.build()
    })
}

impl Aws {
    /// Loads the ambient configuration (environment, profile, web identity, container or
    /// instance credentials; `AWS_ENDPOINT_URL`), with retries for throttling and outages.
    pub async fn load() -> Aws {
        Aws::from_loader(aws_config::defaults(BehaviorVersion::latest())).await
    }

    /// Like [`Aws::load`], from a loader the caller has set up (tests give moto's endpoint
    /// and credentials here instead of through the process environment).
    pub async fn from_loader(loader: aws_config::ConfigLoader) -> Aws {
        let base = loader
            .http_client(http_client())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(5)
                    .with_initial_backoff(Duration::from_millis(200)),
            )
            .load()
            .await;
        Aws {
            base,
            sessions: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The endpoint override (`AWS_ENDPOINT_URL`), when there is one.
    pub fn endpoint_override(&self) -> Option<&str> {
        self.base.endpoint_url()
    }

    /// Assumes `account`'s role for `actor` (or reuses a cached session for the same role,
    /// ExternalId, region and object), answering a configuration for the service clients.
    pub async fn session(&self, account: &Account, actor: &Actor) -> Result<SdkConfig, TaskError> {
        let external_id = account
            .external_id
            .as_deref()
            .filter(|e| !e.is_empty())
            .ok_or_else(|| {
                TaskError::permanent(
                    "MissingExternalId",
                    "the task carries no ExternalId; the agent never assumes a role without one",
                )
            })?;
        if !account.role_arn.starts_with("arn:aws")
            || !account.role_arn.contains(":iam::")
            || !account.role_arn.contains(":role/")
        {
            return Err(TaskError::permanent(
                "InvalidRoleArn",
                format!("`{}` is not an IAM role ARN", account.role_arn),
            ));
        }
        let key = SessionKey {
            role_arn: account.role_arn.clone(),
            external_id: external_id.to_owned(),
            region: account.region.clone(),
            object_id: actor.object_id,
            source_identity: actor.source_identity.clone(),
        };
        let mut sessions = self.sessions.lock().await;
        if let Some(c) = sessions.get(&key)
            && c.expires > SystemTime::now() + REFRESH_BEFORE_EXPIRY
        {
            return Ok(c.config.clone());
        }
        let region = Region::new(account.region.clone());
        let sts = aws_sdk_sts::Client::new(&self.base.to_builder().region(region.clone()).build());
        let tag = |k: &str, v: &str| {
            Tag::builder()
                .key(k)
                .value(tag_value(v))
                .build()
                .map_err(|e| TaskError::permanent("InvalidSessionTag", e.to_string()))
        };
        let mut req = sts
            .assume_role()
            .role_arn(&account.role_arn)
            .role_session_name(session_name(actor.task))
            .external_id(external_id)
            .duration_seconds(SESSION_SECONDS)
            .tags(tag("qleet:control-plane", &actor.control_plane)?)
            .tags(tag("qleet:object", &actor.object)?)
            .tags(tag("qleet:object-id", &actor.object_id.to_string())?);
        if let Some(who) = actor.source_identity.as_deref().and_then(source_identity) {
            req = req.source_identity(who);
        }
        let out = req
            .send()
            .await
            .map_err(|e| sdk_error("sts:AssumeRole", e))?;
        let c = out.credentials().ok_or_else(|| {
            TaskError::retryable(
                "AssumeRoleNoCredentials",
                "STS answered without credentials",
            )
        })?;
        let expires = SystemTime::try_from(*c.expiration())
            .unwrap_or_else(|_| SystemTime::now() + Duration::from_secs(900));
        let creds = Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_owned()),
            Some(expires),
            "qleet-assume-role",
        );
        let config = self
            .base
            .to_builder()
            .region(region)
            .credentials_provider(SharedCredentialsProvider::new(creds))
            .build();
        sessions.retain(|_, c| c.expires > SystemTime::now());
        sessions.insert(
            key,
            Cached {
                config: config.clone(),
                expires,
            },
        );
        Ok(config)
    }
}

/// `qleet-<task id>`: the session name names the task (2 to 64 of `[\w+=,.@-]`).
pub fn session_name(task: Uuid) -> String {
    format!("qleet-{}", task.simple())
}

/// Session tag values allow letters, digits, spaces and `_.:/=+-@`, up to 256 characters.
fn tag_value(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c.is_alphanumeric() || " _.:/=+-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect()
}

/// SourceIdentity allows 2 to 64 of `[\w+=,.@-]`; anything else is replaced, and a value that
/// cannot be made to fit is left out rather than sent wrong.
fn source_identity(who: &str) -> Option<String> {
    let s: String = who
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    (s.len() >= 2).then_some(s)
}

/// Error codes that mean "try again later".
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "InternalFailure",
    "InternalServiceError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "PriorRequestNotComplete",
    "OperationAborted",
    "IDPCommunicationError",
    "InvalidDBInstanceState",
    "ResourceInUseException",
];

/// An AWS SDK error as a task error: the service's code and message, and whether trying again
/// later may help. (The SDK has already retried throttling and transient failures itself.)
pub fn sdk_error<E>(
    action: &str,
    err: SdkError<E, aws_sdk_sts::config::http::HttpResponse>,
) -> TaskError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    match &err {
        SdkError::ServiceError(_) => {
            // An error envelope the SDK does not parse (moto wraps STS errors in `<Errors>`)
            // still names its code and message in the body.
            let body = err
                .raw_response()
                .and_then(|r| r.body().bytes())
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let code = err
                .code()
                .map(str::to_owned)
                .or_else(|| xml_text(&body, "Code"))
                .unwrap_or_else(|| "Unknown".to_owned());
            let message = match err
                .message()
                .map(str::to_owned)
                .or_else(|| xml_text(&body, "Message"))
            {
                Some(m) => m,
                None => format!(
                    "HTTP {}: {}",
                    status.map(|s| s.to_string()).unwrap_or_default(),
                    crate::client::error_chain(&err)
                ),
            };
            let retryable =
                TRANSIENT_CODES.contains(&code.as_str()) || status.is_some_and(|s| s >= 500);
            TaskError {
                code,
                message: format!("{action}: {message}"),
                retryable,
            }
        }
        SdkError::TimeoutError(_) => {
            TaskError::retryable("Timeout", format!("{action}: timed out"))
        }
        SdkError::DispatchFailure(_) => TaskError::retryable(
            "NetworkError",
            format!("{action}: {}", crate::client::error_chain(&err)),
        ),
        _ => TaskError::retryable(
            "ResponseError",
            format!("{action}: {}", crate::client::error_chain(&err)),
        ),
    }
}

/// The text of the first `<tag>` element of an XML error body.
pub(crate) fn xml_text(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{tag}>"))? + start;
    let text = body[start..end].trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The code of an SDK error, when the service answered one.
pub fn error_code<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> Option<&str> {
    match err {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_and_tags_fit_what_sts_accepts() {
        let name = session_name(Uuid::nil());
        assert!(name.len() <= 64 && name.starts_with("qleet-"));
        assert_eq!(tag_value("Workload/web"), "Workload/web");
        assert_eq!(tag_value("a*b"), "a_b");
        assert_eq!(
            source_identity("alice@example.com").as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(source_identity("x"), None);
        assert_eq!(source_identity(&"a".repeat(100)).map(|s| s.len()), Some(64));
        let body = "<ErrorResponse><Errors><Error><Code>AccessDenied</Code><Message>no</Message></Error></Errors></ErrorResponse>";
        assert_eq!(xml_text(body, "Code").as_deref(), Some("AccessDenied"));
        assert_eq!(xml_text(body, "Message").as_deref(), Some("no"));
        assert_eq!(xml_text(body, "Type"), None);
    }
}
