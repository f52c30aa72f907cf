//! Restore at start-up: the newest snapshot, then the log after it, then the item metadata and
//! user profiles.

use std::sync::atomic::Ordering;
use std::time::Instant;

use momentum_actors::engine::NewEvent;
use momentum_actors::index::{ItemMeta, UserProfile};
use momentum_actors::Engine;
use momentum_models::events::EventKind;

use super::snapshot::decode_parts;
use super::{Journal, RestoreStats};
use crate::error::Error;
use crate::store::StoredEvent;

/// Events read per page when replaying the log.
const REPLAY_PAGE: usize = 10_000;

impl Journal {
    /// Rebuilds the engine from the newest snapshot and the log after it, then the item
    /// metadata and user profiles. Call once, before the server takes traffic. In cluster mode
    /// the users live in the partitions (the events topic and the partition snapshots), so
    /// neither the local snapshot and log nor the profiles are restored: what a store kept from
    /// single-node times would make rows outside the partitions, and count in this node's item
    /// statistics events the cluster never saw. Only the item metadata is.
    pub async fn restore(&self, cluster: bool) -> Result<RestoreStats, Error> {
        let engine = &*self.engine;
        let started = Instant::now();
        let (covers, snapshot_users) = if cluster {
            let last = self.store.last_seq().await?;
            if last > 0 {
                tracing::warn!(
                    events = last,
                    "cluster mode: the local store's event log and snapshots (single-node \
                     times) are not restored; the events topic is the log. Post those events \
                     through the cluster to keep them"
                );
            }
            (u64::MAX, 0)
        } else {
            self.restore_snapshot(engine).await?
        };
        let replayed = if cluster {
            0
        } else {
            self.replay_log(engine, covers).await?
        };
        self.restore_metadata(engine, !cluster).await?;
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

    /// Imports the newest snapshot, if any; returns the sequence number it covers and how
    /// many users it held.
    async fn restore_snapshot(&self, engine: &Engine) -> Result<(u64, usize), Error> {
        let Some((meta, parts)) = self.store.latest_snapshot().await? else {
            return Ok((0, 0));
        };
        let export = decode_parts(meta.id, parts)?;
        let users = export.users.len();
        let refused = engine.import(export).await?;
        if refused > 0 {
            tracing::warn!(refused, "snapshot records refused by the id bounds");
        }
        self.last_snapshot_id.store(meta.id, Ordering::Release);
        Ok((meta.covers_seq, users))
    }

    /// Applies the log after `covers`; returns how many events it replayed.
    async fn replay_log(&self, engine: &Engine, covers: u64) -> Result<u64, Error> {
        let mut replayed = 0u64;
        // The reader fetches the next page while the engine applies the current one.
        let mut log = self.store.read_log(covers, REPLAY_PAGE);
        while let Some(page) = log.next_page().await {
            let events: Vec<NewEvent> = page?
                .into_iter()
                .enumerate()
                .filter_map(|(index, e)| replayed_event(index, e))
                .collect();
            replayed += events.len() as u64;
            engine.record_events(events).await?;
        }
        Ok(replayed)
    }

    /// Item metadata and user profiles, after the rows: items interned by the snapshot and
    /// the log keep their ids, and events replayed before were applied while their items were
    /// still live.
    async fn restore_metadata(&self, engine: &Engine, profiles: bool) -> Result<(), Error> {
        let items = self.store.get_items().await?;
        for item in &items {
            if !item.meta.is_null() {
                let meta: ItemMeta = serde_json::from_value(item.meta.clone()).unwrap_or_default();
                engine.put_item(&item.item_id, meta).await?;
            }
        }
        for item in items.iter().filter(|i| i.deleted) {
            if engine.get_item(&item.item_id).is_ok() {
                engine.delete_item(&item.item_id).await?;
            }
        }
        let users = self.store.get_users().await?;
        if !profiles {
            if !users.is_empty() {
                tracing::warn!(
                    profiles = users.len(),
                    "cluster mode: profiles in the local store are not restored (profiles live \
                     in the partitions); PUT them again through the cluster"
                );
            }
            return Ok(());
        }
        for user in users {
            let profile: UserProfile = serde_json::from_value(user.profile).unwrap_or_default();
            engine.put_user(&user.user_id, profile).await?;
        }
        Ok(())
    }
}

/// A logged event as the engine takes it; `None` for a kind this build does not know.
fn replayed_event(index: usize, e: StoredEvent) -> Option<NewEvent> {
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
}
