//! The A/B experiment registry: the experiments, their per-variant counters, which
//! recommendation was served under which variant, and the attribution of events to variants.
//!
//! Assignment is the pure function of `momentum_models::experiment` (`md5(salt ":" user_id)` →
//! bucket → variant), so it needs no state and is stable across restarts and machines. What the
//! registry keeps is bounded and in memory (results restart from zero with the process):
//!
//! - at most [`MAX_EXPERIMENTS`] experiments (running or stopped), each of at most 10 variants,
//!   so the `{experiment, variant}` metric labels are bounded;
//! - at most **one running experiment**: creating another while one runs is a conflict, so a
//!   user is never in two experiments and a response names one variant. Stopping ends
//!   assignment; events on recommendations served before the stop still count;
//! - the last [`SERVED_CAPACITY`] recommendations served under an experiment
//!   (`recommendation_id → experiment, variant, user`), oldest forgotten first;
//! - the last [`ATTRIBUTED_CAPACITY`] event ids that were attributed.
//!
//! **Attribution rule.** An event counts for a variant when all of these hold:
//! 1. the server applied it: it passed validation and the engine did not reject it;
//! 2. its kind is `impression` (an impression), `click` (a click) or `complete` (a conversion);
//! 3. its `recommendation_id` is one this server served under an experiment and still
//!    remembers, and its `user_id` is the user it was served to (otherwise it is applied to the
//!    model as usual but not attributed);
//! 4. if it has an `event_id`: that id was never attributed before (the attributed-id set), and
//!    the batch is consistent with the engine's duplicate detection. The engine reports how many
//!    events were duplicates, not which ones, so the ids new to the attributed set count only
//!    when there are no more of them than events with an `event_id` the engine applied in the
//!    batch; otherwise none of the batch's events with an `event_id` count. This errs towards
//!    under-counting: a retry never counts twice as long as it carries the same
//!    `recommendation_id` as the original. Events without an `event_id` cannot be recognised as
//!    retries and always count; send event ids for exactly-once attribution.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};

use momentum_models::bounded::FifoMap;
use momentum_models::events::EventKind;
use momentum_models::experiment::{
    two_proportion_z_test, Experiment, ExperimentDef, VariantDef, VariantOverrides,
};
use momentum_models::hash::md5_u64;

use crate::error::Error;
use crate::metrics::AbMetrics;

/// Most experiments kept (running and stopped); delete old ones to make room.
pub const MAX_EXPERIMENTS: usize = 64;
/// Recommendations remembered for attribution, oldest forgotten first.
pub const SERVED_CAPACITY: usize = 1_000_000;
/// Attributed event ids remembered, oldest forgotten first.
pub const ATTRIBUTED_CAPACITY: usize = 1_000_000;

/// Whether an experiment assigns users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Stopped,
}

/// What an attributed event counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Impression,
    Click,
    Conversion,
}

impl Outcome {
    fn of(kind: EventKind) -> Option<Outcome> {
        match kind {
            EventKind::Impression => Some(Outcome::Impression),
            EventKind::Click => Some(Outcome::Click),
            EventKind::Complete => Some(Outcome::Conversion),
            _ => None,
        }
    }
}

/// Counters of one variant: the atomics the results are read from, and the Prometheus
/// children of the same counts.
#[derive(Debug)]
struct VariantStats {
    assignments: AtomicU64,
    impressions: AtomicU64,
    clicks: AtomicU64,
    conversions: AtomicU64,
    metrics: [IntCounter; 4],
}

impl VariantStats {
    fn new(metrics: &AbMetrics, experiment: &str, variant: &str) -> Self {
        let labels = [experiment, variant];
        VariantStats {
            assignments: AtomicU64::new(0),
            impressions: AtomicU64::new(0),
            clicks: AtomicU64::new(0),
            conversions: AtomicU64::new(0),
            metrics: [
                metrics.assignments.with_label_values(&labels),
                metrics.impressions.with_label_values(&labels),
                metrics.clicks.with_label_values(&labels),
                metrics.conversions.with_label_values(&labels),
            ],
        }
    }

