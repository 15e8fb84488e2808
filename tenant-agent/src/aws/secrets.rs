//! Secrets Manager in the customer's account: the database password lives here and only its
//! ARN ever leaves the agent.

use aws_config::SdkConfig;
use aws_sdk_secretsmanager::types::Tag;
use rand::Rng;
use rand::distr::Alphanumeric;
use secrecy::{ExposeSecret, SecretString};

use super::{error_code, sdk_error};
use crate::task::{Payload, TaskError};

pub struct Secrets {
    client: aws_sdk_secretsmanager::Client,
}

/// A secret the agent made or found: its ARN (reported) and value (kept in memory only).
pub struct Stored {
    pub arn: String,
    pub value: SecretString,
}

/// A random password RDS accepts (letters and digits only: no `/`, `"`, `@` or space).
pub fn generate_password() -> SecretString {
    let p: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect();
    SecretString::from(p)
}

impl Secrets {
    pub fn new(cfg: &SdkConfig) -> Secrets {
        Secrets {
            client: aws_sdk_secretsmanager::Client::new(cfg),
        }
    }

    /// Answers the secret `name` if it exists and is this object's; otherwise creates it with
    /// a freshly generated value, tagged like every Qleet resource.
    pub async fn get_or_create(&self, name: &str, payload: &Payload) -> Result<Stored, TaskError> {
        if let Some(arn) = self
            .find_ours(name, payload, "exists but is not tagged as this object's")
            .await?
        {
            let value = self.read(&arn).await?;
            return Ok(Stored { arn, value });
        }
        let value = generate_password();
        let tags: Vec<Tag> = payload
            .tags()
            .into_iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let created = self
            .client
            .create_secret()
            .name(name)
            .description("Database password made by the Qleet agent")
            .secret_string(value.expose_secret())
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| sdk_error("secretsmanager:CreateSecret", e))?;
        Ok(Stored {
            arn: created.arn().unwrap_or(name).to_owned(),
            value,
        })
    }

    /// The ARN of the secret `name` when it exists; a `SecretNotOurs` error (secret `name`
    /// followed by `not_ours`) when it exists without this object's id tag.
    async fn find_ours(
        &self,
        name: &str,
        payload: &Payload,
        not_ours: &str,
    ) -> Result<Option<String>, TaskError> {
        match self.client.describe_secret().secret_id(name).send().await {
            Ok(d) => {
                let id = payload.object.id.to_string();
                let ours = d
                    .tags()
                    .iter()
                    .any(|t| t.key() == Some("qleet:object-id") && t.value() == Some(&id));
                if !ours {
                    return Err(TaskError::permanent(
                        "SecretNotOurs",
                        format!("secret `{name}` {not_ours}"),
                    ));
                }
                Ok(Some(d.arn().unwrap_or(name).to_owned()))
            }
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(sdk_error("secretsmanager:DescribeSecret", e)),
        }
    }

    /// The current value of a secret (by name or ARN).
    pub async fn read(&self, id: &str) -> Result<SecretString, TaskError> {
        let v = self
            .client
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| sdk_error("secretsmanager:GetSecretValue", e))?;
        v.secret_string()
            .map(|s| SecretString::from(s.to_owned()))
            .ok_or_else(|| {
                TaskError::permanent("SecretNotText", format!("secret `{id}` has no text value"))
            })
    }

    /// Deletes the secret at once (no recovery window, so the same name can be made again).
    pub async fn delete(&self, name: &str, payload: &Payload) -> Result<(), TaskError> {
        if self
            .find_ours(name, payload, "is not tagged as this object's; left alone")
            .await?
            .is_none()
        {
            return Ok(());
        }
        match self
            .client
            .delete_secret()
            .secret_id(name)
            .force_delete_without_recovery(true)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if error_code(&e) == Some("ResourceNotFoundException") => Ok(()),
            Err(e) => Err(sdk_error("secretsmanager:DeleteSecret", e)),
        }
    }
}
