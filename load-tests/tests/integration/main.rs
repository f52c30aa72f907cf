//! End-to-end tests of the scenarios against a scripted fake server (`common`): what is sent
//! (order, ids, batching, retries, schedule) and how it is accounted in the report; the
//! mixed-workload scenarios are in `mixed`. One test binary for the crate, to keep link time
//! down.

// Test code: a failed unwrap is a failed test (clippy's test exemption misses helper fns).
#![allow(clippy::unwrap_used)]

mod common;
mod mixed;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use momentum_load::client::{ClientOptions, Target};
use momentum_load::scenario::ingest::{self, IngestConfig};
use momentum_load::scenario::recommend::{self, RecommendConfig, UserSource};
use momentum_load::scenario::Stop;
use serde_json::{json, Value};

use common::{temp_file, FakeServer, Reply, Seen};

fn client_options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(5),
        ready_timeout: Duration::from_secs(5),
    }
}

fn never_stop() -> Stop {
    // With its sender dropped, the signal can never be raised.
    Stop::manual().1
}

/// Health probes answer 200; the rest goes to `api`.
fn with_probes(api: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> impl Fn(&Seen) -> Reply {
    move |seen: &Seen| match seen.path.as_str() {
        "/healthz" | "/readyz" => Reply::json(200, json!({"status": "ok"})),
        _ => api(seen),
    }
}

#[tokio::test]
async fn ingest_sends_time_ordered_batches_and_retries_503() {
    let csv = "user_id,item_id,rating,timestamp\n\
               1,10,4,300\n2,20,5,100\n3,30,1,200\n1,40,2,400\n2,50,3,250\n";
    let ratings = temp_file("ingest.csv", csv);
    let posts = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&posts);
    let server = FakeServer::start(with_probes(move |seen| {
        // The first two POSTs are turned away, as an overloaded server would.
        if counter.fetch_add(1, Ordering::SeqCst) < 2 {
            let mut reply = Reply::json(503, json!({"error": {"code": "overloaded", "message": ""}}));
            reply.headers.push(("retry-after", "0".to_owned()));
            return reply;
        }
        let events: Vec<Value> = serde_json::from_slice(&seen.body).unwrap();
        let rejected: Vec<Value> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| e["value"] == 1.0)
            .map(|(i, _)| json!({"index": i, "code": "low", "message": "test"}))
            .collect();
        Reply::json(
            200,
            json!({"accepted": events.len() - rejected.len(), "duplicates": 0, "rejected": rejected}),
        )
    }))
    .await;

    let report = ingest::run(
        IngestConfig {
            target: Target::parse(&server.target).unwrap(),
            ratings: ratings.clone(),
            batch: 2,
            connections: 1,
            limit: None,
            max_retries: 3,
            id_prefix: "ml".to_owned(),
            shift_to_now: false,
            client: client_options(),
        },
        never_stop(),
    )
    .await
    .unwrap();
    std::fs::remove_file(ratings).ok();

    let details = report.ingest.clone().unwrap();
    assert_eq!(details.events_sent, 5);
    assert_eq!(details.batches, 3);
    assert_eq!(details.accepted, 4);
    assert_eq!(details.rejected_by_code["low"], 1);
    assert_eq!(details.retries, 2);
    assert_eq!(details.failed_batches, 0);
    assert_eq!(report.requests, 5);
    assert_eq!(report.status_counts["503"], 2);
    assert_eq!(report.errors["503"], 2);
    assert!(report.throughput.events_per_s.unwrap() > 0.0);
    assert_eq!(report.routes["POST /v1/events"].latency_us.count, 5);

    // Every event arrived once after the retries, in time order, with its file row as id.
    let mut sent: Vec<Value> = Vec::new();
    for seen in server.api_requests().iter().skip(2) {
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            ("POST", "/v1/events")
        );
        sent.extend(serde_json::from_slice::<Vec<Value>>(&seen.body).unwrap());
    }
    let ts: Vec<i64> = sent.iter().map(|e| e["ts"].as_i64().unwrap()).collect();
    assert_eq!(ts, [100_000, 200_000, 250_000, 300_000, 400_000]);
    let ids: Vec<&str> = sent
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ml-1", "ml-2", "ml-4", "ml-0", "ml-3"]);
    assert!(sent.iter().all(|e| e["kind"] == "rate"));
}

