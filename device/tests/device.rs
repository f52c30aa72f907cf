//! The device crate end to end: export → verify → serve, refusals, the pool bound, updates
//! from a (fake) server, the feature store, and agreement with the Rust model. One test binary
//! on purpose: tract is slow to link.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::Duration;

use momentum_device::fixtures::{self, NOW_MS};
use momentum_device::server::{ENCRYPTION_AES_GCM, ENCRYPTION_HEADER, MODEL_VERSION_HEADER};
use momentum_device::*;
use momentum_models::clock::DAY_MS;
use momentum_models::events::EventKind;
use momentum_models::export::quant::HybridGraph;
use momentum_models::export::{encrypt, ExportedModel, ModelKey, ModelMetadata, Variant};
use momentum_models::features::{
    self, recommended_actions, Activity, FeatureParams, Features, FEATURE_COUNT,
};
use momentum_models::predict::logistic::LogisticRegression;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TIMEOUT: Duration = Duration::from_secs(5);

fn model() -> &'static LogisticRegression {
    static MODEL: OnceLock<LogisticRegression> = OnceLock::new();
    MODEL.get_or_init(fixtures::demo_model)
}

fn exported(version: u64) -> ExportedModel {
    fixtures::demo_export(model(), version, Variant::Float32)
}

fn manager() -> ModelManager {
    ModelManager::new(ManagerConfig::default())
}

#[test]
fn float32_export_reproduces_the_rust_model_on_1000_rows() {
    let m = model();
    let e = exported(1);
    let manager = manager();
    assert_eq!(manager.load_bytes(&e.bytes, e.metadata.clone()).unwrap(), 1);

    let mut rng = StdRng::seed_from_u64(11);
    let s = &m.standardizer;
    let mut rows: Vec<Vec<f64>> = fixtures::check_rows(m, 500, 5)
        .iter()
        .map(|r| r.to_vec())
        .collect();
    while rows.len() < 1000 {
        rows.push(
            (0..FEATURE_COUNT)
                .map(|j| s.mean[j] + s.std[j] * rng.gen_range(-3.0..3.0))
                .collect(),
        );
    }
    let mut worst = 0.0f64;
    for row in &rows {
        // The file takes float32: compare on the float32-rounded row.
        let rounded: Vec<f64> = row.iter().map(|&v| f64::from(v as f32)).collect();
        let tract = manager.run_inference(&rounded, TIMEOUT).unwrap();
        worst = worst.max((tract - m.predict_proba(&rounded)).abs());
    }
    assert!(worst <= 1e-5, "largest difference {worst:e}");
    let stats = manager.stats();
    assert_eq!(stats.latency.count, 1000);
    assert!(stats.latency.p50_us > 0.0 && stats.latency.p99_us >= stats.latency.p50_us);
    assert!(stats.load_ms.unwrap() > 0.0);
    assert!(stats.memory_bytes >= e.bytes.len());
    assert_eq!(stats.pool_created, 1);
}

#[test]
fn int8_export_stays_within_1e2_of_the_rust_model_and_is_refused_by_tract() {
    let m = model();
    let e = fixtures::demo_export(m, 1, Variant::Int8DynamicRange);
    let graph = HybridGraph::new(m).unwrap();
    let mut worst = 0.0f64;
    for row in fixtures::check_rows(m, 500, 5) {
        let x: Vec<f32> = row.iter().map(|&v| v as f32).collect();
        let exact = m.predict_proba(&x.iter().map(|&v| f64::from(v)).collect::<Vec<_>>());
        worst = worst.max((f64::from(graph.predict(&x)) - exact).abs());
    }
    assert!(worst < 1e-2, "int8 emulation error {worst}");
    let err = manager().load_bytes(&e.bytes, e.metadata).unwrap_err();
    assert!(err.to_string().contains("LiteRT"), "{err}");
}

