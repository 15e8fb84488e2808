//! What the pages and the backend exchange: the GraphQL helper every server function goes
//! through, the shapes shared by server and browser, and the readable form of errors.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

/// The message of an error that means "sign in first"; [`crate::components::ErrorBox`] adds a
/// sign-in link when it sees it.
pub const NOT_SIGNED_IN: &str = "You are not signed in.";

/// The message of an error that means "try again shortly" (the backend's database is
/// restarting, a control plane is starting): [`crate::components::ErrorBox`] loads the page's
/// data again by itself.
pub const UNAVAILABLE: &str = "Qleet is briefly unavailable.";
/// The same for a control plane that does not answer yet (starting, or restarting).
pub const CONTROL_PLANE_AWAY: &str = "The control plane is not answering yet.";

/// How long the UI waits before it asks again after a retryable error (the backend's
/// `Retry-After` is about as long).
pub const RETRY_SECONDS: u64 = 3;

/// A member's or token's role in an organisation, most powerful first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    Owner,
    Admin,
    Member,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Member, Role::Viewer];

    /// The GraphQL enum value, also used as the form value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "OWNER",
            Role::Admin => "ADMIN",
            Role::Member => "MEMBER",
            Role::Viewer => "VIEWER",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Role::Owner => "Owner",
            Role::Admin => "Admin",
            Role::Member => "Member",
            Role::Viewer => "Viewer",
        }
    }

    /// Whether this role may manage members, invitations and API tokens.
    pub fn is_admin(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// A part of a page that lower roles may not see: either its data or the backend's reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Access<T> {
    Allowed(T),
    Denied(String),
}

/// The sentence to show for an error, without the "error running server function" noise.
pub fn error_text(error: &ServerFnError) -> String {
    match error {
        ServerFnError::ServerError(message) => message.clone(),
        ServerFnError::Request(_) => {
            "Could not reach the server. Check your connection and try again.".to_owned()
        }
        ServerFnError::Args(message) | ServerFnError::MissingArg(message) => {
            format!("The form was incomplete or malformed ({message}).")
        }
        other => other.to_string(),
    }
}

/// Whether asking again shortly may succeed: the backend answered that it is briefly
/// unavailable, or the server could not be reached at all (restarting).
pub fn is_retryable(error: &ServerFnError) -> bool {
    match error {
        ServerFnError::ServerError(message) => {
            message == UNAVAILABLE || message == CONTROL_PLANE_AWAY
        }
        ServerFnError::Request(_) => true,
        _ => false,
    }
}

/// Whether `error` means the visitor has to sign in.
pub fn is_not_signed_in(error: &ServerFnError) -> bool {
    matches!(error, ServerFnError::ServerError(message) if message == NOT_SIGNED_IN)
}

/// Shows an RFC 3339 time as `2026-11-26 05:26 UTC`; the same on server and browser, so
/// hydration sees identical text.
pub fn format_time(value: &str) -> String {
    let bytes = value.as_bytes();
    match (value.get(..10), value.get(11..16)) {
        (Some(date), Some(time)) if matches!(bytes.get(10), Some(b'T' | b't' | b' ')) => {
            let utc = value.ends_with('Z') || value.ends_with('z') || value.ends_with("+00:00");
            if utc {
                format!("{date} {time} UTC")
            } else {
                format!(
                    "{date} {time} (UTC{})",
                    &value[value.len().saturating_sub(6)..]
                )
            }
        }
        _ => value.to_owned(),
    }
}

/// Percent-encodes `value` for use as one path segment or query value.
pub fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Whether `path` is a same-site absolute path, safe to pass on as `return_to`.
pub fn is_local_path(path: &str) -> bool {
    path.starts_with('/') && !path.starts_with("//") && !path.contains('\\')
}

#[cfg(feature = "ssr")]
pub(crate) use server::gql_raw;
#[cfg(feature = "ssr")]
pub use server::{cp_gql, gql, gql_access, refusal};

#[cfg(feature = "ssr")]
mod server {
    use super::{Access, CONTROL_PLANE_AWAY, NOT_SIGNED_IN, UNAVAILABLE};
    use leptos::prelude::ServerFnError;
    use serde::{Deserialize, de::DeserializeOwned};
    use serde_json::Value;

    /// The first error of a GraphQL answer, or a failure to get one.
    #[derive(Debug, Clone, PartialEq)]
    pub(crate) struct GqlFailure {
        /// `extensions.code`, such as `NOT_FOUND` or `FORBIDDEN`.
        pub code: Option<String>,
        pub message: String,
    }

