//! The objects part of the control plane's GraphQL API: `objects`, `object`, `graph`,
//! `apply`, `delete` and the `objectChanges` subscription. Resolvers are thin; the rules live
//! in [`super::apply`] and [`super::reconcile`].

use std::collections::HashMap;

use async_graphql::{ComplexObject, Context, Json, Object, SimpleObject, Subscription};
use futures::Stream;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::apply::{self, ChangeAction, Request};
use super::refs::ObjKey;
use super::rerun::{Rerun, rerun};
use super::store::{ObjectRow, Phase, select_objects};
use crate::caller::Caller;
use crate::error::{ApiError, GqlResult as _};
use qleet_protocol::Role;

fn caller<'a>(ctx: &Context<'a>) -> &'a Caller {
    ctx.data_unchecked::<Caller>()
}

fn require(ctx: &Context<'_>, role: Role) -> Result<(), ApiError> {
    caller(ctx).require(role, "this")
}

/// A reference to an object, with its phase.
#[derive(SimpleObject, Clone)]
pub struct ObjectRef {
    pub kind: String,
    pub name: String,
    pub phase: Option<Phase>,
}

#[derive(SimpleObject)]
pub struct Condition {
    #[graphql(name = "type")]
    pub ty: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
    pub last_transition_at: chrono::DateTime<chrono::Utc>,
}

#[derive(SimpleObject)]
pub struct ObjectEvent {
    pub at: chrono::DateTime<chrono::Utc>,
    #[graphql(name = "type")]
    pub ty: String,
    pub reason: String,
    pub message: String,
}

/// An object: what was declared, what was observed, and how it connects.
#[derive(SimpleObject)]
#[graphql(complex, name = "Object")]
pub struct ObjectView {
    pub id: Uuid,
    pub kind: String,
    pub name: String,
    pub phase: Phase,
    pub message: Option<String>,
    pub spec: Json<Value>,
    pub status: Json<Value>,
    pub outputs: Json<Value>,
    /// The spec with references resolved: what the agent is asked to make (null until the
    /// dependencies are ready).
    pub rendered: Option<Json<Value>>,
    pub generation: i64,
    pub observed_generation: i64,
    pub deleting: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    #[graphql(skip)]
    owner_id: Option<Uuid>,
    #[graphql(skip)]
    conditions_raw: Value,
}

impl From<ObjectRow> for ObjectView {
    fn from(r: ObjectRow) -> Self {
        ObjectView {
            phase: r.phase(),
            message: r
                .status
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned),
            id: r.id,
            kind: r.kind,
            name: r.name,
            spec: Json(r.spec),
            status: Json(r.status),
            outputs: Json(r.outputs),
            rendered: r.rendered.map(Json),
            generation: r.generation,
            observed_generation: r.observed_generation,
            deleting: r.deletion_requested_at.is_some(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            owner_id: r.owner_id,
            conditions_raw: r.conditions,
        }
    }
}

/// An object another one points at, as read: its key and status.
struct RefRow {
    kind: String,
    name: String,
    status: Value,
}

impl From<RefRow> for ObjectRef {
    fn from(r: RefRow) -> Self {
        ObjectRef {
            phase: Some(Phase::parse(&r.status)),
            kind: r.kind,
            name: r.name,
        }
    }
}

/// The objects a checked `RefRow` query finds.
fn refs(rows: Vec<RefRow>) -> Vec<ObjectRef> {
    rows.into_iter().map(ObjectRef::from).collect()
}

