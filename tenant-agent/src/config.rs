//! The agent's configuration: one typed struct read once from flags and environment at start.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use secrecy::SecretString;
use url::Url;

/// `qleet-agent`: registers once with a one-time token, then dials out to its control plane,
/// leases tasks and does them in this cloud account.
#[derive(Parser, Debug)]
#[command(name = "qleet-agent", version, about)]
pub struct Cli {
    /// The control plane's agent URL, e.g. `https://qleet.example/cp/<control-plane-id>`.
    #[arg(long, env = "QLEET_AGENT_URL")]
    pub url: Option<String>,
    /// A one-time registration token (`qleet_reg_...`); needed only for the first run.
    #[arg(long, env = "QLEET_AGENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// An agent credential given directly (e.g. from a Kubernetes Secret) instead of a state
    /// file; no registration happens then.
    #[arg(long, env = "QLEET_AGENT_CREDENTIAL", hide_env_values = true)]
    pub credential: Option<String>,
    /// Where the agent keeps its identity (created with mode 0600) [default: ./qleet-agent.json].
    #[arg(long, env = "QLEET_AGENT_STATE_FILE")]
    pub state_file: Option<PathBuf>,
    /// Keep the identity in this Kubernetes Secret instead of a state file (`NAMESPACE/NAME`;
    /// the agent creates it after registering). The API server is the one of the pod the agent
    /// runs in (in-cluster service account), else the current context of --kubeconfig
    /// (KUBECONFIG). Not together with --state-file.
    #[arg(long, env = "QLEET_AGENT_STATE_SECRET", value_name = "NAMESPACE/NAME")]
    pub state_secret: Option<String>,
    /// A name shown in the UI (default: the host name).
    #[arg(long, env = "QLEET_AGENT_NAME")]
    pub name: Option<String>,
    /// How many tasks run at once.
    #[arg(long, env = "QLEET_AGENT_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u32,
    /// A kubeconfig whose current context is a cluster workloads may be applied to; it is
    /// known by its cluster name in that kubeconfig.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Also reach the cluster this agent runs in (service account), under this name.
    #[arg(long, env = "QLEET_AGENT_IN_CLUSTER")]
    pub in_cluster: Option<String>,
    /// A named cluster: `NAME=PATH-TO-KUBECONFIG` (repeatable).
    #[arg(long = "cluster", value_name = "NAME=KUBECONFIG")]
    pub clusters: Vec<String>,
    /// The `helm` binary used to render charts (`helm template`).
    #[arg(long, env = "QLEET_AGENT_HELM", default_value = "helm")]
    pub helm: PathBuf,
    /// How long a lease lasts before it must be renewed, in seconds.
    #[arg(long, env = "QLEET_AGENT_LEASE_SECONDS", default_value_t = 60)]
    pub lease_seconds: u32,
    /// How long a lease request waits for work, in seconds.
    #[arg(long, env = "QLEET_AGENT_WAIT_SECONDS", default_value_t = 20)]
    pub wait_seconds: u32,
    /// On SIGTERM/ctrl-c, how long running tasks may take to finish before their leases are
    /// given back.
    #[arg(long, env = "QLEET_AGENT_SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    pub shutdown_grace_seconds: u64,
    /// How long an apply waits for its Deployments to become available, in seconds; a rollout
    /// still short then is reported pending and tried again later.
    #[arg(long, env = "QLEET_AGENT_ROLLOUT_WAIT_SECONDS", default_value_t = 30)]
    pub rollout_wait_seconds: u64,
    /// Log as JSON lines instead of pretty text.
    #[arg(long, env = "QLEET_AGENT_LOG_JSON")]
    pub log_json: bool,
}

/// The state file used when neither `--state-file` nor `--state-secret` is given.
pub const DEFAULT_STATE_FILE: &str = "./qleet-agent.json";

/// Where the agent keeps its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateLocation {
    /// A JSON file only its owner may read.
    File(PathBuf),
    /// A Kubernetes Secret, one data key per field.
    Secret { namespace: String, name: String },
}

