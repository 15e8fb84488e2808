//! `qleet control-plane` stays an alias: it runs the `qleet-control-plane` binary with the same
//! arguments (and its exit status and one-line reasons).

use uuid::Uuid;

#[test]
fn qleet_control_plane_runs_the_lean_binary_with_the_same_arguments() {
    let binary = qleet_test_support::control_plane_binary();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_qleet"))
            .arg("control-plane")
            .args(args)
            .env_clear()
            .env("QLEET_CONTROL_PLANE_BIN", &binary)
            .envs(env.iter().copied())
            .output()
            .expect("run qleet")
    };
    let help = run(&["--help"], &[]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("qleet-control-plane"), "{text}");
    assert!(text.contains("--verifying-key"), "{text}");

    let id = Uuid::new_v4().to_string();
    let refused = run(
        &["--database-url", "postgres://postgres@127.0.0.1:1/none"],
        &[("QLEET_CP_ID", &id), ("QLEET_CP_ADMIN_TOKEN", "short")],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.starts_with("qleet-control-plane: ") && stderr.contains("QLEET_CP_ADMIN_TOKEN"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_qleet"))
        .arg("control-plane")
        .env_clear()
        .env(
            "QLEET_CONTROL_PLANE_BIN",
            "/nonexistent/qleet-control-plane",
        )
        .output()
        .expect("run qleet");
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("cannot run /nonexistent/qleet-control-plane"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}
