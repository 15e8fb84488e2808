//! The YAML of an apply, parsed with its *expanded* size bounded. YAML aliases let a small text
//! stand for a huge value (one 586 KB anchor named by 99 aliases is 57 MB once expanded), so
//! the size is counted while the documents are built, alias replays included, and parsing stops
//! at the first document or apply over its limit: nothing larger is ever held in memory.
//!
//! The size of a value is about its size as compact JSON: the bytes of every scalar and
//! mapping key, plus one per node.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Largest expanded size of one object (one YAML document), as Kubernetes caps an object.
pub const MAX_OBJECT_BYTES: usize = 1024 * 1024;
/// Largest expanded size of a whole apply (all its documents together).
pub const MAX_APPLY_BYTES: usize = 4 * 1024 * 1024;

/// Why the documents were refused.
#[derive(Debug, PartialEq, Eq)]
pub enum YamlError {
    /// Not YAML, or YAML the parser refuses; the parser's first line of explanation.
    Invalid(String),
    /// Document `document` (1-based) expands to more than [`MAX_OBJECT_BYTES`].
    ObjectTooLarge { document: usize },
    /// All documents together expand to more than [`MAX_APPLY_BYTES`].
    ApplyTooLarge,
    /// Over one of the parser's own limits (nodes, nesting, alias replays), which an alias
    /// bomb of tiny nodes reaches first; the parser's explanation.
    TooComplex(String),
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            YamlError::Invalid(why) => write!(f, "not valid YAML: {why}"),
            YamlError::ObjectTooLarge { document } => write!(
                f,
                "document {document} is larger than {} KiB once its aliases are expanded",
                MAX_OBJECT_BYTES / 1024
            ),
            YamlError::ApplyTooLarge => write!(
                f,
                "the apply is larger than {} MiB once its aliases are expanded",
                MAX_APPLY_BYTES / 1024 / 1024
            ),
            YamlError::TooComplex(why) => {
                write!(
                    f,
                    "the YAML is too large once its aliases are expanded ({why})"
                )
            }
        }
    }
}

/// Counters of the parse running on this thread. Parsing is synchronous, so a thread-local
/// is the budget of exactly one parse; [`parse_documents`] resets it before and after.
#[derive(Clone, Copy, Default)]
struct Budget {
    /// Bytes charged for the whole apply so far.
    total: usize,
    /// Bytes charged for the current document.
    document: usize,
    /// 1-based number of the current document.
    index: usize,
    /// Nesting depth of the value being built (0 between documents).
    depth: usize,
    breached: Option<Breach>,
}

#[derive(Clone, Copy)]
enum Breach {
    Object(usize),
    Apply,
}

thread_local! {
    static BUDGET: Cell<Budget> = Cell::new(Budget::default());
}

/// Parses the documents of `yaml` into JSON values, refusing any over the limits.
pub fn parse_documents(yaml: &str) -> Result<Vec<Value>, YamlError> {
    BUDGET.with(|b| b.set(Budget::default()));
    let parsed = serde_saphyr::from_multiple::<Counted>(yaml);
    let budget = BUDGET.with(|b| b.replace(Budget::default()));
    match (parsed, budget.breached) {
        (_, Some(Breach::Object(document))) => Err(YamlError::ObjectTooLarge { document }),
        (_, Some(Breach::Apply)) => Err(YamlError::ApplyTooLarge),
        (Ok(docs), None) => Ok(docs.into_iter().map(|c| c.0).collect()),
        (Err(e), None) => {
            let why = e.to_string().lines().next().unwrap_or_default().to_owned();
            let mut cause = &e;
            while let serde_saphyr::Error::AliasError { error, .. }
            | serde_saphyr::Error::WithSnippet { error, .. } = cause
            {
                cause = error;
            }
            match cause {
                serde_saphyr::Error::Budget { .. }
                | serde_saphyr::Error::AliasReplayLimitExceeded { .. }
                | serde_saphyr::Error::AliasExpansionLimitExceeded { .. }
                | serde_saphyr::Error::AliasReplayStackDepthExceeded { .. } => {
                    Err(YamlError::TooComplex(why))
                }
                _ => Err(YamlError::Invalid(why)),
            }
        }
    }
}

