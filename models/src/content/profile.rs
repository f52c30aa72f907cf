//! Content-based scoring: a user's interest profile built from the TF-IDF vectors of the items
//! they engaged with, and cosine scores of candidate items reached through the inverted index.
//!
//! Profile: `p = Σ_i w_i · v_i` over the engaged items `i` with interaction weight `w_i > 0`,
//! where `v_i` is the item's L2-normalised TF-IDF vector; then only the `max_terms` strongest
//! terms are kept (ties by term) and the result is L2-normalised, so `p · v_c` is the cosine of
//! the (truncated) profile with a candidate `c`. Non-positive or non-finite weights and unknown
//! items are skipped: the profile models interests, negative signals are handled elsewhere. A
//! profile stores term strings, not internal term ids, so it stays valid (if slightly stale)
//! across later index mutations.
//!
//! Scoring never scans the catalogue: it walks the posting lists of the profile's terms,
//! strongest first, accumulating `p_t · tf(c, t) · idf(t)` per candidate and dividing by the
//! candidate's norm at the end. Per-request cost is bounded by [`ScoringLimits`]: a term whose
//! posting list is longer than `max_posting_len` is skipped (such terms appear in a large share
//! of the catalogue, so their IDF is low and they barely discriminate, while walking them would
//! make a request cost proportional to the catalogue), and once `max_postings_visited` postings
//! have been read, remaining terms whose lists would exceed the budget are skipped too. With
//! skipped terms a score is a lower bound of the true cosine.

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use super::tfidf::TfIdfIndex;
use crate::similarity::{from_fixed, to_fixed, TieBreak};

/// Bounds on the cost of building a profile and scoring candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoringLimits {
    /// Terms kept in a user profile (default 64).
    pub max_profile_terms: usize,
    /// Terms with a longer posting list are not traversed (default 20 000).
    pub max_posting_len: usize,
    /// Total postings read per request (default 200 000).
    pub max_postings_visited: usize,
}

impl Default for ScoringLimits {
    fn default() -> Self {
        Self {
            max_profile_terms: 64,
            max_posting_len: 20_000,
            max_postings_visited: 200_000,
        }
    }
}

/// A user's L2-normalised interest vector over terms, strongest term first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InterestProfile {
    terms: Vec<(Arc<str>, f64)>,
}

impl InterestProfile {
    /// The profile's terms and weights, strongest first (ties by term); weights are positive and
    /// their squares sum to 1 (unless the profile is empty).
    pub fn terms(&self) -> &[(Arc<str>, f64)] {
        &self.terms
    }

    /// Whether the profile has no term (no engaged item with content): the caller should fall
    /// back to popularity.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// One content-based candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentMatch {
    /// The candidate item.
    pub item: u32,
    /// Cosine of the profile and the item's TF-IDF vector, in [0, 1].
    pub score: f64,
    /// The term contributing most to the score, for "matches your interest in `<term>`" (show it
    /// with [`super::text::display_term`]).
    pub top_term: Arc<str>,
}

/// The per-term sums of [`TfIdfIndex::user_profile`] (all zero between calls) and the terms
/// they touched.
#[derive(Debug, Default)]
struct ProfileSums {
    sums: Vec<i128>,
    touched: Vec<u32>,
}

thread_local! {
    static PROFILE_SUMS: std::cell::RefCell<ProfileSums> = Default::default();
}

/// `sums[id]`, growing the array with zeros as needed.
fn dense_slot(sums: &mut Vec<i128>, id: u32) -> &mut i128 {
    let idx = id as usize;
    if idx >= sums.len() {
        sums.resize(idx + 1, 0);
    }
    &mut sums[idx]
}

