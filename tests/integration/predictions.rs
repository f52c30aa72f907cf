//! Predictive analytics over HTTP: features, success and churn predictions, forecasts, device
//! feature vectors, training through `POST /v1/models/train`, model versions, and the churn
//! outbox filled by a scoring run.

use serde_json::{json, Value};

use crate::common::{code, TestServer, ADMIN_KEY};

pub(crate) use momentum_models::clock::now_ms;
use momentum_models::clock::DAY_MS as DAY;

const USERS: usize = 240;

/// A simulator-like population over the last 85 days: two thirds of the users open the app
/// and check in (almost) daily and complete a goal every 9–14 days; the others check in every
/// second or third day, sometimes abandon, and stop after 15–60 days.
pub(crate) fn population(now: i64) -> Vec<Value> {
    let mut events = Vec::new();
    for u in 0..USERS {
        let user = format!("user-{u}");
        let keen = u % 3 != 0;
        let start = now - (85 - (u % 25) as i64) * DAY;
        let active_days = if keen { 90 } else { 15 + (u * 7 % 45) as i64 };
        let every = if keen { 1 } else { 2 + (u % 2) as i64 };
        let goal_days = 9 + (u % 6) as i64;
        let mut goal = u * 100;
        let mut id = 0;
        let mut push = |kind: &str, item: Option<String>, ts: i64| {
            id += 1;
            let mut e = json!({"event_id": format!("{user}-{id}"), "user_id": user, "kind": kind, "ts": ts});
            if let Some(item) = item {
                e["item_id"] = json!(item);
            }
            events.push(e);
        };
        push("start", Some(format!("goal-{goal}")), start);
        for d in 1..active_days {
            let ts = start + d * DAY + (u as i64 % 7) * 3_600_000;
            if ts > now - 60_000 {
                break;
            }
            if d % every != 0 {
                continue;
            }
            push("app_open", None, ts);
            push("checkin", Some(format!("goal-{goal}")), ts + 1000);
            if keen && d % goal_days == 0 {
                push("complete", Some(format!("goal-{goal}")), ts + 2000);
                goal += 1;
                push("start", Some(format!("goal-{goal}")), ts + 3000);
            } else if !keen && d % 17 == 0 {
                push("abandon", Some(format!("goal-{goal}")), ts + 2000);
                goal += 1;
                push("start", Some(format!("goal-{goal}")), ts + 3000);
            }
        }
    }
    events
}

pub(crate) async fn post_events(s: &TestServer, events: &[Value]) {
    for chunk in events.chunks(2000) {
        let (status, body) = s.post_json("/v1/events", &json!(chunk)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["rejected"], json!([]), "{body}");
    }
}

