//! The agent's loop: heartbeats at the interval the control plane asks for, long-polled leases
//! for as many tasks as there are free slots, each task's lease renewed while it runs, results
//! reported (retried until the control plane has them), reconnection with jittered exponential
//! backoff, and a graceful shutdown that finishes running tasks or gives their leases back.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qleet_protocol::{LeasedTask, TaskEvent, TaskResult};
use rand::Rng;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::client::{Client, ClientError};
use crate::task::{self, Context};

/// How the loop behaves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Tasks run at once.
    pub concurrency: u32,
    /// A lease's length; it is renewed every third of it.
    pub lease_seconds: u32,
    /// How long one lease request waits for work.
    pub wait_seconds: u32,
    /// How long running tasks may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
}

/// Why the agent stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "the control plane refused this agent's credential ({0}); it was revoked or is wrong: register again with a new token"
    )]
    Unauthenticated(String),
}

/// Jittered exponential backoff: 0.5 to 1 times `base * 2^n`, at most `max`.
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        exp.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// Runs until `shutdown` resolves (then drains) or the credential is refused.
pub async fn run(
    client: Client,
    ctx: Context,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let (fatal_tx, mut fatal_rx) = watch::channel(None::<String>);
    let slots = Arc::new(Semaphore::new(settings.concurrency as usize));
    // The tasks being worked on: sent with each lease call, so the control plane hands back any
    // other lease still in this agent's name at once, and counted in heartbeats.
    let holding = Arc::new(Mutex::new(HashSet::new()));

    let heartbeat = tokio::spawn(heartbeats(
        client.clone(),
        holding.clone(),
        stop_rx.clone(),
        fatal_tx.clone(),
    ));

    let mut workers = JoinSet::new();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    tokio::pin!(shutdown);
    let mut stopping = false;
    tracing::info!(url = %client.base(), concurrency = settings.concurrency, "agent started");
    while !stopping {
        while workers.try_join_next().is_some() {}
        // Wait for a free slot.
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = &mut shutdown => { stopping = true; continue; }
            _ = fatal_rx.changed() => break,
        };
        let free = 1 + slots.available_permits() as u32;
        let leased = tokio::select! {
            r = client.lease(free, settings.wait_seconds, settings.lease_seconds, held(&holding)) => r,
            () = &mut shutdown => { stopping = true; continue; }
            _ = fatal_rx.changed() => break,
        };
        match leased {
            Ok(tasks) => {
                backoff.reset();
                let mut first = Some(first);
                for t in tasks {
                    let permit = match first.take() {
                        Some(p) => p,
                        None => match slots.clone().try_acquire_owned() {
                            Ok(p) => p,
                            Err(_) => {
                                // Cannot happen (only this loop takes slots); give it back.
                                let _ = client.release(t.id, t.lease_id).await;
                                continue;
                            }
                        },
                    };
                    tracing::info!(task = %t.id, kind = %t.object_kind, name = %t.object_name,
                        operation = %t.operation, attempt = t.attempt, "task leased");
                    let (client, ctx, cancel, lease, holding) = (
                        client.clone(),
                        ctx.clone(),
                        cancel_rx.clone(),
                        settings.lease_seconds,
                        holding.clone(),
                    );
                    let id = t.id;
                    lock(&holding).insert(id);
                    workers.spawn(async move {
                        work(&client, &ctx, t, lease, cancel).await;
                        lock(&holding).remove(&id);
                        drop(permit);
                    });
                }
            }
            Err(ClientError::Unauthenticated(m)) => {
                let _ = fatal_tx.send(Some(m));
                break;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "leasing failed");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = &mut shutdown => stopping = true,
                }
            }
        }
    }

    // Stop leasing, let running tasks finish for a while, then give the rest back.
    let _ = stop_tx.send(true);
    if !workers.is_empty() {
        tracing::info!(running = workers.len(), grace = ?settings.shutdown_grace, "draining");
        let drained = tokio::time::timeout(settings.shutdown_grace, async {
            while workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let _ = cancel_tx.send(true);
            while workers.join_next().await.is_some() {}
        }
    }
    heartbeat.abort();
    let fatal = fatal_rx.borrow().clone();
    match fatal {
        Some(m) => Err(AgentError::Unauthenticated(m)),
        None => {
            tracing::info!("agent stopped");
            Ok(())
        }
    }
}

