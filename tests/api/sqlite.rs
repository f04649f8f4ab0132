//! What only the embedded SQLite default has: a file it creates, and WAL mode.

use serde_json::{Value, json};

use crate::helpers::{
    TestDb, acknowledged, assert_all_stored, assert_problem, kill9_under_creates, spawn_app,
    spawn_app_with, spawn_writers, start,
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
/// only grow (it did, to 2.3 GB in 30 s of the benchmark); once it holds the limit, the writer
/// restarts it before its next batch, and its file is cut back to the limit at that batch's
/// commit. The same load under a limit it never reaches shows what it grows to otherwise.
#[tokio::test]
async fn steady_writes_keep_the_wal_near_its_limit() {
    const MIB: u64 = 1024 * 1024;
    let unbounded = wal_after_steady_writes("4096").await;
    let bounded = wal_after_steady_writes("1").await;
    assert!(
        unbounded > 8 * MIB,
        "the load grows the WAL past 8 MiB: {unbounded} bytes"
    );
    eprintln!("WAL after the load: {unbounded} bytes unlimited, {bounded} limited to 1 MiB");
    assert!(
        bounded < 2 * MIB,
        "limited to 1 MiB, the WAL grew to {bounded} bytes (unlimited: {unbounded})"
    );
}

/// Reads run inline on SQLite (`store::inline_reads`) must answer exactly what the same query
/// answers on the pool, for every sort, filter and page; and must really run inline.
#[tokio::test]
async fn inline_reads_answer_what_the_pool_answers() {
    use sea_orm::{DbBackend, EntityTrait};
    use users_api::{
        domain::{ListQuery, Sort, UserFilter},
        store::{self, Reads},
    };

    let app = spawn_app().await;
    let mut middle = None;
    for i in 0..30 {
        let email = (i % 3 != 0).then(|| format!("User{i}@Example.com"));
        let name = format!("Zoë {} #{i}", ["Ann", "bob", "Cy"][i % 3]);
        let role = ["Dev", "Ops"][i % 2];
        let user = app
            .create_ok(&json!({"name": name, "role": role, "email": email}))
            .await;
        if i == 15 {
            middle = Some(user);
        }
    }
    let middle = middle.unwrap();
    let id = middle["id"].as_i64().unwrap();
    let patched = app.update_user(id, &json!({"role": "Lead"})).await;
    assert_eq!(patched.status(), 200);

    let db = store::connect(&crate::helpers::db_args(&app.db.url))
        .await
        .unwrap();
    let reads = Reads::new(&db, users_api::config::SqliteLocking::Shared)
        .await
        .unwrap();
    let inline = reads.inline().expect("a SQLite file is read inline");
    let pool = Reads::pool_only(&db);

    let created_middle = middle["created_at"].as_str().unwrap().parse().unwrap();
    let filters = [
        UserFilter::default(),
        UserFilter::new(Some("Ops".into()), None, None, None, None).unwrap(),
        UserFilter::new(None, Some("user4@example.COM"), None, None, None).unwrap(),
        UserFilter::new(None, None, Some("bob"), None, None).unwrap(),
        UserFilter::new(None, None, None, Some(created_middle), None).unwrap(),
        UserFilter::new(None, None, None, None, Some(created_middle)).unwrap(),
    ];
    for sort in ["id", "-id", "name", "-name", "created_at", "-created_at"] {
        for filter in &filters {
            let query = ListQuery {
                filter: filter.clone(),
                sort: Sort::parse(sort).unwrap(),
            };
            // Walk every page of 4 both ways: the cursors taken from inline pages must lead
            // where the pool's do, and every page read inline must be the page the pool reads.
            let (mut after_inline, mut after_pool) = (None, None);
            let mut pages = 0;
            loop {
                let (answered, deferred) = inline.counts();
                let (page, next) = listed(&reads, &query, after_inline.as_ref(), 4).await;
                assert_eq!(inline.counts(), (answered + 1, deferred), "read inline");
                let (pool_page, pool_next) = listed(&pool, &query, after_pool.as_ref(), 4).await;
                assert_eq!(
                    page, pool_page,
                    "sort={sort} filter={filter:?} page {pages}"
                );
                assert_eq!(
                    next.as_ref().map(|c| c.encode()),
                    pool_next.as_ref().map(|c| c.encode())
                );
                pages += 1;
                match (next, pool_next) {
                    (Some(a), Some(b)) => (after_inline, after_pool) = (Some(a), Some(b)),
                    _ => break,
                }
            }
            assert!(pages >= 1);
        }
    }

    let (answered, deferred) = inline.counts();
    for id in [1, id, 30, 31, -1] {
        let by_inline = store::users::get(&reads, id).await.ok();
        let by_pool = entity::users::Entity::find_by_id(id)
            .one(&db)
            .await
            .unwrap();
        assert_eq!(by_inline, by_pool, "user {id}");
    }
    // ...and each was answered inline, by the SQL built once for every id.
    assert_eq!(inline.counts(), (answered + 5, deferred));
    let stored = store::users::get(&reads, id).await.unwrap();
    assert_eq!((stored.version, stored.role.as_str()), (2, "Lead"));

    // Work past the budget is declined, not done on the runtime's thread; the pool does it.
    let long = sea_orm::Statement::from_string(
        DbBackend::Sqlite,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) \
         SELECT count(*) FROM n",
    );
    assert_eq!(inline.query(&long, |row| row.get::<_, i64>(0)), None);
    let short = sea_orm::Statement::from_string(DbBackend::Sqlite, "SELECT 41 + 1");
    assert_eq!(
        inline.query(&short, |row| row.get::<_, i64>(0)),
        Some(vec![42])
    );
}

