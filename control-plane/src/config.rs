//! The control plane's configuration: flags and `QLEET_CP_*` variables, checked once at start.

use std::net::SocketAddr;

use clap::Parser;
use qleet_common::telemetry::LogFormat;
use secrecy::SecretString;

/// One tenant's Qleet control plane: the orchestrator over its own database, reached through the
/// management plane's gateway (or, self-hosted, with a static admin token).
#[derive(Debug, Parser)]
#[command(name = "qleet-control-plane", version, about)]
pub struct ControlPlaneArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "QLEET_CP_LISTEN",
        value_name = "QLEET_CP_LISTEN",
        default_value = "127.0.0.1:8090"
    )]
    pub listen: SocketAddr,
    /// PostgreSQL URL of this control plane's own database.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: String,
    /// This control plane's id; its database is bound to it on first start.
    #[arg(long, env = "QLEET_CP_ID", value_name = "QLEET_CP_ID")]
    pub id: uuid::Uuid,
    /// The management plane's public key (base64url Ed25519) that signs request tokens.
    #[arg(
        long,
        env = "QLEET_CP_VERIFYING_KEY",
        value_name = "QLEET_CP_VERIFYING_KEY"
    )]
    pub verifying_key: Option<String>,
    /// Standalone (self-hosted) mode: a static admin token, at least 32 characters.
    #[arg(
        long,
        env = "QLEET_CP_ADMIN_TOKEN",
        value_name = "QLEET_CP_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Log format.
    #[arg(
        long,
        env = "QLEET_LOG_FORMAT",
        value_name = "QLEET_LOG_FORMAT",
        default_value = "json"
    )]
    pub log_format: LogFormat,
    /// Benchmarks only: ignore LISTEN/NOTIFY and poll for work every this many milliseconds
    /// (the baseline the notification-driven reconciler is compared with).
    #[arg(
        long,
        env = "QLEET_CP_POLL_MS",
        value_name = "QLEET_CP_POLL_MS",
        hide = true
    )]
    pub poll_ms: Option<u64>,
    /// How often what the agent made in the cloud is observed for drift, in seconds (default
    /// 600); `refresh(kind, name)` observes one object at once.
    #[arg(
        long,
        env = "QLEET_CP_DRIFT_INTERVAL_SECONDS",
        value_name = "SECONDS",
        default_value_t = 600,
        value_parser = clap::value_parser!(u64).range(1..=604_800)
    )]
    pub drift_interval_seconds: u64,
    /// Close a pooled database connection once it has been idle this many seconds (default 10):
    /// an idle control plane then holds only its LISTEN connection, so many fit on one server.
    #[arg(
        long,
        env = "QLEET_CP_POOL_IDLE_SECONDS",
        value_name = "SECONDS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub pool_idle_seconds: u64,
    /// Testing only: abort the process at this named point (crash-safety tests).
    #[arg(
        long,
        env = "QLEET_CRASH_AT",
        value_name = "QLEET_CRASH_AT",
        hide = true
    )]
    pub crash_at: Option<String>,
    /// Stop (gracefully) when standard input reaches its end: the management plane's process
    /// driver holds the other end of a pipe, so a control plane never outlives its supervisor,
    /// even one killed with SIGKILL, and closing the pipe is how it asks for a clean stop.
    #[arg(long, env = "QLEET_CP_STOP_ON_STDIN_EOF", hide = true)]
    pub stop_on_stdin_eof: bool,
}

/// How a control plane authenticates its callers.
#[derive(Debug, Clone)]
pub enum ControlPlaneAuth {
    /// Tokens minted by the management plane's gateway.
    Gateway(qleet_protocol::internal_token::Verifier),
    /// Self-hosted: one static admin token, kept only as a hash.
    Standalone { admin_token_hash: Vec<u8> },
}

