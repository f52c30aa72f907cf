//! Server-side samples during a run: a background task reads the server's `GET /metrics`
//! (Prometheus text format) at a fixed interval and keeps its resident memory
//! ([`RSS_METRIC`]), so `soak` and `overload` can show memory next to latency. A scrape that fails
//! or a server without the metric gives a `null` sample, never a failed run. The scrapes use
//! their own connection and are not part of the measured load.

use std::time::{Duration, Instant};

use reqwest::Client;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::client::{self, ClientOptions, Target};
use crate::error::LoadError;
use crate::report::RssSample;

/// The server's resident set size gauge, in bytes.
pub const RSS_METRIC: &str = "momentum_process_resident_memory_bytes";

/// Longest a scrape may take; a slow `/metrics` gives a `null` sample rather than a late one.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Value of the first sample of metric `name` in a Prometheus text exposition (labels, if any,
/// ignored); `None` when it is absent or not a finite number.
pub fn parse_metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(name)?;
        let rest = if let Some(labelled) = rest.strip_prefix('{') {
            &labelled[labelled.find('}')? + 1..]
        } else if rest.starts_with([' ', '\t']) {
            rest
        } else {
            // Another metric sharing the prefix (`..._bytes_total`), or a comment.
            return None;
        };
        rest.split_whitespace()
            .next()?
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
    })
}

/// Resident memory in bytes from a `/metrics` body.
pub fn parse_rss(text: &str) -> Option<u64> {
    parse_metric(text, RSS_METRIC)
        .filter(|v| *v >= 0.0)
        // Saturating float-to-int conversion; RSS is far below 2^53 anyway.
        .map(|v| v.round() as u64)
}

/// A running sampler; [`RssSampler::finish`] takes a last sample and returns them all.
pub struct RssSampler {
    handle: JoinHandle<Vec<RssSample>>,
    done: oneshot::Sender<()>,
}

impl RssSampler {
    /// Samples at `t0`, `t0 + every`, `t0 + 2·every`, ... until [`Self::finish`]. The number of
    /// samples is the run's duration over `every`, both bounded by the scenario.
    pub fn start(
        target: &Target,
        options: &ClientOptions,
        t0: Instant,
        every: Duration,
    ) -> Result<Self, LoadError> {
        let url = target.metrics_url()?;
        let client = client::build_client(&ClientOptions {
            timeout: options.timeout.min(SCRAPE_TIMEOUT),
            ready_timeout: options.ready_timeout,
        })?;
        let (done, mut done_rx) = oneshot::channel();
        let every = every.max(Duration::from_millis(10));
        let handle = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut warned = false;
            let mut next = t0;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next.into()) => {}
                    _ = &mut done_rx => break,
                }
                samples.push(sample(&client, &url, t0, &mut warned).await);
                next += every;
                // A scrape slower than the interval skips ticks instead of bunching up.
                while next < Instant::now() {
                    next += every;
                }
            }
            samples.push(sample(&client, &url, t0, &mut warned).await);
            samples
        });
        Ok(Self { handle, done })
    }

    /// Takes a final sample and returns every sample in time order.
    pub async fn finish(self) -> Result<Vec<RssSample>, LoadError> {
        // The task only ends after receiving this (or by panicking, reported below).
        let _ = self.done.send(());
        self.handle.await.map_err(|e| LoadError::Worker {
            message: format!("metrics sampler: {e}"),
        })
    }
}

async fn sample(client: &Client, url: &reqwest::Url, t0: Instant, warned: &mut bool) -> RssSample {
    let rss_bytes = scrape(client, url).await;
    if rss_bytes.is_none() && !*warned {
        *warned = true;
        eprintln!("note: no {RSS_METRIC} in {url}; memory samples are null");
    }
    RssSample {
        t_s: round3(t0.elapsed().as_secs_f64()),
        rss_bytes,
    }
}

async fn scrape(client: &Client, url: &reqwest::Url) -> Option<u64> {
    let response = client.get(url.clone()).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    parse_rss(&response.text().await.ok()?)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_gauge_in_prometheus_text() {
        let text = "\
# HELP momentum_process_resident_memory_bytes Resident set size.
# TYPE momentum_process_resident_memory_bytes gauge
momentum_process_resident_memory_bytes_total 1
momentum_process_resident_memory_bytes 1.2345678e+08
momentum_http_requests_total{route=\"/v1/events\"} 17
";
        assert_eq!(parse_rss(text), Some(123_456_780));
        assert_eq!(
            parse_metric(text, "momentum_http_requests_total"),
            Some(17.0)
        );
        assert_eq!(
            parse_rss("momentum_process_resident_memory_bytes 4096\n"),
            Some(4096)
        );
        assert_eq!(
            parse_rss("momentum_process_resident_memory_bytes{instance=\"a\"} 10 1700000000\n"),
            Some(10)
        );
    }

    #[test]
    fn missing_or_bad_values_are_none() {
        assert_eq!(parse_rss(""), None);
        assert_eq!(
            parse_rss("# HELP momentum_process_resident_memory_bytes x\n"),
            None
        );
        assert_eq!(
            parse_rss("momentum_process_resident_memory_bytes NaN\n"),
            None
        );
        assert_eq!(
            parse_rss("momentum_process_resident_memory_bytes -5\n"),
            None
        );
        assert_eq!(parse_rss("other_metric 5\n"), None);
    }
}
