//! Prometheus metrics: requests by operation and status, latency, pool use, open event
//! streams, read-cache lookups, rate-limit refusals.

use poem::http::StatusCode;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// This process's metrics; each instance is scraped on its own.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pool: IntGaugeVec,
    streams: IntGauge,
    read_cache: IntCounterVec,
    rate_limited: IntCounter,
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
        let streams =
            IntGauge::new("event_streams", "Change feed streams open now").expect("valid metric");
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
            Box::new(streams.clone()),
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
            streams,
            read_cache,
            rate_limited,
        }
    }

    /// One answered request.
    pub fn observe(&self, operation: &str, status: StatusCode, seconds: f64) {
        self.requests
            .with_label_values(&[operation, status.as_str()])
            .inc();
        self.latency
            .with_label_values(&[operation])
            .observe(seconds);
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.rate_limited.inc();
        }
    }

    /// The text exposition, with the gauges and the counts kept elsewhere read now: the pool's
    /// connections in use and idle, the streams open, and each read cache's hits and misses
    /// since start.
    pub fn render(
        &self,
        pool: (u32, u32),
        streams: usize,
        caches: &[(&str, Option<(u64, u64)>)],
    ) -> String {
        let (in_use, idle) = pool;
        self.streams.set(streams as i64);
        self.pool
            .with_label_values(&["in_use"])
            .set(i64::from(in_use));
        self.pool.with_label_values(&["idle"]).set(i64::from(idle));
        for (cache, counts) in caches {
            if let Some((hits, misses)) = counts {
                for (outcome, total) in [("hit", hits), ("miss", misses)] {
                    let counter = self.read_cache.with_label_values(&[cache, outcome]);
                    counter.inc_by(total.saturating_sub(counter.get()));
                }
            }
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_count_by_operation_and_status_and_caches_catch_up() {
        let metrics = Metrics::new();
        metrics.observe("getUser", StatusCode::OK, 0.001);
        metrics.observe("getUser", StatusCode::OK, 0.002);
        metrics.observe("listUsers", StatusCode::TOO_MANY_REQUESTS, 0.001);
        let text = metrics.render((1, 3), 7, &[("user", Some((5, 2))), ("page", None)]);
        for expected in [
            r#"users_api_http_requests_total{operation="getUser",status="200"} 2"#,
            r#"users_api_http_request_duration_seconds_count{operation="getUser"} 2"#,
            r#"users_api_db_pool_connections{state="idle"} 3"#,
            "users_api_event_streams 7",
            r#"users_api_read_cache_lookups_total{cache="user",outcome="hit"} 5"#,
            "users_api_rate_limit_rejections_total 1",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
        let again = metrics.render((0, 0), 0, &[("user", Some((6, 2)))]);
        assert!(
            again.contains(r#"users_api_read_cache_lookups_total{cache="user",outcome="hit"} 6"#)
        );
    }
}
