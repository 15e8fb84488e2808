//! Declarative apply: multi-document YAML in, a plan out (create / update / delete / unchanged
//! per object, with field diffs), applied atomically unless it is a dry run. Everything is
//! checked before anything is written: shapes, names, references, kinds, cycles.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::compose;
use super::fields::{self, Verdict};
use super::kinds::{Builtin, CompositionSpec, parse_spec};
use super::refs::{self, ObjKey};
use super::rerun;
use super::store::{self, ObjectRow, Phase, select_objects};
use crate::error::ApiError;

/// One document of an apply.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub key: ObjKey,
    pub spec: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum, serde::Serialize)]
pub enum ChangeAction {
    Create,
    Update,
    /// An update the cloud cannot make in place: a new resource, the old one deleted once
    /// nothing uses it (see [`Replacement`]).
    Replace,
    Delete,
    Unchanged,
}

/// Why an object is replaced and what happens to it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Replacement {
    /// The fields whose change forces it, e.g. `spec.region`.
    pub fields: Vec<String>,
    /// What happens, data included.
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FieldDiff {
    pub path: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PlannedChange {
    pub action: ChangeAction,
    pub key: ObjKey,
    pub owner: Option<ObjKey>,
    pub diffs: Vec<FieldDiff>,
    pub replacement: Option<Replacement>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub applied: bool,
    pub changes: Vec<PlannedChange>,
}

/// What the caller asks for.
#[derive(Debug, Default)]
pub struct Request {
    pub manifests: Vec<Manifest>,
    /// Objects to delete by name (the `delete` mutation).
    pub deletions: Vec<ObjKey>,
    /// Delete top-level objects the manifests do not mention.
    pub prune: bool,
    pub dry_run: bool,
    /// Who asks ("user:<id>", "token:<id>", "admin"), recorded on what changes.
    pub actor: Option<String>,
    /// The organisation plan's limits, when they apply.
    pub limits: Option<crate::internal_token::Limits>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::invalid("yaml", message)
}

/// One object's document is at fault: `extensions.field` names the object and, when the
/// message starts with one, the field path, as `RelationalDatabase/db:spec.engine`.
fn invalid_object(key: &ObjKey, message: &str) -> ApiError {
    let is_path = |p: &str| {
        (p == "spec" || p.starts_with("spec.") || p.starts_with("spec[")) && !p.contains(' ')
    };
    match message.split_once(": ") {
        Some((path, rest)) if is_path(path) => ApiError::invalid(format!("{key}:{path}"), rest),
        _ => ApiError::invalid(key.to_string(), message),
    }
}

/// Largest YAML text of an apply, before aliases are expanded (see [`super::yaml`] for the
/// expanded limits).
pub const MAX_APPLY_TEXT_BYTES: usize = 2 * 1024 * 1024;

/// Parses the documents of an apply: each has `kind`, `metadata.name` and `spec`.
pub fn parse(yaml: &str) -> Result<Vec<Manifest>, ApiError> {
    if yaml.len() > MAX_APPLY_TEXT_BYTES {
        return Err(ApiError::TooLarge(
            "yaml: the apply's text is larger than 2 MiB".into(),
        ));
    }
    let docs = super::yaml::parse_documents(yaml).map_err(|e| match e {
        super::yaml::YamlError::Invalid(_) => invalid(e.to_string()),
        too_large => ApiError::TooLarge(format!("yaml: {too_large}")),
    })?;
    // YAML can spell a NUL (`"\0"`), which neither `text` nor `jsonb` can hold.
    if !docs.iter().all(qleet_common::text::json_storable) {
        return Err(invalid("text with a NUL character cannot be stored"));
    }
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, doc) in docs.into_iter().enumerate() {
        if doc.is_null() {
            continue;
        }
        let at = format!("document {}", i + 1);
        let map = doc
            .as_object()
            .ok_or_else(|| invalid(format!("{at}: expected a map with kind, metadata and spec")))?;
        if let Some(k) = map
            .keys()
            .find(|k| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "spec"))
        {
            return Err(invalid(format!(
                "{at}: unknown field `{k}` (expected apiVersion, kind, metadata, spec)"
            )));
        }
        let kind = map
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{at}: `kind` is required")))?;
        if !refs::is_kind_name(kind) {
            return Err(invalid(format!("{at}: `{kind}` is not a kind name")));
        }
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{at}: `metadata.name` is required")))?;
        refs::check_name(name).map_err(|e| invalid(format!("{at}: metadata.name: {e}")))?;
        if let Some(meta) = map.get("metadata").and_then(Value::as_object)
            && let Some(k) = meta.keys().find(|k| *k != "name")
        {
            return Err(invalid(format!(
                "{at}: metadata.{k}: unknown field (only `name`)"
            )));
        }
        let key = ObjKey::new(kind, name);
        if !seen.insert(key.clone()) {
            return Err(invalid(format!("{at}: {key} is declared twice")));
        }
        out.push(Manifest {
            key,
            spec: map.get("spec").cloned().unwrap_or(Value::Null),
        });
    }
    Ok(out)
}

