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

use crate::config::{Config, Database, Runtime};
use crate::embedded_pg::EmbeddedPostgres;
use crate::fleet::Services;
use crate::fleet::driver::RuntimeDriver;
use crate::fleet::process::{ProcessDriver, ProcessSettings};
use crate::identity::oidc::Providers;
use crate::keys::Keys;
use crate::state::AppState;
use crate::{db, fleet, graphql, identity, telemetry, ui, web};

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
        let (pool, embedded, admin_url) = match &config.database {
            Database::Url(url) => (db::connect(url).await?, None, url.clone()),
            Database::Embedded(dir) => {
                let pg = EmbeddedPostgres::start(dir).await?;
                let url = pg.url();
                (db::connect(&url).await?, Some(pg), url)
            }
        };
        db::migrate(&pool).await?;
        let config = Arc::new(config);
        let leptos = LeptosOptions::builder()
            .output_name("qleet")
            .site_root(config.site_dir.to_string_lossy().to_string())
            .site_pkg_dir("pkg")
            .build();
        let driver: Box<dyn RuntimeDriver> = match &config.runtime {
            Runtime::Process => Box::new(ProcessDriver::new(ProcessSettings {
                binary: config.control_plane_binary.clone(),
                run_dir: config.data_dir.join("run"),
            })),
            #[cfg(feature = "kubernetes")]
            Runtime::Kubernetes {
                image,
                gateway_namespace,
                gateway_pod_labels,
            } => {
                use crate::fleet::kubernetes::{KubernetesDriver, KubernetesSettings};
                let client = kube::Client::try_default()
                    .await
                    .context("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")?;
                Box::new(KubernetesDriver::new(
                    client,
                    KubernetesSettings {
                        image: image.clone(),
                        gateway_namespace: gateway_namespace.clone(),
                        gateway_pod_labels: gateway_pod_labels.clone(),
                        ..KubernetesSettings::default()
                    },
                ))
            }
            #[cfg(not(feature = "kubernetes"))]
            Runtime::Kubernetes { .. } => {
                anyhow::bail!("this qleet was built without the kubernetes feature")
            }
        };
        let controlplanes = Arc::new(Services {
            keys: Keys::from_secret(&config.secret_key)?,
            driver,
            wake: tokio::sync::Notify::new(),
            changes: tokio::sync::broadcast::channel(256).0,
            billing: Arc::new(crate::billing::Billing::new(config.billing.clone())),
            retention: config.control_plane_retention,
            hibernate_after: config.hibernate_after,
            provisioning_timeout: config.provisioning_timeout,
            admin_url,
            export_dir: config.data_dir.join("exports"),
            instance: uuid::Uuid::new_v4(),
            gateway: Default::default(),
            instances: Default::default(),
        });
        let revocations =
            identity::revocation::Revocations::new(pool.clone(), controlplanes.changes.clone());
        let state = AppState {
            oidc: Arc::new(Providers::new(&config.oidc_providers)?),
            schema: graphql::schema(pool.clone(), config.clone(), controlplanes.clone()),
            controlplanes,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            metrics: telemetry::metrics_handle(),
            limiters: Arc::new(crate::limits::Limiters::new(config.rate_limits)),
            revocations,
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
        let listener = tokio::spawn(self.state.revocations.clone().listen());
        let services = &self.state.controlplanes;
        let requests = tokio::spawn(fleet::gateway::flush_requests(
            self.state.pool.clone(),
            services.clone(),
        ));
        let heartbeat = tokio::spawn(fleet::replicas::heartbeat(
            self.state.pool.clone(),
            services.instance,
            services.instances.clone(),
        ));
        let lifecycle = tokio::spawn(fleet::lifecycle::run(
            self.state.pool.clone(),
            self.state.controlplanes.clone(),
        ));
        let billing = tokio::spawn(crate::billing::worker::run(
            self.state.pool.clone(),
            self.state.controlplanes.clone(),
        ));
        // On the signal, live streams and agents' long-polls end at once (they reconnect); the
        // other requests in flight drain.
        let revocations = self.state.revocations.clone();
        let shutdown = async move {
            shutdown.await;
            revocations.shut_down();
        };
        let served = axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed");
        cleanup.abort();
        listener.abort();
        heartbeat.abort();
        requests.abort();
        let _ = self
            .state
            .controlplanes
            .gateway
            .flush(&self.state.pool)
            .await;
        billing.abort();
        lifecycle.abort();
        let _ = lifecycle.await;
        self.state.controlplanes.driver.shutdown().await;
        fleet::replicas::leave(&self.state.pool, self.state.controlplanes.instance).await;
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
        .merge(identity::oidc::router())
        .merge(fleet::router())
        .merge(crate::billing::webhook::router());
    if state.config.dev_sign_in {
        app = app.merge(identity::dev::router());
    }
    app.merge(ui::router(&state))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            web::check_origin,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::limits::enforce,
        ))
        .layer(axum::middleware::from_fn(web::refuse_nul_in_uri))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(axum::middleware::from_fn(crate::security_headers::set))
        .layer(axum::middleware::from_fn(telemetry::observe))
        .with_state(state)
}

/// Deletes expired sessions and abandoned sign-ins every ten minutes.
async fn sweep_expired(pool: PgPool) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        let sessions = sqlx::query!("delete from sessions where expires_at < now()")
            .execute(&pool)
            .await;
        let logins = sqlx::query!("delete from oidc_logins where expires_at < now()")
            .execute(&pool)
            .await;
        for e in [sessions.err(), logins.err()].into_iter().flatten() {
            tracing::warn!(error = %e, "sweeping expired rows failed");
        }
    }
}
