//! Diversity re-ranking of a recommendation list, so one item type or tag cannot dominate it,
//! and the intra-list diversity metric.
//!
//! [`rerank`] is Maximal Marginal Relevance (Carbonell & Goldstein, 1998): it picks items one by
//! one, each time the candidate maximising `λ · relevance − (1 − λ) · max_sim`, where `max_sim`
//! is its largest similarity to an already picked item. `λ = 1` is pure relevance order, `λ = 0`
//! pure novelty. Relevance is expected in [0, 1] (the hybrid scores), similarities are clamped
//! to [0, 1].
//!
//! On top of MMR, hard caps: at most `max_per_type` items of one `type` and `max_per_tag` items
//! of one dominant tag. Items without a type (tag) are not limited by that cap. When no
//! remaining candidate satisfies the caps and the list is still short, the rest is filled with
//! the best remaining candidates by the same MMR objective, caps ignored: a full list beats a
//! diverse but short one, and the caps are only exceeded when nothing else is left.
//!
//! Cost: O(n · m) similarity calls for `n` picks out of `m` candidates (none when `λ = 1`), so
//! the caller bounds `m` (e.g. a few times `n`).

use std::collections::HashMap;

use crate::similarity::TieBreak;
use crate::ModelError;

/// Parameters of [`rerank`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiversityConfig {
    /// Trade-off between relevance (1) and novelty (0), in [0, 1] (default 0.7).
    pub lambda: f64,
    /// At most this many items of one type (`None`: no cap; the default).
    pub max_per_type: Option<usize>,
    /// At most this many items with the same dominant tag (`None`: no cap; the default).
    pub max_per_tag: Option<usize>,
}

impl Default for DiversityConfig {
    fn default() -> Self {
        Self {
            lambda: 0.7,
            max_per_type: None,
            max_per_tag: None,
        }
    }
}

impl DiversityConfig {
    /// Checks that `lambda` is finite and in [0, 1] and that caps, when set, are at least 1.
    pub fn validate(&self) -> Result<(), ModelError> {
        if !(self.lambda.is_finite() && (0.0..=1.0).contains(&self.lambda)) {
            return Err(ModelError::InvalidInput {
                reason: format!("diversity lambda must be in [0, 1], got {}", self.lambda),
            });
        }
        if self.max_per_type == Some(0) || self.max_per_tag == Some(0) {
            return Err(ModelError::InvalidInput {
                reason: "diversity caps must be at least 1".to_string(),
            });
        }
        Ok(())
    }
}

/// A candidate of the re-ranker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate<'a> {
    /// The item.
    pub item: u32,
    /// Relevance in [0, 1] (non-finite values count as 0).
    pub relevance: f64,
    /// The item's type, for `max_per_type`.
    pub item_type: Option<&'a str>,
    /// The item's dominant tag (e.g. its first or highest-weighted tag), for `max_per_tag`.
    pub tag: Option<&'a str>,
}

