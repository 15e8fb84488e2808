//! The web UI: the Leptos app rendered on the server and hydrated in the browser. Its server
//! functions reach the domain through the same GraphQL schema as API clients, in process.

use std::sync::Arc;

use async_graphql::parser::types::OperationType;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use leptos::prelude::{provide_context, use_context};
use leptos_axum::LeptosRoutes as _;
use qleet_frontend::backend::{
    Backend, BackendApi, BoxFuture, ProviderInfo, Refusal, SignInOptions,
};
use tower_http::services::ServeDir;

use crate::error::ApiError;
use crate::graphql::RequestAuth;
use crate::identity::{Principal, session};
use crate::security_headers::page_policy;
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
pub(crate) fn is_mutation(query: &str) -> bool {
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
            let principal = match crate::identity::authenticate(
                &state.pool,
                &state.revocations.cache,
                &headers,
            )
            .await
            {
                Ok(p) => p,
                Err(e) => return error_json(e),
            };
            if let Some(Principal::User { csrf: expected, .. }) = &principal
                && is_mutation(&query)
                && csrf.as_deref() != Some(expected.as_str())
            {
                return error_json(ApiError::Csrf);
            }
            let mutation = is_mutation(&query);
            let request = async_graphql::Request::new(query)
                .variables(async_graphql::Variables::from_json(variables))
                .data(RequestAuth { principal, ip });
            let response = state.schema.execute(request).await;
            if mutation {
                state.revocations.cache.barrier(&state.pool).await;
            }
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
                let principal = match crate::identity::authenticate(
                    &state.pool,
                    &state.revocations.cache,
                    &headers,
                )
                .await
                {
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

/// The paths of the UI's pages, as the router serves them (axum syntax: `/orgs/{slug}`).
pub fn page_paths() -> Vec<String> {
    leptos_axum::generate_route_list(qleet_frontend::App)
        .iter()
        .map(|route| route.path().to_owned())
        .collect()
}

/// Pages, server functions and the built assets under `/pkg`.
pub fn router(state: &AppState) -> Router<AppState> {
    let routes = leptos_axum::generate_route_list(qleet_frontend::App);
    // The context of every page render and server-function call: the backend; for a page, its
    // Content-Security-Policy naming the nonce leptos_axum made for this response and put on the
    // scripts Leptos writes.
    let ctx = {
        let backend = backend(state);
        move || {
            provide_context(backend.clone());
            // A server-function call: where the UI notes a refusal (see `server_fn_status`).
            if let Some(refusal) =
                use_context::<Parts>().and_then(|parts| parts.extensions.get::<Refusal>().cloned())
            {
                provide_context(refusal);
            }
            if let (Some(nonce), Some(response)) = (
                leptos::nonce::use_nonce(),
                use_context::<leptos_axum::ResponseOptions>(),
            ) && let Ok(policy) = HeaderValue::from_str(&page_policy(&nonce))
            {
                response.insert_header(header::CONTENT_SECURITY_POLICY, policy);
            }
        }
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
    // `leptos_routes_with_context` also routes every server function (`/api/...`) with `ctx`;
    // the catch-all below answers names that do not exist.
    Router::new()
        .leptos_routes_with_context(state, routes, ctx.clone(), shell.clone())
        .route(
            "/api/{*fn_name}",
            post({
                let ctx = ctx.clone();
                move |req: Request<Body>| leptos_axum::handle_server_fns_with_context(ctx, req)
            }),
        )
        .route_layer(axum::middleware::from_fn(server_fn_status))
        .nest_service("/pkg", ServeDir::new(pkg))
        .fallback(move |State(state): State<AppState>, req: Request<Body>| {
            let handler = leptos_axum::render_app_async_with_context(ctx.clone(), shell.clone());
            async move {
                let _ = state;
                handler(req).await.into_response()
            }
        })
}

/// Middleware: Leptos answers every server-function failure with 500; a refusal (a GraphQL
/// error code such as `NOT_FOUND`, which the UI notes in the request's [`Refusal`], or
/// arguments that do not decode) gets its 4xx instead, so only a real internal error reads as
/// one. Pages pass through untouched.
async fn server_fn_status(mut req: Request<Body>, next: Next) -> Response {
    if !req.uri().path().starts_with("/api/") {
        return next.run(req).await;
    }
    let refusal = Refusal::default();
    req.extensions_mut().insert(refusal.clone());
    let response = next.run(req).await;
    if response.status() != StatusCode::INTERNAL_SERVER_ERROR {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Server-function errors are one short line: `Variant|message`.
    let body = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(body) => body,
        Err(e) => return crate::error::internal(e).into_response(),
    };
    let bad_arguments = body.starts_with(b"Args|") || body.starts_with(b"MissingArg|");
    let status = if bad_arguments {
        Some(StatusCode::BAD_REQUEST)
    } else {
        refusal.code().as_deref().and_then(status_of_code)
    };
    if let Some(status) = status {
        parts.status = status;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            crate::error::set_retry_after(&mut parts.headers);
        }
    }
    Response::from_parts(parts, Body::from(body))
}

/// The HTTP status of a failure, by its GraphQL `extensions.code` (as `ApiError` answers it);
/// None for `INTERNAL`, unknown codes or none, which stay 500.
fn status_of_code(code: &str) -> Option<StatusCode> {
    Some(match code {
        "UNAUTHENTICATED" => StatusCode::UNAUTHORIZED,
        "FORBIDDEN" | "CSRF" | "QUOTA_EXCEEDED" => StatusCode::FORBIDDEN,
        "NOT_FOUND" => StatusCode::NOT_FOUND,
        "INVALID_INPUT" => StatusCode::BAD_REQUEST,
        "CONFLICT" => StatusCode::CONFLICT,
        "SUBSCRIPTION_PAST_DUE" => StatusCode::PAYMENT_REQUIRED,
        // `ApiError::Unavailable`'s codes: retry later.
        "UNAVAILABLE"
        | "CONTROL_PLANE_UNREACHABLE"
        | "CONTROL_PLANE_NOT_READY"
        | "CONTROL_PLANE_SUSPENDED"
        | "CONTROL_PLANE_FAILED"
        | "CONTROL_PLANE_GONE"
        | "STRIPE_UNAVAILABLE"
        | "BILLING_NOT_CONFIGURED" => StatusCode::SERVICE_UNAVAILABLE,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_refusals_are_503_and_unknown_codes_stay_500() {
        for code in [
            "UNAVAILABLE",
            "CONTROL_PLANE_UNREACHABLE",
            "CONTROL_PLANE_NOT_READY",
            "CONTROL_PLANE_SUSPENDED",
            "CONTROL_PLANE_FAILED",
            "CONTROL_PLANE_GONE",
        ] {
            assert_eq!(
                status_of_code(code),
                Some(StatusCode::SERVICE_UNAVAILABLE),
                "{code}"
            );
        }
        assert_eq!(status_of_code("INTERNAL"), None);
    }

    #[test]
    fn detects_mutations() {
        assert!(is_mutation("mutation { a }"));
        assert!(is_mutation("query A { a } mutation B { b }"));
        assert!(!is_mutation("{ me { id } }"));
        assert!(is_mutation("{ not valid"));
    }
}
