//! The durable side of Momentum: the event log, snapshots of the hot state, user profiles,
//! item metadata and (for the trainer and the churn scheduler) training rows, models,
//! interventions and churn scores. Memory is the source of truth while the server runs; the
//! store is what survives it.
//!
//! [`Store`] is the one boundary, an enum over two real back-ends so that async methods need no
//! boxing:
//!
//! - [`EmbeddedStore`] (`store.kind = "embedded"`, the default): a [`redb`] database in one file,
//!   `<store.path>/momentum.redb`, so `cargo run` needs no server. redb is synchronous; every
//!   call runs on tokio's blocking pool.
//! - [`PostgresStore`] (`store.kind = "postgres"`): `tokio-postgres` through a `deadpool`
//!   pool; the schema is versioned with `refinery` (SQL files in `migrations/`, embedded in the
//!   binary) and migrated on [`Store::open`]. Events are written with binary `COPY`.
//!
//! # Contracts (both back-ends, checked by one shared test suite)
//!
//! - **Event log.** [`Store::append_events`] gives the batch the next contiguous range of
//!   sequence numbers and returns only once the batch is durable (redb commits with
//!   `Durability::Immediate`; PostgreSQL commits the transaction, so it is as durable as the
//!   server's `synchronous_commit`). Appends are serialised, so sequence order is commit order:
//!   a reader that has seen `seq = n` has seen every event before it. Sequence numbers are never
//!   reused, not even after [`Store::prune_events`] or [`Store::erase_user`] emptied the log.
//!   Concurrent appends are group-committed (one transaction and one sync for all the batches
//!   waiting), each batch still getting its own contiguous range.
//!   [`Store::events_after`] pages through the log in sequence order (trainer, log tail);
//!   [`Store::read_log`] streams it with read-ahead (restore).
//! - **Snapshots.** [`Store::put_snapshot`] writes a snapshot's metadata and all its parts
//!   atomically, with a digest of the parts ([`snapshot_digest`]); the newest is the one with
//!   the greatest id. [`Store::latest_snapshot`] and [`Store::verify_snapshot`] check the parts
//!   against the digest ([`StoreError::Damaged`] if one is missing, extra or altered). A part
//!   with `user_id = Some(u)` belongs to user `u`, so erasure can delete it (and takes it out
//!   of the digest).
//! - **One writer.** [`Store::open`] fails with [`StoreError::Locked`] while another process
//!   has the store open (embedded: redb's file lock; PostgreSQL: a session advisory lock per
//!   schema), after waiting up to `store.lock_wait_secs`. On PostgreSQL a writer that lost its
//!   lock to a newer one has its writes refused ([`StoreError::Fenced`]).
//! - **Damage.** The embedded store refuses a file it cannot read completely (empty, failing
//!   redb's integrity check, or making redb panic) with [`StoreError::Damaged`];
//!   [`repair`] is `momentum store check|recover`.
//! - **Erasure.** [`Store::erase_user`] deletes, in one transaction, the user's events, snapshot
//!   parts, profile row, training rows, interventions and churn scores;
//!   [`Store::count_user_rows`] counts what is left (the erasure test expects zero). Deleted
//!   bytes may linger in free pages until they are reused (redb) or vacuumed (PostgreSQL).
//! - **Data minimisation.** [`Store::prune_events`] deletes events that are both older than a
//!   cut-off and covered by a snapshot.
//! - **Users and items.** Upserts of the latest profile / metadata; a deleted item stays as a
//!   tombstone (`deleted = true`) so events for it can be refused after a restart.
//!
//! # Figures (`examples/store_bench.rs`, 1,000-event batches, 2 shared cores)
//!
//! Embedded: ≈160–250k events/s appended durably, ≈0.9–1M events/s read back. PostgreSQL
//! (local, `synchronous_commit = on`): ≈50–70k events/s appended, ≈0.5M events/s read back;
//! the server's index maintenance, not the client or the fsync, bounds the append rate, so
//! group commit adds little there. See the README for the measured runs.
//!
//! Call the store from one long-lived tokio runtime (e.g. the actix `System` arbiter): pooled
//! PostgreSQL connections drive their I/O on the runtime that opened them.

