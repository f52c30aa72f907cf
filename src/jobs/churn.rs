//! The `churn_scoring` job: score every user active in the last `active_days` with the live
//! churn model, assign each a risk tier ([`momentum_models::churn`]), fill the outbox with the
//! tier's interventions, and deliver the outbox to the webhook when one is configured
//! ([`super::webhook`]).
//!
//! Users are walked by dense id in batches of `batch_size`. For each batch the users' activity
//! logs are read from their shards with at most `concurrency` requests in flight (each is one
//! ordinary message in a bounded mailbox, so ingestion and requests interleave with them; when
//! the mailboxes are full the run waits instead of adding to them), the batch is scored on the
//! blocking pool, its scores and interventions are written in one call each, and the run
//! pauses `pause_ms` before the next batch. Scores use the same features and model as
//! `GET /v1/users/{id}/churn`.
//!
//! The day of a run is the UTC date of the clock; the outbox keeps one row per
//! `(user, day, channel)`, so re-running on the same day (a retried or manual run) adds nothing
//! and the same user gets their tier's interventions again the next day. In a cluster each node
//! scores the users of the partitions it serves, and a partition's day belongs to the first
//! node that scored it ([`claim_partitions`]).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::json;

use momentum_actors::ActorError;
use momentum_models::churn::{Tier, TierCounts, TierThresholds};
use momentum_models::clock::days_ms;
use momentum_models::events::EventKind;
use momentum_models::features::{
    recommended_actions, risk_factors, Activity, FeatureParams, Features,
};
use momentum_models::training::ModelKind;

use super::webhook::{self, DeliveryCounts};
use super::{Job, JobError, JobFuture, Trigger};
use crate::analytics::registry::LiveModel;
use crate::analytics::{churn_probability, day_string, Shared};
use crate::cluster::{Cluster, PartitionState};
use crate::store::analytics::{ChurnScoreRow, NewIntervention};

/// What a scoring run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoringReport {
    pub trigger: Trigger,
    /// The day scored (`YYYY-MM-DD`, UTC).
    pub day: String,
    pub started_ms: i64,
    pub duration_seconds: f64,
    /// The churn model version that scored.
    pub model_version: u64,
    /// Known users looked at, and those active in the window (scored).
    pub users_examined: usize,
    pub users_scored: usize,
    pub tiers: TierCounts,
    /// Interventions appended (those of the day already in the outbox are not counted).
    pub interventions_added: usize,
    /// Webhook delivery after the run, when one is configured.
    pub delivery: Option<DeliveryCounts>,
}

/// Where the scoring job reads users and their activity (the engine in the server, a fake in
/// tests).
pub trait ActivitySource: Send + Sync + 'static {
    /// Number of dense user ids ever given out.
    fn user_slots(&self) -> u32;
    /// The external id of a dense id (`None`: erased or never used).
    fn user_name(&self, id: u32) -> Option<Arc<str>>;
    /// Whether the shards' mailboxes have room for more requests.
    fn has_room(&self) -> bool;
    /// A user's activity log, time order.
    fn activity(
        &self,
        user: Arc<str>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Activity>, ActorError>>>>;
}

/// One scored user.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub user_id: Arc<str>,
    pub probability: f64,
    pub confidence: f64,
    pub tier: Tier,
    pub features: Features,
}

/// Scores one batch (CPU only): users without activity in the window are skipped.
pub fn score_batch(
    model: &LiveModel,
    logs: Vec<(Arc<str>, Vec<Activity>)>,
    now_ms: i64,
    active_days: u32,
    tiers: &TierThresholds,
    params: &FeatureParams,
) -> Vec<Scored> {
    let since = now_ms - days_ms(active_days);
    logs.into_iter()
        .filter(|(_, log)| {
            log.iter()
                .rev()
                .any(|a| a.kind != EventKind::Impression && a.ts_ms >= since && a.ts_ms <= now_ms)
        })
        .map(|(user_id, log)| {
            let features = Features::compute(&log, now_ms, None, params);
            let (probability, confidence) = churn_probability(model, &features.to_array());
            Scored {
                user_id,
                probability,
                confidence,
                tier: tiers.tier(probability),
                features,
            }
        })
        .collect()
}

