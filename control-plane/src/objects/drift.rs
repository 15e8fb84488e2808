//! Drift: what the agent made is observed in the cloud (every `drift_interval`, and on demand
//! with `refresh`), compared with what Qleet last made it, and any difference is a `Drifted`
//! condition with the fields that differ and an event. Under `driftPolicy: Remediate` (the
//! default) the agent puts it back (a resource deleted behind Qleet's back is made again);
//! under `Report` it is only shown.
//!
//! An observation is an `observe` task for the inputs of the object's last finished `ensure`:
//! the agent reads the resource without changing it and reports `found` and what it read.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::reconcile::Engine;
use super::store::{self, select_objects};

/// The kinds whose resources the agent can observe.
/// (A `KubernetesRuntime` only when it is an EKS cluster Qleet made: see [`observable`].) The
/// Kubernetes-side kinds' observations carry the differences the agent found itself (a
/// server-side apply dry run against the live objects); the others' are compared here with
/// [`expected`].
pub const OBSERVED_KINDS: [&str; 7] = [
    "ObjectStorageBucket",
    "RelationalDatabase",
    "KubernetesRuntime",
    "Workload",
    "Gateway",
    "DomainName",
    "Observability",
];

/// Whether the agent can observe what `kind` with `spec` made: not an `existing` cluster, which
/// Qleet did not make.
pub fn observable(kind: &str, spec: &Value) -> bool {
    OBSERVED_KINDS.contains(&kind) && spec.get("existing").is_none_or(Value::is_null)
}

/// How often each object is observed unless configured otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(600);

/// `spec.driftPolicy`: what a difference found in the cloud leads to.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum DriftPolicy {
    /// Put it back as declared (make it again if it is gone).
    #[default]
    Remediate,
    /// Only show the difference (a `Drifted` condition and an event).
    Report,
}

impl DriftPolicy {
    pub fn is_default(&self) -> bool {
        *self == DriftPolicy::default()
    }

    /// The policy an object's spec asks for.
    pub fn of(spec: &Value) -> DriftPolicy {
        spec.get("driftPolicy")
            .cloned()
            .and_then(|p| serde_json::from_value(p).ok())
            .unwrap_or_default()
    }
}

/// One field that differs: what Qleet made it and what the cloud says now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    pub field: String,
    pub expected: Value,
    pub observed: Value,
}

/// The outcome of comparing one observation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    /// When the observation compared was made.
    pub observed_at: chrono::DateTime<chrono::Utc>,
    /// The resource is gone.
    pub missing: bool,
    pub differences: Vec<Difference>,
    /// A remediation was asked for and has not finished yet.
    #[serde(default)]
    pub remediating: bool,
}

impl Drift {
    pub fn drifted(&self) -> bool {
        self.missing || !self.differences.is_empty()
    }

    /// One line for events and the condition.
    pub fn describe(&self) -> String {
        if self.missing {
            return "the resource is gone from the cloud (deleted outside Qleet)".into();
        }
        if self.differences.is_empty() {
            return "the cloud matches the spec".into();
        }
        let fields: Vec<String> = self
            .differences
            .iter()
            .map(|d| format!("{} is {} (expected {})", d.field, d.observed, d.expected))
            .collect();
        fields.join("; ")
    }
}

