//! Issue-4 benchmark driver: how fast a control plane drives objects to Ready when a test agent
//! completes every task at once. Each run starts the real `qleet control-plane` binary on a fresh
//! database and measures
//!
//! - a chain: one `KubernetesRuntime` and `--chain` workloads, each one's manifest naming the
//!   previous one's `revision` output, so each waits for the one before (per-hop latency); once
//!   notification-driven and once in the 1 s polling baseline (`QLEET_CP_POLL_MS`, and an agent
//!   that looks for work every second instead of long-polling), in the same round;
//! - a wide graph: one `AwsAccount` and `--wide` buckets on it, served by `--agents` concurrent
//!   lease loops (time to converge, objects/s, the control plane's CPU and peak RSS).
//!
//! Convergence is seen by counting Ready rows in the tenant database every 20 ms (a cheap query
//! that does not load the control plane); the split of each hop comes from the server's own
//! event timestamps. Prints a Markdown section on stdout; progress goes to stderr.
//!
//! `scripts/bench-orchestration.sh` builds the release binary and runs this.

mod bench_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use serde_json::{Value, json};

use bench_support::{
    APPLY, ControlPlane, Harness, ServerArgs, cpu_seconds, load_average, machine, med, median, ms,
    proc_status, success_report, today, wrap,
};

/// What to run, read once from flags or the environment.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// Rounds; each round runs chain (notify), chain (polling) and wide, on fresh databases.
    #[arg(long, env = "QLEET_BENCH_ROUNDS", default_value_t = 5)]
    rounds: usize,
    /// Workloads in the chain (hops).
    #[arg(long, env = "QLEET_BENCH_CHAIN", default_value_t = 50)]
    chain: usize,
    /// Buckets in the wide graph.
    #[arg(long, env = "QLEET_BENCH_WIDE", default_value_t = 1000)]
    wide: usize,
    /// Concurrent lease loops of the test agent in the wide graph.
    #[arg(long, env = "QLEET_BENCH_AGENTS", default_value_t = 4)]
    agents: usize,
    /// The baseline's polling interval (control plane and agent), in milliseconds.
    #[arg(long, env = "QLEET_BENCH_POLL_MS", default_value_t = 1000)]
    poll_ms: u64,
    /// Loopback port for the control plane under test.
    #[arg(long, env = "QLEET_BENCH_CP_PORT", default_value_t = 18191)]
    port: u16,
}

const ADMIN_TOKEN: &str = "bench-orchestration-admin-token-0123456789abcdef";
/// How often convergence is checked.
const PROGRESS_EVERY: Duration = Duration::from_millis(20);
/// A run that has not converged by then is a failure, not a figure.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// LISTEN/NOTIFY in the control plane, long-polling agent.
    Notify,
    /// `QLEET_CP_POLL_MS` in the control plane, agent polling with `waitSeconds: 0`.
    Poll,
}

/// One chain run.
struct ChainRun {
    /// Apply sent → the poll that sees every object Ready.
    total_ms: f64,
    /// The apply mutation's round trip.
    apply_ms: f64,
    /// The apply's transaction → the runtime (the root) Ready, server clock.
    root_ms: f64,
    /// (Ready of the last workload − Ready of the runtime) / hops, server clock.
    hop_ms: f64,
    /// Medians over the hops of: dependency Ready → task queued; queued → agent's report;
    /// report → Ready.
    to_queued_ms: f64,
    to_reported_ms: f64,
    to_ready_ms: f64,
    tasks: i64,
}

/// One wide-graph run.
struct WideRun {
    total_ms: f64,
    apply_ms: f64,
    /// First object written (apply's transaction) → last Ready event, server clock.
    server_ms: f64,
    objects: usize,
    tasks: i64,
    lease_calls: u64,
    cp_cpu_s: f64,
    pg_cpu_s: f64,
    peak_rss_kib: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let load_before = load_average();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let harness = Harness::new("orch", &args.server, args.port, ADMIN_TOKEN, http).await?;
    let pg_version = harness.pg_version().await?;
    let bench = Bench {
        args: &args,
        h: &harness,
    };

