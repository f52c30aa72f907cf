//! Predictive analytics on the server side: the live success and churn models, the features
//! they are served with, forecasts, online accuracy and drift.
//!
//! - [`registry`]: the live version of each model (swapped atomically on promotion, restored
//!   from the store on start) and the metadata every stored version carries.
//! - [`online`], [`drift`]: what the served predictions are compared with.
//! - This module: [`Analytics`], the handle in `AppState` the HTTP routes call. It starts and
//!   holds the `training` and `churn_scoring` jobs ([`crate::jobs::training`],
//!   [`crate::jobs::churn`]), which train the models and score users with them.
//!
//! Serving rules: features are computed from the user's activity log in their shard as of
//! now, with the default feature windows and no signup time (as in training); a prediction
//! before any model was trained is `503 model_not_ready`. Model evaluation is a few hundred
//! nanoseconds, so it runs on the HTTP worker; training and batch scoring never do.

pub mod artifacts;
pub mod config;
pub mod download;
pub mod drift;
pub mod metrics;
pub mod offline;
pub mod online;
pub mod registry;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use momentum_actors::engine::NewEvent;
use momentum_actors::{ActorError, Engine};
use momentum_models::churn::Tier;
use momentum_models::clock::{day_of, day_start_ms, Clock, SystemClock};
use momentum_models::events::EventKind;
use momentum_models::features::{
    goal_states, recommended_actions, risk_factors, Activity, Advice, FeatureParams, Features,
    GoalStatus, FEATURE_COUNT,
};
use momentum_models::predict::classifier::Classifier;
use momentum_models::predict::smoothing;
use momentum_models::training::ModelKind;

use crate::error::{Error, Report};
use crate::jobs::churn::{ActivitySource, ChurnScoringJob, ScoringReport};
use crate::jobs::training::{TrainingJob, TrainingReport};
use crate::jobs::{JobHandle, JobRunner, JobStatus, Schedule};
use crate::metrics::JobMetrics;
use crate::store::analytics::{ChurnTierDay, ModelVersionRow, NewModelVersion, StoredIntervention};
use crate::store::Store;
use crate::AppState;
pub use config::AnalyticsConfig;
use metrics::AnalyticsMetrics;
use registry::{LiveModel, LiveModels};

/// What the jobs and the routes share.
pub struct Shared {
    pub config: AnalyticsConfig,
    pub store: Arc<Store>,
    pub live: LiveModels,
    pub metrics: AnalyticsMetrics,
    pub online: online::OnlineAccuracy,
    pub drift: drift::DriftMonitor,
    pub clock: Arc<dyn Clock>,
    /// Served vectors of users active in this many days count for drift (the churn rows'
    /// activity window).
    pub drift_active_days: u32,
}

impl Shared {
    /// Puts a version in service and publishes its gauges (and, for churn, its drift
    /// reference).
    pub fn install(&self, model: Arc<LiveModel>) {
        let name = model.kind.name();
        let m = &self.metrics;
        m.model_accuracy
            .with_label_values(&[name])
            .set(model.accuracy);
        m.model_f1.with_label_values(&[name]).set(model.f1);
        m.model_version
            .with_label_values(&[name])
            .set(i64::try_from(model.version).unwrap_or(i64::MAX));
        if model.kind == ModelKind::Churn {
            self.drift.set_reference(model.reference.clone());
        }
        self.live.set(model);
    }
}

