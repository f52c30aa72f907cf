//! `momentum eval classify`: trains one of the app's classifiers on a CSV table and scores it on
//! another, through the same `momentum_models::predict` code the server uses. This file is only
//! CSV and JSON glue; encoding, training, the threshold protocol and the metrics live in the
//! models crate.
//!
//! Protocol: the encoder is fitted on the training table. A stratified 20 % of the training rows
//! (seed 42) is held out; a model trained on the other 80 % scores it, and the threshold that
//! maximises F1 there is kept. The reported model is then retrained on all training rows (more
//! data for the numbers that matter); the test set is scored once, at 0.5 and at that threshold.
//! `train_seconds` times that final training only. Probabilities go to `--out` as
//! `row,probability` with `row` the 0-based index of the test row.
//!
//! Models: `forest` is exactly the app's churn forest (`ForestParams::default()`); `logistic`
//! is the app's regression with learning rate 0.5 instead of 0.01, because 1000 steps of 0.01
//! under-fit one-hot tables (`ClassifierParams::logistic_for_tables` has the numbers). The JSON
//! carries the parameters used.

use std::path::{Path, PathBuf};
use std::time::Instant;

use momentum_models::predict::classifier::{choose_threshold, Classifier, ClassifierParams};
use momentum_models::predict::metrics::ClassificationReport;
use momentum_models::predict::table::{ColumnRole, Encoder};
use momentum_models::ModelError;
use serde_json::json;

use crate::cli::{ClassifierKind, ClassifyArgs};

/// Share of the training rows held out to choose the decision threshold.
const VALIDATION_FRACTION: f64 = 0.2;
/// Seed of the hold-out split (the models carry their own seeds).
const SPLIT_SEED: u64 = 42;

/// Why `eval classify` failed.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// A CSV file could not be opened or parsed (ragged rows included).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    /// A table lacks the target column.
    #[error("{} has no column `{column}`", path.display())]
    MissingColumn { path: PathBuf, column: String },
    /// A table cannot be encoded (no positive row, missing feature column, ...).
    #[error("cannot use {}: {source}", path.display())]
    Encode {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    /// Training or threshold selection failed.
    #[error("training failed: {source}")]
    Train {
        #[source]
        source: ModelError,
    },
    /// The predictions could not be scored.
    #[error("scoring failed: {source}")]
    Score {
        #[source]
        source: ModelError,
    },
    /// The predictions could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the evaluation described in the module docs and returns its metrics as a JSON object.
pub fn run(args: &ClassifyArgs) -> Result<serde_json::Value, ClassifyError> {
    let train = read_table(&args.train)?;
    let test = read_table(&args.test)?;
    for (path, table) in [(&args.train, &train), (&args.test, &test)] {
        if !table.header.iter().any(|h| h.trim() == args.target.trim()) {
            return Err(ClassifyError::MissingColumn {
                path: path.clone(),
                column: args.target.clone(),
            });
        }
    }

    let encoder = Encoder::fit(&train.header, &train.rows, &args.target, &args.positive).map_err(
        |source| ClassifyError::Encode {
            path: args.train.clone(),
            source,
        },
    )?;
    let train_set = encoder
        .transform(&train.header, &train.rows)
        .map_err(|source| ClassifyError::Encode {
            path: args.train.clone(),
            source,
        })?;
    let test_set = encoder
        .transform(&test.header, &test.rows)
        .map_err(|source| ClassifyError::Encode {
            path: args.test.clone(),
            source,
        })?;

    let params = match args.model {
        ClassifierKind::Logistic => ClassifierParams::logistic_for_tables(),
        ClassifierKind::Forest => ClassifierParams::forest(),
    };
    let threshold = choose_threshold(
        &train_set.features,
        &train_set.labels,
        &params,
        VALIDATION_FRACTION,
        SPLIT_SEED,
    )
    .map_err(|source| ClassifyError::Train { source })?;

    let started = Instant::now();
    let model = Classifier::fit(&train_set.features, &train_set.labels, &params)
        .map_err(|source| ClassifyError::Train { source })?;
    let train_seconds = started.elapsed().as_secs_f64();

    let probs = model.predict_proba_all(&test_set.features);
    write_predictions(&args.out, &probs)?;
    let report = ClassificationReport::new(&probs, &test_set.labels, Some(threshold.threshold))
        .map_err(|source| ClassifyError::Score { source })?;

    let dropped: Vec<&str> = encoder
        .columns
        .iter()
        .filter(|c| matches!(c.role, ColumnRole::Dropped { .. }))
        .map(|c| c.name.as_str())
        .collect();
    let at_best = report.at_chosen.unwrap_or(report.at_default);
    Ok(json!({
        "model": params.name(),
        "params": params,
        "n_train": train_set.labels.len(),
        "n_test": test_set.labels.len(),
        "features": encoder.n_features(),
        "dropped_columns": dropped,
        "train_seconds": train_seconds,
        "auc": report.auc,
        "log_loss": report.log_loss,
        "accuracy": report.at_default.accuracy,
        "precision": report.at_default.precision,
        "recall": report.at_default.recall,
        "f1": report.at_default.f1,
        "best_threshold": threshold.threshold,
        "validation_f1_at_best": threshold.f1,
        "f1_at_best": at_best.f1,
        "accuracy_at_best": at_best.accuracy,
        "precision_at_best": at_best.precision,
        "recall_at_best": at_best.recall,
    }))
}

/// A CSV file's header and records, as strings.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn read_table(path: &Path) -> Result<Table, ClassifyError> {
    let read_error = |source| ClassifyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = csv::Reader::from_path(path).map_err(read_error)?;
    let header = reader
        .headers()
        .map_err(read_error)?
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|record| record.map(|r| r.iter().map(str::to_string).collect()))
        .collect::<Result<Vec<Vec<String>>, _>>()
        .map_err(read_error)?;
    Ok(Table { header, rows })
}

