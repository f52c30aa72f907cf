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

/// Applies the item side of a batch of row changes to the item table. Pure state
/// manipulation, shared by the actor and the replay tests.
pub fn apply_row_deltas(table: &mut ItemTable, deltas: &[RowDelta]) {
    for d in deltas {
        let changed: FxHashMap<u32, (f32, f32)> =
            d.changes.iter().map(|&(i, o, n)| (i, (o, n))).collect();
        for &(item, old, new) in &d.changes {
            let stats = table.get_mut(item);
            stats.column.set(d.user, new);
            stats.norm2 += f64::from(new) * f64::from(new) - f64::from(old) * f64::from(old);
            if stats.column.is_empty() {
                stats.norm2 = 0.0;
            }
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
                let old_j = match changed.get(&j) {
                    // Pairs of two changed items are handled from the smaller id.
                    Some(_) if j < i => continue,
                    Some(&(o, _)) => o,
                    None => new_j,
                };
                let ddot =
                    f64::from(new_i) * f64::from(new_j) - f64::from(old_i) * f64::from(old_j);
                let dusers =
                    i64::from(new_i > 0.0 && new_j > 0.0) - i64::from(old_i > 0.0 && old_j > 0.0);
                if ddot == 0.0 && dusers == 0 {
                    continue;
                }
                // Sums of products of quantised weights are exact: the order of updates does
                // not change the result.
                table.get_mut(i).cooc.add(j, ddot, dusers);
                table.get_mut(j).cooc.add(i, ddot, dusers);
            }
        }
    }
}

/// Applies a batch and moves the index to a new epoch, invalidating similarity caches.
pub fn apply_batch(index: &Index, deltas: &[RowDelta]) {
    if !deltas.is_empty() {
        apply_row_deltas(&mut index.item_table.write(), deltas);
        index.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

/// Top-k items by cosine with `item`, computed from the current co-occurrence row.
pub fn similar_items(index: &Index, item: u32, k: usize) -> Vec<Neighbour> {
    let sims: Vec<Neighbour> = {
        let table = index.item_table.read();
        let stats = table.get(item);
        stats
            .cooc
            .entries()
            .iter()
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
