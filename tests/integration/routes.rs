//! Every route of the core API against a real server.

use serde_json::json;

use crate::common::{code, event, TestServer, ADMIN_KEY};

/// Three users with overlapping tastes: a and b share g1, g2; c only g3, g4.
fn seed_events() -> serde_json::Value {
    json!([
        event("alice", "g1", "complete"),
        event("alice", "g2", "like"),
        event("alice", "g5", "view"),
        event("bob", "g1", "complete"),
        event("bob", "g2", "like"),
        event("bob", "g6", "start"),
        event("bob", "g7", "checkin"),
        event("carol", "g3", "view"),
        event("carol", "g4", "view"),
        {"user_id": "dave", "item_id": "g6", "kind": "rate", "value": 5, "ts": "2024-05-01T10:00:00Z"},
        {"user_id": "dave", "item_id": "g7", "kind": "rate", "value": 4, "ts": 1714557600000u64},
        {"user_id": "erin", "kind": "app_open"}
    ])
}

#[actix_web::test]
async fn health_readiness_and_metrics() {
    let s = TestServer::start();
    assert_eq!(s.get("/healthz").await.0, 200);
    let (status, body) = s.get("/readyz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")));
    let text = s.metrics().await;
    for name in [
        "momentum_http_request_duration_seconds",
        "momentum_mailbox_depth",
        "momentum_users",
        "momentum_items",
        "momentum_interactions",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    // Route templates, not raw paths, label the latency histogram.
    s.get("/v1/users/someone/recommendations").await;
    let text = s.metrics().await;
    assert!(
        text.contains(r#"route="/v1/users/{id}/recommendations""#),
        "{text}"
    );
    assert!(!text.contains("someone"));
}

#[actix_web::test]
async fn events_feed_recommendations_and_similarity() {
    let s = TestServer::start();
    let (status, body) = s.post_json("/v1/events", &seed_events()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 12);
    assert_eq!(body["rejected"].as_array().map(Vec::len), Some(0));
    assert_eq!(s.metric("momentum_events_accepted_total").await, 12.0);
    assert_eq!(s.metric("momentum_interactions").await, 11.0);
    assert_eq!(s.metric("momentum_users").await, 5.0);

    // Alice is most like Bob; Bob's g6/g7 are recommended, her completed g1 is not.
    let (status, body) = s.get("/v1/users/alice/similar-users").await;
    assert_eq!(status, 200);
    assert_eq!(body["users"][0]["user_id"], "bob");
    let sim = body["users"][0]["similarity"].as_f64().expect("similarity");
    assert!(sim > 0.5 && sim <= 1.0, "{sim}");

    let (status, body) = s.get("/v1/users/alice/recommendations?n=5").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["strategy"], "collaborative");
    let items: Vec<&str> = body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["item_id"].as_str().expect("id"))
        .collect();
    assert!(items.len() <= 5 && !items.is_empty());
    assert!(
        !items.contains(&"g1"),
        "completed items are excluded: {items:?}"
    );
    assert!(items.contains(&"g6") && items.contains(&"g7"), "{items:?}");
    let first = &body["items"][0];
    let score = first["score"].as_f64().expect("score");
    let confidence = first["confidence"].as_f64().expect("confidence");
    assert!((0.0..=1.0).contains(&score) && (0.0..1.0).contains(&confidence));
    let reasons = first["reasons"].as_array().expect("reasons");
    assert!(
        reasons.iter().any(|r| r
            .as_str()
            .is_some_and(|r| r.contains("users like you") || r.contains("similar to"))),
        "{reasons:?}"
    );
    assert!(body["recommendation_id"]
        .as_str()
        .is_some_and(|id| id.len() == 32));

    // Second request is a cache hit; a new event of hers invalidates it.
    let (_, again) = s.get("/v1/users/alice/recommendations?n=5").await;
    assert_eq!(again["cached"], true);
    assert_eq!(
        s.metric(r#"momentum_recommendation_cache_requests_total{result="hit"}"#)
            .await,
        1.0
    );
    let (status, _) = s
        .post_json("/v1/events", &json!([event("alice", "g6", "complete")]))
        .await;
    assert_eq!(status, 200);
    let (_, fresh) = s.get("/v1/users/alice/recommendations?n=5").await;
    assert_eq!(fresh["cached"], false);
    assert!(!fresh["items"]
        .as_array()
        .expect("items")
        .iter()
        .any(|i| i["item_id"] == "g6"));

    // Item-item similarity: g1 and g2 always go together.
    let (status, body) = s.get("/v1/items/g1/similar-items").await;
    assert_eq!(status, 200);
    assert_eq!(body["items"][0]["item_id"], "g2");

    // A known user without interactions gets the popular list.
    let (status, body) = s.get("/v1/users/erin/recommendations").await;
    assert_eq!(status, 200);
    assert_eq!(body["strategy"], "popular");
    assert!(body["items"][0]["reasons"][0]
        .as_str()
        .is_some_and(|r| r.contains("popular")));
}

