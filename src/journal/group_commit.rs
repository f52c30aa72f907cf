//! `sync` durability under load: batches queue here in dispatch order, a writer appends
//! every queued batch in one durable write, then applies them to the engine in the same order
//! and answers each request. Many small batches share one commit instead of queueing for one
//! each. Without the writer running, `sync` batches are appended inline instead.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use momentum_actors::engine::{IngestReport, NewEvent};
use momentum_actors::Engine;

use crate::error::Error;
use crate::metrics::JournalMetrics;
use crate::store::{EventRecord, Store};

/// Most events the writer appends in one write.
const GROUP_MAX_EVENTS: usize = 50_000;

/// What a request waits on: its batch's report once the group was written and applied.
pub(super) type Answer = tokio::sync::oneshot::Receiver<Result<IngestReport, Error>>;

/// A batch waiting for the writer.
struct Entry {
    log: Vec<EventRecord>,
    events: Vec<NewEvent>,
    done: tokio::sync::oneshot::Sender<Result<IngestReport, Error>>,
}

/// The queue of `sync` batches and its writer.
pub(super) struct GroupCommit {
    store: Store,
    metrics: JournalMetrics,
    retry_after: u64,
    /// Batches queued in dispatch order.
    queue: parking_lot::Mutex<VecDeque<Entry>>,
    /// Batches queued or being written.
    pending: AtomicUsize,
    /// Wakes the writer.
    kick: tokio::sync::Notify,
    /// Signalled whenever the writer finished a group.
    done: tokio::sync::Notify,
    /// Set once the writer runs; until then `sync` appends inline.
    enabled: AtomicBool,
}

impl GroupCommit {
    pub(super) fn new(store: Store, metrics: JournalMetrics, retry_after: u64) -> GroupCommit {
        GroupCommit {
            store,
            metrics,
            retry_after,
            queue: parking_lot::Mutex::new(VecDeque::new()),
            pending: AtomicUsize::new(0),
            kick: tokio::sync::Notify::new(),
            done: tokio::sync::Notify::new(),
            enabled: AtomicBool::new(false),
        }
    }

    /// Whether `sync` batches queue here (the writer was enabled).
    pub(super) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub(super) fn enable(&self) {
        self.enabled.store(true, Ordering::Release);
    }

    /// Batches admitted but not applied yet: the engine keeps room for them.
    pub(super) fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Queues a batch (call under the journal's order lock, so the queue is in dispatch order).
    pub(super) fn enqueue(&self, log: Vec<EventRecord>, events: Vec<NewEvent>) -> Answer {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.queue.lock().push_back(Entry { log, events, done });
        self.kick.notify_one();
        answer
    }

    /// The writer; runs for the life of the server. A failed write fails every request of its
    /// group, which applied nothing.
    pub(super) async fn run(&self, engine: &Engine) {
        loop {
            let kicked = self.kick.notified();
            if self.queue.lock().is_empty() {
                kicked.await;
                continue;
            }
            self.write_group(engine).await;
        }
    }

    /// Waits until every queued batch was written and applied (call under the order lock, so
    /// none is added meanwhile).
    pub(super) async fn drain(&self) {
        loop {
            let done = self.done.notified();
            if self.pending() == 0 {
                return;
            }
            self.kick.notify_one();
            done.await;
        }
    }

    /// Takes the queued batches in order, up to [`GROUP_MAX_EVENTS`] events (at least one).
    fn take_group(&self) -> Vec<Entry> {
        let mut group = Vec::new();
        let mut queue = self.queue.lock();
        let mut events = 0;
        while let Some(entry) = queue.front() {
            if !group.is_empty() && events + entry.log.len() > GROUP_MAX_EVENTS {
                break;
            }
            events += entry.log.len();
            group.extend(queue.pop_front());
        }
        group
    }

    async fn write_group(&self, engine: &Engine) {
        let mut group = self.take_group();
        let batches = group.len();
        let log: Vec<EventRecord> = group
            .iter_mut()
            .flat_map(|entry| std::mem::take(&mut entry.log))
            .collect();
        let started = Instant::now();
        let appended = if log.is_empty() {
            Ok(())
        } else {
            self.store.append_events(&log).await.map(|_| ())
        };
        match appended {
            Err(error) => {
                // One store error, many requests: each gets the failure as its cause.
                let error = std::sync::Arc::new(error);
                for entry in group {
                    let _ = entry
                        .done
                        .send(Err(Error::failed("event log append", error.clone())));
                }
            }
            Ok(()) => {
                if !log.is_empty() {
                    self.metrics.observe_append(started.elapsed(), log.len());
                }
                self.apply(engine, group).await;
            }
        }
        self.pending.fetch_sub(batches, Ordering::AcqRel);
        self.done.notify_waiters();
    }

    /// Durable: applies in order (each dispatch queues its shard messages behind the previous
    /// one's), then waits for the shards and answers.
    async fn apply(&self, engine: &Engine, group: Vec<Entry>) {
        let mut applying = Vec::with_capacity(group.len());
        for entry in group {
            let pending = engine
                .dispatch(entry.events)
                .map_err(|e| Error::from_actor(e, self.retry_after));
            applying.push((pending, entry.done));
        }
        for (pending, done) in applying {
            let result = match pending {
                Ok(pending) => pending
                    .wait()
                    .await
                    .map_err(|e| Error::from_actor(e, self.retry_after)),
                Err(e) => Err(e),
            };
            let _ = done.send(result);
        }
    }
}
