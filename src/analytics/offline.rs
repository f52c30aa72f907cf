//! `momentum train --events E.csv`: trains the app's success and churn models from a
//! simulator events CSV with exactly the pipeline of the server's trainer (same datasets,
//! user split, threshold choice and held-out evaluation; `momentum_models::training`), and prints
//! the metrics as JSON. "Now" is just after the last event, and the window is the
//! `window_days` before it. The settings are the server's (`--config FILE`, then
//! `MOMENTUM__TRAINER__*`), with `--window-days` and `--learning-rate` on top.
//!
//! Progress goes to stderr: on a terminal, one bar redrawn in place over the four stages
//! (reading the CSV, measured in bytes, then building the labelled rows and fitting each
//! model); otherwise one line per stage, so logs and CI output stay readable.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use momentum_models::training::{HistoryBuilder, ModelKind};

use super::config::{AnalyticsConfig, ConfigError};
use crate::cli::TrainArgs;
use crate::error::Error;
use crate::jobs::training::{metadata, train_models};
use crate::settings::Settings;

/// Reading the CSV, building the rows, fitting the success model, fitting the churn model.
const STAGES: usize = 4;
/// Records read between two updates of the bar while reading.
const READ_UPDATE_EVERY: u64 = 16_384;

/// Why `momentum train` stopped.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The settings cannot be loaded.
    #[error(transparent)]
    Settings {
        #[from]
        source: Error,
    },
    /// `--window-days` or `--learning-rate` is out of bounds.
    #[error(transparent)]
    Config {
        #[from]
        source: ConfigError,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("{} has no column `{column}`", path.display())]
    MissingColumn { path: PathBuf, column: String },
    /// `line` counts the header as line 1.
    #[error("{} line {line}: bad ts {value:?}", path.display())]
    BadTimestamp {
        path: PathBuf,
        line: u64,
        value: String,
    },
    #[error("{} has no events", path.display())]
    NoEvents { path: PathBuf },
    /// A model file cannot be written to `--out-dir`.
    #[error("{}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Serialise { source: serde_json::Error },
}

/// Runs the command with the settings of `config` (or the defaults); the JSON report.
pub fn run(args: &TrainArgs, config: Option<&Path>) -> Result<serde_json::Value, OfflineError> {
    let settings = Settings::load(config)?;
    let mut progress = Progress::stderr();
    run_with(args, settings.analytics(), &mut progress)
}

/// [`run`] with explicit settings and progress output.
fn run_with<W: Write>(
    args: &TrainArgs,
    mut cfg: AnalyticsConfig,
    progress: &mut Progress<W>,
) -> Result<serde_json::Value, OfflineError> {
    if let Some(days) = args.window_days {
        cfg.trainer.window_days = days;
    }
    if let Some(lr) = args.learning_rate {
        cfg.trainer.success_learning_rate = lr;
    }
    cfg.validate()?;
    let params = cfg.trainer.pipeline();
    let started = Instant::now();
    let (builder, last_ts) = read_events(&args.events, progress)?;
    let read_seconds = started.elapsed().as_secs_f64();
    let events = builder.events;
    let now_ms = last_ts.saturating_add(1);
    let from_ms = now_ms - momentum_models::clock::days_ms(params.window_days);
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
    let set = {
        // `train_models` announces each of its three stages through a `Fn`.
        let shared = RefCell::new(&mut *progress);
        train_models(
            &users,
            now_ms,
            &params,
            cfg.trainer.promotion_margin,
            &[None, None],
            cfg.models.drift_bins,
            &|what| shared.borrow_mut().stage(what),
        )
    };
    let train_seconds = train_started.elapsed().as_secs_f64();
    progress.finish(&format!("done in {:.2} s", started.elapsed().as_secs_f64()));
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
            Err(error) => models.push(json!({"name": kind.name(), "error": error.to_string()})),
        }
    }
    Ok(json!({
        "events": events,
        "users_in_window": n_users,
        "window": set.datasets_window,
        "seconds": {"read": read_seconds, "train": train_seconds},
        "models": models,
    }))
}

