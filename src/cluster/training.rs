//! The predictive models in a cluster: trained once per cluster, by the leader, from the
//! `events` topic, and installed by every node (docs/operations.md, "Predictive models in a
//! cluster").
//!
//! Cluster mode writes no local event log: the topic is the log. The leader's `training` job
//! ([`crate::jobs::training`]) therefore reads the training window from the topic itself
//! ([`read_window`]): every partition from its start up to its end as the run began, folded the
//! way the owners apply it ([`WindowFold`]) — a repeated `event_id` of a user counts once, an
//! erasure record takes away what came before it of that user, profile records are not events.
//!
//! The versions it trains go to PostgreSQL, next to the partition snapshots: the table
//! `momentum_model_versions` ([`VersionStore`]), numbered per model by the cluster. A version is
//! stored only as the next number and only if no stored version was trained from more of the
//! log (the sum of the partitions' ends the run read up to): a stalled former leader never
//! stores over its successor. Every node, the leader too, copies new versions into its local
//! store under the same numbers and puts the promoted ones in service
//! ([`crate::analytics::Analytics::follow_cluster`]), so every node serves the same models and
//! lists the same versions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use momentum_models::events::EventKind;
use momentum_models::training::HistoryBuilder;

use super::{Cluster, ClusterSettings, LoggedEvent, ERASE_KIND, PROFILE_KIND};
use crate::error::Error;

/// The table, created if missing.
const TABLE: &str = "momentum_model_versions";

/// The longest a read of the training window may take.
pub const READ_LIMIT: Duration = Duration::from_secs(600);

/// The events one user has in the window, in log order, and the event ids seen of them.
#[derive(Debug, Default)]
struct UserLog {
    events: Vec<(Option<String>, String, i64)>,
    ids: HashSet<String>,
}

/// The records of the events topic folded into the histories the trainer reads, as the owners
/// apply them: push each partition's records in the partition's order (partitions in any order:
/// a user's records are all in one partition).
#[derive(Debug, Default)]
pub struct WindowFold {
    users: HashMap<String, UserLog>,
    from_ms: i64,
    to_ms: i64,
    /// Events in the window.
    pub events: usize,
    /// Events not counted because their user already had their `event_id`.
    pub duplicates: usize,
    /// Erasure records that took away a user's events.
    pub erased: usize,
}

impl WindowFold {
    /// A fold keeping events whose time is in `[from_ms, to_ms]`.
    pub fn new(from_ms: i64, to_ms: i64) -> WindowFold {
        WindowFold {
            from_ms,
            to_ms,
            ..WindowFold::default()
        }
    }

    /// Adds one record. Ids of events outside the window are remembered too: the owner
    /// refuses their repeats as well.
    pub fn push(&mut self, record: LoggedEvent) {
        match record.kind.as_str() {
            PROFILE_KIND => {}
            ERASE_KIND => {
                if let Some(log) = self.users.remove(&record.user_id) {
                    self.events -= log.events.len();
                    self.erased += 1;
                }
            }
            _ => self.push_event(
                record.user_id,
                record.event_id,
                record.item_id,
                record.kind,
                record.ts_ms,
            ),
        }
    }

    /// Adds one event (a single node's log holds events only, repeats included: it is
    /// written before the events are applied).
    pub fn push_event(
        &mut self,
        user_id: String,
        event_id: Option<String>,
        item_id: Option<String>,
        kind: String,
        ts_ms: i64,
    ) {
        if EventKind::parse(&kind).is_none() {
            return;
        }
        let log = self.users.entry(user_id).or_default();
        if let Some(id) = event_id {
            if !log.ids.insert(id) {
                self.duplicates += 1;
                return;
            }
        }
        if (self.from_ms..=self.to_ms).contains(&ts_ms) {
            log.events.push((item_id, kind, ts_ms));
            self.events += 1;
        }
    }

    /// The trainer's histories: users in id order, each user's events in log order (the order
    /// a single node's log holds them in, user by user).
    pub fn into_builder(self) -> HistoryBuilder {
        let mut users: Vec<(String, UserLog)> = self
            .users
            .into_iter()
            .filter(|(_, log)| !log.events.is_empty())
            .collect();
        users.sort_by(|a, b| a.0.cmp(&b.0));
        let mut builder = HistoryBuilder::default();
        for (user, log) in users {
            for (item, kind, ts_ms) in log.events {
                builder.push(&user, item.as_deref(), &kind, ts_ms);
            }
        }
        builder
    }
}

