//! The SVG chart written beside every JSON report (`run.json` → `run.svg`), drawn from the
//! report alone: latency of 2xx answers per second (p50 and p99, log scale, ms), throughput per
//! second (2xx and other answers), and the server's resident memory when the run sampled it.
//! `overload` phase boundaries are vertical lines across every panel. Seconds without a 2xx
//! answer leave a gap in the latency lines rather than a misleading zero.
//!
//! plotters with only its SVG backend: text is written as SVG `<text>` and laid out by an
//! estimate, so no font files or C libraries are needed. Runs longer than [`MAX_POINTS`] seconds
//! are drawn from groups of consecutive seconds (throughput averaged, p50 averaged, p99 the
//! group's maximum), so the file stays small; the JSON keeps every second.

use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::LoadError;
use crate::report::Report;
use crate::timeline::TimelineReport;

/// Most points per line.
pub const MAX_POINTS: usize = 2000;

const WIDTH: u32 = 1200;
const PANEL_HEIGHT: u32 = 300;
const RSS_COLOR: RGBColor = RGBColor(0x8B, 0x45, 0x13);

/// One drawn point of the series (a second, or a group of seconds).
#[derive(Debug, Clone, PartialEq)]
struct Point {
    t_s: f64,
    ok_per_s: f64,
    errors_per_s: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

/// The timeline as at most `max_points` points.
fn points(timeline: &TimelineReport, max_points: usize) -> Vec<Point> {
    let n = timeline.buckets.len();
    let group = n.div_ceil(max_points.max(1)).max(1);
    (0..n)
        .step_by(group)
        .map(|first| {
            let range = first..(first + group).min(n);
            let buckets = &timeline.buckets[range.clone()];
            let span: f64 = range.map(|i| timeline.span_s(i)).sum();
            let per_s = |count: u64| if span > 0.0 { count as f64 / span } else { 0.0 };
            let p50: Vec<f64> = buckets.iter().filter_map(|b| b.p50_us).map(ms).collect();
            Point {
                t_s: buckets[0].t_s,
                ok_per_s: per_s(buckets.iter().map(|b| b.ok).sum()),
                errors_per_s: per_s(buckets.iter().map(|b| b.errors).sum()),
                p50_ms: (!p50.is_empty()).then(|| p50.iter().sum::<f64>() / p50.len() as f64),
                p99_ms: buckets.iter().filter_map(|b| b.p99_us).max().map(ms),
            }
        })
        .collect()
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Runs of consecutive points that have a value (a gap ends a run).
fn segments(points: &[Point], value: impl Fn(&Point) -> Option<f64>) -> Vec<Vec<(f64, f64)>> {
    let mut runs = Vec::new();
    let mut current = Vec::new();
    for p in points {
        match value(p) {
            Some(v) => current.push((p.t_s, v)),
            None if !current.is_empty() => runs.push(std::mem::take(&mut current)),
            None => {}
        }
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

/// `report.json` → `report.svg`.
pub fn chart_path(report_path: &Path) -> std::path::PathBuf {
    report_path.with_extension("svg")
}

/// Writes the chart of `report` to `path`.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), LoadError> {
    draw(report, path).map_err(|message| LoadError::WriteChart {
        path: path.to_path_buf(),
        message,
    })
}

fn draw(report: &Report, path: &Path) -> Result<(), String> {
    let empty = TimelineReport::default();
    let timeline = report.timeline.as_ref().unwrap_or(&empty);
    let pts = points(timeline, MAX_POINTS);
    let rss: Vec<(f64, f64)> = rss_samples(report)
        .into_iter()
        .filter_map(|(t, b)| b.map(|b| (t, b as f64 / 1048576.0)))
        .collect();
    let panels = if rss.is_empty() { 2 } else { 3 };
    let root = SVGBackend::new(path, (WIDTH, PANEL_HEIGHT * panels + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let title = format!(
        "momentum-load {} ({} loop) at {}, {}",
        report.scenario, report.mode, report.target, report.started_at
    );
    let root = root
        .titled(&title, ("sans-serif", 18))
        .map_err(|e| e.to_string())?;
    let areas = root.split_evenly((panels as usize, 1));
    let end_s = timeline
        .duration_s
        .max(report.duration_s)
        .max(pts.last().map_or(0.0, |p| p.t_s + timeline.bucket_s))
        .max(1.0);
    let x = 0.0..end_s;
    let phases: Vec<(f64, String)> = report
        .overload
        .as_ref()
        .map(|o| {
            o.phases
                .iter()
                .map(|p| (p.start_s, p.name.clone()))
                .collect()
        })
        .unwrap_or_default();

    // Latency, log scale.
    let values: Vec<f64> = pts
        .iter()
        .flat_map(|p| [p.p50_ms, p.p99_ms])
        .flatten()
        .filter(|v| *v > 0.0)
        .collect();
    let (low, high) = match (
        values.iter().copied().reduce(f64::min),
        values.iter().copied().reduce(f64::max),
    ) {
        (Some(low), Some(high)) => (low * 0.8, high * 1.25),
        _ => (0.1, 10.0),
    };
    let lines = [
        (
            "p50 (2xx)",
            BLUE,
            segments(&pts, |p| p.p50_ms.filter(|v| *v > 0.0)),
        ),
        (
            "p99 (2xx)",
            RED,
            segments(&pts, |p| p.p99_ms.filter(|v| *v > 0.0)),
        ),
    ];
    panel(
        &areas[0],
        "latency per second (ms, log scale)",
        x.clone(),
        (low..high)
            .log_scale()
            .with_key_points(log_ticks(low, high)),
        &lines,
        &phases,
    )?;

    // Throughput.
    let top = pts
        .iter()
        .map(|p| p.ok_per_s.max(p.errors_per_s))
        .fold(1.0, f64::max)
        * 1.1;
    let lines = [
        ("2xx/s", GREEN, segments(&pts, |p| Some(p.ok_per_s))),
        ("other/s", MAGENTA, segments(&pts, |p| Some(p.errors_per_s))),
    ];
    panel(
        &areas[1],
        "answers per second",
        x.clone(),
        0.0..top,
        &lines,
        &phases,
    )?;

    if !rss.is_empty() {
        let (low, high) = rss.iter().fold((f64::MAX, f64::MIN), |(l, h), (_, v)| {
            (l.min(*v), h.max(*v))
        });
        let pad = ((high - low) * 0.1).max(1.0);
        let lines = [("server RSS (MiB)", RSS_COLOR, vec![rss])];
        panel(
            &areas[2],
            "server resident memory (MiB)",
            x,
            (low - pad).max(0.0)..high + pad,
            &lines,
            &phases,
        )?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Memory samples of the run: soak and overload keep them.
fn rss_samples(report: &Report) -> Vec<(f64, Option<u64>)> {
    if let Some(soak) = &report.soak {
        return soak
            .rss_samples
            .iter()
            .map(|s| (s.t_s, s.rss_bytes))
            .collect();
    }
    report
        .overload
        .as_ref()
        .map(|o| {
            o.phases
                .iter()
                .flat_map(|p| p.rss_samples.iter().map(|s| (s.t_s, s.rss_bytes)))
                .collect()
        })
        .unwrap_or_default()
}

type Line = (&'static str, RGBColor, Vec<Vec<(f64, f64)>>);

/// Tick values of a log axis from `low` to `high`: 1, 2, 5 times the powers of ten in range, or
/// every multiple 1..9 when that gives fewer than four ticks (a range within a decade or two).
fn log_ticks(low: f64, high: f64) -> Vec<f64> {
    if !(low > 0.0 && high > low && high.is_finite()) {
        return Vec::new();
    }
    let ticks = |multiples: &[f64]| -> Vec<f64> {
        // Small and bounded: the exponents of a latency range in ms (µs to hours).
        let (first, last) = (low.log10().floor() as i32, high.log10().ceil() as i32);
        (first..=last)
            .flat_map(|e| multiples.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| (low..=high).contains(v))
            .collect()
    };
    let coarse = ticks(&[1.0, 2.0, 5.0]);
    if coarse.len() >= 4 {
        coarse
    } else {
        ticks(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    }
}

/// An axis label without trailing zeros: `10`, `2.5`, `0.125`.
fn number(v: f64) -> String {
    let text = format!("{v:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// One panel: time on x, `y` as given, the lines (each possibly in several segments) with a
/// legend, and the phase boundaries.
fn panel<Y>(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    x: Range<f64>,
    y: Y,
    lines: &[Line],
    phases: &[(f64, String)],
) -> Result<(), String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 14))
        .margin(8)
        .margin_right(28)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .x_labels(12)
        .y_labels(6)
        .x_label_formatter(&|v| number(*v))
        .y_label_formatter(&|v| number(*v))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| e.to_string())?;
    let (y_low, y_high) = {
        let range = chart.y_range();
        (range.start, range.end)
    };
    for (t, name) in phases.iter().filter(|(t, _)| *t > 0.0) {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(*t, y_low), (*t, y_high)],
                BLACK.mix(0.5).stroke_width(1),
            )))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(std::iter::once(Text::new(
                name.clone(),
                (*t, y_high),
                ("sans-serif", 12),
            )))
            .map_err(|e| e.to_string())?;
    }
    for (label, color, runs) in lines {
        let color = *color;
        for (i, run) in runs.iter().enumerate() {
            let series = chart
                .draw_series(LineSeries::new(run.iter().copied(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?;
            if i == 0 {
                series.label(*label).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            }
        }
    }
    if lines.iter().any(|(_, _, runs)| !runs.is_empty()) {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{OverloadDetails, PhaseReport, Recorder, RssSample, RunSummary};
    use crate::timeline::Bucket;
    use std::time::{Duration, UNIX_EPOCH};

    fn timeline(seconds: usize) -> TimelineReport {
        TimelineReport {
            bucket_s: 1.0,
            duration_s: seconds as f64,
            buckets: (0..seconds)
                .map(|i| Bucket {
                    t_s: i as f64,
                    ok: 100 + i as u64,
                    errors: (i % 7 == 0) as u64 * 30,
                    // Second 3 had no 2xx latency: a gap.
                    p50_us: (i != 3).then_some(1_000 + 10 * i as u64),
                    p99_us: (i != 3).then_some(9_000 + 100 * i as u64),
                })
                .collect(),
        }
    }

    fn report(seconds: usize) -> Report {
        Report::new(RunSummary {
            scenario: "overload",
            mode: "open",
            target: "http://127.0.0.1:8080/",
            config: &serde_json::json!({}),
            started_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            elapsed: Duration::from_secs(seconds as u64),
            interrupted: false,
            recorder: &Recorder::new(),
            timeline: Some(timeline(seconds)),
        })
        .unwrap()
    }

    fn temp_svg(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "momentum-load-chart-{}-{name}.svg",
            std::process::id()
        ))
    }

    #[test]
    fn chart_is_svg_with_every_series_and_phase() {
        let mut report = report(30);
        let phase = |name: &str, start_s: f64, rss: u64| PhaseReport {
            name: name.to_owned(),
            start_s,
            rss_samples: vec![RssSample {
                t_s: start_s + 1.0,
                rss_bytes: Some(rss << 20),
            }],
            ..PhaseReport::default()
        };
        report.overload = Some(OverloadDetails {
            phases: vec![
                phase("warmup", 0.0, 100),
                phase("overload", 10.0, 140),
                phase("recovery", 20.0, 120),
            ],
            ..OverloadDetails::default()
        });
        let path = temp_svg("overload");
        write_svg(&report, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert!(
            svg.trim_start().starts_with("<svg"),
            "{}",
            &svg[..80.min(svg.len())]
        );
        assert!(svg.trim_end().ends_with("</svg>"));
        for text in [
            "p50 (2xx)",
            "p99 (2xx)",
            "2xx/s",
            "other/s",
            "server RSS (MiB)",
        ] {
            assert!(svg.contains(text), "missing {text}");
        }
        // Phase names label the boundaries (not the first phase, which starts at 0).
        assert!(svg.contains(">\noverload\n</text>") && svg.contains(">\nrecovery\n</text>"));
        assert!(!svg.contains(">\nwarmup\n</text>"));
        // Lines by colour, each with its legend sample: p50 and p99 are cut in two by the gap.
        let lines = |color: &str| {
            svg.matches(&format!("stroke=\"{color}\" stroke-width=\"2\""))
                .count()
        };
        assert_eq!(lines("#0000FF"), 2 + 1, "p50");
        assert_eq!(lines("#FF0000"), 2 + 1, "p99");
        assert_eq!(lines("#00FF00"), 1 + 1, "2xx/s");
        assert_eq!(lines("#FF00FF"), 1 + 1, "other/s");
        assert_eq!(lines("#8B4513"), 1 + 1, "rss");
        // Two phase boundaries in each of the three panels.
        assert_eq!(svg.matches("opacity=\"0.5\" stroke=\"#000000\"").count(), 6);
    }

    #[test]
    fn long_runs_are_grouped_and_empty_runs_still_draw() {
        let t = timeline(4500);
        let pts = points(&t, 2000);
        assert_eq!(pts.len(), 1500);
        assert_eq!(pts[1].t_s, 3.0);
        // Group 1 holds seconds 3..6: second 3 has no latency, max p99 of 4 and 5.
        assert_eq!(pts[1].p99_ms, Some(9.5));
        assert_eq!(pts[1].ok_per_s, (103 + 104 + 105) as f64 / 3.0);
        assert_eq!(points(&t, 10_000).len(), 4500);
        assert_eq!(segments(&points(&timeline(10), 100), |p| p.p50_ms).len(), 2);

        let mut empty = report(0);
        empty.timeline = None;
        let path = temp_svg("empty");
        write_svg(&empty, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert!(svg.contains("<svg") && svg.contains("latency per second"));
        assert_eq!(
            chart_path(Path::new("out/run.json")),
            Path::new("out/run.svg")
        );
        assert_eq!(chart_path(Path::new("run")), Path::new("run.svg"));
        assert_eq!(
            [number(10.0), number(2.5), number(0.125), number(-0.0)],
            ["10", "2.5", "0.125", "0"]
        );
        assert_eq!(
            log_ticks(0.08, 600.0),
            [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]
        );
        assert_eq!(
            log_ticks(35.0, 260.0),
            [40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 200.0]
        );
        assert!(log_ticks(0.0, 1.0).is_empty());
    }
}
