//! The published, concurrently readable side of the hot state.
//!
//! Every structure here has exactly one writer: a user's vector is written by the `UserShard`
//! that owns the user, item statistics and metadata by the `ItemCatalog`. Readers on other
//! threads (other shards scoring neighbours, HTTP handlers) see them through `dashmap`, `Arc`
//! snapshots or, for item statistics, one read lock over dense per-item arrays
//! ([`ItemTable`]) taken once per computation. The catalogue bumps [`Index::epoch`] after each
//! applied batch; lazily computed similarity caches are valid for one epoch.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use hashbrown::HashTable;
use parking_lot::RwLock;
use rustc_hash::FxBuildHasher;
use serde::{Deserialize, Serialize};

use crate::ease::EaseModel;
use crate::interner::Interner;
use momentum_models::content::TfIdfIndex;
use momentum_models::similarity::Neighbour;

/// A user's row of the interaction matrix as other threads see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserVector {
    /// (item, weight > 0), sorted by item. Boxed slices, not `Vec`s: a published vector is
    /// never grown, and every user has one.
    pub items: Box<[(u32, f32)]>,
    /// Sum of squared weights.
    pub norm2: f64,
    /// Items this user must not be recommended (kinds in `exclude_kinds`), sorted. Empty in
    /// the published [`Index::vectors`]: only the owning shard scores for the user.
    pub excluded: Box<[u32]>,
}

impl UserVector {
    /// The weight of `item`, 0 if absent.
    pub fn weight(&self, item: u32) -> f32 {
        self.items
            .binary_search_by_key(&item, |e| e.0)
            .map(|i| self.items[i].1)
            .unwrap_or(0.0)
    }

    /// Whether `item` is excluded from this user's recommendations.
    pub fn is_excluded(&self, item: u32) -> bool {
        self.excluded.binary_search(&item).is_ok()
    }
}

/// A co-occurrence entry between two items: the dot product of their columns and the number
/// of users with a positive weight on both. The count makes removal exact: the entry goes
/// away when no user links the items any more, whatever rounding the dot product carries.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cooccurrence {
    pub dot: f64,
    pub users: u32,
}

/// One entry of a co-occurrence row (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoocEntry {
    pub item: u32,
    pub users: u32,
    pub dot: f64,
}

/// An item's co-occurrence row: its entries in one contiguous array, which scorers read in
/// array order (their sums are order-independent), and how an item's entry is found in it,
/// which only the catalogue's updates use.
#[derive(Debug, Clone, Default)]
pub struct CoocRow {
    /// [`Positions::Hashed`]: the entries, in the order they were made (a removal moves the
    /// last one into the hole). [`Positions::Dense`]: one entry per item id below the
    /// vector's length, `entries[i].item == i`, with `users == 0` where the items do not
    /// co-occur.
    entries: Vec<CoocEntry>,
    positions: Positions,
}

/// How each item's entry is found in a row's array.
#[derive(Debug, Clone)]
enum Positions {
    /// A hash table of positions (4 bytes a slot, about 6 to 11 bytes an entry).
    Hashed(HashTable<u32>),
    /// The entries are indexed by item id; `len` of them co-occur. An update is one memory
    /// access, at an address known without reading anything else, so the processor has many
    /// of a batch's updates in flight at once. A row switches to it once its entries cover
    /// half the ids up to its largest, and back to a hash table once they cover less than an
    /// eighth, or when an item far past the others joins.
    Dense { len: usize },
}

impl Default for Positions {
    fn default() -> Self {
        Positions::Hashed(HashTable::new())
    }
}

/// Rows shorter than this keep a hash table, whatever their density.
const DENSE_MIN_ENTRIES: usize = 64;

fn item_hash(item: u32) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(item)
}

/// Adds `dot` and `users` to a present entry; false when no user links its items any more
/// (the caller removes it).
#[inline]
fn accumulate(entry: &mut CoocEntry, dot: f64, users: i64) -> bool {
    let total = i64::from(entry.users) + users;
    debug_assert!(total >= 0, "co-occurrence count below zero");
    if total > 0 {
        entry.dot += dot;
        entry.users = total as u32;
    }
    total > 0
}

/// The entry of an item that does not co-occur, in a dense row.
fn absent(item: u32) -> CoocEntry {
    CoocEntry {
        item,
        users: 0,
        dot: 0.0,
    }
}

