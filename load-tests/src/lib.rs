//! `momentum-load`, the load generator of Momentum. It talks to a running server over HTTP only
//! (never through the server's crates), so what it measures is what a client sees: scenarios in
//! [`scenario`] drive the REST API from pre-built workloads ([`data`]) through keep-alive clients
//! ([`client`]) and turn HDR latency histograms into JSON reports ([`report`]). [`simulate`]
//! generates a synthetic goal-app population (CSV files with ground-truth outcomes, optionally
//! posted to a server) for training and evaluating the models. The binary is a
//! thin wrapper over [`cli::run`]; tests and future tools (compare, charts) use the library.

pub mod cli;
pub mod client;
pub mod data;
pub mod error;
pub mod report;
pub mod scenario;
pub mod simulate;

pub use error::LoadError;
