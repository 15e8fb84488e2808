//! The seam between the control-plane lifecycle and where control planes run.

use std::future::Future;
use std::pin::Pin;

use secrecy::SecretString;
use uuid::Uuid;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Everything a driver needs to run one tenant's control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneSpec {
    pub id: Uuid,
    pub org_id: Uuid,
    /// URL of the tenant's own database, with its own login role.
    pub database_url: SecretString,
    /// The management plane's public key (base64url Ed25519) the control plane verifies with.
    pub verifying_key: String,
}

/// Where a running control plane answers (base URL, no trailing slash), as the gateway reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint(pub String);

/// What a driver sees of a control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeStatus {
    /// Created, not yet answering its readiness check.
    Starting,
    /// Serving at the endpoint.
    Ready(Endpoint),
    /// Not running (never started, stopped, or hibernated).
    Stopped,
    /// Cannot run, with the reason.
    Failed(String),
}

/// A failure of the runtime itself (API server unreachable, spawn failed, ...).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DriverError(pub String);

/// Runs control planes somewhere. Every method is idempotent: calling it again after a crash
/// at any point converges on the same result.
pub trait RuntimeDriver: Send + Sync + 'static {
    /// Creates or updates what runs the control plane, and starts it.
    fn start<'a>(&'a self, spec: &'a ControlPlaneSpec) -> BoxFuture<'a, Result<(), DriverError>>;
    /// Where it stands now.
    fn status(&self, id: Uuid) -> BoxFuture<'_, Result<RuntimeStatus, DriverError>>;
    /// Resolves where it answers once it is ready; an error if it fails, stops, or is not
    /// ready within `timeout` (saying why, when known). By default asks [`Self::status`]
    /// every 50 ms.
    fn wait_ready(
        &self,
        id: Uuid,
        timeout: std::time::Duration,
    ) -> BoxFuture<'_, Result<Endpoint, DriverError>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                match self.status(id).await? {
                    RuntimeStatus::Ready(endpoint) => return Ok(endpoint),
                    RuntimeStatus::Failed(reason) => {
                        return Err(DriverError(format!(
                            "the control plane failed to start: {reason}"
                        )));
                    }
                    RuntimeStatus::Starting | RuntimeStatus::Stopped => {}
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(DriverError(format!(
                        "the control plane did not become ready within {} s",
                        timeout.as_secs()
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        })
    }
    /// Stops it, keeping its configuration (suspension, hibernation).
    fn stop(&self, id: Uuid) -> BoxFuture<'_, Result<(), DriverError>>;
    /// Removes everything the driver made for it; resolves once it is all gone.
    fn delete(&self, id: Uuid) -> BoxFuture<'_, Result<(), DriverError>>;
    /// Whether control planes run inside this management-plane process (as its children), so
    /// that another instance's are out of its reach and must be found where they run (see
    /// [`super::replicas`]).
    fn is_local(&self) -> bool {
        false
    }
    /// The control planes running here (local drivers).
    fn local_ids(&self) -> BoxFuture<'_, Vec<Uuid>> {
        Box::pin(async { Vec::new() })
    }
    /// Called once when the management plane stops (the process driver stops its children).
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