impl CoocRow {
    /// The entries, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &CoocEntry> + '_ {
        self.entries.iter().filter(|e| e.users > 0)
    }

    /// Number of co-occurring items.
    pub fn len(&self) -> usize {
        match self.positions {
            Positions::Hashed(_) => self.entries.len(),
            Positions::Dense { len } => len,
        }
    }

    /// Whether no item co-occurs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held on the heap (entries, and a hash table's positions and control bytes).
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<CoocEntry>()
            + match &self.positions {
                Positions::Hashed(table) => table.capacity() * (std::mem::size_of::<u32>() + 1),
                Positions::Dense { .. } => 0,
            }
    }

    /// The entry of `item`, if the items co-occur.
    pub fn get(&self, item: u32) -> Option<Cooccurrence> {
        self.find(item).map(|k| Cooccurrence {
            dot: self.entries[k].dot,
            users: self.entries[k].users,
        })
    }

    fn find(&self, item: u32) -> Option<usize> {
        let entries = &self.entries;
        match &self.positions {
            Positions::Hashed(table) => table
                .find(item_hash(item), |&k| entries[k as usize].item == item)
                .map(|&k| k as usize),
            Positions::Dense { .. } => match entries.get(item as usize) {
                Some(e) if e.users > 0 => Some(item as usize),
                _ => None,
            },
        }
    }

    /// Adds `dot` and `users` to the entry of `item`, creating it, or removing it when no
    /// user links the items any more.
    #[inline]
    pub fn add(&mut self, item: u32, dot: f64, users: i64) {
        let found = match &mut self.positions {
            // A dense row's entries within the array are changed in place; ids past it grow
            // the row (`push`).
            Positions::Dense { len } => match self.entries.get_mut(item as usize) {
                Some(entry) if entry.users > 0 => {
                    if !accumulate(entry, dot, users) {
                        self.remove_at(item as usize);
                    }
                    return;
                }
                Some(entry) => {
                    if users > 0 {
                        *entry = CoocEntry {
                            item,
                            users: users as u32,
                            dot,
                        };
                        *len += 1;
                    }
                    return;
                }
                None => None,
            },
            Positions::Hashed(_) => self.find(item),
        };
        match found {
            Some(k) => {
                let kept = accumulate(&mut self.entries[k], dot, users);
                if !kept {
                    self.remove_at(k);
                }
            }
            // An absent pair only gains a user (a change without one moves no dot product),
            // and starts from this change alone.
            None if users > 0 => self.push(CoocEntry {
                item,
                users: users as u32,
                dot,
            }),
            None => {}
        }
    }

    /// Removes entry `k`: in a hashed row the last entry moves into its place; in a dense
    /// one it is marked absent, and the row turns hashed once fewer than an eighth of its
    /// entries are left.
    fn remove_at(&mut self, k: usize) {
        let CoocRow { entries, positions } = self;
        let item = entries[k].item;
        match positions {
            Positions::Hashed(table) => {
                let last = entries.len() as u32 - 1;
                entries.swap_remove(k);
                let moved = entries.get(k).map(|e| e.item);
                if let Ok(found) = table.find_entry(item_hash(item), |&p| p as usize == k) {
                    found.remove();
                }
                // The last entry moved into the hole: point its position there.
                if let Some(moved) = moved {
                    if let Some(p) = table.find_mut(item_hash(moved), |&p| p == last) {
                        *p = k as u32;
                    }
                }
            }
            Positions::Dense { len } => {
                entries[k] = absent(item);
                *len -= 1;
                if *len * 8 < entries.len() {
                    self.make_hashed();
                }
            }
        }
    }

    /// Adds an entry for an item that has none: appended to a hashed row; past the end of a
    /// dense one, which grows to it, or turns hashed when the id is far past the rest.
    fn push(&mut self, entry: CoocEntry) {
        let item = entry.item as usize;
        match &mut self.positions {
            Positions::Hashed(table) => {
                let k = self.entries.len() as u32;
                // Whether the entries move to a larger allocation: the moment to reconsider
                // the kind of row, a number of times logarithmic in the row's largest size (a
                // row going back and forth across one length does not rebuild each time).
                let grows = self.entries.len() == self.entries.capacity();
                self.entries.push(entry);
                let entries = &self.entries;
                table.insert_unique(item_hash(entry.item), k, |&p| {
                    item_hash(entries[p as usize].item)
                });
                if grows {
                    self.make_dense_if_covered();
                }
            }
            // Only ids past the array reach here (`add` fills the absent entries within it).
            Positions::Dense { len } => {
                if 2 * (*len + 1) < item + 1 {
                    // Far beyond the ids the row covers: back to a hash table.
                    self.make_hashed();
                    self.push(entry);
                    return;
                }
                let span = self.entries.len();
                // Room for an eighth more ids when the array is full: a dense row's slack
                // costs 16 bytes an id, and a row growing one id at a time reallocates once
                // per eighth.
                if self.entries.capacity() <= item {
                    self.entries.reserve_exact((item + 1 - span).max(span / 8));
                }
                self.entries.extend((span as u32..entry.item).map(absent));
                self.entries.push(entry);
                *len += 1;
            }
        }
    }

    /// Turns a hashed row dense when it has at least [`DENSE_MIN_ENTRIES`] entries and they
    /// cover at least half the ids up to the largest.
    fn make_dense_if_covered(&mut self) {
        let n = self.entries.len();
        let span = self
            .entries
            .iter()
            .map(|e| e.item as usize + 1)
            .max()
            .unwrap_or(0);
        if n < DENSE_MIN_ENTRIES || 2 * n < span {
            return;
        }
        let mut dense: Vec<CoocEntry> = Vec::with_capacity(span);
        dense.extend((0..span as u32).map(absent));
        for e in &self.entries {
            dense[e.item as usize] = *e;
        }
        self.entries = dense;
        self.positions = Positions::Dense { len: n };
    }

    /// Turns a dense row hashed, its entries in item order.
    fn make_hashed(&mut self) {
        let mut present: Vec<CoocEntry> = Vec::with_capacity(self.len());
        present.extend(self.entries());
        let mut table = HashTable::with_capacity(present.len());
        for (k, e) in present.iter().enumerate() {
            table.insert_unique(item_hash(e.item), k as u32, |&p| {
                item_hash(present[p as usize].item)
            });
        }
        self.entries = present;
        self.positions = Positions::Hashed(table);
    }
}

