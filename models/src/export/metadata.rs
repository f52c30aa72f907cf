//! The JSON document that travels with an exported `.tflite` file: what the model is, how its
//! input is laid out, how it was trained, the file's sha256, and golden vectors a consumer
//! replays to prove the file computes what the Rust model computes.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ExportError;
use crate::features::FeatureParams;
use crate::predict::logistic::LogisticRegression;
use crate::predict::metrics::ClassificationReport;
use crate::predict::standardize::Standardizer;

/// Format tag of [`ModelMetadata::format`]; bumped on incompatible changes.
pub const FORMAT: &str = "momentum-tflite/1";

/// Which graph the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// Float32 weights and activations: what tract (the device crate) runs.
    Float32,
    /// Int8 symmetric weights in FULLY_CONNECTED with float activations (LiteRT's
    /// dynamic-range quantisation), for LiteRT consumers.
    Int8DynamicRange,
}

impl Variant {
    /// Largest accepted difference between the file's outputs and the Rust model's
    /// probabilities on the golden vectors: 1e-5 for float32, 1e-2 for int8.
    pub fn tolerance(self) -> f64 {
        match self {
            Variant::Float32 => 1e-5,
            Variant::Int8DynamicRange => 1e-2,
        }
    }

    /// The variant's name in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Float32 => "float32",
            Variant::Int8DynamicRange => "int8_dynamic_range",
        }
    }

    /// Conventional file name of the variant.
    pub fn file_name(self) -> &'static str {
        match self {
            Variant::Float32 => "model.tflite",
            Variant::Int8DynamicRange => "model_int8.tflite",
        }
    }
}

/// Name, shape and element type of an input or output tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
}

/// The span of events the model was trained on (unix ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingWindow {
    pub from_ms: i64,
    pub to_ms: i64,
}

/// One input row (raw features, float32 as the file takes them) and the probability the Rust
/// model gives for exactly that row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldenVector {
    pub input: Vec<f32>,
    pub probability: f64,
}

/// Metadata of one exported file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// [`FORMAT`].
    pub format: String,
    /// Model name (`success`).
    pub name: String,
    pub version: u64,
    pub variant: Variant,
    /// Training time (unix ms).
    pub created_ms: i64,
    pub input: TensorSpec,
    pub output: TensorSpec,
    /// Raw feature names in input order.
    pub feature_names: Vec<String>,
    /// Feature definitions the model was trained with; a device computing features must use
    /// the same.
    pub feature_params: FeatureParams,
    /// Standardisation baked into the graph (SUB mean, MUL 1/std), for auditing.
    pub standardization: Standardizer,
    #[serde(default)]
    pub training_window: Option<TrainingWindow>,
    /// Held-out evaluation of this version.
    #[serde(default)]
    pub metrics: Option<ClassificationReport>,
    /// Decision threshold the server applies, if any.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Lower-case hex sha256 of the plain (decrypted) `.tflite` bytes.
    pub sha256: String,
    /// Size of the plain file in bytes.
    pub size: u64,
    pub golden: Vec<GoldenVector>,
    /// Largest accepted `|file output − golden probability|`.
    pub golden_tolerance: f64,
}

impl ModelMetadata {
    /// Parses metadata JSON.
    pub fn from_json(json: &[u8]) -> Result<Self, ExportError> {
        let metadata: Self =
            serde_json::from_slice(json).map_err(|e| ExportError::InvalidMetadata {
                reason: e.to_string(),
            })?;
        metadata.check_consistency()?;
        Ok(metadata)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks the metadata against itself: format, widths, golden vectors, tolerance.
    pub fn check_consistency(&self) -> Result<(), ExportError> {
        let bad = |reason: String| Err(ExportError::InvalidMetadata { reason });
        if self.format != FORMAT {
            return bad(format!(
                "format {:?} is not {FORMAT:?}",
                self.format.as_str()
            ));
        }
        let n = self.feature_names.len();
        if n == 0 || self.input.shape != [1, n] || self.output.shape != [1, 1] {
            return bad(format!(
                "{n} features but input shape {:?} and output shape {:?}",
                self.input.shape, self.output.shape
            ));
        }
        if self.standardization.mean.len() != n || self.standardization.std.len() != n {
            return bad("standardisation width differs from the feature count".to_string());
        }
        if self.golden.is_empty() {
            return bad("no golden vectors".to_string());
        }
        if let Some(i) = self.golden.iter().position(|g| {
            g.input.len() != n
                || !g.input.iter().all(|v| v.is_finite())
                || !(0.0..=1.0).contains(&g.probability)
        }) {
            return bad(format!("golden vector {i} is malformed"));
        }
        if !(self.golden_tolerance.is_finite() && self.golden_tolerance > 0.0) {
            return bad(format!(
                "golden tolerance {} is not positive",
                self.golden_tolerance
            ));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad(format!("sha256 {:?} is not 64 hex digits", self.sha256));
        }
        Ok(())
    }

    /// Checks that `bytes` are the file this metadata describes (size and sha256).
    pub fn check_file(&self, bytes: &[u8]) -> Result<(), ExportError> {
        if bytes.len() as u64 != self.size {
            return Err(ExportError::InvalidMetadata {
                reason: format!("file is {} bytes, metadata says {}", bytes.len(), self.size),
            });
        }
        let actual = sha256_hex(bytes);
        if !actual.eq_ignore_ascii_case(&self.sha256) {
            return Err(ExportError::InvalidMetadata {
                reason: format!("sha256 mismatch: file {actual}, metadata {}", self.sha256),
            });
        }
        Ok(())
    }
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest.iter() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Golden vectors of `model`: the standardisation mean (z = 0), then `count − 1` rows with
/// standardised values drawn uniformly in [−2, 2] (a seeded generator, so one version always
/// gets the same rows), then `extra` rows. Inputs are rounded to float32 first and the
/// probability computed on the rounded row, so the file and the model see the same numbers.
pub(crate) fn golden_vectors(
    model: &LogisticRegression,
    count: usize,
    extra: &[Vec<f64>],
    seed: u64,
) -> Result<Vec<GoldenVector>, ExportError> {
    let s = &model.standardizer;
    let n = model.n_features();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6d6f_6d65_6e74_756d);
    let mut rows: Vec<Vec<f64>> = Vec::with_capacity(count + extra.len());
    if count > 0 {
        rows.push(s.mean.clone());
    }
    for _ in 1..count {
        rows.push(
            (0..n)
                .map(|j| s.mean[j] + s.std[j] * rng.gen_range(-2.0..=2.0))
                .collect(),
        );
    }
    rows.extend(extra.iter().cloned());
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| {
            if row.len() != n || !row.iter().all(|v| v.is_finite()) {
                return Err(ExportError::InvalidModel {
                    reason: format!("golden row {i} is not {n} finite numbers"),
                });
            }
            let input: Vec<f32> = row.iter().map(|&v| v as f32).collect();
            let rounded: Vec<f64> = input.iter().map(|&v| f64::from(v)).collect();
            Ok(GoldenVector {
                probability: model.predict_proba(&rounded),
                input,
            })
        })
        .collect()
}
