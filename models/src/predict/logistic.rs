//! Logistic regression for binary outcomes (goal success), trained by full-batch gradient
//! descent on standardised features: at most 1000 iterations,
//! learning rate 0.01, early stop once the loss stops changing. The fitted model is plain data —
//! standardiser, weights, bias — so it serialises with serde and exports to TFLite as
//! `raw x → (x - mean) / std → w·z + b → sigmoid`.
//!
//! The step is `θ ← θ - lr · (mean gradient + l2 · w)`: the gradient is averaged over rows so the
//! learning rate does not depend on the data size, and standardisation makes every direction
//! equally scaled, so one rate suits all features. The bias starts at the log-odds of the base
//! rate, so iterations are spent on the weights rather than on finding the class balance. A step
//! that increases the loss is undone and the rate halved, so a rate too large for the data (many
//! correlated features) makes the fit slower, never divergent; at the default rate on
//! standardised features this does not trigger.

use serde::{Deserialize, Serialize};

use super::standardize::{check_labels, check_matrix, Standardizer};
use crate::ModelError;

/// Training hyper-parameters of [`LogisticRegression`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticParams {
    /// Upper bound on gradient steps (default 1000).
    pub max_iterations: usize,
    /// Step size applied to the mean gradient (default 0.01).
    pub learning_rate: f64,
    /// L2 penalty `l2/2 · ‖w‖²` added to the mean loss; the bias is not penalised (default 0).
    pub l2: f64,
    /// Stop early when the loss decreases by less than this between two iterations (default
    /// 1e-7).
    pub tolerance: f64,
}

impl Default for LogisticParams {
    fn default() -> Self {
        Self {
            max_iterations: 1000,
            learning_rate: 0.01,
            l2: 0.0,
            tolerance: 1e-7,
        }
    }
}

impl LogisticParams {
    fn validate(&self) -> Result<(), ModelError> {
        let ok = self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.l2.is_finite()
            && self.l2 >= 0.0
            && self.tolerance.is_finite()
            && self.tolerance >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(ModelError::InvalidInput {
                reason: format!("invalid logistic regression parameters: {self:?}"),
            })
        }
    }
}

/// A fitted logistic regression: `P(positive | x) = sigmoid(w · standardise(x) + b)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticRegression {
    /// The standardisation applied to raw features before the linear part.
    pub standardizer: Standardizer,
    /// One weight per standardised feature.
    pub weights: Vec<f64>,
    /// The intercept.
    pub bias: f64,
    /// Iterations (loss and gradient evaluations) actually run.
    pub iterations: usize,
    /// Penalised mean log loss on the training rows at the returned weights (infinite when
    /// `max_iterations` is 0).
    pub final_loss: f64,
}

impl LogisticRegression {
    /// Fits the model on `rows` (equal-length, finite) and their labels.
    pub fn fit(
        rows: &[Vec<f64>],
        labels: &[bool],
        params: &LogisticParams,
    ) -> Result<Self, ModelError> {
        params.validate()?;
        let d = check_matrix(rows)?;
        check_labels(rows.len(), labels.len())?;
        let standardizer = Standardizer::fit(rows)?;
        let n = rows.len();
        // Row-major standardised design matrix, streamed block by block once per iteration.
        let mut z = vec![0.0; n * d];
        for (row, out) in rows.iter().zip(z.chunks_exact_mut(d)) {
            standardizer.transform_into(row, out);
        }
        let y: Vec<f64> = labels.iter().map(|&l| if l { 1.0 } else { 0.0 }).collect();

        let base_rate = (y.iter().sum::<f64>() / n as f64).clamp(1e-6, 1.0 - 1e-6);
        let mut bias = (base_rate / (1.0 - base_rate)).ln();
        let mut weights = vec![0.0; d];
        let mut grad = vec![0.0; d];
        // The last point whose loss did not increase, with its gradient, to redo an overshooting
        // step with a smaller rate.
        let mut accepted_weights = weights.clone();
        let mut accepted_bias = bias;
        let mut accepted_grad = grad.clone();
        let mut accepted_grad_bias = 0.0;
        let mut learning_rate = params.learning_rate;
        let mut previous_loss = f64::INFINITY;
        let mut loss = f64::INFINITY;
        let mut iterations = 0;
        let inv_n = 1.0 / n as f64;
        let mut block = vec![0.0; BLOCK.min(n)];

        while iterations < params.max_iterations {
            let (total, grad_bias) =
                loss_and_gradient(&z, &y, &weights, bias, &mut grad, &mut block);
            loss = total * inv_n + 0.5 * params.l2 * dot(&weights, &weights);
            iterations += 1;
            if loss > previous_loss || !loss.is_finite() {
                // The step overshot: redo it from the accepted point with half the rate.
                learning_rate *= 0.5;
                loss = previous_loss;
                weights.copy_from_slice(&accepted_weights);
                bias = accepted_bias;
                descend(
                    &mut weights,
                    &mut bias,
                    &accepted_grad,
                    accepted_grad_bias,
                    inv_n,
                    learning_rate,
                    params.l2,
                );
                continue;
            }
            if previous_loss - loss < params.tolerance {
                break;
            }
            previous_loss = loss;
            accepted_weights.copy_from_slice(&weights);
            accepted_bias = bias;
            accepted_grad.copy_from_slice(&grad);
            accepted_grad_bias = grad_bias;
            descend(
                &mut weights,
                &mut bias,
                &grad,
                grad_bias,
                inv_n,
                learning_rate,
                params.l2,
            );
        }
        if loss == previous_loss && iterations > 0 {
            // The loop ended on a step that was never evaluated (the iteration cap, possibly
            // right after an overshoot): return the last evaluated point, whose loss is known.
            weights.copy_from_slice(&accepted_weights);
            bias = accepted_bias;
        }
        Ok(Self {
            standardizer,
            weights,
            bias,
            iterations,
            final_loss: loss,
        })
    }