    fn count_assignment(&self) {
        self.assignments.fetch_add(1, Ordering::Relaxed);
        self.metrics[0].inc();
    }

    fn count(&self, outcome: Outcome) {
        let (atomic, metric) = match outcome {
            Outcome::Impression => (&self.impressions, &self.metrics[1]),
            Outcome::Click => (&self.clicks, &self.metrics[2]),
            Outcome::Conversion => (&self.conversions, &self.metrics[3]),
        };
        atomic.fetch_add(1, Ordering::Relaxed);
        metric.inc();
    }
}

/// One registered experiment.
#[derive(Debug)]
struct Entry {
    /// Never reused, so a remembered recommendation of a deleted experiment cannot be
    /// attributed to a new experiment with the same id.
    serial: u32,
    id: String,
    experiment: Experiment,
    created_ms: i64,
    /// Stop time, or −1 while running; changed only under the registry's write lock.
    stopped_ms: AtomicI64,
    variants: Vec<VariantStats>,
}

impl Entry {
    fn status(&self) -> Status {
        if self.stopped_ms.load(Ordering::Relaxed) < 0 {
            Status::Running
        } else {
            Status::Stopped
        }
    }

    fn view(&self) -> ExperimentView {
        let stopped = self.stopped_ms.load(Ordering::Relaxed);
        ExperimentView {
            id: self.id.clone(),
            salt: self.experiment.salt().to_string(),
            status: self.status(),
            control: self.control_name().to_string(),
            created_ms: self.created_ms,
            stopped_ms: (stopped >= 0).then_some(stopped),
            variants: self
                .experiment
                .variants()
                .iter()
                .zip(self.experiment.bucket_counts())
                .map(|(def, &buckets)| VariantView {
                    def: def.clone(),
                    buckets,
                })
                .collect(),
        }
    }

    fn control_name(&self) -> &str {
        self.experiment
            .variants()
            .get(self.experiment.control_index())
            .map_or("", |v| v.name.as_str())
    }
}

/// An experiment as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentView {
    pub id: String,
    pub salt: String,
    pub status: Status,
    pub control: String,
    pub created_ms: i64,
    pub stopped_ms: Option<i64>,
    pub variants: Vec<VariantView>,
}

/// A variant's definition and its share of the 10,000 buckets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantView {
    #[serde(flatten)]
    pub def: VariantDef,
    pub buckets: u32,
}

/// `GET /v1/experiments/{id}/results`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentResults {
    pub experiment: String,
    pub salt: String,
    pub status: Status,
    pub control: String,
    pub variants: Vec<VariantResults>,
}

/// Counts and rates of one variant. Rates are `null` without impressions; p-values are those
/// of a pooled two-sided two-proportion z-test against the control, `null` for the control
/// itself and when the test is undefined (no impressions in either group, or more successes
/// than impressions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantResults {
    pub name: String,
    pub weight: u32,
    pub assignments: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub conversions: u64,
    /// clicks / impressions.
    pub ctr: Option<f64>,
    /// conversions / impressions.
    pub conversion_rate: Option<f64>,
    pub ctr_p_value: Option<f64>,
    pub conversion_p_value: Option<f64>,
}

/// The variant a user gets in the running experiment.
#[derive(Debug, Clone)]
pub struct Assignment {
    entry: Arc<Entry>,
    variant: usize,
}

impl Assignment {
    /// The experiment id.
    pub fn experiment(&self) -> &str {
        &self.entry.id
    }

    /// The variant name.
    pub fn variant(&self) -> &str {
        self.def().map_or("", |v| v.name.as_str())
    }

    /// What the variant changes in the recommendations (for the recommender).
    pub fn overrides(&self) -> VariantOverrides {
        self.def().map(VariantDef::overrides).unwrap_or_default()
    }

    fn def(&self) -> Option<&VariantDef> {
        self.entry.experiment.variants().get(self.variant)
    }
}

