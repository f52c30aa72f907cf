//! Everything that runs on a schedule, under one actor type.
//!
//! A [`Job`] says what a run does and what it is called; a [`JobRunner`] owns *when* it runs:
//! on its [`Schedule`], read from an injectable [`Clock`] (tests move a `ManualClock` and send
//! [`CheckSchedule`] instead of sleeping); when the job asks for a run itself
//! ([`Job::wants_run`], for jobs driven by data rather than time); and on request ([`RunJob`]).
//! At most one run of a job is in flight. A request while one runs is refused with
//! [`JobError::AlreadyRunning`], or, for jobs whose requests must not fail
//! ([`WhenBusy::RunAfter`]), served by one more run as soon as the current one ends.
//!
//! Each runner keeps a [`JobStatus`], counted the way quickwit's actor supervisors count: runs,
//! failures, consecutive failures, last success and last failure. It publishes it as the
//! `momentum_job_*{job}` metrics, and logs each run with a `job` field. The job's name is the
//! same in all three places and in the status JSON (`job`).
//!
//! | job | module | runs | on request |
//! |---|---|---|---|
//! | `training` | [`training`] | every `trainer.interval_secs` (weekly) | `POST /v1/models/train` |
//! | `churn_scoring` | [`churn`], [`webhook`] | every `churn.interval_secs` (daily) | `POST /v1/churn/run` |
//! | `snapshot` | [`snapshot`] | every `snapshot.interval_secs` | `POST /v1/admin/snapshot` |
//! | `item_model` | [`item_model`] | after `ease.rebuild_events` events or `ease.rebuild_secs` | `POST /v1/admin/item-model` |
//!
//! A job's future runs on its runner's arbiter; CPU-heavy work inside it moves to a thread of
//! its own or the blocking pool.

pub mod churn;
pub mod item_model;
pub mod snapshot;
pub mod training;
pub mod webhook;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use momentum_models::clock::Clock;

use crate::error::Error;
use crate::metrics::JobMetrics;
use crate::AppState;

/// How a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The schedule said so (the interval elapsed, or the job asked).
    Schedule,
    /// An operator asked (`POST /v1/models/train`, `POST /v1/churn/run`, ...).
    Request,
}

/// Any error a job's run may fail with, kept whole for the logs.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a run did not start or failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A run of the job is in flight.
    #[error("a run is in progress")]
    AlreadyRunning,
    /// The data or the configuration does not allow a run now (too few rows, no live model,
    /// no model key): the caller is told why.
    #[error("{reason}")]
    Unavailable { reason: String },
    /// Something the run depends on failed. The causes are logged, never sent to clients.
    #[error("{context}")]
    Failed {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The job's runner, or the state it works on, is gone (shutting down).
    #[error("the {job} job has stopped")]
    Stopped { job: &'static str },
}

impl JobError {
    pub fn unavailable(reason: impl Into<String>) -> Self {
        JobError::Unavailable {
            reason: reason.into(),
        }
    }

    /// A failure caused by `source`, with what the run was doing.
    pub fn failed(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        JobError::Failed {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// A failure with no underlying error.
    pub fn internal(context: impl Into<String>) -> Self {
        JobError::Failed {
            context: context.into(),
            source: None,
        }
    }

    /// The message followed by its causes (`context: cause: cause`), for logs and the status.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(cause) = next {
            out.push_str(": ");
            out.push_str(&cause.to_string());
            next = cause.source();
        }
        out
    }
}

impl From<JobError> for Error {
    fn from(e: JobError) -> Error {
        match e {
            JobError::AlreadyRunning => Error::Conflict {
                message: "a run is already in progress".into(),
            },
            JobError::Unavailable { reason } => Error::Conflict { message: reason },
            JobError::Stopped { .. } => Error::ShuttingDown,
            JobError::Failed {
                context,
                source: None,
            } => Error::Internal { message: context },
            // A server error keeps its own status (a snapshot refused by the store, say).
            JobError::Failed {
                context,
                source: Some(source),
            } => match source.downcast::<Error>() {
                Ok(error) => *error,
                Err(source) => Error::Failed { context, source },
            },
        }
    }
}

/// A run of a job: a boxed future on the runner's arbiter.
pub type JobFuture<T> = Pin<Box<dyn Future<Output = Result<T, JobError>>>>;

/// What a request does while a run is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenBusy {
    /// It is refused with [`JobError::AlreadyRunning`] (training, churn scoring: a run takes
    /// long and a second one right after would only repeat it).
    Refuse,
    /// It waits for one more run, started as soon as the current one ends; the requests that
    /// arrive meanwhile (at most [`MAX_WAITING`]) share that run (a snapshot or a model build
    /// that must reflect the state as of the request).
    RunAfter,
}

