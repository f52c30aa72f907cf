//! Predictions: a user's features, goal-success and churn predictions, the activity forecast,
//! and the same two predictions for feature vectors computed on a device.
//!
//! | route | answers |
//! |---|---|
//! | `GET /v1/users/{id}/features` | `{user_id, as_of_ms, features: {name: value}}` |
//! | `GET /v1/users/{id}/predictions/success?goal_id=` | `{user_id, goal_id, goal_status, probability, confidence, threshold, model_version, recommended_actions}` |
//! | `GET /v1/users/{id}/churn` | `{user_id, probability, confidence, tier, risk_factors, interventions, model_version}` |
//! | `GET /v1/users/{id}/forecast?days=7` | `{user_id, days, method, history_days, forecast: [{date, value}]}` |
//! | `POST /v1/predictions/success` | body `{feature_names, features, user_id?, goal_id?}` → as the GET |
//! | `POST /v1/predictions/churn` | body `{feature_names, features, user_id?}` → as the GET |
//!
//! Device vectors are checked against the live model's schema: the names in the model's order,
//! as many values as names, each a finite number; anything else is a `400` naming the rule
//! (`feature_schema_mismatch`, `invalid_feature_value`). Before a model is trained the
//! predictions are `503 model_not_ready`.

use std::time::Instant;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use momentum_models::features::{Features, FEATURE_COUNT};
use momentum_models::training::ModelKind;

use crate::analytics::{forecast_activity, Analytics, UserFeatures};
use crate::api::{path_id, validate_id};
use crate::error::Error;
use crate::AppState;

/// Longest forecast horizon (days).
pub const MAX_FORECAST_DAYS: usize = 90;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/users/{id}/features").route(web::get().to(get_features)))
        .service(
            web::resource("/v1/users/{id}/predictions/success").route(web::get().to(get_success)),
        )
        .service(web::resource("/v1/users/{id}/churn").route(web::get().to(get_churn)))
        .service(web::resource("/v1/users/{id}/forecast").route(web::get().to(get_forecast)))
        .service(web::resource("/v1/predictions/success").route(web::post().to(post_success)))
        .service(web::resource("/v1/predictions/churn").route(web::post().to(post_churn)));
}

fn retry(state: &AppState) -> u64 {
    state.settings.server.retry_after_secs
}

fn features_json(f: &Features) -> Value {
    Value::Object(
        f.named()
            .iter()
            .map(|&(name, value)| (name.to_owned(), json!(value)))
            .collect::<Map<String, Value>>(),
    )
}

async fn get_features(
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    path_id("user id", &id)?;
    crate::api::owned_here(&state, &id)?;
    let uf = user_features(&state, &id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "user_id": id.as_str(),
        "as_of_ms": uf.as_of_ms,
        "features": features_json(&uf.features),
    })))
}

/// The user's activity log and features as of now.
async fn user_features(state: &AppState, id: &str) -> Result<UserFeatures, Error> {
    state
        .analytics
        .user_features(&state.engine, id)
        .await
        .map_err(|e| Error::from_actor(e, retry(state)))
}

#[derive(Debug, Deserialize)]
struct SuccessQuery {
    goal_id: Option<String>,
}

async fn get_success(
    id: web::Path<String>,
    query: web::Query<SuccessQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    path_id("user id", &id)?;
    crate::api::owned_here(&state, &id)?;
    let goal_id = query
        .goal_id
        .as_deref()
        .ok_or_else(|| Error::bad("invalid_query", "goal_id is required"))?;
    validate_id("goal_id", goal_id).map_err(|e| Error::bad("invalid_query", e.to_string()))?;
    // Fail fast, before touching the shard.
    state.analytics.require(ModelKind::Success)?;
    let index = state.engine.index();
    let goal = index
        .items
        .get(goal_id)
        .filter(|&g| index.is_live_item(g))
        .ok_or_else(|| Error::UnknownItem {
            id: goal_id.to_owned(),
        })?;
    let uf = user_features(&state, &id).await?;
    let pair = index.users.get(&id).map(|user| (user, goal));
    let prediction = state
        .analytics
        .predict_success(&uf.features, pair, uf.computed_from)?;
    let status = Analytics::goal_status(&uf.log, goal, uf.as_of_ms);
    Ok(HttpResponse::Ok().json(json!({
        "user_id": id.as_str(),
        "goal_id": goal_id,
        "goal_status": status,
        "probability": prediction.probability,
        "confidence": prediction.confidence,
        "threshold": prediction.threshold,
        "model_version": prediction.model_version,
        "recommended_actions": prediction.recommended_actions,
    })))
}

