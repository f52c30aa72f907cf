//! Durability over the real server, on both store back-ends: restart equivalence (snapshot +
//! restore answers byte for byte like the uninterrupted server), GDPR erasure (nothing left in
//! any table or snapshot, and a restart does not bring the user back), and a crash test (a
//! child process killed with SIGKILL mid-stream keeps every acknowledged event).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{settings, TestServer, ADMIN_KEY};
use momentum::store::StoreKind;
use momentum::Settings;

/// Settings for a PostgreSQL store in a fresh schema at `DATABASE_URL` (the test fails if the
/// database cannot be reached: the server does not start).
fn postgres_settings() -> Settings {
    let mut s = settings();
    s.store.kind = StoreKind::Postgres;
    s.store.url = Some(
        std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
    );
    s.store.schema = Some(format!("momentum_it_{:016x}", rand_u64()));
    s
}

/// Drops the schema a PostgreSQL test used.
async fn drop_schema(settings: &Settings) {
    let (Some(url), Some(schema)) = (&settings.store.url, &settings.store.schema) else {
        return;
    };
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to DATABASE_URL");
    actix_web::rt::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .expect("drop schema");
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A deterministic workload: 40 users, 30 items with metadata, ratings and implicit events.
fn workload() -> (Vec<(String, Value)>, Vec<Value>) {
    let items = (0..30)
        .map(|i| {
            let tags = if i % 3 == 0 {
                vec!["fitness", "outdoor"]
            } else if i % 3 == 1 {
                vec!["learning"]
            } else {
                vec!["mindfulness", "health"]
            };
            let word = ["run", "read", "meditate"][i % 3];
            let kind = ["habit", "project", "practice"][i % 3];
            (
                format!("g{i}"),
                json!({"title": format!("Goal number {i} {word}"), "tags": tags, "type": kind}),
            )
        })
        .collect();
    let kinds = [
        "view", "click", "start", "checkin", "complete", "like", "abandon",
    ];
    let mut events = Vec::new();
    for u in 0..40u64 {
        for k in 0..12u64 {
            let item = (u * 7 + k * k * 3 + k) % 30;
            let n = u * 100 + k;
            let e = if k % 4 == 0 {
                json!({"event_id": format!("ev{n}"), "user_id": format!("u{u}"), "item_id": format!("g{item}"), "kind": "rate", "value": ((u + k) % 5 + 1) as f64 * 0.9, "ts": 1_700_000_000_000u64 + n})
            } else {
                json!({"event_id": format!("ev{n}"), "user_id": format!("u{u}"), "item_id": format!("g{item}"), "kind": kinds[((u + k) % 7) as usize], "ts": 1_700_000_000_000u64 + n})
            };
            events.push(e);
        }
    }
    (items, events)
}

/// Rebuilds the learned item model from the current state, so that lists are a function of
/// the state alone (the background job would otherwise rebuild at times of its own).
async fn rebuild_item_model(client: &reqwest::Client, base: &str) {
    let res = client
        .post(format!("{base}/v1/admin/item-model"))
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await
        .expect("rebuild");
    assert_eq!(res.status().as_u16(), 200);
}

/// What must survive a restart, as the API shows it (minus per-response ids and flags).
async fn observable(s: &TestServer) -> Vec<Value> {
    rebuild_item_model(&s.client, &s.base).await;
    let mut out = Vec::new();
    for u in 0..40 {
        let (_, mut recs) = s.get(&format!("/v1/users/u{u}/recommendations?n=8")).await;
        let items = recs["items"].take();
        out.push(json!({"user": u, "strategy": recs["strategy"], "items": items}));
        let (_, sim) = s.get(&format!("/v1/users/u{u}/similar-users")).await;
        out.push(sim);
        let (_, user) = s.get(&format!("/v1/users/u{u}")).await;
        out.push(user);
    }
    for i in 0..30 {
        out.push(s.get(&format!("/v1/items/g{i}/similar-items")).await.1);
        out.push(s.get(&format!("/v1/items/g{i}")).await.1);
    }
    out
}

async fn load(s: &TestServer, items: &[(String, Value)], events: &[Value]) {
    for (id, meta) in items {
        let (status, body) = s.put_json(&format!("/v1/items/{id}"), meta).await;
        assert!(status == 200 || status == 201, "{body}");
    }
    for chunk in events.chunks(97) {
        let (status, body) = s.post_json("/v1/events", &json!(chunk)).await;
        assert_eq!(status, 200, "{body}");
    }
}

async fn snapshot_now(s: &TestServer) -> Value {
    let res = s
        .client
        .post(s.url("/v1/admin/snapshot"))
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await
        .expect("snapshot");
    assert_eq!(res.status().as_u16(), 200);
    res.json().await.expect("json")
}

async fn restart_equivalence(settings: Settings) {
    let (items, events) = workload();
    let (first, second) = events.split_at(300);
    let mut a = TestServer::start_with(settings.clone());
    a.keep_store = true;
    load(&a, &items, first).await;
    // A snapshot in the middle, then more events that only the log tail holds.
    let snap = snapshot_now(&a).await;
    assert!(
        snap["covers_seq"].as_u64().is_some_and(|s| s >= 300),
        "{snap}"
    );
    load(&a, &[], second).await;
    let profile = json!({"preferences": {"goal": "health"}, "locale": "en-GB"});
    assert_eq!(a.put_json("/v1/users/u3", &profile).await.0, 200);
    let before = observable(&a).await;
    drop(a); // graceful stop: final snapshot

    let b = TestServer::start_with(settings.clone());
    let after = observable(&b).await;
    assert_eq!(before.len(), after.len());
    for (x, y) in before.iter().zip(&after) {
        assert_eq!(x.to_string(), y.to_string(), "restart changed an answer");
    }
    // Retries of logged events are still recognised.
    let (_, body) = b.post_json("/v1/events", &json!(&events[..50])).await;
    assert_eq!(body["duplicates"], 50, "{body}");
}

async fn erasure(settings: Settings) {
    let (items, events) = workload();
    let mut a = TestServer::start_with(settings.clone());
    a.keep_store = true;
    load(&a, &items, &events).await;
    assert_eq!(
        a.put_json("/v1/users/u7", &json!({"locale": "fr"})).await.0,
        200
    );
    snapshot_now(&a).await;
    let store = a.state().journal.store().clone();
    assert!(store.count_user_rows("u7").await.expect("count").total() > 0);

    let url = a.url("/v1/users/u7");
    assert_eq!(
        a.client
            .delete(&url)
            .send()
            .await
            .expect("delete")
            .status()
            .as_u16(),
        401
    );
    let res = a
        .client
        .delete(&url)
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status().as_u16(), 204);
    assert_eq!(a.get("/v1/users/u7").await.0, 404);
    let footprint = store.count_user_rows("u7").await.expect("count");
    assert_eq!(
        footprint.total(),
        0,
        "rows left after erasure: {footprint:?}"
    );
    // Others stay: their records are still in the snapshot (user records share chunk parts).
    let (_, parts) = store
        .latest_snapshot()
        .await
        .expect("read")
        .expect("a snapshot");
    let holds = |needle: &[u8]| {
        parts
            .iter()
            .any(|p| p.bytes.windows(needle.len()).any(|w| w == needle))
    };
    assert!(holds(b"\x02\x00u8"), "others stay");
    assert!(!holds(b"\x02\x00u7"), "the erased user's record is gone");
    // Nobody lists them as a neighbour any more.
    for u in 0..40 {
        let (_, sim) = a.get(&format!("/v1/users/u{u}/similar-users")).await;
        assert!(!sim.to_string().contains("\"u7\""), "{sim}");
    }
    // Later snapshots cannot bring them back; neither can a restart.
    snapshot_now(&a).await;
    assert_eq!(store.count_user_rows("u7").await.expect("count").total(), 0);
    drop(store); // the embedded database allows one open handle
    drop(a);
    let b = TestServer::start_with(settings);
    assert_eq!(b.get("/v1/users/u7").await.0, 404);
    assert_eq!(b.get("/v1/users/u8").await.0, 200);
    let res = b
        .client
        .delete(b.url("/v1/users/u7"))
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status().as_u16(), 404);
}

