//! Exit codes and the one-line failure every command ends with when it does not succeed.

use std::fmt;

/// The documented exit codes (README, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Something failed: the server refused the request, an object ended `FAILED`, a wait timed
    /// out, a file could not be read.
    Failed = 1,
    /// The command line itself is wrong (unknown flag, missing context, bad value).
    Usage = 2,
    /// Not signed in, a revoked or expired token, or not allowed.
    Auth = 3,
    /// Qleet or the control plane cannot be reached or is not ready; retry later.
    Unavailable = 4,
}

/// Why a command failed: an exit code and a one-line reason (with the GraphQL code and a hint
/// when the server gave one).
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure {
            exit,
            message: message.into(),
        }
    }
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(Exit::Failed, message)
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }
    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(Exit::Auth, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Exit::Unavailable, message)
    }

    /// A failure for a GraphQL or gateway error `code`: the exit code it maps to and a hint.
    pub fn from_code(code: &str, message: &str, extensions: &serde_json::Value) -> Self {
        let exit = match code {
            "UNAUTHENTICATED" | "FORBIDDEN" | "CSRF" => Exit::Auth,
            "UNAVAILABLE"
            | "INTERNAL"
            | "STRIPE_UNAVAILABLE"
            | "CONTROL_PLANE_NOT_READY"
            | "CONTROL_PLANE_UNREACHABLE"
            | "CONTROL_PLANE_FAILED" => Exit::Unavailable,
            _ => Exit::Failed,
        };
        let hint = match code {
            "UNAUTHENTICATED" => {
                " (sign in again with `qleetctl login`, or set QLEET_TOKEN)".to_owned()
            }
            "QUOTA_EXCEEDED" => match extensions.get("upgradeTo").and_then(|v| v.as_str()) {
                Some(plan) => format!(" (upgrade to the {plan} plan to allow more)"),
                None => " (no larger plan allows more)".to_owned(),
            },
            "INVALID_INPUT" => match extensions.get("field").and_then(|v| v.as_str()) {
                Some(field) => format!(" (field {field})"),
                None => String::new(),
            },
            "INTERNAL" => match extensions.get("requestId").and_then(|v| v.as_str()) {
                Some(id) => format!(" (request id {id})"),
                None => String::new(),
            },
            "CONTROL_PLANE_NOT_READY" => " (wait for it: `qleetctl cp list`)".to_owned(),
            "CONTROL_PLANE_SUSPENDED" => " (resume it: `qleetctl cp resume`)".to_owned(),
            _ => String::new(),
        };
        let message = message.trim().trim_end_matches('.');
        Failure::new(exit, format!("{code}: {message}{hint}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, whatever the server sent.
        f.write_str(&self.message.replace(['\n', '\r'], " "))
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn codes_map_to_the_documented_exits_with_hints() {
        let f = Failure::from_code("QUOTA_EXCEEDED", "too many", &json!({"upgradeTo": "team"}));
        assert_eq!(f.exit, Exit::Failed);
        assert_eq!(
            f.message,
            "QUOTA_EXCEEDED: too many (upgrade to the team plan to allow more)"
        );
        assert_eq!(
            Failure::from_code("FORBIDDEN", "no", &json!({})).exit,
            Exit::Auth
        );
        assert_eq!(
            Failure::from_code("CONTROL_PLANE_NOT_READY", "no", &json!({})).exit,
            Exit::Unavailable
        );
        assert_eq!(Failure::failed("a\nb").to_string(), "a b");
    }
}
