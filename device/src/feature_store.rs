//! The on-device feature store: the ten features of each user, computed with the **same**
//! [`momentum_models::features::compute`] the server and the trainer use, cached with a TTL,
//! and persisted to a local file so the app can predict offline right after a cold start.
//!
//! - **Cache.** An entry is reused while it is younger than the TTL (1 h by default, on the
//!   injected [`Clock`]) *and* the user's log still has the same fingerprint — its length and
//!   its first and last events, O(1) — so an appended event recomputes at once. The log is
//!   assumed append-only (old events may be trimmed at the front), as the server's per-user
//!   log is.
//! - **Bounded.** Every entry has a fixed encoded size (`106 bytes + user id`); when the total
//!   (the file's size) would exceed `max_bytes` (10 MB by default), the oldest entries are
//!   evicted first.
//! - **File.** `MFS1 | u32 count | entries | sha256 of everything before`, little-endian,
//!   written to a temporary file and renamed. On open, a file that is truncated, has a bad
//!   magic or checksum, or holds an impossible entry is discarded as a whole with a warning
//!   (logged, and returned in the [`LoadReport`]) — never a panic, never half a file.
//! - **GDPR.** [`FeatureStore::remove_user`] forgets one user, [`FeatureStore::clear`] everyone
//!   and deletes the file.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use momentum_models::clock::Clock;
use momentum_models::features::{self, Activity, FeatureParams, Features, FEATURE_COUNT};
use parking_lot::Mutex;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::manager::write_atomic;
use crate::DeviceError;

const MAGIC: &[u8; 4] = b"MFS1";
/// Magic, count and trailing checksum.
const FILE_OVERHEAD: usize = 4 + 4 + 32;
/// Encoded entry size besides the user id: id length, as-of, computed-at, fingerprint, values.
const ENTRY_OVERHEAD: usize = 2 + 8 + 8 + 8 + 8 * FEATURE_COUNT;
/// Longest user id stored (the API's ids are at most 128 bytes).
const MAX_ID_LEN: usize = 1024;

/// Settings of a [`FeatureStore`].
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStoreConfig {
    /// How long computed features are reused (default 1 h).
    pub ttl: Duration,
    /// Bound on the encoded size of all entries, i.e. the file (default 10 MB).
    pub max_bytes: usize,
    /// Where the store is persisted; `None` keeps it in memory only.
    pub path: Option<PathBuf>,
    /// Feature definitions; must equal the serving model's (its metadata carries them).
    pub params: FeatureParams,
}

impl Default for FeatureStoreConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            max_bytes: 10 * 1024 * 1024,
            path: None,
            params: FeatureParams::default(),
        }
    }
}

/// Features of one user with when they were computed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CachedFeatures {
    pub features: Features,
    /// The `now` the features describe (unix ms).
    pub as_of_ms: i64,
    /// Whether they came from the cache.
    pub cached: bool,
    /// Whether they are younger than the TTL.
    pub fresh: bool,
}

/// What [`FeatureStore::open`] found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Entries loaded.
    pub loaded: usize,
    /// Entries dropped to respect `max_bytes`.
    pub evicted: usize,
    /// Why the file was discarded, if it was.
    pub warning: Option<String>,
}

/// Counters of a [`FeatureStore`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct FeatureStoreStats {
    pub entries: usize,
    /// Encoded size of the entries plus the file overhead.
    pub bytes: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    /// `hits / (hits + misses)`, 0 before any lookup.
    pub hit_rate: f64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    features: Features,
    as_of_ms: i64,
    computed_ms: i64,
    fingerprint: u64,
    /// Insertion order, to break ties between entries computed in the same millisecond.
    seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Oldest first: `(computed_ms, seq)` → user id.
    by_age: BTreeMap<(i64, u64), String>,
    /// Encoded size of all entries.
    bytes: usize,
    seq: u64,
}

impl Inner {
    fn remove(&mut self, user_id: &str) -> Option<Entry> {
        let entry = self.entries.remove(user_id)?;
        self.by_age.remove(&(entry.computed_ms, entry.seq));
        self.bytes -= ENTRY_OVERHEAD + user_id.len();
        Some(entry)
    }

    /// Inserts (replacing the user's entry) and evicts the oldest entries until the encoded
    /// size fits `max_bytes`; returns how many were evicted.
    fn insert(&mut self, user_id: &str, mut entry: Entry, max_bytes: usize) -> usize {
        self.remove(user_id);
        self.seq += 1;
        entry.seq = self.seq;
        self.entries.insert(user_id.to_string(), entry);
        self.by_age
            .insert((entry.computed_ms, entry.seq), user_id.to_string());
        self.bytes += ENTRY_OVERHEAD + user_id.len();
        let mut evicted = 0;
        while self.bytes + FILE_OVERHEAD > max_bytes {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= ENTRY_OVERHEAD + oldest.len();
                debug_assert!(e.seq != 0);
            }
            evicted += 1;
        }
        debug_assert_eq!(self.entries.len(), self.by_age.len());
        evicted
    }
}

