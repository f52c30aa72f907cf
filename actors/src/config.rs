//! Configuration of the actor layer, deserialised from the `[actors]`, `[weights]` and
//! `[recommend]` sections of the server configuration (see `config/default.toml`).

use serde::{Deserialize, Serialize};

use momentum_models::events::{EventKind, KindWeights};
use momentum_models::ModelError;

/// Sizes and bounds of the actor system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActorsConfig {
    /// Number of `UserShard` actors.
    pub shards: usize,
    /// Threads (actix arbiters) the shards and the catalogue run on; 0 = one per CPU.
    pub threads: usize,
    /// Messages that may wait in one actor's mailbox before requests get `503`.
    pub mailbox_capacity: usize,
    /// Bound on distinct user ids.
    pub max_users: usize,
    /// Bound on distinct item ids.
    pub max_items: usize,
    /// Recent `event_id`s remembered for deduplication (across all shards).
    pub dedupe_capacity: usize,
    /// Events kept per user for the predictive features (oldest dropped first).
    pub activity_max_events: usize,
    /// Days of activity kept per user, counted back from their newest event.
    pub activity_days: u32,
}

impl Default for ActorsConfig {
    fn default() -> Self {
        ActorsConfig {
            shards: 16,
            threads: 0,
            mailbox_capacity: 1024,
            max_users: 10_000_000,
            max_items: 1_000_000,
            dedupe_capacity: 1_000_000,
            activity_max_events: 2_000,
            activity_days: 120,
        }
    }
}

/// How recommendations are computed and cached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecommendConfig {
    /// Items the user has an event of one of these kinds on are never recommended again.
    pub exclude_kinds: Vec<EventKind>,
    /// Neighbours used by user-based scoring (the similar-users API shows `similar_k`).
    pub user_neighbours: usize,
    /// The similar-user search starts from the user's most recent this many items (latest
    /// event first, ties in item-id order), which bounds its cost however long the history;
    /// 0: every item. The item-based sums always use every item.
    pub neighbour_items: usize,
    /// Share of the user-based score in the CF mix (item-based gets the rest).
    pub user_weight: f64,
    /// Size of the similar-users and similar-items lists.
    pub similar_k: usize,
    /// Default and largest `n`.
    pub default_n: usize,
    pub max_n: usize,
    /// Time a computed list stays cached, unless the user's own events invalidate it.
    pub cache_ttl_secs: u64,
    /// Cached lists per shard (oldest evicted first).
    pub cache_capacity: usize,
    /// Seconds over which lists cached under the previous item model are recomputed after a
    /// new one is published, each user at a fixed point of the window, instead of all at
    /// once; 0: at once.
    pub model_refresh_secs: u64,
    /// Length of the popular-items list used for cold users and to fill short lists.
    pub popular_size: usize,
    /// The popular list is recomputed at most this often.
    pub popular_refresh_ms: u64,
    /// Candidates collaborative filtering proposes for content re-scoring and diversity
    /// (at least `n`).
    pub candidate_pool: usize,
    /// Weight of the normalised collaborative score in the hybrid mix.
    pub cf_weight: f64,
    /// Weight of the normalised content (TF-IDF) score in the hybrid mix.
    pub content_weight: f64,
    /// Users with fewer interactions than this get content-only lists (CF is too thin).
    pub content_min_interactions: usize,
    /// Terms kept in a user's content profile.
    pub profile_terms: usize,
    /// Stop words of the item tokeniser; empty = the built-in English list.
    pub stop_words: Vec<String>,
    /// Diversity re-rank (MMR) trade-off: 1 = relevance only, 0 = novelty only.
    pub diversity_lambda: f64,
    /// At most this many items of one `type` in a list; 0 = no cap.
    pub max_per_type: usize,
    /// At most this many items sharing a dominant (first) tag; 0 = no cap.
    pub max_per_tag: usize,
    /// How many of the best candidates the diversity re-rank orders (the rest follow by score).
    pub diversity_depth: usize,
    /// The item-based signal of collaborative filtering: `"ease"` (the learned model, see
    /// `[ease]`) or `"cosine"`.
    pub item_model: ItemModel,
}

impl Default for RecommendConfig {
    fn default() -> Self {
        RecommendConfig {
            exclude_kinds: vec![EventKind::Complete, EventKind::Rate],
            user_neighbours: 20,
            neighbour_items: 100,
            user_weight: 0.2,
            similar_k: 10,
            default_n: 10,
            max_n: 100,
            cache_ttl_secs: 3600,
            cache_capacity: 100_000,
            model_refresh_secs: 5,
            popular_size: 200,
            popular_refresh_ms: 1000,
            candidate_pool: 30,
            cf_weight: 0.6,
            content_weight: 0.2,
            content_min_interactions: 3,
            profile_terms: 64,
            stop_words: Vec::new(),
            diversity_lambda: 0.9,
            max_per_type: 5,
            max_per_tag: 0,
            diversity_depth: 30,
            item_model: ItemModel::Ease,
        }
    }
}

