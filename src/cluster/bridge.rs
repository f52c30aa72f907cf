//! The bridge: producers that already write interaction events to a topic of their own
//! (`cluster.bridge_topic`) keep doing so, and the nodes re-partition that topic into the
//! events topic (docs/operations.md, "Bridging existing topics").
//!
//! Every node runs one consumer in the group `cluster.bridge_group` on the bridged topic, so
//! the broker spreads its partitions over the live nodes and moves a dead node's to the
//! others. Each record's value is one event object or a JSON array of them, validated exactly
//! as a `POST /v1/events` body ([`crate::api::events::parse_record`]); an invalid event or an
//! undecodable record is counted (`momentum_cluster_bridge_rejected_total`), logged once
//! without its payload, and skipped. Valid events go through the producer path of
//! `POST /v1/events` ([`Cluster::produce`]: each to its user's partition, `acks=all`,
//! idempotent).
//!
//! **Once per event id.** An event without an `event_id` gets one derived from its place in
//! the bridged topic ([`derived_event_id`]), so every bridged event carries an id and the same
//! record bridged twice yields the same ids. The source offsets are committed (manually) only
//! after the broker confirmed every event of the records up to them; a produce that fails is
//! retried, never skipped. A record can therefore reach the events topic more than once — a
//! node dies between produce and commit, a partition moves before its commit, a retry after a
//! partly confirmed batch — and the owner of the user's partition drops every copy after the
//! first by its event id (`actors.dedupe_capacity`).
//!
//! Bounded: a round polls at most [`ROUND_RECORDS`] records, and the bridge produces about
//! [`CHUNK_EVENTS`] events at a time (the events of whole records), waiting for the broker
//! before it reads on; while the broker does not confirm, the bridge reads nothing more
//! (librdkafka's prefetch is capped by `queued.max.messages.kbytes`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use momentum_actors::engine::NewEvent;
use momentum_models::clock::Clock;
use momentum_models::events::KindWeights;
use momentum_models::hash::md5_u64;

use super::consumer::Stop;
use super::Cluster;

/// Records polled per round (their events produced, then their offsets committed).
const ROUND_RECORDS: usize = 500;
/// Events produced at once: the bridge waits for the broker's confirmation before it goes on.
const CHUNK_EVENTS: usize = 1000;
/// The longest wait between two attempts to produce a chunk the broker did not confirm.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How `POST /v1/events` validates events on this node (`ingest.max_batch`, `[weights]`, the
/// server's clock): the bridge validates the same way.
pub struct Rules {
    pub max_batch: usize,
    pub weights: KindWeights,
    pub clock: Arc<dyn Clock>,
}

/// The partitions of the bridged topic this node bridges now (`GET /v1/cluster`).
#[derive(Debug, Default)]
pub struct BridgeStatus {
    partitions: parking_lot::Mutex<Vec<u32>>,
}

impl BridgeStatus {
    pub fn partitions(&self) -> Vec<u32> {
        self.partitions.lock().clone()
    }

    fn set_partitions(&self, partitions: Vec<u32>) {
        *self.partitions.lock() = partitions;
    }
}

/// The `event_id` of a bridged event that has none: its place in the bridged topic, so a
/// replay of the record derives the same id. Ids are at most 128 characters; a topic name too
/// long for that is replaced by its md5.
pub fn derived_event_id(topic: &str, partition: i32, offset: i64, index: usize) -> String {
    let id = format!("bridge:{topic}:{partition}:{offset}:{index}");
    if id.len() <= 128 {
        return id;
    }
    format!(
        "bridge:{:016x}:{partition}:{offset}:{index}",
        md5_u64(&[topic.as_bytes()])
    )
}

