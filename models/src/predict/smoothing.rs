//! Exponential-smoothing forecasts for per-user activity and global metrics:
//! Holt's linear trend, and Holt–Winters with an additive weekly season when the series holds at
//! least two full seasons (14 daily points for the default period 7). Smoothing constants that
//! the caller does not fix are chosen by a grid search minimising the one-step-ahead squared
//! error over the series; forecasts of counts are clamped at 0.
//!
//! Recurrences (`y` the series, `m` the period, `h >= 1` steps ahead):
//! - Holt: `l_t = α·y_t + (1-α)(l_{t-1} + b_{t-1})`, `b_t = β(l_t - l_{t-1}) + (1-β)b_{t-1}`,
//!   forecast `l_n + h·b_n`. Start: `l_0 = y_0`, `b_0 = y_1 - y_0`; errors are summed from `t = 1`.
//! - Holt–Winters additive: `l_t = α(y_t - s_{t-m}) + (1-α)(l_{t-1} + b_{t-1})`, the same trend
//!   update, `s_t = γ(y_t - l_t) + (1-γ)s_{t-m}`, forecast `l_n + h·b_n + s_{n-m+1+(h-1) mod m}`.
//!   Start: `b` is the change between the first two seasons' means divided by `m`, `l` the first
//!   season's mean moved back to just before `t = 0`, `s` the first season's deviations from that
//!   line; errors are summed over the whole series.

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Candidate values of every smoothing constant searched when it is not given.
pub const GRID: [f64; 11] = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95];

/// The default season length: a week of daily values.
pub const WEEKLY_PERIOD: usize = 7;

/// Which model produced a forecast, with its constants.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum SmoothingMethod {
    /// Holt's linear trend.
    Holt {
        /// Level smoothing constant.
        alpha: f64,
        /// Trend smoothing constant.
        beta: f64,
    },
    /// Holt–Winters with additive seasonality.
    HoltWinters {
        /// Level smoothing constant.
        alpha: f64,
        /// Trend smoothing constant.
        beta: f64,
        /// Season smoothing constant.
        gamma: f64,
        /// Season length in steps.
        period: usize,
    },
}

/// Options of [`forecast_with`]; `None` constants are fitted by grid search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmoothingOptions {
    /// Level constant in `[0, 1]` (default: fitted).
    pub alpha: Option<f64>,
    /// Trend constant in `[0, 1]` (default: fitted).
    pub beta: Option<f64>,
    /// Season constant in `[0, 1]` (default: fitted).
    pub gamma: Option<f64>,
    /// Season length (default `Some(7)`); `None` always uses Holt. A season is modelled only
    /// when the series holds at least two full periods.
    pub period: Option<usize>,
    /// Clamp forecasts at 0, for counts (default `true`).
    pub non_negative: bool,
}

impl Default for SmoothingOptions {
    fn default() -> Self {
        Self {
            alpha: None,
            beta: None,
            gamma: None,
            period: Some(WEEKLY_PERIOD),
            non_negative: true,
        }
    }
}

/// A forecast and the fitted model behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    /// Forecasts for steps `1..=horizon` after the last observation.
    pub values: Vec<f64>,
    /// The model and its (given or fitted) constants.
    pub method: SmoothingMethod,
    /// Sum of squared one-step-ahead errors over the series with those constants.
    pub sse: f64,
    /// Final level `l_n`.
    pub level: f64,
    /// Final trend `b_n` (per step).
    pub trend: f64,
}

/// Forecasts `horizon` steps of a count series with the default options: weekly Holt–Winters
/// from 14 points on, Holt's trend before, fitted constants, clamped at 0.
pub fn forecast(series: &[f64], horizon: usize) -> Result<Forecast, ModelError> {
    forecast_with(series, horizon, &SmoothingOptions::default())
}

/// Forecasts `horizon` steps of `series` (non-empty, finite) with explicit options.
pub fn forecast_with(
    series: &[f64],
    horizon: usize,
    options: &SmoothingOptions,
) -> Result<Forecast, ModelError> {
    validate(series, options)?;
    let seasonal_period = options
        .period
        .filter(|&m| series.len() >= 2 * m)
        .filter(|&m| m >= 2);
    let mut fc = match seasonal_period {
        Some(period) => {
            let mut best: Option<(f64, f64, f64, Fit)> = None;
            for alpha in candidates(options.alpha) {
                for beta in candidates(options.beta) {
                    for gamma in candidates(options.gamma) {
                        let fit = holt_winters(series, period, alpha, beta, gamma);
                        if best.as_ref().is_none_or(|b| fit.sse < b.3.sse) {
                            best = Some((alpha, beta, gamma, fit));
                        }
                    }
                }
            }
            best.map(|(alpha, beta, gamma, fit)| {
                fit.into_forecast(
                    horizon,
                    SmoothingMethod::HoltWinters {
                        alpha,
                        beta,
                        gamma,
                        period,
                    },
                )
            })
        }
        None => {
            let mut best: Option<(f64, f64, Fit)> = None;
            for alpha in candidates(options.alpha) {
                for beta in candidates(options.beta) {
                    let fit = holt(series, alpha, beta);
                    if best.as_ref().is_none_or(|b| fit.sse < b.2.sse) {
                        best = Some((alpha, beta, fit));
                    }
                }
            }
            best.map(|(alpha, beta, fit)| {
                fit.into_forecast(horizon, SmoothingMethod::Holt { alpha, beta })
            })
        }
    }
    .ok_or_else(|| ModelError::InvalidInput {
        reason: "no smoothing constants to try".to_string(),
    })?;
    if options.non_negative {
        fc.values.iter_mut().for_each(|v| *v = v.max(0.0));
    }
    Ok(fc)
}

