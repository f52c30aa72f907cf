//! EASE, the closed-form item-item model ("Embarrassingly Shallow Autoencoders", Steck 2019).
//!
//! With the binary user × item matrix `X`, the Gram matrix `G = XᵀX` (on the diagonal the
//! number of users of each item, off it the number of users two items share — exactly the
//! counts the catalogue keeps incrementally) and a ridge `λ`:
//!
//! ```text
//! P = (G + λI)⁻¹        B_ij = −P_ij / P_jj  (i ≠ j),  B_ii = 0
//! score(u, j) = Σ_i x_ui · B_ij
//! ```
//!
//! Scoring is the same shape as item-based CF — a sum of the rows of `B` over the user's
//! items — so it runs on the live rows while `B` is rebuilt in the background. Only the
//! `neighbours` weights of largest magnitude of each row are kept.
//!
//! **Linear algebra.** `G + λI` is symmetric positive definite. It is factorised in place with
//! faer's Cholesky (`LLᵀ`, lower triangle). `U = L⁻ᵀ` then goes into the same matrix's upper
//! triangle, 128 columns of `L⁻¹` at a time (triangular solves against the part of `L` still
//! needed), and `P = UUᵀ` is formed 128 rows at a time, each row turned into a row of `B` at
//! once: from the diagonal on it is computed (a triangular product), before it read back from
//! the lower triangle, where each block leaves its part of the later rows (`P` is symmetric).
//! So one `n × n` matrix of `f64` and an `n × 128` panel are all the peak holds, for the `n³`
//! flops of the factorisation, the inverse and the product.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::linalg::triangular_solve::solve_lower_triangular_in_place;
use faer::{Accum, Mat, Par};

/// Model parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EaseParams {
    /// The ridge `λ` added to the diagonal (larger: smoother, favours popular items less).
    pub lambda: f64,
    /// Weights kept per row of `B` (the largest in magnitude, positive or negative).
    pub neighbours: usize,
    /// Threads for the factorisation (0: all cores).
    pub threads: usize,
}

impl Default for EaseParams {
    fn default() -> Self {
        EaseParams {
            lambda: 300.0,
            neighbours: 100,
            threads: 0,
        }
    }
}

/// Why a model could not be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EaseError {
    #[error("ease: lambda must be finite and positive, got {0}")]
    BadLambda(f64),
    #[error("ease: the Gram matrix is not positive definite (pivot {0}); counts are inconsistent")]
    NotPositiveDefinite(usize),
    #[error("ease: pair ({0}, {1}) is outside the {2} modelled items")]
    OutOfRange(usize, usize, usize),
}

/// A fitted model: for each modelled item (by local index), its weights of largest magnitude
/// `(local index j, B_ij)`, best (most positive) first, ties by index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EaseRows {
    pub rows: Vec<Vec<(u32, f32)>>,
}

/// Fits EASE on `n` items: `diag[i]` is `G_ii` (users of item `i`), `pairs` gives `G_ij` for
/// `i ≠ j` (each unordered pair once, in either order; absent pairs are 0).
pub fn fit(
    diag: &[f64],
    pairs: impl IntoIterator<Item = (usize, usize, f64)>,
    params: &EaseParams,
) -> Result<EaseRows, EaseError> {
    fit_in_blocks(diag, pairs, params, BLOCK)
}

/// Columns of `L⁻¹` and rows of `P` worked out at a time after the factorisation: the one
/// scratch panel is `n × BLOCK`. Fixed, so the blocking (and so the order of the sums it
/// decides) does not depend on the machine; faer's kernels may still differ by CPU.
const BLOCK: usize = 128;

