//! The journal: the one ordered write path between the HTTP layer, the event log and the
//! actors, plus snapshots ([`snapshot`]), restore ([`restore`]) and erasure ([`erasure`]).
//!
//! **Order.** A batch is logged and dispatched to the shards under one lock, so the order of
//! the log is the order in which every shard sees the batches. A snapshot takes the same lock
//! for the instant it needs to enqueue its export requests: each shard answers after the
//! batches dispatched before and before any dispatched after, so the snapshot holds exactly
//! the effect of the log up to its `covers_seq`, and restore is "snapshot, then replay the log
//! after `covers_seq`".
//!
//! **Durability.** [`Journal::record`] takes one of three write paths:
//! - `sync`: the batch is appended to the store (and durable) before it is applied and
//!   acknowledged. A crash loses nothing that was acknowledged. Once the server runs, batches
//!   are group-committed ([`group_commit`]); before, they are appended inline.
//! - `async`: the batch is applied and acknowledged first and queued for the log
//!   ([`async_log`]); a writer appends the queue every `flush_interval_ms` or when
//!   `flush_max_events` wait. A crash can lose at most that window; when the window is full,
//!   ingestion answers `503` until the log catches up. Snapshots and erasure write the queue
//!   first.
//!
//! **Erasure** runs under the snapshot lock, so a snapshot being written cannot bring an erased
//! user back: it either finished before (and its parts are deleted) or starts after (and no
//! longer sees the user).

mod async_log;
mod erasure;
mod group_commit;
mod restore;
mod snapshot;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use momentum_actors::engine::{IngestReport, NewEvent, PendingIngest, Rejection};
use momentum_actors::index::{ItemMeta, UserProfile};
use momentum_actors::Engine;

use crate::error::Error;
use crate::metrics::JournalMetrics;
use crate::store::{Durability, EventRecord, Store, StoreConfig};
use async_log::{AsyncLog, WindowFull};
use group_commit::GroupCommit;

/// Snapshot settings (`[snapshot]`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotSettings {
    /// Seconds between periodic snapshots; 0 disables them (shutdown still writes one).
    pub interval_secs: u64,
    /// Snapshots kept; older ones are deleted after each new one.
    pub keep: usize,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        SnapshotSettings {
            interval_secs: 300,
            keep: 2,
        }
    }
}

/// What a snapshot wrote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnapshotStats {
    pub id: u64,
    pub covers_seq: u64,
    pub users: usize,
    pub bytes: usize,
    pub seconds: f64,
    pub pruned_events: u64,
}

/// What a restore read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestoreStats {
    pub snapshot_users: usize,
    pub replayed_events: u64,
    pub seconds: f64,
}

/// The ordered write path: every change of the hot state goes through it, so it holds the
/// engine it applies changes to.
pub struct Journal {
    engine: Arc<Engine>,
    store: Store,
    config: StoreConfig,
    snapshots: SnapshotSettings,
    metrics: JournalMetrics,
    retry_after: u64,
    /// Held while a batch is logged and dispatched (and briefly by snapshots).
    order: tokio::sync::Mutex<()>,
    /// Held for a whole snapshot and a whole erasure.
    snapshot_lock: tokio::sync::Mutex<()>,
    last_snapshot_id: AtomicU64,
    /// `sync` mode with the group-commit writer running.
    group_commit: GroupCommit,
    /// `async` mode: the window of events not yet in the log.
    async_log: AsyncLog,
}

/// A batch as the log stores it (`log`) and as the engine applies it (`events`), events on
/// deleted items left out of both.
struct Batch {
    log: Vec<EventRecord>,
    events: Vec<NewEvent>,
}

fn stored(event: &NewEvent, recommendation_id: Option<String>) -> EventRecord {
    EventRecord {
        event_id: event.event_id.clone(),
        user_id: event.user_id.clone(),
        item_id: event.item_id.clone(),
        kind: event.kind.as_str().to_string(),
        value: event.value,
        ts_ms: event.ts_ms,
        recommendation_id,
    }
}

