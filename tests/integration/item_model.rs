//! The learned item model (EASE) on a running server: the background job builds it from the
//! live counts, recommendations rank by `Σ_i B_ij` over the user's items, and the reasons name
//! the item that contributes most.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use momentum_models::ease::{fit, EaseParams};

use crate::common::{event, settings, TestServer};

/// A deterministic binary user × item matrix: user → items completed.
fn population() -> BTreeMap<String, BTreeSet<String>> {
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let mut users = BTreeMap::new();
    for u in 0..40 {
        let mut items = BTreeSet::new();
        // Two taste groups with a shared head, so the model has structure to find.
        let group = u % 2;
        for i in 0..14 {
            let p = if i % 2 == group { 60 } else { 15 } + if i < 3 { 20 } else { 0 };
            if next() % 100 < p {
                items.insert(format!("g{i:02}"));
            }
        }
        if items.is_empty() {
            items.insert("g00".to_string());
        }
        users.insert(format!("u{u:02}"), items);
    }
    users
}

async fn wait_for_model(s: &TestServer, items: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if s.metric("momentum_item_model_items").await == items {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the item model did not cover {items} items within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn recommendations_rank_by_the_learned_item_model() {
    let mut cfg = settings();
    cfg.ease.lambda = 2.0;
    cfg.ease.neighbours = 1000;
    cfg.ease.rebuild_events = 1;
    cfg.recommend.user_weight = 0.0;
    cfg.recommend.content_weight = 0.0;
    cfg.recommend.diversity_lambda = 1.0;
    cfg.recommend.max_per_type = 0;
    let s = TestServer::start_with(cfg);
    let users = population();
    let batch: Vec<Value> = users
        .iter()
        .flat_map(|(u, items)| items.iter().map(move |i| event(u, i, "complete")))
        .collect();
    let (status, body) = s.post_json("/v1/events", &Value::Array(batch)).await;
    assert_eq!(status, 200, "{body}");
    let items: BTreeSet<&String> = users.values().flatten().collect();
    wait_for_model(&s, items.len() as f64).await;
    assert!(s.metric("momentum_item_model_version").await >= 2.0);

    // The same model, fitted here from the matrix.
    let ids: Vec<&String> = items.iter().copied().collect();
    let pos = |id: &str| ids.iter().position(|x| *x == id).expect("known item");
    let diag: Vec<f64> = ids
        .iter()
        .map(|i| users.values().filter(|u| u.contains(*i)).count() as f64)
        .collect();
    let mut pairs = Vec::new();
    for a in 0..ids.len() {
        for b in 0..a {
            let shared = users
                .values()
                .filter(|u| u.contains(ids[a]) && u.contains(ids[b]))
                .count();
            pairs.push((a, b, shared as f64));
        }
    }
    let params = EaseParams {
        lambda: 2.0,
        neighbours: 1000,
        threads: 1,
    };
    let model = fit(&diag, pairs, &params).expect("fit");
    let weight = |from: usize, to: usize| {
        model.rows[from]
            .iter()
            .find(|e| e.0 as usize == to)
            .map_or(0.0, |e| f64::from(e.1))
    };

    let mut checked = 0;
    for (user, own) in &users {
        let mut expected: Vec<(String, f64)> = ids
            .iter()
            .filter(|j| !own.contains(**j))
            .map(|j| {
                let score = own.iter().map(|i| weight(pos(i), pos(j))).sum::<f64>();
                ((*j).clone(), score)
            })
            .filter(|(_, score)| *score > 0.0)
            .collect();
        expected.sort_by(|a, b| b.1.total_cmp(&a.1));
        if expected.len() < 3 {
            continue;
        }
        let (status, body) = s
            .get(&format!("/v1/users/{user}/recommendations?n=3"))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["strategy"], "collaborative", "{body}");
        let got: Vec<&str> = body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["item_id"].as_str().expect("id"))
            .collect();
        let score_of = |id: &str| {
            expected
                .iter()
                .find(|e| e.0 == id)
                .map_or(f64::NEG_INFINITY, |e| e.1)
        };
        let third_best = expected[2].1;
        for (rank, id) in got.iter().enumerate() {
            assert!(
                score_of(id) >= third_best - 1e-5,
                "{user}: {id} at rank {rank} is not among the best three of {expected:?} (got {got:?})"
            );
            if rank > 0 {
                assert!(
                    score_of(got[rank - 1]) >= score_of(id) - 1e-5,
                    "{user}: {got:?} is not in score order {expected:?}"
                );
            }
        }
        // The first reason names the user's item with the largest weight towards the top item.
        let top = got[0];
        let best = own
            .iter()
            .map(|i| (i, weight(pos(i), pos(top))))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("user has items");
        let reason = body["items"][0]["reasons"][0].as_str().unwrap_or("");
        let named = own.iter().find(|i| reason.contains(i.as_str()));
        let named_weight = named.map_or(f64::NEG_INFINITY, |i| weight(pos(i), pos(top)));
        assert!(
            named_weight >= best.1 - 1e-5,
            "{user}: reason {reason:?} does not name the strongest contributor {best:?}"
        );
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} users compared");

    // A user's own event moves their list at once, without waiting for a rebuild.
    let (user, own) = users.iter().next().expect("a user");
    let before = s
        .get(&format!("/v1/users/{user}/recommendations?n=3"))
        .await
        .1;
    let first = before["items"][0]["item_id"]
        .as_str()
        .expect("id")
        .to_string();
    assert!(!own.contains(&first));
    let (status, _) = s
        .post_json("/v1/events", &json!([event(user, &first, "complete")]))
        .await;
    assert_eq!(status, 200);
    let after = s
        .get(&format!("/v1/users/{user}/recommendations?n=3"))
        .await
        .1;
    let now: Vec<&str> = after["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["item_id"].as_str().expect("id"))
        .collect();
    assert!(
        !now.contains(&first.as_str()),
        "{now:?} still holds {first}"
    );
}
