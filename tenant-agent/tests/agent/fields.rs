//! Every field of every AWS kind's spec (accounts, EKS clusters, buckets, databases), changed
//! through the public API with the agent binary
//! working against moto: each change is either made in AWS (read back from moto), a
//! replacement that leaves no orphan (the new resource made, the old one gone), or refused
//! with the object and field named. The fields come from the control plane's own schemas
//! (`kinds { schema }`), so a field added later without a case here fails this test. After
//! the whole app is deleted, moto holds nothing of it but the documented final snapshots.

use std::collections::BTreeSet;
use std::time::Duration;

use aws_config::{Region, SdkConfig};
use qleet_test_support::cp::Cp;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::journey::{agent_command, terminate};
use crate::support::Moto;

/// The kinds whose resources are in AWS and are walked here. The others' fields are
/// Kubernetes-side; their rules are checked by the control plane's `fields` unit tests. (An
/// EKS version upgrade is walked as its refused downgrade only: moto does not emulate
/// UpdateClusterVersion, whose call `aws::an_eks_cluster_and_its_node_group_...` checks.)
const WALKED: [&str; 4] = [
    "AwsAccount",
    "KubernetesRuntime",
    "ObjectStorageBucket",
    "RelationalDatabase",
];

/// What a change of one field must do.
enum Expect {
    /// Made in place: moto's read-back of the resource has `value` at `pointer`.
    InPlace { pointer: &'static str, value: Value },
    /// A setting with nothing of its own to read back in AWS: applied, READY, nothing
    /// replaced.
    Setting,
    /// Replaced: the new resource reads back `value` at `pointer`; the old one is gone.
    Replaced { pointer: &'static str, value: Value },
    /// Dependents that take the field's value are replaced (`AwsAccount.defaultRegion`).
    MovesDependents,
    /// Refused, with this field named.
    Refused,
}

struct Case {
    kind: &'static str,
    /// The schema path this case covers, e.g. `spec.backups.retentionDays`.
    field: &'static str,
    /// The new value of the field (a JSON pointer into the object's document is made from the
    /// path).
    value: Value,
    /// Other values that must change with it to make a valid spec (an account id and a role
    /// in that account).
    with: Vec<(&'static str, Value)>,
    expect: Expect,
}

fn case(kind: &'static str, field: &'static str, value: Value, expect: Expect) -> Case {
    Case {
        kind,
        field,
        value,
        with: Vec::new(),
        expect,
    }
}

/// Sets `field` (`spec.a.b`) of a document, making the maps on the way.
fn set(doc: &mut Value, field: &str, value: Value) {
    let mut at = doc;
    let parts: Vec<&str> = field.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        at = at
            .as_object_mut()
            .expect("a map")
            .entry(p.to_string())
            .or_insert_with(|| json!({}));
    }
    at[parts[parts.len() - 1]] = value;
}

fn cases() -> Vec<Case> {
    use Expect::*;
    let b = "ObjectStorageBucket";
    let d = "RelationalDatabase";
    let a = "AwsAccount";
    let r = "KubernetesRuntime";
    let kept = |pointer, value| InPlace { pointer, value };
    let new = |pointer, value| Replaced { pointer, value };
    vec![
        // Accounts first, while the bucket and the database use `main`.
        case(
            a,
            "spec.roleArn",
            json!("arn:aws:iam::123456789012:role/qleet-ops"),
            Setting,
        ),
        case(
            a,
            "spec.agentPrincipalArn",
            json!("arn:aws:iam::123456789012:role/agent"),
            Setting,
        ),
        Case {
            with: vec![(
                "spec.roleArn",
                json!("arn:aws:iam::210987654321:role/qleet"),
            )],
            ..case(a, "spec.accountId", json!("210987654321"), Refused)
        },
        case(a, "spec.defaultRegion", json!("eu-west-3"), MovesDependents),
        // EKS clusters.
        case(r, "spec.driftPolicy", json!("Report"), Setting),
        case(
            r,
            "spec.eks.nodeGroup.desired",
            json!(3),
            kept("/nodeGroup/desired", json!(3)),
        ),
        case(
            r,
            "spec.eks.nodeGroup.max",
            json!(5),
            kept("/nodeGroup/max", json!(5)),
        ),
        case(
            r,
            "spec.eks.nodeGroup.min",
            json!(2),
            kept("/nodeGroup/min", json!(2)),
        ),
        case(
            r,
            "spec.eks.nodeGroup.instanceType",
            json!("m5.large"),
            Refused,
        ),
        case(r, "spec.eks.version", json!("1.30"), Refused),
        case(
            r,
            "spec.eks.tags",
            json!({"team": "shop", "tier": "gold"}),
            kept("/tags", json!({"team": "shop", "tier": "gold"})),
        ),
        case(
            r,
            "spec.eks.tags",
            json!({"tier": "silver"}),
            kept("/tags", json!({"tier": "silver"})),
        ),
        case(r, "spec.eks.tags", json!({"qleet:object": "x"}), Refused),
        Case {
            with: vec![("spec.eks", Value::Null)],
            ..case(r, "spec.existing.cluster", json!("prod-1"), Refused)
        },
        case(
            r,
            "spec.eks.region",
            json!("us-east-2"),
            new("/region", json!("us-east-2")),
        ),
        case(
            r,
            "spec.eks.account",
            json!("AwsAccount/other"),
            new("/region", json!("us-east-2")),
        ),
        // Buckets.
        case(b, "spec.driftPolicy", json!("Report"), Setting),
        case(
            b,
            "spec.versioning",
            json!(true),
            kept("/versioning", json!("Enabled")),
        ),
        case(
            b,
            "spec.blockPublicAccess",
            json!(false),
            kept("/blockPublicAccess", json!(false)),
        ),
        case(
            b,
            "spec.encryption",
            json!("aws:kms"),
            kept("/encryption", json!("aws:kms")),
        ),
        case(
            b,
            "spec.tags",
            json!({"team": "shop", "cost-center": "42"}),
            kept("/tags", json!({"team": "shop", "cost-center": "42"})),
        ),
        case(
            b,
            "spec.tags",
            json!({"team": "web"}),
            kept("/tags", json!({"team": "web"})),
        ),
        case(b, "spec.tags", json!({"qleet:managed": "false"}), Refused),
        case(
            b,
            "spec.region",
            json!("us-east-2"),
            new("/region", json!("us-east-2")),
        ),
        case(
            b,
            "spec.account",
            json!("AwsAccount/other"),
            new("/region", json!("us-east-2")),
        ),
        // Databases.
        case(
            d,
            "spec.version",
            json!("16.4"),
            kept("/version", json!("16.4")),
        ),
        case(d, "spec.version", json!("15.8"), Refused),
        case(
            d,
            "spec.sizeClass",
            json!("db.t4g.small"),
            kept("/sizeClass", json!("db.t4g.small")),
        ),
        case(
            d,
            "spec.storageGb",
            json!(30),
            kept("/storageGb", json!(30)),
        ),
        case(d, "spec.storageGb", json!(25), Refused),
        case(
            d,
            "spec.backups.retentionDays",
            json!(3),
            kept("/backupRetentionDays", json!(3)),
        ),
        case(d, "spec.applyImmediately", json!(false), Setting),
        case(d, "spec.driftPolicy", json!("Report"), Setting),
        case(
            d,
            "spec.tags",
            json!({"team": "shop", "tier": "gold"}),
            kept("/tags", json!({"team": "shop", "tier": "gold"})),
        ),
        case(
            d,
            "spec.tags",
            json!({"tier": "silver"}),
            kept("/tags", json!({"tier": "silver"})),
        ),
        case(d, "spec.tags", json!({"aws:x": "y"}), Refused),
        case(
            d,
            "spec.database",
            json!("shop"),
            new("/database", json!("shop")),
        ),
        case(
            d,
            "spec.username",
            json!("owner"),
            new("/username", json!("owner")),
        ),
        case(
            d,
            "spec.region",
            json!("us-east-2"),
            new("/region", json!("us-east-2")),
        ),
        case(
            d,
            "spec.account",
            json!("AwsAccount/other"),
            new("/region", json!("us-east-2")),
        ),
        case(
            d,
            "spec.engine",
            json!("mysql"),
            new("/engine", json!("mysql")),
        ),
    ]
}

/// The app as documents; each case changes one value in one of them.
fn app() -> Vec<Value> {
    let account = |name: &str, region: &str| {
        json!({"kind": "AwsAccount", "metadata": {"name": name}, "spec": {
            "accountId": "123456789012", "roleArn": "arn:aws:iam::123456789012:role/qleet",
            "defaultRegion": region}})
    };
    vec![
        account("main", "eu-west-1"),
        account("other", "eu-central-1"),
        json!({"kind": "ObjectStorageBucket", "metadata": {"name": "assets"},
               "spec": {"account": "AwsAccount/main"}}),
        json!({"kind": "RelationalDatabase", "metadata": {"name": "db"}, "spec": {
            "account": "AwsAccount/main", "engine": "postgres", "version": "16.3",
            "sizeClass": "db.t4g.micro"}}),
        json!({"kind": "KubernetesRuntime", "metadata": {"name": "eks"}, "spec": {"eks": {
            "account": "AwsAccount/main", "version": "1.31",
            "nodeGroup": {"min": 1, "max": 3, "desired": 2}}}}),
    ]
}

fn yaml(docs: &[Value]) -> String {
    // YAML is a superset of JSON.
    docs.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn name_of(kind: &str) -> &'static str {
    match kind {
        "AwsAccount" => "main",
        "ObjectStorageBucket" => "assets",
        "KubernetesRuntime" => "eks",
        _ => "db",
    }
}

/// Every leaf of a JSON Schema's properties, as `spec.a.b`.
fn leaves(schema: &Value, root: &Value, path: &str, out: &mut BTreeSet<String>) {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => &root["$defs"][r.trim_start_matches("#/$defs/")],
        None => schema,
    };
    let mut inner = false;
    for key in ["anyOf", "oneOf", "allOf"] {
        for o in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if o.get("type") != Some(&json!("null")) {
                leaves(o, root, path, out);
                inner = true;
            }
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            leaves(v, root, &format!("{path}.{k}"), out);
        }
        inner = true;
    }
    if !inner {
        out.insert(path.to_owned());
    }
}

