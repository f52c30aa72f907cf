//! Measurements and the report they become. Each worker task owns a [`Recorder`] (HDR latency
//! histograms and status counts per route, no locks on the hot path but the one short lock of the
//! shared per-second [`timeline`](crate::timeline)); when the run ends the recorders are merged
//! and turned into a [`Report`]: the scenario's configuration, start time, duration, throughput,
//! latency percentiles per route, errors by status, the per-second time series and the
//! scenario's own section. The report is printed as one human line plus JSON, and optionally
//! written to a file (with an SVG chart beside it); it also deserialises, so `compare` can read
//! two of them back.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::LoadError;
use crate::timeline::{SharedTimeline, TimelineReport};

/// Version of the JSON layout below; bump it when a field changes meaning.
pub const REPORT_VERSION: u32 = 1;

/// Highest latency a histogram resolves: one hour, in microseconds. Longer values saturate.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// An HDR histogram of latencies in microseconds, 3 significant digits, 1 µs to 1 h.
#[derive(Debug, Clone)]
pub struct LatencyHistogram(Histogram<u64>);

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        // Constant bounds that hdrhistogram accepts (low ≥ 1, high ≥ 2·low, sigfig ≤ 5).
        #[allow(clippy::expect_used)]
        let histogram = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("constant histogram bounds are valid");
        Self(histogram)
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros);
    }

    pub fn merge(&mut self, other: &Self) -> Result<(), LoadError> {
        self.0.add(&other.0).map_err(|e| LoadError::Histogram {
            message: format!("{e:?}"),
        })
    }

    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn percentiles(&self) -> Percentiles {
        if self.0.is_empty() {
            return Percentiles::default();
        }
        let h = &self.0;
        Percentiles {
            count: h.len(),
            min: h.min(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Latency distribution in microseconds. Values are HDR bucket values: within 0.1 % of the
/// recorded ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p95: u64,
    pub p99: u64,
    #[serde(rename = "p99.9")]
    pub p99_9: u64,
    pub max: u64,
}

/// Measurements of one route (`"GET /v1/users/{id}/recommendations"`) in one worker.
#[derive(Debug, Clone, Default)]
pub struct RouteRecorder {
    latency: LatencyHistogram,
    statuses: BTreeMap<u16, u64>,
    failures: BTreeMap<&'static str, u64>,
}

impl RouteRecorder {
    fn merge(&mut self, other: &Self) -> Result<(), LoadError> {
        self.latency.merge(&other.latency)?;
        for (status, count) in &other.statuses {
            *self.statuses.entry(*status).or_default() += count;
        }
        for (kind, count) in &other.failures {
            *self.failures.entry(kind).or_default() += count;
        }
        Ok(())
    }

    fn requests(&self) -> u64 {
        self.statuses.values().chain(self.failures.values()).sum()
    }

    fn errors(&self) -> BTreeMap<String, u64> {
        self.statuses
            .iter()
            .filter(|(status, _)| !is_success(**status))
            .map(|(status, count)| (status.to_string(), *count))
            .chain(self.failures.iter().map(|(k, c)| ((*k).to_owned(), *c)))
            .collect()
    }

    fn report(&self) -> RouteReport {
        RouteReport {
            requests: self.requests(),
            status_counts: self
                .statuses
                .iter()
                .map(|(s, c)| (s.to_string(), *c))
                .collect(),
            errors: self.errors(),
            latency_us: self.latency.percentiles(),
        }
    }
}

/// 2xx.
pub fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// Everything one worker measured, by route template.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    routes: BTreeMap<&'static str, RouteRecorder>,
    /// Where every answer is also counted by completion second, when the run keeps a timeline.
    timeline: Option<SharedTimeline>,
}

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A recorder that also counts every answer in `timeline`.
    pub fn with_timeline(timeline: SharedTimeline) -> Self {
        Self {
            routes: BTreeMap::new(),
            timeline: Some(timeline),
        }
    }

    /// A complete response with `status` that took `latency`.
    pub fn response(&mut self, route: &'static str, status: u16, latency: Duration) {
        let r = self.routes.entry(route).or_default();
        r.latency.record(latency);
        *r.statuses.entry(status).or_default() += 1;
        if let Some(timeline) = &self.timeline {
            timeline.record(is_success(status), latency);
        }
    }

    /// An attempt without a complete response. Only timeouts enter the latency histogram (their
    /// latency is a lower bound of the real one); a refused connection has no meaningful latency.
    pub fn failure(&mut self, route: &'static str, kind: &'static str, latency: Duration) {
        let r = self.routes.entry(route).or_default();
        if kind == "timeout" {
            r.latency.record(latency);
        }
        *r.failures.entry(kind).or_default() += 1;
        if let Some(timeline) = &self.timeline {
            timeline.record(false, latency);
        }
    }

    /// Adds `other`'s measurements to these.
    pub fn merge(&mut self, other: &Self) -> Result<(), LoadError> {
        for (route, recorder) in &other.routes {
            self.routes.entry(route).or_default().merge(recorder)?;
        }
        Ok(())
    }

    /// Attempts across all routes (responses and failures).
    pub fn requests(&self) -> u64 {
        self.routes.values().map(RouteRecorder::requests).sum()
    }

    /// 2xx responses across all routes.
    pub fn successes(&self) -> u64 {
        self.routes
            .values()
            .flat_map(|r| r.statuses.iter())
            .filter(|(status, _)| is_success(**status))
            .map(|(_, count)| count)
            .sum()
    }
}

