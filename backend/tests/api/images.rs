//! The three container images, built and run for real with podman: `scripts/build-images.sh`
//! builds them (static musl binaries on `FROM scratch`); the management plane's container runs
//! `qleet serve` against PostgreSQL, signs a person in through a real OpenID provider and starts a
//! control plane with its process driver (the bundled `qleet-control-plane`); the agent's
//! container runs in a network namespace that can reach nothing but the gateway and moto, and
//! registers and makes a bucket; deleting the control plane exports its database with the
//! image's `pg_dump`; the control-plane image serves on its own; the agent image's `helm`
//! renders a chart. Every container runs as the non-root user on a read-only root filesystem.
//!
//! It prints why it skips where no container runtime can run (no podman, or not root).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use qleet_test_support::container::{self, IsolatedNet, Podman, ProcessFacts};
use qleet_test_support::moto::MotoServer;
use serde_json::{Value, json};

use crate::support::oidc::{self, OidcProvider, authorize};
use crate::support::{graphql, session_cookie};

/// The image's runtime user and group.
const USER: u32 = 65532;
const REPO: &str = "localhost/qleet-test";

/// Builds the three images; answers their names by kind (`qleet`, `qleet-control-plane`,
/// `qleet-agent`) and prints their sizes.
async fn build_images() -> BTreeMap<String, String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let helm = format!("{root}/target/helm/helm");
    assert!(
        std::path::Path::new(&helm).exists(),
        "{helm} is missing: run scripts/test.sh once (or `source scripts/lib.sh && ensure_helm`)"
    );
    let mut script = tokio::process::Command::new("bash");
    // Without the variables cargo sets for this test (its package's name, version, manifest
    // directory): build scripts such as ring's rerun when they differ, so the script would
    // rebuild what scripts/test.sh built before the tests instead of finding it fresh.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|p| key.starts_with(p))
            || key == "CARGO_TARGET_TMPDIR"
        {
            script.env_remove(key.as_ref());
        }
    }
    let out = script
        .arg(format!("{root}/scripts/build-images.sh"))
        .env("HELM_BIN", helm)
        .env("QLEET_IMAGE_REPO", REPO)
        .env("QLEET_IMAGE_TAG", "test")
        .output()
        .await
        .expect("run scripts/build-images.sh");
    assert!(
        out.status.success(),
        "scripts/build-images.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut images = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (name, size) = line.split_once(' ').expect("NAME SIZE");
        let size: f64 = size.parse().expect("size");
        println!("image {name}: {:.1} MiB", size / 1048576.0);
        let kind = name
            .trim_start_matches(&format!("{REPO}/"))
            .trim_end_matches(":test");
        images.insert(kind.to_owned(), name.to_owned());
    }
    assert_eq!(images.len(), 3, "{images:?}");
    images
}

fn assert_confined(what: &str, facts: &ProcessFacts) {
    assert_eq!(
        facts.uids,
        vec![USER; 4],
        "{what} runs as uid {USER} (real, effective, saved, fs)"
    );
    assert!(
        facts.read_only_root,
        "{what}'s root filesystem is read-only"
    );
}

