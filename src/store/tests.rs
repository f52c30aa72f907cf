//! The shared store test suite: every `suite_*` function takes a [`StoreConfig`], opens the
//! store itself (so it can reopen it) and checks one contract. [`shared_suite!`] runs each of
//! them on both back-ends: embedded in a temporary directory, and PostgreSQL at
//! `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`) in a fresh schema that
//! is dropped afterwards. An unreachable PostgreSQL fails the tests; it never skips them.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use serde_json::json;

use super::*;

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.into())
}

pub(super) async fn on_embedded<F, Fut>(suite: F)
where
    F: FnOnce(StoreConfig) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    suite(StoreConfig {
        kind: StoreKind::Embedded,
        path: dir.path().join("data"),
        cache_mb: 16,
        ..StoreConfig::default()
    })
    .await;
}

pub(super) async fn on_postgres<F, Fut>(suite: F)
where
    F: FnOnce(StoreConfig) -> Fut,
    Fut: Future<Output = ()>,
{
    let url = database_url();
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL at DATABASE_URL is required for the store tests: {e:?}")
        });
    tokio::spawn(connection);
    let schema = format!("momentum_test_{:016x}", rand::random::<u64>());
    let cfg = StoreConfig {
        kind: StoreKind::Postgres,
        url: Some(url),
        schema: Some(schema.clone()),
        pool_size: 3,
        ..StoreConfig::default()
    };
    let outcome = AssertUnwindSafe(suite(cfg)).catch_unwind().await;
    admin
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// One `#[tokio::test]` per suite function and back-end.
macro_rules! shared_suite {
    ($($suite:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $suite() {
                    super::on_embedded(super::$suite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $suite() {
                    super::on_postgres(super::$suite).await;
                }
            )*
        }
    };
}
pub(super) use shared_suite;

shared_suite!(
    append_and_read,
    paging_covers_the_log_in_order,
    read_log_streams_pages_in_order,
    concurrent_appends_get_disjoint_contiguous_ranges,
    snapshots_put_latest_prune,
    prune_events_needs_both_conditions,
    erase_user_removes_every_trace,
    users_and_items,
    reopen_keeps_data_and_migrations_are_idempotent,
    altered_snapshots_fail_their_checksum,
);

impl Store {
    /// Changes (or deletes) one stored snapshot part behind the store's back.
    async fn alter_snapshot_part(&self, id: u64, key: &str, delete: bool) {
        match self {
            Store::Embedded(s) => s.alter_snapshot_part(id, key, delete).await.unwrap(),
            Store::Postgres(s) => s.alter_snapshot_part(id, key, delete).await.unwrap(),
        }
    }

    /// Puts rows for `user` in the tables later issues fill (training rows, interventions,
    /// churn scores), so erasure is checked against them too.
    async fn seed_later_tables(&self, user: &str) {
        match self {
            Store::Embedded(s) => s.seed_later_tables(user).await.unwrap(),
            Store::Postgres(s) => s.seed_later_tables(user).await.unwrap(),
        }
    }
}

fn event(user: &str, item: Option<&str>, kind: &str, ts_ms: i64) -> EventRecord {
    EventRecord {
        event_id: None,
        user_id: user.into(),
        item_id: item.map(Into::into),
        kind: kind.into(),
        value: None,
        ts_ms,
        recommendation_id: None,
    }
}

fn synthetic(n: usize, offset: usize) -> Vec<EventRecord> {
    (offset..offset + n)
        .map(|i| EventRecord {
            event_id: (i % 3 != 0).then(|| format!("ev-{i}")),
            user_id: format!("user-{}", i % 17),
            item_id: (i % 5 != 0).then(|| format!("item-{}", i % 23)),
            kind: ["view", "start", "complete", "rate", "app_open"][i % 5].into(),
            value: (i % 4 == 0).then_some(i as f32 / 8.0),
            ts_ms: 1_700_000_000_000 + i as i64,
            recommendation_id: (i % 7 == 0).then(|| format!("rec-{i}")),
        })
        .collect()
}

fn part(key: &str, user: Option<&str>, bytes: &[u8]) -> SnapshotPart {
    SnapshotPart {
        key: key.into(),
        user_id: user.map(Into::into),
        bytes: bytes.to_vec(),
    }
}

async fn all_events(store: &Store) -> Vec<StoredEvent> {
    store.events_after(0, usize::MAX).await.unwrap()
}

async fn append_and_read(cfg: StoreConfig) {
    let store = Store::open(&cfg).await.unwrap();
    assert_eq!(store.last_seq().await.unwrap(), 0);
    let empty = store.append_events(&[]).await.unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty, SeqRange { first: 1, last: 0 });

    let first = vec![
        EventRecord {
            event_id: Some("e-1".into()),
            user_id: "ålice".into(),
            item_id: Some("run-5k".into()),
            kind: "rate".into(),
            value: Some(4.5),
            ts_ms: 1_700_000_000_123,
            recommendation_id: Some("rec-9".into()),
        },
        event("bob", None, "app_open", -5),
        event("bob", Some("read"), "view", 0),
    ];
    let second = vec![
        event("carol", Some("x"), "like", 7),
        event("ålice", Some("y"), "start", 8),
    ];
    let a = store.append_events(&first).await.unwrap();
    let b = store.append_events(&second).await.unwrap();
    assert_eq!(a, SeqRange { first: 1, last: 3 });
    assert_eq!(b, SeqRange { first: 4, last: 5 });
    assert_eq!(a.len() + b.len(), 5);
    assert_eq!(store.last_seq().await.unwrap(), 5);

    let got = all_events(&store).await;
    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    let events: Vec<EventRecord> = got.into_iter().map(|e| e.event).collect();
    assert_eq!(events, [first, second].concat());

    let tail = store.events_after(3, 100).await.unwrap();
    assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    assert!(store.events_after(5, 100).await.unwrap().is_empty());
    assert!(store.events_after(u64::MAX, 100).await.unwrap().is_empty());
    assert!(store.events_after(0, 0).await.unwrap().is_empty());
    assert_eq!(store.events_after(0, 2).await.unwrap().len(), 2);
}

