//! Bridging an existing topic (`cluster.bridge_topic`): the test writes interaction events to a
//! topic of its own with an rdkafka producer of its own, three nodes re-partition it into the
//! events topic, one of them is killed while they do, and every valid event is applied exactly
//! once (docs/operations.md, "Bridging existing topics"). Brokers and nodes come from the
//! harness of `cluster.rs`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::cluster::{metric, metrics_text, reference_post, workload, Cluster};
use crate::common::TestServer;

const SOURCE: &str = "app-interactions";
const SOURCE_PARTITIONS: i32 = 3;
const USERS: usize = 60;

/// The test's own client of the bridged topic: creates it, writes records, and reads a bridge
/// group's committed offsets.
struct Source {
    brokers: String,
    runtime: tokio::runtime::Runtime,
    producer: FutureProducer,
}

impl Source {
    fn create(brokers: &str) -> Source {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .expect("admin client");
        let topic = NewTopic::new(SOURCE, SOURCE_PARTITIONS, TopicReplication::Fixed(-1));
        let created = runtime
            .block_on(admin.create_topics(&[topic], &AdminOptions::new()))
            .expect("create the bridged topic");
        assert!(created.iter().all(Result::is_ok), "{created:?}");
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("acks", "all")
            .create()
            .expect("producer");
        Source {
            brokers: brokers.to_owned(),
            runtime,
            producer,
        }
    }

    /// Writes `records` (key, value) and waits until the broker confirmed every one.
    fn write(&self, records: &[(String, Vec<u8>)]) {
        let deliveries: Vec<_> = records
            .iter()
            .map(|(key, value)| {
                self.producer.send(
                    FutureRecord::to(SOURCE).key(key).payload(value),
                    Duration::from_secs(30),
                )
            })
            .collect();
        for delivery in self
            .runtime
            .block_on(futures_util::future::join_all(deliveries))
        {
            delivery.expect("the broker confirmed a record of the bridged topic");
        }
    }

    /// Whether `reader`'s group committed every partition up to its end: every record written
    /// so far was bridged and confirmed.
    fn fully_committed(reader: &BaseConsumer) -> bool {
        let mut tpl = TopicPartitionList::new();
        for p in 0..SOURCE_PARTITIONS {
            tpl.add_partition(SOURCE, p);
        }
        let Ok(committed) = reader.committed_offsets(tpl, Duration::from_secs(5)) else {
            return false;
        };
        (0..SOURCE_PARTITIONS).all(|p| {
            let Ok((_, high)) = reader.fetch_watermarks(SOURCE, p, Duration::from_secs(5)) else {
                return false;
            };
            let at = committed
                .find_partition(SOURCE, p)
                .map(|e| e.offset())
                .unwrap_or(Offset::Invalid);
            high == 0 || at == Offset::Offset(high)
        })
    }

