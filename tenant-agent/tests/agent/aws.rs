//! AWS work against moto: the role is assumed with the ExternalId, a session name naming the
//! task and session tags; buckets and databases are created, configured, adopted on retry and
//! deleted; secret values never leave the account; AWS errors are surfaced with their code.

use aws_sdk_s3::types::ServerSideEncryption;
use qleet_agent::task;
use qleet_protocol::TaskResult;
use serde_json::{Map, Value, json};

use crate::support::{
    Moto, POLICY_SETUP_CALLS, REGION, ROLE_ARN, Recorder, TaskBuilder, account, context, iam_setup,
};

fn succeeded(r: TaskResult) -> Map<String, Value> {
    match r {
        TaskResult::Succeeded { outputs } => outputs,
        TaskResult::Failed { code, message, .. } => panic!("task failed: {code}: {message}"),
    }
}

fn failed(r: TaskResult) -> (String, String, bool) {
    match r {
        TaskResult::Failed {
            code,
            message,
            retryable,
        } => (code, message, retryable),
        TaskResult::Succeeded { outputs } => panic!("task succeeded: {outputs:?}"),
    }
}

fn bucket_resource(b: &TaskBuilder, external_id: Option<&str>, versioning: bool) -> Value {
    json!({
        "account": account(external_id),
        "bucket": {
            "name": b.cloud_name(),
            "versioning": versioning,
            "blockPublicAccess": true,
            "encryption": "AES256",
        },
    })
}

