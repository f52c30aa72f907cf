//! The device protocol's header names, shared by the server (which reads and sets them) and the
//! `device` crate (which sends and reads them). HTTP header names are case-insensitive; these are
//! the spellings written on the wire.

/// Request header naming the model version a device serves (a decimal version or `none`).
pub const MODEL_VERSION_HEADER: &str = "X-Model-Version";
/// Request header with an opaque id the app chooses for the device.
pub const DEVICE_ID_HEADER: &str = "X-Device-Id";
/// Response header marking an encrypted model body.
pub const ENCRYPTION_HEADER: &str = "X-Model-Encryption";
/// Value of [`ENCRYPTION_HEADER`] for AES-256-GCM (`nonce ‖ ciphertext ‖ tag`).
pub const ENCRYPTION_AES_GCM: &str = "aes-256-gcm";
