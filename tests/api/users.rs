use std::collections::HashSet;

use sea_orm::ConnectionTrait;
use serde_json::{Value, json};

use crate::helpers::{
    acknowledged, assert_all_stored, assert_problem, spawn_app, spawn_app_with, spawn_writers,
    start, wait_for_users,
};

#[tokio::test]
async fn tutorial_curl_sequence_works() {
    let app = spawn_app().await;

    // The classic tutorial's POST, read-only `id` included: it is ignored, not an error.
    let response = app
        .request(reqwest::Method::POST, "/api/v1/users")
        .header("Content-Type", "application/json")
        .body(r#"{"id": 3, "name": "Alice", "role": "Tester"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let alice: Value = response.json().await.unwrap();
    let id = alice["id"].as_i64().unwrap();
    assert_eq!(id, 1, "the server assigns ids");
    assert_eq!(location, format!("/api/v1/users/{id}"));
    assert_eq!(alice["name"], "Alice");
    assert_eq!(alice["role"], "Tester");
    assert_eq!(alice["email"], Value::Null);
    assert_eq!(alice["created_at"], alice["updated_at"]);

    let listed: Value = app.list_users("").await.json().await.unwrap();
    assert_eq!(listed["items"], json!([alice]));
    assert_eq!(listed["next_cursor"], Value::Null);

    let fetched = app
        .client
        .get(app.url(&location))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    assert_eq!(fetched.json::<Value>().await.unwrap(), alice);

    let missing = assert_problem(app.get_user(999).await, 404).await;
    assert_eq!(missing["detail"], "user 999 does not exist");
}

#[tokio::test]
async fn create_trims_fields_and_keeps_unicode() {
    let app = spawn_app().await;
    let user = app
        .create_ok(&json!({"name": "  Zoë 山田 🚀 ", "role": " Développeuse ", "email": " Zoe@Example.org "}))
        .await;
    assert_eq!(user["name"], "Zoë 山田 🚀");
    assert_eq!(user["role"], "Développeuse");
    assert_eq!(user["email"], "Zoe@Example.org", "case is preserved");
    let fetched: Value = app
        .get_user(user["id"].as_i64().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, user);
}

#[tokio::test]
async fn names_are_limited_in_characters_not_bytes() {
    let app = spawn_app().await;
    app.create_ok(&json!({"name": "é".repeat(100), "role": "r".repeat(50)}))
        .await;
    let body = assert_problem(
        app.create_user(&json!({"name": "é".repeat(101), "role": "r".repeat(51)}))
            .await,
        422,
    )
    .await;
    let pointers: Vec<_> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].clone())
        .collect();
    assert_eq!(pointers, [json!("/name"), json!("/role")]);
}

#[tokio::test]
async fn invalid_fields_are_all_reported_and_nothing_is_stored() {
    let app = spawn_app().await;
    for (body, pointer) in [
        (json!({"name": "   ", "role": "Dev"}), "/name"),
        (json!({"name": "", "role": "Dev"}), "/name"),
        (json!({"role": "Dev"}), "/name"),
        (json!({"name": null, "role": "Dev"}), "/name"),
        (json!({"name": 42, "role": "Dev"}), "/name"),
        (json!({"name": "Ann", "role": ["Dev"]}), "/role"),
        (
            json!({"name": "Ann", "role": "Dev", "email": "not-an-email"}),
            "/email",
        ),
        (
            json!({"name": "Ann", "role": "Dev", "email": "ann@localhost"}),
            "/email",
        ),
        (json!({"name": "Ann", "role": "Dev", "email": 7}), "/email"),
        (json!([{"name": "Ann", "role": "Dev"}]), ""),
        (json!("Ann"), ""),
    ] {
        let problem = assert_problem(app.create_user(&body).await, 422).await;
        assert_eq!(problem["type"], "urn:users-api:problem:validation-error");
        assert_eq!(
            problem["errors"][0]["pointer"], pointer,
            "{body} -> {problem}"
        );
        assert!(!problem["errors"][0]["message"].as_str().unwrap().is_empty());
    }
    let listed: Value = app.list_users("").await.json().await.unwrap();
    assert_eq!(listed["items"], json!([]));
}