fn candidates(fixed: Option<f64>) -> Vec<f64> {
    fixed.map_or_else(|| GRID.to_vec(), |v| vec![v])
}

fn validate(series: &[f64], options: &SmoothingOptions) -> Result<(), ModelError> {
    let invalid = |reason: String| Err(ModelError::InvalidInput { reason });
    if series.is_empty() {
        return invalid("cannot forecast an empty series".to_string());
    }
    if let Some(i) = series.iter().position(|y| !y.is_finite()) {
        return invalid(format!("series value {i} is not a finite number"));
    }
    for (name, value) in [
        ("alpha", options.alpha),
        ("beta", options.beta),
        ("gamma", options.gamma),
    ] {
        if let Some(v) = value {
            if !(0.0..=1.0).contains(&v) {
                return invalid(format!("{name} must lie in [0, 1], got {v}"));
            }
        }
    }
    if options.period.is_some_and(|m| m < 2) {
        return invalid("a season needs a period of at least 2".to_string());
    }
    Ok(())
}

/// The state after running a model over a series.
#[derive(Debug, Clone)]
struct Fit {
    sse: f64,
    level: f64,
    trend: f64,
    /// Seasonal terms indexed by `t mod m` (empty for Holt).
    season: Vec<f64>,
    /// Length of the series (to index the season of future steps).
    n: usize,
}

impl Fit {
    fn into_forecast(self, horizon: usize, method: SmoothingMethod) -> Forecast {
        let m = self.season.len();
        let values = (1..=horizon)
            .map(|h| {
                let seasonal = if m == 0 {
                    0.0
                } else {
                    self.season[(self.n + h - 1) % m]
                };
                self.level + h as f64 * self.trend + seasonal
            })
            .collect();
        Forecast {
            values,
            method,
            sse: self.sse,
            level: self.level,
            trend: self.trend,
        }
    }
}

/// Holt's linear trend over a non-empty series.
fn holt(y: &[f64], alpha: f64, beta: f64) -> Fit {
    let mut level = y[0];
    let mut trend = if y.len() >= 2 { y[1] - y[0] } else { 0.0 };
    let mut sse = 0.0;
    for &obs in &y[1..] {
        let error = obs - (level + trend);
        sse += error * error;
        let new_level = alpha * obs + (1.0 - alpha) * (level + trend);
        trend = beta * (new_level - level) + (1.0 - beta) * trend;
        level = new_level;
    }
    Fit {
        sse,
        level,
        trend,
        season: Vec::new(),
        n: y.len(),
    }
}

