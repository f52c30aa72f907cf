//! The `Trainer` actor and the training pipeline it runs.
//!
//! The actor owns *when* the app's two models are retrained: on a schedule (every
//! `interval`, weekly by default, read from an injectable [`Clock`] so tests never sleep) and on
//! request ([`TrainModels`], behind `POST /v1/models/train`). At most one run is in flight; a
//! request while one runs is refused with [`TrainError::AlreadyRunning`]. *What* a run does —
//! read the last 90 days of events from the store, train off the async workers, store every
//! version, promote — is a [`TrainingJob`] supplied by the server, because the store and the
//! live-model registry live there. The job builds on the pure pipeline below, which
//! `momentum train --events` uses too.
//!
//! # Pipeline
//!
//! 1. [`build_datasets`]: the window is `[now − window_days, now]`. Success rows are taken at
//!    cutoffs `now − success_horizon − k · step` and churn rows at `now − churn_horizon −
//!    k · step` (`k = 0..cutoffs`), keeping only cutoffs with at least `min_history_days` of
//!    window before them, so every label's horizon lies inside the data
//!    ([`momentum_models::dataset`] explains the rows). Users are split into training and
//!    held-out sets by `md5(user_id)`, so a user never sits on both sides and the split is the
//!    same from one run to the next: the live version is evaluated on users it was not trained
//!    on either.
//! 2. [`fit_candidate`]: the decision threshold is chosen to maximise F1 on a stratified
//!    `threshold_fraction` of the training rows (model fitted on the rest), then the model is
//!    refitted on all training rows and scored once on the held-out rows, at 0.5 and at that
//!    threshold.
//! 3. [`decide_promotion`]: candidate and live version are scored on the **same** held-out rows
//!    and compared by ROC AUC; the candidate is promoted unless its AUC is below the live one's
//!    by more than `margin`. Without a live version the candidate is promoted.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use momentum_models::dataset::{self, DatasetParams, UserHistory};
use momentum_models::features::{DAY_MS, FEATURE_COUNT, FEATURE_NAMES};
use momentum_models::predict::classifier::{choose_threshold, Classifier, ClassifierParams};
use momentum_models::predict::logistic::LogisticParams;
use momentum_models::predict::metrics::ClassificationReport;
use momentum_models::ModelError;

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

/// Wall-clock time as the time-driven actors see it.
pub trait Clock: Send + Sync + 'static {
    /// Now, unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        Self(AtomicI64::new(now_ms))
    }

    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The interval elapsed.
    Schedule,
    /// An operator asked (`POST /v1/models/train`, `POST /v1/churn/run`).
    Request,
}

/// The bookkeeping a periodic actor keeps: when the next run is due, whether one is running,
/// and what the last one did. Shared by the [`Trainer`] and the
/// [`ChurnScheduler`](crate::churn::ChurnScheduler).
#[derive(Debug, Clone)]
pub struct Schedule {
    interval_ms: i64,
    /// After a failed run, retry after `min(interval, retry_ms)`.
    retry_ms: i64,
    /// `None`: never runs on its own (interval 0).
    next_due_ms: Option<i64>,
    running: bool,
    status: RunStatus,
}

/// What `GET /v1/models` (trainer) and the churn admin route show about the schedule.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunStatus {
    pub running: bool,
    /// Completed runs (successful or not) since the start.
    pub runs: u64,
    pub interval_seconds: u64,
    pub next_due_ms: Option<i64>,
    pub last_trigger: Option<Trigger>,
    pub last_started_ms: Option<i64>,
    pub last_finished_ms: Option<i64>,
    /// Why the last run failed; `None` after a successful one.
    pub last_error: Option<String>,
}

impl Schedule {
    /// A schedule running every `interval` (zero: only on request), first at `first_due_ms`.
    pub fn new(interval: Duration, first_due_ms: Option<i64>) -> Self {
        let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        let next_due_ms = if interval_ms > 0 { first_due_ms } else { None };
        Schedule {
            interval_ms,
            retry_ms: 3_600_000,
            next_due_ms,
            running: false,
            status: RunStatus {
                interval_seconds: interval.as_secs(),
                next_due_ms,
                ..RunStatus::default()
            },
        }
    }

