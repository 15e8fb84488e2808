//! Short-lived tokens the management plane mints for a tenant's control plane: Ed25519-signed
//! claims naming who is calling, from which organisation, for which control plane, with which
//! role, until when. The control plane holds only the public key.
//!
//! Format: `v1.<base64url(claims JSON)>.<base64url(signature over "v1.<claims>")>`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Role;

const VERSION: &str = "v1";

/// Who a request through the gateway comes from, as the control plane sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// `user` or `token`.
    pub sub_kind: SubjectKind,
    /// The user id or API-token id.
    pub sub: Uuid,
    /// The organisation that owns the control plane.
    pub org: Uuid,
    /// The control plane the token is for; any other refuses it.
    pub cp: Uuid,
    pub role: Role,
    pub iat: DateTime<Utc>,
    pub exp: DateTime<Utc>,
    /// The organisation's plan limits the control plane enforces (agents, objects). Absent in
    /// tokens from before billing: then nothing is limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// What the organisation's plan allows inside a control plane, carried in every gateway token so
/// the control plane can refuse creations past a limit without asking the management plane.
///
/// ```text
/// if let Some(limits) = &claims.limits {
///     limits.check_objects(current_object_count)?;   // QUOTA_EXCEEDED naming plan and upgrade
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The organisation's plan id (`free`, `team`, ...).
    pub plan: String,
    /// The smallest larger plan, if there is one.
    #[serde(default)]
    pub upgrade_to: Option<String>,
    /// Most objects allowed; `None`: unlimited.
    #[serde(default)]
    pub max_objects: Option<u32>,
    /// Most agents allowed; `None`: unlimited.
    #[serde(default)]
    pub max_agents: Option<u32>,
}

impl Limits {
    /// The refusal for `what` (`"objects"`, `"agents"`) at `limit`.
    pub fn exceeded(&self, what: &str, limit: u32) -> QuotaExceeded {
        QuotaExceeded {
            limit: what.to_owned(),
            max: limit,
            plan: self.plan.clone(),
            upgrade_to: self.upgrade_to.clone(),
        }
    }

    /// Ok when one more object may be created while `current` exist.
    pub fn check_objects(&self, current: u64) -> Result<(), QuotaExceeded> {
        match self.max_objects {
            Some(max) if current >= u64::from(max) => Err(self.exceeded("objects", max)),
            _ => Ok(()),
        }
    }

    /// Ok when one more agent may be registered while `current` exist.
    pub fn check_agents(&self, current: u64) -> Result<(), QuotaExceeded> {
        match self.max_agents {
            Some(max) if current >= u64::from(max) => Err(self.exceeded("agents", max)),
            _ => Ok(()),
        }
    }
}

/// A plan limit reached: `limit` names what (`objects`, `agents`), `plan` the organisation's
/// plan, `upgrade_to` the smallest plan that allows more (if any). Servers answer it with the
/// `QUOTA_EXCEEDED` code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", quota_message(limit, *max, plan, upgrade_to.as_deref()))]
pub struct QuotaExceeded {
    pub limit: String,
    pub max: u32,
    pub plan: String,
    pub upgrade_to: Option<String>,
}

/// The words of a plan-limit refusal, the same from both planes.
pub fn quota_message(limit: &str, max: u32, plan: &str, upgrade_to: Option<&str>) -> String {
    match upgrade_to {
        Some(up) => format!(
            "the {plan} plan allows {max} {limit}; upgrade to the {up} plan for more (or delete some)"
        ),
        None => format!(
            "the {plan} plan allows {max} {limit}, the most any plan offers; delete some first"
        ),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    User,
    Token,
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is for another control plane")]
    WrongControlPlane,
}

/// The management plane's signing key.
pub struct Signer {
    key: SigningKey,
}

impl Signer {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        Signer {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// A key from its 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Signer {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// A key from its 32-byte seed, base64url-encoded.
    pub fn from_base64(seed: &str) -> Result<Self, TokenError> {
        let bytes: [u8; 32] = URL_SAFE_NO_PAD
            .decode(seed.trim())
            .map_err(|_| TokenError::Malformed)?
            .try_into()
            .map_err(|_| TokenError::Malformed)?;
        Ok(Signer {
            key: SigningKey::from_bytes(&bytes),
        })
    }

    /// The seed, base64url-encoded (keep it secret).
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.to_bytes())
    }

    /// The public key a control plane verifies with, base64url-encoded.
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.verifying_key().to_bytes())
    }

    /// Mints a token valid for `ttl` from now, without plan limits.
    pub fn mint(
        &self,
        sub_kind: SubjectKind,
        sub: Uuid,
        org: Uuid,
        cp: Uuid,
        role: Role,
        ttl: Duration,
    ) -> String {
        self.mint_with_limits(sub_kind, sub, org, cp, role, ttl, None)
    }

    /// Mints a token valid for `ttl` from now, carrying the organisation's plan limits.
    #[allow(clippy::too_many_arguments)]
    pub fn mint_with_limits(
        &self,
        sub_kind: SubjectKind,
        sub: Uuid,
        org: Uuid,
        cp: Uuid,
        role: Role,
        ttl: Duration,
        limits: Option<Limits>,
    ) -> String {
        let iat = Utc::now();
        self.sign(&Claims {
            sub_kind,
            sub,
            org,
            cp,
            role,
            iat,
            exp: iat + ttl,
            limits,
        })
    }

    /// Signs arbitrary claims (tests use this for expired ones).
    pub fn sign(&self, claims: &Claims) -> String {
        // Serialising plain data into a Vec cannot fail.
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let signed = format!("{VERSION}.{}", URL_SAFE_NO_PAD.encode(json));
        let signature = self.key.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }
}

