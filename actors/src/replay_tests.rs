//! Replay-equals-batch: random event streams go through the incremental shard and catalogue
//! state; the similarity caches must equal a from-scratch computation over the same events.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;

use crate::catalog::{apply_batch, similar_items};
use crate::config::EngineConfig;
use crate::engine::shard_for;
use crate::index::Index;
use crate::messages::InternedEvent;
use crate::metrics::ActorMetrics;
use crate::shard::ShardState;
use momentum_models::events::{EventKind, Interaction};
use momentum_models::similarity::{batch, Neighbour};

const SHARDS: usize = 3;

fn event_strategy(users: u32, items: u32) -> impl Strategy<Value = (u32, u32, EventKind, f32)> {
    (
        0..users,
        0..items,
        prop::sample::select(EventKind::ALL.to_vec()),
        0.0f32..5.0,
    )
}

struct Harness {
    index: Arc<Index>,
    shards: Vec<ShardState>,
}

impl Harness {
    fn new(config: EngineConfig) -> Self {
        let config = Arc::new(config);
        let index = Arc::new(Index::new(1000, 1000));
        let shards = (0..SHARDS)
            .map(|_| ShardState::new(index.clone(), config.clone(), ActorMetrics::unregistered()))
            .collect();
        Harness { index, shards }
    }

    fn feed(&mut self, events: &[(u32, u32, EventKind, f32)], ts0: i64) {
        let mut per_shard: Vec<Vec<InternedEvent>> = vec![Vec::new(); SHARDS];
        for (n, &(u, i, kind, value)) in events.iter().enumerate() {
            let user_name = format!("u{u}");
            let user = self.index.users.intern(&user_name).expect("room");
            let item = self.index.items.intern(&format!("i{i}")).expect("room");
            per_shard[shard_for(&user_name, SHARDS)].push(InternedEvent {
                index: n,
                event_id: None,
                user,
                item: kind.needs_item().then_some(item),
                kind,
                value: (kind == EventKind::Rate).then_some(value.round()),
                ts_ms: ts0 + n as i64,
            });
        }
        for (shard, events) in self.shards.iter_mut().zip(per_shard) {
            let (_, deltas) = shard.record(events);
            apply_batch(&self.index, &deltas);
        }
    }

    fn similar_users(&mut self, user: u32) -> Arc<Vec<Neighbour>> {
        let name = self.index.users.name(user).expect("known");
        self.shards[shard_for(&name, SHARDS)].similar_users(user)
    }
}

/// Final weights computed independently of the incremental path.
fn batch_matrix(
    index: &Index,
    events: &[(u32, u32, EventKind, f32)],
    config: &EngineConfig,
) -> batch::Matrix {
    let mut cells: HashMap<(u32, u32), Interaction> = HashMap::new();
    for (n, &(u, i, kind, value)) in events.iter().enumerate() {
        if !kind.needs_item() {
            continue;
        }
        let user = index.users.get(&format!("u{u}")).expect("interned");
        let item = index.items.get(&format!("i{i}")).expect("interned");
        let v = (kind == EventKind::Rate).then_some(value.round());
        cells
            .entry((user, item))
            .or_default()
            .apply(kind, v, n as i64, &config.weights);
    }
    let mut m = batch::Matrix::new();
    for ((u, i), cell) in cells {
        let w = cell.weight(&config.weights);
        if w > 0.0 {
            m.entry(u).or_default().insert(i, w);
        }
    }
    m
}

