//! `POST /v1/events`: a JSON array of interaction events. Each element is validated on its
//! own; valid events are applied, invalid ones are reported with their index and reason, and
//! an `event_id` makes retries idempotent. A batch with no valid event is a 400; a batch
//! larger than `ingest.max_batch` or a body over `server.max_body_bytes` is a 413.
//!
//! An event may name the `recommendation_id` it responds to; once the engine has applied the
//! batch, such events are attributed to the A/B variant the recommendation was served under
//! (the rule is in [`crate::experiments`]).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use momentum_actors::engine::{NewEvent, Rejection};
use momentum_models::clock::DAY_MS;
use momentum_models::events::{EventKind, KindWeights};

use crate::api::{read_json_body, validate_id};
use crate::error::Error;
use crate::experiments::Pending;
use crate::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/events").route(web::post().to(post_events)));
}

/// An event as it arrives on the wire.
#[derive(Debug, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
struct WireEvent {
    #[serde(default)]
    event_id: Option<String>,
    user_id: String,
    #[serde(default)]
    item_id: Option<String>,
    kind: String,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    ts: Option<WireTimestamp>,
    /// The recommendation this event responds to (A/B attribution).
    #[serde(default)]
    recommendation_id: Option<String>,
}
momentum_models::object_only!(WireEvent);

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum WireTimestamp {
    Millis(i64),
    /// Another JSON number: milliseconds too when integral (`1.7e12`), refused otherwise.
    Number(f64),
    Text(String),
}

/// Latest accepted timestamp: one day ahead of the server clock (clock skew).
const MAX_FUTURE_MS: i64 = DAY_MS;

/// A valid event and the recommendation it responds to.
#[derive(Debug)]
pub struct Validated {
    pub event: NewEvent,
    pub recommendation_id: Option<String>,
}

/// Validates one decoded event; `Err` is (code, message).
fn validate(
    index: usize,
    e: WireEvent,
    weights: &KindWeights,
    now: i64,
) -> Result<Validated, (&'static str, String)> {
    validate_id("user_id", &e.user_id).map_err(|err| ("invalid_id", err.to_string()))?;
    if let Some(id) = &e.event_id {
        validate_id("event_id", id).map_err(|err| ("invalid_id", err.to_string()))?;
    }
    if let Some(id) = &e.recommendation_id {
        validate_id("recommendation_id", id).map_err(|err| ("invalid_id", err.to_string()))?;
    }
    let kind = EventKind::parse(&e.kind)
        .ok_or_else(|| ("unknown_kind", format!("unknown kind {:?}", e.kind)))?;
    match (&e.item_id, kind.needs_item()) {
        (Some(item), _) => {
            validate_id("item_id", item).map_err(|err| ("invalid_id", err.to_string()))?
        }
        (None, true) => {
            return Err((
                "missing_item",
                format!("kind {:?} needs an item_id", e.kind),
            ))
        }
        (None, false) => {}
    }
    let value = match (e.value, kind) {
        // Values are stored as f32: 1e300 is a finite f64 but an infinite f32, and values just
        // above f32::MAX would round down to it.
        (Some(v), _) if !v.is_finite() || v.abs() > f64::from(f32::MAX) => {
            return Err(("invalid_value", "value must be a finite number".into()))
        }
        (Some(v), EventKind::Rate) if v < 0.0 || v > f64::from(weights.max_rating) => {
            return Err((
                "invalid_value",
                format!("rate value must be in [0, {}]", weights.max_rating),
            ))
        }
        (None, EventKind::Rate) => return Err(("invalid_value", "rate needs a value".into())),
        (v, _) => v.map(|v| v as f32),
    };
    let ts_ms = match e.ts {
        None => now,
        Some(WireTimestamp::Millis(ms)) => ms,
        // Beyond ±2^63 the cast saturates, which the range check below refuses.
        Some(WireTimestamp::Number(ms)) if ms.is_finite() && ms.fract() == 0.0 => ms as i64,
        Some(WireTimestamp::Number(ms)) => {
            return Err((
                "invalid_timestamp",
                format!("ts {ms} is not a whole number of milliseconds"),
            ))
        }
        Some(WireTimestamp::Text(s)) => OffsetDateTime::parse(&s, &Rfc3339)
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
            .map_err(|_| {
                (
                    "invalid_timestamp",
                    format!("ts {s:?} is neither unix milliseconds nor RFC 3339"),
                )
            })?,
    };
    if ts_ms < 0 || ts_ms > now + MAX_FUTURE_MS {
        return Err((
            "invalid_timestamp",
            "ts must be after 1970-01-01 and at most one day in the future".into(),
        ));
    }
    Ok(Validated {
        event: NewEvent {
            index,
            event_id: e.event_id,
            user_id: e.user_id,
            item_id: e.item_id,
            kind,
            value,
            ts_ms,
        },
        recommendation_id: e.recommendation_id,
    })
}

