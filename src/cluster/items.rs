//! Global item knowledge: item statistics are sums over all users, so every node applies the
//! item side of every partition's events, whoever owns the users.
//!
//! The owner of a partition applies its events to the users' rows and publishes the item side
//! of each batch (each changed user's vector after it, in external ids) to the
//! item-deltas topic, tagged with the source partition and the highest source offset the
//! batch covers. Every node consumes every partition of that topic (no group: each reads all)
//! and applies a record only if its tag is above the highest source offset it applied for that
//! partition, so a replay after a failover and a stalled former owner are harmless. A new
//! owner first catches up with the item-deltas topic, then replays the events at or below the
//! highest applied tag without publishing (their item side is already everywhere).
//!
//! The same thread reads the compacted owners topic, where each node claims the partitions it
//! was assigned (replaying, then ready), so that any node can forward a read to the owner, and
//! the compacted items topic: item metadata written through any node (`PUT`/`DELETE
//! /v1/items/{id}`), which every node applies in the topic's order.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use momentum_actors::index::{ItemMeta, UserVector};
use momentum_actors::messages::RowDelta;
use momentum_actors::Engine;

use super::consumer::{forget_rowless, until_admitted, Stop};
use super::{partition_of, Cluster, PartitionSlot, PartitionState};
use crate::error::Error;
use crate::AppState;

/// One user's row change, in external ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireRow {
    pub user_id: String,
    /// The user's vector after the batch: (item, weight). Receivers derive the change from
    /// the vector they applied last (see [`ItemSide`]).
    pub after: Vec<(String, f32)>,
    pub norm2: f64,
    /// The user was erased (`after` is empty): receivers drop their weights, vector and id.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erased: bool,
}

impl WireRow {
    /// The item side of a user's erasure.
    pub fn erased(user_id: String) -> WireRow {
        WireRow {
            user_id,
            after: Vec::new(),
            norm2: 0.0,
            erased: true,
        }
    }
}

/// A record of the item-deltas topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemDeltaRecord {
    /// The events partition the rows belong to.
    pub partition: u32,
    /// The highest offset of that partition the batch covered.
    pub offset: i64,
    /// When the broker logged the oldest event of the batch (ms since the epoch; 0: unknown,
    /// as in records of older versions). Receivers measure the staleness of their item
    /// statistics from it.
    #[serde(default)]
    pub logged_ms: i64,
    pub rows: Vec<WireRow>,
}

/// A record of the items topic: an item's metadata as of a `PUT`, or its deletion (`None`).
/// Keyed by item id in a compacted topic, so the last write per item is what a new node
/// reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRecord {
    pub item_id: String,
    pub meta: Option<ItemMeta>,
}

/// Where every node stands on the item-deltas topic.
#[derive(Debug)]
pub struct ItemProgress {
    /// Per source partition: the highest source offset applied here (-1: none).
    applied: Vec<AtomicI64>,
    /// Per item-deltas partition: the next offset this node will read.
    position: Vec<AtomicI64>,
}

impl ItemProgress {
    pub fn new(partitions: u32) -> ItemProgress {
        ItemProgress {
            applied: (0..partitions).map(|_| AtomicI64::new(-1)).collect(),
            position: (0..partitions).map(|_| AtomicI64::new(0)).collect(),
        }
    }

    /// The highest source offset of partition `p` whose item side was applied here.
    pub fn applied(&self, p: u32) -> i64 {
        self.applied[p as usize].load(Ordering::Acquire)
    }

    /// The next item-deltas offset of partition `p` this node will read.
    pub fn position(&self, p: u32) -> i64 {
        self.position[p as usize].load(Ordering::Acquire)
    }
}

