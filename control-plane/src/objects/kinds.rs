//! The built-in kinds: each spec is a Rust type validated with serde (unknown fields refused,
//! errors carry the field path), plus the outputs each kind publishes and the objects it needs.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::drift::DriftPolicy;
use super::refs::ObjKey;

/// The kinds Qleet knows. Anything else is a composition kind a `Composition` declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    AwsAccount,
    KubernetesRuntime,
    ObjectStorageBucket,
    RelationalDatabase,
    Workload,
    Gateway,
    DomainName,
    Observability,
    Composition,
}

/// An output a kind publishes.
#[derive(Debug, Clone, Copy)]
pub struct OutputDecl {
    pub name: &'static str,
    /// A reference to a secret in the customer's account, never the value itself.
    pub secret: bool,
    /// Reported by the agent (the others the control plane computes itself).
    pub from_agent: bool,
}

const fn out(name: &'static str) -> OutputDecl {
    OutputDecl {
        name,
        secret: false,
        from_agent: true,
    }
}
const fn computed(name: &'static str) -> OutputDecl {
    OutputDecl {
        name,
        secret: false,
        from_agent: false,
    }
}
const fn secret(name: &'static str) -> OutputDecl {
    OutputDecl {
        name,
        secret: true,
        from_agent: true,
    }
}

pub const ALL: [Builtin; 9] = [
    Builtin::AwsAccount,
    Builtin::KubernetesRuntime,
    Builtin::ObjectStorageBucket,
    Builtin::RelationalDatabase,
    Builtin::Workload,
    Builtin::Gateway,
    Builtin::DomainName,
    Builtin::Observability,
    Builtin::Composition,
];

impl Builtin {
    pub fn parse(kind: &str) -> Option<Self> {
        ALL.into_iter().find(|b| b.name() == kind)
    }