/// Merges the recorders of all workers into one.
pub fn merge_all<'a>(
    recorders: impl IntoIterator<Item = &'a Recorder>,
) -> Result<Recorder, LoadError> {
    let mut merged = Recorder::new();
    for recorder in recorders {
        merged.merge(recorder)?;
    }
    Ok(merged)
}

/// The result of one scenario run; the JSON layout is documented in `load-tests/README.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub report_version: u32,
    pub generator: String,
    pub scenario: String,
    /// `closed` or `open` loop.
    pub mode: String,
    pub target: String,
    /// The command line the run was started with (argv, program first), so that it can be
    /// repeated; absent from reports of older versions and of runs not started from the command
    /// line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// The scenario's effective settings, flags and defaults alike.
    pub config: serde_json::Value,
    /// RFC 3339, UTC, when the timed part started.
    pub started_at: String,
    pub started_at_unix_ms: u64,
    /// Wall time of the timed part, until the last response arrived.
    pub duration_s: f64,
    /// True when Ctrl-C ended the run early.
    pub interrupted: bool,
    pub requests: u64,
    pub throughput: Throughput,
    /// Per route template, e.g. `"POST /v1/events"`.
    pub routes: BTreeMap<String, RouteReport>,
    /// Every status code received, all routes together.
    pub status_counts: BTreeMap<String, u64>,
    /// Non-2xx statuses by code, transport failures by kind (`timeout`, `connect`, `body`,
    /// `transport`), and `unsent` for open-loop requests that never left, all routes together.
    pub errors: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_loop: Option<OpenLoopDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommend: Option<RecommendDetails>,
    /// `mixed`, `soak`, `overload`: what the request mix sent and how events were taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<SoakDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overload: Option<OverloadDetails>,
    /// Answers per second by completion time (every scenario); the chart is drawn from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<TimelineReport>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Throughput {
    /// Attempts (responses and failures) per second.
    pub requests_per_s: f64,
    /// 2xx responses per second.
    pub ok_requests_per_s: f64,
    /// Accepted events per second (`ingest` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_s: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteReport {
    pub requests: u64,
    pub status_counts: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub latency_us: Percentiles,
}