/// Copies the cluster's model versions this node's store lacks into it, under the cluster's
/// numbers, and puts the newest promoted one of each model in service
/// ([`crate::cluster::training`]); the number of versions copied, at most [`COPY_BATCH`] per
/// model and call. A version that cannot be opened (another `security.model_key`) is copied
/// but not served, and logged.
pub async fn copy_cluster_versions(
    shared: &Shared,
    cluster: &crate::cluster::Cluster,
) -> Result<usize, Error> {
    let versions = cluster.model_versions().get(cluster).await?;
    let mut copied = 0;
    for kind in ModelKind::ALL {
        let name = kind.name();
        let local: std::collections::HashSet<u64> = shared
            .store
            .model_versions(Some(name))
            .await?
            .iter()
            .map(|v| v.version)
            .collect();
        let missing: Vec<u64> = versions
            .numbers(name)
            .await?
            .into_iter()
            .filter(|v| !local.contains(v))
            .take(COPY_BATCH)
            .collect();
        for number in missing {
            let Some(v) = versions.get(name, number).await? else {
                continue;
            };
            let new = NewModelVersion {
                name,
                created_ms: v.created_ms,
                parent_version: v.parent_version,
                metadata: &v.metadata,
                bytes: &v.bytes,
            };
            if !shared.store.put_model_version(v.version, &new).await? {
                tracing::warn!(
                    model = name,
                    version = v.version,
                    "the local store holds another version of this number; the cluster's is not served here"
                );
                continue;
            }
            copied += 1;
            cluster.metrics().model_versions_copied.inc();
            let row = ModelVersionRow {
                name: name.to_owned(),
                version: v.version,
                created_ms: v.created_ms,
                parent_version: v.parent_version,
                metadata: v.metadata.clone(),
            };
            if !row.promoted()
                || shared
                    .live
                    .get(kind)
                    .is_some_and(|m| m.version >= v.version)
            {
                continue;
            }
            match LiveModel::from_stored(&row, &v.bytes, shared.config.model_key.as_ref()) {
                Ok(model) => {
                    tracing::info!(
                        model = name,
                        version = v.version,
                        node = %v.node_id,
                        "model version installed from the cluster"
                    );
                    shared.install(Arc::new(model));
                }
                Err(error) => tracing::error!(
                    error = %Report(&error),
                    node = %v.node_id,
                    "the cluster's model version cannot be served here (is security.model_key the same on every node?)"
                ),
            }
        }
    }
    Ok(copied)
}

/// Versions of a model [`copy_cluster_versions`] copies per call.
pub const COPY_BATCH: usize = 16;

/// [`Analytics::observe_events`] on the shared part: in a cluster the owner of the user's
/// partition serves their predictions (reads are forwarded to it), so it is the one that
/// compares the outcomes, as it applies the events.
pub fn observe_outcomes(s: &Shared, engine: &Engine, events: &[NewEvent]) {
    if s.online.is_empty() {
        return;
    }
    let now = s.clock.now_ms();
    let index = engine.index();
    for e in events {
        let completed = match e.kind {
            EventKind::Complete => true,
            EventKind::Abandon => false,
            _ => continue,
        };
        let (Some(user), Some(goal)) = (
            index.users.get(&e.user_id),
            e.item_id.as_deref().and_then(|i| index.items.get(i)),
        ) else {
            continue;
        };
        if let Some(score) = s
            .online
            .observe_outcome(user, goal, completed, e.ts_ms, now)
        {
            publish_online(s, score);
        }
    }
}

fn publish_online(s: &Shared, score: online::OnlineScore) {
    let m = &s.metrics;
    m.online_accuracy
        .with_label_values(&["success"])
        .set(score.accuracy);
    m.online_f1.with_label_values(&["success"]).set(score.f1);
    m.online_outcomes
        .with_label_values(&["success"])
        .set(score.outcomes as f64);
}

/// The analytics handle kept in `AppState`.
pub struct Analytics {
    shared: Arc<Shared>,
    /// Newest stored version's creation time (schedules the first training run).
    last_trained_ms: Option<i64>,
    training: OnceLock<JobHandle<TrainingJob>>,
    churn_scoring: OnceLock<JobHandle<ChurnScoringJob>>,
}

/// A user's features now.
#[derive(Debug, Clone)]
pub struct UserFeatures {
    pub as_of_ms: i64,
    pub features: Features,
    pub log: Vec<Activity>,
    /// When the feature computation started (inference latency counts from here).
    pub computed_from: Instant,
}

