//! The binary format of shard snapshots: one record per user (their row, with external ids,
//! so a snapshot does not depend on the dense ids of the process that wrote it) and one list of
//! recent `event_id`s per shard. Item columns, co-occurrence and similarity caches are not
//! stored: they are derived from the rows on restore.
//!
//! Layout (little-endian): a user record is `version u8, user_id (u16 len + bytes),
//! dense_id u32, last_event_ms i64 (i64::MIN = none), cells u32, then per cell item_id (u8 len + bytes),
//! implicit f32, rating f32 (NaN = none), kinds u16, last_ts i64, then activity u32 and per
//! event ts_ms i64, kind u8 (index in `EventKind::ALL`), goal u32 (u32::MAX = none)`. A dedupe record is
//! `version u8 (2), count u32, then per entry user u32 (dense id), hash u64` (see
//! [`event_id_hash`]): event ids themselves are never stored. Version 1 dedupe records (`count
//! u32, then (u16 len + bytes)` of `"{dense user}:{event id}"` texts) are still read, hashed on
//! load. The item id table uses that version 1 string list layout.

use std::sync::Arc;

use momentum_models::events::{EventKind, Interaction};
use momentum_models::features::Activity;

const VERSION: u8 = 1;
/// The version of dedupe records written now (hashed entries).
const DEDUPE_VERSION: u8 = 2;

/// A remembered event id: the user's dense id and [`event_id_hash`] of the id.
pub type DedupeEntry = (u32, u64);

/// The 64-bit hash an event id is remembered by: the first 8 bytes of `md5(event_id)`,
/// big-endian. Stable across processes and versions, since snapshots store it.
pub fn event_id_hash(event_id: &str) -> u64 {
    momentum_models::hash::md5_u64(&[event_id.as_bytes()])
}

/// One user's row in external ids.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub user_id: Arc<str>,
    /// The user's dense id in the writing process (restored as is, see `Interner::restore`).
    pub dense_id: u32,
    pub last_event_ms: Option<i64>,
    pub cells: Vec<(Arc<str>, Interaction)>,
    /// The activity log (goals as dense item ids of the writing process, restored as is).
    pub activity: Vec<Activity>,
}

/// Why a snapshot record could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("corrupt snapshot record: {reason}")]
pub struct DecodeError {
    pub reason: &'static str,
}

/// Reads the records' fields in order (the item model's encoding in `ease.rs` uses it too).
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError {
                reason: "truncated",
            });
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn str(&mut self, len: usize) -> Result<Arc<str>, DecodeError> {
        let raw = self.take(len)?;
        std::str::from_utf8(raw)
            .map(Arc::from)
            .map_err(|_| DecodeError {
                reason: "id is not UTF-8",
            })
    }
}

/// Encodes a user record.
pub fn encode_user(record: &UserRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + record.user_id.len() + record.cells.len() * 24);
    encode_user_into(record, &mut out);
    out
}

/// [`encode_user`], appended to `out`.
fn encode_user_into(record: &UserRecord, out: &mut Vec<u8>) {
    out.push(VERSION);
    let id = record.user_id.as_bytes();
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(&record.dense_id.to_le_bytes());
    out.extend_from_slice(&record.last_event_ms.unwrap_or(i64::MIN).to_le_bytes());
    out.extend_from_slice(&(record.cells.len() as u32).to_le_bytes());
    for (item, cell) in &record.cells {
        let item = item.as_bytes();
        out.push(item.len() as u8);
        out.extend_from_slice(item);
        out.extend_from_slice(&cell.implicit.to_le_bytes());
        out.extend_from_slice(&cell.rating.unwrap_or(f32::NAN).to_le_bytes());
        out.extend_from_slice(&cell.kinds.to_le_bytes());
        out.extend_from_slice(&cell.last_ts.to_le_bytes());
    }
    out.extend_from_slice(&(record.activity.len() as u32).to_le_bytes());
    for a in &record.activity {
        out.extend_from_slice(&a.ts_ms.to_le_bytes());
        out.push(a.kind as u8);
        out.extend_from_slice(&a.goal.unwrap_or(u32::MAX).to_le_bytes());
    }
}

