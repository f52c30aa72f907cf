//! `mixed`: the production-like request mix (by default 70 % recommendations, 25 % small event
//! batches, 5 % success and churn predictions; see [`crate::workload`]) open loop at `--rate`,
//! or closed loop over `--connections` without it. Every route is measured on its own; the
//! prediction routes answer `503 model_not_ready` or `404` before a model is trained, which is
//! counted by status like any other answer. Also the shared tail of `soak` and `overload`:
//! turning the engine's measurements into the common part of a report.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::client::{ClientOptions, Target};
use crate::error::LoadError;
use crate::report::{self, OpenLoopDetails, Report, RunSummary};
use crate::scenario::engine::{self, EngineConfig, EngineOutput, Load, PhaseSpec, Plan};
use crate::scenario::Stop;
use crate::workload::{MixOptions, Workload};

/// Settings of a `mixed` run (all of them end up in the report).
#[derive(Debug, Clone, Serialize)]
pub struct MixedConfig {
    pub target: Target,
    #[serde(flatten)]
    pub mix: MixOptions,
    /// Requests per second (open loop); `None` is closed loop.
    pub rate: Option<f64>,
    /// Closed loop: workers; open loop: connections opened before the clock starts.
    pub connections: usize,
    /// Open loop: most outstanding requests; beyond, due requests are `client_dropped`.
    pub max_inflight: usize,
    #[serde(rename = "duration_s", serialize_with = "report::serialize_secs")]
    pub duration: Duration,
    #[serde(flatten)]
    pub client: ClientOptions,
}

/// Runs the mix for `config.duration` (open loop: plus the time the last answers take).
pub async fn run(config: MixedConfig, stop: Stop) -> Result<Report, LoadError> {
    let workload = Arc::new(Workload::load(config.target.clone(), config.mix.clone())?);
    let load = match config.rate {
        Some(rate) => Load::Open {
            plan: Plan::new(vec![PhaseSpec {
                name: "mixed",
                rate,
                duration: config.duration,
            }]),
            max_inflight: config.max_inflight,
            warm_connections: config.connections,
        },
        None => Load::Closed {
            connections: config.connections,
            duration: config.duration,
        },
    };
    eprintln!(
        "mixed: {} for {:?}, {} users, {} items -> {}",
        match config.rate {
            Some(rate) => format!(
                "open loop at {rate} req/s (max {} in flight)",
                config.max_inflight
            ),
            None => format!("closed loop over {} connections", config.connections),
        },
        config.duration,
        workload.users(),
        workload.items(),
        config.target.as_str()
    );
    let engine = EngineConfig {
        target: config.target.clone(),
        client: config.client.clone(),
        load,
        grace: Duration::ZERO,
        sample_every: None,
        interval: None,
    };
    let output = engine::run(&engine, workload, stop).await?;
    base_report(
        "mixed",
        &config,
        &config.target,
        &output,
        config.rate,
        config.max_inflight,
    )
}

/// The common part of a mixed-workload report: routes, errors (plus `client_dropped` and
/// `unsent`), the timeline, open-loop details (when `rate` is given) and the workload section.
pub(crate) fn base_report<C: Serialize>(
    scenario: &'static str,
    config: &C,
    target: &Target,
    output: &EngineOutput,
    rate: Option<f64>,
    max_inflight: usize,
) -> Result<Report, LoadError> {
    let mut report = Report::new(RunSummary {
        scenario,
        mode: if rate.is_some() { "open" } else { "closed" },
        target: target.as_str(),
        config,
        started_at: output.started_at,
        elapsed: output.elapsed,
        interrupted: output.interrupted,
        recorder: &output.recorder,
        timeline: Some(output.timeline.clone()),
    })?;
    for (kind, count) in [
        ("client_dropped", output.client_dropped),
        ("unsent", output.unsent),
    ] {
        if count > 0 {
            *report.errors.entry(kind.to_owned()).or_default() += count;
        }
    }
    if let Some(rate) = rate {
        report.open_loop = Some(OpenLoopDetails {
            target_rate_per_s: rate,
            scheduled: output.scheduled,
            sent: output.sent,
            unsent: output.unsent,
            send_lag_us: output.send_lag.percentiles(),
            max_inflight: Some(max_inflight),
            client_dropped: output.client_dropped,
        });
    }
    report.workload = Some(output.workload.clone());
    Ok(report)
}
