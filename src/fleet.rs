//! Which model versions the phones in the field serve: every request that carries
//! `X-Model-Version` (the `device` crate sends it on each model check and download) is
//! remembered per device, and `momentum_model_version_active{version}` counts the devices seen
//! in the last `window` by the version they reported last — the seed's "model version
//! distribution", and the way to see a rollout progress.
//!
//! A device is its `X-Device-Id` header (an opaque id the app chooses; at most 64 printable
//! ASCII characters) or, without one, the peer address. Bounded on both axes: at most
//! [`MAX_DEVICES`] devices are remembered (when full, entries older than the window are
//! dropped; if that frees nothing, new devices are not tracked until it does), and at most
//! [`MAX_VERSIONS`] distinct version labels exist (others are counted as `other`), so a hostile
//! client cannot blow up the label set. Version values are `none` or a decimal number.

use momentum_models::protocol::{DEVICE_ID_HEADER, MODEL_VERSION_HEADER};
use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// Devices remembered at most.
pub const MAX_DEVICES: usize = 100_000;
/// Distinct `version` label values at most (besides `other`).
pub const MAX_VERSIONS: usize = 32;

#[derive(Debug)]
struct Seen {
    version: String,
    at_ms: i64,
}

#[derive(Debug, Default)]
struct Inner {
    devices: HashMap<String, Seen>,
    /// Every label value ever set, so a version nobody serves any more drops to 0.
    labels: Vec<String>,
}

/// The model-version distribution and the download counters.
#[derive(Debug)]
pub struct Fleet {
    window_ms: i64,
    inner: Mutex<Inner>,
    active: IntGaugeVec,
    /// Downloads by model, version and result (`200`, `304`).
    pub downloads: IntCounterVec,
}

