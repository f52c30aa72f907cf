//! The training pipeline: how a window of events becomes two trained, evaluated models and
//! whether each replaces its live version. Pure (no I/O, no actix): the server's training job
//! runs it on a dedicated thread, and `momentum train --events` runs it on a simulator CSV.
//!
//! 1. [`build_datasets`]: the window is `[now − window_days, now]`. Success rows are taken at
//!    cutoffs `now − success_horizon − k · step` and churn rows at `now − churn_horizon −
//!    k · step` (`k = 0..cutoffs`), keeping only cutoffs with at least `min_history_days` of
//!    window before them, so every label's horizon lies inside the data
//!    ([`crate::dataset`] explains the rows). Users are split into training and held-out sets
//!    by `md5(user_id)`, so a user never sits on both sides and the split is the same from one
//!    run to the next: the live version is evaluated on users it was not trained on either.
//! 2. [`fit_candidate`]: the decision threshold is chosen to maximise F1 on a stratified
//!    `threshold_fraction` of the training rows (model fitted on the rest), then the model is
//!    refitted on all training rows and scored once on the held-out rows, at 0.5 and at that
//!    threshold.
//! 3. [`decide_promotion`]: candidate and live version are scored on the **same** held-out rows
//!    and compared by ROC AUC; the candidate is promoted unless its AUC is below the live one's
//!    by more than `margin`. Without a live version the candidate is promoted.

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::clock::days_ms;
use crate::dataset::{self, DatasetParams, UserHistory};
use crate::events::EventKind;
use crate::features::{Activity, FEATURE_COUNT, FEATURE_NAMES};
use crate::hash::md5_bucket;
use crate::predict::classifier::{choose_threshold, Classifier, ClassifierParams};
use crate::predict::logistic::LogisticParams;
use crate::predict::metrics::ClassificationReport;
use crate::ModelError;

/// The two models the training job maintains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Goal success: logistic regression.
    Success,
    /// Churn: random forest.
    Churn,
}

impl ModelKind {
    pub const ALL: [ModelKind; 2] = [ModelKind::Success, ModelKind::Churn];

    /// The model's name in the API, the store and the metric labels.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Success => "success",
            ModelKind::Churn => "churn",
        }
    }

    pub fn parse(name: &str) -> Option<ModelKind> {
        ModelKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// How a window of events becomes two trained, evaluated models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineParams {
    /// Days of events a run learns from (default 90).
    pub window_days: u32,
    /// Cutoffs per model (default 3).
    pub cutoffs: u32,
    /// Days between cutoffs (default 7).
    pub cutoff_step_days: u32,
    /// A cutoff needs this many days of window before it (default 14).
    pub min_history_days: u32,
    /// Share of users held out for evaluation (default 0.2).
    pub holdout_fraction: f64,
    /// Share of the training rows used to choose the decision threshold (default 0.2).
    pub threshold_fraction: f64,
    /// Fewest training rows, and fewest held-out rows, a model is trained with (default 50 and
    /// a fifth of it); each side also needs both classes.
    pub min_rows: usize,
    /// Seed of the threshold split.
    pub seed: u64,
    /// Labels and feature definitions.
    pub dataset: DatasetParams,
    /// The success model (default: logistic regression, 1000 iterations at step 0.5).
    pub success: ClassifierParams,
    /// The churn model.
    pub churn: ClassifierParams,
}

impl Default for PipelineParams {
    fn default() -> Self {
        PipelineParams {
            window_days: 90,
            cutoffs: 3,
            cutoff_step_days: 7,
            min_history_days: 14,
            holdout_fraction: 0.2,
            threshold_fraction: 0.2,
            min_rows: 50,
            seed: 42,
            dataset: DatasetParams::default(),
            // the usual 1000 iterations, but a step that converges on the app's features
            // (the server's `[trainer]` documents the numbers).
            success: ClassifierParams::Logistic(LogisticParams {
                learning_rate: 0.5,
                ..LogisticParams::default()
            }),
            churn: ClassifierParams::forest(),
        }
    }
}

impl PipelineParams {
    /// The classifier parameters of a model.
    pub fn classifier(&self, kind: ModelKind) -> &ClassifierParams {
        match kind {
            ModelKind::Success => &self.success,
            ModelKind::Churn => &self.churn,
        }
    }
}

/// The events a run learned from: the window and the cutoffs its rows were taken at. (An
/// exported file's metadata carries only the bounds, as [`crate::export::TrainingWindow`].)
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetWindow {
    pub from_ms: i64,
    pub to_ms: i64,
    pub success_cutoffs_ms: Vec<i64>,
    pub churn_cutoffs_ms: Vec<i64>,
}

