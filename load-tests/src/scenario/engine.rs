//! The load engine of the mixed-workload scenarios (`mixed`, `soak`, `overload`): it sends the
//! requests of a [`Workload`] either open loop along a [`Plan`] of rate phases, or closed loop
//! over a fixed number of connections, and accounts every answer per route, per phase and per
//! second.
//!
//! **Open loop.** One dispatcher walks the plan's slots (request `k` of a phase at rate `r` is due
//! `k / r` after the phase starts) and, at each slot's time, hands the request to a new task on a
//! shared keep-alive pool, whatever happened to earlier requests. Latency counts from the slot's
//! time (from the actual send when the timer woke a little early), so a slow server shows up as
//! latency, not as a politely slower generator. Outstanding requests are bounded by
//! `max_inflight`: a slot that falls due while that many are outstanding is counted as
//! `client_dropped`, never silently skipped, so the generator's own memory and connection count
//! stay bounded however far the server falls behind. **Closed loop**: each of `connections`
//! workers sends its next request when the previous answer arrived.
//!
//! Answers go to one collector behind a mutex (one short lock per answer; the HTTP work and
//! body parsing happen outside it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use reqwest::Client;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::client::{self, ClientOptions, Outcome, Target};
use crate::error::LoadError;
use crate::report::{is_success, LatencyHistogram, Recorder, RssSample, WorkloadDetails};
use crate::scenario::recommend::{latency_origin, wake_at, Schedule};
use crate::scenario::{join_workers, Stop};
use crate::scrape::RssSampler;
use crate::timeline::{Timeline, TimelineReport};
use crate::workload::{RequestKind, Workload};

/// One phase of an open-loop plan: `rate` requests per second for `duration`.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseSpec {
    pub name: &'static str,
    pub rate: f64,
    pub duration: Duration,
}

#[derive(Debug, Clone)]
struct PlannedPhase {
    spec: PhaseSpec,
    schedule: Schedule,
    /// Offset of the phase from the start of the run.
    start: Duration,
    /// Global number of the phase's first slot.
    first: u64,
}

/// Consecutive rate phases and their slots, numbered globally from 0.
#[derive(Debug, Clone)]
pub struct Plan {
    phases: Vec<PlannedPhase>,
    total: u64,
}

impl Plan {
    /// Phases in order; rates positive and finite, durations positive (validated by the CLI).
    pub fn new(specs: Vec<PhaseSpec>) -> Self {
        let mut phases = Vec::with_capacity(specs.len());
        let (mut start, mut first) = (Duration::ZERO, 0u64);
        for spec in specs {
            let schedule = Schedule::new(spec.rate, spec.duration);
            let duration = spec.duration;
            phases.push(PlannedPhase {
                schedule,
                start,
                first,
                spec,
            });
            start = start.saturating_add(duration);
            first = first.saturating_add(schedule.total());
        }
        Self {
            phases,
            total: first,
        }
    }

    /// Slots of the whole plan.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn len(&self) -> usize {
        self.phases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.phases.is_empty()
    }

    pub fn spec(&self, phase: usize) -> Option<&PhaseSpec> {
        self.phases.get(phase).map(|p| &p.spec)
    }

    /// Offset of `phase` from the start of the run.
    pub fn start(&self, phase: usize) -> Duration {
        self.phases.get(phase).map_or(Duration::ZERO, |p| p.start)
    }

    /// Length of the whole plan.
    pub fn duration(&self) -> Duration {
        self.phases
            .last()
            .map_or(Duration::ZERO, |p| p.start.saturating_add(p.spec.duration))
    }

    /// Slots of `phase`.
    pub fn phase_total(&self, phase: usize) -> u64 {
        self.phases.get(phase).map_or(0, |p| p.schedule.total())
    }

    /// The phase of slot `k` and when it is due after the start of the run; `None` past the end.
    pub fn slot(&self, k: u64) -> Option<(usize, Duration)> {
        if k >= self.total {
            return None;
        }
        let phase = self.phases.partition_point(|p| p.first <= k) - 1;
        let p = &self.phases[phase];
        Some((
            phase,
            p.start.saturating_add(p.schedule.offset(k - p.first)),
        ))
    }

    /// Slots of `phase` due strictly before `elapsed` (run time).
    pub fn phase_due_by(&self, phase: usize, elapsed: Duration) -> u64 {
        self.phases.get(phase).map_or(0, |p| {
            elapsed
                .checked_sub(p.start)
                .map_or(0, |into| p.schedule.due_by(into))
        })
    }

    /// The phase running at `t` after the start (the last one from its end on).
    pub fn phase_at(&self, t: Duration) -> usize {
        self.phases
            .partition_point(|p| p.start <= t)
            .saturating_sub(1)
    }
}

