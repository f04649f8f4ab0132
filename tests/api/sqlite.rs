//! What only the embedded SQLite default has: a file it creates, and WAL mode.

use serde_json::{Value, json};

use crate::helpers::{
    TestDb, acknowledged, assert_problem, spawn_app, spawn_app_with, spawn_writers,
};

#[tokio::test]
async fn the_database_file_is_created_when_missing() {
    let db = TestDb::new();
    let path = std::path::PathBuf::from(db.url.trim_start_matches("sqlite://"));
    assert!(!path.exists());
    db.cli(&["migrate"]);
    assert!(path.exists());
}

#[tokio::test]
async fn sqlite_runs_in_wal_mode() {
    let app = spawn_app().await;
    app.create_ok(&json!({"name": "Ann", "role": "Dev"})).await;
    // The write-ahead log sits beside the database file while the server has it open.
    let wal = format!("{}-wal", app.db.url.trim_start_matches("sqlite://"));
    assert!(
        std::path::Path::new(&wal).exists(),
        "{wal} should exist in WAL mode"
    );
}

/// The size of the WAL file after 16 writers have made 300 users each, under `limit_mib`.
async fn wal_after_steady_writes(limit_mib: &str) -> u64 {
    let app = spawn_app_with(&["--sqlite-wal-limit-mib", limit_mib, "--rate-limit", "0"]).await;
    let made = acknowledged(spawn_writers(&app, 16, Some(300))).await;
    assert_eq!(made.len(), 16 * 300);
    let wal = format!("{}-wal", app.db.url.trim_start_matches("sqlite://"));
    std::fs::metadata(wal).unwrap().len()
}

/// Under steady writes a background checkpoint never finds the WAL idle, so the WAL would
/// only grow; once it holds the limit, the writer restarts it between two batches, and its
/// file is cut back to the limit at the next batch's commit. The same load under a limit it
/// never reaches shows what it grows to otherwise.
#[tokio::test]
async fn steady_writes_keep_the_wal_near_its_limit() {
    const MIB: u64 = 1024 * 1024;
    let unbounded = wal_after_steady_writes("4096").await;
    let bounded = wal_after_steady_writes("1").await;
    // Without the limit the same load grows the WAL well past what the limit allows, so
    // that the bound below is the limit's doing.
    assert!(
        unbounded > 3 * MIB,
        "the load grows the WAL past 3 MiB: {unbounded} bytes"
    );
    eprintln!("WAL after the load: {unbounded} bytes unlimited, {bounded} limited to 1 MiB");
    assert!(
        bounded < 2 * MIB,
        "limited to 1 MiB, the WAL grew to {bounded} bytes (unlimited: {unbounded})"
    );
}

/// Text stored around the API that is not UTF-8 is the server's fault: a page or a user that
/// holds it is a logged 500 problem, never a panic or a body that is not JSON.
#[tokio::test]
async fn stored_text_that_is_not_utf8_is_a_server_error() {
    let app = spawn_app().await;
    let id = app
        .create_user_id(&json!({"name": "Ann", "role": "Dev"}))
        .await;
    app.write_around_api(
        "UPDATE users SET name = CAST(x'416eff22' AS TEXT) WHERE id = ?",
        id,
    )
    .await;
    let mut request_ids = Vec::new();
    for response in [app.list_users("").await, app.get_user(id).await] {
        let problem = assert_problem(response, 500).await;
        assert_eq!(problem["type"], "urn:users-api:problem:internal-error");
        request_ids.push(problem["request_id"].clone());
    }
    let logs = app.logs().await;
    // Each 500 is logged with the id its problem names, on its cause's line as on the
    // access line.
    for request_id in request_ids {
        let lines: Vec<Value> = logs
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["span"]["request_id"] == request_id)
            .collect();
        assert!(
            lines.iter().any(|line| line["level"] == "ERROR"),
            "{request_id}: {logs}"
        );
        assert!(
            lines
                .iter()
                .any(|line| line["message"] == "request" && line["status"] == 500),
            "{request_id}: {logs}"
        );
    }
}

/// A counter's value in a metrics text.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {metrics}"))
        .parse()
        .unwrap()
}

