//! The embedded back-end of the analytics rows ([`crate::store::analytics`]): model versions,
//! the interventions outbox and churn scores, stored as JSON values under the keys of the
//! `models`, `interventions` and `churn_scores` tables. Reading the outbox in id order scans
//! the table (it is kept short by pruning); the last intervention id given out is kept in
//! `meta`.

use std::collections::{BTreeMap, BinaryHeap};

use redb::{Database, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{db_err, EmbeddedStore, Result, CHURN_SCORES, EVENTS, INTERVENTIONS, META, MODELS};
use crate::store::analytics::{
    ChurnScoreRow, ModelVersionRow, NewIntervention, NewModelVersion, StoredIntervention,
};
use crate::store::{codec, StoreError, StoredEvent};

/// `meta` key of the last intervention id given out.
const INTERVENTION_SEQ_KEY: &str = "intervention_seq";

/// Value of a model version: header JSON length (u32 LE), header JSON, model bytes.
#[derive(Serialize, Deserialize)]
struct ModelHeader {
    created_ms: i64,
    parent_version: Option<u64>,
    metadata: serde_json::Value,
}

/// Value of an intervention (the key holds user, day and channel).
#[derive(Serialize, Deserialize)]
struct InterventionValue {
    id: u64,
    tier: String,
    payload: serde_json::Value,
    delivery_state: String,
    attempts: u32,
    created_ms: i64,
}

/// Value of a churn score (the key holds user and day).
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

impl EmbeddedStore {
    pub(crate) async fn insert_model_version(&self, new: &NewModelVersion<'_>) -> Result<u64> {
        self.store_model(new, None)
            .await?
            .ok_or_else(|| StoreError::Db {
                message: format!("no version number left for model {:?}", new.name),
            })
    }

    pub(crate) async fn put_model_version(
        &self,
        version: u64,
        new: &NewModelVersion<'_>,
    ) -> Result<bool> {
        Ok(self.store_model(new, Some(version)).await?.is_some())
    }

    /// Stores `new` as version `version` unless it is taken, or (`None`) as the next one;
    /// the number it got.
    async fn store_model(
        &self,
        new: &NewModelVersion<'_>,
        version: Option<u64>,
    ) -> Result<Option<u64>> {
        let name = new.name.to_owned();
        let record = encode_model(new)?;
        self.run(move |db| {
            let txn = db.begin_write().map_err(db_err)?;
            let stored = {
                let mut models = txn.open_table(MODELS).map_err(db_err)?;
                let version = match version {
                    Some(v) => v,
                    None => models
                        .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
                        .map_err(db_err)?
                        .next_back()
                        .transpose()
                        .map_err(db_err)?
                        .map_or(0, |(k, _)| k.value().1)
                        .saturating_add(1),
                };
                let taken = models
                    .get((name.as_str(), version))
                    .map_err(db_err)?
                    .is_some();
                if !taken {
                    models
                        .insert((name.as_str(), version), record.as_slice())
                        .map_err(db_err)?;
                }
                (!taken).then_some(version)
            };
            txn.commit().map_err(db_err)?;
            Ok(stored)
        })
        .await
    }

    pub(crate) async fn model_versions(&self, name: Option<&str>) -> Result<Vec<ModelVersionRow>> {
        let name = name.map(str::to_owned);
        self.run(move |db| {
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

    pub(crate) async fn model_version(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<(ModelVersionRow, Vec<u8>)>> {
        let name = name.to_owned();
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let models = txn.open_table(MODELS).map_err(db_err)?;
            let found = models.get((name.as_str(), version)).map_err(db_err)?;
            found
                .map(|v| decode_model(&name, version, v.value()))
                .transpose()
        })
        .await
    }

    pub(crate) async fn live_model_version(
        &self,
        name: &str,
    ) -> Result<Option<(ModelVersionRow, Vec<u8>)>> {
        let name = name.to_owned();
        self.run(move |db| {
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

    pub(crate) async fn events_in_window(
        &self,
        from_ts_ms: i64,
        after_seq: u64,
        limit: usize,
    ) -> Result<(Vec<StoredEvent>, u64)> {
        self.run(move |db| {
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

    pub(crate) async fn append_interventions(&self, batch: &[NewIntervention]) -> Result<usize> {
        let batch = batch.to_vec();
        self.run(move |db| append_interventions_blocking(db, &batch))
            .await
    }

    pub(crate) async fn outbox_page(
        &self,
        after_id: u64,
        limit: usize,
        undelivered_only: bool,
    ) -> Result<Vec<StoredIntervention>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(INTERVENTIONS).map_err(db_err)?;
            // Keep the `limit` smallest ids above the cursor while scanning.
            let mut heap = BinaryHeap::new();
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

    pub(crate) async fn set_intervention_delivery(
        &self,
        user_id: &str,
        day: &str,
        channel: &str,
        state: &str,
        attempts: u32,
    ) -> Result<()> {
        let (user, day, channel, state) = (
            user_id.to_owned(),
            day.to_owned(),
            channel.to_owned(),
            state.to_owned(),
        );
        self.run(move |db| {
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
                    let bytes = serde_json::to_vec(&v).map_err(|e| corrupt("intervention", e))?;
                    table.insert(key, bytes.as_slice()).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
        .await
    }

    pub(crate) async fn prune_interventions(&self, before_day: &str) -> Result<u64> {
        let before = before_day.to_owned();
        self.run(move |db| {
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

    pub(crate) async fn put_churn_scores(&self, rows: &[ChurnScoreRow]) -> Result<()> {
        let rows = rows.to_vec();
        self.run(move |db| {
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

    pub(crate) async fn churn_score(
        &self,
        user_id: &str,
        day: &str,
    ) -> Result<Option<ChurnScoreRow>> {
        let (user, day) = (user_id.to_owned(), day.to_owned());
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(CHURN_SCORES).map_err(db_err)?;
            let found = table.get((user.as_str(), day.as_str())).map_err(db_err)?;
            found
                .map(|v| {
                    let s: ScoreValue =
                        serde_json::from_slice(v.value()).map_err(|e| corrupt("churn score", e))?;
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

    pub(crate) async fn churn_tier_counts(
        &self,
        days: usize,
    ) -> Result<BTreeMap<String, BTreeMap<String, u64>>> {
        self.run(move |db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(CHURN_SCORES).map_err(db_err)?;
            let mut by_day: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
            for entry in table.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                let (_, day) = k.value();
                let s: ScoreValue =
                    serde_json::from_slice(v.value()).map_err(|e| corrupt("churn score", e))?;
                *by_day
                    .entry(day.to_owned())
                    .or_default()
                    .entry(s.tier)
                    .or_default() += 1;
            }
            while by_day.len() > days {
                by_day.pop_first();
            }
            Ok(by_day)
        })
        .await
    }
}

fn append_interventions_blocking(db: &Database, batch: &[NewIntervention]) -> Result<usize> {
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
