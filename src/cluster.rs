//! Cluster mode: several nodes share the users through a Kafka consumer group
//! (docs/operations.md, "Cluster mode").
//!
//! The `events` topic is the event log. A user belongs to partition `md5(user_id) mod P`
//! (`models::hash::md5_bucket`, the same bucket function the shards use); `POST /v1/events` on
//! any node produces each event to its user's partition (`acks=all`, idempotent producer) and
//! answers once the broker confirmed every event. Every node joins one consumer group with the
//! cooperative-sticky assignor and a stable `group.instance.id`: the broker decides who is
//! alive and the assignor who owns which partitions — no membership code of ours. A node
//! applies the events of the partitions it owns to its actors ([`consumer`]); a partition is
//! served only once its replay caught up with the end of the log as it was when the
//! partition was assigned, and a revoked partition stops being served at once and its rows
//! are dropped.
//!
//! Optionally, the nodes bridge a topic of the operator's into the events topic
//! ([`bridge`]).
//!
//! [`Cluster`] is what the routes see: the producer, the state of every partition, and the
//! gate a per-user read passes ([`Cluster::check_user`]).

pub mod bridge;
pub mod consumer;
pub mod experiments;
pub mod item_model;
pub mod items;
pub mod settings;
pub mod snapshots;
pub mod training;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

use momentum_actors::engine::NewEvent;
use momentum_actors::index::UserProfile;
use momentum_models::events::EventKind;
use momentum_models::hash::md5_bucket;

use crate::error::Error;
use crate::metrics::ClusterMetrics;
pub use settings::ClusterSettings;

/// Starts a named thread that runs `body` with its own current-thread tokio runtime (the
/// cluster's Kafka loops block on their consumer and call the engine's async API from there).
fn spawn_with_runtime(
    name: &str,
    body: impl FnOnce(&tokio::runtime::Runtime) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let thread = name.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => body(&runtime),
                Err(error) => tracing::error!(%error, thread, "cannot start a runtime"),
            }
        })
}

/// Milliseconds since the Unix epoch, by this machine's clock.
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The partition of a user: `md5(user_id) mod partitions`.
pub fn partition_of(user_id: &str, partitions: u32) -> u32 {
    // The remainder is below `partitions`, so the narrowing is lossless.
    md5_bucket(&[user_id.as_bytes()], u64::from(partitions)) as u32
}

/// What this node does with a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionState {
    /// Another node owns it (or nobody yet).
    NotOwned,
    /// Assigned here; replaying the log. Its reads answer `503 not_ready`.
    Restoring,
    /// Assigned here and caught up: served.
    Ready,
}

impl PartitionState {
    fn from_u8(v: u8) -> PartitionState {
        match v {
            1 => PartitionState::Restoring,
            2 => PartitionState::Ready,
            _ => PartitionState::NotOwned,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            PartitionState::NotOwned => 0,
            PartitionState::Restoring => 1,
            PartitionState::Ready => 2,
        }
    }
}

/// An event as it travels on the `events` topic (the validated event, in external ids).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f32>,
    pub ts_ms: i64,
    /// A [`PROFILE_KIND`] record: the user's new profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<UserProfile>,
    /// The recommendation the event responds to: the owner attributes it to an experiment's
    /// variant as it applies it ([`experiments`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation_id: Option<String>,
}

/// The `kind` of an events-topic record that replaces a user's profile (`PUT /v1/users/{id}`).
pub const PROFILE_KIND: &str = "profile";
/// The `kind` of an events-topic record that erases a user (`DELETE /v1/users/{id}`).
pub const ERASE_KIND: &str = "erase";

/// What a record of the events topic asks of its user's owner, in the partition's order.
#[derive(Debug, Clone, PartialEq)]
pub enum Logged {
    /// An event and the recommendation it responds to.
    Event(NewEvent, Option<String>),
    Profile {
        user_id: String,
        profile: UserProfile,
    },
    Erase {
        user_id: String,
    },
}

impl LoggedEvent {
    /// A user's new profile, as its record in the events topic.
    pub fn profile(user_id: &str, profile: UserProfile, ts_ms: i64) -> LoggedEvent {
        LoggedEvent {
            event_id: None,
            user_id: user_id.to_owned(),
            item_id: None,
            kind: PROFILE_KIND.to_owned(),
            value: None,
            ts_ms,
            profile: Some(profile),
            recommendation_id: None,
        }
    }

    /// A user's erasure, as its record in the events topic.
    pub fn erasure(user_id: &str, ts_ms: i64) -> LoggedEvent {
        LoggedEvent {
            event_id: None,
            user_id: user_id.to_owned(),
            item_id: None,
            kind: ERASE_KIND.to_owned(),
            value: None,
            ts_ms,
            profile: None,
            recommendation_id: None,
        }
    }

