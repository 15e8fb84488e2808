//! Keys derived from the one master secret: the Ed25519 key that signs gateway tokens, and the
//! XChaCha20-Poly1305 key that encrypts tenant database passwords at rest.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead as _, KeyInit as _};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};

use crate::config::ConfigError;
use crate::internal_token::Signer;

/// The derived keys.
pub struct Keys {
    /// Signs the tokens the gateway forwards to control planes.
    pub signer: Signer,
    cipher: XChaCha20Poly1305,
}

/// Decryption failed: wrong master secret or damaged data.
#[derive(Debug, thiserror::Error)]
#[error("cannot decrypt (was QLEET_SECRET_KEY changed?)")]
pub struct DecryptError;

fn derive(secret: &[u8], purpose: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"qleet\0");
    h.update(purpose.as_bytes());
    h.update(b"\0");
    h.update(secret);
    h.finalize().into()
}

impl Keys {
    /// A fresh master secret, base64url.
    pub fn generate_secret() -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn from_secret(secret: &SecretString) -> Result<Self, ConfigError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(secret.expose_secret().trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| ConfigError("QLEET_SECRET_KEY must be 32 bytes, base64url (e.g. `openssl rand -base64 32 | tr '+/' '-_' | tr -d =`)".into()))?;
        let signer = Signer::from_seed(derive(&bytes, "gateway-signing"));
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&derive(&bytes, "encryption")));
        Ok(Keys { signer, cipher })
    }

    /// `nonce || ciphertext`.
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        // Encryption into a Vec only fails for inputs beyond 256 GiB.
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), plaintext)
            .unwrap_or_default();
        [nonce.as_slice(), &ciphertext].concat()
    }

    pub fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>, DecryptError> {
        if data.len() < 24 {
            return Err(DecryptError);
        }
        let (nonce, ciphertext) = data.split_at(24);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), ciphertext)
            .map_err(|_| DecryptError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_round_trips_and_detects_the_wrong_key() {
        let keys = Keys::from_secret(&SecretString::from(Keys::generate_secret())).expect("keys");
        let sealed = keys.encrypt(b"tenant password");
        assert!(!sealed.windows(6).any(|w| w == b"tenant"));
        assert_eq!(keys.decrypt(&sealed).expect("open"), b"tenant password");
        let other = Keys::from_secret(&SecretString::from(Keys::generate_secret())).expect("keys");
        assert!(other.decrypt(&sealed).is_err());
        assert!(Keys::from_secret(&SecretString::from("short".to_owned())).is_err());
    }
}
