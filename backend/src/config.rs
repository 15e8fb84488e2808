//! Configuration: one typed struct, read once at start from flags and `QLEET_*` variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

/// Qleet: managed application orchestration.
#[derive(Debug, Parser)]
#[command(name = "qleet", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the management plane in production (needs DATABASE_URL and QLEET_PUBLIC_URL).
    Serve(ServeArgs),
    /// Run locally: embedded PostgreSQL when DATABASE_URL is unset, dev sign-in enabled.
    Dev(DevArgs),
    /// Apply the management database migrations and exit.
    Migrate(MigrateArgs),
    /// Manage the PostgreSQL servers tenant databases are placed on (none registered: the
    /// management database's own server).
    #[command(subcommand)]
    DatabaseServers(DatabaseServersCommand),
    /// Print the GraphQL schema (SDL).
    Schema,
    /// Print the Kubernetes manifests that install the management plane (with the Kubernetes
    /// runtime driver) as multi-document YAML, for `kubectl apply -f -`.
    Manifests(ManifestsArgs),
    /// Run one tenant's control plane: an alias that runs the `qleet-control-plane` binary
    /// installed next to `qleet` (or QLEET_CONTROL_PLANE_BIN) with the same arguments.
    #[command(disable_help_flag = true)]
    ControlPlane {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "QLEET_LISTEN",
        value_name = "QLEET_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub listen: SocketAddr,
    /// The URL people reach Qleet at; https unless it is a loopback address.
    #[arg(long, env = "QLEET_PUBLIC_URL", value_name = "QLEET_PUBLIC_URL")]
    pub public_url: Url,
    /// PostgreSQL URL of the management database.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "QLEET_LISTEN",
        value_name = "QLEET_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,
    /// The URL people reach Qleet at (default: http://LISTEN).
    #[arg(long, env = "QLEET_PUBLIC_URL", value_name = "QLEET_PUBLIC_URL")]
    pub public_url: Option<Url>,
    /// PostgreSQL URL; when unset, a private cluster under DATA_DIR/postgres is used.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// PostgreSQL URL of the management database.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: String,
}

/// `qleet database-servers ...`
#[derive(Debug, Subcommand)]
pub enum DatabaseServersCommand {
    /// List the servers: capacity, control planes placed, draining or refusing connections.
    List(ServersArgs),
    /// Register a server. New control planes go to the least loaded server with room.
    Add {
        #[command(flatten)]
        common: ServersArgs,
        /// A name for it (lower-case letters, digits and '-').
        name: String,
        /// PostgreSQL URL of a role there with CREATEDB and CREATEROLE (or a superuser).
        #[arg(long, env = "QLEET_SERVER_URL", hide_env_values = true)]
        url: String,
        /// How many control planes it takes.
        #[arg(long)]
        capacity: i32,
    },
    /// Place no new control plane on a server (those there stay).
    Drain {
        #[command(flatten)]
        common: ServersArgs,
        name: String,
    },
    /// Place control planes on a drained server again.
    Undrain {
        #[command(flatten)]
        common: ServersArgs,
        name: String,
    },
    /// Change how many control planes a server takes.
    SetCapacity {
        #[command(flatten)]
        common: ServersArgs,
        name: String,
        capacity: i32,
    },
    /// Forget a server that holds no control plane.
    Remove {
        #[command(flatten)]
        common: ServersArgs,
        name: String,
    },
}

/// What every `qleet database-servers` command needs.
#[derive(Debug, Args)]
pub struct ServersArgs {
    /// PostgreSQL URL of the management database.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: String,
    /// The management plane's master secret (server URLs are stored encrypted with it); `qleet
    /// dev` keeps one in DATA_DIR/secret.key.
    #[arg(
        long,
        env = "QLEET_SECRET_KEY",
        value_name = "QLEET_SECRET_KEY",
        hide_env_values = true
    )]
    pub secret_key: String,
}

