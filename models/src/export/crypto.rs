//! AES-256-GCM for model files: at rest on the server, in transit to devices that hold the
//! key. Pure functions shared by both sides, so they cannot disagree on the layout:
//!
//! ```text
//! nonce (12 bytes, random per encryption) ‖ ciphertext ‖ tag (16 bytes)
//! ```
//!
//! The key is 32 bytes, written in configuration as 64 hex digits. A wrong key and a damaged
//! ciphertext are the same failure to GCM (the tag does not verify), reported as
//! [`CryptoError::Authentication`]. The key's `Debug` output is redacted so it cannot leak into
//! logs.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Nonce};

/// Length of the key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of the nonce prefixed to every ciphertext.
pub const NONCE_LEN: usize = 12;
/// Length of the authentication tag that ends every ciphertext.
pub const TAG_LEN: usize = 16;

/// Why encryption or decryption failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("model key must be {KEY_LEN} bytes, got {len}")]
    KeyLength { len: usize },
    #[error("model key must be {} hex digits", KEY_LEN * 2)]
    KeyFormat,
    #[error(
        "encrypted model is {len} bytes, shorter than nonce and tag ({} bytes)",
        NONCE_LEN + TAG_LEN
    )]
    TooShort { len: usize },
    #[error("decryption failed: wrong model key or corrupted data")]
    Authentication,
    #[error("encryption failed")]
    Encryption,
}

/// A 256-bit AES-GCM key.
#[derive(Clone, PartialEq, Eq)]
pub struct ModelKey([u8; KEY_LEN]);

impl std::fmt::Debug for ModelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelKey(<redacted>)")
    }
}

impl ModelKey {
    /// A key from exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let key: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| CryptoError::KeyLength { len: bytes.len() })?;
        Ok(Self(key))
    }

    /// A key from 64 hex digits (surrounding whitespace ignored), as configuration holds it.
    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim().as_bytes();
        if text.len() != KEY_LEN * 2 {
            return Err(CryptoError::KeyFormat);
        }
        let mut key = [0u8; KEY_LEN];
        for (byte, pair) in key.iter_mut().zip(text.chunks_exact(2)) {
            let digit = |c: u8| (c as char).to_digit(16).ok_or(CryptoError::KeyFormat);
            *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Ok(Self(key))
    }

    /// A fresh random key (for tests and key generation tools).
    pub fn generate() -> Self {
        Self(Aes256Gcm::generate_key(&mut OsRng).into())
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.0.into())
    }
}

/// Encrypts `plaintext` under `key` with a fresh random nonce: `nonce ‖ ciphertext ‖ tag`.
pub fn encrypt(key: &ModelKey, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    encrypt_with_nonce(key, nonce.into(), plaintext)
}

/// [`encrypt`] with a given nonce. A nonce must never be reused with the same key; this
/// exists for reproducible test vectors.
pub fn encrypt_with_nonce(
    key: &ModelKey,
    nonce: [u8; NONCE_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let sealed = key
        .cipher()
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .map_err(|_| CryptoError::Encryption)?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Decrypts `nonce ‖ ciphertext ‖ tag` produced by [`encrypt`].
pub fn decrypt(key: &ModelKey, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if data.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::TooShort { len: data.len() });
    }
    let (nonce, sealed) = data.split_at(NONCE_LEN);
    key.cipher()
        .decrypt(Nonce::from_slice(nonce), sealed)
        .map_err(|_| CryptoError::Authentication)
}
