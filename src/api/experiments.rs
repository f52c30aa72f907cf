//! `/v1/experiments`: A/B tests. Every route is an admin route (`X-Admin-Key`). The registry,
//! the assignment and the attribution rule live in [`crate::experiments`].

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::error::Category;

use momentum_models::experiment::{ExperimentDef, VariantDef};

use crate::api::{path_id, read_json_body, require_admin, validate_id};
use crate::error::Error;
use crate::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/experiments")
            .route(web::post().to(create))
            .route(web::get().to(list)),
    )
    .service(
        web::resource("/v1/experiments/{id}")
            .route(web::get().to(get))
            .route(web::delete().to(delete)),
    )
    .service(web::resource("/v1/experiments/{id}/results").route(web::get().to(results)))
    .service(web::resource("/v1/experiments/{id}/stop").route(web::post().to(stop)));
}

/// Largest experiment definition, in bytes (ten variants take well under 4 KiB).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// `POST /v1/experiments` body.
#[derive(Debug, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
struct CreateBody {
    /// `[A-Za-z0-9_.:@-]{1,128}`.
    id: String,
    /// Assignment salt; the id when absent. Reusing a salt reproduces an earlier split.
    #[serde(default)]
    salt: Option<String>,
    variants: Vec<VariantDef>,
    #[serde(default)]
    control: Option<String>,
}
momentum_models::object_only!(CreateBody);

async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    let bytes = read_json_body(&req, payload, MAX_BODY_BYTES).await?;
    let body: CreateBody = serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        // Well-formed JSON of the wrong shape is a bad definition, not a bad body.
        Category::Data => Error::bad("invalid_experiment", e.to_string()),
        Category::Syntax | Category::Eof | Category::Io => {
            Error::bad("malformed_json", e.to_string())
        }
    })?;
    validate_id("experiment id", &body.id).map_err(|e| Error::bad("invalid_id", e.to_string()))?;
    let def = ExperimentDef {
        variants: body.variants,
        control: body.control,
    };
    let view =
        state
            .experiments
            .create(&body.id, body.salt.as_deref(), &def, state.clock.now_ms())?;
    Ok(HttpResponse::Created().json(view))
}

async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"experiments": state.experiments.list()})))
}

async fn get(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    path_id("experiment id", &id)?;
    Ok(HttpResponse::Ok().json(state.experiments.get(&id)?))
}

async fn results(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    path_id("experiment id", &id)?;
    Ok(HttpResponse::Ok().json(state.experiments.results(&id)?))
}

async fn stop(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    path_id("experiment id", &id)?;
    Ok(HttpResponse::Ok().json(state.experiments.stop(&id, state.clock.now_ms())?))
}

async fn delete(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    path_id("experiment id", &id)?;
    state.experiments.delete(&id)?;
    Ok(HttpResponse::NoContent().finish())
}