#[derive(Debug, Args)]
pub struct ManifestsArgs {
    /// A YAML file of install settings (deploy/values.example.yaml lists them); every field
    /// has a default.
    #[arg(long, value_name = "FILE")]
    pub values: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Directory for Qleet's own files (the embedded PostgreSQL cluster in dev).
    #[arg(
        long,
        env = "QLEET_DATA_DIR",
        value_name = "QLEET_DATA_DIR",
        default_value = ".qleet"
    )]
    pub data_dir: PathBuf,
    /// Directory holding the built web UI (`pkg/qleet.js`, `pkg/qleet_bg.wasm`, `pkg/qleet.css`).
    #[arg(
        long,
        env = "QLEET_SITE_DIR",
        value_name = "QLEET_SITE_DIR",
        default_value = "target/site"
    )]
    pub site_dir: PathBuf,
    /// OpenID Connect providers as JSON:
    /// `[{"id":"okta","name":"Okta","issuer":"https://...","client_id":"...","client_secret":"..."}]`.
    #[arg(
        long,
        env = "QLEET_OIDC_PROVIDERS",
        value_name = "QLEET_OIDC_PROVIDERS",
        hide_env_values = true
    )]
    pub oidc_providers: Option<String>,
    /// How long a browser session lasts, in hours.
    #[arg(
        long,
        env = "QLEET_SESSION_TTL_HOURS",
        value_name = "QLEET_SESSION_TTL_HOURS",
        default_value_t = 168
    )]
    pub session_ttl_hours: u64,
    /// How long an invitation link stays valid, in hours.
    #[arg(
        long,
        env = "QLEET_INVITATION_TTL_HOURS",
        value_name = "QLEET_INVITATION_TTL_HOURS",
        default_value_t = 168
    )]
    pub invitation_ttl_hours: u64,
    /// Take the client IP from `X-Forwarded-For` (only behind a proxy you run).
    #[arg(
        long,
        env = "QLEET_TRUST_PROXY_HEADERS",
        value_name = "QLEET_TRUST_PROXY_HEADERS"
    )]
    pub trust_proxy_headers: bool,
    /// Sign-in attempts allowed per client address (and dev sign-ins per account) per minute.
    #[arg(
        long,
        env = "QLEET_RATE_SIGN_INS_PER_MINUTE",
        value_name = "QLEET_RATE_SIGN_INS_PER_MINUTE",
        default_value_t = 30
    )]
    pub rate_sign_ins_per_minute: u32,
    /// Failed API-token authentications allowed per client address per minute; past it, every
    /// request with a token from that address gets 429 until the budget refills.
    #[arg(
        long,
        env = "QLEET_RATE_FAILED_AUTHENTICATIONS_PER_MINUTE",
        value_name = "QLEET_RATE_FAILED_AUTHENTICATIONS_PER_MINUTE",
        default_value_t = 20
    )]
    pub rate_failed_authentications_per_minute: u32,
    /// Agent registrations allowed per client address and per control plane per minute.
    #[arg(
        long,
        env = "QLEET_RATE_AGENT_REGISTRATIONS_PER_MINUTE",
        value_name = "QLEET_RATE_AGENT_REGISTRATIONS_PER_MINUTE",
        default_value_t = 20
    )]
    pub rate_agent_registrations_per_minute: u32,
    /// Master secret (32 bytes, base64url): encrypts tenant database passwords and derives the
    /// key that signs gateway tokens. `qleet dev` keeps one in DATA_DIR/secret.key if unset.
    #[arg(
        long,
        env = "QLEET_SECRET_KEY",
        value_name = "QLEET_SECRET_KEY",
        hide_env_values = true
    )]
    pub secret_key: Option<String>,
    /// Stop a control plane after this many seconds without a request (0: never).
    #[arg(
        long,
        env = "QLEET_HIBERNATE_AFTER_SECS",
        value_name = "QLEET_HIBERNATE_AFTER_SECS",
        default_value_t = 1800
    )]
    pub hibernate_after_secs: u64,
    /// Keep a deleted control plane's database this many hours before dropping it.
    #[arg(
        long,
        env = "QLEET_CONTROL_PLANE_RETENTION_HOURS",
        value_name = "QLEET_CONTROL_PLANE_RETENTION_HOURS",
        default_value_t = 168
    )]
    pub control_plane_retention_hours: u64,
    /// A control plane whose provisioning has not finished after this many seconds (say its
    /// database server stays full) is marked FAILED with the reason; resuming it tries again.
    #[arg(
        long,
        env = "QLEET_PROVISIONING_TIMEOUT_SECS",
        value_name = "QLEET_PROVISIONING_TIMEOUT_SECS",
        default_value_t = 900,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub provisioning_timeout_secs: u64,
    /// Where control planes run: `process` (children of this server) or `kubernetes`.
    #[arg(
        long,
        env = "QLEET_RUNTIME",
        value_name = "QLEET_RUNTIME",
        default_value = "process"
    )]
    pub runtime: RuntimeKind,
    /// Process runtime: the `qleet-control-plane` binary to start (default: the one installed
    /// next to `qleet`).
    #[arg(
        long,
        env = "QLEET_CONTROL_PLANE_BIN",
        value_name = "QLEET_CONTROL_PLANE_BIN"
    )]
    pub control_plane_bin: Option<PathBuf>,
    /// Kubernetes runtime: the image control-plane pods run (its entrypoint or `PATH` has
    /// `qleet-control-plane`).
    #[arg(long, env = "QLEET_K8S_IMAGE", value_name = "QLEET_K8S_IMAGE")]
    pub k8s_image: Option<String>,
    /// Kubernetes runtime: the namespace of the gateway (this server's) pods.
    #[arg(
        long,
        env = "QLEET_K8S_GATEWAY_NAMESPACE",
        value_name = "QLEET_K8S_GATEWAY_NAMESPACE",
        default_value = "qleet"
    )]
    pub k8s_gateway_namespace: String,
    /// Kubernetes runtime: labels of the gateway pods, `k=v,k=v`.
    #[arg(
        long,
        env = "QLEET_K8S_GATEWAY_POD_LABELS",
        value_name = "QLEET_K8S_GATEWAY_POD_LABELS",
        default_value = "app.kubernetes.io/name=qleet"
    )]
    pub k8s_gateway_pod_labels: String,
    /// Log format (default: json for serve, pretty for dev).
    #[arg(long, env = "QLEET_LOG_FORMAT", value_name = "QLEET_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Who may introspect the GraphQL schema (`__schema`, `__type`) at `/graphql`:
    /// `anonymous` (anyone), `authenticated` (a session or API token) or `off` (nobody).
    /// Default: authenticated for serve, anonymous for dev.
    #[arg(long, env = "QLEET_INTROSPECTION", value_name = "QLEET_INTROSPECTION")]
    pub introspection: Option<Introspection>,
    #[command(flatten)]
    pub billing: BillingArgs,
}

