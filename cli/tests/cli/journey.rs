//! The README's worked example end to end with every part a real process: `qleet dev` (the
//! management plane, its control planes spawned by the process driver), the test OpenID provider
//! (`qleetctl login` through the browser flow), `qleetctl` driven as a person would, the `qleet-agent` binary dialling in through the gateway, moto as the
//! customer's AWS account and a loopback Kubernetes API server (no real cluster can run here).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use qleet_test_support::free_port;
use qleet_test_support::kube::ApiServer;
use qleet_test_support::moto::MotoServer;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::login::login_through_the_browser;
use crate::support::oidc::OidcProvider;
use crate::support::{TestApp, run};
use crate::workflow::APP;

/// `qleet dev` as a child process on a fresh database; SIGKILLed (with its children, which
/// exit when it does) when dropped.
struct QleetDev {
    app: TestApp,
    _child: Child,
    _provider: OidcProvider,
    data_dir: PathBuf,
}

impl QleetDev {
    async fn start() -> QleetDev {
        let scratch =
            std::env::temp_dir().join(format!("qleetctl-journey-{}", uuid::Uuid::new_v4()));
        let data_dir = scratch.join("data");
        let port = free_port();
        // The test OpenID provider, registered as Qleet's provider `test`.
        let provider = OidcProvider::start(
            "qleet-test",
            "qleet-test-secret",
            &format!("http://127.0.0.1:{port}/auth/callback/test"),
        )
        .await
        .expect("start the OpenID provider (scripts/test.sh installs it)");
        let providers = serde_json::json!([{
            "id": "test",
            "name": "Test IdP",
            "issuer": provider.issuer,
            "client_id": "qleet-test",
            "client_secret": "qleet-test-secret",
        }]);
        let mut child = Command::new(qleet_test_support::workspace_binary("qleet", "qleet"))
            .arg("dev")
            .env(
                "DATABASE_URL",
                qleet_test_support::db::fresh_database().await,
            )
            .env("QLEET_DATA_DIR", &data_dir)
            .env("QLEET_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "QLEET_CONTROL_PLANE_BIN",
                qleet_test_support::control_plane_binary(),
            )
            .env("QLEET_CONTROL_PLANE_RETENTION_HOURS", "0")
            .env("QLEET_OIDC_PROVIDERS", providers.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn qleet dev");
        qleet_test_support::qleet_dev_serving(&mut child).await;
        let app = TestApp::external(format!("http://127.0.0.1:{port}"), scratch.join("config"));
        QleetDev {
            app,
            _child: child,
            _provider: provider,
            data_dir,
        }
    }
}

impl Drop for QleetDev {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A kubeconfig for the cluster `name` at `server`.
fn kubeconfig(dir: &Path, name: &str, server: &str) -> PathBuf {
    let path = dir.join(format!("{name}.kubeconfig"));
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster: {{server: \"{server}\"}}\nusers:\n- name: agent\n  user: {{token: agent-token}}\ncontexts:\n- name: {name}\n  context: {{cluster: {name}, user: agent}}\ncurrent-context: {name}\n"
    );
    std::fs::write(&path, yaml).expect("kubeconfig");
    path
}

/// The agent binary as `qleetctl agent token` tells a customer to run it, plus a cluster.
fn agent(url: &str, token: &str, dir: &Path, cluster: &Path, aws: &str) -> Child {
    Command::new(qleet_test_support::workspace_binary(
        "qleet-agent",
        "qleet-agent",
    ))
    .args(["--url", url, "--token", token, "--state-file"])
    .arg(dir.join("agent-state.json"))
    .arg("--cluster")
    .arg(format!("prod-1={}", cluster.display()))
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .env("AWS_ENDPOINT_URL", aws)
    .env("AWS_ACCESS_KEY_ID", "ambient")
    .env("AWS_SECRET_ACCESS_KEY", "ambient")
    .env("AWS_REGION", "eu-west-1")
    .env("AWS_EC2_METADATA_DISABLED", "true")
    .env("QLEET_AGENT_WAIT_SECONDS", "2")
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::inherit())
    .kill_on_drop(true)
    .spawn()
    .expect("start qleet-agent")
}

/// Objects by `Kind/name` from `qleetctl get -o json`.
fn by_key(objects: &Value) -> std::collections::BTreeMap<String, Value> {
    objects
        .as_array()
        .expect("a list")
        .iter()
        .map(|o| {
            (
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or_default(),
                    o["name"].as_str().unwrap_or_default()
                ),
                o.clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_readme_app_runs_through_qleetctl_qleet_dev_the_agent_and_moto() {
    let qleet = QleetDev::start().await;
    let app = &qleet.app;
    let moto = MotoServer::start().await;
    let (k8s_url, api) = ApiServer::serve().await;
    let dir = qleet.data_dir.join("journey");
    std::fs::create_dir_all(&dir).expect("scratch dir");

    // Signed in through the browser flow at the OpenID provider (the test plays the browser),
    // which makes the organisation; from here on, the CLI only.
    let said = login_through_the_browser(app, "ada", "shop").await;
    assert!(
        said.contains("as ada@example.test (organisation shop)"),
        "{said}"
    );
    let who = run(app, &["whoami"]).await;
    assert!(who.ok().contains("ada@example.test"), "{who:?}");
    let created = run(app, &["cp", "create", "prod", "--wait=120s"]).await;
    assert!(created.ok().contains("READY"), "{created:?}");
    run(app, &["use", "shop", "prod"]).await.ok();

    // The agent, installed as `agent token` says.
    let reg = run(app, &["agent", "token", "-o", "json"]).await.json();
    let cluster = kubeconfig(&dir, "prod-1", &k8s_url);
    let _agent = agent(
        reg["url"].as_str().expect("url"),
        reg["token"].as_str().expect("token"),
        &dir,
        &cluster,
        &moto.url,
    );

    // The README's example, applied and waited for.
    let file = dir.join("app.yaml");
    std::fs::write(&file, APP).expect("app.yaml");
    let file = file.to_str().expect("utf-8 path");
    let plan = run(app, &["plan", "-f", file]).await;
    assert!(plan.ok().contains("+ Workload/web"), "{plan:?}");
    let applied = run(app, &["apply", "-f", file, "--wait=180s"]).await;
    let text = applied.ok();
    assert!(text.contains("Done: everything is Ready."), "{applied:?}");
    assert!(
        text.contains("ObjectStorageBucket/assets  READY"),
        "{applied:?}"
    );

    // The agent that did it is listed, connected.
    let agents = run(app, &["agent", "list", "-o", "json"]).await.json();
    assert_eq!(agents.as_array().map(Vec::len), Some(1), "{agents}");
    assert_eq!(agents[0]["status"], "CONNECTED", "{agents}");

    // What Qleet says matches what the cloud and the cluster have.
    let objects = by_key(&run(app, &["get", "-o", "json"]).await.json());
    assert_eq!(objects.len(), 5, "{objects:#?}");
    assert!(
        objects.values().all(|o| o["phase"] == "READY"),
        "{objects:#?}"
    );
    let bucket = run(app, &["get", "ObjectStorageBucket/assets", "-o", "json"])
        .await
        .json()["outputs"]["name"]
        .as_str()
        .expect("bucket name")
        .to_owned();
    assert_eq!(moto.bucket_names().await, vec![bucket.clone()]);
    assert!(
        !api.applied("/apis/apps/v1/namespaces/shop/deployments/web")
            .is_empty(),
        "the workload reached the cluster"
    );
    let described = run(app, &["describe", "RelationalDatabase/db"]).await;
    let text = described.ok();
    assert!(text.contains("secretRef"), "{described:?}");
    assert!(text.contains("READY"), "{described:?}");
    let graph = run(app, &["graph"]).await;
    assert!(
        graph.ok().starts_with("Workload/web (READY)\n"),
        "{graph:?}"
    );

    // The bucket deleted behind Qleet's back: a refresh has the agent make it again.
    moto.delete_bucket(&bucket).await;
    assert!(moto.bucket_names().await.is_empty());
    let refreshed = run(
        app,
        &["refresh", "ObjectStorageBucket/assets", "--wait=120s"],
    )
    .await;
    assert!(
        refreshed.ok().contains("ObjectStorageBucket/assets  READY"),
        "{refreshed:?}"
    );
    assert_eq!(moto.bucket_names().await, vec![bucket.clone()]);

    // Bad input from a terminal: one line, the documented exit codes.
    let missing = run(app, &["apply", "-f", "/nonexistent/app.yaml"]).await;
    assert!(
        missing.fails(1).contains("/nonexistent/app.yaml"),
        "{missing:?}"
    );
    let garbage = dir.join("garbage.yaml");
    std::fs::write(&garbage, "kind: [unclosed\n").expect("garbage");
    let invalid = run(app, &["apply", "-f", garbage.to_str().expect("utf-8")]).await;
    invalid.fails(1);
    let wrong = run(app, &["use", "shop", "nope"]).await;
    wrong.fails(2);
    let in_use = run(app, &["delete", "ObjectStorageBucket/assets"]).await;
    assert!(in_use.fails(1).contains("Workload/web"), "{in_use:?}");

    // Deleted in order with --wait: the workload, then the bucket, which leaves the account.
    let gone = run(app, &["delete", "Workload/web", "--wait=120s"]).await;
    assert!(gone.ok().contains("Workload/web  DELETED"), "{gone:?}");
    let gone = run(
        app,
        &["delete", "ObjectStorageBucket/assets", "--wait=120s"],
    )
    .await;
    assert!(
        gone.ok().contains("ObjectStorageBucket/assets  DELETED"),
        "{gone:?}"
    );
    assert!(moto.bucket_names().await.is_empty());
    let after = run(app, &["get", "ObjectStorageBucket/assets"]).await;
    assert!(after.fails(1).contains("NOT_FOUND"), "{after:?}");
}
