//! Pure algorithms of Momentum: time and the stable hash, event weights, collaborative-filtering similarity, content
//! (TF-IDF) scoring, hybrid ranking, diversity, experiment assignment, classifiers, time series,
//! the user features, the training pipeline, churn tiers and evaluation metrics. Nothing here does I/O or knows about actors, so the
//! server, the trainer and the device crate share one implementation.

pub mod bounded;
pub mod churn;
pub mod clock;
pub mod content;
pub mod dataset;
pub mod ease;
pub mod error;
pub mod events;
pub mod experiment;
pub mod export;
pub mod features;
pub mod hash;
pub mod predict;
pub mod protocol;
pub mod ranking;
pub mod similarity;
pub mod training;
pub mod wire;

pub use error::ModelError;
