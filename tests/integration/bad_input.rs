//! Bad input gets a clear 4xx JSON error and changes nothing (checked by reading state back).

use serde_json::json;

use crate::common::{code, event, settings, TestServer};

/// State that no refused request may change.
async fn snapshot(s: &TestServer) -> (f64, f64, f64, f64) {
    (
        s.metric("momentum_events_accepted_total").await,
        s.metric("momentum_users").await,
        s.metric("momentum_items").await,
        s.metric("momentum_interactions").await,
    )
}

#[actix_web::test]
async fn malformed_batches_are_refused_whole() {
    let s = TestServer::start();
    s.post_json("/v1/events", &json!([event("known", "i1", "view")]))
        .await;
    let before = snapshot(&s).await;

    let cases: Vec<(&str, &str, u16, &str)> = vec![
        ("application/json", "{not json", 400, "malformed_json"),
        (
            "application/json",
            r#"{"user_id":"u"}"#,
            400,
            "malformed_json",
        ),
        ("application/json", "[]", 400, "empty_batch"),
        (
            "application/json",
            r#"[{"user_id":"u","item_id":"i","kind":"rate","value":NaN}]"#,
            400,
            "malformed_json",
        ),
        ("application/json", "[\"\u{0}\"", 400, "malformed_json"),
        (
            "text/plain",
            r#"[{"user_id":"u","item_id":"i","kind":"view"}]"#,
            415,
            "unsupported_media_type",
        ),
    ];
    for (ct, body, status, want) in cases {
        let (got, res) = s.post_raw("/v1/events", ct, body.to_string()).await;
        assert_eq!((got, code(&res)), (status, want), "body {body:?}: {res}");
    }
    // Invalid UTF-8.
    let (got, res) = s
        .post_raw(
            "/v1/events",
            "application/json",
            vec![b'[', 0xff, 0xfe, b']'],
        )
        .await;
    assert_eq!((got, code(&res)), (400, "malformed_json"));
    assert_eq!(snapshot(&s).await, before);
}

#[actix_web::test]
async fn each_invalid_event_is_reported_with_index_and_reason() {
    let s = TestServer::start();
    let long = "x".repeat(129);
    let batch = json!([
        {"user_id": "u1", "item_id": "i1", "kind": "purchase"},
        {"user_id": "", "item_id": "i1", "kind": "view"},
        {"user_id": long, "item_id": "i1", "kind": "view"},
        {"user_id": "u1", "item_id": "../etc", "kind": "view"},
        {"user_id": "u1", "item_id": "i1", "kind": "rate", "value": 1e300},
        {"user_id": "u1", "item_id": "i1", "kind": "rate", "value": -1},
        {"user_id": "u1", "item_id": "i1", "kind": "view", "ts": -1},
        {"user_id": "u1", "item_id": "i1", "kind": "view", "extra": true},
        {"user_id": "u1", "item_id": "i1", "kind": 7},
        {"user_id": "u1", "kind": "view"},
        {"user_id": "good", "item_id": "i9", "kind": "view"}
    ]);
    let (status, body) = s.post_json("/v1/events", &batch).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1);
    let rejected = body["rejected"].as_array().expect("rejected");
    let codes: Vec<(u64, &str)> = rejected
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().expect("index"),
                r["code"].as_str().expect("code"),
            )
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            (0, "unknown_kind"),
            (1, "invalid_id"),
            (2, "invalid_id"),
            (3, "invalid_id"),
            (4, "invalid_value"),
            (5, "invalid_value"),
            (6, "invalid_timestamp"),
            (7, "invalid_event"),
            (8, "invalid_event"),
            (9, "missing_item"),
        ]
    );
    assert!(rejected
        .iter()
        .all(|r| r["message"].as_str().is_some_and(|m| !m.is_empty())));
    assert_eq!(
        s.get("/v1/users/u1").await.0,
        404,
        "no rejected event created u1"
    );
    assert_eq!(
        s.metric(r#"momentum_events_rejected_total{reason="invalid_id"}"#)
            .await,
        3.0
    );

    // All invalid → 400 and nothing applied.
    let before = snapshot(&s).await;
    let (status, body) = s
        .post_json(
            "/v1/events",
            &json!([{"user_id": "u2", "item_id": "i", "kind": "nope"}]),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "invalid_events"));
    assert_eq!(body["rejected"][0]["index"], 0);
    assert_eq!(snapshot(&s).await, before);
}

#[actix_web::test]
async fn oversized_batches_and_bodies_get_413() {
    let mut cfg = settings();
    cfg.ingest.max_batch = 3;
    cfg.server.max_body_bytes = 4096;
    let s = TestServer::start_with(cfg);
    let four: Vec<_> = (0..4)
        .map(|i| event(&format!("u{i}"), "i", "view"))
        .collect();
    let (status, body) = s.post_json("/v1/events", &json!(four)).await;
    assert_eq!((status, code(&body)), (413, "batch_too_large"));
    let big = format!(
        "[{}]",
        vec![r#"{"user_id":"u","item_id":"i","kind":"view"}"#; 200].join(",")
    );
    let (status, body) = s.post_raw("/v1/events", "application/json", big).await;
    assert_eq!((status, code(&body)), (413, "body_too_large"));
    assert_eq!(s.metric("momentum_users").await, 0.0);
}

#[actix_web::test]
async fn unknown_ids_and_bad_paths_get_404_or_400() {
    let s = TestServer::start();
    for (path, status, want) in [
        ("/v1/users/ghost", 404, "unknown_user"),
        ("/v1/users/ghost/recommendations", 404, "unknown_user"),
        ("/v1/users/ghost/similar-users", 404, "unknown_user"),
        ("/v1/items/ghost", 404, "unknown_item"),
        ("/v1/items/ghost/similar-items", 404, "unknown_item"),
        ("/v1/users/bad%20id", 400, "invalid_id"),
        ("/v1/items/%2e%2e%2fx", 400, "invalid_id"),
        ("/v1/nothing-here", 404, "not_found"),
    ] {
        let (got, body) = s.get(path).await;
        assert_eq!((got, code(&body)), (status, want), "{path}: {body}");
    }
    s.post_json("/v1/events", &json!([event("real", "i1", "view")]))
        .await;
    for (path, want) in [
        ("/v1/users/real/recommendations?n=0", "invalid_query"),
        ("/v1/users/real/recommendations?n=101", "invalid_query"),
        ("/v1/users/real/recommendations?n=abc", "invalid_query"),
        ("/v1/users/real/recommendations?m=3", "invalid_query"),
    ] {
        let (got, body) = s.get(path).await;
        assert_eq!((got, code(&body)), (400, want), "{path}: {body}");
    }
}

#[actix_web::test]
async fn bad_item_and_profile_bodies_change_nothing() {
    let s = TestServer::start();
    for body in [
        json!({"title": 5}),
        json!({"title": "t", "colour": "red"}),
        json!({"title": "t", "difficulty": 7}),
        json!({"title": "t", "tags": [""]}),
        json!({"title": "bell\u{7}"}),
    ] {
        let (status, res) = s.put_json("/v1/items/i1", &body).await;
        assert_eq!(status, 400, "{body} → {res}");
        assert!(!code(&res).is_empty());
    }
    assert_eq!(s.get("/v1/items/i1").await.0, 404);
    let (status, res) = s
        .put_json("/v1/users/u1", &json!({"locale": "en GB!"}))
        .await;
    assert_eq!((status, code(&res)), (400, "invalid_profile"));
    let (status, _) = s
        .put_json("/v1/users/u1", &json!({"signup_date": "last tuesday"}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(s.get("/v1/users/u1").await.0, 404);
}
