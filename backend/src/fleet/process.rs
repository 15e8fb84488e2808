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
    /// What the supervisor last learned of the child: whether it answered its readiness check
    /// since it last started, or why not.
    ready: watch::Receiver<Readiness>,
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

/// The supervisor's view of its child, kept so that asking where a control plane stands is a
/// memory read, not a round trip.
#[derive(Debug, Clone, Default)]
struct Readiness {
    ready: bool,
    /// Why it is not ready, when known (its last words before exiting).
    problem: Option<String>,
}

/// How often a started child is asked whether it is ready, until it is.
const READY_POLL: Duration = Duration::from_millis(5);
/// How much of a child's last log line is kept as the reason it is not ready.
const PROBLEM_CHARS: usize = 400;

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
    ready: watch::Sender<Readiness>,
    http: reqwest::Client,
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
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let started = Instant::now();
        match spawned {
            Ok(mut child) => {
                if let Some(pid) = child.id() {
                    let _ = std::fs::write(&pid_file, pid.to_string());
                }
                let lifeline = child.stdin.take();
                let last_words = child
                    .stderr
                    .take()
                    .map(|stderr| tokio::spawn(relay(stderr)));
                let readyz = format!("http://127.0.0.1:{port}/readyz");
                let answering = async {
                    loop {
                        match http.get(&readyz).send().await {
                            Ok(r) if r.status().is_success() => break,
                            _ => tokio::time::sleep(READY_POLL).await,
                        }
                    }
                    ready.send_replace(Readiness {
                        ready: true,
                        problem: None,
                    });
                    std::future::pending::<std::convert::Infallible>().await
                };
                tokio::select! {
                    status = child.wait() => {
                        let words = match last_words {
                            Some(task) => task.await.ok().flatten(),
                            None => None,
                        };
                        let problem = format!(
                            "the control plane exited ({}){}",
                            status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                            words.map(|w| format!(": {w}")).unwrap_or_default(),
                        );
                        tracing::warn!(control_plane.id = %spec.id, %problem, "control plane exited; restarting");
                        ready.send_replace(Readiness { ready: false, problem: Some(problem) });
                    }
                    never = answering => match never {},
                    () = stop_requested(&mut keep_running) => {
                        // A clean stop: the pipe's end, then a grace period, then SIGKILL.
                        drop(lifeline);
                        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                            tracing::warn!(control_plane.id = %spec.id, grace = ?STOP_GRACE, "control plane did not stop in time; killing it");
                            let _ = child.kill().await;
                        }
                        let _ = std::fs::remove_file(&pid_file);
                        ready.send_replace(Readiness::default());
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::error!(control_plane.id = %spec.id, error = %e, "cannot start control plane");
                let problem = format!("cannot start the control plane: {e}");
                ready.send_replace(Readiness {
                    ready: false,
                    problem: Some(problem),
                });
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

/// Passes a child's log lines on to this process's standard error as they come, and answers
/// the last one (cut short), its last words when it exits.
async fn relay(stderr: tokio::process::ChildStderr) -> Option<String> {
    use std::io::Write as _;
    use tokio::io::AsyncBufReadExt as _;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut last = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let _ = writeln!(std::io::stderr().lock(), "{line}");
        last = Some(line);
    }
    last.map(|line| last_words(&line))
}

/// What a child's log line says, for a person: the message and error of a JSON log line, or
/// the line itself, at most [`PROBLEM_CHARS`] long.
fn last_words(line: &str) -> String {
    let said = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| {
            let fields = v.get("fields")?;
            let message = fields.get("message")?.as_str()?.to_owned();
            Some(match fields.get("error").and_then(|e| e.as_str()) {
                Some(error) => format!("{message}: {error}"),
                None => message,
            })
        })
        .unwrap_or_else(|| line.to_owned());
    said.chars().take(PROBLEM_CHARS).collect()
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
            let (ready_tx, ready) = watch::channel(Readiness::default());
            let task = tokio::spawn(supervise(
                self.settings.clone(),
                spec.clone(),
                port,
                rx,
                ready_tx,
                self.http.clone(),
            ));
            running.insert(
                spec.id,
                Supervised {
                    port,
                    ready,
                    keep_running: tx,
                    task,
                },
            );
            Ok(())
        })
    }

    /// From the supervisor's own state: no round trip.
    fn status(&self, id: Uuid) -> BoxFuture<'_, Result<RuntimeStatus, DriverError>> {
        Box::pin(async move {
            let running = self.running.lock().await;
            let Some(s) = running.get(&id).filter(|s| !s.task.is_finished()) else {
                return Ok(RuntimeStatus::Stopped);
            };
            if s.ready.borrow().ready {
                Ok(RuntimeStatus::Ready(Endpoint(format!(
                    "http://127.0.0.1:{}",
                    s.port
                ))))
            } else {
                Ok(RuntimeStatus::Starting)
            }
        })
    }

    /// Waits on the supervisor's state rather than asking again and again.
    fn wait_ready(
        &self,
        id: Uuid,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Endpoint, DriverError>> {
        Box::pin(async move {
            let mut ready = match self.running.lock().await.get(&id) {
                Some(s) => s.ready.clone(),
                None => return Err(DriverError("the control plane is not running".into())),
            };
            let answered = tokio::time::timeout(timeout, ready.wait_for(|r| r.ready))
                .await
                .map(|r| r.map(drop));
            match answered {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => {
                    return Err(DriverError("the control plane was stopped".into()));
                }
                Err(_) => {
                    let problem = ready.borrow().problem.clone();
                    return Err(DriverError(format!(
                        "the control plane did not become ready within {} s{}",
                        timeout.as_secs(),
                        problem.map(|p| format!("; {p}")).unwrap_or_default()
                    )));
                }
            }
            match self.running.lock().await.get(&id) {
                Some(s) => Ok(Endpoint(format!("http://127.0.0.1:{}", s.port))),
                None => Err(DriverError("the control plane was stopped".into())),
            }
        })
    }

    fn stop(&self, id: Uuid) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(self.stop_inner(id))
    }

    fn delete(&self, id: Uuid) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(self.stop_inner(id))
    }

    fn is_local(&self) -> bool {
        true
    }

    fn local_ids(&self) -> BoxFuture<'_, Vec<Uuid>> {
        Box::pin(async move {
            let running = self.running.lock().await;
            running
                .iter()
                .filter(|(_, s)| !s.task.is_finished())
                .map(|(id, _)| *id)
                .collect()
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.stop_all())
    }
}