    pub fn name(self) -> &'static str {
        match self {
            Builtin::AwsAccount => "AwsAccount",
            Builtin::KubernetesRuntime => "KubernetesRuntime",
            Builtin::ObjectStorageBucket => "ObjectStorageBucket",
            Builtin::RelationalDatabase => "RelationalDatabase",
            Builtin::Workload => "Workload",
            Builtin::Gateway => "Gateway",
            Builtin::DomainName => "DomainName",
            Builtin::Observability => "Observability",
            Builtin::Composition => "Composition",
        }
    }

    pub fn outputs(self) -> &'static [OutputDecl] {
        const AWS_ACCOUNT: &[OutputDecl] = &[
            computed("accountId"),
            computed("roleArn"),
            computed("region"),
            computed("externalId"),
            computed("trustPolicy"),
            computed("cloudFormationTemplate"),
        ];
        const RUNTIME: &[OutputDecl] = &[
            out("endpoint"),
            out("clusterName"),
            out("certificateAuthority"),
            // EKS only: the account whose role reaches the cluster (a token from its session).
            computed("accountId"),
            computed("roleArn"),
            computed("externalId"),
            computed("region"),
        ];
        // What the agent reports it reads back from the cloud, never echoes from the spec.
        const BUCKET: &[OutputDecl] = &[
            out("name"),
            out("arn"),
            out("region"),
            out("endpoint"),
            out("versioning"),
            out("blockPublicAccess"),
            out("encryption"),
        ];
        const DATABASE: &[OutputDecl] = &[
            out("host"),
            out("port"),
            out("database"),
            out("username"),
            out("engine"),
            out("version"),
            out("sizeClass"),
            out("storageGb"),
            out("backupRetentionDays"),
            secret("password"),
        ];
        const WORKLOAD: &[OutputDecl] = &[computed("namespace"), computed("revision")];
        const GATEWAY: &[OutputDecl] = &[
            computed("url"),
            computed("host"),
            computed("ingressClass"),
            computed("clusterIssuer"),
            out("loadBalancerHostname"),
        ];
        const DOMAIN: &[OutputDecl] = &[computed("fqdn"), computed("target")];
        const OBSERVABILITY: &[OutputDecl] = &[
            computed("prometheusUrl"),
            computed("grafanaUrl"),
            computed("lokiUrl"),
        ];
        match self {
            Builtin::AwsAccount => AWS_ACCOUNT,
            Builtin::KubernetesRuntime => RUNTIME,
            Builtin::ObjectStorageBucket => BUCKET,
            Builtin::RelationalDatabase => DATABASE,
            Builtin::Workload => WORKLOAD,
            Builtin::Gateway => GATEWAY,
            Builtin::DomainName => DOMAIN,
            Builtin::Observability => OBSERVABILITY,
            Builtin::Composition => &[],
        }
    }

    /// The JSON Schema of its spec, derived from the spec's Rust type (what `kinds` serves
    /// and the field reference shows).
    pub fn schema(self) -> Value {
        let schema = match self {
            Builtin::AwsAccount => schemars::schema_for!(AwsAccountSpec),
            Builtin::KubernetesRuntime => schemars::schema_for!(KubernetesRuntimeSpec),
            Builtin::ObjectStorageBucket => schemars::schema_for!(BucketSpec),
            Builtin::RelationalDatabase => schemars::schema_for!(DatabaseSpec),
            Builtin::Workload => schemars::schema_for!(WorkloadSpec),
            Builtin::Gateway => schemars::schema_for!(GatewaySpec),
            Builtin::DomainName => schemars::schema_for!(DomainNameSpec),
            Builtin::Observability => schemars::schema_for!(ObservabilitySpec),
            Builtin::Composition => schemars::schema_for!(CompositionSpec),
        };
        schema.to_value()
    }

    /// Whether reconciling it needs work in the customer's account (an agent task).
    pub fn needs_agent(self) -> bool {
        !matches!(self, Builtin::Composition)
    }

    /// Validates a spec, answering it normalised (defaults filled in) and the objects it names
    /// in typed fields (`account`, `runtime`). Errors name the field: `spec.engine: ...`.
    pub fn validate(self, spec: &Value) -> Result<(Value, Vec<TypedRef>), String> {
        match self {
            Builtin::AwsAccount => check::<AwsAccountSpec>(spec),
            Builtin::KubernetesRuntime => check::<KubernetesRuntimeSpec>(spec),
            Builtin::ObjectStorageBucket => check::<BucketSpec>(spec),
            Builtin::RelationalDatabase => check::<DatabaseSpec>(spec),
            Builtin::Workload => check::<WorkloadSpec>(spec),
            Builtin::Gateway => check::<GatewaySpec>(spec),
            Builtin::DomainName => check::<DomainNameSpec>(spec),
            Builtin::Observability => check::<ObservabilitySpec>(spec),
            Builtin::Composition => check::<CompositionSpec>(spec),
        }
    }
}

/// An object a typed field names, with the kind the field requires.
#[derive(Debug, Clone)]
pub struct TypedRef {
    pub path: String,
    pub target: ObjKey,
    pub kind: &'static str,
}

/// A spec type: serde does the shape, `check` the rules serde cannot say.
pub trait Spec: DeserializeOwned + Serialize {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
    fn refs(&self) -> Vec<TypedRef> {
        Vec::new()
    }
}

fn check<T: Spec>(spec: &Value) -> Result<(Value, Vec<TypedRef>), String> {
    let typed: T = parse_spec(spec)?;
    typed.check()?;
    let refs = typed.refs();
    let normalised = serde_json::to_value(&typed).map_err(|e| format!("spec: {e}"))?;
    Ok((normalised, refs))
}

/// Deserialises a spec, naming the failing field: `spec.nodeGroup.min: invalid type: ...`.
pub fn parse_spec<T: DeserializeOwned>(spec: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            format!("spec: {inner}")
        } else {
            format!("spec.{path}: {inner}")
        }
    })
}

/// A `Kind/name` field that must name an object of one kind.
fn typed(path: &str, value: &str, kind: &'static str) -> Vec<TypedRef> {
    match ObjKey::parse(value) {
        Ok(target) => vec![TypedRef {
            path: path.to_owned(),
            target,
            kind,
        }],
        // Reported by `check`.
        Err(_) => Vec::new(),
    }
}

fn check_ref(path: &str, value: &str, kind: &str) -> Result<(), String> {
    let key = ObjKey::parse(value).map_err(|e| format!("{path}: {e}"))?;
    if key.kind != kind {
        return Err(format!(
            "{path}: must name a {kind} (`{kind}/NAME`), not a {}",
            key.kind
        ));
    }
    Ok(())
}