/// Requests that may wait for the next run of a [`WhenBusy::RunAfter`] job.
pub const MAX_WAITING: usize = 16;

/// Work that runs on a schedule and on request.
pub trait Job: 'static {
    /// What a successful run returns to the requester.
    type Report: Clone + Send + 'static;
    /// The job's name in the status JSON, the `job` metric label and the logs (snake_case).
    const NAME: &'static str;
    const WHEN_BUSY: WhenBusy = WhenBusy::Refuse;

    /// One run, as of `now_ms`.
    fn run(&self, trigger: Trigger, now_ms: i64) -> JobFuture<Self::Report>;

    /// Asked at every check while no run is in flight: whether the job wants a run now besides
    /// its schedule (jobs driven by data rather than time). It may also refresh gauges.
    fn wants_run(&self, _now_ms: i64) -> bool {
        false
    }

    /// Whether scheduled runs happen on this server (in a cluster, a job the leader runs for
    /// every node lets them pass elsewhere: [`Schedule::pass`]). Requests are the routes' call.
    fn scheduled_here(&self) -> bool {
        true
    }
}

/// When a job is due, whether a run is in flight, and the counts of [`JobStatus`].
#[derive(Debug, Clone)]
pub struct Schedule {
    interval_ms: i64,
    /// After a failed run, retry after `min(interval, retry_ms)`.
    retry_ms: i64,
    /// `None`: never due by time (interval 0).
    next_due_ms: Option<i64>,
    status: JobStatus,
}

/// What the status routes show about a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct JobStatus {
    /// The job's name, as in the metric label and the logs.
    pub job: &'static str,
    pub running: bool,
    /// Completed runs (successful or not) since the start.
    pub runs: u64,
    /// Failed runs since the start.
    pub failures: u64,
    /// Failed runs since the last successful one.
    pub consecutive_failures: u64,
    pub interval_seconds: u64,
    pub next_due_ms: Option<i64>,
    pub last_trigger: Option<Trigger>,
    pub last_started_ms: Option<i64>,
    pub last_finished_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    pub last_failure_ms: Option<i64>,
    /// Why the last run failed; `None` after a successful one.
    pub last_error: Option<String>,
}

impl Schedule {
    /// A schedule running every `interval` (zero: only on request or when the job asks), first
    /// at `first_due_ms`.
    pub fn new(interval: Duration, first_due_ms: Option<i64>) -> Self {
        let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        let next_due_ms = if interval_ms > 0 { first_due_ms } else { None };
        Schedule {
            interval_ms,
            retry_ms: 3_600_000,
            next_due_ms,
            status: JobStatus {
                interval_seconds: interval.as_secs(),
                next_due_ms,
                ..JobStatus::default()
            },
        }
    }

    pub fn is_running(&self) -> bool {
        self.status.running
    }

    /// Whether a scheduled run should start now.
    pub fn is_due(&self, now_ms: i64) -> bool {
        !self.status.running && self.next_due_ms.is_some_and(|due| now_ms >= due)
    }

