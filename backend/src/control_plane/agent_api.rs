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

use super::{CpState, authenticate};
use crate::error::ApiError;
use crate::objects::tasks;
use crate::orgs::Role;

pub(super) fn router() -> Router<CpState> {
    Router::new()
        .route("/agent/v1/tasks/lease", post(lease))
        .route("/agent/v1/tasks/{id}/renew", post(renew))
        .route("/agent/v1/tasks/{id}/release", post(release))
        .route("/agent/v1/tasks/{id}/report", post(report))
}

fn authorise(state: &CpState, headers: &HeaderMap) -> Result<(), ApiError> {
    let caller = authenticate(&state.config, headers)?;
    if caller.role().at_least(Role::Admin) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "the agent API needs an agent credential or the admin role",
        ))
    }
}

/// Parses a JSON body into `T`, answering a readable INVALID_INPUT instead of axum's text.
fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid("body", e.to_string()))
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
            authorise(&state, &headers)?;
            tasks::lease(&state.engine, body(&bytes)?).await
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
            authorise(&state, &headers)?;
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
            authorise(&state, &headers)?;
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
            authorise(&state, &headers)?;
            tasks::report(&state.pool, task_id(&id)?, body(&bytes)?).await
        }
        .await,
    )
}
