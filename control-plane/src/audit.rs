//! The control plane's audit trail: every apply, delete, retry and refresh with the caller the
//! gateway named, every agent registration and report with the agent, the time and the spec
//! diff. Append-only in the database itself (see migration `0008_audit.sql`): entries are only
//! ever inserted, in the same transaction as the change they record, so a change and its record
//! commit together or not at all.
//!
//! Read through GraphQL (`auditLog(first, after, object)`, newest first, with cursors) and
//! exported whole as JSON lines at `GET /audit.jsonl[?object=Kind/name]`.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Json, Object, SimpleObject};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::caller::{Caller, authenticate};
use crate::error::{ApiError, GqlResult as _};
use crate::objects::refs::ObjKey;
use qleet_protocol::Role;

/// The actor of what the control plane does by itself (drift remediation, retired resources).
pub const SYSTEM: &str = "control-plane";

/// Entries per page at most.
const MAX_PAGE: i64 = 200;

/// What to record.
pub struct Record<'a> {
    /// "user:<id>", "token:<id>", "admin", "agent:<id>" or [`SYSTEM`].
    pub actor: &'a str,
    /// e.g. `object.update`.
    pub action: &'a str,
    pub object: Option<(Uuid, &'a ObjKey)>,
    pub detail: &'a str,
    /// Field diffs, `[{path, before, after}]`.
    pub diff: Value,
}

/// Appends an entry, in the caller's transaction.
pub async fn record(conn: &mut PgConnection, r: Record<'_>) -> sqlx::Result<()> {
    let (id, kind, name) = match r.object {
        Some((id, key)) => (Some(id), Some(key.kind.as_str()), Some(key.name.as_str())),
        None => (None, None, None),
    };
    sqlx::query!(
        "insert into qleet_audit.entries (actor, action, object_id, object_kind, object_name,
           detail, diff)
         values ($1, $2, $3, $4, $5, $6, $7)",
        r.actor,
        r.action,
        id,
        kind,
        name,
        r.detail,
        &r.diff,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One entry, as stored.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub detail: String,
    pub diff: Value,
}

struct Row {
    id: i64,
    at: DateTime<Utc>,
    actor: String,
    action: String,
    object_kind: Option<String>,
    object_name: Option<String>,
    detail: String,
    diff: Value,
}

impl From<Row> for Entry {
    fn from(r: Row) -> Entry {
        Entry {
            id: r.id,
            at: r.at,
            actor: r.actor,
            action: r.action,
            object: r
                .object_kind
                .zip(r.object_name)
                .map(|(k, n)| format!("{k}/{n}")),
            detail: r.detail,
            diff: r.diff,
        }
    }
}

/// `Kind/name` of an `object` filter, or why it is not one.
fn object_filter(object: Option<&str>) -> Result<Option<ObjKey>, ApiError> {
    object
        .filter(|o| !o.is_empty())
        .map(|o| ObjKey::parse(o).map_err(|e| ApiError::invalid("object", e)))
        .transpose()
}

/// Entries older than `before` (all when `None`), newest first, at most `limit`; and whether
/// there are more.
pub async fn page(
    pool: &PgPool,
    object: Option<&ObjKey>,
    before: Option<i64>,
    limit: i64,
) -> Result<(Vec<Entry>, bool), ApiError> {
    let rows = sqlx::query_as!(
        Row,
        "select id, at, actor, action, object_kind, object_name, detail, diff
         from qleet_audit.entries
         where ($1::bigint is null or id < $1)
           and ($2::text is null or (object_kind = $2 and object_name = $3))
         order by id desc
         limit $4",
        before,
        object.map(|o| o.kind.as_str()),
        object.map(|o| o.name.as_str()),
        limit + 1,
    )
    .fetch_all(pool)
    .await?;
    let more = rows.len() as i64 > limit;
    Ok((
        rows.into_iter()
            .take(limit as usize)
            .map(Entry::from)
            .collect(),
        more,
    ))
}

