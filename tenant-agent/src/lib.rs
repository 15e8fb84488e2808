//! The Qleet tenant agent: runs in a customer's cloud account, dials out to its control plane
//! (never listens), registers once with a one-time token, leases tasks, assumes the customer's
//! IAM role with the control plane's ExternalId, does the AWS and Kubernetes work idempotently
//! and reports status and non-secret outputs. Secret values stay in the customer's account.

pub mod agent;
pub mod aws;
pub mod client;
pub mod config;
pub mod k8s;
pub mod state;
pub mod task;

use std::future::Future;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::client::Client;
use crate::config::Config;

/// The agent's version, reported to the control plane on every heartbeat.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the agent could not start or stopped: a one-line reason for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("registration failed: {0}")]
    Register(client::ClientError),
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
}

/// Finds the agent's identity: a credential given directly, the saved state (file or Secret),
/// or a registration with the one-time token (whose result is saved there).
pub async fn identity(
    config: &Config,
    store: &state::Store,
) -> Result<(Url, SecretString), StartError> {
    if let Some(credential) = &config.credential {
        let url = config
            .url
            .clone()
            .ok_or_else(|| StartError::Config("--url is needed with --credential".into()))?;
        if !credential
            .expose_secret()
            .starts_with(qleet_protocol::CREDENTIAL_PREFIX)
        {
            tracing::warn!(
                "the credential does not look like an agent credential (qleet_agent_...)"
            );
        }
        return Ok((url, credential.clone()));
    }
    let place = config.state.to_string();
    let flag = match &config.state {
        config::StateLocation::File(_) => "--state-file",
        config::StateLocation::Secret { .. } => "--state-secret",
    };
    if let Some(saved) = store.load().await? {
        let saved_url = config::parse_url(&saved.url).map_err(StartError::Config)?;
        if let Some(url) = &config.url
            && url != &saved_url
        {
            return Err(StartError::Config(format!(
                "{place} belongs to {saved_url}, not {url}; use another {flag} to register elsewhere"
            )));
        }
        if config.token.is_some() {
            tracing::info!(agent = %saved.agent_id, "already registered; the token is not used");
        }
        return Ok((saved_url, saved.credential));
    }
    let url = config.url.clone().ok_or_else(|| {
        StartError::Config(format!(
            "not registered yet (no identity in {place}): pass --url and --token"
        ))
    })?;
    let token = config.token.as_ref().ok_or_else(|| {
        StartError::Config(format!(
            "not registered yet (no identity in {place}): pass --token with a registration token"
        ))
    })?;
    let client = Client::new(url.clone(), None).map_err(StartError::Register)?;
    // A network not up yet or a control plane restarting is worth waiting for (about two
    // minutes); a token that is wrong, used or expired is not.
    let mut backoff = agent::Backoff::new(Duration::from_secs(1), Duration::from_secs(20));
    let mut attempts = 0;
    let registered = loop {
        match client.register(token, &config.name).await {
            Ok(r) => break r,
            Err(e) if e.is_transient() && !e.is_not_found() && attempts < 10 => {
                attempts += 1;
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "registration failed; trying again");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(StartError::Register(e)),
        }
    };
    let saved = state::State {
        url: url.to_string(),
        agent_id: registered.agent_id,
        control_plane: Some(registered.control_plane),
        credential: SecretString::from(registered.credential),
    };
    store.save(&saved).await?;
    tracing::info!(agent = %saved.agent_id, state = %place, "registered");
    Ok((url, saved.credential))
}

/// Opens where `config` says the identity is kept.
pub async fn state_store(config: &Config) -> Result<state::Store, StartError> {
    Ok(match &config.state {
        config::StateLocation::File(path) => state::Store::File(path.clone()),
        config::StateLocation::Secret { namespace, name } => {
            let client = state::secret::client(config.kubeconfig.as_deref()).await?;
            state::Store::secret(client, namespace, name)
        }
    })
}

/// Starts the agent with `config` and runs it until `shutdown` resolves.
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let clusters = k8s::Clusters::new(config.clusters.clone(), config.kubeconfig.as_deref())
        .map_err(StartError::Config)?;
    let store = state_store(&config).await?;
    let (url, credential) = identity(&config, &store).await?;
    let client = Client::new(url, Some(credential)).map_err(StartError::Register)?;
    let ctx = task::Context {
        aws: aws::Aws::load().await,
        clusters,
        helm: config.helm.clone(),
        rollout_wait: config.rollout_wait,
    };
    let settings = agent::Settings {
        concurrency: config.concurrency,
        lease_seconds: config.lease_seconds,
        wait_seconds: config.wait_seconds,
        shutdown_grace: config.shutdown_grace,
    };
    agent::run(client, ctx, settings, shutdown).await?;
    Ok(())
}