/// Most tags a customer may declare on one resource: AWS allows 50 on S3, RDS and EKS, and
/// Qleet adds four of its own.
pub const MAX_TAGS: usize = 40;

/// A customer's tags: AWS's limits and characters, and none in the prefixes Qleet (`qleet:`)
/// or AWS (`aws:`) reserve, so Qleet's own tags cannot be overridden.
fn check_tags(path: &str, tags: &BTreeMap<String, String>) -> Result<(), String> {
    if tags.len() > MAX_TAGS {
        return Err(format!(
            "{path}: at most {MAX_TAGS} tags (got {})",
            tags.len()
        ));
    }
    let allowed = |s: &str| {
        s.chars()
            .all(|c| c.is_alphanumeric() || " _.:/=+-@".contains(c))
    };
    for (k, v) in tags {
        let lower = k.to_lowercase();
        if lower.starts_with("qleet:") || lower.starts_with("aws:") {
            return Err(format!(
                "{path}: `{k}`: the `qleet:` and `aws:` prefixes are reserved (Qleet sets its own `qleet:*` tags)"
            ));
        }
        if k.is_empty() || k.chars().count() > 128 || !allowed(k) {
            return Err(format!(
                "{path}: `{k}` is not a tag key (1-128 letters, digits, spaces and _ . : / = + - @)"
            ));
        }
        if v.chars().count() > 256 || !allowed(v) {
            return Err(format!(
                "{path}: `{k}`: not a tag value (at most 256 letters, digits, spaces and _ . : / = + - @)"
            ));
        }
    }
    Ok(())
}

fn check_region(path: &str, region: &str) -> Result<(), String> {
    // e.g. eu-west-1, us-gov-west-1, ap-southeast-2
    let parts: Vec<&str> = region.split('-').collect();
    let ok = parts.len() >= 3
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].parse::<u8>().is_ok();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{path}: `{region}` is not an AWS region (e.g. eu-west-1)"
        ))
    }
}

// ---------------------------------------------------------------------------------------------

/// An AWS account Qleet may act in through a role the customer creates. The ExternalId is
/// generated by the control plane and cannot be set.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AwsAccountSpec {
    pub account_id: String,
    pub role_arn: String,
    pub default_region: String,
    /// The IAM principal the agent runs as (its role ARN); the role's trust policy names it.
    /// Defaults to the account itself (`arn:aws:iam::ACCOUNT:root`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_principal_arn: Option<String>,
}

impl Spec for AwsAccountSpec {
    fn check(&self) -> Result<(), String> {
        if self.account_id.len() != 12 || !self.account_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "spec.accountId: `{}` is not a 12-digit AWS account id",
                self.account_id
            ));
        }
        let prefix = format!("arn:aws:iam::{}:role/", self.account_id);
        match self.role_arn.strip_prefix(&prefix) {
            Some(role) if !role.is_empty() && role.len() <= 512 => {}
            _ => {
                return Err(format!(
                    "spec.roleArn: `{}` is not a role in account {} (expected {prefix}NAME)",
                    self.role_arn, self.account_id
                ));
            }
        }
        if let Some(p) = &self.agent_principal_arn
            && !p.starts_with("arn:aws:iam::")
        {
            return Err(format!(
                "spec.agentPrincipalArn: `{p}` is not an IAM principal ARN"
            ));
        }
        check_region("spec.defaultRegion", &self.default_region)
    }
}