/// How the engine drives the load.
#[derive(Debug, Clone)]
pub enum Load {
    /// Open loop along `plan`, at most `max_inflight` outstanding requests; `warm_connections`
    /// keep-alive connections are opened before the clock starts.
    Open {
        plan: Plan,
        max_inflight: usize,
        warm_connections: usize,
    },
    /// `connections` workers back to back for `duration`.
    Closed {
        connections: usize,
        duration: Duration,
    },
}

/// What the engine needs besides the workload.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub target: Target,
    pub client: ClientOptions,
    pub load: Load,
    /// Requests scheduled this long after their phase started count in `after_grace`.
    pub grace: Duration,
    /// Scrape the server's memory this often (from the start, and once after the run).
    pub sample_every: Option<Duration>,
    /// Also keep a time series with buckets this wide (soak intervals).
    pub interval: Option<Duration>,
}

/// Accounting of one phase (closed loop: the whole run is one phase).
#[derive(Debug, Default)]
pub struct PhaseTally {
    pub sent: u64,
    pub accepted: u64,
    pub shed: u64,
    pub shed_with_retry_after: u64,
    pub shed_by_code: BTreeMap<String, u64>,
    /// Other statuses by code, transport failures by kind.
    pub other: BTreeMap<String, u64>,
    pub client_dropped: u64,
    pub unsent: u64,
    pub grace_requests: u64,
    pub grace_non_2xx: u64,
    /// `404` and `503 model_not_ready` after the grace period: about data, not load.
    pub grace_excused: u64,
    /// Latency of 2xx answers, all routes.
    pub accepted_latency: LatencyHistogram,
}

/// Everything a run measured.
#[derive(Debug)]
pub struct EngineOutput {
    pub started_at: SystemTime,
    /// Until the last answer (and the last memory sample).
    pub elapsed: Duration,
    pub interrupted: bool,
    /// All answers by route.
    pub recorder: Recorder,
    pub phases: Vec<PhaseTally>,
    pub timeline: TimelineReport,
    pub intervals: Option<TimelineReport>,
    pub rss_samples: Vec<RssSample>,
    /// Open loop: how late requests left.
    pub send_lag: LatencyHistogram,
    pub workload: WorkloadDetails,
    /// Open loop: slots in the plan.
    pub scheduled: u64,
    pub sent: u64,
    pub client_dropped: u64,
    pub unsent: u64,
}

/// The part of a `200` from `POST /v1/events` that is counted.
#[derive(Debug, Deserialize)]
struct EventsAnswer {
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    duplicates: u64,
    #[serde(default)]
    rejected: Vec<serde::de::IgnoredAny>,
}

/// The error body every non-2xx answer of the server carries: `{"error": {"code", "message"}}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ErrorCode,
}

#[derive(Debug, Deserialize)]
struct ErrorCode {
    code: String,
}

/// Code of an answer that is about the data or the model, not the load.
const MODEL_NOT_READY: &str = "model_not_ready";

/// One finished request, ready to be accounted.
struct Done {
    phase: usize,
    kind: RequestKind,
    after_grace: bool,
    /// Open loop: how late it left.
    lag: Option<Duration>,
    /// Completion, after the start of the run.
    at: Duration,
    latency: Duration,
    outcome: DoneOutcome,
}

enum DoneOutcome {
    Response {
        status: u16,
        retry_after: bool,
        /// Events answers: the parsed body, `Err` when it was not the documented JSON.
        events: Option<Result<EventsAnswer, ()>>,
        /// Non-2xx answers: `error.code` of the body, when it is the documented JSON.
        error_code: Option<String>,
    },
    Failed {
        kind: &'static str,
    },
}

/// Where every answer is accounted.
#[derive(Default)]
struct Collector {
    recorder: Recorder,
    phases: Vec<PhaseTally>,
    timeline: Timeline,
    intervals: Option<Timeline>,
    send_lag: LatencyHistogram,
    workload: WorkloadDetails,
    event_batch: u64,
}

