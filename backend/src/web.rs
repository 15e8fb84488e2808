//! HTTP plumbing shared by every route: client IP, the CSRF origin check, health, metrics and
//! sign-out.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use crate::error::ApiError;
use crate::identity::session;
use crate::state::AppState;

/// The client's IP address: the peer address, or the first `X-Forwarded-For` hop when
/// `QLEET_TRUST_PROXY_HEADERS` is set.
pub struct ClientIp(pub Option<String>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        Ok(ClientIp(client_ip(parts, state.config.trust_proxy_headers)))
    }
}

pub fn client_ip(parts: &Parts, trust_proxy_headers: bool) -> Option<String> {
    if trust_proxy_headers {
        let forwarded = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_owned())
            .filter(|v| v.parse::<std::net::IpAddr>().is_ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip().to_string())
}

/// Middleware: a state-changing browser request (one that carries the session cookie) must come
/// from Qleet's own origin. Together with SameSite=Lax cookies and the per-session CSRF token
/// on forms, this stops cross-site request forgery.
///
/// A WebSocket upgrade is a GET, but what is sent over it can change state, and a browser opens
/// one from any page with the cookie attached: an upgrade carrying the session cookie needs
/// Qleet's origin too (browsers always send `Origin` on upgrades). Server-sent events are read
/// only, yet a cross-site `EventSource` names its page in `Origin`: one that names another
/// origin is refused (a same-origin `EventSource` sends none).
pub async fn check_origin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let with_cookie =
        session::cookie_value(headers).is_some() && !headers.contains_key(header::AUTHORIZATION);
    if with_cookie {
        let ours = state.config.public_origin();
        let origin = request_origin(headers);
        let refuse = if is_upgrade(headers)
            || !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        {
            origin.as_deref() != Some(ours.as_str())
        } else {
            headers.contains_key(header::ORIGIN) && origin.as_deref() != Some(ours.as_str())
        };
        if refuse {
            tracing::warn!(origin = ?origin, "refused a cross-origin request carrying the session cookie");
            return ApiError::Csrf.into_response();
        }
    }
    next.run(req).await
}

/// The origin a browser request names: `Origin`, or failing that the origin of `Referer`.
fn request_origin(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            let referer = headers.get(header::REFERER)?.to_str().ok()?;
            Some(
                url::Url::parse(referer)
                    .ok()?
                    .origin()
                    .ascii_serialization(),
            )
        })
}

/// Whether the request asks to switch protocols (a WebSocket upgrade).
fn is_upgrade(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) || headers.contains_key("sec-websocket-key")
}

/// Middleware: a path or query that spells a NUL (`%00`) is refused (`INVALID_INPUT`, 400)
/// before any route reads it: the pages and the gateway look path segments up in PostgreSQL,
/// which cannot store the character.
pub async fn refuse_nul_in_uri(req: Request, next: Next) -> Response {
    let uri = req.uri();
    let spells_nul = |s: &str| s.contains("%00") || s.contains('\0');
    if spells_nul(uri.path()) || uri.query().is_some_and(spells_nul) {
        return ApiError::invalid("path", "text with a NUL character cannot be stored")
            .into_response();
    }
    next.run(req).await
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/auth/logout", post(logout))
        .merge(crate::identity::cli::router())
}

async fn readyz(State(state): State<AppState>) -> Response {
    match sqlx::query_scalar!("select 1 as one")
        .fetch_one(&state.pool)
        .await
    {
        Ok(_) => "ready".into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    if let Some(raw) = session::cookie_value(&headers) {
        if session::csrf_for(&raw) != form.csrf {
            return ApiError::Csrf.into_response();
        }
        if let Err(e) = session::delete(&state.pool, &raw).await {
            return e.into_response();
        }
        state.revocations.cache.barrier(&state.pool).await;
    }
    (
        [(header::SET_COOKIE, session::clear_cookie(&state.config))],
        Redirect::to("/signin"),
    )
        .into_response()
}
