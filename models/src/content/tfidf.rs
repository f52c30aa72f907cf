//! Incremental TF-IDF index over the catalogue's items, with an inverted index (term → items).
//!
//! One writer owns a [`TfIdfIndex`] (the `ItemCatalog` actor) and applies item upserts and
//! deletions as they arrive; readers get exact, current TF-IDF vectors without any batch rebuild:
//!
//! - The index stores **raw term counts** per item and per posting, plus the document
//!   frequency `df(t)` of each term (the length of its posting list) and `N`, the number of
//!   items (an item with no terms still counts in `N`: it is a document of the catalogue).
//! - `idf(t) = ln((1 + N) / (1 + df(t))) + 1` — the smoothed IDF of scikit-learn's
//!   `TfidfVectorizer(smooth_idf=True)`: as if one extra document contained every term, so no
//!   division by zero and every weight is ≥ 1 (a term in every item is down-weighted, not
//!   erased).
//! - `w(i, t) = tf(i, t) · idf(t)` with raw `tf`, and item vectors are L2-normalised:
//!   `w(i, t) / ‖w(i, ·)‖`. Because `N` changes with every upsert, every IDF changes too, so
//!   weights are computed on read from the current counts; only each item's norm is cached,
//!   lazily, tagged with the index version it was computed at (a counter bumped by every
//!   mutation). Reads are therefore exact and cost O(terms of the item) at worst.
//!
//! Terms are interned to dense internal ids (`u32`), recycled when their document frequency
//! drops to zero so the vocabulary tracks the live catalogue. Term ids never leave the index;
//! the public API speaks in term strings. [`batch_tfidf`] recomputes everything from scratch and
//! is the reference the incremental index is tested against.

use std::collections::{BTreeMap, HashMap};

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::text::TermCounts;

/// Smoothed inverse document frequency: `ln((1 + n) / (1 + df)) + 1`.
pub fn smoothed_idf(n: usize, df: usize) -> f64 {
    ((1.0 + n as f64) / (1.0 + df as f64)).ln() + 1.0
}

/// One interned term: its name, its posting list `(item, raw count)`, sorted by item, and its
/// cached IDF.
#[derive(Debug, Clone)]
pub(super) struct TermEntry {
    pub(super) name: Arc<str>,
    pub(super) postings: Vec<(u32, u32)>,
    idf: NormCache,
}

/// A value computed from the counts (an item's norm, a term's IDF), cached for one index
/// version.
///
/// Atomics (not `Cell`) keep the index `Sync` so the owner can publish it behind an `Arc`.
/// Soundness of the lazy fill: mutations need `&mut TfIdfIndex`, so all concurrent readers see
/// the same version and compute the same value; the norm is stored before the version
/// (release) and read after it (acquire).
#[derive(Debug, Default)]
struct NormCache {
    version: AtomicU64,
    bits: AtomicU64,
}

impl NormCache {
    /// The cached value if it was computed at `version`, else `compute()`, cached for it.
    fn get_or(&self, version: u64, compute: impl FnOnce() -> f64) -> f64 {
        if self.version.load(Ordering::Acquire) == version {
            return f64::from_bits(self.bits.load(Ordering::Relaxed));
        }
        let value = compute();
        self.bits.store(value.to_bits(), Ordering::Relaxed);
        self.version.store(version, Ordering::Release);
        value
    }
}

impl Clone for NormCache {
    fn clone(&self) -> Self {
        Self {
            version: AtomicU64::new(self.version.load(Ordering::Acquire)),
            bits: AtomicU64::new(self.bits.load(Ordering::Relaxed)),
        }
    }
}

/// One item: its terms `(term id, raw count)` sorted by term **name** (not id: see
/// `upsert_item`), and its cached norm.
#[derive(Debug, Clone, Default)]
pub(super) struct ItemDoc {
    pub(super) terms: Vec<(u32, u32)>,
    norm: NormCache,
}

/// The incremental TF-IDF index; see the module documentation for the formulas.
#[derive(Debug, Clone)]
pub struct TfIdfIndex {
    term_ids: HashMap<Arc<str>, u32>,
    pub(super) terms: Vec<TermEntry>,
    free_terms: Vec<u32>,
    pub(super) items: FxHashMap<u32, ItemDoc>,
    /// Bumped by every mutation; norm caches are valid only for the version they carry.
    /// Starts at 1 so a fresh cache (version 0) is never valid.
    version: u64,
}