/// An item's column of the interaction matrix: (user, weight > 0), sorted by user.
#[derive(Debug, Clone, Default)]
pub struct Column {
    entries: Vec<(u32, f32)>,
}

impl Column {
    /// (user, weight) by user.
    pub fn entries(&self) -> &[(u32, f32)] {
        &self.entries
    }

    /// Users with a positive weight.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no user has a positive weight.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sets the weight of `user` (0 or less removes it).
    pub fn set(&mut self, user: u32, weight: f32) {
        match self.entries.binary_search_by_key(&user, |e| e.0) {
            Ok(k) if weight > 0.0 => self.entries[k].1 = weight,
            Ok(k) => {
                self.entries.remove(k);
            }
            Err(k) if weight > 0.0 => self.entries.insert(k, (user, weight)),
            Err(_) => {}
        }
    }
}

/// Interaction statistics of one item (its column of the matrix).
#[derive(Debug, Clone, Default)]
pub struct ItemStats {
    pub column: Column,
    /// Sum of squared weights of the column.
    pub norm2: f64,
    pub cooc: CoocRow,
    /// Deleted through the API: never recommended, events refused.
    pub deleted: bool,
}

/// Every item's statistics, indexed by dense item id, behind one lock ([`Index::item_table`]):
/// a scorer takes the read lock once per request and then reads plain arrays.
#[derive(Debug, Default)]
pub struct ItemTable {
    rows: Vec<ItemStats>,
}

/// Statistics of an item id never seen.
static NO_STATS: ItemStats = ItemStats {
    column: Column {
        entries: Vec::new(),
    },
    norm2: 0.0,
    cooc: CoocRow {
        entries: Vec::new(),
        positions: Positions::Hashed(HashTable::new()),
    },
    deleted: false,
};

impl ItemTable {
    /// The statistics of `item` (empty ones for an id never seen).
    pub fn get(&self, item: u32) -> &ItemStats {
        self.rows.get(item as usize).unwrap_or(&NO_STATS)
    }

    /// The statistics of `item`, for the catalogue to update.
    pub fn get_mut(&mut self, item: u32) -> &mut ItemStats {
        let slot = item as usize;
        if slot >= self.rows.len() {
            self.rows.resize_with(slot + 1, ItemStats::default);
        }
        &mut self.rows[slot]
    }