/// An object as it will be after the apply.
#[derive(Debug, Clone)]
struct Planned {
    spec: Value,
    owner: Option<ObjKey>,
    /// Declared in this request (shows up in the plan even when unchanged).
    mentioned: bool,
}

/// Plans `request` against the current objects and, unless it is a dry run, applies it in one
/// transaction with the reconcile requests for everything it changed.
pub async fn apply(pool: &PgPool, request: Request) -> Result<Plan, ApiError> {
    let mut tx = pool.begin().await?;
    // One apply at a time: plans are made against a stable picture.
    sqlx::query!("select pg_advisory_xact_lock(7411001)")
        .execute(&mut *tx)
        .await?;
    let rows = select_objects!("from objects o")
        .fetch_all(&mut *tx)
        .await?;
    let current: BTreeMap<ObjKey, ObjectRow> = rows.into_iter().map(|r| (r.key(), r)).collect();
    let by_id: HashMap<Uuid, ObjKey> = current.values().map(|r| (r.id, r.key())).collect();

    let (world, deletions, order, found) = plan_world(&current, &by_id, &request)?;

    if let Some(limits) = &request.limits {
        // Growing past the limit is refused; shrinking or changing within it never is.
        let creating = world.keys().filter(|k| !current.contains_key(*k)).count();
        let alive = current
            .values()
            .filter(|r| r.deletion_requested_at.is_none())
            .count();
        if creating > 0 && world.len() > alive {
            limits.check_objects(world.len() as u64 - 1)?;
        }
    }

    let mut changes = Vec::new();
    let made = sqlx::query_scalar!(
        "select distinct object_id from agent_tasks
         where operation = 'ensure' and (attempts > 0 or state = 'succeeded')",
    )
    .fetch_all(&mut *tx)
    .await?;
    let regions = Regions {
        current: &current,
        world: &world,
        made: made.into_iter().collect(),
    };
    for key in &order {
        let p = &world[key];
        let Some(row) = current.get(key) else {
            changes.push(PlannedChange {
                action: ChangeAction::Create,
                key: key.clone(),
                owner: p.owner.clone(),
                diffs: diff("spec", None, Some(&p.spec)),
                replacement: None,
            });
            continue;
        };
        let diffs = diff("spec", Some(&row.spec), Some(&p.spec));
        let replacement = replacement(key, &diffs, &regions, row, p)?;
        let action = if replacement.is_some() {
            ChangeAction::Replace
        } else if diffs.is_empty() && owner_key(row, &by_id) == p.owner {
            if !p.mentioned {
                continue;
            }
            ChangeAction::Unchanged
        } else {
            ChangeAction::Update
        };
        changes.push(PlannedChange {
            action,
            key: key.clone(),
            owner: p.owner.clone(),
            diffs,
            replacement,
        });
    }
    // Objects this request does not name can still move: a new default region of their
    // account moves each one that does not set its own.
    for (key, p) in &world {
        if order.contains(key) {
            continue;
        }
        let Some(row) = current.get(key) else {
            continue;
        };
        if let Some(replacement) = replacement(key, &[], &regions, row, p)? {
            changes.push(PlannedChange {
                action: ChangeAction::Replace,
                key: key.clone(),
                owner: p.owner.clone(),
                diffs: Vec::new(),
                replacement: Some(replacement),
            });
        }
    }
    for key in &deletions {
        let row = &current[key];
        changes.push(PlannedChange {
            action: ChangeAction::Delete,
            key: key.clone(),
            owner: owner_key(row, &by_id),
            diffs: diff("spec", Some(&row.spec), None),
            replacement: None,
        });
    }

    if request.dry_run {
        tx.rollback().await?;
        return Ok(Plan {
            applied: false,
            changes,
        });
    }

    write(
        &mut tx,
        &current,
        &world,
        &found,
        &changes,
        request.actor.as_deref(),
    )
    .await?;
    store::crash_point("apply-before-commit");
    tx.commit().await?;
    Ok(Plan {
        applied: true,
        changes,
    })
}

/// What an update's consequences depend on: the accounts' default regions before and after
/// the apply, and which objects have had anything made in the cloud.
struct Regions<'a> {
    current: &'a BTreeMap<ObjKey, ObjectRow>,
    world: &'a World,
    made: BTreeSet<Uuid>,
}