impl Journal {
    /// Opens the store (creating it and applying migrations as needed) for changes applied to
    /// `engine`.
    pub async fn open(
        engine: Arc<Engine>,
        config: StoreConfig,
        snapshots: SnapshotSettings,
        metrics: JournalMetrics,
        retry_after: u64,
    ) -> Result<Journal, Error> {
        let store = Store::open(&config).await?;
        Ok(Journal {
            engine,
            group_commit: GroupCommit::new(store.clone(), metrics.clone(), retry_after),
            async_log: AsyncLog::new(store.clone(), metrics.clone(), config.flush_max_events),
            store,
            config,
            snapshots,
            metrics,
            retry_after,
            order: tokio::sync::Mutex::new(()),
            snapshot_lock: tokio::sync::Mutex::new(()),
            last_snapshot_id: AtomicU64::new(0),
        })
    }

    /// The journal's metrics.
    pub fn metrics(&self) -> &JournalMetrics {
        &self.metrics
    }

    /// The store (analytics and tests read it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The snapshot settings.
    pub fn snapshot_settings(&self) -> &SnapshotSettings {
        &self.snapshots
    }

    /// The `async` flush interval.
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.config.flush_interval_ms.max(1))
    }

    fn actor_error(&self, e: momentum_actors::ActorError) -> Error {
        Error::from_actor(e, self.retry_after)
    }

    /// Logs and applies a batch of validated events (`recommendation_ids[i]` belongs to
    /// `events[i]`), as the durability mode says.
    pub async fn record(
        &self,
        events: Vec<NewEvent>,
        recommendation_ids: Vec<Option<String>>,
    ) -> Result<IngestReport, Error> {
        let engine = &*self.engine;
        let (batch, refused) = without_deleted_items(engine, events, recommendation_ids);
        let mut report = match self.config.durability {
            Durability::Sync if self.group_commit.enabled() => {
                self.record_grouped(engine, batch).await?
            }
            Durability::Sync => self.record_inline(engine, batch).await?,
            Durability::Async => self.record_async(engine, batch).await?,
        };
        report.rejected.extend(refused);
        Ok(report)
    }

    /// Admits a batch to the engine (call under the order lock). Batches queued for the group
    /// commit are admitted but not dispatched yet: room is kept for them, so their dispatch
    /// after the durable append finds it.
    fn admit(&self, engine: &Engine, events: &[NewEvent]) -> Result<(), Error> {
        engine
            .admit_reserving(events, self.group_commit.pending())
            .map_err(|e| self.actor_error(e))
    }

    /// `sync`, group commit: queued under the order lock, so the writer appends and applies in
    /// dispatch order; the request waits for its batch.
    async fn record_grouped(&self, engine: &Engine, batch: Batch) -> Result<IngestReport, Error> {
        let answer = {
            let _order = self.order.lock().await;
            self.admit(engine, &batch.events)?;
            self.group_commit.enqueue(batch.log, batch.events)
        };
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// `sync`, inline: durable before applied. Should the dispatch still find a mailbox full,
    /// the client gets a 503 and the logged events apply on the next restart: retries carry
    /// event ids, so nothing is counted twice.
    async fn record_inline(&self, engine: &Engine, batch: Batch) -> Result<IngestReport, Error> {
        let pending = {
            let _order = self.order.lock().await;
            self.admit(engine, &batch.events)?;
            if !batch.log.is_empty() {
                let started = Instant::now();
                self.store.append_events(&batch.log).await?;
                self.metrics
                    .observe_append(started.elapsed(), batch.log.len());
            }
            engine
                .dispatch(batch.events)
                .map_err(|e| self.actor_error(e))?
        };
        self.applied(pending).await
    }

    /// `async`: applied first, then queued for the log under the order lock, so the log keeps
    /// the dispatch order. A full window waits (bounded) for the writer before refusing.
    async fn record_async(&self, engine: &Engine, batch: Batch) -> Result<IngestReport, Error> {
        let pending = {
            let _order = self.order.lock().await;
            self.admit(engine, &batch.events)?;
            self.async_log
                .wait_for_room(batch.log.len())
                .await
                .map_err(|WindowFull| Error::Overloaded {
                    actor: "event_log",
                    retry_after: self.retry_after,
                })?;
            let pending = engine
                .dispatch(batch.events)
                .map_err(|e| self.actor_error(e))?;
            self.async_log.push(batch.log);
            pending
        };
        self.applied(pending).await
    }

    async fn applied(&self, pending: PendingIngest<'_>) -> Result<IngestReport, Error> {
        pending.wait().await.map_err(|e| self.actor_error(e))
    }

    /// `sync` mode: the group-commit writer ([`group_commit`]). Runs for the life of the
    /// server (started once the state is restored).
    ///
    /// [`Journal::enable_group_commit`] must be called first (before the server takes
    /// traffic), so no batch takes the inline path while the writer starts.
    pub async fn run_sync_writer(&self) {
        self.group_commit.run(&self.engine).await;
    }

    /// From now on `sync` batches queue for [`Journal::run_sync_writer`] instead of being
    /// appended inline (a journal without a running writer keeps the inline path).
    pub fn enable_group_commit(&self) {
        self.group_commit.enable();
    }

    /// `async` mode: writes every queued event to the log (in order). A no-op in `sync` mode.
    pub async fn flush(&self) -> Result<usize, Error> {
        self.async_log.flush().await
    }

    /// `async` mode: the background writer. Appends the queue every `every`, or as soon as
    /// the window is half full; never returns (failures are logged and retried).
    pub async fn run_writer(&self, every: Duration) {
        self.async_log.run_writer(every).await;
    }

    /// Brings every accepted batch into the log: waits for the group commit, writes the
    /// `async` queue (call under the order lock, so none is added meanwhile).
    async fn write_queued(&self) -> Result<(), Error> {
        self.group_commit.drain().await;
        self.async_log.flush().await?;
        Ok(())
    }

    /// Stores an item's metadata, then puts it in the engine; `true` if the item is new.
    pub async fn put_item(&self, item_id: &str, meta: ItemMeta) -> Result<bool, Error> {
        let value = serde_json::to_value(&meta).map_err(|source| Error::Json {
            what: format!("metadata of item {item_id:?}"),
            source,
        })?;
        self.store.put_item(item_id, &value).await?;
        self.engine
            .put_item(item_id, meta)
            .await
            .map_err(|e| self.actor_error(e))
    }

    /// Deletes an item: refused for an unknown item, then stored, then applied.
    pub async fn delete_item(&self, item_id: &str) -> Result<(), Error> {
        self.engine
            .get_item(item_id)
            .map_err(|e| self.actor_error(e))?;
        self.store.delete_item(item_id).await?;
        self.engine
            .delete_item(item_id)
            .await
            .map_err(|e| self.actor_error(e))?;
        Ok(())
    }

    /// Stores a user profile, then puts it in the engine; `true` if the user is new.
    pub async fn put_user(&self, user_id: &str, profile: UserProfile) -> Result<bool, Error> {
        let value = serde_json::to_value(&profile).map_err(|source| Error::Json {
            what: format!("profile of user {user_id:?}"),
            source,
        })?;
        self.store.put_user(user_id, &value).await?;
        self.engine
            .put_user(user_id, profile)
            .await
            .map_err(|e| self.actor_error(e))
    }
}

/// Splits off the events on deleted items (refused before they reach the log, so a restart
/// replays only what was applied).
fn without_deleted_items(
    engine: &Engine,
    events: Vec<NewEvent>,
    recommendation_ids: Vec<Option<String>>,
) -> (Batch, Vec<Rejection>) {
    let mut refused = Vec::new();
    let mut batch = Batch {
        log: Vec::with_capacity(events.len()),
        events: Vec::with_capacity(events.len()),
    };
    for (event, rec) in events.into_iter().zip(recommendation_ids) {
        if let Some(item) = event
            .item_id
            .as_deref()
            .filter(|i| engine.is_deleted_item(i))
        {
            refused.push(Rejection {
                index: event.index,
                code: "item_deleted",
                message: format!("item {item:?} was deleted"),
            });
            continue;
        }
        batch.log.push(stored(&event, rec));
        batch.events.push(event);
    }
    (batch, refused)
}
