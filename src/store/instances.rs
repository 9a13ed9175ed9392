//! A service's instances by key, without storing the key twice: the
//! table holds the `Instance`s themselves and finds them by the key their
//! data already carries (`InstanceData::key`). A map keyed by a second
//! `Arc<str>` cost 16 bytes more per entry (about 20 with the table's
//! load), at a million instances 20 MB.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;

use super::instance::Instance;

/// 64 bits of a key's hash, seeded once per process (keys come from the
/// network; equal hashes only cost a comparison more).
pub(crate) fn key_hash(key: &str) -> u64 {
    static SEED: std::sync::LazyLock<foldhash::fast::FixedState> = std::sync::LazyLock::new(|| {
        let seed = std::collections::hash_map::RandomState::new().hash_one(0u8);
        foldhash::fast::FixedState::with_seed(seed)
    });
    SEED.hash_one(key)
}

fn hash_of(i: &Instance) -> u64 {
    key_hash(&i.key)
}

/// Instances by `ip#port#cluster`, the key of their data.
#[derive(Debug, Default, Clone)]
pub struct InstanceMap {
    table: HashTable<Instance>,
}

impl InstanceMap {
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.table.capacity()
    }

    pub fn get(&self, key: &str) -> Option<&Instance> {
        self.table.find(key_hash(key), |i| &*i.key == key)
    }

    /// The instance to change. Its key must stay as it is (nothing changes
    /// a key: an instance with another key is another instance).
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Instance> {
        self.table.find_mut(key_hash(key), |i| &*i.key == key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Inserts `inst` under its key; the instance it replaces, if any.
    pub fn insert(&mut self, inst: Instance) -> Option<Instance> {
        let hash = hash_of(&inst);
        match self.table.entry(hash, |i| i.key == inst.key, hash_of) {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                Some(std::mem::replace(e.get_mut(), inst))
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(inst);
                None
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Instance> {
        match self.table.find_entry(key_hash(key), |i| &*i.key == key) {
            Ok(e) => Some(e.remove().0),
            Err(_) => None,
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &Instance> {
        self.table.iter()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Instance> {
        self.table.iter_mut()
    }

    /// (key, instance) pairs, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Instance)> {
        self.table.iter().map(|i| (&i.data.key, i))
    }

    pub fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.table.iter().map(|i| &i.data.key)
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&mut Instance) -> bool) {
        self.table.retain(|i| keep(i));
    }

    /// Gives room back down to `min` entries (or what it holds).
    pub fn shrink_to(&mut self, min: usize) {
        self.table.shrink_to(min, hash_of);
    }
}