/// The ten features per user, cached, bounded and persisted.
pub struct FeatureStore {
    config: FeatureStoreConfig,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl std::fmt::Debug for FeatureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureStore")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl FeatureStore {
    /// An empty store; nothing is read from disk.
    pub fn new(config: FeatureStoreConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            config,
            clock,
            inner: Mutex::new(Inner::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// A store loaded from `config.path` when it exists. A damaged or unreadable file is
    /// discarded (and deleted) with a warning; the store then starts empty.
    pub fn open(config: FeatureStoreConfig, clock: Arc<dyn Clock>) -> (Self, LoadReport) {
        let store = Self::new(config, clock);
        let mut report = LoadReport::default();
        let Some(path) = store.config.path.clone() else {
            return (store, report);
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (store, report),
            Err(e) => {
                let warning = format!("{}: unreadable, starting empty: {e}", path.display());
                tracing::warn!("feature store {warning}");
                report.warning = Some(warning);
                return (store, report);
            }
        };
        match decode(&bytes) {
            Ok(entries) => {
                let mut inner = store.inner.lock();
                for (user_id, entry) in entries {
                    report.evicted += inner.insert(&user_id, entry, store.config.max_bytes);
                }
                report.loaded = inner.entries.len();
            }
            Err(reason) => {
                let warning = format!("{}: discarded: {reason}", path.display());
                tracing::warn!("feature store {warning}");
                report.warning = Some(warning);
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(error = %e, "could not delete the damaged feature store");
                }
            }
        }
        (store, report)
    }

    pub fn config(&self) -> &FeatureStoreConfig {
        &self.config
    }

    /// The features of `user_id` with log `log` as of now: from the cache when fresh and the
    /// log is unchanged, else computed with [`features::compute`] (no signup time, as the
    /// server serves them) and cached.
    pub fn features(&self, user_id: &str, log: &[Activity]) -> CachedFeatures {
        let now = self.clock.now_ms();
        let fingerprint = fingerprint(log);
        if let Some(entry) = self.inner.lock().entries.get(user_id) {
            if entry.fingerprint == fingerprint && self.is_fresh(entry, now) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return CachedFeatures {
                    features: entry.features,
                    as_of_ms: entry.as_of_ms,
                    cached: true,
                    fresh: true,
                };
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let features = Features::from_array(features::compute(log, now, None, &self.config.params));
        self.put(user_id, features, now, fingerprint);
        CachedFeatures {
            features,
            as_of_ms: now,
            cached: false,
            fresh: true,
        }
    }

    /// The stored features of `user_id` without a log (offline), fresh or not.
    pub fn get(&self, user_id: &str) -> Option<CachedFeatures> {
        let now = self.clock.now_ms();
        let inner = self.inner.lock();
        inner.entries.get(user_id).map(|e| CachedFeatures {
            features: e.features,
            as_of_ms: e.as_of_ms,
            cached: true,
            fresh: self.is_fresh(e, now),
        })
    }

    /// Stores features computed elsewhere (e.g. sent by the server) as of `as_of_ms`.
    pub fn insert(&self, user_id: &str, features: Features, as_of_ms: i64) {
        self.put(user_id, features, as_of_ms, 0);
    }

    /// Forgets one user (GDPR erasure of one person); `true` if they were stored. Call
    /// [`Self::persist`] to erase them from the file too.
    pub fn remove_user(&self, user_id: &str) -> bool {
        self.inner.lock().remove(user_id).is_some()
    }

    /// Forgets everyone and deletes the file (GDPR).
    pub fn clear(&self) -> Result<(), DeviceError> {
        *self.inner.lock() = Inner::default();
        for counter in [&self.hits, &self.misses, &self.evictions] {
            counter.store(0, Ordering::Relaxed);
        }
        if let Some(path) = &self.config.path {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(DeviceError::io(path, e)),
            }
        }
        Ok(())
    }

    /// Writes the store to its file (atomically); returns the bytes written (0 without a
    /// path).
    pub fn persist(&self) -> Result<usize, DeviceError> {
        let Some(path) = &self.config.path else {
            return Ok(0);
        };
        let bytes = encode(&self.inner.lock());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| DeviceError::io(dir, e))?;
        }
        write_atomic(path, &bytes)?;
        Ok(bytes.len())
    }

    pub fn stats(&self) -> FeatureStoreStats {
        let (entries, bytes) = {
            let inner = self.inner.lock();
            (inner.entries.len(), inner.bytes + FILE_OVERHEAD)
        };
        let hits = self.hits.load(Ordering::Relaxed);
        let misses = self.misses.load(Ordering::Relaxed);
        FeatureStoreStats {
            entries,
            bytes,
            hits,
            misses,
            evictions: self.evictions.load(Ordering::Relaxed),
            hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
        }
    }

    fn is_fresh(&self, entry: &Entry, now: i64) -> bool {
        let ttl = i64::try_from(self.config.ttl.as_millis()).unwrap_or(i64::MAX);
        now.saturating_sub(entry.computed_ms) < ttl
    }

    fn put(&self, user_id: &str, features: Features, as_of_ms: i64, fingerprint: u64) {
        if user_id.is_empty() || user_id.len() > MAX_ID_LEN {
            // Not a valid id: served, never stored.
            return;
        }
        let entry = Entry {
            features,
            as_of_ms,
            computed_ms: self.clock.now_ms(),
            fingerprint,
            seq: 0,
        };
        let evicted = self
            .inner
            .lock()
            .insert(user_id, entry, self.config.max_bytes);
        self.evictions.fetch_add(evicted as u64, Ordering::Relaxed);
    }
}