/// Reads the CSV into histories; returns them and the last event time.
fn read_events<W: Write>(
    path: &Path,
    progress: &mut Progress<W>,
) -> Result<(HistoryBuilder, i64), OfflineError> {
    let fail = |source| OfflineError::Read {
        path: path.to_path_buf(),
        source,
    };
    progress.stage("reading events");
    // The bar advances with the bytes read; an unknown size leaves it at the stage's start.
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(fail)?;
    let header = reader.headers().map_err(fail)?.clone();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| OfflineError::MissingColumn {
                path: path.to_path_buf(),
                column: name.to_owned(),
            })
    };
    let (user, item, kind, ts) = (col("user_id")?, col("item_id")?, col("kind")?, col("ts")?);
    let mut builder = HistoryBuilder::default();
    let mut last_ts = i64::MIN;
    let mut record = csv::StringRecord::new();
    let mut line = 0u64;
    while reader.read_record(&mut record).map_err(fail)? {
        line += 1;
        let field = |i: usize| record.get(i).unwrap_or("").trim();
        let t: i64 = field(ts).parse().map_err(|_| OfflineError::BadTimestamp {
            path: path.to_path_buf(),
            line: line + 1,
            value: field(ts).to_owned(),
        })?;
        let item_id = Some(field(item)).filter(|s| !s.is_empty());
        builder.push(field(user), item_id, field(kind), t);
        last_ts = last_ts.max(t);
        if line % READ_UPDATE_EVERY == 0 && bytes > 0 {
            progress.advance(reader.position().byte() as f64 / bytes as f64);
        }
    }
    progress.advance(1.0);
    progress.note(&format!("read {line} events of {} users", builder.users()));
    if line == 0 {
        return Err(OfflineError::NoEvents {
            path: path.to_path_buf(),
        });
    }
    Ok((builder, last_ts))
}

/// Width of the bar in characters.
const BAR_WIDTH: usize = 30;

/// The progress of a run as stages of equal weight. On a terminal (`draw`) one line is redrawn
/// in place; otherwise each stage and note is a line of its own. Output is best-effort: a
/// failed write to stderr must not fail the training.
struct Progress<W: Write> {
    out: W,
    draw: bool,
    stages: usize,
    /// The current stage, from 1 (0: none started).
    stage: usize,
    label: String,
    /// Share of the current stage done, in `[0, 1]`.
    fraction: f64,
    /// The percentage last drawn, to redraw only when it changes.
    drawn: Option<u32>,
}

impl Progress<std::io::Stderr> {
    /// On stderr, drawn as a bar only when stderr is a terminal.
    fn stderr() -> Self {
        let out = std::io::stderr();
        let draw = out.is_terminal();
        Progress::new(out, draw, STAGES)
    }
}

impl<W: Write> Progress<W> {
    fn new(out: W, draw: bool, stages: usize) -> Self {
        Progress {
            out,
            draw,
            stages,
            stage: 0,
            label: String::new(),
            fraction: 0.0,
            drawn: None,
        }
    }

    /// Starts the next stage.
    fn stage(&mut self, label: &str) {
        self.stage += 1;
        self.label = label.to_owned();
        self.fraction = 0.0;
        if self.draw {
            self.redraw(true);
        } else {
            let line = format!("[{}/{}] {label}", self.stage, self.stages.max(self.stage));
            let _ = writeln!(self.out, "{line}");
        }
    }

    /// Sets the share of the current stage that is done.
    fn advance(&mut self, fraction: f64) {
        self.fraction = fraction.clamp(0.0, 1.0);
        if self.draw {
            self.redraw(false);
        }
    }

    /// A message on a line of its own; the bar goes on below it.
    fn note(&mut self, message: &str) {
        if self.draw {
            let _ = write!(self.out, "\r\x1b[K{message}\n");
            self.redraw(true);
        } else {
            let _ = writeln!(self.out, "{message}");
        }
    }

    /// Ends the bar at 100 % with `message` in place of the stage's label.
    fn finish(&mut self, message: &str) {
        if self.draw {
            self.stage = self.stages.max(self.stage);
            self.fraction = 1.0;
            self.label = message.to_owned();
            self.redraw(true);
            let _ = writeln!(self.out);
        } else {
            let _ = writeln!(self.out, "{message}");
        }
    }

    /// Share of the whole run done: finished stages plus the current one's fraction.
    fn overall(&self) -> f64 {
        let stages = self.stages.max(self.stage).max(1);
        let done = self.stage.saturating_sub(1) as f64 + self.fraction;
        (done / stages as f64).clamp(0.0, 1.0)
    }

