//! The PostgreSQL back-end: `tokio-postgres` through a `deadpool` pool, the schema versioned
//! by `refinery` (the SQL files of `migrations/`, embedded in the binary and applied on open
//! under an advisory lock, so two servers starting together migrate once).
//!
//! Appends run one at a time (an async mutex here, and the `log_state` row lock across
//! processes): each takes the next range of sequence numbers from `log_state` and writes the
//! batch with binary `COPY` in the same transaction, so sequence order is commit order.
//! The store is as durable as the server makes a commit (`synchronous_commit`).
//!
//! **One writer per schema.** [`PostgresStore::open`] takes the session advisory lock
//! `(WRITER_LOCK_CLASS, hashtext('momentum.writer:<schema>'))` on a connection of its own,
//! outside the pool, and keeps that connection for the store's lifetime; a second server on
//! the same schema waits up to `store.lock_wait_secs` for it, then fails to start with
//! [`StoreError::Locked`]. Holding the lock, the server increments `log_state.writer_epoch`
//! and remembers the value: every write (append, snapshot, prune, erasure, profile, item)
//! checks in its own transaction that the epoch is still its own. Should the lock connection
//! die and another server take the schema, the epoch has moved on and the old server's writes
//! are refused ([`StoreError::Fenced`]) instead of landing behind the new writer's back. The
//! check shares the `log_state` row lock with the new writer's increment, so a write either
//! commits before the new writer starts reading the store or is refused.
//!
//! Connections use no TLS; the URL may not demand it (`sslmode=require`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use futures_util::TryStreamExt;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{IsolationLevel, NoTls, Row, Transaction};

use super::group::GroupCommit;
use super::{
    check_snapshot_digest, digest_replacing, digest_without, now_ms, part_hash, snapshot_digest,
    ErasureReport, EventRecord, PageSender, PartScrub, SeqRange, SnapshotMeta, SnapshotPart,
    StoreConfig, StoreError, StoredEvent, StoredItem, StoredUser, UserFootprint,
};

mod analytics;

mod embedded {
    refinery::embed_migrations!("migrations");
}

type Result<T> = std::result::Result<T, StoreError>;

/// Column types of the binary `COPY` into `events`, in [`COPY_EVENTS`] order.
const EVENT_TYPES: [Type; 8] = [
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT4,
    Type::INT8,
    Type::TEXT,
];
const COPY_EVENTS: &str = "COPY events (seq, event_id, user_id, item_id, kind, value, ts_ms, \
                           recommendation_id) FROM STDIN (FORMAT binary)";
const SELECT_EVENTS_AFTER: &str = "SELECT seq, event_id, user_id, item_id, kind, value, ts_ms, \
                                   recommendation_id FROM events WHERE seq > $1 ORDER BY seq \
                                   LIMIT $2";
const SELECT_LOG: &str = "SELECT seq, event_id, user_id, item_id, kind, value, ts_ms, \
                          recommendation_id FROM events WHERE seq > $1 ORDER BY seq";
const PART_TYPES: [Type; 4] = [Type::INT8, Type::TEXT, Type::TEXT, Type::BYTEA];
const COPY_PARTS: &str =
    "COPY snapshot_parts (snapshot_id, key, user_id, bytes) FROM STDIN (FORMAT binary)";
/// First key of the writer's advisory lock (the second is the hash of the schema name), so it
/// cannot collide with the one-argument advisory locks of other software.
const WRITER_LOCK_CLASS: i32 = 0x4d4f_4d45;
const TRY_WRITER_LOCK: &str = "SELECT pg_try_advisory_lock($1, \
                               hashtext('momentum.writer:' || coalesce($2::text, current_schema())))";
/// Who holds the writer lock, for the start-up error (best effort).
const WRITER_LOCK_HOLDER: &str = "SELECT l.pid, coalesce(host(a.client_addr), 'local socket'), \
     coalesce(a.application_name, ''), coalesce(to_char(a.backend_start, \
     'YYYY-MM-DD\"T\"HH24:MI:SSOF'), '') \
     FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND l.classid = $1::int8::oid \
     AND l.objid = (hashtext('momentum.writer:' || coalesce($2::text, current_schema()))::int8 \
                    & 4294967295)::oid";

