//! What the benchmark drivers in `backend/examples` share: starting the real `qleet
//! control-plane` binary standalone on a fresh database of a PostgreSQL server, calling its
//! GraphQL API, a test agent's answers, reading `/proc`, and summarising figures as Markdown.

// Each example compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::process::{Child, Command};

/// Where the server under test and its database come from, read from flags or the environment.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The `qleet-control-plane` binary to benchmark (the release build).
    #[arg(
        long,
        env = "QLEET_BENCH_BIN",
        default_value = "target/release/qleet-control-plane"
    )]
    pub bin: PathBuf,
    /// An admin URL of the PostgreSQL server; each run makes (and drops) its own database there.
    #[arg(
        long,
        env = "QLEET_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub admin_url: String,
}

/// Starts control planes under test, each on its own database, and cleans up after them.
pub struct Harness {
    /// The `qleet` binary under test (the release build).
    pub bin: PathBuf,
    /// An admin URL of the PostgreSQL server; each control plane gets a database there.
    admin_url: String,
    /// Connected with `admin_url`: makes and drops the databases.
    pub admin: PgPool,
    pub http: reqwest::Client,
    /// Loopback port of the control plane under test (one runs at a time).
    pub port: u16,
    /// The standalone admin token the control planes accept.
    pub admin_token: &'static str,
    /// Databases are named `{db_prefix}_{run name}`.
    db_prefix: String,
    /// Logs of the runs; removed by [`Harness::finish`].
    pub work: PathBuf,
}

/// A control plane under test, killed when dropped.
pub struct ControlPlane {
    pub child: Child,
    pub url: String,
    /// The tenant database (one connection), for progress checks and server-side timestamps.
    pub db: PgPool,
    name: String,
}

impl Harness {
    /// Connects to PostgreSQL and makes a scratch directory named after `what`.
    pub async fn new(
        what: &str,
        server: &ServerArgs,
        port: u16,
        admin_token: &'static str,
        http: reqwest::Client,
    ) -> anyhow::Result<Harness> {
        let admin = PgPool::connect(&server.admin_url)
            .await
            .context("connecting to PostgreSQL (QLEET_BENCH_DATABASE_URL)")?;
        let work = std::env::temp_dir().join(format!("qleet-{what}-bench-{}", std::process::id()));
        std::fs::create_dir_all(&work)?;
        Ok(Harness {
            bin: server.bin.clone(),
            admin_url: server.admin_url.clone(),
            admin,
            http,
            port,
            admin_token,
            db_prefix: format!("qleet_bench_{what}"),
            work,
        })
    }

    pub async fn pg_version(&self) -> anyhow::Result<String> {
        Ok(sqlx::query_scalar("show server_version")
            .fetch_one(&self.admin)
            .await?)
    }

    /// Makes a fresh database and starts the control plane on it with `env` added (warnings
    /// only in its log: a line per request would be part of what is measured).
    pub async fn start(&self, name: &str, env: &[(&str, String)]) -> anyhow::Result<ControlPlane> {
        let db_name = format!("{}_{name}", self.db_prefix);
        self.drop_database(&db_name).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {db_name}")))
            .execute(&self.admin)
            .await?;
        let db_url = format!(
            "{}/{db_name}",
            self.admin_url
                .rsplit_once('/')
                .context("the admin URL names no database")?
                .0
        );
        let url = format!("http://127.0.0.1:{}", self.port);
        let log_path = self.work.join(format!("{name}.log"));
        let mut cmd = Command::new(&self.bin);
        cmd.env("QLEET_CP_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("DATABASE_URL", &db_url)
            .env("QLEET_CP_ID", uuid::Uuid::new_v4().to_string())
            .env("QLEET_CP_ADMIN_TOKEN", self.admin_token)
            .env("QLEET_LOG_FORMAT", "pretty")
            .env("RUST_LOG", "warn")
            .env_remove("QLEET_CP_POLL_MS")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the control plane exited ({status}); log: {}",
                    log_path.display()
                );
            }
            let ready = self.http.get(format!("{url}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the control plane did not answer /readyz within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&db_url)
            .await?;
        Ok(ControlPlane {
            child,
            url,
            db,
            name: name.to_owned(),
        })
    }

    /// Stops the control plane and drops its database.
    pub async fn stop(&self, mut cp: ControlPlane) -> anyhow::Result<()> {
        cp.db.close().await;
        cp.child.start_kill()?;
        cp.child.wait().await?;
        self.drop_database(&format!("{}_{}", self.db_prefix, cp.name))
            .await
    }

    async fn drop_database(&self, db_name: &str) -> anyhow::Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "drop database if exists {db_name} with (force)"
        )))
        .execute(&self.admin)
        .await?;
        Ok(())
    }

    /// Removes the scratch directory.
    pub fn finish(&self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }

    /// Sends a GraphQL document with the admin token; answers `data`, or fails on any error.
    pub async fn graphql(
        &self,
        cp: &ControlPlane,
        query: &str,
        variables: Value,
    ) -> anyhow::Result<Value> {
        let body: Value = self
            .http
            .post(format!("{}/graphql", cp.url))
            .bearer_auth(self.admin_token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await?
            .json()
            .await?;
        if body.get("errors").is_some() {
            bail!("GraphQL errors: {body}");
        }
        Ok(body["data"].clone())
    }
}

impl ControlPlane {
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("the control plane has exited")
    }

    /// The number of objects in `phase` (e.g. `Ready`, `Failed`).
    pub async fn count_phase(&self, phase: &str) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("select count(*) from objects where status->>'phase' = $1")
                .bind(phase)
                .fetch_one(&self.db)
                .await?,
        )
    }
}

/// The `apply` mutation for `yaml`; answers how many objects it created.
pub const APPLY: &str = "mutation($y: String!) { apply(yaml: $y) { applied summary { create } } }";

// Each benchmark uses one of them.
#[allow(unused_imports)]
pub use qleet_test_support::cp::{outputs_for, success_report};

/// User + system CPU time of a process, in seconds (USER_HZ is 100 on Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// A numeric field of /proc/<pid>/status (`kB` for the memory ones).
pub fn proc_status(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The 1-minute load average.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// "N cores (CPU model)", for the machine note.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores ({cpu})")
}

pub fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The `p`-th percentile (0 to 100, nearest rank).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The median of one figure over runs.
pub fn med<T>(runs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    median(&runs.iter().map(f).collect::<Vec<_>>())
}

/// Collects a Markdown document line by line.
#[derive(Default)]
pub struct Doc(String);

impl Doc {
    pub fn line(&mut self, s: impl AsRef<str>) {
        self.0.push_str(s.as_ref());
        self.0.push('\n');
    }

    /// The document with prose wrapped at 100 columns, as the rest of BENCHMARKS.md is.
    pub fn finish(self) -> String {
        wrap(&self.0, 100)
    }
}

/// Wraps prose lines at `width` columns; tables and headings stay as they are.
pub fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    for l in text.lines() {
        if l.starts_with('|') || l.starts_with('#') || l.len() <= width {
            out.push_str(l);
            out.push('\n');
            continue;
        }
        let mut current = String::new();
        for word in l.split(' ') {
            if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > width {
                out.push_str(&current);
                out.push('\n');
                current.clear();
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(word);
        }
        out.push_str(&current);
        out.push('\n');
    }
    out
}
