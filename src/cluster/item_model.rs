//! The learned item model in a cluster: built once per cluster, by the leader, and installed by
//! every other node (docs/operations.md, "Cluster mode").
//!
//! The leader is the node that serves partition 0 — owns it and has it `ready` — so the
//! broker's assignor decides who it is; there is no election of ours. Only the leader's
//! `item_model` job builds (`src/jobs/item_model.rs`, same triggers as on a single node). It
//! stores each model in PostgreSQL, next to the partition snapshots: one row of
//! `momentum_item_models`, the model encoded with external item ids
//! (`momentum_actors::ease::encode`), tagged with the catalogue progress its build started
//! from — the sum over partitions of the highest source offset whose item side the catalogue
//! had applied, plus one each ([`catalogue_progress`]). The upsert lets only a higher progress
//! replace the row: a stalled former leader, whose catalogue holds less, can never replace a
//! model built from more data. Each write bumps the row's version, and every node's copy of
//! the model carries it: the version is the cluster's.
//!
//! Every node, the leader too, reads the row every `cluster.item_model_poll_secs` and installs
//! a newer version whole through the engine's one publish path, mapping external ids to its
//! dense ids and interning the items it has not seen yet (its catalogue learns them from the
//! item deltas shortly after), so it scores exactly as the leader does.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use momentum_actors::ease::EaseModel;
use momentum_actors::Engine;

use super::snapshots::{pg, Lazy, Table};
use super::Cluster;
use crate::error::Error;

/// The table, created if missing.
const TABLE: &str = "momentum_item_models";
/// The row's key (one row: the learned item model).
const MODEL: &str = "ease";

/// The cluster's item model as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredModel {
    /// The cluster's version of the model (1 for the first one written).
    pub version: u64,
    /// The catalogue progress the build started from (the fence).
    pub progress: i64,
    /// The node that built it.
    pub node_id: String,
    pub body: Vec<u8>,
}

/// A connection to the item-model table.
#[derive(Debug)]
pub struct ModelStore {
    client: tokio_postgres::Client,
    table: String,
}

impl ModelStore {
    /// The stored model if its version is above `version`.
    pub async fn newer_than(&self, version: u64) -> Result<Option<StoredModel>, Error> {
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT version, progress, node_id, body FROM {}
                     WHERE name = $1 AND version > $2",
                    self.table
                ),
                &[&MODEL, &version],
            )
            .await
            .map_err(pg(TABLE, "load"))?;
        Ok(row.map(|r| StoredModel {
            version: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
            progress: r.get(1),
            node_id: r.get(2),
            body: r.get(3),
        }))
    }

    /// Stores a model built from `progress` unless the stored one was built from as much or
    /// more; the version it was stored under (the stored one's + 1, and above `live`, the
    /// version of the writer's live model), or `None` when fenced.
    pub async fn publish(
        &self,
        progress: i64,
        live: u64,
        node_id: &str,
        built_ms: i64,
        body: &[u8],
    ) -> Result<Option<u64>, Error> {
        let next = i64::try_from(live).unwrap_or(i64::MAX - 1) + 1;
        let row = self
            .client
            .query_opt(
                &format!(
                    "INSERT INTO {t} AS m (name, version, progress, node_id, built_ms, body)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (name) DO UPDATE
                       SET version = GREATEST(m.version + 1, EXCLUDED.version),
                           progress = EXCLUDED.progress, node_id = EXCLUDED.node_id,
                           built_ms = EXCLUDED.built_ms, body = EXCLUDED.body
                       WHERE m.progress < EXCLUDED.progress
                     RETURNING version",
                    t = self.table
                ),
                &[&MODEL, &next, &progress, &node_id, &built_ms, &body],
            )
            .await
            .map_err(pg(TABLE, "publish"))?;
        Ok(row.map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }
}

impl Table for ModelStore {
    /// Connects (the connection runs on the current runtime) and creates the table if needed.
    async fn connect(url: &str, schema: &str) -> Result<ModelStore, Error> {
        let (client, table) = super::snapshots::connect(url, schema, TABLE, |table| {
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    name text PRIMARY KEY,
                    version bigint NOT NULL,
                    progress bigint NOT NULL,
                    node_id text NOT NULL,
                    built_ms bigint NOT NULL,
                    body bytea NOT NULL)"
            )
        })
        .await
        .map_err(pg(TABLE, "connect"))?;
        Ok(ModelStore { client, table })
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// This node's side of the cluster's item model: where the live model came from, whether the
/// row was read since start, and the connection.
#[derive(Debug)]
pub struct ModelSync {
    /// The catalogue progress the live model was built from (-1: no model from the cluster).
    progress: AtomicI64,
    /// Whether the row was read at least once: the leader builds only then, so a node that
    /// just became leader does not build again what the cluster has.
    synced: AtomicBool,
    /// The node that built the live model.
    built_by: Mutex<Option<String>>,
    store: Lazy<ModelStore>,
}

impl Default for ModelSync {
    fn default() -> Self {
        ModelSync {
            progress: AtomicI64::new(-1),
            synced: AtomicBool::new(false),
            built_by: Mutex::new(None),
            store: Lazy::default(),
        }
    }
}

impl ModelSync {
    /// The catalogue progress the live model was built from, if it came from the cluster.
    pub fn progress(&self) -> Option<i64> {
        Some(self.progress.load(Ordering::Acquire)).filter(|&p| p >= 0)
    }

    /// Whether the stored model was read since start.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The node that built the live model.
    pub fn built_by(&self) -> Option<String> {
        self.built_by.lock().clone()
    }

    fn installed(&self, progress: i64, node_id: &str) {
        self.progress.store(progress, Ordering::Release);
        *self.built_by.lock() = Some(node_id.to_owned());
    }

