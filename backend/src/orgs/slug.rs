//! Organisation slugs: the short name in URLs.

use crate::error::ApiError;

/// A valid organisation slug: 3 to 40 characters of ASCII `a-z`, `0-9` and single hyphens,
/// starting with a letter and not ending with a hyphen. ASCII-only, so no two slugs can look
/// alike through Unicode confusables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slug(String);

const RESERVED: &[&str] = &[
    "new", "api", "admin", "settings", "graphql", "auth", "static", "pkg",
];

impl Slug {
    pub fn parse(input: &str) -> Result<Slug, ApiError> {
        let s = input.trim();
        let bad = |why: &str| ApiError::invalid("slug", why.to_owned());
        if s.len() < 3 {
            return Err(bad("must be at least 3 characters"));
        }
        if s.len() > 40 {
            return Err(bad("must be at most 40 characters"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(bad("may only contain a-z, 0-9 and hyphens"));
        }
        if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(bad("must start with a letter"));
        }
        if s.ends_with('-') || s.contains("--") {
            return Err(bad("must not end with a hyphen or contain two in a row"));
        }
        if RESERVED.contains(&s) {
            return Err(bad("is reserved"));
        }
        Ok(Slug(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: trimmed, 1 to 100 characters, no control characters and no invisible format
/// characters (bidi controls, zero-width characters), which would let one name pass for another.
pub fn parse_name(field: &'static str, input: &str) -> Result<String, ApiError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if s.chars().count() > 100 {
        return Err(ApiError::invalid(field, "must be at most 100 characters"));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    if qleet_common::text::has_invisible_format(s) {
        return Err(ApiError::invalid(
            field,
            "must not contain invisible formatting characters (such as bidi controls)",
        ));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_slugs() {
        assert_eq!(Slug::parse(" acme-2 ").expect("valid").as_str(), "acme-2");
    }

    #[test]
    fn refuses_bad_slugs() {
        for bad in [
            "",
            "ab",
            "Acme",
            "acme_x",
            "1acme",
            "acme-",
            "ac--me",
            "аcme",
            "new",
            &"a".repeat(41),
        ] {
            assert!(Slug::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(
            parse_name("name", "  Acme Ltd ").expect("valid"),
            "Acme Ltd"
        );
        assert_eq!(
            parse_name("name", "Café Zoë").expect("unicode is fine"),
            "Café Zoë"
        );
        assert!(parse_name("name", "   ").is_err());
        assert!(parse_name("name", "a\u{0}b").is_err());
        assert!(parse_name("name", &"x".repeat(101)).is_err());
        assert!(
            parse_name("name", "Acme\u{202E}dtL").is_err(),
            "a bidi override"
        );
        assert!(
            parse_name("name", "Ac\u{200B}me").is_err(),
            "a zero-width space"
        );
    }
}
