//! The agent API: how the customer's agent takes work (lease, with long-polling), keeps it
//! (renew), gives it back (release) and says how it went (report, with outputs or an error).
//! A report for work that was superseded by newer inputs is accepted and ignored; a report
//! under a lease the agent no longer holds is refused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::kinds::Builtin;
use super::reconcile::{Engine, backoff};
use super::store;
use crate::error::ApiError;

pub use qleet_protocol::{
    LeaseRef, LeaseRequest, LeaseResponse, LeasedTask, MAX_TASK_EVENTS, ReportRequest,
    ReportResponse, TaskEvent, TaskResult,
};

struct LeasedRow {
    id: Uuid,
    operation: String,
    object_id: Uuid,
    object_kind: String,
    object_name: String,
    generation: i64,
    payload: Value,
    lease_id: Uuid,
    lease_expires_at: chrono::DateTime<chrono::Utc>,
    attempt: i32,
}

impl From<LeasedRow> for LeasedTask {
    fn from(r: LeasedRow) -> Self {
        LeasedTask {
            id: r.id,
            operation: r.operation,
            object_id: r.object_id,
            object_kind: r.object_kind,
            object_name: r.object_name,
            generation: r.generation,
            payload: r.payload,
            lease_id: r.lease_id,
            lease_expires_at: r.lease_expires_at,
            attempt: r.attempt,
        }
    }
}

fn lease_lost() -> ApiError {
    ApiError::Unavailable {
        code: "LEASE_LOST",
        message: "this lease is no longer held; the task was given back or leased again".into(),
    }
}

/// Leases up to `max` due tasks, waiting up to `wait_seconds` for one to appear.
pub async fn lease(
    engine: &Engine,
    agent: &str,
    req: LeaseRequest,
) -> Result<LeaseResponse, ApiError> {
    if agent.is_empty() || agent.len() > 200 {
        return Err(ApiError::invalid("agent", "must be 1 to 200 characters"));
    }
    let max = req.max.unwrap_or(1).clamp(1, 50);
    let wait = Duration::from_secs(req.wait_seconds.unwrap_or(0).min(30).into());
    let lease_secs = req.lease_seconds.unwrap_or(60).clamp(10, 600);
    if req.holding.as_ref().is_some_and(|h| h.len() > 200) {
        return Err(ApiError::invalid("holding", "at most 200 task ids"));
    }
    // Without `holding` (an older agent), its own live leases stay where they are.
    let resume = req.holding.is_some();
    let holding = req.holding.unwrap_or_default();
    let deadline = tokio::time::Instant::now() + wait;
    engine.task_waiters.fetch_add(1, Ordering::SeqCst);
    let _waiting = count_waiting(&engine.task_waiters);
    loop {
        let notified = engine.task_wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let tasks = take(&engine.pool, agent, max, lease_secs, resume, &holding).await?;
        if !tasks.is_empty() {
            // There may be more: let the next waiting agent look.
            engine.task_wake.notify_one();
            return Ok(LeaseResponse { tasks });
        }
        let now = tokio::time::Instant::now();
        if now >= deadline || engine.stopping.is_cancelled() {
            return Ok(LeaseResponse { tasks });
        }
        let left = deadline - now;
        let wait = async {
            match engine.poll_interval {
                // The benchmark's polling baseline.
                Some(every) => tokio::time::sleep(left.min(every)).await,
                // A notification, or the due-task watcher (`reconcile::watch_due_tasks`).
                None => {
                    let _ = tokio::time::timeout(left, notified).await;
                }
            }
        };
        // A shutdown answers the long-poll now (with nothing) rather than hold the server up.
        tokio::select! {
            () = wait => {}
            () = engine.stopping.cancelled() => {}
        }
    }
}

/// Counts a long-poll out of [`Engine::task_waiters`] however it ends (answered, failed or
/// dropped with its connection).
fn count_waiting(waiters: &AtomicUsize) -> impl Drop + '_ {
    struct Waiting<'a>(&'a AtomicUsize);
    impl Drop for Waiting<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    Waiting(waiters)
}

