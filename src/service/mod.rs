//! The use cases: users (create, replace, update, delete, get, list; with idempotency,
//! conditional writes and audit), API keys, authentication and the limits on callers. Every
//! operation of the API is one function here, called by its handler; each checks the caller's
//! scope itself. Nothing here knows HTTP.

mod api_keys;
mod auth;
pub mod cache;
mod events;
pub mod oauth;
pub mod rate_limit;
mod rendered;
mod users;

use std::{net::IpAddr, sync::Arc, time::Duration};

pub use self::{
    api_keys::ApiKeyView,
    auth::authorize,
    events::{EventPage, FeedSettings, StreamItem},
    rate_limit::{Bucket, Decision, Limits},
    rendered::SharedEvent,
    users::{Created, Idempotent, ListRequest},
};
use self::{
    auth::{KeyCache, KeyUsage},
    cache::{ReadCache, Weight},
    events::Feed,
    oauth::{OAuthSettings, OAuthVerifier},
    rate_limit::RateLimiter,
};
use crate::{
    domain::Principal,
    error::AppError,
    store::{DataVersion, Store},
};

/// The service's settings, from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Writes without `If-Match` are refused (428).
    pub require_if_match: bool,
    /// How long an `Idempotency-Key` is held.
    pub idempotency_ttl: chrono::Duration,
    /// How long a verified API key is trusted without a lookup (0: always look it up).
    pub key_cache_ttl: Duration,
    pub key_cache_capacity: usize,
    /// How often keys' `last_used_at` is written.
    pub key_usage_flush: Duration,
    pub limits: Limits,
    /// Present when OAuth access tokens are accepted.
    pub oauth: Option<OAuthSettings>,
    pub feed: FeedSettings,
}

impl Default for Settings {
    /// What a command run by the operator needs: no caches, no limits, no identity provider.
    fn default() -> Self {
        Settings {
            require_if_match: false,
            idempotency_ttl: chrono::Duration::days(1),
            key_cache_ttl: Duration::ZERO,
            key_cache_capacity: 1,
            key_usage_flush: Duration::from_secs(60),
            limits: Limits {
                per_principal: 0,
                per_ip: 0,
                window: Duration::from_secs(60),
                sync: Duration::from_millis(500),
            },
            oauth: None,
            feed: FeedSettings::default(),
        }
    }
}

/// The service: the store and what the use cases keep beside it.
pub struct Service {
    store: Store,
    settings: Settings,
    keys: KeyCache,
    usage: KeyUsage,
    oauth: Option<OAuthVerifier>,
    /// Present unless every rate limit is off.
    limiter: Option<RateLimiter>,
    feed: Feed,
}

impl Service {
    /// The service over `store`. With OAuth configured, the identity provider's keys are
    /// loaded once here; if that fails it is logged, and tried again on the first token.
    pub async fn new(store: Store, settings: Settings) -> Self {
        let oauth = match settings.oauth.clone() {
            Some(oauth) => {
                tracing::info!(issuer = %oauth.issuer, audience = %oauth.audience, "accepting OAuth access tokens");
                Some(OAuthVerifier::new(oauth).await)
            }
            None => None,
        };
        let limits = settings.limits;
        let limiter = (limits.per_principal > 0 || limits.per_ip > 0)
            .then(|| RateLimiter::new(store.clone(), limits));
        Service {
            keys: KeyCache::new(settings.key_cache_ttl, settings.key_cache_capacity),
            usage: KeyUsage::default(),
            oauth,
            limiter,
            feed: Feed::new(settings.feed),
            store,
            settings,
        }
    }

