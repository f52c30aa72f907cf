//! GDPR erasure: the user leaves memory, the log, every snapshot and every table. It runs
//! under the snapshot lock, so a snapshot being written cannot bring an erased user back: it
//! either finished before (and its parts are scrubbed) or starts after (and no longer sees the
//! user).

use std::sync::Arc;

use momentum_actors::snapshot::{
    decode_dedupe, decode_user_chunk, encode_dedupe, encode_user_chunk, user_chunk,
};

use super::snapshot::{users_chunk_key, EVENT_IDS_PREFIX, USERS_PREFIX};
use super::Journal;
use crate::error::Error;
use crate::store::PartScrub;

impl Journal {
    /// Erases the user; `true` if the engine or the store knew them.
    pub async fn erase_user(&self, user_id: &str) -> Result<bool, Error> {
        let engine = &*self.engine;
        let _snapshot = self.snapshot_lock.lock().await;
        let _order = self.order.lock().await;
        // Queued events of theirs must not reach the log after the erasure.
        self.write_queued().await?;
        // Their record sits in one user chunk of every stored snapshot, and their remembered
        // event ids in the shared `event_ids:` parts under their dense id: those parts are
        // rewritten without them (older-format event id parts, which hold the id texts, are
        // rewritten hashed). Parts of older snapshots owned by them are deleted.
        let dense = engine.index().users.get(user_id);
        let known = engine.erase_user(user_id).await?;
        let report = self
            .store
            .erase_user_scrubbing(
                user_id,
                vec![
                    EVENT_IDS_PREFIX.to_owned(),
                    users_chunk_key(user_chunk(user_id)),
                ],
                scrub_without(user_id, dense),
            )
            .await?;
        let stored = report.removed.total() > 0;
        tracing::info!(
            removed_rows = report.removed.total(),
            rewritten_parts = report.rewritten_parts,
            "user erased"
        );
        Ok(known || stored)
    }
}

/// Rewrites the shared snapshot parts without the user: their record out of a user chunk,
/// their dense id (`dense`, if the engine knew them) out of the remembered event ids.
fn scrub_without(user_id: &str, dense: Option<u32>) -> PartScrub {
    let erased: Arc<str> = Arc::from(user_id);
    Arc::new(move |key: &str, bytes: &[u8]| {
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
    })
}
