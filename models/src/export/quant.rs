//! Int8 dynamic-range quantisation of the FULLY_CONNECTED weights, and an exact emulation of
//! the LiteRT kernel that runs it, so the export can measure the int8 file's error without an
//! interpreter.
//!
//! LiteRT's "hybrid" FULLY_CONNECTED (float input and output, int8 weights) quantises each input
//! row symmetrically on the fly — `s_x = max|x| / 127`, `q_x = clamp(round(x / s_x), ±127)` —
//! takes the integer dot product with the int8 weights, and rescales: `y = b + (q_w·q_x) · s_x ·
//! s_w`. The weights were quantised the same way once, at export (`s_w = max|w| / 127`). The
//! SUB, MUL and LOGISTIC around it stay in float32.

use super::ExportError;
use crate::predict::logistic::LogisticRegression;

/// Symmetric int8 values and their scale: `w ≈ values · scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeights {
    pub values: Vec<i8>,
    pub scale: f32,
}

/// Quantises `values` symmetrically to int8 as TFLite's `SymmetricQuantizeFloats` does
/// (scale `max|v| / 127`; all zeros get scale 1).
pub fn quantize_symmetric(values: &[f32]) -> QuantizedWeights {
    let range = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if range == 0.0 {
        return QuantizedWeights {
            values: vec![0; values.len()],
            scale: 1.0,
        };
    }
    let inverse = 127.0 / range;
    QuantizedWeights {
        values: values
            .iter()
            .map(|v| (v * inverse).round().clamp(-127.0, 127.0) as i8)
            .collect(),
        scale: range / 127.0,
    }
}

/// The int8 graph, evaluated the way LiteRT evaluates it.
#[derive(Debug, Clone)]
pub struct HybridGraph {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    weights: QuantizedWeights,
    bias: f32,
}

impl HybridGraph {
    /// The graph of the int8 export of `model`.
    pub fn new(model: &LogisticRegression) -> Result<Self, ExportError> {
        let s = &model.standardizer;
        if s.mean.len() != model.n_features() || s.std.len() != model.n_features() {
            return Err(ExportError::InvalidModel {
                reason: "standardiser width differs from the weights".to_string(),
            });
        }
        let weights: Vec<f32> = model.weights.iter().map(|&w| w as f32).collect();
        Ok(Self {
            mean: s.mean.iter().map(|&m| m as f32).collect(),
            inv_std: s.std.iter().map(|&sd| (1.0 / sd) as f32).collect(),
            weights: quantize_symmetric(&weights),
            bias: model.bias as f32,
        })
    }

    /// The probability the int8 file gives for the raw features `x`.
    pub fn predict(&self, x: &[f32]) -> f32 {
        let z: Vec<f32> = x
            .iter()
            .zip(&self.mean)
            .zip(&self.inv_std)
            .map(|((&x, &m), &k)| (x - m) * k)
            .collect();
        let q = quantize_symmetric(&z);
        let dot: i32 = q
            .values
            .iter()
            .zip(&self.weights.values)
            .map(|(&a, &b)| i32::from(a) * i32::from(b))
            .sum();
        let logit = self.bias + dot as f32 * (q.scale * self.weights.scale);
        1.0 / (1.0 + (-logit).exp())
    }
}