/// Event accounting of an `ingest` run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestDetails {
    /// Batches taken from the data set (each counted once, however often it was retried).
    pub batches: u64,
    pub events_sent: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub rejected_by_code: BTreeMap<String, u64>,
    /// `503` answers that were retried after `Retry-After`.
    pub retries: u64,
    /// Batches that never got a 2xx (error status, transport failure, retries exhausted).
    pub failed_batches: u64,
    pub failed_events: u64,
    /// 2xx answers whose body was not the documented JSON.
    pub bad_responses: u64,
    /// Batch latency from the first attempt to the final answer, retries and waits included.
    pub batch_latency_us: Percentiles,
}

impl IngestDetails {
    pub fn merge(&mut self, other: &Self) {
        self.batches += other.batches;
        self.events_sent += other.events_sent;
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.rejected += other.rejected;
        for (code, count) in &other.rejected_by_code {
            *self.rejected_by_code.entry(code.clone()).or_default() += count;
        }
        self.retries += other.retries;
        self.failed_batches += other.failed_batches;
        self.failed_events += other.failed_events;
        self.bad_responses += other.bad_responses;
    }
}

/// How well an open-loop run kept its schedule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenLoopDetails {
    pub target_rate_per_s: f64,
    /// Requests the schedule held for the run's window.
    pub scheduled: u64,
    pub sent: u64,
    /// Requests that were due but never sent (the drain period ran out, or Ctrl-C).
    pub unsent: u64,
    /// How late requests left compared with their scheduled time; large values mean every
    /// connection was busy (server too slow for the rate, or too few `--connections`).
    pub send_lag_us: Percentiles,
    /// Bound on outstanding requests (`mixed`, `soak`, `overload`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<usize>,
    /// Requests due while `max_inflight` were outstanding: never sent, counted here and in
    /// `errors`.
    #[serde(default)]
    pub client_dropped: u64,
}

/// Request mix accounting of `mixed`, `soak` and `overload`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadDetails {
    /// Distinct user and item ids the requests were drawn from.
    pub users: u64,
    pub items: u64,
    /// Events in the `POST /v1/events` requests sent.
    pub events_sent: u64,
    /// From the 2xx answers' bodies.
    pub events_accepted: u64,
    pub events_duplicates: u64,
    pub events_rejected: u64,
    /// 2xx event answers whose body was not the documented JSON.
    pub bad_responses: u64,
}

/// One `/metrics` scrape: the server's resident memory `t_s` seconds after the start, `null`
/// when the scrape failed or the metric was missing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RssSample {
    pub t_s: f64,
    pub rss_bytes: Option<u64>,
}

/// What a `soak` run shows about drift.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SoakDetails {
    pub sample_every_s: f64,
    /// One entry per `sample_every` of answers (by completion time).
    pub intervals: Vec<SoakInterval>,
    /// Every scrape, the first at the start, the last after the run.
    pub rss_samples: Vec<RssSample>,
    pub drift: Drift,
}

/// Answers and memory of one soak interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SoakInterval {
    /// Start of the interval, seconds after the start of the run.
    pub t_s: f64,
    /// Its length: `sample_every`, except for a last interval cut short by the end of the run.
    pub span_s: f64,
    pub ok: u64,
    pub errors: u64,
    /// 2xx answers per second over the interval (the last one may be shorter).
    pub ok_per_s: f64,
    /// Latency of the interval's 2xx answers.
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// The first memory sample taken at or after the interval's end.
    pub rss_bytes: Option<u64>,
}

/// First against last interval, and least-squares slopes over all intervals (per hour of run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    pub first_p99_us: Option<u64>,
    pub last_p99_us: Option<u64>,
    pub p99_slope_us_per_h: Option<f64>,
    pub first_rss_bytes: Option<u64>,
    pub last_rss_bytes: Option<u64>,
    pub rss_slope_bytes_per_h: Option<f64>,
    pub first_ok_per_s: Option<f64>,
    pub last_ok_per_s: Option<f64>,
}

