//! Bad input ends with one line on stderr and the documented exit code, never a panic.

use crate::support::{owner_with_token, run, run_env, spawn_app};

#[tokio::test]
async fn bad_input_gives_one_line_errors_and_the_documented_exit_codes() {
    let app = spawn_app().await;
    let dir = app.config_dir.clone();
    let token = owner_with_token(&app, "owner@example.test", "acme").await;
    let ci = [
        ("QLEET_URL", app.url.as_str()),
        ("QLEET_TOKEN", token.as_str()),
        ("QLEET_ORG", "acme"),
    ];

    // Usage: unknown command or flag, a bad duration.
    let out = run(&app, &["frobnicate"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    let out = run(&app, &["apply", "-f", "x.yaml", "--wait=soon"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    // Completion needs no sign-in.
    let out = run(&app, &["completion", "bash"]).await;
    assert!(out.ok().contains("_qleetctl()"), "{out:?}");
    // Not signed in at all.
    let out = run(&app, &["whoami"]).await;
    assert!(out.fails(3).contains("not signed in"), "{out:?}");

    // A missing file and invalid YAML: exit 1 before anything is sent.
    let out = run_env(&dir, &ci, &["plan", "-f", "/nonexistent/app.yaml"]).await;
    assert_eq!(
        out.fails(1),
        "error: cannot read /nonexistent/app.yaml: no such file"
    );
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "kind: [unclosed\n").expect("write");
    let out = run_env(&dir, &ci, &["apply", "-f", bad.to_str().expect("path")]).await;
    assert!(out.fails(1).contains("is not valid YAML"), "{out:?}");

    // A wrong context: an organisation or control plane that is not there (exit 2).
    let out = run_env(&dir, &ci, &["use", "nosuch"]).await;
    assert_eq!(
        out.fails(2),
        "error: organisation \"nosuch\" not found (or you are not a member)"
    );
    let out = run_env(&dir, &ci, &["get", "--control-plane", "nosuch"]).await;
    assert!(
        out.fails(2)
            .contains("no control plane \"nosuch\" in organisation acme"),
        "{out:?}"
    );
    let out = run_env(&dir, &ci, &["describe", "web"]).await;
    assert!(out.fails(2).contains("Kind/name"), "{out:?}");

    // A wrong token: exit 3 with the server's code and a hint.
    let wrong = [
        ("QLEET_URL", app.url.as_str()),
        ("QLEET_TOKEN", "qleet_wrong"),
        ("QLEET_ORG", "acme"),
    ];
    let out = run_env(&dir, &wrong, &["whoami"]).await;
    assert!(out.fails(3).contains("UNAUTHENTICATED"), "{out:?}");
    // Nothing listening: exit 4.
    let gone = [
        ("QLEET_URL", "http://127.0.0.1:9"),
        ("QLEET_TOKEN", token.as_str()),
    ];
    let out = run_env(&dir, &gone, &["whoami"]).await;
    assert!(out.fails(4).contains("cannot be reached"), "{out:?}");
    let out = run_env(
        &dir,
        &[("QLEET_URL", "ftp://x"), ("QLEET_TOKEN", "t")],
        &["whoami"],
    )
    .await;
    assert_eq!(out.code, 2, "{out:?}");
}
