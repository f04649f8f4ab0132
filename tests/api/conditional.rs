//! ETags, `If-None-Match` (304), `If-Match` (412/428) and optimistic concurrency.

use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, spawn_app, spawn_app_with};

fn etag(response: &reqwest::Response) -> String {
    response.headers()["etag"].to_str().unwrap().to_owned()
}

async fn send_if_match(
    app: &TestApp,
    method: Method,
    id: i64,
    tag: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = app
        .request(method, &format!("/api/v1/users/{id}"))
        .header("If-Match", tag);
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn reads_carry_strong_etags_and_unchanged_users_are_304() {
    let app = spawn_app().await;
    let created = app
        .create_user(&json!({"name": "Ann", "role": "Dev"}))
        .await;
    let created_tag = etag(&created);
    assert!(created_tag.starts_with('"') && !created_tag.starts_with("W/"));
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();

    let read = app.get_user(id).await;
    assert_eq!(etag(&read), created_tag);
    let not_modified = app
        .request(Method::GET, &format!("/api/v1/users/{id}"))
        .header("If-None-Match", format!("\"x\", {created_tag}"))
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);
    assert_eq!(etag(&not_modified), created_tag);
    assert!(not_modified.bytes().await.unwrap().is_empty());

    let patched = app.update_user(id, &json!({"role": "Lead"})).await;
    let new_tag = etag(&patched);
    assert_ne!(new_tag, created_tag);
    let modified = app
        .request(Method::GET, &format!("/api/v1/users/{id}"))
        .header("If-None-Match", &created_tag)
        .send()
        .await
        .unwrap();
    assert_eq!(modified.status(), 200);
    assert_eq!(etag(&modified), new_tag);
}

#[tokio::test]
async fn stale_if_match_is_412_and_changes_nothing() {
    let app = spawn_app().await;
    let created = app
        .create_user(&json!({"name": "Ann", "role": "Dev"}))
        .await;
    let stale = etag(&created);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let current = etag(&app.update_user(id, &json!({"role": "Lead"})).await);
    let before: Value = app.get_user(id).await.json().await.unwrap();

    for (method, body) in [
        (Method::PUT, Some(json!({"name": "X", "role": "Y"}))),
        (Method::PATCH, Some(json!({"role": "Z"}))),
        (Method::DELETE, None),
    ] {
        let problem = assert_problem(
            send_if_match(&app, method.clone(), id, &stale, body.clone()).await,
            412,
        )
        .await;
        assert_eq!(
            problem["type"], "urn:users-api:problem:precondition-failed",
            "{method}"
        );
        let weak = format!("W/{current}");
        assert_problem(send_if_match(&app, method, id, &weak, body).await, 412).await;
    }
    assert_eq!(
        app.get_user(id).await.json::<Value>().await.unwrap(),
        before
    );

    let replaced = send_if_match(
        &app,
        Method::PUT,
        id,
        &current,
        Some(json!({"name": "Anna", "role": "Dev"})),
    )
    .await;
    assert_eq!(replaced.status(), 200);
    let newest = etag(&replaced);
    let patched = send_if_match(&app, Method::PATCH, id, "*", Some(json!({"role": "Ops"}))).await;
    assert_eq!(patched.status(), 200);
    assert_problem(
        send_if_match(&app, Method::DELETE, id, &newest, None).await,
        412,
    )
    .await;
    let deleted = send_if_match(&app, Method::DELETE, id, &etag(&patched), None).await;
    assert_eq!(deleted.status(), 204);
    assert_problem(
        send_if_match(&app, Method::PATCH, id, "*", Some(json!({"role": "X"}))).await,
        404,
    )
    .await;
}

