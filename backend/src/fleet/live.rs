//! Live status for the UI: a Server-Sent Events stream of an organisation's control-plane
//! changes at `/orgs/{slug}/control-planes/events`. The stream is bound to the caller's access
//! and ends within a second of its revocation or expiry
//! (see [`crate::identity::revocation`]).

use std::convert::Infallible;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::broadcast::error::RecvError;

use futures::StreamExt as _;

use crate::error::ApiError;
use crate::identity::revocation::Grant;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/orgs/{slug}/control-planes/events", get(events))
}

async fn events(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    headers: HeaderMap,
) -> Response {
    let access = async {
        let principal =
            crate::identity::authenticate(&state.pool, &state.revocations.cache, &headers)
                .await?
                .ok_or(ApiError::Unauthenticated)?;
        let access = crate::orgs::access(&state.pool, &principal, &slug).await?;
        let grant = Grant::new(&headers, &principal, access.org.id, access.role)
            .ok_or(ApiError::Unauthenticated)?;
        let watch = state
            .revocations
            .watch(grant, None)
            .await
            .map_err(|_| ApiError::Unauthenticated)?;
        Ok::<_, ApiError>((access.org.id, watch))
    }
    .await;
    let (org_id, watch) = match access {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let rx = state.controlplanes.changes.subscribe();
    let stream = futures::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(change) if change.org_id == org_id => {
                    // Unnamed events reach EventSource's default `message` handler.
                    let event = Event::default().json_data(&change).unwrap_or_default();
                    return Some((Ok::<_, Infallible>(event), rx));
                }
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    })
    .take_until(async move {
        let ended = watch.ended().await;
        tracing::info!(reason = ?ended, "closing an event stream whose access ended");
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