fn fit_in_blocks(
    diag: &[f64],
    pairs: impl IntoIterator<Item = (usize, usize, f64)>,
    params: &EaseParams,
    block: usize,
) -> Result<EaseRows, EaseError> {
    if !(params.lambda.is_finite() && params.lambda > 0.0) {
        return Err(EaseError::BadLambda(params.lambda));
    }
    let n = diag.len();
    if n == 0 {
        return Ok(EaseRows::default());
    }
    let par = if params.threads == 1 {
        Par::Seq
    } else {
        Par::rayon(params.threads)
    };
    // G + λI, lower triangle only.
    let mut a = Mat::<f64>::zeros(n, n);
    for (i, &d) in diag.iter().enumerate() {
        a[(i, i)] = d + params.lambda;
    }
    for (i, j, g) in pairs {
        if i >= n || j >= n {
            return Err(EaseError::OutOfRange(i, j, n));
        }
        if i != j {
            a[(i.max(j), i.min(j))] = g;
        }
    }
    let mut scratch = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
    cholesky_in_place(
        a.as_mut(),
        Default::default(),
        par,
        MemStack::new(&mut scratch),
        Default::default(),
    )
    .map_err(|e| match e {
        faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index } => {
            EaseError::NotPositiveDefinite(index)
        }
    })?;
    drop(scratch);
    let block = block.clamp(1, n);
    let mut panel = Mat::<f64>::zeros(n, block);
    // U = L⁻ᵀ over the upper triangle, `block` columns of L⁻¹ at a time, left to right.
    // Columns c0..c1 of L⁻¹ are zero above row c0, so they solve with L's trailing block;
    // written as rows c0..c1 of U, they cover only the diagonal of L that later columns no
    // longer read.
    for c0 in (0..n).step_by(block) {
        let k = block.min(n - c0);
        let m = n - c0;
        let mut y = panel.as_mut().submatrix_mut(0, 0, m, k);
        y.fill(0.0);
        for j in 0..k {
            y[(j, j)] = 1.0;
        }
        solve_lower_triangular_in_place(a.as_ref().submatrix(c0, c0, m, m), y.as_mut(), par);
        for i in 0..m {
            for j in 0..k.min(i + 1) {
                a[(c0 + j, c0 + i)] = y[(i, j)];
            }
        }
    }
    // L is spent: clear it, so that `a` is U, upper triangular.
    for j in 0..n {
        a.as_mut()
            .col_mut(j)
            .subrows_mut(j + 1, n - j - 1)
            .fill(0.0);
    }
    // P = U Uᵀ. Its diagonal first: the squared norms of U's rows, summed column by column.
    let mut diag_p = vec![0f64; n];
    for c in 0..n {
        for (r, d) in diag_p.iter_mut().enumerate().take(c + 1) {
            *d += a[(r, c)] * a[(r, c)];
        }
    }
    let keep = params.neighbours.min(n.saturating_sub(1));
    let mut rows = Vec::with_capacity(n);
    let mut row: Vec<(u32, f32)> = Vec::with_capacity(n);
    for i in 0..n {
        // Rows r0..r1 of P as columns of the panel. From column r0 on:
        // P[r0.., r0 + t] = U[r0.., r0..] U[r0 + t, r0..]ᵀ, with U upper triangular. Before
        // column r0: what earlier blocks stored in the lower triangle, free since L was
        // spent (P is symmetric). This block then stores its part of the later rows there.
        let r0 = i - i % block;
        if i == r0 {
            let k = block.min(n - r0);
            let m = n - r0;
            triangular::matmul(
                panel.as_mut().submatrix_mut(r0, 0, m, k),
                BlockStructure::Rectangular,
                Accum::Replace,
                a.as_ref().submatrix(r0, r0, m, m),
                BlockStructure::TriangularUpper,
                a.as_ref().submatrix(r0, r0, k, m).transpose(),
                BlockStructure::Rectangular,
                1.0,
                par,
            );
            for j in 0..r0 {
                for t in 0..k {
                    panel[(j, t)] = a[(r0 + t, j)];
                }
            }
            for t in 0..k {
                for j in r0 + k..n {
                    a[(j, r0 + t)] = panel[(j, t)];
                }
            }
        }
        let p_i = panel.as_ref().col(i - r0);
        row.clear();
        for (j, &pjj) in diag_p.iter().enumerate() {
            if j == i {
                continue;
            }
            let b = (-p_i[j] / pjj) as f32;
            if b != 0.0 {
                row.push((j as u32, b));
            }
        }
        // Negative weights matter as much as positive ones (they push down what users of
        // item i avoid): keep the largest in magnitude, then order best first.
        let strongest =
            |x: &(u32, f32), y: &(u32, f32)| y.1.abs().total_cmp(&x.1.abs()).then(x.0.cmp(&y.0));
        if keep == 0 {
            row.clear();
        } else if row.len() > keep {
            row.select_nth_unstable_by(keep - 1, strongest);
            row.truncate(keep);
        }
        row.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
        rows.push(row.clone());
    }
    Ok(EaseRows { rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `B` from a plain Gauss–Jordan inverse: the reference the factorisation must match.
    fn reference(g: &[Vec<f64>], lambda: f64) -> Vec<Vec<f64>> {
        let n = g.len();
        let mut m: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                let mut row = g[i].clone();
                row[i] += lambda;
                row.extend((0..n).map(|j| f64::from(u8::from(i == j))));
                row
            })
            .collect();
        for c in 0..n {
            let pivot = m[c][c];
            for x in &mut m[c] {
                *x /= pivot;
            }
            for r in 0..n {
                if r != c {
                    let f = m[r][c];
                    let pivot_row = m[c].clone();
                    for (x, p) in m[r].iter_mut().zip(pivot_row) {
                        *x -= f * p;
                    }
                }
            }
        }
        let p: Vec<Vec<f64>> = m.into_iter().map(|row| row[n..].to_vec()).collect();
        (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| if i == j { 0.0 } else { -p[i][j] / p[j][j] })
                    .collect()
            })
            .collect()
    }

    /// A random binary user × item matrix and its Gram matrix.
    fn gram(users: usize, items: usize, seed: u64) -> Vec<Vec<f64>> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let x: Vec<Vec<bool>> = (0..users)
            .map(|_| {
                (0..items)
                    .map(|j| rng.gen_bool(0.1 + 0.5 / (j + 1) as f64))
                    .collect()
            })
            .collect();
        (0..items)
            .map(|i| {
                (0..items)
                    .map(|j| x.iter().filter(|row| row[i] && row[j]).count() as f64)
                    .collect()
            })
            .collect()
    }

    fn fit_dense(g: &[Vec<f64>], params: &EaseParams) -> EaseRows {
        fit_dense_in_blocks(g, params, BLOCK)
    }

    fn fit_dense_in_blocks(g: &[Vec<f64>], params: &EaseParams, block: usize) -> EaseRows {
        let n = g.len();
        let diag: Vec<f64> = (0..n).map(|i| g[i][i]).collect();
        let pairs = (0..n).flat_map(|i| (0..i).map(move |j| (i, j, g[i][j])));
        fit_in_blocks(&diag, pairs, params, block).expect("fit")
    }

    #[test]
    fn matches_a_plain_inverse_in_any_block_size() {
        let g = gram(60, 25, 7);
        let lambda = 3.0;
        let b = reference(&g, lambda);
        let params = EaseParams {
            lambda,
            neighbours: 24,
            threads: 1,
        };
        // One column at a time, blocks that do and do not divide 25, one block, the default.
        for block in [1, 4, 7, 25, 26, BLOCK] {
            matches(&fit_dense_in_blocks(&g, &params, block), &b, block);
        }
    }

    fn matches(rows: &EaseRows, b: &[Vec<f64>], block: usize) {
        let mut compared = 0;
        for (i, row) in rows.rows.iter().enumerate() {
            assert_eq!(
                row.len(),
                b[i].iter().filter(|&&v| v != 0.0).count(),
                "row {i}"
            );
            for &(j, w) in row {
                let want = b[i][j as usize];
                assert!(
                    (f64::from(w) - want).abs() <= 1e-5 * want.abs().max(1e-3),
                    "blocks of {block}: B[{i}][{j}] = {w}, want {want}"
                );
                compared += 1;
            }
            assert!(
                row.windows(2).all(|p| p[0].1 >= p[1].1),
                "row {i} is best first"
            );
        }
        assert!(
            compared > 50,
            "too few positive weights compared: {compared}"
        );
    }

    #[test]
    fn rows_keep_the_strongest_neighbours_and_threads_do_not_change_them() {
        let g = gram(80, 30, 11);
        let one = fit_dense(
            &g,
            &EaseParams {
                lambda: 5.0,
                neighbours: 4,
                threads: 1,
            },
        );
        let all = fit_dense(
            &g,
            &EaseParams {
                lambda: 5.0,
                neighbours: 30,
                threads: 2,
            },
        );
        for (short, long) in one.rows.iter().zip(&all.rows) {
            assert!(short.len() <= 4);
            // The kept weights are the four of largest magnitude of the full row.
            let mut by_magnitude = long.clone();
            by_magnitude.sort_by(|x, y| y.1.abs().total_cmp(&x.1.abs()).then(x.0.cmp(&y.0)));
            let mut kept: Vec<u32> = short.iter().map(|x| x.0).collect();
            let mut want: Vec<u32> = by_magnitude[..short.len()].iter().map(|x| x.0).collect();
            kept.sort_unstable();
            want.sort_unstable();
            assert_eq!(kept, want);
        }
    }

    #[test]
    fn bad_input_is_refused() {
        let params = EaseParams::default();
        assert_eq!(
            fit(&[1.0, 1.0], [(0, 5, 1.0)], &params),
            Err(EaseError::OutOfRange(0, 5, 2))
        );
        assert!(matches!(
            fit(
                &[1.0],
                [],
                &EaseParams {
                    lambda: 0.0,
                    ..params
                }
            ),
            Err(EaseError::BadLambda(_))
        ));
        // Counts no binary matrix can produce (a pair shared by more users than either item
        // has) make the matrix indefinite.
        assert!(matches!(
            fit(
                &[1.0, 1.0],
                [(1, 0, 50.0)],
                &EaseParams {
                    lambda: 1.0,
                    ..params
                }
            ),
            Err(EaseError::NotPositiveDefinite(_))
        ));
        assert_eq!(fit(&[], [], &params), Ok(EaseRows::default()));
    }
}
