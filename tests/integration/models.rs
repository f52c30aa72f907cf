//! Model storage and distribution over HTTP: versions sealed with AES-256-GCM in the store,
//! the exported `.tflite` of the live success model (`latest`, downloads with `ETag` /
//! `If-None-Match`, encrypted or plain over TLS), the device crate syncing from the real
//! server, the model-version distribution, load shedding at `max_inflight_requests`, and HTTPS.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use momentum_device::{ModelManager, ModelServer, NetworkPolicy, SyncOutcome};
use momentum_models::export::{decrypt, sha256_hex, ModelKey};
use serde_json::{json, Value};

use crate::common::{code, event, settings, TestServer, MODEL_KEY};
use crate::predictions::{admin, now_ms, population, post_events, trained_server};

/// `GET path` with extra headers: status, headers, body bytes.
async fn get_with(
    s: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = s.client.get(s.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.bytes().await.expect("body").to_vec();
    (status, headers, body)
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn key() -> ModelKey {
    ModelKey::from_hex(MODEL_KEY).expect("test key")
}

#[actix_web::test]
async fn the_success_model_is_exported_sealed_and_served_to_devices() {
    let (s, _events) = trained_server().await;

    // latest: the live version's float32 export, described without the bytes.
    let (status, headers, body) = get_with(
        &s,
        "/v1/models/success/latest",
        &[("X-Model-Version", "none"), ("X-Device-Id", "phone-a")],
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let latest: Value = serde_json::from_slice(&body).expect("json");
    let version = latest["version"].as_u64().expect("version");
    let sha = latest["sha256"].as_str().expect("sha256").to_string();
    assert_eq!(sha.len(), 64);
    assert_eq!(latest["encrypted"], true);
    assert_eq!(latest["variant"], "float32");
    assert_eq!(latest["metadata"]["version"], version);
    assert_eq!(latest["metadata"]["sha256"], sha.as_str());
    assert_eq!(latest["metadata"]["size"], latest["size"]);
    assert!(latest["metadata"]["golden"]
        .as_array()
        .is_some_and(|g| !g.is_empty()));
    let tag = format!("\"{sha}\"");
    assert_eq!(header(&headers, "etag"), Some(tag.as_str()));

    // The download is encrypted for the device; decrypted, it is the described file.
    let path = format!("/v1/models/success/versions/{version}/model.tflite");
    let (status, headers, sealed) = get_with(&s, &path, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-model-encryption"), Some("aes-256-gcm"));
    assert_eq!(header(&headers, "etag"), Some(tag.as_str()));
    let file = decrypt(&key(), &sealed).expect("the device key opens it");
    assert_eq!(sha256_hex(&file), sha);
    assert_eq!(&file[4..8], b"TFL3", "a TFLite flatbuffer");
    assert!(!sealed.windows(4).any(|w| w == b"TFL3"), "sent encrypted");
    assert!(decrypt(&ModelKey::generate(), &sealed).is_err());

    // An up-to-date device downloads nothing.
    let (status, _, body) = get_with(&s, &path, &[("If-None-Match", &tag)]).await;
    assert_eq!((status, body.len()), (304, 0));
    let (status, _, _) = get_with(&s, &path, &[("If-None-Match", "\"other\"")]).await;
    assert_eq!(status, 200);

    // The int8 variant is another file; the churn forest has none; bad input is a 4xx.
    let (status, _, body) = get_with(&s, "/v1/models/success/latest?variant=int8", &[]).await;
    assert_eq!(status, 200);
    let int8: Value = serde_json::from_slice(&body).expect("json");
    assert_ne!(int8["sha256"].as_str(), Some(sha.as_str()));
    assert_eq!(int8["metadata"]["variant"], "int8_dynamic_range");
    let (status, body) = s.get("/v1/models/churn/latest").await;
    assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
    let (status, body) = s.get("/v1/models/success/latest?variant=fp16").await;
    assert_eq!((status, code(&body)), (400, "invalid_variant"), "{body}");
    let (status, body) = s.get("/v1/models/nope/latest").await;
    assert_eq!(status, 404, "{body}");
    let (status, _, _) = get_with(&s, "/v1/models/success/versions/99/model.tflite", &[]).await;
    assert_eq!(status, 404);

    // At rest, the store holds ciphertext only: no TFLite file, no classifier JSON.
    let stored = s
        .state()
        .analytics
        .shared()
        .store
        .model_version("success", version)
        .await
        .expect("store")
        .expect("stored version")
        .1;
    assert!(!stored.windows(4).any(|w| w == b"TFL3"));
    assert!(!stored.windows(7).any(|w| w == b"weights"));
    let meta = s
        .state()
        .analytics
        .shared()
        .store
        .model_version("churn", 1)
        .await
        .expect("store")
        .expect("churn v1")
        .1;
    assert!(!meta.windows(5).any(|w| w == b"trees"));

    // Downloads are counted by version and result.
    let v = version.to_string();
    let downloads = |result: &str| {
        format!("momentum_model_downloads_total{{model=\"success\",result=\"{result}\",version=\"{v}\"}}")
    };
    assert_eq!(s.metric(&downloads("200")).await, 2.0);
    assert_eq!(s.metric(&downloads("304")).await, 1.0);
    assert_eq!(
        s.metric("momentum_model_version_active{version=\"none\"}")
            .await,
        1.0
    );
}

#[actix_web::test]
async fn the_device_crate_syncs_from_the_server_and_predicts_what_the_server_predicts() {
    let (s, _events) = trained_server().await;
    let base = s.base.clone();
    let manager = Arc::new(ModelManager::new(momentum_device::ManagerConfig {
        key: Some(key()),
        ..Default::default()
    }));
    let sync = {
        let manager = manager.clone();
        move || manager.sync(&ModelServer::http(&base), NetworkPolicy::any())
    };
    let first = tokio::task::spawn_blocking(sync.clone())
        .await
        .expect("join")
        .expect("first sync installs the model");
    assert!(
        matches!(
            first,
            SyncOutcome::Updated {
                previous: None,
                version: 1
            }
        ),
        "{first:?}"
    );
    let second = tokio::task::spawn_blocking(sync)
        .await
        .expect("join")
        .expect("second sync");
    assert_eq!(second, SyncOutcome::UpToDate { version: 1 });
    // The device reported version 1 on its second check (no X-Device-Id: by address).
    assert_eq!(
        s.metric("momentum_model_version_active{version=\"1\"}")
            .await,
        1.0
    );
    assert_eq!(
        s.metric("momentum_model_version_active{version=\"none\"}")
            .await,
        0.0
    );

    // Same features → same probability, on the phone (tract) and on the server.
    for user in ["user-1", "user-2", "user-3"] {
        let (_, features) = s.get(&format!("/v1/users/{user}/features")).await;
        let names = momentum_models::features::FEATURE_NAMES;
        let values: Vec<f64> = names
            .iter()
            .map(|n| features["features"][*n].as_f64().expect("number"))
            .collect();
        let body = json!({"feature_names": names, "features": values});
        let (status, server) = s.post_json("/v1/predictions/success", &body).await;
        assert_eq!(status, 200, "{server}");
        let on_device = manager
            .run_inference(&values, Duration::from_secs(1))
            .expect("inference");
        let on_server = server["probability"].as_f64().expect("probability");
        assert!(
            (on_device - on_server).abs() < 1e-5,
            "{user}: device {on_device} server {on_server}"
        );
    }
}

#[actix_web::test]
async fn models_need_the_model_key_and_a_wrong_key_cannot_read_them() {
    // Without a key, training is refused before any work, with the setting to fix.
    let mut no_key = settings();
    no_key.security.model_key = String::new();
    let s = TestServer::start_with(no_key);
    post_events(&s, &population(now_ms())[..2000]).await;
    let (status, body) = admin(&s, reqwest::Method::POST, "/v1/models/train?wait=true").await;
    assert_eq!(status, 409, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("MOMENTUM__SECURITY__MODEL_KEY"), "{body}");
    let (_, listed) = s.get("/v1/models").await;
    assert_eq!(listed["models"][0]["versions"], json!([]), "nothing stored");
    drop(s);

    // Models sealed under one key: a restart with the same key serves them, with another it
    // does not (and the listing still works: metadata is not secret).
    let (mut s, _) = trained_server().await;
    s.keep_store = true;
    let store = s.state().settings.store.clone();
    drop(s);
    let mut same = settings();
    same.store = store.clone();
    let s = TestServer::start_with(same);
    let (status, body) = s.get("/v1/models/success/latest").await;
    assert_eq!(status, 200, "{body}");
    let mut s = s;
    s.keep_store = true;
    drop(s);
    let mut other = settings();
    other.store = store;
    other.security.model_key = "ab".repeat(32);
    let s = TestServer::start_with(other);
    let (status, body) = s.get("/v1/models/success/latest").await;
    assert_eq!((status, code(&body)), (503, "model_not_ready"), "{body}");
    let (status, listed) = s.get("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(listed["models"][0]["versions"][0]["version"], 1);
    let (status, _, _) = get_with(&s, "/v1/models/success/versions/1/model.tflite", &[]).await;
    assert_eq!(
        status, 500,
        "the stored file cannot be opened with the wrong key"
    );
}

#[actix_web::test]
async fn beyond_max_inflight_requests_the_api_sheds_with_retry_after_and_recovers() {
    let mut cfg = settings();
    cfg.server.max_inflight_requests = 4;
    cfg.server.retry_after_secs = 2;
    let s = TestServer::start_with(cfg);
    let state = s.state();

    // All four slots taken: the API sheds, probes and metrics still answer.
    state.load.inflight.store(4, Ordering::Release);
    let res = s
        .client
        .post(s.url("/v1/events"))
        .json(&json!([event("u1", "i1", "view")]))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(
        res.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("2")
    );
    let body: Value = res.json().await.expect("json");
    assert_eq!(code(&body), "overloaded", "{body}");
    assert_eq!(s.get("/healthz").await.0, 200);
    assert_eq!(s.get("/readyz").await.0, 200);
    assert_eq!(s.metric("momentum_http_shed_total").await, 1.0);
    assert!(s.metric("momentum_process_resident_memory_bytes").await > 1e6);
    let (_, user) = s.get("/v1/users/u1").await;
    assert_eq!(code(&user), "overloaded", "nothing was applied");

    // Slots free again: served.
    state.load.inflight.store(0, Ordering::Release);

    // Ingestion has its own, smaller bound: at it, batches are shed, reads are served.
    let ingest_limit = state.settings.server.max_inflight_ingest;
    state
        .load
        .inflight_ingest
        .store(ingest_limit, Ordering::Release);
    let (status, body) = s
        .post_json("/v1/events", &json!([event("u1", "i1", "view")]))
        .await;
    assert_eq!((status, code(&body)), (503, "overloaded"), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&ingest_limit.to_string())),
        "{body}"
    );
    assert_eq!(s.get("/v1/users/u1").await.0, 404, "reads still served");
    assert_eq!(
        state.load.inflight.load(Ordering::Acquire),
        0,
        "the general slot was given back"
    );
    state.load.inflight_ingest.store(0, Ordering::Release);
    let (status, _) = s.get("/v1/users/u1").await;
    assert_eq!(status, 404, "unknown user: the shed event was not applied");

    // A flood: every answer is a 200 or a 503 with Retry-After, and exactly the acknowledged
    // events are in the state.
    let mut tasks = Vec::new();
    for t in 0..64 {
        let client = s.client.clone();
        let url = s.url("/v1/events");
        tasks.push(tokio::spawn(async move {
            let batch: Vec<Value> = (0..50)
                .map(|i| {
                    let mut e = event(&format!("flood-{}", t % 8), &format!("item-{i}"), "view");
                    e["event_id"] = json!(format!("flood-{t}-{i}"));
                    e
                })
                .collect();
            let res = client
                .post(&url)
                .json(&batch)
                .send()
                .await
                .expect("request");
            let status = res.status().as_u16();
            let retry = res.headers().contains_key("retry-after");
            let body: Value = res.json().await.unwrap_or(Value::Null);
            (status, retry, body["accepted"].as_u64().unwrap_or(0))
        }));
    }
    let mut accepted = 0;
    let mut shed = 0;
    for t in tasks {
        let (status, retry, n) = t.await.expect("join");
        match status {
            200 => accepted += n,
            503 => {
                assert!(retry, "503 without Retry-After");
                shed += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        s.metric("momentum_events_accepted_total").await,
        accepted as f64
    );
    assert!(
        shed > 0 || accepted == 64 * 50,
        "every request was either shed or applied"
    );
    // Three requests were shed while slots were pinned. The server may count more sheds than
    // the clients saw: shedding a POST without reading its body closes the connection, and
    // the HTTP client transparently resends such a request (it was then accepted or shed).
    let counted = s.metric("momentum_http_shed_total").await;
    assert!(
        counted >= 3.0 + shed as f64 && counted <= 3.0 + 64.0,
        "{counted} sheds counted, {shed} seen"
    );
    assert_eq!(
        state.load.inflight.load(Ordering::Acquire),
        0,
        "every slot returned"
    );
}

/// A self-signed certificate for 127.0.0.1 / localhost: (cert PEM, key PEM).
fn self_signed() -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    (cert.cert.pem(), cert.key_pair.serialize_pem())
}

/// One HTTPS GET over rustls trusting `cert_pem`: (status, body).
async fn https_get(addr: std::net::SocketAddr, cert_pem: &str, path: &str) -> (u16, Vec<u8>) {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    crate::common::split_response(&response)
}

#[actix_web::test]
async fn with_a_certificate_the_server_speaks_https() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key_pem) = self_signed();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, &cert).expect("write cert");
    std::fs::write(&key_path, &key_pem).expect("write key");
    let mut cfg = settings();
    cfg.server.tls_cert_path = cert_path.display().to_string();
    cfg.server.tls_key_path = key_path.display().to_string();
    cfg.security.model_download = momentum::settings::ModelDownload::Plain;
    cfg.validate()
        .expect("plain downloads are allowed over TLS");

    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = momentum::start(cfg).await.expect("server starts");
            tx.send((server.addr, server.handle())).expect("send");
            server.run().await.expect("runs");
        })
    });
    let (addr, handle) = rx.recv().expect("started");
    let mut ready = 0;
    for _ in 0..300 {
        ready = https_get(addr, &cert, "/readyz").await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ready, 200, "ready over HTTPS");
    let (status, body) = https_get(addr, &cert, "/healthz").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await;
    assert!(
        plain.map_or(true, |r| !r.status().is_success()),
        "plain HTTP must not be served"
    );
    handle.stop(true).await;
    thread.join().expect("server thread");
}
