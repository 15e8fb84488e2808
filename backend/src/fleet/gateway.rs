//! The gateway: `/cp/{id}/...` reaches an organisation's own control plane. It authenticates the
//! caller (session or API token), checks their role in the control plane's organisation, wakes a
//! hibernated control plane, mints a short-lived signed token, and forwards the request.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::WebSocketUpgrade;
use axum::extract::ws::{Message, WebSocket};
use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures::StreamExt as _;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use uuid::Uuid;

use super::driver::RuntimeStatus;
use super::{ControlPlane, Status, lifecycle};
use crate::error::ApiError;
use crate::identity::Principal;
use crate::identity::revocation::{Grant, Watch};
use crate::internal_token::SubjectKind;
use crate::orgs::Role;
use crate::state::AppState;

/// How long a forwarded request may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Lifetime of the token minted per request (and per WebSocket or event stream, which the
/// control plane closes when it expires).
const TOKEN_TTL_SECS: i64 = 300;
/// Largest answer (or WebSocket message) the gateway holds in memory from a control plane;
/// a bounded apply's plan fits well within it.
pub(crate) const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Most operations (subscriptions, and queries or mutations in flight) one WebSocket may have
/// open at once; one more is answered with an `error` message (code `TOO_MANY_SUBSCRIPTIONS`)
/// and not passed on.
pub const MAX_OPERATIONS_PER_SOCKET: usize = 25;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/cp/{id}/graphql/ws", get(websocket))
        .route("/cp/{id}/{*rest}", any(forward))
}

/// GraphQL over WebSocket through the gateway: the same checks as HTTP, then a connection to
/// the control plane's `/graphql/ws` with the minted token, and messages pumped both ways until
/// either side closes, or the caller's access is revoked or expires (then the gateway closes
/// both sides, telling the client why with a 4401 or 4403 close frame).
async fn websocket(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let upstream = match resolve(&state, &id, &headers, Mint::Fresh).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let watch = match upstream.watch(&state, &headers).await {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let protocol = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .map(str::trim)
                .find(|p| ["graphql-transport-ws", "graphql-ws"].contains(p))
        })
        .unwrap_or("graphql-transport-ws")
        .to_owned();
    let url = format!("{}/graphql/ws", upstream.endpoint.replacen("http", "ws", 1));
    let mut request = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => return crate::error::internal(e).into_response(),
    };
    let auth = format!("Bearer {}", upstream.token);
    for (name, value) in [
        ("authorization", auth.as_str()),
        ("sec-websocket-protocol", protocol.as_str()),
    ] {
        match HeaderValue::from_str(value) {
            Ok(v) => {
                request.headers_mut().insert(name, v);
            }
            Err(e) => return crate::error::internal(e).into_response(),
        }
    }
    let mut limits = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    limits.max_message_size = Some(MAX_RESPONSE_BYTES);
    let connected = tokio::time::timeout(
        UPSTREAM_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, Some(limits), false),
    )
    .await;
    let cp_socket = match connected {
        Ok(Ok((socket, _))) => socket,
        _ => {
            return ApiError::Unavailable {
                code: "CONTROL_PLANE_UNREACHABLE",
                message: "the control plane did not accept the WebSocket connection".into(),
            }
            .into_response();
        }
    };
    tracing::debug!(control_plane.id = %upstream.cp.id, "WebSocket opened through the gateway");
    upgrade
        .max_message_size(MAX_RESPONSE_BYTES)
        .protocols([protocol.clone()])
        .on_upgrade(move |client| pump(client, cp_socket, watch, protocol))
}