/// Forwards a call to the back-end (defined before the modules so `analytics` uses it too).
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Embedded(s) => s.$method($($arg),*).await,
            Store::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

pub mod analytics;
mod codec;
mod embedded;
mod group;
mod postgres;
pub mod repair;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use embedded::EmbeddedStore;
pub use postgres::PostgresStore;

/// Which back-end holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A redb file under `store.path`; needs no server.
    #[default]
    Embedded,
    /// PostgreSQL at `store.url` (or `DATABASE_URL`).
    Postgres,
}

/// When `POST /v1/events` is acknowledged (used by the `async` log writer; the store
/// itself always returns from [`Store::append_events`] only once the batch is durable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledge a batch only after it is in the store.
    #[default]
    Sync,
    /// Acknowledge after the in-memory apply; the log is written behind, and at most
    /// `flush_max_events` events or `flush_interval_ms` milliseconds of events can be lost in
    /// a crash.
    Async,
}

/// The `[store]` section of the settings.
///
/// | key | default | meaning |
/// |---|---|---|
/// | `kind` | `"embedded"` | `"embedded"` or `"postgres"` |
/// | `path` | `"data"` | directory of the embedded database (created if missing) |
/// | `url` | unset | PostgreSQL URL (`postgres://user:pass@host:port/db`); when unset, `DATABASE_URL` is used. A secret: never logged |
/// | `schema` | unset | PostgreSQL schema to use (created if missing); default `public` |
/// | `pool_size` | `8` | PostgreSQL connections in the pool |
/// | `connect_timeout_secs` | `5` | PostgreSQL connect timeout, and how long a caller waits for a pooled connection (×6) |
/// | `cache_mb` | `64` | embedded database page cache |
/// | `durability` | `"sync"` | `"sync"` or `"async"`, see [`Durability`] |
/// | `flush_max_events` | `10000` | async mode: events that may wait unwritten before ingest waits for the log |
/// | `flush_interval_ms` | `100` | async mode: longest time an accepted event waits to be written |
/// | `retention_days` | `180` | events older than this are pruned once a snapshot covers them |
/// | `lock_wait_secs` | `5` | how long start-up waits for another server to release the store (single writer) before giving up |
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub kind: StoreKind,
    pub path: PathBuf,
    pub url: Option<String>,
    pub schema: Option<String>,
    pub pool_size: usize,
    pub connect_timeout_secs: u64,
    pub cache_mb: usize,
    pub durability: Durability,
    pub flush_max_events: usize,
    pub flush_interval_ms: u64,
    pub retention_days: u32,
    pub lock_wait_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Embedded,
            path: PathBuf::from("data"),
            url: None,
            schema: None,
            pool_size: 8,
            connect_timeout_secs: 5,
            cache_mb: 64,
            durability: Durability::Sync,
            flush_max_events: 10_000,
            flush_interval_ms: 100,
            retention_days: 180,
            lock_wait_secs: 5,
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it, even through `{:?}`.
        f.debug_struct("StoreConfig")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("cache_mb", &self.cache_mb)
            .field("durability", &self.durability)
            .field("flush_max_events", &self.flush_max_events)
            .field("flush_interval_ms", &self.flush_interval_ms)
            .field("retention_days", &self.retention_days)
            .field("lock_wait_secs", &self.lock_wait_secs)
            .finish()
    }
}

impl StoreConfig {
    /// The PostgreSQL URL: `url`, else the `DATABASE_URL` environment variable.
    pub fn resolved_url(&self) -> Result<String, StoreError> {
        match &self.url {
            Some(url) if !url.is_empty() => Ok(url.clone()),
            _ => std::env::var("DATABASE_URL").map_err(|_| StoreError::Config {
                message: "store.kind = \"postgres\" needs store.url or DATABASE_URL".into(),
            }),
        }
    }

    /// The retention as milliseconds (for [`Store::prune_events`]).
    pub fn retention_ms(&self) -> i64 {
        momentum_models::clock::days_ms(self.retention_days)
    }
}

