//! The `training` job: read the last `window_days` of events from the store, train both
//! models on a dedicated thread (never on an HTTP worker or the runner's arbiter), store every
//! version with its metadata, and put the promoted ones in service. In a cluster only the
//! leader runs it: it reads the window from the events topic, stores the versions for the
//! cluster, and every node copies and serves them ([`crate::cluster::training`]). The CPU part,
//! [`train_models`], runs the pure pipeline of [`momentum_models::training`]; `momentum train
//! --events` runs it too, on a simulator CSV.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use momentum_models::clock::days_ms;
use momentum_models::dataset::UserHistory;
use momentum_models::export::{self, ExportOptions, TrainingWindow as ExportWindow, Variant};
use momentum_models::features::FEATURE_NAMES;
use momentum_models::predict::classifier::Classifier;
use momentum_models::predict::logistic::LogisticRegression;
use momentum_models::predict::metrics::ClassificationReport;
use momentum_models::training::{
    build_datasets, decide_promotion, evaluate, fit_candidate, Candidate, DatasetWindow, Datasets,
    HistoryBuilder, ModelKind, PipelineError, PipelineParams, PromotionDecision,
};

use super::{Job, JobError, JobFuture, Trigger};
use crate::analytics::artifacts::{ArtifactError, Bundle, ExportInfo, CLASSIFIER};
use crate::analytics::copy_cluster_versions;
use crate::analytics::drift::Reference;
use crate::analytics::registry::{LiveModel, RowCounts, VersionMetadata};
use crate::analytics::Shared;
use crate::cluster::training::{read_window, ClusterVersion, ReadError, VersionStore, WindowFold};
use crate::cluster::Cluster;
use crate::error::Report;
use crate::store::analytics::NewModelVersion;

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
    pub window: DatasetWindow,
    /// Events read and users they belong to.
    pub events: usize,
    pub users: usize,
    pub models: Vec<ModelOutcome>,
}

/// Events read from the store per page.
const PAGE: usize = 50_000;

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