/// The item side of a batch in external ids, grouped by source partition.
pub fn encode(engine: &Engine, partitions: u32, deltas: &[RowDelta]) -> Vec<(u32, Vec<WireRow>)> {
    let mut by_partition: std::collections::BTreeMap<u32, Vec<WireRow>> = Default::default();
    let item = |id: u32| engine.item_name(id).map(|n| n.to_string());
    for d in deltas {
        let Some(user_id) = engine.user_name(d.user) else {
            continue;
        };
        let row = WireRow {
            after: d
                .after
                .items
                .iter()
                .filter_map(|&(i, w)| Some((item(i)?, w)))
                .collect(),
            norm2: d.after.norm2,
            user_id: user_id.to_string(),
            erased: false,
        };
        by_partition
            .entry(partition_of(&row.user_id, partitions))
            .or_default()
            .push(row);
    }
    by_partition.into_iter().collect()
}

/// What this node's catalogue holds of each user: the vector whose item side it applied
/// last. A record's change is computed against it, not taken from the record, so a record
/// that covers offsets an earlier record of another owner already covered (a new owner
/// replays what the old one published but this node had not read when it claimed the
/// partition) moves the catalogue to the record's state once instead of adding the overlap
/// twice.
pub type ItemSide = std::collections::HashMap<u32, Arc<UserVector>>;

/// The change from `before` to `after` (both sorted by item): `(item, old, new)` for every
/// item whose weight differs.
fn diff(before: &[(u32, f32)], after: &[(u32, f32)]) -> Vec<(u32, f32, f32)> {
    let mut changes = Vec::new();
    let (mut i, mut j) = (0, 0);
    loop {
        match (before.get(i), after.get(j)) {
            (Some(&(a, wa)), Some(&(b, wb))) if a == b => {
                if wa != wb {
                    changes.push((a, wa, wb));
                }
                i += 1;
                j += 1;
            }
            (Some(&(a, wa)), Some(&(b, _))) if a < b => {
                changes.push((a, wa, 0.0));
                i += 1;
            }
            (Some(&(a, wa)), None) => {
                changes.push((a, wa, 0.0));
                i += 1;
            }
            (_, Some(&(b, wb))) => {
                changes.push((b, 0.0, wb));
                j += 1;
            }
            (None, None) => return changes,
        }
    }
}

/// A record's rows in this node's dense ids (interning users and items it has not seen),
/// each as the change from the user's vector in `side` to the record's; `side` moves to the
/// record's vectors. Rows naming ids beyond the tables' bounds are left out.
///
/// A user this node erased as the owner, whose erasure record is still ahead, is named by
/// the dense id they had (`erased_here`, [`super::ErasedHere`]). An erased user's row takes
/// away everything `side` held of them, and they are added to `erased` with that id (`None`:
/// this node never knew them).
fn decode(
    engine: &Engine,
    rows: Vec<WireRow>,
    side: &mut ItemSide,
    erased_here: Option<(&super::ErasedHere, i64)>,
    erased: &mut Vec<(String, Option<u32>)>,
) -> Vec<RowDelta> {
    let index = engine.index();
    rows.into_iter()
        .filter_map(|row| {
            if row.erased {
                let user = erased_here
                    .and_then(|(here, offset)| here.take(&row.user_id, offset))
                    .or_else(|| index.users.get(&row.user_id));
                erased.push((row.user_id, user));
                let user = user?;
                let before = side.remove(&user);
                let changes = diff(before.as_ref().map_or(&[][..], |v| &v.items), &[]);
                return Some(RowDelta {
                    user,
                    changes,
                    after: Arc::new(UserVector::default()),
                });
            }
            let intern = || index.users.intern(&row.user_id);
            let user = match erased_here {
                Some((here, offset)) => here.resolve(&row.user_id, offset, intern),
                None => intern(),
            }?;
            let mut items = row
                .after
                .iter()
                .map(|(item, w)| Some((index.items.intern(item)?, *w)))
                .collect::<Option<Vec<_>>>()?;
            items.sort_unstable_by_key(|e| e.0);
            let after = Arc::new(UserVector {
                items: items.into_boxed_slice(),
                norm2: row.norm2,
                excluded: Box::default(),
            });
            let before = side.insert(user, after.clone());
            let changes = diff(before.as_ref().map_or(&[][..], |v| &v.items), &after.items);
            Some(RowDelta {
                user,
                changes,
                after,
            })
        })
        .collect()
}