fn assert_same(got: &[Neighbour], want: &[Neighbour], what: &str) {
    let got_ids: Vec<u32> = got.iter().map(|n| n.0).collect();
    let want_ids: Vec<u32> = want.iter().map(|n| n.0).collect();
    assert_eq!(got_ids, want_ids, "{what}: ids differ");
    for (g, w) in got.iter().zip(want) {
        assert!((g.1 - w.1).abs() < 1e-6, "{what}: {} vs {}", g.1, w.1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn incremental_caches_equal_batch(
        events in prop::collection::vec(event_strategy(12, 15), 1..300),
        chunk in 1usize..40,
    ) {
        let config = EngineConfig::default();
        let mut h = Harness::new(config.clone());
        let mut fed = Vec::new();
        for (c, part) in events.chunks(chunk).enumerate() {
            h.feed(part, fed.len() as i64);
            fed.extend_from_slice(part);
            // Read caches mid-stream so stale entries would be caught at the end.
            if c % 2 == 0 {
                let _ = h.similar_users(0);
            }
        }
        let m = batch_matrix(&h.index, &fed, &config);
        let k = config.recommend.similar_k;
        let want_items = batch::similar_items_by(&m, k, &h.index.item_order());
        for item in 0..h.index.items.slots() as u32 {
            let got = similar_items(&h.index, item, k);
            let want = want_items.get(&item).cloned().unwrap_or_default();
            assert_same(&got, &want, &format!("item {item}"));
        }
        let want_users = batch::similar_users_by(&m, k, &h.index.user_order());
        for user in 0..h.index.users.slots() as u32 {
            let got = h.similar_users(user);
            let want = want_users.get(&user).cloned().unwrap_or_default();
            assert_same(&got, &want, &format!("user {user}"));
        }
        // Co-occurrence counts equal the number of users sharing both items.
        for (item, stats) in h.index.item_table.read().iter() {
            for c in stats.cooc.entries() {
                let shared = m.values().filter(|row| row.contains_key(&item) && row.contains_key(&c.item)).count();
                prop_assert_eq!(c.users as usize, shared);
            }
        }
    }
}

/// A neighbour list in external ids with exact bits, so two engines with different dense ids
/// can be compared byte for byte.
fn named(index: &Index, list: &[Neighbour], users: bool) -> Vec<(String, u64)> {
    list.iter()
        .map(|&(id, sim)| {
            let name = if users {
                index.users.name(id)
            } else {
                index.items.name(id)
            };
            (name.expect("named").to_string(), sim.to_bits())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn snapshot_restore_reproduces_caches_bit_for_bit(
        events in prop::collection::vec(event_strategy(10, 12), 1..200),
        rate in prop::collection::vec((0u32..10, 0u32..12, 0u32..=10), 0..40),
    ) {
        let config = EngineConfig::default();
        let mut live = Harness::new(config.clone());
        live.feed(&events, 0);
        // Ratings with fractions exercise the weight quantisation.
        let rated: Vec<_> = rate.iter().map(|&(u, i, v)| (u, i, EventKind::Rate, v as f32 * 0.37)).collect();
        live.feed(&rated, 1000);
        let mut restored = Harness::new(config.clone());
        for (slot, name) in live.index.items.slots_snapshot().iter().enumerate() {
            if let Some(name) = name {
                prop_assert!(restored.index.items.restore(name, slot as u32));
            }
        }
        for (from, to) in live.shards.iter().zip(restored.shards.iter_mut()) {
            let (users, ids) = from.export();
            let (deltas, refused) = to.import(users, ids);
            prop_assert_eq!(refused, 0);
            apply_batch(&restored.index, &deltas);
        }
        for item in 0..live.index.items.slots() as u32 {
            let name = live.index.items.name(item).expect("named");
            let Some(other) = restored.index.items.get(&name) else {
                // Items only ever seen with zero weight have no row anywhere.
                prop_assert!(similar_items(&live.index, item, 10).is_empty());
                continue;
            };
            prop_assert_eq!(
                named(&live.index, &similar_items(&live.index, item, 10), false),
                named(&restored.index, &similar_items(&restored.index, other, 10), false)
            );
        }
        for user in 0..live.index.users.slots() as u32 {
            let name = live.index.users.name(user).expect("named");
            let other = restored.index.users.get(&name).expect("restored user");
            let a = live.similar_users(user);
            let b = restored.similar_users(other);
            prop_assert_eq!(named(&live.index, &a, true), named(&restored.index, &b, true));
            let shard = shard_for(&name, SHARDS);
            let ra = live.shards[shard].recommend(user, 10, None);
            let rb = restored.shards[shard].recommend(other, 10, None);
            let flat = |index: &Index, r: &crate::recommend::Recommendations| -> Vec<(String, u64, u64)> {
                r.items.iter().map(|s| (index.items.name(s.item).expect("named").to_string(), s.score.to_bits(), s.confidence.to_bits())).collect()
            };
            prop_assert_eq!(flat(&live.index, &ra), flat(&restored.index, &rb));
        }
    }
}

/// Feeds `events` (original index, user, item, kind, value) in the given order, in batches of
/// `chunk`, every event with the id `e{original index}`; batches listed in `retry` are sent a
/// second time (a client retry: all duplicates).
fn feed_with_ids(
    h: &mut Harness,
    events: &[(usize, u32, u32, EventKind, f32)],
    chunk: usize,
    retry: &[usize],
) {
    for (c, part) in events.chunks(chunk.max(1)).enumerate() {
        let times = if retry.contains(&c) { 2 } else { 1 };
        for _ in 0..times {
            let mut per_shard: Vec<Vec<InternedEvent>> = vec![Vec::new(); SHARDS];
            for (n, &(original, u, i, kind, value)) in part.iter().enumerate() {
                let user_name = format!("u{u}");
                let user = h.index.users.intern(&user_name).expect("room");
                let item = h.index.items.intern(&format!("i{i}")).expect("room");
                per_shard[shard_for(&user_name, SHARDS)].push(InternedEvent {
                    index: n,
                    event_id: Some(format!("e{original}").into()),
                    user,
                    item: Some(item),
                    kind,
                    value: (kind == EventKind::Rate).then_some(value),
                    // Four events to a millisecond: ties in time are common.
                    ts_ms: (original / 4) as i64,
                });
            }
            for (shard, events) in h.shards.iter_mut().zip(per_shard) {
                let (_, deltas) = shard.record(events);
                apply_batch(&h.index, &deltas);
            }
        }
    }
}

/// A new engine loaded from `h`'s snapshot export, as a restart does.
fn restored(h: &Harness, config: &EngineConfig) -> Harness {
    let mut out = Harness::new(config.clone());
    for (slot, name) in h.index.items.slots_snapshot().iter().enumerate() {
        if let Some(name) = name {
            assert!(out.index.items.restore(name, slot as u32));
        }
    }
    for (from, to) in h.shards.iter().zip(out.shards.iter_mut()) {
        let (users, ids) = from.export();
        let (deltas, refused) = to.import(users, ids);
        assert_eq!(refused, 0);
        apply_batch(&out.index, &deltas);
    }
    out
}

/// Everything a client can read, in external ids with exact bits.
fn answers(h: &mut Harness, users: u32, items: u32) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..items {
        if let Some(item) = h.index.items.get(&format!("i{i}")) {
            let list = similar_items(&h.index, item, 10);
            out.push(format!("i{i} {:?}", named(&h.index, &list, false)));
        }
    }
    for u in 0..users {
        let name = format!("u{u}");
        let Some(user) = h.index.users.get(&name) else {
            continue;
        };
        let list = h.similar_users(user);
        out.push(format!("{name} {:?}", named(&h.index, &list, true)));
        let recs = h.shards[shard_for(&name, SHARDS)].recommend(user, 10, None);
        let flat: Vec<(String, u64, u64)> = recs
            .items
            .iter()
            .map(|s| {
                let item = h.index.items.name(s.item).expect("named").to_string();
                (item, s.score.to_bits(), s.confidence.to_bits())
            })
            .collect();
        out.push(format!("{name} {:?} {:?}", recs.strategy, flat));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The same events, sorted in one engine and shuffled and batched differently (with
    /// retried batches) in another, give the same lists with the same score bits. Kinds whose
    /// effect depends on order by definition (`abandon` clamps the running sum at 0, the
    /// latest `rate` wins) appear at most once per cell, as ratings, here. The similar-user
    /// search starts from each user's 4 most recent items, so which items those are (ties in
    /// time included) must not depend on the order either.
    #[test]
    fn answers_do_not_depend_on_event_order(
        events in prop::collection::vec(
            (0u32..14, 0u32..16, prop::sample::select(vec![
                EventKind::View, EventKind::Click, EventKind::Start, EventKind::Checkin,
                EventKind::Complete, EventKind::Like,
            ])),
            1..160,
        ),
        ratings in prop::collection::btree_map((0u32..14, 0u32..16), 0u32..=10, 0..30),
        seed in any::<u64>(),
        chunks in (1usize..50, 1usize..50),
        retry in prop::collection::vec(0usize..20, 0..4),
    ) {
        let mut all: Vec<(usize, u32, u32, EventKind, f32)> = events
            .iter()
            .map(|&(u, i, kind)| (u, i, kind, 0.0))
            .chain(ratings.iter().map(|(&(u, i), &v)| (u, i, EventKind::Rate, v as f32 * 0.37)))
            .enumerate()
            .map(|(n, (u, i, kind, value))| (n, u, i, kind, value))
            .collect();
        // Sorted by user then item: the dense ids of the two engines differ.
        let mut sorted = all.clone();
        sorted.sort_by_key(|e| (e.1, e.2, e.0));
        // A seeded Fisher–Yates shuffle.
        let mut state = seed | 1;
        for n in (1..all.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            all.swap(n, (state % (n as u64 + 1)) as usize);
        }
        let mut config = EngineConfig::default();
        config.recommend.neighbour_items = 4;
        let mut a = Harness::new(config.clone());
        feed_with_ids(&mut a, &sorted, chunks.0, &[]);
        let mut b = Harness::new(config.clone());
        feed_with_ids(&mut b, &all, chunks.1, &retry);
        prop_assert_eq!(answers(&mut a, 14, 16), answers(&mut b, 14, 16));
        // A third engine restarts (snapshot export and import) half way, then gets the rest
        // plus a retry of everything it had before the restart.
        let half = all.len() / 2;
        let mut c = Harness::new(config.clone());
        feed_with_ids(&mut c, &all[..half], chunks.1, &retry);
        let mut c = restored(&c, &config);
        feed_with_ids(&mut c, &all[..half], chunks.0, &[]);
        feed_with_ids(&mut c, &all[half..], chunks.0, &retry);
        prop_assert_eq!(answers(&mut a, 14, 16), answers(&mut c, 14, 16));
    }
}

/// Of a user's items, the similar-user search starts from the `recommend.neighbour_items` most
/// recent (ties in time by external item id), and only from those.
#[test]
fn the_similar_user_search_starts_from_the_most_recent_items() {
    // (user, item, ts): u0 has i0 and i1 long ago, i2 and i3 lately; u1 shares the old
    // items, u2 the recent ones.
    let events = [
        (0, 0, 10),
        (0, 1, 11),
        (0, 2, 50),
        (0, 3, 51),
        (1, 0, 5),
        (1, 1, 5),
        (2, 2, 5),
        (2, 3, 5),
    ];
    let similar = |cap: usize, events: &[(u32, u32, i64)]| {
        let mut config = EngineConfig::default();
        config.recommend.neighbour_items = cap;
        let mut h = Harness::new(config);
        for &(u, i, ts) in events {
            let user_name = format!("u{u}");
            let user = h.index.users.intern(&user_name).expect("room");
            let item = h.index.items.intern(&format!("i{i}")).expect("room");
            let event = InternedEvent {
                index: 0,
                event_id: None,
                user,
                item: Some(item),
                kind: EventKind::Like,
                value: None,
                ts_ms: ts,
            };
            let (_, deltas) = h.shards[shard_for(&user_name, SHARDS)].record(vec![event]);
            apply_batch(&h.index, &deltas);
        }
        let u0 = h.index.users.get("u0").expect("known");
        let list = h.similar_users(u0);
        let mut names: Vec<String> = named(&h.index, &list, true)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        names.sort();
        names
    };
    assert_eq!(similar(2, &events), ["u2"], "the two most recent items");
    assert_eq!(similar(0, &events), ["u1", "u2"], "every item");
    assert_eq!(similar(4, &events), ["u1", "u2"], "a cap above the history");
    // All four at one time: the first two external ids, whatever order the items came in
    // (and so whatever dense ids they got).
    let tied: Vec<(u32, u32, i64)> = events
        .iter()
        .map(|&(u, i, ts)| (u, i, if u == 0 { 7 } else { ts }))
        .collect();
    let mut reversed = tied.clone();
    reversed.reverse();
    assert_eq!(similar(2, &tied), ["u1"]);
    assert_eq!(similar(2, &reversed), ["u1"]);
}
