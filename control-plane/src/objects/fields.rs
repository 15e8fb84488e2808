//! What changing each field of each kind's spec does, declared once beside the kinds: made in
//! place, a replacement (a new resource, the old one deleted once nothing uses it), or refused.
//! The plan shows it; apply refuses what cannot be done; a test walks every field of every
//! kind's JSON Schema so that a field added later cannot be forgotten here.

use std::cmp::Ordering;

use serde_json::Value;

use super::apply::FieldDiff;
use super::kinds::Builtin;

/// What a change of a field does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The agent changes the resource in place.
    InPlace,
    /// Made in place when it grows; making it smaller is refused (why).
    GrowOnly(&'static str),
    /// A version, made in place when it goes up; going down is refused (why).
    UpgradeOnly(&'static str),
    /// A new resource replaces the old: what happens, data included.
    Replace(&'static str),
    /// Refused: why, and what to do instead.
    Immutable(&'static str),
}

/// A field (and everything under it) and what changing it does.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub path: &'static str,
    pub change: Change,
}

const fn rule(path: &'static str, change: Change) -> Rule {
    Rule { path, change }
}

use Change::{GrowOnly, Immutable, InPlace, Replace, UpgradeOnly};

const NEW_BUCKET: &str = "a new S3 bucket is made; dependents are re-rolled onto it; then the old bucket is emptied and deleted (its objects are not copied)";
const NEW_DATABASE: &str = "a new RDS instance is made (empty: the data is not copied); once it is Ready and its dependents are re-rolled onto it, the old one is deleted with a final snapshot";
const NEW_CLUSTER: &str = "a new EKS cluster is made; once it is Active and what runs on it is re-rolled, the old cluster is deleted";
const MOVED: &str =
    "it is applied on the new target; once it is Ready there, it is removed from the old one";

/// The rules of `kind`. Paths are `spec.a.b`; a rule covers the path and everything under it.
pub fn rules(kind: Builtin) -> &'static [Rule] {
    match kind {
        Builtin::AwsAccount => {
            const RULES: &[Rule] = &[
                rule(
                    "spec.accountId",
                    Immutable(
                        "an AwsAccount cannot move to another AWS account; declare a new AwsAccount and point objects at it",
                    ),
                ),
                rule("spec.roleArn", InPlace),
                // Each bucket, database and cluster that does not set its own `region` moves
                // with it: the plan shows each as a replacement (`apply::replacement`).
                rule("spec.defaultRegion", InPlace),
                rule("spec.agentPrincipalArn", InPlace),
            ];
            RULES
        }
        Builtin::KubernetesRuntime => {
            const RULES: &[Rule] = &[
                rule("spec.eks.account", Replace(NEW_CLUSTER)),
                rule("spec.eks.region", Replace(NEW_CLUSTER)),
                rule(
                    "spec.eks.version",
                    UpgradeOnly("EKS cannot downgrade a cluster's Kubernetes version"),
                ),
                rule(
                    "spec.eks.nodeGroup.instanceType",
                    Immutable(
                        "an EKS node group's instance type cannot change in place; declare a new KubernetesRuntime and move workloads to it",
                    ),
                ),
                rule("spec.eks.nodeGroup.min", InPlace),
                rule("spec.eks.nodeGroup.max", InPlace),
                rule("spec.eks.nodeGroup.desired", InPlace),
                rule("spec.eks.tags", InPlace),
                rule("spec.driftPolicy", InPlace),
                rule(
                    "spec.existing",
                    Immutable(
                        "what runs on this runtime would stay on the old cluster; declare a new KubernetesRuntime and move workloads to it",
                    ),
                ),
            ];
            RULES
        }
        Builtin::ObjectStorageBucket => {
            const RULES: &[Rule] = &[
                rule("spec.account", Replace(NEW_BUCKET)),
                rule("spec.region", Replace(NEW_BUCKET)),
                rule("spec.versioning", InPlace),
                rule("spec.blockPublicAccess", InPlace),
                rule("spec.encryption", InPlace),
                rule("spec.tags", InPlace),
                rule("spec.driftPolicy", InPlace),
            ];
            RULES
        }
        Builtin::RelationalDatabase => {
            const RULES: &[Rule] = &[
                rule("spec.account", Replace(NEW_DATABASE)),
                rule("spec.region", Replace(NEW_DATABASE)),
                rule("spec.engine", Replace(NEW_DATABASE)),
                rule(
                    "spec.version",
                    UpgradeOnly("RDS cannot downgrade an instance's engine version"),
                ),
                rule("spec.sizeClass", InPlace),
                rule(
                    "spec.storageGb",
                    GrowOnly("RDS cannot shrink an instance's allocated storage"),
                ),
                rule("spec.backups", InPlace),
                rule("spec.database", Replace(NEW_DATABASE)),
                rule("spec.username", Replace(NEW_DATABASE)),
                rule("spec.applyImmediately", InPlace),
                rule("spec.tags", InPlace),
                rule("spec.driftPolicy", InPlace),
            ];
            RULES
        }
        Builtin::Workload => {
            const RULES: &[Rule] = &[
                rule("spec.runtime", Replace(MOVED)),
                rule("spec.namespace", Replace(MOVED)),
                rule("spec.manifests", InPlace),
                rule("spec.helm", InPlace),
                rule("spec.env", InPlace),
            ];
            RULES
        }
        Builtin::Gateway => {
            const RULES: &[Rule] = &[
                rule("spec.runtime", Replace(MOVED)),
                rule("spec.host", InPlace),
                rule("spec.tls", InPlace),
                rule("spec.ingressClass", InPlace),
            ];
            RULES
        }
        Builtin::DomainName => {
            const RULES: &[Rule] = &[
                rule("spec.runtime", Replace(MOVED)),
                rule("spec.account", Replace(MOVED)),
                rule("spec.zone", InPlace),
                rule("spec.name", InPlace),
                rule("spec.target", InPlace),
                rule("spec.ttl", InPlace),
            ];
            RULES
        }
        Builtin::Observability => {
            const RULES: &[Rule] = &[
                rule("spec.runtime", Replace(MOVED)),
                rule("spec.retentionDays", InPlace),
                rule("spec.logs", InPlace),
            ];
            RULES
        }
        // A definition: its instances' objects are planned (and classified) one by one.
        Builtin::Composition => {
            const RULES: &[Rule] = &[
                rule("spec.kind", InPlace),
                rule("spec.parameters", InPlace),
                rule("spec.resources", InPlace),
                rule("spec.outputs", InPlace),
            ];
            RULES
        }
    }
}

/// The rule covering `path` (a diff path like `spec.env[2].value`).
pub fn rule_for(kind: Builtin, path: &str) -> Option<&'static Rule> {
    rules(kind).iter().find(|r| {
        path == r.path
            || path
                .strip_prefix(r.path)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}

/// What an update of an object of `kind` with these field diffs does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    InPlace,
    /// Replaced because of these fields; `what` says what happens.
    Replace {
        fields: Vec<String>,
        what: &'static str,
    },
    /// Refused: the field and why.
    Refused {
        field: String,
        why: String,
    },
}

/// Classifies an update. A change no rule covers is refused (and the coverage test fails).
pub fn classify(kind: Builtin, diffs: &[FieldDiff]) -> Verdict {
    let mut replaced = Vec::new();
    let mut what = "";
    // Fields set or changed before fields that went with their parent (`eks` removed for
    // `existing`): a refusal names what the caller declared, not what it dropped with it.
    let mut ordered: Vec<&FieldDiff> = diffs.iter().collect();
    ordered.sort_by_key(|d| d.after.is_none());
    for d in ordered {
        let Some(r) = rule_for(kind, &d.path) else {
            return Verdict::Refused {
                field: d.path.clone(),
                why: "Qleet does not know how to change this field".into(),
            };
        };
        match r.change {
            InPlace => {}
            GrowOnly(why) => {
                let (a, b) = (
                    d.before.as_ref().and_then(Value::as_f64),
                    d.after.as_ref().and_then(Value::as_f64),
                );
                if let (Some(a), Some(b)) = (a, b)
                    && b < a
                {
                    return Verdict::Refused {
                        field: d.path.clone(),
                        why: format!("{why} (from {a} to {b})"),
                    };
                }
            }
            UpgradeOnly(why) => {
                let (a, b) = (
                    d.before.as_ref().and_then(Value::as_str),
                    d.after.as_ref().and_then(Value::as_str),
                );
                if let (Some(a), Some(b)) = (a, b)
                    && compare_versions(b, a) == Ordering::Less
                {
                    return Verdict::Refused {
                        field: d.path.clone(),
                        why: format!("{why} (from {a} to {b})"),
                    };
                }
            }
            Replace(w) => {
                if !replaced.contains(&r.path.to_owned()) {
                    replaced.push(r.path.to_owned());
                }
                what = w;
            }
            Immutable(why) => {
                return Verdict::Refused {
                    field: d.path.clone(),
                    why: why.into(),
                };
            }
        }
    }
    if replaced.is_empty() {
        Verdict::InPlace
    } else {
        Verdict::Replace {
            fields: replaced,
            what,
        }
    }
}

/// Dotted versions compared part by part as numbers (`16.10` > `16.9`).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parts(a).cmp(&parts(b))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::objects::apply::diff;
    use crate::objects::kinds::ALL;

    /// Every leaf of a JSON Schema's properties, as `spec.a.b` (maps and arrays are leaves).
    fn leaves(schema: &Value, root: &Value, path: &str, out: &mut Vec<String>) {
        let schema = match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.trim_start_matches("#/$defs/");
                &root["$defs"][name]
            }
            None => schema,
        };
        let mut found = false;
        for key in ["anyOf", "oneOf", "allOf"] {
            if let Some(options) = schema.get(key).and_then(Value::as_array) {
                for o in options {
                    if o.get("type") != Some(&json!("null")) {
                        leaves(o, root, path, out);
                        found = true;
                    }
                }
            }
        }
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                leaves(v, root, &format!("{path}.{k}"), out);
            }
            found = true;
        }
        if !found && !out.contains(&path.to_owned()) {
            out.push(path.to_owned());
        }
    }

    #[test]
    fn every_field_of_every_kind_has_a_rule() {
        for kind in ALL {
            let schema = kind.schema();
            let mut paths = Vec::new();
            leaves(&schema, &schema, "spec", &mut paths);
            assert!(paths.len() > 1, "{}: {paths:?}", kind.name());
            for p in paths {
                assert!(
                    rule_for(kind, &p).is_some(),
                    "{}: `{p}` has no rule in fields.rs",
                    kind.name()
                );
            }
        }
    }

    #[test]
    fn every_rule_names_a_field_of_its_kind() {
        for kind in ALL {
            let schema = kind.schema();
            let mut paths = Vec::new();
            leaves(&schema, &schema, "spec", &mut paths);
            for r in rules(kind) {
                assert!(
                    paths
                        .iter()
                        .any(|p| p == r.path || p.starts_with(&format!("{}.", r.path))),
                    "{}: rule `{}` names no field",
                    kind.name(),
                    r.path
                );
            }
        }
    }

    #[test]
    fn verdicts() {
        let db = |v: Value| {
            json!({"account": "AwsAccount/main", "engine": "postgres", "version": "16.4", "sizeClass": "db.t4g.micro", "storageGb": 20}).as_object().map(|o| {
            let mut o = o.clone();
            o.extend(v.as_object().cloned().unwrap_or_default());
            Value::Object(o)
        }).unwrap_or_default()
        };
        let verdict = |after: Value| {
            classify(
                Builtin::RelationalDatabase,
                &diff("spec", Some(&db(json!({}))), Some(&db(after))),
            )
        };
        assert_eq!(
            verdict(json!({"sizeClass": "db.t4g.small"})),
            Verdict::InPlace
        );
        assert_eq!(verdict(json!({"version": "16.10"})), Verdict::InPlace);
        assert!(matches!(
            verdict(json!({"version": "15.8"})),
            Verdict::Refused { field, .. } if field == "spec.version"
        ));
        assert!(matches!(
            verdict(json!({"storageGb": 10})),
            Verdict::Refused { field, .. } if field == "spec.storageGb"
        ));
        assert_eq!(verdict(json!({"storageGb": 30})), Verdict::InPlace);
        assert!(matches!(
            verdict(json!({"region": "us-east-2", "engine": "mysql"})),
            Verdict::Replace { fields, .. } if fields == ["spec.engine", "spec.region"]
        ));
        // A refusal wins over a replacement.
        assert!(matches!(
            verdict(json!({"region": "us-east-2", "storageGb": 10})),
            Verdict::Refused { .. }
        ));
    }
}