impl AwsAccountSpec {
    /// The trust policy the customer's role must carry: only the agent's principal, and only
    /// with this control plane's ExternalId.
    pub fn trust_policy(&self, external_id: &str) -> Value {
        let principal = self
            .agent_principal_arn
            .clone()
            .unwrap_or_else(|| format!("arn:aws:iam::{}:root", self.account_id));
        json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "QleetAgent",
                "Effect": "Allow",
                "Principal": { "AWS": principal },
                "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
                "Condition": { "StringEquals": { "sts:ExternalId": external_id } }
            }]
        })
    }

    /// A CloudFormation template creating that role, with permissions limited to what Qleet
    /// manages and, where AWS allows it, to resources tagged by Qleet.
    pub fn cloudformation_template(&self, external_id: &str) -> Value {
        let role_name = self
            .role_arn
            .rsplit('/')
            .next()
            .unwrap_or("qleet-agent")
            .to_owned();
        json!({
            "AWSTemplateFormatVersion": "2010-09-09",
            "Description": "IAM role that the Qleet agent assumes to manage this account's Qleet resources",
            "Resources": {
                "QleetRole": {
                    "Type": "AWS::IAM::Role",
                    "Properties": {
                        "RoleName": role_name,
                        "AssumeRolePolicyDocument": self.trust_policy(external_id),
                        "Tags": [{ "Key": "qleet:managed", "Value": "true" }],
                        "Policies": [{
                            "PolicyName": "qleet-managed-resources",
                            "PolicyDocument": {
                                "Version": "2012-10-17",
                                "Statement": [
                                    {
                                        "Sid": "CreateTagged",
                                        "Effect": "Allow",
                                        "Action": ["s3:CreateBucket", "rds:CreateDBInstance", "rds:AddTagsToResource", "secretsmanager:CreateSecret", "secretsmanager:TagResource", "eks:CreateCluster", "eks:TagResource"],
                                        "Resource": "*",
                                        "Condition": { "StringEquals": { "aws:RequestTag/qleet:managed": "true" } }
                                    },
                                    {
                                        "Sid": "ManageTagged",
                                        "Effect": "Allow",
                                        "Action": ["rds:*", "secretsmanager:*", "eks:*"],
                                        "Resource": "*",
                                        "Condition": { "StringEquals": { "aws:ResourceTag/qleet:managed": "true" } }
                                    },
                                    {
                                        "Sid": "BucketsByName",
                                        "Effect": "Allow",
                                        "Action": "s3:*",
                                        "Resource": ["arn:aws:s3:::qleet-*", "arn:aws:s3:::qleet-*/*"]
                                    },
                                    {
                                        "Sid": "Describe",
                                        "Effect": "Allow",
                                        "Action": ["s3:ListAllMyBuckets", "rds:Describe*", "eks:Describe*", "eks:List*", "ec2:Describe*"],
                                        "Resource": "*"
                                    }
                                ]
                            }
                        }]
                    }
                }
            },
            "Outputs": { "RoleArn": { "Value": { "Fn::GetAtt": ["QleetRole", "Arn"] } } }
        })
    }
}

/// A Kubernetes cluster workloads run on: an EKS cluster Qleet creates, or one the agent
/// already reaches (named in the agent's configuration).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesRuntimeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eks: Option<EksSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing: Option<ExistingCluster>,
    /// What a difference found in an EKS cluster Qleet made leads to: put it back (default) or
    /// only report it.
    #[serde(default, skip_serializing_if = "DriftPolicy::is_default")]
    pub drift_policy: DriftPolicy,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EksSpec {
    pub account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub version: String,
    pub node_group: NodeGroup,
    /// Tags of the customer's own on the cluster, beside Qleet's `qleet:*` tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeGroup {
    #[serde(default = "default_instance_type")]
    pub instance_type: String,
    pub min: u32,
    pub max: u32,
    pub desired: u32,
}

fn default_instance_type() -> String {
    "t3.medium".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExistingCluster {
    /// The cluster's name in the agent's configuration.
    pub cluster: String,
}

impl Spec for KubernetesRuntimeSpec {
    fn check(&self) -> Result<(), String> {
        match (&self.eks, &self.existing) {
            (Some(eks), None) => {
                check_ref("spec.eks.account", &eks.account, "AwsAccount")?;
                if let Some(r) = &eks.region {
                    check_region("spec.eks.region", r)?;
                }
                let minor = eks
                    .version
                    .strip_prefix("1.")
                    .and_then(|m| m.parse::<u8>().ok());
                if !matches!(minor, Some(m) if (24..=40).contains(&m)) {
                    return Err(format!(
                        "spec.eks.version: `{}` is not a supported Kubernetes version (e.g. 1.31)",
                        eks.version
                    ));
                }
                check_tags("spec.eks.tags", &eks.tags)?;
                let ng = &eks.node_group;
                if ng.max == 0 || ng.max > 1000 {
                    return Err("spec.eks.nodeGroup.max: must be between 1 and 1000".into());
                }
                if !(ng.min <= ng.desired && ng.desired <= ng.max) {
                    return Err(format!(
                        "spec.eks.nodeGroup: need min <= desired <= max (got {} <= {} <= {})",
                        ng.min, ng.desired, ng.max
                    ));
                }
                Ok(())
            }
            (None, Some(existing)) => {
                if existing.cluster.trim().is_empty() || existing.cluster.len() > 253 {
                    return Err("spec.existing.cluster: must name a cluster the agent knows".into());
                }
                Ok(())
            }
            _ => Err("spec: set exactly one of `eks` or `existing`".into()),
        }
    }

    fn refs(&self) -> Vec<TypedRef> {
        self.eks
            .as_ref()
            .map(|e| typed("spec.eks.account", &e.account, "AwsAccount"))
            .unwrap_or_default()
    }
}

/// An S3 bucket. Public access is blocked unless turned off explicitly.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BucketSpec {
    pub account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default)]
    pub versioning: bool,
    #[serde(default = "yes")]
    pub block_public_access: bool,
    #[serde(default)]
    pub encryption: Encryption,
    /// Tags of the customer's own on the bucket, beside Qleet's `qleet:*` tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// What a difference found in the cloud leads to: put it back (default) or only report it.
    #[serde(default, skip_serializing_if = "DriftPolicy::is_default")]
    pub drift_policy: DriftPolicy,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema)]
