//! Synthetic users and a demo model, for tests, benchmarks, the CLI's `--demo` and the LiteRT
//! fixtures. Nothing here is used by the runtime paths.
//!
//! A synthetic user has a latent engagement `e ∈ [0, 1]`: each day they open the app with
//! probability `0.1 + 0.85 e`, check in on their goals on most of those days, start a goal now
//! and then, and complete or abandon it depending on `e`. The label is drawn from
//! `sigmoid(5e − 2.5)`, so the features carry real but noisy signal — a model fitted on them
//! looks like one the trainer would produce.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use momentum_models::clock::DAY_MS;
use momentum_models::events::EventKind;
use momentum_models::export::{self, ExportOptions, ExportedModel, TrainingWindow, Variant};
use momentum_models::features::{self, Activity, FeatureParams, FEATURE_COUNT};
use momentum_models::predict::logistic::{sigmoid, LogisticParams, LogisticRegression};
use momentum_models::predict::metrics::ClassificationReport;

/// The reference "now" of the fixtures: 2025-06-01T00:00:00Z.
pub const NOW_MS: i64 = 1_748_736_000_000;

/// A synthetic `days`-day log ending at `now_ms` for a user of engagement `engagement`.
pub fn synthetic_log(rng: &mut StdRng, engagement: f64, days: i64, now_ms: i64) -> Vec<Activity> {
    let mut log = Vec::new();
    let mut next_goal = 0u32;
    let mut active: Vec<u32> = Vec::new();
    for day in (0..days).rev() {
        let start = now_ms - day * DAY_MS;
        if !rng.gen_bool((0.1 + 0.85 * engagement).clamp(0.0, 1.0)) {
            continue;
        }
        let mut t = start + rng.gen_range(6..20) * 3_600_000;
        log.push(Activity::new(t, EventKind::AppOpen, None));
        if active.is_empty() || rng.gen_bool(0.05) {
            t += 60_000;
            log.push(Activity::new(t, EventKind::Start, Some(next_goal)));
            active.push(next_goal);
            next_goal += 1;
        }
        for &goal in &active {
            t += 60_000;
            let kind = if rng.gen_bool(0.7) {
                EventKind::Checkin
            } else {
                EventKind::View
            };
            log.push(Activity::new(t, kind, Some(goal)));
        }
        if rng.gen_bool(0.04) {
            let goal = active.remove(0);
            t += 60_000;
            let kind = if rng.gen_bool(engagement) {
                EventKind::Complete
            } else {
                EventKind::Abandon
            };
            log.push(Activity::new(t, kind, Some(goal)));
        }
    }
    log
}

/// `users` synthetic feature rows (90-day logs as of [`NOW_MS`]) and their labels.
pub fn synthetic_rows(users: usize, seed: u64) -> (Vec<Vec<f64>>, Vec<bool>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let params = FeatureParams::default();
    (0..users)
        .map(|_| {
            let e: f64 = rng.gen_range(0.0..1.0);
            let log = synthetic_log(&mut rng, e, 90, NOW_MS);
            let row = features::compute(&log, NOW_MS, None, &params).to_vec();
            let label = rng.gen_bool(sigmoid(5.0 * e - 2.5));
            (row, label)
        })
        .unzip()
}

/// A logistic regression fitted on 400 synthetic users (deterministic).
pub fn demo_model() -> LogisticRegression {
    let (rows, labels) = synthetic_rows(400, 42);
    // The synthetic rows are never degenerate, so the fit cannot fail.
    LogisticRegression::fit(&rows, &labels, &LogisticParams::default())
        .unwrap_or_else(|e| panic!("demo model: {e}"))
}

/// The demo model exported as `variant`, version `version`, with held-out metrics and 8
/// golden vectors plus 4 real rows.
pub fn demo_export(model: &LogisticRegression, version: u64, variant: Variant) -> ExportedModel {
    let (rows, labels) = synthetic_rows(200, 43);
    let probs: Vec<f64> = rows.iter().map(|r| model.predict_proba(r)).collect();
    let mut options = ExportOptions::new("success", version, variant);
    options.created_ms = NOW_MS;
    options.training_window = Some(TrainingWindow {
        from_ms: NOW_MS - 90 * DAY_MS,
        to_ms: NOW_MS,
    });
    options.metrics = ClassificationReport::new(&probs, &labels, None).ok();
    options.threshold = Some(0.5);
    options.extra_golden_rows = rows.into_iter().take(4).collect();
    export::export(model, &options).unwrap_or_else(|e| panic!("demo export: {e}"))
}

/// `count` raw feature rows for checking an exported file: real synthetic users, each other
/// one nudged by a random ±1σ step on every feature so the rows also leave the lattice of
/// integer-valued features.
pub fn check_rows(
    model: &LogisticRegression,
    count: usize,
    seed: u64,
) -> Vec<[f64; FEATURE_COUNT]> {
    let (rows, _) = synthetic_rows(count, seed);
    let mut rng = StdRng::seed_from_u64(seed ^ 0xfeed);
    let s = &model.standardizer;
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| {
            std::array::from_fn(|j| {
                if i % 2 == 0 {
                    row[j]
                } else {
                    row[j] + s.std[j] * rng.gen_range(-1.0..1.0)
                }
            })
        })
        .collect()
}
