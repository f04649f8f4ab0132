//! Verified API keys, remembered for a short while so that a request does not cost a database
//! lookup for its credentials. A key revoked through this instance is forgotten at once; one
//! revoked elsewhere (another instance, the CLI) is refused once its entry ages out, so the
//! bound on honouring a revocation everywhere is the TTL.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

use super::{Principal, key_hash::KeyHash};
use crate::domain::KeyDigest;

#[derive(Clone)]
struct Entry {
    key_id: i64,
    principal: Principal,
    expires_at: Option<DateTime<Utc>>,
    fetched: Instant,
}

/// A key as the cache hands it back: who it is and until when it may be used.
pub struct CachedKey {
    pub key_id: i64,
    pub principal: Principal,
    pub expires_at: Option<DateTime<Utc>>,
}

pub struct KeyCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<KeyDigest, Entry, KeyHash>>,
}

impl KeyCache {
    /// A TTL of zero turns the cache off.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        KeyCache {
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::default(),
        }
    }

    /// The live entry for a key's digest, if one was verified less than a TTL ago.
    pub fn get(&self, digest: &KeyDigest) -> Option<CachedKey> {
        let entries = self.entries.lock().expect("key cache lock");
        let entry = entries.get(digest)?;
        (entry.fetched.elapsed() < self.ttl).then(|| CachedKey {
            key_id: entry.key_id,
            principal: entry.principal.clone(),
            expires_at: entry.expires_at,
        })
    }

    /// Remembers a key just verified against the database (live keys only).
    pub fn put(&self, digest: KeyDigest, key: CachedKey) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().expect("key cache lock");
        if entries.len() >= self.capacity && !entries.contains_key(&digest) {
            let ttl = self.ttl;
            entries.retain(|_, entry| entry.fetched.elapsed() < ttl);
            if entries.len() >= self.capacity {
                // Still full of fresh entries: start over rather than grow without bound.
                entries.clear();
            }
        }
        entries.insert(
            digest,
            Entry {
                key_id: key.key_id,
                principal: key.principal,
                expires_at: key.expires_at,
                fetched: Instant::now(),
            },
        );
    }

    /// Forgets a key at once (revoked through this instance).
    pub fn forget(&self, key_id: i64) {
        self.entries
            .lock()
            .expect("key cache lock")
            .retain(|_, entry| entry.key_id != key_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        auth::Subject,
        domain::{Scope, ScopeSet},
    };

    fn digest(name: &str) -> KeyDigest {
        crate::domain::ApiKeySecret::digest_presented(name)
    }

    fn key(id: i64) -> CachedKey {
        CachedKey {
            key_id: id,
            principal: Principal {
                subject: Subject::ApiKey(id),
                scopes: ScopeSet::new([Scope::UsersRead]),
            },
            expires_at: None,
        }
    }

    #[test]
    fn entries_live_for_the_ttl_and_can_be_forgotten() {
        let cache = KeyCache::new(Duration::from_millis(50), 10);
        cache.put(digest("a"), key(1));
        cache.put(digest("b"), key(2));
        assert_eq!(cache.get(&digest("a")).map(|k| k.key_id), Some(1));
        cache.forget(1);
        assert!(cache.get(&digest("a")).is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get(&digest("b")).is_none(), "aged out");
    }

    #[test]
    fn the_cache_is_bounded_and_can_be_off() {
        let cache = KeyCache::new(Duration::from_secs(60), 3);
        for i in 0..10 {
            cache.put(digest(&format!("k{i}")), key(i));
        }
        assert!(cache.entries.lock().unwrap().len() <= 3);
        let off = KeyCache::new(Duration::ZERO, 3);
        off.put(digest("a"), key(1));
        assert!(off.get(&digest("a")).is_none());
    }
}
