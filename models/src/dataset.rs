//! Labelled training rows for the goal-success and churn models, built from many users'
//! activity logs at a cutoff time.
//!
//! Features are always computed from the events up to the moment they describe (the cutoff, or
//! a goal's start), with [`crate::features`]; labels are read only from the events after it,
//! within a horizon. So a row never sees its own future, and a model trained on rows at one
//! cutoff can be evaluated honestly on rows at a later one. The caller must have observed the
//! whole horizon: `cutoff + horizon` should not be after the end of the data, or late outcomes
//! are missed (successes look like failures, active users look churned).
//!
//! - **Success** ([`success_rows`]): one row per goal. With [`SuccessAnchor::Cutoff`] (the
//!   default, what `GET /v1/users/{id}/predictions/success` answers for a goal in progress) the
//!   goals are those *active* at the cutoff ([`GoalStatus::Active`]), the features are the
//!   user's at the cutoff, and the label is "a `complete` of that goal within
//!   `success_horizon_days` after the cutoff". With [`SuccessAnchor::GoalStart`] the goals are
//!   those adopted (first lifecycle event a `start` or `checkin`) in the `success_lookback_days`
//!   before `cutoff − horizon`, the features are the user's at that adoption (the adopting event
//!   included), and the label is "completed within the horizon after adoption".
//! - **Churn** ([`churn_rows`]): one row per user *active* at the cutoff (an activity event in
//!   the `churn_active_days` before it; users already gone are not scored, as the churn
//!   scheduler does not score them), features at the cutoff, label **churned** = no activity
//!   event (anything but `impression`) in the `churn_horizon_days` after the cutoff.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::clock::DAY_MS;
use crate::events::EventKind;
use crate::features::{self, Activity, FeatureParams, GoalStatus, FEATURE_COUNT};

/// Feature rows and their labels, index for index.
pub type Labelled = (Vec<[f64; FEATURE_COUNT]>, Vec<bool>);

/// When a success row describes a goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuccessAnchor {
    /// Goals active at the cutoff, with the user's features at the cutoff.
    Cutoff,
    /// Goals at their adoption, with the user's features at that moment.
    GoalStart,
}

/// Horizons and windows of the labels; `features` are the feature definitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetParams {
    pub features: FeatureParams,
    /// A goal counts as a success if completed within this many days (default 30).
    pub success_horizon_days: u32,
    /// Which goals a success row describes, and when (default [`SuccessAnchor::Cutoff`]).
    pub success_anchor: SuccessAnchor,
    /// With [`SuccessAnchor::GoalStart`]: goals adopted up to this many days before
    /// `cutoff − success_horizon_days` (default 90).
    pub success_lookback_days: u32,
    /// A user churned if they do nothing for this many days after the cutoff (default 14).
    pub churn_horizon_days: u32,
    /// Only users with activity in this many days before the cutoff get a churn row (default 14).
    pub churn_active_days: u32,
}

impl Default for DatasetParams {
    fn default() -> Self {
        Self {
            features: FeatureParams::default(),
            success_horizon_days: 30,
            success_anchor: SuccessAnchor::Cutoff,
            success_lookback_days: 90,
            churn_horizon_days: 14,
            churn_active_days: 14,
        }
    }
}

/// One user's history, as the dataset builders read it. Implemented for a bare
/// `Vec<Activity>` (signup unknown: experience counts from the first activity) and for
/// [`UserHistory`]. Whoever serves the models must pass the signup time the same way.
pub trait UserLog {
    /// The user's events, sorted by time (an unsorted log is sorted into a copy).
    fn activities(&self) -> &[Activity];
    /// The profile's signup time, if known.
    fn signup_ms(&self) -> Option<i64> {
        None
    }
}

impl UserLog for Vec<Activity> {
    fn activities(&self) -> &[Activity] {
        self
    }
}

/// A user's events with their signup time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserHistory {
    pub signup_ms: Option<i64>,
    pub events: Vec<Activity>,
}

impl UserLog for UserHistory {
    fn activities(&self) -> &[Activity] {
        &self.events
    }

    fn signup_ms(&self) -> Option<i64> {
        self.signup_ms
    }
}

fn sorted(log: &[Activity]) -> Cow<'_, [Activity]> {
    if log.is_sorted_by_key(|a| a.ts_ms) {
        Cow::Borrowed(log)
    } else {
        let mut copy = log.to_vec();
        copy.sort_by_key(|a| a.ts_ms);
        Cow::Owned(copy)
    }
}

/// Index of the first event after `ts_ms` in a sorted log.
fn end_at(log: &[Activity], ts_ms: i64) -> usize {
    log.partition_point(|a| a.ts_ms <= ts_ms)
}

