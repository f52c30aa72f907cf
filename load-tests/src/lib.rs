//! `momentum-load`, the load generator of Momentum. It talks to a running server over HTTP only
//! (never through the server's crates), so what it measures is what a client sees: scenarios in
//! [`scenario`] drive the REST API from pre-built workloads ([`data`]) through keep-alive clients
//! ([`client`]) and turn HDR latency histograms into JSON reports ([`report`]). [`simulate`]
//! generates a synthetic goal-app population (CSV files with ground-truth outcomes, optionally
//! posted to a server) for training and evaluating the models. The mixed-workload scenarios build
//! their requests from [`workload`], keep per-second series in [`timeline`], read the server's
//! memory through [`scrape`]; every report gets an SVG [`chart`], [`compare`] puts two reports
//! side by side, and [`markdown`] renders reports for a README's performance section. The binary
//! is a thin wrapper over [`cli::run`].

pub mod chart;
pub mod cli;
pub mod client;
pub mod compare;
pub mod data;
pub mod error;
pub mod markdown;
pub mod report;
pub mod scenario;
pub mod scrape;
pub mod simulate;
pub mod timeline;
pub mod workload;

pub use error::LoadError;
