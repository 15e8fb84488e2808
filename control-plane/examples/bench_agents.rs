//! Issue-5 benchmark driver: what the tenant agent costs, and what many agents cost their
//! control plane. Each round starts the real `qleet control-plane` binary (release build) on
//! fresh databases and measures
//!
//! - the release `qleet-agent` binary's size, as built and stripped (once, not per round);
//! - the real `qleet-agent`'s resident memory after idling (long-polling, heartbeating) for
//!   `--idle-secs`;
//! - the task round trip on loopback with a simulated agent (this program, speaking the wire
//!   types of `qleet-protocol`): apply one bucket → its task leased → reported → Ready, against
//!   a `/healthz` round trip and an empty lease measured in the same loop;
//! - `--fleet` (1,000) simulated agents, each long-polling and heartbeating as the real agent
//!   does: the control plane's memory, CPU and database traffic with none and with all of them
//!   connected, and its heartbeat handling rate under `--clients` closed-loop clients, against
//!   `/healthz` under the same load.
//!
//! Prints a Markdown section on stdout; progress goes to stderr. `scripts/bench-agents.sh`
//! builds the release binaries and runs this.

mod bench_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::{StreamExt as _, TryStreamExt as _};
use qleet_protocol::{
    Heartbeat, HeartbeatResponse, LeaseRequest, LeaseResponse, LeasedTask, RegisterRequest,
    RegisterResponse, ReportRequest, ReportResponse, TaskResult,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use bench_support::{
    APPLY, ControlPlane, Doc, Harness, ServerArgs, cpu_seconds, load_average, machine, med, median,
    ms, outputs_for, percentile, proc_status, today,
};

/// What to run, read once from flags or the environment.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// The `qleet-agent` binary (the release build).
    #[arg(
        long,
        env = "QLEET_BENCH_AGENT_BIN",
        default_value = "target/release/qleet-agent"
    )]
    agent_bin: PathBuf,
    /// Rounds; each runs the idle agent, the round trips and the fleet on fresh databases.
    #[arg(long, env = "QLEET_BENCH_ROUNDS", default_value_t = 3)]
    rounds: usize,
    /// How long the real agent idles before its memory is read, in seconds.
    #[arg(long, env = "QLEET_BENCH_IDLE_SECS", default_value_t = 15)]
    idle_secs: u64,
    /// Sequential task round trips per round.
    #[arg(long, env = "QLEET_BENCH_TRIPS", default_value_t = 50)]
    trips: usize,
    /// Simulated agents connected at once.
    #[arg(long, env = "QLEET_BENCH_FLEET", default_value_t = 1000)]
    fleet: usize,
    /// The fleet's long-poll `waitSeconds` (the real agent's default).
    #[arg(long, env = "QLEET_BENCH_WAIT_SECONDS", default_value_t = 20)]
    wait_seconds: u32,
    /// After the fleet connects, wait this long (more than a heartbeat interval) before
    /// measuring, in seconds.
    #[arg(long, env = "QLEET_BENCH_SETTLE_SECS", default_value_t = 15)]
    settle_secs: u64,
    /// How long the fleet's background traffic is watched with nothing else running, in s.
    #[arg(long, env = "QLEET_BENCH_QUIET_SECS", default_value_t = 10)]
    quiet_secs: u64,
    /// Closed-loop clients of the heartbeat and `/healthz` loads.
    #[arg(long, env = "QLEET_BENCH_CLIENTS", default_value_t = 64)]
    clients: usize,
    /// How long each load runs, in seconds.
    #[arg(long, env = "QLEET_BENCH_LOAD_SECS", default_value_t = 10)]
    load_secs: u64,
    /// Task round trips with the fleet connected, per round.
    #[arg(long, env = "QLEET_BENCH_FLEET_TRIPS", default_value_t = 10)]
    fleet_trips: usize,
    /// Loopback port for the control plane under test.
    #[arg(long, env = "QLEET_BENCH_CP_PORT", default_value_t = 18291)]
    port: u16,
}

const ADMIN_TOKEN: &str = "bench-agents-admin-token-0123456789abcdef";
/// How often the driver looks for an object's Ready.
const READY_POLL: Duration = Duration::from_millis(2);
/// Lease length the simulated agents ask for (the real agent's default).
const LEASE_SECONDS: u32 = 60;
/// Registrations and connections made at once while setting up the fleet.
const SETUP_CONCURRENCY: usize = 16;
/// How late PostgreSQL may publish an idle backend's transaction counts (PGSTAT_IDLE_INTERVAL).
const PG_STATS_DELAY: Duration = Duration::from_secs(11);
/// The account every bucket is made on.
const ACCOUNT_YAML: &str = "kind: AwsAccount\nmetadata: {name: main}\nspec: {accountId: \
     \"123456789012\", roleArn: \"arn:aws:iam::123456789012:role/qleet\", defaultRegion: eu-west-1}\n";

