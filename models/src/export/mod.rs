//! Export of the goal-success model to TensorFlow Lite, for the phone.
//!
//! A fitted [`LogisticRegression`] becomes a `.tflite` flatbuffer ([`tflite`]) written with the
//! generated schema builders of `tract_tflite::tflite` (no `flatc`, no Python), plus a
//! [`ModelMetadata`] JSON document that travels next to it: name, version, feature names and
//! order, the standardisation, training window, metrics, the file's sha256 and **golden
//! vectors** — inputs with the probabilities the Rust model gives for them — so a device can
//! prove that the file it loaded computes what the server computes before it serves a single
//! prediction.
//!
//! Two variants exist ([`Variant`]):
//! - **float32**: `features [1,n] → SUB mean → MUL 1/std → FULLY_CONNECTED (w [1,n], b [1]) →
//!   LOGISTIC → probability [1,1]`. This is what the `device` crate runs in tract; it agrees with
//!   the Rust model to about 1e-7.
//! - **int8 dynamic range**: the same graph with the FULLY_CONNECTED weights stored as symmetric
//!   int8 with a scale ("hybrid" kernel: float activations, int8 weights, the input quantised per
//!   call), as LiteRT's dynamic-range quantisation produces. For LiteRT consumers only: tract
//!   0.23 computes quantized FULLY_CONNECTED wrongly. [`quant`] emulates LiteRT's kernel
//!   bit-for-bit, and the export refuses an int8 file whose golden vectors drift beyond its
//!   tolerance.
//!
//! [`crypto`] holds the AES-256-GCM helpers both the server (encryption at rest, encrypted
//! downloads) and the device (decryption) use. Nothing here does I/O: the caller writes the bytes.

pub mod crypto;
pub mod metadata;
pub mod quant;
pub mod tflite;

use crate::predict::logistic::LogisticRegression;

pub use crypto::{decrypt, encrypt, CryptoError, ModelKey};
pub use metadata::{
    sha256_hex, GoldenVector, ModelMetadata, TensorSpec, TrainingWindow, Variant, FORMAT,
};
pub use tflite::{check_tflite, write_tflite, TfliteSummary, INPUT_NAME, OUTPUT_NAME};

/// Everything that can go wrong when exporting or checking an exported model.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExportError {
    /// The model cannot be expressed as the exported graph (wrong width, non-finite numbers).
    #[error("model cannot be exported: {reason}")]
    InvalidModel { reason: String },
    /// The int8 file would not reproduce the float model within its tolerance.
    #[error(
        "int8 quantisation error {max_error:.2e} on the golden vectors exceeds the tolerance {tolerance:.0e}"
    )]
    Quantization { max_error: f64, tolerance: f64 },
    /// Bytes that are not a TFLite file of the exported shape.
    #[error("not a valid Momentum TFLite model: {reason}")]
    InvalidTflite { reason: String },
    /// Metadata that does not describe the file or is inconsistent.
    #[error("invalid model metadata: {reason}")]
    InvalidMetadata { reason: String },
}

/// What to export besides the model itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// Model name, as in `/v1/models/{name}` (e.g. `success`).
    pub name: String,
    pub version: u64,
    pub variant: Variant,
    /// When the model was trained (unix ms).
    pub created_ms: i64,
    /// Names of the raw features in input order; [`crate::features::FEATURE_NAMES`] by default.
    pub feature_names: Vec<String>,
    /// The feature definitions the model was trained with.
    pub feature_params: crate::features::FeatureParams,
    pub training_window: Option<TrainingWindow>,
    pub metrics: Option<crate::predict::metrics::ClassificationReport>,
    /// The decision threshold the server uses, if any.
    pub threshold: Option<f64>,
    /// Extra golden inputs (raw features) besides the generated ones, e.g. real training rows.
    pub extra_golden_rows: Vec<Vec<f64>>,
    /// Number of generated golden vectors (default 8).
    pub golden_count: usize,
}

impl ExportOptions {
    /// Options for model `name` version `version`, float32, with the app's feature set.
    pub fn new(name: impl Into<String>, version: u64, variant: Variant) -> Self {
        Self {
            name: name.into(),
            version,
            variant,
            created_ms: 0,
            feature_names: crate::features::FEATURE_NAMES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            feature_params: crate::features::FeatureParams::default(),
            training_window: None,
            metrics: None,
            threshold: None,
            extra_golden_rows: Vec::new(),
            golden_count: 8,
        }
    }
}

/// A `.tflite` file and the metadata that describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedModel {
    pub bytes: Vec<u8>,
    pub metadata: ModelMetadata,
}

/// Writes `model` as a `.tflite` file of `options.variant` and builds its metadata (sha256,
/// golden vectors computed by the Rust model).
///
/// For the int8 variant, the golden vectors are also run through an exact emulation of
/// LiteRT's hybrid kernel; an error larger than the variant's tolerance is refused
/// ([`ExportError::Quantization`]) rather than shipped.
pub fn export(
    model: &LogisticRegression,
    options: &ExportOptions,
) -> Result<ExportedModel, ExportError> {
    if options.feature_names.len() != model.n_features() {
        return Err(ExportError::InvalidModel {
            reason: format!(
                "{} feature names for a model of {} features",
                options.feature_names.len(),
                model.n_features()
            ),
        });
    }
    let description = format!(
        "Momentum {} v{} ({}): logistic regression",
        options.name,
        options.version,
        options.variant.as_str()
    );
    let bytes = write_tflite(model, options.variant, &description)?;
    let golden = metadata::golden_vectors(
        model,
        options.golden_count,
        &options.extra_golden_rows,
        options.version,
    )?;
    let tolerance = options.variant.tolerance();
    if options.variant == Variant::Int8DynamicRange {
        let graph = quant::HybridGraph::new(model)?;
        let max_error = golden
            .iter()
            .map(|g| (f64::from(graph.predict(&g.input)) - g.probability).abs())
            .fold(0.0, f64::max);
        if max_error > tolerance {
            return Err(ExportError::Quantization {
                max_error,
                tolerance,
            });
        }
    }
    let metadata = ModelMetadata {
        format: FORMAT.to_string(),
        name: options.name.clone(),
        version: options.version,
        variant: options.variant,
        created_ms: options.created_ms,
        input: TensorSpec {
            name: INPUT_NAME.to_string(),
            shape: vec![1, model.n_features()],
            dtype: "float32".to_string(),
        },
        output: TensorSpec {
            name: OUTPUT_NAME.to_string(),
            shape: vec![1, 1],
            dtype: "float32".to_string(),
        },
        feature_names: options.feature_names.clone(),
        feature_params: options.feature_params.clone(),
        standardization: model.standardizer.clone(),
        training_window: options.training_window.clone(),
        metrics: options.metrics.clone(),
        threshold: options.threshold,
        sha256: sha256_hex(&bytes),
        size: bytes.len() as u64,
        golden,
        golden_tolerance: tolerance,
    };
    Ok(ExportedModel { bytes, metadata })
}

#[cfg(test)]
mod tests;
