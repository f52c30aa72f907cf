//! Binary-classification metrics: the confusion matrix at a threshold and the numbers derived
//! from it (accuracy, precision, recall, F1), the threshold-free ones (ROC AUC, log loss), the
//! F1-maximising threshold and a serialisable [`ClassificationReport`] bundling them. The server's
//! model metrics, the trainer's evaluation and `momentum eval classify` all report through this
//! module so a number means the same thing everywhere.
//!
//! Conventions: labels are `bool` (`true` = positive class), scores are probabilities of the
//! positive class, and a row is predicted positive when `probability >= threshold`. Ratios with a
//! zero denominator (precision without predicted positives, recall without actual positives) are
//! 0, as scikit-learn reports them.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Probabilities are clipped to `[LOG_LOSS_EPS, 1 - LOG_LOSS_EPS]` before taking logarithms, so
/// one confident mistake costs about 34.5 nats instead of infinity.
pub const LOG_LOSS_EPS: f64 = 1e-15;

/// The usual default decision threshold.
pub const DEFAULT_THRESHOLD: f64 = 0.5;

/// Counts of the four outcomes of a binary decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    /// Predicted positive, actually positive.
    pub true_positives: usize,
    /// Predicted positive, actually negative.
    pub false_positives: usize,
    /// Predicted negative, actually negative.
    pub true_negatives: usize,
    /// Predicted negative, actually positive.
    pub false_negatives: usize,
}

impl ConfusionMatrix {
    /// Counts hard predictions against labels.
    pub fn from_predictions(predicted: &[bool], actual: &[bool]) -> Result<Self, ModelError> {
        check_lengths(predicted.len(), actual.len())?;
        let mut matrix = Self::default();
        for (&p, &a) in predicted.iter().zip(actual) {
            matrix.add(p, a);
        }
        Ok(matrix)
    }

    /// Counts the decisions `probability >= threshold` against labels.
    pub fn at_threshold(
        probs: &[f64],
        labels: &[bool],
        threshold: f64,
    ) -> Result<Self, ModelError> {
        check_scores(probs, labels)?;
        let mut matrix = Self::default();
        for (&p, &a) in probs.iter().zip(labels) {
            matrix.add(p >= threshold, a);
        }
        Ok(matrix)
    }

    fn add(&mut self, predicted: bool, actual: bool) {
        match (predicted, actual) {
            (true, true) => self.true_positives += 1,
            (true, false) => self.false_positives += 1,
            (false, false) => self.true_negatives += 1,
            (false, true) => self.false_negatives += 1,
        }
    }

    /// Number of rows counted.
    pub fn total(&self) -> usize {
        self.true_positives + self.false_positives + self.true_negatives + self.false_negatives
    }

    /// Share of correct decisions; 0 for an empty matrix.
    pub fn accuracy(&self) -> f64 {
        ratio(self.true_positives + self.true_negatives, self.total())
    }

    /// `tp / (tp + fp)`; 0 when nothing is predicted positive.
    pub fn precision(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }

    /// `tp / (tp + fn)`; 0 when there is no actual positive.
    pub fn recall(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }

    /// Harmonic mean of precision and recall, `2tp / (2tp + fp + fn)`; 0 when both are 0.
    pub fn f1(&self) -> f64 {
        f1_from_counts(
            self.true_positives,
            self.false_positives,
            self.false_negatives,
        )
    }
}

/// Share of `predicted` equal to `actual`.
pub fn accuracy(predicted: &[bool], actual: &[bool]) -> Result<f64, ModelError> {
    Ok(ConfusionMatrix::from_predictions(predicted, actual)?.accuracy())
}

/// Precision of hard predictions (0 when nothing is predicted positive).
pub fn precision(predicted: &[bool], actual: &[bool]) -> Result<f64, ModelError> {
    Ok(ConfusionMatrix::from_predictions(predicted, actual)?.precision())
}

/// Recall of hard predictions (0 when there is no actual positive).
pub fn recall(predicted: &[bool], actual: &[bool]) -> Result<f64, ModelError> {
    Ok(ConfusionMatrix::from_predictions(predicted, actual)?.recall())
}

