//! Rate limits on what an attacker repeats: sign-in attempts, failed bearer-token
//! authentications and agent registrations, per client address and per principal (the account
//! signing in, the control plane an agent registers with). Over a limit the answer is `429 Too
//! Many Requests` with `Retry-After` and code `RATE_LIMITED`. The counting is
//! [`governor`]'s (GCRA, one state per key); what is counted is decided here.
//!
//! Failed authentications are only known once a handler has tried the token, so
//! [`enforce`] runs each request inside a task-local flag that [`note_failed_authentication`]
//! sets; an address over its budget of failures is refused *before* its next token is looked at,
//! until the budget refills, so guessing stops rather than merely being answered differently.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::state::AppState;

/// Per-minute budgets (each also the largest burst).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Sign-in attempts (development sign-in, OpenID Connect logins and callbacks) per client
    /// address, and development sign-ins per account.
    pub sign_ins_per_minute: u32,
    /// Failed bearer-token authentications per client address.
    pub failed_authentications_per_minute: u32,
    /// Agent registrations per client address and per control plane.
    pub agent_registrations_per_minute: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            sign_ins_per_minute: 30,
            failed_authentications_per_minute: 20,
            agent_registrations_per_minute: 20,
        }
    }
}

type Keyed = DefaultKeyedRateLimiter<String>;

/// The limiters of one management-plane process.
pub struct Limiters {
    sign_in_by_address: Keyed,
    sign_in_by_account: Keyed,
    failed_auth_by_address: Keyed,
    registration_by_address: Keyed,
    registration_by_control_plane: Keyed,
    /// Addresses out of failed-authentication budget, until when.
    blocked: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Limiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiters").finish_non_exhaustive()
    }
}

fn per_minute(n: u32) -> Keyed {
    let n = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
    RateLimiter::keyed(Quota::per_minute(n))
}

/// How long to wait before trying again.
#[derive(Debug, Clone, Copy)]
pub struct RetryAfter(pub Duration);

