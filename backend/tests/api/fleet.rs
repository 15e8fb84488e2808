//! Per-tenant control planes with the process driver, end to end against real PostgreSQL and
//! real child processes: provisioning, the gateway, supervision, restarts, isolation,
//! hibernation, suspension and deletion.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection as _;
use uuid::Uuid;

use crate::support::{Auth, Session, TestApp, error_code, spawn_app, spawn_app_with};

const CREATE: &str =
    "mutation($o: String!, $n: String!) { createControlPlane(org: $o, name: $n) { id status } }";
const STATUS: &str = "query($o: String!, $id: UUID!) { organization(slug: $o) { controlPlane(id: $id) { status statusReason events { from to message } } } }";

pub(crate) async fn create(app: &TestApp, who: &Session, org: &str, name: &str) -> Uuid {
    let data = app
        .gql_ok(Auth::Session(who), CREATE, json!({ "o": org, "n": name }))
        .await;
    data["createControlPlane"]["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid")
}

async fn status(app: &TestApp, who: &Session, org: &str, id: Uuid) -> Value {
    app.gql_ok(Auth::Session(who), STATUS, json!({ "o": org, "id": id }))
        .await["organization"]["controlPlane"]
        .clone()
}

/// Polls until the control plane reaches `want` (60 s at most).
pub(crate) async fn wait_for(
    app: &TestApp,
    who: &Session,
    org: &str,
    id: Uuid,
    want: &str,
) -> Value {
    for _ in 0..600 {
        let cp = status(app, who, org, id).await;
        if cp["status"] == want {
            return cp;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "control plane {id} never reached {want}: {}",
        status(app, who, org, id).await
    );
}

/// The settings of one management plane that a test stops and starts again: database `db_url`,
/// and the same data dir and master secret each time.
fn one_instance(db_url: String) -> impl Fn(&mut qleet::config::Config) + Clone {
    let data_dir = std::env::temp_dir().join(format!("qleet-restart-{}", Uuid::new_v4().simple()));
    let secret = qleet::keys::Keys::generate_secret();
    move |c| {
        c.database = qleet::config::Database::Url(secrecy::SecretString::from(db_url.clone()));
        c.data_dir = data_dir.clone();
        c.secret_key = secrecy::SecretString::from(secret.clone());
    }
}

/// A GraphQL request to the control plane through the gateway.
async fn through_gateway(app: &TestApp, auth: Auth<'_>, id: Uuid) -> (u16, Value) {
    let query = json!({ "query": "{ controlPlane { id viewer { kind role } } }" });
    app.gateway(auth, id, "graphql", query).await
}

fn pid_file(app: &TestApp, id: Uuid) -> std::path::PathBuf {
    app.data_dir.join("run").join(format!("{id}.pid"))
}

fn pid(app: &TestApp, id: Uuid) -> Option<u32> {
    std::fs::read_to_string(pid_file(app, id))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Processes running as control plane `id` (by their environment).
pub(crate) fn processes_of(id: Uuid) -> usize {
    let needle = format!("QLEET_CP_ID={id}");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read(e.path().join("environ"))
                .map(|env| {
                    String::from_utf8_lossy(&env)
                        .split('\0')
                        .any(|v| v == needle)
                })
                .unwrap_or(false)
        })
        .count()
}

