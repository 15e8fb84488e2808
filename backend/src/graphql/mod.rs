//! The GraphQL API: one schema merged from the domain modules, served at `/graphql`.
//! The schema knows nothing of axum; the handler only adds the authenticated principal.

use std::sync::Arc;

use async_graphql::http::GraphiQLSource;
use async_graphql::{Context, EmptySubscription, MergedObject, Schema};
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;

use crate::config::Config;
use crate::error::ApiError;
use crate::identity::{Actor, Principal};
use crate::state::AppState;

#[derive(MergedObject, Default)]
pub struct Query(
    crate::identity::graphql::IdentityQuery,
    crate::orgs::graphql::OrgQuery,
);

#[derive(MergedObject, Default)]
pub struct Mutation(
    crate::orgs::graphql::OrgMutation,
    crate::identity::graphql::TokenMutation,
    crate::fleet::graphql::ControlPlaneMutation,
    crate::billing::graphql::BillingMutation,
);

pub type QleetSchema = Schema<Query, Mutation, EmptySubscription>;

/// Who sent the GraphQL request, added to each request's data by the transport.
#[derive(Debug, Clone)]
pub struct RequestAuth {
    pub principal: Option<Principal>,
    pub ip: Option<String>,
}

/// Builds the schema with its limits over the shared services.
pub fn schema(
    pool: PgPool,
    config: Arc<Config>,
    controlplanes: Arc<crate::fleet::Services>,
) -> QleetSchema {
    Schema::build(Query::default(), Mutation::default(), EmptySubscription)
        .data(pool)
        .data(config)
        .data(controlplanes)
        .limit_depth(10)
        .limit_complexity(1000)
        .limit_recursive_depth(32)
        .limit_directives(qleet_common::graphql::MAX_DIRECTIVES)
        .extension(qleet_common::graphql::StableCodes)
        .extension(qleet_common::text::StorableText)
        .finish()
}

/// The SDL of the schema, as committed in `backend/schema.graphql`.
pub fn sdl() -> String {
    Schema::build(Query::default(), Mutation::default(), EmptySubscription)
        .finish()
        .sdl()
}

pub(crate) fn pool<'a>(ctx: &Context<'a>) -> &'a PgPool {
    ctx.data_unchecked::<PgPool>()
}

pub(crate) fn config<'a>(ctx: &Context<'a>) -> &'a Config {
    ctx.data_unchecked::<Arc<Config>>()
}

/// The authenticated principal, or `UNAUTHENTICATED`.
pub(crate) fn principal<'a>(ctx: &Context<'a>) -> Result<&'a Principal, ApiError> {
    ctx.data_opt::<RequestAuth>()
        .and_then(|a| a.principal.as_ref())
        .ok_or(ApiError::Unauthenticated)
}

/// The principal with the request's IP, for mutations (the audit log wants both).
pub(crate) fn actor(ctx: &Context<'_>) -> Result<Actor, ApiError> {
    let principal = principal(ctx)?.clone();
    let ip = ctx.data_opt::<RequestAuth>().and_then(|a| a.ip.clone());
    Ok(Actor { principal, ip })
}

pub fn router() -> Router<AppState> {
    Router::new().route("/graphql", get(graphiql).post(graphql))
}

async fn graphiql() -> Html<String> {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .title("Qleet GraphQL")
            .finish(),
    )
}

async fn graphql(
    State(state): State<AppState>,
    crate::web::ClientIp(ip): crate::web::ClientIp,
    headers: HeaderMap,
    request: Result<GraphQLRequest, async_graphql_axum::rejection::GraphQLRejection>,
) -> Response {
    let request = match request {
        Ok(request) => request,
        Err(rejection) => return qleet_common::graphql::rejection_response(rejection),
    };
    let principal = match crate::identity::authenticate(&state.pool, &headers).await {
        Ok(p) => p,
        Err(e) => return error_response(e),
    };
    let request = request.into_inner().data(RequestAuth { principal, ip });
    GraphQLResponse::from(state.schema.execute(request).await).into_response()
}

pub use qleet_common::error::error_response;