/// Billing settings; without the two Stripe secrets every organisation has the default plan.
#[derive(Debug, Args)]
pub struct BillingArgs {
    /// Stripe secret API key (`sk_live_...` / `sk_test_...`).
    #[arg(
        long,
        env = "QLEET_STRIPE_SECRET_KEY",
        value_name = "QLEET_STRIPE_SECRET_KEY",
        hide_env_values = true
    )]
    pub stripe_secret_key: Option<String>,
    /// Signing secret of the Stripe webhook endpoint `{QLEET_PUBLIC_URL}/webhooks/stripe`.
    #[arg(
        long,
        env = "QLEET_STRIPE_WEBHOOK_SECRET",
        value_name = "QLEET_STRIPE_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub stripe_webhook_secret: Option<String>,
    /// Base URL of the Stripe API (tests point it at a local peer).
    #[arg(
        long,
        env = "QLEET_STRIPE_API_BASE",
        value_name = "QLEET_STRIPE_API_BASE",
        default_value = "https://api.stripe.com/"
    )]
    pub stripe_api_base: Url,
    /// Stripe price of each paid plan: `team=price_123,business=price_456`.
    #[arg(long, env = "QLEET_STRIPE_PRICES", value_name = "QLEET_STRIPE_PRICES")]
    pub stripe_prices: Option<String>,
    /// Stripe price of metered object-hours, added to every Checkout (optional).
    #[arg(
        long,
        env = "QLEET_STRIPE_USAGE_PRICE",
        value_name = "QLEET_STRIPE_USAGE_PRICE"
    )]
    pub stripe_usage_price: Option<String>,
    /// `event_name` of the Stripe billing meter object-hours are reported to (unset: not reported).
    #[arg(
        long,
        env = "QLEET_STRIPE_METER_EVENT",
        value_name = "QLEET_STRIPE_METER_EVENT"
    )]
    pub stripe_meter_event: Option<String>,
    /// The plan catalogue as JSON, smallest first (default: Free, Team, Business).
    #[arg(long, env = "QLEET_PLANS", value_name = "QLEET_PLANS")]
    pub plans: Option<String>,
    /// The plan of organisations without a subscription.
    #[arg(
        long,
        env = "QLEET_DEFAULT_PLAN",
        value_name = "QLEET_DEFAULT_PLAN",
        default_value = "free"
    )]
    pub default_plan: String,
    /// How long a past-due organisation keeps its control planes running before they are
    /// suspended: a duration such as `30m`, `36h`, `7d` or `1h30m` (units s, m, h, d); a bare
    /// number is hours. Default 7d.
    #[arg(
        long,
        env = "QLEET_BILLING_GRACE",
        value_name = "QLEET_BILLING_GRACE",
        value_parser = parse_grace
    )]
    pub billing_grace: Option<Duration>,
    /// Deprecated name of QLEET_BILLING_GRACE (same values; a bare number is hours). Setting
    /// both is refused.
    #[arg(
        long,
        env = "QLEET_BILLING_GRACE_HOURS",
        value_name = "QLEET_BILLING_GRACE_HOURS",
        value_parser = parse_grace
    )]
    pub billing_grace_hours: Option<Duration>,
    /// Seconds between runs of the billing worker (grace deadlines, usage reports).
    #[arg(
        long,
        env = "QLEET_BILLING_INTERVAL_SECS",
        value_name = "QLEET_BILLING_INTERVAL_SECS",
        default_value_t = 60
    )]
    pub billing_interval_secs: u64,
    /// Seconds between object counts read from each control plane for metering.
    #[arg(
        long,
        env = "QLEET_USAGE_SAMPLE_SECS",
        value_name = "QLEET_USAGE_SAMPLE_SECS",
        default_value_t = 300
    )]
    pub usage_sample_secs: u64,
}

