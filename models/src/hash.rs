//! The one stable hash of the workspace: the first 8 bytes of an md5 digest, big-endian.
//!
//! Users are routed to shards, held out of training, and assigned to experiment variants by
//! it, and recommendation ids are keyed by it. It must give the same value on every machine
//! and in every version (snapshots and experiment assignments depend on it), so the values are
//! pinned by a test. `DefaultHasher` is never used for any of this: it is not stable.

use md5::{Digest, Md5};

/// The first 8 bytes, big-endian, of `md5` of the concatenated `parts`.
pub fn md5_u64(parts: &[&[u8]]) -> u64 {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(head)
}

/// The bucket of `parts` among `buckets` (`0` counts as one bucket): [`md5_u64`] modulo
/// `buckets`.
pub fn md5_bucket(parts: &[&[u8]], buckets: u64) -> u64 {
    md5_u64(parts) % buckets.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_pinned() {
        // Computed once; a change here re-shards users, re-splits training data and moves
        // users between experiment variants.
        assert_eq!(md5_u64(&[b""]), 15_284_527_576_400_310_788);
        assert_eq!(md5_u64(&[b"user-1"]), 15_480_965_748_355_791_606);
        assert_eq!(md5_bucket(&[b"user-1"], 10_000), 1_606);
        assert_eq!(md5_bucket(&[b"salt", b":", b"alice"], 10_000), 5_946);
        assert_eq!(md5_bucket(&[b"user-1"], 16), 6);
    }

    #[test]
    fn parts_are_concatenated_and_zero_buckets_is_one() {
        assert_eq!(md5_u64(&[b"ab", b"c"]), md5_u64(&[b"abc"]));
        assert_eq!(md5_bucket(&[b"anything"], 0), 0);
    }
}