/// Decodes a user record.
pub fn decode_user(bytes: &[u8]) -> Result<UserRecord, DecodeError> {
    let mut r = Reader { bytes };
    if r.array::<1>()?[0] != VERSION {
        return Err(DecodeError {
            reason: "unknown version",
        });
    }
    let len = u16::from_le_bytes(r.array()?) as usize;
    let user_id = r.str(len)?;
    let dense_id = u32::from_le_bytes(r.array()?);
    let last = i64::from_le_bytes(r.array()?);
    let n = u32::from_le_bytes(r.array()?) as usize;
    // Each cell takes at least 19 bytes: refuse counts the input cannot hold.
    if n > r.bytes.len() / 19 {
        return Err(DecodeError {
            reason: "cell count exceeds record",
        });
    }
    let mut cells = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.array::<1>()?[0] as usize;
        let item = r.str(len)?;
        let implicit = f32::from_le_bytes(r.array()?);
        let rating = f32::from_le_bytes(r.array()?);
        let kinds = u16::from_le_bytes(r.array()?);
        let last_ts = i64::from_le_bytes(r.array()?);
        cells.push((
            item,
            Interaction {
                implicit,
                rating: (!rating.is_nan()).then_some(rating),
                kinds,
                last_ts,
            },
        ));
    }
    let n = u32::from_le_bytes(r.array()?) as usize;
    if n > r.bytes.len() / 13 {
        return Err(DecodeError {
            reason: "activity count exceeds record",
        });
    }
    let mut activity = Vec::with_capacity(n);
    for _ in 0..n {
        let ts_ms = i64::from_le_bytes(r.array()?);
        let kind = *EventKind::ALL
            .get(r.array::<1>()?[0] as usize)
            .ok_or(DecodeError {
                reason: "unknown event kind",
            })?;
        let goal = u32::from_le_bytes(r.array()?);
        activity.push(Activity {
            ts_ms,
            kind,
            goal: (goal != u32::MAX).then_some(goal),
        });
    }
    if !r.bytes.is_empty() {
        return Err(DecodeError {
            reason: "trailing bytes",
        });
    }
    Ok(UserRecord {
        user_id,
        dense_id,
        last_event_ms: (last != i64::MIN).then_some(last),
        cells,
        activity,
    })
}

/// Version byte of a chunk of user records.
const CHUNK_VERSION: u8 = 3;

/// How many chunks a snapshot spreads its user records over ([`user_chunk`]).
pub const USER_CHUNKS: usize = 256;

/// The chunk a user's record goes to: the first 8 bytes of `md5(user_id)`, big-endian, modulo
/// [`USER_CHUNKS`]. Fixed, so an erasure knows which chunk of every snapshot holds the user.
pub fn user_chunk(user_id: &str) -> usize {
    crate::engine::shard_for(user_id, USER_CHUNKS)
}

/// Encodes user records as one chunk: `version u8 (3), count u32, then (u32 len + record)` per
/// record ([`encode_user`]).
pub fn encode_user_chunk<'a>(records: impl IntoIterator<Item = &'a UserRecord>) -> Vec<u8> {
    let mut out = vec![CHUNK_VERSION, 0, 0, 0, 0];
    let mut n = 0u32;
    for record in records {
        push_record(&mut out, record);
        n += 1;
    }
    out[1..5].copy_from_slice(&n.to_le_bytes());
    out
}

