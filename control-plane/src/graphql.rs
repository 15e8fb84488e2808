//! The control plane's own GraphQL API (grows with the orchestration issue).

use async_graphql::http::GraphiQLSource;
use async_graphql::{
    Context, MergedObject, MergedSubscription, Object, Schema, SimpleObject, Subscription,
};
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::extract::State;
use axum::extract::WebSocketUpgrade;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use futures::Stream;
use uuid::Uuid;

use super::CpState;
use crate::caller::{Caller, ControlPlaneId, authenticate, subject_kind};
use qleet_protocol::Role;

use crate::agents::graphql::{AgentsMutation, AgentsQuery};
use crate::audit::AuditQuery;
use crate::objects::graphql::{ObjectsMutation, ObjectsQuery, ObjectsSubscription};
use crate::objects::reconcile::Engine;

pub type ControlPlaneSchema = Schema<Query, Mutation, Subscription>;

#[derive(MergedObject, Default)]
pub struct Query(CpQuery, ObjectsQuery, AgentsQuery, AuditQuery);

#[derive(MergedObject, Default)]
pub struct Mutation(ObjectsMutation, AgentsMutation);

#[derive(MergedSubscription, Default)]
pub struct Subscription(CpSubscription, ObjectsSubscription);

/// The control plane's GraphQL schema in SDL (committed as `backend/control-plane.graphql`).
pub fn sdl() -> String {
    Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .finish()
    .sdl()
}

pub fn schema(engine: &Engine) -> ControlPlaneSchema {
    Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .data(engine.pool.clone())
    .data(engine.changes.clone())
    .data(ControlPlaneId(engine.control_plane))
    .limit_depth(10)
    .limit_complexity(1000)
    .limit_recursive_depth(32)
    .limit_directives(qleet_common::graphql::MAX_DIRECTIVES)
    .extension(qleet_common::graphql::StableCodes)
    .extension(qleet_common::text::StorableText)
    .finish()
}

#[derive(Default)]
pub struct CpQuery;

/// This control plane.
#[derive(SimpleObject)]
struct ControlPlaneInfo {
    id: Uuid,
    /// The `qleet` version it runs.
    version: String,
    /// Who is asking.
    viewer: Viewer,
    /// Objects that exist and are not being deleted (billing meters object-hours from this).
    object_count: i64,
}

#[derive(SimpleObject)]
struct Viewer {
    /// `user`, `token` or `admin` (standalone).
    kind: String,
    /// The user or token id (none for the standalone admin).
    subject: Option<Uuid>,
    organization: Option<Uuid>,
    role: Role,
}

#[Object]
impl CpQuery {
    async fn control_plane(&self, ctx: &Context<'_>) -> async_graphql::Result<ControlPlaneInfo> {
        let caller = ctx.data_unchecked::<Caller>();
        let viewer = match caller {
            Caller::Gateway(c) => Viewer {
                kind: subject_kind(c.sub_kind).to_owned(),
                subject: Some(c.sub),
                organization: Some(c.org),
                role: c.role,
            },
            Caller::Admin => Viewer {
                kind: "admin".into(),
                subject: None,
                organization: None,
                role: Role::Owner,
            },
        };
        let object_count = sqlx::query_scalar!(
            r#"select count(*) as "count!" from objects where deletion_requested_at is null"#
        )
        .fetch_one(ctx.data_unchecked::<sqlx::PgPool>())
        .await
        .map_err(crate::error::ApiError::from)
        .map_err(|e| async_graphql::ErrorExtensions::extend(&e))?;
        Ok(ControlPlaneInfo {
            id: ctx.data_unchecked::<ControlPlaneId>().0,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            viewer,
            object_count,
        })
    }
}

#[derive(Default)]
pub struct CpSubscription;

#[Subscription]
impl CpSubscription {
    /// The control plane's clock every `everyMs` milliseconds (100 to 60000; default 5000): a
    /// liveness signal for clients holding a connection open.
    async fn heartbeat(
        &self,
        every_ms: Option<i32>,
    ) -> impl Stream<Item = chrono::DateTime<chrono::Utc>> {
        let every =
            std::time::Duration::from_millis(every_ms.unwrap_or(5000).clamp(100, 60_000) as u64);
        futures::stream::unfold((), move |()| async move {
            tokio::time::sleep(every).await;
            Some((chrono::Utc::now(), ()))
        })
    }
}

/// GraphQL over WebSocket (`graphql-transport-ws` or `graphql-ws`) at `/graphql/ws`; the
/// caller is authenticated on the upgrade request, like every other request.
pub(super) async fn websocket(
    State(state): State<CpState>,
    headers: HeaderMap,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let caller = match authenticate(&state.config, &headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let schema = state.schema.clone();
    // The gateway's token is good until its expiry, on a socket as on a request: then the
    // socket closes (4401) and the client reconnects with a fresh one.
    let expires = match &caller {
        Caller::Gateway(claims) => Some(claims.exp),
        Caller::Admin => None,
    };
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| async move {
            use futures::{SinkExt as _, StreamExt as _};
            let mut data = async_graphql::Data::default();
            data.insert(caller);
            let (mut sink, stream) = socket.split();
            let deadline = async {
                match expires {
                    Some(at) => {
                        let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
                        tokio::time::sleep(left).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let expired = std::sync::atomic::AtomicBool::new(false);
            let input = stream.take_until(async {
                deadline.await;
                expired.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            GraphQLWebSocket::new_with_pair(&mut sink, input, schema, protocol)
                .with_data(data)
                .serve()
                .await;
            if expired.load(std::sync::atomic::Ordering::Relaxed) {
                let close = axum::extract::ws::CloseFrame {
                    code: 4401,
                    reason: "the request token expired; reconnect".into(),
                };
                let _ = sink
                    .send(axum::extract::ws::Message::Close(Some(close)))
                    .await;
            }
        })
}

pub(super) async fn graphiql() -> Html<String> {
    Html(
        GraphiQLSource::build()
            .endpoint("graphql")
            .title("Qleet control plane")
            .finish(),
    )
}

pub(super) async fn handler(
    State(state): State<CpState>,
    headers: HeaderMap,
    request: Result<GraphQLRequest, async_graphql_axum::rejection::GraphQLRejection>,
) -> Response {
    let request = match request {
        Ok(request) => request,
        Err(rejection) => return qleet_common::graphql::rejection_response(rejection),
    };
    // Every field needs a caller, so refuse before executing anything.
    let caller = match authenticate(&state.config, &headers) {
        Ok(c) => c,
        Err(e) => return crate::error::error_response(e),
    };
    GraphQLResponse::from(
        state
            .schema
            .execute(request.into_inner().data(caller))
            .await,
    )
    .into_response()
}