/// Which item-item model drives the item-based part of collaborative filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemModel {
    /// Cosine similarity over the live co-occurrence counts.
    Cosine,
    /// The learned EASE model, rebuilt in the background from the same counts; items it
    /// does not cover (beyond `ease.max_items`, or before the first build) use cosine.
    #[default]
    Ease,
}

/// The learned item model (`[ease]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EaseConfig {
    /// Ridge added to the diagonal of the Gram matrix.
    pub lambda: f64,
    /// Weights kept per item (the strongest).
    pub neighbours: usize,
    /// Most items modelled (the most popular); a dense `n × n` factorisation needs
    /// `8 n²` bytes and an `n × 128` panel at its peak (810 MB for 10,000 items).
    pub max_items: usize,
    /// Rebuild after this many applied events…
    pub rebuild_events: u64,
    /// …or this many seconds after the last build, if anything changed.
    pub rebuild_secs: u64,
    /// Threads of the factorisation; 0 = one per CPU. One leaves the other cores to requests,
    /// which a build on every core stalls for its whole length.
    pub build_threads: usize,
}

impl Default for EaseConfig {
    fn default() -> Self {
        EaseConfig {
            lambda: 300.0,
            neighbours: 200,
            max_items: 5_000,
            rebuild_events: 50_000,
            rebuild_secs: 600,
            build_threads: 1,
        }
    }
}

/// Everything the engine needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineConfig {
    pub actors: ActorsConfig,
    pub weights: KindWeights,
    pub recommend: RecommendConfig,
    pub ease: EaseConfig,
}

impl EngineConfig {
    /// Checks the bounds; the error names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let a = &self.actors;
        let r = &self.recommend;
        if a.shards == 0 || a.shards > 4096 {
            return Err(out_of_bounds("actors.shards must be in 1..=4096"));
        }
        if a.mailbox_capacity < 2 {
            return Err(out_of_bounds("actors.mailbox_capacity must be at least 2"));
        }
        if a.max_users == 0 || a.max_items == 0 || a.max_users > u32::MAX as usize {
            return Err(out_of_bounds(
                "actors.max_users and actors.max_items must be in 1..=2^32-1",
            ));
        }
        if !(0.0..=1.0).contains(&r.user_weight) {
            return Err(out_of_bounds("recommend.user_weight must be in [0, 1]"));
        }
        if r.max_n == 0 || r.default_n == 0 || r.default_n > r.max_n {
            return Err(out_of_bounds(
                "recommend.default_n must be in 1..=recommend.max_n",
            ));
        }
        if r.similar_k == 0 || r.user_neighbours == 0 {
            return Err(out_of_bounds(
                "recommend.similar_k and recommend.user_neighbours must be positive",
            ));
        }
        momentum_models::content::hybrid::validate_weights(r.cf_weight, r.content_weight)
            .map_err(|source| ConfigError::HybridWeights { source })?;
        if !(0.0..=1.0).contains(&r.diversity_lambda) {
            return Err(out_of_bounds(
                "recommend.diversity_lambda must be in [0, 1]",
            ));
        }
        if r.model_refresh_secs > 3600 {
            return Err(out_of_bounds(
                "recommend.model_refresh_secs must be in 0..=3600",
            ));
        }
        if r.profile_terms == 0 {
            return Err(out_of_bounds("recommend.profile_terms must be positive"));
        }
        let e = &self.ease;
        if !(e.lambda.is_finite() && e.lambda > 0.0) {
            return Err(out_of_bounds("ease.lambda must be finite and positive"));
        }
        if e.neighbours == 0 || e.max_items == 0 || e.max_items > 20_000 {
            return Err(out_of_bounds(
                "ease.neighbours must be positive and ease.max_items in 1..=20000",
            ));
        }
        if e.rebuild_events == 0 || e.rebuild_secs == 0 {
            return Err(out_of_bounds(
                "ease.rebuild_events and ease.rebuild_secs must be positive",
            ));
        }
        let w = &self.weights;
        let positive = |x: f32| x.is_finite() && x > 0.0;
        if !positive(w.max_weight) || !positive(w.max_rating) {
            return Err(out_of_bounds(
                "weights.max_weight and weights.max_rating must be positive",
            ));
        }
        Ok(())
    }
}

/// Why an [`EngineConfig`] is refused; the message names the key.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A value is outside its bounds; `rule` names the key and the bounds.
    #[error("{rule}")]
    OutOfBounds { rule: &'static str },
    /// The hybrid weights are refused.
    #[error("recommend.cf_weight / content_weight: {source}")]
    HybridWeights {
        #[source]
        source: ModelError,
    },
}

fn out_of_bounds(rule: &'static str) -> ConfigError {
    ConfigError::OutOfBounds { rule }
}