/// The grace period without `QLEET_BILLING_GRACE`: a week.
const DEFAULT_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest grace period accepted (a year): anything longer is a typo.
const MAX_GRACE: Duration = Duration::from_secs(366 * 24 * 3600);

/// A grace period: `30m`, `36h`, `7d`, `1h30m`, `90s` (units s, m, h, d, combinable), or a bare
/// number of hours (`168`, `0.5`) as `QLEET_BILLING_GRACE_HOURS` always took.
pub fn parse_grace(input: &str) -> Result<Duration, String> {
    let text = input.trim();
    let refuse = || {
        format!(
            "{input:?} is not a duration: use e.g. 30m, 36h, 7d or 1h30m (a bare number is hours)"
        )
    };
    let duration = if let Ok(hours) = text.parse::<f64>() {
        if !hours.is_finite() || hours < 0.0 {
            return Err(refuse());
        }
        Duration::try_from_secs_f64(hours * 3600.0).map_err(|_| refuse())?
    } else {
        let mut total = Duration::ZERO;
        let mut rest = text;
        if rest.is_empty() {
            return Err(refuse());
        }
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .ok_or_else(refuse)?;
            if digits == 0 {
                return Err(refuse());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| refuse())?;
            let unit = rest[digits..].chars().next().ok_or_else(refuse)?;
            let secs = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return Err(refuse()),
            };
            let part = n.checked_mul(secs).ok_or_else(refuse)?;
            total = total
                .checked_add(Duration::from_secs(part))
                .ok_or_else(refuse)?;
            rest = rest[digits + unit.len_utf8()..].trim_start();
        }
        total
    };
    if duration > MAX_GRACE {
        return Err(format!("{input:?} is longer than a year"));
    }
    Ok(duration)
}

/// Stripe credentials and endpoints.
#[derive(Debug, Clone)]
pub struct StripeConfig {
    pub secret_key: SecretString,
    /// Verifies `Stripe-Signature` on webhooks.
    pub webhook_secret: SecretString,
    /// `https://api.stripe.com/` in production.
    pub api_base: Url,
    /// Metered price added to every Checkout.
    pub usage_price: Option<String>,
    /// The billing meter's `event_name`; usage is only reported when set.
    pub meter_event: Option<String>,
}

/// Plans, Stripe and dunning, checked once at start.
#[derive(Debug, Clone)]
pub struct BillingConfig {
    /// `None`: development without Stripe, every organisation has the default plan.
    pub stripe: Option<StripeConfig>,
    pub plans: crate::billing::plans::Plans,
    /// How long a past-due organisation keeps running before its control planes are suspended.
    pub grace: Duration,
    /// How often the billing worker runs.
    pub interval: Duration,
    /// How often control planes are asked for their object counts.
    pub usage_sample_interval: Duration,
    /// How old a webhook's signed timestamp may be.
    pub webhook_tolerance: Duration,
}

impl BillingConfig {
    pub fn from_args(args: &BillingArgs) -> Result<Self, ConfigError> {
        let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
        let stripe = match (
            nonempty(&args.stripe_secret_key),
            nonempty(&args.stripe_webhook_secret),
        ) {
            (None, None) => None,
            (Some(key), Some(secret)) => Some(StripeConfig {
                secret_key: SecretString::from(key),
                webhook_secret: SecretString::from(secret),
                api_base: args.stripe_api_base.clone(),
                usage_price: nonempty(&args.stripe_usage_price),
                meter_event: nonempty(&args.stripe_meter_event),
            }),
            _ => {
                return Err(ConfigError(
                    "set both QLEET_STRIPE_SECRET_KEY and QLEET_STRIPE_WEBHOOK_SECRET, or neither"
                        .into(),
                ));
            }
        };
        let grace = match (args.billing_grace, args.billing_grace_hours) {
            (Some(_), Some(_)) => {
                return Err(ConfigError(
                    "set QLEET_BILLING_GRACE or its old name QLEET_BILLING_GRACE_HOURS, not both"
                        .into(),
                ));
            }
            (Some(g), None) | (None, Some(g)) => g,
            (None, None) => DEFAULT_GRACE,
        };
        if args.billing_interval_secs == 0 || args.usage_sample_secs == 0 {
            return Err(ConfigError(
                "QLEET_BILLING_INTERVAL_SECS and QLEET_USAGE_SAMPLE_SECS must be at least 1".into(),
            ));
        }
        Ok(BillingConfig {
            stripe,
            plans: crate::billing::plans::Plans::from_config(
                args.plans.as_deref(),
                args.stripe_prices.as_deref(),
                &args.default_plan,
            )?,
            grace,
            interval: Duration::from_secs(args.billing_interval_secs),
            usage_sample_interval: Duration::from_secs(args.usage_sample_secs),
            webhook_tolerance: Duration::from_secs(300),
        })
    }