fn regional(sdk: &SdkConfig, region: &str) -> SdkConfig {
    sdk.to_builder()
        .region(Region::new(region.to_owned()))
        .build()
}

fn s3(sdk: &SdkConfig, region: &str) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&regional(sdk, region))
            .force_path_style(true)
            .build(),
    )
}

fn rds(sdk: &SdkConfig, region: &str) -> aws_sdk_rds::Client {
    aws_sdk_rds::Client::new(&regional(sdk, region))
}

fn eks(sdk: &SdkConfig, region: &str) -> aws_sdk_eks::Client {
    aws_sdk_eks::Client::new(&regional(sdk, region))
}

/// What moto holds for the object's current resource, read back with the AWS SDK (never from
/// Qleet's outputs), and the resource's identity.
async fn read_back(cp: &Cp, sdk: &SdkConfig, kind: &str) -> (String, String, Value) {
    let rendered = cp.object(kind, name_of(kind)).await["rendered"].clone();
    let region = rendered["account"]["region"]
        .as_str()
        .expect("region")
        .to_owned();
    match kind {
        "ObjectStorageBucket" => {
            let name = rendered["bucket"]["name"]
                .as_str()
                .expect("name")
                .to_owned();
            let c = s3(sdk, &region);
            let location = c
                .get_bucket_location()
                .bucket(&name)
                .send()
                .await
                .expect("location");
            // moto answers versioning under another root element than the SDK expects: read
            // the status from the body then.
            let versioning = match c.get_bucket_versioning().bucket(&name).send().await {
                Ok(v) => v.status().map(|s| s.as_str().to_owned()),
                Err(e) => e
                    .raw_response()
                    .and_then(|r| r.body().bytes())
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .and_then(|b| {
                        ["Enabled", "Suspended"]
                            .into_iter()
                            .find(|s| b.contains(&format!("<Status>{s}</Status>")))
                            .map(str::to_owned)
                    }),
            };
            let bpa = c
                .get_public_access_block()
                .bucket(&name)
                .send()
                .await
                .ok()
                .and_then(|o| o.public_access_block_configuration().cloned())
                .is_some_and(|p| p.block_public_acls() == Some(true));
            let encryption = c
                .get_bucket_encryption()
                .bucket(&name)
                .send()
                .await
                .ok()
                .and_then(|o| {
                    o.server_side_encryption_configuration()
                        .and_then(|c| c.rules().first())
                        .and_then(|r| r.apply_server_side_encryption_by_default())
                        .map(|d| d.sse_algorithm().as_str().to_owned())
                });
            let tags: serde_json::Map<String, Value> = c
                .get_bucket_tagging()
                .bucket(&name)
                .send()
                .await
                .map(|t| {
                    t.tag_set()
                        .iter()
                        .filter(|t| !t.key().starts_with("qleet:"))
                        .map(|t| (t.key().to_owned(), json!(t.value())))
                        .collect()
                })
                .unwrap_or_default();
            let observed = json!({
                "tags": tags,
                "region": location.location_constraint().map_or("us-east-1", |l| l.as_str()),
                "versioning": versioning,
                "blockPublicAccess": bpa,
                "encryption": encryption,
            });
            (name, region, observed)
        }
        "RelationalDatabase" => {
            let id = rendered["database"]["instanceIdentifier"]
                .as_str()
                .expect("id")
                .to_owned();
            let out = rds(sdk, &region)
                .describe_db_instances()
                .db_instance_identifier(&id)
                .send()
                .await
                .expect("the instance is in moto");
            let i = out.db_instances().first().expect("instance");
            let az = i.availability_zone().unwrap_or_default();
            let tags: serde_json::Map<String, Value> = i
                .tag_list()
                .iter()
                .filter_map(|t| Some((t.key()?, t.value().unwrap_or_default())))
                .filter(|(k, _)| !k.starts_with("qleet:"))
                .map(|(k, v)| (k.to_owned(), json!(v)))
                .collect();
            let observed = json!({
                "tags": tags,
                "region": az.trim_end_matches(char::is_alphabetic),
                "engine": i.engine(),
                "version": i.engine_version(),
                "sizeClass": i.db_instance_class(),
                "storageGb": i.allocated_storage(),
                "backupRetentionDays": i.backup_retention_period(),
                "database": i.db_name(),
                "username": i.master_username(),
            });
            (id, region, observed)
        }
        "KubernetesRuntime" => {
            let name = rendered["eks"]["clusterName"]
                .as_str()
                .expect("clusterName")
                .to_owned();
            let c = eks(sdk, &region);
            let cluster = c
                .describe_cluster()
                .name(&name)
                .send()
                .await
                .expect("the cluster is in moto");
            let cluster = cluster.cluster().expect("cluster");
            let ng = c
                .describe_nodegroup()
                .cluster_name(&name)
                .nodegroup_name(format!("{name}-nodes"))
                .send()
                .await
                .expect("the node group is in moto");
            let ng = ng.nodegroup().expect("node group");
            let scaling = ng.scaling_config().expect("scaling");
            let tags: serde_json::Map<String, Value> = cluster
                .tags()
                .into_iter()
                .flatten()
                .filter(|(k, _)| !k.starts_with("qleet:") && !k.starts_with("aws:"))
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            let observed = json!({
                "tags": tags,
                // `arn:aws:eks:REGION:ACCOUNT:cluster/NAME`
                "region": cluster.arn().and_then(|a| a.split(':').nth(3)),
                "version": cluster.version(),
                "nodeGroup": {
                    "instanceType": ng.instance_types().first(),
                    "min": scaling.min_size(),
                    "max": scaling.max_size(),
                    "desired": scaling.desired_size(),
                },
            });
            (name, region, observed)
        }
        _ => (String::new(), region, Value::Null),
    }
}

