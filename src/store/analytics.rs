//! What the trainer and the churn scheduler keep in the store: model versions (`models`),
//! daily churn scores (`churn_scores`) and the interventions outbox (`interventions`), plus the
//! windowed read of the event log the trainer learns from. Same contracts on both back-ends,
//! checked by the tests at the bottom of this file on each of them.
//!
//! - **Model versions** are numbered per model name from 1 by [`Store::insert_model_version`]
//!   (the next number is taken in the inserting transaction) and never change afterwards. The
//!   *live* version of a model is the highest version whose metadata says `"promoted": true`.
//! - **Interventions** are unique per `(user_id, day, channel)`: appending one that exists is a
//!   no-op, which makes a second scoring run on the same day harmless. Each gets an `id` that
//!   increases in commit order as long as one writer appends at a time (the churn scheduler is
//!   the only writer), so `id` is the cursor of [`Store::interventions_after`].
//! - **Churn scores** are one row per `(user_id, day)`; a later score of the same day replaces
//!   the earlier one.
//!
//! Like the core store, each call is forwarded to the back-end by `dispatch!`: the embedded
//! rows live in `embedded/analytics.rs`, the PostgreSQL ones in `postgres/analytics.rs`.
//! Erasure of a user ([`Store::erase_user`]) already covers all three user tables.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, StoredEvent};

type Result<T> = std::result::Result<T, StoreError>;

/// A model version to store.
#[derive(Debug, Clone, Copy)]
pub struct NewModelVersion<'a> {
    pub name: &'a str,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// The version that was live when this one was trained.
    pub parent_version: Option<u64>,
    /// Metrics, parameters, feature schema, training window, promotion decision.
    pub metadata: &'a serde_json::Value,
    /// The serialised model.
    pub bytes: &'a [u8],
}

/// A stored model version without its bytes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelVersionRow {
    pub name: String,
    pub version: u64,
    pub created_ms: i64,
    pub parent_version: Option<u64>,
    pub metadata: serde_json::Value,
}

impl ModelVersionRow {
    /// Whether this version was promoted to live when it was trained.
    pub fn promoted(&self) -> bool {
        self.metadata
            .get("promoted")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }
}

/// An intervention to append to the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct NewIntervention {
    pub user_id: String,
    /// `YYYY-MM-DD` (UTC) of the scoring run.
    pub day: String,
    pub tier: String,
    pub channel: String,
    pub payload: serde_json::Value,
    pub created_ms: i64,
}

/// An intervention in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredIntervention {
    /// Increasing in commit order: the cursor of [`Store::interventions_after`].
    pub id: u64,
    pub user_id: String,
    pub day: String,
    pub tier: String,
    pub channel: String,
    pub payload: serde_json::Value,
    /// `pending`, `delivered`, `retrying` or `failed` (webhook delivery).
    pub delivery_state: String,
    pub attempts: u32,
    pub created_ms: i64,
}

/// One user's churn score of one day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChurnScoreRow {
    pub user_id: String,
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub probability: f32,
    pub confidence: Option<f32>,
    pub tier: String,
}

/// Users per churn tier on one scoring day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChurnTierDay {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// Tier name → number of users scored in it that day.
    pub tiers: BTreeMap<String, u64>,
}

impl Store {
    /// Stores a new version of `new.name`, numbered one above the highest stored version
    /// (1 for the first); returns that number.
    pub async fn insert_model_version(&self, new: &NewModelVersion<'_>) -> Result<u64> {
        dispatch!(self.insert_model_version(new))
    }

    /// Stores `new` as version `version` of its model unless that version exists (a copy of
    /// a cluster's version, numbered by the cluster); whether it was stored.
    pub async fn put_model_version(&self, version: u64, new: &NewModelVersion<'_>) -> Result<bool> {
        dispatch!(self.put_model_version(version, new))
    }