fn lock(holding: &Mutex<HashSet<uuid::Uuid>>) -> std::sync::MutexGuard<'_, HashSet<uuid::Uuid>> {
    // Only inserts and removes happen under the lock: a poisoned set is still a valid set.
    holding
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn held(holding: &Mutex<HashSet<uuid::Uuid>>) -> Vec<uuid::Uuid> {
    lock(holding).iter().copied().collect()
}

async fn heartbeats(
    client: Client,
    holding: Arc<Mutex<HashSet<uuid::Uuid>>>,
    mut stop: watch::Receiver<bool>,
    fatal: watch::Sender<Option<String>>,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut interval = Duration::from_secs(15);
    let mut connected: Option<bool> = None;
    loop {
        let running = lock(&holding).len() as u32;
        let wait = match client.heartbeat(running).await {
            Ok(r) => {
                if connected != Some(true) {
                    tracing::info!(
                        interval = r.interval_seconds,
                        "connected to the control plane"
                    );
                }
                connected = Some(true);
                backoff.reset();
                interval = Duration::from_secs(u64::from(r.interval_seconds.clamp(1, 300)));
                interval
            }
            Err(ClientError::Unauthenticated(m)) => {
                let _ = fatal.send(Some(m));
                return;
            }
            Err(e) => {
                if connected != Some(false) {
                    tracing::warn!(error = %e, "heartbeat failed; reconnecting with backoff");
                }
                connected = Some(false);
                backoff.next_delay().min(interval)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Runs one task under its lease: renews it, reports the result, or gives it back when the
/// agent is stopping.
async fn work(
    client: &Client,
    ctx: &Context,
    task: LeasedTask,
    lease_seconds: u32,
    mut cancel: watch::Receiver<bool>,
) {
    let (lost_tx, mut lost_rx) = watch::channel(false);
    let renewer = {
        let client = client.clone();
        let (id, lease_id) = (task.id, task.lease_id);
        tokio::spawn(async move {
            let every = Duration::from_secs(u64::from(lease_seconds / 3).max(3));
            let mut wait = every;
            loop {
                tokio::time::sleep(wait).await;
                match client.renew(id, lease_id, lease_seconds).await {
                    Ok(_) => wait = every,
                    Err(ClientError::LeaseLost(_) | ClientError::Unauthenticated(_)) => {
                        let _ = lost_tx.send(true);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(task = %id, error = %e, "renewing the lease failed; trying again");
                        wait = Duration::from_secs(2);
                    }
                }
            }
        })
    };
    let outcome = tokio::select! {
        r = task::run_with_events(ctx, &task) => Some(r),
        _ = lost_rx.changed() => {
            tracing::warn!(task = %task.id, "lease lost; abandoning the task (another agent may have it)");
            None
        }
        _ = cancel.changed() => {
            renewer.abort();
            match client.release(task.id, task.lease_id).await {
                Ok(()) => tracing::info!(task = %task.id, "lease released on shutdown"),
                Err(e) => tracing::warn!(task = %task.id, error = %e, "could not release; the lease will expire"),
            }
            return;
        }
    };
    if let Some((result, events)) = outcome {
        match &result {
            TaskResult::Succeeded { .. } => tracing::info!(task = %task.id, "task succeeded"),
            TaskResult::Failed {
                code,
                message,
                retryable,
            } => {
                tracing::warn!(task = %task.id, code, message, retryable, "task failed")
            }
        }
        report(client, &task, result, events).await;
    }
    renewer.abort();
}

/// Reports until the control plane has the result (the report is idempotent), the lease is
/// gone, or about a lease's length has passed.
async fn report(client: &Client, task: &LeasedTask, result: TaskResult, events: Vec<TaskEvent>) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    for _ in 0..12 {
        match client
            .report(task.id, task.lease_id, result.clone(), events.clone())
            .await
        {
            Ok(r) => {
                if !r.accepted {
                    tracing::info!(task = %task.id, reason = ?r.reason, "report not used");
                }
                return;
            }
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(task = %task.id, error = %e, retry_in = ?delay, "reporting failed");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                tracing::warn!(task = %task.id, error = %e, "report refused");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