/// Labelled rows of one model, split by user.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Split {
    pub train: Vec<Vec<f64>>,
    pub train_labels: Vec<bool>,
    pub holdout: Vec<Vec<f64>>,
    pub holdout_labels: Vec<bool>,
}

impl Split {
    fn extend(&mut self, (rows, labels): dataset::Labelled, holdout: bool) {
        let (x, y) = if holdout {
            (&mut self.holdout, &mut self.holdout_labels)
        } else {
            (&mut self.train, &mut self.train_labels)
        };
        x.extend(rows.iter().map(|r| r.to_vec()));
        y.extend(labels);
    }
}

/// Both models' rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Datasets {
    pub window: DatasetWindow,
    pub success: Split,
    pub churn: Split,
}

impl Datasets {
    pub fn split(&self, kind: ModelKind) -> &Split {
        match kind {
            ModelKind::Success => &self.success,
            ModelKind::Churn => &self.churn,
        }
    }
}

/// Whether a user belongs to the held-out set: the first 8 bytes of `md5(user_id)` modulo
/// 10,000 below `fraction · 10,000`.
pub fn is_holdout(user_id: &str, fraction: f64) -> bool {
    let bucket = md5_bucket(&[user_id.as_bytes()], 10_000);
    (bucket as f64) < fraction.clamp(0.0, 1.0) * 10_000.0
}

/// Builds users' histories from events, interning goal ids locally (the features only need
/// goal identity). Events of unknown kinds are skipped.
#[derive(Debug, Default)]
pub struct HistoryBuilder {
    users: HashMap<String, Vec<Activity>>,
    goals: HashMap<String, u32>,
    pub events: usize,
}

impl HistoryBuilder {
    /// Adds one event.
    pub fn push(&mut self, user_id: &str, item_id: Option<&str>, kind: &str, ts_ms: i64) {
        let Some(kind) = EventKind::parse(kind) else {
            return;
        };
        let goal = item_id.map(|item| {
            let next = self.goals.len() as u32;
            *self.goals.entry(item.to_owned()).or_insert(next)
        });
        match self.users.get_mut(user_id) {
            Some(log) => log.push(Activity::new(ts_ms, kind, goal)),
            None => {
                self.users
                    .insert(user_id.to_owned(), vec![Activity::new(ts_ms, kind, goal)]);
            }
        }
        self.events += 1;
    }

    /// The histories, sorted by user id, each log sorted by time (stable).
    pub fn finish(self) -> Vec<(String, UserHistory)> {
        let mut users: Vec<(String, UserHistory)> = self
            .users
            .into_iter()
            .map(|(id, mut events)| {
                events.sort_by_key(|a| a.ts_ms);
                (
                    id,
                    UserHistory {
                        signup_ms: None,
                        events,
                    },
                )
            })
            .collect();
        users.sort_by(|a, b| a.0.cmp(&b.0));
        users
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }
}

/// Cutoffs `last − k · step` that leave `min_history` days of window before them, newest first.
fn cutoffs(from_ms: i64, last_ms: i64, p: &PipelineParams) -> Vec<i64> {
    let step = days_ms(p.cutoff_step_days.max(1));
    let earliest = from_ms + days_ms(p.min_history_days);
    (0..i64::from(p.cutoffs))
        .map(|k| last_ms - k * step)
        .filter(|&c| c >= earliest)
        .collect()
}

/// Labelled, user-split rows of both models from the users' events (step 1 of the module docs).
/// `users` hold the events of the window `[now − window_days, now]`.
pub fn build_datasets(
    users: &[(String, UserHistory)],
    now_ms: i64,
    p: &PipelineParams,
) -> Datasets {
    let from_ms = now_ms - days_ms(p.window_days);
    let d = &p.dataset;
    let window = DatasetWindow {
        from_ms,
        to_ms: now_ms,
        success_cutoffs_ms: cutoffs(from_ms, now_ms - days_ms(d.success_horizon_days), p),
        churn_cutoffs_ms: cutoffs(from_ms, now_ms - days_ms(d.churn_horizon_days), p),
    };
    let (held, trained): (Vec<_>, Vec<_>) = users
        .iter()
        .partition(|(id, _)| is_holdout(id, p.holdout_fraction));
    let mut out = Datasets {
        window,
        ..Datasets::default()
    };
    for (side, holdout) in [(&trained, false), (&held, true)] {
        for &cutoff in &out.window.success_cutoffs_ms {
            let rows = dataset::success_rows_iter(side.iter().map(|(_, h)| h), cutoff, d);
            out.success.extend(rows, holdout);
        }
        for &cutoff in &out.window.churn_cutoffs_ms {
            let rows = dataset::churn_rows_iter(side.iter().map(|(_, h)| h), cutoff, d);
            out.churn.extend(rows, holdout);
        }
    }
    out
}

