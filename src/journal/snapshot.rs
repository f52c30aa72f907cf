//! The snapshot writer, and the layout of a snapshot's parts both ways: an engine export
//! becomes the `items` part, one `event_ids:N` part per shard and a fixed number of user
//! chunks (`users:N.`); restore reads them back into an export.

use std::sync::atomic::Ordering;
use std::time::Instant;

use momentum_actors::engine::{EngineExport, SnapshotExport};
use momentum_actors::snapshot::{
    decode_dedupe, decode_item_slots, decode_user, decode_user_chunk, encode_dedupe,
    encode_item_slots, USER_CHUNKS,
};
use momentum_actors::Engine;
use momentum_models::clock::now_ms;

use super::{Journal, SnapshotStats};
use crate::error::Error;
use crate::store::{SnapshotMeta, SnapshotPart};

/// Key of the part holding the item id table.
const ITEMS_KEY: &str = "items";

/// Key prefix of the parts holding a shard's remembered event ids (`event_ids:N`).
pub(super) const EVENT_IDS_PREFIX: &str = "event_ids:";

/// Key prefix of the parts holding chunks of user records (`users:N.`).
pub(super) const USERS_PREFIX: &str = "users:";

/// The key of user chunk `chunk`; the final dot keeps one key from prefixing another.
pub(super) fn users_chunk_key(chunk: usize) -> String {
    format!("{USERS_PREFIX}{chunk}.")
}

/// The parts of a snapshot of `export`, which they take over: the chunks of users become
/// parts as they are, without a copy.
fn encode_parts(export: SnapshotExport) -> Vec<SnapshotPart> {
    let mut parts = Vec::with_capacity(export.event_ids.len() + USER_CHUNKS + 1);
    parts.push(SnapshotPart {
        key: ITEMS_KEY.into(),
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
    // Users in a fixed number of chunks (by a hash of the id), not one part each: a million
    // parts cost the store seconds of index updates per snapshot.
    for (chunk, bytes) in export.users.into_chunks() {
        parts.push(SnapshotPart {
            key: users_chunk_key(chunk),
            user_id: None,
            bytes,
        });
    }
    parts
}

/// The export stored in the parts of snapshot `id` (older snapshots hold one part per user,
/// owned by that user).
pub(super) fn decode_parts(id: u64, parts: Vec<SnapshotPart>) -> Result<EngineExport, Error> {
    let mut export = EngineExport::default();
    let mut shard_ids: Vec<(usize, Vec<_>)> = Vec::new();
    for part in parts {
        let key = part.key.clone();
        let corrupt = |source| Error::Snapshot {
            id,
            key: key.clone(),
            source,
        };
        if part.key == ITEMS_KEY {
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
    Ok(export)
}

impl Journal {
    /// Writes a snapshot of every shard and the item id table, covering the log up to the
    /// last appended sequence number; then prunes old snapshots and, past the retention,
    /// covered events.
    pub async fn snapshot(&self) -> Result<SnapshotStats, Error> {
        let engine = &*self.engine;
        self.snapshot_with(engine, true).await
    }

    /// The final snapshot at shutdown: [`Journal::snapshot`] without the clean-up (older
    /// snapshots and covered events stay until the next snapshot prunes them), so the time
    /// left before the deadline goes to making the new snapshot durable.
    pub async fn final_snapshot(&self) -> Result<SnapshotStats, Error> {
        let engine = &*self.engine;
        self.snapshot_with(engine, false).await
    }

    async fn snapshot_with(&self, engine: &Engine, clean_up: bool) -> Result<SnapshotStats, Error> {
        let _snapshot = self.snapshot_lock.lock().await;
        let started = Instant::now();
        let (covers_seq, export) = {
            let _order = self.order.lock().await;
            self.write_queued().await?;
            let covers = self.store.last_seq().await?;
            let export = engine
                .request_export()
                .map_err(|e| Error::from_actor(e, self.retry_after))?;
            (covers, export)
        };
        let export = export
            .await
            .map_err(|e| Error::from_actor(e, self.retry_after))?;
        // The shards encode their users as they export them: `export_s` covers both.
        let exported = started.elapsed().as_secs_f64();
        let users = export.users.users();
        let parts = encode_parts(export);
        let bytes = parts.iter().map(|p| p.bytes.len()).sum();
        let encoded = started.elapsed().as_secs_f64();
        let created_ms = now_ms();
        let id = (created_ms.max(0) as u64).max(self.last_snapshot_id.load(Ordering::Acquire) + 1);
        let meta = SnapshotMeta {
            id,
            covers_seq,
            created_ms,
        };
        self.store.put_snapshot(&meta, parts).await?;
        self.last_snapshot_id.store(id, Ordering::Release);
        // Read back what was written: a snapshot that does not verify must not be the one the
        // next start restores (it fails loudly there instead of restoring less).
        self.store.verify_snapshot(id).await?;
        let written = started.elapsed().as_secs_f64();
        let pruned_events = if clean_up {
            self.clean_up(created_ms, covers_seq).await?
        } else {
            0
        };
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
            parts_s = encoded - exported,
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

    /// Deletes all but the newest `snapshot.keep` snapshots, and the events both past the
    /// retention and covered by the new snapshot; returns how many events were deleted.
    async fn clean_up(&self, created_ms: i64, covers_seq: u64) -> Result<u64, Error> {
        self.store
            .prune_snapshots(self.snapshots.keep.max(1))
            .await?;
        let cutoff = created_ms - self.config.retention_ms();
        Ok(self.store.prune_events(cutoff, covers_seq).await?)
    }
}