    fn redraw(&mut self, always: bool) {
        let overall = self.overall();
        let percent = (overall * 100.0).floor() as u32;
        if !always && self.drawn == Some(percent) {
            return;
        }
        self.drawn = Some(percent);
        let filled = ((overall * BAR_WIDTH as f64).round() as usize).min(BAR_WIDTH);
        let line = format!(
            "\r[{}/{}] [{}{}] {percent:>3}% {}\x1b[K",
            self.stage,
            self.stages.max(self.stage),
            "#".repeat(filled),
            "-".repeat(BAR_WIDTH - filled),
            self.label
        );
        let _ = self.out.write_all(line.as_bytes());
        let _ = self.out.flush();
    }
}

fn write_model(
    dir: &Path,
    kind: ModelKind,
    meta: &super::registry::VersionMetadata,
    model: &momentum_models::predict::classifier::Classifier,
) -> Result<(), OfflineError> {
    std::fs::create_dir_all(dir).map_err(|source| OfflineError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(format!("{}.json", kind.name()));
    let body = json!({"metadata": meta, "model": model});
    let text = serde_json::to_string(&body).map_err(|source| OfflineError::Serialise { source })?;
    std::fs::write(&path, text).map_err(|source| OfflineError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use momentum_models::clock::DAY_MS;

    /// A simulator-shaped `events.csv` (the columns of `momentum-load simulate`): two thirds of
    /// the users open the app and check in daily, complete a goal every 12 days and rate it;
    /// the rest check in every other day and stop after 20–50 days. Events are in time order.
    fn simulator_csv(users: usize, end_ms: i64) -> String {
        let mut events: Vec<(i64, String, String, &str, String)> = Vec::new();
        for u in 0..users {
            let keen = u % 3 != 0;
            let start = end_ms - (85 - (u % 20) as i64) * DAY_MS;
            let active_days = if keen { 90 } else { 20 + (u % 30) as i64 };
            let user = format!("u{u}");
            let mut goal = u * 10;
            let mut push = |ts: i64, item: String, kind: &'static str, value: &str| {
                events.push((ts, user.clone(), item, kind, value.to_string()));
            };
            push(start, format!("g{goal}"), "start", "");
            for d in 1..active_days {
                let ts = start + d * DAY_MS;
                if ts > end_ms {
                    break;
                }
                if keen || d % 2 == 0 {
                    push(ts - 60_000, String::new(), "app_open", "");
                    push(ts, format!("g{goal}"), "checkin", "");
                }
                if keen && d % 12 == 0 {
                    push(ts + 1, format!("g{goal}"), "complete", "");
                    push(ts + 2, format!("g{goal}"), "rate", "5");
                    goal += 1;
                    push(ts + 3, format!("g{goal}"), "start", "");
                }
            }
        }
        events.sort_by_key(|e| e.0);
        let mut csv = String::from("event_id,user_id,item_id,kind,value,ts\n");
        for (i, (ts, user, item, kind, value)) in events.iter().enumerate() {
            csv.push_str(&format!("s7-{i},{user},{item},{kind},{value},{ts}\n"));
        }
        csv
    }

    fn args(events: &Path, out_dir: Option<&Path>) -> TrainArgs {
        TrainArgs {
            events: events.to_path_buf(),
            window_days: None,
            learning_rate: None,
            out_dir: out_dir.map(Path::to_path_buf),
        }
    }

    #[test]
    fn train_learns_both_models_from_a_simulator_csv_with_the_configured_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let events = dir.path().join("events.csv");
        std::fs::write(&events, simulator_csv(300, 20_000 * DAY_MS)).expect("write csv");
        // `--config`: a smaller forest than the default five trees, and fewer iterations.
        let config = dir.path().join("momentum.toml");
        std::fs::write(
            &config,
            "[trainer]\nchurn_trees = 3\nsuccess_max_iterations = 400\n",
        )
        .expect("write config");
        let out_dir = dir.path().join("models");
        let settings = Settings::load(Some(&config)).expect("settings");
        let mut progress = Progress::new(Vec::new(), false, STAGES);
        let report = run_with(
            &args(&events, Some(&out_dir)),
            settings.analytics(),
            &mut progress,
        )
        .expect("trained");

        assert_eq!(report["users_in_window"], 300, "{report}");
        assert!(report["events"].as_u64().unwrap_or(0) > 20_000, "{report}");
        let models = report["models"].as_array().expect("models");
        let names: Vec<&str> = models.iter().filter_map(|m| m["name"].as_str()).collect();
        assert_eq!(names, ["success", "churn"]);
        for m in models {
            assert!(m.get("error").is_none(), "{m}");
            let auc = m["holdout"]["auc"].as_f64().unwrap_or(0.0);
            assert!(auc > 0.75, "{} held-out AUC {auc}", m["name"]);
            assert!(m["holdout"]["at_default"]["f1"].as_f64().is_some(), "{m}");
            assert!(m["rows"]["train"].as_u64().unwrap_or(0) >= 50, "{m}");
            assert!(m["threshold"].as_f64().is_some() && m["fit_seconds"].as_f64().is_some());
            let name = m["name"].as_str().unwrap_or_default();
            assert!(out_dir.join(format!("{name}.json")).is_file(), "{name}");
        }
        assert_eq!(models[0]["algorithm"], "logistic_regression");
        assert_eq!(models[0]["params"]["max_iterations"], 400);
        assert_eq!(models[1]["algorithm"], "random_forest");
        assert_eq!(models[1]["params"]["n_trees"], 3);

        // Not a terminal: one line per stage, no bar redrawn with carriage returns.
        let text = String::from_utf8(progress.out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "[1/4] reading events");
        assert!(lines[1].starts_with("read ") && lines[1].ends_with(" events of 300 users"));
        assert_eq!(
            &lines[2..5],
            [
                "[2/4] building labelled rows",
                "[3/4] training the success model",
                "[4/4] training the churn model"
            ]
        );
        assert!(lines[5].starts_with("done in "), "{text}");
        assert!(!text.contains('\r'));
    }

    #[test]
    fn train_honours_the_config_file_and_refuses_a_missing_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let events = dir.path().join("events.csv");
        std::fs::write(&events, simulator_csv(30, 20_000 * DAY_MS)).expect("write csv");
        // An invalid value in the file is reported: the file is read, not the defaults.
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, "[trainer]\nholdout_fraction = 1.5\n").expect("write");
        let err = run(&args(&events, None), Some(&config))
            .expect_err("invalid config")
            .to_string();
        assert!(err.contains("holdout_fraction"), "{err}");
        let err = run(&args(&events, None), Some(&dir.path().join("none.toml")))
            .expect_err("missing config")
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn a_csv_without_the_simulator_columns_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let events = dir.path().join("events.csv");
        std::fs::write(&events, "user_id,item_id,kind\nu1,g1,start\n").expect("write");
        let mut progress = Progress::new(Vec::new(), false, STAGES);
        let err = run_with(
            &args(&events, None),
            AnalyticsConfig::default(),
            &mut progress,
        )
        .expect_err("no ts")
        .to_string();
        assert!(err.contains("no column `ts`"), "{err}");
    }

    #[test]
    fn an_unreadable_csv_keeps_its_cause() {
        let dir = tempfile::tempdir().expect("tempdir");
        let events = dir.path().join("none.csv");
        let mut progress = Progress::new(Vec::new(), false, STAGES);
        let err = run_with(
            &args(&events, None),
            AnalyticsConfig::default(),
            &mut progress,
        )
        .expect_err("no file");
        assert!(matches!(err, OfflineError::Read { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("cannot read {}", events.display()));
        let line = crate::error::Report(&err).to_string();
        assert!(line.len() > err.to_string().len(), "{line}");
    }

    #[test]
    fn the_bar_is_redrawn_in_place_on_a_terminal() {
        let mut p = Progress::new(Vec::new(), true, 4);
        p.stage("reading events");
        p.advance(0.5);
        p.advance(0.5); // same percentage: not redrawn
        p.note("read 10 events of 2 users");
        p.stage("building labelled rows");
        p.finish("done in 0.01 s");
        let text = String::from_utf8(p.out).expect("utf-8");
        let dashes = |n: usize| "-".repeat(n);
        let hashes = |n: usize| "#".repeat(n);
        let expected = [
            format!("\r[1/4] [{}]   0% reading events\x1b[K", dashes(30)),
            // A quarter of the run is one stage: half of it is 12.5 %, 3.75 of 30 cells.
            format!(
                "\r[1/4] [{}{}]  12% reading events\x1b[K",
                hashes(4),
                dashes(26)
            ),
            "\r\x1b[Kread 10 events of 2 users\n".to_string(),
            format!(
                "\r[1/4] [{}{}]  12% reading events\x1b[K",
                hashes(4),
                dashes(26)
            ),
            format!(
                "\r[2/4] [{}{}]  25% building labelled rows\x1b[K",
                hashes(8),
                dashes(22)
            ),
            format!("\r[4/4] [{}] 100% done in 0.01 s\x1b[K\n", hashes(30)),
        ]
        .concat();
        assert_eq!(text, expected);
    }
}