#[tokio::test]
async fn ingest_gives_up_after_max_retries() {
    let ratings = temp_file("giveup.csv", "u,i,r,t\n1,1,4,1\n");
    let server = FakeServer::start(with_probes(|_| {
        let mut reply = Reply::json(503, json!({"error": {"code": "overloaded", "message": ""}}));
        reply.headers.push(("retry-after", "0".to_owned()));
        reply
    }))
    .await;
    let report = ingest::run(
        IngestConfig {
            target: Target::parse(&server.target).unwrap(),
            ratings: ratings.clone(),
            batch: 10,
            connections: 2,
            limit: None,
            max_retries: 2,
            id_prefix: "ml".to_owned(),
            shift_to_now: false,
            client: client_options(),
        },
        never_stop(),
    )
    .await
    .unwrap();
    std::fs::remove_file(ratings).ok();
    let details = report.ingest.unwrap();
    assert_eq!(
        (
            details.retries,
            details.failed_batches,
            details.failed_events
        ),
        (2, 1, 1)
    );
    assert_eq!(report.status_counts["503"], 3);
    assert_eq!(details.accepted, 0);
}

fn recommendations(seen: &Seen) -> Reply {
    let user = seen.path.split('/').nth(3).unwrap_or_default().to_owned();
    let items = if user == "1" {
        json!([])
    } else {
        json!([{"item_id": "9", "score": 0.9, "confidence": 0.5, "reasons": ["test"]}])
    };
    Reply::json(200, json!({"user_id": user, "items": items}))
}

fn recommend_config(target: &str, rate: Option<f64>, duration: Duration) -> RecommendConfig {
    RecommendConfig {
        target: Target::parse(target).unwrap(),
        users: UserSource::Range { first: 1, last: 5 },
        rate,
        connections: 3,
        duration,
        drain: Duration::from_secs(2),
        n: 7,
        seed: 42,
        client: client_options(),
    }
}

#[tokio::test]
async fn recommend_open_loop_sends_exactly_the_schedule() {
    let server = FakeServer::start(with_probes(recommendations)).await;
    let report = recommend::run(
        recommend_config(&server.target, Some(200.0), Duration::from_millis(500)),
        never_stop(),
    )
    .await
    .unwrap();

    let open = report.open_loop.clone().unwrap();
    assert_eq!((open.scheduled, open.sent, open.unsent), (100, 100, 0));
    assert_eq!(report.mode, "open");
    assert_eq!(report.requests, 100);
    assert_eq!(report.status_counts["200"], 100);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let route = &report.routes["GET /v1/users/{id}/recommendations"];
    assert_eq!(route.latency_us.count, 100);
    assert!(report.duration_s >= 0.49, "{}", report.duration_s);

    let requests = server.api_requests();
    assert_eq!(requests.len(), 100);
    for seen in &requests {
        let user: u64 = seen.path.split('/').nth(3).unwrap().parse().unwrap();
        assert!((1..=5).contains(&user), "{}", seen.path);
        assert!(seen.path.ends_with("/recommendations?n=7"), "{}", seen.path);
    }
    let empty = requests
        .iter()
        .filter(|s| s.path.starts_with("/v1/users/1/"))
        .count();
    assert_eq!(report.recommend.unwrap().empty_results, empty as u64);
}

#[tokio::test]
async fn recommend_closed_loop_runs_for_the_duration() {
    let server = FakeServer::start(with_probes(recommendations)).await;
    let report = recommend::run(
        recommend_config(&server.target, None, Duration::from_millis(300)),
        never_stop(),
    )
    .await
    .unwrap();
    assert_eq!(report.mode, "closed");
    assert!(report.open_loop.is_none());
    assert!(report.requests > 10, "{}", report.requests);
    assert_eq!(report.requests, server.api_requests().len() as u64);
    assert!(report.duration_s >= 0.3 && report.duration_s < 5.0);
}

#[tokio::test]
async fn runs_wait_for_readiness() {
    let probes = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&probes);
    let server = FakeServer::start(move |seen: &Seen| {
        if seen.path == "/readyz" && counter.fetch_add(1, Ordering::SeqCst) < 2 {
            return Reply::json(503, json!({"error": {"code": "starting", "message": ""}}));
        }
        if seen.path.starts_with("/v1/") {
            return recommendations(seen);
        }
        Reply::json(200, json!({}))
    })
    .await;
    let report = recommend::run(
        recommend_config(&server.target, Some(100.0), Duration::from_millis(100)),
        never_stop(),
    )
    .await
    .unwrap();
    assert_eq!(probes.load(Ordering::SeqCst), 3);
    // Readiness failures happen before the clock starts and are not in the report.
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.requests, 10);
}
