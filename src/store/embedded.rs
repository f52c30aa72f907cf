//! The embedded back-end: one [`redb`] file, `<store.path>/momentum.redb`.
//!
//! redb gives ACID write transactions (one writer at a time, so appends are serialised and
//! sequence order is commit order) and MVCC readers; commits use `Durability::Immediate`
//! (fsync before `commit` returns). Its calls block, so each store call runs as one closure on
//! tokio's blocking pool.
//!
//! Tables (`K → V`):
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | name | `schema_version`, `last_seq` |
//! | `events` | seq | event in the [`codec`](super::codec) form |
//! | `users` | user_id | updated_ms (i64 LE) ++ profile JSON |
//! | `items` | item_id | updated_ms (i64 LE) ++ deleted (u8) ++ metadata JSON |
//! | `snapshots` | id | (covers_seq, created_ms) |
//! | `snapshot_parts` | (snapshot_id, key) | bytes |
//! | `snapshot_part_users` | (snapshot_id, key) | user_id, for parts that have one |
//! | `snapshot_digests` | snapshot_id | sha256 over the parts ([`snapshot_digest`](super::snapshot_digest)) |
//! | `user_snapshot_parts` | (user_id, snapshot_id, key) | `()`: index for erasure |
//! | `training_rows` | (user_id, row_id) | bytes (for the trainer) |
//! | `models` | (name, version) | bytes (for model storage) |
//! | `interventions` | (user_id, day, channel) | bytes (for the churn outbox) |
//! | `churn_scores` | (user_id, day) | bytes (for the churn scheduler) |
//!
//! Tables keyed by user id first make erasure and counting a range scan. The event log has no
//! index by user: with one, every append would also insert at a random place of a second
//! B-tree, which measured five times slower (≈20k instead of ≈100k events/s). Erasure finds
//! the user's events by scanning the log in a read snapshot instead (about a second per few
//! million events, without holding the writer), and pruning scans the covered prefix the same
//! way. The schema version in `meta` guards against opening a file written by a newer,
//! incompatible binary.
//!
//! **Damage.** Opening refuses a file that is empty, that redb cannot open, or that fails
//! redb's integrity check (every page checksum), with [`StoreError::Damaged`] naming the file
//! and the repair command (`momentum store check|recover`, [`super::repair`]). When the check
//! finds damage it can roll back (the newest commit), redb repairs the file in place; the
//! store then records `damaged_ms` in `meta` and keeps refusing until `momentum store recover`
//! has rebuilt it, so a damaged store never serves silently. A redb panic in any call becomes
//! the same error instead of taking the process down.

mod analytics;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use redb::{
    Database, Durability, Key, MultimapTableHandle, ReadTransaction, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableError, TableHandle, Value, WriteTransaction,
};

use super::codec::{decode_event, decode_ts_and_user, encode_event};
use super::group::GroupCommit;
use super::{
    check_digest, check_snapshot_digest, digest_replacing, digest_without, now_ms, part_hash,
    snapshot_digest, ErasureReport, EventRecord, PageSender, PartScrub, SeqRange, SnapshotDigest,
    SnapshotMeta, SnapshotPart, StoreConfig, StoreError, StoredEvent, StoredItem, StoredUser,
    UserFootprint,
};

/// The database file inside `store.path`.
pub const FILE_NAME: &str = "momentum.redb";
/// The layout this binary reads and writes.
const SCHEMA_VERSION: u64 = 1;
const SCHEMA_VERSION_KEY: &str = "schema_version";
const LAST_SEQ_KEY: &str = "last_seq";
/// Set in `meta` when the integrity check had to repair the file: it then refuses to open
/// until `momentum store recover` rebuilt it.
pub(super) const DAMAGED_KEY: &str = "damaged_ms";
/// Events deleted per transaction when pruning, so a large prune neither holds the writer
/// for long nor collects millions of keys in memory.
/// (Small under test so the suite crosses chunk boundaries cheaply.)
const PRUNE_CHUNK: usize = if cfg!(test) { 1_000 } else { 50_000 };

pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
pub(super) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
pub(super) const ITEMS: TableDefinition<&str, &[u8]> = TableDefinition::new("items");
pub(super) const SNAPSHOTS: TableDefinition<u64, (u64, i64)> = TableDefinition::new("snapshots");
pub(super) const SNAPSHOT_PARTS: TableDefinition<(u64, &str), &[u8]> =
    TableDefinition::new("snapshot_parts");
pub(super) const SNAPSHOT_PART_USERS: TableDefinition<(u64, &str), &str> =
    TableDefinition::new("snapshot_part_users");
pub(super) const USER_SNAPSHOT_PARTS: TableDefinition<(&str, u64, &str), ()> =
    TableDefinition::new("user_snapshot_parts");
pub(super) const SNAPSHOT_DIGESTS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("snapshot_digests");
pub(super) const TRAINING_ROWS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("training_rows");
pub(super) const MODELS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("models");
pub(super) const INTERVENTIONS: TableDefinition<(&str, &str, &str), &[u8]> =
    TableDefinition::new("interventions");
pub(super) const CHURN_SCORES: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("churn_scores");

/// The embedded store; clones share the database.
///
/// The handle sits behind a lock that every call holds for its duration (shared), so that an
/// erasure can hold it alone while it replaces the file (see [`EmbeddedStore::rewrite_file`]).
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<RwLock<Database>>,
    dir: PathBuf,
    cache_bytes: usize,
    group: Arc<GroupCommit>,
    /// The database file, for messages.
    file: Arc<PathBuf>,
}

type Result<T> = std::result::Result<T, StoreError>;

