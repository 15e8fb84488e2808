//! RDS instances: the password is generated here and kept in the customer's Secrets Manager;
//! the instance is created (or adopted under the same identifier), brought in line with the
//! payload (ModifyDBInstance for version, class, storage and backups), and waited for until it
//! answers on an endpoint. What is reported is read back from RDS, never echoed.

use std::cmp::Ordering;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_rds::types::{DbInstance, Tag};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::secrets::Secrets;
use super::{Account, error_code, sdk_error};
use crate::task::{Payload, TaskError};

/// How often and how long to wait for an instance to become available or go away.
const POLL: Duration = Duration::from_secs(15);
const WAIT_ROUNDS: u32 = 240;

/// `payload.resource.database`
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    pub instance_identifier: String,
    pub engine: String,
    pub version: String,
    pub size_class: String,
    pub storage_gb: i32,
    #[serde(default)]
    pub backup_retention_days: i32,
    pub database: String,
    pub username: String,
    pub port: i32,
    pub password_secret_name: String,
    /// Modifications now (true) or in the next maintenance window (false).
    #[serde(default = "yes")]
    pub apply_immediately: bool,
}

fn yes() -> bool {
    true
}

pub struct Rds {
    client: aws_sdk_rds::Client,
    secrets: Secrets,
}

impl Rds {
    pub fn new(cfg: &SdkConfig) -> Rds {
        Rds {
            client: aws_sdk_rds::Client::new(cfg),
            secrets: Secrets::new(cfg),
        }
    }

    async fn describe(&self, id: &str) -> Result<Option<DbInstance>, TaskError> {
        match self
            .client
            .describe_db_instances()
            .db_instance_identifier(id)
            .send()
            .await
        {
            Ok(out) => Ok(out.db_instances().first().cloned()),
            Err(e) if error_code(&e) == Some("DBInstanceNotFound") => Ok(None),
            Err(e) => Err(sdk_error("rds:DescribeDBInstances", e)),
        }
    }

    /// Makes the instance match `spec`; answers host, port and a reference to the password.
    pub async fn ensure(
        &self,
        spec: &DatabaseSpec,
        payload: &Payload,
        account: &Account,
    ) -> Result<Map<String, Value>, TaskError> {
        let id = spec.instance_identifier.as_str();
        let secret = self
            .secrets
            .get_or_create(&spec.password_secret_name, payload)
            .await?;
        let instance = match self.describe(id).await? {
            Some(i) => {
                check_ours(&i, payload)?;
                check_same_instance(&i, spec)?;
                self.sync_tags(&i, payload).await?;
                if self.modify_if_needed(&i, spec).await? {
                    self.describe(id).await?.ok_or_else(|| {
                        TaskError::retryable("DBInstanceNotFound", format!("{id} disappeared"))
                    })?
                } else {
                    i
                }
            }
            None => {
                let tags: Vec<Tag> = payload
                    .tags()
                    .into_iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect();
                let created = self
                    .client
                    .create_db_instance()
                    .db_instance_identifier(id)
                    .db_instance_class(&spec.size_class)
                    .engine(&spec.engine)
                    .engine_version(&spec.version)
                    .allocated_storage(spec.storage_gb)
                    .db_name(&spec.database)
                    .master_username(&spec.username)
                    .master_user_password(secret.value.expose_secret())
                    .port(spec.port)
                    .backup_retention_period(spec.backup_retention_days)
                    .storage_encrypted(true)
                    .publicly_accessible(false)
                    .copy_tags_to_snapshot(true)
                    .set_tags(Some(tags))
                    .send()
                    .await;
                match created {
                    Ok(out) => out.db_instance().cloned().ok_or_else(|| {
                        TaskError::retryable("RdsNoInstance", "CreateDBInstance answered nothing")
                    })?,
                    // Another try of ours got there first: adopt it.
                    Err(e) if error_code(&e) == Some("DBInstanceAlreadyExists") => {
                        let i = self.describe(id).await?.ok_or_else(|| {
                            TaskError::retryable("DBInstanceNotFound", "created and then gone")
                        })?;
                        check_ours(&i, payload)?;
                        i
                    }
                    Err(e) => return Err(sdk_error("rds:CreateDBInstance", e)),
                }
            }
        };
        let instance = self
            .wait_available(id, instance, spec.apply_immediately)
            .await?;
        let endpoint = instance.endpoint().ok_or_else(|| {
            TaskError::retryable(
                "RdsNoEndpoint",
                format!("{id} is available without an endpoint"),
            )
        })?;
        let mut out = Map::new();
        out.insert("host".into(), json!(endpoint.address().unwrap_or_default()));
        out.insert("port".into(), json!(endpoint.port()));
        out.insert("engine".into(), json!(instance.engine()));
        out.insert("version".into(), json!(instance.engine_version()));
        out.insert("sizeClass".into(), json!(instance.db_instance_class()));
        out.insert("storageGb".into(), json!(instance.allocated_storage()));
        out.insert(
            "backupRetentionDays".into(),
            json!(instance.backup_retention_period()),
        );
        out.insert("database".into(), json!(instance.db_name()));
        out.insert("username".into(), json!(instance.master_username()));
        out.insert(
            "password".into(),
            json!({ "secretRef": {
                "provider": "aws-secretsmanager",
                "arn": secret.arn,
                "region": account.region,
                "roleArn": account.role_arn,
                "externalId": account.external_id,
            }}),
        );
        Ok(out)
    }