    impl GqlFailure {
        fn local(message: impl Into<String>) -> Self {
            Self {
                code: None,
                message: message.into(),
            }
        }

        pub fn is(&self, code: &str) -> bool {
            self.code.as_deref() == Some(code)
        }
    }

    /// A server function's refusal with `code` (as in GraphQL's `extensions.code`: `NOT_FOUND`,
    /// `INVALID_INPUT`, ...) and a sentence for the visitor; answered with the code's 4xx.
    pub fn refusal(code: &str, message: impl Into<String>) -> ServerFnError {
        crate::backend::Refusal::note(Some(code));
        ServerFnError::ServerError(message.into())
    }

    impl From<GqlFailure> for ServerFnError {
        fn from(failure: GqlFailure) -> Self {
            crate::backend::Refusal::note(failure.code.as_deref());
            let message = match failure.code.as_deref() {
                Some("UNAUTHENTICATED") => NOT_SIGNED_IN.to_owned(),
                // Retryable: the page asks again by itself (see `is_retryable`).
                Some("UNAVAILABLE") => UNAVAILABLE.to_owned(),
                Some("CONTROL_PLANE_UNREACHABLE" | "CONTROL_PLANE_NOT_READY") => {
                    CONTROL_PLANE_AWAY.to_owned()
                }
                Some("CSRF") => {
                    "This form has expired or belongs to another session. Reload the page and \
                     try again."
                        .to_owned()
                }
                _ if failure.message.trim().is_empty() => {
                    "The server could not complete the request.".to_owned()
                }
                _ => failure.message,
            };
            ServerFnError::ServerError(message)
        }
    }

    /// Runs a GraphQL operation as the signed-in user and decodes its `data` as `T`; the first
    /// GraphQL error becomes a readable [`ServerFnError`]. Pass `csrf` for every mutation.
    pub async fn gql<T: DeserializeOwned>(
        query: &str,
        variables: Value,
        csrf: Option<String>,
    ) -> Result<T, ServerFnError> {
        gql_raw(query, variables, csrf)
            .await
            .map_err(ServerFnError::from)
    }

    /// Like [`gql`], but a `FORBIDDEN` answer becomes [`Access::Denied`] so the page can say
    /// why a section is hidden instead of failing.
    pub async fn gql_access<T: DeserializeOwned>(
        query: &str,
        variables: Value,
    ) -> Result<Access<T>, ServerFnError> {
        match gql_raw(query, variables, None).await {
            Ok(data) => Ok(Access::Allowed(data)),
            Err(failure) if failure.is("FORBIDDEN") => {
                Ok(Access::Denied(if failure.message.trim().is_empty() {
                    "Your role does not allow this.".to_owned()
                } else {
                    failure.message
                }))
            }
            Err(failure) => Err(failure.into()),
        }
    }

    /// [`gql`] keeping the error code, for callers that treat some codes as answers.
    pub(crate) async fn gql_raw<T: DeserializeOwned>(
        query: &str,
        variables: Value,
        csrf: Option<String>,
    ) -> Result<T, GqlFailure> {
        let (backend, parts) = crate::backend::current().map_err(GqlFailure::local)?;
        let response = backend
            .0
            .graphql(&parts, csrf, query.to_owned(), variables)
            .await;
        decode(response)
    }

    /// Like [`gql`], but on the tenant control plane `control_plane` (its own schema: objects,
    /// apply, plans), through the management gateway as the signed-in user.
    pub async fn cp_gql<T: DeserializeOwned>(
        control_plane: &str,
        query: &str,
        variables: Value,
        csrf: Option<String>,
    ) -> Result<T, ServerFnError> {
        let (backend, parts) = crate::backend::current().map_err(ServerFnError::new)?;
        let response = backend
            .0
            .control_plane_graphql(
                &parts,
                csrf,
                control_plane.to_owned(),
                query.to_owned(),
                variables,
            )
            .await;
        decode(response).map_err(ServerFnError::from)
    }

    #[derive(Deserialize)]
    struct Response {
        data: Option<Value>,
        #[serde(default)]
        errors: Vec<Error>,
    }

    #[derive(Deserialize)]
    struct Error {
        #[serde(default)]
        message: String,
        #[serde(default)]
        extensions: Option<Extensions>,
    }

    #[derive(Deserialize)]
    struct Extensions {
        code: Option<String>,
    }

