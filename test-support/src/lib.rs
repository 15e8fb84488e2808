//! What Qleet's test suites and benchmarks share instead of copying: a fresh database per test
//! ([`db`]), a standalone control plane with GraphQL, agent-API and wait-for-phase helpers
//! ([`cp`]), the `qleet-control-plane` binary for tests that run real processes
//! ([`control_plane_binary`]), and (feature `kube`) an in-memory Kubernetes API server behind
//! kube's mock with strict manifest checks ([`kube`]).

pub mod cp;
pub mod db;
#[cfg(feature = "kube")]
pub mod kube;

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;

/// The `extensions.code` of a GraphQL answer's first error, if any.
pub fn error_code(body: &Value) -> Option<String> {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .map(str::to_owned)
}

/// The `qleet-control-plane` binary of this build (the directory cargo put the running test
/// binary's profile in), built once with cargo if a test run has not built it already (as
/// `cargo test -p qleet` alone does not).
pub fn control_plane_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test binary path");
            // target/<profile>/deps/<test binary> → target/<profile>
            let profile_dir = exe
                .parent()
                .and_then(|deps| deps.parent())
                .expect("test binary under target/<profile>/deps");
            let binary = profile_dir.join("qleet-control-plane");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let mut build = std::process::Command::new(cargo);
            build.args(["build", "--quiet", "-p", "qleet-control-plane", "--bin"]);
            build.arg("qleet-control-plane");
            if profile_dir.file_name().is_some_and(|p| p == "release") {
                build.arg("--release");
            }
            if let Some(target_dir) = profile_dir.parent() {
                build.env("CARGO_TARGET_DIR", target_dir);
            }
            // Up to date already after `cargo test --workspace`; then this is a quick no-op.
            let status = build
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo to build qleet-control-plane");
            assert!(status.success(), "building qleet-control-plane failed");
            binary
        })
        .clone()
}