#[actix_web::test]
async fn event_ids_make_retries_idempotent() {
    let s = TestServer::start();
    let batch = json!([
        {"event_id": "e-1", "user_id": "u1", "item_id": "i1", "kind": "view"},
        {"event_id": "e-2", "user_id": "u1", "item_id": "i2", "kind": "view"},
        {"event_id": "e-1", "user_id": "u1", "item_id": "i1", "kind": "view"}
    ]);
    let (_, body) = s.post_json("/v1/events", &batch).await;
    assert_eq!(
        (body["accepted"].as_u64(), body["duplicates"].as_u64()),
        (Some(2), Some(1))
    );
    let (_, body) = s.post_json("/v1/events", &batch).await;
    assert_eq!(
        (body["accepted"].as_u64(), body["duplicates"].as_u64()),
        (Some(0), Some(3))
    );
    let (_, user) = s.get("/v1/users/u1").await;
    assert_eq!(user["interactions"], 2);
    // Ids are scoped per user: another user's event with the same id is a different event.
    let (_, body) = s
        .post_json(
            "/v1/events",
            &json!([{"event_id": "e-1", "user_id": "u2", "item_id": "i1", "kind": "view"}]),
        )
        .await;
    assert_eq!(body["accepted"], 1, "{body}");
    assert_eq!(s.metric("momentum_events_duplicate_total").await, 4.0);
    assert_eq!(s.metric("momentum_events_accepted_total").await, 3.0);
}

#[actix_web::test]
async fn items_and_users_crud() {
    let s = TestServer::start();
    let item = json!({"title": "Run a 5k", "description": "Couch to 5k in 8 weeks", "tags": ["fitness", "running"], "type": "habit", "difficulty": 0.4});
    let (status, body) = s.put_json("/v1/items/run-5k", &item).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = s.put_json("/v1/items/run-5k", &item).await;
    assert_eq!(status, 200);
    let (status, body) = s.get("/v1/items/run-5k").await;
    assert_eq!(status, 200);
    assert_eq!(body["title"], "Run a 5k");
    assert_eq!(body["tags"][1], "running");
    assert_eq!(body["type"], "habit");

    // Deleting needs the admin key.
    let url = s.url("/v1/items/run-5k");
    let res = s.client.delete(&url).send().await.expect("delete");
    assert_eq!(res.status().as_u16(), 401);
    let res = s
        .client
        .delete(&url)
        .header("x-admin-key", "wrong")
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(
        s.get("/v1/items/run-5k").await.0,
        200,
        "a refused delete changes nothing"
    );
    let res = s
        .client
        .delete(&url)
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status().as_u16(), 204);
    let (status, body) = s.get("/v1/items/run-5k").await;
    assert_eq!((status, code(&body)), (404, "unknown_item"));
    let (status, body) = s
        .post_json("/v1/events", &json!([event("u", "run-5k", "view")]))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["rejected"][0]["code"], "item_deleted");

    let profile =
        json!({"preferences": {"goal": "health"}, "signup_date": "2024-01-31", "locale": "en-GB"});
    let (status, _) = s.put_json("/v1/users/zoe", &profile).await;
    assert_eq!(status, 201);
    let (status, body) = s.get("/v1/users/zoe").await;
    assert_eq!(status, 200);
    assert_eq!(body["locale"], "en-GB");
    assert_eq!(body["preferences"]["goal"], "health");
    assert_eq!(body["interactions"], 0);
}

#[actix_web::test]
async fn admin_routes_are_refused_without_a_configured_key() {
    let mut settings = crate::common::settings();
    settings.security.admin_key = String::new();
    let s = TestServer::start_with(settings);
    s.put_json("/v1/items/x", &json!({"title": "x"})).await;
    let res = s
        .client
        .delete(s.url("/v1/items/x"))
        .header("x-admin-key", "")
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status().as_u16(), 403);
    assert_eq!(s.get("/v1/items/x").await.0, 200);
}

#[actix_web::test]
async fn content_scoring_explains_and_the_type_cap_holds() {
    let s = TestServer::start();
    for i in 0..8 {
        let body = json!({"title": format!("Morning run {i}"), "tags": ["fitness", "goal"], "type": "habit"});
        assert_eq!(s.put_json(&format!("/v1/items/a{i}"), &body).await.0, 201);
    }
    for i in 0..3 {
        let body = json!({"title": format!("Read book {i}"), "tags": ["reading", "goal"], "type": "learning"});
        assert_eq!(s.put_json(&format!("/v1/items/b{i}"), &body).await.0, 201);
    }
    // One interaction: too few for CF, so the list is content-only.
    let (status, _) = s
        .post_json("/v1/events", &json!([event("newbie", "a0", "view")]))
        .await;
    assert_eq!(status, 200);
    let (status, body) = s.get("/v1/users/newbie/recommendations?n=6").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["strategy"], "content");
    let items = body["items"].as_array().expect("items");
    assert_eq!(items.len(), 6);
    let habits = items
        .iter()
        .filter(|i| i["item_id"].as_str().is_some_and(|id| id.starts_with('a')))
        .count();
    assert!(habits <= 5, "max_per_type = 5 caps habits: {items:?}");
    assert!(items
        .iter()
        .all(|i| (0.0..=1.0).contains(&i["score"].as_f64().expect("score"))));
    let first_reason = items[0]["reasons"][0].as_str().expect("reason");
    assert!(
        first_reason.starts_with("matches your interest in"),
        "{first_reason}"
    );
    let text = s.metrics().await;
    assert!(
        text.contains("momentum_recommendation_diversity_count 1"),
        "{text}"
    );
}
