//! The `item_model` job: keeps the learned item model (EASE, `[ease]`) fresh.
//!
//! It builds the model once the state is restored — from the restored counts, which takes
//! well under a second for a few thousand items, so the model is not stored with snapshots —
//! then checks every second and rebuilds after `ease.rebuild_events` applied events, or
//! `ease.rebuild_secs` after the last build when anything changed. Each build runs on a thread
//! of its own ([`in_background`]): the counts are copied at normal priority, then the thread
//! drops to the lowest CPU priority for the factorisation, so requests keep their cores while
//! it runs. The model is published from the job's task, whole and with the next version; a
//! failed build keeps the previous one. Nothing is built on its own when
//! `recommend.item_model = "cosine"`; `POST /v1/admin/item-model` builds in either case.
//!
//! In a cluster the model is built once per cluster ([`crate::cluster::item_model`]): only
//! the leader's job builds, once it has read the cluster's model, and it counts the data by
//! the catalogue's progress on the item-deltas topic instead of the events this node applied
//! (a node applies only its own partitions' events, but its catalogue holds everyone's). The
//! built model is stored under the cluster's fence before it goes live, with the cluster's
//! version. Every node, the leader too, reads the stored model every
//! `cluster.item_model_poll_secs` ([`follow`]) and installs a newer one.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::{Gauge, IntCounterVec, IntGauge, Opts, Registry};

use momentum_actors::config::ItemModel;
use momentum_actors::ease::EaseModel;

use super::{Job, JobError, JobFuture, JobHandle, JobRunner, Schedule, Trigger, WhenBusy};
use crate::cluster::item_model::{build_and_publish, catalogue_progress, sync, Published};
use crate::cluster::Cluster;
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
                    "Builds of the learned item model by result (ok, error; in a cluster also \
                     fenced: a model from as much data was stored already)",
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

    /// Shows `model` as the live one.
    fn show(&self, model: &EaseModel) {
        self.build_seconds.set(model.build_seconds);
        self.items.set(model.items() as i64);
        self.version.set(model.version as i64);
    }
}

/// What the last build started from.
#[derive(Debug, Clone, Copy)]
struct Built {
    at_ms: i64,
    /// `events_applied` (in a cluster: the catalogue progress) and the index epoch when it
    /// started.
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
        if let Some(cluster) = &state.cluster {
            if !cluster.is_leader() || !cluster.item_model().synced() {
                return false;
            }
            // The data the live model (built here or installed) or the last attempt here
            // covered, and since when.
            let progress = catalogue_progress(cluster);
            let live = cluster.item_model().progress().map(|p| (p, model.built_ms));
            let tried = self.last.lock().map(|l| (l.events as i64, l.at_ms));
            let (covered, since_ms) = match (live, tried) {
                (None, None) => return true,
                (Some(x), None) | (None, Some(x)) => x,
                (Some(x), Some(y)) => (x.0.max(y.0), x.1.max(y.1)),
            };
            let due_events = i64::try_from(ease.rebuild_events).unwrap_or(i64::MAX);
            return progress.saturating_sub(covered) >= due_events
                || (progress > covered && now_ms.saturating_sub(since_ms) >= rebuild_ms);
        }
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
            let events = match &state.cluster {
                Some(cluster) => catalogue_progress(cluster).max(0) as u64,
                None => index
                    .events_applied
                    .load(std::sync::atomic::Ordering::Acquire),
            };
            *self.last.lock() = Some(Built {
                at_ms: now_ms,
                events,
                epoch: index.epoch(),
            });
        }
        Box::pin(async move {
            let state = state.ok_or(JobError::Stopped { job: Self::NAME })?;
            build(&state, now_ms).await
        })
    }
}

/// Builds the model now ([`in_background`]), publishes it and records the metrics. The
/// previous model stays when the build fails.
async fn build(state: &Arc<AppState>, now_ms: i64) -> Result<Arc<EaseModel>, JobError> {
    let metrics = &state.jobs.item_model_metrics;
    if let Some(cluster) = &state.cluster {
        return build_in_cluster(state, cluster, now_ms).await;
    }
    let builder = state.clone();
    // Fitted on the lowered thread, published here: the publish takes the model's write lock,
    // which every request reads, and must not wait on a thread at the lowest priority.
    let built = in_background(move |lower| builder.engine.fit_item_model(now_ms, lower)).await;
    let error = match built {
        Ok(Ok(model)) => {
            let model = state.engine.publish_item_model(model);
            metrics.builds.with_label_values(&["ok"]).inc();
            metrics.show(&model);
            tracing::info!(
                version = model.version,
                items = model.items(),
                seconds = model.build_seconds,
                "item model built"
            );
            return Ok(model);
        }
        Ok(Err(error)) => JobError::failed("item model build failed", error),
        Err(error) => JobError::failed("item model build did not finish", error),
    };
    metrics.builds.with_label_values(&["error"]).inc();
    tracing::warn!(error = %error.chain(), "item model build failed; the previous model stays");
    Err(error)
}