/// The region an object's cloud resources live in: its own `region` (an EKS runtime's
/// `eks.region`), else its account's default region (`None` for kinds without one).
fn effective_region(
    kind: &str,
    spec: &Value,
    default_region: impl Fn(&ObjKey) -> Option<Value>,
) -> Option<Value> {
    let (own, account) = match kind {
        "ObjectStorageBucket" | "RelationalDatabase" => (spec.get("region"), spec.get("account")),
        "KubernetesRuntime" => (spec.pointer("/eks/region"), spec.pointer("/eks/account")),
        _ => return None,
    };
    own.filter(|r| !r.is_null()).cloned().or_else(|| {
        let account = ObjKey::parse(account?.as_str()?).ok()?;
        default_region(&account)
    })
}

/// What an update of `key` does, by the rules of [`fields`]: `None` in place, a replacement,
/// or a refusal naming the field. An object with nothing in the cloud yet is simply updated. A region is compared as it takes effect: setting `region` to
/// the account's default moves nothing; a new default region moves what does not set one.
fn replacement(
    key: &ObjKey,
    diffs: &[FieldDiff],
    regions: &Regions<'_>,
    row: &ObjectRow,
    planned: &Planned,
) -> Result<Option<Replacement>, ApiError> {
    let Some(builtin) = Builtin::parse(&key.kind) else {
        return Ok(None);
    };
    // Nothing exists yet (never picked up by an agent): any change is a plain update.
    if !regions.made.contains(&row.id) {
        return Ok(None);
    }
    let region_path = if key.kind == "KubernetesRuntime" {
        "spec.eks.region"
    } else {
        "spec.region"
    };
    let before = effective_region(&key.kind, &row.spec, |a| {
        regions
            .current
            .get(a)
            .map(|r| r.spec["defaultRegion"].clone())
    });
    let after = effective_region(&key.kind, &planned.spec, |a| {
        regions
            .world
            .get(a)
            .map(|p| p.spec["defaultRegion"].clone())
    });
    let others: Vec<FieldDiff> = diffs
        .iter()
        .filter(|d| before.is_none() || d.path != region_path)
        .cloned()
        .collect();
    let mut out = match fields::classify(builtin, &others) {
        Verdict::InPlace => None,
        Verdict::Replace { fields, what } => Some(Replacement {
            fields,
            what: what.to_owned(),
        }),
        Verdict::Refused { field, why } => {
            return Err(invalid_object(
                key,
                &format!("{field}: cannot be changed: {why}"),
            ));
        }
    };
    if before.is_some() && before != after {
        let what = match fields::rule_for(builtin, region_path).map(|r| r.change) {
            Some(fields::Change::Replace(what)) => what,
            _ => "a new resource replaces the old one",
        };
        let field = if diffs.iter().any(|d| d.path == region_path) {
            region_path.to_owned()
        } else {
            format!("{region_path} (its account's defaultRegion)")
        };
        let r = out.get_or_insert_with(|| Replacement {
            fields: Vec::new(),
            what: what.to_owned(),
        });
        r.fields.push(field);
    }
    Ok(out)
}

fn owner_key(row: &ObjectRow, by_id: &HashMap<Uuid, ObjKey>) -> Option<ObjKey> {
    row.owner_id.and_then(|o| by_id.get(&o).cloned())
}

type World = BTreeMap<ObjKey, Planned>;

/// Each planned object's references, found once while checking them.
type References = BTreeMap<ObjKey, Vec<refs::Reference>>;