async fn count(app: &TestApp, sql: &str, name: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(name)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

/// How many PostgreSQL databases and roles are named `name` (a control plane's tenant).
async fn database_and_role(app: &TestApp, name: &str) -> (i64, i64) {
    (
        count(
            app,
            "select count(*) from pg_database where datname = $1",
            name,
        )
        .await,
        count(
            app,
            "select count(*) from pg_roles where rolname = $1",
            name,
        )
        .await,
    )
}

#[tokio::test]
async fn a_control_plane_is_provisioned_reached_through_the_gateway_and_supervised() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let id = create(&app, &alice, "acme", "prod").await;
    let cp = wait_for(&app, &alice, "acme", id, "READY").await;
    let path: Vec<(String, String)> = cp["events"]
        .as_array()
        .expect("events")
        .iter()
        .rev()
        .map(|e| {
            (
                e["from"].as_str().unwrap_or("-").to_owned(),
                e["to"].as_str().expect("to").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        path,
        [
            ("-", "PENDING"),
            ("PENDING", "PROVISIONING"),
            ("PROVISIONING", "READY")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    // Its own database and role, closed to everyone else.
    let db = format!("qleet_cp_{}", id.simple());
    assert_eq!(database_and_role(&app, &db).await, (1, 1));
    let password: Vec<u8> =
        sqlx::query_scalar("select db_password_enc from control_planes where id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .expect("row");
    assert!(
        !String::from_utf8_lossy(&password).contains("qleet"),
        "password is stored encrypted"
    );

    // Through the gateway, as a session and as a token.
    let (code, body) = through_gateway(&app, Auth::Session(&alice), id).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["controlPlane"]["id"], id.to_string());
    assert_eq!(
        body["data"]["controlPlane"]["viewer"],
        json!({ "kind": "user", "role": "OWNER" })
    );
    let token = app.create_token(&alice, "acme", "VIEWER").await;
    let (_, body) = through_gateway(&app, Auth::Token(&token), id).await;
    assert_eq!(
        body["data"]["controlPlane"]["viewer"],
        json!({ "kind": "token", "role": "VIEWER" }),
        "{body}"
    );

    // kill -9 the control plane: the supervisor brings it back.
    let first = pid(&app, id).expect("pid file");
    assert_eq!(processes_of(id), 1);
    std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .expect("kill");
    let mut restarted = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(p) = pid(&app, id).filter(|p| *p != first) {
            restarted = Some(p);
            break;
        }
    }
    assert!(restarted.is_some(), "a new process was started");
    let (code, body) = through_gateway(&app, Auth::Session(&alice), id).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(processes_of(id), 1, "exactly one process");
    app.stop().await;
    assert_eq!(
        processes_of(id),
        0,
        "control planes stop with the management plane"
    );
}

#[tokio::test]
async fn a_management_restart_mid_provisioning_still_ends_ready_without_duplicates() {
    let db_url = crate::support::fresh_database().await;
    let configure = one_instance(db_url.clone());
    let first = spawn_app_with(configure.clone()).await;
    let alice = first.sign_in("alice@example.test").await;
    first.create_org(&alice, "acme").await;
    let id = create(&first, &alice, "acme", "prod").await;
    first.stop().await;
    // Whatever step it reached, leave it mid-way: the role made, the database not, status
    // provisioning (as if the process died between two steps).
    let admin = sqlx::PgPool::connect(&db_url).await.expect("db");
    let name = format!("qleet_cp_{}", id.simple());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database if exists {name} with (force)"
    )))
    .execute(&admin)
    .await
    .expect("drop");
    let role_exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
            .bind(&name)
            .fetch_one(&admin)
            .await
            .expect("q");
    if !role_exists {
        sqlx::query(sqlx::AssertSqlSafe(format!("create role {name} login")))
            .execute(&admin)
            .await
            .expect("role");
    }
    sqlx::query(
        "update control_planes set status = 'provisioning', locked_until = null where id = $1",
    )
    .bind(id)
    .execute(&admin)
    .await
    .expect("rewind");

    let second = spawn_app_with(configure).await;
    let cp = wait_for(&second, &alice, "acme", id, "READY").await;
    assert!(cp["statusReason"].is_null(), "{cp}");
    assert_eq!(database_and_role(&second, &name).await, (1, 1));
    let (code, body) = through_gateway(&second, Auth::Session(&alice), id).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(processes_of(id), 1);
    second.stop().await;
}