impl Default for TfIdfIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl TfIdfIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self {
            term_ids: HashMap::new(),
            terms: Vec::new(),
            free_terms: Vec::new(),
            items: FxHashMap::default(),
            version: 1,
        }
    }

    /// Inserts or replaces the terms of `item`. Terms with a zero count are ignored; an item
    /// whose counts are all zero is kept as an empty document (it still counts in `N`).
    /// Cost: O(Σ over old and new terms of their posting-list length).
    pub fn upsert_item(&mut self, item: u32, terms: &TermCounts) {
        self.detach_item(item);
        let mut doc_terms: Vec<(u32, u32)> = Vec::with_capacity(terms.len());
        for (term, &count) in terms {
            if count == 0 {
                continue;
            }
            let id = self.intern(term);
            doc_terms.push((id, count));
        }
        // `terms` iterates in term-name order, and so does `doc_terms`: every sum over an
        // item's terms then runs in the same order whatever ids the terms were given, so an
        // index rebuilt in another upsert order (a restore) gives bit-identical scores.
        for &(id, count) in &doc_terms {
            if let Some(entry) = self.terms.get_mut(id as usize) {
                match entry.postings.binary_search_by_key(&item, |&(it, _)| it) {
                    Ok(pos) => entry.postings[pos].1 = count,
                    Err(pos) => entry.postings.insert(pos, (item, count)),
                }
            }
        }
        self.items.insert(
            item,
            ItemDoc {
                terms: doc_terms,
                norm: NormCache::default(),
            },
        );
        self.version += 1;
        self.debug_check();
    }

    /// Removes `item`; returns whether it was present.
    pub fn remove_item(&mut self, item: u32) -> bool {
        let removed = self.detach_item(item);
        if removed {
            self.version += 1;
        }
        self.debug_check();
        removed
    }

    /// Takes `item` out of the item map and of every posting list, freeing terms left with no
    /// items. Does not bump the version.
    fn detach_item(&mut self, item: u32) -> bool {
        let Some(doc) = self.items.remove(&item) else {
            return false;
        };
        for (id, _) in doc.terms {
            let Some(entry) = self.terms.get_mut(id as usize) else {
                continue;
            };
            if let Ok(pos) = entry.postings.binary_search_by_key(&item, |&(it, _)| it) {
                entry.postings.remove(pos);
            }
            if entry.postings.is_empty() {
                self.term_ids.remove(&entry.name);
                entry.name = Arc::from("");
                entry.postings = Vec::new();
                self.free_terms.push(id);
            }
        }
        true
    }

    fn intern(&mut self, term: &str) -> u32 {
        if let Some(&id) = self.term_ids.get(term) {
            return id;
        }
        let name: Arc<str> = Arc::from(term);
        let id = match self.free_terms.pop() {
            Some(id) => {
                if let Some(entry) = self.terms.get_mut(id as usize) {
                    entry.name = Arc::clone(&name);
                }
                id
            }
            None => {
                // More than u32::MAX distinct live terms cannot be stored anyway (the posting
                // lists alone would exhaust memory first).
                let id = u32::try_from(self.terms.len()).unwrap_or(u32::MAX);
                self.terms.push(TermEntry {
                    name: Arc::clone(&name),
                    postings: Vec::new(),
                    idf: NormCache::default(),
                });
                id
            }
        };
        self.term_ids.insert(name, id);
        id
    }

    #[cfg(debug_assertions)]
    fn debug_check(&self) {
        debug_assert_eq!(
            self.term_ids.len() + self.free_terms.len(),
            self.terms.len(),
            "every term slot is either live or free"
        );
    }

    #[cfg(not(debug_assertions))]
    fn debug_check(&self) {}

    /// The number of items `N`.
    pub fn num_items(&self) -> usize {
        self.items.len()
    }

    /// Whether the index holds no item.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The number of distinct terms with a non-zero document frequency.
    pub fn num_terms(&self) -> usize {
        self.term_ids.len()
    }

    /// Whether `item` is indexed.
    pub fn contains_item(&self, item: u32) -> bool {
        self.items.contains_key(&item)
    }

    /// The mutation counter: changes whenever any IDF or item vector may have changed.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Document frequency of `term` (0 if unknown).
    pub fn document_frequency(&self, term: &str) -> usize {
        self.term_id(term).map_or(0, |id| self.df_of(id))
    }

    /// The smoothed IDF of `term`, `None` if no item contains it.
    pub fn idf(&self, term: &str) -> Option<f64> {
        self.term_id(term).map(|id| self.idf_of(id))
    }

    /// Every live term with its current IDF, ordered by term.
    pub fn idf_table(&self) -> BTreeMap<String, f64> {
        self.term_ids
            .iter()
            .map(|(name, &id)| (name.to_string(), self.idf_of(id)))
            .collect()
    }

    /// The raw term counts of `item` as they were upserted (zero counts dropped).
    pub fn item_term_counts(&self, item: u32) -> Option<TermCounts> {
        let doc = self.items.get(&item)?;
        Some(
            doc.terms
                .iter()
                .map(|&(id, count)| (self.term_name(id).to_string(), count))
                .collect(),
        )
    }

    /// The L2 norm of the un-normalised TF-IDF vector of `item` (0 for an item without terms).
    pub fn item_norm(&self, item: u32) -> Option<f64> {
        self.items.get(&item).map(|doc| self.doc_norm(doc))
    }

    /// The L2-normalised TF-IDF vector of `item`, ordered by term; empty for an item without
    /// terms, `None` for an unknown item.
    pub fn item_vector(&self, item: u32) -> Option<Vec<(&str, f64)>> {
        let doc = self.items.get(&item)?;
        let norm = self.doc_norm(doc);
        let mut v: Vec<(&str, f64)> = doc
            .terms
            .iter()
            .map(|&(id, count)| (self.term_name(id), self.weight(id, count) / norm))
            .collect();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Some(v)
    }

    /// The `k` terms of `item` with the largest normalised TF-IDF weight, strongest first (ties
    /// by term); for explanations ("about: marathon, running").
    pub fn top_terms(&self, item: u32, k: usize) -> Vec<(&str, f64)> {
        let Some(mut v) = self.item_vector(item) else {
            return Vec::new();
        };
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v.truncate(k);
        v
    }

    /// Cosine similarity of two items' TF-IDF vectors, in [0, 1]; 0 if either is unknown or has
    /// no terms. Cost O(terms of a + terms of b): usable as the similarity callback of the
    /// diversity re-ranker.
    pub fn cosine(&self, a: u32, b: u32) -> f64 {
        let (Some(da), Some(db)) = (self.items.get(&a), self.items.get(&b)) else {
            return 0.0;
        };
        let (na, nb) = (self.doc_norm(da), self.doc_norm(db));
        if na == 0.0 || nb == 0.0 {
            return 0.0;
        }
        // Both term lists are in name order, so the shared terms come in the same order
        // whichever way they are found. Short lists are matched by id (no string
        // comparison), longer ones merged by name: the same sum, term for term.
        if da.terms.len() * db.terms.len() <= 256 {
            let mut dot = 0.0;
            for &(ta, ca) in &da.terms {
                if let Some(&(_, cb)) = db.terms.iter().find(|&&(tb, _)| tb == ta) {
                    let idf = self.idf_of(ta);
                    dot += f64::from(ca) * f64::from(cb) * idf * idf;
                }
            }
            return (dot / (na * nb)).clamp(0.0, 1.0);
        }
        let (mut i, mut j, mut dot) = (0, 0, 0.0);
        while let (Some(&(ta, ca)), Some(&(tb, cb))) = (da.terms.get(i), db.terms.get(j)) {
            match self.term_name(ta).cmp(self.term_name(tb)) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    let idf = self.idf_of(ta);
                    dot += f64::from(ca) * f64::from(cb) * idf * idf;
                    i += 1;
                    j += 1;
                }
            }
        }
        (dot / (na * nb)).clamp(0.0, 1.0)
    }

    pub(super) fn term_id(&self, term: &str) -> Option<u32> {
        self.term_ids.get(term).copied()
    }

    pub(super) fn term_name(&self, id: u32) -> &str {
        self.terms.get(id as usize).map_or("", |e| &e.name)
    }

    pub(super) fn term_arc(&self, id: u32) -> Option<&Arc<str>> {
        self.terms.get(id as usize).map(|e| &e.name)
    }

    fn df_of(&self, id: u32) -> usize {
        self.terms.get(id as usize).map_or(0, |e| e.postings.len())
    }

    /// Current IDF of a live term id, from the term's cache when it is current (a logarithm
    /// per read was a visible share of a request).
    pub(super) fn idf_of(&self, id: u32) -> f64 {
        let Some(entry) = self.terms.get(id as usize) else {
            return smoothed_idf(self.items.len(), 0);
        };
        entry.idf.get_or(self.version, || {
            smoothed_idf(self.items.len(), entry.postings.len())
        })
    }

    /// Un-normalised weight `tf · idf`.
    fn weight(&self, id: u32, count: u32) -> f64 {
        f64::from(count) * self.idf_of(id)
    }

    /// The item's norm, from the cache when it is current.
    pub(super) fn doc_norm(&self, doc: &ItemDoc) -> f64 {
        doc.norm.get_or(self.version, || {
            doc.terms
                .iter()
                .map(|&(id, count)| {
                    let w = self.weight(id, count);
                    w * w
                })
                .sum::<f64>()
                .sqrt()
        })
    }

    /// The normalised weight of every term of `item`, by term id (for profile building).
    pub(super) fn normalised_terms(
        &self,
        item: u32,
    ) -> Option<impl Iterator<Item = (u32, f64)> + '_> {
        let doc = self.items.get(&item)?;
        let norm = self.doc_norm(doc);
        let norm = if norm > 0.0 { norm } else { 1.0 };
        Some(
            doc.terms
                .iter()
                .map(move |&(id, count)| (id, self.weight(id, count) / norm)),
        )
    }
}

