//! The error type of the device crate. Every refusal says what was refused and why, so the host
//! app can log it and keep serving the previous model.

use std::time::Duration;

use momentum_models::export::{CryptoError, ExportError};

/// Everything that can go wrong on the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// No model has been loaded yet (or it was cleared).
    #[error("no model loaded")]
    NoModel,
    /// The bytes are not a model this crate can run (damaged, foreign, wrong shape).
    #[error("invalid model file: {reason}")]
    InvalidModel { reason: String },
    /// Metadata is malformed or does not describe the file (size, sha256, features).
    #[error("model metadata rejected: {reason}")]
    InvalidMetadata { reason: String },
    /// The file's sha256 differs from the one the metadata (or the server) announced.
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    Checksum { expected: String, actual: String },
    /// Decryption failed: wrong key, damaged ciphertext, or no key for an encrypted model.
    #[error("model decryption failed: {0}")]
    Decryption(#[from] CryptoError),
    /// An encrypted model arrived and no key is configured.
    #[error("model is encrypted but no model key is configured")]
    MissingKey,
    /// The model loaded but does not reproduce its golden vectors.
    #[error(
        "golden vector {index} differs: model gives {actual:.8}, metadata expects {expected:.8} (tolerance {tolerance:.0e})"
    )]
    GoldenMismatch {
        index: usize,
        expected: f64,
        actual: f64,
        tolerance: f64,
    },
    /// The interpreter refused the file or failed while running it.
    #[error("interpreter error: {0}")]
    Interpreter(String),
    /// No interpreter state became free within the timeout.
    #[error("no interpreter free within {timeout:?}")]
    Timeout { timeout: Duration },
    /// The input does not have the model's shape or holds non-finite numbers.
    #[error("invalid input: {reason}")]
    InvalidInput { reason: String },
    /// The server could not be reached or answered something unexpected.
    #[error("model server: {reason}")]
    Server { reason: String },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A CSV input could not be read.
    #[error("events CSV: {reason}")]
    Csv { reason: String },
}

impl From<ExportError> for DeviceError {
    fn from(e: ExportError) -> Self {
        match e {
            ExportError::InvalidTflite { reason } | ExportError::InvalidModel { reason } => {
                DeviceError::InvalidModel { reason }
            }
            ExportError::InvalidMetadata { reason } => DeviceError::InvalidMetadata { reason },
            e @ ExportError::Quantization { .. } => DeviceError::InvalidModel {
                reason: e.to_string(),
            },
        }
    }
}

impl DeviceError {
    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        DeviceError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
