//! The trainer's job ([`TrainingJob`] of `momentum_actors::trainer`): read the last
//! `window_days` of events from the store, train both models on a dedicated thread (never on an
//! HTTP worker or the actor's arbiter), store every version with its metadata, and put the
//! promoted ones in service. The CPU part, [`train_models`], is also what
//! `momentum train --events` runs on a simulator CSV.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use momentum_actors::trainer::{
    build_datasets, decide_promotion, evaluate, fit_candidate, Candidate, Datasets, JobError,
    JobFuture, ModelKind, ModelOutcome, PipelineParams, PromotionDecision, TrainingJob,
    TrainingReport, Trigger,
};
use momentum_models::dataset::UserHistory;
use momentum_models::events::EventKind;
use momentum_models::export::{self, ExportOptions, TrainingWindow as ExportWindow, Variant};
use momentum_models::features::{Activity, DAY_MS, FEATURE_NAMES};
use momentum_models::predict::classifier::Classifier;
use momentum_models::predict::logistic::LogisticRegression;
use momentum_models::predict::metrics::ClassificationReport;

use super::artifacts::{ArtifactError, Bundle, ExportInfo, CLASSIFIER};
use super::drift::Reference;
use super::registry::{LiveModel, RowCounts, VersionMetadata};
use super::Shared;
use crate::store::analytics::NewModelVersion;

/// Events read from the store per page.
const PAGE: usize = 50_000;

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

/// One model's result of [`train_models`].
#[derive(Debug, Clone)]
pub struct Trained {
    pub kind: ModelKind,
    pub candidate: Candidate,
    /// The live version on the same held-out rows (when it takes the current features).
    pub live_report: Option<ClassificationReport>,
    pub decision: PromotionDecision,
    pub rows: RowCounts,
    pub reference: Option<Reference>,
}

/// Both models' results; `Err` carries why a model could not be trained.
#[derive(Debug)]
pub struct TrainedSet {
    pub datasets_window: momentum_actors::trainer::TrainingWindow,
    pub models: Vec<(ModelKind, Result<Trained, String>)>,
}

fn row_counts(d: &Datasets, kind: ModelKind) -> RowCounts {
    let s = d.split(kind);
    RowCounts {
        train: s.train.len(),
        train_positives: s.train_labels.iter().filter(|&&l| l).count(),
        holdout: s.holdout.len(),
        holdout_positives: s.holdout_labels.iter().filter(|&&l| l).count(),
    }
}

/// The CPU part of a run: datasets, both candidates, the comparison with the live versions,
/// and the drift reference (from the churn training rows). `progress` is told what starts.
pub fn train_models(
    users: &[(String, UserHistory)],
    now_ms: i64,
    params: &PipelineParams,
    margin: f64,
    live: &[Option<Arc<LiveModel>>; 2],
    drift_bins: usize,
    progress: &dyn Fn(&str),
) -> TrainedSet {
    progress("building labelled rows");
    let d = build_datasets(users, now_ms, params);
    let mut models = Vec::with_capacity(2);
    for (i, kind) in ModelKind::ALL.into_iter().enumerate() {
        progress(&format!("training the {} model", kind.name()));
        let split = d.split(kind);
        let result = fit_candidate(split, params.classifier(kind), params)
            .map_err(|e| e.to_string())
            .map(|candidate| {
                let live_report = live[i]
                    .as_ref()
                    .filter(|m| m.takes_current_features())
                    .and_then(|m| evaluate(&m.classifier, m.threshold, split).ok());
                let decision = decide_promotion(&candidate.report, live_report.as_ref(), margin);
                let reference = match kind {
                    ModelKind::Churn => Reference::fit(&split.train, drift_bins),
                    ModelKind::Success => None,
                };
                Trained {
                    kind,
                    candidate,
                    live_report,
                    decision,
                    rows: row_counts(&d, kind),
                    reference,
                }
            });
        models.push((kind, result));
    }
    TrainedSet {
        datasets_window: d.window,
        models,
    }
}