    /// Number of raw features the model expects.
    pub fn n_features(&self) -> usize {
        self.weights.len()
    }

    /// The linear score `w · standardise(x) + b` (log-odds of the positive class).
    ///
    /// `x` must have [`Self::n_features`] entries (checked in debug builds; in release, missing
    /// trailing features contribute nothing and extra ones are ignored).
    pub fn decision_function(&self, x: &[f64]) -> f64 {
        debug_assert_eq!(x.len(), self.n_features());
        let s = &self.standardizer;
        let mut logit = self.bias;
        for (((&xj, &w), &m), &sd) in x.iter().zip(&self.weights).zip(&s.mean).zip(&s.std) {
            logit += w * (xj - m) / sd;
        }
        logit
    }

    /// Probability of the positive class for the raw feature vector `x`.
    pub fn predict_proba(&self, x: &[f64]) -> f64 {
        sigmoid(self.decision_function(x))
    }
}

/// Rows per block of [`loss_and_gradient`]: small enough for the block to stay in L1/L2 and
/// for `Π(1 + e_i) <= 2^BLOCK` to stay far from overflow.
const BLOCK: usize = 256;

/// Summed log loss and gradient (`grad` overwritten; the bias' component returned) of the
/// standardised row-major matrix `z` with targets `y` at `(weights, bias)`.
///
/// Rows are processed in blocks — logits, then residuals, then the gradient update — which
/// keeps independent work together for the CPU. The log loss of a row is
/// `max(l, 0) - y·l + ln(1 + e)` with `e = exp(-|l|)`; since every `1 + e` lies in `(1, 2]`, a
/// block's logarithms are summed as the logarithm of their product, one `ln` per block instead
/// of per row (the product is at most `2^BLOCK`, and the rounding error stays around 1e-14).
fn loss_and_gradient(
    z: &[f64],
    y: &[f64],
    weights: &[f64],
    bias: f64,
    grad: &mut [f64],
    block: &mut [f64],
) -> (f64, f64) {
    let d = weights.len();
    grad.iter_mut().for_each(|g| *g = 0.0);
    let mut total = 0.0;
    let mut grad_bias = 0.0;
    for (xs, ys) in z.chunks(BLOCK * d).zip(y.chunks(BLOCK)) {
        let residuals = &mut block[..ys.len()];
        for (r, x) in residuals.iter_mut().zip(xs.chunks_exact(d)) {
            *r = dot(weights, x) + bias;
        }
        let mut product = 1.0;
        for (r, &target) in residuals.iter_mut().zip(ys) {
            let logit = *r;
            let e = (-logit.abs()).exp();
            product *= 1.0 + e;
            total += logit.max(0.0) - target * logit;
            let p = if logit >= 0.0 {
                1.0 / (1.0 + e)
            } else {
                e / (1.0 + e)
            };
            *r = p - target;
            grad_bias += *r;
        }
        total += product.ln();
        for (&r, x) in residuals.iter().zip(xs.chunks_exact(d)) {
            for (g, &xj) in grad.iter_mut().zip(x) {
                *g += r * xj;
            }
        }
    }
    (total, grad_bias)
}