    /// Whether a scheduled run should start now.
    pub fn is_due(&self, now_ms: i64) -> bool {
        !self.running && self.next_due_ms.is_some_and(|due| now_ms >= due)
    }

    /// Marks a run as started; false if one is running already.
    pub fn begin(&mut self, trigger: Trigger, now_ms: i64) -> bool {
        if self.running {
            return false;
        }
        self.running = true;
        self.status.running = true;
        self.status.last_trigger = Some(trigger);
        self.status.last_started_ms = Some(now_ms);
        true
    }

    /// Marks the run as finished and plans the next one: `interval` after this run started,
    /// or sooner after a failure.
    pub fn finish(&mut self, now_ms: i64, error: Option<String>) {
        let started = self.status.last_started_ms.unwrap_or(now_ms);
        self.running = false;
        if self.interval_ms > 0 {
            let next = match error {
                None => started.saturating_add(self.interval_ms),
                Some(_) => now_ms.saturating_add(self.interval_ms.min(self.retry_ms)),
            };
            self.next_due_ms = Some(next);
        }
        self.status.running = false;
        self.status.runs += 1;
        self.status.last_finished_ms = Some(now_ms);
        self.status.last_error = error;
        self.status.next_due_ms = self.next_due_ms;
    }

    pub fn status(&self) -> RunStatus {
        self.status.clone()
    }
}

/// Why a job's run failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The data does not allow a run (too few rows, no live model): the caller may be told.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else (store failures, a crashed thread): logged, not shown to clients.
    #[error("{0}")]
    Internal(String),
}

/// A boxed future of a job (actix runs it on the actor's arbiter; heavy work inside must move
/// to another thread).
pub type JobFuture<T> = Pin<Box<dyn Future<Output = Result<T, JobError>>>>;

// ---------------------------------------------------------------------------------------------
// Pipeline
// ---------------------------------------------------------------------------------------------

/// The two models the trainer maintains.
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

/// The data a run learned from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingWindow {
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
    pub window: TrainingWindow,
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
    let digest = Md5::digest(user_id.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    let bucket = u64::from_be_bytes(head) % 10_000;
    (bucket as f64) < fraction.clamp(0.0, 1.0) * 10_000.0
}

/// Cutoffs `last − k · step` that leave `min_history` days of window before them, newest first.
fn cutoffs(from_ms: i64, last_ms: i64, p: &PipelineParams) -> Vec<i64> {
    let step = i64::from(p.cutoff_step_days.max(1)) * DAY_MS;
    let earliest = from_ms + i64::from(p.min_history_days) * DAY_MS;
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
    let from_ms = now_ms - i64::from(p.window_days) * DAY_MS;
    let d = &p.dataset;
    let window = TrainingWindow {
        from_ms,
        to_ms: now_ms,
        success_cutoffs_ms: cutoffs(
            from_ms,
            now_ms - i64::from(d.success_horizon_days) * DAY_MS,
            p,
        ),
        churn_cutoffs_ms: cutoffs(
            from_ms,
            now_ms - i64::from(d.churn_horizon_days) * DAY_MS,
            p,
        ),
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

// ---------------------------------------------------------------------------------------------
// The actor
// ---------------------------------------------------------------------------------------------

/// What one model's training in a run came to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelOutcome {
    pub name: String,
    /// The stored version; `None` when no model could be trained.
    pub version: Option<u64>,
    pub promoted: bool,
    pub decision: Option<PromotionDecision>,
    /// Why no model was trained.
    pub error: Option<String>,
    pub train_rows: usize,
    pub holdout_rows: usize,
    /// Held-out metrics of the candidate.
    pub metrics: Option<ClassificationReport>,
}

/// What a training run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainingReport {
    pub trigger: Trigger,
    pub started_ms: i64,
    pub duration_seconds: f64,
    pub window: TrainingWindow,
    /// Events read and users they belong to.
    pub events: usize,
    pub users: usize,
    pub models: Vec<ModelOutcome>,
}

