//! Hybrid ranking: blends collaborative-filtering and content scores of one request into one
//! list.
//!
//! The two sources live on different scales (CF scores are sums of similarities, content scores
//! are cosines), so each list is first [`normalise`]d per request by **dividing by its maximum**
//! (negative and non-finite scores become 0 / are dropped). Dividing by the maximum, unlike
//! min-max, keeps ratios and keeps a true zero at zero: with min-max the weakest of two good
//! content matches would lose all its content credit, and a single candidate would have no
//! defined score. The blend is then
//! `score = (w_cf · cf + w_content · content) / (w_cf + w_content)`, which is
//! `0.6 · CF + 0.4 · content` for the default weights and stays in [0, 1] whatever the variant's
//! weights sum to. An item missing from a list has 0 from that source.

use std::collections::BTreeMap;

use crate::similarity::TieBreak;
use crate::ModelError;

/// Which signal contributed most to a hybrid score (for the `reasons` of a recommendation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Collaborative filtering: "people like you also ...".
    Collaborative,
    /// Content: "matches your interest in ...".
    Content,
}

impl Source {
    /// Stable snake_case name, for API reasons and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Collaborative => "collaborative",
            Source::Content => "content",
        }
    }
}

/// One blended candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// The item.
    pub item: u32,
    /// Blended score in [0, 1].
    pub score: f64,
    /// Normalised CF score in [0, 1] (0 if the item was not a CF candidate).
    pub cf: f64,
    /// Normalised content score in [0, 1] (0 if the item was not a content candidate).
    pub content: f64,
    /// The source with the larger weighted contribution (`Collaborative` on a tie).
    pub source: Source,
}

/// Checks a pair of blend weights: both finite, non-negative, and not both zero.
pub fn validate_weights(w_cf: f64, w_content: f64) -> Result<(), ModelError> {
    let ok = |w: f64| w.is_finite() && w >= 0.0;
    if !ok(w_cf) || !ok(w_content) {
        return Err(ModelError::InvalidInput {
            reason: format!("hybrid weights must be finite and >= 0, got {w_cf} and {w_content}"),
        });
    }
    if w_cf + w_content <= 0.0 {
        return Err(ModelError::InvalidInput {
            reason: "hybrid weights must not both be 0".to_string(),
        });
    }
    Ok(())
}

/// Scales the scores of one request into [0, 1] by dividing by the largest score.
///
/// Non-finite scores are dropped; negative scores become 0; when the largest score is not
/// positive (all zero or negative) every score is 0. An item listed twice keeps its largest
/// score. The result is ordered by item id. Edge cases: empty → empty; one candidate with a
/// positive score → 1; all equal positive scores → all 1.
pub fn normalise(scores: &[(u32, f64)]) -> Vec<(u32, f64)> {
    let mut by_item: BTreeMap<u32, f64> = BTreeMap::new();
    for &(item, s) in scores {
        if !s.is_finite() {
            continue;
        }
        let s = s.max(0.0);
        let slot = by_item.entry(item).or_insert(s);
        *slot = slot.max(s);
    }
    let max = by_item.values().copied().fold(0.0f64, f64::max);
    by_item
        .into_iter()
        .map(|(item, s)| (item, if max > 0.0 { (s / max).min(1.0) } else { 0.0 }))
        .collect()
}

/// Min-max normalisation over one request's candidate pool: the best candidate gets 1, the
/// weakest 0, the rest in between linearly. A pool of equal scores (or of one) maps to 1.
/// Non-finite scores are dropped. Used for the collaborative pool, whose scores are sums of
/// similarities with a long flat tail: stretching the pool's own range keeps the mix from
/// being decided by the content term alone among candidates of nearly equal CF score.
pub fn normalise_min_max(scores: &[(u32, f64)]) -> Vec<(u32, f64)> {
    let finite: Vec<(u32, f64)> = scores.iter().copied().filter(|s| s.1.is_finite()).collect();
    let lo = finite.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
    let hi = finite.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
    finite
        .into_iter()
        .map(|(item, s)| {
            let v = if hi > lo { (s - lo) / (hi - lo) } else { 1.0 };
            (item, v.clamp(0.0, 1.0))
        })
        .collect()
}

/// Blends CF and content candidates (see the module documentation) into one list ordered by
/// score descending, ties by item ascending. Weights that fail [`validate_weights`] are
/// replaced: a negative or non-finite weight counts as 0, and if both are then 0 the sources
/// are weighted equally — validate the configuration up front to avoid this.
pub fn mix(cf: &[(u32, f64)], content: &[(u32, f64)], w_cf: f64, w_content: f64) -> Vec<Scored> {
    mix_by(cf, content, w_cf, w_content, &u32::cmp)
}

