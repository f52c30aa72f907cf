//! `momentum eval recommend`: replays training ratings as `rate` events (in timestamp order)
//! through the same engine and actors the server runs, asks every test user for `k`
//! recommendations, writes `user_id,item_id,rank` and returns ranking metrics as JSON.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use serde::Deserialize;
use serde_json::json;

use momentum_actors::engine::NewEvent;
use momentum_actors::metrics::ActorMetrics;
use momentum_actors::Engine;
use momentum_models::events::EventKind;
use momentum_models::ranking;

use crate::cli::RecommendArgs;
use crate::settings::Settings;

/// Events per replayed batch (the HTTP limit's default).
const BATCH: usize = 10_000;
/// Recommendation requests in flight at once.
const CONCURRENCY: usize = 32;

#[derive(Debug, Deserialize)]
struct Rating {
    user_id: String,
    item_id: String,
    rating: f32,
    timestamp: i64,
}

fn read_ratings(path: &Path) -> Result<Vec<Rating>, String> {
    let mut reader =
        csv::Reader::from_path(path).map_err(|e| format!("{}: {e}", path.display()))?;
    reader
        .deserialize()
        .enumerate()
        .map(|(line, r)| r.map_err(|e| format!("{} row {}: {e}", path.display(), line + 2)))
        .collect()
}

/// Runs the evaluation; the result is the JSON report.
pub fn run(args: &RecommendArgs, config: Option<&Path>) -> Result<String, String> {
    if args.k == 0 {
        return Err("--k must be positive".into());
    }
    let mut settings = Settings::load(config).map_err(|e| e.to_string())?;
    settings.recommend.popular_refresh_ms = 0;
    settings.recommend.max_n = settings.recommend.max_n.max(args.k);
    let mut train = read_ratings(&args.train)?;
    let test = read_ratings(&args.test)?;
    train.sort_by_key(|r| r.timestamp);

    let started = Instant::now();
    let engine_config = settings.engine();
    let k = args.k;
    let (recs, replayed) = actix_web::rt::System::new().block_on(async move {
        let engine = Engine::start(engine_config, ActorMetrics::unregistered());
        let mut accepted = 0usize;
        for (b, chunk) in train.chunks(BATCH).enumerate() {
            let events = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| NewEvent {
                    index: b * BATCH + i,
                    event_id: None,
                    user_id: r.user_id.clone(),
                    item_id: Some(r.item_id.clone()),
                    kind: EventKind::Rate,
                    value: Some(r.rating),
                    ts_ms: r.timestamp.saturating_mul(1000),
                })
                .collect();
            let report = engine
                .record_events(events)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(r) = report.rejected.first() {
                return Err(format!(
                    "training row {} refused: {}",
                    r.index + 2,
                    r.message
                ));
            }
            accepted += report.accepted;
        }
        let users: Vec<String> = {
            let mut u: Vec<String> = test.iter().map(|r| r.user_id.clone()).collect();
            u.sort();
            u.dedup();
            u
        };
        let mut recs: HashMap<String, Vec<String>> = HashMap::new();
        for group in users.chunks(CONCURRENCY) {
            let answers =
                futures_util::future::join_all(group.iter().map(|u| engine.recommend(u, k))).await;
            for (user, answer) in group.iter().zip(answers) {
                // Users without training data are unknown to the engine and not evaluated.
                if let Ok(list) = answer {
                    let names = list
                        .items
                        .iter()
                        .filter_map(|s| engine.item_name(s.item))
                        .map(|n| n.to_string())
                        .collect();
                    recs.insert(user.clone(), names);
                }
            }
        }
        engine.stop();
        Ok::<_, String>(((recs, test), accepted))
    })?;
    let (recs, test) = recs;

    let mut out =
        csv::Writer::from_path(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    out.write_record(["user_id", "item_id", "rank"])
        .map_err(|e| e.to_string())?;
    let mut users: Vec<&String> = recs.keys().collect();
    users.sort();
    for user in users {
        for (rank, item) in recs[user].iter().enumerate() {
            out.write_record([user.as_str(), item.as_str(), &(rank + 1).to_string()])
                .map_err(|e| e.to_string())?;
        }
    }
    out.flush().map_err(|e| e.to_string())?;

    let train_rows = read_ratings(&args.train)?;
    let trained: HashSet<String> = train_rows.iter().map(|r| r.user_id.clone()).collect();
    let catalogue: HashSet<&str> = train_rows
        .iter()
        .chain(test.iter())
        .map(|r| r.item_id.as_str())
        .collect();
    let mut relevant: HashMap<String, HashSet<String>> = HashMap::new();
    for r in &test {
        relevant
            .entry(r.user_id.clone())
            .or_default()
            .insert(r.item_id.clone());
    }
    let report = ranking::evaluate(&recs, &relevant, &trained, catalogue.len(), k);
    Ok(json!({
        "mode": "cf",
        "k": k,
        "users": report.users,
        "precision_at_k": report.precision_at_k,
        "recall_at_k": report.recall_at_k,
        "ndcg_at_k": report.ndcg_at_k,
        "map_at_k": report.map_at_k,
        "coverage": report.coverage,
        "train_events": replayed,
        "seconds": started.elapsed().as_secs_f64(),
    })
    .to_string())
}