    /// Starts what runs beside the requests until the process ends: the change feed's
    /// follower and pruning, writing keys' last use, sharing rate-limit counts with other
    /// instances, dropping expired idempotency keys.
    pub async fn start_background(self: &Arc<Self>) -> Result<(), AppError> {
        self.start_feed().await?;
        let service = self.clone();
        every(self.settings.key_usage_flush, move || {
            let service = service.clone();
            async move { service.flush().await }
        });
        if self.limiter.is_some() {
            let service = self.clone();
            every(self.settings.limits.sync, move || {
                let service = service.clone();
                async move {
                    if let Some(limiter) = &service.limiter {
                        limiter.sync().await;
                    }
                }
            });
        }
        let service = self.clone();
        every(Duration::from_secs(3600), move || {
            let service = service.clone();
            async move {
                match service.store.purge_expired_idempotency_keys().await {
                    Ok(0) => {}
                    Ok(purged) => tracing::info!(purged, "expired idempotency keys purged"),
                    Err(err) => tracing::warn!(error = %err, "could not purge idempotency keys"),
                }
            }
        });
        Ok(())
    }

    /// What must be written before the process ends: keys' last use.
    pub async fn flush(&self) {
        self.usage.flush(&self.store).await;
    }

    /// Whether the service can serve: its database answers.
    pub async fn ready(&self) -> Result<(), AppError> {
        self.store.ping().await.map_err(|err| {
            tracing::warn!(error = %err, "readiness check failed");
            AppError::Unavailable("the database does not answer".into())
        })
    }

    /// Connections of the database pool in use and idle.
    pub fn pool_connections(&self) -> (u32, u32) {
        self.store.pool_connections()
    }

    /// Counts a request against `bucket`'s limit; `None` when that limit is off. A refusal is
    /// [`AppError::RateLimited`], with the decision for the `RateLimit-*` headers.
    pub async fn count_request(&self, bucket: Bucket) -> Option<Decision> {
        self.limiter.as_ref()?.check(&bucket).await
    }

    /// Authenticates `token` and counts the request: against the principal's limit, or for bad
    /// credentials against the client address's, so that guessing keys is throttled like any
    /// anonymous traffic. Returns the principal, and the limit's decision if one applied.
    pub async fn admit(
        &self,
        token: &str,
        client: Option<IpAddr>,
    ) -> (Result<Principal, AppError>, Option<Decision>) {
        // An address over its limit (guessing keys, say) costs no lookup of what it sends;
        // a key this instance has already verified is answered as usual.
        if let (Some(limiter), Some(ip)) = (&self.limiter, client)
            && let Some(refused) = limiter.exhausted(&Bucket::Ip(ip))
            && !self.is_verified_key(token)
        {
            let retry_after = refused.reset.max(1);
            return (Err(AppError::RateLimited { retry_after }), Some(refused));
        }
        let outcome = self.authenticate(token).await;
        let bucket = match &outcome {
            Ok(principal) => Some(Bucket::Principal(principal.subject.clone())),
            Err(AppError::InvalidToken(_)) => client.map(Bucket::Ip),
            Err(_) => None,
        };
        let decision = match bucket {
            Some(bucket) => self.count_request(bucket).await,
            None => None,
        };
        let outcome = match decision {
            Some(decision) if !decision.allowed => Err(AppError::RateLimited {
                retry_after: decision.reset.max(1),
            }),
            _ => outcome,
        };
        (outcome, decision)
    }

    /// `key`'s value from `cache` while the database is unchanged, else what `read` reads
    /// (then kept). Without a cache, or where the store cannot tell changes, it always reads.
    async fn read_through<K, V>(
        &self,
        cache: Option<&ReadCache<K, V>>,
        key: K,
        read: impl AsyncFnOnce() -> Result<V, AppError>,
    ) -> Result<V, AppError>
    where
        K: std::hash::Hash + Eq + Weight,
        V: Clone + Weight,
    {
        let version: Option<DataVersion> = cache.and(self.store.data_version());
        if let (Some(cache), Some(version)) = (cache, version) {
            if let Some(value) = cache.lookup(&key, version) {
                return Ok(value);
            }
            let value = read().await?;
            cache.keep(version, key, value.clone());
            return Ok(value);
        }
        read().await
    }
}

/// Runs `work` every `interval` (the first time one interval from now) for as long as the
/// process runs.
fn every<F, Fut>(interval: Duration, work: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            work().await;
        }
    });
}
