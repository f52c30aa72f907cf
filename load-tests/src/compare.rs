//! `compare A.json B.json`: two reports side by side, per route (throughput, 2xx throughput,
//! p50, p95, p99, p99.9, errors) and for all routes together, with the ratio B/A (above 1 means
//! B is higher: more throughput, or slower). Reports of different layout versions are not
//! compared, and a file that is not a report says so.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::LoadError;
use crate::report::{self, Report, RouteReport, REPORT_VERSION};

/// Loads a report written by `--report`, checking that it is one this tool can read.
pub fn load(path: &Path) -> Result<Report, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::ReadReport {
        path: path.to_path_buf(),
        source,
    })?;
    let not_a_report = |message: String| LoadError::NotAReport {
        path: path.to_path_buf(),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| not_a_report(format!("not JSON: {e}")))?;
    let version = value
        .get("report_version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| not_a_report("no report_version field".to_owned()))?;
    if version != u64::from(REPORT_VERSION) {
        return Err(LoadError::ReportVersion {
            path: path.to_path_buf(),
            found: version,
            supported: REPORT_VERSION,
        });
    }
    serde_json::from_value(value).map_err(|e| not_a_report(e.to_string()))
}

/// One compared number.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub metric: &'static str,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// Latencies are shown as durations, the rest as numbers.
    pub latency: bool,
}

impl Row {
    /// `b / a`; `None` when either is missing or `a` is 0.
    pub fn ratio(&self) -> Option<f64> {
        match (self.a, self.b) {
            (Some(a), Some(b)) if a > 0.0 => Some(b / a),
            _ => None,
        }
    }
}

/// The rows of one route (or of all routes).
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub title: String,
    pub rows: Vec<Row>,
}

/// Two reports, compared.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub a: (PathBuf, String),
    pub b: (PathBuf, String),
    pub notes: Vec<String>,
    pub sections: Vec<Section>,
}

fn describe(report: &Report) -> String {
    format!(
        "{} ({} loop), {}, {:.2} s, {}{}",
        report.scenario,
        report.mode,
        report.started_at,
        report.duration_s,
        report.generator,
        if report.interrupted {
            ", interrupted"
        } else {
            ""
        }
    )
}

fn route_rows(a: Option<(&RouteReport, f64)>, b: Option<(&RouteReport, f64)>) -> Vec<Row> {
    let per_s = |r: Option<(&RouteReport, f64)>, count: fn(&RouteReport) -> u64| {
        r.map(|(route, secs)| {
            if secs > 0.0 {
                count(route) as f64 / secs
            } else {
                0.0
            }
        })
    };
    let ok = |route: &RouteReport| -> u64 {
        route
            .status_counts
            .iter()
            .filter(|(status, _)| status.starts_with('2'))
            .map(|(_, c)| c)
            .sum()
    };
    let latency = |r: Option<(&RouteReport, f64)>, pick: fn(&report::Percentiles) -> u64| {
        r.filter(|(route, _)| route.latency_us.count > 0)
            .map(|(route, _)| pick(&route.latency_us) as f64)
    };
    let row = |metric, a, b, latency| Row {
        metric,
        a,
        b,
        latency,
    };
    vec![
        row(
            "throughput (req/s)",
            per_s(a, |r| r.requests),
            per_s(b, |r| r.requests),
            false,
        ),
        row("2xx (req/s)", per_s(a, ok), per_s(b, ok), false),
        row("p50", latency(a, |p| p.p50), latency(b, |p| p.p50), true),
        row("p95", latency(a, |p| p.p95), latency(b, |p| p.p95), true),
        row("p99", latency(a, |p| p.p99), latency(b, |p| p.p99), true),
        row(
            "p99.9",
            latency(a, |p| p.p99_9),
            latency(b, |p| p.p99_9),
            true,
        ),
        row(
            "errors",
            a.map(|(r, _)| r.errors.values().sum::<u64>() as f64),
            b.map(|(r, _)| r.errors.values().sum::<u64>() as f64),
            false,
        ),
    ]
}