/// The work of a training run, supplied by the server.
pub trait TrainingJob: 'static {
    /// Trains, evaluates, stores and (maybe) promotes both models on the data up to `now_ms`.
    fn run(&self, trigger: Trigger, now_ms: i64) -> JobFuture<TrainingReport>;
}

/// Why a requested run did not happen or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrainError {
    #[error("a run is in progress")]
    AlreadyRunning,
    #[error(transparent)]
    Failed(#[from] JobError),
}

/// Start a run now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct TrainModels {
    pub trigger: Trigger,
    /// Answered at once: `Ok` when the run started.
    pub started: oneshot::Sender<Result<(), TrainError>>,
    /// Answered when the run ends (optional).
    pub done: Option<oneshot::Sender<Result<TrainingReport, TrainError>>>,
}

/// Start a run if one is due (the actor sends itself this every `check_every`; tests send it
/// after moving a [`ManualClock`]).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CheckSchedule;

/// The schedule and the last run.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct GetTrainerStatus {
    pub reply: oneshot::Sender<RunStatus>,
}

/// Retrains the models on a schedule and on request; see the module docs.
pub struct Trainer {
    job: Arc<dyn TrainingJob>,
    clock: Arc<dyn Clock>,
    schedule: Schedule,
    /// How often the actor looks at the clock; `None`: only on [`CheckSchedule`].
    check_every: Option<Duration>,
}

impl Trainer {
    pub fn new(
        job: Arc<dyn TrainingJob>,
        clock: Arc<dyn Clock>,
        schedule: Schedule,
        check_every: Option<Duration>,
    ) -> Self {
        Trainer {
            job,
            clock,
            schedule,
            check_every,
        }
    }

    fn start_run(
        &mut self,
        trigger: Trigger,
        done: Option<oneshot::Sender<Result<TrainingReport, TrainError>>>,
        ctx: &mut Context<Self>,
    ) -> Result<(), TrainError> {
        let now = self.clock.now_ms();
        if !self.schedule.begin(trigger, now) {
            return Err(TrainError::AlreadyRunning);
        }
        tracing::info!(?trigger, "training run started");
        let fut = self.job.run(trigger, now);
        ctx.spawn(fut.into_actor(self).map(move |result, act, _| {
            let now = act.clock.now_ms();
            match &result {
                Ok(report) => {
                    tracing::info!(
                        duration_seconds = report.duration_seconds,
                        events = report.events,
                        "training run finished"
                    );
                    act.schedule.finish(now, None);
                }
                Err(error) => {
                    tracing::warn!(%error, "training run failed");
                    act.schedule.finish(now, Some(error.to_string()));
                }
            }
            if let Some(done) = done {
                let _ = done.send(result.map_err(TrainError::Failed));
            }
        }));
        Ok(())
    }
}

impl Actor for Trainer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16);
        if let Some(every) = self.check_every {
            ctx.run_interval(every, |act, ctx| {
                if act.schedule.is_due(act.clock.now_ms()) {
                    let _ = act.start_run(Trigger::Schedule, None, ctx);
                }
            });
        }
    }
}

impl Handler<TrainModels> for Trainer {
    type Result = ();

    fn handle(&mut self, msg: TrainModels, ctx: &mut Self::Context) {
        let started = self.start_run(msg.trigger, msg.done, ctx);
        let _ = msg.started.send(started);
    }
}

impl Handler<CheckSchedule> for Trainer {
    type Result = ();

    fn handle(&mut self, _: CheckSchedule, ctx: &mut Self::Context) {
        if self.schedule.is_due(self.clock.now_ms()) {
            let _ = self.start_run(Trigger::Schedule, None, ctx);
        }
    }
}

impl Handler<GetTrainerStatus> for Trainer {
    type Result = ();

