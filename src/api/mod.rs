//! HTTP routes, one module per resource, plus the extractor configuration that turns every
//! malformed request into the JSON error format.

pub mod cluster;
pub mod console;
pub mod events;
pub mod experiments;
pub mod health;
pub mod interventions;
pub mod items;
pub mod models;
pub mod openapi;
pub mod predictions;
pub mod users;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::{ErrorHandlerResponse, Next};
use actix_web::{error::InternalError, web, HttpMessage, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;

use crate::error::Error;
use crate::AppState;

/// Why an id is refused (the text names the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("{what} must not be empty")]
    Empty { what: String },
    #[error("{what} is longer than 128 characters")]
    TooLong { what: String },
    #[error("{what} must not be \".\" or \"..\"")]
    DotSegment { what: String },
    #[error("{what} may only contain A-Z a-z 0-9 _ . : @ -")]
    Characters { what: String },
}

/// Cluster mode: a user's reads are answered by the node that owns the user's partition
/// ([`crate::cluster::Cluster::check_user`]); on a single node every user is here.
pub fn owned_here(state: &crate::AppState, user_id: &str) -> Result<(), Error> {
    match &state.cluster {
        Some(cluster) => cluster.check_user(user_id),
        None => Ok(()),
    }
}

/// Ids are 1–128 characters of `[A-Za-z0-9_.:@-]` (README, "REST API").
pub fn validate_id(what: &str, id: &str) -> Result<(), InvalidId> {
    let what = || what.to_owned();
    if id.is_empty() {
        return Err(InvalidId::Empty { what: what() });
    }
    if id.len() > 128 {
        return Err(InvalidId::TooLong { what: what() });
    }
    // RFC 3986 clients resolve these path segments away: such an id could never be addressed.
    if id == "." || id == ".." {
        return Err(InvalidId::DotSegment { what: what() });
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
    {
        return Err(InvalidId::Characters { what: what() });
    }
    Ok(())
}

/// Validates an id taken from the path.
pub fn path_id(what: &str, id: &str) -> Result<(), Error> {
    validate_id(what, id).map_err(|e| Error::bad("invalid_id", e.to_string()))
}

/// JSON bodies: limit and error shape.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(1 << 20)
        .content_type_required(true)
        .error_handler(|err, _| {
            let e = match &err {
                actix_web::error::JsonPayloadError::ContentType => Error::UnsupportedMediaType,
                actix_web::error::JsonPayloadError::Overflow { .. }
                | actix_web::error::JsonPayloadError::OverflowKnownLength { .. } => {
                    Error::TooLarge {
                        code: "body_too_large",
                        message: err.to_string(),
                    }
                }
                _ => Error::bad("malformed_json", err.to_string()),
            };
            InternalError::from_response(err, e.error_response()).into()
        })
}

/// Query strings: error shape.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _| {
        let e = Error::bad("invalid_query", err.to_string());
        InternalError::from_response(err, e.error_response()).into()
    })
}

/// Path segments: error shape.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err, _| {
        let e = Error::bad("invalid_path", err.to_string());
        InternalError::from_response(err, e.error_response()).into()
    })
}

/// Fallback for unknown routes.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    let method = if req.extensions().get::<HeadRequest>().is_some() {
        &Method::HEAD
    } else {
        req.method()
    };
    Error::NotFound {
        message: format!("no route for {method} {}", req.path()),
    }
    .error_response()
}

/// Marks a request that arrived as `HEAD` and is routed as `GET` by [`http_contract`].
#[derive(Debug, Clone, Copy)]
pub struct HeadRequest;

