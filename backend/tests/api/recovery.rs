//! The management plane as a real process, killed with SIGKILL at seeded random points while a
//! control plane is provisioning: the control plane's child never outlives it, a restarted
//! management plane takes the work over within seconds (short, renewed worker leases), and a
//! SIGTERM stops it at once even with an agent's long-poll open through the gateway. Set
//! `QLEET_FAULT_SEED` to replay a run; the figures it prints go into BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use qleet_test_support::fault::{self, Seeded, alive, median_p95_max};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::process::{Child, Command};

use crate::support::graphql;

struct Plane {
    db: String,
    data_dir: PathBuf,
    port: u16,
    url: String,
}

impl Plane {
    /// Starts `qleet dev` on the plane's database and data dir; answers once it serves.
    async fn start(&self) -> Child {
        let mut child = Command::new(env!("CARGO_BIN_EXE_qleet"))
            .arg("dev")
            .env("DATABASE_URL", &self.db)
            .env("QLEET_DATA_DIR", &self.data_dir)
            .env("QLEET_LISTEN", format!("127.0.0.1:{}", self.port))
            .env(
                "QLEET_CONTROL_PLANE_BIN",
                qleet_test_support::control_plane_binary(),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn qleet dev");
        qleet_test_support::qleet_dev_serving(&mut child).await;
        child
    }

    /// GraphQL at `path` with an API token; answers `data`.
    async fn gql(&self, token: &str, path: &str, query: &str, variables: Value) -> Value {
        graphql(
            &self.url,
            path,
            ("authorization", format!("Bearer {token}")),
            query,
            variables,
        )
        .await
    }
}

/// Signs in with the development sign-in, makes organisation `org` and an owner API token.
async fn owner_token(url: &str, org: &str) -> String {
    let cookie = format!(
        "qleet_session={}",
        qleet_test_support::dev_session(url, "ops@example.test").await
    );
    let session = || ("cookie", cookie.clone());
    graphql(
        url,
        "/graphql",
        session(),
        "mutation($s: String!) { createOrganization(slug: $s, name: $s) { id } }",
        json!({ "s": org }),
    )
    .await;
    let made = graphql(
        url,
        "/graphql",
        session(),
        "mutation($o: String!) { createApiToken(org: $o, name: \"ops\", role: OWNER) { token } }",
        json!({ "o": org }),
    )
    .await;
    made["createApiToken"]["token"]
        .as_str()
        .expect("api token")
        .to_owned()
}

async fn status(pool: &PgPool, id: uuid::Uuid) -> String {
    sqlx::query_scalar::<_, String>("select status from control_planes where id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("status")
}

/// The control plane's child process, if the pid file names one that is alive.
fn child_pid(data_dir: &Path, id: uuid::Uuid) -> Option<u32> {
    let pid = std::fs::read_to_string(data_dir.join("run").join(format!("{id}.pid")))
        .ok()?
        .trim()
        .parse::<u32>()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn signal(child: &Child, sig: &str) {
    fault::signal(child.id().expect("pid"), sig);
}

#[tokio::test]
async fn a_management_plane_killed_mid_provisioning_recovers_in_seconds_and_stops_at_once() {
    let mut rng = Seeded::from_env();
    let db = qleet_test_support::db::fresh_database().await;
    let pool = PgPool::connect(&db).await.expect("management db");
    let port = qleet_test_support::free_port();
    let plane = Plane {
        db,
        data_dir: std::env::temp_dir().join(format!("qleet-recovery-{}", uuid::Uuid::new_v4())),
        port,
        url: format!("http://127.0.0.1:{port}"),
    };
    let mut qleet = plane.start().await;

    let (mut orphan_gone, mut ready_again) = (Vec::new(), Vec::new());
    let (mut cp_id, mut token) = (String::new(), String::new());
    let runs = fault::runs(4);
    for run in 0..runs {
        // An organisation per run: the free plan allows one control plane each.
        let org = format!("acme-{run}");
        token = owner_token(&plane.url, &org).await;
        let created = plane
            .gql(
                &token,
                "/graphql",
                "mutation($o: String!) { createControlPlane(org: $o, name: \"prod\") { id } }",
                json!({ "o": org }),
            )
            .await;
        let id: uuid::Uuid = created["createControlPlane"]["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("id");
        // Somewhere in provisioning (it takes about half a second here): after the claim,
        // before or after the child started.
        let delay = rng.millis(500);
        let deadline = Instant::now() + Duration::from_secs(60);
        while status(&pool, id).await == "pending" {
            assert!(Instant::now() < deadline, "never left pending");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(delay).await;
        let child = child_pid(&plane.data_dir, id);
        signal(&qleet, "-KILL");
        let killed = Instant::now();
        let _ = qleet.wait().await;
        let at_kill = status(&pool, id).await;
        println!(
            "run {run}: killed {delay:?} into provisioning (status {at_kill}, child {child:?})"
        );

        // The child (if it had started) goes with it, unmanaged for no longer than it takes to
        // read the end of its pipe and drain.
        if let Some(pid) = child {
            while alive(pid) {
                assert!(
                    killed.elapsed() < Duration::from_secs(30),
                    "control plane {pid} outlived its management plane"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            orphan_gone.push(killed.elapsed());
        }

        // Restarted at once: it takes the dead instance's claim over when its short lease
        // lapses and brings the control plane up.
        qleet = plane.start().await;
        loop {
            let now = status(&pool, id).await;
            if now == "ready" {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(90),
                "still {now} {:?} after the kill",
                killed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if at_kill != "ready" {
            ready_again.push(killed.elapsed());
        }
        let answer = plane
            .gql(
                &token,
                &format!("/cp/{id}/graphql"),
                "{ objects { kind } }",
                json!({}),
            )
            .await;
        assert_eq!(answer["objects"], json!([]));
        cp_id = id.to_string();
        if run + 1 < runs {
            // Suspended (its child stopped) so that many runs do not exhaust PostgreSQL's
            // connections with idle control planes.
            plane
                .gql(
                    &token,
                    "/graphql",
                    "mutation($o: String!, $id: UUID!) { suspendControlPlane(org: $o, id: $id) { id } }",
                    json!({ "o": org, "id": id }),
                )
                .await;
            while status(&pool, id).await != "suspended" {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    if !ready_again.is_empty() {
        println!(
            "killed mid-provisioning ({} of {runs} runs) → READY again: {}",
            ready_again.len(),
            median_p95_max(ready_again)
        );
    }
    if !orphan_gone.is_empty() {
        println!(
            "killed → its control-plane child gone: {}",
            median_p95_max(orphan_gone)
        );
    }

    // SIGTERM with an agent's long-poll open through the gateway: the poll is answered at once
    // (UNAVAILABLE: ask again) and everything the plane started is gone.
    let registration = plane
        .gql(
            &token,
            &format!("/cp/{cp_id}/graphql"),
            "mutation { createAgentRegistration { token } }",
            json!({}),
        )
        .await["createAgentRegistration"]["token"]
        .as_str()
        .expect("registration token")
        .to_owned();
    let http = reqwest::Client::new();
    let agent_url = format!("{}/cp/{cp_id}/agent/v1", plane.url);
    let registered: Value = http
        .post(format!("{agent_url}/register"))
        .json(&json!({ "token": registration, "name": "agent-1", "version": "test" }))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    let credential = registered["credential"]
        .as_str()
        .expect("credential")
        .to_owned();
    let poll = tokio::spawn(async move {
        http.post(format!("{agent_url}/tasks/lease"))
            .bearer_auth(credential)
            .json(&json!({ "waitSeconds": 30, "holding": [] }))
            .send()
            .await
    });
    // Give the poll time to reach the control plane and wait there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let children: Vec<u32> = std::fs::read_dir(plane.data_dir.join("run"))
        .expect("run dir")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|p| p.trim().parse().ok())
        .filter(|p| alive(*p))
        .collect();
    assert_eq!(children.len(), 1, "{children:?}");
    signal(&qleet, "-TERM");
    let asked = Instant::now();
    let exit = tokio::time::timeout(Duration::from_secs(20), qleet.wait())
        .await
        .expect("qleet dev stopped well inside the long-poll's 30 s")
        .expect("wait");
    let stopped = asked.elapsed();
    assert!(exit.success(), "{exit}");
    let answer = poll.await.expect("join");
    if let Ok(answer) = answer {
        // Answered before the server closed: a retryable refusal or an empty lease.
        let code = answer.status().as_u16();
        assert!(code == 503 || code == 200, "{code}");
    }
    let left: Vec<u32> = children.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "children left running: {left:?}");
    println!("SIGTERM with a long-poll open → qleet dev and its control planes gone: {stopped:?}");
}
