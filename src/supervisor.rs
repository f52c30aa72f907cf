//! The `Supervisor` actor: drives the journal in the background. It writes a snapshot every
//! `snapshot.interval_secs`, flushes the `async` event log every `store.flush_interval_ms`, and
//! on shutdown flushes the log and writes a final snapshot within a deadline. (The shards and
//! the catalogue run under actix supervision; their restarts are counted by
//! `momentum_actor_restarts_total`.)
//!
//! Time comes from the intervals it is given, so tests drive it with [`RunSnapshot`] and
//! [`Shutdown`] messages instead of sleeping.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::journal::SnapshotStats;
use crate::{AppState, Error};

/// The supervisor.
pub struct Supervisor {
    state: Arc<AppState>,
    snapshot_every: Option<Duration>,
    flush_every: Option<Duration>,
}

impl Supervisor {
    /// A supervisor with the given periods (`None` disables a timer).
    pub fn new(
        state: Arc<AppState>,
        snapshot_every: Option<Duration>,
        flush_every: Option<Duration>,
    ) -> Self {
        Supervisor {
            state,
            snapshot_every,
            flush_every,
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(every) = self.snapshot_every {
            ctx.run_interval(every, |_, ctx| {
                ctx.notify(RunSnapshot);
            });
        }
        if let Some(every) = self.flush_every {
            let state = self.state.clone();
            ctx.spawn(async move { state.journal.run_writer(every).await }.into_actor(self));
        }
    }
}

/// Write a snapshot now (periodic timer, admin route, tests).
#[derive(Debug, Message)]
#[rtype(result = "Result<SnapshotStats, Error>")]
pub struct RunSnapshot;

impl Handler<RunSnapshot> for Supervisor {
    type Result = ResponseFuture<Result<SnapshotStats, Error>>;

    fn handle(&mut self, _: RunSnapshot, _: &mut Self::Context) -> Self::Result {
        let state = self.state.clone();
        Box::pin(async move {
            let result = state.journal.snapshot(&state.engine).await;
            if let Err(error) = &result {
                state.journal.metrics().snapshot_failures.inc();
                tracing::warn!(%error, "snapshot failed");
            }
            result
        })
    }
}

/// Flush the log and write a final snapshot, within `deadline`. Answers why it failed, if it
/// did (the process then exits non-zero).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), String>")]
pub struct Shutdown {
    pub deadline: Duration,
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, msg: Shutdown, _: &mut Self::Context) -> Self::Result {
        let state = self.state.clone();
        Box::pin(async move {
            let work = async {
                if let Err(error) = state.journal.flush().await {
                    tracing::error!(%error, "final log flush failed");
                    return Err(format!("the final log flush failed: {error}"));
                }
                match state.journal.final_snapshot(&state.engine).await {
                    Ok(stats) => {
                        tracing::info!(id = stats.id, "final snapshot written");
                        Ok(())
                    }
                    Err(error) => {
                        state.journal.metrics().snapshot_failures.inc();
                        tracing::error!(%error, "final snapshot failed");
                        Err(format!("the final snapshot failed: {error}"))
                    }
                }
            };
            match tokio::time::timeout(msg.deadline, work).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::error!("shutdown deadline passed before the final snapshot finished");
                    Err("the shutdown deadline passed before the final snapshot finished".into())
                }
            }
        })
    }
}