impl Limiters {
    pub fn new(limits: RateLimits) -> Self {
        Limiters {
            sign_in_by_address: per_minute(limits.sign_ins_per_minute),
            sign_in_by_account: per_minute(limits.sign_ins_per_minute),
            failed_auth_by_address: per_minute(limits.failed_authentications_per_minute),
            registration_by_address: per_minute(limits.agent_registrations_per_minute),
            registration_by_control_plane: per_minute(limits.agent_registrations_per_minute),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    fn take(limiter: &Keyed, key: &str) -> Result<(), RetryAfter> {
        limiter.check_key(&key.to_owned()).map_err(|not_until| {
            RetryAfter(not_until.wait_time_from(DefaultClock::default().now()))
        })
    }

    /// One development sign-in for `account` (its email address).
    pub fn sign_in_account(&self, account: &str) -> Result<(), RetryAfter> {
        Self::take(&self.sign_in_by_account, &account.to_lowercase())
    }

    fn blocked_for(&self, address: &str) -> Option<Duration> {
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let until = *blocked.get(address)?;
        until.checked_duration_since(Instant::now())
    }

    fn record_failed_authentication(&self, address: &str) {
        if let Err(RetryAfter(wait)) = Self::take(&self.failed_auth_by_address, address) {
            let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if blocked.len() > 10_000 {
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(address.to_owned(), now + wait);
        }
        if self.failed_auth_by_address.len() > 100_000 {
            self.failed_auth_by_address.retain_recent();
        }
    }
}

tokio::task_local! {
    static AUTH_FAILED: AtomicBool;
}

/// Called where a bearer token is refused: counts against the request's client address.
pub fn note_failed_authentication() {
    let _ = AUTH_FAILED.try_with(|failed| failed.store(true, Ordering::Relaxed));
}

/// What a request is, for the limits.
enum Class<'a> {
    SignIn,
    AgentRegistration { control_plane: &'a str },
    Other,
}

fn classify<'a>(method: &Method, path: &'a str) -> Class<'a> {
    if (method == Method::POST && path == "/auth/dev")
        || (method == Method::GET
            && (path.starts_with("/auth/login/") || path.starts_with("/auth/callback/")))
    {
        return Class::SignIn;
    }
    if method == Method::POST
        && let Some(rest) = path.strip_prefix("/cp/")
        && let Some((control_plane, route)) = rest.split_once('/')
        && route == "agent/v1/register"
    {
        return Class::AgentRegistration { control_plane };
    }
    Class::Other
}

/// Middleware over every route: applies the limits, see the module documentation.
pub async fn enforce(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limiters = &state.limiters;
    let (parts, body) = req.into_parts();
    let address = crate::web::client_ip(&parts, state.config.trust_proxy_headers)
        .unwrap_or_else(|| "unknown".to_owned());
    let checked = match classify(&parts.method, parts.uri.path()) {
        Class::SignIn => Limiters::take(&limiters.sign_in_by_address, &address),
        Class::AgentRegistration { control_plane } => {
            Limiters::take(&limiters.registration_by_address, &address).and_then(|()| {
                Limiters::take(&limiters.registration_by_control_plane, control_plane)
            })
        }
        Class::Other => Ok(()),
    };
    if let Err(retry) = checked {
        return too_many_requests(
            retry,
            "too many attempts from this address; try again later",
        );
    }
    let bearer = parts.headers.contains_key(header::AUTHORIZATION);
    if bearer && let Some(wait) = limiters.blocked_for(&address) {
        return too_many_requests(
            RetryAfter(wait),
            "too many failed authentications from this address; try again later",
        );
    }
    let req = Request::from_parts(parts, body);
    let (failed, response) = AUTH_FAILED
        .scope(AtomicBool::new(false), async {
            let response = next.run(req).await;
            (AUTH_FAILED.with(|f| f.load(Ordering::Relaxed)), response)
        })
        .await;
    if failed {
        limiters.record_failed_authentication(&address);
    }
    response
}

/// `429` with `Retry-After` (whole seconds, at least 1) and code `RATE_LIMITED`, shaped like
/// the other JSON refusals (`{"error": {...}}`) and carrying GraphQL's `errors` too, so both
/// kinds of client read it.
pub fn too_many_requests(retry: RetryAfter, message: &str) -> Response {
    let secs = retry.0.as_secs_f64().ceil().max(1.0) as u64;
    let body = serde_json::json!({
        "error": { "code": "RATE_LIMITED", "message": message },
        "errors": [{ "message": message, "extensions": { "code": "RATE_LIMITED" } }],
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_by_route() {
        assert!(matches!(
            classify(&Method::POST, "/auth/dev"),
            Class::SignIn
        ));
        assert!(matches!(
            classify(&Method::GET, "/auth/login/test"),
            Class::SignIn
        ));
        assert!(matches!(
            classify(&Method::GET, "/auth/callback/test"),
            Class::SignIn
        ));
        assert!(matches!(
            classify(&Method::POST, "/cp/abc/agent/v1/register"),
            Class::AgentRegistration {
                control_plane: "abc"
            }
        ));
        assert!(matches!(
            classify(&Method::POST, "/cp/abc/agent/v1/lease"),
            Class::Other
        ));
        assert!(matches!(classify(&Method::POST, "/graphql"), Class::Other));
    }

    #[test]
    fn an_address_out_of_failures_is_blocked_until_its_budget_refills() {
        let limiters = Limiters::new(RateLimits {
            failed_authentications_per_minute: 3,
            ..RateLimits::default()
        });
        for _ in 0..3 {
            limiters.record_failed_authentication("10.0.0.1");
            assert!(limiters.blocked_for("10.0.0.1").is_none());
        }
        limiters.record_failed_authentication("10.0.0.1");
        let wait = limiters.blocked_for("10.0.0.1").expect("blocked");
        assert!(
            wait <= Duration::from_secs(20),
            "one cell refills in 60/3 s: {wait:?}"
        );
        assert!(limiters.blocked_for("10.0.0.2").is_none(), "others are not");
    }
}