fn bucket_yaml(name: &str) -> String {
    format!(
        "kind: ObjectStorageBucket\nmetadata: {{name: {name}}}\nspec: {{account: AwsAccount/main}}\n"
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let load_before = load_average();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()?;
    let h = Harness::new("agents", &args.server, args.port, ADMIN_TOKEN, http).await?;
    let pg_version = h.pg_version().await?;
    let bench = Bench { args: &args, h: &h };
    let sizes = bench.sizes()?;
    eprintln!(
        "qleet-agent: {:.1} MiB, stripped {:.1} MiB",
        mib(sizes.agent.0),
        mib(sizes.agent.1)
    );
    let (mut idle, mut trips, mut fleet) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let cp = h.start(&format!("r{round}_single"), &[]).await?;
        let run = bench.idle_agent(&cp, round).await?;
        eprintln!(
            "round {round}: idle agent VmRSS {:.1} MiB",
            run.rss_kib as f64 / 1024.0
        );
        idle.push(run);
        let run = bench.round_trips(&cp).await?;
        eprintln!(
            "round {round}: round trip apply → Ready median {:.1} ms",
            med(&run, |t| t.total_ms)
        );
        trips.push(run);
        h.stop(cp).await?;

        let run = bench.fleet(round).await?;
        eprintln!(
            "round {round}: {} agents: RSS {:.1} → {:.1} MiB, heartbeats {:.0}/s",
            args.fleet,
            run.none.rss_kib as f64 / 1024.0,
            run.all.rss_kib as f64 / 1024.0,
            run.loads
                .iter()
                .find(|l| l.route == Route::Heartbeat && l.connected > 0)
                .map_or(0.0, Load::rate)
        );
        fleet.push(run);
    }
    if fleet.iter().any(|r| r.errors > 0) {
        eprintln!(
            "fleet requests failed: the control planes' logs are kept in {}",
            h.work.display()
        );
    } else {
        h.finish();
    }
    let load = (load_before, load_average());
    print!(
        "{}",
        markdown(&args, &pg_version, load, &sizes, &idle, &trips, &fleet)
    );
    Ok(())
}

struct Bench<'a> {
    args: &'a Args,
    h: &'a Harness,
}

/// File sizes in bytes: (as built, stripped copy).
struct Sizes {
    agent: (u64, u64),
    qleet: (u64, u64),
}

/// The real agent after idling.
struct IdleRun {
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
    /// CPU time over the idle window.
    cpu_ms: f64,
}

/// One task round trip; client-side times unless named `server_`.
struct Trip {
    /// The apply mutation's round trip.
    apply_ms: f64,
    /// Apply answered → the waiting long-poll answers with the task.
    leased_ms: f64,
    /// The report call's round trip.
    report_ms: f64,
    /// Report answered → the first check that sees the object Ready.
    ready_ms: f64,
    /// Apply sent → Ready seen.
    total_ms: f64,
    /// Baselines measured just before: `GET /healthz`, and a lease that finds nothing
    /// (`waitSeconds: 0`).
    healthz_ms: f64,
    empty_lease_ms: f64,
    /// Server clock: object written → task queued → leased → report recorded → Ready event.
    server: [f64; 4],
}

/// The control plane with nothing else running, over `--quiet-secs`.
#[derive(Default)]
struct Quiet {
    rss_kib: u64,
    cpu_pct: f64,
    /// The CPU of the PostgreSQL backends serving it.
    pg_cpu_pct: f64,
    /// Transactions per second in its database.
    pg_tps: f64,
    /// Its connections to PostgreSQL at the end.
    pg_connections: i64,
    /// Established TCP connections to its port.
    sockets: usize,
    /// The fleet's requests per second in the window.
    lease_rate: f64,
    heartbeat_rate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    Healthz,
    Heartbeat,
}

/// One closed-loop load run.
struct Load {
    route: Route,
    /// Agents connected (long-polling, heartbeating) meanwhile.
    connected: usize,
    secs: f64,
    ok: usize,
    errors: u64,
    p50: f64,
    p95: f64,
    p99: f64,
}

impl Load {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.secs
    }
}

/// One round of the fleet measurements.
struct FleetRun {
    /// Issuing the tokens and registering every agent.
    register_s: f64,
    /// RSS right after start, before any agent.
    fresh_rss_kib: u64,
    none: Quiet,
    all: Quiet,
    /// Agents the control plane counts as Connected (heard from within 30 s).
    connected: i64,
    loads: Vec<Load>,
    /// Apply → Ready of one bucket with the fleet connected.
    trips_ms: Vec<f64>,
    /// After everything, and the peak.
    end_rss_kib: u64,
    hwm_kib: u64,
    /// Fleet request failures over the whole round, and the first one's message.
    errors: u64,
    first_error: Option<String>,
}

/// A registered agent.
#[derive(Clone)]
struct Agent {
    credential: String,
}