/// Loads v1, then offers v2 damaged in `damage`; v2 must be refused with an error matching
/// `expect`, and v1 must keep serving.
fn refused_while_v1_serves(
    damage: impl FnOnce(&mut Vec<u8>, &mut ModelMetadata),
    key: Option<ModelKey>,
    encrypted: bool,
    expect: impl Fn(&DeviceError) -> bool,
) {
    let manager = ModelManager::new(ManagerConfig {
        key: key.clone(),
        ..ManagerConfig::default()
    });
    let v1 = exported(1);
    manager.load_bytes(&v1.bytes, v1.metadata.clone()).unwrap();
    let row = v1.metadata.golden[1]
        .input
        .iter()
        .map(|&v| f64::from(v))
        .collect::<Vec<_>>();
    let before = manager.run_inference(&row, TIMEOUT).unwrap();

    let v2 = exported(2);
    let (mut bytes, mut metadata) = (v2.bytes, v2.metadata);
    damage(&mut bytes, &mut metadata);
    let result = if encrypted {
        manager.load_encrypted(&bytes, metadata)
    } else {
        manager.load_bytes(&bytes, metadata)
    };
    let err = result.expect_err("the damaged model must be refused");
    assert!(expect(&err), "unexpected error: {err}");
    assert!(!err.to_string().is_empty());
    assert_eq!(manager.version(), Some(1), "v1 keeps serving after: {err}");
    assert_eq!(manager.run_inference(&row, TIMEOUT).unwrap(), before);
    assert_eq!(manager.stats().rejected, 1);
}

#[test]
fn corrupted_files_are_refused_and_v1_keeps_serving() {
    // Damaged in transit: the sha256 in the metadata no longer matches.
    refused_while_v1_serves(
        |bytes, _| {
            let i = bytes.len() / 2;
            bytes[i] ^= 0x40;
        },
        None,
        false,
        |e| matches!(e, DeviceError::Checksum { .. }),
    );
    // Damaged before hashing (a bad file with a "valid" checksum): the structure check or
    // the golden vectors catch it. Truncation breaks the flatbuffer.
    refused_while_v1_serves(
        |bytes, md| {
            bytes.truncate(bytes.len() - 100);
            md.size = bytes.len() as u64;
            md.sha256 = momentum_models::export::sha256_hex(bytes);
        },
        None,
        false,
        |e| matches!(e, DeviceError::InvalidModel { .. }),
    );
    // Not a TFLite file at all.
    refused_while_v1_serves(
        |bytes, md| {
            *bytes = b"<html>502 Bad Gateway</html>".to_vec();
            md.size = bytes.len() as u64;
            md.sha256 = momentum_models::export::sha256_hex(bytes);
        },
        None,
        false,
        |e| matches!(e, DeviceError::InvalidModel { reason } if reason.contains("TFL3")),
    );
}

#[test]
fn every_single_byte_corruption_is_refused_or_harmless() {
    // Re-hashed corruptions of every 5th byte: never a panic, and whatever loads still passes
    // its golden vectors (so it computes what the metadata promises).
    let v1 = exported(1);
    let manager = manager();
    for i in (0..v1.bytes.len()).step_by(5) {
        let mut bytes = v1.bytes.clone();
        bytes[i] = bytes[i].wrapping_add(0x3b);
        let mut md = v1.metadata.clone();
        md.sha256 = momentum_models::export::sha256_hex(&bytes);
        let _ = manager.load_bytes(&bytes, md);
    }
}

#[test]
fn wrong_sha256_is_refused() {
    refused_while_v1_serves(
        |_, md| md.sha256 = "0".repeat(64),
        None,
        false,
        |e| matches!(e, DeviceError::Checksum { expected, .. } if expected == &"0".repeat(64)),
    );
}

#[test]
fn wrong_key_and_missing_key_are_refused() {
    let right = ModelKey::generate();
    refused_while_v1_serves(
        |bytes, _| *bytes = encrypt(&ModelKey::generate(), bytes).unwrap(),
        Some(right.clone()),
        true,
        |e| {
            matches!(e, DeviceError::Decryption(_))
                && e.to_string().contains("wrong model key or corrupted data")
        },
    );
    refused_while_v1_serves(
        |bytes, _| *bytes = encrypt(&ModelKey::generate(), bytes).unwrap(),
        None,
        true,
        |e| matches!(e, DeviceError::MissingKey),
    );
    // The right key works.
    let manager = ModelManager::new(ManagerConfig {
        key: Some(right.clone()),
        ..ManagerConfig::default()
    });
    let v2 = exported(2);
    let sealed = encrypt(&right, &v2.bytes).unwrap();
    assert_eq!(manager.load_encrypted(&sealed, v2.metadata).unwrap(), 2);
}

