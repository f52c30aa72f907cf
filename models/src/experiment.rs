//! A/B experiment assignment and significance tests.
//!
//! Assignment is a pure function of the experiment's salt and the user id, so it is stable
//! across restarts and machines: `bucket = u64::from_be_bytes(md5(salt ":" user_id)[0..8]) mod
//! 10000`, and the bucket range `[0, 10000)` is cut into consecutive slices, one per variant in
//! the order they are listed, sized by the variants' integer weights.
//!
//! Weights are integers > 0. When they sum to exactly 10000 a variant gets exactly `weight`
//! buckets. Otherwise they are scaled proportionally with the largest-remainder method: each
//! variant gets `floor(weight · 10000 / total)` buckets and the buckets left over (fewer than the
//! number of variants) go one each to the variants with the largest remainders, ties to the
//! variant listed first. So `50/30/20` means 5000/3000/2000 buckets and `1/1/1` means
//! 3334/3333/3333. A definition in which some variant would get no bucket at all is rejected.
//!
//! A variant may also carry recommendation overrides ([`HybridWeights`], [`DiversityOverride`]):
//! plain, validated data that the recommender applies to the users of that variant, so an
//! experiment can compare blends or diversity settings against the configured defaults.
//!
//! Results are compared with a pooled two-proportion z-test; the normal CDF comes from an
//! `erfc` accurate to about 1e-14 (see [`erfc`]).

use serde::{Deserialize, Serialize};

use crate::content::hybrid::validate_weights;
use crate::hash::md5_bucket;
use crate::ModelError;

/// Number of assignment buckets.
pub const BUCKETS: u32 = 10_000;
/// Most variants an experiment may have.
pub const MAX_VARIANTS: usize = 10;
/// Longest variant name, in bytes.
pub const MAX_NAME_LEN: usize = 32;
/// Longest salt, in bytes.
pub const MAX_SALT_LEN: usize = 128;

/// The bucket of `user_id` in the experiment salted with `salt`: the first 8 bytes of
/// `md5(salt + ":" + user_id)` read as a big-endian `u64`, modulo [`BUCKETS`].
pub fn bucket(salt: &str, user_id: &str) -> u32 {
    let bucket = md5_bucket(
        &[salt.as_bytes(), b":", user_id.as_bytes()],
        u64::from(BUCKETS),
    );
    // The remainder is < 10000, so the narrowing is lossless.
    bucket as u32
}

/// One variant as submitted by an operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct VariantDef {
    /// Name matching `[a-z0-9_-]{1,32}`, unique within the experiment.
    pub name: String,
    /// Relative weight, > 0.
    #[serde(deserialize_with = "crate::wire::integral::exact")]
    pub weight: u32,
    /// Hybrid blend for this variant's users; the configured blend when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hybrid_weights: Option<HybridWeights>,
    /// Diversity settings for this variant's users; the configured ones when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diversity: Option<DiversityOverride>,
}
crate::object_only!(VariantDef, serialize);

impl VariantDef {
    /// A variant without overrides.
    pub fn new(name: impl Into<String>, weight: u32) -> Self {
        Self {
            name: name.into(),
            weight,
            hybrid_weights: None,
            diversity: None,
        }
    }

    /// The recommendation overrides of this variant.
    pub fn overrides(&self) -> VariantOverrides {
        VariantOverrides {
            hybrid_weights: self.hybrid_weights,
            diversity: self.diversity,
        }
    }
}

/// Weights of the hybrid blend `(cf · CF + content · content) / (cf + content)` (see
/// [`crate::content::hybrid`]): finite, ≥ 0, not both 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct HybridWeights {
    pub cf: f64,
    pub content: f64,
}
crate::object_only!(HybridWeights, serialize);

/// Diversity settings of a variant; each absent field keeps the configured value. Caps follow
/// the server configuration's convention: `0` means no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct DiversityOverride {
    /// MMR trade-off in [0, 1]: 1 = relevance only, 0 = novelty only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda: Option<f64>,
    /// At most this many items of one type (0 = no cap).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::wire::integral::option"
    )]
    pub max_per_type: Option<usize>,
    /// At most this many items sharing a dominant tag (0 = no cap).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::wire::integral::option"
    )]
    pub max_per_tag: Option<usize>,
}
crate::object_only!(DiversityOverride, serialize);

