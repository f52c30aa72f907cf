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

use rustc_hash::FxHashMap;

use momentum_models::ease::{fit, EaseError, EaseParams};
use momentum_models::similarity::to_fixed;

use crate::config::EaseConfig;
use crate::index::Index;

/// A published model: item → its strongest `(item, weight)` pairs, best first.
#[derive(Debug, Default)]
pub struct EaseModel {
    /// 0 before the first build; then increasing.
    pub version: u64,
    /// Unix milliseconds of the build.
    pub built_ms: i64,
    /// Wall time of the build, in seconds.
    pub build_seconds: f64,
    rows: FxHashMap<u32, Box<[(u32, f32)]>>,
    /// The same rows with each weight in the scorers' fixed point (`to_fixed`), so scoring
    /// adds integers: the sums are the bits `add` of the floats would give. A weight of
    /// magnitude 2²³ or more (never seen: λ bounds them far below 1) would saturate.
    fixed: FxHashMap<u32, Box<[(u32, i64)]>>,
}

impl EaseModel {
    /// Items modelled.
    pub fn items(&self) -> usize {
        self.rows.len()
    }

    /// Whether `item` is modelled.
    pub fn covers(&self, item: u32) -> bool {
        self.rows.contains_key(&item)
    }

    /// The weights from `item` to others, best first (empty when not modelled).
    pub fn row(&self, item: u32) -> &[(u32, f32)] {
        self.rows.get(&item).map_or(&[], |r| r)
    }

    /// [`EaseModel::row`] in fixed point.
    pub fn fixed_row(&self, item: u32) -> &[(u32, i64)] {
        self.fixed.get(&item).map_or(&[], |r| r)
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
    let rows: FxHashMap<u32, Box<[(u32, f32)]>> = fitted
        .rows
        .into_iter()
        .enumerate()
        .map(|(l, row)| {
            let row: Box<[(u32, f32)]> = row
                .into_iter()
                .map(|(j, w)| (candidates[j as usize].0, w))
                .collect();
            (candidates[l].0, row)
        })
        .collect();
    let fixed = rows
        .iter()
        .map(|(&item, row)| {
            let row: Box<[(u32, i64)]> = row
                .iter()
                .map(|&(j, w)| {
                    let fixed = to_fixed(f64::from(w));
                    debug_assert!(i64::try_from(fixed).is_ok(), "EASE weight {w} out of range");
                    (
                        j,
                        i64::try_from(fixed).unwrap_or(if fixed < 0 { i64::MIN } else { i64::MAX }),
                    )
                })
                .collect();
            (item, row)
        })
        .collect();
    Ok(EaseModel {
        version,
        built_ms: now_ms,
        build_seconds: started.elapsed().as_secs_f64(),
        rows,
        fixed,
    })
}
