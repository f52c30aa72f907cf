//! `simulate`: a synthetic but realistic goal-app population, for training and evaluating the
//! success and churn models and for feeding a server with plausible traffic.
//!
//! Users sign up uniformly over the simulated period and live day by day (`user.rs` describes
//! the behaviour model): latent motivation and consistency drive what can be observed (app
//! opens, views, check-ins, streaks, completions) *and* the outcomes (goals completed or
//! abandoned, churn), so the outcomes are predictable from behaviour to the extent they would
//! be in a real app, and never from anything else. The outcomes are written next to the events
//! as labels.
//!
//! Deterministic by seed: the catalogue and every user have their own random stream derived from
//! the seed (users are simulated in parallel, their results joined in user order), events are
//! sorted by `(ts, user)` with a stable sort, and no hash-map order reaches an output. The same
//! seed and flags give byte-identical files.
//!
//! Outputs ([`output`]): `events.csv`, `items.csv`, `users.csv`, `goal_outcomes.csv`,
//! `churn.csv`; [`post`] sends the events to a server's `POST /v1/events`.

pub mod catalogue;
pub mod output;
pub mod post;
mod user;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

use crate::error::LoadError;
use crate::report::Report;
use crate::scenario::Stop;
use catalogue::Catalogue;

/// Start of day 0 by default: 2025-01-01T00:00:00Z, in unix ms (a fixed date, so outputs do not
/// depend on when the simulation runs).
pub const DEFAULT_START_MS: i64 = 1_735_689_600_000;

/// Largest population and period accepted.
pub const MAX_USERS: u32 = 10_000_000;
pub const MAX_DAYS: u32 = 3650;

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimConfig {
    pub users: u32,
    pub days: u32,
    pub seed: u64,
    /// Unix ms of the start of day 0.
    pub start_ms: i64,
}

impl SimConfig {
    pub fn validate(&self) -> Result<(), LoadError> {
        let invalid = |message: String| Err(LoadError::InvalidConfig { message });
        if !(1..=MAX_USERS).contains(&self.users) {
            return invalid(format!("--users must be 1..={MAX_USERS}"));
        }
        if !(1..=MAX_DAYS).contains(&self.days) {
            return invalid(format!("--days must be 1..={MAX_DAYS}"));
        }
        if self.start_ms < 0 {
            return invalid("--start-ms must be a unix time in milliseconds".to_owned());
        }
        Ok(())
    }
}

