//! `mixed`, `soak` and `overload` end to end against the scripted fake server: what the mix sends,
//! open-loop schedules, and the overload accounting (accepted vs shed vs `Retry-After`, client
//! drops, checks), plus the CLI path that writes the report and its chart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use momentum_load::client::Target;
use momentum_load::report::{CheckStatus, Report};
use momentum_load::scenario::mixed::{self, MixedConfig};
use momentum_load::scenario::overload::{self, OverloadConfig};
use momentum_load::scenario::soak::{self, SoakConfig};
use momentum_load::workload::{IdSource, Mix, MixOptions};
use momentum_load::LoadError;
use serde_json::{json, Value};

use super::common::{FakeServer, Reply, Seen};
use super::{client_options, never_stop};

const RSS: &str = "# TYPE momentum_process_resident_memory_bytes gauge\n\
                   momentum_process_resident_memory_bytes 1.5e+08\n";

/// Probes and `/metrics` answer; the rest goes to `api`.
fn server_with(api: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> impl Fn(&Seen) -> Reply {
    move |seen: &Seen| match seen.path.as_str() {
        "/healthz" | "/readyz" => Reply::json(200, json!({"status": "ok"})),
        "/metrics" => Reply::text(200, RSS),
        _ => api(seen),
    }
}

/// What the real server answers on each route when everything is fine.
fn healthy(seen: &Seen) -> Reply {
    if seen.method == "POST" {
        let events: Vec<Value> = serde_json::from_slice(&seen.body).unwrap();
        return Reply::json(
            200,
            json!({"accepted": events.len(), "duplicates": 0, "rejected": []}),
        );
    }
    if seen.path.contains("/predictions/") || seen.path.ends_with("/churn") {
        // No model trained yet.
        return Reply::json(
            503,
            json!({"error": {"code": "model_not_ready", "message": ""}}),
        );
    }
    Reply::json(200, json!({"items": []}))
}

fn mix_options(seed: u64) -> MixOptions {
    MixOptions {
        ids: IdSource::Generated {
            users: 20,
            items: 30,
        },
        mix: Mix::default(),
        n: 10,
        event_batch: 10,
        id_prefix: "it".to_owned(),
        seed,
    }
}

fn mixed_config(target: &str, rate: Option<f64>, seed: u64) -> MixedConfig {
    MixedConfig {
        target: Target::parse(target).unwrap(),
        mix: mix_options(seed),
        rate,
        connections: 2,
        max_inflight: 64,
        duration: Duration::from_millis(500),
        client: client_options(),
    }
}

fn route_of(seen: &Seen) -> &'static str {
    if seen.method == "POST" {
        "POST /v1/events"
    } else if seen.path.contains("/recommendations?n=10") {
        "GET /v1/users/{id}/recommendations"
    } else if seen.path.contains("/predictions/success?goal_id=") {
        "GET /v1/users/{id}/predictions/success"
    } else if seen.path.ends_with("/churn") {
        "GET /v1/users/{id}/churn"
    } else {
        panic!("unexpected request {seen:?}")
    }
}

