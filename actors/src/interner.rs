//! Maps external string ids to dense `u32` indices so the hot state stores integers, not
//! strings. Interning is append-only and bounded: when the configured capacity is reached,
//! new ids are refused instead of growing memory without limit. An erased id (GDPR) loses
//! its string; its slot is never reused, so stale references cannot alias a new id.

use std::cmp::Ordering;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;
use parking_lot::RwLock;

/// A slot's name in the arena: start (high 48 bits) and length (low 16 bits; ids are shorter
/// than 64 KiB); [`NONE`] for a slot that is empty or erased.
type Span = u64;
const NONE: Span = u64::MAX;

/// The table behind the lock: names back to back in one arena, a span per slot, and a hash
/// table of slots keyed by name. About 25 bytes per id beyond its text.
#[derive(Debug, Default)]
struct Table {
    arena: Vec<u8>,
    spans: Vec<Span>,
    ids: HashTable<u32>,
}

impl Table {
    fn name(&self, id: u32) -> Option<&str> {
        let span = *self.spans.get(id as usize)?;
        if span == NONE {
            return None;
        }
        let start = (span >> 16) as usize;
        let bytes = self.arena.get(start..start + (span & 0xffff) as usize)?;
        std::str::from_utf8(bytes).ok()
    }

    fn find(&self, hash: u64, name: &str) -> Option<u32> {
        self.ids
            .find(hash, |&id| self.name(id) == Some(name))
            .copied()
    }

    /// Writes `name` at slot `id` (which must be empty) and indexes it.
    fn put(&mut self, hasher: &RandomState, hash: u64, name: &str, id: u32) -> bool {
        if name.len() > 0xffff || self.arena.len() >= 1 << 48 {
            return false;
        }
        let span = ((self.arena.len() as u64) << 16) | name.len() as u64;
        self.arena.extend_from_slice(name.as_bytes());
        self.spans[id as usize] = span;
        let Table { arena, spans, ids } = self;
        let rehash = |&other: &u32| {
            let span = spans[other as usize];
            let start = (span >> 16) as usize;
            hasher.hash_one(&arena[start..start + (span & 0xffff) as usize])
        };
        ids.insert_unique(hash, id, rehash);
        true
    }
}

/// A bounded, concurrent string ↔ dense id table.
#[derive(Debug)]
pub struct Interner {
    table: RwLock<Table>,
    hasher: RandomState,
    capacity: usize,
}

impl Interner {
    /// An empty table that accepts at most `capacity` distinct ids.
    pub fn new(capacity: usize) -> Self {
        Interner {
            table: RwLock::new(Table::default()),
            hasher: RandomState::new(),
            capacity,
        }
    }

    /// Names are hashed as bytes, so the arena can be rehashed without decoding it.
    fn hash(&self, name: &str) -> u64 {
        self.hasher.hash_one(name.as_bytes())
    }

    /// The id of `name`, assigning a new one if needed; `None` when the table is full.
    pub fn intern(&self, name: &str) -> Option<u32> {
        let hash = self.hash(name);
        if let Some(id) = self.table.read().find(hash, name) {
            return Some(id);
        }
        let mut table = self.table.write();
        // Re-check under the write lock: another thread may have interned it meanwhile.
        if let Some(id) = table.find(hash, name) {
            return Some(id);
        }
        if table.spans.len() >= self.capacity {
            return None;
        }
        let id = u32::try_from(table.spans.len()).ok()?;
        table.spans.push(NONE);
        if !table.put(&self.hasher, hash, name, id) {
            table.spans.pop();
            return None;
        }
        Some(id)
    }

    /// Puts `name` at slot `id` (restoring a snapshot, so dense ids — and with them every
    /// tie-break and summation order — match the process that wrote it). Slots below `id`
    /// that stay empty behave like erased ids. False if the slot or the name is taken or `id`
    /// is past the capacity.
    pub fn restore(&self, name: &str, id: u32) -> bool {
        let hash = self.hash(name);
        let mut table = self.table.write();
        let slot = id as usize;
        if slot >= self.capacity || table.find(hash, name).is_some() {
            return false;
        }
        if table.spans.len() <= slot {
            table.spans.resize(slot + 1, NONE);
        }
        if table.spans[slot] != NONE {
            return false;
        }
        table.put(&self.hasher, hash, name, id)
    }