/// An applied event that may be attributed (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct Attributable<'a> {
    pub recommendation_id: &'a str,
    pub user_id: &'a str,
    pub event_id: Option<&'a str>,
    pub kind: EventKind,
}

/// What attribution needs of an event that names a recommendation, kept while the engine owns
/// the events.
#[derive(Debug)]
pub struct Pending {
    /// The event's index in its batch (as the engine's report names it).
    pub index: usize,
    pub recommendation_id: String,
    pub user_id: String,
    pub event_id: Option<String>,
    pub kind: EventKind,
}

/// What the engine said about the event ids of a batch.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchDedupe {
    /// Events with an `event_id` that the engine applied (not rejected, not duplicates).
    pub applied_with_event_id: usize,
}

/// A recommendation served under an experiment.
#[derive(Debug, Clone, Copy)]
struct Served {
    serial: u32,
    variant: u8,
    /// [`hash64`] of the user id it was served to.
    user: u64,
}

#[derive(Debug, Default)]
struct ExperimentSet {
    /// In creation order.
    entries: Vec<Arc<Entry>>,
    running: Option<Arc<Entry>>,
    next_serial: u32,
}

impl ExperimentSet {
    fn find(&self, id: &str) -> Result<&Arc<Entry>, Error> {
        self.entries
            .iter()
            .find(|e| e.id == id)
            .ok_or_else(|| Error::UnknownExperiment { id: id.to_string() })
    }
}

/// The experiments of a server (see the module documentation).
#[derive(Debug)]
pub struct Experiments {
    set: RwLock<ExperimentSet>,
    served: Mutex<FifoMap<u128, Served>>,
    attributed: Mutex<FifoMap<u64, ()>>,
    metrics: AbMetrics,
}

/// The first 8 bytes of `md5(text)`: a compact, stable key.
fn hash64(text: &str) -> u64 {
    md5_u64(&[text.as_bytes()])
}

/// A recommendation id as the server issues it: 32 lowercase hex digits.
fn recommendation_key(id: &str) -> Option<u128> {
    if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(id, 16).ok()
}

/// p-value of `successes / trials` of `treatment` against `control`, when defined.
fn p_value(control: (u64, u64), treatment: (u64, u64)) -> Option<f64> {
    two_proportion_z_test(control.0, control.1, treatment.0, treatment.1)
        .ok()
        .map(|t| t.p_value)
}

fn rate(successes: u64, trials: u64) -> Option<f64> {
    (trials > 0).then(|| successes as f64 / trials as f64)
}

impl Experiments {
    /// An empty registry with the default capacities.
    pub fn new(metrics: AbMetrics) -> Self {
        Self::with_capacity(metrics, SERVED_CAPACITY, ATTRIBUTED_CAPACITY)
    }

    /// An empty registry remembering `served` recommendations and `attributed` event ids.
    pub fn with_capacity(metrics: AbMetrics, served: usize, attributed: usize) -> Self {
        Experiments {
            set: RwLock::new(ExperimentSet::default()),
            served: Mutex::new(FifoMap::new(served)),
            attributed: Mutex::new(FifoMap::new(attributed)),
            metrics,
        }
    }

    /// Registers and starts an experiment. `salt` defaults to the id. Errors: an invalid
    /// definition (400 `invalid_experiment`), a taken id or another running experiment (409),
    /// [`MAX_EXPERIMENTS`] reached (507).
    pub fn create(
        &self,
        id: &str,
        salt: Option<&str>,
        def: &ExperimentDef,
        now_ms: i64,
    ) -> Result<ExperimentView, Error> {
        self.insert(id, salt, def, now_ms, None)
    }

