//! Maps external string ids to dense `u32` indices so the hot state stores integers, not
//! strings. Interning is append-only and bounded: when the configured capacity is reached,
//! new ids are refused instead of growing memory without limit. An erased id (GDPR) loses
//! its string; its slot is never reused, so stale references cannot alias a new id.

use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;

/// A bounded, concurrent string ↔ dense id table.
#[derive(Debug)]
pub struct Interner {
    ids: DashMap<Arc<str>, u32>,
    names: RwLock<Vec<Option<Arc<str>>>>,
    capacity: usize,
}

impl Interner {
    /// An empty table that accepts at most `capacity` distinct ids.
    pub fn new(capacity: usize) -> Self {
        Interner {
            ids: DashMap::new(),
            names: RwLock::new(Vec::new()),
            capacity,
        }
    }

    /// The id of `name`, assigning a new one if needed; `None` when the table is full.
    pub fn intern(&self, name: &str) -> Option<u32> {
        if let Some(id) = self.ids.get(name) {
            return Some(*id);
        }
        let mut names = self.names.write();
        // Re-check under the write lock: another thread may have interned it meanwhile.
        if let Some(id) = self.ids.get(name) {
            return Some(*id);
        }
        if names.len() >= self.capacity {
            return None;
        }
        let id = u32::try_from(names.len()).ok()?;
        let name: Arc<str> = Arc::from(name);
        names.push(Some(name.clone()));
        self.ids.insert(name, id);
        Some(id)
    }

    /// Puts `name` at slot `id` (restoring a snapshot, so dense ids — and with them every
    /// tie-break and summation order — match the process that wrote it). Slots below `id`
    /// that stay empty behave like erased ids. False if the slot or the name is taken or `id`
    /// is past the capacity.
    pub fn restore(&self, name: &str, id: u32) -> bool {
        let mut names = self.names.write();
        let slot = id as usize;
        if slot >= self.capacity || self.ids.contains_key(name) {
            return false;
        }
        if names.len() <= slot {
            names.resize(slot + 1, None);
        }
        if names[slot].is_some() {
            return false;
        }
        let name: Arc<str> = Arc::from(name);
        names[slot] = Some(name.clone());
        self.ids.insert(name, id);
        true
    }

    /// Every slot in order: the name, or `None` for erased ones.
    pub fn slots_snapshot(&self) -> Vec<Option<Arc<str>>> {
        self.names.read().clone()
    }

    /// The id of `name` if it was interned.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).map(|id| *id)
    }

    /// The string of `id`, unless it was never assigned or was erased.
    pub fn name(&self, id: u32) -> Option<Arc<str>> {
        self.names.read().get(id as usize).cloned().flatten()
    }

    /// Forgets the string of `name`; its dense id is retired.
    pub fn erase(&self, name: &str) -> Option<u32> {
        let mut names = self.names.write();
        let (_, id) = self.ids.remove(name)?;
        if let Some(slot) = names.get_mut(id as usize) {
            *slot = None;
        }
        Some(id)
    }

    /// Number of live ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no id is live.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Highest assigned id + 1 (including erased slots): the size of dense buffers.
    pub fn slots(&self) -> usize {
        self.names.read().len()
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
    }
}
