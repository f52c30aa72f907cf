//! Model versions and training.
//!
//! | route | does |
//! |---|---|
//! | `POST /v1/models/train[?wait=true]` | admin: starts a training run of both models; `202 {"status":"started"}`, or with `wait=true` `200` and the run's report; `409 conflict` while a run is in progress or when no model could be trained (the message says why) |
//! | `GET /v1/models` | every stored version of each model (newest last) with its held-out metrics, the live version, and the trainer's and churn scheduler's schedules |
//! | `GET /v1/models/{name}/versions/{v}` | one version's full metadata: metrics, parameters, feature schema, training window, promotion decision |
//! | `GET /v1/models/{name}/latest[?variant=]` | the live version's exported file: version, sha256, size, export metadata (golden vectors), whether downloads are encrypted; `404` for a model without export (the churn forest), `503 model_not_ready` before any training |
//! | `GET /v1/models/{name}/versions/{v}/model.tflite[?variant=]` | the file, AES-256-GCM under `security.device_key` (`X-Model-Encryption: aes-256-gcm`) or plain over TLS; `ETag` = the plain file's sha256, `If-None-Match` with it → `304` |
//!
//! `variant` is `float32` (default: what the `device` crate runs) or `int8` (dynamic range,
//! for LiteRT). Requests carrying `X-Model-Version` feed `momentum_model_version_active`
//! ([`crate::fleet`]); downloads are counted in `momentum_model_downloads_total`.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use momentum_models::export::Variant;
use momentum_models::protocol::{ENCRYPTION_AES_GCM, ENCRYPTION_HEADER};
use serde::Deserialize;
use serde_json::{json, Value};

use momentum_models::training::ModelKind;

use crate::analytics::artifacts::{ArtifactError, ExportInfo};
use crate::analytics::download::{find_export, Sealing};
use crate::api::require_admin;
use crate::error::Error;
use crate::settings::ModelDownload;
use crate::store::analytics::ModelVersionRow;
use crate::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/models/train").route(web::post().to(train)))
        .service(web::resource("/v1/models").route(web::get().to(list)))
        .service(
            web::resource("/v1/models/{name}/versions/{version}").route(web::get().to(version)),
        )
        .service(web::resource("/v1/models/{name}/latest").route(web::get().to(latest)))
        .service(
            web::resource("/v1/models/{name}/versions/{version}/model.tflite")
                .route(web::get().to(download)),
        );
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantQuery {
    #[serde(default)]
    pub variant: Option<String>,
}

impl VariantQuery {
    fn variant(&self) -> Result<Variant, Error> {
        match self.variant.as_deref() {
            None | Some("float32") => Ok(Variant::Float32),
            Some("int8" | "int8_dynamic_range") => Ok(Variant::Int8DynamicRange),
            Some(other) => Err(Error::bad(
                "invalid_variant",
                format!("unknown variant {other:?}: use \"float32\" or \"int8\""),
            )),
        }
    }
}

fn model_kind(name: &str) -> Result<ModelKind, Error> {
    ModelKind::parse(name).ok_or_else(|| Error::NotFound {
        message: format!("unknown model {name:?}: the models are \"success\" and \"churn\""),
    })
}

/// The entity tag of an exported file: its plain sha256, whatever the transfer encoding.
fn etag(info: &ExportInfo) -> String {
    format!("\"{}\"", info.sha256)
}

/// Whether an `If-None-Match` header value matches `tag` (weak comparison, `*` matches).
fn none_match(header: &str, tag: &str) -> bool {
    header.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == tag
    })
}

async fn latest(
    path: web::Path<String>,
    query: web::Query<VariantQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let name = path.into_inner();
    let kind = model_kind(&name)?;
    let variant = query.variant()?;
    let live = state
        .analytics
        .live(kind)
        .ok_or(Error::ModelNotReady { model: kind.name() })?;
    let info = find_export(&live.exports, kind.name(), live.version, variant)?;
    let encrypted = state.settings.security.model_download == ModelDownload::Encrypted;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag(info)))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(json!({
            "name": kind.name(),
            "version": live.version,
            "variant": variant.as_str(),
            "sha256": info.sha256,
            "size": info.size,
            "encrypted": encrypted,
            "encryption": encrypted.then_some(ENCRYPTION_AES_GCM),
            "download": format!(
                "/v1/models/{}/versions/{}/model.tflite?variant={}",
                kind.name(),
                live.version,
                variant.as_str()
            ),
            "metadata": info.metadata,
        })))
}

