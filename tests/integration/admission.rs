//! Request admission over real sockets: slow bodies hold no in-flight slot and are cut off
//! with `408`, the shared body buffer is bounded, and admin routes check the key before
//! anything else.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{code, event, settings, split_response, TestServer, ADMIN_KEY};

/// Opens a connection and sends the head of a request announcing `length` body bytes, plus
/// the first `sent` of them.
async fn start_slow_request(
    addr: &str,
    method: &str,
    path: &str,
    length: usize,
    sent: usize,
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
        .write_all(&b"[".repeat(sent.min(1)))
        .await
        .expect("first byte");
    stream.flush().await.expect("flush");
    stream
}

/// Reads what the server answered on a raw connection (status code and body), bounded.
async fn read_answer(stream: &mut TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            Ok(Err(_)) => break,
        }
    }
    let (status, body) = split_response(&buf);
    (status, String::from_utf8_lossy(&body).to_string())
}

#[actix_web::test]
async fn slow_bodies_hold_no_inflight_slot() {
    let mut cfg = settings();
    cfg.server.max_inflight_requests = 8;
    cfg.server.max_inflight_ingest = 4;
    let s = TestServer::start_with(cfg);
    let addr = s.addr();
    // More trickling bodies than there are slots of either kind: event batches and item PUTs.
    let mut slow = Vec::new();
    for _ in 0..10 {
        slow.push(start_slow_request(&addr, "POST", "/v1/events", 100_000, 1).await);
        slow.push(start_slow_request(&addr, "PUT", "/v1/items/x", 100_000, 1).await);
    }
    // Keep them trickling while the others are served.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for stream in &mut slow {
        stream.write_all(b" ").await.expect("trickle");
    }
    for i in 0..12 {
        let (status, body) = s
            .post_json(
                "/v1/events",
                &json!([event(&format!("u{i}"), "g1", "view")]),
            )
            .await;
        assert_eq!(status, 200, "event batch {i} while bodies trickle: {body}");
        let (status, body) = s
            .put_json(&format!("/v1/items/g{i}"), &json!({"title": "Run"}))
            .await;
        assert!(
            status == 201 || status == 200,
            "item PUT {i}: {status} {body}"
        );
        let (status, _) = s.get("/v1/users/u0").await;
        assert_eq!(status, 200);
    }
    assert_eq!(s.metric("momentum_http_shed_total").await, 0.0);
    drop(slow);
}

#[actix_web::test]
async fn a_body_slower_than_the_timeout_is_cut_off_with_408() {
    let mut cfg = settings();
    cfg.server.body_timeout_secs = 1;
    let s = TestServer::start_with(cfg);
    let addr = s.addr();
    // Without the timeout the server would wait for the rest forever and `read_answer` would
    // give up with no status.
    let mut stream = start_slow_request(&addr, "POST", "/v1/events", 1_000, 1).await;
    let (status, body) = read_answer(&mut stream).await;
    assert_eq!(status, 408, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON error body");
    assert_eq!(code(&body), "body_timeout");
    assert_eq!(s.metric("momentum_http_body_timeouts_total").await, 1.0);
    // Nothing of the cut-off batch was applied, and the server still serves.
    assert_eq!(s.get("/v1/users/anyone").await.0, 404);
    let (status, _) = s
        .post_json("/v1/events", &json!([event("u1", "g1", "view")]))
        .await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn bodies_being_received_are_bounded_by_the_shared_buffer() {
    let mut cfg = settings();
    cfg.server.max_body_bytes = 4096;
    cfg.server.max_body_buffer_bytes = 8192;
    let s = TestServer::start_with(cfg);
    let addr = s.addr();
    let _a = start_slow_request(&addr, "POST", "/v1/events", 4000, 1).await;
    let _b = start_slow_request(&addr, "POST", "/v1/events", 4000, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A third body does not fit in what is left: 503 + Retry-After at once.
    let res = s
        .client
        .post(s.url("/v1/events"))
        .header("content-type", "application/json")
        .body(format!(
            "{}{}",
            json!([event("u1", "g1", "view")]),
            " ".repeat(1000)
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.expect("json");
    assert_eq!(code(&body), "overloaded");
    // A request without a body is not affected.
    assert_eq!(s.get("/v1/users/u1").await.0, 404);
}

/// Every admin operation of the OpenAPI document, with a wrong key (or none) and a bad query
/// and body, answers 401 before the input is looked at.
#[actix_web::test]
async fn admin_routes_check_the_key_before_the_input() {
    let s = TestServer::start();
    let doc: Value = s
        .client
        .get(s.url("/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    let mut checked = 0;
    for (path, operations) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in operations.as_object().expect("operations") {
            let admin = operation["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("adminKey").is_some()));
            if !admin {
                continue;
            }
            let concrete = path
                .replace("{id}", "x")
                .replace("{name}", "success")
                .replace("{version}", "1");
            let url = s.url(&format!("{concrete}?since=notanumber&wait=maybe&limit=-1"));
            let method =
                reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            for key in [None, Some("wrong-key")] {
                let mut req = s
                    .client
                    .request(method.clone(), &url)
                    .header("content-type", "application/json")
                    .body("[[\"not an object\"]");
                if let Some(key) = key {
                    req = req.header("x-admin-key", key);
                }
                let res = req.send().await.expect("request");
                let status = res.status().as_u16();
                let body: Value = res.json().await.unwrap_or(Value::Null);
                assert_eq!(
                    (status, code(&body)),
                    (401, "unauthorized"),
                    "{method} {path} with key {key:?}: {body}"
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "only {checked} admin operations in the document"
    );
    // With the right key the same bad query is the client's error.
    let res = s
        .client
        .get(s.url("/v1/interventions?since=notanumber"))
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 400);
}
