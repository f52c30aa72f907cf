//! The runner on a fake clock: schedules, requests, one run at a time, status counts.

use std::sync::Mutex;

use tokio::sync::Semaphore;

use momentum_models::clock::ManualClock;

use super::*;
use crate::error::Report;

#[test]
fn schedule_runs_on_time_and_retries_sooner_after_a_failure() {
    let hour = 3_600_000;
    let mut s = Schedule::new(Duration::from_secs(7 * 24 * 3600), Some(1000));
    assert!(!s.is_due(999) && s.is_due(1000));
    assert!(s.begin(Trigger::Schedule, 1000));
    assert!(!s.begin(Trigger::Request, 1001), "one run at a time");
    assert!(!s.is_due(10_000_000_000));
    s.finish(5000, None);
    assert_eq!(s.status().next_due_ms, Some(1000 + 7 * 24 * hour));
    assert!(s.begin(Trigger::Request, 6000));
    s.finish(7000, Some("store down".into()));
    assert_eq!(s.status().next_due_ms, Some(7000 + hour));
    assert_eq!(s.status().runs, 2);
    assert_eq!(s.status().last_error.as_deref(), Some("store down"));
    let never = Schedule::new(Duration::ZERO, Some(0));
    assert!(!never.is_due(i64::MAX));
}

#[test]
fn status_counts_failures_like_a_supervisor() {
    let mut s = Schedule::new(Duration::from_secs(60), Some(0));
    for (at, error) in [(1, Some("a")), (2, Some("b")), (3, None), (4, Some("c"))] {
        assert!(s.begin(Trigger::Schedule, at));
        s.finish(at, error.map(str::to_string));
    }
    let st = s.status();
    assert_eq!((st.runs, st.failures, st.consecutive_failures), (4, 3, 1));
    assert_eq!((st.last_success_ms, st.last_failure_ms), (Some(3), Some(4)));
    assert_eq!(st.last_error.as_deref(), Some("c"));
    assert!(s.begin(Trigger::Schedule, 5));
    s.finish(5, None);
    assert_eq!(
        (s.status().consecutive_failures, s.status().last_error),
        (0, None)
    );
}

#[test]
fn errors_keep_their_causes_and_map_to_http_once() {
    let io = std::io::Error::other("disk full");
    let e = JobError::failed("writing interventions", io);
    assert_eq!(e.to_string(), "writing interventions");
    assert_eq!(e.chain(), "writing interventions: disk full");
    let error = Error::from(e);
    assert!(matches!(error, Error::Failed { .. }), "{error:?}");
    assert_eq!(
        Report(&error).to_string(),
        "writing interventions: disk full"
    );
    // A server error inside keeps its own status.
    let e = JobError::failed("writing a snapshot", Error::NotReady);
    assert!(matches!(Error::from(e), Error::NotReady));
    assert!(matches!(
        Error::from(JobError::AlreadyRunning),
        Error::Conflict { .. }
    ));
    assert!(matches!(
        Error::from(JobError::unavailable("no model")),
        Error::Conflict { message } if message == "no model"
    ));
}

/// A report carrying how the run was started and when.
#[derive(Debug, Clone, PartialEq)]
struct Ran {
    trigger: Trigger,
    now_ms: i64,
}

/// Records when it was run; each run then waits for a permit of `gate`, so a test decides
/// when a run ends.
struct GatedJob<const QUEUE: bool> {
    runs: Arc<Mutex<Vec<(Trigger, i64)>>>,
    gate: Arc<Semaphore>,
}

impl<const QUEUE: bool> Job for GatedJob<QUEUE> {
    type Report = Ran;
    const NAME: &'static str = "gated";
    const WHEN_BUSY: WhenBusy = if QUEUE {
        WhenBusy::RunAfter
    } else {
        WhenBusy::Refuse
    };

    fn run(&self, trigger: Trigger, now_ms: i64) -> JobFuture<Ran> {
        self.runs.lock().expect("lock").push((trigger, now_ms));
        let gate = self.gate.clone();
        Box::pin(async move {
            gate.acquire().await.expect("gate open").forget();
            Ok(Ran { trigger, now_ms })
        })
    }
}

