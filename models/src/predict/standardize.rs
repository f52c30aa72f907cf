//! Feature standardisation `z = (x - mean) / std`, fitted on training rows and stored with the
//! model that was trained on `z`, so inference (in the server, on the device, in the exported
//! TFLite graph) applies exactly the same affine map. A constant feature gets `std = 1`: it
//! becomes 0 everywhere instead of a division by zero.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Per-feature mean and standard deviation of the training rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// Mean of each feature over the training rows.
    pub mean: Vec<f64>,
    /// Population standard deviation of each feature; 1 where it was 0 (constant feature).
    pub std: Vec<f64>,
}

impl Standardizer {
    /// Fits means and population standard deviations of `rows`, which must be non-empty, of
    /// equal length and finite.
    pub fn fit(rows: &[Vec<f64>]) -> Result<Self, ModelError> {
        let n_features = check_matrix(rows)?;
        let n = rows.len() as f64;
        let mut mean = vec![0.0; n_features];
        for row in rows {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += x;
            }
        }
        for m in &mut mean {
            *m /= n;
        }
        let mut var = vec![0.0; n_features];
        for row in rows {
            for ((v, &x), &m) in var.iter_mut().zip(row).zip(&mean) {
                *v += (x - m) * (x - m);
            }
        }
        let std = var
            .into_iter()
            .zip(&mean)
            .map(|(v, m)| {
                let s = (v / n).sqrt();
                // A feature that only varies by rounding noise around its mean is constant.
                if s > 1e-12 * m.abs().max(1.0) {
                    s
                } else {
                    1.0
                }
            })
            .collect();
        Ok(Self { mean, std })
    }

    /// Number of features this standardiser expects.
    pub fn n_features(&self) -> usize {
        self.mean.len()
    }

    /// Writes the standardised `row` into `out`. Both must have [`Self::n_features`] entries;
    /// extra entries on either side are left untouched.
    pub fn transform_into(&self, row: &[f64], out: &mut [f64]) {
        debug_assert_eq!(row.len(), self.n_features());
        debug_assert_eq!(out.len(), self.n_features());
        for (((o, &x), &m), &s) in out.iter_mut().zip(row).zip(&self.mean).zip(&self.std) {
            *o = (x - m) / s;
        }
    }

    /// The standardised copy of `row` (see [`Self::transform_into`]).
    pub fn transform(&self, row: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.n_features()];
        self.transform_into(row, &mut out);
        out
    }
}

/// Checks that `rows` is a non-empty matrix of finite numbers and returns its width.
pub(crate) fn check_matrix(rows: &[Vec<f64>]) -> Result<usize, ModelError> {
    let first = rows.first().ok_or_else(|| ModelError::InvalidInput {
        reason: "no training rows".to_string(),
    })?;
    let width = first.len();
    if width == 0 {
        return Err(ModelError::InvalidInput {
            reason: "rows have no features".to_string(),
        });
    }
    for (i, row) in rows.iter().enumerate() {
        if row.len() != width {
            return Err(ModelError::InvalidInput {
                reason: format!("row {i} has {} features, expected {width}", row.len()),
            });
        }
        if let Some(j) = row.iter().position(|x| !x.is_finite()) {
            return Err(ModelError::InvalidInput {
                reason: format!("feature {j} of row {i} is not a finite number"),
            });
        }
    }
    Ok(width)
}

/// Checks that there is one label per row.
pub(crate) fn check_labels(rows: usize, labels: usize) -> Result<(), ModelError> {
    if rows == labels {
        Ok(())
    } else {
        Err(ModelError::InvalidInput {
            reason: format!("{rows} rows but {labels} labels"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_mean_and_population_std() {
        let rows = vec![vec![1.0, 5.0], vec![3.0, 5.0]];
        let s = Standardizer::fit(&rows).unwrap();
        assert_eq!(s.mean, vec![2.0, 5.0]);
        // Second feature is constant: std 1, so it maps to 0.
        assert_eq!(s.std, vec![1.0, 1.0]);
        assert_eq!(s.transform(&[3.0, 5.0]), vec![1.0, 0.0]);
        assert_eq!(s.transform(&[1.0, 7.0]), vec![-1.0, 2.0]);
    }

    #[test]
    fn standardised_columns_have_zero_mean_unit_std() {
        let rows: Vec<Vec<f64>> = (0..10)
            .map(|i| vec![i as f64 * 3.0 + 1.0, (i * i) as f64])
            .collect();
        let s = Standardizer::fit(&rows).unwrap();
        let z: Vec<Vec<f64>> = rows.iter().map(|r| s.transform(r)).collect();
        for j in 0..2 {
            let mean: f64 = z.iter().map(|r| r[j]).sum::<f64>() / 10.0;
            let var: f64 = z.iter().map(|r| (r[j] - mean).powi(2)).sum::<f64>() / 10.0;
            assert!(mean.abs() < 1e-12);
            assert!((var - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn rejects_bad_matrices() {
        assert!(Standardizer::fit(&[]).is_err());
        assert!(Standardizer::fit(&[vec![]]).is_err());
        assert!(Standardizer::fit(&[vec![1.0], vec![1.0, 2.0]]).is_err());
        assert!(Standardizer::fit(&[vec![f64::NAN]]).is_err());
    }
}