/// Whether `goal` is completed in `(from, to]` of a sorted log.
fn completed_between(log: &[Activity], goal: u32, from: i64, to: i64) -> bool {
    log[end_at(log, from)..end_at(log, to)]
        .iter()
        .any(|a| a.kind == EventKind::Complete && a.goal == Some(goal))
}

/// Goal-success rows at `cutoff_ms` (see the module documentation), users in order and, within
/// a user, goals by id (cutoff anchor) or by adoption time (goal-start anchor).
pub fn success_rows<U, L: UserLog>(
    users: &[(U, L)],
    cutoff_ms: i64,
    params: &DatasetParams,
) -> Labelled {
    success_rows_iter(users.iter().map(|(_, log)| log), cutoff_ms, params)
}

/// [`success_rows`] for any sequence of user logs.
pub fn success_rows_iter<'a, L: UserLog + ?Sized + 'a>(
    users: impl IntoIterator<Item = &'a L>,
    cutoff_ms: i64,
    params: &DatasetParams,
) -> Labelled {
    let horizon_ms = i64::from(params.success_horizon_days) * DAY_MS;
    let fp = &params.features;
    let (mut rows, mut labels) = (Vec::new(), Vec::new());
    for user in users {
        let log = sorted(user.activities());
        let signup = user.signup_ms();
        match params.success_anchor {
            SuccessAnchor::Cutoff => {
                let past = &log[..end_at(&log, cutoff_ms)];
                let mut features = None;
                for goal in features::goal_states(past, cutoff_ms, fp) {
                    if goal.status != GoalStatus::Active {
                        continue;
                    }
                    let row = *features
                        .get_or_insert_with(|| features::compute(past, cutoff_ms, signup, fp));
                    rows.push(row);
                    labels.push(completed_between(
                        &log,
                        goal.goal,
                        cutoff_ms,
                        cutoff_ms + horizon_ms,
                    ));
                }
            }
            SuccessAnchor::GoalStart => {
                let last_start = cutoff_ms - horizon_ms;
                let first_start = last_start - i64::from(params.success_lookback_days) * DAY_MS;
                for (goal, start_ts) in adoptions(&log[..end_at(&log, last_start)]) {
                    if start_ts < first_start {
                        continue;
                    }
                    let past = &log[..end_at(&log, start_ts)];
                    rows.push(features::compute(past, start_ts, signup, fp));
                    labels.push(completed_between(
                        &log,
                        goal,
                        start_ts,
                        start_ts + horizon_ms,
                    ));
                }
            }
        }
    }
    (rows, labels)
}

/// `(goal, time)` of every goal whose first lifecycle event is a `start` or `checkin`, in time
/// order.
fn adoptions(log: &[Activity]) -> Vec<(u32, i64)> {
    let mut seen: Vec<u32> = Vec::new(); // sorted goal ids with a lifecycle event
    let mut adopted = Vec::new();
    for a in log {
        let Some(goal) = a.goal else { continue };
        if !matches!(
            a.kind,
            EventKind::Start | EventKind::Checkin | EventKind::Complete | EventKind::Abandon
        ) {
            continue;
        }
        if let Err(i) = seen.binary_search(&goal) {
            seen.insert(i, goal);
            if matches!(a.kind, EventKind::Start | EventKind::Checkin) {
                adopted.push((goal, a.ts_ms));
            }
        }
    }
    adopted
}

/// Churn rows at `cutoff_ms` (see the module documentation), users in order; the label is
/// `true` for a user who churned.
pub fn churn_rows<U, L: UserLog>(
    users: &[(U, L)],
    cutoff_ms: i64,
    params: &DatasetParams,
) -> Labelled {
    churn_rows_iter(users.iter().map(|(_, log)| log), cutoff_ms, params)
}

/// [`churn_rows`] for any sequence of user logs.
pub fn churn_rows_iter<'a, L: UserLog + ?Sized + 'a>(
    users: impl IntoIterator<Item = &'a L>,
    cutoff_ms: i64,
    params: &DatasetParams,
) -> Labelled {
    let active_ms = i64::from(params.churn_active_days) * DAY_MS;
    let horizon_end = cutoff_ms + i64::from(params.churn_horizon_days) * DAY_MS;
    let is_activity = |a: &&Activity| a.kind != EventKind::Impression;
    let (mut rows, mut labels) = (Vec::new(), Vec::new());
    for user in users {
        let log = sorted(user.activities());
        let split = end_at(&log, cutoff_ms);
        let (past, future) = log.split_at(split);
        let Some(last) = past.iter().rev().find(is_activity) else {
            continue;
        };
        if cutoff_ms - last.ts_ms > active_ms {
            continue;
        }
        let returned = future[..end_at(future, horizon_end)]
            .iter()
            .any(|a| is_activity(&a));
        rows.push(features::compute(
            past,
            cutoff_ms,
            user.signup_ms(),
            &params.features,
        ));
        labels.push(!returned);
    }
    (rows, labels)
}