/// The objects as they will be, the ones to delete, and the order to show them in.
fn plan_world(
    current: &BTreeMap<ObjKey, ObjectRow>,
    by_id: &HashMap<Uuid, ObjKey>,
    request: &Request,
) -> Result<(World, Vec<ObjKey>, Vec<ObjKey>, References), ApiError> {
    let mut world: World = current
        .iter()
        .filter(|(_, r)| r.deletion_requested_at.is_none())
        .map(|(k, r)| {
            (
                k.clone(),
                Planned {
                    spec: r.spec.clone(),
                    owner: owner_key(r, by_id),
                    mentioned: false,
                },
            )
        })
        .collect();
    let mut order: Vec<ObjKey> = Vec::new();

    // Composition definitions: current ones, replaced by declared ones.
    let mut defs: BTreeMap<String, (ObjKey, CompositionSpec)> = BTreeMap::new();
    for (k, p) in &world {
        if k.kind == "Composition"
            && let Ok(def) = parse_spec::<CompositionSpec>(&p.spec)
        {
            defs.insert(def.kind.clone(), (k.clone(), def));
        }
    }
    let mut declared_defs = BTreeSet::new();
    for m in &request.manifests {
        if m.key.kind == "Composition" {
            let (spec, _) = Builtin::Composition
                .validate(&m.spec)
                .map_err(|e| invalid_object(&m.key, &e))?;
            let def: CompositionSpec = parse_spec(&spec).map_err(invalid)?;
            if let Some((other, _)) = defs.get(&def.kind)
                && other != &m.key
            {
                return Err(invalid(format!(
                    "{}: spec.kind: {} is already defined by {other}",
                    m.key, def.kind
                )));
            }
            declared_defs.insert(def.kind.clone());
            defs.insert(def.kind.clone(), (m.key.clone(), def));
        }
    }

    // Declared objects.
    let mut deletions: BTreeSet<ObjKey> = BTreeSet::new();
    for m in &request.manifests {
        if let Some(row) = current.get(&m.key) {
            if row.deletion_requested_at.is_some() {
                return Err(ApiError::Conflict(format!(
                    "{} is being deleted; apply it again once it is gone",
                    m.key
                )));
            }
            if let Some(owner) = owner_key(row, by_id) {
                return Err(invalid(format!(
                    "{}: owned by {owner}; change {owner} instead",
                    m.key
                )));
            }
        }
        let spec = normalise(&m.key, &m.spec, &defs)?;
        world.insert(
            m.key.clone(),
            Planned {
                spec,
                owner: None,
                mentioned: true,
            },
        );
        order.push(m.key.clone());
    }

    // Explicit deletions and pruning.
    for key in &request.deletions {
        match current.get(key) {
            None => return Err(ApiError::NotFound(key.to_string())),
            Some(row) if owner_key(row, by_id).is_some() => {
                return Err(invalid(format!(
                    "{key} is owned by {}; delete that instead",
                    owner_key(row, by_id).unwrap_or_else(|| key.clone())
                )));
            }
            Some(row) if row.deletion_requested_at.is_some() => {}
            Some(_) => {
                deletions.insert(key.clone());
            }
        }
    }
    if request.prune {
        let declared: BTreeSet<&ObjKey> = request.manifests.iter().map(|m| &m.key).collect();
        for (k, p) in &world {
            if p.owner.is_none() && !declared.contains(k) {
                deletions.insert(k.clone());
            }
        }
    }
    for k in &deletions {
        world.remove(k);
    }

    // Expand every instance whose spec or definition is in this request; drop what the new
    // expansion no longer has and what deleted instances owned.
    let instances: Vec<ObjKey> = world
        .iter()
        .filter(|(k, p)| {
            Builtin::parse(&k.kind).is_none() && (p.mentioned || declared_defs.contains(&k.kind))
        })
        .map(|(k, _)| k.clone())
        .collect();
    for inst in &instances {
        let (_, def) = defs
            .get(&inst.kind)
            .ok_or_else(|| invalid(format!("{inst}: no Composition defines kind {}", inst.kind)))?;
        let params = world[inst].spec.as_object().cloned().unwrap_or_default();
        let expanded = compose::expand(def, &inst.name, &params)
            .map_err(|e| invalid(format!("{inst}: {e}")))?;
        let keep: BTreeSet<ObjKey> = expanded.iter().map(|e| e.key.clone()).collect();
        let old: Vec<ObjKey> = world
            .iter()
            .filter(|(k, p)| p.owner.as_ref() == Some(inst) && !keep.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            world.remove(&k);
            deletions.insert(k);
        }
        let pos = order
            .iter()
            .position(|k| k == inst)
            .map_or(order.len(), |p| p + 1);
        let mut at = pos;
        for e in expanded {
            let (spec, _) = Builtin::parse(&e.key.kind)
                .ok_or_else(|| invalid(format!("{inst}: {} is not a built-in kind", e.key)))?
                .validate(&e.spec)
                .map_err(|err| invalid(format!("{inst} → {}: {err}", e.key)))?;
            if let Some(existing) = world.get(&e.key)
                && existing.owner.as_ref() != Some(inst)
            {
                return Err(invalid(format!(
                    "{inst}: would create {}, which already exists{}",
                    e.key,
                    existing
                        .owner
                        .as_ref()
                        .map(|o| format!(" (owned by {o})"))
                        .unwrap_or_default()
                )));
            }
            world.insert(
                e.key.clone(),
                Planned {
                    spec,
                    owner: Some(inst.clone()),
                    mentioned: true,
                },
            );
            if !order.contains(&e.key) {
                order.insert(at, e.key.clone());
                at += 1;
            }
        }
    }
    // Owned objects of deleted instances go with them (transitively).
    loop {
        let orphans: Vec<ObjKey> = world
            .iter()
            .filter(|(_, p)| p.owner.as_ref().is_some_and(|o| !world.contains_key(o)))
            .map(|(k, _)| k.clone())
            .collect();
        if orphans.is_empty() {
            break;
        }
        for k in orphans {
            world.remove(&k);
            deletions.insert(k);
        }
    }
    // Instances whose kind lost its definition.
    for (k, _) in world.iter() {
        if Builtin::parse(&k.kind).is_none()
            && !defs
                .get(&k.kind)
                .is_some_and(|(d, _)| world.contains_key(d))
        {
            return Err(invalid(format!(
                "{k}: no Composition defines kind {} (was it deleted?)",
                k.kind
            )));
        }
    }

    let found = check_references(&world, &defs, &deletions)?;
    let deletions: Vec<ObjKey> = deletions.into_iter().collect();
    Ok((world, deletions, order, found))
}

