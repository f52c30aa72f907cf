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
//! ([`crate::analytics::copy_cluster_versions`]), so every node serves the same models and
//! lists the same versions.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use momentum_models::events::EventKind;
use momentum_models::hash::md5_u64;
use momentum_models::training::HistoryBuilder;

use super::snapshots::{pg, Table};
use super::{ClusterSettings, LoggedEvent, ERASE_KIND, PROFILE_KIND};
use crate::error::Error;

/// The tables, created if missing: the model versions, and which node scored churn for a
/// partition on a day.
const TABLE: &str = "momentum_model_versions";
const CHURN_TABLE: &str = "momentum_churn_days";

/// The longest a read of the training window may take.
pub const READ_LIMIT: Duration = Duration::from_secs(600);

/// The events one user has in the window, in log order (time, item + 1 or 0 for none, kind),
/// and the md5 of their event ids.
#[derive(Debug, Default)]
struct UserLog {
    events: Vec<(i64, u32, EventKind)>,
    ids: HashSet<u64>,
}

/// The records of the events topic folded into the histories the trainer reads, as the owners
/// apply them: push each partition's records in the partition's order (partitions in any order:
/// a user's records are all in one partition). Compact — about 16 bytes per event kept and 8
/// per event id, items interned — and holding only the window's events (a repeat carries its
/// original's time), so `trainer.max_events` bounds it.
#[derive(Debug, Default)]
pub struct WindowFold {
    users: HashMap<String, UserLog>,
    items: HashMap<String, u32>,
    item_names: Vec<String>,
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

    /// Adds one record.
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
                record.event_id.as_deref(),
                record.item_id,
                &record.kind,
                record.ts_ms,
            ),
        }
    }

    /// Adds one event (a single node's log holds events only, repeats included: it is
    /// written before the events are applied).
    pub fn push_event(
        &mut self,
        user_id: String,
        event_id: Option<&str>,
        item_id: Option<String>,
        kind: &str,
        ts_ms: i64,
    ) {
        let Some(kind) = EventKind::parse(kind) else {
            return;
        };
        if !(self.from_ms..=self.to_ms).contains(&ts_ms) {
            return;
        }
        let log = self.users.entry(user_id).or_default();
        if let Some(id) = event_id {
            if !log.ids.insert(md5_u64(&[id.as_bytes()])) {
                self.duplicates += 1;
                return;
            }
        }
        let item = match item_id {
            None => 0,
            Some(name) => match self.items.get(&name) {
                Some(&i) => i,
                None => {
                    self.item_names.push(name.clone());
                    let i = self.item_names.len() as u32;
                    self.items.insert(name, i);
                    i
                }
            },
        };
        log.events.push((ts_ms, item, kind));
        self.events += 1;
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
            for (ts_ms, item, kind) in log.events {
                let item = item
                    .checked_sub(1)
                    .map(|i| self.item_names[i as usize].as_str());
                builder.push(&user, item, kind.as_str(), ts_ms);
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
    let consumer: BaseConsumer = settings
        .assigned_client("trainer")
        .set("enable.partition.eof", "false")
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
        let message = match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Ok(message)) => message,
            // The client retries on its own; what it reports is logged, and the deadline bounds
            // the wait.
            Some(Err(error)) => {
                tracing::warn!(%error, "reading the training window");
                continue;
            }
        };
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
        if next[p] == ends[p] {
            // Read to its end: what is logged there since is not fetched.
            let mut done = TopicPartitionList::new();
            done.add_partition(topic, p as i32);
            consumer.pause(&done)?;
        }
    }
    Ok(Window {
        fold,
        progress,
        records,
    })
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

