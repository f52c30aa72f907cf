//! One interface over the binary classifiers (logistic regression, random forest) and the
//! evaluation protocol shared by the trainer and `momentum eval classify`: a seeded, stratified
//! hold-out split of the training rows, and the choice of the F1-maximising decision threshold on
//! that hold-out (reported next to the default 0.5).

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::forest::{ForestParams, RandomForest};
use super::logistic::{LogisticParams, LogisticRegression};
use super::metrics::{best_f1_threshold, ThresholdChoice};
use super::standardize::check_labels;
use crate::ModelError;

/// Which classifier to train, with its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum ClassifierParams {
    /// Logistic regression.
    Logistic(LogisticParams),
    /// Random forest.
    Forest(ForestParams),
}

impl ClassifierParams {
    /// The app's logistic regression: 1000 iterations at learning rate 0.01.
    pub fn logistic() -> Self {
        Self::Logistic(LogisticParams::default())
    }

    /// The app's churn forest: 5 trees of depth 5, min samples 5.
    pub fn forest() -> Self {
        Self::Forest(ForestParams::default())
    }

    /// Logistic regression as `momentum eval classify` trains it on CSV tables: the app's
    /// 1000 iterations, but learning rate 0.5. One-hot encoded tables have many correlated,
    /// rarely active columns, whose directions 1000 steps of 0.01 leave far from the optimum
    /// (Telco churn: training loss 0.4220 and test ROC AUC 0.839 at 0.01; 0.4144 and 0.846 at
    /// 0.5, within 0.0002 of the converged loss). No step overshoots at 0.5 on that table, and
    /// the fit halves the rate on any overshoot, so other tables cannot make it diverge.
    pub fn logistic_for_tables() -> Self {
        Self::Logistic(LogisticParams {
            learning_rate: 0.5,
            ..LogisticParams::default()
        })
    }

    /// Short name of the model kind (`logistic` or `forest`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Logistic(_) => "logistic",
            Self::Forest(_) => "forest",
        }
    }
}

/// A fitted classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum Classifier {
    /// A fitted logistic regression.
    Logistic(LogisticRegression),
    /// A fitted random forest.
    Forest(RandomForest),
}

impl Classifier {
    /// Trains the classifier described by `params` on `rows` and `labels`.
    pub fn fit(
        rows: &[Vec<f64>],
        labels: &[bool],
        params: &ClassifierParams,
    ) -> Result<Self, ModelError> {
        Ok(match params {
            ClassifierParams::Logistic(p) => {
                Self::Logistic(LogisticRegression::fit(rows, labels, p)?)
            }
            ClassifierParams::Forest(p) => Self::Forest(RandomForest::fit(rows, labels, p)?),
        })
    }

    /// Probability of the positive class for one feature vector.
    pub fn predict_proba(&self, x: &[f64]) -> f64 {
        match self {
            Self::Logistic(m) => m.predict_proba(x),
            Self::Forest(m) => m.predict_proba(x),
        }
    }

    /// Probabilities for many rows, in order.
    pub fn predict_proba_all(&self, rows: &[Vec<f64>]) -> Vec<f64> {
        rows.iter().map(|x| self.predict_proba(x)).collect()
    }
}

/// Splits row indices `0..labels.len()` into (fit, validation) sets, sorted, with about
/// `fraction` of each class in validation (at least one row of a class with two or more rows,
/// and never all of them). Deterministic for a seed.
pub fn holdout_split(labels: &[bool], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut fit = Vec::new();
    let mut validation = Vec::new();
    for class in [false, true] {
        let mut members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        members.shuffle(&mut rng);
        let wanted = (fraction * members.len() as f64).round() as usize;
        let take = if members.len() >= 2 && fraction > 0.0 {
            wanted.clamp(1, members.len() - 1)
        } else {
            0
        };
        validation.extend_from_slice(&members[..take]);
        fit.extend_from_slice(&members[take..]);
    }
    fit.sort_unstable();
    validation.sort_unstable();
    (fit, validation)
}

/// The F1-maximising threshold of a classifier trained on `1 - fraction` of the rows and scored
/// on the stratified hold-out `fraction` ([`holdout_split`] with `seed`).
pub fn choose_threshold(
    rows: &[Vec<f64>],
    labels: &[bool],
    params: &ClassifierParams,
    fraction: f64,
    seed: u64,
) -> Result<ThresholdChoice, ModelError> {
    check_labels(rows.len(), labels.len())?;
    let (fit, validation) = holdout_split(labels, fraction, seed);
    if validation.is_empty() || fit.is_empty() {
        return Err(ModelError::InvalidInput {
            reason: format!(
                "{} rows are too few for a {fraction} validation split",
                rows.len()
            ),
        });
    }
    let pick_rows = |idx: &[usize]| idx.iter().map(|&i| rows[i].clone()).collect::<Vec<_>>();
    let pick_labels = |idx: &[usize]| idx.iter().map(|&i| labels[i]).collect::<Vec<_>>();
    let model = Classifier::fit(&pick_rows(&fit), &pick_labels(&fit), params)?;
    let probs = model.predict_proba_all(&pick_rows(&validation));
    best_f1_threshold(&probs, &pick_labels(&validation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_is_stratified_disjoint_and_seeded() {
        let labels: Vec<bool> = (0..100).map(|i| i % 4 == 0).collect();
        let (fit, val) = holdout_split(&labels, 0.2, 7);
        assert_eq!(fit.len() + val.len(), 100);
        assert_eq!(val.len(), 20);
        assert_eq!(val.iter().filter(|&&i| labels[i]).count(), 5);
        assert!(val.iter().all(|i| fit.binary_search(i).is_err()));
        assert_eq!(holdout_split(&labels, 0.2, 7), (fit.clone(), val.clone()));
        assert_ne!(holdout_split(&labels, 0.2, 8).1, val);
    }

    #[test]
    fn holdout_keeps_rare_classes_on_both_sides() {
        let labels = [true, true, false, false, false];
        let (fit, val) = holdout_split(&labels, 0.1, 1);
        assert!(val.iter().any(|&i| labels[i]) && fit.iter().any(|&i| labels[i]));
        let (fit, val) = holdout_split(&labels, 0.0, 1);
        assert!(val.is_empty() && fit.len() == 5);
    }

    #[test]
    fn both_models_learn_a_threshold_rule() {
        let rows: Vec<Vec<f64>> = (0..200)
            .map(|i| vec![(i % 50) as f64, (i % 7) as f64])
            .collect();
        let labels: Vec<bool> = rows.iter().map(|r| r[0] >= 35.0).collect();
        for params in [
            ClassifierParams::logistic(),
            ClassifierParams::forest(),
            ClassifierParams::logistic_for_tables(),
        ] {
            let choice = choose_threshold(&rows, &labels, &params, 0.2, 3).unwrap();
            assert!(choice.f1 > 0.95, "{} f1 {}", params.name(), choice.f1);
            let model = Classifier::fit(&rows, &labels, &params).unwrap();
            assert!(model.predict_proba(&[45.0, 1.0]) > model.predict_proba(&[5.0, 1.0]));
        }
    }

    #[test]
    fn too_few_rows_for_validation() {
        let rows = vec![vec![1.0]];
        assert!(choose_threshold(&rows, &[true], &ClassifierParams::logistic(), 0.2, 0).is_err());
    }
}
