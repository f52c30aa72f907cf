//! The `ChurnScheduler` actor: scores every recently active user with the live churn model once
//! a day (interval configurable, clock injectable), assigns a risk tier and appends the tier's
//! interventions to the outbox. Like the [`Trainer`](crate::trainer::Trainer), the actor owns
//! the schedule and the one-run-at-a-time rule; the run itself is a [`ScoringJob`] supplied by
//! the server (it reads the shards' activity logs in small batches, scores off the async
//! workers and writes to the store).
//!
//! The tiers and what each triggers are defined here, once:
//!
//! | tier | churn probability | interventions (outbox channels) |
//! |---|---|---|
//! | `high` | > 0.7 | `push`, `personalised_email`, `offer` |
//! | `medium` | 0.4 – 0.7 | `engagement_campaign`, `content_recommendations` |
//! | `low` | < 0.4 | `newsletter`, `success_stories` |
//!
//! A run is idempotent per user and day: the outbox keeps one row per `(user, day, channel)`, so
//! scoring a user twice on one day (a retried or manual run) adds nothing.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::trainer::{CheckSchedule, Clock, JobFuture, RunStatus, Schedule, TrainError, Trigger};

/// A user's churn risk tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    High,
    Medium,
    Low,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::High => "high",
            Tier::Medium => "medium",
            Tier::Low => "low",
        }
    }

    /// The interventions of the tier, in the order they are appended.
    pub fn interventions(self) -> &'static [Channel] {
        match self {
            Tier::High => &[Channel::Push, Channel::PersonalisedEmail, Channel::Offer],
            Tier::Medium => &[Channel::EngagementCampaign, Channel::ContentRecommendations],
            Tier::Low => &[Channel::Newsletter, Channel::SuccessStories],
        }
    }
}

/// Tier boundaries: `high` above `high`, `medium` from `medium` up to `high`, `low` below.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TierThresholds {
    pub high: f64,
    pub medium: f64,
}

impl Default for TierThresholds {
    fn default() -> Self {
        TierThresholds {
            high: 0.7,
            medium: 0.4,
        }
    }
}

impl TierThresholds {
    /// The tier of a churn probability.
    pub fn tier(&self, probability: f64) -> Tier {
        if probability > self.high {
            Tier::High
        } else if probability >= self.medium {
            Tier::Medium
        } else {
            Tier::Low
        }
    }
}

/// An outbox channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Push,
    PersonalisedEmail,
    Offer,
    EngagementCampaign,
    ContentRecommendations,
    Newsletter,
    SuccessStories,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Push => "push",
            Channel::PersonalisedEmail => "personalised_email",
            Channel::Offer => "offer",
            Channel::EngagementCampaign => "engagement_campaign",
            Channel::ContentRecommendations => "content_recommendations",
            Channel::Newsletter => "newsletter",
            Channel::SuccessStories => "success_stories",
        }
    }
}

/// Users per tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TierCounts {
    pub high: usize,
    pub medium: usize,
    pub low: usize,
}

impl TierCounts {
    pub fn add(&mut self, tier: Tier) {
        match tier {
            Tier::High => self.high += 1,
            Tier::Medium => self.medium += 1,
            Tier::Low => self.low += 1,
        }
    }
}

/// What a scoring run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoringReport {
    pub trigger: Trigger,
    /// The day scored (`YYYY-MM-DD`, UTC).
    pub day: String,
    pub started_ms: i64,
    pub duration_seconds: f64,
    /// The churn model version that scored.
    pub model_version: u64,
    /// Known users looked at, and those active in the window (scored).
    pub users_examined: usize,
    pub users_scored: usize,
    pub tiers: TierCounts,
    /// Interventions appended (those of the day already in the outbox are not counted).
    pub interventions_added: usize,
    /// Webhook delivery after the run, when one is configured.
    pub delivery: Option<DeliveryCounts>,
}

/// What a webhook delivery pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryCounts {
    pub delivered: usize,
    /// Failed this pass, to be retried by the next one.
    pub retrying: usize,
    /// Out of attempts.
    pub failed: usize,
    /// The pass stopped early after consecutive failures (the endpoint looks down).
    pub stopped_early: bool,
}

/// The work of a scoring run, supplied by the server.
pub trait ScoringJob: 'static {
    /// Scores the active users as of `now_ms` and fills the outbox.
    fn run(&self, trigger: Trigger, now_ms: i64) -> JobFuture<ScoringReport>;
}

/// Start a scoring run now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ScoreUsers {
    pub trigger: Trigger,
    /// Answered at once: `Ok` when the run started.
    pub started: oneshot::Sender<Result<(), TrainError>>,
    /// Answered when the run ends (optional).
    pub done: Option<oneshot::Sender<Result<ScoringReport, TrainError>>>,
}

