use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, spawn_app, start};

async fn with_key(app: &TestApp, key: &str, method: Method, path: &str) -> reqwest::Response {
    app.client
        .request(method, app.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn keys_are_managed_over_http_and_secrets_shown_once() {
    let app = spawn_app().await;
    let response = app
        .create_api_key(&json!({"name": "ci-reader", "scopes": ["users:read"]}))
        .await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    let secret = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_i64().unwrap();
    assert_eq!(location, format!("/api/v1/api-keys/{id}"));
    assert!(secret.starts_with(created["prefix"].as_str().unwrap()));
    assert_eq!(created["scopes"], json!(["users:read"]));
    assert_eq!(created["revoked_at"], Value::Null);
    assert!(
        created["created_by"]
            .as_str()
            .unwrap()
            .starts_with("api-key:")
    );

    // The new key works at once, within its scopes.
    assert_eq!(
        with_key(&app, &secret, Method::GET, "/api/v1/users")
            .await
            .status(),
        200
    );
    assert_problem(
        with_key(&app, &secret, Method::GET, "/api/v1/api-keys").await,
        403,
    )
    .await;

    // Metadata never carries the secret or its hash.
    let fetched: Value = app
        .request(Method::GET, &location)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(fetched.get("key").is_none());
    let listed = app
        .request(Method::GET, "/api/v1/api-keys")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listed.contains(&secret[12..]), "listing leaks no secret");
    assert!(!listed.contains("hash"));
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    assert!(
        fetched["last_used_at"].is_string(),
        "the use above is visible: {fetched}"
    );

    // Revocation takes effect on the very next request and is idempotent.
    let revoked = app.request(Method::DELETE, &location).send().await.unwrap();
    assert_eq!(revoked.status(), 204);
    let refused = with_key(&app, &secret, Method::GET, "/api/v1/users").await;
    assert_eq!(
        assert_problem(refused, 401).await["detail"],
        "the API key has been revoked"
    );
    assert_eq!(
        app.request(Method::DELETE, &location)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    // Revoked, the key is gone as a resource, but its record stays listed for audit.
    let gone = app.request(Method::GET, &location).send().await.unwrap();
    let problem = assert_problem(gone, 404).await;
    assert!(problem["detail"].as_str().unwrap().contains("revoked"));
    let listed: Value = app
        .request(Method::GET, "/api/v1/api-keys")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let record = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id)
        .unwrap();
    assert!(record["revoked_at"].is_string());

    // No key can revoke itself: that would lock its holder out mid-session.
    let own_id = app
        .request(Method::GET, "/api/v1/api-keys")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["items"][0]["id"]
        .clone();
    let refused = app
        .request(Method::DELETE, &format!("/api/v1/api-keys/{own_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        assert_problem(refused, 409).await["type"],
        "urn:users-api:problem:conflict"
    );
    assert_eq!(app.list_users("").await.status(), 200);

    assert_problem(
        app.request(Method::GET, "/api/v1/api-keys/9999")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_problem(
        app.request(Method::DELETE, "/api/v1/api-keys/9999")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;

    // Creation and revocation are audit events in the log, without the secret.
    let logs = app.logs().await;
    let events: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let created_event = events
        .iter()
        .find(|e| e["event"] == "api_key.created" && e["key_id"] == id)
        .expect("creation logged");
    assert!(
        created_event["actor"]
            .as_str()
            .unwrap()
            .starts_with("api-key:")
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "api_key.revoked" && e["key_id"] == id)
    );
    assert!(!logs.contains(&secret));
}

#[tokio::test]
async fn expired_keys_are_refused() {
    let app = spawn_app().await;
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let created: Value = app
        .create_api_key(&json!({"name": "short", "scopes": ["users:read"], "expires_at": soon}))
        .await
        .json()
        .await
        .unwrap();
    let secret = created["key"].as_str().unwrap();
    assert_eq!(
        with_key(&app, secret, Method::GET, "/api/v1/users")
            .await
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let refused = with_key(&app, secret, Method::GET, "/api/v1/users").await;
    assert_eq!(
        assert_problem(refused, 401).await["detail"],
        "the API key has expired"
    );
}

#[tokio::test]
async fn key_requests_are_validated_and_need_admin() {
    let app = spawn_app().await;
    for (body, pointer) in [
        (json!({"scopes": ["users:read"]}), "/name"),
        (json!({"name": "x", "scopes": []}), "/scopes"),
        (json!({"name": "x", "scopes": ["users:delete"]}), "/scopes"),
        (json!({"name": "x", "scopes": "admin"}), "/scopes"),
        (
            json!({"name": "x", "scopes": ["admin"], "expires_at": "2001-01-01T00:00:00Z"}),
            "/expires_at",
        ),
        (
            json!({"name": "x", "scopes": ["admin"], "expires_at": "tomorrow"}),
            "/expires_at",
        ),
    ] {
        let problem = assert_problem(app.create_api_key(&body).await, 422).await;
        assert_eq!(problem["errors"][0]["pointer"], pointer, "{body}");
    }
    let (_, writer) = app.db.create_key(&["users:read", "users:write"]);
    for (method, path) in [
        (Method::GET, "/api/v1/api-keys"),
        (Method::POST, "/api/v1/api-keys"),
        (Method::GET, "/api/v1/api-keys/1"),
        (Method::DELETE, "/api/v1/api-keys/1"),
    ] {
        let response = app
            .client
            .request(method, app.url(path))
            .bearer_auth(&writer)
            .json(&json!({"name": "escalate", "scopes": ["admin"]}))
            .send()
            .await
            .unwrap();
        assert_problem(response, 403).await;
    }
    // The admin key survived all of that.
    assert_eq!(
        app.request(Method::GET, "/api/v1/api-keys/1")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn last_use_is_persisted_in_batches_and_at_shutdown() {
    let app = spawn_app().await;
    let (id, reader) = app.db.create_key(&["users:read"]);
    let path = format!("/api/v1/api-keys/{id}");
    let before: Value = app
        .request(Method::GET, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(before["last_used_at"], Value::Null);
    for _ in 0..5 {
        assert_eq!(
            with_key(&app, &reader, Method::GET, "/api/v1/users")
                .await
                .status(),
            200
        );
    }
    let (db, admin) = (app.db.clone(), app.key.clone());
    assert!(app.stop().success());
    let listing = String::from_utf8(db.cli(&["keys", "list"]).stdout).unwrap();
    let row = listing
        .lines()
        .find(|l| l.starts_with(&format!("{id}\t")))
        .unwrap();
    let last_used = row.split('\t').nth(5).unwrap();
    assert_ne!(last_used, "-", "the shutdown flush wrote it: {row}");

    let app = start(db, admin, &[]).await;
    let after: Value = app
        .request(Method::GET, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        after["last_used_at"].as_str().unwrap().get(..19),
        Some(&last_used[..19])
    );
}