/// F1 of hard predictions.
pub fn f1(predicted: &[bool], actual: &[bool]) -> Result<f64, ModelError> {
    Ok(ConfusionMatrix::from_predictions(predicted, actual)?.f1())
}

/// Area under the ROC curve, computed as the Mann–Whitney statistic: the probability that a
/// random positive scores above a random negative, ties counting one half (tied scores get the
/// average of their ranks). Fails unless both classes are present.
pub fn roc_auc(probs: &[f64], labels: &[bool]) -> Result<f64, ModelError> {
    check_scores(probs, labels)?;
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return Err(ModelError::InvalidInput {
            reason: "ROC AUC needs at least one positive and one negative label".to_string(),
        });
    }
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[a].total_cmp(&probs[b]));
    // Sum of the (1-based, tie-averaged) ranks of the positives.
    let mut positive_rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && probs[order[end]] == probs[order[start]] {
            end += 1;
        }
        let average_rank = (start + 1 + end) as f64 / 2.0;
        let tied_positives = order[start..end].iter().filter(|&&i| labels[i]).count();
        positive_rank_sum += average_rank * tied_positives as f64;
        start = end;
    }
    let p = positives as f64;
    let n = negatives as f64;
    Ok((positive_rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// Mean negative log-likelihood of the labels, probabilities clipped by [`LOG_LOSS_EPS`].
pub fn log_loss(probs: &[f64], labels: &[bool]) -> Result<f64, ModelError> {
    check_scores(probs, labels)?;
    if probs.is_empty() {
        return Err(empty_input());
    }
    let total: f64 = probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = p.clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS);
            if y {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum();
    Ok(total / probs.len() as f64)
}

/// A decision threshold and the F1 it reaches on the data it was chosen on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThresholdChoice {
    /// Predict positive when `probability >= threshold`.
    pub threshold: f64,
    /// F1 at that threshold on the data used to choose it.
    pub f1: f64,
}

/// The threshold maximising F1 of `probability >= threshold` on (typically validation) data.
///
/// Every distinct score is a candidate cut: predicting positive for all rows scoring at least
/// that value. The returned threshold is the midpoint between the chosen score and the next
/// lower distinct score (the score itself for the lowest one), so it does not sit exactly on a
/// training point and generalises symmetrically. Among equal F1 values the highest threshold
/// wins. Fails on empty input or when there is no positive label (F1 is then 0 everywhere).
pub fn best_f1_threshold(probs: &[f64], labels: &[bool]) -> Result<ThresholdChoice, ModelError> {
    check_scores(probs, labels)?;
    let positives = labels.iter().filter(|&&l| l).count();
    if positives == 0 {
        return Err(ModelError::InvalidInput {
            reason: "choosing an F1 threshold needs at least one positive label".to_string(),
        });
    }
    let mut order: Vec<usize> = (0..probs.len()).collect();
    // Descending by score.
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let mut best = ThresholdChoice {
        threshold: f64::INFINITY,
        f1: 0.0,
    };
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut start = 0;
    while start < order.len() {
        let score = probs[order[start]];
        let mut end = start;
        while end < order.len() && probs[order[end]] == score {
            if labels[order[end]] {
                tp += 1;
            } else {
                fp += 1;
            }
            end += 1;
        }
        let f1 = f1_from_counts(tp, fp, positives - tp);
        if f1 > best.f1 {
            let threshold = match order.get(end) {
                Some(&next) => midpoint(probs[next], score),
                None => score,
            };
            best = ThresholdChoice { threshold, f1 };
        }
        start = end;
    }
    debug_assert!(best.f1 > 0.0, "with a positive label some cut has tp > 0");
    Ok(best)
}

/// The decision metrics at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThresholdMetrics {
    /// The threshold these numbers were computed at.
    pub threshold: f64,
    /// Share of correct decisions.
    pub accuracy: f64,
    /// `tp / (tp + fp)`.
    pub precision: f64,
    /// `tp / (tp + fn)`.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// The underlying counts.
    pub confusion: ConfusionMatrix,
}

