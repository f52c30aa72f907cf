//! The one error type of the load generator. Everything that stops a run before or after the
//! timed part (bad flags, unreadable data, an unreachable or never-ready target, a report that
//! cannot be written) is a [`LoadError`]. Failures *during* the timed run (timeouts, 5xx, refused
//! connections) are not errors of the tool: they are measurements and end up in the report.

use std::path::PathBuf;
use std::time::Duration;

/// Why a load-generator run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A flag value is out of range or inconsistent with another flag.
    #[error("invalid configuration: {message}")]
    InvalidConfig { message: String },

    /// The `--target` URL cannot be used.
    #[error("invalid target {target:?}: {message}")]
    InvalidTarget { target: String, message: String },

    /// A data file could not be opened or is not valid CSV.
    #[error("cannot read {path}: {source}")]
    ReadData {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },

    /// A CSV row parsed as CSV but not as a rating.
    #[error("{path}: line {line}: {message}")]
    InvalidRow {
        path: PathBuf,
        line: u64,
        message: String,
    },

    /// A data file holds no usable rows.
    #[error("{path}: no data rows")]
    EmptyData { path: PathBuf },

    /// The HTTP client could not be built (bad TLS/proxy settings and the like).
    #[error("cannot build the HTTP client: {source}")]
    Client {
        #[source]
        source: reqwest::Error,
    },

    /// `GET /readyz` did not answer 200 within `--ready-timeout`.
    #[error("target not ready after {waited:.1?} ({url}): {last}")]
    NotReady {
        url: String,
        waited: Duration,
        last: String,
    },

    /// A request body or the report could not be serialised.
    #[error("cannot serialise {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    /// The report file could not be written.
    #[error("cannot write report {path}: {source}")]
    WriteReport {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The SVG chart beside the report could not be drawn or written.
    #[error("cannot write chart {path}: {message}")]
    WriteChart { path: PathBuf, message: String },

    /// A report given to `compare` could not be read.
    #[error("cannot read report {path}: {source}")]
    ReadReport {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file given to `compare` is not a report.
    #[error("{path} is not a momentum-load report: {message}")]
    NotAReport { path: PathBuf, message: String },

    /// A report of another layout version.
    #[error("{path} is report version {found}; this momentum-load reads version {supported} only")]
    ReportVersion {
        path: PathBuf,
        found: u64,
        supported: u32,
    },

    /// `overload --check`: the run completed (report written) but a check failed.
    #[error("checks failed: {failed}")]
    ChecksFailed { failed: String },

    /// Per-worker latency histograms could not be merged.
    #[error("cannot merge latency histograms: {message}")]
    Histogram { message: String },

    /// A worker task panicked or was cancelled.
    #[error("load worker failed: {message}")]
    Worker { message: String },
}