/// The schedule and the last run.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct GetChurnStatus {
    pub reply: oneshot::Sender<RunStatus>,
}

/// Scores users daily and on request; see the module docs.
pub struct ChurnScheduler {
    job: Arc<dyn ScoringJob>,
    clock: Arc<dyn Clock>,
    schedule: Schedule,
    check_every: Option<Duration>,
}

impl ChurnScheduler {
    pub fn new(
        job: Arc<dyn ScoringJob>,
        clock: Arc<dyn Clock>,
        schedule: Schedule,
        check_every: Option<Duration>,
    ) -> Self {
        ChurnScheduler {
            job,
            clock,
            schedule,
            check_every,
        }
    }

    fn start_run(
        &mut self,
        trigger: Trigger,
        done: Option<oneshot::Sender<Result<ScoringReport, TrainError>>>,
        ctx: &mut Context<Self>,
    ) -> Result<(), TrainError> {
        let now = self.clock.now_ms();
        if !self.schedule.begin(trigger, now) {
            return Err(TrainError::AlreadyRunning);
        }
        tracing::info!(?trigger, "churn scoring run started");
        let fut = self.job.run(trigger, now);
        ctx.spawn(fut.into_actor(self).map(move |result, act, _| {
            let now = act.clock.now_ms();
            match &result {
                Ok(report) => {
                    tracing::info!(
                        users = report.users_scored,
                        interventions = report.interventions_added,
                        duration_seconds = report.duration_seconds,
                        "churn scoring run finished"
                    );
                    act.schedule.finish(now, None);
                }
                Err(error) => {
                    tracing::warn!(%error, "churn scoring run failed");
                    act.schedule.finish(now, Some(error.to_string()));
                }
            }
            if let Some(done) = done {
                let _ = done.send(result.map_err(TrainError::Failed));
            }
        }));
        Ok(())
    }
}

impl Actor for ChurnScheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(16);
        if let Some(every) = self.check_every {
            ctx.run_interval(every, |act, ctx| {
                if act.schedule.is_due(act.clock.now_ms()) {
                    let _ = act.start_run(Trigger::Schedule, None, ctx);
                }
            });
        }
    }
}

impl Handler<ScoreUsers> for ChurnScheduler {
    type Result = ();

    fn handle(&mut self, msg: ScoreUsers, ctx: &mut Self::Context) {
        let started = self.start_run(msg.trigger, msg.done, ctx);
        let _ = msg.started.send(started);
    }
}

impl Handler<CheckSchedule> for ChurnScheduler {
    type Result = ();

    fn handle(&mut self, _: CheckSchedule, ctx: &mut Self::Context) {
        if self.schedule.is_due(self.clock.now_ms()) {
            let _ = self.start_run(Trigger::Schedule, None, ctx);
        }
    }
}

impl Handler<GetChurnStatus> for ChurnScheduler {
    type Result = ();

