//! Who is calling: the gateway's signed request token or the standalone admin token, checked
//! against this control plane's configuration, and the role checks every resolver makes.

use axum::http::{HeaderMap, header};
use uuid::Uuid;

use crate::config::{ControlPlaneAuth, ControlPlaneConfig};
use crate::error::ApiError;
use crate::internal_token::{Claims, SubjectKind};
use qleet_protocol::Role;

/// This control plane's id, in the schema's data.
pub struct ControlPlaneId(pub Uuid);

/// Who is calling the control plane.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Forwarded by the management plane's gateway.
    Gateway(Claims),
    /// The standalone admin token.
    Admin,
}

impl Caller {
    /// The organisation plan's limits the management plane sent (none standalone).
    pub fn limits(&self) -> Option<&crate::internal_token::Limits> {
        match self {
            Caller::Gateway(claims) => claims.limits.as_ref(),
            Caller::Admin => None,
        }
    }

    /// Who this is, for records: `user:<id>`, `token:<id>` or `admin`.
    pub fn actor(&self) -> String {
        match self {
            Caller::Gateway(c) => format!("{}:{}", subject_kind(c.sub_kind), c.sub),
            Caller::Admin => "admin".to_owned(),
        }
    }

    /// Ok when the caller holds `role` or higher; else FORBIDDEN saying `what` needs it.
    pub fn require(&self, role: Role, what: &str) -> Result<(), ApiError> {
        if self.role().at_least(role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "{what} needs the {} role or higher in the organisation",
                format!("{role:?}").to_lowercase()
            )))
        }
    }

    pub fn role(&self) -> Role {
        match self {
            Caller::Gateway(claims) => claims.role,
            Caller::Admin => Role::Owner,
        }
    }
}

/// The caller named by `Authorization: Bearer ...`, or why not.
pub fn authenticate(config: &ControlPlaneConfig, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthenticated)?;
    match &config.auth {
        ControlPlaneAuth::Gateway(verifier) => {
            verifier.verify(token).map(Caller::Gateway).map_err(|e| {
                tracing::info!(reason = %e, "refused a request token");
                ApiError::Unauthenticated
            })
        }
        ControlPlaneAuth::Standalone { admin_token_hash } => {
            if &qleet_common::secrets::hash_secret(token) == admin_token_hash {
                Ok(Caller::Admin)
            } else {
                Err(ApiError::Unauthenticated)
            }
        }
    }
}

/// What kind of subject a gateway token names, as text for the API.
pub fn subject_kind(kind: SubjectKind) -> &'static str {
    match kind {
        SubjectKind::User => "user",
        SubjectKind::Token => "token",
    }
}