    let mut notify = Vec::new();
    let mut poll = Vec::new();
    let mut wide = Vec::new();
    for round in 1..=args.rounds {
        // Alternate which chain goes first, so warm-up does not favour one mode.
        let order = if round % 2 == 1 {
            [Mode::Notify, Mode::Poll]
        } else {
            [Mode::Poll, Mode::Notify]
        };
        for mode in order {
            let run = bench.chain(round, mode).await?;
            eprintln!(
                "round {round}: chain {mode:?}: {:.0} ms, {:.1} ms/hop",
                run.total_ms, run.hop_ms
            );
            match mode {
                Mode::Notify => notify.push(run),
                Mode::Poll => poll.push(run),
            }
        }
        let run = bench.wide(round).await?;
        eprintln!(
            "round {round}: wide: {:.0} ms, {:.0} objects/s",
            run.total_ms,
            run.objects as f64 * 1000.0 / run.total_ms
        );
        wide.push(run);
    }
    harness.finish();
    let load = (load_before, load_average());
    print!(
        "{}",
        report(&args, &pg_version, load, &notify, &poll, &wide)
    );
    Ok(())
}

struct Bench<'a> {
    args: &'a Args,
    h: &'a Harness,
}

impl Bench<'_> {
    /// Starts a control plane on a fresh database, polling every `poll_ms` in `Mode::Poll`.
    async fn start(&self, name: &str, mode: Mode) -> anyhow::Result<ControlPlane> {
        let env = match mode {
            Mode::Notify => vec![],
            Mode::Poll => vec![("QLEET_CP_POLL_MS", self.args.poll_ms.to_string())],
        };
        self.h.start(name, &env).await
    }

    async fn chain(&self, round: usize, mode: Mode) -> anyhow::Result<ChainRun> {
        let name = format!("r{round}_chain_{}", format!("{mode:?}").to_lowercase());
        let cp = self.start(&name, mode).await?;
        let stats = Arc::new(AgentStats::default());
        let agent = Agent {
            http: self.h.http.clone(),
            url: cp.url.clone(),
            name: "bench-agent".into(),
            mode,
            poll: Duration::from_millis(self.args.poll_ms),
            stats: stats.clone(),
        };
        let agents = vec![tokio::spawn(agent.run())];
        let n = self.args.chain;
        let converged = converge(self.h, &cp, &chain_yaml(n), n + 1, &agents).await;
        for a in &agents {
            a.abort();
        }
        let (total_ms, apply_ms) = converged?;

        // Server-side split of each hop, from the event timestamps.
        let events: Vec<(String, String, f64)> = sqlx::query_as(
            "select o.name, e.reason, extract(epoch from e.at)::float8 * 1000
             from object_events e join objects o on o.id = e.object_id
             where e.reason in ('TaskQueued', 'TaskSucceeded', 'Ready') order by e.id",
        )
        .fetch_all(&cp.db)
        .await?;
        let first = |obj: &str, reason: &str| {
            events
                .iter()
                .find(|(o, r, _)| o == obj && r == reason)
                .map(|(_, _, at)| *at)
                .with_context(|| format!("no {reason} event for {obj}"))
        };
        let (mut queued, mut reported, mut ready) = (Vec::new(), Vec::new(), Vec::new());
        let mut previous = first("prod", "Ready")?;
        let root_ready = previous;
        for i in 1..=n {
            let w = workload(i);
            let (q, s, r) = (
                first(&w, "TaskQueued")?,
                first(&w, "TaskSucceeded")?,
                first(&w, "Ready")?,
            );
            queued.push(q - previous);
            reported.push(s - q);
            ready.push(r - s);
            previous = r;
        }
        let created: f64 = sqlx::query_scalar(
            "select extract(epoch from min(created_at))::float8 * 1000 from objects",
        )
        .fetch_one(&cp.db)
        .await?;
        let tasks: i64 = sqlx::query_scalar("select count(*) from agent_tasks")
            .fetch_one(&cp.db)
            .await?;
        self.h.stop(cp).await?;
        Ok(ChainRun {
            total_ms,
            apply_ms,
            root_ms: root_ready - created,
            hop_ms: (previous - root_ready) / n as f64,
            to_queued_ms: median(&queued),
            to_reported_ms: median(&reported),
            to_ready_ms: median(&ready),
            tasks,
        })
    }

    async fn wide(&self, round: usize) -> anyhow::Result<WideRun> {
        let name = format!("r{round}_wide");
        let cp = self.start(&name, Mode::Notify).await?;
        let pid = cp.pid()?;
        let stats = Arc::new(AgentStats::default());
        let agents: Vec<_> = (0..self.args.agents)
            .map(|i| {
                tokio::spawn(
                    Agent {
                        http: self.h.http.clone(),
                        url: cp.url.clone(),
                        name: format!("bench-agent-{i}"),
                        mode: Mode::Notify,
                        poll: Duration::from_millis(self.args.poll_ms),
                        stats: stats.clone(),
                    }
                    .run(),
                )
            })
            .collect();
        let n = self.args.wide;
        let cpu_before = cpu_seconds(pid).unwrap_or(0.0);
        let converged = converge(self.h, &cp, &wide_yaml(n), n + 1, &agents).await;
        let cp_cpu_s = cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
        for a in &agents {
            a.abort();
        }
        let (total_ms, apply_ms) = converged?;
        let peak_rss_kib = proc_status(pid, "VmHWM:").unwrap_or(0);
        // CPU of the PostgreSQL backends serving this control plane (all started in this run;
        // the fresh database has no others). Ours, the progress counter, is left out.
        let backends: Vec<i32> = sqlx::query_scalar(
            "select pid from pg_stat_activity where datname = current_database()
               and pid <> pg_backend_pid()",
        )
        .fetch_all(&cp.db)
        .await?;
        let pg_cpu_s = backends.iter().filter_map(|p| cpu_seconds(*p as u32)).sum();
        let server_ms: f64 = sqlx::query_scalar(
            "select (extract(epoch from (select max(at) from object_events where reason = 'Ready'))
                   - extract(epoch from (select min(created_at) from objects)))::float8 * 1000",
        )
        .fetch_one(&cp.db)
        .await?;
        let tasks: i64 = sqlx::query_scalar("select count(*) from agent_tasks")
            .fetch_one(&cp.db)
            .await?;
        self.h.stop(cp).await?;
        Ok(WideRun {
            total_ms,
            apply_ms,
            server_ms,
            objects: n + 1,
            tasks,
            lease_calls: stats.lease_calls.load(Ordering::Relaxed),
            cp_cpu_s,
            pg_cpu_s,
            peak_rss_kib,
        })
    }
}

