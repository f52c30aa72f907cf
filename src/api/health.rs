//! Liveness, readiness and the Prometheus scrape endpoint.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use prometheus::{Encoder, TextEncoder};
use serde_json::json;

use crate::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/healthz").route(web::get().to(healthz)))
        .service(web::resource("/readyz").route(web::get().to(readyz)))
        .service(web::resource("/metrics").route(web::get().to(metrics)))
        .service(web::resource("/v1/admin/snapshot").route(web::post().to(snapshot)))
        .service(web::resource("/v1/admin/item-model").route(web::post().to(item_model)));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.ready.load(Ordering::Acquire) {
        HttpResponse::Ok().json(json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(json!({"status": "starting"}))
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    if let Some(rss) = crate::metrics::resident_memory_bytes() {
        state
            .http_metrics
            .resident_memory
            .set(i64::try_from(rss).unwrap_or(i64::MAX));
    }
    state.fleet.refresh(state.clock.now_ms());
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(e) = encoder.encode(&state.registry.gather(), &mut buf) {
        tracing::error!(error = %e, "metrics encoding failed");
        return HttpResponse::InternalServerError().finish();
    }
    HttpResponse::Ok()
        .content_type(encoder.format_type())
        .body(buf)
}

/// `POST /v1/admin/snapshot` (admin): write a snapshot now; answers with what it wrote.
async fn snapshot(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, crate::Error> {
    crate::api::require_admin(&req, &state)?;
    let job = state.jobs.snapshot.get().ok_or(crate::Error::NotReady)?;
    let retry = state.settings.server.retry_after_secs;
    let stats = job
        .run(true, retry)
        .await?
        .ok_or(crate::Error::ShuttingDown)?;
    Ok(HttpResponse::Ok().json(json!({
        "id": stats.id,
        "covers_seq": stats.covers_seq,
        "users": stats.users,
        "bytes": stats.bytes,
        "seconds": stats.seconds,
        "pruned_events": stats.pruned_events,
    })))
}

/// `POST /v1/admin/item-model` (admin): rebuild the learned item model now (after a bulk
/// import, say) instead of waiting for `ease.rebuild_events` or `ease.rebuild_secs`. In a
/// cluster only the leader builds: another node answers `421 not_leader` naming it (`503
/// not_ready` while no node serves partition 0). On the leader, a build from no more data
/// than the cluster's model is dropped and the cluster's model is answered.
async fn item_model(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, crate::Error> {
    crate::api::require_admin(&req, &state)?;
    // In a cluster only the leader builds; the others name it.
    crate::api::cluster::require_leader(&state, "the item-model build")?;
    let job = state.jobs.item_model.get().ok_or(crate::Error::NotReady)?;
    let retry = state.settings.server.retry_after_secs;
    let model = job
        .run(true, retry)
        .await?
        .ok_or(crate::Error::ShuttingDown)?;
    Ok(HttpResponse::Ok().json(json!({
        "version": model.version,
        "items": model.items(),
        "seconds": model.build_seconds,
    })))
}
