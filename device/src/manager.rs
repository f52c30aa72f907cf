//! The model manager: which model serves, how a new one gets in, and running it.
//!
//! A candidate model — from bytes, files, the local cache or the server — goes through the
//! same gate before it serves:
//!
//! 1. decrypt (AES-256-GCM) if it came encrypted; no key or a wrong key is a refusal;
//! 2. metadata consistent, float32 variant, the app's feature names in the app's order;
//! 3. size and sha256 of the plain file equal the metadata's;
//! 4. the flatbuffer is a well-formed TFLite file of the exported graph shape;
//! 5. tract parses and optimises it into one plan, and a pool of run states is set up;
//! 6. every golden vector gives the metadata's probability within the tolerance.
//!
//! Only then is it swapped in (an `Arc` swap under a short write lock; inferences in flight
//! finish on the model they started with). A refusal at any step leaves the serving model
//! untouched and says why. Accepted models are written to the cache directory, if one is
//! configured, so the next start works offline; [`ModelManager::clear`] removes them (GDPR).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use momentum_models::export::{
    check_tflite, decrypt, sha256_hex, ModelKey, ModelMetadata, Variant,
};
use momentum_models::features::FEATURE_NAMES;
use parking_lot::{Mutex, RwLock};

use crate::interpreter::{compile, InterpreterPool};
use crate::server::{Download, ModelServer};
use crate::stats::{LatencyRecorder, ModelStats};
use crate::DeviceError;

/// File names inside the cache directory.
const CACHED_MODEL: &str = "model.tflite";
const CACHED_METADATA: &str = "model.json";
const CACHED_ETAG: &str = "model.etag";

/// Settings of a [`ModelManager`].
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Model name on the server (default `success`).
    pub model_name: String,
    /// Run states per model; concurrent inferences beyond it wait (default 3).
    pub pool_size: usize,
    /// Key of encrypted downloads; `None` refuses encrypted models.
    pub key: Option<ModelKey>,
    /// Upper bound on the golden-vector tolerance, whatever the metadata says (default 1e-4).
    pub max_golden_tolerance: f64,
    /// Where accepted models are kept for offline starts; `None` keeps nothing on disk.
    pub cache_dir: Option<PathBuf>,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            model_name: "success".to_string(),
            pool_size: 3,
            key: None,
            max_golden_tolerance: 1e-4,
            cache_dir: None,
        }
    }
}

/// Whether the host lets the manager download now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    Wifi,
    Cellular,
    Offline,
}

/// The host's network rules for model updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub connection: Connection,
    /// Download models on Wi-Fi only (the version check, a few hundred bytes, still runs).
    pub wifi_only: bool,
}

impl NetworkPolicy {
    /// Any connection will do.
    pub fn any() -> Self {
        Self {
            connection: Connection::Wifi,
            wifi_only: false,
        }
    }

    fn may_download(&self) -> bool {
        match self.connection {
            Connection::Wifi => true,
            Connection::Cellular => !self.wifi_only,
            Connection::Offline => false,
        }
    }
}

/// What a [`ModelManager::sync`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// Nothing newer on the server (or the server answered `304`).
    UpToDate { version: u64 },
    /// A newer version was downloaded, verified and put in service.
    Updated { previous: Option<u64>, version: u64 },
    /// A newer version exists but the policy forbids downloading it now.
    Deferred { available: u64 },
    /// The host is offline; nothing was asked.
    Offline,
}

/// A model in service.
pub struct LoadedModel {
    pub metadata: ModelMetadata,
    /// Entity tag of the download, for `If-None-Match`.
    pub etag: Option<String>,
    /// Time from plain bytes to a verified, serving model.
    pub load_time: Duration,
    file_size: usize,
    pool: InterpreterPool,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("version", &self.metadata.version)
            .field("sha256", &self.metadata.sha256)
            .field("load_time", &self.load_time)
            .field("pool", &self.pool)
            .finish()
    }
}

impl LoadedModel {
    pub fn version(&self) -> u64 {
        self.metadata.version
    }

    /// The interpreter pool (its size, states, peak).
    pub fn pool(&self) -> &InterpreterPool {
        &self.pool
    }

    /// Rough bytes held: the file, the plan's constants (about the file again) and each
    /// created state (its intermediate tensors plus bookkeeping).
    pub fn memory_estimate(&self) -> usize {
        let n = self.metadata.feature_names.len();
        let per_state = 4 * (3 * n + 2) + 2048;
        2 * self.file_size + self.pool.created() * per_state
    }
}