#[tokio::test]
async fn duplicate_email_is_a_409_regardless_of_case() {
    let app = spawn_app().await;
    let ann = app
        .create_ok(&json!({"name": "Ann", "role": "Dev", "email": "ann@example.org"}))
        .await;
    let bob = app
        .create_ok(&json!({"name": "Bob", "role": "Dev", "email": "bob@example.org"}))
        .await;
    let bob_id = bob["id"].as_i64().unwrap();

    let conflict = assert_problem(
        app.create_user(&json!({"name": "Ann 2", "role": "Dev", "email": "ANN@Example.ORG"}))
            .await,
        409,
    )
    .await;
    assert_eq!(conflict["type"], "urn:users-api:problem:conflict");
    assert_problem(
        app.update_user(bob_id, &json!({"email": "Ann@example.org"}))
            .await,
        409,
    )
    .await;
    assert_problem(
        app.replace_user(
            bob_id,
            &json!({"name": "Bob", "role": "Dev", "email": "ann@EXAMPLE.org"}),
        )
        .await,
        409,
    )
    .await;

    // Conflicts change nothing, and a user may keep (or re-case) its own address.
    let still_bob: Value = app.get_user(bob_id).await.json().await.unwrap();
    assert_eq!(still_bob, bob);
    let ann_id = ann["id"].as_i64().unwrap();
    let recased = app
        .update_user(ann_id, &json!({"email": "Ann@Example.org"}))
        .await;
    assert_eq!(recased.status(), 200);
    // Once Ann drops the address, it is free for others.
    assert_eq!(
        app.update_user(ann_id, &json!({"email": null}))
            .await
            .status(),
        200
    );
    app.create_ok(&json!({"name": "Ann 2", "role": "Dev", "email": "ann@example.org"}))
        .await;
}

#[tokio::test]
async fn replace_sets_every_field_and_404s_on_missing_user() {
    let app = spawn_app().await;
    let user = app
        .create_ok(&json!({"name": "Ann", "role": "Dev", "email": "ann@example.org"}))
        .await;
    let id = user["id"].as_i64().unwrap();

    let response = app
        .replace_user(id, &json!({"name": "Anna", "role": "Lead", "id": 99}))
        .await;
    assert_eq!(response.status(), 200);
    let replaced: Value = response.json().await.unwrap();
    assert_eq!(replaced["id"], id);
    assert_eq!(replaced["name"], "Anna");
    assert_eq!(replaced["role"], "Lead");
    assert_eq!(
        replaced["email"],
        Value::Null,
        "an omitted email is cleared by a full replace"
    );
    assert_eq!(replaced["created_at"], user["created_at"]);
    assert!(replaced["updated_at"].as_str() >= user["updated_at"].as_str());
    assert_eq!(
        app.get_user(id).await.json::<Value>().await.unwrap(),
        replaced
    );

    assert_problem(
        app.replace_user(id + 1, &json!({"name": "X", "role": "Y"}))
            .await,
        404,
    )
    .await;
    assert_problem(app.replace_user(id, &json!({"name": "X"})).await, 422).await;
}

