//! A private PostgreSQL cluster for `qleet dev`, run from the server binaries installed on the
//! machine, under Qleet's data directory. Created on first start, reused after.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context as _, bail};
use secrecy::SecretString;
use tokio::process::Command;

const INSTALL_HINT: &str = "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found \
in PATH or /usr/lib/postgresql/*/bin; install them (Debian/Ubuntu: `apt-get install postgresql`) \
or set DATABASE_URL to an existing server";

/// A running private cluster. Call [`EmbeddedPostgres::stop`] on shutdown.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
}

impl EmbeddedPostgres {
    /// Starts (initialising it first if needed) the cluster in `dir`, and makes sure the `qleet`
    /// database exists.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = find_bin_dir().context(INSTALL_HINT)?;
        let run_as = if is_root() {
            Some(postgres_user().context(
                "running as root, and PostgreSQL refuses to run as root: create a `postgres` \
                 user or run qleet dev as a normal user",
            )?)
        } else {
            None
        };
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        let mut pg = EmbeddedPostgres {
            dir,
            bin,
            port: 0,
            run_as,
        };
        if !pg.dir.join("PG_VERSION").exists() {
            tracing::info!(dir = %pg.dir.display(), "initialising private PostgreSQL cluster");
            let out = pg
                .command("initdb")
                .arg("-D")
                .arg(&pg.dir)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ])
                .output()
                .await?;
            check(&out, "initdb")?;
        }
        if let Some(port) = pg.running_port() {
            tracing::info!(
                port,
                "reusing the private PostgreSQL that is already running"
            );
            pg.port = port;
        } else {
            pg.port = free_port()?;
            let opts = format!(
                "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c fsync=off",
                pg.port
            );
            let out = pg
                .command("pg_ctl")
                .arg("-D")
                .arg(&pg.dir)
                .args(["-o", &opts, "-l"])
                .arg(pg.dir.join("server.log"))
                .args(["-w", "-t", "60", "start"])
                .output()
                .await?;
            check(&out, "pg_ctl start").with_context(|| {
                format!(
                    "see {} for the server's log",
                    pg.dir.join("server.log").display()
                )
            })?;
        }
        pg.ensure_database().await?;
        Ok(pg)
    }

    /// URL of the `qleet` database in this cluster.
    pub fn url(&self) -> SecretString {
        SecretString::from(format!("postgres://postgres@127.0.0.1:{}/qleet", self.port))
    }

    /// Stops the cluster (fast shutdown: open connections are closed).
    pub async fn stop(&self) -> anyhow::Result<()> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "fast", "-w", "stop"])
            .output()
            .await?;
        check(&out, "pg_ctl stop")
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.kill_on_drop(true);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// The port of a postmaster already serving this directory, read from `postmaster.pid`
    /// (line 4), when its process is alive.
    fn running_port(&self) -> Option<u16> {
        let pid_file = std::fs::read_to_string(self.dir.join("postmaster.pid")).ok()?;
        let mut lines = pid_file.lines();
        let pid: u32 = lines.next()?.trim().parse().ok()?;
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return None;
        }
        lines.nth(2)?.trim().parse().ok()
    }

    async fn ensure_database(&self) -> anyhow::Result<()> {
        use sqlx::Connection as _;
        let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .context("connecting to the private PostgreSQL")?;
        let exists = sqlx::query_scalar!(
            r#"select exists (select 1 from pg_database where datname = 'qleet') as "exists!""#
        )
        .fetch_one(&mut conn)
        .await?;
        if !exists {
            // DDL, run on the server's maintenance database before the management one exists:
            // nothing for the query macros to check against, so a runtime string.
            sqlx::query("create database qleet")
                .execute(&mut conn)
                .await?;
        }
        Ok(())
    }
}

fn check(out: &Output, what: &str) -> anyhow::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    bail!("{what} failed ({}): {last}", out.status)
}

/// The first directory holding `initdb`, `pg_ctl` and `postgres`.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    find_tools(&["initdb", "pg_ctl", "postgres"])
}

/// The first directory holding all of `tools`: PATH first, then the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn find_tools(tools: &[&str]) -> anyhow::Result<PathBuf> {
    let has_all = |d: &Path| tools.iter().all(|t| d.join(t).is_file());
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|d| has_all(d))
    {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has_all(d))
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d).context("none found")
}

fn is_root() -> bool {
    // /proc/self is owned by the effective uid of this process.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// uid and gid of the `postgres` account, from /etc/passwd.
fn postgres_user() -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres") && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .context("no postgres user in /etc/passwd")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
