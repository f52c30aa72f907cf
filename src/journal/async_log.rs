//! `async` durability: batches are applied and acknowledged first and queued here; a writer
//! appends the queue to the log every `flush_interval_ms`, or as soon as half of the window
//! (`flush_max_events`) waits. A full window makes ingestion wait (bounded), then `503`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::metrics::JournalMetrics;
use crate::store::{EventRecord, Store};

/// Events written per append when flushing.
const FLUSH_PAGE: usize = 10_000;

/// How long a batch waits for room in a full window before `503`.
const ASYNC_WAIT: Duration = Duration::from_secs(2);

/// The window of accepted events not yet in the log, and its writer.
pub(super) struct AsyncLog {
    store: Store,
    metrics: JournalMetrics,
    /// The most events that may wait unwritten (`flush_max_events`).
    window: usize,
    /// Accepted events not yet in the log, oldest first.
    unflushed: parking_lot::Mutex<VecDeque<EventRecord>>,
    /// Events taken out of `unflushed` by the writer and not yet in the log (they still
    /// count against the window).
    writing: AtomicUsize,
    /// One writer drains `unflushed` at a time (keeps the log in order).
    flush_lock: tokio::sync::Mutex<()>,
    /// Wakes the background writer before its interval (the window is half full).
    kick: tokio::sync::Notify,
    /// Signalled whenever the writer made room in the window.
    space: tokio::sync::Notify,
}

/// The window is full and stayed full for [`ASYNC_WAIT`].
pub(super) struct WindowFull;

impl AsyncLog {
    pub(super) fn new(store: Store, metrics: JournalMetrics, window: usize) -> AsyncLog {
        AsyncLog {
            store,
            metrics,
            window,
            unflushed: parking_lot::Mutex::new(VecDeque::new()),
            writing: AtomicUsize::new(0),
            flush_lock: tokio::sync::Mutex::new(()),
            kick: tokio::sync::Notify::new(),
            space: tokio::sync::Notify::new(),
        }
    }

    /// Waits (bounded) until `events` more fit in the window.
    pub(super) async fn wait_for_room(&self, events: usize) -> Result<(), WindowFull> {
        let deadline = Instant::now() + ASYNC_WAIT;
        loop {
            let room = self.space.notified();
            let window =
                self.unflushed.lock().len() + self.writing.load(Ordering::Acquire) + events;
            if window <= self.window {
                return Ok(());
            }
            self.kick.notify_one();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, room).await.is_err() {
                self.metrics.log_backpressure.inc();
                return Err(WindowFull);
            }
        }
    }

    /// Queues applied events for the log, in the order of the calls.
    pub(super) fn push(&self, log: Vec<EventRecord>) {
        let mut queue = self.unflushed.lock();
        queue.extend(log);
        self.metrics
            .unflushed
            .set((queue.len() + self.writing.load(Ordering::Acquire)) as i64);
        if 2 * queue.len() >= self.window {
            self.kick.notify_one();
        }
    }

    /// Writes every queued event to the log (in order); returns how many.
    pub(super) async fn flush(&self) -> Result<usize, Error> {
        let _writer = self.flush_lock.lock().await;
        let mut written = 0;
        loop {
            // Moved out, not copied: the writer is the only consumer (under `flush_lock`), and
            // a failed append puts the batch back in front, in order.
            let batch: Vec<EventRecord> = {
                let mut queue = self.unflushed.lock();
                let n = queue.len().min(FLUSH_PAGE);
                self.writing.store(n, Ordering::Release);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                return Ok(written);
            }
            let len = batch.len();
            // Should the append fail, or this future be dropped mid-write (a caller's request
            // cancelled), the guard puts the batch back in front, in order.
            let mut guard = Requeue {
                log: self,
                batch: Some(batch),
            };
            let started = Instant::now();
            if let Some(batch) = guard.batch.as_deref() {
                self.store.append_events(batch).await?;
            }
            guard.batch = None;
            self.metrics.observe_append(started.elapsed(), len);
            self.writing.store(0, Ordering::Release);
            self.metrics
                .unflushed
                .set(self.unflushed.lock().len() as i64);
            self.space.notify_waiters();
            written += len;
        }
    }

    /// The background writer: appends the queue every `every`, or as soon as the window is
    /// half full; never returns (failures are logged and retried).
    pub(super) async fn run_writer(&self, every: Duration) {
        loop {
            let _ = tokio::time::timeout(every, self.kick.notified()).await;
            if let Err(error) = self.flush().await {
                tracing::warn!(
                    error = %crate::error::Report(&error),
                    "event log write failed; will retry"
                );
                tokio::time::sleep(every).await;
            }
        }
    }
}

/// A batch taken out of the unflushed queue; dropped while still holding it (the append
/// failed or was cancelled), it goes back to the front of the queue.
struct Requeue<'a> {
    log: &'a AsyncLog,
    batch: Option<Vec<EventRecord>>,
}

impl Drop for Requeue<'_> {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            let mut queue = self.log.unflushed.lock();
            for event in batch.into_iter().rev() {
                queue.push_front(event);
            }
            self.log.writing.store(0, Ordering::Release);
        }
    }
}