/// Both models' results; `Err` says why a model could not be trained.
#[derive(Debug)]
pub struct TrainedSet {
    pub datasets_window: DatasetWindow,
    pub models: Vec<(ModelKind, Result<Trained, PipelineError>)>,
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
        let result = fit_candidate(split, params.classifier(kind), params).map(|candidate| {
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
pub fn metadata(t: &Trained, params: &PipelineParams, window: &DatasetWindow) -> VersionMetadata {
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
            JobError::failed(
                format!(
                    "exporting {} v{version} ({})",
                    meta.model.name(),
                    variant.as_str()
                ),
                e,
            )
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

/// The `training` job against the store and the registry.
pub struct TrainingJob {
    pub(crate) shared: Arc<Shared>,
    /// Cluster mode: only the leader trains, from the events topic, and stores the versions
    /// for the cluster ([`crate::cluster::training`]).
    pub(crate) cluster: Option<Arc<Cluster>>,
}

impl Job for TrainingJob {
    type Report = TrainingReport;
    const NAME: &'static str = "training";

    /// In a cluster the schedule is the leader's: another node lets its due runs pass.
    fn scheduled_here(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.is_leader())
    }

    fn run(&self, trigger: Trigger, now_ms: i64) -> JobFuture<TrainingReport> {
        let shared = self.shared.clone();
        let cluster = self.cluster.clone();
        Box::pin(async move {
            let started = Instant::now();
            let result = run(&shared, cluster.as_ref(), trigger, now_ms).await;
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

/// The window's events from the store's log (a single node), each user's repeated
/// `event_id` once.
async fn read_store(
    shared: &Arc<Shared>,
    from_ms: i64,
    now_ms: i64,
) -> Result<HistoryBuilder, JobError> {
    let max_events = shared.config.trainer.max_events;
    let mut fold = WindowFold::new(from_ms, now_ms);
    let mut after = 0;
    loop {
        let (page, last) = shared
            .store
            .events_in_window(from_ms, after, PAGE)
            .await
            .map_err(|e| JobError::failed("reading the event log", e))?;
        let exhausted = page.is_empty() && last == after;
        for e in page {
            let e = e.event;
            fold.push_event(
                e.user_id,
                e.event_id.as_deref(),
                e.item_id,
                &e.kind,
                e.ts_ms,
            );
        }
        if fold.events > max_events {
            return Err(too_many_events(max_events));
        }
        if exhausted {
            if fold.duplicates > 0 {
                tracing::info!(
                    duplicates = fold.duplicates,
                    "repeated events of the log not trained on"
                );
            }
            return Ok(fold.into_builder());
        }
        after = last;
    }
}

/// The cluster's version table, once this node's store holds every version of it: the live
/// versions a run compares its candidates with, and the parents it names, are then the
/// cluster's newest (a node that just became leader may not have copied them yet).
async fn catch_up(shared: &Shared, cluster: &Arc<Cluster>) -> Result<Arc<VersionStore>, JobError> {
    let unavailable = |e| cluster_unavailable(Some(cluster), "the cluster's model versions", e);
    let versions = cluster
        .model_versions()
        .get(cluster)
        .await
        .map_err(unavailable)?;
    while copy_cluster_versions(shared, cluster)
        .await
        .map_err(unavailable)?
        > 0
    {}
    Ok(versions)
}

/// A failure of the cluster's PostgreSQL (or the broker) during a run: logged with its cause,
/// answered `503` with the cluster's `Retry-After`.
fn cluster_unavailable(
    cluster: Option<&Arc<Cluster>>,
    context: &str,
    error: impl std::fmt::Display,
) -> JobError {
    tracing::warn!(%error, context, "training in the cluster");
    JobError::failed(
        context.to_owned(),
        crate::Error::Unavailable {
            what: "the cluster's PostgreSQL or event log",
            retry_after: cluster.map_or(1, |c| c.retry_after()),
        },
    )
}

fn too_many_events(max_events: usize) -> JobError {
    JobError::unavailable(format!(
        "the training window holds more than trainer.max_events = {max_events} events"
    ))
}

/// The window's events from the cluster's events topic ([`read_window`]), and how much of the
/// log they cover.
async fn read_topic(
    cluster: &Arc<Cluster>,
    from_ms: i64,
    now_ms: i64,
    max_events: usize,
) -> Result<(HistoryBuilder, i64), JobError> {
    let settings = cluster.settings().clone();
    let started = Instant::now();
    let window =
        tokio::task::spawn_blocking(move || read_window(&settings, from_ms, now_ms, max_events))
            .await
            .map_err(|e| JobError::failed("reading the events topic panicked", e))?;
    match window {
        Ok(window) => {
            tracing::info!(
                records = window.records,
                events = window.fold.events,
                duplicates = window.fold.duplicates,
                erased = window.fold.erased,
                seconds = started.elapsed().as_secs_f64(),
                "training window read from the events topic"
            );
            Ok((window.fold.into_builder(), window.progress))
        }
        Err(ReadError::TooManyEvents(max)) => Err(too_many_events(max)),
        Err(error) => Err(cluster_unavailable(
            Some(cluster),
            "reading the training window",
            error,
        )),
    }
}

async fn run(
    shared: &Arc<Shared>,
    cluster: Option<&Arc<Cluster>>,
    trigger: Trigger,
    now_ms: i64,
) -> Result<TrainingReport, JobError> {
    if shared.config.model_key.is_none() {
        // Fail before reading a single event: nothing trained could be stored.
        return Err(JobError::unavailable(ArtifactError::MissingKey.to_string()));
    }
    if let Some(cluster) = cluster.filter(|c| !c.is_leader()) {
        return Err(JobError::unavailable(format!(
            "in a cluster only the leader trains; node {:?} does not serve partition {}",
            cluster.settings().node_id,
            crate::cluster::LEADER_PARTITION
        )));
    }
    let versions = match cluster {
        None => None,
        Some(cluster) => Some(catch_up(shared, cluster).await?),
    };
    let cfg = &shared.config.trainer;
    let params = cfg.pipeline();
    let from_ms = now_ms - days_ms(params.window_days);
    let (builder, progress) = match cluster {
        None => (read_store(shared, from_ms, now_ms).await?, None),
        Some(cluster) => {
            let (builder, progress) = read_topic(cluster, from_ms, now_ms, cfg.max_events).await?;
            (builder, Some(progress))
        }
    };
    let events = builder.events;
    let users = builder.finish();
    let n_users = users.len();
    let live = [
        shared.live.get(ModelKind::Success),
        shared.live.get(ModelKind::Churn),
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
        .map_err(|e| JobError::failed("cannot start the training thread", e))?;
    let set = rx
        .await
        .map_err(|_| JobError::internal("the training thread panicked"))?;
    let mut outcomes = Vec::with_capacity(set.models.len());
    for (kind, result) in set.models {
        let trained = match result {
            Ok(t) => t,
            Err(error) => {
                tracing::warn!(model = kind.name(), error = %Report(&error), "model not trained");
                outcomes.push(ModelOutcome {
                    name: kind.name().into(),
                    version: None,
                    promoted: false,
                    decision: None,
                    error: Some(error.to_string()),
                    train_rows: 0,
                    holdout_rows: 0,
                    metrics: None,
                });
                continue;
            }
        };
        let mut meta = metadata(&trained, &params, &set.datasets_window);
        let parent = shared.live.get(kind).map(|m| m.version);
        let created_ms = shared.clock.now_ms();
        // The export carries its version number, so it is taken before the version is stored
        // (the trainer is the only writer of model versions; in a cluster, the leader) and
        // checked as it is stored.
        let expected = match &versions {
            None => shared
                .store
                .model_versions(Some(kind.name()))
                .await
                .map_err(|e| JobError::failed(format!("reading the {} versions", kind.name()), e))?
                .last()
                .map_or(1, |v| v.version + 1),
            Some(versions) => versions
                .numbers(kind.name())
                .await
                .map_err(|e| cluster_unavailable(cluster, "reading the cluster's versions", e))?
                .last()
                .map_or(1, |v| v + 1),
        };
        let mut bundle = Bundle::default();
        bundle.insert(
            CLASSIFIER,
            serde_json::to_vec(&trained.candidate.classifier)
                .map_err(|e| JobError::failed("serialising the classifier", e))?,
        );
        if let Classifier::Logistic(model) = &trained.candidate.classifier {
            for (info, bytes) in export_files(model, &meta, expected, created_ms)? {
                bundle.insert(&info.file, bytes);
                meta.exports.push(info);
            }
        }
        let meta_json =
            serde_json::to_value(&meta).map_err(|e| JobError::failed("serialising metadata", e))?;
        let bytes = bundle
            .seal(shared.config.model_key.as_ref())
            .map_err(|e| JobError::unavailable(e.to_string()))?;
        let new = NewModelVersion {
            name: kind.name(),
            created_ms,
            parent_version: parent,
            metadata: &meta_json,
            bytes: &bytes,
        };
        let version = match (&versions, cluster) {
            (Some(versions), Some(cluster)) => {
                let stored = versions
                    .publish(&ClusterVersion {
                        name: kind.name().into(),
                        version: expected,
                        progress: progress.unwrap_or(0),
                        node_id: cluster.settings().node_id.clone(),
                        created_ms,
                        parent_version: parent,
                        metadata: meta_json.clone(),
                        bytes: bytes.clone(),
                    })
                    .await
                    .map_err(|e| {
                        cluster_unavailable(Some(cluster), "storing a version for the cluster", e)
                    })?;
                if !stored {
                    cluster.metrics().model_versions_fenced.inc();
                    let error = format!(
                        "the cluster stored {} v{expected} meanwhile, or a version trained from more of the log: this one is dropped",
                        kind.name()
                    );
                    tracing::warn!(model = kind.name(), "{error}");
                    outcomes.push(ModelOutcome {
                        name: kind.name().into(),
                        version: None,
                        promoted: false,
                        decision: None,
                        error: Some(error),
                        train_rows: trained.rows.train,
                        holdout_rows: trained.rows.holdout,
                        metrics: Some(trained.candidate.report),
                    });
                    continue;
                }
                // This node's copy; every other node makes its own (`copy_cluster_versions`).
                if !shared
                    .store
                    .put_model_version(expected, &new)
                    .await
                    .map_err(|e| {
                        JobError::failed(format!("storing the {} model", kind.name()), e)
                    })?
                {
                    tracing::warn!(
                        model = kind.name(),
                        version = expected,
                        "the local store already holds a version of this number; the cluster's is served"
                    );
                }
                expected
            }
            _ => {
                shared.store.insert_model_version(&new).await.map_err(|e| {
                    JobError::failed(format!("storing the {} model", kind.name()), e)
                })?
            }
        };
        if version != expected {
            return Err(JobError::internal(format!(
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
        return Err(JobError::unavailable(format!(
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