    /// Waits until the bridge group `group` bridged and committed every record written so far.
    fn wait_fully_committed(&self, group: &str, timeout: Duration) {
        // Not subscribed: it only reads the group's offsets and the watermarks.
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("offset reader");
        let deadline = Instant::now() + timeout;
        while !Source::fully_committed(&reader) {
            assert!(
                Instant::now() < deadline,
                "{group} did not commit the bridged topic within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// What the test wrote: the records, the valid events (as the reference gets them), and how
/// many refusals the bridge must count for them.
#[derive(Default)]
struct Batch {
    records: Vec<(String, Vec<u8>)>,
    valid: Vec<Value>,
    refused: u64,
}

impl Batch {
    /// Valid events as single objects and as arrays of up to three, a third of them without
    /// an `event_id`; with `invalid`, arrays that mix invalid events in, and whole records
    /// that are refused.
    fn of(events: &[Value], invalid: bool) -> Batch {
        let mut batch = Batch::default();
        let mut i = 0;
        let mut n = 0;
        while i < events.len() {
            let take = 1 + n % 3;
            let mut group: Vec<Value> = events[i..(i + take).min(events.len())].to_vec();
            i += group.len();
            for (k, event) in group.iter_mut().enumerate() {
                if (n + k) % 3 == 0 {
                    event.as_object_mut().expect("object").remove("event_id");
                }
            }
            batch.valid.extend(group.iter().cloned());
            let user = group[0]["user_id"].as_str().expect("user").to_owned();
            if invalid && n % 4 == 1 {
                // Refused one by one; the valid events of the record still go through.
                group.push(
                    json!({"user_id": &user, "item_id": "goal-1", "kind": "teleport",
                                  "ts": 1_700_000_000_000i64}),
                );
                group.push(
                    json!({"user_id": "not ok", "item_id": "goal-1", "kind": "view",
                                  "ts": 1_700_000_000_000i64}),
                );
                group.push(json!({"user_id": &user, "kind": "view", "ts": 1_700_000_000_000i64}));
                batch.refused += 3;
            }
            let value = if group.len() == 1 {
                group.remove(0)
            } else {
                Value::Array(group)
            };
            batch
                .records
                .push((user, serde_json::to_vec(&value).expect("json")));
            n += 1;
        }
        if invalid {
            for value in [
                &b"not json at all"[..],
                b"[]",
                b"{\"user_id\":\"user-1\",\"kind\":\"rate\",\"item_id\":\"goal-2\"}",
                b"",
            ] {
                batch.records.push(("junk".into(), value.to_vec()));
                batch.refused += 1;
            }
        }
        batch
    }

    /// The events of `events` that have an id, again (a producer's retry): none is applied
    /// twice.
    fn duplicates(events: &[Value]) -> Batch {
        let mut batch = Batch::default();
        for event in events.iter().filter(|e| e.get("event_id").is_some()) {
            batch.records.push((
                event["user_id"].as_str().expect("user").to_owned(),
                serde_json::to_vec(event).expect("json"),
            ));
            batch.valid.push(event.clone());
        }
        batch
    }
}

/// The bridged topic's refusals counted by node `n` (all reasons).
fn refused(cluster: &Cluster, n: usize) -> u64 {
    metrics_text(&cluster.client, &cluster.url(n, "/metrics"))
        .lines()
        .filter_map(|line| line.strip_prefix("momentum_cluster_bridge_rejected_total{"))
        .filter_map(|rest| rest.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The partitions of the bridged topic node `n` bridges (`GET /v1/cluster`).
fn bridged_by(cluster: &Cluster, n: usize) -> BTreeSet<u64> {
    let status = cluster.status(n).expect("status");
    assert_eq!(status["bridge"]["topic"], SOURCE, "{status}");
    status["bridge"]["partitions"]
        .as_array()
        .expect("bridge partitions")
        .iter()
        .map(|p| p.as_u64().expect("partition"))
        .collect()
}

/// Waits until the live nodes bridge every partition of the bridged topic between them, each
/// node at least one.
fn wait_bridged_by_live_nodes(cluster: &Cluster, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let each: Vec<BTreeSet<u64>> = cluster.alive().map(|n| bridged_by(cluster, n)).collect();
        let all: BTreeSet<u64> = each.iter().flatten().copied().collect();
        if all.len() == SOURCE_PARTITIONS as usize && each.iter().all(|s| !s.is_empty()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the live nodes bridge only {all:?} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Three nodes bridge a topic of the test's own (single events and arrays, with and without
/// ids, duplicates by id, invalid events, undecodable records) into the events topic; one is
/// killed (`kill -9`) while they do. Every valid event is applied exactly once — each user's
/// state and lists on its owner equal a single node's given the valid events — and the
/// refusals are counted exactly. Then a fourth node bridges the whole topic again in a new
/// group: the same records give the same ids, and nothing changes.
#[test]
fn a_bridged_topic_is_applied_once_per_event_id_across_a_node_death() {
    let mut cluster = Cluster::start("bridge");
    cluster.node_env = vec![("MOMENTUM__CLUSTER__BRIDGE_TOPIC".into(), SOURCE.into())];
    let source = Source::create(&cluster.broker_addrs.join(","));
    for i in 1..=3 {
        cluster.start_node(&format!("g{i}"));
    }
    cluster.wait_converged(0, Duration::from_secs(90));
    wait_bridged_by_live_nodes(&cluster, Duration::from_secs(30));
    let reference = TestServer::start();
    let events = workload(21, USERS, 25, 1500, 1_700_000_000_000);
    let post_reference = |batch: &Batch| {
        for chunk in batch.valid.chunks(100) {
            reference_post(&reference, &Value::Array(chunk.to_vec()));
        }
    };

    // Before the kill: every node bridges a partition; refusals are counted once each.
    let before = Batch::of(&events[..500], true);
    source.write(&before.records);
    post_reference(&before);
    source.wait_fully_committed("momentum-bridge", Duration::from_secs(60));
    let victim = 2;
    assert!(
        !bridged_by(&cluster, victim).is_empty(),
        "the victim bridges nothing: the kill would test nothing"
    );
    let refused_before: u64 = (0..3).map(|n| refused(&cluster, n)).sum();
    assert_eq!(refused_before, before.refused);

    // Records arrive while a node is killed; its partitions move to the survivors, which
    // bridge again what it had not committed (duplicates by id, dropped by the owners).
    let during = Batch::of(&events[500..1000], false);
    source.write(&during.records);
    cluster.kill(victim);
    let killed_at = Instant::now();
    post_reference(&during);
    wait_bridged_by_live_nodes(&cluster, Duration::from_secs(30));
    eprintln!(
        "bridge hand-over after kill -9: every bridged partition on a survivor {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    let survivors_before: u64 = (0..2).map(|n| refused(&cluster, n)).sum();

    // After the hand-over: new events, invalid ones, and a producer's retry of ids.
    let after = Batch::of(&events[1000..], true);
    let again = Batch::duplicates(&[&before.valid[..], &during.valid[..]].concat());
    source.write(&after.records);
    source.write(&again.records);
    post_reference(&after);
    post_reference(&again);
    source.wait_fully_committed("momentum-bridge", Duration::from_secs(90));

    // Each valid event reached the events topic at least once; only the victim's uncommitted
    // records (at most the ones written around the kill) twice.
    let valid =
        (before.valid.len() + during.valid.len() + after.valid.len() + again.valid.len()) as i64;
    cluster.assert_equal_to_any_records(
        &reference,
        USERS,
        valid,
        valid + during.valid.len() as i64,
    );
    let survivors_after: u64 = (0..2).map(|n| refused(&cluster, n)).sum();
    assert_eq!(survivors_after - survivors_before, after.refused);
    let bridged: u64 = (0..2)
        .map(|n| metric(&cluster, n, "momentum_cluster_bridge_events_total"))
        .sum();
    let since_kill = (after.valid.len() + again.valid.len()) as u64;
    assert!(
        bridged >= since_kill,
        "the survivors bridged {bridged} events; {since_kill} were written after the hand-over"
    );

    // A bridge group of another name reads the topic from its start on a fourth node: every
    // record is bridged again with the same ids (derived ones included), so nothing changes.
    cluster.node_env.push((
        "MOMENTUM__CLUSTER__BRIDGE_GROUP".into(),
        "momentum-bridge-again".into(),
    ));
    let fourth = cluster.start_node("g4");
    source.wait_fully_committed("momentum-bridge-again", Duration::from_secs(90));
    // Alone in its group, it bridges every partition (its status refreshes every second).
    let every: BTreeSet<u64> = (0..SOURCE_PARTITIONS as u64).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while bridged_by(&cluster, fourth) != every {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            bridged_by(&cluster, fourth)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.assert_equal_to_any_records(
        &reference,
        USERS,
        2 * valid,
        2 * valid + during.valid.len() as i64,
    );
    assert_eq!(
        refused(&cluster, fourth),
        before.refused + after.refused,
        "the fourth node refused each invalid event and record once"
    );
    assert_eq!(
        metric(&cluster, fourth, "momentum_cluster_bridge_events_total"),
        valid as u64
    );
}
