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

use crate::orgs::Role;

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

    /// Mints a token valid for `ttl` from now.
    pub fn mint(
        &self,
        sub_kind: SubjectKind,
        sub: Uuid,
        org: Uuid,
        cp: Uuid,
        role: Role,
        ttl: Duration,
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
    fn keys_round_trip_through_base64() {
        let signer = Signer::generate();
        let again = Signer::from_base64(&signer.to_base64()).expect("seed");
        assert_eq!(signer.public_key(), again.public_key());
        assert!(Verifier::new("short", Uuid::new_v4()).is_err());
    }
}