    /// Every slot in order: the name, or `None` for erased ones.
    pub fn slots_snapshot(&self) -> Vec<Option<Arc<str>>> {
        let table = self.table.read();
        (0..table.spans.len() as u32)
            .map(|id| table.name(id).map(Arc::from))
            .collect()
    }

    /// The id of `name` if it was interned.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.table.read().find(self.hash(name), name)
    }

    /// The string of `id`, unless it was never assigned or was erased.
    pub fn name(&self, id: u32) -> Option<Arc<str>> {
        self.table.read().name(id).map(Arc::from)
    }

    /// Orders two ids by their strings, ids without one (erased, never assigned) last by
    /// id: the tie-break of every ranking.
    pub fn compare(&self, a: u32, b: u32) -> Ordering {
        if a == b {
            return Ordering::Equal;
        }
        let table = self.table.read();
        match (table.name(a), table.name(b)) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => a.cmp(&b),
        }
    }

    /// Forgets the string of `name` (its bytes are overwritten); its dense id is retired.
    pub fn erase(&self, name: &str) -> Option<u32> {
        let hash = self.hash(name);
        let mut guard = self.table.write();
        let table = &mut *guard;
        let id = table.find(hash, name)?;
        let Table { arena, spans, ids } = table;
        if let Ok(entry) = ids.find_entry(hash, |&other| other == id) {
            entry.remove();
        }
        let span = spans[id as usize];
        let start = (span >> 16) as usize;
        arena[start..start + (span & 0xffff) as usize].fill(0);
        spans[id as usize] = NONE;
        Some(id)
    }

    /// Number of live ids.
    pub fn len(&self) -> usize {
        self.table.read().ids.len()
    }

    /// Whether no id is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Highest assigned id + 1 (including erased slots): the size of dense buffers.
    pub fn slots(&self) -> usize {
        self.table.read().spans.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_densely_and_refuses_past_capacity() {
        let t = Interner::new(2);
        assert_eq!(t.intern("a"), Some(0));
        assert_eq!(t.intern("b"), Some(1));
        assert_eq!(t.intern("a"), Some(0));
        assert_eq!(t.intern("c"), None);
        assert_eq!(t.name(1).as_deref(), Some("b"));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn restore_places_names_at_their_slots() {
        let t = Interner::new(10);
        assert!(t.restore("b", 2));
        assert!(!t.restore("c", 2), "slot taken");
        assert!(!t.restore("b", 3), "name taken");
        assert!(!t.restore("z", 10), "past capacity");
        assert_eq!(t.get("b"), Some(2));
        assert_eq!(t.name(0), None);
        assert_eq!(
            t.intern("d"),
            Some(3),
            "new ids continue after the last slot"
        );
    }

    #[test]
    fn erased_ids_are_not_reused() {
        let t = Interner::new(10);
        t.intern("a");
        assert_eq!(t.erase("a"), Some(0));
        assert_eq!(t.name(0), None);
        assert_eq!(t.get("a"), None);
        assert_eq!(t.intern("a"), Some(1));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn many_ids_survive_growth_and_compare_by_name() {
        let t = Interner::new(100_000);
        for n in 0..50_000u32 {
            assert_eq!(t.intern(&format!("user-{n}")), Some(n));
        }
        for n in (0..50_000u32).step_by(997) {
            assert_eq!(t.get(&format!("user-{n}")), Some(n));
            assert_eq!(t.name(n).as_deref(), Some(format!("user-{n}").as_str()));
        }
        assert_eq!(t.erase("user-7"), Some(7));
        assert_eq!(t.compare(1, 2), std::cmp::Ordering::Less);
        assert_eq!(t.compare(7, 2), std::cmp::Ordering::Greater, "erased last");
        assert_eq!(t.len(), 49_999);
        assert_eq!(t.slots(), 50_000);
    }
}