    /// What the record asks (`None`: a kind this version does not know, or a profile record
    /// without its profile); events get `index` in their batch.
    pub fn into_logged(self, index: usize) -> Option<Logged> {
        match self.kind.as_str() {
            PROFILE_KIND => Some(Logged::Profile {
                user_id: self.user_id,
                profile: self.profile?,
            }),
            ERASE_KIND => Some(Logged::Erase {
                user_id: self.user_id,
            }),
            _ => {
                let recommendation_id = self.recommendation_id.clone();
                self.into_event(index)
                    .map(|event| Logged::Event(event, recommendation_id))
            }
        }
    }

    pub fn from_event(e: &NewEvent) -> LoggedEvent {
        LoggedEvent {
            event_id: e.event_id.clone(),
            user_id: e.user_id.clone(),
            item_id: e.item_id.clone(),
            kind: e.kind.as_str().to_owned(),
            value: e.value,
            ts_ms: e.ts_ms,
            profile: None,
            recommendation_id: None,
        }
    }

    /// Back to an engine event (`None`: a kind this version does not know).
    pub fn into_event(self, index: usize) -> Option<NewEvent> {
        Some(NewEvent {
            index,
            event_id: self.event_id,
            user_id: self.user_id,
            item_id: self.item_id,
            kind: EventKind::parse(&self.kind)?,
            value: self.value,
            ts_ms: self.ts_ms,
        })
    }
}

/// Per-partition bookkeeping readable from any thread.
#[derive(Debug, Default)]
pub struct PartitionSlot {
    state: AtomicU8,
    /// The next offset to apply (the position of the replay).
    next_offset: AtomicI64,
    /// The end of the log when the partition was last seen (for lag).
    high_watermark: AtomicI64,
    /// Moved by every assignment and every revocation of the partition on this node.
    generation: AtomicU64,
}

impl PartitionSlot {
    pub fn state(&self) -> PartitionState {
        PartitionState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, state: PartitionState) {
        self.state.store(state.as_u8(), Ordering::Release);
    }
}

/// A record of the owners topic: who serves a partition (key: the partition number).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnerRecord {
    pub partition: u32,
    pub node_id: String,
    /// The node's HTTP address (`cluster.advertised_address`).
    pub address: String,
    /// Unix milliseconds of the assignment this record reports (later wins).
    pub generation: i64,
    /// Ready (served) or still replaying.
    pub ready: bool,
}

/// The partition whose owner, once it serves it, leads the cluster ([`Cluster::is_leader`]).
pub const LEADER_PARTITION: u32 = 0;

/// The header a forwarded read carries: its receiver answers it itself or refuses it
/// (`421`), never forwards it again.
pub const FORWARDED_HEADER: &str = "x-momentum-forwarded";

/// How often [`Cluster::route_after_move`] looks at the owners again.
const MOVED_POLL: Duration = Duration::from_millis(25);

/// Where a read goes once the owner it was forwarded to answered that it no longer owns the
/// partition.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// The partition is ready here: answer it.
    Local,
    /// A later owner, ready: forward it there (once more, and no further).
    Remote(OwnerRecord),
}

#[derive(Debug, Clone, PartialEq)]
enum AfterMove {
    Route(Route),
    /// A later owner is named but still replaying: `503 not_ready`.
    NotReady,
    /// Nothing later is known yet.
    Wait,
}

/// The decision of [`Cluster::route_after_move`] from what this node knows now: its own state
/// of the partition and the owners topic's record, against the owner that answered `421`.
fn route_after_move(
    here: PartitionState,
    known: Option<OwnerRecord>,
    moved: &OwnerRecord,
    node_id: &str,
) -> AfterMove {
    match here {
        PartitionState::Ready => return AfterMove::Route(Route::Local),
        PartitionState::Restoring => return AfterMove::NotReady,
        PartitionState::NotOwned => {}
    }
    // A record of the owner that refused, or of an assignment before its, is stale; so is a
    // claim of this node's own, which its partition state above contradicts.
    let later = known.filter(|k| {
        k.node_id != node_id
            && (k.generation > moved.generation
                || (k.generation == moved.generation && k.node_id != moved.node_id))
    });
    match later {
        Some(owner) if owner.ready => AfterMove::Route(Route::Remote(owner)),
        Some(_) => AfterMove::NotReady,
        None => AfterMove::Wait,
    }
}