/// What an `overload` run shows about load shedding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OverloadDetails {
    /// The sustainable rate given (`--rate`) and the overload multiplier (`--factor`).
    pub base_rate_per_s: f64,
    pub factor: f64,
    pub phases: Vec<PhaseReport>,
    /// Last memory sample of the warm-up, last sample after the run, and their difference.
    pub rss_baseline_bytes: Option<u64>,
    pub rss_end_bytes: Option<u64>,
    pub rss_growth_bytes: Option<i64>,
    pub checks: Vec<CheckResult>,
    /// No check failed (skipped ones do not count).
    pub passed: bool,
    /// `--check`: a failed check makes the run exit with status 3.
    pub enforced: bool,
}

/// Accounting of one phase, by the phase each request was *scheduled* in.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    pub name: String,
    pub rate_per_s: f64,
    pub start_s: f64,
    pub duration_s: f64,
    pub scheduled: u64,
    /// Requests sent (answered or failed).
    pub sent: u64,
    /// 2xx answers.
    pub accepted: u64,
    pub accepted_per_s: f64,
    /// `503` answers.
    pub shed: u64,
    /// `503` answers with a `Retry-After` in seconds.
    pub shed_with_retry_after: u64,
    /// `503` answers by the `error.code` of their body (`overloaded`, `model_not_ready`, ...;
    /// `unknown` when the body is not the documented JSON).
    pub shed_by_code: BTreeMap<String, u64>,
    /// `shed_with_retry_after / shed`; `null` without any `503`.
    pub retry_after_share: Option<f64>,
    /// Other statuses by code and transport failures by kind.
    pub other: BTreeMap<String, u64>,
    pub client_dropped: u64,
    pub unsent: u64,
    /// Requests scheduled after the phase's first `grace_s` seconds, and how many of them did
    /// not get a 2xx (failures and client drops included): the recovery check.
    pub after_grace: GraceCounts,
    /// Latency of the phase's 2xx answers, all routes.
    pub accepted_latency_us: Percentiles,
    pub rss_samples: Vec<RssSample>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GraceCounts {
    pub grace_s: f64,
    pub requests: u64,
    /// Not 2xx, excused answers left out.
    pub non_2xx: u64,
    /// Answers about the data rather than the load, not held against the server: `404` and
    /// `503 model_not_ready` (the prediction routes before a model is trained).
    pub excused: u64,
}

/// One verdict of `overload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub status: CheckStatus,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    Fail,
    /// Not measurable in this run (e.g. the server has no memory metric).
    Skip,
}

/// Response checks of a `recommend` run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecommendDetails {
    pub users: u64,
    /// 2xx answers with an empty `items` list.
    pub empty_results: u64,
    /// 2xx answers whose body was not the documented JSON.
    pub bad_responses: u64,
}

/// What a scenario hands over to become a report.
pub struct RunSummary<'a, C: Serialize> {
    pub scenario: &'static str,
    pub mode: &'static str,
    pub target: &'a str,
    pub config: &'a C,
    pub started_at: SystemTime,
    pub elapsed: Duration,
    pub interrupted: bool,
    pub recorder: &'a Recorder,
    /// The run's per-second series, when it kept one.
    pub timeline: Option<TimelineReport>,
}