    /// Lets a due run pass without running it (it ran elsewhere): the next one is due an
    /// interval from now.
    pub fn pass(&mut self, now_ms: i64) {
        if self.interval_ms > 0 {
            self.next_due_ms = Some(now_ms.saturating_add(self.interval_ms));
            self.status.next_due_ms = self.next_due_ms;
        }
    }

    /// Marks a run as started; false if one is running already.
    pub fn begin(&mut self, trigger: Trigger, now_ms: i64) -> bool {
        if self.status.running {
            return false;
        }
        self.status.running = true;
        self.status.last_trigger = Some(trigger);
        self.status.last_started_ms = Some(now_ms);
        true
    }

    /// Marks the run as finished and plans the next one: `interval` after this run started,
    /// or sooner after a failure.
    pub fn finish(&mut self, now_ms: i64, error: Option<String>) {
        let started = self.status.last_started_ms.unwrap_or(now_ms);
        if self.interval_ms > 0 {
            let next = match error {
                None => started.saturating_add(self.interval_ms),
                Some(_) => now_ms.saturating_add(self.interval_ms.min(self.retry_ms)),
            };
            self.next_due_ms = Some(next);
        }
        let s = &mut self.status;
        s.running = false;
        s.runs += 1;
        s.last_finished_ms = Some(now_ms);
        match &error {
            None => {
                s.consecutive_failures = 0;
                s.last_success_ms = Some(now_ms);
            }
            Some(_) => {
                s.failures += 1;
                s.consecutive_failures += 1;
                s.last_failure_ms = Some(now_ms);
            }
        }
        s.last_error = error;
        s.next_due_ms = self.next_due_ms;
    }

    pub fn status(&self) -> JobStatus {
        self.status.clone()
    }
}

/// Start a run now (or, for a busy [`WhenBusy::RunAfter`] job, right after the current one).
pub struct RunJob<R> {
    pub trigger: Trigger,
    /// Answered when the run starts, or at once with why it does not.
    pub started: oneshot::Sender<Result<(), JobError>>,
    /// Answered when the run ends (optional).
    pub done: Option<oneshot::Sender<Result<R, JobError>>>,
}

impl<R: 'static> Message for RunJob<R> {
    type Result = ();
}

/// Start a run if one is due (the runner sends itself this every `check_every`; tests send it
/// after moving a `ManualClock`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CheckSchedule;

/// The job's schedule and its last runs.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct GetJobStatus {
    pub reply: oneshot::Sender<JobStatus>,
}

/// A requester waiting for a run.
struct Waiter<R> {
    started: oneshot::Sender<Result<(), JobError>>,
    done: Option<oneshot::Sender<Result<R, JobError>>>,
}

/// Runs one [`Job`] on its schedule and on request; see the module docs.
pub struct JobRunner<J: Job> {
    job: Box<J>,
    clock: Arc<dyn Clock>,
    schedule: Schedule,
    /// How often the runner looks at the clock; `None`: only on [`CheckSchedule`].
    check_every: Option<Duration>,
    metrics: Option<JobMetrics>,
    /// Requests for the run after the current one ([`WhenBusy::RunAfter`]).
    waiting: Vec<Waiter<J::Report>>,
}

/// Mailbox of a runner: requests, status queries and its own checks.
const MAILBOX: usize = 16;

impl<J: Job> JobRunner<J> {
    pub fn new(
        job: J,
        clock: Arc<dyn Clock>,
        schedule: Schedule,
        check_every: Option<Duration>,
        metrics: Option<JobMetrics>,
    ) -> Self {
        let mut schedule = schedule;
        schedule.status.job = J::NAME;
        JobRunner {
            job: Box::new(job),
            clock,
            schedule,
            check_every,
            metrics,
            waiting: Vec::new(),
        }
    }

    /// Starts the runner on the current arbiter.
    pub fn spawn(self) -> JobHandle<J> {
        JobHandle { addr: self.start() }
    }

