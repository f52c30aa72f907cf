//! Cluster mode with real processes on loopback ports: two Nisshi brokers over a PostgreSQL
//! database of the test's own, and three `momentum` nodes. Each test starts and stops its own
//! brokers and nodes; a guard kills every process (and drops the database) even when the test
//! fails.
//!
//! The broker binary comes from `MOMENTUM_BROKER_BIN`, else the cached install of
//! `tools/broker.sh`; without either the tests fail and say to run `tools/broker.sh`.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{settings, TestServer, ADMIN_KEY};

pub(crate) const PARTITIONS: u32 = 12;

/// The broker binary, or a failure naming how to install it.
fn broker_bin() -> PathBuf {
    let path = match std::env::var_os("MOMENTUM_BROKER_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let tools = std::env::var_os("MOMENTUM_TOOLS")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                        .join(".cache/momentum-tools")
                });
            tools.join("nisshi-0.8.1/bin/nisshi")
        }
    };
    assert!(
        path.is_file(),
        "the cluster tests need the Kafka-protocol broker at {}: run tools/broker.sh (it \
         installs Nisshi once, about 12 minutes) or set MOMENTUM_BROKER_BIN",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `url` with its database replaced by `db`, without TLS (loopback).
fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a database URL has a path");
    format!("{base}/{db}?sslmode=disable")
}

/// Runs each statement on its own (`CREATE`/`DROP DATABASE` cannot share a transaction) on
/// the server of `url`.
fn admin_sql(url: &str, statements: &[&str]) {
    let url = url.to_owned();
    let statements: Vec<String> = statements.iter().map(|s| s.to_string()).collect();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async move {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .expect("connect to PostgreSQL (the cluster tests need it: DATABASE_URL)");
                tokio::spawn(connection);
                for sql in statements {
                    client.batch_execute(&sql).await.expect("admin SQL");
                }
            })
    })
    .join()
    .expect("admin SQL thread");
}

/// A running node (`child` is `None` once killed).
struct Node {
    addr: String,
    child: Option<Child>,
    /// Stopped with SIGSTOP (left out of the live nodes until SIGCONT).
    paused: bool,
}

/// Brokers, nodes and the database of one test; everything stops on drop.
pub(crate) struct Cluster {
    db: String,
    /// A URL of the PostgreSQL server holding `db`, to create and drop it.
    admin_url: String,
    /// The test's database (the brokers' storage and the partition snapshots).
    db_url: String,
    brokers: Vec<Child>,
    pub(crate) broker_addrs: Vec<String>,
    nodes: Vec<Node>,
    dir: PathBuf,
    pub(crate) client: reqwest::blocking::Client,
    /// Further `MOMENTUM__…` variables of every node started from now on.
    pub(crate) node_env: Vec<(String, String)>,
    /// The test's own PostgreSQL server, when it has one (it stops after the processes above).
    postgres: Option<PrivatePostgres>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for broker in &mut self.brokers {
            let _ = broker.kill();
            let _ = broker.wait();
        }
        if std::thread::panicking() {
            eprintln!("cluster test failed; logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        // A server of the test's own goes away with its data; the shared one keeps running.
        if self.postgres.is_none() {
            admin_sql(
                &self.admin_url,
                &[&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db)],
            );
        }
    }
}

impl Cluster {
    /// Two brokers over a fresh database of the machine's PostgreSQL.
    pub(crate) fn start(test: &str) -> Cluster {
        Cluster::start_on(test, database_url(), None)
    }

    /// Two brokers over a fresh database of the server at `admin_url` (`postgres`, the test's
    /// own server, if given).
    fn start_on(test: &str, admin_url: String, postgres: Option<PrivatePostgres>) -> Cluster {
        broker_bin();
        let db = format!("momentum_cluster_{test}_{}", std::process::id());
        admin_sql(
            &admin_url,
            &[
                &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
                &format!("CREATE DATABASE {db}"),
            ],
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("momentum-cluster-{test}-"))
            .tempdir()
            .expect("temp dir")
            .keep();
        let mut cluster = Cluster {
            db_url: with_database(&admin_url, &db),
            admin_url,
            postgres,
            db: db.clone(),
            brokers: Vec::new(),
            broker_addrs: Vec::new(),
            nodes: Vec::new(),
            dir,
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            node_env: Vec::new(),
        };
        // The first broker creates the schema; the second starts once it listens.
        for _ in 0..2 {
            let addr = format!("127.0.0.1:{}", free_port());
            cluster.broker_addrs.push(addr);
            let child = cluster.spawn_broker(cluster.brokers.len());
            cluster.brokers.push(child);
        }
        cluster
    }

    /// [`Cluster::start`] with three nodes `{prefix}1`..`{prefix}3`, once every partition is
    /// ready.
    fn three_nodes(test: &str, prefix: &str) -> Cluster {
        Cluster::with_three_nodes(Cluster::start(test), prefix)
    }

    /// `cluster` with three nodes `{prefix}1`..`{prefix}3`, once every partition is ready.
    fn with_three_nodes(mut cluster: Cluster, prefix: &str) -> Cluster {
        for i in 1..=3 {
            cluster.start_node(&format!("{prefix}{i}"));
        }
        cluster.wait_converged(0, Duration::from_secs(90));
        cluster
    }

    /// Starts broker `i` on its address and waits until it listens.
    fn spawn_broker(&self, i: usize) -> Child {
        let addr = &self.broker_addrs[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("broker-{i}.log")))
            .expect("log file");
        let child = Command::new(broker_bin())
            .arg("broker")
            .args(["--cluster-id", &self.db])
            .args(["--listener-url", &format!("tcp://{addr}")])
            .args(["--advertised-listener-url", &format!("tcp://{addr}")])
            .args(["--storage-engine", &self.db_url])
            .args(["--group-initial-rebalance-delay", "1s"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start the broker");
        wait_for_port(addr, Duration::from_secs(60));
        child
    }

    /// Runs the server alone (single-node mode) on node `name`'s store directory, posts
    /// `events` and stops it: a store from single-node times for that node.
    fn seed_single_node_store(&self, name: &str, events: &Value) {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_momentum"))
            .env("MOMENTUM__SERVER__BIND", &addr)
            .env(
                "MOMENTUM__STORE__PATH",
                self.dir.join(format!("{name}-store")),
            )
            .env("MOMENTUM__LOGGING__LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a single node");
        wait_for_port(&addr, Duration::from_secs(60));
        let deadline = Instant::now() + Duration::from_secs(30);
        let posted = loop {
            match self
                .client
                .post(format!("http://{addr}/v1/events"))
                .json(events)
                .send()
            {
                Ok(res) if res.status().as_u16() != 503 => break res.status().as_u16(),
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                other => panic!("the single node did not take the events: {other:?}"),
            }
        };
        assert_eq!(posted, 200);
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        assert!(
            child.wait().expect("wait").success(),
            "the single node stops cleanly"
        );
    }

    /// Starts node `name` (a new process; a name used before keeps its store directory).
    pub(crate) fn start_node(&mut self, name: &str) -> usize {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let store = self.dir.join(format!("{name}-store"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_momentum"))
            .env("MOMENTUM__SERVER__BIND", &addr)
            .env("MOMENTUM__SERVER__WORKERS", "2")
            .env("MOMENTUM__ACTORS__SHARDS", "2")
            .env("MOMENTUM__ACTORS__THREADS", "1")
            .env("MOMENTUM__RECOMMEND__POPULAR_REFRESH_MS", "0")
            // Lists are compared with a reference's under the same item model: none cached
            // under the model before may be served.
            .env("MOMENTUM__RECOMMEND__MODEL_REFRESH_SECS", "0")
            .env("MOMENTUM__STORE__PATH", &store)
            .env("MOMENTUM__SNAPSHOT__INTERVAL_SECS", "0")
            .env("MOMENTUM__LOGGING__LEVEL", "info")
            .env("MOMENTUM__CLUSTER__ENABLED", "true")
            .env("MOMENTUM__CLUSTER__BROKERS", self.broker_addrs.join(","))
            .env("MOMENTUM__CLUSTER__PARTITIONS", PARTITIONS.to_string())
            .env("MOMENTUM__CLUSTER__NODE_ID", name)
            .env("MOMENTUM__CLUSTER__ADVERTISED_ADDRESS", &addr)
            .env("MOMENTUM__CLUSTER__SESSION_TIMEOUT_MS", "6000")
            .env("MOMENTUM__CLUSTER__SNAPSHOT_URL", &self.db_url)
            .env("MOMENTUM__CLUSTER__SNAPSHOT_INTERVAL_SECS", "1")
            .env("MOMENTUM__CLUSTER__ITEM_MODEL_POLL_SECS", "1")
            .env("MOMENTUM__SECURITY__ADMIN_KEY", ADMIN_KEY)
            .envs(self.node_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(file.try_clone().expect("log")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start a node");
        self.nodes.push(Node {
            addr: addr.clone(),
            child: Some(child),
            paused: false,
        });
        wait_for_port(&addr, Duration::from_secs(60));
        self.nodes.len() - 1
    }

    pub(crate) fn url(&self, node: usize, path: &str) -> String {
        format!("http://{}{path}", self.nodes[node].addr)
    }

    pub(crate) fn alive(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&n| self.nodes[n].child.is_some() && !self.nodes[n].paused)
    }

    /// Sends `signal` (a `kill` name such as `STOP`) to node `n`.
    fn signal(&self, n: usize, signal: &str) {
        let pid = self.nodes[n].child.as_ref().expect("node is running").id();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Stops node `n` with SIGTERM and waits for it to exit.
    fn terminate(&mut self, n: usize) {
        self.signal(n, "TERM");
        let mut child = self.nodes[n].child.take().expect("node is running");
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node {n} did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Partition → offset of the partition snapshots in the test's database.
    fn snapshot_offsets(&self) -> BTreeMap<u32, i64> {
        let url = self.db_url.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async move {
                    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .expect("connect to the test database");
                    tokio::spawn(connection);
                    client
                        .query(
                            "SELECT partition, log_offset FROM momentum_partition_snapshots",
                            &[],
                        )
                        .await
                        .expect("snapshot table")
                        .iter()
                        .map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1)))
                        .collect()
                })
        })
        .join()
        .expect("query thread")
    }