async fn paging_covers_the_log_in_order(cfg: StoreConfig) {
    let store = Store::open(&cfg).await.unwrap();
    let mut expected = Vec::new();
    for (offset, n) in [(0, 1000), (1000, 1), (1001, 999), (2000, 500)] {
        let batch = synthetic(n, offset);
        let range = store.append_events(&batch).await.unwrap();
        assert_eq!(range.first, offset as u64 + 1);
        assert_eq!(range.len(), n as u64);
        expected.extend(batch);
    }
    let mut got = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events_after(after, 333).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 333);
        after = page.last().unwrap().seq;
        got.extend(page);
    }
    assert_eq!(got.len(), 2500);
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "seqs are contiguous");
    }
    let events: Vec<EventRecord> = got.into_iter().map(|e| e.event).collect();
    assert_eq!(events, expected);
}

async fn read_log_streams_pages_in_order(cfg: StoreConfig) {
    let store = Store::open(&cfg).await.unwrap();
    let mut reader = store.read_log(0, 10);
    assert!(
        reader.next_page().await.is_none(),
        "an empty log has no pages"
    );

    let expected = synthetic(2_500, 0);
    for chunk in expected.chunks(700) {
        store.append_events(chunk).await.unwrap();
    }
    for (after, page_size) in [(0, 300), (1_000, 1), (2_499, 300), (2_500, 7), (0, 5_000)] {
        let mut reader = store.read_log(after, page_size);
        let mut got = Vec::new();
        while let Some(page) = reader.next_page().await {
            let page = page.unwrap();
            assert!(!page.is_empty() && page.len() <= page_size);
            got.extend(page);
        }
        let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (after + 1..=2_500).collect::<Vec<_>>());
        let events: Vec<EventRecord> = got.into_iter().map(|e| e.event).collect();
        assert_eq!(events, expected[after as usize..]);
    }

    // A reader dropped half-way stops its task; the store carries on.
    let mut reader = store.read_log(0, 100);
    assert_eq!(reader.next_page().await.unwrap().unwrap().len(), 100);
    drop(reader);
    for _ in 0..3 {
        let range = store.append_events(&synthetic(1, 0)).await.unwrap();
        assert_eq!(
            store.events_after(range.first - 1, 10).await.unwrap().len(),
            1
        );
    }
}