#[tokio::test]
async fn mixed_open_loop_sends_the_seeded_mix_on_schedule() {
    let server = FakeServer::start(server_with(healthy)).await;
    let report = mixed::run(mixed_config(&server.target, Some(400.0), 3), never_stop())
        .await
        .unwrap();
    let open = report.open_loop.clone().unwrap();
    assert_eq!((open.scheduled, open.sent, open.unsent), (200, 200, 0));
    assert_eq!(open.client_dropped, 0);
    assert_eq!(report.requests, 200);

    // Each route's count in the report is what the server saw on it.
    let seen = server.api_requests();
    assert_eq!(seen.len(), 200);
    let mut by_route: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &seen {
        *by_route.entry(route_of(s)).or_default() += 1;
    }
    for (route, count) in &by_route {
        assert_eq!(report.routes[*route].requests, *count, "{route}");
    }
    assert!(by_route["GET /v1/users/{id}/recommendations"] > 110);
    assert!(by_route["POST /v1/events"] > 30);
    // Predictions without a model: 503 counted by status, not a failed run.
    let predictions: u64 = by_route
        .iter()
        .filter(|(r, _)| r.contains("predictions") || r.ends_with("churn"))
        .map(|(_, c)| c)
        .sum();
    assert_eq!(report.errors.get("503").copied().unwrap_or(0), predictions);

    // Events: fresh ids from the prefix, ten per batch, all accepted.
    let events = report.workload.clone().unwrap();
    assert_eq!(events.events_sent, 10 * by_route["POST /v1/events"]);
    assert_eq!(events.events_accepted, events.events_sent);
    let first: Vec<Value> = seen
        .iter()
        .find(|s| s.method == "POST")
        .map(|s| serde_json::from_slice(&s.body).unwrap())
        .unwrap();
    assert!(first[0]["event_id"].as_str().unwrap().starts_with("it-"));

    // One bucket per second of the run, holding every answer.
    let timeline = report.timeline.clone().unwrap();
    assert_eq!(timeline.buckets.len(), 1);
    let answered: u64 = timeline.buckets.iter().map(|b| b.ok + b.errors).sum();
    assert_eq!(answered, 200);

    // The same seed sends the same requests (order across connections aside).
    let again = FakeServer::start(server_with(healthy)).await;
    mixed::run(mixed_config(&again.target, Some(400.0), 3), never_stop())
        .await
        .unwrap();
    let key = |s: &Seen| {
        format!(
            "{} {} {}",
            s.method,
            s.path,
            String::from_utf8_lossy(&s.body)
        )
    };
    let mut a: Vec<String> = seen.iter().map(key).collect();
    let mut b: Vec<String> = again.api_requests().iter().map(key).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[tokio::test]
async fn mixed_closed_loop_runs_back_to_back() {
    let server = FakeServer::start(server_with(healthy)).await;
    let report = mixed::run(mixed_config(&server.target, None, 1), never_stop())
        .await
        .unwrap();
    assert_eq!(report.mode, "closed");
    assert!(report.open_loop.is_none());
    assert!(report.requests > 20, "{}", report.requests);
    assert_eq!(report.requests, server.api_requests().len() as u64);
}

fn overload_config(target: &str) -> OverloadConfig {
    OverloadConfig {
        target: Target::parse(target).unwrap(),
        route: "mixed".to_owned(),
        mix: mix_options(11),
        rate: 100.0,
        factor: 2.0,
        warmup: Duration::from_millis(300),
        overload: Duration::from_millis(300),
        recovery: Duration::from_millis(500),
        recovery_grace: Duration::from_millis(100),
        max_inflight: 64,
        connections: 2,
        sample_every: Duration::from_millis(100),
        check: true,
        max_p99: Duration::from_secs(5),
        max_rss_growth_bytes: 256 << 20,
        client: client_options(),
    }
}

#[tokio::test]
async fn overload_accounts_accepted_shed_and_retry_after() {
    let count = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&count);
    let server = FakeServer::start(server_with(move |_| {
        // Every fourth request is shed, properly.
        if counter.fetch_add(1, Ordering::SeqCst) % 4 == 3 {
            let mut reply =
                Reply::json(503, json!({"error": {"code": "overloaded", "message": ""}}));
            reply.headers.push(("retry-after", "1".to_owned()));
            return reply;
        }
        Reply::json(
            200,
            json!({"accepted": 10, "duplicates": 0, "rejected": [], "items": []}),
        )
    }))
    .await;
    let report = overload::run(overload_config(&server.target), never_stop())
        .await
        .unwrap();
    let details = report.overload.clone().unwrap();
    let names: Vec<&str> = details.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["warmup", "overload", "recovery"]);
    let scheduled: Vec<u64> = details.phases.iter().map(|p| p.scheduled).collect();
    assert_eq!(scheduled, [30, 60, 50]);
    for p in &details.phases {
        assert_eq!(p.sent, p.scheduled, "{}", p.name);
        assert_eq!(p.accepted + p.shed, p.sent, "{}", p.name);
        assert_eq!(p.shed_with_retry_after, p.shed, "{}", p.name);
        assert!(p.other.is_empty() && p.client_dropped == 0, "{p:?}");
        assert_eq!(p.accepted_latency_us.count, p.accepted);
    }
    let shed: u64 = details.phases.iter().map(|p| p.shed).sum();
    assert_eq!(shed, 140 / 4);
    assert_eq!(report.status_counts["503"], shed);
    assert_eq!(details.phases[1].retry_after_share, Some(1.0));
    let overloaded: u64 = details
        .phases
        .iter()
        .map(|p| p.shed_by_code["overloaded"])
        .sum();
    assert_eq!(overloaded, shed);

    // Memory came from /metrics in every phase; it did not grow.
    assert!(details.phases.iter().all(|p| !p.rss_samples.is_empty()));
    assert_eq!(details.rss_end_bytes, Some(150_000_000));
    assert_eq!(details.rss_growth_bytes, Some(0));

    let status = |name: &str| {
        details
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .status
    };
    assert_eq!(status("retry_after"), CheckStatus::Pass);
    assert_eq!(status("overload_p99"), CheckStatus::Pass);
    assert_eq!(status("rss_growth"), CheckStatus::Pass);
    // A quarter of the recovery is still shed: not a recovery.
    assert_eq!(status("recovery"), CheckStatus::Fail);
    assert!(!details.passed && details.enforced);
    let grace = &details.phases[2].after_grace;
    assert_eq!(grace.requests, 40, "{grace:?}");
    assert!((8..=12).contains(&grace.non_2xx), "{grace:?}");
}