pub enum Encryption {
    #[default]
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    Kms,
}

impl Spec for BucketSpec {
    fn check(&self) -> Result<(), String> {
        check_ref("spec.account", &self.account, "AwsAccount")?;
        if let Some(r) = &self.region {
            check_region("spec.region", r)?;
        }
        check_tags("spec.tags", &self.tags)
    }
    fn refs(&self) -> Vec<TypedRef> {
        typed("spec.account", &self.account, "AwsAccount")
    }
}

/// An RDS instance. The password is made by the agent in the customer's account (Secrets
/// Manager); Qleet only ever holds a reference to it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DatabaseSpec {
    pub account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub engine: Engine,
    pub version: String,
    /// RDS instance class, e.g. `db.t4g.micro`.
    pub size_class: String,
    /// Allocated storage in GiB.
    #[serde(default = "default_storage")]
    pub storage_gb: u32,
    #[serde(default)]
    pub backups: Backups,
    /// The database created inside the instance (default: the object's name, `-` → `_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default = "default_username")]
    pub username: String,
    /// Whether in-place changes (version, class, storage, backups) are made now (default) or
    /// in the instance's next maintenance window.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub apply_immediately: bool,
    /// Tags of the customer's own on the instance, beside Qleet's `qleet:*` tags.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// What a difference found in the cloud leads to: put it back (default) or only report it.
    #[serde(default, skip_serializing_if = "DriftPolicy::is_default")]
    pub drift_policy: DriftPolicy,
}

fn default_storage() -> u32 {
    20
}
fn default_username() -> String {
    "app".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Postgres,
    Mysql,
}

