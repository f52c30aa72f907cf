//! `momentum-device`: plays a phone. Gets the success model (from a running server, local
//! files, the offline cache, or the built-in demo), reads one user's events from a CSV as the
//! simulator writes it, predicts offline, and prints the prediction with the interpreter pool's
//! latency statistics as JSON.
//!
//! ```text
//! momentum-device --server http://127.0.0.1:8080 --events events.csv --user u42 [--goal g7]
//! momentum-device --model model.tflite --metadata model.json --events events.csv --user u42
//! momentum-device --demo --events events.csv --user u42 --runs 10000 --threads 4
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde_json::json;

use momentum_device::fixtures;
use momentum_device::{
    events, Clock, Connection, Device, DeviceError, FeatureStore, FeatureStoreConfig,
    ManagerConfig, ManualClock, ModelManager, ModelServer, NetworkPolicy, SystemClock, UreqClient,
};
use momentum_models::export::{ModelKey, Variant};

/// Environment variable holding the model key (64 hex digits), as an alternative to `--key`.
const KEY_ENV: &str = "MOMENTUM_MODEL_KEY";

#[derive(Debug, Parser)]
#[command(
    name = "momentum-device",
    about = "Play a phone: sync the model, predict offline"
)]
struct Args {
    /// Server to sync the model from, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    server: Option<String>,
    /// A `.tflite` file to load instead of (or before) syncing.
    #[arg(long, requires = "metadata")]
    model: Option<PathBuf>,
    /// The metadata JSON of `--model`.
    #[arg(long, requires = "model")]
    metadata: Option<PathBuf>,
    /// Use the built-in demo model (synthetic training data).
    #[arg(long, conflicts_with = "model")]
    demo: bool,
    /// Model name on the server.
    #[arg(long, default_value = "success")]
    model_name: String,
    /// AES-256-GCM key of encrypted downloads, 64 hex digits (default: $MOMENTUM_MODEL_KEY).
    #[arg(long)]
    key: Option<String>,
    /// Directory keeping the accepted model for offline starts.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// File persisting the feature store.
    #[arg(long)]
    feature_store: Option<PathBuf>,
    /// The phone is on a cellular connection.
    #[arg(long)]
    cellular: bool,
    /// Download models on Wi-Fi only.
    #[arg(long)]
    wifi_only: bool,
    /// Events CSV: event_id,user_id,item_id,kind,value,ts (ts in unix ms).
    #[arg(long)]
    events: PathBuf,
    /// The user to predict for.
    #[arg(long)]
    user: String,
    /// A goal (item id) to report the status of.
    #[arg(long)]
    goal: Option<String>,
    /// "Now": unix ms, `latest` (the CSV's latest event) or `system`.
    #[arg(long, default_value = "latest")]
    now: String,
    /// Inferences to run for the latency statistics.
    #[arg(long, default_value_t = 1000)]
    runs: usize,
    /// Threads running them (the pool bounds concurrent interpreters).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Interpreter pool size.
    #[arg(long, default_value_t = 3)]
    pool_size: usize,
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    if let Err(e) = run(Args::parse()) {
        eprintln!("momentum-device: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), DeviceError> {
    let key = match args.key.clone().or_else(|| std::env::var(KEY_ENV).ok()) {
        Some(hex) => Some(ModelKey::from_hex(&hex)?),
        None => None,
    };
    let models = ModelManager::new(ManagerConfig {
        model_name: args.model_name.clone(),
        pool_size: args.pool_size,
        key,
        cache_dir: args.cache_dir.clone(),
        ..ManagerConfig::default()
    });

    let mut notes: Vec<String> = Vec::new();
    match models.load_cached() {
        Ok(Some(v)) => notes.push(format!("cached model v{v} loaded")),
        Ok(None) => {}
        Err(e) => notes.push(format!("cached model refused: {e}")),
    }
    if let (Some(model), Some(metadata)) = (&args.model, &args.metadata) {
        let v = models.load_files(model, metadata)?;
        notes.push(format!("model v{v} loaded from {}", model.display()));
    }
    if args.demo {
        let exported = fixtures::demo_export(&fixtures::demo_model(), 1, Variant::Float32);
        let v = models.load_bytes(&exported.bytes, exported.metadata)?;
        notes.push(format!("demo model v{v} loaded"));
    }
    let mut sync = serde_json::Value::Null;
    if let Some(url) = &args.server {
        let server = ModelServer::new(
            url,
            Box::new(UreqClient::new(Duration::from_secs(10), 64 << 20)),
        );
        let policy = NetworkPolicy {
            connection: if args.cellular {
                Connection::Cellular
            } else {
                Connection::Wifi
            },
            wifi_only: args.wifi_only,
        };
        sync = match models.sync(&server, policy) {
            Ok(outcome) => json!(format!("{outcome:?}")),
            // Offline-first: a failed sync is reported, and whatever model we have serves.
            Err(e) => json!(format!("failed: {e}")),
        };
    }
    if models.version().is_none() {
        return Err(DeviceError::NoModel);
    }

    let file = std::fs::File::open(&args.events).map_err(|e| DeviceError::io(&args.events, e))?;
    let user = events::read_user_log(std::io::BufReader::new(file), &args.user)?;
    let now_ms = match args.now.as_str() {
        "system" => SystemClock.now_ms(),
        "latest" => user.latest_ts_ms.unwrap_or_else(|| SystemClock.now_ms()),
        ms => ms.parse().map_err(|_| DeviceError::InvalidInput {
            reason: format!("--now {ms:?} is not unix ms, `latest` or `system`"),
        })?,
    };
    let clock = Arc::new(ManualClock::new(now_ms));
    let (features, report) = FeatureStore::open(
        FeatureStoreConfig {
            path: args.feature_store.clone(),
            ..FeatureStoreConfig::default()
        },
        clock,
    );
    if let Some(warning) = report.warning {
        notes.push(warning);
    }
    let device = Device::new(models, features);
    let goal = match &args.goal {
        Some(item) => Some(user.goal(item).ok_or_else(|| DeviceError::InvalidInput {
            reason: format!("user {} never acted on goal {item}", args.user),
        })?),
        None => None,
    };
    let prediction = device.predict_success(&args.user, goal, &user.log)?;

    // Latency: `runs` inferences over `threads` threads through the pool.
    let row = prediction.features.to_array();
    let threads = args.threads.max(1);
    let per_thread = args.runs.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let device = &device;
                scope.spawn(move || {
                    (0..per_thread).try_for_each(|_| {
                        device
                            .models
                            .run_inference(&row, Duration::from_secs(5))
                            .map(|_| ())
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or(Ok(())))
    })?;
    device.features.persist()?;

    let model = device.models.current().ok_or(DeviceError::NoModel)?;
    let out = json!({
        "user_id": args.user,
        "goal_id": args.goal,
        "now_ms": now_ms,
        "events": user.log.len(),
        "prediction": prediction,
        "model": {
            "name": model.metadata.name,
            "version": model.version(),
            "sha256": model.metadata.sha256,
            "created_ms": model.metadata.created_ms,
        },
        "sync": sync,
        "model_stats": device.models.stats(),
        "feature_store": device.features.stats(),
        "notes": notes,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&out).unwrap_or_else(|_| out.to_string())
    );
    Ok(())
}