async fn concurrent_appends_get_disjoint_contiguous_ranges(cfg: StoreConfig) {
    let store = Store::open(&cfg).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for b in 0..10 {
                let batch = synthetic(50, (t * 10 + b) * 50);
                let range = store.append_events(&batch).await.unwrap();
                out.push((range, batch));
            }
            out
        }));
    }
    let mut appended = Vec::new();
    for task in tasks {
        appended.extend(task.await.unwrap());
    }
    appended.sort_by_key(|(range, _)| range.first);
    let log = all_events(&store).await;
    assert_eq!(log.len(), 8 * 10 * 50);
    let mut next = 1;
    for (range, batch) in appended {
        assert_eq!(range.first, next, "no gaps or overlaps between batches");
        assert_eq!(range.len(), 50);
        let stored: Vec<EventRecord> = log[(range.first - 1) as usize..range.last as usize]
            .iter()
            .map(|e| e.event.clone())
            .collect();
        assert_eq!(stored, batch, "a batch's events sit at its own seqs");
        next = range.last + 1;
    }
    assert_eq!(store.last_seq().await.unwrap(), 4000);
}

async fn snapshots_put_latest_prune(cfg: StoreConfig) {
    let store = Store::open(&cfg).await.unwrap();
    assert!(store.latest_snapshot().await.unwrap().is_none());
    assert_eq!(store.prune_snapshots(3).await.unwrap(), 0);

    let meta1 = SnapshotMeta {
        id: 1,
        covers_seq: 10,
        created_ms: 1000,
    };
    let parts1 = vec![
        part("shard-0", None, b"zero"),
        part("user:u1", Some("u1"), b""),
    ];
    store.put_snapshot(&meta1, parts1).await.unwrap();
    let meta2 = SnapshotMeta {
        id: 2,
        covers_seq: 20,
        created_ms: 2000,
    };
    let big = vec![7u8; 300_000];
    // Given out of key order: parts come back ordered by key.
    let parts2 = vec![
        part("user:u2", Some("u2"), b"two"),
        part("catalogue", None, &big),
        part("user:u1", Some("u1"), b"one"),
    ];
    store.put_snapshot(&meta2, parts2.clone()).await.unwrap();

    let (meta, parts) = store.latest_snapshot().await.unwrap().unwrap();
    assert_eq!(meta, meta2);
    let keys: Vec<&str> = parts.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["catalogue", "user:u1", "user:u2"]);
    assert_eq!(parts[0], parts2[1]);
    assert_eq!(parts[1], parts2[2]);
    assert_eq!(parts[2], parts2[0]);
    assert_eq!(store.count_user_rows("u1").await.unwrap().snapshot_parts, 2);

    // An existing id is refused and changes nothing.
    let err = store.put_snapshot(&meta1, vec![]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    // All or nothing: a duplicate part key aborts the whole snapshot.
    let meta3 = SnapshotMeta {
        id: 3,
        covers_seq: 30,
        created_ms: 3000,
    };
    let dup = vec![part("a", Some("u3"), b"1"), part("a", Some("u3"), b"2")];
    let err = store.put_snapshot(&meta3, dup).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(store.latest_snapshot().await.unwrap().unwrap().0, meta2);
    assert_eq!(store.count_user_rows("u3").await.unwrap().total(), 0);

    // A snapshot with no parts is a valid snapshot.
    let meta4 = SnapshotMeta {
        id: 4,
        covers_seq: 40,
        created_ms: 4000,
    };
    store.put_snapshot(&meta4, vec![]).await.unwrap();
    assert_eq!(
        store.latest_snapshot().await.unwrap().unwrap(),
        (meta4, vec![])
    );

    assert_eq!(store.prune_snapshots(2).await.unwrap(), 1);
    assert_eq!(store.count_user_rows("u1").await.unwrap().snapshot_parts, 1);
    assert_eq!(store.prune_snapshots(2).await.unwrap(), 0);
    assert_eq!(store.prune_snapshots(1).await.unwrap(), 1);
    assert_eq!(store.count_user_rows("u1").await.unwrap().snapshot_parts, 0);
    assert_eq!(store.count_user_rows("u2").await.unwrap().snapshot_parts, 0);
    assert_eq!(store.latest_snapshot().await.unwrap().unwrap().0, meta4);
    assert_eq!(store.prune_snapshots(0).await.unwrap(), 1);
    assert!(store.latest_snapshot().await.unwrap().is_none());
}

