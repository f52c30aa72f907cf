//! Optional delivery of the churn outbox to a webhook (`churn.webhook_url`).
//!
//! After each scoring run the undelivered interventions (`pending`, `retrying`) are POSTed one
//! at a time, in id order, as JSON `{id, user_id, day, tier, channel, payload, attempt}` with an
//! `Idempotency-Key: intervention-{id}` header (delivery is at least once: a receiver that
//! answered but whose answer was lost sees the intervention again). A `2xx` answer marks it
//! `delivered`. Otherwise it is retried in the same pass after `webhook_backoff_ms`, doubling
//! (at most 3 tries per pass); an intervention whose attempts reach `webhook_max_attempts` is
//! `failed`, one with attempts left stays `retrying` for the next pass. Attempts and state are
//! written to the outbox after each intervention. Bounded: a pass handles at most
//! [`PASS_LIMIT`] interventions and stops after [`BREAKER`] interventions failed in a row (the
//! endpoint looks down; the rest waits for the next run).
//!
//! Requests go through the HTTP client crate (`reqwest`), one connection per request, with
//! connect and read timeouts of `webhook_timeout_ms`; only `http://` URLs are accepted (TLS
//! endpoints need a local relay).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::JobError;
use crate::analytics::Shared;
use crate::store::analytics::StoredIntervention;

/// What a webhook delivery pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryCounts {
    pub delivered: usize,
    /// Failed this pass, to be retried by the next one.
    pub retrying: usize,
    /// Out of attempts.
    pub failed: usize,
    /// The pass stopped early after consecutive failures (the endpoint looks down).
    pub stopped_early: bool,
}

/// Interventions handled per pass at most.
pub const PASS_LIMIT: usize = 100_000;
/// Consecutive failed interventions after which a pass stops.
pub const BREAKER: usize = 5;
/// Tries of one intervention within a pass.
const TRIES_PER_PASS: u32 = 3;
/// Longest wait between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A parsed `http://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Why a `churn.webhook_url` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("only http:// URLs are supported")]
    NotHttp,
    #[error("the URL needs a host (and no user info)")]
    NoHost,
    #[error("bad port {port:?}")]
    BadPort { port: String },
    #[error("bad host or path")]
    BadHostOrPath,
}