/// A page's JSON body as `list` writes it, and its next cursor.
async fn listed(
    reads: &users_api::store::Reads,
    query: &users_api::domain::ListQuery,
    after: Option<&users_api::domain::Cursor>,
    limit: u64,
) -> (String, Option<users_api::domain::Cursor>) {
    let mut body = users_api::api::users::PageBody::new(limit);
    let next = users_api::store::users::list(reads, query, after, limit, &mut body)
        .await
        .unwrap();
    (body.finish(None).unwrap().as_str().to_owned(), next)
}

/// A page whose read runs past the inline budget after some of its users were written out
/// starts over on the pool, and holds each user once.
#[tokio::test]
async fn a_page_that_leaves_the_inline_path_midway_starts_over() {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    use users_api::{
        domain::{ListQuery, Sort, UserFilter},
        store::{self, Reads},
    };

    let app = spawn_app().await;
    for name in ["Needle 1", "Needle 2", "Needle 3"] {
        app.create_ok(&json!({"name": name, "role": "Dev"})).await;
    }
    let db = store::connect(&crate::helpers::db_args(&app.db.url))
        .await
        .unwrap();
    // Enough users that don't match for the search to run past the budget of steps (about
    // four a user scanned) once the first three matches have been handed over.
    db.execute_raw(Statement::from_string(
        DbBackend::Sqlite,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) \
         INSERT INTO users (name, name_search, role, created_at, updated_at, version) \
         SELECT 'Hay ' || i, 'hay ' || i, 'Dev', '2026-11-24T09:30:00+00:00', \
                '2026-11-24T09:30:00+00:00', 1 FROM n",
    ))
    .await
    .unwrap();
    for name in ["Needle 4", "Needle 5", "Needle 6"] {
        app.create_ok(&json!({"name": name, "role": "Dev"})).await;
    }

    let reads = Reads::new(&db, users_api::config::SqliteLocking::Shared)
        .await
        .unwrap();
    let inline = reads.inline().expect("a SQLite file is read inline");
    let query = ListQuery {
        filter: UserFilter::new(None, None, Some("needle"), None, None).unwrap(),
        sort: Sort::parse("id").unwrap(),
    };
    let (answered, deferred) = inline.counts();
    let (page, next) = listed(&reads, &query, None, 5).await;
    assert_eq!(
        inline.counts(),
        (answered, deferred + 1),
        "left the inline path"
    );
    let (pool_page, pool_next) = listed(&Reads::pool_only(&db), &query, None, 5).await;
    assert_eq!(page, pool_page);
    assert_eq!(next.map(|c| c.encode()), pool_next.map(|c| c.encode()));
    let body: serde_json::Value = serde_json::from_str(&page).unwrap();
    let names: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["Needle 1", "Needle 2", "Needle 3", "Needle 4", "Needle 5"]
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
    assert!(
        logs.contains("a listed user's stored text is not UTF-8"),
        "{logs}"
    );
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

