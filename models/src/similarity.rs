//! Cosine similarity over implicit-weight vectors, the top-k ranking every similarity cache
//! uses, and the collaborative-filtering scorers.
//!
//! The live index keeps dot products (co-occurrence), norms and item columns up to date as
//! events arrive; everything here is a pure function of those numbers, so the incremental path
//! and the from-scratch [`batch`] reference rank with exactly the same code. Ranking quantises
//! similarities to 1e-9 before comparing and breaks ties by id, so two computations that agree
//! within floating-point noise produce the same ids in the same order.

use std::cmp::Ordering;
use std::collections::HashMap;

/// A neighbour: dense id and similarity.
pub type Neighbour = (u32, f64);

/// Cosine from a dot product and two squared norms; 0 when either vector is empty.
pub fn cosine(dot: f64, norm2_a: f64, norm2_b: f64) -> f64 {
    if norm2_a <= 0.0 || norm2_b <= 0.0 {
        return 0.0;
    }
    dot / (norm2_a.sqrt() * norm2_b.sqrt())
}

/// Sort key that makes rankings stable against floating-point noise below 1e-9.
#[inline]
fn quantised(score: f64) -> i64 {
    round_to_i64(score * 1e9)
}

/// `x.round() as i64` (half away from zero, NaN to 0, saturating), without the library call
/// below 2⁵² in magnitude: one truncating conversion and an exact subtraction.
#[inline]
fn round_to_i64(x: f64) -> i64 {
    if x.abs() < 4.0e15 {
        let whole = x as i64;
        let frac = x - whole as f64;
        whole + i64::from(frac >= 0.5) - i64::from(frac <= -0.5)
    } else {
        x.round() as i64
    }
}

/// Orders (id, score) pairs best first: by quantised score descending, then by id ascending.
pub fn rank_order(a: &Neighbour, b: &Neighbour) -> Ordering {
    rank_order_by(a, b, &u32::cmp)
}

/// Orders ids whose scores tie. The live engine orders them by external id (see
/// `momentum_actors::index::Index`), so that two servers that applied the same events in a
/// different order, and so assigned different dense ids, rank alike.
pub type TieBreak<'a> = &'a dyn Fn(&u32, &u32) -> Ordering;

/// [`rank_order`] with ties broken by `tie` instead of the dense id.
pub fn rank_order_by(a: &Neighbour, b: &Neighbour, tie: TieBreak<'_>) -> Ordering {
    quantised(b.1)
        .cmp(&quantised(a.1))
        .then_with(|| tie(&a.0, &b.0))
}

/// The `k` best candidates with a positive score, best first (see [`rank_order`]).
pub fn top_k(candidates: impl IntoIterator<Item = Neighbour>, k: usize) -> Vec<Neighbour> {
    top_k_by(candidates, k, &u32::cmp)
}

/// [`top_k`] with ties broken by `tie`.
pub fn top_k_by(
    candidates: impl IntoIterator<Item = Neighbour>,
    k: usize,
    tie: TieBreak<'_>,
) -> Vec<Neighbour> {
    // The quantised score is computed once per candidate, not once per comparison: the same
    // order as `rank_order_by`.
    let order = |a: &(i64, Neighbour), b: &(i64, Neighbour)| {
        b.0.cmp(&a.0).then_with(|| tie(&a.1 .0, &b.1 .0))
    };
    let candidates = candidates.into_iter();
    let mut all: Vec<(i64, Neighbour)> = Vec::with_capacity(candidates.size_hint().0);
    all.extend(
        candidates
            .map(|c| (quantised(c.1), c))
            .filter(|(q, _)| *q > 0),
    );
    if all.len() > k {
        all.select_nth_unstable_by(k, order);
        all.truncate(k);
    }
    all.sort_by(order);
    all.into_iter().map(|(_, c)| c).collect()
}

/// Scale of the fixed-point sums: 2⁻⁴⁰ is their resolution.
const FIXED_SCALE: f64 = (1u64 << 40) as f64;

/// `x` in fixed point (see [`SparseAccumulator`]); NaN counts as 0.
#[inline]
pub fn to_fixed(x: f64) -> i128 {
    let scaled = x * FIXED_SCALE;
    if scaled.abs() < 4.0e15 {
        i128::from(round_to_i64(scaled))
    } else {
        scaled.round() as i128
    }
}

/// A fixed-point sum that fits in `i64` back as a float: [`from_fixed`] of the same value.
#[inline]
pub fn from_fixed_i64(x: i64) -> f64 {
    x as f64 / FIXED_SCALE
}