/// Users this node erased as their owner whose erasure's item side has not reached its own
/// catalogue yet. Their id is forgotten at the erasure, but item-deltas records published
/// before it still name them, and the catalogue finds their weights by the dense id they had:
/// per user id, oldest first, that id and the (partition, offset) of the erasure record. The
/// catalogue's thread names such a user's rows by the oldest pending id, takes it at the
/// erasure's record, and drops what lies at or below what it applied of the partition (an
/// erasure whose record it skipped, a former owner's copy having come first).
#[derive(Debug, Default)]
pub struct ErasedHere(parking_lot::Mutex<HashMap<String, PendingErasures>>);

/// One user's pending erasures: (partition, offset of the record, dense id), oldest first.
type PendingErasures = VecDeque<(u32, i64, u32)>;

impl ErasedHere {
    /// This node erased `user_id`, whose dense id here was `user`, at `offset` of `partition`:
    /// notes it and, under the same lock, calls `forget` (which forgets the id), so that no
    /// record is resolved in between by neither.
    pub fn note(
        &self,
        user_id: &str,
        partition: u32,
        offset: i64,
        user: u32,
        forget: impl FnOnce(),
    ) {
        let mut map = self.0.lock();
        map.entry(user_id.to_owned())
            .or_default()
            .push_back((partition, offset, user));
        forget();
    }

    /// The dense id a row of `user_id` in an item-deltas record tagged `offset` names here:
    /// that of the oldest erasure of theirs this node made after that offset, if any, else
    /// `otherwise()` (the interner's, called under the lock [`ErasedHere::note`] takes).
    pub fn resolve(
        &self,
        user_id: &str,
        offset: i64,
        otherwise: impl FnOnce() -> Option<u32>,
    ) -> Option<u32> {
        let map = self.0.lock();
        let pending = map
            .get(user_id)
            .and_then(|queue| queue.iter().find(|e| e.1 > offset))
            .map(|e| e.2);
        pending.or_else(otherwise)
    }

    /// The dense id of the user the erasure record at `offset` is about, if this node erased
    /// them; the entry goes.
    pub fn take(&self, user_id: &str, offset: i64) -> Option<u32> {
        let mut map = self.0.lock();
        let queue = map.get_mut(user_id)?;
        let found = match queue.front() {
            Some(&(_, at, user)) if at == offset => {
                queue.pop_front();
                Some(user)
            }
            _ => None,
        };
        if queue.is_empty() {
            map.remove(user_id);
        }
        found
    }

    /// Drops the entries of `partition` at or below `applied`: their records are behind.
    pub fn prune(&self, partition: u32, applied: i64) {
        let mut map = self.0.lock();
        if map.is_empty() {
            return;
        }
        map.retain(|_, queue| {
            queue.retain(|&(p, at, _)| p != partition || at > applied);
            !queue.is_empty()
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().values().map(VecDeque::len).sum()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.lock().is_empty()
    }
}

/// The entries of `noted` for `partition`, as (user id, dense id); they go.
fn take_noted(noted: &mut Vec<(u32, String, u32)>, partition: u32) -> Vec<(String, u32)> {
    let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(noted)
        .into_iter()
        .partition(|e| e.0 == partition);
    *noted = rest;
    mine.into_iter()
        .map(|(_, user_id, user)| (user_id, user))
        .collect()
}

/// The cluster side of a node: settings, producer and partition states.
pub struct Cluster {
    settings: ClusterSettings,
    producer: FutureProducer,
    partitions: Arc<Vec<PartitionSlot>>,
    /// What the owners topic says about each partition.
    owners: parking_lot::RwLock<Vec<Option<OwnerRecord>>>,
    /// Client for forwarding reads to owners (bounded by a timeout).
    http: reqwest::Client,
    item_progress: items::ItemProgress,
    erased_here: ErasedHere,
    /// Erasures whose item side reached this node while it was restoring the user's
    /// partition: (partition, user id, the dense id they had), for its readiness.
    erased_while_restoring: parking_lot::Mutex<Vec<(u32, String, u32)>>,
    bridge: bridge::BridgeStatus,
    /// Where this node's learned item model came from ([`item_model`]).
    item_model: item_model::ModelSync,
    /// The connection to the cluster's predictive model versions ([`training`]).
    model_versions: training::VersionSync,
    /// The connection to the cluster's experiments ([`experiments`]).
    experiments: experiments::ExperimentSync,
    /// The next offset of the items topic this node will apply (what it applied is below).
    items_applied: AtomicI64,
    metrics: ClusterMetrics,
    retry_after: u64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.settings.node_id)
            .field("partitions", &self.settings.partitions)
            .finish()
    }
}

