//! Several stateless instances on one database: everything they share lives in the database.

use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};

use std::time::Duration;

use futures_util::FutureExt;

use crate::helpers::{TestApp, TestDb, assert_problem, eventually_status, start};

/// Two servers on one fresh database, the second started once the first has migrated it.
async fn two_instances(extra: &[&str]) -> (TestApp, TestApp) {
    let db = Arc::new(TestDb::new());
    let (_, key) = db.create_key(&["admin"]);
    let first = start(db.clone(), key.clone(), extra).await;
    let second = start(db, key, extra).await;
    (first, second)
}

#[tokio::test]
async fn writes_through_one_instance_are_read_through_the_other() {
    let (a, b) = two_instances(&[]).await;
    let user = a
        .create_ok(&json!({"name": "Ann", "role": "Dev", "email": "ann@example.org"}))
        .await;
    let id = user["id"].as_i64().unwrap();
    assert_eq!(b.get_user(id).await.json::<Value>().await.unwrap(), user);

    let patched: Value = b
        .update_user(id, &json!({"role": "Lead"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(a.get_user(id).await.json::<Value>().await.unwrap(), patched);
    assert_eq!(a.delete_user(id).await.status(), 204);
    assert_problem(b.get_user(id).await, 404).await;
}

#[tokio::test]
async fn concurrent_creates_with_one_email_across_instances_give_exactly_one_201() {
    let (a, b) = two_instances(&[]).await;
    let attempts = (0..50).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let body = json!({"name": format!("Racer {i}"), "role": "Dev", "email": format!("RACE@example.org")});
        async move { app.create_user(&body).await.status().as_u16() }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        49,
        "{statuses:?}"
    );
    let page: Value = a.list_users("").await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_key_revoked_through_one_instance_is_refused_by_the_other_within_the_cache_ttl() {
    let (a, b) = two_instances(&["--key-cache-ttl-secs", "1"]).await;
    let created: Value = a
        .create_api_key(&json!({"name": "short-lived", "scopes": ["users:read"]}))
        .await
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap();
    let through_b = || b.client.get(b.url("/api/v1/users")).bearer_auth(key).send();
    assert_eq!(through_b().await.unwrap().status(), 200);

    let revoked = a
        .request(
            Method::DELETE,
            &format!("/api/v1/api-keys/{}", created["id"]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 204);
    // A's own cache forgets the key at once; B's entry ages out within its TTL (1 s here,
    // `--key-cache-ttl-secs`, 5 s by default).
    let through_a = a
        .client
        .get(a.url("/api/v1/users"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_problem(through_a, 401).await;
    let started = std::time::Instant::now();
    let refused = eventually_status(Duration::from_millis(1500), 401, || {
        through_b().map(Result::unwrap)
    })
    .await;
    assert!(started.elapsed() <= Duration::from_millis(1500));
    assert_problem(refused, 401).await;
}