/// Largest request head the application serves, in bytes: the request line plus every header
/// line. actix-http itself accepts up to 128 KiB and 96 headers (and answers `431` with an empty
/// body beyond that); between this bound and those, the answer is a JSON `431`.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// The request-level part of the HTTP contract, before routing:
///
/// - a request head over [`MAX_HEAD_BYTES`] is a `431 headers_too_large`;
/// - `HEAD` is routed like `GET`, so every `GET` route answers `HEAD` with the same status and
///   headers. The HTTP layer (actix-http's h1 and h2 dispatchers) knows the request was `HEAD`
///   and sends no body, keeping the `Content-Length` of the `GET` answer. A path without `GET`
///   answers `405` as for any other method.
///
/// Installed with `middleware::from_fn` in [`crate::start`], inside the admission middleware,
/// so metrics and logs still see `HEAD`.
pub async fn http_contract(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> actix_web::Result<ServiceResponse<EitherBody<impl MessageBody>>> {
    let head_bytes = req.method().as_str().len()
        + req.uri().path_and_query().map_or(0, |p| p.as_str().len())
        + req
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if head_bytes > MAX_HEAD_BYTES {
        let res = Error::HeadersTooLarge {
            limit: MAX_HEAD_BYTES,
        }
        .error_response();
        return Ok(req.into_response(res).map_into_right_body());
    }
    if req.method() == Method::HEAD {
        req.head_mut().method = Method::GET;
        req.extensions_mut().insert(HeadRequest);
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// The `Allow` value for a path whose routes accept `methods`: `HEAD` is added after `GET`
/// (see [`http_contract`]).
pub fn allow_value(methods: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for m in methods.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        if !out.contains(&m) {
            out.push(m);
        }
        if m == "GET" && !methods.split(',').any(|x| x.trim() == "HEAD") {
            out.push("HEAD");
        }
    }
    out.join(", ")
}

/// Turns actix's bare `405` (a known path, another method) into the JSON error format with an
/// `Allow` header listing the path's methods (`HEAD` included where `GET` is). Installed with
/// `middleware::ErrorHandlers` in [`crate::start`].
pub fn method_not_allowed<B>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let (req, res) = res.into_parts();
    let method = if req.extensions().get::<HeadRequest>().is_some() {
        Method::HEAD
    } else {
        req.method().clone()
    };
    let mut out = HttpResponse::MethodNotAllowed();
    if let Some(allow) = res
        .headers()
        .get(actix_web::http::header::ALLOW)
        .and_then(|v| v.to_str().ok())
    {
        out.insert_header((actix_web::http::header::ALLOW, allow_value(allow)));
    }
    let out = out.json(serde_json::json!({"error": {
        "code": "method_not_allowed",
        "message": format!("{method} is not allowed on {}", req.path()),
    }}));
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, out).map_into_right_body(),
    ))
}

/// Reads a JSON body up to `limit` bytes, refusing other content types.
pub async fn read_json_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, Error> {
    let is_json = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !is_json {
        return Err(Error::UnsupportedMediaType);
    }
    let too_large = || Error::TooLarge {
        code: "body_too_large",
        message: format!("request body exceeds {limit} bytes"),
    };
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(8192).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| Error::bad("bad_body", e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Checks the admin key in constant time. Without an `X-Admin-Key` header, a console session
/// cookie stands for the key ([`console::session_admin`]: state-changing requests also need
/// its CSRF token).
pub fn require_admin(req: &HttpRequest, state: &AppState) -> Result<(), Error> {
    let expected = state.settings.security.admin_key.as_bytes();
    if expected.is_empty() {
        return Err(Error::AdminDisabled);
    }
    let Some(given) = req.headers().get("x-admin-key").map(|v| v.as_bytes()) else {
        return console::session_admin(req, state).unwrap_or(Err(Error::Unauthorized));
    };
    if constant_time_eq(given, expected) {
        Ok(())
    } else {
        Err(Error::Unauthorized)
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, &x) in b.iter().enumerate() {
        diff |= x ^ a.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_documented_alphabet() {
        assert!(validate_id("user_id", "a.b:c@d-e_f9").is_ok());
        assert!(validate_id("user_id", "...").is_ok());
        assert!(validate_id("user_id", "").is_err());
        assert!(validate_id("user_id", &"x".repeat(129)).is_err());
        assert!(validate_id("user_id", &"x".repeat(128)).is_ok());
        for bad in ["a/b", "a b", "..%2f", "é", "a\u{0}", "a\nb", ".", ".."] {
            assert!(validate_id("user_id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn constant_time_eq_compares_exactly() {
        assert!(constant_time_eq(b"key", b"key"));
        assert!(!constant_time_eq(b"kez", b"key"));
        assert!(!constant_time_eq(b"ke", b"key"));
        assert!(!constant_time_eq(b"keyy", b"key"));
        assert!(!constant_time_eq(b"", b"key"));
    }
}
