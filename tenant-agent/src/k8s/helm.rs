//! Helm charts, rendered with the `helm template` CLI and then applied like any manifest.
//!
//! Why the CLI: it is Helm's own template engine (Go templates, sprig, chart dependencies,
//! OCI and HTTP repositories, provenance), maintained by the Helm project, so charts render
//! exactly as `helm install` would; no Rust reimplementation is complete. Rendering only (no
//! `helm install`) keeps one owner for what lands in the cluster: the agent's server-side apply
//! with its labels and pruning. Hooks are rendered as plain objects. Without a `helm` binary a
//! chart fails with `HelmUnavailable` (the agent's container image ships one).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::task::TaskError;

const TIMEOUT: Duration = Duration::from_secs(300);

/// One chart release of a payload.
#[derive(Debug, Clone, Deserialize)]
pub struct Release {
    pub name: String,
    pub namespace: String,
    pub repo: String,
    pub chart: String,
    pub version: String,
    #[serde(default)]
    pub values: Value,
}

/// Renders `release` with `helm template`, answering its objects.
pub async fn template(helm: &Path, release: &Release) -> Result<Vec<Value>, TaskError> {
    let (chart, repo) = if release.repo.starts_with("oci://") {
        (
            format!("{}/{}", release.repo.trim_end_matches('/'), release.chart),
            None,
        )
    } else {
        (release.chart.clone(), Some(release.repo.as_str()))
    };
    let mut cmd = tokio::process::Command::new(helm);
    cmd.arg("template")
        .arg(&release.name)
        .arg(&chart)
        .args(["--version", &release.version])
        .args(["--namespace", &release.namespace])
        .arg("--include-crds")
        // Values come on stdin: JSON is YAML.
        .args(["--values", "-"]);
    if let Some(repo) = repo {
        cmd.args(["--repo", repo]);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            TaskError::permanent(
                "HelmUnavailable",
                format!(
                    "release {}: Helm charts need the `helm` CLI, and `{}` was not found (install Helm 3 or pass --helm PATH)",
                    release.name,
                    helm.display()
                ),
            )
        } else {
            TaskError::permanent("HelmUnavailable", format!("running {}: {e}", helm.display()))
        }
    })?;
    let values = if release.values.is_null() {
        "{}".to_owned()
    } else {
        release.values.to_string()
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(values.as_bytes())
            .await
            .map_err(|e| TaskError::retryable("HelmFailed", e.to_string()))?;
    }
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            TaskError::retryable(
                "HelmTimeout",
                format!("helm template {} took too long", release.name),
            )
        })?
        .map_err(|e| TaskError::retryable("HelmFailed", e.to_string()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = stderr.lines().rev().take(5).collect();
        let message: Vec<&str> = last.into_iter().rev().collect();
        return Err(TaskError::permanent(
            "HelmTemplateFailed",
            format!(
                "helm template {} {chart}: {}",
                release.name,
                message.join(" / ")
            ),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).map_err(|e| {
        TaskError::permanent(
            "HelmTemplateFailed",
            format!(
                "helm template {}: unreadable output: {}",
                release.name,
                e.to_string().lines().next().unwrap_or_default()
            ),
        )
    })?;
    Ok(docs.into_iter().filter(|d| d.is_object()).collect())
}