impl Target {
    /// Parses `url`, or says why it is refused (`churn.webhook_url` validation).
    pub fn parse(url: &str) -> Result<Target, UrlError> {
        let rest = url.strip_prefix("http://").ok_or(UrlError::NotHttp)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(UrlError::NoHost);
        }
        // A host name or an IPv4 address, and an optional port.
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| UrlError::BadPort { port: p.to_owned() })?;
                (h, port)
            }
            None => (authority, 80),
        };
        if host.is_empty()
            || path
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(UrlError::BadHostOrPath);
        }
        Ok(Target {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    /// The URL requests go to.
    pub fn url(&self) -> String {
        format!("http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// The client of a delivery pass: a connection per request, so a receiver that closes after
/// each answer is never sent a request on a stale connection.
fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .pool_max_idle_per_host(0)
        .http1_title_case_headers()
        .user_agent("momentum")
        .build()
}

/// POSTs `body` as JSON; returns the response status.
async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    idempotency_key: &str,
) -> Result<u16, reqwest::Error> {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", idempotency_key)
        .body(body)
        .send()
        .await?;
    Ok(response.status().as_u16())
}

fn body_of(i: &StoredIntervention, attempt: u32) -> Vec<u8> {
    json!({
        "id": i.id,
        "user_id": i.user_id,
        "day": i.day,
        "tier": i.tier,
        "channel": i.channel,
        "payload": i.payload,
        "attempt": attempt,
    })
    .to_string()
    .into_bytes()
}

/// One delivery pass over the undelivered interventions (see the module docs).
pub async fn deliver(shared: &Arc<Shared>, target: &Target) -> Result<DeliveryCounts, JobError> {
    let cfg = &shared.config.churn;
    let timeout = Duration::from_millis(cfg.webhook_timeout_ms.max(1));
    let client = client(timeout).map_err(|e| JobError::failed("building the HTTP client", e))?;
    let url = target.url();
    let max_attempts = cfg.webhook_max_attempts.max(1);
    let mut counts = DeliveryCounts::default();
    let mut consecutive_failures = 0;
    let mut handled = 0;
    let mut cursor = 0;
    'pass: loop {
        let page = shared
            .store
            .undelivered_interventions(cursor, 500)
            .await
            .map_err(|e| JobError::failed("reading the outbox", e))?;
        let Some(last) = page.last() else { break };
        cursor = last.id;
        for i in page {
            if handled == PASS_LIMIT || consecutive_failures == BREAKER {
                counts.stopped_early = consecutive_failures == BREAKER;
                break 'pass;
            }
            handled += 1;
            let mut attempts = i.attempts;
            let mut delivered = false;
            let mut backoff = Duration::from_millis(cfg.webhook_backoff_ms);
            for try_no in 0..TRIES_PER_PASS {
                if attempts >= max_attempts {
                    break;
                }
                if try_no > 0 {
                    tokio::time::sleep(backoff.min(MAX_BACKOFF)).await;
                    backoff = backoff.saturating_mul(2);
                }
                attempts += 1;
                let body = body_of(&i, attempts);
                let key = format!("intervention-{}", i.id);
                match post_json(&client, &url, body, &key).await {
                    Ok(status) if (200..300).contains(&status) => {
                        delivered = true;
                        break;
                    }
                    Ok(status) => tracing::debug!(id = i.id, status, "webhook refused"),
                    Err(error) => tracing::debug!(id = i.id, %error, "webhook failed"),
                }
            }
            let state = if delivered {
                counts.delivered += 1;
                consecutive_failures = 0;
                "delivered"
            } else if attempts >= max_attempts {
                counts.failed += 1;
                consecutive_failures += 1;
                "failed"
            } else {
                counts.retrying += 1;
                consecutive_failures += 1;
                "retrying"
            };
            shared
                .store
                .set_intervention_delivery(&i.user_id, &i.day, &i.channel, state, attempts)
                .await
                .map_err(|e| JobError::failed("recording a delivery", e))?;
        }
    }
    if counts.stopped_early || counts.failed > 0 {
        tracing::warn!(?counts, "webhook delivery incomplete");
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Mutex;

    use super::*;
    use crate::analytics::{Analytics, AnalyticsConfig};
    use crate::store::analytics::NewIntervention;
    use crate::store::{Store, StoreConfig};

    #[test]
    fn urls_are_parsed_strictly() {
        let t = Target::parse("http://hooks.local:9000/churn?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("hooks.local", 9000, "/churn?x=1")
        );
        let t = Target::parse("http://127.0.0.1").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        for bad in [
            "https://x/",
            "ftp://x",
            "http://",
            "http://u:p@x/",
            "http://x:99999/",
            "http://x/a b",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    /// A webhook answering with the given statuses in turn (then 200), recording bodies.
    fn hook(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            let mut statuses = statuses.into_iter();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let mut buf = vec![0u8; 65536];
                let mut len = 0;
                // Read the head and the body announced by Content-Length.
                loop {
                    let n = stream.read(&mut buf[len..]).unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    len += n;
                    let text = String::from_utf8_lossy(&buf[..len]).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let cl = text
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if len >= end + 4 + cl {
                            record.lock().unwrap().push(text[end + 4..].to_string());
                            break;
                        }
                    }
                }
                let status = statuses.next().unwrap_or(200);
                let _ = stream.write_all(
                    format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                );
            }
        });
        (url, seen)
    }

    async fn outbox(config: AnalyticsConfig) -> (tempfile::TempDir, Analytics) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreConfig {
            path: dir.path().join("data"),
            cache_mb: 16,
            ..StoreConfig::default()
        })
        .await
        .unwrap();
        let batch: Vec<NewIntervention> = ["a", "b", "c"]
            .iter()
            .map(|u| NewIntervention {
                user_id: (*u).into(),
                day: "2026-01-01".into(),
                tier: "high".into(),
                channel: "push".into(),
                payload: json!({"tier": "high"}),
                created_ms: 1,
            })
            .collect();
        store.append_interventions(&batch).await.unwrap();
        let registry = prometheus::Registry::new();
        let a = Analytics::new(config, Arc::new(store), &registry)
            .await
            .unwrap();
        (dir, a)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interventions_are_delivered_with_retries_and_their_state_recorded() {
        // The first answer is a 500: the first intervention needs a retry.
        let (url, seen) = hook(vec![500]);
        let mut config = AnalyticsConfig::default();
        config.churn.webhook_url = url.clone();
        config.churn.webhook_backoff_ms = 10;
        let (_dir, a) = outbox(config).await;
        let counts = deliver(a.shared(), &Target::parse(&url).unwrap())
            .await
            .unwrap();
        assert_eq!(
            counts,
            DeliveryCounts {
                delivered: 3,
                ..DeliveryCounts::default()
            }
        );
        let rows = a.shared().store.interventions_after(0, 10).await.unwrap();
        let states: Vec<(&str, u32)> = rows
            .iter()
            .map(|r| (r.delivery_state.as_str(), r.attempts))
            .collect();
        assert_eq!(
            states,
            [("delivered", 2), ("delivered", 1), ("delivered", 1)]
        );
        let bodies = seen.lock().unwrap().clone();
        assert_eq!(bodies.len(), 4);
        let first: serde_json::Value = serde_json::from_str(&bodies[1]).unwrap();
        assert_eq!(
            (first["user_id"].as_str(), first["attempt"].as_u64()),
            (Some("a"), Some(2))
        );
        // Nothing left to deliver.
        let again = deliver(a.shared(), &Target::parse(&url).unwrap())
            .await
            .unwrap();
        assert_eq!(again, DeliveryCounts::default());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_endpoint_leaves_interventions_retrying_then_failed() {
        // A port nobody listens on.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/hook");
        let mut config = AnalyticsConfig::default();
        config.churn.webhook_url = url.clone();
        config.churn.webhook_backoff_ms = 1;
        config.churn.webhook_max_attempts = 4;
        let (_dir, a) = outbox(config).await;
        let target = Target::parse(&url).unwrap();
        let counts = deliver(a.shared(), &target).await.unwrap();
        assert_eq!((counts.retrying, counts.delivered), (3, 0), "{counts:?}");
        let rows = a.shared().store.interventions_after(0, 10).await.unwrap();
        assert!(rows
            .iter()
            .all(|r| r.delivery_state == "retrying" && r.attempts == 3));
        // The next pass uses up the attempts.
        let counts = deliver(a.shared(), &target).await.unwrap();
        assert_eq!(counts.failed, 3, "{counts:?}");
        let rows = a.shared().store.interventions_after(0, 10).await.unwrap();
        assert!(rows
            .iter()
            .all(|r| r.delivery_state == "failed" && r.attempts == 4));
        assert!(a
            .shared()
            .store
            .undelivered_interventions(0, 10)
            .await
            .unwrap()
            .is_empty());
    }
}