/// Applies `yaml` and waits until all `objects` are Ready; answers (total ms, apply ms).
async fn converge(
    h: &Harness,
    cp: &ControlPlane,
    yaml: &str,
    objects: usize,
    agents: &[tokio::task::JoinHandle<anyhow::Result<()>>],
) -> anyhow::Result<(f64, f64)> {
    let t0 = Instant::now();
    let data = h.graphql(cp, APPLY, json!({ "y": yaml })).await?;
    let apply_ms = ms(t0.elapsed());
    if data["apply"]["summary"]["create"] != objects {
        bail!("apply failed: {data}");
    }
    loop {
        let (ready, failed): (i64, i64) = sqlx::query_as(
            "select count(*) filter (where status->>'phase' = 'Ready'),
                    count(*) filter (where status->>'phase' = 'Failed')
             from objects",
        )
        .fetch_one(&cp.db)
        .await?;
        if ready as usize >= objects {
            return Ok((ms(t0.elapsed()), apply_ms));
        }
        if failed > 0 {
            bail!("{failed} objects failed");
        }
        if let Some(a) = agents.iter().find(|a| a.is_finished()) {
            bail!("a test agent stopped: {a:?}");
        }
        if t0.elapsed() > RUN_TIMEOUT {
            bail!("only {ready} of {objects} objects Ready after {RUN_TIMEOUT:?}");
        }
        tokio::time::sleep(PROGRESS_EVERY).await;
    }
}

#[derive(Default)]
struct AgentStats {
    lease_calls: AtomicU64,
    reported: AtomicU64,
}

/// A test agent: completes every task it leases at once, with the outputs a real agent would
/// report.
struct Agent {
    http: reqwest::Client,
    url: String,
    name: String,
    mode: Mode,
    poll: Duration,
    stats: Arc<AgentStats>,
}

