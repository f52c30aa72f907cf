//! EASE build time and memory on a synthetic catalogue.
//!
//! ```sh
//! cargo run --release -p momentum-models --example ease_bench -- ITEMS [USERS] [PER_USER]
//! ```
//!
//! Users pick `PER_USER` items with a Zipf-like popularity skew; the Gram matrix is counted
//! sparsely, then fitted. Prints the fit's wall time, the process's peak resident memory above
//! what it held before the fit, and that as a multiple of one dense `n × n` matrix of `f64`.

use std::time::Instant;

use momentum_models::ease::{fit, EaseParams};
use rand::{Rng, SeedableRng};

/// (VmRSS, VmHWM) of this process in bytes, from `/proc/self/status`.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let items = args.first().copied().unwrap_or(1682);
    let users = args.get(1).copied().unwrap_or(items * 2);
    let per_user = args.get(2).copied().unwrap_or(40).min(items);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut diag = vec![0f64; items];
    let mut pairs: pair_counts::PairCounts = pair_counts::PairCounts::default();
    let mut chosen = Vec::with_capacity(per_user);
    for _ in 0..users {
        chosen.clear();
        while chosen.len() < per_user {
            // Popularity skew: item ⌊n·u²⌋ for uniform u favours low indices.
            let u: f64 = rng.gen();
            let item = ((u * u) * items as f64) as usize % items;
            if !chosen.contains(&item) {
                chosen.push(item);
            }
        }
        for (a, &i) in chosen.iter().enumerate() {
            diag[i] += 1.0;
            for &j in &chosen[..a] {
                pairs.add(i.max(j), i.min(j));
            }
        }
    }
    let pairs: Vec<(usize, usize, f64)> = pairs.into_vec();
    let stored = pairs.len();
    let (before, _) = memory();
    let started = Instant::now();
    let model = fit(
        &diag,
        pairs,
        &EaseParams {
            lambda: 300.0,
            neighbours: 400,
            threads: 0,
        },
    )
    .expect("fit");
    let seconds = started.elapsed().as_secs_f64();
    let (_, peak) = memory();
    let dense = (items * items * 8) as f64;
    let above = peak.saturating_sub(before) as f64;
    println!(
        "items {items}, users {users}, {per_user} items per user, {stored} item pairs: \
         fit {seconds:.2} s, peak memory above the start of the fit {:.0} MiB = {:.2} × the dense matrix ({:.0} MiB), {} rows",
        above / 1048576.0,
        above / dense,
        dense / 1048576.0,
        model.rows.len()
    );
}

/// Pair counts keyed by `i · 2³² + j`.
mod pair_counts {
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct PairCounts(HashMap<u64, u32>);

    impl PairCounts {
        pub fn add(&mut self, i: usize, j: usize) {
            *self.0.entry(((i as u64) << 32) | j as u64).or_insert(0) += 1;
        }

        pub fn into_vec(self) -> Vec<(usize, usize, f64)> {
            self.0
                .into_iter()
                .map(|(k, c)| ((k >> 32) as usize, (k & 0xffff_ffff) as usize, f64::from(c)))
                .collect()
        }
    }
}