impl TfIdfIndex {
    /// Builds the profile of a user from `(item, interaction weight)` pairs (an item listed
    /// twice contributes twice), keeping the `max_terms` strongest terms.
    pub fn user_profile(&self, engaged: &[(u32, f32)], max_terms: usize) -> InterestProfile {
        // Fixed point, so the sum does not depend on the order of `engaged`; summed per term
        // id in a dense array of this thread's, reset as it is read.
        let mut ranked: Vec<(&Arc<str>, f64)> = PROFILE_SUMS.with_borrow_mut(|scratch| {
            let ProfileSums { sums, touched } = scratch;
            touched.clear();
            for &(item, weight) in engaged {
                let w = f64::from(weight);
                if !(w.is_finite() && w > 0.0) {
                    continue;
                }
                let Some(terms) = self.normalised_terms(item) else {
                    continue;
                };
                for (id, x) in terms {
                    let slot = dense_slot(sums, id);
                    if *slot == 0 {
                        touched.push(id);
                    }
                    *slot += to_fixed(w * x);
                }
            }
            // Ranked by id and weight first; only the kept terms' names are cloned. A term
            // listed twice (its sum was still 0 when seen again) is taken once.
            touched
                .iter()
                .map(|&id| (id, from_fixed(std::mem::take(&mut sums[id as usize]))))
                .filter(|&(_, w)| w > 0.0 && w.is_finite())
                .filter_map(|(id, w)| self.term_arc(id).map(|name| (name, w)))
                .collect()
        });
        let order = |a: &(&Arc<str>, f64), b: &(&Arc<str>, f64)| {
            b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0))
        };
        if ranked.len() > max_terms && max_terms > 0 {
            ranked.select_nth_unstable_by(max_terms - 1, order);
        }
        ranked.truncate(max_terms);
        ranked.sort_by(order);
        let mut terms: Vec<(Arc<str>, f64)> = ranked
            .into_iter()
            .map(|(name, w)| (Arc::clone(name), w))
            .collect();
        let norm = terms.iter().map(|(_, w)| w * w).sum::<f64>().sqrt();
        if norm > 0.0 && norm.is_finite() {
            for (_, w) in &mut terms {
                *w /= norm;
            }
        } else {
            terms.clear();
        }
        InterestProfile { terms }
    }

    /// Content scores of given candidates (e.g. the collaborative pool), in the order given:
    /// the cosine of `profile` with each item's TF-IDF vector and the strongest shared term.
    /// Items without content or without a shared term score 0 with no term. Cost is
    /// `O(profile terms + Σ item terms)`; nothing else in the catalogue is touched.
    pub fn score_items(
        &self,
        profile: &InterestProfile,
        items: &[u32],
    ) -> Vec<(u32, f64, Option<Arc<str>>)> {
        let lookup: HashMap<u32, (usize, f64)> = profile
            .terms
            .iter()
            .enumerate()
            .filter_map(|(pos, (term, w))| self.term_id(term).map(|id| (id, (pos, *w))))
            .collect();
        items
            .iter()
            .map(|&item| {
                let Some(doc) = self.items.get(&item) else {
                    return (item, 0.0, None);
                };
                let norm = self.doc_norm(doc);
                let (mut dot, mut best) = (0.0, None::<(f64, usize)>);
                for &(id, count) in &doc.terms {
                    if let Some(&(pos, pw)) = lookup.get(&id) {
                        let contribution = pw * self.idf_of(id) * f64::from(count);
                        dot += contribution;
                        if best.is_none_or(|b| contribution > b.0) {
                            best = Some((contribution, pos));
                        }
                    }
                }
                if norm <= 0.0 || dot <= 0.0 {
                    return (item, 0.0, None);
                }
                let term = best
                    .and_then(|(_, pos)| profile.terms.get(pos))
                    .map(|t| Arc::clone(&t.0));
                (item, (dot / norm).clamp(0.0, 1.0), term)
            })
            .collect()
    }

    /// The `limit` best candidates sharing at least one term with `profile`, by cosine
    /// descending then item ascending, skipping items for which `exclude` is true (already
    /// engaged, wrong type, ...). Cost is bounded by `limits` (see the module documentation).
    pub fn score_candidates(
        &self,
        profile: &InterestProfile,
        exclude: impl Fn(u32) -> bool,
        limit: usize,
        limits: &ScoringLimits,
    ) -> Vec<ContentMatch> {
        self.score_candidates_by(profile, exclude, limit, limits, &u32::cmp)
    }

    /// [`TfIdfIndex::score_candidates`] with equal scores ordered by `tie` instead of the
    /// item id.
    pub fn score_candidates_by(
        &self,
        profile: &InterestProfile,
        exclude: impl Fn(u32) -> bool,
        limit: usize,
        limits: &ScoringLimits,
        tie: TieBreak<'_>,
    ) -> Vec<ContentMatch> {
        if limit == 0 {
            return Vec::new();
        }
        // item → (dot product, best contribution, index of the best term in the profile)
        let mut acc: HashMap<u32, (f64, f64, usize)> = HashMap::default();
        let mut visited = 0usize;
        for (pos, (term, p)) in profile.terms.iter().enumerate() {
            let Some(id) = self.term_id(term) else {
                continue;
            };
            let Some(entry) = self.terms.get(id as usize) else {
                continue;
            };
            let len = entry.postings.len();
            if len > limits.max_posting_len || visited + len > limits.max_postings_visited {
                continue;
            }
            visited += len;
            let pw = p * self.idf_of(id);
            for &(item, count) in &entry.postings {
                if exclude(item) {
                    continue;
                }
                let contribution = pw * f64::from(count);
                let slot = acc.entry(item).or_insert((0.0, f64::NEG_INFINITY, pos));
                slot.0 += contribution;
                if contribution > slot.1 {
                    slot.1 = contribution;
                    slot.2 = pos;
                }
            }
        }
        let mut out: Vec<ContentMatch> = acc
            .into_iter()
            .filter_map(|(item, (dot, _, pos))| {
                let norm = self.doc_norm(self.items.get(&item)?);
                if norm <= 0.0 {
                    return None;
                }
                let (term, _) = profile.terms.get(pos)?;
                Some(ContentMatch {
                    item,
                    score: (dot / norm).clamp(0.0, 1.0),
                    top_term: Arc::clone(term),
                })
            })
            .collect();
        let by_rank = |a: &ContentMatch, b: &ContentMatch| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| tie(&a.item, &b.item))
        };
        if out.len() > limit {
            out.select_nth_unstable_by(limit - 1, by_rank);
            out.truncate(limit);
        }
        out.sort_unstable_by(by_rank);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::text::TermCounts;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn counts(pairs: &[(&str, u32)]) -> TermCounts {
        pairs.iter().map(|&(t, c)| (t.to_string(), c)).collect()
    }

    #[test]
    fn scores_do_not_depend_on_upsert_order() {
        let docs = [
            (
                1,
                counts(&[("run", 2), ("marathon", 1), ("tag:fitness", 3)]),
            ),
            (2, counts(&[("read", 1), ("books", 2), ("tag:learning", 3)])),
            (3, counts(&[("run", 1), ("books", 1), ("zen", 5)])),
            (
                4,
                counts(&[("marathon", 3), ("zen", 1), ("tag:fitness", 3)]),
            ),
        ];
        let mut forward = TfIdfIndex::new();
        for (item, terms) in &docs {
            forward.upsert_item(*item, terms);
        }
        let mut backward = TfIdfIndex::new();
        // A stale item first, so the term ids differ between the two indexes.
        backward.upsert_item(9, &counts(&[("zen", 1), ("yoga", 1)]));
        for (item, terms) in docs.iter().rev() {
            backward.upsert_item(*item, terms);
        }
        backward.remove_item(9);
        let engaged = [(1, 2.0f32), (3, 1.0)];
        let pf = forward.user_profile(&engaged, 64);
        let pb = backward.user_profile(&engaged, 64);
        let bits = |v: &[(u32, f64, Option<Arc<str>>)]| {
            v.iter().map(|x| (x.0, x.1.to_bits())).collect::<Vec<_>>()
        };
        assert_eq!(
            bits(&forward.score_items(&pf, &[1, 2, 3, 4])),
            bits(&backward.score_items(&pb, &[1, 2, 3, 4]))
        );
        for a in 1..=4 {
            for b in 1..=4 {
                assert_eq!(
                    forward.cosine(a, b).to_bits(),
                    backward.cosine(a, b).to_bits()
                );
            }
        }
    }

    #[test]
    fn score_items_agrees_with_score_candidates() {
        let index = catalogue();
        let profile = index.user_profile(&[(1, 1.0)], 64);
        let via_index = index.score_candidates(&profile, |_| false, 100, &ScoringLimits::default());
        let items: Vec<u32> = via_index.iter().map(|m| m.item).collect();
        let direct = index.score_items(&profile, &items);
        for (m, d) in via_index.iter().zip(&direct) {
            assert_eq!(m.item, d.0);
            assert!((m.score - d.1).abs() < 1e-12);
            assert_eq!(Some(&m.top_term), d.2.as_ref());
        }
        assert_eq!(index.score_items(&profile, &[999]), vec![(999, 0.0, None)]);
    }

    fn catalogue() -> TfIdfIndex {
        let mut index = TfIdfIndex::new();
        index.upsert_item(
            1,
            &counts(&[("run", 2), ("marathon", 1), ("tag:fitness", 3)]),
        );
        index.upsert_item(2, &counts(&[("run", 1), ("tag:fitness", 3)]));
        index.upsert_item(3, &counts(&[("marathon", 2), ("training", 1)]));
        index.upsert_item(4, &counts(&[("read", 2), ("tag:books", 3)]));
        index.upsert_item(5, &counts(&[("novel", 1), ("tag:books", 3)]));
        index.upsert_item(6, &counts(&[]));
        index
    }

    /// Profile · item vector computed naively from the public API.
    fn naive_cosine(index: &TfIdfIndex, profile: &InterestProfile, item: u32) -> f64 {
        let v: BTreeMap<&str, f64> = index.item_vector(item).unwrap().into_iter().collect();
        profile
            .terms()
            .iter()
            .map(|(t, p)| p * v.get(&**t).copied().unwrap_or(0.0))
            .sum()
    }

    #[test]
    fn profile_is_normalised_weighted_and_truncated() {
        let index = catalogue();
        let p = index.user_profile(
            &[(1, 1.0), (4, 0.5), (99, 1.0), (2, -1.0), (3, f32::NAN)],
            64,
        );
        let sq: f64 = p.terms().iter().map(|(_, w)| w * w).sum();
        assert!((sq - 1.0).abs() < 1e-12);
        assert_eq!(p.terms().len(), 5); // run, marathon, tag:fitness, read, tag:books
        assert!(p.terms().windows(2).all(|w| w[0].1 >= w[1].1));
        let strongest = &p.terms()[0].0;
        assert!(["run", "tag:fitness"].contains(&&**strongest));
        let short = index.user_profile(&[(1, 1.0), (4, 0.5)], 2);
        assert_eq!(short.terms().len(), 2);
        let sq: f64 = short.terms().iter().map(|(_, w)| w * w).sum();
        assert!((sq - 1.0).abs() < 1e-12);
        assert!(index.user_profile(&[(6, 1.0)], 64).is_empty());
        assert!(index.user_profile(&[], 64).is_empty());
        assert!(index.user_profile(&[(1, 1.0)], 0).is_empty());
    }

    #[test]
    fn scores_are_cosines_through_postings_only() {
        let index = catalogue();
        let p = index.user_profile(&[(1, 1.0)], 64);
        let out = index.score_candidates(&p, |i| i == 1, 10, &ScoringLimits::default());
        let items: Vec<u32> = out.iter().map(|m| m.item).collect();
        // Items 4, 5, 6 share no term with item 1: never reached.
        assert_eq!(items, vec![2, 3]);
        for m in &out {
            assert!((m.score - naive_cosine(&index, &p, m.item)).abs() < 1e-12);
        }
        assert_eq!(&*out[1].top_term, "marathon");
        // Without exclusion the item itself scores 1.
        let out = index.score_candidates(&p, |_| false, 1, &ScoringLimits::default());
        assert_eq!(out[0].item, 1);
        assert!((out[0].score - 1.0).abs() < 1e-12);
        assert!(index
            .score_candidates(&p, |_| false, 0, &ScoringLimits::default())
            .is_empty());
    }

    #[test]
    fn explanation_term_is_the_largest_contribution() {
        let index = catalogue();
        let p = index.user_profile(&[(1, 1.0), (4, 1.0)], 64);
        let out = index.score_candidates(&p, |_| false, 10, &ScoringLimits::default());
        let five = out.iter().find(|m| m.item == 5).unwrap();
        assert_eq!(&*five.top_term, "tag:books");
        let two = out.iter().find(|m| m.item == 2).unwrap();
        assert_eq!(&*two.top_term, "tag:fitness");
    }

    #[test]
    fn long_posting_lists_and_budget_are_skipped() {
        let index = catalogue();
        let p = index.user_profile(&[(1, 1.0)], 64);
        // Every term of item 1 has df 2: with a max of 1, nothing is traversed.
        let strict = ScoringLimits {
            max_posting_len: 1,
            ..ScoringLimits::default()
        };
        assert!(index
            .score_candidates(&p, |_| false, 10, &strict)
            .is_empty());
        // A budget of 2 postings covers only the strongest term.
        let budget = ScoringLimits {
            max_postings_visited: 2,
            ..ScoringLimits::default()
        };
        let out = index.score_candidates(&p, |_| false, 10, &budget);
        assert!(!out.is_empty() && out.len() <= 2);
        for m in &out {
            assert!(m.score <= naive_cosine(&index, &p, m.item) + 1e-12);
        }
    }

    #[test]
    fn profile_survives_index_changes() {
        let mut index = catalogue();
        let p = index.user_profile(&[(3, 1.0)], 64);
        index.remove_item(3);
        index.remove_item(1);
        index.upsert_item(7, &counts(&[("training", 1), ("plan", 1)]));
        let out = index.score_candidates(&p, |_| false, 10, &ScoringLimits::default());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].item, 7);
        assert_eq!(&*out[0].top_term, "training");
    }

    proptest! {
        #[test]
        fn scores_match_naive_cosine_and_are_ordered(
            docs in prop::collection::btree_map(0u32..30, prop::collection::btree_map(0u8..15, 1u32..4, 0..5), 1..30),
            engaged in prop::collection::vec((0u32..30, 0.1f32..5.0), 0..6),
            max_terms in 1usize..10,
            limit in 1usize..10,
        ) {
            let mut index = TfIdfIndex::new();
            for (item, terms) in &docs {
                let c: TermCounts = terms.iter().map(|(t, n)| (format!("t{t}"), *n)).collect();
                index.upsert_item(*item, &c);
            }
            let p = index.user_profile(&engaged, max_terms);
            prop_assert!(p.terms().len() <= max_terms);
            let out = index.score_candidates(&p, |i| i % 7 == 0, limit, &ScoringLimits::default());
            prop_assert!(out.len() <= limit);
            for w in out.windows(2) {
                prop_assert!(w[0].score > w[1].score || (w[0].score == w[1].score && w[0].item < w[1].item));
            }
            for m in &out {
                prop_assert!(m.item % 7 != 0);
                prop_assert!((0.0..=1.0).contains(&m.score));
                prop_assert!((m.score - naive_cosine(&index, &p, m.item)).abs() < 1e-9);
            }
            // Nothing better was left out.
            if out.len() == limit {
                let worst = out[limit - 1].score;
                for &item in docs.keys().filter(|i| *i % 7 != 0) {
                    if !out.iter().any(|m| m.item == item) {
                        prop_assert!(naive_cosine(&index, &p, item) <= worst + 1e-9);
                    }
                }
            }
        }
    }
}