/// Appends `u32 len + record` to a chunk's body.
fn push_record(body: &mut Vec<u8>, record: &UserRecord) {
    let at = body.len();
    body.extend_from_slice(&[0; 4]);
    encode_user_into(record, body);
    let len = (body.len() - at - 4) as u32;
    body[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// User records encoded as they are exported, straight into the bodies of their chunks, so
/// a snapshot never holds its users as [`UserRecord`]s all at once (they take about twice
/// the encoded bytes). Records pushed here, then chunk sets merged in order with
/// [`UserChunks::append`], give the bytes [`encode_user_chunk`] gives for the same records
/// grouped by [`user_chunk`] in the same order.
#[derive(Debug)]
pub struct UserChunks {
    /// Per chunk: records, and the encoded chunk with its header left blank (empty while the
    /// chunk has no record), so that finishing a chunk copies nothing.
    chunks: Vec<(u32, Vec<u8>)>,
}

/// The bytes of a chunk's header: version and record count.
const CHUNK_HEADER: usize = 5;

impl Default for UserChunks {
    fn default() -> Self {
        UserChunks {
            chunks: vec![(0, Vec::new()); USER_CHUNKS],
        }
    }
}

impl UserChunks {
    /// Encodes `record` at the end of its chunk.
    pub fn push(&mut self, record: &UserRecord) {
        let (n, body) = &mut self.chunks[user_chunk(&record.user_id)];
        if body.is_empty() {
            body.extend_from_slice(&[0; CHUNK_HEADER]);
        }
        push_record(body, record);
        *n += 1;
    }

    /// Moves `other`'s records after this set's, chunk by chunk.
    pub fn append(&mut self, other: UserChunks) {
        for ((n, body), (m, more)) in self.chunks.iter_mut().zip(other.chunks) {
            if body.is_empty() {
                *body = more;
            } else if !more.is_empty() {
                body.extend_from_slice(&more[CHUNK_HEADER..]);
            }
            *n += m;
        }
    }

    /// Records pushed.
    pub fn users(&self) -> usize {
        self.chunks.iter().map(|(n, _)| *n as usize).sum()
    }

    /// The chunks holding records, as `(chunk, encoded chunk)`.
    pub fn into_chunks(self) -> impl Iterator<Item = (usize, Vec<u8>)> {
        self.chunks
            .into_iter()
            .enumerate()
            .filter(|(_, (n, _))| *n > 0)
            .map(|(chunk, (n, mut bytes))| {
                bytes[0] = CHUNK_VERSION;
                bytes[1..CHUNK_HEADER].copy_from_slice(&n.to_le_bytes());
                (chunk, bytes)
            })
    }
}

/// Decodes a chunk of user records.
pub fn decode_user_chunk(bytes: &[u8]) -> Result<Vec<UserRecord>, DecodeError> {
    let mut r = Reader { bytes };
    if r.array::<1>()?[0] != CHUNK_VERSION {
        return Err(DecodeError {
            reason: "unknown version",
        });
    }
    let n = u32::from_le_bytes(r.array()?) as usize;
    if n > r.bytes.len() / 4 {
        return Err(DecodeError {
            reason: "record count exceeds chunk",
        });
    }
    let mut records = Vec::with_capacity(n);
    for _ in 0..n {
        let len = u32::from_le_bytes(r.array()?) as usize;
        records.push(decode_user(r.take(len)?)?);
    }
    if !r.bytes.is_empty() {
        return Err(DecodeError {
            reason: "trailing bytes",
        });
    }
    Ok(records)
}

/// Encodes a shard's recent event id entries (oldest first).
pub fn encode_dedupe(entries: &[DedupeEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + entries.len() * 12);
    out.push(DEDUPE_VERSION);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for &(user, hash) in entries {
        out.extend_from_slice(&user.to_le_bytes());
        out.extend_from_slice(&hash.to_le_bytes());
    }
    out
}

/// Decodes a shard's recent event id entries, of either version (version 1 texts are hashed
/// here; a text without a `user:` prefix is refused).
pub fn decode_dedupe(bytes: &[u8]) -> Result<Vec<DedupeEntry>, DecodeError> {
    if bytes.first() == Some(&VERSION) {
        return decode_strings(bytes)?
            .iter()
            .map(|key| {
                key.split_once(':')
                    .and_then(|(user, id)| Some((user.parse().ok()?, event_id_hash(id))))
                    .ok_or(DecodeError {
                        reason: "event id without a user",
                    })
            })
            .collect();
    }
    let mut r = Reader { bytes };
    if r.array::<1>()?[0] != DEDUPE_VERSION {
        return Err(DecodeError {
            reason: "unknown version",
        });
    }
    let n = u32::from_le_bytes(r.array()?) as usize;
    if r.bytes.len() != n.saturating_mul(12) {
        return Err(DecodeError {
            reason: "entry count does not match record",
        });
    }
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let user = u32::from_le_bytes(r.array()?);
        let hash = u64::from_le_bytes(r.array()?);
        entries.push((user, hash));
    }
    Ok(entries)
}

/// A list of strings: `version u8 (1), count u32, then (u16 len + bytes)` per string.
fn encode_strings(ids: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    put_strings(&mut out, ids);
    out
}

/// Appends `ids` to `out` in the string list layout of [`encode_strings`].
pub(crate) fn put_strings(out: &mut Vec<u8>, ids: &[&str]) {
    out.push(VERSION);
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(id.as_bytes());
    }
}