#[tokio::test]
async fn patch_changes_only_what_is_sent() {
    let app = spawn_app().await;
    let user = app
        .create_ok(&json!({"name": "Ann", "role": "Dev", "email": "ann@example.org"}))
        .await;
    let id = user["id"].as_i64().unwrap();

    let renamed: Value = app
        .update_user(id, &json!({"role": "Lead"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(renamed["name"], "Ann");
    assert_eq!(renamed["role"], "Lead");
    assert_eq!(renamed["email"], "ann@example.org");

    let unchanged = app.update_user(id, &json!({})).await;
    assert_eq!(unchanged.status(), 200);

    let cleared: Value = app
        .update_user(id, &json!({"email": null}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["email"], Value::Null);
    assert_eq!(cleared["role"], "Lead");

    let merge_patch = app
        .request(reqwest::Method::PATCH, &format!("/api/v1/users/{id}"))
        .header("Content-Type", "application/merge-patch+json")
        .body(r#"{"name": "Annie"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(merge_patch.status(), 200);
    assert_eq!(merge_patch.json::<Value>().await.unwrap()["name"], "Annie");

    let problem = assert_problem(
        app.update_user(id, &json!({"name": null, "role": ""}))
            .await,
        422,
    )
    .await;
    assert_eq!(problem["errors"].as_array().unwrap().len(), 2);
    assert_problem(app.update_user(id + 1, &json!({"role": "X"})).await, 404).await;
    assert_eq!(
        app.get_user(id).await.json::<Value>().await.unwrap()["name"],
        "Annie"
    );
}

#[tokio::test]
async fn delete_removes_the_user_once() {
    let app = spawn_app().await;
    let user = app
        .create_ok(&json!({"name": "Ann", "role": "Dev", "email": "ann@example.org"}))
        .await;
    let id = user["id"].as_i64().unwrap();

    let response = app.delete_user(id).await;
    assert_eq!(response.status(), 204);
    assert!(response.bytes().await.unwrap().is_empty());
    assert_problem(app.get_user(id).await, 404).await;
    assert_problem(app.delete_user(id).await, 404).await;
    // The address is free again.
    app.create_ok(&json!({"name": "Ann", "role": "Dev", "email": "ann@example.org"}))
        .await;
}

#[tokio::test]
async fn pagination_walks_every_user_exactly_once() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for i in 0..23 {
        let user = app
            .create_ok(&json!({"name": format!("User {i}"), "role": "Dev"}))
            .await;
        created.push(user["id"].as_i64().unwrap());
    }
    // A hole in the id sequence must not confuse the cursor.
    app.delete_user(created.remove(7)).await;

    let mut seen = Vec::new();
    let mut query = "?limit=5".to_owned();
    let mut pages = 0;
    loop {
        let response = app.list_users(&query).await;
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 5);
        seen.extend(items.iter().map(|u| u["id"].as_i64().unwrap()));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=5&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    assert_eq!(seen, created, "in id order, no duplicates, no gaps");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());
}

#[tokio::test]
async fn page_size_defaults_to_50_and_is_capped_at_200() {
    let app = spawn_app().await;
    for i in 0..51 {
        app.create_ok(&json!({"name": format!("User {i}"), "role": "Dev"}))
            .await;
    }
    let page: Value = app.list_users("").await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 50);
    assert!(page["next_cursor"].is_string());

    let whole: Value = app.list_users("?limit=200").await.json().await.unwrap();
    assert_eq!(whole["items"].as_array().unwrap().len(), 51);
    assert_eq!(whole["next_cursor"], Value::Null);

    for bad in [
        "?limit=0",
        "?limit=201",
        "?limit=-1",
        "?limit=ten",
        "?cursor=bogus",
        "?cursor=djE6eA",
        "?cursor=djE6%24Mg",
        "?cursor=",
    ] {
        assert_problem(app.list_users(bad).await, 400).await;
    }
    let long = format!("?cursor={}", "A".repeat(1025));
    assert_problem(app.list_users(&long).await, 400).await;
}

#[tokio::test]
async fn data_survives_a_restart() {
    let app = spawn_app().await;
    let user = app
        .create_ok(&json!({"name": "Ann", "role": "Dev", "email": "ann@example.org"}))
        .await;
    let (db, key) = (app.db.clone(), app.key.clone());
    let status = app.stop();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    let app = start(db, key, &[]).await;
    let fetched: Value = app
        .get_user(user["id"].as_i64().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, user);
    let next = app.create_ok(&json!({"name": "Bob", "role": "Dev"})).await;
    assert_eq!(next["id"], user["id"].as_i64().unwrap() + 1);
    // A restart on a database that has keys must not mint (or print) another one.
    assert!(!app.stdout().contains("uak_"));
    // It says how to make a new admin key instead, for an operator who lost the first.
    assert!(
        app.logs()
            .await
            .contains("users-api keys create --name NAME --scope admin")
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_writes_finish_and_loses_none() {
    let app = spawn_app().await;
    let (db, key) = (app.db.clone(), app.key.clone());
    let writers = spawn_writers(&app, 8, Some(200));
    wait_for_users(&app, |users| users.len() >= 8).await;
    let status = tokio::task::spawn_blocking(move || app.stop())
        .await
        .unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    let acknowledged = acknowledged(writers).await;
    assert!(
        !acknowledged.is_empty(),
        "some writes happened before the signal"
    );

    let app = start(db, key, &[]).await;
    assert_all_stored(&app, &acknowledged).await;
}

/// Concurrent updates share one transaction on SQLite too: an update whose new email another
/// update in the same batch took first fails alone, and changes nothing of its user.
#[tokio::test]
async fn concurrent_updates_with_clashing_emails_succeed_or_conflict_one_by_one() {
    let app = std::sync::Arc::new(spawn_app().await);
    let mut originals = Vec::new();
    for i in 0..40 {
        let body = json!({"name": format!("User {i}"), "role": "Dev", "email": format!("a{i}@example.org")});
        originals.push(app.create_user(&body).await.json::<Value>().await.unwrap());
    }
    let updates: Vec<_> = originals
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let (app, id) = (app.clone(), user["id"].as_i64().unwrap());
            tokio::spawn(async move {
                // Users 2k and 2k+1 both ask for address b{k}.
                let body = json!({"email": format!("b{}@example.org", i / 2)});
                let response = app.update_user(id, &body).await;
                (
                    response.status().as_u16(),
                    response.json::<Value>().await.unwrap(),
                )
            })
        })
        .collect();
    let mut updated = Vec::new();
    let mut unchanged = Vec::new();
    for (update, original) in updates.into_iter().zip(&originals) {
        match update.await.unwrap() {
            (200, user) => {
                assert_eq!(user["name"], original["name"]);
                updated.push(user);
            }
            (409, problem) => {
                assert_eq!(problem["type"], "urn:users-api:problem:conflict");
                unchanged.push(original.clone());
            }
            (status, body) => panic!("update of {original}: {status} {body}"),
        }
    }
    assert_eq!((updated.len(), unchanged.len()), (20, 20));
    let emails: HashSet<_> = updated.iter().map(|u| u["email"].clone()).collect();
    assert_eq!(emails.len(), 20, "each address went to one user");
    assert_all_stored(&app, &updated).await;
    assert_all_stored(&app, &unchanged).await;
}

/// A connection of the test's own holding SQLite's write lock, until it commits.
async fn hold_write_lock(url: &str) -> sea_orm::DatabaseConnection {
    let mut options = sea_orm::ConnectOptions::new(url);
    options.max_connections(1);
    let lock = sea_orm::Database::connect(options).await.unwrap();
    lock.execute_unprepared("BEGIN IMMEDIATE").await.unwrap();
    lock
}

/// Concurrent updates of different users: each caller is answered with its own user as its
/// own write left it, and each user's version counts its updates. On SQLite each round's
/// updates queue behind a write lock the test holds, so that the group commit takes them as
/// one batch.
#[tokio::test]
async fn concurrent_updates_of_different_users_each_answer_their_own() {
    let app = std::sync::Arc::new(spawn_app_with(&["--rate-limit", "0"]).await);
    let mut ids = Vec::new();
    for i in 0..16 {
        ids.push(
            app.create_user_id(&json!({"name": format!("User {i}"), "role": "Dev"}))
                .await,
        );
    }
    let mut written = Vec::new();
    for round in 1..=3 {
        let lock = match crate::BACKEND {
            crate::helpers::Backend::Sqlite => Some(hold_write_lock(&app.db.url).await),
            crate::helpers::Backend::Postgres => None,
        };
        let updates: Vec<_> = ids
            .iter()
            .map(|&id| {
                let app = app.clone();
                let body = if round == 2 {
                    json!({"name": format!("Renamed {id}")})
                } else {
                    json!({"role": format!("r{id}-{round}")})
                };
                tokio::spawn(async move {
                    let response = app.update_user(id, &body).await;
                    assert_eq!(response.status(), 200, "round {round}, user {id}");
                    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
                    let user: Value = response.json().await.unwrap();
                    assert_eq!(user["id"], id, "{user}");
                    // The strong ETag is "<id>-<version>".
                    assert_eq!(etag, format!("\"{id}-{}\"", round + 1), "{user}");
                    let (field, value) = body.as_object().unwrap().iter().next().unwrap();
                    assert_eq!(&user[field], value, "{user}");
                    user
                })
            })
            .collect();
        if let Some(lock) = lock {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            lock.execute_unprepared("COMMIT").await.unwrap();
        }
        written.clear();
        for update in updates {
            written.push(update.await.unwrap());
        }
    }
    assert_all_stored(&app, &written).await;
}

/// Concurrent creates share one transaction on SQLite (group commit); a duplicate email must
/// fail alone, not take the creates committed beside it down with it.
#[tokio::test]
async fn concurrent_creates_with_clashing_emails_succeed_or_conflict_one_by_one() {
    let app = std::sync::Arc::new(spawn_app().await);
    let creates: Vec<_> = (0..60)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                // Every third create repeats the email of the one before it.
                let email = format!("user{}@example.org", i - usize::from(i % 3 == 2));
                let body = json!({"name": format!("User {i}"), "role": "Dev", "email": email});
                let response = app.create_user(&body).await;
                let status = response.status().as_u16();
                (email, status, response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut created = Vec::new();
    let mut conflicts = 0;
    for create in creates {
        match create.await.unwrap() {
            (_, 201, user) => created.push(user),
            (_, 409, problem) => {
                assert_eq!(problem["type"], "urn:users-api:problem:conflict");
                conflicts += 1;
            }
            (email, status, body) => panic!("create with {email}: {status} {body}"),
        }
    }
    assert_eq!((created.len(), conflicts), (40, 20));
    let emails: HashSet<_> = created.iter().map(|u| u["email"].clone()).collect();
    assert_eq!(emails.len(), 40, "one user per distinct email");
    assert_all_stored(&app, &created).await;
    let listed: Value = app.list_users("?limit=200").await.json().await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 40);
}
