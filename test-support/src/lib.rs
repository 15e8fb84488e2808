//! What Qleet's test suites and benchmarks share instead of copying: a fresh database per test
//! ([`db`]), a standalone control plane with GraphQL, agent-API and wait-for-phase helpers
//! ([`cp`]), the `qleet-control-plane` binary for tests that run real processes
//! ([`control_plane_binary`], and [`workspace_binary`] for the others), moto on loopback
//! ([`moto`]), podman container runs and isolated network namespaces ([`container`]), a TCP proxy that can cut a server off its database ([`proxy`]), and (feature
//! `kube`) an in-memory Kubernetes API server behind kube's mock with strict manifest checks
//! ([`kube`]).

pub mod container;
pub mod cp;
pub mod db;
pub mod fault;
#[cfg(feature = "kube")]
pub mod kube;
pub mod moto;
pub mod pg;
pub mod proxy;

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits (120 s at most) until a `qleet dev` child started with piped stdout says it is
/// serving; answers that line ("Qleet is running at ...").
pub async fn qleet_dev_serving(child: &mut tokio::process::Child) -> String {
    use tokio::io::AsyncBufReadExt as _;
    let stdout = child.stdout.take().expect("qleet dev's stdout is piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if line.contains("Qleet is running at") {
                return line;
            }
        }
        panic!("qleet dev exited before it was ready");
    })
    .await
    .expect("qleet dev ready in 120 s")
}

/// Signs `email` in to the Qleet at `url` with the development sign-in (`qleet dev`); answers
/// the session cookie's value.
pub async fn dev_session(url: &str, email: &str) -> String {
    let resp = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(format!("{url}/auth/dev"))
        .form(&[("email", email), ("name", "")])
        .send()
        .await
        .expect("dev sign-in");
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.strip_prefix("qleet_session="))
        .map(|v| v.split(';').next().unwrap_or("").to_owned())
        .find(|v| !v.is_empty())
        .expect("session cookie")
}

/// The `extensions.code` of a GraphQL answer's first error, if any.
pub fn error_code(body: &Value) -> Option<String> {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .map(str::to_owned)
}

/// The `qleet-control-plane` binary of this build, brought up to date with cargo once per test
/// binary (it has no features, so after `cargo test --workspace` this is a quick no-op, and a
/// `cargo test -p qleet` alone still runs a current control plane).
pub fn control_plane_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| build_binary("qleet-control-plane", "qleet-control-plane"))
        .clone()
}

/// The binary `bin` of workspace package `package` in this build (the directory cargo put the
/// running test binary's profile in). `cargo test --workspace` (the README's command) builds
/// every binary first; when it is missing (a `cargo test -p` of another crate) it is built
/// here. An existing one is used as it is: rebuilding `qleet` with other features than the
/// test run's would cost minutes, so after changing another crate, run `--workspace`.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    let binary = profile_dir().join(bin);
    if binary.exists() {
        return binary;
    }
    build_binary(package, bin)
}

/// This test run's profile directory: target/<profile>/deps/<test binary> → target/<profile>.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test binary under target/<profile>/deps")
        .to_path_buf()
}

/// Builds `bin` of `package` with cargo into this test run's profile directory.
fn build_binary(package: &str, bin: &str) -> PathBuf {
    let profile_dir = profile_dir();
    let binary = profile_dir.join(bin);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = std::process::Command::new(cargo);
    build.args(["build", "--quiet", "-p", package, "--bin", bin]);
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        build.arg("--release");
    }
    if let Some(target_dir) = profile_dir.parent() {
        build.env("CARGO_TARGET_DIR", target_dir);
    }
    let status = build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap_or_else(|e| panic!("run cargo to build {bin}: {e}"));
    assert!(status.success(), "building {bin} failed");
    binary
}
