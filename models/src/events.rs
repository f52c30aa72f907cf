//! Interaction events and the implicit-feedback weight they leave on a (user, item) cell.
//!
//! The weight of a cell is the clamped running sum of the implicit weights of its events plus
//! the latest explicit rating. It is the single value the similarity code sees, so the server,
//! the offline evaluation and the batch reference in tests all go through [`Interaction::apply`].

use serde::{Deserialize, Serialize};

/// The kinds of event Momentum understands (README, "REST API").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    View,
    Click,
    Start,
    Checkin,
    Complete,
    Abandon,
    Like,
    Rate,
    AppOpen,
    Impression,
}

impl EventKind {
    /// Every kind, in a stable order (used for metric labels and bit positions).
    pub const ALL: [EventKind; 10] = [
        EventKind::View,
        EventKind::Click,
        EventKind::Start,
        EventKind::Checkin,
        EventKind::Complete,
        EventKind::Abandon,
        EventKind::Like,
        EventKind::Rate,
        EventKind::AppOpen,
        EventKind::Impression,
    ];

    /// The wire name, as in the JSON API and the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::View => "view",
            EventKind::Click => "click",
            EventKind::Start => "start",
            EventKind::Checkin => "checkin",
            EventKind::Complete => "complete",
            EventKind::Abandon => "abandon",
            EventKind::Like => "like",
            EventKind::Rate => "rate",
            EventKind::AppOpen => "app_open",
            EventKind::Impression => "impression",
        }
    }

    /// Parses a wire name; `None` for anything unknown.
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether events of this kind must name an item (`app_open` is about the app itself).
    pub fn needs_item(self) -> bool {
        !matches!(self, EventKind::AppOpen)
    }

    /// A bit unique to this kind, for the per-cell set of kinds seen.
    pub fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// Implicit weight per event kind. `rate` carries its own value and `abandon` is negative.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindWeights {
    pub view: f32,
    pub click: f32,
    pub start: f32,
    pub checkin: f32,
    pub complete: f32,
    pub abandon: f32,
    pub like: f32,
    pub app_open: f32,
    pub impression: f32,
    /// Upper bound of a cell's weight, so one user's thousand views cannot dominate a cosine.
    pub max_weight: f32,
    /// Largest accepted `rate` value (ratings are `0..=max_rating`).
    pub max_rating: f32,
}

impl Default for KindWeights {
    fn default() -> Self {
        KindWeights {
            view: 1.0,
            click: 2.0,
            start: 3.0,
            checkin: 2.0,
            complete: 5.0,
            abandon: -2.0,
            like: 4.0,
            app_open: 0.0,
            impression: 0.0,
            max_weight: 20.0,
            max_rating: 10.0,
        }
    }
}

impl KindWeights {
    /// The implicit weight of a kind (`rate` has none: its value is the rating).
    pub fn implicit(&self, kind: EventKind) -> f32 {
        match kind {
            EventKind::View => self.view,
            EventKind::Click => self.click,
            EventKind::Start => self.start,
            EventKind::Checkin => self.checkin,
            EventKind::Complete => self.complete,
            EventKind::Abandon => self.abandon,
            EventKind::Like => self.like,
            EventKind::AppOpen => self.app_open,
            EventKind::Impression => self.impression,
            EventKind::Rate => 0.0,
        }
    }
}

/// Cell weights are multiples of `1 / WEIGHT_QUANTUM` (see [`Interaction::weight`]).
pub const WEIGHT_QUANTUM: f32 = 1024.0;

/// What a user has done with one item.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    /// Running sum of implicit weights, clamped at 0 after every event.
    pub implicit: f32,
    /// The latest explicit rating, if any.
    pub rating: Option<f32>,
    /// Set of kinds seen ([`EventKind::bit`]).
    pub kinds: u16,
    /// Unix milliseconds of the latest event.
    pub last_ts: i64,
}

impl Interaction {
    /// Applies one event. `value` is only read for `rate` (validated by the caller).
    pub fn apply(
        &mut self,
        kind: EventKind,
        value: Option<f32>,
        ts_ms: i64,
        weights: &KindWeights,
    ) {
        if kind == EventKind::Rate {
            self.rating = value.map(|v| v.clamp(0.0, weights.max_rating));
        } else {
            self.implicit = (self.implicit + weights.implicit(kind)).max(0.0);
        }
        self.kinds |= kind.bit();
        self.last_ts = self.last_ts.max(ts_ms);
    }

    /// The cell weight seen by similarity: implicit sum plus rating, capped, and quantised to
    /// a multiple of 2⁻¹⁰. With quantised weights every product of two weights is a multiple
    /// of 2⁻²⁰ well inside f64's 53-bit mantissa, so co-occurrence dot products and norms are
    /// exact whatever order updates arrive in: a state rebuilt from a snapshot equals the live
    /// one bit for bit.
    pub fn weight(&self, weights: &KindWeights) -> f32 {
        let raw = (self.implicit + self.rating.unwrap_or(0.0)).min(weights.max_weight);
        (raw * WEIGHT_QUANTUM).round() / WEIGHT_QUANTUM
    }

    /// Whether any of the kinds in `mask` was seen.
    pub fn has_any(&self, mask: u16) -> bool {
        self.kinds & mask != 0
    }
}

/// Bit mask of a set of kinds.
pub fn kind_mask(kinds: &[EventKind]) -> u16 {
    kinds.iter().fold(0, |m, k| m | k.bit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("purchase"), None);
        assert_eq!(EventKind::parse("View"), None);
    }

    #[test]
    fn abandon_clamps_at_zero_and_rating_replaces() {
        let w = KindWeights::default();
        let mut c = Interaction::default();
        c.apply(EventKind::View, None, 1, &w);
        c.apply(EventKind::Abandon, None, 2, &w);
        assert_eq!(c.implicit, 0.0);
        c.apply(EventKind::Complete, None, 3, &w);
        c.apply(EventKind::Rate, Some(4.0), 4, &w);
        c.apply(EventKind::Rate, Some(2.0), 5, &w);
        assert_eq!(c.weight(&w), 7.0);
        assert!(c.has_any(kind_mask(&[EventKind::Complete])));
        assert!(!c.has_any(kind_mask(&[EventKind::Like])));
        assert_eq!(c.last_ts, 5);
    }

    #[test]
    fn weights_are_quantised_so_sums_are_exact() {
        let w = KindWeights::default();
        let mut c = Interaction::default();
        c.apply(EventKind::Rate, Some(3.7), 0, &w);
        let q = c.weight(&w);
        assert_eq!(q * WEIGHT_QUANTUM, (q * WEIGHT_QUANTUM).round());
        assert!((q - 3.7).abs() <= 0.5 / WEIGHT_QUANTUM);
        // Products summed in any order give the same f64.
        let products: Vec<f64> = [q, 1.0, 19.5, 0.0009765625]
            .iter()
            .map(|&x| f64::from(x) * f64::from(q))
            .collect();
        let forward: f64 = products.iter().sum();
        let backward: f64 = products.iter().rev().sum();
        assert_eq!(forward.to_bits(), backward.to_bits());
    }

    #[test]
    fn weight_is_capped() {
        let w = KindWeights::default();
        let mut c = Interaction::default();
        for t in 0..100 {
            c.apply(EventKind::Complete, None, t, &w);
        }
        assert_eq!(c.weight(&w), w.max_weight);
    }
}