#[test]
fn golden_vector_mismatch_is_refused() {
    refused_while_v1_serves(
        |_, md| md.golden[3].probability = (md.golden[3].probability + 0.01).min(1.0),
        None,
        false,
        |e| matches!(e, DeviceError::GoldenMismatch { index: 3, .. }),
    );
    // A file of another model with this model's metadata: every output differs.
    refused_while_v1_serves(
        |bytes, md| {
            let mut other = model().clone();
            other.bias += 0.5;
            *bytes = fixtures::demo_export(&other, 2, Variant::Float32).bytes;
            md.size = bytes.len() as u64;
            md.sha256 = momentum_models::export::sha256_hex(bytes);
        },
        None,
        false,
        |e| matches!(e, DeviceError::GoldenMismatch { index: 0, .. }),
    );
    // Metadata for other features.
    refused_while_v1_serves(
        |_, md| md.feature_names.swap(0, 1),
        None,
        false,
        |e| matches!(e, DeviceError::InvalidMetadata { .. }),
    );
}

#[test]
fn the_pool_never_exceeds_its_size_under_16_callers() {
    let manager = Arc::new(manager());
    let e = exported(1);
    manager.load_bytes(&e.bytes, e.metadata.clone()).unwrap();
    let holders = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    {
        let (holders, most) = (holders.clone(), most.clone());
        manager.set_hold_hook(Some(Arc::new(move || {
            let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_micros(300));
            holders.fetch_sub(1, Ordering::SeqCst);
        })));
    }
    let row: Vec<f64> = e.metadata.golden[0]
        .input
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    let barrier = Arc::new(Barrier::new(16));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (manager, barrier, row) = (manager.clone(), barrier.clone(), row.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..40 {
                    manager
                        .run_inference(&row, Duration::from_secs(30))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = manager.stats();
    assert!(
        most.load(Ordering::SeqCst) <= 3,
        "{} holders",
        most.load(Ordering::SeqCst)
    );
    assert_eq!(
        most.load(Ordering::SeqCst),
        3,
        "16 callers must have filled the pool"
    );
    assert_eq!(
        (stats.pool_peak, stats.pool_created, stats.pool_in_use),
        (3, 3, 0)
    );
    assert_eq!(stats.latency.count, 16 * 40);
    assert_eq!(stats.failed_inferences, 0);
}

#[test]
fn callers_time_out_when_the_pool_stays_busy() {
    let manager = Arc::new(ModelManager::new(ManagerConfig {
        pool_size: 1,
        ..ManagerConfig::default()
    }));
    let e = exported(1);
    manager.load_bytes(&e.bytes, e.metadata.clone()).unwrap();
    let row: Vec<f64> = e.metadata.golden[0]
        .input
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    let entered = Arc::new(Barrier::new(2));
    {
        let entered = entered.clone();
        let first = Arc::new(AtomicUsize::new(0));
        manager.set_hold_hook(Some(Arc::new(move || {
            if first.fetch_add(1, Ordering::SeqCst) == 0 {
                entered.wait();
                std::thread::sleep(Duration::from_millis(300));
            }
        })));
    }
    let holder = {
        let (manager, row) = (manager.clone(), row.clone());
        std::thread::spawn(move || manager.run_inference(&row, TIMEOUT).unwrap())
    };
    entered.wait();
    let err = manager
        .run_inference(&row, Duration::from_millis(20))
        .unwrap_err();
    assert!(matches!(err, DeviceError::Timeout { .. }), "{err}");
    holder.join().unwrap();
    assert_eq!(manager.stats().timeouts, 1);
    // Bad input is refused, not run.
    assert!(matches!(
        manager.run_inference(&row[..3], TIMEOUT),
        Err(DeviceError::InvalidInput { .. })
    ));
}

/// A fake server: canned responses by URL, and a log of the requests.
#[derive(Default)]
struct FakeServer {
    routes: Mutex<HashMap<String, HttpResponse>>,
    requests: Mutex<Vec<Request>>,
}

/// A request the fake server saw: URL and headers.
type Request = (String, Vec<(String, String)>);

struct FakeClient(Arc<FakeServer>);

impl HttpClient for FakeClient {
    fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<HttpResponse, DeviceError> {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .requests
            .lock()
            .unwrap()
            .push((url.to_string(), headers.clone()));
        let response = self.0.routes.lock().unwrap().get(url).cloned();
        let response = response.ok_or_else(|| DeviceError::Server {
            reason: format!("connection refused: {url}"),
        })?;
        let etag = response.header("etag").map(str::to_string);
        let if_none_match = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("if-none-match"))
            .map(|(_, v)| v.clone());
        if etag.is_some() && etag == if_none_match {
            return Ok(HttpResponse {
                status: 304,
                ..HttpResponse::default()
            });
        }
        Ok(response)
    }
}

