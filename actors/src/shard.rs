//! The `UserShard` actor: single writer of the rows of the users routed to it (by
//! `md5(user_id)`), their profiles, the per-user similar-users cache and the per-user
//! recommendation cache.
//!
//! A batch of events updates the owned rows, republishes each touched user's vector in the
//! index and hands the item side of the change ([`RowDelta`]s) to the catalogue, which answers
//! the client once co-occurrence is updated, so a client that got its `200` reads its writes.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use hashbrown::HashTable;
use rustc_hash::FxHashMap;

use crate::catalog::ItemCatalog;
use crate::config::EngineConfig;
use crate::index::{Index, UserProfile, UserVector};
use crate::mailbox::Mailbox;
use crate::messages::{
    AdoptRows, ApplyItemDeltas, DropRows, EraseRow, EraseUser, ExportRows, ExportShard,
    ExportedRows, GetActivity, GetRecommendations, GetSimilarUsers, GetUser, HasRows, ImportShard,
    InternedEvent, PutUser, RecordEvents, RecordEventsDetached, Restart, RowDelta, ShardOutcome,
    UserSummary,
};
use crate::metrics::ActorMetrics;
use crate::recommend::{self, Blend, Reason, Recommendations, Scratch, Strategy};
use crate::rows::{Rows, UserRow};
use crate::snapshot::{event_id_hash, DedupeEntry, UserChunks, UserRecord};
use crate::tracked_handler;
use momentum_models::events::{kind_mask, Interaction};
use momentum_models::features::Activity;
use momentum_models::similarity::Neighbour;

/// A bounded first-in-first-out set of recently applied `event_id`s, each remembered as its
/// user's dense id and a 64-bit hash of the id ([`event_id_hash`]): no id text is kept, so
/// none reaches a snapshot, and erasing a user drops their entries. The entries live once, in
/// arrival order; the hash table holds their sequence numbers (4 bytes each).
#[derive(Debug, Default)]
struct Dedupe {
    /// Oldest first; `order[k]` has the sequence number `first + k` (wrapping).
    order: VecDeque<DedupeEntry>,
    seen: HashTable<u32>,
    first: u32,
    capacity: usize,
}

fn dedupe_hash(entry: &DedupeEntry) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(entry)
}

impl Dedupe {
    /// The remembered entries, oldest first.
    fn entries(&self) -> Vec<DedupeEntry> {
        self.order.iter().copied().collect()
    }

    /// Records `entry`; false if it was already there.
    fn insert(&mut self, entry: DedupeEntry) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let hash = dedupe_hash(&entry);
        let capacity = self.capacity;
        let Dedupe {
            order, seen, first, ..
        } = self;
        let at = |seq: u32| order[seq.wrapping_sub(*first) as usize];
        if seen.find(hash, |&seq| at(seq) == entry).is_some() {
            return false;
        }
        if order.len() >= capacity {
            if let Some(old) = order.pop_front() {
                let oldest = *first;
                if let Ok(found) = seen.find_entry(dedupe_hash(&old), |&seq| seq == oldest) {
                    found.remove();
                }
                *first = first.wrapping_add(1);
            }
        }
        let seq = first.wrapping_add(order.len() as u32);
        order.push_back(entry);
        let at = |seq: &u32| dedupe_hash(&order[seq.wrapping_sub(*first) as usize]);
        seen.insert_unique(hash, seq, at);
        true
    }

    /// Forgets every entry of `user`.
    fn erase(&mut self, user: u32) {
        let kept: Vec<DedupeEntry> = self.order.iter().copied().filter(|e| e.0 != user).collect();
        self.order.clear();
        self.seen.clear();
        self.first = 0;
        for entry in kept {
            self.insert(entry);
        }
    }
}

/// A bounded per-user cache of computed lists with a time to live.
#[derive(Debug, Default)]
struct RecCache {
    entries: FxHashMap<u32, (Instant, Recommendations)>,
    order: VecDeque<(u32, Instant)>,
    capacity: usize,
    ttl: Duration,
}

impl RecCache {
    fn get(&mut self, user: u32) -> Option<Recommendations> {
        match self.entries.get(&user) {
            Some((at, recs)) if at.elapsed() < self.ttl => Some(recs.clone()),
            Some(_) => {
                self.entries.remove(&user);
                None
            }
            None => None,
        }
    }