/// What became of one record: its valid events (each with an id), and why others were
/// refused (one reason per refused event, or one for the whole record).
#[derive(Debug, Default)]
struct Decoded {
    /// The valid events, each with the recommendation it responds to.
    events: Vec<(NewEvent, Option<String>)>,
    rejected: Vec<(Option<usize>, &'static str)>,
}

/// Validates the record at (`topic`, `partition`, `offset`) with `value` as `POST /v1/events`
/// validates a body, and gives each valid event without an id its derived one.
fn decode(
    topic: &str,
    partition: i32,
    offset: i64,
    value: Option<&[u8]>,
    rules: &Rules,
) -> Decoded {
    let parsed = crate::api::events::parse_record(
        value.unwrap_or_default(),
        rules.max_batch,
        &rules.weights,
        rules.clock.now_ms(),
    );
    match parsed {
        Err(error) => Decoded {
            events: Vec::new(),
            rejected: vec![(None, error.code())],
        },
        Ok((valid, rejected)) => Decoded {
            events: valid
                .into_iter()
                .map(|v| {
                    let mut event = v.event;
                    if event.event_id.is_none() {
                        let id = derived_event_id(topic, partition, offset, event.index);
                        debug_assert!(crate::api::validate_id("event_id", &id).is_ok(), "{id}");
                        event.event_id = Some(id);
                    }
                    (event, v.recommendation_id)
                })
                .collect(),
            rejected: rejected
                .into_iter()
                .map(|r| (Some(r.index), r.code))
                .collect(),
        },
    }
}

/// Starts the bridge thread (when `cluster.bridge_topic` is set): consumes the bridged topic
/// in the bridge group and produces its events into the events topic until `stop`.
pub fn start(
    cluster: Arc<Cluster>,
    rules: Rules,
    stop: Stop,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let positions = Arc::new(Positions::default());
    start_status(cluster.clone(), positions.clone(), stop.clone())?;
    super::spawn_with_runtime("cluster-bridge", move |runtime| {
        if let Err(error) = run(&cluster, &rules, &stop, runtime, &positions) {
            tracing::error!(%error, "cluster bridge stopped");
        }
        // Bridging nothing from now on: the status says so, and its thread ends.
        positions
            .stopped
            .store(true, std::sync::atomic::Ordering::Release);
        cluster.bridge_status().set_partitions(Vec::new());
        cluster.metrics().bridge_lag.set(0);
    })
}

/// What the bridge loop tells its status thread: the source partitions assigned to it and its
/// position in each (`None`: nothing read from it yet). `None` until the loop first looked.
#[derive(Debug, Default)]
struct Positions {
    noted: parking_lot::Mutex<Option<Vec<Position>>>,
    /// The bridge loop ended.
    stopped: std::sync::atomic::AtomicBool,
}

/// A source partition and the bridge's position in it.
type Position = (i32, Option<i64>);

impl Positions {
    /// Notes the consumer's positions (local: no round trip to the broker).
    fn note(&self, consumer: &BaseConsumer, topic: &str) {
        let Ok(positions) = consumer.position() else {
            return;
        };
        let mut noted: Vec<Position> = positions
            .elements_for_topic(topic)
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(next) => (e.partition(), Some(next)),
                _ => (e.partition(), None),
            })
            .collect();
        noted.sort_unstable();
        *self.noted.lock() = Some(noted);
    }

    fn get(&self) -> Option<Vec<Position>> {
        self.noted.lock().clone()
    }
}

/// The bridge's status (its partitions and lag in `GET /v1/cluster` and
/// `momentum_cluster_bridge_lag_records`), refreshed every second on a thread of its own: the
/// end of each partition and the group's committed offsets are round trips to the broker,
/// which must not hold up bridging.
fn start_status(
    cluster: Arc<Cluster>,
    positions: Arc<Positions>,
    stop: Stop,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cluster-bridge-status".into())
        .spawn(move || {
            let s = cluster.settings();
            // In the bridge group (its committed offsets are read), but never subscribed: it
            // is no member and is assigned nothing.
            let client: BaseConsumer = match ClientConfig::new()
                .set("bootstrap.servers", &s.brokers)
                .set("group.id", &s.bridge_group)
                .set("client.id", format!("{}-bridge-status", s.node_id))
                .create()
            {
                Ok(client) => client,
                Err(error) => {
                    tracing::error!(%error, "cluster bridge status client");
                    return;
                }
            };
            while !stop.stopped() && !positions.stopped.load(std::sync::atomic::Ordering::Acquire) {
                let started = Instant::now();
                if let Some(noted) = positions.get() {
                    refresh_status(&cluster, &client, &s.bridge_topic, &noted);
                }
                std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
            }
            if positions.stopped.load(std::sync::atomic::Ordering::Acquire) {
                // A refresh under way when the bridge stopped may have listed its partitions.
                cluster.bridge_status().set_partitions(Vec::new());
                cluster.metrics().bridge_lag.set(0);
            }
        })
}

fn consumer(cluster: &Cluster) -> KafkaResult<BaseConsumer> {
    let s = cluster.settings();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .set("group.id", &s.bridge_group)
        .set("client.id", format!("{}-bridge", s.node_id))
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", s.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (s.session_timeout_ms / 3).max(100).to_string(),
        )
        // A new group starts at the beginning of the topic: nothing already there is missed.
        .set("auto.offset.reset", "earliest")
        // Offsets are committed once the broker confirmed the events of the records below them.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // What librdkafka fetches ahead of the bridge stays small.
        .set("queued.max.messages.kbytes", "8192")
        // A bridged topic created after the nodes started is picked up within seconds.
        .set("topic.metadata.refresh.interval.ms", "10000")
        .create()?;
    consumer.subscribe(&[&s.bridge_topic])?;
    Ok(consumer)
}

