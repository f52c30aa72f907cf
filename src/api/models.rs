//! Model versions and training.
//!
//! | route | does |
//! |---|---|
//! | `POST /v1/models/train[?wait=true]` | admin: starts a training run of both models; `202 {"status":"started"}`, or with `wait=true` `200` and the run's report; `409 conflict` while a run is in progress or when no model could be trained (the message says why) |
//! | `GET /v1/models` | every stored version of each model (newest last) with its held-out metrics, the live version, and the trainer's and churn scheduler's schedules |
//! | `GET /v1/models/{name}/versions/{v}` | one version's full metadata: metrics, parameters, feature schema, training window, promotion decision |

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use momentum_actors::trainer::ModelKind;

use crate::api::require_admin;
use crate::error::Error;
use crate::store::analytics::ModelVersionRow;
use crate::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/models/train", web::post().to(train))
        .route("/v1/models", web::get().to(list))
        .route(
            "/v1/models/{name}/versions/{version}",
            web::get().to(version),
        );
}

#[derive(Debug, Deserialize)]
pub struct WaitQuery {
    #[serde(default)]
    pub wait: bool,
}

async fn train(
    req: HttpRequest,
    query: web::Query<WaitQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    let retry = state.settings.server.retry_after_secs;
    match state.analytics.train(query.wait, retry).await? {
        Some(report) => {
            Ok(HttpResponse::Ok().json(json!({"status": "completed", "report": report})))
        }
        None => Ok(HttpResponse::Accepted().json(json!({"status": "started"}))),
    }
}

fn store_error(e: crate::store::StoreError) -> Error {
    Error::Internal {
        message: format!("reading models: {e}"),
    }
}

/// A version in a listing: the headline numbers, not the whole metadata.
fn summary(row: &ModelVersionRow) -> Value {
    let m = &row.metadata;
    let at = if m["metrics"]["at_chosen"].is_null() {
        &m["metrics"]["at_default"]
    } else {
        &m["metrics"]["at_chosen"]
    };
    json!({
        "version": row.version,
        "created_ms": row.created_ms,
        "parent_version": row.parent_version,
        "promoted": row.promoted(),
        "algorithm": m["algorithm"],
        "threshold": m["threshold"],
        "metrics": {
            "auc": m["metrics"]["auc"],
            "log_loss": m["metrics"]["log_loss"],
            "accuracy": at["accuracy"],
            "precision": at["precision"],
            "recall": at["recall"],
            "f1": at["f1"],
        },
        "rows": m["rows"],
        "training_window": m["training_window"],
        "decision": m["decision"],
    })
}

async fn list(state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let rows = state
        .analytics
        .shared()
        .store
        .model_versions(None)
        .await
        .map_err(store_error)?;
    let models: Vec<Value> = ModelKind::ALL
        .into_iter()
        .map(|kind| {
            let live = state.analytics.shared().registry.get(kind);
            let versions: Vec<Value> = rows
                .iter()
                .filter(|r| r.name == kind.name())
                .map(summary)
                .collect();
            json!({
                "name": kind.name(),
                "live_version": live.as_ref().map(|m| m.version),
                "feature_names": live.as_ref().map(|m| m.feature_names.clone()),
                "versions": versions,
            })
        })
        .collect();
    let (trainer, churn) = state.analytics.statuses().await;
    Ok(HttpResponse::Ok().json(json!({
        "models": models,
        "trainer": trainer,
        "churn_scheduler": churn,
    })))
}

async fn version(
    path: web::Path<(String, u64)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let (name, v) = path.into_inner();
    let Some(kind) = ModelKind::parse(&name) else {
        return Err(Error::NotFound {
            message: format!("unknown model {name:?}: the models are \"success\" and \"churn\""),
        });
    };
    let found = state
        .analytics
        .shared()
        .store
        .model_version(kind.name(), v)
        .await
        .map_err(store_error)?;
    let Some((row, _bytes)) = found else {
        return Err(Error::NotFound {
            message: format!("model {name:?} has no version {v}"),
        });
    };
    let live = state
        .analytics
        .shared()
        .registry
        .get(kind)
        .map(|m| m.version);
    Ok(HttpResponse::Ok().json(json!({
        "name": row.name,
        "version": row.version,
        "created_ms": row.created_ms,
        "parent_version": row.parent_version,
        "live": live == Some(row.version),
        "metadata": row.metadata,
    })))
}
