//! Scenarios: each one prepares its workload before the clock starts, runs worker tasks (one
//! HTTP client each, a simulated connection), merges their measurements and returns a
//! [`Report`](crate::report::Report). What they share lives here: the [`Stop`] signal that lets
//! Ctrl-C end a run early with a report, and joining the workers.
//!
//! Adding a scenario means a new module with a `Config` that serialises into the report and an
//! `async fn run(config, stop) -> Result<Report, LoadError>`. `mixed`, `soak` and `overload`
//! share the open/closed-loop [`engine`] over the request mix of [`crate::workload`].

pub mod engine;
pub mod ingest;
pub mod mixed;
pub mod overload;
pub mod recommend;
pub mod soak;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::LoadError;

/// Tells workers to stop taking new work. Cheap to clone: one per worker.
#[derive(Debug, Clone)]
pub struct Stop {
    rx: watch::Receiver<bool>,
}

impl Stop {
    /// A signal raised by the first Ctrl-C; a second Ctrl-C exits at once (status 130).
    pub fn on_ctrl_c() -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_err() {
                // No signal handling available: keep the sender, so the run is simply never
                // interrupted.
                std::future::pending::<()>().await;
            }
            eprintln!("interrupted: finishing in-flight requests (Ctrl-C again to abort)");
            let _ = tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
        Self { rx }
    }

    /// A signal raised by the returned sender (tests, embedding).
    pub fn manual() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self { rx })
    }

    pub fn is_set(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once the signal is raised; never, if its sender is gone without raising it.
    pub async fn wait(&mut self) {
        loop {
            if *self.rx.borrow_and_update() {
                return;
            }
            if self.rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Waits for every worker; a panicked worker fails the run (its measurements are lost).
pub(crate) async fn join_workers<T>(handles: Vec<JoinHandle<T>>) -> Result<Vec<T>, LoadError> {
    let mut results = Vec::with_capacity(handles.len());
    for result in futures_util::future::join_all(handles).await {
        results.push(result.map_err(|e| LoadError::Worker {
            message: e.to_string(),
        })?);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn stop_wakes_waiters() {
        let (tx, stop) = Stop::manual();
        let mut waiter = stop.clone();
        let task = tokio::spawn(async move { waiter.wait().await });
        assert!(!stop.is_set());
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(stop.is_set());
    }
}