impl FakeServer {
    fn publish(&self, e: &ExportedModel, body: Vec<u8>, encrypted: bool) {
        let v = e.metadata.version;
        let latest = serde_json::json!({
            "version": v,
            "sha256": e.metadata.sha256,
            "size": e.metadata.size,
            "encrypted": encrypted,
            "metadata": serde_json::from_str::<serde_json::Value>(&e.metadata.to_json()).unwrap(),
        });
        let mut routes = self.routes.lock().unwrap();
        routes.insert(
            "http://phone-test/v1/models/success/latest".to_string(),
            HttpResponse {
                status: 200,
                headers: vec![],
                body: latest.to_string().into_bytes(),
            },
        );
        let mut headers = vec![("etag".to_string(), format!("\"{}\"", e.metadata.sha256))];
        if encrypted {
            headers.push((
                ENCRYPTION_HEADER.to_string(),
                ENCRYPTION_AES_GCM.to_string(),
            ));
        }
        routes.insert(
            format!("http://phone-test/v1/models/success/versions/{v}/model.tflite"),
            HttpResponse {
                status: 200,
                headers,
                body,
            },
        );
    }

    fn urls(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|(u, _)| u.clone())
            .collect()
    }
}

#[test]
fn sync_downloads_only_newer_versions_and_respects_the_network_policy() {
    let fake = Arc::new(FakeServer::default());
    let server = ModelServer::new("http://phone-test/", Box::new(FakeClient(fake.clone())));
    let dir = tempfile::tempdir().unwrap();
    let manager = ModelManager::new(ManagerConfig {
        cache_dir: Some(dir.path().join("models")),
        ..ManagerConfig::default()
    });
    let wifi = NetworkPolicy::any();
    let cellular_wifi_only = NetworkPolicy {
        connection: Connection::Cellular,
        wifi_only: true,
    };

    // Nothing published: a clear server error, nothing loaded.
    assert!(matches!(
        manager.sync(&server, wifi),
        Err(DeviceError::Server { .. })
    ));
    assert_eq!(
        manager
            .sync(
                &server,
                NetworkPolicy {
                    connection: Connection::Offline,
                    wifi_only: false
                }
            )
            .unwrap(),
        SyncOutcome::Offline
    );

    let v1 = exported(1);
    fake.publish(&v1, v1.bytes.clone(), false);
    assert_eq!(
        manager.sync(&server, cellular_wifi_only).unwrap(),
        SyncOutcome::Deferred { available: 1 }
    );
    assert_eq!(manager.version(), None);
    assert_eq!(
        manager.sync(&server, wifi).unwrap(),
        SyncOutcome::Updated {
            previous: None,
            version: 1
        }
    );
    // Up to date: only the version check, no download.
    fake.requests.lock().unwrap().clear();
    assert_eq!(
        manager.sync(&server, wifi).unwrap(),
        SyncOutcome::UpToDate { version: 1 }
    );
    assert_eq!(fake.urls(), ["http://phone-test/v1/models/success/latest"]);
    let sent = fake.requests.lock().unwrap()[0].1.clone();
    assert!(sent.contains(&(MODEL_VERSION_HEADER.to_string(), "1".to_string())));

    // v2 on the server, damaged in transit: refused, v1 serves.
    let v2 = exported(2);
    let mut damaged = v2.bytes.clone();
    damaged[200] ^= 1;
    fake.publish(&v2, damaged, false);
    let err = manager.sync(&server, wifi).unwrap_err();
    assert!(matches!(err, DeviceError::Checksum { .. }), "{err}");
    assert_eq!(manager.version(), Some(1));
    // The download sent v1's entity tag.
    let download = fake.requests.lock().unwrap().last().unwrap().1.clone();
    assert!(download.contains(&(
        "If-None-Match".to_string(),
        format!("\"{}\"", v1.metadata.sha256)
    )));

    // Republished correctly: installed.
    fake.publish(&v2, v2.bytes.clone(), false);
    assert_eq!(
        manager.sync(&server, wifi).unwrap(),
        SyncOutcome::Updated {
            previous: Some(1),
            version: 2
        }
    );
    let stats = manager.stats();
    assert_eq!((stats.cache_hits, stats.cache_misses), (1, 3));
    assert_eq!(stats.cache_hit_rate, 0.25);
    assert_eq!(stats.rejected, 1);

    // A fresh start with no network: the cached model serves.
    let offline = ModelManager::new(ManagerConfig {
        cache_dir: Some(dir.path().join("models")),
        ..ManagerConfig::default()
    });
    assert_eq!(offline.load_cached().unwrap(), Some(2));
    assert_eq!(
        offline.current().unwrap().etag,
        Some(format!("\"{}\"", v2.metadata.sha256))
    );
    // GDPR: clear drops the model and the files.
    offline.clear().unwrap();
    assert_eq!(offline.version(), None);
    assert!(matches!(
        offline.run_inference(&[0.0; FEATURE_COUNT], TIMEOUT),
        Err(DeviceError::NoModel)
    ));
    assert_eq!(offline.load_cached().unwrap(), None);
}

