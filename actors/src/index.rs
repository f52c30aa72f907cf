//! The published, concurrently readable side of the hot state.
//!
//! Every structure here has exactly one writer: a user's vector is written by the `UserShard`
//! that owns the user, item statistics and metadata by the `ItemCatalog`. Readers on other
//! threads (other shards scoring neighbours, HTTP handlers) see them through `dashmap` or
//! `Arc` snapshots. The catalogue bumps [`Index::epoch`] after each applied batch; lazily
//! computed similarity caches are valid for one epoch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::ease::EaseModel;
use crate::interner::Interner;
use momentum_models::content::TfIdfIndex;
use momentum_models::similarity::Neighbour;

/// A user's row of the interaction matrix as other threads see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserVector {
    /// (item, weight > 0), sorted by item.
    pub items: Vec<(u32, f32)>,
    /// Sum of squared weights.
    pub norm2: f64,
    /// Items this user must not be recommended (kinds in `exclude_kinds`), sorted.
    pub excluded: Vec<u32>,
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

/// Interaction statistics of one item (its column of the matrix).
#[derive(Debug, Clone, Default)]
pub struct ItemStats {
    /// user → weight > 0.
    pub column: FxHashMap<u32, f32>,
    /// Sum of squared weights of the column.
    pub norm2: f64,
    /// other item → co-occurrence.
    pub cooc: FxHashMap<u32, Cooccurrence>,
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
    /// Written by the owning shard.
    pub vectors: DashMap<u32, Arc<UserVector>>,
    /// Written by the catalogue.
    pub item_stats: DashMap<u32, ItemStats>,
    /// Written by the catalogue; present for items with metadata.
    pub item_meta: DashMap<u32, Arc<ItemMeta>>,
    /// Items deleted through the API: never recommended, events refused.
    pub deleted_items: DashMap<u32, ()>,
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

fn by_name(ids: &Interner, a: u32, b: u32) -> std::cmp::Ordering {
    if a == b {
        return std::cmp::Ordering::Equal;
    }
    match (ids.name(a), ids.name(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cmp(&b),
    }
}

impl Index {
    /// An empty index with bounded id tables.
    pub fn new(max_users: usize, max_items: usize) -> Self {
        Index {
            users: Interner::new(max_users),
            items: Interner::new(max_items),
            vectors: DashMap::new(),
            item_stats: DashMap::new(),
            item_meta: DashMap::new(),
            deleted_items: DashMap::new(),
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

    /// Squared norm of an item column (0 if unknown).
    pub fn item_norm2(&self, item: u32) -> f64 {
        self.item_stats.get(&item).map(|s| s.norm2).unwrap_or(0.0)
    }

    /// Orders dense user ids by their external ids (erased ones last, by dense id): how every
    /// ranking breaks ties, so that it does not depend on the order ids were assigned in.
    pub fn user_order(&self) -> impl Fn(&u32, &u32) -> std::cmp::Ordering + '_ {
        |a, b| by_name(&self.users, *a, *b)
    }

    /// [`Index::user_order`] for item ids.
    pub fn item_order(&self) -> impl Fn(&u32, &u32) -> std::cmp::Ordering + '_ {
        |a, b| by_name(&self.items, *a, *b)
    }

    /// Whether the item may be shown (not deleted).
    pub fn is_live_item(&self, item: u32) -> bool {
        !self.deleted_items.contains_key(&item)
    }
}
