//! The HTTP contract, over raw TCP so nothing normalises the requests: request framing errors,
//! `405` with `Allow` for every known path and unsupported method, `HEAD` on every `GET` route,
//! and request bodies that are JSON arrays where an object is expected.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{TestServer, ADMIN_KEY};
use crate::ops::{concrete, document, documented_operations};

/// A response as it came off the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    /// Lower-cased names, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Writes `request` as is on a fresh connection and reads one response. The body is read by
/// its `Content-Length` (never for `HEAD`: `head_only`), so keep-alive connections work too.
fn exchange(addr: &str, request: &[u8], head_only: bool) -> Raw {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The server may answer and close before reading everything: a broken pipe is fine.
    let _ = stream.write_all(request);
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match stream.read(&mut buf) {
            Ok(0) => panic!(
                "closed before a response: {:?}",
                String::from_utf8_lossy(&raw)
            ),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the response: {e}"),
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[head_end + 4..].to_vec();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    if !head_only {
        while body.len() < length {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
                Err(e) => panic!("reading the body: {e}"),
            }
        }
    } else {
        // Nothing may follow the head of a HEAD answer: a short wait must read nothing.
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        if let Ok(n) = stream.read(&mut buf) {
            body.extend_from_slice(&buf[..n]);
        }
    }
    Raw {
        status,
        headers,
        body,
    }
}

/// A request without a body, with the admin key.
fn bare(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nhost: test\r\nx-admin-key: {ADMIN_KEY}\r\n\r\n")
        .into_bytes()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    actix_web::rt::task::spawn_blocking(f)
        .await
        .expect("blocking task")
}

/// Requests the HTTP layer refuses before the application sees them (actix-http's h1
/// dispatcher writes these answers itself: an empty body, no JSON) and the one the application
/// refuses itself (a head over 32 KiB that actix-http still accepts: a JSON `431`).
#[actix_web::test]
async fn framing_errors_get_400_or_431() {
    let s = TestServer::start();
    let addr = s.addr();
    let post = "POST /v1/events HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n";
    let many_headers: String = (0..60)
        .map(|i| format!("x-h{i}: {}\r\n", "a".repeat(2000)))
        .collect();
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        (
            "Content-Length and Transfer-Encoding",
            format!(
                "{post}content-length: 4\r\ntransfer-encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n"
            )
            .into_bytes(),
            400,
            None,
        ),
        (
            "two different Content-Lengths",
            format!("{post}content-length: 2\r\ncontent-length: 3\r\n\r\n[]").into_bytes(),
            400,
            None,
        ),
        (
            "two equal Content-Lengths",
            format!("{post}content-length: 2\r\ncontent-length: 2\r\n\r\n[]").into_bytes(),
            400,
            None,
        ),
        (
            "a negative Content-Length",
            format!("{post}content-length: -1\r\n\r\n").into_bytes(),
            400,
            None,
        ),
        (
            "a request line without a method and path",
            b"GARBAGE\r\n\r\n".to_vec(),
            400,
            None,
        ),
        (
            "an unknown HTTP version",
            b"GET /healthz HTTP/9.9\r\nhost: test\r\n\r\n".to_vec(),
            400,
            None,
        ),
        (
            "a space in the path",
            b"GET /v1/items/a b HTTP/1.1\r\nhost: test\r\n\r\n".to_vec(),
            400,
            None,
        ),
        (
            "120 KB of headers in 60 lines",
            format!("GET /healthz HTTP/1.1\r\nhost: test\r\n{many_headers}\r\n").into_bytes(),
            431,
            Some("headers_too_large"),
        ),
        (
            "one 120 KB header",
            format!(
                "GET /v1/users/x HTTP/1.1\r\nhost: test\r\nx-big: {}\r\n\r\n",
                "a".repeat(120_000)
            )
            .into_bytes(),
            431,
            Some("headers_too_large"),
        ),
        (
            "40 KB of headers",
            format!(
                "GET /healthz HTTP/1.1\r\nhost: test\r\nx-big: {}\r\n\r\n",
                "a".repeat(40_000)
            )
            .into_bytes(),
            431,
            Some("headers_too_large"),
        ),
        (
            "200 KB of headers (beyond actix-http's 128 KiB buffer)",
            format!(
                "GET /healthz HTTP/1.1\r\nhost: test\r\nx-big: {}\r\n\r\n",
                "a".repeat(200_000)
            )
            .into_bytes(),
            431,
            None,
        ),
        (
            "100 headers (beyond actix-http's 96)",
            format!(
                "GET /healthz HTTP/1.1\r\nhost: test\r\n{}\r\n",
                (0..100)
                    .map(|i| format!("x-h{i}: 1\r\n"))
                    .collect::<String>()
            )
            .into_bytes(),
            431,
            None,
        ),
    ];
    for (name, request, status, code) in cases {
        let addr = addr.clone();
        let res = blocking(move || exchange(&addr, &request, false)).await;
        assert_eq!(res.status, status, "{name}: {res:?}");
        match code {
            Some(code) => {
                assert_eq!(res.json()["error"]["code"], code, "{name}");
                assert!(res.json()["error"]["message"].is_string(), "{name}");
                assert_eq!(
                    res.header("content-type"),
                    Some("application/json"),
                    "{name}"
                );
            }
            None => {
                assert!(res.body.is_empty(), "{name}: {:?}", res.body);
                assert_eq!(res.header("content-length"), Some("0"), "{name}");
            }
        }
    }
    // Just under the bound is served.
    let request = format!(
        "GET /healthz HTTP/1.1\r\nhost: test\r\nx-big: {}\r\n\r\n",
        "a".repeat(30_000)
    );
    let res = blocking(move || exchange(&addr, request.as_bytes(), false)).await;
    assert_eq!(res.status, 200, "{res:?}");
}