/// The writer lock's connection and the epoch this server took with it.
struct Writer {
    /// Keeps the session (and so the advisory lock) alive; dropping it releases the lock.
    _client: tokio_postgres::Client,
    /// Set when the store is dropped, so the connection's end is not reported as a loss.
    released: Arc<AtomicBool>,
    /// `log_state.writer_epoch` as this server set it.
    epoch: i64,
    /// `postgres schema "x"`, for messages.
    name: String,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.released.store(true, Ordering::Release);
    }
}

impl Writer {
    /// The error (and the loud log line) of a write refused because another server became the
    /// writer.
    fn fenced(&self, current: i64) -> StoreError {
        let message = format!(
            "another Momentum server became the writer of the store {} (writer epoch {current}, \
             this server's {}); this server's writes are refused: stop it",
            self.name, self.epoch
        );
        tracing::error!(%message, "store write refused: this server is no longer the writer");
        StoreError::Fenced { message }
    }
}

/// The PostgreSQL store; clones share the pool and the append lock.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// Serialises appends in this process (and groups concurrent ones) so they do not queue
    /// on the `log_state` row lock holding pooled connections.
    group: Arc<GroupCommit>,
    /// The single-writer lock and fencing epoch.
    writer: Arc<Writer>,
}

/// Maps a driver error to a message with its cause (never the URL); unique violations are
/// conflicts.
fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let mut message = format!("{}: {}", db.severity(), db.message());
        if let Some(detail) = db.detail() {
            message.push_str(" (");
            message.push_str(detail);
            message.push(')');
        }
        if *db.code() == SqlState::UNIQUE_VIOLATION {
            return StoreError::Conflict { message };
        }
        return StoreError::Db { message };
    }
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    StoreError::Db { message }
}

fn pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg_err(e),
        other => StoreError::Db {
            message: format!("connection pool: {other}"),
        },
    }
}

fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Db {
        message: format!("{what} {v} exceeds PostgreSQL BIGINT"),
    })
}

fn to_u64(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt {
        message: format!("negative {what} {v}"),
    })
}

/// A row count or limit as a BIGINT parameter (saturating).
fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Schema names go into SQL and a connection option unquoted: keep them plain.
fn validate_schema(schema: &str) -> Result<()> {
    let mut chars = schema.chars();
    let ok = schema.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Config {
            message: format!(
                "store.schema {schema:?} must be 1-63 characters of [a-z0-9_], not starting \
                 with a digit"
            ),
        })
    }
}

