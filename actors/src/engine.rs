//! The engine: starts the shards and the catalogue on their own threads, interns ids, routes
//! by `md5(user_id)` and gives the HTTP layer and the offline evaluation one async API.
//! Everything that changes state goes through an actor's bounded mailbox.

use std::sync::Arc;

use actix::prelude::*;

use crate::catalog::ItemCatalog;
use crate::config::EngineConfig;
use crate::error::ActorError;
use crate::index::{Index, ItemMeta, UserProfile};
use crate::mailbox::Mailbox;
use crate::messages::{
    AdoptRows, ApplyItemDeltas, DeleteItem, DropRows, EraseRow, EraseUser, ExportRows, ExportShard,
    GetActivity, GetRecommendations, GetSimilarItems, GetSimilarUsers, GetUser, HasRows,
    ImportShard, InternedEvent, PutItem, PutUser, RecordEvents, RecordEventsDetached, Restart,
    RowDelta, UserSummary,
};
use crate::metrics::ActorMetrics;
use crate::recommend::{Blend, Recommendations};
use crate::shard::{ShardState, UserShard};
use crate::snapshot::{DedupeEntry, UserChunks, UserRecord};
use momentum_models::events::EventKind;
use momentum_models::hash::md5_bucket;
use momentum_models::similarity::Neighbour;
use rustc_hash::FxHashMap;

/// A validated event with external ids, as the HTTP layer hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Position in the client's batch.
    pub index: usize,
    pub event_id: Option<String>,
    pub user_id: String,
    pub item_id: Option<String>,
    pub kind: EventKind,
    pub value: Option<f32>,
    pub ts_ms: i64,
}

/// An event refused by the engine (the HTTP layer adds its own validation rejections).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub index: usize,
    pub code: &'static str,
    pub message: String,
}

/// The outcome of a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IngestReport {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: Vec<Rejection>,
}

/// Everything a snapshot needs from the shards.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EngineExport {
    /// The item id table in dense order (`None`: unused slot).
    pub items: Vec<Option<Arc<str>>>,
    /// Every user's row, in external ids.
    pub users: Vec<UserRecord>,
    /// Recent event ids, one list per shard.
    pub event_ids: Vec<Vec<DedupeEntry>>,
    /// The profiles of those of `users` who have one, by user id.
    pub profiles: Vec<(Arc<str>, UserProfile)>,
}

/// What a snapshot stores of the engine: [`EngineExport`] with the users already encoded.
#[derive(Debug)]
pub struct SnapshotExport {
    /// The item id table in dense order (`None`: unused slot).
    pub items: Vec<Option<Arc<str>>>,
    /// Every user's row, encoded in their chunks, shard after shard.
    pub users: UserChunks,
    /// Recent event ids, one list per shard.
    pub event_ids: Vec<Vec<DedupeEntry>>,
}

/// A dispatched batch whose outcome is still on its way.
pub struct PendingIngest<'a> {
    engine: &'a Engine,
    report: IngestReport,
    waiting: Vec<tokio::sync::oneshot::Receiver<crate::messages::ShardOutcome>>,
}

impl PendingIngest<'_> {
    /// Waits until every shard (and the catalogue) applied its part.
    pub async fn wait(mut self) -> Result<IngestReport, ActorError> {
        for rx in self.waiting {
            let outcome = rx.await.map_err(|_| ActorError::Stopped {
                actor: "user_shard",
            })?;
            self.report.accepted += outcome.accepted;
            self.report.duplicates += outcome.duplicates.len();
        }
        self.engine.index.events_applied.fetch_add(
            self.report.accepted as u64,
            std::sync::atomic::Ordering::AcqRel,
        );
        let metrics = &self.engine.metrics;
        metrics.users.set(self.engine.index.users.len() as i64);
        metrics.items.set(self.engine.index.items.len() as i64);
        Ok(self.report)
    }
}

/// What `GET /v1/items/{id}` shows besides the metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemView {
    pub meta: Arc<ItemMeta>,
    /// Users with a positive weight on the item.
    pub users: usize,
}

/// The shard a user belongs to: the first 8 bytes of `md5(user_id)`, big-endian, modulo
/// the shard count. Stable across processes and machines.
pub fn shard_for(user_id: &str, shards: usize) -> usize {
    // The remainder is below `shards`, so the narrowing is lossless.
    md5_bucket(&[user_id.as_bytes()], shards as u64) as usize
}

/// Handle to the running actors.
pub struct Engine {
    index: Arc<Index>,
    config: Arc<EngineConfig>,
    shards: Vec<Mailbox<UserShard>>,
    catalog: Mailbox<ItemCatalog>,
    arbiters: Vec<Arbiter>,
    metrics: ActorMetrics,
}

