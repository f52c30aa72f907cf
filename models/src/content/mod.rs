//! Content-based scoring: tokeniser, incremental TF-IDF with an inverted index, hybrid mixing and diversity re-ranking.
//!
//! The flow of a request: [`text::Tokenizer::item_terms`] turns item metadata into term counts
//! that the catalogue feeds to [`tfidf::TfIdfIndex`]; [`TfIdfIndex::user_profile`] and
//! [`TfIdfIndex::score_candidates`] give content scores; [`hybrid::mix`] blends them with the
//! collaborative-filtering scores; [`diversity::rerank`] spreads the final list across types
//! and tags.

pub mod diversity;
pub mod hybrid;
pub mod profile;
pub mod text;
pub mod tfidf;

pub use profile::{ContentMatch, InterestProfile, ScoringLimits};
pub use tfidf::TfIdfIndex;