/// FNV-1a over the log's length and its first and last events (see the module docs).
fn fingerprint(log: &[Activity]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |v: u64| {
        for b in v.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(log.len() as u64);
    for a in [log.first(), log.last()].into_iter().flatten() {
        eat(a.ts_ms as u64);
        eat(a.kind as u64);
        eat(a.goal.map_or(u64::MAX, u64::from));
    }
    // 0 marks features inserted without a log: never equal to a real fingerprint.
    h.max(1)
}

fn encode(inner: &Inner) -> Vec<u8> {
    let mut out = Vec::with_capacity(inner.bytes + FILE_OVERHEAD);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(inner.entries.len() as u32).to_le_bytes());
    // Oldest first, so a reload re-creates the same eviction order.
    for user_id in inner.by_age.values() {
        let Some(e) = inner.entries.get(user_id) else {
            continue;
        };
        out.extend_from_slice(&(user_id.len() as u16).to_le_bytes());
        out.extend_from_slice(user_id.as_bytes());
        out.extend_from_slice(&e.as_of_ms.to_le_bytes());
        out.extend_from_slice(&e.computed_ms.to_le_bytes());
        out.extend_from_slice(&e.fingerprint.to_le_bytes());
        for v in e.features.to_array() {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let checksum = Sha256::digest(&out);
    out.extend_from_slice(&checksum);
    out
}

/// Why a store file cannot be trusted (it is then discarded as a whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum FileError {
    #[error("{len} bytes is shorter than any store file")]
    TooShort { len: usize },
    #[error("checksum mismatch")]
    Checksum,
    #[error("not a feature store file")]
    Magic,
    #[error("truncated")]
    Truncated,
    #[error("entry {entry}: user id of {len} bytes")]
    IdLength { entry: usize, len: usize },
    #[error("entry {entry}: user id is not UTF-8")]
    IdNotUtf8 {
        entry: usize,
        #[source]
        source: std::str::Utf8Error,
    },
    #[error("entry {entry}: non-finite feature")]
    NonFinite { entry: usize },
    #[error("{len} trailing bytes")]
    Trailing { len: usize },
}

/// Parses a store file, or says why it cannot be trusted.
fn decode(bytes: &[u8]) -> Result<Vec<(String, Entry)>, FileError> {
    if bytes.len() < FILE_OVERHEAD {
        return Err(FileError::TooShort { len: bytes.len() });
    }
    let (body, checksum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != checksum {
        return Err(FileError::Checksum);
    }
    if &body[..4] != MAGIC {
        return Err(FileError::Magic);
    }
    let mut r = Reader(&body[4..]);
    let count = r.u32()? as usize;
    let mut entries = Vec::with_capacity(count.min(body.len() / ENTRY_OVERHEAD));
    for i in 0..count {
        let id_len = usize::from(r.u16()?);
        if id_len == 0 || id_len > MAX_ID_LEN {
            return Err(FileError::IdLength {
                entry: i,
                len: id_len,
            });
        }
        let user_id = std::str::from_utf8(r.take(id_len)?)
            .map_err(|source| FileError::IdNotUtf8 { entry: i, source })?
            .to_string();
        let as_of_ms = r.i64()?;
        let computed_ms = r.i64()?;
        let fingerprint = r.u64()?;
        let mut values = [0.0; FEATURE_COUNT];
        for v in &mut values {
            *v = f64::from_bits(r.u64()?);
            if !v.is_finite() {
                return Err(FileError::NonFinite { entry: i });
            }
        }
        entries.push((
            user_id,
            Entry {
                features: Features::from_array(values),
                as_of_ms,
                computed_ms,
                fingerprint,
                seq: 0,
            },
        ));
    }
    if !r.0.is_empty() {
        return Err(FileError::Trailing { len: r.0.len() });
    }
    Ok(entries)
}

/// A cursor over a byte slice whose reads fail instead of panicking at the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FileError> {
        if self.0.len() < n {
            return Err(FileError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FileError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, FileError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, FileError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, FileError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, FileError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_file_says_why_it_is_not_trusted() {
        assert_eq!(
            decode(&[0; 3]).map(|_| ()),
            Err(FileError::TooShort { len: 3 })
        );
        let mut bytes = vec![0; FILE_OVERHEAD];
        assert_eq!(decode(&bytes).map(|_| ()), Err(FileError::Checksum));
        let checksum = Sha256::digest(&bytes[..FILE_OVERHEAD - 32]);
        bytes[FILE_OVERHEAD - 32..].copy_from_slice(&checksum);
        assert_eq!(decode(&bytes).map(|_| ()), Err(FileError::Magic));
        assert_eq!(
            FileError::TooShort { len: 3 }.to_string(),
            "3 bytes is shorter than any store file"
        );
    }
}
