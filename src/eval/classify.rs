//! `momentum eval classify` (being written).

/// Placeholder until the classifier pipeline lands.
#[derive(Debug, thiserror::Error)]
#[error("not available yet")]
pub struct ClassifyError;

pub fn run(_args: &crate::cli::ClassifyArgs) -> Result<serde_json::Value, ClassifyError> {
    Err(ClassifyError)
}
