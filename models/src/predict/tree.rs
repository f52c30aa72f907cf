//! CART decision trees for binary classification: axis-aligned splits `x[f] <= t` chosen by the
//! largest decrease of weighted Gini impurity, leaves holding the fraction of positive training
//! rows that reach them. The tree is the building block of the churn [`RandomForest`]; it is also
//! usable on its own.
//!
//! Split search is exact and fast: every feature is sorted once per training set (shared by all
//! the trees of a forest), each tree filters that order to its bootstrap rows, and a node's rows
//! are kept sorted per feature by stable partitioning when the node splits. Candidate thresholds
//! are the midpoints between consecutive distinct values, scanned in one linear pass per feature,
//! so building one level costs `O(features × rows)` instead of a sort per node.
//!
//! Bootstrap duplicates are handled as integer row weights: a row drawn three times counts three
//! times in every impurity, count and leaf fraction, exactly as if it were copied.
//!
//! [`RandomForest`]: super::forest::RandomForest

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::standardize::{check_labels, check_matrix};
use crate::ModelError;

/// How many features a node considers when it looks for a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxFeatures {
    /// Every feature (a plain CART tree).
    All,
    /// `round(sqrt(features))`, at least 1 (the usual random-forest choice).
    Sqrt,
    /// A fixed number, clamped to `1..=features`.
    Count(usize),
}

impl MaxFeatures {
    /// The number of features to draw per split out of `n_features`.
    pub fn resolve(self, n_features: usize) -> usize {
        let k = match self {
            Self::All => n_features,
            Self::Sqrt => (n_features as f64).sqrt().round() as usize,
            Self::Count(k) => k,
        };
        k.clamp(1, n_features.max(1))
    }
}

/// Growth limits and randomisation of a [`DecisionTree`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeParams {
    /// Maximum depth; the root is depth 0, so depth 5 allows 32 leaves (default 5).
    pub max_depth: usize,
    /// A node with fewer (weighted) rows than this becomes a leaf (default 5).
    pub min_samples_split: usize,
    /// Every child of a split keeps at least this many (weighted) rows (default 1).
    pub min_samples_leaf: usize,
    /// Features considered per split (default [`MaxFeatures::All`]).
    pub max_features: MaxFeatures,
    /// Seed of the feature subsampling; unused with [`MaxFeatures::All`] (default 0).
    pub seed: u64,
}

impl Default for TreeParams {
    fn default() -> Self {
        Self {
            max_depth: 5,
            min_samples_split: 5,
            min_samples_leaf: 1,
            max_features: MaxFeatures::All,
            seed: 0,
        }
    }
}

/// One node of a fitted tree, stored in [`DecisionTree::nodes`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Node {
    /// A terminal node.
    Leaf {
        /// Fraction of the (weighted) training rows in this leaf that were positive.
        probability: f64,
        /// Weighted number of training rows that reached this leaf.
        samples: usize,
    },
    /// An internal node: rows with `x[feature] <= threshold` go to `left`, others (and NaN) to
    /// `right`. Child indices are always greater than the node's own index.
    Split {
        /// Index of the feature tested.
        feature: usize,
        /// Split point, a midpoint between two training values.
        threshold: f64,
        /// Index of the `<=` child in [`DecisionTree::nodes`].
        left: usize,
        /// Index of the `>` child in [`DecisionTree::nodes`].
        right: usize,
    },
}

/// A fitted binary classification tree; the root is `nodes[0]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionTree {
    /// The nodes in depth-first order.
    pub nodes: Vec<Node>,
    /// Number of features the tree was trained on.
    pub n_features: usize,
}

impl DecisionTree {
    /// Fits a tree on `rows` (equal-length, finite) and their labels.
    pub fn fit(
        rows: &[Vec<f64>],
        labels: &[bool],
        params: &TreeParams,
    ) -> Result<Self, ModelError> {
        let data = Columns::new(rows)?;
        check_labels(rows.len(), labels.len())?;
        let weights = vec![1; rows.len()];
        let mut rng = StdRng::seed_from_u64(params.seed);
        Ok(Self::fit_weighted(
            &data, labels, &weights, params, &mut rng,
        ))
    }

