//! The journal: the one ordered write path between the HTTP layer, the event log and the
//! actors, plus snapshots, restore and erasure.
//!
//! **Order.** A batch is logged and dispatched to the shards under one lock, so the order of
//! the log is the order in which every shard sees the batches. A snapshot takes the same lock
//! for the instant it needs to enqueue its export requests: each shard answers after the
//! batches dispatched before and before any dispatched after, so the snapshot holds exactly
//! the effect of the log up to its `covers_seq`, and restore is "snapshot, then replay the log
//! after `covers_seq`".
//!
//! **Durability.**
//! - `sync`: the batch is appended to the store (and durable) before it is applied and
//!   acknowledged. A crash loses nothing that was acknowledged.
//! - `async`: the batch is applied and acknowledged first and queued for the log; a writer
//!   appends the queue every `flush_interval_ms` or when `flush_max_events` wait. A crash can
//!   lose at most that window; when the window is full, ingestion answers `503` until the log
//!   catches up. Snapshots and erasure flush the queue first.
//!
//! **Erasure** runs under the snapshot lock, so a snapshot being written cannot bring an erased
//! user back: it either finished before (and its parts are deleted) or starts after (and no
//! longer sees the user).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use momentum_actors::engine::{EngineExport, IngestReport, NewEvent, Rejection};
use momentum_actors::index::{ItemMeta, UserProfile};
use momentum_actors::snapshot::{
    decode_dedupe, decode_item_slots, decode_user, decode_user_chunk, encode_dedupe,
    encode_item_slots, encode_user_chunk, user_chunk, USER_CHUNKS,
};
use momentum_actors::{ActorError, Engine};
use momentum_models::clock::now_ms;
use momentum_models::events::EventKind;

use crate::error::Error;
use crate::metrics::JournalMetrics;
use crate::store::{self, Durability, SnapshotMeta, SnapshotPart, Store, StoreConfig};

/// Key prefix of the snapshot parts holding a shard's remembered event ids (`event_ids:N`).
const EVENT_IDS_PREFIX: &str = "event_ids:";

/// Key prefix of the snapshot parts holding chunks of user records (`users:N.`).
const USERS_PREFIX: &str = "users:";

/// The key of user chunk `chunk`; the final dot keeps one key from prefixing another.
fn users_chunk_key(chunk: usize) -> String {
    format!("{USERS_PREFIX}{chunk}.")
}

/// Events read per page when replaying the log (and written per append when flushing).
const REPLAY_PAGE: usize = 10_000;

/// `async` mode: how long a batch waits for room in a full window before `503`.
const ASYNC_WAIT: Duration = Duration::from_secs(2);

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

/// The ordered write path.
pub struct Journal {
    store: Store,
    config: StoreConfig,
    snapshots: SnapshotSettings,
    metrics: JournalMetrics,
    retry_after: u64,
    /// Held while a batch is logged and dispatched (and briefly by snapshots).
    order: tokio::sync::Mutex<()>,
    /// Held for a whole snapshot and a whole erasure.
    snapshot_lock: tokio::sync::Mutex<()>,
    /// `async` mode: accepted events not yet in the log, oldest first.
    unflushed: parking_lot::Mutex<VecDeque<store::NewEvent>>,
    /// Events taken out of `unflushed` by the writer and not yet in the log (they still
    /// count against the window).
    writing: AtomicUsize,
    /// One writer drains `unflushed` at a time (keeps the log in order).
    flush_lock: tokio::sync::Mutex<()>,
    /// Wakes the background writer before its interval (the window is half full).
    kick: tokio::sync::Notify,
    /// Signalled whenever the writer made room in the window.
    space: tokio::sync::Notify,
    last_snapshot_id: AtomicU64,
    /// `sync` mode with the group-commit writer running: batches queued in dispatch order,
    /// appended together in one durable write, then applied in the same order.
    sync_queue: parking_lot::Mutex<VecDeque<SyncEntry>>,
    /// Batches queued or being written by the group-commit writer.
    sync_pending: AtomicUsize,
    /// Wakes the group-commit writer.
    sync_kick: tokio::sync::Notify,
    /// Signalled whenever the group-commit writer finished a group.
    sync_done: tokio::sync::Notify,
    /// Set while [`Journal::run_sync_writer`] runs; without it `sync` appends inline.
    sync_writer: AtomicBool,
}