/// The stored metadata of a trained candidate.
pub fn metadata(
    t: &Trained,
    params: &PipelineParams,
    window: &momentum_actors::trainer::TrainingWindow,
) -> VersionMetadata {
    VersionMetadata {
        model: t.kind,
        algorithm: match t.candidate.classifier {
            Classifier::Logistic(_) => "logistic_regression".into(),
            Classifier::Forest(_) => "random_forest".into(),
        },
        promoted: t.decision.promoted,
        decision: t.decision.clone(),
        params: params.classifier(t.kind).clone(),
        feature_names: FEATURE_NAMES.iter().map(|s| s.to_string()).collect(),
        feature_params: params.dataset.features.clone(),
        dataset_params: params.dataset.clone(),
        training_window: window.clone(),
        rows: t.rows,
        threshold: t.candidate.threshold,
        metrics: t.candidate.report.clone(),
        live_metrics: t.live_report.clone(),
        fit_seconds: t.candidate.fit_seconds,
        drift_reference: t.reference.clone(),
        exports: Vec::new(),
    }
}

/// The `.tflite` files of a logistic model version: float32 (what devices run) and int8
/// dynamic range (for LiteRT consumers), each with its export metadata.
pub fn export_files(
    model: &LogisticRegression,
    meta: &VersionMetadata,
    version: u64,
    created_ms: i64,
) -> Result<Vec<(ExportInfo, Vec<u8>)>, JobError> {
    let mut files = Vec::with_capacity(2);
    for variant in [Variant::Float32, Variant::Int8DynamicRange] {
        let mut options = ExportOptions::new(meta.model.name(), version, variant);
        options.created_ms = created_ms;
        options.feature_names = meta.feature_names.clone();
        options.feature_params = meta.feature_params.clone();
        options.training_window = Some(ExportWindow {
            from_ms: meta.training_window.from_ms,
            to_ms: meta.training_window.to_ms,
        });
        options.metrics = Some(meta.metrics.clone());
        options.threshold = Some(meta.threshold);
        let exported = export::export(model, &options).map_err(|e| {
            JobError::Internal(format!(
                "exporting {} v{version} ({}): {e}",
                meta.model.name(),
                variant.as_str()
            ))
        })?;
        let info = ExportInfo {
            variant,
            file: variant.file_name().to_string(),
            sha256: exported.metadata.sha256.clone(),
            size: exported.metadata.size,
            metadata: exported.metadata,
        };
        files.push((info, exported.bytes));
    }
    Ok(files)
}

/// The trainer's job against the store and the registry.
pub struct StoreTrainingJob {
    pub(super) shared: Arc<Shared>,
}

impl TrainingJob for StoreTrainingJob {
    fn run(&self, trigger: Trigger, now_ms: i64) -> JobFuture<TrainingReport> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let started = Instant::now();
            let result = run(&shared, trigger, now_ms).await;
            let elapsed = started.elapsed().as_secs_f64();
            shared.metrics.training_duration.set(elapsed);
            shared
                .metrics
                .training_runs
                .with_label_values(&[if result.is_ok() { "ok" } else { "error" }])
                .inc();
            result.map(|mut report| {
                report.duration_seconds = elapsed;
                report
            })
        })
    }
}