/// Maps any redb error; corruption and I/O keep their kind.
pub(super) fn db_err(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(message) => StoreError::Corrupt { message },
        redb::Error::Io(source) => StoreError::Io {
            context: "embedded store".into(),
            source,
        },
        other => StoreError::Db {
            message: other.to_string(),
        },
    }
}

impl EmbeddedStore {
    /// Creates the directory and the database file if needed, then brings the tables to the
    /// current schema version.
    pub(crate) async fn open(cfg: &StoreConfig) -> Result<Self> {
        let dir = cfg.path.clone();
        let file = Arc::new(dir.join(FILE_NAME));
        let cache_bytes = cfg.cache_mb.saturating_mul(1 << 20);
        let wait = Duration::from_secs(cfg.lock_wait_secs);
        let db = {
            let dir = dir.clone();
            blocking(file.clone(), move || open_blocking(&dir, cache_bytes, wait)).await?
        };
        Ok(EmbeddedStore {
            db: Arc::new(RwLock::new(db)),
            dir,
            cache_bytes,
            group: Arc::new(GroupCommit::default()),
            file,
        })
    }

    /// Runs `f` on the blocking pool.
    pub(super) async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        blocking(self.file.clone(), move || f(&db.read())).await
    }

    /// Replaces the database file by a copy of its live contents (every table, row by row,
    /// into a new file, then renamed over the old one), holding every other call off
    /// meanwhile. redb keeps freed pages, and the unused tail of reused ones, with their old
    /// bytes; after an erasure the file must not hold the user's data anywhere. Takes time in
    /// proportion to the size of the store.
    pub(crate) async fn rewrite_file(&self) -> Result<()> {
        let db = self.db.clone();
        let dir = self.dir.clone();
        let cache_bytes = self.cache_bytes;
        blocking(self.file.clone(), move || {
            rewrite_blocking(&mut db.write(), &dir, cache_bytes)
        })
        .await
    }

    pub(crate) async fn append_events(&self, batch: &[EventRecord]) -> Result<SeqRange> {
        if batch.is_empty() {
            let last = self.last_seq().await?;
            return Ok(SeqRange {
                first: last + 1,
                last,
            });
        }
        let db = self.db.clone();
        let file = self.file.clone();
        self.group
            .append(batch, move |batches| {
                blocking(file, move || append_blocking(&db.read(), &batches))
            })
            .await
    }

    /// Streams the log into `pages` from one read transaction (a consistent view).
    pub(crate) fn spawn_log_reader(&self, after_seq: u64, page_size: usize, pages: PageSender) {
        let db = self.db.clone();
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            // A panic must reach the reader as an error, not as an early end of the log.
            let read = catch(|| read_log_blocking(&db.read(), after_seq, page_size, &pages))
                .unwrap_or_else(|panic| Err(panicked(&file, panic.as_ref())));
            if let Err(e) = read {
                let _ = pages.blocking_send(Err(e));
            }
        });
    }

    pub(crate) async fn events_after(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        self.run(move |db| {
            let Some(from) = after_seq.checked_add(1) else {
                return Ok(Vec::new());
            };
            let txn = db.begin_read().map_err(db_err)?;
            let events = txn.open_table(EVENTS).map_err(db_err)?;
            let mut out = Vec::with_capacity(limit.min(100_000));
            for entry in events.range(from..).map_err(db_err)?.take(limit) {
                let (seq, record) = entry.map_err(db_err)?;
                out.push(StoredEvent {
                    seq: seq.value(),
                    event: decode_event(record.value())?,
                });
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn last_seq(&self) -> Result<u64> {
        self.run(read_last_seq).await
    }

    pub(crate) async fn put_snapshot(
        &self,
        meta: &SnapshotMeta,
        parts: Vec<SnapshotPart>,
    ) -> Result<()> {
        let meta = *meta;
        let digest = snapshot_digest(&parts);
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                txn.open_table(SNAPSHOT_DIGESTS)
                    .map_err(db_err)?
                    .insert(meta.id, digest.as_slice())
                    .map_err(db_err)?;
                let mut snapshots = txn.open_table(SNAPSHOTS).map_err(db_err)?;
                if snapshots.get(meta.id).map_err(db_err)?.is_some() {
                    return Err(StoreError::Conflict {
                        message: format!("snapshot {} exists", meta.id),
                    });
                }
                snapshots
                    .insert(meta.id, (meta.covers_seq, meta.created_ms))
                    .map_err(db_err)?;
                let mut stored = txn.open_table(SNAPSHOT_PARTS).map_err(db_err)?;
                let mut owners = txn.open_table(SNAPSHOT_PART_USERS).map_err(db_err)?;
                let mut by_user = txn.open_table(USER_SNAPSHOT_PARTS).map_err(db_err)?;
                for part in &parts {
                    let key = part.key.as_str();
                    if stored
                        .insert((meta.id, key), part.bytes.as_slice())
                        .map_err(db_err)?
                        .is_some()
                    {
                        return Err(StoreError::Conflict {
                            message: format!("snapshot {}: duplicate part key {key:?}", meta.id),
                        });
                    }
                    if let Some(user) = &part.user_id {
                        owners
                            .insert((meta.id, key), user.as_str())
                            .map_err(db_err)?;
                        by_user
                            .insert((user.as_str(), meta.id, key), ())
                            .map_err(db_err)?;
                    }
                }
            }
            // Returning early above drops (aborts) the transaction: all parts or nothing.
            txn.commit().map_err(db_err)
        })
        .await
    }

    pub(crate) async fn verify_snapshot(&self, id: u64) -> Result<()> {
        let file = self.file.clone();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let name = file.display().to_string();
            // Hashed as read: a snapshot can be most of the server's memory.
            let mut read = SnapshotDigest::default();
            let found = visit_snapshot(&txn, Some(id), |key, user_id, bytes| {
                read.add(key, user_id, bytes)
            })?;
            match found {
                Some((meta, Some(digest))) => check_digest(meta.id, &read, Some(&digest), &name),
                Some(_) => Err(StoreError::Damaged {
                    message: format!("snapshot {id} in {name} was written without its checksum"),
                }),
                None => Err(StoreError::Damaged {
                    message: format!("snapshot {id} is missing from {name} right after writing"),
                }),
            }
        })
        .await
    }

    pub(crate) async fn latest_snapshot(
        &self,
    ) -> Result<Option<(SnapshotMeta, Vec<SnapshotPart>)>> {
        let file = self.file.clone();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let Some((meta, parts, digest)) = read_snapshot(&txn, None)? else {
                return Ok(None);
            };
            let name = file.display().to_string();
            check_snapshot_digest(meta.id, &parts, digest.as_deref(), &name)?;
            Ok(Some((meta, parts)))
        })
        .await
    }

    pub(crate) async fn prune_snapshots(&self, keep: usize) -> Result<usize> {
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let removed = {
                let mut snapshots = txn.open_table(SNAPSHOTS).map_err(db_err)?;
                let ids = snapshots
                    .iter()
                    .map_err(db_err)?
                    .map(|e| e.map(|(id, _)| id.value()))
                    .collect::<std::result::Result<Vec<u64>, _>>()
                    .map_err(db_err)?;
                let doomed = &ids[..ids.len().saturating_sub(keep)];
                let mut stored = txn.open_table(SNAPSHOT_PARTS).map_err(db_err)?;
                let mut owners = txn.open_table(SNAPSHOT_PART_USERS).map_err(db_err)?;
                let mut by_user = txn.open_table(USER_SNAPSHOT_PARTS).map_err(db_err)?;
                let mut digests = txn.open_table(SNAPSHOT_DIGESTS).map_err(db_err)?;
                for &id in doomed {
                    snapshots.remove(id).map_err(db_err)?;
                    digests.remove(id).map_err(db_err)?;
                    let mut keys = Vec::new();
                    for entry in stored.range((id, "")..).map_err(db_err)? {
                        let (key, _) = entry.map_err(db_err)?;
                        let (snapshot_id, key) = key.value();
                        if snapshot_id != id {
                            break;
                        }
                        keys.push(key.to_owned());
                    }
                    for key in &keys {
                        stored.remove((id, key.as_str())).map_err(db_err)?;
                        if let Some(user) = owners.remove((id, key.as_str())).map_err(db_err)? {
                            by_user
                                .remove((user.value(), id, key.as_str()))
                                .map_err(db_err)?;
                        }
                    }
                }
                doomed.len()
            };
            txn.commit().map_err(db_err)?;
            Ok(removed)
        })
        .await
    }

    pub(crate) async fn prune_events(
        &self,
        older_than_ts_ms: i64,
        covered_seq: u64,
    ) -> Result<u64> {
        self.run(move |db| {
            let mut removed = 0;
            let mut from = 1;
            while from <= covered_seq {
                // Find the next chunk in a read transaction, so the scan does not hold the
                // writer; events up to `covered_seq` can only disappear meanwhile, not change.
                let mut doomed = Vec::new();
                let mut next = None;
                {
                    let txn = db.begin_read().map_err(db_err)?;
                    let events = txn.open_table(EVENTS).map_err(db_err)?;
                    for entry in events.range(from..=covered_seq).map_err(db_err)? {
                        let (seq, record) = entry.map_err(db_err)?;
                        let seq = seq.value();
                        if doomed.len() == PRUNE_CHUNK {
                            next = Some(seq);
                            break;
                        }
                        let (ts_ms, _) = decode_ts_and_user(record.value())?;
                        if ts_ms < older_than_ts_ms {
                            doomed.push(seq);
                        }
                    }
                }
                if !doomed.is_empty() {
                    let txn = db.begin_write().map_err(db_err)?;
                    {
                        let mut events = txn.open_table(EVENTS).map_err(db_err)?;
                        for &seq in &doomed {
                            if events.remove(seq).map_err(db_err)?.is_some() {
                                removed += 1;
                            }
                        }
                    }
                    txn.commit().map_err(db_err)?;
                }
                match next {
                    Some(seq) => from = seq,
                    None => break,
                }
            }
            Ok(removed)
        })
        .await
    }

    pub(crate) async fn erase_user(
        &self,
        user_id: &str,
        scrub: Option<(Vec<String>, PartScrub)>,
    ) -> Result<ErasureReport> {
        let user = user_id.to_owned();
        let report = self
            .run(move |db| {
                let user = user.as_str();
                // The log has no index by user (it would cost appends several times over), so
                // the user's events are found by a scan of a read snapshot, which does not hold
                // the writer; the write transaction then only checks the events appended since.
                let (mut seqs, scanned_to) = {
                    let txn = db.begin_read().map_err(db_err)?;
                    let last = txn
                        .open_table(META)
                        .map_err(db_err)?
                        .get(LAST_SEQ_KEY)
                        .map_err(db_err)?
                        .map_or(0, |g| g.value());
                    let events = txn.open_table(EVENTS).map_err(db_err)?;
                    (user_seqs(&events, 1, user)?, last)
                };
                let txn = db.begin_write().map_err(db_err)?;
                let mut removed = UserFootprint::default();
                let mut rewritten_parts = 0;
                {
                    // Events appended since the scan, then the deletions.
                    let mut events = txn.open_table(EVENTS).map_err(db_err)?;
                    seqs.extend(user_seqs(&events, scanned_to + 1, user)?);
                    for &seq in &seqs {
                        if events.remove(seq).map_err(db_err)?.is_some() {
                            removed.events += 1;
                        }
                    }

                    let mut by_user = txn.open_table(USER_SNAPSHOT_PARTS).map_err(db_err)?;
                    let mut stored = txn.open_table(SNAPSHOT_PARTS).map_err(db_err)?;
                    let mut owners = txn.open_table(SNAPSHOT_PART_USERS).map_err(db_err)?;
                    let mut parts = Vec::new();
                    for entry in by_user.range((user, 0, "")..).map_err(db_err)? {
                        let (key, _) = entry.map_err(db_err)?;
                        let (owner, id, key) = key.value();
                        if owner != user {
                            break;
                        }
                        parts.push((id, key.to_owned()));
                    }
                    let mut digests = txn.open_table(SNAPSHOT_DIGESTS).map_err(db_err)?;
                    for (id, key) in &parts {
                        let bytes = stored.remove((*id, key.as_str())).map_err(db_err)?;
                        owners.remove((*id, key.as_str())).map_err(db_err)?;
                        by_user.remove((user, *id, key.as_str())).map_err(db_err)?;
                        // The snapshot's digest no longer counts the part.
                        let Some(bytes) = bytes else { continue };
                        let hash = part_hash(key, Some(user), bytes.value());
                        drop(bytes);
                        let old = digests
                            .get(*id)
                            .map_err(db_err)?
                            .map(|d| d.value().to_vec());
                        if let Some(new) = old.and_then(|d| digest_without(&d, &hash)) {
                            digests.insert(*id, new.as_slice()).map_err(db_err)?;
                        }
                    }
                    removed.snapshot_parts = parts.len() as u64;

                    for (prefix, scrub) in scrub
                        .iter()
                        .flat_map(|(prefixes, scrub)| prefixes.iter().map(move |p| (p, scrub)))
                    {
                        let ids = txn
                            .open_table(SNAPSHOTS)
                            .map_err(db_err)?
                            .iter()
                            .map_err(db_err)?
                            .map(|e| e.map(|(id, _)| id.value()))
                            .collect::<std::result::Result<Vec<u64>, _>>()
                            .map_err(db_err)?;
                        for id in ids {
                            let mut rewrites = Vec::new();
                            for entry in stored.range((id, prefix.as_str())..).map_err(db_err)? {
                                let (key, bytes) = entry.map_err(db_err)?;
                                let (snapshot_id, key) = key.value();
                                if snapshot_id != id || !key.starts_with(prefix.as_str()) {
                                    break;
                                }
                                if let Some(new) = scrub(key, bytes.value()) {
                                    let old = part_hash(key, None, bytes.value());
                                    rewrites.push((key.to_owned(), old, new));
                                }
                            }
                            for (key, old, bytes) in &rewrites {
                                stored
                                    .insert((id, key.as_str()), bytes.as_slice())
                                    .map_err(db_err)?;
                                // The rewritten part replaces the old one in the digest.
                                let digest =
                                    digests.get(id).map_err(db_err)?.map(|d| d.value().to_vec());
                                let new = part_hash(key, None, bytes);
                                if let Some(d) =
                                    digest.and_then(|d| digest_replacing(&d, old, &new))
                                {
                                    digests.insert(id, d.as_slice()).map_err(db_err)?;
                                }
                            }
                            rewritten_parts += rewrites.len() as u64;
                        }
                    }

                    let mut users = txn.open_table(USERS).map_err(db_err)?;
                    removed.users = u64::from(users.remove(user).map_err(db_err)?.is_some());

                    let mut training = txn.open_table(TRAINING_ROWS).map_err(db_err)?;
                    removed.training_rows = training
                        .extract_from_if((user, 0)..=(user, u64::MAX), |_, _| true)
                        .map_err(db_err)?
                        .try_fold(0, |n, e| e.map(|_| n + 1))
                        .map_err(db_err)?;

                    let mut interventions = txn.open_table(INTERVENTIONS).map_err(db_err)?;
                    let keys = interventions
                        .range((user, "", "")..)
                        .map_err(db_err)?
                        .map(|e| {
                            e.map(|(k, _)| {
                                let (u, day, channel) = k.value();
                                (u.to_owned(), day.to_owned(), channel.to_owned())
                            })
                        })
                        .take_while(|k| k.as_ref().map_or(true, |(u, _, _)| u == user))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(db_err)?;
                    for (_, day, channel) in &keys {
                        interventions
                            .remove((user, day.as_str(), channel.as_str()))
                            .map_err(db_err)?;
                    }
                    removed.interventions = keys.len() as u64;

                    let mut churn = txn.open_table(CHURN_SCORES).map_err(db_err)?;
                    let days = churn
                        .range((user, "")..)
                        .map_err(db_err)?
                        .map(|e| {
                            e.map(|(k, _)| {
                                let (u, day) = k.value();
                                (u.to_owned(), day.to_owned())
                            })
                        })
                        .take_while(|k| k.as_ref().map_or(true, |(u, _)| u == user))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(db_err)?;
                    for (_, day) in &days {
                        churn.remove((user, day.as_str())).map_err(db_err)?;
                    }
                    removed.churn_scores = days.len() as u64;
                }
                txn.commit().map_err(db_err)?;
                Ok(ErasureReport {
                    removed,
                    rewritten_parts,
                })
            })
            .await?;
        if report.removed.total() > 0 || report.rewritten_parts > 0 {
            self.rewrite_file().await?;
        }
        Ok(report)
    }

    pub(crate) async fn count_user_rows(&self, user_id: &str) -> Result<UserFootprint> {
        let user = user_id.to_owned();
        self.run(move |db| {
            let user = user.as_str();
            let txn = db.begin_read().map_err(db_err)?;
            let mut n = UserFootprint::default();
            let events = txn.open_table(EVENTS).map_err(db_err)?;
            n.events = user_seqs(&events, 1, user)?.len() as u64;
            let by_user = txn.open_table(USER_SNAPSHOT_PARTS).map_err(db_err)?;
            n.snapshot_parts = count_while(by_user.range((user, 0, "")..).map_err(db_err)?, |k| {
                k.0 == user
            })?;
            let users = txn.open_table(USERS).map_err(db_err)?;
            n.users = u64::from(users.get(user).map_err(db_err)?.is_some());
            let training = txn.open_table(TRAINING_ROWS).map_err(db_err)?;
            n.training_rows = count(
                training
                    .range((user, 0)..=(user, u64::MAX))
                    .map_err(db_err)?,
            )?;
            let interventions = txn.open_table(INTERVENTIONS).map_err(db_err)?;
            n.interventions = count_while(
                interventions.range((user, "", "")..).map_err(db_err)?,
                |k| k.0 == user,
            )?;
            let churn = txn.open_table(CHURN_SCORES).map_err(db_err)?;
            n.churn_scores =
                count_while(churn.range((user, "")..).map_err(db_err)?, |k| k.0 == user)?;
            Ok(n)
        })
        .await
    }

    pub(crate) async fn put_user(&self, user_id: &str, profile: &serde_json::Value) -> Result<()> {
        let user = user_id.to_owned();
        let mut record = now_ms().to_le_bytes().to_vec();
        serde_json::to_writer(&mut record, profile).map_err(json_err)?;
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            txn.open_table(USERS)
                .map_err(db_err)?
                .insert(user.as_str(), record.as_slice())
                .map_err(db_err)?;
            txn.commit().map_err(db_err)
        })
        .await
    }

    pub(crate) async fn get_users(&self) -> Result<Vec<StoredUser>> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let users = txn.open_table(USERS).map_err(db_err)?;
            let mut out =
                Vec::with_capacity(usize::try_from(users.len().map_err(db_err)?).unwrap_or(0));
            for entry in users.iter().map_err(db_err)? {
                let (id, record) = entry.map_err(db_err)?;
                let (updated_ms, json) = split_ms(record.value())?;
                out.push(StoredUser {
                    user_id: id.value().to_owned(),
                    profile: serde_json::from_slice(json).map_err(json_err)?,
                    updated_ms,
                });
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn put_item(&self, item_id: &str, meta: &serde_json::Value) -> Result<()> {
        let item = item_id.to_owned();
        let mut record = now_ms().to_le_bytes().to_vec();
        record.push(0);
        serde_json::to_writer(&mut record, meta).map_err(json_err)?;
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            txn.open_table(ITEMS)
                .map_err(db_err)?
                .insert(item.as_str(), record.as_slice())
                .map_err(db_err)?;
            txn.commit().map_err(db_err)
        })
        .await
    }

    pub(crate) async fn delete_item(&self, item_id: &str) -> Result<()> {
        let item = item_id.to_owned();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut items = txn.open_table(ITEMS).map_err(db_err)?;
                let json = match items.get(item.as_str()).map_err(db_err)? {
                    Some(old) => split_item(old.value())?.2.to_vec(),
                    None => b"null".to_vec(),
                };
                let mut record = now_ms().to_le_bytes().to_vec();
                record.push(1);
                record.extend_from_slice(&json);
                items
                    .insert(item.as_str(), record.as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    pub(crate) async fn get_items(&self) -> Result<Vec<StoredItem>> {
        self.run(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let items = txn.open_table(ITEMS).map_err(db_err)?;
            let mut out = Vec::new();
            for entry in items.iter().map_err(db_err)? {
                let (id, record) = entry.map_err(db_err)?;
                let (updated_ms, deleted, json) = split_item(record.value())?;
                out.push(StoredItem {
                    item_id: id.value().to_owned(),
                    meta: serde_json::from_slice(json).map_err(json_err)?,
                    deleted,
                    updated_ms,
                });
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
impl EmbeddedStore {
    /// Changes (or deletes) one stored snapshot part, as damage would.
    pub(super) async fn alter_snapshot_part(&self, id: u64, key: &str, delete: bool) -> Result<()> {
        let key = key.to_owned();
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut parts = txn.open_table(SNAPSHOT_PARTS).map_err(db_err)?;
                if delete {
                    parts.remove((id, key.as_str())).map_err(db_err)?;
                } else {
                    parts
                        .insert((id, key.as_str()), b"altered".as_slice())
                        .map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    /// Rows in the tables later issues fill, for the erasure test.
    pub(super) async fn seed_later_tables(&self, user: &str) -> Result<()> {
        let user = user.to_owned();
        self.run(move |db| {
            let user = user.as_str();
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut training = txn.open_table(TRAINING_ROWS).map_err(db_err)?;
                training
                    .insert((user, 1), b"row".as_slice())
                    .map_err(db_err)?;
                training
                    .insert((user, 2), b"row".as_slice())
                    .map_err(db_err)?;
                txn.open_table(INTERVENTIONS)
                    .map_err(db_err)?
                    .insert((user, "2026-01-01", "push"), b"{}".as_slice())
                    .map_err(db_err)?;
                txn.open_table(CHURN_SCORES)
                    .map_err(db_err)?
                    .insert((user, "2026-01-01"), b"0.5".as_slice())
                    .map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
        .await
    }
}

fn open_blocking(dir: &Path, cache_bytes: usize, lock_wait: Duration) -> Result<Database> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
        context: format!("cannot create the store directory {}", dir.display()),
        source,
    })?;
    let file = dir.join(FILE_NAME);
    if std::fs::metadata(&file).is_ok_and(|m| m.len() == 0) {
        return Err(StoreError::Damaged {
            message: format!(
                "the embedded store file {} is empty (0 bytes), so it holds no Momentum store: \
                 restore it from a backup, or run `momentum store recover` to start over with \
                 an empty store (it keeps the empty file aside)",
                file.display()
            ),
        });
    }
    let deadline = Instant::now() + lock_wait;
    let mut db = loop {
        let opened = catch(|| {
            Database::builder()
                .set_cache_size(cache_bytes)
                .create(&file)
        })
        .map_err(|panic| panicked(&file, panic.as_ref()))?;
        match opened {
            Ok(db) => break db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StoreError::Locked {
                    message: format!(
                        "another Momentum server holds the embedded store {} (file lock; waited \
                         {} s, store.lock_wait_secs): stop it first or use another store.path",
                        file.display(),
                        lock_wait.as_secs()
                    ),
                })
            }
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(source))) => {
                return Err(StoreError::Io {
                    context: format!("cannot open the embedded store {}", file.display()),
                    source,
                })
            }
            Err(other) => return Err(damaged(&file, &other.to_string())),
        }
    };
    let checking = Instant::now();
    let intact = catch(|| db.check_integrity())
        .map_err(|panic| panicked(&file, panic.as_ref()))?
        .map_err(|e| damaged(&file, &format!("integrity check: {e}")))?;
    tracing::info!(
        file = %file.display(),
        bytes = std::fs::metadata(&file).map_or(0, |m| m.len()),
        seconds = checking.elapsed().as_secs_f64(),
        intact,
        "embedded store integrity check"
    );
    if !intact {
        // redb rolled the file back to its last intact commit: mark it, so that it is not
        // served until an operator looked at it.
        mark_damaged(&db).map_err(|e| damaged(&file, &e.to_string()))?;
    }
    let marked = read_meta(&db, DAMAGED_KEY).map_err(|e| damaged(&file, &e.to_string()))?;
    if marked.is_some() {
        return Err(damaged(
            &file,
            "it failed redb's integrity check and was rolled back to its last intact commit, \
             so recent writes may be missing",
        ));
    }
    migrate(&db).map_err(|e| match e {
        StoreError::Corrupt { message } => damaged(&file, &message),
        other => other,
    })?;
    Ok(db)
}

/// The one-line error of a damaged store file.
pub(super) fn damaged(file: &Path, detail: &str) -> StoreError {
    StoreError::Damaged {
        message: format!(
            "the embedded store file {} is damaged ({detail}): run `momentum store check` to \
             see what is readable, then `momentum store recover` to rebuild it from the last \
             intact snapshot and the readable log (docs/operations.md, \"Store damage\")",
            file.display()
        ),
    }
}

/// A panic inside redb, as the error of a damaged file (on one line).
pub(super) fn panicked(file: &Path, panic: &(dyn std::any::Any + Send)) -> StoreError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    let what: String = what
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(200)
        .collect();
    damaged(
        file,
        &format!("the database engine failed reading it: {what}"),
    )
}

thread_local! {
    /// Set while this thread runs redb calls whose panics are caught and reported as
    /// [`StoreError::Damaged`]: the panic hook then stays silent instead of printing a
    /// backtrace for an error that is reported anyway.
    static CAUGHT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` catching panics, with the panic hook silenced for this thread.
pub(super) fn catch<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CAUGHT.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    let was = CAUGHT.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CAUGHT.with(|c| c.set(was));
    result
}

fn mark_damaged(db: &Database) -> Result<()> {
    let txn = db.begin_write().map_err(db_err)?;
    txn.open_table(META)
        .map_err(db_err)?
        .insert(DAMAGED_KEY, u64::try_from(now_ms()).unwrap_or(0))
        .map_err(db_err)?;
    txn.commit().map_err(db_err)
}

pub(super) fn read_meta(db: &Database, key: &str) -> Result<Option<u64>> {
    let txn = db.begin_read().map_err(db_err)?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(db_err(e)),
    };
    let value = meta.get(key).map_err(db_err)?.map(|g| g.value());
    Ok(value)
}

/// Snapshot `id` (or the newest) with its parts and stored digest.
#[allow(clippy::type_complexity)]
pub(super) fn read_snapshot(
    txn: &redb::ReadTransaction,
    id: Option<u64>,
) -> Result<Option<(SnapshotMeta, Vec<SnapshotPart>, Option<Vec<u8>>)>> {
    let mut parts = Vec::new();
    let found = visit_snapshot(txn, id, |key, user_id, bytes| {
        parts.push(SnapshotPart {
            key: key.to_owned(),
            user_id: user_id.map(str::to_owned),
            bytes: bytes.to_vec(),
        })
    })?;
    Ok(found.map(|(meta, digest)| (meta, parts, digest)))
}

/// Calls `visit(key, user, bytes)` on each part of snapshot `id` (or the newest), in key
/// order, as it is read; returns the snapshot and its stored digest.
fn visit_snapshot(
    txn: &redb::ReadTransaction,
    id: Option<u64>,
    mut visit: impl FnMut(&str, Option<&str>, &[u8]),
) -> Result<Option<(SnapshotMeta, Option<Vec<u8>>)>> {
    let snapshots = txn.open_table(SNAPSHOTS).map_err(db_err)?;
    let found = match id {
        Some(id) => snapshots.get(id).map_err(db_err)?.map(|v| (id, v.value())),
        None => snapshots
            .last()
            .map_err(db_err)?
            .map(|(id, v)| (id.value(), v.value())),
    };
    let Some((id, (covers_seq, created_ms))) = found else {
        return Ok(None);
    };
    let stored = txn.open_table(SNAPSHOT_PARTS).map_err(db_err)?;
    let owners = txn.open_table(SNAPSHOT_PART_USERS).map_err(db_err)?;
    for entry in stored.range((id, "")..).map_err(db_err)? {
        let (key, bytes) = entry.map_err(db_err)?;
        let (snapshot_id, key) = key.value();
        if snapshot_id != id {
            break;
        }
        let owner = owners.get((id, key)).map_err(db_err)?;
        visit(key, owner.as_ref().map(|u| u.value()), bytes.value());
    }
    let digest = match txn.open_table(SNAPSHOT_DIGESTS) {
        Ok(digests) => digests.get(id).map_err(db_err)?.map(|d| d.value().to_vec()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(db_err(e)),
    };
    Ok(Some((
        SnapshotMeta {
            id,
            covers_seq,
            created_ms,
        },
        digest,
    )))
}

/// Copies every table of `db` into a new file next to it, renames that over the database
/// file and puts the reopened copy in `db`'s place. Refuses (changing nothing) if the file has
/// a table this binary does not know.
fn rewrite_blocking(db: &mut Database, dir: &Path, cache_bytes: usize) -> Result<()> {
    let file = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.rewrite"));
    let io = |context: &str, source| StoreError::Io {
        context: format!("{context} {}", tmp.display()),
        source,
    };
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", e)),
        _ => {}
    }
    {
        let read = db.begin_read().map_err(db_err)?;
        let known = [
            META.name(),
            EVENTS.name(),
            USERS.name(),
            ITEMS.name(),
            SNAPSHOTS.name(),
            SNAPSHOT_PARTS.name(),
            SNAPSHOT_PART_USERS.name(),
            USER_SNAPSHOT_PARTS.name(),
            TRAINING_ROWS.name(),
            MODELS.name(),
            INTERVENTIONS.name(),
            CHURN_SCORES.name(),
            SNAPSHOT_DIGESTS.name(),
        ];
        let unknown = read
            .list_tables()
            .map_err(db_err)?
            .map(|t| t.name().to_owned())
            .chain(
                read.list_multimap_tables()
                    .map_err(db_err)?
                    .map(|t| t.name().to_owned()),
            )
            .find(|name| !known.contains(&name.as_str()));
        if let Some(name) = unknown {
            return Err(StoreError::Db {
                message: format!("cannot rewrite the store: unknown table {name:?}"),
            });
        }
        let copy = Database::builder().create(&tmp).map_err(db_err)?;
        let write = copy.begin_write().map_err(db_err)?;
        copy_table(&read, &write, META)?;
        copy_table(&read, &write, EVENTS)?;
        copy_table(&read, &write, USERS)?;
        copy_table(&read, &write, ITEMS)?;
        copy_table(&read, &write, SNAPSHOTS)?;
        copy_table(&read, &write, SNAPSHOT_PARTS)?;
        copy_table(&read, &write, SNAPSHOT_PART_USERS)?;
        copy_table(&read, &write, USER_SNAPSHOT_PARTS)?;
        copy_table(&read, &write, TRAINING_ROWS)?;
        copy_table(&read, &write, MODELS)?;
        copy_table(&read, &write, INTERVENTIONS)?;
        copy_table(&read, &write, CHURN_SCORES)?;
        copy_table(&read, &write, SNAPSHOT_DIGESTS)?;
        write.commit().map_err(db_err)?;
    }
    std::fs::rename(&tmp, &file).map_err(|e| io("rename", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync the directory of", e))?;
    // The old handle still has the old (now unlinked) file open; replacing it closes that.
    *db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(&file)
        .map_err(db_err)?;
    Ok(())
}

/// Copies table `def` from `read` into `write` (nothing if `read` does not have it).
fn copy_table<K: Key + 'static, V: Value + 'static>(
    read: &ReadTransaction,
    write: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<()> {
    let from = match read.open_table(def) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(db_err(e)),
    };
    let mut to = write.open_table(def).map_err(db_err)?;
    for entry in from.iter().map_err(db_err)? {
        let (k, v) = entry.map_err(db_err)?;
        to.insert(k.value(), v.value()).map_err(db_err)?;
    }
    Ok(())
}

/// Creates missing tables and records the schema version; refuses a newer file.
pub(super) fn migrate(db: &Database) -> Result<()> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let version = meta
            .get(SCHEMA_VERSION_KEY)
            .map_err(db_err)?
            .map(|g| g.value());
        match version {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::Migration {
                    message: format!(
                        "the embedded store has schema version {v}, this binary knows up to \
                         {SCHEMA_VERSION}"
                    ),
                })
            }
            Some(v) if v == SCHEMA_VERSION => {}
            // Version 1 is the first; later versions add their steps here.
            _ => {
                meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)
                    .map_err(db_err)?;
            }
        }
        if meta.get(LAST_SEQ_KEY).map_err(db_err)?.is_none() {
            meta.insert(LAST_SEQ_KEY, 0).map_err(db_err)?;
        }
        txn.open_table(EVENTS).map_err(db_err)?;
        txn.open_table(USERS).map_err(db_err)?;
        txn.open_table(ITEMS).map_err(db_err)?;
        txn.open_table(SNAPSHOTS).map_err(db_err)?;
        txn.open_table(SNAPSHOT_PARTS).map_err(db_err)?;
        txn.open_table(SNAPSHOT_PART_USERS).map_err(db_err)?;
        txn.open_table(USER_SNAPSHOT_PARTS).map_err(db_err)?;
        txn.open_table(SNAPSHOT_DIGESTS).map_err(db_err)?;
        txn.open_table(TRAINING_ROWS).map_err(db_err)?;
        txn.open_table(MODELS).map_err(db_err)?;
        txn.open_table(INTERVENTIONS).map_err(db_err)?;
        txn.open_table(CHURN_SCORES).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)
}

/// Writes the batches of one group in one transaction; their ranges follow each other.
fn append_blocking(db: &Database, batches: &[Vec<EventRecord>]) -> Result<Vec<SeqRange>> {
    let mut txn = db.begin_write().map_err(db_err)?;
    // redb's default, spelled out: the batch is on disk when `commit` returns.
    txn.set_durability(Durability::Immediate);
    let mut ranges = Vec::with_capacity(batches.len());
    {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let mut seq = meta
            .get(LAST_SEQ_KEY)
            .map_err(db_err)?
            .map_or(0, |g| g.value());
        let mut events = txn.open_table(EVENTS).map_err(db_err)?;
        let mut record = Vec::with_capacity(256);
        for batch in batches {
            let first = seq + 1;
            for e in batch {
                seq += 1;
                record.clear();
                encode_event(e, &mut record);
                events.insert(seq, record.as_slice()).map_err(db_err)?;
            }
            ranges.push(SeqRange { first, last: seq });
        }
        meta.insert(LAST_SEQ_KEY, seq).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)?;
    Ok(ranges)
}

fn read_log_blocking(
    db: &Database,
    after_seq: u64,
    page_size: usize,
    pages: &PageSender,
) -> Result<()> {
    let Some(from) = after_seq.checked_add(1) else {
        return Ok(());
    };
    let txn = db.begin_read().map_err(db_err)?;
    let events = txn.open_table(EVENTS).map_err(db_err)?;
    let mut page = Vec::with_capacity(page_size);
    for entry in events.range(from..).map_err(db_err)? {
        let (seq, record) = entry.map_err(db_err)?;
        page.push(StoredEvent {
            seq: seq.value(),
            event: decode_event(record.value())?,
        });
        if page.len() == page_size {
            let full = std::mem::replace(&mut page, Vec::with_capacity(page_size));
            if pages.blocking_send(Ok(full)).is_err() {
                // The reader was dropped.
                return Ok(());
            }
        }
    }
    if !page.is_empty() {
        let _ = pages.blocking_send(Ok(page));
    }
    Ok(())
}

/// The sequence numbers of `user`'s events from `from` on (a scan of the log).
fn user_seqs(
    events: &impl ReadableTable<u64, &'static [u8]>,
    from: u64,
    user: &str,
) -> Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in events.range(from..).map_err(db_err)? {
        let (seq, record) = entry.map_err(db_err)?;
        if decode_ts_and_user(record.value())?.1 == user {
            seqs.push(seq.value());
        }
    }
    Ok(seqs)
}

fn read_last_seq(db: &Database) -> Result<u64> {
    let txn = db.begin_read().map_err(db_err)?;
    let meta = txn.open_table(META).map_err(db_err)?;
    let last = meta
        .get(LAST_SEQ_KEY)
        .map_err(db_err)?
        .map_or(0, |g| g.value());
    Ok(last)
}

/// Runs a blocking closure on tokio's blocking pool; a panic in it (redb panics on some kinds
/// of damage) becomes [`StoreError::Damaged`] naming `file`.
async fn blocking<T, F>(file: Arc<PathBuf>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(move || catch(f)).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(panicked(&file, panic.as_ref())),
        Err(e) => Err(StoreError::Db {
            message: format!("embedded store task failed: {e}"),
        }),
    }
}

fn count<I, T, E>(mut iter: I) -> Result<u64>
where
    I: Iterator<Item = std::result::Result<T, E>>,
    E: Into<redb::Error>,
{
    iter.try_fold(0, |n, e| e.map(|_| n + 1)).map_err(db_err)
}

/// Counts the leading entries of a key range whose key satisfies `pred`.
fn count_while<K, V, P>(range: redb::Range<'_, K, V>, pred: P) -> Result<u64>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
    P: Fn(&K::SelfType<'_>) -> bool,
{
    let mut n = 0;
    for entry in range {
        let (key, _) = entry.map_err(db_err)?;
        if !pred(&key.value()) {
            break;
        }
        n += 1;
    }
    Ok(n)
}

fn split_ms(record: &[u8]) -> Result<(i64, &[u8])> {
    if record.len() < 8 {
        return Err(StoreError::Corrupt {
            message: "truncated profile record".into(),
        });
    }
    let (ms, rest) = record.split_at(8);
    let mut a = [0; 8];
    a.copy_from_slice(ms);
    Ok((i64::from_le_bytes(a), rest))
}

fn split_item(record: &[u8]) -> Result<(i64, bool, &[u8])> {
    let (ms, rest) = split_ms(record)?;
    match rest.split_first() {
        Some((&deleted, json)) => Ok((ms, deleted != 0, json)),
        None => Err(StoreError::Corrupt {
            message: "truncated item record".into(),
        }),
    }
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        message: format!("stored JSON: {e}"),
    }
}