/// A batch waiting for the group-commit writer.
struct SyncEntry {
    log: Vec<store::NewEvent>,
    events: Vec<NewEvent>,
    done: tokio::sync::oneshot::Sender<Result<IngestReport, Error>>,
}

/// Most events the group-commit writer appends in one write.
const GROUP_MAX_EVENTS: usize = 50_000;

fn stored(event: &NewEvent, recommendation_id: Option<String>) -> store::NewEvent {
    store::NewEvent {
        event_id: event.event_id.clone(),
        user_id: event.user_id.clone(),
        item_id: event.item_id.clone(),
        kind: event.kind.as_str().to_string(),
        value: event.value,
        ts_ms: event.ts_ms,
        recommendation_id,
    }
}

/// A batch taken out of the unflushed queue; dropped while still holding it (the append
/// failed or was cancelled), it goes back to the front of the queue.
struct Requeue<'a> {
    journal: &'a Journal,
    batch: Option<Vec<store::NewEvent>>,
}

impl Drop for Requeue<'_> {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            let mut queue = self.journal.unflushed.lock();
            for event in batch.into_iter().rev() {
                queue.push_front(event);
            }
            self.journal.writing.store(0, Ordering::Release);
        }
    }
}

impl Journal {
    /// Opens the store (creating it and applying migrations as needed).
    pub async fn open(
        config: StoreConfig,
        snapshots: SnapshotSettings,
        metrics: JournalMetrics,
        retry_after: u64,
    ) -> Result<Journal, Error> {
        let store = Store::open(&config).await.map_err(store_error)?;
        Ok(Journal {
            store,
            config,
            snapshots,
            metrics,
            retry_after,
            order: tokio::sync::Mutex::new(()),
            snapshot_lock: tokio::sync::Mutex::new(()),
            unflushed: parking_lot::Mutex::new(VecDeque::new()),
            writing: AtomicUsize::new(0),
            flush_lock: tokio::sync::Mutex::new(()),
            kick: tokio::sync::Notify::new(),
            space: tokio::sync::Notify::new(),
            last_snapshot_id: AtomicU64::new(0),
            sync_queue: parking_lot::Mutex::new(VecDeque::new()),
            sync_pending: AtomicUsize::new(0),
            sync_kick: tokio::sync::Notify::new(),
            sync_done: tokio::sync::Notify::new(),
            sync_writer: AtomicBool::new(false),
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

    fn overloaded(&self, actor: &'static str) -> Error {
        Error::Overloaded {
            actor,
            retry_after: self.retry_after,
        }
    }

    /// Logs and applies a batch of validated events (`recommendation_ids[i]` belongs to
    /// `events[i]`), as the durability mode says.
    pub async fn record(
        &self,
        engine: &Engine,
        events: Vec<NewEvent>,
        recommendation_ids: Vec<Option<String>>,
    ) -> Result<IngestReport, Error> {
        // Events on deleted items are refused before they reach the log, so a restart replays
        // only what was applied.
        let mut refused = Vec::new();
        let mut keep = Vec::with_capacity(events.len());
        let mut log = Vec::with_capacity(events.len());
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
            log.push(stored(&event, rec));
            keep.push(event);
        }
        let pending = {
            let _order = self.order.lock().await;
            // Batches queued for the group commit are admitted but not dispatched yet: keep
            // room for them, so their dispatch after the durable append finds it.
            let queued = self.sync_pending.load(Ordering::Acquire);
            engine
                .admit_reserving(&keep, queued)
                .map_err(|e| Error::from_actor(e, self.retry_after))?;
            match self.config.durability {
                Durability::Sync if self.sync_writer.load(Ordering::Acquire) => {
                    // Queued under the order lock, so the group-commit writer appends and
                    // applies in dispatch order; the request waits for its batch below.
                    let (done, result) = tokio::sync::oneshot::channel();
                    self.sync_pending.fetch_add(1, Ordering::AcqRel);
                    self.sync_queue.lock().push_back(SyncEntry {
                        log,
                        events: keep,
                        done,
                    });
                    self.sync_kick.notify_one();
                    drop(_order);
                    let mut report = result.await.map_err(|_| Error::ShuttingDown)??;
                    report.rejected.extend(refused);
                    return Ok(report);
                }
                Durability::Sync => {
                    // Durable before applied. Should the dispatch below still find a mailbox
                    // full, the client gets a 503 and the logged events apply on the next
                    // restart: retries carry event ids, so nothing is counted twice.
                    if !log.is_empty() {
                        let started = Instant::now();
                        self.store.append_events(&log).await.map_err(store_error)?;
                        self.metrics.observe_append(started.elapsed(), log.len());
                    }
                    engine
                        .dispatch(keep)
                        .map_err(|e| Error::from_actor(e, self.retry_after))?
                }
                Durability::Async => {
                    // A full window waits (bounded) for the writer before refusing.
                    let deadline = Instant::now() + ASYNC_WAIT;
                    loop {
                        let room = self.space.notified();
                        let window = self.unflushed.lock().len()
                            + self.writing.load(Ordering::Acquire)
                            + log.len();
                        if window <= self.config.flush_max_events {
                            break;
                        }
                        self.kick.notify_one();
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() || tokio::time::timeout(left, room).await.is_err() {
                            self.metrics.log_backpressure.inc();
                            return Err(self.overloaded("event_log"));
                        }
                    }
                    let pending = engine
                        .dispatch(keep)
                        .map_err(|e| Error::from_actor(e, self.retry_after))?;
                    // Queued under the order lock, so the log keeps the dispatch order.
                    let mut queue = self.unflushed.lock();
                    queue.extend(log);
                    self.metrics
                        .unflushed
                        .set((queue.len() + self.writing.load(Ordering::Acquire)) as i64);
                    if 2 * queue.len() >= self.config.flush_max_events {
                        self.kick.notify_one();
                    }
                    pending
                }
            }
        };
        let mut report = pending
            .wait()
            .await
            .map_err(|e| Error::from_actor(e, self.retry_after))?;
        report.rejected.extend(refused);
        Ok(report)
    }

    /// `sync` mode: the group-commit writer. Takes every batch queued by [`Journal::record`]
    /// (in dispatch order, up to [`GROUP_MAX_EVENTS`] events), appends them in one durable
    /// write, then applies them to the engine in the same order and answers each request. Under
    /// load many small batches share one commit instead of queueing for one each. Runs for the
    /// life of the server (started once the state is restored); a failed write fails every
    /// request of its group, which applied nothing.
    ///
    /// [`Journal::enable_group_commit`] must be called first (before the server takes
    /// traffic), so no batch takes the inline path while the writer starts.
    pub async fn run_sync_writer(&self, engine: &Engine) {
        loop {
            let kicked = self.sync_kick.notified();
            if self.sync_queue.lock().is_empty() {
                kicked.await;
                continue;
            }
            self.write_sync_group(engine).await;
        }
    }

    /// From now on `sync` batches queue for [`Journal::run_sync_writer`] instead of being
    /// appended inline (a journal without a running writer keeps the inline path).
    pub fn enable_group_commit(&self) {
        self.sync_writer.store(true, Ordering::Release);
    }

    async fn write_sync_group(&self, engine: &Engine) {
        let mut group: Vec<SyncEntry> = Vec::new();
        {
            let mut queue = self.sync_queue.lock();
            let mut events = 0;
            while let Some(entry) = queue.front() {
                if !group.is_empty() && events + entry.log.len() > GROUP_MAX_EVENTS {
                    break;
                }
                events += entry.log.len();
                group.extend(queue.pop_front());
            }
        }
        let batches = group.len();
        let log: Vec<store::NewEvent> = group
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
                let message = format!("store: {error}");
                for entry in group {
                    let _ = entry.done.send(Err(Error::Internal {
                        message: message.clone(),
                    }));
                }
            }
            Ok(()) => {
                if !log.is_empty() {
                    self.metrics.observe_append(started.elapsed(), log.len());
                }
                // Durable: apply in order (each dispatch queues its shard messages behind the
                // previous one's), then wait for the shards and answer.
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
        self.sync_pending.fetch_sub(batches, Ordering::AcqRel);
        self.sync_done.notify_waiters();
    }

    /// Waits until the group-commit writer has written and applied every queued batch (call
    /// under the order lock, so none is added meanwhile).
    async fn drain_sync(&self) {
        loop {
            let done = self.sync_done.notified();
            if self.sync_pending.load(Ordering::Acquire) == 0 {
                return;
            }
            self.sync_kick.notify_one();
            done.await;
        }
    }

    /// `async` mode: writes every queued event to the log (in order). A no-op in `sync` mode.
    pub async fn flush(&self) -> Result<usize, Error> {
        let _writer = self.flush_lock.lock().await;
        let mut written = 0;
        loop {
            // Moved out, not copied: the writer is the only consumer (under `flush_lock`), and
            // a failed append puts the batch back in front, in order.
            let batch: Vec<store::NewEvent> = {
                let mut queue = self.unflushed.lock();
                let n = queue.len().min(REPLAY_PAGE);
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
                journal: self,
                batch: Some(batch),
            };
            let started = Instant::now();
            let appended = match guard.batch.as_deref() {
                Some(batch) => self.store.append_events(batch).await.map(|_| ()),
                None => Ok(()),
            };
            appended.map_err(store_error)?;
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

    /// `async` mode: the background writer. Appends the queue every `every`, or as soon as
    /// the window is half full; never returns (failures are logged and retried).
    pub async fn run_writer(&self, every: Duration) {
        loop {
            let _ = tokio::time::timeout(every, self.kick.notified()).await;
            if let Err(error) = self.flush().await {
                tracing::warn!(%error, "event log write failed; will retry");
                tokio::time::sleep(every).await;
            }
        }
    }

    /// Writes a snapshot of every shard and the item id table, covering the log up to the
    /// last appended sequence number; then prunes old snapshots and, past the retention,
    /// covered events.
    pub async fn snapshot(&self, engine: &Engine) -> Result<SnapshotStats, Error> {
        self.snapshot_with(engine, true).await
    }

    /// The final snapshot at shutdown: [`Journal::snapshot`] without the clean-up (older
    /// snapshots and covered events stay until the next snapshot prunes them), so the time
    /// left before the deadline goes to making the new snapshot durable.
    pub async fn final_snapshot(&self, engine: &Engine) -> Result<SnapshotStats, Error> {
        self.snapshot_with(engine, false).await
    }

    async fn snapshot_with(&self, engine: &Engine, clean_up: bool) -> Result<SnapshotStats, Error> {
        let _snapshot = self.snapshot_lock.lock().await;
        let started = Instant::now();
        let (covers_seq, export) = {
            let _order = self.order.lock().await;
            self.drain_sync().await;
            self.flush().await?;
            let covers = self.store.last_seq().await.map_err(store_error)?;
            let export = engine
                .request_export()
                .map_err(|e| Error::from_actor(e, self.retry_after))?;
            (covers, export)
        };
        let export = export
            .await
            .map_err(|e| Error::from_actor(e, self.retry_after))?;
        let exported = started.elapsed().as_secs_f64();
        let mut parts = Vec::with_capacity(export.users.len() + export.event_ids.len() + 1);
        parts.push(SnapshotPart {
            key: "items".into(),
            user_id: None,
            bytes: encode_item_slots(&export.items),
        });
        for (shard, ids) in export.event_ids.iter().enumerate() {
            parts.push(SnapshotPart {
                key: format!("{EVENT_IDS_PREFIX}{shard}"),
                user_id: None,
                bytes: encode_dedupe(ids),
            });
        }
        // Users in a fixed number of chunks (by a hash of the id), not one part each: a
        // million parts cost the store seconds of index updates per snapshot.
        let users = export.users.len();
        let mut chunks: Vec<Vec<&momentum_actors::snapshot::UserRecord>> =
            vec![Vec::new(); USER_CHUNKS];
        for record in &export.users {
            chunks[user_chunk(&record.user_id)].push(record);
        }
        for (chunk, records) in chunks.into_iter().enumerate() {
            if !records.is_empty() {
                parts.push(SnapshotPart {
                    key: users_chunk_key(chunk),
                    user_id: None,
                    bytes: encode_user_chunk(records),
                });
            }
        }
        let bytes = parts.iter().map(|p| p.bytes.len()).sum();
        let encoded = started.elapsed().as_secs_f64();
        let created_ms = now_ms();
        let id = (created_ms.max(0) as u64).max(self.last_snapshot_id.load(Ordering::Acquire) + 1);
        let meta = SnapshotMeta {
            id,
            covers_seq,
            created_ms,
        };
        self.store
            .put_snapshot(&meta, &parts)
            .await
            .map_err(store_error)?;
        self.last_snapshot_id.store(id, Ordering::Release);
        // Read back what was written: a snapshot that does not verify must not be the one the
        // next start restores (it fails loudly there instead of restoring less).
        self.store.verify_snapshot(id).await.map_err(store_error)?;
        let written = started.elapsed().as_secs_f64();
        let mut pruned_events = 0;
        if clean_up {
            self.store
                .prune_snapshots(self.snapshots.keep.max(1))
                .await
                .map_err(store_error)?;
            let cutoff = created_ms - i64::from(self.config.retention_days) * 86_400_000;
            pruned_events = self
                .store
                .prune_events(cutoff, covers_seq)
                .await
                .map_err(store_error)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.snapshot_duration.observe(seconds);
        self.metrics.snapshot_bytes.set(bytes as i64);
        self.metrics.snapshot_covers_seq.set(covers_seq as i64);
        self.metrics
            .snapshot_last_success
            .set(created_ms as f64 / 1000.0);
        self.metrics.pruned_events.inc_by(pruned_events);
        tracing::info!(
            id,
            covers_seq,
            users,
            bytes,
            seconds,
            export_s = exported,
            encode_s = encoded - exported,
            write_s = written - encoded,
            clean_up_s = seconds - written,
            "snapshot written"
        );
        Ok(SnapshotStats {
            id,
            covers_seq,
            users,
            bytes,
            seconds,
            pruned_events,
        })
    }

    /// Rebuilds the engine from the newest snapshot and the log after it, then the item
    /// metadata and user profiles. Call once, before the server takes traffic.
    pub async fn restore(&self, engine: &Engine) -> Result<RestoreStats, Error> {
        let started = Instant::now();
        let mut covers = 0;
        let mut snapshot_users = 0;
        if let Some((meta, parts)) = self.store.latest_snapshot().await.map_err(store_error)? {
            let mut export = EngineExport::default();
            let mut shard_ids: Vec<(usize, Vec<_>)> = Vec::new();
            for part in parts {
                let corrupt = |e: momentum_actors::snapshot::DecodeError| Error::Internal {
                    message: format!("snapshot {} part {}: {e}", meta.id, part.key),
                };
                if part.key == "items" {
                    export.items = decode_item_slots(&part.bytes).map_err(corrupt)?;
                } else if let Some(shard) = part.key.strip_prefix(EVENT_IDS_PREFIX) {
                    let shard = shard.parse().unwrap_or(0);
                    shard_ids.push((shard, decode_dedupe(&part.bytes).map_err(corrupt)?));
                } else if part.key.starts_with(USERS_PREFIX) {
                    export
                        .users
                        .extend(decode_user_chunk(&part.bytes).map_err(corrupt)?);
                } else if part.user_id.is_some() {
                    export
                        .users
                        .push(decode_user(&part.bytes).map_err(corrupt)?);
                }
            }
            shard_ids.sort_by_key(|(shard, _)| *shard);
            export.event_ids = shard_ids.into_iter().map(|(_, ids)| ids).collect();
            snapshot_users = export.users.len();
            let refused = engine.import(export).await.map_err(actor_error)?;
            if refused > 0 {
                tracing::warn!(refused, "snapshot records refused by the id bounds");
            }
            covers = meta.covers_seq;
            self.last_snapshot_id.store(meta.id, Ordering::Release);
        }
        let mut replayed = 0u64;
        // The reader fetches the next page while the engine applies the current one.
        let mut log = self.store.read_log(covers, REPLAY_PAGE);
        while let Some(page) = log.next_page().await {
            let page = page.map_err(store_error)?;
            let events: Vec<NewEvent> = page
                .into_iter()
                .enumerate()
                .filter_map(|(index, e)| {
                    let kind = EventKind::parse(&e.event.kind)?;
                    Some(NewEvent {
                        index,
                        event_id: e.event.event_id,
                        user_id: e.event.user_id,
                        item_id: e.event.item_id,
                        kind,
                        value: e.event.value,
                        ts_ms: e.event.ts_ms,
                    })
                })
                .collect();
            replayed += events.len() as u64;
            engine.record_events(events).await.map_err(actor_error)?;
        }
        // Metadata after the rows: items interned by the snapshot and the log keep their ids,
        // and events replayed above were applied while their items were still live.
        let items = self.store.get_items().await.map_err(store_error)?;
        for item in &items {
            if !item.meta.is_null() {
                let meta: ItemMeta = serde_json::from_value(item.meta.clone()).unwrap_or_default();
                engine
                    .put_item(&item.item_id, meta)
                    .await
                    .map_err(actor_error)?;
            }
        }
        for item in items.iter().filter(|i| i.deleted) {
            if engine.get_item(&item.item_id).is_ok() {
                engine
                    .delete_item(&item.item_id)
                    .await
                    .map_err(actor_error)?;
            }
        }
        for user in self.store.get_users().await.map_err(store_error)? {
            let profile: UserProfile = serde_json::from_value(user.profile).unwrap_or_default();
            engine
                .put_user(&user.user_id, profile)
                .await
                .map_err(actor_error)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.restore_duration.set(seconds);
        tracing::info!(
            snapshot_users,
            replayed,
            seconds,
            "state restored from the store"
        );
        Ok(RestoreStats {
            snapshot_users,
            replayed_events: replayed,
            seconds,
        })
    }

    /// GDPR erasure: the user leaves memory, the log, every snapshot and every table.
    pub async fn erase_user(&self, engine: &Engine, user_id: &str) -> Result<bool, Error> {
        let _snapshot = self.snapshot_lock.lock().await;
        let _order = self.order.lock().await;
        // Queued events of theirs must not reach the log after the erasure.
        self.drain_sync().await;
        self.flush().await?;
        // Their record sits in one user chunk of every stored snapshot, and their remembered
        // event ids in the shared `event_ids:` parts under their dense id: those parts are
        // rewritten without them (older-format event id parts, which hold the id texts, are
        // rewritten hashed). Parts of older snapshots owned by them are deleted.
        let dense = engine.index().users.get(user_id);
        let known = engine.erase_user(user_id).await.map_err(actor_error)?;
        let erased: std::sync::Arc<str> = std::sync::Arc::from(user_id);
        let scrub: store::PartScrub = std::sync::Arc::new(move |key: &str, bytes: &[u8]| {
            if key.starts_with(USERS_PREFIX) {
                let records = decode_user_chunk(bytes).ok()?;
                let before = records.len();
                let kept: Vec<_> = records
                    .into_iter()
                    .filter(|r| r.user_id != erased)
                    .collect();
                return (kept.len() != before).then(|| encode_user_chunk(&kept));
            }
            let entries = decode_dedupe(bytes).ok()?;
            let old_format = bytes.first() != encode_dedupe(&[]).first();
            let kept: Vec<_> = entries
                .iter()
                .copied()
                .filter(|e| Some(e.0) != dense)
                .collect();
            (old_format || kept.len() != entries.len()).then(|| encode_dedupe(&kept))
        });
        let report = self
            .store
            .erase_user_scrubbing(
                user_id,
                vec![
                    EVENT_IDS_PREFIX.to_owned(),
                    users_chunk_key(user_chunk(user_id)),
                ],
                scrub,
            )
            .await
            .map_err(store_error)?;
        let stored = report.removed.total() > 0;
        tracing::info!(
            removed_rows = report.removed.total(),
            rewritten_parts = report.rewritten_parts,
            "user erased"
        );
        Ok(known || stored)
    }

    /// Persists item metadata (called after the engine accepted it).
    pub async fn put_item(&self, item_id: &str, meta: &ItemMeta) -> Result<(), Error> {
        let value = serde_json::to_value(meta).unwrap_or_else(|_| json!({}));
        self.store
            .put_item(item_id, &value)
            .await
            .map_err(store_error)
    }

    /// Persists an item deletion.
    pub async fn delete_item(&self, item_id: &str) -> Result<(), Error> {
        self.store.delete_item(item_id).await.map_err(store_error)
    }

    /// Persists a user profile.
    pub async fn put_user(&self, user_id: &str, profile: &UserProfile) -> Result<(), Error> {
        let value = serde_json::to_value(profile).unwrap_or_else(|_| json!({}));
        self.store
            .put_user(user_id, &value)
            .await
            .map_err(store_error)
    }
}

/// Store failures are internal errors: logged, not sent. A locked or damaged store keeps its
/// one-line message (it names the store and what to do), as does unreadable stored data.
pub fn store_error(e: store::StoreError) -> Error {
    match e {
        store::StoreError::Locked { message } | store::StoreError::Damaged { message } => {
            Error::Store { message }
        }
        store::StoreError::Corrupt { message } => Error::Store {
            message: format!(
                "the store holds data that cannot be decoded ({message}): run `momentum store \
                 check`, then `momentum store recover` (docs/operations.md, \"Store damage\")"
            ),
        },
        other => Error::Internal {
            message: format!("store: {other}"),
        },
    }
}

fn actor_error(e: ActorError) -> Error {
    Error::from_actor(e, 1)
}
