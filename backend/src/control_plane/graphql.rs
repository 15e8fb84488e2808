//! The control plane's own GraphQL API (grows with the orchestration issue).

use async_graphql::http::GraphiQLSource;
use async_graphql::{Context, EmptyMutation, EmptySubscription, Object, Schema, SimpleObject};
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Caller, CpState, authenticate, subject_kind};
use crate::orgs::Role;

pub type ControlPlaneSchema = Schema<CpQuery, EmptyMutation, EmptySubscription>;

pub fn schema(pool: PgPool, id: Uuid) -> ControlPlaneSchema {
    Schema::build(CpQuery, EmptyMutation, EmptySubscription)
        .data(pool)
        .data(ControlPlaneId(id))
        .limit_depth(10)
        .limit_complexity(1000)
        .finish()
}

struct ControlPlaneId(Uuid);

pub struct CpQuery;

/// This control plane.
#[derive(SimpleObject)]
struct ControlPlaneInfo {
    id: Uuid,
    /// The `qleet` version it runs.
    version: String,
    /// Who is asking.
    viewer: Viewer,
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
    async fn control_plane(&self, ctx: &Context<'_>) -> ControlPlaneInfo {
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
        ControlPlaneInfo {
            id: ctx.data_unchecked::<ControlPlaneId>().0,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            viewer,
        }
    }
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
    request: GraphQLRequest,
) -> Response {
    // Every field needs a caller, so refuse before executing anything.
    let caller = match authenticate(&state.config, &headers) {
        Ok(c) => c,
        Err(e) => return crate::graphql::error_response(e),
    };
    GraphQLResponse::from(
        state
            .schema
            .execute(request.into_inner().data(caller))
            .await,
    )
    .into_response()
}