async fn prune_events_needs_both_conditions(cfg: StoreConfig) {
    let store = Store::open(&cfg).await.unwrap();
    store
        .append_events(&[
            event("a", Some("i"), "view", 100),  // 1: old, covered
            event("b", Some("i"), "view", 5000), // 2: new, covered
            event("a", Some("i"), "view", 999),  // 3: old, covered
            event("c", None, "app_open", 100),   // 4: old, not covered
        ])
        .await
        .unwrap();
    assert_eq!(store.prune_events(1000, 3).await.unwrap(), 2);
    let left: Vec<u64> = all_events(&store).await.iter().map(|e| e.seq).collect();
    assert_eq!(left, [2, 4]);
    assert_eq!(store.count_user_rows("a").await.unwrap().events, 0);
    assert_eq!(store.count_user_rows("c").await.unwrap().events, 1);
    // The cut-off is exclusive and pruning again finds nothing.
    assert_eq!(store.prune_events(100, 4).await.unwrap(), 0);

    // Sequence numbers are never reused, even once the log is empty.
    assert_eq!(store.prune_events(i64::MAX, u64::MAX).await.unwrap(), 2);
    assert!(all_events(&store).await.is_empty());
    assert_eq!(store.last_seq().await.unwrap(), 4);
    let next = store
        .append_events(&[event("d", None, "app_open", 1)])
        .await
        .unwrap();
    assert_eq!(next, SeqRange { first: 5, last: 5 });

    // A large prune (more than one embedded chunk) leaves exactly the newer events.
    let batch: Vec<EventRecord> = (0..3_600)
        .map(|i| event(&format!("u{}", i % 100), None, "view", i % 3))
        .collect();
    store.append_events(&batch).await.unwrap();
    // Seq 5 (ts 1) goes too.
    let removed = store.prune_events(2, u64::MAX).await.unwrap();
    assert_eq!(removed, 2_401);
    let left = all_events(&store).await;
    assert_eq!(left.len(), 1_200);
    assert!(left.iter().all(|e| e.event.ts_ms == 2));
}

async fn erase_user_removes_every_trace(cfg: StoreConfig) {
    let store = Store::open(&cfg).await.unwrap();
    for user in ["alice", "bob"] {
        store
            .put_user(user, &json!({ "locale": "en", "name": user }))
            .await
            .unwrap();
        store.seed_later_tables(user).await;
    }
    store
        .append_events(&[
            event("alice", Some("i1"), "view", 1),
            event("bob", Some("i1"), "view", 2),
            event("alice", Some("i2"), "complete", 3),
        ])
        .await
        .unwrap();
    store
        .append_events(&[event("alice", None, "app_open", 4)])
        .await
        .unwrap();
    for id in 1..=2 {
        store
            .put_snapshot(
                &SnapshotMeta {
                    id,
                    covers_seq: 4,
                    created_ms: 10,
                },
                vec![
                    part("shared", None, b"catalogue"),
                    part("user:alice", Some("alice"), b"a"),
                    part("user:bob", Some("bob"), b"b"),
                ],
            )
            .await
            .unwrap();
    }
    let alice = store.count_user_rows("alice").await.unwrap();
    assert_eq!(
        alice,
        UserFootprint {
            events: 3,
            snapshot_parts: 2,
            users: 1,
            training_rows: 2,
            interventions: 1,
            churn_scores: 1,
        }
    );
    let bob_before = store.count_user_rows("bob").await.unwrap();

    let report = store.erase_user("alice").await.unwrap();
    assert_eq!(report.removed, alice);
    assert_eq!(store.count_user_rows("alice").await.unwrap().total(), 0);
    assert_eq!(store.count_user_rows("bob").await.unwrap(), bob_before);

    let log = all_events(&store).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].event.user_id, "bob");
    assert_eq!(store.last_seq().await.unwrap(), 4);
    let (_, parts) = store.latest_snapshot().await.unwrap().unwrap();
    let keys: Vec<&str> = parts.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["shared", "user:bob"]);
    let users: Vec<String> = store
        .get_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.user_id)
        .collect();
    assert_eq!(users, ["bob"]);

    // Erasing again, or erasing a stranger, finds nothing.
    assert_eq!(store.erase_user("alice").await.unwrap().removed.total(), 0);
    assert_eq!(store.erase_user("nobody").await.unwrap().removed.total(), 0);
    // Pruning the snapshots later keeps the index consistent.
    assert_eq!(store.prune_snapshots(0).await.unwrap(), 2);
    assert_eq!(
        store.count_user_rows("bob").await.unwrap().snapshot_parts,
        0
    );
}

