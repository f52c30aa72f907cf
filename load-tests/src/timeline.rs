//! Time series of a run: fixed-width buckets (one second for every scenario, `--sample-every`
//! for the soak intervals) of answers by **completion time**, each with its 2xx and other counts
//! and the p50/p99 latency of its 2xx answers. Latency of successful answers only, so that a
//! flood of fast `503`s during overload does not make the chart look faster.
//!
//! Memory stays bounded: only the newest [`OPEN_BUCKETS`] buckets keep a latency histogram; older
//! ones are closed into a few numbers. Answers are recorded as they complete, so they arrive in
//! time order up to scheduling jitter; one that lands in an already closed bucket (a task
//! descheduled for several bucket widths) still counts, without its latency. The closed buckets
//! grow with the run's duration, which every scenario bounds.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::report::LatencyHistogram;

/// Buckets that still accept latencies; older ones are summarised.
pub const OPEN_BUCKETS: usize = 3;

/// One closed bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Start of the bucket, seconds after the start of the run.
    pub t_s: f64,
    /// 2xx answers that completed in the bucket.
    pub ok: u64,
    /// Other statuses and transport failures that completed in the bucket.
    pub errors: u64,
    /// Median latency of the bucket's 2xx answers (µs); `null` without any.
    pub p50_us: Option<u64>,
    /// 99th percentile latency of the bucket's 2xx answers (µs); `null` without any.
    pub p99_us: Option<u64>,
}

/// A finished time series, as stored in the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelineReport {
    /// Width of every bucket in seconds (the last one may be cut short by the end of the run).
    pub bucket_s: f64,
    /// Seconds covered: the last bucket spans `[t_s, duration_s)`.
    pub duration_s: f64,
    /// Every bucket from 0, empty ones included, in time order.
    pub buckets: Vec<Bucket>,
}

impl TimelineReport {
    /// Seconds bucket `index` actually spans (the last one may be partial).
    pub fn span_s(&self, index: usize) -> f64 {
        let Some(bucket) = self.buckets.get(index) else {
            return 0.0;
        };
        let rest = self.duration_s - bucket.t_s;
        if rest > 0.0 {
            rest.min(self.bucket_s)
        } else {
            self.bucket_s
        }
    }
}

#[derive(Debug, Default)]
struct OpenBucket {
    ok: u64,
    errors: u64,
    latency: LatencyHistogram,
}

impl OpenBucket {
    fn close(self, t_s: f64) -> Bucket {
        let (p50_us, p99_us) = if self.latency.is_empty() {
            (None, None)
        } else {
            let p = self.latency.percentiles();
            (Some(p.p50), Some(p.p99))
        };
        Bucket {
            t_s,
            ok: self.ok,
            errors: self.errors,
            p50_us,
            p99_us,
        }
    }
}

/// Buckets being filled during a run.
#[derive(Debug)]
pub struct Timeline {
    width: Duration,
    closed: Vec<Bucket>,
    /// Buckets `closed.len()..closed.len() + open.len()`.
    open: VecDeque<OpenBucket>,
}

impl Default for Timeline {
    /// One-second buckets.
    fn default() -> Self {
        Self::new(Duration::from_secs(1))
    }
}

impl Timeline {
    /// `width` must be positive (checked by the callers' configuration).
    pub fn new(width: Duration) -> Self {
        debug_assert!(!width.is_zero());
        Self {
            width: width.max(Duration::from_millis(1)),
            closed: Vec::new(),
            open: VecDeque::with_capacity(OPEN_BUCKETS + 1),
        }
    }

    fn index(&self, at: Duration) -> usize {
        usize::try_from(at.as_nanos() / self.width.as_nanos()).unwrap_or(usize::MAX)
    }

    fn start_s(&self, index: usize) -> f64 {
        index as f64 * self.width.as_secs_f64()
    }

    /// An answer that completed `at` after the start: `ok` for 2xx, with its latency (recorded
    /// for 2xx only).
    pub fn record(&mut self, at: Duration, ok: bool, latency: Duration) {
        let index = self.index(at);
        if index < self.closed.len() {
            // Late: count it, its latency can no longer enter the closed percentiles.
            let bucket = &mut self.closed[index];
            if ok {
                bucket.ok += 1;
            } else {
                bucket.errors += 1;
            }
            return;
        }
        while index >= self.closed.len() + self.open.len() {
            self.open.push_back(OpenBucket::default());
            if self.open.len() > OPEN_BUCKETS {
                self.close_oldest();
            }
        }
        let offset = index - self.closed.len();
        let bucket = &mut self.open[offset];
        if ok {
            bucket.ok += 1;
            bucket.latency.record(latency);
        } else {
            bucket.errors += 1;
        }
    }

    fn close_oldest(&mut self) {
        if let Some(bucket) = self.open.pop_front() {
            let t_s = self.start_s(self.closed.len());
            self.closed.push(bucket.close(t_s));
        }
    }