/// A control plane's configuration, checked once at start.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    pub listen: SocketAddr,
    pub database_url: SecretString,
    pub id: uuid::Uuid,
    pub auth: ControlPlaneAuth,
    pub log_format: LogFormat,
    /// Testing only: the named point where the process aborts on purpose.
    pub crash_at: Option<String>,
    /// Benchmarks only: poll every this long instead of waking on notifications.
    pub poll_interval: Option<std::time::Duration>,
    /// How often what the agent made is observed for drift.
    pub drift_interval: std::time::Duration,
    /// Stop when standard input ends (see [`ControlPlaneArgs::stop_on_stdin_eof`]).
    pub stop_on_stdin_eof: bool,
}

/// How a control plane uses its database connections; [`Default`] is what the flags default to.
/// (Kept apart from [`ControlPlaneConfig`], which test fixtures build field by field.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// A pooled connection idle this long is closed (the LISTEN connection is never idle).
    pub idle_timeout: std::time::Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            idle_timeout: std::time::Duration::from_secs(10),
        }
    }
}

impl PoolConfig {
    pub fn from_args(args: &ControlPlaneArgs) -> Self {
        PoolConfig {
            idle_timeout: std::time::Duration::from_secs(args.pool_idle_seconds),
        }
    }
}

impl ControlPlaneConfig {
    pub fn from_args(args: ControlPlaneArgs) -> Result<Self, ConfigError> {
        let auth = match (args.verifying_key, args.admin_token) {
            (Some(key), None) => ControlPlaneAuth::Gateway(
                qleet_protocol::internal_token::Verifier::new(&key, args.id).map_err(|_| {
                    ConfigError(
                        "QLEET_CP_VERIFYING_KEY is not a base64url Ed25519 public key".into(),
                    )
                })?,
            ),
            (None, Some(token)) if token.len() >= 32 => ControlPlaneAuth::Standalone {
                admin_token_hash: qleet_common::secrets::hash_secret(&token),
            },
            (None, Some(_)) => {
                return Err(ConfigError(
                    "QLEET_CP_ADMIN_TOKEN must be at least 32 characters".into(),
                ));
            }
            _ => {
                return Err(ConfigError(
                    "give exactly one of QLEET_CP_VERIFYING_KEY (managed) or QLEET_CP_ADMIN_TOKEN (standalone)".into(),
                ));
            }
        };
        Ok(ControlPlaneConfig {
            listen: args.listen,
            database_url: parse_database_url(&args.database_url)?,
            id: args.id,
            auth,
            log_format: args.log_format,
            crash_at: args.crash_at,
            poll_interval: args.poll_ms.map(std::time::Duration::from_millis),
            drift_interval: std::time::Duration::from_secs(args.drift_interval_seconds),
            stop_on_stdin_eof: args.stop_on_stdin_eof,
        })
    }
}

/// A configuration value that cannot be used, with a one-line reason.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

fn parse_database_url(url: &str) -> Result<SecretString, ConfigError> {
    qleet_common::database_url::parse(url).map_err(ConfigError)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn args(extra: &[&str]) -> Result<ControlPlaneArgs, clap::Error> {
        let base = [
            "qleet-control-plane",
            "--database-url",
            "postgres://localhost/cp",
            "--id",
            "00000000-0000-0000-0000-000000000001",
        ];
        ControlPlaneArgs::try_parse_from(base.iter().chain(extra))
    }

    #[test]
    fn idle_pool_connections_close_after_ten_seconds_unless_configured() {
        let default = args(&[]).expect("args");
        assert_eq!(PoolConfig::from_args(&default), PoolConfig::default());
        assert_eq!(
            PoolConfig::default().idle_timeout,
            std::time::Duration::from_secs(10)
        );
        let short = args(&["--pool-idle-seconds", "1"]).expect("args");
        assert_eq!(
            PoolConfig::from_args(&short).idle_timeout,
            std::time::Duration::from_secs(1)
        );
        assert!(args(&["--pool-idle-seconds", "0"]).is_err());
    }
}
