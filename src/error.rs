//! The server's error type and its one mapping to HTTP: every variant has a status and a
//! stable snake_case code; the body is `{"error":{"code","message"}}`. Internal details are
//! logged with their whole chain of causes ([`Report`]), never sent.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use momentum_actors::config::ConfigError as EngineConfigError;
use momentum_actors::snapshot::DecodeError;
use momentum_actors::ActorError;

use crate::analytics::config::ConfigError as AnalyticsConfigError;
use crate::store::StoreError;

/// Everything that can go wrong in the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; `code` names the rule it broke.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// The body or batch is larger than allowed.
    #[error("{message}")]
    TooLarge { code: &'static str, message: String },
    /// The request line and headers are larger than the server serves.
    #[error("the request line and headers exceed {limit} bytes")]
    HeadersTooLarge { limit: usize },
    /// The body is not JSON.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("unknown user {id:?}")]
    UnknownUser { id: String },
    #[error("unknown item {id:?}")]
    UnknownItem { id: String },
    #[error("unknown experiment {id:?}")]
    UnknownExperiment { id: String },
    /// The request contradicts the current state (e.g. the id is taken).
    #[error("{message}")]
    Conflict { message: String },
    /// No route or resource.
    #[error("{message}")]
    NotFound { message: String },
    /// A mailbox is full; retry after the given seconds.
    #[error("the server is overloaded ({actor} mailbox full), retry later")]
    Overloaded {
        actor: &'static str,
        retry_after: u64,
    },
    /// `server.max_inflight_requests` requests are being served; retry after the seconds.
    #[error("the server is serving its limit of {limit} requests at once, retry later")]
    Shed { limit: usize, retry_after: u64 },
    /// Request bodies being received already fill `server.max_body_buffer_bytes`.
    #[error("the server is receiving its limit of request bodies at once, retry later")]
    BodyBufferFull { retry_after: u64 },
    /// The request body did not arrive within `server.body_timeout_secs`.
    #[error("the request body did not arrive within {secs} s (server.body_timeout_secs)")]
    BodyTimeout { secs: u64 },
    /// Admin route without the right key.
    #[error("a valid X-Admin-Key header is required")]
    Unauthorized,
    /// Admin route while no admin key is configured.
    #[error("admin routes are disabled: security.admin_key is not set")]
    AdminDisabled,
    /// Authenticated, but the request may not do this (e.g. a console session without its
    /// CSRF token on a state-changing request).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// A bounded table is full.
    #[error("the {what} table is full ({capacity} entries)")]
    CapacityReached { what: &'static str, capacity: usize },
    /// Shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A prediction needs a model that has not been trained yet.
    #[error(
        "the {model} model is not trained yet: the trainer learns it from the event log \
         (scheduled, or POST /v1/models/train with the admin key)"
    )]
    ModelNotReady { model: &'static str },
    /// Restoring state at start-up.
    #[error("the server is restoring its state; retry shortly")]
    NotReady,
    /// Cluster mode: the user's partition is owned by another node.
    #[error(
        "partition {partition} is not owned by node {node_id:?}; ask its owner (GET /v1/cluster)"
    )]
    NotOwner { partition: u32, node_id: String },
    /// Cluster mode: only the cluster's leader (the node serving partition 0) does this.
    #[error(
        "{what} runs on the cluster's leader, node {node_id:?} at {address}; send the request \
         there (GET /v1/cluster names the leader)"
    )]
    NotLeader {
        what: &'static str,
        node_id: String,
        address: String,
    },
    /// Cluster mode: a service the write path needs did not answer.
    #[error("{what} is unavailable, retry later")]
    Unavailable {
        what: &'static str,
        retry_after: u64,
    },
    /// Invalid configuration (start-up only).
    #[error("configuration: {message}")]
    Config { message: String },
    /// A value of the engine's sections is out of bounds (start-up only).
    #[error("configuration: {source}")]
    EngineConfig {
        #[source]
        source: EngineConfigError,
    },
    /// A value of the models' sections is out of bounds (start-up only).
    #[error("configuration: {source}")]
    AnalyticsConfig {
        #[source]
        source: AnalyticsConfigError,
    },
    /// I/O failure (start-up, CLI).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The store failed. A store that cannot be used at all (another server holds it, it is
    /// damaged, it holds undecodable data) says which and what to do.
    #[error("{}", store_summary(source))]
    Store {
        #[source]
        source: StoreError,
    },
    /// A stored snapshot part cannot be decoded (restore).
    #[error("snapshot {id} part {key} cannot be decoded")]
    Snapshot {
        id: u64,
        key: String,
        #[source]
        source: DecodeError,
    },
    /// A value cannot be converted to or from JSON for the store.
    #[error("{what}: JSON")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// Something the server relies on failed; `context` says what it was doing.
    #[error("{context}")]
    Failed {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Anything else; the message is logged, the client sees a generic text.
    #[error("internal error: {message}")]
    Internal { message: String },
}

