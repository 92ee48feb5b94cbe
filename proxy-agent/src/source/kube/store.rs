//! One kind's objects as last listed and watched, by namespace/name. The agent keeps its own store
//! instead of kube's reflector store because that one holds the API's `ObjectMeta` (336 bytes inline)
//! in every object; the agent's compact kinds carry the few metadata fields it reads.
//!
//! A relist (the first list, after 410 Gone, or when the API server is back) fills a side buffer that
//! replaces the objects only once the list is complete, so a reader never sees a half-listed kind and
//! the datapath keeps its state while the API server is away.

use std::{
    collections::BTreeMap,
    sync::{Arc, PoisonError, RwLock},
};

/// `(namespace, name)`; the namespace is empty for cluster-scoped kinds.
pub type Key = (String, String);

/// A change to apply, in the order the watch reports them.
#[derive(Debug)]
pub enum Change<K> {
    /// A relist begins.
    Relist,
    /// An object of the relist.
    Listed(Key, K),
    /// The relist is complete: its objects replace the stored ones.
    RelistDone,
    /// An object created or changed.
    Applied(Key, K),
    /// An object deleted (or no longer usable).
    Deleted(Key),
}

/// Shared between the watch task that writes and the source that reads.
pub struct ObjectStore<K> {
    inner: Arc<RwLock<Inner<K>>>,
}

impl<K> Clone for ObjectStore<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K> Default for ObjectStore<K> {
    fn default() -> Self {
        Self {
            inner: Arc::new(RwLock::new(Inner {
                objects: BTreeMap::new(),
                relisting: None,
            })),
        }
    }
}

struct Inner<K> {
    objects: BTreeMap<Key, Arc<K>>,
    relisting: Option<BTreeMap<Key, Arc<K>>>,
}

impl<K> ObjectStore<K> {
    pub fn apply(&self, change: Change<K>) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        match change {
            Change::Relist => inner.relisting = Some(BTreeMap::new()),
            Change::Listed(key, object) => {
                inner
                    .relisting
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key, Arc::new(object));
            }
            Change::RelistDone => {
                if let Some(listed) = inner.relisting.take() {
                    inner.objects = listed;
                }
            }
            Change::Applied(key, object) => {
                inner.objects.insert(key, Arc::new(object));
            }
            Change::Deleted(key) => {
                inner.objects.remove(&key);
            }
        }
    }

    pub fn count(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .objects
            .len()
    }

    /// The stored objects (shared, not copied: an object the watch did not change stays the same
    /// allocation), sorted by namespace and name.
    pub fn sorted(&self) -> Vec<Arc<K>> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .objects
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, name: &str) -> Key {
        (ns.into(), name.into())
    }

    fn values(store: &ObjectStore<u32>) -> Vec<u32> {
        store.sorted().iter().map(|v| **v).collect()
    }

    #[test]
    fn a_relist_replaces_the_objects_only_when_complete() {
        let store = ObjectStore::default();
        store.apply(Change::Applied(key("b", "x"), 1));
        store.apply(Change::Applied(key("a", "y"), 2));
        assert_eq!(values(&store), [2, 1], "sorted by namespace, then name");
        store.apply(Change::Relist);
        store.apply(Change::Listed(key("c", "z"), 3));
        assert_eq!(
            values(&store),
            [2, 1],
            "the old objects until the list is complete"
        );
        store.apply(Change::RelistDone);
        assert_eq!(values(&store), [3]);
        store.apply(Change::Deleted(key("c", "z")));
        assert_eq!(store.count(), 0);
    }

    #[test]
    fn an_unchanged_object_stays_the_same_allocation() {
        let store = ObjectStore::default();
        store.apply(Change::Applied(key("a", "x"), 1));
        store.apply(Change::Applied(key("a", "y"), 2));
        let before = store.sorted();
        store.apply(Change::Applied(key("a", "y"), 3));
        let after = store.sorted();
        assert!(Arc::ptr_eq(&before[0], &after[0]));
        assert!(!Arc::ptr_eq(&before[1], &after[1]));
    }
}