/// Starts the thread that applies every partition's item side to this node's catalogue.
pub fn start(
    cluster: Arc<Cluster>,
    state: Weak<AppState>,
    engine: Arc<Engine>,
    stop: Stop,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    super::spawn_with_runtime("cluster-items", move |runtime| {
        if let Err(error) = run(&cluster, &state, &engine, &stop, runtime) {
            tracing::error!(%error, "cluster items stopped");
        }
    })
}

fn run(
    cluster: &Cluster,
    state: &Weak<AppState>,
    engine: &Engine,
    stop: &Stop,
    runtime: &tokio::runtime::Runtime,
) -> rdkafka::error::KafkaResult<()> {
    let settings = cluster.settings();
    // How late the item side and item metadata are seen is bounded by the fetch wait
    // (docs/operations.md, "Capacity planning").
    let consumer: BaseConsumer = settings.assigned_client("items").create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..settings.partitions {
        assignment.add_partition_offset(
            &settings.item_deltas_topic,
            p as i32,
            Offset::Beginning,
        )?;
    }
    // The owners table rides along: who serves which partition, for forwarding reads; so does
    // the item metadata every node applies.
    assignment.add_partition_offset(&settings.owners_topic, 0, Offset::Beginning)?;
    assignment.add_partition_offset(&settings.items_topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let progress = cluster.item_progress();
    let slots = cluster.partition_slots();
    let mut side = ItemSide::default();
    // Per partition: whether this node may have published vectors of its users that the item
    // side has since moved past, and so owes them the item side's. That is so from the moment
    // the node is assigned the partition (its restore and replay publish what they rebuild,
    // and records for the partition are then applied without publishing, the owner's shards
    // publishing their own) until, the partition no longer being its, it has published them.
    // Ownership changes are seen through the slot's generation, which every assignment and
    // revocation moves, so a flap between two looks here is not missed.
    let mut withheld = vec![false; settings.partitions as usize];
    let mut seen: Vec<u64> = slots
        .iter()
        .map(|s| s.generation.load(Ordering::Acquire))
        .collect();
    while !stop.stopped() {
        let mut due = Vec::new();
        for (p, flag) in withheld.iter_mut().enumerate() {
            let generation = slots[p].generation.load(Ordering::Acquire);
            if generation != seen[p] {
                seen[p] = generation;
                *flag = true;
            }
            if *flag && slots[p].state() == PartitionState::NotOwned {
                due.push((p as u32, generation));
            }
        }
        if !due.is_empty() {
            let (published, interrupted) =
                publish_withheld(engine, &side, settings.partitions, &due, slots);
            for (p, _) in &due {
                withheld[*p as usize] = interrupted.contains(p);
            }
            tracing::debug!(?due, published, "withheld vectors published");
        }
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = match polled {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "item-deltas consumer");
                continue;
            }
        };
        if message.topic() == settings.owners_topic {
            if let Some(record) = message
                .payload()
                .and_then(|bytes| serde_json::from_slice::<super::OwnerRecord>(bytes).ok())
            {
                cluster.learn_owner(record);
            }
            continue;
        }
        if message.topic() == settings.items_topic {
            match message
                .payload()
                .and_then(|bytes| serde_json::from_slice::<ItemRecord>(bytes).ok())
            {
                Some(record) => apply_item_record(state, runtime, stop, record),
                None => tracing::warn!(
                    offset = message.offset(),
                    "skipping a record that is not item metadata"
                ),
            }
            cluster.item_record_applied(message.offset());
            continue;
        }
        let Ok(topic_partition) = u32::try_from(message.partition()) else {
            continue;
        };
        let record = message
            .payload()
            .and_then(|bytes| serde_json::from_slice::<ItemDeltaRecord>(bytes).ok());
        let next = message.offset() + 1;
        if let Some(record) = record.filter(|r| r.partition < settings.partitions) {
            let p = record.partition;
            // Erasures whose records are behind (skipped as a former owner's copies) go first,
            // so none names a user in this record.
            cluster.erased_here().prune(p, progress.applied(p));
            if record.offset > progress.applied(p) {
                let mut erased = Vec::new();
                let here = Some((cluster.erased_here(), record.offset));
                let deltas = decode(engine, record.rows, &mut side, here, &mut erased);
                let partitions = settings.partitions;
                let publish = |user: u32| {
                    partition_of_user(engine, user, partitions)
                        .is_some_and(|p| slots[p as usize].state() == PartitionState::NotOwned)
                };
                let apply = || engine.apply_item_deltas(deltas.clone(), publish);
                if let Err(error) = until_admitted(runtime, apply) {
                    tracing::error!(%error, "applying item deltas failed");
                }
                if !erased.is_empty() {
                    forget_erased(cluster, state, engine, runtime, erased);
                }
                progress.applied[p as usize].fetch_max(record.offset, Ordering::AcqRel);
                cluster.metrics().item_deltas_applied.inc();
                if record.logged_ms > 0 {
                    let now_ms = super::unix_ms();
                    cluster
                        .metrics()
                        .item_staleness_seconds
                        .observe((now_ms - record.logged_ms).max(0) as f64 / 1000.0);
                }
            } else {
                cluster.metrics().item_deltas_skipped.inc();
            }
            cluster.erased_here().prune(p, progress.applied(p));
        } else {
            tracing::warn!(
                offset = message.offset(),
                "skipping a record that is not an item delta"
            );
        }
        if let Some(position) = progress.position.get(topic_partition as usize) {
            position.fetch_max(next, Ordering::AcqRel);
        }
    }
    Ok(())
}

