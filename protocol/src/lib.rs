//! What Qleet's planes and the tenant agent say to each other: the organisation [`Role`] both
//! planes check, the management plane's signed request tokens (`internal_token`, feature
//! `internal-token`), and the agent protocol's wire types: what the tenant agent and its
//! control plane say to each other over HTTPS (JSON, camelCase), through the management gateway at
//! `/cp/{control-plane}/agent/v1/...`.
//!
//! | call | request | answer |
//! | --- | --- | --- |
//! | `POST register` | [`RegisterRequest`] (one-time token) | [`RegisterResponse`] (agent id + credential) |
//! | `POST heartbeat` | [`Heartbeat`] | [`HeartbeatResponse`] |
//! | `POST tasks/lease` | [`LeaseRequest`] (long-poll) | [`LeaseResponse`] |
//! | `POST tasks/{id}/renew` | [`LeaseRef`] | [`RenewResponse`] |
//! | `POST tasks/{id}/release` | [`LeaseRef`] | `{"released": true}` |
//! | `POST tasks/{id}/report` | [`ReportRequest`] | [`ReportResponse`] |
//!
//! Errors answer `{"error": {"code": "...", "message": "..."}}` with a 4xx/5xx status; codes
//! include `UNAUTHENTICATED` (bad or revoked credential), `LEASE_LOST`, `INVALID_INPUT`.

#[cfg(feature = "internal-token")]
pub mod internal_token;
mod role;

pub use role::{Role, UnknownRole};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The prefix of every agent credential (`qleet_agent_<agent id>_<secret>`), so the gateway
/// and log scrubbers can tell one apart from other tokens.
pub const CREDENTIAL_PREFIX: &str = "qleet_agent_";
/// The prefix of one-time registration tokens.
pub const REGISTRATION_PREFIX: &str = "qleet_reg_";

/// `POST register`: trade a one-time registration token for an identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegisterRequest {
    pub token: String,
    /// A name for the agent, shown in the UI (e.g. the host or pod name).
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterResponse {
    pub agent_id: Uuid,
    /// Shown once; the control plane keeps only its hash. Send as `Authorization: Bearer`.
    pub credential: String,
    pub control_plane: Uuid,
}

/// `POST heartbeat`: the agent is alive (every few seconds).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Heartbeat {
    pub version: String,
    /// Tasks it is working on now.
    #[serde(default)]
    pub running: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    /// Send the next heartbeat within this many seconds.
    pub interval_seconds: u32,
}

/// `POST tasks/lease`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LeaseRequest {
    /// Who is asking; ignored for registered agents (their id is used).
    #[serde(default)]
    pub agent: Option<String>,
    /// At most this many tasks (1 to 50; default 1).
    #[serde(default)]
    pub max: Option<u32>,
    /// Wait up to this long for work when there is none (0 to 30 s; default 0).
    #[serde(default)]
    pub wait_seconds: Option<u32>,
    /// How long the lease lasts unless renewed (10 to 600 s; default 60).
    #[serde(default)]
    pub lease_seconds: Option<u32>,
    /// The tasks this agent is working on now (at most 200). When given, any other task still
    /// leased to this agent (an answer that never arrived, or a lease held by the agent's previous
    /// process) is handed back first, under a new lease, instead of waiting for it to expire. An
    /// agent's identity is one process: a second process with the same credential would take the
    /// first one's leases.
    #[serde(default)]
    pub holding: Option<Vec<Uuid>>,
}

/// A task handed to an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeasedTask {
    pub id: Uuid,
    /// `ensure` (make the resource match the payload) or `delete` (remove what was made).
    pub operation: String,
    pub object_id: Uuid,
    pub object_kind: String,
    pub object_name: String,
    pub generation: i64,
    /// What to do: `{controlPlane, object: {id, kind, name}, tags, resource: {...}}`.
    pub payload: Value,
    pub lease_id: Uuid,
    pub lease_expires_at: chrono::DateTime<chrono::Utc>,
    /// 1 for the first try.
    pub attempt: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseResponse {
    pub tasks: Vec<LeasedTask>,
}

/// `POST tasks/{id}/renew` and `tasks/{id}/release`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LeaseRef {
    pub lease_id: Uuid,
    #[serde(default)]
    pub lease_seconds: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewResponse {
    pub lease_expires_at: chrono::DateTime<chrono::Utc>,
}

/// `POST tasks/{id}/report`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReportRequest {
    pub lease_id: Uuid,
    pub result: TaskResult,
    /// What the agent saw along the way (a rollout's progress, the cluster's warnings), kept
    /// among the object's events. The control plane keeps the first [`MAX_TASK_EVENTS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<TaskEvent>,
}

/// At most this many events of one report are kept.
pub const MAX_TASK_EVENTS: usize = 20;

/// One thing the agent saw while doing a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaskEvent {
    /// A warning (something is wrong) rather than progress.
    #[serde(default)]
    pub warning: bool,
    /// A short CamelCase reason, e.g. `RolloutComplete` or the cluster's `BackOff`.
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TaskResult {
    Succeeded {
        /// The kind's outputs; a secret is `{"secretRef": {...}}`, never its value.
        #[serde(default)]
        outputs: Map<String, Value>,
    },
    Failed {
        /// The provider's error code, e.g. `AccessDenied`.
        code: String,
        message: String,
        /// Worth trying again later (throttling, a transient outage).
        #[serde(default)]
        retryable: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportResponse {
    pub accepted: bool,
    /// Why a report was not used (e.g. newer inputs superseded the task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The error body every failed call answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_use_the_documented_shape() {
        let r: ReportRequest = serde_json::from_str(
            r#"{"leaseId":"00000000-0000-0000-0000-000000000000","result":{"failed":{"code":"AccessDenied","message":"no","retryable":false}}}"#,
        )
        .expect("parse");
        assert!(matches!(r.result, TaskResult::Failed { ref code, .. } if code == "AccessDenied"));
        let ok = serde_json::to_value(TaskResult::Succeeded {
            outputs: Map::new(),
        })
        .expect("json");
        assert_eq!(ok, serde_json::json!({"succeeded": {"outputs": {}}}));
    }
}