async fn get_churn(
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    path_id("user id", &id)?;
    crate::api::owned_here(&state, &id)?;
    state.analytics.require(ModelKind::Churn)?;
    let uf = user_features(&state, &id).await?;
    let p = state
        .analytics
        .predict_churn(&uf.features, uf.computed_from)?;
    Ok(HttpResponse::Ok().json(json!({
        "user_id": id.as_str(),
        "probability": p.probability,
        "confidence": p.confidence,
        "tier": p.tier,
        "risk_factors": p.risk_factors,
        "interventions": p.interventions,
        "model_version": p.model_version,
    })))
}

#[derive(Debug, Deserialize)]
struct ForecastQuery {
    days: Option<usize>,
}

async fn get_forecast(
    id: web::Path<String>,
    query: web::Query<ForecastQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    path_id("user id", &id)?;
    crate::api::owned_here(&state, &id)?;
    let days = query.days.unwrap_or(7);
    if days == 0 || days > MAX_FORECAST_DAYS {
        return Err(Error::bad(
            "invalid_query",
            format!("days must be in 1..={MAX_FORECAST_DAYS}"),
        ));
    }
    let log = state
        .engine
        .activity(&id)
        .await
        .map_err(|e| Error::from_actor(e, retry(&state)))?;
    let now = state.clock.now_ms();
    let fc = forecast_activity(&log, now, days)?;
    Ok(HttpResponse::Ok().json(json!({
        "user_id": id.as_str(),
        "days": days,
        "method": fc.method,
        "history_days": fc.history_days,
        "forecast": fc.forecast,
    })))
}

/// A feature vector computed on a device.
#[derive(Debug, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
struct DeviceVector {
    /// The feature names in order; must equal the live model's.
    feature_names: Vec<String>,
    /// The values, one per name (JSON numbers).
    features: Vec<Value>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    goal_id: Option<String>,
}
momentum_models::object_only!(DeviceVector);

/// Checks a device vector against a model's input schema (see the module docs).
pub fn check_vector(
    expected: &[String],
    names: &[String],
    values: &[Value],
) -> Result<[f64; FEATURE_COUNT], Error> {
    let mismatch = |message: String| Error::bad("feature_schema_mismatch", message);
    if names.len() != expected.len() {
        return Err(mismatch(format!(
            "the model takes {} features ({}), got {} names",
            expected.len(),
            expected.join(", "),
            names.len()
        )));
    }
    if let Some((i, (got, want))) = names
        .iter()
        .zip(expected)
        .enumerate()
        .find(|(_, (g, w))| g != w)
    {
        return Err(mismatch(format!(
            "feature_names[{i}] must be {want:?}, got {got:?} (the model takes {})",
            expected.join(", ")
        )));
    }
    if values.len() != names.len() {
        return Err(mismatch(format!(
            "{} feature names but {} values",
            names.len(),
            values.len()
        )));
    }
    if expected.len() != FEATURE_COUNT {
        return Err(Error::Internal {
            message: format!(
                "the live model takes {} features, the server computes {FEATURE_COUNT}",
                expected.len()
            ),
        });
    }
    let mut out = [0.0; FEATURE_COUNT];
    for (i, v) in values.iter().enumerate() {
        match v.as_f64() {
            Some(x) if x.is_finite() => out[i] = x,
            _ => {
                return Err(Error::bad(
                    "invalid_feature_value",
                    format!("features[{i}] ({}) must be a finite number", names[i]),
                ))
            }
        }
    }
    Ok(out)
}