    fn put(&mut self, user: u32, recs: Recommendations) {
        if self.capacity == 0 {
            return;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                // Skip queue entries of lists replaced or invalidated since.
                Some((u, at)) => {
                    if self.entries.get(&u).is_some_and(|e| e.0 == at) {
                        self.entries.remove(&u);
                    }
                }
                None => break,
            }
        }
        let now = Instant::now();
        self.order.push_back((user, now));
        self.entries.insert(user, (now, recs));
        if self.order.len() > 2 * self.capacity.max(16) {
            // Drop stale queue entries so the queue stays proportional to the cache.
            let entries = &self.entries;
            self.order
                .retain(|(u, at)| entries.get(u).is_some_and(|e| e.0 == *at));
        }
    }

    fn invalidate(&mut self, user: u32) {
        self.entries.remove(&user);
    }
}

/// What a batch did to one user: their events in it, and item → (weight before the batch,
/// weight now).
type Touched = (u32, FxHashMap<u32, (f32, f32)>);

/// The state of one shard, separate from the actor so tests can drive it directly.
pub struct ShardState {
    index: Arc<Index>,
    config: Arc<EngineConfig>,
    metrics: ActorMetrics,
    rows: Rows,
    dedupe: Dedupe,
    /// Neighbour lists computed at `neighbour_epoch`, the index's epoch; emptied when it moves
    /// on or holds `recommend.cache_capacity` lists.
    neighbour_cache: FxHashMap<u32, Arc<Vec<Neighbour>>>,
    neighbour_epoch: u64,
    rec_cache: RecCache,
    models: ModelVersions,
    exclude_mask: u16,
    scratch: Scratch,
    /// Lists computed here (for sampling the diversity metric).
    computed: u32,
}

/// One list in this many computed lists (the first of each shard included) has its
/// intra-list diversity measured: the metric's distribution, at an eighth of the cost.
const DIVERSITY_SAMPLE: u32 = 8;

/// The item model versions a shard has seen: the live one, since when, and the one before it.
#[derive(Debug, Default)]
struct ModelVersions {
    live: u64,
    since: Option<Instant>,
    previous: u64,
}

impl ModelVersions {
    /// Notes the live version; returns it.
    fn observe(&mut self, live: u64) -> u64 {
        if live != self.live {
            self.previous = self.live;
            self.live = live;
            self.since = Some(Instant::now());
        }
        live
    }

    /// Whether a list of `user` computed under `version` may still be served: under the live
    /// model, or under the one before until the user's point of the `spread` after the swap.
    fn serves(&self, version: u64, user: u32, spread: Duration) -> bool {
        if version == self.live {
            return true;
        }
        let Some(since) = self.since.filter(|_| version == self.previous) else {
            return false;
        };
        // A fixed fraction of the window per user (Fibonacci hashing of the id).
        let point = f64::from(user.wrapping_mul(0x9e37_79b9)) / f64::from(u32::MAX);
        since.elapsed() < spread.mul_f64(point)
    }
}

impl ShardState {
    pub fn new(index: Arc<Index>, config: Arc<EngineConfig>, metrics: ActorMetrics) -> Self {
        let shards = config.actors.shards.max(1);
        ShardState {
            dedupe: Dedupe {
                capacity: config.actors.dedupe_capacity.div_ceil(shards),
                ..Dedupe::default()
            },
            rec_cache: RecCache {
                capacity: config.recommend.cache_capacity,
                ttl: Duration::from_secs(config.recommend.cache_ttl_secs),
                ..RecCache::default()
            },
            models: ModelVersions::default(),
            exclude_mask: kind_mask(&config.recommend.exclude_kinds),
            computed: 0,
            index,
            config,
            metrics,
            rows: Rows::default(),
            neighbour_cache: FxHashMap::default(),
            neighbour_epoch: 0,
            scratch: Scratch::default(),
        }
    }