impl ThresholdMetrics {
    /// Computes the metrics of `probability >= threshold`.
    pub fn compute(probs: &[f64], labels: &[bool], threshold: f64) -> Result<Self, ModelError> {
        let confusion = ConfusionMatrix::at_threshold(probs, labels, threshold)?;
        Ok(Self {
            threshold,
            accuracy: confusion.accuracy(),
            precision: confusion.precision(),
            recall: confusion.recall(),
            f1: confusion.f1(),
            confusion,
        })
    }
}

/// Everything reported about a probabilistic classifier on one labelled set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    /// Rows scored.
    pub n: usize,
    /// Rows whose label is positive.
    pub positives: usize,
    /// ROC AUC; `None` when only one class is present (it is undefined then).
    pub auc: Option<f64>,
    /// Mean clipped log loss.
    pub log_loss: f64,
    /// Decision metrics at [`DEFAULT_THRESHOLD`].
    pub at_default: ThresholdMetrics,
    /// Decision metrics at a threshold chosen elsewhere (e.g. by [`best_f1_threshold`] on a
    /// validation split); `None` when none was given.
    pub at_chosen: Option<ThresholdMetrics>,
    /// Reliability table and Brier score; `None` in reports stored before it was computed.
    #[serde(default)]
    pub calibration: Option<Calibration>,
}

impl ClassificationReport {
    /// Scores `probs` against `labels`, at 0.5 and optionally at `chosen_threshold`.
    pub fn new(
        probs: &[f64],
        labels: &[bool],
        chosen_threshold: Option<f64>,
    ) -> Result<Self, ModelError> {
        check_scores(probs, labels)?;
        let positives = labels.iter().filter(|&&l| l).count();
        let auc = if positives == 0 || positives == labels.len() {
            None
        } else {
            Some(roc_auc(probs, labels)?)
        };
        Ok(Self {
            n: probs.len(),
            positives,
            auc,
            log_loss: log_loss(probs, labels)?,
            at_default: ThresholdMetrics::compute(probs, labels, DEFAULT_THRESHOLD)?,
            at_chosen: chosen_threshold
                .map(|t| ThresholdMetrics::compute(probs, labels, t))
                .transpose()?,
            calibration: Some(Calibration::compute(probs, labels)?),
        })
    }
}

/// The number of equal-width probability bins of a [`Calibration`] table.
pub const CALIBRATION_BINS: usize = 10;

/// One probability bin of a reliability table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// Lower edge (inclusive) of the predicted-probability range.
    pub lower: f64,
    /// Upper edge (exclusive, except 1.0 for the last bin).
    pub upper: f64,
    /// Rows whose predicted probability falls in the bin.
    pub count: usize,
    /// Mean predicted probability of those rows; `None` for an empty bin.
    pub mean_predicted: Option<f64>,
    /// Share of those rows whose label is positive; `None` for an empty bin.
    pub observed_rate: Option<f64>,
}

/// How well predicted probabilities match observed frequencies: a reliability table of
/// [`CALIBRATION_BINS`] equal-width bins over `[0, 1]` and the Brier score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Mean squared difference between probability and label (0 is perfect, lower is better).
    pub brier: f64,
    /// The bins in increasing probability order, empty ones included.
    pub bins: Vec<CalibrationBin>,
}

