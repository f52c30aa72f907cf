//! `recommend`: `GET /v1/users/{id}/recommendations?n=` for users drawn uniformly (seeded, so
//! reproducible) from a ratings file's distinct users or from `1..=N`.
//!
//! With `--rate` the load is **open loop**: request `k` is due at `t0 + k/rate` whatever happened
//! to earlier requests, the `connections` workers share that one schedule (whichever is free
//! takes the next slot), and latency is measured from the *scheduled* time. A slow server
//! therefore shows up as latency rather than as a politely slower generator (no coordinated
//! omission). Tokio timers have millisecond granularity, so a free worker wakes up to
//! [`TIMER_SLACK`] early and sends at once; latency then counts from the actual send, never
//! from before it. Requests still unsent when the drain period after the window ends are
//! counted as `unsent`. Without `--rate` the load is closed loop: each connection sends its next
//! request when the previous answer has arrived, for `duration`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::{Client, Url};
use serde::{Deserialize, Serialize};

use crate::client::{self, Attempt, ClientOptions, Outcome, Target};
use crate::data;
use crate::error::LoadError;
use crate::report::{
    self, LatencyHistogram, OpenLoopDetails, RecommendDetails, Recorder, Report, RunSummary,
};
use crate::scenario::{join_workers, Stop};
use crate::timeline::SharedTimeline;

/// Route label of the measurements.
pub const ROUTE: &str = "GET /v1/users/{id}/recommendations";

/// How early a worker may wake for its slot. Tokio rounds timer deadlines up to its 1 ms tick and
/// the driver may wake a further tick late; with 1 ms slack the median send was measured ~0.3 ms
/// late, with 2 ms it is on time. Sending early shifts no slot: the schedule stays absolute.
pub const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Where user ids come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UserSource {
    /// Distinct `user_id`s of a ratings CSV.
    Csv(PathBuf),
    /// Decimal ids `first..=last`.
    Range { first: u64, last: u64 },
}

impl UserSource {
    /// `A..=B` or `A..B` is a range, anything else a path.
    pub fn parse(value: &str) -> Self {
        parse_range(value).unwrap_or_else(|| Self::Csv(PathBuf::from(value)))
    }

    fn load(&self) -> Result<Vec<String>, LoadError> {
        match self {
            Self::Csv(path) => Ok(data::distinct_users(&data::read_ratings(path)?)),
            Self::Range { first, last } => Ok((*first..=*last).map(|id| id.to_string()).collect()),
        }
    }
}

fn parse_range(value: &str) -> Option<UserSource> {
    let (first, last) = if let Some((a, b)) = value.split_once("..=") {
        (a.trim().parse().ok()?, b.trim().parse().ok()?)
    } else {
        let (a, b) = value.split_once("..")?;
        let b: u64 = b.trim().parse().ok()?;
        (a.trim().parse().ok()?, b.checked_sub(1)?)
    };
    (first <= last).then_some(UserSource::Range { first, last })
}

/// Settings of a `recommend` run (all of them end up in the report).
#[derive(Debug, Clone, Serialize)]
pub struct RecommendConfig {
    pub target: Target,
    pub users: UserSource,
    /// Requests per second (open loop); `None` is closed loop.
    pub rate: Option<f64>,
    pub connections: usize,
    #[serde(rename = "duration_s", serialize_with = "report::serialize_secs")]
    pub duration: Duration,
    /// How long after `duration` an open-loop run keeps sending requests that are late.
    #[serde(rename = "drain_s", serialize_with = "report::serialize_secs")]
    pub drain: Duration,
    /// `n` query parameter.
    pub n: u32,
    /// Seed of the user choice: the same seed asks for the same users in the same order.
    pub seed: u64,
    #[serde(flatten)]
    pub client: ClientOptions,
}

/// The fixed-interval timetable of an open-loop run: request `k` is due `k / rate` seconds
/// after the start, for every `k` due before `duration`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    rate: f64,
    total: u64,
}

impl Schedule {
    /// `rate` must be positive and finite (validated by the CLI).
    pub fn new(rate: f64, duration: Duration) -> Self {
        debug_assert!(rate.is_finite() && rate > 0.0);
        let mut schedule = Self {
            rate,
            total: u64::MAX,
        };
        schedule.total = schedule.due_by(duration);
        schedule
    }