/// Every byte the store keeps, as text: each row of each table of the test schema
/// (PostgreSQL, bytea in hex) or the embedded database file.
async fn store_dump(settings: &Settings) -> String {
    let (Some(url), Some(schema)) = (&settings.store.url, &settings.store.schema) else {
        let file = settings.store.path.join("momentum.redb");
        let bytes = std::fs::read(&file).expect("read the database file");
        return String::from_utf8_lossy(&bytes).into_owned();
    };
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to DATABASE_URL");
    actix_web::rt::spawn(connection);
    let tables = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
            &[schema],
        )
        .await
        .expect("list tables");
    assert!(tables.len() >= 5, "the schema has the store's tables");
    let mut out = String::new();
    for table in tables {
        let table: String = table.get(0);
        for row in client
            .query(&format!("SELECT t::text FROM {schema}.{table} t"), &[])
            .await
            .expect("dump table")
        {
            out.push_str(&table);
            out.push(' ');
            out.push_str(row.get::<_, &str>(0));
            out.push('\n');
        }
    }
    out
}

/// Where `needle` (or its hex encoding, as PostgreSQL prints bytea) occurs in `dump`.
fn traces(dump: &str, needle: &str) -> Vec<String> {
    let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
    [needle, hex.as_str()]
        .iter()
        .flat_map(|n| dump.match_indices(*n).map(|(at, _)| at))
        .map(|at| {
            let bytes = &dump.as_bytes()[at.saturating_sub(60)..(at + 60).min(dump.len())];
            String::from_utf8_lossy(bytes).into_owned()
        })
        .collect()
}

