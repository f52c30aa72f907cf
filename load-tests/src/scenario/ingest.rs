//! `ingest`: replays a ratings file through `POST /v1/events` as fast as the server takes it.
//! Ratings are sorted by time, turned into `rate` events with deterministic ids (`{prefix}-{row}`,
//! so a second run measures the duplicate path) and serialised into batches before the clock
//! starts. `connections` workers then share the batch list in order (closed loop: each sends its
//! next batch when the previous answer arrived), retry `503` after `Retry-After`, and record
//! every attempt. The headline number is accepted events per second of wall time.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{Client, Method, Request};
use serde::{Deserialize, Serialize};

use crate::client::{self, Attempt, ClientOptions, Outcome, Target, DEFAULT_RETRY_AFTER};
use crate::data::{self, EncodedBatch};
use crate::error::LoadError;
use crate::report::{self, IngestDetails, LatencyHistogram, Recorder, Report, RunSummary};
use crate::scenario::{join_workers, Stop};
use crate::timeline::SharedTimeline;

/// Route label of the measurements.
pub const ROUTE: &str = "POST /v1/events";

/// Settings of an `ingest` run (all of them end up in the report).
#[derive(Debug, Clone, Serialize)]
pub struct IngestConfig {
    pub target: Target,
    pub ratings: PathBuf,
    /// Events per request, 1..=10,000.
    pub batch: usize,
    pub connections: usize,
    /// Send only the first `limit` events in time order.
    pub limit: Option<usize>,
    /// Retries of one batch answered `503`, each after its `Retry-After`.
    pub max_retries: u32,
    /// `event_id` prefix; change it to make a rerun insert instead of hitting duplicates.
    pub id_prefix: String,
    /// Shift timestamps so the newest event is "now".
    pub shift_to_now: bool,
    #[serde(flatten)]
    pub client: ClientOptions,
}

/// A batch ready to go: the request is cloned per attempt, which shares the body bytes.
struct PreparedBatch {
    events: u64,
    request: Request,
}

/// Body of a `200` from `POST /v1/events`.
#[derive(Debug, Deserialize)]
struct IngestResponse {
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    duplicates: u64,
    #[serde(default)]
    rejected: Vec<Rejected>,
}

#[derive(Debug, Deserialize)]
struct Rejected {
    #[serde(default)]
    code: String,
}

/// What one worker measured (also used by `simulate --post`).
pub(crate) struct WorkerResult {
    pub(crate) recorder: Recorder,
    pub(crate) details: IngestDetails,
    pub(crate) batch_latency: LatencyHistogram,
}

/// Runs the scenario against `config.target` until every batch is answered or `stop` is raised.
pub async fn run(config: IngestConfig, stop: Stop) -> Result<Report, LoadError> {
    let batches = prepare(&config)?;
    let events: u64 = batches.iter().map(|b| b.events).sum();
    eprintln!(
        "ingest: {events} events in {} batches of up to {} over {} connections -> {}",
        batches.len(),
        config.batch,
        config.connections,
        config.target.as_str()
    );
    client::wait_ready(&config.target, &config.client).await?;
    let mut clients = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let client = client::build_client(&config.client)?;
        client::warm_up(&client, &config.target).await;
        clients.push(client);
    }

    let batches = Arc::new(batches);
    let cursor = Arc::new(AtomicUsize::new(0));
    let started_at = SystemTime::now();
    let t0 = Instant::now();
    let timeline = SharedTimeline::per_second(t0);
    let handles = clients
        .into_iter()
        .map(|client| {
            tokio::spawn(worker(
                client,
                Arc::clone(&batches),
                Arc::clone(&cursor),
                stop.clone(),
                config.max_retries,
                timeline.clone(),
            ))
        })
        .collect();
    let results = join_workers(handles).await?;
    let elapsed = t0.elapsed();

    let (recorder, details) = merge_workers(&results)?;
    let mut report = Report::new(RunSummary {
        scenario: "ingest",
        mode: "closed",
        target: config.target.as_str(),
        config: &config,
        started_at,
        elapsed,
        interrupted: stop.is_set(),
        recorder: &recorder,
        timeline: Some(timeline.finish(elapsed)),
    })?;
    set_ingest(&mut report, details, elapsed);
    Ok(report)
}

/// The workers' recorders, counts and batch latencies, merged.
pub(crate) fn merge_workers(
    results: &[WorkerResult],
) -> Result<(Recorder, IngestDetails), LoadError> {
    let recorder = report::merge_all(results.iter().map(|r| &r.recorder))?;
    let mut details = IngestDetails::default();
    let mut batch_latency = LatencyHistogram::new();
    for result in results {
        details.merge(&result.details);
        batch_latency.merge(&result.batch_latency)?;
    }
    details.batch_latency_us = batch_latency.percentiles();
    Ok((recorder, details))
}

/// Puts an ingest run's details and its accepted events per second into the report.
pub(crate) fn set_ingest(report: &mut Report, details: IngestDetails, elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    report.throughput.events_per_s = Some(if secs > 0.0 {
        (details.accepted as f64 / secs).round()
    } else {
        0.0
    });
    report.ingest = Some(details);
}

