//! EKS clusters and their node group: created (or adopted by name), waited for until active,
//! reported by endpoint and certificate authority; deleted node group first.

use std::collections::HashMap;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_eks::types::{Cluster, ClusterStatus, NodegroupScalingConfig, VpcConfigRequest};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Account, error_code, sdk_error};
use crate::task::{Payload, TaskError};

const POLL: Duration = Duration::from_secs(20);
const WAIT_ROUNDS: u32 = 120;

/// `payload.resource.eks`
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EksSpec {
    pub cluster_name: String,
    pub version: String,
    pub node_group: NodeGroup,
    /// The cluster's service role (default: `qleet-eks-cluster` in the account).
    #[serde(default)]
    pub cluster_role_arn: Option<String>,
    /// The nodes' role (default: `qleet-eks-node` in the account).
    #[serde(default)]
    pub node_role_arn: Option<String>,
    /// Subnets for the control plane's network interfaces and the nodes.
    #[serde(default)]
    pub subnet_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeGroup {
    #[serde(default = "default_instance_type")]
    pub instance_type: String,
    pub min: i32,
    pub max: i32,
    pub desired: i32,
}

fn default_instance_type() -> String {
    "t3.medium".into()
}

pub struct Eks {
    client: aws_sdk_eks::Client,
}

fn nodegroup_name(cluster: &str) -> String {
    format!("{cluster}-nodes")
}

fn role(account: &Account, explicit: Option<&String>, name: &str) -> String {
    explicit.cloned().unwrap_or_else(|| {
        let partition_and_account = account
            .role_arn
            .split(":role/")
            .next()
            .unwrap_or("arn:aws:iam::000000000000");
        format!("{partition_and_account}:role/{name}")
    })
}

impl Eks {
    pub fn new(cfg: &SdkConfig) -> Eks {
        Eks {
            client: aws_sdk_eks::Client::new(cfg),
        }
    }

    async fn describe(&self, name: &str) -> Result<Option<Cluster>, TaskError> {
        match self.client.describe_cluster().name(name).send().await {
            Ok(out) => Ok(out.cluster().cloned()),
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(sdk_error("eks:DescribeCluster", e)),
        }
    }

    pub async fn ensure(
        &self,
        spec: &EksSpec,
        payload: &Payload,
        account: &Account,
    ) -> Result<Map<String, Value>, TaskError> {
        let name = spec.cluster_name.as_str();
        let tags: HashMap<String, String> = payload.tags().into_iter().collect();
        match self.describe(name).await? {
            Some(c) => {
                check_ours(c.tags(), payload, name)?;
                self.sync_tags(&c, &tags).await?;
            }
            None => {
                let created = self
                    .client
                    .create_cluster()
                    .name(name)
                    .version(&spec.version)
                    .role_arn(role(
                        account,
                        spec.cluster_role_arn.as_ref(),
                        "qleet-eks-cluster",
                    ))
                    .resources_vpc_config(
                        VpcConfigRequest::builder()
                            .set_subnet_ids(Some(spec.subnet_ids.clone()))
                            .endpoint_public_access(true)
                            .endpoint_private_access(true)
                            .build(),
                    )
                    // Idempotent: the same token makes a retried create a no-op.
                    .client_request_token(format!("qleet-{}", payload.object.id.simple()))
                    .set_tags(Some(tags.clone()))
                    .send()
                    .await;
                match created {
                    Ok(_) => {}
                    Err(e) if error_code(&e) == Some("ResourceInUseException") => {}
                    Err(e) => return Err(sdk_error("eks:CreateCluster", e)),
                }
            }
        }
        let mut cluster = self.wait_active(name).await?;
        // A newer Kubernetes version is an in-place upgrade (one minor version per call, as
        // EKS requires); an older one is refused, never ignored.
        if let Some(current) = cluster.version().map(str::to_owned)
            && current != spec.version
        {
            let minor = |v: &str| v.split('.').nth(1).and_then(|m| m.parse::<u32>().ok());
            match (minor(&current), minor(&spec.version)) {
                (Some(have), Some(want)) if want > have => {
                    self.client
                        .update_cluster_version()
                        .name(name)
                        .version(format!("1.{}", have + 1))
                        .send()
                        .await
                        .map_err(|e| sdk_error("eks:UpdateClusterVersion", e))?;
                    cluster = self.wait_active(name).await?;
                    if cluster.version() != Some(spec.version.as_str()) {
                        return Err(TaskError::retryable(
                            "ClusterUpgrading",
                            format!(
                                "{name} is at {}; upgrading one minor version at a time to {}",
                                cluster.version().unwrap_or_default(),
                                spec.version
                            ),
                        ));
                    }
                }
                _ => {
                    return Err(TaskError::permanent(
                        "ClusterVersionDowngrade",
                        format!(
                            "{name} runs {current}; EKS cannot go back to {}",
                            spec.version
                        ),
                    ));
                }
            }
        }

        let ng = nodegroup_name(name);
        let scaling = NodegroupScalingConfig::builder()
            .min_size(spec.node_group.min)
            .max_size(spec.node_group.max)
            .desired_size(spec.node_group.desired)
            .build();
        match self
            .client
            .describe_nodegroup()
            .cluster_name(name)
            .nodegroup_name(&ng)
            .send()
            .await
        {
            Ok(out) => {
                let current = out.nodegroup().and_then(|n| n.scaling_config());
                let same = current.is_some_and(|c| {
                    c.min_size() == Some(spec.node_group.min)
                        && c.max_size() == Some(spec.node_group.max)
                        && c.desired_size() == Some(spec.node_group.desired)
                });
                if !same {
                    self.client
                        .update_nodegroup_config()
                        .cluster_name(name)
                        .nodegroup_name(&ng)
                        .scaling_config(scaling)
                        .send()
                        .await
                        .map_err(|e| sdk_error("eks:UpdateNodegroupConfig", e))?;
                }
            }
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => {
                let created = self
                    .client
                    .create_nodegroup()
                    .cluster_name(name)
                    .nodegroup_name(&ng)
                    .scaling_config(scaling)
                    .instance_types(&spec.node_group.instance_type)
                    .node_role(role(account, spec.node_role_arn.as_ref(), "qleet-eks-node"))
                    .set_subnets(Some(spec.subnet_ids.clone()))
                    .client_request_token(format!("qleet-ng-{}", payload.object.id.simple()))
                    .set_tags(Some(tags))
                    .send()
                    .await;
                match created {
                    Ok(_) => {}
                    Err(e) if error_code(&e) == Some("ResourceInUseException") => {}
                    Err(e) => return Err(sdk_error("eks:CreateNodegroup", e)),
                }
            }
            Err(e) => return Err(sdk_error("eks:DescribeNodegroup", e)),
        }

        let mut out = Map::new();
        out.insert(
            "endpoint".into(),
            json!(cluster.endpoint().unwrap_or_default()),
        );
        out.insert("clusterName".into(), json!(name));
        out.insert(
            "certificateAuthority".into(),
            json!(
                cluster
                    .certificate_authority()
                    .and_then(|c| c.data())
                    .unwrap_or_default()
            ),
        );
        Ok(out)
    }

    /// Makes the cluster's tags the declared ones (the customer's and Qleet's), leaving AWS's
    /// own `aws:*` tags alone.
    async fn sync_tags(
        &self,
        c: &Cluster,
        want: &HashMap<String, String>,
    ) -> Result<(), TaskError> {
        let Some(arn) = c.arn() else {
            return Ok(());
        };
        let have = c.tags().cloned().unwrap_or_default();
        let stale: Vec<String> = have
            .keys()
            .filter(|k| !want.contains_key(*k) && !k.starts_with("aws:"))
            .cloned()
            .collect();
        if !stale.is_empty() {
            self.client
                .untag_resource()
                .resource_arn(arn)
                .set_tag_keys(Some(stale))
                .send()
                .await
                .map_err(|e| sdk_error("eks:UntagResource", e))?;
        }
        let changed: HashMap<String, String> = want
            .iter()
            .filter(|(k, v)| have.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !changed.is_empty() {
            self.client
                .tag_resource()
                .resource_arn(arn)
                .set_tags(Some(changed))
                .send()
                .await
                .map_err(|e| sdk_error("eks:TagResource", e))?;
        }
        Ok(())
    }

    async fn wait_active(&self, name: &str) -> Result<Cluster, TaskError> {
        for _ in 0..WAIT_ROUNDS {
            let c = self.describe(name).await?.ok_or_else(|| {
                TaskError::retryable("ResourceNotFoundException", format!("{name} disappeared"))
            })?;
            match c.status() {
                Some(ClusterStatus::Active) if c.endpoint().is_some() => return Ok(c),
                Some(ClusterStatus::Failed) => {
                    return Err(TaskError::permanent(
                        "ClusterFailed",
                        format!("EKS cluster {name} is FAILED"),
                    ));
                }
                _ => {}
            }
            tracing::info!(cluster = name, "waiting for the EKS cluster to be active");
            tokio::time::sleep(POLL).await;
        }
        Err(TaskError::retryable(
            "ClusterNotReady",
            format!("{name} is still not active"),
        ))
    }

    /// Reads the cluster and its node group as they are, changing nothing (a drift check):
    /// `found: false` when the cluster is gone, else what EKS says of its region, version,
    /// node group (sizes and instance type) and tags (AWS's own `aws:*` aside).
    pub async fn observe(
        &self,
        spec: &EksSpec,
        payload: &Payload,
    ) -> Result<Map<String, Value>, TaskError> {
        let name = spec.cluster_name.as_str();
        let mut out = Map::new();
        let Some(cluster) = self.describe(name).await? else {
            out.insert("found".into(), json!(false));
            return Ok(out);
        };
        check_ours(cluster.tags(), payload, name)?;
        let node_group = match self
            .client
            .describe_nodegroup()
            .cluster_name(name)
            .nodegroup_name(nodegroup_name(name))
            .send()
            .await
        {
            Ok(out) => out.nodegroup().map_or(Value::Null, |n| {
                let scaling = n.scaling_config();
                json!({
                    "instanceType": n.instance_types().first(),
                    "min": scaling.and_then(|s| s.min_size()),
                    "max": scaling.and_then(|s| s.max_size()),
                    "desired": scaling.and_then(|s| s.desired_size()),
                })
            }),
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Value::Null,
            Err(e) => return Err(sdk_error("eks:DescribeNodegroup", e)),
        };
        let tags: Map<String, Value> = cluster
            .tags()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !k.starts_with("aws:"))
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        out.insert("found".into(), json!(true));
        // `arn:aws:eks:REGION:ACCOUNT:cluster/NAME`
        out.insert(
            "region".into(),
            json!(cluster.arn().and_then(|a| a.split(':').nth(3))),
        );
        out.insert("version".into(), json!(cluster.version()));
        out.insert("nodeGroup".into(), node_group);
        out.insert("tags".into(), Value::Object(tags));
        Ok(out)
    }

    /// Deletes the node group, waits for it to go, then deletes the cluster.
    pub async fn delete(&self, spec: &EksSpec, payload: &Payload) -> Result<(), TaskError> {
        let name = spec.cluster_name.as_str();
        let Some(cluster) = self.describe(name).await? else {
            return Ok(());
        };
        check_ours(cluster.tags(), payload, name)?;
        let ng = nodegroup_name(name);
        match self
            .client
            .delete_nodegroup()
            .cluster_name(name)
            .nodegroup_name(&ng)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => {}
            Err(e) if error_code(&e) == Some("ResourceInUseException") => {}
            Err(e) => return Err(sdk_error("eks:DeleteNodegroup", e)),
        }
        let mut gone = false;
        for _ in 0..WAIT_ROUNDS {
            match self
                .client
                .describe_nodegroup()
                .cluster_name(name)
                .nodegroup_name(&ng)
                .send()
                .await
            {
                Err(e) if error_code(&e) == Some("ResourceNotFoundException") => {
                    gone = true;
                    break;
                }
                Err(e) => return Err(sdk_error("eks:DescribeNodegroup", e)),
                Ok(_) => tokio::time::sleep(POLL).await,
            }
        }
        if !gone {
            return Err(TaskError::retryable(
                "NodegroupStillDeleting",
                format!("{ng} is still being deleted"),
            ));
        }
        match self.client.delete_cluster().name(name).send().await {
            Ok(_) => Ok(()),
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Ok(()),
            Err(e) => Err(sdk_error("eks:DeleteCluster", e)),
        }
    }
}

fn check_ours(
    tags: Option<&HashMap<String, String>>,
    payload: &Payload,
    name: &str,
) -> Result<(), TaskError> {
    let id = payload.object.id.to_string();
    if tags.and_then(|t| t.get("qleet:object-id")) == Some(&id) {
        Ok(())
    } else {
        Err(TaskError::permanent(
            "ClusterNotOurs",
            format!("EKS cluster `{name}` exists but is not tagged as this object's"),
        ))
    }
}
