//! The `item_model` job: keeps the learned item model (EASE, `[ease]`) fresh.
//!
//! It builds the model once the state is restored — from the restored counts, which takes
//! well under a second for a few thousand items, so the model is not stored with snapshots —
//! then checks every second and rebuilds after `ease.rebuild_events` applied events, or
//! `ease.rebuild_secs` after the last build when anything changed. The factorisation runs on
//! the blocking pool; the engine publishes each model whole, with the next version, and a
//! failed build keeps the previous one. Nothing is built on its own when
//! `recommend.item_model = "cosine"`; `POST /v1/admin/item-model` builds in either case.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::{Gauge, IntCounterVec, IntGauge, Opts, Registry};

use momentum_actors::config::ItemModel;
use momentum_actors::ease::EaseModel;

use super::{Job, JobError, JobFuture, JobHandle, JobRunner, Schedule, Trigger, WhenBusy};
use crate::AppState;

/// Metrics of the item-model job.
#[derive(Debug, Clone)]
pub struct ItemModelMetrics {
    pub build_seconds: Gauge,
    pub age_seconds: Gauge,
    pub items: IntGauge,
    pub version: IntGauge,
    pub builds: IntCounterVec,
}

impl ItemModelMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = ItemModelMetrics {
            build_seconds: Gauge::new(
                "momentum_item_model_build_seconds",
                "Wall time of the last build of the learned item model",
            )?,
            age_seconds: Gauge::new(
                "momentum_item_model_age_seconds",
                "Seconds since the live item model was built",
            )?,
            items: IntGauge::new(
                "momentum_item_model_items",
                "Items the live item model covers",
            )?,
            version: IntGauge::new(
                "momentum_item_model_version",
                "Version of the live item model (0: none yet)",
            )?,
            builds: IntCounterVec::new(
                Opts::new(
                    "momentum_item_model_builds_total",
                    "Builds of the learned item model by result",
                ),
                &["result"],
            )?,
        };
        registry.register(Box::new(m.build_seconds.clone()))?;
        registry.register(Box::new(m.age_seconds.clone()))?;
        registry.register(Box::new(m.items.clone()))?;
        registry.register(Box::new(m.version.clone()))?;
        registry.register(Box::new(m.builds.clone()))?;
        Ok(m)
    }
}

/// What the last build started from.
#[derive(Debug, Clone, Copy)]
struct Built {
    at_ms: i64,
    /// `events_applied` and the index epoch when it started.
    events: u64,
    epoch: u64,
}

/// The `item_model` job. Holds the state weakly: the state holds the job's handle.
pub struct ItemModelJob {
    state: Weak<AppState>,
    last: Mutex<Option<Built>>,
}

impl Job for ItemModelJob {
    type Report = Arc<EaseModel>;
    const NAME: &'static str = "item_model";
    const WHEN_BUSY: WhenBusy = WhenBusy::RunAfter;

    /// Due by the data (see the module docs); refreshes the model's age gauge.
    fn wants_run(&self, now_ms: i64) -> bool {
        let Some(state) = self.state.upgrade() else {
            return false;
        };
        let model = state.engine.item_model();
        if model.version > 0 {
            let age_ms = now_ms - model.built_ms;
            state
                .jobs
                .item_model_metrics
                .age_seconds
                .set(age_ms.max(0) as f64 / 1e3);
        }
        if state.settings.recommend.item_model != ItemModel::Ease {
            return false;
        }
        let index = state.engine.index();
        let applied = index
            .events_applied
            .load(std::sync::atomic::Ordering::Acquire);
        let ease = &state.settings.ease;
        let rebuild_ms = i64::try_from(ease.rebuild_secs)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        match *self.last.lock() {
            None => true,
            Some(last) => {
                applied.saturating_sub(last.events) >= ease.rebuild_events
                    || (index.epoch() != last.epoch
                        && now_ms.saturating_sub(last.at_ms) >= rebuild_ms)
            }
        }
    }

    fn run(&self, _: Trigger, now_ms: i64) -> JobFuture<Arc<EaseModel>> {
        let state = self.state.upgrade();
        if let Some(state) = &state {
            let index = state.engine.index();
            *self.last.lock() = Some(Built {
                at_ms: now_ms,
                events: index
                    .events_applied
                    .load(std::sync::atomic::Ordering::Acquire),
                epoch: index.epoch(),
            });
        }
        Box::pin(async move {
            let state = state.ok_or(JobError::Stopped { job: Self::NAME })?;
            build(&state, now_ms).await
        })
    }
}

/// Builds the model now on the blocking pool, publishes it and records the metrics. The
/// previous model stays when the build fails.
async fn build(state: &Arc<AppState>, now_ms: i64) -> Result<Arc<EaseModel>, JobError> {
    let metrics = &state.jobs.item_model_metrics;
    let builder = state.clone();
    let built =
        actix_web::rt::task::spawn_blocking(move || builder.engine.build_item_model(now_ms)).await;
    let error = match built {
        Ok(Ok(model)) => {
            metrics.builds.with_label_values(&["ok"]).inc();
            metrics.build_seconds.set(model.build_seconds);
            metrics.items.set(model.items() as i64);
            metrics.version.set(model.version as i64);
            tracing::info!(
                version = model.version,
                items = model.items(),
                seconds = model.build_seconds,
                "item model built"
            );
            return Ok(model);
        }
        Ok(Err(error)) => JobError::failed("item model build failed", error),
        Err(error) => JobError::failed("item model build panicked", error),
    };
    metrics.builds.with_label_values(&["error"]).inc();
    tracing::warn!(error = %error.chain(), "item model build failed; the previous model stays");
    Err(error)
}

/// Starts the job on the current arbiter (once the state is restored).
pub fn start(state: &Arc<AppState>) -> JobHandle<ItemModelJob> {
    JobRunner::new(
        ItemModelJob {
            state: Arc::downgrade(state),
            last: Mutex::new(None),
        },
        state.jobs.clock.clone(),
        Schedule::new(Duration::ZERO, None),
        Some(Duration::from_secs(1)),
        Some(state.jobs.metrics.clone()),
    )
    .spawn()
}