    /// Fits on the rows of `data` with integer `weights` (0 = row not used). `labels` and
    /// `weights` have one entry per row of `data`, and at least one weight is positive.
    pub(crate) fn fit_weighted(
        data: &Columns,
        labels: &[bool],
        weights: &[u32],
        params: &TreeParams,
        rng: &mut StdRng,
    ) -> Self {
        debug_assert_eq!(labels.len(), data.n_rows());
        debug_assert_eq!(weights.len(), data.n_rows());
        let mut builder = Builder::new(data, labels, weights, params);
        builder.grow(rng);
        Self {
            nodes: builder.nodes,
            n_features: data.n_features(),
        }
    }

    /// Probability of the positive class: the positive fraction of the leaf `x` falls into.
    ///
    /// `x` should have [`Self::n_features`] entries; a missing or NaN feature takes the `>`
    /// branch. Never panics, even on a structurally invalid (e.g. hand-edited) tree, which
    /// [`Self::validate`] detects; such a tree yields NaN.
    pub fn predict_proba(&self, x: &[f64]) -> f64 {
        match self.find_leaf(x).and_then(|i| self.nodes.get(i)) {
            Some(Node::Leaf { probability, .. }) => *probability,
            _ => {
                debug_assert!(false, "invalid tree structure");
                f64::NAN
            }
        }
    }