/// The ids of an erased user's events (which contain the user id) leave memory, the next
/// snapshot and every stored copy, older snapshots included, and do not come back on restart.
async fn erasure_scrubs_event_ids(settings: Settings) {
    const ERASEE: &str = "zq-erasee-4711";
    let (items, mut events) = workload();
    for k in 0..6u64 {
        events.push(
            json!({"event_id": format!("evt-{ERASEE}-{k}"), "user_id": ERASEE,
            "item_id": format!("g{}", k * 4), "kind": "complete", "ts": 1_700_000_900_000u64 + k}),
        );
    }
    let mut a = TestServer::start_with(settings.clone());
    a.keep_store = true;
    load(&a, &items, &events).await;
    // Two stored snapshots hold the erasee's event ids (`keep` = 2).
    snapshot_now(&a).await;
    snapshot_now(&a).await;
    let store = a.state().journal.store().clone();
    // A copy in the version 1 dedupe layout (id texts) as older servers wrote it, in an older
    // snapshot: erasure must scrub it too.
    let mut old = vec![1u8];
    let texts = ["0:ev0".to_string(), format!("9999:evt-{ERASEE}-0")];
    old.extend_from_slice(&(texts.len() as u32).to_le_bytes());
    for t in &texts {
        old.extend_from_slice(&(t.len() as u16).to_le_bytes());
        old.extend_from_slice(t.as_bytes());
    }
    let meta = momentum::store::SnapshotMeta {
        id: 1,
        covers_seq: 0,
        created_ms: 0,
    };
    let part = momentum::store::SnapshotPart {
        key: "event_ids:0".into(),
        user_id: None,
        bytes: old,
    };
    store
        .put_snapshot(&meta, vec![part])
        .await
        .expect("old snapshot");
    assert!(
        !traces(&store_dump(&settings).await, &format!("evt-{ERASEE}")).is_empty(),
        "the dump sees the event ids before the erasure"
    );

    let res = a
        .client
        .delete(a.url(&format!("/v1/users/{ERASEE}")))
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status().as_u16(), 204);
    let left = traces(&store_dump(&settings).await, ERASEE);
    assert!(left.is_empty(), "after erasure: {left:?}");
    snapshot_now(&a).await;
    let left = traces(&store_dump(&settings).await, ERASEE);
    assert!(left.is_empty(), "after the next snapshot: {left:?}");
    // Forgotten in memory: the same event ids are new events of a new user now.
    let retry: Vec<Value> = events[events.len() - 6..].to_vec();
    let (_, body) = a.post_json("/v1/events", &json!(retry)).await;
    assert_eq!(body["accepted"], 6, "{body}");
    let res = a
        .client
        .delete(a.url(&format!("/v1/users/{ERASEE}")))
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status().as_u16(), 204);
    drop(store);
    drop(a);

    let b = TestServer::start_with(settings.clone());
    assert_eq!(b.get(&format!("/v1/users/{ERASEE}")).await.0, 404);
    snapshot_now(&b).await;
    let left = traces(&store_dump(&settings).await, ERASEE);
    assert!(left.is_empty(), "after a restart: {left:?}");
    // Everybody else's event ids are still remembered across the restart.
    let (_, body) = b.post_json("/v1/events", &json!(&events[..100])).await;
    assert_eq!(body["duplicates"], 100, "{body}");
    let (_, body) = b.post_json("/v1/events", &json!(retry)).await;
    assert_eq!(body["accepted"], 6, "the erased ids stay forgotten: {body}");
}

