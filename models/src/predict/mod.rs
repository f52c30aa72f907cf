//! Predictive models: logistic regression, decision tree, random forest, exponential smoothing and classification metrics.
