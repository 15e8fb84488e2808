//! A PostgreSQL server of a test's own (initdb and pg_ctl in a temporary directory), for tests
//! that stop and restart the whole server under the processes using it. As root, PostgreSQL
//! runs as the `postgres` account (it refuses root), through `runuser`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

/// A running server on a loopback port of its own, trust authentication; stopped and removed
/// when dropped.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// The newest `/usr/lib/postgresql/*/bin` holding the server tools (`scripts/test.sh`
/// installs them), else the directory on PATH that has `initdb`.
fn bin_dir() -> PathBuf {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, d)| has(d))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return dir;
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).find(|d| has(d)))
        .expect("PostgreSQL's server tools (initdb, pg_ctl): run scripts/test.sh once")
}

impl Cluster {
    /// Initialises and starts a fresh server.
    pub async fn start() -> Cluster {
        let dir = std::env::temp_dir().join(format!("qleet-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        if is_root() {
            let owned = Command::new("chown")
                .arg("postgres:")
                .arg(&dir)
                .status()
                .await
                .expect("chown");
            assert!(owned.success(), "chown postgres: {}", dir.display());
        }
        let cluster = Cluster {
            dir,
            bin: bin_dir(),
            port: crate::free_port(),
        };
        let dir = cluster.dir.as_os_str();
        cluster
            .run(
                "initdb",
                &[
                    "-D".as_ref(),
                    dir,
                    "-U".as_ref(),
                    "postgres".as_ref(),
                    "--auth=trust".as_ref(),
                    "--no-instructions".as_ref(),
                ],
            )
            .await;
        cluster.start_again().await;
        cluster
    }

    /// The URL of database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name`; answers its URL.
    pub async fn database(&self, name: &str) -> String {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        self.url(name)
    }

    /// Stops the server (fast: open connections are cut, as in a restart).
    pub async fn stop(&self) {
        let dir = self.dir.as_os_str();
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                dir,
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        )
        .await;
    }

    /// Starts the (stopped) server again on the same port.
    pub async fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        let dir = self.dir.as_os_str();
        self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                dir,
                "-o".as_ref(),
                opts.as_ref(),
                "-l".as_ref(),
                log.as_os_str(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        )
        .await;
    }

    /// Runs one of the server's tools, as `postgres` when this is root; panics with its output
    /// if it fails.
    async fn run(&self, tool: &str, args: &[&OsStr]) {
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(tool));
            c
        } else {
            Command::new(self.bin.join(tool))
        };
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let mut cmd = if is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_ctl);
            c
        } else {
            std::process::Command::new(pg_ctl)
        };
        let _ = cmd
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
