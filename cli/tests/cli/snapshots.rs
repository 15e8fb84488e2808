//! Snapshots of what people and scripts read: tables, JSON and YAML of `get`, `describe`,
//! `plan`, `graph` and `cp list`, taken from a real server (the workflow test's, once the
//! README's example is Ready). What differs from run to run (ids, times, ports, tokens) is
//! replaced by a placeholder before comparing; everything else, column widths and order included,
//! must match `snapshots/` exactly. After an intended change: `INSTA_UPDATE=always cargo test -p
//! qleetctl --test cli`, review the diff, commit it.

use crate::support::{TestApp, run};

/// What changes from run to run, replaced before comparing.
fn filters() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            // With the quotes YAML puts around some ids (those that could read as a number).
            r#""?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"?"#,
            "[uuid]",
        ),
        // A time, with the padding a table gives it (its width depends on the fraction).
        (
            r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})( {2,})?",
            "[time]  ",
        ),
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[port]"),
        (r"qleet_[a-z]+_[A-Za-z0-9_-]+", "[token]"),
    ]
}

/// Compares what `qleetctl {shown}` printed with snapshot `name`.
fn assert_matches(name: &str, shown: &str, stdout: &str) {
    insta::with_settings!({
        filters => filters(),
        snapshot_path => "snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
    }, {
        insta::assert_snapshot!(name, format!("$ qleetctl {shown}\n{stdout}"));
    });
}

/// Runs `qleetctl args` (it must succeed) and compares its output with snapshot `name`.
async fn check(app: &TestApp, name: &str, args: &[&str]) {
    let out = run(app, args).await;
    assert_matches(name, &args.join(" "), out.ok());
}

/// The README's example with a changed bucket and image: the plan's field and line diffs.
const CHANGED: [(&str, &str); 2] = [
    (
        "spec: {account: AwsAccount/main, versioning: true}",
        "spec: {account: AwsAccount/main, versioning: false}",
    ),
    ("ghcr.io/example/shop:1", "ghcr.io/example/shop:2"),
];

/// Every snapshot; `app` has the README's example applied and Ready in its current context,
/// `dir` is a scratch directory.
pub async fn outputs(app: &TestApp, app_yaml: &str, dir: &std::path::Path) {
    for format in ["table", "json", "yaml"] {
        check(app, &format!("get_{format}"), &["get", "-o", format]).await;
        check(
            app,
            &format!("get_one_{format}"),
            &["get", "RelationalDatabase/db", "-o", format],
        )
        .await;
        check(
            app,
            &format!("cp_list_{format}"),
            &["cp", "list", "-o", format],
        )
        .await;
    }

    // describe: everything up to the events, whose number depends on timing.
    let out = run(app, &["describe", "Workload/web"]).await;
    let text = out.ok();
    let head = &text[..text.find("Events:\n").unwrap_or(text.len())];
    assert_matches("describe_table", "describe Workload/web", head);

    let mut changed = app_yaml.to_owned();
    for (from, to) in CHANGED {
        assert!(changed.contains(from), "the example has {from}");
        changed = changed.replace(from, to);
    }
    let file = dir.join("changed.yaml");
    std::fs::write(&file, changed).expect("write");
    let file = file.to_str().expect("path");
    for format in ["table", "json", "yaml"] {
        let out = run(app, &["plan", "-f", file, "-o", format]).await;
        assert_matches(
            &format!("plan_{format}"),
            &format!("plan -f changed.yaml -o {format}"),
            out.ok(),
        );
    }

    check(app, "graph_tree", &["graph"]).await;
    check(app, "graph_dot", &["graph", "--dot"]).await;
}