impl Collector {
    fn new(phases: usize, interval: Option<Duration>, workload: &Workload) -> Self {
        Self {
            recorder: Recorder::new(),
            phases: (0..phases.max(1)).map(|_| PhaseTally::default()).collect(),
            timeline: Timeline::new(Duration::from_secs(1)),
            intervals: interval.map(Timeline::new),
            send_lag: LatencyHistogram::new(),
            workload: WorkloadDetails {
                users: workload.users() as u64,
                items: workload.items() as u64,
                ..WorkloadDetails::default()
            },
            event_batch: workload.event_batch() as u64,
        }
    }

    fn record(&mut self, done: Done) {
        let route = done.kind.route();
        let Some(tally) = self.phases.get_mut(done.phase) else {
            debug_assert!(false, "phase {} out of range", done.phase);
            return;
        };
        tally.sent += 1;
        if done.kind == RequestKind::Events {
            self.workload.events_sent += self.event_batch;
        }
        if let Some(lag) = done.lag {
            self.send_lag.record(lag);
        }
        let mut excused = false;
        let ok = match done.outcome {
            DoneOutcome::Failed { kind } => {
                self.recorder.failure(route, kind, done.latency);
                *tally.other.entry(kind.to_owned()).or_default() += 1;
                false
            }
            DoneOutcome::Response {
                status,
                retry_after,
                events,
                error_code,
            } => {
                self.recorder.response(route, status, done.latency);
                excused = status == 404
                    || (status == 503 && error_code.as_deref() == Some(MODEL_NOT_READY));
                if is_success(status) {
                    tally.accepted += 1;
                    tally.accepted_latency.record(done.latency);
                } else if status == 503 {
                    tally.shed += 1;
                    tally.shed_with_retry_after += u64::from(retry_after);
                    *tally
                        .shed_by_code
                        .entry(error_code.unwrap_or_else(|| "unknown".to_owned()))
                        .or_default() += 1;
                } else {
                    *tally.other.entry(status.to_string()).or_default() += 1;
                }
                match events {
                    Some(Ok(answer)) => {
                        self.workload.events_accepted += answer.accepted;
                        self.workload.events_duplicates += answer.duplicates;
                        self.workload.events_rejected += answer.rejected.len() as u64;
                    }
                    Some(Err(())) => self.workload.bad_responses += 1,
                    None => {}
                }
                is_success(status)
            }
        };
        if done.after_grace {
            tally.grace_requests += 1;
            if excused {
                tally.grace_excused += 1;
            } else {
                tally.grace_non_2xx += u64::from(!ok);
            }
        }
        self.timeline.record(done.at, ok, done.latency);
        if let Some(intervals) = &mut self.intervals {
            intervals.record(done.at, ok, done.latency);
        }
    }

    fn dropped(&mut self, phase: usize, after_grace: bool) {
        if let Some(tally) = self.phases.get_mut(phase) {
            tally.client_dropped += 1;
            if after_grace {
                tally.grace_requests += 1;
                tally.grace_non_2xx += 1;
            }
        }
    }
}

type SharedCollector = Arc<Mutex<Collector>>;

fn lock(collector: &SharedCollector) -> std::sync::MutexGuard<'_, Collector> {
    // Accounting never panics half-way in a way that matters; keep the numbers of a poisoned lock.
    collector.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the request tasks share.
struct Context {
    workload: Arc<Workload>,
    collector: SharedCollector,
    t0: Instant,
}

/// Sends request `k` and accounts it. `scheduled` is its slot (open loop) or `None` (closed
/// loop: latency from the actual send).
async fn send_and_record(
    client: &Client,
    ctx: &Context,
    k: u64,
    phase: usize,
    scheduled: Option<Instant>,
    after_grace: bool,
) {
    let (kind, request) = match ctx.workload.request(k) {
        Ok(built) => built,
        Err(_) => {
            // Every request shape was built once before the clock started; cannot happen.
            let kind = ctx.workload.kind(k);
            let at = ctx.t0.elapsed();
            lock(&ctx.collector).record(Done {
                phase,
                kind,
                after_grace,
                lag: None,
                at,
                latency: Duration::ZERO,
                outcome: DoneOutcome::Failed {
                    kind: "invalid_request",
                },
            });
            return;
        }
    };
    let attempt = client::send(client, request).await;
    let origin = scheduled.map_or(attempt.sent, |s| latency_origin(s, attempt.sent));
    let outcome = match attempt.outcome {
        Outcome::Failed { kind } => DoneOutcome::Failed { kind },
        Outcome::Response {
            status,
            retry_after,
            body,
        } => DoneOutcome::Response {
            status,
            retry_after: retry_after.is_some(),
            events: (kind == RequestKind::Events && is_success(status))
                .then(|| serde_json::from_slice::<EventsAnswer>(&body).map_err(|_| ())),
            error_code: if is_success(status) {
                None
            } else {
                serde_json::from_slice::<ErrorBody>(&body)
                    .ok()
                    .map(|b| b.error.code)
            },
        },
    };
    let done = Done {
        phase,
        kind,
        after_grace,
        lag: scheduled.map(|s| attempt.sent.saturating_duration_since(s)),
        at: attempt.done.saturating_duration_since(ctx.t0),
        latency: attempt.done.saturating_duration_since(origin),
        outcome,
    };
    lock(&ctx.collector).record(done);
}

