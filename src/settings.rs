//! Typed, layered configuration: the embedded `config/default.toml`, then an optional file,
//! then `MOMENTUM__SECTION__KEY` environment variables. Unknown keys are refused so a typo
//! cannot silently fall back to a default.

use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use momentum_actors::config::{ActorsConfig, RecommendConfig};
use momentum_actors::EngineConfig;
use momentum_models::events::KindWeights;

use crate::analytics::config::{AnalyticsConfig, ChurnConfig, ModelsConfig, TrainerConfig};
use crate::error::Error;
use crate::journal::SnapshotSettings;
use crate::store::StoreConfig;

/// The embedded defaults, every key commented.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub logging: LoggingSettings,
    pub ingest: IngestSettings,
    pub actors: ActorsConfig,
    pub weights: KindWeights,
    pub recommend: RecommendConfig,
    pub security: SecuritySettings,
    pub store: StoreConfig,
    pub snapshot: SnapshotSettings,
    pub models: ModelsConfig,
    pub trainer: TrainerConfig,
    pub churn: ChurnConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub bind: String,
    pub workers: usize,
    pub max_body_bytes: usize,
    pub shutdown_timeout_secs: u64,
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    pub max_batch: usize,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    pub admin_key: String,
}

impl std::fmt::Debug for SecuritySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs, even through `{:?}`.
        f.debug_struct("SecuritySettings")
            .field(
                "admin_key",
                &if self.admin_key.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

impl Settings {
    /// Loads defaults, then `file`, then the environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Settings, Error> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(Error::Config {
                    message: format!("configuration file {} does not exist", path.display()),
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(Env::prefixed("MOMENTUM__").split("__"));
        let settings: Settings = figment.extract().map_err(|e| Error::Config {
            message: e.to_string(),
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// The embedded defaults alone (tests start from these).
    pub fn defaults() -> Result<Settings, Error> {
        let settings: Settings = Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            .map_err(|e| Error::Config {
                message: e.to_string(),
            })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Cross-field checks beyond what types express.
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |message: &str| {
            Err(Error::Config {
                message: message.to_string(),
            })
        };
        if self.ingest.max_batch == 0 {
            return fail("ingest.max_batch must be positive");
        }
        if self.server.max_body_bytes < 1024 {
            return fail("server.max_body_bytes must be at least 1024");
        }
        self.analytics()
            .validate()
            .map_err(|message| Error::Config { message })?;
        self.engine()
            .validate()
            .map_err(|message| Error::Config { message })
    }

    /// The part of the configuration the predictive models need.
    pub fn analytics(&self) -> AnalyticsConfig {
        AnalyticsConfig {
            models: self.models.clone(),
            trainer: self.trainer.clone(),
            churn: self.churn.clone(),
        }
    }

    /// The part of the configuration the actors need.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            actors: self.actors.clone(),
            weights: self.weights.clone(),
            recommend: self.recommend.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_parses_and_validates() {
        let s = Settings::defaults().expect("defaults");
        assert_eq!(s.server.bind, "127.0.0.1:8080");
        assert_eq!(s.actors.shards, 16);
        assert_eq!(s.engine().recommend, RecommendConfig::default());
        assert_eq!(s.weights, KindWeights::default());
        assert_eq!(s.actors, ActorsConfig::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[server]\nbindd = \"x\"\n").expect("write");
        let err = Settings::load(Some(&bad)).expect_err("unknown key");
        assert!(err.to_string().contains("bindd"), "{err}");
        let bad = dir.path().join("bad2.toml");
        std::fs::write(&bad, "[recommend]\nuser_weight = 2.0\n").expect("write");
        let err = Settings::load(Some(&bad)).expect_err("out of range");
        assert!(err.to_string().contains("user_weight"), "{err}");
    }

    #[test]
    fn admin_key_is_redacted_in_debug() {
        let mut s = Settings::defaults().expect("defaults");
        s.security.admin_key = "hunter2".into();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