/// Polls `url` until it answers 200 (60 s), else fails with `logs()`.
async fn wait_ok(http: &reqwest::Client, url: &str, logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never answered: {}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GraphQL as the signed-in person, at `path` of the management plane.
struct Person {
    url: String,
    cookie: String,
}

impl Person {
    async fn gql(&self, path: &str, query: &str, variables: Value) -> Value {
        let session = ("cookie", format!("qleet_session={}", self.cookie));
        graphql(&self.url, &format!("/{path}"), session, query, variables).await
    }

    async fn control_plane_status(&self, id: &str) -> String {
        self.gql(
            "graphql",
            "query($id: UUID!) { organization(slug: \"shop\") { controlPlane(id: $id) { status } } }",
            json!({ "id": id }),
        )
        .await["organization"]["controlPlane"]["status"]
            .as_str()
            .expect("status")
            .to_owned()
    }

    async fn wait_control_plane(&self, id: &str, want: &str, logs: impl Fn() -> String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.control_plane_status(id).await;
            if status == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "control plane {status}, never {want}: {}",
                logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Signs `alice` in at `url` through the provider `test`.
async fn sign_in(url: &str) -> Person {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let (login, location) = oidc::begin(&http, url, "test").await;
    let callback = authorize(&location, "alice", &format!("{url}/auth/callback/test"))
        .await
        .expect("sign in at the provider");
    let resp = oidc::finish(&http, url, &login, &callback).await;
    assert_eq!(resp.status(), 303);
    let cookie = session_cookie(&resp).expect("a session");
    Person {
        url: url.to_owned(),
        cookie,
    }
}

#[tokio::test]
async fn the_images_run_as_non_root_on_read_only_roots_and_an_isolated_agent_container_makes_a_bucket()
 {
    if let Some(reason) = container::unavailable() {
        println!("SKIPPED: no container runtime can run here: {reason}");
        return;
    }
    let images = build_images().await;
    let podman = Podman::new();
    for (kind, image) in &images {
        assert_eq!(
            podman.output(&["image", "inspect", "--format", "{{.Config.User}}", image]),
            format!("{USER}:{USER}"),
            "{kind} runs as the non-root user"
        );
    }
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];

    // The agent image's helm renders a chart, as the agent does for a Helm workload.
    let chart = std::env::temp_dir().join(format!("qleet-chart-{tag}"));
    std::fs::create_dir_all(chart.join("templates")).expect("chart dir");
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: demo\nversion: 0.1.0\n",
    )
    .expect("Chart.yaml");
    std::fs::write(
        chart.join("templates/config.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: \"{{ .Release.Name }}-config\"}\ndata: {greeting: \"{{ .Values.greeting }}\"}\n",
    )
    .expect("template");
    let rendered = podman.output(&[
        "run",
        "--rm",
        "--network=none",
        "--read-only",
        "--tmpfs=/tmp",
        &format!("--volume={}:/chart:ro", chart.display()),
        "--entrypoint=helm",
        &images["qleet-agent"],
        "template",
        "shop",
        "/chart",
        "--set",
        "greeting=hello",
    ]);
    let _ = std::fs::remove_dir_all(&chart);
    assert!(
        rendered.contains("name: \"shop-config\"") && rendered.contains("greeting: \"hello\""),
        "{rendered}"
    );

    // The agent's network: a namespace of its own that reaches the host only on the gateway's
    // and moto's ports.
    let net = IsolatedNet::create();
    let port = qleet_test_support::free_port();
    let moto = MotoServer::spawn_on(&net.host, None).await;
    let moto_port: u16 = moto
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    net.allow(port);
    net.allow(moto_port);

    // The management plane: `qleet serve` against PostgreSQL, signing in through a real
    // OpenID provider, its data (exports, run files) on a volume, nothing else writable.
    let url = format!("http://127.0.0.1:{port}");
    let provider = OidcProvider::start(
        "qleet-test",
        "qleet-test-secret",
        &format!("{url}/auth/callback/test"),
    )
    .await
    .expect("start the OpenID provider (scripts/test.sh installs it)");
    let providers = json!([{
        "id": "test", "name": "Test IdP", "issuer": provider.issuer,
        "client_id": "qleet-test", "client_secret": "qleet-test-secret",
    }])
    .to_string();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
    let db = qleet_test_support::db::fresh_database().await;
    let data = podman.volume(&format!("qleet-test-data-{tag}"));
    let mp = podman.run(
        &format!("qleet-test-mp-{tag}"),
        &[
            "--network=host",
            "--read-only",
            "--tmpfs=/tmp",
            &format!("--volume={}:/var/lib/qleet", data.name),
            &format!("--env=DATABASE_URL={db}"),
            &format!("--env=QLEET_LISTEN=0.0.0.0:{port}"),
            &format!("--env=QLEET_PUBLIC_URL={url}"),
            &format!("--env=QLEET_SECRET_KEY={secret}"),
            &format!("--env=QLEET_OIDC_PROVIDERS={providers}"),
            "--env=QLEET_CONTROL_PLANE_RETENTION_HOURS=0",
            "--env=RUST_LOG=warn",
            &images["qleet"],
            "serve",
        ],
    );
    let http = reqwest::Client::new();
    wait_ok(&http, &format!("{url}/readyz"), || mp.logs()).await;
    let ui = http
        .get(format!("{url}/pkg/qleet_bg.wasm"))
        .send()
        .await
        .expect("wasm");
    assert!(
        ui.status().is_success(),
        "the image serves the built web UI"
    );

    let person = sign_in(&url).await;
    person
        .gql(
            "graphql",
            "mutation { createOrganization(slug: \"shop\", name: \"Shop\") { id } }",
            json!({}),
        )
        .await;
    let cp = person
        .gql(
            "graphql",
            "mutation { createControlPlane(org: \"shop\", name: \"prod\") { id } }",
            json!({}),
        )
        .await["createControlPlane"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    person.wait_control_plane(&cp, "READY", || mp.logs()).await;
    let server = mp.pid();
    assert_confined("the management plane", &container::process_facts(server));
    let control_planes = container::children(server);
    assert_eq!(
        control_planes.len(),
        1,
        "one control-plane process under qleet: {control_planes:?}"
    );
    assert_confined(
        "the control plane the process driver started",
        &container::process_facts(control_planes[0]),
    );

    // The agent's container, in its own network.
    let token = person
        .gql(
            &format!("cp/{cp}/graphql"),
            "mutation { createAgentRegistration(ttlMinutes: 30) { token } }",
            json!({}),
        )
        .await["createAgentRegistration"]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let state = podman.volume(&format!("qleet-test-agent-{tag}"));
    let agent = podman.run(
        &format!("qleet-test-agent-{tag}"),
        &[
            &format!("--network=ns:{}", net.path.display()),
            "--read-only",
            "--tmpfs=/tmp",
            &format!("--volume={}:/var/lib/qleet-agent", state.name),
            &format!("--env=QLEET_AGENT_URL=http://{}:{port}/cp/{cp}", net.host),
            &format!("--env=QLEET_AGENT_TOKEN={token}"),
            &format!("--env=AWS_ENDPOINT_URL={}", moto.url),
            "--env=AWS_ACCESS_KEY_ID=ambient",
            "--env=AWS_SECRET_ACCESS_KEY=ambient",
            "--env=AWS_REGION=eu-west-1",
            "--env=AWS_EC2_METADATA_DISABLED=true",
            "--env=QLEET_AGENT_WAIT_SECONDS=2",
            &images["qleet-agent"],
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let agents = person
            .gql(
                &format!("cp/{cp}/graphql"),
                "{ agents { status } }",
                json!({}),
            )
            .await;
        if agents["agents"][0]["status"] == "CONNECTED" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never connected: {agents}: {}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_confined("the agent", &container::process_facts(agent.pid()));
    // What the agent's network lets through: the gateway and moto, and nothing else (here a
    // listener on every address of the host, and an address beyond it).
    assert!(net.can_connect(&net.host, port), "the gateway is reachable");
    assert!(net.can_connect(&net.host, moto_port), "moto is reachable");
    let elsewhere = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let elsewhere_port = elsewhere.local_addr().expect("addr").port();
    assert!(
        !net.can_connect(&net.host, elsewhere_port),
        "another port of the host is not reachable"
    );
    assert!(
        !net.can_connect("192.0.2.1", 443),
        "nothing beyond the host is reachable"
    );

    person
        .gql(
            &format!("cp/{cp}/graphql"),
            "mutation($y: String!) { apply(yaml: $y, dryRun: false, prune: false) { applied } }",
            json!({ "y": "kind: AwsAccount\nmetadata: {name: main}\nspec: {accountId: \"123456789012\", roleArn: \"arn:aws:iam::123456789012:role/qleet\", defaultRegion: eu-west-1}\n---\nkind: ObjectStorageBucket\nmetadata: {name: assets}\nspec: {account: AwsAccount/main}\n" }),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let bucket = loop {
        let objects = person
            .gql(
                &format!("cp/{cp}/graphql"),
                "{ objects { kind name phase message outputs } }",
                json!({}),
            )
            .await;
        let list = objects["objects"].as_array().expect("objects").clone();
        if list.len() == 2 && list.iter().all(|o| o["phase"] == "READY") {
            break list
                .iter()
                .find(|o| o["kind"] == "ObjectStorageBucket")
                .and_then(|o| o["outputs"]["name"].as_str())
                .expect("the bucket's name")
                .to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "never READY: {objects:#}: {}",
            agent.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        moto.bucket_names().await,
        vec![bucket],
        "the agent's container made the bucket in the account"
    );

    // Deleting the control plane exports its database with the image's own pg_dump.
    person
        .gql(
            "graphql",
            "mutation($id: UUID!) { deleteControlPlane(org: \"shop\", id: $id, confirmName: \"prod\") { status } }",
            json!({ "id": cp }),
        )
        .await;
    person
        .wait_control_plane(&cp, "DELETED", || mp.logs())
        .await;
    let dump = std::fs::read(data.path().join(format!("exports/{cp}.dump")))
        .expect("the control plane's export on the data volume");
    assert!(
        dump.starts_with(b"PGDMP"),
        "a pg_dump custom-format archive"
    );

    // The control-plane image, as the Kubernetes driver runs it: standalone on its database.
    let cp_db = qleet_test_support::db::fresh_database().await;
    let cp_port = qleet_test_support::free_port();
    let cp_id = uuid::Uuid::new_v4();
    let admin = "image-test-admin-token-0123456789abcdef";
    let standalone = podman.run(
        &format!("qleet-test-cp-{tag}"),
        &[
            "--network=host",
            "--read-only",
            &format!("--env=DATABASE_URL={cp_db}"),
            &format!("--env=QLEET_CP_ID={cp_id}"),
            &format!("--env=QLEET_CP_ADMIN_TOKEN={admin}"),
            &format!("--env=QLEET_CP_LISTEN=127.0.0.1:{cp_port}"),
            "--env=RUST_LOG=warn",
            &images["qleet-control-plane"],
        ],
    );
    let cp_url = format!("http://127.0.0.1:{cp_port}");
    wait_ok(&http, &format!("{cp_url}/readyz"), || standalone.logs()).await;
    let answer: Value = http
        .post(format!("{cp_url}/graphql"))
        .bearer_auth(admin)
        .json(&json!({ "query": "{ controlPlane { id } }" }))
        .send()
        .await
        .expect("graphql")
        .json()
        .await
        .expect("json");
    assert_eq!(
        answer["data"]["controlPlane"]["id"],
        cp_id.to_string(),
        "{answer}"
    );
    assert_confined(
        "the control-plane image",
        &container::process_facts(standalone.pid()),
    );
}
