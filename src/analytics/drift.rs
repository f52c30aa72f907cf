//! Feature drift: the population stability index (PSI) of each feature between the training
//! window of the live churn model and the features served in the last 24 hours.
//!
//! The reference is fitted on the churn model's training rows (one row per active user and
//! cutoff, so it describes the user population that is scored): per feature, the cut points
//! are the `bins` quantiles (repeated values merged, so a feature that is mostly 0 gets fewer,
//! wider bins) and the expected share of each bin is measured on those rows. A value `x` falls
//! in bin `i` = the number of cut points below `x`, i.e. bins are `(-inf, c0], (c0, c1], …,
//! (c_last, inf)`.
//!
//! Served vectors (the feature vectors the server computed or received for a prediction, of
//! users active in the last 14 days, the population the reference describes) are counted into
//! 24 hourly slots of bin counts, so memory is fixed (24 × features × bins
//! counters) and "the last 24 hours" drops whole hours as they age. The gauges are recomputed
//! at most every 10 seconds, and only once `min_samples` vectors are in the window.
//!
//! `PSI = Σ_b (a_b − e_b) · ln(a_b / e_b)` over the bins, with `a` the served and `e` the
//! reference shares, both floored at 1e-4 so an empty bin does not make it infinite. Common
//! reading: < 0.1 stable, 0.1–0.25 moderate shift, > 0.25 significant shift.

use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use momentum_models::features::{FEATURE_COUNT, FEATURE_NAMES};

use super::metrics::AnalyticsMetrics;

/// Floor of a bin share in the PSI.
const EPS: f64 = 1e-4;
const HOUR_MS: i64 = 3_600_000;
const SLOTS: usize = 24;
/// Gauges are recomputed at most this often.
const REFRESH_MS: i64 = 10_000;

/// The training-window distribution of every feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// Per feature, increasing cut points.
    pub cuts: Vec<Vec<f64>>,
    /// Per feature, the share of training rows in each of the `cuts.len() + 1` bins.
    pub expected: Vec<Vec<f64>>,
    /// Rows the reference was measured on.
    pub rows: usize,
}

/// The bin of `x` given increasing cut points.
pub fn bin_of(cuts: &[f64], x: f64) -> usize {
    cuts.partition_point(|&c| c < x)
}

impl Reference {
    /// Fits cut points and shares on `rows` (each of `FEATURE_COUNT` values). `None` without
    /// rows.
    pub fn fit(rows: &[Vec<f64>], bins: usize) -> Option<Reference> {
        if rows.is_empty() {
            return None;
        }
        let bins = bins.max(2);
        let mut cuts = Vec::with_capacity(FEATURE_COUNT);
        let mut expected = Vec::with_capacity(FEATURE_COUNT);
        for f in 0..FEATURE_COUNT {
            let mut values: Vec<f64> = rows
                .iter()
                .filter_map(|r| r.get(f).copied())
                .filter(|v| v.is_finite())
                .collect();
            values.sort_by(f64::total_cmp);
            // The cut closing bin i is the last value of the i-th `bins`-quantile.
            let mut c: Vec<f64> = (1..bins)
                .filter_map(|i| {
                    values
                        .get((i * values.len() / bins).saturating_sub(1))
                        .copied()
                })
                .collect();
            c.dedup();
            // The largest value as a cut would leave the last bin empty by construction.
            if c.last() == values.last() {
                c.pop();
            }
            let mut counts = vec![0usize; c.len() + 1];
            for &v in &values {
                counts[bin_of(&c, v)] += 1;
            }
            let n = values.len().max(1) as f64;
            expected.push(counts.iter().map(|&k| k as f64 / n).collect());
            cuts.push(c);
        }
        Some(Reference {
            cuts,
            expected,
            rows: rows.len(),
        })
    }
}

/// PSI of observed bin counts against expected shares (see the module docs). `None` without
/// observations or when the bin counts differ.
pub fn psi(expected: &[f64], observed: &[u64]) -> Option<f64> {
    let total: u64 = observed.iter().sum();
    if total == 0 || expected.len() != observed.len() {
        return None;
    }
    Some(
        expected
            .iter()
            .zip(observed)
            .map(|(&e, &o)| {
                let a = (o as f64 / total as f64).max(EPS);
                let e = e.max(EPS);
                (a - e) * (a / e).ln()
            })
            .sum(),
    )
}

