//! A connection-lean control plane (issue 14): once idle it holds only its LISTEN connection
//! and sends PostgreSQL nothing, however long it waits (nothing polls); work that comes later,
//! announced or falling due, still flows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use qleet_common::telemetry::LogFormat;
use qleet_control_plane::config::{ControlPlaneAuth, ControlPlaneConfig, PoolConfig};
use qleet_test_support::cp::{ADMIN, APP, Cp, drain};
use qleet_test_support::db::{admin_url, fresh_database};
use secrecy::SecretString;
use sqlx::{Connection as _, PgConnection};
use tokio::time::Instant;
use uuid::Uuid;

/// An in-process control plane on a fresh database whose idle pooled connections close after a
/// second, observing drift every `drift`; it stops when the sender is dropped.
async fn start(drift: Duration) -> (Cp, tokio::sync::oneshot::Sender<()>) {
    let db = fresh_database().await;
    let id = Uuid::new_v4();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = ControlPlaneConfig {
        listen: addr,
        database_url: SecretString::from(db.clone()),
        id,
        auth: ControlPlaneAuth::Standalone {
            admin_token_hash: qleet_common::secrets::hash_secret(ADMIN),
        },
        log_format: LogFormat::Pretty,
        crash_at: None,
        poll_interval: None,
        drift_interval: drift,
        stop_on_stdin_eof: false,
    };
    let pool = PoolConfig {
        idle_timeout: Duration::from_secs(1),
    };
    let app = qleet_control_plane::Application::build_with_pool(config, pool, listener)
        .await
        .expect("control plane");
    let (stop, stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    (Cp::remote(format!("http://{addr}"), &db, id), stop)
}

/// The PostgreSQL server's view of one database, from a connection to another one (so that
/// watching adds nothing to what is watched).
struct Server {
    conn: PgConnection,
    db: String,
}

impl Server {
    /// Watches the database at URL `db`.
    async fn watching(db: &str) -> Server {
        let db = db.rsplit('/').next().expect("database name").to_owned();
        let conn = PgConnection::connect(&admin_url()).await.expect("admin");
        Server { conn, db }
    }

    /// Client connections to the database now.
    async fn connections(&mut self) -> i64 {
        sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = $1 and backend_type = 'client backend'",
        )
        .bind(&self.db)
        .fetch_one(&mut self.conn)
        .await
        .expect("pg_stat_activity")
    }

    /// Each client connection: its process, when it started, when its state last changed (every
    /// statement changes it) and its last statement.
    async fn sessions(&mut self) -> Vec<(i32, String, String, String)> {
        sqlx::query_as(
            "select pid, backend_start::text, coalesce(state_change::text, ''), query
             from pg_stat_activity
             where datname = $1 and backend_type = 'client backend' order by pid",
        )
        .bind(&self.db)
        .fetch_all(&mut self.conn)
        .await
        .expect("pg_stat_activity")
    }

    /// How long the least recently used client connection has been idle, in seconds.
    async fn idle_seconds(&mut self) -> f64 {
        sqlx::query_scalar(
            "select coalesce(min(extract(epoch from now() - state_change)::float8), 0)
             from pg_stat_activity
             where datname = $1 and backend_type = 'client backend' and state = 'idle'",
        )
        .bind(&self.db)
        .fetch_one(&mut self.conn)
        .await
        .expect("pg_stat_activity")
    }

    /// Transactions the database has seen (committed and rolled back), as of now: every
    /// statement outside a transaction is one. (Backends report theirs when they go idle, within
    /// a second, or when they close.)
    async fn transactions(&mut self) -> i64 {
        sqlx::query("select pg_stat_clear_snapshot()")
            .execute(&mut self.conn)
            .await
            .expect("clear snapshot");
        sqlx::query_scalar(
            "select pg_stat_get_db_xact_commit(oid) + pg_stat_get_db_xact_rollback(oid)
             from pg_database where datname = $1",
        )
        .bind(&self.db)
        .fetch_one(&mut self.conn)
        .await
        .expect("pg_stat_database")
    }

    /// Waits (30 s at most) until at most one client connection is left.
    async fn until_lean(&mut self) -> Duration {
        let started = Instant::now();
        loop {
            let n = self.connections().await;
            if n <= 1 {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "still {n} connections after 30 s: {:#?}",
                self.sessions().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Samples the database's connection count in the background; the most seen so far.
fn peak_connections(cp: &Cp) -> (Arc<AtomicI64>, Arc<AtomicBool>) {
    let peak = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (p, d) = (peak.clone(), done.clone());
    let db = cp.db.clone();
    tokio::spawn(async move {
        let mut server = Server::watching(&db).await;
        while !d.load(Ordering::SeqCst) {
            p.fetch_max(server.connections().await, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (peak, done)
}

#[tokio::test]
async fn an_idle_control_plane_holds_only_its_listen_connection_and_asks_the_database_nothing() {
    // Drift is observed every 40 s: no observation falls due while this test watches.
    let (cp, _stop) = start(Duration::from_secs(40)).await;
    let mut server = Server::watching(&cp.db).await;

    // Real work: every kind applied, reconciled, made by the (test) agent and Ready.
    let (peak, stop_sampling) = peak_connections(&cp);
    cp.apply_ok(APP).await;
    while !drain(&cp, 1).await.is_empty() {}
    cp.wait_ready(5).await;
    stop_sampling.store(true, Ordering::SeqCst);

    // Idle: the pool's connections close once unused for a second; the LISTEN stays.
    let took = server.until_lean().await;
    let sessions = server.sessions().await;
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    assert!(
        sessions[0].3.contains("LISTEN"),
        "the one left is the LISTEN connection: {sessions:#?}"
    );

    // A backend reports its transactions when it has been idle for a second, or, if it
    // reported less than a second before, after ten (PostgreSQL's PGSTAT_IDLE_INTERVAL): the
    // LISTEN connection's own start-up work (migrations...) is counted only then.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.idle_seconds().await < 11.0 {
        assert!(Instant::now() < deadline, "{:#?}", server.sessions().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // And so it stays: for longer than any loop of the old control plane slept (the reconcile
    // workers looked every 5 s, the drift watcher every tenth of its interval), no connection
    // is opened, none is used (its state would change) and no transaction reaches the database.
    let transactions = server.transactions().await;
    let window = Duration::from_secs(6);
    let until = Instant::now() + window;
    let mut most = 0;
    while Instant::now() < until {
        let n = server.connections().await;
        most = most.max(n);
        assert!(
            n <= 1,
            "a connection opened while idle: {:#?}",
            server.sessions().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.sessions().await,
        sessions,
        "the LISTEN connection was used"
    );
    // (Autovacuum, where it runs, counts its transactions in the same database.)
    let autovacuum: String = sqlx::query_scalar("show autovacuum")
        .fetch_one(&mut server.conn)
        .await
        .expect("show");
    let after = server.transactions().await;
    if autovacuum == "off" {
        assert_eq!(after, transactions, "transactions while idle");
    }
    eprintln!(
        "connections: at most {} while working; {most} while idle (lean {took:?} after the work); \
         transactions while idle for {window:?}: {}",
        peak.load(Ordering::SeqCst),
        after - transactions,
    );

    // Work that comes later flows as before: announced, reconciled, made and Ready.
    let more = format!(
        "{APP}---\nkind: ObjectStorageBucket\nmetadata: {{name: logs}}\nspec: {{account: AwsAccount/main}}\n"
    );
    let applied = cp.apply_ok(&more).await;
    assert_eq!(applied["summary"]["create"], 1, "{applied}");
    let made = drain(&cp, 5).await;
    assert!(
        made.iter()
            .any(|t| t["objectName"] == "logs" && t["operation"] == "ensure"),
        "{made:#?}"
    );
    while !drain(&cp, 1).await.is_empty() {}
    cp.wait_ready(6).await;
    // Then lean again.
    server.until_lean().await;
}

#[tokio::test]
async fn a_reconcile_that_falls_due_later_is_taken_then_without_polling() {
    let (cp, _stop) = start(qleet_control_plane::objects::drift::DEFAULT_INTERVAL).await;
    cp.apply_ok(APP).await;
    while !drain(&cp, 1).await.is_empty() {}
    cp.wait_ready(5).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while cp.sql_count("select count(*) from reconcile_queue").await > 0 {
        assert!(Instant::now() < deadline, "never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Two requests, announced but not due yet: one backing off for 2 s, one claimed for 3 s by
    // another process (which then vanished). No notification comes when either falls due.
    let mut conn = PgConnection::connect(&cp.db).await.expect("db");
    let mut tx = conn.begin().await.expect("tx");
    sqlx::query(
        "insert into reconcile_queue (object_id, not_before, attempts)
         select id, now() + interval '2 seconds', 1 from objects where name = 'assets'",
    )
    .execute(&mut *tx)
    .await
    .expect("backing off");
    sqlx::query(
        "insert into reconcile_queue (object_id, claimed_until, claimed_by)
         select id, now() + interval '3 seconds', gen_random_uuid() from objects where name = 'db'",
    )
    .execute(&mut *tx)
    .await
    .expect("claimed elsewhere");
    sqlx::query("select pg_notify('qleet_reconcile', '')")
        .execute(&mut *tx)
        .await
        .expect("notify");
    tx.commit().await.expect("commit");

    // Each is reconciled (and its request removed) once it falls due.
    let deadline = Instant::now() + Duration::from_secs(20);
    while cp.sql_count("select count(*) from reconcile_queue").await > 0 {
        assert!(
            Instant::now() < deadline,
            "not taken when due: {} left",
            cp.sql_count("select count(*) from reconcile_queue").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
