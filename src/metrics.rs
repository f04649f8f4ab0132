//! Prometheus metrics: requests by operation and status, latency, pool use, inline SQLite
//! reads, read-cache lookups, rate-limit refusals.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::sync::{Mutex, PoisonError};

use sea_orm::DatabaseConnection;

use crate::store::Reads;

/// This process's metrics; each instance is scraped on its own.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pool: IntGaugeVec,
    inline_reads: IntCounterVec,
    read_cache: IntCounterVec,
    /// Held while the counters kept elsewhere (`inline_reads`, `read_cache`) catch up, so
    /// concurrent scrapes do not both add a difference.
    catch_up: Mutex<()>,
    rate_limited: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("users_api".into()), None).expect("a valid metrics prefix");
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by operation and status code",
            ),
            &["operation", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time to answer a request, by operation",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["operation"],
        )
        .expect("valid metric");
        let pool = IntGaugeVec::new(
            Opts::new("db_pool_connections", "Database pool connections by state"),
            &["state"],
        )
        .expect("valid metric");
        let inline_reads = IntCounterVec::new(
            Opts::new(
                "sqlite_inline_reads_total",
                "SQLite reads answered on the request's thread, or handed to the pool as too \
                 long or busy",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let read_cache = IntCounterVec::new(
            Opts::new(
                "read_cache_lookups_total",
                "Lookups of the read caches (user: GET by id; page: listings), answered from \
                 the cache or read from the database",
            ),
            &["cache", "outcome"],
        )
        .expect("valid metric");
        let rate_limited = IntCounter::new(
            "rate_limit_rejections_total",
            "Requests refused with 429 (rate limited)",
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(pool.clone()),
            Box::new(inline_reads.clone()),
            Box::new(read_cache.clone()),
            Box::new(rate_limited.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        Metrics {
            registry,
            requests,
            latency,
            pool,
            inline_reads,
            read_cache,
            catch_up: Mutex::new(()),
            rate_limited,
        }
    }

    pub fn observe(&self, operation: &str, status: poem::http::StatusCode, seconds: f64) {
        self.requests
            .with_label_values(&[operation, status.as_str()])
            .inc();
        self.latency
            .with_label_values(&[operation])
            .observe(seconds);
        if status == poem::http::StatusCode::TOO_MANY_REQUESTS {
            self.rate_limited.inc();
        }
    }

    /// The text exposition, with point-in-time gauges read now.
    pub fn render(
        &self,
        db: &DatabaseConnection,
        reads: &Reads,
        caches: [(&str, Option<(u64, u64)>); 2],
    ) -> String {
        let (size, idle) = pool_size(db);
        self.pool
            .with_label_values(&["in_use"])
            .set((size as usize).saturating_sub(idle) as i64);
        self.pool.with_label_values(&["idle"]).set(idle as i64);
        // The reads and the caches count themselves (no metrics handle on the hot path); the
        // counters catch up to them here.
        let _turn = self.catch_up.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(inline) = reads.inline() {
            let (answered, deferred) = inline.counts();
            catch_up(
                &self.inline_reads,
                &[],
                [("answered", answered), ("deferred", deferred)],
            );
        }
        for (cache, counts) in caches {
            if let Some((hits, misses)) = counts {
                catch_up(
                    &self.read_cache,
                    &[cache],
                    [("hit", hits), ("miss", misses)],
                );
            }
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// Moves each outcome's counter (after the `labels` before it) up to the total counted
/// elsewhere.
fn catch_up(counters: &IntCounterVec, labels: &[&str], totals: [(&str, u64); 2]) {
    for (outcome, total) in totals {
        let counter = counters.with_label_values(&[labels, &[outcome]].concat());
        counter.inc_by(total.saturating_sub(counter.get()));
    }
}

/// Open and idle connections of the pool, whichever the backend.
fn pool_size(db: &DatabaseConnection) -> (u32, usize) {
    match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        }
        sea_orm::DbBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
        _ => (0, 0),
    }
}