fn run(
    cluster: &Cluster,
    rules: &Rules,
    stop: &Stop,
    runtime: &tokio::runtime::Runtime,
    positions: &Positions,
) -> KafkaResult<()> {
    let consumer = consumer(cluster)?;
    let topic = cluster.settings().bridge_topic.as_str();
    let metrics = cluster.metrics();
    tracing::info!(
        topic,
        group = %cluster.settings().bridge_group,
        "bridging into the events topic"
    );
    let mut chunk: Vec<(NewEvent, Option<String>)> = Vec::with_capacity(CHUNK_EVENTS);
    // Per source partition: the offset to commit (every record below it is produced).
    let mut done: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_status: Option<Instant> = None;
    'rounds: while !stop.stopped() {
        // Per source partition: the offset after the last record polled in this round.
        let mut polled: BTreeMap<i32, i64> = BTreeMap::new();
        let mut wait = Duration::from_millis(100);
        for _ in 0..ROUND_RECORDS {
            let message = match consumer.poll(wait) {
                None => break,
                Some(Err(error)) => {
                    tracing::warn!(%error, topic, "bridge consumer");
                    break;
                }
                Some(Ok(message)) => message,
            };
            wait = Duration::ZERO;
            let (partition, offset) = (message.partition(), message.offset());
            let decoded = decode(topic, partition, offset, message.payload(), rules);
            for (index, reason) in decoded.rejected {
                metrics.bridge_rejected.with_label_values(&[reason]).inc();
                match index {
                    Some(index) => tracing::warn!(
                        topic,
                        partition,
                        offset,
                        index,
                        reason,
                        "bridged event refused; skipped"
                    ),
                    None => {
                        tracing::warn!(
                            topic,
                            partition,
                            offset,
                            reason,
                            "bridged record refused; skipped"
                        )
                    }
                }
            }
            chunk.extend(decoded.events);
            polled.insert(partition, offset + 1);
            if chunk.len() >= CHUNK_EVENTS && !produce(cluster, runtime, &mut chunk, stop) {
                break 'rounds;
            }
        }
        if !produce(cluster, runtime, &mut chunk, stop) {
            break;
        }
        // Every event of the records polled so far is confirmed: their offsets may be
        // committed. A commit that fails (a rebalance under way) is tried again next round.
        done.extend(polled);
        commit(&consumer, topic, &mut done);
        if last_status.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            last_status = Some(Instant::now());
            positions.note(&consumer, topic);
        }
    }
    // Leaving the group hands this node's partitions to the others at once; they start from
    // its last commit.
    consumer.unsubscribe();
    let _ = consumer.poll(Duration::from_millis(100));
    Ok(())
}