    /// Applies a batch: updates rows, publishes vectors, returns the item-side deltas.
    pub fn record(&mut self, events: Vec<InternedEvent>) -> (ShardOutcome, Vec<RowDelta>) {
        let mut outcome = ShardOutcome::default();
        let mut touched: FxHashMap<u32, Touched> = FxHashMap::default();
        let weights = &self.config.weights;
        for event in events {
            if let Some(id) = &event.event_id {
                // Scoped per user: a retry always names the same user (and so reaches this
                // shard), while two users' events that happen to share an id stay distinct.
                if !self.dedupe.insert((event.user, event_id_hash(id))) {
                    outcome.duplicates.push(event.index);
                    continue;
                }
            }
            outcome.accepted += 1;
            let row = self.rows.get_or_insert(event.user);
            row.push_activity(
                Activity {
                    ts_ms: event.ts_ms,
                    kind: event.kind,
                    goal: event.item,
                },
                self.config.actors.activity_max_events,
                self.config.actors.activity_days,
            );
            let (events, changes) = touched.entry(event.user).or_default();
            *events += 1;
            let Some(item) = event.item else { continue };
            let (before, after) = row.apply(item, event.kind, event.value, event.ts_ms, weights);
            changes.entry(item).or_insert((before, before)).1 = after;
        }
        let mut deltas = Vec::with_capacity(touched.len());
        let mut interactions_delta = 0i64;
        for (user, (events, changes)) in touched {
            if events > 1 {
                if let Some(row) = self.rows.get_mut(user) {
                    row.fit();
                }
            }
            self.rec_cache.invalidate(user);
            let vector = self.published_vector_of(user);
            // The vector is republished even when no weight moved: exclusions may have.
            let changes: Vec<(u32, f32, f32)> = changes
                .into_iter()
                .map(|(item, (old, new))| (item, old, new))
                .filter(|(_, old, new)| old != new)
                .collect();
            for &(_, old, new) in &changes {
                interactions_delta += i64::from(new > 0.0) - i64::from(old > 0.0);
            }
            self.index.vectors.insert(user, vector.clone());
            if !changes.is_empty() {
                deltas.push(RowDelta {
                    user,
                    changes,
                    after: vector,
                });
            }
        }
        self.metrics.interactions.add(interactions_delta);
        (outcome, deltas)
    }

    /// The user's row as a vector: their items of positive weight, only the `cap` most recent
    /// when `cap > 0` (see [`RecommendConfig::neighbour_items`](crate::config::RecommendConfig)),
    /// and, `with_exclusions`, the items they must not be recommended (only scoring for the
    /// user needs them).
    fn vector_of(&self, user: u32, cap: usize, with_exclusions: bool) -> UserVector {
        let weights = &self.config.weights;
        let Some(row) = self.rows.get(user) else {
            return UserVector::default();
        };
        let capping = cap > 0 && row.len() > cap;
        let mut items = Vec::with_capacity(row.len());
        let mut excluded = Vec::with_capacity(if with_exclusions { row.len() } else { 0 });
        let mut latest = Vec::with_capacity(if capping { row.len() } else { 0 });
        // Cells are in item order, so both lists come out sorted.
        for (item, cell) in row.cells() {
            let w = cell.weight(weights);
            if w > 0.0 {
                items.push((item, w));
                if capping {
                    latest.push((cell.last_ts, item));
                }
            }
            if with_exclusions && cell.has_any(self.exclude_mask) {
                excluded.push(item);
            }
        }
        if capping && items.len() > cap {
            // Latest first, ties by external id: the same events keep the same items.
            let order = self.index.item_order();
            latest.select_nth_unstable_by(cap - 1, |a, b| {
                b.0.cmp(&a.0).then_with(|| order(&a.1, &b.1))
            });
            latest.truncate(cap);
            latest.sort_unstable_by_key(|&(_, item)| item);
            let mut keep = latest.iter().map(|&(_, item)| item).peekable();
            items.retain(|&(item, _)| keep.next_if_eq(&item).is_some());
        }
        let norm2 = items
            .iter()
            .map(|&(_, w)| f64::from(w) * f64::from(w))
            .sum();
        UserVector {
            items: items.into_boxed_slice(),
            norm2,
            excluded: excluded.into_boxed_slice(),
        }
    }

    /// The vector the similar users of `user` are searched from: their most recent
    /// `recommend.neighbour_items` items.
    pub fn recent_vector_of(&self, user: u32) -> UserVector {
        self.vector_of(user, self.config.recommend.neighbour_items, false)
    }

    /// The vector other threads read: without exclusions, which only this shard uses.
    fn published_vector_of(&self, user: u32) -> Arc<UserVector> {
        Arc::new(self.vector_of(user, 0, false))
    }