/// Leases up to `max` tasks: first (when `resume`) those still leased to `agent` that it is not
/// `holding` (their answer was lost, or its previous process died), then due ones in order.
/// Either way the lease is new, so a stale holder's renew or report is refused.
async fn take(
    pool: &PgPool,
    agent: &str,
    max: u32,
    lease_secs: u32,
    resume: bool,
    holding: &[Uuid],
) -> Result<Vec<LeasedTask>, ApiError> {
    let tasks = sqlx::query_as!(
        LeasedRow,
        r#"with due as (
             select id from agent_tasks
             where (state = 'queued' and not_before <= now())
                or (state = 'leased' and lease_expires_at < now())
                or ($4 and state = 'leased' and lease_holder = $2 and id <> all($5))
             order by (state = 'leased' and lease_holder = $2 and lease_expires_at >= now()) desc,
                      created_at
             for update skip locked
             limit $1)
         update agent_tasks t
            set state = 'leased', lease_id = gen_random_uuid(), lease_holder = $2,
                lease_expires_at = now() + make_interval(secs => $3),
                attempts = t.attempts
                    + case when t.state = 'leased' and t.lease_holder = $2
                                and t.lease_expires_at >= now() then 0 else 1 end
           from due, objects o
          where t.id = due.id and o.id = t.object_id
         returning t.id, t.operation, t.object_id, o.kind as object_kind, o.name as object_name,
                   t.generation, t.payload, t.lease_id as "lease_id!",
                   t.lease_expires_at as "lease_expires_at!", t.attempts as attempt"#,
        i64::from(max),
        agent,
        f64::from(lease_secs),
        resume,
        holding,
    )
    .fetch_all(pool)
    .await?;
    Ok(tasks.into_iter().map(LeasedTask::from).collect())
}

/// Extends a lease the caller still holds.
pub async fn renew(
    pool: &PgPool,
    task: Uuid,
    req: LeaseRef,
) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    let secs = req.lease_seconds.unwrap_or(60).clamp(10, 600);
    let until = sqlx::query_scalar!(
        r#"update agent_tasks set lease_expires_at = now() + make_interval(secs => $3)
         where id = $1 and lease_id = $2 and state = 'leased'
         returning lease_expires_at as "lease_expires_at!""#,
        task,
        req.lease_id,
        f64::from(secs),
    )
    .fetch_optional(pool)
    .await?;
    until.ok_or_else(lease_lost)
}

/// Gives a task back unfinished (an agent shutting down), so another agent takes it now.
pub async fn release(pool: &PgPool, task: Uuid, req: LeaseRef) -> Result<(), ApiError> {
    let done = sqlx::query!(
        "update agent_tasks set state = 'queued', lease_id = null, lease_holder = null,
           lease_expires_at = null, not_before = now()
         where id = $1 and lease_id = $2 and state = 'leased'",
        task,
        req.lease_id,
    )
    .execute(pool)
    .await?
    .rows_affected();
    if done == 0 {
        return Err(lease_lost());
    }
    store::notify(pool, store::TASKS_CHANNEL, "").await?;
    Ok(())
}

struct Held {
    state: String,
    lease_id: Option<Uuid>,
    object_id: Uuid,
    operation: String,
    attempts: i32,
    kind: String,
    name: String,
    lease_holder: Option<String>,
    outputs: Value,
}