    /// Every item id with a slot, and its statistics.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &ItemStats)> {
        self.rows.iter().enumerate().map(|(i, s)| (i as u32, s))
    }

    /// Squared norm of an item column (0 if unknown).
    pub fn norm2(&self, item: u32) -> f64 {
        self.get(item).norm2
    }

    /// Whether the item may be shown (not deleted).
    pub fn is_live(&self, item: u32) -> bool {
        !self.get(item).deleted
    }

    /// Item slots (the size of dense per-item buffers).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no item has a slot.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Stored co-occurrence pairs (each kept in both rows) and the heap bytes of the rows.
    pub fn cooc_footprint(&self) -> (usize, usize) {
        let entries: usize = self.rows.iter().map(|r| r.cooc.len()).sum();
        let bytes = self.rows.iter().map(|r| r.cooc.heap_bytes()).sum();
        (entries / 2, bytes)
    }
}

/// Item metadata (`PUT /v1/items/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemMeta {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default, rename = "type")]
    pub item_type: Option<String>,
    #[serde(default)]
    pub difficulty: Option<f32>,
}

/// User profile (`PUT /v1/users/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserProfile {
    #[serde(default)]
    pub preferences: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub signup_date: Option<String>,
    #[serde(default)]
    pub locale: Option<String>,
}

/// Everything the actors publish for concurrent reading.
#[derive(Debug)]
pub struct Index {
    pub users: Interner,
    pub items: Interner,
    /// Written by the owning shard. Keys are dense ids, hashed with FxHash: the scorers look
    /// up hundreds of them per list, and SipHash was a tenth of the similar-users pass.
    pub vectors: DashMap<u32, Arc<UserVector>, FxBuildHasher>,
    /// Written by the catalogue. Read it once per computation and pass the guard down: a
    /// second `read()` on the same thread can deadlock behind a waiting writer.
    pub item_table: RwLock<ItemTable>,
    /// Written by the catalogue; present for items with metadata.
    pub item_meta: DashMap<u32, Arc<ItemMeta>, FxBuildHasher>,
    /// TF-IDF over item title, description and tags; catalogue-written.
    pub content: RwLock<TfIdfIndex>,
    /// Most popular items (users with a positive weight), best first; catalogue-written.
    pub popular: RwLock<Arc<Vec<Neighbour>>>,
    /// Bumped by the catalogue after every applied batch.
    pub epoch: AtomicU64,
    /// Events applied since start (the item-model job rebuilds after enough of them).
    pub events_applied: AtomicU64,
    /// The learned item model, replaced whole by each build.
    pub ease: RwLock<Arc<EaseModel>>,
}

impl Index {
    /// An empty index with bounded id tables.
    pub fn new(max_users: usize, max_items: usize) -> Self {
        Index {
            users: Interner::new(max_users),
            items: Interner::new(max_items),
            vectors: DashMap::with_hasher(FxBuildHasher),
            item_table: RwLock::new(ItemTable::default()),
            item_meta: DashMap::with_hasher(FxBuildHasher),
            content: RwLock::new(TfIdfIndex::new()),
            popular: RwLock::new(Arc::new(Vec::new())),
            epoch: AtomicU64::new(0),
            events_applied: AtomicU64::new(0),
            ease: RwLock::new(Arc::new(EaseModel::default())),
        }
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Orders dense user ids by their external ids (erased ones last, by dense id): how every
    /// ranking breaks ties, so that it does not depend on the order ids were assigned in.
    pub fn user_order(&self) -> impl Fn(&u32, &u32) -> std::cmp::Ordering + '_ {
        |a, b| self.users.compare(*a, *b)
    }

