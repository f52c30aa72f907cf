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

use momentum_models::content::diversity::{rerank_by, Candidate, DiversityConfig};
use momentum_models::content::hybrid::{mix_by, normalise_min_max, Scored as Mixed, Source};
use momentum_models::content::text::display_term;
use momentum_models::content::ScoringLimits;
use momentum_models::experiment::VariantOverrides;
use momentum_models::similarity::{
    cosine, from_fixed, from_fixed_i64, normalise_by_max, top_k_by, Neighbour, PositiveAccumulator,
    SparseAccumulator,
};

use crate::config::{ItemModel, RecommendConfig};
use crate::ease::EaseModel;
use crate::index::{Index, ItemTable, UserVector};

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
    /// Collaborative filtering only (content weight 0 or no item content).
    Collaborative,
    /// Collaborative and content scores mixed.
    Hybrid,
    /// Content only (users with few interactions).
    Content,
    /// Popular items (users without interactions).
    Popular,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Collaborative => "collaborative",
            Strategy::Hybrid => "hybrid",
            Strategy::Content => "content",
            Strategy::Popular => "popular",
        }
    }
}

/// The knobs an experiment variant may override per request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Blend {
    pub cf_weight: f64,
    pub content_weight: f64,
    pub diversity: DiversityConfig,
}

impl Blend {
    /// These settings with an experiment variant's overrides applied (caps of 0 = no cap).
    pub fn with_overrides(mut self, overrides: &VariantOverrides) -> Blend {
        if let Some(w) = &overrides.hybrid_weights {
            self.cf_weight = w.cf;
            self.content_weight = w.content;
        }
        if let Some(d) = &overrides.diversity {
            if let Some(lambda) = d.lambda {
                self.diversity.lambda = lambda;
            }
            if let Some(cap) = d.max_per_type {
                self.diversity.max_per_type = (cap > 0).then_some(cap);
            }
            if let Some(cap) = d.max_per_tag {
                self.diversity.max_per_tag = (cap > 0).then_some(cap);
            }
        }
        self
    }