#[tokio::test]
async fn a_bucket_is_made_under_the_assumed_role_with_tags_public_access_block_versioning_and_encryption()
 {
    let moto = Moto::start().await;
    let proxy = Recorder::start(&moto.url).await;
    let ctx = context(moto.agent_aws(&proxy.url, "ambient", "ambient").await);
    let b = TaskBuilder::new("ObjectStorageBucket", "assets");
    let mut t = b.task("ensure", bucket_resource(&b, Some("qleet-ext-123"), true));
    t.payload["sourceIdentity"] = json!("qleet-user-alice");

    let outputs = succeeded(task::run(&ctx, &t).await);
    let name = b.cloud_name();
    assert_eq!(
        Value::Object(outputs),
        json!({
            "name": name,
            "arn": format!("arn:aws:s3:::{name}"),
            "region": REGION,
            "endpoint": proxy.url,
            "versioning": true,
            "blockPublicAccess": true,
            "encryption": "AES256",
        })
    );

    // What the agent asked STS for, as sent on the wire.
    let assumed = proxy.calls("AssumeRole");
    assert_eq!(assumed.len(), 1);
    let a = &assumed[0];
    assert_eq!(a.field("RoleArn").as_deref(), Some(ROLE_ARN));
    assert_eq!(a.field("ExternalId").as_deref(), Some("qleet-ext-123"));
    assert_eq!(
        a.field("RoleSessionName"),
        Some(format!("qleet-{}", t.id.simple()))
    );
    assert_eq!(
        a.field("SourceIdentity").as_deref(),
        Some("qleet-user-alice")
    );
    let form = a.form();
    let tag = |key: &str| {
        let idx = form
            .iter()
            .find(|(k, v)| k.starts_with("Tags.member.") && k.ends_with(".Key") && v == key)
            .map(|(k, _)| k.trim_end_matches(".Key").to_owned())
            .unwrap_or_else(|| panic!("no session tag {key} in {form:?}"));
        a.field(&format!("{idx}.Value"))
    };
    assert_eq!(
        tag("qleet:control-plane"),
        Some(b.control_plane.to_string())
    );
    assert_eq!(
        tag("qleet:object"),
        Some("ObjectStorageBucket/assets".into())
    );

    // The bucket, as moto has it.
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&moto.sdk("test", "test").await)
            .force_path_style(true)
            .build(),
    );
    let tags = s3
        .get_bucket_tagging()
        .bucket(&name)
        .send()
        .await
        .expect("tags");
    let tags: Vec<(&str, &str)> = tags
        .tag_set()
        .iter()
        .map(|t| (t.key(), t.value()))
        .collect();
    assert!(tags.contains(&("qleet:managed", "true")), "{tags:?}");
    assert!(
        tags.contains(&("qleet:object-id", &b.object_id.to_string())),
        "{tags:?}"
    );
    let pab = s3
        .get_public_access_block()
        .bucket(&name)
        .send()
        .await
        .expect("public access block");
    let pab = pab
        .public_access_block_configuration()
        .expect("configuration");
    assert_eq!(
        (
            pab.block_public_acls(),
            pab.ignore_public_acls(),
            pab.block_public_policy(),
            pab.restrict_public_buckets()
        ),
        (Some(true), Some(true), Some(true), Some(true))
    );
    // Moto answers GetBucketVersioning under a root element the SDK refuses; read it raw.
    let versioning = reqwest::get(format!("{}/{name}?versioning", moto.url))
        .await
        .expect("versioning")
        .text()
        .await
        .expect("body");
    assert!(
        versioning.contains("<Status>Enabled</Status>"),
        "{versioning}"
    );
    let enc = s3
        .get_bucket_encryption()
        .bucket(&name)
        .send()
        .await
        .expect("encryption");
    let rule = enc
        .server_side_encryption_configuration()
        .and_then(|c| c.rules().first())
        .and_then(|r| r.apply_server_side_encryption_by_default())
        .map(|d| d.sse_algorithm().clone());
    assert_eq!(rule, Some(ServerSideEncryption::Aes256));

    // A retried task (its first report was lost) adopts the bucket: no second create, one
    // bucket, and the cached session is reused (no second AssumeRole).
    let mut again = b.task("ensure", bucket_resource(&b, Some("qleet-ext-123"), true));
    again.payload["sourceIdentity"] = json!("qleet-user-alice");
    succeeded(task::run(&ctx, &again).await);
    let seen: Vec<String> = proxy
        .requests()
        .iter()
        .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
        .collect();
    assert_eq!(
        proxy.s3_calls("PUT", &format!("/{name}/"), ""),
        1,
        "one CreateBucket: {seen:?}"
    );
    let buckets = s3.list_buckets().send().await.expect("list");
    assert_eq!(buckets.buckets().len(), 1);
    assert_eq!(proxy.calls("AssumeRole").len(), 1, "the session is cached");

    // Delete empties a versioned bucket and removes it.
    s3.put_object()
        .bucket(&name)
        .key("a.txt")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"one"))
        .send()
        .await
        .expect("put");
    s3.put_object()
        .bucket(&name)
        .key("a.txt")
        .body(aws_sdk_s3::primitives::ByteStream::from_static(b"two"))
        .send()
        .await
        .expect("put");
    let del = b.task("delete", bucket_resource(&b, Some("qleet-ext-123"), true));
    succeeded(task::run(&ctx, &del).await);
    assert!(
        s3.list_buckets()
            .send()
            .await
            .expect("list")
            .buckets()
            .is_empty()
    );
    // Deleting what is gone is fine.
    succeeded(
        task::run(
            &ctx,
            &b.task("delete", bucket_resource(&b, Some("qleet-ext-123"), true)),
        )
        .await,
    );
}

#[tokio::test]
async fn a_bucket_of_the_same_name_that_is_not_ours_is_neither_adopted_nor_deleted() {
    let moto = Moto::start().await;
    let ctx = context(moto.agent_aws(&moto.url, "ambient", "ambient").await);
    let b = TaskBuilder::new("ObjectStorageBucket", "assets");
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&moto.sdk("test", "test").await)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket()
        .bucket(b.cloud_name())
        .create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::EuWest1)
                .build(),
        )
        .send()
        .await
        .expect("someone else's bucket");
    // Tagged, but not as this object's (an untagged one of this name in the same account is
    // what a killed try of ours leaves, and is adopted: see the journey's kill test).
    s3.put_bucket_tagging()
        .bucket(b.cloud_name())
        .tagging(
            aws_sdk_s3::types::Tagging::builder()
                .tag_set(
                    aws_sdk_s3::types::Tag::builder()
                        .key("team")
                        .value("data")
                        .build()
                        .expect("tag"),
                )
                .build()
                .expect("tagging"),
        )
        .send()
        .await
        .expect("tag it");
    let (code, _, retryable) = failed(
        task::run(
            &ctx,
            &b.task("ensure", bucket_resource(&b, Some("x"), false)),
        )
        .await,
    );
    assert_eq!((code.as_str(), retryable), ("BucketNotOurs", false));
    let (code, _, _) = failed(
        task::run(
            &ctx,
            &b.task("delete", bucket_resource(&b, Some("x"), false)),
        )
        .await,
    );
    assert_eq!(code, "BucketNotOurs");
    assert_eq!(
        s3.list_buckets()
            .send()
            .await
            .expect("list")
            .buckets()
            .len(),
        1
    );
}