/// A fixed-point sum back as a float.
#[inline]
pub fn from_fixed(x: i128) -> f64 {
    // Through i64 when it fits: the same rounding, without the wide conversion's library call.
    match i64::try_from(x) {
        Ok(v) => v as f64 / FIXED_SCALE,
        Err(_) => x as f64 / FIXED_SCALE,
    }
}

/// Slot `id` of a sparse accumulator's dense arrays, growing them as needed and noting the
/// slot as touched the first time.
#[inline]
fn touch<'a, T: Copy + Default>(
    values: &'a mut Vec<T>,
    marked: &mut Vec<bool>,
    touched: &mut Vec<u32>,
    id: u32,
) -> &'a mut T {
    let idx = id as usize;
    if idx >= values.len() {
        values.resize(idx + 1, T::default());
        marked.resize(idx + 1, false);
    }
    if !marked[idx] {
        marked[idx] = true;
        touched.push(id);
    }
    &mut values[idx]
}

/// A sparse accumulator over dense ids: `O(touched)` to read back and reset, so a scorer can
/// reuse one buffer across requests without clearing the whole catalogue.
///
/// Values are summed in fixed point ([`to_fixed`], resolution 2⁻⁴⁰), where addition is
/// associative: a sum does not depend on the order of its terms (which follows dense ids and
/// hash-map order), so servers that assigned ids differently, or a restored one, get the same
/// bits.
#[derive(Debug, Default, Clone)]
pub struct SparseAccumulator {
    values: Vec<i128>,
    marked: Vec<bool>,
    touched: Vec<u32>,
}

impl SparseAccumulator {
    /// Adds `value` to slot `id`.
    #[inline]
    pub fn add(&mut self, id: u32, value: f64) {
        self.add_fixed(id, to_fixed(value));
    }

    /// Adds `value`, already in fixed point ([`to_fixed`]), to slot `id`: the same sum as
    /// [`SparseAccumulator::add`] of the float, without converting in the loop.
    #[inline]
    pub fn add_fixed(&mut self, id: u32, value: i128) {
        *touch(&mut self.values, &mut self.marked, &mut self.touched, id) += value;
    }

    /// Current value of slot `id`.
    pub fn get(&self, id: u32) -> f64 {
        self.values.get(id as usize).map_or(0.0, |&v| from_fixed(v))
    }

    /// Moves every touched (id, value) out, in id order, and leaves the accumulator empty.
    pub fn drain(&mut self) -> Vec<Neighbour> {
        self.touched.sort_unstable();
        let mut out = Vec::with_capacity(self.touched.len());
        for id in self.touched.drain(..) {
            let idx = id as usize;
            out.push((id, from_fixed(self.values[idx])));
            self.values[idx] = 0;
            self.marked[idx] = false;
        }
        out
    }
}

/// A [`SparseAccumulator`] for sums of non-negative terms, in 64 bits: the same fixed-point
/// terms and so the same sums, half the memory and no 128-bit arithmetic. A term that is
/// negative, not finite or too large, or a sum that would overflow, marks the accumulator:
/// [`PositiveAccumulator::drain`] then answers `None`, and the caller sums again with a
/// [`SparseAccumulator`].
#[derive(Debug, Default, Clone)]
pub struct PositiveAccumulator {
    values: Vec<u64>,
    marked: Vec<bool>,
    touched: Vec<u32>,
    overflowed: bool,
}

impl PositiveAccumulator {
    /// Adds `value` (≥ 0) to slot `id`.
    #[inline]
    pub fn add(&mut self, id: u32, value: f64) {
        let scaled = value * FIXED_SCALE;
        // The range where `to_fixed` rounds without the library call; NaN fails it too.
        if !(0.0..4.0e15).contains(&scaled) {
            self.overflowed = true;
            return;
        }
        let term = round_to_i64(scaled) as u64;
        let slot = touch(&mut self.values, &mut self.marked, &mut self.touched, id);
        let (sum, overflow) = slot.overflowing_add(term);
        *slot = sum;
        self.overflowed |= overflow;
    }

    /// Every touched slot with its sum, in no particular order (`None` if a term did not
    /// fit), and resets the accumulator.
    pub fn drain(&mut self) -> Option<Vec<Neighbour>> {
        let fits = !std::mem::take(&mut self.overflowed);
        let mut out = Vec::with_capacity(if fits { self.touched.len() } else { 0 });
        for id in self.touched.drain(..) {
            let idx = id as usize;
            if fits {
                out.push((id, self.values[idx] as f64 / FIXED_SCALE));
            }
            self.values[idx] = 0;
            self.marked[idx] = false;
        }
        fits.then_some(out)
    }
}

