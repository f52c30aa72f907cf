//! `simulate --post`: sends a simulation's events to a server's `POST /v1/events`, in time
//! order, in batches, over a few keep-alive connections, with the same closed-loop, retry and
//! accounting rules as the `ingest` scenario (`503` retried after `Retry-After`, other failures
//! counted, accepted/duplicate/rejected events tallied). Batches are serialised by the workers
//! just before sending, so a large simulation is never held twice in memory; the throughput is
//! therefore that of a feeder, not a benchmark of the server (use `ingest` for that).
//!
//! The JSON of an event is `{"event_id","user_id","item_id","kind","value","ts"}`, without
//! `item_id` for `app_open` and without `value` except for `rate`. Event ids are the CSV's, so
//! posting the same simulation again only hits the duplicate path.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use reqwest::header::{HeaderValue, CONTENT_TYPE};
use reqwest::{Client, Method, Request, Url};
use serde::Serialize;

use super::{SimStats, Simulation};
use crate::client::{self, ClientOptions, Target};
use crate::error::LoadError;
use crate::report::{IngestDetails, LatencyHistogram, Recorder, Report, RunSummary};
use crate::scenario::ingest::{merge_workers, send_batch, set_ingest, WorkerResult};
use crate::scenario::{join_workers, Stop};
use crate::timeline::SharedTimeline;

/// Route label of the measurements.
pub const ROUTE: &str = "POST /v1/events";

/// Settings of the posting part of a `simulate` run (they end up in the report).
#[derive(Debug, Clone, Serialize)]
pub struct PostConfig {
    pub target: Target,
    /// Events per request, 1..=10,000.
    pub batch: usize,
    pub connections: usize,
    /// Retries of one batch answered `503`, each after its `Retry-After`.
    pub max_retries: u32,
    #[serde(flatten)]
    pub client: ClientOptions,
    /// What was simulated (filled in by [`super::run`]).
    pub simulation: Option<SimStats>,
}

/// One event as `POST /v1/events` takes it.
#[derive(Debug, Serialize, PartialEq)]
struct PostEvent {
    event_id: String,
    user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    item_id: Option<String>,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<u8>,
    ts: i64,
}

/// The body of batch `index` of `batch` events.
fn encode(sim: &Simulation, index: usize, batch: usize) -> Result<(u64, Vec<u8>), LoadError> {
    let first = index * batch;
    let events: Vec<PostEvent> = sim.events[first..(first + batch).min(sim.events.len())]
        .iter()
        .enumerate()
        .map(|(i, e)| PostEvent {
            event_id: sim.event_id(first + i),
            user_id: super::user_id(e.user),
            item_id: e.item.map(super::item_id),
            kind: e.kind.as_str(),
            value: e.value,
            ts: e.ts_ms,
        })
        .collect();
    let body = serde_json::to_vec(&events).map_err(|source| LoadError::Serialize {
        what: "event batch",
        source,
    })?;
    Ok((events.len() as u64, body))
}

/// Posts every event of `sim` to `config.target` (or until `stop`), and reports.
pub async fn run(
    sim: Arc<Simulation>,
    config: PostConfig,
    stop: Stop,
) -> Result<Report, LoadError> {
    let batches = sim.events.len().div_ceil(config.batch.max(1));
    eprintln!(
        "simulate: posting {} events in {batches} batches of up to {} over {} connections -> {}",
        sim.events.len(),
        config.batch,
        config.connections,
        config.target.as_str()
    );
    client::wait_ready(&config.target, &config.client).await?;
    let url = config.target.events_url()?;
    let mut clients = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        let client = client::build_client(&config.client)?;
        client::warm_up(&client, &config.target).await;
        clients.push(client);
    }
    let cursor = Arc::new(AtomicUsize::new(0));
    let started_at = SystemTime::now();
    let t0 = Instant::now();
    let timeline = SharedTimeline::per_second(t0);
    let handles = clients
        .into_iter()
        .map(|client| {
            tokio::spawn(worker(Job {
                client,
                url: url.clone(),
                sim: Arc::clone(&sim),
                batch: config.batch.max(1),
                batches,
                cursor: Arc::clone(&cursor),
                stop: stop.clone(),
                max_retries: config.max_retries,
                timeline: timeline.clone(),
            }))
        })
        .collect();
    let results = join_workers(handles).await?;
    let elapsed = t0.elapsed();
    let results = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let (recorder, details) = merge_workers(&results)?;
    let mut report = Report::new(RunSummary {
        scenario: "simulate",
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

/// What a worker needs.
struct Job {
    client: Client,
    url: Url,
    sim: Arc<Simulation>,
    batch: usize,
    batches: usize,
    cursor: Arc<AtomicUsize>,
    stop: Stop,
    max_retries: u32,
    timeline: SharedTimeline,
}

/// Takes the next unsent batch until none is left (or `stop`), encodes and sends it. An
/// encoding failure (which cannot happen for simulated events) fails the run.
async fn worker(mut job: Job) -> Result<WorkerResult, LoadError> {
    let mut result = WorkerResult {
        recorder: Recorder::with_timeline(job.timeline.clone()),
        details: IngestDetails::default(),
        batch_latency: LatencyHistogram::new(),
    };
    while !job.stop.is_set() {
        let index = job.cursor.fetch_add(1, Ordering::Relaxed);
        if index >= job.batches {
            break;
        }
        let (events, body) = encode(&job.sim, index, job.batch)?;
        let mut request = Request::new(Method::POST, job.url.clone());
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        *request.body_mut() = Some(body.into());
        let first_sent = Instant::now();
        let ok = send_batch(
            &job.client,
            &request,
            job.max_retries,
            &mut job.stop,
            &mut result,
        )
        .await;
        result.batch_latency.record(first_sent.elapsed());
        result.details.batches += 1;
        result.details.events_sent += events;
        if !ok {
            result.details.failed_batches += 1;
            result.details.failed_events += events;
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::super::{simulate, Kind, SimConfig, DEFAULT_START_MS};
    use super::*;

    #[test]
    fn batches_carry_the_csv_ids_and_omit_empty_fields() {
        let sim = simulate(&SimConfig {
            users: 20,
            days: 10,
            seed: 5,
            start_ms: DEFAULT_START_MS,
        });
        let (n, body) = encode(&sim, 1, 7).unwrap();
        assert_eq!(n, 7);
        let json: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(json[0]["event_id"], "s5-7");
        for (value, event) in json.iter().zip(&sim.events[7..14]) {
            assert_eq!(value["ts"], event.ts_ms);
            assert_eq!(value["user_id"], format!("u{}", event.user));
            assert_eq!(value.get("item_id").is_none(), event.kind == Kind::AppOpen);
            assert_eq!(value.get("value").is_some(), event.kind == Kind::Rate);
        }
        let last = sim.events.len().div_ceil(7) - 1;
        let (n, _) = encode(&sim, last, 7).unwrap();
        assert_eq!(n as usize, sim.events.len() - 7 * last);
    }
}