impl PostgresStore {
    /// Takes the schema's writer lock (waiting up to `store.lock_wait_secs`), builds the pool,
    /// creates the schema if one is configured, applies pending migrations and takes the next
    /// writer epoch. Fails if the server cannot be reached or another server holds the lock.
    pub(crate) async fn open(cfg: &StoreConfig) -> Result<Self> {
        let url = cfg.resolved_url()?;
        let mut pg: tokio_postgres::Config = url.parse().map_err(|_| StoreError::Config {
            message: "store.url / DATABASE_URL is not a valid PostgreSQL connection string".into(),
        })?;
        if pg.get_application_name().is_none() {
            pg.application_name("momentum");
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(cfg.connect_timeout_secs));
        }
        if let Some(schema) = &cfg.schema {
            validate_schema(schema)?;
            let options = match pg.get_options() {
                Some(existing) => format!("{existing} -c search_path={schema}"),
                None => format!("-c search_path={schema}"),
            };
            pg.options(options);
        }
        let name = format!(
            "postgres schema {:?}",
            cfg.schema.as_deref().unwrap_or("public")
        );
        let (lock_client, released) = take_writer_lock(&pg, cfg, &name).await?;
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let timeout = Duration::from_secs(cfg.connect_timeout_secs.max(1));
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(timeout))
            .wait_timeout(Some(timeout * 6))
            .build()
            .map_err(|e| StoreError::Config {
                message: format!("connection pool: {e}"),
            })?;
        let unmigrated = PostgresStore {
            pool,
            group: Arc::new(GroupCommit::default()),
            writer: Arc::new(Writer {
                _client: lock_client,
                released,
                epoch: 0,
                name,
            }),
        };
        unmigrated.migrate(cfg.schema.as_deref()).await?;
        let PostgresStore {
            pool,
            group,
            writer,
        } = unmigrated;
        let Ok(mut writer) = Arc::try_unwrap(writer) else {
            unreachable!("the store was not cloned yet");
        };
        writer.epoch = writer
            ._client
            .query_one(
                "UPDATE log_state SET writer_epoch = writer_epoch + 1 RETURNING writer_epoch",
                &[],
            )
            .await
            .map_err(pg_err)?
            .try_get(0)
            .map_err(pg_err)?;
        tracing::info!(store = %writer.name, epoch = writer.epoch, "took the store's writer lock");
        Ok(PostgresStore {
            pool,
            group,
            writer: Arc::new(writer),
        })
    }

    /// Fails with [`StoreError::Fenced`] unless this server is still the writer; holds a share
    /// lock on `log_state` until `tx` ends, so a new writer's epoch increment waits for it.
    async fn check_writer(&self, tx: &Transaction<'_>) -> Result<()> {
        let current: i64 = tx
            .query_one("SELECT writer_epoch FROM log_state FOR SHARE", &[])
            .await
            .map_err(pg_err)?
            .try_get(0)
            .map_err(pg_err)?;
        if current == self.writer.epoch {
            Ok(())
        } else {
            Err(self.writer.fenced(current))
        }
    }

    async fn migrate(&self, schema: Option<&str>) -> Result<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        // One migrator per schema at a time, across processes: two servers starting
        // together must not both create the tables.
        const LOCK: &str = "SELECT pg_advisory_lock(hashtext('momentum.migrations:' || \
                            coalesce($1::text, current_schema())))";
        const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext('momentum.migrations:' || \
                              coalesce($1::text, current_schema())))";
        client.execute(LOCK, &[&schema]).await.map_err(pg_err)?;
        let migrated = async {
            if let Some(schema) = schema {
                client
                    .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                    .await
                    .map_err(pg_err)?;
            }
            embedded::migrations::runner()
                .run_async(&mut **client)
                .await
                .map_err(|e| StoreError::Migration {
                    message: e.to_string(),
                })
        }
        .await;
        let unlocked = client.execute(UNLOCK, &[&schema]).await.map_err(pg_err);
        let report = migrated?;
        unlocked?;
        for m in report.applied_migrations() {
            tracing::info!(version = m.version(), name = m.name(), "applied migration");
        }
        Ok(())
    }

    pub(crate) async fn append_events(&self, batch: &[EventRecord]) -> Result<SeqRange> {
        if batch.is_empty() {
            let last = self.last_seq().await?;
            return Ok(SeqRange {
                first: last + 1,
                last,
            });
        }
        let pool = self.pool.clone();
        let writer = self.writer.clone();
        self.group
            .append(batch, move |batches| async move {
                append_group(&pool, &writer, &batches).await
            })
            .await
    }

    /// Streams the log into `pages` from one query (a consistent view).
    pub(crate) fn spawn_log_reader(&self, after_seq: u64, page_size: usize, pages: PageSender) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            if let Err(e) = read_log(&pool, after_seq, page_size, &pages).await {
                let _ = pages.send(Err(e)).await;
            }
        });
    }

    pub(crate) async fn events_after(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>> {
        let Ok(after) = i64::try_from(after_seq) else {
            return Ok(Vec::new());
        };
        let limit = limit_i64(limit);
        let client = self.pool.get().await.map_err(pool_err)?;
        let stmt = client
            .prepare_cached(SELECT_EVENTS_AFTER)
            .await
            .map_err(pg_err)?;
        let rows = client
            .query(&stmt, &[&after, &limit])
            .await
            .map_err(pg_err)?;
        rows.iter().map(event_from_row).collect()
    }

    pub(crate) async fn last_seq(&self) -> Result<u64> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let row = client
            .query_one("SELECT last_seq FROM log_state", &[])
            .await
            .map_err(pg_err)?;
        to_u64(row.try_get(0).map_err(pg_err)?, "last_seq")
    }

    pub(crate) async fn put_snapshot(
        &self,
        meta: &SnapshotMeta,
        parts: Vec<SnapshotPart>,
    ) -> Result<()> {
        let id = to_i64(meta.id, "snapshot id")?;
        let covers = to_i64(meta.covers_seq, "covers_seq")?;
        let digest = snapshot_digest(&parts).to_vec();
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO snapshots (id, covers_seq, created_ms, digest) VALUES ($1, $2, $3, $4)",
            &[&id, &covers, &meta.created_ms, &digest],
        )
        .await
        .map_err(pg_err)?;
        let sink = tx.copy_in(COPY_PARTS).await.map_err(pg_err)?;
        let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &PART_TYPES));
        for part in parts {
            writer
                .as_mut()
                .write(&[&id, &part.key, &part.user_id, &part.bytes])
                .await
                .map_err(pg_err)?;
        }
        writer.as_mut().finish().await.map_err(pg_err)?;
        // Checked last, so the share lock on `log_state` is held only for the commit.
        self.check_writer(&tx).await?;
        tx.commit().await.map_err(pg_err)
    }

    pub(crate) async fn verify_snapshot(&self, id: u64) -> Result<()> {
        let id = to_i64(id, "snapshot id")?;
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = consistent_view(&mut client).await?;
        let row = tx
            .query_opt(
                "SELECT id, covers_seq, created_ms, digest FROM snapshots WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(pg_err)?
            .ok_or_else(|| StoreError::Damaged {
                message: format!("snapshot {id} is missing right after it was written"),
            })?;
        let (meta, parts, digest) = read_snapshot(&tx, &row).await?;
        tx.commit().await.map_err(pg_err)?;
        let digest = digest.ok_or_else(|| StoreError::Damaged {
            message: format!("snapshot {} was written without its checksum", meta.id),
        })?;
        check_snapshot_digest(meta.id, &parts, Some(&digest), &self.writer.name)
    }

    pub(crate) async fn latest_snapshot(
        &self,
    ) -> Result<Option<(SnapshotMeta, Vec<SnapshotPart>)>> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        // One consistent view: a concurrent prune cannot remove the parts between the reads.
        let tx = consistent_view(&mut client).await?;
        let Some(row) = tx
            .query_opt(
                "SELECT id, covers_seq, created_ms, digest FROM snapshots ORDER BY id DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(pg_err)?
        else {
            return Ok(None);
        };
        let (meta, parts, digest) = read_snapshot(&tx, &row).await?;
        tx.commit().await.map_err(pg_err)?;
        check_snapshot_digest(meta.id, &parts, digest.as_deref(), &self.writer.name)?;
        Ok(Some((meta, parts)))
    }

    /// The greatest snapshot id (for `momentum store recover`).
    pub(super) async fn newest_snapshot_id(&self) -> Result<Option<u64>> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let row = client
            .query_opt("SELECT id FROM snapshots ORDER BY id DESC LIMIT 1", &[])
            .await
            .map_err(pg_err)?;
        row.map(|r| to_u64(r.try_get(0).map_err(pg_err)?, "snapshot id"))
            .transpose()
    }

    /// Deletes one snapshot and its parts (for `momentum store recover`).
    pub(super) async fn delete_snapshot(&self, id: u64) -> Result<()> {
        let id = to_i64(id, "snapshot id")?;
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("DELETE FROM snapshots WHERE id = $1", &[&id])
            .await
            .map_err(pg_err)?;
        self.check_writer(&tx).await?;
        tx.commit().await.map_err(pg_err)
    }

    pub(crate) async fn prune_snapshots(&self, keep: usize) -> Result<usize> {
        let keep = limit_i64(keep);
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let removed = tx
            .execute(
                "DELETE FROM snapshots WHERE id IN \
                 (SELECT id FROM snapshots ORDER BY id DESC OFFSET $1)",
                &[&keep],
            )
            .await
            .map_err(pg_err)?;
        self.check_writer(&tx).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }

    pub(crate) async fn prune_events(
        &self,
        older_than_ts_ms: i64,
        covered_seq: u64,
    ) -> Result<u64> {
        let covered = i64::try_from(covered_seq).unwrap_or(i64::MAX);
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let removed = tx
            .execute(
                "DELETE FROM events WHERE ts_ms < $1 AND seq <= $2",
                &[&older_than_ts_ms, &covered],
            )
            .await
            .map_err(pg_err)?;
        self.check_writer(&tx).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(removed)
    }

    pub(crate) async fn erase_user(
        &self,
        user_id: &str,
        scrub: Option<(Vec<String>, PartScrub)>,
    ) -> Result<ErasureReport> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let mut removed = UserFootprint::default();
        // The user's snapshot parts leave their snapshots' digests too.
        let parts = tx
            .query(
                "DELETE FROM snapshot_parts WHERE user_id = $1 RETURNING snapshot_id, key, bytes",
                &[&user_id],
            )
            .await
            .map_err(pg_err)?;
        removed.snapshot_parts = parts.len() as u64;
        let mut digests = Digests::new();
        for row in &parts {
            let id: i64 = row.try_get(0).map_err(pg_err)?;
            let key: String = row.try_get(1).map_err(pg_err)?;
            let bytes: Vec<u8> = row.try_get(2).map_err(pg_err)?;
            let hash = part_hash(&key, Some(user_id), &bytes);
            let digest = cached_digest(&tx, &mut digests, id).await?;
            *digest = digest.as_deref().and_then(|d| digest_without(d, &hash));
        }
        write_digests(&tx, digests).await?;
        for (table, slot) in [
            ("events", &mut removed.events),
            ("users", &mut removed.users),
            ("training_rows", &mut removed.training_rows),
            ("interventions", &mut removed.interventions),
            ("churn_scores", &mut removed.churn_scores),
        ] {
            *slot = tx
                .execute(
                    &format!("DELETE FROM {table} WHERE user_id = $1"),
                    &[&user_id],
                )
                .await
                .map_err(pg_err)?;
        }
        let mut rewritten_parts = 0;
        let mut rewritten = Digests::new();
        for (prefix, scrub) in scrub
            .iter()
            .flat_map(|(prefixes, scrub)| prefixes.iter().map(move |p| (p, scrub)))
        {
            let rows = tx
                .query(
                    "SELECT snapshot_id, key, bytes FROM snapshot_parts \
                     WHERE user_id IS NULL AND starts_with(key, $1) FOR UPDATE",
                    &[prefix],
                )
                .await
                .map_err(pg_err)?;
            for row in rows {
                let id: i64 = row.try_get(0).map_err(pg_err)?;
                let key: String = row.try_get(1).map_err(pg_err)?;
                let bytes: Vec<u8> = row.try_get(2).map_err(pg_err)?;
                if let Some(new) = scrub(&key, &bytes) {
                    // The rewritten part replaces the old one in its snapshot's digest.
                    let digest = cached_digest(&tx, &mut rewritten, id).await?;
                    *digest = digest.as_deref().and_then(|d| {
                        digest_replacing(
                            d,
                            &part_hash(&key, None, &bytes),
                            &part_hash(&key, None, &new),
                        )
                    });
                    tx.execute(
                        "UPDATE snapshot_parts SET bytes = $3 WHERE snapshot_id = $1 AND key = $2",
                        &[&id, &key, &new],
                    )
                    .await
                    .map_err(pg_err)?;
                    rewritten_parts += 1;
                }
            }
        }
        write_digests(&tx, rewritten).await?;
        self.check_writer(&tx).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(ErasureReport {
            removed,
            rewritten_parts,
        })
    }

    pub(crate) async fn count_user_rows(&self, user_id: &str) -> Result<UserFootprint> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let row = client
            .query_one(
                "SELECT \
                   (SELECT count(*) FROM events WHERE user_id = $1), \
                   (SELECT count(*) FROM snapshot_parts WHERE user_id = $1), \
                   (SELECT count(*) FROM users WHERE user_id = $1), \
                   (SELECT count(*) FROM training_rows WHERE user_id = $1), \
                   (SELECT count(*) FROM interventions WHERE user_id = $1), \
                   (SELECT count(*) FROM churn_scores WHERE user_id = $1)",
                &[&user_id],
            )
            .await
            .map_err(pg_err)?;
        let n = |i: usize| -> Result<u64> { to_u64(row.try_get(i).map_err(pg_err)?, "count") };
        Ok(UserFootprint {
            events: n(0)?,
            snapshot_parts: n(1)?,
            users: n(2)?,
            training_rows: n(3)?,
            interventions: n(4)?,
            churn_scores: n(5)?,
        })
    }

    pub(crate) async fn put_user(&self, user_id: &str, profile: &serde_json::Value) -> Result<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO users (user_id, profile, updated_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE \
             SET profile = EXCLUDED.profile, updated_ms = EXCLUDED.updated_ms",
            &[&user_id, profile, &now_ms()],
        )
        .await
        .map_err(pg_err)?;
        self.check_writer(&tx).await?;
        tx.commit().await.map_err(pg_err)
    }

    pub(crate) async fn get_users(&self) -> Result<Vec<StoredUser>> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let rows = client
            .query(
                "SELECT user_id, profile, updated_ms FROM users ORDER BY user_id COLLATE \"C\"",
                &[],
            )
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                Ok(StoredUser {
                    user_id: r.try_get(0).map_err(pg_err)?,
                    profile: r.try_get(1).map_err(pg_err)?,
                    updated_ms: r.try_get(2).map_err(pg_err)?,
                })
            })
            .collect()
    }

    pub(crate) async fn put_item(&self, item_id: &str, meta: &serde_json::Value) -> Result<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO items (item_id, meta, deleted, updated_ms) VALUES ($1, $2, FALSE, $3) \
             ON CONFLICT (item_id) DO UPDATE \
             SET meta = EXCLUDED.meta, deleted = FALSE, updated_ms = EXCLUDED.updated_ms",
            &[&item_id, meta, &now_ms()],
        )
        .await
        .map_err(pg_err)?;
        self.check_writer(&tx).await?;
        tx.commit().await.map_err(pg_err)
    }

    pub(crate) async fn delete_item(&self, item_id: &str) -> Result<()> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO items (item_id, meta, deleted, updated_ms) \
             VALUES ($1, 'null'::jsonb, TRUE, $2) \
             ON CONFLICT (item_id) DO UPDATE \
             SET deleted = TRUE, updated_ms = EXCLUDED.updated_ms",
            &[&item_id, &now_ms()],
        )
        .await
        .map_err(pg_err)?;
        self.check_writer(&tx).await?;
        tx.commit().await.map_err(pg_err)
    }

    pub(crate) async fn get_items(&self) -> Result<Vec<StoredItem>> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let rows = client
            .query(
                "SELECT item_id, meta, deleted, updated_ms FROM items \
                 ORDER BY item_id COLLATE \"C\"",
                &[],
            )
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                Ok(StoredItem {
                    item_id: r.try_get(0).map_err(pg_err)?,
                    meta: r.try_get(1).map_err(pg_err)?,
                    deleted: r.try_get(2).map_err(pg_err)?,
                    updated_ms: r.try_get(3).map_err(pg_err)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
impl PostgresStore {
    /// Changes (or deletes) one stored snapshot part, as damage would.
    pub(super) async fn alter_snapshot_part(&self, id: u64, key: &str, delete: bool) -> Result<()> {
        let id = to_i64(id, "snapshot id")?;
        let client = self.pool.get().await.map_err(pool_err)?;
        let sql = if delete {
            "DELETE FROM snapshot_parts WHERE snapshot_id = $1 AND key = $2"
        } else {
            "UPDATE snapshot_parts SET bytes = 'altered' WHERE snapshot_id = $1 AND key = $2"
        };
        client.execute(sql, &[&id, &key]).await.map_err(pg_err)?;
        Ok(())
    }

    /// Rows in the tables later issues fill, for the erasure test.
    pub(super) async fn seed_later_tables(&self, user: &str) -> Result<()> {
        let client = self.pool.get().await.map_err(pool_err)?;
        for sql in [
            "INSERT INTO training_rows (user_id, ts_ms, features) VALUES ($1, 0, '{1, 2}')",
            "INSERT INTO training_rows (user_id, ts_ms, features) VALUES ($1, 1, '{3, 4}')",
            "INSERT INTO interventions (user_id, day, tier, channel, payload, created_ms) \
             VALUES ($1, '2026-01-01', 'high', 'push', '{}', 0)",
            "INSERT INTO churn_scores (user_id, day, probability, tier) \
             VALUES ($1, '2026-01-01', 0.5, 'high')",
        ] {
            client.execute(sql, &[&user]).await.map_err(pg_err)?;
        }
        Ok(())
    }
}

/// Writes the batches of one group in one transaction: takes the next range of sequence
/// numbers from `log_state` (its row lock serialises writers across processes too), then
/// binary `COPY`.
async fn append_group(
    pool: &Pool,
    writer: &Writer,
    batches: &[Vec<EventRecord>],
) -> Result<Vec<SeqRange>> {
    let total: usize = batches.iter().map(Vec::len).sum();
    let count = to_i64(total as u64, "batch size")?;
    let mut client = pool.get().await.map_err(pool_err)?;
    let tx = client.transaction().await.map_err(pg_err)?;
    // Only while this server is the writer: a newer writer's epoch makes this match nothing.
    let allocate = tx
        .prepare_cached(
            "UPDATE log_state SET last_seq = last_seq + $1 WHERE writer_epoch = $2 \
             RETURNING last_seq",
        )
        .await
        .map_err(pg_err)?;
    let Some(row) = tx
        .query_opt(&allocate, &[&count, &writer.epoch])
        .await
        .map_err(pg_err)?
    else {
        let current: i64 = tx
            .query_one("SELECT writer_epoch FROM log_state", &[])
            .await
            .map_err(pg_err)?
            .try_get(0)
            .map_err(pg_err)?;
        return Err(writer.fenced(current));
    };
    let last: i64 = row.try_get(0).map_err(pg_err)?;
    let first = to_u64(last - count + 1, "seq")?;
    let sink = tx.copy_in(COPY_EVENTS).await.map_err(pg_err)?;
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &EVENT_TYPES));
    let mut ranges = Vec::with_capacity(batches.len());
    let mut seq = first;
    for batch in batches {
        let batch_first = seq;
        for e in batch {
            let pg_seq = to_i64(seq, "seq")?;
            writer
                .as_mut()
                .write(&[
                    &pg_seq,
                    &e.event_id,
                    &e.user_id,
                    &e.item_id,
                    &e.kind,
                    &e.value,
                    &e.ts_ms,
                    &e.recommendation_id,
                ])
                .await
                .map_err(pg_err)?;
            seq += 1;
        }
        ranges.push(SeqRange {
            first: batch_first,
            last: seq - 1,
        });
    }
    let written = writer.as_mut().finish().await.map_err(pg_err)?;
    debug_assert_eq!(written, total as u64);
    tx.commit().await.map_err(pg_err)?;
    Ok(ranges)
}

