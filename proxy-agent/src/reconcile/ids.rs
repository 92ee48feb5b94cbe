//! Backend and rev-NAT id allocation. Ids are restored from the pinned maps at start so that a restarted
//! agent keeps every id (conntrack and affinity entries hold backend and rev-NAT ids; renumbering them
//! would disrupt traffic), and freed ids are reused, lowest first.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use common::lb::{MAX_BACKENDS, MAX_REVNAT};

use super::DesiredMaps;

/// What a backend id stands for: (address, port, IP protocol number).
pub type BackendKey = (Ipv4Addr, u16, u8);
/// What a rev-NAT id stands for: (frontend address, port, IP protocol number).
pub type RevNatKey = (Ipv4Addr, u16, u8);

#[derive(Debug, Clone)]
struct Pool<K: Ord + Clone> {
    by_key: BTreeMap<K, u32>,
    by_id: BTreeMap<u32, K>,
    /// Unmapped ids below `next`.
    free: BTreeSet<u32>,
    next: u32,
    max: u32,
    /// Ids present in the maps but not mapped here (orphans not yet deleted): never handed out, so an
    /// id still referenced by a stale slot cannot be given to another backend before the slot is gone.
    held: BTreeSet<u32>,
}

impl<K: Ord + Clone> Pool<K> {
    fn new(max: u32) -> Self {
        Self {
            by_key: BTreeMap::new(),
            by_id: BTreeMap::new(),
            free: BTreeSet::new(),
            next: 1,
            max,
            held: BTreeSet::new(),
        }
    }

    /// Takes over an id found in the maps; false if the id or the key is already taken (a duplicate
    /// entry, which then becomes an orphan and is deleted).
    fn restore(&mut self, key: K, id: u32) -> bool {
        if id == 0 || id > self.max || self.by_id.contains_key(&id) || self.by_key.contains_key(&key) {
            return false;
        }
        if id >= self.next {
            self.free.extend(self.next..id);
            self.next = id + 1;
        }
        self.free.remove(&id);
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, key);
        true
    }

    fn get(&self, key: &K) -> Option<u32> {
        self.by_key.get(key).copied()
    }

    fn alloc(&mut self, key: &K) -> Option<u32> {
        if let Some(id) = self.get(key) {
            return Some(id);
        }
        let id = match self.free.iter().find(|id| !self.held.contains(id)).copied() {
            Some(id) => {
                self.free.remove(&id);
                id
            }
            None => loop {
                if self.next > self.max {
                    return None;
                }
                let id = self.next;
                self.next += 1;
                if self.held.contains(&id) {
                    self.free.insert(id);
                } else {
                    break id;
                }
            },
        };
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, key.clone());
        Some(id)
    }

    /// `present`: ascending. Walked beside `by_id` (a lookup per id cost milliseconds at 100k).
    fn hold(&mut self, present: impl Iterator<Item = u32>) {
        let mut known = self.by_id.keys().peekable();
        self.held = present
            .filter(|id| {
                while known.next_if(|k| **k < *id).is_some() {}
                known.peek() != Some(&id)
            })
            .collect();
    }

    fn release(&mut self, id: u32) {
        if let Some(key) = self.by_id.remove(&id) {
            self.by_key.remove(&key);
            self.free.insert(id);
        }
    }

    /// Frees every id not in `keep` (ascending), walked beside `by_id`.
    fn retain(&mut self, keep: impl Iterator<Item = u32>) {
        let mut keep = keep.peekable();
        let gone: Vec<u32> = self
            .by_id
            .keys()
            .copied()
            .filter(|id| {
                while keep.next_if(|k| *k < *id).is_some() {}
                keep.peek() != Some(id)
            })
            .collect();
        for id in gone {
            if let Some(key) = self.by_id.remove(&id) {
                self.by_key.remove(&key);
            }
            self.free.insert(id);
        }
    }
}

/// The id allocator of the load-balancing maps.
#[derive(Debug, Clone)]
pub struct Ids {
    backends: Pool<BackendKey>,
    revnat: Pool<RevNatKey>,
}

impl Default for Ids {
    fn default() -> Self {
        Self::new()
    }
}

impl Ids {
    pub fn new() -> Self {
        Self::with_limits(MAX_BACKENDS, MAX_REVNAT)
    }

