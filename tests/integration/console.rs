//! The web console over HTTP: login, the session cookie and its flags, the CSRF token on
//! state-changing requests (console and `/v1/` admin routes), the pages, the assets and the
//! console's JSON routes.

use serde_json::{json, Value};

use crate::common::{event, settings, TestServer, ADMIN_KEY};

/// A client that does not follow redirects (the 303 to the login page is asserted).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Logs in; returns the `Set-Cookie` header and the `name=value` pair to send back.
async fn login(s: &TestServer) -> (String, String) {
    let res = client()
        .post(s.url("/console/login"))
        .json(&json!({"key": ADMIN_KEY}))
        .send()
        .await
        .expect("login");
    assert_eq!(res.status().as_u16(), 204);
    let set = res
        .headers()
        .get("set-cookie")
        .expect("Set-Cookie")
        .to_str()
        .expect("ascii")
        .to_string();
    let pair = set.split(';').next().expect("pair").to_string();
    (set, pair)
}

/// The console page with `cookie`, and the CSRF token from its `<meta>` tag.
async fn console_page(s: &TestServer, cookie: &str) -> (u16, String) {
    let res = client()
        .get(s.url("/console"))
        .header("cookie", cookie)
        .send()
        .await
        .expect("console");
    let status = res.status().as_u16();
    let html = res.text().await.expect("html");
    let token = html
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap_or("")
        .to_string();
    (status, token)
}

async fn send(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = client().request(method, s.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, res.json().await.unwrap_or(Value::Null), headers)
}

fn experiment(id: &str) -> Value {
    json!({"id": id, "variants": [{"name": "control", "weight": 50}, {"name": "b", "weight": 50}]})
}