/// Re-ranks `candidates` (distinct items) into at most `n` picks and returns their indices in
/// `candidates`, in the new order. Ties of the MMR objective go to higher relevance, then lower
/// item id. A `lambda` outside [0, 1] is clamped (NaN counts as 1). See the module documentation.
pub fn rerank(
    candidates: &[Candidate<'_>],
    n: usize,
    config: &DiversityConfig,
    sim: impl Fn(u32, u32) -> f64,
) -> Vec<usize> {
    rerank_by(candidates, n, config, sim, &u32::cmp)
}

/// [`rerank`] with the last tie (equal objective and relevance) going to the item first in
/// `tie` order instead of the lower id.
pub fn rerank_by(
    candidates: &[Candidate<'_>],
    n: usize,
    config: &DiversityConfig,
    sim: impl Fn(u32, u32) -> f64,
    tie: TieBreak<'_>,
) -> Vec<usize> {
    let lambda = if config.lambda.is_nan() {
        1.0
    } else {
        config.lambda.clamp(0.0, 1.0)
    };
    let relevance = |c: &Candidate<'_>| {
        if c.relevance.is_finite() {
            c.relevance
        } else {
            0.0
        }
    };
    let mut remaining: Vec<usize> = (0..candidates.len()).collect();
    let mut max_sim = vec![0.0f64; candidates.len()];
    let mut per_type: HashMap<&str, usize> = HashMap::new();
    let mut per_tag: HashMap<&str, usize> = HashMap::new();
    let mut picked = Vec::with_capacity(n.min(candidates.len()));

    let within_caps =
        |c: &Candidate<'_>, per_type: &HashMap<&str, usize>, per_tag: &HashMap<&str, usize>| {
            let ok = |key: Option<&str>, counts: &HashMap<&str, usize>, cap: Option<usize>| match (
                key, cap,
            ) {
                (Some(k), Some(cap)) => counts.get(k).copied().unwrap_or(0) < cap,
                _ => true,
            };
            ok(c.item_type, per_type, config.max_per_type) && ok(c.tag, per_tag, config.max_per_tag)
        };

    while picked.len() < n && !remaining.is_empty() {
        let objective = |i: usize| {
            let c = &candidates[i];
            lambda * relevance(c) - (1.0 - lambda) * max_sim[i]
        };
        // (position in `remaining`, objective) of the best candidate so far
        let better = |a: usize, oa: f64, b: usize, ob: f64| {
            let (ca, cb) = (&candidates[a], &candidates[b]);
            oa.total_cmp(&ob)
                .then_with(|| relevance(ca).total_cmp(&relevance(cb)))
                .then_with(|| tie(&cb.item, &ca.item))
                .is_gt()
        };
        let mut best: Option<(usize, f64)> = None;
        let mut best_any: Option<(usize, f64)> = None;
        for (pos, &i) in remaining.iter().enumerate() {
            let o = objective(i);
            if best_any.is_none_or(|(bp, bo)| better(i, o, remaining[bp], bo)) {
                best_any = Some((pos, o));
            }
            if within_caps(&candidates[i], &per_type, &per_tag)
                && best.is_none_or(|(bp, bo)| better(i, o, remaining[bp], bo))
            {
                best = Some((pos, o));
            }
        }
        let Some((pos, _)) = best.or(best_any) else {
            break;
        };
        let chosen = remaining.swap_remove(pos);
        let c = &candidates[chosen];
        if let Some(t) = c.item_type {
            *per_type.entry(t).or_insert(0) += 1;
        }
        if let Some(t) = c.tag {
            *per_tag.entry(t).or_insert(0) += 1;
        }
        picked.push(chosen);
        // The last pick's similarities would steer no further pick.
        if lambda < 1.0 && picked.len() < n {
            for &i in &remaining {
                let s = clamp_sim(sim(candidates[i].item, c.item));
                if s > max_sim[i] {
                    max_sim[i] = s;
                }
            }
        }
    }
    picked
}

fn clamp_sim(s: f64) -> f64 {
    if s.is_nan() {
        0.0
    } else {
        s.clamp(0.0, 1.0)
    }
}

