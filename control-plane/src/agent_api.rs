//! HTTP routes of the agent API (`/agent/v1/...`; through the management gateway at
//! `/cp/{id}/agent/v1/...`). Until agents get their own credentials, a caller needs the admin
//! role (or the standalone admin token).

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::CpState;
use crate::caller::authenticate;
use crate::error::ApiError;
use crate::objects::tasks;
use qleet_protocol::Role;

pub(super) fn router() -> Router<CpState> {
    Router::new()
        .route("/agent/v1/register", post(register))
        .route("/agent/v1/heartbeat", post(heartbeat))
        .route("/agent/v1/tasks/lease", post(lease))
        .route("/agent/v1/tasks/{id}/renew", post(renew))
        .route("/agent/v1/tasks/{id}/release", post(release))
        .route("/agent/v1/tasks/{id}/report", post(report))
}

/// Who is calling the agent API.
enum AgentCaller {
    /// A registered agent, by its credential.
    Agent(Uuid),
    /// An organisation admin through the gateway, or the standalone admin token (tests,
    /// scripted agents).
    Admin,
}

async fn authorise(state: &CpState, headers: &HeaderMap) -> Result<AgentCaller, ApiError> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(credential) = bearer.filter(|b| b.starts_with(qleet_protocol::CREDENTIAL_PREFIX)) {
        return crate::agents::authenticate(&state.pool, credential)
            .await
            .map(AgentCaller::Agent);
    }
    let caller = authenticate(&state.config, headers)?;
    if caller.role().at_least(Role::Admin) {
        Ok(AgentCaller::Admin)
    } else {
        Err(ApiError::forbidden(
            "the agent API needs an agent credential or the admin role",
        ))
    }
}

async fn register(State(state): State<CpState>, bytes: axum::body::Bytes) -> Response {
    answer(
        async {
            let req = body(&bytes)?;
            crate::agents::register(&state.pool, state.config.id, req).await
        }
        .await,
    )
}

async fn heartbeat(
    State(state): State<CpState>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    answer(
        async {
            let AgentCaller::Agent(agent) = authorise(&state, &headers).await? else {
                return Err(ApiError::forbidden(
                    "only a registered agent sends heartbeats",
                ));
            };
            let beat: qleet_protocol::Heartbeat = body(&bytes)?;
            crate::agents::heartbeat(&state.pool, agent, &beat).await?;
            Ok(qleet_protocol::HeartbeatResponse {
                interval_seconds: crate::agents::HEARTBEAT_SECS,
            })
        }
        .await,
    )
}

/// Parses a JSON body into `T`, answering a readable INVALID_INPUT instead of axum's text.
/// Text PostgreSQL cannot store (a NUL) is refused here too, whatever field holds it.
fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::invalid("body", e.to_string()))?;
    if !qleet_common::text::json_storable(&value) {
        return Err(ApiError::invalid(
            "body",
            "text with a NUL character cannot be stored",
        ));
    }
    serde_json::from_value(value).map_err(|e| ApiError::invalid("body", e.to_string()))
}

fn task_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound("task".into()))
}

fn answer<T: serde::Serialize>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn lease(
    State(state): State<CpState>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    answer(
        async {
            let caller = authorise(&state, &headers).await?;
            let req: tasks::LeaseRequest = body(&bytes)?;
            let agent = match caller {
                AgentCaller::Agent(id) => id.to_string(),
                AgentCaller::Admin => req.agent.clone().unwrap_or_default(),
            };
            tasks::lease(&state.engine, &agent, req).await
        }
        .await,
    )
}

async fn renew(
    State(state): State<CpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    answer(
        async {
            authorise(&state, &headers).await?;
            let until = tasks::renew(&state.pool, task_id(&id)?, body(&bytes)?).await?;
            Ok(serde_json::json!({ "leaseExpiresAt": until }))
        }
        .await,
    )
}

async fn release(
    State(state): State<CpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    answer(
        async {
            authorise(&state, &headers).await?;
            tasks::release(&state.pool, task_id(&id)?, body(&bytes)?).await?;
            Ok(serde_json::json!({ "released": true }))
        }
        .await,
    )
}

async fn report(
    State(state): State<CpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    answer(
        async {
            authorise(&state, &headers).await?;
            tasks::report(&state.pool, task_id(&id)?, body(&bytes)?).await
        }
        .await,
    )
}