/// Additive Holt–Winters over a series of at least two periods of length `m >= 2`.
fn holt_winters(y: &[f64], m: usize, alpha: f64, beta: f64, gamma: f64) -> Fit {
    debug_assert!(m >= 2 && y.len() >= 2 * m);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let first = mean(&y[..m]);
    let second = mean(&y[m..2 * m]);
    let mut trend = (second - first) / m as f64;
    // Level just before t = 0, such that level + (t + 1)·trend passes through the first
    // season's mean at its centre t = (m - 1) / 2.
    let mut level = first - trend * (m as f64 + 1.0) / 2.0;
    let mut season: Vec<f64> = (0..m)
        .map(|t| y[t] - (level + (t as f64 + 1.0) * trend))
        .collect();
    let mut sse = 0.0;
    for (t, &obs) in y.iter().enumerate() {
        let s = season[t % m];
        let error = obs - (level + trend + s);
        sse += error * error;
        let new_level = alpha * (obs - s) + (1.0 - alpha) * (level + trend);
        trend = beta * (new_level - level) + (1.0 - beta) * trend;
        season[t % m] = gamma * (obs - new_level) + (1.0 - gamma) * s;
        level = new_level;
    }
    Fit {
        sse,
        level,
        trend,
        season,
        n: y.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() < tol
    }

    #[test]
    fn holt_extrapolates_a_line_exactly() {
        let series: Vec<f64> = (0..10).map(|t| 3.0 + 2.0 * t as f64).collect();
        let fc = forecast(&series, 3).unwrap();
        assert!(matches!(fc.method, SmoothingMethod::Holt { .. }));
        assert!(fc.sse < 1e-18);
        for (h, v) in fc.values.iter().enumerate() {
            assert!(close(*v, 3.0 + 2.0 * (10 + h) as f64, 1e-9));
        }
    }

    #[test]
    fn holt_recurrence_by_hand() {
        // l0 = 1, b0 = 2; t=1: forecast 3, error 0, l = 3, b = 2;
        // t=2: forecast 5, y = 4, error -1, l = .5·4 + .5·5 = 4.5, b = .5·1.5 + .5·2 = 1.75.
        let options = SmoothingOptions {
            alpha: Some(0.5),
            beta: Some(0.5),
            ..SmoothingOptions::default()
        };
        let fc = forecast_with(&[1.0, 3.0, 4.0], 2, &options).unwrap();
        assert!(close(fc.sse, 1.0, 1e-12));
        assert!(close(fc.level, 4.5, 1e-12));
        assert!(close(fc.trend, 1.75, 1e-12));
        assert!(close(fc.values[0], 6.25, 1e-12));
        assert!(close(fc.values[1], 8.0, 1e-12));
    }

    #[test]
    fn grid_search_prefers_the_smoother_fit_on_noisy_data() {
        // A constant level with alternating noise: a small alpha wins over a large one.
        let series: Vec<f64> = (0..12)
            .map(|t| 10.0 + if t % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let fc = forecast_with(
            &series,
            1,
            &SmoothingOptions {
                period: None,
                ..SmoothingOptions::default()
            },
        )
        .unwrap();
        match fc.method {
            SmoothingMethod::Holt { alpha, .. } => assert!(alpha <= 0.5, "alpha {alpha}"),
            other => panic!("expected Holt, got {other:?}"),
        }
        for alpha in GRID {
            for beta in GRID {
                assert!(holt(&series, alpha, beta).sse >= fc.sse);
            }
        }
    }

    #[test]
    fn weekly_season_is_detected_and_continued() {
        // Weekends (days 5, 6) are busy; four weeks of history.
        let week = [2.0, 2.0, 3.0, 2.0, 3.0, 9.0, 10.0];
        let series: Vec<f64> = (0..28).map(|t| week[t % 7]).collect();
        let fc = forecast(&series, 7).unwrap();
        assert!(matches!(
            fc.method,
            SmoothingMethod::HoltWinters { period: 7, .. }
        ));
        for (h, v) in fc.values.iter().enumerate() {
            assert!(close(*v, week[(28 + h) % 7], 0.5), "step {h}: {v}");
        }
        // With fewer than two seasons the same data falls back to Holt.
        let short = forecast(&series[..13], 1).unwrap();
        assert!(matches!(short.method, SmoothingMethod::Holt { .. }));
    }

    #[test]
    fn seasonal_with_trend() {
        let series: Vec<f64> = (0..35)
            .map(|t| 20.0 + 0.5 * t as f64 + if t % 7 == 3 { 5.0 } else { 0.0 })
            .collect();
        let fc = forecast(&series, 7).unwrap();
        for (h, v) in fc.values.iter().enumerate() {
            let t = 35 + h;
            let expected = 20.0 + 0.5 * t as f64 + if t % 7 == 3 { 5.0 } else { 0.0 };
            assert!(close(*v, expected, 0.5), "step {h}: {v} vs {expected}");
        }
    }

    #[test]
    fn counts_are_clamped_at_zero() {
        let series = [10.0, 8.0, 6.0, 4.0, 2.0];
        let fc = forecast(&series, 5).unwrap();
        assert!(fc.values.iter().all(|&v| v >= 0.0));
        assert_eq!(fc.values[4], 0.0);
        let free = forecast_with(
            &series,
            5,
            &SmoothingOptions {
                non_negative: false,
                ..SmoothingOptions::default()
            },
        )
        .unwrap();
        assert!(free.values[4] < 0.0);
    }

    #[test]
    fn short_series_and_bad_input() {
        let one = forecast(&[4.0], 3).unwrap();
        assert_eq!(one.values, vec![4.0; 3]);
        assert!(forecast(&[1.0, 2.0], 0).unwrap().values.is_empty());
        assert!(forecast(&[], 1).is_err());
        assert!(forecast(&[1.0, f64::NAN], 1).is_err());
        let bad = SmoothingOptions {
            alpha: Some(1.5),
            ..SmoothingOptions::default()
        };
        assert!(forecast_with(&[1.0, 2.0], 1, &bad).is_err());
        let bad_period = SmoothingOptions {
            period: Some(1),
            ..SmoothingOptions::default()
        };
        assert!(forecast_with(&[1.0, 2.0], 1, &bad_period).is_err());
    }

    proptest! {
        #[test]
        fn forecasts_are_finite_and_non_negative(
            series in proptest::collection::vec(0.0f64..100.0, 1..40),
            horizon in 0usize..15,
        ) {
            let fc = forecast(&series, horizon).unwrap();
            prop_assert_eq!(fc.values.len(), horizon);
            prop_assert!(fc.values.iter().all(|v| v.is_finite() && *v >= 0.0));
            prop_assert!(fc.sse.is_finite() && fc.sse >= 0.0);
        }
    }
}
