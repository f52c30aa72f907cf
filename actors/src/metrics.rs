//! Prometheus metrics owned by the actor layer. One instance per engine, registered in the
//! server's registry, so tests that start several servers in one process do not share counts.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Metrics of the actors and the hot state.
#[derive(Debug, Clone)]
pub struct ActorMetrics {
    /// Messages queued per actor kind.
    pub mailbox_depth: IntGaugeVec,
    /// Configured mailbox capacity per actor kind (summed over actors of the kind).
    pub mailbox_capacity: IntGaugeVec,
    /// Messages refused because a mailbox was full, per actor kind.
    pub mailbox_rejected: IntCounterVec,
    /// Recommendation cache lookups by result (`hit`, `miss`).
    pub rec_cache: IntCounterVec,
    pub users: IntGauge,
    pub items: IntGauge,
    /// Non-zero (user, item) cells.
    pub interactions: IntGauge,
    /// Item pairs with a co-occurrence entry (each kept in both items' rows).
    pub cooc_pairs: IntGauge,
    /// Heap bytes of the co-occurrence rows.
    pub cooc_bytes: IntGauge,
    /// Intra-list diversity (mean pairwise 1 − TF-IDF cosine) of computed lists: one in eight
    /// of each shard's, the first included.
    pub diversity: Histogram,
    /// Restarts of supervised actors, per actor kind.
    pub restarts: IntCounterVec,
}

impl ActorMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = ActorMetrics {
            mailbox_depth: IntGaugeVec::new(
                Opts::new(
                    "momentum_mailbox_depth",
                    "Messages waiting in actor mailboxes",
                ),
                &["actor"],
            )?,
            mailbox_capacity: IntGaugeVec::new(
                Opts::new(
                    "momentum_mailbox_capacity",
                    "Mailbox capacity per actor kind, summed over the actors of the kind",
                ),
                &["actor"],
            )?,
            mailbox_rejected: IntCounterVec::new(
                Opts::new(
                    "momentum_mailbox_rejected_total",
                    "Messages refused because the actor mailbox was full",
                ),
                &["actor"],
            )?,
            rec_cache: IntCounterVec::new(
                Opts::new(
                    "momentum_recommendation_cache_requests_total",
                    "Recommendation cache lookups by result",
                ),
                &["result"],
            )?,
            users: IntGauge::new("momentum_users", "Known users")?,
            items: IntGauge::new("momentum_items", "Known items")?,
            interactions: IntGauge::new(
                "momentum_interactions",
                "Non-zero user-item cells of the interaction matrix",
            )?,
            cooc_pairs: IntGauge::new(
                "momentum_cooccurrence_pairs",
                "Item pairs that share at least one user",
            )?,
            cooc_bytes: IntGauge::new(
                "momentum_cooccurrence_bytes",
                "Heap bytes of the co-occurrence rows (both directions of every pair)",
            )?,
            diversity: Histogram::with_opts(
                HistogramOpts::new(
                    "momentum_recommendation_diversity",
                    "Intra-list diversity of computed recommendation lists, one in eight sampled (0 = all alike)",
                )
                .buckets(vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]),
            )?,
            restarts: IntCounterVec::new(
                Opts::new(
                    "momentum_actor_restarts_total",
                    "Restarts of supervised actors (their state is kept across a restart)",
                ),
                &["actor"],
            )?,
        };
        registry.register(Box::new(m.restarts.clone()))?;
        registry.register(Box::new(m.diversity.clone()))?;
        registry.register(Box::new(m.mailbox_depth.clone()))?;
        registry.register(Box::new(m.mailbox_capacity.clone()))?;
        registry.register(Box::new(m.mailbox_rejected.clone()))?;
        registry.register(Box::new(m.rec_cache.clone()))?;
        registry.register(Box::new(m.users.clone()))?;
        registry.register(Box::new(m.cooc_pairs.clone()))?;
        registry.register(Box::new(m.cooc_bytes.clone()))?;
        registry.register(Box::new(m.items.clone()))?;
        registry.register(Box::new(m.interactions.clone()))?;
        Ok(m)
    }

    /// Metrics registered nowhere, for unit tests and offline tools.
    pub fn unregistered() -> Self {
        // A private registry: the names are valid, so this cannot fail.
        Self::new(&Registry::new()).unwrap_or_else(|e| panic!("metric definitions: {e}"))
    }
}
