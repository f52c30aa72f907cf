//! The `ItemCatalog` actor: single writer of item columns, norms, co-occurrence, metadata and
//! the popular list in the shared [`Index`], and owner of the per-item top-k similarity cache.
//!
//! Co-occurrence is maintained eagerly: when a user's weight on item `i` moves from `o_i` to
//! `n_i`, the dot product of `i` with every other item `j` in that user's row changes by
//! `n_i·n_j − o_i·o_j` (pairs of two changed items are handled once). Similarity lists are
//! derived lazily on read and cached for one index epoch, because a norm change of one item
//! moves the cosine of every item it co-occurs with.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rustc_hash::FxHashMap;

use crate::config::EngineConfig;
use crate::index::{Index, ItemTable};
use crate::messages::{ApplyItemDeltas, DeleteItem, GetSimilarItems, PutItem, RowDelta};
use crate::tracked_handler;
use momentum_models::content::text::Tokenizer;
use momentum_models::similarity::{cosine, top_k_by, Neighbour};

/// Pair changes held before they are applied (24 bytes each, two buffers): a batch that
/// changes more pairs is applied in several rounds.
const PENDING_PAIRS: usize = 1 << 18;

/// One co-occurrence change: `dot` and `users` added to the entry of `col` in row `row`.
#[derive(Debug, Clone, Copy)]
struct PairChange {
    row: u32,
    col: u32,
    dot: f64,
    users: i32,
}

/// The co-occurrence changes of a batch, grouped by the row they change before they are
/// applied, so each row's entries (and a hashed row's positions) are updated while they are
/// in cache instead of one random row per change. The grouping is stable: every row receives
/// its changes in the order they were made, so it ends up exactly as if they had been applied
/// one by one.
#[derive(Debug)]
struct PairChanges {
    pending: Vec<PairChange>,
    grouped: Vec<PairChange>,
    counts: Vec<u32>,
    /// The weight before the row change being recorded of each item it changes, by item id;
    /// NaN for every other item.
    before: Vec<f32>,
    /// Changes held before `record` calls its `flush`: [`PENDING_PAIRS`].
    limit: usize,
}

impl Default for PairChanges {
    fn default() -> Self {
        PairChanges {
            pending: Vec::new(),
            grouped: Vec::new(),
            counts: Vec::new(),
            before: Vec::new(),
            limit: PENDING_PAIRS,
        }
    }
}

impl PairChanges {
    /// Records the pair changes of one user's row change: when the user's weight on `i`
    /// moves from `o_i` to `n_i`, the dot product of `i` with every other item `j` of the row
    /// moves by `n_i·n_j − o_i·o_j` (pairs of two changed items are handled once). `flush`
    /// is called whenever `limit` changes are waiting.
    fn record(&mut self, d: &RowDelta, mut flush: impl FnMut(&mut Self)) {
        for &(i, old_i, _) in &d.changes {
            if i as usize >= self.before.len() {
                self.before.resize(i as usize + 1, f32::NAN);
            }
            self.before[i as usize] = old_i;
        }
        // Every item with a weight before or after: the current row plus items dropped to 0.
        let zeroed = d
            .changes
            .iter()
            .filter(|c| c.2 <= 0.0)
            .map(|c| (c.0, 0.0_f32));
        let others: Vec<(u32, f32)> = d.after.items.iter().copied().chain(zeroed).collect();
        for &(i, old_i, new_i) in &d.changes {
            for &(j, new_j) in &others {
                if j == i {
                    continue;
                }
                let old_j = match self.before.get(j as usize).filter(|o| !o.is_nan()) {
                    // Pairs of two changed items are handled from the smaller id.
                    Some(_) if j < i => continue,
                    Some(&o) => o,
                    None => new_j,
                };
                let dot = f64::from(new_i) * f64::from(new_j) - f64::from(old_i) * f64::from(old_j);
                let users =
                    i32::from(new_i > 0.0 && new_j > 0.0) - i32::from(old_i > 0.0 && old_j > 0.0);
                if dot == 0.0 && users == 0 {
                    continue;
                }
                // Sums of products of quantised weights are exact: the order of updates does
                // not change the result.
                for (row, col) in [(i, j), (j, i)] {
                    self.pending.push(PairChange {
                        row,
                        col,
                        dot,
                        users,
                    });
                }
            }
            if self.pending.len() >= self.limit {
                flush(self);
            }
        }
        for &(i, _, _) in &d.changes {
            self.before[i as usize] = f32::NAN;
        }
    }