fn database_resource(b: &TaskBuilder) -> Value {
    json!({
        "account": account(Some("qleet-ext-db")),
        "database": {
            "instanceIdentifier": b.cloud_name(),
            "engine": "postgres",
            "version": "16.4",
            "sizeClass": "db.t4g.micro",
            "storageGb": 20,
            "backupRetentionDays": 7,
            "database": "db",
            "username": "app",
            "port": 5432,
            "passwordSecretName": format!("qleet/{}/{}/password", b.control_plane, b.object_id),
        },
    })
}

#[tokio::test]
async fn a_database_password_is_made_in_secrets_manager_and_only_its_arn_is_reported() {
    let moto = Moto::start().await;
    let proxy = Recorder::start(&moto.url).await;
    let ctx = context(moto.agent_aws(&proxy.url, "ambient", "ambient").await);
    let b = TaskBuilder::new("RelationalDatabase", "db");
    let t = b.task("ensure", database_resource(&b));
    let result = task::run(&ctx, &t).await;
    let report = serde_json::to_string(&result).expect("json");
    let outputs = succeeded(result);
    let id = b.cloud_name();

    let sdk = moto.sdk("test", "test").await;
    let sm = aws_sdk_secretsmanager::Client::new(&sdk);
    let secret_name = format!("qleet/{}/{}/password", b.control_plane, b.object_id);
    let secret = sm
        .get_secret_value()
        .secret_id(&secret_name)
        .send()
        .await
        .expect("the password is in Secrets Manager");
    let password = secret.secret_string().expect("text").to_owned();
    assert!(password.len() >= 32, "a long generated password");
    assert!(
        !report.contains(&password),
        "the password never appears in a report"
    );

    assert!(
        outputs["host"].as_str().expect("host").starts_with(&id),
        "{outputs:?}"
    );
    assert_eq!(outputs["port"], 5432);
    let reference = &outputs["password"]["secretRef"];
    assert_eq!(reference["provider"], "aws-secretsmanager");
    assert_eq!(reference["arn"].as_str(), secret.arn());
    assert_eq!(reference["region"], REGION);

    let described = sm
        .describe_secret()
        .secret_id(&secret_name)
        .send()
        .await
        .expect("describe");
    assert!(
        described
            .tags()
            .iter()
            .any(|t| t.key() == Some("qleet:object-id")
                && t.value() == Some(&b.object_id.to_string()))
    );
    let rds = aws_sdk_rds::Client::new(&sdk);
    let instances = rds.describe_db_instances().send().await.expect("describe");
    assert_eq!(instances.db_instances().len(), 1);
    let i = &instances.db_instances()[0];
    assert_eq!(i.db_instance_identifier(), Some(id.as_str()));
    assert_eq!(i.master_username(), Some("app"));
    assert_eq!(i.db_name(), Some("db"));
    assert!(
        i.tag_list()
            .iter()
            .any(|t| t.key() == Some("qleet:managed"))
    );

    // A retry adopts the instance and keeps the password.
    let again = succeeded(task::run(&ctx, &b.task("ensure", database_resource(&b))).await);
    assert_eq!(again["password"], outputs["password"]);
    assert_eq!(proxy.calls("CreateDBInstance").len(), 1);
    let instances = rds.describe_db_instances().send().await.expect("describe");
    assert_eq!(instances.db_instances().len(), 1);
    let still = sm
        .get_secret_value()
        .secret_id(&secret_name)
        .send()
        .await
        .expect("secret");
    assert_eq!(still.secret_string(), Some(password.as_str()));

    // Delete removes the instance and the secret.
    succeeded(task::run(&ctx, &b.task("delete", database_resource(&b))).await);
    let instances = rds.describe_db_instances().send().await.expect("describe");
    assert!(instances.db_instances().is_empty());
    assert!(
        sm.describe_secret()
            .secret_id(&secret_name)
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_wrong_external_id_fails_the_task_with_access_denied_from_aws() {
    let moto = Moto::policy_checking(POLICY_SETUP_CALLS).await;
    let (key, secret) = iam_setup(&moto, "qleet-the-right-one").await;
    let ctx = context(moto.agent_aws(&moto.url, &key, &secret).await);
    let b = TaskBuilder::new("ObjectStorageBucket", "assets");

    let wrong = b.task(
        "ensure",
        bucket_resource(&b, Some("qleet-a-wrong-one"), false),
    );
    let (code, message, retryable) = failed(task::run(&ctx, &wrong).await);
    assert_eq!(code, "AccessDenied", "{message}");
    assert!(message.starts_with("sts:AssumeRole: "), "{message}");
    assert!(!retryable);

    // The same account check through its AwsAccount object fails the same way.
    let acct = TaskBuilder::new("AwsAccount", "main");
    let t = acct.task(
        "ensure",
        json!({ "account": account(Some("qleet-a-wrong-one")) }),
    );
    assert_eq!(failed(task::run(&ctx, &t).await).0, "AccessDenied");

    // With the right one, policy checking lets the work through.
    let right = b.task(
        "ensure",
        bucket_resource(&b, Some("qleet-the-right-one"), false),
    );
    succeeded(task::run(&ctx, &right).await);
}

#[tokio::test]
async fn a_task_without_an_external_id_is_refused_before_any_call_to_aws() {
    // Moto would let this AssumeRole through; the agent must not send it.
    let moto = Moto::start().await;
    let proxy = Recorder::start(&moto.url).await;
    let ctx = context(moto.agent_aws(&proxy.url, "ambient", "ambient").await);
    let b = TaskBuilder::new("ObjectStorageBucket", "assets");
    for external_id in [None, Some("")] {
        let t = b.task("ensure", bucket_resource(&b, external_id, false));
        let (code, _, retryable) = failed(task::run(&ctx, &t).await);
        assert_eq!((code.as_str(), retryable), ("MissingExternalId", false));
    }
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());
}

#[tokio::test]
async fn an_eks_cluster_and_its_node_group_are_made_and_reported() {
    let moto = Moto::start().await;
    let proxy = Recorder::start(&moto.url).await;
    let ctx = context(moto.agent_aws(&proxy.url, "ambient", "ambient").await);
    let b = TaskBuilder::new("KubernetesRuntime", "prod");
    let resource = json!({
        "account": account(Some("x")),
        "eks": {
            "clusterName": b.cloud_name(),
            "version": "1.31",
            "nodeGroup": { "instanceType": "t3.medium", "min": 1, "max": 3, "desired": 2 },
            "subnetIds": ["subnet-1", "subnet-2"],
        },
    });
    let outputs = succeeded(task::run(&ctx, &b.task("ensure", resource.clone())).await);
    assert_eq!(outputs["clusterName"], b.cloud_name());
    assert!(
        outputs["endpoint"]
            .as_str()
            .expect("endpoint")
            .starts_with("https://")
    );
    assert!(
        !outputs["certificateAuthority"]
            .as_str()
            .expect("ca")
            .is_empty()
    );
    let eks = aws_sdk_eks::Client::new(&moto.sdk("test", "test").await);
    let ng = eks
        .describe_nodegroup()
        .cluster_name(b.cloud_name())
        .nodegroup_name(format!("{}-nodes", b.cloud_name()))
        .send()
        .await
        .expect("node group");
    let scaling = ng
        .nodegroup()
        .and_then(|n| n.scaling_config())
        .expect("scaling");
    assert_eq!(scaling.desired_size(), Some(2));
    // Again, with tags of the customer's own: adopted, not duplicated, and its tags made the
    // declared ones (a tag dropped from the spec goes; Qleet's stay).
    let tags_now = || async {
        eks.describe_cluster()
            .name(b.cloud_name())
            .send()
            .await
            .expect("cluster")
            .cluster()
            .and_then(|c| c.tags().cloned())
            .unwrap_or_default()
    };
    for own in [
        json!({"team": "shop", "tier": "gold"}),
        json!({"tier": "silver"}),
    ] {
        let mut t = b.task("ensure", resource.clone());
        for (k, v) in own.as_object().expect("tags") {
            t.payload["tags"][k] = v.clone();
        }
        succeeded(task::run(&ctx, &t).await);
        let tags = tags_now().await;
        let mine: std::collections::BTreeMap<&str, &str> = tags
            .iter()
            .filter(|(k, _)| !k.starts_with("qleet:"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let want: std::collections::BTreeMap<&str, &str> = own
            .as_object()
            .expect("tags")
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default()))
            .collect();
        assert_eq!(mine, want, "{tags:?}");
        assert_eq!(
            tags.get("qleet:object-id").map(String::as_str),
            Some(b.object_id.to_string().as_str())
        );
    }
    assert_eq!(
        eks.list_clusters()
            .send()
            .await
            .expect("list")
            .clusters()
            .len(),
        1
    );
    // Observed (a drift check) as EKS has it: in sync; a node group resized behind Qleet's
    // back is a difference naming the field; the ensure puts it back.
    let observe = || {
        let mut t = b.task("observe", resource.clone());
        t.payload["tags"]["tier"] = json!("silver");
        t
    };
    let drift = |t: &qleet_protocol::LeasedTask, seen: &Map<String, Value>| {
        qleet_control_plane::objects::drift::compare(
            "KubernetesRuntime",
            &t.payload,
            &Value::Object(seen.clone()),
            chrono::Utc::now(),
        )
    };
    let t = observe();
    let seen = succeeded(task::run(&ctx, &t).await);
    assert_eq!(seen["found"], true);
    assert_eq!(seen["version"], "1.31");
    assert_eq!(seen["region"], crate::support::REGION);
    assert_eq!(
        seen["nodeGroup"],
        json!({ "instanceType": "t3.medium", "min": 1, "max": 3, "desired": 2 })
    );
    assert_eq!(drift(&t, &seen).differences, vec![], "{seen:?}");
    eks.update_nodegroup_config()
        .cluster_name(b.cloud_name())
        .nodegroup_name(format!("{}-nodes", b.cloud_name()))
        .scaling_config(
            aws_sdk_eks::types::NodegroupScalingConfig::builder()
                .min_size(1)
                .max_size(3)
                .desired_size(3)
                .build(),
        )
        .send()
        .await
        .expect("resized behind Qleet's back");
    let seen = succeeded(task::run(&ctx, &observe()).await);
    let found = drift(&t, &seen);
    assert_eq!(
        found
            .differences
            .iter()
            .map(|d| d.field.as_str())
            .collect::<Vec<_>>(),
        vec!["spec.eks.nodeGroup"],
        "{found:?}"
    );
    assert_eq!(found.differences[0].observed["desired"], 3);
    let mut put_back = b.task("ensure", resource.clone());
    put_back.payload["tags"]["tier"] = json!("silver");
    succeeded(task::run(&ctx, &put_back).await);
    let seen = succeeded(task::run(&ctx, &observe()).await);
    assert_eq!(drift(&t, &seen).differences, vec![], "{seen:?}");

    // A newer version is an in-place upgrade, one minor version at a time (moto does not
    // emulate UpdateClusterVersion: what is checked is the call, and that its failure is
    // reported, not ignored); an older one is refused.
    let mut newer = resource.clone();
    newer["eks"]["version"] = json!("1.33");
    let result = task::run(&ctx, &b.task("ensure", newer)).await;
    let upgrade: Vec<crate::support::Recorded> = proxy
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "POST"
                && r.path
                    .ends_with(&format!("/clusters/{}/updates", b.cloud_name()))
        })
        .collect();
    assert_eq!(upgrade.len(), 1, "{:?}", proxy.requests());
    let asked: Value = serde_json::from_str(&upgrade[0].body).expect("json");
    assert_eq!(asked["version"], "1.32", "one minor version at a time");
    assert!(matches!(result, TaskResult::Failed { .. }), "{result:?}");
    let mut older = resource.clone();
    older["eks"]["version"] = json!("1.30");
    let (code, message, retryable) = failed(task::run(&ctx, &b.task("ensure", older)).await);
    assert_eq!(
        (code.as_str(), retryable),
        ("ClusterVersionDowngrade", false),
        "{message}"
    );

    succeeded(task::run(&ctx, &b.task("delete", resource.clone())).await);
    assert!(
        eks.list_clusters()
            .send()
            .await
            .expect("list")
            .clusters()
            .is_empty()
    );
    // Gone: an observation says so (the control plane reports it missing or makes it again).
    let seen = succeeded(task::run(&ctx, &observe()).await);
    assert_eq!(seen["found"], false);
    assert!(drift(&t, &seen).missing);
}