    /// The connection, made now if there is none or it closed.
    async fn store(&self, cluster: &Cluster) -> Result<Arc<ModelStore>, Error> {
        self.store.get(cluster).await
    }
}

/// How much of the item side of the log the catalogue applied: the sum over partitions of
/// the highest source offset applied, plus one (0: nothing).
pub fn catalogue_progress(cluster: &Cluster) -> i64 {
    let progress = cluster.item_progress();
    (0..cluster.settings().partitions)
        .map(|p| progress.applied(p) + 1)
        .sum()
}

/// Reads the stored model and installs it if it is newer than the live one; the model
/// installed, if any. A body this node cannot decode is logged and left alone.
pub async fn sync(
    cluster: &Cluster,
    engine: &Arc<Engine>,
) -> Result<Option<Arc<EaseModel>>, Error> {
    let shared = cluster.item_model();
    let store = shared.store(cluster).await?;
    let live = engine.item_model().version;
    let Some(stored) = store.newer_than(live).await? else {
        shared.synced.store(true, Ordering::Release);
        return Ok(None);
    };
    let decoder = engine.clone();
    let (version, body) = (stored.version, stored.body);
    let decoded =
        tokio::task::spawn_blocking(move || decoder.decode_item_model(&body, version)).await;
    shared.synced.store(true, Ordering::Release);
    let model = match decoded {
        Ok(Ok(model)) => Arc::new(model),
        Ok(Err(error)) => {
            tracing::error!(%error, version, node = %stored.node_id, "the cluster's item model cannot be decoded; the live model stays");
            return Ok(None);
        }
        Err(error) => return Err(Error::failed("decoding the cluster's item model", error)),
    };
    if !engine.install_item_model(model.clone()) {
        return Ok(None);
    }
    shared.installed(stored.progress, &stored.node_id);
    cluster.metrics().item_model_installs.inc();
    tracing::info!(
        version,
        items = model.items(),
        node = %stored.node_id,
        progress = stored.progress,
        "item model installed from the cluster"
    );
    Ok(Some(model))
}

/// What a leader's build came to.
#[derive(Debug)]
pub enum Published {
    /// Stored, and live here with the cluster's version.
    Stored(Arc<EaseModel>),
    /// The stored model was built from as much data or more: this one was dropped (and the
    /// stored one installed if it is newer than the live one).
    Fenced,
}

/// The leader's build: fits the model from the catalogue on a thread of its own at the
/// lowest priority ([`crate::jobs::item_model::in_background`]), stores it
/// under the fence and, once stored, installs it with the version the store gave it.
pub async fn build_and_publish(
    cluster: &Cluster,
    engine: &Arc<Engine>,
    now_ms: i64,
) -> Result<Published, Error> {
    // Read before the counts are copied: the copy holds at least this much.
    let progress = catalogue_progress(cluster);
    let builder = engine.clone();
    let model =
        crate::jobs::item_model::in_background(move |lower| builder.fit_item_model(now_ms, lower))
            .await
            .map_err(|e| Error::failed("item model build did not finish", e))?
            .map_err(|e| Error::failed("item model build failed", e))?;
    // Encoded at the normal priority: it reads the item names under the interner's lock.
    let encoder = engine.clone();
    let (mut model, body) = tokio::task::spawn_blocking(move || {
        let body = encoder.encode_item_model(&model);
        (model, body)
    })
    .await
    .map_err(|e| Error::failed("encoding the item model panicked", e))?;
    let shared = cluster.item_model();
    let store = shared.store(cluster).await?;
    let node_id = &cluster.settings().node_id;
    let live = engine.item_model().version;
    match store
        .publish(progress, live, node_id, model.built_ms, &body)
        .await?
    {
        Some(version) => {
            model.version = version;
            let model = Arc::new(model);
            if engine.install_item_model(model.clone()) {
                shared.installed(progress, node_id);
            }
            Ok(Published::Stored(model))
        }
        None => {
            cluster.metrics().item_model_fenced.inc();
            tracing::info!(
                progress,
                "item model fenced: the cluster's was built from as much data or more"
            );
            sync(cluster, engine).await?;
            Ok(Published::Fenced)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a build from more data replaces the stored model; each write bumps the version.
    #[tokio::test]
    async fn the_fence_keeps_the_model_built_from_more_data() {
        let check = async |store: &ModelStore| {
            assert_eq!(store.newer_than(0).await.expect("load"), None);
            assert_eq!(
                store.publish(10, 0, "a", 1, b"first").await.expect("write"),
                Some(1)
            );
            // A stalled former leader, built from less or as much: refused.
            assert_eq!(
                store.publish(9, 0, "b", 2, b"older").await.expect("write"),
                None
            );
            assert_eq!(
                store.publish(10, 5, "b", 2, b"same").await.expect("write"),
                None
            );
            // More data: stored under the next version.
            assert_eq!(
                store.publish(11, 1, "c", 3, b"newer").await.expect("write"),
                Some(2)
            );
            let stored = store
                .newer_than(1)
                .await
                .expect("load")
                .expect("a newer one");
            assert_eq!(
                stored,
                StoredModel {
                    version: 2,
                    progress: 11,
                    node_id: "c".into(),
                    body: b"newer".to_vec(),
                }
            );
            assert_eq!(store.newer_than(2).await.expect("load"), None);
            // A writer whose live model is ahead of the row (the row was lost): the version
            // still only moves forward.
            assert_eq!(
                store.publish(12, 9, "a", 4, b"ahead").await.expect("write"),
                Some(10)
            );
        };
        crate::cluster::snapshots::tests::in_test_schema(check).await;
    }
}
