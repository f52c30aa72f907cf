//! `GET /v1/cluster`: this node's view of the cluster — its name and address, and per
//! partition whether it owns it, whether it is ready, its replay position and lag. On a
//! single node it says cluster mode is off.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/cluster").route(web::get().to(get_cluster)));
}

async fn get_cluster(state: web::Data<AppState>) -> HttpResponse {
    match &state.cluster {
        Some(cluster) => {
            let mut status = cluster.status();
            status["enabled"] = json!(true);
            HttpResponse::Ok().json(status)
        }
        None => HttpResponse::Ok().json(json!({"enabled": false})),
    }
}
