//! Per-caller request limits, shared by every instance through the database.
//!
//! Each instance counts hits in memory and adds them to a shared per-window counter every
//! `sync` interval; the shared total seeds a new window and is refreshed at every sync. So the
//! database sees one write per busy bucket per interval, not one per request, and across N
//! instances a bucket can overshoot its limit by at most what the other instances admit within
//! one sync interval.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{domain::Subject, store::Store};

/// Who a request counts against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bucket {
    Principal(Subject),
    /// Unauthenticated requests (and failed authentications), by client address.
    Ip(IpAddr),
}

impl Bucket {
    fn key(&self) -> String {
        match self {
            Bucket::Principal(Subject::ApiKey(id)) => format!("key:{id}"),
            Bucket::Principal(Subject::Token(sub)) => format!("sub:{sub}"),
            // One client is one IPv4 address, or one IPv6 /64 (what a single host or site
            // is usually given), so that rotating through an IPv6 prefix gains nothing.
            Bucket::Ip(ip) => match ip.to_canonical() {
                IpAddr::V4(v4) => format!("ip:{v4}"),
                IpAddr::V6(v6) => {
                    let [a, b, c, d, ..] = v6.segments();
                    format!("ip:{a:x}:{b:x}:{c:x}:{d:x}::/64")
                }
            },
        }
    }
}

/// The outcome of counting one request, and what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window resets.
    pub reset: u64,
}

impl Decision {
    fn refused(limit: u64, reset: u64) -> Self {
        Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    window_start: i64,
    /// The shared total as last read from the database (this instance's synced hits included).
    shared: i64,
    /// Hits admitted here and not yet added to the shared total.
    pending: i64,
}

impl Counter {
    /// Requests counted in the window, here and elsewhere.
    fn used(&self) -> u64 {
        (self.shared + self.pending).max(0) as u64
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests per window per principal; 0 turns the principal limit off.
    pub per_principal: u64,
    /// Requests per window per client IP when unauthenticated; 0 turns it off.
    pub per_ip: u64,
    pub window: Duration,
    pub sync: Duration,
}

pub struct RateLimiter {
    store: Store,
    limits: Limits,
    counters: Mutex<HashMap<String, Counter>>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl RateLimiter {
    pub fn new(store: Store, limits: Limits) -> Self {
        RateLimiter {
            store,
            limits,
            counters: Mutex::default(),
        }
    }

    fn window_secs(&self) -> i64 {
        self.limits.window.as_secs().max(1) as i64
    }

    /// The window `now` falls in: its start, and the seconds until it resets.
    fn window_at(&self, now: i64) -> (i64, u64) {
        let window = self.window_secs();
        let start = now - now.rem_euclid(window);
        (start, (start + window - now).max(0) as u64)
    }

    fn limit(&self, bucket: &Bucket) -> u64 {
        match bucket {
            Bucket::Principal(_) => self.limits.per_principal,
            Bucket::Ip(_) => self.limits.per_ip,
        }
    }

    /// The refusal `bucket` would get now, by what this instance already knows (no database
    /// read, nothing counted); `None` while it may still make requests.
    pub fn exhausted(&self, bucket: &Bucket) -> Option<Decision> {
        let limit = self.limit(bucket);
        let (window_start, reset) = self.window_at(unix_now());
        let counters = self.counters.lock().expect("rate-limit lock");
        let counter = counters.get(&bucket.key())?;
        (limit > 0 && counter.window_start == window_start && counter.used() >= limit)
            .then(|| Decision::refused(limit, reset))
    }

    /// Counts a request against `bucket`; `None` when that kind of limit is off.
    pub async fn check(&self, bucket: &Bucket) -> Option<Decision> {
        let limit = self.limit(bucket);
        if limit == 0 {
            return None;
        }
        let (window_start, reset) = self.window_at(unix_now());
        let key = bucket.key();
        let known = self
            .counters
            .lock()
            .expect("rate-limit lock")
            .get(&key)
            .is_some_and(|c| c.window_start == window_start);
        if !known {
            // First hit of this window here: start from what other instances have counted.
            let shared = self
                .store
                .rate_limit_hits(&key, window_start)
                .await
                .unwrap_or_else(|err| {
                    tracing::warn!(error = %err, "could not read a shared rate-limit counter");
                    0
                });
            let mut counters = self.counters.lock().expect("rate-limit lock");
            let entry = counters.entry(key.clone()).or_insert(Counter {
                window_start,
                shared,
                pending: 0,
            });
            if entry.window_start != window_start {
                *entry = Counter {
                    window_start,
                    shared,
                    pending: 0,
                };
            }
        }
        let mut counters = self.counters.lock().expect("rate-limit lock");
        let counter = counters.get_mut(&key).expect("seeded above");
        let used = counter.used();
        if used >= limit {
            return Some(Decision::refused(limit, reset));
        }
        counter.pending += 1;
        Some(Decision {
            allowed: true,
            limit,
            remaining: limit - used - 1,
            reset,
        })
    }

    /// Adds pending hits to the shared counters and learns the other instances' totals.
    pub async fn sync(&self) {
        let (window_start, _) = self.window_at(unix_now());
        let batch: Vec<(String, Counter)> = self
            .counters
            .lock()
            .expect("rate-limit lock")
            .iter()
            .filter(|(_, c)| c.pending > 0 || c.window_start == window_start)
            .map(|(k, c)| (k.clone(), *c))
            .collect();
        for (key, counter) in batch {
            let shared = if counter.pending > 0 {
                self.store
                    .add_rate_limit_hits(&key, counter.window_start, counter.pending)
                    .await
            } else {
                self.store.rate_limit_hits(&key, counter.window_start).await
            };
            match shared {
                Ok(shared) => {
                    let mut counters = self.counters.lock().expect("rate-limit lock");
                    if let Some(live) = counters.get_mut(&key)
                        && live.window_start == counter.window_start
                    {
                        live.shared = shared;
                        live.pending -= counter.pending;
                    }
                }
                Err(err) => tracing::warn!(error = %err, "could not sync a rate-limit counter"),
            }
        }
        // Windows that have ended matter to nobody any more.
        self.counters
            .lock()
            .expect("rate-limit lock")
            .retain(|_, c| c.window_start >= window_start || c.pending > 0);
        let before = window_start - self.window_secs();
        if let Err(err) = self.store.purge_rate_limit_windows(before).await {
            tracing::warn!(error = %err, "could not purge old rate-limit windows");
        }
    }
}