    /// The cached neighbour list (length `max(user_neighbours, similar_k)`), searched from the
    /// user's most recent items, recomputed when the index epoch moved since it was computed.
    pub fn neighbours(&mut self, user: u32) -> Arc<Vec<Neighbour>> {
        let epoch = self.index.epoch();
        if epoch != self.neighbour_epoch
            || self.neighbour_cache.len() >= self.config.recommend.cache_capacity
        {
            self.neighbour_cache.clear();
            self.neighbour_epoch = epoch;
        }
        if let Some(list) = self.neighbour_cache.get(&user) {
            return list.clone();
        }
        let k = self
            .config
            .recommend
            .user_neighbours
            .max(self.config.recommend.similar_k);
        let vector = self.recent_vector_of(user);
        let list = Arc::new(recommend::neighbours(
            &self.index,
            user,
            &vector,
            k,
            &mut self.scratch,
        ));
        if self.config.recommend.cache_capacity > 0 {
            self.neighbour_cache.insert(user, list.clone());
        }
        list
    }

    /// Top `similar_k` similar users.
    pub fn similar_users(&mut self, user: u32) -> Arc<Vec<Neighbour>> {
        let all = self.neighbours(user);
        let k = self.config.recommend.similar_k;
        if all.len() <= k {
            all
        } else {
            Arc::new(all[..k].to_vec())
        }
    }

    /// Ranked recommendations, at least `n` when the catalogue allows, from the cache when a
    /// fresh list of at least that length, computed with the same blend under the live item
    /// model (or the one before, within [`ModelVersions::serves`]'s window), is there. Lists are
    /// computed for `max(n, default_n)` items, so the common request sizes share one list.
    pub fn recommend(&mut self, user: u32, n: usize, blend: Option<Blend>) -> Recommendations {
        let blend = blend.unwrap_or_else(|| Blend::from_config(&self.config.recommend));
        let want = n
            .max(self.config.recommend.default_n)
            .min(self.config.recommend.max_n);
        let item_model = self.models.observe(self.index.ease.read().version);
        let spread = Duration::from_secs(self.config.recommend.model_refresh_secs);
        let models = &self.models;
        let hit = self.rec_cache.get(user).filter(|r| {
            r.blend == blend
                && models.serves(r.item_model, user, spread)
                && (r.items.len() >= n || r.complete)
        });
        if let Some(mut hit) = hit {
            self.metrics.rec_cache.with_label_values(&["hit"]).inc();
            hit.cached = true;
            return hit;
        }
        self.metrics.rec_cache.with_label_values(&["miss"]).inc();
        let vector = self.vector_of(user, 0, true);
        let (strategy, items) = match vector {
            v if !v.items.is_empty() => {
                let neighbours = self.neighbours(user);
                let take = self.config.recommend.user_neighbours.min(neighbours.len());
                let (strategy, mut items) = recommend::hybrid(
                    &self.index,
                    &v,
                    &neighbours[..take],
                    &self.config.recommend,
                    &blend,
                    want,
                    &mut self.scratch,
                );
                if let Some(row) = self.rows.get(user) {
                    for reason in items.iter_mut().flat_map(|s| s.reasons.iter_mut()) {
                        if let Reason::SimilarTo { item, verb } = reason {
                            *verb = row
                                .cell(*item)
                                .map_or("engaged with", |c| strongest_verb(&c));
                        }
                    }
                }
                if self.computed % DIVERSITY_SAMPLE == 0 {
                    let head: Vec<u32> = items.iter().take(n).map(|s| s.item).collect();
                    self.metrics
                        .diversity
                        .observe(recommend::intra_list_diversity(&self.index, &head));
                }
                self.computed = self.computed.wrapping_add(1);
                (strategy, items)
            }
            v => (
                Strategy::Popular,
                recommend::popular_for(
                    &self.index,
                    &self.index.item_table.read(),
                    Some(&v),
                    want,
                    &[],
                ),
            ),
        };
        let recs = Recommendations {
            strategy,
            complete: items.len() < want,
            items: Arc::new(items),
            cached: false,
            blend,
            item_model,
        };
        self.rec_cache.put(user, recs.clone());
        recs
    }

    /// A user's row as a snapshot record, cells in external item id order (equal states give
    /// equal bytes); `None` for ids the interners no longer name.
    fn record_of(&self, user: u32, row: &UserRow) -> Option<UserRecord> {
        let user_id = self.index.users.name(user)?;
        let mut cells: Vec<(Arc<str>, Interaction)> = row
            .cells()
            .filter_map(|(item, cell)| Some((self.index.items.name(item)?, cell)))
            .collect();
        cells.sort_by(|a, b| a.0.cmp(&b.0));
        Some(UserRecord {
            user_id,
            dense_id: user,
            last_event_ms: row.last_event_ms(),
            cells,
            activity: row.activity().collect(),
        })
    }

