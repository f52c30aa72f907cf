//! Prometheus metrics of the HTTP layer. One registry per server instance; `/metrics` renders
//! it in the text format together with the actor metrics registered in it.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// HTTP and ingestion metrics.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    /// Request latency by route template, method and status class.
    pub request_duration: HistogramVec,
    pub events_accepted: IntCounter,
    pub events_duplicate: IntCounter,
    /// Rejected events by reason code (a small fixed set).
    pub events_rejected: IntCounterVec,
}

impl HttpMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = HttpMetrics {
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "momentum_http_request_duration_seconds",
                    "HTTP request latency by route template",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ]),
                &["route", "method", "status"],
            )?,
            events_accepted: IntCounter::new(
                "momentum_events_accepted_total",
                "Events applied to the hot state",
            )?,
            events_duplicate: IntCounter::new(
                "momentum_events_duplicate_total",
                "Events skipped because their event_id was already applied",
            )?,
            events_rejected: IntCounterVec::new(
                Opts::new(
                    "momentum_events_rejected_total",
                    "Events refused, by reason",
                ),
                &["reason"],
            )?,
        };
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.events_accepted.clone()))?;
        registry.register(Box::new(m.events_duplicate.clone()))?;
        registry.register(Box::new(m.events_rejected.clone()))?;
        Ok(m)
    }
}

/// A/B experiment metrics. Labels are the experiment id and the variant name: both are bounded
/// (at most [`crate::experiments::MAX_EXPERIMENTS`] experiments of at most 10 variants, names
/// validated) and are removed when an experiment is deleted.
#[derive(Debug, Clone)]
pub struct AbMetrics {
    /// Recommendation responses served under a variant.
    pub assignments: IntCounterVec,
    /// `impression` events attributed to a variant.
    pub impressions: IntCounterVec,
    /// `click` events attributed to a variant.
    pub clicks: IntCounterVec,
    /// `complete` events attributed to a variant.
    pub conversions: IntCounterVec,
}

impl AbMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let vec = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["experiment", "variant"])
        };
        let m = AbMetrics {
            assignments: vec(
                "momentum_ab_assignments_total",
                "Recommendation responses served under an experiment variant",
            )?,
            impressions: vec(
                "momentum_ab_impressions_total",
                "Impression events attributed to an experiment variant",
            )?,
            clicks: vec(
                "momentum_ab_clicks_total",
                "Click events attributed to an experiment variant",
            )?,
            conversions: vec(
                "momentum_ab_conversions_total",
                "Complete events attributed to an experiment variant",
            )?,
        };
        for v in [&m.assignments, &m.impressions, &m.clicks, &m.conversions] {
            registry.register(Box::new(v.clone()))?;
        }
        Ok(m)
    }
}
