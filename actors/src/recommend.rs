//! Collaborative-filtering scoring over the published index.
//!
//! The score of a candidate item `j` for user `u` mixes two normalised signals:
//! - item-based: `Σ_i w_ui · cos(i, j)` over the items `i` of the user, computed from the
//!   co-occurrence rows (`cos(i,j) = dot_ij / (‖i‖‖j‖)`), so one pass touches each co-occurring
//!   item once per user item and the norm of `j` is looked up once per candidate;
//! - user-based: `Σ_v cos(u, v) · w_vj` over the `user_neighbours` most similar users `v`.
//!
//! Each signal is divided by its maximum over the eligible candidates (so both span (0, 1])
//! and they are mixed as `(1 − user_weight) · item + user_weight · user`. Users without
//! interactions get the popular list; lists shorter than `n` are filled from it.

use std::sync::Arc;

use momentum_models::similarity::{cosine, normalise_by_max, top_k, Neighbour, SparseAccumulator};

use crate::config::RecommendConfig;
use crate::index::{Index, UserVector};

/// Why an item was recommended: the strongest contributor to its score.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// The user's item that contributes most through item-item similarity, and what the
    /// user did with it ("completed", "rated", …).
    SimilarTo { item: u32, verb: &'static str },
    /// The item's strongest TF-IDF term shared with the user's content profile.
    MatchesInterest { term: Arc<str> },
    /// Neighbours (similar users) that engaged with the item.
    UsersLikeYou { neighbours: usize },
    /// Popular with everyone (cold start or filler).
    Popular,
}

/// One recommended item.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub item: u32,
    /// In [0, 1], higher is better; comparable within one list only.
    pub score: f64,
    /// In [0, 1): how much evidence supports the score (see [`confidence`]).
    pub confidence: f64,
    pub reasons: Vec<Reason>,
}

/// Which path produced a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Collaborative,
    Popular,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Collaborative => "collaborative",
            Strategy::Popular => "popular",
        }
    }
}

/// A ranked list, as cached per user.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendations {
    pub strategy: Strategy,
    pub items: Arc<Vec<Scored>>,
    /// Whether the list came from the cache.
    pub cached: bool,
}

/// Evidence → confidence: `1 − exp(−support / 5)`, where support counts the user's items
/// and neighbours that point at the candidate. One supporter gives 0.18, five 0.63, ten 0.86.
pub fn confidence(support: usize) -> f64 {
    1.0 - (-(support as f64) / 5.0).exp()
}

/// Reusable buffers of one scorer (one per shard actor).
#[derive(Debug, Default)]
pub struct Scratch {
    item_acc: SparseAccumulator,
    user_acc: SparseAccumulator,
    dots: SparseAccumulator,
}

/// The `k` users most similar to `user` (cosine over weighted rows), best first.
pub fn neighbours(index: &Index, user: u32, k: usize, scratch: &mut Scratch) -> Vec<Neighbour> {
    let Some(vector) = index.vectors.get(&user).map(|v| v.clone()) else {
        return Vec::new();
    };
    for &(item, w) in &vector.items {
        if let Some(stats) = index.item_stats.get(&item) {
            for (&other, &w_other) in &stats.column {
                if other != user {
                    scratch.dots.add(other, f64::from(w) * f64::from(w_other));
                }
            }
        }
    }
    let sims: Vec<Neighbour> = scratch
        .dots
        .drain()
        .into_iter()
        .map(|(other, dot)| {
            let n2 = index.vectors.get(&other).map(|v| v.norm2).unwrap_or(0.0);
            (other, cosine(dot, vector.norm2, n2))
        })
        .collect();
    top_k(sims, k)
}

fn eligible(index: &Index, vector: &UserVector, item: u32) -> bool {
    !vector.is_excluded(item) && index.is_live_item(item)
}

/// The popular list minus what the user may not see, as scored items.
pub fn popular_for(
    index: &Index,
    vector: Option<&UserVector>,
    n: usize,
    skip: &[u32],
) -> Vec<Scored> {
    let popular = index.popular.read().clone();
    let max = popular.first().map(|p| p.1).unwrap_or(1.0).max(1.0);
    popular
        .iter()
        .filter(|(item, _)| index.is_live_item(*item))
        .filter(|(item, _)| vector.is_none_or(|v| !v.is_excluded(*item)))
        .filter(|(item, _)| !skip.contains(item))
        .take(n)
        .map(|&(item, users)| Scored {
            item,
            score: users / max,
            // Popularity says little about this user: a quarter of the normalised score.
            confidence: 0.25 * users / max,
            reasons: vec![Reason::Popular],
        })
        .collect()
}