/// Intra-list diversity: the mean over unordered pairs of `1 − sim(a, b)` (similarities clamped
/// to [0, 1]), in [0, 1]; 0 for lists of fewer than two items.
pub fn intra_list_diversity(list: &[u32], sim: impl Fn(u32, u32) -> f64) -> f64 {
    let mut total = 0.0;
    let mut pairs = 0usize;
    for (i, &a) in list.iter().enumerate() {
        for &b in &list[i + 1..] {
            total += 1.0 - clamp_sim(sim(a, b));
            pairs += 1;
        }
    }
    if pairs == 0 {
        0.0
    } else {
        total / pairs as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cand(
        item: u32,
        relevance: f64,
        item_type: &'static str,
        tag: &'static str,
    ) -> Candidate<'static> {
        Candidate {
            item,
            relevance,
            item_type: Some(item_type),
            tag: Some(tag),
        }
    }

    /// Items of the same type are similar (0.9), others not (0.1).
    fn same_type<'a>(cands: &'a [Candidate<'a>]) -> impl Fn(u32, u32) -> f64 + 'a {
        move |a, b| {
            let t = |x: u32| cands.iter().find(|c| c.item == x).and_then(|c| c.item_type);
            if t(a) == t(b) {
                0.9
            } else {
                0.1
            }
        }
    }

    fn pool() -> Vec<Candidate<'static>> {
        vec![
            cand(1, 1.0, "fitness", "running"),
            cand(2, 0.95, "fitness", "running"),
            cand(3, 0.9, "fitness", "yoga"),
            cand(4, 0.85, "fitness", "running"),
            cand(5, 0.5, "learning", "books"),
            cand(6, 0.4, "learning", "languages"),
            cand(7, 0.3, "mindfulness", "meditation"),
        ]
    }

    fn items(c: &[Candidate<'_>], idx: &[usize]) -> Vec<u32> {
        idx.iter().map(|&i| c[i].item).collect()
    }

    #[test]
    fn lambda_one_keeps_relevance_order() {
        let c = pool();
        let cfg = DiversityConfig {
            lambda: 1.0,
            ..DiversityConfig::default()
        };
        let out = rerank(&c, 5, &cfg, |_, _| {
            panic!("no similarity needed at lambda = 1")
        });
        assert_eq!(items(&c, &out), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn low_lambda_spreads_types() {
        let c = pool();
        let cfg = DiversityConfig {
            lambda: 0.3,
            ..DiversityConfig::default()
        };
        let out = rerank(&c, 3, &cfg, same_type(&c));
        assert_eq!(items(&c, &out), vec![1, 5, 7]);
        let ild_mmr = intra_list_diversity(&items(&c, &out), same_type(&c));
        let ild_top = intra_list_diversity(&[1, 2, 3], same_type(&c));
        assert!(ild_mmr > ild_top);
    }

    #[test]
    fn caps_hold_when_satisfiable() {
        let c = pool();
        let cfg = DiversityConfig {
            lambda: 1.0,
            max_per_type: Some(2),
            max_per_tag: Some(1),
        };
        let out = rerank(&c, 5, &cfg, same_type(&c));
        assert_eq!(items(&c, &out), vec![1, 3, 5, 6, 7]);
        let mut types: HashMap<&str, usize> = HashMap::new();
        let mut tags: HashMap<&str, usize> = HashMap::new();
        for &i in &out {
            *types.entry(c[i].item_type.unwrap()).or_default() += 1;
            *tags.entry(c[i].tag.unwrap()).or_default() += 1;
        }
        assert!(types.values().all(|&n| n <= 2));
        assert!(tags.values().all(|&n| n <= 1));
    }

    #[test]
    fn unsatisfiable_caps_fill_from_best_remaining() {
        let c = pool();
        let cfg = DiversityConfig {
            lambda: 1.0,
            max_per_type: Some(1),
            max_per_tag: None,
        };
        // Three types only: after 1, 5, 7 the rest comes in relevance order.
        let out = rerank(&c, 5, &cfg, same_type(&c));
        assert_eq!(items(&c, &out), vec![1, 5, 7, 2, 3]);
        // Asking for more than there is returns everything once.
        let out = rerank(&c, 50, &cfg, same_type(&c));
        assert_eq!(out.len(), c.len());
        assert!(rerank(&[], 5, &cfg, same_type(&c)).is_empty());
        assert!(rerank(&c, 0, &cfg, same_type(&c)).is_empty());
    }

    #[test]
    fn untyped_items_are_not_capped_and_ties_go_to_lower_id() {
        let c = vec![
            Candidate {
                item: 9,
                relevance: 0.5,
                item_type: None,
                tag: None,
            },
            Candidate {
                item: 3,
                relevance: 0.5,
                item_type: None,
                tag: None,
            },
            Candidate {
                item: 4,
                relevance: f64::NAN,
                item_type: None,
                tag: None,
            },
        ];
        let cfg = DiversityConfig {
            lambda: 1.0,
            max_per_type: Some(1),
            max_per_tag: Some(1),
        };
        let out = rerank(&c, 3, &cfg, |_, _| 0.0);
        assert_eq!(items(&c, &out), vec![3, 9, 4]);
    }

    #[test]
    fn config_validation() {
        assert!(DiversityConfig::default().validate().is_ok());
        let bad = |lambda, t, g| {
            DiversityConfig {
                lambda,
                max_per_type: t,
                max_per_tag: g,
            }
            .validate()
            .is_err()
        };
        assert!(bad(1.5, None, None));
        assert!(bad(f64::NAN, None, None));
        assert!(bad(0.5, Some(0), None));
        assert!(bad(0.5, None, Some(0)));
    }

    #[test]
    fn intra_list_diversity_values() {
        assert_eq!(intra_list_diversity(&[], |_, _| 0.0), 0.0);
        assert_eq!(intra_list_diversity(&[1], |_, _| 0.0), 0.0);
        assert_eq!(intra_list_diversity(&[1, 2, 3], |_, _| 1.0), 0.0);
        assert_eq!(intra_list_diversity(&[1, 2, 3], |_, _| 0.0), 1.0);
        // Pairs (1,2)=0.5, (1,3)=0, (2,3)=0 → mean of 0.5, 1, 1.
        let s = |a: u32, b: u32| if a + b == 3 { 0.5 } else { -4.0 };
        assert!((intra_list_diversity(&[1, 2, 3], s) - 2.5 / 3.0).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn caps_hold_and_picks_are_distinct(
            rels in prop::collection::vec((0.0f64..1.0, 0usize..3, 0usize..4), 0..25),
            n in 0usize..12,
            lambda in 0.0f64..=1.0,
            max_type in 1usize..4,
            max_tag in 1usize..4,
        ) {
            const TYPES: [&str; 3] = ["a", "b", "c"];
            const TAGS: [&str; 4] = ["w", "x", "y", "z"];
            let c: Vec<Candidate<'static>> = rels.iter().enumerate().map(|(i, &(r, t, g))| Candidate {
                item: i as u32, relevance: r, item_type: Some(TYPES[t]), tag: Some(TAGS[g]),
            }).collect();
            let cfg = DiversityConfig { lambda, max_per_type: Some(max_type), max_per_tag: Some(max_tag) };
            let out = rerank(&c, n, &cfg, |a, b| if c[a as usize].tag == c[b as usize].tag { 0.8 } else { 0.2 });
            prop_assert_eq!(out.len(), n.min(c.len()));
            let mut seen = out.clone();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), out.len());
            // While caps are respected, every prefix respects them; once one is exceeded the
            // list is in fill mode, which only happens when no remaining candidate fit.
            let mut types: HashMap<&str, usize> = HashMap::new();
            let mut tags: HashMap<&str, usize> = HashMap::new();
            for (k, &i) in out.iter().enumerate() {
                let fits = |i: usize, types: &HashMap<&str, usize>, tags: &HashMap<&str, usize>| {
                    types.get(c[i].item_type.unwrap()).copied().unwrap_or(0) < max_type
                        && tags.get(c[i].tag.unwrap()).copied().unwrap_or(0) < max_tag
                };
                if !fits(i, &types, &tags) {
                    let rest: Vec<usize> = (0..c.len()).filter(|j| !out[..k].contains(j)).collect();
                    prop_assert!(rest.iter().all(|&j| !fits(j, &types, &tags)));
                }
                *types.entry(c[i].item_type.unwrap()).or_default() += 1;
                *tags.entry(c[i].tag.unwrap()).or_default() += 1;
            }
        }
    }
}