/// Event kinds the simulated users produce, by their API names (impressions are the server's
/// business). A copy of the API's list: this crate talks HTTP only and does not link the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    View,
    Click,
    Start,
    Checkin,
    Complete,
    Abandon,
    Like,
    Rate,
    AppOpen,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::View,
        Kind::Click,
        Kind::Start,
        Kind::Checkin,
        Kind::Complete,
        Kind::Abandon,
        Kind::Like,
        Kind::Rate,
        Kind::AppOpen,
    ];

    /// The API's name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Click => "click",
            Kind::Start => "start",
            Kind::Checkin => "checkin",
            Kind::Complete => "complete",
            Kind::Abandon => "abandon",
            Kind::Like => "like",
            Kind::Rate => "rate",
            Kind::AppOpen => "app_open",
        }
    }

    /// Parses an API name.
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One simulated event. The user is `u{user}`, the item `g{item}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimEvent {
    /// Unix ms.
    pub ts_ms: i64,
    pub user: u32,
    /// `None` for `app_open`.
    pub item: Option<u32>,
    pub kind: Kind,
    /// The rating (1–5) of a `rate` event.
    pub value: Option<u8>,
}

/// A user's latent traits (the ground truth behind the behaviour).
#[derive(Debug, Clone, PartialEq)]
pub struct SimUser {
    pub id: u32,
    pub signup_ms: i64,
    /// Long-run motivation in (0, 1).
    pub motivation: f64,
    /// How regular the user's activity is, in (0, 1).
    pub consistency: f64,
}

/// How an adopted goal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Enough check-ins: a `complete` event.
    Completed,
    /// Given up with an `abandon` event.
    Abandoned,
    /// Given up silently (no event; the goal just goes idle).
    Dropped,
    /// The user churned while the goal was open.
    Churned,
    /// Still in progress when the simulation ended.
    Open,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Abandoned => "abandoned",
            Outcome::Dropped => "dropped",
            Outcome::Churned => "churned",
            Outcome::Open => "open",
        }
    }
}

/// The true outcome of one adopted goal.
#[derive(Debug, Clone, PartialEq)]
pub struct GoalOutcome {
    pub user: u32,
    pub goal: u32,
    /// Time of the `start` event.
    pub started_ms: i64,
    pub outcome: Outcome,
    /// When it was completed, abandoned, dropped (start of that day) or the user churned;
    /// `None` while open.
    pub resolved_ms: Option<i64>,
}

/// Whether a user churned, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct ChurnOutcome {
    pub user: u32,
    pub churned: bool,
    /// Start of the day from which the user does nothing more.
    pub churn_ms: Option<i64>,
}

/// A whole simulated population.
#[derive(Debug, Clone)]
pub struct Simulation {
    pub config: SimConfig,
    pub catalogue: Catalogue,
    /// By id.
    pub users: Vec<SimUser>,
    /// Sorted by `(ts_ms, user)`; an event's index is its id (see [`Simulation::event_id`]).
    pub events: Vec<SimEvent>,
    /// By user, then start time.
    pub goals: Vec<GoalOutcome>,
    /// By user.
    pub churn: Vec<ChurnOutcome>,
}

/// `user_id` of a simulated user.
pub fn user_id(user: u32) -> String {
    format!("u{user}")
}

/// `item_id` of a catalogue goal.
pub fn item_id(goal: u32) -> String {
    format!("g{goal}")
}

impl Simulation {
    /// The `event_id` of `events[index]`: `s{seed}-{index}`, unique per seed and stable, so
    /// posting the same simulation twice is idempotent.
    pub fn event_id(&self, index: usize) -> String {
        format!("s{}-{index}", self.config.seed)
    }

    /// Counts for the summary.
    pub fn stats(&self) -> SimStats {
        let mut events_by_kind = BTreeMap::new();
        for e in &self.events {
            *events_by_kind.entry(e.kind.as_str()).or_insert(0) += 1;
        }
        let mut goals_by_outcome = BTreeMap::new();
        for g in &self.goals {
            *goals_by_outcome.entry(g.outcome.as_str()).or_insert(0) += 1;
        }
        SimStats {
            users: self.users.len() as u64,
            days: self.config.days,
            seed: self.config.seed,
            items: self.catalogue.goals.len() as u64,
            events: self.events.len() as u64,
            events_by_kind,
            goals_adopted: self.goals.len() as u64,
            goals_by_outcome,
            churned_users: self.churn.iter().filter(|c| c.churned).count() as u64,
        }
    }
}

/// Summary of a simulation (printed, and part of a `--post` report's config).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimStats {
    pub users: u64,
    pub days: u32,
    pub seed: u64,
    pub items: u64,
    pub events: u64,
    pub events_by_kind: BTreeMap<&'static str, u64>,
    pub goals_adopted: u64,
    pub goals_by_outcome: BTreeMap<&'static str, u64>,
    pub churned_users: u64,
}

impl SimStats {
    /// One line for humans.
    pub fn summary_line(&self) -> String {
        let completed = self.goals_by_outcome.get("completed").copied().unwrap_or(0);
        format!(
            "simulate: {} users over {} days (seed {}): {} events, {} goals adopted, {} completed ({:.1} %), {} users churned ({:.1} %)",
            self.users,
            self.days,
            self.seed,
            self.events,
            self.goals_adopted,
            completed,
            percent(completed, self.goals_adopted),
            self.churned_users,
            percent(self.churned_users, self.users),
        )
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// SplitMix64 finaliser: turns related seeds (seed, user index) into unrelated ones.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The random stream of user `user`.
fn user_rng(seed: u64, user: u32) -> StdRng {
    StdRng::seed_from_u64(mix(mix(seed) ^ mix(u64::from(user) + 1)))
}

/// Runs the simulation. Deterministic for a config; uses up to 4 threads.
pub fn simulate(config: &SimConfig) -> Simulation {
    let catalogue = Catalogue::build(&mut StdRng::seed_from_u64(mix(config.seed)));
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 4)
        .min(config.users.max(1) as usize);
    let per_thread = config.users.div_ceil(threads as u32);
    let runs: Vec<user::UserRun> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads as u32)
            .map(|t| {
                let (catalogue, first) = (&catalogue, t * per_thread);
                let last = ((t + 1) * per_thread).min(config.users);
                scope.spawn(move || {
                    (first..last)
                        .map(|u| {
                            user::simulate_user(u, config, catalogue, user_rng(config.seed, u))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(runs) => runs,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    let total: usize = runs.iter().map(|r| r.events.len()).sum();
    let mut events = Vec::with_capacity(total);
    let mut users = Vec::with_capacity(runs.len());
    let mut goals = Vec::new();
    let mut churn = Vec::with_capacity(runs.len());
    for run in runs {
        events.extend_from_slice(&run.events);
        users.push(run.user);
        goals.extend(run.goals);
        churn.push(run.churn);
    }
    // Stable: same-time events of one user keep their order.
    events.sort_by_key(|e| (e.ts_ms, e.user));
    Simulation {
        config: config.clone(),
        catalogue,
        users,
        events,
        goals,
        churn,
    }
}

/// A `simulate` run: what to simulate, where to write it, where to post it.
#[derive(Debug, Clone)]
pub struct SimulateConfig {
    pub sim: SimConfig,
    /// Directory for the CSV files (created if missing).
    pub out_dir: Option<PathBuf>,
    /// Send the events to a server.
    pub post: Option<post::PostConfig>,
}

/// What a `simulate` run produced.
#[derive(Debug)]
pub struct SimulateOutcome {
    pub stats: SimStats,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// The ingestion report, when the events were posted.
    pub report: Option<Report>,
}

/// Simulates, writes the CSV files and posts the events, as configured.
pub async fn run(config: SimulateConfig, stop: Stop) -> Result<SimulateOutcome, LoadError> {
    config.sim.validate()?;
    let started = Instant::now();
    let sim_config = config.sim.clone();
    let sim = tokio::task::spawn_blocking(move || simulate(&sim_config))
        .await
        .map_err(|e| LoadError::Worker {
            message: e.to_string(),
        })?;
    let stats = sim.stats();
    eprintln!(
        "{} in {:.2} s",
        stats.summary_line(),
        started.elapsed().as_secs_f64()
    );
    let sim = Arc::new(sim);
    let mut files = Vec::new();
    if let Some(dir) = config.out_dir {
        let written = Arc::clone(&sim);
        files = tokio::task::spawn_blocking(move || output::write_all(&written, &dir))
            .await
            .map_err(|e| LoadError::Worker {
                message: e.to_string(),
            })??;
        for file in &files {
            eprintln!("wrote {}", file.display());
        }
    }
    let report = match config.post {
        Some(mut post) => {
            post.simulation = Some(stats.clone());
            Some(post::run(sim, post, stop).await?)
        }
        None => None,
    };
    Ok(SimulateOutcome {
        stats,
        files,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64) -> SimConfig {
        SimConfig {
            users: 300,
            days: 40,
            seed,
            start_ms: DEFAULT_START_MS,
        }
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let a = output::render_all(&simulate(&small(7)));
        let b = output::render_all(&simulate(&small(7)));
        let c = output::render_all(&simulate(&small(8)));
        assert_eq!(a.len(), 5);
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert!(x == y, "{name} differs between runs with the same seed");
        }
        let differs = |name: &str| {
            let pick = |files: &[(&str, Vec<u8>)]| {
                files
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, bytes)| bytes.clone())
            };
            pick(&a) != pick(&c)
        };
        assert!(differs(output::EVENTS) && differs(output::USERS) && differs(output::ITEMS));
    }

    #[test]
    fn population_behaves_like_a_goal_app() {
        let sim = simulate(&SimConfig {
            users: 2000,
            days: 120,
            ..small(42)
        });
        let stats = sim.stats();
        assert_eq!(stats.users, 2000);
        assert!(sim.events.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
        let end = DEFAULT_START_MS + 120 * 86_400_000;
        assert!(sim
            .events
            .iter()
            .all(|e| (DEFAULT_START_MS..end).contains(&e.ts_ms)));
        assert!(sim
            .events
            .iter()
            .all(|e| (e.kind == Kind::AppOpen) == e.item.is_none()));
        assert!(sim
            .events
            .iter()
            .all(|e| (e.kind == Kind::Rate) == e.value.is_some()));
        // Every user opens the app on signup and adopts a goal.
        for user in &sim.users {
            let first = sim.events.iter().find(|e| e.user == user.id);
            assert_eq!(
                first.map(|e| (e.kind, e.ts_ms)),
                Some((Kind::AppOpen, user.signup_ms))
            );
        }
        let by = |o: &str| stats.goals_by_outcome.get(o).copied().unwrap_or(0) as f64;
        let adopted = stats.goals_adopted as f64;
        assert!(adopted >= 2000.0);
        let completion = by("completed") / adopted;
        assert!((0.2..0.8).contains(&completion), "{stats:?}");
        assert!(by("abandoned") > 0.0 && by("dropped") > 0.0 && by("open") > 0.0);
        let churn = stats.churned_users as f64 / 2000.0;
        assert!((0.15..0.8).contains(&churn), "{stats:?}");
        // Motivation shows: the most motivated third completes more goals than the least.
        let mut order: Vec<&SimUser> = sim.users.iter().collect();
        order.sort_by(|a, b| a.motivation.total_cmp(&b.motivation));
        let rate = |users: &[&SimUser]| {
            let ids: Vec<u32> = users.iter().map(|u| u.id).collect();
            let goals: Vec<&GoalOutcome> = sim
                .goals
                .iter()
                .filter(|g| ids.binary_search(&g.user).is_ok())
                .collect();
            let done = goals
                .iter()
                .filter(|g| g.outcome == Outcome::Completed)
                .count();
            done as f64 / goals.len().max(1) as f64
        };
        let mut low: Vec<&SimUser> = order[..666].to_vec();
        let mut high: Vec<&SimUser> = order[1334..].to_vec();
        low.sort_by_key(|u| u.id);
        high.sort_by_key(|u| u.id);
        assert!(
            rate(&high) > rate(&low) + 0.1,
            "{} vs {}",
            rate(&high),
            rate(&low)
        );
    }

    #[test]
    fn config_is_validated() {
        assert!(small(1).validate().is_ok());
        assert!(SimConfig {
            users: 0,
            ..small(1)
        }
        .validate()
        .is_err());
        assert!(SimConfig {
            days: 0,
            ..small(1)
        }
        .validate()
        .is_err());
        assert!(SimConfig {
            start_ms: -1,
            ..small(1)
        }
        .validate()
        .is_err());
    }
}
