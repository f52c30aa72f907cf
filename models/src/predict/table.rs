//! Turns a CSV-like table of strings into a numeric design matrix and labels, so `momentum eval
//! classify` (and any caller with tabular data) can train the classifiers of this module. The
//! [`Encoder`] is fitted on the training table and then applied unchanged to other tables, which
//! keeps their columns aligned even when their categories or column order differ. It is plain
//! data and serialises with the model.
//!
//! Column rules, decided on the training rows only:
//! - The target column becomes the labels: `true` where the trimmed value equals the positive
//!   value. Training data must contain both classes.
//! - A value is *missing* when, trimmed, it is empty or one of [`MISSING_MARKERS`].
//! - A column is *numeric* when it has at least one non-missing value and every non-missing value
//!   parses as a finite `f64`. It yields one feature; missing (and, in later tables, unparsable)
//!   values are imputed with the training median.
//! - Any other column is *categorical* and is one-hot encoded over the categories seen in
//!   training, in sorted order. Missing and unseen values encode as all zeros.
//! - A categorical column is *id-like* and dropped when it has at least [`ID_MIN_ROWS`]
//!   non-missing values of which more than half are distinct (customer ids, free text): one-hot
//!   columns that are unique per row cannot generalise. Numeric columns are never dropped as ids.
//! - A column with only missing values is dropped.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Trimmed cell values that count as missing.
pub const MISSING_MARKERS: [&str; 7] = ["NA", "N/A", "NaN", "nan", "null", "NULL", "?"];

/// Minimum number of non-missing values before a mostly-distinct categorical column is treated
/// as an identifier; small tables keep all their columns.
pub const ID_MIN_ROWS: usize = 20;

/// What the encoder does with one input column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ColumnRole {
    /// The label column.
    Target,
    /// One numeric feature, missing values replaced by the training median.
    Numeric {
        /// Median of the training values.
        median: f64,
    },
    /// One feature per training category (sorted), 1 for the row's category.
    Categorical {
        /// The categories seen in training, sorted.
        categories: Vec<String>,
    },
    /// Not used, and why.
    Dropped {
        /// Why the column is not used.
        reason: DropReason,
    },
}

/// Why a column is not encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Mostly distinct non-numeric values: an identifier or free text.
    IdLike,
    /// No non-missing value in training.
    Empty,
}

/// One input column and its role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnPlan {
    /// Column name as in the training header (trimmed).
    pub name: String,
    /// What is done with it.
    pub role: ColumnRole,
}

/// Encoded rows and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedTable {
    /// One feature vector per row, [`Encoder::n_features`] long.
    pub features: Vec<Vec<f64>>,
    /// One label per row.
    pub labels: Vec<bool>,
}

/// The column plan fitted on a training table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Encoder {
    /// Name of the label column.
    pub target: String,
    /// Label value that counts as positive.
    pub positive: String,
    /// Every training column in header order, with its role.
    pub columns: Vec<ColumnPlan>,
}

impl Encoder {
    /// Learns column roles, medians and categories from a training table.
    pub fn fit<H, R, C>(
        header: &[H],
        rows: &[R],
        target: &str,
        positive: &str,
    ) -> Result<Self, ModelError>
    where
        H: AsRef<str>,
        R: AsRef<[C]>,
        C: AsRef<str>,
    {
        let names: Vec<String> = header
            .iter()
            .map(|h| h.as_ref().trim().to_string())
            .collect();
        let target = target.trim();
        let positive = positive.trim();
        let mut seen = BTreeSet::new();
        if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(invalid(format!(
                "column `{dup}` appears twice in the header"
            )));
        }
        let target_index = names
            .iter()
            .position(|n| n == target)
            .ok_or_else(|| invalid(format!("the table has no column `{target}`")))?;
        if rows.is_empty() {
            return Err(invalid("the training table has no rows".to_string()));
        }
        check_widths(names.len(), rows)?;

        let positives = rows
            .iter()
            .filter(|r| cell(r, target_index) == positive)
            .count();
        if positives == 0 {
            return Err(invalid(format!(
                "the positive value `{positive}` never occurs in column `{target}`"
            )));
        }
        if positives == rows.len() {
            return Err(invalid(format!(
                "every training row has `{target}` = `{positive}`; a classifier needs both classes"
            )));
        }