#[test]
fn sync_decrypts_encrypted_downloads() {
    let key = ModelKey::generate();
    let fake = Arc::new(FakeServer::default());
    let server = ModelServer::new("http://phone-test", Box::new(FakeClient(fake.clone())));
    let v1 = exported(1);
    fake.publish(&v1, encrypt(&key, &v1.bytes).unwrap(), true);

    let without_key = manager();
    assert!(matches!(
        without_key.sync(&server, NetworkPolicy::any()),
        Err(DeviceError::MissingKey)
    ));
    let wrong_key = ModelManager::new(ManagerConfig {
        key: Some(ModelKey::generate()),
        ..ManagerConfig::default()
    });
    assert!(matches!(
        wrong_key.sync(&server, NetworkPolicy::any()),
        Err(DeviceError::Decryption(_))
    ));
    let with_key = ModelManager::new(ManagerConfig {
        key: Some(key),
        ..ManagerConfig::default()
    });
    assert_eq!(
        with_key.sync(&server, NetworkPolicy::any()).unwrap(),
        SyncOutcome::Updated {
            previous: None,
            version: 1
        }
    );
}

// --- Feature store -----------------------------------------------------------------------

fn store(clock: Arc<ManualClock>, config: FeatureStoreConfig) -> FeatureStore {
    FeatureStore::new(config, clock)
}

fn log_of(days: i64, seed: u64) -> Vec<Activity> {
    let mut rng = StdRng::seed_from_u64(seed);
    fixtures::synthetic_log(&mut rng, 0.7, days, NOW_MS)
}

#[test]
fn feature_store_matches_models_compute_and_honours_the_ttl() {
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let fs = store(clock.clone(), FeatureStoreConfig::default());
    let log = log_of(90, 1);
    let first = fs.features("alice", &log);
    assert!(!first.cached);
    let expected = features::compute(&log, NOW_MS, None, &FeatureParams::default());
    assert_eq!(first.features.to_array(), expected);

    clock.advance(Duration::from_secs(59 * 60));
    let again = fs.features("alice", &log);
    assert!(again.cached && again.fresh);
    assert_eq!(again.as_of_ms, NOW_MS);

    // A new event invalidates at once.
    let mut longer = log.clone();
    longer.push(Activity::new(NOW_MS + 60_000, EventKind::Checkin, Some(0)));
    let recomputed = fs.features("alice", &longer);
    assert!(!recomputed.cached);
    assert_eq!(
        recomputed.features.to_array(),
        features::compute(&longer, clock.now_ms(), None, &FeatureParams::default())
    );

    // Past the TTL: recomputed as of the new now.
    clock.advance(Duration::from_secs(60 * 60));
    let expired = fs.get("alice").unwrap();
    assert!(!expired.fresh);
    let fresh = fs.features("alice", &longer);
    assert!(!fresh.cached);
    assert_eq!(fresh.as_of_ms, clock.now_ms());
    let stats = fs.stats();
    assert_eq!((stats.hits, stats.misses), (1, 3));

    assert!(fs.remove_user("alice"));
    assert!(fs.get("alice").is_none());
}