impl Cluster {
    /// The producer and the partition table; the consumer starts with [`consumer::start`].
    pub fn new(
        settings: ClusterSettings,
        metrics: ClusterMetrics,
        retry_after: u64,
    ) -> Result<Cluster, Error> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("client.id", &settings.node_id)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            // Bounded: a full local queue refuses at once (503) instead of growing.
            .set("queue.buffering.max.messages", "100000")
            .set("queue.buffering.max.kbytes", "65536")
            .set("linger.ms", "2")
            .set(
                "message.timeout.ms",
                settings.produce_timeout_ms.to_string(),
            )
            .create()
            .map_err(|e| Error::failed("kafka producer", e))?;
        let partitions = Arc::new(
            (0..settings.partitions)
                .map(|_| PartitionSlot::default())
                .collect(),
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(8)
            .build()
            .map_err(|e| Error::failed("forwarding client", e))?;
        Ok(Cluster {
            owners: parking_lot::RwLock::new(vec![None; settings.partitions as usize]),
            http,
            item_progress: items::ItemProgress::new(settings.partitions),
            erased_here: Default::default(),
            erased_while_restoring: Default::default(),
            bridge: bridge::BridgeStatus::default(),
            item_model: item_model::ModelSync::default(),
            model_versions: training::VersionSync::default(),
            experiments: experiments::ExperimentSync::default(),
            items_applied: AtomicI64::new(0),
            settings,
            producer,
            partitions,
            metrics,
            retry_after,
        })
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// The `Retry-After` of this node's `503`s.
    pub fn retry_after(&self) -> u64 {
        self.retry_after
    }

    pub fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }

    pub fn partition_slots(&self) -> &Arc<Vec<PartitionSlot>> {
        &self.partitions
    }

    /// The partitions of the bridged topic this node bridges.
    pub fn bridge_status(&self) -> &bridge::BridgeStatus {
        &self.bridge
    }

    /// Where this node stands on the item-deltas topic.
    pub fn item_progress(&self) -> &items::ItemProgress {
        &self.item_progress
    }

    /// Where this node's learned item model came from.
    pub fn item_model(&self) -> &item_model::ModelSync {
        &self.item_model
    }

    /// The cluster's experiments ([`experiments`]).
    pub fn experiments(&self) -> &experiments::ExperimentSync {
        &self.experiments
    }

    /// The cluster's predictive model versions ([`training`]).
    pub fn model_versions(&self) -> &training::VersionSync {
        &self.model_versions
    }

    /// Whether this node leads the cluster — builds the learned item model — because it
    /// serves [`LEADER_PARTITION`] (owns it, ready). The assignor decides, not code of ours.
    pub fn is_leader(&self) -> bool {
        self.partition_state(LEADER_PARTITION) == PartitionState::Ready
    }

    /// The leader as the owners topic names it (this node included), once it serves.
    pub fn leader(&self) -> Option<OwnerRecord> {
        self.owners
            .read()
            .get(LEADER_PARTITION as usize)?
            .clone()
            .filter(|o| o.ready)
    }

    /// Publishes the item side of a batch of partition `partition` covering its log up to
    /// `offset`, whose oldest event was logged at `logged_ms`, and waits for the broker's
    /// confirmation.
    pub async fn publish_item_deltas(
        &self,
        partition: u32,
        offset: i64,
        logged_ms: i64,
        rows: Vec<items::WireRow>,
    ) -> Result<(), Error> {
        let record = items::ItemDeltaRecord {
            partition,
            offset,
            logged_ms,
            rows,
        };
        let payload = serde_json::to_vec(&record).map_err(|source| Error::Json {
            what: "item delta".into(),
            source,
        })?;
        let key = partition.to_string();
        let delivery = self.producer.send(
            FutureRecord::to(&self.settings.item_deltas_topic)
                .partition(partition as i32)
                .key(&key)
                .payload(&payload),
            Duration::from_millis(self.settings.produce_timeout_ms),
        );
        match delivery.await {
            Ok(_) => {
                self.metrics.item_deltas_published.inc();
                Ok(())
            }
            Err((error, _)) => Err(self.unavailable(error)),
        }
    }

