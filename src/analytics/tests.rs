//! The `training` and `churn_scoring` jobs against a real (embedded) store, on a fake clock.

use std::collections::HashMap;
use std::sync::Arc;

use momentum_models::clock::{ManualClock, DAY_MS};
use momentum_models::events::EventKind;
use momentum_models::export::ModelKey;
use momentum_models::features::Activity;

use super::*;
use crate::jobs::churn::{ActivitySource, ChurnScoringJob};
use crate::jobs::training::TrainingJob;
use crate::jobs::{Job, JobError, Trigger};
use crate::store::{EventRecord as StoredNewEvent, StoreConfig, StoreKind};

const NOW: i64 = 20_000 * DAY_MS + 12 * 3_600_000;

/// `(user, goal, kind, ts)` of a population whose behaviour predicts its outcomes: two thirds
/// check in daily and complete a goal every 12 days, the rest check in every other day and
/// stop after 20–50 days.
fn population(n: usize) -> Vec<(String, String, EventKind, i64)> {
    let mut out = Vec::new();
    for u in 0..n {
        let keen = u % 3 != 0;
        let start = NOW - (85 - (u % 20) as i64) * DAY_MS;
        let active_days = if keen { 90 } else { 20 + (u % 30) as i64 };
        let mut goal = u * 10;
        let user = format!("u{u}");
        out.push((user.clone(), format!("g{goal}"), EventKind::Start, start));
        for d in 1..active_days {
            let ts = start + d * DAY_MS;
            if ts > NOW {
                break;
            }
            if keen || d % 2 == 0 {
                out.push((user.clone(), format!("g{goal}"), EventKind::Checkin, ts));
            }
            if keen && d % 12 == 0 {
                out.push((
                    user.clone(),
                    format!("g{goal}"),
                    EventKind::Complete,
                    ts + 1,
                ));
                goal += 1;
                out.push((user.clone(), format!("g{goal}"), EventKind::Start, ts + 2));
            }
        }
    }
    out
}

async fn store_with(
    events: &[(String, String, EventKind, i64)],
) -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&StoreConfig {
        kind: StoreKind::Embedded,
        path: dir.path().join("data"),
        cache_mb: 16,
        ..StoreConfig::default()
    })
    .await
    .expect("store");
    let batch: Vec<StoredNewEvent> = events
        .iter()
        .map(|(user, item, kind, ts)| StoredNewEvent {
            event_id: None,
            user_id: user.clone(),
            item_id: Some(item.clone()),
            kind: kind.as_str().into(),
            value: None,
            ts_ms: *ts,
            recommendation_id: None,
        })
        .collect();
    for chunk in batch.chunks(10_000) {
        store.append_events(chunk).await.expect("append");
    }
    (dir, Arc::new(store))
}