/// Everything that can go wrong in the store. Messages never contain the database URL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The database refused or failed an operation (includes connection failures).
    #[error("database: {message}")]
    Db { message: String },
    /// A write contradicts what is stored (e.g. a snapshot id that exists).
    #[error("conflict: {message}")]
    Conflict { message: String },
    /// The schema could not be brought to the current version.
    #[error("schema migration: {message}")]
    Migration { message: String },
    /// Stored data cannot be decoded.
    #[error("corrupt store: {message}")]
    Corrupt { message: String },
    /// The configuration is unusable.
    #[error("store configuration: {message}")]
    Config { message: String },
    /// Another server is the store's writer (start-up only); the message says which store and
    /// what to do.
    #[error("{message}")]
    Locked { message: String },
    /// This server is no longer the store's writer: another server took the store after this
    /// one lost its lock. The write was refused and nothing of it is stored.
    #[error("fenced: {message}")]
    Fenced { message: String },
    /// The store cannot be read completely (a damaged file, a snapshot that fails its
    /// checksum); the message names it and the command that repairs it.
    #[error("{message}")]
    Damaged { message: String },
}

/// An accepted event as the log stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The producer's idempotency key, if it sent one.
    pub event_id: Option<String>,
    pub user_id: String,
    /// `None` for item-less kinds (`app_open`).
    pub item_id: Option<String>,
    /// The event kind (`view`, `complete`, …) as a string so the log outlives enum changes.
    pub kind: String,
    /// Rating or other numeric payload.
    pub value: Option<f32>,
    /// Event time, unix milliseconds.
    pub ts_ms: i64,
    /// The recommendation list this event is attributed to (A/B attribution).
    pub recommendation_id: Option<String>,
}

/// An event read back from the log with its sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Position in the log: strictly increasing in commit order, starting at 1.
    pub seq: u64,
    pub event: EventRecord,
}

/// The sequence numbers given to one appended batch, `first..=last`. An empty batch gets an
/// empty range (`first = last + 1`, `last` = the current last sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    pub first: u64,
    pub last: u64,
}

impl SeqRange {
    /// Number of sequence numbers in the range.
    pub fn len(&self) -> u64 {
        (self.last + 1).saturating_sub(self.first)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Metadata of one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Chosen by the writer; must be unique, and the newest snapshot has the greatest id.
    pub id: u64,
    /// The last log sequence number whose effect the snapshot contains; restore replays
    /// `events_after(covers_seq, ..)`.
    pub covers_seq: u64,
    /// Unix milliseconds.
    pub created_ms: i64,
}

/// One named piece of a snapshot (a shard, the catalogue, a user's row…).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPart {
    /// Unique within the snapshot.
    pub key: String,
    /// The user this part belongs to, so [`Store::erase_user`] can delete it. Parts holding
    /// many users' data must be `None` and are the writer's to keep free of erased users.
    pub user_id: Option<String>,
    pub bytes: Vec<u8>,
}

/// A stored user profile.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredUser {
    pub user_id: String,
    pub profile: serde_json::Value,
    /// When it was last written, unix milliseconds.
    pub updated_ms: i64,
}

/// Stored item metadata; deleted items are kept as tombstones.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredItem {
    pub item_id: String,
    /// `null` for an item deleted before any metadata was stored.
    pub meta: serde_json::Value,
    pub deleted: bool,
    /// When it was last written, unix milliseconds.
    pub updated_ms: i64,
}

/// Rows mentioning one user, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserFootprint {
    pub events: u64,
    pub snapshot_parts: u64,
    pub users: u64,
    pub training_rows: u64,
    pub interventions: u64,
    pub churn_scores: u64,
}

impl UserFootprint {
    /// Rows in all tables together.
    pub fn total(&self) -> u64 {
        self.events
            + self.snapshot_parts
            + self.users
            + self.training_rows
            + self.interventions
            + self.churn_scores
    }
}

/// What [`Store::erase_user`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErasureReport {
    pub removed: UserFootprint,
    /// Shared snapshot parts rewritten without the user (see [`Store::erase_user_scrubbing`]).
    pub rewritten_parts: u64,
}

