//! The HTTP side of the generator: the target's URLs, one keep-alive HTTP/1.1 client per
//! simulated connection, the readiness wait before a run, and one timed request attempt
//! ([`send`]) whose outcome the scenarios record. This is the only module that knows about
//! reqwest; the server is reached over HTTP only, never through its crates.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Client, Request, Url};
use serde::Serialize;

use crate::error::LoadError;

/// Longest `Retry-After` the generator honours; a server asking for more is waited on this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Wait before retrying a `503` that carries no usable `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Base URL of the server under test, e.g. `http://127.0.0.1:8080` (a path prefix is kept).
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    base: Url,
}

impl Target {
    /// Parses `--target`; only `http://` is supported (the generator has no TLS stack).
    pub fn parse(target: &str) -> Result<Self, LoadError> {
        let invalid = |message: String| LoadError::InvalidTarget {
            target: target.to_owned(),
            message,
        };
        let mut base = Url::parse(target).map_err(|e| invalid(e.to_string()))?;
        if base.scheme() != "http" {
            return Err(invalid(format!(
                "scheme {:?} is not supported, use http://",
                base.scheme()
            )));
        }
        if base.host_str().is_none() {
            return Err(invalid("no host".to_owned()));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("a query or fragment is not allowed".to_owned()));
        }
        // A base ending in `/` makes `join` append instead of replacing the last segment.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Self { base })
    }

    /// The base URL as given (normalised to end in `/`).
    pub fn as_str(&self) -> &str {
        self.base.as_str()
    }

    fn join(&self, relative: &str) -> Result<Url, LoadError> {
        self.base
            .join(relative)
            .map_err(|e| LoadError::InvalidTarget {
                target: self.base.to_string(),
                message: format!("cannot build URL {relative:?}: {e}"),
            })
    }

    /// `POST /v1/events`.
    pub fn events_url(&self) -> Result<Url, LoadError> {
        self.join("v1/events")
    }

    /// `GET /v1/users/{id}/recommendations?n=`.
    pub fn recommendations_url(&self, user_id: &str, n: u32) -> Result<Url, LoadError> {
        self.join(&format!(
            "v1/users/{}/recommendations?n={n}",
            encode_path_segment(user_id)
        ))
    }

    /// `GET /v1/users/{id}/predictions/success?goal_id=`.
    pub fn success_prediction_url(&self, user_id: &str, goal_id: &str) -> Result<Url, LoadError> {
        self.join(&format!(
            "v1/users/{}/predictions/success?goal_id={}",
            encode_path_segment(user_id),
            encode_path_segment(goal_id)
        ))
    }

    /// `GET /v1/users/{id}/churn`.
    pub fn churn_url(&self, user_id: &str) -> Result<Url, LoadError> {
        self.join(&format!("v1/users/{}/churn", encode_path_segment(user_id)))
    }

    /// `GET /metrics` (Prometheus text format).
    pub fn metrics_url(&self) -> Result<Url, LoadError> {
        self.join("metrics")
    }

    /// `GET /readyz`.
    pub fn readyz_url(&self) -> Result<Url, LoadError> {
        self.join("readyz")
    }

    /// `GET /healthz`.
    pub fn healthz_url(&self) -> Result<Url, LoadError> {
        self.join("healthz")
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters and `:@`, which is a superset of
/// the server's id alphabet `[A-Za-z0-9_.:@-]`: valid ids go through unchanged.
fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:@".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Settings shared by every client of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ClientOptions {
    /// Whole-request timeout (connect, send, response body).
    #[serde(rename = "timeout_s", serialize_with = "crate::report::serialize_secs")]
    pub timeout: Duration,
    /// How long to wait for `GET /readyz` to answer 200 before giving up; zero skips the check.
    #[serde(
        rename = "ready_timeout_s",
        serialize_with = "crate::report::serialize_secs"
    )]
    pub ready_timeout: Duration,
}

/// One client per simulated connection: HTTP/1.1 with keep-alive, one pooled connection, no
/// Nagle delay, and no proxy (environment proxies would measure the proxy, not the server).
pub fn build_client(options: &ClientOptions) -> Result<Client, LoadError> {
    Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .pool_idle_timeout(None)
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(options.timeout)
        .connect_timeout(options.timeout.min(Duration::from_secs(10)))
        .build()
        .map_err(|source| LoadError::Client { source })
}

/// One client shared by many concurrent requests (open-loop scenarios): like [`build_client`],
/// but its pool keeps up to `max_idle` keep-alive connections, opening a new one whenever every
/// pooled connection is busy. Concurrency is bounded by the caller, not by the pool.
pub fn build_pooled_client(options: &ClientOptions, max_idle: usize) -> Result<Client, LoadError> {
    Client::builder()
        .http1_only()
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(None)
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(options.timeout)
        .connect_timeout(options.timeout.min(Duration::from_secs(10)))
        .build()
        .map_err(|source| LoadError::Client { source })
}

