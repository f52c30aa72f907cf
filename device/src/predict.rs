//! Offline goal-success prediction: features from the [`FeatureStore`], probability from the
//! [`ModelManager`], and the same answer shape and rules as the server's
//! `GET /v1/users/{id}/predictions/success`: confidence `|2p − 1|`, the model's threshold, and
//! the three strongest [`momentum_models::features::recommended_actions`].

use std::time::Duration;

use momentum_models::features::{goal_states, recommended_actions, Activity, Features, GoalStatus};
use serde::Serialize;

use crate::feature_store::FeatureStore;
use crate::manager::ModelManager;
use crate::DeviceError;

/// Actions listed with a prediction (as the server).
pub const MAX_ACTIONS: usize = 3;

/// An action as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Action {
    pub code: &'static str,
    pub message: &'static str,
}

/// A success prediction made on the device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SuccessPrediction {
    pub probability: f64,
    /// `|2p − 1|`: how far the model is from a coin flip.
    pub confidence: f64,
    /// The server's decision threshold for this model, when the metadata carries one.
    pub threshold: Option<f64>,
    pub model_version: u64,
    /// The goal's status in the user's log (`None`: no goal given, or never acted on).
    pub goal_status: Option<GoalStatus>,
    pub recommended_actions: Vec<Action>,
    /// The features the model saw.
    pub features: Features,
    /// Whether they came from the feature cache.
    pub features_cached: bool,
}

/// The model manager and the feature store of one app, predicting offline.
#[derive(Debug)]
pub struct Device {
    pub models: ModelManager,
    pub features: FeatureStore,
    /// Longest wait for a free interpreter state.
    pub inference_timeout: Duration,
}

impl Device {
    pub fn new(models: ModelManager, features: FeatureStore) -> Self {
        Self {
            models,
            features,
            inference_timeout: Duration::from_millis(100),
        }
    }

    /// Predicts whether `user_id` will complete `goal` (a dense goal id of `log`, or `None`
    /// for the user in general) from their activity log, as of the store's clock.
    pub fn predict_success(
        &self,
        user_id: &str,
        goal: Option<u32>,
        log: &[Activity],
    ) -> Result<SuccessPrediction, DeviceError> {
        let model = self.models.current().ok_or(DeviceError::NoModel)?;
        if model.metadata.feature_params != self.features.config().params {
            return Err(DeviceError::InvalidMetadata {
                reason:
                    "the model was trained on other feature definitions than the store computes"
                        .to_string(),
            });
        }
        let cached = self.features.features(user_id, log);
        let probability = self
            .models
            .run_inference(&cached.features.to_array(), self.inference_timeout)?;
        let goal_status = goal.and_then(|g| {
            goal_states(log, cached.as_of_ms, &self.features.config().params)
                .into_iter()
                .find(|s| s.goal == g)
                .map(|s| s.status)
        });
        Ok(SuccessPrediction {
            probability,
            confidence: (2.0 * probability - 1.0).abs(),
            threshold: model.metadata.threshold,
            model_version: model.version(),
            goal_status,
            recommended_actions: recommended_actions(&cached.features, MAX_ACTIONS)
                .into_iter()
                .map(|a| Action {
                    code: a.code,
                    message: a.message,
                })
                .collect(),
            features: cached.features,
            features_cached: cached.cached,
        })
    }

    /// Erases everything the device holds: the model cache and every user's features.
    pub fn clear(&self) -> Result<(), DeviceError> {
        self.models.clear()?;
        self.features.clear()
    }
}