impl Engine {
    pub fn port(self) -> u16 {
        match self {
            Engine::Postgres => 5432,
            Engine::Mysql => 3306,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backups {
    #[serde(default = "default_retention")]
    pub retention_days: u8,
}

impl Default for Backups {
    fn default() -> Self {
        Backups {
            retention_days: default_retention(),
        }
    }
}

fn default_retention() -> u8 {
    7
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && s.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Spec for DatabaseSpec {
    fn check(&self) -> Result<(), String> {
        check_ref("spec.account", &self.account, "AwsAccount")?;
        check_tags("spec.tags", &self.tags)?;
        if let Some(r) = &self.region {
            check_region("spec.region", r)?;
        }
        if self.version.is_empty()
            || !self
                .version
                .bytes()
                .all(|b| b.is_ascii_digit() || b == b'.')
        {
            return Err(format!(
                "spec.version: `{}` is not an engine version (e.g. 16.4)",
                self.version
            ));
        }
        if !self.size_class.starts_with("db.") || self.size_class.split('.').count() != 3 {
            return Err(format!(
                "spec.sizeClass: `{}` is not an RDS instance class (e.g. db.t4g.micro)",
                self.size_class
            ));
        }
        if !(20..=65536).contains(&self.storage_gb) {
            return Err("spec.storageGb: must be between 20 and 65536".into());
        }
        if self.backups.retention_days > 35 {
            return Err("spec.backups.retentionDays: must be between 0 and 35".into());
        }
        if let Some(db) = &self.database
            && !is_identifier(db)
        {
            return Err(format!(
                "spec.database: `{db}` is not a database name (lowercase letters, digits, _)"
            ));
        }
        if !is_identifier(&self.username)
            || matches!(self.username.as_str(), "admin" | "postgres" | "rdsadmin")
        {
            return Err(format!(
                "spec.username: `{}` is not allowed (lowercase letters, digits, _; not a reserved name)",
                self.username
            ));
        }
        Ok(())
    }
    fn refs(&self) -> Vec<TypedRef> {
        typed("spec.account", &self.account, "AwsAccount")
    }
}

/// An application on a Kubernetes runtime: plain manifests or a Helm chart, plus bindings that
/// feed other objects' outputs into its environment or values.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSpec {
    pub runtime: String,
    pub namespace: String,
    /// Multi-document YAML of Kubernetes objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helm: Option<HelmChart>,
    /// Environment variables set on every container of the manifests' workloads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvBinding>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HelmChart {
    pub repo: String,
    pub chart: String,
    pub version: String,
    /// Chart values; any leaf may be `{valueFrom: {object, output}}` or use `${Kind/name.output}`.
    #[serde(default)]
    pub values: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnvBinding {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<ValueFromSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ValueFromSpec {
    pub object: String,
    pub output: String,
}

pub fn check_namespace(path: &str, ns: &str) -> Result<(), String> {
    super::refs::check_name(ns).map_err(|e| format!("{path}: {e}"))
}

impl Spec for WorkloadSpec {
    fn check(&self) -> Result<(), String> {
        check_ref("spec.runtime", &self.runtime, "KubernetesRuntime")?;
        check_namespace("spec.namespace", &self.namespace)?;
        match (&self.manifests, &self.helm) {
            (Some(m), None) => {
                let docs = super::render::parse_manifests(m)
                    .map_err(|e| format!("spec.manifests: {e}"))?;
                if docs.is_empty() {
                    return Err("spec.manifests: no Kubernetes objects".into());
                }
            }
            (None, Some(h)) => {
                if !(h.repo.starts_with("https://") || h.repo.starts_with("oci://")) {
                    return Err(format!(
                        "spec.helm.repo: `{}` must be an https:// or oci:// chart repository",
                        h.repo
                    ));
                }
                if h.chart.is_empty() || h.version.is_empty() {
                    return Err("spec.helm: `chart` and `version` are required".into());
                }
                if !(h.values.is_null() || h.values.is_object()) {
                    return Err("spec.helm.values: must be a map".into());
                }
                if !self.env.is_empty() {
                    return Err(
                        "spec.env: only applies to manifests; pass settings to a chart through spec.helm.values"
                            .into(),
                    );
                }
            }
            _ => return Err("spec: set exactly one of `manifests` or `helm`".into()),
        }
        let mut seen = std::collections::HashSet::new();
        for (i, e) in self.env.iter().enumerate() {
            let valid = !e.name.is_empty()
                && e.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
                && !e.name.as_bytes()[0].is_ascii_digit();
            if !valid {
                return Err(format!(
                    "spec.env[{i}].name: `{}` is not an environment variable name",
                    e.name
                ));
            }
            if !seen.insert(e.name.clone()) {
                return Err(format!("spec.env[{i}].name: `{}` is set twice", e.name));
            }
            if e.value.is_some() == e.value_from.is_some() {
                return Err(format!(
                    "spec.env[{i}]: set exactly one of `value` or `valueFrom`"
                ));
            }
        }
        Ok(())
    }
    fn refs(&self) -> Vec<TypedRef> {
        typed("spec.runtime", &self.runtime, "KubernetesRuntime")
    }
}

/// Ingress with TLS on a runtime: installs ingress-nginx and cert-manager with an ACME issuer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewaySpec {
    pub runtime: String,
    /// The public host name, e.g. `shop.example.com`.
    pub host: String,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default = "default_ingress_class")]
    pub ingress_class: String,
}

fn default_ingress_class() -> String {
    "nginx".into()
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tls {
    #[serde(default)]
    pub issuer: Issuer,
    /// ACME account e-mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            issuer: Issuer::Letsencrypt,
            email: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Issuer {
    #[default]
    Letsencrypt,
    LetsencryptStaging,
    Selfsigned,
}

fn check_host(path: &str, host: &str) -> Result<(), String> {
    let ok = host.len() <= 253
        && host.contains('.')
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{path}: `{host}` is not a DNS name"))
    }
}

impl Spec for GatewaySpec {
    fn check(&self) -> Result<(), String> {
        check_ref("spec.runtime", &self.runtime, "KubernetesRuntime")?;
        check_host("spec.host", &self.host)?;
        if let Some(e) = &self.tls.email
            && !e.contains('@')
        {
            return Err(format!("spec.tls.email: `{e}` is not an e-mail address"));
        }
        check_namespace("spec.ingressClass", &self.ingress_class)
    }
    fn refs(&self) -> Vec<TypedRef> {
        typed("spec.runtime", &self.runtime, "KubernetesRuntime")
    }
}

/// A Route53 record kept by external-dns on a runtime.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DomainNameSpec {
    pub runtime: String,
    /// The AWS account holding the hosted zone.
    pub account: String,
    pub zone: String,
    pub name: String,
    /// What the record points at (a host name, e.g. `${Gateway/web.loadBalancerHostname}`).
    pub target: String,
    #[serde(default = "default_ttl")]
    pub ttl: u32,
}

fn default_ttl() -> u32 {
    300
}

impl Spec for DomainNameSpec {
    fn check(&self) -> Result<(), String> {
        check_ref("spec.runtime", &self.runtime, "KubernetesRuntime")?;
        check_ref("spec.account", &self.account, "AwsAccount")?;
        check_host("spec.zone", &self.zone)?;
        check_host("spec.name", &self.name)?;
        if !(self.name == self.zone || self.name.ends_with(&format!(".{}", self.zone))) {
            return Err(format!(
                "spec.name: `{}` is not inside zone `{}`",
                self.name, self.zone
            ));
        }
        if self.target.is_empty() {
            return Err("spec.target: required".into());
        }
        if !(30..=86400).contains(&self.ttl) {
            return Err("spec.ttl: must be between 30 and 86400 seconds".into());
        }
        Ok(())
    }
    fn refs(&self) -> Vec<TypedRef> {
        let mut r = typed("spec.runtime", &self.runtime, "KubernetesRuntime");
        r.extend(typed("spec.account", &self.account, "AwsAccount"));
        r
    }
}

/// Metrics and logs on a runtime: kube-prometheus-stack and Loki.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObservabilitySpec {
    pub runtime: String,
    #[serde(default = "default_metrics_retention")]
    pub retention_days: u16,
    #[serde(default = "yes")]
    pub logs: bool,
}

fn default_metrics_retention() -> u16 {
    15
}

impl Spec for ObservabilitySpec {
    fn check(&self) -> Result<(), String> {
        check_ref("spec.runtime", &self.runtime, "KubernetesRuntime")?;
        if !(1..=400).contains(&self.retention_days) {
            return Err("spec.retentionDays: must be between 1 and 400".into());
        }
        Ok(())
    }
    fn refs(&self) -> Vec<TypedRef> {
        typed("spec.runtime", &self.runtime, "KubernetesRuntime")
    }
}

/// A tenant-defined kind: parameters and a template of objects (see `compose`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CompositionSpec {
    /// The kind it defines, e.g. `WebApp`.
    pub kind: String,
    #[serde(default)]
    pub parameters: std::collections::BTreeMap<String, Parameter>,
    pub resources: Vec<TemplateResource>,
    /// The instance's outputs: templates over the owned objects' outputs.
    #[serde(default)]
    pub outputs: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Parameter {
    #[serde(rename = "type")]
    pub ty: ParamType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
}

impl ParamType {
    pub fn accepts(self, v: &Value) -> bool {
        match self {
            ParamType::String => v.is_string(),
            ParamType::Integer => v.is_i64() || v.is_u64(),
            ParamType::Number => v.is_number(),
            ParamType::Boolean => v.is_boolean(),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TemplateResource {
    pub kind: String,
    /// May use `${instance.name}` and `${params.x}`.
    pub name: String,
    pub spec: Value,
}

impl Spec for CompositionSpec {
    fn check(&self) -> Result<(), String> {
        if !super::refs::is_kind_name(&self.kind) {
            return Err(format!(
                "spec.kind: `{}` is not a kind name (PascalCase, e.g. WebApp)",
                self.kind
            ));
        }
        if Builtin::parse(&self.kind).is_some() {
            return Err(format!(
                "spec.kind: `{}` is a built-in kind; choose another name",
                self.kind
            ));
        }
        for (name, p) in &self.parameters {
            if !name.chars().all(|c| c.is_ascii_alphanumeric()) || name.is_empty() {
                return Err(format!("spec.parameters.{name}: not a parameter name"));
            }
            if let Some(d) = &p.default
                && !p.ty.accepts(d)
            {
                return Err(format!(
                    "spec.parameters.{name}.default: expected a {}",
                    p.ty.name()
                ));
            }
        }
        if self.resources.is_empty() {
            return Err("spec.resources: a composition needs at least one resource".into());
        }
        for (i, r) in self.resources.iter().enumerate() {
            match Builtin::parse(&r.kind) {
                Some(Builtin::Composition) | None => {
                    return Err(format!(
                        "spec.resources[{i}].kind: `{}` is not a kind a composition can contain (one of {})",
                        r.kind,
                        ALL[..8]
                            .iter()
                            .map(|b| b.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                Some(_) => {}
            }
            if !r.spec.is_object() {
                return Err(format!("spec.resources[{i}].spec: must be a map"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_engine_names_the_field_and_the_choices() {
        let err = Builtin::RelationalDatabase
            .validate(&json!({"account": "AwsAccount/main", "engine": "oracle", "version": "16", "sizeClass": "db.t4g.micro"}))
            .expect_err("oracle");
        assert!(
            err.starts_with(
                "spec.engine: unknown variant `oracle`, expected `postgres` or `mysql`"
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_and_wrong_kinds_are_refused() {
        let err = Builtin::ObjectStorageBucket
            .validate(&json!({"account": "AwsAccount/main", "externalId": "x"}))
            .expect_err("unknown field");
        assert!(err.starts_with("spec.externalId: unknown field"), "{err}");
        let err = Builtin::ObjectStorageBucket
            .validate(&json!({"account": "KubernetesRuntime/main"}))
            .expect_err("wrong kind");
        assert_eq!(
            err,
            "spec.account: must name a AwsAccount (`AwsAccount/NAME`), not a KubernetesRuntime"
        );
    }

    #[test]
    fn an_external_id_cannot_be_chosen_by_the_caller() {
        let err = Builtin::AwsAccount
            .validate(&json!({"accountId": "123456789012", "roleArn": "arn:aws:iam::123456789012:role/q", "defaultRegion": "eu-west-1", "externalId": "mine"}))
            .expect_err("externalId");
        assert!(err.starts_with("spec.externalId: unknown field"), "{err}");
    }

    #[test]
    fn defaults_are_filled_in() {
        let (spec, refs) = Builtin::ObjectStorageBucket
            .validate(&json!({"account": "AwsAccount/main"}))
            .expect("valid");
        assert_eq!(
            spec,
            json!({"account": "AwsAccount/main", "versioning": false, "blockPublicAccess": true, "encryption": "AES256"})
        );
        assert_eq!(refs[0].target.to_string(), "AwsAccount/main");
    }

    #[test]
    fn node_group_bounds_are_checked() {
        let err = Builtin::KubernetesRuntime
            .validate(&json!({"eks": {"account": "AwsAccount/a", "version": "1.31", "nodeGroup": {"min": 3, "max": 2, "desired": 2}}}))
            .expect_err("bounds");
        assert!(
            err.starts_with("spec.eks.nodeGroup: need min <= desired <= max"),
            "{err}"
        );
        let err = Builtin::KubernetesRuntime
            .validate(&json!({"eks": {"account": "AwsAccount/a", "version": "1.31", "nodeGroup": {"min": "x", "max": 2, "desired": 2}}}))
            .expect_err("type");
        assert!(
            err.starts_with("spec.eks.nodeGroup.min: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn a_role_in_another_account_is_refused() {
        let err = Builtin::AwsAccount
            .validate(&json!({"accountId": "123456789012", "roleArn": "arn:aws:iam::999999999999:role/q", "defaultRegion": "eu-west-1"}))
            .expect_err("account mismatch");
        assert!(err.starts_with("spec.roleArn:"), "{err}");
    }
}