/// Records a task's result and asks for its object to be reconciled, in one transaction.
pub async fn report(
    pool: &PgPool,
    task: Uuid,
    req: ReportRequest,
) -> Result<ReportResponse, ApiError> {
    let mut tx = pool.begin().await?;
    let held = sqlx::query_as!(
        Held,
        "select t.state, t.lease_id, t.object_id, t.operation, t.attempts, o.kind, o.name,
                t.lease_holder, o.outputs
         from agent_tasks t join objects o on o.id = t.object_id
         where t.id = $1 for update of t",
        task,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(held) = held else {
        return Err(ApiError::NotFound("task".into()));
    };
    if held.state == "superseded" {
        return Ok(ReportResponse {
            accepted: false,
            reason: Some(
                "superseded: the object's inputs changed since this task was queued".into(),
            ),
        });
    }
    if held.lease_id != Some(req.lease_id) {
        return Err(lease_lost());
    }
    if held.state != "leased" {
        // The same report again (a retry after a lost answer): already recorded.
        return Ok(ReportResponse {
            accepted: true,
            reason: Some(format!("already recorded as {}", held.state)),
        });
    }
    let key = super::refs::ObjKey::new(held.kind.clone(), held.name.clone());
    let actor = format!(
        "agent:{}",
        held.lease_holder.as_deref().unwrap_or("unknown")
    );
    match req.result {
        TaskResult::Succeeded { outputs } => {
            if held.operation == "ensure" {
                check_outputs(&held.kind, &outputs)?;
            }
            // What the agent read back, against what the object showed: only the outputs it
            // reports, so what the control plane computes itself is not shown as removed.
            let before: Map<String, Value> = outputs
                .keys()
                .filter_map(|k| Some((k.clone(), held.outputs.get(k)?.clone())))
                .collect();
            let diff = super::apply::diff(
                "outputs",
                Some(&Value::Object(before)),
                Some(&Value::Object(outputs.clone())),
            );
            crate::audit::record(
                &mut tx,
                crate::audit::Record {
                    actor: &actor,
                    action: "agent.report",
                    object: Some((held.object_id, &key)),
                    detail: &format!("`{}` succeeded", held.operation),
                    diff: serde_json::to_value(&diff).unwrap_or_default(),
                },
            )
            .await?;
            sqlx::query!(
                "update agent_tasks set state = 'succeeded', outputs = $2, error = null,
                   completed_at = now()
                 where id = $1",
                task,
                Value::Object(outputs),
            )
            .execute(&mut *tx)
            .await?;
            // Observations come every few minutes: their outcome is recorded as drift events.
            if held.operation != "observe" {
                store::event(
                    &mut tx,
                    held.object_id,
                    false,
                    "TaskSucceeded",
                    &format!("the agent finished `{}`", held.operation),
                )
                .await?;
            }
        }
        TaskResult::Failed {
            code,
            message,
            retryable,
        } => {
            let code: String = code.chars().take(200).collect();
            let message: String = message.chars().take(2000).collect();
            let error = json!({ "code": code, "message": message, "retryable": retryable });
            crate::audit::record(
                &mut tx,
                crate::audit::Record {
                    actor: &actor,
                    action: "agent.report",
                    object: Some((held.object_id, &key)),
                    detail: &format!(
                        "`{}` failed: {code}: {message}{}",
                        held.operation,
                        if retryable { " (will retry)" } else { "" }
                    ),
                    diff: json!([]),
                },
            )
            .await?;
            if retryable {
                let delay = backoff(held.attempts.max(1) as u32);
                sqlx::query!(
                    "update agent_tasks set state = 'queued', error = $2, lease_id = null,
                       lease_holder = null, lease_expires_at = null,
                       not_before = now() + make_interval(secs => $3)
                     where id = $1",
                    task,
                    &error,
                    delay.as_secs_f64(),
                )
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query!(
                    "update agent_tasks set state = 'failed', error = $2, completed_at = now()
                     where id = $1",
                    task,
                    &error,
                )
                .execute(&mut *tx)
                .await?;
            }
            store::event(
                &mut tx,
                held.object_id,
                true,
                "TaskFailed",
                &format!(
                    "{code}: {message}{}",
                    if retryable { " (will retry)" } else { "" }
                ),
            )
            .await?;
        }
    }
    for e in req.events.iter().take(MAX_TASK_EVENTS) {
        let reason: String = e
            .reason
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(64)
            .collect();
        let message: String = e.message.chars().take(1000).collect();
        store::event(
            &mut tx,
            held.object_id,
            e.warning,
            if reason.is_empty() { "Agent" } else { &reason },
            &message,
        )
        .await?;
    }
    store::enqueue(&mut tx, &[held.object_id]).await?;
    store::crash_point("report-before-commit");
    tx.commit().await?;
    Ok(ReportResponse {
        accepted: true,
        reason: None,
    })
}

/// What an agent reports must be the kind's outputs, and secrets must be references.
fn check_outputs(kind: &str, outputs: &Map<String, Value>) -> Result<(), ApiError> {
    let Some(builtin) = Builtin::parse(kind) else {
        return Ok(());
    };
    for (name, value) in outputs {
        let decl = builtin
            .outputs()
            .iter()
            .find(|d| d.name == name && d.from_agent)
            .ok_or_else(|| {
                ApiError::invalid(
                    "outputs",
                    format!("{kind} has no output `{name}` an agent reports"),
                )
            })?;
        let is_ref = value
            .get("secretRef")
            .is_some_and(|r| r.is_object() && !r.as_object().is_some_and(Map::is_empty));
        if decl.secret && !is_ref {
            return Err(ApiError::invalid(
                "outputs",
                format!("`{name}` is a secret: report {{\"secretRef\": {{...}}}}, never the value"),
            ));
        }
        if !decl.secret && value.is_object() {
            return Err(ApiError::invalid(
                "outputs",
                format!("`{name}` must be a plain value"),
            ));
        }
    }
    Ok(())
}