type Runs = Arc<Mutex<Vec<(Trigger, i64)>>>;

fn gated<const QUEUE: bool>(
    clock: Arc<ManualClock>,
    schedule: Schedule,
) -> (Addr<JobRunner<GatedJob<QUEUE>>>, Runs, Arc<Semaphore>) {
    let runs = Arc::new(Mutex::new(Vec::new()));
    let gate = Arc::new(Semaphore::new(0));
    let job = GatedJob::<QUEUE> {
        runs: runs.clone(),
        gate: gate.clone(),
    };
    let addr = JobRunner::new(job, clock, schedule, None, None).start();
    (addr, runs, gate)
}

async fn status<J: Job>(addr: &Addr<JobRunner<J>>) -> JobStatus {
    let (reply, rx) = oneshot::channel();
    addr.send(GetJobStatus { reply }).await.expect("delivered");
    rx.await.expect("answer")
}

/// The status once `expected` runs are complete (a run's future completes on one of the
/// runner's next polls), or after a bounded number of polls.
async fn after_runs<J: Job>(addr: &Addr<JobRunner<J>>, expected: u64) -> JobStatus {
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

async fn check<J: Job>(addr: &Addr<JobRunner<J>>) {
    addr.send(CheckSchedule).await.expect("delivered");
}

/// Sends a request; the answers to "started" and "done".
async fn request<J: Job>(
    addr: &Addr<JobRunner<J>>,
) -> (
    oneshot::Receiver<Result<(), JobError>>,
    oneshot::Receiver<Result<J::Report, JobError>>,
) {
    let (started, started_rx) = oneshot::channel();
    let (done, done_rx) = oneshot::channel();
    addr.send(RunJob {
        trigger: Trigger::Request,
        started,
        done: Some(done),
    })
    .await
    .expect("delivered");
    (started_rx, done_rx)
}

#[test]
fn a_weekly_job_runs_when_the_fake_clock_says_so() {
    let week = Duration::from_secs(7 * 24 * 3600);
    actix::System::new().block_on(async move {
        let clock = Arc::new(ManualClock::new(0));
        let (addr, runs, gate) = gated::<false>(clock.clone(), Schedule::new(week, Some(1000)));
        gate.add_permits(3);
        check(&addr).await;
        assert!(runs.lock().expect("lock").is_empty(), "not due yet");
        clock.set(1000);
        check(&addr).await;
        assert_eq!(after_runs(&addr, 1).await.runs, 1);
        clock.advance(week / 2);
        check(&addr).await;
        assert_eq!(after_runs(&addr, 1).await.runs, 1);
        clock.advance(week / 2);
        check(&addr).await;
        assert_eq!(after_runs(&addr, 2).await.runs, 2);
        let times: Vec<i64> = runs.lock().expect("lock").iter().map(|r| r.1).collect();
        assert_eq!(times, [1000, 1000 + week.as_millis() as i64]);
        // On request, any time; the reply carries the report.
        let (started, done) = request(&addr).await;
        assert!(matches!(started.await.expect("answer"), Ok(())));
        let report = done.await.expect("answer").expect("report");
        assert_eq!(report.trigger, Trigger::Request);
        assert_eq!(runs.lock().expect("lock").len(), 3);
        assert_eq!(status(&addr).await.job, "gated");
    });
}

#[test]
fn a_daily_job_runs_once_per_due_time_and_refuses_requests_while_running() {
    let day = Duration::from_secs(24 * 3600);
    let day_ms = day.as_millis() as i64;
    // As the server builds it: the first run `first_run_delay` after start-up.
    let start = 1_700_000_000_000;
    let first_due = start + 600_000;
    actix::System::new().block_on(async move {
        let clock = Arc::new(ManualClock::new(start));
        let (addr, runs, gate) = gated::<false>(clock.clone(), Schedule::new(day, Some(first_due)));
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
        let (started, _) = request(&addr).await;
        assert!(matches!(
            started.await.expect("answer"),
            Err(JobError::AlreadyRunning)
        ));
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
        let (started, done) = request(&addr).await;
        assert!(matches!(started.await.expect("answer"), Ok(())));
        let report = done.await.expect("answer").expect("report");
        assert_eq!(report.trigger, Trigger::Request);
        let requested_at = first_due + day_ms + 3_600_000;
        assert_eq!(report.now_ms, requested_at);
        assert_eq!(recorded()[2], (Trigger::Request, requested_at));
        let s = after_runs(&addr, 3).await;
        assert_eq!(s.last_trigger, Some(Trigger::Request));
    });
}

#[test]
fn requests_to_a_busy_run_after_job_share_the_next_run() {
    actix::System::new().block_on(async move {
        let clock = Arc::new(ManualClock::new(0));
        let (addr, runs, gate) = gated::<true>(
            clock.clone(),
            Schedule::new(Duration::from_secs(60), Some(0)),
        );
        check(&addr).await;
        assert_eq!(runs.lock().expect("lock").len(), 1);
        // Two requests while the scheduled run is in flight: neither is refused, and they
        // wait for one run that starts after the current one.
        clock.set(5);
        let (started_a, done_a) = request(&addr).await;
        let (started_b, done_b) = request(&addr).await;
        gate.add_permits(2);
        assert!(matches!(started_a.await.expect("answer"), Ok(())));
        assert!(matches!(started_b.await.expect("answer"), Ok(())));
        let a = done_a.await.expect("answer").expect("report");
        let b = done_b.await.expect("answer").expect("report");
        assert_eq!(
            a,
            Ran {
                trigger: Trigger::Request,
                now_ms: 5
            }
        );
        assert_eq!(a, b);
        assert_eq!(
            *runs.lock().expect("lock"),
            [(Trigger::Schedule, 0), (Trigger::Request, 5)]
        );
        assert_eq!(after_runs(&addr, 2).await.runs, 2);
    });
}

/// Runs at once; scheduled here only while `here` says so (a cluster job on a non-leader).
struct ElsewhereJob {
    here: Arc<std::sync::atomic::AtomicBool>,
    runs: Runs,
}

impl Job for ElsewhereJob {
    type Report = Ran;
    const NAME: &'static str = "elsewhere";

    fn run(&self, trigger: Trigger, now_ms: i64) -> JobFuture<Ran> {
        self.runs.lock().expect("lock").push((trigger, now_ms));
        Box::pin(async move { Ok(Ran { trigger, now_ms }) })
    }

    fn scheduled_here(&self) -> bool {
        self.here.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A due run of a job scheduled elsewhere passes: not run, the next one an interval later;
/// once scheduled here, it runs when that one comes due. Requests run either way.
#[test]
fn a_job_scheduled_elsewhere_lets_due_runs_pass() {
    let hour = Duration::from_secs(3600);
    let hour_ms = hour.as_millis() as i64;
    actix::System::new().block_on(async move {
        let clock = Arc::new(ManualClock::new(0));
        let here = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let runs: Runs = Arc::new(Mutex::new(Vec::new()));
        let job = ElsewhereJob {
            here: here.clone(),
            runs: runs.clone(),
        };
        let addr = JobRunner::new(
            job,
            clock.clone(),
            Schedule::new(hour, Some(1000)),
            None,
            None,
        )
        .start();
        clock.set(1000);
        check(&addr).await;
        let st = status(&addr).await;
        assert_eq!((st.runs, st.next_due_ms), (0, Some(1000 + hour_ms)));
        assert!(runs.lock().expect("lock").is_empty());
        here.store(true, std::sync::atomic::Ordering::Relaxed);
        clock.set(1000 + hour_ms - 1);
        check(&addr).await;
        assert_eq!(after_runs(&addr, 1).await.runs, 0, "not due yet");
        clock.set(1000 + hour_ms);
        check(&addr).await;
        assert_eq!(after_runs(&addr, 1).await.runs, 1);
        here.store(false, std::sync::atomic::Ordering::Relaxed);
        let (started, done) = request(&addr).await;
        assert!(matches!(started.await.expect("answer"), Ok(())));
        assert_eq!(
            done.await.expect("answer").expect("report").trigger,
            Trigger::Request
        );
        let triggers: Vec<Trigger> = runs.lock().expect("lock").iter().map(|r| r.0).collect();
        assert_eq!(triggers, [Trigger::Schedule, Trigger::Request]);
    });
}
