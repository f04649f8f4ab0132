//! Health checks and metrics.

use std::sync::Arc;

use crate::helpers::{TestDb, assert_problem, spawn_app, spawn_app_with, start_with_env};

#[tokio::test]
async fn health_checks_are_public() {
    let app = spawn_app().await;
    for path in ["/health/live", "/health/ready"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], "ok");
    }
}

#[tokio::test]
async fn metrics_count_requests_by_operation_and_status() {
    let app = spawn_app().await;
    for _ in 0..3 {
        assert_eq!(app.list_users("").await.status(), 200);
    }
    assert_problem(app.get_user(404404).await, 404).await;
    assert_problem(app.client.get(app.url("/nope")).send().await.unwrap(), 404).await;
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text().await.unwrap();
    for expected in [
        r#"users_api_http_requests_total{operation="listUsers",status="200"} 3"#,
        r#"users_api_http_requests_total{operation="getUser",status="404"} 1"#,
        r#"users_api_http_requests_total{operation="unmatched",status="404"} 1"#,
        r#"users_api_http_request_duration_seconds_bucket{operation="listUsers",le="+Inf"} 3"#,
        r#"users_api_db_pool_connections{state="idle"}"#,
        r#"users_api_db_pool_connections{state="in_use"}"#,
        "users_api_rate_limit_rejections_total 0",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
}

#[tokio::test]
async fn metrics_can_require_their_own_token() {
    let app = spawn_app_with(&["--metrics-token", "scrape-secret"]).await;
    let bare = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_problem(bare, 401).await;
    let wrong = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_problem(wrong, 401).await;
    let right = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert!(!app.logs().await.contains("scrape-secret"));
}

/// `--worker-threads` sets how many runtime threads serve requests; without it, one per core.
/// The `listening` line reports the count from the runtime itself.
#[tokio::test]
async fn worker_threads_sets_the_runtime_threads() {
    let cores = std::thread::available_parallelism().unwrap().get();
    for (extra, expected) in [(&["--worker-threads", "1"][..], 1), (&[][..], cores)] {
        let app = spawn_app_with(extra).await;
        assert_eq!(app.list_users("").await.status(), 200, "{extra:?}");
        assert_eq!(app.listening_line().await["workers"], expected, "{extra:?}");
    }
}

/// Request lines obey `RUST_LOG` by their target, as every other line does.
#[tokio::test]
async fn the_access_log_can_be_turned_off() {
    let request_lines = |logs: &str| {
        logs.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["message"] == "request")
            .count()
    };
    for (filter, expected) in [("info", 1), ("info,users_api::http::edge=warn", 0)] {
        let db = Arc::new(TestDb::new());
        let (_, key) = db.create_key(&["admin"]);
        let url = db.url.clone();
        let app = start_with_env(db, key, &url, &[], &[("RUST_LOG", filter)]).await;
        assert_eq!(app.list_users("").await.status(), 200);
        let logs = app.logs().await;
        assert!(logs.contains("\"listening\""), "other lines stay: {logs}");
        assert_eq!(request_lines(&logs), expected, "RUST_LOG={filter}: {logs}");
    }
}