/// Copies frames between the client and the control plane until one side closes or `watch`
/// ends the connection. Each operation a client starts is passed on only once its access is
/// re-checked, so one sent after a revocation never runs.
async fn pump(
    client: WebSocket,
    cp: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    watch: Watch,
    protocol: String,
) {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message as Up;
    let (client_tx, mut client_rx) = client.split();
    let client_tx = tokio::sync::Mutex::new(client_tx);
    let (mut cp_tx, mut cp_rx) = cp.split();
    let operations = std::sync::Mutex::new(Operations::default());
    let ended = {
        let to_cp = async {
            while let Some(Ok(msg)) = client_rx.next().await {
                let needs_check = match &msg {
                    Message::Text(t) => !is_keepalive(t.as_str().as_bytes()),
                    Message::Binary(b) => !is_keepalive(b),
                    _ => false,
                };
                if needs_check && let Err(ended) = watch.recheck().await {
                    return Some(ended);
                }
                let refused = match &msg {
                    Message::Text(t) => lock(&operations).note_client(t.as_str().as_bytes()),
                    Message::Binary(b) => lock(&operations).note_client(b),
                    _ => None,
                };
                if let Some(id) = refused {
                    let error = too_many_operations(&protocol, &id);
                    if client_tx.lock().await.send(error).await.is_err() {
                        break;
                    }
                    continue;
                }
                let out = match msg {
                    Message::Text(t) => Up::text(t.as_str()),
                    Message::Binary(b) => Up::binary(b),
                    Message::Ping(p) => Up::Ping(p),
                    Message::Pong(p) => Up::Pong(p),
                    Message::Close(_) => break,
                };
                if cp_tx.send(out).await.is_err() {
                    break;
                }
            }
            None
        };
        let to_client = async {
            while let Some(Ok(msg)) = cp_rx.next().await {
                match &msg {
                    Up::Text(t) => lock(&operations).note_server(t.as_str().as_bytes()),
                    Up::Binary(b) => lock(&operations).note_server(b),
                    _ => {}
                }
                let out = match msg {
                    Up::Text(t) => Message::text(t.as_str()),
                    Up::Binary(b) => Message::binary(b),
                    Up::Ping(p) => Message::Ping(p),
                    Up::Pong(p) => Message::Pong(p),
                    // The control plane's reason (e.g. its token expired) reaches the client.
                    Up::Close(Some(frame)) => {
                        let _ = client_tx
                            .lock()
                            .await
                            .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                                code: frame.code.into(),
                                reason: frame.reason.as_str().into(),
                            })))
                            .await;
                        break;
                    }
                    Up::Close(None) | Up::Frame(_) => break,
                };
                if client_tx.lock().await.send(out).await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            ended = to_cp => ended,
            () = to_client => None,
            ended = watch.ended() => Some(ended),
        }
    };
    if let Some(ended) = ended {
        tracing::info!(reason = ?ended, "closing a WebSocket whose access ended");
        let frame = axum::extract::ws::CloseFrame {
            code: ended.close_code(),
            reason: ended.reason().into(),
        };
        let _ = client_tx
            .lock()
            .await
            .send(Message::Close(Some(frame)))
            .await;
    }
    let _ = client_tx.lock().await.close().await;
    let _ = cp_tx.close().await;
}

fn lock(operations: &std::sync::Mutex<Operations>) -> std::sync::MutexGuard<'_, Operations> {
    operations.lock().unwrap_or_else(|e| e.into_inner())
}

/// The operations a WebSocket has open, by id, from the messages of both GraphQL-over-WebSocket
/// protocols: started by the client's `subscribe` (`start`), ended by its `complete` (`stop`) or
/// the server's `complete` or `error`.
#[derive(Default)]
struct Operations {
    open: std::collections::HashSet<String>,
}

#[derive(serde::Deserialize)]
struct OperationMessage {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
}

impl Operations {
    /// Notes a client message; answers the id of an operation to refuse (one too many).
    fn note_client(&mut self, message: &[u8]) -> Option<String> {
        let msg: OperationMessage = serde_json::from_slice(message).ok()?;
        let id = msg.id?;
        match msg.kind.as_str() {
            "subscribe" | "start" => {
                if self.open.contains(&id) {
                    // A duplicate id: the control plane answers it as its protocol says.
                    return None;
                }
                if self.open.len() >= MAX_OPERATIONS_PER_SOCKET {
                    return Some(id);
                }
                self.open.insert(id);
            }
            "complete" | "stop" => {
                self.open.remove(&id);
            }
            _ => {}
        }
        None
    }

    fn note_server(&mut self, message: &[u8]) {
        if let Ok(OperationMessage { kind, id: Some(id) }) = serde_json::from_slice(message)
            && matches!(kind.as_str(), "complete" | "error")
        {
            self.open.remove(&id);
        }
    }
}

