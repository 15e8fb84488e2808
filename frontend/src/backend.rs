//! The seam between the UI and the Qleet backend (server side only).
//!
//! The backend implements [`BackendApi`] and puts a [`Backend`] into the Leptos context of every
//! page render and server-function call. The UI never touches the database: it runs GraphQL as the
//! signed-in user, so the same rules guard the API and the UI.
//!
//! Wiring, in the backend's axum router (`options` has `output_name = "qleet"`,
//! `site_pkg_dir = "pkg"`, and `site_root` pointing at the directory `scripts/build-ui.sh` printed;
//! `ctx` is a closure that calls `provide_context(backend.clone())`):
//!
//! ```text
//! Router::new()
//!     .leptos_routes_with_context(&state, leptos_axum::generate_route_list(App), ctx.clone(), shell)
//!     .route("/api/{*fn_name}", post(/* leptos_axum::handle_server_fns_with_context(ctx, req) */))
//!     .nest_service("/pkg", ServeDir::new(site_root.join("pkg")))
//!     .fallback(/* leptos_axum::render_app_to_stream_with_context(ctx, shell): the 404 page */)
//! ```
//!
//! Pages are rendered whole ([`leptos_router::SsrMode::Async`], set on each route and honoured by
//! `leptos_routes_with_context`), so they read the same without JavaScript and `/` can answer
//! with a real redirect. Out-of-order streaming would need JavaScript to show anything that
//! loads data.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
};

use leptos::prelude::*;

pub use crate::identity::{ProviderInfo, SignInOptions};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What the backend provides in the Leptos context.
#[derive(Clone)]
pub struct Backend(pub Arc<dyn BackendApi>);

/// The backend's services that the UI's server functions use.
pub trait BackendApi: Send + Sync + 'static {
    /// Executes a GraphQL operation as the principal the request's session cookie names.
    /// `csrf` must equal the session's CSRF token for a mutation, else the backend answers an
    /// error with code CSRF.
    /// Returns the standard GraphQL response JSON:
    /// `{"data": ..., "errors": [{"message": "...", "extensions": {"code": "NOT_FOUND"}}]}`.
    fn graphql(
        &self,
        parts: &http::request::Parts,
        csrf: Option<String>,
        query: String,
        variables: serde_json::Value,
    ) -> BoxFuture<serde_json::Value>;

    /// Executes a GraphQL operation against one tenant control plane's own API (objects, apply,
    /// plans), through the management gateway as the principal the request's session names.
    /// Same CSRF rule and response shape as [`BackendApi::graphql`]; a control plane the caller
    /// may not reach answers an error with code NOT_FOUND or FORBIDDEN.
    fn control_plane_graphql(
        &self,
        parts: &http::request::Parts,
        csrf: Option<String>,
        control_plane: String,
        query: String,
        variables: serde_json::Value,
    ) -> BoxFuture<serde_json::Value>;

    /// The CSRF token of the session in `parts`; None when not signed in.
    fn csrf_token(&self, parts: &http::request::Parts) -> Option<String>;

    /// What the sign-in page offers.
    fn sign_in_options(&self) -> SignInOptions;
}

/// The backend and the HTTP request of the render or server-function call being run.
pub(crate) fn current() -> Result<(Backend, http::request::Parts), String> {
    let backend = use_context::<Backend>().ok_or(
        "The web UI is not connected to the backend (no `Backend` in the Leptos context).",
    )?;
    let parts =
        use_context::<http::request::Parts>().ok_or("No HTTP request in the Leptos context.")?;
    Ok((backend, parts))
}

/// The code of the refusal a server function answered with (`NOT_FOUND`, `FORBIDDEN`,
/// `INVALID_INPUT`, ... as in GraphQL's `extensions.code`), so the backend can answer it with
/// the matching 4xx status: Leptos answers every server-function error with 500.
///
/// The backend provides one in the context of each server-function call made over HTTP (not of
/// page renders); the UI notes the code of its last failure in it.
#[derive(Clone, Debug, Default)]
pub struct Refusal(Arc<Mutex<Option<String>>>);

impl Refusal {
    /// The code of the last failure, if it was a refusal with a code.
    pub fn code(&self) -> Option<String> {
        self.0.lock().ok().and_then(|code| code.clone())
    }

    /// Notes the code of a failure (None: a failure without one, such as an internal error).
    pub(crate) fn note(code: Option<&str>) {
        if let Some(refusal) = use_context::<Refusal>()
            && let Ok(mut last) = refusal.0.lock()
        {
            *last = code.map(str::to_owned);
        }
    }
}