impl std::fmt::Display for StateLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateLocation::File(path) => write!(f, "{}", path.display()),
            StateLocation::Secret { namespace, name } => write!(f, "Secret {namespace}/{name}"),
        }
    }
}

/// Where a named cluster's API server is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterSource {
    Kubeconfig(PathBuf),
    InCluster,
}

/// The validated configuration the agent runs with.
#[derive(Debug)]
pub struct Config {
    /// Base URL of the control plane's agent API (without `/agent/v1`).
    pub url: Option<Url>,
    pub token: Option<SecretString>,
    pub credential: Option<SecretString>,
    /// Where the identity is kept: `--state-file` or `--state-secret`.
    pub state: StateLocation,
    /// Shown in the UI.
    pub name: String,
    /// Tasks run at once (1 to 64).
    pub concurrency: u32,
    /// The default kubeconfig (its current context's cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Clusters by the name a `KubernetesRuntime` uses for them.
    pub clusters: BTreeMap<String, ClusterSource>,
    pub helm: PathBuf,
    pub lease_seconds: u32,
    pub wait_seconds: u32,
    pub shutdown_grace: Duration,
    pub rollout_wait: Duration,
    pub log_json: bool,
}

impl TryFrom<Cli> for Config {
    type Error = String;

    fn try_from(cli: Cli) -> Result<Self, String> {
        let url = cli.url.as_deref().map(parse_url).transpose()?;
        if !(1..=64).contains(&cli.concurrency) {
            return Err(format!(
                "--concurrency: {} is not between 1 and 64",
                cli.concurrency
            ));
        }
        if !(10..=600).contains(&cli.lease_seconds) {
            return Err("--lease-seconds: must be between 10 and 600".into());
        }
        if cli.rollout_wait_seconds > 600 {
            return Err("--rollout-wait-seconds: must be at most 600".into());
        }
        if cli.wait_seconds > 30 {
            return Err("--wait-seconds: must be at most 30".into());
        }
        let mut clusters = BTreeMap::new();
        for entry in &cli.clusters {
            let (name, path) = entry
                .split_once('=')
                .filter(|(n, p)| !n.is_empty() && !p.is_empty())
                .ok_or_else(|| format!("--cluster: `{entry}` is not NAME=KUBECONFIG"))?;
            let source = if path == "in-cluster" {
                ClusterSource::InCluster
            } else {
                ClusterSource::Kubeconfig(PathBuf::from(path))
            };
            if clusters.insert(name.to_owned(), source).is_some() {
                return Err(format!("--cluster: `{name}` is named twice"));
            }
        }
        if let Some(name) = cli.in_cluster.filter(|n| !n.is_empty())
            && clusters
                .insert(name.clone(), ClusterSource::InCluster)
                .is_some()
        {
            return Err(format!("--in-cluster: `{name}` is already a --cluster"));
        }
        let token = cli.token.filter(|t| !t.is_empty());
        if let Some(t) = &token
            && !t.starts_with(qleet_protocol::REGISTRATION_PREFIX)
        {
            return Err(format!(
                "--token: not a registration token (they start with `{}`)",
                qleet_protocol::REGISTRATION_PREFIX
            ));
        }
        let state = match (cli.state_file, cli.state_secret.filter(|s| !s.is_empty())) {
            (Some(_), Some(_)) => {
                return Err(
                    "--state-file and --state-secret exclude each other: the identity is kept in one place"
                        .into(),
                );
            }
            (_, Some(secret)) => parse_secret_name(&secret)?,
            (Some(path), None) => StateLocation::File(path),
            (None, None) => StateLocation::File(PathBuf::from(DEFAULT_STATE_FILE)),
        };
        let name = cli
            .name
            .filter(|n| !n.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|n| !n.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "qleet-agent".to_owned());
        Ok(Config {
            url,
            token: token.map(SecretString::from),
            credential: cli
                .credential
                .filter(|c| !c.is_empty())
                .map(SecretString::from),
            state,
            name: name.chars().take(200).collect(),
            concurrency: cli.concurrency,
            kubeconfig: cli.kubeconfig.filter(|p| !p.as_os_str().is_empty()),
            clusters,
            helm: cli.helm,
            lease_seconds: cli.lease_seconds,
            wait_seconds: cli.wait_seconds,
            shutdown_grace: Duration::from_secs(cli.shutdown_grace_seconds),
            rollout_wait: Duration::from_secs(cli.rollout_wait_seconds),
            log_json: cli.log_json,
        })
    }
}