async fn users_and_items(cfg: StoreConfig) {
    let store = Store::open(&cfg).await.unwrap();
    assert!(store.get_users().await.unwrap().is_empty());
    assert!(store.get_items().await.unwrap().is_empty());

    store
        .put_user("zed", &json!({"locale": "de"}))
        .await
        .unwrap();
    store
        .put_user("amy", &json!({"locale": "en"}))
        .await
        .unwrap();
    store
        .put_user(
            "zed",
            &json!({"locale": "fr", "preferences": {"tags": ["run"]}}),
        )
        .await
        .unwrap();
    let users = store.get_users().await.unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(users[0].user_id, "amy");
    assert_eq!(users[1].user_id, "zed");
    assert_eq!(
        users[1].profile,
        json!({"locale": "fr", "preferences": {"tags": ["run"]}})
    );
    assert!(users[1].updated_ms > 0);

    let run = json!({"title": "Run a 5k", "tags": ["fitness"], "difficulty": 0.4});
    store.put_item("run-5k", &run).await.unwrap();
    store
        .put_item("read", &json!({"title": "Read"}))
        .await
        .unwrap();
    store.delete_item("read").await.unwrap();
    store.delete_item("ghost").await.unwrap();
    let items = store.get_items().await.unwrap();
    let summary: Vec<(&str, bool)> = items
        .iter()
        .map(|i| (i.item_id.as_str(), i.deleted))
        .collect();
    assert_eq!(
        summary,
        [("ghost", true), ("read", true), ("run-5k", false)]
    );
    assert_eq!(items[0].meta, serde_json::Value::Null);
    assert_eq!(
        items[1].meta,
        json!({"title": "Read"}),
        "a tombstone keeps the metadata"
    );
    assert_eq!(items[2].meta, run);

    // Putting a deleted item again brings it back.
    store
        .put_item("read", &json!({"title": "Read more"}))
        .await
        .unwrap();
    let items = store.get_items().await.unwrap();
    assert!(!items[1].deleted);
    assert_eq!(items[1].meta, json!({"title": "Read more"}));
}

async fn reopen_keeps_data_and_migrations_are_idempotent(cfg: StoreConfig) {
    let batch = synthetic(100, 0);
    let snapshot = (
        SnapshotMeta {
            id: 7,
            covers_seq: 100,
            created_ms: 5,
        },
        vec![
            part("shard-0", None, b"state"),
            part("u", Some("user-1"), b"x"),
        ],
    );
    {
        let store = Store::open(&cfg).await.unwrap();
        store.append_events(&batch).await.unwrap();
        store
            .put_snapshot(&snapshot.0, snapshot.1.clone())
            .await
            .unwrap();
        store.put_user("user-1", &json!({"a": 1})).await.unwrap();
        store.put_item("item-1", &json!({"b": 2})).await.unwrap();
    }
    for _ in 0..2 {
        let store = Store::open(&cfg).await.unwrap();
        assert_eq!(store.last_seq().await.unwrap(), 100);
        let events: Vec<EventRecord> = all_events(&store)
            .await
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(events, batch);
        assert_eq!(
            store.latest_snapshot().await.unwrap(),
            Some(snapshot.clone())
        );
        assert_eq!(store.get_users().await.unwrap().len(), 1);
        assert_eq!(store.get_items().await.unwrap().len(), 1);
    }
    let store = Store::open(&cfg).await.unwrap();
    let next = store.append_events(&synthetic(1, 100)).await.unwrap();
    assert_eq!(
        next,
        SeqRange {
            first: 101,
            last: 101
        }
    );
}

async fn altered_snapshots_fail_their_checksum(cfg: StoreConfig) {
    let store = Store::open(&cfg).await.unwrap();
    let meta = SnapshotMeta {
        id: 3,
        covers_seq: 0,
        created_ms: 1,
    };
    let parts = vec![part("a", None, b"state-a"), part("u:1", Some("1"), b"row")];
    store.put_snapshot(&meta, parts.clone()).await.unwrap();
    store.verify_snapshot(3).await.unwrap();
    assert_eq!(store.latest_snapshot().await.unwrap(), Some((meta, parts)));
    for change in ["bytes", "missing"] {
        let id = if change == "bytes" { 4 } else { 5 };
        let meta = SnapshotMeta { id, ..meta };
        store
            .put_snapshot(
                &meta,
                vec![part("a", None, b"state-a"), part("b", None, b"b")],
            )
            .await
            .unwrap();
        store
            .alter_snapshot_part(id, "b", change == "missing")
            .await;
        let err = store.latest_snapshot().await.unwrap_err();
        assert!(
            matches!(err, StoreError::Damaged { .. }),
            "{change}: {err:?}"
        );
        assert!(err.to_string().contains("checksum"), "{err}");
        let err = store.verify_snapshot(id).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Damaged { .. }),
            "{change}: {err:?}"
        );
    }
}