/// The protocol's `error` message for operation `id` refused as one too many.
fn too_many_operations(protocol: &str, id: &str) -> Message {
    let message = format!(
        "at most {MAX_OPERATIONS_PER_SOCKET} operations may be open on one WebSocket; complete one first"
    );
    let error = serde_json::json!({ "message": message, "extensions": { "code": "TOO_MANY_SUBSCRIPTIONS" } });
    // graphql-transport-ws sends a list of errors; the older graphql-ws one error.
    let payload = if protocol == "graphql-ws" {
        error
    } else {
        serde_json::json!([error])
    };
    Message::text(serde_json::json!({ "type": "error", "id": id, "payload": payload }).to_string())
}

/// Whether a client message is a protocol keep-alive (`ping`/`pong`), which starts nothing.
/// Anything else, unreadable messages included, is re-checked before it is passed on.
fn is_keepalive(message: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Keepalive<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        #[serde(default)]
        #[allow(dead_code)]
        payload: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Keepalive<'_>>(message)
        .is_ok_and(|m| matches!(m.kind, "ping" | "pong"))
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
            let cache = &state.revocations.cache;
            if let Some(role) = cache.role(cp.org_id, *user_id) {
                return Ok(role);
            }
            let ticket = cache.ticket();
            let role = sqlx::query_scalar!(
                "select role from memberships where org_id = $1 and user_id = $2",
                cp.org_id,
                user_id,
            )
            .fetch_optional(&state.pool)
            .await?;
            let role = Role::parse(&role.ok_or_else(not_found)?)?;
            cache.put_role(ticket, cp.org_id, *user_id, role);
            Ok(role)
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
    body: axum::body::Body,
) -> Response {
    match forward_inner(&state, &id, &rest, ip, method, headers, uri, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// A request the gateway may pass on: the control plane, where it answers, and the token to
/// present there.
pub(crate) struct Upstream {
    pub(crate) cp: ControlPlane,
    /// `http://host:port` of the control plane.
    pub(crate) endpoint: String,
    /// The minted bearer token for this request.
    pub(crate) token: String,
    /// When that token expires.
    pub(crate) token_expires_at: chrono::DateTime<chrono::Utc>,
    /// Who is calling, and their role in the control plane's organisation.
    pub(crate) principal: Principal,
    pub(crate) role: Role,
}

impl Upstream {
    /// Binds a long-lived connection opened with `headers` to this caller, until at most the
    /// minted token's expiry (see [`crate::identity::revocation`]).
    pub(crate) async fn watch(
        &self,
        state: &AppState,
        headers: &HeaderMap,
    ) -> Result<Watch, ApiError> {
        let grant = Grant::new(headers, &self.principal, self.cp.org_id, self.role)
            .ok_or(ApiError::Unauthenticated)?;
        state
            .revocations
            .watch(grant, Some(self.token_expires_at))
            .await
            .map_err(|_| ApiError::Unauthenticated)
    }
}

/// The control plane a `/cp/{id}/...` path names; `NOT_FOUND` for a malformed or unknown id.
async fn find(state: &AppState, id: &str) -> Result<ControlPlane, ApiError> {
    let not_found = || ApiError::NotFound("control plane".into());
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    let cache = &state.revocations.cache;
    if let Some(cp) = cache.control_plane(id) {
        return Ok(cp);
    }
    let ticket = cache.ticket();
    let cp = super::get_by_id(&state.pool, id)
        .await?
        .ok_or_else(not_found)?;
    cache.put_control_plane(ticket, cp.clone());
    Ok(cp)
}

/// The organisation's plan (cached like the rest, see [`crate::identity::cache`]).
async fn plan_of(state: &AppState, org_id: Uuid) -> Result<&crate::billing::plans::Plan, ApiError> {
    let billing = &state.controlplanes.billing;
    if billing.stripe.is_none() {
        return Ok(billing.plans().default_plan());
    }
    let cache = &state.revocations.cache;
    let account = match cache.account(org_id) {
        Some(account) => account,
        None => {
            let ticket = cache.ticket();
            let account = crate::billing::account(&state.pool, org_id).await?;
            cache.put_account(ticket, org_id, account.clone());
            account
        }
    };
    Ok(crate::billing::effective_plan(billing, &account))
}

/// Whether a request may present a token minted for an earlier one (plain requests), or needs
/// one of its own, valid for the token's whole lifetime (a WebSocket is bound until its token
/// expires).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mint {
    Reuse,
    Fresh,
}

/// Authenticates the caller, checks their role in the control plane's organisation, wakes the
/// control plane if it hibernates, and mints the token for this request (or reuses the one
/// minted for the same caller, control plane, role and plan while it has a while to run).
pub(crate) async fn resolve(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    mint: Mint,
) -> Result<Upstream, ApiError> {
    let principal = crate::identity::authenticate(&state.pool, &state.revocations.cache, headers)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    let services = &state.controlplanes;
    let cp = find(state, id).await?;
    let role = role_in(state, &principal, &cp).await?;
    // The plan's limits travel in the token.
    let plan = plan_of(state, cp.org_id).await?;
    let endpoint = reach(state, &cp).await?;
    let (sub_kind, sub) = match &principal {
        Principal::User { user_id, .. } => (SubjectKind::User, *user_id),
        Principal::Token { token_id, .. } => (SubjectKind::Token, *token_id),
    };
    let key = MintKey {
        sub,
        cp: cp.id,
        role,
        plan: plan.id.clone(),
    };
    let reused = (mint == Mint::Reuse)
        .then(|| services.gateway.minted(&key))
        .flatten();
    let (token, token_expires_at) = match reused {
        Some(minted) => minted,
        None => {
            let ttl = chrono::Duration::seconds(TOKEN_TTL_SECS);
            let token_expires_at = chrono::Utc::now() + ttl;
            let limits = crate::billing::limits(services.billing.plans(), plan);
            let token = services.keys.signer.mint_with_limits(
                sub_kind,
                sub,
                cp.org_id,
                cp.id,
                role,
                ttl,
                Some(limits),
            );
            services
                .gateway
                .remember(key, token.clone(), token_expires_at);
            (token, token_expires_at)
        }
    };
    Ok(Upstream {
        cp,
        endpoint,
        token,
        token_expires_at,
        principal,
        role,
    })
}

/// Wakes the control plane if it hibernates and answers where it listens, or why it cannot
/// be reached (including an organisation suspended for non-payment).
async fn reach(state: &AppState, cp: &ControlPlane) -> Result<String, ApiError> {
    let services = &state.controlplanes;
    let id = cp.id;
    crate::billing::hold_error(
        &state.pool,
        &services.billing,
        cp.org_id,
        id,
        cp.billing_hold,
    )
    .await?;
    let status = Status::parse(&cp.status)?;
    match status {
        Status::Ready => {}
        Status::Hibernated => lifecycle::wake(&state.pool, services, cp).await?,
        other => return Err(not_ready(other)),
    }
    let ready = || async {
        match services.driver.status(id).await {
            Ok(RuntimeStatus::Ready(ep)) => Ok(Some(ep)),
            Ok(_) => Ok(None),
            Err(e) => Err(crate::error::internal(e)),
        }
    };
    let endpoint = match ready().await? {
        Some(ep) => ep.0,
        // A local runtime: it may run as another instance's child, or nowhere any more.
        None if services.driver.is_local() => elsewhere(state, cp).await?,
        None => {
            // Restarting (crash, management restart): wait briefly rather than fail.
            lifecycle::wait_ready(services, id).await?;
            ready()
                .await?
                .ok_or_else(|| not_ready(Status::Provisioning))?
                .0
        }
    };
    // Written down later, for many control planes at once (see `Memo::flush`): it feeds
    // hibernation, not billing, and a request does not wait for a write.
    services.gateway.note_request(cp.id);
    Ok(endpoint)
}

/// Where a Ready control plane that does not run here answers (see [`super::replicas`]): at
/// its holder's, while that instance is alive; else this instance takes it over and starts it.
async fn elsewhere(state: &AppState, cp: &ControlPlane) -> Result<String, ApiError> {
    let services = &state.controlplanes;
    let me = services.instance;
    if let (Some(holder), Some(endpoint)) = (cp.runtime_holder, &cp.runtime_endpoint)
        && holder != me
        && services.instances.is_alive(holder)
    {
        return Ok(endpoint.clone());
    }
    if super::replicas::take_over(&state.pool, cp.id, me).await? {
        return lifecycle::run_here(&state.pool, services, cp).await;
    }
    // Another instance runs it (or is taking it over just now): wait until it answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let (_, Some(endpoint)) = super::replicas::runtime_of(&state.pool, cp.id).await? {
            return Ok(endpoint);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(not_ready(Status::Provisioning));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a request is the tenant agent's own (registration, or an agent credential on one of
/// the agent API's routes): the control plane checks those itself, so the gateway passes them
/// through unchanged. Any other path goes through the gateway's own authentication.
fn is_agent_call(rest: &str, headers: &HeaderMap) -> bool {
    let bearer_is_agent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|b| b.starts_with(qleet_protocol::CREDENTIAL_PREFIX));
    match rest.split('/').collect::<Vec<_>>().as_slice() {
        ["agent", "v1", "register"] => true,
        ["agent", "v1", "heartbeat"] | ["agent", "v1", "tasks", "lease"] => bearer_is_agent,
        ["agent", "v1", "tasks", id, "renew" | "release" | "report"] => {
            bearer_is_agent && id.parse::<Uuid>().is_ok()
        }
        _ => false,
    }
}

/// Whether a (percent-decoded) path has a `.` or `..` segment, or one that the URL parser would
/// read as such once forwarded (`%2e`, a backslash as separator): the gateway refuses those
/// rather than let the forwarded URL resolve to another route of the control plane.
fn has_dot_segment(rest: &str) -> bool {
    rest.split(['/', '\\']).any(|segment| {
        let segment = segment.to_ascii_lowercase().replace("%2e", ".");
        segment == "." || segment == ".."
    })
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
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    if has_dot_segment(rest) {
        return Err(ApiError::invalid(
            "path",
            "dot segments (`.`, `..`) are not allowed",
        ));
    }
    let (endpoint, authorization) = if is_agent_call(rest, &headers) {
        let cp = find(state, id).await?;
        let endpoint = reach(state, &cp).await?;
        (endpoint, headers.get(header::AUTHORIZATION).cloned())
    } else {
        let Upstream {
            endpoint, token, ..
        } = resolve(state, id, &headers, Mint::Reuse).await?;
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(crate::error::internal)?;
        (endpoint, Some(bearer))
    };
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    // The request body is passed on as it arrives (the server's body limit still applies: the
    // stream ends in an error past it, and the forwarded request with it).
    let body_error = std::sync::Arc::new(std::sync::Mutex::new(None::<ApiError>));
    let noted = body_error.clone();
    let stream = body.into_data_stream().inspect(move |chunk| {
        if let Err(e) = chunk {
            *noted.lock().unwrap_or_else(|e| e.into_inner()) = Some(body_failure(e));
        }
    });
    let mut upstream = state
        .http
        .request(method, format!("{endpoint}/{rest}{query}"))
        // Long-polling agents wait up to 30 s for work.
        .timeout(UPSTREAM_TIMEOUT + Duration::from_secs(5))
        .header("x-request-id", crate::telemetry::current_request_id())
        .body(reqwest::Body::wrap_stream(stream));
    if let Some(authorization) = authorization {
        upstream = upstream.header(header::AUTHORIZATION, authorization);
    }
    for name in [header::CONTENT_TYPE, header::ACCEPT, header::CONTENT_LENGTH] {
        if let Some(v) = headers.get(&name) {
            upstream = upstream.header(name, v);
        }
    }
    if let Some(ip) = ip {
        upstream = upstream.header("x-forwarded-for", ip);
    }
    let exchange = async {
        upstream.send().await.map_err(|e| {
            if let Some(refused) = body_error.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return refused;
            }
            ApiError::Unavailable {
                code: "CONTROL_PLANE_UNREACHABLE",
                message: format!(
                    "the control plane did not answer ({})",
                    if e.is_timeout() {
                        "timeout"
                    } else {
                        "connection failed"
                    }
                ),
            }
        })
    };
    // An agent's long-poll must not hold a graceful shutdown up: it ends at once with
    // `UNAVAILABLE` and the agent asks again (elsewhere, or here once restarted); a task leased
    // in the meantime comes back to it on its next lease call. Other calls drain.
    let response = if rest == "agent/v1/tasks/lease" {
        tokio::select! {
            answer = exchange => answer?,
            () = state.revocations.stopping() => return Err(shutting_down()),
        }
    } else {
        exchange.await?
    };
    stream_bounded(response)
}