async fn download(
    req: HttpRequest,
    path: web::Path<(String, u64)>,
    query: web::Query<VariantQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let (name, v) = path.into_inner();
    let kind = model_kind(&name)?;
    let variant = query.variant()?;
    let download = state.analytics.find_download(kind, v, variant).await?;
    let tag = etag(&download.info);
    let version_label = v.to_string();
    let count = |result: &str| {
        state
            .fleet
            .downloads
            .with_label_values(&[kind.name(), &version_label, result])
            .inc();
    };
    let if_none_match = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|h| h.to_str().ok());
    if if_none_match.is_some_and(|h| none_match(h, &tag)) {
        count("304");
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, tag))
            .finish());
    }
    let sealing = match state.settings.security.model_download {
        ModelDownload::Plain => Sealing::Plain,
        ModelDownload::Encrypted => Sealing::Encrypted(
            state
                .settings
                .security
                .device_key()?
                .ok_or_else(|| Error::failed("device key", ArtifactError::MissingKey))?,
        ),
    };
    let mut response = HttpResponse::Ok();
    response
        .content_type("application/octet-stream")
        .insert_header((header::ETAG, tag))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{}\"", download.info.file),
        ));
    if let Sealing::Encrypted(_) = sealing {
        response.insert_header((ENCRYPTION_HEADER, ENCRYPTION_AES_GCM));
    }
    let body = state.analytics.seal(download, &sealing).await?;
    count("200");
    Ok(response.body(body))
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
    // In a cluster only the leader trains (from the events topic); the others name it.
    crate::api::cluster::require_leader(&state, "training")?;
    let retry = state.settings.server.retry_after_secs;
    match state.analytics.train(query.wait, retry).await? {
        Some(report) => {
            Ok(HttpResponse::Ok().json(json!({"status": "completed", "report": report})))
        }
        None => Ok(HttpResponse::Accepted().json(json!({"status": "started"}))),
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
            "brier": m["metrics"]["calibration"]["brier"],
        },
        "calibration": m["metrics"]["calibration"],
        "rows": m["rows"],
        "training_window": m["training_window"],
        "decision": m["decision"],
    })
}

async fn list(state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let rows = state.analytics.model_versions(None).await?;
    let models: Vec<Value> = ModelKind::ALL
        .into_iter()
        .map(|kind| {
            let live = state.analytics.live(kind);
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
    let kind = model_kind(&name)?;
    let Some(row) = state.analytics.model_version(kind, v).await? else {
        return Err(Error::NotFound {
            message: format!("model {name:?} has no version {v}"),
        });
    };
    let live = state.analytics.live(kind).map(|m| m.version);
    Ok(HttpResponse::Ok().json(json!({
        "name": row.name,
        "version": row.version,
        "created_ms": row.created_ms,
        "parent_version": row.parent_version,
        "live": live == Some(row.version),
        "calibration": row.metadata["metrics"]["calibration"],
        "metadata": row.metadata,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_star() {
        let tag = "\"abc\"";
        assert!(none_match("\"abc\"", tag));
        assert!(none_match("W/\"abc\"", tag));
        assert!(none_match("\"x\", \"abc\"", tag));
        assert!(none_match("*", tag));
        assert!(!none_match("\"abd\"", tag));
        assert!(!none_match("abc", tag));
    }

    #[test]
    fn variants_parse_with_a_clear_error() {
        let q = |v: Option<&str>| VariantQuery {
            variant: v.map(str::to_string),
        };
        assert_eq!(q(None).variant().ok(), Some(Variant::Float32));
        assert_eq!(
            q(Some("int8")).variant().ok(),
            Some(Variant::Int8DynamicRange)
        );
        let err = q(Some("fp16")).variant().expect_err("unknown");
        assert_eq!(err.code(), "invalid_variant");
    }
}