    /// Logs an item's metadata (`None`: its deletion) to the items topic, which every node
    /// applies in the topic's order, and waits until this node applied it too, so the caller
    /// reads its own write. `503 unavailable` if the broker does not confirm it, or this
    /// node does not apply it, within `cluster.produce_timeout_ms`; a write that was confirmed
    /// but not yet applied here still reaches every node.
    pub async fn publish_item(
        &self,
        item_id: &str,
        meta: Option<&momentum_actors::index::ItemMeta>,
    ) -> Result<(), Error> {
        let record = items::ItemRecord {
            item_id: item_id.to_owned(),
            meta: meta.cloned(),
        };
        let payload = serde_json::to_vec(&record).map_err(|source| Error::Json {
            what: "item metadata".into(),
            source,
        })?;
        let timeout = Duration::from_millis(self.settings.produce_timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        let delivered = self
            .producer
            .send(
                FutureRecord::to(&self.settings.items_topic)
                    .partition(0)
                    .key(item_id)
                    .payload(&payload),
                timeout,
            )
            .await;
        let offset = match delivered {
            Ok(delivery) => delivery.offset,
            Err((error, _)) => return Err(self.unavailable(error)),
        };
        while self.items_applied.load(Ordering::Acquire) <= offset {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    item_id,
                    offset,
                    "item metadata logged but not applied here in time"
                );
                return Err(Error::Unavailable {
                    what: "the item metadata log (Kafka)",
                    retry_after: self.retry_after,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Records that this node applied the items topic up to `offset`.
    pub fn item_record_applied(&self, offset: i64) {
        self.items_applied.fetch_max(offset + 1, Ordering::AcqRel);
    }

    /// What this node does with `partition`.
    pub fn partition_state(&self, partition: u32) -> PartitionState {
        self.partitions
            .get(partition as usize)
            .map_or(PartitionState::NotOwned, PartitionSlot::state)
    }

    /// Users this node erased as the owner whose erasure's item side it has not applied yet.
    pub fn erased_here(&self) -> &ErasedHere {
        &self.erased_here
    }

    /// An erasure whose item side reached this node while it owns the user's partition: if
    /// the partition is still restoring, notes it for [`Cluster::ready_taking_erasures`] (its
    /// replay may not reach the erasure, the snapshot lying past it) and returns `true`; else
    /// the caller settles it now.
    pub fn defer_erasure_if_restoring(&self, partition: u32, user_id: &str, user: u32) -> bool {
        let mut noted = self.erased_while_restoring.lock();
        if self.partitions[partition as usize].state() != PartitionState::Restoring {
            return false;
        }
        noted.push((partition, user_id.to_owned(), user));
        true
    }

    /// Marks `partition` ready and returns the erasures noted while it was restoring (they
    /// go), under the lock [`Cluster::defer_erasure_if_restoring`] takes: none is noted after.
    pub fn ready_taking_erasures(&self, partition: u32) -> Vec<(String, u32)> {
        let mut noted = self.erased_while_restoring.lock();
        self.partitions[partition as usize].set_state(PartitionState::Ready);
        take_noted(&mut noted, partition)
    }

    /// The erasures noted for `partition` while it was restoring, which was revoked (they go).
    pub fn revoked_taking_erasures(&self, partition: u32) -> Vec<(String, u32)> {
        take_noted(&mut self.erased_while_restoring.lock(), partition)
    }

    /// The partition of `user_id` in this cluster.
    pub fn partition_of(&self, user_id: &str) -> u32 {
        partition_of(user_id, self.settings.partitions)
    }

    /// Whether this node may answer a read of `user_id`: its partition is owned here and
    /// caught up. Owned but replaying: `503 not_ready` + `Retry-After`; owned elsewhere:
    /// `421 not_owner`.
    pub fn check_user(&self, user_id: &str) -> Result<(), Error> {
        let partition = self.partition_of(user_id);
        match self.partitions[partition as usize].state() {
            PartitionState::Ready => Ok(()),
            PartitionState::Restoring => Err(Error::NotReady),
            PartitionState::NotOwned => Err(Error::NotOwner {
                partition,
                node_id: self.settings.node_id.clone(),
            }),
        }
    }

    /// Logs a batch: each event goes to its user's partition, and the call returns once the
    /// broker confirmed every one (`acks=all`). Any failure — a full local queue, a broker
    /// that does not confirm within `cluster.produce_timeout_ms` — is an error and nothing
    /// is acknowledged to the client; a retry with the same event ids is deduplicated by the
    /// owner.
    /// `recommendation_ids` are the events' (in order; missing ones are `None`).
    pub async fn produce(
        &self,
        events: &[NewEvent],
        recommendation_ids: &[Option<String>],
    ) -> Result<(), Error> {
        let records: Vec<LoggedEvent> = events
            .iter()
            .enumerate()
            .map(|(i, e)| LoggedEvent {
                recommendation_id: recommendation_ids.get(i).cloned().flatten(),
                ..LoggedEvent::from_event(e)
            })
            .collect();
        self.log(&records).await?;
        self.metrics.events_produced.inc_by(events.len() as u64);
        Ok(())
    }

    /// Logs one record about a user (a [`LoggedEvent::profile`] or [`LoggedEvent::erasure`])
    /// to the user's partition, as [`Cluster::produce`] logs events: it returns once the
    /// broker confirmed it, and the owner applies it in the partition's order.
    pub async fn log_user_record(&self, record: LoggedEvent) -> Result<(), Error> {
        self.log(std::slice::from_ref(&record)).await
    }

    async fn log(&self, records: &[LoggedEvent]) -> Result<(), Error> {
        let topic = self.settings.events_topic.as_str();
        let mut deliveries = Vec::with_capacity(records.len());
        for logged in records {
            let payload = serde_json::to_vec(logged).map_err(|source| Error::Json {
                what: "logged event".into(),
                source,
            })?;
            let partition = self.partition_of(&logged.user_id);
            let record = FutureRecord::to(topic)
                .partition(partition as i32)
                .key(logged.user_id.as_bytes())
                .payload(&payload);
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    self.metrics.produce_failures.inc();
                    return Err(Error::Overloaded {
                        actor: "kafka_producer",
                        retry_after: self.retry_after,
                    });
                }
                Err((error, _)) => {
                    self.metrics.produce_failures.inc();
                    return Err(self.unavailable(error));
                }
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => {
                    self.metrics.produce_failures.inc();
                    return Err(self.unavailable(error));
                }
                Err(_cancelled) => {
                    self.metrics.produce_failures.inc();
                    return Err(Error::ShuttingDown);
                }
            }
        }
        Ok(())
    }

    fn unavailable(&self, error: KafkaError) -> Error {
        tracing::warn!(%error, "the broker did not confirm a batch");
        Error::Unavailable {
            what: "the event log (Kafka)",
            retry_after: self.retry_after,
        }
    }

    /// Records what the owners topic says about a partition: a claim replaces the known one
    /// unless that is of a later assignment.
    pub fn learn_owner(&self, record: OwnerRecord) {
        let mut owners = self.owners.write();
        if let Some(slot) = owners.get_mut(record.partition as usize) {
            if slot
                .as_ref()
                .is_none_or(|known| known.generation <= record.generation)
            {
                *slot = Some(record);
            }
        }
    }

    /// The other nodes that serve a partition now, as the owners topic names them (one record
    /// each, by node id).
    pub fn other_serving_nodes(&self) -> Vec<OwnerRecord> {
        let mut nodes: Vec<OwnerRecord> = Vec::new();
        for owner in self.owners.read().iter().flatten() {
            if owner.ready
                && owner.node_id != self.settings.node_id
                && !nodes.iter().any(|n| n.node_id == owner.node_id)
            {
                nodes.push(owner.clone());
            }
        }
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        nodes
    }

    /// The owner the owners topic names for `partition`, if another node and ready.
    pub fn owner_elsewhere(&self, partition: u32) -> Option<OwnerRecord> {
        self.owners
            .read()
            .get(partition as usize)?
            .clone()
            .filter(|o| o.ready && o.node_id != self.settings.node_id)
    }

    /// Where a read of `partition` goes after `moved`, the owner it was forwarded to, answered
    /// `421`: waits up to `wait` for the owners topic to name a later owner, or for the
    /// partition to be ready here. `None`: no later owner is known, or it is still replaying.
    pub async fn route_after_move(
        &self,
        partition: u32,
        moved: &OwnerRecord,
        wait: Duration,
    ) -> Option<Route> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let known = self
                .owners
                .read()
                .get(partition as usize)
                .cloned()
                .flatten();
            match route_after_move(
                self.partition_state(partition),
                known,
                moved,
                &self.settings.node_id,
            ) {
                AfterMove::Route(route) => return Some(route),
                AfterMove::NotReady => return None,
                AfterMove::Wait if tokio::time::Instant::now() >= deadline => return None,
                AfterMove::Wait => tokio::time::sleep(MOVED_POLL).await,
            }
        }
    }