/// The outbox rows of a scored user: one per channel of their tier.
pub fn interventions_of(
    s: &Scored,
    day: &str,
    model_version: u64,
    now_ms: i64,
) -> Vec<NewIntervention> {
    let risks: Vec<&str> = risk_factors(&s.features).iter().map(|a| a.code).collect();
    let action = recommended_actions(&s.features, 1)
        .first()
        .map(|a| json!({"code": a.code, "message": a.message}));
    s.tier
        .interventions()
        .iter()
        .map(|channel| NewIntervention {
            user_id: s.user_id.to_string(),
            day: day.to_owned(),
            tier: s.tier.as_str().to_owned(),
            channel: channel.as_str().to_owned(),
            payload: json!({
                "user_id": &*s.user_id,
                "tier": s.tier.as_str(),
                "channel": channel.as_str(),
                "template": format!("churn_{}_{}", s.tier.as_str(), channel.as_str()),
                "churn_probability": s.probability,
                "confidence": s.confidence,
                "risk_factors": risks,
                "suggested_action": action,
                "model_version": model_version,
            }),
            created_ms: now_ms,
        })
        .collect()
}

/// The `churn_scoring` job against the engine and the store.
pub struct ChurnScoringJob {
    pub(crate) shared: Arc<Shared>,
    pub(crate) source: Arc<dyn ActivitySource>,
    /// Cluster mode: the node scores the users of the partitions it serves whose day no other
    /// node scored ([`claim_partitions`]).
    pub(crate) cluster: Option<Arc<Cluster>>,
}

impl Job for ChurnScoringJob {
    type Report = ScoringReport;
    const NAME: &'static str = "churn_scoring";

    fn run(&self, trigger: Trigger, now_ms: i64) -> JobFuture<ScoringReport> {
        let shared = self.shared.clone();
        let source = self.source.clone();
        let cluster = self.cluster.clone();
        Box::pin(async move {
            run(
                &shared,
                source.as_ref(),
                cluster.as_deref(),
                trigger,
                now_ms,
            )
            .await
        })
    }
}