/// Validates a declared spec for its kind and answers it normalised.
fn normalise(
    key: &ObjKey,
    spec: &Value,
    defs: &BTreeMap<String, (ObjKey, CompositionSpec)>,
) -> Result<Value, ApiError> {
    match Builtin::parse(&key.kind) {
        Some(b) => b
            .validate(spec)
            .map(|(v, _)| v)
            .map_err(|e| invalid_object(key, &e)),
        None => {
            let (_, def) = defs.get(&key.kind).ok_or_else(|| {
                invalid_object(key, &format!(
                    "unknown kind {} (built-in kinds: {}; or declare a Composition with spec.kind: {})",
                    key.kind,
                    super::kinds::ALL.iter().map(|b| b.name()).collect::<Vec<_>>().join(", "),
                    key.kind
                ))
            })?;
            compose::parameters(def, spec)
                .map(Value::Object)
                .map_err(|e| invalid_object(key, &e))
        }
    }
}

/// The objects an object's spec names, with where and how.
pub fn references(key: &ObjKey, spec: &Value) -> Result<Vec<refs::Reference>, String> {
    let Some(builtin) = Builtin::parse(&key.kind) else {
        return Ok(Vec::new());
    };
    if builtin == Builtin::Composition {
        return Ok(Vec::new());
    }
    let (_, typed) = builtin.validate(spec)?;
    let mut out: Vec<refs::Reference> = typed
        .into_iter()
        .map(|t| refs::Reference {
            target: t.target,
            output: None,
            path: t.path,
            expected_kind: Some(t.kind),
            interpolated: false,
        })
        .collect();
    refs::collect(spec, "spec", &mut out)?;
    Ok(out)
}

fn declared_outputs(
    key: &ObjKey,
    defs: &BTreeMap<String, (ObjKey, CompositionSpec)>,
) -> Vec<(String, bool)> {
    match Builtin::parse(&key.kind) {
        Some(b) => b
            .outputs()
            .iter()
            .map(|o| (o.name.to_owned(), o.secret))
            .collect(),
        None => defs
            .get(&key.kind)
            .map(|(_, d)| d.outputs.keys().map(|k| (k.clone(), false)).collect())
            .unwrap_or_default(),
    }
}