/// Largest diversity cap a variant may set (a list is at most a few hundred items long).
pub const MAX_DIVERSITY_CAP: usize = 1000;

/// What a variant changes in the recommendations of its users; `None` fields keep the
/// configured behaviour.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VariantOverrides {
    pub hybrid_weights: Option<HybridWeights>,
    pub diversity: Option<DiversityOverride>,
}

impl VariantOverrides {
    /// Whether the variant changes nothing (a plain control).
    pub fn is_empty(&self) -> bool {
        self.hybrid_weights.is_none() && self.diversity.is_none()
    }
}

/// Checks a variant's overrides; the reason names the variant.
fn validate_overrides(v: &VariantDef) -> Result<(), ModelError> {
    if let Some(w) = &v.hybrid_weights {
        validate_weights(w.cf, w.content).map_err(|ModelError::InvalidInput { reason }| {
            invalid(format!("variant {}: {reason}", v.name))
        })?;
    }
    if let Some(d) = &v.diversity {
        if let Some(lambda) = d.lambda {
            if !(lambda.is_finite() && (0.0..=1.0).contains(&lambda)) {
                return Err(invalid(format!(
                    "variant {}: diversity lambda must be in [0, 1], got {lambda}",
                    v.name
                )));
            }
        }
        for (what, cap) in [
            ("max_per_type", d.max_per_type),
            ("max_per_tag", d.max_per_tag),
        ] {
            if cap.is_some_and(|c| c > MAX_DIVERSITY_CAP) {
                return Err(invalid(format!(
                    "variant {}: diversity {what} must be at most {MAX_DIVERSITY_CAP} (0 = no cap)",
                    v.name
                )));
            }
        }
    }
    Ok(())
}

/// An experiment definition as submitted (`POST /v1/experiments`), before validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct ExperimentDef {
    /// 1 to 10 variants, in bucket order.
    pub variants: Vec<VariantDef>,
    /// The control variant's name; the first variant when absent.
    #[serde(default)]
    pub control: Option<String>,
}
crate::object_only!(ExperimentDef, serialize);

fn invalid(reason: impl Into<String>) -> ModelError {
    ModelError::InvalidInput {
        reason: reason.into(),
    }
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Splits [`BUCKETS`] among `weights` by the largest-remainder method (see the module
/// documentation). `weights` must be non-empty and positive.
fn allocate(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let buckets = u64::from(BUCKETS);
    let mut shares: Vec<u64> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(u64, usize)> = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let quota = u64::from(w) * buckets;
        shares.push(quota / total);
        remainders.push((quota % total, i));
    }
    let given: u64 = shares.iter().sum();
    let left = buckets.saturating_sub(given) as usize;
    debug_assert!(
        left < weights.len().max(1),
        "largest remainder leaves < n buckets"
    );
    // Largest remainder first, earlier variant first on ties.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take(left) {
        shares[i] += 1;
    }
    shares.into_iter().map(|s| s as u32).collect()
}

/// A validated experiment: its salt, variants, control and bucket allocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    salt: String,
    variants: Vec<VariantDef>,
    control: usize,
    /// Buckets per variant, summing to [`BUCKETS`].
    buckets: Vec<u32>,
    /// Exclusive upper bound of each variant's bucket range.
    upper: Vec<u32>,
}