/// One gradient step `θ ← θ - lr · (grad / n + l2 · w)` (the bias is not penalised).
fn descend(
    weights: &mut [f64],
    bias: &mut f64,
    grad: &[f64],
    grad_bias: f64,
    inv_n: f64,
    learning_rate: f64,
    l2: f64,
) {
    for (w, g) in weights.iter_mut().zip(grad) {
        *w -= learning_rate * (g * inv_n + l2 * *w);
    }
    *bias -= learning_rate * grad_bias * inv_n;
}

/// Dot product with four independent accumulators, so the compiler can vectorise it (a single
/// running sum is a serial dependency chain under IEEE ordering).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0; 4];
    let a_chunks = a.chunks_exact(4);
    let b_chunks = b.chunks_exact(4);
    let tail: f64 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for k in 0..4 {
            acc[k] += ca[k] * cb[k];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// The logistic function, evaluated without overflow for large `|z|`.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::metrics::roc_auc;

    #[test]
    fn sigmoid_is_stable() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(1000.0) <= 1.0 && sigmoid(1000.0) > 0.999);
        assert!(sigmoid(-1000.0) >= 0.0 && sigmoid(-1000.0) < 1e-300);
        assert!((sigmoid(2.0) + sigmoid(-2.0) - 1.0).abs() < 1e-15);
    }

    #[test]
    fn blocked_loss_and_gradient_match_the_naive_sums() {
        // 700 rows: three blocks, the last one partial; some logits far in the tails.
        let d = 3;
        let n = 700;
        let z: Vec<f64> = (0..n * d)
            .map(|k| ((k * 7919) % 1000) as f64 / 50.0 - 10.0)
            .collect();
        let y: Vec<f64> = (0..n).map(|i| ((i * 31) % 3 == 0) as u8 as f64).collect();
        let weights = [1.5, -2.0, 3.0];
        let bias = 0.3;
        let mut grad = vec![0.0; d];
        let mut block = vec![0.0; BLOCK];
        let (total, grad_bias) = loss_and_gradient(&z, &y, &weights, bias, &mut grad, &mut block);
        let (mut naive_total, mut naive_bias, mut naive_grad) = (0.0, 0.0, vec![0.0; d]);
        for (x, &t) in z.chunks_exact(d).zip(&y) {
            let l: f64 = x.iter().zip(&weights).map(|(a, b)| a * b).sum::<f64>() + bias;
            naive_total += l.max(0.0) + (-l.abs()).exp().ln_1p() - t * l;
            let r = sigmoid(l) - t;
            naive_bias += r;
            for j in 0..d {
                naive_grad[j] += r * x[j];
            }
        }
        assert!((total - naive_total).abs() < 1e-9 * naive_total.abs().max(1.0));
        assert!((grad_bias - naive_bias).abs() < 1e-9);
        for j in 0..d {
            assert!((grad[j] - naive_grad[j]).abs() < 1e-9);
        }
    }

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f64> = (0..11).map(|i| i as f64 * 0.5).collect();
        let b: Vec<f64> = (0..11).map(|i| 3.0 - i as f64).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-12);
        assert_eq!(dot(&[], &[]), 0.0);
    }

    #[test]
    fn too_large_rate_backs_off_instead_of_diverging() {
        // Ten copies of one feature: curvature is ten times that of a single feature, so a rate
        // of 50 overshoots; the fit must still reach a sensible, finite model.
        let rows: Vec<Vec<f64>> = (0..40).map(|i| vec![(i % 20) as f64; 10]).collect();
        let labels: Vec<bool> = (0..40).map(|i| (i % 20) >= 10).collect();
        let params = LogisticParams {
            learning_rate: 50.0,
            ..LogisticParams::default()
        };
        let model = LogisticRegression::fit(&rows, &labels, &params).unwrap();
        assert!(model.final_loss.is_finite());
        assert!(model.final_loss < std::f64::consts::LN_2);
        assert!(model.predict_proba(&[19.0; 10]) > 0.9);
    }

    #[test]
    fn separates_a_separable_set_with_defaults() {
        // Label is x0 > 5; x1 is noise. Raw scales differ on purpose.
        let rows: Vec<Vec<f64>> = (0..40)
            .map(|i| vec![i as f64 / 4.0, ((i * 7) % 11) as f64 * 100.0])
            .collect();
        let labels: Vec<bool> = rows.iter().map(|r| r[0] > 5.0).collect();
        let model = LogisticRegression::fit(&rows, &labels, &LogisticParams::default()).unwrap();
        assert!(model.weights[0] > 0.0);
        assert!(model.weights[0].abs() > 5.0 * model.weights[1].abs());
        let probs: Vec<f64> = rows.iter().map(|r| model.predict_proba(r)).collect();
        assert_eq!(roc_auc(&probs, &labels).unwrap(), 1.0);
        assert!(model.predict_proba(&[9.0, 500.0]) > model.predict_proba(&[1.0, 500.0]));
    }

    #[test]
    fn larger_rate_fits_tighter_and_early_stop_triggers() {
        let rows: Vec<Vec<f64>> = (0..50).map(|i| vec![i as f64]).collect();
        let labels: Vec<bool> = (0..50).map(|i| (i * 37) % 50 < i).collect();
        let slow = LogisticRegression::fit(&rows, &labels, &LogisticParams::default()).unwrap();
        let fast_params = LogisticParams {
            learning_rate: 0.5,
            max_iterations: 100_000,
            tolerance: 1e-10,
            ..LogisticParams::default()
        };
        let fast = LogisticRegression::fit(&rows, &labels, &fast_params).unwrap();
        assert!(fast.final_loss < slow.final_loss);
        assert!(fast.iterations < 100_000, "converged before the cap");
    }

    #[test]
    fn base_rate_initialisation_matches_constant_labels_rate() {
        // A feature with no signal: the model should stay at the base rate (1/4).
        let rows = vec![vec![1.0], vec![2.0], vec![1.0], vec![2.0]];
        let labels = [true, false, false, false];
        let params = LogisticParams {
            max_iterations: 0,
            ..LogisticParams::default()
        };
        let model = LogisticRegression::fit(&rows, &labels, &params).unwrap();
        assert!((model.predict_proba(&[1.5]) - 0.25).abs() < 1e-9);
    }

    #[test]
    fn l2_shrinks_weights() {
        let rows: Vec<Vec<f64>> = (0..30).map(|i| vec![i as f64]).collect();
        let labels: Vec<bool> = (0..30).map(|i| i >= 15).collect();
        let params = LogisticParams {
            learning_rate: 0.5,
            ..LogisticParams::default()
        };
        let plain = LogisticRegression::fit(&rows, &labels, &params).unwrap();
        let ridge = LogisticRegression::fit(
            &rows,
            &labels,
            &LogisticParams {
                l2: 0.1,
                ..params.clone()
            },
        )
        .unwrap();
        assert!(ridge.weights[0].abs() < plain.weights[0].abs());
    }

    #[test]
    fn probability_is_the_documented_formula() {
        let rows = vec![vec![0.0, 1.0], vec![1.0, 3.0], vec![2.0, 2.0]];
        let labels = [false, true, true];
        let model = LogisticRegression::fit(&rows, &labels, &LogisticParams::default()).unwrap();
        let x = [1.5, 2.5];
        let s = &model.standardizer;
        let logit: f64 = model.bias
            + (0..2)
                .map(|j| model.weights[j] * (x[j] - s.mean[j]) / s.std[j])
                .sum::<f64>();
        assert!((model.predict_proba(&x) - sigmoid(logit)).abs() < 1e-15);
        fn is_serde<T: Serialize + for<'de> Deserialize<'de>>() {}
        is_serde::<LogisticRegression>();
    }

    #[test]
    fn rejects_bad_input() {
        let p = LogisticParams::default();
        assert!(LogisticRegression::fit(&[], &[], &p).is_err());
        assert!(LogisticRegression::fit(&[vec![1.0]], &[true, false], &p).is_err());
        let bad = LogisticParams {
            learning_rate: -1.0,
            ..p
        };
        assert!(LogisticRegression::fit(&[vec![1.0]], &[true], &bad).is_err());
    }
}
