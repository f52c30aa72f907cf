//! `soak`: the mixed workload open loop at a modest fixed rate for a bounded duration (at most
//! [`MAX_SOAK`]), to see whether latency or memory drifts. Every `sample_every` the answers of
//! the interval are summarised (2xx throughput, p50/p99) and the server's resident memory is read
//! from `/metrics`; the report compares the first and last intervals and fits a least-squares
//! slope (per hour) through all of them.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::client::{ClientOptions, Target};
use crate::error::LoadError;
use crate::report::{self, Drift, Report, RssSample, SoakDetails, SoakInterval};
use crate::scenario::engine::{self, EngineConfig, Load, PhaseSpec, Plan};
use crate::scenario::mixed::base_report;
use crate::scenario::Stop;
use crate::timeline::TimelineReport;
use crate::workload::{MixOptions, Workload};

/// Longest soak the CLI accepts: every series of the report grows with the duration.
pub const MAX_SOAK: Duration = Duration::from_secs(24 * 3600);

/// Settings of a `soak` run (all of them end up in the report).
#[derive(Debug, Clone, Serialize)]
pub struct SoakConfig {
    pub target: Target,
    #[serde(flatten)]
    pub mix: MixOptions,
    /// Requests per second, open loop.
    pub rate: f64,
    #[serde(rename = "duration_s", serialize_with = "report::serialize_secs")]
    pub duration: Duration,
    /// Interval of the drift series and of the memory samples.
    #[serde(rename = "sample_every_s", serialize_with = "report::serialize_secs")]
    pub sample_every: Duration,
    pub max_inflight: usize,
    /// Connections opened before the clock starts.
    pub connections: usize,
    #[serde(flatten)]
    pub client: ClientOptions,
}

/// Runs the soak for `config.duration` (plus the time the last answers take).
pub async fn run(config: SoakConfig, stop: Stop) -> Result<Report, LoadError> {
    let workload = Arc::new(Workload::load(config.target.clone(), config.mix.clone())?);
    eprintln!(
        "soak: open loop at {} req/s for {:?}, sampling every {:?}, {} users, {} items -> {}",
        config.rate,
        config.duration,
        config.sample_every,
        workload.users(),
        workload.items(),
        config.target.as_str()
    );
    let engine = EngineConfig {
        target: config.target.clone(),
        client: config.client.clone(),
        load: Load::Open {
            plan: Plan::new(vec![PhaseSpec {
                name: "soak",
                rate: config.rate,
                duration: config.duration,
            }]),
            max_inflight: config.max_inflight,
            warm_connections: config.connections,
        },
        grace: Duration::ZERO,
        sample_every: Some(config.sample_every),
        interval: Some(config.sample_every),
    };
    let output = engine::run(&engine, workload, stop).await?;
    let mut report = base_report(
        "soak",
        &config,
        &config.target,
        &output,
        Some(config.rate),
        config.max_inflight,
    )?;
    let intervals = output
        .intervals
        .as_ref()
        .map(|t| intervals(t, &output.rss_samples))
        .unwrap_or_default();
    report.soak = Some(SoakDetails {
        sample_every_s: config.sample_every.as_secs_f64(),
        drift: drift(&intervals, config.sample_every.as_secs_f64()),
        intervals,
        rss_samples: output.rss_samples,
    });
    Ok(report)
}

/// The interval series: each bucket with its throughput and the first memory sample taken at or
/// after its end.
pub fn intervals(timeline: &TimelineReport, samples: &[RssSample]) -> Vec<SoakInterval> {
    timeline
        .buckets
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let span = timeline.span_s(i);
            let end = b.t_s + span;
            // Sample times are rounded to the millisecond.
            let rss_bytes = samples
                .iter()
                .find(|s| s.t_s >= end - 1e-3)
                .or(samples.last())
                .and_then(|s| s.rss_bytes);
            SoakInterval {
                t_s: b.t_s,
                span_s: round3(span),
                ok: b.ok,
                errors: b.errors,
                ok_per_s: if span > 0.0 {
                    round3(b.ok as f64 / span)
                } else {
                    0.0
                },
                p50_us: b.p50_us,
                p99_us: b.p99_us,
                rss_bytes,
            }
        })
        .collect()
}