/// What an [`Error::Store`] says before its cause: the cause alone when it is the one-line
/// message for the operator, the repair commands for undecodable data.
fn store_summary(source: &StoreError) -> String {
    match source {
        StoreError::Locked { message } | StoreError::Damaged { message } => message.clone(),
        StoreError::Corrupt { .. } => "the store holds data that cannot be decoded: run \
                                       `momentum store check`, then `momentum store recover` \
                                       (docs/operations.md, \"Store damage\")"
            .to_owned(),
        _ => "store".to_owned(),
    }
}

impl From<StoreError> for Error {
    fn from(source: StoreError) -> Error {
        Error::Store { source }
    }
}

impl From<EngineConfigError> for Error {
    fn from(source: EngineConfigError) -> Error {
        Error::EngineConfig { source }
    }
}

impl From<AnalyticsConfigError> for Error {
    fn from(source: AnalyticsConfigError) -> Error {
        Error::AnalyticsConfig { source }
    }
}

/// Actor errors outside a request path: an overload is retried after a second.
impl From<ActorError> for Error {
    fn from(e: ActorError) -> Error {
        Error::from_actor(e, 1)
    }
}

/// An error and its causes on one line, `error: cause: cause`, for logs and the command
/// line. A cause whose text the line already holds (many errors print their source) is not
/// repeated.
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut line = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let text = e.to_string();
            if !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = e.source();
        }
        f.write_str(&line)
    }
}