const CACHE_HITS: &str = "users_api_read_cache_lookups_total{cache=\"user\",outcome=\"hit\"}";
const PAGE_CACHE_HITS: &str = "users_api_read_cache_lookups_total{cache=\"page\",outcome=\"hit\"}";

/// GET by id answers from the user cache while nothing has changed, with the same response
/// as from the database; and the next GET after any change sees it, whether it went through
/// the API or another process wrote it straight into the file.
#[tokio::test]
async fn cached_users_are_the_stored_ones_whoever_writes() {
    let app = spawn_app().await;
    let id = app
        .create_user_id(&json!({"name": "Ann", "role": "Dev"}))
        .await;
    let read = app.get_user(id).await;
    let (headers, body) = (read.headers().clone(), read.text().await.unwrap());
    let cached = app.get_user(id).await;
    assert_eq!(cached.headers()["etag"], headers["etag"]);
    assert_eq!(cached.headers()["content-type"], headers["content-type"]);
    assert_eq!(cached.headers()["cache-control"], headers["cache-control"]);
    assert_eq!(cached.text().await.unwrap(), body);
    assert!(counter(&app.metrics().await, CACHE_HITS) >= 1);

    let response = app.update_user(id, &json!({"name": "Bea"})).await;
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].clone();
    let read = app.get_user(id).await;
    assert_eq!(read.headers()["etag"], etag);
    let user: serde_json::Value = read.json().await.unwrap();
    assert_eq!(user["name"], "Bea");

    // This test's process is not the server's: it writes through its own connection.
    app.get_user(id).await;
    app.write_around_api(
        "UPDATE users SET name = 'Cy', version = version + 1 WHERE id = ?",
        id,
    )
    .await;
    let read = app.get_user(id).await;
    assert_ne!(read.headers()["etag"], etag);
    let user: serde_json::Value = read.json().await.unwrap();
    assert_eq!(user["name"], "Cy");
    app.get_user(id).await;
    app.write_around_api("DELETE FROM users WHERE id = ?", id)
        .await;
    assert_problem(app.get_user(id).await, 404).await;
}

/// Listings answer from the page cache while nothing has changed, with the same page and
/// `Link` as from the database, the next page included; and after any change, through the API
/// or by another process, the next listing shows it.
#[tokio::test]
async fn cached_pages_are_the_stored_ones_whoever_writes() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for name in ["Ann", "Bea", "Cy"] {
        ids.push(
            app.create_user_id(&json!({"name": name, "role": "Dev"}))
                .await,
        );
    }
    let page = |query: &'static str| {
        let app = &app;
        async move {
            let response = app.list_users(query).await;
            assert_eq!(response.status(), 200);
            let link = response
                .headers()
                .get("link")
                .map(|l| l.to_str().unwrap().to_owned());
            (response.text().await.unwrap(), link)
        }
    };
    let first = page("?limit=2").await;
    assert_eq!(page("?limit=2").await, first);
    let link = first.1.clone().expect("a next page");
    let (_, query) = link.split_once('?').unwrap();
    let next_query: &'static str = format!("?{}", query.split_once('>').unwrap().0).leak();
    let second = page(next_query).await;
    assert_eq!(page(next_query).await, second);
    assert!(second.0.contains("Cy"), "{}", second.0);
    assert!(counter(&app.metrics().await, PAGE_CACHE_HITS) >= 2);

    let response = app.update_user(ids[0], &json!({"name": "Ada"})).await;
    assert_eq!(response.status(), 200);
    let (body, _) = page("?limit=2").await;
    assert!(body.contains("Ada") && !body.contains("Ann"), "{body}");

    app.write_around_api(
        "UPDATE users SET name = 'Dot', version = version + 1 WHERE id = ?",
        ids[2],
    )
    .await;
    let (body, _) = page(next_query).await;
    assert!(body.contains("Dot") && !body.contains("Cy"), "{body}");
}