/// Whether the resource `id` of `kind` is still anywhere in moto.
async fn exists(moto: &Moto, sdk: &SdkConfig, kind: &str, id: &str, region: &str) -> bool {
    match kind {
        "ObjectStorageBucket" => moto.bucket_names().await.iter().any(|b| b == id),
        "KubernetesRuntime" => eks(sdk, region)
            .describe_cluster()
            .name(id)
            .send()
            .await
            .is_ok(),
        _ => rds(sdk, region)
            .describe_db_instances()
            .db_instance_identifier(id)
            .send()
            .await
            .is_ok(),
    }
}

/// Waits until every object is READY at its generation and nothing replaced is left to
/// delete.
async fn settled(cp: &Cp, n: usize) {
    for _ in 0..600 {
        let objects = cp
            .gql_ok(
                "{ objects { phase generation observedGeneration } }",
                json!({}),
            )
            .await;
        let all = objects["objects"].as_array().cloned().unwrap_or_default();
        let ready = all.len() == n
            && all
                .iter()
                .all(|o| o["phase"] == "READY" && o["generation"] == o["observedGeneration"]);
        let retired = cp
            .sql_count("select count(*) from retired_resources where deleted_at is null")
            .await;
        if ready && retired == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let objects = cp
        .gql_ok("{ objects { kind name phase message } }", json!({}))
        .await;
    panic!("never settled: {objects:#}");
}

fn plan_action(plan: &Value, kind: &str) -> String {
    plan["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["kind"] == kind && c["name"] == name_of(kind))
        .map(|c| c["action"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn every_field_of_every_aws_kind_is_made_in_aws_replaced_without_orphans_or_refused() {
    let cp = Cp::start().await;
    let moto = Moto::start().await;
    let sdk = moto.sdk("test", "test").await;
    let dir = std::env::temp_dir().join(format!("qleet-agent-fields-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let token = cp.registration_token().await;
    let mut agent = agent_command(&cp.url, &moto.url, &dir.join("agent.json"))
        .args(["--token", &token])
        .spawn()
        .expect("start qleet-agent");

    // Every field of every walked kind has a case.
    let kinds = cp.gql_ok("{ kinds { name schema } }", json!({})).await;
    let cases = cases();
    for k in kinds["kinds"].as_array().expect("kinds") {
        let name = k["name"].as_str().expect("name");
        if !WALKED.contains(&name) {
            continue;
        }
        let mut fields = BTreeSet::new();
        leaves(&k["schema"], &k["schema"], "spec", &mut fields);
        for f in fields {
            assert!(
                cases.iter().any(|c| c.kind == name && c.field == f),
                "{name} `{f}` has no case in tenant-agent/tests/agent/fields.rs"
            );
        }
    }

    let mut docs = app();
    cp.apply_ok(&yaml(&docs)).await;
    settled(&cp, docs.len()).await;
    let mut gone: Vec<(String, String, String)> = Vec::new();

    for c in &cases {
        let what = format!("{} {} = {}", c.kind, c.field, c.value);
        let at = docs
            .iter()
            .position(|d| d["kind"] == c.kind && d["metadata"]["name"] == name_of(c.kind))
            .expect("document");
        let mut next = docs.clone();
        set(&mut next[at], c.field, c.value.clone());
        for (field, value) in &c.with {
            set(&mut next[at], field, value.clone());
        }
        let before = read_back(&cp, &sdk, c.kind).await;
        let moved = [
            read_back(&cp, &sdk, "ObjectStorageBucket").await,
            read_back(&cp, &sdk, "RelationalDatabase").await,
            read_back(&cp, &sdk, "KubernetesRuntime").await,
        ];
        if let Expect::Refused = c.expect {
            let body = cp.apply(&yaml(&next), false, false).await;
            assert_eq!(
                body["errors"][0]["extensions"]["field"],
                format!("{}/{}:{}", c.kind, name_of(c.kind), c.field),
                "{what}: {body}"
            );
            assert_eq!(
                read_back(&cp, &sdk, c.kind).await,
                before,
                "{what}: nothing changed"
            );
            continue;
        }
        let plan = cp.apply_ok(&yaml(&next)).await;
        docs = next;
        let n = docs.len();
        settled(&cp, n).await;
        let after = read_back(&cp, &sdk, c.kind).await;
        match &c.expect {
            Expect::InPlace { pointer, value } => {
                assert_eq!(plan_action(&plan, c.kind), "UPDATE", "{what}: {plan}");
                assert_eq!(after.0, before.0, "{what}: the same resource");
                assert_eq!(after.2.pointer(pointer), Some(value), "{what}: {after:?}");
            }
            Expect::Setting => {
                assert_eq!(plan_action(&plan, c.kind), "UPDATE", "{what}: {plan}");
                assert_eq!(after, before, "{what}: the same resource, as it was");
            }
            Expect::Replaced { pointer, value } => {
                assert_eq!(plan_action(&plan, c.kind), "REPLACE", "{what}: {plan}");
                assert_ne!(after.0, before.0, "{what}: a new resource");
                assert_eq!(after.2.pointer(pointer), Some(value), "{what}: {after:?}");
                assert!(
                    !exists(&moto, &sdk, c.kind, &before.0, &before.1).await,
                    "{what}: the old {} is gone",
                    before.0
                );
                gone.push((c.kind.to_owned(), before.0.clone(), before.1.clone()));
            }
            Expect::MovesDependents => {
                for (kind, old) in [
                    ("ObjectStorageBucket", &moved[0]),
                    ("RelationalDatabase", &moved[1]),
                    ("KubernetesRuntime", &moved[2]),
                ] {
                    assert_eq!(plan_action(&plan, kind), "REPLACE", "{what}: {plan}");
                    let now = read_back(&cp, &sdk, kind).await;
                    assert_eq!(now.2["region"], c.value, "{what}: {kind} moved: {now:?}");
                    assert!(
                        !exists(&moto, &sdk, kind, &old.0, &old.1).await,
                        "{what}: the old {} is gone",
                        old.0
                    );
                    gone.push((kind.to_owned(), old.0.clone(), old.1.clone()));
                }
            }
            Expect::Refused => unreachable!(),
        }
    }

    // Everything deleted: nothing of the app is left in moto but the final snapshots.
    let current_db = read_back(&cp, &sdk, "RelationalDatabase").await;
    let body = cp.apply("", false, true).await;
    assert!(body.get("errors").is_none(), "{body}");
    cp.wait_until("everything is gone", |p| p.is_empty()).await;
    assert_eq!(moto.bucket_names().await, Vec::<String>::new());
    let mut snapshots = 0;
    for region in ["eu-west-1", "eu-west-3", "eu-central-1", "us-east-2"] {
        let c = rds(&sdk, region);
        let left = c.describe_db_instances().send().await.expect("describe");
        assert!(left.db_instances().is_empty(), "{region}: {left:?}");
        let taken = c.describe_db_snapshots().send().await.expect("snapshots");
        snapshots += taken
            .db_snapshots()
            .iter()
            .filter(|s| s.snapshot_type() == Some("manual"))
            .count();
        let secrets = aws_sdk_secretsmanager::Client::new(&regional(&sdk, region))
            .list_secrets()
            .send()
            .await
            .expect("secrets");
        assert!(secrets.secret_list().is_empty(), "{region}: {secrets:?}");
        let clusters = eks(&sdk, region)
            .list_clusters()
            .send()
            .await
            .expect("clusters");
        assert!(clusters.clusters().is_empty(), "{region}: {clusters:?}");
    }
    let deleted_instances = gone
        .iter()
        .filter(|(k, _, _)| k == "RelationalDatabase")
        .count()
        + 1;
    assert_eq!(
        snapshots, deleted_instances,
        "one final snapshot per deleted instance (the last was {})",
        current_db.0
    );
    assert!(terminate(&mut agent).await.success());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
