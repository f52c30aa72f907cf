//! The embedded store's compact binary form of a logged event (one redb value per event).
//!
//! Layout, all integers little-endian:
//!
//! ```text
//! flags: u8            bit 0 event_id, bit 1 item_id, bit 2 value, bit 3 recommendation_id
//! ts_ms: i64           at a fixed offset so pruning reads it without decoding the rest
//! value: f32           if bit 2
//! user_id, kind        each a LEB128 length and UTF-8 bytes
//! item_id, event_id, recommendation_id   the same, each only if its bit is set
//! ```
//!
//! About a third of the size of the JSON form and several times faster to read back, which is
//! what restore of a long log is bound by. The format is versioned by the store's schema
//! version; bits 4–7 must be zero.

use super::{EventRecord, StoreError};

const HAS_EVENT_ID: u8 = 1;
const HAS_ITEM_ID: u8 = 1 << 1;
const HAS_VALUE: u8 = 1 << 2;
const HAS_RECOMMENDATION_ID: u8 = 1 << 3;
const KNOWN_FLAGS: u8 = HAS_EVENT_ID | HAS_ITEM_ID | HAS_VALUE | HAS_RECOMMENDATION_ID;

/// Appends the encoding of `e` to `out`.
pub(crate) fn encode_event(e: &EventRecord, out: &mut Vec<u8>) {
    let mut flags = 0;
    if e.event_id.is_some() {
        flags |= HAS_EVENT_ID;
    }
    if e.item_id.is_some() {
        flags |= HAS_ITEM_ID;
    }
    if e.value.is_some() {
        flags |= HAS_VALUE;
    }
    if e.recommendation_id.is_some() {
        flags |= HAS_RECOMMENDATION_ID;
    }
    out.push(flags);
    out.extend_from_slice(&e.ts_ms.to_le_bytes());
    if let Some(v) = e.value {
        out.extend_from_slice(&v.to_le_bytes());
    }
    put_str(out, &e.user_id);
    put_str(out, &e.kind);
    for s in [&e.item_id, &e.event_id, &e.recommendation_id]
        .into_iter()
        .flatten()
    {
        put_str(out, s);
    }
}

/// Decodes a whole event.
pub(crate) fn decode_event(bytes: &[u8]) -> Result<EventRecord, StoreError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8()?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(corrupt("unknown event flags"));
    }
    let ts_ms = i64::from_le_bytes(r.array()?);
    let value = if flags & HAS_VALUE != 0 {
        Some(f32::from_le_bytes(r.array()?))
    } else {
        None
    };
    let user_id = r.string()?;
    let kind = r.string()?;
    let item_id = r.opt_string(flags & HAS_ITEM_ID != 0)?;
    let event_id = r.opt_string(flags & HAS_EVENT_ID != 0)?;
    let recommendation_id = r.opt_string(flags & HAS_RECOMMENDATION_ID != 0)?;
    if !r.is_empty() {
        return Err(corrupt("trailing bytes after an event"));
    }
    Ok(EventRecord {
        event_id,
        user_id,
        item_id,
        kind,
        value,
        ts_ms,
        recommendation_id,
    })
}

/// The event time and user id only (for pruning), without allocating.
pub(crate) fn decode_ts_and_user(bytes: &[u8]) -> Result<(i64, &str), StoreError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8()?;
    let ts_ms = i64::from_le_bytes(r.array()?);
    if flags & HAS_VALUE != 0 {
        r.array::<4>()?;
    }
    Ok((ts_ms, r.str()?))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut n = s.len();
    loop {
        // Truncation is the point: seven bits at a time.
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(s.as_bytes());
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt {
        message: format!("event record: {what}"),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.bytes.len() < n {
            return Err(corrupt("truncated"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn len(&mut self) -> Result<usize, StoreError> {
        let mut n: usize = 0;
        for shift in (0..35).step_by(7) {
            let byte = self.u8()?;
            n |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(corrupt("length too long"))
    }

    fn str(&mut self) -> Result<&'a str, StoreError> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| corrupt("invalid UTF-8"))
    }

    fn string(&mut self) -> Result<String, StoreError> {
        self.str().map(str::to_owned)
    }

    fn opt_string(&mut self, present: bool) -> Result<Option<String>, StoreError> {
        if present {
            self.string().map(Some)
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_event() -> impl Strategy<Value = EventRecord> {
        (
            proptest::option::of(".{0,40}"),
            ".{0,300}",
            proptest::option::of("[a-z0-9]{0,20}"),
            "[a-z_]{1,12}",
            proptest::option::of(any::<f32>().prop_filter("not NaN", |v| !v.is_nan())),
            any::<i64>(),
            proptest::option::of(".{0,10}"),
        )
            .prop_map(
                |(event_id, user_id, item_id, kind, value, ts_ms, recommendation_id)| EventRecord {
                    event_id,
                    user_id,
                    item_id,
                    kind,
                    value,
                    ts_ms,
                    recommendation_id,
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(e in arb_event()) {
            let mut buf = Vec::new();
            encode_event(&e, &mut buf);
            prop_assert_eq!(decode_event(&buf).unwrap(), e.clone());
            let (ts, user) = decode_ts_and_user(&buf).unwrap();
            prop_assert_eq!(ts, e.ts_ms);
            prop_assert_eq!(user, e.user_id.as_str());
        }

        #[test]
        fn truncation_is_an_error_not_a_panic(e in arb_event(), cut in 0usize..64) {
            let mut buf = Vec::new();
            encode_event(&e, &mut buf);
            let cut = cut.min(buf.len().saturating_sub(1));
            prop_assert!(decode_event(&buf[..cut]).is_err());
        }
    }

    #[test]
    fn unknown_flags_are_corrupt() {
        let mut buf = Vec::new();
        encode_event(
            &EventRecord {
                event_id: None,
                user_id: "u".into(),
                item_id: None,
                kind: "view".into(),
                value: None,
                ts_ms: 1,
                recommendation_id: None,
            },
            &mut buf,
        );
        buf[0] |= 0x80;
        assert!(matches!(
            decode_event(&buf),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