/// [`mix`] with equal scores ordered by `tie` instead of the item id.
pub fn mix_by(
    cf: &[(u32, f64)],
    content: &[(u32, f64)],
    w_cf: f64,
    w_content: f64,
    tie: TieBreak<'_>,
) -> Vec<Scored> {
    let clean = |w: f64| if w.is_finite() && w > 0.0 { w } else { 0.0 };
    let (mut a, mut b) = (clean(w_cf), clean(w_content));
    if a + b <= 0.0 {
        (a, b) = (1.0, 1.0);
    }
    let total = a + b;
    let mut merged: BTreeMap<u32, (f64, f64)> = BTreeMap::new();
    for (item, s) in normalise(cf) {
        merged.entry(item).or_insert((0.0, 0.0)).0 = s;
    }
    for (item, s) in normalise(content) {
        merged.entry(item).or_insert((0.0, 0.0)).1 = s;
    }
    let mut out: Vec<Scored> = merged
        .into_iter()
        .map(|(item, (c, t))| {
            let (pc, pt) = (a * c, b * t);
            Scored {
                item,
                score: ((pc + pt) / total).clamp(0.0, 1.0),
                cf: c,
                content: t,
                source: if pc >= pt {
                    Source::Collaborative
                } else {
                    Source::Content
                },
            }
        })
        .collect();
    out.sort_by(|x, y| {
        y.score
            .total_cmp(&x.score)
            .then_with(|| tie(&x.item, &y.item))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_spans_the_pool_and_handles_edges() {
        let got = normalise_min_max(&[(1, 3.0), (2, 1.0), (3, 2.0), (4, f64::NAN)]);
        assert_eq!(got, vec![(1, 1.0), (2, 0.0), (3, 0.5)]);
        assert_eq!(normalise_min_max(&[(7, 0.3)]), vec![(7, 1.0)]);
        assert_eq!(
            normalise_min_max(&[(1, 2.0), (2, 2.0)]),
            vec![(1, 1.0), (2, 1.0)]
        );
        assert!(normalise_min_max(&[]).is_empty());
    }
    use proptest::prelude::*;

    #[test]
    fn normalise_edge_cases() {
        assert!(normalise(&[]).is_empty());
        assert_eq!(normalise(&[(7, 0.3)]), vec![(7, 1.0)]);
        assert_eq!(normalise(&[(1, 0.5), (2, 0.5)]), vec![(1, 1.0), (2, 1.0)]);
        assert_eq!(normalise(&[(1, 0.0), (2, 0.0)]), vec![(1, 0.0), (2, 0.0)]);
        assert_eq!(normalise(&[(1, -2.0), (2, -1.0)]), vec![(1, 0.0), (2, 0.0)]);
        assert_eq!(
            normalise(&[(1, 4.0), (2, 1.0), (3, -1.0), (4, f64::NAN), (2, 2.0)]),
            vec![(1, 1.0), (2, 0.5), (3, 0.0)]
        );
        assert_eq!(normalise(&[(1, f64::INFINITY)]), vec![]);
    }

    #[test]
    fn mix_blends_and_records_source() {
        let cf = [(1, 10.0), (2, 5.0)];
        let content = [(2, 0.9), (3, 0.45)];
        let out = mix(&cf, &content, 0.6, 0.4);
        let ids: Vec<u32> = out.iter().map(|s| s.item).collect();
        assert_eq!(ids, vec![2, 1, 3]);
        assert!((out[0].score - (0.6 * 0.5 + 0.4 * 1.0)).abs() < 1e-12);
        assert_eq!(out[0].source, Source::Content);
        assert!((out[1].score - 0.6).abs() < 1e-12);
        assert_eq!(out[1].source, Source::Collaborative);
        assert!((out[2].score - 0.2).abs() < 1e-12);
        assert_eq!(out[2].source, Source::Content);
        assert_eq!(Source::Content.as_str(), "content");
    }

    #[test]
    fn mix_breaks_ties_by_id_and_handles_bad_weights() {
        let out = mix(&[(5, 1.0), (3, 1.0)], &[], 0.6, 0.4);
        assert_eq!(out.iter().map(|s| s.item).collect::<Vec<_>>(), vec![3, 5]);
        assert!((out[0].score - 0.6).abs() < 1e-12);
        // Weights that do not sum to 1 are rescaled.
        let out = mix(&[(1, 1.0)], &[(1, 1.0)], 3.0, 1.0);
        assert!((out[0].score - 1.0).abs() < 1e-12);
        // Invalid weights fall back to equal weights.
        let out = mix(&[(1, 1.0)], &[(2, 1.0)], f64::NAN, -1.0);
        assert!((out[0].score - 0.5).abs() < 1e-12);
        assert!(mix(&[], &[], 0.6, 0.4).is_empty());
    }

    #[test]
    fn weights_validation() {
        assert!(validate_weights(0.6, 0.4).is_ok());
        assert!(validate_weights(0.0, 1.0).is_ok());
        assert!(validate_weights(0.0, 0.0).is_err());
        assert!(validate_weights(-0.1, 1.0).is_err());
        assert!(validate_weights(f64::INFINITY, 1.0).is_err());
    }

    fn scores() -> impl Strategy<Value = Vec<(u32, f64)>> {
        prop::collection::vec(
            (
                0u32..40,
                prop_oneof![
                    8 => -10.0f64..100.0,
                    1 => Just(0.0),
                    1 => Just(f64::NAN),
                ],
            ),
            0..30,
        )
    }

    proptest! {
        #[test]
        fn mix_scores_in_unit_range_and_sorted(
            cf in scores(),
            content in scores(),
            w_cf in -1.0f64..2.0,
            w_content in -1.0f64..2.0,
        ) {
            let out = mix(&cf, &content, w_cf, w_content);
            for s in &out {
                prop_assert!((0.0..=1.0).contains(&s.score));
                prop_assert!((0.0..=1.0).contains(&s.cf));
                prop_assert!((0.0..=1.0).contains(&s.content));
            }
            for w in out.windows(2) {
                prop_assert!(w[0].score > w[1].score
                    || (w[0].score == w[1].score && w[0].item < w[1].item));
            }
            let mut ids: Vec<u32> = cf.iter().chain(&content)
                .filter(|(_, s)| s.is_finite()).map(|(i, _)| *i).collect();
            ids.sort_unstable();
            ids.dedup();
            let mut got: Vec<u32> = out.iter().map(|s| s.item).collect();
            got.sort_unstable();
            prop_assert_eq!(got, ids);
        }
    }
}