pub(crate) async fn admin(s: &TestServer, method: reqwest::Method, path: &str) -> (u16, Value) {
    let res = s
        .client
        .request(method, s.url(path))
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await
        .expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn in_unit(v: &Value) -> bool {
    v.as_f64().is_some_and(|x| (0.0..=1.0).contains(&x))
}

/// The goal a user currently works on (their last `start`).
fn current_goal(events: &[Value], user: &str) -> String {
    events
        .iter()
        .rev()
        .find(|e| e["user_id"] == user && e["kind"] == "start")
        .and_then(|e| e["item_id"].as_str())
        .expect("a started goal")
        .to_owned()
}

/// Starts a server, posts the population and trains both models.
pub(crate) async fn trained_server() -> (TestServer, Vec<Value>) {
    let s = TestServer::start();
    let events = population(now_ms());
    post_events(&s, &events).await;
    let (status, body) = admin(&s, reqwest::Method::POST, "/v1/models/train?wait=true").await;
    assert_eq!(status, 200, "{body}");
    (s, events)
}

#[actix_web::test]
async fn predictions_wait_for_a_model_and_training_needs_the_admin_key() {
    let s = TestServer::start();
    post_events(&s, &population(now_ms())[..500]).await;
    // Features and forecasts need no model.
    let (status, body) = s.get("/v1/users/user-1/features").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = s.get("/v1/users/user-1/forecast").await;
    assert_eq!(status, 200);
    // Predictions do.
    for path in [
        "/v1/users/user-1/churn",
        "/v1/users/user-1/predictions/success?goal_id=goal-100",
    ] {
        let (status, body) = s.get(path).await;
        assert_eq!(
            (status, code(&body)),
            (503, "model_not_ready"),
            "{path}: {body}"
        );
        assert!(body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not trained"));
    }
    let vector = json!({"feature_names": ["completion_rate"], "features": [0.5]});
    let (status, body) = s.post_json("/v1/predictions/churn", &vector).await;
    assert_eq!((status, code(&body)), (503, "model_not_ready"), "{body}");
    // Training is an admin route.
    let (status, body) = s.post_json("/v1/models/train", &json!({})).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
    // With too little data, no model: a 409 that says why, nothing stored.
    let (status, body) = admin(&s, reqwest::Method::POST, "/v1/models/train?wait=true").await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not enough data"),
        "{body}"
    );
    let (status, body) = s.get("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(body["models"][0]["versions"], json!([]), "{body}");
    assert_eq!(body["models"][0]["live_version"], Value::Null);
    assert_eq!(body["trainer"]["runs"], 1, "{body}");
}

#[actix_web::test]
async fn trained_models_answer_with_sane_shapes_and_ranges() {
    let (s, events) = trained_server().await;

    // Features: the ten, named, in range.
    let (status, body) = s.get("/v1/users/user-1/features").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "user-1");
    assert!(body["as_of_ms"].as_i64().is_some_and(|t| t > 0));
    let f = body["features"].as_object().expect("features object");
    assert_eq!(f.len(), 10, "{body}");
    for ratio in ["completion_rate", "consistency"] {
        assert!(in_unit(&f[ratio]), "{ratio}: {body}");
    }
    assert!(f["activity_trend"]
        .as_f64()
        .is_some_and(|t| (-1.0..=1.0).contains(&t)));
    for (name, v) in f {
        assert!(
            v.as_f64().is_some_and(|x| x.is_finite() && x >= -1.0),
            "{name}: {v}"
        );
    }

    // Success for the goal in progress.
    let goal = current_goal(&events, "user-1");
    let (status, body) = s
        .get(&format!(
            "/v1/users/user-1/predictions/success?goal_id={goal}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["user_id"].as_str(), body["goal_id"].as_str()),
        (Some("user-1"), Some(goal.as_str()))
    );
    assert!(
        in_unit(&body["probability"]) && in_unit(&body["confidence"]),
        "{body}"
    );
    assert!(in_unit(&body["threshold"]), "{body}");
    assert_eq!(body["model_version"], 1);
    assert_eq!(body["goal_status"], "active");
    for a in body["recommended_actions"].as_array().expect("actions") {
        assert!(a["code"].is_string() && a["message"].is_string(), "{a}");
    }
    let keen = body["probability"].as_f64().unwrap_or(0.0);
    // A user who stopped weeks ago is less likely to finish than a daily one.
    let lapsed_user = "user-3";
    let lapsed_goal = current_goal(&events, lapsed_user);
    let (_, lapsed) = s
        .get(&format!(
            "/v1/users/{lapsed_user}/predictions/success?goal_id={lapsed_goal}"
        ))
        .await;
    assert!(
        lapsed["probability"].as_f64().unwrap_or(1.0) < keen,
        "{lapsed} vs {keen}"
    );
    let (status, body) = s.get("/v1/users/user-1/predictions/success").await;
    assert_eq!((status, code(&body)), (400, "invalid_query"), "{body}");
    let (status, body) = s
        .get("/v1/users/user-1/predictions/success?goal_id=no-such-goal")
        .await;
    assert_eq!((status, code(&body)), (404, "unknown_item"), "{body}");
    let (status, body) = s.get("/v1/users/nobody/churn").await;
    assert_eq!((status, code(&body)), (404, "unknown_user"), "{body}");

    // Churn: tier consistent with the probability and its interventions.
    for user in ["user-1", lapsed_user] {
        let (status, body) = s.get(&format!("/v1/users/{user}/churn")).await;
        assert_eq!(status, 200, "{body}");
        let p = body["probability"].as_f64().expect("probability");
        assert!(
            (0.0..=1.0).contains(&p) && in_unit(&body["confidence"]),
            "{body}"
        );
        let (tier, channels) = if p > 0.7 {
            ("high", json!(["push", "personalised_email", "offer"]))
        } else if p >= 0.4 {
            (
                "medium",
                json!(["engagement_campaign", "content_recommendations"]),
            )
        } else {
            ("low", json!(["newsletter", "success_stories"]))
        };
        assert_eq!(body["tier"], tier, "{body}");
        assert_eq!(body["interventions"], channels, "{body}");
        assert!(body["risk_factors"].is_array());
        assert_eq!(body["model_version"], 1);
    }
    let (_, active) = s.get("/v1/users/user-1/churn").await;
    let (_, lapsed) = s.get(&format!("/v1/users/{lapsed_user}/churn")).await;
    assert!(
        lapsed["probability"].as_f64() > active["probability"].as_f64(),
        "{lapsed} {active}"
    );
    let codes: Vec<&str> = lapsed["risk_factors"]
        .as_array()
        .expect("risks")
        .iter()
        .filter_map(|r| r["code"].as_str())
        .collect();
    assert!(codes.contains(&"inactive"), "{lapsed}");

    // Forecast: a week of non-negative daily values.
    let (status, body) = s.get("/v1/users/user-1/forecast?days=7").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["days"], 7);
    assert!(["holt", "holt_winters"].contains(&body["method"].as_str().unwrap_or("")));
    let points = body["forecast"].as_array().expect("forecast");
    assert_eq!(points.len(), 7);
    for p in points {
        assert!(
            p["value"].as_f64().is_some_and(|v| v >= 0.0) && p["date"].is_string(),
            "{p}"
        );
    }
    for bad in ["days=0", "days=91", "days=x"] {
        let (status, _) = s.get(&format!("/v1/users/user-1/forecast?{bad}")).await;
        assert_eq!(status, 400, "{bad}");
    }

    // Metrics of the live models and of inference.
    let metrics = s.metrics().await;
    for line in [
        "momentum_model_accuracy{model=\"churn\"}",
        "momentum_model_f1{model=\"success\"}",
        "momentum_model_promotions_total{model=\"churn\"} 1",
        "momentum_inference_duration_seconds_count{model=\"success\"}",
        "momentum_training_duration_seconds",
    ] {
        assert!(metrics.contains(line), "missing {line}");
    }
}

#[actix_web::test]
async fn device_vectors_are_schema_checked_and_versions_are_listed() {
    let (s, _events) = trained_server().await;
    let (status, models) = s.get("/v1/models").await;
    assert_eq!(status, 200, "{models}");
    let list = models["models"].as_array().expect("models");
    assert_eq!(list.len(), 2);
    for m in list {
        assert_eq!(m["live_version"], 1, "{m}");
        let versions = m["versions"].as_array().expect("versions");
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0]["promoted"], true);
        assert!(in_unit(&versions[0]["metrics"]["auc"]), "{m}");
        assert!(versions[0]["training_window"]["from_ms"].is_i64());
        // Calibration on the same held-out users: ten bins covering every scored row.
        let cal = &versions[0]["calibration"];
        let bins = cal["bins"].as_array().expect("calibration bins");
        assert_eq!(bins.len(), 10, "{m}");
        let binned: u64 = bins.iter().filter_map(|b| b["count"].as_u64()).sum();
        assert!(binned > 0, "{cal}");
        assert!(in_unit(&cal["brier"]), "{cal}");
        assert_eq!(versions[0]["metrics"]["brier"], cal["brier"]);
    }
    let names = list[0]["feature_names"].clone();
    assert_eq!(names.as_array().map(Vec::len), Some(10));
    let (status, v) = s.get("/v1/models/churn/versions/1").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["name"].as_str(), v["live"].as_bool()),
        (Some("churn"), Some(true))
    );
    let meta = &v["metadata"];
    assert_eq!(meta["algorithm"], "random_forest");
    assert_eq!(meta["params"]["n_trees"], 5);
    assert_eq!(meta["feature_names"], names);
    assert_eq!(v["calibration"], meta["metrics"]["calibration"]);
    assert!(v["calibration"]["brier"].is_number(), "{v}");
    assert!(
        meta["metrics"]["at_default"]["f1"].is_number() && meta["rows"]["train"].as_u64() > Some(0)
    );
    let (status, _) = s.get("/v1/models/churn/versions/9").await;
    assert_eq!(status, 404);
    let (status, _) = s.get("/v1/models/nope/versions/1").await;
    assert_eq!(status, 404);
    let (status, _) = s.get("/v1/models/churn/versions/x").await;
    assert_eq!(status, 400);

    // The same features from a device give the same answer as the server's own.
    let (_, features) = s.get("/v1/users/user-1/features").await;
    let values: Vec<Value> = names
        .as_array()
        .expect("names")
        .iter()
        .map(|n| features["features"][n.as_str().unwrap_or("")].clone())
        .collect();
    let body = json!({"feature_names": names, "features": values, "user_id": "user-1"});
    let (status, device) = s.post_json("/v1/predictions/churn", &body).await;
    assert_eq!(status, 200, "{device}");
    let (_, server) = s.get("/v1/users/user-1/churn").await;
    let (a, b) = (
        device["probability"].as_f64(),
        server["probability"].as_f64(),
    );
    assert!(
        matches!((a, b), (Some(a), Some(b)) if (a - b).abs() < 1e-3),
        "{device} {server}"
    );
    assert_eq!(device["tier"], server["tier"]);
    let (status, device) = s.post_json("/v1/predictions/success", &body).await;
    assert_eq!(status, 200, "{device}");
    assert!(in_unit(&device["probability"]) && device["recommended_actions"].is_array());

    // Schema violations are 400s naming the rule.
    let short = json!({"feature_names": names.as_array().map(|n| n[..9].to_vec()), "features": &values[..9]});
    let mut swapped_names = names.as_array().cloned().unwrap_or_default();
    swapped_names.swap(0, 1);
    let swapped = json!({"feature_names": swapped_names, "features": values});
    let mut with_null = values.clone();
    with_null[2] = Value::Null;
    let null_value = json!({"feature_names": names, "features": with_null});
    let mut with_text = values.clone();
    with_text[0] = json!("NaN");
    let text_value = json!({"feature_names": names, "features": with_text});
    let fewer_values = json!({"feature_names": names, "features": &values[..8]});
    for path in ["/v1/predictions/churn", "/v1/predictions/success"] {
        for (bad, want) in [
            (&short, "feature_schema_mismatch"),
            (&swapped, "feature_schema_mismatch"),
            (&fewer_values, "feature_schema_mismatch"),
            (&null_value, "invalid_feature_value"),
            (&text_value, "invalid_feature_value"),
        ] {
            let (status, body) = s.post_json(path, bad).await;
            assert_eq!((status, code(&body)), (400, want), "{path} {bad}: {body}");
        }
        // A literal NaN is not JSON at all.
        let raw = format!("{{\"feature_names\": {names}, \"features\": [NaN,0,0,0,0,0,0,0,0,0]}}");
        let (status, body) = s.post_raw(path, "application/json", raw).await;
        assert_eq!((status, code(&body)), (400, "malformed_json"), "{body}");
        let (status, body) = s.post_json(path, &json!({"features": values})).await;
        assert_eq!(status, 400, "{body}");
    }
}

