//! Who is calling: bearer credentials (API keys and OAuth access tokens) resolved to the
//! principal they stand for, and when each key was last used.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

use super::Service;
use crate::{
    domain::{ApiKeySecret, KeyDigest, Principal, Scope, ScopeSet, Subject},
    error::AppError,
    store,
};

/// Fails with 403 unless `principal` holds `needed` (or `admin`).
pub fn authorize(principal: &Principal, needed: Scope) -> Result<(), AppError> {
    if principal.allows(needed) {
        Ok(())
    } else {
        Err(AppError::Forbidden { needed })
    }
}

impl Service {
    /// Resolves a bearer token to its principal, by its shape: keys have the `uak_` prefix,
    /// JWTs three dot-separated segments. Unknown, revoked and expired keys and bad tokens are
    /// all 401 (`InvalidToken`).
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AppError> {
        if ApiKeySecret::looks_like_key(token) {
            return self.verify_key(token).await;
        }
        if token.split('.').count() == 3 {
            return match &self.oauth {
                Some(verifier) => verifier.verify(token).await,
                None => Err(AppError::InvalidToken(
                    "this server accepts no OAuth access tokens: no identity provider is \
                     configured"
                        .into(),
                )),
            };
        }
        Err(AppError::InvalidToken(
            "the bearer token is neither a users-api key nor a JWT access token".into(),
        ))
    }

    /// Whether `token` is a key in the key cache: verified lately, no lookup needed.
    pub(super) fn is_verified_key(&self, token: &str) -> bool {
        ApiKeySecret::looks_like_key(token) && self.keys.get(&KeyDigest::of(token)).is_some()
    }

    /// A key from the cache, or else from the database (and then cached if live). A use is
    /// noted for `last_used_at`.
    async fn verify_key(&self, token: &str) -> Result<Principal, AppError> {
        let digest = KeyDigest::of(token);
        let key = match self.keys.get(&digest) {
            Some(key) => key,
            None => self.load_key(digest).await?,
        };
        let now = store::now();
        if key.expires_at.is_some_and(|at| at <= now) {
            return Err(AppError::InvalidToken("the API key has expired".into()));
        }
        self.usage.record(key.key_id, now);
        Ok(key.principal)
    }

    async fn load_key(&self, digest: KeyDigest) -> Result<CachedKey, AppError> {
        let key = self
            .store
            .find_api_key(&digest)
            .await?
            .ok_or_else(|| AppError::InvalidToken("the API key is unknown".into()))?;
        if key.revoked_at.is_some() {
            return Err(AppError::InvalidToken(
                "the API key has been revoked".into(),
            ));
        }
        let cached = CachedKey {
            key_id: key.id,
            principal: Principal {
                subject: Subject::ApiKey(key.id),
                scopes: ScopeSet::from_stored(&key.scopes),
            },
            expires_at: key.expires_at,
        };
        self.keys.put(digest, cached.clone());
        Ok(cached)
    }
}

/// A verified key as the cache keeps it: who it is and until when it may be used.
#[derive(Debug, Clone)]
struct CachedKey {
    key_id: i64,
    principal: Principal,
    expires_at: Option<DateTime<Utc>>,
}

/// Verified API keys, remembered for a short while so that a request does not cost a database
/// lookup for its credentials. A key revoked through this instance is forgotten at once; one
/// revoked elsewhere (another instance, the CLI) is refused once its entry ages out, so the
/// bound on honouring a revocation everywhere is the TTL.
pub(super) struct KeyCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<KeyDigest, (CachedKey, Instant)>>,
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

    fn get(&self, digest: &KeyDigest) -> Option<CachedKey> {
        let entries = self.entries.lock().expect("key cache lock");
        let (key, fetched) = entries.get(digest)?;
        (fetched.elapsed() < self.ttl).then(|| key.clone())
    }

    fn put(&self, digest: KeyDigest, key: CachedKey) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().expect("key cache lock");
        if entries.len() >= self.capacity && !entries.contains_key(&digest) {
            let ttl = self.ttl;
            entries.retain(|_, (_, fetched)| fetched.elapsed() < ttl);
            if entries.len() >= self.capacity {
                // Still full of fresh entries: start over rather than grow without bound.
                entries.clear();
            }
        }
        entries.insert(digest, (key, Instant::now()));
    }

    /// Forgets a key at once (revoked through this instance).
    pub fn forget(&self, key_id: i64) {
        self.entries
            .lock()
            .expect("key cache lock")
            .retain(|_, (key, _)| key.key_id != key_id);
    }
}

/// When each API key was last used, without a database write per request: uses are noted in
/// memory and written in batches.
#[derive(Default)]
pub(super) struct KeyUsage {
    pending: Mutex<HashMap<i64, DateTime<Utc>>>,
}

impl KeyUsage {
    fn record(&self, key_id: i64, at: DateTime<Utc>) {
        self.pending.lock().expect("usage lock").insert(key_id, at);
    }

    /// The newer of the stored time and a use not yet written.
    pub fn latest(&self, key_id: i64, stored: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let pending = self
            .pending
            .lock()
            .expect("usage lock")
            .get(&key_id)
            .copied();
        stored.max(pending)
    }

    /// Writes the pending times; on failure they are kept for the next attempt.
    pub async fn flush(&self, store: &store::Store) {
        let batch: Vec<_> = std::mem::take(&mut *self.pending.lock().expect("usage lock"))
            .into_iter()
            .collect();
        for (key_id, at) in batch {
            if let Err(err) = store.touch_api_key(key_id, at).await {
                tracing::warn!(key_id, error = %err, "could not record API key use; will retry");
                let mut pending = self.pending.lock().expect("usage lock");
                let entry = pending.entry(key_id).or_insert(at);
                *entry = (*entry).max(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        cache.put(KeyDigest::of("a"), key(1));
        cache.put(KeyDigest::of("b"), key(2));
        assert_eq!(cache.get(&KeyDigest::of("a")).map(|k| k.key_id), Some(1));
        cache.forget(1);
        assert!(cache.get(&KeyDigest::of("a")).is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get(&KeyDigest::of("b")).is_none(), "aged out");
    }

    #[test]
    fn the_latest_use_of_each_key_is_kept_until_written() {
        let usage = KeyUsage::default();
        let at = |secs| DateTime::from_timestamp(secs, 0).unwrap();
        usage.record(1, at(90));
        usage.record(1, at(100));
        usage.record(2, at(50));
        assert_eq!(
            usage.latest(1, Some(at(10))),
            Some(at(100)),
            "the latest use"
        );
        assert_eq!(
            usage.latest(1, Some(at(200))),
            Some(at(200)),
            "never behind what is stored"
        );
        assert_eq!(usage.latest(3, None), None);
    }

    #[test]
    fn the_cache_is_bounded_and_can_be_off() {
        let cache = KeyCache::new(Duration::from_secs(60), 3);
        for i in 0..10 {
            cache.put(KeyDigest::of(&format!("k{i}")), key(i));
        }
        assert!(cache.entries.lock().unwrap().len() <= 3);
        let off = KeyCache::new(Duration::ZERO, 3);
        off.put(KeyDigest::of("a"), key(1));
        assert!(off.get(&KeyDigest::of("a")).is_none());
    }
}
