//! The mobile side of Momentum, with no server dependencies so a phone shell can call it
//! through FFI:
//!
//! - [`ModelManager`] loads the goal-success `.tflite` model exported by
//!   `momentum_models::export` — from bytes, files, its offline cache or the server — and lets
//!   it serve only after decryption, sha256, structure and golden-vector checks pass; a refused
//!   model never replaces the serving one. Inference runs on tract through a bounded pool of run
//!   states sharing one optimised plan, with latency percentiles and other [`ModelStats`].
//! - [`FeatureStore`] computes the ten features with the same
//!   `momentum_models::features::compute` the server uses, caches them with a TTL, and persists
//!   them to a bounded, checksummed file for offline use.
//! - [`Device`] puts the two together: [`Device::predict_success`] answers offline what the
//!   server's `predictions/success` route answers.
//!
//! The `momentum-device` binary (src/bin) plays a phone against a running server.

pub mod error;
pub mod events;
pub mod feature_store;
pub mod fixtures;
pub mod interpreter;
pub mod manager;
pub mod predict;
pub mod server;
pub mod stats;

pub use error::DeviceError;
pub use feature_store::{
    CachedFeatures, FeatureStore, FeatureStoreConfig, FeatureStoreStats, LoadReport,
};
pub use manager::{
    Connection, LoadedModel, ManagerConfig, ModelManager, NetworkPolicy, SyncOutcome,
};
pub use momentum_models::clock::{Clock, ManualClock, SystemClock};
pub use predict::{Device, SuccessPrediction};
pub use server::{HttpClient, HttpResponse, ModelServer, UreqClient};
pub use stats::{LatencySnapshot, ModelStats};