fn optional_id(what: &str, id: &Option<String>) -> Result<(), Error> {
    match id {
        Some(id) => validate_id(what, id).map_err(|e| Error::bad("invalid_id", e.to_string())),
        None => Ok(()),
    }
}

async fn post_success(
    body: web::Json<DeviceVector>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let started = Instant::now();
    optional_id("user_id", &body.user_id)?;
    optional_id("goal_id", &body.goal_id)?;
    let expected = state.analytics.feature_names(ModelKind::Success)?;
    let x = check_vector(&expected, &body.feature_names, &body.features)?;
    let index = state.engine.index();
    let pair = match (&body.user_id, &body.goal_id) {
        (Some(u), Some(g)) => index.users.get(u).zip(index.items.get(g)),
        _ => None,
    };
    let p = state
        .analytics
        .predict_success(&Features::from_array(x), pair, started)?;
    Ok(HttpResponse::Ok().json(json!({
        "user_id": body.user_id,
        "goal_id": body.goal_id,
        "probability": p.probability,
        "confidence": p.confidence,
        "threshold": p.threshold,
        "model_version": p.model_version,
        "recommended_actions": p.recommended_actions,
    })))
}

async fn post_churn(
    body: web::Json<DeviceVector>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let started = Instant::now();
    optional_id("user_id", &body.user_id)?;
    if body.goal_id.is_some() {
        return Err(Error::bad(
            "invalid_body",
            "goal_id is not used by churn predictions",
        ));
    }
    let expected = state.analytics.feature_names(ModelKind::Churn)?;
    let x = check_vector(&expected, &body.feature_names, &body.features)?;
    let p = state
        .analytics
        .predict_churn(&Features::from_array(x), started)?;
    Ok(HttpResponse::Ok().json(json!({
        "user_id": body.user_id,
        "probability": p.probability,
        "confidence": p.confidence,
        "tier": p.tier,
        "risk_factors": p.risk_factors,
        "interventions": p.interventions,
        "model_version": p.model_version,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use momentum_models::features::FEATURE_NAMES;

    fn names() -> Vec<String> {
        FEATURE_NAMES.iter().map(|s| s.to_string()).collect()
    }

    fn code(e: Error) -> &'static str {
        e.code()
    }

    #[test]
    fn device_vectors_must_match_the_schema() {
        let expected = names();
        let values: Vec<Value> = (0..10).map(|i| json!(i as f64 / 10.0)).collect();
        let x = check_vector(&expected, &names(), &values).expect("valid");
        assert_eq!(x[3], 0.3);
        // Wrong length (names), wrong order, wrong name, values not matching names.
        let short = names()[..9].to_vec();
        assert_eq!(
            code(check_vector(&expected, &short, &values).unwrap_err()),
            "feature_schema_mismatch"
        );
        let mut swapped = names();
        swapped.swap(0, 1);
        assert_eq!(
            code(check_vector(&expected, &swapped, &values).unwrap_err()),
            "feature_schema_mismatch"
        );
        let mut renamed = names();
        renamed[9] = "consistancy".into();
        let err = check_vector(&expected, &renamed, &values).unwrap_err();
        assert!(err.to_string().contains("consistancy"), "{err}");
        assert_eq!(
            code(check_vector(&expected, &names(), &values[..9]).unwrap_err()),
            "feature_schema_mismatch"
        );
        // Non-numbers are refused (JSON has no NaN; strings and nulls are what arrive).
        for bad in [json!(null), json!("NaN"), json!("1.0"), json!([1])] {
            let mut v = values.clone();
            v[4] = bad;
            assert_eq!(
                code(check_vector(&expected, &names(), &v).unwrap_err()),
                "invalid_feature_value"
            );
        }
    }
}
