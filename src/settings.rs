//! Typed, layered configuration: the embedded `config/default.toml`, then an optional file,
//! then `MOMENTUM__SECTION__KEY` environment variables. Unknown keys are refused so a typo
//! cannot silently fall back to a default.

use std::path::Path;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use momentum_actors::config::{ActorsConfig, EaseConfig, RecommendConfig};
use momentum_actors::EngineConfig;
use momentum_models::events::KindWeights;
use momentum_models::export::ModelKey;

use crate::analytics::config::{AnalyticsConfig, ChurnConfig, ModelsConfig, TrainerConfig};
use crate::cluster::ClusterSettings;
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
    #[serde(default)]
    pub ease: EaseConfig,
    pub security: SecuritySettings,
    pub store: StoreConfig,
    pub snapshot: SnapshotSettings,
    pub models: ModelsConfig,
    pub trainer: TrainerConfig,
    pub churn: ChurnConfig,
    #[serde(default)]
    pub cluster: ClusterSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub bind: String,
    pub workers: usize,
    pub max_body_bytes: usize,
    pub body_timeout_secs: u64,
    pub max_body_buffer_bytes: usize,
    pub shutdown_timeout_secs: u64,
    pub retry_after_secs: u64,
    /// Requests to `/v1/*` being served at once; beyond it `503` + `Retry-After` at once.
    pub max_inflight_requests: usize,
    /// Of those, `POST /v1/events` requests at once: ingestion waits for the event log, so
    /// a queue of batches would otherwise hold every slot and grow its own latency.
    pub max_inflight_ingest: usize,
    /// PEM certificate chain and private key; both set = HTTPS (rustls, ring), both empty =
    /// plain HTTP.
    pub tls_cert_path: String,
    pub tls_key_path: String,
}

impl ServerSettings {
    pub fn tls_enabled(&self) -> bool {
        !self.tls_cert_path.is_empty()
    }
}

/// How `GET /v1/models/{name}/versions/{v}/model.tflite` sends the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelDownload {
    /// AES-256-GCM under `security.device_key` (devices hold that key).
    Encrypted,
    /// The plain file; allowed only when the server itself speaks TLS.
    Plain,
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
    /// 64 hex digits: seals stored model versions (AES-256-GCM).
    pub model_key: String,
    /// 64 hex digits: encrypts model downloads for devices; empty = `model_key`.
    pub device_key: String,
    pub model_download: ModelDownload,
}

impl std::fmt::Debug for SecuritySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs, even through `{:?}`.
        let redact = |secret: &str| if secret.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("SecuritySettings")
            .field("admin_key", &redact(&self.admin_key))
            .field("model_key", &redact(&self.model_key))
            .field("device_key", &redact(&self.device_key))
            .field("model_download", &self.model_download)
            .finish()
    }
}

impl SecuritySettings {
    /// The at-rest model key, if configured.
    pub fn model_key(&self) -> Result<Option<ModelKey>, Error> {
        parse_key("security.model_key", &self.model_key)
    }

    /// The key downloads are encrypted with: `device_key`, else `model_key`.
    pub fn device_key(&self) -> Result<Option<ModelKey>, Error> {
        match parse_key("security.device_key", &self.device_key)? {
            Some(key) => Ok(Some(key)),
            None => self.model_key(),
        }
    }
}

