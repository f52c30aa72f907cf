//! The learned item model on the live state: built from the catalogue's published counts,
//! published whole with a version, and read by the scorers.
//!
//! The Gram matrix of the binary interaction matrix is what [`ItemStats`] already holds: the
//! number of users of an item (`column.len()`) on the diagonal and the number of users two items
//! share (`CoocEntry::users`) off it. [`build`] copies those counts for the most popular
//! `ease.max_items` items (ties by external id, so every server picks the same items), fits
//! EASE (`momentum_models::ease`) and keeps each item's strongest weights by dense id.
//! Scoring sums those rows over the user's current items, so a user's own events move their
//! list at once while the weights are rebuilt in the background.
//!
//! [`ItemStats`]: crate::index::ItemStats

use std::sync::Arc;

use momentum_models::ease::{fit, EaseError, EaseParams};
use momentum_models::similarity::to_fixed;

use crate::config::EaseConfig;
use crate::index::Index;
use crate::snapshot::{put_strings, DecodeError, Reader};

/// A published model: each modelled item's strongest weights to other modelled items, best
/// first, in one contiguous array.
///
/// Modelled items have local indices `0..items()` in external-id order, so a scorer can sum
/// rows into a dense array of `items()` slots (scanned in external-id order) instead of one
/// indexed by dense id, which may be far larger than the modelled part of the catalogue.
#[derive(Debug, Default, PartialEq)]
pub struct EaseModel {
    /// 0 before the first build; then increasing.
    pub version: u64,
    /// Unix milliseconds of the build.
    pub built_ms: i64,
    /// Wall time of the build, in seconds.
    pub build_seconds: f64,
    /// Local index → dense item id.
    items: Vec<u32>,
    /// Dense item id → local index (`NOT_MODELLED` for the rest).
    local: Vec<u32>,
    /// Local index `l`'s row is `starts[l]..starts[l + 1]` of the arrays below.
    starts: Vec<usize>,
    /// Local index of each weight's target item.
    targets: Vec<u32>,
    /// The weights, as fitted.
    weights: Vec<f32>,
    /// The same weights in the scorers' fixed point (`to_fixed`), so scoring adds integers:
    /// the sums are the bits `add` of the floats would give. A weight of magnitude 2²³ or
    /// more (never seen: λ bounds them far below 1) would saturate.
    fixed: Vec<i64>,
    /// The positive weights again, by target: local index `t`'s sources are
    /// `in_starts[t]..in_starts[t + 1]` of `in_sources` and `in_weights`, by source. The reasons
    /// of a ranked item read its sources instead of every row of the user.
    in_starts: Vec<usize>,
    in_sources: Vec<u32>,
    in_weights: Vec<f32>,
    /// Whether any user's sums fit in `i64`: `items() × max |fixed|` does (a user has each
    /// item at most once, so a target's sum has at most `items()` terms). Scorers then add
    /// in `i64`, and in `i128` otherwise.
    narrow: bool,
}

const NOT_MODELLED: u32 = u32::MAX;

/// One row of an [`EaseModel`]: targets as local indices, weights as fitted and in fixed point.
#[derive(Debug, Clone, Copy)]
pub struct EaseRow<'a> {
    pub targets: &'a [u32],
    pub weights: &'a [f32],
    pub fixed: &'a [i64],
}

impl EaseModel {
    /// Items modelled.
    pub fn items(&self) -> usize {
        self.items.len()
    }

    /// The local index of a dense item id, if the item is modelled.
    pub fn local(&self, item: u32) -> Option<u32> {
        match self.local.get(item as usize) {
            Some(&l) if l != NOT_MODELLED => Some(l),
            _ => None,
        }
    }

    /// The dense item id of a local index.
    pub fn item(&self, local: u32) -> u32 {
        self.items[local as usize]
    }

    /// Whether `item` is modelled.
    pub fn covers(&self, item: u32) -> bool {
        self.local(item).is_some()
    }

    /// Whether a target's sum over any user's rows fits in `i64`.
    pub fn sums_fit_i64(&self) -> bool {
        self.narrow
    }