/// Divides every score by the largest one so the list spans (0, 1]; empty lists stay empty.
pub fn normalise_by_max(scores: &mut [Neighbour]) {
    let max = scores.iter().map(|s| s.1).fold(0.0_f64, f64::max);
    if max > 0.0 {
        for s in scores.iter_mut() {
            s.1 /= max;
        }
    }
}

/// From-scratch computations over a complete weight matrix: the reference the incremental
/// index is tested against, and the definition of what the caches must contain.
pub mod batch {
    use super::*;

    /// A weight matrix: user → (item → weight). Zero weights are ignored.
    pub type Matrix = HashMap<u32, HashMap<u32, f32>>;

    fn transpose(m: &Matrix) -> Matrix {
        let mut t: Matrix = HashMap::new();
        for (&u, row) in m {
            for (&i, &w) in row {
                if w > 0.0 {
                    t.entry(i).or_default().insert(u, w);
                }
            }
        }
        t
    }

    fn top_similar(m: &Matrix, k: usize, tie: TieBreak<'_>) -> HashMap<u32, Vec<Neighbour>> {
        let norm2: HashMap<u32, f64> = m
            .iter()
            .map(|(&a, row)| (a, row.values().map(|&w| f64::from(w) * f64::from(w)).sum()))
            .collect();
        let t = transpose(m);
        let mut out = HashMap::new();
        for (&a, row) in m {
            let mut dots: HashMap<u32, f64> = HashMap::new();
            for (&x, &wa) in row {
                if wa <= 0.0 {
                    continue;
                }
                for (&b, &wb) in t.get(&x).into_iter().flatten() {
                    if b != a {
                        *dots.entry(b).or_default() += f64::from(wa) * f64::from(wb);
                    }
                }
            }
            let na = norm2[&a];
            let sims = dots.into_iter().map(|(b, d)| (b, cosine(d, na, norm2[&b])));
            let top = top_k_by(sims, k, tie);
            if na > 0.0 {
                out.insert(a, top);
            }
        }
        out
    }

    /// Top-k most similar users of every user with a non-empty row.
    pub fn similar_users(m: &Matrix, k: usize) -> HashMap<u32, Vec<Neighbour>> {
        top_similar(m, k, &u32::cmp)
    }

    /// Top-k most similar items of every item with at least one positive weight.
    pub fn similar_items(m: &Matrix, k: usize) -> HashMap<u32, Vec<Neighbour>> {
        top_similar(&transpose(m), k, &u32::cmp)
    }

    /// [`similar_users`] with ties broken by `tie`.
    pub fn similar_users_by(
        m: &Matrix,
        k: usize,
        tie: TieBreak<'_>,
    ) -> HashMap<u32, Vec<Neighbour>> {
        top_similar(m, k, tie)
    }