/// What [`read_window`] read.
#[derive(Debug)]
pub struct Window {
    pub fold: WindowFold,
    /// The sum over partitions of the offset the read ended at: how much of the log it covers
    /// (the fence of [`VersionStore::publish`]).
    pub progress: i64,
    /// Records read.
    pub records: u64,
}

/// Why a read of the window stopped short.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the events topic: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("the training window holds more than trainer.max_events = {0} events")]
    TooManyEvents(usize),
    #[error("reading the events topic took longer than {0:?}")]
    TooSlow(Duration),
}

/// Reads every partition of the events topic from its start to its end as of now, folding
/// the events whose time is in `[from_ms, to_ms]`. Blocking: run it on a thread of its own.
/// Bounded by `max_events` (events in the window) and [`READ_LIMIT`].
pub fn read_window(
    settings: &ClusterSettings,
    from_ms: i64,
    to_ms: i64,
    max_events: usize,
) -> Result<Window, ReadError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        // Assigned, not subscribed: the id only names the client to the broker.
        .set(
            "group.id",
            format!("{}-trainer-{}", settings.group_id, settings.node_id),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", settings.fetch_wait_ms.to_string())
        .create()?;
    let topic = settings.events_topic.as_str();
    let started = Instant::now();
    // Per partition: the end to reach (the log's end now) and the next offset to read.
    let mut ends = Vec::with_capacity(settings.partitions as usize);
    let mut next = Vec::with_capacity(settings.partitions as usize);
    let mut assignment = TopicPartitionList::new();
    for p in 0..settings.partitions as i32 {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        ends.push(high);
        next.push(low);
        if high > low {
            assignment.add_partition_offset(topic, p, Offset::Offset(low))?;
        }
    }
    let progress = ends.iter().sum();
    let mut fold = WindowFold::new(from_ms, to_ms);
    let mut records = 0u64;
    if assignment.count() > 0 {
        consumer.assign(&assignment)?;
    }
    while next.iter().zip(&ends).any(|(n, e)| n < e) {
        if started.elapsed() > READ_LIMIT {
            return Err(ReadError::TooSlow(READ_LIMIT));
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        let p = message.partition() as usize;
        let offset = message.offset();
        if p >= ends.len() || offset < next[p] || offset >= ends[p] {
            continue;
        }
        next[p] = offset + 1;
        records += 1;
        match message
            .payload()
            .and_then(|bytes| serde_json::from_slice::<LoggedEvent>(bytes).ok())
        {
            Some(record) => fold.push(record),
            None => tracing::warn!(
                partition = p,
                offset,
                "training skips a record that is not a momentum event"
            ),
        }
        if fold.events > max_events {
            return Err(ReadError::TooManyEvents(max_events));
        }
    }
    Ok(Window {
        fold,
        progress,
        records,
    })
}

fn pg(context: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::failed(format!("cluster model versions: {context}"), e)
}

/// A model version as the cluster stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterVersion {
    pub name: String,
    pub version: u64,
    /// How much of the log its training read ([`Window::progress`]).
    pub progress: i64,
    /// The node that trained it.
    pub node_id: String,
    pub created_ms: i64,
    pub parent_version: Option<u64>,
    pub metadata: serde_json::Value,
    /// The sealed bundle.
    pub bytes: Vec<u8>,
}

/// A connection to the cluster's model versions.
pub struct VersionStore {
    client: tokio_postgres::Client,
    table: String,
}

