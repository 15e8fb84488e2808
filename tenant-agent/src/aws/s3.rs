//! S3 buckets: created (or adopted when an earlier try made it), tagged, versioned, public
//! access blocked, encrypted by default; emptied and deleted. What is reported is read back
//! from S3 afterwards, never echoed from the request.

use aws_config::SdkConfig;
use aws_sdk_s3::types::{
    BucketLocationConstraint, BucketVersioningStatus, CreateBucketConfiguration, Delete,
    ObjectIdentifier, PublicAccessBlockConfiguration, ServerSideEncryption,
    ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration, ServerSideEncryptionRule,
    Tag, Tagging, VersioningConfiguration,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{error_code, sdk_error};
use crate::task::{Payload, TaskError};

/// `payload.resource.bucket`
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketSpec {
    pub name: String,
    #[serde(default)]
    pub versioning: bool,
    #[serde(default = "yes")]
    pub block_public_access: bool,
    #[serde(default)]
    pub encryption: Option<String>,
}

fn yes() -> bool {
    true
}

pub struct S3 {
    client: aws_sdk_s3::Client,
    endpoint: Option<String>,
}

/// Whether the bucket exists, and whether it is this object's.
enum Found {
    Missing,
    Ours,
    NotOurs,
}

impl S3 {
    pub fn new(cfg: &SdkConfig, endpoint_override: Option<&str>) -> S3 {
        let mut b = aws_sdk_s3::config::Builder::from(cfg);
        // An endpoint override (moto, MinIO, a VPC endpoint by IP) has no per-bucket host names.
        if endpoint_override.is_some() {
            b = b.force_path_style(true);
        }
        S3 {
            client: aws_sdk_s3::Client::from_conf(b.build()),
            endpoint: endpoint_override.map(str::to_owned),
        }
    }

    async fn find(&self, name: &str, payload: &Payload) -> Result<Found, TaskError> {
        match self.client.head_bucket().bucket(name).send().await {
            Ok(_) => {}
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                return Ok(Found::Missing);
            }
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 403) => {
                return Ok(Found::NotOurs);
            }
            Err(e) => return Err(sdk_error("s3:HeadBucket", e)),
        }
        let tags = match self.client.get_bucket_tagging().bucket(name).send().await {
            Ok(t) => t.tag_set().to_vec(),
            Err(e) if error_code(&e) == Some("NoSuchTagSet") => Vec::new(),
            Err(e) => return Err(sdk_error("s3:GetBucketTagging", e)),
        };
        let id = payload.object.id.to_string();
        let ours = tags
            .iter()
            .any(|t| t.key() == "qleet:object-id" && t.value() == id);
        // S3 cannot tag a bucket as it creates it, so a try that stopped between CreateBucket
        // and PutBucketTagging (a killed agent) leaves the bucket untagged. An untagged bucket
        // of this object's own name (`qleet-<name>-<id8>`) in the role's own account is that
        // bucket; anything tagged otherwise, or in another account, is not.
        Ok(
            if ours || (tags.is_empty() && self.in_own_account(name).await?) {
                Found::Ours
            } else {
                Found::NotOurs
            },
        )
    }

    /// Whether `name` is one of the caller's own account's buckets (ListBuckets lists only those).
    async fn in_own_account(&self, name: &str) -> Result<bool, TaskError> {
        let listed = self
            .client
            .list_buckets()
            .prefix(name)
            .send()
            .await
            .map_err(|e| sdk_error("s3:ListBuckets", e))?;
        Ok(listed.buckets().iter().any(|b| b.name() == Some(name)))
    }

    /// Makes the bucket match `spec`; answers its outputs.
    pub async fn ensure(
        &self,
        spec: &BucketSpec,
        payload: &Payload,
        region: &str,
    ) -> Result<Map<String, Value>, TaskError> {
        let name = spec.name.as_str();
        match self.find(name, payload).await? {
            Found::NotOurs => return Err(not_ours(name)),
            Found::Ours => {}
            Found::Missing => {
                let mut req = self.client.create_bucket().bucket(name);
                // us-east-1 is the one region that takes no location constraint.
                if region != "us-east-1" {
                    req = req.create_bucket_configuration(
                        CreateBucketConfiguration::builder()
                            .location_constraint(BucketLocationConstraint::from(region))
                            .build(),
                    );
                }
                match req.send().await {
                    Ok(_) => {}
                    // A concurrent or earlier try of ours; the tags below settle it.
                    Err(e) if error_code(&e) == Some("BucketAlreadyOwnedByYou") => {}
                    Err(e) if error_code(&e) == Some("BucketAlreadyExists") => {
                        return Err(not_ours(name));
                    }
                    Err(e) => return Err(sdk_error("s3:CreateBucket", e)),
                }
            }
        }

        // A bucket never moves: one found in another region is not the one asked for (Qleet
        // replaces a bucket whose region changes, under a new name).
        let located = self.region_of(name).await?;
        if located != region {
            return Err(TaskError::permanent(
                "BucketInAnotherRegion",
                format!("bucket `{name}` is in {located}, not {region}"),
            ));
        }

        // The declared tags (the customer's and Qleet's) are the bucket's whole tag set: a tag
        // removed from the spec, or added behind Qleet's back, goes.
        let mut tags: Vec<Tag> = Vec::new();
        for (k, v) in payload.tags() {
            tags.push(
                Tag::builder()
                    .key(k)
                    .value(v)
                    .build()
                    .map_err(|e| TaskError::permanent("InvalidTag", e.to_string()))?,
            );
        }
        let tagging = Tagging::builder()
            .set_tag_set(Some(tags))
            .build()
            .map_err(|e| TaskError::permanent("InvalidTag", e.to_string()))?;
        self.client
            .put_bucket_tagging()
            .bucket(name)
            .tagging(tagging)
            .send()
            .await
            .map_err(|e| sdk_error("s3:PutBucketTagging", e))?;

        let b = spec.block_public_access;
        self.client
            .put_public_access_block()
            .bucket(name)
            .public_access_block_configuration(
                PublicAccessBlockConfiguration::builder()
                    .block_public_acls(b)
                    .ignore_public_acls(b)
                    .block_public_policy(b)
                    .restrict_public_buckets(b)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_error("s3:PutPublicAccessBlock", e))?;

        let current = self.versioning(name).await?;
        let want = if spec.versioning {
            Some(BucketVersioningStatus::Enabled)
        } else if current == Some(BucketVersioningStatus::Enabled) {
            // Versioning can only be suspended, never turned back off.
            Some(BucketVersioningStatus::Suspended)
        } else {
            None
        };
        if let Some(status) = want.filter(|w| current.as_ref() != Some(w)) {
            self.client
                .put_bucket_versioning()
                .bucket(name)
                .versioning_configuration(VersioningConfiguration::builder().status(status).build())
                .send()
                .await
                .map_err(|e| sdk_error("s3:PutBucketVersioning", e))?;
        }

        let algorithm = match spec.encryption.as_deref() {
            None | Some("AES256") => ServerSideEncryption::Aes256,
            Some("aws:kms") => ServerSideEncryption::AwsKms,
            Some(other) => {
                return Err(TaskError::permanent(
                    "InvalidPayload",
                    format!("bucket encryption `{other}` is not AES256 or aws:kms"),
                ));
            }
        };
        let sse = ServerSideEncryptionConfiguration::builder()
            .rules(
                ServerSideEncryptionRule::builder()
                    .apply_server_side_encryption_by_default(
                        ServerSideEncryptionByDefault::builder()
                            .sse_algorithm(algorithm)
                            .build()
                            .map_err(|e| TaskError::permanent("InvalidPayload", e.to_string()))?,
                    )
                    .build(),
            )
            .build()
            .map_err(|e| TaskError::permanent("InvalidPayload", e.to_string()))?;
        self.client
            .put_bucket_encryption()
            .bucket(name)
            .server_side_encryption_configuration(sse)
            .send()
            .await
            .map_err(|e| sdk_error("s3:PutBucketEncryption", e))?;

        let endpoint = match &self.endpoint {
            Some(e) => e.trim_end_matches('/').to_owned(),
            None => format!("https://s3.{region}.amazonaws.com"),
        };
        let mut out = Map::new();
        out.insert("name".into(), json!(name));
        out.insert("arn".into(), json!(format!("arn:aws:s3:::{name}")));
        out.insert("region".into(), json!(self.region_of(name).await?));
        out.insert("endpoint".into(), json!(endpoint));
        out.insert(
            "versioning".into(),
            json!(self.versioning(name).await? == Some(BucketVersioningStatus::Enabled)),
        );
        out.insert(
            "blockPublicAccess".into(),
            json!(self.public_access_blocked(name).await?),
        );
        out.insert("encryption".into(), json!(self.encryption(name).await?));
        Ok(out)
    }

    /// Reads the bucket as it is, changing nothing (a drift check): `found: false` when it is
    /// gone, else what S3 says of its region, versioning, public access, encryption and tags.
    pub async fn observe(
        &self,
        spec: &BucketSpec,
        payload: &Payload,
    ) -> Result<Map<String, Value>, TaskError> {
        let name = spec.name.as_str();
        let mut out = Map::new();
        match self.find(name, payload).await? {
            Found::Missing => {
                out.insert("found".into(), json!(false));
                return Ok(out);
            }
            Found::NotOurs => return Err(not_ours(name)),
            Found::Ours => {}
        }
        let tags: Map<String, Value> =
            match self.client.get_bucket_tagging().bucket(name).send().await {
                Ok(t) => t
                    .tag_set()
                    .iter()
                    .map(|t| (t.key().to_owned(), json!(t.value())))
                    .collect(),
                Err(e) if error_code(&e) == Some("NoSuchTagSet") => Map::new(),
                Err(e) => return Err(sdk_error("s3:GetBucketTagging", e)),
            };
        out.insert("found".into(), json!(true));
        out.insert("region".into(), json!(self.region_of(name).await?));
        out.insert(
            "versioning".into(),
            json!(self.versioning(name).await? == Some(BucketVersioningStatus::Enabled)),
        );
        out.insert(
            "blockPublicAccess".into(),
            json!(self.public_access_blocked(name).await?),
        );
        out.insert("encryption".into(), json!(self.encryption(name).await?));
        out.insert("tags".into(), Value::Object(tags));
        Ok(out)
    }

    /// The region the bucket is in, as S3 reports it.
    async fn region_of(&self, name: &str) -> Result<String, TaskError> {
        let out = self
            .client
            .get_bucket_location()
            .bucket(name)
            .send()
            .await
            .map_err(|e| sdk_error("s3:GetBucketLocation", e))?;
        Ok(match out.location_constraint().map(|c| c.as_str()) {
            // The oldest regions answer with no constraint (us-east-1) or `EU` (eu-west-1).
            None | Some("") => "us-east-1".to_owned(),
            Some("EU") => "eu-west-1".to_owned(),
            Some(r) => r.to_owned(),
        })
    }

    /// The bucket's versioning status (none: never versioned).
    async fn versioning(&self, name: &str) -> Result<Option<BucketVersioningStatus>, TaskError> {
        match self
            .client
            .get_bucket_versioning()
            .bucket(name)
            .send()
            .await
        {
            Ok(v) => Ok(v.status().cloned()),
            // Some S3-compatible servers (moto) answer under another root element, which the
            // SDK refuses: read the status from the body (none: never versioned).
            Err(e)
                if error_code(&e).is_none()
                    && matches!(e, aws_sdk_s3::error::SdkError::ServiceError(_)) =>
            {
                Ok(e.raw_response()
                    .and_then(|r| r.body().bytes())
                    .and_then(|b| super::xml_text(&String::from_utf8_lossy(b), "Status"))
                    .map(|s| BucketVersioningStatus::from(s.as_str())))
            }
            Err(e) => Err(sdk_error("s3:GetBucketVersioning", e)),
        }
    }

    /// Whether every public access setting is blocked.
    async fn public_access_blocked(&self, name: &str) -> Result<bool, TaskError> {
        match self
            .client
            .get_public_access_block()
            .bucket(name)
            .send()
            .await
        {
            Ok(out) => Ok(out.public_access_block_configuration().is_some_and(|c| {
                [
                    c.block_public_acls(),
                    c.ignore_public_acls(),
                    c.block_public_policy(),
                    c.restrict_public_buckets(),
                ]
                .iter()
                .all(|b| *b == Some(true))
            })),
            Err(e) if error_code(&e) == Some("NoSuchPublicAccessBlockConfiguration") => Ok(false),
            Err(e) => Err(sdk_error("s3:GetPublicAccessBlock", e)),
        }
    }

    /// The default encryption algorithm (`none` when the bucket has no default encryption).
    async fn encryption(&self, name: &str) -> Result<String, TaskError> {
        match self
            .client
            .get_bucket_encryption()
            .bucket(name)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .server_side_encryption_configuration()
                .and_then(|c| c.rules().first())
                .and_then(|r| r.apply_server_side_encryption_by_default())
                .map(|d| d.sse_algorithm().as_str().to_owned())
                .unwrap_or_else(|| "none".to_owned())),
            Err(e) if error_code(&e) == Some("ServerSideEncryptionConfigurationNotFoundError") => {
                Ok("none".to_owned())
            }
            Err(e) => Err(sdk_error("s3:GetBucketEncryption", e)),
        }
    }

    /// Empties the bucket (every version and delete marker) and deletes it. A bucket that is
    /// already gone is fine; one that is not this object's is left alone.
    pub async fn delete(&self, name: &str, payload: &Payload) -> Result<(), TaskError> {
        match self.find(name, payload).await? {
            Found::Missing => return Ok(()),
            Found::NotOurs => return Err(not_ours(name)),
            Found::Ours => {}
        }
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(name)
                .max_keys(1000)
                .send()
                .await
                .map_err(|e| sdk_error("s3:ListObjectVersions", e))?;
            let mut ids = Vec::new();
            for v in page.versions() {
                if let Some(key) = v.key() {
                    ids.push((key.to_owned(), v.version_id().map(str::to_owned)));
                }
            }
            for m in page.delete_markers() {
                if let Some(key) = m.key() {
                    ids.push((key.to_owned(), m.version_id().map(str::to_owned)));
                }
            }
            if ids.is_empty() {
                break;
            }
            let objects = ids
                .into_iter()
                .map(|(k, v)| {
                    ObjectIdentifier::builder()
                        .key(k)
                        .set_version_id(v)
                        .build()
                        .map_err(|e| TaskError::permanent("InvalidRequest", e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| TaskError::permanent("InvalidRequest", e.to_string()))?;
            self.client
                .delete_objects()
                .bucket(name)
                .delete(delete)
                .send()
                .await
                .map_err(|e| sdk_error("s3:DeleteObjects", e))?;
        }
        match self.client.delete_bucket().bucket(name).send().await {
            Ok(_) => Ok(()),
            Err(e) if error_code(&e) == Some("NoSuchBucket") => Ok(()),
            Err(e) => Err(sdk_error("s3:DeleteBucket", e)),
        }
    }
}

fn not_ours(name: &str) -> TaskError {
    TaskError::permanent(
        "BucketNotOurs",
        format!(
            "bucket `{name}` exists but is not tagged as this object's (qleet:object-id); Qleet will not adopt or touch it"
        ),
    )
}
