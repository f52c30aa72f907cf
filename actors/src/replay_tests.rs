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
        let want_items = batch::similar_items(&m, k);
        for item in 0..h.index.items.slots() as u32 {
            let got = similar_items(&h.index, item, k);
            let want = want_items.get(&item).cloned().unwrap_or_default();
            assert_same(&got, &want, &format!("item {item}"));
        }
        let want_users = batch::similar_users(&m, k);
        for user in 0..h.index.users.slots() as u32 {
            let got = h.similar_users(user);
            let want = want_users.get(&user).cloned().unwrap_or_default();
            assert_same(&got, &want, &format!("user {user}"));
        }
        // Co-occurrence counts equal the number of users sharing both items.
        for entry in h.index.item_stats.iter() {
            for (&other, c) in &entry.cooc {
                let shared = m.values().filter(|row| row.contains_key(entry.key()) && row.contains_key(&other)).count();
                prop_assert_eq!(c.users as usize, shared);
            }
        }
    }
}
