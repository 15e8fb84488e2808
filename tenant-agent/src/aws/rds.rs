//! RDS instances: the password is generated here and kept in the customer's Secrets Manager;
//! the instance is created (or adopted under the same identifier), brought in line with the
//! payload, and waited for until it answers on an endpoint.

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
                self.modify_if_needed(&i, spec).await?;
                i
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
        let instance = self.wait_available(id, instance).await?;
        let endpoint = instance.endpoint().ok_or_else(|| {
            TaskError::retryable(
                "RdsNoEndpoint",
                format!("{id} is available without an endpoint"),
            )
        })?;
        let mut out = Map::new();
        out.insert("host".into(), json!(endpoint.address().unwrap_or_default()));
        out.insert("port".into(), json!(endpoint.port().unwrap_or(spec.port)));
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

    async fn modify_if_needed(&self, i: &DbInstance, spec: &DatabaseSpec) -> Result<(), TaskError> {
        let class = i.db_instance_class() != Some(spec.size_class.as_str());
        let storage = i.allocated_storage().is_some_and(|s| s < spec.storage_gb);
        let backups = i.backup_retention_period() != Some(spec.backup_retention_days);
        if !(class || storage || backups) {
            return Ok(());
        }
        let mut req = self
            .client
            .modify_db_instance()
            .db_instance_identifier(&spec.instance_identifier)
            .apply_immediately(true);
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
        Ok(())
    }

    async fn wait_available(&self, id: &str, mut i: DbInstance) -> Result<DbInstance, TaskError> {
        for _ in 0..WAIT_ROUNDS {
            let status = i.db_instance_status().unwrap_or_default();
            if status == "available" && i.endpoint().is_some() {
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