    fn check(&mut self, ctx: &mut Context<Self>) {
        if self.schedule.is_running() {
            return;
        }
        let now = self.clock.now_ms();
        if self.schedule.is_due(now) && !self.job.scheduled_here() {
            self.schedule.pass(now);
            return;
        }
        if self.job.wants_run(now) || self.schedule.is_due(now) {
            self.start_run(Trigger::Schedule, Vec::new(), ctx);
        }
    }

    fn start_run(
        &mut self,
        trigger: Trigger,
        waiters: Vec<Waiter<J::Report>>,
        ctx: &mut Context<Self>,
    ) {
        let now = self.clock.now_ms();
        if !self.schedule.begin(trigger, now) {
            for w in waiters {
                let _ = w.started.send(Err(JobError::AlreadyRunning));
            }
            return;
        }
        tracing::info!(job = J::NAME, ?trigger, "job run started");
        if let Some(m) = &self.metrics {
            m.running.with_label_values(&[J::NAME]).set(1);
        }
        let waiters: Vec<_> = waiters
            .into_iter()
            .filter_map(|w| w.started.send(Ok(())).is_ok().then_some(w.done))
            .flatten()
            .collect();
        let started = Instant::now();
        let fut = self.job.run(trigger, now);
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            act.finish(result, started.elapsed(), waiters, ctx);
        }));
    }

    fn finish(
        &mut self,
        result: Result<J::Report, JobError>,
        took: Duration,
        waiters: Vec<oneshot::Sender<Result<J::Report, JobError>>>,
        ctx: &mut Context<Self>,
    ) {
        let now = self.clock.now_ms();
        let seconds = took.as_secs_f64();
        match &result {
            Ok(_) => {
                tracing::info!(
                    job = J::NAME,
                    duration_seconds = seconds,
                    "job run finished"
                );
                self.schedule.finish(now, None);
            }
            Err(error) => {
                let chain = error.chain();
                tracing::warn!(job = J::NAME, error = %chain, "job run failed");
                self.schedule.finish(now, Some(chain));
            }
        }
        if let Some(m) = &self.metrics {
            m.record_run(J::NAME, &self.schedule.status, seconds);
        }
        deliver(result, waiters);
        if !self.waiting.is_empty() {
            let next = std::mem::take(&mut self.waiting);
            self.start_run(Trigger::Request, next, ctx);
        }
    }
}

/// Sends a run's result to its requesters: the first gets it whole, the others a copy (an
/// error as its message and causes).
fn deliver<R: Clone>(
    result: Result<R, JobError>,
    waiters: Vec<oneshot::Sender<Result<R, JobError>>>,
) {
    let mut waiters = waiters.into_iter();
    let Some(first) = waiters.next() else { return };
    for other in waiters {
        let copy = match &result {
            Ok(report) => Ok(report.clone()),
            Err(JobError::AlreadyRunning) => Err(JobError::AlreadyRunning),
            Err(JobError::Unavailable { reason }) => Err(JobError::unavailable(reason.clone())),
            Err(JobError::Stopped { job }) => Err(JobError::Stopped { job }),
            Err(error @ JobError::Failed { .. }) => Err(JobError::internal(error.chain())),
        };
        let _ = other.send(copy);
    }
    let _ = first.send(result);
}

impl<J: Job> Actor for JobRunner<J> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
        if let Some(m) = &self.metrics {
            m.register_job(J::NAME);
        }
        if let Some(every) = self.check_every {
            // A job that is due at once (a first build) need not wait a period.
            ctx.notify(CheckSchedule);
            ctx.run_interval(every, |act, ctx| act.check(ctx));
        }
    }
}

impl<J: Job> Handler<RunJob<J::Report>> for JobRunner<J> {
    type Result = ();

