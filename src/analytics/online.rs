//! Online accuracy of the success model: every success prediction served for a (user, goal) is
//! remembered (the last one per pair), and when the goal's outcome arrives it is compared with
//! it. The comparisons feed a rolling window whose accuracy and F1 are the gauges
//! `momentum_model_online_accuracy{model="success"}` and `momentum_model_online_f1`, the
//! signal behind the "accuracy drop > 5 %" alert.
//!
//! The label is the training label (`momentum_models::dataset`): "completed within
//! `horizon` after the prediction". So
//! - a `complete` event within the horizon resolves the prediction as positive,
//! - an `abandon` event, or a `complete` after the horizon, resolves it as negative,
//! - a prediction that sees no outcome within the horizon expires as negative (the goal idled
//!   out), checked whenever a prediction or an outcome is recorded.
//!
//! Bounded: at most `capacity` predictions are remembered; beyond it the oldest is forgotten
//! without counting (there is no evidence about it yet). The order queue may hold stale entries
//! of pairs predicted again; it is compacted when it grows past twice the capacity.

use std::collections::{HashMap, VecDeque};

use momentum_models::bounded::BoundedFifo;
use parking_lot::Mutex;

/// One served prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Served {
    predicted: bool,
    served_ms: i64,
}

/// Counts of the rolling window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OnlineScore {
    pub outcomes: usize,
    pub accuracy: f64,
    pub f1: f64,
}

#[derive(Debug)]
struct State {
    served: HashMap<u64, Served>,
    /// (key, served_ms) in serving order; entries whose `served_ms` no longer matches the map
    /// are stale.
    order: VecDeque<(u64, i64)>,
    /// (predicted, actual) of the last `window` resolved predictions.
    window: BoundedFifo<(bool, bool)>,
}

/// The bookkeeping described in the module docs.
#[derive(Debug)]
pub struct OnlineAccuracy {
    state: Mutex<State>,
    capacity: usize,
    horizon_ms: i64,
}

fn key(user: u32, goal: u32) -> u64 {
    (u64::from(user) << 32) | u64::from(goal)
}

impl OnlineAccuracy {
    pub fn new(capacity: usize, window: usize, horizon_ms: i64) -> Self {
        OnlineAccuracy {
            state: Mutex::new(State {
                served: HashMap::new(),
                order: VecDeque::new(),
                window: BoundedFifo::new(window.max(1)),
            }),
            capacity: capacity.max(1),
            horizon_ms,
        }
    }

    /// Remembers a served prediction (replacing the pair's previous one). Returns the outcomes
    /// resolved by expiry, if any.
    pub fn record_prediction(
        &self,
        user: u32,
        goal: u32,
        predicted: bool,
        now_ms: i64,
    ) -> Option<OnlineScore> {
        let mut s = self.state.lock();
        let expired = self.expire(&mut s, now_ms);
        let k = key(user, goal);
        s.served.insert(
            k,
            Served {
                predicted,
                served_ms: now_ms,
            },
        );
        s.order.push_back((k, now_ms));
        while s.served.len() > self.capacity {
            let Some((old, at)) = s.order.pop_front() else {
                break;
            };
            if s.served.get(&old).is_some_and(|e| e.served_ms == at) {
                s.served.remove(&old);
            }
        }
        if s.order.len() > 2 * self.capacity {
            let State { served, order, .. } = &mut *s;
            order.retain(|(k, at)| served.get(k).is_some_and(|e| e.served_ms == *at));
        }
        (expired > 0).then(|| self.score(&s))
    }

    /// A goal's outcome at `ts_ms` (`completed`: a `complete` event, else `abandon`). Returns
    /// the new score if the pair had a prediction (or predictions expired).
    pub fn observe_outcome(
        &self,
        user: u32,
        goal: u32,
        completed: bool,
        ts_ms: i64,
        now_ms: i64,
    ) -> Option<OnlineScore> {
        let mut s = self.state.lock();
        let expired = self.expire(&mut s, now_ms);
        let resolved = match s.served.remove(&key(user, goal)) {
            Some(served) => {
                let actual = completed && ts_ms <= served.served_ms + self.horizon_ms;
                self.push(&mut s, served.predicted, actual);
                true
            }
            None => false,
        };
        (resolved || expired > 0).then(|| self.score(&s))
    }

    /// Whether any prediction is remembered (the event hook skips its lookups otherwise).
    pub fn is_empty(&self) -> bool {
        self.state.lock().served.is_empty()
    }

    /// The current rolling score.
    pub fn current(&self) -> OnlineScore {
        self.score(&self.state.lock())
    }

