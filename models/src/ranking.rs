//! Ranking metrics.
