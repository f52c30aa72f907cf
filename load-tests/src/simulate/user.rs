//! The behaviour of one simulated user, day by day from signup to the end of the simulation or
//! churn. Everything observable (app opens, views, check-ins, completions) and every outcome
//! (goal completed or not, churned or not) flows from the same latent state, as in a real app:
//!
//! - **Latent traits**, drawn once: `motivation` m and `consistency` c in (0, 1) (Kumaraswamy,
//!   a Beta-like distribution), a preferred time of day, two favourite categories, and how many
//!   goals the user can juggle (1 to 3, more with motivation).
//! - **Current motivation** M drifts around m (mean reversion plus noise), rises with each
//!   completion and each day with a check-in, falls with each abandoned goal and idle day.
//! - **Active day** with probability driven by M and c; low-consistency users are bursty (an
//!   active day makes the next one likelier, an idle one makes it less likely).
//! - On an active day: 1–3 **sessions** (`app_open`) around the preferred hour (spread wider for
//!   low consistency); a **check-in** on each goal with probability rising with M and c and
//!   falling with difficulty; a goal with enough check-ins is **completed** (sometimes rated and
//!   liked); the user **browses** (views, clicks, likes, mostly in favourite categories) and may
//!   **adopt** a new goal (view, click, start), choosing difficulty around what their
//!   motivation suggests.
//! - Every day, each goal not checked in may be **abandoned** (explicitly on an active day,
//!   silently otherwise), likelier for hard goals, low M and long gaps; a goal untouched for 30
//!   days is dropped.
//! - **Churn** (the user stops for good) with a daily hazard that rises steeply as M falls, is
//!   higher in the first weeks and for users without a goal.

use rand::rngs::StdRng;
use rand::Rng;

use super::catalogue::Catalogue;
use super::{ChurnOutcome, GoalOutcome, Kind, Outcome, SimConfig, SimEvent, SimUser};

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: f64 = 3_600_000.0;
const SECOND_MS: i64 = 1000;

/// Everything one user produced.
pub struct UserRun {
    pub user: SimUser,
    /// Sorted by time.
    pub events: Vec<SimEvent>,
    pub goals: Vec<GoalOutcome>,
    pub churn: ChurnOutcome,
}

/// Kumaraswamy(a, b) by inversion: a Beta-like distribution on (0, 1) with a closed-form
/// quantile function.
fn kumaraswamy(rng: &mut StdRng, a: f64, b: f64) -> f64 {
    let u: f64 = rng.gen();
    (1.0 - (1.0 - u).powf(1.0 / b)).powf(1.0 / a)
}

/// Approximately standard normal (sum of four uniforms, rescaled).
fn normal(rng: &mut StdRng) -> f64 {
    let s: f64 = (0..4).map(|_| rng.gen::<f64>()).sum();
    (s - 2.0) * 3f64.sqrt()
}

/// A goal the user is working on.
struct OpenGoal {
    goal: u32,
    started_ms: i64,
    /// Day of the latest start or check-in.
    last_touch_day: u32,
    checkins: u32,
    /// Consecutive days with a check-in on this goal.
    streak: u32,
}

/// The user being simulated.
struct State<'a> {
    id: u32,
    /// Start of day 0 of the simulation (unix ms).
    start_ms: i64,
    catalogue: &'a Catalogue,
    rng: StdRng,
    motivation: f64,
    consistency: f64,
    /// Current motivation M.
    current: f64,
    pref_hour: f64,
    favourites: [usize; 2],
    capacity: usize,
    goals: Vec<OpenGoal>,
    /// Every goal ever adopted (no goal is adopted twice).
    adopted: Vec<u32>,
    events: Vec<SimEvent>,
    outcomes: Vec<GoalOutcome>,
    last_completion_day: Option<u32>,
}

