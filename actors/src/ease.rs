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

/// A published model: each modelled item's strongest weights to other modelled items, best
/// first, in one contiguous array.
///
/// Modelled items have local indices `0..items()` in external-id order, so a scorer can sum
/// rows into a dense array of `items()` slots (scanned in external-id order) instead of one
/// indexed by dense id, which may be far larger than the modelled part of the catalogue.
#[derive(Debug, Default)]
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

/// Builds a model from the index's current counts. Runs for seconds on large catalogues:
/// call it off the actors' threads.
pub fn build(
    index: &Index,
    config: &EaseConfig,
    version: u64,
    now_ms: i64,
) -> Result<EaseModel, EaseError> {
    let started = std::time::Instant::now();
    // Counts are copied under the table's read lock; the factorisation runs without it.
    let (candidates, diag, pairs) = {
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
        let diag: Vec<f64> = candidates.iter().map(|c| c.1 as f64).collect();
        let mut pairs = Vec::new();
        for (li, c) in candidates.iter().enumerate() {
            for e in table.get(c.0).cooc.entries() {
                let lj = local.get(e.item as usize).copied().unwrap_or(usize::MAX);
                if lj < li && e.users > 0 {
                    pairs.push((li, lj, f64::from(e.users)));
                }
            }
        }
        (candidates, diag, pairs)
    };
    let params = EaseParams {
        lambda: config.lambda,
        neighbours: config.neighbours,
        threads: 0,
    };
    let fitted = fit(&diag, pairs, &params)?;
    let items: Vec<u32> = candidates.iter().map(|c| c.0).collect();
    let mut local = vec![NOT_MODELLED; items.iter().map(|&i| i as usize + 1).max().unwrap_or(0)];
    for (l, &item) in items.iter().enumerate() {
        local[item as usize] = l as u32;
    }
    let mut starts = Vec::with_capacity(items.len() + 1);
    let total: usize = fitted.rows.iter().map(Vec::len).sum();
    let (mut targets, mut weights, mut fixed) = (
        Vec::with_capacity(total),
        Vec::with_capacity(total),
        Vec::with_capacity(total),
    );
    starts.push(0);
    for row in fitted.rows {
        for (j, w) in row {
            let f = to_fixed(f64::from(w));
            debug_assert!(i64::try_from(f).is_ok(), "EASE weight {w} out of range");
            targets.push(j);
            weights.push(w);
            fixed.push(i64::try_from(f).unwrap_or(if f < 0 { i64::MIN } else { i64::MAX }));
        }
        starts.push(targets.len());
    }
    Ok(EaseModel {
        version,
        built_ms: now_ms,
        build_seconds: started.elapsed().as_secs_f64(),
        items,
        local,
        starts,
        targets,
        weights,
        fixed,
    })
}