/// Rewrites a snapshot part shared by many users (given its key and bytes) without one of
/// them: the new bytes, or `None` to keep the part as it is.
pub type PartScrub = std::sync::Arc<dyn Fn(&str, &[u8]) -> Option<Vec<u8>> + Send + Sync>;

/// The store: one of the two back-ends. Cheap to clone (both hold shared handles).
#[derive(Clone)]
pub enum Store {
    Embedded(EmbeddedStore),
    Postgres(PostgresStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Store::Embedded(_) => "Store::Embedded",
            Store::Postgres(_) => "Store::Postgres",
        })
    }
}

/// Pages of the event log that a reader task has read ahead, waiting to be taken.
const READ_AHEAD_PAGES: usize = 2;

/// Where a back-end's log reader task sends its pages.
pub(crate) type PageSender = tokio::sync::mpsc::Sender<Result<Vec<StoredEvent>, StoreError>>;

/// The event log from a sequence number on, in pages, read ahead by a background task (see
/// [`Store::read_log`]). Dropping it stops the task.
pub struct LogReader {
    pages: tokio::sync::mpsc::Receiver<Result<Vec<StoredEvent>, StoreError>>,
}

impl LogReader {
    /// The next page, in sequence order; `None` at the end. After an error comes `None`.
    pub async fn next_page(&mut self) -> Option<Result<Vec<StoredEvent>, StoreError>> {
        self.pages.recv().await
    }
}

impl Store {
    /// Opens the configured back-end: creates the directory / the schema, applies pending
    /// migrations, and checks the connection.
    pub async fn open(cfg: &StoreConfig) -> Result<Store, StoreError> {
        match cfg.kind {
            StoreKind::Embedded => Ok(Store::Embedded(EmbeddedStore::open(cfg).await?)),
            StoreKind::Postgres => Ok(Store::Postgres(PostgresStore::open(cfg).await?)),
        }
    }

    pub fn kind(&self) -> StoreKind {
        match self {
            Store::Embedded(_) => StoreKind::Embedded,
            Store::Postgres(_) => StoreKind::Postgres,
        }
    }

    /// Appends a batch to the event log; returns its sequence numbers once it is durable.
    /// Concurrent calls are group-committed: batches that queue behind a running append are
    /// written together in one transaction, each still getting its own contiguous range.
    /// Dropping the future does not withdraw a batch that is already queued.
    pub async fn append_events(&self, batch: &[EventRecord]) -> Result<SeqRange, StoreError> {
        dispatch!(self.append_events(batch))
    }

    /// Up to `limit` events with `seq > after_seq`, in sequence order.
    pub async fn events_after(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        dispatch!(self.events_after(after_seq, limit))
    }