    /// Without Stripe: the default plan for everyone, nothing to check or report.
    pub fn dev_default() -> Self {
        BillingConfig {
            stripe: None,
            plans: crate::billing::plans::Plans::builtin(),
            grace: DEFAULT_GRACE,
            interval: Duration::from_secs(60),
            usage_sample_interval: Duration::from_secs(300),
            webhook_tolerance: Duration::from_secs(300),
        }
    }
}

/// Who may introspect the management GraphQL schema (`__schema`, `__type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Introspection {
    /// Anyone, signed in or not (the default of `qleet dev`).
    Anonymous,
    /// Callers with a session or an API token (the default of `qleet serve`).
    Authenticated,
    /// Nobody.
    Off,
}

impl Introspection {
    /// Whether a caller, signed in or not, may introspect.
    pub fn allows(self, authenticated: bool) -> bool {
        match self {
            Introspection::Anonymous => true,
            Introspection::Authenticated => authenticated,
            Introspection::Off => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    Process,
    Kubernetes,
}

/// Where control planes run.
#[derive(Debug, Clone)]
pub enum Runtime {
    /// Child processes of this server, on loopback ports.
    Process,
    /// Pods, one namespace per control plane, in the cluster this server runs in.
    Kubernetes {
        image: String,
        gateway_namespace: String,
        gateway_pod_labels: std::collections::BTreeMap<String, String>,
    },
}

pub use qleet_common::telemetry::LogFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Serve,
    Dev,
}

/// Where the management database is.
#[derive(Debug, Clone)]
pub enum Database {
    Url(SecretString),
    /// A private cluster Qleet runs itself under this directory (dev only).
    Embedded(PathBuf),
}

/// One OpenID Connect provider people can sign in with.
#[derive(Debug, Clone, Deserialize)]
pub struct OidcProviderConfig {
    /// Short id used in URLs (`/auth/login/{id}`).
    pub id: String,
    /// Name shown on the sign-in page.
    pub name: String,
    /// Issuer URL; discovery is read from `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretString,
}

/// Everything the management plane needs, resolved and checked once at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    /// Socket address the HTTP server binds.
    pub listen: SocketAddr,
    /// The origin people use; cookies, redirects and the CSRF origin check derive from it.
    pub public_url: Url,
    pub database: Database,
    pub data_dir: PathBuf,
    pub site_dir: PathBuf,
    pub oidc_providers: Vec<OidcProviderConfig>,
    pub session_ttl: Duration,
    pub invitation_ttl: Duration,
    pub trust_proxy_headers: bool,
    /// Rate limits on sign-ins, failed authentications and agent registrations.
    pub rate_limits: crate::limits::RateLimits,
    pub log_format: LogFormat,
    /// Offer the password-less development sign-in. Only `qleet dev` can set this.
    pub dev_sign_in: bool,
    /// Master secret (base64url, 32 bytes).
    pub secret_key: SecretString,
    /// The `qleet-control-plane` binary the process driver starts control planes with.
    pub control_plane_binary: PathBuf,
    /// Plans, Stripe and dunning.
    pub billing: BillingConfig,
    /// Idle time after which a control plane hibernates; `None` never.
    pub hibernate_after: Option<Duration>,
    /// How long a deleted control plane's database is kept.
    pub control_plane_retention: Duration,
    /// How long provisioning may take before the control plane is marked FAILED.
    pub provisioning_timeout: Duration,
    /// Where control planes run.
    pub runtime: Runtime,
    /// Who may introspect the schema at `/graphql`.
    pub introspection: Introspection,
}