/// Takes the schema's writer lock on a connection of its own, retrying until
/// `store.lock_wait_secs` have passed. The connection's end is logged loudly unless the store
/// was dropped (the returned flag).
async fn take_writer_lock(
    pg: &tokio_postgres::Config,
    cfg: &StoreConfig,
    name: &str,
) -> Result<(tokio_postgres::Client, Arc<AtomicBool>)> {
    let (client, connection) = pg.connect(NoTls).await.map_err(pg_err)?;
    let released = Arc::new(AtomicBool::new(false));
    let watch = released.clone();
    let watched = name.to_owned();
    tokio::spawn(async move {
        let outcome = connection.await;
        if !watch.load(Ordering::Acquire) {
            let cause = outcome
                .err()
                .map(|e| pg_err(e).to_string())
                .unwrap_or_default();
            tracing::error!(
                store = %watched,
                %cause,
                "lost the connection holding the store's writer lock: another server may now \
                 take the store, and this server's writes will then be refused; restart it"
            );
        }
    });
    let schema = cfg.schema.as_deref();
    let wait = Duration::from_secs(cfg.lock_wait_secs);
    let deadline = Instant::now() + wait;
    loop {
        let taken: bool = client
            .query_one(TRY_WRITER_LOCK, &[&WRITER_LOCK_CLASS, &schema])
            .await
            .map_err(pg_err)?
            .try_get(0)
            .map_err(pg_err)?;
        if taken {
            return Ok((client, released));
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let class = i64::from(WRITER_LOCK_CLASS);
    let holder = match client
        .query_opt(WRITER_LOCK_HOLDER, &[&class, &schema])
        .await
    {
        Ok(Some(row)) => {
            let pid: i32 = row.try_get(0).unwrap_or(0);
            let addr: String = row.try_get(1).unwrap_or_default();
            let app: String = row.try_get(2).unwrap_or_default();
            let since: String = row.try_get(3).unwrap_or_default();
            format!(", held by PostgreSQL backend {pid} of {app:?} from {addr} since {since}")
        }
        _ => String::new(),
    };
    released.store(true, Ordering::Release);
    Err(StoreError::Locked {
        message: format!(
            "another Momentum server holds the store {name} (advisory lock \
             momentum.writer:{}{holder}; waited {} s, store.lock_wait_secs): stop it first or \
             use another store.schema",
            schema.unwrap_or("public"),
            wait.as_secs()
        ),
    })
}

/// Reads a snapshot's parts and stored digest (`row`: id, covers_seq, created_ms, digest).
/// Snapshot digests an erasure is changing, each read once (`None`: no digest stored).
type Digests = std::collections::BTreeMap<i64, Option<Vec<u8>>>;

/// The digest of snapshot `id` as `digests` holds it, read from the table the first time.
async fn cached_digest<'d>(
    tx: &Transaction<'_>,
    digests: &'d mut Digests,
    id: i64,
) -> Result<&'d mut Option<Vec<u8>>> {
    match digests.entry(id) {
        std::collections::btree_map::Entry::Occupied(entry) => Ok(entry.into_mut()),
        std::collections::btree_map::Entry::Vacant(entry) => {
            let stored = tx
                .query_opt("SELECT digest FROM snapshots WHERE id = $1", &[&id])
                .await
                .map_err(pg_err)?
                .and_then(|r| r.get(0));
            Ok(entry.insert(stored))
        }
    }
}

