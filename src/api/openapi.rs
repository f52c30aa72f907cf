//! `GET /openapi.json`: the OpenAPI 3.1 document of the whole API, `openapi.json` at the
//! repository root, compiled into the binary. An integration test (`tests/integration/ops.rs`)
//! keeps it in sync with the routes: every documented operation must exist on a running
//! server, every route registered in `src/api/` must be documented, and responses must match
//! the documented schemas.

use actix_web::{web, HttpResponse};

/// The document, as checked in.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/openapi.json").route(web::get().to(openapi)));
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT)
}