    /// The items with a positive weight on local index `target`, by local index, and the
    /// weights.
    pub fn positive_sources(&self, target: u32) -> (&[u32], &[f32]) {
        let t = target as usize;
        match (self.in_starts.get(t), self.in_starts.get(t + 1)) {
            (Some(&a), Some(&b)) => (&self.in_sources[a..b], &self.in_weights[a..b]),
            _ => (&[], &[]),
        }
    }

    /// The row of a local index.
    pub fn local_row(&self, local: u32) -> EaseRow<'_> {
        let l = local as usize;
        let range = self.starts[l]..self.starts[l + 1];
        EaseRow {
            targets: &self.targets[range.clone()],
            weights: &self.weights[range.clone()],
            fixed: &self.fixed[range],
        }
    }
}

/// Items whose counts are copied under one hold of the item table's read lock.
const COPY_CHUNK: usize = 16;

/// Builds a model from the index's current counts. Runs for seconds on large catalogues:
/// call it off the actors' threads. `copied` runs once the counts are copied and the table's
/// lock is released, before the factorisation (a caller lowers its thread's priority there:
/// not before, or the lock would be held at that priority).
pub fn build(
    index: &Index,
    config: &EaseConfig,
    version: u64,
    now_ms: i64,
    copied: impl FnOnce(),
) -> Result<EaseModel, EaseError> {
    build_in_chunks(index, config, version, now_ms, copied, COPY_CHUNK)
}

/// [`build`], copying the counts of `chunk` items per hold of the lock.
pub(crate) fn build_in_chunks(
    index: &Index,
    config: &EaseConfig,
    version: u64,
    now_ms: i64,
    copied: impl FnOnce(),
    chunk: usize,
) -> Result<EaseModel, EaseError> {
    let started = std::time::Instant::now();
    // Counts are copied under the table's read lock, a few items at a time: the catalogue's
    // writes, and the readers queued behind a waiting writer, wait for a few rows at most
    // instead of the whole copy (tens of milliseconds at 1,682 items). Each item's count and
    // its pairs with the items before it come from one moment, but an item's count may be
    // older than its pairs with later items by the events applied in between, so under
    // concurrent ingest the matrix matches no single moment. Against the ridge (`lambda`,
    // 300) such differences are far too small to matter; with a very small `lambda` under
    // heavy ingest the factorisation can fail, and then the previous model stays and the
    // next trigger builds again. The factorisation runs without the lock.
    let (candidates, local, entries) = {
        let table = index.item_table.read();
        // The most popular live items, ties by external id.
        let mut candidates: Vec<(u32, usize, Arc<str>)> = table
            .iter()
            .filter(|(_, s)| !s.column.is_empty() && !s.deleted)
            .filter_map(|(item, s)| Some((item, s.column.len(), index.items.name(item)?)))
            .collect();
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.2.cmp(&b.2)));
        candidates.truncate(config.max_items);
        // Local indices in external-id order, so the factorisation sees the same matrix on
        // every server whatever the dense ids.
        candidates.sort_by(|a, b| a.2.cmp(&b.2));
        let mut local = vec![usize::MAX; table.len()];
        for (l, c) in candidates.iter().enumerate() {
            local[c.0 as usize] = l;
        }
        let entries: usize = candidates.iter().map(|c| table.get(c.0).cooc.len()).sum();
        (candidates, local, entries)
    };
    let mut diag = Vec::with_capacity(candidates.len());
    // Each pair once, as (row, column, users) in 12 bytes: the list is the build's largest
    // allocation after the dense matrix, and is reserved at once (each pair is in two rows;
    // rows also hold items not modelled, so never beyond the pairs there can be).
    let n = candidates.len();
    let most = n * n.saturating_sub(1) / 2;
    let mut pairs: Vec<(u32, u32, u32)> =
        Vec::with_capacity((entries / 2 + entries / 32).min(most));
    let chunk = chunk.max(1);
    for (number, rows) in candidates.chunks(chunk).enumerate() {
        let table = index.item_table.read();
        for (k, c) in rows.iter().enumerate() {
            let li = number * chunk + k;
            let stats = table.get(c.0);
            diag.push(stats.column.len() as f64);
            for e in stats.cooc.entries() {
                let lj = local.get(e.item as usize).copied().unwrap_or(usize::MAX);
                if lj < li && e.users > 0 {
                    pairs.push((li as u32, lj as u32, e.users));
                }
            }
        }
    }
    copied();
    let params = EaseParams {
        lambda: config.lambda,
        neighbours: config.neighbours,
        threads: config.build_threads,
    };
    let pairs = pairs
        .into_iter()
        .map(|(i, j, users)| (i as usize, j as usize, f64::from(users)));
    let fitted = fit(&diag, pairs, &params)?;
    let items: Vec<u32> = candidates.iter().map(|c| c.0).collect();
    let total: usize = fitted.rows.iter().map(Vec::len).sum();
    let mut starts = Vec::with_capacity(items.len() + 1);
    let (mut targets, mut weights) = (Vec::with_capacity(total), Vec::with_capacity(total));
    starts.push(0);
    for row in fitted.rows {
        for (j, w) in row {
            targets.push(j);
            weights.push(w);
        }
        starts.push(targets.len());
    }
    Ok(assemble(
        version,
        now_ms,
        started.elapsed().as_secs_f64(),
        items,
        starts,
        targets,
        weights,
    ))
}