    /// Resolves predictions older than the horizon as negatives; returns how many.
    fn expire(&self, s: &mut State, now_ms: i64) -> usize {
        let mut n = 0;
        while let Some(&(k, at)) = s.order.front() {
            if at.saturating_add(self.horizon_ms) >= now_ms {
                break;
            }
            s.order.pop_front();
            if let Some(served) = s.served.get(&k).copied() {
                if served.served_ms == at {
                    s.served.remove(&k);
                    self.push(s, served.predicted, false);
                    n += 1;
                }
            }
        }
        n
    }

    fn push(&self, s: &mut State, predicted: bool, actual: bool) {
        s.window.push((predicted, actual));
    }

    fn score(&self, s: &State) -> OnlineScore {
        let (mut tp, mut fp, mut fn_, mut correct) = (0usize, 0usize, 0usize, 0usize);
        for &(p, a) in s.window.iter() {
            correct += usize::from(p == a);
            match (p, a) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fn_ += 1,
                (false, false) => {}
            }
        }
        let n = s.window.len();
        let f1 = if tp == 0 {
            0.0
        } else {
            2.0 * tp as f64 / (2 * tp + fp + fn_) as f64
        };
        OnlineScore {
            outcomes: n,
            accuracy: if n == 0 {
                0.0
            } else {
                correct as f64 / n as f64
            },
            f1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = momentum_models::clock::DAY_MS;

    #[test]
    fn outcomes_are_compared_with_the_last_prediction_of_the_pair() {
        let o = OnlineAccuracy::new(100, 10, 30 * DAY);
        assert!(
            o.observe_outcome(1, 1, true, 0, 0).is_none(),
            "nothing served"
        );
        o.record_prediction(1, 1, false, 0);
        o.record_prediction(1, 1, true, DAY); // replaces the first
        o.record_prediction(2, 1, true, DAY);
        o.record_prediction(3, 1, false, DAY);
        let s = o.observe_outcome(1, 1, true, 2 * DAY, 2 * DAY).unwrap();
        assert_eq!((s.outcomes, s.accuracy, s.f1), (1, 1.0, 1.0));
        // The pair is resolved: a second event does not count twice.
        assert!(o.observe_outcome(1, 1, true, 3 * DAY, 3 * DAY).is_none());
        let s = o.observe_outcome(2, 1, false, 3 * DAY, 3 * DAY).unwrap(); // abandoned: fp
        assert_eq!(s.outcomes, 2);
        assert_eq!(s.accuracy, 0.5);
        assert!((s.f1 - 2.0 / 3.0).abs() < 1e-12);
        let s = o.observe_outcome(3, 1, false, 3 * DAY, 3 * DAY).unwrap(); // tn
        assert!((s.accuracy - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn late_completions_and_silent_goals_count_as_failures() {
        let o = OnlineAccuracy::new(100, 10, 30 * DAY);
        o.record_prediction(1, 1, true, 0);
        let s = o.observe_outcome(1, 1, true, 31 * DAY, 29 * DAY).unwrap();
        assert_eq!(
            (s.outcomes, s.accuracy),
            (1, 0.0),
            "completed after the horizon"
        );
        o.record_prediction(2, 2, false, 0);
        o.record_prediction(3, 3, true, 0);
        // 31 days later anything is recorded: both expire as "not completed".
        let s = o.record_prediction(4, 4, true, 31 * DAY).unwrap();
        assert_eq!(s.outcomes, 3);
        assert!((s.accuracy - 1.0 / 3.0).abs() < 1e-12, "{s:?}");
        assert!(!o.is_empty(), "the new prediction is remembered");
    }

    #[test]
    fn memory_and_window_are_bounded() {
        let o = OnlineAccuracy::new(10, 5, 30 * DAY);
        for i in 0..1000u32 {
            o.record_prediction(i, i, true, i64::from(i));
        }
        {
            let s = o.state.lock();
            assert_eq!(s.served.len(), 10);
            assert!(s.order.len() <= 20);
        }
        // The oldest were forgotten without counting.
        assert!(o.observe_outcome(0, 0, true, 2000, 2000).is_none());
        for i in 990..1000u32 {
            o.observe_outcome(i, i, true, 2000, 2000);
        }
        assert_eq!(o.current().outcomes, 5);
        assert!(o.is_empty());
        // Predicting the same pair again and again keeps the queue bounded too.
        for t in 0..1000 {
            o.record_prediction(7, 7, true, 3000 + t);
        }
        assert!(o.state.lock().order.len() <= 20);
    }
}