#[derive(Debug)]
struct Slot {
    hour: i64,
    /// `feature * stride + bin`.
    counts: Vec<u64>,
    vectors: u64,
}

#[derive(Debug)]
struct State {
    reference: Option<Arc<Reference>>,
    stride: usize,
    slots: Vec<Slot>,
    last_refresh_ms: i64,
}

/// Counts served feature vectors and publishes the PSI gauges.
#[derive(Debug)]
pub struct DriftMonitor {
    state: Mutex<State>,
    min_samples: u64,
}

impl DriftMonitor {
    pub fn new(min_samples: u64) -> Self {
        DriftMonitor {
            state: Mutex::new(State {
                reference: None,
                stride: 0,
                slots: Vec::new(),
                last_refresh_ms: i64::MIN,
            }),
            min_samples: min_samples.max(1),
        }
    }

    /// Switches to a new reference (a new live churn model); the served counts start over.
    pub fn set_reference(&self, reference: Option<Arc<Reference>>) {
        let mut s = self.state.lock();
        s.stride = reference
            .as_ref()
            .map_or(0, |r| r.cuts.iter().map(|c| c.len() + 1).max().unwrap_or(1));
        s.slots = (0..SLOTS)
            .map(|_| Slot {
                hour: i64::MIN,
                counts: vec![0; s.stride * FEATURE_COUNT],
                vectors: 0,
            })
            .collect();
        s.reference = reference;
        s.last_refresh_ms = i64::MIN;
    }

    /// Counts one served vector at `now_ms`; refreshes the gauges when due.
    pub fn record(&self, features: &[f64; FEATURE_COUNT], now_ms: i64, metrics: &AnalyticsMetrics) {
        let mut guard = self.state.lock();
        let s = &mut *guard;
        let Some(reference) = s.reference.clone() else {
            return;
        };
        let hour = now_ms.div_euclid(HOUR_MS);
        let stride = s.stride;
        let slot = &mut s.slots[hour.rem_euclid(SLOTS as i64) as usize];
        if slot.hour != hour {
            slot.hour = hour;
            slot.counts.iter_mut().for_each(|c| *c = 0);
            slot.vectors = 0;
        }
        slot.vectors += 1;
        for (f, &x) in features.iter().enumerate() {
            if x.is_finite() {
                slot.counts[f * stride + bin_of(&reference.cuts[f], x)] += 1;
            }
        }
        if now_ms.saturating_sub(s.last_refresh_ms) >= REFRESH_MS {
            s.last_refresh_ms = now_ms;
            if let Some(values) = Self::compute(s, &reference, hour, self.min_samples) {
                for (f, v) in values.iter().enumerate() {
                    metrics
                        .drift_psi
                        .with_label_values(&[FEATURE_NAMES[f]])
                        .set(*v);
                }
            }
        }
    }

    /// The PSI of every feature over the last 24 hours as of `now_ms`, if enough vectors were
    /// served.
    pub fn current(&self, now_ms: i64) -> Option<[f64; FEATURE_COUNT]> {
        let s = self.state.lock();
        let reference = s.reference.clone()?;
        Self::compute(&s, &reference, now_ms.div_euclid(HOUR_MS), self.min_samples)
    }