    /// This shard's rows as snapshot records (sorted by user id, cells by item id, so equal
    /// states give equal bytes) and its recent event id entries (tests; snapshots take
    /// [`ShardState::export_chunks`]).
    #[cfg(test)]
    pub fn export(&self) -> (Vec<UserRecord>, Vec<DedupeEntry>) {
        (self.sorted_records().collect(), self.dedupe.entries())
    }

    /// The rows as snapshot records (sorted by user id, cells by item id, so equal states give
    /// equal bytes) encoded as it goes, record by record ([`UserChunks`]), never all held at
    /// once, and the recent event id entries.
    pub fn export_chunks(&self) -> (UserChunks, Vec<DedupeEntry>) {
        let mut chunks = UserChunks::default();
        for record in self.sorted_records() {
            chunks.push(&record);
        }
        (chunks, self.dedupe.entries())
    }

    /// The rows as snapshot records by user id, each made when it is reached.
    fn sorted_records(&self) -> impl Iterator<Item = UserRecord> + '_ {
        let mut users: Vec<(Arc<str>, u32)> = self
            .rows
            .iter()
            .filter_map(|(user, _)| Some((self.index.users.name(user)?, user)))
            .collect();
        users.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        users.into_iter().filter_map(|(_, user)| {
            self.rows
                .get(user)
                .and_then(|row| self.record_of(user, row))
        })
    }

    /// Loads snapshot records into this (empty) shard: rows (users at their recorded dense
    /// ids; item ids must be restored first), vectors and recent event ids. Returns the
    /// item-side deltas for the catalogue and the records or cells refused (slot taken, bounds).
    pub fn import(
        &mut self,
        users: Vec<UserRecord>,
        event_ids: Vec<DedupeEntry>,
    ) -> (Vec<RowDelta>, usize) {
        let weights = &self.config.weights;
        let mut refused = 0usize;
        let mut deltas = Vec::with_capacity(users.len());
        let mut interactions = 0i64;
        for record in users {
            if !self.index.users.restore(&record.user_id, record.dense_id) {
                refused += 1;
                continue;
            }
            let user = record.dense_id;
            let row = self.rows.get_or_insert(user);
            row.set_last_event_ms(record.last_event_ms);
            row.set_activity(record.activity);
            let mut changes = Vec::with_capacity(record.cells.len());
            for (item_id, cell) in record.cells {
                let Some(item) = self.index.items.intern(&item_id) else {
                    refused += 1;
                    continue;
                };
                let after = cell.weight(weights);
                let before = row.set_cell(item, &cell).map_or(0.0, |c| c.weight(weights));
                if before != after {
                    interactions += i64::from(after > 0.0) - i64::from(before > 0.0);
                    changes.push((item, before, after));
                }
            }
            let vector = self.published_vector_of(user);
            self.index.vectors.insert(user, vector.clone());
            if !changes.is_empty() {
                deltas.push(RowDelta {
                    user,
                    changes,
                    after: vector,
                });
            }
        }
        for entry in event_ids {
            self.dedupe.insert(entry);
        }
        self.metrics.interactions.add(interactions);
        (deltas, refused)
    }

    /// Forgets a user entirely (GDPR): row, profile, vector, caches and remembered event ids.
    /// Returns the item-side delta that removes their weights from the catalogue.
    pub fn erase(&mut self, user: u32) -> Option<RowDelta> {
        self.dedupe.erase(user);
        let row = self.rows.remove(user)?;
        self.index.vectors.remove(&user);
        self.neighbour_cache.remove(&user);
        self.rec_cache.invalidate(user);
        let weights = &self.config.weights;
        let changes: Vec<(u32, f32, f32)> = row
            .cells()
            .map(|(item, cell)| (item, cell.weight(weights), 0.0))
            .filter(|c| c.1 > 0.0)
            .collect();
        self.metrics.interactions.sub(changes.len() as i64);
        Some(RowDelta {
            user,
            changes,
            after: Arc::new(UserVector::default()),
        })
    }

    /// The rows and recent event ids of `users` (those with a row), in external item ids.
    pub fn export_rows(&self, users: &[u32]) -> ExportedRows {
        let wanted: rustc_hash::FxHashSet<u32> = users.iter().copied().collect();
        let mut profiles = Vec::new();
        let records = users
            .iter()
            .filter_map(|&user| {
                let row = self.rows.get(user)?;
                let record = self.record_of(user, row)?;
                if let Some(profile) = row.profile() {
                    profiles.push((record.user_id.clone(), profile.clone()));
                }
                Some(record)
            })
            .collect();
        let ids = self
            .dedupe
            .entries()
            .into_iter()
            .filter(|e| wanted.contains(&e.0))
            .collect();
        (records, ids, profiles)
    }

    /// Takes over rows written elsewhere, already in this process's dense ids: rows, vectors,
    /// profiles and recent event ids; the catalogue is left as it is. Returns the rows taken.
    pub fn adopt(
        &mut self,
        users: Vec<UserRecord>,
        event_ids: Vec<DedupeEntry>,
        profiles: Vec<(u32, UserProfile)>,
    ) -> usize {
        let weights = &self.config.weights;
        let mut interactions = 0i64;
        let mut taken = 0;
        for record in users {
            let user = record.dense_id;
            let row = self.rows.get_or_insert(user);
            row.set_last_event_ms(record.last_event_ms);
            row.set_activity(record.activity);
            for (item_id, cell) in record.cells {
                let Some(item) = self.index.items.intern(&item_id) else {
                    continue;
                };
                let after = cell.weight(weights);
                let before = row.set_cell(item, &cell).map_or(0.0, |c| c.weight(weights));
                interactions += i64::from(after > 0.0) - i64::from(before > 0.0);
            }
            let vector = self.published_vector_of(user);
            self.index.vectors.insert(user, vector);
            self.neighbour_cache.remove(&user);
            self.rec_cache.invalidate(user);
            taken += 1;
        }
        for entry in event_ids {
            self.dedupe.insert(entry);
        }
        for (user, profile) in profiles {
            self.rows.get_or_insert(user).set_profile(profile);
        }
        self.metrics.interactions.add(interactions);
        taken
    }

    /// Forgets a user's row, recent event ids and caches; the published vector and the
    /// catalogue keep the user's weights. True if the user had a row.
    pub fn drop_row(&mut self, user: u32) -> bool {
        self.dedupe.erase(user);
        let Some(row) = self.rows.remove(user) else {
            return false;
        };
        self.neighbour_cache.remove(&user);
        self.rec_cache.invalidate(user);
        let weights = &self.config.weights;
        let cells = row.cells().filter(|c| c.1.weight(weights) > 0.0).count();
        self.metrics.interactions.sub(cells as i64);
        true
    }

    /// A copy of the user's activity log (time order).
    pub fn activity(&self, user: u32) -> Option<Vec<Activity>> {
        self.rows.get(user).map(|row| row.activity().collect())
    }

    /// Creates or replaces a profile.
    pub fn put_profile(&mut self, user: u32, profile: UserProfile) {
        self.rows.get_or_insert(user).set_profile(profile);
        self.index
            .vectors
            .entry(user)
            .or_insert_with(|| Arc::new(UserVector::default()));
    }

    /// Profile and activity summary.
    pub fn summary(&self, user: u32) -> Option<UserSummary> {
        self.rows.get(user).map(|row| UserSummary {
            profile: row.profile().cloned().unwrap_or_default(),
            interactions: row
                .cells()
                .filter(|c| c.1.weight(&self.config.weights) > 0.0)
                .count(),
            last_event_ms: row.last_event_ms(),
        })
    }
}