impl Error {
    /// Maps an actor-layer error, attaching the Retry-After to send on overload.
    pub fn from_actor(e: ActorError, retry_after: u64) -> Error {
        match e {
            ActorError::Overloaded { actor } => Error::Overloaded { actor, retry_after },
            ActorError::Stopped { .. } => Error::ShuttingDown,
            ActorError::UnknownUser { id } => Error::UnknownUser { id },
            ActorError::UnknownItem { id } => Error::UnknownItem { id },
            ActorError::CapacityReached { what, capacity } => {
                Error::CapacityReached { what, capacity }
            }
        }
    }

    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest { code, .. }
            | Error::TooLarge { code, .. }
            | Error::Forbidden { code, .. } => code,
            Error::HeadersTooLarge { .. } => "headers_too_large",
            Error::UnsupportedMediaType => "unsupported_media_type",
            Error::UnknownUser { .. } => "unknown_user",
            Error::UnknownItem { .. } => "unknown_item",
            Error::UnknownExperiment { .. } => "unknown_experiment",
            Error::Conflict { .. } => "conflict",
            Error::NotFound { .. } => "not_found",
            Error::Overloaded { .. } | Error::Shed { .. } | Error::BodyBufferFull { .. } => {
                "overloaded"
            }
            Error::BodyTimeout { .. } => "body_timeout",
            Error::Unauthorized => "unauthorized",
            Error::AdminDisabled => "admin_disabled",
            Error::CapacityReached { .. } => "capacity_reached",
            Error::ShuttingDown => "shutting_down",
            Error::ModelNotReady { .. } => "model_not_ready",
            Error::NotReady => "not_ready",
            Error::NotOwner { .. } => "not_owner",
            Error::NotLeader { .. } => "not_leader",
            Error::Unavailable { .. } => "unavailable",
            Error::Config { .. } | Error::EngineConfig { .. } | Error::AnalyticsConfig { .. } => {
                "config"
            }
            Error::Io { .. } => "io",
            Error::Store { .. }
            | Error::Snapshot { .. }
            | Error::Json { .. }
            | Error::Failed { .. }
            | Error::Internal { .. } => "internal",
        }
    }

    /// Wraps a failure of something the server relies on, saying what it was doing.
    pub fn failed(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::Failed {
            context: context.into(),
            source: source.into(),
        }
    }

    /// Shorthand for a 400.
    pub fn bad(code: &'static str, message: impl Into<String>) -> Error {
        Error::BadRequest {
            code,
            message: message.into(),
        }
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::UnknownUser { .. }
            | Error::UnknownItem { .. }
            | Error::UnknownExperiment { .. }
            | Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::Overloaded { .. }
            | Error::Shed { .. }
            | Error::BodyBufferFull { .. }
            | Error::ShuttingDown
            | Error::NotReady
            | Error::Unavailable { .. }
            | Error::ModelNotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::NotOwner { .. } | Error::NotLeader { .. } => StatusCode::MISDIRECTED_REQUEST,
            Error::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::AdminDisabled | Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            Error::CapacityReached { .. } => StatusCode::INSUFFICIENT_STORAGE,
            Error::Config { .. }
            | Error::EngineConfig { .. }
            | Error::AnalyticsConfig { .. }
            | Error::Io { .. }
            | Error::Store { .. }
            | Error::Snapshot { .. }
            | Error::Json { .. }
            | Error::Failed { .. }
            | Error::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = match self {
            Error::Config { .. }
            | Error::EngineConfig { .. }
            | Error::AnalyticsConfig { .. }
            | Error::Io { .. }
            | Error::Store { .. }
            | Error::Snapshot { .. }
            | Error::Json { .. }
            | Error::Failed { .. }
            | Error::Internal { .. } => {
                tracing::error!(error = %Report(self), "internal error");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        let mut res = HttpResponse::build(self.status_code());
        match self {
            Error::Overloaded { retry_after, .. }
            | Error::Shed { retry_after, .. }
            | Error::BodyBufferFull { retry_after }
            | Error::Unavailable { retry_after, .. } => {
                res.insert_header((header::RETRY_AFTER, HeaderValue::from(*retry_after)));
            }
            // The rest of the body is still on the wire: the connection cannot be reused.
            Error::BodyTimeout { .. } => {
                res.insert_header((header::CONNECTION, HeaderValue::from_static("close")));
            }
            Error::ShuttingDown | Error::NotReady => {
                res.insert_header((header::RETRY_AFTER, HeaderValue::from(1u64)));
            }
            Error::ModelNotReady { .. } => {
                res.insert_header((header::RETRY_AFTER, HeaderValue::from(60u64)));
            }
            _ => {}
        }
        res.json(json!({"error": {"code": self.code(), "message": message}}))
    }
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody;

    use super::*;

    #[test]
    fn overload_is_a_503_with_retry_after_and_a_json_body() {
        let err = Error::from_actor(
            ActorError::Overloaded {
                actor: "user_shard",
            },
            2,
        );
        let res = err.error_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            res.headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("2")
        );
        let body = res.into_body().try_into_bytes().expect("in-memory body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["error"]["code"], "overloaded");
    }

    #[test]
    fn internal_details_are_not_sent() {
        let res = Error::Internal {
            message: "db password=hunter2".into(),
        }
        .error_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = res.into_body().try_into_bytes().expect("in-memory body");
        assert!(!String::from_utf8_lossy(&body).contains("hunter2"));
    }

    #[test]
    fn a_store_error_keeps_its_cause_out_of_the_response() {
        let err = Error::from(StoreError::Io {
            context: "embedded store".into(),
            source: std::io::Error::other("disk /secret/path failed"),
        });
        assert_eq!(
            Report(&err).to_string(),
            "store: embedded store: disk /secret/path failed"
        );
        assert!(std::error::Error::source(&err).is_some());
        let res = err.error_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = res.into_body().try_into_bytes().expect("in-memory body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["error"]["code"], "internal");
        assert_eq!(json["error"]["message"], "internal error");
    }

    #[test]
    fn a_configuration_error_keeps_its_cause_and_its_text() {
        let mut engine = momentum_actors::EngineConfig::default();
        engine.recommend.cf_weight = -1.0;
        let err = Error::from(engine.validate().expect_err("negative weight"));
        assert_eq!(err.code(), "config");
        let cause = std::error::Error::source(&err).and_then(std::error::Error::source);
        assert!(cause.is_some(), "{err:?}");
        assert_eq!(
            Report(&err).to_string(),
            "configuration: recommend.cf_weight / content_weight: invalid input: \
             hybrid weights must be finite and >= 0, got -1 and 0.2"
        );
    }

    #[test]
    fn an_operator_store_message_is_said_once() {
        let err = Error::from(StoreError::Locked {
            message: "the store is held by another server".into(),
        });
        assert_eq!(
            Report(&err).to_string(),
            "the store is held by another server"
        );
    }
}
