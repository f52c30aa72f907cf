//! The uncached recommendation path in process, without HTTP: ml-100k's ratings go through one
//! shard and the catalogue, its items' titles and genres into the content index, the learned
//! item model is built, and then lists of 10 are computed with the list cache off for the
//! users in turn (the work behind `momentum-load recommend` with `cache_ttl_secs = 0`); and the
//! similar-users pass alone, which an uncached list also runs after any change to the index;
//! and the write path once the mixed load has made histories long (one user's batch of 10
//! events through the shard and the catalogue's co-occurrence updates).
//!
//!     cargo bench -p momentum-actors --bench recommend
//!
//! Reads `$MOMENTUM_DATA/ml-100k` (default: `../shared/data/ml-100k` beside the repository).

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use momentum_actors::catalog::{apply_batch, popular_items, tokenizer_for};
use momentum_actors::index::{Index, ItemMeta};
use momentum_actors::messages::InternedEvent;
use momentum_actors::metrics::ActorMetrics;
use momentum_actors::recommend::{neighbours, Scratch};
use momentum_actors::shard::ShardState;
use momentum_actors::EngineConfig;
use momentum_models::events::EventKind;

/// The server's allocator, so allocation costs what it costs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn data_dir() -> PathBuf {
    std::env::var_os("MOMENTUM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
        .join("ml-100k")
}

/// Comma-separated rows of a CSV file with a header and no quoted commas in the columns read.
fn rows(path: &PathBuf) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (set MOMENTUM_DATA)", path.display()));
    text.lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect()
}

/// ml-100k loaded into one shard, the catalogue's index, the content index and the learned
/// item model; returns the shard and the users in external-id order.
fn loaded() -> (ShardState, Arc<Index>, Vec<u32>) {
    let mut config = EngineConfig::default();
    config.recommend.cache_ttl_secs = 0;
    let config = Arc::new(config);
    let index = Arc::new(Index::new(100_000, 100_000));
    let mut shard = ShardState::new(index.clone(), config.clone(), ActorMetrics::unregistered());

    // Items: titles and genres (items.csv: id, title, year, genres separated by '|'). Titles
    // may hold commas, so the genres are the last column and the title everything between.
    let tokenizer = tokenizer_for(&config);
    for row in rows(&data_dir().join("items.csv")) {
        let item = index.items.intern(&row[0]).expect("room");
        let tags: Vec<String> = row[row.len() - 1]
            .split('|')
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect();
        let meta = ItemMeta {
            title: row[1..row.len() - 2].join(","),
            tags,
            ..ItemMeta::default()
        };
        let terms = tokenizer.item_terms(&meta.title, &meta.description, &meta.tags);
        index.content.write().upsert_item(item, &terms);
        index.item_meta.insert(item, Arc::new(meta));
    }

    // Ratings, in batches of 1,000 as the load generator posts them.
    let ratings = rows(&data_dir().join("ratings.csv"));
    for (b, batch) in ratings.chunks(1000).enumerate() {
        let events: Vec<InternedEvent> = batch
            .iter()
            .enumerate()
            .map(|(k, r)| InternedEvent {
                index: k,
                event_id: None,
                user: index.users.intern(&r[0]).expect("room"),
                item: Some(index.items.intern(&r[1]).expect("room")),
                kind: EventKind::Rate,
                value: Some(r[2].parse().expect("rating")),
                ts_ms: r[3].parse::<i64>().expect("timestamp") * 1000 + (b * 1000 + k) as i64,
            })
            .collect();
        let (_, deltas) = shard.record(events);
        apply_batch(&index, &deltas);
    }
    *index.popular.write() = Arc::new(popular_items(&index, config.recommend.popular_size));
    let model = momentum_actors::ease::build(&index, &config.ease, 1, 0, || {}).expect("model");
    *index.ease.write() = Arc::new(model);

    let mut users: Vec<(Arc<str>, u32)> = ratings
        .iter()
        .map(|r| index.users.intern(&r[0]).expect("room"))
        .map(|u| (index.users.name(u).expect("named"), u))
        .collect();
    users.sort();
    users.dedup();
    let users: Vec<u32> = users.into_iter().map(|(_, u)| u).collect();
    // One list each first, as the server's steady state has: the neighbour lists are cached
    // until the index changes.
    for &user in &users {
        shard.recommend(user, 10, None);
    }
    (shard, index, users)
}

fn uncached_lists(c: &mut Criterion) {
    let (mut shard, index, users) = loaded();
    let mut in_turn = users.iter().copied().cycle();
    let mut group = c.benchmark_group("recommend");
    group.throughput(Throughput::Elements(1));
    group.bench_function("uncached_list_of_10_ml100k", |b| {
        b.iter(|| {
            let user = in_turn.next().expect("users");
            let recs = shard.recommend(user, 10, None);
            assert!(!recs.cached && recs.items.len() == 10);
            recs
        })
    });
    // The neighbour list alone, as computed for an uncached list whenever the index changed
    // since the user's last one (under a stream of events, nearly every time), searched from
    // the vector the server searches from.
    let mut scratch = Scratch::default();
    let k = EngineConfig::default().recommend.user_neighbours;
    group.bench_function("neighbours_ml100k", |b| {
        b.iter(|| {
            let user = in_turn.next().expect("users");
            let vector = shard.recent_vector_of(user);
            let list = neighbours(&index, user, &vector, k, &mut scratch);
            assert_eq!(list.len(), k);
            list
        })
    });
    group.finish();
}

/// The events of one user as the mixed load posts them: 10 `view`s on items drawn uniformly.
fn mixed_batch(user: u32, items: &[u32], seed: &mut u64, ts: i64) -> Vec<InternedEvent> {
    (0..10)
        .map(|k| {
            // xorshift: the same sequence on every run.
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            InternedEvent {
                index: k,
                event_id: None,
                user,
                item: Some(items[(*seed % items.len() as u64) as usize]),
                kind: EventKind::View,
                value: None,
                ts_ms: ts,
            }
        })
        .collect()
}

/// The write path once histories are long: ml-100k, then 450,000 more `view`s in batches of 10
/// per user on uniformly drawn items (what 60 s of `momentum-load mixed --rate 3000` sends),
/// which takes the average history from 106 to about 500 items; then one more such batch
/// through the shard and the catalogue per iteration.
fn events_on_long_histories(c: &mut Criterion) {
    let (mut shard, index, users) = loaded();
    let items: Vec<u32> = (0..index.items.slots() as u32).collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut ts = 2_000_000_000_000_i64;
    let mut in_turn = users.iter().copied().cycle();
    for _ in 0..45_000 {
        let user = in_turn.next().expect("users");
        let (_, deltas) = shard.record(mixed_batch(user, &items, &mut seed, ts));
        apply_batch(&index, &deltas);
        ts += 1;
    }
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(10));
    group.bench_function("batch_of_10_long_histories", |b| {
        b.iter(|| {
            let user = in_turn.next().expect("users");
            ts += 1;
            let (_, deltas) = shard.record(mixed_batch(user, &items, &mut seed, ts));
            apply_batch(&index, &deltas);
            deltas.len()
        })
    });
    group.finish();
}

criterion_group!(benches, uncached_lists, events_on_long_histories);
criterion_main!(benches);