        let columns = names
            .iter()
            .enumerate()
            .map(|(j, name)| ColumnPlan {
                name: name.clone(),
                role: if j == target_index {
                    ColumnRole::Target
                } else {
                    infer_role(rows, j)
                },
            })
            .collect();
        let encoder = Self {
            target: target.to_string(),
            positive: positive.to_string(),
            columns,
        };
        if encoder.n_features() == 0 {
            return Err(invalid("no usable feature column in the table".to_string()));
        }
        Ok(encoder)
    }

    /// Number of encoded features.
    pub fn n_features(&self) -> usize {
        self.columns.iter().map(|c| role_width(&c.role)).sum()
    }

    /// Names of the encoded features: the column name for numeric ones, `column=category` for
    /// one-hot ones.
    pub fn feature_names(&self) -> Vec<String> {
        let mut names = Vec::with_capacity(self.n_features());
        for c in &self.columns {
            match &c.role {
                ColumnRole::Numeric { .. } => names.push(c.name.clone()),
                ColumnRole::Categorical { categories } => {
                    names.extend(categories.iter().map(|cat| format!("{}={cat}", c.name)));
                }
                ColumnRole::Target | ColumnRole::Dropped { .. } => {}
            }
        }
        names
    }

    /// Encodes a labelled table (columns matched by name, in any order; extra columns ignored).
    pub fn transform<H, R, C>(&self, header: &[H], rows: &[R]) -> Result<EncodedTable, ModelError>
    where
        H: AsRef<str>,
        R: AsRef<[C]>,
        C: AsRef<str>,
    {
        let target_index = find_column(header, &self.target)?;
        let features = self.transform_features(header, rows)?;
        let labels = rows
            .iter()
            .map(|r| cell(r, target_index) == self.positive)
            .collect();
        Ok(EncodedTable { features, labels })
    }

    /// Encodes the feature columns of a table that may lack the target column.
    pub fn transform_features<H, R, C>(
        &self,
        header: &[H],
        rows: &[R],
    ) -> Result<Vec<Vec<f64>>, ModelError>
    where
        H: AsRef<str>,
        R: AsRef<[C]>,
        C: AsRef<str>,
    {
        check_widths(header.len(), rows)?;
        let mut used = Vec::new();
        for c in &self.columns {
            if role_width(&c.role) > 0 {
                used.push((find_column(header, &c.name)?, &c.role));
            }
        }
        let width = self.n_features();
        let encoded = rows
            .iter()
            .map(|row| {
                let mut out = Vec::with_capacity(width);
                for &(index, role) in &used {
                    let value = cell(row, index);
                    match role {
                        ColumnRole::Numeric { median } => {
                            out.push(parse_number(value).unwrap_or(*median));
                        }
                        ColumnRole::Categorical { categories } => {
                            let start = out.len();
                            out.resize(start + categories.len(), 0.0);
                            if let Ok(k) = categories.binary_search_by(|c| c.as_str().cmp(value)) {
                                out[start + k] = 1.0;
                            }
                        }
                        ColumnRole::Target | ColumnRole::Dropped { .. } => {}
                    }
                }
                debug_assert_eq!(out.len(), width);
                out
            })
            .collect();
        Ok(encoded)
    }
}

fn role_width(role: &ColumnRole) -> usize {
    match role {
        ColumnRole::Numeric { .. } => 1,
        ColumnRole::Categorical { categories } => categories.len(),
        ColumnRole::Target | ColumnRole::Dropped { .. } => 0,
    }
}