/// Every reference must name an existing object of the right kind and one of its outputs;
/// secrets only reach a workload's env; nothing deleted may still be used; no cycles.
fn check_references(
    world: &World,
    defs: &BTreeMap<String, (ObjKey, CompositionSpec)>,
    deletions: &BTreeSet<ObjKey>,
) -> Result<References, ApiError> {
    let mut all = References::new();
    let mut edges: BTreeMap<&ObjKey, BTreeSet<ObjKey>> = BTreeMap::new();
    for (key, p) in world {
        let found = references(key, &p.spec).map_err(|e| invalid_object(key, &e))?;
        for r in &found {
            let at = r.path.as_str();
            if !world.contains_key(&r.target) {
                return Err(if deletions.contains(&r.target) {
                    invalid(format!(
                        "{} is used by {key} ({}); delete or change {key} too",
                        r.target, r.path
                    ))
                } else {
                    invalid_object(key, &format!("{at}: {} does not exist", r.target))
                });
            }
            if let Some(expected) = r.expected_kind
                && r.target.kind != expected
            {
                return Err(invalid_object(
                    key,
                    &format!("{at}: must name a {expected}, not {}", r.target),
                ));
            }
            if let Some(output) = &r.output {
                let outputs = declared_outputs(&r.target, defs);
                match outputs.iter().find(|(n, _)| n == output) {
                    None => {
                        return Err(invalid_object(
                            key,
                            &format!(
                                "{at}: {} has no output `{output}` (it has: {})",
                                r.target,
                                outputs
                                    .iter()
                                    .map(|(n, _)| n.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    }
                    Some((_, true)) if r.interpolated || !r.path.starts_with("spec.env[") => {
                        return Err(invalid_object(
                            key,
                            &format!(
                                "{at}: {}.{output} is a secret; bind it through a Workload's spec.env valueFrom, which gives the container a Kubernetes Secret reference",
                                r.target
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
            if r.target == *key {
                return Err(invalid_object(
                    key,
                    &format!("{at}: an object cannot depend on itself"),
                ));
            }
            edges.entry(key).or_default().insert(r.target.clone());
        }
        all.insert(key.clone(), found);
    }
    // Depth-first search for a cycle, reporting its path.
    let mut state: BTreeMap<&ObjKey, u8> = BTreeMap::new();
    fn visit<'a>(
        k: &'a ObjKey,
        edges: &'a BTreeMap<&'a ObjKey, BTreeSet<ObjKey>>,
        state: &mut BTreeMap<&'a ObjKey, u8>,
        path: &mut Vec<&'a ObjKey>,
    ) -> Option<String> {
        match state.get(k) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|p| *p == k).unwrap_or(0);
                let mut names: Vec<String> = path[start..].iter().map(|p| p.to_string()).collect();
                names.push(k.to_string());
                return Some(names.join(" → "));
            }
            _ => {}
        }
        state.insert(k, 1);
        path.push(k);
        if let Some(next) = edges.get(k) {
            for n in next {
                if let Some(cycle) = visit(n, edges, state, path) {
                    return Some(cycle);
                }
            }
        }
        path.pop();
        state.insert(k, 2);
        None
    }
    for k in world.keys() {
        let mut path = Vec::new();
        if let Some(cycle) = visit(k, &edges, &mut state, &mut path) {
            return Err(invalid(format!("dependency cycle: {cycle}")));
        }
    }
    Ok(all)
}

/// Field-level differences between two specs, paths like `spec.env[0].value`.
pub fn diff(path: &str, before: Option<&Value>, after: Option<&Value>) -> Vec<FieldDiff> {
    let mut out = Vec::new();
    diff_into(path, before, after, &mut out);
    out
}

fn diff_into(path: &str, before: Option<&Value>, after: Option<&Value>, out: &mut Vec<FieldDiff>) {
    match (before, after) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                diff_into(&format!("{path}.{k}"), a.get(k), b.get(k), out);
            }
        }
        (Some(Value::Object(a)), None) | (None, Some(Value::Object(a))) if !a.is_empty() => {
            let removed = before.is_some();
            for (k, v) in a {
                let p = format!("{path}.{k}");
                if removed {
                    diff_into(&p, Some(v), None, out);
                } else {
                    diff_into(&p, None, Some(v), out);
                }
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_into(&format!("{path}[{i}]"), Some(x), Some(y), out);
            }
        }
        (a, b) if a != b => out.push(FieldDiff {
            path: path.to_owned(),
            before: a.cloned(),
            after: b.cloned(),
        }),
        _ => {}
    }
}

/// The audit action and line of a planned change, if it changes anything.
fn audited(
    c: &PlannedChange,
    current: &BTreeMap<ObjKey, ObjectRow>,
) -> Option<(&'static str, String)> {
    Some(match c.action {
        ChangeAction::Create => ("object.create", format!("{} declared by apply", c.key)),
        ChangeAction::Update => {
            let fields: Vec<&str> = c.diffs.iter().map(|d| d.path.as_str()).collect();
            ("object.update", format!("changed {}", fields.join(", ")))
        }
        ChangeAction::Replace => (
            "object.replace",
            c.replacement.as_ref().map_or_else(String::new, |r| {
                format!("{} changed: {}", r.fields.join(", "), r.what)
            }),
        ),
        ChangeAction::Delete => ("object.delete", format!("deletion of {} requested", c.key)),
        ChangeAction::Unchanged => {
            // Re-applying a FAILED object unchanged retries it (see below).
            current
                .get(&c.key)
                .filter(|r| r.phase() == Phase::Failed && r.deletion_requested_at.is_none())?;
            (
                "object.retry",
                "re-applied unchanged while FAILED".to_owned(),
            )
        }
    })
}

/// Writes the plan: rows, edges, events and the reconcile requests, in `conn`'s transaction.
async fn write(
    conn: &mut PgConnection,
    current: &BTreeMap<ObjKey, ObjectRow>,
    world: &World,
    found: &References,
    changes: &[PlannedChange],
    actor: Option<&str>,
) -> Result<(), ApiError> {
    let mut ids: BTreeMap<ObjKey, Uuid> = current.iter().map(|(k, r)| (k.clone(), r.id)).collect();
    for c in changes {
        if c.action == ChangeAction::Create {
            ids.insert(c.key.clone(), Uuid::new_v4());
        }
    }
    let mut touched = Vec::new();
    let who = actor.unwrap_or(crate::audit::SYSTEM);
    let mut recorded = 0usize;
    // Owners first, so owned rows can point at them.
    let mut ordered: Vec<&PlannedChange> = changes.iter().collect();
    ordered.sort_by_key(|c| c.owner.is_some());
    for c in ordered {
        let id = ids[&c.key];
        if let Some((action, detail)) = audited(c, current) {
            crate::audit::record(
                &mut *conn,
                crate::audit::Record {
                    actor: who,
                    action,
                    object: Some((id, &c.key)),
                    detail: &detail,
                    diff: serde_json::to_value(&c.diffs).unwrap_or_default(),
                },
            )
            .await?;
            recorded += 1;
        }
        match c.action {
            ChangeAction::Create => {
                let p = &world[&c.key];
                let owner = p.owner.as_ref().map(|o| ids[o]);
                let outputs = initial_outputs(&c.key);
                sqlx::query!(
                    "insert into objects (id, kind, name, spec, outputs, owner_id, changed_by)
                     values ($1, $2, $3, $4, $5, $6, $7)",
                    id,
                    &c.key.kind,
                    &c.key.name,
                    &p.spec,
                    &outputs,
                    owner,
                    actor,
                )
                .execute(&mut *conn)
                .await?;
                store::event(&mut *conn, id, false, "Created", "declared by apply").await?;
                touched.push(id);
            }
            ChangeAction::Update => {
                let p = &world[&c.key];
                sqlx::query!(
                    "update objects set spec = $2, generation = generation + 1, updated_at = now(),
                       changed_by = $3
                     where id = $1",
                    id,
                    &p.spec,
                    actor,
                )
                .execute(&mut *conn)
                .await?;
                let fields: Vec<&str> = c.diffs.iter().map(|d| d.path.as_str()).collect();
                store::event(
                    &mut *conn,
                    id,
                    false,
                    "Updated",
                    &format!("changed {}", fields.join(", ")),
                )
                .await?;
                touched.push(id);
            }
            ChangeAction::Replace => {
                let p = &world[&c.key];
                let incarnation = sqlx::query_scalar!(
                    "update objects set spec = $2, generation = generation + 1, updated_at = now(),
                       changed_by = $3, incarnation = incarnation + 1
                     where id = $1
                     returning incarnation",
                    id,
                    &p.spec,
                    actor,
                )
                .fetch_one(&mut *conn)
                .await?;
                let why = c.replacement.as_ref().map_or_else(String::new, |r| {
                    format!("{} changed: {}", r.fields.join(", "), r.what)
                });
                retire(&mut *conn, id, incarnation - 1, &why).await?;
                store::event(&mut *conn, id, false, "ReplacementStarted", &why).await?;
                touched.push(id);
            }
            ChangeAction::Delete => {
                sqlx::query!(
                    "update objects set deletion_requested_at = now(), updated_at = now(),
                       status = jsonb_build_object('phase', 'Deleting', 'message', 'deletion requested')
                     where id = $1",
                    id,
                )
                .execute(&mut *conn)
                .await?;
                store::event(
                    &mut *conn,
                    id,
                    false,
                    "DeletionRequested",
                    "deletion requested",
                )
                .await?;
                touched.push(id);
            }
            ChangeAction::Unchanged => {
                // Re-applying a FAILED object unchanged is how a pipeline asks for another try.
                if let Some(row) = current
                    .get(&c.key)
                    .filter(|r| r.phase() == Phase::Failed && r.deletion_requested_at.is_none())
                {
                    let by = actor.unwrap_or("apply");
                    rerun::restart(
                        &mut *conn,
                        row.clone(),
                        "RetryRequested",
                        &format!("retry requested by {by} (re-applied unchanged)"),
                    )
                    .await?;
                }
            }
        }
    }
    if recorded == 0 {
        crate::audit::record(
            &mut *conn,
            crate::audit::Record {
                actor: who,
                action: "apply",
                object: None,
                detail: &format!("applied; nothing changed ({} objects)", changes.len()),
                diff: serde_json::json!([]),
            },
        )
        .await?;
    }
    // Dependency edges of everything created or updated. An object whose dependencies are not
    // all Ready yet is marked Waiting instead of queued: each of them queues it when it becomes
    // Ready, so an apply of a large graph does not fill the queue with work that can only wait.
    let created: BTreeSet<&ObjKey> = changes
        .iter()
        .filter(|c| c.action == ChangeAction::Create)
        .map(|c| &c.key)
        .collect();
    let mut waiting: Vec<Uuid> = Vec::new();
    for c in changes {
        if !matches!(
            c.action,
            ChangeAction::Create | ChangeAction::Update | ChangeAction::Replace
        ) {
            continue;
        }
        let id = ids[&c.key];
        let found = found.get(&c.key).map(Vec::as_slice).unwrap_or_default();
        let unready: BTreeSet<String> = found
            .iter()
            .filter(|r| {
                created.contains(&r.target)
                    || current
                        .get(&r.target)
                        .is_none_or(|row| row.phase() != super::store::Phase::Ready)
            })
            .map(|r| r.target.to_string())
            .collect();
        if !unready.is_empty() {
            let names: Vec<String> = unready.into_iter().collect();
            sqlx::query!(
                "update objects set status = jsonb_build_object('phase', 'Waiting', 'message', $2::text)
                 where id = $1",
                id,
                format!("waiting for {}", names.join(", ")),
            )
            .execute(&mut *conn)
            .await?;
            waiting.push(id);
        }
        let targets: BTreeSet<Uuid> = found
            .iter()
            .filter_map(|r| ids.get(&r.target).copied())
            .collect();
        sqlx::query!("delete from object_edges where dependent = $1", id)
            .execute(&mut *conn)
            .await?;
        let targets: Vec<Uuid> = targets.into_iter().collect();
        sqlx::query!(
            "insert into object_edges (dependent, dependency) select $1, unnest($2::uuid[])",
            id,
            &targets,
        )
        .execute(&mut *conn)
        .await?;
    }
    // Owners aggregate their objects' state: tell them too.
    let owners: Vec<Uuid> = changes
        .iter()
        .filter_map(|c| c.owner.as_ref().and_then(|o| ids.get(o).copied()))
        .collect();
    touched.extend(owners);
    touched.retain(|id| !waiting.contains(id));
    store::enqueue(&mut *conn, &touched).await?;
    Ok(())
}

/// Sets the object's current resource aside when it is replaced: what the agent last worked on
/// (if it ever did) is recorded, to be deleted once the new incarnation is Ready and its
/// dependents have re-rolled (or when the object is deleted). Unfinished work on the old one
/// stops.
async fn retire(
    conn: &mut PgConnection,
    id: Uuid,
    incarnation: i32,
    why: &str,
) -> Result<(), ApiError> {
    sqlx::query!(
        "insert into retired_resources (id, object_id, incarnation, payload, input_hash, reason)
         select $1, t.object_id, $3, t.payload, t.input_hash, $4 from agent_tasks t
         where t.object_id = $2 and t.operation = 'ensure' and (t.attempts > 0 or t.state = 'succeeded')
         order by t.created_at desc limit 1",
        Uuid::new_v4(),
        id,
        incarnation,
        why,
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "update agent_tasks set state = 'superseded', lease_id = null
         where object_id = $1 and operation = 'ensure' and state in ('queued', 'leased')",
        id,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Outputs an object has from birth: an AWS account's ExternalId, generated here and never
/// taken from the caller.
fn initial_outputs(key: &ObjKey) -> Value {
    if key.kind == "AwsAccount" {
        let secret = qleet_common::secrets::random_secret();
        json!({ "externalId": format!("qleet-{secret}") })
    } else {
        Value::Object(Map::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_need_kind_and_name_and_are_unique() {
        let m = parse(
            "kind: ObjectStorageBucket\nmetadata: {name: a}\nspec: {account: AwsAccount/x}\n---\n",
        )
        .expect("parse");
        assert_eq!(m.len(), 1);
        let err = parse("kind: X\nmetadata: {name: a}\n---\nkind: X\nmetadata: {name: a}\n")
            .expect_err("dup");
        assert_eq!(err.to_string(), "yaml: document 2: X/a is declared twice");
        let err = parse("metadata: {name: a}\n").expect_err("kind");
        assert_eq!(err.to_string(), "yaml: document 1: `kind` is required");
        let err = parse("kind: X\nmetadata: {name: A}\n").expect_err("name");
        assert!(
            err.to_string()
                .starts_with("yaml: document 1: metadata.name:"),
            "{err}"
        );
    }

    #[test]
    fn diffs_name_each_changed_field() {
        let a = json!({"a": 1, "b": {"c": [1, 2]}, "d": "x"});
        let b = json!({"a": 1, "b": {"c": [1, 3]}, "e": true});
        let d = diff("spec", Some(&a), Some(&b));
        let paths: Vec<_> = d.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, vec!["spec.b.c[1]", "spec.d", "spec.e"]);
        assert_eq!(d[0].before, Some(json!(2)));
        assert_eq!(d[0].after, Some(json!(3)));
        assert_eq!(d[1].after, None);
    }
}