    /// Index of the leaf `x` falls into, `None` if the walk leaves the tree or loops.
    fn find_leaf(&self, x: &[f64]) -> Option<usize> {
        let mut index = 0;
        // A valid tree reaches a leaf in fewer steps than it has nodes.
        for _ in 0..self.nodes.len() {
            match self.nodes.get(index)? {
                Node::Leaf { .. } => return Some(index),
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    let go_left = x.get(*feature).is_some_and(|v| v <= threshold);
                    index = if go_left { *left } else { *right };
                }
            }
        }
        None
    }

    /// Checks the structure of a deserialised tree: children after their parent and in range,
    /// features in range, probabilities in `[0, 1]`.
    pub fn validate(&self) -> Result<(), ModelError> {
        let invalid = |reason: String| Err(ModelError::InvalidInput { reason });
        if self.nodes.is_empty() {
            return invalid("tree has no nodes".to_string());
        }
        for (i, node) in self.nodes.iter().enumerate() {
            match node {
                Node::Leaf { probability, .. } => {
                    if !(0.0..=1.0).contains(probability) {
                        return invalid(format!("leaf {i} has probability {probability}"));
                    }
                }
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    let children_ok = *left > i
                        && *right > i
                        && *left < self.nodes.len()
                        && *right < self.nodes.len();
                    if !children_ok || *feature >= self.n_features || threshold.is_nan() {
                        return invalid(format!("split node {i} is malformed"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Length of the longest root-to-leaf path (0 for a single leaf).
    pub fn depth(&self) -> usize {
        let mut depth = vec![0usize; self.nodes.len()];
        let mut max = 0;
        for (i, node) in self.nodes.iter().enumerate() {
            let here = depth[i];
            max = max.max(here);
            if let Node::Split { left, right, .. } = node {
                for &child in [left, right] {
                    if let Some(d) = depth.get_mut(child) {
                        *d = here + 1;
                    }
                }
            }
        }
        max
    }

    /// Number of leaves.
    pub fn n_leaves(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n, Node::Leaf { .. }))
            .count()
    }
}

/// A training matrix stored by column, with each column's row order sorted by value. Built once
/// and shared by all the trees of a forest.
#[derive(Debug, Clone)]
pub(crate) struct Columns {
    values: Vec<Vec<f64>>,
    sorted_rows: Vec<Vec<u32>>,
    n_rows: usize,
}

impl Columns {
    /// Transposes and sorts `rows` (non-empty, equal-length, finite).
    pub(crate) fn new(rows: &[Vec<f64>]) -> Result<Self, ModelError> {
        let n_features = check_matrix(rows)?;
        if u32::try_from(rows.len()).is_err() {
            return Err(ModelError::InvalidInput {
                reason: format!("{} rows exceed the tree's limit of 2^32", rows.len()),
            });
        }
        let values: Vec<Vec<f64>> = (0..n_features)
            .map(|f| rows.iter().map(|r| r[f]).collect())
            .collect();
        let sorted_rows = values
            .iter()
            .map(|column| {
                let mut order: Vec<u32> = (0..rows.len() as u32).collect();
                order.sort_by(|&a, &b| column[a as usize].total_cmp(&column[b as usize]));
                order
            })
            .collect();
        Ok(Self {
            values,
            sorted_rows,
            n_rows: rows.len(),
        })
    }

    pub(crate) fn n_rows(&self) -> usize {
        self.n_rows
    }

    pub(crate) fn n_features(&self) -> usize {
        self.values.len()
    }
}

/// Per-row weight and weighted positive count.
#[derive(Debug, Clone, Copy, Default)]
struct RowStat {
    weight: u32,
    positive: u32,
}

/// A pending node: its index in `nodes` and its rows `start..end` in every feature's arrays.
#[derive(Debug, Clone, Copy)]
struct Task {
    node: usize,
    start: usize,
    end: usize,
    depth: usize,
    weight: u64,
    positive: u64,
}

#[derive(Debug, Clone, Copy)]
struct BestSplit {
    feature: usize,
    /// Last position (in the feature's sorted arrays) of the left child.
    last_left: usize,
    threshold: f64,
    score: f64,
    left_weight: u64,
    left_positive: u64,
}

struct Builder<'a> {
    params: &'a TreeParams,
    stats: Vec<RowStat>,
    /// Per feature: the used rows, sorted by value within each node's range.
    rows: Vec<Vec<u32>>,
    /// Per feature: `values[f][rows[f][i]]`, kept aligned with `rows` for sequential scans.
    vals: Vec<Vec<f64>>,
    goes_left: Vec<bool>,
    scratch_rows: Vec<u32>,
    scratch_vals: Vec<f64>,
    features: Vec<usize>,
    nodes: Vec<Node>,
}

impl<'a> Builder<'a> {
    fn new(data: &Columns, labels: &[bool], weights: &[u32], params: &'a TreeParams) -> Self {
        let stats: Vec<RowStat> = weights
            .iter()
            .zip(labels)
            .map(|(&weight, &label)| RowStat {
                weight,
                positive: if label { weight } else { 0 },
            })
            .collect();
        let mut rows = Vec::with_capacity(data.n_features());
        let mut vals = Vec::with_capacity(data.n_features());
        for (order, column) in data.sorted_rows.iter().zip(&data.values) {
            let used: Vec<u32> = order
                .iter()
                .copied()
                .filter(|&r| stats[r as usize].weight > 0)
                .collect();
            vals.push(used.iter().map(|&r| column[r as usize]).collect());
            rows.push(used);
        }
        Self {
            params,
            goes_left: vec![false; stats.len()],
            stats,
            rows,
            vals,
            scratch_rows: Vec::new(),
            scratch_vals: Vec::new(),
            features: (0..data.n_features()).collect(),
            nodes: Vec::new(),
        }
    }

    fn grow(&mut self, rng: &mut StdRng) {
        let n_used = self.rows.first().map_or(0, Vec::len);
        let (weight, positive) = self.rows.first().map_or((0, 0), |rows| {
            rows.iter().fold((0u64, 0u64), |(w, p), &r| {
                let s = self.stats[r as usize];
                (w + u64::from(s.weight), p + u64::from(s.positive))
            })
        });
        self.nodes.push(leaf(weight, positive));
        let mut stack = vec![Task {
            node: 0,
            start: 0,
            end: n_used,
            depth: 0,
            weight,
            positive,
        }];
        while let Some(task) = stack.pop() {
            let Some(split) = self.find_split(&task, rng) else {
                continue; // stays the leaf pushed for it
            };
            let mid = split.last_left + 1;
            self.partition(&task, &split);
            let left = self.nodes.len();
            let right = left + 1;
            let right_weight = task.weight - split.left_weight;
            let right_positive = task.positive - split.left_positive;
            self.nodes
                .push(leaf(split.left_weight, split.left_positive));
            self.nodes.push(leaf(right_weight, right_positive));
            self.nodes[task.node] = Node::Split {
                feature: split.feature,
                threshold: split.threshold,
                left,
                right,
            };
            stack.push(Task {
                node: right,
                start: mid,
                end: task.end,
                depth: task.depth + 1,
                weight: right_weight,
                positive: right_positive,
            });
            stack.push(Task {
                node: left,
                start: task.start,
                end: mid,
                depth: task.depth + 1,
                weight: split.left_weight,
                positive: split.left_positive,
            });
        }
    }

    /// The best admissible split of the task's rows, or `None` if it must be a leaf.
    fn find_split(&mut self, task: &Task, rng: &mut StdRng) -> Option<BestSplit> {
        let p = self.params;
        let pure = task.positive == 0 || task.positive == task.weight;
        if task.depth >= p.max_depth || task.weight < p.min_samples_split as u64 || pure {
            return None;
        }
        let min_leaf = p.min_samples_leaf.max(1) as u64;
        let total = task.weight as f64;
        let total_positive = task.positive as f64;
        // Maximising Σ_children pos²/weight is minimising the weighted Gini impurity
        // Σ_children 2·pos·(1 - pos/weight); the parent's own value is the baseline to beat.
        let parent_score = total_positive * total_positive / total;
        let mut best: Option<BestSplit> = None;

        let n_features = self.features.len();
        let wanted = p.max_features.resolve(n_features);
        let subsample = wanted < n_features;
        let mut visited = 0;
        for k in 0..n_features {
            if visited == wanted {
                break;
            }
            if subsample {
                // Partial Fisher–Yates: position k gets a random not-yet-drawn feature.
                let pick = rng.gen_range(k..n_features);
                self.features.swap(k, pick);
            }
            let f = self.features[k];
            let vals = &self.vals[f][task.start..task.end];
            let rows = &self.rows[f][task.start..task.end];
            let (Some(first), Some(last)) = (vals.first(), vals.last()) else {
                continue;
            };
            if first == last {
                continue; // constant here: does not count against the draw (as in scikit-learn)
            }
            visited += 1;
            let (mut left_weight, mut left_positive) = (0u64, 0u64);
            for i in 0..vals.len() - 1 {
                let s = self.stats[rows[i] as usize];
                left_weight += u64::from(s.weight);
                left_positive += u64::from(s.positive);
                if vals[i] == vals[i + 1] {
                    continue;
                }
                let right_weight = task.weight - left_weight;
                if left_weight < min_leaf || right_weight < min_leaf {
                    continue;
                }
                let lp = left_positive as f64;
                let rp = total_positive - lp;
                let score = lp * lp / left_weight as f64 + rp * rp / right_weight as f64;
                if best.is_none_or(|b| score > b.score) {
                    best = Some(BestSplit {
                        feature: f,
                        last_left: task.start + i,
                        threshold: midpoint(vals[i], vals[i + 1]),
                        score,
                        left_weight,
                        left_positive,
                    });
                }
            }
        }
        // Require a real impurity decrease, not float noise.
        best.filter(|b| b.score - parent_score > 1e-12 * total.max(1.0))
    }

    /// Reorders every feature's range so the left child's rows come first, keeping each side
    /// sorted by value.
    fn partition(&mut self, task: &Task, split: &BestSplit) {
        let mid = split.last_left + 1;
        let chosen = &self.rows[split.feature];
        for &r in &chosen[task.start..mid] {
            self.goes_left[r as usize] = true;
        }
        for &r in &chosen[mid..task.end] {
            self.goes_left[r as usize] = false;
        }
        for f in 0..self.rows.len() {
            if f == split.feature {
                continue; // already ordered: the left rows are a prefix
            }
            let rows = &mut self.rows[f][task.start..task.end];
            let vals = &mut self.vals[f][task.start..task.end];
            self.scratch_rows.clear();
            self.scratch_vals.clear();
            let mut write = 0;
            for i in 0..rows.len() {
                let (r, v) = (rows[i], vals[i]);
                if self.goes_left[r as usize] {
                    rows[write] = r;
                    vals[write] = v;
                    write += 1;
                } else {
                    self.scratch_rows.push(r);
                    self.scratch_vals.push(v);
                }
            }
            debug_assert_eq!(
                task.start + write,
                mid,
                "every feature splits the same rows"
            );
            rows[write..].copy_from_slice(&self.scratch_rows);
            vals[write..].copy_from_slice(&self.scratch_vals);
        }
    }
}

fn leaf(weight: u64, positive: u64) -> Node {
    Node::Leaf {
        probability: if weight == 0 {
            0.0
        } else {
            positive as f64 / weight as f64
        },
        samples: weight as usize,
    }
}

/// A split point `t` with `low <= t < high` for `low < high`, halfway when representable.
fn midpoint(low: f64, high: f64) -> f64 {
    let mid = low + (high - low) / 2.0;
    if mid >= low && mid < high {
        mid
    } else {
        low
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn xor_rows() -> (Vec<Vec<f64>>, Vec<bool>) {
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for i in 0..40 {
            let a = (i % 2) as f64;
            let b = ((i / 2) % 2) as f64;
            rows.push(vec![a, b]);
            labels.push((a + b) as i32 == 1);
        }
        (rows, labels)
    }

    #[test]
    fn splits_on_the_informative_feature() {
        // Feature 1 decides the label at 10; features 0 and 2 are noise.
        let rows: Vec<Vec<f64>> = (0..30)
            .map(|i| vec![((i * 7) % 5) as f64, i as f64, ((i * 3) % 4) as f64])
            .collect();
        let labels: Vec<bool> = (0..30).map(|i| i >= 10).collect();
        let tree = DecisionTree::fit(&rows, &labels, &TreeParams::default()).unwrap();
        match &tree.nodes[0] {
            Node::Split {
                feature, threshold, ..
            } => {
                assert_eq!(*feature, 1);
                assert_eq!(*threshold, 9.5);
            }
            other => panic!("root should split, got {other:?}"),
        }
        assert_eq!(tree.n_leaves(), 2, "both children are pure");
        assert_eq!(tree.predict_proba(&[0.0, 3.0, 0.0]), 0.0);
        assert_eq!(tree.predict_proba(&[0.0, 12.0, 0.0]), 1.0);
        tree.validate().unwrap();
    }

    #[test]
    fn learns_xor_with_depth_two() {
        // Gini gain of either first split is zero, so a greedy CART stops at the root...
        let (rows, labels) = xor_rows();
        let tree = DecisionTree::fit(&rows, &labels, &TreeParams::default()).unwrap();
        assert_eq!(tree.n_leaves(), 1);
        assert_eq!(tree.predict_proba(&[0.0, 1.0]), 0.5);
        // ...but with a slightly unbalanced sample the first split gains and depth 2 solves it.
        let mut rows = rows;
        let mut labels = labels;
        rows.push(vec![1.0, 1.0]);
        labels.push(false);
        let tree = DecisionTree::fit(&rows, &labels, &TreeParams::default()).unwrap();
        for (r, &l) in rows.iter().zip(&labels) {
            assert_eq!(tree.predict_proba(r), if l { 1.0 } else { 0.0 });
        }
        assert_eq!(tree.depth(), 2);
    }

    #[test]
    fn respects_depth_and_leaf_limits() {
        let rows: Vec<Vec<f64>> = (0..64).map(|i| vec![i as f64]).collect();
        // Alternating labels: every split helps a little, so growth is limited only by params.
        let labels: Vec<bool> = (0..64).map(|i| (i / 3) % 2 == 0).collect();
        for max_depth in 0..4 {
            let params = TreeParams {
                max_depth,
                min_samples_split: 2,
                ..TreeParams::default()
            };
            let tree = DecisionTree::fit(&rows, &labels, &params).unwrap();
            assert!(tree.depth() <= max_depth);
        }
        let params = TreeParams {
            max_depth: 20,
            min_samples_split: 2,
            min_samples_leaf: 7,
            ..TreeParams::default()
        };
        let tree = DecisionTree::fit(&rows, &labels, &params).unwrap();
        for node in &tree.nodes {
            if let Node::Leaf { samples, .. } = node {
                assert!(*samples >= 7);
            }
        }
        let params = TreeParams {
            min_samples_split: 100,
            ..TreeParams::default()
        };
        let stump = DecisionTree::fit(&rows, &labels, &params).unwrap();
        assert_eq!(stump.nodes.len(), 1);
    }

    #[test]
    fn weights_act_like_duplicated_rows() {
        let rows: Vec<Vec<f64>> = vec![vec![0.0], vec![1.0], vec![2.0], vec![3.0]];
        let labels = [false, true, false, true];
        let data = Columns::new(&rows).unwrap();
        let params = TreeParams {
            max_depth: 0,
            ..TreeParams::default()
        };
        let mut rng = StdRng::seed_from_u64(0);
        let tree = DecisionTree::fit_weighted(&data, &labels, &[3, 1, 0, 0], &params, &mut rng);
        assert_eq!(tree.predict_proba(&[0.0]), 0.25);
        assert_eq!(
            tree.nodes[0],
            Node::Leaf {
                probability: 0.25,
                samples: 4
            }
        );
        // A zero-weight row never influences the thresholds.
        let params = TreeParams {
            min_samples_split: 2,
            ..TreeParams::default()
        };
        let tree = DecisionTree::fit_weighted(&data, &labels, &[1, 1, 0, 0], &params, &mut rng);
        assert!(matches!(tree.nodes[0], Node::Split { threshold, .. } if threshold == 0.5));
    }

    #[test]
    fn feature_subsampling_is_seeded() {
        let rows: Vec<Vec<f64>> = (0..200)
            .map(|i| {
                (0..6)
                    .map(|j| ((i * (j + 3) * 7919) % 101) as f64)
                    .collect()
            })
            .collect();
        let labels: Vec<bool> = rows.iter().map(|r| r[0] + r[3] > 100.0).collect();
        let params = TreeParams {
            max_features: MaxFeatures::Sqrt,
            seed: 7,
            ..TreeParams::default()
        };
        let a = DecisionTree::fit(&rows, &labels, &params).unwrap();
        let b = DecisionTree::fit(&rows, &labels, &params).unwrap();
        assert_eq!(a, b);
        let other = TreeParams { seed: 8, ..params };
        let c = DecisionTree::fit(&rows, &labels, &other).unwrap();
        assert_ne!(a, c, "a different seed draws different features");
    }

    #[test]
    fn max_features_resolution() {
        assert_eq!(MaxFeatures::All.resolve(10), 10);
        assert_eq!(MaxFeatures::Sqrt.resolve(10), 3);
        assert_eq!(MaxFeatures::Sqrt.resolve(1), 1);
        assert_eq!(MaxFeatures::Count(0).resolve(4), 1);
        assert_eq!(MaxFeatures::Count(9).resolve(4), 4);
    }

    #[test]
    fn midpoint_stays_between_neighbours() {
        assert_eq!(midpoint(1.0, 2.0), 1.5);
        let next = f64::from_bits(1.0f64.to_bits() + 1);
        let t = midpoint(1.0, next);
        assert!((1.0..next).contains(&t));
        assert_eq!(midpoint(-f64::MAX, f64::MAX), -f64::MAX);
    }

    #[test]
    fn prediction_never_panics_on_bad_input_or_tree() {
        let rows = vec![
            vec![0.0],
            vec![1.0],
            vec![2.0],
            vec![3.0],
            vec![4.0],
            vec![5.0],
        ];
        let labels = [false, false, false, true, true, true];
        let tree = DecisionTree::fit(&rows, &labels, &TreeParams::default()).unwrap();
        assert_eq!(tree.predict_proba(&[]), 1.0, "missing feature goes right");
        assert_eq!(tree.predict_proba(&[f64::NAN]), 1.0, "NaN goes right");
        let broken = DecisionTree {
            nodes: vec![Node::Split {
                feature: 0,
                threshold: 0.5,
                left: 0,
                right: 9,
            }],
            n_features: 1,
        };
        assert!(broken.validate().is_err());
        assert!(DecisionTree {
            nodes: vec![],
            n_features: 1
        }
        .validate()
        .is_err());
    }

    #[test]
    fn rejects_bad_input() {
        let p = TreeParams::default();
        assert!(DecisionTree::fit(&[], &[], &p).is_err());
        assert!(DecisionTree::fit(&[vec![1.0]], &[], &p).is_err());
        assert!(DecisionTree::fit(&[vec![f64::INFINITY]], &[true], &p).is_err());
    }

    proptest! {
        #[test]
        fn leaves_are_probabilities_and_training_fractions_match(
            data in proptest::collection::vec((0u8..6, 0u8..6, any::<bool>()), 1..80)
        ) {
            let rows: Vec<Vec<f64>> =
                data.iter().map(|&(a, b, _)| vec![f64::from(a), f64::from(b)]).collect();
            let labels: Vec<bool> = data.iter().map(|r| r.2).collect();
            let params = TreeParams { min_samples_split: 2, ..TreeParams::default() };
            let tree = DecisionTree::fit(&rows, &labels, &params).unwrap();
            tree.validate().unwrap();
            prop_assert!(tree.depth() <= params.max_depth);
            // Each leaf's probability is the positive fraction of the training rows reaching it.
            let mut per_leaf: std::collections::HashMap<usize, (usize, usize)> = Default::default();
            for (r, &l) in rows.iter().zip(&labels) {
                let e = per_leaf.entry(tree.find_leaf(r).unwrap()).or_default();
                e.0 += 1;
                e.1 += usize::from(l);
            }
            for (leaf, (n, pos)) in per_leaf {
                match &tree.nodes[leaf] {
                    Node::Leaf { probability, samples } => {
                        prop_assert_eq!(*samples, n);
                        prop_assert!((probability - pos as f64 / n as f64).abs() < 1e-12);
                    }
                    Node::Split { .. } => prop_assert!(false, "find_leaf returned a split"),
                }
            }
            let total: usize = tree.nodes.iter().map(|n| match n {
                Node::Leaf { samples, .. } => *samples,
                Node::Split { .. } => 0,
            }).sum();
            prop_assert_eq!(total, rows.len());
        }
    }
}