/// Compares two loaded reports.
pub fn compare(a_path: &Path, a: &Report, b_path: &Path, b: &Report) -> Comparison {
    let mut notes = Vec::new();
    if a.scenario != b.scenario || a.mode != b.mode {
        notes.push(format!(
            "note: different scenarios ({} {} vs {} {}): compare with care",
            a.scenario, a.mode, b.scenario, b.mode
        ));
    }
    let mut sections = vec![Section {
        title: "all routes".to_owned(),
        rows: vec![
            Row {
                metric: "throughput (req/s)",
                a: Some(a.throughput.requests_per_s),
                b: Some(b.throughput.requests_per_s),
                latency: false,
            },
            Row {
                metric: "2xx (req/s)",
                a: Some(a.throughput.ok_requests_per_s),
                b: Some(b.throughput.ok_requests_per_s),
                latency: false,
            },
            Row {
                metric: "errors",
                a: Some(a.error_count() as f64),
                b: Some(b.error_count() as f64),
                latency: false,
            },
        ],
    }];
    let routes: BTreeSet<&String> = a.routes.keys().chain(b.routes.keys()).collect();
    for route in routes {
        sections.push(Section {
            title: route.clone(),
            rows: route_rows(
                a.routes.get(route).map(|r| (r, a.duration_s)),
                b.routes.get(route).map(|r| (r, b.duration_s)),
            ),
        });
    }
    Comparison {
        a: (a_path.to_path_buf(), describe(a)),
        b: (b_path.to_path_buf(), describe(b)),
        notes,
        sections,
    }
}