/// First against last interval and slopes per hour. A trailing interval shorter than half of
/// `width_s` (the few answers after the schedule ended) is left out: its numbers are noise.
pub fn drift(intervals: &[SoakInterval], width_s: f64) -> Drift {
    let full: &[SoakInterval] = match intervals.split_last() {
        Some((last, rest)) if !rest.is_empty() && last.span_s < width_s / 2.0 => rest,
        _ => intervals,
    };
    let p99: Vec<(f64, f64)> = full
        .iter()
        .filter_map(|i| i.p99_us.map(|p| (i.t_s, p as f64)))
        .collect();
    let rss: Vec<(f64, f64)> = full
        .iter()
        .filter_map(|i| i.rss_bytes.map(|r| (i.t_s, r as f64)))
        .collect();
    let hours = |points: &[(f64, f64)]| -> Vec<(f64, f64)> {
        points.iter().map(|&(t, v)| (t / 3600.0, v)).collect()
    };
    Drift {
        first_p99_us: full.iter().find_map(|i| i.p99_us),
        last_p99_us: full.iter().rev().find_map(|i| i.p99_us),
        p99_slope_us_per_h: slope(&hours(&p99)).map(round3),
        first_rss_bytes: full.iter().find_map(|i| i.rss_bytes),
        last_rss_bytes: full.iter().rev().find_map(|i| i.rss_bytes),
        rss_slope_bytes_per_h: slope(&hours(&rss)).map(f64::round),
        first_ok_per_s: full.first().map(|i| i.ok_per_s),
        last_ok_per_s: full.last().map(|i| i.ok_per_s),
    }
}

/// Least-squares slope of `y` over `x`; `None` with fewer than two distinct `x`.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for &(x, y) in points {
        sxy += (x - mean_x) * (y - mean_y);
        sxx += (x - mean_x) * (x - mean_x);
    }
    (sxx > 0.0).then(|| sxy / sxx)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Human lines for stderr: the drift verdict.