/// Simulates user `id` with its own random stream.
pub fn simulate_user(
    id: u32,
    config: &SimConfig,
    catalogue: &Catalogue,
    mut rng: StdRng,
) -> UserRun {
    let motivation = kumaraswamy(&mut rng, 2.0, 2.2).clamp(0.02, 0.98);
    let consistency = kumaraswamy(&mut rng, 2.5, 2.0).clamp(0.02, 0.98);
    let signup_day = rng.gen_range(0..config.days);
    let signup_hour = rng.gen_range(7.0..22.0);
    let day0 = config.start_ms + i64::from(signup_day) * DAY_MS;
    let signup_ms = day0 + (signup_hour * HOUR_MS) as i64;
    let first = rng.gen_range(0..catalogue.by_category.len());
    let second =
        (first + rng.gen_range(1..catalogue.by_category.len())) % catalogue.by_category.len();
    let mut state = State {
        id,
        start_ms: config.start_ms,
        catalogue,
        pref_hour: rng.gen_range(6.0..22.0),
        current: (motivation + 0.08 * normal(&mut rng)).clamp(0.02, 0.98),
        rng,
        motivation,
        consistency,
        favourites: [first, second],
        capacity: 1 + (3.0 * motivation) as usize,
        goals: Vec::new(),
        adopted: Vec::new(),
        events: Vec::new(),
        outcomes: Vec::new(),
        last_completion_day: None,
    };
    let mut churn_ms = None;
    let mut yesterday_active = true;
    for day in signup_day..config.days {
        let day_start = config.start_ms + i64::from(day) * DAY_MS;
        let age = day - signup_day;
        if age > 0 && state.churns_today(age) {
            churn_ms = Some(day_start);
            for g in state.goals.drain(..) {
                state.outcomes.push(GoalOutcome {
                    user: id,
                    goal: g.goal,
                    started_ms: g.started_ms,
                    outcome: Outcome::Churned,
                    resolved_ms: Some(day_start),
                });
            }
            break;
        }
        let active = age == 0 || state.rng.gen::<f64>() < state.p_active(yesterday_active, day);
        let sessions = if active {
            state.sessions(day_start, (age == 0).then_some(signup_ms))
        } else {
            Vec::new()
        };
        state.live_day(day, &sessions, age == 0);
        yesterday_active = active;
    }
    let end_ms = config.start_ms + i64::from(config.days) * DAY_MS;
    for g in state.goals.drain(..) {
        state.outcomes.push(GoalOutcome {
            user: id,
            goal: g.goal,
            started_ms: g.started_ms,
            outcome: Outcome::Open,
            resolved_ms: None,
        });
    }
    debug_assert!(state.events.iter().all(|e| e.ts_ms < end_ms));
    state.events.sort_by_key(|e| e.ts_ms);
    state.outcomes.sort_by_key(|o| (o.started_ms, o.goal));
    UserRun {
        user: SimUser {
            id,
            signup_ms,
            motivation,
            consistency,
        },
        events: state.events,
        goals: state.outcomes,
        churn: ChurnOutcome {
            user: id,
            churned: churn_ms.is_some(),
            churn_ms,
        },
    }
}