    /// Applies every waiting change, row by row, and empties the buffers.
    fn apply(&mut self, table: &mut ItemTable) {
        let Some(last) = self.pending.iter().map(|c| c.row as usize).max() else {
            return;
        };
        if last >= 4 * self.pending.len() {
            // Few changes over a wide id range: a stable sort beats counting every row.
            self.pending.sort_by_key(|c| c.row);
            std::mem::swap(&mut self.pending, &mut self.grouped);
        } else {
            // A stable counting sort by row: counts, then where each row's group starts.
            self.counts.clear();
            self.counts.resize(last + 2, 0);
            for c in &self.pending {
                self.counts[c.row as usize + 1] += 1;
            }
            for r in 1..self.counts.len() {
                self.counts[r] += self.counts[r - 1];
            }
            self.grouped.clear();
            self.grouped.extend_from_slice(&self.pending);
            for c in &self.pending {
                let slot = &mut self.counts[c.row as usize];
                self.grouped[*slot as usize] = *c;
                *slot += 1;
            }
        }
        for group in self.grouped.chunk_by(|a, b| a.row == b.row) {
            let cooc = &mut table.get_mut(group[0].row).cooc;
            for c in group {
                cooc.add(c.col, c.dot, i64::from(c.users));
            }
        }
        self.pending.clear();
        self.grouped.clear();
    }
}

thread_local! {
    /// The pair-change buffers of the thread applying batches (the catalogue's), reused from
    /// batch to batch: at most about 17 MB (two change buffers, and 4 bytes per counted row
    /// and per item id changed).
    static PAIRS: std::cell::RefCell<PairChanges> = std::cell::RefCell::default();
}

/// Applies the column side of one user's row change: each changed item's column and norm.
fn apply_columns(table: &mut ItemTable, d: &RowDelta) {
    for &(item, old, new) in &d.changes {
        let stats = table.get_mut(item);
        stats.column.set(d.user, new);
        stats.norm2 += f64::from(new) * f64::from(new) - f64::from(old) * f64::from(old);
        if stats.column.is_empty() {
            stats.norm2 = 0.0;
        }
    }
}

/// Applies the item side of a batch of row changes (columns, norms, co-occurrence) and moves
/// the index to a new epoch, invalidating similarity caches. The co-occurrence changes are
/// worked out before the table is locked, so readers wait only while they are written; a
/// batch changing more than [`PENDING_PAIRS`] pairs takes the lock once per round.
pub fn apply_batch(index: &Index, deltas: &[RowDelta]) {
    if deltas.is_empty() {
        return;
    }
    PAIRS.with_borrow_mut(|pairs| {
        for d in deltas {
            pairs.record(d, |p| p.apply(&mut index.item_table.write()));
        }
        let mut table = index.item_table.write();
        for d in deltas {
            apply_columns(&mut table, d);
        }
        pairs.apply(&mut table);
    });
    index.epoch.fetch_add(1, Ordering::AcqRel);
}

/// Top-k items by cosine with `item`, computed from the current co-occurrence row.
pub fn similar_items(index: &Index, item: u32, k: usize) -> Vec<Neighbour> {
    let sims: Vec<Neighbour> = {
        let table = index.item_table.read();
        let stats = table.get(item);
        stats
            .cooc
            .entries()
            .filter(|e| table.is_live(e.item))
            .map(|e| (e.item, cosine(e.dot, stats.norm2, table.norm2(e.item))))
            .collect()
    };
    top_k_by(sims, k, &index.item_order())
}

/// The `size` items with most users, best first, skipping deleted items.
pub fn popular_items(index: &Index, size: usize) -> Vec<Neighbour> {
    let counts: Vec<Neighbour> = index
        .item_table
        .read()
        .iter()
        .filter(|(_, s)| !s.deleted && !s.column.is_empty())
        .map(|(item, s)| (item, s.column.len() as f64))
        .collect();
    top_k_by(counts, size, &index.item_order())
}

/// The tokeniser configured by `recommend.stop_words` (empty: the English default).
pub fn tokenizer_for(config: &EngineConfig) -> Tokenizer {
    if config.recommend.stop_words.is_empty() {
        Tokenizer::default()
    } else {
        Tokenizer::new(config.recommend.stop_words.iter())
    }
}

/// The catalogue actor.
pub struct ItemCatalog {
    index: Arc<Index>,
    config: Arc<EngineConfig>,
    similar_cache: FxHashMap<u32, (u64, Arc<Vec<Neighbour>>)>,
    popular_computed: Option<(Instant, u64)>,
    tokenizer: Tokenizer,
    restarts: Option<prometheus::IntCounter>,
    /// Co-occurrence pairs and their bytes, set with the popular list.
    footprint: Option<(prometheus::IntGauge, prometheus::IntGauge)>,
}

