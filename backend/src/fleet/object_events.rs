//! Live object status for the UI: `GET /orgs/{slug}/control-planes/{id}/objects/events`, a
//! Server-Sent Events stream relaying the control plane's `objectChanges` subscription, one
//! JSON `ObjectChange` per event.
//!
//! The caller is checked exactly as by the gateway (session or API token, role in the control
//! plane's organisation, outsiders get `NOT_FOUND`), and the control plane must belong to the
//! organisation the path names. Upstream it is a `graphql-transport-ws` connection to the
//! control plane's `/graphql/ws` with the gateway's minted token; it closes when the browser
//! goes away. When the control plane ends the stream, so does this one, and the browser's
//! `EventSource` reconnects by itself. The stream is bound to the caller's access and ends
//! within a second of its revocation or expiry (see [`crate::identity::revocation`]).

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use super::gateway::{Mint, Upstream, resolve};
use crate::error::ApiError;
use crate::identity::revocation::Watch;
use crate::state::AppState;

/// How long the control plane may take to accept the connection and acknowledge it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Changes buffered for a slow browser before the relay waits for it.
const BUFFER: usize = 64;

const SUBSCRIPTION: &str = "subscription ObjectChanges { objectChanges { kind name phase \
                            message generation observedGeneration deleted at } }";

type CpSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/orgs/{slug}/control-planes/{id}/objects/events",
        get(events),
    )
}

async fn events(
    State(state): State<AppState>,
    Path((slug, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let upstream = match authorize(&state, &slug, &id, &headers).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let watch = match upstream.watch(&state, &headers).await {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let socket = match subscribe(&upstream).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let (tx, rx) = mpsc::channel::<Value>(BUFFER);
    let cp_id = upstream.cp.id;
    tokio::spawn(async move {
        relay(socket, tx, watch).await;
        tracing::debug!(control_plane.id = %cp_id, "object stream closed");
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let change = rx.recv().await?;
        // Unnamed events reach EventSource's default `message` handler.
        let event = Event::default().json_data(&change).unwrap_or_default();
        Some((Ok::<_, Infallible>(event), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The gateway's checks, plus: the control plane belongs to the organisation `slug` names.
async fn authorize(
    state: &AppState,
    slug: &str,
    id: &str,
    headers: &HeaderMap,
) -> Result<Upstream, ApiError> {
    let upstream = resolve(state, id, headers, Mint::Fresh).await?;
    let org_id = sqlx::query_scalar!("select id from organizations where slug = $1", slug)
        .fetch_optional(&state.pool)
        .await?;
    if org_id != Some(upstream.cp.org_id) {
        return Err(ApiError::NotFound("control plane".into()));
    }
    Ok(upstream)
}

fn unreachable(message: impl Into<String>) -> ApiError {
    ApiError::Unavailable {
        code: "CONTROL_PLANE_UNREACHABLE",
        message: message.into(),
    }
}

/// Connects to the control plane, completes the `graphql-transport-ws` handshake and starts
/// the `objectChanges` subscription.
async fn subscribe(upstream: &Upstream) -> Result<CpSocket, ApiError> {
    let url = format!("{}/graphql/ws", upstream.endpoint.replacen("http", "ws", 1));
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(crate::error::internal)?;
    let auth = format!("Bearer {}", upstream.token);
    for (name, value) in [
        ("authorization", auth.as_str()),
        ("sec-websocket-protocol", "graphql-transport-ws"),
    ] {
        let value = HeaderValue::from_str(value).map_err(crate::error::internal)?;
        request.headers_mut().insert(name, value);
    }
    let handshake = async {
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| unreachable(format!("the control plane refused the stream ({e})")))?;
        send(
            &mut socket,
            json!({ "type": "connection_init", "payload": {} }),
        )
        .await?;
        loop {
            match next_json(&mut socket).await {
                Some(msg) if msg["type"] == "connection_ack" => break,
                Some(msg) if msg["type"] == "ping" => {
                    send(&mut socket, json!({ "type": "pong" })).await?;
                }
                Some(_) => {}
                None => return Err(unreachable("the control plane closed the stream")),
            }
        }
        send(
            &mut socket,
            json!({ "id": "1", "type": "subscribe", "payload": { "query": SUBSCRIPTION } }),
        )
        .await?;
        Ok(socket)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| unreachable("the control plane did not open the stream in time"))?
}

async fn send(socket: &mut CpSocket, message: Value) -> Result<(), ApiError> {
    socket
        .send(Message::text(message.to_string()))
        .await
        .map_err(|e| unreachable(format!("the stream to the control plane broke ({e})")))
}

/// The next JSON text message; `None` once the socket closes or breaks. Answers pings.
async fn next_json(socket: &mut CpSocket) -> Option<Value> {
    loop {
        match socket.next().await? {
            Ok(Message::Text(text)) => match serde_json::from_str(text.as_str()) {
                Ok(value) => return Some(value),
                Err(e) => tracing::debug!(error = %e, "ignoring a non-JSON message"),
            },
            Ok(Message::Ping(payload)) => {
                let _ = socket.send(Message::Pong(payload)).await;
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Passes each change to `tx` until the control plane ends the subscription, the browser
/// goes away (the receiver is dropped) or the caller's access ends, then closes the socket.
async fn relay(mut socket: CpSocket, tx: mpsc::Sender<Value>, watch: Watch) {
    let ended = watch.ended();
    tokio::pin!(ended);
    loop {
        let message = tokio::select! {
            message = next_json(&mut socket) => message,
            () = tx.closed() => break,
            reason = &mut ended => {
                tracing::info!(reason = ?reason, "closing an object stream whose access ended");
                break;
            }
        };
        let Some(message) = message else { break };
        match message["type"].as_str() {
            Some("next") => {
                if let Some(errors) = message["payload"].get("errors") {
                    tracing::warn!(%errors, "the object subscription reported errors");
                }
                let change = &message["payload"]["data"]["objectChanges"];
                if change.is_object() && tx.send(change.clone()).await.is_err() {
                    break;
                }
            }
            Some("ping") if send(&mut socket, json!({ "type": "pong" })).await.is_err() => break,
            Some("error") => {
                tracing::warn!(payload = %message["payload"], "the control plane refused the object subscription");
                break;
            }
            Some("complete") => break,
            _ => {}
        }
    }
    let _ = socket
        .send(Message::text(
            json!({ "id": "1", "type": "complete" }).to_string(),
        ))
        .await;
    let _ = socket.close(None).await;
}