/// Produces `chunk` into the events topic and empties it, retrying with back-off until the
/// broker confirms every event; `false` if the node stops first (nothing is committed then).
fn produce(
    cluster: &Cluster,
    runtime: &tokio::runtime::Runtime,
    chunk: &mut Vec<(NewEvent, Option<String>)>,
    stop: &Stop,
) -> bool {
    if chunk.is_empty() {
        return true;
    }
    let (events, recommendation_ids): (Vec<NewEvent>, Vec<Option<String>>) =
        chunk.iter().cloned().unzip();
    let mut backoff = Duration::from_millis(100);
    loop {
        match runtime.block_on(cluster.produce(&events, &recommendation_ids)) {
            Ok(()) => {
                cluster.metrics().bridge_events.inc_by(chunk.len() as u64);
                chunk.clear();
                return true;
            }
            Err(error) => {
                // Events of the chunk that did reach the log are dropped as duplicates (by
                // their event ids) when the retry logs them again.
                tracing::warn!(
                    error = %crate::error::Report(&error),
                    events = chunk.len(),
                    "bridging: the broker did not confirm a batch; retrying"
                );
                let until = Instant::now() + backoff;
                while Instant::now() < until {
                    if stop.stopped() {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Commits the offsets of `done` that belong to partitions still assigned here (a partition
/// moved meanwhile is its new owner's to commit: its records are bridged again there and
/// dropped as duplicates). Emptied on success.
fn commit(consumer: &BaseConsumer, topic: &str, done: &mut BTreeMap<i32, i64>) {
    if done.is_empty() {
        return;
    }
    let assigned: Vec<i32> = match consumer.assignment() {
        Ok(tpl) => tpl
            .elements_for_topic(topic)
            .iter()
            .map(|e| e.partition())
            .collect(),
        Err(error) => {
            tracing::debug!(%error, "bridge assignment");
            return;
        }
    };
    done.retain(|p, _| assigned.contains(p));
    let mut offsets = TopicPartitionList::new();
    for (&partition, &next) in done.iter() {
        if let Err(error) = offsets.add_partition_offset(topic, partition, Offset::Offset(next)) {
            tracing::debug!(%error, partition, "bridge offset");
        }
    }
    if offsets.count() == 0 {
        return;
    }
    match consumer.commit(&offsets, CommitMode::Sync) {
        Ok(()) => done.clear(),
        Err(error) => tracing::info!(%error, "bridge offsets not committed; trying again"),
    }
}

/// The partitions bridged here and the records not bridged yet: per partition, its end minus
/// the bridge's position in it (before the first record arrives: minus the committed offset,
/// else its start).
fn refresh_status(cluster: &Cluster, client: &BaseConsumer, topic: &str, positions: &[Position]) {
    let mut lag = 0;
    // Partitions not read yet, with their (start, end).
    let mut unread: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for &(partition, position) in positions {
        let Ok((low, high)) = client.fetch_watermarks(topic, partition, Duration::from_millis(500))
        else {
            continue;
        };
        match position {
            Some(next) => lag += (high - next).max(0),
            None => {
                unread.insert(partition, (low, high));
            }
        }
    }
    if !unread.is_empty() {
        let mut wanted = TopicPartitionList::new();
        for &partition in unread.keys() {
            wanted.add_partition(topic, partition);
        }
        let committed = client
            .committed_offsets(wanted, Duration::from_millis(500))
            .ok();
        for (partition, (low, high)) in unread {
            let from = committed
                .as_ref()
                .and_then(|c| c.find_partition(topic, partition))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(low);
            lag += (high - from).max(0);
        }
    }
    let partitions = positions
        .iter()
        .filter_map(|&(p, _)| u32::try_from(p).ok())
        .collect();
    cluster.bridge_status().set_partitions(partitions);
    cluster.metrics().bridge_lag.set(lag);
}

#[cfg(test)]
mod tests {
    use super::*;
    use momentum_models::clock::ManualClock;

    fn rules() -> Rules {
        Rules {
            max_batch: 10,
            weights: KindWeights::default(),
            clock: Arc::new(ManualClock::new(1_700_000_000_000)),
        }
    }

    #[test]
    fn derived_ids_are_stable_valid_and_distinct() {
        let a = derived_event_id("clicks", 2, 40, 1);
        assert_eq!(a, "bridge:clicks:2:40:1");
        assert_eq!(a, derived_event_id("clicks", 2, 40, 1));
        assert_ne!(a, derived_event_id("clicks", 2, 40, 0));
        assert_ne!(a, derived_event_id("clicks", 2, 41, 1));
        assert_ne!(a, derived_event_id("clicks", 1, 40, 1));
        let long = "t".repeat(249);
        let id = derived_event_id(&long, 2147483647, i64::MAX, 9999);
        assert!(crate::api::validate_id("event_id", &id).is_ok(), "{id}");
        assert_ne!(
            id,
            derived_event_id(&"u".repeat(249), 2147483647, i64::MAX, 9999)
        );
    }

    #[test]
    fn a_record_keeps_given_ids_derives_missing_ones_and_names_what_it_refuses() {
        let value = br#"[{"event_id":"mine","user_id":"u","item_id":"i","kind":"view"},
                         {"user_id":"u","item_id":"i","kind":"teleport"},
                         {"user_id":"v","item_id":"i","kind":"click","recommendation_id":"r-7"}]"#;
        let decoded = decode("clicks", 3, 17, Some(value), &rules());
        let ids: Vec<_> = decoded
            .events
            .iter()
            .map(|e| e.0.event_id.as_deref())
            .collect();
        assert_eq!(ids, [Some("mine"), Some("bridge:clicks:3:17:2")]);
        assert_eq!(decoded.rejected, [(Some(1), "unknown_kind")]);
        // The recommendation an event responds to travels with it (the owner attributes it).
        let recommendations: Vec<_> = decoded.events.iter().map(|e| e.1.as_deref()).collect();
        assert_eq!(recommendations, [None, Some("r-7")]);
        // Validated as POST /v1/events does: no ts is the clock's now.
        assert_eq!(decoded.events[1].0.ts_ms, 1_700_000_000_000);
        let one = decode(
            "clicks",
            0,
            5,
            Some(br#"{"user_id":"u","kind":"app_open"}"#),
            &rules(),
        );
        assert_eq!(
            one.events[0].0.event_id.as_deref(),
            Some("bridge:clicks:0:5:0")
        );
        let bad: [Option<&[u8]>; 4] = [None, Some(b"\xff\xfe"), Some(b"[]"), Some(b"42")];
        for bad in bad {
            let decoded = decode("clicks", 0, 6, bad, &rules());
            assert!(decoded.events.is_empty());
            assert_eq!(decoded.rejected.len(), 1, "{bad:?}");
            assert_eq!(decoded.rejected[0].0, None);
        }
    }
}
