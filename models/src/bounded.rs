//! The one bounded first-in-first-out container of the project: it keeps at most `capacity`
//! items and forgets the oldest to make room. Rings of live samples, rolling windows of
//! outcomes, and the insertion order of bounded maps ([`FifoMap`]) are all this type, so "how
//! much is kept" is always one number and eviction always happens on insert.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// A queue of at most `capacity` items; pushing onto a full queue evicts the oldest.
#[derive(Debug, Clone)]
pub struct BoundedFifo<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> BoundedFifo<T> {
    /// An empty queue keeping at most `capacity` items (0 keeps nothing).
    pub fn new(capacity: usize) -> Self {
        BoundedFifo {
            items: VecDeque::new(),
            capacity,
        }
    }

    /// Appends `item`; returns the item evicted to make room, or `item` itself when the
    /// capacity is 0.
    pub fn push(&mut self, item: T) -> Option<T> {
        if self.capacity == 0 {
            return Some(item);
        }
        let evicted = if self.items.len() >= self.capacity {
            self.items.pop_front()
        } else {
            None
        };
        self.items.push_back(item);
        debug_assert!(self.items.len() <= self.capacity);
        evicted
    }

    pub fn front(&self) -> Option<&T> {
        self.items.front()
    }

    pub fn back(&self) -> Option<&T> {
        self.items.back()
    }

    /// Oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.items.iter()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// A map that forgets its oldest insertions beyond `capacity`. Inserting a key that is already
/// present replaces its value and keeps its place in the order.
#[derive(Debug)]
pub struct FifoMap<K, V> {
    map: HashMap<K, V>,
    order: BoundedFifo<K>,
}

impl<K: Hash + Eq + Copy, V> FifoMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        FifoMap {
            map: HashMap::new(),
            order: BoundedFifo::new(capacity),
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    pub fn insert(&mut self, key: K, value: V) {
        if self.order.capacity() == 0 {
            return;
        }
        if self.map.insert(key, value).is_some() {
            return; // already in the order
        }
        if let Some(oldest) = self.order.push(key) {
            self.map.remove(&oldest);
        }
        debug_assert_eq!(self.map.len(), self.order.len());
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_evicts_the_oldest() {
        let mut q = BoundedFifo::new(2);
        assert_eq!(q.push(1), None);
        assert_eq!(q.push(2), None);
        assert_eq!(q.push(3), Some(1));
        assert_eq!(q.iter().copied().collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!((q.front(), q.back(), q.len()), (Some(&2), Some(&3), 2));
        let mut none = BoundedFifo::new(0);
        assert_eq!(none.push(7), Some(7));
        assert!(none.is_empty());
    }

    #[test]
    fn the_map_forgets_the_oldest_and_keeps_the_place_of_a_replaced_key() {
        let mut f = FifoMap::new(2);
        f.insert(1u64, 'a');
        f.insert(2, 'b');
        f.insert(1, 'c'); // replaced, still the oldest
        f.insert(3, 'd');
        assert_eq!(
            (f.get(&1), f.get(&2), f.get(&3)),
            (None, Some(&'b'), Some(&'d'))
        );
        assert_eq!(f.len(), 2);
        let mut none = FifoMap::new(0);
        none.insert(1u64, ());
        assert!(none.get(&1).is_none() && none.is_empty());
    }
}