fn write_predictions(path: &Path, probs: &[f64]) -> Result<(), ClassifyError> {
    let write_error = |source| ClassifyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut writer = csv::Writer::from_path(path).map_err(|e| write_error(e.into()))?;
    writer
        .write_record(["row", "probability"])
        .map_err(|e| write_error(e.into()))?;
    for (row, p) in probs.iter().enumerate() {
        writer
            .write_record([row.to_string(), p.to_string()])
            .map_err(|e| write_error(e.into()))?;
    }
    writer.flush().map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `customer_id` (an id: dropped), `plan` (a string: one-hot), `tenure` (a number, empty in
    /// every 20th row: imputed) and `churn`. Customers churn early in their tenure, and on the
    /// `basic` plan for longer; every 17th label is flipped as noise.
    fn training_table() -> (String, Vec<f64>) {
        let mut csv = String::from("customer_id,plan,tenure,churn\n");
        let mut tenures = Vec::new();
        for i in 0..400 {
            let plan = ["basic", "pro", "premium"][i % 3];
            let tenure = 1 + (i * 7) % 72;
            let mut churn = tenure < 20 || (plan == "basic" && tenure < 40);
            if i % 17 == 0 {
                churn = !churn;
            }
            let cell = if i % 20 == 0 {
                String::new()
            } else {
                tenures.push(tenure as f64);
                tenure.to_string()
            };
            let label = if churn { "Yes" } else { "No" };
            csv.push_str(&format!("c{i},{plan},{cell},{label}\n"));
        }
        (csv, tenures)
    }

    fn median(mut values: Vec<f64>) -> f64 {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        }
    }

    fn read_predictions(path: &Path) -> Vec<(usize, f64)> {
        let mut reader = csv::Reader::from_path(path).expect("predictions");
        let header: Vec<String> = reader
            .headers()
            .expect("header")
            .iter()
            .map(str::to_string)
            .collect();
        assert_eq!(header, ["row", "probability"]);
        reader
            .records()
            .map(|r| {
                let r = r.expect("record");
                (
                    r[0].parse().expect("row"),
                    r[1].parse().expect("probability"),
                )
            })
            .collect()
    }

    #[test]
    fn classify_encodes_imputes_and_writes_test_rows_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (train_csv, tenures) = training_table();
        let median = median(tenures);
        let train = dir.path().join("train.csv");
        std::fs::write(&train, train_csv).expect("write");
        // Rows 2 and 7 miss the tenure, row 3 has the training median: the same features.
        // Rows 4 and 5 differ only in the plan; row 6's plan was never seen in training.
        let test_csv = format!(
            "customer_id,plan,tenure,churn\n\
             t0,basic,3,Yes\n\
             t1,premium,70,No\n\
             t2,pro,,No\n\
             t3,pro,{median},No\n\
             t4,basic,30,Yes\n\
             t5,pro,30,No\n\
             t6,gold,30,No\n\
             t7,pro,NA,No\n"
        );
        let test = dir.path().join("test.csv");
        std::fs::write(&test, test_csv).expect("write");

        for model in [ClassifierKind::Logistic, ClassifierKind::Forest] {
            let out = dir.path().join(format!("{model:?}.csv"));
            let args = ClassifyArgs {
                train: train.clone(),
                test: test.clone(),
                target: "churn".into(),
                positive: "Yes".into(),
                model,
                out: out.clone(),
            };
            let report = run(&args).expect("evaluated");
            for field in [
                "model",
                "params",
                "n_train",
                "n_test",
                "features",
                "dropped_columns",
                "train_seconds",
                "auc",
                "log_loss",
                "accuracy",
                "precision",
                "recall",
                "f1",
                "best_threshold",
                "validation_f1_at_best",
                "f1_at_best",
                "accuracy_at_best",
                "precision_at_best",
                "recall_at_best",
            ] {
                assert!(
                    report.get(field).is_some(),
                    "{model:?}: no {field} in {report}"
                );
            }
            assert_eq!(
                (report["n_train"].as_u64(), report["n_test"].as_u64()),
                (Some(400), Some(8))
            );
            // Three plans one-hot plus the tenure; the id column is not a feature.
            assert_eq!(report["features"], 4, "{report}");
            assert_eq!(report["dropped_columns"], json!(["customer_id"]));
            assert!(report["auc"].as_f64().unwrap_or(0.0) > 0.8, "{report}");
            assert!(report["train_seconds"].as_f64().unwrap_or(-1.0) >= 0.0);

            let predictions = read_predictions(&out);
            let rows: Vec<usize> = predictions.iter().map(|p| p.0).collect();
            assert_eq!(
                rows,
                (0..8).collect::<Vec<_>>(),
                "{model:?}: test-row order"
            );
            let p: Vec<f64> = predictions.iter().map(|p| p.1).collect();
            assert!(p.iter().all(|p| (0.0..=1.0).contains(p)), "{p:?}");
            assert!(p[0] > 0.5 && p[1] < 0.5, "{model:?}: {p:?}");
            assert_eq!(
                p[2], p[3],
                "{model:?}: a missing tenure is the training median"
            );
            assert_eq!(p[7], p[3], "{model:?}: `NA` is missing too");
            assert!(
                p[4] > p[5],
                "{model:?}: the plan's one-hot features count: {p:?}"
            );
        }
    }

    #[test]
    fn classify_names_a_missing_target_column() {
        let dir = tempfile::tempdir().expect("tempdir");
        let train = dir.path().join("train.csv");
        std::fs::write(&train, training_table().0).expect("write");
        let test = dir.path().join("test.csv");
        std::fs::write(&test, "customer_id,plan,tenure\nt0,basic,3\n").expect("write");
        let args = ClassifyArgs {
            train,
            test: test.clone(),
            target: "churn".into(),
            positive: "Yes".into(),
            model: ClassifierKind::Logistic,
            out: dir.path().join("out.csv"),
        };
        let err = run(&args).expect_err("no target in the test table");
        assert!(
            matches!(&err, ClassifyError::MissingColumn { path, column } if *path == test && column == "churn"),
            "{err}"
        );
    }
}