/// Why the client's request body could not be passed on: over the server's limit, or broken.
fn body_failure(e: &axum::Error) -> ApiError {
    let too_large = std::error::Error::source(e)
        .into_iter()
        .chain(std::iter::successors(std::error::Error::source(e), |e| {
            e.source()
        }))
        .any(|e| e.is::<http_body_util::LengthLimitError>());
    if too_large {
        ApiError::TooLarge("the request body is larger than this server accepts".into())
    } else {
        ApiError::invalid("body", "the request body could not be read")
    }
}

/// The control plane's answer passed on as it arrives: status, content type and body, refused
/// (`INPUT_TOO_LARGE`) when it says it is larger than [`MAX_RESPONSE_BYTES`], and cut off
/// (the connection ends in an error) if it grows past that without saying so.
fn stream_bounded(response: reqwest::Response) -> Result<Response, ApiError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large_answer());
    }
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let mut seen = 0usize;
    let body = response.bytes_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        seen += chunk.len();
        if seen > MAX_RESPONSE_BYTES {
            tracing::warn!("a control plane's answer grew past the limit; cutting it off");
            return Err(std::io::Error::other("answer too large"));
        }
        Ok(chunk)
    });
    let mut out = (status, axum::body::Body::from_stream(body)).into_response();
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(out)
}

