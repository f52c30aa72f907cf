//! The error type of the models crate. Add a struct variant per failure kind; callers map these
//! to HTTP or CLI errors.

/// Everything that can go wrong inside a pure algorithm.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ModelError {
    /// Input data does not have the shape the algorithm needs.
    #[error("invalid input: {reason}")]
    InvalidInput { reason: String },
}