#[actix_web::test]
async fn a_scoring_run_fills_the_outbox_once_per_day() {
    let (s, _events) = trained_server().await;
    let (status, body) = s.get("/v1/interventions").await;
    assert_eq!((status, code(&body)), (401, "unauthorized"));
    let (status, body) = admin(&s, reqwest::Method::GET, "/v1/interventions").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["interventions"], json!([]));

    let (status, body) = admin(&s, reqwest::Method::POST, "/v1/churn/run?wait=true").await;
    assert_eq!(status, 200, "{body}");
    let report = &body["report"];
    assert_eq!(report["users_scored"], USERS, "{body}");
    let added = report["interventions_added"].as_u64().expect("added");
    let tiers = &report["tiers"];
    let expected = 3 * tiers["high"].as_u64().unwrap_or(0)
        + 2 * tiers["medium"].as_u64().unwrap_or(0)
        + 2 * tiers["low"].as_u64().unwrap_or(0);
    assert_eq!(added, expected, "{body}");

    // Page through the outbox.
    let mut seen = Vec::new();
    let mut since = 0;
    loop {
        let (status, page) = admin(
            &s,
            reqwest::Method::GET,
            &format!("/v1/interventions?since={since}&limit=250"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let items = page["interventions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if items.is_empty() {
            assert_eq!(page["next_since"], since);
            break;
        }
        since = page["next_since"].as_u64().expect("cursor");
        seen.extend(items);
    }
    assert_eq!(seen.len() as u64, added);
    let first = &seen[0];
    for field in [
        "id",
        "user_id",
        "day",
        "tier",
        "channel",
        "payload",
        "delivery_state",
        "created_ms",
    ] {
        assert!(!first[field].is_null(), "{field}: {first}");
    }
    assert_eq!(first["payload"]["tier"], first["tier"]);
    assert!(in_unit(&first["payload"]["churn_probability"]));

    // Again the same day: scored again, nothing new in the outbox.
    let (status, body) = admin(&s, reqwest::Method::POST, "/v1/churn/run?wait=true").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["report"]["interventions_added"], 0, "{body}");
    let (_, page) = admin(
        &s,
        reqwest::Method::GET,
        &format!("/v1/interventions?since={since}"),
    )
    .await;
    assert_eq!(page["interventions"], json!([]));
    let (status, _) = admin(&s, reqwest::Method::GET, "/v1/interventions?limit=0").await;
    assert_eq!(status, 400);
    assert!(s.metric("momentum_interventions_total").await >= added as f64);
}

