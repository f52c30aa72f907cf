//! Prometheus metrics of the predictive models. Labels are the model name (`success`,
//! `churn`), the feature name (the ten of `FEATURE_NAMES`), the churn tier or a run's result:
//! all small fixed sets.

use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry,
};

/// Model quality, training, inference, drift and churn-run metrics.
#[derive(Debug, Clone)]
pub struct AnalyticsMetrics {
    /// Held-out accuracy of the live version, at its chosen threshold.
    pub model_accuracy: GaugeVec,
    /// Held-out F1 of the live version, at its chosen threshold.
    pub model_f1: GaugeVec,
    /// Live version number.
    pub model_version: IntGaugeVec,
    /// Wall time of the last training run.
    pub training_duration: Gauge,
    /// Training runs by result (`ok`, `error`).
    pub training_runs: IntCounterVec,
    /// Candidates promoted to live.
    pub promotions: IntCounterVec,
    /// Feature computation plus model evaluation per prediction.
    pub inference_duration: HistogramVec,
    /// Rolling accuracy and F1 of served success predictions against observed outcomes.
    pub online_accuracy: GaugeVec,
    pub online_f1: GaugeVec,
    /// Outcomes in the rolling online window.
    pub online_outcomes: GaugeVec,
    /// Population stability index of each feature, training window vs. the last 24 hours.
    pub drift_psi: GaugeVec,
    /// Users per tier in the last scoring run.
    pub churn_tier_users: IntGaugeVec,
    /// Interventions appended to the outbox.
    pub interventions: IntCounter,
}

impl AnalyticsMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let gauge_vec =
            |name: &str, help: &str, label: &str| GaugeVec::new(Opts::new(name, help), &[label]);
        let counter_vec = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label])
        };
        let m = AnalyticsMetrics {
            model_accuracy: gauge_vec(
                "momentum_model_accuracy",
                "Held-out accuracy of the live model version at its decision threshold",
                "model",
            )?,
            model_f1: gauge_vec(
                "momentum_model_f1",
                "Held-out F1 of the live model version at its decision threshold",
                "model",
            )?,
            model_version: IntGaugeVec::new(
                Opts::new("momentum_model_version", "Live model version"),
                &["model"],
            )?,
            training_duration: Gauge::new(
                "momentum_training_duration_seconds",
                "Wall time of the last training run (both models)",
            )?,
            training_runs: counter_vec(
                "momentum_training_runs_total",
                "Training runs by result",
                "result",
            )?,
            promotions: counter_vec(
                "momentum_model_promotions_total",
                "Model versions promoted to live",
                "model",
            )?,
            inference_duration: HistogramVec::new(
                HistogramOpts::new(
                    "momentum_inference_duration_seconds",
                    "Feature computation and model evaluation per prediction",
                )
                .buckets(vec![
                    0.000_001, 0.000_002, 0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1,
                    0.000_25, 0.000_5, 0.001, 0.005,
                ]),
                &["model"],
            )?,
            online_accuracy: gauge_vec(
                "momentum_model_online_accuracy",
                "Rolling accuracy of served predictions against observed outcomes",
                "model",
            )?,
            online_f1: gauge_vec(
                "momentum_model_online_f1",
                "Rolling F1 of served predictions against observed outcomes",
                "model",
            )?,
            online_outcomes: gauge_vec(
                "momentum_model_online_outcomes",
                "Outcomes in the rolling online accuracy window",
                "model",
            )?,
            drift_psi: gauge_vec(
                "momentum_feature_drift_psi",
                "Population stability index of a feature: training window vs last 24 hours",
                "feature",
            )?,
            churn_tier_users: IntGaugeVec::new(
                Opts::new(
                    "momentum_churn_tier_users",
                    "Users per churn risk tier in the last scoring run",
                ),
                &["tier"],
            )?,
            interventions: IntCounter::new(
                "momentum_interventions_total",
                "Interventions appended to the churn outbox",
            )?,
        };
        registry.register(Box::new(m.model_accuracy.clone()))?;
        registry.register(Box::new(m.model_f1.clone()))?;
        registry.register(Box::new(m.model_version.clone()))?;
        registry.register(Box::new(m.training_duration.clone()))?;
        registry.register(Box::new(m.training_runs.clone()))?;
        registry.register(Box::new(m.promotions.clone()))?;
        registry.register(Box::new(m.inference_duration.clone()))?;
        registry.register(Box::new(m.online_accuracy.clone()))?;
        registry.register(Box::new(m.online_f1.clone()))?;
        registry.register(Box::new(m.online_outcomes.clone()))?;
        registry.register(Box::new(m.drift_psi.clone()))?;
        registry.register(Box::new(m.churn_tier_users.clone()))?;
        registry.register(Box::new(m.interventions.clone()))?;
        Ok(m)
    }
}