    fn handle(&mut self, msg: GetChurnStatus, _: &mut Self::Context) {
        let _ = msg.reply.send(self.schedule.status());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::trainer::ManualClock;

    #[test]
    fn tiers_follow_the_documented_boundaries() {
        let t = TierThresholds::default();
        assert_eq!(t.tier(0.71), Tier::High);
        assert_eq!(t.tier(0.7), Tier::Medium);
        assert_eq!(t.tier(0.4), Tier::Medium);
        assert_eq!(t.tier(0.39), Tier::Low);
        assert_eq!(t.tier(0.0), Tier::Low);
        let names = |tier: Tier| {
            tier.interventions()
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(Tier::High), ["push", "personalised_email", "offer"]);
        assert_eq!(
            names(Tier::Medium),
            ["engagement_campaign", "content_recommendations"]
        );
        assert_eq!(names(Tier::Low), ["newsletter", "success_stories"]);
    }

    /// Records when it was run; each run then waits for a permit of `gate`, so a test decides
    /// when a run ends.
    struct GatedJob {
        runs: Arc<Mutex<Vec<(Trigger, i64)>>>,
        gate: Arc<Semaphore>,
    }

    impl ScoringJob for GatedJob {
        fn run(&self, trigger: Trigger, now_ms: i64) -> JobFuture<ScoringReport> {
            self.runs.lock().expect("lock").push((trigger, now_ms));
            let gate = self.gate.clone();
            Box::pin(async move {
                gate.acquire().await.expect("gate open").forget();
                Ok(ScoringReport {
                    trigger,
                    day: String::new(),
                    started_ms: now_ms,
                    duration_seconds: 0.0,
                    model_version: 1,
                    users_examined: 0,
                    users_scored: 0,
                    tiers: TierCounts::default(),
                    interventions_added: 0,
                    delivery: None,
                })
            })
        }
    }

    async fn status(addr: &Addr<ChurnScheduler>) -> RunStatus {
        let (reply, rx) = oneshot::channel();
        addr.send(GetChurnStatus { reply })
            .await
            .expect("delivered");
        rx.await.expect("answer")
    }

    /// The status once `expected` runs are complete (a run's future completes on one of the
    /// actor's next polls), or after a bounded number of polls.
    async fn after_runs(addr: &Addr<ChurnScheduler>, expected: u64) -> RunStatus {
        let mut last = status(addr).await;
        for _ in 0..100 {
            if last.runs >= expected {
                break;
            }
            tokio::task::yield_now().await;
            last = status(addr).await;
        }
        last
    }

    async fn check(addr: &Addr<ChurnScheduler>) {
        addr.send(CheckSchedule).await.expect("delivered");
    }

    #[test]
    fn the_scheduler_scores_when_the_fake_clock_says_so() {
        let day = Duration::from_secs(24 * 3600);
        let day_ms = day.as_millis() as i64;
        // As the server builds it: the first run `first_run_delay` after start-up.
        let start = 1_700_000_000_000;
        let first_due = start + 600_000;
        actix::System::new().block_on(async move {
            let runs = Arc::new(Mutex::new(Vec::new()));
            let gate = Arc::new(Semaphore::new(0));
            let clock = Arc::new(ManualClock::new(start));
            let job = Arc::new(GatedJob {
                runs: runs.clone(),
                gate: gate.clone(),
            });
            let addr = ChurnScheduler::new(
                job,
                clock.clone(),
                Schedule::new(day, Some(first_due)),
                None,
            )
            .start();
            let recorded = || runs.lock().expect("lock").clone();

            check(&addr).await;
            clock.set(first_due - 1);
            check(&addr).await;
            assert!(recorded().is_empty(), "not due before first_run_delay");
            assert_eq!(status(&addr).await.next_due_ms, Some(first_due));

            // Due: one run starts; while it runs neither the schedule nor a request starts
            // another.
            clock.set(first_due);
            check(&addr).await;
            assert_eq!(recorded(), [(Trigger::Schedule, first_due)]);
            assert!(status(&addr).await.running);
            check(&addr).await;
            let (started, started_rx) = oneshot::channel();
            addr.send(ScoreUsers {
                trigger: Trigger::Request,
                started,
                done: None,
            })
            .await
            .expect("delivered");
            assert_eq!(
                started_rx.await.expect("answer"),
                Err(TrainError::AlreadyRunning)
            );
            assert_eq!(recorded().len(), 1);

            // Finished: the next run is a day after this one started, and checking again at the
            // same due time (or half a day later) starts nothing.
            gate.add_permits(1);
            let s = after_runs(&addr, 1).await;
            assert_eq!((s.runs, s.running), (1, false));
            assert_eq!(s.next_due_ms, Some(first_due + day_ms));
            assert_eq!(s.last_error, None);
            check(&addr).await;
            clock.advance(day / 2);
            check(&addr).await;
            assert_eq!(recorded().len(), 1, "not twice for the same due time");

            // A day after the first run: the second.
            gate.add_permits(1);
            clock.set(first_due + day_ms);
            check(&addr).await;
            check(&addr).await;
            let s = after_runs(&addr, 2).await;
            assert_eq!(s.runs, 2);
            assert_eq!(
                recorded(),
                [
                    (Trigger::Schedule, first_due),
                    (Trigger::Schedule, first_due + day_ms)
                ]
            );
            assert_eq!(s.next_due_ms, Some(first_due + 2 * day_ms));

            // On request, any time; the reply carries the report.
            gate.add_permits(1);
            clock.advance(Duration::from_secs(3600));
            let (started, started_rx) = oneshot::channel();
            let (done, done_rx) = oneshot::channel();
            addr.send(ScoreUsers {
                trigger: Trigger::Request,
                started,
                done: Some(done),
            })
            .await
            .expect("delivered");
            assert_eq!(started_rx.await.expect("answer"), Ok(()));
            let report = done_rx.await.expect("answer").expect("report");
            assert_eq!(report.trigger, Trigger::Request);
            let requested_at = first_due + day_ms + 3_600_000;
            assert_eq!(report.started_ms, requested_at);
            assert_eq!(recorded()[2], (Trigger::Request, requested_at));
            let s = after_runs(&addr, 3).await;
            assert_eq!(s.last_trigger, Some(Trigger::Request));
        });
    }
}