impl Experiment {
    /// Validates `def` and computes its allocation. Rules: the salt is 1 to 128 characters (usually
    /// the experiment id); 1 to 10 variants; names match `[a-z0-9_-]{1,32}` and are unique;
    /// weights are > 0 and each variant receives at least one bucket; `control`, when given,
    /// names one of the variants (exactly one control: that one, or the first variant);
    /// overrides are in range (hybrid weights finite, ≥ 0 and not both 0; diversity `lambda` in
    /// [0, 1]; caps at most [`MAX_DIVERSITY_CAP`]).
    pub fn new(salt: &str, def: &ExperimentDef) -> Result<Self, ModelError> {
        if salt.is_empty() || salt.chars().count() > MAX_SALT_LEN {
            return Err(invalid(format!(
                "experiment salt must be 1 to {MAX_SALT_LEN} characters"
            )));
        }
        let n = def.variants.len();
        if n == 0 || n > MAX_VARIANTS {
            return Err(invalid(format!(
                "an experiment needs 1 to {MAX_VARIANTS} variants, got {n}"
            )));
        }
        for (i, v) in def.variants.iter().enumerate() {
            if !valid_name(&v.name) {
                return Err(invalid(format!(
                    "variant {i}: name must match [a-z0-9_-]{{1,{MAX_NAME_LEN}}}"
                )));
            }
            if v.weight == 0 {
                return Err(invalid(format!("variant {}: weight must be > 0", v.name)));
            }
            validate_overrides(v)?;
            if def.variants[..i].iter().any(|o| o.name == v.name) {
                return Err(invalid(format!("variant {}: duplicate name", v.name)));
            }
        }
        let control = match &def.control {
            None => 0,
            Some(name) => def
                .variants
                .iter()
                .position(|v| &v.name == name)
                .ok_or_else(|| invalid("control must name one of the variants"))?,
        };
        let weights: Vec<u32> = def.variants.iter().map(|v| v.weight).collect();
        let buckets = allocate(&weights);
        if let Some((v, _)) = def.variants.iter().zip(&buckets).find(|(_, &b)| b == 0) {
            return Err(invalid(format!(
                "variant {}: weight too small to receive any of the {BUCKETS} buckets",
                v.name
            )));
        }
        let upper = buckets
            .iter()
            .scan(0u32, |acc, &b| {
                *acc += b;
                Some(*acc)
            })
            .collect::<Vec<_>>();
        debug_assert_eq!(upper.last().copied(), Some(BUCKETS));
        Ok(Self {
            salt: salt.to_string(),
            variants: def.variants.clone(),
            control,
            buckets,
            upper,
        })
    }

    /// The salt.
    pub fn salt(&self) -> &str {
        &self.salt
    }

    /// The variants, in bucket order.
    pub fn variants(&self) -> &[VariantDef] {
        &self.variants
    }

    /// Index of the control variant.
    pub fn control_index(&self) -> usize {
        self.control
    }

    /// Number of buckets of each variant (sums to [`BUCKETS`]).
    pub fn bucket_counts(&self) -> &[u32] {
        &self.buckets
    }

    /// Index of the variant owning `bucket` (buckets ≥ [`BUCKETS`] belong to the last variant).
    pub fn variant_for_bucket(&self, bucket: u32) -> usize {
        self.upper
            .partition_point(|&u| u <= bucket)
            .min(self.variants.len().saturating_sub(1))
    }

    /// Index of the variant of `user_id`.
    pub fn assign(&self, user_id: &str) -> usize {
        self.variant_for_bucket(bucket(&self.salt, user_id))
    }

    /// Name of the variant of `user_id`.
    pub fn assign_name(&self, user_id: &str) -> &str {
        self.variants
            .get(self.assign(user_id))
            .map_or("", |v| v.name.as_str())
    }
}

/// Result of [`two_proportion_z_test`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ZTest {
    /// Conversion rate of the control.
    pub control_rate: f64,
    /// Conversion rate of the treatment.
    pub treatment_rate: f64,
    /// `(treatment_rate − control_rate) / se` with the pooled standard error; positive when the
    /// treatment converts better.
    pub z: f64,
    /// Two-sided p-value `2 · (1 − Φ(|z|))`.
    pub p_value: f64,
}

impl ZTest {
    /// Whether the difference is significant at level `alpha` (e.g. 0.05).
    pub fn is_significant(&self, alpha: f64) -> bool {
        self.p_value < alpha
    }
}