#[tokio::test]
async fn other_organizations_cannot_reach_a_control_plane_or_its_database() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let bob = app.sign_in("bob@example.test").await;
    app.create_org(&bob, "bobco").await;
    let a = create(&app, &alice, "acme", "prod").await;
    let b = create(&app, &bob, "bobco", "prod").await;
    wait_for(&app, &alice, "acme", a, "READY").await;
    wait_for(&app, &bob, "bobco", b, "READY").await;

    // Org B's member and token: refused at the gateway, as if A's control plane did not exist.
    let bob_token = app.create_token(&bob, "bobco", "OWNER").await;
    for auth in [Auth::Session(&bob), Auth::Token(&bob_token)] {
        let (code, body) = through_gateway(&app, auth, a).await;
        assert_eq!(code, 404, "{body}");
        assert_eq!(body["error"]["code"], "NOT_FOUND");
    }
    let (code, _) = through_gateway(&app, Auth::Anonymous, a).await;
    assert_eq!(code, 401);
    // Org B's member cannot see it through the API either.
    let body = app
        .gql(Auth::Session(&bob), STATUS, json!({ "o": "acme", "id": a }))
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("NOT_FOUND"));
    let body = app
        .gql(
            Auth::Session(&bob),
            STATUS,
            json!({ "o": "bobco", "id": a }),
        )
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("NOT_FOUND"), "{body}");

    // A's database role cannot connect to B's database (PostgreSQL itself refuses).
    let cfg_secret: Vec<u8> =
        sqlx::query_scalar("select db_password_enc from control_planes where id = $1")
            .bind(a)
            .fetch_one(&app.pool)
            .await
            .expect("row");
    let password =
        String::from_utf8(app.keys().decrypt(&cfg_secret).expect("decrypt")).expect("utf8");
    let mut url = url::Url::parse(&app.db_url).expect("url");
    url.set_username(&format!("qleet_cp_{}", a.simple()))
        .expect("user");
    url.set_password(Some(&password)).expect("password");
    url.set_path(&format!("qleet_cp_{}", a.simple()));
    sqlx::PgConnection::connect(url.as_str())
        .await
        .expect("A reaches its own database");
    url.set_path(&format!("qleet_cp_{}", b.simple()));
    let err = sqlx::PgConnection::connect(url.as_str())
        .await
        .expect_err("A must not reach B's database");
    assert!(err.to_string().contains("permission denied"), "{err}");
}

#[tokio::test]
async fn an_idle_control_plane_hibernates_and_the_next_request_wakes_it() {
    let app = spawn_app_with(|c| c.hibernate_after = Some(Duration::from_secs(1))).await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let id = create(&app, &alice, "acme", "sleepy").await;
    wait_for(&app, &alice, "acme", id, "READY").await;
    wait_for(&app, &alice, "acme", id, "HIBERNATED").await;
    assert_eq!(
        processes_of(id),
        0,
        "a hibernated control plane has no process"
    );
    let (code, body) = through_gateway(&app, Auth::Session(&alice), id).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["controlPlane"]["id"], id.to_string());
    assert_eq!(status(&app, &alice, "acme", id).await["status"], "READY");
}

#[tokio::test]
async fn suspend_resume_and_delete_follow_the_lifecycle() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let id = create(&app, &alice, "acme", "prod").await;
    wait_for(&app, &alice, "acme", id, "READY").await;
    let vars = json!({ "o": "acme", "id": id });
    app.gql_ok(
        Auth::Session(&alice),
        "mutation($o: String!, $id: UUID!) { suspendControlPlane(org: $o, id: $id) { id } }",
        vars.clone(),
    )
    .await;
    wait_for(&app, &alice, "acme", id, "SUSPENDED").await;
    assert_eq!(processes_of(id), 0);
    let (code, body) = through_gateway(&app, Auth::Session(&alice), id).await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (503, Some("CONTROL_PLANE_SUSPENDED")),
        "{body}"
    );
    app.gql_ok(
        Auth::Session(&alice),
        "mutation($o: String!, $id: UUID!) { resumeControlPlane(org: $o, id: $id) { id } }",
        vars.clone(),
    )
    .await;
    wait_for(&app, &alice, "acme", id, "READY").await;
    assert_eq!(
        through_gateway(&app, Auth::Session(&alice), id).await.0,
        200
    );

    let delete = "mutation($o: String!, $id: UUID!, $c: String!) { deleteControlPlane(org: $o, id: $id, confirmName: $c) { status } }";
    let body = app
        .gql(
            Auth::Session(&alice),
            delete,
            json!({ "o": "acme", "id": id, "c": "nope" }),
        )
        .await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("INVALID_INPUT"),
        "{body}"
    );
    app.gql_ok(
        Auth::Session(&alice),
        delete,
        json!({ "o": "acme", "id": id, "c": "prod" }),
    )
    .await;
    wait_for(&app, &alice, "acme", id, "DELETED").await;
    let name = format!("qleet_cp_{}", id.simple());
    assert_eq!(database_and_role(&app, &name).await, (0, 0));
    assert_eq!(processes_of(id), 0);
    let (code, _) = through_gateway(&app, Auth::Session(&alice), id).await;
    assert_eq!(code, 503);
    let actions: Vec<String> = sqlx::query_scalar(
        "select action from audit_log where action like 'control_plane.%' and actor <> 'qleet' order by id",
    )
    .fetch_all(&app.pool)
    .await
    .expect("audit");
    assert_eq!(
        actions,
        [
            "control_plane.create",
            "control_plane.suspend",
            "control_plane.resume",
            "control_plane.delete"
        ]
    );
    // Its database was exported before it was dropped.
    let dump = app.data_dir.join("exports").join(format!("{id}.dump"));
    let bytes = std::fs::read(&dump).expect("export file");
    assert!(bytes.starts_with(b"PGDMP"), "a pg_dump archive");
    // Every transition is on record too, made by Qleet itself.
    let transitions: Vec<String> = sqlx::query_scalar(
        "select changes #>> '{status,after}' from audit_log where action = 'control_plane.transition' order by id",
    )
    .fetch_all(&app.pool)
    .await
    .expect("audit");
    assert_eq!(
        transitions,
        [
            "provisioning",
            "ready",
            "suspended",
            "ready",
            "deleting",
            "deleted"
        ]
    );
}