/// Test hook run while an inference holds a run state.
type HoldHook = Arc<dyn Fn() + Send + Sync>;

/// Loads, verifies, updates and runs the on-device model.
pub struct ModelManager {
    config: ManagerConfig,
    current: RwLock<Option<Arc<LoadedModel>>>,
    latency: LatencyRecorder,
    failed: AtomicU64,
    timeouts: AtomicU64,
    loads: AtomicU64,
    rejected: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    hold_hook: RwLock<Option<HoldHook>>,
    /// Serialises loads and syncs, so two updates never race to download or swap.
    updating: Mutex<()>,
}

impl std::fmt::Debug for ModelManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelManager")
            .field("config", &self.config)
            .field(
                "current",
                &self.current.read().as_ref().map(|m| m.version()),
            )
            .finish()
    }
}

impl ModelManager {
    pub fn new(config: ManagerConfig) -> Self {
        Self {
            config,
            current: RwLock::new(None),
            latency: LatencyRecorder::default(),
            failed: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            hold_hook: RwLock::new(None),
            updating: Mutex::new(()),
        }
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    /// The model serving now.
    pub fn current(&self) -> Option<Arc<LoadedModel>> {
        self.current.read().clone()
    }

    /// Version serving now.
    pub fn version(&self) -> Option<u64> {
        self.current.read().as_ref().map(|m| m.version())
    }

    /// Verifies plain `.tflite` bytes against `metadata` and puts them in service.
    pub fn load_bytes(&self, bytes: &[u8], metadata: ModelMetadata) -> Result<u64, DeviceError> {
        let _updating = self.updating.lock();
        self.admit(bytes, metadata, None)
    }

    /// Decrypts `sealed` with the configured key, then as [`Self::load_bytes`].
    pub fn load_encrypted(
        &self,
        sealed: &[u8],
        metadata: ModelMetadata,
    ) -> Result<u64, DeviceError> {
        let _updating = self.updating.lock();
        let plain = self.decrypt(sealed).inspect_err(|e| self.refused(e))?;
        self.admit(&plain, metadata, None)
    }

    /// Loads a `.tflite` file and its metadata JSON file.
    pub fn load_files(&self, model: &Path, metadata: &Path) -> Result<u64, DeviceError> {
        let _updating = self.updating.lock();
        let bytes = std::fs::read(model).map_err(|e| DeviceError::io(model, e))?;
        let json = std::fs::read(metadata).map_err(|e| DeviceError::io(metadata, e))?;
        let metadata = ModelMetadata::from_json(&json).map_err(|e| {
            let e = DeviceError::from(e);
            self.refused(&e);
            e
        })?;
        self.admit(&bytes, metadata, None)
    }

    /// Loads the model kept in the cache directory by an earlier run. `Ok(None)` when there
    /// is no cache directory or nothing in it; a damaged cache is refused like any model (and
    /// the serving model, if any, stays).
    pub fn load_cached(&self) -> Result<Option<u64>, DeviceError> {
        let Some(dir) = &self.config.cache_dir else {
            return Ok(None);
        };
        let _updating = self.updating.lock();
        let model = dir.join(CACHED_MODEL);
        let metadata = dir.join(CACHED_METADATA);
        if !model.exists() || !metadata.exists() {
            return Ok(None);
        }
        let etag = std::fs::read_to_string(dir.join(CACHED_ETAG)).ok();
        let bytes = std::fs::read(&model).map_err(|e| DeviceError::io(&model, e))?;
        let json = std::fs::read(&metadata).map_err(|e| DeviceError::io(&metadata, e))?;
        let metadata = ModelMetadata::from_json(&json).map_err(|e| {
            let e = DeviceError::from(e);
            self.refused(&e);
            e
        })?;
        self.admit(&bytes, metadata, etag).map(Some)
    }

    /// Asks `server` for the latest version and installs it if it is newer and the policy
    /// allows the download. A refused download leaves the serving model in place and is
    /// returned as the error.
    pub fn sync(
        &self,
        server: &ModelServer,
        policy: NetworkPolicy,
    ) -> Result<SyncOutcome, DeviceError> {
        if policy.connection == Connection::Offline {
            return Ok(SyncOutcome::Offline);
        }
        let _updating = self.updating.lock();
        let current = self.current();
        let serving = current.as_ref().map(|m| m.version());
        let latest = server.latest(&self.config.model_name, serving)?;
        if let Some(model) = current.as_ref().filter(|m| m.version() >= latest.version) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(SyncOutcome::UpToDate {
                version: model.version(),
            });
        }
        if !policy.may_download() {
            return Ok(SyncOutcome::Deferred {
                available: latest.version,
            });
        }
        let etag = current.as_ref().and_then(|m| m.etag.clone());
        let download = server.download(
            &self.config.model_name,
            latest.version,
            etag.as_deref(),
            serving,
        )?;
        let (bytes, etag, encrypted) = match download {
            Download::NotModified => {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(match serving {
                    Some(version) => SyncOutcome::UpToDate { version },
                    None => {
                        return Err(DeviceError::Server {
                            reason: "304 Not Modified for a device without a model".to_string(),
                        })
                    }
                });
            }
            Download::Body {
                bytes,
                etag,
                encrypted,
            } => (bytes, etag, encrypted),
        };
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
        let plain = if encrypted || latest.encrypted {
            self.decrypt(&bytes).inspect_err(|e| self.refused(e))?
        } else {
            bytes
        };
        let version = self.admit(&plain, latest.metadata, etag)?;
        Ok(SyncOutcome::Updated {
            previous: serving,
            version,
        })
    }