/// An `http(s)` base URL without a trailing slash, query or fragment.
pub fn parse_url(text: &str) -> Result<Url, String> {
    let mut url = Url::parse(text.trim()).map_err(|e| format!("--url: `{text}`: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
        return Err(format!("--url: `{text}` is not an http(s) URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("--url: `{text}` must not have a query or fragment"));
    }
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

/// `NAMESPACE/NAME`, both DNS-1123 names as Kubernetes requires.
fn parse_secret_name(text: &str) -> Result<StateLocation, String> {
    let dns = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    match text.split_once('/') {
        Some((ns, name)) if dns(ns, 63) && !ns.contains('.') && dns(name, 253) => {
            Ok(StateLocation::Secret {
                namespace: ns.to_owned(),
                name: name.to_owned(),
            })
        }
        _ => Err(format!(
            "--state-secret: `{text}` is not NAMESPACE/NAME (lower-case Kubernetes names)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Config, String> {
        let mut all = vec!["qleet-agent"];
        all.extend_from_slice(args);
        Config::try_from(Cli::try_parse_from(all).map_err(|e| e.to_string())?)
    }

    #[test]
    fn urls_lose_their_trailing_slash_and_must_be_http() {
        let c = cli(&["--url", "https://qleet.example/cp/abc/"]).expect("config");
        assert_eq!(c.url.expect("url").as_str(), "https://qleet.example/cp/abc");
        assert!(cli(&["--url", "ftp://x/"]).is_err());
        assert!(cli(&["--url", "not a url"]).is_err());
    }

    #[test]
    fn named_clusters_are_parsed_and_duplicates_refused() {
        let c = cli(&[
            "--cluster",
            "prod=/etc/k/prod",
            "--cluster",
            "here=in-cluster",
        ])
        .expect("config");
        assert_eq!(
            c.clusters.get("prod"),
            Some(&ClusterSource::Kubeconfig("/etc/k/prod".into()))
        );
        assert_eq!(c.clusters.get("here"), Some(&ClusterSource::InCluster));
        assert!(cli(&["--cluster", "prod"]).is_err());
        assert!(cli(&["--cluster", "a=x", "--cluster", "a=y"]).is_err());
    }

    #[test]
    fn a_token_must_look_like_a_registration_token_and_concurrency_is_bounded() {
        let err = cli(&["--token", "hunter2"]).expect_err("bad token");
        assert!(err.contains("qleet_reg_"), "{err}");
        assert!(cli(&["--concurrency", "0"]).is_err());
        assert!(cli(&["--token", "qleet_reg_abc", "--concurrency", "8"]).is_ok());
    }

    #[test]
    fn the_state_is_a_file_or_a_secret_never_both() {
        assert_eq!(
            cli(&[]).expect("config").state,
            StateLocation::File(DEFAULT_STATE_FILE.into())
        );
        assert_eq!(
            cli(&["--state-secret", "qleet-agent/agent-state"])
                .expect("config")
                .state,
            StateLocation::Secret {
                namespace: "qleet-agent".into(),
                name: "agent-state".into()
            }
        );
        let err = cli(&["--state-file", "/x.json", "--state-secret", "a/b"]).expect_err("both");
        assert!(err.contains("exclude each other"), "{err}");
        for bad in ["agent-state", "a/", "/b", "A/b", "a/b/c", "a.b/c"] {
            assert!(cli(&["--state-secret", bad]).is_err(), "{bad}");
        }
    }
}