    /// Requests in the window.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// When request `k` is due, after the start. Computed from `k` directly, so rounding never
    /// accumulates over a long run.
    pub fn offset(&self, k: u64) -> Duration {
        Duration::try_from_secs_f64(k as f64 / self.rate).unwrap_or(Duration::MAX)
    }

    /// How many requests are due strictly before `elapsed` (at most [`Self::total`]).
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        let estimate = (elapsed.as_secs_f64() * self.rate).ceil();
        let mut count = if estimate >= self.total as f64 {
            self.total
        } else {
            estimate as u64
        };
        // Make the count agree exactly with `offset` despite floating-point rounding.
        while count > 0 && self.offset(count - 1) >= elapsed {
            count -= 1;
        }
        while count < self.total && self.offset(count) < elapsed {
            count += 1;
        }
        count
    }
}

/// When a free worker should wake for a slot due at `scheduled`.
pub(crate) fn wake_at(scheduled: Instant) -> Instant {
    scheduled.checked_sub(TIMER_SLACK).unwrap_or(scheduled)
}

/// Where an open-loop latency is measured from: the scheduled time, or the actual send when the
/// worker woke early (so latency is never longer than the request's own round trip plus the
/// time it waited for a free connection).
pub(crate) fn latency_origin(scheduled: Instant, sent: Instant) -> Instant {
    scheduled.min(sent)
}

/// Index of the user asked for by request `k`: a stateless uniform pick (splitmix64 of the seed
/// and `k`), so the request sequence does not depend on which worker sends what.
fn user_index(seed: u64, k: u64, users: usize) -> usize {
    let mut z = seed
        .wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // `users` fits in u64; the remainder is below `users`, so it fits back into usize.
    (z % users.max(1) as u64) as usize
}

/// Body of a `200` recommendations answer; only the list length is looked at.
#[derive(Debug, Deserialize)]
struct RecommendationsResponse {
    items: Vec<serde::de::IgnoredAny>,
}

/// State every worker of a run shares.
struct Shared {
    urls: Vec<Url>,
    seed: u64,
    t0: Instant,
    /// Next request number to take (both modes).
    next: AtomicU64,
    timeline: SharedTimeline,
}

/// What one worker measured.
struct WorkerResult {
    recorder: Recorder,
    details: RecommendDetails,
    send_lag: LatencyHistogram,
    sent: u64,
}

impl WorkerResult {
    fn new(shared: &Shared) -> Self {
        Self {
            recorder: Recorder::with_timeline(shared.timeline.clone()),
            details: RecommendDetails::default(),
            send_lag: LatencyHistogram::new(),
            sent: 0,
        }
    }
}

/// Runs the scenario for `config.duration` (plus drain, open loop) or until `stop` is raised.
pub async fn run(config: RecommendConfig, stop: Stop) -> Result<Report, LoadError> {
    let users = config.users.load()?;
    if users.is_empty() {
        return Err(LoadError::InvalidConfig {
            message: "no users to ask for".to_owned(),
        });
    }
    let urls = users
        .iter()
        .map(|user| config.target.recommendations_url(user, config.n))
        .collect::<Result<Vec<_>, _>>()?;
    let schedule = config.rate.map(|rate| Schedule::new(rate, config.duration));
    match (&schedule, config.rate) {
        (Some(s), Some(rate)) => eprintln!(
            "recommend: open loop, {rate} req/s for {:?} ({} requests) over {} connections, {} users -> {}",
            config.duration,
            s.total(),
            config.connections,
            urls.len(),
            config.target.as_str()
        ),
        _ => eprintln!(
            "recommend: closed loop for {:?} over {} connections, {} users -> {}",
            config.duration,
            config.connections,
            urls.len(),
            config.target.as_str()
        ),
    }
    client::wait_ready(&config.target, &config.client).await?;
    let mut clients = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let client = client::build_client(&config.client)?;
        client::warm_up(&client, &config.target).await;
        clients.push(client);
    }

    let started_at = SystemTime::now();
    let t0 = Instant::now();
    let shared = Arc::new(Shared {
        urls,
        seed: config.seed,
        t0,
        next: AtomicU64::new(0),
        timeline: SharedTimeline::per_second(t0),
    });
    let handles = clients
        .into_iter()
        .map(|client| {
            let (shared, stop) = (Arc::clone(&shared), stop.clone());
            match schedule {
                Some(schedule) => tokio::spawn(open_loop_worker(
                    client,
                    shared,
                    schedule,
                    config.duration.saturating_add(config.drain),
                    stop,
                )),
                None => tokio::spawn(closed_loop_worker(client, shared, config.duration, stop)),
            }
        })
        .collect();
    let results = join_workers(handles).await?;
    let elapsed = shared.t0.elapsed();

    let recorder = report::merge_all(results.iter().map(|r| &r.recorder))?;
    let mut details = RecommendDetails {
        users: users.len() as u64,
        ..RecommendDetails::default()
    };
    let mut send_lag = LatencyHistogram::new();
    let mut sent = 0;
    for result in &results {
        details.empty_results += result.details.empty_results;
        details.bad_responses += result.details.bad_responses;
        send_lag.merge(&result.send_lag)?;
        sent += result.sent;
    }

    let mut report = Report::new(RunSummary {
        scenario: "recommend",
        mode: if schedule.is_some() { "open" } else { "closed" },
        target: config.target.as_str(),
        config: &config,
        started_at,
        elapsed,
        interrupted: stop.is_set(),
        recorder: &recorder,
        timeline: Some(shared.timeline.finish(elapsed)),
    })?;
    if let (Some(schedule), Some(rate)) = (schedule, config.rate) {
        // Due = scheduled before the run ended (the whole window, unless Ctrl-C cut it short).
        let unsent = schedule.due_by(elapsed).saturating_sub(sent);
        if unsent > 0 {
            *report.errors.entry("unsent".to_owned()).or_default() += unsent;
        }
        report.open_loop = Some(OpenLoopDetails {
            target_rate_per_s: rate,
            scheduled: schedule.total(),
            sent,
            unsent,
            send_lag_us: send_lag.percentiles(),
            max_inflight: None,
            client_dropped: 0,
        });
    }
    report.recommend = Some(details);
    Ok(report)
}

