//! `momentum train --events E.csv`: trains the app's success and churn models from a
//! simulator events CSV with exactly the pipeline of the server's trainer (same datasets,
//! user split, threshold choice and held-out evaluation; `momentum_actors::trainer`), and prints
//! the metrics as JSON. "Now" is just after the last event, and the window is the
//! `window_days` before it. Progress goes to stderr.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde_json::json;

use momentum_actors::trainer::ModelKind;

use super::config::AnalyticsConfig;
use super::training::{metadata, train_models, HistoryBuilder};
use crate::cli::TrainArgs;

/// Runs the command; the JSON report or a message for stderr.
pub fn run(args: &TrainArgs) -> Result<serde_json::Value, String> {
    let mut cfg = AnalyticsConfig::default();
    if let Some(days) = args.window_days {
        cfg.trainer.window_days = days;
    }
    if let Some(lr) = args.learning_rate {
        cfg.trainer.success_learning_rate = lr;
    }
    cfg.validate()?;
    let params = cfg.trainer.pipeline();
    let started = Instant::now();
    let (builder, last_ts) = read_events(&args.events)?;
    let read_seconds = started.elapsed().as_secs_f64();
    let events = builder.events;
    let now_ms = last_ts.saturating_add(1);
    let from_ms = now_ms - i64::from(params.window_days) * momentum_models::features::DAY_MS;
    let users = builder.finish();
    // The window: only events after `from_ms` (the server's trainer reads just those).
    let users: Vec<_> = users
        .into_iter()
        .filter_map(|(id, mut h)| {
            h.events.retain(|a| a.ts_ms >= from_ms);
            (!h.events.is_empty()).then_some((id, h))
        })
        .collect();
    let n_users = users.len();
    let train_started = Instant::now();
    let step = std::cell::Cell::new(1);
    let set = train_models(
        &users,
        now_ms,
        &params,
        cfg.trainer.promotion_margin,
        &[None, None],
        cfg.models.drift_bins,
        &|what| {
            eprintln!("[{}/3] {what}", step.get());
            step.set(step.get() + 1);
        },
    );
    let train_seconds = train_started.elapsed().as_secs_f64();
    let mut models = Vec::new();
    for (kind, result) in &set.models {
        match result {
            Ok(t) => {
                let meta = metadata(t, &params, &set.datasets_window);
                if let Some(dir) = &args.out_dir {
                    write_model(dir, *kind, &meta, &t.candidate.classifier)?;
                }
                models.push(json!({
                    "name": kind.name(),
                    "algorithm": meta.algorithm,
                    "params": meta.params,
                    "rows": meta.rows,
                    "threshold": meta.threshold,
                    "fit_seconds": meta.fit_seconds,
                    "holdout": meta.metrics,
                    "constant_predictor_auc": 0.5,
                }));
            }
            Err(error) => models.push(json!({"name": kind.name(), "error": error})),
        }
    }
    eprintln!("done in {:.2} s", started.elapsed().as_secs_f64());
    Ok(json!({
        "events": events,
        "users_in_window": n_users,
        "window": set.datasets_window,
        "seconds": {"read": read_seconds, "train": train_seconds},
        "models": models,
    }))
}

/// Reads the CSV into histories; returns them and the last event time.
fn read_events(path: &Path) -> Result<(HistoryBuilder, i64), String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot read {}: {e}", path.display());
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| fail(&e))?;
    let header = reader.headers().map_err(|e| fail(&e))?.clone();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| format!("{} has no column `{name}`", path.display()))
    };
    let (user, item, kind, ts) = (col("user_id")?, col("item_id")?, col("kind")?, col("ts")?);
    let mut builder = HistoryBuilder::default();
    let mut last_ts = i64::MIN;
    let mut record = csv::StringRecord::new();
    let mut line = 0u64;
    while reader.read_record(&mut record).map_err(|e| fail(&e))? {
        line += 1;
        let field = |i: usize| record.get(i).unwrap_or("").trim();
        let t: i64 = field(ts).parse().map_err(|_| {
            format!(
                "{} line {}: bad ts {:?}",
                path.display(),
                line + 1,
                field(ts)
            )
        })?;
        let item_id = Some(field(item)).filter(|s| !s.is_empty());
        builder.push(field(user), item_id, field(kind), t);
        last_ts = last_ts.max(t);
        if line % 500_000 == 0 {
            eprint!("\rreading events: {line}");
            let _ = std::io::stderr().flush();
        }
    }
    eprintln!("\rread {line} events of {} users", builder.users());
    if line == 0 {
        return Err(format!("{} has no events", path.display()));
    }
    Ok((builder, last_ts))
}

fn write_model(
    dir: &Path,
    kind: ModelKind,
    meta: &super::registry::VersionMetadata,
    model: &momentum_models::predict::classifier::Classifier,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(format!("{}.json", kind.name()));
    let body = json!({"metadata": meta, "model": model});
    let text = serde_json::to_string(&body).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
}