#[tokio::test]
async fn embedded_store_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        path: dir.path().to_path_buf(),
        ..StoreConfig::default()
    };
    let _first = Store::open(&cfg).await.unwrap();
    let err = Store::open(&StoreConfig {
        lock_wait_secs: 0,
        ..cfg
    })
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("stop it first"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_opens_migrate_once_and_one_becomes_the_writer() {
    on_postgres(|cfg| async move {
        let cfg = StoreConfig {
            lock_wait_secs: 0,
            ..cfg
        };
        let (a, b, c) = tokio::join!(Store::open(&cfg), Store::open(&cfg), Store::open(&cfg));
        let mut opened: Vec<Store> = Vec::new();
        for result in [a, b, c] {
            match result {
                Ok(store) => opened.push(store),
                Err(StoreError::Locked { message }) => {
                    assert!(
                        message.contains("another Momentum server holds"),
                        "{message}"
                    );
                }
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(opened.len(), 1, "exactly one writer");
        opened[0].append_events(&synthetic(3, 0)).await.unwrap();
        assert_eq!(opened[0].last_seq().await.unwrap(), 3);
        // Once the writer is gone, the next one opens (waiting for the release).
        drop(opened);
        let next = Store::open(&StoreConfig {
            lock_wait_secs: 10,
            ..cfg
        })
        .await
        .unwrap();
        assert_eq!(next.last_seq().await.unwrap(), 3);
    })
    .await;
}

#[tokio::test]
async fn embedded_store_refuses_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(crate::store::embedded::FILE_NAME), b"").unwrap();
    let cfg = StoreConfig {
        path: dir.path().to_path_buf(),
        ..StoreConfig::default()
    };
    let err = Store::open(&cfg).await.unwrap_err();
    assert!(matches!(err, StoreError::Damaged { .. }), "{err:?}");
    assert!(err.to_string().contains("momentum store recover"), "{err}");
}

#[tokio::test]
async fn unreachable_postgres_is_an_error() {
    let cfg = StoreConfig {
        kind: StoreKind::Postgres,
        url: Some("postgres://nobody:secret-password@127.0.0.1:1/none".into()),
        connect_timeout_secs: 1,
        ..StoreConfig::default()
    };
    let err = Store::open(&cfg).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, StoreError::Db { .. }), "{message}");
    assert!(!message.contains("secret-password"), "{message}");
}

#[tokio::test]
async fn bad_schema_names_are_refused() {
    let cfg = StoreConfig {
        kind: StoreKind::Postgres,
        url: Some(database_url()),
        schema: Some("x; DROP TABLE events".into()),
        ..StoreConfig::default()
    };
    let err = Store::open(&cfg).await.unwrap_err();
    assert!(matches!(err, StoreError::Config { .. }), "{err:?}");
}

#[test]
fn config_defaults_parse_and_redaction() {
    let cfg: StoreConfig = serde_json::from_value(json!({})).unwrap();
    assert_eq!(cfg, StoreConfig::default());
    assert_eq!(cfg.kind, StoreKind::Embedded);
    assert_eq!(cfg.path, std::path::PathBuf::from("data"));
    assert_eq!(cfg.durability, Durability::Sync);
    assert_eq!(cfg.retention_ms(), 180 * momentum_models::clock::DAY_MS);

    let cfg: StoreConfig = serde_json::from_value(json!({
        "kind": "postgres",
        "url": "postgres://u:hunter2@db/momentum",
        "durability": "async",
    }))
    .unwrap();
    assert_eq!(cfg.kind, StoreKind::Postgres);
    assert_eq!(cfg.durability, Durability::Async);
    assert_eq!(
        cfg.resolved_url().unwrap(),
        "postgres://u:hunter2@db/momentum"
    );
    assert!(!format!("{cfg:?}").contains("hunter2"));

    assert!(serde_json::from_value::<StoreConfig>(json!({"kinds": "embedded"})).is_err());
    assert!(serde_json::from_value::<StoreConfig>(json!({"kind": "sqlite"})).is_err());
}