#[actix_web::test]
async fn erasure_scrubs_event_ids_embedded() {
    erasure_scrubs_event_ids(settings()).await;
}

#[actix_web::test]
async fn erasure_scrubs_event_ids_postgres() {
    let settings = postgres_settings();
    erasure_scrubs_event_ids(settings.clone()).await;
    drop_schema(&settings).await;
}

#[actix_web::test]
async fn restart_reproduces_answers_embedded() {
    restart_equivalence(settings()).await;
}

#[actix_web::test]
async fn restart_reproduces_answers_postgres() {
    let settings = postgres_settings();
    restart_equivalence(settings.clone()).await;
    drop_schema(&settings).await;
}

#[actix_web::test]
async fn erasure_leaves_no_trace_embedded() {
    erasure(settings()).await;
}

#[actix_web::test]
async fn erasure_leaves_no_trace_postgres() {
    let settings = postgres_settings();
    erasure(settings.clone()).await;
    drop_schema(&settings).await;
}

#[actix_web::test]
async fn async_durability_flushes_on_shutdown() {
    let mut cfg = settings();
    cfg.store.durability = momentum::store::Durability::Async;
    cfg.store.flush_interval_ms = 60_000; // only the shutdown flush writes the log
    let (items, events) = workload();
    let mut a = TestServer::start_with(cfg.clone());
    a.keep_store = true;
    load(&a, &items, &events).await;
    let before = observable(&a).await;
    drop(a);
    let b = TestServer::start_with(cfg);
    assert_eq!(before, observable(&b).await);
}

/// A server in a child process, so it can be killed with SIGKILL.
struct ChildServer {
    child: Child,
    base: String,
}