/// The methods a documented path answers: its operations, and `HEAD` where it has `GET`.
fn allowed(doc: &Value) -> Vec<(String, BTreeSet<String>)> {
    let mut by_path: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for (path, method) in documented_operations(doc) {
        let set = by_path.entry(path).or_default();
        if method == "get" {
            set.insert("HEAD".into());
        }
        set.insert(method.to_uppercase());
    }
    by_path.into_iter().collect()
}

/// Every documented path × every method it does not support: `405 method_not_allowed` in the
/// JSON error shape, with `Allow` naming exactly the path's methods.
#[actix_web::test]
async fn every_known_path_answers_405_with_allow_for_other_methods() {
    let s = TestServer::start();
    let doc = document();
    let methods = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PURGE",
    ];
    let mut checked = 0;
    let mut failures = Vec::new();
    for (path, allow) in allowed(&doc) {
        let concrete = concrete(&path);
        for method in methods.iter().filter(|m| !allow.contains(**m)) {
            let addr = s.addr();
            let request = bare(method, &concrete);
            let head = *method == "HEAD";
            let res = blocking(move || exchange(&addr, &request, head)).await;
            checked += 1;
            let got: BTreeSet<String> = res
                .header("allow")
                .unwrap_or("")
                .split(',')
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .collect();
            let body = res.json();
            let json_ok = head
                || (body["error"]["code"] == "method_not_allowed"
                    && body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with(&format!("{method} is not allowed"))));
            if res.status != 405 || got != allow || !json_ok {
                failures.push(format!(
                    "{method} {path}: {} allow {got:?} (want {allow:?}) {body}",
                    res.status
                ));
            }
        }
    }
    assert!(checked > 150, "{checked} combinations");
    assert!(
        failures.is_empty(),
        "{} of {checked} combinations wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `HEAD` on every documented `GET` route: the `GET` answer's status and headers, no body.
#[actix_web::test]
async fn head_answers_like_get_without_a_body_on_every_get_route() {
    let s = TestServer::start();
    // Some routes answer 200 for these ids, others 404 or 503: each HEAD must match its GET.
    assert_eq!(
        s.put_json("/v1/items/x", &json!({"title": "X"})).await.0,
        201
    );
    let (status, _) = s
        .post_json(
            "/v1/events",
            &json!([{"user_id": "x", "item_id": "x", "kind": "like"}]),
        )
        .await;
    assert_eq!(status, 200);
    let doc = document();
    let mut statuses = BTreeSet::new();
    for (path, method) in documented_operations(&doc) {
        if method != "get" {
            continue;
        }
        let concrete = concrete(&path);
        // Bodies that carry a clock, counters or a cache flag (metrics, features,
        // recommendations) change length between requests: the HEAD's length must equal the
        // length of the GET before or after it, in one of many tries. Features are computed as of
        // the request's millisecond, so three requests rarely agree on every digit: five tries
        // once missed on CI, forty make a miss about a one-in-a-million event.
        let mut matched = false;
        for _ in 0..40 {
            let (a, b, c) = (s.addr(), s.addr(), s.addr());
            let (g, h, g2) = (
                bare("GET", &concrete),
                bare("HEAD", &concrete),
                bare("GET", &concrete),
            );
            let get = blocking(move || exchange(&a, &g, false)).await;
            let head = blocking(move || exchange(&b, &h, true)).await;
            let again = blocking(move || exchange(&c, &g2, false)).await;
            statuses.insert(get.status);
            assert_eq!(head.status, get.status, "HEAD {path}: {head:?} vs {get:?}");
            assert!(head.body.is_empty(), "HEAD {path} sent a body: {head:?}");
            // `date` moves; header order is not part of the answer.
            let comparable = |r: &Raw| -> BTreeSet<(String, String)> {
                r.headers
                    .iter()
                    .filter(|(n, _)| n != "date" && n != "content-length")
                    .cloned()
                    .collect()
            };
            assert_eq!(comparable(&head), comparable(&get), "HEAD {path}");
            let length = head.header("content-length");
            assert!(length.is_some(), "HEAD {path}: {head:?}");
            if length == get.header("content-length") || length == again.header("content-length") {
                matched = true;
                break;
            }
        }
        assert!(matched, "HEAD {path}: Content-Length differs from GET's");
    }
    assert!(
        statuses.contains(&200) && statuses.len() > 1,
        "{statuses:?}"
    );
}

/// What an array body must not change: the items, the users, the experiments and the event
/// counters, read back over HTTP.
async fn readable_state(s: &TestServer) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for path in [
        "/v1/items/run-5k",
        "/v1/items/x",
        "/v1/users/alice",
        "/v1/users/mallory",
        "/v1/experiments",
        "/v1/experiments/e1",
    ] {
        let res = s
            .client
            .get(s.url(path))
            .header("x-admin-key", ADMIN_KEY)
            .send()
            .await
            .expect("get");
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        out.push((path.to_string(), json!([status, body])));
    }
    let metrics = s.metrics().await;
    for line in metrics.lines().filter(|l| {
        l.starts_with("momentum_events_accepted_total")
            || l.starts_with("momentum_users ")
            || l.starts_with("momentum_items ")
    }) {
        out.push((line.to_string(), Value::Null));
    }
    out
}

