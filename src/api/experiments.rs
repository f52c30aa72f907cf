//! `/v1/experiments`: A/B tests. Every route is an admin route (`X-Admin-Key`). The registry,
//! the assignment and the attribution rule live in [`crate::experiments`]; in cluster mode the
//! definitions are the cluster's and the results the sum of every node's
//! ([`crate::cluster::experiments`]).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::error::Category;

use momentum_models::experiment::{Experiment, ExperimentDef, VariantDef};

use crate::api::{path_id, read_json_body, require_admin, validate_id};
use crate::cluster::experiments::ExperimentStore;
use crate::cluster::{Cluster, FORWARDED_HEADER};
use crate::error::Error;
use crate::experiments::{ExperimentResults, MAX_EXPERIMENTS};
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
    let now = state.clock.now_ms();
    if let Some(cluster) = &state.cluster {
        // The definition is checked here first: a bad one is a 400 that touches nothing.
        let salt = body.salt.as_deref().unwrap_or(&body.id);
        Experiment::new(salt, &def).map_err(|e| Error::bad("invalid_experiment", e.to_string()))?;
        let store = cluster_store(&state, cluster).await?;
        store
            .create(&body.id, salt, &def, now, MAX_EXPERIMENTS)
            .await
            .map_err(|e| unavailable_unless_refused(&state, e))?;
        sync(&state, cluster).await?;
        return Ok(HttpResponse::Created().json(state.experiments.get(&body.id)?));
    }
    let view = state
        .experiments
        .create(&body.id, body.salt.as_deref(), &def, now)?;
    Ok(HttpResponse::Created().json(view))
}

/// The cluster's experiments table; `503 unavailable` while PostgreSQL cannot be reached.
async fn cluster_store(
    state: &AppState,
    cluster: &Cluster,
) -> Result<std::sync::Arc<ExperimentStore>, Error> {
    cluster
        .experiments()
        .store(cluster)
        .await
        .map_err(|e| unavailable_unless_refused(state, e))
}

/// A refusal of the table (409, 507) as it is; any other failure is `503 unavailable`.
fn unavailable_unless_refused(state: &AppState, error: Error) -> Error {
    match error {
        Error::Conflict { .. } | Error::CapacityReached { .. } => error,
        error => {
            tracing::warn!(error = %crate::error::Report(&error), "the cluster's experiments");
            Error::Unavailable {
                what: "the cluster's experiments (PostgreSQL)",
                retry_after: state.settings.server.retry_after_secs,
            }
        }
    }
}

/// Brings this node's registry in line with the cluster's experiments (cluster mode).
pub async fn sync(state: &AppState, cluster: &Cluster) -> Result<(), Error> {
    let store = cluster_store(state, cluster).await?;
    let _in_order = cluster.experiments().lock().await;
    let all = store
        .all()
        .await
        .map_err(|e| unavailable_unless_refused(state, e))?;
    state.experiments.reconcile(&all);
    Ok(())
}

/// In a cluster, the registry brought in line with the cluster's first.
async fn synced(state: &AppState) -> Result<(), Error> {
    match &state.cluster {
        Some(cluster) => sync(state, cluster).await,
        None => Ok(()),
    }
}

async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    synced(&state).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"experiments": state.experiments.list()})))
}

async fn get(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    path_id("experiment id", &id)?;
    synced(&state).await?;
    Ok(HttpResponse::Ok().json(state.experiments.get(&id)?))
}

async fn results(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    path_id("experiment id", &id)?;
    synced(&state).await?;
    let Some(cluster) = &state.cluster else {
        return Ok(HttpResponse::Ok().json(state.experiments.results(&id)?));
    };
    // A node asked by another answers its own counts; the node asked by the client adds the
    // counts of every other node serving partitions, or answers 503 if one cannot say.
    if req.headers().contains_key(FORWARDED_HEADER) {
        return Ok(HttpResponse::Ok().json(state.experiments.results(&id)?));
    }
    state.experiments.get(&id)?;
    let path = format!("/v1/experiments/{}/results", id.as_str());
    let unavailable = || Error::Unavailable {
        what: "a node's experiment counts",
        retry_after: state.settings.server.retry_after_secs,
    };
    let mut others = Vec::new();
    for node in cluster.other_serving_nodes() {
        let res = cluster
            .forward(&node, reqwest::Method::GET, &path, req.headers())
            .await
            .map_err(|_| unavailable())?;
        if !res.status().is_success() {
            tracing::warn!(node = %node.node_id, status = %res.status(), "a node did not give its experiment counts");
            return Err(unavailable());
        }
        others.push(
            res.json::<ExperimentResults>()
                .await
                .map_err(|_| unavailable())?,
        );
    }
    Ok(HttpResponse::Ok().json(state.experiments.results_adding(&id, &others)?))
}

async fn stop(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    path_id("experiment id", &id)?;
    let now = state.clock.now_ms();
    if let Some(cluster) = &state.cluster {
        let store = cluster_store(&state, cluster).await?;
        let found = store
            .stop(&id, now)
            .await
            .map_err(|e| unavailable_unless_refused(&state, e))?;
        if !found {
            return Err(Error::UnknownExperiment { id: id.to_string() });
        }
        sync(&state, cluster).await?;
        return Ok(HttpResponse::Ok().json(state.experiments.get(&id)?));
    }
    Ok(HttpResponse::Ok().json(state.experiments.stop(&id, now)?))
}

async fn delete(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    path_id("experiment id", &id)?;
    if let Some(cluster) = &state.cluster {
        let store = cluster_store(&state, cluster).await?;
        let found = store
            .delete(&id)
            .await
            .map_err(|e| unavailable_unless_refused(&state, e))?;
        if !found {
            return Err(Error::UnknownExperiment { id: id.to_string() });
        }
        sync(&state, cluster).await?;
        return Ok(HttpResponse::NoContent().finish());
    }
    state.experiments.delete(&id)?;
    Ok(HttpResponse::NoContent().finish())
}
