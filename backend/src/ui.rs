//! The web UI: the Leptos app rendered on the server and hydrated in the browser. Its server
//! functions reach the domain through the same GraphQL schema as API clients, in process.

use std::sync::Arc;

use async_graphql::parser::types::OperationType;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use leptos::prelude::provide_context;
use leptos_axum::LeptosRoutes as _;
use qleet_frontend::backend::{Backend, BackendApi, BoxFuture, ProviderInfo, SignInOptions};
use tower_http::services::ServeDir;

use crate::error::ApiError;
use crate::graphql::RequestAuth;
use crate::identity::{Principal, session};
use crate::state::AppState;

/// The backend the UI's server functions call.
struct UiBackend {
    state: AppState,
}

fn error_json(err: ApiError) -> serde_json::Value {
    serde_json::json!({
        "data": null,
        "errors": [{ "message": err.to_string(), "extensions": { "code": err.code() } }],
    })
}

/// Whether a GraphQL document contains a mutation (unparseable documents count as one, so they
/// get the CSRF check too; execution then reports the syntax error).
fn is_mutation(query: &str) -> bool {
    match async_graphql::parser::parse_query(query) {
        Ok(doc) => doc
            .operations
            .iter()
            .any(|(_, op)| op.node.ty == OperationType::Mutation),
        Err(_) => true,
    }
}

impl BackendApi for UiBackend {
    fn graphql(
        &self,
        parts: &Parts,
        csrf: Option<String>,
        query: String,
        variables: serde_json::Value,
    ) -> BoxFuture<serde_json::Value> {
        let state = self.state.clone();
        let headers = parts.headers.clone();
        let ip = crate::web::client_ip(parts, state.config.trust_proxy_headers);
        Box::pin(async move {
            let principal = match crate::identity::authenticate(&state.pool, &headers).await {
                Ok(p) => p,
                Err(e) => return error_json(e),
            };
            if let Some(Principal::User { csrf: expected, .. }) = &principal
                && is_mutation(&query)
                && csrf.as_deref() != Some(expected.as_str())
            {
                return error_json(ApiError::Csrf);
            }
            let request = async_graphql::Request::new(query)
                .variables(async_graphql::Variables::from_json(variables))
                .data(RequestAuth { principal, ip });
            let response = state.schema.execute(request).await;
            serde_json::to_value(&response)
                .unwrap_or_else(|e| error_json(crate::error::internal(e)))
        })
    }

    fn control_plane_graphql(
        &self,
        parts: &Parts,
        csrf: Option<String>,
        control_plane: String,
        query: String,
        variables: serde_json::Value,
    ) -> BoxFuture<serde_json::Value> {
        let state = self.state.clone();
        let headers = parts.headers.clone();
        Box::pin(async move {
            if is_mutation(&query) {
                let principal = match crate::identity::authenticate(&state.pool, &headers).await {
                    Ok(p) => p,
                    Err(e) => return error_json(e),
                };
                if let Some(Principal::User { csrf: expected, .. }) = &principal
                    && csrf.as_deref() != Some(expected.as_str())
                {
                    return error_json(ApiError::Csrf);
                }
            }
            let body = serde_json::json!({ "query": query, "variables": variables });
            match crate::fleet::gateway::graphql(&state, &control_plane, &headers, &body).await {
                Ok(v) => v,
                Err(e) => error_json(e),
            }
        })
    }

    fn csrf_token(&self, parts: &Parts) -> Option<String> {
        session::cookie_value(&parts.headers).map(|raw| session::csrf_for(&raw))
    }

    fn sign_in_options(&self) -> SignInOptions {
        SignInOptions {
            providers: self
                .state
                .oidc
                .list()
                .into_iter()
                .map(|(id, name)| ProviderInfo { id, name })
                .collect(),
            dev_sign_in: self.state.config.dev_sign_in,
        }
    }
}

fn backend(state: &AppState) -> Backend {
    Backend(Arc::new(UiBackend {
        state: state.clone(),
    }))
}

/// Pages, server functions and the built assets under `/pkg`.
pub fn router(state: &AppState) -> Router<AppState> {
    let routes = leptos_axum::generate_route_list(qleet_frontend::App);
    let ctx = {
        let backend = backend(state);
        move || provide_context(backend.clone())
    };
    let shell = {
        let options = state.leptos.clone();
        move || qleet_frontend::shell(options.clone())
    };
    let pkg = std::path::Path::new(state.leptos.site_root.as_ref())
        .join(state.leptos.site_pkg_dir.as_ref());
    if !pkg.join("qleet_bg.wasm").exists() {
        tracing::warn!(dir = %pkg.display(), "web UI assets not built (run scripts/build-ui.sh): pages render, but without interactivity");
    }
    Router::new()
        .leptos_routes_with_context(state, routes, ctx.clone(), shell.clone())
        .route("/api/{*fn_name}", post(server_fn))
        .nest_service("/pkg", ServeDir::new(pkg))
        .fallback(move |State(state): State<AppState>, req: Request<Body>| {
            let handler = leptos_axum::render_app_async_with_context(ctx.clone(), shell.clone());
            async move {
                let _ = state;
                handler(req).await.into_response()
            }
        })
}

async fn server_fn(State(state): State<AppState>, req: Request<Body>) -> Response {
    let backend = backend(&state);
    leptos_axum::handle_server_fns_with_context(move || provide_context(backend.clone()), req)
        .await
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_mutations() {
        assert!(is_mutation("mutation { a }"));
        assert!(is_mutation("query A { a } mutation B { b }"));
        assert!(!is_mutation("{ me { id } }"));
        assert!(is_mutation("{ not valid"));
    }
}