impl std::fmt::Debug for VersionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionStore")
            .field("table", &self.table)
            .finish()
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl VersionStore {
    /// Connects (the connection runs on the current runtime) and creates the table if needed.
    pub async fn connect(url: &str, schema: &str) -> Result<VersionStore, Error> {
        let (client, table) = super::snapshots::connect(url, schema, TABLE, |table| {
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    name text NOT NULL,
                    version bigint NOT NULL,
                    progress bigint NOT NULL,
                    node_id text NOT NULL,
                    created_ms bigint NOT NULL,
                    parent_version bigint,
                    metadata text NOT NULL,
                    bytes bytea NOT NULL,
                    PRIMARY KEY (name, version))"
            )
        })
        .await
        .map_err(pg("connect"))?;
        Ok(VersionStore { client, table })
    }

    /// The number the next version of `name` gets.
    pub async fn next_version(&self, name: &str) -> Result<u64, Error> {
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT COALESCE(MAX(version), 0) FROM {} WHERE name = $1",
                    self.table
                ),
                &[&name],
            )
            .await
            .map_err(pg("next version"))?;
        Ok(to_u64(row.get::<_, i64>(0)) + 1)
    }

    /// Stores `v` if its number is the next one and no stored version of the model was
    /// trained from more of the log; whether it was stored.
    pub async fn publish(&self, v: &ClusterVersion) -> Result<bool, Error> {
        let metadata = serde_json::to_string(&v.metadata).map_err(|source| Error::Json {
            what: "model metadata".into(),
            source,
        })?;
        let row = self
            .client
            .query_opt(
                &format!(
                    "INSERT INTO {t} (name, version, progress, node_id, created_ms,
                                      parent_version, metadata, bytes)
                     SELECT $1::text, $2::bigint, $3::bigint, $4::text, $5::bigint, $6::bigint,
                            $7::text, $8::bytea
                     WHERE NOT EXISTS (SELECT 1 FROM {t} WHERE name = $1::text AND progress > $3::bigint)
                       AND COALESCE((SELECT MAX(version) FROM {t} WHERE name = $1::text), 0)
                           = $2::bigint - 1
                     ON CONFLICT DO NOTHING
                     RETURNING version",
                    t = self.table
                ),
                &[
                    &v.name,
                    &to_i64(v.version),
                    &v.progress,
                    &v.node_id,
                    &v.created_ms,
                    &v.parent_version.map(to_i64),
                    &metadata,
                    &v.bytes,
                ],
            )
            .await
            .map_err(pg("publish"))?;
        Ok(row.is_some())
    }

    /// The versions of `name` above `version`, oldest first, at most `limit`.
    pub async fn after(
        &self,
        name: &str,
        version: u64,
        limit: usize,
    ) -> Result<Vec<ClusterVersion>, Error> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT version, progress, node_id, created_ms, parent_version, metadata,
                            bytes
                     FROM {} WHERE name = $1 AND version > $2 ORDER BY version LIMIT $3",
                    self.table
                ),
                &[
                    &name,
                    &to_i64(version),
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(pg("load"))?;
        rows.into_iter()
            .map(|r| {
                let metadata: String = r.get(5);
                Ok(ClusterVersion {
                    name: name.to_owned(),
                    version: to_u64(r.get(0)),
                    progress: r.get(1),
                    node_id: r.get(2),
                    created_ms: r.get(3),
                    parent_version: r.get::<_, Option<i64>>(4).map(to_u64),
                    metadata: serde_json::from_str(&metadata).map_err(|source| Error::Json {
                        what: "stored model metadata".into(),
                        source,
                    })?,
                    bytes: r.get(6),
                })
            })
            .collect()
    }

    /// Whether the connection is gone (the next use reconnects).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// This node's connection to the cluster's model versions, made on first use and again once
/// it closed.
#[derive(Debug, Default)]
pub struct VersionSync {
    store: Mutex<Option<Arc<VersionStore>>>,
}

impl VersionSync {
    pub async fn store(&self, cluster: &Cluster) -> Result<Arc<VersionStore>, Error> {
        if let Some(store) = self.store.lock().clone().filter(|s| !s.is_closed()) {
            return Ok(store);
        }
        let settings = cluster.settings();
        let url = settings.snapshot_url().ok_or_else(|| Error::Config {
            message: "cluster.snapshot_url (or DATABASE_URL) is not set".into(),
        })?;
        let store = Arc::new(VersionStore::connect(&url, &settings.snapshot_schema).await?);
        *self.store.lock() = Some(store.clone());
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<&str>, user: &str, item: &str, kind: &str, ts_ms: i64) -> LoggedEvent {
        LoggedEvent {
            event_id: id.map(str::to_owned),
            user_id: user.into(),
            item_id: Some(item.into()),
            kind: kind.into(),
            value: None,
            ts_ms,
            profile: None,
            recommendation_id: None,
        }
    }