impl ItemCatalog {
    pub fn new(index: Arc<Index>, config: Arc<EngineConfig>) -> Self {
        ItemCatalog {
            tokenizer: tokenizer_for(&config),
            index,
            config,
            similar_cache: FxHashMap::default(),
            popular_computed: None,
            restarts: None,
            footprint: None,
        }
    }

    /// Counts restarts under actix supervision in `counter`.
    pub fn with_restart_counter(mut self, counter: prometheus::IntCounter) -> Self {
        self.restarts = Some(counter);
        self
    }

    /// Reports the co-occurrence pairs and bytes in `pairs` and `bytes`.
    pub fn with_footprint_gauges(
        mut self,
        pairs: prometheus::IntGauge,
        bytes: prometheus::IntGauge,
    ) -> Self {
        self.footprint = Some((pairs, bytes));
        self
    }

    fn refresh_popular(&mut self, force: bool) {
        let epoch = self.index.epoch();
        let every = Duration::from_millis(self.config.recommend.popular_refresh_ms);
        let due = match self.popular_computed {
            None => true,
            Some((at, seen)) => seen != epoch && (force || at.elapsed() >= every),
        };
        if due {
            let list = popular_items(&self.index, self.config.recommend.popular_size);
            *self.index.popular.write() = Arc::new(list);
            self.popular_computed = Some((Instant::now(), epoch));
            if let Some((pairs_gauge, bytes_gauge)) = &self.footprint {
                let (pairs, bytes) = self.index.item_table.read().cooc_footprint();
                pairs_gauge.set(pairs as i64);
                bytes_gauge.set(bytes as i64);
            }
        }
    }

    fn bump_epoch(&mut self) {
        self.index.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

impl Actor for ItemCatalog {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The bound is kept by `Mailbox`; actix's own limit must not refuse first.
        ctx.set_mailbox_capacity(1 << 20);
        let every = Duration::from_millis(self.config.recommend.popular_refresh_ms.max(100));
        ctx.run_interval(every, |act, _| act.refresh_popular(false));
    }
}

impl actix::Supervised for ItemCatalog {
    fn restarting(&mut self, _: &mut Self::Context) {
        if let Some(counter) = &self.restarts {
            counter.inc();
        }
        tracing::warn!("item catalogue restarting with its state");
    }
}

impl Handler<ApplyItemDeltas> for ItemCatalog {
    type Result = ();

    fn handle(&mut self, msg: ApplyItemDeltas, _: &mut Self::Context) {
        if !msg.deltas.is_empty() {
            apply_batch(&self.index, &msg.deltas);
            self.refresh_popular(false);
        }
        if let Some(reply) = msg.reply {
            let _ = reply.send(msg.outcome);
        }
    }
}

impl Handler<GetSimilarItems> for ItemCatalog {
    type Result = ();

    fn handle(&mut self, msg: GetSimilarItems, _: &mut Self::Context) {
        let epoch = self.index.epoch();
        let list = match self.similar_cache.get(&msg.item) {
            Some((at, list)) if *at == epoch => list.clone(),
            _ => {
                let list = Arc::new(similar_items(
                    &self.index,
                    msg.item,
                    self.config.recommend.similar_k,
                ));
                self.similar_cache.insert(msg.item, (epoch, list.clone()));
                list
            }
        };
        let _ = msg.reply.send(list);
    }
}

impl Handler<PutItem> for ItemCatalog {
    type Result = ();

    fn handle(&mut self, msg: PutItem, _: &mut Self::Context) {
        let terms =
            self.tokenizer
                .item_terms(&msg.meta.title, &msg.meta.description, &msg.meta.tags);
        self.index.content.write().upsert_item(msg.item, &terms);
        self.index.item_meta.insert(msg.item, Arc::new(msg.meta));
        let was_deleted =
            std::mem::take(&mut self.index.item_table.write().get_mut(msg.item).deleted);
        if was_deleted {
            self.bump_epoch();
            self.refresh_popular(true);
        }
        let _ = msg.reply.send(());
    }
}

impl Handler<DeleteItem> for ItemCatalog {
    type Result = ();

    fn handle(&mut self, msg: DeleteItem, _: &mut Self::Context) {
        self.index.item_meta.remove(&msg.item);
        self.index.content.write().remove_item(msg.item);
        self.index.item_table.write().get_mut(msg.item).deleted = true;
        self.similar_cache.remove(&msg.item);
        self.bump_epoch();
        self.refresh_popular(true);
        let _ = msg.reply.send(());
    }
}

tracked_handler!(ItemCatalog, ApplyItemDeltas);
tracked_handler!(ItemCatalog, GetSimilarItems);
tracked_handler!(ItemCatalog, PutItem);
tracked_handler!(ItemCatalog, DeleteItem);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::UserVector;
    use proptest::prelude::*;