/// Why a model could not be trained.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Too few rows, or a class missing, on one side of the split.
    #[error("not enough data: {reason}")]
    NotEnoughData { reason: String },
    /// The algorithm refused the data.
    #[error("training failed: {0}")]
    Model(#[from] ModelError),
}

/// A trained, evaluated model that is not (yet) live.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub classifier: Classifier,
    /// The F1-maximising threshold chosen on the training rows.
    pub threshold: f64,
    /// Held-out evaluation at 0.5 and at `threshold`.
    pub report: ClassificationReport,
    pub train_rows: usize,
    pub train_positives: usize,
    /// Wall time of threshold choice and final fit.
    pub fit_seconds: f64,
}

fn check_side(what: &str, labels: &[bool], min: usize) -> Result<(), PipelineError> {
    let positives = labels.iter().filter(|&&l| l).count();
    if labels.len() < min || positives == 0 || positives == labels.len() {
        return Err(PipelineError::NotEnoughData {
            reason: format!(
                "{} {what} rows ({positives} positive); at least {min} with both classes are \
                 needed",
                labels.len()
            ),
        });
    }
    Ok(())
}

/// Trains and evaluates one model on its split (step 2 of the module docs).
pub fn fit_candidate(
    split: &Split,
    params: &ClassifierParams,
    p: &PipelineParams,
) -> Result<Candidate, PipelineError> {
    check_side("training", &split.train_labels, p.min_rows.max(10))?;
    check_side("held-out", &split.holdout_labels, (p.min_rows / 5).max(2))?;
    let started = Instant::now();
    let choice = choose_threshold(
        &split.train,
        &split.train_labels,
        params,
        p.threshold_fraction,
        p.seed,
    )?;
    let classifier = Classifier::fit(&split.train, &split.train_labels, params)?;
    let fit_seconds = started.elapsed().as_secs_f64();
    let report = evaluate(&classifier, choice.threshold, split)?;
    Ok(Candidate {
        classifier,
        threshold: choice.threshold,
        report,
        train_rows: split.train.len(),
        train_positives: split.train_labels.iter().filter(|&&l| l).count(),
        fit_seconds,
    })
}

/// Scores a model on a split's held-out rows.
pub fn evaluate(
    classifier: &Classifier,
    threshold: f64,
    split: &Split,
) -> Result<ClassificationReport, ModelError> {
    let probs = classifier.predict_proba_all(&split.holdout);
    ClassificationReport::new(&probs, &split.holdout_labels, Some(threshold))
}

/// Whether a live model can be scored on rows of the current feature schema.
pub fn schema_matches(feature_names: &[String]) -> bool {
    feature_names.len() == FEATURE_COUNT
        && feature_names.iter().zip(FEATURE_NAMES).all(|(a, b)| a == b)
}

/// The outcome of comparing a candidate with the live version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromotionDecision {
    pub promoted: bool,
    pub reason: String,
    /// The comparison metric (`auc`).
    pub metric: String,
    pub candidate: Option<f64>,
    /// The live version on the same held-out rows; `None` without a comparable live version.
    pub live: Option<f64>,
    pub margin: f64,
}

/// Step 3 of the module docs: promote unless the candidate's held-out AUC is below the live
/// version's (on the same rows) by more than `margin`.
pub fn decide_promotion(
    candidate: &ClassificationReport,
    live: Option<&ClassificationReport>,
    margin: f64,
) -> PromotionDecision {
    let cand = candidate.auc;
    let live_auc = live.and_then(|l| l.auc);
    let (promoted, reason) = match (cand, live_auc) {
        (None, _) => (
            false,
            "the held-out rows have one class only: the candidate cannot be evaluated".into(),
        ),
        (Some(_), None) => (true, "no comparable live version".into()),
        (Some(c), Some(l)) if c >= l - margin => (
            true,
            format!("candidate AUC {c:.4} is not worse than the live {l:.4} by more than {margin}"),
        ),
        (Some(c), Some(l)) => (
            false,
            format!("candidate AUC {c:.4} is worse than the live {l:.4} by more than {margin}"),
        ),
    };
    PromotionDecision {
        promoted,
        reason,
        metric: "auc".into(),
        candidate: cand,
        live: live_auc,
        margin,
    }
}

#[cfg(test)]
mod tests {
    use crate::clock::DAY_MS;
    use crate::predict::forest::ForestParams;

    use super::*;

    fn report(auc: Option<f64>) -> ClassificationReport {
        // A real report whose AUC we then pin to the value under test.
        let mut r =
            ClassificationReport::new(&[0.2, 0.8], &[false, true], Some(0.5)).expect("report");
        r.auc = auc;
        r
    }