/// Reads racing writes: while clients GET a user without pause, every PATCH is seen by the
/// GET sent after its 200, and no client ever sees the user's version go back.
#[tokio::test]
async fn cached_reads_racing_writes_see_every_acknowledged_write() {
    let app = spawn_app_with(&["--rate-limit", "0"]).await;
    let id = app
        .create_user_id(&json!({"name": "v0", "role": "Dev"}))
        .await;
    let version = |response: &reqwest::Response| -> u64 {
        let etag = response.headers()["etag"]
            .to_str()
            .unwrap()
            .trim_matches('"');
        etag.rsplit_once('-').unwrap().1.parse().unwrap()
    };
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (client, url, key) = (
                app.client.clone(),
                app.url(&format!("/api/v1/users/{id}")),
                app.key.clone(),
            );
            let done = done.clone();
            tokio::spawn(async move {
                let (mut last, mut reads) = (0, 0);
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let response = client.get(&url).bearer_auth(&key).send().await.unwrap();
                    assert_eq!(response.status(), 200);
                    let seen = version(&response);
                    assert!(seen >= last, "version {seen} after {last}");
                    (last, reads) = (seen, reads + 1);
                }
                reads
            })
        })
        .collect();
    for i in 1..=60 {
        let name = format!("v{i}");
        let response = app.update_user(id, &json!({"name": name})).await;
        assert_eq!(response.status(), 200);
        let written = version(&response);
        let read = app.get_user(id).await;
        assert_eq!(version(&read), written);
        let user: serde_json::Value = read.json().await.unwrap();
        assert_eq!(user["name"], name);
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        assert!(reader.await.unwrap() > 0);
    }
    // The cache was in play, not bypassed.
    assert!(counter(&app.metrics().await, CACHE_HITS) > 0);
}

/// The path of the database file behind a `sqlite://` URL.
fn file_of(url: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(url.trim_start_matches("sqlite://"))
}

/// A database file deleted under the running server: writes are refused (503, retry later)
/// and readiness fails, rather than acknowledging writes a restart would lose.
#[tokio::test]
async fn a_deleted_database_file_stops_writes_and_readiness() {
    let app = spawn_app().await;
    app.create_ok(&json!({"name": "Before", "role": "Dev"}))
        .await;
    let file = file_of(&app.db.url);
    for suffix in ["", "-wal", "-shm"] {
        let mut path = file.clone().into_os_string();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
    // Noticed within the check interval (one second).
    let mut refused = None;
    for _ in 0..40 {
        let response = app
            .create_user(&json!({"name": "After", "role": "Dev"}))
            .await;
        if response.status() == 503 {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), 201);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let refused = refused.expect("writes refused once the file is gone");
    assert!(refused.headers().contains_key("retry-after"));
    assert_problem(refused, 503).await;
    assert_problem(app.readiness().await, 503).await;
    let key = app
        .create_api_key(&json!({"name": "late", "scopes": ["users:read"]}))
        .await;
    assert_problem(key, 503).await;
    assert!(
        app.logs()
            .await
            .contains("the database file was deleted or replaced")
    );
}

/// Another process holding SQLite's write lock past the busy timeout: the write is a 503 to
/// retry, readiness says so, and writes work again once the lock is gone.
#[tokio::test]
async fn a_write_lock_held_elsewhere_is_an_outage_to_retry() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let app = spawn_app().await;
    let other = sea_orm::Database::connect(&app.db.url).await.unwrap();
    let holding = other.begin().await.unwrap();
    holding
        .execute_unprepared("UPDATE users SET name = name WHERE id = -1")
        .await
        .unwrap();
    let blocked = app
        .create_user(&json!({"name": "Blocked", "role": "Dev"}))
        .await;
    assert!(blocked.headers().contains_key("retry-after"));
    let problem = assert_problem(blocked, 503).await;
    assert!(
        !problem["detail"]
            .as_str()
            .unwrap()
            .contains("database is locked")
    );
    let ready = app.readiness().await;
    assert_eq!(ready.status(), 503);
    holding.rollback().await.unwrap();
    app.create_ok(&json!({"name": "Unblocked", "role": "Dev"}))
        .await;
}

#[test]
fn a_database_path_that_cannot_be_opened_fails_start_up_at_once() {
    let started = std::time::Instant::now();
    let output = std::process::Command::new(crate::helpers::BIN)
        .args([
            "migrate",
            "--database-url",
            "sqlite:///no/such/directory/users.db",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(stderr.contains("/no/such/directory/users.db"), "{stderr}");
    assert!(stderr.contains("--database-url"), "{stderr}");
}