    fn handle(&mut self, msg: RunJob<J::Report>, ctx: &mut Self::Context) {
        let waiter = Waiter {
            started: msg.started,
            done: msg.done,
        };
        if !self.schedule.is_running() {
            self.start_run(msg.trigger, vec![waiter], ctx);
        } else if J::WHEN_BUSY == WhenBusy::RunAfter && self.waiting.len() < MAX_WAITING {
            self.waiting.push(waiter);
        } else {
            let _ = waiter.started.send(Err(JobError::AlreadyRunning));
        }
    }
}

impl<J: Job> Handler<CheckSchedule> for JobRunner<J> {
    type Result = ();

    fn handle(&mut self, _: CheckSchedule, ctx: &mut Self::Context) {
        self.check(ctx);
    }
}

impl<J: Job> Handler<GetJobStatus> for JobRunner<J> {
    type Result = ();

    fn handle(&mut self, msg: GetJobStatus, _: &mut Self::Context) {
        let _ = msg.reply.send(self.schedule.status());
    }
}

/// The address of a started [`JobRunner`], as the routes use it.
pub struct JobHandle<J: Job> {
    addr: Addr<JobRunner<J>>,
}

impl<J: Job> JobHandle<J> {
    pub fn addr(&self) -> &Addr<JobRunner<J>> {
        &self.addr
    }

    /// Requests a run; with `wait`, returns its report. A full mailbox is `503` with
    /// `retry_after`.
    pub async fn run(&self, wait: bool, retry_after: u64) -> Result<Option<J::Report>, Error> {
        let (started, started_rx) = oneshot::channel();
        let (done, done_rx) = oneshot::channel();
        self.addr
            .try_send(RunJob {
                trigger: Trigger::Request,
                started,
                done: wait.then_some(done),
            })
            .map_err(|_| Error::Overloaded {
                actor: J::NAME,
                retry_after,
            })?;
        started_rx.await.map_err(|_| Error::ShuttingDown)??;
        if !wait {
            return Ok(None);
        }
        let report = done_rx.await.map_err(|_| Error::ShuttingDown)??;
        Ok(Some(report))
    }

    /// The job's status; `None` when the runner is gone or its mailbox is full.
    pub async fn status(&self) -> Option<JobStatus> {
        let (reply, rx) = oneshot::channel();
        self.addr.try_send(GetJobStatus { reply }).ok()?;
        rx.await.ok()
    }
}

/// The server's jobs that are not the predictive models' (those live in
/// [`crate::analytics::Analytics`]), and the metrics every job publishes.
pub struct Jobs {
    /// The server's clock (the one analytics reads too).
    pub clock: Arc<dyn Clock>,
    pub metrics: JobMetrics,
    pub item_model_metrics: item_model::ItemModelMetrics,
    /// Started once the state is restored.
    pub snapshot: OnceLock<JobHandle<snapshot::SnapshotJob>>,
    pub item_model: OnceLock<JobHandle<item_model::ItemModelJob>>,
}

impl Jobs {
    pub fn new(registry: &prometheus::Registry, clock: Arc<dyn Clock>) -> prometheus::Result<Jobs> {
        Ok(Jobs {
            clock,
            metrics: JobMetrics::new(registry)?,
            item_model_metrics: item_model::ItemModelMetrics::new(registry)?,
            snapshot: OnceLock::new(),
            item_model: OnceLock::new(),
        })
    }
}

/// Starts the `snapshot` and `item_model` jobs of a server whose state is restored (the
/// analytics jobs start with the server: [`crate::analytics::start`]). Later calls do nothing.
pub fn start(state: &Arc<AppState>) {
    // In cluster mode the events topic is the log and partitions are restored by replaying
    // it: a snapshot of this node's rows would restore users it may no longer own.
    if state.cluster.is_none() && state.jobs.snapshot.get().is_none() {
        let _ = state.jobs.snapshot.set(snapshot::start(state));
    }
    if state.jobs.item_model.get().is_none() {
        let _ = state.jobs.item_model.set(item_model::start(state));
    }
}

#[cfg(test)]
mod tests;