fn parse_key(name: &str, hex: &str) -> Result<Option<ModelKey>, Error> {
    if hex.trim().is_empty() {
        return Ok(None);
    }
    // The error names the setting, never the value.
    ModelKey::from_hex(hex)
        .map(Some)
        .map_err(|e| Error::Config {
            message: format!("{name}: {e}"),
        })
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
            let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
                message: format!("cannot read configuration file {}: {e}", path.display()),
            })?;
            check_toml_syntax(path, &text)?;
            figment = figment.merge(Toml::string(&text));
        }
        figment = figment.merge(Env::prefixed("MOMENTUM__").split("__"));
        let settings: Settings = figment.extract().map_err(redacted_config_error)?;
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
        validate_log_level(&self.logging.level)?;
        if self.ingest.max_batch == 0 {
            return fail("ingest.max_batch must be positive");
        }
        if self.server.max_body_bytes < 1024 {
            return fail("server.max_body_bytes must be at least 1024");
        }
        if self.server.body_timeout_secs == 0 {
            return fail("server.body_timeout_secs must be positive");
        }
        if self.server.max_body_buffer_bytes < self.server.max_body_bytes {
            return fail("server.max_body_buffer_bytes must be at least server.max_body_bytes");
        }
        if self.server.max_inflight_requests == 0 || self.server.max_inflight_ingest == 0 {
            return fail(
                "server.max_inflight_requests and server.max_inflight_ingest must be positive",
            );
        }
        if self.server.tls_cert_path.is_empty() != self.server.tls_key_path.is_empty() {
            return fail("server.tls_cert_path and server.tls_key_path are set together");
        }
        self.security.model_key()?;
        self.security.device_key()?;
        if self.security.model_download == ModelDownload::Plain && !self.server.tls_enabled() {
            return fail(
                "security.model_download = \"plain\" needs TLS (server.tls_cert_path and server.tls_key_path): \
                 without it model files would cross the network in the clear",
            );
        }
        self.cluster.validate()?;
        self.analytics().validate()?;
        Ok(self.engine().validate()?)
    }

    /// The part of the configuration the predictive models need.
    pub fn analytics(&self) -> AnalyticsConfig {
        AnalyticsConfig {
            models: self.models.clone(),
            trainer: self.trainer.clone(),
            churn: self.churn.clone(),
            // Validated in `validate`; a malformed key cannot get here.
            model_key: self.security.model_key().ok().flatten(),
        }
    }

    /// The part of the configuration the actors need.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            actors: self.actors.clone(),
            weights: self.weights.clone(),
            recommend: self.recommend.clone(),
            ease: self.ease.clone(),
        }
    }
}

/// Settings whose values are secrets: a configuration error about one of them names the key
/// and never the value.
const SECRET_KEYS: [&str; 4] = [
    "security.admin_key",
    "security.model_key",
    "security.device_key",
    "store.url",
];

/// Checks a configuration file's TOML syntax before figment reads it. The TOML parser's own
/// message quotes the offending line, which may hold a secret (an unterminated `admin_key`
/// string, say), so only the position and the parser's reason are reported.
fn check_toml_syntax(path: &Path, text: &str) -> Result<(), Error> {
    let Err(error) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let position = error.span().map_or_else(String::new, |span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!(" at line {line}, column {column}")
    });
    Err(Error::Config {
        message: format!(
            "configuration file {} is not valid TOML{position}: {} (the line is not shown: it may hold a secret)",
            path.display(),
            error.message().trim_end()
        ),
    })
}

/// Turns figment's errors into one message, replacing what it says about a secret setting
/// (which can quote the value, e.g. "invalid type: found integer `1234`") by the key alone.
fn redacted_config_error(errors: figment::Error) -> Error {
    let messages: Vec<String> = errors
        .into_iter()
        .map(|error| {
            let key = error.path.join(".");
            if SECRET_KEYS.contains(&key.as_str()) {
                format!("invalid value for {key} (not shown: it is a secret)")
            } else {
                error.to_string()
            }
        })
        .collect();
    Error::Config {
        message: messages.join("; "),
    }
}