/// Runs `workload` as `config` says, until the plan or duration is over or `stop` is raised.
pub async fn run(
    config: &EngineConfig,
    workload: Arc<Workload>,
    stop: Stop,
) -> Result<EngineOutput, LoadError> {
    client::wait_ready(&config.target, &config.client).await?;
    match &config.load {
        Load::Open {
            plan,
            max_inflight,
            warm_connections,
        } => {
            run_open(
                config,
                workload,
                plan,
                *max_inflight,
                *warm_connections,
                stop,
            )
            .await
        }
        Load::Closed {
            connections,
            duration,
        } => run_closed(config, workload, *connections, *duration, stop).await,
    }
}

/// The accounting shared by both modes once the load is over.
struct Finish {
    started_at: SystemTime,
    elapsed: Duration,
    interrupted: bool,
    collector: SharedCollector,
    sampler: Option<RssSampler>,
}

async fn finish(run: Finish) -> Result<EngineOutput, LoadError> {
    let rss_samples = match run.sampler {
        Some(sampler) => sampler.finish().await?,
        None => Vec::new(),
    };
    // Every request task has accounted its answer by now (they do so before releasing their
    // permit or before their worker ends); some may still hold a reference for a moment.
    let collector = std::mem::take(&mut *lock(&run.collector));
    let sent = collector.phases.iter().map(|p| p.sent).sum();
    let client_dropped = collector.phases.iter().map(|p| p.client_dropped).sum();
    Ok(EngineOutput {
        started_at: run.started_at,
        elapsed: run.elapsed,
        interrupted: run.interrupted,
        recorder: collector.recorder,
        timeline: collector.timeline.finish(run.elapsed),
        intervals: collector.intervals.map(|t| t.finish(run.elapsed)),
        phases: collector.phases,
        rss_samples,
        send_lag: collector.send_lag,
        workload: collector.workload,
        scheduled: 0,
        sent,
        client_dropped,
        unsent: 0,
    })
}

/// Warns when the process may run out of file descriptors before `max_inflight` connections.
fn check_open_files(max_inflight: usize) {
    if let Some(limit) = client::open_files_limit() {
        let needed = max_inflight as u64 + 64;
        if limit < needed {
            eprintln!(
                "warning: the open-files limit is {limit}, below the {needed} descriptors that \
                 --max-inflight {max_inflight} may need; raise it (ulimit -n) or lower \
                 --max-inflight, or connections will fail under overload"
            );
        }
    }
}