/// A JSON array where an object is expected — the whole body, an element of the events batch,
/// or a nested object (experiment variants and their overrides) — is a 400 on every route that
/// takes a body, and changes nothing.
#[actix_web::test]
async fn array_bodies_are_refused_and_change_nothing() {
    let s = TestServer::start();
    let (status, body) = s
        .put_json(
            "/v1/items/run-5k",
            &json!({"title": "Run a 5k", "description": "Couch to 5k", "tags": ["running"],
                    "type": "habit", "difficulty": 0.4}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = s
        .put_json(
            "/v1/users/alice",
            &json!({"preferences": {"goal": "fitness"}, "signup_date": "2024-01-02", "locale": "en-GB"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = s
        .post_json(
            "/v1/events",
            &json!([{"event_id": "e0", "user_id": "alice", "item_id": "run-5k", "kind": "like"}]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let before = readable_state(&s).await;
    assert_eq!(before[0].1[1]["title"], "Run a 5k", "{before:?}");

    let variant = json!({"name": "a", "weight": 1});
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "PUT",
            "/v1/items/run-5k",
            json!(["Hacked title"]),
            "malformed_json",
        ),
        (
            "PUT",
            "/v1/items/run-5k",
            json!(["t", "d", ["x"], "habit", 0.5]),
            "malformed_json",
        ),
        ("PUT", "/v1/items/x", json!([]), "malformed_json"),
        ("PUT", "/v1/users/alice", json!([]), "malformed_json"),
        (
            "PUT",
            "/v1/users/alice",
            json!([{}, "2020-01-01", "fr"]),
            "malformed_json",
        ),
        (
            "PUT",
            "/v1/users/alice",
            json!({"preferences": ["x"]}),
            "malformed_json",
        ),
        ("PUT", "/v1/users/mallory", json!([]), "malformed_json"),
        (
            "POST",
            "/v1/events",
            json!([["ea1", "mallory", "run-5k", "view"]]),
            "invalid_events",
        ),
        ("POST", "/v1/events", json!([[]]), "invalid_events"),
        (
            "POST",
            "/v1/experiments",
            json!(["e1", null, [variant]]),
            "invalid_experiment",
        ),
        (
            "POST",
            "/v1/experiments",
            json!({"id": "e1", "variants": [["a", 1]]}),
            "invalid_experiment",
        ),
        (
            "POST",
            "/v1/experiments",
            json!({"id": "e1", "variants": [{"name": "a", "weight": 1, "hybrid_weights": [1.0, 0.0]}]}),
            "invalid_experiment",
        ),
        (
            "POST",
            "/v1/experiments",
            json!({"id": "e1", "variants": [{"name": "a", "weight": 1, "diversity": [0.5]}]}),
            "invalid_experiment",
        ),
        (
            "POST",
            "/v1/predictions/success",
            json!([["x"], [1.0]]),
            "malformed_json",
        ),
        (
            "POST",
            "/v1/predictions/churn",
            json!([["x"], [1.0]]),
            "malformed_json",
        ),
    ];
    for (method, path, body, code) in cases {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let res = s
            .client
            .request(m, s.url(path))
            .header("x-admin-key", ADMIN_KEY)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        let answer: Value = res.json().await.unwrap_or(Value::Null);
        let what = format!("{method} {path} {body}");
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{what}: {answer}");
        if path == "/v1/events" {
            assert_eq!(
                answer["rejected"][0]["code"], "invalid_event",
                "{what}: {answer}"
            );
        }
        assert_eq!(readable_state(&s).await, before, "{what} changed the state");
    }

    // In a batch, an array element is refused on its own like any malformed event.
    let (status, body) = s
        .post_json(
            "/v1/events",
            &json!([
                ["ea2", "mallory", "run-5k", "view"],
                {"event_id": "ea3", "user_id": "alice", "item_id": "run-5k", "kind": "view"}
            ]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
    assert_eq!(body["rejected"][0]["index"], 0, "{body}");
    assert_eq!(body["rejected"][0]["code"], "invalid_event", "{body}");
    assert_eq!(s.get("/v1/users/mallory").await.0, 404);
}