    /// [`Experiments::create`], or with `stopped_ms` an experiment that ended then (which
    /// needs no other to be stopped).
    fn insert(
        &self,
        id: &str,
        salt: Option<&str>,
        def: &ExperimentDef,
        now_ms: i64,
        stopped_ms: Option<i64>,
    ) -> Result<ExperimentView, Error> {
        let experiment = Experiment::new(salt.unwrap_or(id), def)
            .map_err(|e| Error::bad("invalid_experiment", e.to_string()))?;
        let mut registry = self.set.write();
        if registry.entries.iter().any(|e| e.id == id) {
            return Err(Error::Conflict {
                message: format!("experiment {id:?} already exists"),
            });
        }
        if let Some(running) = registry.running.as_ref().filter(|_| stopped_ms.is_none()) {
            return Err(Error::Conflict {
                message: format!(
                    "experiment {:?} is running; stop it before starting another",
                    running.id
                ),
            });
        }
        if registry.entries.len() >= MAX_EXPERIMENTS {
            return Err(Error::CapacityReached {
                what: "experiment",
                capacity: MAX_EXPERIMENTS,
            });
        }
        let serial = registry.next_serial;
        registry.next_serial = serial.checked_add(1).ok_or_else(|| Error::Internal {
            message: "experiment serials exhausted".into(),
        })?;
        let variants = experiment
            .variants()
            .iter()
            .map(|v| VariantStats::new(&self.metrics, id, &v.name))
            .collect();
        let entry = Arc::new(Entry {
            serial,
            id: id.to_string(),
            experiment,
            created_ms: now_ms,
            stopped_ms: AtomicI64::new(stopped_ms.map_or(-1, |s| s.max(0))),
            variants,
        });
        registry.entries.push(entry.clone());
        if stopped_ms.is_none() {
            registry.running = Some(entry.clone());
            tracing::info!(experiment = id, "experiment started");
        }
        Ok(entry.view())
    }

    /// Brings the registry in line with a cluster's experiments (`src/cluster/experiments.rs`),
    /// in their creation order: an experiment gone from it (or replaced by another of the same
    /// id) is deleted here, one stopped there is stopped here at the same time, one new here is
    /// registered as it is there. Counts of experiments that stay are kept.
    pub fn reconcile(&self, cluster: &[crate::cluster::experiments::StoredExperiment]) {
        let same = |view: &ExperimentView, c: &crate::cluster::experiments::StoredExperiment| {
            c.id == view.id && c.created_ms == view.created_ms && c.salt == view.salt
        };
        for view in self.list() {
            if !cluster.iter().any(|c| same(&view, c)) {
                let _ = self.delete(&view.id);
            }
        }
        for view in self.list() {
            let stopped = cluster
                .iter()
                .find(|c| c.id == view.id)
                .and_then(|c| c.stopped_ms);
            if let (Status::Running, Some(stopped_ms)) = (view.status, stopped) {
                let _ = self.stop(&view.id, stopped_ms);
            }
        }
        let known: HashSet<String> = self.list().into_iter().map(|v| v.id).collect();
        for c in cluster.iter().filter(|c| !known.contains(&c.id)) {
            if let Err(error) =
                self.insert(&c.id, Some(&c.salt), &c.def, c.created_ms, c.stopped_ms)
            {
                tracing::error!(experiment = %c.id, %error, "the cluster's experiment cannot be registered here");
            }
        }
    }

    /// Every experiment, in creation order.
    pub fn list(&self) -> Vec<ExperimentView> {
        self.set.read().entries.iter().map(|e| e.view()).collect()
    }

    /// One experiment.
    pub fn get(&self, id: &str) -> Result<ExperimentView, Error> {
        self.set.read().find(id).map(|e| e.view())
    }

    /// Stops assigning users (idempotent). Events on recommendations already served still
    /// count.
    pub fn stop(&self, id: &str, now_ms: i64) -> Result<ExperimentView, Error> {
        let mut registry = self.set.write();
        let entry = registry.find(id)?.clone();
        if entry.status() == Status::Running {
            entry.stopped_ms.store(now_ms.max(0), Ordering::Relaxed);
            tracing::info!(experiment = id, "experiment stopped");
        }
        if registry
            .running
            .as_ref()
            .is_some_and(|r| r.serial == entry.serial)
        {
            registry.running = None;
        }
        Ok(entry.view())
    }

