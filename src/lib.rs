//! Momentum: the machine-learning backend of a goal-tracking app.
//!
//! [`start`] opens the store, starts the actors, binds the HTTP API and returns a [`Server`] to
//! await; `main` and the integration tests (on `127.0.0.1:0`) both go through it. The state is
//! restored (snapshot + log tail) in the background: until then `/readyz` and every `/v1/`
//! route answer `503`. Shutdown has an order: the HTTP server stops accepting and drains
//! in-flight requests (SIGINT/SIGTERM or [`Server::handle`]), the log is flushed and a final
//! snapshot written within `server.shutdown_timeout_secs`, then the actors stop.

pub mod admission;
pub mod analytics;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod error;
pub mod eval;
pub mod experiments;
pub mod fleet;
pub mod jobs;
pub mod journal;
pub mod metrics;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod tls;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::dev::{Server as HttpServerFuture, ServerHandle};
use actix_web::{web, App, HttpServer};
use prometheus::Registry;

use momentum_actors::metrics::ActorMetrics;
use momentum_actors::Engine;
use momentum_models::clock::{Clock, SystemClock};

pub use error::Error;
pub use settings::Settings;

/// Shared by every HTTP worker.
pub struct AppState {
    pub settings: Settings,
    /// The hot state, for reads; changes go through [`AppState::journal`].
    pub engine: Arc<Engine>,
    pub registry: Registry,
    pub http_metrics: metrics::HttpMetrics,
    /// A/B experiments: assignment, served recommendations, attribution.
    pub experiments: experiments::Experiments,
    /// The ordered write path: event log, snapshots, restore, erasure.
    pub journal: journal::Journal,
    /// The snapshot and item-model jobs (started once the state is restored), job metrics.
    pub jobs: jobs::Jobs,
    /// The one clock of the server (analytics, jobs, the fleet and the routes read it).
    pub clock: Arc<dyn Clock>,
    /// Set once the state is restored and the server may take traffic.
    pub ready: AtomicBool,
    /// Predictive analytics: live models, the training and churn-scoring jobs.
    pub analytics: analytics::Analytics,
    /// Set if the start-up restore failed (the server then stops), with the reason.
    pub restore_error: OnceLock<String>,
    /// Model versions reported by devices, model downloads.
    pub fleet: fleet::Fleet,
    /// Requests and body bytes being admitted (see [`admission`]).
    pub load: admission::Load,
    /// The web console: session key and sampled live figures.
    pub console: api::console::Console,
    /// Cluster mode (`cluster.enabled`): the event log producer and the partitions this node
    /// owns; `None` on a single node.
    pub cluster: Option<Arc<cluster::Cluster>>,
    /// Stops the cluster membership thread at shutdown.
    pub cluster_stop: cluster::consumer::Stop,
}

/// A started server.
pub struct Server {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    http: HttpServerFuture,
    state: Arc<AppState>,
}

impl Server {
    /// A handle to stop the server gracefully.
    pub fn handle(&self) -> ServerHandle {
        self.http.handle()
    }

    /// The shared state (tests read metrics and the index through it).
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Runs until a signal or [`ServerHandle::stop`], then flushes the log, writes a final
    /// snapshot and stops the actors.
    pub async fn run(self) -> std::io::Result<()> {
        // actix's own signal handling stops the whole actix System once the HTTP server has
        // drained, which would take the shard arbiters down before the final snapshot: the
        // signals are handled here instead, and only stop the HTTP server.
        let handle = self.http.handle();
        let signals = actix_web::rt::spawn(async move {
            wait_for_shutdown_signal().await;
            tracing::info!("shutdown signal received; draining requests");
            handle.stop(true).await;
        });
        let result = self.http.await;
        signals.abort();
        self.state.ready.store(false, Ordering::Release);
        self.state.cluster_stop.stop();
        if let Some(cluster) = &self.state.cluster {
            cluster.flush(Duration::from_secs(
                self.state.settings.server.shutdown_timeout_secs,
            ));
        }
        let mut stopped = Ok(());
        if self.state.jobs.snapshot.get().is_some() {
            let deadline = Duration::from_secs(self.state.settings.server.shutdown_timeout_secs);
            stopped = jobs::snapshot::final_snapshot(&self.state, deadline).await;
        }
        self.state.engine.stop();
        tracing::info!("momentum stopped");
        if let Some(message) = self.state.restore_error.get() {
            return Err(std::io::Error::other(message.clone()));
        }
        // A final snapshot that failed is an unclean stop: the exit status says so.
        stopped.map_err(std::io::Error::other)?;
        result
    }
}