/// Runs `build` on a thread of its own and waits for it without blocking the caller's thread.
/// `build` gets [`lower_priority`] to call once it holds no lock, and must take none after: a
/// build runs for a tenth of a second to several seconds, and at the normal priority it would
/// take a core from the requests for that long, while a lock held at the lowest priority would
/// stall them. A thread of its own, not the blocking pool's, since Linux lets a thread lower
/// its priority but not raise it back. Only this thread is lowered: with `ease.build_threads`
/// other than 1, the factorisation's worker threads keep the normal priority.
pub(crate) async fn in_background<T: Send + 'static>(
    build: impl FnOnce(fn()) -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("item-model".into())
        .spawn(move || {
            let _ = tx.send(build(lower_priority));
        })
        .map_err(|e| format!("cannot start the build thread: {e}"))?;
    rx.await
        .map_err(|_| "the build thread panicked".to_string())
}

/// Drops the calling thread to the lowest CPU priority (nice 19; Linux keeps it per thread).
/// Failing leaves it as it was, which only makes the build compete with requests.
pub(crate) fn lower_priority() {
    if let Err(error) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        tracing::warn!(%error, "the item-model build thread keeps its normal priority");
    }
}

/// The leader's build ([`build_and_publish`]): `ok` once stored and live, `fenced` when the
/// cluster's model covers as much data (that one stays, and is what the run reports).
async fn build_in_cluster(
    state: &Arc<AppState>,
    cluster: &Cluster,
    now_ms: i64,
) -> Result<Arc<EaseModel>, JobError> {
    let metrics = &state.jobs.item_model_metrics;
    match build_and_publish(cluster, &state.engine, now_ms).await {
        Ok(Published::Stored(model)) => {
            metrics.builds.with_label_values(&["ok"]).inc();
            metrics.show(&model);
            tracing::info!(
                version = model.version,
                items = model.items(),
                seconds = model.build_seconds,
                "item model built and stored for the cluster"
            );
            Ok(model)
        }
        Ok(Published::Fenced) => {
            metrics.builds.with_label_values(&["fenced"]).inc();
            let live = state.engine.item_model();
            metrics.show(&live);
            Ok(live)
        }
        Err(error) => {
            metrics.builds.with_label_values(&["error"]).inc();
            let error = JobError::failed("item model build for the cluster failed", error);
            tracing::warn!(error = %error.chain(), "item model build failed; the previous model stays");
            Err(error)
        }
    }
}

/// Every node in a cluster: reads the cluster's model every `cluster.item_model_poll_secs`
/// and installs a newer one, copies the cluster's predictive model versions and brings the
/// experiments in line with the cluster's, until the state is gone.
async fn follow(state: Weak<AppState>, every: Duration) {
    loop {
        let Some(state) = state.upgrade() else {
            return;
        };
        let Some(cluster) = state.cluster.clone() else {
            return;
        };
        match sync(&cluster, &state.engine).await {
            Ok(Some(model)) => state.jobs.item_model_metrics.show(&model),
            Ok(None) => {}
            Err(error) => tracing::warn!(
                error = %crate::error::Report(&error),
                "reading the cluster's item model"
            ),
        }
        // The experiments ride along (`src/cluster/experiments.rs`).
        if let Err(error) = crate::api::experiments::sync(&state, &cluster).await {
            tracing::warn!(
                error = %crate::error::Report(&error),
                "reading the cluster's experiments"
            );
        }
        // So do the predictive models (`src/cluster/training.rs`).
        if let Err(error) =
            crate::analytics::copy_cluster_versions(state.analytics.shared(), &cluster).await
        {
            tracing::warn!(
                error = %crate::error::Report(&error),
                "reading the cluster's model versions"
            );
        }
        drop(state);
        actix_web::rt::time::sleep(every).await;
    }
}

/// Starts the job on the current arbiter (once the state is restored), and in a cluster the
/// loop that installs the cluster's model.
pub fn start(state: &Arc<AppState>) -> JobHandle<ItemModelJob> {
    if let Some(cluster) = &state.cluster {
        let every = Duration::from_secs(cluster.settings().item_model_poll_secs);
        actix::spawn(follow(Arc::downgrade(state), every));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn a_background_build_runs_at_the_lowest_priority_and_leaves_the_caller_as_it_was() {
        let here = || rustix::process::getpriority_process(Some(rustix::thread::gettid()));
        let before = here().expect("own priority");
        let (at_start, lowered) = in_background(move |lower| {
            let at_start = here().expect("priority");
            lower();
            (at_start, here().expect("priority"))
        })
        .await
        .expect("ran");
        assert_eq!((at_start, lowered), (before, 19));
        assert_eq!(here().expect("own priority"), before);
    }
}
