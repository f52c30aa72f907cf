//! A/B experiments over HTTP: admin-only management, assignment recomputed independently from
//! md5, attribution of events to variants and the results.

use md5::{Digest, Md5};
use serde_json::{json, Value};

use momentum_models::experiment::two_proportion_z_test;

use crate::common::{code, event, settings, TestServer, ADMIN_KEY};

async fn admin_post(s: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let res = s
        .client
        .post(s.url(path))
        .header("x-admin-key", ADMIN_KEY)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn admin_get(s: &TestServer, path: &str) -> (u16, Value) {
    let res = s
        .client
        .get(s.url(path))
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await
        .expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The documented assignment, written out again: the first 8 bytes of `md5(salt ":" user)`
/// as a big-endian integer, modulo 10000, against cumulative bucket bounds.
fn expected_variant<'a>(salt: &str, user: &str, variants: &[(&'a str, u32)]) -> &'a str {
    let digest = Md5::digest(format!("{salt}:{user}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let bucket = u64::from_be_bytes(first) % 10_000;
    let mut upper = 0u64;
    for &(name, weight) in variants {
        upper += u64::from(weight);
        if bucket < upper {
            return name;
        }
    }
    panic!("weights must sum to 10000 in this test")
}

/// Makes `user` known and returns their recommendation response.
async fn recommend(s: &TestServer, user: &str) -> Value {
    let (status, body) = s.put_json(&format!("/v1/users/{user}"), &json!({})).await;
    assert!(status == 200 || status == 201, "{body}");
    let (status, body) = s
        .get(&format!("/v1/users/{user}/recommendations?n=3"))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[actix_web::test]
async fn experiments_are_admin_only_and_validated() {
    let s = TestServer::start();
    let good = json!({"id": "exp-1", "variants": [
        {"name": "control", "weight": 50},
        {"name": "content_heavy", "weight": 50, "hybrid_weights": {"cf": 0.2, "content": 0.8},
         "diversity": {"lambda": 0.5, "max_per_type": 2}}
    ]});

    let (status, body) = s.post_json("/v1/experiments", &good).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"));
    let res = s
        .client
        .post(s.url("/v1/experiments"))
        .header("x-admin-key", "wrong")
        .json(&good)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(s.get("/v1/experiments/exp-1/results").await.0, 401);
    assert_eq!(s.get("/v1/experiments").await.0, 401);

    let bad_definitions = [
        json!({"id": "e", "variants": []}),
        json!({"id": "e", "variants": [{"name": "Control", "weight": 1}]}),
        json!({"id": "e", "variants": [{"name": "a", "weight": 0}]}),
        json!({"id": "e", "variants": [{"name": "a", "weight": 1}, {"name": "a", "weight": 1}]}),
        json!({"id": "e", "variants": [{"name": "a", "weight": 1}], "control": "b"}),
        json!({"id": "e", "variants": [{"name": "a", "weight": 1, "colour": "red"}]}),
        json!({"id": "e", "variants": [{"name": "a", "weight": 1,
            "hybrid_weights": {"cf": 0, "content": 0}}]}),
        json!({"id": "e", "variants": [{"name": "a", "weight": 1, "diversity": {"lambda": 2}}]}),
        json!({"id": "e", "variants": [{"name": "a", "weight": -1}]}),
        json!({"variants": [{"name": "a", "weight": 1}]}),
        json!({"id": "e", "variants": (0..11).map(|i| json!({"name": format!("v{i}"), "weight": 1})).collect::<Vec<_>>()}),
    ];
    for bad in &bad_definitions {
        let (status, body) = admin_post(&s, "/v1/experiments", bad).await;
        assert_eq!((status, code(&body)), (400, "invalid_experiment"), "{bad}");
    }
    let (status, body) = admin_post(
        &s,
        "/v1/experiments",
        &json!({"id": "a b", "variants": [{"name": "a", "weight": 1}]}),
    )
    .await;
    assert_eq!((status, code(&body)), (400, "invalid_id"));
    let res = s
        .client
        .post(s.url("/v1/experiments"))
        .header("x-admin-key", ADMIN_KEY)
        .header("content-type", "application/json")
        .body("{\"id\": ")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 400);

    let (status, body) = admin_post(&s, "/v1/experiments", &good).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (
            &body["id"],
            &body["salt"],
            &body["status"],
            &body["control"]
        ),
        (
            &json!("exp-1"),
            &json!("exp-1"),
            &json!("running"),
            &json!("control")
        )
    );
    assert_eq!(body["variants"][1]["buckets"], 5000);
    assert_eq!(body["variants"][1]["hybrid_weights"]["content"], 0.8);
    assert_eq!(body["variants"][1]["diversity"]["max_per_type"], 2);

    let (status, body) = admin_post(&s, "/v1/experiments", &good).await;
    assert_eq!((status, code(&body)), (409, "conflict"), "duplicate id");
    let other = json!({"id": "exp-2", "variants": [{"name": "a", "weight": 1}]});
    let (status, body) = admin_post(&s, "/v1/experiments", &other).await;
    assert_eq!(
        (status, code(&body)),
        (409, "conflict"),
        "one running at a time"
    );

    let (status, body) = admin_get(&s, "/v1/experiments/nope/results").await;
    assert_eq!((status, code(&body)), (404, "unknown_experiment"));
    let (status, body) = admin_get(&s, "/v1/experiments/exp-1").await;
    assert_eq!(
        (status, &body["variants"][0]["name"]),
        (200, &json!("control"))
    );

    // Stopping ends assignment and frees the slot; stopped experiments stay readable.
    let (status, body) = admin_post(&s, "/v1/experiments/exp-1/stop", &json!({})).await;
    assert_eq!((status, &body["status"]), (200, &json!("stopped")));
    assert!(body["stopped_ms"].is_i64());
    let rec = recommend(&s, "someone").await;
    assert_eq!(
        (&rec["experiment"], &rec["variant"]),
        (&Value::Null, &Value::Null)
    );
    let (status, _) = admin_post(&s, "/v1/experiments", &other).await;
    assert_eq!(status, 201);
    let rec = recommend(&s, "someone").await;
    assert_eq!(
        (&rec["experiment"], &rec["variant"]),
        (&json!("exp-2"), &json!("a"))
    );
    let (status, body) = admin_get(&s, "/v1/experiments").await;
    assert_eq!(status, 200);
    let ids: Vec<&Value> = body["experiments"]
        .as_array()
        .expect("list")
        .iter()
        .map(|e| &e["id"])
        .collect();
    assert_eq!(ids, [&json!("exp-1"), &json!("exp-2")]);

    // Deleting forgets the experiment and its metric series.
    assert!(s
        .metrics()
        .await
        .contains(r#"momentum_ab_assignments_total{experiment="exp-2",variant="a"} 1"#));
    let res = s
        .client
        .delete(s.url("/v1/experiments/exp-2"))
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 204);
    assert_eq!(admin_get(&s, "/v1/experiments/exp-2").await.0, 404);
    assert!(!s.metrics().await.contains(r#"experiment="exp-2""#));
    let rec = recommend(&s, "someone").await;
    assert_eq!(rec["experiment"], Value::Null);
}

#[actix_web::test]
async fn assignment_matches_an_independent_md5_computation() {
    let s = TestServer::start();
    let variants = [("control", 5000), ("b", 3000), ("c", 2000)];
    let (status, body) = admin_post(
        &s,
        "/v1/experiments",
        &json!({"id": "onboarding-v2", "salt": "salt-42", "variants": [
            {"name": "control", "weight": 5000}, {"name": "b", "weight": 3000},
            {"name": "c", "weight": 2000}]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["salt"], "salt-42");
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..30 {
        let user = format!("user-{i}");
        let want = expected_variant("salt-42", &user, &variants);
        let body = recommend(&s, &user).await;
        assert_eq!(body["experiment"], "onboarding-v2");
        assert_eq!(body["variant"], want, "{user}");
        // Stable: asking again gives the same variant.
        let (_, again) = s
            .get(&format!("/v1/users/{user}/recommendations?n=3"))
            .await;
        assert_eq!(again["variant"], want, "{user}");
        seen.insert(want);
    }
    assert_eq!(seen.len(), 3, "30 users reach every variant: {seen:?}");
    let (_, results) = admin_get(&s, "/v1/experiments/onboarding-v2/results").await;
    let assignments: u64 = results["variants"]
        .as_array()
        .expect("variants")
        .iter()
        .map(|v| v["assignments"].as_u64().expect("count"))
        .sum();
    assert_eq!(assignments, 60, "every response counts as an assignment");
}

#[actix_web::test]
async fn events_are_attributed_to_variants() {
    let s = TestServer::start();
    let (status, _) = s
        .post_json(
            "/v1/events",
            &json!([
                event("seed", "g1", "view"),
                event("seed", "g2", "view"),
                event("seed", "g3", "view")
            ]),
        )
        .await;
    assert_eq!(status, 200);
    let variants = [("control", 5000), ("treatment", 5000)];
    let (status, body) = admin_post(
        &s,
        "/v1/experiments",
        &json!({"id": "exp-attr", "variants": [
            {"name": "control", "weight": 1}, {"name": "treatment", "weight": 1}]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let pick = |variant: &str| {
        (0..100)
            .map(|i| format!("u{i}"))
            .find(|u| expected_variant("exp-attr", u, &variants) == variant)
            .expect("a user in each variant")
    };
    let (cu, tu) = (pick("control"), pick("treatment"));
    let rec_c = recommend(&s, &cu).await;
    let rec_t = recommend(&s, &tu).await;
    assert_eq!(
        (&rec_c["variant"], &rec_t["variant"]),
        (&json!("control"), &json!("treatment"))
    );
    let (rc, rt) = (
        rec_c["recommendation_id"].as_str().expect("id").to_string(),
        rec_t["recommendation_id"].as_str().expect("id").to_string(),
    );
    let ev = |id: Option<&str>, user: &str, item: &str, kind: &str, rec: &str| {
        let mut e =
            json!({"user_id": user, "item_id": item, "kind": kind, "recommendation_id": rec});
        if let Some(id) = id {
            e["event_id"] = json!(id);
        }
        e
    };
    // Control: 4 impressions, 1 click. Treatment: 4 impressions, 3 clicks, 2 completes (one
    // without an event id).
    let batch = json!([
        ev(Some("c-i0"), &cu, "g1", "impression", &rc),
        ev(Some("c-i1"), &cu, "g2", "impression", &rc),
        ev(Some("c-i2"), &cu, "g3", "impression", &rc),
        ev(None, &cu, "g3", "impression", &rc),
        ev(Some("c-c0"), &cu, "g1", "click", &rc),
        ev(Some("t-i0"), &tu, "g1", "impression", &rt),
        ev(Some("t-i1"), &tu, "g2", "impression", &rt),
        ev(Some("t-i2"), &tu, "g3", "impression", &rt),
        ev(Some("t-i3"), &tu, "g3", "impression", &rt),
        ev(Some("t-c0"), &tu, "g1", "click", &rt),
        ev(Some("t-c1"), &tu, "g2", "click", &rt),
        ev(Some("t-c2"), &tu, "g3", "click", &rt),
        ev(Some("t-v0"), &tu, "g1", "complete", &rt),
        ev(None, &tu, "g2", "complete", &rt),
    ]);
    let (status, body) = s.post_json("/v1/events", &batch).await;
    assert_eq!((status, &body["accepted"]), (200, &json!(14)), "{body}");

    // None of these count: a retry of an attributed event (a duplicate), a duplicate within the
    // batch, unknown or foreign recommendation ids, another user's recommendation, a kind that
    // is not attributed, an invalid recommendation id (rejected).
    let noise = json!([
        ev(Some("t-c0"), &tu, "g1", "click", &rt),
        ev(
            Some("t-new"),
            &tu,
            "g1",
            "click",
            "ffffffffffffffffffffffffffffffff"
        ),
        ev(Some("t-new2"), &tu, "g1", "click", "not-one-of-ours"),
        ev(Some("x-1"), &cu, "g1", "click", &rt),
        ev(Some("x-2"), &tu, "g1", "view", &rt),
        ev(Some("x-3"), &tu, "g1", "click", "has space"),
    ]);
    let (status, body) = s.post_json("/v1/events", &noise).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["accepted"], &body["duplicates"]),
        (&json!(4), &json!(1))
    );
    assert_eq!(body["rejected"][0]["index"], 5);
    assert_eq!(body["rejected"][0]["code"], "invalid_id");
    // A retry of every event with an event id: the engine and the attribution both skip them.
    // (Events without an event id cannot be told apart from new ones, see the docs.)
    let retry: Vec<Value> = batch
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e.get("event_id").is_some())
        .cloned()
        .collect();
    let (_, body) = s.post_json("/v1/events", &json!(retry)).await;
    assert_eq!(
        (&body["accepted"], &body["duplicates"]),
        (&json!(0), &json!(12)),
        "{body}"
    );

    let (status, r) = admin_get(&s, "/v1/experiments/exp-attr/results").await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (&r["experiment"], &r["control"]),
        (&json!("exp-attr"), &json!("control"))
    );
    let (c, t) = (&r["variants"][0], &r["variants"][1]);
    assert_eq!(c["name"], "control");
    let counts = |v: &Value| {
        ["assignments", "impressions", "clicks", "conversions"].map(|k| v[k].as_u64().unwrap_or(99))
    };
    assert_eq!(counts(c), [1, 4, 1, 0], "{c}");
    assert_eq!(counts(t), [1, 4, 3, 2], "{t}");
    assert_eq!(c["ctr"], 0.25);
    assert_eq!(c["conversion_rate"], 0.0);
    assert_eq!(t["ctr"], 0.75);
    assert_eq!(t["conversion_rate"], 0.5);
    assert_eq!(
        (&c["ctr_p_value"], &c["conversion_p_value"]),
        (&Value::Null, &Value::Null)
    );
    let want = two_proportion_z_test(1, 4, 3, 4).expect("defined").p_value;
    let got = t["ctr_p_value"].as_f64().expect("treatment has a p-value");
    assert!(
        (got - want).abs() < 1e-12 && got > 0.0 && got < 1.0,
        "{got} vs {want}"
    );
    let want = two_proportion_z_test(0, 4, 2, 4).expect("defined").p_value;
    let got = t["conversion_p_value"]
        .as_f64()
        .expect("treatment has a p-value");
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");

    let labels = r#"{experiment="exp-attr",variant="treatment"}"#;
    for (name, want) in [
        ("momentum_ab_assignments_total", 1.0),
        ("momentum_ab_impressions_total", 4.0),
        ("momentum_ab_clicks_total", 3.0),
        ("momentum_ab_conversions_total", 2.0),
    ] {
        assert_eq!(s.metric(&format!("{name}{labels}")).await, want, "{name}");
    }

    // After the experiment stops, events on recommendations it served still count.
    let (status, _) = admin_post(&s, "/v1/experiments/exp-attr/stop", &json!({})).await;
    assert_eq!(status, 200);
    let (status, _) = s
        .post_json(
            "/v1/events",
            &json!([ev(Some("late"), &cu, "g2", "click", &rc)]),
        )
        .await;
    assert_eq!(status, 200);
    let (_, r) = admin_get(&s, "/v1/experiments/exp-attr/results").await;
    assert_eq!(
        (&r["status"], &r["variants"][0]["clicks"]),
        (&json!("stopped"), &json!(2))
    );
}

#[actix_web::test]
async fn experiments_are_refused_without_a_configured_admin_key() {
    let mut settings = settings();
    settings.security.admin_key = String::new();
    let s = TestServer::start_with(settings);
    let (status, body) = s
        .post_json(
            "/v1/experiments",
            &json!({"id": "e", "variants": [{"name": "a", "weight": 1}]}),
        )
        .await;
    assert_eq!((status, code(&body)), (403, "admin_disabled"));
    let rec = recommend(&s, "someone").await;
    assert_eq!(rec["variant"], Value::Null);
}