#[test]
fn feature_store_evicts_the_oldest_when_over_its_size() {
    let clock = Arc::new(ManualClock::new(NOW_MS));
    // Room for exactly 3 entries of 2-byte ids: 40 + 3 · (106 + 2).
    let fs = store(
        clock.clone(),
        FeatureStoreConfig {
            max_bytes: 40 + 3 * 108,
            ..FeatureStoreConfig::default()
        },
    );
    for (i, user) in ["u1", "u2", "u3", "u4"].iter().enumerate() {
        fs.insert(user, Features::default(), NOW_MS + i as i64);
        clock.advance(Duration::from_secs(1));
    }
    assert!(fs.get("u1").is_none(), "the oldest is evicted");
    for user in ["u2", "u3", "u4"] {
        assert!(fs.get(user).is_some(), "{user}");
    }
    let stats = fs.stats();
    assert_eq!((stats.entries, stats.evictions), (3, 1));
    assert!(stats.bytes <= 40 + 3 * 108);
    // Refreshing u2 makes u3 the oldest.
    fs.insert("u2", Features::default(), NOW_MS);
    fs.insert("u5", Features::default(), NOW_MS);
    assert!(fs.get("u3").is_none() && fs.get("u2").is_some());
}

#[test]
fn feature_store_persists_and_survives_damaged_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("features.bin");
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let config = FeatureStoreConfig {
        path: Some(path.clone()),
        ..FeatureStoreConfig::default()
    };
    let fs = store(clock.clone(), config.clone());
    let log = log_of(90, 2);
    let alice = fs.features("alice", &log).features;
    fs.features("bob", &log_of(30, 3));
    let written = fs.persist().unwrap();
    assert_eq!(written, std::fs::metadata(&path).unwrap().len() as usize);
    assert_eq!(written, fs.stats().bytes);

    let (reopened, report) = FeatureStore::open(config.clone(), clock.clone());
    assert_eq!((report.loaded, report.warning.clone()), (2, None));
    assert_eq!(reopened.get("alice").unwrap().features, alice);
    // Offline and fresh: the cache answers without recomputing.
    assert!(reopened.features("alice", &log).cached);

    let good = std::fs::read(&path).unwrap();
    let damages: Vec<(&str, Vec<u8>)> = vec![
        ("flipped byte", {
            let mut b = good.clone();
            b[20] ^= 0xff;
            b
        }),
        ("truncated", good[..good.len() - 7].to_vec()),
        ("empty", Vec::new()),
        (
            "garbage",
            b"not a feature store at all, but long enough to parse".to_vec(),
        ),
    ];
    for (what, bytes) in damages {
        std::fs::write(&path, &bytes).unwrap();
        let (fs, report) = FeatureStore::open(config.clone(), clock.clone());
        assert_eq!(fs.stats().entries, 0, "{what}");
        assert!(report.warning.is_some(), "{what} must warn");
        assert!(!path.exists(), "{what}: the damaged file is discarded");
    }

    // GDPR: clear deletes the file.
    fs.persist().unwrap();
    fs.clear().unwrap();
    assert!(!path.exists());
    assert_eq!(fs.stats().entries, 0);
}

#[test]
fn device_and_server_give_the_same_features_and_probability() {
    let e = exported(1);
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let device = Device::new(
        ModelManager::new(ManagerConfig::default()),
        FeatureStore::new(FeatureStoreConfig::default(), clock.clone()),
    );
    device.models.load_bytes(&e.bytes, e.metadata).unwrap();
    let m = model();
    for seed in 0..20 {
        let mut rng = StdRng::seed_from_u64(seed);
        let engagement = rng.gen_range(0.0..1.0);
        let log = fixtures::synthetic_log(&mut rng, engagement, 90, NOW_MS);
        let user = format!("u{seed}");
        let p = device.predict_success(&user, Some(0), &log).unwrap();
        // What the server computes: the same function, as of the same now, no signup.
        let server_features = Features::compute(&log, NOW_MS, None, &FeatureParams::default());
        assert_eq!(p.features, server_features);
        let rust = m.predict_proba(&server_features.to_array());
        assert!(
            (p.probability - rust).abs() < 1e-5,
            "{} vs {rust}",
            p.probability
        );
        assert!((p.confidence - (2.0 * p.probability - 1.0).abs()).abs() < 1e-15);
        let codes: Vec<&str> = p.recommended_actions.iter().map(|a| a.code).collect();
        let server_codes: Vec<&str> = recommended_actions(&server_features, 3)
            .iter()
            .map(|a| a.code)
            .collect();
        assert_eq!(codes, server_codes);
        assert_eq!(p.model_version, 1);
        assert!(p.goal_status.is_some());
        assert!(
            device
                .predict_success(&user, None, &log)
                .unwrap()
                .features_cached
        );
    }
    device.clear().unwrap();
    assert!(matches!(
        device.predict_success("u1", None, &[]),
        Err(DeviceError::NoModel)
    ));
}

