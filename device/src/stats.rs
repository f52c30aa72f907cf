//! Inference latency and model-manager counters, in bounded memory: latencies go into an
//! HDR histogram (microsecond resolution, 3 significant digits, up to 60 s), whatever the
//! number of calls.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Highest latency the histogram tracks (larger values are clamped to it), in nanoseconds.
const MAX_TRACKED_NS: u64 = 60_000_000_000;

/// Latency percentiles of the inferences since the last reset.
#[derive(Debug)]
pub struct LatencyRecorder {
    histogram: Mutex<Option<Histogram<u64>>>,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self {
            histogram: Mutex::new(Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3).ok()),
        }
    }
}

impl LatencyRecorder {
    /// Records one latency.
    pub fn record(&self, elapsed: std::time::Duration) {
        let ns = u64::try_from(elapsed.as_nanos())
            .unwrap_or(MAX_TRACKED_NS)
            .clamp(1, MAX_TRACKED_NS);
        if let Some(h) = self.histogram.lock().as_mut() {
            h.saturating_record(ns);
        }
    }

    /// Count and percentiles so far.
    pub fn snapshot(&self) -> LatencySnapshot {
        let guard = self.histogram.lock();
        let Some(h) = guard.as_ref() else {
            return LatencySnapshot::default();
        };
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
        if h.is_empty() {
            return LatencySnapshot::default();
        }
        LatencySnapshot {
            count: h.len(),
            p50_us: us(0.50),
            p95_us: us(0.95),
            p99_us: us(0.99),
            max_us: h.max() as f64 / 1_000.0,
            mean_us: h.mean() / 1_000.0,
        }
    }

    /// Forgets every recorded latency.
    pub fn reset(&self) {
        if let Some(h) = self.histogram.lock().as_mut() {
            h.reset();
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySnapshot {
    pub count: u64,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

/// What the model manager reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelStats {
    /// Version serving now.
    pub version: Option<u64>,
    /// Inference latency (waiting for a state included).
    pub latency: LatencySnapshot,
    /// Inferences that failed (timeout, bad input, interpreter error).
    pub failed_inferences: u64,
    /// Inferences refused because no state was free in time.
    pub timeouts: u64,
    /// Time the serving version took to load: parse, optimise, golden vectors (ms).
    pub load_ms: Option<f64>,
    /// Models put in service.
    pub loads: u64,
    /// Models refused (checksum, key, golden vectors, damaged file).
    pub rejected: u64,
    /// Update checks answered from what the device already has (same version, `304`).
    pub cache_hits: u64,
    /// Update checks that had to download.
    pub cache_misses: u64,
    /// `hits / (hits + misses)`, 0 before any check.
    pub cache_hit_rate: f64,
    /// Rough bytes held by the serving model: file, plan constants and the created states.
    pub memory_bytes: usize,
    /// Pool bound, states created, lent now, most ever lent at once.
    pub pool_size: usize,
    pub pool_created: usize,
    pub pool_in_use: usize,
    pub pool_peak: usize,
}
