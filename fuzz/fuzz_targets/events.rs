//! Fuzzes the event-batch parser of `POST /v1/events` ([`momentum::api::events::parse_events`])
//! with arbitrary bytes. It must never panic, and whatever it returns must respect the
//! contract the handler relies on: at most `MAX_BATCH` events, every index inside the batch,
//! each index either valid or rejected (never both), valid ids in the documented alphabet,
//! finite values and timestamps in range.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use momentum::api::{events::parse_events, validate_id};
use momentum_models::events::KindWeights;

/// Small so the fuzzer also explores the `batch_too_large` path.
const MAX_BATCH: usize = 64;
/// A fixed clock: 2023-11-14T22:13:20Z.
const NOW_MS: i64 = 1_700_000_000_000;

fuzz_target!(|body: &[u8]| {
    let weights = KindWeights::default();
    let Ok((valid, rejected)) = parse_events(body, MAX_BATCH, &weights, NOW_MS) else {
        return;
    };
    let total = valid.len() + rejected.len();
    assert!((1..=MAX_BATCH).contains(&total), "{total} events");
    let mut seen = HashSet::new();
    for v in &valid {
        let e = &v.event;
        assert!(e.index < total && seen.insert(e.index), "index {}", e.index);
        assert!(validate_id("user_id", &e.user_id).is_ok());
        for id in [&e.item_id, &e.event_id, &v.recommendation_id]
            .into_iter()
            .flatten()
        {
            assert!(validate_id("id", id).is_ok(), "{id:?}");
        }
        assert!(e.value.is_none_or(f32::is_finite), "{:?}", e.value);
        assert!(
            (0..=NOW_MS + 24 * 3600 * 1000).contains(&e.ts_ms),
            "{}",
            e.ts_ms
        );
    }
    for r in &rejected {
        assert!(r.index < total && seen.insert(r.index), "index {}", r.index);
        assert!(!r.code.is_empty() && !r.message.is_empty());
    }
});