#[actix_web::test]
async fn a_wrong_key_gets_401_and_no_cookie() {
    let s = TestServer::start();
    for key in ["", "wrong", &format!("{ADMIN_KEY}x"), &ADMIN_KEY[1..]] {
        let res = client()
            .post(s.url("/console/login"))
            .json(&json!({"key": key}))
            .send()
            .await
            .expect("login");
        assert_eq!(res.status().as_u16(), 401, "key {key:?}");
        assert!(res.headers().get("set-cookie").is_none());
        let body: Value = res.json().await.expect("json");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    // Not JSON (a cross-site form post): refused before the key is looked at.
    let (status, body) = s
        .post_raw(
            "/console/login",
            "application/x-www-form-urlencoded",
            format!("key={ADMIN_KEY}"),
        )
        .await;
    assert_eq!(status, 415, "{body}");
    let (status, body) = s.post_json("/console/login", &json!({"kee": "x"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("malformed_json"))
    );
}

#[actix_web::test]
async fn without_an_admin_key_configured_nobody_logs_in() {
    let mut cfg = settings();
    cfg.security.admin_key = String::new();
    let s = TestServer::start_with(cfg);
    let (status, body) = s.post_json("/console/login", &json!({"key": ""})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("admin_disabled"))
    );
}

#[actix_web::test]
async fn without_a_session_the_console_redirects_and_its_data_is_refused() {
    let s = TestServer::start();
    let (status, _, headers) = send(&s, reqwest::Method::GET, "/console", &[], None).await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/console/login");
    // A forged, a tampered and another server's cookie are no session either.
    let other = TestServer::start();
    let (_, foreign) = login(&other).await;
    let (_, mine) = login(&s).await;
    let flipped = if mine.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{flipped}", &mine[..mine.len() - 1]);
    for cookie in [
        "momentum_console=1.2.3".to_string(),
        format!(
            "momentum_console=9999999999999.{}.{}",
            "a".repeat(32),
            "b".repeat(64)
        ),
        tampered,
        foreign,
    ] {
        let (status, _, _) = send(
            &s,
            reqwest::Method::GET,
            "/console",
            &[("cookie", &cookie)],
            None,
        )
        .await;
        assert_eq!(status, 303, "{cookie}");
        for path in ["/console/api/overview", "/v1/experiments"] {
            let (status, body, _) =
                send(&s, reqwest::Method::GET, path, &[("cookie", &cookie)], None).await;
            assert_eq!(status, 401, "{path} with {cookie}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized");
        }
    }
    // The login page and the assets need no session.
    let res = client()
        .get(s.url("/console/login"))
        .send()
        .await
        .expect("login page");
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.headers()["content-security-policy"]
        .to_str()
        .expect("ascii")
        .contains("default-src 'none'"));
    assert!(res.text().await.expect("html").contains("Admin key"));
    for (name, ty) in [
        ("app.js", "text/javascript"),
        ("login.js", "text/javascript"),
        ("app.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let res = client()
            .get(s.url(&format!("/console/assets/{name}")))
            .send()
            .await
            .expect("asset");
        assert_eq!(res.status().as_u16(), 200, "{name}");
        assert!(res.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with(ty));
    }
    let (status, body) = s.get("/console/assets/secret.txt").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[actix_web::test]
async fn the_session_cookie_is_http_only_strict_and_opens_the_console() {
    let s = TestServer::start();
    let (set, cookie) = login(&s).await;
    let attrs: Vec<&str> = set.split(';').map(str::trim).collect();
    assert!(attrs.contains(&"HttpOnly"), "{set}");
    assert!(attrs.contains(&"SameSite=Strict"), "{set}");
    assert!(attrs.contains(&"Path=/"), "{set}");
    assert!(attrs.contains(&"Max-Age=43200"), "{set}");
    // Plain HTTP: a Secure cookie would never be sent back.
    assert!(!attrs.contains(&"Secure"), "{set}");
    let (status, token) = console_page(&s, &cookie).await;
    assert_eq!(status, 200);
    assert_eq!(token.len(), 64, "the page carries the CSRF token");
    // Two sessions have different tokens.
    let (_, other) = login(&s).await;
    assert_ne!(console_page(&s, &other).await.1, token);
    // The cookie reads admin data, on the console's routes and on /v1/.
    let (status, body, _) = send(
        &s,
        reqwest::Method::GET,
        "/v1/experiments",
        &[("cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[actix_web::test]
async fn state_changes_with_the_cookie_need_the_csrf_token() {
    let s = TestServer::start();
    let (_, cookie) = login(&s).await;
    let (_, token) = console_page(&s, &cookie).await;
    let (_, other_cookie) = login(&s).await;
    let (_, other_token) = console_page(&s, &other_cookie).await;
    let post = reqwest::Method::POST;
    // Missing, wrong, and another session's token: 403, nothing created.
    for headers in [
        vec![("cookie", cookie.as_str())],
        vec![("cookie", cookie.as_str()), ("x-csrf-token", "0123")],
        vec![
            ("cookie", cookie.as_str()),
            ("x-csrf-token", other_token.as_str()),
        ],
    ] {
        let (status, body, _) = send(
            &s,
            post.clone(),
            "/v1/experiments",
            &headers,
            Some(experiment("e1")),
        )
        .await;
        assert_eq!(status, 403, "{headers:?}: {body}");
        assert_eq!(body["error"]["code"], "csrf_failed");
    }
    let (_, list, _) = send(
        &s,
        reqwest::Method::GET,
        "/v1/experiments",
        &[("x-admin-key", ADMIN_KEY)],
        None,
    )
    .await;
    assert_eq!(list["experiments"], json!([]), "nothing was created");
    // With the token: start and stop an experiment.
    let auth = [
        ("cookie", cookie.as_str()),
        ("x-csrf-token", token.as_str()),
    ];
    let (status, body, _) = send(
        &s,
        post.clone(),
        "/v1/experiments",
        &auth,
        Some(experiment("e1")),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body, _) = send(
        &s,
        post.clone(),
        "/v1/experiments/e1/stop",
        &[auth[0]],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("csrf_failed"))
    );
    let (status, body, _) = send(&s, post.clone(), "/v1/experiments/e1/stop", &auth, None).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("stopped")),
        "{body}"
    );
    // Logout needs the token too; then the cookie is cleared.
    let (status, body, _) = send(&s, post.clone(), "/console/logout", &[auth[0]], None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("csrf_failed"))
    );
    let (status, _, headers) = send(&s, post.clone(), "/console/logout", &auth, None).await;
    assert_eq!(status, 204);
    let cleared = headers["set-cookie"].to_str().expect("ascii");
    assert!(cleared.starts_with("momentum_console=;") && cleared.contains("Max-Age=0"));
    let (status, _, _) = send(&s, post, "/console/logout", &[], None).await;
    assert_eq!(status, 401);
}

#[actix_web::test]
async fn the_overview_reports_the_servers_own_figures() {
    let s = TestServer::start();
    let (_, cookie) = login(&s).await;
    let events = json!([
        event("alice", "g1", "complete"),
        event("alice", "g2", "like"),
        event("bob", "g1", "view"),
        event("carol", "g1", "start"),
    ]);
    let (status, _) = s.post_json("/v1/events", &events).await;
    assert_eq!(status, 200);
    let (status, _) = s.get("/v1/users/alice/recommendations").await;
    assert_eq!(status, 200);
    let (status, o, _) = send(
        &s,
        reqwest::Method::GET,
        "/console/api/overview",
        &[("cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["users"], 3.0);
    assert_eq!(o["items"], 2.0);
    assert_eq!(o["events_accepted_total"], 4.0);
    assert_eq!(o["ready"], true);
    assert_eq!(o["cache"]["misses"], 1.0);
    assert_eq!(o["store"]["kind"], "embedded");
    let routes = o["routes"].as_array().expect("routes");
    let rec = routes
        .iter()
        .find(|r| r["route"] == "/v1/users/{id}/recommendations")
        .expect("the recommendation route was sampled");
    assert_eq!(rec["requests"], 1);
    assert!(rec["p99_ms"].as_f64().is_some_and(|v| v > 0.0), "{rec}");
    let jobs: Vec<&str> = o["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["name"].as_str())
        .collect();
    assert_eq!(jobs, ["snapshot", "training", "churn_scoring"]);
    assert!(o["series"].is_array());
    // The same with the admin key instead of the cookie.
    let (status, by_key, _) = send(
        &s,
        reqwest::Method::GET,
        "/console/api/overview",
        &[("x-admin-key", ADMIN_KEY)],
        None,
    )
    .await;
    assert_eq!((status, &by_key["users"]), (200, &json!(3.0)));
}

#[actix_web::test]
async fn item_users_are_the_heaviest_first_and_bad_input_is_a_4xx() {
    let s = TestServer::start();
    let events = json!([
        event("u1", "g1", "view"),
        event("u2", "g1", "complete"),
        event("u3", "g1", "like"),
        event("u4", "g1", "view"),
        event("u4", "g2", "view"),
    ]);
    let (status, _) = s.post_json("/v1/events", &events).await;
    assert_eq!(status, 200);
    let key = [("x-admin-key", ADMIN_KEY)];
    let get = reqwest::Method::GET;
    let (status, body, _) = send(
        &s,
        get.clone(),
        "/console/api/items/g1/users?n=3",
        &key,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total_users"], 4);
    let users: Vec<&str> = body["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|u| u["user_id"].as_str())
        .collect();
    // complete 5 > like 4 > view 1 (u1 before u4 on the tie).
    assert_eq!(users, ["u2", "u3", "u1"]);
    for (path, code) in [
        ("/console/api/items/g1/users?n=0", "invalid_query"),
        ("/console/api/items/g1/users?n=101", "invalid_query"),
        ("/console/api/items/g1/users?m=1", "invalid_query"),
        ("/console/api/items/nope/users", "unknown_item"),
        ("/console/api/items/a%20b/users", "invalid_id"),
        ("/console/api/experiments/nope/series", "unknown_experiment"),
    ] {
        let (status, body, _) = send(&s, get.clone(), path, &key, None).await;
        assert!((400..500).contains(&status), "{path}: {status} {body}");
        assert_eq!(body["error"]["code"], code, "{path}");
    }
}

#[actix_web::test]
async fn churn_history_counts_stored_scores_per_day_and_tier() {
    use momentum::store::analytics::ChurnScoreRow;

    let s = TestServer::start();
    let key = [("x-admin-key", ADMIN_KEY)];
    let get = reqwest::Method::GET;
    let (status, body, _) = send(&s, get.clone(), "/console/api/churn/history", &key, None).await;
    assert_eq!((status, &body), (200, &json!({"days": []})));
    let row = |user: &str, day: &str, tier: &str| ChurnScoreRow {
        user_id: user.into(),
        day: day.into(),
        probability: 0.5,
        confidence: Some(0.9),
        tier: tier.into(),
    };
    s.state()
        .analytics
        .shared()
        .store
        .put_churn_scores(&[
            row("u1", "2026-01-10", "high"),
            row("u2", "2026-01-10", "low"),
            row("u1", "2026-01-11", "low"),
            row("u2", "2026-01-11", "low"),
            row("u3", "2026-01-11", "medium"),
            row("u1", "2026-01-12", "medium"),
        ])
        .await
        .expect("scores");
    let (status, body, _) = send(&s, get.clone(), "/console/api/churn/history", &key, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"days": [
            {"day": "2026-01-10", "tiers": {"high": 1, "low": 1}},
            {"day": "2026-01-11", "tiers": {"low": 2, "medium": 1}},
            {"day": "2026-01-12", "tiers": {"medium": 1}},
        ]})
    );
    let (status, body, _) = send(
        &s,
        get.clone(),
        "/console/api/churn/history?days=2",
        &key,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let days: Vec<&str> = body["days"]
        .as_array()
        .expect("days")
        .iter()
        .filter_map(|d| d["day"].as_str())
        .collect();
    assert_eq!(days, ["2026-01-11", "2026-01-12"]);
    for path in [
        "/console/api/churn/history?days=0",
        "/console/api/churn/history?days=367",
        "/console/api/churn/history?days=x",
        "/console/api/churn/history?weeks=1",
    ] {
        let (status, body, _) = send(&s, get.clone(), path, &key, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{path}");
    }
    let (status, body, _) = send(&s, get.clone(), "/console/api/churn/history", &[], None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    let (status, _, headers) = send(
        &s,
        reqwest::Method::POST,
        "/console/api/churn/history",
        &key,
        None,
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(
        headers.get("allow").map(|v| v.to_str().unwrap_or("")),
        Some("GET, HEAD")
    );
}
