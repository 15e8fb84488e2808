//! Builds the management plane from a [`Config`] and a bound listener, so tests start the real
//! server on port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use leptos::config::LeptosOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;

use crate::config::{Config, Database};
use crate::embedded_pg::EmbeddedPostgres;
use crate::identity::oidc::Providers;
use crate::state::AppState;
use crate::{db, graphql, identity, telemetry, ui, web};

/// Largest request body accepted (GraphQL documents, forms).
const BODY_LIMIT: usize = 1024 * 1024;

/// A built, not yet serving, management plane.
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    embedded: Option<EmbeddedPostgres>,
}

impl Application {
    /// Connects to (or starts) the database, applies migrations and assembles the routes.
    pub async fn build(config: Config, listener: TcpListener) -> anyhow::Result<Self> {
        let (pool, embedded) = match &config.database {
            Database::Url(url) => (db::connect(url).await?, None),
            Database::Embedded(dir) => {
                let pg = EmbeddedPostgres::start(dir).await?;
                (db::connect(&pg.url()).await?, Some(pg))
            }
        };
        db::migrate(&pool).await?;
        let config = Arc::new(config);
        let leptos = LeptosOptions::builder()
            .output_name("qleet")
            .site_root(config.site_dir.to_string_lossy().to_string())
            .site_pkg_dir("pkg")
            .build();
        let state = AppState {
            oidc: Arc::new(Providers::new(&config.oidc_providers)?),
            schema: graphql::schema(pool.clone(), config.clone()),
            metrics: telemetry::metrics_handle(),
            pool,
            config,
            leptos,
        };
        let router = router(state.clone());
        Ok(Application {
            listener,
            router,
            state,
            embedded,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn pool(&self) -> &PgPool {
        &self.state.pool
    }

    /// Serves until `shutdown` resolves, then stops the embedded database if there is one.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let cleanup = tokio::spawn(sweep_expired(self.state.pool.clone()));
        let served = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed");
        cleanup.abort();
        self.state.pool.close().await;
        if let Some(pg) = self.embedded
            && let Err(e) = pg.stop().await
        {
            tracing::warn!(error = %e, "stopping the private PostgreSQL failed");
        }
        served
    }
}

/// All routes with their middleware.
pub fn router(state: AppState) -> Router {
    let mut app = Router::new()
        .merge(web::router())
        .merge(graphql::router())
        .merge(identity::oidc::router());
    if state.config.dev_sign_in {
        app = app.merge(identity::dev::router());
    }
    app.merge(ui::router(&state))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            web::check_origin,
        ))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(axum::middleware::from_fn(telemetry::observe))
        .with_state(state)
}

/// Deletes expired sessions and abandoned sign-ins every ten minutes.
async fn sweep_expired(pool: PgPool) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        for sql in [
            "delete from sessions where expires_at < now()",
            "delete from oidc_logins where expires_at < now()",
        ] {
            if let Err(e) = sqlx::query(sql).execute(&pool).await {
                tracing::warn!(error = %e, "sweeping expired rows failed");
            }
        }
    }
}
