//! The `[cluster]` section: off by default; when on, every field a node needs to join the
//! group is checked at start with an error naming the key.

use serde::{Deserialize, Serialize};

use crate::error::Error;

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    pub enabled: bool,
    /// Kafka bootstrap servers, `host:port` separated by commas.
    pub brokers: String,
    /// Partitions of the events topic (fixed at cluster creation).
    pub partitions: u32,
    pub events_topic: String,
    pub item_deltas_topic: String,
    pub owners_topic: String,
    /// Item metadata (compacted, one partition): every node applies every `PUT`/`DELETE`.
    pub items_topic: String,
    pub group_id: String,
    /// This node's stable name (`group.instance.id`).
    pub node_id: String,
    /// `host:port` at which other nodes and clients reach this node's HTTP API.
    pub advertised_address: String,
    pub session_timeout_ms: u32,
    /// Longest a fetch waits at the broker when nothing is new (librdkafka's
    /// `fetch.wait.max.ms`): how late new records can be seen, against polling cost.
    pub fetch_wait_ms: u32,
    /// Events applied per batch while consuming.
    pub apply_batch: usize,
    /// How long `POST /v1/events` waits for the broker's confirmation.
    pub produce_timeout_ms: u64,
    /// Seconds between partition snapshots written by the owner (0: none).
    pub snapshot_interval_secs: u64,
    /// PostgreSQL URL of the partition snapshots; empty: `DATABASE_URL`. A secret.
    pub snapshot_url: String,
    /// PostgreSQL schema of the partition snapshot table; empty: `public`.
    pub snapshot_schema: String,
    /// A topic of the operator's whose interaction events are re-partitioned into
    /// `events_topic` ([`super::bridge`]); empty: no bridge.
    pub bridge_topic: String,
    /// The consumer group the nodes bridge `bridge_topic` in.
    pub bridge_group: String,
    /// Seconds between two reads of the cluster's learned item model by every node.
    pub item_model_poll_secs: u64,
}

impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The snapshot URL may carry a password: it never reaches logs.
        let redacted = if self.snapshot_url.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        f.debug_struct("ClusterSettings")
            .field("enabled", &self.enabled)
            .field("brokers", &self.brokers)
            .field("partitions", &self.partitions)
            .field("events_topic", &self.events_topic)
            .field("item_deltas_topic", &self.item_deltas_topic)
            .field("owners_topic", &self.owners_topic)
            .field("items_topic", &self.items_topic)
            .field("group_id", &self.group_id)
            .field("node_id", &self.node_id)
            .field("advertised_address", &self.advertised_address)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("fetch_wait_ms", &self.fetch_wait_ms)
            .field("apply_batch", &self.apply_batch)
            .field("produce_timeout_ms", &self.produce_timeout_ms)
            .field("snapshot_interval_secs", &self.snapshot_interval_secs)
            .field("snapshot_url", &redacted)
            .field("snapshot_schema", &self.snapshot_schema)
            .field("bridge_topic", &self.bridge_topic)
            .field("bridge_group", &self.bridge_group)
            .field("item_model_poll_secs", &self.item_model_poll_secs)
            .finish()
    }
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            enabled: false,
            brokers: String::new(),
            partitions: 64,
            events_topic: "events".into(),
            item_deltas_topic: "item-deltas".into(),
            owners_topic: "owners".into(),
            items_topic: "items".into(),
            group_id: "momentum".into(),
            node_id: String::new(),
            advertised_address: String::new(),
            session_timeout_ms: 6000,
            fetch_wait_ms: 500,
            apply_batch: 1000,
            produce_timeout_ms: 10_000,
            snapshot_interval_secs: 60,
            snapshot_url: String::new(),
            snapshot_schema: String::new(),
            bridge_topic: String::new(),
            bridge_group: "momentum-bridge".into(),
            item_model_poll_secs: 5,
        }
    }
}

