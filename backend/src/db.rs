//! The management database: connection pool and migrations.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

/// The management-plane migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations/management");

/// Opens a pool to the management database.
pub async fn connect(url: &SecretString) -> anyhow::Result<PgPool> {
    use anyhow::Context as _;
    PgPoolOptions::new()
        .max_connections(32)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url.expose_secret())
        .await
        .context("cannot connect to the management database (check DATABASE_URL)")
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    MIGRATOR
        .run(pool)
        .await
        .context("applying management database migrations")
}