/// How to describe what a user did with an item, strongest signal first.
fn strongest_verb(cell: &Interaction) -> &'static str {
    use momentum_models::events::EventKind::*;
    [
        (Complete, "completed"),
        (Rate, "rated"),
        (Like, "liked"),
        (Checkin, "checked in on"),
        (Start, "started"),
    ]
    .into_iter()
    .find(|(kind, _)| cell.has_any(kind.bit()))
    .map_or("engaged with", |(_, verb)| verb)
}

/// The shard actor.
pub struct UserShard {
    state: ShardState,
    catalog: Mailbox<ItemCatalog>,
    restarts: prometheus::IntCounter,
}

impl UserShard {
    pub fn new(state: ShardState, catalog: Mailbox<ItemCatalog>) -> Self {
        let restarts = state.metrics.restarts.with_label_values(&["user_shard"]);
        UserShard {
            state,
            catalog,
            restarts,
        }
    }
}

impl actix::Supervised for UserShard {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.restarts.inc();
        tracing::warn!("user shard restarting with its state");
    }
}

impl Handler<Restart> for UserShard {
    type Result = ();

    fn handle(&mut self, _: Restart, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

tracked_handler!(UserShard, Restart);

impl Actor for UserShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1 << 20);
    }
}

impl Handler<RecordEvents> for UserShard {
    type Result = ();

