//! The Qleet tenant agent: runs in a customer's cloud account, dials out to its control plane,
//! assumes the customer's IAM role and does the cloud and Kubernetes work the control plane queues.
//!
//! Only the crate exists so far; the protocol and the work arrive with the agent issue.

/// The agent's version, reported to the control plane on every heartbeat.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