/// A success prediction.
#[derive(Debug, Clone, Serialize)]
pub struct SuccessPrediction {
    pub probability: f64,
    /// `|2p − 1|`: how far the model is from a coin flip.
    pub confidence: f64,
    /// The model's decision threshold (F1-maximising on its training data).
    pub threshold: f64,
    pub model_version: u64,
    pub recommended_actions: Vec<Advice>,
}

/// A churn prediction.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnPrediction {
    pub probability: f64,
    /// `clamp(1 − 2·std)` of the trees' probabilities.
    pub confidence: f64,
    pub tier: Tier,
    pub risk_factors: Vec<Advice>,
    pub interventions: Vec<&'static str>,
    pub model_version: u64,
}

/// An activity forecast.
#[derive(Debug, Clone, Serialize)]
pub struct ActivityForecast {
    /// `holt`, `holt_winters`.
    pub method: &'static str,
    /// Complete days of history the model was fitted on.
    pub history_days: usize,
    pub forecast: Vec<ForecastPoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ForecastPoint {
    pub date: String,
    /// Expected activity events that day.
    pub value: f64,
}

/// Days of history a forecast is fitted on (eight weeks: enough for a weekly season).
const FORECAST_HISTORY_DAYS: i64 = 56;

/// `YYYY-MM-DD` (UTC) of a unix-millisecond time.
pub fn day_string(ms: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Churn probability and confidence: a forest's mean and agreement; for a logistic model,
/// `p` and `|2p − 1|`.
pub fn churn_probability(model: &LiveModel, x: &[f64; FEATURE_COUNT]) -> (f64, f64) {
    match &model.classifier {
        Classifier::Forest(f) => {
            let p = f.predict(x);
            (p.probability, p.confidence)
        }
        Classifier::Logistic(l) => {
            let p = l.predict_proba(x);
            (p, (2.0 * p - 1.0).abs())
        }
    }
}

/// Daily activity counts (impressions excluded) of the complete days before `now_ms`, from
/// the first active day (at most [`FORECAST_HISTORY_DAYS`] back), and the forecast of the next
/// `days` days starting today. A user whose only activity is today gets today's count so far
/// as a one-point series.
pub fn forecast_activity(
    log: &[Activity],
    now_ms: i64,
    days: usize,
) -> Result<ActivityForecast, Error> {
    let today = day_of(now_ms);
    let first_day = log
        .iter()
        .filter(|a| a.kind != EventKind::Impression && a.ts_ms <= now_ms)
        .map(|a| day_of(a.ts_ms))
        .min()
        .unwrap_or(today)
        .max(today - FORECAST_HISTORY_DAYS);
    let len = usize::try_from(today - first_day + 1).unwrap_or(1);
    let mut counts = vec![0.0; len];
    for a in log {
        let day = day_of(a.ts_ms);
        if a.kind != EventKind::Impression && a.ts_ms <= now_ms && day >= first_day {
            counts[(day - first_day) as usize] += 1.0;
        }
    }
    // Drop today (incomplete) unless it is all there is.
    if counts.len() > 1 {
        counts.pop();
    }
    let fc = smoothing::forecast(&counts, days).map_err(|e| Error::failed("forecast", e))?;
    let method = match fc.method {
        smoothing::SmoothingMethod::Holt { .. } => "holt",
        smoothing::SmoothingMethod::HoltWinters { .. } => "holt_winters",
    };
    Ok(ActivityForecast {
        method,
        history_days: counts.len(),
        forecast: fc
            .values
            .iter()
            .enumerate()
            .map(|(h, &value)| ForecastPoint {
                date: day_string(day_start_ms(today + h as i64)),
                value,
            })
            .collect(),
    })
}

impl Analytics {
    /// Builds the handle and restores the live versions from the store.
    pub async fn new(
        config: AnalyticsConfig,
        store: Arc<Store>,
        registry: &prometheus::Registry,
    ) -> Result<Analytics, Error> {
        Self::with_clock(config, store, registry, Arc::new(SystemClock)).await
    }

    /// [`Analytics::new`] with another clock (tests).
    pub async fn with_clock(
        config: AnalyticsConfig,
        store: Arc<Store>,
        registry: &prometheus::Registry,
        clock: Arc<dyn Clock>,
    ) -> Result<Analytics, Error> {
        config.validate()?;
        let metrics =
            AnalyticsMetrics::new(registry).map_err(|e| Error::failed("metrics registry", e))?;
        let dataset = config.trainer.pipeline().dataset;
        let horizon_ms = momentum_models::clock::days_ms(dataset.success_horizon_days);
        let shared = Arc::new(Shared {
            online: online::OnlineAccuracy::new(
                config.models.online_capacity,
                config.models.online_window,
                horizon_ms,
            ),
            drift: drift::DriftMonitor::new(config.models.drift_min_samples),
            config,
            store,
            live: LiveModels::default(),
            metrics,
            clock,
            drift_active_days: dataset.churn_active_days,
        });
        let store_err = |e: crate::store::StoreError| Error::failed("reading models", e);
        let mut last_trained_ms = None;
        for kind in ModelKind::ALL {
            let versions = shared
                .store
                .model_versions(Some(kind.name()))
                .await
                .map_err(store_err)?;
            last_trained_ms = last_trained_ms.max(versions.last().map(|v| v.created_ms));
            if let Some((row, bytes)) = shared
                .store
                .live_model_version(kind.name())
                .await
                .map_err(store_err)?
            {
                match LiveModel::from_stored(&row, &bytes, shared.config.model_key.as_ref()) {
                    Ok(model) => {
                        tracing::info!(
                            model = kind.name(),
                            version = model.version,
                            "live model restored"
                        );
                        shared.install(Arc::new(model));
                    }
                    Err(error) => tracing::error!(
                        error = %Report(&error),
                        "stored live model is unreadable"
                    ),
                }
            }
        }
        Ok(Analytics {
            shared,
            last_trained_ms,
            training: OnceLock::new(),
            churn_scoring: OnceLock::new(),
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The live version of a model, if any.
    pub fn live(&self, kind: ModelKind) -> Option<Arc<LiveModel>> {
        self.shared.live.get(kind)
    }

    /// Every stored version of `name` (every model with `None`), oldest first.
    pub async fn model_versions(&self, name: Option<&str>) -> Result<Vec<ModelVersionRow>, Error> {
        Ok(self.shared.store.model_versions(name).await?)
    }

    /// One stored version's row, if it exists.
    pub async fn model_version(
        &self,
        kind: ModelKind,
        version: u64,
    ) -> Result<Option<ModelVersionRow>, Error> {
        let found = self
            .shared
            .store
            .model_version(kind.name(), version)
            .await?;
        Ok(found.map(|(row, _bytes)| row))
    }

    /// Interventions with an id above `since`, oldest first, at most `limit`.
    pub async fn interventions_after(
        &self,
        since: u64,
        limit: usize,
    ) -> Result<Vec<StoredIntervention>, Error> {
        self.shared
            .store
            .interventions_after(since, limit)
            .await
            .map_err(|e| Error::failed("reading interventions", e))
    }

    /// Users per churn tier for each of the last `days` scoring days.
    pub async fn churn_tier_history(&self, days: usize) -> Result<Vec<ChurnTierDay>, Error> {
        self.shared
            .store
            .churn_tier_history(days)
            .await
            .map_err(|e| Error::failed("reading churn scores", e))
    }

    /// PSI per feature now (training window against recently served vectors), if enough
    /// vectors were served.
    pub fn drift_now(&self) -> Option<[f64; FEATURE_COUNT]> {
        self.shared.drift.current(self.shared.clock.now_ms())
    }

    /// Starts the `training` and `churn_scoring` jobs on the current arbiter. The churn job
    /// reads activity through `source`. Called once; later calls do nothing.
    pub fn start_jobs(
        &self,
        source: Arc<dyn ActivitySource>,
        metrics: JobMetrics,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) {
        let shared = &self.shared;
        let now = shared.clock.now_ms();
        let t = &shared.config.trainer;
        let secs = |s: u64| i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000);
        // A restart never trains at once: restoring state comes first.
        let first_training = match self.last_trained_ms {
            Some(last) => Some(last.saturating_add(secs(t.interval_secs)).max(now + 60_000)),
            None if t.bootstrap_delay_secs > 0 => Some(now + secs(t.bootstrap_delay_secs)),
            None => Some(now.saturating_add(secs(t.interval_secs))),
        };
        let check = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        if self.training.get().is_none() {
            let training = JobRunner::new(
                TrainingJob {
                    shared: shared.clone(),
                    cluster: cluster.clone(),
                },
                shared.clock.clone(),
                Schedule::new(t.interval(), first_training),
                check(t.check_every_secs),
                Some(metrics.clone()),
            );
            let _ = self.training.set(training.spawn());
        }
        let c = &shared.config.churn;
        if self.churn_scoring.get().is_none() {
            let churn = JobRunner::new(
                ChurnScoringJob {
                    shared: shared.clone(),
                    source,
                    cluster,
                },
                shared.clock.clone(),
                Schedule::new(c.interval(), Some(now + secs(c.first_run_delay_secs))),
                check(c.check_every_secs),
                Some(metrics),
            );
            let _ = self.churn_scoring.set(churn.spawn());
        }
    }

    /// The user's features now.
    pub async fn user_features(
        &self,
        engine: &Engine,
        user_id: &str,
    ) -> Result<UserFeatures, ActorError> {
        let log = engine.activity(user_id).await?;
        let computed_from = Instant::now();
        let as_of_ms = self.shared.clock.now_ms();
        let features = Features::compute(&log, as_of_ms, None, &FeatureParams::default());
        Ok(UserFeatures {
            as_of_ms,
            features,
            log,
            computed_from,
        })
    }

    /// The live version of a model, or `503 model_not_ready`.
    fn serving(&self, kind: ModelKind) -> Result<Arc<LiveModel>, Error> {
        self.shared
            .live
            .get(kind)
            .ok_or(Error::ModelNotReady { model: kind.name() })
    }

    /// The live model's input schema (for device requests).
    pub fn feature_names(&self, kind: ModelKind) -> Result<Vec<String>, Error> {
        Ok(self.serving(kind)?.feature_names.clone())
    }

    /// `503 model_not_ready` unless the model has a live version.
    pub fn require(&self, kind: ModelKind) -> Result<(), Error> {
        self.serving(kind).map(|_| ())
    }

    /// Success probability for features already computed; `pair` (dense user and goal ids)
    /// is remembered for online accuracy. `started` is when the feature computation began
    /// (for the inference histogram).
    pub fn predict_success(
        &self,
        features: &Features,
        pair: Option<(u32, u32)>,
        started: Instant,
    ) -> Result<SuccessPrediction, Error> {
        let model = self.serving(ModelKind::Success)?;
        let x = features.to_array();
        let probability = model.classifier.predict_proba(&x);
        let s = &self.shared;
        s.metrics
            .inference_duration
            .with_label_values(&["success"])
            .observe(started.elapsed().as_secs_f64());
        let now = s.clock.now_ms();
        self.record_drift(features, &x, now);
        if let Some((user, goal)) = pair {
            let predicted = probability >= model.threshold;
            if let Some(score) = s.online.record_prediction(user, goal, predicted, now) {
                publish_online(s, score);
            }
        }
        Ok(SuccessPrediction {
            probability,
            confidence: (2.0 * probability - 1.0).abs(),
            threshold: model.threshold,
            model_version: model.version,
            recommended_actions: recommended_actions(features, 3),
        })
    }

    /// Counts a served vector for drift if its user belongs to the population the reference
    /// describes: users active in the `churn_active_days` (14) before the training cutoffs.
    /// (Vectors of long-inactive users would otherwise show as drift that is only a different
    /// mix of who asks.)
    fn record_drift(&self, features: &Features, x: &[f64; FEATURE_COUNT], now_ms: i64) {
        let s = &self.shared;
        if features.days_since_last_activity <= f64::from(s.drift_active_days) {
            s.drift.record(x, now_ms, &s.metrics);
        }
    }

    /// Churn probability, confidence, tier, risk factors and the tier's interventions.
    pub fn predict_churn(
        &self,
        features: &Features,
        started: Instant,
    ) -> Result<ChurnPrediction, Error> {
        let model = self.serving(ModelKind::Churn)?;
        let x = features.to_array();
        let (probability, confidence) = churn_probability(&model, &x);
        let s = &self.shared;
        s.metrics
            .inference_duration
            .with_label_values(&["churn"])
            .observe(started.elapsed().as_secs_f64());
        self.record_drift(features, &x, s.clock.now_ms());
        let tier = s.config.churn.tiers().tier(probability);
        Ok(ChurnPrediction {
            probability,
            confidence,
            tier,
            risk_factors: risk_factors(features),
            interventions: tier.interventions().iter().map(|c| c.as_str()).collect(),
            model_version: model.version,
        })
    }

    /// The status of a goal in a user's log (`None`: the user never acted on it).
    pub fn goal_status(log: &[Activity], goal: u32, now_ms: i64) -> Option<GoalStatus> {
        goal_states(log, now_ms, &FeatureParams::default())
            .into_iter()
            .find(|g| g.goal == goal)
            .map(|g| g.status)
    }

    /// Compares goal outcomes in an ingested batch with the success predictions served for
    /// them (online accuracy). Called by `POST /v1/events` with the validated events (in a
    /// cluster, by the owner as it applies them: [`observe_outcomes`]).
    pub fn observe_events(&self, engine: &Engine, events: &[NewEvent]) {
        observe_outcomes(&self.shared, engine, events);
    }

    /// Starts a training run; with `wait`, returns its report.
    pub async fn train(
        &self,
        wait: bool,
        retry_after: u64,
    ) -> Result<Option<TrainingReport>, Error> {
        let job = self.training.get().ok_or(Error::ShuttingDown)?;
        job.run(wait, retry_after).await
    }

    /// Starts a churn scoring run; with `wait`, returns its report.
    pub async fn score_churn(
        &self,
        wait: bool,
        retry_after: u64,
    ) -> Result<Option<ScoringReport>, Error> {
        let job = self.churn_scoring.get().ok_or(Error::ShuttingDown)?;
        job.run(wait, retry_after).await
    }

    /// The statuses of the `training` and `churn_scoring` jobs.
    pub async fn statuses(&self) -> (Option<JobStatus>, Option<JobStatus>) {
        let training = match self.training.get() {
            Some(job) => job.status().await,
            None => None,
        };
        let churn = match self.churn_scoring.get() {
            Some(job) => job.status().await,
            None => None,
        };
        (training, churn)
    }
}

/// The engine as the churn job's [`ActivitySource`]. Holds the state weakly: the state owns
/// the analytics handle that owns the job.
pub struct EngineSource(pub Weak<AppState>);

impl ActivitySource for EngineSource {
    fn user_slots(&self) -> u32 {
        self.0.upgrade().map_or(0, |s| {
            u32::try_from(s.engine.index().users.slots()).unwrap_or(u32::MAX)
        })
    }

    fn user_name(&self, id: u32) -> Option<Arc<str>> {
        self.0.upgrade()?.engine.index().users.name(id)
    }

    fn has_room(&self) -> bool {
        self.0.upgrade().is_some_and(|s| s.engine.has_room())
    }

    fn activity(
        &self,
        user: Arc<str>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Activity>, ActorError>>>> {
        let state = self.0.upgrade();
        Box::pin(async move {
            match state {
                Some(s) => s.engine.activity(&user).await,
                None => Err(ActorError::Stopped {
                    actor: "user_shard",
                }),
            }
        })
    }
}

/// Starts the analytics jobs of a started server (one call in `crate::start`).
pub fn start(state: &Arc<AppState>) {
    state.analytics.start_jobs(
        Arc::new(EngineSource(Arc::downgrade(state))),
        state.jobs.metrics.clone(),
        state.cluster.clone(),
    );
}

#[cfg(test)]
mod tests;
