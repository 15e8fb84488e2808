//! The `process` runtime driver (default, and `qleet dev`): each control plane is a child
//! process `qleet-control-plane` on a loopback port, supervised here: restarted with backoff
//! when it dies, stopped on request (the end of its standard input, then SIGKILL after a grace
//! period), and gone with the management plane, which holds that pipe open while it lives.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret as _;
use tokio::sync::{Mutex, watch};
use uuid::Uuid;

use super::driver::{
    BoxFuture, ControlPlaneSpec, DriverError, Endpoint, RuntimeDriver, RuntimeStatus,
};

/// How long a control plane asked to stop may take to drain before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Settings of the process driver.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    /// The `qleet-control-plane` binary to run.
    pub binary: PathBuf,
    /// Where pid files live, so a restarted management plane can stop orphans of its previous
    /// life before starting control planes again.
    pub run_dir: PathBuf,
}

struct Supervised {
    port: u16,
    /// `false` asks the supervisor to stop the child and exit.
    keep_running: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs control planes as supervised child processes.
pub struct ProcessDriver {
    settings: ProcessSettings,
    running: Mutex<HashMap<Uuid, Supervised>>,
    http: reqwest::Client,
}

impl ProcessDriver {
    pub fn new(settings: ProcessSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        ProcessDriver {
            settings,
            running: Mutex::new(HashMap::new()),
            http,
        }
    }

    /// The child's pid file.
    fn pid_file(&self, id: Uuid) -> PathBuf {
        self.settings.run_dir.join(format!("{id}.pid"))
    }

    /// Stops every child (on shutdown).
    pub async fn stop_all(&self) {
        let ids: Vec<Uuid> = self.running.lock().await.keys().copied().collect();
        futures::future::join_all(ids.into_iter().map(|id| self.stop_inner(id))).await;
    }

    async fn stop_inner(&self, id: Uuid) -> Result<(), DriverError> {
        let supervised = self.running.lock().await.remove(&id);
        if let Some(s) = supervised {
            let _ = s.keep_running.send(false);
            let _ = s.task.await;
        }
        kill_orphan(&self.pid_file(id), id);
        Ok(())
    }
}

/// Kills a leftover process of a previous management-plane life, if the pid file names one
/// that is still a `qleet-control-plane` for this id.
fn kill_orphan(pid_file: &std::path::Path, id: Uuid) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        return;
    };
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let ours = String::from_utf8_lossy(&environ).contains(&format!("QLEET_CP_ID={id}"));
    if ours {
        tracing::info!(control_plane.id = %id, pid, "stopping a control plane left by a previous run");
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
        for _ in 0..100 {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

fn free_port() -> Result<u16, DriverError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| DriverError(format!("no free loopback port: {e}")))
}

/// Resolves once the supervisor is asked to stop (or its driver is gone).
async fn stop_requested(rx: &mut watch::Receiver<bool>) {
    loop {
        let keep = *rx.borrow_and_update();
        if !keep || rx.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps one child running until told to stop: restarts it with exponential backoff (reset
/// after it has run for a minute).
async fn supervise(
    settings: ProcessSettings,
    spec: ControlPlaneSpec,
    port: u16,
    mut keep_running: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let pid_file = settings.run_dir.join(format!("{}.pid", spec.id));
    loop {
        let keep = *keep_running.borrow();
        if !keep {
            return;
        }
        let spawned = tokio::process::Command::new(&settings.binary)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", spec.database_url.expose_secret())
            .env("QLEET_CP_ID", spec.id.to_string())
            .env("QLEET_CP_VERIFYING_KEY", &spec.verifying_key)
            .env("QLEET_CP_LISTEN", format!("127.0.0.1:{port}"))
            .env("QLEET_LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("QLEET_CP_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // The child stops when this pipe ends: when it is closed here to stop it, or when
            // the management plane dies, however it dies.
            .env("QLEET_CP_STOP_ON_STDIN_EOF", "true")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let started = Instant::now();
        match spawned {
            Ok(mut child) => {
                if let Some(pid) = child.id() {
                    let _ = std::fs::write(&pid_file, pid.to_string());
                }
                let lifeline = child.stdin.take();
                tokio::select! {
                    status = child.wait() => {
                        tracing::warn!(control_plane.id = %spec.id, status = ?status.ok(), "control plane exited; restarting");
                    }
                    () = stop_requested(&mut keep_running) => {
                        // A clean stop: the pipe's end, then a grace period, then SIGKILL.
                        drop(lifeline);
                        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                            tracing::warn!(control_plane.id = %spec.id, grace = ?STOP_GRACE, "control plane did not stop in time; killing it");
                            let _ = child.kill().await;
                        }
                        let _ = std::fs::remove_file(&pid_file);
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::error!(control_plane.id = %spec.id, error = %e, "cannot start control plane")
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop_requested(&mut keep_running) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

impl RuntimeDriver for ProcessDriver {
    fn start<'a>(&'a self, spec: &'a ControlPlaneSpec) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let mut running = self.running.lock().await;
            if let Some(s) = running.get(&spec.id) {
                if !s.task.is_finished() {
                    return Ok(());
                }
                running.remove(&spec.id);
            }
            std::fs::create_dir_all(&self.settings.run_dir).map_err(|e| {
                DriverError(format!(
                    "cannot create {}: {e}",
                    self.settings.run_dir.display()
                ))
            })?;
            kill_orphan(&self.pid_file(spec.id), spec.id);
            let port = free_port()?;
            let (tx, rx) = watch::channel(true);
            let task = tokio::spawn(supervise(self.settings.clone(), spec.clone(), port, rx));
            running.insert(
                spec.id,
                Supervised {
                    port,
                    keep_running: tx,
                    task,
                },
            );
            Ok(())
        })
    }

    fn status(&self, id: Uuid) -> BoxFuture<'_, Result<RuntimeStatus, DriverError>> {
        Box::pin(async move {
            let port = match self.running.lock().await.get(&id) {
                Some(s) if !s.task.is_finished() => s.port,
                _ => return Ok(RuntimeStatus::Stopped),
            };
            let base = format!("http://127.0.0.1:{port}");
            match self.http.get(format!("{base}/readyz")).send().await {
                Ok(r) if r.status().is_success() => Ok(RuntimeStatus::Ready(Endpoint(base))),
                _ => Ok(RuntimeStatus::Starting),
            }
        })
    }

    fn stop(&self, id: Uuid) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(self.stop_inner(id))
    }

    fn delete(&self, id: Uuid) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(self.stop_inner(id))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.stop_all())
    }
}