fn spawn_child(store_dir: &std::path::Path) -> ChildServer {
    let mut child = Command::new(env!("CARGO_BIN_EXE_momentum"))
        .env("MOMENTUM__SERVER__BIND", "127.0.0.1:0")
        .env("MOMENTUM__SERVER__WORKERS", "2")
        .env("MOMENTUM__STORE__PATH", store_dir)
        .env("MOMENTUM__STORE__DURABILITY", "sync")
        .env("MOMENTUM__SNAPSHOT__INTERVAL_SECS", "1")
        .env("MOMENTUM__RECOMMEND__POPULAR_REFRESH_MS", "0")
        .env("MOMENTUM__SECURITY__ADMIN_KEY", ADMIN_KEY)
        .env("MOMENTUM__LOGGING__FORMAT", "plain")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn momentum");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(addr) = line.split("addr=").nth(1) {
                    let addr = addr.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("child prints its address");
    ChildServer {
        child,
        base: format!("http://{addr}"),
    }
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..1000 {
        if let Ok(res) = client.get(format!("{base}/readyz")).send().await {
            if res.status().as_u16() == 200 {
                return;
            }
        }
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("child server not ready");
}

/// A user's recommendations and summary, as a child server answers them.
async fn user_view(client: &reqwest::Client, base: &str, user: &str) -> (Value, Value) {
    let get = |path: String| async move {
        client
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("request")
            .json::<Value>()
            .await
            .expect("json")
    };
    (
        get(format!("/v1/users/{user}/recommendations?n=5")).await,
        get(format!("/v1/users/{user}")).await,
    )
}

#[actix_web::test]
async fn sigkill_mid_stream_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().expect("temp dir");
    let client = reqwest::Client::new();
    let mut server = spawn_child(dir.path());
    wait_ready(&client, &server.base).await;

    // 30 batches of 50 events over 60 users and 25 items, each acknowledged.
    let batch = |b: u64| -> Value {
        json!((0..50u64).map(|k| {
            let n = b * 50 + k;
            let kind = ["view", "start", "checkin", "complete"][(n % 4) as usize];
            json!({"event_id": format!("c{n}"), "user_id": format!("u{}", (n * 7) % 60), "item_id": format!("i{}", (n * 13 + b) % 25), "kind": kind, "ts": 1_700_000_000_000u64 + n})
        }).collect::<Vec<_>>())
    };
    let mut acked = Vec::new();
    for b in 0..30 {
        let body = batch(b);
        let res = client
            .post(format!("{}/v1/events", server.base))
            .json(&body)
            .send()
            .await
            .expect("post");
        assert_eq!(res.status().as_u16(), 200);
        acked.push(body);
    }
    let sample: Vec<String> = (0..60).step_by(6).map(|u| format!("u{u}")).collect();
    rebuild_item_model(&client, &server.base).await;
    let mut before = Vec::new();
    for u in &sample {
        let (v, c) = user_view(&client, &server.base, u).await;
        before.push((v["items"].clone(), c["interactions"].clone()));
    }
    // An island of other users and items is in flight when the process dies; whether it
    // landed or not, it cannot change the sample's answers.
    let island = json!((0..2000u64).map(|n| json!({"event_id": format!("x{n}"), "user_id": format!("x{}", n % 300), "item_id": format!("y{}", n % 40), "kind": "view"})).collect::<Vec<_>>());
    let url = format!("{}/v1/events", server.base);
    let in_flight = actix_web::rt::spawn({
        let client = client.clone();
        async move {
            let _ = client.post(url).json(&island).send().await;
        }
    });
    actix_web::rt::time::sleep(Duration::from_millis(2)).await;
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    let _ = in_flight.await;

    let mut server = spawn_child(dir.path());
    wait_ready(&client, &server.base).await;
    rebuild_item_model(&client, &server.base).await;
    for (u, (items, interactions)) in sample.iter().zip(&before) {
        let (v, c) = user_view(&client, &server.base, u).await;
        assert_eq!(&c["interactions"], interactions, "{u}");
        assert_eq!(
            &v["items"], items,
            "{u}: recommendations changed across the crash"
        );
    }
    // Every acknowledged event is there: resending them all only finds duplicates.
    for body in &acked {
        let res: Value = client
            .post(format!("{}/v1/events", server.base))
            .json(body)
            .send()
            .await
            .expect("post")
            .json()
            .await
            .expect("json");
        assert_eq!(res["accepted"], 0, "{res}");
        assert_eq!(res["duplicates"], 50, "{res}");
    }
    server.child.kill().ok();
    server.child.wait().ok();
}

