//! A/B experiment assignment and significance tests.