/// Scores and ranks up to `n` items for a user with interactions.
pub fn collaborative(
    index: &Index,
    vector: &UserVector,
    neighbours: &[Neighbour],
    config: &RecommendConfig,
    n: usize,
    scratch: &mut Scratch,
) -> Vec<Scored> {
    // Item-based: accumulate Σ_i w_ui · dot_ij / ‖i‖, divide by ‖j‖ once per candidate.
    for &(item, w) in &vector.items {
        if let Some(stats) = index.item_stats.get(&item) {
            if stats.norm2 <= 0.0 {
                continue;
            }
            let scale = f64::from(w) / stats.norm2.sqrt();
            for (&other, c) in &stats.cooc {
                scratch.item_acc.add(other, scale * c.dot);
            }
        }
    }
    let mut item_scores: Vec<Neighbour> = scratch
        .item_acc
        .drain()
        .into_iter()
        .filter(|&(j, _)| eligible(index, vector, j))
        .map(|(j, s)| {
            let n2 = index.item_norm2(j);
            (j, if n2 > 0.0 { s / n2.sqrt() } else { 0.0 })
        })
        .collect();
    normalise_by_max(&mut item_scores);

    // User-based: Σ_v sim(u, v) · w_vj.
    let mut rows = Vec::with_capacity(neighbours.len());
    for &(other, sim) in neighbours {
        if let Some(row) = index.vectors.get(&other).map(|r| r.clone()) {
            for &(j, w) in &row.items {
                scratch.user_acc.add(j, sim * f64::from(w));
            }
            rows.push(row);
        }
    }
    let mut user_scores: Vec<Neighbour> = scratch
        .user_acc
        .drain()
        .into_iter()
        .filter(|&(j, _)| eligible(index, vector, j))
        .collect();
    normalise_by_max(&mut user_scores);

    let uw = config.user_weight;
    for &(j, s) in &item_scores {
        scratch.dots.add(j, (1.0 - uw) * s);
    }
    for &(j, s) in &user_scores {
        scratch.dots.add(j, uw * s);
    }
    let ranked = top_k(scratch.dots.drain(), n);

    ranked
        .into_iter()
        .map(|(j, score)| {
            // Explain with the strongest item-based contributor, or the neighbours.
            let mut best: Option<(u32, f64)> = None;
            let mut item_support = 0usize;
            let n2j = index.item_norm2(j);
            for &(i, w) in &vector.items {
                if let Some(stats) = index.item_stats.get(&i) {
                    if let Some(c) = stats.cooc.get(&j) {
                        item_support += 1;
                        let contribution = f64::from(w) * cosine(c.dot, stats.norm2, n2j);
                        if best.is_none_or(|b| contribution > b.1) {
                            best = Some((i, contribution));
                        }
                    }
                }
            }
            let neighbour_support = rows.iter().filter(|r| r.weight(j) > 0.0).count();
            let mut reasons = Vec::new();
            let item_part = item_scores_lookup(&item_scores, j) * (1.0 - uw);
            let user_part = item_scores_lookup(&user_scores, j) * uw;
            if let Some((i, _)) = best {
                reasons.push(Reason::SimilarTo {
                    item: i,
                    verb: "engaged with",
                });
            }
            if neighbour_support > 0 {
                let r = Reason::UsersLikeYou {
                    neighbours: neighbour_support,
                };
                if user_part > item_part {
                    reasons.insert(0, r);
                } else {
                    reasons.push(r);
                }
            }
            Scored {
                item: j,
                score: score.clamp(0.0, 1.0),
                confidence: confidence(item_support + neighbour_support),
                reasons,
            }
        })
        .collect()
}

fn item_scores_lookup(list: &[Neighbour], item: u32) -> f64 {
    list.iter()
        .find(|e| e.0 == item)
        .map(|e| e.1)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_grows_with_support_and_stays_below_one() {
        assert_eq!(confidence(0), 0.0);
        assert!(confidence(1) < confidence(5));
        assert!(confidence(1000) <= 1.0);
    }
}
