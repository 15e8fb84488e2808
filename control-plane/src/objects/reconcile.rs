//! The reconciler: workers claim objects from the outbox (`reconcile_queue`) with `FOR UPDATE
//! SKIP LOCKED`, wake on LISTEN/NOTIFY, and drive each object one idempotent step towards its
//! spec inside one transaction that also removes the request. A crash at any point leaves the
//! request in the queue; the next worker repeats the step.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::Rng as _;
use serde_json::{Map, Value, json};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use super::compose;
use super::drift::{self, Drift, DriftPolicy};
use super::kinds::{Builtin, CompositionSpec, parse_spec};
use super::refs::ObjKey;
use super::render;
use super::store::{self, ObjectRow, Phase, select_objects};

/// What the engine's tasks share.
#[derive(Clone)]
pub struct Engine {
    pub pool: PgPool,
    /// This control plane's id (in task payloads and cloud tags).
    pub control_plane: Uuid,
    /// Woken when a reconcile is requested: one idle worker at a time (one that finds work
    /// wakes the next), so a request does not send every worker to the database.
    pub reconcile_wake: Arc<Notify>,
    /// The earliest time a worker found that a request falls due with no notification to
    /// announce it; [`watch_due_reconciles`] sleeps until then.
    pub reconcile_due: Arc<tokio::sync::watch::Sender<Option<tokio::time::Instant>>>,
    /// Woken when agent tasks are queued (long-polling agents wait on it). One waiter is woken
    /// at a time; one that leases something wakes the next, so a task does not stampede every
    /// connected agent at the database.
    pub task_wake: Arc<Notify>,
    /// Long-polls waiting now (the due-task watcher sleeps while there are none).
    pub task_waiters: Arc<AtomicUsize>,
    /// Object status changes, for subscriptions.
    pub changes: broadcast::Sender<Value>,
    /// How long a worker's claim on a queue row lasts before another may take it: short, and
    /// renewed every third of it while the reconcile runs, so a claim outlives its holder by
    /// seconds at most.
    pub claim_for: Duration,
    /// This process, named on the claims it holds (only the holder renews one).
    pub instance: Uuid,
    /// Benchmark baseline: ignore notifications and look for work at this interval.
    pub poll_interval: Option<Duration>,
    /// How often what the agent made is observed for drift.
    pub drift_interval: Duration,
    /// Cancelled when the server starts shutting down: agents' long-polls answer at once.
    pub stopping: tokio_util::sync::CancellationToken,
}

/// How long a reconcile claim lasts unless its holder renews it.
pub const CLAIM: Duration = Duration::from_secs(6);

impl Engine {
    pub fn new(pool: PgPool, control_plane: Uuid) -> Self {
        Engine {
            pool,
            control_plane,
            reconcile_wake: Arc::new(Notify::new()),
            reconcile_due: Arc::new(tokio::sync::watch::Sender::new(None)),
            task_wake: Arc::new(Notify::new()),
            task_waiters: Arc::new(AtomicUsize::new(0)),
            changes: broadcast::channel(1024).0,
            claim_for: CLAIM,
            instance: Uuid::new_v4(),
            poll_interval: None,
            drift_interval: super::drift::DEFAULT_INTERVAL,
            stopping: tokio_util::sync::CancellationToken::new(),
        }
    }
}

impl Engine {
    /// Makes sure a worker looks for reconcile work again `after` from now (or sooner).
    fn reconcile_due_in(&self, after: Duration) {
        // Not sooner than 50 ms: a request that is due but was locked as the look ran (being
        // claimed by another worker, or enqueued by a transaction that notifies at commit) is
        // seen as due now, and is taken by then.
        let at = tokio::time::Instant::now() + after.max(Duration::from_millis(50));
        self.reconcile_due.send_if_modified(|due| {
            let sooner = due.is_none_or(|d| at < d);
            if sooner {
                *due = Some(at);
            }
            sooner
        });
    }
}