fn too_large_answer() -> ApiError {
    ApiError::TooLarge(format!(
        "the control plane's answer is larger than {} MiB; ask for less at a time",
        MAX_RESPONSE_BYTES / 1024 / 1024
    ))
}

fn shutting_down() -> ApiError {
    ApiError::Unavailable {
        code: crate::error::UNAVAILABLE,
        message: "the server is restarting; retry in a moment".into(),
    }
}

/// Runs a GraphQL request on a control plane as the principal `headers` name (the web UI's
/// server functions use this; API clients go through [`forward`]). Answers the control plane's
/// GraphQL response JSON.
pub async fn graphql(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    body: &serde_json::Value,
) -> Result<serde_json::Value, ApiError> {
    let Upstream {
        endpoint, token, ..
    } = resolve(state, id, headers, Mint::Reuse).await?;
    let response = state
        .http
        .post(format!("{endpoint}/graphql"))
        .timeout(UPSTREAM_TIMEOUT)
        .bearer_auth(token)
        .header("x-request-id", crate::telemetry::current_request_id())
        .json(body)
        .send()
        .await
        .map_err(|e| ApiError::Unavailable {
            code: "CONTROL_PLANE_UNREACHABLE",
            message: format!("the control plane did not answer ({e})"),
        })?;
    let bytes = read_bounded(response).await?;
    serde_json::from_slice(&bytes).map_err(crate::error::internal)
}