/// The result of [`batch_tfidf`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchTfIdf {
    /// IDF of every term present in at least one item.
    pub idf: BTreeMap<String, f64>,
    /// L2-normalised TF-IDF vector of every item, ordered by term.
    pub vectors: BTreeMap<u32, Vec<(String, f64)>>,
}

/// Reference implementation: TF-IDF of `items` computed from scratch with the same formulas as
/// [`TfIdfIndex`] (O(total terms)). Used to check the incremental index and for offline
/// replays. A later duplicate of an item id replaces the earlier one, like an upsert.
pub fn batch_tfidf<'a, I>(items: I) -> BatchTfIdf
where
    I: IntoIterator<Item = (u32, &'a TermCounts)>,
{
    let docs: BTreeMap<u32, &TermCounts> = items.into_iter().collect();
    let mut df: BTreeMap<&str, usize> = BTreeMap::new();
    for counts in docs.values() {
        for (term, &count) in counts.iter() {
            if count > 0 {
                *df.entry(term.as_str()).or_insert(0) += 1;
            }
        }
    }
    let n = docs.len();
    let idf: BTreeMap<String, f64> = df
        .iter()
        .map(|(&t, &d)| (t.to_string(), smoothed_idf(n, d)))
        .collect();
    let vectors = docs
        .iter()
        .map(|(&item, counts)| {
            let raw: Vec<(String, f64)> = counts
                .iter()
                .filter(|(_, c)| **c > 0)
                .map(|(t, &c)| (t.clone(), f64::from(c) * idf.get(t).copied().unwrap_or(1.0)))
                .collect();
            let norm = raw.iter().map(|(_, w)| w * w).sum::<f64>().sqrt();
            let v = raw.into_iter().map(|(t, w)| (t, w / norm)).collect();
            (item, v)
        })
        .collect();
    BatchTfIdf { idf, vectors }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(pairs: &[(&str, u32)]) -> TermCounts {
        pairs.iter().map(|&(t, c)| (t.to_string(), c)).collect()
    }

    fn assert_matches_batch(index: &TfIdfIndex, model: &BTreeMap<u32, TermCounts>) {
        let batch = batch_tfidf(model.iter().map(|(&i, c)| (i, c)));
        let idf = index.idf_table();
        assert_eq!(idf.len(), batch.idf.len(), "vocabulary");
        for (term, want) in &batch.idf {
            let got = idf.get(term).copied().unwrap();
            assert!((got - want).abs() < 1e-9, "idf({term}) {got} != {want}");
            assert_eq!(index.idf(term), Some(got));
        }
        assert_eq!(index.num_items(), model.len());
        for (item, want) in &batch.vectors {
            let got = index.item_vector(*item).unwrap();
            assert_eq!(got.len(), want.len(), "terms of item {item}");
            for ((gt, gw), (wt, ww)) in got.iter().zip(want) {
                assert_eq!(gt, wt);
                assert!((gw - ww).abs() < 1e-9, "w({item},{gt}) {gw} != {ww}");
            }
        }
    }

    #[test]
    fn idf_formula_and_vectors() {
        let mut index = TfIdfIndex::new();
        index.upsert_item(1, &counts(&[("run", 2), ("tag:health", 3)]));
        index.upsert_item(2, &counts(&[("read", 1), ("tag:health", 3)]));
        // N = 2: idf(run) = ln(3/2) + 1, idf(tag:health) = ln(3/3) + 1 = 1.
        let idf_run = (1.5f64).ln() + 1.0;
        assert!((index.idf("run").unwrap() - idf_run).abs() < 1e-12);
        assert_eq!(index.idf("tag:health"), Some(1.0));
        assert_eq!(index.idf("swim"), None);
        assert_eq!(index.document_frequency("tag:health"), 2);
        let v = index.item_vector(1).unwrap();
        let (a, b) = (2.0 * idf_run, 3.0);
        let n = (a * a + b * b).sqrt();
        assert_eq!(v[0].0, "run");
        assert!((v[0].1 - a / n).abs() < 1e-12);
        assert!((v[1].1 - b / n).abs() < 1e-12);
        assert_eq!(index.item_vector(3), None);
    }

    #[test]
    fn upsert_replaces_and_remove_frees_terms() {
        let mut index = TfIdfIndex::new();
        index.upsert_item(1, &counts(&[("run", 1), ("swim", 1)]));
        index.upsert_item(1, &counts(&[("run", 4)]));
        assert_eq!(index.num_items(), 1);
        assert_eq!(index.num_terms(), 1);
        assert_eq!(index.document_frequency("swim"), 0);
        assert_eq!(index.item_term_counts(1), Some(counts(&[("run", 4)])));
        assert!(index.remove_item(1));
        assert!(!index.remove_item(1));
        assert!(index.is_empty());
        assert_eq!(index.num_terms(), 0);
        // The freed slot is reused.
        index.upsert_item(7, &counts(&[("yoga", 1)]));
        assert_eq!(index.terms.len(), 2);
        assert_eq!(index.idf("yoga"), Some(1.0));
    }

    #[test]
    fn empty_items_count_in_n() {
        let mut index = TfIdfIndex::new();
        index.upsert_item(1, &counts(&[("run", 1)]));
        index.upsert_item(2, &counts(&[("run", 0)]));
        assert_eq!(index.num_items(), 2);
        assert_eq!(index.item_vector(2), Some(vec![]));
        assert_eq!(index.item_norm(2), Some(0.0));
        assert!((index.idf("run").unwrap() - ((1.5f64).ln() + 1.0)).abs() < 1e-12);
        assert_eq!(index.cosine(1, 2), 0.0);
    }

    #[test]
    fn norm_cache_follows_version() {
        let mut index = TfIdfIndex::new();
        index.upsert_item(1, &counts(&[("run", 1), ("swim", 1)]));
        // N = 1: both IDFs are 1.
        let before = index.item_norm(1).unwrap();
        assert!((before - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(index.item_norm(1), Some(before), "served from the cache");
        // N = 2 changes idf(swim) = ln(3/2) + 1 while idf(run) stays 1: the cache must not
        // serve the old norm.
        index.upsert_item(2, &counts(&[("run", 1)]));
        let after = index.item_norm(1).unwrap();
        let idf_swim = 1.5f64.ln() + 1.0;
        assert!((after - 1f64.hypot(idf_swim)).abs() < 1e-12);
        // A clone carries a valid cache.
        let cloned = index.clone();
        assert_eq!(cloned.item_norm(1), Some(after));
    }

    #[test]
    fn cosine_and_top_terms() {
        let mut index = TfIdfIndex::new();
        index.upsert_item(1, &counts(&[("run", 2), ("marathon", 1)]));
        index.upsert_item(2, &counts(&[("run", 2), ("marathon", 1)]));
        index.upsert_item(3, &counts(&[("read", 1)]));
        assert!((index.cosine(1, 2) - 1.0).abs() < 1e-12);
        assert_eq!(index.cosine(1, 3), 0.0);
        assert_eq!(index.cosine(1, 99), 0.0);
        let top = index.top_terms(1, 1);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].0, "run");
        assert_eq!(index.top_terms(1, 10).len(), 2);
        assert!(index.top_terms(42, 3).is_empty());
    }

    #[test]
    fn index_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<TfIdfIndex>();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(u32, Vec<(u8, u32)>),
        Remove(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u32..12, prop::collection::vec((0u8..20, 0u32..5), 0..6))
                .prop_map(|(i, t)| Op::Upsert(i, t)),
            1 => (0u32..12).prop_map(Op::Remove),
        ]
    }

    proptest! {
        #[test]
        fn incremental_equals_batch(ops in prop::collection::vec(op(), 1..60)) {
            let mut index = TfIdfIndex::new();
            let mut model: BTreeMap<u32, TermCounts> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Upsert(item, terms) => {
                        let c: TermCounts = terms
                            .into_iter()
                            .map(|(t, n)| (format!("t{t}"), n))
                            .collect();
                        index.upsert_item(item, &c);
                        model.insert(item, c);
                    }
                    Op::Remove(item) => {
                        prop_assert_eq!(index.remove_item(item), model.remove(&item).is_some());
                    }
                }
                // Read between mutations so stale norm caches would be caught.
                assert_matches_batch(&index, &model);
                for &a in model.keys().take(3) {
                    for &b in model.keys().rev().take(3) {
                        let c = index.cosine(a, b);
                        prop_assert!((0.0..=1.0).contains(&c));
                    }
                }
            }
        }
    }
}
