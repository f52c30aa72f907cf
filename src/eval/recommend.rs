//! `momentum eval recommend`: replays training ratings as `rate` events (in timestamp order)
//! through the same engine and actors the server runs, asks every test user for `k`
//! recommendations, writes `user_id,item_id,rank` and returns ranking metrics as JSON.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Deserialize;
use serde_json::json;

use momentum_actors::config::ItemModel;
use momentum_actors::engine::NewEvent;
use momentum_actors::index::ItemMeta;
use momentum_actors::metrics::ActorMetrics;
use momentum_actors::recommend::intra_list_diversity;
use momentum_actors::{ActorError, Engine};
use momentum_models::ease::EaseError;
use momentum_models::events::EventKind;
use momentum_models::ranking;

use crate::cli::{RecommendArgs, RecommendMode};
use crate::settings::Settings;

/// Events per replayed batch (the HTTP limit's default).
const BATCH: usize = 10_000;
/// Recommendation requests in flight at once.
const CONCURRENCY: usize = 32;

/// Why `momentum eval recommend` failed.
#[derive(Debug, thiserror::Error)]
pub enum RecommendEvalError {
    /// The command line asks for something impossible.
    #[error("{0}")]
    Usage(&'static str),
    #[error("settings")]
    Settings {
        #[source]
        source: crate::Error,
    },
    /// A CSV file cannot be opened or a row parsed (`row` counts the header as row 1).
    #[error("{}{}", path.display(), row.map(|r| format!(" row {r}")).unwrap_or_default())]
    Read {
        path: PathBuf,
        row: Option<usize>,
        #[source]
        source: csv::Error,
    },
    #[error("{} row {row}: no item_id", path.display())]
    NoItemId { path: PathBuf, row: usize },
    #[error("replaying the training rows")]
    Actor {
        #[from]
        source: ActorError,
    },
    #[error("training row {row} refused: {message}")]
    Refused { row: usize, message: String },
    #[error("item model")]
    ItemModel {
        #[source]
        source: EaseError,
    },
    #[error("{}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("{}", path.display())]
    Flush {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, RecommendEvalError>;

fn read_error(path: &Path, row: Option<usize>) -> impl FnOnce(csv::Error) -> RecommendEvalError {
    let path = path.to_path_buf();
    move |source| RecommendEvalError::Read { path, row, source }
}

#[derive(Debug, Deserialize)]
struct Rating {
    user_id: String,
    item_id: String,
    rating: f32,
    timestamp: i64,
}

/// Item metadata rows: `item_id,title,genres` plus optional `description,tags,type`.
fn read_items(path: &Path) -> Result<Vec<(String, ItemMeta)>> {
    let mut reader = csv::Reader::from_path(path).map_err(read_error(path, None))?;
    let mut out = Vec::new();
    for (line, row) in reader.deserialize::<HashMap<String, String>>().enumerate() {
        let row = row.map_err(read_error(path, Some(line + 2)))?;
        let field = |name: &str| {
            row.get(name)
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let id = field("item_id");
        if id.is_empty() {
            return Err(RecommendEvalError::NoItemId {
                path: path.to_path_buf(),
                row: line + 2,
            });
        }
        let split = |v: String| -> Vec<String> {
            v.split('|')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect()
        };
        let mut tags = split(field("genres"));
        tags.extend(split(field("tags")));
        let item_type = Some(field("type")).filter(|t| !t.is_empty());
        out.push((
            id,
            ItemMeta {
                title: field("title"),
                description: field("description"),
                tags,
                item_type,
                difficulty: None,
            },
        ));
    }
    Ok(out)
}

fn read_ratings(path: &Path) -> Result<Vec<Rating>> {
    let mut reader = csv::Reader::from_path(path).map_err(read_error(path, None))?;
    reader
        .deserialize()
        .enumerate()
        .map(|(line, r)| r.map_err(read_error(path, Some(line + 2))))
        .collect()
}

/// Runs the evaluation; the result is the JSON report.
pub fn run(args: &RecommendArgs, config: Option<&Path>) -> Result<String> {
    if args.k == 0 {
        return Err(RecommendEvalError::Usage("--k must be positive"));
    }
    let mut settings =
        Settings::load(config).map_err(|source| RecommendEvalError::Settings { source })?;
    settings.recommend.popular_refresh_ms = 0;
    match args.mode {
        RecommendMode::Cf => settings.recommend.content_weight = 0.0,
        RecommendMode::Content => {
            settings.recommend.cf_weight = 0.0;
            settings.recommend.content_min_interactions = usize::MAX;
        }
        RecommendMode::Hybrid => {}
        RecommendMode::Item | RecommendMode::User | RecommendMode::Ease => {
            let r = &mut settings.recommend;
            r.user_weight = if args.mode == RecommendMode::User {
                1.0
            } else {
                0.0
            };
            r.item_model = if args.mode == RecommendMode::Item {
                ItemModel::Cosine
            } else {
                ItemModel::Ease
            };
            if !args.with_content {
                r.content_weight = 0.0;
            }
        }
    }
    if args.no_diversity {
        let r = &mut settings.recommend;
        r.diversity_lambda = 1.0;
        r.max_per_type = 0;
        r.max_per_tag = 0;
    }
    let item_model = settings.recommend.item_model;
    let items = match &args.items {
        Some(path) => read_items(path)?,
        None => Vec::new(),
    };
    if args.mode == RecommendMode::Content && items.is_empty() {
        return Err(RecommendEvalError::Usage("--mode content needs --items"));
    }
    settings.recommend.max_n = settings.recommend.max_n.max(args.k);
    let mut train = read_ratings(&args.train)?;
    let test = read_ratings(&args.test)?;
    train.sort_by_key(|r| r.timestamp);

    let started = Instant::now();
    let engine_config = settings.engine();
    let k = args.k;
    let (recs, replayed) = actix_web::rt::System::new().block_on(async move {
        let engine = Engine::start(engine_config, ActorMetrics::unregistered());
        for (id, meta) in items {
            engine.put_item(&id, meta).await?;
        }
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
            let report = engine.record_events(events).await?;
            if let Some(r) = report.rejected.first() {
                return Err(RecommendEvalError::Refused {
                    row: r.index + 2,
                    message: r.message.clone(),
                });
            }
            accepted += report.accepted;
        }
        if item_model == ItemModel::Ease {
            let model = engine
                .build_item_model(0)
                .map_err(|source| RecommendEvalError::ItemModel { source })?;
            tracing::info!(
                items = model.items(),
                seconds = model.build_seconds,
                "item model built"
            );
        }
        let lists_started = Instant::now();
        let users: Vec<String> = {
            let mut u: Vec<String> = test.iter().map(|r| r.user_id.clone()).collect();
            u.sort();
            u.dedup();
            u
        };
        let mut recs: HashMap<String, Vec<String>> = HashMap::new();
        let (mut diversity, mut lists) = (0.0, 0usize);
        for group in users.chunks(CONCURRENCY) {
            let answers =
                futures_util::future::join_all(group.iter().map(|u| engine.recommend(u, k, None)))
                    .await;
            for (user, answer) in group.iter().zip(answers) {
                // Users without training data are unknown to the engine and not evaluated.
                if let Ok(list) = answer {
                    let ids: Vec<u32> = list.items.iter().map(|s| s.item).collect();
                    diversity += intra_list_diversity(engine.index(), &ids);
                    lists += 1;
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
        let per_list = lists_started.elapsed().as_secs_f64() / lists.max(1) as f64;
        engine.stop();
        let diversity = if lists == 0 {
            0.0
        } else {
            diversity / lists as f64
        };
        Ok::<_, RecommendEvalError>(((recs, test), (accepted, diversity, per_list)))
    })?;
    let (recs, test) = recs;
    let (replayed, diversity, per_list) = replayed;

    let write_error = |source| RecommendEvalError::Write {
        path: args.out.clone(),
        source,
    };
    let mut out = csv::Writer::from_path(&args.out).map_err(write_error)?;
    out.write_record(["user_id", "item_id", "rank"])
        .map_err(write_error)?;
    let mut users: Vec<&String> = recs.keys().collect();
    users.sort();
    for user in users {
        for (rank, item) in recs[user].iter().enumerate() {
            out.write_record([user.as_str(), item.as_str(), &(rank + 1).to_string()])
                .map_err(write_error)?;
        }
    }
    out.flush().map_err(|source| RecommendEvalError::Flush {
        path: args.out.clone(),
        source,
    })?;

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
        "mode": args.mode.as_str(),
        "with_content": args.with_content,
        "diversity": !args.no_diversity,
        "k": k,
        "users": report.users,
        "precision_at_k": report.precision_at_k,
        "recall_at_k": report.recall_at_k,
        "ndcg_at_k": report.ndcg_at_k,
        "map_at_k": report.map_at_k,
        "coverage": report.coverage,
        "intra_list_diversity": diversity,
        "train_events": replayed,
        "seconds": started.elapsed().as_secs_f64(),
        "ms_per_list": per_list * 1e3,
    })
    .to_string())
}