impl Calibration {
    /// Bins `probs` (clamped to `[0, 1]`) into equal-width bins, `p` going to bin
    /// `floor(p * 10)` and 1.0 to the last bin, and computes the Brier score. Fails on empty
    /// input.
    pub fn compute(probs: &[f64], labels: &[bool]) -> Result<Self, ModelError> {
        check_scores(probs, labels)?;
        if probs.is_empty() {
            return Err(empty_input());
        }
        let mut sums = [(0usize, 0.0f64, 0usize); CALIBRATION_BINS];
        let mut squared = 0.0;
        for (&p, &y) in probs.iter().zip(labels) {
            let p = p.clamp(0.0, 1.0);
            let target = if y { 1.0 } else { 0.0 };
            squared += (p - target) * (p - target);
            let bin = ((p * CALIBRATION_BINS as f64) as usize).min(CALIBRATION_BINS - 1);
            let s = &mut sums[bin];
            s.0 += 1;
            s.1 += p;
            s.2 += usize::from(y);
        }
        let bins = sums
            .iter()
            .enumerate()
            .map(|(i, &(count, sum, positives))| CalibrationBin {
                lower: i as f64 / CALIBRATION_BINS as f64,
                upper: (i + 1) as f64 / CALIBRATION_BINS as f64,
                count,
                mean_predicted: (count > 0).then(|| sum / count as f64),
                observed_rate: (count > 0).then(|| positives as f64 / count as f64),
            })
            .collect();
        Ok(Self {
            brier: squared / probs.len() as f64,
            bins,
        })
    }
}

fn f1_from_counts(tp: usize, fp: usize, false_negatives: usize) -> f64 {
    ratio(2 * tp, 2 * tp + fp + false_negatives)
}

fn ratio(numerator: usize, denominator: usize) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

/// Midpoint of `low < high` that is strictly above `low` whenever the two differ.
fn midpoint(low: f64, high: f64) -> f64 {
    let mid = low + (high - low) / 2.0;
    if mid > low {
        mid
    } else {
        high
    }
}

fn check_lengths(a: usize, b: usize) -> Result<(), ModelError> {
    if a == b {
        Ok(())
    } else {
        Err(ModelError::InvalidInput {
            reason: format!("{a} predictions for {b} labels"),
        })
    }
}

fn check_scores(probs: &[f64], labels: &[bool]) -> Result<(), ModelError> {
    check_lengths(probs.len(), labels.len())?;
    match probs.iter().position(|p| !p.is_finite()) {
        Some(i) => Err(ModelError::InvalidInput {
            reason: format!("score {i} is not a finite number"),
        }),
        None => Ok(()),
    }
}