pub fn describe(details: &SoakDetails) -> Vec<String> {
    let d = &details.drift;
    let us = |v: Option<u64>| v.map_or("n/a".to_owned(), report::fmt_us);
    let mib = |v: Option<u64>| {
        v.map_or("n/a".to_owned(), |b| {
            format!("{:.1} MiB", b as f64 / 1048576.0)
        })
    };
    vec![
        format!(
            "soak: {} intervals of {} s; p99 {} -> {} (slope {}/h); rss {} -> {} (slope {}/h); ok/s {} -> {}",
            details.intervals.len(),
            details.sample_every_s,
            us(d.first_p99_us),
            us(d.last_p99_us),
            d.p99_slope_us_per_h.map_or("n/a".to_owned(), |s| format!(
                "{}{}",
                if s < 0.0 { "-" } else { "+" },
                report::fmt_us(s.abs().round() as u64)
            )),
            mib(d.first_rss_bytes),
            mib(d.last_rss_bytes),
            d.rss_slope_bytes_per_h
                .map_or("n/a".to_owned(), |s| format!("{:+.1} MiB", s / 1048576.0)),
            d.first_ok_per_s.map_or("n/a".to_owned(), |v| format!("{v:.1}")),
            d.last_ok_per_s.map_or("n/a".to_owned(), |v| format!("{v:.1}")),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::Bucket;

    #[test]
    fn slope_of_a_line_and_degenerate_inputs() {
        let line: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 * i as f64 + 7.0)).collect();
        assert!((slope(&line).unwrap() - 3.0).abs() < 1e-9);
        let noisy = [(0.0, 1.0), (1.0, 3.0), (2.0, 2.0), (3.0, 4.0)];
        assert!((slope(&noisy).unwrap() - 0.8).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 5.0)]), None);
        assert_eq!(slope(&[(1.0, 5.0), (1.0, 6.0)]), None);
        assert_eq!(slope(&[]), None);
    }

    fn interval(t_s: f64, p99: Option<u64>, rss: Option<u64>) -> SoakInterval {
        SoakInterval {
            t_s,
            span_s: 10.0,
            ok: 100,
            errors: 0,
            ok_per_s: 10.0,
            p50_us: p99.map(|p| p / 2),
            p99_us: p99,
            rss_bytes: rss,
        }
    }

    #[test]
    fn drift_compares_ends_and_fits_per_hour() {
        // p99 grows 1 ms per 10 s interval = 360 ms/h; memory grows 1 MiB per interval.
        let mut series: Vec<SoakInterval> = (0..6)
            .map(|i| {
                interval(
                    10.0 * i as f64,
                    Some(5_000 + 1_000 * i),
                    Some((100 + i) << 20),
                )
            })
            .collect();
        series[2].rss_bytes = None;
        // A trailing sliver after the schedule ended: 1 answer in 0.01 s, a huge p99.
        series.push(SoakInterval {
            t_s: 60.0,
            span_s: 0.01,
            ok: 1,
            errors: 0,
            ok_per_s: 100.0,
            p50_us: Some(90_000),
            p99_us: Some(90_000),
            rss_bytes: Some(1 << 30),
        });
        let d = drift(&series, 10.0);
        assert_eq!((d.first_p99_us, d.last_p99_us), (Some(5_000), Some(10_000)));
        assert!(
            (d.p99_slope_us_per_h.unwrap() - 360_000.0).abs() < 1.0,
            "{d:?}"
        );
        assert_eq!(d.first_rss_bytes, Some(100 << 20));
        assert_eq!(d.last_rss_bytes, Some(105 << 20));
        assert!(
            (d.rss_slope_bytes_per_h.unwrap() - 360.0 * 1048576.0).abs() < 2.0,
            "{d:?}"
        );
        assert_eq!(
            (d.first_ok_per_s, d.last_ok_per_s),
            (Some(10.0), Some(10.0))
        );
        // Nothing measured: nothing claimed.
        let empty = drift(&[interval(0.0, None, None)], 10.0);
        assert_eq!((empty.p99_slope_us_per_h, empty.first_p99_us), (None, None));
        let line = describe(&SoakDetails {
            sample_every_s: 10.0,
            intervals: series,
            rss_samples: Vec::new(),
            drift: d,
        })
        .remove(0);
        assert!(
            line.contains("p99 5.00ms -> 10.00ms (slope +360.00ms/h)"),
            "{line}"
        );
        assert!(line.contains("(slope +360.0 MiB/h)"), "{line}");
    }

    #[test]
    fn intervals_take_rates_and_the_memory_at_their_end() {
        let timeline = TimelineReport {
            bucket_s: 10.0,
            duration_s: 25.0,
            buckets: vec![
                Bucket {
                    t_s: 0.0,
                    ok: 50,
                    errors: 2,
                    p50_us: Some(1_000),
                    p99_us: Some(4_000),
                },
                Bucket {
                    t_s: 10.0,
                    ok: 100,
                    ..Bucket::default()
                },
                Bucket {
                    t_s: 20.0,
                    ok: 25,
                    ..Bucket::default()
                },
            ],
        };
        let samples = [
            RssSample {
                t_s: 0.002,
                rss_bytes: Some(1),
            },
            RssSample {
                t_s: 10.004,
                rss_bytes: Some(2),
            },
            RssSample {
                t_s: 20.003,
                rss_bytes: None,
            },
            RssSample {
                t_s: 25.1,
                rss_bytes: Some(4),
            },
        ];
        let series = intervals(&timeline, &samples);
        assert_eq!(series.len(), 3);
        assert_eq!((series[0].ok_per_s, series[0].rss_bytes), (5.0, Some(2)));
        assert_eq!((series[1].ok_per_s, series[1].rss_bytes), (10.0, None));
        // The last interval spans 5 s and takes the sample after the run.
        assert_eq!((series[2].ok_per_s, series[2].rss_bytes), (5.0, Some(4)));
        assert_eq!((series[1].span_s, series[2].span_s), (10.0, 5.0));
        assert_eq!(series[0].p99_us, Some(4_000));
    }
}