/// A configuration value that cannot be used, with a one-line reason.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    pub fn from_serve(args: ServeArgs) -> Result<Self, ConfigError> {
        let mut config = Self::build(
            Mode::Serve,
            args.listen,
            args.public_url,
            Database::Url(parse_database_url(&args.database_url)?),
            args.common,
        )?;
        config.dev_sign_in = false;
        Ok(config)
    }

    pub fn from_dev(args: DevArgs) -> Result<Self, ConfigError> {
        let public_url = match args.public_url {
            Some(url) => url,
            None => Url::parse(&format!("http://{}", args.listen))
                .map_err(|e| ConfigError(format!("QLEET_LISTEN does not make a URL: {e}")))?,
        };
        let database = match args.database_url.as_deref().filter(|s| !s.is_empty()) {
            Some(url) => Database::Url(parse_database_url(url)?),
            None => Database::Embedded(args.common.data_dir.join("postgres")),
        };
        let mut config = Self::build(Mode::Dev, args.listen, public_url, database, args.common)?;
        config.dev_sign_in = true;
        Ok(config)
    }

    fn build(
        mode: Mode,
        listen: SocketAddr,
        public_url: Url,
        database: Database,
        common: CommonArgs,
    ) -> Result<Self, ConfigError> {
        check_public_url(&public_url)?;
        let oidc_providers = match common.oidc_providers.as_deref() {
            None | Some("") => Vec::new(),
            Some(json) => parse_providers(json)?,
        };
        if common.session_ttl_hours == 0 || common.invitation_ttl_hours == 0 {
            return Err(ConfigError("TTLs must be at least one hour".into()));
        }
        let secret_key = match common.secret_key.as_deref().filter(|s| !s.is_empty()) {
            Some(key) => SecretString::from(key.to_owned()),
            None if mode == Mode::Dev => dev_secret_key(&common.data_dir)?,
            None => {
                return Err(ConfigError(
                    "QLEET_SECRET_KEY is required by `qleet serve`".into(),
                ));
            }
        };
        crate::keys::Keys::from_secret(&secret_key)?;
        let control_plane_binary = match common.control_plane_bin {
            Some(path) => path,
            None => sibling_binary(CONTROL_PLANE_BIN)?,
        };
        let runtime = match common.runtime {
            RuntimeKind::Process => Runtime::Process,
            RuntimeKind::Kubernetes if !cfg!(feature = "kubernetes") => {
                return Err(ConfigError(
                    "QLEET_RUNTIME=kubernetes needs a qleet built with `--features kubernetes`"
                        .into(),
                ));
            }
            RuntimeKind::Kubernetes => Runtime::Kubernetes {
                image: common.k8s_image.clone().ok_or_else(|| {
                    ConfigError("QLEET_K8S_IMAGE is required with QLEET_RUNTIME=kubernetes".into())
                })?,
                gateway_namespace: common.k8s_gateway_namespace.clone(),
                gateway_pod_labels: parse_labels(&common.k8s_gateway_pod_labels)?,
            },
        };
        Ok(Config {
            runtime,
            introspection: common.introspection.unwrap_or(match mode {
                Mode::Serve => Introspection::Authenticated,
                Mode::Dev => Introspection::Anonymous,
            }),
            secret_key,
            control_plane_binary,
            billing: BillingConfig::from_args(&common.billing)?,
            hibernate_after: Some(Duration::from_secs(common.hibernate_after_secs))
                .filter(|d| !d.is_zero()),
            control_plane_retention: Duration::from_secs(
                common.control_plane_retention_hours * 3600,
            ),
            provisioning_timeout: Duration::from_secs(common.provisioning_timeout_secs),
            mode,
            listen,
            public_url,
            database,
            data_dir: common.data_dir,
            site_dir: common.site_dir,
            oidc_providers,
            session_ttl: Duration::from_secs(common.session_ttl_hours * 3600),
            invitation_ttl: Duration::from_secs(common.invitation_ttl_hours * 3600),
            trust_proxy_headers: common.trust_proxy_headers,
            rate_limits: crate::limits::RateLimits {
                sign_ins_per_minute: common.rate_sign_ins_per_minute,
                failed_authentications_per_minute: common.rate_failed_authentications_per_minute,
                agent_registrations_per_minute: common.rate_agent_registrations_per_minute,
            },
            log_format: common.log_format.unwrap_or(match mode {
                Mode::Serve => LogFormat::Json,
                Mode::Dev => LogFormat::Pretty,
            }),
            dev_sign_in: false,
        })
    }

    /// Whether cookies must carry `Secure` (everywhere but plain-http loopback).
    pub fn secure_cookies(&self) -> bool {
        self.public_url.scheme() == "https"
    }

    /// `scheme://host[:port]` of the public URL, as browsers send it in `Origin`.
    pub fn public_origin(&self) -> String {
        self.public_url.origin().ascii_serialization()
    }

    /// An absolute URL under the public URL.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.public_origin(), path)
    }
}

