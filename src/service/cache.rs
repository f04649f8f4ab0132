//! What was last read of some rows, kept for as long as the database has not changed since.
//!
//! A value is kept with the [`DataVersion`] read *before* it was read from the database, and
//! handed out only while the version is still the same: no commit since, by this process or
//! any other, so the database still holds what the value was made from. The first lookup that
//! finds a new version drops everything kept. So a read never misses a write acknowledged
//! before it (every commit changes the version before anyone is told of it), and nothing
//! needs to be told of writes. The price is coarseness: any commit empties the cache, so it
//! pays under read-mostly loads and costs a lookup in a map under write-heavy ones.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::store::DataVersion;

/// The memory a key or value holds, roughly, in bytes: what a cache's budget counts.
pub trait Weight {
    fn weight(&self) -> usize;
}

impl Weight for i64 {
    fn weight(&self) -> usize {
        size_of::<i64>()
    }
}

impl Weight for String {
    fn weight(&self) -> usize {
        size_of::<String>() + self.len()
    }
}

/// A map entry's own cost beyond its key and value (hash table slot, control byte, slack).
const ENTRY_OVERHEAD: usize = 32;

/// Values of type `V` by keys of type `K`, within a budget of bytes.
pub struct ReadCache<K, V> {
    budget: usize,
    kept: RwLock<Kept<K, V>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct Kept<K, V> {
    /// The version every value in `values` was read at.
    version: Option<DataVersion>,
    values: HashMap<K, V>,
    /// The weight of `values`.
    bytes: usize,
}

impl<K: Hash + Eq + Weight, V: Clone + Weight> ReadCache<K, V> {
    /// A cache of at most `budget` bytes; `None` for a budget of 0 (the cache is off).
    pub fn new(budget: usize) -> Option<Self> {
        (budget > 0).then(|| ReadCache {
            budget,
            kept: RwLock::new(Kept {
                version: None,
                values: HashMap::new(),
                bytes: 0,
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// `key`'s value if it was kept at `version`; a newer version drops everything kept.
    pub(super) fn lookup(&self, key: &K, version: DataVersion) -> Option<V> {
        let found = {
            let kept = self.kept.read().unwrap_or_else(PoisonError::into_inner);
            (kept.version == Some(version)).then(|| kept.values.get(key).cloned())
        };
        let found = found.unwrap_or_else(|| {
            let mut kept = self.kept.write().unwrap_or_else(PoisonError::into_inner);
            if kept.version != Some(version) {
                kept.version = Some(version);
                kept.bytes = 0;
                kept.values = HashMap::new();
            }
            None
        });
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps `value`, read for `key` after a lookup at `version`, unless the database has
    /// changed since, or it alone is over the budget. A full cache starts over to make room.
    pub(super) fn keep(&self, version: DataVersion, key: K, value: V) {
        let weight = key.weight() + value.weight() + ENTRY_OVERHEAD;
        if weight > self.budget {
            return;
        }
        let mut kept = self.kept.write().unwrap_or_else(PoisonError::into_inner);
        if kept.version != Some(version) {
            return;
        }
        if kept.bytes + weight > self.budget {
            kept.bytes = 0;
            kept.values = HashMap::new();
        }
        kept.bytes += weight;
        if let Some(old) = kept.values.insert(key, value) {
            kept.bytes -= old.weight() + ENTRY_OVERHEAD;
        }
    }

    /// Lookups answered from the cache and lookups not, since start (for the metrics).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Value(&'static str);

    impl Weight for Value {
        fn weight(&self) -> usize {
            100
        }
    }

    fn version(n: u8) -> DataVersion {
        DataVersion::for_tests(n)
    }

    #[test]
    fn values_are_kept_only_while_the_version_holds() {
        let cache = ReadCache::new(10_000).unwrap();
        assert_eq!(cache.lookup(&1_i64, version(1)), None);
        cache.keep(version(1), 1, Value("one"));
        assert_eq!(cache.lookup(&1, version(1)), Some(Value("one")));
        // A value read before a change is not kept after it.
        assert_eq!(cache.lookup(&2, version(2)), None);
        cache.keep(version(1), 2, Value("stale"));
        assert_eq!(cache.lookup(&2, version(2)), None);
        assert_eq!(cache.lookup(&1, version(2)), None, "the change dropped it");
        assert_eq!(cache.counts(), (1, 4));
    }

    #[test]
    fn a_full_cache_starts_over_and_never_passes_its_budget() {
        let cache = ReadCache::new(3 * (100 + 8 + ENTRY_OVERHEAD)).unwrap();
        for key in 0..10_i64 {
            cache.lookup(&key, version(1));
            cache.keep(version(1), key, Value("v"));
            let kept = cache.kept.read().unwrap();
            assert!(kept.bytes <= cache.budget);
            assert_eq!(kept.values.len() as i64, key % 3 + 1);
        }
        assert!(ReadCache::<i64, Value>::new(0).is_none());
    }
}
