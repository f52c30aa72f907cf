//! Time as the whole workspace sees it: one [`Clock`] trait, the system clock, a manual clock
//! for tests and replays, and the day arithmetic of unix-millisecond timestamps.
//!
//! Everything time-driven (the server's jobs, the device's feature cache) reads the time through
//! an injected `Arc<dyn Clock>`, so tests move a [`ManualClock`] instead of sleeping. Code with
//! no clock to inject (a request handler stamping a row) calls [`now_ms`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// The day number (days since the unix epoch, UTC) of a unix-millisecond timestamp; times
/// before the epoch fall on negative days.
pub fn day_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(DAY_MS)
}

/// The first millisecond of a day number.
pub fn day_start_ms(day: i64) -> i64 {
    day.saturating_mul(DAY_MS)
}

/// `days` whole days in milliseconds.
pub fn days_ms(days: u32) -> i64 {
    i64::from(days) * DAY_MS
}

/// Now by the system clock, unix milliseconds (0 before the epoch, `i64::MAX` far after it).
pub fn now_ms() -> i64 {
    SystemClock.now_ms()
}

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// Now, unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A clock that only moves when told to (tests, replays).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        Self(AtomicI64::new(now_ms))
    }

    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_and_floor_before_the_epoch() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(DAY_MS - 1), 0);
        assert_eq!(day_of(DAY_MS), 1);
        assert_eq!(day_of(-1), -1);
        assert_eq!(day_start_ms(day_of(20_000 * DAY_MS + 5)), 20_000 * DAY_MS);
        assert_eq!(days_ms(90), 90 * DAY_MS);
    }

    #[test]
    fn the_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1000);
        assert_eq!(clock.now_ms(), 1000);
        clock.advance(Duration::from_secs(2));
        assert_eq!(clock.now_ms(), 3000);
        clock.set(7);
        assert_eq!(clock.now_ms(), 7);
        assert!(
            now_ms() > 1_600_000_000_000,
            "the system clock is after 2020"
        );
    }
}