    /// Row changes of a few users over a few items, each consistent with the row before it:
    /// (user, item, new weight) steps, a weight of 0 removing the item.
    fn deltas_from(steps: &[(u32, u32, u8)]) -> Vec<RowDelta> {
        let mut rows: FxHashMap<u32, std::collections::BTreeMap<u32, f32>> = FxHashMap::default();
        let mut deltas = Vec::new();
        for chunk in steps.chunks(3) {
            let user = chunk[0].0;
            let row = rows.entry(user).or_default();
            let mut changes: Vec<(u32, f32, f32)> = Vec::new();
            for &(_, item, w) in chunk {
                let old = row.get(&item).copied().unwrap_or(0.0);
                let new = f32::from(w) / 2.0;
                if new > 0.0 {
                    row.insert(item, new);
                } else {
                    row.remove(&item);
                }
                match changes.iter_mut().find(|c| c.0 == item) {
                    Some(c) => c.2 = new,
                    None => changes.push((item, old, new)),
                }
            }
            changes.retain(|c| c.1 != c.2);
            if changes.is_empty() {
                continue;
            }
            let items: Box<[(u32, f32)]> = row.iter().map(|(&i, &w)| (i, w)).collect();
            deltas.push(RowDelta {
                user,
                changes,
                after: Arc::new(UserVector {
                    norm2: items.iter().map(|e| f64::from(e.1).powi(2)).sum(),
                    items,
                    excluded: Box::default(),
                }),
            });
        }
        deltas
    }

    /// Every row's entries, in their stored order.
    fn rows_of(table: &ItemTable) -> Vec<Vec<CoocEntryBits>> {
        table
            .iter()
            .map(|(_, s)| {
                s.cooc
                    .entries()
                    .map(|e| (e.item, e.users, e.dot.to_bits()))
                    .collect()
            })
            .collect()
    }

    type CoocEntryBits = (u32, u32, u64);

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Grouping the changes by row, in one round or in many, leaves every row exactly
        /// as applying each change as it is made would: same entries, same order, same bits.
        #[test]
        fn grouped_pair_changes_equal_one_by_one(
            steps in prop::collection::vec((0u32..6, 0u32..40, 0u8..8), 3..240),
            limit in 1usize..64,
        ) {
            let deltas = deltas_from(&steps);
            let mut one_by_one = ItemTable::default();
            let mut changes = PairChanges::default();
            for d in &deltas {
                changes.record(d, |_| unreachable!("the default limit is not reached"));
                for c in changes.pending.drain(..) {
                    one_by_one.get_mut(c.row).cooc.add(c.col, c.dot, i64::from(c.users));
                }
            }
            let mut at_once = ItemTable::default();
            let mut changes = PairChanges::default();
            for d in &deltas {
                changes.record(d, |_| unreachable!("the default limit is not reached"));
            }
            changes.apply(&mut at_once);
            let mut in_rounds = ItemTable::default();
            let mut changes = PairChanges { limit, ..PairChanges::default() };
            let mut rounds = 0;
            for d in &deltas {
                changes.record(d, |p| {
                    p.apply(&mut in_rounds);
                    rounds += 1;
                });
            }
            changes.apply(&mut in_rounds);
            let want = rows_of(&one_by_one);
            prop_assert_eq!(rows_of(&at_once), want.clone());
            prop_assert_eq!(rows_of(&in_rounds), want);
            prop_assert!(changes.pending.is_empty() && changes.grouped.is_empty());
            // Every stored entry took at least one change, so this many reached the limit.
            let entries: usize = one_by_one.iter().map(|(_, s)| s.cooc.len()).sum();
            prop_assert!(entries < limit || rounds > 0, "{} entries, limit {}, no round", entries, limit);
        }
    }

    #[test]
    fn few_changes_over_a_wide_id_range_are_sorted_not_counted() {
        let deltas = deltas_from(&[(1, 100_000, 2), (1, 3, 2), (1, 7, 4)]);
        let mut changes = PairChanges::default();
        changes.record(&deltas[0], |_| unreachable!());
        assert_eq!(changes.pending.len(), 6, "three pairs, both directions");
        let mut table = ItemTable::default();
        changes.apply(&mut table);
        assert!(
            changes.counts.is_empty(),
            "no counting array over 100,000 rows"
        );
        let row = table.get(100_000).cooc.entries();
        assert_eq!(row.map(|e| e.item).collect::<Vec<_>>(), vec![3, 7]);
        assert_eq!(
            table.get(3).cooc.get(7).map(|c| (c.users, c.dot)),
            Some((1, 2.0))
        );
    }
}