/// A connection to the cluster's model versions and churn-scoring days.
#[derive(Debug)]
pub struct VersionStore {
    client: tokio_postgres::Client,
    table: String,
    churn_table: String,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl VersionStore {
    /// Claims the churn scoring of `partitions` on `day` (`YYYY-MM-DD`) for `node_id`; the
    /// partitions claimed: those no other node scored that day. Claims of days before
    /// `keep_from` are forgotten.
    pub async fn claim_churn_day(
        &self,
        partitions: &[u32],
        day: &str,
        keep_from: &str,
        node_id: &str,
        now_ms: i64,
    ) -> Result<Vec<u32>, Error> {
        let t = &self.churn_table;
        self.client
            .execute(
                &format!("DELETE FROM {t} WHERE day < $1::text"),
                &[&keep_from],
            )
            .await
            .map_err(pg(CHURN_TABLE, "prune"))?;
        let partitions: Vec<i32> = partitions.iter().map(|&p| p as i32).collect();
        let rows = self
            .client
            .query(
                &format!(
                    "INSERT INTO {t} AS c (partition, day, node_id, claimed_ms)
                     SELECT p, $2::text, $3::text, $4::bigint FROM unnest($1::int[]) AS p
                     ON CONFLICT (partition, day) DO UPDATE SET claimed_ms = c.claimed_ms
                       WHERE c.node_id = EXCLUDED.node_id
                     RETURNING partition"
                ),
                &[&partitions, &day, &node_id, &now_ms],
            )
            .await
            .map_err(pg(CHURN_TABLE, "claim"))?;
        let mut claimed: Vec<u32> = rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect();
        claimed.sort_unstable();
        Ok(claimed)
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
            .map_err(pg(TABLE, "publish"))?;
        Ok(row.is_some())
    }

    /// The numbers of the stored versions of `name`, in order.
    pub async fn numbers(&self, name: &str) -> Result<Vec<u64>, Error> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT version FROM {} WHERE name = $1 ORDER BY version",
                    self.table
                ),
                &[&name],
            )
            .await
            .map_err(pg(TABLE, "list"))?;
        Ok(rows.iter().map(|r| to_u64(r.get(0))).collect())
    }

    /// Version `version` of `name`, if stored.
    pub async fn get(&self, name: &str, version: u64) -> Result<Option<ClusterVersion>, Error> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT progress, node_id, created_ms, parent_version, metadata, bytes
                     FROM {} WHERE name = $1 AND version = $2",
                    self.table
                ),
                &[&name, &to_i64(version)],
            )
            .await
            .map_err(pg(TABLE, "load"))?;
        row.map(|r| {
            let metadata: String = r.get(4);
            Ok(ClusterVersion {
                name: name.to_owned(),
                version,
                progress: r.get(0),
                node_id: r.get(1),
                created_ms: r.get(2),
                parent_version: r.get::<_, Option<i64>>(3).map(to_u64),
                metadata: serde_json::from_str(&metadata).map_err(|source| Error::Json {
                    what: "stored model metadata".into(),
                    source,
                })?,
                bytes: r.get(5),
            })
        })
        .transpose()
    }
}