fn cell(value: Option<f64>, latency: bool) -> String {
    match value {
        None => "—".to_owned(),
        Some(v) if latency => report::fmt_us(v.round() as u64),
        Some(v) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

impl Comparison {
    /// The table as text.
    pub fn render(&self) -> String {
        let mut out = format!(
            "A: {}: {}\nB: {}: {}\n",
            self.a.0.display(),
            self.a.1,
            self.b.0.display(),
            self.b.1
        );
        for note in &self.notes {
            out.push_str(note);
            out.push('\n');
        }
        out.push_str(&format!(
            "\n{:<26} {:>14} {:>14} {:>8}\n",
            "", "A", "B", "B/A"
        ));
        for section in &self.sections {
            out.push_str(&section.title);
            out.push('\n');
            for row in &section.rows {
                out.push_str(&format!(
                    "  {:<24} {:>14} {:>14} {:>8}\n",
                    row.metric,
                    cell(row.a, row.latency),
                    cell(row.b, row.latency),
                    row.ratio().map_or("—".to_owned(), |r| format!("{r:.3}"))
                ));
            }
        }
        out
    }
}

/// `compare A B`: loads both, checks they are comparable, returns the rendered table.
pub fn run(a_path: &Path, b_path: &Path) -> Result<String, LoadError> {
    let a = load(a_path)?;
    let b = load(b_path)?;
    if a.report_version != b.report_version {
        // Unreachable while `load` accepts one version only; kept for when it accepts more.
        return Err(LoadError::InvalidConfig {
            message: format!(
                "{} is report version {}, {} is version {}: not comparable",
                a_path.display(),
                a.report_version,
                b_path.display(),
                b.report_version
            ),
        });
    }
    Ok(compare(a_path, &a, b_path, &b).render())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Recorder, RunSummary};
    use std::time::{Duration, UNIX_EPOCH};

    const REC: &str = "GET /v1/users/{id}/recommendations";
    const EVENTS: &str = "POST /v1/events";

    fn report(latency_ms: u64, requests: u64, errors: u64, with_events: bool) -> Report {
        let mut rec = Recorder::new();
        for _ in 0..requests {
            rec.response(REC, 200, Duration::from_millis(latency_ms));
        }
        for _ in 0..errors {
            rec.response(REC, 503, Duration::from_micros(100));
        }
        if with_events {
            rec.response(EVENTS, 200, Duration::from_millis(4));
        }
        Report::new(RunSummary {
            scenario: "mixed",
            mode: "open",
            target: "http://h/",
            config: &serde_json::json!({}),
            started_at: UNIX_EPOCH,
            elapsed: Duration::from_secs(10),
            interrupted: false,
            recorder: &rec,
            timeline: None,
        })
        .unwrap()
    }

    #[test]
    fn ratios_are_b_over_a() {
        let a = report(2, 1000, 0, true);
        let b = report(3, 1500, 10, false);
        let c = compare(Path::new("a.json"), &a, Path::new("b.json"), &b);
        let section = |title: &str| c.sections.iter().find(|s| s.title == title).unwrap();
        let row = |title: &str, metric: &str| {
            section(title)
                .rows
                .iter()
                .find(|r| r.metric == metric)
                .unwrap()
                .clone()
        };
        let throughput = row(REC, "throughput (req/s)");
        assert_eq!((throughput.a, throughput.b), (Some(100.0), Some(151.0)));
        assert!((throughput.ratio().unwrap() - 1.51).abs() < 1e-9);
        let ok = row(REC, "2xx (req/s)");
        assert!((ok.ratio().unwrap() - 1.5).abs() < 1e-9);
        let p50 = row(REC, "p50");
        assert!((p50.ratio().unwrap() - 1.5).abs() < 0.01, "{p50:?}");
        // Errors from none to ten: no ratio.
        let errors = row(REC, "errors");
        assert_eq!(
            (errors.a, errors.b, errors.ratio()),
            (Some(0.0), Some(10.0), None)
        );
        // A route only A has: B is missing, no ratio.
        let events = row(EVENTS, "p99");
        assert_eq!((events.b, events.ratio()), (None, None));
        assert!(c.notes.is_empty());

        let text = c.render();
        assert!(text.starts_with("A: a.json: mixed (open loop)"), "{text}");
        assert!(text.contains(REC) && text.contains("all routes"), "{text}");
        let p99 = text
            .lines()
            .find(|l| l.trim_start().starts_with("p99 "))
            .unwrap();
        assert!(
            p99.contains("2.00ms") && p99.contains("3.00ms") && p99.contains("1.500"),
            "{p99}"
        );
    }

    #[test]
    fn refuses_non_reports_and_other_versions() {
        let dir = std::env::temp_dir();
        let file = |name: &str, text: &str| {
            let path = dir.join(format!(
                "momentum-load-compare-{}-{name}",
                std::process::id()
            ));
            std::fs::write(&path, text).unwrap();
            path
        };
        let good = file("good.json", &report(2, 10, 0, false).to_json().unwrap());
        let other = report(2, 10, 0, false);
        let mut future = serde_json::to_value(&other).unwrap();
        future["report_version"] = serde_json::json!(REPORT_VERSION + 1);
        let future = file("future.json", &future.to_string());
        let csv = file("data.csv", "user_id,item_id\n1,2\n");
        let json = file("other.json", r#"{"hello": 1}"#);
        let broken = file("broken.json", r#"{"report_version": 1, "scenario": 5}"#);

        let text = run(&good, &good).unwrap();
        assert!(text.contains("1.000"), "{text}");
        let message = |a: &Path, b: &Path| run(a, b).unwrap_err().to_string();
        assert!(
            message(&good, &future).contains("version 2"),
            "{}",
            message(&good, &future)
        );
        assert!(message(&csv, &good).contains("not a momentum-load report"));
        assert!(message(&good, &json).contains("no report_version"));
        assert!(message(&broken, &good).contains("not a momentum-load report"));
        assert!(message(&good, &dir.join("missing-momentum-load.json")).contains("cannot read"));
        for path in [good, future, csv, json, broken] {
            std::fs::remove_file(path).ok();
        }
    }
}
