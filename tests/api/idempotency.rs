//! `Idempotency-Key` on `POST /api/v1/users`: retries replay, reuse with another body is 422.

use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, spawn_app, spawn_app_with};

async fn post_with_key(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.request(Method::POST, "/api/v1/users")
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn count_users(app: &TestApp) -> usize {
    let page: Value = app.list_users("?limit=200").await.json().await.unwrap();
    page["items"].as_array().unwrap().len()
}

#[tokio::test]
async fn a_retry_replays_the_original_response_without_a_second_user() {
    let app = spawn_app().await;
    let body = json!({"name": "Ann", "role": "Dev", "email": "ann@example.org"});
    let first = post_with_key(&app, "order-1", &body).await;
    assert_eq!(first.status(), 201);
    assert_eq!(first.headers()["idempotent-replayed"], "false");
    let (location, tag) = (
        first.headers()["location"].clone(),
        first.headers()["etag"].clone(),
    );
    let original: Value = first.json().await.unwrap();

    // Same meaning, other formatting: still the same request.
    let retry = app
        .request(Method::POST, "/api/v1/users")
        .header("Idempotency-Key", "order-1")
        .header("Content-Type", "application/json")
        .body(r#"{ "email": "ann@example.org",   "role": "Dev", "name": "Ann" }"#)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.headers()["location"], location);
    assert_eq!(retry.headers()["etag"], tag);
    assert_eq!(retry.json::<Value>().await.unwrap(), original);
    assert_eq!(count_users(&app).await, 1);

    let reused = assert_problem(
        post_with_key(&app, "order-1", &json!({"name": "Bob", "role": "Dev"})).await,
        422,
    )
    .await;
    assert_eq!(
        reused["type"],
        "urn:users-api:problem:idempotency-key-reused"
    );
    assert_eq!(count_users(&app).await, 1);

    // Keys are per caller: another key holder's "order-1" is its own.
    let (_, other) = app.db.create_key(&["users:write", "users:read"]);
    let theirs = app
        .client
        .post(app.url("/api/v1/users"))
        .bearer_auth(&other)
        .header("Idempotency-Key", "order-1")
        .json(&json!({"name": "Bob", "role": "Dev"}))
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), 201);
    assert_eq!(theirs.headers()["idempotent-replayed"], "false");
    assert_eq!(count_users(&app).await, 2);

    for bad in ["", &"k".repeat(256)] {
        assert_problem(post_with_key(&app, bad, &body).await, 400).await;
    }
}

#[tokio::test]
async fn racing_retries_create_one_user() {
    let app = Arc::new(spawn_app().await);
    let body = json!({"name": "Racer", "role": "Dev"});
    let attempts = (0..10).map(|_| {
        let (app, body) = (app.clone(), body.clone());
        tokio::spawn(async move {
            let response = post_with_key(&app, "race-1", &body).await;
            assert_eq!(response.status(), 201);
            response.json::<Value>().await.unwrap()["id"]
                .as_i64()
                .unwrap()
        })
    });
    let ids: Vec<i64> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(count_users(&app).await, 1);
}

#[tokio::test]
async fn keys_expire_after_their_ttl() {
    let app = spawn_app_with(&["--idempotency-ttl-secs", "1"]).await;
    let body = json!({"name": "Ann", "role": "Dev"});
    let first: Value = post_with_key(&app, "k", &body).await.json().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let later = post_with_key(&app, "k", &body).await;
    assert_eq!(later.headers()["idempotent-replayed"], "false");
    let later: Value = later.json().await.unwrap();
    assert_ne!(later["id"], first["id"]);
    assert_eq!(count_users(&app).await, 2);
}

/// On SQLite, concurrent idempotent creates share a group commit and go in as runs: retries
/// within one batch replay the first, and a create that fails keeps nothing, not even its key.
#[tokio::test]
async fn concurrent_idempotent_creates_replay_or_fail_one_by_one() {
    let app = Arc::new(spawn_app().await);
    let taken = json!({"name": "Taken", "role": "Dev", "email": "taken@example.org"});
    assert_eq!(app.create_user(&taken).await.status(), 201);
    let attempts: Vec<_> = (0..30)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                // Each of ten keys three times; the last key's create wants a taken address.
                let k = i % 10;
                let email = if k == 9 {
                    "taken@example.org".to_owned()
                } else {
                    format!("u{k}@example.org")
                };
                let body = json!({"name": format!("U{k}"), "role": "Dev", "email": email});
                let response = post_with_key(&app, &format!("batch-{k}"), &body).await;
                let status = response.status().as_u16();
                let replayed = response
                    .headers()
                    .get("idempotent-replayed")
                    .map(|v| v.to_str().unwrap() == "true");
                (k, status, replayed, response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut by_key: Vec<Vec<(u16, Option<bool>, Value)>> = vec![Vec::new(); 10];
    for attempt in attempts {
        let (k, status, replayed, body) = attempt.await.unwrap();
        by_key[k].push((status, replayed, body));
    }
    for (k, responses) in by_key.iter().enumerate().take(9) {
        assert!(
            responses.iter().all(|(status, ..)| *status == 201),
            "key {k}: {responses:?}"
        );
        let fresh = responses
            .iter()
            .filter(|(_, replayed, _)| *replayed == Some(false))
            .count();
        assert_eq!(
            fresh, 1,
            "key {k}: one create, the rest replays: {responses:?}"
        );
        assert!(
            responses.iter().all(|(.., user)| *user == responses[0].2),
            "key {k}"
        );
    }
    for (status, _, problem) in &by_key[9] {
        assert_eq!(*status, 409, "{problem}");
        assert_eq!(problem["type"], "urn:users-api:problem:conflict");
    }
    assert_eq!(count_users(&app).await, 10);

    // The failed create left its key free: corrected, the same key creates.
    let fixed = json!({"name": "U9", "role": "Dev", "email": "u9@example.org"});
    let retry = post_with_key(&app, "batch-9", &fixed).await;
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "false");
    assert_eq!(count_users(&app).await, 11);
}