async fn run_open(
    config: &EngineConfig,
    workload: Arc<Workload>,
    plan: &Plan,
    max_inflight: usize,
    warm_connections: usize,
    mut stop: Stop,
) -> Result<EngineOutput, LoadError> {
    check_open_files(max_inflight);
    let client = client::build_pooled_client(&config.client, max_inflight)?;
    // Concurrent probes on one pool open that many connections.
    futures_util::future::join_all(
        (0..warm_connections.min(max_inflight)).map(|_| client::warm_up(&client, &config.target)),
    )
    .await;

    let started_at = SystemTime::now();
    let t0 = Instant::now();
    let collector = Arc::new(Mutex::new(Collector::new(
        plan.len(),
        config.interval,
        &workload,
    )));
    let sampler = config
        .sample_every
        .map(|every| RssSampler::start(&config.target, &config.client, t0, every))
        .transpose()?;
    let ctx = Arc::new(Context {
        workload,
        collector: Arc::clone(&collector),
        t0,
    });
    // `Semaphore::MAX_PERMITS` is far above any --max-inflight the CLI accepts.
    let permits = u32::try_from(max_inflight).unwrap_or(u32::MAX);
    let inflight = Arc::new(Semaphore::new(permits as usize));

    let mut k = 0;
    while let Some((phase, offset)) = plan.slot(k) {
        if stop.is_set() {
            break;
        }
        let scheduled = t0 + offset;
        let wake = wake_at(scheduled);
        if wake > Instant::now() {
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {}
                () = stop.wait() => break,
            }
        }
        let after_grace = offset >= plan.start(phase).saturating_add(config.grace);
        match Arc::clone(&inflight).try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(request_task(
                    client.clone(),
                    Arc::clone(&ctx),
                    k,
                    phase,
                    scheduled,
                    after_grace,
                    permit,
                ));
            }
            Err(_) => lock(&collector).dropped(phase, after_grace),
        }
        k += 1;
    }
    let dispatched = k;
    let stopped_after = t0.elapsed();
    // Every outstanding request holds a permit until it is accounted; they end by the timeout.
    let drained = inflight.acquire_many(permits).await;
    drop(drained);
    let elapsed = t0.elapsed();

    let mut output = finish(Finish {
        started_at,
        elapsed,
        interrupted: stop.is_set(),
        collector,
        sampler,
    })
    .await?;
    output.scheduled = plan.total();
    // Slots due before the dispatcher stopped that it never reached (Ctrl-C).
    let mut first = 0;
    for (phase, tally) in output.phases.iter_mut().enumerate() {
        let total = plan.phase_total(phase);
        let reached = dispatched.saturating_sub(first).min(total);
        tally.unsent = plan
            .phase_due_by(phase, stopped_after)
            .saturating_sub(reached);
        first += total;
    }
    output.unsent = output.phases.iter().map(|p| p.unsent).sum();
    Ok(output)
}

async fn request_task(
    client: Client,
    ctx: Arc<Context>,
    k: u64,
    phase: usize,
    scheduled: Instant,
    after_grace: bool,
    permit: OwnedSemaphorePermit,
) {
    send_and_record(&client, &ctx, k, phase, Some(scheduled), after_grace).await;
    drop(permit);
}