#[tokio::test]
async fn bad_requests_are_refused_and_leave_nothing_half_made() {
    let app = spawn_app_with(|c| {
        if let Some(free) = c.billing.plans.plan_mut("free") {
            free.control_planes = Some(2);
        }
    })
    .await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let viewer = app
        .add_member(&alice, "acme", "viewer@example.test", "VIEWER")
        .await;
    let body = app
        .gql(
            Auth::Session(&viewer),
            CREATE,
            json!({ "o": "acme", "n": "mine" }),
        )
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("FORBIDDEN"), "{body}");
    for bad in ["", "Prod", "a_b", "x"] {
        let body = app
            .gql(
                Auth::Session(&alice),
                CREATE,
                json!({ "o": "acme", "n": bad }),
            )
            .await;
        assert_eq!(
            error_code(&body).as_deref(),
            Some("INVALID_INPUT"),
            "{bad:?}: {body}"
        );
    }
    let first = create(&app, &alice, "acme", "one").await;
    let body = app
        .gql(
            Auth::Session(&alice),
            CREATE,
            json!({ "o": "acme", "n": "one" }),
        )
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("CONFLICT"), "{body}");
    create(&app, &alice, "acme", "two").await;
    let body = app
        .gql(
            Auth::Session(&alice),
            CREATE,
            json!({ "o": "acme", "n": "three" }),
        )
        .await;
    assert_eq!(
        error_code(&body).as_deref(),
        Some("QUOTA_EXCEEDED"),
        "{body}"
    );
    let rows: i64 = sqlx::query_scalar("select count(*) from control_planes")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(rows, 2);
    // Unknown ids.
    let body = app
        .gql(
            Auth::Session(&alice),
            STATUS,
            json!({ "o": "acme", "id": Uuid::new_v4() }),
        )
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("NOT_FOUND"));
    let (code, _) = through_gateway(&app, Auth::Session(&alice), Uuid::new_v4()).await;
    assert_eq!(code, 404);
    // Deleting while it is still being provisioned: it ends deleted with nothing left behind.
    let delete = "mutation($o: String!, $id: UUID!, $c: String!) { deleteControlPlane(org: $o, id: $id, confirmName: $c) { status } }";
    app.gql_ok(
        Auth::Session(&alice),
        delete,
        json!({ "o": "acme", "id": first, "c": "one" }),
    )
    .await;
    wait_for(&app, &alice, "acme", first, "DELETED").await;
    let name = format!("qleet_cp_{}", first.simple());
    assert_eq!(database_and_role(&app, &name).await, (0, 0));
    assert_eq!(processes_of(first), 0);
    // The organisation cannot be deleted while it has a control plane.
    let body = app
        .gql(
            Auth::Session(&alice),
            "mutation { deleteOrganization(slug: \"acme\", confirmSlug: \"acme\") }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&body).as_deref(), Some("CONFLICT"), "{body}");
}