    /// Closes every bucket and pads with empty ones up to `elapsed` (the run's length).
    pub fn finish(mut self, elapsed: Duration) -> TimelineReport {
        let covered = self.index(elapsed.saturating_sub(Duration::from_nanos(1))) + 1;
        while self.closed.len() + self.open.len() < covered {
            self.open.push_back(OpenBucket::default());
        }
        while !self.open.is_empty() {
            self.close_oldest();
        }
        TimelineReport {
            bucket_s: self.width.as_secs_f64(),
            duration_s: elapsed.as_secs_f64(),
            buckets: self.closed,
        }
    }
}

/// A per-second [`Timeline`] that the workers of a run share: one short lock per answer.
#[derive(Debug, Clone)]
pub struct SharedTimeline {
    t0: Instant,
    inner: Arc<Mutex<Timeline>>,
}

impl SharedTimeline {
    /// One-second buckets counted from `t0`, the start of the timed part.
    pub fn per_second(t0: Instant) -> Self {
        Self {
            t0,
            inner: Arc::new(Mutex::new(Timeline::new(Duration::from_secs(1)))),
        }
    }

    /// An answer completing now.
    pub fn record(&self, ok: bool, latency: Duration) {
        let at = self.t0.elapsed();
        // A panic while holding the lock cannot leave the counters inconsistent.
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(at, ok, latency);
    }

    /// The finished series; buckets recorded after this call are lost.
    pub fn finish(&self, elapsed: Duration) -> TimelineReport {
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let width = guard.width;
        std::mem::replace(&mut *guard, Timeline::new(width)).finish(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn answers_land_in_the_second_they_complete() {
        let mut t = Timeline::new(Duration::from_secs(1));
        for i in 0..100u64 {
            // Second 0: 100 answers of 1..=100 ms.
            t.record(ms(5 * i), true, ms(i + 1));
        }
        t.record(ms(999), false, ms(1));
        // Second 1 is empty; second 2 has two slow answers and one error.
        t.record(ms(2_000), true, ms(400));
        t.record(ms(2_500), true, ms(800));
        t.record(ms(2_999), false, ms(5));
        let report = t.finish(ms(3_500));
        assert_eq!(report.bucket_s, 1.0);
        assert_eq!(report.buckets.len(), 4, "{report:?}");
        let b0 = &report.buckets[0];
        assert_eq!((b0.t_s, b0.ok, b0.errors), (0.0, 100, 1));
        let close =
            |got: Option<u64>, want: u64| got.is_some_and(|g| g.abs_diff(want) * 100 <= want);
        assert!(close(b0.p50_us, 50_000), "{b0:?}");
        assert!(close(b0.p99_us, 99_000), "{b0:?}");
        let b1 = &report.buckets[1];
        assert_eq!((b1.t_s, b1.ok, b1.errors, b1.p50_us), (1.0, 0, 0, None));
        let b2 = &report.buckets[2];
        assert_eq!((b2.ok, b2.errors), (2, 1));
        assert!(close(b2.p99_us, 800_000), "{b2:?}");
        // The run ended half way through the last, empty bucket.
        assert_eq!(report.buckets[3].ok + report.buckets[3].errors, 0);
        assert!((report.span_s(3) - 0.5).abs() < 1e-9);
        assert_eq!(report.span_s(0), 1.0);
        let total: u64 = report.buckets.iter().map(|b| b.ok + b.errors).sum();
        assert_eq!(total, 104);
    }

    #[test]
    fn late_answers_still_count_and_memory_stays_bounded() {
        let mut t = Timeline::new(Duration::from_secs(1));
        t.record(ms(100), true, ms(1));
        // Ten seconds later the first buckets are closed.
        t.record(ms(10_100), true, ms(1));
        assert!(t.open.len() <= OPEN_BUCKETS);
        assert_eq!(t.closed.len(), 11 - OPEN_BUCKETS);
        // An answer descheduled for seconds arrives in its closed bucket without latency.
        t.record(ms(200), true, ms(9_000));
        t.record(ms(300), false, ms(1));
        let report = t.finish(ms(10_500));
        assert_eq!(report.buckets.len(), 11);
        assert_eq!((report.buckets[0].ok, report.buckets[0].errors), (2, 1));
        assert_eq!(report.buckets[0].p99_us, report.buckets[0].p50_us);
        assert!(report.buckets[0].p99_us.is_some_and(|p| p < 2_000));
        assert_eq!(report.buckets[10].ok, 1);
    }

    #[test]
    fn wider_buckets_and_shared_recording() {
        let mut t = Timeline::new(Duration::from_secs(10));
        t.record(ms(9_999), true, ms(1));
        t.record(ms(10_000), true, ms(1));
        let report = t.finish(ms(20_000));
        assert_eq!(report.buckets.len(), 2);
        assert_eq!(report.buckets[1].t_s, 10.0);

        let shared = SharedTimeline::per_second(Instant::now());
        let clone = shared.clone();
        clone.record(true, ms(3));
        shared.record(false, ms(3));
        let report = shared.finish(ms(200));
        assert_eq!(report.buckets.len(), 1);
        assert_eq!((report.buckets[0].ok, report.buckets[0].errors), (1, 1));
    }
}