    /// The probability of the model serving now for one row of raw features (in
    /// [`FEATURE_NAMES`] order). Waits at most `timeout` for a free run state; the run itself
    /// takes microseconds and is not interrupted.
    pub fn run_inference(&self, features: &[f64], timeout: Duration) -> Result<f64, DeviceError> {
        let started = Instant::now();
        let result = self.infer(features, timeout);
        match &result {
            Ok(_) => self.latency.record(started.elapsed()),
            Err(DeviceError::Timeout { .. }) => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn infer(&self, features: &[f64], timeout: Duration) -> Result<f64, DeviceError> {
        let model = self.current().ok_or(DeviceError::NoModel)?;
        let n = model.metadata.feature_names.len();
        if features.len() != n || !features.iter().all(|v| v.is_finite()) {
            return Err(DeviceError::InvalidInput {
                reason: format!("expected {n} finite features, got {}", features.len()),
            });
        }
        let input: Vec<f32> = features.iter().map(|&v| v as f32).collect();
        let mut state = model.pool.acquire(timeout)?;
        let probability = state.run(&input)?;
        if let Some(hook) = self.hold_hook.read().clone() {
            hook();
        }
        drop(state);
        Ok(f64::from(probability))
    }

    /// Counters, latency percentiles, load time, cache hit rate, memory estimate, pool.
    pub fn stats(&self) -> ModelStats {
        let current = self.current();
        let hits = self.cache_hits.load(Ordering::Relaxed);
        let misses = self.cache_misses.load(Ordering::Relaxed);
        ModelStats {
            version: current.as_ref().map(|m| m.version()),
            latency: self.latency.snapshot(),
            failed_inferences: self.failed.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            load_ms: current.as_ref().map(|m| m.load_time.as_secs_f64() * 1e3),
            loads: self.loads.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            cache_hits: hits,
            cache_misses: misses,
            cache_hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            memory_bytes: current.as_ref().map_or(0, |m| m.memory_estimate()),
            pool_size: self.config.pool_size.max(1),
            pool_created: current.as_ref().map_or(0, |m| m.pool.created()),
            pool_in_use: current.as_ref().map_or(0, |m| m.pool.in_use()),
            pool_peak: current.as_ref().map_or(0, |m| m.pool.peak()),
        }
    }

    /// Drops the serving model, the statistics and the cached files (GDPR erasure of the
    /// model cache). Inferences in flight finish; later ones get [`DeviceError::NoModel`].
    pub fn clear(&self) -> Result<(), DeviceError> {
        *self.current.write() = None;
        self.latency.reset();
        for counter in [
            &self.failed,
            &self.timeouts,
            &self.loads,
            &self.rejected,
            &self.cache_hits,
            &self.cache_misses,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        if let Some(dir) = &self.config.cache_dir {
            for name in [CACHED_MODEL, CACHED_METADATA, CACHED_ETAG] {
                let path = dir.join(name);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(DeviceError::io(&path, e)),
                }
            }
        }
        Ok(())
    }

    /// Runs `hook` while each inference holds its run state (tests count concurrent holders
    /// with it).
    #[doc(hidden)]
    pub fn set_hold_hook(&self, hook: Option<HoldHook>) {
        *self.hold_hook.write() = hook;
    }

    fn decrypt(&self, sealed: &[u8]) -> Result<Vec<u8>, DeviceError> {
        let key = self.config.key.as_ref().ok_or(DeviceError::MissingKey)?;
        Ok(decrypt(key, sealed)?)
    }

    fn refused(&self, e: &DeviceError) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "model refused; the serving model stays");
    }