#[tokio::test]
async fn overload_counts_client_drops_and_503_without_retry_after() {
    let count = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&count);
    let server = FakeServer::start(server_with(move |_| {
        // A slow server that sheds every other request without saying when to come back.
        let mut reply = if counter.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
            Reply::json(503, json!({"error": {"code": "overloaded", "message": ""}}))
        } else {
            Reply::json(
                200,
                json!({"accepted": 10, "duplicates": 0, "rejected": [], "items": []}),
            )
        };
        reply.delay = Duration::from_millis(50);
        reply
    }))
    .await;
    let mut config = overload_config(&server.target);
    config.max_inflight = 4;
    config.rate = 200.0;
    let report = overload::run(config, never_stop()).await.unwrap();
    let details = report.overload.clone().unwrap();
    let dropped: u64 = details.phases.iter().map(|p| p.client_dropped).sum();
    for p in &details.phases {
        // Every slot is accounted: sent or dropped, none silently skipped.
        assert_eq!(p.sent + p.client_dropped, p.scheduled, "{p:?}");
        assert_eq!(p.unsent, 0);
    }
    // Four in flight at 50 ms each carry at most ~80 req/s of the 200-400 scheduled.
    assert!(dropped > 100, "{dropped}");
    assert_eq!(report.errors["client_dropped"], dropped);
    assert_eq!(report.open_loop.clone().unwrap().client_dropped, dropped);
    let sent: u64 = details.phases.iter().map(|p| p.sent).sum();
    assert_eq!(sent, server.api_requests().len() as u64);
    let shed: u64 = details.phases.iter().map(|p| p.shed).sum();
    assert!(shed > 0);
    assert!(details.phases.iter().all(|p| p.shed_with_retry_after == 0));
    // Latency counts from the schedule: at least the server's 50 ms.
    assert!(details.phases[0].accepted_latency_us.p50 >= 50_000);
    let retry = details
        .checks
        .iter()
        .find(|c| c.name == "retry_after")
        .unwrap();
    assert_eq!(retry.status, CheckStatus::Fail);
    assert!(
        retry.detail.starts_with(&format!("0 of {shed} 503")),
        "{}",
        retry.detail
    );
}