/// The levels `logging.level` accepts, alone or after `target=`.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// `logging.level` is a level (`info`) or a comma-separated list of directives, each a level or
/// `target=level` (`momentum=debug,actix_web=warn`). A bare word that is not a level would be
/// read by the log filter as a target name and silence everything else, so it is refused.
fn validate_log_level(level: &str) -> Result<(), Error> {
    let is_level = |word: &str| LOG_LEVELS.contains(&word.trim().to_ascii_lowercase().as_str());
    let refuse = |what: &str| {
        Err(Error::Config {
            message: format!(
                "logging.level: {what:?} is neither a level ({}) nor a directive like \"momentum=debug\"",
                LOG_LEVELS.join(", ")
            ),
        })
    };
    if level.trim().is_empty() {
        return refuse(level);
    }
    for directive in level.split(',') {
        let level_part = match directive.rsplit_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level,
            Some(_) => return refuse(directive),
            None => directive,
        };
        if !is_level(level_part) {
            return refuse(directive);
        }
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| Error::Config {
            message: format!("logging.level: {e}"),
        })
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
    fn model_keys_are_checked_and_plain_downloads_need_tls() {
        let mut s = Settings::defaults().expect("defaults");
        assert_eq!(s.analytics().model_key, None);
        s.security.model_key = "ab".repeat(32);
        s.validate().expect("a 64-digit key is valid");
        let key = s.analytics().model_key.expect("parsed");
        assert_eq!(s.security.device_key().expect("ok"), Some(key.clone()));
        s.security.device_key = "cd".repeat(32);
        assert_ne!(s.security.device_key().expect("ok"), Some(key));
        s.security.model_key = "xyz".into();
        let err = s.validate().expect_err("malformed key").to_string();
        assert!(err.contains("security.model_key"), "{err}");
        assert!(!err.contains("xyz"), "the value is not echoed: {err}");
        s.security.model_key = String::new();
        s.security.model_download = ModelDownload::Plain;
        let err = s.validate().expect_err("plain without TLS").to_string();
        assert!(err.contains("needs TLS"), "{err}");
        s.server.tls_cert_path = "cert.pem".into();
        let err = s.validate().expect_err("cert without key").to_string();
        assert!(err.contains("set together"), "{err}");
        s.server.tls_key_path = "key.pem".into();
        s.validate().expect("plain over TLS is allowed");
    }

    #[test]
    fn log_levels_are_checked() {
        for good in [
            "info",
            "WARN",
            "off",
            "momentum=debug,actix_web=warn",
            "info,redb=error",
        ] {
            validate_log_level(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "loud",
            "",
            "info,loud",
            "=debug",
            "momentum=loud",
            "momentum",
        ] {
            let err = validate_log_level(bad).expect_err(bad).to_string();
            assert!(err.contains("logging.level"), "{err}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("loud.toml");
        std::fs::write(&file, "[logging]\nlevel = \"loud\"\n").expect("write");
        let err = Settings::load(Some(&file)).expect_err("loud is refused");
        assert!(err.to_string().contains("\"loud\""), "{err}");
    }

    #[test]
    fn secrets_in_a_broken_file_are_not_echoed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            // An unterminated string: the TOML parser would quote the line.
            "[security]\nadmin_key = \"hunter2-secret\n[server]\nworkers = 2\n",
            // A value of the wrong type: figment would quote the value.
            "[security]\nadmin_key = 424242\n",
            "[store]\nurl = 424242\n",
        ];
        for (i, text) in cases.into_iter().enumerate() {
            let file = dir.path().join(format!("broken{i}.toml"));
            std::fs::write(&file, text).expect("write");
            let err = Settings::load(Some(&file)).expect_err("broken").to_string();
            assert!(!err.contains("hunter2") && !err.contains("424242"), "{err}");
            assert!(
                err.contains("line 2") || err.contains("admin_key") || err.contains("store.url"),
                "{err}"
            );
        }
    }

    #[test]
    fn admin_key_is_redacted_in_debug() {
        let mut s = Settings::defaults().expect("defaults");
        s.security.admin_key = "hunter2".into();
        s.security.model_key = "5e".repeat(32);
        s.security.device_key = "d7".repeat(32);
        let shown = format!("{s:?} {:?}", s.analytics());
        assert!(!shown.contains("hunter2"));
        assert!(
            !shown.contains("5e5e5e") && !shown.contains("d7d7d7"),
            "{shown}"
        );
    }
}