/// A model from its rows (`starts`, `targets` as local indices, `weights`) over `items`
/// (local index → dense id): derives the dense → local map and the fixed-point weights.
fn assemble(
    version: u64,
    built_ms: i64,
    build_seconds: f64,
    items: Vec<u32>,
    starts: Vec<usize>,
    targets: Vec<u32>,
    weights: Vec<f32>,
) -> EaseModel {
    debug_assert_eq!(starts.len(), items.len() + 1);
    debug_assert!(targets.iter().all(|&t| (t as usize) < items.len()));
    let mut local = vec![NOT_MODELLED; items.iter().map(|&i| i as usize + 1).max().unwrap_or(0)];
    for (l, &item) in items.iter().enumerate() {
        local[item as usize] = l as u32;
    }
    let fixed = weights
        .iter()
        .map(|&w| {
            let f = to_fixed(f64::from(w));
            debug_assert!(i64::try_from(f).is_ok(), "EASE weight {w} out of range");
            i64::try_from(f).unwrap_or(if f < 0 { i64::MIN } else { i64::MAX })
        })
        .collect::<Vec<i64>>();
    // Counting sort by target; sources come out in increasing order.
    let mut in_starts = vec![0usize; items.len() + 1];
    for (&t, &w) in targets.iter().zip(&weights) {
        if w > 0.0 {
            in_starts[t as usize + 1] += 1;
        }
    }
    for t in 0..items.len() {
        in_starts[t + 1] += in_starts[t];
    }
    let mut next = in_starts.clone();
    let mut in_sources = vec![0u32; in_starts[items.len()]];
    let mut in_weights = vec![0f32; in_starts[items.len()]];
    for (from, row) in starts.windows(2).enumerate() {
        for k in row[0]..row[1] {
            if weights[k] > 0.0 {
                let slot = &mut next[targets[k] as usize];
                in_sources[*slot] = from as u32;
                in_weights[*slot] = weights[k];
                *slot += 1;
            }
        }
    }
    let largest = fixed.iter().map(|f| u128::from(f.unsigned_abs())).max();
    let narrow = largest.unwrap_or(0) * items.len() as u128 <= i64::MAX as u128;
    EaseModel {
        version,
        built_ms,
        build_seconds,
        items,
        local,
        starts,
        targets,
        weights,
        fixed,
        in_starts,
        in_sources,
        in_weights,
        narrow,
    }
}

/// A model from explicit rows `(local target, weight)` over `items` (local index → dense id).
#[cfg(test)]
pub(crate) fn from_rows(items: Vec<u32>, rows: &[Vec<(u32, f32)>]) -> EaseModel {
    let mut starts = vec![0];
    let (mut targets, mut weights) = (Vec::new(), Vec::new());
    for row in rows {
        for &(t, w) in row {
            targets.push(t);
            weights.push(w);
        }
        starts.push(targets.len());
    }
    assemble(1, 0, 0.0, items, starts, targets, weights)
}

