//! The PostgreSQL back-end of the analytics rows ([`crate::store::analytics`]): the `models`,
//! `interventions` and `churn_scores` tables of `migrations/`, and the windowed read of the
//! event log. Interventions get their ids from the table's sequence, in batch order.

use std::collections::BTreeMap;

use tokio_postgres::Row;

use super::{event_from_row, limit_i64, pg_err, pool_err, to_i64, to_u64, PostgresStore, Result};
use crate::store::analytics::{
    ChurnScoreRow, ModelVersionRow, NewIntervention, NewModelVersion, StoredIntervention,
};
use crate::store::{StoreError, StoredEvent};

impl PostgresStore {
    pub(crate) async fn insert_model_version(&self, new: &NewModelVersion<'_>) -> Result<u64> {
        let parent = new
            .parent_version
            .map(|v| to_i64(v, "version"))
            .transpose()?;
        let client = self.pool.get().await.map_err(pool_err)?;
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
                    &[
                        &new.name,
                        &new.created_ms,
                        &parent,
                        new.metadata,
                        &new.bytes,
                    ],
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

    pub(crate) async fn put_model_version(
        &self,
        version: u64,
        new: &NewModelVersion<'_>,
    ) -> Result<bool> {
        let version = to_i64(version, "version")?;
        let parent = new
            .parent_version
            .map(|v| to_i64(v, "version"))
            .transpose()?;
        let client = self.pool.get().await.map_err(pool_err)?;
        let row = client
            .query_opt(
                "INSERT INTO models (name, version, created_ms, parent_version, metadata, bytes) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING version",
                &[
                    &new.name,
                    &version,
                    &new.created_ms,
                    &parent,
                    new.metadata,
                    &new.bytes,
                ],
            )
            .await
            .map_err(pg_err)?;
        Ok(row.is_some())
    }

    pub(crate) async fn model_versions(&self, name: Option<&str>) -> Result<Vec<ModelVersionRow>> {
        let client = self.pool.get().await.map_err(pool_err)?;
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

    pub(crate) async fn model_version(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<(ModelVersionRow, Vec<u8>)>> {
        let Ok(v) = i64::try_from(version) else {
            return Ok(None);
        };
        let client = self.pool.get().await.map_err(pool_err)?;
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

    pub(crate) async fn live_model_version(
        &self,
        name: &str,
    ) -> Result<Option<(ModelVersionRow, Vec<u8>)>> {
        let client = self.pool.get().await.map_err(pool_err)?;
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

    pub(crate) async fn events_in_window(
        &self,
        from_ts_ms: i64,
        after_seq: u64,
        limit: usize,
    ) -> Result<(Vec<StoredEvent>, u64)> {
        let Ok(after) = i64::try_from(after_seq) else {
            return Ok((Vec::new(), after_seq));
        };
        let client = self.pool.get().await.map_err(pool_err)?;
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

    pub(crate) async fn append_interventions(&self, batch: &[NewIntervention]) -> Result<usize> {
        let users: Vec<&str> = batch.iter().map(|i| i.user_id.as_str()).collect();
        let days: Vec<&str> = batch.iter().map(|i| i.day.as_str()).collect();
        let tiers: Vec<&str> = batch.iter().map(|i| i.tier.as_str()).collect();
        let channels: Vec<&str> = batch.iter().map(|i| i.channel.as_str()).collect();
        let payloads: Vec<String> = batch.iter().map(|i| i.payload.to_string()).collect();
        let created: Vec<i64> = batch.iter().map(|i| i.created_ms).collect();
        let client = self.pool.get().await.map_err(pool_err)?;
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

    pub(crate) async fn outbox_page(
        &self,
        after_id: u64,
        limit: usize,
        undelivered_only: bool,
    ) -> Result<Vec<StoredIntervention>> {
        let after = i64::try_from(after_id).unwrap_or(i64::MAX);
        let client = self.pool.get().await.map_err(pool_err)?;
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
        rows.iter().map(intervention_from_row).collect()
    }

    pub(crate) async fn set_intervention_delivery(
        &self,
        user_id: &str,
        day: &str,
        channel: &str,
        state: &str,
        attempts: u32,
    ) -> Result<()> {
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        let client = self.pool.get().await.map_err(pool_err)?;
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

    pub(crate) async fn prune_interventions(&self, before_day: &str) -> Result<u64> {
        let client = self.pool.get().await.map_err(pool_err)?;
        client
            .execute(
                "DELETE FROM interventions WHERE day < $1::text::date",
                &[&before_day],
            )
            .await
            .map_err(pg_err)
    }

    pub(crate) async fn put_churn_scores(&self, rows: &[ChurnScoreRow]) -> Result<()> {
        let users: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
        let days: Vec<&str> = rows.iter().map(|r| r.day.as_str()).collect();
        let probs: Vec<f32> = rows.iter().map(|r| r.probability).collect();
        let confs: Vec<Option<f32>> = rows.iter().map(|r| r.confidence).collect();
        let tiers: Vec<&str> = rows.iter().map(|r| r.tier.as_str()).collect();
        let client = self.pool.get().await.map_err(pool_err)?;
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

    pub(crate) async fn churn_score(
        &self,
        user_id: &str,
        day: &str,
    ) -> Result<Option<ChurnScoreRow>> {
        let client = self.pool.get().await.map_err(pool_err)?;
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

    pub(crate) async fn churn_tier_counts(
        &self,
        days: usize,
    ) -> Result<BTreeMap<String, BTreeMap<String, u64>>> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let rows = client
            .query(
                "SELECT day::text, tier, COUNT(*) FROM churn_scores \
                 WHERE day IN (SELECT DISTINCT day FROM churn_scores \
                 ORDER BY day DESC LIMIT $1) GROUP BY day, tier",
                &[&limit_i64(days)],
            )
            .await
            .map_err(pg_err)?;
        let mut by_day: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for r in rows {
            let day: String = r.try_get(0).map_err(pg_err)?;
            let tier: String = r.try_get(1).map_err(pg_err)?;
            let n: i64 = r.try_get(2).map_err(pg_err)?;
            by_day
                .entry(day)
                .or_default()
                .insert(tier, to_u64(n, "tier count")?);
        }
        Ok(by_day)
    }
}

fn model_from_row(r: &Row) -> Result<ModelVersionRow> {
    let parent: Option<i64> = r.try_get(3).map_err(pg_err)?;
    Ok(ModelVersionRow {
        name: r.try_get(0).map_err(pg_err)?,
        version: to_u64(r.try_get(1).map_err(pg_err)?, "version")?,
        created_ms: r.try_get(2).map_err(pg_err)?,
        parent_version: parent.map(|p| to_u64(p, "parent version")).transpose()?,
        metadata: r.try_get(4).map_err(pg_err)?,
    })
}

fn intervention_from_row(r: &Row) -> Result<StoredIntervention> {
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
}