/// Kafka's own limits on a topic or group name: 1–249 chars of `[A-Za-z0-9._-]`.
fn kafka_name(key: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() || value.len() > max {
        return Err(format!("cluster.{key} must be 1–{max} characters"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "cluster.{key} {value:?} may only contain letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// `host:port` with a non-empty host and a port in 1..=65535.
fn host_port(key: &str, value: &str) -> Result<(), String> {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(format!("cluster.{key}: {value:?} is not host:port"))
    }
}

impl ClusterSettings {
    /// Nothing is checked when cluster mode is off; when on, every key must be usable.
    pub fn validate(&self) -> Result<(), Error> {
        self.check().map_err(|message| Error::Config { message })
    }

    fn check(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.brokers.trim().is_empty() {
            return Err("cluster.brokers is required when cluster.enabled = true".into());
        }
        for broker in self.brokers.split(',') {
            host_port("brokers", broker.trim())?;
        }
        if !(1..=10_000).contains(&self.partitions) {
            return Err("cluster.partitions must be in 1..=10000".into());
        }
        kafka_name("events_topic", &self.events_topic, 249)?;
        kafka_name("item_deltas_topic", &self.item_deltas_topic, 249)?;
        kafka_name("owners_topic", &self.owners_topic, 249)?;
        kafka_name("items_topic", &self.items_topic, 249)?;
        let topics = [
            &self.events_topic,
            &self.item_deltas_topic,
            &self.owners_topic,
            &self.items_topic,
        ];
        if (1..topics.len()).any(|i| topics[..i].contains(&topics[i])) {
            return Err(
                "cluster.events_topic, cluster.item_deltas_topic, cluster.owners_topic \
                        and cluster.items_topic must differ"
                    .into(),
            );
        }
        kafka_name("group_id", &self.group_id, 249)?;
        if !self.bridge_topic.is_empty() {
            kafka_name("bridge_topic", &self.bridge_topic, 249)?;
            if [
                &self.events_topic,
                &self.item_deltas_topic,
                &self.owners_topic,
                &self.items_topic,
            ]
            .contains(&&self.bridge_topic)
            {
                return Err(format!(
                    "cluster.bridge_topic {:?} must not be one of the cluster's own topics \
                     (events_topic, item_deltas_topic, owners_topic, items_topic)",
                    self.bridge_topic
                ));
            }
            kafka_name("bridge_group", &self.bridge_group, 249)?;
            if self.bridge_group == self.group_id {
                return Err(
                    "cluster.bridge_group must differ from cluster.group_id (the bridge is a \
                     consumer group of its own)"
                        .into(),
                );
            }
        }
        if self.node_id.is_empty() {
            return Err(
                "cluster.node_id is required when cluster.enabled = true (a stable name per node)"
                    .into(),
            );
        }
        kafka_name("node_id", &self.node_id, 64)?;
        if self.advertised_address.is_empty() {
            return Err(
                "cluster.advertised_address is required when cluster.enabled = true \
                        (host:port of this node's HTTP API)"
                    .into(),
            );
        }
        host_port("advertised_address", &self.advertised_address)?;
        if !(1000..=300_000).contains(&self.session_timeout_ms) {
            return Err("cluster.session_timeout_ms must be in 1000..=300000".into());
        }
        if !(1..=10_000).contains(&self.fetch_wait_ms) {
            return Err("cluster.fetch_wait_ms must be in 1..=10000".into());
        }
        if !(1..=100_000).contains(&self.apply_batch) {
            return Err("cluster.apply_batch must be in 1..=100000".into());
        }
        if !(100..=300_000).contains(&self.produce_timeout_ms) {
            return Err("cluster.produce_timeout_ms must be in 100..=300000".into());
        }
        if self.snapshot_url.is_empty() && std::env::var_os("DATABASE_URL").is_none() {
            return Err("cluster.snapshot_url (or DATABASE_URL) is required when \
                        cluster.enabled = true: partition snapshots live in PostgreSQL"
                .into());
        }
        if !self
            .snapshot_schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || self.snapshot_schema.len() > 63
        {
            return Err(format!(
                "cluster.snapshot_schema {:?} must be at most 63 of [A-Za-z0-9_]",
                self.snapshot_schema
            ));
        }
        if !(1..=3600).contains(&self.item_model_poll_secs) {
            return Err("cluster.item_model_poll_secs must be in 1..=3600".into());
        }
        Ok(())
    }

    /// The configuration of a client of this node's that is assigned partitions, never
    /// subscribed (reading a topic, or asking the broker where partitions end): `role` names
    /// it to the broker in its group id; it commits nothing, starts where a partition starts,
    /// and its fetches wait at most `fetch_wait_ms` (some brokers, Nisshi among them, hold a
    /// fetch that long even when records arrive).
    pub fn assigned_client(&self, role: &str) -> rdkafka::config::ClientConfig {
        let mut config = rdkafka::config::ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set(
                "group.id",
                format!("{}-{role}-{}", self.group_id, self.node_id),
            )
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", self.fetch_wait_ms.to_string());
        config
    }

    /// The PostgreSQL URL of the partition snapshots.
    pub fn snapshot_url(&self) -> Option<String> {
        if self.snapshot_url.is_empty() {
            std::env::var("DATABASE_URL").ok()
        } else {
            Some(self.snapshot_url.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> ClusterSettings {
        ClusterSettings {
            enabled: true,
            brokers: "127.0.0.1:9092, 127.0.0.1:9093".into(),
            node_id: "node-1".into(),
            advertised_address: "10.0.0.1:8080".into(),
            snapshot_url: "postgres://u:secret@127.0.0.1/db".into(),
            ..ClusterSettings::default()
        }
    }

    #[test]
    fn off_by_default_and_then_nothing_is_required() {
        let s = ClusterSettings::default();
        assert!(!s.enabled);
        assert_eq!(s.partitions, 64);
        assert!(s.validate().is_ok());
    }

    #[test]
    fn a_complete_section_validates() {
        assert!(enabled().validate().is_ok());
        let bridged = ClusterSettings {
            bridge_topic: "app.interactions".into(),
            ..enabled()
        };
        assert!(bridged.validate().is_ok());
        // No bridge: the group name is not used, so it is not checked.
        let unbridged = ClusterSettings {
            bridge_group: String::new(),
            ..enabled()
        };
        assert!(unbridged.validate().is_ok());
    }

    #[test]
    fn the_snapshot_url_never_reaches_debug_output() {
        let text = format!("{:?}", enabled());
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn each_bad_key_is_named() {
        type Spoil = Box<dyn Fn(&mut ClusterSettings)>;
        let cases: Vec<(&str, Spoil)> = vec![
            ("cluster.brokers", Box::new(|s| s.brokers = String::new())),
            ("cluster.brokers", Box::new(|s| s.brokers = "nohost".into())),
            ("cluster.partitions", Box::new(|s| s.partitions = 0)),
            ("cluster.node_id", Box::new(|s| s.node_id = String::new())),
            ("cluster.node_id", Box::new(|s| s.node_id = "a b".into())),
            (
                "cluster.advertised_address",
                Box::new(|s| s.advertised_address = "10.0.0.1".into()),
            ),
            (
                "cluster.events_topic",
                Box::new(|s| s.owners_topic = s.events_topic.clone()),
            ),
            (
                "cluster.session_timeout_ms",
                Box::new(|s| s.session_timeout_ms = 10),
            ),
            ("cluster.apply_batch", Box::new(|s| s.apply_batch = 0)),
            ("cluster.fetch_wait_ms", Box::new(|s| s.fetch_wait_ms = 0)),
            (
                "cluster.items_topic",
                Box::new(|s| s.items_topic = s.owners_topic.clone()),
            ),
            (
                "cluster.snapshot_schema",
                Box::new(|s| s.snapshot_schema = "a;drop".into()),
            ),
            (
                "cluster.produce_timeout_ms",
                Box::new(|s| s.produce_timeout_ms = 0),
            ),
            (
                "cluster.bridge_topic",
                Box::new(|s| s.bridge_topic = "their events".into()),
            ),
            (
                "cluster.bridge_topic",
                Box::new(|s| s.bridge_topic = s.events_topic.clone()),
            ),
            (
                "cluster.bridge_group",
                Box::new(|s| {
                    s.bridge_topic = "clicks".into();
                    s.bridge_group = String::new();
                }),
            ),
            (
                "cluster.bridge_group",
                Box::new(|s| {
                    s.bridge_topic = "clicks".into();
                    s.bridge_group = s.group_id.clone();
                }),
            ),
            (
                "cluster.item_model_poll_secs",
                Box::new(|s| s.item_model_poll_secs = 0),
            ),
        ];
        for (key, spoil) in cases {
            let mut s = enabled();
            spoil(&mut s);
            let message = s.validate().expect_err(key).to_string();
            assert!(message.contains(key), "{key}: {message}");
        }
    }
}