/// One audit-trail entry.
#[derive(SimpleObject)]
#[graphql(name = "AuditEntry")]
pub struct AuditEntryView {
    /// Also its cursor.
    pub id: String,
    pub at: DateTime<Utc>,
    /// Who: `user:<id>` or `token:<id>` (as the gateway named the caller), `admin`
    /// (standalone), `agent:<id>`, or `control-plane` for what it did by itself.
    pub actor: String,
    /// What: `object.create`, `object.update`, `object.replace`, `object.delete`,
    /// `object.retry`, `object.refresh`, `apply` (one that changed nothing),
    /// `agent.registration`, `agent.register`, `agent.revoke`, `agent.report`.
    pub action: String,
    /// `Kind/name`, when it concerns one object.
    pub object: Option<String>,
    /// One line a person reads.
    pub detail: String,
    /// Field diffs: `[{ path, before, after }]`.
    pub diff: Json<Value>,
}

impl From<Entry> for AuditEntryView {
    fn from(e: Entry) -> Self {
        AuditEntryView {
            id: e.id.to_string(),
            at: e.at,
            actor: e.actor,
            action: e.action,
            object: e.object,
            detail: e.detail,
            diff: Json(e.diff),
        }
    }
}

#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// The audit trail, newest first: of the whole control plane, or of one `object`
    /// (`Kind/name`). `after` is the cursor of the last entry of the previous page.
    #[graphql(complexity = "first.unwrap_or(50).clamp(1, 200) as usize * child_complexity")]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        object: Option<String>,
    ) -> async_graphql::Result<Connection<String, AuditEntryView>> {
        ctx.data_unchecked::<Caller>()
            .require(Role::Viewer, "reading the audit trail")
            .gql()?;
        let limit = i64::from(first.unwrap_or(50).clamp(1, MAX_PAGE as i32));
        let before = after
            .map(|c| {
                c.parse::<i64>()
                    .map_err(|_| ApiError::invalid("after", "is not a cursor from this audit log"))
            })
            .transpose()
            .gql()?;
        let object = object_filter(object.as_deref()).gql()?;
        let (rows, more) = page(
            ctx.data_unchecked::<PgPool>(),
            object.as_ref(),
            before,
            limit,
        )
        .await
        .gql()?;
        let mut connection = Connection::new(before.is_some(), more);
        connection.edges.extend(
            rows.into_iter()
                .map(|e| Edge::new(e.id.to_string(), AuditEntryView::from(e))),
        );
        Ok(connection)
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct ExportQuery {
    object: Option<String>,
}

/// `GET /audit.jsonl[?object=Kind/name]`: the whole trail (or one object's), oldest first, one
/// JSON object per line, streamed from the database.
pub(crate) async fn export(
    State(state): State<super::CpState>,
    headers: HeaderMap,
    Query(query): Query<ExportQuery>,
) -> Response {
    let caller = match authenticate(&state.config, &headers) {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = caller.require(Role::Viewer, "reading the audit trail") {
        return e.into_response();
    }
    let object = match object_filter(query.object.as_deref()) {
        Ok(object) => object,
        Err(e) => return e.into_response(),
    };
    // Read a chunk at a time, by id: no connection is held while a slow client reads.
    const CHUNK: i64 = 500;
    let pool = state.pool.clone();
    let (kind, name) = object.map(|o| (o.kind, o.name)).unzip();
    let chunks = futures::stream::try_unfold(Some(0i64), move |after| {
        let (pool, kind, name) = (pool.clone(), kind.clone(), name.clone());
        async move {
            let Some(after) = after else {
                return Ok::<_, sqlx::Error>(None);
            };
            let rows = sqlx::query_as!(
                Row,
                "select id, at, actor, action, object_kind, object_name, detail, diff
                 from qleet_audit.entries
                 where id > $1 and ($2::text is null or (object_kind = $2 and object_name = $3))
                 order by id
                 limit $4",
                after,
                kind,
                name,
                CHUNK,
            )
            .fetch_all(&pool)
            .await?;
            if rows.is_empty() {
                return Ok(None);
            }
            let next = (rows.len() as i64 == CHUNK).then(|| rows[rows.len() - 1].id);
            let mut bytes = Vec::new();
            for row in rows {
                // Plain data: serialising it cannot fail.
                serde_json::to_writer(&mut bytes, &Entry::from(row)).unwrap_or_default();
                bytes.push(b'\n');
            }
            Ok(Some((bytes, next)))
        }
    });
    let lines = chunks.map_err(|e| {
        tracing::warn!(error = %e, "audit export ended early");
        std::io::Error::other(e)
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/jsonl; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"audit.jsonl\"",
            ),
        ],
        Body::from_stream(lines),
    )
        .into_response()
}
