//! Request admission: what happens to a request before a route handler sees it.
//!
//! In order:
//! 1. Requests outside `/v1/` (health, readiness, metrics) pass straight through, never shed.
//! 2. Until the state is restored, `/v1/` answers `503 not_ready`.
//! 3. Admin routes (those the OpenAPI document marks with the `adminKey` scheme, under `/v1/`
//!    and the console's `/console/api/`) check `X-Admin-Key` (or the console session) first,
//!    so a caller without the key learns nothing about its input and costs no body read.
//! 4. The body is received in full, within `server.body_timeout_secs` (else `408
//!    body_timeout`) and `server.max_body_bytes` (else `413`), into memory reserved from the
//!    server-wide `server.max_body_buffer_bytes` (else `503 overloaded`). A slow client holds
//!    a connection and a little buffer, never an in-flight slot.
//! 5. Only then is one of the `server.max_inflight_requests` slots taken (and, for
//!    `POST /v1/events`, one of `server.max_inflight_ingest`); beyond them `503 overloaded`.
//!
//! The handler then reads the body from memory. Latency is recorded per route template.

use std::collections::HashSet;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::{header, Method};
use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpMessage, ResponseError};
use futures_util::StreamExt;

use crate::error::Error;
use crate::AppState;

/// What admission counts across all connections: requests holding a slot and bytes of bodies
/// being received.
#[derive(Debug, Default)]
pub struct Load {
    /// `/v1/` requests being served (bounded by `server.max_inflight_requests`).
    pub inflight: AtomicUsize,
    /// `POST /v1/events` requests being served (bounded by `server.max_inflight_ingest`).
    pub inflight_ingest: AtomicUsize,
    /// Bytes of request bodies being received (bounded by `server.max_body_buffer_bytes`).
    pub buffered_body_bytes: AtomicUsize,
}

/// The admission middleware (see the module docs).
pub struct Admission {
    state: Arc<AppState>,
}

impl Admission {
    pub fn new(state: Arc<AppState>) -> Self {
        Admission { state }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Admission
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Transform = AdmissionService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(AdmissionService {
            service: Rc::new(service),
            state: self.state.clone(),
        }))
    }
}

pub struct AdmissionService<S> {
    service: Rc<S>,
    state: Arc<AppState>,
}

impl<S, B> Service<ServiceRequest> for AdmissionService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = self.service.clone();
        let state = self.state.clone();
        Box::pin(async move {
            let started = Instant::now();
            let method = req.method().as_str().to_owned();
            let (req, _slot) = match admit(&state, req).await {
                Ok(admitted) => admitted,
                Err((req, error)) => {
                    if matches!(error, Error::Shed { .. } | Error::BodyBufferFull { .. }) {
                        state.http_metrics.shed.inc();
                    }
                    let res = req.into_response(error.error_response());
                    observe(&state, &res, &method, started);
                    return Ok(res);
                }
            };
            let res = service.call(req).await?.map_into_boxed_body();
            observe(&state, &res, &method, started);
            Ok(res)
        })
    }
}

