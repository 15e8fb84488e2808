//! The project's fault suite: every part a real process (`qleet dev` on a PostgreSQL server of
//! the test's own, the control plane it runs, the `qleet-agent` binary, moto as the customer's
//! account), and in each run one of them is killed with SIGKILL (and started again, as a
//! supervisor would) or the whole PostgreSQL server restarted, at a seeded random point while an
//! apply is being worked on (or, as a baseline, nothing happens). After each, every object must
//! end READY with exactly one cloud resource each in moto. Set `QLEET_FAULT_SEED` to replay a
//! run and `QLEET_FAULT_RUNS` for more runs (the figures in BENCHMARKS.md use 25).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use qleet_test_support::fault::{self, Seeded, median_p95_max};
use qleet_test_support::pg::Cluster;
use serde_json::Value;

use crate::journey::{agent_command, creates, terminate};
use crate::managed::Qleet;
use crate::support::{Moto, Recorder};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// No fault: the baseline, measured from the same point of the same work.
    None,
    /// `qleet dev` killed (its control planes go with it) and started again.
    ManagementPlane,
    /// The control plane's process killed; the management plane's supervisor restarts it.
    ControlPlane,
    /// The agent killed and started again with its state file.
    Agent,
    /// The PostgreSQL server stopped (connections cut) and started again after a while.
    Postgres,
}

const FAULTS: [Fault; 5] = [
    Fault::None,
    Fault::ManagementPlane,
    Fault::ControlPlane,
    Fault::Agent,
    Fault::Postgres,
];

/// Buckets of each run's apply.
const NEW_BUCKETS: usize = 3;

/// Buckets and database instances the agent has asked the cloud to make so far.
fn made(cloud: &Recorder) -> usize {
    cloud.requests().iter().filter(|r| creates(r)).count()
}

/// The application of run `run`: an account, a database and the run's own buckets (applied
/// with prune, so the last run's buckets are deleted at the same time).
fn app(run: usize) -> String {
    let mut yaml = String::from(
        "kind: AwsAccount\nmetadata: {name: main}\nspec: {accountId: \"123456789012\", roleArn: \"arn:aws:iam::123456789012:role/qleet\", defaultRegion: eu-west-1}\n---\nkind: RelationalDatabase\nmetadata: {name: db}\nspec: {account: AwsAccount/main, engine: postgres, version: \"16.4\", sizeClass: db.t4g.micro}\n",
    );
    for i in 0..NEW_BUCKETS {
        yaml.push_str(&format!(
            "---\nkind: ObjectStorageBucket\nmetadata: {{name: r{run}-b{i}}}\nspec: {{account: AwsAccount/main}}\n"
        ));
    }
    yaml
}