/// The body of a control plane's answer, refused (`INPUT_TOO_LARGE`) past
/// [`MAX_RESPONSE_BYTES`] without holding more than that.
async fn read_bounded(mut response: reqwest::Response) -> Result<Bytes, ApiError> {
    let too_large = too_large_answer;
    if response
        .content_length()
        .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(crate::error::internal)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

/// What a minted token is reused for: the same subject, control plane, role and plan (whose
/// limits the token carries). A changed role or plan gets a new token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct MintKey {
    sub: Uuid,
    cp: Uuid,
    role: Role,
    plan: String,
}

/// A minted token is reused while it has at least this long to run.
const REUSE_MARGIN: chrono::Duration = chrono::Duration::seconds(TOKEN_TTL_SECS / 2);
/// Bound on the tokens and request times kept.
const MEMO_ENTRIES: usize = 100_000;

/// The gateway's own memory between requests: tokens minted, and when each control plane's
/// `last_request_at` was last written.
#[derive(Default)]
pub struct Memo {
    minted: std::sync::Mutex<
        std::collections::HashMap<MintKey, (String, chrono::DateTime<chrono::Utc>)>,
    >,
    noted: std::sync::Mutex<std::collections::HashMap<Uuid, std::time::Instant>>,
    /// Control planes requested since the last flush.
    requested: std::sync::Mutex<std::collections::HashSet<Uuid>>,
}