/// Charges `bytes` to the current document and the apply; an error once either is over.
fn charge<E: de::Error>(bytes: usize) -> Result<(), E> {
    BUDGET.with(|cell| {
        let mut b = cell.get();
        b.total = b.total.saturating_add(bytes);
        b.document = b.document.saturating_add(bytes);
        if b.document > MAX_OBJECT_BYTES {
            b.breached = Some(Breach::Object(b.index));
        } else if b.total > MAX_APPLY_BYTES {
            b.breached = Some(Breach::Apply);
        }
        cell.set(b);
        match b.breached {
            Some(_) => Err(E::custom(
                "the YAML is too large once its aliases are expanded",
            )),
            None => Ok(()),
        }
    })
}

/// Enters a node: a top-level one starts a new document.
fn enter() {
    BUDGET.with(|cell| {
        let mut b = cell.get();
        if b.depth == 0 {
            b.index += 1;
            b.document = 0;
        }
        b.depth += 1;
        cell.set(b);
    });
}

fn leave() {
    BUDGET.with(|cell| {
        let mut b = cell.get();
        b.depth = b.depth.saturating_sub(1);
        cell.set(b);
    });
}

/// A JSON value built under the budget.
struct Counted(Value);

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        enter();
        let value = deserializer.deserialize_any(CountingVisitor);
        leave();
        value.map(Counted)
    }
}

struct CountingVisitor;

impl CountingVisitor {
    fn scalar<E: de::Error>(bytes: usize, value: Value) -> Result<Value, E> {
        charge(bytes + 1)?;
        Ok(value)
    }
}

impl<'de> Visitor<'de> for CountingVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Self::scalar(4, Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Self::scalar(8, Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Self::scalar(8, Value::Number(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        match (i64::try_from(v), u64::try_from(v)) {
            (Ok(i), _) => self.visit_i64(i),
            (_, Ok(u)) => self.visit_u64(u),
            _ => Err(E::custom(format!("integer {v} is out of range"))),
        }
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        match u64::try_from(v) {
            Ok(u) => self.visit_u64(u),
            Err(_) => Err(E::custom(format!("integer {v} is out of range"))),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Self::scalar(8, Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Self::scalar(v.len(), Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Self::scalar(v.len(), Value::String(v))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Self::scalar(4, Value::Null)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Self::scalar(4, Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Counted::deserialize(deserializer).map(|c| c.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        charge(1)?;
        let mut items = Vec::new();
        while let Some(Counted(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        charge(1)?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            charge(key.len() + 1)?;
            let Counted(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_documents_parse_as_before() {
        let yaml = "a: 1\nb: [x, true, null, 2.5]\n---\nc: {d: e}\n";
        assert_eq!(
            parse_documents(yaml),
            Ok(vec![
                serde_json::json!({"a": 1, "b": ["x", true, null, 2.5]}),
                serde_json::json!({"c": {"d": "e"}}),
            ])
        );
    }

    #[test]
    fn aliases_are_charged_at_their_expanded_size() {
        let big = "x".repeat(300 * 1024);
        let three = format!("a: &big {big}\nb: *big\nc: *big\n");
        assert!(parse_documents(&three).is_ok());
        let four = format!("{three}d: *big\n");
        assert_eq!(
            parse_documents(&four),
            Err(YamlError::ObjectTooLarge { document: 1 })
        );
    }

    #[test]
    fn documents_under_the_object_limit_still_add_up_to_the_apply_limit() {
        let big = "x".repeat(300 * 1024);
        let doc = format!("a: &big {big}\nb: *big\nc: *big\n");
        let apply = vec![doc; 5].join("---\n");
        assert_eq!(parse_documents(&apply), Err(YamlError::ApplyTooLarge));
        // The budget is per parse: the next one starts from zero.
        assert!(parse_documents("a: 1").is_ok());
    }

    #[test]
    fn nested_laughs_stop_early() {
        let mut yaml = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let prev = format!("*l{}", i - 1);
            yaml.push_str(&format!("l{i}: &l{i} [{}]\n", vec![prev; 9].join(", ")));
        }
        assert!(
            matches!(
                parse_documents(&yaml),
                Err(YamlError::ObjectTooLarge { .. } | YamlError::TooComplex(_))
            ),
            "{:?}",
            parse_documents(&yaml)
        );
    }
}