impl Engine {
    /// Starts the actors. Must be called inside a running actix `System`.
    pub fn start(config: EngineConfig, metrics: ActorMetrics) -> Engine {
        let config = Arc::new(config);
        let index = Arc::new(Index::new(config.actors.max_users, config.actors.max_items));
        let threads = match config.actors.threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let capacity = config.actors.mailbox_capacity;
        let catalog_arbiter = Arbiter::new();
        let catalog_actor = ItemCatalog::new(index.clone(), config.clone())
            .with_restart_counter(metrics.restarts.with_label_values(&["item_catalog"]))
            .with_footprint_gauges(metrics.cooc_pairs.clone(), metrics.cooc_bytes.clone());
        let catalog_addr =
            actix::Supervisor::start_in_arbiter(&catalog_arbiter.handle(), |_| catalog_actor);
        let catalog = Mailbox::new(catalog_addr, capacity, "item_catalog", &metrics);
        let shard_arbiters: Vec<Arbiter> = (0..threads.min(config.actors.shards))
            .map(|_| Arbiter::new())
            .collect();
        let shards = (0..config.actors.shards)
            .map(|s| {
                let state = ShardState::new(index.clone(), config.clone(), metrics.clone());
                let actor = UserShard::new(state, catalog.clone());
                let arbiter = &shard_arbiters[s % shard_arbiters.len()];
                let addr = actix::Supervisor::start_in_arbiter(&arbiter.handle(), |_| actor);
                Mailbox::new(addr, capacity, "user_shard", &metrics)
            })
            .collect();
        let mut arbiters = shard_arbiters;
        arbiters.push(catalog_arbiter);
        Engine {
            index,
            config,
            shards,
            catalog,
            arbiters,
            metrics,
        }
    }

    /// The published state (read-only access for handlers and tests).
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Stops the actor threads (after the HTTP server stopped taking requests).
    pub fn stop(&self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }

    /// Whether every mailbox can take `n` more messages.
    pub fn has_room(&self) -> bool {
        self.catalog.has_room(self.shards.len()) && self.shards.iter().all(|s| s.has_room(1))
    }

    fn shard_of(&self, user_id: &str) -> &Mailbox<UserShard> {
        &self.shards[shard_for(user_id, self.shards.len())]
    }

    /// Applies a batch of validated events. Either the whole batch is admitted or, when a
    /// mailbox is full, nothing is sent and `Overloaded` comes back.
    pub async fn record_events(&self, events: Vec<NewEvent>) -> Result<IngestReport, ActorError> {
        self.dispatch(events)?.wait().await
    }

