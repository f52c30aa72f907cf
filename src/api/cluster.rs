//! `GET /v1/cluster`: this node's view of the cluster — its name and address, and per
//! partition whether it owns it, whether it is ready, its replay position and lag, and who the
//! owners topic names as its owner, and the learned item model: its version (the cluster's),
//! who built it and who leads the cluster. On a single node it says cluster mode is off.
//!
//! [`forward_reads`]: in cluster mode a read of a user whose partition another node serves is
//! forwarded one hop to that node (as the owners topic names it) and its answer returned. If
//! that node answers `421` (the partition moved on), the read waits briefly for the owners
//! topic to name the next owner and is tried once more, there or here.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse, ResponseError};
use serde_json::json;

use std::time::Duration;

use actix_web::http::header::HeaderMap;

use crate::cluster::{Cluster, OwnerRecord, PartitionState, Route, FORWARDED_HEADER};
use crate::error::Error;
use crate::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/cluster").route(web::get().to(get_cluster)));
}

/// In a cluster, `421 not_leader` naming the leader unless this node leads (`503 not_ready`
/// while no node serves partition 0); nothing on a single node. `what` names the work.
pub fn require_leader(state: &AppState, what: &'static str) -> Result<(), Error> {
    let Some(cluster) = state.cluster.as_ref().filter(|c| !c.is_leader()) else {
        return Ok(());
    };
    let leader = cluster
        .leader()
        .filter(|l| l.node_id != cluster.settings().node_id)
        .ok_or(Error::NotReady)?;
    Err(Error::NotLeader {
        what,
        node_id: leader.node_id,
        address: leader.address,
    })
}

async fn get_cluster(state: web::Data<AppState>) -> HttpResponse {
    match &state.cluster {
        Some(cluster) => {
            let mut status = cluster.status();
            status["enabled"] = json!(true);
            let model = state.engine.item_model();
            let sync = cluster.item_model();
            status["item_model"] = json!({
                "version": model.version,
                "items": model.items(),
                "built_by": sync.built_by(),
                "progress": sync.progress(),
                "leader": cluster.leader().map(|l| json!({
                    "node_id": l.node_id, "address": l.address,
                })),
                "is_leader": cluster.is_leader(),
            });
            HttpResponse::Ok().json(status)
        }
        None => HttpResponse::Ok().json(json!({"enabled": false})),
    }
}

/// The user id of a per-user read path (`/v1/users/{id}` and everything below it); `None` for
/// other paths and for ids the routes would refuse anyway (they answer those themselves).
fn user_of_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/users/")?;
    let id = rest.split('/').next()?;
    crate::api::validate_id("user id", id).ok()?;
    (id != "." && id != "..").then_some(id)
}

/// Middleware (inside the HTTP contract, so `HEAD` arrives as `GET`): forwards a per-user
/// `GET` whose partition this node does not own to the owner the owners topic names, once
/// (a forwarded request is never forwarded again: its receiver answers it or refuses it with
/// `421`). If the owner refuses it, the read goes to the next owner the owners topic names
/// within [`MOVED_WAIT`], or is answered here if the partition became ready here, or gets
/// `503 not_ready`. With no owner known, the request goes on to the route, which answers
/// `421`.
pub async fn forward_reads(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> actix_web::Result<ServiceResponse<EitherBody<impl MessageBody>>> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let owner = match (&state.cluster, user_of_path(req.path())) {
        (Some(cluster), Some(user))
            if req.method() == Method::GET && !req.headers().contains_key(FORWARDED_HEADER) =>
        {
            let partition = cluster.partition_of(user);
            (cluster.partition_state(partition) == PartitionState::NotOwned)
                .then(|| cluster.owner_elsewhere(partition))
                .flatten()
                .map(|owner| (cluster.clone(), owner))
        }
        _ => None,
    };
    let Some((cluster, owner)) = owner else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.path().to_owned(), |p| p.as_str().to_owned());
    let metrics = cluster.metrics();
    let response = match forward_once(&cluster, &owner, &path, req.headers()).await {
        Forwarded::Answer(response) => response,
        // Ownership moved since the owners topic said so: look again, and try once more.
        Forwarded::Moved => {
            metrics.forwarded.with_label_values(&["moved"]).inc();
            let partition = owner.partition;
            match cluster
                .route_after_move(partition, &owner, MOVED_WAIT)
                .await
            {
                Some(Route::Local) => {
                    metrics.forwarded.with_label_values(&["retried"]).inc();
                    return Ok(next.call(req).await?.map_into_left_body());
                }
                Some(Route::Remote(later)) => {
                    metrics.forwarded.with_label_values(&["retried"]).inc();
                    match forward_once(&cluster, &later, &path, req.headers()).await {
                        Forwarded::Answer(response) => response,
                        Forwarded::Moved => {
                            metrics.forwarded.with_label_values(&["moved"]).inc();
                            Error::NotReady.error_response()
                        }
                    }
                }
                None => Error::NotReady.error_response(),
            }
        }
    };
    Ok(req.into_response(response).map_into_right_body())
}

/// How long a read whose owner answered `421` waits for the owners topic to name the next one.
const MOVED_WAIT: Duration = Duration::from_millis(500);

enum Forwarded {
    /// The owner's answer, or the error to answer for it.
    Answer(HttpResponse),
    /// The owner answered `421`: it does not own the partition (any longer).
    Moved,
}

/// Forwards the read one hop to `owner`; counts it under `ok` or `error`.
async fn forward_once(
    cluster: &Cluster,
    owner: &OwnerRecord,
    path: &str,
    headers: &HeaderMap,
) -> Forwarded {
    let metrics = cluster.metrics();
    let res = match cluster
        .forward(owner, reqwest::Method::GET, path, headers)
        .await
    {
        Ok(res) if res.status().as_u16() == 421 => return Forwarded::Moved,
        Ok(res) => res,
        Err(error) => {
            metrics.forwarded.with_label_values(&["error"]).inc();
            return Forwarded::Answer(error.error_response());
        }
    };
    let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = HttpResponse::build(status);
    for name in ["content-type", "retry-after", "allow"] {
        if let Some(value) = res.headers().get(name).and_then(|v| v.to_str().ok()) {
            out.insert_header((name, value.to_owned()));
        }
    }
    Forwarded::Answer(match res.bytes().await {
        Ok(body) => {
            metrics.forwarded.with_label_values(&["ok"]).inc();
            out.body(body)
        }
        Err(error) => {
            tracing::warn!(%error, owner = %owner.node_id, "reading a forwarded answer");
            metrics.forwarded.with_label_values(&["error"]).inc();
            Error::NotReady.error_response()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_user_read_paths_name_a_user() {
        assert_eq!(user_of_path("/v1/users/alice"), Some("alice"));
        assert_eq!(
            user_of_path("/v1/users/alice/recommendations"),
            Some("alice")
        );
        assert_eq!(
            user_of_path("/v1/users/a@b:c/predictions/success"),
            Some("a@b:c")
        );
        assert_eq!(user_of_path("/v1/users/"), None);
        assert_eq!(user_of_path("/v1/users/.."), None);
        assert_eq!(user_of_path("/v1/users/a%20b"), None);
        assert_eq!(user_of_path("/v1/items/alice"), None);
    }
}
