//! The membership thread: joins the consumer group, applies the events of the partitions the
//! assignor gives this node, and drops the rows of the partitions it takes away.
//!
//! It runs on a thread of its own with a current-thread runtime: librdkafka calls the
//! rebalance callback from inside `poll`, so everything here is a plain loop around `poll`.
//! The callback only records what changed (and stops serving a revoked partition at once);
//! the loop then acts on it in order, before it applies anything polled after the change:
//!
//! - **assign**: the partition is assigned from the beginning of its log, marked
//!   `restoring` (reads answer `503 not_ready`), replayed, and marked `ready` once the replay
//!   reached the end of the log as it was when the partition was assigned;
//! - **revoke**: the partition stops being served at once, and its users' rows are dropped.
//!
//! Each assignment bumps the partition's generation; a polled message is applied only if its
//! partition is still in the generation it was polled in, so a message fetched under an
//! earlier assignment can never be applied twice. Committed group offsets are for lag
//! monitoring only: the position a partition is replayed from is decided here.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use momentum_actors::engine::{IngestReport, NewEvent};
use momentum_actors::{ActorError, Engine};

use super::snapshots::SnapshotStore;
use super::{partition_of, unix_ms, Cluster, Logged, LoggedEvent, PartitionSlot, PartitionState};
use crate::error::Error;
use crate::experiments::Pending;

/// A change of assignment, recorded by the callback and carried out by the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Assigned(u32),
    Revoked(u32),
}

/// The consumer's context: the rebalance callback.
struct Membership {
    topic: String,
    partitions: Arc<Vec<PartitionSlot>>,
    changes: Mutex<VecDeque<Change>>,
}

impl ClientContext for Membership {}

impl ConsumerContext for Membership {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let partitions: Vec<u32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .filter_map(|e| u32::try_from(e.partition()).ok())
            .filter(|&p| (p as usize) < self.partitions.len())
            .collect();
        let outcome = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Replayed from the beginning of the log: the position is ours, not the
                // group's committed offset.
                for &p in &partitions {
                    let slot = &self.partitions[p as usize];
                    slot.generation.fetch_add(1, Ordering::AcqRel);
                    slot.next_offset.store(0, Ordering::Release);
                    slot.set_state(PartitionState::Restoring);
                    if let Err(error) =
                        tpl.set_partition_offset(&self.topic, p as i32, Offset::Beginning)
                    {
                        tracing::error!(%error, partition = p, "cannot set the replay position");
                    }
                }
                let mut changes = self.changes.lock();
                changes.extend(partitions.iter().map(|&p| Change::Assigned(p)));
                drop(changes);
                tracing::info!(?partitions, "partitions assigned");
                consumer.incremental_assign(tpl)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Stop serving first: a read from now on is answered by the new owner.
                for &p in &partitions {
                    let slot = &self.partitions[p as usize];
                    slot.generation.fetch_add(1, Ordering::AcqRel);
                    slot.set_state(PartitionState::NotOwned);
                }
                let mut changes = self.changes.lock();
                changes.extend(partitions.iter().map(|&p| Change::Revoked(p)));
                drop(changes);
                tracing::info!(?partitions, "partitions revoked");
                consumer.incremental_unassign(tpl)
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                Ok(())
            }
        };
        if let Err(error) = outcome {
            tracing::error!(%error, "applying a rebalance");
        }
    }
}

/// A polled event with the assignment it was polled under.
struct Polled {
    partition: u32,
    offset: i64,
    generation: u64,
    /// When the broker took the record (its timestamp, ms since the epoch; 0 if it has none).
    logged_ms: i64,
    record: Option<Logged>,
}

