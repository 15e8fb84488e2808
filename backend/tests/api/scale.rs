//! Issue 14: the hot path's cache stays as current as the database, provisioning runs in
//! parallel from a pre-migrated template, and tenant databases are placed on a set of
//! PostgreSQL servers (two real clusters here), with full servers skipped and said so.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection as _;
use uuid::Uuid;

use crate::fleet::{create, wait_for};
use crate::support::{Auth, TestApp, error_code, spawn_app, spawn_app_with, unlimited};

/// How long a change may take to reach every request (the bound).
const WITHIN: Duration = Duration::from_secs(1);

/// Sends requests until `refused` says one was refused; panics if that takes longer than
/// [`WITHIN`].
async fn refused_within_a_second<F, Fut>(mut request: F, refused: impl Fn(u16, &Value) -> bool)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (u16, Value)>,
{
    let started = Instant::now();
    loop {
        let (code, body) = request().await;
        if refused(code, &body) {
            return;
        }
        assert!(
            started.elapsed() < WITHIN,
            "still let through {:?} after the change: {code} {body}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const CP_ID: &str = "{ controlPlane { id viewer { role } } }";

async fn through_as(app: &TestApp, auth: Auth<'_>, id: Uuid) -> (u16, Value) {
    app.gateway(auth, id, "graphql", json!({ "query": CP_ID }))
        .await
}

#[tokio::test]
async fn changes_made_behind_the_servers_back_reach_cached_requests_within_a_second() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let bob = app
        .add_member(&alice, "acme", "bob@example.test", "MEMBER")
        .await;
    let token = app.create_token(&alice, "acme", "MEMBER").await;
    let id = create(&app, &alice, "acme", "prod").await;
    wait_for(&app, &alice, "acme", id, "READY").await;
    // Warm: the same request twice answers from the cache the second time.
    for _ in 0..2 {
        let (code, body) = through_as(&app, Auth::Token(&token), id).await;
        assert_eq!(code, 200, "{body}");
        let (code, body) = through_as(&app, Auth::Session(&bob), id).await;
        assert_eq!(body["data"]["controlPlane"]["viewer"]["role"], "MEMBER");
        assert_eq!(code, 200, "{body}");
    }

    // What another replica, an operator or a cascade would do: straight in the database.
    sqlx::query("update memberships set role = 'viewer' where user_id = (select id from users where email = 'bob@example.test')")
        .execute(&app.pool)
        .await
        .expect("lower bob");
    refused_within_a_second(
        || through_as(&app, Auth::Session(&bob), id),
        |_, body| body["data"]["controlPlane"]["viewer"]["role"] == "VIEWER",
    )
    .await;
    sqlx::query("delete from memberships where user_id = (select id from users where email = 'bob@example.test')")
        .execute(&app.pool)
        .await
        .expect("remove bob");
    refused_within_a_second(
        || through_as(&app, Auth::Session(&bob), id),
        |code, _| code == 404,
    )
    .await;

    sqlx::query("update api_tokens set revoked_at = now()")
        .execute(&app.pool)
        .await
        .expect("revoke the token");
    refused_within_a_second(
        || through_as(&app, Auth::Token(&token), id),
        |code, _| code == 401,
    )
    .await;
    let me = || async {
        let body = app
            .gql(Auth::Token(&token), "{ me { email } }", json!({}))
            .await;
        (200, body)
    };
    refused_within_a_second(me, |_, body| {
        error_code(body).as_deref() == Some("UNAUTHENTICATED")
    })
    .await;

    // The control plane's own record: held by billing behind the server's back.
    let (code, body) = through_as(&app, Auth::Session(&alice), id).await;
    assert_eq!(code, 200, "{body}");
    sqlx::query("update control_planes set billing_hold = true where id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .expect("hold");
    refused_within_a_second(
        || through_as(&app, Auth::Session(&alice), id),
        |code, body| code == 402 && body["error"]["code"] == "SUBSCRIPTION_PAST_DUE",
    )
    .await;
}

#[tokio::test]
async fn the_cache_is_not_trusted_while_its_notifications_are_away() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let token = app.create_token(&alice, "acme", "VIEWER").await;
    let me = || app.gql(Auth::Token(&token), "{ me { email } }", json!({}));
    assert_eq!(me().await["data"]["me"]["email"], "alice@example.test");
    // The listener's connection is cut (a database restart, a network blip); a revocation
    // made meanwhile is not heard, so nothing cached may be used until it is back.
    let cut: Vec<i32> = sqlx::query_scalar(
        "select pg_terminate_backend(pid)::int from pg_stat_activity
         where datname = current_database() and query ilike 'listen%' and pid <> pg_backend_pid()",
    )
    .fetch_all(&app.pool)
    .await
    .expect("cut the listener");
    assert!(
        !cut.is_empty(),
        "the management plane listens for access changes"
    );
    sqlx::query("update api_tokens set revoked_at = now()")
        .execute(&app.pool)
        .await
        .expect("revoke");
    refused_within_a_second(
        || async { (200, me().await) },
        |_, body| error_code(body).as_deref() == Some("UNAUTHENTICATED"),
    )
    .await;
    // Back to normal afterwards: a new token works, and its revocation is heard again.
    let token = app.create_token(&alice, "acme", "VIEWER").await;
    let me = || app.gql(Auth::Token(&token), "{ me { email } }", json!({}));
    for _ in 0..3 {
        assert_eq!(me().await["data"]["me"]["email"], "alice@example.test");
    }
    sqlx::query("update api_tokens set revoked_at = now()")
        .execute(&app.pool)
        .await
        .expect("revoke");
    refused_within_a_second(
        || async { (200, me().await) },
        |_, body| error_code(body).as_deref() == Some("UNAUTHENTICATED"),
    )
    .await;
}

/// The objects of database `db` (on the server `server`) that its tenant role does not own.
async fn foreign_objects(server: &str, db: &str, tenant: &str) -> Vec<String> {
    let mut url = url::Url::parse(server).expect("url");
    url.set_path(db);
    let mut conn = sqlx::PgConnection::connect(url.as_str())
        .await
        .expect("tenant database");
    sqlx::query_scalar(
        "select c.relname::text || ' (' || pg_get_userbyid(c.relowner) || ')' from pg_class c
         join pg_namespace n on n.oid = c.relnamespace
         where n.nspname in ('public') and c.relkind in ('r', 'S', 'v')
           and pg_get_userbyid(c.relowner) <> $1
         union all
         select n.nspname::text || ' (' || pg_get_userbyid(n.nspowner) || ')' from pg_namespace n
         where n.nspname not like 'pg\\_%' and n.nspname not in ('information_schema', 'public', 'qleet_audit')
           and pg_get_userbyid(n.nspowner) <> $1",
    )
    .bind(tenant)
    .fetch_all(&mut conn)
    .await
    .expect("owners")
}

#[tokio::test]
async fn control_planes_asked_for_at_once_are_provisioned_together_from_the_template() {
    let app = spawn_app_with(unlimited).await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let started = Instant::now();
    let names: Vec<String> = (0..6).map(|i| format!("cp-{i}")).collect();
    let ids =
        futures::future::join_all(names.iter().map(|n| create(&app, &alice, "acme", n))).await;
    for id in &ids {
        wait_for(&app, &alice, "acme", *id, "READY").await;
    }
    eprintln!("6 control planes READY after {:?}", started.elapsed());
    // Provisioned side by side: their provisioning spans overlap.
    let overlapping: i64 = sqlx::query_scalar(
        "select count(*) from control_plane_events a join control_plane_events b
           on a.control_plane_id <> b.control_plane_id
         where a.to_status = 'provisioning' and b.to_status = 'provisioning'
           and a.at < (select at from control_plane_events r where r.control_plane_id = b.control_plane_id and r.to_status = 'ready')
           and b.at < (select at from control_plane_events r where r.control_plane_id = a.control_plane_id and r.to_status = 'ready')
           and a.control_plane_id = any($1) and b.control_plane_id = any($1)",
    )
    .bind(&ids)
    .fetch_one(&app.pool)
    .await
    .expect("overlap");
    assert!(overlapping > 0, "no two provisionings overlapped");

    let server = qleet_test_support::db::admin_url();
    let template = qleet::fleet::template::name();
    let mut admin = sqlx::PgConnection::connect(&server).await.expect("server");
    let is_template: bool =
        sqlx::query_scalar("select datistemplate from pg_database where datname = $1")
            .bind(&template)
            .fetch_one(&mut admin)
            .await
            .expect("the template exists");
    assert!(is_template);
    let migrations = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../migrations/control-plane"
    ))
    .expect("migrations")
    .count() as i64;
    for id in &ids {
        let name = format!("qleet_cp_{}", id.simple());
        // A copy of the template, owned through and through by its tenant, fully migrated.
        assert_eq!(
            foreign_objects(&server, &name, &name).await,
            Vec::<String>::new(),
            "{name}"
        );
        let mut url = url::Url::parse(&server).expect("url");
        url.set_path(&name);
        let mut conn = sqlx::PgConnection::connect(url.as_str())
            .await
            .expect("tenant database");
        let applied: i64 =
            sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
                .fetch_one(&mut conn)
                .await
                .expect("migrations");
        assert_eq!(applied, migrations, "{name}");
        // The tenant writes to it as the owner it is.
        let apply = json!({
            "query": "mutation($y: String!) { apply(yaml: $y) { summary { create } } }",
            "variables": { "y": qleet_test_support::cp::APP },
        });
        let (code, body) = app
            .gateway(Auth::Session(&alice), id, "graphql", apply)
            .await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["data"]["apply"]["summary"]["create"], 5, "{body}");
    }
}