async fn analytics(
    config: AnalyticsConfig,
    store: Arc<Store>,
    clock: Arc<ManualClock>,
) -> (Analytics, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let mut config = config;
    config.model_key = config
        .model_key
        .or_else(|| Some(ModelKey::from_bytes(&[7; 32]).expect("32 bytes")));
    let a = Analytics::with_clock(config, store, &registry, clock)
        .await
        .expect("analytics");
    (a, registry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trainer_job_promotes_then_refuses_a_worse_candidate_and_keeps_both_versions() {
    let (_dir, store) = store_with(&population(300)).await;
    let clock = Arc::new(ManualClock::new(NOW));
    let (a, _registry) = analytics(AnalyticsConfig::default(), store.clone(), clock.clone()).await;
    assert!(a.shared().live.get(ModelKind::Churn).is_none());
    let job = TrainingJob {
        shared: a.shared().clone(),
        cluster: None,
    };
    let report = job.run(Trigger::Request, NOW).await.expect("first run");
    assert!(report.events > 10_000 && report.users == 300, "{report:?}");
    for m in &report.models {
        assert_eq!((m.version, m.promoted), (Some(1), true), "{m:?}");
        let auc = m.metrics.as_ref().and_then(|r| r.auc).unwrap_or(0.0);
        assert!(auc > 0.75, "{} AUC {auc}", m.name);
    }
    let live = a.shared().live.get(ModelKind::Churn).expect("live churn");
    assert_eq!(live.version, 1);
    let gauge = a
        .shared()
        .metrics
        .model_f1
        .with_label_values(&["churn"])
        .get();
    assert!(gauge > 0.0 && (gauge - live.f1).abs() < 1e-12);

    // A week later, a crippled forest (no split allowed: AUC 0.5) must not replace v1. A new
    // handle restores v1 from the store first, as a restarted server would.
    let mut crippled = AnalyticsConfig::default();
    crippled.trainer.churn_min_samples_split = usize::MAX;
    clock.set(NOW + 7 * DAY_MS);
    let (b, _registry) = analytics(crippled, store.clone(), clock.clone()).await;
    assert_eq!(
        b.shared().live.get(ModelKind::Churn).map(|m| m.version),
        Some(1)
    );
    let job = TrainingJob {
        shared: b.shared().clone(),
        cluster: None,
    };
    let report = job.run(Trigger::Schedule, NOW).await.expect("second run");
    let churn = report
        .models
        .iter()
        .find(|m| m.name == "churn")
        .expect("churn");
    assert_eq!(churn.version, Some(2));
    assert!(!churn.promoted, "{churn:?}");
    let decision = churn.decision.as_ref().expect("decision");
    assert!(decision.candidate < decision.live, "{decision:?}");
    assert_eq!(
        b.shared().live.get(ModelKind::Churn).map(|m| m.version),
        Some(1)
    );
    // Both versions are stored with their metadata; the live one is still v1.
    let versions = store.model_versions(Some("churn")).await.expect("versions");
    assert_eq!(versions.len(), 2);
    assert!(versions[0].promoted() && !versions[1].promoted());
    assert_eq!(versions[1].parent_version, Some(1));
    assert_eq!(versions[1].metadata["feature_names"][0], "completion_rate");
    assert!(versions[1].metadata["training_window"]["from_ms"].is_i64());
    let (live, _) = store
        .live_model_version("churn")
        .await
        .expect("read")
        .expect("live");
    assert_eq!(live.version, 1);
}

/// The users' activity logs, as the shards would hand them out.
struct FakeSource(Vec<(Arc<str>, Vec<Activity>)>);

impl FakeSource {
    fn new(events: &[(String, String, EventKind, i64)]) -> Self {
        let mut goals: HashMap<&str, u32> = HashMap::new();
        let mut users: Vec<(Arc<str>, Vec<Activity>)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (user, item, kind, ts) in events {
            let next = goals.len() as u32;
            let goal = *goals.entry(item.as_str()).or_insert(next);
            let i = *index.entry(user.as_str()).or_insert_with(|| {
                users.push((Arc::from(user.as_str()), Vec::new()));
                users.len() - 1
            });
            users[i].1.push(Activity::new(*ts, *kind, Some(goal)));
        }
        FakeSource(users)
    }
}

impl ActivitySource for FakeSource {
    fn user_slots(&self) -> u32 {
        self.0.len() as u32
    }

    fn user_name(&self, id: u32) -> Option<Arc<str>> {
        self.0.get(id as usize).map(|(name, _)| name.clone())
    }

    fn has_room(&self) -> bool {
        true
    }

    fn activity(
        &self,
        user: Arc<str>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Activity>, ActorError>>>> {
        let log = self
            .0
            .iter()
            .find(|(name, _)| *name == user)
            .map(|(_, log)| log.clone());
        Box::pin(async move {
            log.ok_or(ActorError::UnknownUser {
                id: user.to_string(),
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_runs_are_idempotent_per_day_on_a_fake_clock() {
    let mut events = population(120);
    // A user whose last event is 100 days old: known to the shards, but not active in the last
    // 90 days, so never scored.
    let gone_from = NOW - 160 * DAY_MS;
    events.push(("gone".into(), "g-gone".into(), EventKind::Start, gone_from));
    for d in 1..=60 {
        let ts = gone_from + d * DAY_MS;
        events.push(("gone".into(), "g-gone".into(), EventKind::Checkin, ts));
    }
    assert_eq!(events.last().map(|e| e.3), Some(NOW - 100 * DAY_MS));
    let (_dir, store) = store_with(&events).await;
    let clock = Arc::new(ManualClock::new(NOW));
    let mut config = AnalyticsConfig::default();
    config.churn.batch_size = 7; // several batches
    config.churn.pause_ms = 0;
    let (a, _registry) = analytics(config, store.clone(), clock.clone()).await;
    let source = Arc::new(FakeSource::new(&events));
    let job = ChurnScoringJob {
        shared: a.shared().clone(),
        source: source.clone(),
        cluster: None,
    };
    let err = job
        .run(Trigger::Request, NOW)
        .await
        .expect_err("no model yet");
    assert!(matches!(err, JobError::Unavailable { .. }), "{err:?}");
    TrainingJob {
        shared: a.shared().clone(),
        cluster: None,
    }
    .run(Trigger::Request, NOW)
    .await
    .expect("training");

    let first = job.run(Trigger::Schedule, NOW).await.expect("first run");
    assert_eq!(first.day, day_string(NOW));
    // Every known user is looked at; the one inactive for 100 days is not scored.
    assert_eq!(first.users_examined, 121);
    assert_eq!(first.users_scored, 120);
    let t = first.tiers;
    assert_eq!(t.high + t.medium + t.low, 120);
    assert!(t.high > 0 && t.low > 0, "{t:?}");
    let expected = 3 * t.high + 2 * t.medium + 2 * t.low;
    assert_eq!(first.interventions_added, expected);

    // Later the same day: nothing new.
    clock.set(NOW + 3_600_000);
    let again = job
        .run(Trigger::Request, NOW + 3_600_000)
        .await
        .expect("second run");
    assert_eq!(again.users_scored, 120);
    assert_eq!(again.interventions_added, 0);
    let outbox = store.interventions_after(0, 10_000).await.expect("outbox");
    assert_eq!(outbox.len(), expected);
    // Each user got exactly their tier's channels, once.
    let mut per_user: HashMap<&str, Vec<&str>> = HashMap::new();
    for i in &outbox {
        per_user.entry(&i.user_id).or_default().push(&i.channel);
    }
    for i in &outbox {
        let tier = match i.tier.as_str() {
            "high" => Tier::High,
            "medium" => Tier::Medium,
            _ => Tier::Low,
        };
        let want: Vec<&str> = tier.interventions().iter().map(|c| c.as_str()).collect();
        assert_eq!(per_user[i.user_id.as_str()], want, "{}", i.user_id);
    }
    let score = store
        .churn_score("u0", &day_string(NOW))
        .await
        .expect("read")
        .expect("scored");
    assert!((0.0..=1.0).contains(&score.probability));
    let gone = store
        .churn_score("gone", &day_string(NOW))
        .await
        .expect("read");
    assert!(gone.is_none(), "{gone:?}");
    assert!(!per_user.contains_key("gone"));

    // The next day: the same users get the day's interventions again.
    let tomorrow = NOW + DAY_MS;
    let next = job
        .run(Trigger::Schedule, tomorrow)
        .await
        .expect("next day");
    assert_eq!(next.day, day_string(tomorrow));
    let t = next.tiers;
    assert_eq!(
        next.interventions_added,
        3 * t.high + 2 * t.medium + 2 * t.low
    );
    let outbox = store.interventions_after(0, 10_000).await.expect("outbox");
    assert_eq!(outbox.len(), expected + next.interventions_added);
}

#[test]
fn forecasts_follow_daily_activity() {
    let today = NOW.div_euclid(DAY_MS);
    // Three events a day for 28 days, nothing today yet.
    let log: Vec<Activity> = (1..=28)
        .flat_map(|d| {
            (0..3).map(move |k| {
                Activity::new((today - d) * DAY_MS + k * 1000, EventKind::Checkin, Some(1))
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let fc = forecast_activity(&log, NOW, 7).expect("forecast");
    assert_eq!(fc.history_days, 28);
    assert_eq!(fc.method, "holt_winters");
    assert_eq!(fc.forecast.len(), 7);
    assert_eq!(fc.forecast[0].date, day_string(NOW));
    for p in &fc.forecast {
        assert!((p.value - 3.0).abs() < 0.2, "{p:?}");
    }
    // A user whose only activity is today: a one-point series.
    let fc = forecast_activity(
        &[Activity::new(NOW - 1000, EventKind::AppOpen, None)],
        NOW,
        3,
    )
    .expect("forecast");
    assert_eq!((fc.history_days, fc.method), (1, "holt"));
    assert!(fc.forecast.iter().all(|p| (p.value - 1.0).abs() < 1e-9));
    assert_eq!(day_string(0), "1970-01-01");
    assert_eq!(day_string(1_735_689_600_000), "2025-01-01");
}