fn infer_role<R, C>(rows: &[R], j: usize) -> ColumnRole
where
    R: AsRef<[C]>,
    C: AsRef<str>,
{
    let present: Vec<&str> = rows
        .iter()
        .map(|r| cell(r, j))
        .filter(|v| !is_missing(v))
        .collect();
    if present.is_empty() {
        return ColumnRole::Dropped {
            reason: DropReason::Empty,
        };
    }
    let numbers: Option<Vec<f64>> = present.iter().map(|v| parse_number(v)).collect();
    if let Some(mut numbers) = numbers {
        return ColumnRole::Numeric {
            median: median(&mut numbers),
        };
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for v in &present {
        *counts.entry(v).or_default() += 1;
    }
    if present.len() >= ID_MIN_ROWS && 2 * counts.len() > present.len() {
        return ColumnRole::Dropped {
            reason: DropReason::IdLike,
        };
    }
    let categories: BTreeSet<&str> = counts.into_keys().collect();
    ColumnRole::Categorical {
        categories: categories.into_iter().map(str::to_string).collect(),
    }
}

/// The trimmed cell `j` of a row whose width was checked.
fn cell<'a, R, C>(row: &'a R, j: usize) -> &'a str
where
    R: AsRef<[C]>,
    C: AsRef<str> + 'a,
{
    row.as_ref().get(j).map_or("", |c| c.as_ref().trim())
}

fn is_missing(trimmed: &str) -> bool {
    trimmed.is_empty() || MISSING_MARKERS.contains(&trimmed)
}

/// A finite number, or `None` for missing or unparsable cells.
fn parse_number(trimmed: &str) -> Option<f64> {
    if is_missing(trimmed) {
        return None;
    }
    trimmed.parse::<f64>().ok().filter(|x| x.is_finite())
}