    fn histories(fold: WindowFold) -> Vec<(String, Vec<i64>)> {
        fold.into_builder()
            .finish()
            .into_iter()
            .map(|(user, h)| (user, h.events.iter().map(|a| a.ts_ms).collect()))
            .collect()
    }

    /// Repeated ids count once, an erasure takes away what came before it (and its ids),
    /// profiles are no events, and only the window's events are kept.
    #[test]
    fn the_fold_applies_the_log_as_the_owners_do() {
        let mut fold = WindowFold::new(100, 1_000);
        fold.push(event(Some("e1"), "a", "g1", "start", 100));
        fold.push(event(Some("e1"), "a", "g1", "start", 150));
        fold.push(event(None, "a", "g1", "checkin", 200));
        fold.push(event(None, "a", "g1", "checkin", 200));
        // Before the window: not kept, but its id is known.
        fold.push(event(Some("old"), "b", "g2", "start", 50));
        fold.push(event(Some("old"), "b", "g2", "checkin", 300));
        fold.push(event(Some("b1"), "b", "g2", "checkin", 400));
        // After the window.
        fold.push(event(Some("b2"), "b", "g2", "checkin", 2_000));
        fold.push(event(Some("c1"), "c", "g3", "start", 300));
        fold.push(LoggedEvent::erasure("c", 350));
        fold.push(event(Some("c1"), "c", "g3", "start", 500));
        fold.push(LoggedEvent::profile("d", Default::default(), 500));
        fold.push(event(Some("x"), "d", "g4", "no-such-kind", 500));
        fold.push(LoggedEvent::erasure("nobody", 600));
        assert_eq!(fold.duplicates, 2);
        assert_eq!(fold.erased, 1);
        assert_eq!(fold.events, 5);
        assert_eq!(
            histories(fold),
            vec![
                ("a".to_string(), vec![100, 200, 200]),
                ("b".to_string(), vec![400]),
                ("c".to_string(), vec![500]),
            ]
        );
    }

    /// A version is stored only as the next number, and not over one trained from more of the
    /// log.
    #[tokio::test]
    async fn only_the_next_version_from_as_much_of_the_log_is_stored() {
        let (url, schema) = crate::cluster::snapshots::tests::test_schema();
        let store = VersionStore::connect(&url, &schema)
            .await
            .expect("PostgreSQL at DATABASE_URL is required");
        let version = |version: u64, progress: i64, node: &str| ClusterVersion {
            name: "churn".into(),
            version,
            progress,
            node_id: node.into(),
            created_ms: 7,
            parent_version: version.checked_sub(1).filter(|&v| v > 0),
            metadata: serde_json::json!({ "promoted": true, "node": node }),
            bytes: node.as_bytes().to_vec(),
        };
        let outcome = async {
            assert_eq!(store.next_version("churn").await.expect("next"), 1);
            assert!(!store.publish(&version(2, 10, "a")).await.expect("write"));
            assert!(store.publish(&version(1, 10, "a")).await.expect("write"));
            // The same number again, from another node: refused.
            assert!(!store.publish(&version(1, 20, "b")).await.expect("write"));
            // A stalled former leader that read less of the log: refused.
            assert!(!store.publish(&version(2, 9, "b")).await.expect("write"));
            assert!(store.publish(&version(2, 10, "c")).await.expect("write"));
            assert_eq!(store.next_version("churn").await.expect("next"), 3);
            assert_eq!(store.next_version("success").await.expect("next"), 1);
            let stored = store.after("churn", 0, 10).await.expect("load");
            assert_eq!(stored, vec![version(1, 10, "a"), version(2, 10, "c")]);
            assert_eq!(
                store.after("churn", 1, 10).await.expect("load"),
                vec![version(2, 10, "c")]
            );
            assert!(store.after("churn", 2, 10).await.expect("load").is_empty());
        };
        let outcome =
            futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(outcome)).await;
        crate::cluster::snapshots::tests::drop_test_schema(&url, &schema).await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}