/// Encodes the item id table (dense order; empty string = unused slot).
pub fn encode_item_slots(slots: &[Option<Arc<str>>]) -> Vec<u8> {
    let ids: Vec<&str> = slots.iter().map(|s| s.as_deref().unwrap_or("")).collect();
    encode_strings(&ids)
}

/// Decodes the item id table.
pub fn decode_item_slots(bytes: &[u8]) -> Result<Vec<Option<Arc<str>>>, DecodeError> {
    Ok(decode_strings(bytes)?
        .into_iter()
        .map(|s| (!s.is_empty()).then_some(s))
        .collect())
}

fn decode_strings(bytes: &[u8]) -> Result<Vec<Arc<str>>, DecodeError> {
    Reader { bytes }.strings()
}

impl Reader<'_> {
    /// A string list in the layout of [`encode_strings`].
    pub(crate) fn strings(&mut self) -> Result<Vec<Arc<str>>, DecodeError> {
        if self.array::<1>()?[0] != VERSION {
            return Err(DecodeError {
                reason: "unknown version",
            });
        }
        let n = u32::from_le_bytes(self.array()?) as usize;
        if n > self.bytes.len() / 2 {
            return Err(DecodeError {
                reason: "id count exceeds record",
            });
        }
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let len = u16::from_le_bytes(self.array()?) as usize;
            ids.push(self.str(len)?);
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn user_records_round_trip(
            user in "[a-z0-9]{1,20}",
            last in proptest::option::of(any::<i64>().prop_filter("sentinel", |v| *v != i64::MIN)),
            cells in prop::collection::vec(("[a-z0-9:.]{1,30}", 0.0f32..20.0, proptest::option::of(0.0f32..10.0), any::<u16>(), any::<i64>()), 0..40),
            activity in prop::collection::vec((any::<i64>(), 0usize..10, proptest::option::of(0u32..1000)), 0..20),
        ) {
            let record = UserRecord {
                user_id: Arc::from(user.as_str()),
                dense_id: 7,
                last_event_ms: last,
                cells: cells
                    .into_iter()
                    .map(|(item, implicit, rating, kinds, last_ts)| {
                        (Arc::from(item.as_str()), Interaction { implicit, rating, kinds, last_ts })
                    })
                    .collect(),
                activity: activity
                    .into_iter()
                    .map(|(ts_ms, k, goal)| Activity { ts_ms, kind: EventKind::ALL[k], goal })
                    .collect(),
            };
            let bytes = encode_user(&record);
            prop_assert_eq!(decode_user(&bytes), Ok(record));
            // Every strict prefix is refused, never mis-read or a panic.
            for cut in 0..bytes.len() {
                prop_assert!(decode_user(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn dedupe_round_trips_holds_no_id_text_and_garbage_is_refused() {
        let entries = vec![(3, event_id_hash("evt-alice-1")), (7, event_id_hash("e-2"))];
        let bytes = encode_dedupe(&entries);
        assert_eq!(decode_dedupe(&bytes), Ok(entries));
        assert!(!bytes.windows(5).any(|w| w == b"alice"));
        assert!(decode_dedupe(&[DEDUPE_VERSION, 255, 255, 255, 255]).is_err());
        assert!(decode_dedupe(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_dedupe(&[VERSION, 255, 255, 255, 255]).is_err());
        assert!(decode_dedupe(&[9]).is_err());
        assert!(decode_user(&[9]).is_err());
    }

    #[test]
    fn user_chunks_round_trip_and_truncation_is_refused() {
        let record = |id: &str| UserRecord {
            user_id: Arc::from(id),
            dense_id: 3,
            last_event_ms: Some(5),
            cells: vec![(Arc::from("g1"), Interaction::default())],
            activity: Vec::new(),
        };
        let records = vec![record("alice"), record("bob")];
        let bytes = encode_user_chunk(&records);
        assert_eq!(decode_user_chunk(&bytes), Ok(records));
        for cut in 0..bytes.len() {
            assert!(decode_user_chunk(&bytes[..cut]).is_err());
        }
        assert_eq!(decode_user_chunk(&encode_user_chunk(&[])), Ok(Vec::new()));
        assert!(user_chunk("alice") < USER_CHUNKS);
    }

    #[test]
    fn chunk_sets_merged_in_order_encode_like_whole_chunks() {
        let record = |i: usize| UserRecord {
            user_id: Arc::from(format!("user-{i}").as_str()),
            dense_id: i as u32,
            last_event_ms: Some(i as i64),
            cells: (0..i % 4)
                .map(|k| (Arc::from(format!("g{k}").as_str()), Interaction::default()))
                .collect(),
            activity: Vec::new(),
        };
        let records: Vec<UserRecord> = (0..600).map(record).collect();
        // Three "shards" in order, as a snapshot merges them.
        let mut merged = UserChunks::default();
        for part in records.chunks(250) {
            let mut shard = UserChunks::default();
            for r in part {
                shard.push(r);
            }
            merged.append(shard);
        }
        assert_eq!(merged.users(), 600);
        let mut grouped: Vec<Vec<&UserRecord>> = vec![Vec::new(); USER_CHUNKS];
        for r in &records {
            grouped[user_chunk(&r.user_id)].push(r);
        }
        let want: Vec<(usize, Vec<u8>)> = grouped
            .into_iter()
            .enumerate()
            .filter(|(_, rs)| !rs.is_empty())
            .map(|(chunk, rs)| (chunk, encode_user_chunk(rs)))
            .collect();
        let got: Vec<(usize, Vec<u8>)> = merged.into_chunks().collect();
        assert!(got.len() > 200, "records spread over most chunks");
        assert_eq!(got, want);
    }

    #[test]
    fn version_1_dedupe_records_are_hashed_on_load() {
        let old = encode_strings(&["3:evt-alice-1", "12:a:b"]);
        assert_eq!(
            decode_dedupe(&old),
            Ok(vec![
                (3, event_id_hash("evt-alice-1")),
                (12, event_id_hash("a:b"))
            ])
        );
        assert!(decode_dedupe(&encode_strings(&["no-user"])).is_err());
        let slots = vec![Some(Arc::from("g1")), None, Some(Arc::from("g3"))];
        assert_eq!(decode_item_slots(&encode_item_slots(&slots)), Ok(slots));
    }
}