/// Writes back the digests an erasure changed.
async fn write_digests(tx: &Transaction<'_>, digests: Digests) -> Result<()> {
    for (id, digest) in digests {
        if let Some(digest) = digest {
            tx.execute(
                "UPDATE snapshots SET digest = $2 WHERE id = $1",
                &[&id, &digest],
            )
            .await
            .map_err(pg_err)?;
        }
    }
    Ok(())
}

async fn read_snapshot(
    tx: &Transaction<'_>,
    row: &Row,
) -> Result<(SnapshotMeta, Vec<SnapshotPart>, Option<Vec<u8>>)> {
    let id: i64 = row.try_get(0).map_err(pg_err)?;
    let meta = SnapshotMeta {
        id: to_u64(id, "snapshot id")?,
        covers_seq: to_u64(row.try_get(1).map_err(pg_err)?, "covers_seq")?,
        created_ms: row.try_get(2).map_err(pg_err)?,
    };
    let digest: Option<Vec<u8>> = row.try_get(3).map_err(pg_err)?;
    let rows = tx
        .query(
            "SELECT key, user_id, bytes FROM snapshot_parts WHERE snapshot_id = $1 \
             ORDER BY key COLLATE \"C\"",
            &[&id],
        )
        .await
        .map_err(pg_err)?;
    let parts = rows
        .iter()
        .map(|r| {
            Ok(SnapshotPart {
                key: r.try_get(0).map_err(pg_err)?,
                user_id: r.try_get(1).map_err(pg_err)?,
                bytes: r.try_get(2).map_err(pg_err)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((meta, parts, digest))
}

async fn read_log(pool: &Pool, after_seq: u64, page_size: usize, pages: &PageSender) -> Result<()> {
    let Ok(after) = i64::try_from(after_seq) else {
        return Ok(());
    };
    let client = pool.get().await.map_err(pool_err)?;
    let stmt = client.prepare_cached(SELECT_LOG).await.map_err(pg_err)?;
    let rows = client.query_raw(&stmt, [after]).await.map_err(pg_err)?;
    let mut rows = std::pin::pin!(rows);
    let mut page = Vec::with_capacity(page_size);
    while let Some(row) = rows.try_next().await.map_err(pg_err)? {
        page.push(event_from_row(&row)?);
        if page.len() == page_size {
            let full = std::mem::replace(&mut page, Vec::with_capacity(page_size));
            if pages.send(Ok(full)).await.is_err() {
                // The reader was dropped: stop the server instead of draining the rest, and
                // close this connection instead of returning it to the pool. The cancel
                // request reaches the backend on its own schedule: on a reused connection it
                // cancelled whatever statement the next user ran (seen on CI as
                // "canceling statement due to user request" in an append).
                let _ = client.cancel_token().cancel_query(NoTls).await;
                drop(deadpool_postgres::Object::take(client));
                return Ok(());
            }
        }
    }
    if !page.is_empty() {
        let _ = pages.send(Ok(page)).await;
    }
    Ok(())
}

/// A read-only transaction that sees one snapshot of the database for all its reads.
async fn consistent_view(
    client: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_err)
}

fn event_from_row(r: &Row) -> Result<StoredEvent> {
    Ok(StoredEvent {
        seq: to_u64(r.try_get(0).map_err(pg_err)?, "seq")?,
        event: EventRecord {
            event_id: r.try_get(1).map_err(pg_err)?,
            user_id: r.try_get(2).map_err(pg_err)?,
            item_id: r.try_get(3).map_err(pg_err)?,
            kind: r.try_get(4).map_err(pg_err)?,
            value: r.try_get(5).map_err(pg_err)?,
            ts_ms: r.try_get(6).map_err(pg_err)?,
            recommendation_id: r.try_get(7).map_err(pg_err)?,
        },
    })
}