    /// Partition → generation of the assignment, for the partitions node `n` owns.
    fn generations(&self, n: usize) -> BTreeMap<u32, u64> {
        let status = self.status(n).expect("status");
        status["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .filter(|p| p["state"] != "not_owned")
            .map(|p| {
                (
                    p["partition"].as_u64().expect("partition") as u32,
                    p["generation"].as_u64().expect("generation"),
                )
            })
            .collect()
    }

    /// Posts `events` in batches of 100 through the live nodes in turn (each batch to the
    /// reference too); returns the records logged.
    fn post_all(&self, events: &[Value], reference: &TestServer) -> i64 {
        let alive: Vec<usize> = self.alive().collect();
        let mut records = 0;
        for (i, chunk) in events.chunks(100).enumerate() {
            let batch = Value::Array(chunk.to_vec());
            let (status, body) = self.post(alive[i % alive.len()], &batch);
            assert_eq!(status, 200, "{body}");
            records += chunk.len() as i64;
            reference_post(reference, &batch);
        }
        records
    }

    /// PUTs a profile for `user` through node `n` (a `503` is retried) and the same to the
    /// reference; the profile is one record more in the events topic.
    fn put_profile(&self, n: usize, user: &str, reference: &TestServer) {
        let profile = json!({"preferences": {"goal": format!("goal-of-{user}"), "node": n},
                             "locale": "en-GB", "signup_date": "2026-01-02"});
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let res = self
                .client
                .put(self.url(n, &format!("/v1/users/{user}")))
                .json(&profile)
                .send()
                .expect("PUT a profile");
            let status = res.status().as_u16();
            if status == 200 || status == 201 {
                break;
            }
            assert!(
                status == 503 && Instant::now() < deadline,
                "PUT /v1/users/{user} on node {n}: {status}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let res = reqwest::blocking::Client::new()
            .put(reference.url(&format!("/v1/users/{user}")))
            .json(&profile)
            .send()
            .expect("reference PUT");
        assert!(res.status().is_success());
    }

    /// Every user's state and lists on the owner equal the reference's.
    fn assert_equal_to(&self, reference: &TestServer, users: usize, records: i64) {
        let owners = self.wait_converged(records, Duration::from_secs(90));
        self.assert_users_equal(&owners, reference, users);
    }

    /// [`Cluster::assert_equal_to`] when the number of records logged is only bounded (a
    /// batch that was not acknowledged may or may not be in the log): waits until at least
    /// `at_least` records (every acknowledged one) are applied and the log stops growing at
    /// or below `at_most` records.
    pub(crate) fn assert_equal_to_any_records(
        &self,
        reference: &TestServer,
        users: usize,
        at_least: i64,
        at_most: i64,
    ) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = None;
        let owners = loop {
            // Converged on some count: every partition ready, item side caught up.
            if let Some(owners) = self.owners() {
                let applied: i64 = owners.values().map(|o| o.1).sum();
                assert!(applied <= at_most, "{applied} records > {at_most} sent");
                // Every live node back in the group, owning partitions again.
                let spread = self
                    .alive()
                    .all(|n| owners.values().any(|&(owner, _)| owner == n));
                if spread
                    && applied >= at_least
                    && self.items_caught_up(&owners)
                    && last == Some(applied)
                {
                    break owners;
                }
                last = Some(applied);
            }
            assert!(Instant::now() < deadline, "no convergence: {last:?}");
            std::thread::sleep(Duration::from_secs(2));
        };
        self.assert_users_equal(&owners, reference, users);
    }

    fn assert_users_equal(
        &self,
        owners: &BTreeMap<u32, (usize, i64)>,
        reference: &TestServer,
        users: usize,
    ) {
        for u in 0..users {
            let user = format!("user-{u}");
            let partition = momentum::cluster::partition_of(&user, PARTITIONS);
            let owner = std::cell::Cell::new(owners[&partition].0);
            let get = |path: &str| {
                let deadline = Instant::now() + Duration::from_secs(90);
                loop {
                    let (status, body) = self.read(owner.get(), path);
                    if status != 421 || Instant::now() > deadline {
                        return (status, body);
                    }
                    // The partition moved after the cluster converged (the consumer group
                    // rebalanced again, as when a restarted broker takes the coordinator
                    // back): its new owner answers once it has restored it.
                    std::thread::sleep(Duration::from_millis(500));
                    if let Some(now) = self.owners() {
                        owner.set(now[&partition].0);
                    }
                }
            };
            assert_eq!(
                user_view(get, &user),
                reference_view(reference, &user),
                "{user}"
            );
            assert_eq!(
                lists_view(get, &user),
                lists_view(reference_get(reference), &user),
                "{user}"
            );
        }
    }

    /// `kill -9` of node `n`.
    pub(crate) fn kill(&mut self, n: usize) {
        let mut child = self.nodes[n].child.take().expect("node is running");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    pub(crate) fn status(&self, node: usize) -> Option<Value> {
        let res = self.client.get(self.url(node, "/v1/cluster")).send().ok()?;
        res.json().ok()
    }

    /// Partition → (owning node, next offset) when every partition is ready on exactly one
    /// live node and no live node is replaying one; `None` otherwise.
    fn owners(&self) -> Option<BTreeMap<u32, (usize, i64)>> {
        let mut owners = BTreeMap::new();
        for n in self.alive() {
            let status = self.status(n)?;
            for p in status["partitions"].as_array()? {
                let partition = p["partition"].as_u64()? as u32;
                match p["state"].as_str()? {
                    "ready"
                        if owners
                            .insert(partition, (n, p["next_offset"].as_i64()?))
                            .is_some() =>
                    {
                        return None
                    }
                    "restoring" => return None,
                    _ => {}
                }
            }
        }
        (owners.len() == PARTITIONS as usize).then_some(owners)
    }

    /// Waits until every partition is served by exactly one live node with every live node
    /// owning at least one, and the owners applied `records` log records in all; returns the
    /// owner of every partition.
    pub(crate) fn wait_converged(
        &self,
        records: i64,
        timeout: Duration,
    ) -> BTreeMap<u32, (usize, i64)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(owners) = self.owners() {
                let applied: i64 = owners.values().map(|o| o.1).sum();
                let spread = self
                    .alive()
                    .all(|n| owners.values().any(|&(owner, _)| owner == n));
                if applied == records && spread && self.items_caught_up(&owners) {
                    return owners;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not converge on {records} records within {timeout:?}: {:?}",
                self.alive()
                    .map(|n| self.status(n).map(|s| s["partitions"].clone()))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether every live node applied the item side of every partition up to what its owner
    /// applied (item statistics are the same everywhere).
    fn items_caught_up(&self, owners: &BTreeMap<u32, (usize, i64)>) -> bool {
        self.alive().all(|n| {
            self.status(n).is_some_and(|status| {
                status["partitions"].as_array().is_some_and(|parts| {
                    parts.iter().all(|p| {
                        let partition = p["partition"].as_u64().unwrap_or(u64::MAX) as u32;
                        let Some(&(_, next)) = owners.get(&partition) else {
                            return false;
                        };
                        next == 0 || p["item_offset"].as_i64() == Some(next - 1)
                    })
                })
            })
        })
    }

    /// Posts a batch to node `n`; the status and body.
    fn post(&self, n: usize, batch: &Value) -> (u16, Value) {
        match self
            .client
            .post(self.url(n, "/v1/events"))
            .json(batch)
            .send()
        {
            Ok(res) => {
                let status = res.status().as_u16();
                (status, res.json().unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// A read as a client does it: a `503` (a partition changing hands) is retried after its
    /// `Retry-After`, for up to 30 s.
    fn read(&self, n: usize, path: &str) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get(n, path);
            if status != 503 || Instant::now() > deadline {
                return (status, body);
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn get(&self, n: usize, path: &str) -> (u16, Value) {
        match self.client.get(self.url(n, path)).send() {
            Ok(res) => {
                let status = res.status().as_u16();
                (status, res.json().unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }
}

/// The value of a metric on node `n`, `name` with its labels as `/metrics` prints them (0
/// when the series is not there yet).
fn metric_or_zero(cluster: &Cluster, n: usize, name: &str) -> f64 {
    metric_value(
        &metrics_text(&cluster.client, &cluster.url(n, "/metrics")),
        name,
    )
    .unwrap_or(0.0)
}

/// The text `/metrics` at `url` answers.
pub(crate) fn metrics_text(client: &reqwest::blocking::Client, url: &str) -> String {
    client
        .get(url)
        .send()
        .and_then(|r| r.text())
        .expect("metrics")
}

/// The value of the series `name` (with its labels as printed) in a `/metrics` text.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The single-node server the cluster is compared with. Its lists are compared again after
/// each rebuild of its item model: none cached under the model before may be served.
fn reference_server() -> TestServer {
    let mut s = settings();
    s.recommend.model_refresh_secs = 0;
    TestServer::start_with(s)
}

/// `POST /v1/admin/item-model` on `url` (a node's or the reference's); status and body.
fn rebuild_item_model(client: &reqwest::blocking::Client, url: &str) -> (u16, Value) {
    admin(client.post(url))
}

/// The value of an unlabelled metric on node `n`.
pub(crate) fn metric(cluster: &Cluster, n: usize, name: &str) -> u64 {
    metric_value(
        &metrics_text(&cluster.client, &cluster.url(n, "/metrics")),
        name,
    )
    .unwrap_or_else(|| panic!("no {name} on node {n}")) as u64
}

fn wait_for_port(addr: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {addr} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A PostgreSQL server of the test's own, on a free loopback port, that the test can stop
/// (immediate shutdown: like a crash) and start again on the same port and data. As root the
/// server runs as the `postgres` user, which PostgreSQL requires. The binaries come from
/// `MOMENTUM_PG_BIN`, else the newest `/usr/lib/postgresql/<version>/bin`.
struct PrivatePostgres {
    /// Data directory, owned by the server's user (the directory above it too).
    root: PathBuf,
    port: u16,
    server: Option<Child>,
}

impl PrivatePostgres {
    fn bin(name: &str) -> PathBuf {
        let dir = match std::env::var_os("MOMENTUM_PG_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| {
                        let version = e.file_name().to_str()?.parse().ok()?;
                        Some((version, e.path().join("bin")))
                    })
                    .collect();
                versions.sort();
                versions.pop().map(|(_, dir)| dir).unwrap_or_default()
            }
        };
        let path = dir.join(name);
        assert!(
            path.is_file(),
            "this test runs a PostgreSQL server of its own and needs {name}: install PostgreSQL's \
             server binaries or set MOMENTUM_PG_BIN (looked at {})",
            path.display()
        );
        path
    }

    /// `program` with `args`, as the `postgres` user when the test runs as root.
    fn command(program: &std::path::Path) -> Command {
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
            let mut command = Command::new("setpriv");
            command
                .args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--",
                ])
                .arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// A fresh cluster (`initdb`, trust authentication), started.
    fn start() -> PrivatePostgres {
        let root = PathBuf::from(format!(
            "/tmp/momentum-pg-{}-{}",
            std::process::id(),
            free_port()
        ));
        let status = PrivatePostgres::command(std::path::Path::new("/bin/mkdir"))
            .arg("-p")
            .arg(&root)
            .status()
            .expect("mkdir");
        assert!(status.success(), "mkdir {}", root.display());
        let output = PrivatePostgres::command(&PrivatePostgres::bin("initdb"))
            .arg("-D")
            .arg(root.join("data"))
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("initdb");
        assert!(
            output.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut postgres = PrivatePostgres {
            root,
            port: free_port(),
            server: None,
        };
        postgres.resume();
        postgres
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server on its port and data, and waits until it listens.
    fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(format!("{}.log", self.root.display()))
            .expect("log file");
        let child = PrivatePostgres::command(&PrivatePostgres::bin("postgres"))
            .arg("-D")
            .arg(self.root.join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                &format!("unix_socket_directories={}", self.root.display()),
            ])
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start postgres");
        self.server = Some(child);
        wait_for_port(&format!("127.0.0.1:{}", self.port), Duration::from_secs(60));
    }

    /// Immediate shutdown (`SIGQUIT` to the postmaster): every connection drops at once and
    /// the next start recovers from the WAL, as after a crash.
    fn crash(&mut self) {
        let mut child = self.server.take().expect("postgres is running");
        let status = Command::new("kill")
            .args(["-QUIT", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -QUIT postgres");
        let _ = child.wait();
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.server.is_some() {
            self.crash();
        }
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = std::fs::remove_file(format!("{}.log", self.root.display()));
    }
}

/// A deterministic workload: `users` users, `items` goals with a skewed popularity, `n`
/// events with ids, all timestamped at `ts` (so the features do not depend on the order).
pub(crate) fn workload(seed: u64, users: usize, items: usize, n: usize, ts: i64) -> Vec<Value> {
    let mut state = seed;
    let mut next = || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let kinds = ["view", "click", "start", "checkin", "complete", "like"];
    (0..n)
        .map(|i| {
            let user = next() as usize % users;
            // Square of a uniform draw: low item numbers are more popular.
            let u = (next() % 1000) as f64 / 1000.0;
            let item = ((u * u) * items as f64) as usize;
            let kind = kinds[next() as usize % kinds.len()];
            json!({"event_id": format!("ev-{seed}-{i}"), "user_id": format!("user-{user}"),
                   "item_id": format!("goal-{item}"), "kind": kind, "ts": ts})
        })
        .collect()
}

/// What a node answers about a user that must be equal wherever the user is served.
fn user_view(get: impl Fn(&str) -> (u16, Value), user: &str) -> Value {
    let (status, summary) = get(&format!("/v1/users/{user}"));
    assert_eq!(status, 200, "{user}: {summary}");
    let (status, features) = get(&format!("/v1/users/{user}/features"));
    assert_eq!(status, 200, "{user}: {features}");
    json!({
        "interactions": summary["interactions"],
        "last_event_ms": summary["last_event_ms"],
        "engagement_score": features["features"]["engagement_score"],
        "profile": [summary["preferences"], summary["locale"], summary["signup_date"]],
    })
}

/// A user's recommendations and similar users as comparable values: ids in order, scores
/// rounded to 1e-9 (sums over neighbours may add in another order on another node).
fn lists_view(get: impl Fn(&str) -> (u16, Value), user: &str) -> Value {
    let round = |v: &Value| (v.as_f64().unwrap_or(f64::NAN) * 1e9).round() / 1e9;
    let (status, recs) = get(&format!("/v1/users/{user}/recommendations?n=10"));
    assert_eq!(status, 200, "{user}: {recs}");
    let items: Vec<Value> = recs["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| json!([i["item_id"], round(&i["score"]), i["reasons"]]))
        .collect();
    let (status, similar) = get(&format!("/v1/users/{user}/similar-users"));
    assert_eq!(status, 200, "{user}: {similar}");
    json!({"strategy": recs["strategy"], "items": items, "similar_users": similar})
}

fn reference_get(server: &TestServer) -> impl Fn(&str) -> (u16, Value) + '_ {
    let client = reqwest::blocking::Client::new();
    move |path| {
        let res = client.get(server.url(path)).send().expect("reference");
        let status = res.status().as_u16();
        (status, res.json().unwrap_or(Value::Null))
    }
}

fn reference_view(server: &TestServer, user: &str) -> Value {
    let client = reqwest::blocking::Client::new();
    user_view(
        |path| {
            let res = client.get(server.url(path)).send().expect("reference");
            let status = res.status().as_u16();
            (status, res.json().unwrap_or(Value::Null))
        },
        user,
    )
}

pub(crate) fn reference_post(server: &TestServer, batch: &Value) {
    let res = reqwest::blocking::Client::new()
        .post(server.url("/v1/events"))
        .json(batch)
        .send()
        .expect("reference post");
    assert_eq!(res.status().as_u16(), 200);
}

/// Events posted through three nodes (and duplicates re-posted through another node) give
/// every user the same state, recommendations and similar users on the user's owner as a
/// single node given the same events (item statistics reach every node through the
/// item-deltas topic); any other node forwards a read to the owner and answers the same, and a
/// read that was forwarded already is refused with `421 not_owner` instead of a second hop.
#[test]
fn events_through_three_nodes_equal_a_single_node() {
    let cluster = Cluster::three_nodes("equality", "n");
    let reference = reference_server();
    let ts = 1_700_000_000_000i64;
    // Item metadata through every node in turn (the content side of the lists): each node
    // applies every write from the items topic, and answers only once it applied its own.
    for g in 0..40 {
        let path = format!("/v1/items/goal-{g}");
        let body = item_metadata(g, 1);
        let res = cluster
            .client
            .put(cluster.url(g % 3, &path))
            .json(&body)
            .send()
            .expect("put item");
        assert_eq!(res.status().as_u16(), 201, "{path}");
        // The node that took the write reads it at once; the others shortly after.
        let (status, view) = cluster.get(g % 3, &path);
        assert_eq!((status, &view["tags"]), (200, &body["tags"]), "{path}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, view) = cluster.get((g + 1) % 3, &path);
            if (status, &view["tags"]) == (200, &body["tags"]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{path} elsewhere: {status} {view}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        put_reference(&reference, &path, &body);
    }
    let events = workload(14, 150, 40, 3000, ts);
    let mut records = 0i64;
    for (i, chunk) in events.chunks(100).enumerate() {
        let batch = Value::Array(chunk.to_vec());
        let (status, body) = cluster.post(i % 3, &batch);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["accepted"], 100);
        records += 100;
        reference_post(&reference, &batch);
    }
    // Retries through another node: logged again, applied once.
    for (i, chunk) in events.chunks(100).take(5).enumerate() {
        let batch = Value::Array(chunk.to_vec());
        let (status, _) = cluster.post((i + 1) % 3, &batch);
        assert_eq!(status, 200);
        records += 100;
    }
    // Rewrites and a deletion through other nodes than the first writes: the last write of
    // each item wins everywhere.
    for g in 0..10 {
        let path = format!("/v1/items/goal-{g}");
        let body = item_metadata(g, 2);
        let res = cluster
            .client
            .put(cluster.url((g + 2) % 3, &path))
            .json(&body)
            .send()
            .expect("put item");
        assert_eq!(res.status().as_u16(), 200, "{path}");
        put_reference(&reference, &path, &body);
    }
    for (n, target) in [
        (1, cluster.url(1, "/v1/items/goal-39")),
        (3, reference.url("/v1/items/goal-39")),
    ] {
        let res = cluster
            .client
            .delete(target)
            .header("x-admin-key", ADMIN_KEY)
            .send()
            .expect("delete item");
        assert_eq!(res.status().as_u16(), 204, "delete through {n}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while (0..3).any(|n| cluster.get(n, "/v1/items/goal-39").0 != 404) {
        assert!(
            Instant::now() < deadline,
            "the deletion did not reach every node"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Applied in the topic's order: once the last write (the deletion) is everywhere, so is
    // every write before it.
    for n in 0..3 {
        for g in [0, 5, 20] {
            let path = format!("/v1/items/goal-{g}");
            let (status, view) = cluster.get(n, &path);
            let (_, expected) = reference_get(&reference)(&path);
            assert_eq!(status, 200, "{path} on node {n}: {view}");
            for field in ["title", "tags", "type", "difficulty"] {
                assert_eq!(view[field], expected[field], "{path} {field} on node {n}");
            }
        }
    }
    let owners = cluster.wait_converged(records, Duration::from_secs(120));
    let users: Vec<String> = (0..150).map(|u| format!("user-{u}")).collect();
    let mut with_lists = 0;
    for user in &users {
        let partition = momentum::cluster::partition_of(user, PARTITIONS);
        let owner = owners[&partition].0;
        let at_owner = user_view(|path| cluster.read(owner, path), user);
        assert_eq!(at_owner, reference_view(&reference, user), "{user}");
        let lists = lists_view(|path| cluster.read(owner, path), user);
        assert_eq!(lists, lists_view(reference_get(&reference), user), "{user}");
        let non_empty = |v: &Value| v.as_array().is_some_and(|a| !a.is_empty());
        if non_empty(&lists["items"]) && non_empty(&lists["similar_users"]["users"]) {
            with_lists += 1;
        }
        // Another node forwards the read to the owner (once the owners topic reached it).
        let other = (owner + 1) % 3;
        let deadline = Instant::now() + Duration::from_secs(10);
        let forwarded = loop {
            let (status, body) = cluster.get(other, &format!("/v1/users/{user}"));
            if status == 200 || Instant::now() > deadline {
                break (status, body);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(
            forwarded.0, 200,
            "{user} through node {other}: {}",
            forwarded.1
        );
        assert_eq!(user_view(|path| cluster.read(other, path), user), at_owner);
        // A request that was forwarded already is refused, never forwarded again.
        let res = cluster
            .client
            .get(cluster.url(other, &format!("/v1/users/{user}")))
            .header("x-momentum-forwarded", "test")
            .send()
            .expect("request");
        assert_eq!(res.status().as_u16(), 421, "{user}");
        let body: Value = res.json().expect("json");
        assert_eq!(body["error"]["code"], "not_owner");
    }
    // The comparison compared something: most users have lists and neighbours.
    assert!(with_lists > 100, "{with_lists} of 150 users have lists");
    let text = cluster
        .client
        .get(cluster.url(0, "/metrics"))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    assert!(
        text.contains("momentum_cluster_forwarded_requests_total{result=\"ok\"}"),
        "forwarded reads are counted"
    );
    // The five retried batches were dropped by the owners as duplicates, and counted there.
    let duplicates: u64 = (0..3)
        .map(|n| metric(&cluster, n, "momentum_events_duplicate_total"))
        .sum();
    assert_eq!(duplicates, 500, "duplicates counted by the owners");
    // The item side reached every node: each applied item deltas it did not publish.
    for n in 0..3 {
        let published = metric(&cluster, n, "momentum_cluster_item_deltas_published_total");
        let applied = metric(&cluster, n, "momentum_cluster_item_deltas_applied_total");
        assert!(
            applied > published,
            "node {n}: {applied} applied, {published} published"
        );
    }
    // Erasures through a node that does not own the user and through one that does, each
    // right after new events of the user (their item side still on its way when the owner
    // erases them): every user's state and lists then equal a single node's after the same
    // erasures (nobody counts the erased users' weights, or names them among similar users),
    // and the erased users are unknown wherever they are read.
    let erased = ["user-3", "user-4"];
    for (k, user) in erased.iter().enumerate() {
        let owner = owners[&momentum::cluster::partition_of(user, PARTITIONS)].0;
        let through = if k == 0 { (owner + 1) % 3 } else { owner };
        let last: Value = (0..5)
            .map(|i| {
                json!({"event_id": format!("last-{user}-{i}"), "user_id": user,
                       "item_id": format!("goal-{}", 20 + i), "kind": "complete",
                       "ts": ts + 10_000_000 + i})
            })
            .collect();
        let (status, body) = cluster.post(owner, &last);
        assert_eq!(status, 200, "{body}");
        reference_post(&reference, &last);
        records += 5;
        for url in [
            cluster.url(through, &format!("/v1/users/{user}")),
            reference.url(&format!("/v1/users/{user}")),
        ] {
            let res = cluster
                .client
                .delete(url)
                .header("x-admin-key", ADMIN_KEY)
                .send()
                .expect("DELETE");
            assert_eq!(res.status().as_u16(), 204, "erasing {user}");
        }
        records += 1;
    }
    let owners = cluster.wait_converged(records, Duration::from_secs(60));
    for user in &users {
        let owner = owners[&momentum::cluster::partition_of(user, PARTITIONS)].0;
        if erased.contains(&user.as_str()) {
            for n in 0..3 {
                let (status, body) = cluster.read(n, &format!("/v1/users/{user}"));
                assert_eq!(status, 404, "{user} on node {n} after the erasure: {body}");
            }
            continue;
        }
        let get = |path: &str| cluster.read(owner, path);
        assert_eq!(
            user_view(get, user),
            reference_view(&reference, user),
            "{user} after the erasures"
        );
        assert_eq!(
            lists_view(get, user),
            lists_view(reference_get(&reference), user),
            "{user} after the erasures"
        );
    }
    // Every node forgot the erased users' ids: it knows as many users as the single node.
    let reference_metrics = metrics_text(&cluster.client, &reference.url("/metrics"));
    let reference_users = metric_value(&reference_metrics, "momentum_users").expect("users");
    for n in 0..3 {
        let users = metric(&cluster, n, "momentum_users");
        assert_eq!(users as f64, reference_users, "users known on node {n}");
    }
    // Item statistics are sums over users: on every node they no longer count the erased.
    for g in 0..39 {
        for path in [
            format!("/v1/items/goal-{g}"),
            format!("/v1/items/goal-{g}/similar-items"),
        ] {
            let (status, expected) = reference_get(&reference)(&path);
            assert_eq!(status, 200, "{path}: {expected}");
            for n in 0..3 {
                let (status, view) = cluster.get(n, &path);
                assert_eq!(
                    (status, &view),
                    (200, &expected),
                    "{path} on node {n} after the erasures"
                );
            }
        }
    }
}

/// Metadata of goal `g`, version `v` (tags overlap between goals so content similarity has
/// something to find; a rewrite changes them).
fn item_metadata(g: usize, v: usize) -> Value {
    let themes = [
        "fitness", "reading", "language", "mindful", "savings", "sleep",
    ];
    json!({
        "title": format!("Goal {g} v{v}"),
        "tags": [themes[g % 6], themes[(g / 6 + v) % 6]],
        "type": if g % 2 == 0 { "habit" } else { "project" },
        "difficulty": ((g % 5) as f64 + 1.0) / 5.0,
    })
}

fn put_reference(reference: &TestServer, path: &str, body: &Value) {
    let res = reqwest::blocking::Client::new()
        .put(reference.url(path))
        .json(body)
        .send()
        .expect("reference put");
    assert!(res.status().is_success(), "reference {path}");
}

/// `kill -9` of a node while events stream through the others: its partitions are served
/// again by the survivors within 30 s, and every acknowledged event and profile is applied
/// exactly once (each user's state equals a single node's given exactly the acknowledged
/// events and profiles).
#[test]
fn a_killed_node_loses_nothing_and_its_users_are_served_again() {
    let mut cluster = Cluster::three_nodes("death", "d");
    let reference = reference_server();
    let ts = 1_700_000_000_000i64;
    let events = workload(15, 120, 30, 4000, ts);
    let mut records = 0i64;
    let mut killed_at = None;
    let mut served_again = None;
    let mut statuses_seen: HashMap<u16, usize> = HashMap::new();
    let victim = 2;
    let victim_user = (0..120)
        .map(|u| format!("user-{u}"))
        .find(|u| {
            let p = momentum::cluster::partition_of(u, PARTITIONS);
            cluster.owners().is_some_and(|o| o[&p].0 == victim)
        })
        .expect("the victim owns a user");
    for (i, chunk) in events.chunks(100).enumerate() {
        // A profile of the victim's user before the kill, and one of another user after it:
        // the survivors restore and replay them with the events.
        if i == 3 || i == 20 {
            let user = if i == 3 {
                victim_user.clone()
            } else {
                "user-7".into()
            };
            cluster.put_profile(i % 2, &user, &reference);
            records += 1;
        }
        if i == 10 {
            // The victim's partitions have a snapshot to restore from (one a second): the
            // first 10 batches can take less than that.
            let deadline = Instant::now() + Duration::from_secs(30);
            while metric(&cluster, victim, "momentum_cluster_snapshots_written_total") == 0 {
                assert!(Instant::now() < deadline, "the victim wrote no snapshot");
                std::thread::sleep(Duration::from_millis(100));
            }
            cluster.kill(victim);
            killed_at = Some(Instant::now());
        }
        let batch = Value::Array(chunk.to_vec());
        // Through the survivors; a batch that is not acknowledged is retried (same ids).
        let mut attempt = 0;
        loop {
            let (status, body) = cluster.post(attempt % 2, &batch);
            if status == 200 {
                assert_eq!(body["accepted"], 100);
                records += 100;
                break;
            }
            attempt += 1;
            assert!(
                attempt < 50,
                "a batch was never acknowledged: {status} {body}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        reference_post(&reference, &batch);
        if let Some(at) = killed_at {
            let (status, _) = cluster.get(0, &format!("/v1/users/{victim_user}"));
            *statuses_seen.entry(status).or_default() += 1;
            if served_again.is_none() && cluster.owners().is_some() {
                served_again = Some(at.elapsed());
            }
        }
    }
    // The victim's partitions are served again (every partition ready on a survivor).
    let killed_at = killed_at.expect("the node was killed");
    let owners = cluster.wait_converged(records, Duration::from_secs(60));
    let handover = served_again.unwrap_or_else(|| killed_at.elapsed());
    eprintln!(
        "hand-over after kill -9: every partition served again {:.1} s after the kill",
        handover.as_secs_f64()
    );
    assert!(handover < Duration::from_secs(30), "{handover:?}");
    assert!(
        statuses_seen.keys().any(|&s| s != 200),
        "the victim's user was read on a survivor before the hand-over: {statuses_seen:?}"
    );
    // The survivors restored the victim's partitions from their snapshots.
    let restored: u64 = (0..2)
        .map(|n| metric(&cluster, n, "momentum_cluster_snapshots_restored_total"))
        .sum();
    assert!(restored > 0, "no partition snapshot was restored");
    for status in statuses_seen.keys() {
        assert!(
            [200, 421, 503].contains(status),
            "reads during the hand-over are forwarded (200) or answer 421 or 503, not {status}"
        );
    }
    for u in 0..120 {
        let user = format!("user-{u}");
        let owner = owners[&momentum::cluster::partition_of(&user, PARTITIONS)].0;
        assert_ne!(owner, victim);
        let at_owner = user_view(|path| cluster.read(owner, path), &user);
        assert_eq!(at_owner, reference_view(&reference, &user), "{user}");
    }
    // Re-posting every acknowledged event changes nothing: each one was applied already.
    for chunk in events.chunks(500) {
        let (status, _) = cluster.post(0, &Value::Array(chunk.to_vec()));
        assert_eq!(status, 200);
        records += chunk.len() as i64;
    }
    let owners = cluster.wait_converged(records, Duration::from_secs(60));
    for u in 0..120 {
        let user = format!("user-{u}");
        let owner = owners[&momentum::cluster::partition_of(&user, PARTITIONS)].0;
        let at_owner = user_view(|path| cluster.read(owner, path), &user);
        assert_eq!(
            at_owner,
            reference_view(&reference, &user),
            "{user} after re-posting"
        );
    }
}

/// A fourth node joins: it takes partitions, and every partition an old node keeps stays in
/// the same assignment (cooperative-sticky: only the partitions that move are revoked). Its
/// store held state from single-node times, of which nothing is restored.
#[test]
fn a_joining_node_moves_only_the_partitions_it_takes() {
    let mut cluster = Cluster::three_nodes("join", "j");
    let reference = reference_server();
    let events = workload(16, 100, 30, 1500, 1_700_000_000_000);
    let records = cluster.post_all(&events, &reference);
    let before = cluster.wait_converged(records, Duration::from_secs(90));
    let generations: Vec<BTreeMap<u32, u64>> = (0..3).map(|n| cluster.generations(n)).collect();
    // The new node's store holds state from single-node times (users of its own, and events
    // of the cluster's users): none of it is restored, the events topic is the log.
    let legacy: Vec<Value> = (0..40)
        .map(|u| {
            let user = if u < 20 {
                format!("legacy-{u}")
            } else {
                format!("user-{}", u - 20)
            };
            json!({"event_id": format!("legacy-ev-{u}"), "user_id": user,
                   "item_id": format!("goal-{}", u % 7), "kind": "complete",
                   "ts": 1_700_000_000_000i64})
        })
        .collect();
    cluster.seed_single_node_store("j4", &Value::Array(legacy));
    cluster.start_node("j4");
    let after = cluster.wait_converged(records, Duration::from_secs(90));
    let mut moved = 0;
    for (p, &(owner, _)) in &after {
        if owner == 3 {
            moved += 1;
            continue;
        }
        assert_eq!(owner, before[p].0, "partition {p} moved between old nodes");
        assert_eq!(
            cluster.generations(owner)[p],
            generations[owner][p],
            "partition {p} was revoked and assigned again on node {owner}"
        );
    }
    assert!(
        moved > 0 && moved < PARTITIONS as usize,
        "{moved} partitions moved"
    );
    cluster.assert_equal_to(&reference, 100, records);
    for u in 0..20 {
        for n in 0..4 {
            let (status, body) = cluster.read(n, &format!("/v1/users/legacy-{u}"));
            assert_eq!(status, 404, "legacy-{u} on node {n}: {body}");
        }
    }
}

/// A node stopped with SIGSTOP past the session timeout, then resumed: its partitions were
/// served by the others meanwhile, nothing is applied twice, and no snapshot goes back to a
/// lower offset (only a higher offset may replace one).
#[test]
fn a_stalled_node_applies_nothing_twice_and_overwrites_no_newer_snapshot() {
    let mut cluster = Cluster::three_nodes("stall", "s");
    let reference = reference_server();
    let events = workload(17, 100, 30, 2000, 1_700_000_000_000);
    let mut records = cluster.post_all(&events[..1000], &reference);
    cluster.wait_converged(records, Duration::from_secs(90));
    cluster.signal(2, "STOP");
    cluster.nodes[2].paused = true;
    records += cluster.post_all(&events[1000..], &reference);
    // The others took its partitions (after the session timeout) and caught up.
    cluster.assert_equal_to(&reference, 100, records);
    // Let the successors snapshot what they replayed.
    std::thread::sleep(Duration::from_secs(3));
    let before = cluster.snapshot_offsets();
    cluster.signal(2, "CONT");
    cluster.nodes[2].paused = false;
    // Back in the group; the state everywhere is still exactly the reference's.
    cluster.assert_equal_to(&reference, 100, records);
    std::thread::sleep(Duration::from_secs(3));
    let after = cluster.snapshot_offsets();
    for (p, offset) in &before {
        assert!(
            after[p] >= *offset,
            "partition {p}: snapshot went back from offset {offset} to {}",
            after[p]
        );
    }
}

/// Every node is stopped (SIGTERM) and started again under the same names: the state
/// afterwards, profiles included, equals the state before (snapshots, the rest of the log,
/// the item deltas).
#[test]
fn a_full_restart_keeps_the_state() {
    let mut cluster = Cluster::three_nodes("restart", "r");
    let reference = reference_server();
    let events = workload(18, 100, 30, 1500, 1_700_000_000_000);
    let (first, rest) = events.split_at(700);
    let mut records = cluster.post_all(first, &reference);
    // Profiles written through every node, between events: each owner applies its users'
    // in the partition's order, and keeps them in its snapshots.
    for u in (0..100).step_by(7) {
        cluster.put_profile(u % 3, &format!("user-{u}"), &reference);
        records += 1;
    }
    records += cluster.post_all(rest, &reference);
    cluster.assert_equal_to(&reference, 100, records);
    for n in 0..3 {
        cluster.terminate(n);
    }
    for name in ["r1", "r2", "r3"] {
        cluster.start_node(name);
    }
    cluster.assert_equal_to(&reference, 100, records);
    let restored: u64 = (3..6)
        .map(|n| metric(&cluster, n, "momentum_cluster_snapshots_restored_total"))
        .sum();
    assert!(restored > 0, "the restart restored partition snapshots");
}

/// One of the two brokers is killed (`kill -9`) while events stream in: writes carry on
/// through the other (a batch that is not acknowledged is retried with the same ids); once the
/// broker is back, every user's state equals a single node's given exactly the acknowledged
/// events — nothing acknowledged during the outage was lost.
#[test]
fn a_broker_death_under_load_loses_nothing_acknowledged() {
    let mut cluster = Cluster::three_nodes("brokerdeath", "b");
    let reference = reference_server();
    let events = workload(19, 100, 30, 3000, 1_700_000_000_000);
    let mut records = 0i64;
    let mut acknowledged = 0i64;
    let mut retried = 0;
    for (i, chunk) in events.chunks(100).enumerate() {
        if i == 10 {
            let broker = &mut cluster.brokers[0];
            broker.kill().expect("SIGKILL the broker");
            let _ = broker.wait();
        }
        let batch = Value::Array(chunk.to_vec());
        let mut attempt = 0;
        loop {
            let (status, body) = cluster.post(i % 3, &batch);
            if status == 200 {
                records += 100;
                acknowledged += 100;
                break;
            }
            // Not acknowledged: it may or may not be in the log; the retry is deduplicated.
            records += 100;
            attempt += 1;
            retried += 1;
            assert!(
                attempt < 60,
                "a batch was never acknowledged: {status} {body}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        reference_post(&reference, &batch);
    }
    eprintln!("broker death: {retried} batches retried");
    // Nisshi 0.8.1 gives every broker the same node id, so librdkafka keeps the group
    // coordinator at the dead broker's address: the consumer group resumes once a broker
    // listens there again (docs/operations.md, "Cluster mode").
    let restarted = cluster.spawn_broker(0);
    cluster.brokers[0] = restarted;
    cluster.assert_equal_to_any_records(&reference, 100, acknowledged, records);
}

/// PostgreSQL — the brokers' log and the partition snapshots, on a server of the test's own —
/// crashes while clients post through every node: nothing is acknowledged while it is down
/// (each batch answers `503` with `Retry-After`; reads are still served), and once it is back
/// the cluster recovers
/// without help: the refused batches, retried with the same ids, are acknowledged, and every
/// user's state equals a single node's given the same events.
#[test]
fn postgresql_down_acknowledges_nothing_and_the_cluster_recovers() {
    let postgres = PrivatePostgres::start();
    let admin_url = postgres.url();
    let mut cluster =
        Cluster::with_three_nodes(Cluster::start_on("pgdown", admin_url, Some(postgres)), "p");
    let reference = reference_server();
    let events = workload(23, 100, 30, 2400, 1_700_000_000_000);
    let (before, after) = events.split_at(1000);
    let mut records = cluster.post_all(before, &reference);
    cluster.wait_converged(records, Duration::from_secs(90));
    let mut acknowledged = records;

    cluster.postgres.as_mut().expect("own server").crash();
    let down = Instant::now();
    let batches: Vec<Value> = after
        .chunks(100)
        .map(|chunk| Value::Array(chunk.to_vec()))
        .collect();
    // One batch to each node while it is down: none may be acknowledged.
    for (n, batch) in batches.iter().take(3).enumerate() {
        let res = cluster
            .client
            .post(cluster.url(n, "/v1/events"))
            .json(batch)
            .send()
            .expect("the node answers");
        let status = res.status().as_u16();
        let retry_after = res.headers().get("retry-after").cloned();
        let body: Value = res.json().unwrap_or(Value::Null);
        assert_eq!(status, 503, "node {n} while PostgreSQL is down: {body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        assert!(retry_after.is_some(), "503 without Retry-After");
        // It may or may not have reached the log before PostgreSQL went.
        records += 100;
    }
    eprintln!(
        "postgresql down: three batches refused in {:.1} s",
        down.elapsed().as_secs_f64()
    );
    // Reads need no database: every node still answers from memory (forwarding included).
    for n in 0..3 {
        let (status, body) = cluster.get(n, "/v1/users/user-7/recommendations");
        assert_eq!(status, 200, "node {n} while PostgreSQL is down: {body}");
    }

    cluster.postgres.as_mut().expect("own server").resume();
    let back = Instant::now();
    let mut first_ack = None;
    for (i, batch) in batches.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, body) = cluster.post(i % 3, batch);
            records += 100;
            if status == 200 {
                acknowledged += 100;
                first_ack.get_or_insert_with(|| back.elapsed());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no acknowledgement 120 s after PostgreSQL came back: {status} {body}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        reference_post(&reference, batch);
    }
    eprintln!(
        "postgresql back: first batch acknowledged after {:.1} s",
        first_ack.expect("acknowledged").as_secs_f64()
    );
    cluster.assert_equal_to_any_records(&reference, 100, acknowledged, records);
}

/// The learned item model is built once per cluster: only the leader (the node serving
/// partition 0) builds it, the others refuse a rebuild request naming the leader, every node
/// installs the leader's model under the same version, and each user's recommendations
/// computed with it equal a single node's that built its own model from the same events.
#[test]
fn the_item_model_is_built_once_and_installed_everywhere() {
    let mut cluster = Cluster::three_nodes("itemmodel", "m");
    let reference = reference_server();
    let events = workload(20, 100, 30, 1500, 1_700_000_000_000);
    let records = cluster.post_all(&events, &reference);
    let owners = cluster.wait_converged(records, Duration::from_secs(90));
    let leader = owners[&0].0;
    let leader_name = format!("m{}", leader + 1);
    for n in 0..3 {
        let status = cluster.status(n).expect("status");
        assert_eq!(status["item_model"]["is_leader"], n == leader, "node {n}");
    }
    // Another node refuses, naming the leader.
    let other = (leader + 1) % 3;
    let (status, body) =
        rebuild_item_model(&cluster.client, &cluster.url(other, "/v1/admin/item-model"));
    assert_eq!(status, 421, "{body}");
    assert_eq!(body["error"]["code"], "not_leader");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(&leader_name) && message.contains(&cluster.nodes[leader].addr),
        "{message}"
    );
    // The leader builds from the whole catalogue and stores it for the cluster.
    let (status, built) = rebuild_item_model(
        &cluster.client,
        &cluster.url(leader, "/v1/admin/item-model"),
    );
    assert_eq!(status, 200, "{built}");
    let version = built["version"].as_u64().expect("version");
    assert!(built["items"].as_u64() > Some(10), "{built}");
    // Every node installs it (each reads the cluster's model every second here).
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in 0..3 {
        loop {
            let status = cluster.status(n).expect("status");
            let model = &status["item_model"];
            if model["version"].as_u64() == Some(version) {
                assert_eq!(model["built_by"], leader_name.as_str(), "node {n}");
                assert_eq!(model["items"], built["items"], "node {n}");
                assert_eq!(model["leader"]["node_id"], leader_name.as_str(), "node {n}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {n} did not install {version}: {model}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(
            metric_or_zero(&cluster, n, "momentum_item_model_version") as u64,
            version,
            "node {n}"
        );
    }
    // Built once per cluster: successful builds happened on the leader only (the startup
    // build included, unless leadership moved before the workload), and each of them is one
    // version of the cluster's model: nothing was built twice.
    let ok: Vec<u64> = (0..3)
        .map(|n| {
            metric_or_zero(
                &cluster,
                n,
                r#"momentum_item_model_builds_total{result="ok"}"#,
            ) as u64
        })
        .collect();
    assert!(ok[leader] > 0, "{ok:?}");
    assert_eq!(
        ok.iter().sum::<u64>(),
        version,
        "one stored version per build: {ok:?}"
    );
    for n in (0..3).filter(|&n| n != leader) {
        assert!(
            metric_or_zero(&cluster, n, "momentum_cluster_item_model_installs_total") >= 1.0,
            "node {n} installed the cluster's model"
        );
    }
    // A rebuild from no new data is fenced: the cluster's model stays.
    let fenced = "momentum_cluster_item_model_fenced_total";
    let fenced_before = metric_or_zero(&cluster, leader, fenced);
    let (status, again) = rebuild_item_model(
        &cluster.client,
        &cluster.url(leader, "/v1/admin/item-model"),
    );
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["version"].as_u64(), Some(version), "{again}");
    assert_eq!(
        metric_or_zero(&cluster, leader, fenced),
        fenced_before + 1.0
    );
    // The single node builds its own from the same events: every user's lists are equal.
    let (status, body) = rebuild_item_model(
        &reqwest::blocking::Client::new(),
        &reference.url("/v1/admin/item-model"),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"], built["items"], "the same items are modelled");
    cluster.assert_users_equal(&owners, &reference, 100);

    // The leader dies: the node that takes partition 0 leads once it serves it. It does not
    // build at once what the cluster has; asked to, it builds the next version from more data.
    let builds = |cluster: &Cluster, n: usize| {
        metric_or_zero(
            cluster,
            n,
            r#"momentum_item_model_builds_total{result="ok"}"#,
        ) as u64
    };
    let before: Vec<u64> = (0..3).map(|n| builds(&cluster, n)).collect();
    cluster.kill(leader);
    let more = workload(21, 100, 30, 500, 1_700_000_000_000);
    let records = records + cluster.post_all(&more, &reference);
    let owners = cluster.wait_converged(records, Duration::from_secs(60));
    let successor = owners[&0].0;
    assert_ne!(successor, leader);
    assert_eq!(
        cluster.status(successor).expect("status")["item_model"]["is_leader"],
        true
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        builds(&cluster, successor),
        before[successor],
        "no build at once"
    );
    let (status, next) = rebuild_item_model(
        &cluster.client,
        &cluster.url(successor, "/v1/admin/item-model"),
    );
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["version"].as_u64(), Some(version + 1), "{next}");
    assert_eq!(builds(&cluster, successor), before[successor] + 1);
    let successor_name = format!("m{}", successor + 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in cluster.alive().collect::<Vec<_>>() {
        while cluster.status(n).expect("status")["item_model"]["version"].as_u64()
            != Some(version + 1)
        {
            assert!(
                Instant::now() < deadline,
                "node {n} did not install {}",
                version + 1
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let status = cluster.status(n).expect("status");
        assert_eq!(status["item_model"]["built_by"], successor_name.as_str());
    }
    let (status, _) = rebuild_item_model(
        &reqwest::blocking::Client::new(),
        &reference.url("/v1/admin/item-model"),
    );
    assert_eq!(status, 200);
    cluster.assert_users_equal(&owners, &reference, 100);
}

/// `request` sent with the admin key; status and body.
fn admin(request: reqwest::blocking::RequestBuilder) -> (u16, Value) {
    let res = request
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .expect("admin request");
    let status = res.status().as_u16();
    (status, res.json().unwrap_or(Value::Null))
}

/// Training in a cluster: only the leader trains, once, from the events topic, which it reads
/// as the owners apply it (repeated event ids once, an erased user not at all); it trains on
/// the same rows as a single node given the same events and erasure, and every node copies
/// the versions and serves them. Churn scoring runs per node on the users it owns (each user
/// scored exactly once in the cluster), and goal outcomes are compared with the predictions
/// on the owner.
#[test]
fn models_are_trained_once_from_the_log_and_served_by_every_node() {
    let mut cluster = Cluster::start("training");
    cluster.node_env.push((
        "MOMENTUM__SECURITY__MODEL_KEY".into(),
        crate::common::MODEL_KEY.into(),
    ));
    let mut cluster = Cluster::with_three_nodes(cluster, "t");
    let reference = TestServer::start_with(settings());
    let events = crate::predictions::population(crate::predictions::now_ms());
    let mut records = 0;
    for (i, chunk) in events.chunks(1000).enumerate() {
        let batch = Value::Array(chunk.to_vec());
        let (status, body) = cluster.post(i % 3, &batch);
        assert_eq!(status, 200, "{body}");
        reference_post(&reference, &batch);
        records += chunk.len() as i64;
    }
    // Repeats through other nodes: in the log twice, trained on once.
    for (i, chunk) in events[..3000].chunks(1000).enumerate() {
        let batch = Value::Array(chunk.to_vec());
        let (status, body) = cluster.post((i + 1) % 3, &batch);
        assert_eq!(status, 200, "{body}");
        reference_post(&reference, &batch);
        records += chunk.len() as i64;
    }
    // An erased user: their events stay in the log until its retention, but are not trained on.
    let erased = "user-7";
    let path = format!("/v1/users/{erased}");
    assert_eq!(admin(cluster.client.delete(cluster.url(1, &path))).0, 204);
    assert_eq!(
        admin(reqwest::blocking::Client::new().delete(reference.url(&path))).0,
        204
    );
    records += 1;
    let owners = cluster.wait_converged(records, Duration::from_secs(120));
    let leader = owners[&0].0;
    let other = (leader + 1) % 3;

    // Another node refuses, naming the leader (its schedule lets due runs pass: a unit test).
    let (status, body) = admin(
        cluster
            .client
            .post(cluster.url(other, "/v1/models/train?wait=true")),
    );
    assert_eq!(status, 421, "{body}");
    assert_eq!(body["error"]["code"], "not_leader");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("t{}", leader + 1))),
        "{body}"
    );
    let (status, trained) = admin(
        cluster
            .client
            .post(cluster.url(leader, "/v1/models/train?wait=true")),
    );
    assert_eq!(status, 200, "{trained}");
    let (status, single) =
        admin(reqwest::blocking::Client::new().post(reference.url("/v1/models/train?wait=true")));
    assert_eq!(status, 200, "{single}");
    let (trained, single) = (&trained["report"], &single["report"]);
    // The same events and users as the single node's log, so the same labelled rows.
    assert_eq!(trained["events"], single["events"], "{trained}\n{single}");
    assert_eq!(trained["users"], single["users"]);
    assert_eq!(trained["users"].as_u64(), Some(239), "one user erased");
    let kept = events.iter().filter(|e| e["user_id"] != erased).count();
    assert_eq!(
        trained["events"].as_u64(),
        Some(kept as u64),
        "each event once"
    );
    for (t, s) in trained["models"]
        .as_array()
        .expect("models")
        .iter()
        .zip(single["models"].as_array().expect("models"))
    {
        assert_eq!(t["name"], s["name"]);
        assert_eq!(t["version"], 1, "{t}");
        assert_eq!(t["train_rows"], s["train_rows"], "{t}\n{s}");
        assert_eq!(t["holdout_rows"], s["holdout_rows"], "{t}\n{s}");
        let auc = |m: &Value| m["metrics"]["auc"].as_f64().expect("auc");
        assert!((auc(t) - auc(s)).abs() < 0.02, "{t}\n{s}");
    }

    // Every node copies the versions and serves them.
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in 0..3 {
        loop {
            let (status, models) = cluster.get(n, "/v1/models");
            assert_eq!(status, 200, "{models}");
            let live: Vec<Value> = models["models"]
                .as_array()
                .expect("models")
                .iter()
                .map(|m| m["live_version"].clone())
                .collect();
            let versions: Vec<usize> = models["models"]
                .as_array()
                .expect("models")
                .iter()
                .map(|m| m["versions"].as_array().map_or(0, Vec::len))
                .collect();
            if live == [json!(1), json!(1)] && versions == [1, 1] {
                let runs = models["trainer"]["runs"].as_u64();
                assert_eq!(runs, Some(u64::from(n == leader)), "node {n}: {models}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {n} does not serve the cluster's versions: {models}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(
            metric_or_zero(&cluster, n, r#"momentum_model_version{model="churn"}"#),
            1.0
        );
    }
    for n in (0..3).filter(|&n| n != leader) {
        assert_eq!(
            metric_or_zero(&cluster, n, "momentum_cluster_model_versions_copied_total"),
            2.0,
            "node {n}"
        );
    }
    // Predictions through any node (forwarded to the owner, served with the cluster's model).
    for n in 0..3 {
        let (status, churn) = cluster.read(n, "/v1/users/user-3/churn");
        assert_eq!(status, 200, "{churn}");
        assert_eq!(churn["model_version"], 1, "{churn}");
    }

    // Churn scoring: each node scores the users it owns; together, every user once.
    let churn_run = |cluster: &Cluster, n: usize| {
        let (status, run) = admin(
            cluster
                .client
                .post(cluster.url(n, "/v1/churn/run?wait=true")),
        );
        assert_eq!(status, 200, "{run}");
        let users = run["report"]["users_scored"]
            .as_u64()
            .expect("users_scored");
        (users, run["report"]["day"].clone())
    };
    let mut first_round = Vec::new();
    for n in 0..3 {
        let (users, day) = churn_run(&cluster, n);
        assert!(users > 0, "node {n} owns users");
        first_round.push((users, day));
    }
    let scored: u64 = first_round.iter().map(|r| r.0).sum();
    let (status, run) =
        admin(reqwest::blocking::Client::new().post(reference.url("/v1/churn/run?wait=true")));
    assert_eq!(status, 200, "{run}");
    assert_eq!(
        Some(scored),
        run["report"]["users_scored"].as_u64(),
        "{run}"
    );

    // Online accuracy on the owner: a success prediction read through a node that does not
    // own the user, then the goal's outcome posted through another one.
    let user = "user-4";
    let owner = owners[&momentum::cluster::partition_of(user, PARTITIONS)].0;
    let goal = events
        .iter()
        .rev()
        .find(|e| e["user_id"] == user && e["kind"] == "start")
        .and_then(|e| e["item_id"].as_str())
        .expect("a started goal")
        .to_owned();
    let outcomes = |cluster: &Cluster| {
        metric_or_zero(
            cluster,
            owner,
            r#"momentum_model_online_outcomes{model="success"}"#,
        )
    };
    let before = outcomes(&cluster);
    let (status, predicted) = cluster.read(
        (owner + 1) % 3,
        &format!("/v1/users/{user}/predictions/success?goal_id={goal}"),
    );
    assert_eq!(status, 200, "{predicted}");
    let complete = json!([{"event_id": "outcome-1", "user_id": user, "item_id": goal,
                           "kind": "complete", "ts": crate::predictions::now_ms()}]);
    let (status, body) = cluster.post((owner + 2) % 3, &complete);
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while outcomes(&cluster) <= before {
        assert!(
            Instant::now() < deadline,
            "the owner did not compare the outcome with its prediction"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The leader dies: its successor leads, and trains the next version from the log.
    cluster.kill(leader);
    let owners = cluster.wait_converged(records + 1, Duration::from_secs(60));
    let successor = owners[&0].0;
    let (status, next) = admin(
        cluster
            .client
            .post(cluster.url(successor, "/v1/models/train?wait=true")),
    );
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["report"]["models"][0]["version"], 2, "{next}");
    assert_eq!(next["report"]["users"], 239, "{next}");
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in cluster.alive().collect::<Vec<_>>() {
        loop {
            let (_, models) = cluster.get(n, "/v1/models");
            let versions = models["models"][0]["versions"]
                .as_array()
                .map_or(0, Vec::len);
            if versions == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "node {n}: {models}");
            std::thread::sleep(Duration::from_millis(200));
        }
        // The dead leader's partitions were scored today by it: their new owners leave them
        // to it (the same day), and score again only their own.
        let (users, day) = churn_run(&cluster, n);
        if day == first_round[n].1 {
            assert_eq!(
                users, first_round[n].0,
                "node {n} scores no user twice a day"
            );
        } else {
            assert!(
                users > first_round[n].0,
                "a new day: node {n} scores what it serves"
            );
        }
    }
}

/// A/B experiments in a cluster: an experiment created on one node is the cluster's (the
/// conflicts a single node refuses are refused across nodes), every node assigns users to the
/// same variants, the owner that served a recommendation attributes the events that name it
/// wherever they are posted (a repeated event id once), and the results asked of any node are
/// every node's counts summed: equal to a single node's given the same reads and events.
/// Stopping and deleting through other nodes reach every node.
#[test]
fn experiments_are_the_clusters_and_their_results_sum_every_node() {
    let cluster = Cluster::three_nodes("experiments", "x");
    let reference = reference_server();
    let single = reqwest::blocking::Client::new();
    let events = workload(31, 60, 20, 600, 1_700_000_000_000);
    let mut records = cluster.post_all(&events, &reference);
    let owners = cluster.wait_converged(records, Duration::from_secs(60));

    let def = json!({"id": "exp-c", "variants": [
        {"name": "control", "weight": 50},
        {"name": "treatment", "weight": 50, "hybrid_weights": {"cf": 0.3, "content": 0.7}}
    ]});
    let (status, created) = admin(
        cluster
            .client
            .post(cluster.url(0, "/v1/experiments"))
            .json(&def),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "running");
    let (status, body) = admin(single.post(reference.url("/v1/experiments")).json(&def));
    assert_eq!(status, 201, "{body}");
    // Another node assigns users to it without being asked about experiments (it follows the
    // table on its own): a user it owns, read from it directly.
    let (user, owner) = (0..60)
        .map(|u| format!("user-{u}"))
        .map(|user| {
            let owner = owners[&momentum::cluster::partition_of(&user, PARTITIONS)].0;
            (user, owner)
        })
        .find(|&(_, owner)| owner != 0)
        .expect("a user owned by another node");
    let path = format!("/v1/users/{user}/recommendations?n=3");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, served) = cluster.get(owner, &path);
        assert_eq!(status, 200, "{served}");
        if served["experiment"] == "exp-c" {
            // Counted there as one assignment: the single node gets the same read.
            let (status, _) = reference_get(&reference)(&path);
            assert_eq!(status, 200);
            break;
        }
        assert!(served["experiment"].is_null(), "{served}");
        assert!(
            Instant::now() < deadline,
            "node {owner} does not follow the experiments"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // What one node refuses, every node refuses.
    let other = json!({"id": "exp-d", "variants": [{"name": "a", "weight": 1}]});
    let (status, body) = admin(
        cluster
            .client
            .post(cluster.url(1, "/v1/experiments"))
            .json(&other),
    );
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("exp-c")));
    let (status, body) = admin(
        cluster
            .client
            .post(cluster.url(2, "/v1/experiments"))
            .json(&def),
    );
    assert_eq!(status, 409, "{body}");
    let bad = json!({"id": "exp-e", "variants": [{"name": "a", "weight": 0}]});
    let (status, body) = admin(
        cluster
            .client
            .post(cluster.url(2, "/v1/experiments"))
            .json(&bad),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_experiment"))
    );
    for n in 0..3 {
        let (status, listed) = admin(cluster.client.get(cluster.url(n, "/v1/experiments")));
        assert_eq!(status, 200, "{listed}");
        assert_eq!(listed["experiments"], json!([created.clone()]), "node {n}");
    }

    // Reads through every node, events naming them through other nodes (clicks of every
    // second user, posted twice for every fourth), the same on the single node.
    let mut variants = BTreeMap::new();
    for u in 0..60 {
        let user = format!("user-{u}");
        let path = format!("/v1/users/{user}/recommendations?n=3");
        let (status, served) = cluster.read(u % 3, &path);
        assert_eq!(status, 200, "{served}");
        let (_, single_served) = reference_get(&reference)(&path);
        assert_eq!(served["experiment"], "exp-c", "{served}");
        assert_eq!(served["variant"], single_served["variant"], "{user}");
        variants.insert(user.clone(), served["variant"].clone());
        let respond = |served: &Value, kind: &str, id: String| {
            json!([{"event_id": id, "user_id": user, "item_id": "goal-1", "kind": kind,
                    "ts": 1_700_000_100_000i64,
                    "recommendation_id": served["recommendation_id"]}])
        };
        let mut posts = vec![(
            respond(&served, "impression", format!("imp-{u}")),
            respond(&single_served, "impression", format!("imp-{u}")),
        )];
        if u % 2 == 0 {
            posts.push((
                respond(&served, "click", format!("clk-{u}")),
                respond(&single_served, "click", format!("clk-{u}")),
            ));
        }
        if u % 4 == 0 {
            posts.push(posts[1].clone());
        }
        for (i, (batch, single_batch)) in posts.iter().enumerate() {
            let (status, body) = cluster.post((u + 1 + i) % 3, batch);
            assert_eq!(status, 200, "{body}");
            reference_post(&reference, single_batch);
            records += 1;
        }
    }
    assert!(
        variants.values().any(|v| v == "control") && variants.values().any(|v| v == "treatment"),
        "{variants:?}"
    );
    cluster.wait_converged(records, Duration::from_secs(60));
    let (status, expected) = admin(single.get(reference.url("/v1/experiments/exp-c/results")));
    assert_eq!(status, 200, "{expected}");
    let impressions: u64 = expected["variants"]
        .as_array()
        .expect("variants")
        .iter()
        .map(|v| v["impressions"].as_u64().expect("impressions"))
        .sum();
    assert_eq!(impressions, 60, "{expected}");
    for n in 0..3 {
        let (status, results) = admin(
            cluster
                .client
                .get(cluster.url(n, "/v1/experiments/exp-c/results")),
        );
        assert_eq!(status, 200, "{results}");
        assert_eq!(results, expected, "node {n}");
    }

    // Stopped through one node: no node assigns any more. Deleted through another: gone
    // everywhere.
    let (status, stopped) = admin(
        cluster
            .client
            .post(cluster.url(1, "/v1/experiments/exp-c/stop"))
            .json(&json!({})),
    );
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"], "stopped");
    let deadline = Instant::now() + Duration::from_secs(10);
    for u in 0..6 {
        let path = format!("/v1/users/user-{u}/recommendations?n=3");
        loop {
            let (status, served) = cluster.read(u % 3, &path);
            assert_eq!(status, 200, "{served}");
            if served["experiment"].is_null() {
                break;
            }
            assert!(Instant::now() < deadline, "still assigned: {served}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let (status, body) = admin(
        cluster
            .client
            .delete(cluster.url(2, "/v1/experiments/exp-c")),
    );
    assert_eq!(status, 204, "{body}");
    for n in 0..3 {
        let (status, body) = admin(cluster.client.get(cluster.url(n, "/v1/experiments/exp-c")));
        assert_eq!(status, 404, "node {n}: {body}");
    }
    // With none running, a new one may start, through any node.
    let (status, body) = admin(
        cluster
            .client
            .post(cluster.url(1, "/v1/experiments"))
            .json(&other),
    );
    assert_eq!(status, 201, "{body}");
}