    fn handle(&mut self, msg: RecordEvents, _: &mut Self::Context) {
        let (outcome, deltas) = self.state.record(msg.events);
        if deltas.is_empty() {
            let _ = msg.reply.send(outcome);
        } else {
            // Admitted by the engine, so this cannot grow the catalogue queue without bound.
            self.catalog.send_admitted(ApplyItemDeltas {
                deltas,
                outcome,
                reply: Some(msg.reply),
            });
        }
    }
}

impl Handler<RecordEventsDetached> for UserShard {
    type Result = ();

    fn handle(&mut self, msg: RecordEventsDetached, _: &mut Self::Context) {
        let _ = msg.reply.send(self.state.record(msg.events));
    }
}

impl Handler<ExportRows> for UserShard {
    type Result = ();

    fn handle(&mut self, msg: ExportRows, _: &mut Self::Context) {
        let _ = msg.reply.send(self.state.export_rows(&msg.users));
    }
}

impl Handler<AdoptRows> for UserShard {
    type Result = ();

    fn handle(&mut self, msg: AdoptRows, _: &mut Self::Context) {
        let accepted = self.state.adopt(msg.users, msg.event_ids, msg.profiles);
        let _ = msg.reply.send(ShardOutcome {
            accepted,
            duplicates: Vec::new(),
        });
    }
}

impl Handler<DropRows> for UserShard {
    type Result = ();

    fn handle(&mut self, msg: DropRows, _: &mut Self::Context) {
        let accepted = msg
            .users
            .into_iter()
            .filter(|&user| self.state.drop_row(user))
            .count();
        let _ = msg.reply.send(ShardOutcome {
            accepted,
            duplicates: Vec::new(),
        });
    }
}

impl Handler<GetRecommendations> for UserShard {
    type Result = ();

    fn handle(&mut self, msg: GetRecommendations, _: &mut Self::Context) {
        let mut recs = self.state.recommend(msg.user, msg.n, msg.blend);
        if recs.items.len() > msg.n {
            recs.items = Arc::new(recs.items[..msg.n].to_vec());
        }
        let _ = msg.reply.send(recs);
    }
}

impl Handler<GetSimilarUsers> for UserShard {
    type Result = ();

    fn handle(&mut self, msg: GetSimilarUsers, _: &mut Self::Context) {
        let _ = msg.reply.send(self.state.similar_users(msg.user));
    }
}

impl Handler<PutUser> for UserShard {
    type Result = ();

    fn handle(&mut self, msg: PutUser, _: &mut Self::Context) {
        self.state.put_profile(msg.user, msg.profile);
        let _ = msg.reply.send(());
    }
}

impl Handler<GetUser> for UserShard {
    type Result = ();

    fn handle(&mut self, msg: GetUser, _: &mut Self::Context) {
        let _ = msg.reply.send(self.state.summary(msg.user));
    }
}

impl Handler<ExportShard> for UserShard {
    type Result = ();

    fn handle(&mut self, msg: ExportShard, _: &mut Self::Context) {
        let _ = msg.reply.send(self.state.export_chunks());
    }
}

impl Handler<ImportShard> for UserShard {
    type Result = ();

    fn handle(&mut self, msg: ImportShard, _: &mut Self::Context) {
        let (deltas, refused) = self.state.import(msg.users, msg.event_ids);
        let outcome = ShardOutcome {
            accepted: refused,
            duplicates: Vec::new(),
        };
        self.catalog.send_admitted(ApplyItemDeltas {
            deltas,
            outcome,
            reply: Some(msg.reply),
        });
    }
}

impl Handler<EraseUser> for UserShard {
    type Result = ();

    fn handle(&mut self, msg: EraseUser, _: &mut Self::Context) {
        match self.state.erase(msg.user) {
            Some(delta) => self.catalog.send_admitted(ApplyItemDeltas {
                deltas: vec![delta],
                outcome: ShardOutcome {
                    accepted: 1,
                    duplicates: Vec::new(),
                },
                reply: Some(msg.reply),
            }),
            None => {
                let _ = msg.reply.send(ShardOutcome::default());
            }
        }
    }
}

impl Handler<EraseRow> for UserShard {
    type Result = ();

    fn handle(&mut self, msg: EraseRow, _: &mut Self::Context) {
        self.state.erase(msg.user);
        let _ = msg.reply.send(());
    }
}

impl Handler<HasRows> for UserShard {
    type Result = ();