/// Pooled two-proportion z-test of `successes / trials` of a control against a treatment.
///
/// Errors when a group has no trial or more successes than trials. When the pooled rate is 0
/// or 1 (no variance), `z = 0` and `p = 1`: the data show no difference.
pub fn two_proportion_z_test(
    control_successes: u64,
    control_trials: u64,
    treatment_successes: u64,
    treatment_trials: u64,
) -> Result<ZTest, ModelError> {
    if control_trials == 0 || treatment_trials == 0 {
        return Err(invalid("both groups need at least one trial"));
    }
    if control_successes > control_trials || treatment_successes > treatment_trials {
        return Err(invalid("successes cannot exceed trials"));
    }
    let (xc, nc) = (control_successes as f64, control_trials as f64);
    let (xt, nt) = (treatment_successes as f64, treatment_trials as f64);
    let (pc, pt) = (xc / nc, xt / nt);
    let pooled = (xc + xt) / (nc + nt);
    let se = (pooled * (1.0 - pooled) * (1.0 / nc + 1.0 / nt)).sqrt();
    let (z, p_value) = if se > 0.0 {
        let z = (pt - pc) / se;
        (z, two_sided_p_value(z))
    } else {
        (0.0, 1.0)
    };
    Ok(ZTest {
        control_rate: pc,
        treatment_rate: pt,
        z,
        p_value,
    })
}

/// Two-sided p-value of a standard normal statistic: `erfc(|z| / √2)`, in [0, 1].
pub fn two_sided_p_value(z: f64) -> f64 {
    if z.is_nan() {
        return 1.0;
    }
    erfc(z.abs() / std::f64::consts::SQRT_2).clamp(0.0, 1.0)
}