#[tokio::test]
async fn graphql_subscriptions_pass_through_the_gateway_over_websocket() {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let bob = app.sign_in("bob@example.test").await;
    app.create_org(&bob, "bobco").await;
    let id = create(&app, &alice, "acme", "prod").await;
    wait_for(&app, &alice, "acme", id, "READY").await;
    let ws_url = format!("{}/cp/{id}/graphql/ws", app.url.replacen("http", "ws", 1));
    let connect = |token: String| {
        let mut request = ws_url.as_str().into_client_request().expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().expect("header"),
        );
        tokio_tungstenite::connect_async(request)
    };
    // Another organisation's token cannot open it.
    let bob_token = app.create_token(&bob, "bobco", "OWNER").await;
    let refused = connect(bob_token).await.expect_err("refused");
    assert!(refused.to_string().contains("404"), "{refused}");

    let token = app.create_token(&alice, "acme", "VIEWER").await;
    let (mut socket, _) = connect(token).await.expect("connect through the gateway");
    socket
        .send(Message::text(
            json!({ "type": "connection_init" }).to_string(),
        ))
        .await
        .expect("init");
    let subscribe = json!({
        "id": "1", "type": "subscribe",
        "payload": { "query": "subscription { heartbeat(everyMs: 100) }" },
    });
    let mut acked = false;
    let mut beats = 0;
    while beats < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("frame");
        let Message::Text(text) = msg else { continue };
        let value: Value = serde_json::from_str(text.as_str()).expect("json");
        match value["type"].as_str() {
            Some("connection_ack") => {
                acked = true;
                socket
                    .send(Message::text(subscribe.to_string()))
                    .await
                    .expect("subscribe");
            }
            Some("next") => {
                assert!(value["payload"]["data"]["heartbeat"].is_string(), "{value}");
                beats += 1;
            }
            other => panic!("unexpected {other:?}: {value}"),
        }
    }
    assert!(acked);
    socket.close(None).await.expect("close");
}

#[tokio::test]
async fn a_management_role_that_is_not_a_superuser_runs_and_deletes_control_planes() {
    // As a production install has it: a role with CREATEDB and CREATEROLE only, owning the
    // management database.
    let server = qleet_test_support::db::admin_url();
    let mut admin = sqlx::PgConnection::connect(&server).await.expect("server");
    let role = format!("qleet_mgmt_{}", Uuid::new_v4().simple());
    for ddl in [
        format!("create role {role} login createdb createrole password 'mgmt'"),
        format!("create database {role} owner {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(ddl))
            .execute(&mut admin)
            .await
            .expect("setup");
    }
    let mut url = url::Url::parse(&server).expect("url");
    url.set_username(&role).expect("user");
    url.set_password(Some("mgmt")).expect("password");
    url.set_path(&role);
    let configure = one_instance(url.to_string());
    let first = spawn_app_with(configure.clone()).await;
    let alice = first.sign_in("alice@example.test").await;
    first.create_org(&alice, "acme").await;
    let id = create(&first, &alice, "acme", "prod").await;
    wait_for(&first, &alice, "acme", id, "READY").await;
    first.stop().await;

    // A provisioning retried half-way (its role made, its database not): the step is redone
    // with the role as it is.
    let tenant = format!("qleet_cp_{}", id.simple());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database {tenant} with (force)"
    )))
    .execute(&mut admin)
    .await
    .expect("drop");
    let mut management = sqlx::PgConnection::connect(url.as_str())
        .await
        .expect("management database");
    sqlx::query(
        "update control_planes set status = 'provisioning', locked_until = null where id = $1",
    )
    .bind(id)
    .execute(&mut management)
    .await
    .expect("rewind");
    let app = spawn_app_with(configure).await;
    wait_for(&app, &alice, "acme", id, "READY").await;
    let (code, body) = through_gateway(&app, Auth::Session(&alice), id).await;
    assert_eq!(code, 200, "{body}");

    let delete = "mutation($o: String!, $id: UUID!, $c: String!) { deleteControlPlane(org: $o, id: $id, confirmName: $c) { status } }";
    app.gql_ok(
        Auth::Session(&alice),
        delete,
        json!({ "o": "acme", "id": id, "c": "prod" }),
    )
    .await;
    wait_for(&app, &alice, "acme", id, "DELETED").await;
    let left: i64 = sqlx::query_scalar(
        "select (select count(*) from pg_database where datname = $1)
              + (select count(*) from pg_roles where rolname = $1)",
    )
    .bind(&tenant)
    .fetch_one(&mut admin)
    .await
    .expect("left");
    assert_eq!(left, 0, "the tenant's database and role are gone");
    app.stop().await;
    management.close().await.expect("close");
    for ddl in [
        format!("drop database if exists {role} with (force)"),
        format!("drop role if exists {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(ddl))
            .execute(&mut admin)
            .await
            .expect("cleanup");
    }
}