    /// Every stored version (without bytes), of one model or of all, ordered by name and
    /// version.
    pub async fn model_versions(&self, name: Option<&str>) -> Result<Vec<ModelVersionRow>> {
        dispatch!(self.model_versions(name))
    }

    /// One version with its bytes.
    pub async fn model_version(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<(ModelVersionRow, Vec<u8>)>> {
        dispatch!(self.model_version(name, version))
    }

    /// The live version of a model (the highest promoted one) with its bytes.
    pub async fn live_model_version(
        &self,
        name: &str,
    ) -> Result<Option<(ModelVersionRow, Vec<u8>)>> {
        dispatch!(self.live_model_version(name))
    }

    /// Pages through the event log for the trainer: up to `limit` events with
    /// `seq > after_seq` and `ts_ms >= from_ts_ms`, in sequence order, and the last sequence
    /// number examined (pass it as the next `after_seq`; equal to `after_seq` when the log is
    /// exhausted).
    pub async fn events_in_window(
        &self,
        from_ts_ms: i64,
        after_seq: u64,
        limit: usize,
    ) -> Result<(Vec<StoredEvent>, u64)> {
        dispatch!(self.events_in_window(from_ts_ms, after_seq, limit))
    }

    /// Appends interventions, skipping those whose `(user_id, day, channel)` exists; returns
    /// how many were new.
    pub async fn append_interventions(&self, batch: &[NewIntervention]) -> Result<usize> {
        if batch.is_empty() {
            return Ok(0);
        }
        dispatch!(self.append_interventions(batch))
    }

    /// Up to `limit` interventions with `id > after_id`, in id order.
    pub async fn interventions_after(
        &self,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<StoredIntervention>> {
        dispatch!(self.outbox_page(after_id, limit, false))
    }

    /// Like [`Store::interventions_after`], but only those still to deliver (`pending` or
    /// `retrying`).
    pub async fn undelivered_interventions(
        &self,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<StoredIntervention>> {
        dispatch!(self.outbox_page(after_id, limit, true))
    }

    /// Records a delivery attempt of one intervention (webhook); unknown keys are ignored.
    pub async fn set_intervention_delivery(
        &self,
        user_id: &str,
        day: &str,
        channel: &str,
        state: &str,
        attempts: u32,
    ) -> Result<()> {
        dispatch!(self.set_intervention_delivery(user_id, day, channel, state, attempts))
    }

    /// Deletes the interventions of days before `before_day` (`YYYY-MM-DD`); returns how many.
    pub async fn prune_interventions(&self, before_day: &str) -> Result<u64> {
        dispatch!(self.prune_interventions(before_day))
    }

    /// Writes churn scores, replacing a user's score of the same day.
    pub async fn put_churn_scores(&self, rows: &[ChurnScoreRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        dispatch!(self.put_churn_scores(rows))
    }

    /// A user's churn score of one day.
    pub async fn churn_score(&self, user_id: &str, day: &str) -> Result<Option<ChurnScoreRow>> {
        dispatch!(self.churn_score(user_id, day))
    }

    /// Users per tier for each of the newest `days` scoring days that have scores, oldest
    /// first. Tiers with no user on a day are absent from that day's counts.
    pub async fn churn_tier_history(&self, days: usize) -> Result<Vec<ChurnTierDay>> {
        if days == 0 {
            return Ok(Vec::new());
        }
        let by_day = dispatch!(self.churn_tier_counts(days))?;
        debug_assert!(by_day.len() <= days);
        Ok(by_day
            .into_iter()
            .map(|(day, tiers)| ChurnTierDay { day, tiers })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use serde_json::json;

    use super::super::tests as store_tests;
    use super::super::EventRecord;
    use super::*;

    /// The shared suite's back-ends ([`super::super::tests`]), handing each suite an open store.
    async fn on_embedded<F, Fut>(suite: F)
    where
        F: FnOnce(Store) -> Fut,
        Fut: Future<Output = ()>,
    {
        store_tests::on_embedded(|cfg| async move {
            suite(Store::open(&cfg).await.unwrap()).await;
        })
        .await;
    }

    async fn on_postgres<F, Fut>(suite: F)
    where
        F: FnOnce(Store) -> Fut,
        Fut: Future<Output = ()>,
    {
        store_tests::on_postgres(|cfg| async move {
            suite(Store::open(&cfg).await.unwrap()).await;
        })
        .await;
    }

    store_tests::shared_suite!(
        model_versions_are_numbered_and_live_is_the_last_promoted,
        copied_versions_keep_their_number_and_are_stored_once,
        interventions_are_unique_per_user_day_channel_and_paged_by_id,
        churn_scores_replace_within_a_day,
        churn_tier_history_counts_users_per_tier_and_day,
        event_window_skips_old_events_and_pages,
        erasure_covers_the_analytics_rows,
    );

    async fn copied_versions_keep_their_number_and_are_stored_once(store: Store) {
        let meta = |promoted: bool| json!({"promoted": promoted});
        let (yes, no) = (meta(true), meta(false));
        let new = |metadata, bytes| NewModelVersion {
            name: "churn",
            created_ms: 9,
            parent_version: None,
            metadata,
            bytes,
        };
        assert!(store
            .put_model_version(3, &new(&yes, b"three"))
            .await
            .unwrap());
        assert!(!store
            .put_model_version(3, &new(&no, b"other"))
            .await
            .unwrap());
        assert!(store
            .put_model_version(4, &new(&no, b"four"))
            .await
            .unwrap());
        let (row, bytes) = store.model_version("churn", 3).await.unwrap().unwrap();
        assert_eq!(
            (row.promoted(), bytes.as_slice()),
            (true, b"three".as_slice())
        );
        let (live, _) = store.live_model_version("churn").await.unwrap().unwrap();
        assert_eq!(live.version, 3);
        let versions: Vec<u64> = store
            .model_versions(Some("churn"))
            .await
            .unwrap()
            .iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(versions, [3, 4]);
        // A local insert goes on from the highest number.
        let v = store
            .insert_model_version(&new(&no, b"five"))
            .await
            .unwrap();
        assert_eq!(v, 5);
    }

    async fn model_versions_are_numbered_and_live_is_the_last_promoted(store: Store) {
        assert!(store.live_model_version("churn").await.unwrap().is_none());
        let meta = |promoted: bool| json!({"promoted": promoted, "metrics": {"auc": 0.8}});
        for (i, promoted) in [true, false].into_iter().enumerate() {
            let m = meta(promoted);
            let v = store
                .insert_model_version(&NewModelVersion {
                    name: "churn",
                    created_ms: 1000 + i as i64,
                    parent_version: (i > 0).then_some(1),
                    metadata: &m,
                    bytes: b"model-bytes",
                })
                .await
                .unwrap();
            assert_eq!(v, i as u64 + 1);
        }
        let m = meta(true);
        let v = store
            .insert_model_version(&NewModelVersion {
                name: "success",
                created_ms: 5,
                parent_version: None,
                metadata: &m,
                bytes: b"s",
            })
            .await
            .unwrap();
        assert_eq!(v, 1, "versions are numbered per model");
        let (live, bytes) = store.live_model_version("churn").await.unwrap().unwrap();
        assert_eq!(
            (live.version, bytes.as_slice()),
            (1, b"model-bytes".as_slice())
        );
        let all = store.model_versions(None).await.unwrap();
        let names: Vec<(&str, u64)> = all.iter().map(|r| (r.name.as_str(), r.version)).collect();
        assert_eq!(names, [("churn", 1), ("churn", 2), ("success", 1)]);
        let churn = store.model_versions(Some("churn")).await.unwrap();
        assert_eq!(churn.len(), 2);
        assert_eq!(churn[1].parent_version, Some(1));
        assert!(!churn[1].promoted());
        assert_eq!(churn[1].created_ms, 1001);
        let (row, _) = store.model_version("churn", 2).await.unwrap().unwrap();
        assert_eq!(row.metadata["metrics"]["auc"], 0.8);
        assert!(store.model_version("churn", 3).await.unwrap().is_none());
        assert!(store.model_version("nope", 1).await.unwrap().is_none());
    }

    fn intervention(user: &str, day: &str, channel: &str) -> NewIntervention {
        NewIntervention {
            user_id: user.into(),
            day: day.into(),
            tier: "high".into(),
            channel: channel.into(),
            payload: json!({"probability": 0.9}),
            created_ms: 7,
        }
    }

    async fn interventions_are_unique_per_user_day_channel_and_paged_by_id(store: Store) {
        let first = [
            intervention("u1", "2026-01-01", "push"),
            intervention("u1", "2026-01-01", "email"),
            intervention("u2", "2026-01-01", "push"),
        ];
        assert_eq!(store.append_interventions(&first).await.unwrap(), 3);
        // The same day again: nothing new; a new day: new rows.
        assert_eq!(store.append_interventions(&first).await.unwrap(), 0);
        let second = [
            intervention("u1", "2026-01-02", "push"),
            intervention("u2", "2026-01-01", "push"),
        ];
        assert_eq!(store.append_interventions(&second).await.unwrap(), 1);
        let all = store.interventions_after(0, 100).await.unwrap();
        assert_eq!(all.len(), 4);
        assert!(all.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(all[3].day, "2026-01-02");
        assert_eq!(all[0].delivery_state, "pending");
        assert_eq!(all[0].payload["probability"], 0.9);
        let page = store.interventions_after(all[1].id, 1).await.unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].id, all[2].id);
        store
            .set_intervention_delivery("u1", "2026-01-01", "push", "delivered", 2)
            .await
            .unwrap();
        let all = store.interventions_after(0, 100).await.unwrap();
        let pushed = all
            .iter()
            .find(|i| i.user_id == "u1" && i.day == "2026-01-01" && i.channel == "push")
            .unwrap();
        assert_eq!(
            (pushed.delivery_state.as_str(), pushed.attempts),
            ("delivered", 2)
        );
        let undelivered = store.undelivered_interventions(0, 100).await.unwrap();
        assert_eq!(undelivered.len(), 3);
        assert!(undelivered.iter().all(|i| i.delivery_state == "pending"));
        let next = store
            .undelivered_interventions(undelivered[0].id, 1)
            .await
            .unwrap();
        assert_eq!(next[0].id, undelivered[1].id);
        assert_eq!(store.prune_interventions("2026-01-02").await.unwrap(), 3);
        let left = store.interventions_after(0, 100).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].day, "2026-01-02");
        // Ids are not reused after pruning.
        store
            .append_interventions(&[intervention("u3", "2026-01-03", "push")])
            .await
            .unwrap();
        let left = store.interventions_after(0, 100).await.unwrap();
        assert!(left[1].id > all.iter().map(|i| i.id).max().unwrap());
    }

    async fn churn_scores_replace_within_a_day(store: Store) {
        let row = |p: f32, tier: &str| ChurnScoreRow {
            user_id: "u1".into(),
            day: "2026-02-03".into(),
            probability: p,
            confidence: Some(0.5),
            tier: tier.into(),
        };
        store.put_churn_scores(&[row(0.2, "low")]).await.unwrap();
        store.put_churn_scores(&[row(0.8, "high")]).await.unwrap();
        let got = store
            .churn_score("u1", "2026-02-03")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, row(0.8, "high"));
        assert!(store
            .churn_score("u1", "2026-02-04")
            .await
            .unwrap()
            .is_none());
    }

    async fn churn_tier_history_counts_users_per_tier_and_day(store: Store) {
        assert!(store.churn_tier_history(30).await.unwrap().is_empty());
        let row = |user: &str, day: &str, tier: &str| ChurnScoreRow {
            user_id: user.into(),
            day: day.into(),
            probability: 0.5,
            confidence: None,
            tier: tier.into(),
        };
        store
            .put_churn_scores(&[
                row("u1", "2026-03-01", "high"),
                row("u2", "2026-03-01", "low"),
                row("u3", "2026-03-01", "low"),
                row("u1", "2026-03-02", "medium"),
                row("u2", "2026-03-02", "low"),
                row("u1", "2026-03-04", "high"),
                row("u2", "2026-03-04", "high"),
                row("u3", "2026-03-04", "medium"),
            ])
            .await
            .unwrap();
        // A rescore the same day replaces the user's tier, it does not add a user.
        store
            .put_churn_scores(&[row("u3", "2026-03-04", "low")])
            .await
            .unwrap();
        let counts = |h: &[ChurnTierDay]| -> Vec<(String, Vec<(String, u64)>)> {
            h.iter()
                .map(|d| {
                    let tiers = d.tiers.iter().map(|(t, n)| (t.clone(), *n)).collect();
                    (d.day.clone(), tiers)
                })
                .collect()
        };
        let all = store.churn_tier_history(30).await.unwrap();
        let t = |tier: &str, n: u64| (tier.to_owned(), n);
        assert_eq!(
            counts(&all),
            [
                ("2026-03-01".to_owned(), vec![t("high", 1), t("low", 2)]),
                ("2026-03-02".to_owned(), vec![t("low", 1), t("medium", 1)]),
                ("2026-03-04".to_owned(), vec![t("high", 2), t("low", 1)]),
            ]
        );
        // The newest days that have scores, still oldest first.
        let last = store.churn_tier_history(2).await.unwrap();
        let days: Vec<&str> = last.iter().map(|d| d.day.as_str()).collect();
        assert_eq!(days, ["2026-03-02", "2026-03-04"]);
        assert!(store.churn_tier_history(0).await.unwrap().is_empty());
    }

    async fn event_window_skips_old_events_and_pages(store: Store) {
        let batch: Vec<EventRecord> = (0..10)
            .map(|i| EventRecord {
                event_id: None,
                user_id: format!("u{i}"),
                item_id: Some("g".into()),
                kind: "checkin".into(),
                value: None,
                ts_ms: i * 100,
                recommendation_id: None,
            })
            .collect();
        store.append_events(&batch).await.unwrap();
        let (events, last) = store.events_in_window(500, 0, 3).await.unwrap();
        let ts: Vec<i64> = events.iter().map(|e| e.event.ts_ms).collect();
        assert_eq!(ts, [500, 600, 700]);
        let (events, last) = store.events_in_window(500, last, 3).await.unwrap();
        let ts: Vec<i64> = events.iter().map(|e| e.event.ts_ms).collect();
        assert_eq!(ts, [800, 900]);
        let (events, again) = store.events_in_window(500, last, 3).await.unwrap();
        assert!(events.is_empty());
        assert_eq!(again, last);
    }

    async fn erasure_covers_the_analytics_rows(store: Store) {
        store
            .append_interventions(&[intervention("gone", "2026-01-01", "push")])
            .await
            .unwrap();
        store
            .put_churn_scores(&[ChurnScoreRow {
                user_id: "gone".into(),
                day: "2026-01-01".into(),
                probability: 0.9,
                confidence: None,
                tier: "high".into(),
            }])
            .await
            .unwrap();
        let before = store.count_user_rows("gone").await.unwrap();
        assert_eq!((before.interventions, before.churn_scores), (1, 1));
        store.erase_user("gone").await.unwrap();
        assert_eq!(store.count_user_rows("gone").await.unwrap().total(), 0);
        assert!(store.interventions_after(0, 10).await.unwrap().is_empty());
    }
}
