//! The `snapshot` job: writes a snapshot of the hot state every `snapshot.interval_secs` and on
//! request (`POST /v1/admin/snapshot`; a request during a scheduled snapshot gets the one after
//! it). The final snapshot at shutdown is not a run of the job: [`final_snapshot`] flushes the
//! log first and has a deadline, and the process exit status says whether it was written.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Job, JobError, JobFuture, JobHandle, JobRunner, Schedule, Trigger, WhenBusy};
use crate::journal::SnapshotStats;
use crate::{AppState, Error};

/// The `snapshot` job. Holds the state weakly: the state holds the job's handle.
pub struct SnapshotJob {
    state: Weak<AppState>,
}

impl Job for SnapshotJob {
    type Report = SnapshotStats;
    const NAME: &'static str = "snapshot";
    const WHEN_BUSY: WhenBusy = WhenBusy::RunAfter;

    fn run(&self, _: Trigger, _: i64) -> JobFuture<SnapshotStats> {
        let state = self.state.upgrade();
        Box::pin(async move {
            let state = state.ok_or(JobError::Stopped { job: Self::NAME })?;
            state.journal.snapshot().await.map_err(|error| {
                state.journal.metrics().snapshot_failures.inc();
                tracing::warn!(%error, "snapshot failed");
                JobError::failed("writing a snapshot", error)
            })
        })
    }
}

/// Starts the job on the current arbiter (once the state is restored).
pub fn start(state: &Arc<AppState>) -> JobHandle<SnapshotJob> {
    let every = Duration::from_secs(state.settings.snapshot.interval_secs);
    let clock = state.jobs.clock.clone();
    let first = clock
        .now_ms()
        .saturating_add(i64::try_from(every.as_millis()).unwrap_or(i64::MAX));
    JobRunner::new(
        SnapshotJob {
            state: Arc::downgrade(state),
        },
        clock,
        Schedule::new(every, Some(first)),
        (!every.is_zero()).then(|| every.min(Duration::from_secs(1))),
        Some(state.jobs.metrics.clone()),
    )
    .spawn()
}

/// Why the final snapshot was not written.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    #[error("the final log flush failed: {0}")]
    Flush(#[source] Error),
    #[error("the final snapshot failed: {0}")]
    Snapshot(#[source] Error),
    #[error("the shutdown deadline passed before the final snapshot finished")]
    Deadline,
}

/// Flushes the log and writes a final snapshot, within `deadline`.
pub async fn final_snapshot(state: &AppState, deadline: Duration) -> Result<(), ShutdownError> {
    let work = async {
        if let Err(error) = state.journal.flush().await {
            tracing::error!(%error, "final log flush failed");
            return Err(ShutdownError::Flush(error));
        }
        match state.journal.final_snapshot().await {
            Ok(stats) => {
                tracing::info!(id = stats.id, "final snapshot written");
                Ok(())
            }
            Err(error) => {
                state.journal.metrics().snapshot_failures.inc();
                tracing::error!(%error, "final snapshot failed");
                Err(ShutdownError::Snapshot(error))
            }
        }
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(result) => result,
        Err(_) => {
            tracing::error!("shutdown deadline passed before the final snapshot finished");
            Err(ShutdownError::Deadline)
        }
    }
}