#[tokio::test]
async fn the_audit_trail_names_the_caller_and_the_tenants_own_role_cannot_rewrite_it() {
    let app = spawn_app().await;
    let alice = app.sign_in("alice@example.test").await;
    app.create_org(&alice, "acme").await;
    let id = create(&app, &alice, "acme", "prod").await;
    wait_for(&app, &alice, "acme", id, "READY").await;
    let me = app
        .gql_ok(Auth::Session(&alice), "{ me { id } }", json!({}))
        .await;
    let alice_id = me["me"]["id"].as_str().expect("id").to_owned();

    let apply = json!({
        "query": "mutation($y: String!) { apply(yaml: $y) { applied } }",
        "variables": { "y": "kind: AwsAccount\nmetadata: {name: main}\nspec: {accountId: \"123456789012\", roleArn: \"arn:aws:iam::123456789012:role/q\", defaultRegion: eu-west-1}\n" },
    });
    let (code, body) = app
        .gateway(Auth::Session(&alice), id, "graphql", apply)
        .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.get("errors").is_none(), "{body}");

    // A viewer's token reads the trail; the change names Alice as the gateway named her.
    let viewer = app.create_token(&alice, "acme", "VIEWER").await;
    let log = json!({ "query": "{ auditLog(object: \"AwsAccount/main\") { edges { node { actor action object } } } }" });
    let (code, body) = app.gateway(Auth::Token(&viewer), id, "graphql", log).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["data"]["auditLog"]["edges"][0]["node"],
        json!({ "actor": format!("user:{alice_id}"), "action": "object.create", "object": "AwsAccount/main" }),
        "{body}"
    );

    // The tenant's own database role reads and appends, and nothing else.
    let secret: Vec<u8> =
        sqlx::query_scalar("select db_password_enc from control_planes where id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .expect("row");
    let password = String::from_utf8(app.keys().decrypt(&secret).expect("decrypt")).expect("utf8");
    let mut url = url::Url::parse(&app.db_url).expect("url");
    let tenant = format!("qleet_cp_{}", id.simple());
    url.set_username(&tenant).expect("user");
    url.set_password(Some(&password)).expect("password");
    url.set_path(&tenant);
    let mut db = sqlx::PgConnection::connect(url.as_str())
        .await
        .expect("the tenant role reaches its database");
    let before: i64 = sqlx::query_scalar("select count(*) from qleet_audit.entries")
        .fetch_one(&mut db)
        .await
        .expect("the tenant role reads the trail");
    assert!(before >= 1);
    for sql in [
        "update qleet_audit.entries set actor = 'someone-else'",
        "delete from qleet_audit.entries",
        "truncate qleet_audit.entries",
        "drop table qleet_audit.entries",
        "alter table qleet_audit.entries disable trigger all",
        "drop trigger entries_append_only on qleet_audit.entries",
        "drop schema qleet_audit cascade",
        "alter table qleet_audit.entries owner to current_user",
        "create or replace function qleet_audit.refuse_change() returns trigger language plpgsql as $$ begin return old; end $$",
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut db)
            .await
            .expect_err(sql);
        let text = err.to_string();
        assert!(
            text.contains("permission denied") || text.contains("must be owner"),
            "{sql}: {text}"
        );
    }
    let after: i64 = sqlx::query_scalar(
        "select count(*) from qleet_audit.entries where actor <> 'someone-else'",
    )
    .fetch_one(&mut db)
    .await
    .expect("count");
    assert_eq!(after, before, "every entry is as it was");
}