impl Bench<'_> {
    fn sizes(&self) -> anyhow::Result<Sizes> {
        let measure = |bin: &Path| -> anyhow::Result<(u64, u64)> {
            let built = std::fs::metadata(bin)
                .with_context(|| format!("{} (build it first)", bin.display()))?
                .len();
            let copy = self.h.work.join("stripped");
            std::fs::copy(bin, &copy)?;
            let status = std::process::Command::new("strip").arg(&copy).status()?;
            if !status.success() {
                bail!("strip {} failed", copy.display());
            }
            let stripped = std::fs::metadata(&copy)?.len();
            std::fs::remove_file(&copy)?;
            Ok((built, stripped))
        };
        Ok(Sizes {
            agent: measure(&self.args.agent_bin)?,
            qleet: measure(&self.args.server.bin)?,
        })
    }

    /// Runs the real agent against `cp` until it has idled for `--idle-secs`.
    async fn idle_agent(&self, cp: &ControlPlane, round: usize) -> anyhow::Result<IdleRun> {
        let token = registration_token(self.h, cp).await?;
        let name = format!("bench-idle-{round}");
        let log = self.h.work.join(format!("agent-{round}.log"));
        let mut child = tokio::process::Command::new(&self.args.agent_bin)
            .arg("--url")
            .arg(&cp.url)
            .arg("--token")
            .arg(token)
            .arg("--state-file")
            .arg(self.h.work.join(format!("agent-{round}.json")))
            .arg("--name")
            .arg(&name)
            // No AWS work happens while idle; the SDK is still set up, pointing nowhere.
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "x")
            .env("AWS_REGION", "eu-west-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("KUBECONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.args.agent_bin.display()))?;
        let pid = child.id().context("the agent exited at once")?;
        // The idle window starts once the control plane has heard from it.
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("the agent exited ({status}); log: {}", log.display());
            }
            let seen: i64 = sqlx::query_scalar(
                "select count(*) from agents where name = $1 and last_seen_at is not null",
            )
            .bind(&name)
            .fetch_one(&cp.db)
            .await?;
            if seen > 0 {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the agent did not register in 30 s; log: {}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
        tokio::time::sleep(Duration::from_secs(self.args.idle_secs)).await;
        if let Some(status) = child.try_wait()? {
            bail!("the agent exited ({status}); log: {}", log.display());
        }
        let connected: bool = sqlx::query_scalar(
            "select last_seen_at > now() - interval '30 seconds' from agents where name = $1",
        )
        .bind(&name)
        .fetch_one(&cp.db)
        .await?;
        if !connected {
            bail!("the agent is not Connected; log: {}", log.display());
        }
        let run = IdleRun {
            rss_kib: proc_status(pid, "VmRSS:").context("no VmRSS")?,
            hwm_kib: proc_status(pid, "VmHWM:").context("no VmHWM")?,
            threads: proc_status(pid, "Threads:").unwrap_or(0),
            cpu_ms: (cpu_seconds(pid).unwrap_or(0.0) - cpu_before) * 1000.0,
        };
        child.start_kill()?;
        child.wait().await?;
        Ok(run)
    }

    /// `--trips` sequential round trips of one bucket each, served by one simulated agent.
    async fn round_trips(&self, cp: &ControlPlane) -> anyhow::Result<Vec<Trip>> {
        let http = &self.h.http;
        let agent = register(self.h, cp, "bench-round-trip".into()).await?;
        // The account's own task first, so that each bucket below makes exactly one task.
        apply(self.h, cp, ACCOUNT_YAML).await?;
        let tasks = lease(http, &cp.url, &agent, 1, 10).await?;
        let task = tasks.first().context("the account queued no task")?;
        report(http, &cp.url, &agent, task).await?;
        wait_ready(cp, "main").await?;

        let (tx, mut rx) = mpsc::channel(1);
        let poller = tokio::spawn(long_poll(
            http.clone(),
            cp.url.clone(),
            agent.clone(),
            self.args.wait_seconds,
            tx,
        ));
        let mut trips = Vec::with_capacity(self.args.trips);
        for i in 0..self.args.trips {
            let name = format!("t{i:03}");
            let t = Instant::now();
            http.get(format!("{}/healthz", cp.url))
                .send()
                .await?
                .error_for_status()?;
            let healthz_ms = ms(t.elapsed());
            let t = Instant::now();
            let empty = lease(http, &cp.url, &agent, 1, 0).await?;
            let empty_lease_ms = ms(t.elapsed());
            if !empty.is_empty() {
                bail!("a task was queued before its apply");
            }
            // Give the long-poll time to be waiting again after the previous trip.
            tokio::time::sleep(Duration::from_millis(20)).await;

            let t0 = Instant::now();
            apply(self.h, cp, &bucket_yaml(&name)).await?;
            let applied = Instant::now();
            let (task, leased) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .with_context(|| format!("{name}: no task leased within 30 s"))?
                .context("the long-poll stopped")??;
            if task.object_name != name {
                bail!("leased {} while waiting for {name}", task.object_name);
            }
            let t = Instant::now();
            report(http, &cp.url, &agent, &task).await?;
            let reported = Instant::now();
            wait_ready(cp, &name).await?;
            let ready = Instant::now();
            trips.push(Trip {
                apply_ms: ms(applied - t0),
                // The lease can arrive before the apply's own answer is read: 0 then.
                leased_ms: ms(leased.saturating_duration_since(applied)),
                report_ms: ms(reported - t),
                ready_ms: ms(ready - reported),
                total_ms: ms(ready - t0),
                healthz_ms,
                empty_lease_ms,
                server: [0.0; 4],
            });
        }
        poller.abort();

        // The server's own timestamps (PostgreSQL's clock): the lease time is its expiry less
        // its length.
        let rows: Vec<(String, f64, f64, f64, f64)> = sqlx::query_as(
            "select o.name,
                    extract(epoch from (t.created_at - o.created_at))::float8 * 1000,
                    extract(epoch from (t.lease_expires_at - make_interval(secs => $1)
                                        - t.created_at))::float8 * 1000,
                    extract(epoch from (t.completed_at - t.lease_expires_at
                                        + make_interval(secs => $1)))::float8 * 1000,
                    extract(epoch from ((select min(e.at) from object_events e
                                         where e.object_id = o.id and e.reason = 'Ready')
                                        - t.completed_at))::float8 * 1000
             from objects o join agent_tasks t on t.object_id = o.id
             where o.kind = 'ObjectStorageBucket'",
        )
        .bind(f64::from(LEASE_SECONDS))
        .fetch_all(&cp.db)
        .await?;
        for (name, a, b, c, d) in rows {
            let i: usize = name[1..].parse()?;
            trips[i].server = [a, b, c, d];
        }
        Ok(trips)
    }

    /// Registers `--fleet` agents on a fresh control plane and measures it with none and with
    /// all of them connected.
    async fn fleet(&self, round: usize) -> anyhow::Result<FleetRun> {
        let (h, args) = (self.h, self.args);
        let cp = h.start(&format!("r{round}_fleet"), &[]).await?;
        let pid = cp.pid()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let fresh_rss_kib = proc_status(pid, "VmRSS:").unwrap_or(0);

        let t = Instant::now();
        let agents: Vec<Agent> = futures::stream::iter(0..args.fleet)
            .map(|i| register(h, &cp, format!("bench-fleet-{i:04}")))
            .buffer_unordered(SETUP_CONCURRENCY)
            .try_collect()
            .await?;
        let register_s = t.elapsed().as_secs_f64();
        apply(h, &cp, ACCOUNT_YAML).await?;

        // PostgreSQL publishes an idle backend's counters up to 10 s late: let the setup's
        // transactions out of the way of the first window.
        tokio::time::sleep(PG_STATS_DELAY).await;
        let stats = Arc::new(FleetStats::default());
        let none = self.quiet(&cp, &stats).await?;
        // Alternate the loads' order between rounds, so warm-up favours neither.
        let routes = if round % 2 == 1 {
            [Route::Healthz, Route::Heartbeat]
        } else {
            [Route::Heartbeat, Route::Healthz]
        };
        let mut loads = Vec::new();
        for route in routes {
            loads.push(self.load(&cp, route, &agents, 0).await);
        }

        let fleet: Vec<_> = agents
            .iter()
            .enumerate()
            .map(|(i, a)| {
                // Spread the first heartbeats over one interval, as agents started at
                // different times would be.
                let offset = Duration::from_millis((i as u64 * 10_000) / args.fleet as u64);
                tokio::spawn(fleet_agent(
                    h.http.clone(),
                    cp.url.clone(),
                    a.clone(),
                    args.wait_seconds,
                    offset,
                    stats.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
        let connected: i64 = sqlx::query_scalar(
            "select count(*) from agents where last_seen_at > now() - interval '30 seconds'",
        )
        .fetch_one(&cp.db)
        .await?;
        let all = self.quiet(&cp, &stats).await?;
        for route in routes.iter().rev() {
            loads.push(self.load(&cp, *route, &agents, args.fleet).await);
        }

        // Round trips while every long-poll waits: one bucket wakes them all.
        let mut trips_ms = Vec::new();
        for i in 0..args.fleet_trips {
            let name = format!("f{i:03}");
            let t = Instant::now();
            apply(h, &cp, &bucket_yaml(&name)).await?;
            wait_ready(&cp, &name).await?;
            trips_ms.push(ms(t.elapsed()));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        for f in &fleet {
            f.abort();
        }
        let run = FleetRun {
            register_s,
            fresh_rss_kib,
            none,
            all,
            connected,
            loads,
            trips_ms,
            end_rss_kib: proc_status(pid, "VmRSS:").unwrap_or(0),
            hwm_kib: proc_status(pid, "VmHWM:").unwrap_or(0),
            errors: stats.errors.load(Ordering::Relaxed),
            first_error: stats.first_error.lock().ok().and_then(|e| e.clone()),
        };
        h.stop(cp).await?;
        Ok(run)
    }

    /// Watches the control plane for `--quiet-secs` with nothing but the fleet running.
    async fn quiet(&self, cp: &ControlPlane, stats: &FleetStats) -> anyhow::Result<Quiet> {
        let pid = cp.pid()?;
        let backends = || async {
            let pids: Vec<i32> = sqlx::query_scalar(
                "select pid from pg_stat_activity where datname = current_database()
                   and pid <> pg_backend_pid()",
            )
            .fetch_all(&cp.db)
            .await?;
            anyhow::Ok(pids)
        };
        let transactions = || async {
            let n: i64 = sqlx::query_scalar(
                "select (xact_commit + xact_rollback)::int8 from pg_stat_database
                 where datname = current_database()",
            )
            .fetch_one(&cp.db)
            .await?;
            anyhow::Ok(n)
        };
        let pg_pids = backends().await?;
        let pg_cpu = |pids: &[i32]| -> f64 {
            pids.iter()
                .filter_map(|p| cpu_seconds(*p as u32))
                .sum::<f64>()
        };
        let (leases, beats) = stats.snapshot();
        let (cpu0, pg0, tx0) = (
            cpu_seconds(pid).unwrap_or(0.0),
            pg_cpu(&pg_pids),
            transactions().await?,
        );
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(self.args.quiet_secs)).await;
        // PostgreSQL publishes a backend's counters at most once a second.
        let secs = t.elapsed().as_secs_f64();
        let (cpu1, pg1) = (cpu_seconds(pid).unwrap_or(0.0), pg_cpu(&pg_pids));
        let (leases1, beats1) = stats.snapshot();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let tx1 = transactions().await?;
        Ok(Quiet {
            rss_kib: proc_status(pid, "VmRSS:").unwrap_or(0),
            cpu_pct: (cpu1 - cpu0) * 100.0 / secs,
            pg_cpu_pct: (pg1 - pg0) * 100.0 / secs,
            pg_tps: (tx1 - tx0) as f64 / (secs + 1.1),
            pg_connections: backends().await?.len() as i64,
            sockets: established(self.h.port),
            lease_rate: (leases1 - leases) as f64 / secs,
            heartbeat_rate: (beats1 - beats) as f64 / secs,
        })
    }

    /// `--clients` closed-loop clients on `route` for `--load-secs`.
    async fn load(
        &self,
        cp: &ControlPlane,
        route: Route,
        agents: &[Agent],
        connected: usize,
    ) -> Load {
        let clients = self.args.clients;
        let deadline = Instant::now() + Duration::from_secs(self.args.load_secs);
        let started = Instant::now();
        let workers: Vec<_> = (0..clients)
            .map(|w| {
                let http = self.h.http.clone();
                let url = cp.url.clone();
                // Worker w beats for agents w, w + clients, ...
                let mine: Vec<Agent> = agents.iter().skip(w).step_by(clients).cloned().collect();
                tokio::spawn(async move {
                    let (mut latencies, mut errors) = (Vec::new(), 0u64);
                    let mut k = 0;
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let ok = match route {
                            Route::Healthz => http
                                .get(format!("{url}/healthz"))
                                .send()
                                .await
                                .is_ok_and(|r| r.status().is_success()),
                            Route::Heartbeat => {
                                k += 1;
                                match mine.get(k % mine.len().max(1)) {
                                    Some(a) => heartbeat(&http, &url, a).await.is_ok(),
                                    None => false,
                                }
                            }
                        };
                        if ok {
                            latencies.push(ms(t.elapsed()));
                        } else {
                            errors += 1;
                        }
                    }
                    (latencies, errors)
                })
            })
            .collect();
        let (mut all, mut errors) = (Vec::new(), 0);
        for w in workers {
            if let Ok((l, e)) = w.await {
                all.extend(l);
                errors += e;
            }
        }
        Load {
            route,
            connected,
            secs: started.elapsed().as_secs_f64(),
            ok: all.len(),
            errors,
            p50: percentile(&all, 50.0),
            p95: percentile(&all, 95.0),
            p99: percentile(&all, 99.0),
        }
    }
}

/// What the fleet did, counted as it goes.
#[derive(Default)]
struct FleetStats {
    leases: AtomicU64,
    heartbeats: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl FleetStats {
    fn snapshot(&self) -> (u64, u64) {
        (
            self.leases.load(Ordering::Relaxed),
            self.heartbeats.load(Ordering::Relaxed),
        )
    }

    fn failed(&self, e: &anyhow::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock() {
            first.get_or_insert_with(|| format!("{e:#}"));
        }
    }
}

/// One simulated agent of the fleet: heartbeats at the interval the control plane asks for,
/// and long-polls for up to four tasks at a time (the real agent's default concurrency),
/// completing any task at once.
async fn fleet_agent(
    http: reqwest::Client,
    url: String,
    agent: Agent,
    wait_seconds: u32,
    first_beat: Duration,
    stats: Arc<FleetStats>,
) {
    let beats = {
        let (http, url, agent, stats) = (http.clone(), url.clone(), agent.clone(), stats.clone());
        tokio::spawn(async move {
            tokio::time::sleep(first_beat).await;
            loop {
                let next = match heartbeat(&http, &url, &agent).await {
                    Ok(r) => {
                        stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                        Duration::from_secs(r.interval_seconds.clamp(1, 300).into())
                    }
                    Err(e) => {
                        stats.failed(&e);
                        Duration::from_secs(1)
                    }
                };
                tokio::time::sleep(next).await;
            }
        })
    };
    // Aborting this task drops the heartbeat loop's handle; stop it too.
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _beats = AbortOnDrop(beats);
    loop {
        let done = async {
            let tasks = lease(&http, &url, &agent, 4, wait_seconds).await?;
            stats.leases.fetch_add(1, Ordering::Relaxed);
            for task in &tasks {
                report(&http, &url, &agent, task).await?;
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = done {
            stats.failed(&e);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Long-polls for one task at a time, handing each over with the instant it arrived.
async fn long_poll(
    http: reqwest::Client,
    url: String,
    agent: Agent,
    wait_seconds: u32,
    tx: mpsc::Sender<anyhow::Result<(LeasedTask, Instant)>>,
) {
    loop {
        match lease(&http, &url, &agent, 1, wait_seconds).await {
            Ok(tasks) => {
                let at = Instant::now();
                for task in tasks {
                    if tx.send(Ok((task, at))).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// POSTs `body` to the agent API as `agent` (or unauthenticated) and parses the answer.
async fn call<B: Serialize, R: DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    path: &str,
    agent: Option<&Agent>,
    body: &B,
) -> anyhow::Result<R> {
    let mut req = http.post(format!("{url}/agent/v1/{path}")).json(body);
    if let Some(a) = agent {
        req = req.bearer_auth(&a.credential);
    }
    let resp = req.send().await?;
    let status = resp.status();
    if !status.is_success() {
        bail!(
            "{path}: {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    Ok(resp.json().await?)
}

async fn registration_token(h: &Harness, cp: &ControlPlane) -> anyhow::Result<String> {
    let data = h
        .graphql(
            cp,
            "mutation { createAgentRegistration(ttlMinutes: 60) { token } }",
            json!({}),
        )
        .await?;
    data["createAgentRegistration"]["token"]
        .as_str()
        .map(str::to_owned)
        .context("no registration token")
}

/// Issues a one-time token and registers an agent with it.
async fn register(h: &Harness, cp: &ControlPlane, name: String) -> anyhow::Result<Agent> {
    let token = registration_token(h, cp).await?;
    let answer: RegisterResponse = call(
        &h.http,
        &cp.url,
        "register",
        None,
        &RegisterRequest {
            token,
            name,
            version: env!("CARGO_PKG_VERSION").into(),
        },
    )
    .await?;
    Ok(Agent {
        credential: answer.credential,
    })
}

async fn heartbeat(
    http: &reqwest::Client,
    url: &str,
    agent: &Agent,
) -> anyhow::Result<HeartbeatResponse> {
    let beat = Heartbeat {
        version: env!("CARGO_PKG_VERSION").into(),
        running: 0,
    };
    call(http, url, "heartbeat", Some(agent), &beat).await
}

async fn lease(
    http: &reqwest::Client,
    url: &str,
    agent: &Agent,
    max: u32,
    wait_seconds: u32,
) -> anyhow::Result<Vec<LeasedTask>> {
    let req = LeaseRequest {
        agent: None,
        max: Some(max),
        wait_seconds: Some(wait_seconds),
        lease_seconds: Some(LEASE_SECONDS),
        holding: None,
    };
    let answer: LeaseResponse = call(http, url, "tasks/lease", Some(agent), &req).await?;
    Ok(answer.tasks)
}

/// Reports `task` done, with the outputs a real agent would report.
async fn report(
    http: &reqwest::Client,
    url: &str,
    agent: &Agent,
    task: &LeasedTask,
) -> anyhow::Result<()> {
    let outputs = match outputs_for(&serde_json::to_value(task)?) {
        Value::Object(m) => m,
        _ => Default::default(),
    };
    let req = ReportRequest {
        lease_id: task.lease_id,
        result: TaskResult::Succeeded { outputs },
        events: Vec::new(),
    };
    let answer: ReportResponse = call(
        http,
        url,
        &format!("tasks/{}/report", task.id),
        Some(agent),
        &req,
    )
    .await?;
    if !answer.accepted {
        bail!("report refused: {:?}", answer.reason);
    }
    Ok(())
}

async fn apply(h: &Harness, cp: &ControlPlane, yaml: &str) -> anyhow::Result<()> {
    let data = h.graphql(cp, APPLY, json!({ "y": yaml })).await?;
    if data["apply"]["summary"]["create"] != 1 {
        bail!("apply created no object: {data}");
    }
    Ok(())
}

/// Waits until object `name` is Ready, checking every [`READY_POLL`].
async fn wait_ready(cp: &ControlPlane, name: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let phase: Option<String> =
            sqlx::query_scalar("select status->>'phase' from objects where name = $1")
                .bind(name)
                .fetch_optional(&cp.db)
                .await?
                .flatten();
        match phase.as_deref() {
            Some("Ready") => return Ok(()),
            Some("Failed") => bail!("{name} failed"),
            _ if started.elapsed() > Duration::from_secs(60) => {
                bail!("{name} not Ready after 60 s (phase {phase:?})")
            }
            _ => tokio::time::sleep(READY_POLL).await,
        }
    }
}

/// Established TCP connections whose local end is `port` on loopback (the server's side).
fn established(port: u16) -> usize {
    let suffix = format!(":{port:04X}");
    let count = |table: String| {
        table
            .lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1).is_some_and(|a| a.ends_with(&suffix)) && f.get(3) == Some(&"01")
            })
            .count()
    };
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(count)
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn kib_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The Markdown section for BENCHMARKS.md.
fn markdown(
    args: &Args,
    pg_version: &str,
    load: (String, String),
    sizes: &Sizes,
    idle: &[IdleRun],
    trips: &[Vec<Trip>],
    fleet: &[FleetRun],
) -> String {
    let mut d = Doc::default();
    let n = args.fleet;
    d.line("## Tenant agent (issue 5): binary, memory, task round trip, 1,000 agents");
    d.line("");
    d.line(format!(
        "Command: `scripts/bench-agents.sh` (release builds of `qleet` and `qleet-agent`; the \
         real `qleet control-plane` process, standalone with an admin token, `RUST_LOG=warn`, \
         on a fresh database per run on the local PostgreSQL {pg_version}; {machine}, shared by \
         the control plane, PostgreSQL and the driver `backend/examples/bench_agents.rs`, which \
         also plays the simulated agents and the load; {rounds} rounds; 1-minute load average \
         {} at the start and {} at the end). Run on {date}.",
        load.0,
        load.1,
        machine = machine(),
        rounds = args.rounds,
        date = today(),
    ));
    d.line("");
    d.line("### 1. Binary size");
    d.line("");
    d.line("| binary | as built | stripped (`strip`, a copy) |");
    d.line("| --- | ---: | ---: |");
    for (what, (built, stripped)) in [
        ("`qleet-agent`", sizes.agent),
        (
            "`qleet` (management plane and control plane, for comparison)",
            sizes.qleet,
        ),
    ] {
        d.line(format!(
            "| {what} | {:.1} MiB | {:.1} MiB |",
            mib(built),
            mib(stripped)
        ));
    }
    d.line("");
    d.line(format!(
        "The release profile as it is (`codegen-units = 4`, no LTO, symbols kept). The agent \
         is {:.0} % of the `qleet` binary as built.",
        sizes.agent.0 as f64 * 100.0 / sizes.qleet.0 as f64
    ));
    d.line("");
    d.line(format!(
        "### 2. Resident memory of the real `qleet-agent`, idle for {} s",
        args.idle_secs
    ));
    d.line("");
    d.line(format!(
        "Registered with a one-time token against the control plane, `--state-file` in a \
         temporary directory, default settings (`--concurrency 4`, long-polls of \
         `waitSeconds: 20`, a heartbeat every 10 s as the control plane asks, `info` logs), AWS \
         SDK configured but pointing nowhere (`AWS_ENDPOINT_URL=http://127.0.0.1:9`, no task \
         reaches it). Read from `/proc/<pid>/status` after {} s of idling; CPU over that \
         window.",
        args.idle_secs
    ));
    d.line("");
    d.line("| round | VmRSS MiB | VmHWM MiB | threads | CPU ms |");
    d.line("| --- | ---: | ---: | ---: | ---: |");
    for (i, r) in idle.iter().enumerate() {
        d.line(format!(
            "| {} | {:.1} | {:.1} | {} | {:.0} |",
            i + 1,
            kib_mib(r.rss_kib),
            kib_mib(r.hwm_kib),
            r.threads,
            r.cpu_ms
        ));
    }
    d.line(format!(
        "| **median** | **{:.1}** | {:.1} | {:.0} | {:.0} |",
        med(idle, |r| kib_mib(r.rss_kib)),
        med(idle, |r| kib_mib(r.hwm_kib)),
        med(idle, |r| r.threads as f64),
        med(idle, |r| r.cpu_ms)
    ));
    d.line("");
    d.line(format!(
        "### 3. Task round trip on loopback: {} sequential buckets per round",
        args.trips
    ));
    d.line("");
    d.line(format!(
        "A simulated agent (the driver, speaking `qleet-protocol`'s types with its own \
         credential) keeps one long-poll (`max: 1`, `waitSeconds: {}`) waiting; an \
         `AwsAccount` is applied and completed first, so each trip's apply of one \
         `ObjectStorageBucket` makes exactly one task. Per trip: *apply* = the `apply` \
         mutation's round trip; *→ leased* = apply answered → the waiting long-poll answers \
         with the task (the reconciler renders and queues it, NOTIFY wakes the long-poll, which \
         takes the lease); *report* = the report call's round trip (the agent does no work); \
         *→ Ready* = report answered → the first check (every {} ms, on the tenant database) \
         that sees the object Ready; *total* = apply sent → Ready seen. Baselines in the same \
         loop, just before each trip: `GET /healthz` and an empty lease (`waitSeconds: 0`: \
         authenticate the credential, one `take` query). The real agent would add only its \
         task's own work; it is not run here, since its AWS calls would need an emulator.",
        args.wait_seconds,
        READY_POLL.as_millis()
    ));
    d.line("");
    d.line(
        "| round | apply ms | → leased ms | report ms | → Ready ms | total ms | /healthz ms | empty lease ms |",
    );
    d.line("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let cols: [fn(&Trip) -> f64; 7] = [
        |t| t.apply_ms,
        |t| t.leased_ms,
        |t| t.report_ms,
        |t| t.ready_ms,
        |t| t.total_ms,
        |t| t.healthz_ms,
        |t| t.empty_lease_ms,
    ];
    for (i, round) in trips.iter().enumerate() {
        let m: Vec<String> = cols
            .iter()
            .map(|f| format!("{:.2}", med(round, f)))
            .collect();
        d.line(format!("| {} | {} |", i + 1, m.join(" | ")));
    }
    d.line("");
    let all: Vec<&Trip> = trips.iter().flatten().collect();
    let healthz = median(&all.iter().map(|t| t.healthz_ms).collect::<Vec<_>>());
    d.line(format!(
        "Over all {} trips (p50 / p95, and the p50 in `/healthz` round trips):",
        all.len()
    ));
    d.line("");
    d.line("| step | p50 ms | p95 ms | p50 / `/healthz` |");
    d.line("| --- | ---: | ---: | ---: |");
    let names = [
        "apply (one bucket)",
        "apply answered → task leased (queued → leased)",
        "report call (leased → reported)",
        "report answered → Ready seen",
        "**apply sent → Ready seen**",
        "`GET /healthz` (baseline)",
        "empty lease, `waitSeconds: 0` (baseline)",
    ];
    for (name, f) in names.iter().zip(cols) {
        let v: Vec<f64> = all.iter().map(|t| f(t)).collect();
        d.line(format!(
            "| {name} | {:.2} | {:.2} | {:.1} |",
            percentile(&v, 50.0),
            percentile(&v, 95.0),
            percentile(&v, 50.0) / healthz
        ));
    }
    d.line("");
    let server: Vec<f64> = (0..4)
        .map(|k| median(&all.iter().map(|t| t.server[k]).collect::<Vec<_>>()))
        .collect();
    d.line(format!(
        "Server clock (PostgreSQL's `now()`, i.e. each transaction's start; medians): object \
         written → task queued {:.2} ms; queued → leased {:.2} ms; leased → report recorded \
         {:.2} ms; report → Ready event {:.2} ms.",
        server[0], server[1], server[2], server[3]
    ));
    d.line("");
    d.line(format!("### 4. One control plane, {n} connected agents"));
    d.line("");
    d.line(format!(
        "Per round, on a fresh control plane: {n} one-time tokens issued and {n} agents \
         registered ({SETUP_CONCURRENCY} at a time), then the control plane is watched for {q} \
         s with **none** connected; then {n} simulated agents connect, each as the real agent \
         behaves: one long-poll at a time (`max: 4`, `waitSeconds: {w}`, re-issued when it \
         returns) and a heartbeat at the interval the control plane asks (10 s; first beats \
         spread over one interval); after {s} s the control plane is watched for {q} s again \
         with **all** connected. *Sockets* are established TCP connections at the control \
         plane's port (from `/proc/net/tcp`); *PostgreSQL CPU* sums the control plane's \
         backends; *tx/s* counts transactions in its database (`pg_stat_database`). The client \
         side runs in the driver on the same 2 cores (`ulimit -n` {nofile}).",
        q = args.quiet_secs,
        w = args.wait_seconds,
        s = args.settle_secs,
        nofile = nofile(),
    ));
    d.line("");
    d.line(
        "| round | register s | connected | sockets | RSS fresh MiB | RSS none MiB | RSS all MiB | per agent KiB | RSS end / peak MiB | CPU % none / all | PostgreSQL CPU % none / all | tx/s none / all | PostgreSQL connections none / all | fleet leases/s | fleet heartbeats/s | fleet errors |",
    );
    d.line("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let per_agent = |r: &FleetRun| (r.all.rss_kib as f64 - r.none.rss_kib as f64) / n as f64;
    for (i, r) in fleet.iter().enumerate() {
        d.line(format!(
            "| {} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {:.0} / {:.0} | {} / {} | {:.1} | {:.1} | {} |",
            i + 1,
            r.register_s,
            r.connected,
            r.all.sockets,
            kib_mib(r.fresh_rss_kib),
            kib_mib(r.none.rss_kib),
            kib_mib(r.all.rss_kib),
            per_agent(r),
            kib_mib(r.end_rss_kib),
            kib_mib(r.hwm_kib),
            r.none.cpu_pct,
            r.all.cpu_pct,
            r.none.pg_cpu_pct,
            r.all.pg_cpu_pct,
            r.none.pg_tps,
            r.all.pg_tps,
            r.none.pg_connections,
            r.all.pg_connections,
            r.all.lease_rate,
            r.all.heartbeat_rate,
            r.errors,
        ));
    }
    d.line("");
    d.line(format!(
        "Medians: control-plane RSS **{:.1} MiB with none connected, {:.1} MiB with {n}** \
         (ratio {:.2}; {:.1} KiB per connected agent), peak {:.1} MiB; control-plane CPU \
         {:.1} % → {:.1} %, PostgreSQL CPU {:.1} % → {:.1} %, {:.0} → {:.0} transactions/s \
         while the agents only wait and heartbeat.",
        med(fleet, |r| kib_mib(r.none.rss_kib)),
        med(fleet, |r| kib_mib(r.all.rss_kib)),
        med(fleet, |r| r.all.rss_kib as f64 / r.none.rss_kib as f64),
        med(fleet, per_agent),
        med(fleet, |r| kib_mib(r.hwm_kib)),
        med(fleet, |r| r.none.cpu_pct),
        med(fleet, |r| r.all.cpu_pct),
        med(fleet, |r| r.none.pg_cpu_pct),
        med(fleet, |r| r.all.pg_cpu_pct),
        med(fleet, |r| r.none.pg_tps),
        med(fleet, |r| r.all.pg_tps),
    ));
    if let Some(e) = fleet.iter().find_map(|r| r.first_error.as_ref()) {
        d.line("");
        d.line(format!(
            "First fleet error seen: `{}`.",
            e.replace('`', "'")
        ));
    }
    d.line("");
    d.line(format!(
        "#### Heartbeat handling rate: {} closed-loop clients for {} s",
        args.clients, args.load_secs
    ));
    d.line("");
    d.line(format!(
        "Each client sends heartbeats as fast as it can, cycling through its share of the {n} \
         agents' credentials; the baseline is `GET /healthz` (no database) under the same load. \
         Each is run with none and with all {n} agents connected (the routes' order alternates \
         between rounds). A heartbeat authenticates the credential (an `update agents` that \
         records it was seen) and then records the beat (a second `update agents`)."
    ));
    d.line("");
    d.line("| round | connected | route | requests/s | p50 ms | p95 ms | p99 ms | errors |");
    d.line("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for (i, r) in fleet.iter().enumerate() {
        for l in &r.loads {
            d.line(format!(
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
                i + 1,
                l.connected,
                route_name(l.route),
                l.rate(),
                l.p50,
                l.p95,
                l.p99,
                l.errors
            ));
        }
    }
    d.line("");
    let stat =
        |route, all, f: fn(&Load) -> f64| med(fleet, |r| pick(r, route, all).map_or(f64::NAN, f));
    d.line("Medians:");
    d.line("");
    d.line(
        "| route | connected | requests/s | vs `/healthz`, same fleet | p50 ms | p95 ms | p99 ms |",
    );
    d.line("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for all in [false, true] {
        for route in [Route::Healthz, Route::Heartbeat] {
            let ratio = med(fleet, |r| {
                match (pick(r, route, all), pick(r, Route::Healthz, all)) {
                    (Some(a), Some(b)) => a.rate() / b.rate(),
                    _ => f64::NAN,
                }
            });
            d.line(format!(
                "| {} | {} | {:.0} | {:.3} | {:.2} | {:.2} | {:.2} |",
                route_name(route),
                if all { n } else { 0 },
                stat(route, all, Load::rate),
                ratio,
                stat(route, all, |l| l.p50),
                stat(route, all, |l| l.p95),
                stat(route, all, |l| l.p99),
            ));
        }
    }
    d.line("");
    let with = |route| {
        med(fleet, |r| {
            match (pick(r, route, true), pick(r, route, false)) {
                (Some(a), Some(b)) => a.rate() / b.rate(),
                _ => f64::NAN,
            }
        })
    };
    d.line(format!(
        "With {n} connected vs none: heartbeats/s × {:.2}, `/healthz`/s × {:.2}.",
        with(Route::Heartbeat),
        with(Route::Healthz)
    ));
    d.line("");
    let fleet_trips: Vec<f64> = fleet.iter().flat_map(|r| r.trips_ms.clone()).collect();
    let alone: Vec<f64> = all.iter().map(|t| t.total_ms).collect();
    d.line(format!(
        "#### Task round trip with {n} long-polls waiting ({} per round)",
        args.fleet_trips
    ));
    d.line("");
    d.line(format!(
        "Apply one bucket → Ready, one of the {n} fleet agents leasing and reporting it (a \
         queued task wakes one waiting long-poll): p50 **{:.1} \
         ms**, p95 {:.1} ms over {} trips, against {:.1} ms / {:.1} ms with one agent (section \
         3): × {:.1} at the median.",
        percentile(&fleet_trips, 50.0),
        percentile(&fleet_trips, 95.0),
        fleet_trips.len(),
        percentile(&alone, 50.0),
        percentile(&alone, 95.0),
        percentile(&fleet_trips, 50.0) / percentile(&alone, 50.0),
    ));
    d.finish()
}

/// The load on `route` with all agents connected (`all`) or none.
fn pick(r: &FleetRun, route: Route, all: bool) -> Option<&Load> {
    r.loads
        .iter()
        .find(|l| l.route == route && (l.connected > 0) == all)
}

fn route_name(route: Route) -> &'static str {
    match route {
        Route::Healthz => "`GET /healthz` (baseline)",
        Route::Heartbeat => "`POST /agent/v1/heartbeat`",
    }
}

/// The soft limit on open files, as the driver runs.
fn nofile() -> String {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .unwrap_or_else(|| "unknown".into())
}