    /// The configured defaults.
    pub fn from_config(config: &RecommendConfig) -> Blend {
        let cap = |c: usize| (c > 0).then_some(c);
        Blend {
            cf_weight: config.cf_weight,
            content_weight: config.content_weight,
            diversity: DiversityConfig {
                lambda: config.diversity_lambda,
                max_per_type: cap(config.max_per_type),
                max_per_tag: cap(config.max_per_tag),
            },
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
    /// Whether the list holds every candidate there is (shorter than asked for), so a longer
    /// request cannot get more by recomputing.
    pub complete: bool,
    /// The blend the list was computed with (a different experiment variant recomputes).
    pub blend: Blend,
    /// The version of the learned item model the list was computed with (a newer model
    /// recomputes).
    pub item_model: u64,
}

/// Evidence → confidence: `1 − exp(−support / 5)`, where support counts the user's items
/// and neighbours that point at the candidate. One supporter gives 0.18, five 0.63, ten 0.86.
pub fn confidence(support: usize) -> f64 {
    1.0 - (-(support as f64) / 5.0).exp()
}

/// Reusable buffers of one scorer (one per shard actor): dense per-item (or per-user) arrays
/// that every request leaves as it found them, so none is cleared or reallocated per request.
#[derive(Debug, Default)]
pub struct Scratch {
    item_acc: SparseAccumulator,
    /// Per modelled item (local index of the learned model): the learned-model sums, in
    /// `i64` when the model allows it ([`EaseModel::sums_fit_i64`]), else in `i128`.
    ease_narrow: Vec<i64>,
    ease_wide: Vec<i128>,
    /// Per modelled item: whether the user being scored has it.
    ease_mine: Vec<bool>,
    /// Per dense item id: excluded for the user being scored (`false` between requests).
    blocked: Vec<bool>,
    /// Per dense item id: the mix of the two collaborative signals (0 between requests).
    mix: Vec<f64>,
    /// Per dense item id: the user-based sums (0 between requests).
    user_sums: Vec<f64>,
    /// The items the user-based pass touched.
    user_touched: Vec<u32>,
    /// Per dense user id: the dot products of the similar-users pass (the 128-bit `dots`
    /// when a sum does not fit).
    positive: PositiveAccumulator,
    dots: SparseAccumulator,
    /// item → position in the explained list + 1 (0: not explained).
    slots: Vec<u32>,
}

/// A fixed-point sum of the learned-model pass: `i64` when the model allows it, else `i128`.
trait FixedSum: Copy + Default + PartialOrd + std::ops::AddAssign + From<i64> {
    fn value(self) -> f64;
}

impl FixedSum for i64 {
    fn value(self) -> f64 {
        from_fixed_i64(self)
    }
}

impl FixedSum for i128 {
    fn value(self) -> f64 {
        from_fixed(self)
    }
}

/// The learned-model sums of a user's rows: every modelled target with a positive sum, as
/// (local index, sum), in local (external-id) order.
fn ease_sums<T: FixedSum>(
    model: &EaseModel,
    vector: &UserVector,
    sums: &mut Vec<T>,
) -> Vec<(u32, f64)> {
    sums.clear();
    sums.resize(model.items(), T::default());
    // A slice, so the loop keeps its pointer and length in registers.
    let slots = &mut sums[..];
    for &(item, w) in &vector.items {
        let Some(from) = model.local(item).filter(|_| w > 0.0) else {
            continue;
        };
        let row = model.local_row(from);
        for (&to, &fixed) in row.targets.iter().zip(row.fixed) {
            slots[to as usize] += T::from(fixed);
        }
    }
    let zero = T::default();
    let mut out = Vec::with_capacity(slots.len());
    for (l, &slot) in slots.iter().enumerate() {
        if slot > zero {
            out.push((l as u32, slot.value()));
        }
    }
    out
}

/// What the reasons pass gathers on one ranked target: how many of the user's items have a
/// positive weight on it, and the strongest of them (local index, so the smaller index is the
/// smaller external id).
#[derive(Debug, Clone, Copy, Default)]
struct EaseSupport {
    support: u32,
    best: u32,
    best_weight: f32,
}

impl EaseSupport {
    #[inline]
    fn add(&mut self, from: u32, weight: f32) {
        if weight > 0.0 {
            // Ties go to the item that comes first by external id, as everywhere else.
            if self.support == 0
                || weight > self.best_weight
                || (weight == self.best_weight && from < self.best)
            {
                self.best = from;
                self.best_weight = weight;
            }
            self.support += 1;
        }
    }
}

/// `buffer[id]`, growing the buffer with default values (zero, `false`) as needed.
fn dense<T: Copy + Default>(buffer: &mut Vec<T>, id: u32) -> &mut T {
    let idx = id as usize;
    if idx >= buffer.len() {
        buffer.resize(idx + 1, T::default());
    }
    &mut buffer[idx]
}

/// Calls `f(v, w_ui · w_vi)` for every other user `v` and item `i` of the user's row.
#[inline]
fn for_each_product(
    table: &ItemTable,
    vector: &UserVector,
    user: u32,
    mut f: impl FnMut(u32, f64),
) {
    for &(item, w) in &vector.items {
        for &(other, w_other) in table.get(item).column.entries() {
            if other != user {
                f(other, f64::from(w) * f64::from(w_other));
            }
        }
    }
}

/// The `k` users most similar to `user`, searched from `vector` (the user's items, or the most
/// recent of them), by cosine over weighted rows, best first.
pub fn neighbours(
    index: &Index,
    user: u32,
    vector: &UserVector,
    k: usize,
    scratch: &mut Scratch,
) -> Vec<Neighbour> {
    let dots = {
        let table = index.item_table.read();
        // Weights are positive, so every term is: 64-bit sums, unless one does not fit.
        for_each_product(&table, vector, user, |other, x| {
            scratch.positive.add(other, x)
        });
        match scratch.positive.drain() {
            Some(dots) => dots,
            None => {
                for_each_product(&table, vector, user, |other, x| scratch.dots.add(other, x));
                scratch.dots.drain()
            }
        }
    };
    let sims: Vec<Neighbour> = dots
        .into_iter()
        .map(|(other, dot)| {
            let n2 = index.vectors.get(&other).map(|v| v.norm2).unwrap_or(0.0);
            (other, cosine(dot, vector.norm2, n2))
        })
        .collect();
    top_k_by(sims, k, &index.user_order())
}

fn eligible(table: &ItemTable, vector: &UserVector, item: u32) -> bool {
    !vector.is_excluded(item) && table.is_live(item)
}

/// The popular list minus what the user may not see, as scored items.
pub fn popular_for(
    index: &Index,
    table: &ItemTable,
    vector: Option<&UserVector>,
    n: usize,
    skip: &[u32],
) -> Vec<Scored> {
    let popular = index.popular.read().clone();
    let max = popular.first().map(|p| p.1).unwrap_or(1.0).max(1.0);
    popular
        .iter()
        .filter(|(item, _)| table.is_live(*item))
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

/// One collaborative candidate: its mix of the two signals and each signal's part in it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CfCandidate {
    pub item: u32,
    /// The mix, in [0, 1].
    pub score: f64,
    item_part: f64,
    user_part: f64,
}

/// The ranked collaborative candidates of one request, with what [`CfList::explain`] needs to
/// explain the few of them a list ends up showing (explaining is a pass over the user's items
/// per candidate, so it is not done for the whole pool).
#[derive(Debug, Default)]
pub struct CfList {
    /// Best first.
    pub ranked: Vec<CfCandidate>,
    /// Whether the item-based signal came from the learned model.
    learned: bool,
    model: Arc<EaseModel>,
    /// The neighbours' rows the user-based signal summed, as they were.
    neighbour_rows: Vec<Arc<UserVector>>,
}

/// Scores and ranks up to `n` items for a user with interactions.
pub fn collaborative(
    index: &Index,
    table: &ItemTable,
    vector: &UserVector,
    neighbours: &[Neighbour],
    config: &RecommendConfig,
    n: usize,
    scratch: &mut Scratch,
) -> CfList {
    // The user's excluded items as a dense mask, so the eligibility test in the loops below
    // is two array reads; the mask is reset and put back before returning.
    let mut blocked = std::mem::take(&mut scratch.blocked);
    for &e in vector.excluded.iter() {
        *dense(&mut blocked, e) = true;
    }
    let eligible = |j: u32| !blocked.get(j as usize).copied().unwrap_or(false) && table.is_live(j);
    let model = index.ease.read().clone();
    let learned = config.item_model == ItemModel::Ease
        && vector
            .items
            .iter()
            .any(|&(i, w)| w > 0.0 && model.covers(i));
    let mut item_scores: Vec<Neighbour> = if learned {
        // EASE: Σ_i x_ui · B_ij over the user's items (binary x, as the model was fitted): a
        // plain scatter of fixed-point weights into one slot per modelled item. The reasons
        // of the few ranked items are gathered by a second pass below.
        let sums = if model.sums_fit_i64() {
            ease_sums(&model, vector, &mut scratch.ease_narrow)
        } else {
            ease_sums(&model, vector, &mut scratch.ease_wide)
        };
        sums.into_iter()
            .map(|(l, sum)| (model.item(l), sum))
            .filter(|&(j, _)| eligible(j))
            .collect()
    } else {
        // Cosine: accumulate Σ_i w_ui · dot_ij / ‖i‖, divide by ‖j‖ once per candidate.
        for &(item, w) in &vector.items {
            let stats = table.get(item);
            if stats.norm2 <= 0.0 {
                continue;
            }
            let scale = f64::from(w) / stats.norm2.sqrt();
            for e in stats.cooc.entries() {
                scratch.item_acc.add(e.item, scale * e.dot);
            }
        }
        scratch
            .item_acc
            .drain()
            .into_iter()
            .filter(|&(j, _)| eligible(j))
            .map(|(j, s)| {
                let n2 = table.norm2(j);
                (j, if n2 > 0.0 { s / n2.sqrt() } else { 0.0 })
            })
            .collect()
    };
    normalise_by_max(&mut item_scores);

    // User-based: Σ_v sim(u, v) · w_vj, summed in the neighbours' order (which ties break by
    // external id, so it is the same on every server) into a dense array. Similarities and
    // weights are positive, so a zero sum marks a slot not touched yet; the sums are reset
    // below.
    let Scratch {
        user_sums,
        user_touched,
        ..
    } = scratch;
    user_touched.clear();
    let mut neighbour_rows = Vec::with_capacity(neighbours.len());
    for &(other, sim) in neighbours {
        let Some(row) = index.vectors.get(&other).map(|r| r.clone()) else {
            continue;
        };
        // Rows are sorted by item: room for the last one is room for all, and the loop
        // runs over slices.
        let Some(&(last, _)) = row.items.last() else {
            continue;
        };
        dense(user_sums, last);
        let sums = &mut user_sums[..];
        for &(j, w) in &row.items {
            let sum = &mut sums[j as usize];
            if *sum == 0.0 {
                user_touched.push(j);
            }
            *sum += sim * f64::from(w);
        }
        neighbour_rows.push(row);
    }
    let user_max = user_touched
        .iter()
        .filter(|&&j| eligible(j))
        .map(|&j| user_sums[j as usize])
        .fold(0.0_f64, f64::max);
    let user_score = |j: u32| match user_sums.get(j as usize) {
        Some(&sum) if user_max > 0.0 => sum / user_max,
        _ => 0.0,
    };
    let mut user_scores: Vec<Neighbour> = Vec::with_capacity(user_touched.len());
    user_scores.extend(
        user_touched
            .iter()
            .filter(|&&j| eligible(j))
            .map(|&j| (j, user_score(j))),
    );

    // Each candidate's mix has at most two terms, so the float sum does not depend on their
    // order. Taking a slot resets it, so a candidate of both lists is collected once (a zero
    // mix would not be ranked anyway).
    let uw = config.user_weight;
    let mix = &mut scratch.mix;
    for &(j, s) in &item_scores {
        *dense(mix, j) = (1.0 - uw) * s;
    }
    for &(j, s) in &user_scores {
        *dense(mix, j) += uw * s;
    }
    let mut candidates: Vec<Neighbour> = Vec::with_capacity(item_scores.len() + user_scores.len());
    candidates.extend(
        item_scores
            .iter()
            .chain(&user_scores)
            .filter_map(|&(j, _)| {
                let mixed = std::mem::take(&mut mix[j as usize]);
                (mixed != 0.0).then_some((j, mixed))
            }),
    );
    let item_order = index.item_order();
    let ranked = top_k_by(candidates, n, &item_order);
    // Per-source scores of the ranked items: the user-based list and the cosine list are in
    // dense-id order, the learned list in the model's local order.
    let item_score_of = |j: u32| {
        let found = if learned {
            let local = model.local(j);
            item_scores.binary_search_by_key(&local, |s| model.local(s.0))
        } else {
            item_scores.binary_search_by_key(&j, |s| s.0)
        };
        found.map_or(0.0, |k| item_scores[k].1)
    };
    let ranked = ranked
        .into_iter()
        .map(|(j, score)| CfCandidate {
            item: j,
            score: score.clamp(0.0, 1.0),
            item_part: item_score_of(j) * (1.0 - uw),
            user_part: user_score(j) * uw,
        })
        .collect();
    for &j in &scratch.user_touched {
        scratch.user_sums[j as usize] = 0.0;
    }
    for &e in vector.excluded.iter() {
        blocked[e as usize] = false;
    }
    scratch.blocked = blocked;
    CfList {
        ranked,
        learned,
        model,
        neighbour_rows,
    }
}

impl CfList {
    /// Reasons and confidence of `items` (each among `ranked`), in that order: the user's item
    /// that contributes most through the item-based signal, and the neighbours with the item
    /// (first when the user-based part of its score is the larger); the confidence counts both.
    pub fn explain(
        &self,
        table: &ItemTable,
        vector: &UserVector,
        items: &[u32],
        index: &Index,
        scratch: &mut Scratch,
    ) -> Vec<(Vec<Reason>, f64)> {
        // The strongest item-based contributor of each item and how many of the user's items
        // point at it: from the learned model's positive sources, or in one pass over the
        // user's co-occurrence rows.
        let mut best: Vec<Option<(u32, f64)>> = vec![None; items.len()];
        let mut item_support = vec![0usize; items.len()];
        if self.learned {
            let model = &self.model;
            // The items' positive sources that are among the user's items.
            let mine = &mut scratch.ease_mine;
            mine.clear();
            mine.resize(model.items(), false);
            for &(item, w) in &vector.items {
                if let Some(from) = model.local(item).filter(|_| w > 0.0) {
                    mine[from as usize] = true;
                }
            }
            for (k, &j) in items.iter().enumerate() {
                let Some(to) = model.local(j) else {
                    continue;
                };
                let mut found = EaseSupport::default();
                let (sources, weights) = model.positive_sources(to);
                for (&from, &b) in sources.iter().zip(weights) {
                    if mine[from as usize] {
                        found.add(from, b);
                    }
                }
                item_support[k] = found.support as usize;
                if found.support > 0 {
                    best[k] = Some((model.item(found.best), f64::from(found.best_weight)));
                }
            }
        } else {
            for (k, &j) in items.iter().enumerate() {
                *dense(&mut scratch.slots, j) = k as u32 + 1;
            }
            let slots = &scratch.slots;
            let slot_of = |j: u32| match slots.get(j as usize) {
                Some(&s) if s > 0 => Some(s as usize - 1),
                _ => None,
            };
            let norm2: Vec<f64> = items.iter().map(|&j| table.norm2(j)).collect();
            let item_order = index.item_order();
            for &(i, w) in &vector.items {
                let stats = table.get(i);
                for e in stats.cooc.entries() {
                    let Some(k) = slot_of(e.item) else {
                        continue;
                    };
                    let contribution = f64::from(w) * cosine(e.dot, stats.norm2, norm2[k]);
                    item_support[k] += 1;
                    // Ties go to the item that comes first by external id, as everywhere else.
                    let stronger = |b: (u32, f64)| {
                        contribution > b.1 || (contribution == b.1 && item_order(&i, &b.0).is_lt())
                    };
                    if best[k].is_none_or(stronger) {
                        best[k] = Some((i, contribution));
                    }
                }
            }
            for &j in items {
                scratch.slots[j as usize] = 0;
            }
        }
        items
            .iter()
            .enumerate()
            .map(|(k, &j)| {
                let candidate = self.ranked.iter().find(|c| c.item == j);
                let (item_part, user_part) =
                    candidate.map_or((0.0, 0.0), |c| (c.item_part, c.user_part));
                // Rows hold positive weights only: a neighbour with the item supports it.
                let neighbour_support = self
                    .neighbour_rows
                    .iter()
                    .filter(|row| row.items.binary_search_by_key(&j, |e| e.0).is_ok())
                    .count();
                let mut reasons = Vec::new();
                if let Some((i, _)) = best[k] {
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
                (reasons, confidence(item_support[k] + neighbour_support))
            })
            .collect()
    }
}

/// A content score: item, cosine with the profile, strongest shared term.
type ContentScore = (u32, f64, Option<Arc<str>>);

/// The full pipeline for a user with interactions: collaborative and content candidates,
/// the normalised mix, the diversity re-rank of the head, and popular items to fill up.
pub fn hybrid(
    index: &Index,
    vector: &UserVector,
    neighbours: &[Neighbour],
    config: &RecommendConfig,
    blend: &Blend,
    n: usize,
    scratch: &mut Scratch,
) -> (Strategy, Vec<Scored>) {
    let pool = config.candidate_pool.max(n);
    let content_index = index.content.read();
    let table = index.item_table.read();
    let profile = if blend.content_weight > 0.0 {
        content_index.user_profile(&vector.items, config.profile_terms)
    } else {
        Default::default()
    };
    let content_only = !profile.is_empty()
        && (blend.cf_weight <= 0.0 || vector.items.len() < config.content_min_interactions);
    // Cascade: collaborative filtering proposes the pool and content re-scores it; users with
    // too few interactions for CF get candidates from the inverted index instead.
    let (cf, content): (CfList, Vec<ContentScore>) = if content_only {
        let limits = ScoringLimits {
            max_profile_terms: config.profile_terms,
            ..ScoringLimits::default()
        };
        let found = content_index
            .score_candidates_by(
                &profile,
                |item| !eligible(&table, vector, item),
                pool,
                &limits,
                &index.item_order(),
            )
            .into_iter()
            .map(|m| (m.item, m.score, Some(m.top_term)))
            .collect();
        (CfList::default(), found)
    } else {
        let cf = collaborative(index, &table, vector, neighbours, config, pool, scratch);
        let content = if profile.is_empty() {
            Vec::new()
        } else {
            let items: Vec<u32> = cf.ranked.iter().map(|s| s.item).collect();
            content_index.score_items(&profile, &items)
        };
        (cf, content)
    };
    let has_content = content.iter().any(|c| c.1 > 0.0);
    let strategy = match (cf.ranked.is_empty(), has_content) {
        (false, true) => Strategy::Hybrid,
        (false, false) => Strategy::Collaborative,
        (true, true) => Strategy::Content,
        (true, false) => {
            return (
                Strategy::Popular,
                popular_for(index, &table, Some(vector), n, &[]),
            )
        }
    };
    let cf_pairs = normalise_min_max(
        &cf.ranked
            .iter()
            .map(|s| (s.item, s.score))
            .collect::<Vec<_>>(),
    );
    let content_pairs: Vec<(u32, f64)> = content.iter().map(|c| (c.0, c.1)).collect();
    let (w_cf, w_content) = match strategy {
        Strategy::Collaborative => (1.0, 0.0),
        Strategy::Content => (0.0, 1.0),
        _ => (blend.cf_weight, blend.content_weight),
    };
    let mixed = mix_by(
        &cf_pairs,
        &content_pairs,
        w_cf,
        w_content,
        &index.item_order(),
    );

    // Diversity: MMR with caps over the head of the list; the tail keeps its order. The
    // re-rank is greedy, so its first `n` picks are the same whether it goes on or stops
    // there: it makes only those of the list it returns.
    let depth = config.diversity_depth.min(mixed.len());
    let metas: Vec<Option<Arc<crate::index::ItemMeta>>> = mixed[..depth]
        .iter()
        .map(|m| index.item_meta.get(&m.item).map(|e| e.clone()))
        .collect();
    let candidates: Vec<Candidate<'_>> = mixed[..depth]
        .iter()
        .zip(&metas)
        .map(|(m, meta)| Candidate {
            item: m.item,
            relevance: m.score,
            item_type: meta.as_ref().and_then(|x| x.item_type.as_deref()),
            tag: meta
                .as_ref()
                .and_then(|x| x.tags.first().map(String::as_str)),
        })
        .collect();
    let order = rerank_by(
        &candidates,
        depth.min(n),
        &blend.diversity,
        |a, b| content_index.cosine(a, b),
        &index.item_order(),
    );
    let ordered: Vec<&Mixed> = order
        .into_iter()
        .map(|i| &mixed[i])
        .chain(mixed[depth..].iter())
        .take(n)
        .collect();
    // Only the items shown are explained.
    let from_cf: Vec<u32> = ordered
        .iter()
        .filter(|m| cf.ranked.iter().any(|c| c.item == m.item))
        .map(|m| m.item)
        .collect();
    let mut explained = cf
        .explain(&table, vector, &from_cf, index, scratch)
        .into_iter();

    let mut out: Vec<Scored> = Vec::with_capacity(n);
    for m in ordered {
        let (mut reasons, mut confidence) = if from_cf.contains(&m.item) {
            explained.next().unwrap_or_default()
        } else {
            (Vec::new(), 0.0)
        };
        let term = content
            .iter()
            .find(|c| c.0 == m.item && c.1 > 0.0)
            .and_then(|c| c.2.clone());
        if let Some(term) = term {
            let reason = Reason::MatchesInterest {
                term: Arc::from(display_term(&term)),
            };
            // Content evidence is weaker than behaviour: half the normalised content score.
            confidence = confidence.max(0.5 * m.content);
            if m.source == Source::Content {
                reasons.insert(0, reason);
            } else {
                reasons.push(reason);
            }
        }
        out.push(Scored {
            item: m.item,
            score: m.score.clamp(0.0, 1.0),
            confidence,
            reasons,
        });
    }
    if out.len() < n {
        let have: Vec<u32> = out.iter().map(|s| s.item).collect();
        out.extend(popular_for(
            index,
            &table,
            Some(vector),
            n - out.len(),
            &have,
        ));
    }
    (strategy, out)
}

/// Mean pairwise `1 − cosine` of the items' TF-IDF vectors.
pub fn intra_list_diversity(index: &Index, items: &[u32]) -> f64 {
    let content = index.content.read();
    momentum_models::content::diversity::intra_list_diversity(items, |a, b| content.cosine(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(items: &[u32]) -> UserVector {
        UserVector {
            items: items.iter().map(|&i| (i, 1.0)).collect(),
            ..UserVector::default()
        }
    }

    /// Rows `(local target, weight)` of three items, with negative weights.
    fn sample_rows() -> Vec<Vec<(u32, f32)>> {
        vec![
            vec![(1, 0.5), (2, -0.25)],
            vec![(0, 0.125), (2, 0.75)],
            vec![(0, -0.5), (1, 0.0625)],
        ]
    }

    #[test]
    fn learned_sums_are_the_same_in_64_and_128_bits() {
        // Dense ids 10, 11, 12 are local 0, 1, 2.
        let model = crate::ease::from_rows(vec![10, 11, 12], &sample_rows());
        assert!(model.sums_fit_i64());
        let u = user(&[10, 11, 12]);
        let narrow = ease_sums(&model, &u, &mut Vec::<i64>::new());
        let wide = ease_sums(&model, &u, &mut Vec::<i128>::new());
        assert_eq!(narrow, wide);
        // Target 1: 0.5 + 0.0625; target 2: -0.25 + 0.75; target 0 sums to below zero.
        assert_eq!(narrow, vec![(1, 0.5625), (2, 0.5)]);
    }

    #[test]
    fn positive_sources_are_the_rows_transposed() {
        let rows = sample_rows();
        let model = crate::ease::from_rows(vec![10, 11, 12], &rows);
        for target in 0..3u32 {
            let want: Vec<(u32, f32)> = rows
                .iter()
                .enumerate()
                .flat_map(|(from, row)| row.iter().map(move |&(t, w)| (from as u32, t, w)))
                .filter(|&(_, t, w)| t == target && w > 0.0)
                .map(|(from, _, w)| (from, w))
                .collect();
            let (sources, weights) = model.positive_sources(target);
            let got: Vec<(u32, f32)> = sources
                .iter()
                .copied()
                .zip(weights.iter().copied())
                .collect();
            assert_eq!(got, want, "target {target}");
        }
        assert_eq!(model.positive_sources(7), (&[][..], &[][..]));
    }

    #[test]
    fn a_model_whose_sums_could_overflow_64_bits_is_summed_in_128() {
        let rows = vec![vec![(1, 5.0e6)], vec![(0, 5.0e6)]];
        let model = crate::ease::from_rows(vec![0, 1], &rows);
        assert!(!model.sums_fit_i64());
        let sums = ease_sums(&model, &user(&[0, 1]), &mut Vec::<i128>::new());
        assert_eq!(sums.len(), 2);
        assert_eq!(sums[0].1, 5.0e6);
    }

    #[test]
    fn confidence_grows_with_support_and_stays_below_one() {
        assert_eq!(confidence(0), 0.0);
        assert!(confidence(1) < confidence(5));
        assert!(confidence(1000) <= 1.0);
    }
}
