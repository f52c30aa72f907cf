//! Top-k ranking metrics for offline evaluation: precision@k, recall@k, NDCG@k, MAP@k,
//! catalogue coverage and intra-list diversity. Definitions follow the Microsoft Recommenders
//! comparison protocol (binary relevance; MAP divides by the number of relevant items), so
//! numbers are comparable with published tables.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use serde::Serialize;

/// Aggregated metrics over all evaluated users.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankingReport {
    pub k: usize,
    /// Users with both training and test data (the denominator).
    pub users: usize,
    pub precision_at_k: f64,
    pub recall_at_k: f64,
    pub ndcg_at_k: f64,
    pub map_at_k: f64,
    /// Distinct recommended items / items in the catalogue.
    pub coverage: f64,
}

/// Scores recommendations against held-out relevant items.
///
/// `recs[user]` is the ranked list; `relevant[user]` the test items; only users present in
/// `evaluated` count (those with training data). `catalogue` is the number of distinct items.
pub fn evaluate<U, I>(
    recs: &HashMap<U, Vec<I>>,
    relevant: &HashMap<U, HashSet<I>>,
    evaluated: &HashSet<U>,
    catalogue: usize,
    k: usize,
) -> RankingReport
where
    U: Eq + Hash,
    I: Eq + Hash + Clone,
{
    let (mut p, mut r, mut n, mut m) = (0.0, 0.0, 0.0, 0.0);
    let mut users = 0usize;
    let mut seen: HashSet<I> = HashSet::new();
    let empty = Vec::new();
    for (user, rel) in relevant {
        if !evaluated.contains(user) || rel.is_empty() {
            continue;
        }
        users += 1;
        let list = recs.get(user).unwrap_or(&empty);
        let list = &list[..list.len().min(k)];
        seen.extend(list.iter().cloned());
        let hits: Vec<bool> = list.iter().map(|i| rel.contains(i)).collect();
        let h = hits.iter().filter(|&&x| x).count() as f64;
        p += h / k as f64;
        r += h / rel.len() as f64;
        let dcg: f64 = hits
            .iter()
            .enumerate()
            .filter(|(_, &hit)| hit)
            .map(|(pos, _)| 1.0 / (pos as f64 + 2.0).log2())
            .sum();
        let idcg: f64 = (0..rel.len().min(k))
            .map(|pos| 1.0 / (pos as f64 + 2.0).log2())
            .sum();
        n += dcg / idcg;
        let (mut ap, mut found) = (0.0, 0.0);
        for (pos, &hit) in hits.iter().enumerate() {
            if hit {
                found += 1.0;
                ap += found / (pos as f64 + 1.0);
            }
        }
        m += ap / rel.len() as f64;
    }
    let d = users.max(1) as f64;
    RankingReport {
        k,
        users,
        precision_at_k: p / d,
        recall_at_k: r / d,
        ndcg_at_k: n / d,
        map_at_k: m / d,
        coverage: if catalogue == 0 {
            0.0
        } else {
            seen.len() as f64 / catalogue as f64
        },
    }
}

/// Mean pairwise dissimilarity `1 − sim(a, b)` over a list; 0 for lists shorter than two.
pub fn intra_list_diversity<I>(list: &[I], sim: impl Fn(&I, &I) -> f64) -> f64 {
    let mut total = 0.0;
    let mut pairs = 0usize;
    for a in 0..list.len() {
        for b in a + 1..list.len() {
            total += 1.0 - sim(&list[a], &list[b]);
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

    #[test]
    fn perfect_and_empty_lists() {
        let recs = HashMap::from([(1, vec![10, 11]), (2, vec![])]);
        let rel = HashMap::from([(1, HashSet::from([10, 11])), (2, HashSet::from([5]))]);
        let eval = HashSet::from([1, 2]);
        let rep = evaluate(&recs, &rel, &eval, 4, 2);
        assert_eq!(rep.users, 2);
        assert!((rep.precision_at_k - 0.5).abs() < 1e-12);
        assert!((rep.ndcg_at_k - 0.5).abs() < 1e-12);
        assert!((rep.map_at_k - 0.5).abs() < 1e-12);
        assert!((rep.coverage - 0.5).abs() < 1e-12);
    }

    #[test]
    fn ndcg_rewards_earlier_hits() {
        let rel = HashMap::from([(1, HashSet::from([10]))]);
        let eval = HashSet::from([1]);
        let first = evaluate(&HashMap::from([(1, vec![10, 11])]), &rel, &eval, 2, 2);
        let second = evaluate(&HashMap::from([(1, vec![11, 10])]), &rel, &eval, 2, 2);
        assert!(first.ndcg_at_k > second.ndcg_at_k);
        assert!((second.ndcg_at_k - 1.0 / 3f64.log2()).abs() < 1e-12);
        assert!((second.map_at_k - 0.5).abs() < 1e-12);
    }

    #[test]
    fn users_without_training_data_are_skipped() {
        let rel = HashMap::from([(1, HashSet::from([10])), (2, HashSet::from([10]))]);
        let rep = evaluate(
            &HashMap::from([(1, vec![10])]),
            &rel,
            &HashSet::from([1]),
            1,
            1,
        );
        assert_eq!(rep.users, 1);
        assert_eq!(rep.precision_at_k, 1.0);
    }

    #[test]
    fn diversity_of_identical_items_is_zero() {
        assert_eq!(intra_list_diversity(&[1, 1, 1], |_, _| 1.0), 0.0);
        assert_eq!(intra_list_diversity(&[1, 2], |_, _| 0.25), 0.75);
        assert_eq!(intra_list_diversity(&[1], |_, _| 0.0), 0.0);
    }
}
