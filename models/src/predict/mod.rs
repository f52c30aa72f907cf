//! Predictive models: logistic regression, decision tree, random forest, exponential smoothing and classification metrics.
//!
//! Layout: [`metrics`] scores probabilistic classifiers; [`standardize`] is the feature scaling
//! stored with linear models; [`logistic`], [`tree`] and [`forest`] are the classifiers and
//! [`classifier`] puts them behind one enum with the hold-out threshold protocol; [`smoothing`]
//! forecasts activity series; [`table`] encodes CSV-like string tables into features and labels.

pub mod classifier;
pub mod forest;
pub mod logistic;
pub mod metrics;
pub mod smoothing;
pub mod standardize;
pub mod table;
pub mod tree;