/// The rows as the classifiers of [`crate::predict`] take them.
pub fn to_rows(rows: &[[f64; FEATURE_COUNT]]) -> Vec<Vec<f64>> {
    rows.iter().map(|r| r.to_vec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Features;
    use EventKind::*;

    const CUTOFF: i64 = 500 * DAY_MS;

    /// An event `days` (fractional) after the cutoff (negative: before).
    fn at(days: f64, kind: EventKind, goal: Option<u32>) -> Activity {
        Activity::new(CUTOFF + (days * DAY_MS as f64) as i64, kind, goal)
    }

    fn users(logs: Vec<Vec<Activity>>) -> Vec<(String, Vec<Activity>)> {
        logs.into_iter()
            .enumerate()
            .map(|(i, log)| (format!("u{i}"), log))
            .collect()
    }

    #[test]
    fn success_at_cutoff_labels_active_goals_by_later_completion() {
        let log = vec![
            at(-20.0, Start, Some(1)),
            at(-3.0, Checkin, Some(1)), // active at the cutoff
            at(-10.0, Start, Some(2)),
            at(-2.0, Checkin, Some(2)), // active
            at(-40.0, Start, Some(3)),  // idle: no row
            at(-5.0, Start, Some(4)),
            at(-4.0, Complete, Some(4)), // already done: no row
            at(10.0, Complete, Some(1)), // within 30 days: success
            at(31.0, Complete, Some(2)), // too late: failure
        ];
        let data = users(vec![log.clone(), vec![at(-1.0, AppOpen, None)]]);
        let (rows, labels) = success_rows(&data, CUTOFF, &DatasetParams::default());
        assert_eq!(labels, [true, false]);
        let past: Vec<Activity> = log.iter().copied().filter(|a| a.ts_ms <= CUTOFF).collect();
        let expected = Features::compute(&past, CUTOFF, None, &FeatureParams::default()).to_array();
        assert_eq!(rows, [expected, expected]);
        assert_eq!(rows[0][6], 2.0, "two active goals");
    }

    #[test]
    fn success_at_goal_start_uses_the_features_of_that_moment() {
        let params = DatasetParams {
            success_anchor: SuccessAnchor::GoalStart,
            ..DatasetParams::default()
        };
        let log = vec![
            at(-200.0, Start, Some(9)), // before the lookback: no row
            at(-60.0, Start, Some(1)),
            at(-50.0, Complete, Some(1)), // completed in 10 days: success
            at(-45.0, Checkin, Some(2)),  // adopted by a check-in
            at(-40.0, Checkin, Some(2)),  // not completed
            at(-35.0, Complete, Some(3)), // never adopted: no row
            at(-20.0, Start, Some(4)),    // too recent for a 30-day horizon: no row
            at(-5.0, Complete, Some(4)),
        ];
        let (rows, labels) = success_rows(&users(vec![log.clone()]), CUTOFF, &params);
        assert_eq!(labels, [true, false]);
        let f = FeatureParams::default();
        assert_eq!(
            rows[0],
            features::compute(&log[..2], log[1].ts_ms, None, &f)
        );
        assert_eq!(
            rows[1],
            features::compute(&log[..4], log[3].ts_ms, None, &f)
        );
        assert_eq!(rows[0][6], 1.0, "the started goal is active");
    }

    #[test]
    fn churn_rows_score_active_users_only() {
        let logs = vec![
            // Active before, back after 5 days: not churned.
            vec![at(-3.0, Checkin, Some(1)), at(5.0, AppOpen, None)],
            // Active before, silent for 14 days (an impression is not activity): churned.
            vec![
                at(-1.0, AppOpen, None),
                at(2.0, Impression, Some(1)),
                at(15.0, AppOpen, None),
            ],
            // Gone for 20 days already: no row.
            vec![at(-20.0, AppOpen, None), at(1.0, AppOpen, None)],
            // Signed up after the cutoff: no row.
            vec![at(1.0, AppOpen, None)],
        ];
        let (rows, labels) = churn_rows(&users(logs), CUTOFF, &DatasetParams::default());
        assert_eq!(labels, [false, true]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1][5], 1.0, "days since last activity at the cutoff");
    }

    #[test]
    fn signup_and_unsorted_logs_are_honoured() {
        let history = UserHistory {
            signup_ms: Some(CUTOFF - 50 * DAY_MS),
            events: vec![at(20.0, AppOpen, None), at(-2.0, AppOpen, None)],
        };
        let (rows, labels) = churn_rows_iter([&history], CUTOFF, &DatasetParams::default());
        assert_eq!(labels, [true]);
        assert_eq!(rows[0][4], 50.0, "experience from the signup");
        assert_eq!(to_rows(&rows), vec![rows[0].to_vec()]);
    }
}