    /// Forgets an experiment, its results and its metric series.
    pub fn delete(&self, id: &str) -> Result<(), Error> {
        let mut registry = self.set.write();
        let entry = registry.find(id)?.clone();
        registry.entries.retain(|e| e.serial != entry.serial);
        if registry
            .running
            .as_ref()
            .is_some_and(|r| r.serial == entry.serial)
        {
            registry.running = None;
        }
        for v in entry.experiment.variants() {
            let labels = [id, v.name.as_str()];
            let m = &self.metrics;
            for vec in [&m.assignments, &m.impressions, &m.clicks, &m.conversions] {
                // Absent series (never created) are not an error worth reporting.
                vec.remove_label_values(&labels).ok();
            }
        }
        tracing::info!(experiment = id, "experiment deleted");
        Ok(())
    }

    /// Per-variant counts, rates and significance against the control.
    pub fn results(&self, id: &str) -> Result<ExperimentResults, Error> {
        self.results_adding(id, &[])
    }

    /// [`Experiments::results`] with the counts of `others` (other nodes' results of the same
    /// experiment, variants matched by name) added to this server's.
    pub fn results_adding(
        &self,
        id: &str,
        others: &[ExperimentResults],
    ) -> Result<ExperimentResults, Error> {
        let entry = self.set.read().find(id)?.clone();
        let load = |(def, s): (&VariantDef, &VariantStats)| {
            let mut counts = (
                s.assignments.load(Ordering::Relaxed),
                s.impressions.load(Ordering::Relaxed),
                s.clicks.load(Ordering::Relaxed),
                s.conversions.load(Ordering::Relaxed),
            );
            for v in others
                .iter()
                .flat_map(|o| &o.variants)
                .filter(|v| v.name == def.name)
            {
                counts.0 += v.assignments;
                counts.1 += v.impressions;
                counts.2 += v.clicks;
                counts.3 += v.conversions;
            }
            counts
        };
        let counts: Vec<_> = entry
            .experiment
            .variants()
            .iter()
            .zip(&entry.variants)
            .map(load)
            .collect();
        let control = entry.experiment.control_index();
        let (_, c_impressions, c_clicks, c_conversions) =
            counts.get(control).copied().unwrap_or_default();
        let variants = entry
            .experiment
            .variants()
            .iter()
            .zip(&counts)
            .enumerate()
            .map(
                |(i, (def, &(assignments, impressions, clicks, conversions)))| {
                    let treatment = i != control;
                    VariantResults {
                        name: def.name.clone(),
                        weight: def.weight,
                        assignments,
                        impressions,
                        clicks,
                        conversions,
                        ctr: rate(clicks, impressions),
                        conversion_rate: rate(conversions, impressions),
                        ctr_p_value: treatment
                            .then(|| p_value((c_clicks, c_impressions), (clicks, impressions)))
                            .flatten(),
                        conversion_p_value: treatment
                            .then(|| {
                                p_value((c_conversions, c_impressions), (conversions, impressions))
                            })
                            .flatten(),
                    }
                },
            )
            .collect();
        Ok(ExperimentResults {
            experiment: entry.id.clone(),
            salt: entry.experiment.salt().to_string(),
            status: entry.status(),
            control: entry.control_name().to_string(),
            variants,
        })
    }

    /// The variant of `user_id` in the running experiment, if any. Pure: nothing is counted
    /// until [`Experiments::record_served`].
    pub fn variant_for(&self, user_id: &str) -> Option<Assignment> {
        let entry = self.set.read().running.clone()?;
        let variant = entry.experiment.assign(user_id);
        Some(Assignment { entry, variant })
    }

    /// Remembers that `recommendation_id` (as issued: 32 lowercase hex digits) was served to
    /// `user_id` under `assignment`, and counts the assignment.
    pub fn record_served(&self, assignment: &Assignment, recommendation_id: &str, user_id: &str) {
        let Some(stats) = assignment.entry.variants.get(assignment.variant) else {
            return;
        };
        stats.count_assignment();
        let (Some(key), Ok(variant)) = (
            recommendation_key(recommendation_id),
            u8::try_from(assignment.variant),
        ) else {
            debug_assert!(
                false,
                "recommendation ids are 32 hex digits, variants <= 10"
            );
            return;
        };
        self.served.lock().insert(
            key,
            Served {
                serial: assignment.entry.serial,
                variant,
                user: hash64(user_id),
            },
        );
    }

