//! The GraphQL API: one schema merged from the domain modules, served at `/graphql`.
//! The schema knows nothing of axum; the handler only adds the authenticated principal.

use std::sync::Arc;

use async_graphql::http::GraphiQLSource;
use async_graphql::{Context, EmptySubscription, MergedObject, Schema};
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;

use crate::config::{Config, Introspection};
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

/// The GraphiQL page. It loads GraphiQL from unpkg.com: its scripts run by the page's nonce,
/// and what they load by `'strict-dynamic'`; nothing else may run.
async fn graphiql() -> Response {
    let nonce = leptos::nonce::Nonce::new();
    let html = GraphiQLSource::build()
        .endpoint("/graphql")
        .title("Qleet GraphQL")
        .finish()
        .replace("<script", &format!("<script nonce=\"{nonce}\""));
    let policy = format!(
        "default-src 'self'; script-src 'nonce-{nonce}' 'strict-dynamic'; \
         style-src 'self' 'unsafe-inline' https://unpkg.com; \
         img-src 'self' data: https://graphql.org; font-src 'self' data: https://unpkg.com; \
         connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    );
    match HeaderValue::from_str(&policy) {
        Ok(policy) => ([(header::CONTENT_SECURITY_POLICY, policy)], Html(html)).into_response(),
        Err(e) => error_response(crate::error::internal(e)),
    }
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
    let principal = match crate::identity::authenticate(
        &state.pool,
        &state.revocations.cache,
        &headers,
    )
    .await
    {
        Ok(p) => p,
        Err(e) => return error_response(e),
    };
    let mut request = request.into_inner();
    if !state.config.introspection.allows(principal.is_some()) {
        if asks_for_introspection(&request.query) {
            return error_response(match state.config.introspection {
                Introspection::Off => {
                    ApiError::forbidden("schema introspection is turned off on this server")
                }
                _ => ApiError::Unauthenticated,
            });
        }
        // Whatever the check above missed resolves to null.
        request = request.disable_introspection();
    }
    let mutation = crate::ui::is_mutation(&request.query);
    let request = request.data(RequestAuth { principal, ip });
    let response = state.schema.execute(request).await;
    if mutation {
        // What the mutation changed is what the caller's next request reads.
        state.revocations.cache.barrier(&state.pool).await;
    }
    GraphQLResponse::from(response).into_response()
}

/// Whether a document selects `__schema` or `__type` anywhere (operations and fragments alike).
/// A document that does not parse asks for nothing: execution reports its syntax error.
fn asks_for_introspection(query: &str) -> bool {
    use async_graphql::parser::types::{Selection, SelectionSet};
    fn selects(set: &SelectionSet) -> bool {
        set.items.iter().any(|item| match &item.node {
            Selection::Field(field) => {
                matches!(field.node.name.node.as_str(), "__schema" | "__type")
                    || selects(&field.node.selection_set.node)
            }
            Selection::InlineFragment(fragment) => selects(&fragment.node.selection_set.node),
            Selection::FragmentSpread(_) => false,
        })
    }
    let Ok(document) = async_graphql::parser::parse_query(query) else {
        return false;
    };
    document
        .operations
        .iter()
        .any(|(_, op)| selects(&op.node.selection_set.node))
        || document
            .fragments
            .values()
            .any(|fragment| selects(&fragment.node.selection_set.node))
}

pub use qleet_common::error::error_response;

#[cfg(test)]
mod tests {
    use super::asks_for_introspection;

    #[test]
    fn introspection_is_found_however_it_is_spelt() {
        for query in [
            "{ __schema { types { name } } }",
            "query { t: __type(name: \"Query\") { name } }",
            "query { ...F } fragment F on Query { __schema { queryType { name } } }",
            "{ ... on Query { __type(name: \"Org\") { name } } }",
        ] {
            assert!(asks_for_introspection(query), "{query}");
        }
        for query in ["{ me { email } }", "{ __typename }", "{ not valid"] {
            assert!(!asks_for_introspection(query), "{query}");
        }
    }
}