impl Table for VersionStore {
    /// Connects (the connection runs on the current runtime) and creates the table if needed.
    async fn connect(url: &str, schema: &str) -> Result<VersionStore, Error> {
        let churn_table = super::snapshots::qualified(schema, CHURN_TABLE);
        let (client, table) = super::snapshots::connect(url, schema, TABLE, |table| {
            format!(
                "CREATE TABLE IF NOT EXISTS {churn_table} (
                    partition integer NOT NULL,
                    day text NOT NULL,
                    node_id text NOT NULL,
                    claimed_ms bigint NOT NULL,
                    PRIMARY KEY (partition, day));
                 CREATE TABLE IF NOT EXISTS {table} (
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
        .map_err(pg(TABLE, "connect"))?;
        Ok(VersionStore {
            client,
            table,
            churn_table,
        })
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

/// This node's connection to the cluster's model versions and churn days.
pub type VersionSync = super::snapshots::Lazy<VersionStore>;

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

    /// An event as the test compares it: time, kind, whether it names a goal.
    type Seen = (i64, EventKind, bool);

    /// Each user's events.
    fn histories(fold: WindowFold) -> Vec<(String, Vec<Seen>)> {
        fold.into_builder()
            .finish()
            .into_iter()
            .map(|(user, h)| {
                let events = h.events.iter().map(|a| (a.ts_ms, a.kind, a.goal.is_some()));
                (user, events.collect())
            })
            .collect()
    }

    /// Repeated ids count once, an erasure takes away what came before it (and its ids),
    /// profiles are no events, and only the window's events are kept, with their items.
    #[test]
    fn the_fold_applies_the_log_as_the_owners_do() {
        let mut fold = WindowFold::new(100, 1_000);
        fold.push(event(Some("e1"), "a", "g1", "start", 100));
        fold.push(event(Some("e1"), "a", "g1", "start", 150));
        fold.push(event(None, "a", "g1", "checkin", 200));
        fold.push(event(None, "a", "g1", "checkin", 200));
        fold.push(LoggedEvent {
            item_id: None,
            ..event(None, "a", "", "app_open", 250)
        });
        // Before the window, and its repeat (a repeat carries its original's time).
        fold.push(event(Some("old"), "b", "g2", "start", 50));
        fold.push(event(Some("old"), "b", "g2", "start", 50));
        fold.push(event(Some("b1"), "b", "g2", "checkin", 400));
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
        assert_eq!(fold.events, 6);
        let (start, checkin) = (EventKind::Start, EventKind::Checkin);
        assert_eq!(
            histories(fold),
            vec![
                (
                    "a".to_string(),
                    vec![
                        (100, start, true),
                        (200, checkin, true),
                        (200, checkin, true),
                        (250, EventKind::AppOpen, false)
                    ]
                ),
                ("b".to_string(), vec![(400, checkin, true)]),
                ("c".to_string(), vec![(500, start, true)]),
            ]
        );
    }

    /// A version is stored only as the next number, and not over one trained from more of the
    /// log.
    #[tokio::test]
    async fn only_the_next_version_from_as_much_of_the_log_is_stored() {
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
        let check = async |store: &VersionStore| {
            assert!(store.numbers("churn").await.expect("list").is_empty());
            assert!(!store.publish(&version(2, 10, "a")).await.expect("write"));
            assert!(store.publish(&version(1, 10, "a")).await.expect("write"));
            // The same number again, from another node: refused.
            assert!(!store.publish(&version(1, 20, "b")).await.expect("write"));
            // A stalled former leader that read less of the log: refused.
            assert!(!store.publish(&version(2, 9, "b")).await.expect("write"));
            assert!(store.publish(&version(2, 10, "c")).await.expect("write"));
            assert_eq!(store.numbers("churn").await.expect("list"), [1, 2]);
            assert!(store.numbers("success").await.expect("list").is_empty());
            assert_eq!(
                store.get("churn", 1).await.expect("load"),
                Some(version(1, 10, "a"))
            );
            assert_eq!(
                store.get("churn", 2).await.expect("load"),
                Some(version(2, 10, "c"))
            );
            assert_eq!(store.get("churn", 3).await.expect("load"), None);
            // Churn days: a partition's day is the first claimer's; it may score it again.
            let claim = |partitions: &'static [u32], day: &'static str, node: &'static str| {
                store.claim_churn_day(partitions, day, "2026-01-01", node, 1)
            };
            assert_eq!(
                claim(&[0, 1, 2], "2026-02-01", "a").await.expect("claim"),
                [0, 1, 2]
            );
            assert_eq!(claim(&[2, 3], "2026-02-01", "b").await.expect("claim"), [3]);
            assert_eq!(
                claim(&[1, 2, 3], "2026-02-01", "a").await.expect("claim"),
                [1, 2]
            );
            assert_eq!(
                claim(&[2, 3], "2026-02-02", "b").await.expect("claim"),
                [2, 3]
            );
            // Days before `keep_from` are forgotten.
            let pruned = store
                .claim_churn_day(&[0], "2026-02-03", "2026-02-02", "b", 2)
                .await
                .expect("claim");
            assert_eq!(pruned, [0]);
            let left = store
                .client
                .query_one(&format!("SELECT count(*) FROM {}", store.churn_table), &[])
                .await
                .expect("count")
                .get::<_, i64>(0);
            assert_eq!(left, 3, "the 2026-02-01 claims are gone");
        };
        crate::cluster::snapshots::tests::in_test_schema(check).await;
    }
}