/// A second, private PostgreSQL cluster for the duration of a test.
struct SecondCluster {
    pg: qleet::embedded_pg::EmbeddedPostgres,
    dir: std::path::PathBuf,
}

impl SecondCluster {
    async fn start() -> SecondCluster {
        let dir = std::env::temp_dir().join(format!("qleet-pg2-{}", Uuid::new_v4().simple()));
        let pg = qleet::embedded_pg::EmbeddedPostgres::start(&dir)
            .await
            .expect("a second PostgreSQL cluster");
        SecondCluster { pg, dir }
    }

    fn url(&self) -> String {
        use secrecy::ExposeSecret as _;
        self.pg.url().expose_secret().to_owned()
    }

    async fn stop(self) {
        let _ = self.pg.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn has_database(server: &str, db: &str) -> bool {
    let mut conn = sqlx::PgConnection::connect(server).await.expect("server");
    sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(db)
        .fetch_one(&mut conn)
        .await
        .expect("pg_database")
}

async fn server_of(app: &TestApp, id: Uuid) -> Option<String> {
    sqlx::query_scalar(
        "select s.name from control_planes c join database_servers s on s.id = c.server_id where c.id = $1",
    )
    .bind(id)
    .fetch_optional(&app.pool)
    .await
    .expect("server of")
}

async fn status_reason(app: &TestApp, id: Uuid) -> (String, Option<String>) {
    sqlx::query_as("select status, status_reason from control_planes where id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .expect("status")
}

/// Waits (60 s at most) until the control plane's status reason says `what`.
async fn reason_says(app: &TestApp, id: Uuid, what: &str) -> String {
    for _ in 0..600 {
        if let (status, Some(reason)) = status_reason(app, id).await
            && reason.contains(what)
        {
            assert_eq!(status, "provisioning", "{reason}");
            return reason;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never said {what:?}: {:?}", status_reason(app, id).await);
}

#[tokio::test]
async fn tenant_databases_go_to_the_least_loaded_server_with_room_and_stay_there() {
    use qleet::fleet::servers;
    let second = SecondCluster::start().await;
    let app = spawn_app_with(unlimited).await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let keys = app.keys();
    let main = qleet_test_support::db::admin_url();
    let url = |u: &str| secrecy::SecretString::from(u.to_owned());
    servers::add(&app.pool, &keys, "alpha", &url(&main), 2)
        .await
        .expect("alpha");
    servers::add(&app.pool, &keys, "beta", &url(&second.url()), 1)
        .await
        .expect("beta");
    let db = |id: Uuid| format!("qleet_cp_{}", id.simple());
    let on = |name: &str| -> String {
        match name {
            "alpha" => main.clone(),
            _ => second.url(),
        }
    };

    // Least loaded first (ties by name): alpha, beta, then alpha again (beta is full).
    let mut ids = Vec::new();
    for (n, want) in [("one", "alpha"), ("two", "beta"), ("three", "alpha")] {
        let id = create(&app, &alice, "acme", n).await;
        wait_for(&app, &alice, "acme", id, "READY").await;
        assert_eq!(server_of(&app, id).await.as_deref(), Some(want), "{n}");
        assert!(has_database(&on(want), &db(id)).await, "{n} on {want}");
        let other = if want == "alpha" { "beta" } else { "alpha" };
        assert!(
            !has_database(&on(other), &db(id)).await,
            "{n} not on {other}"
        );
        let (code, body) = app
            .gateway(
                Auth::Session(&alice),
                id,
                "graphql",
                json!({ "query": CP_ID }),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        ids.push(id);
    }

    // Both full: the control plane waits, saying why.
    let four = create(&app, &alice, "acme", "four").await;
    let reason = reason_says(&app, four, "no database server has room").await;
    assert!(reason.contains("alpha (full, 2/2)"), "{reason}");
    assert!(reason.contains("beta (full, 1/1)"), "{reason}");
    servers::set_capacity(&app.pool, "beta", 2)
        .await
        .expect("room on beta");
    wait_for(&app, &alice, "acme", four, "READY").await;
    assert_eq!(server_of(&app, four).await.as_deref(), Some("beta"));

    // Draining: nothing new goes there, what is there stays and works.
    servers::set_draining(&app.pool, "beta", true)
        .await
        .expect("drain");
    servers::set_capacity(&app.pool, "beta", 10)
        .await
        .expect("capacity");
    let five = create(&app, &alice, "acme", "five").await;
    let reason = reason_says(&app, five, "no database server has room").await;
    assert!(reason.contains("beta (draining)"), "{reason}");
    servers::set_capacity(&app.pool, "alpha", 3)
        .await
        .expect("room on alpha");
    wait_for(&app, &alice, "acme", five, "READY").await;
    assert_eq!(server_of(&app, five).await.as_deref(), Some("alpha"));
    for id in [ids[1], four] {
        assert_eq!(server_of(&app, id).await.as_deref(), Some("beta"));
        let (code, body) = app
            .gateway(
                Auth::Session(&alice),
                id,
                "graphql",
                json!({ "query": CP_ID }),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }

    // A deleted control plane's database goes from the server it was on.
    let delete = "mutation($o: String!, $id: UUID!, $c: String!) { deleteControlPlane(org: $o, id: $id, confirmName: $c) { status } }";
    app.gql_ok(
        Auth::Session(&alice),
        delete,
        json!({ "o": "acme", "id": four, "c": "four" }),
    )
    .await;
    wait_for(&app, &alice, "acme", four, "DELETED").await;
    assert!(!has_database(&second.url(), &db(four)).await);
    let err = servers::remove(&app.pool, "beta")
        .await
        .expect_err("beta holds one");
    assert_eq!(err.code(), "CONFLICT");
    app.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_database_server_with_no_free_connections_is_passed_over_and_said_so() {
    use qleet::fleet::servers;
    let second = SecondCluster::start().await;
    let app = spawn_app_with(unlimited).await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let keys = app.keys();
    let url = |u: &str| secrecy::SecretString::from(u.to_owned());
    // Registered while it has room; then every connection it allows is taken.
    servers::add(&app.pool, &keys, "a-full", &url(&second.url()), 10)
        .await
        .expect("a-full");
    servers::add(
        &app.pool,
        &keys,
        "b-main",
        &url(&qleet_test_support::db::admin_url()),
        10,
    )
    .await
    .expect("b-main");
    let mut held = Vec::new();
    let refusal = loop {
        match sqlx::PgConnection::connect(&second.url()).await {
            Ok(conn) => held.push(conn),
            Err(e) => break e.to_string(),
        }
        assert!(held.len() < 1000, "the second cluster never filled up");
    };
    assert!(refusal.contains("too many"), "{refusal}");

    // Placed on a-full first (the names tie-break), refused there, placed on b-main.
    let one = create(&app, &alice, "acme", "one").await;
    wait_for(&app, &alice, "acme", one, "READY").await;
    assert_eq!(server_of(&app, one).await.as_deref(), Some("b-main"));
    let listed = servers::find(&app.pool, "a-full").await.expect("a-full");
    assert!(
        listed.unavailable_until.is_some()
            && listed
                .unavailable_reason
                .as_deref()
                .is_some_and(|r| r.contains("too many")),
        "{listed:?}"
    );
    assert_eq!(listed.control_planes, 0);

    // With nowhere else to go it waits, saying which server is full and why, and goes on once
    // there is room.
    servers::set_draining(&app.pool, "b-main", true)
        .await
        .expect("drain");
    let two = create(&app, &alice, "acme", "two").await;
    let reason = reason_says(&app, two, "no database server has room").await;
    assert!(
        reason.contains("a-full (refusing connections: ") && reason.contains("too many"),
        "{reason}"
    );
    assert!(reason.contains("b-main (draining)"), "{reason}");
    held.clear();
    wait_for(&app, &alice, "acme", two, "READY").await;
    assert_eq!(server_of(&app, two).await.as_deref(), Some("a-full"));
    app.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn the_database_servers_command_manages_the_set_and_refuses_bad_input_in_one_line() {
    let app = spawn_app().await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_qleet"))
            .arg("database-servers")
            .args(args)
            .env("DATABASE_URL", &app.db_url)
            .env("QLEET_SECRET_KEY", app.secret())
            .output()
            .expect("qleet database-servers");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let main = qleet_test_support::db::admin_url();
    let (code, out, err) = run(&["add", "main-1", "--url", &main, "--capacity", "50"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("main-1") && out.contains("50") && out.contains("open"),
        "{out}"
    );
    let (code, out, _) = run(&["drain", "main-1"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("draining"), "{out}");
    let (_, out, _) = run(&["list"]);
    assert!(out.contains("main-1") && out.contains("draining"), "{out}");
    let (code, out, _) = run(&["undrain", "main-1"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("open"), "{out}");
    // The URL is stored encrypted, never as written.
    let stored: Vec<u8> = sqlx::query_scalar("select admin_url_enc from database_servers")
        .fetch_one(&app.pool)
        .await
        .expect("stored");
    assert!(!String::from_utf8_lossy(&stored).contains("postgres://"));

    for (args, says) in [
        (
            vec!["add", "Bad Name", "--url", &main, "--capacity", "1"],
            "name",
        ),
        (
            vec!["add", "x", "--url", "http://nope", "--capacity", "1"],
            "postgres://",
        ),
        (
            vec![
                "add",
                "y",
                "--url",
                "postgres://127.0.0.1:1/x",
                "--capacity",
                "1",
            ],
            "cannot connect",
        ),
        (
            vec!["add", "main-1", "--url", &main, "--capacity", "1"],
            "exists already",
        ),
        (
            vec!["add", "z", "--url", &main, "--capacity=-1"],
            "capacity",
        ),
        (vec!["drain", "nobody"], "not found"),
    ] {
        let (code, out, err) = run(&args);
        assert_ne!(code, Some(0), "{args:?}: {out}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (code, _, err) = run(&["remove", "main-1"]);
    assert_eq!(code, Some(0), "{err}");
    let (_, out, _) = run(&["list"]);
    assert!(!out.contains("main-1"), "{out}");
}

#[tokio::test]
async fn provisioning_that_cannot_finish_ends_failed_with_its_reason_and_resuming_tries_again() {
    use qleet::fleet::servers;
    let second = SecondCluster::start().await;
    let app = spawn_app_with(|c| {
        c.provisioning_timeout = Duration::from_secs(3);
    })
    .await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    servers::add(
        &app.pool,
        &app.keys(),
        "only",
        &secrecy::SecretString::from(second.url()),
        5,
    )
    .await
    .expect("only");
    let mut held = Vec::new();
    while let Ok(conn) = sqlx::PgConnection::connect(&second.url()).await {
        held.push(conn);
        assert!(held.len() < 1000, "the second cluster never filled up");
    }
    let id = create(&app, &alice, "acme", "stuck").await;
    let failed = wait_for(&app, &alice, "acme", id, "FAILED").await;
    let reason = failed["statusReason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.starts_with("provisioning did not finish within 3 s: ") && reason.contains("only"),
        "{reason}"
    );
    assert!(
        failed["events"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too many") || m.contains("no database server")),
        "{failed}"
    );
    // Nothing was made on the full server, and the gateway says why it cannot help.
    assert!(
        !has_database(
            &qleet_test_support::db::admin_url(),
            &format!("qleet_cp_{}", id.simple())
        )
        .await
    );
    let (code, body) = app
        .gateway(
            Auth::Session(&alice),
            id,
            "graphql",
            json!({ "query": CP_ID }),
        )
        .await;
    assert_eq!(
        (code, &body["error"]["code"]),
        (503, &json!("CONTROL_PLANE_FAILED")),
        "{body}"
    );

    held.clear();
    // The unavailability the refusal left is over after a while; resuming tries again.
    sqlx::query("update database_servers set unavailable_until = null")
        .execute(&app.pool)
        .await
        .expect("forget the refusal");
    let resume =
        "mutation($o: String!, $id: UUID!) { resumeControlPlane(org: $o, id: $id) { status } }";
    let resumed = app
        .gql_ok(
            Auth::Session(&alice),
            resume,
            json!({ "o": "acme", "id": id }),
        )
        .await;
    assert_eq!(resumed["resumeControlPlane"]["status"], "PENDING");
    wait_for(&app, &alice, "acme", id, "READY").await;
    assert_eq!(server_of(&app, id).await.as_deref(), Some("only"));
    app.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn bodies_stream_through_the_gateway_and_the_request_limit_still_holds() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let token = app.create_token(&alice, "acme", "MEMBER").await;
    let id = create(&app, &alice, "acme", "prod").await;
    wait_for(&app, &alice, "acme", id, "READY").await;
    let post = |body: reqwest::Body| {
        app.http
            .post(format!("{}/cp/{id}/graphql", app.url))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // A body sent in pieces, with no length given, arrives whole.
    let query = serde_json::to_vec(&json!({ "query": "{ controlPlane { id } }" })).expect("json");
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        query.chunks(7).map(|c| Ok(c.to_vec())).collect();
    let resp = post(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .await
        .expect("streamed");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["data"]["controlPlane"]["id"], id.to_string(), "{body}");
    // Past the server's 1 MiB, streamed without a length: refused as too large, not passed on.
    let big: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..24).map(|_| Ok(vec![b' '; 64 * 1024])).collect();
    let resp = post(reqwest::Body::wrap_stream(futures::stream::iter(big)))
        .await
        .expect("sent");
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(body["error"]["code"], "INPUT_TOO_LARGE", "{body}");
}