impl State<'_> {
    /// Daily churn hazard: steep in low motivation, higher in the first weeks and without goals.
    fn churns_today(&mut self, age: u32) -> bool {
        let low = 1.0 - self.current;
        let mut hazard = 0.001
            + 0.05 * low.powi(3)
            + 0.02 * (1.0 - self.motivation) * (-f64::from(age) / 7.0).exp();
        if self.goals.is_empty() {
            hazard += 0.008;
        }
        self.rng.gen::<f64>() < hazard
    }

    fn p_active(&self, yesterday_active: bool, day: u32) -> f64 {
        let (m, c) = (self.current, self.consistency);
        let mut p = 0.12 + 0.85 * (0.6 * m + 0.4 * c);
        let burst = 0.15 * (1.0 - c);
        p += if yesterday_active { burst } else { -burst };
        if day % 7 >= 5 {
            p *= 0.9; // weekends
        }
        p.clamp(0.02, 0.98)
    }

    /// Session start times of an active day, sorted, at least 45 minutes apart, between 05:00
    /// and 23:30; on the signup day the first session is the signup itself.
    fn sessions(&mut self, day_start: i64, signup_ms: Option<i64>) -> Vec<i64> {
        let m = self.current;
        let n = 1
            + usize::from(self.rng.gen::<f64>() < 0.6 * m)
            + usize::from(self.rng.gen::<f64>() < 0.3 * m);
        let spread = 0.5 + 3.0 * (1.0 - self.consistency);
        let mut hours: Vec<f64> = (0..n)
            .map(|_| (self.pref_hour + spread * normal(&mut self.rng)).clamp(5.0, 23.0))
            .collect();
        hours.sort_by(f64::total_cmp);
        let mut times: Vec<i64> = signup_ms.into_iter().collect();
        let last_start = day_start + DAY_MS - 30 * 60 * SECOND_MS;
        for h in hours {
            let mut t = day_start + (h * HOUR_MS) as i64;
            if let Some(&prev) = times.last() {
                t = t.max(prev + 45 * 60 * SECOND_MS);
            }
            if t <= last_start {
                times.push(t);
            }
        }
        times
    }

    fn emit(&mut self, ts_ms: i64, kind: Kind, item: Option<u32>, value: Option<u8>) {
        self.events.push(SimEvent {
            ts_ms,
            user: self.id,
            item,
            kind,
            value,
        });
    }

    /// A moment inside one of today's sessions, `min_s..max_s` seconds after its start.
    fn moment(&mut self, sessions: &[i64], min_s: i64, max_s: i64) -> i64 {
        let s = sessions[self.rng.gen_range(0..sessions.len())];
        s + self.rng.gen_range(min_s..max_s) * SECOND_MS
    }

    /// One day: sessions (empty when inactive), check-ins, completions, browsing, adoption,
    /// abandonment and the motivation update.
    fn live_day(&mut self, day: u32, sessions: &[i64], signup_day: bool) {
        let active = !sessions.is_empty();
        for &t in sessions {
            self.emit(t, Kind::AppOpen, None, None);
        }
        let mut checked_in = false;
        if active {
            checked_in = self.check_in(day, sessions);
            self.browse(sessions);
            let wanted = if signup_day {
                1 + usize::from(self.motivation > 0.6 && self.rng.gen_bool(0.5))
            } else {
                let recently_done = self.last_completion_day.is_some_and(|d| day - d <= 3);
                let p = 0.03
                    + 0.1 * self.current
                    + if self.goals.is_empty() || recently_done {
                        0.25
                    } else {
                        0.0
                    };
                usize::from(self.rng.gen::<f64>() < p)
            };
            for _ in 0..wanted {
                if self.goals.len() < self.capacity {
                    self.adopt(day, sessions);
                }
            }
        }
        self.abandon(day, sessions);
        let m = self.motivation;
        let mut current = self.current + 0.05 * (m - self.current) + 0.025 * normal(&mut self.rng);
        if checked_in {
            current += 0.006;
        }
        if !active {
            current -= 0.008;
        }
        self.current = current.clamp(0.02, 0.98);
    }

    /// Check-ins (and completions) on today's goals; true if there was at least one.
    fn check_in(&mut self, day: u32, sessions: &[i64]) -> bool {
        let mut any = false;
        let mut i = 0;
        while i < self.goals.len() {
            let (goal, last_touch_day, streak) = {
                let g = &self.goals[i];
                (g.goal, g.last_touch_day, g.streak)
            };
            if last_touch_day == day {
                i += 1; // started today
                continue;
            }
            let difficulty = self.catalogue.goals[goal as usize].difficulty;
            let p = (0.4 + 0.5 * self.current + 0.15 * self.consistency - 0.3 * difficulty
                + 0.05 * f64::from(streak.min(10)) / 10.0)
                .clamp(0.03, 0.97);
            if self.rng.gen::<f64>() >= p {
                i += 1;
                continue;
            }
            any = true;
            let t = self.moment(sessions, 20, 600);
            self.emit(t, Kind::Checkin, Some(goal), None);
            let g = &mut self.goals[i];
            g.streak = if last_touch_day + 1 == day {
                streak + 1
            } else {
                1
            };
            g.last_touch_day = day;
            g.checkins += 1;
            if g.checkins < self.catalogue.goals[goal as usize].required_checkins {
                i += 1;
                continue;
            }
            let done = self.goals.swap_remove(i);
            self.emit(t + 5 * SECOND_MS, Kind::Complete, Some(goal), None);
            if self.rng.gen_bool(0.5) {
                let rating = (2.0 + 3.0 * self.current + 0.7 * normal(&mut self.rng) - difficulty)
                    .round()
                    .clamp(1.0, 5.0) as u8;
                self.emit(t + 20 * SECOND_MS, Kind::Rate, Some(goal), Some(rating));
            }
            if self.rng.gen_bool(0.3) {
                self.emit(t + 30 * SECOND_MS, Kind::Like, Some(goal), None);
            }
            self.outcomes.push(GoalOutcome {
                user: self.id,
                goal,
                started_ms: done.started_ms,
                outcome: Outcome::Completed,
                resolved_ms: Some(t + 5 * SECOND_MS),
            });
            self.current += 0.12 * (1.0 - self.current);
            self.last_completion_day = Some(day);
        }
        any
    }

    /// A goal to look at: mostly from the favourite categories, otherwise by popularity.
    fn browse_pick(&mut self) -> u32 {
        if self.rng.gen_bool(0.7) {
            let category = self.favourites[usize::from(self.rng.gen_bool(0.5))];
            let ids = &self.catalogue.by_category[category];
            ids[self.rng.gen_range(0..ids.len())]
        } else {
            self.catalogue.popular(&mut self.rng)
        }
    }

    fn browse(&mut self, sessions: &[i64]) {
        let views = (self.rng.gen::<f64>() * (1.0 + 3.0 * self.current)) as u32;
        for _ in 0..views {
            let goal = self.browse_pick();
            let t = self.moment(sessions, 30, 900);
            self.emit(t, Kind::View, Some(goal), None);
            if self.rng.gen_bool(0.35) {
                self.emit(t + 10 * SECOND_MS, Kind::Click, Some(goal), None);
                if self.rng.gen::<f64>() < 0.06 * (1.0 + self.current) {
                    self.emit(t + 25 * SECOND_MS, Kind::Like, Some(goal), None);
                }
            }
        }
    }

    /// Adopts a goal not adopted before: favourite categories and popular goals are likelier,
    /// and difficulty close to what the user's motivation suggests (with some over-reaching).
    fn adopt(&mut self, day: u32, sessions: &[i64]) {
        let target = 0.2 + 0.4 * self.motivation + 0.3 * (self.rng.gen::<f64>() - 0.5);
        let mut total = 0.0;
        let weights: Vec<f64> = self
            .catalogue
            .goals
            .iter()
            .map(|g| {
                if self.adopted.contains(&g.id) {
                    return 0.0;
                }
                let fit = ((g.difficulty - target) / 0.2).powi(2);
                let taste = if self.favourites.contains(&g.category) {
                    4.0
                } else {
                    0.5
                };
                let w = taste * g.popularity.sqrt() * (-fit).exp();
                total += w;
                w
            })
            .collect();
        if total <= 0.0 {
            return;
        }
        let mut x = self.rng.gen::<f64>() * total;
        let Some(goal) = weights.iter().position(|&w| {
            x -= w;
            x < 0.0 && w > 0.0
        }) else {
            return;
        };
        let goal = goal as u32;
        let t = self.moment(sessions, 60, 1200);
        self.emit(t, Kind::View, Some(goal), None);
        self.emit(t + 15 * SECOND_MS, Kind::Click, Some(goal), None);
        self.emit(t + 40 * SECOND_MS, Kind::Start, Some(goal), None);
        self.adopted.push(goal);
        self.goals.push(OpenGoal {
            goal,
            started_ms: t + 40 * SECOND_MS,
            last_touch_day: day,
            checkins: 0,
            streak: 0,
        });
    }

    /// Goals not touched today may be given up: explicitly (an `abandon` event) on an active
    /// day, silently otherwise; after 30 untouched days a goal is dropped for sure.
    fn abandon(&mut self, day: u32, sessions: &[i64]) {
        let mut i = 0;
        while i < self.goals.len() {
            let g = &self.goals[i];
            let gap = day - g.last_touch_day;
            if gap == 0 {
                i += 1;
                continue;
            }
            let difficulty = self.catalogue.goals[g.goal as usize].difficulty;
            let low = 1.0 - self.current;
            let hazard = 0.002
                + 0.012 * difficulty * low
                + if gap >= 2 {
                    0.05 * low * f64::from(gap.min(14)) / 14.0
                } else {
                    0.0
                };
            if gap <= 30 && self.rng.gen::<f64>() >= hazard {
                i += 1;
                continue;
            }
            let g = self.goals.swap_remove(i);
            let (outcome, resolved_ms) = if sessions.is_empty() || gap > 30 {
                (Outcome::Dropped, self.start_ms + i64::from(day) * DAY_MS)
            } else {
                let t = self.moment(sessions, 60, 1200);
                self.emit(t, Kind::Abandon, Some(g.goal), None);
                (Outcome::Abandoned, t)
            };
            self.outcomes.push(GoalOutcome {
                user: self.id,
                goal: g.goal,
                started_ms: g.started_ms,
                outcome,
                resolved_ms: Some(resolved_ms),
            });
            self.current -= 0.12 * self.current;
        }
    }
}
