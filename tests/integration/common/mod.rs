//! Test harness: starts the real server on `127.0.0.1:0` in a thread with its own actix
//! `System`, and gives tests an HTTP client pointed at it.

use std::sync::mpsc;
use std::thread::JoinHandle;

use actix_web::dev::ServerHandle;
use momentum::Settings;
use serde_json::Value;

pub const ADMIN_KEY: &str = "test-admin-key";
/// 32 bytes in hex: seals stored models (and encrypts downloads) in tests.
pub const MODEL_KEY: &str = "3f1c9a7e5b2d4f6081a3c5e7f9b1d3f5a7c9e1b3d5f7091b3d5f7a9c1e3b5d7f";

pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
    store_dir: std::path::PathBuf,
    /// Keep the store directory on drop (restart tests reopen it).
    pub keep_store: bool,
    state: std::sync::Arc<momentum::AppState>,
}

/// Test settings: ephemeral port, small pool, an admin key, instant popular refresh.
pub fn settings() -> Settings {
    let mut s = Settings::defaults().expect("embedded defaults");
    s.server.bind = "127.0.0.1:0".into();
    s.server.workers = 2;
    s.actors.shards = 4;
    s.actors.threads = 2;
    s.recommend.popular_refresh_ms = 0;
    s.security.admin_key = ADMIN_KEY.into();
    s.security.model_key = MODEL_KEY.into();
    // A fresh embedded store per server; the directory is removed when the server is dropped.
    s.store.path = tempfile::Builder::new()
        .prefix("momentum-test-")
        .tempdir()
        .expect("temp dir")
        .keep();
    s.snapshot.interval_secs = 0;
    s
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(settings())
    }

    pub fn start_with(settings: Settings) -> TestServer {
        let store_dir = settings.store.path.clone();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = momentum::start(settings).await.expect("server starts");
                tx.send((server.addr, server.handle(), server.state()))
                    .expect("report address");
                server.run().await.expect("server runs");
            })
        });
        let (addr, handle, state) = rx.recv().expect("server started");
        let server = TestServer {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            handle,
            thread: Some(thread),
            store_dir,
            keep_store: false,
            state,
        };
        server.wait_ready();
        server
    }

    /// Waits (bounded) until `/readyz` answers 200: the restore runs after the bind.
    fn wait_ready(&self) {
        let url = self.url("/readyz");
        let ok = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let client = reqwest::Client::new();
                for _ in 0..500 {
                    if let Ok(res) = client.get(&url).send().await {
                        if res.status().as_u16() == 200 {
                            return true;
                        }
                    }
                    actix_web::rt::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                false
            })
        })
        .join()
        .unwrap_or(false);
        assert!(ok, "server did not become ready within 5 s");
    }

    /// The server's shared state (store, engine, metrics).
    pub fn state(&self) -> std::sync::Arc<momentum::AppState> {
        self.state.clone()
    }

    /// `host:port` of the server, for raw sockets.
    pub fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let res = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let res = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let res = self
            .client
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("text")
    }

    /// Value of a metric line (exact name with labels), 0 when absent.
    pub async fn metric(&self, name_with_labels: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| {
                l.strip_prefix(name_with_labels)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Stop gracefully and wait, so ports and threads do not leak between tests.
        let handle = self.handle.clone();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(handle.stop(true));
        })
        .join()
        .ok();
        if let Some(t) = self.thread.take() {
            t.join().ok();
        }
        if !self.keep_store {
            std::fs::remove_dir_all(&self.store_dir).ok();
        }
    }
}

/// Error code of a JSON error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// A `rate`/other event as JSON.
pub fn event(user: &str, item: &str, kind: &str) -> Value {
    serde_json::json!({"user_id": user, "item_id": item, "kind": kind})
}

/// The status code and the body of a raw HTTP/1.1 response (status 0 when there is none).
pub fn split_response(raw: &[u8]) -> (u16, Vec<u8>) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|end| raw[end + 4..].to_vec())
        .unwrap_or_default();
    (status, body)
}
