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
//! The embedded back-end stores these rows as JSON values under the keys of
//! [`super::embedded`]'s tables; reading the outbox in id order scans the table (it is kept
//! short by [`Store::prune_interventions`]). Erasure of a user ([`Store::erase_user`]) already
//! covers all three user tables.

use std::collections::BTreeMap;

use redb::{Database, ReadableTable};
use serde::{Deserialize, Serialize};

use super::embedded::{db_err, CHURN_SCORES, EVENTS, INTERVENTIONS, META, MODELS};
use super::postgres::{event_from_row, pg_err, pool_err};
use super::{codec, Store, StoreError, StoredEvent};

type Result<T> = std::result::Result<T, StoreError>;

/// `meta` key of the last intervention id given out (embedded back-end).
const INTERVENTION_SEQ_KEY: &str = "intervention_seq";

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

/// Embedded value of a model version: header JSON length (u32 LE), header JSON, model bytes.
#[derive(Serialize, Deserialize)]
struct ModelHeader {
    created_ms: i64,
    parent_version: Option<u64>,
    metadata: serde_json::Value,
}

/// Embedded value of an intervention (the key holds user, day and channel).
#[derive(Serialize, Deserialize)]
struct InterventionValue {
    id: u64,
    tier: String,
    payload: serde_json::Value,
    delivery_state: String,
    attempts: u32,
    created_ms: i64,
}

/// Embedded value of a churn score (the key holds user and day).
#[derive(Serialize, Deserialize)]
struct ScoreValue {
    probability: f32,
    confidence: Option<f32>,
    tier: String,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        message: format!("{what}: {e}"),
    }
}

fn encode_model(new: &NewModelVersion<'_>) -> Result<Vec<u8>> {
    let header = serde_json::to_vec(&ModelHeader {
        created_ms: new.created_ms,
        parent_version: new.parent_version,
        metadata: new.metadata.clone(),
    })
    .map_err(|e| corrupt("model header", e))?;
    let len = u32::try_from(header.len()).map_err(|e| corrupt("model header", e))?;
    let mut out = Vec::with_capacity(4 + header.len() + new.bytes.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(new.bytes);
    Ok(out)
}

fn decode_model(name: &str, version: u64, record: &[u8]) -> Result<(ModelVersionRow, Vec<u8>)> {
    let (len, rest) = record
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt("model record", "truncated"))?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err(corrupt("model record", "truncated header"));
    }
    let (header, bytes) = rest.split_at(len);
    let header: ModelHeader =
        serde_json::from_slice(header).map_err(|e| corrupt("model header", e))?;
    Ok((
        ModelVersionRow {
            name: name.to_owned(),
            version,
            created_ms: header.created_ms,
            parent_version: header.parent_version,
            metadata: header.metadata,
        },
        bytes.to_vec(),
    ))
}

fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| StoreError::Db {
        message: format!("{what} {v} exceeds PostgreSQL BIGINT"),
    })
}

