//! A/B experiments in a cluster (docs/operations.md, "Experiments in a cluster").
//!
//! The definitions are the cluster's: one table in PostgreSQL next to the partition snapshots,
//! `momentum_experiments` ([`ExperimentStore`]). A create, stop or delete on any node is one
//! statement there — the table's constraints keep one running experiment and unique ids, as
//! a single node's registry does — after which the node brings its registry in line with the
//! table ([`crate::experiments::Experiments::reconcile`]); every other node does the same on
//! each admin read of the experiments and every `cluster.item_model_poll_secs`, so it assigns
//! users to the same variants (assignment is a pure function of the salt and the user id).
//!
//! Counting stays where the data is: a recommendation is served by its user's owner (reads
//! are forwarded), which remembers it; an event that names it is logged with its
//! `recommendation_id` and attributed by the same owner as it applies it. The results of an
//! experiment are the sum of every serving node's counts, gathered by the node asked.

use std::sync::Arc;

use momentum_models::experiment::ExperimentDef;

use super::snapshots::{pg, Table};
use super::Cluster;
use crate::error::Error;

/// The table, created if missing.
const TABLE: &str = "momentum_experiments";

/// An experiment as the cluster stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredExperiment {
    pub id: String,
    pub salt: String,
    pub def: ExperimentDef,
    pub created_ms: i64,
    pub stopped_ms: Option<i64>,
}

/// A connection to the cluster's experiments.
#[derive(Debug)]
pub struct ExperimentStore {
    client: tokio_postgres::Client,
    table: String,
}

impl ExperimentStore {
    /// Registers a running experiment. Errors as a single node's registry: a taken id or
    /// another running experiment (409), `max` experiments stored (507).
    pub async fn create(
        &self,
        id: &str,
        salt: &str,
        def: &ExperimentDef,
        now_ms: i64,
        max: usize,
    ) -> Result<(), Error> {
        let definition = serde_json::to_string(def).map_err(|source| Error::Json {
            what: "experiment definition".into(),
            source,
        })?;
        // One statement checks and inserts. Two nodes creating at once can both pass the
        // checks; the primary key and the index of running experiments then refuse the second,
        // which runs the statement again and is told why.
        let t = &self.table;
        let statement = format!(
            "WITH existing AS (SELECT id, stopped_ms FROM {t}),
             inserted AS (
                INSERT INTO {t} (id, salt, definition, created_ms)
                SELECT $1::text, $2::text, $3::text, $4::bigint
                WHERE NOT EXISTS (SELECT 1 FROM existing WHERE id = $1::text OR stopped_ms IS NULL)
                  AND (SELECT count(*) FROM existing) < $5::bigint
                RETURNING id)
             SELECT (SELECT count(*) FROM inserted),
                    (SELECT count(*) FROM existing WHERE id = $1::text),
                    (SELECT id FROM existing WHERE stopped_ms IS NULL LIMIT 1)"
        );
        let max_i64 = i64::try_from(max).unwrap_or(i64::MAX);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&id, &salt, &definition, &now_ms, &max_i64];
        let row = match self.client.query_one(&statement, &params).await {
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => self
                .client
                .query_one(&statement, &params)
                .await
                .map_err(pg(TABLE, "create"))?,
            result => result.map_err(pg(TABLE, "create"))?,
        };
        let (inserted, taken, running): (i64, i64, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        if inserted == 1 {
            return Ok(());
        }
        if taken > 0 {
            return Err(Error::Conflict {
                message: format!("experiment {id:?} already exists"),
            });
        }
        if let Some(running) = running {
            return Err(Error::Conflict {
                message: format!(
                    "experiment {running:?} is running; stop it before starting another"
                ),
            });
        }
        Err(Error::CapacityReached {
            what: "experiment",
            capacity: max,
        })
    }

    /// Stops an experiment (idempotent: a stopped one keeps its stop time); whether it exists.
    pub async fn stop(&self, id: &str, now_ms: i64) -> Result<bool, Error> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "UPDATE {} SET stopped_ms = COALESCE(stopped_ms, $2::bigint)
                     WHERE id = $1::text RETURNING id",
                    self.table
                ),
                &[&id, &now_ms],
            )
            .await
            .map_err(pg(TABLE, "stop"))?;
        Ok(row.is_some())
    }

    /// Deletes an experiment; whether it existed.
    pub async fn delete(&self, id: &str) -> Result<bool, Error> {
        let n = self
            .client
            .execute(
                &format!("DELETE FROM {} WHERE id = $1::text", self.table),
                &[&id],
            )
            .await
            .map_err(pg(TABLE, "delete"))?;
        Ok(n > 0)
    }

    /// Every experiment, in creation order. A definition this version cannot read is logged
    /// and left out.
    pub async fn all(&self) -> Result<Vec<StoredExperiment>, Error> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT id, salt, definition, created_ms, stopped_ms FROM {}
                     ORDER BY created_ms, id",
                    self.table
                ),
                &[],
            )
            .await
            .map_err(pg(TABLE, "load"))?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let id: String = r.get(0);
                let definition: String = r.get(2);
                match serde_json::from_str(&definition) {
                    Ok(def) => Some(StoredExperiment {
                        id,
                        salt: r.get(1),
                        def,
                        created_ms: r.get(3),
                        stopped_ms: r.get(4),
                    }),
                    Err(error) => {
                        tracing::error!(experiment = %id, %error, "unreadable experiment definition");
                        None
                    }
                }
            })
            .collect())
    }
}