    /// Reads the instance as it is, changing nothing (a drift check): `found: false` when it
    /// is gone, else what RDS says of it.
    pub async fn observe(
        &self,
        spec: &DatabaseSpec,
        payload: &Payload,
        account: &Account,
    ) -> Result<Map<String, Value>, TaskError> {
        let mut out = Map::new();
        let Some(i) = self.describe(&spec.instance_identifier).await? else {
            out.insert("found".into(), json!(false));
            return Ok(out);
        };
        check_ours(&i, payload)?;
        let tags: Map<String, Value> = i
            .tag_list()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), json!(t.value().unwrap_or_default()))))
            .collect();
        out.insert("found".into(), json!(true));
        // Found through this region's API: that is where it is.
        out.insert("region".into(), json!(account.region));
        out.insert("engine".into(), json!(i.engine()));
        out.insert("version".into(), json!(i.engine_version()));
        out.insert("sizeClass".into(), json!(i.db_instance_class()));
        out.insert("storageGb".into(), json!(i.allocated_storage()));
        out.insert(
            "backupRetentionDays".into(),
            json!(i.backup_retention_period()),
        );
        out.insert("database".into(), json!(i.db_name()));
        out.insert("username".into(), json!(i.master_username()));
        out.insert("tags".into(), Value::Object(tags));
        Ok(out)
    }

    /// Makes the instance's tags the declared ones (the customer's and Qleet's): changed or
    /// new ones are set, others removed (AWS's own `aws:*` tags are left alone).
    async fn sync_tags(&self, i: &DbInstance, payload: &Payload) -> Result<(), TaskError> {
        let arn = i.db_instance_arn().unwrap_or_default();
        let want: std::collections::BTreeMap<String, String> = payload.tags().into_iter().collect();
        let have: std::collections::BTreeMap<&str, &str> = i
            .tag_list()
            .iter()
            .filter_map(|t| Some((t.key()?, t.value().unwrap_or_default())))
            .collect();
        let stale: Vec<String> = have
            .keys()
            .filter(|k| !want.contains_key(**k) && !k.starts_with("aws:"))
            .map(|k| (*k).to_owned())
            .collect();
        if !stale.is_empty() {
            self.client
                .remove_tags_from_resource()
                .resource_name(arn)
                .set_tag_keys(Some(stale))
                .send()
                .await
                .map_err(|e| sdk_error("rds:RemoveTagsFromResource", e))?;
        }
        let changed: Vec<Tag> = want
            .iter()
            .filter(|(k, v)| have.get(k.as_str()) != Some(&v.as_str()))
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        if !changed.is_empty() {
            self.client
                .add_tags_to_resource()
                .resource_name(arn)
                .set_tags(Some(changed))
                .send()
                .await
                .map_err(|e| sdk_error("rds:AddTagsToResource", e))?;
        }
        Ok(())
    }

    /// Brings version, class, storage and backups in line; answers whether it asked for
    /// anything. RDS cannot go down in version or storage: that is refused, never ignored.
    async fn modify_if_needed(
        &self,
        i: &DbInstance,
        spec: &DatabaseSpec,
    ) -> Result<bool, TaskError> {
        let id = spec.instance_identifier.as_str();
        let current_version = i.engine_version().unwrap_or_default();
        let version = match compare_versions(&spec.version, current_version) {
            Ordering::Greater => true,
            Ordering::Equal => false,
            Ordering::Less => {
                return Err(TaskError::permanent(
                    "EngineVersionDowngrade",
                    format!(
                        "{id} runs {current_version}; RDS cannot downgrade it to {}",
                        spec.version
                    ),
                ));
            }
        };
        if i.allocated_storage().is_some_and(|s| s > spec.storage_gb) {
            return Err(TaskError::permanent(
                "StorageShrink",
                format!(
                    "{id} has {} GiB; RDS cannot shrink it to {}",
                    i.allocated_storage().unwrap_or_default(),
                    spec.storage_gb
                ),
            ));
        }
        let class = i.db_instance_class() != Some(spec.size_class.as_str());
        let storage = i.allocated_storage().is_some_and(|s| s < spec.storage_gb);
        let backups = i.backup_retention_period() != Some(spec.backup_retention_days);
        if !(version || class || storage || backups) {
            return Ok(false);
        }
        let mut req = self
            .client
            .modify_db_instance()
            .db_instance_identifier(id)
            .apply_immediately(spec.apply_immediately);
        if version {
            let major = |v: &str| v.split('.').next().unwrap_or_default().to_owned();
            req = req
                .engine_version(&spec.version)
                .allow_major_version_upgrade(major(&spec.version) != major(current_version));
        }
        if class {
            req = req.db_instance_class(&spec.size_class);
        }
        if storage {
            req = req.allocated_storage(spec.storage_gb);
        }
        if backups {
            req = req.backup_retention_period(spec.backup_retention_days);
        }
        req.send()
            .await
            .map_err(|e| sdk_error("rds:ModifyDBInstance", e))?;
        Ok(true)
    }

    /// Waits until the instance is available with an endpoint and, when changes apply now,
    /// none is still pending.
    async fn wait_available(
        &self,
        id: &str,
        mut i: DbInstance,
        apply_immediately: bool,
    ) -> Result<DbInstance, TaskError> {
        for _ in 0..WAIT_ROUNDS {
            let status = i.db_instance_status().unwrap_or_default();
            let pending = apply_immediately
                && i.pending_modified_values().is_some_and(|p| {
                    p.db_instance_class().is_some()
                        || p.allocated_storage().is_some()
                        || p.engine_version().is_some()
                        || p.backup_retention_period().is_some()
                });
            if status == "available" && i.endpoint().is_some() && !pending {
                return Ok(i);
            }
            if matches!(
                status,
                "failed" | "incompatible-parameters" | "storage-full"
            ) {
                return Err(TaskError::permanent(
                    "DBInstanceFailed",
                    format!("{id} is `{status}`"),
                ));
            }
            tracing::info!(
                instance = id,
                status,
                "waiting for the database to be available"
            );
            tokio::time::sleep(POLL).await;
            i = self.describe(id).await?.ok_or_else(|| {
                TaskError::retryable("DBInstanceNotFound", format!("{id} disappeared"))
            })?;
        }
        Err(TaskError::retryable(
            "DBInstanceNotReady",
            format!("{id} is still not available"),
        ))
    }

    /// Deletes the instance (keeping a final snapshot) and its password secret.
    pub async fn delete(&self, spec: &DatabaseSpec, payload: &Payload) -> Result<(), TaskError> {
        let id = spec.instance_identifier.as_str();
        if let Some(i) = self.describe(id).await? {
            check_ours(&i, payload)?;
            if i.db_instance_status() != Some("deleting") {
                let snapshot = format!("{id}-final-{}", chrono::Utc::now().format("%Y%m%d%H%M%S"));
                match self
                    .client
                    .delete_db_instance()
                    .db_instance_identifier(id)
                    .final_db_snapshot_identifier(snapshot)
                    .delete_automated_backups(false)
                    .send()
                    .await
                {
                    Ok(_) => {}
                    Err(e) if error_code(&e) == Some("DBInstanceNotFound") => {}
                    Err(e) => return Err(sdk_error("rds:DeleteDBInstance", e)),
                }
            }
            let mut gone = false;
            for _ in 0..WAIT_ROUNDS {
                if self.describe(id).await?.is_none() {
                    gone = true;
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
            if !gone {
                return Err(TaskError::retryable(
                    "DBInstanceStillDeleting",
                    format!("{id} is still being deleted"),
                ));
            }
        }
        self.secrets
            .delete(&spec.password_secret_name, payload)
            .await
    }
}

/// What RDS cannot change in place must already be as asked: Qleet replaces the instance (a
/// new identifier) when these change, so a difference here is never papered over.
fn check_same_instance(i: &DbInstance, spec: &DatabaseSpec) -> Result<(), TaskError> {
    let differs = [
        ("engine", i.engine(), spec.engine.as_str()),
        ("database", i.db_name(), spec.database.as_str()),
        ("username", i.master_username(), spec.username.as_str()),
    ]
    .into_iter()
    .find(|(_, have, want)| have.is_some_and(|h| h != *want));
    match differs {
        Some((field, have, want)) => Err(TaskError::permanent(
            "ReplacementRequired",
            format!(
                "{} has {field} `{}`, not `{want}`; RDS cannot change that in place",
                spec.instance_identifier,
                have.unwrap_or_default()
            ),
        )),
        None => Ok(()),
    }
}

/// Dotted versions compared part by part as numbers (`16.10` > `16.9`).
fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parts(a).cmp(&parts(b))
}

/// An instance under our identifier must carry our object id, or it is someone else's.
fn check_ours(i: &DbInstance, payload: &Payload) -> Result<(), TaskError> {
    let id = payload.object.id.to_string();
    let ours = i
        .tag_list()
        .iter()
        .any(|t| t.key() == Some("qleet:object-id") && t.value() == Some(&id));
    if ours {
        Ok(())
    } else {
        Err(TaskError::permanent(
            "DBInstanceNotOurs",
            format!(
                "instance `{}` exists but is not tagged as this object's; Qleet will not adopt it",
                i.db_instance_identifier().unwrap_or_default()
            ),
        ))
    }
}