    /// Attributes the events of `pending` the engine applied, as `report` tells (see the module
    /// documentation for the rule); `with_event_id` lists the indices of the events handed to
    /// the engine that had an event id. Returns how many were counted.
    pub fn attribute_applied(
        &self,
        pending: &[Pending],
        with_event_id: &[usize],
        report: &momentum_actors::engine::IngestReport,
    ) -> usize {
        let refused: HashSet<usize> = report.rejected.iter().map(|r| r.index).collect();
        let with_id_not_refused = with_event_id
            .iter()
            .filter(|i| !refused.contains(i))
            .count();
        let events: Vec<Attributable<'_>> = pending
            .iter()
            .filter(|p| !refused.contains(&p.index))
            .map(|p| Attributable {
                recommendation_id: &p.recommendation_id,
                user_id: &p.user_id,
                event_id: p.event_id.as_deref(),
                kind: p.kind,
            })
            .collect();
        self.attribute(
            &events,
            BatchDedupe {
                applied_with_event_id: with_id_not_refused.saturating_sub(report.duplicates),
            },
        )
    }

    /// Attributes the applied events of one batch (see the module documentation for the rule);
    /// `events` must exclude every event that was rejected. Returns how many were counted.
    pub fn attribute(&self, events: &[Attributable<'_>], batch: BatchDedupe) -> usize {
        let resolved: Vec<(Served, Outcome, Option<&str>)> = {
            let served = self.served.lock();
            events
                .iter()
                .filter_map(|e| {
                    let outcome = Outcome::of(e.kind)?;
                    let s = *served.get(&recommendation_key(e.recommendation_id)?)?;
                    (s.user == hash64(e.user_id)).then_some((s, outcome, e.event_id))
                })
                .collect()
        };
        if resolved.is_empty() {
            return 0;
        }
        let mut counted: Vec<(Served, Outcome)> = Vec::with_capacity(resolved.len());
        {
            let mut attributed = self.attributed.lock();
            let mut fresh: Vec<(u64, Served, Outcome)> = Vec::new();
            let mut in_batch = HashSet::new();
            for &(served, outcome, event_id) in &resolved {
                match event_id {
                    None => counted.push((served, outcome)),
                    Some(id) => {
                        let key = hash64(id);
                        if attributed.get(&key).is_none() && in_batch.insert(key) {
                            fresh.push((key, served, outcome));
                        }
                    }
                }
            }
            if fresh.len() <= batch.applied_with_event_id {
                for (key, served, outcome) in fresh {
                    attributed.insert(key, ());
                    counted.push((served, outcome));
                }
            } else {
                tracing::debug!(
                    fresh = fresh.len(),
                    applied = batch.applied_with_event_id,
                    "ambiguous duplicates, events with an event_id not attributed"
                );
            }
        }
        let registry = self.set.read();
        let mut n = 0;
        for (served, outcome) in counted {
            let stats = registry
                .entries
                .iter()
                .find(|e| e.serial == served.serial)
                .and_then(|e| e.variants.get(usize::from(served.variant)));
            if let Some(stats) = stats {
                stats.count(outcome);
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Registry;

    fn def(variants: &[(&str, u32)]) -> ExperimentDef {
        ExperimentDef {
            variants: variants
                .iter()
                .map(|&(n, w)| VariantDef::new(n, w))
                .collect(),
            control: None,
        }
    }

    fn registry() -> (Experiments, Registry) {
        let prom = Registry::new();
        let metrics = AbMetrics::new(&prom).expect("metrics register");
        (Experiments::with_capacity(metrics, 4, 4), prom)
    }

    const REC: &str = "0123456789abcdef0123456789abcdef";

    fn ev<'a>(
        rec: &'a str,
        user: &'a str,
        event_id: Option<&'a str>,
        kind: EventKind,
    ) -> Attributable<'a> {
        Attributable {
            recommendation_id: rec,
            user_id: user,
            event_id,
            kind,
        }
    }

    #[test]
    fn one_running_experiment_and_bounded_registry() {
        let (x, _prom) = registry();
        let d = def(&[("control", 1), ("treatment", 1)]);
        x.create("e1", None, &d, 1).expect("created");
        assert!(matches!(
            x.create("e1", None, &d, 2),
            Err(Error::Conflict { .. })
        ));
        assert!(matches!(
            x.create("e2", None, &d, 2),
            Err(Error::Conflict { .. })
        ));
        assert_eq!(
            x.variant_for("u").map(|a| a.experiment().to_string()),
            Some("e1".into())
        );
        let stopped = x.stop("e1", 5).expect("stopped");
        assert_eq!(
            (stopped.status, stopped.stopped_ms),
            (Status::Stopped, Some(5))
        );
        assert!(x.variant_for("u").is_none());
        assert!(matches!(
            x.create("bad", None, &def(&[("A", 1)]), 3),
            Err(Error::BadRequest {
                code: "invalid_experiment",
                ..
            })
        ));
        for i in 2..=MAX_EXPERIMENTS {
            x.create(&format!("e{i}"), None, &d, 3).expect("room");
            x.stop(&format!("e{i}"), 4).expect("stops");
        }
        assert!(matches!(
            x.create("one-too-many", None, &d, 5),
            Err(Error::CapacityReached { .. })
        ));
        x.delete("e1").expect("deleted");
        assert!(matches!(x.get("e1"), Err(Error::UnknownExperiment { .. })));
        assert!(x.create("one-too-many", Some("salt"), &d, 5).is_ok());
        assert_eq!(x.list().len(), MAX_EXPERIMENTS);
    }

    /// A node brought in line with the cluster's experiments: new ones registered as they are
    /// there (stopped ones too, while another runs), stopped ones stopped at the same time,
    /// gone or replaced ones deleted, and the counts of those that stay kept.
    #[test]
    fn the_registry_follows_the_clusters_experiments() {
        use crate::cluster::experiments::StoredExperiment;
        let (x, _prom) = registry();
        let stored = |id: &str, created_ms: i64, stopped_ms: Option<i64>| StoredExperiment {
            id: id.into(),
            salt: format!("salt-{id}"),
            def: def(&[("control", 1), ("treatment", 1)]),
            created_ms,
            stopped_ms,
        };
        x.reconcile(&[stored("old", 1, Some(2)), stored("now", 3, None)]);
        let views = x.list();
        let seen: Vec<(&str, &str, Status, Option<i64>)> = views
            .iter()
            .map(|v| (v.id.as_str(), v.salt.as_str(), v.status, v.stopped_ms))
            .collect();
        assert_eq!(
            seen,
            [
                ("old", "salt-old", Status::Stopped, Some(2)),
                ("now", "salt-now", Status::Running, None)
            ]
        );
        let a = x.variant_for("alice").expect("running");
        assert_eq!(a.experiment(), "now");
        x.record_served(&a, REC, "alice");
        x.reconcile(&[stored("old", 1, Some(2)), stored("now", 3, None)]);
        assert_eq!(
            x.results("now").expect("results").variants[a.variant].assignments,
            1
        );
        // Stopped there, then a new one started: both here, in that order.
        x.reconcile(&[stored("now", 3, Some(4)), stored("next", 5, None)]);
        assert!(matches!(x.get("old"), Err(Error::UnknownExperiment { .. })));
        assert_eq!(x.get("now").expect("kept").stopped_ms, Some(4));
        assert_eq!(
            x.results("now").expect("kept").variants[a.variant].assignments,
            1,
            "counts stay"
        );
        assert_eq!(
            x.variant_for("alice").expect("running").experiment(),
            "next"
        );
        // Deleted and created again under the same id: a new experiment here too.
        x.reconcile(&[stored("next", 9, None)]);
        assert_eq!(x.get("next").expect("there").created_ms, 9);
        assert_eq!(x.list().len(), 1);
        x.reconcile(&[]);
        assert!(x.list().is_empty() && x.variant_for("alice").is_none());
    }

    #[test]
    fn attribution_follows_the_documented_rule() {
        let (x, _prom) = registry();
        x.create("e", None, &def(&[("control", 1), ("treatment", 1)]), 0)
            .expect("created");
        let a = x.variant_for("alice").expect("running");
        x.record_served(&a, REC, "alice");
        let all = BatchDedupe {
            applied_with_event_id: usize::MAX,
        };
        // Wrong user, unknown or malformed recommendation, non-attributable kind: nothing.
        let other = "fedcba9876543210fedcba9876543210";
        let ignored = [
            ev(REC, "bob", None, EventKind::Click),
            ev(other, "alice", None, EventKind::Click),
            ev("not-hex", "alice", None, EventKind::Click),
            ev(REC, "alice", None, EventKind::View),
        ];
        assert_eq!(x.attribute(&ignored, all), 0);
        // Without event ids everything counts; with them, once.
        let batch = [
            ev(REC, "alice", None, EventKind::Impression),
            ev(REC, "alice", Some("c1"), EventKind::Click),
            ev(REC, "alice", Some("c1"), EventKind::Click),
            ev(REC, "alice", Some("v1"), EventKind::Complete),
        ];
        assert_eq!(x.attribute(&batch, all), 3);
        assert_eq!(
            x.attribute(&batch[1..], all),
            0,
            "retries never count twice"
        );
        // More fresh ids than the engine applied: the batch is ambiguous, ids do not count.
        let batch = [
            ev(REC, "alice", Some("c2"), EventKind::Click),
            ev(REC, "alice", Some("c3"), EventKind::Click),
        ];
        let one = BatchDedupe {
            applied_with_event_id: 1,
        };
        assert_eq!(x.attribute(&batch, one), 0);
        assert_eq!(x.attribute(&batch[..1], one), 1);
        let r = x.results("e").expect("results");
        let v = &r.variants[a.variant];
        assert_eq!(
            (v.assignments, v.impressions, v.clicks, v.conversions),
            (1, 1, 2, 1)
        );
        assert_eq!(v.ctr, Some(2.0));
        // Deleted experiments are not attributed to any more.
        x.delete("e").expect("deleted");
        assert_eq!(
            x.attribute(&[ev(REC, "alice", None, EventKind::Click)], all),
            0
        );
    }

    #[test]
    fn results_compare_against_the_control() {
        let (x, _prom) = registry();
        let mut d = def(&[("a", 1), ("b", 1)]);
        d.control = Some("b".into());
        x.create("e", None, &d, 0).expect("created");
        let r = x.results("e").expect("results");
        assert_eq!(r.control, "b");
        assert!(r
            .variants
            .iter()
            .all(|v| v.ctr.is_none() && v.ctr_p_value.is_none()));
        let entry = x.set.read().find("e").expect("exists").clone();
        for (v, (impressions, clicks)) in entry.variants.iter().zip([(1000, 250), (1000, 200)]) {
            v.impressions.store(impressions, Ordering::Relaxed);
            v.clicks.store(clicks, Ordering::Relaxed);
        }
        let r = x.results("e").expect("results");
        let p = r.variants[0].ctr_p_value.expect("treatment has a p-value");
        assert!((p - 0.007419649261025693).abs() < 1e-12, "{p}");
        assert_eq!(r.variants[0].conversion_p_value, Some(1.0));
        assert_eq!(r.variants[1].ctr_p_value, None);
        assert_eq!(recommendation_key("0123456789ABCDEF0123456789abcdef"), None);
        assert_eq!(
            recommendation_key(REC),
            Some(0x0123456789abcdef0123456789abcdef)
        );
    }
}