impl Memo {
    fn minted(&self, key: &MintKey) -> Option<(String, chrono::DateTime<chrono::Utc>)> {
        let minted = self.minted.lock().unwrap_or_else(|e| e.into_inner());
        let (token, expires_at) = minted.get(key)?;
        (*expires_at - chrono::Utc::now() > REUSE_MARGIN).then(|| (token.clone(), *expires_at))
    }

    fn remember(&self, key: MintKey, token: String, expires_at: chrono::DateTime<chrono::Utc>) {
        let mut minted = self.minted.lock().unwrap_or_else(|e| e.into_inner());
        if minted.len() >= MEMO_ENTRIES {
            let now = chrono::Utc::now();
            minted.retain(|_, (_, at)| *at - now > REUSE_MARGIN);
            if minted.len() >= MEMO_ENTRIES {
                minted.clear();
            }
        }
        minted.insert(key, (token, expires_at));
    }

    /// Notes a request to `cp`, to be written down at the next flush (once every few seconds
    /// per control plane and process); answers whether it was noted.
    fn note_request(&self, cp: Uuid) -> bool {
        let mut noted = self.noted.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match noted.get(&cp) {
            Some(at) if now.duration_since(*at) < Duration::from_secs(5) => false,
            _ => {
                if noted.len() >= MEMO_ENTRIES {
                    noted.clear();
                }
                noted.insert(cp, now);
                self.requested
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(cp);
                true
            }
        }
    }