/// `k=v,k=v` labels.
fn parse_labels(input: &str) -> Result<std::collections::BTreeMap<String, String>, ConfigError> {
    input
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                ConfigError(format!("QLEET_K8S_GATEWAY_POD_LABELS: {pair:?} is not k=v"))
            })?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// The dev master secret in DATA_DIR/secret.key, created (mode 0600) on first start.
fn dev_secret_key(data_dir: &std::path::Path) -> Result<SecretString, ConfigError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = data_dir.join("secret.key");
    if let Ok(key) = std::fs::read_to_string(&path) {
        return Ok(SecretString::from(key.trim().to_owned()));
    }
    let key = crate::keys::Keys::generate_secret();
    std::fs::create_dir_all(data_dir)
        .and_then(|()| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(key.as_bytes())
        })
        .map_err(|e| ConfigError(format!("cannot write {}: {e}", path.display())))?;
    Ok(SecretString::from(key))
}

/// The tenant control plane's binary name.
pub const CONTROL_PLANE_BIN: &str = "qleet-control-plane";

/// A binary installed next to the running `qleet` (as the release archive, the image and
/// `cargo build` lay them out).
pub fn sibling_binary(name: &str) -> Result<PathBuf, ConfigError> {
    let exe = std::env::current_exe()
        .map_err(|e| ConfigError(format!("cannot find the qleet binary: {e}")))?;
    Ok(exe.with_file_name(name))
}

fn parse_database_url(url: &str) -> Result<SecretString, ConfigError> {
    qleet_common::database_url::parse(url).map_err(ConfigError)
}

fn check_public_url(url: &Url) -> Result<(), ConfigError> {
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => return Err(ConfigError(format!("QLEET_PUBLIC_URL {url} has no host"))),
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(ConfigError(format!(
            "QLEET_PUBLIC_URL {url} must use https (plain http is only allowed on loopback)"
        ))),
        other => Err(ConfigError(format!(
            "QLEET_PUBLIC_URL has unsupported scheme {other}"
        ))),
    }
}