    fn handle(&mut self, msg: GetTrainerStatus, _: &mut Self::Context) {
        let _ = msg.reply.send(self.schedule.status());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use momentum_models::events::EventKind;
    use momentum_models::features::Activity;
    use momentum_models::predict::forest::ForestParams;

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

    #[test]
    fn schedule_runs_on_time_and_retries_sooner_after_a_failure() {
        let hour = 3_600_000;
        let mut s = Schedule::new(Duration::from_secs(7 * 24 * 3600), Some(1000));
        assert!(!s.is_due(999) && s.is_due(1000));
        assert!(s.begin(Trigger::Schedule, 1000));
        assert!(!s.begin(Trigger::Request, 1001), "one run at a time");
        assert!(!s.is_due(10_000_000_000));
        s.finish(5000, None);
        assert_eq!(s.status().next_due_ms, Some(1000 + 7 * 24 * hour));
        assert!(s.begin(Trigger::Request, 6000));
        s.finish(7000, Some("store down".into()));
        assert_eq!(s.status().next_due_ms, Some(7000 + hour));
        assert_eq!(s.status().runs, 2);
        assert_eq!(s.status().last_error.as_deref(), Some("store down"));
        let never = Schedule::new(Duration::ZERO, Some(0));
        assert!(!never.is_due(i64::MAX));
    }

    /// Records the times it was run at.
    struct CountingJob(Arc<Mutex<Vec<i64>>>);

    impl TrainingJob for CountingJob {
        fn run(&self, trigger: Trigger, now_ms: i64) -> JobFuture<TrainingReport> {
            self.0.lock().expect("lock").push(now_ms);
            Box::pin(async move {
                Ok(TrainingReport {
                    trigger,
                    started_ms: now_ms,
                    duration_seconds: 0.0,
                    window: TrainingWindow::default(),
                    events: 0,
                    users: 0,
                    models: Vec::new(),
                })
            })
        }
    }

    #[test]
    fn the_actor_trains_when_the_fake_clock_says_so() {
        let week = Duration::from_secs(7 * 24 * 3600);
        actix::System::new().block_on(async move {
            let runs = Arc::new(Mutex::new(Vec::new()));
            let clock = Arc::new(ManualClock::new(0));
            let job: Arc<dyn TrainingJob> = Arc::new(CountingJob(runs.clone()));
            let addr =
                Trainer::new(job, clock.clone(), Schedule::new(week, Some(1000)), None).start();
            addr.send(CheckSchedule).await.expect("delivered");
            assert!(runs.lock().expect("lock").is_empty(), "not due yet");
            clock.set(1000);
            addr.send(CheckSchedule).await.expect("delivered");
            assert_eq!(finished_runs(&addr, 1).await, 1);
            clock.advance(week / 2);
            addr.send(CheckSchedule).await.expect("delivered");
            assert_eq!(finished_runs(&addr, 1).await, 1);
            clock.advance(week / 2);
            addr.send(CheckSchedule).await.expect("delivered");
            assert_eq!(finished_runs(&addr, 2).await, 2);
            assert_eq!(
                *runs.lock().expect("lock"),
                [1000, 1000 + week.as_millis() as i64]
            );
            // On request, any time; the reply carries the report.
            let (started, started_rx) = oneshot::channel();
            let (done, done_rx) = oneshot::channel();
            addr.send(TrainModels {
                trigger: Trigger::Request,
                started,
                done: Some(done),
            })
            .await
            .expect("delivered");
            assert_eq!(started_rx.await.expect("answer"), Ok(()));
            let report = done_rx.await.expect("answer").expect("report");
            assert_eq!(report.trigger, Trigger::Request);
            assert_eq!(runs.lock().expect("lock").len(), 3);
        });
    }

    /// Completed runs, once `expected` are done (the job's future completes on the actor's
    /// next poll) or after a few polls.
    async fn finished_runs(addr: &Addr<Trainer>, expected: u64) -> u64 {
        let mut runs = 0;
        for _ in 0..20 {
            let (reply, rx) = oneshot::channel();
            addr.send(GetTrainerStatus { reply })
                .await
                .expect("delivered");
            runs = rx.await.expect("answer").runs;
            if runs >= expected {
                break;
            }
            tokio::task::yield_now().await;
        }
        runs
    }
}
