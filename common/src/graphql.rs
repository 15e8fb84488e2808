//! What both GraphQL endpoints add to the library: a stable `extensions.code` on every error,
//! including the library's own parse, validation and limit errors, and limits on the size of a
//! document (fields and aliases) beside the depth and complexity limits the schemas set.
//!
//! | code | when |
//! | --- | --- |
//! | `GRAPHQL_PARSE_FAILED` | the document is not GraphQL |
//! | `GRAPHQL_VALIDATION_FAILED` | unknown field or type, wrong operation name, … |
//! | `INVALID_INPUT` | an argument or variable of the wrong type (a bad UUID or DateTime) |
//! | `QUERY_TOO_DEEP` | nesting or fragment recursion past the limit |
//! | `QUERY_TOO_COMPLEX` | the complexity limit |
//! | `QUERY_TOO_LARGE` | more than [`MAX_FIELDS`] fields or [`MAX_ALIASES`] aliases |
//! | `BAD_REQUEST` | anything else the library refuses |
//!
//! Errors the resolvers raise keep their own codes ([`crate::error::ApiError::code`]).

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextRequest, NextValidation,
};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Response, ServerError, ServerResult, ValidationResult, Variables};

/// Most fields (selections, counted through fragments once each) a document may hold.
pub const MAX_FIELDS: usize = 500;
/// Most aliased fields a document may hold (aliases multiply the work of one field).
pub const MAX_ALIASES: usize = 30;
/// Most directives on one field, fragment or operation.
pub const MAX_DIRECTIVES: usize = 8;

/// Add to a schema with `.extension(StableCodes)`; set `.limit_directives(MAX_DIRECTIVES)` too.
pub struct StableCodes;

impl ExtensionFactory for StableCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(StableCodesExtension)
    }
}

struct StableCodesExtension;

#[async_graphql::async_trait::async_trait]
impl Extension for StableCodesExtension {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut response = next.run(ctx).await;
        for error in &mut response.errors {
            let code = if is_input_error(&error.message) {
                "INVALID_INPUT"
            } else {
                "BAD_REQUEST"
            };
            set_code_if_missing(error, code);
        }
        response
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await.map_err(|mut e| {
            let code = if e.message.starts_with("The recursion depth") {
                "QUERY_TOO_DEEP"
            } else if e.message.contains("directives") {
                "QUERY_TOO_LARGE"
            } else {
                "GRAPHQL_PARSE_FAILED"
            };
            set_code_if_missing(&mut e, code);
            e
        })?;
        check_size(&document)?;
        Ok(document)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|mut errors| {
            for e in &mut errors {
                let code = match e.message.as_str() {
                    "Query is too complex." => "QUERY_TOO_COMPLEX",
                    "Query is nested too deep." => "QUERY_TOO_DEEP",
                    m if is_input_error(m) => "INVALID_INPUT",
                    _ => "GRAPHQL_VALIDATION_FAILED",
                };
                set_code_if_missing(e, code);
            }
            errors
        })
    }
}

/// The answer to a request body that is not a GraphQL request (not JSON, wrong fields, too
/// large): a GraphQL error with code `BAD_REQUEST` (`INPUT_TOO_LARGE` with status 413 for a
/// body over the limit), like every other refusal, rather than the library's plain text.
pub fn rejection_response(
    rejection: async_graphql_axum::rejection::GraphQLRejection,
) -> axum::response::Response {
    use async_graphql::ParseRequestError;
    use axum::response::IntoResponse as _;
    let (status, code, message) = match &rejection.0 {
        ParseRequestError::PayloadTooLarge => (
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "INPUT_TOO_LARGE",
            "the request body is too large".to_owned(),
        ),
        other => (
            axum::http::StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            format!("not a GraphQL request: {other}"),
        ),
    };
    let response = Response::from_errors(vec![coded(message, code)]);
    (status, async_graphql_axum::GraphQLResponse::from(response)).into_response()
}

/// An argument or variable that does not fit its type (the library's wording).
fn is_input_error(message: &str) -> bool {
    message.starts_with("Failed to parse") || message.starts_with("Invalid value for argument")
}

fn set_code_if_missing(error: &mut ServerError, code: &'static str) {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", code);
    }
}

fn coded(message: String, code: &'static str) -> ServerError {
    let mut error = ServerError::new(message, None);
    set_code_if_missing(&mut error, code);
    error
}

/// Refuses documents with more than [`MAX_FIELDS`] fields or [`MAX_ALIASES`] aliases.
fn check_size(document: &ExecutableDocument) -> ServerResult<()> {
    let mut count = Count::default();
    for (_, operation) in document.operations.iter() {
        count.selection_set(&operation.node.selection_set.node);
    }
    for fragment in document.fragments.values() {
        count.selection_set(&fragment.node.selection_set.node);
    }
    if count.fields > MAX_FIELDS {
        return Err(coded(
            format!(
                "the document selects {} fields; at most {MAX_FIELDS} are allowed",
                count.fields
            ),
            "QUERY_TOO_LARGE",
        ));
    }
    if count.aliases > MAX_ALIASES {
        return Err(coded(
            format!(
                "the document has {} aliased fields; at most {MAX_ALIASES} are allowed",
                count.aliases
            ),
            "QUERY_TOO_LARGE",
        ));
    }
    Ok(())
}

#[derive(Default)]
struct Count {
    fields: usize,
    aliases: usize,
}

impl Count {
    fn selection_set(&mut self, set: &SelectionSet) {
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => {
                    self.fields += 1;
                    if field.node.alias.is_some() {
                        self.aliases += 1;
                    }
                    self.selection_set(&field.node.selection_set.node);
                }
                Selection::InlineFragment(fragment) => {
                    self.selection_set(&fragment.node.selection_set.node);
                }
                // Counted where the fragment is defined.
                Selection::FragmentSpread(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size_error(query: &str) -> Option<String> {
        let document = async_graphql::parser::parse_query(query).expect("parses");
        check_size(&document).err().map(|e| e.message)
    }

    #[test]
    fn documents_are_bounded_in_fields_and_aliases() {
        let aliases: String = (0..=MAX_ALIASES)
            .map(|i| format!("a{i}: me {{ id }} "))
            .collect();
        assert!(size_error(&format!("{{ {aliases} }}")).is_some_and(|m| m.contains("aliased")));
        let fields: String = (0..=MAX_FIELDS).map(|_| "id ").collect();
        assert!(
            size_error(&format!("{{ me {{ {fields} }} }}")).is_some_and(|m| m.contains("fields"))
        );
        assert_eq!(
            size_error("{ me { id organizations { slug name } } }"),
            None
        );
    }
}