    /// [`Index::user_order`] for item ids.
    pub fn item_order(&self) -> impl Fn(&u32, &u32) -> std::cmp::Ordering + '_ {
        |a, b| self.items.compare(*a, *b)
    }

    /// Whether the item may be shown (not deleted). Takes the item table's read lock: inside
    /// a computation that holds it, use [`ItemTable::is_live`].
    pub fn is_live_item(&self, item: u32) -> bool {
        self.item_table.read().is_live(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Applies `updates` (item, dot, add or remove) to a row and to a plain map, as the
    /// catalogue sends them (a removal only for an existing pair), and checks after each one
    /// that the positions cover the entries, then that the row holds what the map holds.
    fn row_matches_a_map(updates: Vec<(u32, f64, bool)>, probe: u32) -> Result<(), TestCaseError> {
        let mut row = CoocRow::default();
        let mut want: BTreeMap<u32, (f64, u32)> = BTreeMap::new();
        for (item, dot, add) in updates {
            let present = want.contains_key(&item);
            let users = if add {
                1
            } else if present {
                -1
            } else {
                continue;
            };
            row.add(item, dot, users);
            let e = want.entry(item).or_insert((0.0, 0));
            e.0 += dot;
            e.1 = (i64::from(e.1) + users) as u32;
            if e.1 == 0 {
                want.remove(&item);
            }
            check_kind(&row)?;
            prop_assert_eq!(row.len(), row.entries().count());
        }
        let mut got: Vec<(u32, (f64, u32))> =
            row.entries().map(|e| (e.item, (e.dot, e.users))).collect();
        got.sort_by_key(|e| e.0);
        let want_list: Vec<(u32, (f64, u32))> = want.iter().map(|(&k, &v)| (k, v)).collect();
        prop_assert_eq!(&got, &want_list);
        for item in 0..probe {
            let expected = want
                .get(&item)
                .map(|&(dot, users)| Cooccurrence { dot, users });
            prop_assert_eq!(row.get(item), expected);
        }
        Ok(())
    }

    proptest! {
        /// Through growth and removals, a row holds what a plain map would.
        #[test]
        fn cooc_rows_match_a_map(
            updates in prop::collection::vec((0u32..300, -2.0f64..2.0, prop::bool::ANY), 1..2000),
        ) {
            row_matches_a_map(updates, 300)?;
        }

        /// The same through rows whose ids spread far (an id past the others now and then),
        /// with removals.
        #[test]
        fn cooc_rows_match_a_map_through_both_kinds_of_positions(
            updates in prop::collection::vec(
                (prop_oneof![9 => 0u32..150, 1 => 150u32..5000], -2.0f64..2.0, prop::bool::weighted(0.7)),
                1..3000,
            ),
        ) {
            row_matches_a_map(updates, 5000)?;
        }
    }

    /// What each kind of row must hold: a dense row's entries at their ids, absent ones
    /// zero, `len` counting the present ones; a hashed row no absent entry, and a table that
    /// finds every entry where it is.
    fn check_kind(row: &CoocRow) -> Result<(), TestCaseError> {
        match &row.positions {
            Positions::Dense { len } => {
                for (k, e) in row.entries.iter().enumerate() {
                    prop_assert_eq!(e.item as usize, k);
                    if e.users == 0 {
                        prop_assert_eq!(e.dot.to_bits(), 0.0_f64.to_bits());
                    }
                }
                prop_assert_eq!(*len, row.entries.iter().filter(|e| e.users > 0).count());
            }
            Positions::Hashed(table) => {
                prop_assert!(row.entries.iter().all(|e| e.users > 0));
                prop_assert_eq!(table.len(), row.entries.len());
                for (k, e) in row.entries.iter().enumerate() {
                    prop_assert_eq!(row.find(e.item), Some(k));
                }
            }
        }
        Ok(())
    }

    /// (item, dot, users) changes: mostly ids below 120, now and then one up to 2,000; users
    /// -1 (a removal, ignored on an absent pair), 0 (the dot product alone), 1 or 2, an add
    /// taken with probability `add`.
    fn changes(add: f64) -> impl Strategy<Value = Vec<(u32, f64, i64)>> {
        prop::collection::vec(
            (
                prop_oneof![19 => 0u32..120, 1 => 120u32..2000],
                (-8i32..8).prop_map(|d| f64::from(d) / 4.0),
                prop::bool::weighted(add),
                prop_oneof![3 => Just(1i64), 1 => Just(2i64), 1 => Just(0i64)],
            )
                .prop_map(|(item, dot, add, users)| (item, dot, if add { users } else { -1 })),
            0..600,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A row made dense (ids 0..100 in order), then changed, then mostly emptied, holds
        /// what a plain map holds after every change, whatever kind it is: entries growing
        /// past the array and across gaps, recreated after a removal (from the new change
        /// alone), changed in their dot product only, and turning hashed again.
        #[test]
        fn dense_rows_match_a_map(mixed in changes(0.8), emptying in changes(0.15)) {
            let mut row = CoocRow::default();
            let mut want: BTreeMap<u32, (f64, u32)> = BTreeMap::new();
            let first = (0..100u32).map(|item| (item, 1.0, 1i64));
            let mut dense_after_first = false;
            for (step, (item, dot, users)) in first.chain(mixed).chain(emptying).enumerate() {
                row.add(item, dot, users);
                match want.get_mut(&item) {
                    Some(e) => {
                        e.0 += dot;
                        let left = i64::from(e.1) + users;
                        if left > 0 {
                            e.1 = left as u32;
                        } else {
                            want.remove(&item);
                        }
                    }
                    None if users > 0 => {
                        want.insert(item, (dot, users as u32));
                    }
                    None => {}
                }
                check_kind(&row)?;
                prop_assert_eq!(row.len(), want.len());
                if step == 99 {
                    dense_after_first = matches!(row.positions, Positions::Dense { len: 100 });
                }
            }
            prop_assert!(dense_after_first, "ids 0..100 in order make a dense row");
            let mut got: Vec<(u32, u64, u32)> =
                row.entries().map(|e| (e.item, e.dot.to_bits(), e.users)).collect();
            got.sort_unstable();
            let want_list: Vec<(u32, u64, u32)> =
                want.iter().map(|(&k, &(dot, users))| (k, dot.to_bits(), users)).collect();
            prop_assert_eq!(got, want_list);
            for item in 0..2000 {
                let expected = want.get(&item).map(|&(dot, users)| Cooccurrence { dot, users });
                prop_assert_eq!(row.get(item), expected);
            }
        }
    }

    #[test]
    fn rows_turn_dense_and_hashed_again() {
        let mut row = CoocRow::default();
        for item in 0..200 {
            row.add(item, 1.0, 1);
        }
        assert!(
            matches!(row.positions, Positions::Dense { len: 200 }),
            "200 of 200 ids"
        );
        // One entry an id, no positions, and growing one id at a time leaves at most an
        // eighth of slack.
        let bytes = row.heap_bytes();
        assert!((200 * 16..=200 * 16 * 9 / 8).contains(&bytes), "{bytes}");
        for item in 200..1000 {
            row.add(item, 1.0, 1);
        }
        assert!(
            row.heap_bytes() <= 1000 * 16 * 9 / 8,
            "{}",
            row.heap_bytes()
        );
        let before = row.heap_bytes();
        row.add(1_000_000, 1.0, 1);
        assert!(
            matches!(row.positions, Positions::Hashed(_)),
            "an id far past the rest"
        );
        assert!(
            row.heap_bytes() < before + 16 * 1_000_000,
            "no entry per id up to a million"
        );
        assert_eq!(row.get(1_000_000).map(|c| c.users), Some(1));
        assert_eq!(row.get(17).map(|c| c.users), Some(1));
        assert_eq!(row.len(), 1001);

        let mut sparse = CoocRow::default();
        for item in 0..200 {
            sparse.add(item * 10, 1.0, 1);
        }
        assert!(
            matches!(sparse.positions, Positions::Hashed(_)),
            "200 of 2,000 ids"
        );

        // Removing most of a dense row's entries turns it back into a hash table.
        let mut emptied = CoocRow::default();
        for item in 0..512 {
            emptied.add(item, 2.0, 1);
        }
        assert!(matches!(emptied.positions, Positions::Dense { .. }));
        for item in 0..448 {
            emptied.add(item, -2.0, -1);
        }
        assert!(
            matches!(emptied.positions, Positions::Dense { len: 64 }),
            "64 of 512: an eighth"
        );
        emptied.add(448, -2.0, -1);
        assert!(
            matches!(emptied.positions, Positions::Hashed(_)),
            "63 of 512"
        );
        assert_eq!(emptied.len(), 63);
        assert!(emptied.heap_bytes() < 512 * 16);
        assert_eq!(
            emptied.entries().map(|e| e.item).collect::<Vec<_>>(),
            (449..512).collect::<Vec<_>>(),
            "in item order, as the dense row held them"
        );
        assert_eq!(emptied.get(500), Some(Cooccurrence { dot: 2.0, users: 1 }));
        assert_eq!(emptied.get(100), None);
    }

    #[test]
    fn columns_stay_sorted_and_drop_zero_weights() {
        let mut c = Column::default();
        for (user, w) in [(5, 1.0), (2, 2.0), (9, 0.5), (5, 0.0), (2, 3.0), (7, -1.0)] {
            c.set(user, w);
        }
        assert_eq!(c.entries(), &[(2, 3.0), (9, 0.5)]);
    }
}