    /// Publishes this node's claim on `partition` to the owners topic (compacted, keyed by
    /// partition). Failures are logged: the claim is advisory, the group decides.
    pub async fn claim(&self, partition: u32, generation: i64, ready: bool) {
        let record = OwnerRecord {
            partition,
            node_id: self.settings.node_id.clone(),
            address: self.settings.advertised_address.clone(),
            generation,
            ready,
        };
        let Ok(payload) = serde_json::to_vec(&record) else {
            return;
        };
        let key = partition.to_string();
        let sent = self
            .producer
            .send(
                FutureRecord::to(&self.settings.owners_topic)
                    .key(&key)
                    .payload(&payload),
                Duration::from_millis(self.settings.produce_timeout_ms),
            )
            .await;
        if let Err((error, _)) = sent {
            tracing::warn!(%error, partition, "publishing an owner claim");
        }
    }

    /// Forwards a read of `path_and_query` one hop to `owner` and returns its answer
    /// (status, content type, Retry-After, body).
    pub async fn forward(
        &self,
        owner: &OwnerRecord,
        method: reqwest::Method,
        path_and_query: &str,
        headers: &actix_web::http::header::HeaderMap,
    ) -> Result<reqwest::Response, Error> {
        let mut request = self
            .http
            .request(method, format!("http://{}{path_and_query}", owner.address))
            .header(FORWARDED_HEADER, &self.settings.node_id);
        for name in ["x-admin-key", "accept"] {
            if let Some(value) = headers.get(name).and_then(|v| v.to_str().ok()) {
                request = request.header(name, value);
            }
        }
        request.send().await.map_err(|e| {
            tracing::warn!(error = %e, owner = %owner.node_id, "forwarding a read");
            Error::NotReady
        })
    }