/// What the cloud should show for a resource made from `payload` (an ensure's).
pub fn expected(kind: &str, payload: &Value) -> Map<String, Value> {
    let r = &payload["resource"];
    let mut out = Map::new();
    if !matches!(
        kind,
        "ObjectStorageBucket" | "RelationalDatabase" | "KubernetesRuntime"
    ) {
        // Kubernetes objects: the agent compares them itself (see [`compare`]).
        return out;
    }
    out.insert("tags".into(), payload["tags"].clone());
    match kind {
        "ObjectStorageBucket" => {
            let b = &r["bucket"];
            out.insert("region".into(), r["account"]["region"].clone());
            out.insert("versioning".into(), b["versioning"].clone());
            out.insert("blockPublicAccess".into(), b["blockPublicAccess"].clone());
            out.insert("encryption".into(), b["encryption"].clone());
        }
        "RelationalDatabase" => {
            let d = &r["database"];
            out.insert("region".into(), r["account"]["region"].clone());
            for (name, from) in [
                ("engine", "engine"),
                ("version", "version"),
                ("sizeClass", "sizeClass"),
                ("storageGb", "storageGb"),
                ("backupRetentionDays", "backupRetentionDays"),
                ("database", "database"),
                ("username", "username"),
            ] {
                out.insert(name.into(), d[from].clone());
            }
        }
        "KubernetesRuntime" => {
            let e = &r["eks"];
            out.insert("region".into(), r["account"]["region"].clone());
            out.insert("version".into(), e["version"].clone());
            let g = &e["nodeGroup"];
            out.insert(
                "nodeGroup".into(),
                serde_json::json!({
                    "instanceType": g.get("instanceType").filter(|t| !t.is_null()).cloned()
                        .unwrap_or_else(|| "t3.medium".into()),
                    "min": g["min"],
                    "max": g["max"],
                    "desired": g["desired"],
                }),
            );
        }
        _ => {}
    }
    out
}

/// Compares an observation (`{found, ...}`) with what `payload` made.
pub fn compare(
    kind: &str,
    payload: &Value,
    observed: &Value,
    at: chrono::DateTime<chrono::Utc>,
) -> Drift {
    let missing = observed.get("found") == Some(&Value::Bool(false));
    let mut differences = Vec::new();
    // Where the fields are in the kind's spec.
    let prefix = if kind == "KubernetesRuntime" {
        "spec.eks"
    } else {
        "spec"
    };
    // The agent's own comparison (Kubernetes objects): its differences as they are.
    if let Some(found) = observed.get("differences").and_then(Value::as_array) {
        if !missing {
            differences.extend(found.iter().filter_map(|d| {
                Some(Difference {
                    field: d.get("field")?.as_str()?.chars().take(300).collect(),
                    expected: d.get("expected").cloned().unwrap_or(Value::Null),
                    observed: d.get("observed").cloned().unwrap_or(Value::Null),
                })
            }));
        }
        return Drift {
            observed_at: at,
            missing,
            differences,
            remediating: false,
        };
    }
    if !missing {
        for (field, want) in expected(kind, payload) {
            let have = observed.get(&field).cloned().unwrap_or(Value::Null);
            if have != want {
                differences.push(Difference {
                    field: format!("{prefix}.{field}"),
                    expected: want,
                    observed: have,
                });
            }
        }
    }
    Drift {
        observed_at: at,
        missing,
        differences,
        remediating: false,
    }
}