    /// An allocator with smaller id spaces (ids 1..=max), e.g. to exercise exhaustion in tests.
    pub fn with_limits(max_backends: u32, max_revnat: u32) -> Self {
        Self {
            backends: Pool::new(max_backends.min(MAX_BACKENDS)),
            revnat: Pool::new(max_revnat.min(MAX_REVNAT)),
        }
    }

    /// Ids as the maps hold them: backend ids from the backends map, rev-NAT ids from the frontends
    /// (slot 0) that point at them (the rev-NAT value has no protocol).
    pub fn restore(maps: &DesiredMaps) -> Self {
        let mut ids = Self::new();
        for (&id, be) in &maps.backends {
            ids.backends
                .restore((Ipv4Addr::from(be.addr.octets()), be.port.get(), be.proto), id);
        }
        for (key, svc) in &maps.services {
            if key.slot == 0 && svc.rev_nat != 0 {
                ids.revnat.restore(
                    (Ipv4Addr::from(key.addr.octets()), key.port.get(), key.proto),
                    svc.rev_nat,
                );
            }
        }
        ids
    }

    pub fn backend(&self, key: &BackendKey) -> Option<u32> {
        self.backends.get(key)
    }

    pub fn revnat(&self, key: &RevNatKey) -> Option<u32> {
        self.revnat.get(key)
    }

    /// The id of a backend, allocated if new; `None` when every id is in use.
    pub fn alloc_backend(&mut self, key: &BackendKey) -> Option<u32> {
        self.backends.alloc(key)
    }

    /// The rev-NAT id of a frontend address, allocated if new; `None` when every id is in use.
    pub fn alloc_revnat(&mut self, key: &RevNatKey) -> Option<u32> {
        self.revnat.alloc(key)
    }

    /// Marks the ids present in `actual` that this allocator does not know (orphans awaiting deletion)
    /// as not available, until a later call no longer sees them.
    pub fn hold(&mut self, actual: &DesiredMaps) {
        self.backends.hold(actual.backends.keys().copied());
        self.revnat.hold(actual.revnat.keys().copied());
    }

    /// As [`Self::hold`], with the ids (ascending) a dump holds that the state written does not.
    pub fn hold_ids(&mut self, backends: impl Iterator<Item = u32>, revnat: impl Iterator<Item = u32>) {
        self.backends.hold(backends);
        self.revnat.hold(revnat);
    }

    /// Frees every id that `desired` does not use. Call after `desired` has been written completely.
    pub fn release_unused(&mut self, desired: &DesiredMaps) {
        self.backends.retain(desired.backends.keys().copied());
        self.revnat.retain(desired.revnat.keys().copied());
    }

    /// Frees the given ids (no entry uses them any more; call after that was written).
    pub fn release(&mut self, backends: &[u32], revnat: &[u32]) {
        for id in backends {
            self.backends.release(*id);
        }
        for id in revnat {
            self.revnat.release(*id);
        }
    }

    /// Number of (backend, rev-NAT) ids in use.
    pub fn len(&self) -> (usize, usize) {
        (self.backends.by_id.len(), self.revnat.by_id.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_ids_are_reused_lowest_first_and_held_ids_are_skipped() {
        let mut pool: Pool<u8> = Pool::new(10);
        assert_eq!(pool.alloc(&1), Some(1));
        assert_eq!(pool.alloc(&2), Some(2));
        assert_eq!(pool.alloc(&3), Some(3));
        assert_eq!(pool.alloc(&2), Some(2), "same key, same id");
        pool.retain([3].into_iter());
        pool.hold([1].into_iter());
        assert_eq!(pool.alloc(&4), Some(2), "1 is held by an orphan");
        pool.hold(std::iter::empty());
        assert_eq!(pool.alloc(&5), Some(1));
        assert_eq!(pool.alloc(&6), Some(4));
    }

    #[test]
    fn restore_fills_gaps_into_the_free_list_and_rejects_duplicates() {
        let mut pool: Pool<u8> = Pool::new(10);
        assert!(pool.restore(7, 5));
        assert!(!pool.restore(8, 5), "id taken");
        assert!(!pool.restore(7, 6), "key taken");
        assert_eq!(pool.alloc(&9), Some(1));
        assert_eq!(pool.alloc(&7), Some(5));
    }

    #[test]
    fn exhaustion_is_reported() {
        let mut pool: Pool<u8> = Pool::new(2);
        assert_eq!(pool.alloc(&1), Some(1));
        assert_eq!(pool.alloc(&2), Some(2));
        assert_eq!(pool.alloc(&3), None);
    }
}