fn parse_providers(json: &str) -> Result<Vec<OidcProviderConfig>, ConfigError> {
    let providers: Vec<OidcProviderConfig> = serde_json::from_str(json)
        .map_err(|e| ConfigError(format!("QLEET_OIDC_PROVIDERS is not valid: {e}")))?;
    let mut seen = std::collections::HashSet::new();
    for p in &providers {
        let id_ok = !p.id.is_empty()
            && p.id.len() <= 32
            && p.id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !id_ok {
            return Err(ConfigError(format!(
                "OIDC provider id {:?} must be 1-32 of a-z, 0-9, -",
                p.id
            )));
        }
        if !seen.insert(p.id.clone()) {
            return Err(ConfigError(format!(
                "OIDC provider id {:?} is listed twice",
                p.id
            )));
        }
        Url::parse(&p.issuer).map_err(|e| {
            ConfigError(format!("OIDC provider {}: issuer is not a URL ({e})", p.id))
        })?;
    }
    Ok(providers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common() -> CommonArgs {
        CommonArgs {
            data_dir: ".qleet".into(),
            site_dir: "target/site".into(),
            oidc_providers: None,
            session_ttl_hours: 1,
            invitation_ttl_hours: 1,
            trust_proxy_headers: false,
            rate_sign_ins_per_minute: 30,
            rate_failed_authentications_per_minute: 20,
            rate_agent_registrations_per_minute: 20,
            log_format: None,
            secret_key: Some(crate::keys::Keys::generate_secret()),
            hibernate_after_secs: 0,
            control_plane_retention_hours: 0,
            provisioning_timeout_secs: 900,
            runtime: RuntimeKind::Process,
            introspection: None,
            control_plane_bin: None,
            k8s_image: None,
            k8s_gateway_namespace: "qleet".into(),
            k8s_gateway_pod_labels: "app=qleet".into(),
            billing: BillingArgs {
                stripe_secret_key: None,
                stripe_webhook_secret: None,
                stripe_api_base: Url::parse("https://api.stripe.com/").expect("url"),
                stripe_prices: None,
                stripe_usage_price: None,
                stripe_meter_event: None,
                plans: None,
                default_plan: "free".into(),
                billing_grace: None,
                billing_grace_hours: None,
                billing_interval_secs: 60,
                usage_sample_secs: 300,
            },
        }
    }

    #[test]
    fn the_grace_period_is_a_duration_and_a_bare_number_is_hours() {
        let h = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(parse_grace("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_grace("36h"), Ok(h(36)));
        assert_eq!(parse_grace("7d"), Ok(h(168)));
        assert_eq!(parse_grace(" 1h30m "), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_grace("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_grace("168"), Ok(h(168)));
        assert_eq!(parse_grace("0.01"), Ok(Duration::from_secs(36)));
        assert_eq!(parse_grace("0"), Ok(Duration::ZERO));
        for bad in [
            "",
            "h",
            "-1",
            "1x",
            "1.5h",
            "NaN",
            "inf",
            "400d",
            "99999999999999999999h",
        ] {
            assert!(parse_grace(bad).is_err(), "{bad:?}");
        }
        let mut args = common().billing;
        assert_eq!(
            BillingConfig::from_args(&args).expect("default").grace,
            h(168)
        );
        args.billing_grace_hours = Some(h(36));
        assert_eq!(
            BillingConfig::from_args(&args).expect("old name").grace,
            h(36)
        );
        args.billing_grace = Some(h(1));
        assert!(BillingConfig::from_args(&args).is_err(), "both names set");
    }

    #[test]
    fn stripe_needs_both_secrets_and_keeps_them_out_of_debug() {
        let mut args = common().billing;
        args.stripe_secret_key = Some("sk_test_hunter2".into());
        let err = BillingConfig::from_args(&args).expect_err("webhook secret missing");
        assert!(
            err.to_string().contains("QLEET_STRIPE_WEBHOOK_SECRET"),
            "{err}"
        );
        args.stripe_webhook_secret = Some("whsec_hunter3".into());
        let config = BillingConfig::from_args(&args).expect("valid");
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("hunter3"),
            "{shown}"
        );
        assert!(
            BillingConfig::from_args(&common().billing)
                .expect("dev")
                .stripe
                .is_none()
        );
    }

    #[test]
    fn serve_refuses_plain_http_outside_loopback() {
        let args = ServeArgs {
            listen: "0.0.0.0:80".parse().expect("addr"),
            public_url: Url::parse("http://qleet.example.com").expect("url"),
            database_url: "postgres://localhost/q".into(),
            common: common(),
        };
        let err = Config::from_serve(args).expect_err("must refuse");
        assert!(err.to_string().contains("must use https"), "{err}");
    }

    #[test]
    fn serve_never_enables_dev_sign_in() {
        let args = ServeArgs {
            listen: "127.0.0.1:80".parse().expect("addr"),
            public_url: Url::parse("http://127.0.0.1:80").expect("url"),
            database_url: "postgres://localhost/q".into(),
            common: common(),
        };
        assert!(!Config::from_serve(args).expect("valid").dev_sign_in);
    }

    #[test]
    fn serve_refuses_introspection_to_anonymous_callers_unless_configured() {
        let serve = |introspection| {
            let mut common = common();
            common.introspection = introspection;
            Config::from_serve(ServeArgs {
                listen: "127.0.0.1:80".parse().expect("addr"),
                public_url: Url::parse("http://127.0.0.1:80").expect("url"),
                database_url: "postgres://localhost/q".into(),
                common,
            })
            .expect("valid")
            .introspection
        };
        assert_eq!(serve(None), Introspection::Authenticated);
        assert_eq!(serve(Some(Introspection::Off)), Introspection::Off);
        assert_eq!(
            serve(Some(Introspection::Anonymous)),
            Introspection::Anonymous
        );
        let dev = Config::from_dev(DevArgs {
            listen: "127.0.0.1:8080".parse().expect("addr"),
            public_url: None,
            database_url: Some("postgres://localhost/q".into()),
            common: common(),
        })
        .expect("valid");
        assert_eq!(dev.introspection, Introspection::Anonymous);
        assert!(!Introspection::Authenticated.allows(false));
        assert!(Introspection::Authenticated.allows(true));
        assert!(!Introspection::Off.allows(true));
        assert!(Introspection::Anonymous.allows(false));
    }

    #[test]
    fn bad_database_url_names_the_variable() {
        let err = parse_database_url("mysql://x").expect_err("must refuse");
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
    }

    #[test]
    fn providers_are_checked_and_secrets_redacted() {
        let json = r#"[{"id":"okta","name":"Okta","issuer":"https://id.example","client_id":"c","client_secret":"hunter2"}]"#;
        let providers = parse_providers(json).expect("valid");
        assert!(!format!("{providers:?}").contains("hunter2"));
        let dup = r#"[{"id":"a","name":"A","issuer":"https://x","client_id":"c","client_secret":"s"},{"id":"a","name":"A","issuer":"https://x","client_id":"c","client_secret":"s"}]"#;
        assert!(parse_providers(dup).is_err());
        assert!(parse_providers("{").is_err());
    }
}