#[actix_web::test]
async fn goal_outcomes_are_scored_against_served_predictions() {
    let (s, events) = trained_server().await;
    assert_eq!(
        s.metric("momentum_model_online_outcomes{model=\"success\"}")
            .await,
        0.0
    );
    let goal = current_goal(&events, "user-1");
    let (status, prediction) = s
        .get(&format!(
            "/v1/users/user-1/predictions/success?goal_id={goal}"
        ))
        .await;
    assert_eq!(status, 200, "{prediction}");
    let predicted = prediction["probability"].as_f64() >= prediction["threshold"].as_f64();
    // Events of other goals and kinds are not outcomes of this prediction.
    post_events(
        &s,
        &[json!({"user_id": "user-1", "item_id": goal, "kind": "checkin"})],
    )
    .await;
    assert_eq!(
        s.metric("momentum_model_online_outcomes{model=\"success\"}")
            .await,
        0.0
    );
    post_events(
        &s,
        &[json!({"user_id": "user-1", "item_id": goal, "kind": "complete"})],
    )
    .await;
    assert_eq!(
        s.metric("momentum_model_online_outcomes{model=\"success\"}")
            .await,
        1.0
    );
    let accuracy = s
        .metric("momentum_model_online_accuracy{model=\"success\"}")
        .await;
    assert_eq!(accuracy, if predicted { 1.0 } else { 0.0 });
    // The pair is resolved: another completion does not count twice.
    post_events(
        &s,
        &[json!({"user_id": "user-1", "item_id": goal, "kind": "complete"})],
    )
    .await;
    assert_eq!(
        s.metric("momentum_model_online_outcomes{model=\"success\"}")
            .await,
        1.0
    );
}
