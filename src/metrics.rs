//! Prometheus metrics: requests by operation and status, latency, pool use, inline SQLite
//! reads, read-cache lookups, rate-limit refusals.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::{
    cell::RefCell,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use sea_orm::DatabaseConnection;

use crate::store::Reads;

/// This process's metrics; each instance is scraped on its own.
pub struct Metrics {
    /// Tells this instance's series apart in each thread's [`SERIES`].
    id: u64,
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

/// One request series (an operation and a status) as a thread has observed it.
struct Series {
    metrics: u64,
    operation: &'static str,
    status: poem::http::StatusCode,
    requests: IntCounter,
    latency: Histogram,
}

thread_local! {
    /// Each thread's handles to the series it has observed, so that an observation costs no
    /// hashing of labels, no lock and no shared reference count: `with_label_values` does all
    /// three, and under a GET load perf put it at 1.3% of the server's CPU, both runtime
    /// threads taking the same lock and counting on the same `Arc`s. Bounded by the
    /// operations times the statuses they answer with.
    static SERIES: RefCell<Vec<Series>> = const { RefCell::new(Vec::new()) };
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
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        Metrics {
            id: INSTANCES.fetch_add(1, Ordering::Relaxed),
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

    pub fn observe(&self, operation: &'static str, status: poem::http::StatusCode, seconds: f64) {
        SERIES.with_borrow_mut(|series| {
            let known = series.iter().position(|known| {
                known.metrics == self.id
                    && known.status == status
                    && std::ptr::eq(known.operation, operation)
            });
            let at = known.unwrap_or_else(|| {
                series.push(Series {
                    metrics: self.id,
                    operation,
                    status,
                    requests: self
                        .requests
                        .with_label_values(&[operation, status.as_str()]),
                    latency: self.latency.with_label_values(&[operation]),
                });
                series.len() - 1
            });
            series[at].requests.inc();
            series[at].latency.observe(seconds);
        });
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

#[cfg(test)]
mod tests {
    use poem::http::StatusCode;

    use super::*;

    fn requests(metrics: &Metrics, operation: &str, status: &str) -> u64 {
        metrics
            .requests
            .with_label_values(&[operation, status])
            .get()
    }

    /// Observations count in their own instance's series, whichever thread made them and
    /// whichever series the thread saw before.
    #[test]
    fn observations_count_in_their_own_series() {
        let (a, b) = (Metrics::new(), Metrics::new());
        for _ in 0..3 {
            a.observe("getUser", StatusCode::OK, 0.001);
        }
        b.observe("getUser", StatusCode::OK, 0.002);
        a.observe("getUser", StatusCode::NOT_FOUND, 0.003);
        // The same name at another address is the same series.
        let elsewhere: &'static str = String::from("getUser").leak();
        a.observe(elsewhere, StatusCode::OK, 0.004);
        std::thread::scope(|scope| {
            scope.spawn(|| a.observe("listUsers", StatusCode::OK, 0.1));
        });
        assert_eq!(requests(&a, "getUser", "200"), 4);
        assert_eq!(requests(&a, "getUser", "404"), 1);
        assert_eq!(requests(&a, "listUsers", "200"), 1);
        assert_eq!(requests(&b, "getUser", "200"), 1);
        assert_eq!(requests(&b, "getUser", "404"), 0);
        let latency = a.latency.with_label_values(&["getUser"]);
        assert_eq!(latency.get_sample_count(), 5);
        assert!((latency.get_sample_sum() - 0.010).abs() < 1e-9);
    }
}