/// Stops the membership thread (and with it this node's share of the group).
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub(super) fn stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Creates the events and item-deltas topics if they do not exist (idempotent; every node
/// tries).
async fn ensure_topics(cluster: &Cluster) -> Result<(), Error> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let settings = cluster.settings();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .create()
        .map_err(|e| Error::failed("kafka admin client", e))?;
    let mut topics: Vec<NewTopic<'_>> = [&settings.events_topic, &settings.item_deltas_topic]
        .into_iter()
        .map(|name| {
            NewTopic::new(
                name,
                settings.partitions as i32,
                TopicReplication::Fixed(-1),
            )
        })
        .collect();
    // The owners table and the item metadata: one partition each, compacted (the last claim
    // per partition, the last write per item are kept).
    for name in [&settings.owners_topic, &settings.items_topic] {
        topics.push(
            NewTopic::new(name, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact"),
        );
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&topics, &options)
        .await
        .map_err(|e| Error::failed("creating the cluster topics", e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::failed(
                    format!("creating topic {topic}"),
                    rdkafka::error::KafkaError::AdminOp(code),
                ))
            }
        }
    }
    Ok(())
}

/// Starts the membership thread: creates the events topic if needed, joins the group and
/// applies owned partitions to `engine` until `stop`. With `cluster.bridge_topic` set it also
/// starts the bridge (once the events topic exists), which validates by `rules`.
pub fn start(
    cluster: Arc<Cluster>,
    state: std::sync::Weak<crate::AppState>,
    engine: Arc<Engine>,
    rules: super::bridge::Rules,
    stop: Stop,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    super::spawn_with_runtime("cluster-membership", move |runtime| {
        // The topic may be created by another node at the same time; retry briefly.
        let mut attempts = 0;
        while let Err(error) = runtime.block_on(ensure_topics(&cluster)) {
            attempts += 1;
            tracing::warn!(error = %crate::error::Report(&error), attempts, "events topic not ready");
            if stop.stopped() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if !cluster.settings().bridge_topic.is_empty() {
            if let Err(error) = super::bridge::start(cluster.clone(), rules, stop.clone()) {
                tracing::error!(%error, "cannot start the cluster bridge thread");
                return;
            }
        }
        if let Err(error) = start_lag(cluster.clone(), stop.clone()) {
            tracing::error!(%error, "cannot start the cluster lag thread");
        }
        // Item knowledge first: a new owner waits for it before replaying.
        if let Err(error) =
            super::items::start(cluster.clone(), state.clone(), engine.clone(), stop.clone())
        {
            tracing::error!(%error, "cannot start the cluster items thread");
            return;
        }
        if let Err(error) = run(&cluster, &state, &engine, &stop, runtime) {
            tracing::error!(%error, "cluster membership stopped");
        }
    })
}

/// The lag of the partitions served here (`GET /v1/cluster`, `momentum_cluster_consumer_lag_events`),
/// refreshed about once a second on a thread and a client of its own: asking the broker for a
/// partition's end is a round trip per partition, and on the applying thread a slow answer
/// (Nisshi over a PostgreSQL holding 100k records took over 500 ms) stalled applying for
/// seconds every second.
fn start_lag(cluster: Arc<Cluster>, stop: Stop) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cluster-lag".into())
        .spawn(move || {
            let settings = cluster.settings();
            let client: BaseConsumer = match settings.assigned_client("lag").create() {
                Ok(client) => client,
                Err(error) => {
                    tracing::error!(%error, "cluster lag client");
                    return;
                }
            };
            let slots = cluster.partition_slots();
            while !stop.stopped() {
                let started = Instant::now();
                let mut lag = 0;
                for (p, slot) in slots.iter().enumerate() {
                    if slot.state() == PartitionState::NotOwned {
                        continue;
                    }
                    if let Ok((_, high)) = client.fetch_watermarks(
                        &settings.events_topic,
                        p as i32,
                        Duration::from_secs(2),
                    ) {
                        slot.high_watermark.fetch_max(high, Ordering::AcqRel);
                        lag += (high - slot.next_offset.load(Ordering::Acquire)).max(0);
                    }
                }
                cluster.metrics().consumer_lag.set(lag);
                std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
            }
        })
}