async fn run_closed(
    config: &EngineConfig,
    workload: Arc<Workload>,
    connections: usize,
    duration: Duration,
    stop: Stop,
) -> Result<EngineOutput, LoadError> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let client = client::build_client(&config.client)?;
        client::warm_up(&client, &config.target).await;
        clients.push(client);
    }
    let started_at = SystemTime::now();
    let t0 = Instant::now();
    let collector = Arc::new(Mutex::new(Collector::new(1, config.interval, &workload)));
    let sampler = config
        .sample_every
        .map(|every| RssSampler::start(&config.target, &config.client, t0, every))
        .transpose()?;
    let ctx = Arc::new(Context {
        workload,
        collector: Arc::clone(&collector),
        t0,
    });
    let next = Arc::new(AtomicU64::new(0));
    let grace = config.grace;
    let handles = clients
        .into_iter()
        .map(|client| {
            let (ctx, next, stop) = (Arc::clone(&ctx), Arc::clone(&next), stop.clone());
            tokio::spawn(async move {
                let deadline = ctx.t0 + duration;
                while !stop.is_set() && Instant::now() < deadline {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let after_grace = ctx.t0.elapsed() >= grace;
                    send_and_record(&client, &ctx, k, 0, None, after_grace).await;
                }
            })
        })
        .collect();
    join_workers(handles).await?;
    let elapsed = t0.elapsed();
    finish(Finish {
        started_at,
        elapsed,
        interrupted: stop.is_set(),
        collector,
        sampler,
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overload_plan() -> Plan {
        Plan::new(vec![
            PhaseSpec {
                name: "warmup",
                rate: 100.0,
                duration: Duration::from_secs(10),
            },
            PhaseSpec {
                name: "overload",
                rate: 200.0,
                duration: Duration::from_secs(5),
            },
            PhaseSpec {
                name: "recovery",
                rate: 100.0,
                duration: Duration::from_secs(10),
            },
        ])
    }

    #[test]
    fn phases_follow_each_other_at_their_rates() {
        let plan = overload_plan();
        assert_eq!(plan.len(), 3);
        assert_eq!(
            (
                plan.phase_total(0),
                plan.phase_total(1),
                plan.phase_total(2)
            ),
            (1000, 1000, 1000)
        );
        assert_eq!(plan.total(), 3000);
        assert_eq!(plan.duration(), Duration::from_secs(25));
        assert_eq!(plan.slot(0), Some((0, Duration::ZERO)));
        assert_eq!(plan.slot(999), Some((0, Duration::from_millis(9_990))));
        // The overload phase starts at 10 s, every 5 ms.
        assert_eq!(plan.slot(1000), Some((1, Duration::from_secs(10))));
        assert_eq!(plan.slot(1001), Some((1, Duration::from_millis(10_005))));
        assert_eq!(plan.slot(2000), Some((2, Duration::from_secs(15))));
        assert_eq!(plan.slot(2999), Some((2, Duration::from_millis(24_990))));
        assert_eq!(plan.slot(3000), None);
        // Slots are in time order across the boundaries.
        let offsets: Vec<Duration> = (0..3000).map(|k| plan.slot(k).unwrap().1).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn due_counts_and_phase_lookup() {
        let plan = overload_plan();
        assert_eq!(plan.phase_due_by(0, Duration::from_secs(5)), 500);
        assert_eq!(plan.phase_due_by(1, Duration::from_secs(5)), 0);
        assert_eq!(plan.phase_due_by(1, Duration::from_millis(12_500)), 500);
        assert_eq!(plan.phase_due_by(0, Duration::from_secs(99)), 1000);
        assert_eq!(plan.phase_at(Duration::ZERO), 0);
        assert_eq!(plan.phase_at(Duration::from_millis(9_999)), 0);
        assert_eq!(plan.phase_at(Duration::from_secs(10)), 1);
        assert_eq!(plan.phase_at(Duration::from_secs(15)), 2);
        assert_eq!(plan.phase_at(Duration::from_secs(60)), 2);
        assert_eq!(plan.start(2), Duration::from_secs(15));
        assert_eq!(plan.spec(1).unwrap().name, "overload");
    }

    #[test]
    fn collector_accounts_by_phase_status_and_grace() {
        let target = Target::parse("http://h:1").unwrap();
        let workload = Workload::new(
            target,
            vec!["1".into()],
            vec!["9".into()],
            crate::workload::MixOptions {
                ids: crate::workload::IdSource::Generated { users: 1, items: 1 },
                mix: crate::workload::Mix::default(),
                n: 10,
                event_batch: 4,
                id_prefix: "t".into(),
                seed: 1,
            },
        )
        .unwrap();
        let mut c = Collector::new(2, None, &workload);
        let done = |phase, status: Option<u16>, retry_after, after_grace, code: &str| Done {
            phase,
            kind: RequestKind::Events,
            after_grace,
            lag: Some(Duration::from_micros(5)),
            at: Duration::from_millis(100),
            latency: Duration::from_millis(2),
            outcome: match status {
                Some(status) => DoneOutcome::Response {
                    status,
                    retry_after,
                    events: is_success(status).then_some(Ok(EventsAnswer {
                        accepted: 3,
                        duplicates: 1,
                        rejected: Vec::new(),
                    })),
                    error_code: (!code.is_empty()).then(|| code.to_owned()),
                },
                None => DoneOutcome::Failed { kind: "timeout" },
            },
        };
        c.record(done(0, Some(200), false, false, ""));
        c.record(done(1, Some(503), true, false, "overloaded"));
        c.record(done(1, Some(503), false, true, "overloaded"));
        c.record(done(1, Some(200), false, true, ""));
        c.record(done(1, Some(404), false, true, "unknown_item"));
        c.record(done(1, Some(503), true, true, MODEL_NOT_READY));
        c.record(done(1, None, false, true, ""));
        c.dropped(1, true);
        let p = &c.phases[1];
        assert_eq!(
            (p.sent, p.accepted, p.shed, p.shed_with_retry_after),
            (6, 1, 3, 2)
        );
        assert_eq!(p.shed_by_code["overloaded"], 2);
        assert_eq!(p.shed_by_code[MODEL_NOT_READY], 1);
        assert_eq!(p.other["404"] + p.other["timeout"], 2);
        assert_eq!(p.client_dropped, 1);
        // After the grace: 503 overloaded, timeout and the drop count; 404 and
        // model_not_ready are excused.
        assert_eq!(
            (p.grace_requests, p.grace_non_2xx, p.grace_excused),
            (6, 3, 2)
        );
        assert_eq!(c.phases[0].accepted_latency.len(), 1);
        assert_eq!(c.workload.events_sent, 28);
        assert_eq!(c.workload.events_accepted, 6);
        assert_eq!(c.workload.events_duplicates, 2);
        assert_eq!(c.recorder.requests(), 7);
        assert_eq!(c.send_lag.len(), 7);
    }
}