#[actix_web::test]
async fn retention_prunes_old_events_once_a_snapshot_covers_them() {
    let s = TestServer::start();
    let now = momentum_models::clock::now_ms() as u64;
    let day = momentum_models::clock::DAY_MS as u64;
    let events: Vec<Value> = (0..5u64)
        .map(|n| {
            let ts = if n < 3 { now - 200 * day + n } else { now - day + n };
            json!({"event_id": format!("r{n}"), "user_id": "ret", "item_id": format!("i{n}"), "kind": "view", "ts": ts})
        })
        .collect();
    assert_eq!(s.post_json("/v1/events", &json!(events)).await.0, 200);
    let store = s.state().journal.store().clone();
    assert_eq!(
        store.events_after(0, 100).await.expect("read").len(),
        5,
        "nothing pruned before a snapshot"
    );
    let snap = snapshot_now(&s).await;
    assert_eq!(snap["pruned_events"], 3, "{snap}");
    let left = store.events_after(0, 100).await.expect("read");
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|e| e.event.ts_ms as u64 > now - 2 * day));
    // The state itself still holds the pruned events' effect.
    assert_eq!(s.get("/v1/users/ret").await.1["interactions"], 5);
}

/// `sync` mode under concurrency: many small batches at once share group commits, every
/// acknowledged event is in the log exactly once, and a restart reproduces the answers.
async fn concurrent_sync_batches(settings: Settings) {
    assert!(matches!(
        settings.store.durability,
        momentum::store::Durability::Sync
    ));
    let mut a = TestServer::start_with(settings.clone());
    a.keep_store = true;
    let mut tasks = Vec::new();
    for t in 0..24 {
        let client = a.client.clone();
        let url = a.url("/v1/events");
        tasks.push(actix_web::rt::spawn(async move {
            let batch: Vec<Value> = (0..10)
                .map(|i| {
                    json!({"event_id": format!("g-{t}-{i}"), "user_id": format!("g{}", t % 6),
                           "item_id": format!("item-{}", (t + i) % 12), "kind": "click"})
                })
                .collect();
            let res = client.post(&url).json(&batch).send().await.expect("post");
            let status = res.status().as_u16();
            let body: Value = res.json().await.expect("json");
            (status, body["accepted"].as_u64().unwrap_or(0))
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        let (status, n) = t.await.expect("join");
        assert_eq!(status, 200);
        accepted += n;
    }
    assert_eq!(accepted, 240);
    let appended = a.metric("momentum_log_append_batch_events_sum").await;
    let appends = a.metric("momentum_log_append_batch_events_count").await;
    assert_eq!(appended, 240.0, "every acknowledged event logged once");
    assert!(
        (1.0..=24.0).contains(&appends),
        "{appends} appends for 24 batches"
    );
    let stored = a
        .state()
        .journal
        .store()
        .last_seq()
        .await
        .expect("last seq");
    assert_eq!(stored, 240);
    let before = observable(&a).await;
    drop(a);
    // No snapshot was written by hand: the restart replays the log (or the final snapshot).
    let b = TestServer::start_with(settings.clone());
    assert_eq!(before, observable(&b).await);
    // The retried batches are duplicates, not new events.
    let (status, body) = b
        .post_json(
            "/v1/events",
            &json!([{"event_id": "g-0-0", "user_id": "g0", "item_id": "item-0", "kind": "click"}]),
        )
        .await;
    assert_eq!(
        (status, body["duplicates"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    drop(b);
    drop_schema(&settings).await;
}

#[actix_web::test]
async fn concurrent_sync_batches_share_commits_embedded() {
    concurrent_sync_batches(settings()).await;
}

#[actix_web::test]
async fn concurrent_sync_batches_share_commits_postgres() {
    concurrent_sync_batches(postgres_settings()).await;
}