/// Follows the NOTIFY channels, waking workers and long-polls and feeding subscriptions.
/// Reconnects on failure; after a reconnect everyone is woken, since notifications may have
/// been missed.
pub async fn listen(engine: Engine) {
    loop {
        match sqlx::postgres::PgListener::connect_with(&engine.pool).await {
            Ok(mut listener) => {
                if let Err(e) = listener
                    .listen_all([
                        store::RECONCILE_CHANNEL,
                        store::TASKS_CHANNEL,
                        store::OBJECTS_CHANNEL,
                    ])
                    .await
                {
                    tracing::warn!(error = %e, "cannot LISTEN");
                } else {
                    // One worker looks (and, finding work, wakes the next): a control plane that
                    // starts with nothing to do opens one connection for it, not one per worker.
                    engine.reconcile_wake.notify_one();
                    engine.task_wake.notify_waiters();
                    loop {
                        match listener.try_recv().await {
                            // The connection was lost and is back (sqlx reconnects at once):
                            // what was notified meanwhile is lost, so everyone looks again.
                            Ok(None) => {
                                tracing::warn!("LISTEN connection lost and made again");
                                engine.reconcile_wake.notify_one();
                                engine.task_wake.notify_waiters();
                            }
                            Ok(Some(n)) => match n.channel() {
                                store::RECONCILE_CHANNEL => engine.reconcile_wake.notify_one(),
                                store::TASKS_CHANNEL => engine.task_wake.notify_one(),
                                _ => {
                                    if let Ok(v) = serde_json::from_str(n.payload()) {
                                        let _ = engine.changes.send(v);
                                    }
                                }
                            },
                            Err(e) => {
                                tracing::warn!(error = %e, "LISTEN connection lost");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect for LISTEN"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Wakes a waiting long-poll when work is due that no notification announces: a lease that
/// expired (its agent vanished) or a retry whose backoff is over. One query a second, and none
/// while no agent is waiting.
pub async fn watch_due_tasks(engine: Engine) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if engine.task_waiters.load(Ordering::SeqCst) == 0 {
            continue;
        }
        let due = sqlx::query_scalar!(
            r#"select exists(select 1 from agent_tasks
                           where (state = 'queued' and not_before <= now())
                              or (state = 'leased' and lease_expires_at < now())) as "due!""#,
        )
        .fetch_one(&engine.pool)
        .await;
        match due {
            Ok(true) => engine.task_wake.notify_one(),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot look for due agent tasks"),
        }
    }
}

/// Sleeps until the earliest time the workers found that a reconcile request falls due with no
/// notification to announce it (a backoff ending, another process's claim lapsing), then wakes
/// one worker; no timer at all while nothing is due. It never queries the database itself.
pub async fn watch_due_reconciles(engine: Engine) {
    let mut due = engine.reconcile_due.subscribe();
    loop {
        let at = *due.borrow_and_update();
        let Some(at) = at else {
            // `reconcile_due` lives as long as `engine`, which this task holds.
            let _ = due.changed().await;
            continue;
        };
        tokio::select! {
            () = tokio::time::sleep_until(at) => {
                // Spent: the worker it wakes finds the next due time, if there is one.
                engine.reconcile_due.send_if_modified(|d| {
                    let spent = *d == Some(at);
                    if spent {
                        *d = None;
                    }
                    spent
                });
                engine.reconcile_wake.notify_one();
            }
            _ = due.changed() => {}
        }
    }
}

/// One reconcile worker; runs until the task is dropped. Idle, it waits for a notification
/// (or [`watch_due_reconciles`]) and nothing else: the query that found no work also told it
/// when the next request falls due.
pub async fn worker(engine: Engine) {
    // The first look waits for the listener (see `listen`), which wakes one worker once it
    // listens, so nothing notified is missed and the workers do not all look at once.
    engine.reconcile_wake.notified().await;
    loop {
        // Waiting from before the look, so a notification that arrives during it is kept.
        let mut wake = Box::pin(engine.reconcile_wake.notified());
        wake.as_mut().enable();
        match claim(&engine).await {
            Ok(Claim::Taken { id, seq }) => {
                drop(wake);
                // There may be more due: one idle worker looks too (and, finding some, wakes the
                // next), so a notification costs one look per worker that finds work plus one.
                engine.reconcile_wake.notify_one();
                // One future: the renewal ends with the work (or with the worker).
                let done = tokio::select! {
                    done = reconcile_claimed(&engine, id, seq) => done,
                    never = renew(&engine, id) => match never {},
                };
                if let Err(e) = done {
                    tracing::warn!(object.id = %id, error = %e, "reconcile failed");
                    record_failure(&engine, id, &e.to_string()).await;
                }
            }
            Ok(Claim::Idle { next_due }) => {
                if let Some(after) = next_due {
                    engine.reconcile_due_in(after);
                }
                wake.await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim reconcile work");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Renews this worker's claim on `id` every third of the claim's length, for as long as it is
/// polled.
async fn renew(engine: &Engine, id: Uuid) -> std::convert::Infallible {
    let mut every = tokio::time::interval(engine.claim_for / 3);
    every.tick().await;
    loop {
        every.tick().await;
        let renewed = sqlx::query!(
            "update reconcile_queue set claimed_until = now() + make_interval(secs => $2)
             where object_id = $1 and claimed_by = $3",
            id,
            engine.claim_for.as_secs_f64(),
            engine.instance,
        )
        .execute(&engine.pool)
        .await;
        if let Err(e) = renewed {
            tracing::warn!(object.id = %id, error = %e, "cannot renew a reconcile claim; retrying");
        }
    }
}

/// Records a failed reconcile (which also releases its claim), retrying while the database is
/// away, so the object moves again as soon as it is back instead of waiting out the claim. Gives
/// up once the claim would have lapsed anyway.
async fn record_failure(engine: &Engine, id: Uuid, error: &str) {
    let until = tokio::time::Instant::now() + engine.claim_for;
    let mut pause = Duration::from_millis(100);
    loop {
        match back_off(&engine.pool, id, error).await {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() + pause < until => {
                tracing::warn!(object.id = %id, error = %e, retry_in = ?pause, "cannot record a failed reconcile yet");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(object.id = %id, error = %e, "cannot record a failed reconcile; its claim will lapse");
                // Nothing announces the lapse: a worker looks again then.
                engine.reconcile_due_in(engine.claim_for);
                return;
            }
        }
    }
}

/// What a look for reconcile work found.
enum Claim {
    /// A request, now claimed by this worker.
    Taken { id: Uuid, seq: i64 },
    /// Nothing due now; the next request not held by this process falls due after `next_due`
    /// (`None`: there is none).
    Idle { next_due: Option<Duration> },
}

/// Takes the next due request, leasing it for `claim_for`; when there is none, says in the same
/// query when the next one falls due. Requests this process holds are left out of that time:
/// the worker holding one looks again when it is done with it (and [`record_failure`] sets a
/// wake-up for a claim it leaves to lapse).
async fn claim(engine: &Engine) -> sqlx::Result<Claim> {
    let row = sqlx::query!(
        r#"with picked as (
             select object_id from reconcile_queue
             where not_before <= now() and (claimed_until is null or claimed_until < now())
             order by not_before
             for update skip locked
             limit 1),
           taken as (
             update reconcile_queue q
                set claimed_until = now() + make_interval(secs => $1), claimed_by = $2
               from picked where q.object_id = picked.object_id
             returning q.object_id, q.seq)
         select taken.object_id as "object_id?", taken.seq as "seq?",
                case when taken.object_id is null then
                  (select extract(epoch from min(greatest(not_before, coalesce(claimed_until, not_before))) - now())::float8
                     from reconcile_queue where claimed_by is distinct from $2)
                end as next_due
           from (select) one left join taken on true"#,
        engine.claim_for.as_secs_f64(),
        engine.instance,
    )
    .fetch_one(&engine.pool)
    .await?;
    Ok(match (row.object_id, row.seq) {
        (Some(id), Some(seq)) => Claim::Taken { id, seq },
        _ => Claim::Idle {
            next_due: row
                .next_due
                .map(|secs| Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::ZERO)),
        },
    })
}

/// Forgets claims left by a previous run of this control plane (one process owns the
/// database; a second one would only repeat idempotent steps).
pub async fn release_claims(pool: &PgPool) -> sqlx::Result<()> {
    sqlx::query!("update reconcile_queue set claimed_until = null, claimed_by = null")
        .execute(pool)
        .await?;
    sqlx::query!(
        "update agent_tasks set state = 'queued', lease_id = null, lease_holder = null, lease_expires_at = null
         where state = 'leased' and lease_expires_at < now()",
    )
    .execute(pool)
    .await?;
    Ok(())
}

async fn back_off(pool: &PgPool, id: Uuid, error: &str) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let attempts = sqlx::query_scalar!(
        "update reconcile_queue set attempts = attempts + 1, claimed_until = null, claimed_by = null,
             last_error = $2
         where object_id = $1 returning attempts",
        id,
        error,
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(attempts) = attempts {
        let delay = backoff(attempts as u32);
        sqlx::query!(
            "update reconcile_queue set not_before = now() + make_interval(secs => $2) where object_id = $1",
            id,
            delay.as_secs_f64(),
        )
        .execute(&mut *tx)
        .await?;
        store::event(&mut tx, id, true, "ReconcileError", error).await?;
    }
    tx.commit().await
}

/// Exponential backoff from 1 s to 5 min, with ±50% jitter so failures do not synchronise.
pub fn backoff(attempts: u32) -> Duration {
    let base = 2f64.powi(attempts.min(9) as i32 - 1).min(300.0);
    let jitter = rand::rng().random_range(0.5..1.5);
    Duration::from_secs_f64((base * jitter).max(0.2))
}

async fn reconcile_claimed(engine: &Engine, id: Uuid, seq: i64) -> anyhow::Result<()> {
    let mut tx = engine.pool.begin().await?;
    let row = select_objects!("from objects o where o.id = $1 for update", id)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(row) = row {
        reconcile(&mut tx, engine, &row).await?;
    }
    store::crash_point("reconcile-before-commit");
    tx.commit().await?;
    store::crash_point("reconcile-after-commit");
    // Done with this request, unless it was renewed meanwhile. Outside the reconcile's
    // transaction, so that transaction locks no queue row but its dependents' (in id order):
    // a crash before this line only means one more, idempotent, reconcile.
    let done = sqlx::query!(
        "delete from reconcile_queue where object_id = $1 and seq = $2",
        id,
        seq,
    )
    .execute(&engine.pool)
    .await?
    .rows_affected();
    if done == 0 {
        // Asked again while we worked: leave the request, claimable at once.
        sqlx::query!(
            "update reconcile_queue set claimed_until = null, claimed_by = null where object_id = $1",
            id,
        )
        .execute(&engine.pool)
        .await?;
    }
    Ok(())
}

/// The new state of an object, written only when it differs.
struct Next {
    phase: Phase,
    message: String,
    outputs: Option<Value>,
    rendered: Option<Option<Value>>,
    observed: bool,
    /// A new drift record (see [`drift`]); `None` keeps the one on record.
    drift: Option<Drift>,
}

impl Next {
    fn new(phase: Phase, message: impl Into<String>) -> Self {
        Next {
            phase,
            message: message.into(),
            outputs: None,
            rendered: None,
            observed: false,
            drift: None,
        }
    }
}

/// Evaluates the newest observation of the object's resource against what its last ensure
/// made (see [`drift`]): records it for `next`, with events when drift appears or goes, and
/// under `Remediate` queues the ensure again, which puts the resource back.
async fn check_drift(
    conn: &mut PgConnection,
    row: &ObjectRow,
    hash: &str,
    payload: &Value,
    ensured_at: Option<chrono::DateTime<chrono::Utc>>,
    next: &mut Next,
) -> anyhow::Result<()> {
    if !drift::observable(&row.kind, &row.spec) {
        return Ok(());
    }
    let record = sqlx::query!(
        "select drift, observe_requested_at from objects where id = $1",
        row.id,
    )
    .fetch_one(&mut *conn)
    .await?;
    let previous: Option<Drift> = record.drift.and_then(|d| serde_json::from_value(d).ok());
    // Someone asked for an observation (`refresh`): PROVISIONING until it is evaluated.
    if let Some(asked) = record.observe_requested_at {
        let pending = sqlx::query!(
            "select state, completed_at from agent_tasks
             where object_id = $1 and operation = 'observe' and input_hash = $2",
            row.id,
            hash,
        )
        .fetch_optional(&mut *conn)
        .await?;
        match pending {
            Some(t) if matches!(t.state.as_str(), "queued" | "leased") => {
                next.phase = Phase::Provisioning;
                next.message = "checking it against the cloud".into();
                next.observed = false;
                return Ok(());
            }
            // Answered (or it cannot be: set aside, failed): the request is done.
            _ => {
                sqlx::query!(
                    "update objects set observe_requested_at = null
                     where id = $1 and observe_requested_at = $2",
                    row.id,
                    asked,
                )
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    // A remediation that finished: the ensure made it as declared and read it back.
    if let (Some(prev), Some(at)) = (&previous, ensured_at)
        && prev.remediating
        && at > prev.observed_at
    {
        store::event(
            &mut *conn,
            row.id,
            false,
            "DriftRemediated",
            &format!("put back as declared (was: {})", prev.describe()),
        )
        .await?;
        next.drift = Some(Drift {
            observed_at: at,
            missing: false,
            differences: Vec::new(),
            remediating: false,
        });
        return Ok(());
    }
    let observation = sqlx::query!(
        "select outputs, completed_at from agent_tasks
         where object_id = $1 and operation = 'observe' and input_hash = $2
           and state = 'succeeded'",
        row.id,
        hash,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some((observed, at)) = observation.and_then(|o| Some((o.outputs?, o.completed_at?))) else {
        return Ok(());
    };
    // Already evaluated, or older than what the last ensure read back.
    if previous.as_ref().is_some_and(|p| p.observed_at >= at) || ensured_at.is_some_and(|e| e > at)
    {
        return Ok(());
    }
    let mut found = drift::compare(&row.kind, payload, &observed, at);
    if found.drifted() {
        store::event(&mut *conn, row.id, true, "DriftDetected", &found.describe()).await?;
        if DriftPolicy::of(&row.spec) == DriftPolicy::Remediate {
            found.remediating = true;
            queue_task(conn, row, "ensure", hash, payload).await?;
            next.phase = Phase::Provisioning;
            next.message = format!("putting back what drifted: {}", found.describe());
            next.observed = false;
        }
    } else if previous.as_ref().is_some_and(Drift::drifted) {
        store::event(
            &mut *conn,
            row.id,
            false,
            "DriftResolved",
            "the cloud matches the spec again",
        )
        .await?;
    }
    next.drift = Some(found);
    Ok(())
}

/// One step for one object, inside the caller's transaction (which holds the row lock).
async fn reconcile(
    conn: &mut PgConnection,
    engine: &Engine,
    row: &ObjectRow,
) -> anyhow::Result<()> {
    if row.deletion_requested_at.is_some() {
        return finalize_deletion(conn, row).await;
    }
    let key = row.key();
    let builtin = Builtin::parse(&row.kind);
    let next = match builtin {
        Some(Builtin::Composition) => {
            let mut n = Next::new(Phase::Ready, "defines a kind");
            if let Ok(def) = parse_spec::<CompositionSpec>(&row.spec) {
                n.message = format!("defines kind {}", def.kind);
            }
            n.observed = true;
            n
        }
        None => instance(conn, row).await?,
        Some(builtin) => managed(conn, engine, row, &key, builtin).await?,
    };
    if next.phase == Phase::Ready {
        mark_seen(conn, row).await?;
    }
    save(conn, row, next).await
}

/// Records, on each of its edges, the outputs of each dependency an object has become Ready
/// with. A replaced dependency waits for every dependent to have seen its new outputs before
/// its old resource is deleted; it is asked to look again when one has.
async fn mark_seen(conn: &mut PgConnection, row: &ObjectRow) -> anyhow::Result<()> {
    let replaced = sqlx::query_scalar!(
        "update object_edges e set seen_outputs = md5(d.outputs::text)
         from objects d
         where e.dependent = $1 and d.id = e.dependency
           and e.seen_outputs is distinct from md5(d.outputs::text)
         returning e.dependency",
        row.id,
    )
    .fetch_all(&mut *conn)
    .await?;
    if replaced.is_empty() {
        return Ok(());
    }
    let waiting = sqlx::query_scalar!(
        r#"select distinct object_id as "id!" from retired_resources
         where object_id = any($1) and deleted_at is null"#,
        &replaced,
    )
    .fetch_all(&mut *conn)
    .await?;
    store::enqueue(&mut *conn, &waiting).await?;
    Ok(())
}

/// After a replacement, what the old incarnation made is deleted once the new one is Ready
/// (the caller's phase) and every dependent has become Ready with the new outputs. Answers
/// what is still pending, for the object's status message.
async fn delete_replaced(
    conn: &mut PgConnection,
    row: &ObjectRow,
    outputs: &Value,
) -> anyhow::Result<Option<String>> {
    let retired = sqlx::query!(
        "select id, payload, input_hash from retired_resources
         where object_id = $1 and deleted_at is null order by retired_at",
        row.id,
    )
    .fetch_all(&mut *conn)
    .await?;
    if retired.is_empty() {
        return Ok(None);
    }
    let behind = sqlx::query_scalar!(
        r#"select o.kind || '/' || o.name as "key!"
         from object_edges e join objects o on o.id = e.dependent
         where e.dependency = $1
           and (e.seen_outputs is distinct from md5($2::jsonb::text)
                or o.status->>'phase' is distinct from 'Ready')
         order by 1"#,
        row.id,
        outputs,
    )
    .fetch_all(&mut *conn)
    .await?;
    if !behind.is_empty() {
        return Ok(Some(format!(
            "ready; the resource it replaces is deleted once {} {} re-rolled onto it",
            behind.join(", "),
            if behind.len() == 1 { "has" } else { "have" }
        )));
    }
    let mut pending = Vec::new();
    for r in retired {
        match cleanup(conn, row, &r.input_hash, &r.payload).await? {
            Cleanup::Done => {
                sqlx::query!(
                    "update retired_resources set deleted_at = now() where id = $1",
                    r.id,
                )
                .execute(&mut *conn)
                .await?;
                store::event(
                    &mut *conn,
                    row.id,
                    false,
                    "ReplacedResourceDeleted",
                    "the agent deleted the resource this object replaced",
                )
                .await?;
            }
            Cleanup::Failed(e) => pending.push(format!("its deletion failed: {e}")),
            Cleanup::Pending => pending.push("the agent is deleting it".to_owned()),
        }
    }
    Ok((!pending.is_empty()).then(|| {
        format!(
            "ready; the resource it replaces is not deleted yet: {}",
            pending.join("; ")
        )
    }))
}

/// Where the agent's deletion of one payload stands.
enum Cleanup {
    Done,
    Pending,
    Failed(String),
}

/// Has the agent delete what `payload` made (queued once; a finished deletion is never queued
/// again) and answers where that stands.
async fn cleanup(
    conn: &mut PgConnection,
    row: &ObjectRow,
    hash: &str,
    payload: &Value,
) -> anyhow::Result<Cleanup> {
    let task = sqlx::query!(
        "select state, error from agent_tasks
         where object_id = $1 and operation = 'delete' and input_hash = $2",
        row.id,
        hash,
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match task {
        None => {
            queue_task(conn, row, "delete", hash, payload).await?;
            store::event(
                &mut *conn,
                row.id,
                false,
                "CleanupQueued",
                "asked the agent to remove what it made",
            )
            .await?;
            Cleanup::Pending
        }
        Some(t) if t.state == "succeeded" => Cleanup::Done,
        Some(t) if t.state == "failed" => Cleanup::Failed(
            t.error
                .as_ref()
                .map(describe_error)
                .unwrap_or_else(|| "the agent reported a failure".into()),
        ),
        Some(_) => Cleanup::Pending,
    })
}

/// A composition instance is what its objects are.
async fn instance(conn: &mut PgConnection, row: &ObjectRow) -> anyhow::Result<Next> {
    let owned = select_objects!(
        "from objects o where o.owner_id = $1 order by o.kind, o.name",
        row.id,
    )
    .fetch_all(&mut *conn)
    .await?;
    let def_spec = sqlx::query_scalar!(
        "select spec from objects where kind = 'Composition' and spec->>'kind' = $1",
        &row.kind,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(def) = def_spec.and_then(|s| parse_spec::<CompositionSpec>(&s).ok()) else {
        return Ok(Next::new(
            Phase::Failed,
            format!("no Composition defines kind {}", row.kind),
        ));
    };
    let failed: Vec<String> = owned
        .iter()
        .filter(|o| o.phase() == Phase::Failed)
        .map(|o| o.key().to_string())
        .collect();
    let pending: Vec<String> = owned
        .iter()
        .filter(|o| o.phase() != Phase::Ready || o.observed_generation < o.generation)
        .map(|o| format!("{} ({:?})", o.key(), o.phase()))
        .collect();
    let mut next = if !failed.is_empty() {
        Next::new(Phase::Failed, format!("failed: {}", failed.join(", ")))
    } else if !pending.is_empty() {
        Next::new(
            Phase::Provisioning,
            format!("waiting for {}", pending.join(", ")),
        )
    } else {
        let mut n = Next::new(Phase::Ready, format!("{} objects ready", owned.len()));
        n.observed = true;
        n
    };
    let outputs_by_key: BTreeMap<ObjKey, Value> =
        owned.iter().map(|o| (o.key(), o.outputs.clone())).collect();
    let params = row.spec.as_object().cloned().unwrap_or_default();
    let lookup = |k: &ObjKey, o: &str| {
        outputs_by_key
            .get(k)
            .and_then(|v| v.get(o))
            .filter(|v| !v.is_null())
            .cloned()
    };
    if next.phase == Phase::Ready {
        match compose::outputs(&def, &row.name, &params, &lookup) {
            Ok(outputs) => next.outputs = Some(Value::Object(outputs)),
            Err(e) => next = Next::new(Phase::Failed, format!("outputs: {e}")),
        }
    }
    Ok(next)
}

struct TaskRow {
    input_hash: String,
    state: String,
    outputs: Option<Value>,
    error: Option<Value>,
    attempts: i32,
    completed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// An object the agent makes real: wait for dependencies, render, queue the task for the
/// current inputs, and take its outputs when it is done.
async fn managed(
    conn: &mut PgConnection,
    engine: &Engine,
    row: &ObjectRow,
    key: &ObjKey,
    builtin: Builtin,
) -> anyhow::Result<Next> {
    let deps = select_objects!(
        "from object_edges e join objects o on o.id = e.dependency
         where e.dependent = $1 order by o.kind, o.name",
        row.id,
    )
    .fetch_all(&mut *conn)
    .await?;
    // A dependency whose latest change is not reconciled yet still shows its old outputs:
    // rendering from them would make the wrong thing (a bucket in the account's old region).
    let waiting: Vec<String> = deps
        .iter()
        .filter(|d| d.phase() != Phase::Ready || d.observed_generation < d.generation)
        .map(|d| {
            if d.phase() == Phase::Ready {
                format!("{} (its change)", d.key())
            } else {
                format!("{} ({:?})", d.key(), d.phase())
            }
        })
        .collect();
    if !waiting.is_empty() {
        return Ok(Next::new(
            Phase::Waiting,
            format!("waiting for {}", waiting.join(", ")),
        ));
    }
    let outputs: BTreeMap<ObjKey, Value> =
        deps.iter().map(|d| (d.key(), d.outputs.clone())).collect();
    let incarnation = sqlx::query_scalar!("select incarnation from objects where id = $1", row.id)
        .fetch_one(&mut *conn)
        .await?;
    let input = render::Input {
        control_plane: engine.control_plane,
        id: row.id,
        key,
        spec: &row.spec,
        outputs: &outputs,
        own_outputs: &row.outputs,
        changed_by: row.changed_by.as_deref(),
        incarnation,
    };
    let desired = match render::desired(builtin, &input) {
        Ok(d) => d,
        Err(e) => {
            let mut n = Next::new(Phase::Failed, e);
            n.observed = true;
            return Ok(n);
        }
    };
    let hash = render::hash(&desired.payload);
    let mut merged = Map::new();
    // Agent outputs from earlier work stay valid until new ones arrive (a re-roll keeps the
    // bucket it already has).
    if let Some(prev) = row.outputs.as_object() {
        for decl in builtin.outputs().iter().filter(|d| d.from_agent) {
            if let Some(v) = prev.get(decl.name) {
                merged.insert(decl.name.to_owned(), v.clone());
            }
        }
    }
    merged.extend(desired.computed.clone());

    let latest = sqlx::query_as!(
        TaskRow,
        "select input_hash, state, outputs, error, attempts, completed_at from agent_tasks
         where object_id = $1 and operation = 'ensure' and state <> 'superseded'
         order by created_at desc limit 1",
        row.id,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let mut next = match latest {
        Some(t) if t.input_hash == hash => match t.state.as_str() {
            "succeeded" => {
                if let Some(reported) = t.outputs.as_ref().and_then(Value::as_object) {
                    for decl in builtin.outputs().iter().filter(|d| d.from_agent) {
                        if let Some(v) = reported.get(decl.name) {
                            merged.insert(decl.name.to_owned(), v.clone());
                        }
                    }
                }
                let mut n = Next::new(Phase::Ready, "ready");
                n.observed = true;
                check_drift(conn, row, &hash, &desired.payload, t.completed_at, &mut n).await?;
                n
            }
            "failed" => {
                let message = t
                    .error
                    .as_ref()
                    .map(describe_error)
                    .unwrap_or_else(|| "the agent reported a failure".into());
                let mut n = Next::new(Phase::Failed, message);
                n.observed = true;
                n
            }
            "leased" => Next::new(
                Phase::Provisioning,
                format!("the agent is working on it (attempt {})", t.attempts),
            ),
            _ => Next::new(
                Phase::Provisioning,
                match &t.error {
                    Some(e) => format!("retrying after: {}", describe_error(e)),
                    None => "queued for the agent".into(),
                },
            ),
        },
        _ => {
            queue_task(conn, row, "ensure", &hash, &desired.payload).await?;
            store::event(
                &mut *conn,
                row.id,
                false,
                "TaskQueued",
                &format!("queued work for the agent (inputs {})", &hash[..12]),
            )
            .await?;
            Next::new(Phase::Provisioning, "queued for the agent")
        }
    };
    let outputs = Value::Object(merged);
    if next.phase == Phase::Ready
        && let Some(note) = delete_replaced(conn, row, &outputs).await?
    {
        next.message = note;
    }
    next.outputs = Some(outputs);
    next.rendered = Some(Some(desired.payload["resource"].clone()));
    Ok(next)
}

fn describe_error(e: &Value) -> String {
    let code = e.get("code").and_then(Value::as_str).unwrap_or("Error");
    let message = e.get("message").and_then(Value::as_str).unwrap_or("");
    format!("{code}: {message}")
}

/// Queues agent work for `hash`, superseding unfinished work for other inputs. Idempotent: a
/// second call with the same inputs changes nothing.
async fn queue_task(
    conn: &mut PgConnection,
    row: &ObjectRow,
    operation: &str,
    hash: &str,
    payload: &Value,
) -> sqlx::Result<()> {
    // New inputs make unfinished work for older ones moot; deletions of what older inputs
    // made (a replaced resource's) stand.
    if operation == "ensure" {
        sqlx::query!(
            "update agent_tasks set state = 'superseded', lease_id = null
             where object_id = $1 and operation = 'ensure' and state in ('queued', 'leased')
               and input_hash <> $2",
            row.id,
            hash,
        )
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query!(
        "insert into agent_tasks (id, object_id, operation, generation, input_hash, payload)
         values ($1, $2, $3, $4, $5, $6)
         on conflict (object_id, operation, input_hash) do update
           set state = 'queued', generation = excluded.generation, not_before = now(),
               lease_id = null, lease_holder = null, lease_expires_at = null, attempts = 0,
               outputs = null, error = null, completed_at = null, created_at = now()
           where agent_tasks.state in ('superseded', 'succeeded', 'failed')",
        Uuid::new_v4(),
        row.id,
        operation,
        row.generation,
        hash,
        payload,
    )
    .execute(&mut *conn)
    .await?;
    store::notify(&mut *conn, store::TASKS_CHANNEL, "").await
}

/// Deletion: after every dependent and owned object is gone, the agent removes what it made;
/// then the row goes, and the objects it used are told (they may be waiting to be deleted).
async fn finalize_deletion(conn: &mut PgConnection, row: &ObjectRow) -> anyhow::Result<()> {
    let dependents = sqlx::query!(
        "select o.kind, o.name from object_edges e join objects o on o.id = e.dependent
         where e.dependency = $1 order by o.kind, o.name",
        row.id,
    )
    .fetch_all(&mut *conn)
    .await?;
    if !dependents.is_empty() {
        let names: Vec<String> = dependents
            .iter()
            .map(|d| format!("{}/{}", d.kind, d.name))
            .collect();
        return save(
            conn,
            row,
            Next::new(
                Phase::Deleting,
                format!("waiting for dependents to go: {}", names.join(", ")),
            ),
        )
        .await;
    }
    let owned = sqlx::query_scalar!(
        r#"select count(*) as "count!" from objects where owner_id = $1"#,
        row.id,
    )
    .fetch_one(&mut *conn)
    .await?;
    if owned > 0 {
        return save(
            conn,
            row,
            Next::new(
                Phase::Deleting,
                format!("waiting for {owned} owned objects to go"),
            ),
        )
        .await;
    }
    let needs_cleanup = Builtin::parse(&row.kind).is_some_and(Builtin::needs_agent);
    if needs_cleanup {
        // Anything an agent ever picked up may exist in the customer's account: the current
        // incarnation's last work, and what replaced incarnations made that is not yet deleted.
        let made = sqlx::query!(
            "select input_hash, payload from agent_tasks
             where object_id = $1 and operation = 'ensure' and (attempts > 0 or state = 'succeeded')
             order by created_at desc limit 1",
            row.id,
        )
        .fetch_optional(&mut *conn)
        .await?;
        let retired = sqlx::query!(
            "select id, input_hash, payload from retired_resources
             where object_id = $1 and deleted_at is null order by retired_at",
            row.id,
        )
        .fetch_all(&mut *conn)
        .await?;
        let mut targets: Vec<(Option<Uuid>, String, Value)> = retired
            .into_iter()
            .map(|r| (Some(r.id), r.input_hash, r.payload))
            .collect();
        if let Some(m) = made
            && !targets.iter().any(|(_, h, _)| *h == m.input_hash)
        {
            targets.push((None, m.input_hash, m.payload));
        }
        if !targets.is_empty() {
            sqlx::query!(
                "update agent_tasks set state = 'superseded', lease_id = null
                 where object_id = $1 and operation = 'ensure' and state in ('queued', 'leased')",
                row.id,
            )
            .execute(&mut *conn)
            .await?;
        }
        let mut failed = Vec::new();
        let mut pending = false;
        for (retired_id, hash, payload) in targets {
            match cleanup(conn, row, &hash, &payload).await? {
                Cleanup::Done => {
                    if let Some(id) = retired_id {
                        sqlx::query!(
                            "update retired_resources set deleted_at = now() where id = $1",
                            id,
                        )
                        .execute(&mut *conn)
                        .await?;
                    }
                }
                Cleanup::Pending => pending = true,
                Cleanup::Failed(e) => failed.push(e),
            }
        }
        if !failed.is_empty() {
            return save(
                conn,
                row,
                Next::new(
                    Phase::Deleting,
                    format!("cleanup failed: {}", failed.join("; ")),
                ),
            )
            .await;
        }
        if pending {
            return save(
                conn,
                row,
                Next::new(Phase::Deleting, "waiting for the agent to clean up"),
            )
            .await;
        }
    }
    // Gone: tell what it used and what owned it.
    let mut tell = sqlx::query_scalar!(
        "select dependency from object_edges where dependent = $1",
        row.id,
    )
    .fetch_all(&mut *conn)
    .await?;
    tell.extend(row.owner_id);
    sqlx::query!("delete from objects where id = $1", row.id)
        .execute(&mut *conn)
        .await?;
    store::enqueue(&mut *conn, &tell).await?;
    store::announce(
        &mut *conn,
        &row.key(),
        &json!({ "phase": "Deleting", "message": "deleted" }),
        row.generation,
        row.observed_generation,
        true,
    )
    .await?;
    Ok(())
}

/// Writes the new state when it differs; a change of phase or outputs is news for the
/// object's dependents and owner, who are asked to reconcile in the same transaction.
async fn save(conn: &mut PgConnection, row: &ObjectRow, next: Next) -> anyhow::Result<()> {
    let status = json!({ "phase": next.phase, "message": next.message });
    let outputs = next.outputs.unwrap_or_else(|| row.outputs.clone());
    let rendered = next.rendered.unwrap_or_else(|| row.rendered.clone());
    let observed = if next.observed {
        row.generation
    } else {
        row.observed_generation
    };
    let conditions = conditions(
        &row.conditions,
        next.phase,
        &next.message,
        next.drift.as_ref(),
    );
    if let Some(d) = &next.drift {
        sqlx::query!(
            "update objects set drift = $2 where id = $1",
            row.id,
            serde_json::to_value(d)?,
        )
        .execute(&mut *conn)
        .await?;
    }
    if status == row.status
        && outputs == row.outputs
        && rendered == row.rendered
        && observed == row.observed_generation
        && conditions == row.conditions
    {
        return Ok(());
    }
    sqlx::query!(
        "update objects set status = $2, outputs = $3, rendered = $4, observed_generation = $5,
           conditions = $6, updated_at = now()
         where id = $1",
        row.id,
        &status,
        &outputs,
        rendered.as_ref(),
        observed,
        &conditions,
    )
    .execute(&mut *conn)
    .await?;
    let phase_changed = next.phase != row.phase();
    let outputs_changed = outputs != row.outputs;
    if phase_changed {
        store::event(
            &mut *conn,
            row.id,
            next.phase == Phase::Failed,
            &format!("{:?}", next.phase),
            &next.message,
        )
        .await?;
    }
    if outputs_changed {
        let names: Vec<&String> = outputs
            .as_object()
            .map(|o| {
                o.iter()
                    .filter(|(k, v)| row.outputs.get(k.as_str()) != Some(*v))
                    .map(|(k, _)| k)
                    .collect()
            })
            .unwrap_or_default();
        if !names.is_empty() {
            store::event(
                &mut *conn,
                row.id,
                false,
                "OutputsChanged",
                &names
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
            .await?;
        }
    }
    if phase_changed || outputs_changed || observed != row.observed_generation {
        let mut tell = sqlx::query_scalar!(
            "select dependent from object_edges where dependency = $1",
            row.id,
        )
        .fetch_all(&mut *conn)
        .await?;
        tell.extend(row.owner_id);
        store::enqueue(&mut *conn, &tell).await?;
    }
    store::announce(
        &mut *conn,
        &row.key(),
        &status,
        row.generation,
        observed,
        false,
    )
    .await?;
    Ok(())
}

/// `Ready` and `DependenciesReady` conditions, and `Drifted` once the cloud was observed,
/// keeping transition times when nothing flipped.
fn conditions(previous: &Value, phase: Phase, message: &str, drift: Option<&Drift>) -> Value {
    let now = chrono::Utc::now();
    let wanted = [
        ("Ready", phase == Phase::Ready, format!("{phase:?}")),
        (
            "DependenciesReady",
            phase != Phase::Waiting,
            if phase == Phase::Waiting {
                "Waiting".to_owned()
            } else {
                "AllReady".to_owned()
            },
        ),
    ];
    let condition = |ty: &str, status: bool, reason: String, message: &str| {
        let before = previous
            .as_array()
            .and_then(|a| a.iter().find(|c| c["type"] == ty));
        let since = match before {
            Some(c) if c["status"] == json!(status) => c["lastTransitionAt"].clone(),
            _ => json!(now),
        };
        json!({
            "type": ty,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionAt": since,
        })
    };
    let mut out: Vec<Value> = wanted
        .into_iter()
        .map(|(ty, status, reason)| {
            let message = if ty == "Ready" || !status {
                message
            } else {
                ""
            };
            condition(ty, status, reason, message)
        })
        .collect();
    // `Drifted`: new from this step's observation, else as it was.
    match drift {
        Some(d) => {
            let (status, reason, text) = drift::condition(d);
            out.push(condition("Drifted", status, reason.to_owned(), &text));
        }
        None => out.extend(
            previous
                .as_array()
                .and_then(|a| a.iter().find(|c| c["type"] == "Drifted"))
                .cloned(),
        ),
    }
    // Only the times may differ when nothing changed: keep the old value then.
    let same = previous.as_array().is_some_and(|p| {
        p.len() == out.len()
            && p.iter().zip(&out).all(|(a, b)| {
                a["type"] == b["type"]
                    && a["status"] == b["status"]
                    && a["reason"] == b["reason"]
                    && a["message"] == b["message"]
            })
    });
    if same {
        previous.clone()
    } else {
        Value::Array(out)
    }
}