/// Takes the next slot of the shared schedule, waits for it, sends, and records latency from the
/// slot's time. Stops when the schedule is exhausted, the drain deadline passes, or on `stop`.
async fn open_loop_worker(
    client: Client,
    shared: Arc<Shared>,
    schedule: Schedule,
    hard_stop_after: Duration,
    mut stop: Stop,
) -> WorkerResult {
    let mut result = WorkerResult::new(&shared);
    let hard_stop = shared.t0 + hard_stop_after;
    while !stop.is_set() {
        let k = shared.next.fetch_add(1, Ordering::Relaxed);
        if k >= schedule.total() {
            break;
        }
        let scheduled = shared.t0 + schedule.offset(k);
        let wake = wake_at(scheduled);
        if wake > Instant::now() {
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {}
                () = stop.wait() => break,
            }
        } else if Instant::now() >= hard_stop {
            break;
        }
        let url = &shared.urls[user_index(shared.seed, k, shared.urls.len())];
        let attempt = client::send(
            &client,
            reqwest::Request::new(reqwest::Method::GET, url.clone()),
        )
        .await;
        result.sent += 1;
        result
            .send_lag
            .record(attempt.sent.saturating_duration_since(scheduled));
        let origin = latency_origin(scheduled, attempt.sent);
        record(&mut result, attempt, origin);
    }
    result
}

/// Sends back to back until `duration` has passed since the start, or `stop`.
async fn closed_loop_worker(
    client: Client,
    shared: Arc<Shared>,
    duration: Duration,
    stop: Stop,
) -> WorkerResult {
    let mut result = WorkerResult::new(&shared);
    let deadline = shared.t0 + duration;
    while !stop.is_set() && Instant::now() < deadline {
        let k = shared.next.fetch_add(1, Ordering::Relaxed);
        let url = &shared.urls[user_index(shared.seed, k, shared.urls.len())];
        let attempt = client::send(
            &client,
            reqwest::Request::new(reqwest::Method::GET, url.clone()),
        )
        .await;
        result.sent += 1;
        let origin = attempt.sent;
        record(&mut result, attempt, origin);
    }
    result
}

