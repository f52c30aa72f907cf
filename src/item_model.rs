//! The background job that keeps the learned item model (EASE, `[ease]`) fresh.
//!
//! It builds the model once the state is restored — from the restored counts, which takes
//! well under a second for a few thousand items, so the model is not stored with snapshots —
//! then checks every second and rebuilds after `ease.rebuild_events` applied events, or
//! `ease.rebuild_secs` after the last build when anything changed. The factorisation runs on
//! the blocking pool; the engine publishes each model whole, with the next version, and a
//! failed build keeps the previous one. Nothing runs when `recommend.item_model = "cosine"`.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use prometheus::{Gauge, IntCounterVec, IntGauge, Opts, Registry};

use momentum_actors::config::ItemModel;
use momentum_actors::ease::EaseModel;

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

/// Builds the model now on the blocking pool, publishes it and records the metrics. The
/// previous model stays when the build fails.
pub async fn rebuild(state: &Arc<AppState>) -> Result<Arc<EaseModel>, crate::Error> {
    let metrics = &state.item_model_metrics;
    let builder = state.clone();
    let now_ms = state.analytics.shared().clock.now_ms();
    let built =
        actix_web::rt::task::spawn_blocking(move || builder.engine.build_item_model(now_ms)).await;
    let failure = match built {
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
        Ok(Err(error)) => error.to_string(),
        Err(error) => format!("the build panicked: {error}"),
    };
    metrics.builds.with_label_values(&["error"]).inc();
    tracing::warn!(error = %failure, "item model build failed; the previous model stays");
    Err(crate::Error::Internal {
        message: format!("item model build failed: {failure}"),
    })
}

/// Starts the job (call once the state is restored). It ends when the server is dropped.
pub fn spawn(state: &Arc<AppState>) {
    if state.settings.recommend.item_model != ItemModel::Ease {
        return;
    }
    let weak = Arc::downgrade(state);
    actix::spawn(run(weak));
}

async fn run(weak: Weak<AppState>) {
    let mut last: Option<(Instant, u64, u64)> = None; // (built at, events applied, epoch)
    loop {
        let Some(state) = weak.upgrade() else { return };
        let index = state.engine.index().clone();
        let applied = index
            .events_applied
            .load(std::sync::atomic::Ordering::Acquire);
        let epoch = index.epoch();
        let ease = &state.settings.ease;
        let due = match last {
            None => true,
            Some((at, events, built_epoch)) => {
                applied.saturating_sub(events) >= ease.rebuild_events
                    || (epoch != built_epoch
                        && at.elapsed() >= Duration::from_secs(ease.rebuild_secs))
            }
        };
        if due {
            let _ = rebuild(&state).await;
            last = Some((Instant::now(), applied, epoch));
        }
        let model = state.engine.item_model();
        if model.version > 0 {
            let age_ms = state.analytics.shared().clock.now_ms() - model.built_ms;
            state
                .item_model_metrics
                .age_seconds
                .set(age_ms.max(0) as f64 / 1e3);
        }
        drop(state);
        actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    }
}
