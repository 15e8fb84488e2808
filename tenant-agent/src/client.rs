//! The agent's side of the agent protocol (`qleet-protocol`): one HTTPS client, outbound only,
//! honouring `HTTPS_PROXY`/`NO_PROXY` (reqwest reads them).

use std::time::Duration;

use qleet_protocol::{
    ErrorBody, Heartbeat, HeartbeatResponse, LeaseRef, LeaseRequest, LeaseResponse, LeasedTask,
    RegisterRequest, RegisterResponse, RenewResponse, ReportRequest, ReportResponse, TaskEvent,
    TaskResult,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use url::Url;
use uuid::Uuid;

/// Why a call to the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The credential is wrong or revoked: nothing will work until someone acts.
    #[error("the control plane refused the agent's credential ({0})")]
    Unauthenticated(String),
    /// The lease is no longer ours; the task was given back or leased to another agent.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// The control plane answered with an error.
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The control plane could not be reached (or answered something unreadable); try again.
    #[error("control plane unreachable: {0}")]
    Transport(String),
}

impl ClientError {
    /// Worth retrying after a pause (network trouble, a restarting or hibernated control plane).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport(_) => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 429 || *status == 404,
            _ => false,
        }
    }

    /// A 404: a wrong URL, or (once registered) a control plane that is briefly away.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status: 404, .. })
    }
}

/// Talks to one control plane as one agent.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    credential: Option<SecretString>,
}

impl Client {
    /// `base` is the control plane's URL (e.g. `https://qleet.example/cp/<id>`).
    pub fn new(base: Url, credential: Option<SecretString>) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .user_agent(format!("qleet-agent/{}", crate::VERSION))
            .connect_timeout(Duration::from_secs(10))
            // Long-polls wait up to 30 s on the server.
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        Ok(Client {
            http,
            base,
            credential,
        })
    }

    pub fn with_credential(mut self, credential: SecretString) -> Client {
        self.credential = Some(credential);
        self
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    fn endpoint(&self, path: &str) -> String {
        format!(
            "{}/agent/v1/{path}",
            self.base.as_str().trim_end_matches('/')
        )
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        let mut req = self.http.post(self.endpoint(path)).json(body);
        if let Some(c) = &self.credential {
            req = req.bearer_auth(c.expose_secret());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::Transport(error_chain(&e)))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Transport(error_chain(&e)))?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| {
                ClientError::Transport(format!("unreadable answer from {path}: {e}"))
            });
        }
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => (
                format!("HTTP_{status}"),
                String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            ),
        };
        Err(match (status, code.as_str()) {
            (401, _) | (_, "UNAUTHENTICATED") => ClientError::Unauthenticated(message),
            (_, "LEASE_LOST") => ClientError::LeaseLost(message),
            _ => ClientError::Api {
                status,
                code,
                message,
            },
        })
    }

    /// Trades a one-time registration token for an agent id and credential.
    pub async fn register(
        &self,
        token: &SecretString,
        name: &str,
    ) -> Result<RegisterResponse, ClientError> {
        self.post(
            "register",
            &RegisterRequest {
                token: token.expose_secret().to_owned(),
                name: name.to_owned(),
                version: crate::VERSION.to_owned(),
            },
        )
        .await
    }

    pub async fn heartbeat(&self, running: u32) -> Result<HeartbeatResponse, ClientError> {
        self.post(
            "heartbeat",
            &Heartbeat {
                version: crate::VERSION.to_owned(),
                running,
            },
        )
        .await
    }

    /// Leases up to `max` tasks; `holding` are the tasks this agent is running now, so any other
    /// lease it still has (an answer lost on the way, a previous process's) comes back at once.
    pub async fn lease(
        &self,
        max: u32,
        wait_seconds: u32,
        lease_seconds: u32,
        holding: Vec<Uuid>,
    ) -> Result<Vec<LeasedTask>, ClientError> {
        let r: LeaseResponse = self
            .post(
                "tasks/lease",
                &LeaseRequest {
                    agent: None,
                    max: Some(max),
                    wait_seconds: Some(wait_seconds),
                    lease_seconds: Some(lease_seconds),
                    holding: Some(holding),
                },
            )
            .await?;
        Ok(r.tasks)
    }

    pub async fn renew(
        &self,
        task: Uuid,
        lease_id: Uuid,
        lease_seconds: u32,
    ) -> Result<RenewResponse, ClientError> {
        self.post(
            &format!("tasks/{task}/renew"),
            &LeaseRef {
                lease_id,
                lease_seconds: Some(lease_seconds),
            },
        )
        .await
    }

    pub async fn release(&self, task: Uuid, lease_id: Uuid) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .post(
                &format!("tasks/{task}/release"),
                &LeaseRef {
                    lease_id,
                    lease_seconds: None,
                },
            )
            .await?;
        Ok(())
    }

    pub async fn report(
        &self,
        task: Uuid,
        lease_id: Uuid,
        result: TaskResult,
        events: Vec<TaskEvent>,
    ) -> Result<ReportResponse, ClientError> {
        self.post(
            &format!("tasks/{task}/report"),
            &ReportRequest {
                lease_id,
                result,
                events,
            },
        )
        .await
    }
}

/// An error with its causes, on one line (reqwest hides the useful part in `source()`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