#[test]
fn a_90_day_log_has_sensible_features() {
    let log = log_of(90, 9);
    assert!(log.len() > 100);
    let f = Features::compute(&log, NOW_MS, None, &FeatureParams::default());
    assert!(f.user_experience_days > 80.0 && f.user_experience_days <= 90.0);
    assert!(f.consistency > 0.3);
    assert!(NOW_MS - log[0].ts_ms <= 90 * DAY_MS);
}

/// A one-thread HTTP/1.1 server on loopback serving `routes` (path → body, etag) for at most
/// `max_requests` requests, answering `304` when `If-None-Match` matches.
fn serve(
    routes: HashMap<String, (Vec<u8>, String)>,
    max_requests: usize,
) -> (String, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for stream in listener.incoming().take(max_requests) {
            let mut stream = stream.unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_string();
            let mut if_none_match = None;
            let mut version_header = None;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (k, v) = line.split_once(':').unwrap();
                match k.to_ascii_lowercase().as_str() {
                    "if-none-match" => if_none_match = Some(v.trim().to_string()),
                    "x-model-version" => version_header = Some(v.trim().to_string()),
                    _ => {}
                }
            }
            seen.push(format!("{path} v={}", version_header.unwrap_or_default()));
            let response = match routes.get(&path) {
                Some((_, etag)) if if_none_match.as_deref() == Some(etag.as_str()) => format!(
                    "HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .into_bytes(),
                Some((body, etag)) => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            stream.write_all(&response).unwrap();
        }
        seen
    });
    (base, handle)
}

#[test]
fn ureq_client_syncs_over_real_http() {
    let v1 = exported(1);
    let latest = serde_json::json!({
        "version": 1,
        "sha256": v1.metadata.sha256,
        "size": v1.metadata.size,
        "metadata": serde_json::from_str::<serde_json::Value>(&v1.metadata.to_json()).unwrap(),
    });
    let etag = format!("\"{}\"", v1.metadata.sha256);
    let routes = HashMap::from([
        (
            "/v1/models/success/latest".to_string(),
            (latest.to_string().into_bytes(), "\"latest\"".to_string()),
        ),
        (
            "/v1/models/success/versions/1/model.tflite".to_string(),
            (v1.bytes.clone(), etag.clone()),
        ),
    ]);
    let (base, server_thread) = serve(routes, 5);
    let server = ModelServer::http(&base);
    let manager = manager();
    assert_eq!(
        manager.sync(&server, NetworkPolicy::any()).unwrap(),
        SyncOutcome::Updated {
            previous: None,
            version: 1
        }
    );
    assert_eq!(manager.current().unwrap().etag, Some(etag.clone()));
    assert_eq!(
        manager.sync(&server, NetworkPolicy::any()).unwrap(),
        SyncOutcome::UpToDate { version: 1 }
    );
    // A conditional download of what the device holds: 304, nothing transferred.
    let client = UreqClient::default();
    let url = format!("{base}/v1/models/success/versions/1/model.tflite");
    let response = client.get(&url, &[("If-None-Match", &etag)]).unwrap();
    assert_eq!((response.status, response.body.len()), (304, 0));
    let missing = client.get(&format!("{base}/nope"), &[]).unwrap();
    assert_eq!(missing.status, 404);
    let seen = server_thread.join().unwrap();
    assert_eq!(
        seen,
        [
            "/v1/models/success/latest v=none",
            "/v1/models/success/versions/1/model.tflite v=none",
            "/v1/models/success/latest v=1",
            "/v1/models/success/versions/1/model.tflite v=",
            "/nope v=",
        ]
    );
}