fn empty_input() -> ModelError {
    ModelError::InvalidInput {
        reason: "no rows to score".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn calibration_bins_by_tenths_and_scores_brier() {
        let probs = [0.0, 0.05, 0.15, 0.15, 0.55, 0.95, 1.0, 0.99];
        let labels = [false, false, true, false, true, true, true, false];
        let c = Calibration::compute(&probs, &labels).unwrap();
        assert_eq!(c.bins.len(), CALIBRATION_BINS);
        let counts: Vec<usize> = c.bins.iter().map(|b| b.count).collect();
        assert_eq!(counts, [2, 2, 0, 0, 0, 1, 0, 0, 0, 3]);
        assert!(close(c.bins[0].mean_predicted.unwrap(), 0.025));
        assert_eq!(c.bins[0].observed_rate, Some(0.0));
        assert!(close(c.bins[1].mean_predicted.unwrap(), 0.15));
        assert_eq!(c.bins[1].observed_rate, Some(0.5));
        assert_eq!(
            (c.bins[2].mean_predicted, c.bins[2].observed_rate),
            (None, None)
        );
        // 1.0 falls in the last bin.
        assert!(close(
            c.bins[9].mean_predicted.unwrap(),
            (0.95 + 1.0 + 0.99) / 3.0
        ));
        assert!(close(c.bins[9].observed_rate.unwrap(), 2.0 / 3.0));
        assert!(close(c.bins[3].lower, 0.3) && close(c.bins[3].upper, 0.4));
        let squared = 0.0 + 0.0025 + 0.7225 + 0.0225 + 0.2025 + 0.0025 + 0.0 + 0.9801;
        assert!(close(c.brier, squared / 8.0), "{}", c.brier);
        assert!(Calibration::compute(&[], &[]).is_err());
        let report = ClassificationReport::new(&probs, &labels, None).unwrap();
        assert_eq!(report.calibration, Some(c));
    }

    #[test]
    fn reports_stored_without_calibration_still_load() {
        let probs = [0.2, 0.8];
        let labels = [false, true];
        let mut value =
            serde_json::to_value(ClassificationReport::new(&probs, &labels, None).unwrap())
                .unwrap();
        value.as_object_mut().unwrap().remove("calibration");
        let old: ClassificationReport = serde_json::from_value(value).unwrap();
        assert_eq!(old.calibration, None);
    }

    #[test]
    fn confusion_counts_and_ratios() {
        let probs = [0.9, 0.8, 0.4, 0.3, 0.6, 0.1];
        let labels = [true, false, true, false, true, false];
        let m = ConfusionMatrix::at_threshold(&probs, &labels, 0.5).unwrap();
        assert_eq!(
            m,
            ConfusionMatrix {
                true_positives: 2,
                false_positives: 1,
                true_negatives: 2,
                false_negatives: 1
            }
        );
        assert!(close(m.accuracy(), 4.0 / 6.0));
        assert!(close(m.precision(), 2.0 / 3.0));
        assert!(close(m.recall(), 2.0 / 3.0));
        assert!(close(m.f1(), 2.0 / 3.0));
    }

    #[test]
    fn threshold_is_inclusive() {
        let m = ConfusionMatrix::at_threshold(&[0.5], &[true], 0.5).unwrap();
        assert_eq!(m.true_positives, 1);
    }

    #[test]
    fn zero_denominators_give_zero() {
        let m = ConfusionMatrix::from_predictions(&[false, false], &[false, false]).unwrap();
        assert_eq!(m.precision(), 0.0);
        assert_eq!(m.recall(), 0.0);
        assert_eq!(m.f1(), 0.0);
        assert_eq!(m.accuracy(), 1.0);
        assert_eq!(ConfusionMatrix::default().accuracy(), 0.0);
    }

    #[test]
    fn free_functions_match_matrix() {
        let predicted = [true, true, false, false];
        let actual = [true, false, true, false];
        assert!(close(accuracy(&predicted, &actual).unwrap(), 0.5));
        assert!(close(precision(&predicted, &actual).unwrap(), 0.5));
        assert!(close(recall(&predicted, &actual).unwrap(), 0.5));
        assert!(close(f1(&predicted, &actual).unwrap(), 0.5));
        assert!(accuracy(&predicted, &actual[..3]).is_err());
    }

    #[test]
    fn auc_perfect_inverted_and_tied() {
        let labels = [false, false, true, true];
        assert!(close(roc_auc(&[0.1, 0.2, 0.8, 0.9], &labels).unwrap(), 1.0));
        assert!(close(roc_auc(&[0.9, 0.8, 0.2, 0.1], &labels).unwrap(), 0.0));
        assert!(close(roc_auc(&[0.5; 4], &labels).unwrap(), 0.5));
    }

    #[test]
    fn auc_known_value_with_ties() {
        // Pairs (pos, neg): (0.8 vs 0.1, 0.8 vs 0.4, 0.8 vs 0.8 tie) and (0.4 vs 0.1, 0.4 vs 0.4
        // tie, 0.4 vs 0.8): 1 + 1 + .5 + 1 + .5 + 0 = 4 of 6.
        let probs = [0.8, 0.4, 0.1, 0.4, 0.8];
        let labels = [true, true, false, false, false];
        assert!(close(roc_auc(&probs, &labels).unwrap(), 4.0 / 6.0));
    }

    #[test]
    fn auc_needs_both_classes_and_finite_scores() {
        assert!(roc_auc(&[0.1, 0.2], &[true, true]).is_err());
        assert!(roc_auc(&[0.1, f64::NAN], &[true, false]).is_err());
        assert!(roc_auc(&[0.1], &[true, false]).is_err());
    }

    #[test]
    fn log_loss_known_values_and_clipping() {
        assert!(close(
            log_loss(&[0.5, 0.5], &[true, false]).unwrap(),
            std::f64::consts::LN_2
        ));
        let confident_mistake = log_loss(&[0.0], &[true]).unwrap();
        assert!(confident_mistake.is_finite());
        assert!((confident_mistake - (-(LOG_LOSS_EPS.ln()))).abs() < 1e-9);
        assert!(log_loss(&[], &[]).is_err());
    }

    #[test]
    fn best_threshold_separates_a_separable_set() {
        let probs = [0.1, 0.35, 0.3, 0.7, 0.9, 0.4];
        let labels = [false, false, false, true, true, true];
        let choice = best_f1_threshold(&probs, &labels).unwrap();
        assert!(close(choice.f1, 1.0));
        // Midpoint between the lowest positive (0.4) and the highest negative (0.35).
        assert!(close(choice.threshold, 0.375));
        let m = ConfusionMatrix::at_threshold(&probs, &labels, choice.threshold).unwrap();
        assert!(close(m.f1(), 1.0));
    }

    #[test]
    fn best_threshold_can_be_below_half() {
        // Positives all score low-ish: at 0.5 nothing is predicted positive (F1 0).
        let probs = [0.05, 0.1, 0.3, 0.35, 0.4];
        let labels = [false, false, true, true, true];
        let choice = best_f1_threshold(&probs, &labels).unwrap();
        assert!(choice.threshold < 0.5);
        assert!(close(choice.f1, 1.0));
        assert!(best_f1_threshold(&probs, &[false; 5]).is_err());
    }

    #[test]
    fn best_threshold_lowest_cut_predicts_everything_positive() {
        // All positive: the best cut includes every row, its threshold is the lowest score.
        let choice = best_f1_threshold(&[0.2, 0.6], &[true, true]).unwrap();
        assert!(close(choice.threshold, 0.2));
        assert!(close(choice.f1, 1.0));
    }

    #[test]
    fn report_serialises_and_handles_one_class() {
        let r = ClassificationReport::new(&[0.2, 0.9], &[false, true], Some(0.3)).unwrap();
        assert_eq!(r.auc, Some(1.0));
        assert_eq!(r.positives, 1);
        assert!(close(r.at_default.f1, 1.0));
        assert_eq!(r.at_chosen.map(|m| m.threshold), Some(0.3));
        let one_class = ClassificationReport::new(&[0.2, 0.9], &[true, true], None).unwrap();
        assert_eq!(one_class.auc, None);
        assert!(one_class.at_chosen.is_none());
    }

    proptest! {
        #[test]
        fn auc_in_unit_interval_and_flips(
            rows in proptest::collection::vec((0.0f64..1.0, any::<bool>()), 2..60)
        ) {
            let probs: Vec<f64> = rows.iter().map(|r| r.0).collect();
            let labels: Vec<bool> = rows.iter().map(|r| r.1).collect();
            let pos = labels.iter().filter(|&&l| l).count();
            prop_assume!(pos > 0 && pos < labels.len());
            let auc = roc_auc(&probs, &labels).unwrap();
            prop_assert!((0.0..=1.0).contains(&auc));
            let flipped: Vec<f64> = probs.iter().map(|p| 1.0 - p).collect();
            let auc_flipped = roc_auc(&flipped, &labels).unwrap();
            prop_assert!((auc + auc_flipped - 1.0).abs() < 1e-9);
        }

        #[test]
        fn best_threshold_beats_every_candidate(
            rows in proptest::collection::vec((0.0f64..1.0, any::<bool>()), 1..40)
        ) {
            let probs: Vec<f64> = rows.iter().map(|r| r.0).collect();
            let labels: Vec<bool> = rows.iter().map(|r| r.1).collect();
            prop_assume!(labels.iter().any(|&l| l));
            let choice = best_f1_threshold(&probs, &labels).unwrap();
            let at_choice = ConfusionMatrix::at_threshold(&probs, &labels, choice.threshold)
                .unwrap()
                .f1();
            prop_assert!((at_choice - choice.f1).abs() < 1e-12);
            for &t in &probs {
                let f = ConfusionMatrix::at_threshold(&probs, &labels, t).unwrap().f1();
                prop_assert!(f <= choice.f1 + 1e-12);
            }
        }
    }
}
