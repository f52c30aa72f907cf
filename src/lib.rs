//! Momentum: the machine-learning backend of a goal-tracking app.
//!
//! [`start`] binds the HTTP API, starts the actors and returns a [`Server`] to await; `main`
//! and the integration tests (on `127.0.0.1:0`) both go through it. Shutdown has an order:
//! the HTTP server stops accepting and drains in-flight requests (SIGINT/SIGTERM or
//! [`Server::handle`]), then the actor threads stop.

pub mod analytics;
pub mod api;
pub mod cli;
pub mod error;
pub mod eval;
pub mod experiments;
pub mod metrics;
pub mod settings;
pub mod store;
pub mod telemetry;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::{Server as HttpServerFuture, ServerHandle, Service};
use actix_web::{web, App, HttpServer};
use prometheus::Registry;

use momentum_actors::metrics::ActorMetrics;
use momentum_actors::Engine;

pub use error::Error;
pub use settings::Settings;

/// Shared by every HTTP worker.
pub struct AppState {
    pub settings: Settings,
    pub engine: Engine,
    pub registry: Registry,
    pub http_metrics: metrics::HttpMetrics,
    /// A/B experiments: assignment, served recommendations, attribution.
    pub experiments: experiments::Experiments,
    /// Set once the state is restored and the server may take traffic.
    pub ready: AtomicBool,
    /// Predictive analytics: live models, trainer, churn scheduler (issue 5).
    pub analytics: analytics::Analytics,
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

    /// Runs until a signal or [`ServerHandle::stop`], then stops the actors.
    pub async fn run(self) -> std::io::Result<()> {
        let result = self.http.await;
        self.state.ready.store(false, Ordering::Release);
        self.state.engine.stop();
        tracing::info!("momentum stopped");
        result
    }
}

/// Binds the listener, starts the actors and the HTTP workers. Must run inside an actix
/// `System` (e.g. `actix_web::rt::System::new().block_on(..)`).
pub async fn start(settings: Settings) -> Result<Server, Error> {
    let registry = Registry::new();
    let actor_metrics = ActorMetrics::new(&registry).map_err(internal)?;
    let http_metrics = metrics::HttpMetrics::new(&registry).map_err(internal)?;
    let experiments =
        experiments::Experiments::new(metrics::AbMetrics::new(&registry).map_err(internal)?);
    let engine = Engine::start(settings.engine(), actor_metrics);
    // ---- Predictive analytics (issue 5): restore the live models from the store. ----
    // TEMPORARY until `AppState.store` lands: analytics gets a private embedded store.
    let analytics_store = Arc::new(analytics::temporary_store().await?);
    let analytics = analytics::Analytics::new(
        analytics::AnalyticsConfig::default(),
        analytics_store,
        &registry,
    )
    .await?;
    // ---- end of predictive analytics ----
    let listener = TcpListener::bind(&settings.server.bind).map_err(|source| Error::Io {
        context: format!("cannot bind {}", settings.server.bind),
        source,
    })?;
    let addr = listener.local_addr().map_err(|source| Error::Io {
        context: "local address".into(),
        source,
    })?;
    let workers = match settings.server.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let shutdown_timeout = settings.server.shutdown_timeout_secs;
    let state = Arc::new(AppState {
        settings,
        engine,
        registry,
        http_metrics,
        experiments,
        ready: AtomicBool::new(false),
        analytics,
    });
    // Predictive analytics (issue 5): the Trainer and the ChurnScheduler actors.
    analytics::start(&state);
    let data = web::Data::from(state.clone());
    let http = HttpServer::new(move || {
        let metrics = data.http_metrics.clone();
        App::new()
            .app_data(data.clone())
            .app_data(api::json_config())
            .app_data(api::query_config())
            .app_data(api::path_config())
            .wrap(actix_web::middleware::ErrorHandlers::new().handler(
                actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
                api::method_not_allowed,
            ))
            .wrap_fn(move |req, srv| {
                let started = Instant::now();
                let method = req.method().as_str().to_owned();
                let metrics = metrics.clone();
                let fut = srv.call(req);
                async move {
                    let res = fut.await?;
                    let route = res
                        .request()
                        .match_pattern()
                        .unwrap_or_else(|| "unmatched".into());
                    metrics
                        .request_duration
                        .with_label_values(&[&route, &method, res.status().as_str()])
                        .observe(started.elapsed().as_secs_f64());
                    Ok(res)
                }
            })
            .configure(api::health::configure)
            .configure(api::events::configure)
            .configure(api::items::configure)
            .configure(api::users::configure)
            .configure(api::experiments::configure)
            .configure(api::openapi::configure)
            .configure(api::predictions::configure)
            .configure(api::models::configure)
            .configure(api::interventions::configure)
            .default_service(web::to(api::not_found))
    })
    .workers(workers)
    .shutdown_timeout(shutdown_timeout)
    .listen(listener)
    .map_err(|source| Error::Io {
        context: "listen".into(),
        source,
    })?
    .run();
    state.ready.store(true, Ordering::Release);
    tracing::info!(%addr, workers, "momentum listening");
    Ok(Server { addr, http, state })
}

fn internal(e: prometheus::Error) -> Error {
    Error::Internal {
        message: e.to_string(),
    }
}