impl Agent {
    async fn run(self) -> anyhow::Result<()> {
        let wait = match self.mode {
            Mode::Notify => 5,
            Mode::Poll => 0,
        };
        loop {
            let body: Value = self
                .http
                .post(format!("{}/agent/v1/tasks/lease", self.url))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({ "agent": self.name, "max": 50, "waitSeconds": wait }))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            self.stats.lease_calls.fetch_add(1, Ordering::Relaxed);
            let tasks = body["tasks"].as_array().cloned().unwrap_or_default();
            if tasks.is_empty() {
                if self.mode == Mode::Poll {
                    tokio::time::sleep(self.poll).await;
                }
                continue;
            }
            for task in tasks {
                let answer: Value = self
                    .http
                    .post(format!(
                        "{}/agent/v1/tasks/{}/report",
                        self.url,
                        task["id"].as_str().unwrap_or_default()
                    ))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&success_report(&task))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                if answer["accepted"] != true {
                    bail!("report refused: {answer}");
                }
                self.stats.reported.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn workload(i: usize) -> String {
    format!("w{i:03}")
}

/// A runtime and `n` workloads; workload i's ConfigMap carries workload i−1's revision.
fn chain_yaml(n: usize) -> String {
    let mut yaml = String::from(
        "kind: KubernetesRuntime\nmetadata: {name: prod}\nspec: {existing: {cluster: prod-1}}\n",
    );
    for i in 1..=n {
        let previous = if i == 1 {
            "${KubernetesRuntime/prod.clusterName}".to_owned()
        } else {
            format!("${{Workload/{}.revision}}", workload(i - 1))
        };
        yaml.push_str(&format!(
            "---\nkind: Workload\nmetadata: {{name: {w}}}\nspec:\n  runtime: KubernetesRuntime/prod\n  \
             namespace: bench\n  manifests: |\n    apiVersion: v1\n    kind: ConfigMap\n    \
             metadata: {{name: {w}}}\n    data: {{previous: \"{previous}\"}}\n",
            w = workload(i)
        ));
    }
    yaml
}

/// One account and `n` buckets on it.
fn wide_yaml(n: usize) -> String {
    let mut yaml = String::from(
        "kind: AwsAccount\nmetadata: {name: main}\nspec: {accountId: \"123456789012\", \
         roleArn: \"arn:aws:iam::123456789012:role/qleet\", defaultRegion: eu-west-1}\n",
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "---\nkind: ObjectStorageBucket\nmetadata: {{name: b{i:04}}}\nspec: {{account: AwsAccount/main}}\n"
        ));
    }
    yaml
}