/// The standard normal CDF `Φ(x) = erfc(−x / √2) / 2`.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// The complementary error function, absolute error below 1e-14 everywhere (checked against
/// libm on a fine grid, far inside the required 1e-7).
///
/// For `|x| < 2.5` it sums the Maclaurin series of `erf` (alternating, at most a few dozen
/// terms, cancellation costs under 3 digits) and returns `1 − erf`; for `x ≥ 2.5` it evaluates
/// 60 levels of Laplace's continued fraction
/// `erfc(x) = e^(−x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …))))` bottom-up, a rational
/// function of `x` that has converged to double precision there; negative arguments use
/// `erfc(−x) = 2 − erfc(x)`.
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    let inv_sqrt_pi = std::f64::consts::FRAC_2_SQRT_PI / 2.0;
    if x < 2.5 {
        let x2 = x * x;
        let mut term = x; // (-1)^n x^(2n+1) / n!
        let mut sum = 0.0;
        for n in 0..100u32 {
            let c = term / f64::from(2 * n + 1);
            sum += c;
            if c.abs() <= 1e-17 * sum.abs() {
                break;
            }
            term *= -x2 / f64::from(n + 1);
        }
        return 1.0 - 2.0 * inv_sqrt_pi * sum;
    }
    if x > 27.0 {
        return 0.0; // e^(−729) underflows
    }
    let mut f = x;
    for k in (1..=60u32).rev() {
        f = x + f64::from(k) / 2.0 / f;
    }
    (-x * x).exp() * inv_sqrt_pi / f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(weights: &[(&str, u32)]) -> ExperimentDef {
        ExperimentDef {
            variants: weights
                .iter()
                .map(|&(name, weight)| VariantDef::new(name, weight))
                .collect(),
            control: None,
        }
    }

    #[test]
    fn bucket_matches_reference_md5() {
        // Reference values from Python: int.from_bytes(md5(s).digest()[:8], "big") % 10000.
        assert_eq!(bucket("exp1", "alice"), 1053);
        assert_eq!(bucket("exp1", "bob"), 686);
        assert_eq!(bucket("onboarding-v2", "user-42"), 103);
        assert_eq!(bucket("exp1", "alice"), bucket("exp1", "alice"));
    }

    #[test]
    fn allocation_scales_with_largest_remainder() {
        assert_eq!(allocate(&[5000, 3000, 2000]), vec![5000, 3000, 2000]);
        assert_eq!(allocate(&[50, 30, 20]), vec![5000, 3000, 2000]);
        assert_eq!(allocate(&[1, 1, 1]), vec![3334, 3333, 3333]);
        assert_eq!(allocate(&[1, 2]), vec![3333, 6667]);
        assert_eq!(allocate(&[7]), vec![10_000]);
        let big = allocate(&[u32::MAX; 10]);
        assert_eq!(big.iter().sum::<u32>(), BUCKETS);
    }

    #[test]
    fn variant_ranges_are_consecutive() {
        let e = Experiment::new("s", &def(&[("a", 1), ("b", 1), ("c", 2)])).unwrap();
        assert_eq!(e.bucket_counts(), &[2500, 2500, 5000]);
        assert_eq!(e.variant_for_bucket(0), 0);
        assert_eq!(e.variant_for_bucket(2499), 0);
        assert_eq!(e.variant_for_bucket(2500), 1);
        assert_eq!(e.variant_for_bucket(4999), 1);
        assert_eq!(e.variant_for_bucket(5000), 2);
        assert_eq!(e.variant_for_bucket(9999), 2);
        assert_eq!(e.variant_for_bucket(u32::MAX), 2);
    }

    #[test]
    fn observed_shares_match_weights() {
        for weights in [
            vec![("control", 50), ("treatment", 50)],
            vec![("control", 5000), ("b", 3000), ("c", 2000)],
            vec![("control", 1), ("b", 1), ("c", 1), ("d", 7)],
        ] {
            let e = Experiment::new("share-test", &def(&weights)).unwrap();
            let total: u32 = weights.iter().map(|w| w.1).sum();
            let mut counts = vec![0u32; weights.len()];
            let n = 100_000;
            for i in 0..n {
                counts[e.assign(&format!("user-{i}"))] += 1;
            }
            for (count, (name, w)) in counts.iter().zip(&weights) {
                let observed = f64::from(*count) / f64::from(n);
                let expected = f64::from(*w) / f64::from(total);
                assert!(
                    (observed - expected).abs() < 0.01,
                    "{name}: observed {observed}, expected {expected}"
                );
            }
        }
    }

    #[test]
    fn validation_rules() {
        let ok = def(&[("control", 1), ("new_ui-2", 1)]);
        let e = Experiment::new("exp", &ok).unwrap();
        assert_eq!(e.control_index(), 0);
        assert_eq!(e.salt(), "exp");
        assert_eq!(e.variants().len(), 2);
        assert!(["control", "new_ui-2"].contains(&e.assign_name("u1")));
        assert!(Experiment::new("exp", &def(&[("only", 1)])).is_ok());

        let named = ExperimentDef {
            control: Some("new_ui-2".into()),
            ..ok.clone()
        };
        assert_eq!(Experiment::new("exp", &named).unwrap().control_index(), 1);

        let err = |salt: &str, d: &ExperimentDef| Experiment::new(salt, d).is_err();
        assert!(err("", &ok));
        assert!(err(&"s".repeat(129), &ok));
        assert!(err("exp", &def(&[])));
        let eleven: Vec<(String, u32)> = (0..11).map(|i| (format!("v{i}"), 1)).collect();
        let eleven: Vec<(&str, u32)> = eleven.iter().map(|(n, w)| (n.as_str(), *w)).collect();
        assert!(err("exp", &def(&eleven)));
        assert!(!err("exp", &def(&eleven[..10])));
        assert!(err("exp", &def(&[("Control", 1)])));
        assert!(err("exp", &def(&[("a b", 1)])));
        assert!(err("exp", &def(&[("", 1)])));
        assert!(err("exp", &def(&[(&"x".repeat(33), 1)])));
        assert!(!err("exp", &def(&[(&"x".repeat(32), 1)])));
        assert!(err("exp", &def(&[("a", 1), ("a", 1)])));
        assert!(err("exp", &def(&[("a", 0), ("b", 1)])));
        assert!(err("exp", &def(&[("a", 1), ("b", 1_000_000)])));
        let bad_control = ExperimentDef {
            control: Some("missing".into()),
            ..ok
        };
        assert!(err("exp", &bad_control));
    }

    #[test]
    fn overrides_are_validated_and_exposed() {
        let with = |hybrid: Option<HybridWeights>, diversity: Option<DiversityOverride>| {
            let mut d = def(&[("control", 1), ("treatment", 1)]);
            d.variants[1].hybrid_weights = hybrid;
            d.variants[1].diversity = diversity;
            Experiment::new("exp", &d)
        };
        let hw = |cf, content| Some(HybridWeights { cf, content });
        let div = |lambda, max_per_type, max_per_tag| {
            Some(DiversityOverride {
                lambda,
                max_per_type,
                max_per_tag,
            })
        };
        let e = with(hw(0.2, 0.8), div(Some(0.5), Some(2), None)).unwrap();
        assert!(e.variants()[0].overrides().is_empty());
        let o = e.variants()[1].overrides();
        assert_eq!(o.hybrid_weights, hw(0.2, 0.8));
        assert_eq!(o.diversity.and_then(|d| d.lambda), Some(0.5));
        assert!(with(hw(0.0, 1.0), div(None, Some(0), Some(0))).is_ok());
        assert!(with(hw(0.0, 0.0), None).is_err());
        assert!(with(hw(-1.0, 1.0), None).is_err());
        assert!(with(hw(f64::NAN, 1.0), None).is_err());
        assert!(with(None, div(Some(1.5), None, None)).is_err());
        assert!(with(None, div(Some(f64::NAN), None, None)).is_err());
        assert!(with(None, div(None, Some(MAX_DIVERSITY_CAP + 1), None)).is_err());
        assert!(with(None, div(None, None, Some(MAX_DIVERSITY_CAP + 1))).is_err());
    }

    #[test]
    fn erfc_matches_reference_values() {
        // Reference values from libm (Python's math.erfc).
        let cases = [
            (0.0, 1.0),
            (0.1, 0.8875370839817152),
            (0.5, 0.4795001221869535),
            (1.0, 0.15729920705028513),
            (2.0, 0.004677734981047265),
            (2.5, 0.0004069520174449589),
            (3.0, 2.2090496998585438e-05),
            (4.0, 1.541725790028002e-08),
            (6.0, 2.1519736712498916e-17),
            (-0.5, 1.5204998778130465),
            (-2.0, 1.9953222650189528),
        ];
        for (x, want) in cases {
            let got = erfc(x);
            assert!((got - want).abs() < 1e-14, "erfc({x}) = {got}, want {want}");
        }
        assert_eq!(erfc(40.0), 0.0);
        assert_eq!(erfc(-40.0), 2.0);
        assert!(erfc(f64::NAN).is_nan());
        // Continuity at the switch between series and continued fraction.
        assert!((erfc(2.5 - 1e-12) - erfc(2.5)).abs() < 1e-14);
    }

    #[test]
    fn normal_cdf_and_p_values() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-15);
        assert!((normal_cdf(1.96) - 0.9750021048517795).abs() < 1e-12);
        assert!((normal_cdf(-1.5) - 0.06680720126885809).abs() < 1e-12);
        assert!((normal_cdf(1.0) - 0.8413447460685429).abs() < 1e-12);
        assert!((two_sided_p_value(1.96) - 0.0500).abs() < 1e-4);
        assert!((two_sided_p_value(-1.96) - 0.04999579029644087).abs() < 1e-12);
        assert!((two_sided_p_value(2.5758293035489) - 0.01).abs() < 1e-12);
        assert!((two_sided_p_value(3.0) - 0.0026997960632601913).abs() < 1e-12);
        assert_eq!(two_sided_p_value(0.0), 1.0);
        assert_eq!(two_sided_p_value(f64::NAN), 1.0);
    }

    #[test]
    fn z_test_known_values_and_errors() {
        let t = two_proportion_z_test(200, 1000, 250, 1000).unwrap();
        assert!((t.z - 2.677397763008329).abs() < 1e-12);
        assert!((t.p_value - 0.007419649261025693).abs() < 1e-12);
        assert!(t.is_significant(0.05));
        assert_eq!((t.control_rate, t.treatment_rate), (0.2, 0.25));
        let t = two_proportion_z_test(50, 1000, 45, 1200).unwrap();
        assert!((t.z + 1.436230428841623).abs() < 1e-12);
        assert!((t.p_value - 0.1509367831295561).abs() < 1e-12);
        assert!(!t.is_significant(0.05));
        let same = two_proportion_z_test(10, 100, 10, 100).unwrap();
        assert_eq!((same.z, same.p_value), (0.0, 1.0));
        let none = two_proportion_z_test(0, 100, 0, 50).unwrap();
        assert_eq!((none.z, none.p_value), (0.0, 1.0));
        assert!(two_proportion_z_test(0, 0, 1, 10).is_err());
        assert!(two_proportion_z_test(1, 10, 0, 0).is_err());
        assert!(two_proportion_z_test(11, 10, 1, 10).is_err());
    }
}