/// Resolves on SIGINT or SIGTERM (never, if no handler can be installed).
async fn wait_for_shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Binds the listener, starts the actors and the HTTP workers, and restores the state in the
/// background. Must run inside an actix `System` (e.g.
/// `actix_web::rt::System::new().block_on(..)`).
pub async fn start(settings: Settings) -> Result<Server, Error> {
    let tls = settings
        .server
        .tls_enabled()
        .then(|| {
            tls::server_config(
                &settings.server.tls_cert_path,
                &settings.server.tls_key_path,
            )
        })
        .transpose()?;
    let state = build_state(settings).await?;
    let listener = TcpListener::bind(&state.settings.server.bind).map_err(|source| Error::Io {
        context: format!("cannot bind {}", state.settings.server.bind),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| Error::Io {
        context: "local address".into(),
        source,
    })?;
    // Predictive analytics: the training and churn-scoring jobs; the console's sampler.
    analytics::start(&state);
    api::console::start(&state);
    let http = http_server(&state, listener, addr, tls)?;
    restore_then_serve(&state, http.handle());
    Ok(Server { addr, http, state })
}

/// Opens the store and starts everything the routes reach: the engine, the journal,
/// analytics, the jobs' bookkeeping, experiments, the fleet, each with its metrics.
async fn build_state(settings: Settings) -> Result<Arc<AppState>, Error> {
    let registry = Registry::new();
    let actor_metrics = ActorMetrics::new(&registry).map_err(internal)?;
    let http_metrics = metrics::HttpMetrics::new(&registry).map_err(internal)?;
    let experiments =
        experiments::Experiments::new(metrics::AbMetrics::new(&registry).map_err(internal)?);
    let journal_metrics = metrics::JournalMetrics::new(&registry).map_err(internal)?;
    let engine = Arc::new(Engine::start(settings.engine(), actor_metrics));
    let journal = journal::Journal::open(
        engine.clone(),
        settings.store.clone(),
        settings.snapshot.clone(),
        journal_metrics,
        settings.server.retry_after_secs,
    )
    .await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // Predictive analytics: restore the live models from the store.
    let analytics = analytics::Analytics::with_clock(
        settings.analytics(),
        Arc::new(journal.store().clone()),
        &registry,
        clock.clone(),
    )
    .await?;
    let jobs = jobs::Jobs::new(&registry, clock.clone()).map_err(internal)?;
    let fleet = fleet::Fleet::new(
        &registry,
        Duration::from_secs(settings.models.device_window_secs),
    )
    .map_err(internal)?;
    let cluster = if settings.cluster.enabled {
        let metrics =
            metrics::ClusterMetrics::new(&registry, http_metrics.events_duplicate.clone())
                .map_err(internal)?;
        Some(Arc::new(cluster::Cluster::new(
            settings.cluster.clone(),
            metrics,
            settings.server.retry_after_secs,
        )?))
    } else {
        None
    };
    if settings.security.model_key.is_empty() {
        tracing::warn!(
            "security.model_key is not set: models cannot be trained, stored or loaded \
             (set MOMENTUM__SECURITY__MODEL_KEY to 64 hex digits)"
        );
    }
    Ok(Arc::new(AppState {
        settings,
        engine,
        registry,
        http_metrics,
        experiments,
        journal,
        jobs,
        clock,
        ready: AtomicBool::new(false),
        analytics,
        restore_error: OnceLock::new(),
        fleet,
        load: admission::Load::default(),
        console: api::console::Console::new(),
        cluster,
        cluster_stop: cluster::consumer::Stop::default(),
    }))
}

/// The HTTP server on `listener`: middleware (outermost first: admission, 405 bodies, the
/// HTTP contract, forwarding reads to their owner in cluster mode) and one `configure` per
/// resource.
fn http_server(
    state: &Arc<AppState>,
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<rustls::ServerConfig>,
) -> Result<HttpServerFuture, Error> {
    let server = &state.settings.server;
    let workers = match server.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let data = web::Data::from(state.clone());
    let http = HttpServer::new(move || {
        let gate = data.clone().into_inner();
        App::new()
            .app_data(data.clone())
            .app_data(api::json_config())
            .app_data(api::query_config())
            .app_data(api::path_config())
            .wrap(actix_web::middleware::from_fn(api::cluster::forward_reads))
            .wrap(actix_web::middleware::from_fn(api::http_contract))
            .wrap(actix_web::middleware::ErrorHandlers::new().handler(
                actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
                api::method_not_allowed,
            ))
            .wrap(admission::Admission::new(gate.clone()))
            .configure(api::health::configure)
            .configure(api::events::configure)
            .configure(api::items::configure)
            .configure(api::users::configure)
            .configure(api::experiments::configure)
            .configure(api::openapi::configure)
            .configure(api::predictions::configure)
            .configure(api::models::configure)
            .configure(api::interventions::configure)
            .configure(api::console::configure)
            .configure(api::cluster::configure)
            .default_service(web::to(api::not_found))
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(server.shutdown_timeout_secs);
    let tls_enabled = tls.is_some();
    let http = match tls {
        Some(config) => http.listen_rustls_0_23(listener, config),
        None => http.listen(listener),
    }
    .map_err(|source| Error::Io {
        context: "listen".into(),
        source,
    })?
    .run();
    tracing::info!(%addr, workers, tls = tls_enabled, "momentum listening");
    Ok(http)
}

/// Restores the state in the background; then starts the jobs and the log writers and marks
/// the server ready. A failed restore stops the HTTP server with the reason.
fn restore_then_serve(state: &Arc<AppState>, handle: ServerHandle) {
    let state = state.clone();
    actix::spawn(async move {
        match state.journal.restore(state.cluster.is_some()).await {
            Ok(stats) => {
                jobs::start(&state);
                start_log_writers(&state);
                if let Some(cluster) = &state.cluster {
                    // The partitions this node owns are served once replayed (per partition).
                    let rules = cluster::bridge::Rules {
                        max_batch: state.settings.ingest.max_batch,
                        weights: state.settings.weights.clone(),
                        clock: state.clock.clone(),
                    };
                    if let Err(error) = cluster::consumer::start(
                        cluster.clone(),
                        Arc::downgrade(&state),
                        state.engine.clone(),
                        rules,
                        state.cluster_stop.clone(),
                    ) {
                        tracing::error!(%error, "cannot start the cluster membership thread");
                    }
                }
                state.ready.store(true, Ordering::Release);
                tracing::info!(
                    snapshot_users = stats.snapshot_users,
                    replayed_events = stats.replayed_events,
                    "ready"
                );
            }
            Err(error) => {
                tracing::error!(error = %error::Report(&error), "restore failed; stopping");
                // A store the operator must act on says so in its own words; anything else
                // says where it happened.
                let message = match &error {
                    Error::Store {
                        source:
                            store::StoreError::Locked { .. }
                            | store::StoreError::Damaged { .. }
                            | store::StoreError::Corrupt { .. },
                    } => error::Report(&error).to_string(),
                    other => format!("the start-up restore failed: {}", error::Report(other)),
                };
                let _ = state.restore_error.set(message);
                handle.stop(false).await;
            }
        }
    });
}

/// The event log's writer for the durability mode: the `async` window's flusher, or the
/// `sync` group commit.
fn start_log_writers(state: &Arc<AppState>) {
    match state.settings.store.durability {
        store::Durability::Async => {
            let writer = state.clone();
            let every = writer.journal.flush_interval();
            actix::spawn(async move { writer.journal.run_writer(every).await });
        }
        store::Durability::Sync => {
            state.journal.enable_group_commit();
            let writer = state.clone();
            actix::spawn(async move { writer.journal.run_sync_writer().await });
        }
    }
}

fn internal(e: prometheus::Error) -> Error {
    Error::failed("metrics registry", e)
}