    /// Reads the whole log after `after_seq` as one consistent view (the log as it was when
    /// the read started; later appends are not included: page on with
    /// [`Store::events_after`] from the last seq seen), in pages of up to `page_size` events.
    /// A background task reads the next pages while the caller applies the current one, so
    /// restore is bound by the slower of the two rather than by their sum. Must be called
    /// inside a tokio runtime.
    pub fn read_log(&self, after_seq: u64, page_size: usize) -> LogReader {
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_PAGES);
        let page_size = page_size.max(1);
        match self {
            Store::Embedded(s) => s.spawn_log_reader(after_seq, page_size, tx),
            Store::Postgres(s) => s.spawn_log_reader(after_seq, page_size, tx),
        }
        LogReader { pages: rx }
    }

    /// The last sequence number ever given out (0 for a new log).
    pub async fn last_seq(&self) -> Result<u64, StoreError> {
        dispatch!(self.last_seq())
    }

    /// Writes a snapshot and all its parts, atomically. An existing id is a
    /// [`StoreError::Conflict`]; part keys must be unique within the snapshot. The parts are
    /// taken, not copied: a snapshot's parts can be most of the process's memory.
    pub async fn put_snapshot(
        &self,
        meta: &SnapshotMeta,
        parts: Vec<SnapshotPart>,
    ) -> Result<(), StoreError> {
        dispatch!(self.put_snapshot(meta, parts))
    }

    /// Reads snapshot `id` back and checks it against the digest stored with it (every part,
    /// in full); an error if it is missing or differs.
    pub async fn verify_snapshot(&self, id: u64) -> Result<(), StoreError> {
        dispatch!(self.verify_snapshot(id))
    }

    /// The snapshot with the greatest id and all its parts (ordered by key), checked against
    /// the digest stored with it: a part that is missing, extra or altered is a
    /// [`StoreError::Damaged`].
    pub async fn latest_snapshot(
        &self,
    ) -> Result<Option<(SnapshotMeta, Vec<SnapshotPart>)>, StoreError> {
        dispatch!(self.latest_snapshot())
    }

    /// Deletes all but the newest `keep` snapshots; returns how many were deleted.
    pub async fn prune_snapshots(&self, keep: usize) -> Result<usize, StoreError> {
        dispatch!(self.prune_snapshots(keep))
    }

    /// Deletes the events with `ts_ms < older_than_ts_ms` **and** `seq <= covered_seq`;
    /// returns how many were deleted.
    pub async fn prune_events(
        &self,
        older_than_ts_ms: i64,
        covered_seq: u64,
    ) -> Result<u64, StoreError> {
        dispatch!(self.prune_events(older_than_ts_ms, covered_seq))
    }

    /// Deletes every stored row of the user (see [`UserFootprint`]) in one transaction.
    pub async fn erase_user(&self, user_id: &str) -> Result<ErasureReport, StoreError> {
        dispatch!(self.erase_user(user_id, None))
    }

    /// [`Store::erase_user`], and in the same transaction every part of every stored snapshot
    /// whose key starts with one of `shared_prefixes` (parts that hold several users' data and
    /// so have no owner) is passed to `scrub` and replaced by what it returns.
    pub async fn erase_user_scrubbing(
        &self,
        user_id: &str,
        shared_prefixes: Vec<String>,
        scrub: PartScrub,
    ) -> Result<ErasureReport, StoreError> {
        let scrub = Some((shared_prefixes, scrub));
        dispatch!(self.erase_user(user_id, scrub))
    }

    /// Counts the rows in every table that mention the user.
    pub async fn count_user_rows(&self, user_id: &str) -> Result<UserFootprint, StoreError> {
        dispatch!(self.count_user_rows(user_id))
    }

    /// Creates or replaces the user's profile.
    pub async fn put_user(
        &self,
        user_id: &str,
        profile: &serde_json::Value,
    ) -> Result<(), StoreError> {
        dispatch!(self.put_user(user_id, profile))
    }

    /// Every stored profile, ordered by user id.
    pub async fn get_users(&self) -> Result<Vec<StoredUser>, StoreError> {
        dispatch!(self.get_users())
    }

    /// Creates or replaces the item's metadata (and undeletes it).
    pub async fn put_item(
        &self,
        item_id: &str,
        meta: &serde_json::Value,
    ) -> Result<(), StoreError> {
        dispatch!(self.put_item(item_id, meta))
    }

    /// Marks the item deleted (a tombstone; an unknown id gets one with `null` metadata).
    pub async fn delete_item(&self, item_id: &str) -> Result<(), StoreError> {
        dispatch!(self.delete_item(item_id))
    }

    /// Every stored item, tombstones included, ordered by item id.
    pub async fn get_items(&self) -> Result<Vec<StoredItem>, StoreError> {
        dispatch!(self.get_items())
    }
}

/// Length of a snapshot digest: the part count (u64 LE) and the XOR of the parts' hashes.
pub(crate) const DIGEST_LEN: usize = 40;

/// sha256 over one part's key, owner and bytes (each length-prefixed).
pub(crate) fn part_hash(key: &str, user_id: Option<&str>, bytes: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((key.len() as u64).to_le_bytes());
    h.update(key.as_bytes());
    match user_id {
        Some(user) => {
            h.update([1]);
            h.update((user.len() as u64).to_le_bytes());
            h.update(user.as_bytes());
        }
        None => h.update([0]),
    }
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
    let mut out = [0; 32];
    out.copy_from_slice(&h.finalize());
    out
}

