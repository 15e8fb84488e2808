//! The Kubernetes clusters this agent reaches, by the name a `KubernetesRuntime` uses: named
//! kubeconfigs (`--cluster NAME=PATH`), the current context of `--kubeconfig`, the cluster the
//! agent runs in (`--in-cluster NAME`). EKS clusters Qleet made need none of these: they are
//! reached with a token from the runtime's assumed role ([`super::eks`]), one client per
//! object, replaced before its token expires.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

use super::eks::{self, EksAccess};
use super::kube_error;
use crate::aws::{Actor, Aws};
use crate::config::ClusterSource;
use crate::task::TaskError;

#[derive(Clone)]
struct Connected {
    client: kube::Client,
    endpoint: String,
}

/// Which EKS client is which: one per cluster, role and object (the token's session names
/// the task and object, as in CloudTrail for the AWS tasks).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EksKey {
    endpoint: String,
    cluster_name: String,
    role_arn: String,
    external_id: Option<String>,
    object_id: uuid::Uuid,
}

/// Named clusters, connected on first use, and EKS clients by token.
#[derive(Clone, Default)]
pub struct Clusters {
    sources: Arc<BTreeMap<String, ClusterSource>>,
    connected: Arc<Mutex<HashMap<String, Connected>>>,
    /// EKS clients with the time until which their token may be used.
    eks: Arc<Mutex<HashMap<EksKey, (kube::Client, SystemTime)>>>,
}

impl Clusters {
    /// The configured clusters plus `kubeconfig`'s current context (known by its cluster's
    /// name in that file).
    pub fn new(
        mut sources: BTreeMap<String, ClusterSource>,
        kubeconfig: Option<&Path>,
    ) -> Result<Clusters, String> {
        if let Some(path) = kubeconfig {
            let name = current_cluster(path)?;
            sources
                .entry(name)
                .or_insert_with(|| ClusterSource::Kubeconfig(path.to_path_buf()));
        }
        Ok(Clusters {
            sources: Arc::new(sources),
            ..Clusters::default()
        })
    }

    /// Clusters given as ready clients (tests, and callers that build their own).
    pub fn from_clients(
        clients: impl IntoIterator<Item = (String, kube::Client, String)>,
    ) -> Clusters {
        let connected = clients
            .into_iter()
            .map(|(name, client, endpoint)| (name, Connected { client, endpoint }))
            .collect();
        Clusters {
            connected: Arc::new(Mutex::new(connected)),
            ..Clusters::default()
        }
    }

    /// The names this agent knows.
    pub async fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.sources.keys().cloned().collect();
        names.extend(self.connected.lock().await.keys().cloned());
        names.sort();
        names.dedup();
        names
    }

    async fn connect(&self, name: &str) -> Result<Connected, TaskError> {
        let mut connected = self.connected.lock().await;
        if let Some(c) = connected.get(name) {
            return Ok(c.clone());
        }
        let Some(source) = self.sources.get(name) else {
            drop(connected);
            let known = self.names().await;
            return Err(TaskError::permanent(
                "UnknownCluster",
                format!(
                    "this agent has no cluster named `{name}` (it knows: {}); start it with --cluster {name}=KUBECONFIG",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        let config = match source {
            ClusterSource::InCluster => kube::Config::incluster().map_err(|e| {
                TaskError::permanent("ClusterConfig", format!("{name}: in-cluster config: {e}"))
            })?,
            ClusterSource::Kubeconfig(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| {
                    TaskError::permanent(
                        "ClusterConfig",
                        format!("{name}: {}: {e}", path.display()),
                    )
                })?;
                kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| {
                        TaskError::permanent(
                            "ClusterConfig",
                            format!("{name}: {}: {e}", path.display()),
                        )
                    })?
            }
        };
        let endpoint = config.cluster_url.to_string();
        let client = kube::Client::try_from(config)
            .map_err(|e| TaskError::permanent("ClusterConfig", format!("{name}: {e}")))?;
        let c = Connected { client, endpoint };
        connected.insert(name.to_owned(), c.clone());
        Ok(c)
    }

    /// A client for the cluster `name`.
    pub async fn client(&self, name: &str) -> Result<kube::Client, TaskError> {
        Ok(self.connect(name).await?.client)
    }

    /// A client for an EKS runtime, authenticated with a token from its account's assumed
    /// role; made again once the one in use is [`eks::CLIENT_TTL`] old (or its session's
    /// credentials are about to expire).
    pub async fn eks_client(
        &self,
        aws: &Aws,
        access: &EksAccess,
        actor: &Actor,
    ) -> Result<kube::Client, TaskError> {
        let key = EksKey {
            endpoint: access.endpoint.clone(),
            cluster_name: access.cluster_name.clone(),
            role_arn: access.account.role_arn.clone(),
            external_id: access.account.external_id.clone(),
            object_id: actor.object_id,
        };
        let mut clients = self.eks.lock().await;
        if let Some((client, until)) = clients.get(&key)
            && SystemTime::now() < *until
        {
            return Ok(client.clone());
        }
        let session = aws.session(&access.account, actor).await?;
        let (token, until) = eks::token_for(&session, access).await?;
        let config = eks::config(access, token).await?;
        let client = kube::Client::try_from(config).map_err(|e| {
            TaskError::permanent(
                "ClusterConfig",
                format!("EKS cluster {}: {e}", access.cluster_name),
            )
        })?;
        let now = SystemTime::now();
        clients.retain(|_, (_, until)| now < *until);
        clients.insert(key, (client.clone(), until));
        Ok(client)
    }

    /// Checks the cluster answers; its outputs as a `KubernetesRuntime` (`existing`).
    pub async fn check(&self, name: &str) -> Result<Map<String, Value>, TaskError> {
        let c = self.connect(name).await?;
        let version = c
            .client
            .apiserver_version()
            .await
            .map_err(|e| kube_error(&format!("reaching cluster {name}"), e))?;
        tracing::info!(cluster = name, version = %version.git_version, "cluster reachable");
        let mut out = Map::new();
        out.insert("endpoint".into(), json!(c.endpoint.trim_end_matches('/')));
        out.insert("clusterName".into(), json!(name));
        Ok(out)
    }
}

/// The cluster name of a kubeconfig's current context.
fn current_cluster(path: &Path) -> Result<String, String> {
    let kc =
        Kubeconfig::read_from(path).map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
    let ctx_name = kc
        .current_context
        .clone()
        .ok_or_else(|| format!("--kubeconfig {}: no current-context", path.display()))?;
    kc.contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .ok_or_else(|| {
            format!(
                "--kubeconfig {}: context `{ctx_name}` not found",
                path.display()
            )
        })
}
