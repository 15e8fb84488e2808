//! `qleet-control-plane`: one tenant's control plane, in its own process with its own database.
//! It holds the desired and observed state of the tenant's applications and everything they
//! depend on ([`objects`]: kinds, apply, plan/diff, references, rendering, compositions, the
//! reconciler), hands work to the tenant's agents ([`agents`] and the agent API) and serves the
//! tenant GraphQL API. It trusts only tokens signed by the management plane's key (or,
//! self-hosted, one static admin token), and it never links the management plane: what the two
//! share is the wire protocol (`qleet-protocol`) and the error and telemetry conventions
//! (`qleet-common`).
//!
//! Layers, each using only those after it: this module (the HTTP application) → [`graphql`] and
//! the agent API → [`agents`] → [`objects`] → [`audit`] (which they record to) → [`caller`] →
//! [`config`].

mod agent_api;
pub mod agents;
pub mod audit;
pub mod caller;
pub mod config;
mod graphql;
pub mod objects;

pub use qleet_common::{error, telemetry};
pub use qleet_protocol::internal_token;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;
use uuid::Uuid;

use crate::config::{ControlPlaneConfig, PoolConfig};

pub use caller::{Caller, ControlPlaneId, subject_kind};
pub use graphql::{ControlPlaneSchema, sdl};

use crate::objects::reconcile::Engine;

/// Reconcile workers per control plane: enough to overlap database round trips on 2 cores.
const RECONCILE_WORKERS: usize = 4;

/// The control-plane migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations/control-plane");

#[derive(Clone)]
struct CpState {
    pool: PgPool,
    config: Arc<ControlPlaneConfig>,
    schema: ControlPlaneSchema,
    engine: Engine,
}

/// A built control plane, ready to serve.
pub struct Application {
    listener: TcpListener,
    router: Router,
    pool: PgPool,
    engine: Engine,
}

impl Application {
    /// Connects, migrates, binds the database to this control plane's id, assembles the routes;
    /// database connections as [`PoolConfig::default`].
    pub async fn build(config: ControlPlaneConfig, listener: TcpListener) -> anyhow::Result<Self> {
        Self::build_with_pool(config, PoolConfig::default(), listener).await
    }

    /// [`Application::build`] with database connections used as `pool` says.
    pub async fn build_with_pool(
        config: ControlPlaneConfig,
        pool: PoolConfig,
        listener: TcpListener,
    ) -> anyhow::Result<Self> {
        // A tenant's control plane is small and there are many per server: few connections,
        // closed soon when idle (nothing polls the database while idle), so an idle one holds
        // only its LISTEN connection and density is not bounded by PostgreSQL's connection limit.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .min_connections(0)
            .idle_timeout(pool.idle_timeout)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(secrecy::ExposeSecret::expose_secret(&config.database_url))
            .await
            .context("cannot connect to the control plane's database (check DATABASE_URL)")?;
        MIGRATOR
            .run(&pool)
            .await
            .context("applying control-plane migrations")?;
        claim_database(&pool, config.id).await?;
        if let Some(point) = &config.crash_at {
            let _ = crate::objects::store::CRASH_AT.set(point.clone());
        }
        crate::objects::reconcile::release_claims(&pool)
            .await
            .context("releasing claims of an earlier run")?;
        let mut engine = Engine::new(pool.clone(), config.id);
        engine.poll_interval = config.poll_interval;
        engine.drift_interval = config.drift_interval;
        let config = Arc::new(config);
        let state = CpState {
            schema: graphql::schema(&engine),
            pool: pool.clone(),
            config,
            engine: engine.clone(),
        };
        let router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/graphql", get(graphql::graphiql).post(graphql::handler))
            .route("/graphql/ws", get(graphql::websocket))
            .route("/audit.jsonl", get(audit::export))
            .merge(agent_api::router())
            .layer(RequestBodyLimitLayer::new(1024 * 1024))
            .layer(axum::middleware::from_fn(crate::telemetry::observe))
            .with_state(state);
        Ok(Application {
            listener,
            router,
            pool,
            engine,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        // The reconciler: one LISTEN connection, a few workers and the timers that wake them
        // (no task polls the database while idle); they stop with the server.
        let mut background = tokio::task::JoinSet::new();
        background.spawn(crate::objects::reconcile::listen(self.engine.clone()));
        background.spawn(crate::objects::reconcile::watch_due_tasks(
            self.engine.clone(),
        ));
        background.spawn(crate::objects::reconcile::watch_due_reconciles(
            self.engine.clone(),
        ));
        background.spawn(crate::objects::drift::watch(self.engine.clone()));
        // The polling baseline (benchmarks) is one loop, as a polling controller would be.
        let workers = if self.engine.poll_interval.is_some() {
            1
        } else {
            RECONCILE_WORKERS
        };
        for _ in 0..workers {
            background.spawn(crate::objects::reconcile::worker(self.engine.clone()));
        }
        // On the signal, agents' long-polls answer at once; other requests in flight drain.
        let stopping = self.engine.stopping.clone();
        let shutdown = async move {
            shutdown.await;
            stopping.cancel();
        };
        let served = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("control-plane HTTP server failed");
        background.shutdown().await;
        self.pool.close().await;
        served
    }
}

/// Records which control plane owns this database on first start, and refuses to run against a
/// database that belongs to another one.
async fn claim_database(pool: &PgPool, id: Uuid) -> anyhow::Result<()> {
    sqlx::query!(
        "insert into control_plane_meta (key, value) values ('control_plane_id', to_jsonb($1::text))
         on conflict (key) do nothing",
        id.to_string(),
    )
    .execute(pool)
    .await?;
    let owner = sqlx::query_scalar!(
        r#"select value #>> '{}' as "owner!" from control_plane_meta where key = 'control_plane_id'"#,
    )
    .fetch_one(pool)
    .await?;
    if owner != id.to_string() {
        bail!("this database belongs to control plane {owner}, not {id}; refusing to start");
    }
    Ok(())
}

async fn readyz(State(state): State<CpState>) -> Response {
    match sqlx::query_scalar!("select 1 as one")
        .fetch_one(&state.pool)
        .await
    {
        Ok(_) => "ready".into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response(),
    }
}