fn consumer(cluster: &Cluster) -> KafkaResult<BaseConsumer<Membership>> {
    let s = cluster.settings();
    let context = Membership {
        topic: s.events_topic.clone(),
        partitions: cluster.partition_slots().clone(),
        changes: Mutex::new(VecDeque::new()),
    };
    let consumer: BaseConsumer<Membership> = ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .set("group.id", &s.group_id)
        .set("group.instance.id", &s.node_id)
        .set("client.id", &s.node_id)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", s.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (s.session_timeout_ms / 3).max(100).to_string(),
        )
        .set("auto.offset.reset", "earliest")
        // As for the item-deltas consumer (`items.rs`).
        .set("fetch.wait.max.ms", s.fetch_wait_ms.to_string())
        // Committed offsets are for lag monitoring only (the replay position is ours).
        .set("enable.auto.commit", "true")
        .set("enable.partition.eof", "false")
        .create_with_context(context)?;
    consumer.subscribe(&[&s.events_topic])?;
    Ok(consumer)
}

fn run(
    cluster: &Cluster,
    state: &std::sync::Weak<crate::AppState>,
    engine: &Engine,
    stop: &Stop,
    runtime: &tokio::runtime::Runtime,
) -> KafkaResult<()> {
    let consumer = consumer(cluster)?;
    let settings = cluster.settings();
    let slots = cluster.partition_slots();
    let metrics = cluster.metrics();
    // Partitions replaying, with when they were assigned and the end of the log to reach.
    let mut restoring: Vec<(u32, Instant, Option<i64>)> = Vec::new();
    let mut batch: Vec<Polled> = Vec::with_capacity(settings.apply_batch);
    // Per partition: events at or below this offset are replayed without publishing their
    // item side (it was published by an earlier owner and applied everywhere).
    let mut silent_until: Vec<i64> = vec![-1; slots.len()];
    // Partition snapshots: the connection, the offset of the last one written or loaded per
    // partition, and when the last round ran.
    let mut store: Option<SnapshotStore> = None;
    let mut snapshotted: Vec<i64> = vec![-1; slots.len()];
    // Per partition: the generation of the current assignment (its owner claims carry it).
    let mut generations: Vec<i64> = vec![0; slots.len()];
    let mut last_snapshots = Instant::now();
    while !stop.stopped() {
        // Poll up to a batch: wait for the first message, then take what is already there.
        let mut wait = Duration::from_millis(100);
        while batch.len() < settings.apply_batch {
            match consumer.poll(wait) {
                None => break,
                Some(Err(error)) => {
                    tracing::warn!(%error, "kafka consumer");
                    break;
                }
                Some(Ok(message)) => {
                    wait = Duration::ZERO;
                    let Ok(partition) = u32::try_from(message.partition()) else {
                        continue;
                    };
                    let Some(slot) = slots.get(partition as usize) else {
                        continue;
                    };
                    let record = message
                        .payload()
                        .and_then(|bytes| serde_json::from_slice::<LoggedEvent>(bytes).ok())
                        .and_then(|e| e.into_logged(batch.len()));
                    batch.push(Polled {
                        partition,
                        offset: message.offset(),
                        generation: slot.generation.load(Ordering::Acquire),
                        logged_ms: message.timestamp().to_millis().unwrap_or(0),
                        record,
                    });
                }
            }
        }
        // Assignment changes first, in the order they happened.
        let changes: Vec<Change> = consumer.context().changes.lock().drain(..).collect();
        for change in changes {
            match change {
                Change::Revoked(p) => {
                    restoring.retain(|r| r.0 != p);
                    let dropped = runtime.block_on(drop_partition(engine, cluster, p));
                    metrics.users_dropped.inc_by(dropped as u64);
                    // Not owned any more: what is left of users erased meanwhile goes, as on
                    // any node that does not own them.
                    for (user_id, user) in cluster.revoked_taking_erasures(p) {
                        engine.forget_user(&user_id, user);
                    }
                }
                Change::Assigned(p) => {
                    restoring.retain(|r| r.0 != p);
                    restoring.push((p, Instant::now(), None));
                    let generation = unix_ms();
                    generations[p as usize] = generation;
                    runtime.block_on(cluster.claim(p, generation, false));
                    silent_until[p as usize] = item_side_applied(cluster, &consumer, p, stop);
                    snapshotted[p as usize] = -1;
                    if let Some(offset) = restore_snapshot(cluster, engine, runtime, &mut store, p)
                    {
                        snapshotted[p as usize] = offset;
                        slots[p as usize]
                            .next_offset
                            .store(offset + 1, Ordering::Release);
                        if let Err(error) = consumer.seek(
                            &settings.events_topic,
                            p as i32,
                            Offset::Offset(offset + 1),
                            Duration::from_secs(1),
                        ) {
                            // Harmless: earlier records are skipped by offset.
                            tracing::debug!(%error, partition = p, "seek past the snapshot");
                        }
                    }
                }
            }
        }
        apply(
            cluster,
            state,
            engine,
            runtime,
            &mut batch,
            &silent_until,
            stop,
        );
        // Readiness: a restoring partition is ready once it reached the end of the log as it
        // was at (about) its assignment.
        restoring.retain_mut(|(p, since, target)| {
            let slot = &slots[*p as usize];
            if slot.state() != PartitionState::Restoring {
                return false;
            }
            if target.is_none() {
                match consumer.fetch_watermarks(
                    &settings.events_topic,
                    *p as i32,
                    Duration::from_secs(2),
                ) {
                    Ok((_, high)) => {
                        slot.high_watermark.store(high, Ordering::Release);
                        *target = Some(high);
                    }
                    Err(error) => {
                        tracing::debug!(%error, partition = *p, "watermarks");
                        return true;
                    }
                }
            }
            let next = slot.next_offset.load(Ordering::Acquire);
            if target.is_some_and(|t| next >= t) {
                // Users erased while the partition was restoring whose erasure the replay did
                // not reach (it lies before the snapshot): what the item side left of them.
                let erased = cluster.ready_taking_erasures(*p);
                forget_rowless(engine, runtime, &erased);
                runtime.block_on(cluster.claim(*p, generations[*p as usize], true));
                let seconds = since.elapsed().as_secs_f64();
                metrics.handover_seconds.observe(seconds);
                tracing::info!(
                    partition = *p,
                    seconds,
                    next_offset = next,
                    "partition ready"
                );
                return false;
            }
            true
        });
        let every = settings.snapshot_interval_secs;
        if every > 0 && last_snapshots.elapsed() >= Duration::from_secs(every) {
            last_snapshots = Instant::now();
            write_snapshots(cluster, engine, runtime, &mut store, &mut snapshotted);
        }
        let owned = slots
            .iter()
            .filter(|s| s.state() != PartitionState::NotOwned)
            .count();
        let ready = slots
            .iter()
            .filter(|s| s.state() == PartitionState::Ready)
            .count();
        metrics.partitions_owned.set(owned as i64);
        metrics.partitions_ready.set(ready as i64);
    }
    // Leaving the group hands the partitions over at once (a static member would otherwise
    // keep them until its session times out).
    consumer.unsubscribe();
    let _ = consumer.poll(Duration::from_millis(100));
    Ok(())
}

