//! The live versions of the success and churn models, held in memory for serving, and the
//! metadata every stored version carries.
//!
//! Readers take an `Arc` of the live version (a pointer copy under a read lock), so a
//! promotion swaps the model between two requests and never under one. The store is the
//! source of truth: a version is stored before it is swapped in, and on start-up the registry
//! is filled with the live versions found in the store.

use std::sync::Arc;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use momentum_models::dataset::DatasetParams;
use momentum_models::export::ModelKey;
use momentum_models::features::{FeatureParams, FEATURE_NAMES};
use momentum_models::predict::classifier::{Classifier, ClassifierParams};
use momentum_models::predict::metrics::ClassificationReport;
use momentum_models::training::{DatasetWindow, ModelKind, PromotionDecision};
use momentum_models::ModelError;

use super::artifacts::{ArtifactError, Bundle, ExportInfo, CLASSIFIER};
use super::drift::Reference;
use crate::store::analytics::ModelVersionRow;

/// Rows behind a version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RowCounts {
    pub train: usize,
    pub train_positives: usize,
    pub holdout: usize,
    pub holdout_positives: usize,
}

/// Everything stored with a version besides the model bytes (`models.metadata`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionMetadata {
    /// `success` or `churn`.
    pub model: ModelKind,
    /// `logistic_regression` or `random_forest`.
    pub algorithm: String,
    /// Whether this version went live when it was trained.
    pub promoted: bool,
    pub decision: PromotionDecision,
    /// Hyper-parameters.
    pub params: ClassifierParams,
    /// Input schema, in order: what `POST /v1/predictions/*` must send.
    pub feature_names: Vec<String>,
    pub feature_params: FeatureParams,
    pub dataset_params: DatasetParams,
    pub training_window: DatasetWindow,
    pub rows: RowCounts,
    /// Decision threshold (F1-maximising on the training rows).
    pub threshold: f64,
    /// Held-out evaluation of this version.
    pub metrics: ClassificationReport,
    /// The live version of the time, on the same held-out rows.
    pub live_metrics: Option<ClassificationReport>,
    pub fit_seconds: f64,
    /// Training-window distribution of the features, for drift.
    pub drift_reference: Option<Reference>,
    /// The `.tflite` files of this version (the logistic success model has a float32 and an
    /// int8 one; forests have none), described without decrypting the stored bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<ExportInfo>,
}

/// Why a stored version cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum StoredModelError {
    /// The version's metadata does not parse.
    #[error("metadata of {name} v{version}")]
    Metadata {
        name: String,
        version: u64,
        #[source]
        source: serde_json::Error,
    },
    /// The sealed bundle cannot be opened (no key, wrong key, damaged bytes).
    #[error("model {name} v{version}")]
    Unreadable {
        name: String,
        version: u64,
        #[source]
        source: ArtifactError,
    },
    /// The bundle lacks the classifier.
    #[error(transparent)]
    Bundle { source: ArtifactError },
    /// The classifier does not parse.
    #[error("model bytes of {name} v{version}")]
    Classifier {
        name: String,
        version: u64,
        #[source]
        source: serde_json::Error,
    },
    /// The forest is not a valid one.
    #[error(transparent)]
    Forest { source: ModelError },
}

/// A version in service.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveModel {
    pub kind: ModelKind,
    pub version: u64,
    pub created_ms: i64,
    pub classifier: Classifier,
    pub threshold: f64,
    pub feature_names: Vec<String>,
    /// Held-out accuracy and F1 at `threshold`, and ROC AUC.
    pub accuracy: f64,
    pub f1: f64,
    pub auc: Option<f64>,
    pub reference: Option<Arc<Reference>>,
    /// The version's `.tflite` files (what `GET /v1/models/{name}/latest` describes).
    pub exports: Vec<ExportInfo>,
}

impl LiveModel {
    /// Rebuilds a live model from a stored version: `bytes` are the sealed bundle
    /// ([`super::artifacts`]), opened with `key`.
    pub fn from_stored(
        row: &ModelVersionRow,
        bytes: &[u8],
        key: Option<&ModelKey>,
    ) -> Result<LiveModel, StoredModelError> {
        let (name, version) = (row.name.clone(), row.version);
        let meta: VersionMetadata =
            serde_json::from_value(row.metadata.clone()).map_err(|source| {
                StoredModelError::Metadata {
                    name: name.clone(),
                    version,
                    source,
                }
            })?;
        let bundle = Bundle::open(key, bytes).map_err(|source| StoredModelError::Unreadable {
            name: name.clone(),
            version,
            source,
        })?;
        let classifier_json = bundle
            .require(CLASSIFIER)
            .map_err(|source| StoredModelError::Bundle { source })?;
        let classifier: Classifier = serde_json::from_slice(classifier_json).map_err(|source| {
            StoredModelError::Classifier {
                name,
                version,
                source,
            }
        })?;
        if let Classifier::Forest(f) = &classifier {
            f.validate()
                .map_err(|source| StoredModelError::Forest { source })?;
        }
        Ok(Self::new(meta, row.version, row.created_ms, classifier))
    }

    pub fn new(
        meta: VersionMetadata,
        version: u64,
        created_ms: i64,
        classifier: Classifier,
    ) -> Self {
        let at = meta.metrics.at_chosen.unwrap_or(meta.metrics.at_default);
        LiveModel {
            kind: meta.model,
            version,
            created_ms,
            classifier,
            threshold: meta.threshold,
            feature_names: meta.feature_names,
            accuracy: at.accuracy,
            f1: at.f1,
            auc: meta.metrics.auc,
            reference: meta.drift_reference.map(Arc::new),
            exports: meta.exports,
        }
    }

    /// Whether the model takes the server's current features in order.
    pub fn takes_current_features(&self) -> bool {
        self.feature_names
            .iter()
            .map(String::as_str)
            .eq(FEATURE_NAMES)
    }
}

/// The live version of each model.
#[derive(Debug, Default)]
pub struct LiveModels {
    success: RwLock<Option<Arc<LiveModel>>>,
    churn: RwLock<Option<Arc<LiveModel>>>,
}

impl LiveModels {
    fn slot(&self, kind: ModelKind) -> &RwLock<Option<Arc<LiveModel>>> {
        match kind {
            ModelKind::Success => &self.success,
            ModelKind::Churn => &self.churn,
        }
    }

    /// The live version, if any.
    pub fn get(&self, kind: ModelKind) -> Option<Arc<LiveModel>> {
        self.slot(kind).read().clone()
    }

    /// Puts a version in service.
    pub fn set(&self, model: Arc<LiveModel>) {
        let kind = model.kind;
        *self.slot(kind).write() = Some(model);
    }
}