    /// Writes down `last_request_at` of every control plane requested since the last flush,
    /// in one statement.
    pub async fn flush(&self, pool: &sqlx::PgPool) -> sqlx::Result<()> {
        let ids: Vec<Uuid> =
            std::mem::take(&mut *self.requested.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query!(
            "update control_planes set last_request_at = now() where id = any($1)",
            &ids,
        )
        .execute(pool)
        .await
        .map(drop)
    }
}

/// Writes the requests' times down every second, for as long as the server runs (see
/// [`Memo::flush`]).
pub async fn flush_requests(pool: sqlx::PgPool, services: std::sync::Arc<super::Services>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = services.gateway.flush(&pool).await {
            tracing::warn!(error = %e, "cannot record when control planes were last requested");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_is_reused_only_for_the_same_grant_while_it_runs() {
        let memo = Memo::default();
        let key = MintKey {
            sub: Uuid::new_v4(),
            cp: Uuid::new_v4(),
            role: Role::Member,
            plan: "free".into(),
        };
        let later = chrono::Utc::now() + chrono::Duration::seconds(TOKEN_TTL_SECS);
        memo.remember(key.clone(), "t1".into(), later);
        assert_eq!(memo.minted(&key).map(|m| m.0), Some("t1".into()));
        for other in [
            MintKey {
                role: Role::Viewer,
                ..key.clone()
            },
            MintKey {
                plan: "team".into(),
                ..key.clone()
            },
            MintKey {
                cp: Uuid::new_v4(),
                ..key.clone()
            },
        ] {
            assert!(memo.minted(&other).is_none(), "{other:?}");
        }
        let soon = chrono::Utc::now() + REUSE_MARGIN - chrono::Duration::seconds(1);
        memo.remember(key.clone(), "t2".into(), soon);
        assert!(memo.minted(&key).is_none(), "too close to its expiry");
        let cp = Uuid::new_v4();
        assert!(memo.note_request(cp));
        assert!(!memo.note_request(cp));
    }

    #[tokio::test]
    async fn buffers_at_most_the_response_limit() {
        let answer = |len: usize| reqwest::Response::from(http::Response::new(vec![b'x'; len]));
        let ok = read_bounded(answer(MAX_RESPONSE_BYTES))
            .await
            .expect("at the limit");
        assert_eq!(ok.len(), MAX_RESPONSE_BYTES);
        let err = read_bounded(answer(MAX_RESPONSE_BYTES + 1))
            .await
            .expect_err("over the limit");
        assert_eq!(err.code(), "INPUT_TOO_LARGE");
    }

    #[tokio::test]
    async fn streams_at_most_the_response_limit() {
        // Its length known to be too large up front: refused before anything is passed on.
        let said = http::Response::new(vec![b'x'; MAX_RESPONSE_BYTES + 1]);
        let err = stream_bounded(reqwest::Response::from(said)).expect_err("over the limit");
        assert_eq!(err.code(), "INPUT_TOO_LARGE");
        // Growing past it unannounced: the stream ends in an error once past the limit.
        let chunks = (0..=MAX_RESPONSE_BYTES / (1024 * 1024))
            .map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1024 * 1024])));
        let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
        let grown = reqwest::Response::from(http::Response::new(body));
        let out = stream_bounded(grown).expect("headers pass");
        let read = axum::body::to_bytes(out.into_body(), usize::MAX).await;
        assert!(read.is_err(), "cut off past the limit");
        // At the limit: passed on whole.
        let at = reqwest::Response::from(http::Response::new(vec![b'x'; MAX_RESPONSE_BYTES]));
        let out = stream_bounded(at).expect("at the limit");
        let read = axum::body::to_bytes(out.into_body(), usize::MAX)
            .await
            .expect("whole");
        assert_eq!(read.len(), MAX_RESPONSE_BYTES);
    }

    #[test]
    fn operations_are_counted_from_both_sides_of_the_socket() {
        let mut ops = Operations::default();
        for i in 0..MAX_OPERATIONS_PER_SOCKET {
            let msg = format!(r#"{{"type":"subscribe","id":"{i}","payload":{{}}}}"#);
            assert_eq!(ops.note_client(msg.as_bytes()), None);
        }
        let over = br#"{"type":"subscribe","id":"x","payload":{}}"#;
        assert_eq!(ops.note_client(over), Some("x".to_owned()));
        ops.note_server(br#"{"type":"complete","id":"0"}"#);
        assert_eq!(
            ops.note_client(over),
            None,
            "a completed operation frees its place"
        );
        assert_eq!(
            ops.note_client(br#"{"type":"start","id":"y"}"#),
            Some("y".to_owned())
        );
        ops.note_client(br#"{"type":"stop","id":"1"}"#);
        ops.note_server(br#"{"type":"error","id":"2","payload":[]}"#);
        assert_eq!(ops.open.len(), MAX_OPERATIONS_PER_SOCKET - 2);
    }

    #[test]
    fn keepalives_alone_skip_the_access_check() {
        assert!(is_keepalive(br#"{"type":"ping"}"#));
        assert!(is_keepalive(br#"{"type":"pong","payload":{}}"#));
        for other in [
            &br#"{"type":"subscribe","id":"1","payload":{"query":"mutation{x}"}}"#[..],
            br#"{"type":"ping","id":"1","payload":{"query":"mutation{x}"}}"#,
            br#"{"type":"ping","type":"subscribe"}"#,
            b"not json",
        ] {
            assert!(!is_keepalive(other), "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn finds_dot_segments_however_spelt() {
        for path in [
            "agent/v1/../../graphql",
            "agent/v1/./heartbeat",
            "agent/v1/%2e%2E/graphql",
            "agent/v1/.%2e/graphql",
            "agent/v1\\..\\graphql",
            "..",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in ["graphql", "agent/v1/tasks/lease", "a/..b/c.", "x/.../y"] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn passes_through_only_the_agent_routes() {
        let mut agent = HeaderMap::new();
        agent.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer qleet_agent_x"),
        );
        let id = Uuid::new_v4();
        for rest in [
            "agent/v1/heartbeat".to_owned(),
            "agent/v1/tasks/lease".to_owned(),
            format!("agent/v1/tasks/{id}/renew"),
            format!("agent/v1/tasks/{id}/release"),
            format!("agent/v1/tasks/{id}/report"),
        ] {
            assert!(is_agent_call(&rest, &agent), "{rest}");
            assert!(!is_agent_call(&rest, &HeaderMap::new()), "{rest}");
        }
        assert!(is_agent_call("agent/v1/register", &HeaderMap::new()));
        for rest in [
            "agent/v1/graphql",
            "agent/v1/tasks/x/report",
            "agent/v1/heartbeat/extra",
            "graphql",
        ] {
            assert!(!is_agent_call(rest, &agent), "{rest}");
        }
    }
}