fn to_u64(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| corrupt(what, format!("negative value {v}")))
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl Store {
    /// Stores a new version of `new.name`, numbered one above the highest stored version
    /// (1 for the first); returns that number.
    pub async fn insert_model_version(&self, new: &NewModelVersion<'_>) -> Result<u64> {
        match self {
            Store::Embedded(s) => {
                let name = new.name.to_owned();
                let record = encode_model(new)?;
                s.run(move |db| {
                    let txn = db.begin_write().map_err(db_err)?;
                    let version = {
                        let mut models = txn.open_table(MODELS).map_err(db_err)?;
                        let last = models
                            .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
                            .map_err(db_err)?
                            .next_back()
                            .transpose()
                            .map_err(db_err)?
                            .map_or(0, |(k, _)| k.value().1);
                        let version = last + 1;
                        models
                            .insert((name.as_str(), version), record.as_slice())
                            .map_err(db_err)?;
                        version
                    };
                    txn.commit().map_err(db_err)?;
                    Ok(version)
                })
                .await
            }
            Store::Postgres(s) => {
                let parent = new
                    .parent_version
                    .map(|v| to_i64(v, "version"))
                    .transpose()?;
                let client = s.pool.get().await.map_err(pool_err)?;
                // Two concurrent inserts can pick the same number: the primary key refuses the
                // second, which then retries with the next number.
                let mut attempt = 0;
                loop {
                    let result = client
                        .query_one(
                            "INSERT INTO models (name, version, created_ms, parent_version, \
                             metadata, bytes) \
                             SELECT $1::text, COALESCE(MAX(version), 0) + 1, $2::bigint, $3::bigint, \
                             $4::jsonb, $5::bytea FROM models WHERE name = $1 RETURNING version",
                            &[&new.name, &new.created_ms, &parent, new.metadata, &new.bytes],
                        )
                        .await
                        .map_err(pg_err);
                    match result {
                        Ok(row) => return to_u64(row.try_get(0).map_err(pg_err)?, "version"),
                        Err(StoreError::Conflict { .. }) if attempt < 3 => attempt += 1,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Every stored version (without bytes), of one model or of all, ordered by name and
    /// version.
    pub async fn model_versions(&self, name: Option<&str>) -> Result<Vec<ModelVersionRow>> {
        match self {
            Store::Embedded(s) => {
                let name = name.map(str::to_owned);
                s.run(move |db| {
                    let txn = db.begin_read().map_err(db_err)?;
                    let models = txn.open_table(MODELS).map_err(db_err)?;
                    let mut out = Vec::new();
                    let iter = match &name {
                        Some(n) => models
                            .range((n.as_str(), 0)..=(n.as_str(), u64::MAX))
                            .map_err(db_err)?,
                        None => models.iter().map_err(db_err)?,
                    };
                    for entry in iter {
                        let (key, value) = entry.map_err(db_err)?;
                        let (n, version) = key.value();
                        out.push(decode_model(n, version, value.value())?.0);
                    }
                    Ok(out)
                })
                .await
            }
            Store::Postgres(s) => {
                let client = s.pool.get().await.map_err(pool_err)?;
                let rows = client
                    .query(
                        "SELECT name, version, created_ms, parent_version, metadata FROM models \
                         WHERE $1::text IS NULL OR name = $1 \
                         ORDER BY name COLLATE \"C\", version",
                        &[&name],
                    )
                    .await
                    .map_err(pg_err)?;
                rows.iter().map(model_from_row).collect()
            }
        }
    }

    /// One version with its bytes.
    pub async fn model_version(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<(ModelVersionRow, Vec<u8>)>> {
        match self {
            Store::Embedded(s) => {
                let name = name.to_owned();
                s.run(move |db| {
                    let txn = db.begin_read().map_err(db_err)?;
                    let models = txn.open_table(MODELS).map_err(db_err)?;
                    let found = models.get((name.as_str(), version)).map_err(db_err)?;
                    found
                        .map(|v| decode_model(&name, version, v.value()))
                        .transpose()
                })
                .await
            }
            Store::Postgres(s) => {
                let Ok(v) = i64::try_from(version) else {
                    return Ok(None);
                };
                let client = s.pool.get().await.map_err(pool_err)?;
                let row = client
                    .query_opt(
                        "SELECT name, version, created_ms, parent_version, metadata, bytes \
                         FROM models WHERE name = $1 AND version = $2",
                        &[&name, &v],
                    )
                    .await
                    .map_err(pg_err)?;
                row.map(|r| Ok((model_from_row(&r)?, r.try_get(5).map_err(pg_err)?)))
                    .transpose()
            }
        }
    }

    /// The live version of a model (the highest promoted one) with its bytes.
    pub async fn live_model_version(
        &self,
        name: &str,
    ) -> Result<Option<(ModelVersionRow, Vec<u8>)>> {
        match self {
            Store::Embedded(s) => {
                let name = name.to_owned();
                s.run(move |db| {
                    let txn = db.begin_read().map_err(db_err)?;
                    let models = txn.open_table(MODELS).map_err(db_err)?;
                    let range = models
                        .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
                        .map_err(db_err)?;
                    for entry in range.rev() {
                        let (key, value) = entry.map_err(db_err)?;
                        let decoded = decode_model(&name, key.value().1, value.value())?;
                        if decoded.0.promoted() {
                            return Ok(Some(decoded));
                        }
                    }
                    Ok(None)
                })
                .await
            }
            Store::Postgres(s) => {
                let client = s.pool.get().await.map_err(pool_err)?;
                let row = client
                    .query_opt(
                        "SELECT name, version, created_ms, parent_version, metadata, bytes \
                         FROM models WHERE name = $1 AND metadata->>'promoted' = 'true' \
                         ORDER BY version DESC LIMIT 1",
                        &[&name],
                    )
                    .await
                    .map_err(pg_err)?;
                row.map(|r| Ok((model_from_row(&r)?, r.try_get(5).map_err(pg_err)?)))
                    .transpose()
            }
        }
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
        match self {
            Store::Embedded(s) => {
                s.run(move |db| {
                    let Some(from) = after_seq.checked_add(1) else {
                        return Ok((Vec::new(), after_seq));
                    };
                    let txn = db.begin_read().map_err(db_err)?;
                    let events = txn.open_table(EVENTS).map_err(db_err)?;
                    let mut out = Vec::with_capacity(limit.min(100_000));
                    let mut last = after_seq;
                    // Bound the work of one call even when few events match.
                    let max_examined = limit.saturating_mul(4).max(10_000);
                    let range = events.range(from..).map_err(db_err)?;
                    for entry in range.take(max_examined) {
                        if out.len() == limit {
                            break;
                        }
                        let (seq, record) = entry.map_err(db_err)?;
                        last = seq.value();
                        let (ts_ms, _) = codec::decode_ts_and_user(record.value())?;
                        if ts_ms >= from_ts_ms {
                            out.push(StoredEvent {
                                seq: last,
                                event: codec::decode_event(record.value())?,
                            });
                        }
                    }
                    Ok((out, last))
                })
                .await
            }
            Store::Postgres(s) => {
                let Ok(after) = i64::try_from(after_seq) else {
                    return Ok((Vec::new(), after_seq));
                };
                let client = s.pool.get().await.map_err(pool_err)?;
                let rows = client
                    .query(
                        "SELECT seq, event_id, user_id, item_id, kind, value, ts_ms, \
                         recommendation_id FROM events WHERE seq > $1 AND ts_ms >= $2 \
                         ORDER BY seq LIMIT $3",
                        &[&after, &from_ts_ms, &limit_i64(limit)],
                    )
                    .await
                    .map_err(pg_err)?;
                let events = rows
                    .iter()
                    .map(event_from_row)
                    .collect::<Result<Vec<_>>>()?;
                let last = events.last().map_or(after_seq, |e| e.seq);
                Ok((events, last))
            }
        }
    }

    /// Appends interventions, skipping those whose `(user_id, day, channel)` exists; returns
    /// how many were new.
    pub async fn append_interventions(&self, batch: &[NewIntervention]) -> Result<usize> {
        if batch.is_empty() {
            return Ok(0);
        }
        match self {
            Store::Embedded(s) => {
                let batch = batch.to_vec();
                s.run(move |db| append_interventions_embedded(db, &batch))
                    .await
            }
            Store::Postgres(s) => {
                let users: Vec<&str> = batch.iter().map(|i| i.user_id.as_str()).collect();
                let days: Vec<&str> = batch.iter().map(|i| i.day.as_str()).collect();
                let tiers: Vec<&str> = batch.iter().map(|i| i.tier.as_str()).collect();
                let channels: Vec<&str> = batch.iter().map(|i| i.channel.as_str()).collect();
                let payloads: Vec<String> = batch.iter().map(|i| i.payload.to_string()).collect();
                let created: Vec<i64> = batch.iter().map(|i| i.created_ms).collect();
                let client = s.pool.get().await.map_err(pool_err)?;
                // `ORDER BY ord` gives ids in batch order.
                let n = client
                    .execute(
                        "INSERT INTO interventions (user_id, day, tier, channel, payload, \
                         created_ms) \
                         SELECT u, d::date, t, c, p::jsonb, m FROM UNNEST($1::text[], \
                         $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[]) \
                         WITH ORDINALITY AS x(u, d, t, c, p, m, ord) ORDER BY ord \
                         ON CONFLICT (user_id, day, channel) DO NOTHING",
                        &[&users, &days, &tiers, &channels, &payloads, &created],
                    )
                    .await
                    .map_err(pg_err)?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
        }
    }

    /// Up to `limit` interventions with `id > after_id`, in id order.
    pub async fn interventions_after(
        &self,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<StoredIntervention>> {
        self.outbox_page(after_id, limit, false).await
    }

    /// Like [`Store::interventions_after`], but only those still to deliver (`pending` or
    /// `retrying`).
    pub async fn undelivered_interventions(
        &self,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<StoredIntervention>> {
        self.outbox_page(after_id, limit, true).await
    }

    async fn outbox_page(
        &self,
        after_id: u64,
        limit: usize,
        undelivered_only: bool,
    ) -> Result<Vec<StoredIntervention>> {
        match self {
            Store::Embedded(s) => {
                s.run(move |db| {
                    let txn = db.begin_read().map_err(db_err)?;
                    let table = txn.open_table(INTERVENTIONS).map_err(db_err)?;
                    // Keep the `limit` smallest ids above the cursor while scanning.
                    let mut heap = std::collections::BinaryHeap::new();
                    for entry in table.iter().map_err(db_err)? {
                        let (key, value) = entry.map_err(db_err)?;
                        let v: InterventionValue = serde_json::from_slice(value.value())
                            .map_err(|e| corrupt("intervention", e))?;
                        if v.id <= after_id
                            || (undelivered_only
                                && !matches!(v.delivery_state.as_str(), "pending" | "retrying"))
                        {
                            continue;
                        }
                        if heap.len() == limit {
                            match heap.peek() {
                                Some(top) if intervention_id(top) > v.id => {
                                    heap.pop();
                                }
                                _ => continue,
                            }
                        }
                        let (user, day, channel) = key.value();
                        heap.push(HeapEntry(StoredIntervention {
                            id: v.id,
                            user_id: user.to_owned(),
                            day: day.to_owned(),
                            tier: v.tier,
                            channel: channel.to_owned(),
                            payload: v.payload,
                            delivery_state: v.delivery_state,
                            attempts: v.attempts,
                            created_ms: v.created_ms,
                        }));
                    }
                    let mut out: Vec<StoredIntervention> = heap.into_iter().map(|e| e.0).collect();
                    out.sort_by_key(|i| i.id);
                    Ok(out)
                })
                .await
            }
            Store::Postgres(s) => {
                let after = i64::try_from(after_id).unwrap_or(i64::MAX);
                let client = s.pool.get().await.map_err(pool_err)?;
                let rows = client
                    .query(
                        "SELECT id, user_id, day::text, tier, channel, payload, delivery_state, \
                         attempts, created_ms FROM interventions WHERE id > $1 \
                         AND (NOT $3 OR delivery_state IN ('pending', 'retrying')) \
                         ORDER BY id LIMIT $2",
                        &[&after, &limit_i64(limit), &undelivered_only],
                    )
                    .await
                    .map_err(pg_err)?;
                rows.iter()
                    .map(|r| {
                        let attempts: i32 = r.try_get(7).map_err(pg_err)?;
                        Ok(StoredIntervention {
                            id: to_u64(r.try_get(0).map_err(pg_err)?, "intervention id")?,
                            user_id: r.try_get(1).map_err(pg_err)?,
                            day: r.try_get(2).map_err(pg_err)?,
                            tier: r.try_get(3).map_err(pg_err)?,
                            channel: r.try_get(4).map_err(pg_err)?,
                            payload: r.try_get(5).map_err(pg_err)?,
                            delivery_state: r.try_get(6).map_err(pg_err)?,
                            attempts: u32::try_from(attempts).unwrap_or(0),
                            created_ms: r.try_get(8).map_err(pg_err)?,
                        })
                    })
                    .collect()
            }
        }
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
        match self {
            Store::Embedded(s) => {
                let (user, day, channel, state) = (
                    user_id.to_owned(),
                    day.to_owned(),
                    channel.to_owned(),
                    state.to_owned(),
                );
                s.run(move |db| {
                    let txn = db.begin_write().map_err(db_err)?;
                    {
                        let mut table = txn.open_table(INTERVENTIONS).map_err(db_err)?;
                        let key = (user.as_str(), day.as_str(), channel.as_str());
                        let current = table
                            .get(key)
                            .map_err(db_err)?
                            .map(|v| serde_json::from_slice::<InterventionValue>(v.value()));
                        if let Some(current) = current {
                            let mut v = current.map_err(|e| corrupt("intervention", e))?;
                            v.delivery_state = state;
                            v.attempts = attempts;
                            let bytes =
                                serde_json::to_vec(&v).map_err(|e| corrupt("intervention", e))?;
                            table.insert(key, bytes.as_slice()).map_err(db_err)?;
                        }
                    }
                    txn.commit().map_err(db_err)
                })
                .await
            }
            Store::Postgres(s) => {
                let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
                let client = s.pool.get().await.map_err(pool_err)?;
                client
                    .execute(
                        "UPDATE interventions SET delivery_state = $4, attempts = $5 \
                         WHERE user_id = $1 AND day = $2::text::date AND channel = $3",
                        &[&user_id, &day, &channel, &state, &attempts],
                    )
                    .await
                    .map_err(pg_err)?;
                Ok(())
            }
        }
    }

    /// Deletes the interventions of days before `before_day` (`YYYY-MM-DD`); returns how many.
    pub async fn prune_interventions(&self, before_day: &str) -> Result<u64> {
        match self {
            Store::Embedded(s) => {
                let before = before_day.to_owned();
                s.run(move |db| {
                    let txn = db.begin_write().map_err(db_err)?;
                    let removed = {
                        let mut table = txn.open_table(INTERVENTIONS).map_err(db_err)?;
                        // Days are `YYYY-MM-DD`, so string order is date order.
                        let n = table
                            .extract_if(|(_, day, _), _| day < before.as_str())
                            .map_err(db_err)?
                            .try_fold(0u64, |n, e| e.map(|_| n + 1))
                            .map_err(db_err)?;
                        n
                    };
                    txn.commit().map_err(db_err)?;
                    Ok(removed)
                })
                .await
            }
            Store::Postgres(s) => {
                let client = s.pool.get().await.map_err(pool_err)?;
                client
                    .execute(
                        "DELETE FROM interventions WHERE day < $1::text::date",
                        &[&before_day],
                    )
                    .await
                    .map_err(pg_err)
            }
        }
    }

    /// Writes churn scores, replacing a user's score of the same day.
    pub async fn put_churn_scores(&self, rows: &[ChurnScoreRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        match self {
            Store::Embedded(s) => {
                let rows = rows.to_vec();
                s.run(move |db| {
                    let txn = db.begin_write().map_err(db_err)?;
                    {
                        let mut table = txn.open_table(CHURN_SCORES).map_err(db_err)?;
                        for r in &rows {
                            let bytes = serde_json::to_vec(&ScoreValue {
                                probability: r.probability,
                                confidence: r.confidence,
                                tier: r.tier.clone(),
                            })
                            .map_err(|e| corrupt("churn score", e))?;
                            table
                                .insert((r.user_id.as_str(), r.day.as_str()), bytes.as_slice())
                                .map_err(db_err)?;
                        }
                    }
                    txn.commit().map_err(db_err)
                })
                .await
            }
            Store::Postgres(s) => {
                let users: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
                let days: Vec<&str> = rows.iter().map(|r| r.day.as_str()).collect();
                let probs: Vec<f32> = rows.iter().map(|r| r.probability).collect();
                let confs: Vec<Option<f32>> = rows.iter().map(|r| r.confidence).collect();
                let tiers: Vec<&str> = rows.iter().map(|r| r.tier.as_str()).collect();
                let client = s.pool.get().await.map_err(pool_err)?;
                client
                    .execute(
                        "INSERT INTO churn_scores (user_id, day, probability, confidence, tier) \
                         SELECT u, d::date, p, c, t FROM UNNEST($1::text[], $2::text[], \
                         $3::real[], $4::real[], $5::text[]) AS x(u, d, p, c, t) \
                         ON CONFLICT (user_id, day) DO UPDATE SET \
                         probability = EXCLUDED.probability, confidence = EXCLUDED.confidence, \
                         tier = EXCLUDED.tier",
                        &[&users, &days, &probs, &confs, &tiers],
                    )
                    .await
                    .map_err(pg_err)?;
                Ok(())
            }
        }
    }

    /// A user's churn score of one day.
    pub async fn churn_score(&self, user_id: &str, day: &str) -> Result<Option<ChurnScoreRow>> {
        match self {
            Store::Embedded(s) => {
                let (user, day) = (user_id.to_owned(), day.to_owned());
                s.run(move |db| {
                    let txn = db.begin_read().map_err(db_err)?;
                    let table = txn.open_table(CHURN_SCORES).map_err(db_err)?;
                    let found = table.get((user.as_str(), day.as_str())).map_err(db_err)?;
                    found
                        .map(|v| {
                            let s: ScoreValue = serde_json::from_slice(v.value())
                                .map_err(|e| corrupt("churn score", e))?;
                            Ok(ChurnScoreRow {
                                user_id: user.clone(),
                                day: day.clone(),
                                probability: s.probability,
                                confidence: s.confidence,
                                tier: s.tier,
                            })
                        })
                        .transpose()
                })
                .await
            }
            Store::Postgres(s) => {
                let client = s.pool.get().await.map_err(pool_err)?;
                let row = client
                    .query_opt(
                        "SELECT user_id, day::text, probability, confidence, tier \
                         FROM churn_scores WHERE user_id = $1 AND day = $2::text::date",
                        &[&user_id, &day],
                    )
                    .await
                    .map_err(pg_err)?;
                row.map(|r| {
                    Ok(ChurnScoreRow {
                        user_id: r.try_get(0).map_err(pg_err)?,
                        day: r.try_get(1).map_err(pg_err)?,
                        probability: r.try_get(2).map_err(pg_err)?,
                        confidence: r.try_get(3).map_err(pg_err)?,
                        tier: r.try_get(4).map_err(pg_err)?,
                    })
                })
                .transpose()
            }
        }
    }
    /// Users per tier for each of the newest `days` scoring days that have scores, oldest
    /// first. Tiers with no user on a day are absent from that day's counts.
    pub async fn churn_tier_history(&self, days: usize) -> Result<Vec<ChurnTierDay>> {
        if days == 0 {
            return Ok(Vec::new());
        }
        let mut by_day: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        match self {
            Store::Embedded(s) => {
                by_day = s
                    .run(move |db| {
                        let txn = db.begin_read().map_err(db_err)?;
                        let table = txn.open_table(CHURN_SCORES).map_err(db_err)?;
                        let mut by_day: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
                        for entry in table.iter().map_err(db_err)? {
                            let (k, v) = entry.map_err(db_err)?;
                            let (_, day) = k.value();
                            let s: ScoreValue = serde_json::from_slice(v.value())
                                .map_err(|e| corrupt("churn score", e))?;
                            *by_day
                                .entry(day.to_owned())
                                .or_default()
                                .entry(s.tier)
                                .or_default() += 1;
                        }
                        Ok(by_day)
                    })
                    .await?;
            }
            Store::Postgres(s) => {
                let client = s.pool.get().await.map_err(pool_err)?;
                let limit = i64::try_from(days).unwrap_or(i64::MAX);
                let rows = client
                    .query(
                        "SELECT day::text, tier, COUNT(*) FROM churn_scores \
                         WHERE day IN (SELECT DISTINCT day FROM churn_scores \
                         ORDER BY day DESC LIMIT $1) GROUP BY day, tier",
                        &[&limit],
                    )
                    .await
                    .map_err(pg_err)?;
                for r in rows {
                    let day: String = r.try_get(0).map_err(pg_err)?;
                    let tier: String = r.try_get(1).map_err(pg_err)?;
                    let n: i64 = r.try_get(2).map_err(pg_err)?;
                    by_day
                        .entry(day)
                        .or_default()
                        .insert(tier, to_u64(n, "tier count")?);
                }
            }
        }
        let skip = by_day.len().saturating_sub(days);
        Ok(by_day
            .into_iter()
            .skip(skip)
            .map(|(day, tiers)| ChurnTierDay { day, tiers })
            .collect())
    }
}

fn model_from_row(r: &tokio_postgres::Row) -> Result<ModelVersionRow> {
    let parent: Option<i64> = r.try_get(3).map_err(pg_err)?;
    Ok(ModelVersionRow {
        name: r.try_get(0).map_err(pg_err)?,
        version: to_u64(r.try_get(1).map_err(pg_err)?, "version")?,
        created_ms: r.try_get(2).map_err(pg_err)?,
        parent_version: parent.map(|p| to_u64(p, "parent version")).transpose()?,
        metadata: r.try_get(4).map_err(pg_err)?,
    })
}

fn append_interventions_embedded(db: &Database, batch: &[NewIntervention]) -> Result<usize> {
    let txn = db.begin_write().map_err(db_err)?;
    let added = {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let mut seq = meta
            .get(INTERVENTION_SEQ_KEY)
            .map_err(db_err)?
            .map_or(0, |g| g.value());
        let mut table = txn.open_table(INTERVENTIONS).map_err(db_err)?;
        let mut added = 0;
        for i in batch {
            let key = (i.user_id.as_str(), i.day.as_str(), i.channel.as_str());
            if table.get(key).map_err(db_err)?.is_some() {
                continue;
            }
            seq += 1;
            let value = serde_json::to_vec(&InterventionValue {
                id: seq,
                tier: i.tier.clone(),
                payload: i.payload.clone(),
                delivery_state: "pending".into(),
                attempts: 0,
                created_ms: i.created_ms,
            })
            .map_err(|e| corrupt("intervention", e))?;
            table.insert(key, value.as_slice()).map_err(db_err)?;
            added += 1;
        }
        meta.insert(INTERVENTION_SEQ_KEY, seq).map_err(db_err)?;
        added
    };
    txn.commit().map_err(db_err)?;
    Ok(added)
}

/// Max-heap entry ordered by intervention id (the outbox scan keeps the smallest ids).
struct HeapEntry(StoredIntervention);

fn intervention_id(e: &HeapEntry) -> u64 {
    e.0.id
}

impl PartialEq for HeapEntry {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}
impl Eq for HeapEntry {}
impl PartialOrd for HeapEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeapEntry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.id.cmp(&other.0.id)
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use serde_json::json;

    use super::super::tests as store_tests;
    use super::super::NewEvent;
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
        interventions_are_unique_per_user_day_channel_and_paged_by_id,
        churn_scores_replace_within_a_day,
        churn_tier_history_counts_users_per_tier_and_day,
        event_window_skips_old_events_and_pages,
        erasure_covers_the_analytics_rows,
    );

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
        let batch: Vec<NewEvent> = (0..10)
            .map(|i| NewEvent {
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