/// Retries `apply` until the control plane takes it (it may still be coming back from the
/// last fault).
async fn apply(qleet: &Qleet, cp: &str, yaml: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match qleet
            .try_gql(
                &format!("cp/{cp}/graphql"),
                "mutation($y: String!) { apply(yaml: $y, dryRun: false, prune: true) { applied } }",
                serde_json::json!({ "y": yaml }),
            )
            .await
        {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "apply never taken: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many objects are not READY now (or `None` while the control plane does not answer).
async fn pending(qleet: &Qleet, cp: &str) -> Option<usize> {
    let objects = qleet.try_objects(cp).await.ok()?;
    Some(objects.values().filter(|o| o["phase"] != "READY").count())
}

/// Waits (120 s at most) until all `n` objects are READY, tolerating a server that is away.
async fn all_ready(qleet: &Qleet, cp: &str, n: usize) -> serde_json::Map<String, Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = qleet.try_objects(cp).await;
        if let Ok(objects) = &now
            && objects.len() == n
            && objects.values().all(|o| o["phase"] == "READY")
        {
            return objects.clone();
        }
        assert!(
            Instant::now() < deadline,
            "never all {n} READY (replay with the QLEET_FAULT_SEED printed above): {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_part_killed_or_postgres_restarted_mid_apply_ends_ready_with_one_cloud_resource_each()
{
    let mut rng = Seeded::from_env();
    let pg = Cluster::start().await;
    let db = pg.database("qleet").await;
    let mut qleet = Qleet::start_on(db, &[]).await;
    let moto = Moto::start().await;
    let cp = qleet.organization_and_control_plane().await;
    let dir = qleet.data_dir.join("agent");
    std::fs::create_dir_all(&dir).expect("agent dir");
    let state = dir.join("state.json");
    let agent_url = format!("{}/cp/{cp}", qleet.url);
    let token = qleet.registration_token(&cp).await;
    // The agent's AWS calls are slowed down (each passes on after 100 ms), so that its work
    // can be interrupted in the middle; the recorder counts what it has made so far.
    let cloud = Recorder::slow(&moto.url, Duration::from_millis(100)).await;
    let mut agent = agent_command(&agent_url, &cloud.url, &state)
        .arg("--token")
        .arg(&token)
        .spawn()
        .expect("start qleet-agent");
    let sdk = moto.sdk("test", "test").await;
    let rds = aws_sdk_rds::Client::new(&sdk);

    let runs = fault::runs(FAULTS.len());
    let first = rng.next_u64() as usize;
    let mut recovered: BTreeMap<Fault, Vec<Duration>> = BTreeMap::new();
    for run in 0..runs {
        // Every kind of fault in turn (from a seeded start), at a seeded point of the apply.
        let fault = FAULTS[(first + run) % FAULTS.len()];
        let made_before = made(&cloud);
        apply(&qleet, &cp, &app(run)).await;
        // After a seeded number of this run's creates (none to all but one: the fault always
        // lands before the work is done) and a seeded moment more.
        let new_creates = NEW_BUCKETS + usize::from(run == 0);
        let after = (rng.next_u64() % new_creates as u64) as usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        while made(&cloud) < made_before + after {
            assert!(
                Instant::now() < deadline,
                "the agent never made {after} things"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let delay = rng.millis(300);
        tokio::time::sleep(delay).await;
        let before = pending(&qleet, &cp).await;
        // Measured from the fault (for PostgreSQL: from when it is back).
        let at = match fault {
            Fault::None => Instant::now(),
            Fault::ManagementPlane => {
                fault::signal(qleet.child.id().expect("pid"), "-KILL");
                let at = Instant::now();
                qleet.child.wait().await.expect("killed");
                qleet.restart().await;
                at
            }
            Fault::ControlPlane => {
                let pid_file = qleet.data_dir.join("run").join(format!("{cp}.pid"));
                let pid: u32 = std::fs::read_to_string(&pid_file)
                    .expect("pid file")
                    .trim()
                    .parse()
                    .expect("pid");
                fault::signal(pid, "-KILL");
                Instant::now()
            }
            Fault::Agent => {
                agent.start_kill().expect("kill");
                let at = Instant::now();
                agent.wait().await.expect("killed");
                agent = agent_command(&agent_url, &cloud.url, &state)
                    .spawn()
                    .expect("start the agent again");
                at
            }
            Fault::Postgres => {
                pg.stop().await;
                tokio::time::sleep(rng.millis(3000)).await;
                pg.start_again().await;
                Instant::now()
            }
        };
        let objects = all_ready(&qleet, &cp, NEW_BUCKETS + 2).await;
        let took = at.elapsed();
        println!(
            "run {run}: {fault:?} {delay:?} after {after} of the run's {new_creates} creates ({} objects not READY) → all READY in {took:?}",
            before.map_or("?".to_owned(), |n| n.to_string())
        );
        recovered.entry(fault).or_default().push(took);

        // Exactly one cloud resource per object: every bucket Qleet names is in moto, and
        // moto holds no other (the last run's were deleted); one database instance, the one
        // Qleet reports.
        let mut named: Vec<String> = objects
            .iter()
            .filter(|(k, _)| k.starts_with("ObjectStorageBucket/"))
            .map(|(_, o)| o["outputs"]["name"].as_str().expect("name").to_owned())
            .collect();
        named.sort();
        let mut held = moto.bucket_names().await;
        held.sort();
        assert_eq!(held, named, "run {run} ({fault:?})");
        let instances = rds.describe_db_instances().send().await.expect("rds");
        let [instance] = instances.db_instances() else {
            panic!("run {run} ({fault:?}): one database instance: {instances:?}");
        };
        assert_eq!(
            instance.endpoint().and_then(|e| e.address()),
            objects["RelationalDatabase/db"]["outputs"]["host"].as_str()
        );
    }
    for (fault, times) in recovered {
        println!("{fault:?} → all READY: {}", median_p95_max(times));
    }
    assert!(terminate(&mut agent).await.success());
    qleet.stop().await;
}