/// Waits (bounded) until the shards have room; the run never adds to full mailboxes.
async fn wait_for_room(source: &dyn ActivitySource) -> Result<(), JobError> {
    for _ in 0..600 {
        if source.has_room() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(JobError::unavailable(
        "the shards stayed overloaded for 30 s",
    ))
}

/// A user and the answer of their shard.
type Fetched = (Arc<str>, Result<Vec<Activity>, ActorError>);

/// Reads a batch of users' logs, at most `concurrency` requests in flight; users refused by
/// a full mailbox are asked again once there is room (a few rounds), erased users skipped.
async fn fetch_batch(
    source: &dyn ActivitySource,
    mut pending: Vec<Arc<str>>,
    concurrency: usize,
) -> Result<Vec<(Arc<str>, Vec<Activity>)>, JobError> {
    let mut logs = Vec::with_capacity(pending.len());
    for _round in 0..5 {
        if pending.is_empty() {
            break;
        }
        wait_for_room(source).await?;
        let fetched: Vec<Fetched> = stream::iter(std::mem::take(&mut pending))
            .map(|name| {
                let fut = source.activity(name.clone());
                async move { (name, fut.await) }
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        for (name, result) in fetched {
            match result {
                Ok(log) => logs.push((name, log)),
                // Erased meanwhile.
                Err(ActorError::UnknownUser { .. }) => {}
                Err(ActorError::Overloaded { .. }) => pending.push(name),
                Err(e) => return Err(JobError::unavailable(format!("reading activity: {e}"))),
            }
        }
    }
    if !pending.is_empty() {
        return Err(JobError::unavailable(
            "the shards stayed overloaded while reading activity",
        ));
    }
    Ok(logs)
}

/// The partitions this node serves whose churn scoring of `day` is its own: claimed in the
/// cluster's table unless another node scored them that day (`src/cluster/training.rs`). A
/// partition that changed hands during the day stays its first scorer's, so no user is scored,
/// nor sent interventions, by two nodes on one day.
async fn claim_partitions(
    shared: &Shared,
    cluster: &Cluster,
    day: &str,
    now_ms: i64,
) -> Result<HashSet<u32>, JobError> {
    let serving: Vec<u32> = (0..cluster.settings().partitions)
        .filter(|&p| cluster.partition_state(p) == PartitionState::Ready)
        .collect();
    let keep_from = day_string(now_ms - days_ms(shared.config.churn.outbox_retention_days));
    let store = cluster
        .model_versions()
        .get(cluster)
        .await
        .map_err(|e| JobError::failed("the cluster's churn days", e))?;
    let claimed = store
        .claim_churn_day(
            &serving,
            day,
            &keep_from,
            &cluster.settings().node_id,
            now_ms,
        )
        .await
        .map_err(|e| JobError::failed("claiming the day's partitions", e))?;
    if claimed.len() < serving.len() {
        tracing::info!(
            serving = serving.len(),
            claimed = claimed.len(),
            day,
            "partitions scored today by another node are left to it"
        );
    }
    Ok(claimed.into_iter().collect())
}

async fn run(
    shared: &Arc<Shared>,
    source: &dyn ActivitySource,
    cluster: Option<&Cluster>,
    trigger: Trigger,
    now_ms: i64,
) -> Result<ScoringReport, JobError> {
    let started = Instant::now();
    let cfg = &shared.config.churn;
    let model = shared
        .live
        .get(ModelKind::Churn)
        .ok_or_else(|| JobError::unavailable("the churn model is not trained yet"))?;
    let day = day_string(now_ms);
    let claimed = match cluster {
        Some(cluster) => Some(claim_partitions(shared, cluster, &day, now_ms).await?),
        None => None,
    };
    let ours = |name: &str| match (cluster, &claimed) {
        (Some(cluster), Some(claimed)) => claimed.contains(&cluster.partition_of(name)),
        _ => true,
    };
    let tiers = cfg.tiers();
    let slots = source.user_slots();
    let batch = u32::try_from(cfg.batch_size).unwrap_or(u32::MAX).max(1);
    let mut report = ScoringReport {
        trigger,
        day: day.clone(),
        started_ms: now_ms,
        duration_seconds: 0.0,
        model_version: model.version,
        users_examined: 0,
        users_scored: 0,
        tiers: TierCounts::default(),
        interventions_added: 0,
        delivery: None,
    };
    let mut first = 0u32;
    while first < slots {
        let last = first.saturating_add(batch).min(slots);
        let names: Vec<Arc<str>> = (first..last)
            .filter_map(|id| source.user_name(id))
            .filter(|name| ours(name))
            .collect();
        first = last;
        report.users_examined += names.len();
        let logs = fetch_batch(source, names, cfg.concurrency).await?;
        let batch_model = model.clone();
        let active_days = cfg.active_days;
        let params = FeatureParams::default();
        let mut scored = tokio::task::spawn_blocking(move || {
            score_batch(&batch_model, logs, now_ms, active_days, &tiers, &params)
        })
        .await
        .map_err(|e| JobError::failed("scoring task failed", e))?;
        // Deterministic order of rows (and so of outbox ids) within a batch.
        scored.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        let rows: Vec<ChurnScoreRow> = scored
            .iter()
            .map(|s| ChurnScoreRow {
                user_id: s.user_id.to_string(),
                day: day.clone(),
                probability: s.probability as f32,
                confidence: Some(s.confidence as f32),
                tier: s.tier.as_str().to_owned(),
            })
            .collect();
        let interventions: Vec<NewIntervention> = scored
            .iter()
            .flat_map(|s| interventions_of(s, &day, model.version, now_ms))
            .collect();
        shared
            .store
            .put_churn_scores(&rows)
            .await
            .map_err(|e| JobError::failed("writing churn scores", e))?;
        let added = shared
            .store
            .append_interventions(&interventions)
            .await
            .map_err(|e| JobError::failed("writing interventions", e))?;
        shared.metrics.interventions.inc_by(added as u64);
        report.interventions_added += added;
        report.users_scored += scored.len();
        for s in &scored {
            report.tiers.add(s.tier);
        }
        if cfg.pause_ms > 0 && first < slots {
            tokio::time::sleep(Duration::from_millis(cfg.pause_ms)).await;
        }
    }
    let m = &shared.metrics;
    m.churn_tier_users
        .with_label_values(&["high"])
        .set(report.tiers.high as i64);
    m.churn_tier_users
        .with_label_values(&["medium"])
        .set(report.tiers.medium as i64);
    m.churn_tier_users
        .with_label_values(&["low"])
        .set(report.tiers.low as i64);
    let keep_from = day_string(now_ms - days_ms(cfg.outbox_retention_days));
    match shared.store.prune_interventions(&keep_from).await {
        Ok(n) if n > 0 => tracing::info!(removed = n, "old interventions pruned"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning the outbox failed"),
    }
    if !cfg.webhook_url.is_empty() {
        // Validated with the configuration; a delivery failure does not fail the run.
        match webhook::Target::parse(&cfg.webhook_url) {
            Ok(target) => match webhook::deliver(shared, &target).await {
                Ok(counts) => report.delivery = Some(counts),
                Err(error) => tracing::warn!(error = %error.chain(), "webhook delivery failed"),
            },
            Err(error) => tracing::warn!(%error, "churn.webhook_url is unusable"),
        }
    }
    report.duration_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