/// Records one attempt with its latency counted from `origin`.
fn record(result: &mut WorkerResult, attempt: Attempt, origin: Instant) {
    let latency = attempt.done.saturating_duration_since(origin);
    match attempt.outcome {
        Outcome::Failed { kind } => result.recorder.failure(ROUTE, kind, latency),
        Outcome::Response { status, body, .. } => {
            result.recorder.response(ROUTE, status, latency);
            if (200..300).contains(&status) {
                match serde_json::from_slice::<RecommendationsResponse>(&body) {
                    Ok(response) if response.items.is_empty() => {
                        result.details.empty_results += 1;
                    }
                    Ok(_) => {}
                    Err(_) => result.details.bad_responses += 1,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_evenly_spaced_without_drift() {
        let schedule = Schedule::new(400.0, Duration::from_secs(30));
        assert_eq!(schedule.total(), 12_000);
        assert_eq!(schedule.offset(0), Duration::ZERO);
        assert_eq!(schedule.offset(1), Duration::from_micros(2500));
        assert_eq!(schedule.offset(4000), Duration::from_secs(10));
        // The last request is due one interval before the end of the window.
        assert_eq!(schedule.offset(11_999), Duration::from_micros(29_997_500));
        // A million requests in, still exactly on the grid.
        let fast = Schedule::new(3.0, Duration::from_secs(1_000_000));
        assert_eq!(fast.offset(3_000_000), Duration::from_secs(1_000_000));
    }

    #[test]
    fn due_by_counts_slots_strictly_before_elapsed() {
        let schedule = Schedule::new(10.0, Duration::from_secs(1));
        assert_eq!(schedule.total(), 10);
        assert_eq!(schedule.due_by(Duration::ZERO), 0);
        assert_eq!(schedule.due_by(Duration::from_nanos(1)), 1);
        assert_eq!(schedule.due_by(Duration::from_millis(100)), 1);
        assert_eq!(schedule.due_by(Duration::from_millis(101)), 2);
        assert_eq!(schedule.due_by(Duration::from_millis(300)), 3);
        assert_eq!(schedule.due_by(Duration::from_secs(99)), 10);
        // Rates that are not a whole number per window.
        assert_eq!(Schedule::new(3.0, Duration::from_millis(1000)).total(), 3);
        assert_eq!(Schedule::new(3.0, Duration::from_millis(1001)).total(), 4);
        assert_eq!(Schedule::new(0.5, Duration::from_secs(10)).total(), 5);
        for k in 0..10 {
            let at = schedule.offset(k);
            assert_eq!(
                schedule.due_by(at),
                k,
                "slot {k} is not due at its own time"
            );
        }
    }

    #[test]
    fn latency_counts_from_the_schedule_unless_sent_early() {
        let t0 = Instant::now();
        let scheduled = t0 + Duration::from_millis(10);
        // Sent late because every connection was busy: the wait is part of the latency.
        let late = t0 + Duration::from_millis(25);
        assert_eq!(latency_origin(scheduled, late), scheduled);
        // Woke a little early on the coarse timer: count from the actual send.
        let early = t0 + Duration::from_micros(9_400);
        assert_eq!(latency_origin(scheduled, early), early);
        assert_eq!(wake_at(scheduled), scheduled - TIMER_SLACK);
    }

    #[test]
    fn user_choice_is_seeded_uniform_and_in_range() {
        let users = 50;
        let picks: Vec<usize> = (0..50_000).map(|k| user_index(42, k, users)).collect();
        assert!(picks.iter().all(|&i| i < users));
        let mut counts = vec![0u32; users];
        for &i in &picks {
            counts[i] += 1;
        }
        // 1,000 expected per user; a fair generator stays well within ±20 %.
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        let again: Vec<usize> = (0..50_000).map(|k| user_index(42, k, users)).collect();
        assert_eq!(picks, again);
        assert_ne!(
            picks[..20],
            (0..20).map(|k| user_index(7, k, users)).collect::<Vec<_>>()[..]
        );
        assert_eq!(user_index(1, 5, 1), 0);
    }

    #[test]
    fn users_flag_is_a_range_or_a_path() {
        assert_eq!(
            UserSource::parse("1..=943"),
            UserSource::Range {
                first: 1,
                last: 943
            }
        );
        assert_eq!(
            UserSource::parse("1..944"),
            UserSource::Range {
                first: 1,
                last: 943
            }
        );
        assert_eq!(
            UserSource::parse("data/ratings.csv"),
            UserSource::Csv(PathBuf::from("data/ratings.csv"))
        );
        assert_eq!(
            UserSource::parse("5..5"),
            UserSource::Csv(PathBuf::from("5..5"))
        );
        let users = UserSource::Range { first: 3, last: 5 }.load().unwrap();
        assert_eq!(users, ["3", "4", "5"]);
    }
}