    /// Applies a batch to its users' rows only and returns the item side of it instead of
    /// applying it to the catalogue (cluster mode: the caller publishes it, and every node
    /// applies it with [`Engine::apply_item_deltas`]). Either the whole batch is admitted or
    /// nothing is sent.
    pub async fn record_events_detached(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<(IngestReport, Vec<RowDelta>), ActorError> {
        self.admit(&events)?;
        let (mut report, per_shard) = self.route(events);
        let mut waiting = Vec::new();
        for (shard, events) in per_shard.into_iter().enumerate() {
            if events.is_empty() {
                continue;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.shards[shard].try_send(RecordEventsDetached { events, reply: tx })?;
            waiting.push(rx);
        }
        let mut deltas = Vec::new();
        for rx in waiting {
            let (outcome, shard_deltas) = rx.await.map_err(|_| ActorError::Stopped {
                actor: "user_shard",
            })?;
            report.accepted += outcome.accepted;
            report.duplicates += outcome.duplicates.len();
            deltas.extend(shard_deltas);
        }
        self.index
            .events_applied
            .fetch_add(report.accepted as u64, std::sync::atomic::Ordering::AcqRel);
        self.metrics.users.set(self.index.users.len() as i64);
        self.metrics.items.set(self.index.items.len() as i64);
        Ok((report, deltas))
    }

    /// Applies row changes computed elsewhere (another node's [`Engine::record_events_detached`],
    /// in this node's dense ids) to the catalogue. `publish_vector` says for which users the
    /// delta's vector becomes the published one: users whose rows another node keeps.
    pub async fn apply_item_deltas(
        &self,
        deltas: Vec<RowDelta>,
        publish_vector: impl Fn(u32) -> bool,
    ) -> Result<(), ActorError> {
        for d in &deltas {
            if publish_vector(d.user) {
                self.index.vectors.insert(d.user, d.after.clone());
            }
        }
        self.catalog
            .ask(|reply| ApplyItemDeltas {
                deltas,
                outcome: crate::messages::ShardOutcome::default(),
                reply: Some(reply),
            })
            .await?;
        Ok(())
    }

    /// The rows and recent event ids of `users` (external ids; those this node keeps), with
    /// the item id table their activity logs refer to: a partition snapshot in cluster mode.
    pub async fn export_rows(&self, users: &[Arc<str>]) -> Result<EngineExport, ActorError> {
        let n = self.shards.len();
        let mut per_shard: Vec<Vec<u32>> = vec![Vec::new(); n];
        for user_id in users {
            if let Some(user) = self.index.users.get(user_id) {
                per_shard[shard_for(user_id, n)].push(user);
            }
        }
        // Item ids only grow, so reading the table now covers every row exported later.
        let mut export = EngineExport {
            items: self.index.items.slots_snapshot(),
            ..EngineExport::default()
        };
        for (shard, users) in per_shard.into_iter().enumerate() {
            if users.is_empty() {
                continue;
            }
            let (records, ids, profiles) = self.shards[shard]
                .ask(|reply| ExportRows { users, reply })
                .await?;
            export.users.extend(records);
            export.event_ids.push(ids);
            export.profiles.extend(profiles);
        }
        export.users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        export.profiles.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(export)
    }

    /// Takes over rows exported by [`Engine::export_rows`], possibly in another process:
    /// users and the goals of their activity logs are mapped to this process's dense ids
    /// (interned if new), recent event ids follow their users. The catalogue is not touched.
    /// Returns the rows taken.
    pub async fn adopt_rows(&self, export: EngineExport) -> Result<usize, ActorError> {
        let n = self.shards.len();
        let item_of = |writer: u32| -> Option<u32> {
            let name = export.items.get(writer as usize)?.as_ref()?;
            self.index.items.intern(name)
        };
        let mut user_of: FxHashMap<u32, u32> = FxHashMap::default();
        let mut users: Vec<Vec<UserRecord>> = vec![Vec::new(); n];
        for mut record in export.users.iter().cloned() {
            let Some(local) = self.index.users.intern(&record.user_id) else {
                continue;
            };
            user_of.insert(record.dense_id, local);
            record.dense_id = local;
            for activity in &mut record.activity {
                activity.goal = activity.goal.and_then(item_of);
            }
            users[shard_for(&record.user_id, n)].push(record);
        }
        let mut ids: Vec<Vec<DedupeEntry>> = vec![Vec::new(); n];
        for (writer, hash) in export.event_ids.iter().flatten() {
            if let Some(&local) = user_of.get(writer) {
                if let Some(name) = self.index.users.name(local) {
                    ids[shard_for(&name, n)].push((local, *hash));
                }
            }
        }
        let mut profiles: Vec<Vec<(u32, UserProfile)>> = vec![Vec::new(); n];
        for (user_id, profile) in &export.profiles {
            if let Some(local) = self.index.users.get(user_id) {
                profiles[shard_for(user_id, n)].push((local, profile.clone()));
            }
        }
        let mut taken = 0;
        let per_shard = users.into_iter().zip(ids).zip(profiles);
        for (shard, ((users, event_ids), profiles)) in self.shards.iter().zip(per_shard) {
            if users.is_empty() {
                continue;
            }
            taken += shard
                .ask(|reply| AdoptRows {
                    users,
                    event_ids,
                    profiles,
                    reply,
                })
                .await?
                .accepted;
        }
        self.metrics.users.set(self.index.users.len() as i64);
        Ok(taken)
    }

    /// Forgets the rows of `users` (external ids) on this node: rows, recent event ids and
    /// caches go; their ids, published vectors and their weights in the catalogue stay.
    /// Returns how many rows were dropped.
    pub async fn drop_rows(&self, users: &[Arc<str>]) -> Result<usize, ActorError> {
        let n = self.shards.len();
        let mut per_shard: Vec<Vec<u32>> = vec![Vec::new(); n];
        for user_id in users {
            if let Some(user) = self.index.users.get(user_id) {
                per_shard[shard_for(user_id, n)].push(user);
            }
        }
        let mut dropped = 0;
        for (shard, users) in per_shard.into_iter().enumerate() {
            if users.is_empty() {
                continue;
            }
            dropped += self.shards[shard]
                .ask(|reply| DropRows { users, reply })
                .await?
                .accepted;
        }
        Ok(dropped)
    }

    /// Whether a batch would be admitted now: every shard it touches and the catalogue have
    /// room. [`Engine::dispatch`] checks again; callers that must not act on a batch the
    /// engine would refuse (the event log in `sync` mode) check first.
    pub fn admit(&self, events: &[NewEvent]) -> Result<(), ActorError> {
        self.admit_reserving(events, 0)
    }

    /// [`Engine::admit`], leaving room for `reserve` batches that were admitted before this
    /// one but are not dispatched yet (the `sync` group commit dispatches after the append):
    /// each touched shard needs `1 + reserve` free slots and the catalogue
    /// `(1 + reserve) × touched shards`.
    pub fn admit_reserving(&self, events: &[NewEvent], reserve: usize) -> Result<(), ActorError> {
        let mut touched: Vec<usize> = events
            .iter()
            .map(|e| shard_for(&e.user_id, self.shards.len()))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        let each = 1 + reserve;
        if !self.catalog.has_room(touched.len() * each)
            || !touched.iter().all(|&s| self.shards[s].has_room(each))
        {
            return Err(ActorError::Overloaded {
                actor: "user_shard",
            });
        }
        Ok(())
    }

    /// Interns and routes a batch, **sending it to the shards now**; the returned
    /// [`PendingIngest`] waits for the outcome. Batches dispatched one after the other reach
    /// every shard in that order, which is what lets the event log and snapshots agree with
    /// memory. Either the whole batch is admitted or, when a mailbox is full, nothing is sent.
    /// Interns a batch and splits it by shard; events on deleted items and ids beyond the
    /// tables' bounds are refused in the report.
    fn route(&self, events: Vec<NewEvent>) -> (IngestReport, Vec<Vec<InternedEvent>>) {
        let mut report = IngestReport::default();
        let mut per_shard: Vec<Vec<InternedEvent>> = vec![Vec::new(); self.shards.len()];
        for e in events {
            let item = match &e.item_id {
                Some(item_id) => match self.index.items.intern(item_id) {
                    Some(item) if !self.index.is_live_item(item) => {
                        report.rejected.push(Rejection {
                            index: e.index,
                            code: "item_deleted",
                            message: format!("item {item_id:?} was deleted"),
                        });
                        continue;
                    }
                    Some(item) => Some(item),
                    None => {
                        report.rejected.push(capacity_rejection(
                            e.index,
                            "item",
                            self.config.actors.max_items,
                        ));
                        continue;
                    }
                },
                None => None,
            };
            let Some(user) = self.index.users.intern(&e.user_id) else {
                report.rejected.push(capacity_rejection(
                    e.index,
                    "user",
                    self.config.actors.max_users,
                ));
                continue;
            };
            per_shard[shard_for(&e.user_id, self.shards.len())].push(InternedEvent {
                index: e.index,
                event_id: e.event_id.map(String::into_boxed_str),
                user,
                item,
                kind: e.kind,
                value: e.value,
                ts_ms: e.ts_ms,
            });
        }
        (report, per_shard)
    }

    pub fn dispatch(&self, events: Vec<NewEvent>) -> Result<PendingIngest<'_>, ActorError> {
        // Admission first: refusing after interning would only waste id slots, but refusing
        // after sending would half-apply the batch.
        self.admit(&events)?;
        let (report, per_shard) = self.route(events);
        let mut waiting = Vec::new();
        for (shard, events) in per_shard.into_iter().enumerate() {
            if events.is_empty() {
                continue;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.shards[shard].try_send(RecordEvents { events, reply: tx })?;
            waiting.push(rx);
        }
        Ok(PendingIngest {
            engine: self,
            report,
            waiting,
        })
    }

    fn user(&self, user_id: &str) -> Result<u32, ActorError> {
        self.index
            .users
            .get(user_id)
            .ok_or_else(|| ActorError::UnknownUser {
                id: user_id.to_string(),
            })
    }

    fn item(&self, item_id: &str) -> Result<u32, ActorError> {
        match self.index.items.get(item_id) {
            Some(item) if self.index.is_live_item(item) => Ok(item),
            _ => Err(ActorError::UnknownItem {
                id: item_id.to_string(),
            }),
        }
    }

    /// Up to `n` recommendations (`n` is clamped to `recommend.max_n`).
    pub async fn recommend(
        &self,
        user_id: &str,
        n: usize,
        blend: Option<Blend>,
    ) -> Result<Recommendations, ActorError> {
        let user = self.user(user_id)?;
        let n = n.clamp(1, self.config.recommend.max_n);
        self.shard_of(user_id)
            .ask(|reply| GetRecommendations {
                user,
                n,
                blend,
                reply,
            })
            .await
    }

    /// The top-k similar users.
    pub async fn similar_users(&self, user_id: &str) -> Result<Arc<Vec<Neighbour>>, ActorError> {
        let user = self.user(user_id)?;
        self.shard_of(user_id)
            .ask(|reply| GetSimilarUsers { user, reply })
            .await
    }

    /// The top-k similar items.
    pub async fn similar_items(&self, item_id: &str) -> Result<Arc<Vec<Neighbour>>, ActorError> {
        let item = self.item(item_id)?;
        self.catalog
            .ask(|reply| GetSimilarItems { item, reply })
            .await
    }

    /// Creates or replaces an item's metadata; true when the item is new.
    pub async fn put_item(&self, item_id: &str, meta: ItemMeta) -> Result<bool, ActorError> {
        let existed = self.item(item_id).is_ok();
        let item = self
            .index
            .items
            .intern(item_id)
            .ok_or(ActorError::CapacityReached {
                what: "item",
                capacity: self.config.actors.max_items,
            })?;
        self.catalog
            .ask(|reply| PutItem { item, meta, reply })
            .await?;
        Ok(!existed)
    }

    /// Metadata and statistics of a live item.
    pub fn get_item(&self, item_id: &str) -> Result<ItemView, ActorError> {
        let item = self.item(item_id)?;
        Ok(ItemView {
            meta: self
                .index
                .item_meta
                .get(&item)
                .map(|m| m.clone())
                .unwrap_or_default(),
            users: self.index.item_table.read().get(item).column.len(),
        })
    }

    /// Deletes an item.
    pub async fn delete_item(&self, item_id: &str) -> Result<(), ActorError> {
        let item = self.item(item_id)?;
        self.catalog.ask(|reply| DeleteItem { item, reply }).await
    }

    /// Creates or replaces a user's profile; true when the user is new.
    pub async fn put_user(&self, user_id: &str, profile: UserProfile) -> Result<bool, ActorError> {
        let existed = self.index.users.get(user_id).is_some();
        let user = self
            .index
            .users
            .intern(user_id)
            .ok_or(ActorError::CapacityReached {
                what: "user",
                capacity: self.config.actors.max_users,
            })?;
        self.shard_of(user_id)
            .ask(|reply| PutUser {
                user,
                profile,
                reply,
            })
            .await?;
        Ok(!existed)
    }

    /// Profile and activity summary of a known user.
    pub async fn get_user(&self, user_id: &str) -> Result<UserSummary, ActorError> {
        let user = self.user(user_id)?;
        self.shard_of(user_id)
            .ask(|reply| GetUser { user, reply })
            .await?
            .ok_or_else(|| ActorError::UnknownUser {
                id: user_id.to_string(),
            })
    }

    /// A known user's recent activity (time order).
    pub async fn activity(
        &self,
        user_id: &str,
    ) -> Result<Vec<momentum_models::features::Activity>, ActorError> {
        let user = self.user(user_id)?;
        self.shard_of(user_id)
            .ask(|reply| GetActivity { user, reply })
            .await?
            .ok_or_else(|| ActorError::UnknownUser {
                id: user_id.to_string(),
            })
    }

    /// Whether `item_id` names an item deleted through the API (events on it are refused).
    pub fn is_deleted_item(&self, item_id: &str) -> bool {
        self.index
            .items
            .get(item_id)
            .is_some_and(|item| !self.index.is_live_item(item))
    }

    /// Asks every shard for its rows, **enqueueing the requests now**: a snapshot taken while
    /// the caller holds the ingest order covers exactly the batches dispatched before this
    /// call. The returned future collects the answers (user records, event ids per shard).
    pub fn request_export(
        &self,
    ) -> Result<impl std::future::Future<Output = Result<SnapshotExport, ActorError>>, ActorError>
    {
        let mut waiting = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            let (tx, rx) = tokio::sync::oneshot::channel();
            shard.try_send(ExportShard { reply: tx })?;
            waiting.push(rx);
        }
        // Item ids only grow, so reading the table now covers every row exported later.
        let items = self.index.items.slots_snapshot();
        Ok(async move {
            let mut export = SnapshotExport {
                items,
                users: UserChunks::default(),
                event_ids: Vec::with_capacity(waiting.len()),
            };
            for rx in waiting {
                let (users, ids) = rx.await.map_err(|_| ActorError::Stopped {
                    actor: "user_shard",
                })?;
                export.users.append(users);
                export.event_ids.push(ids);
            }
            Ok(export)
        })
    }

    /// Loads a snapshot into the (empty) engine: rows go to the shard of each user (the shard
    /// count may differ from the writer's), recent event ids to their user's shard. Returns the
    /// number of records or cells refused by the id bounds.
    pub async fn import(&self, export: EngineExport) -> Result<usize, ActorError> {
        let n = self.shards.len();
        let mut refused = 0;
        for (slot, name) in export.items.iter().enumerate() {
            if let Some(name) = name {
                if !self.index.items.restore(name, slot as u32) {
                    refused += 1;
                }
            }
        }
        let mut users: Vec<Vec<UserRecord>> = vec![Vec::new(); n];
        let mut shard_of_user: FxHashMap<u32, usize> = FxHashMap::default();
        for record in export.users {
            let shard = shard_for(&record.user_id, n);
            shard_of_user.insert(record.dense_id, shard);
            users[shard].push(record);
        }
        // Each entry goes to its user's shard (the shard count may differ from the writer's);
        // entries of users without a record (erased) are dropped.
        let mut ids: Vec<Vec<DedupeEntry>> = vec![Vec::new(); n];
        for entry in export.event_ids.into_iter().flatten() {
            if let Some(&shard) = shard_of_user.get(&entry.0) {
                ids[shard].push(entry);
            }
        }
        let mut waiting = Vec::with_capacity(n);
        for ((shard, users), event_ids) in self.shards.iter().zip(users).zip(ids) {
            let (tx, rx) = tokio::sync::oneshot::channel();
            shard.try_send(ImportShard {
                users,
                event_ids,
                reply: tx,
            })?;
            waiting.push(rx);
        }
        for rx in waiting {
            refused += rx
                .await
                .map_err(|_| ActorError::Stopped {
                    actor: "user_shard",
                })?
                .accepted;
        }
        self.metrics.users.set(self.index.users.len() as i64);
        self.metrics.items.set(self.index.items.len() as i64);
        Ok(refused)
    }

    /// Erases a user from memory: row, vector, caches, their weights in the catalogue, and
    /// their id. True if the user was known.
    pub async fn erase_user(&self, user_id: &str) -> Result<bool, ActorError> {
        let Some(user) = self.index.users.get(user_id) else {
            return Ok(false);
        };
        self.shard_of(user_id)
            .ask(|reply| EraseUser { user, reply })
            .await?;
        self.index.users.erase(user_id);
        self.metrics.users.set(self.index.users.len() as i64);
        Ok(true)
    }

    /// Cluster mode, on the owner: erases the user's row, recent event ids and caches,
    /// leaving the catalogue to the item-deltas topic and the id to the caller
    /// ([`Engine::forget_user`]). Returns the dense id the user has here, `None` if this node
    /// does not know them. Call it from the thread that applies the user's events, so none of
    /// theirs is applied in between.
    pub async fn erase_row(&self, user_id: &str) -> Result<Option<u32>, ActorError> {
        let Some(user) = self.index.users.get(user_id) else {
            return Ok(None);
        };
        self.shard_of(user_id)
            .ask(|reply| EraseRow { user, reply })
            .await?;
        Ok(Some(user))
    }

    /// Cluster mode, on the owner of a partition once it is ready: forgets the vector and id
    /// of those of `users` (user id, the dense id they had) who have no row here — users
    /// erased while the partition was restoring, whose erasure lies before the snapshot it
    /// was restored from. Returns how many were forgotten.
    pub async fn forget_rowless(&self, users: &[(String, u32)]) -> Result<usize, ActorError> {
        let n = self.shards.len();
        let mut per_shard: Vec<Vec<(u32, &str)>> = vec![Vec::new(); n];
        for (user_id, user) in users {
            per_shard[shard_for(user_id, n)].push((*user, user_id));
        }
        let mut forgotten = 0;
        for (shard, users) in per_shard.into_iter().enumerate() {
            if users.is_empty() {
                continue;
            }
            let ids = users.iter().map(|u| u.0).collect();
            let has = self.shards[shard]
                .ask(|reply| HasRows { users: ids, reply })
                .await?;
            for (&(user, user_id), has) in users.iter().zip(has) {
                if !has {
                    self.forget_user(user_id, user);
                    forgotten += 1;
                }
            }
        }
        Ok(forgotten)
    }

    /// Cluster mode: forgets an erased user's published vector and id (`user`: the dense id
    /// they had; a newer id of the same name stays).
    pub fn forget_user(&self, user_id: &str, user: u32) {
        self.index.vectors.remove(&user);
        if self.index.users.get(user_id) == Some(user) {
            self.index.users.erase(user_id);
        }
        self.metrics.users.set(self.index.users.len() as i64);
    }

    /// Stops shard `shard` so its supervisor restarts it (tests of supervision).
    pub fn restart_shard(&self, shard: usize) -> Result<(), ActorError> {
        match self.shards.get(shard) {
            Some(mailbox) => mailbox.try_send(Restart),
            None => Ok(()),
        }
    }

    /// Builds the learned item model from the current counts and publishes it (the next
    /// version). Blocks for as long as the factorisation takes: call it off the async
    /// threads. On failure the previous model stays.
    pub fn build_item_model(
        &self,
        now_ms: i64,
    ) -> Result<Arc<crate::ease::EaseModel>, momentum_models::ease::EaseError> {
        Ok(self.publish_item_model(self.fit_item_model(now_ms, || ())?))
    }

    /// Publishes a model [`Engine::fit_item_model`] fitted here, as the next version.
    pub fn publish_item_model(
        &self,
        mut model: crate::ease::EaseModel,
    ) -> Arc<crate::ease::EaseModel> {
        let mut live = self.index.ease.write();
        model.version = live.version + 1;
        let model = Arc::new(model);
        *live = model.clone();
        model
    }

    /// Fits the learned item model from the current counts without publishing it (version
    /// 0: the caller publishes it with [`Engine::publish_item_model`], or gives it one and
    /// publishes it with [`Engine::install_item_model`]). Blocks like
    /// [`Engine::build_item_model`]; `copied` runs between the copy of the counts and the
    /// factorisation ([`crate::ease::build`]).
    pub fn fit_item_model(
        &self,
        now_ms: i64,
        copied: impl FnOnce(),
    ) -> Result<crate::ease::EaseModel, momentum_models::ease::EaseError> {
        crate::ease::build(&self.index, &self.config.ease, 0, now_ms, copied)
    }

    /// Publishes `model` whole, unless the published one has this version or a later one;
    /// true if published. Models from elsewhere (the cluster's store) arrive through here,
    /// models fitted here through [`Engine::publish_item_model`].
    pub fn install_item_model(&self, model: Arc<crate::ease::EaseModel>) -> bool {
        let mut live = self.index.ease.write();
        if live.version >= model.version {
            return false;
        }
        *live = model;
        true
    }

    /// `model` with external item ids ([`crate::ease::encode`]).
    pub fn encode_item_model(&self, model: &crate::ease::EaseModel) -> Vec<u8> {
        crate::ease::encode(model, |item| self.index.items.name(item))
    }

    /// A model encoded by [`Engine::encode_item_model`], possibly in another process, in
    /// this process's dense ids: items it does not know yet are interned (the catalogue
    /// learns their statistics from the same data soon after). Not published.
    pub fn decode_item_model(
        &self,
        bytes: &[u8],
        version: u64,
    ) -> Result<crate::ease::EaseModel, crate::snapshot::DecodeError> {
        crate::ease::decode(bytes, version, |name| self.index.items.intern(name))
    }

    /// The published item model (version 0 and empty before the first build).
    pub fn item_model(&self) -> Arc<crate::ease::EaseModel> {
        self.index.ease.read().clone()
    }

    /// External id of a dense item id.
    pub fn item_name(&self, item: u32) -> Option<Arc<str>> {
        self.index.items.name(item)
    }

    /// External id of a dense user id.
    pub fn user_name(&self, user: u32) -> Option<Arc<str>> {
        self.index.users.name(user)
    }
}

fn capacity_rejection(index: usize, what: &'static str, capacity: usize) -> Rejection {
    Rejection {
        index,
        code: "capacity_reached",
        message: format!("the {what} table is full ({capacity} entries)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix::test]
    async fn a_restarted_shard_keeps_its_state_and_is_counted() {
        let mut config = EngineConfig::default();
        config.actors.shards = 2;
        config.actors.threads = 1;
        let metrics = ActorMetrics::unregistered();
        let engine = Engine::start(config, metrics.clone());
        let event = |item: &str| NewEvent {
            index: 0,
            event_id: None,
            user_id: "alice".into(),
            item_id: Some(item.into()),
            kind: EventKind::Complete,
            value: None,
            ts_ms: 1,
        };
        engine
            .record_events(vec![event("a")])
            .await
            .expect("recorded");
        engine
            .restart_shard(shard_for("alice", 2))
            .expect("restart sent");
        engine
            .record_events(vec![event("b")])
            .await
            .expect("recorded after restart");
        let summary = engine.get_user("alice").await.expect("known");
        assert_eq!(summary.interactions, 2, "the row survived the restart");
        assert_eq!(metrics.restarts.with_label_values(&["user_shard"]).get(), 1);
        engine.stop();
    }

    #[actix::test]
    async fn admission_can_reserve_room_for_batches_not_dispatched_yet() {
        let mut config = EngineConfig::default();
        config.actors.shards = 1;
        config.actors.threads = 1;
        config.actors.mailbox_capacity = 8;
        let engine = Engine::start(config, ActorMetrics::unregistered());
        let batch = vec![NewEvent {
            index: 0,
            event_id: None,
            user_id: "alice".into(),
            item_id: Some("a".into()),
            kind: EventKind::View,
            value: None,
            ts_ms: 1,
        }];
        assert!(engine.admit(&batch).is_ok());
        assert!(
            engine.admit_reserving(&batch, 7).is_ok(),
            "8 slots: 1 + 7 fit"
        );
        assert!(
            matches!(
                engine.admit_reserving(&batch, 8),
                Err(ActorError::Overloaded { .. })
            ),
            "1 + 8 do not"
        );
        engine.stop();
    }

    fn event(id: &str, user: &str, item: &str, kind: EventKind) -> NewEvent {
        NewEvent {
            index: 0,
            event_id: Some(id.into()),
            user_id: user.into(),
            item_id: Some(item.into()),
            kind,
            value: None,
            ts_ms: 1_700_000_000_000,
        }
    }

    fn small_engine(shards: usize) -> Engine {
        let mut config = EngineConfig::default();
        config.actors.shards = shards;
        config.actors.threads = 1;
        Engine::start(config, ActorMetrics::unregistered())
    }

    #[actix::test]
    async fn rows_move_between_engines_with_different_dense_ids() {
        let a = small_engine(2);
        let b = small_engine(3);
        // Different interning orders: the same names get other dense ids in `b`.
        b.record_events(vec![event("x1", "zed", "walk", EventKind::View)])
            .await
            .expect("recorded");
        let (report, deltas) = a
            .record_events_detached(vec![
                event("e1", "alice", "run", EventKind::Start),
                event("e2", "alice", "read", EventKind::Complete),
            ])
            .await
            .expect("recorded");
        assert_eq!(report.accepted, 2);
        assert_eq!(deltas.len(), 1, "one row changed");
        assert!(
            a.index()
                .item_table
                .read()
                .get(deltas[0].changes[0].0)
                .column
                .is_empty(),
            "a detached batch leaves the catalogue alone"
        );
        let export = a.export_rows(&[Arc::from("alice")]).await.expect("export");
        assert_eq!(export.users.len(), 1);
        assert_eq!(b.adopt_rows(export).await.expect("adopt"), 1);
        assert_eq!(b.get_user("alice").await.expect("known").interactions, 2);
        let goals: Vec<Option<Arc<str>>> = b
            .activity("alice")
            .await
            .expect("activity")
            .iter()
            .map(|a| a.goal.and_then(|g| b.item_name(g)))
            .collect();
        assert_eq!(goals, vec![Some(Arc::from("run")), Some(Arc::from("read"))]);
        // The recent event ids came along: a retry is a duplicate in `b`.
        let retry = b
            .record_events(vec![event("e2", "alice", "read", EventKind::Complete)])
            .await
            .expect("recorded");
        assert_eq!((retry.accepted, retry.duplicates), (0, 1));
        // Dropping the rows keeps the published vector.
        assert_eq!(b.drop_rows(&[Arc::from("alice")]).await.expect("drop"), 1);
        assert!(b.get_user("alice").await.is_err(), "the row is gone");
        let alice = b.index().users.get("alice").expect("id kept");
        assert!(b.index().vectors.contains_key(&alice), "the vector stays");
        a.stop();
        b.stop();
    }

    #[actix::test]
    async fn an_item_model_moves_between_engines_with_different_dense_ids() {
        let a = small_engine(2);
        let b = small_engine(3);
        // `b` interns other items first: the same names get other dense ids there.
        b.record_events(vec![event("x1", "zed", "walk", EventKind::View)])
            .await
            .expect("recorded");
        let mut events = Vec::new();
        for u in 0..12 {
            for (k, item) in ["run", "read", "swim", "cook", "draw"].iter().enumerate() {
                if (u + k) % 3 != 0 {
                    let id = format!("e{u}-{k}");
                    events.push(event(&id, &format!("u{u}"), item, EventKind::Complete));
                }
            }
        }
        a.record_events(events).await.expect("recorded");
        let built = a.build_item_model(1_700_000_000_000).expect("built");
        assert!(built.items() >= 5, "{} items modelled", built.items());
        // Copied in chunks of any size, the same counts give the same model.
        for chunk in [1, 2, 3, usize::MAX] {
            let again = crate::ease::build_in_chunks(
                &a.index,
                &a.config.ease,
                built.version,
                built.built_ms,
                || (),
                chunk,
            )
            .expect("built");
            assert_eq!(again.items(), built.items(), "chunks of {chunk}");
            for l in 0..built.items() as u32 {
                let (x, y) = (again.local_row(l), built.local_row(l));
                assert_eq!(again.item(l), built.item(l));
                assert_eq!(
                    (x.targets, x.fixed),
                    (y.targets, y.fixed),
                    "chunks of {chunk}"
                );
            }
        }
        let bytes = a.encode_item_model(&built);
        let moved = b.decode_item_model(&bytes, 7).expect("decodes");
        assert_eq!(moved.version, 7);
        assert_eq!(moved.built_ms, built.built_ms);
        assert_eq!(moved.items(), built.items());
        for l in 0..built.items() as u32 {
            assert_eq!(
                b.item_name(moved.item(l)),
                a.item_name(built.item(l)),
                "{l}"
            );
            let (x, y) = (built.local_row(l), moved.local_row(l));
            assert_eq!(x.targets, y.targets, "{l}");
            assert_eq!(x.fixed, y.fixed, "{l}");
            let bits = |w: &[f32]| w.iter().map(|w| w.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(x.weights), bits(y.weights), "{l}");
        }
        assert_ne!(
            a.index().items.get("run"),
            b.index().items.get("run"),
            "the dense ids differ"
        );
        // Encoding again from `b` gives the same bytes: nothing depends on dense ids.
        assert_eq!(b.encode_item_model(&moved), bytes);
        // Installing is whole and only forward.
        let moved = Arc::new(moved);
        assert!(b.install_item_model(moved.clone()));
        assert!(Arc::ptr_eq(&b.item_model(), &moved));
        let same = b.decode_item_model(&bytes, 7).expect("decodes");
        assert!(!b.install_item_model(Arc::new(same)), "same version");
        // Damaged bodies are refused, never installed half.
        for cut in [0, 1, 17, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                b.decode_item_model(&bytes[..cut], 8).is_err(),
                "cut at {cut}"
            );
        }
        let mut wrong = bytes.clone();
        wrong[0] = 9;
        assert!(b.decode_item_model(&wrong, 8).is_err(), "unknown encoding");
        let mut out_of_range = bytes.clone();
        let last_target = bytes.len() - 8;
        out_of_range[last_target..last_target + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            b.decode_item_model(&out_of_range, 8).is_err(),
            "target range"
        );
        a.stop();
        b.stop();
    }

    #[test]
    fn shard_routing_is_md5_based_and_stable() {
        // md5("alice") = 6384e2b2184bcbf58eccf10ca7a6563c
        assert_eq!(
            shard_for("alice", 16),
            (0x6384e2b2184bcbf5u64 % 16) as usize
        );
        assert_eq!(shard_for("alice", 1), 0);
    }
}