/// The digest stored with a snapshot: the number of parts and the XOR of their
/// [`part_hash`]es. Written by [`Store::put_snapshot`], checked by [`Store::latest_snapshot`]
/// and [`Store::verify_snapshot`]; a part that is missing, extra or altered changes it.
/// Erasure takes a user's parts out of it ([`digest_without`]) without reading the others.
pub(crate) fn snapshot_digest(parts: &[SnapshotPart]) -> [u8; DIGEST_LEN] {
    SnapshotDigest::of(parts).finish()
}

/// [`snapshot_digest`] part by part, so a snapshot can be checked as it is read instead of
/// being held whole.
#[derive(Debug, Default)]
pub(crate) struct SnapshotDigest {
    parts: u64,
    hashes: [u8; DIGEST_LEN - 8],
}

impl SnapshotDigest {
    pub(crate) fn of(parts: &[SnapshotPart]) -> SnapshotDigest {
        let mut digest = SnapshotDigest::default();
        for part in parts {
            digest.add(&part.key, part.user_id.as_deref(), &part.bytes);
        }
        digest
    }

    pub(crate) fn add(&mut self, key: &str, user_id: Option<&str>, bytes: &[u8]) {
        let h = part_hash(key, user_id, bytes);
        for (o, b) in self.hashes.iter_mut().zip(h) {
            *o ^= b;
        }
        self.parts += 1;
    }

    pub(crate) fn finish(&self) -> [u8; DIGEST_LEN] {
        let mut out = [0; DIGEST_LEN];
        out[..8].copy_from_slice(&self.parts.to_le_bytes());
        out[8..].copy_from_slice(&self.hashes);
        out
    }
}

/// `digest` with one part (given by its [`part_hash`]) taken out; `None` for a malformed
/// digest.
pub(crate) fn digest_without(digest: &[u8], hash: &[u8; 32]) -> Option<Vec<u8>> {
    if digest.len() != DIGEST_LEN {
        return None;
    }
    let mut count = [0; 8];
    count.copy_from_slice(&digest[..8]);
    let count = u64::from_le_bytes(count).checked_sub(1)?;
    let mut out = digest.to_vec();
    out[..8].copy_from_slice(&count.to_le_bytes());
    for (o, b) in out[8..].iter_mut().zip(hash) {
        *o ^= b;
    }
    Some(out)
}

/// `digest` with one part's [`part_hash`] replaced by another's (a part rewritten in place);
/// `None` for a malformed digest.
pub(crate) fn digest_replacing(digest: &[u8], old: &[u8; 32], new: &[u8; 32]) -> Option<Vec<u8>> {
    if digest.len() != DIGEST_LEN {
        return None;
    }
    let mut out = digest.to_vec();
    for ((o, a), b) in out[8..].iter_mut().zip(old).zip(new) {
        *o ^= a ^ b;
    }
    Some(out)
}

/// Checks parts read back against the digest stored with their snapshot (`None`: a snapshot
/// written before digests were stored, accepted as it is).
pub(crate) fn check_snapshot_digest(
    id: u64,
    parts: &[SnapshotPart],
    stored: Option<&[u8]>,
    store: &str,
) -> Result<(), StoreError> {
    check_digest(id, &SnapshotDigest::of(parts), stored, store)
}

/// [`check_snapshot_digest`] for parts hashed as they were read.
pub(crate) fn check_digest(
    id: u64,
    read: &SnapshotDigest,
    stored: Option<&[u8]>,
    store: &str,
) -> Result<(), StoreError> {
    match stored {
        None => Ok(()),
        Some(d) if d == read.finish().as_slice() => Ok(()),
        Some(_) => Err(StoreError::Damaged {
            message: format!(
                "snapshot {id} in {store} does not match its checksum ({} parts read): the \
                 store is damaged; run `momentum store check`, then `momentum store recover` \
                 (see docs/operations.md, \"Store damage\")",
                read.parts
            ),
        }),
    }
}

pub(crate) use momentum_models::clock::now_ms;