/// Records the request's latency under its route template.
fn observe(state: &AppState, res: &ServiceResponse, method: &str, started: Instant) {
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    state
        .http_metrics
        .request_duration
        .with_label_values(&[&route, method, res.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
}

type Refused = (ServiceRequest, Error);

/// Runs steps 2–5 of the module docs; on success the request carries its body in memory.
async fn admit(
    state: &Arc<AppState>,
    mut req: ServiceRequest,
) -> Result<(ServiceRequest, Option<InflightSlot>), Refused> {
    let api = req.path().starts_with("/v1/");
    if api && !state.ready.load(Ordering::Acquire) {
        return Err((req, Error::NotReady));
    }
    if is_admin_route(&req) {
        if let Err(error) = crate::api::require_admin(req.request(), state) {
            return Err((req, error));
        }
    }
    if has_body(&req) {
        match receive_body(state, &mut req).await {
            Ok(body) => req.set_payload(Payload::from(body)),
            Err(error) => {
                if matches!(error, Error::BodyTimeout { .. }) {
                    state.http_metrics.body_timeouts.inc();
                }
                return Err((req, error));
            }
        }
    }
    if !api {
        return Ok((req, None));
    }
    let ingest = req.method() == Method::POST && req.path() == "/v1/events";
    match InflightSlot::acquire(state, ingest) {
        Ok(slot) => {
            state.fleet.record_request(&req, state.clock.now_ms());
            Ok((req, Some(slot)))
        }
        Err(error) => Err((req, error)),
    }
}

/// Whether the request announces a body (a positive `Content-Length`, or chunked).
fn has_body(req: &ServiceRequest) -> bool {
    let headers = req.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// Reads the whole body within the deadline, the size limit and the shared buffer budget.
async fn receive_body(state: &AppState, req: &mut ServiceRequest) -> Result<Bytes, Error> {
    let server = &state.settings.server;
    let limit = server.max_body_bytes;
    let too_large = || Error::TooLarge {
        code: "body_too_large",
        message: format!("request body exceeds {limit} bytes"),
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut budget = BodyBudget {
        state,
        held: 0,
        retry_after: server.retry_after_secs,
    };
    if let Some(n) = declared {
        budget.reserve(n)?;
    }
    let timeout = Duration::from_secs(server.body_timeout_secs);
    let mut payload = req.take_payload();
    let read = async {
        let mut body = BytesMut::with_capacity(declared.unwrap_or(8192).min(limit));
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| Error::bad("bad_body", e.to_string()))?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            if body.len() + chunk.len() > budget.held {
                budget.reserve(body.len() + chunk.len() - budget.held)?;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    match actix_web::rt::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(Error::BodyTimeout {
            secs: server.body_timeout_secs,
        }),
    }
    // `budget` is released here: from now on the body is the request's, bounded by the
    // in-flight slots it waits for.
}

/// A reservation against `server.max_body_buffer_bytes`, released on drop.
struct BodyBudget<'a> {
    state: &'a AppState,
    held: usize,
    retry_after: u64,
}

impl BodyBudget<'_> {
    fn reserve(&mut self, bytes: usize) -> Result<(), Error> {
        let limit = self.state.settings.server.max_body_buffer_bytes;
        self.state
            .load
            .buffered_body_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n + bytes <= limit).then_some(n + bytes)
            })
            .map_err(|_| Error::BodyBufferFull {
                retry_after: self.retry_after,
            })?;
        self.held += bytes;
        Ok(())
    }
}

impl Drop for BodyBudget<'_> {
    fn drop(&mut self) {
        self.state
            .load
            .buffered_body_bytes
            .fetch_sub(self.held, Ordering::AcqRel);
    }
}

/// The admin operations, as (method, path template) pairs read from the embedded OpenAPI
/// document: an operation is an admin route when its `security` names `adminKey`. HEAD is
/// checked like GET.
fn admin_routes() -> &'static HashSet<(String, String)> {
    static ROUTES: OnceLock<HashSet<(String, String)>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let doc: serde_json::Value =
            serde_json::from_str(crate::api::openapi::DOCUMENT).unwrap_or_default();
        let mut routes = HashSet::new();
        for (path, operations) in doc["paths"].as_object().into_iter().flatten() {
            for (method, operation) in operations.as_object().into_iter().flatten() {
                let admin = operation["security"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|r| r.get("adminKey").is_some()));
                if admin {
                    routes.insert((method.to_ascii_uppercase(), path.clone()));
                }
            }
        }
        routes
    })
}

fn is_admin_route(req: &ServiceRequest) -> bool {
    let Some(pattern) = req.match_pattern() else {
        return false;
    };
    let method = match *req.method() {
        Method::HEAD => "GET".to_string(),
        ref m => m.as_str().to_string(),
    };
    admin_routes().contains(&(method, pattern))
}

/// Takes one unit of `counter` if it is below `limit`.
fn take_slot(counter: &AtomicUsize, limit: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

/// Holds one of the `server.max_inflight_requests` slots (and, for ingestion, one of the
/// `server.max_inflight_ingest` slots) until dropped — also when the client goes away and the
/// request future is dropped unfinished.
pub(crate) struct InflightSlot {
    state: Arc<AppState>,
    ingest: bool,
}

impl InflightSlot {
    /// Takes the slots, or says which limit was reached.
    fn acquire(state: &Arc<AppState>, ingest: bool) -> Result<InflightSlot, Error> {
        let server = &state.settings.server;
        let shed = |limit| Error::Shed {
            limit,
            retry_after: server.retry_after_secs,
        };
        if !take_slot(&state.load.inflight, server.max_inflight_requests) {
            return Err(shed(server.max_inflight_requests));
        }
        if ingest && !take_slot(&state.load.inflight_ingest, server.max_inflight_ingest) {
            state.load.inflight.fetch_sub(1, Ordering::AcqRel);
            return Err(shed(server.max_inflight_ingest));
        }
        state.http_metrics.inflight.inc();
        Ok(InflightSlot {
            state: state.clone(),
            ingest,
        })
    }
}

impl Drop for InflightSlot {
    fn drop(&mut self) {
        if self.ingest {
            self.state
                .load
                .inflight_ingest
                .fetch_sub(1, Ordering::AcqRel);
        }
        self.state.load.inflight.fetch_sub(1, Ordering::AcqRel);
        self.state.http_metrics.inflight.dec();
    }
}