/// Decodes and validates a request body: a JSON array of at most `max_batch` events, each
/// checked on its own against `weights` and the clock `now_ms` (unix milliseconds). Returns the
/// valid events and the rejections, both in batch order. A body that is not a JSON array is a
/// `400 malformed_json`, an empty one `400 empty_batch`, a longer one `413 batch_too_large`.
/// Pure (no I/O): the fuzz target in `fuzz/` calls it with arbitrary bytes.
pub fn parse_events(
    body: &[u8],
    max_batch: usize,
    weights: &KindWeights,
    now_ms: i64,
) -> Result<(Vec<Validated>, Vec<Rejection>), Error> {
    let raw: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| {
        Error::bad(
            "malformed_json",
            format!("expected a JSON array of events: {e}"),
        )
    })?;
    validate_all(raw, max_batch, weights, now_ms)
}

/// [`parse_events`] for a record of a bridged topic (`crate::cluster::bridge`): the value is
/// one event object or a JSON array of them, validated exactly as a request body is. A single
/// object is event 0 of its record.
pub fn parse_record(
    value: &[u8],
    max_batch: usize,
    weights: &KindWeights,
    now_ms: i64,
) -> Result<(Vec<Validated>, Vec<Rejection>), Error> {
    let single = value
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{');
    if !single {
        return parse_events(value, max_batch, weights, now_ms);
    }
    let raw: &RawValue = serde_json::from_slice(value).map_err(|e| {
        Error::bad(
            "malformed_json",
            format!("expected an event object or a JSON array of events: {e}"),
        )
    })?;
    validate_all(vec![raw], max_batch, weights, now_ms)
}

/// Validates each decoded element of a batch on its own (see [`parse_events`]).
fn validate_all(
    raw: Vec<&RawValue>,
    max_batch: usize,
    weights: &KindWeights,
    now_ms: i64,
) -> Result<(Vec<Validated>, Vec<Rejection>), Error> {
    if raw.len() > max_batch {
        return Err(Error::TooLarge {
            code: "batch_too_large",
            message: format!(
                "{} events in one request; the limit is {max_batch}",
                raw.len()
            ),
        });
    }
    if raw.is_empty() {
        return Err(Error::bad("empty_batch", "the batch has no events"));
    }
    let mut rejected: Vec<Rejection> = Vec::new();
    let mut valid = Vec::with_capacity(raw.len());
    for (index, value) in raw.into_iter().enumerate() {
        let decoded = serde_json::from_str::<WireEvent>(value.get())
            .map_err(|e| ("invalid_event", e.to_string()))
            .and_then(|e| validate(index, e, weights, now_ms));
        match decoded {
            Ok(v) => valid.push(v),
            Err((code, message)) => rejected.push(Rejection {
                index,
                code,
                message,
            }),
        }
    }
    Ok((valid, rejected))
}

async fn post_events(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Error> {
    let body = read_json_body(&req, payload, state.settings.server.max_body_bytes).await?;
    let (decoded, mut rejected) = parse_events(
        &body,
        state.settings.ingest.max_batch,
        &state.settings.weights,
        state.clock.now_ms(),
    )?;
    let mut valid = Vec::with_capacity(decoded.len());
    let mut recommendation_ids = Vec::with_capacity(decoded.len());
    let mut pending: Vec<Pending> = Vec::new();
    let mut with_event_id: Vec<usize> = Vec::new();
    for Validated {
        event,
        recommendation_id,
    } in decoded
    {
        let index = event.index;
        if event.event_id.is_some() {
            with_event_id.push(index);
        }
        recommendation_ids.push(recommendation_id.clone());
        if let Some(recommendation_id) = recommendation_id {
            pending.push(Pending {
                index,
                recommendation_id,
                user_id: event.user_id.clone(),
                event_id: event.event_id.clone(),
                kind: event.kind,
            });
        }
        valid.push(event);
    }
    if let Some(cluster) = &state.cluster {
        return logged_to_cluster(&state, cluster, valid, &recommendation_ids, rejected).await;
    }
    state.analytics.observe_events(&state.engine, &valid);
    let report = if valid.is_empty() {
        Default::default()
    } else {
        state.journal.record(valid, recommendation_ids).await?
    };
    if !pending.is_empty() {
        state
            .experiments
            .attribute_applied(&pending, &with_event_id, &report);
    }
    rejected.extend(report.rejected);
    rejected.sort_by_key(|r| r.index);
    let m = &state.http_metrics;
    m.events_accepted.inc_by(report.accepted as u64);
    m.events_duplicate.inc_by(report.duplicates as u64);
    for r in &rejected {
        m.events_rejected.with_label_values(&[r.code]).inc();
    }
    let rejected_json: Vec<_> = rejected
        .iter()
        .map(|r| json!({"index": r.index, "code": r.code, "message": r.message}))
        .collect();
    if report.accepted + report.duplicates == 0 {
        return Ok(HttpResponse::BadRequest().json(json!({
            "error": {"code": "invalid_events", "message": "no event in the batch is valid"},
            "rejected": rejected_json,
        })));
    }
    Ok(HttpResponse::Ok().json(json!({
        "accepted": report.accepted,
        "duplicates": report.duplicates,
        "rejected": rejected_json,
    })))
}

/// Cluster mode: the valid events are produced to the events topic, each to its user's
/// partition, and the answer waits for the broker's confirmation of every one. The owners
/// apply them (and drop duplicate event ids) as they consume: `accepted` counts the events
/// logged, and `duplicates` is always 0 here (`momentum_events_duplicate_total` on the owners
/// counts them).
async fn logged_to_cluster(
    state: &AppState,
    cluster: &crate::cluster::Cluster,
    valid: Vec<NewEvent>,
    recommendation_ids: &[Option<String>],
    mut rejected: Vec<Rejection>,
) -> Result<HttpResponse, Error> {
    rejected.sort_by_key(|r| r.index);
    let m = &state.http_metrics;
    for r in &rejected {
        m.events_rejected.with_label_values(&[r.code]).inc();
    }
    let rejected_json: Vec<_> = rejected
        .iter()
        .map(|r| json!({"index": r.index, "code": r.code, "message": r.message}))
        .collect();
    if valid.is_empty() {
        return Ok(HttpResponse::BadRequest().json(json!({
            "error": {"code": "invalid_events", "message": "no event in the batch is valid"},
            "rejected": rejected_json,
        })));
    }
    cluster.produce(&valid, recommendation_ids).await?;
    Ok(HttpResponse::Ok().json(json!({
        "accepted": valid.len(),
        "duplicates": 0,
        "rejected": rejected_json,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(json: &str) -> WireEvent {
        serde_json::from_str(json).expect("decodes")
    }

    #[test]
    fn rate_needs_a_value_in_range() {
        let w = KindWeights::default();
        let now = 1_700_000_000_000;
        let e = wire(r#"{"user_id":"u","item_id":"i","kind":"rate","value":11}"#);
        assert_eq!(validate(0, e, &w, now).unwrap_err().0, "invalid_value");
        let e = wire(r#"{"user_id":"u","item_id":"i","kind":"rate"}"#);
        assert_eq!(validate(0, e, &w, now).unwrap_err().0, "invalid_value");
        let e = wire(r#"{"user_id":"u","item_id":"i","kind":"rate","value":4}"#);
        assert_eq!(
            validate(0, e, &w, now).expect("valid").event.value,
            Some(4.0)
        );
    }

    #[test]
    fn timestamps_accept_millis_and_rfc3339_and_refuse_absurd_ones() {
        let w = KindWeights::default();
        let now = 1_700_000_000_000;
        let e =
            wire(r#"{"user_id":"u","item_id":"i","kind":"view","ts":"2023-11-14T22:13:20+00:00"}"#);
        assert_eq!(
            validate(0, e, &w, now).expect("valid").event.ts_ms,
            1_700_000_000_000
        );
        let e = wire(r#"{"user_id":"u","item_id":"i","kind":"view","ts":-5}"#);
        assert_eq!(validate(0, e, &w, now).unwrap_err().0, "invalid_timestamp");
        let e = wire(r#"{"user_id":"u","item_id":"i","kind":"view","ts":99999999999999}"#);
        assert_eq!(validate(0, e, &w, now).unwrap_err().0, "invalid_timestamp");
        let e = wire(r#"{"user_id":"u","item_id":"i","kind":"view","ts":"yesterday"}"#);
        assert_eq!(validate(0, e, &w, now).unwrap_err().0, "invalid_timestamp");
        let e = wire(r#"{"user_id":"u","item_id":"i","kind":"view","ts":1.7e12}"#);
        assert_eq!(
            validate(0, e, &w, now).expect("integral").event.ts_ms,
            1_700_000_000_000
        );
        let e = wire(r#"{"user_id":"u","item_id":"i","kind":"view","ts":1700000000000.5}"#);
        assert_eq!(validate(0, e, &w, now).unwrap_err().0, "invalid_timestamp");
        let e = wire(r#"{"user_id":"u","item_id":"i","kind":"view","ts":1e300}"#);
        assert_eq!(validate(0, e, &w, now).unwrap_err().0, "invalid_timestamp");
    }

    #[test]
    fn recommendation_ids_are_validated_and_carried() {
        let w = KindWeights::default();
        let e = wire(r#"{"user_id":"u","item_id":"i","kind":"click","recommendation_id":"r-1"}"#);
        let v = validate(0, e, &w, 0).expect("valid");
        assert_eq!(v.recommendation_id.as_deref(), Some("r-1"));
        let e = wire(r#"{"user_id":"u","item_id":"i","kind":"click","recommendation_id":"a b"}"#);
        assert_eq!(validate(0, e, &w, 0).unwrap_err().0, "invalid_id");
        let e = wire(r#"{"user_id":"u","item_id":"i","kind":"click","recommendation_id":""}"#);
        assert_eq!(validate(0, e, &w, 0).unwrap_err().0, "invalid_id");
    }

    #[test]
    fn parse_events_survives_deep_nesting_and_refuses_f32_overflow() {
        let w = KindWeights::default();
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let (valid, rejected) = parse_events(deep.as_bytes(), 10, &w, 0).expect("an array");
        assert!(valid.is_empty());
        assert_eq!((rejected[0].index, rejected[0].code), (0, "invalid_event"));
        let body = br#"[{"user_id":"u","item_id":"i","kind":"view","value":1e300}]"#;
        let (_, rejected) = parse_events(body, 10, &w, 0).expect("an array");
        assert_eq!(rejected[0].code, "invalid_value");
        let err = parse_events(b"[1,2,3]", 2, &w, 0).expect_err("too many");
        assert_eq!(err.code(), "batch_too_large");
    }

    #[test]
    fn a_bridged_record_is_one_event_or_an_array_validated_like_a_body() {
        let w = KindWeights::default();
        let one = br#" {"user_id":"u","item_id":"i","kind":"view","ts":5}"#;
        let (valid, rejected) = parse_record(one, 10, &w, 0).expect("an object");
        assert_eq!((valid.len(), rejected.len()), (1, 0));
        assert_eq!(valid[0].event.index, 0);
        let many = br#"[{"user_id":"u","item_id":"i","kind":"view"},{"user_id":"u","kind":"fly"}]"#;
        let (valid, rejected) = parse_record(many, 10, &w, 0).expect("an array");
        assert_eq!(valid.len(), 1);
        assert_eq!((rejected[0].index, rejected[0].code), (1, "unknown_kind"));
        let bad = |value: &[u8]| parse_record(value, 1, &w, 0).expect_err("refused").code();
        assert_eq!(bad(b"{\"user_id\":"), "malformed_json");
        assert_eq!(bad(b"not json"), "malformed_json");
        assert_eq!(bad(b""), "malformed_json");
        assert_eq!(bad(b"[]"), "empty_batch");
        assert_eq!(bad(b"[{},{}]"), "batch_too_large");
        let (_, rejected) = parse_record(b"{}", 1, &w, 0).expect("an object");
        assert_eq!(rejected[0].code, "invalid_event");
    }

    #[test]
    fn app_open_needs_no_item_but_views_do() {
        let w = KindWeights::default();
        let e = wire(r#"{"user_id":"u","kind":"app_open"}"#);
        assert!(validate(0, e, &w, 0).is_ok());
        let e = wire(r#"{"user_id":"u","kind":"view"}"#);
        assert_eq!(validate(0, e, &w, 0).unwrap_err().0, "missing_item");
    }
}