/// The version of the encoding below.
const ENCODING: u8 = 1;

/// Encodes a model with external item ids, so that another process (whose dense ids differ)
/// can install it with [`decode`]. Layout (little-endian, the conventions of
/// `snapshot.rs`): `encoding u8 (1), built_ms i64, build_seconds f64`, the modelled items'
/// external ids in local order (the snapshot string list: `u8 1, count u32, (u16 len +
/// bytes)` each), one `u32` row length per item, then per weight `target u32` (local index)
/// and `weight f32`. The version is not part of it: the cluster store keeps it. Items whose
/// name is unknown (never the case for a model built from the index) encode as `""`.
pub fn encode(model: &EaseModel, name: impl Fn(u32) -> Option<Arc<str>>) -> Vec<u8> {
    let names: Vec<Arc<str>> = model
        .items
        .iter()
        .map(|&i| name(i).unwrap_or_else(|| Arc::from("")))
        .collect();
    let names: Vec<&str> = names.iter().map(|n| &**n).collect();
    let mut out = Vec::with_capacity(
        17 + names.iter().map(|n| n.len() + 6).sum::<usize>() + model.targets.len() * 8,
    );
    out.push(ENCODING);
    out.extend_from_slice(&model.built_ms.to_le_bytes());
    out.extend_from_slice(&model.build_seconds.to_le_bytes());
    put_strings(&mut out, &names);
    for row in model.starts.windows(2) {
        out.extend_from_slice(&((row[1] - row[0]) as u32).to_le_bytes());
    }
    for (&t, &w) in model.targets.iter().zip(&model.weights) {
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

/// The inverse of [`encode`], in this process's dense ids: `dense` maps an external id to
/// its dense id (interning it if needed); `None` (the item table is full) refuses the model.
/// The weights are the encoded ones bit for bit, so the model scores exactly as the
/// writer's.
pub fn decode(
    bytes: &[u8],
    version: u64,
    mut dense: impl FnMut(&str) -> Option<u32>,
) -> Result<EaseModel, DecodeError> {
    let corrupt = |reason| DecodeError { reason };
    let mut r = Reader::new(bytes);
    if r.array::<1>()?[0] != ENCODING {
        return Err(corrupt("unknown item model encoding"));
    }
    let built_ms = i64::from_le_bytes(r.array()?);
    let build_seconds = f64::from_le_bytes(r.array()?);
    let names = r.strings()?;
    let n = names.len();
    let mut items = Vec::with_capacity(n);
    for name in &names {
        if name.is_empty() {
            return Err(corrupt("item model names an empty item id"));
        }
        items.push(dense(name).ok_or(corrupt("item table full"))?);
    }
    let mut sorted = items.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(corrupt("item model names an item twice"));
    }
    if n > r.remaining() / 4 {
        return Err(corrupt("row count exceeds record"));
    }
    let mut starts = Vec::with_capacity(n + 1);
    starts.push(0usize);
    for _ in 0..n {
        let len = u32::from_le_bytes(r.array()?) as usize;
        let end = starts[starts.len() - 1] + len;
        starts.push(end);
    }
    let total = starts[n];
    if total.checked_mul(8) != Some(r.remaining()) {
        return Err(corrupt("item model weights do not match its rows"));
    }
    let (mut targets, mut weights) = (Vec::with_capacity(total), Vec::with_capacity(total));
    for _ in 0..total {
        let t = u32::from_le_bytes(r.array()?);
        let w = f32::from_le_bytes(r.array()?);
        if t as usize >= n {
            return Err(corrupt("item model target out of range"));
        }
        if !w.is_finite() {
            return Err(corrupt("item model weight is not finite"));
        }
        targets.push(t);
        weights.push(w);
    }
    Ok(assemble(
        version,
        built_ms,
        build_seconds,
        items,
        starts,
        targets,
        weights,
    ))
}
