//! The churn outbox and the scoring run behind it. Both are admin routes: the outbox names
//! users and their churn risk.
//!
//! | route | does |
//! |---|---|
//! | `GET /v1/interventions?since=ID&limit=N` | interventions with `id > since` (default 0) in id order, at most `limit` (default 100, at most 1,000); `next_since` is the cursor for the next page |
//! | `POST /v1/churn/run[?wait=true]` | starts a scoring run now (the scheduler also runs daily); `202`, or `200` with the run's report with `wait=true`; `409` while one runs or before the churn model is trained |

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::api::models::WaitQuery;
use crate::api::require_admin;
use crate::error::Error;
use crate::AppState;

/// Largest page of `GET /v1/interventions`.
pub const MAX_LIMIT: usize = 1000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/interventions").route(web::get().to(list)))
        .service(web::resource("/v1/churn/run").route(web::post().to(run)));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    #[serde(default)]
    since: u64,
    limit: Option<usize>,
}

async fn list(
    req: HttpRequest,
    query: web::Query<Page>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(Error::bad(
            "invalid_query",
            format!("limit must be in 1..={MAX_LIMIT}"),
        ));
    }
    let items = state
        .analytics
        .interventions_after(query.since, limit)
        .await?;
    let next = items.last().map_or(query.since, |i| i.id);
    Ok(HttpResponse::Ok().json(json!({
        "interventions": items,
        "next_since": next,
    })))
}

async fn run(
    req: HttpRequest,
    query: web::Query<WaitQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    require_admin(&req, &state)?;
    let retry = state.settings.server.retry_after_secs;
    match state.analytics.score_churn(query.wait, retry).await? {
        Some(report) => {
            Ok(HttpResponse::Ok().json(json!({"status": "completed", "report": report})))
        }
        None => Ok(HttpResponse::Accepted().json(json!({"status": "started"}))),
    }
}