/// Queues an observation of `id`'s resource as its last finished ensure made it. Answers
/// false when there is nothing to observe (no finished ensure, or a kind the agent does not
/// observe). Idempotent: an observation already queued or running is left alone.
pub async fn queue_observe(conn: &mut PgConnection, id: Uuid) -> anyhow::Result<bool> {
    let Some(row) = select_objects!("from objects o where o.id = $1", id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(false);
    };
    if !observable(&row.kind, &row.spec) || row.deletion_requested_at.is_some() {
        return Ok(false);
    }
    let made = sqlx::query!(
        "select input_hash, payload from agent_tasks
         where object_id = $1 and operation = 'ensure' and state = 'succeeded'
         order by completed_at desc limit 1",
        id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(made) = made else {
        return Ok(false);
    };
    sqlx::query!(
        "insert into agent_tasks (id, object_id, operation, generation, input_hash, payload)
         values ($1, $2, 'observe', $3, $4, $5)
         on conflict (object_id, operation, input_hash) do update
           set state = 'queued', generation = excluded.generation, not_before = now(),
               lease_id = null, lease_holder = null, lease_expires_at = null, attempts = 0,
               outputs = null, error = null, completed_at = null, created_at = now(),
               payload = excluded.payload
           where agent_tasks.state in ('superseded', 'succeeded', 'failed')",
        Uuid::new_v4(),
        id,
        row.generation,
        made.input_hash,
        made.payload,
    )
    .execute(&mut *conn)
    .await?;
    store::notify(&mut *conn, store::TASKS_CHANNEL, "").await?;
    Ok(true)
}

/// Observes every Ready object of an observed kind whose last observation is older than
/// `engine.drift_interval`, for as long as the control plane runs. Between rounds it sleeps
/// until the next object falls due (or for the interval, when none is due sooner), waking
/// early when an object becomes Ready, which may make it due at once; it never polls.
pub async fn watch(engine: Engine) {
    let every = engine.drift_interval;
    let mut changes = engine.changes.subscribe();
    loop {
        let looked = tokio::time::Instant::now();
        let next = match observe_due(&engine.pool, every).await {
            Ok(next) => next.min(every),
            Err(e) => {
                tracing::warn!(error = %e, "could not queue drift observations");
                // Again soon, while a database that went away comes back.
                Duration::from_secs(5).min(every)
            }
        };
        let wake = tokio::time::sleep_until(looked + next);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                () = engine.stopping.cancelled() => return,
                () = &mut wake => break,
                change = changes.recv() => match change {
                    Ok(change) if change["phase"] != "Ready" || change["deleted"] == true => continue,
                    // A newly Ready object (or, lagging, perhaps one): look again.
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
        // Never more than one round a second, however often objects change.
        tokio::time::sleep_until(looked + MIN_ROUND).await;
    }
}

/// The shortest time between two rounds of [`watch`].
const MIN_ROUND: Duration = Duration::from_secs(1);

/// Queues the observations that are due; answers how long until the next one falls due (the
/// interval when nothing else is observable now: an object made or observed from now on falls
/// due an interval later at the soonest).
async fn observe_due(pool: &PgPool, every: Duration) -> anyhow::Result<Duration> {
    const BATCH: i64 = 100;
    let candidates = sqlx::query!(
        r#"select o.id, (
             -- An ensure reads the resource back too: it counts as an observation.
             select extract(epoch from max(t.completed_at) + make_interval(secs => $2) - now())::float8
             from agent_tasks t
             where t.object_id = o.id and t.operation in ('ensure', 'observe')) as due_in
         from objects o
         where o.kind = any($1) and o.deletion_requested_at is null
           and o.status->>'phase' = 'Ready'
           and coalesce(o.spec->'existing', 'null'::jsonb) = 'null'::jsonb
           and exists (
             select 1 from agent_tasks t
             where t.object_id = o.id and t.operation = 'ensure' and t.state = 'succeeded')
           -- One being observed now falls due an interval after that observation.
           and not exists (
             select 1 from agent_tasks t
             where t.object_id = o.id and t.operation = 'observe' and t.state in ('queued', 'leased'))
         order by due_in nulls first
         limit $3"#,
        &OBSERVED_KINDS.map(str::to_owned),
        every.as_secs_f64(),
        BATCH,
    )
    .fetch_all(pool)
    .await?;
    let mut next = every;
    let mut queued = 0;
    for c in &candidates {
        match c.due_in {
            Some(secs) if secs > 0.0 => {
                next = next.min(Duration::try_from_secs_f64(secs).unwrap_or(every));
                break;
            }
            _ => {
                let mut tx = pool.begin().await?;
                queue_observe(&mut tx, c.id).await?;
                tx.commit().await?;
                queued += 1;
            }
        }
    }
    if queued == BATCH {
        // More may be due than one batch holds.
        next = Duration::ZERO;
    }
    Ok(next)
}

/// The `Drifted` condition for a drift record (none before the first observation).
pub fn condition(drift: &Drift) -> (bool, &'static str, String) {
    let reason = if drift.remediating {
        "Remediating"
    } else if drift.missing {
        "Missing"
    } else if drift.drifted() {
        "Drifted"
    } else {
        "InSync"
    };
    (drift.drifted(), reason, drift.describe())
}