/// The Markdown section for BENCHMARKS.md.
fn report(
    args: &Args,
    pg_version: &str,
    load: (String, String),
    notify: &[ChainRun],
    poll: &[ChainRun],
    wide: &[WideRun],
) -> String {
    let n = args.chain;
    let w = args.wide;
    let p = args.poll_ms;
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line("## Orchestration (issue 4): dependency chain, wide graph, notify vs polling".into());
    line(String::new());
    line(format!(
        "Command: `scripts/bench-orchestration.sh` (release build; the real `qleet control-plane` \
         process, standalone, `RUST_LOG=warn`, on a fresh database per run on the local PostgreSQL \
         {pg_version}; {machine}, shared by the control plane, PostgreSQL and the \
         driver `backend/examples/bench_orchestration.rs`; {rounds} rounds, the two chain modes \
         alternating which goes first; 1-minute load average {} at the start and {} at the \
         end). Run on {date}.",
        load.0,
        load.1,
        rounds = args.rounds,
        machine = machine(),
        date = today(),
    ));
    line(String::new());
    line(format!(
        "A test agent completes every task as soon as it has it, with the outputs a real agent \
         would report: it leases with `max: 50` and long-polls (`waitSeconds: 5`). In the \
         **polling baseline** the control plane runs with `QLEET_CP_POLL_MS={p}` and the agent \
         leases with `waitSeconds: 0`, sleeping {p} ms whenever it gets nothing. \"All Ready\" is \
         the first check (a count of Ready rows in the tenant database, every {} ms) that sees \
         every object Ready; the per-hop figures and their split come from the server's event \
         timestamps.",
        PROGRESS_EVERY.as_millis()
    ));
    line(String::new());
    line(format!(
        "### 1. Chain: a `KubernetesRuntime` and {n} `Workload`s, each waiting for the previous one"
    ));
    line(String::new());
    line(format!(
        "Workload *i*'s manifest is a ConfigMap whose data is `${{Workload/w(i−1).revision}}`, so \
         it can only be rendered once workload *i−1* is Ready. Per hop = (Ready of the last \
         workload − Ready of the runtime) / {n}; *root Ready* = the apply's transaction → the \
         runtime Ready. The split of a hop (medians over the hops of a run): *queue* = dependency Ready → this object's task queued (reconciler); *agent* = \
         task queued → the agent's report arrives (lease wake-up, HTTP, report); *ready* = \
         report → Ready (reconciler)."
    ));
    line(String::new());
    line(
        "| round | mode | apply ms | apply → all Ready ms | root Ready ms | per hop ms | queue ms | agent ms | ready ms | tasks |"
            .into(),
    );
    line("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |".into());
    for (i, (a, b)) in notify.iter().zip(poll).enumerate() {
        for (mode, r) in [("notify".to_owned(), a), (format!("polling {p} ms"), b)] {
            line(format!(
                "| {} | {mode} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                i + 1,
                r.apply_ms,
                r.total_ms,
                r.root_ms,
                r.hop_ms,
                r.to_queued_ms,
                r.to_reported_ms,
                r.to_ready_ms,
                r.tasks
            ));
        }
    }
    line(String::new());
    line("Medians:".into());
    line(String::new());
    line(
        "| mode | apply → all Ready ms | root Ready ms | per hop ms | queue ms | agent ms | ready ms |"
            .into(),
    );
    line("| --- | ---: | ---: | ---: | ---: | ---: | ---: |".into());
    let chain_row = |runs: &[ChainRun]| {
        [
            med(runs, |r| r.total_ms),
            med(runs, |r| r.root_ms),
            med(runs, |r| r.hop_ms),
            med(runs, |r| r.to_queued_ms),
            med(runs, |r| r.to_reported_ms),
            med(runs, |r| r.to_ready_ms),
        ]
    };
    let (a, b) = (chain_row(notify), chain_row(poll));
    line(format!(
        "| notify (LISTEN/NOTIFY, long-poll) | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
        a[0], a[1], a[2], a[3], a[4], a[5]
    ));
    line(format!(
        "| polling every {p} ms (baseline) | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
        b[0], b[1], b[2], b[3], b[4], b[5]
    ));
    line(format!(
        "| notify / polling | {:.3} | {:.3} | **{:.3}** ({:.0}× faster) | | | |",
        a[0] / b[0],
        a[1] / b[1],
        a[2] / b[2],
        b[2] / a[2]
    ));
    line(String::new());
    line(format!(
        "### 2. Wide graph: an `AwsAccount` and {w} `ObjectStorageBucket`s on it ({} lease loops)",
        args.agents
    ));
    line(String::new());
    line(
        "| round | apply ms | apply → all Ready ms | server ms | objects/s | tasks | lease calls | control-plane CPU s | PostgreSQL CPU s | control-plane peak RSS MiB |"
            .into(),
    );
    line("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |".into());
    for (i, r) in wide.iter().enumerate() {
        line(format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {:.2} | {:.2} | {:.1} |",
            i + 1,
            r.apply_ms,
            r.total_ms,
            r.server_ms,
            r.objects as f64 * 1000.0 / r.total_ms,
            r.tasks,
            r.lease_calls,
            r.cp_cpu_s,
            r.pg_cpu_s,
            r.peak_rss_kib as f64 / 1024.0
        ));
    }
    line(String::new());
    let objects = wide.first().map_or(w + 1, |r| r.objects);
    let total = med(wide, |r| r.total_ms);
    line(format!(
        "Medians: apply {:.0} ms; apply → all {objects} Ready **{total:.0} ms**, i.e. **{:.0} \
         objects/s** ({:.2} ms per object); server-side (first object written → last Ready \
         event) {:.0} ms; control-plane CPU {:.2} s and PostgreSQL CPU {:.2} s over the run; \
         control-plane peak RSS {:.1} MiB. *server ms* runs from the apply's transaction to the \
         last Ready event; *PostgreSQL CPU* sums the backends still connected to the tenant \
         database at the end (the control plane's pool and its LISTEN connection).",
        med(wide, |r| r.apply_ms),
        objects as f64 * 1000.0 / total,
        total / objects as f64,
        med(wide, |r| r.server_ms),
        med(wide, |r| r.cp_cpu_s),
        med(wide, |r| r.pg_cpu_s),
        med(wide, |r| r.peak_rss_kib as f64 / 1024.0),
    ));
    wrap(&out, 100)
}