    fn decode<T: DeserializeOwned>(response: Value) -> Result<T, GqlFailure> {
        let response: Response = serde_json::from_value(response)
            .map_err(|e| GqlFailure::local(format!("The server's answer was not GraphQL: {e}")))?;
        if let Some(error) = response.errors.into_iter().next() {
            return Err(GqlFailure {
                code: error.extensions.and_then(|x| x.code),
                message: error.message,
            });
        }
        let data = response
            .data
            .filter(|data| !data.is_null())
            .ok_or_else(|| GqlFailure::local("The server returned an empty answer."))?;
        serde_json::from_value(data).map_err(|e| {
            GqlFailure::local(format!("The server's answer had an unexpected shape: {e}"))
        })
    }

    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    mod tests {
        use super::*;
        use serde_json::json;

        #[derive(Debug, Deserialize, PartialEq)]
        struct Me {
            email: String,
        }

        #[derive(Debug, Deserialize, PartialEq)]
        struct Data {
            me: Me,
        }

        #[test]
        fn data_is_decoded_into_the_requested_type() {
            let data: Data = decode(json!({"data": {"me": {"email": "a@b.c"}}})).unwrap();
            assert_eq!(data.me.email, "a@b.c");
        }

        #[test]
        fn first_error_wins_over_partial_data() {
            let failure = decode::<Data>(json!({
                "data": null,
                "errors": [
                    {"message": "no such organisation", "extensions": {"code": "NOT_FOUND"}},
                    {"message": "second"}
                ]
            }))
            .unwrap_err();
            assert_eq!(failure.code.as_deref(), Some("NOT_FOUND"));
            assert_eq!(failure.message, "no such organisation");
        }

        #[test]
        fn unauthenticated_reads_as_the_sign_in_sentence() {
            let error = ServerFnError::from(GqlFailure {
                code: Some("UNAUTHENTICATED".into()),
                message: "missing session".into(),
            });
            assert!(crate::api::is_not_signed_in(&error));
        }

        #[test]
        fn transient_failures_read_as_retryable_and_refusals_do_not() {
            let error = |code: &str| {
                ServerFnError::from(GqlFailure {
                    code: Some(code.into()),
                    message: "database connection pool timed out".into(),
                })
            };
            for code in [
                "UNAVAILABLE",
                "CONTROL_PLANE_UNREACHABLE",
                "CONTROL_PLANE_NOT_READY",
            ] {
                assert!(crate::api::is_retryable(&error(code)), "{code}");
            }
            for code in [
                "FORBIDDEN",
                "NOT_FOUND",
                "INTERNAL",
                "CONTROL_PLANE_SUSPENDED",
            ] {
                assert!(!crate::api::is_retryable(&error(code)), "{code}");
            }
            assert_eq!(
                crate::api::error_text(&error("UNAVAILABLE")),
                crate::api::UNAVAILABLE
            );
        }

        #[test]
        fn missing_data_is_an_error_not_a_panic() {
            assert!(decode::<Data>(json!({})).is_err());
            assert!(decode::<Data>(json!({"data": {"me": 3}})).is_err());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_are_shown_to_the_minute() {
        assert_eq!(
            format_time("2026-11-26T05:26:09.123456Z"),
            "2026-11-26 05:26 UTC"
        );
        assert_eq!(
            format_time("2026-11-26T05:26:09+00:00"),
            "2026-11-26 05:26 UTC"
        );
        assert_eq!(
            format_time("2026-11-26T05:26:09+02:00"),
            "2026-11-26 05:26 (UTC+02:00)"
        );
        assert_eq!(format_time("yesterday"), "yesterday");
    }

    #[test]
    fn url_encoding_keeps_only_unreserved_characters() {
        assert_eq!(
            url_encode("/orgs/a b?c=d&é"),
            "%2Forgs%2Fa%20b%3Fc%3Dd%26%C3%A9"
        );
        assert_eq!(url_encode("acme-1_x.y~"), "acme-1_x.y~");
    }

    #[test]
    fn return_to_must_stay_on_this_site() {
        assert!(is_local_path("/orgs/acme"));
        assert!(!is_local_path("//evil.example/"));
        assert!(!is_local_path("https://evil.example/"));
        assert!(!is_local_path("/\\evil.example"));
    }

    #[test]
    fn roles_use_the_graphql_names() {
        for role in Role::ALL {
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{}\"", role.as_str()));
        }
        assert!(Role::Admin.is_admin() && !Role::Member.is_admin());
    }
}
