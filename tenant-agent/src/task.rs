//! One task: its payload read into types, the work dispatched by kind and operation, and the
//! result as the protocol's [`TaskResult`].

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::Duration;

use qleet_protocol::{LeasedTask, TaskEvent, TaskResult};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::aws::{self, Account, Actor, Aws};
use crate::k8s::{self, Clusters};

/// Why a task failed, as reported: the provider's code, its message and whether a later try may
/// succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

impl TaskError {
    pub fn permanent(code: &str, message: impl Into<String>) -> TaskError {
        TaskError {
            code: code.to_owned(),
            message: message.into(),
            retryable: false,
        }
    }
    pub fn retryable(code: &str, message: impl Into<String>) -> TaskError {
        TaskError {
            code: code.to_owned(),
            message: message.into(),
            retryable: true,
        }
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Everything a task may use.
#[derive(Clone)]
pub struct Context {
    /// Ambient AWS configuration and the assumed-role session cache.
    pub aws: Aws,
    /// The Kubernetes clusters this agent can reach, by name.
    pub clusters: Clusters,
    /// The `helm` binary that renders charts.
    pub helm: PathBuf,
    /// How long an apply waits for its Deployments to become available before it reports the
    /// rollout as pending (retried later) instead.
    pub rollout_wait: Duration,
}

/// `payload.object`
#[derive(Debug, Clone, Deserialize)]
pub struct ObjectRef {
    pub id: Uuid,
    pub kind: String,
    pub name: String,
}

/// The common envelope of every payload.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    #[serde(default)]
    pub control_plane: Option<Value>,
    pub object: ObjectRef,
    #[serde(default)]
    pub tags: Map<String, Value>,
    #[serde(default)]
    pub resource: Value,
    /// The Qleet user behind the change, set as the session's SourceIdentity when present.
    #[serde(default)]
    pub source_identity: Option<String>,
}

impl Payload {
    /// The tags every resource gets, as strings.
    pub fn tags(&self) -> Vec<(String, String)> {
        self.tags
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect()
    }
}

/// Reads part of the payload strictly into its type; a payload the agent does not understand
/// is a permanent failure naming the field.
pub fn part<T: DeserializeOwned>(value: &Value, what: &str) -> Result<T, TaskError> {
    T::deserialize(value)
        .map_err(|e| TaskError::permanent("InvalidPayload", format!("payload {what}: {e}")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Ensure,
    Delete,
    /// Read what was made, changing nothing (a drift check).
    Observe,
}

tokio::task_local! {
    static EVENTS: RefCell<Vec<TaskEvent>>;
}

/// Notes something seen while doing the current task, for its report (nothing outside
/// [`run_with_events`]).
pub fn record(warning: bool, reason: &str, message: impl Into<String>) {
    let event = TaskEvent {
        warning,
        reason: reason.to_owned(),
        message: message.into(),
    };
    let _ = EVENTS.try_with(|events| events.borrow_mut().push(event));
}

/// Does `task`; answers what to report and the events recorded along the way.
pub async fn run_with_events(ctx: &Context, task: &LeasedTask) -> (TaskResult, Vec<TaskEvent>) {
    EVENTS
        .scope(RefCell::new(Vec::new()), async {
            let result = run(ctx, task).await;
            (result, EVENTS.with(RefCell::take))
        })
        .await
}

fn unobservable(kind: &str) -> TaskError {
    TaskError::permanent(
        "ObserveUnsupported",
        format!("this agent does not observe a {kind} for drift"),
    )
}

/// Does `task` and answers what to report.
pub async fn run(ctx: &Context, task: &LeasedTask) -> TaskResult {
    match execute(ctx, task).await {
        Ok(outputs) => TaskResult::Succeeded { outputs },
        Err(e) => TaskResult::Failed {
            code: e.code,
            message: e.message,
            retryable: e.retryable,
        },
    }
}

async fn execute(ctx: &Context, task: &LeasedTask) -> Result<Map<String, Value>, TaskError> {
    let op = match task.operation.as_str() {
        "ensure" => Operation::Ensure,
        "delete" => Operation::Delete,
        "observe" => Operation::Observe,
        other => {
            return Err(TaskError::permanent(
                "UnknownOperation",
                format!("this agent does not know the operation `{other}`"),
            ));
        }
    };
    let payload: Payload = part(&task.payload, "")?;
    if payload.object.id != task.object_id {
        return Err(TaskError::permanent(
            "InvalidPayload",
            "the payload names another object than the task",
        ));
    }
    let actor = Actor {
        task: task.id,
        control_plane: match &payload.control_plane {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        },
        object_id: payload.object.id,
        object: format!("{}/{}", payload.object.kind, payload.object.name),
        source_identity: payload.source_identity.clone(),
    };
    let r = &payload.resource;
    let account = || -> Result<Account, TaskError> { part(&r["account"], "resource.account") };
    match task.object_kind.as_str() {
        "AwsAccount" => {
            if op == Operation::Ensure {
                // Proves the trust policy and the ExternalId; nothing to create.
                ctx.aws.session(&account()?, &actor).await?;
            }
            Ok(Map::new())
        }
        "ObjectStorageBucket" => {
            let account = account()?;
            let spec: aws::s3::BucketSpec = part(&r["bucket"], "resource.bucket")?;
            let cfg = ctx.aws.session(&account, &actor).await?;
            let s3 = aws::s3::S3::new(&cfg, ctx.aws.endpoint_override());
            match op {
                Operation::Ensure => s3.ensure(&spec, &payload, &account.region).await,
                Operation::Delete => s3.delete(&spec.name, &payload).await.map(|()| Map::new()),
                Operation::Observe => s3.observe(&spec, &payload).await,
            }
        }
        "RelationalDatabase" => {
            let account = account()?;
            let spec: aws::rds::DatabaseSpec = part(&r["database"], "resource.database")?;
            let cfg = ctx.aws.session(&account, &actor).await?;
            let rds = aws::rds::Rds::new(&cfg);
            match op {
                Operation::Ensure => rds.ensure(&spec, &payload, &account).await,
                Operation::Delete => rds.delete(&spec, &payload).await.map(|()| Map::new()),
                Operation::Observe => rds.observe(&spec, &payload, &account).await,
            }
        }
        "KubernetesRuntime" => {
            if let Some(existing) = r.get("existing").filter(|v| !v.is_null()) {
                let name = existing["cluster"].as_str().unwrap_or_default();
                return match op {
                    Operation::Ensure => ctx.clusters.check(name).await,
                    Operation::Delete => Ok(Map::new()),
                    Operation::Observe => Err(unobservable(&task.object_kind)),
                };
            }
            let account = account()?;
            let spec: aws::eks::EksSpec = part(&r["eks"], "resource.eks")?;
            let cfg = ctx.aws.session(&account, &actor).await?;
            let eks = aws::eks::Eks::new(&cfg);
            match op {
                Operation::Ensure => eks.ensure(&spec, &payload, &account).await,
                Operation::Delete => eks.delete(&spec, &payload).await.map(|()| Map::new()),
                Operation::Observe => eks.observe(&spec, &payload).await,
            }
        }
        "Workload" | "Gateway" | "DomainName" | "Observability" => {
            let spec: k8s::ApplySpec = part(r, "resource")?;
            match op {
                Operation::Ensure => k8s::ensure(ctx, &spec, &payload, &actor).await,
                Operation::Delete => k8s::delete(ctx, &spec, &payload, &actor)
                    .await
                    .map(|()| Map::new()),
                Operation::Observe => k8s::observe(ctx, &spec, &payload, &actor).await,
            }
        }
        other => Err(TaskError::permanent(
            "UnknownKind",
            format!("this agent does not know how to handle `{other}`"),
        )),
    }
}