    /// `GET /v1/cluster`: this node and what it knows of every partition.
    pub fn status(&self) -> serde_json::Value {
        let partitions: Vec<serde_json::Value> = self
            .partitions
            .iter()
            .enumerate()
            .map(|(p, slot)| {
                let next = slot.next_offset.load(Ordering::Acquire);
                let high = slot.high_watermark.load(Ordering::Acquire);
                let owner = self.owners.read().get(p).cloned().flatten();
                serde_json::json!({
                    "partition": p,
                    "owner": owner.map(|o| serde_json::json!({
                        "node_id": o.node_id, "address": o.address, "ready": o.ready,
                    })),
                    "state": slot.state(),
                    "next_offset": next,
                    "lag": (high - next).max(0),
                    "item_offset": self.item_progress.applied(p as u32),
                    "generation": slot.generation.load(Ordering::Acquire),
                })
            })
            .collect();
        let owned = self
            .partitions
            .iter()
            .filter(|s| s.state() != PartitionState::NotOwned)
            .count();
        serde_json::json!({
            "node_id": self.settings.node_id,
            "advertised_address": self.settings.advertised_address,
            "partitions_total": self.settings.partitions,
            "partitions_owned": owned,
            "partitions": partitions,
            "bridge": (!self.settings.bridge_topic.is_empty()).then(|| serde_json::json!({
                "topic": self.settings.bridge_topic,
                "group": self.settings.bridge_group,
                "partitions": self.bridge.partitions(),
            })),
        })
    }