    /// The gate of the module documentation, then the swap.
    fn admit(
        &self,
        bytes: &[u8],
        metadata: ModelMetadata,
        etag: Option<String>,
    ) -> Result<u64, DeviceError> {
        let result = verify(
            bytes,
            metadata,
            etag,
            self.config.pool_size,
            self.config.max_golden_tolerance,
        );
        let model = match result {
            Ok(model) => Arc::new(model),
            Err(e) => {
                self.refused(&e);
                return Err(e);
            }
        };
        let version = model.version();
        if let Err(e) = self.write_cache(bytes, &model) {
            // The model is fine; only the offline copy failed.
            tracing::warn!(error = %e, "could not cache the model for offline starts");
        }
        let previous = self.current.write().replace(model);
        self.loads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            version,
            previous = previous.as_ref().map(|m| m.version()),
            "model in service"
        );
        Ok(version)
    }

    fn write_cache(&self, bytes: &[u8], model: &LoadedModel) -> Result<(), DeviceError> {
        let Some(dir) = &self.config.cache_dir else {
            return Ok(());
        };
        std::fs::create_dir_all(dir).map_err(|e| DeviceError::io(dir, e))?;
        write_atomic(&dir.join(CACHED_MODEL), bytes)?;
        write_atomic(
            &dir.join(CACHED_METADATA),
            model.metadata.to_json().as_bytes(),
        )?;
        match &model.etag {
            Some(tag) => write_atomic(&dir.join(CACHED_ETAG), tag.as_bytes()),
            None => match std::fs::remove_file(dir.join(CACHED_ETAG)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(DeviceError::io(&dir.join(CACHED_ETAG), e))
                }
                _ => Ok(()),
            },
        }
    }
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DeviceError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| DeviceError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DeviceError::io(path, e))
}

/// Steps 2–6 of the gate: a verified model or the reason it is refused.
fn verify(
    bytes: &[u8],
    metadata: ModelMetadata,
    etag: Option<String>,
    pool_size: usize,
    max_tolerance: f64,
) -> Result<LoadedModel, DeviceError> {
    let started = Instant::now();
    metadata.check_consistency()?;
    if metadata.variant != Variant::Float32 {
        return Err(DeviceError::InvalidModel {
            reason: format!(
                "variant {:?} is for LiteRT; the device runs the float32 file",
                metadata.variant
            ),
        });
    }
    if metadata.feature_names != FEATURE_NAMES {
        return Err(DeviceError::InvalidMetadata {
            reason: format!(
                "features {:?} differ from the app's {:?}",
                metadata.feature_names, FEATURE_NAMES
            ),
        });
    }
    let actual = sha256_hex(bytes);
    if !actual.eq_ignore_ascii_case(&metadata.sha256) {
        return Err(DeviceError::Checksum {
            expected: metadata.sha256.clone(),
            actual,
        });
    }
    if bytes.len() as u64 != metadata.size {
        return Err(DeviceError::InvalidMetadata {
            reason: format!(
                "file is {} bytes, metadata says {}",
                bytes.len(),
                metadata.size
            ),
        });
    }
    let summary = check_tflite(bytes)?;
    if summary.n_features != metadata.feature_names.len() || summary.int8_weights {
        return Err(DeviceError::InvalidModel {
            reason: format!(
                "file takes {} features{}, metadata names {}",
                summary.n_features,
                if summary.int8_weights {
                    " with int8 weights"
                } else {
                    ""
                },
                metadata.feature_names.len()
            ),
        });
    }
    let plan = compile(bytes)?;
    let pool = InterpreterPool::new(plan, pool_size);
    let tolerance = metadata.golden_tolerance.min(max_tolerance);
    {
        let mut state = pool.acquire(Duration::from_secs(5))?;
        for (index, golden) in metadata.golden.iter().enumerate() {
            let actual = f64::from(state.run(&golden.input)?);
            let error = (actual - golden.probability).abs();
            if error.is_nan() || error > tolerance {
                return Err(DeviceError::GoldenMismatch {
                    index,
                    expected: golden.probability,
                    actual,
                    tolerance,
                });
            }
        }
    }
    Ok(LoadedModel {
        file_size: bytes.len(),
        metadata,
        etag,
        load_time: started.elapsed(),
        pool,
    })
}