/// Waits until this node read the item-deltas topic of partition `p` up to its end (as of
/// now), and returns the highest source offset of `p` whose item side is applied: the replay
/// of `p` publishes only what lies beyond it.
fn item_side_applied(
    cluster: &Cluster,
    consumer: &BaseConsumer<Membership>,
    p: u32,
    stop: &Stop,
) -> i64 {
    let topic = &cluster.settings().item_deltas_topic;
    let progress = cluster.item_progress();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match consumer.fetch_watermarks(topic, p as i32, Duration::from_secs(2)) {
            Ok((_, high)) if progress.position(p) >= high => return progress.applied(p),
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, partition = p, "item-deltas watermarks"),
        }
        if stop.stopped() || Instant::now() > deadline {
            tracing::warn!(
                partition = p,
                "item deltas not caught up; replaying with what is applied"
            );
            return progress.applied(p);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Applies the polled events whose partition is still in the generation they were polled
/// under and at or past its replay position, and publishes the item side of those beyond
/// `silent_until`; retries while the actors are full or the broker does not confirm (an
/// event of the log is never skipped).
fn apply(
    cluster: &Cluster,
    state: &std::sync::Weak<crate::AppState>,
    engine: &Engine,
    runtime: &tokio::runtime::Runtime,
    batch: &mut Vec<Polled>,
    silent_until: &[i64],
    stop: &Stop,
) {
    // A profile or an erasure applies between the events around it, as the partition orders
    // them: the events before it are applied first.
    let mut run = Vec::with_capacity(batch.len());
    for polled in batch.drain(..) {
        let user_record = match polled.record {
            Some(Logged::Profile { .. } | Logged::Erase { .. }) => polled,
            _ => {
                run.push(polled);
                continue;
            }
        };
        let events = std::mem::take(&mut run);
        apply_events(cluster, state, engine, runtime, events, silent_until, stop);
        apply_user_record(cluster, engine, runtime, user_record, silent_until, stop);
    }
    apply_events(cluster, state, engine, runtime, run, silent_until, stop);
}

/// Whether a polled record is to be applied: its partition is still in the assignment it was
/// polled in, and the record is not below the partition's position (a seek's leftovers).
fn current(slots: &[PartitionSlot], polled: &Polled) -> bool {
    let slot = &slots[polled.partition as usize];
    slot.state() != PartitionState::NotOwned
        && slot.generation.load(Ordering::Acquire) == polled.generation
        && polled.offset >= slot.next_offset.load(Ordering::Acquire)
}

/// Applies a profile or an erasure record to its user, on the owner.
///
/// A profile has no item side. An erasure takes the user's row, recent event ids and id here,
/// then its item side goes to the item-deltas topic (unless that of this offset is applied
/// everywhere already), so that every node drops their weights, vector and id, and the traces
/// in its own store.
fn apply_user_record(
    cluster: &Cluster,
    engine: &Engine,
    runtime: &tokio::runtime::Runtime,
    polled: Polled,
    silent_until: &[i64],
    stop: &Stop,
) {
    let slots = cluster.partition_slots();
    if !current(slots, &polled) {
        return;
    }
    let (p, offset) = (polled.partition, polled.offset);
    let partitions = cluster.settings().partitions;
    match polled.record {
        Some(Logged::Profile { user_id, profile }) if partition_of(&user_id, partitions) == p => {
            if let Err(error) =
                until_admitted(runtime, || engine.put_user(&user_id, profile.clone()))
            {
                tracing::error!(%error, partition = p, offset, "applying a profile failed");
            }
            cluster.metrics().events_applied.inc();
        }
        Some(Logged::Erase { user_id }) if partition_of(&user_id, partitions) == p => {
            let erased =
                until_admitted(runtime, || engine.erase_row(&user_id)).unwrap_or_else(|error| {
                    tracing::error!(%error, partition = p, offset, "applying an erasure failed");
                    None
                });
            let publish = offset > silent_until[p as usize];
            match erased {
                // The id goes as the erasure is noted, so that the item deltas of theirs
                // still ahead of this node's catalogue keep naming them by it.
                Some(user) if publish => {
                    let forget = || engine.forget_user(&user_id, user);
                    cluster
                        .erased_here()
                        .note(&user_id, p, offset, user, forget);
                }
                Some(user) => engine.forget_user(&user_id, user),
                None => {}
            }
            let rows = vec![super::items::WireRow::erased(user_id)];
            if publish
                && !publish_item_side(cluster, runtime, stop, p, (offset, polled.logged_ms), rows)
            {
                return;
            }
            cluster.metrics().events_applied.inc();
        }
        _ => tracing::warn!(
            partition = p,
            offset,
            "skipping a user record of a user of another partition"
        ),
    }
    slots[p as usize]
        .next_offset
        .fetch_max(offset + 1, Ordering::AcqRel);
}

/// Runs an engine call, again after a short pause while the mailboxes it needs are full.
pub(super) fn until_admitted<T, F>(
    runtime: &tokio::runtime::Runtime,
    mut call: impl FnMut() -> F,
) -> Result<T, ActorError>
where
    F: std::future::Future<Output = Result<T, ActorError>>,
{
    loop {
        match runtime.block_on(call()) {
            Err(ActorError::Overloaded { .. }) => std::thread::sleep(Duration::from_millis(5)),
            other => return other,
        }
    }
}

/// Publishes the item side of partition `p` up to the tag (offset, logged ms), retrying until
/// the broker takes it; `false` if the node stopped first.
fn publish_item_side(
    cluster: &Cluster,
    runtime: &tokio::runtime::Runtime,
    stop: &Stop,
    p: u32,
    (offset, logged_ms): (i64, i64),
    rows: Vec<super::items::WireRow>,
) -> bool {
    while let Err(error) =
        runtime.block_on(cluster.publish_item_deltas(p, offset, logged_ms, rows.clone()))
    {
        tracing::warn!(error = %crate::error::Report(&error), partition = p, "publishing item deltas");
        if stop.stopped() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

/// [`Engine::forget_rowless`], retried while the mailboxes are full.
pub(super) fn forget_rowless(
    engine: &Engine,
    runtime: &tokio::runtime::Runtime,
    users: &[(String, u32)],
) {
    if users.is_empty() {
        return;
    }
    if let Err(error) = until_admitted(runtime, || engine.forget_rowless(users)) {
        tracing::error!(%error, "forgetting erased users failed");
    }
}

/// Applies a run of events (no profile or erasure among them) and publishes their item side.
/// Events seen for the first time (not replayed) are also compared with the success
/// predictions served here and attributed to the experiment variants served here.
fn apply_events(
    cluster: &Cluster,
    state: &std::sync::Weak<crate::AppState>,
    engine: &Engine,
    runtime: &tokio::runtime::Runtime,
    batch: Vec<Polled>,
    silent_until: &[i64],
    stop: &Stop,
) {
    let slots = cluster.partition_slots();
    let partitions = cluster.settings().partitions;
    let mut silent = Vec::new();
    let mut published = Vec::new();
    // Per partition: the highest offset whose item side this batch publishes, and when its
    // oldest published event was logged (for the staleness every node measures).
    let mut tags: Vec<(u32, i64, i64)> = Vec::new();
    let mut positions: Vec<(u32, i64)> = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut with_event_id: Vec<usize> = Vec::new();
    for polled in batch {
        let p = polled.partition;
        if !current(slots, &polled) {
            continue;
        }
        positions.push((p, polled.offset));
        match polled.record {
            Some(Logged::Event(event, recommendation_id))
                if partition_of(&event.user_id, partitions) == p =>
            {
                if polled.offset <= silent_until[p as usize] {
                    silent.push(event);
                } else {
                    if event.event_id.is_some() {
                        with_event_id.push(event.index);
                    }
                    if let Some(recommendation_id) = recommendation_id {
                        pending.push(Pending {
                            index: event.index,
                            recommendation_id,
                            user_id: event.user_id.clone(),
                            event_id: event.event_id.clone(),
                            kind: event.kind,
                        });
                    }
                    match tags.iter_mut().find(|t| t.0 == p) {
                        Some(tag) => {
                            tag.1 = tag.1.max(polled.offset);
                            tag.2 = tag.2.min(polled.logged_ms);
                        }
                        None => tags.push((p, polled.offset, polled.logged_ms)),
                    }
                    published.push(event);
                }
            }
            Some(_) | None => {
                tracing::warn!(
                    partition = p,
                    offset = polled.offset,
                    "skipping a record that is not a momentum event of this partition"
                );
            }
        }
    }
    let applied = silent.len() + published.len();
    // Silent events come first: within a partition they precede every published one.
    let _ = record(cluster, engine, runtime, silent);
    // Outcomes of goals this node predicted (replayed events were seen by an earlier owner).
    let state = state.upgrade();
    if let Some(state) = &state {
        crate::analytics::observe_outcomes(state.analytics.shared(), engine, &published);
    }
    let deltas = match record(cluster, engine, runtime, published) {
        Some((report, deltas)) => {
            if let (Some(state), false) = (&state, pending.is_empty()) {
                state
                    .experiments
                    .attribute_applied(&pending, &with_event_id, &report);
            }
            deltas
        }
        None => Vec::new(),
    };
    drop(state);
    let mut encoded = super::items::encode(engine, partitions, &deltas);
    // Every partition with published events gets a record, rows or not: its tag is how every
    // node knows its item statistics caught up with the partition (`GET /v1/cluster`).
    for &(p, _, _) in &tags {
        if !encoded.iter().any(|e| e.0 == p) {
            encoded.push((p, Vec::new()));
        }
    }
    for (p, rows) in encoded {
        let Some(&(_, offset, logged_ms)) = tags.iter().find(|t| t.0 == p) else {
            continue;
        };
        if !publish_item_side(cluster, runtime, stop, p, (offset, logged_ms), rows) {
            return;
        }
    }
    cluster.metrics().events_applied.inc_by(applied as u64);
    for (p, offset) in positions {
        slots[p as usize]
            .next_offset
            .fetch_max(offset + 1, Ordering::AcqRel);
    }
}

/// Applies events to their users' rows; returns what the engine said and the item side
/// (`None`: the engine failed, logged).
fn record(
    cluster: &Cluster,
    engine: &Engine,
    runtime: &tokio::runtime::Runtime,
    events: Vec<NewEvent>,
) -> Option<(IngestReport, Vec<momentum_actors::messages::RowDelta>)> {
    if events.is_empty() {
        return Some(Default::default());
    }
    match until_admitted(runtime, || engine.record_events_detached(events.clone())) {
        Ok((report, deltas)) => {
            cluster
                .metrics()
                .events_duplicate
                .inc_by(report.duplicates as u64);
            Some((report, deltas))
        }
        Err(error) => {
            tracing::error!(%error, "applying owned events failed");
            None
        }
    }
}

/// The snapshot connection, (re)connected if needed; `None` (logged) if PostgreSQL cannot be
/// reached now.
fn snapshot_store<'a>(
    cluster: &Cluster,
    runtime: &tokio::runtime::Runtime,
    store: &'a mut Option<SnapshotStore>,
) -> Option<&'a SnapshotStore> {
    if store.as_ref().is_some_and(SnapshotStore::is_closed) {
        *store = None;
    }
    if store.is_none() {
        let settings = cluster.settings();
        let url = settings.snapshot_url()?;
        match runtime.block_on(SnapshotStore::connect(&url, &settings.snapshot_schema)) {
            Ok(connected) => *store = Some(connected),
            Err(error) => {
                tracing::warn!(error = %crate::error::Report(&error), "partition snapshots unavailable");
                return None;
            }
        }
    }
    store.as_ref()
}

/// Loads partition `p`'s snapshot into the engine; its offset, or `None` when there is none
/// or it cannot be read (the partition is then replayed from the start of its log).
fn restore_snapshot(
    cluster: &Cluster,
    engine: &Engine,
    runtime: &tokio::runtime::Runtime,
    store: &mut Option<SnapshotStore>,
    p: u32,
) -> Option<i64> {
    let store = snapshot_store(cluster, runtime, store)?;
    let (offset, body) = match runtime.block_on(store.load(p)) {
        Ok(found) => found?,
        Err(error) => {
            tracing::warn!(error = %crate::error::Report(&error), partition = p, "loading a partition snapshot");
            return None;
        }
    };
    let export = match super::snapshots::decode(&body) {
        Ok(export) => export,
        Err(error) => {
            tracing::error!(%error, partition = p, "a partition snapshot cannot be decoded");
            return None;
        }
    };
    match until_admitted(runtime, || engine.adopt_rows(export.clone())) {
        Ok(users) => {
            tracing::info!(partition = p, offset, users, "partition snapshot restored");
            cluster.metrics().snapshots_restored.inc();
            Some(offset)
        }
        Err(error) => {
            tracing::error!(%error, partition = p, "restoring a partition snapshot");
            None
        }
    }
}

/// Writes a snapshot of every ready partition that moved since its last one.
fn write_snapshots(
    cluster: &Cluster,
    engine: &Engine,
    runtime: &tokio::runtime::Runtime,
    store: &mut Option<SnapshotStore>,
    snapshotted: &mut [i64],
) {
    let slots = cluster.partition_slots();
    let due: Vec<(u32, i64)> = slots
        .iter()
        .enumerate()
        .filter(|(_, slot)| slot.state() == PartitionState::Ready)
        .map(|(p, slot)| (p as u32, slot.next_offset.load(Ordering::Acquire) - 1))
        .filter(|&(p, offset)| offset > snapshotted[p as usize])
        .collect();
    if due.is_empty() {
        return;
    }
    let Some(store) = snapshot_store(cluster, runtime, store) else {
        return;
    };
    let partitions = cluster.settings().partitions;
    let mut users: Vec<Vec<Arc<str>>> = vec![Vec::new(); slots.len()];
    for name in engine.index().users.slots_snapshot().into_iter().flatten() {
        users[partition_of(&name, partitions) as usize].push(name);
    }
    let now_ms = unix_ms();
    for (p, offset) in due {
        let export = match runtime.block_on(engine.export_rows(&users[p as usize])) {
            Ok(export) => export,
            Err(error) => {
                tracing::warn!(%error, partition = p, "exporting a partition");
                continue;
            }
        };
        let body = super::snapshots::encode(&export);
        let node = &cluster.settings().node_id;
        match runtime.block_on(store.save(p, offset, node, now_ms, &body)) {
            Ok(true) => {
                snapshotted[p as usize] = offset;
                cluster.metrics().snapshots_written.inc();
            }
            Ok(false) => {
                // A snapshot at this or a higher offset is there (a successor's): fenced.
                snapshotted[p as usize] = offset;
                cluster.metrics().snapshots_fenced.inc();
                tracing::info!(
                    partition = p,
                    offset,
                    "partition snapshot fenced by a newer one"
                );
            }
            Err(error) => {
                tracing::warn!(error = %crate::error::Report(&error), partition = p, "writing a partition snapshot");
                return;
            }
        }
    }
}

/// Drops the in-memory rows of every user of partition `p` (a revoked partition); their
/// vectors and item weights stay, kept up to date by the new owner's item deltas. Returns how
/// many rows were dropped.
async fn drop_partition(engine: &Engine, cluster: &Cluster, p: u32) -> usize {
    let partitions = cluster.settings().partitions;
    let users: Vec<Arc<str>> = engine
        .index()
        .users
        .slots_snapshot()
        .into_iter()
        .flatten()
        .filter(|name| partition_of(name, partitions) == p)
        .collect();
    loop {
        match engine.drop_rows(&users).await {
            Ok(dropped) => {
                tracing::info!(partition = p, dropped, "revoked partition dropped");
                return dropped;
            }
            Err(ActorError::Overloaded { .. }) => {
                tokio::time::sleep(Duration::from_millis(5)).await
            }
            Err(error) => {
                tracing::error!(%error, partition = p, "dropping a revoked partition's rows");
                return 0;
            }
        }
    }
}