/// Soft limit on open file descriptors of this process (Linux `/proc/self/limits`); `None` where
/// it cannot be read. Every connection is a descriptor, so open-loop runs compare it with
/// `--max-inflight`.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Polls `GET /readyz` until it answers 200 or `options.ready_timeout` has passed.
pub async fn wait_ready(target: &Target, options: &ClientOptions) -> Result<(), LoadError> {
    if options.ready_timeout.is_zero() {
        return Ok(());
    }
    let url = target.readyz_url()?;
    let client = build_client(&ClientOptions {
        timeout: options.timeout.min(Duration::from_secs(2)),
        ready_timeout: options.ready_timeout,
    })?;
    let started = Instant::now();
    loop {
        let last = match client.get(url.clone()).send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => format!("status {}", response.status()),
            Err(error) => format!("{} error: {}", failure_kind(&error), error_chain(&error)),
        };
        if started.elapsed() >= options.ready_timeout {
            return Err(LoadError::NotReady {
                url: url.to_string(),
                waited: started.elapsed(),
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Opens the connection of `client` with a `GET /healthz`, so connection set-up is not charged to
/// the first timed request. Failures are ignored: the timed run will record them.
pub async fn warm_up(client: &Client, target: &Target) {
    if let Ok(url) = target.healthz_url() {
        if let Ok(response) = client.get(url).send().await {
            let _ = response.bytes().await;
        }
    }
}

/// What one request attempt produced.
#[derive(Debug)]
pub enum Outcome {
    /// A complete response (any status), body read.
    Response {
        status: u16,
        retry_after: Option<Duration>,
        body: Vec<u8>,
    },
    /// No complete response; `kind` is a [`failure_kind`].
    Failed { kind: &'static str },
}

/// One timed request attempt.
#[derive(Debug)]
pub struct Attempt {
    /// When the request was handed to the client.
    pub sent: Instant,
    /// When the whole response body had arrived (or the attempt failed).
    pub done: Instant,
    pub outcome: Outcome,
}

/// Sends `request` and reads the whole body; the body is part of the measured latency.
pub async fn send(client: &Client, request: Request) -> Attempt {
    let sent = Instant::now();
    let outcome = match client.execute(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = retry_after(response.headers());
            match response.bytes().await {
                Ok(body) => Outcome::Response {
                    status,
                    retry_after,
                    body: body.into(),
                },
                Err(error) => Outcome::Failed {
                    kind: failure_kind(&error),
                },
            }
        }
        Err(error) => Outcome::Failed {
            kind: failure_kind(&error),
        },
    };
    Attempt {
        sent,
        done: Instant::now(),
        outcome,
    }
}

/// `error: cause: root cause`, for messages where reqwest's top-level text alone is too vague
/// ("error sending request").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Stable short name of a transport failure, used as a key of the report's `errors`.
pub fn failure_kind(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else if error.is_body() || error.is_decode() {
        "body"
    } else {
        "transport"
    }
}

/// `Retry-After` in its delta-seconds form, capped at [`MAX_RETRY_AFTER`]. The HTTP-date form is
/// not parsed (the server sends seconds); callers fall back to [`DEFAULT_RETRY_AFTER`].
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn target_urls_keep_a_path_prefix() {
        let target = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            target.events_url().unwrap().as_str(),
            "http://127.0.0.1:8080/v1/events"
        );
        let prefixed = Target::parse("http://lb.local/momentum").unwrap();
        assert_eq!(
            prefixed.recommendations_url("42", 10).unwrap().as_str(),
            "http://lb.local/momentum/v1/users/42/recommendations?n=10"
        );
        assert_eq!(
            prefixed.readyz_url().unwrap().as_str(),
            "http://lb.local/momentum/readyz"
        );
    }

    #[test]
    fn prediction_and_metrics_urls() {
        let target = Target::parse("http://h:1/base").unwrap();
        assert_eq!(
            target
                .success_prediction_url("u 1", "g/2")
                .unwrap()
                .as_str(),
            "http://h:1/base/v1/users/u%201/predictions/success?goal_id=g%2F2"
        );
        assert_eq!(
            target.churn_url("7").unwrap().as_str(),
            "http://h:1/base/v1/users/7/churn"
        );
        assert_eq!(
            target.metrics_url().unwrap().as_str(),
            "http://h:1/base/metrics"
        );
    }

    #[test]
    fn target_rejects_what_it_cannot_reach() {
        assert!(Target::parse("https://example.com").is_err());
        assert!(Target::parse("127.0.0.1:8080").is_err());
        assert!(Target::parse("http://h/?x=1").is_err());
    }

    #[test]
    fn user_ids_are_encoded_as_one_segment() {
        assert_eq!(encode_path_segment("user_1.a:b@c-d"), "user_1.a:b@c-d");
        assert_eq!(encode_path_segment("a/b c?é"), "a%2Fb%20c%3F%C3%A9");
        let target = Target::parse("http://h").unwrap();
        assert_eq!(
            target.recommendations_url("a/b", 5).unwrap().path(),
            "/v1/users/a%2Fb/recommendations"
        );
    }

    #[test]
    fn retry_after_seconds_are_capped() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3600"));
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