    /// [`similar_items`] with ties broken by `tie`.
    pub fn similar_items_by(
        m: &Matrix,
        k: usize,
        tie: TieBreak<'_>,
    ) -> HashMap<u32, Vec<Neighbour>> {
        top_similar(&transpose(m), k, tie)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_pre_converted_values_gives_the_same_bits() {
        let values = [0.25_f64, -1.0e-7, 3.0, 1.0 / 3.0, -0.1, 7.5e-13];
        let (mut floats, mut fixed) = (SparseAccumulator::default(), SparseAccumulator::default());
        for (k, &v) in values.iter().enumerate() {
            let id = (k % 3) as u32;
            floats.add(id, v);
            fixed.add_fixed(id, to_fixed(v));
        }
        let (a, b) = (floats.drain(), fixed.drain());
        assert_eq!(a.len(), 3);
        for ((ia, va), (ib, vb)) in a.iter().zip(&b) {
            assert_eq!((ia, va.to_bits()), (ib, vb.to_bits()));
        }
    }

    #[test]
    fn fixed_point_conversion_matches_the_wide_one() {
        let halves = [0.5, -0.5, 2.5, -2.5, 0.499_999_999_999_999_94].map(|h| h / FIXED_SCALE);
        let samples = (0..2000).map(|k| (k as f64 * 0.618_033_988_7).sin() * 3e3);
        let edges = [
            0.0,
            1.5,
            -2.25,
            1e-13,
            3.7e5,
            -8.3e6,
            8.0e6,
            1e9,
            -1e12,
            1e30,
            f64::NAN,
        ];
        for x in edges.into_iter().chain(halves).chain(samples) {
            let wide = (x * FIXED_SCALE).round() as i128;
            assert_eq!(to_fixed(x), wide, "{x}");
            assert_eq!(from_fixed(wide), wide as f64 / FIXED_SCALE, "{x}");
        }
        assert_eq!(from_fixed(i128::MAX), i128::MAX as f64 / FIXED_SCALE);
    }

    #[test]
    fn cosine_of_empty_vector_is_zero() {
        assert_eq!(cosine(1.0, 0.0, 4.0), 0.0);
        assert!((cosine(2.0, 4.0, 1.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn top_k_breaks_ties_by_id_and_drops_non_positive() {
        let got = top_k(vec![(5, 0.5), (2, 0.5), (9, 0.9), (1, 0.0), (3, -1.0)], 2);
        assert_eq!(got, vec![(9, 0.9), (2, 0.5)]);
        let noisy = top_k(vec![(5, 0.5 + 1e-13), (2, 0.5)], 1);
        assert_eq!(noisy[0].0, 2, "noise below 1e-9 must not reorder");
    }

    #[test]
    fn accumulator_drains_and_resets() {
        let mut acc = SparseAccumulator::default();
        acc.add(3, 1.0);
        acc.add(7, 2.0);
        acc.add(3, 0.5);
        let got = acc.drain();
        assert_eq!(got, vec![(3, 1.5), (7, 2.0)]);
        assert!(acc.drain().is_empty());
        assert_eq!(acc.get(3), 0.0);
    }

    #[test]
    fn accumulated_sums_do_not_depend_on_term_order() {
        let terms = [0.1, 0.2, 0.3];
        let sum_of = |order: &[usize]| {
            let mut acc = SparseAccumulator::default();
            for &i in order {
                acc.add(1, terms[i]);
            }
            acc.drain()[0].1.to_bits()
        };
        let float_of = |order: &[usize]| order.iter().map(|&i| terms[i]).sum::<f64>().to_bits();
        let (a, b) = ([0, 1, 2], [2, 1, 0]);
        assert_ne!(float_of(&a), float_of(&b), "plain float sums differ here");
        assert_eq!(sum_of(&a), sum_of(&b));
    }

    proptest::proptest! {
        /// The 64-bit accumulator gives the 128-bit one's sums bit for bit, and refuses what
        /// does not fit instead of wrapping.
        #[test]
        fn positive_sums_equal_the_wide_ones(
            terms in proptest::collection::vec((0u32..50, 0.0f64..50.0), 0..400),
            huge in proptest::bool::ANY,
        ) {
            let (mut narrow, mut wide) = (PositiveAccumulator::default(), SparseAccumulator::default());
            for &(id, x) in &terms {
                narrow.add(id, x);
                wide.add(id, x);
            }
            if huge {
                narrow.add(7, 1e6);
                proptest::prop_assert_eq!(narrow.drain(), None);
            } else {
                let mut got = narrow.drain().unwrap();
                got.sort_by_key(|e| e.0);
                let want = wide.drain();
                let bits = |v: &[Neighbour]| v.iter().map(|e| (e.0, e.1.to_bits())).collect::<Vec<_>>();
                proptest::prop_assert_eq!(bits(&got), bits(&want));
            }
            // Drained either way: reusable from zero.
            narrow.add(3, 0.25);
            proptest::prop_assert_eq!(narrow.drain(), Some(vec![(3, 0.25)]));
        }
    }

    #[test]
    fn positive_sums_refuse_negative_and_nan_terms() {
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let mut acc = PositiveAccumulator::default();
            acc.add(1, 2.0);
            acc.add(1, bad);
            assert_eq!(acc.drain(), None, "{bad}");
        }
    }

    #[test]
    fn ties_follow_the_given_order() {
        let names = ["b", "a", "c"];
        let by_name = |x: &u32, y: &u32| names[*x as usize].cmp(names[*y as usize]);
        let got = top_k_by(vec![(0, 0.5), (1, 0.5), (2, 0.9)], 3, &by_name);
        assert_eq!(got, vec![(2, 0.9), (1, 0.5), (0, 0.5)]);
    }

    #[test]
    fn batch_similar_items_matches_hand_computation() {
        // u1: a=1,b=1 ; u2: a=1,c=2 → cos(a,b)=1/√2, cos(a,c)=2/(√2·2)=1/√2, cos(b,c)=0
        let mut m = batch::Matrix::new();
        m.insert(1, HashMap::from([(10, 1.0), (11, 1.0)]));
        m.insert(2, HashMap::from([(10, 1.0), (12, 2.0)]));
        let s = batch::similar_items(&m, 10);
        let a = &s[&10];
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].0, 11);
        assert!((a[0].1 - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert!(!s[&11].iter().any(|n| n.0 == 12));
    }
}