    fn handle(&mut self, msg: HasRows, _: &mut Self::Context) {
        let rows = &self.state.rows;
        let _ = msg
            .reply
            .send(msg.users.iter().map(|&u| rows.get(u).is_some()).collect());
    }
}

impl Handler<GetActivity> for UserShard {
    type Result = ();

    fn handle(&mut self, msg: GetActivity, _: &mut Self::Context) {
        let _ = msg.reply.send(self.state.activity(msg.user));
    }
}

tracked_handler!(UserShard, GetActivity);
tracked_handler!(UserShard, ExportShard);
tracked_handler!(UserShard, ImportShard);
tracked_handler!(UserShard, EraseUser);
tracked_handler!(UserShard, EraseRow);
tracked_handler!(UserShard, HasRows);
tracked_handler!(UserShard, RecordEvents);
tracked_handler!(UserShard, RecordEventsDetached);
tracked_handler!(UserShard, DropRows);
tracked_handler!(UserShard, ExportRows);
tracked_handler!(UserShard, AdoptRows);
tracked_handler!(UserShard, GetRecommendations);
tracked_handler!(UserShard, GetSimilarUsers);
tracked_handler!(UserShard, PutUser);
tracked_handler!(UserShard, GetUser);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_of_the_previous_model_are_served_until_the_users_point_of_the_window() {
        let window = Duration::from_secs(3600);
        let mut m = ModelVersions::default();
        assert_eq!(m.observe(0), 0);
        assert!(m.serves(0, 1, window) && !m.serves(1, 1, window));
        assert_eq!(m.observe(1), 1);
        // User 1 sits at 0.618 of the window, user 0 at its start.
        assert!(m.serves(1, 1, window));
        assert!(
            m.serves(0, 1, window),
            "the previous model, early in the window"
        );
        assert!(!m.serves(0, 0, window), "a user at the start of the window");
        assert!(!m.serves(0, 1, Duration::ZERO), "no window: at once");
        m.observe(1);
        assert!(
            m.serves(0, 1, window),
            "seeing the same version again moves nothing"
        );
        m.observe(2);
        assert!(
            m.serves(1, 1, window) && !m.serves(0, 1, window),
            "two models back"
        );
        m.since = Some(Instant::now() - Duration::from_secs(2300));
        assert!(
            !m.serves(1, 1, window),
            "past the user's point (0.618 · 3600 s)"
        );
        assert!(m.serves(1, 3, window), "user 3 sits at 0.854");
    }

    #[test]
    fn dedupe_forgets_oldest_past_capacity() {
        let mut d = Dedupe {
            capacity: 2,
            ..Dedupe::default()
        };
        let e = |user, id| (user, event_id_hash(id));
        assert!(d.insert(e(1, "a")));
        assert!(!d.insert(e(1, "a")));
        assert!(d.insert(e(2, "a")), "another user's id is distinct");
        assert!(d.insert(e(1, "c")));
        assert!(d.insert(e(1, "a")), "a was evicted");
    }

    #[test]
    fn dedupe_erase_drops_only_that_users_entries() {
        let mut d = Dedupe {
            capacity: 10,
            ..Dedupe::default()
        };
        let e = |user, id| (user, event_id_hash(id));
        assert!(d.insert(e(1, "evt-alice-1")));
        assert!(d.insert(e(2, "evt-bob-1")));
        assert!(d.insert(e(1, "evt-alice-2")));
        d.erase(1);
        assert_eq!(d.entries(), vec![e(2, "evt-bob-1")]);
        assert!(!d.insert(e(2, "evt-bob-1")), "others are still remembered");
        assert!(
            d.insert(e(1, "evt-alice-1")),
            "the erased user's ids are forgotten"
        );
    }

    #[test]
    fn rec_cache_is_bounded_and_invalidates() {
        let mut c = RecCache {
            capacity: 2,
            ttl: Duration::from_secs(60),
            ..RecCache::default()
        };
        let recs = Recommendations {
            strategy: Strategy::Popular,
            items: Arc::new(Vec::new()),
            cached: false,
            complete: true,
            blend: Blend::from_config(&crate::config::RecommendConfig::default()),
            item_model: 0,
        };
        c.put(1, recs.clone());
        c.put(2, recs.clone());
        c.put(3, recs.clone());
        assert_eq!(c.entries.len(), 2);
        assert!(c.get(1).is_none());
        assert!(c.get(3).is_some());
        c.invalidate(3);
        assert!(c.get(3).is_none());
    }
}