#[tokio::test]
async fn concurrent_patches_with_the_same_tag_let_exactly_one_through_per_version() {
    // Hundreds of retried writes from one key: not a test of rate limits.
    let app = Arc::new(spawn_app_with(&["--rate-limit", "0"]).await);
    let id = app
        .create_user_id(&json!({"name": "Counter", "role": "0"}))
        .await;

    // Round one: 20 writers holding the same tag; one wins, 19 get 412.
    let tag = etag(&app.get_user(id).await);
    let attempts = (0..20).map(|i| {
        let (app, tag) = (app.clone(), tag.clone());
        tokio::spawn(async move {
            send_if_match(
                &app,
                Method::PATCH,
                id,
                &tag,
                Some(json!({"role": format!("w{i}")})),
            )
            .await
            .status()
            .as_u16()
        })
    });
    let statuses: Vec<u16> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 412).count(),
        19,
        "{statuses:?}"
    );

    // Read-modify-write increments: with If-Match and retry-on-412, none is lost.
    app.update_user(id, &json!({"role": "0"})).await;
    let workers = (0..20).map(|_| {
        let app = app.clone();
        tokio::spawn(async move {
            for _ in 0..3 {
                loop {
                    let read = app.get_user(id).await;
                    let tag = etag(&read);
                    let count: u32 = read.json::<Value>().await.unwrap()["role"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    let body = json!({"role": (count + 1).to_string()});
                    match send_if_match(&app, Method::PATCH, id, &tag, Some(body))
                        .await
                        .status()
                        .as_u16()
                    {
                        200 => break,
                        412 => continue,
                        other => panic!("unexpected {other}"),
                    }
                }
            }
        })
    });
    for worker in futures_util::future::join_all(workers).await {
        worker.unwrap();
    }
    let final_user: Value = app.get_user(id).await.json().await.unwrap();
    assert_eq!(
        final_user["role"], "60",
        "20 workers x 3 increments, no lost update"
    );
}

#[tokio::test]
async fn if_match_can_be_required() {
    let app = spawn_app_with(&["--require-if-match"]).await;
    let created = app
        .create_user(&json!({"name": "Ann", "role": "Dev"}))
        .await;
    let tag = etag(&created);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let problem = assert_problem(app.update_user(id, &json!({"role": "X"})).await, 428).await;
    assert_eq!(
        problem["type"],
        "urn:users-api:problem:precondition-required"
    );
    assert_problem(app.delete_user(id).await, 428).await;
    let ok = send_if_match(&app, Method::PATCH, id, &tag, Some(json!({"role": "X"}))).await;
    assert_eq!(ok.status(), 200);
}

/// A delete racing updates that hold the same tag (on SQLite, often in one group commit): one
/// of them wins; after a winning update the rest find a newer version (412), after a winning
/// delete they find no user (404).
#[tokio::test]
async fn a_delete_racing_updates_on_one_tag_lets_exactly_one_through() {
    let app = Arc::new(spawn_app_with(&["--rate-limit", "0"]).await);
    for round in 0..5 {
        let id = app
            .create_user_id(&json!({"name": format!("Raced {round}"), "role": "0"}))
            .await;
        let tag = etag(&app.get_user(id).await);
        let attempts = (0..9).map(|i| {
            let (app, tag) = (app.clone(), tag.clone());
            tokio::spawn(async move {
                let (method, body) = if i == 4 {
                    (Method::DELETE, None)
                } else {
                    (Method::PATCH, Some(json!({"role": format!("w{i}")})))
                };
                let status = send_if_match(&app, method.clone(), id, &tag, body)
                    .await
                    .status();
                (method, status.as_u16())
            })
        });
        let outcomes: Vec<(Method, u16)> = futures_util::future::join_all(attempts)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let winners: Vec<_> = outcomes.iter().filter(|(_, s)| *s < 300).collect();
        assert_eq!(winners.len(), 1, "{outcomes:?}");
        let deleted = winners[0].0 == Method::DELETE;
        let now = app.get_user(id).await.status().as_u16();
        assert_eq!(now, if deleted { 404 } else { 200 });
        for (method, status) in outcomes.iter().filter(|(_, s)| *s >= 300) {
            // Once the user is gone a stale tag cannot be told from a missing user: 404.
            let expected = if deleted { 404 } else { 412 };
            assert_eq!(*status, expected, "{method}: {outcomes:?}");
        }
    }
}