impl Table for ExperimentStore {
    /// Connects (the connection runs on the current runtime) and creates the table if needed.
    async fn connect(url: &str, schema: &str) -> Result<ExperimentStore, Error> {
        let (client, table) = super::snapshots::connect(url, schema, TABLE, |table| {
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    id text PRIMARY KEY,
                    salt text NOT NULL,
                    definition text NOT NULL,
                    created_ms bigint NOT NULL,
                    stopped_ms bigint);
                 CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_one_running
                    ON {table} ((true)) WHERE stopped_ms IS NULL"
            )
        })
        .await
        .map_err(pg(TABLE, "connect"))?;
        Ok(ExperimentStore { client, table })
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// This node's connection to the cluster's experiments, and the lock that keeps its
/// registry's syncs in order: a sync reads the table and reconciles under it, so a snapshot
/// read earlier is never applied over one read later.
#[derive(Debug, Default)]
pub struct ExperimentSync {
    store: super::snapshots::Lazy<ExperimentStore>,
    sync: tokio::sync::Mutex<()>,
}

impl ExperimentSync {
    pub async fn store(&self, cluster: &Cluster) -> Result<Arc<ExperimentStore>, Error> {
        self.store.get(cluster).await
    }

    /// Held while the table is read and the registry reconciled with it.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.sync.lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use momentum_models::experiment::VariantDef;

    fn def() -> ExperimentDef {
        ExperimentDef {
            variants: vec![
                VariantDef::new("control", 1),
                VariantDef::new("treatment", 1),
            ],
            control: None,
        }
    }

    /// The table keeps what a single node's registry keeps: unique ids, one running
    /// experiment, a bounded number.
    #[tokio::test]
    async fn the_table_keeps_one_running_experiment_and_unique_ids() {
        let check = async |store: &ExperimentStore| {
            store.create("a", "a", &def(), 1, 3).await.expect("created");
            let taken = store.create("a", "a", &def(), 2, 3).await.unwrap_err();
            assert!(matches!(&taken, Error::Conflict { message } if message.contains("exists")));
            let running = store.create("b", "b", &def(), 2, 3).await.unwrap_err();
            assert!(
                matches!(&running, Error::Conflict { message } if message.contains("\"a\" is running")),
                "{running:?}"
            );
            assert!(store.stop("a", 5).await.expect("stop"));
            assert!(store.stop("a", 9).await.expect("stop again"));
            assert!(!store.stop("nope", 9).await.expect("stop"));
            store
                .create("b", "salt", &def(), 6, 3)
                .await
                .expect("created");
            store.stop("b", 7).await.expect("stop");
            store.create("c", "c", &def(), 8, 3).await.expect("created");
            assert!(matches!(
                store.create("d", "d", &def(), 9, 3).await.unwrap_err(),
                Error::Conflict { .. }
            ));
            store.stop("c", 9).await.expect("stop");
            assert!(matches!(
                store.create("d", "d", &def(), 9, 3).await.unwrap_err(),
                Error::CapacityReached { .. }
            ));
            let all = store.all().await.expect("load");
            let view: Vec<(&str, &str, i64, Option<i64>)> = all
                .iter()
                .map(|e| (e.id.as_str(), e.salt.as_str(), e.created_ms, e.stopped_ms))
                .collect();
            assert_eq!(
                view,
                [
                    ("a", "a", 1, Some(5)),
                    ("b", "salt", 6, Some(7)),
                    ("c", "c", 8, Some(9))
                ]
            );
            assert_eq!(all[0].def, def());
            assert!(store.delete("a").await.expect("delete"));
            assert!(!store.delete("a").await.expect("delete"));
            store
                .create("d", "d", &def(), 10, 3)
                .await
                .expect("room again");
        };
        crate::cluster::snapshots::tests::in_test_schema(check).await;
    }
}