#[ComplexObject]
impl ObjectView {
    async fn conditions(&self) -> Vec<Condition> {
        self.conditions_raw
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| {
                        Some(Condition {
                            ty: c["type"].as_str()?.to_owned(),
                            status: c["status"].as_bool()?,
                            reason: c["reason"].as_str().unwrap_or_default().to_owned(),
                            message: c["message"].as_str().unwrap_or_default().to_owned(),
                            last_transition_at: serde_json::from_value(
                                c["lastTransitionAt"].clone(),
                            )
                            .ok()?,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Newest first.
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 50)] last: i32,
    ) -> async_graphql::Result<Vec<ObjectEvent>> {
        let pool = ctx.data_unchecked::<PgPool>();
        sqlx::query_as!(
            ObjectEvent,
            r#"select at, type as ty, reason, message from object_events where object_id = $1
             order by id desc limit $2"#,
            self.id,
            i64::from(last.clamp(1, 500)),
        )
        .fetch_all(pool)
        .await
        .map_err(ApiError::from)
        .gql()
    }

    /// The objects it uses.
    async fn dependencies(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ObjectRef>> {
        let rows = sqlx::query_as!(
            RefRow,
            "select o.kind, o.name, o.status from object_edges e join objects o on o.id = e.dependency
             where e.dependent = $1 order by o.kind, o.name",
            self.id,
        )
        .fetch_all(ctx.data_unchecked::<PgPool>())
        .await
        .map_err(ApiError::from)
        .gql()?;
        Ok(refs(rows))
    }

    /// The objects that use it.
    async fn dependents(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ObjectRef>> {
        let rows = sqlx::query_as!(
            RefRow,
            "select o.kind, o.name, o.status from object_edges e join objects o on o.id = e.dependent
             where e.dependency = $1 order by o.kind, o.name",
            self.id,
        )
        .fetch_all(ctx.data_unchecked::<PgPool>())
        .await
        .map_err(ApiError::from)
        .gql()?;
        Ok(refs(rows))
    }

    /// The composition instance it was expanded from.
    async fn owner(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<ObjectRef>> {
        let Some(owner) = self.owner_id else {
            return Ok(None);
        };
        let row = sqlx::query_as!(
            RefRow,
            "select kind, name, status from objects where id = $1",
            owner,
        )
        .fetch_optional(ctx.data_unchecked::<PgPool>())
        .await
        .map_err(ApiError::from)
        .gql()?;
        Ok(row.map(ObjectRef::from))
    }
}

#[derive(SimpleObject)]
pub struct FieldDiff {
    /// e.g. `spec.versioning`.
    pub path: String,
    pub before: Option<Json<Value>>,
    pub after: Option<Json<Value>>,
}

#[derive(SimpleObject)]
pub struct PlannedChange {
    pub action: ChangeAction,
    pub kind: String,
    pub name: String,
    pub owner: Option<ObjectRef>,
    pub diffs: Vec<FieldDiff>,
    /// Set when the action is REPLACE: the fields that force it and what happens.
    pub replacement: Option<Replacement>,
}

/// A change the cloud cannot make in place.
#[derive(SimpleObject)]
pub struct Replacement {
    /// The fields whose change forces a new resource, e.g. `spec.region`.
    pub fields: Vec<String>,
    /// What happens to the old resource and its data.
    pub what: String,
}

#[derive(SimpleObject)]
pub struct PlanSummary {
    pub create: i32,
    pub update: i32,
    pub replace: i32,
    pub delete: i32,
    pub unchanged: i32,
}

#[derive(SimpleObject)]
pub struct Plan {
    /// False for a dry run.
    pub applied: bool,
    pub changes: Vec<PlannedChange>,
    pub summary: PlanSummary,
}

impl From<apply::Plan> for Plan {
    fn from(p: apply::Plan) -> Self {
        let count = |a| p.changes.iter().filter(|c| c.action == a).count() as i32;
        Plan {
            applied: p.applied,
            summary: PlanSummary {
                create: count(ChangeAction::Create),
                update: count(ChangeAction::Update),
                replace: count(ChangeAction::Replace),
                delete: count(ChangeAction::Delete),
                unchanged: count(ChangeAction::Unchanged),
            },
            changes: p
                .changes
                .into_iter()
                .map(|c| PlannedChange {
                    action: c.action,
                    kind: c.key.kind,
                    name: c.key.name,
                    owner: c.owner.map(|o| ObjectRef {
                        kind: o.kind,
                        name: o.name,
                        phase: None,
                    }),
                    diffs: c
                        .diffs
                        .into_iter()
                        .map(|d| FieldDiff {
                            path: d.path,
                            before: d.before.map(Json),
                            after: d.after.map(Json),
                        })
                        .collect(),
                    replacement: c.replacement.map(|r| Replacement {
                        fields: r.fields,
                        what: r.what,
                    }),
                })
                .collect(),
        }
    }
}

#[derive(SimpleObject)]
pub struct GraphEdge {
    /// The dependent.
    pub from: ObjectRef,
    /// The dependency.
    pub to: ObjectRef,
}

#[derive(SimpleObject)]
pub struct Graph {
    pub nodes: Vec<ObjectRef>,
    pub edges: Vec<GraphEdge>,
}

/// A built-in kind, for the field reference.
#[derive(SimpleObject)]
pub struct KindInfo {
    pub name: String,
    /// The JSON Schema of its spec, derived from the spec's Rust type.
    pub schema: Json<Value>,
    /// What changing each field does.
    pub fields: Vec<FieldRule>,
    pub outputs: Vec<KindOutput>,
}

/// What changing a field (and everything under it) does.
#[derive(SimpleObject)]
pub struct FieldRule {
    /// e.g. `spec.region`.
    pub path: String,
    pub change: FieldChange,
    /// For a replacement, what happens; for a refusal, why (and what to do instead).
    pub note: Option<String>,
}

#[derive(async_graphql::Enum, Clone, Copy, PartialEq, Eq)]
pub enum FieldChange {
    /// Changed in place.
    InPlace,
    /// Changed in place when it grows; shrinking is refused.
    GrowOnly,
    /// Changed in place when the version goes up; going down is refused.
    UpgradeOnly,
    /// A new resource replaces the old one.
    Replace,
    /// Refused.
    Immutable,
}

#[derive(SimpleObject)]
pub struct KindOutput {
    pub name: String,
    /// A reference to a secret in the customer's account, never its value.
    pub secret: bool,
    /// Read back from the cloud by the agent (the others the control plane computes).
    pub observed: bool,
}

#[derive(Default)]
pub struct ObjectsQuery;

#[Object]
impl ObjectsQuery {
    /// The built-in kinds: each one's spec schema, what changing each field does, its outputs.
    async fn kinds(&self) -> Vec<KindInfo> {
        use super::fields::Change;
        super::kinds::ALL
            .into_iter()
            .map(|kind| KindInfo {
                name: kind.name().to_owned(),
                schema: Json(kind.schema()),
                fields: super::fields::rules(kind)
                    .iter()
                    .map(|r| {
                        let (change, note) = match r.change {
                            Change::InPlace => (FieldChange::InPlace, None),
                            Change::GrowOnly(n) => (FieldChange::GrowOnly, Some(n)),
                            Change::UpgradeOnly(n) => (FieldChange::UpgradeOnly, Some(n)),
                            Change::Replace(n) => (FieldChange::Replace, Some(n)),
                            Change::Immutable(n) => (FieldChange::Immutable, Some(n)),
                        };
                        FieldRule {
                            path: r.path.to_owned(),
                            change,
                            note: note.map(str::to_owned),
                        }
                    })
                    .collect(),
                outputs: kind
                    .outputs()
                    .iter()
                    .map(|o| KindOutput {
                        name: o.name.to_owned(),
                        secret: o.secret,
                        observed: o.from_agent,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Every object (or those of one kind), by kind and name.
    async fn objects(
        &self,
        ctx: &Context<'_>,
        kind: Option<String>,
    ) -> async_graphql::Result<Vec<ObjectView>> {
        let pool = ctx.data_unchecked::<PgPool>();
        let rows = select_objects!(
            "from objects o where ($1::text is null or o.kind = $1) order by o.kind, o.name",
            kind,
        )
        .fetch_all(pool)
        .await
        .map_err(ApiError::from)
        .gql()?;
        Ok(rows.into_iter().map(ObjectView::from).collect())
    }

    /// One object; null when there is none.
    async fn object(
        &self,
        ctx: &Context<'_>,
        kind: String,
        name: String,
    ) -> async_graphql::Result<Option<ObjectView>> {
        let pool = ctx.data_unchecked::<PgPool>();
        let row = select_objects!(
            "from objects o where o.kind = $1 and o.name = $2",
            kind,
            name
        )
        .fetch_optional(pool)
        .await
        .map_err(ApiError::from)
        .gql()?;
        Ok(row.map(ObjectView::from))
    }

    /// The dependency graph: every object and every "uses" edge.
    async fn graph(&self, ctx: &Context<'_>) -> async_graphql::Result<Graph> {
        let pool = ctx.data_unchecked::<PgPool>();
        let nodes = sqlx::query!("select id, kind, name, status from objects order by kind, name")
            .fetch_all(pool)
            .await
            .map_err(ApiError::from)
            .gql()?;
        let edges = sqlx::query!("select dependent, dependency from object_edges")
            .fetch_all(pool)
            .await
            .map_err(ApiError::from)
            .gql()?;
        let by_id: HashMap<Uuid, ObjectRef> = nodes
            .iter()
            .map(|n| {
                (
                    n.id,
                    ObjectRef {
                        kind: n.kind.clone(),
                        name: n.name.clone(),
                        phase: Some(Phase::parse(&n.status)),
                    },
                )
            })
            .collect();
        let mut edges: Vec<GraphEdge> = edges
            .into_iter()
            .filter_map(|e| {
                Some(GraphEdge {
                    from: by_id.get(&e.dependent)?.clone(),
                    to: by_id.get(&e.dependency)?.clone(),
                })
            })
            .collect();
        edges.sort_by(|a, b| {
            (&a.from.kind, &a.from.name, &a.to.kind, &a.to.name).cmp(&(
                &b.from.kind,
                &b.from.name,
                &b.to.kind,
                &b.to.name,
            ))
        });
        Ok(Graph {
            nodes: nodes
                .into_iter()
                .filter_map(|n| by_id.get(&n.id).cloned())
                .collect(),
            edges,
        })
    }
}

#[derive(Default)]
pub struct ObjectsMutation;

#[Object]
impl ObjectsMutation {
    /// Applies a multi-document YAML of objects: answers the plan (create / update / delete /
    /// unchanged, with field diffs) and, unless `dryRun`, applies it atomically. With `prune`,
    /// top-level objects the YAML does not mention are deleted.
    async fn apply(
        &self,
        ctx: &Context<'_>,
        yaml: String,
        #[graphql(default = false)] dry_run: bool,
        #[graphql(default = false)] prune: bool,
    ) -> async_graphql::Result<Plan> {
        require(ctx, if dry_run { Role::Viewer } else { Role::Member }).gql()?;
        let manifests = apply::parse(&yaml).gql()?;
        let plan = apply::apply(
            ctx.data_unchecked::<PgPool>(),
            Request {
                manifests,
                deletions: Vec::new(),
                prune,
                dry_run,
                limits: caller(ctx).limits().cloned(),
                actor: Some(caller(ctx).actor()),
            },
        )
        .await
        .gql()?;
        Ok(plan.into())
    }

    /// Deletes an object (and what a composition instance owns). Refused while other objects
    /// use it; the deletion itself waits for the agent to clean up.
    async fn delete(
        &self,
        ctx: &Context<'_>,
        kind: String,
        name: String,
    ) -> async_graphql::Result<Plan> {
        require(ctx, Role::Member).gql()?;
        let key = ObjKey::parse(&format!("{kind}/{name}"))
            .map_err(|e| ApiError::invalid("name", e))
            .gql()?;
        let plan = apply::apply(
            ctx.data_unchecked::<PgPool>(),
            Request {
                deletions: vec![key],
                actor: Some(caller(ctx).actor()),
                ..Request::default()
            },
        )
        .await
        .gql()?;
        Ok(plan.into())
    }

    /// Gives a FAILED object a fresh attempt: its agent work is queued again from the first
    /// attempt (refused with CONFLICT for an object in any other phase). Answers the object.
    async fn retry(
        &self,
        ctx: &Context<'_>,
        kind: String,
        name: String,
    ) -> async_graphql::Result<ObjectView> {
        rerun_object(ctx, kind, name, Rerun::Retry).await
    }

    /// Has the agent check a READY or FAILED object's cloud resources again: what was deleted
    /// behind Qleet's back is made again and the outputs are read back from the cloud. Refused
    /// (INVALID_INPUT) for kinds with nothing in the cloud. Answers the object.
    async fn refresh(
        &self,
        ctx: &Context<'_>,
        kind: String,
        name: String,
    ) -> async_graphql::Result<ObjectView> {
        rerun_object(ctx, kind, name, Rerun::Refresh).await
    }
}

async fn rerun_object(
    ctx: &Context<'_>,
    kind: String,
    name: String,
    which: Rerun,
) -> async_graphql::Result<ObjectView> {
    require(ctx, Role::Member).gql()?;
    let key = ObjKey::parse(&format!("{kind}/{name}"))
        .map_err(|e| ApiError::invalid("name", e))
        .gql()?;
    let pool = ctx.data_unchecked::<PgPool>();
    let row = rerun(pool, &key, which, &caller(ctx).actor()).await.gql()?;
    Ok(ObjectView::from(row))
}

#[derive(SimpleObject, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectChange {
    pub kind: String,
    pub name: String,
    pub phase: Phase,
    pub message: Option<String>,
    pub generation: i64,
    pub observed_generation: i64,
    pub deleted: bool,
    pub at: chrono::DateTime<chrono::Utc>,
}

#[derive(Default)]
pub struct ObjectsSubscription;

#[Subscription]
impl ObjectsSubscription {
    /// Status changes of every object, or of one kind, or of one object.
    async fn object_changes(
        &self,
        ctx: &Context<'_>,
        kind: Option<String>,
        name: Option<String>,
    ) -> impl Stream<Item = ObjectChange> {
        let rx = ctx
            .data_unchecked::<tokio::sync::broadcast::Sender<Value>>()
            .subscribe();
        futures::stream::unfold(rx, move |mut rx| {
            let (kind, name) = (kind.clone(), name.clone());
            async move {
                loop {
                    match rx.recv().await {
                        Ok(v) => {
                            let Ok(change) = serde_json::from_value::<ObjectChange>(v) else {
                                continue;
                            };
                            if kind.as_ref().is_some_and(|k| *k != change.kind)
                                || name.as_ref().is_some_and(|n| *n != change.name)
                            {
                                continue;
                            }
                            return Some((change, rx));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return None,
                    }
                }
            }
        })
    }
}