/// Loads, orders, limits and serialises the data set into ready requests.
fn prepare(config: &IngestConfig) -> Result<Vec<PreparedBatch>, LoadError> {
    let mut ratings = data::read_ratings(&config.ratings)?;
    data::sort_by_time(&mut ratings);
    if let Some(limit) = config.limit {
        ratings.truncate(limit);
    }
    let shift_ms = if config.shift_to_now {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        data::shift_to_now_ms(&ratings, now_ms)
    } else {
        0
    };
    let url = config.target.events_url()?;
    let batches = data::encode_batches(&ratings, config.batch, &config.id_prefix, shift_ms)?;
    Ok(batches
        .into_iter()
        .map(|EncodedBatch { events, body }| {
            let mut request = Request::new(Method::POST, url.clone());
            request
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            *request.body_mut() = Some(body.into());
            PreparedBatch {
                events: events as u64,
                request,
            }
        })
        .collect())
}

/// Takes the next unsent batch until none is left (or `stop`), and sends it.
async fn worker(
    client: Client,
    batches: Arc<Vec<PreparedBatch>>,
    cursor: Arc<AtomicUsize>,
    mut stop: Stop,
    max_retries: u32,
    timeline: SharedTimeline,
) -> WorkerResult {
    let mut result = WorkerResult {
        recorder: Recorder::with_timeline(timeline),
        details: IngestDetails::default(),
        batch_latency: LatencyHistogram::new(),
    };
    while !stop.is_set() {
        let Some(batch) = batches.get(cursor.fetch_add(1, Ordering::Relaxed)) else {
            break;
        };
        let first_sent = Instant::now();
        let ok = send_batch(&client, &batch.request, max_retries, &mut stop, &mut result).await;
        result.batch_latency.record(first_sent.elapsed());
        result.details.batches += 1;
        result.details.events_sent += batch.events;
        if !ok {
            result.details.failed_batches += 1;
            result.details.failed_events += batch.events;
        }
    }
    result
}

/// Sends one batch, retrying `503` up to `max_retries` times; true when it got a 2xx.
/// Shared with `simulate --post`.
pub(crate) async fn send_batch(
    client: &Client,
    request: &Request,
    max_retries: u32,
    stop: &mut Stop,
    result: &mut WorkerResult,
) -> bool {
    let mut retries = 0;
    loop {
        // Bodies built from bytes are always clonable; the `None` arm cannot happen.
        let Some(attempt) = request.try_clone() else {
            result.recorder.failure(ROUTE, "transport", Duration::ZERO);
            return false;
        };
        let Attempt {
            sent,
            done,
            outcome,
        } = client::send(client, attempt).await;
        let latency = done.duration_since(sent);
        let (status, retry_after, body) = match outcome {
            Outcome::Failed { kind } => {
                result.recorder.failure(ROUTE, kind, latency);
                return false;
            }
            Outcome::Response {
                status,
                retry_after,
                body,
            } => (status, retry_after, body),
        };
        result.recorder.response(ROUTE, status, latency);
        if status == 503 && retries < max_retries && !stop.is_set() {
            retries += 1;
            result.details.retries += 1;
            let wait = retry_after.unwrap_or(DEFAULT_RETRY_AFTER);
            tokio::select! {
                () = tokio::time::sleep(wait) => continue,
                () = stop.wait() => return false,
            }
        }
        if !(200..300).contains(&status) {
            return false;
        }
        account(&body, &mut result.details);
        return true;
    }
}

/// Adds a `200` body's counts to `details`.
fn account(body: &[u8], details: &mut IngestDetails) {
    match serde_json::from_slice::<IngestResponse>(body) {
        Ok(response) => {
            details.accepted += response.accepted;
            details.duplicates += response.duplicates;
            details.rejected += response.rejected.len() as u64;
            for rejected in response.rejected {
                *details.rejected_by_code.entry(rejected.code).or_default() += 1;
            }
        }
        Err(_) => details.bad_responses += 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_counts_are_accumulated() {
        let mut details = IngestDetails::default();
        account(
            br#"{"accepted": 7, "duplicates": 2, "rejected": [
                {"index": 3, "code": "invalid_id", "message": "bad"},
                {"index": 5, "code": "invalid_id", "message": "bad"},
                {"index": 8, "code": "unknown_kind", "message": "?"}]}"#,
            &mut details,
        );
        account(
            br#"{"accepted": 10, "duplicates": 0, "rejected": []}"#,
            &mut details,
        );
        account(b"not json", &mut details);
        assert_eq!(details.accepted, 17);
        assert_eq!(details.duplicates, 2);
        assert_eq!(details.rejected, 3);
        assert_eq!(details.rejected_by_code["invalid_id"], 2);
        assert_eq!(details.rejected_by_code["unknown_kind"], 1);
        assert_eq!(details.bad_responses, 1);
    }
}