/// A `version` header value as a label: `none`, a decimal number, or `None` if malformed.
pub fn version_label(value: &str) -> Option<&str> {
    let ok = value == "none"
        || (!value.is_empty() && value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(value)
}

/// A device id header value, if acceptable.
pub fn device_id(value: &str) -> Option<&str> {
    (!value.is_empty() && value.len() <= 64 && value.bytes().all(|b| b.is_ascii_graphic()))
        .then_some(value)
}

impl Fleet {
    pub fn new(registry: &Registry, window: Duration) -> prometheus::Result<Fleet> {
        let active = IntGaugeVec::new(
            Opts::new(
                "momentum_model_version_active",
                "Devices seen within the activity window, by the model version they serve",
            ),
            &["version"],
        )?;
        let downloads = IntCounterVec::new(
            Opts::new(
                "momentum_model_downloads_total",
                "Model file requests by model, version and result (200 sent, 304 up to date)",
            ),
            &["model", "version", "result"],
        )?;
        registry.register(Box::new(active.clone()))?;
        registry.register(Box::new(downloads.clone()))?;
        Ok(Fleet {
            window_ms: i64::try_from(window.as_millis()).unwrap_or(i64::MAX),
            inner: Mutex::new(Inner::default()),
            active,
            downloads,
        })
    }

    /// Notes the model version a request reports (`X-Model-Version`), keyed by `X-Device-Id`
    /// or the peer address.
    pub fn record_request(&self, req: &actix_web::dev::ServiceRequest, now_ms: i64) {
        let headers = req.headers();
        let Some(version) = headers
            .get(MODEL_VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        let device = headers
            .get(DEVICE_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(device_id)
            .map(str::to_string)
            .or_else(|| req.peer_addr().map(|a| a.ip().to_string()));
        if let Some(device) = device {
            self.record(&device, version, now_ms);
        }
    }

    /// Notes that `device` serves `version` (a raw header value) at `now_ms`.
    pub fn record(&self, device: &str, version: &str, now_ms: i64) {
        let Some(version) = version_label(version) else {
            return;
        };
        let mut inner = self.inner.lock();
        let label = if inner.labels.iter().any(|l| l == version) {
            version.to_string()
        } else if inner.labels.len() < MAX_VERSIONS {
            inner.labels.push(version.to_string());
            version.to_string()
        } else {
            "other".to_string()
        };
        if let Some(seen) = inner.devices.get_mut(device) {
            seen.version = label;
            seen.at_ms = now_ms;
            return;
        }
        if inner.devices.len() >= MAX_DEVICES {
            let oldest_kept = now_ms.saturating_sub(self.window_ms);
            inner.devices.retain(|_, s| s.at_ms >= oldest_kept);
            if inner.devices.len() >= MAX_DEVICES {
                return;
            }
        }
        inner.devices.insert(
            device.to_string(),
            Seen {
                version: label,
                at_ms: now_ms,
            },
        );
    }

    /// Recomputes `momentum_model_version_active` as of `now_ms` (called on each scrape) and
    /// forgets devices older than the window. Returns the counts it set.
    pub fn refresh(&self, now_ms: i64) -> Vec<(String, i64)> {
        let oldest_kept = now_ms.saturating_sub(self.window_ms);
        let mut inner = self.inner.lock();
        inner.devices.retain(|_, s| s.at_ms >= oldest_kept);
        let mut counts: HashMap<&str, i64> = HashMap::new();
        for seen in inner.devices.values() {
            *counts.entry(seen.version.as_str()).or_default() += 1;
        }
        let mut out: Vec<(String, i64)> = inner
            .labels
            .iter()
            .map(String::as_str)
            .chain(std::iter::once("other"))
            .map(|l| (l.to_string(), counts.get(l).copied().unwrap_or(0)))
            .collect();
        out.retain(|(l, n)| *n > 0 || l != "other");
        for (label, n) in &out {
            self.active.with_label_values(&[label]).set(*n);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: i64 = 3_600_000;

    fn fleet() -> Fleet {
        Fleet::new(&Registry::new(), Duration::from_secs(24 * 3600)).expect("metrics")
    }

    fn count(fleet: &Fleet, now: i64, version: &str) -> i64 {
        fleet
            .refresh(now)
            .into_iter()
            .find(|(l, _)| l == version)
            .map_or(0, |(_, n)| n)
    }

    #[test]
    fn devices_count_once_under_their_latest_version_within_the_window() {
        let f = fleet();
        f.record("a", "3", 0);
        f.record("b", "3", 0);
        f.record("c", "none", 0);
        assert_eq!(count(&f, HOUR_MS, "3"), 2);
        assert_eq!(count(&f, HOUR_MS, "none"), 1);
        f.record("a", "4", HOUR_MS);
        assert_eq!(count(&f, HOUR_MS, "3"), 1);
        assert_eq!(count(&f, HOUR_MS, "4"), 1);
        // b and c age out after a day; a was seen an hour later.
        let later = 24 * HOUR_MS + HOUR_MS / 2;
        assert_eq!(count(&f, later, "3"), 0, "the label stays, at 0");
        assert_eq!(count(&f, later, "4"), 1);
        assert_eq!(count(&f, later, "none"), 0);
    }

    #[test]
    fn malformed_values_are_ignored_and_labels_are_bounded() {
        let f = fleet();
        for bad in ["", "v3", "1.2", "-1", "123456789012345678901", "none "] {
            f.record("x", bad, 0);
        }
        assert!(f.refresh(0).is_empty());
        for v in 0..(MAX_VERSIONS + 10) {
            f.record(&format!("d{v}"), &v.to_string(), 0);
        }
        let counts = f.refresh(0);
        assert_eq!(counts.len(), MAX_VERSIONS + 1, "{counts:?}");
        assert_eq!(count(&f, 0, "other"), 10);
        assert_eq!(device_id("phone-1"), Some("phone-1"));
        assert_eq!(device_id("a b"), None);
        assert_eq!(device_id(&"x".repeat(65)), None);
    }

    #[test]
    fn the_device_table_is_bounded_and_makes_room_from_expired_entries() {
        let f = fleet();
        for d in 0..MAX_DEVICES {
            f.record(&d.to_string(), "1", 0);
        }
        f.record("new", "2", HOUR_MS);
        assert_eq!(count(&f, HOUR_MS, "2"), 0, "full: not tracked");
        let day = 24 * HOUR_MS + 1;
        f.record("new", "2", day);
        assert_eq!(count(&f, day, "2"), 1, "expired entries made room");
        assert_eq!(count(&f, day, "1"), 0);
    }
}