async fn run(
    shared: &Arc<Shared>,
    trigger: Trigger,
    now_ms: i64,
) -> Result<TrainingReport, JobError> {
    if shared.config.model_key.is_none() {
        // Fail before reading a single event: nothing trained could be stored.
        return Err(JobError::Unavailable(ArtifactError::MissingKey.to_string()));
    }
    let cfg = &shared.config.trainer;
    let params = cfg.pipeline();
    let from_ms = now_ms - i64::from(params.window_days) * DAY_MS;
    let mut builder = HistoryBuilder::default();
    let mut after = 0;
    loop {
        let (page, last) = shared
            .store
            .events_in_window(from_ms, after, PAGE)
            .await
            .map_err(|e| JobError::Internal(format!("reading the event log: {e}")))?;
        for e in &page {
            let e = &e.event;
            if e.ts_ms <= now_ms {
                builder.push(&e.user_id, e.item_id.as_deref(), &e.kind, e.ts_ms);
            }
        }
        if builder.events > cfg.max_events {
            return Err(JobError::Unavailable(format!(
                "the training window holds more than trainer.max_events = {} events",
                cfg.max_events
            )));
        }
        if page.is_empty() && last == after {
            break;
        }
        after = last;
    }
    let events = builder.events;
    let users = builder.finish();
    let n_users = users.len();
    let live = [
        shared.registry.get(ModelKind::Success),
        shared.registry.get(ModelKind::Churn),
    ];
    let margin = cfg.promotion_margin;
    let bins = shared.config.models.drift_bins;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_params = params.clone();
    std::thread::Builder::new()
        .name("momentum-trainer".into())
        .spawn(move || {
            let set = train_models(
                &users,
                now_ms,
                &thread_params,
                margin,
                &live,
                bins,
                &|step| tracing::debug!(step, "training"),
            );
            let _ = tx.send(set);
        })
        .map_err(|e| JobError::Internal(format!("cannot start the training thread: {e}")))?;
    let set = rx
        .await
        .map_err(|_| JobError::Internal("the training thread panicked".into()))?;
    let mut outcomes = Vec::with_capacity(set.models.len());
    for (kind, result) in set.models {
        let trained = match result {
            Ok(t) => t,
            Err(error) => {
                tracing::warn!(model = kind.name(), %error, "model not trained");
                outcomes.push(ModelOutcome {
                    name: kind.name().into(),
                    version: None,
                    promoted: false,
                    decision: None,
                    error: Some(error),
                    train_rows: 0,
                    holdout_rows: 0,
                    metrics: None,
                });
                continue;
            }
        };
        let mut meta = metadata(&trained, &params, &set.datasets_window);
        let parent = shared.registry.get(kind).map(|m| m.version);
        let created_ms = shared.clock.now_ms();
        // The export carries its version number, so it is taken before the insert (the
        // trainer is the only writer of model versions) and checked after it.
        let expected = shared
            .store
            .model_versions(Some(kind.name()))
            .await
            .map_err(|e| JobError::Internal(format!("reading the {} versions: {e}", kind.name())))?
            .last()
            .map_or(1, |v| v.version + 1);
        let mut bundle = Bundle::default();
        bundle.insert(
            CLASSIFIER,
            serde_json::to_vec(&trained.candidate.classifier)
                .map_err(|e| JobError::Internal(e.to_string()))?,
        );
        if let Classifier::Logistic(model) = &trained.candidate.classifier {
            for (info, bytes) in export_files(model, &meta, expected, created_ms)? {
                bundle.insert(&info.file, bytes);
                meta.exports.push(info);
            }
        }
        let meta_json =
            serde_json::to_value(&meta).map_err(|e| JobError::Internal(e.to_string()))?;
        let bytes = bundle
            .seal(shared.config.model_key.as_ref())
            .map_err(|e| JobError::Unavailable(e.to_string()))?;
        let version = shared
            .store
            .insert_model_version(&NewModelVersion {
                name: kind.name(),
                created_ms,
                parent_version: parent,
                metadata: &meta_json,
                bytes: &bytes,
            })
            .await
            .map_err(|e| JobError::Internal(format!("storing the {} model: {e}", kind.name())))?;
        if version != expected {
            return Err(JobError::Internal(format!(
                "stored {} as version {version}, exported as {expected}: another writer stored a version meanwhile",
                kind.name()
            )));
        }
        tracing::info!(
            model = kind.name(),
            version,
            promoted = trained.decision.promoted,
            reason = %trained.decision.reason,
            auc = ?trained.candidate.report.auc,
            "model version stored"
        );
        if trained.decision.promoted {
            let live = LiveModel::new(
                meta,
                version,
                created_ms,
                trained.candidate.classifier.clone(),
            );
            shared.install(Arc::new(live));
            shared
                .metrics
                .promotions
                .with_label_values(&[kind.name()])
                .inc();
        }
        outcomes.push(ModelOutcome {
            name: kind.name().into(),
            version: Some(version),
            promoted: trained.decision.promoted,
            decision: Some(trained.decision),
            error: None,
            train_rows: trained.rows.train,
            holdout_rows: trained.rows.holdout,
            metrics: Some(trained.candidate.report),
        });
    }
    if outcomes.iter().all(|o| o.version.is_none()) {
        let reasons: Vec<String> = outcomes
            .iter()
            .map(|o| format!("{}: {}", o.name, o.error.as_deref().unwrap_or("?")))
            .collect();
        return Err(JobError::Unavailable(format!(
            "no model could be trained from {events} events of {n_users} users ({})",
            reasons.join("; ")
        )));
    }
    Ok(TrainingReport {
        trigger,
        started_ms: now_ms,
        duration_seconds: 0.0,
        window: set.datasets_window,
        events,
        users: n_users,
        models: outcomes,
    })
}