/// After the item side of erasures is applied: forgets the users' vectors and ids here unless
/// this node serves their partition (its consumer erases them there, in the log's order, and
/// forgets what a restore left of them once the partition is ready), and deletes their rows in
/// this node's own store (churn scores, interventions), known here or not.
fn forget_erased(
    cluster: &Cluster,
    state: &Weak<AppState>,
    engine: &Engine,
    runtime: &tokio::runtime::Runtime,
    erased: Vec<(String, Option<u32>)>,
) {
    let slots = cluster.partition_slots();
    let state = state.upgrade();
    for (user_id, user) in erased {
        let p = cluster.partition_of(&user_id);
        match user {
            Some(user) if slots[p as usize].state() == PartitionState::NotOwned => {
                engine.forget_user(&user_id, user);
            }
            Some(user) if !cluster.defer_erasure_if_restoring(p, &user_id, user) => {
                // Served here: the replay is past the erasure, or the user has a row the
                // consumer erases when it reaches it.
                forget_rowless(engine, runtime, &[(user_id.clone(), user)]);
            }
            _ => {}
        }
        if let Some(state) = &state {
            if let Err(error) = runtime.block_on(state.journal.store().erase_user(&user_id)) {
                tracing::error!(%error, "erasing a user from this node's store");
            }
        }
    }
}

/// The partition of a user known by dense id.
fn partition_of_user(engine: &Engine, user: u32, partitions: u32) -> Option<u32> {
    engine
        .user_name(user)
        .map(|name| partition_of(&name, partitions))
}

/// Publishes the vector this node's item side holds for every user of the partitions `due`
/// (each with the generation it had when it was found not owned): the latest its owners sent
/// through the item-deltas topic. A partition assigned again meanwhile (its generation moved)
/// is left alone from then on, its new restore publishing what it rebuilds. Returns how many
/// vectors were published and the partitions interrupted so.
fn publish_withheld(
    engine: &Engine,
    side: &ItemSide,
    partitions: u32,
    due: &[(u32, u64)],
    slots: &[PartitionSlot],
) -> (usize, Vec<u32>) {
    let vectors = &engine.index().vectors;
    let mut interrupted = Vec::new();
    let mut published = 0;
    for (&user, vector) in side {
        let Some(p) = partition_of_user(engine, user, partitions) else {
            continue;
        };
        let Some(&(_, generation)) = due.iter().find(|d| d.0 == p) else {
            continue;
        };
        if interrupted.contains(&p) {
            continue;
        }
        if slots[p as usize].generation.load(Ordering::Acquire) != generation {
            interrupted.push(p);
            continue;
        }
        vectors.insert(user, vector.clone());
        published += 1;
    }
    (published, interrupted)
}