impl Report {
    /// The scenario-independent part of a report; scenarios fill in their own sections.
    pub fn new<C: Serialize>(run: RunSummary<'_, C>) -> Result<Self, LoadError> {
        let config = serde_json::to_value(run.config).map_err(|source| LoadError::Serialize {
            what: "scenario config",
            source,
        })?;
        let started_at_unix_ms = run
            .started_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let secs = run.elapsed.as_secs_f64();
        let routes: BTreeMap<String, RouteReport> = run
            .recorder
            .routes
            .iter()
            .map(|(route, r)| ((*route).to_owned(), r.report()))
            .collect();
        let mut status_counts = BTreeMap::new();
        let mut errors = BTreeMap::new();
        for route in routes.values() {
            for (status, count) in &route.status_counts {
                *status_counts.entry(status.clone()).or_default() += count;
            }
            for (kind, count) in &route.errors {
                *errors.entry(kind.clone()).or_default() += count;
            }
        }
        let requests = run.recorder.requests();
        Ok(Self {
            report_version: REPORT_VERSION,
            generator: format!("momentum-load {}", env!("CARGO_PKG_VERSION")),
            scenario: run.scenario.to_owned(),
            mode: run.mode.to_owned(),
            target: run.target.to_owned(),
            command: None,
            config,
            started_at: rfc3339_utc(started_at_unix_ms),
            started_at_unix_ms,
            duration_s: round3(secs),
            interrupted: run.interrupted,
            requests,
            throughput: Throughput {
                requests_per_s: round3(per_second(requests, secs)),
                ok_requests_per_s: round3(per_second(run.recorder.successes(), secs)),
                events_per_s: None,
            },
            routes,
            status_counts,
            errors,
            ingest: None,
            open_loop: None,
            recommend: None,
            workload: None,
            soak: None,
            overload: None,
            timeline: run.timeline,
        })
    }

    /// Total of `errors`.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// One line for humans: throughput, errors and each route's percentiles.
    pub fn summary_line(&self) -> String {
        let mut line = format!("{} ({} loop", self.scenario, self.mode);
        if let Some(open) = &self.open_loop {
            line.push_str(&format!(" at {} req/s", open.target_rate_per_s));
        }
        line.push_str(&format!(
            "): {} requests in {:.2} s = {:.1} req/s",
            self.requests, self.duration_s, self.throughput.requests_per_s
        ));
        if let (Some(ingest), Some(eps)) = (&self.ingest, self.throughput.events_per_s) {
            line.push_str(&format!(
                ", {}/{} events accepted = {eps:.0} events/s ({} duplicates, {} rejected, {} retries)",
                ingest.accepted, ingest.events_sent, ingest.duplicates, ingest.rejected, ingest.retries
            ));
        }
        line.push_str(&format!(", {} errors", self.error_count()));
        if !self.errors.is_empty() {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(k, c)| format!("{k}: {c}"))
                .collect();
            line.push_str(&format!(" ({})", kinds.join(", ")));
        }
        if self.interrupted {
            line.push_str(", interrupted");
        }
        for (route, r) in &self.routes {
            let l = &r.latency_us;
            if l.count == 0 {
                line.push_str(&format!("; {route} no latency samples"));
                continue;
            }
            line.push_str(&format!(
                "; {route} p50 {} p95 {} p99 {} p99.9 {} max {}",
                fmt_us(l.p50),
                fmt_us(l.p95),
                fmt_us(l.p99),
                fmt_us(l.p99_9),
                fmt_us(l.max)
            ));
        }
        line
    }

    pub fn to_json(&self) -> Result<String, LoadError> {
        serde_json::to_string_pretty(self).map_err(|source| LoadError::Serialize {
            what: "report",
            source,
        })
    }

    /// Writes the JSON report to `path` (with a trailing newline).
    pub fn write(&self, path: &Path) -> Result<(), LoadError> {
        let mut json = self.to_json()?;
        json.push('\n');
        std::fs::write(path, json).map_err(|source| LoadError::WriteReport {
            path: path.to_path_buf(),
            source,
        })
    }
}