#[tokio::test]
async fn soak_samples_intervals_and_memory() {
    let server = FakeServer::start(server_with(healthy)).await;
    let config = SoakConfig {
        target: Target::parse(&server.target).unwrap(),
        mix: mix_options(5),
        rate: 100.0,
        duration: Duration::from_millis(900),
        sample_every: Duration::from_millis(300),
        max_inflight: 64,
        connections: 2,
        client: client_options(),
    };
    let report = soak::run(config, never_stop()).await.unwrap();
    let details = report.soak.clone().unwrap();
    assert!(
        (3..=4).contains(&details.intervals.len()),
        "{:?}",
        details.intervals
    );
    let answered: u64 = details.intervals.iter().map(|i| i.ok + i.errors).sum();
    assert_eq!(answered, 90);
    assert_eq!(report.open_loop.clone().unwrap().sent, 90);
    // Samples at 0, 0.3, 0.6, (0.9,) and after the run.
    assert!(details.rss_samples.len() >= 4, "{:?}", details.rss_samples);
    assert!(details
        .rss_samples
        .iter()
        .all(|s| s.rss_bytes == Some(150_000_000)));
    assert!(details
        .intervals
        .iter()
        .all(|i| i.rss_bytes == Some(150_000_000)));
    assert_eq!(details.drift.first_rss_bytes, Some(150_000_000));
    assert_eq!(details.drift.rss_slope_bytes_per_h, Some(0.0));
    assert!(details.drift.first_p99_us.is_some() && details.drift.p99_slope_us_per_h.is_some());
}

#[tokio::test]
async fn cli_overload_check_fails_the_run_after_writing_report_and_chart() {
    let server = FakeServer::start(server_with(|seen| {
        if seen.path.contains("recommendations") && seen.path.contains("/users/3/") {
            // Shed without Retry-After.
            return Reply::json(503, json!({"error": {"code": "overloaded", "message": ""}}));
        }
        healthy(seen)
    }))
    .await;
    let path = std::env::temp_dir().join(format!(
        "momentum-load-it-{}-overload.json",
        std::process::id()
    ));
    let svg = path.with_extension("svg");
    let argv = [
        "momentum-load",
        "overload",
        "--target",
        &server.target,
        "--user-count",
        "4",
        "--route",
        "recommend",
        "--rate",
        "40",
        "--warmup",
        "1s",
        "--overload-duration",
        "1s",
        "--recovery",
        "1.5s",
        "--recovery-grace",
        "0.5s",
        "--check",
        "--report",
        path.to_str().unwrap(),
    ];
    let mut cli = momentum_load::cli::Cli::try_parse_from(argv).unwrap();
    cli.argv = argv.iter().map(ToString::to_string).collect();
    let error = momentum_load::cli::run(cli).await.unwrap_err();
    match &error {
        LoadError::ChecksFailed { failed } => {
            assert!(failed.contains("retry_after"), "{failed}");
            assert!(failed.contains("recovery"), "{failed}");
        }
        other => panic!("unexpected {other}"),
    }
    let report: Report = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let chart = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_file(&path).ok();
    std::fs::remove_file(&svg).ok();
    // Only recommendations were asked for.
    assert_eq!(report.routes.len(), 1);
    assert!(report
        .routes
        .contains_key("GET /v1/users/{id}/recommendations"));
    assert_eq!(report.config["route"], "recommend");
    // The command line is recorded, program first, for `markdown` to show.
    let command = report.command.as_deref().unwrap();
    assert_eq!(command.len(), argv.len());
    assert_eq!(&command[..2], ["momentum-load", "overload"]);
    assert!(chart.starts_with("<svg") && chart.contains("recovery"));
}