/// A control plane's view: the public key and its own id.
#[derive(Debug, Clone)]
pub struct Verifier {
    key: VerifyingKey,
    control_plane: Uuid,
}

impl Verifier {
    pub fn new(public_key: &str, control_plane: Uuid) -> Result<Self, TokenError> {
        let bytes: [u8; 32] = URL_SAFE_NO_PAD
            .decode(public_key.trim())
            .map_err(|_| TokenError::Malformed)?
            .try_into()
            .map_err(|_| TokenError::Malformed)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| TokenError::Malformed)?;
        Ok(Verifier { key, control_plane })
    }

    /// Checks signature, expiry and audience; returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let payload = signed.strip_prefix("v1.").ok_or(TokenError::Malformed)?;
        let signature: [u8; 64] = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?
            .try_into()
            .map_err(|_| TokenError::Malformed)?;
        self.key
            .verify_strict(signed.as_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= Utc::now() {
            return Err(TokenError::Expired);
        }
        if claims.cp != self.control_plane {
            return Err(TokenError::WrongControlPlane);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mint(signer: &Signer, cp: Uuid, ttl: Duration) -> String {
        signer.mint(
            SubjectKind::User,
            Uuid::new_v4(),
            Uuid::new_v4(),
            cp,
            Role::Admin,
            ttl,
        )
    }

    #[test]
    fn a_fresh_token_verifies_and_carries_its_claims() {
        let signer = Signer::generate();
        let cp = Uuid::new_v4();
        let verifier = Verifier::new(&signer.public_key(), cp).expect("key");
        let claims = verifier
            .verify(&mint(&signer, cp, Duration::minutes(1)))
            .expect("valid");
        assert_eq!(claims.cp, cp);
        assert_eq!(claims.role, Role::Admin);
    }

    #[test]
    fn forged_expired_misdirected_and_tampered_tokens_are_refused() {
        let signer = Signer::generate();
        let cp = Uuid::new_v4();
        let verifier = Verifier::new(&signer.public_key(), cp).expect("key");
        let other = Signer::generate();
        assert_eq!(
            verifier.verify(&mint(&other, cp, Duration::minutes(1))),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verifier.verify(&mint(&signer, cp, Duration::seconds(-1))),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verifier.verify(&mint(&signer, Uuid::new_v4(), Duration::minutes(1))),
            Err(TokenError::WrongControlPlane)
        );
        // Raise the role inside a valid token: the signature no longer matches.
        let token = mint(&signer, cp, Duration::minutes(1));
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut claims: Claims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
        claims.role = Role::Owner;
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("json"));
        parts[1] = &forged;
        assert_eq!(
            verifier.verify(&parts.join(".")),
            Err(TokenError::BadSignature)
        );
        for junk in ["", "v1", "v1.x.y", "v2.a.b", "not a token"] {
            assert!(verifier.verify(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn limits_travel_in_the_token_and_old_tokens_still_parse() {
        let signer = Signer::generate();
        let cp = Uuid::new_v4();
        let verifier = Verifier::new(&signer.public_key(), cp).expect("key");
        let limits = Limits {
            plan: "free".into(),
            upgrade_to: Some("team".into()),
            max_objects: Some(25),
            max_agents: None,
        };
        let token = signer.mint_with_limits(
            SubjectKind::User,
            Uuid::new_v4(),
            Uuid::new_v4(),
            cp,
            Role::Viewer,
            Duration::minutes(1),
            Some(limits.clone()),
        );
        let claims = verifier.verify(&token).expect("valid");
        assert_eq!(claims.limits.as_ref(), Some(&limits));
        assert!(limits.check_objects(24).is_ok());
        let err = limits.check_objects(25).expect_err("at the limit");
        assert_eq!((err.limit.as_str(), err.max), ("objects", 25));
        assert!(err.to_string().contains("team"), "{err}");
        assert!(limits.check_agents(1_000_000).is_ok(), "no agent limit");
        // A token minted before billing existed has no `limits` field at all.
        let old = r#"{"sub_kind":"user","sub":"6f1c1e5e-8a4b-4b8e-9a31-1f0b0c1d2e3f","org":"6f1c1e5e-8a4b-4b8e-9a31-1f0b0c1d2e3f","cp":"6f1c1e5e-8a4b-4b8e-9a31-1f0b0c1d2e3f","role":"admin","iat":"2026-01-01T00:00:00Z","exp":"2026-01-01T00:05:00Z"}"#;
        let parsed: Claims = serde_json::from_str(old).expect("old claims parse");
        assert_eq!(parsed.limits, None);
    }

    #[test]
    fn keys_round_trip_through_base64() {
        let signer = Signer::generate();
        let again = Signer::from_base64(&signer.to_base64()).expect("seed");
        assert_eq!(signer.public_key(), again.public_key());
        assert!(Verifier::new("short", Uuid::new_v4()).is_err());
    }
}