/// Applies an item's metadata or deletion to this node's store and catalogue, as a local
/// `PUT`/`DELETE` does. Deleting an item this node does not know changes nothing. A failure
/// (the store, full mailboxes) is retried for about ten seconds, then logged and skipped.
fn apply_item_record(
    state: &Weak<AppState>,
    runtime: &tokio::runtime::Runtime,
    stop: &Stop,
    record: ItemRecord,
) {
    let Some(state) = state.upgrade() else {
        return;
    };
    for attempt in 1..=50 {
        let applied = match &record.meta {
            Some(meta) => runtime
                .block_on(state.journal.put_item(&record.item_id, meta.clone()))
                .map(drop),
            None => match runtime.block_on(state.journal.delete_item(&record.item_id)) {
                Err(Error::UnknownItem { .. }) => Ok(()),
                other => other,
            },
        };
        match applied {
            Ok(()) => return,
            Err(error) if attempt == 50 || stop.stopped() => {
                tracing::error!(error = %crate::error::Report(&error), item_id = %record.item_id,
                    "item metadata from the cluster not applied");
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_exactly() {
        let record = ItemDeltaRecord {
            partition: 3,
            offset: 41,
            logged_ms: 1_700_000_000_123,
            rows: vec![WireRow {
                user_id: "alice".into(),
                after: vec![("read".into(), 0.1), ("run".into(), 5.0)],
                norm2: 25.0 + 0.1f64 * 0.1,
                erased: false,
            }],
        };
        let bytes = serde_json::to_vec(&record).expect("encodes");
        let back: ItemDeltaRecord = serde_json::from_slice(&bytes).expect("decodes");
        assert_eq!(
            back, record,
            "floats survive the JSON round trip bit for bit"
        );
    }

    #[actix::test]
    async fn an_erased_row_takes_away_what_the_node_held_of_the_user() {
        let engine = Engine::start(
            momentum_actors::EngineConfig::default(),
            momentum_actors::metrics::ActorMetrics::unregistered(),
        );
        let row = |user: &str, after: Vec<(String, f32)>| WireRow {
            user_id: user.into(),
            after,
            norm2: 0.0,
            erased: false,
        };
        let mut side = ItemSide::default();
        let mut erased = Vec::new();
        let rows = vec![
            row("alice", vec![("read".into(), 1.0), ("run".into(), 2.0)]),
            row("bob", vec![("run".into(), 3.0)]),
        ];
        decode(&engine, rows, &mut side, None, &mut erased);
        let alice = engine.index().users.get("alice").expect("interned");
        let (read, run) = (
            engine.index().items.get("read").expect("read"),
            engine.index().items.get("run").expect("run"),
        );
        // Alice's erasure, named by the interner: her every weight goes, Bob's stay.
        let deltas = decode(
            &engine,
            vec![WireRow::erased("alice".into())],
            &mut side,
            None,
            &mut erased,
        );
        assert_eq!(deltas.len(), 1);
        assert_eq!(deltas[0].user, alice);
        assert_eq!(deltas[0].changes, vec![(read, 1.0, 0.0), (run, 2.0, 0.0)]);
        assert!(deltas[0].after.items.is_empty());
        assert!(!side.contains_key(&alice) && side.len() == 1);
        assert_eq!(erased, vec![("alice".to_owned(), Some(alice))]);

        // Bob was erased here as the owner (his id forgotten) while a record of his from
        // before the erasure, and then a new Bob's, were still ahead: the old record names
        // the old Bob, the erasure takes exactly his weights, the new Bob gets a new id.
        let bob = engine.index().users.get("bob").expect("interned");
        let here = crate::cluster::ErasedHere::default();
        here.note("bob", 1, 40, bob, || {
            engine.index().users.erase("bob");
        });
        erased.clear();
        let before = vec![row("bob", vec![("read".into(), 4.0), ("run".into(), 3.0)])];
        let deltas = decode(&engine, before, &mut side, Some((&here, 39)), &mut erased);
        assert_eq!(
            (deltas[0].user, &deltas[0].changes),
            (bob, &vec![(read, 0.0, 4.0)])
        );
        assert_eq!(engine.index().users.get("bob"), None, "not interned again");
        let deltas = decode(
            &engine,
            vec![
                WireRow::erased("bob".into()),
                WireRow::erased("carol".into()),
            ],
            &mut side,
            Some((&here, 40)),
            &mut erased,
        );
        assert_eq!(deltas.len(), 1, "carol was never known here");
        assert_eq!(deltas[0].changes, vec![(read, 4.0, 0.0), (run, 3.0, 0.0)]);
        assert!(side.is_empty() && here.is_empty());
        assert_eq!(
            erased,
            vec![("bob".to_owned(), Some(bob)), ("carol".to_owned(), None)]
        );
        let again = vec![row("bob", vec![("run".into(), 1.0)])];
        let deltas = decode(&engine, again, &mut side, Some((&here, 41)), &mut erased);
        assert_ne!(deltas[0].user, bob);
        assert_eq!(deltas[0].changes, vec![(run, 0.0, 1.0)]);
        // The flag is left out of the records of rows that are not erasures.
        let json = serde_json::to_string(&row("dan", vec![])).expect("encodes");
        assert!(!json.contains("erased"), "{json}");
    }

    #[actix::test]
    async fn withheld_vectors_are_published_for_their_partition_only() {
        let mut config = momentum_actors::EngineConfig::default();
        config.actors.shards = 1;
        config.actors.threads = 1;
        let engine = Engine::start(
            config,
            momentum_actors::metrics::ActorMetrics::unregistered(),
        );
        let partitions = 4;
        let name = |u: usize| format!("user-{u}");
        let rows = (0..24)
            .map(|u| WireRow {
                user_id: name(u),
                after: vec![("read".into(), 1.0 + u as f32), ("run".into(), 2.0)],
                norm2: 0.0,
                erased: false,
            })
            .collect();
        let mut side = ItemSide::default();
        let mut erased = Vec::new();
        assert_eq!(
            decode(&engine, rows, &mut side, None, &mut erased).len(),
            24
        );
        assert!(erased.is_empty());
        assert!(
            engine.index().vectors.is_empty(),
            "decoding publishes nothing"
        );

        let p = partition_of(&name(0), partitions);
        let mine: Vec<usize> = (0..24)
            .filter(|&u| partition_of(&name(u), partitions) == p)
            .collect();
        assert!(mine.len() < 24, "the users span several partitions");
        let slots: Vec<PartitionSlot> = (0..partitions).map(|_| PartitionSlot::default()).collect();
        // Assigned again since it was found not owned: nothing is published for it.
        slots[p as usize].generation.store(1, Ordering::Release);
        assert_eq!(
            publish_withheld(&engine, &side, partitions, &[(p, 0)], &slots),
            (0, vec![p])
        );
        assert!(engine.index().vectors.is_empty());
        assert_eq!(
            publish_withheld(&engine, &side, partitions, &[(p, 1)], &slots),
            (mine.len(), vec![])
        );
        for u in 0..24 {
            let id = engine.index().users.get(&name(u)).expect("interned");
            let published = engine.index().vectors.get(&id).map(|v| v.items.clone());
            if mine.contains(&u) {
                assert_eq!(published, Some(side[&id].items.clone()), "user {u}");
            } else {
                assert_eq!(published, None, "user {u} is in another partition");
            }
        }
    }

    #[test]
    fn changes_are_computed_from_the_last_applied_vector() {
        let before = [(1, 1.0), (3, 2.0), (5, 4.0)];
        let after = [(0, 0.5), (3, 2.0), (5, 3.0), (7, 1.0)];
        assert_eq!(
            diff(&before, &after),
            vec![(0, 0.0, 0.5), (1, 1.0, 0.0), (5, 4.0, 3.0), (7, 0.0, 1.0)]
        );
        assert!(
            diff(&after, &after).is_empty(),
            "a repeated state changes nothing"
        );
        assert_eq!(diff(&[], &[(2, 1.5)]), vec![(2, 0.0, 1.5)]);
        assert_eq!(diff(&[(2, 1.5)], &[]), vec![(2, 1.5, 0.0)]);
    }
}
