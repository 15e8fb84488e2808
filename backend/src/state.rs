//! What every handler can reach.

use std::sync::Arc;

use axum::extract::FromRef;
use leptos::config::LeptosOptions;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::config::Config;
use crate::graphql::QleetSchema;
use crate::identity::oidc::Providers;

/// Shared state of the management plane's HTTP server.
#[derive(Clone)]
pub struct AppState {
    /// The management database.
    pub pool: PgPool,
    /// Configuration, read once at start.
    pub config: Arc<Config>,
    /// OpenID Connect providers people sign in with.
    pub oidc: Arc<Providers>,
    /// The GraphQL schema (built once; per-request data is added by the handler).
    pub schema: QleetSchema,
    /// Prometheus exposition of this process's metrics.
    pub metrics: PrometheusHandle,
    /// Leptos settings for the web UI.
    pub leptos: LeptosOptions,
    /// Control-plane lifecycle services (keys, runtime driver, live changes).
    pub controlplanes: Arc<crate::fleet::Services>,
    /// Client for forwarding requests to control planes.
    pub http: reqwest::Client,
    /// Rate limits on sign-ins, failed authentications and agent registrations.
    pub limiters: Arc<crate::limits::Limiters>,
    /// Live connections bound to their principals, closed when access is revoked.
    pub revocations: Arc<crate::identity::revocation::Revocations>,
}

impl FromRef<AppState> for LeptosOptions {
    fn from_ref(state: &AppState) -> Self {
        state.leptos.clone()
    }
}
