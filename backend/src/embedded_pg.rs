//! A private PostgreSQL cluster for `qleet dev`, run from the server binaries installed on the
//! machine, under Qleet's data directory. Created on first start, reused after.
//!
//! The cluster listens on loopback only and authenticates with scram-sha-256: its superuser's
//! password is generated on first start and kept beside the cluster in `postgres.password`
//! (mode 0600), so no other local user can connect as a tenant or as the superuser. A cluster made
//! by an older Qleet with `trust` is moved to a password on its next start.
//!
//! As root, PostgreSQL runs as the `postgres` account. When that account cannot enter the data
//! directory (a checkout in root's home directory), the cluster lives under
//! `/var/lib/qleet/postgres/` instead and the data directory holds a symbolic link to it.

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
    password: String,
}

/// Where a cluster lives when the `postgres` account cannot reach the data directory.
const ROOT_FALLBACK_DIR: &str = "/var/lib/qleet/postgres";

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
        let password_file = dir.with_extension("password");
        let dir = prepare_dir(dir, run_as).await?;
        let fresh = !dir.join("PG_VERSION").exists();
        let password = match std::fs::read_to_string(&password_file) {
            Ok(p) if !p.trim().is_empty() => p.trim().to_owned(),
            _ => {
                let p = generate_password();
                write_private(&password_file, &p, None)?;
                p
            }
        };
        let mut pg = EmbeddedPostgres {
            dir,
            bin,
            port: 0,
            run_as,
            password,
        };
        if fresh {
            tracing::info!(dir = %pg.dir.display(), "initialising private PostgreSQL cluster");
            // initdb reads the password from a file the account it runs as can read (not in
            // the cluster's directory, which must be empty); it is removed once initdb is done.
            let pwfile = std::env::temp_dir()
                .join(format!("qleet-initdb-{}", uuid::Uuid::new_v4().simple()));
            write_private(&pwfile, &pg.password, pg.run_as)?;
            let out = pg
                .command("initdb")
                .arg("-D")
                .arg(&pg.dir)
                .arg(format!("--pwfile={}", pwfile.display()))
                .args([
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-instructions",
                ])
                .output()
                .await;
            let _ = std::fs::remove_file(&pwfile);
            check(&out?, "initdb")?;
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
        pg.require_password().await?;
        pg.ensure_database().await?;
        Ok(pg)
    }

    /// URL of the `qleet` database in this cluster.
    pub fn url(&self) -> SecretString {
        SecretString::from(self.database_url("qleet"))
    }

    fn database_url(&self, database: &str) -> String {
        // The password is alphanumeric: nothing to escape.
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// Makes sure the cluster asks for the password: a cluster initialised with `trust` (by an
    /// older Qleet) gets the superuser's password set and its `pg_hba.conf` rewritten.
    async fn require_password(&self) -> anyhow::Result<()> {
        use sqlx::Connection as _;
        let hba_file = self.dir.join("pg_hba.conf");
        let hba = std::fs::read_to_string(&hba_file)
            .with_context(|| format!("cannot read {}", hba_file.display()))?;
        let trusts = hba
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .any(|l| l.split_whitespace().last() == Some("trust"));
        if !trusts {
            return Ok(());
        }
        tracing::info!("moving the private PostgreSQL from trust to password authentication");
        let mut conn = sqlx::PgConnection::connect(&self.database_url("postgres"))
            .await
            .context("connecting to the private PostgreSQL")?;
        // ALTER ROLE takes no bind parameters; the password is alphanumeric (checked).
        anyhow::ensure!(
            self.password.chars().all(|c| c.is_ascii_alphanumeric()),
            "the password in the private PostgreSQL's password file must be alphanumeric"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "alter role postgres password '{}'",
            self.password
        )))
        .execute(&mut conn)
        .await?;
        write_private(&hba_file, HBA, self.run_as)?;
        sqlx::query_scalar!("select pg_reload_conf()")
            .fetch_one(&mut conn)
            .await?;
        conn.close().await?;
        Ok(())
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
        let mut conn = sqlx::PgConnection::connect(&self.database_url("postgres"))
            .await
            .with_context(|| {
                format!(
                    "connecting to the private PostgreSQL in {} with the password in its \
                     postgres.password file (if that file was removed, remove the cluster too)",
                    self.dir.display()
                )
            })?;
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

/// `pg_hba.conf` of the private cluster: loopback TCP only, always with a password.
const HBA: &str = "\
# Written by Qleet: the private cluster of `qleet dev` listens on loopback only and every
# connection authenticates with the password kept beside the cluster (postgres.password).
local   all   all                  scram-sha-256
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
";

/// Creates the cluster's directory (mode 0700, owned by the account PostgreSQL runs as) and
/// returns the real path PostgreSQL uses: `dir` itself, or, as root when the `postgres` account
/// cannot enter `dir`, a directory under [`ROOT_FALLBACK_DIR`] that `dir` then links to.
async fn prepare_dir(dir: &Path, run_as: Option<(u32, u32)>) -> anyhow::Result<PathBuf> {
    if dir.is_symlink() {
        // Made by an earlier start, below.
        return dir
            .canonicalize()
            .with_context(|| format!("{} links to a directory that is gone", dir.display()));
    }
    let fresh = !dir.exists();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let Some((uid, gid)) = run_as else {
        return Ok(dir);
    };
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
    if can_enter(&dir, uid, gid).await? {
        return Ok(dir);
    }
    let empty = std::fs::read_dir(&dir)?.next().is_none();
    if !(fresh || empty) {
        bail!(
            "the postgres account cannot enter {} (a parent directory is closed to it); give it              access, or move Qleet's data directory (QLEET_DATA_DIR) somewhere it can reach",
            dir.display()
        );
    }
    std::fs::remove_dir(&dir)?;
    let mut name = dir.to_string_lossy().replace('/', "-");
    name = name.trim_start_matches('-').to_owned();
    let target = Path::new(ROOT_FALLBACK_DIR).join(name);
    std::fs::create_dir_all(&target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700))?;
    std::os::unix::fs::chown(&target, Some(uid), Some(gid))?;
    std::os::unix::fs::symlink(&target, &dir)
        .with_context(|| format!("cannot link {} to {}", dir.display(), target.display()))?;
    tracing::info!(
        dir = %dir.display(),
        cluster = %target.display(),
        "the postgres account cannot enter the data directory: the private cluster lives elsewhere"
    );
    Ok(target)
}

/// Whether the account `uid`/`gid` can enter and write `dir`, asked of the kernel by running
/// `test` as that account (so ACLs and groups count).
async fn can_enter(dir: &Path, uid: u32, gid: u32) -> anyhow::Result<bool> {
    let status = Command::new("test")
        .arg("-w")
        .arg(dir)
        .arg("-a")
        .arg("-x")
        .arg(dir)
        .uid(uid)
        .gid(gid)
        .status()
        .await
        .context("running `test` as the postgres account")?;
    Ok(status.success())
}

/// A fresh 32-character alphanumeric password.
fn generate_password() -> String {
    use rand::Rng as _;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Writes `contents` to `path` readable by its owner only, owned by `owner` when given.
fn write_private(path: &Path, contents: &str, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
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
