//! The one error type at the edge of both planes' APIs, with stable codes for clients, and its
//! GraphQL and JSON renderings.

use async_graphql::{ErrorExtensions, Pos};
use async_graphql_axum::GraphQLResponse;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use qleet_protocol::UnknownRole;
use qleet_protocol::internal_token::{QuotaExceeded, quota_message};

/// An error a caller of the API can act on. Each variant has a stable `code` that GraphQL
/// answers carry in `extensions.code`; internal errors never leak their cause.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("sign in first (session cookie or `Authorization: Bearer qleet_...`)")]
    Unauthenticated,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{field}: {message}")]
    InvalidInput {
        /// The input at fault: an argument's name, or for an apply `Kind/name:spec.path`.
        field: std::borrow::Cow<'static, str>,
        message: String,
    },
    #[error("{0}")]
    Conflict(String),
    /// The input is over a documented size limit (e.g. an apply's YAML once its aliases are
    /// expanded).
    #[error("{0}")]
    TooLarge(String),
    #[error("the request is missing a valid CSRF token; reload the page and try again")]
    Csrf,
    /// A plan limit: `limit` names what (`control planes`, `agents`, `objects`), `plan` the
    /// organisation's plan, `upgrade_to` the smallest plan that allows more (if any).
    #[error("{}", quota_message(limit, *max, plan, upgrade_to.as_deref()))]
    QuotaExceeded {
        limit: String,
        max: u32,
        plan: String,
        upgrade_to: Option<String>,
    },
    /// The organisation's subscription is unpaid past its grace period.
    #[error("{0}")]
    SubscriptionPastDue(String),
    /// The thing exists but cannot answer now (e.g. a control plane that is not Ready).
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    #[error("internal error (request id {request_id})")]
    Internal {
        request_id: String,
        #[source]
        source: anyhow::Error,
    },
}

impl ApiError {
    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthenticated => "UNAUTHENTICATED",
            ApiError::Forbidden(_) => "FORBIDDEN",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::InvalidInput { .. } => "INVALID_INPUT",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::TooLarge(_) => "INPUT_TOO_LARGE",
            ApiError::Csrf => "CSRF",
            ApiError::QuotaExceeded { .. } => "QUOTA_EXCEEDED",
            ApiError::SubscriptionPastDue(_) => "SUBSCRIPTION_PAST_DUE",
            ApiError::Unavailable { code, .. } => code,
            ApiError::Internal { .. } => "INTERNAL",
        }
    }

    pub fn invalid(
        field: impl Into<std::borrow::Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        ApiError::InvalidInput {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::Forbidden(message.into())
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::Csrf => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::InvalidInput { .. } => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::QuotaExceeded { .. } => StatusCode::FORBIDDEN,
            ApiError::SubscriptionPastDue(_) => StatusCode::PAYMENT_REQUIRED,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The code of [`ApiError::Unavailable`] when the database cannot answer for now.
pub const UNAVAILABLE: &str = "UNAVAILABLE";

/// How long a client is told to wait (`Retry-After`, seconds) before retrying an
/// [`ApiError::Unavailable`] answer.
pub const RETRY_AFTER_SECS: u32 = 1;

/// Tells the client when to retry an answer that is unavailable for now (`Retry-After`).
pub fn set_retry_after(headers: &mut axum::http::HeaderMap) {
    headers.insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(RETRY_AFTER_SECS),
    );
}

/// Whether a database failure is transient, so the same request is worth retrying as it is: the
/// server cannot be reached or is restarting, the pool has no connection to give, or the
/// transaction lost a serialization race or a deadlock.
pub fn is_retryable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 40001 serialization failure; 40P01 deadlock;
            // 53300 too many connections; 57P01-57P03 shutting down or starting up.
            code.starts_with("08")
                || matches!(
                    &*code,
                    "40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03"
                )
        }),
        _ => false,
    }
}

/// The answer for a transient database failure: `UNAVAILABLE`, retry shortly.
fn database_unavailable(err: &sqlx::Error) -> ApiError {
    tracing::warn!(error = %err, "database unavailable; the caller is told to retry");
    ApiError::Unavailable {
        code: UNAVAILABLE,
        message: "the database is briefly unavailable; retry in a moment".into(),
    }
}

/// Turns any unexpected failure into [`ApiError::Internal`], logging the whole cause chain once
/// inside the current (request) span. A transient database failure anywhere in the chain is
/// [`ApiError::Unavailable`] instead: the caller should retry, not report a bug.
pub fn internal(err: impl Into<anyhow::Error>) -> ApiError {
    let source = err.into();
    if let Some(db) = source
        .chain()
        .find_map(|e| e.downcast_ref::<sqlx::Error>())
        .filter(|db| is_retryable(db))
    {
        return database_unavailable(db);
    }
    let request_id = crate::telemetry::current_request_id();
    tracing::error!(error = format!("{source:#}"), request.id = %request_id, "internal error");
    ApiError::Internal { request_id, source }
}

impl From<QuotaExceeded> for ApiError {
    fn from(q: QuotaExceeded) -> Self {
        ApiError::QuotaExceeded {
            limit: q.limit,
            max: q.max,
            plan: q.plan,
            upgrade_to: q.upgrade_to,
        }
    }
}

/// A role name the database should never hold: an internal error.
impl From<UnknownRole> for ApiError {
    fn from(err: UnknownRole) -> Self {
        internal(anyhow::anyhow!("{err} in database"))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        // `internal` answers a transient failure as `UNAVAILABLE`.
        internal(err)
    }
}

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        let mut err = async_graphql::Error::new(self.to_string());
        err = err.extend_with(|_, e| {
            e.set("code", self.code());
            if let ApiError::InvalidInput { field, .. } = self {
                e.set("field", field.as_ref());
            }
            if let ApiError::Internal { request_id, .. } = self {
                e.set("requestId", request_id.as_str());
            }
            if let ApiError::Unavailable { .. } = self {
                e.set("retryAfterSeconds", RETRY_AFTER_SECS);
            }
            if let ApiError::QuotaExceeded {
                limit,
                max,
                plan,
                upgrade_to,
            } = self
            {
                e.set("limit", limit.as_str());
                e.set("max", *max);
                e.set("plan", plan.as_str());
                if let Some(up) = upgrade_to {
                    e.set("upgradeTo", up.as_str());
                }
            }
        });
        err
    }
}

/// `?` on a domain result inside a resolver, keeping the stable `code`
/// (async-graphql's blanket `From<Display>` would drop it).
pub trait GqlResult<T> {
    fn gql(self) -> async_graphql::Result<T>;
}

impl<T> GqlResult<T> for Result<T, ApiError> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(|e| e.extend())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            serde_json::json!({ "error": { "code": self.code(), "message": self.to_string() } });
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let ApiError::Unavailable { .. } = self {
            set_retry_after(response.headers_mut());
        }
        response
    }
}

/// Whether a database error is a violation of the named unique constraint or index.
pub fn is_unique_violation(err: &sqlx::Error, constraint: &str) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("23505") && db.constraint() == Some(constraint)
        }
        _ => false,
    }
}

/// A GraphQL-shaped answer carrying one error, for failures before execution.
pub fn error_response(err: ApiError) -> Response {
    let server_error = err.extend().into_server_error(Pos::default());
    GraphQLResponse::from(async_graphql::Response::from_errors(vec![server_error])).into_response()
}