fn per_second(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `1234` µs → `1.23ms`, `842` → `842µs`, `2_500_000` → `2.50s`.
pub fn fmt_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=999_999 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

/// Serialises a duration as fractional seconds (for `*_s` config fields).
pub fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds, e.g. `2024-02-29T13:05:09.042Z`.
pub fn rfc3339_utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are small and positive by construction.
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "GET /x";

    #[test]
    fn merged_worker_histograms_equal_one_histogram_of_all_values() {
        let mut whole = Recorder::new();
        let mut parts = vec![Recorder::new(), Recorder::new(), Recorder::new()];
        for i in 0..3000u64 {
            // A long tail: most values small, a few seconds long.
            let micros = if i % 100 == 99 {
                2_000_000 + i
            } else {
                100 + i % 700
            };
            let latency = Duration::from_micros(micros);
            whole.response(ROUTE, 200, latency);
            parts[(i % 3) as usize].response(ROUTE, 200, latency);
        }
        parts[1].response(ROUTE, 503, Duration::from_micros(50));
        parts[2].failure(ROUTE, "connect", Duration::from_micros(10));
        whole.response(ROUTE, 503, Duration::from_micros(50));
        whole.failure(ROUTE, "connect", Duration::from_micros(10));

        let merged = merge_all(&parts).unwrap();
        let (m, w) = (&merged.routes[ROUTE], &whole.routes[ROUTE]);
        assert_eq!(m.report(), w.report());
        let p = m.latency.percentiles();
        assert_eq!(p.count, 3001);
        assert_eq!(p.min, 50);
        assert!((2_000_000..2_004_000).contains(&p.max), "{}", p.max);
        assert!(
            p.p50 < 1000 && p.p99 >= 700 && p.p99_9 >= 2_000_000,
            "{p:?}"
        );
        assert_eq!(merged.requests(), 3002);
        assert_eq!(merged.successes(), 3000);
        assert_eq!(
            m.errors(),
            BTreeMap::from([("503".to_owned(), 1), ("connect".to_owned(), 1)])
        );
    }

    #[test]
    fn percentiles_are_within_hdr_precision() {
        let mut h = LatencyHistogram::new();
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        let p = h.percentiles();
        let close = |got: u64, want: u64| got.abs_diff(want) * 1000 <= want;
        assert!(close(p.p50, 5000) && close(p.p95, 9500), "{p:?}");
        assert!(close(p.p99, 9900) && close(p.p99_9, 9990), "{p:?}");
        assert_eq!(
            LatencyHistogram::new().percentiles(),
            Percentiles::default()
        );
        // Absurd latencies saturate instead of failing.
        h.record(Duration::from_secs(100_000));
        assert!(h.percentiles().max >= MAX_LATENCY_US);
    }

    #[test]
    fn report_totals_and_round_trip() {
        let mut rec = Recorder::new();
        rec.response("POST /v1/events", 200, Duration::from_millis(3));
        rec.response("POST /v1/events", 503, Duration::from_micros(200));
        rec.response("GET /healthz", 200, Duration::from_micros(90));
        rec.failure("GET /healthz", "timeout", Duration::from_secs(30));
        let report = Report::new(RunSummary {
            scenario: "test",
            mode: "closed",
            target: "http://h/",
            config: &serde_json::json!({"batch": 10}),
            started_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            elapsed: Duration::from_secs(2),
            interrupted: false,
            recorder: &rec,
            timeline: None,
        })
        .unwrap();
        assert_eq!(report.requests, 4);
        assert_eq!(report.throughput.requests_per_s, 2.0);
        assert_eq!(report.throughput.ok_requests_per_s, 1.0);
        assert_eq!(report.status_counts["200"], 2);
        assert_eq!(report.error_count(), 2);
        assert_eq!(report.started_at, "2023-11-14T22:13:20.123Z");
        assert_eq!(report.routes["GET /healthz"].latency_us.count, 2);
        let line = report.summary_line();
        assert!(
            line.contains("4 requests") && line.contains("503: 1"),
            "{line}"
        );
        let back: Report = serde_json::from_str(&report.to_json().unwrap()).unwrap();
        assert_eq!(back.routes, report.routes);
        assert_eq!(back.config["batch"], 10);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(881_250_949_007), "1997-12-04T15:55:49.007Z");
        assert_eq!(rfc3339_utc(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn human_durations() {
        assert_eq!(fmt_us(842), "842µs");
        assert_eq!(fmt_us(1234), "1.23ms");
        assert_eq!(fmt_us(2_500_000), "2.50s");
    }
}
