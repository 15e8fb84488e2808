//! `qleet dev` on a machine without DATABASE_URL: it runs its own PostgreSQL, serves the UI,
//! stops the database on exit and reuses it on the next start.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

async fn start(data_dir: &Path, port: u16) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qleet"))
        .arg("dev")
        .env_remove("DATABASE_URL")
        .env("QLEET_DATA_DIR", data_dir)
        .env("QLEET_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn qleet dev");
    let line = qleet_test_support::qleet_dev_serving(&mut child).await;
    (child, line)
}

async fn stop(mut child: Child) {
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("exit in time")
        .expect("wait");
    assert!(exit.success(), "qleet dev exited with {exit}");
}

#[tokio::test]
async fn qleet_dev_without_database_url_runs_its_own_postgres_and_serves_the_ui() {
    let data_dir =
        std::env::temp_dir().join(format!("qleet-dev-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let port = qleet_test_support::free_port();
    let (child, line) = start(&data_dir, port).await;
    let url = format!("http://127.0.0.1:{port}");
    assert!(line.contains(&url), "{line}");
    assert!(
        data_dir.join("postgres/PG_VERSION").exists(),
        "cluster initialised under the data dir"
    );
    let http = reqwest::Client::new();
    let page = http
        .get(format!("{url}/signin"))
        .send()
        .await
        .expect("signin page");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(
        html.contains("Qleet") && html.contains("Development sign-in"),
        "{html}"
    );
    assert_eq!(
        http.get(format!("{url}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status(),
        200
    );
    stop(child).await;
    assert!(
        !data_dir.join("postgres/postmaster.pid").exists(),
        "PostgreSQL stopped on exit"
    );

    // The next start reuses the cluster and its data.
    let port = qleet_test_support::free_port();
    let (child, _) = start(&data_dir, port).await;
    let url = format!("http://127.0.0.1:{port}");
    let signed_in = http
        .post(format!("{url}/auth/dev"))
        .form(&[("email", "dev@example.test")])
        .send()
        .await
        .expect("dev sign-in");
    assert!(signed_in.status().is_success() || signed_in.status().is_redirection());
    stop(child).await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Runs `qleet ARGS` with a clean environment and returns (exit code, stdout, stderr).
fn qleet(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qleet"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("run qleet");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_stops_qleet_with_a_one_line_reason() {
    let db = "postgres://postgres@127.0.0.1:1/none";
    for (args, env, expect) in [
        (
            vec!["serve"],
            vec![("DATABASE_URL", db)],
            "QLEET_PUBLIC_URL",
        ),
        (
            vec!["serve"],
            vec![
                ("DATABASE_URL", db),
                ("QLEET_PUBLIC_URL", "http://qleet.example.com"),
            ],
            "must use https",
        ),
        (
            vec!["serve"],
            vec![
                ("DATABASE_URL", "mysql://x"),
                ("QLEET_PUBLIC_URL", "https://q.example.com"),
            ],
            "DATABASE_URL must start with postgres://",
        ),
        (
            vec!["dev"],
            vec![("QLEET_OIDC_PROVIDERS", "[{\"id\":\"Bad Id\"}]")],
            "QLEET_OIDC_PROVIDERS",
        ),
        (
            vec!["dev"],
            vec![("QLEET_LISTEN", "nonsense")],
            "QLEET_LISTEN",
        ),
        (
            vec!["migrate"],
            vec![("DATABASE_URL", db)],
            "cannot connect to the management database",
        ),
    ] {
        let (code, _, stderr) = qleet(&args, &env);
        assert_ne!(code, 0, "{args:?} {env:?} should fail");
        assert!(
            stderr.contains(expect),
            "{args:?} {env:?}: expected {expect:?} in {stderr:?}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    }
}

#[tokio::test]
async fn qleet_migrate_applies_the_migrations_and_is_idempotent() {
    let db = crate::support::fresh_database().await;
    for _ in 0..2 {
        let (code, stdout, stderr) = qleet(&["migrate"], &[("DATABASE_URL", &db)]);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("up to date"), "{stdout}");
    }
    let pool = sqlx::PgPool::connect(&db).await.expect("connect");
    let tables: i64 = sqlx::query_scalar(
        "select count(*) from information_schema.tables where table_name in ('users', 'organizations', 'audit_log')",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(tables, 3);
}

#[test]
fn qleet_schema_prints_the_committed_sdl() {
    let (code, stdout, _) = qleet(&["schema"], &[]);
    assert_eq!(code, 0);
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .expect("schema");
    assert_eq!(stdout, committed);
}

/// The port a running cluster listens on, from line 4 of its `postmaster.pid`.
fn cluster_port(cluster: &Path) -> u16 {
    let pid_file = std::fs::read_to_string(cluster.join("postmaster.pid")).expect("postmaster.pid");
    pid_file
        .lines()
        .nth(3)
        .expect("port line")
        .trim()
        .parse()
        .expect("port")
}

async fn connects(url: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection as _;
    sqlx::PgConnection::connect(url).await?.close().await
}

#[tokio::test]
async fn qleet_dev_s_postgres_wants_its_generated_password_even_from_a_closed_home() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    // A home directory nobody else may enter (as root's is): as root, PostgreSQL runs as the
    // `postgres` account, which cannot reach a cluster under it.
    let home =
        std::env::temp_dir().join(format!("qleet-dev-home-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&home).expect("home");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let data_dir = home.join("checkout/.qleet");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let cluster = data_dir.join("postgres");
    let password_file = data_dir.join("postgres.password");

    let (child, _) = start(&data_dir, qleet_test_support::free_port()).await;
    let meta = std::fs::metadata(&password_file).expect("password file");
    assert_eq!(meta.mode() & 0o777, 0o600, "the password file is private");
    let password = std::fs::read_to_string(&password_file).expect("password");
    assert!(password.len() >= 32, "a generated password");
    let port = cluster_port(&cluster);
    let root = std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0;
    if root {
        let target = std::fs::read_link(&cluster).expect("as root the cluster is linked");
        assert!(
            target.starts_with("/var/lib/qleet/postgres"),
            "{}",
            target.display()
        );
    }
    let base = format!("127.0.0.1:{port}/postgres");
    assert!(
        connects(&format!("postgres://postgres@{base}"))
            .await
            .is_err(),
        "no password, no connection"
    );
    assert!(
        connects(&format!("postgres://postgres:wrong@{base}"))
            .await
            .is_err()
    );
    connects(&format!("postgres://postgres:{password}@{base}"))
        .await
        .expect("the generated password lets Qleet in");
    stop(child).await;

    // A cluster made by an older Qleet trusted every local user: its next start moves it to a
    // (new) password.
    let hba = cluster.join("pg_hba.conf");
    std::fs::write(&hba, "host all all 127.0.0.1/32 trust\n").expect("trusting pg_hba.conf");
    std::fs::remove_file(&password_file).expect("forget the password");
    let (child, _) = start(&data_dir, qleet_test_support::free_port()).await;
    let new_password = std::fs::read_to_string(&password_file).expect("new password");
    assert_ne!(new_password, password);
    let base = format!("127.0.0.1:{}/postgres", cluster_port(&cluster));
    assert!(
        connects(&format!("postgres://postgres@{base}"))
            .await
            .is_err(),
        "trust is gone"
    );
    connects(&format!("postgres://postgres:{new_password}@{base}"))
        .await
        .expect("the new password lets Qleet in");
    stop(child).await;

    if root && let Ok(target) = std::fs::read_link(&cluster) {
        let _ = std::fs::remove_dir_all(target);
    }
    let _ = std::fs::remove_dir_all(&home);
}