    fn compute(
        s: &State,
        reference: &Reference,
        hour: i64,
        min_samples: u64,
    ) -> Option<[f64; FEATURE_COUNT]> {
        let live: Vec<&Slot> = s
            .slots
            .iter()
            .filter(|slot| slot.hour > hour - SLOTS as i64 && slot.hour <= hour)
            .collect();
        let vectors: u64 = live.iter().map(|slot| slot.vectors).sum();
        if vectors < min_samples {
            return None;
        }
        let mut out = [0.0; FEATURE_COUNT];
        for (f, value) in out.iter_mut().enumerate() {
            let bins = reference.cuts[f].len() + 1;
            let observed: Vec<u64> = (0..bins)
                .map(|b| live.iter().map(|slot| slot.counts[f * s.stride + b]).sum())
                .collect();
            *value = psi(&reference.expected[f], &observed).unwrap_or(0.0);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_is_zero_for_the_same_distribution_and_grows_with_the_shift() {
        let e = [0.25, 0.25, 0.25, 0.25];
        assert_eq!(psi(&e, &[10, 10, 10, 10]), Some(0.0));
        let small = psi(&e, &[12, 10, 10, 8]).unwrap();
        let large = psi(&e, &[40, 0, 0, 0]).unwrap();
        assert!(small > 0.0 && small < 0.1, "{small}");
        assert!(large > 1.0, "{large}");
        // Known value: shares (0.5, 0.5) against (0.25, 0.75):
        // (0.5-0.25)ln 2 + (0.5-0.75)ln(2/3) = 0.25 ln 2 + 0.25 ln 1.5.
        let v = psi(&[0.25, 0.75], &[1, 1]).unwrap();
        assert!((v - (0.25 * 2f64.ln() + 0.25 * 1.5f64.ln())).abs() < 1e-12);
        assert_eq!(psi(&e, &[0, 0, 0, 0]), None);
        assert_eq!(psi(&e, &[1, 1]), None);
    }

    fn rows(n: usize, shift: f64) -> Vec<Vec<f64>> {
        (0..n)
            .map(|i| {
                let mut r = vec![0.0; FEATURE_COUNT];
                r[0] = (i % 100) as f64 / 100.0 + shift;
                r[1] = if i % 4 == 0 { 3.0 } else { 0.0 }; // mostly zero: merged cuts
                r
            })
            .collect()
    }

    #[test]
    fn reference_bins_follow_quantiles_and_merge_ties() {
        let r = Reference::fit(&rows(1000, 0.0), 10).unwrap();
        assert_eq!(r.cuts[0].len(), 9);
        for share in &r.expected[0] {
            assert!((share - 0.1).abs() < 1e-9, "{share}");
        }
        // 75 % zeros, 25 % threes: one cut (0), two bins.
        assert_eq!(r.cuts[1], vec![0.0]);
        assert_eq!(r.expected[1], vec![0.75, 0.25]);
        // A constant feature: one bin holding everything.
        assert!(r.cuts[5].is_empty());
        assert_eq!(r.expected[5], vec![1.0]);
        assert_eq!(bin_of(&[0.0, 1.0], 0.0), 0);
        assert_eq!(bin_of(&[0.0, 1.0], 0.5), 1);
        assert_eq!(bin_of(&[0.0, 1.0], 7.0), 2);
    }

    #[test]
    fn monitor_reports_drift_of_served_features_over_the_last_day_only() {
        let registry = prometheus::Registry::new();
        let metrics = AnalyticsMetrics::new(&registry).unwrap();
        let monitor = DriftMonitor::new(50);
        let reference = Reference::fit(&rows(1000, 0.0), 10).map(Arc::new);
        monitor.set_reference(reference);
        let day = 24 * HOUR_MS;
        let t0 = 1000 * day;
        let as_array = |r: &Vec<f64>| -> [f64; FEATURE_COUNT] { std::array::from_fn(|i| r[i]) };
        for r in rows(40, 0.0) {
            monitor.record(&as_array(&r), t0, &metrics);
        }
        assert_eq!(monitor.current(t0), None, "below the minimum sample");
        for r in rows(500, 0.0) {
            monitor.record(&as_array(&r), t0 + HOUR_MS, &metrics);
        }
        let same = monitor.current(t0 + HOUR_MS).unwrap();
        assert!(same[0] < 0.05 && same[1] < 0.05, "{same:?}");
        // A shifted population a day later: the old hours have left the window.
        for r in rows(500, 0.5) {
            monitor.record(&as_array(&r), t0 + day + 2 * HOUR_MS, &metrics);
        }
        let later = t0 + day + 2 * HOUR_MS;
        let shifted = monitor.current(later).unwrap();
        assert!(shifted[0] > 1.0, "{shifted:?}");
        assert!(
            shifted[1] < 0.05,
            "unshifted feature stays stable: {shifted:?}"
        );
        // The gauges follow at the next record after the refresh period.
        monitor.record(&as_array(&rows(1, 0.5)[0]), later + REFRESH_MS, &metrics);
        let gauge = metrics
            .drift_psi
            .with_label_values(&["completion_rate"])
            .get();
        assert!(gauge > 1.0, "gauge {gauge}");
    }
}
