//! Rate limits (per principal, per IP, across instances), timeouts, header limits, CORS and
//! security headers.

use std::{sync::Arc, time::Duration};

use reqwest::Method;
use serde_json::json;

use crate::helpers::{TestDb, assert_problem, spawn_app, spawn_app_with, start};

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers()[name].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn each_principal_gets_its_own_budget_with_ratelimit_headers() {
    let app = spawn_app_with(&["--rate-limit", "5", "--rate-limit-window-secs", "3600"]).await;
    for remaining in (0..5).rev() {
        let response = app.list_users("").await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "ratelimit-limit"), "5");
        assert_eq!(
            header(&response, "ratelimit-remaining"),
            remaining.to_string()
        );
        let reset: u64 = header(&response, "ratelimit-reset").parse().unwrap();
        assert!(reset <= 3600);
    }
    let refused = app.list_users("").await;
    let retry_after: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((1..=3600).contains(&retry_after));
    assert_eq!(header(&refused, "ratelimit-remaining"), "0");
    let problem = assert_problem(refused, 429).await;
    assert_eq!(problem["type"], "urn:users-api:problem:rate-limited");

    let (_, other) = app.db.create_key(&["users:read"]);
    let theirs = app
        .client
        .get(app.url("/api/v1/users"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), 200, "another key has its own budget");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("users_api_rate_limit_rejections_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn anonymous_callers_and_bad_credentials_are_limited_by_address() {
    let app = spawn_app_with(&[
        "--rate-limit-anonymous",
        "3",
        "--rate-limit-window-secs",
        "3600",
    ])
    .await;
    // The key is verified (and so cached) before the address runs out: see below.
    assert_eq!(app.list_users("").await.status(), 200);
    for _ in 0..2 {
        let spec = app
            .client
            .get(app.url("/api/v1/openapi.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(spec.status(), 200);
    }
    // A guessed key counts against the address too.
    let guess = app
        .client
        .get(app.url("/api/v1/users"))
        .bearer_auth(format!("uak_{}", "1".repeat(40)))
        .send()
        .await
        .unwrap();
    assert_eq!(guess.status(), 401);
    let refused = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_problem(refused, 429).await;
    let guess = app
        .client
        .get(app.url("/api/v1/users"))
        .bearer_auth(format!("uak_{}", "2".repeat(40)))
        .send()
        .await
        .unwrap();
    assert_problem(guess, 429).await;
    // Health checks are never limited, and a key verified before has its own budget (one
    // not yet verified would be refused unread: the address is over its limit).
    for _ in 0..5 {
        assert_eq!(
            app.client
                .get(app.url("/health/live"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(app.list_users("").await.status(), 200);
}

#[tokio::test]
async fn instances_share_one_budget_per_principal() {
    let db = Arc::new(TestDb::new());
    let (_, key) = db.create_key(&["admin"]);
    let limits = [
        "--rate-limit",
        "10",
        "--rate-limit-window-secs",
        "3600",
        "--rate-limit-sync-ms",
        "100",
    ];
    let a = start(db.clone(), key.clone(), &limits).await;
    let b = start(db, key, &limits).await;
    for _ in 0..8 {
        assert_eq!(a.list_users("").await.status(), 200);
    }
    // Once A has shared its count, B starts from it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut admitted_by_b = 0;
    loop {
        let response = b.list_users("").await;
        if response.status() == 429 {
            break;
        }
        assert_eq!(response.status(), 200);
        admitted_by_b += 1;
        assert!(admitted_by_b <= 10, "B ignores A's count");
    }
    assert_eq!(
        admitted_by_b, 2,
        "8 through A + 2 through B = the limit of 10"
    );
}

#[tokio::test]
async fn rate_limits_can_be_turned_off() {
    let app = spawn_app_with(&["--rate-limit", "0", "--rate-limit-anonymous", "0"]).await;
    let response = app.list_users("").await;
    assert!(response.headers().get("ratelimit-limit").is_none());
}

#[tokio::test]
async fn slow_requests_time_out_with_a_503_problem() {
    let app = spawn_app_with(&["--request-timeout-secs", "1"]).await;
    // A body that trickles in slower than the timeout.
    let chunks = futures_util::stream::unfold(0, |sent| async move {
        if sent == 5 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        Some((
            Ok::<_, std::io::Error>(if sent == 0 { "{" } else { " " }),
            sent + 1,
        ))
    });
    let started = std::time::Instant::now();
    let response = app
        .request(Method::POST, "/api/v1/users")
        .header("Content-Type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, 503).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("did not complete within 1 s")
    );
    assert!(started.elapsed() < Duration::from_millis(1900));
}

#[tokio::test]
async fn too_many_headers_are_431_problems() {
    let app = spawn_app().await;
    let mut request = app.request(Method::GET, "/api/v1/users");
    for i in 0..70 {
        request = request.header(format!("x-filler-{i}"), "x");
    }
    assert_problem(request.send().await.unwrap(), 431).await;
    let huge = app
        .request(Method::GET, "/api/v1/users")
        .header("x-big", "y".repeat(20_000));
    assert_problem(huge.send().await.unwrap(), 431).await;
}

#[tokio::test]
async fn security_headers_are_always_set() {
    let app = spawn_app().await;
    let authed = app.list_users("").await;
    assert_eq!(header(&authed, "x-content-type-options"), "nosniff");
    assert_eq!(header(&authed, "cache-control"), "no-store");
    let public = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&public, "x-content-type-options"), "nosniff");
    let missing = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(header(&missing, "x-content-type-options"), "nosniff");
}

#[tokio::test]
async fn cors_is_off_by_default_and_follows_the_allow_list() {
    let closed = spawn_app().await;
    let response = closed.list_users("").await;
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // Written as an operator might; kept as browsers send it.
    let app = spawn_app_with(&["--cors-allow-origin", "HTTPS://App.Example/"]).await;
    let preflight = app
        .client
        .request(Method::OPTIONS, app.url("/api/v1/users"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "PATCH")
        .header(
            "Access-Control-Request-Headers",
            "authorization, if-match, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        header(&preflight, "access-control-allow-origin"),
        "https://app.example"
    );
    // With CORS on, every answer depends on `Origin`, so shared caches must key on it.
    assert_eq!(header(&preflight, "vary"), "Origin");

    let actual = app
        .request(Method::GET, "/api/v1/users/999")
        .header("Origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&actual, "access-control-allow-origin"),
        "https://app.example"
    );
    assert!(header(&actual, "access-control-expose-headers").contains("etag"));
    assert_eq!(header(&actual, "vary"), "Origin");
    assert_problem(actual, 404).await;

    let foreign = app
        .request(Method::GET, "/api/v1/users")
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert_eq!(header(&foreign, "vary"), "Origin");
    let refused = assert_problem(foreign, 403).await;
    assert_eq!(refused["type"], "urn:users-api:problem:cors-refused");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("--cors-allow-origin")
    );
    // Same-origin and non-browser calls carry no Origin and are unaffected (but for `Vary`).
    let created = app
        .create_user(&json!({"name": "Ann", "role": "Dev"}))
        .await;
    assert_eq!(created.status(), 201);
    assert_eq!(header(&created, "vary"), "Origin");
}