    /// Waits until the local producer queue is empty (shutdown), at most `timeout`.
    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer;
        if let Err(error) = self.producer.flush(timeout) {
            tracing::warn!(%error, "kafka producer flush");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(node_id: &str, generation: i64, ready: bool) -> OwnerRecord {
        OwnerRecord {
            partition: 3,
            node_id: node_id.into(),
            address: format!("{node_id}:8080"),
            generation,
            ready,
        }
    }

    #[test]
    fn a_read_refused_by_a_former_owner_goes_to_the_later_one_or_waits() {
        use PartitionState::*;
        let moved = owner("a", 10, true);
        let route = |here, known: Option<OwnerRecord>| route_after_move(here, known, &moved, "me");
        // Served here now, or about to be.
        assert_eq!(route(Ready, None), AfterMove::Route(Route::Local));
        assert_eq!(
            route(Restoring, Some(owner("b", 11, true))),
            AfterMove::NotReady
        );
        // A later owner elsewhere: forwarded there once it is ready.
        let b = owner("b", 11, true);
        assert_eq!(
            route(NotOwned, Some(b.clone())),
            AfterMove::Route(Route::Remote(b))
        );
        assert_eq!(
            route(NotOwned, Some(owner("b", 11, false))),
            AfterMove::NotReady
        );
        // The refusing owner assigned the partition again later.
        let again = owner("a", 12, true);
        assert_eq!(
            route(NotOwned, Some(again.clone())),
            AfterMove::Route(Route::Remote(again))
        );
        // Nothing later: the record that sent the read there, an older one, this node's own
        // stale claim, or none.
        assert_eq!(route(NotOwned, Some(moved.clone())), AfterMove::Wait);
        assert_eq!(route(NotOwned, Some(owner("b", 9, true))), AfterMove::Wait);
        assert_eq!(
            route(NotOwned, Some(owner("me", 11, true))),
            AfterMove::Wait
        );
        assert_eq!(route(NotOwned, None), AfterMove::Wait);
    }

    #[test]
    fn erased_users_are_named_by_their_pending_id_until_their_erasure_record() {
        let erased = ErasedHere::default();
        // Erased, back with new events, erased again before the item side caught up.
        let forgotten = std::cell::Cell::new(0);
        let forget = || forgotten.set(forgotten.get() + 1);
        erased.note("alice", 2, 10, 7, forget);
        erased.note("alice", 2, 15, 9, forget);
        erased.note("bob", 3, 11, 8, forget);
        assert_eq!(forgotten.get(), 3);
        let interner = || Some(99);
        // Records before the first erasure name the first Alice, those between the two the
        // second; records after both (or of users never erased here) go to the interner.
        assert_eq!(erased.resolve("alice", 9, interner), Some(7));
        assert_eq!(erased.resolve("alice", 12, interner), Some(9));
        assert_eq!(erased.resolve("alice", 15, interner), Some(99));
        assert_eq!(erased.resolve("carol", 1, interner), Some(99));
        assert_eq!(erased.take("alice", 15), None, "not the oldest erasure");
        assert_eq!(erased.take("alice", 10), Some(7));
        assert_eq!(erased.resolve("alice", 9, interner), Some(9));
        // A record skipped as a former owner's duplicate leaves its entry to the pruning.
        erased.prune(2, 15);
        assert_eq!(erased.resolve("alice", 9, interner), Some(99));
        assert_eq!(erased.len(), 1, "only the other partition's entry is left");
        erased.prune(3, 10);
        assert_eq!(erased.take("bob", 11), Some(8));
        assert!(erased.is_empty());
    }

    #[test]
    fn partitions_follow_md5_and_stay_in_range() {
        // md5("alice") = 6384e2b2184bcbf58eccf10ca7a6563c
        assert_eq!(
            partition_of("alice", 64),
            (0x6384e2b2184bcbf5u64 % 64) as u32
        );
        for user in ["a", "bob", "carol", "x-1"] {
            assert!(partition_of(user, 7) < 7);
        }
    }

    #[test]
    fn logged_events_round_trip() {
        let event = NewEvent {
            index: 3,
            event_id: Some("e1".into()),
            user_id: "alice".into(),
            item_id: Some("run".into()),
            kind: EventKind::Rate,
            value: Some(4.0),
            ts_ms: 1_700_000_000_000,
        };
        let bytes = serde_json::to_vec(&LoggedEvent::from_event(&event)).expect("encodes");
        let back: LoggedEvent = serde_json::from_slice(&bytes).expect("decodes");
        assert_eq!(back.into_event(3), Some(event.clone()));
        // With the recommendation it responds to.
        let answered = LoggedEvent {
            recommendation_id: Some("r-1".into()),
            ..LoggedEvent::from_event(&event)
        };
        let bytes = serde_json::to_vec(&answered).expect("encodes");
        let back: LoggedEvent = serde_json::from_slice(&bytes).expect("decodes");
        assert_eq!(
            back.into_logged(3),
            Some(Logged::Event(event.clone(), Some("r-1".into())))
        );
        let unknown = LoggedEvent {
            kind: "teleport".into(),
            ..LoggedEvent::from_event(&NewEvent {
                index: 0,
                event_id: None,
                user_id: "u".into(),
                item_id: None,
                kind: EventKind::AppOpen,
                value: None,
                ts_ms: 0,
            })
        };
        assert_eq!(unknown.into_event(0), None);
    }

    #[test]
    fn profile_and_erasure_records_round_trip_and_stay_apart_from_events() {
        let decode = |record: &LoggedEvent| {
            let bytes = serde_json::to_vec(record).expect("encodes");
            serde_json::from_slice::<LoggedEvent>(&bytes)
                .expect("decodes")
                .into_logged(0)
        };
        let mut preferences = serde_json::Map::new();
        preferences.insert("goal".into(), "run".into());
        let profile = UserProfile {
            preferences,
            signup_date: Some("2026-01-02".into()),
            locale: Some("en-GB".into()),
        };
        let record = LoggedEvent::profile("alice", profile.clone(), 5);
        assert_eq!(
            decode(&record),
            Some(Logged::Profile {
                user_id: "alice".into(),
                profile
            })
        );
        // Neither is an event kind: an older node skips them rather than misapply them.
        assert_eq!(record.clone().into_event(0), None);
        assert_eq!(
            decode(&LoggedEvent::erasure("bob", 6)),
            Some(Logged::Erase {
                user_id: "bob".into()
            })
        );
        assert_eq!(LoggedEvent::erasure("bob", 6).into_event(0), None);
        // A profile record must carry its profile.
        let empty = LoggedEvent {
            profile: None,
            ..record
        };
        assert_eq!(decode(&empty), None);
    }
}