/// Median of a non-empty slice (mean of the two middle values for an even length).
fn median(values: &mut [f64]) -> f64 {
    debug_assert!(!values.is_empty());
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn check_widths<R, C>(width: usize, rows: &[R]) -> Result<(), ModelError>
where
    R: AsRef<[C]>,
    C: AsRef<str>,
{
    match rows.iter().position(|r| r.as_ref().len() != width) {
        Some(i) => Err(invalid(format!(
            "data row {i} has {} fields, the header has {width}",
            rows[i].as_ref().len()
        ))),
        None => Ok(()),
    }
}

fn find_column<H: AsRef<str>>(header: &[H], name: &str) -> Result<usize, ModelError> {
    header
        .iter()
        .position(|h| h.as_ref().trim() == name)
        .ok_or_else(|| invalid(format!("the table has no column `{name}`")))
}

fn invalid(reason: String) -> ModelError {
    ModelError::InvalidInput { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: [&str; 5] = ["id", "plan", "tenure", "label", "note"];

    fn train_rows() -> Vec<Vec<String>> {
        let raw = [
            ["a1", "basic", "3", "Yes", ""],
            ["a2", "pro", "", "No", ""],
            ["a3", "basic", "10", "No", ""],
            ["a4", "team", "7", " Yes ", "NA"],
        ];
        raw.iter()
            .map(|r| r.iter().map(|c| c.to_string()).collect())
            .collect()
    }

    #[test]
    fn fits_roles_and_encodes_train() {
        let rows = train_rows();
        let enc = Encoder::fit(&HEADER, &rows, "label", "Yes").unwrap();
        // Small table: the distinct `id` column is still categorical (below ID_MIN_ROWS).
        assert!(matches!(
            enc.columns[0].role,
            ColumnRole::Categorical { .. }
        ));
        assert_eq!(
            enc.columns[1].role,
            ColumnRole::Categorical {
                categories: vec!["basic".into(), "pro".into(), "team".into()]
            }
        );
        assert_eq!(enc.columns[2].role, ColumnRole::Numeric { median: 7.0 });
        assert_eq!(enc.columns[3].role, ColumnRole::Target);
        assert_eq!(
            enc.columns[4].role,
            ColumnRole::Dropped {
                reason: DropReason::Empty
            }
        );
        assert_eq!(enc.n_features(), 4 + 3 + 1);
        assert_eq!(
            enc.feature_names()[4..],
            ["plan=basic", "plan=pro", "plan=team", "tenure"]
        );
        let t = enc.transform(&HEADER, &rows).unwrap();
        assert_eq!(t.labels, vec![true, false, false, true]);
        // Row 1: id a2, plan pro, tenure missing → median 7.
        assert_eq!(t.features[1], vec![0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 7.0]);
    }

    #[test]
    fn test_table_aligns_by_name_with_unseen_and_bad_values() {
        let enc = Encoder::fit(&HEADER, &train_rows(), "label", "Yes").unwrap();
        let header = ["tenure", "label", "plan", "id", "note", "extra"];
        let rows = vec![
            vec!["x", "No", "enterprise", "zz", "", "1"],
            vec!["2.5", "Yes", "team", "a1", "", "2"],
        ];
        let t = enc.transform(&header, &rows).unwrap();
        assert_eq!(t.labels, vec![false, true]);
        // Unseen id and plan → zeros; unparsable tenure → median.
        assert_eq!(
            t.features[0],
            vec![0.0; 7].into_iter().chain([7.0]).collect::<Vec<_>>()
        );
        assert_eq!(t.features[1], vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.5]);
        // Without the target only features are available.
        let no_target = ["tenure", "plan", "id"];
        let rows = vec![vec!["1", "pro", "a2"]];
        assert!(enc.transform(&no_target, &rows).is_err());
        let x = enc.transform_features(&no_target, &rows).unwrap();
        assert_eq!(x[0], vec![0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0]);
        // A used column missing from the table is an error.
        assert!(enc
            .transform_features(&["tenure", "plan"], &[["1", "pro"]])
            .is_err());
    }

    #[test]
    fn drops_id_like_columns_in_larger_tables() {
        let header = ["customer", "segment", "spend", "churn"];
        let rows: Vec<Vec<String>> = (0..30)
            .map(|i| {
                vec![
                    format!("cust-{i}"),
                    ["a", "b", "c"][i % 3].to_string(),
                    format!("{}", i * 10),
                    if i % 4 == 0 { "1" } else { "0" }.to_string(),
                ]
            })
            .collect();
        let enc = Encoder::fit(&header, &rows, "churn", "1").unwrap();
        assert_eq!(
            enc.columns[0].role,
            ColumnRole::Dropped {
                reason: DropReason::IdLike
            }
        );
        assert!(matches!(
            enc.columns[1].role,
            ColumnRole::Categorical { .. }
        ));
        assert!(matches!(enc.columns[2].role, ColumnRole::Numeric { .. }));
        assert_eq!(enc.n_features(), 4);
    }

    #[test]
    fn numeric_detection_and_median() {
        let header = ["x", "y"];
        let rows = vec![
            vec!["1e3", "a"],
            vec!["NaN", "b"],
            vec!["-2", "a"],
            vec!["inf", "b"],
        ];
        // "inf" parses but is not finite: the column is categorical.
        let enc = Encoder::fit(&header, &rows, "y", "a").unwrap();
        assert!(matches!(
            enc.columns[0].role,
            ColumnRole::Categorical { .. }
        ));
        let rows = vec![
            vec!["1e3", "a"],
            vec!["NaN", "b"],
            vec!["-2", "a"],
            vec!["4", "b"],
        ];
        let enc = Encoder::fit(&header, &rows, "y", "a").unwrap();
        assert_eq!(enc.columns[0].role, ColumnRole::Numeric { median: 4.0 });
        assert_eq!(median(&mut [3.0, 1.0, 2.0, 10.0]), 2.5);
    }

    #[test]
    fn rejects_unusable_tables() {
        let rows = train_rows();
        assert!(Encoder::fit(&HEADER, &rows, "missing", "Yes").is_err());
        assert!(Encoder::fit(&HEADER, &rows, "label", "Maybe").is_err());
        let all_yes: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r[3] = "Yes".into();
                r
            })
            .collect();
        assert!(Encoder::fit(&HEADER, &all_yes, "label", "Yes").is_err());
        let ragged = vec![vec!["1", "Yes"], vec!["2"]];
        assert!(Encoder::fit(&["x", "label"], &ragged, "label", "Yes").is_err());
        assert!(Encoder::fit(&["x", "x"], &[["1", "2"]], "x", "1").is_err());
        let empty: Vec<Vec<String>> = Vec::new();
        assert!(Encoder::fit(&HEADER, &empty, "label", "Yes").is_err());
        // Only the target column: nothing to learn from.
        assert!(Encoder::fit(&["label"], &[["Yes"], ["No"]], "label", "Yes").is_err());
    }
}
