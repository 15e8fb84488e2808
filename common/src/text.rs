//! Text PostgreSQL cannot store. A `text` or `jsonb` value holds any UTF-8 except the NUL
//! character, so input with one is refused where it enters (`INVALID_INPUT`), before a query
//! fails on it as an internal error. [`StorableText`] does it for every GraphQL input.

use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{ErrorExtensionValues, ServerError, ServerResult, Value, Variables};

use crate::error::ApiError;

/// Whether `s` holds an invisible format character (Unicode general category Cf): the bidi
/// embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069), zero-width characters,
/// the byte-order mark, tag characters. In a name they make one string display as another.
pub fn has_invisible_format(s: &str) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};
    s.chars()
        .any(|c| c.general_category() == GeneralCategory::Format)
}

/// `s` without invisible format characters (for names another system hands us, such as an
/// identity provider's, which cannot be refused).
pub fn strip_invisible_format(s: &str) -> String {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};
    s.chars()
        .filter(|c| c.general_category() != GeneralCategory::Format)
        .collect()
}

/// Whether PostgreSQL can store `s` as text.
pub fn storable(s: &str) -> bool {
    !s.contains('\0')
}

/// `INVALID_INPUT` for `field` unless PostgreSQL can store `s`.
pub fn check(field: &'static str, s: &str) -> Result<(), ApiError> {
    if storable(s) {
        Ok(())
    } else {
        Err(refusal(field))
    }
}

/// Whether every string (and key) in a JSON value can be stored.
pub fn json_storable(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => storable(s),
        serde_json::Value::Array(items) => items.iter().all(json_storable),
        serde_json::Value::Object(map) => map.iter().all(|(k, v)| storable(k) && json_storable(v)),
        _ => true,
    }
}

fn refusal(field: &'static str) -> ApiError {
    ApiError::invalid(field, "text with a NUL character cannot be stored")
}

/// A GraphQL extension refusing any document or variables with a string that cannot be stored.
pub struct StorableText;

impl ExtensionFactory for StorableText {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(StorableTextExtension)
    }
}

struct StorableTextExtension;

#[async_graphql::async_trait::async_trait]
impl Extension for StorableTextExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let variables_ok = variables.iter().all(|(_, v)| const_storable(v));
        if variables_ok && document_storable(&document) {
            Ok(document)
        } else {
            let err = refusal("input");
            let mut extensions = ErrorExtensionValues::default();
            extensions.set("code", err.code());
            let mut server_error = ServerError::new(err.to_string(), None);
            server_error.extensions = Some(extensions);
            Err(server_error)
        }
    }
}

fn const_storable(value: &Value) -> bool {
    match value {
        Value::String(s) => storable(s),
        Value::List(items) => items.iter().all(const_storable),
        Value::Object(map) => map.values().all(const_storable),
        _ => true,
    }
}

/// Whether a literal argument (variables count as storable: they are checked on their own) can
/// be stored. (The parser's non-constant value type is not exported by name.)
macro_rules! literal_storable {
    ($value:expr) => {
        $value
            .clone()
            .into_const_with(|_| Ok::<_, std::convert::Infallible>(Value::Null))
            .is_ok_and(|v| const_storable(&v))
    };
}

fn selection_storable(set: &SelectionSet) -> bool {
    set.items.iter().all(|item| match &item.node {
        Selection::Field(field) => {
            field
                .node
                .arguments
                .iter()
                .all(|(_, v)| literal_storable!(v.node))
                && field.node.directives.iter().all(|d| {
                    d.node
                        .arguments
                        .iter()
                        .all(|(_, v)| literal_storable!(v.node))
                })
                && selection_storable(&field.node.selection_set.node)
        }
        Selection::InlineFragment(fragment) => {
            selection_storable(&fragment.node.selection_set.node)
        }
        Selection::FragmentSpread(_) => true,
    })
}

fn document_storable(document: &ExecutableDocument) -> bool {
    document.operations.iter().all(|(_, op)| {
        op.node.variable_definitions.iter().all(|d| {
            d.node
                .default_value
                .as_ref()
                .is_none_or(|v| const_storable(&v.node))
        }) && selection_storable(&op.node.selection_set.node)
    }) && document
        .fragments
        .values()
        .all(|f| selection_storable(&f.node.selection_set.node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bidi_controls_and_other_invisible_format_characters_are_found() {
        for c in ('\u{202A}'..='\u{202E}').chain('\u{2066}'..='\u{2069}') {
            assert!(
                has_invisible_format(&format!("acme{c}corp")),
                "{:04X}",
                c as u32
            );
        }
        for c in [
            '\u{200B}',
            '\u{200D}',
            '\u{200E}',
            '\u{FEFF}',
            '\u{E0041}',
            '\u{00AD}',
        ] {
            assert!(has_invisible_format(&format!("a{c}b")), "{:04X}", c as u32);
        }
        for ok in ["Acme Ltd", "Café Zoë", "株式会社", "مرحبا", "a-b_c.d"] {
            assert!(!has_invisible_format(ok), "{ok}");
        }
        assert_eq!(strip_invisible_format("Ev\u{202E}il\u{200B}"), "Evil");
    }

    #[test]
    fn nul_is_the_one_character_postgres_cannot_store() {
        assert!(storable("ünïcode ✓ \u{1}"));
        assert!(!storable("a\0b"));
        assert!(!json_storable(&serde_json::json!({"a": ["ok", "b\u{0}"]})));
        assert!(!json_storable(&serde_json::json!({"k\u{0}": 1})));
        assert!(json_storable(&serde_json::json!({"a": ["ok", 1, null]})));
    }
}