    #[test]
    fn promotion_is_refused_when_the_candidate_is_worse_by_more_than_the_margin() {
        let d = decide_promotion(&report(Some(0.70)), Some(&report(Some(0.80))), 0.01);
        assert!(!d.promoted, "{d:?}");
        assert_eq!((d.candidate, d.live), (Some(0.70), Some(0.80)));
        // Within the margin: promoted; better: promoted.
        assert!(decide_promotion(&report(Some(0.795)), Some(&report(Some(0.80))), 0.01).promoted);
        assert!(decide_promotion(&report(Some(0.85)), Some(&report(Some(0.80))), 0.0).promoted);
        // Exactly at the margin counts as "not worse by more than".
        assert!(decide_promotion(&report(Some(0.75)), Some(&report(Some(0.80))), 0.05).promoted);
        // No live version: promoted; candidate not evaluable: refused.
        assert!(decide_promotion(&report(Some(0.6)), None, 0.01).promoted);
        assert!(!decide_promotion(&report(None), None, 0.01).promoted);
    }

    /// Users whose behaviour predicts the outcomes: "keen" users check in daily and complete
    /// their goal, "lapsing" ones stop after a while. Deterministic.
    fn population(n: usize, now: i64) -> Vec<(String, UserHistory)> {
        (0..n)
            .map(|u| {
                let keen = u % 3 != 0;
                let start = now - (80 - (u % 20) as i64) * DAY_MS;
                let active_days = if keen { 80 } else { 20 + (u % 30) as i64 };
                let mut events = Vec::new();
                let mut goal = (u * 10) as u32;
                events.push(Activity::new(start, EventKind::Start, Some(goal)));
                for d in 1..active_days {
                    let ts = start + d * DAY_MS;
                    if ts > now {
                        break;
                    }
                    if keen || d % 2 == 0 {
                        events.push(Activity::new(ts, EventKind::Checkin, Some(goal)));
                    }
                    if keen && d % 12 == 0 {
                        events.push(Activity::new(ts + 1, EventKind::Complete, Some(goal)));
                        goal += 1;
                        events.push(Activity::new(ts + 2, EventKind::Start, Some(goal)));
                    }
                }
                (
                    format!("user-{u}"),
                    UserHistory {
                        signup_ms: None,
                        events,
                    },
                )
            })
            .collect()
    }

    const NOW: i64 = 20_000 * DAY_MS;

    #[test]
    fn datasets_split_users_and_keep_labels_inside_the_window() {
        let users = population(300, NOW);
        let p = PipelineParams::default();
        let d = build_datasets(&users, NOW, &p);
        assert_eq!(d.window.from_ms, NOW - 90 * DAY_MS);
        assert_eq!(d.window.success_cutoffs_ms[0], NOW - 30 * DAY_MS);
        assert_eq!(d.window.churn_cutoffs_ms[0], NOW - 14 * DAY_MS);
        assert!(d.window.success_cutoffs_ms.len() == 3 && d.window.churn_cutoffs_ms.len() == 3);
        for s in [&d.success, &d.churn] {
            assert!(!s.train.is_empty() && !s.holdout.is_empty());
            assert_eq!(s.train.len(), s.train_labels.len());
            assert_eq!(s.holdout.len(), s.holdout_labels.len());
            assert!(s.train.len() > 2 * s.holdout.len());
        }
        let held = users.iter().filter(|(id, _)| is_holdout(id, 0.2)).count();
        assert!((30..90).contains(&held), "{held} of 300 held out");
        assert!(is_holdout("anyone", 1.0) && !is_holdout("anyone", 0.0));
    }

    #[test]
    fn candidates_learn_the_population_and_a_crippled_one_is_refused() {
        let users = population(300, NOW);
        let p = PipelineParams::default();
        let d = build_datasets(&users, NOW, &p);
        let churn = fit_candidate(&d.churn, &p.churn, &p).expect("churn model");
        assert!(
            churn.report.auc.unwrap_or(0.0) > 0.8,
            "{:?}",
            churn.report.auc
        );
        // A forest that may not split predicts the base rate for everyone: AUC 0.5.
        let stump = ForestParams {
            min_samples_split: usize::MAX,
            ..ForestParams::default()
        };
        let weak = fit_candidate(&d.churn, &ClassifierParams::Forest(stump), &p).expect("stump");
        assert_eq!(weak.report.auc, Some(0.5));
        let live = evaluate(&churn.classifier, churn.threshold, &d.churn).expect("live");
        let decision = decide_promotion(&weak.report, Some(&live), 0.01);
        assert!(!decision.promoted, "{decision:?}");
    }

    #[test]
    fn too_little_data_is_an_error_not_a_model() {
        let users = population(5, NOW);
        let p = PipelineParams::default();
        let d = build_datasets(&users, NOW, &p);
        let err = fit_candidate(&d.success, &p.success, &p).expect_err("too few rows");
        assert!(matches!(err, PipelineError::NotEnoughData { .. }), "{err}");
    }
}