/// `--sqlite-locking exclusive`: the server holds the file alone while it runs (other
/// processes, the key commands included, are refused), serves as it does in shared mode, and
/// every write it acknowledged is there for the next process after a kill -9, though the WAL
/// index lived in its memory.
#[tokio::test]
async fn exclusive_locking_holds_the_file_alone_and_loses_nothing() {
    let exclusive = ["--sqlite-locking", "exclusive", "--rate-limit", "0"];
    let app = spawn_app_with(&exclusive).await;
    let ann = app
        .create_ok(&json!({"name": "Ann", "role": "Dev", "email": "ann@example.com"}))
        .await;
    let id = ann["id"].as_i64().unwrap();
    let fetched: serde_json::Value = app.get_user(id).await.json().await.unwrap();
    assert_eq!(fetched, ann);
    let page: serde_json::Value = app.list_users("").await.json().await.unwrap();
    assert_eq!(page["items"][0], ann);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("users_api_sqlite_inline_reads_total{outcome=\"answered\"} "),
        "{metrics}"
    );

    let refused = app.db.cli_output(&["keys", "list"]);
    assert!(!refused.status.success(), "another process opened the file");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("held by another process"), "{stderr}");

    let (db, key, acknowledged) = kill9_under_creates(app).await;

    // The next process, in shared mode, finds every acknowledged write, and lets the key
    // commands in beside it.
    let app = start(db, key, &["--rate-limit", "0"]).await;
    assert_all_stored(&app, &acknowledged).await;
    assert_eq!(app.stored(&ann).await, ann);
    app.db.cli(&["keys", "list"]);
}

/// Whether reads run inline or fall back to the pool is visible to operators.
#[tokio::test]
async fn inline_reads_are_counted_in_the_metrics() {
    let app = spawn_app().await;
    app.create_ok(&json!({"name": "Ann", "role": "Dev"})).await;
    // Three queries, so that the page cache answers none of them.
    for limit in 1..=3 {
        assert_eq!(
            app.list_users(&format!("?limit={limit}")).await.status(),
            200
        );
    }
    let metrics = app.metrics().await;
    let answered = counter(
        &metrics,
        "users_api_sqlite_inline_reads_total{outcome=\"answered\"}",
    );
    assert!(answered >= 3, "{metrics}");
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

/// Reads racing writes, in both locking modes: while clients GET a user without pause, every
/// PATCH is seen by the GET sent after its 200, and no client ever sees the user's version
/// go back.
#[tokio::test]
async fn cached_reads_racing_writes_see_every_acknowledged_write() {
    for locking in ["shared", "exclusive"] {
        let app = spawn_app_with(&["--rate-limit", "0", "--sqlite-locking", locking]).await;
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
            assert_eq!(version(&read), written, "{locking}");
            let user: serde_json::Value = read.json().await.unwrap();
            assert_eq!(user["name"], name, "{locking}");
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        for reader in readers {
            assert!(reader.await.unwrap() > 0);
        }
        // The cache was in play, not bypassed.
        assert!(counter(&app.metrics().await, CACHE_HITS) > 0, "{locking}");
    }
}
