//! The gateway: `/cp/{id}/...` reaches an organisation's own control plane. It authenticates the
//! caller (session or API token), checks their role in the control plane's organisation, wakes a
//! hibernated control plane, mints a short-lived signed token, and forwards the request.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use uuid::Uuid;

use super::driver::RuntimeStatus;
use super::{ControlPlane, Status, lifecycle};
use crate::error::ApiError;
use crate::identity::Principal;
use crate::internal_token::SubjectKind;
use crate::orgs::Role;
use crate::state::AppState;

/// How long a forwarded request may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Lifetime of the token minted per request.
const TOKEN_TTL_SECS: i64 = 300;

pub fn router() -> Router<AppState> {
    Router::new().route("/cp/{id}/{*rest}", any(forward))
}

/// The caller's role in the control plane's organisation; `NOT_FOUND` for outsiders.
async fn role_in(
    state: &AppState,
    principal: &Principal,
    cp: &ControlPlane,
) -> Result<Role, ApiError> {
    let not_found = || ApiError::NotFound("control plane".into());
    match principal {
        Principal::Token { org_id, role, .. } if *org_id == cp.org_id => Ok(*role),
        Principal::Token { .. } => Err(not_found()),
        Principal::User { user_id, .. } => {
            let role: Option<String> = sqlx::query_scalar(
                "select role from memberships where org_id = $1 and user_id = $2",
            )
            .bind(cp.org_id)
            .bind(user_id)
            .fetch_optional(&state.pool)
            .await?;
            Role::parse(&role.ok_or_else(not_found)?)
        }
    }
}

fn not_ready(status: Status) -> ApiError {
    let (code, message) = match status {
        Status::Pending | Status::Provisioning => (
            "CONTROL_PLANE_NOT_READY",
            "the control plane is still being provisioned; try again shortly",
        ),
        Status::Suspended => (
            "CONTROL_PLANE_SUSPENDED",
            "the control plane is suspended; resume it first",
        ),
        Status::Failed => (
            "CONTROL_PLANE_FAILED",
            "the control plane failed; see its events",
        ),
        _ => (
            "CONTROL_PLANE_GONE",
            "the control plane is being deleted or was deleted",
        ),
    };
    ApiError::Unavailable {
        code,
        message: message.into(),
    }
}

async fn forward(
    State(state): State<AppState>,
    Path((id, rest)): Path<(String, String)>,
    crate::web::ClientIp(ip): crate::web::ClientIp,
    method: Method,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    match forward_inner(&state, &id, &rest, ip, method, headers, uri, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward_inner(
    state: &AppState,
    id: &str,
    rest: &str,
    ip: Option<String>,
    method: Method,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Result<Response, ApiError> {
    let principal = crate::identity::authenticate(&state.pool, &headers)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::NotFound("control plane".into()))?;
    let services = &state.controlplanes;
    let cp = super::get_by_id(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("control plane".into()))?;
    let role = role_in(state, &principal, &cp).await?;
    let status = Status::parse(&cp.status)?;
    match status {
        Status::Ready => {}
        Status::Hibernated => lifecycle::wake(&state.pool, services, &cp).await?,
        other => return Err(not_ready(other)),
    }
    let endpoint = match services
        .driver
        .status(id)
        .await
        .map_err(crate::error::internal)?
    {
        RuntimeStatus::Ready(ep) => ep,
        _ => {
            // Restarting (crash, management restart): wait briefly rather than fail.
            lifecycle::wait_ready(services, id).await?;
            match services
                .driver
                .status(id)
                .await
                .map_err(crate::error::internal)?
            {
                RuntimeStatus::Ready(ep) => ep,
                _ => return Err(not_ready(Status::Provisioning)),
            }
        }
    };
    let (sub_kind, sub) = match &principal {
        Principal::User { user_id, .. } => (SubjectKind::User, *user_id),
        Principal::Token { token_id, .. } => (SubjectKind::Token, *token_id),
    };
    let token = services.keys.signer.mint(
        sub_kind,
        sub,
        cp.org_id,
        cp.id,
        role,
        chrono::Duration::seconds(TOKEN_TTL_SECS),
    );
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let mut upstream = state
        .http
        .request(method, format!("{}/{rest}{query}", endpoint.0))
        .timeout(UPSTREAM_TIMEOUT)
        .bearer_auth(token)
        .header("x-request-id", crate::telemetry::current_request_id())
        .body(body);
    for name in [header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(v) = headers.get(&name) {
            upstream = upstream.header(name, v);
        }
    }
    if let Some(ip) = ip {
        upstream = upstream.header("x-forwarded-for", ip);
    }
    let response = upstream.send().await.map_err(|e| ApiError::Unavailable {
        code: "CONTROL_PLANE_UNREACHABLE",
        message: format!(
            "the control plane did not answer ({})",
            if e.is_timeout() {
                "timeout"
            } else {
                "connection failed"
            }
        ),
    })?;
    // Recorded at most every few seconds: it feeds hibernation, not billing.
    sqlx::query(
        "update control_planes set last_request_at = now()
         where id = $1 and (last_request_at is null or last_request_at < now() - interval '5 seconds')",
    )
    .bind(cp.id)
    .execute(&state.pool)
    .await?;
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = response.bytes().await.map_err(crate::error::internal)?;
    let mut out = (status, bytes).into_response();
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(out)
}
